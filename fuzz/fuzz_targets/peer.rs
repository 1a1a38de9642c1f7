//! The peer receiver (`snapblk receive`) as a network client sees it: a real
//! `shipper::Receiver` on 127.0.0.1 with a pre-shared key, fed over TCP.
//!
//! Byte 0 of the input picks the attacker:
//! - even: a client **without** the key; the rest of the input is sent raw after the server's
//!   greeting (handshake parser, authentication failure path). It must never get an OK.
//! - odd: a client **with** the key, which completes the handshake (implemented here from
//!   shipper/src/targets/peer.rs's documented protocol) and then sends the rest of the input as
//!   frames `kind: u8, len: u16 LE, payload[len]`, each with a valid tag and counter, reading
//!   the reply to each (request parser, key validation, file target).
//!
//! Each input gets a fresh receiver and directory, so runs do not depend on each other.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use shipper::targets::peer::{PEER_MAGIC, PEER_VERSION};
use shipper::Receiver;

const KEY: &[u8] = b"snapblk-fuzz-peer-key-0123456789";
/// Per-read timeout on the client side: far below the receiver's own, so a receiver that
/// waits for more bytes shows up as a slow unit, not as a stuck fuzzer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        unreachable!("HMAC takes any key length")
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "snapblk-fuzz-peer-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Reads one reply frame; returns its kind (0x80 OK, 0x81 error) or None when the server
/// closed the connection or sent something unreadable.
fn read_reply(s: &mut TcpStream) -> Option<u8> {
    let mut lb = [0u8; 4];
    s.read_exact(&mut lb).ok()?;
    let len = u32::from_le_bytes(lb) as usize;
    assert!(
        len >= 33,
        "receiver sent a frame of {len} bytes, below the minimum"
    );
    assert!(
        len <= shipper::targets::peer::MAX_FRAME as usize,
        "receiver sent a frame of {len} bytes, above MAX_FRAME"
    );
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(body[0])
}

fn unauthenticated(s: &mut TcpStream, rest: &[u8]) {
    let _ = s.write_all(rest);
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.take(1 << 20).read_to_end(&mut got);
    // The only thing a keyless client may get after the greeting is the 33-byte refusal.
    assert!(
        got.is_empty() || (got.len() == 33 && got[0] != 0),
        "receiver answered a client without the key with {} bytes starting {:?}",
        got.len(),
        &got[..got.len().min(8)]
    );
}

fn authenticated(s: &mut TcpStream, ns: &[u8], rest: &[u8]) {
    let nc = [7u8; 32];
    let mut auth = Vec::with_capacity(76);
    auth.extend_from_slice(PEER_MAGIC);
    auth.extend_from_slice(&PEER_VERSION.to_le_bytes());
    auth.extend_from_slice(&nc);
    auth.extend_from_slice(&mac(KEY, &[b"snapblk-peer client", ns, &nc]));
    if s.write_all(&auth).is_err() {
        return;
    }
    let mut reply = [0u8; 33];
    if s.read_exact(&mut reply).is_err() {
        return;
    }
    assert_eq!(reply[0], 0, "receiver refused the right key");
    assert_eq!(
        reply[1..],
        mac(KEY, &[b"snapblk-peer server", &nc, ns]),
        "receiver proved a different key"
    );
    let session = mac(KEY, &[b"snapblk-peer session", ns, &nc]);
    let mut r = rest;
    let mut ctr = 0u64;
    while r.len() >= 3 {
        let kind = r[0];
        let n = (u16::from_le_bytes([r[1], r[2]]) as usize).min(r.len() - 3);
        let payload = &r[3..3 + n];
        r = &r[3 + n..];
        let tag = mac(&session, &[b"C", &ctr.to_le_bytes(), &[kind], payload]);
        let mut frame = Vec::with_capacity(4 + 1 + n + 32);
        frame.extend_from_slice(&((1 + n + 32) as u32).to_le_bytes());
        frame.push(kind);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&tag);
        ctr += 1;
        if s.write_all(&frame).is_err() || read_reply(s).is_none() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch_dir();
    let Ok(rx) = Receiver::bind("127.0.0.1:0", &dir, KEY.to_vec()) else {
        return;
    };
    let (Ok(addr), Ok(stop)) = (rx.local_addr(), rx.stop_handle()) else {
        return;
    };
    let server = std::thread::spawn(move || rx.run());
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT) {
        let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
        let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
        let mut hello = [0u8; 44];
        if s.read_exact(&mut hello).is_ok() {
            assert_eq!(
                &hello[..8],
                PEER_MAGIC,
                "receiver greeting has the wrong magic"
            );
            let ns = hello[12..44].to_vec();
            if mode & 1 == 0 {
                unauthenticated(&mut s, rest);
            } else {
                authenticated(&mut s, &ns, rest);
            }
        }
    }
    stop.stop();
    let _ = server.join();
    let _ = std::fs::remove_dir_all(&dir);
});
