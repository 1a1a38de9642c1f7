//! Offline shipping through the built binary: `ship --backing ... --once` to a file://
//! target, then `remote list/restore/verify/prune`, each image compared byte for byte
//! with `export` of the snapshot taken at the same moment.

mod common;

use common::{fails_with, ok, pattern, Vol, BS};
use std::path::{Path, PathBuf};
use std::process::Command;

const BLOCKS: usize = 512;

/// Leaves the second half never written: the first point is a sparse base.
fn volume() -> Vol {
    common::volume(BLOCKS, BLOCKS / 2)
}

#[test]
fn ship_change_ship_then_restore_each_point_verify_prune_and_detect_tampering() {
    let v = volume();
    let url = format!("file://{}", v.s("remote"));

    // Point 1 = snapshot at1 (nothing written between the two).
    v.with_engine(|e| {
        e.create_snapshot("at1").unwrap();
    });
    let p1 = v.ship(&url);
    assert_eq!(p1["committed"], true, "{p1}");
    assert_eq!(p1["full"], true, "{p1}");
    let seq1 = p1["seq"].as_u64().unwrap();
    assert!(
        p1["data_blocks"].as_u64().unwrap() >= (BLOCKS / 2) as u64,
        "{p1}"
    );
    let state = p1["state_file"].as_str().unwrap();
    assert!(
        Path::new(state).exists() && state.starts_with(&v.store.display().to_string()),
        "state file {state} not next to the store"
    );
    let at1 = v.export("at1", &v.s("at1.img"));

    // Change 11 blocks (one of them to zeroes), snapshot at2, ship an increment.
    v.with_engine(|e| {
        e.write((20 * BS) as u64, &pattern(7, 10 * BS)).unwrap();
        e.write((300 * BS) as u64, &pattern(9, BS)).unwrap();
        e.write((3 * BS) as u64, &vec![0u8; BS]).unwrap();
        e.create_snapshot("at2").unwrap();
    });
    let p2 = v.ship(&url);
    assert_eq!(p2["committed"], true, "{p2}");
    assert_eq!(p2["full"], false, "{p2}");
    let seq2 = p2["seq"].as_u64().unwrap();
    assert!(seq2 > seq1);
    let changed = p2["data_blocks"].as_u64().unwrap() + p2["zero_blocks"].as_u64().unwrap();
    assert!(
        (12..=64).contains(&changed),
        "increment should hold about the 12 changed blocks: {p2}"
    );
    let at2 = v.export("at2", &v.s("at2.img"));
    assert_ne!(at1, at2);

    let list: serde_json::Value =
        serde_json::from_str(&ok(&v.run(&["remote", "list", "--from", &url, "--json"]))).unwrap();
    let seqs: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![seq1, seq2]);

    let run_restore = |point: &str, out: &str| {
        v.run(&[
            "remote", "restore", "--from", &url, "--point", point, "--to", out,
        ])
    };
    let restore = |point: &str, out: &str| {
        ok(&run_restore(point, out));
        std::fs::read(out).unwrap()
    };
    assert!(
        restore(&seq1.to_string(), &v.s("r1.img")) == at1,
        "point 1 != export of at1"
    );
    assert!(
        restore(&seq2.to_string(), &v.s("r2.img")) == at2,
        "point 2 != export of at2"
    );
    assert!(
        restore("latest", &v.s("rl.img")) == at2,
        "latest != export of at2"
    );
    fails_with(&run_restore("latest", &v.s("r1.img")), "already exists");
    fails_with(&run_restore("x", &v.s("rx.img")), "--point");

    let out = ok(&v.run(&["remote", "verify", "--from", &url]));
    assert!(out.contains(&format!("point {seq2}: ok")), "{out}");

    // Offline shipping is one point at a time.
    let f = v.files();
    let mut args: Vec<&str> = vec!["ship"];
    args.extend(f.iter().map(String::as_str));
    args.extend(["--to", &url]);
    fails_with(&v.run(&args), "--once");

    // Retention: keep the newest point only; it still restores to at2.
    let pr: serde_json::Value = serde_json::from_str(&ok(
        &v.run(&["remote", "prune", "--from", &url, "--keep", "1", "--json"])
    ))
    .unwrap();
    assert_eq!(pr["removed"], serde_json::json!([seq1]), "{pr}");
    assert!(
        restore("latest", &v.s("rp.img")) == at2,
        "pruned latest != at2"
    );
    ok(&v.run(&["remote", "verify", "--from", &url]));

    // Flip one byte in the middle of every segment: verify and restore must fail.
    let segdir = v.p("remote").join("segments");
    let mut tampered = 0;
    for entry in walk(&segdir) {
        let mut b = std::fs::read(&entry).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        std::fs::write(&entry, b).unwrap();
        tampered += 1;
    }
    assert!(tampered > 0, "no segment files under {}", segdir.display());
    let o = v.run(&["remote", "verify", "--from", &url]);
    fails_with(&o, "damaged");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("NOT RESTORABLE"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let bad = v.s("bad.img");
    assert!(!v
        .run(&["remote", "restore", "--from", &url, "--to", &bad])
        .status
        .success());
    assert!(!Path::new(&bad).exists(), "a failed restore left {bad}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_urls_and_missing_remotes_fail_with_one_clear_line() {
    let v = volume();
    fails_with(
        &v.run(&["remote", "list", "--from", "ftp://x/y"]),
        "unknown scheme",
    );
    fails_with(
        &v.run(&["remote", "list", "--from", "s3://user:pw@bucket/p"]),
        "credentials must not be in the URL",
    );
    let url = format!("file://{}", v.s("empty"));
    std::fs::create_dir(v.p("empty")).unwrap();
    let out = ok(&v.run(&["remote", "list", "--from", &url]));
    assert!(out.contains("no committed points"), "{out}");
    fails_with(
        &v.run(&["remote", "restore", "--from", &url, "--to", &v.s("o.img")]),
        "restore point latest",
    );
}

#[test]
fn peer_round_trip_through_receive_and_sigterm_stops_it() {
    use std::io::{BufRead, BufReader};
    let v = volume();
    let key = v.p("peer.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut rx = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["receive", "--listen", "127.0.0.1:0", "--dir"])
        .arg(v.p("received"))
        .arg("--key-file")
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // Kept open until the end: the receiver prints again when it stops.
    let mut rx_out = BufReader::new(rx.stdout.take().unwrap());
    rx_out.read_line(&mut line).unwrap();
    // "receiving on 127.0.0.1:PORT into DIR"
    let addr = line.split_whitespace().nth(2).unwrap_or("").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    let url = format!("peer://{addr}");
    let key_s = key.display().to_string();

    v.with_engine(|e| {
        e.create_snapshot("p1").unwrap();
    });
    let f = v.files();
    let mut args: Vec<&str> = vec!["ship"];
    args.extend(f.iter().map(String::as_str));
    args.extend(["--to", &url, "--once", "--key-file", &key_s]);
    let out = ok(&v.run(&args));
    assert!(out.contains("committed point"), "{out}");
    let p1 = v.export("p1", &v.s("p1.img"));
    // Wrong key: refused.
    let bad = v.p("bad.key");
    std::fs::write(&bad, "ffffffffffffffffffffffffffffffff").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let bad_s = bad.display().to_string();
    assert!(!v
        .run(&["remote", "list", "--from", &url, "--key-file", &bad_s])
        .status
        .success());
    ok(&v.run(&[
        "remote",
        "restore",
        "--from",
        &url,
        "--key-file",
        &key_s,
        "--to",
        &v.s("pr.img"),
    ]));
    assert!(
        std::fs::read(v.p("pr.img")).unwrap() == p1,
        "peer restore != export p1"
    );
    // The receiver stored the same layout as a file:// target.
    let local = format!("file://{}", v.s("received"));
    ok(&v.run(&["remote", "verify", "--from", &local]));

    // SAFETY: signals our own child.
    unsafe { libc::kill(rx.id() as i32, libc::SIGTERM) };
    let t = std::time::Instant::now();
    loop {
        if let Some(st) = rx.try_wait().unwrap() {
            assert!(st.success(), "receiver exited {st:?} on SIGTERM");
            line.clear();
            rx_out.read_line(&mut line).unwrap();
            assert!(line.contains("receiver stopped"), "{line:?}");
            break;
        }
        assert!(t.elapsed().as_secs() < 15, "receiver ignored SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
