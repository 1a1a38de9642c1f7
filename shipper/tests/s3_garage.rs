//! The s3:// target against a real single-node Garage (see common/garage.rs).
//! Skips loudly only when the garage binary is absent.

mod common;

use common::garage::{Garage, BUCKET};
use common::*;
use shipper::{
    remote_list, remote_restore, remote_verify, ship_once, target_from_url, Credentials, PointSel,
    Retry, ShipOptions, Target, TargetErrorKind,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn s3(g: &Garage, prefix: &str) -> Box<dyn Target> {
    target_from_url(&format!("s3://{BUCKET}/{prefix}"), &g.creds()).unwrap()
}

#[test]
fn s3_ship_change_ship_restore_every_point() {
    let d = tempfile::tempdir().unwrap();
    let Some(g) = Garage::start(&d.path().join("garage")) else {
        return;
    };
    let t = s3(&g, "vol-a");
    assert!(t.id().starts_with("s3://127.0.0.1:") && !t.id().contains(&g.secret_key));
    ship_change_restore_all(t.as_ref(), d.path());
    // The prefix isolates volumes in one bucket.
    assert!(remote_list(s3(&g, "vol-b").as_ref()).unwrap().is_empty());
}

#[test]
fn s3_server_killed_mid_ship_then_restarted() {
    let d = tempfile::tempdir().unwrap();
    let Some(g) = Garage::start(&d.path().join("garage")) else {
        return;
    };
    let g = Arc::new(Mutex::new(g));
    let creds = g.lock().unwrap().creds();
    let t = target_from_url(&format!("s3://{BUCKET}/faults"), &creds).unwrap();
    let src = volume(16);
    let mut opts = ShipOptions::new(d.path().join("state.json"));
    opts.segment_bytes = 256 << 10;
    opts.zstd_level = None;

    // 1) Killed and not back within the retry window: a clear error, nothing committed.
    let g2 = g.clone();
    src.set_read_hook(Some(Box::new(move |n| {
        if n == 8 {
            g2.lock().unwrap().kill();
        }
        Ok(())
    })));
    let e = ship_once(&src, t.as_ref(), &opts).unwrap_err().to_string();
    eprintln!("server killed mid-ship -> {e}");
    assert!(
        e.contains("gave up after 4 attempts") && e.contains("AWS_ENDPOINT_URL"),
        "{e}"
    );
    src.set_read_hook(None);
    g.lock().unwrap().restart();
    assert!(
        remote_list(t.as_ref()).unwrap().is_empty(),
        "no point committed by the failed ship"
    );
    let partial = t.list("segments/").unwrap().len();
    assert!(
        partial >= 1,
        "segments uploaded before the kill stay (unreferenced)"
    );
    let frozen = sha_hex(&src.point_image(&src.point_names()[0]).unwrap());
    let info = ship_once(&src, t.as_ref(), &opts).unwrap();
    eprintln!("resumed after restart: {info:?} (segments already there: {partial})");
    assert!(info.resumed && info.committed && info.seq == 1, "{info:?}");
    assert!(
        info.segments_reused as usize >= partial.saturating_sub(1),
        "{info:?} partial={partial}"
    );
    assert_eq!(
        t.list("segments/").unwrap().len(),
        info.segments as usize,
        "no duplicates"
    );

    // 2) Killed and restarted within the retry window: the same ship completes.
    mutate(&src, 1);
    let slow = Retry {
        attempts: 10,
        initial: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        give_up_after: Duration::from_secs(60),
    };
    let t_slow = target_from_url(
        &format!("s3://{BUCKET}/faults"),
        &Credentials {
            retry: slow,
            ..creds.clone()
        },
    )
    .unwrap();
    let g3 = g.clone();
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fired2 = fired.clone();
    src.set_read_hook(Some(Box::new(move |_| {
        // Kill on the first read of this ship (the read counter is global to the source).
        if !fired2.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let g4 = g3.clone();
            g4.lock().unwrap().kill();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1500));
                g4.lock().unwrap().restart();
            });
        }
        Ok(())
    })));
    let (info2, sha2) = ship(&src, t_slow.as_ref(), &opts);
    src.set_read_hook(None);
    eprintln!("killed + restarted within the retry window: {info2:?}");
    assert!(
        fired.load(std::sync::atomic::Ordering::SeqCst),
        "the server was killed mid-ship"
    );
    assert!(
        info2.elapsed > Duration::from_millis(1000),
        "the ship waited out the outage: {info2:?}"
    );
    assert_eq!(info2.seq, 2);
    let out = d.path().join("r.img");
    remote_restore(
        t.as_ref(),
        PointSel::Seq(1),
        &d.path().join("r1.img"),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(file_sha(&d.path().join("r1.img")), frozen);
    remote_restore(t.as_ref(), PointSel::Seq(2), &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), sha2);
    assert!(remote_verify(t.as_ref()).unwrap().ok());
}

#[test]
fn s3_wrong_credentials_and_region_are_clear_auth_errors() {
    let d = tempfile::tempdir().unwrap();
    let Some(g) = Garage::start(&d.path().join("garage")) else {
        return;
    };
    let src = volume(1);
    let opts = ShipOptions::new(d.path().join("state.json"));
    let bad_secret = Credentials {
        secret_key: Some("0".repeat(64)),
        ..g.creds()
    };
    let bad_secret = Credentials {
        // Many slow attempts: a refused key must not use any of them.
        retry: Retry {
            attempts: 8,
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        },
        ..bad_secret
    };
    let t = target_from_url(&format!("s3://{BUCKET}/x"), &bad_secret).unwrap();
    let e = ship_once(&src, t.as_ref(), &opts).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, shipper::Error::Target(te) if te.kind == TargetErrorKind::Auth),
        "{msg}"
    );
    eprintln!("wrong secret -> {msg}");
    // A retried failure says how many attempts it took; a refused key takes one.
    assert!(
        !msg.contains("gave up after"),
        "an auth failure was retried: {msg}"
    );
    assert!(
        msg.contains("AWS_SECRET_ACCESS_KEY") && !msg.contains(&"0".repeat(64)),
        "{msg}"
    );
    let bad_key = Credentials {
        access_key: Some(format!("GK{}", "1".repeat(24))),
        ..g.creds()
    };
    let e = remote_list(
        target_from_url(&format!("s3://{BUCKET}/x"), &bad_key)
            .unwrap()
            .as_ref(),
    )
    .unwrap_err()
    .to_string();
    eprintln!("unknown key id -> {e}");
    assert!(e.contains("access denied"), "{e}");
    let bad_region = Credentials {
        region: Some("us-east-1".into()),
        ..g.creds()
    };
    let e = remote_list(
        target_from_url(&format!("s3://{BUCKET}/x"), &bad_region)
            .unwrap()
            .as_ref(),
    )
    .unwrap_err()
    .to_string();
    eprintln!("wrong region -> {e}");
    assert!(e.contains("AWS_REGION"), "{e}");
    // Nothing was committed by the refused attempts.
    assert!(remote_list(s3(&g, "x").as_ref()).unwrap().is_empty());
}

#[test]
fn s3_unreachable_endpoint_is_a_clear_error() {
    // Needs no Garage: a loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let creds = loopback_s3_creds(
        port,
        Retry {
            attempts: 3,
            initial: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            give_up_after: Duration::from_secs(60),
        },
    );
    let t = target_from_url("s3://bkt/p", &creds).unwrap();
    let started = std::time::Instant::now();
    let e = ship_error(t.as_ref()).to_string();
    eprintln!("unreachable -> {e}");
    assert!(
        e.contains(&format!("127.0.0.1:{port}"))
            && e.contains("gave up after 3 attempts")
            && e.contains("check AWS_ENDPOINT_URL and that the server is up"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn s3_tampered_segment_is_caught_by_verify_and_refused_by_restore() {
    let d = tempfile::tempdir().unwrap();
    let Some(g) = Garage::start(&d.path().join("garage")) else {
        return;
    };
    let t = s3(&g, "tamper");
    let src = volume(2);
    ship(&src, t.as_ref(), &ShipOptions::new(d.path().join("s.json")));
    let key = t.list("segments/").unwrap()[0].clone();
    let mut obj = t.get(&key, 1 << 30).unwrap();
    let n = obj.len() / 3;
    obj[n] ^= 0x80;
    t.delete(&key).unwrap();
    t.put_new(&key, &obj).unwrap();
    let v = remote_verify(t.as_ref()).unwrap();
    assert!(
        !v.ok() && v.points[0].problem.as_deref().unwrap_or("").contains(&key),
        "{v:?}"
    );
    let out = d.path().join("x.img");
    let e = remote_restore(t.as_ref(), PointSel::Latest, &out, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("corrupt") && e.contains("SHA-256"), "{e}");
    assert!(!out.exists());
}

#[test]
fn s3_get_is_bounded_by_a_ranged_request_on_a_real_server() {
    let d = tempfile::tempdir().unwrap();
    let Some(g) = Garage::start(&d.path().join("garage")) else {
        return;
    };
    let t = s3(&g, "bounded");
    let obj = block_pattern(7, 0, 300_000);
    t.put_new("manifests/big", &obj).unwrap();
    assert!(t.get("manifests/big", obj.len() as u64).unwrap() == obj);
    let e = t.get("manifests/big", obj.len() as u64 - 1).unwrap_err();
    assert!(
        e.detail.contains("more than the 299999 bytes allowed"),
        "{e}"
    );
    assert!(e.object.ends_with("bounded/manifests/big"), "{e}");
    // Empty and missing objects: tests/conformance.rs, for every backend.
}
