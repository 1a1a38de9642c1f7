//! The peer:// target against a real receiver on loopback.

mod common;

use common::*;
use shipper::{
    remote_list, remote_restore, remote_verify, ship_once, Credentials, FileTarget, PointSel,
    Receiver, Retry, ShipOptions, StopHandle, Target, TargetErrorKind,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY: &[u8] = b"0123456789abcdef-test-key";

fn start_receiver(dir: &Path) -> (SocketAddr, StopHandle) {
    let r = Receiver::bind("127.0.0.1:0", dir, KEY.to_vec()).unwrap();
    let addr = r.local_addr().unwrap();
    let stop = r.stop_handle().unwrap();
    std::thread::spawn(move || r.run());
    (addr, stop)
}

fn peer(addr: SocketAddr, key: &[u8], retry: Retry) -> Box<dyn Target> {
    let creds = Credentials {
        peer_key: Some(key.to_vec()),
        retry,
        ..Default::default()
    };
    shipper::target_from_url(&format!("peer://{addr}"), &creds).unwrap()
}

fn quick() -> Retry {
    Retry {
        attempts: 3,
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(50),
        give_up_after: Duration::from_secs(60),
    }
}

#[test]
fn peer_ship_change_ship_restore_every_point() {
    let d = tempfile::tempdir().unwrap();
    let recv_dir = d.path().join("received");
    let (addr, stop) = start_receiver(&recv_dir);
    let t = peer(addr, KEY, quick());
    let points = ship_change_restore_all(t.as_ref(), d.path());
    // The receiver's directory is a valid file:// target with the same points.
    let ft = FileTarget::new(&recv_dir).unwrap();
    assert_eq!(remote_list(&ft).unwrap().len(), 3);
    let out = d.path().join("from-dir.img");
    remote_restore(&ft, PointSel::Latest, &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), points[2].1);
    stop.stop();
}

/// A TCP proxy that, while `armed`, cuts the connection once `limit` client bytes (over
/// all connections) have passed. `one_shot`: disarm after the first cut (a blip); else
/// stay down (refuse new connections) until disarmed by the test.
fn start_cutting_proxy(
    upstream: SocketAddr,
    limit: u64,
    armed: Arc<AtomicBool>,
    one_shot: bool,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for c in l.incoming().take(200) {
            let Ok(client) = c else { continue };
            if armed.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) > limit {
                continue; // down: drop the connection at once
            }
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (armed2, sent2) = (armed.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    let n = match c2.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let total = sent2.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                    if armed2.load(Ordering::SeqCst) && total > limit {
                        if one_shot {
                            armed2.store(false, Ordering::SeqCst);
                        }
                        break; // drop mid-frame
                    }
                    if s2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c2.shutdown(std::net::Shutdown::Both);
                let _ = s2.shutdown(std::net::Shutdown::Both);
            });
            let (mut s3, mut c3) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s3, &mut c3);
                let _ = c3.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn peer_connection_blip_mid_point_is_retried_transparently() {
    let d = tempfile::tempdir().unwrap();
    let recv_dir = d.path().join("received");
    let (addr, stop) = start_receiver(&recv_dir);
    let armed = Arc::new(AtomicBool::new(true));
    let proxy = start_cutting_proxy(addr, 700_000, armed.clone(), true);
    let t = peer(proxy, KEY, quick());
    let src = volume(16);
    let mut opts = ShipOptions::new(d.path().join("state.json"));
    opts.segment_bytes = 256 << 10;
    opts.zstd_level = None;
    let (info, sha) = ship(&src, t.as_ref(), &opts);
    assert!(!armed.load(Ordering::SeqCst), "the connection was cut once");
    assert_eq!(
        FileTarget::new(&recv_dir)
            .unwrap()
            .list("segments/")
            .unwrap()
            .len(),
        info.segments as usize
    );
    let out = d.path().join("r.img");
    remote_restore(t.as_ref(), PointSel::Latest, &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), sha);
    stop.stop();
}

#[test]
fn peer_connection_dropped_mid_point_commits_nothing_then_resumes() {
    let d = tempfile::tempdir().unwrap();
    let recv_dir = d.path().join("received");
    let (addr, stop) = start_receiver(&recv_dir);
    let armed = Arc::new(AtomicBool::new(true));
    let proxy = start_cutting_proxy(addr, 700_000, armed.clone(), false);
    let t = peer(proxy, KEY, quick());
    let src = volume(16);
    let mut opts = ShipOptions::new(d.path().join("state.json"));
    opts.segment_bytes = 256 << 10;
    opts.zstd_level = None;
    let e = ship_once(&src, t.as_ref(), &opts).unwrap_err().to_string();
    assert!(
        e.contains(&format!("peer://{proxy}")) && e.contains("gave up after 3 attempts"),
        "{e}"
    );
    let direct = FileTarget::new(&recv_dir).unwrap();
    assert!(
        remote_list(&direct).unwrap().is_empty(),
        "no committed point"
    );
    let partial = direct.list("segments/").unwrap().len();
    assert!(partial >= 1, "a few segments got through before the cut");
    armed.store(false, Ordering::SeqCst);
    let frozen = sha_hex(&src.point_image(&src.point_names()[0]).unwrap());
    let info = ship_once(&src, t.as_ref(), &opts).unwrap();
    assert!(
        info.resumed && info.committed && info.segments_reused as usize == partial,
        "{info:?} partial={partial}"
    );
    assert_eq!(
        direct.list("segments/").unwrap().len(),
        info.segments as usize
    );
    let out = d.path().join("r.img");
    remote_restore(t.as_ref(), PointSel::Latest, &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), frozen);
    assert!(remote_verify(t.as_ref()).unwrap().ok());
    stop.stop();
}

#[test]
fn peer_wrong_key_is_refused_before_any_data() {
    let d = tempfile::tempdir().unwrap();
    let recv_dir = d.path().join("received");
    let (addr, stop) = start_receiver(&recv_dir);
    let t = peer(addr, b"another-key-of-16+bytes", quick());
    let e = ship_error(t.as_ref());
    assert!(
        matches!(&e, shipper::Error::Target(te) if te.kind == TargetErrorKind::Auth),
        "{e}"
    );
    assert!(e.to_string().contains("rejected our key"), "{e}");
    assert!(FileTarget::new(&recv_dir)
        .unwrap()
        .list("")
        .unwrap()
        .is_empty());
    stop.stop();
}

#[test]
fn peer_receiver_rejects_garbage_and_oversized_frames() {
    let d = tempfile::tempdir().unwrap();
    let recv_dir = d.path().join("received");
    let (addr, stop) = start_receiver(&recv_dir);
    // Garbage greeting.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0u8; 44];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"SNAPPEER");
    s.write_all(&[0x41; 76]).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "connection closed without a reply");
    // A valid-looking greeting with a wrong proof: 33 bytes of refusal, then close.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut hello).unwrap();
    let mut auth = b"SNAPPEER".to_vec();
    auth.extend_from_slice(&1u32.to_le_bytes());
    auth.extend_from_slice(&[7u8; 64]);
    s.write_all(&auth).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(reply.len() == 33 && reply[0] != 0, "{reply:?}");
    assert!(FileTarget::new(&recv_dir)
        .unwrap()
        .list("")
        .unwrap()
        .is_empty());
    // A correctly authenticated client announcing an oversized frame is cut off.
    {
        use hmac::{Hmac, Mac};
        let mac = |parts: &[&[u8]]| {
            let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(KEY).unwrap();
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        };
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut hello).unwrap();
        let nc = [9u8; 32];
        let mut auth = b"SNAPPEER".to_vec();
        auth.extend_from_slice(&1u32.to_le_bytes());
        auth.extend_from_slice(&nc);
        auth.extend_from_slice(&mac(&[b"snapblk-peer client", &hello[12..44], &nc]));
        s.write_all(&auth).unwrap();
        let mut ok = [0u8; 33];
        s.read_exact(&mut ok).unwrap();
        assert_eq!(ok[0], 0, "authenticated");
        assert_eq!(
            &ok[1..],
            &mac(&[b"snapblk-peer server", &nc, &hello[12..44]])[..]
        );
        s.write_all(&u32::MAX.to_le_bytes()).unwrap();
        s.write_all(&[1u8; 64]).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "oversized frame: closed without a reply");
    }
    // Keys that try to escape the directory are refused by the receiver.
    let t = peer(addr, KEY, Retry::none());
    let e = t.put_new("../escape", b"x").unwrap_err();
    assert!(
        e.detail.contains("request") || e.detail.contains("key"),
        "{e}"
    );
    assert!(!d.path().join("escape").exists());
    // The receiver still serves honest clients afterwards.
    t.put_new("manifests/probe", b"ok").unwrap();
    assert_eq!(t.get("manifests/probe", 10).unwrap(), b"ok");
    stop.stop();
}

#[test]
fn peer_tampered_segment_at_rest_is_caught() {
    let d = tempfile::tempdir().unwrap();
    let recv_dir = d.path().join("received");
    let (addr, stop) = start_receiver(&recv_dir);
    let t = peer(addr, KEY, quick());
    let src = volume(2);
    ship(&src, t.as_ref(), &ShipOptions::new(d.path().join("s.json")));
    let key = t.list("segments/").unwrap()[0].clone();
    let p = recv_dir.join(&key);
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len() - 5;
    b[n] ^= 1;
    std::fs::write(&p, b).unwrap();
    assert!(!remote_verify(t.as_ref()).unwrap().ok());
    let e = remote_restore(
        t.as_ref(),
        PointSel::Latest,
        &d.path().join("x.img"),
        &|_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("corrupt"), "{e}");
    stop.stop();
}

#[test]
fn peer_unreachable_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = peer(addr, KEY, quick());
    let e = ship_error(t.as_ref()).to_string();
    assert!(
        e.contains(&format!("peer://127.0.0.1:{port}"))
            && e.contains("is a receiver running on")
            && e.contains("gave up after 3 attempts"),
        "{e}"
    );
}
