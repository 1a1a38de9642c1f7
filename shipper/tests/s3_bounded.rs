//! `S3Target::get` refuses an oversized object without downloading it, even from a server
//! that ignores the Range header. The server here is a few lines on a loopback port.

mod common;

use common::loopback_s3_creds;
use shipper::{Retry, S3Target, Target};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

/// Answers one GET with `body_len` bytes (status 200, whatever the request asked for);
/// reports the request's head and how many body bytes the client accepted.
fn careless_server(body_len: usize) -> (u16, mpsc::Receiver<(String, usize)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let chunk = vec![0x5Au8; 64 << 10];
        let mut sent = 0;
        while sent < body_len {
            match s.write(&chunk[..chunk.len().min(body_len - sent)]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let _ = tx.send((String::from_utf8_lossy(&head).into_owned(), sent));
    });
    (port, rx)
}

fn target(port: u16) -> S3Target {
    let creds = loopback_s3_creds(port, Retry::none());
    S3Target::new("bkt", "p", &creds).unwrap()
}

#[test]
fn an_oversized_object_is_refused_without_being_downloaded() {
    let body = 64 << 20;
    let (port, rx) = careless_server(body);
    let e = target(port).get("manifests/x", 4096).unwrap_err();
    assert!(e.detail.contains("more than the 4096 bytes allowed"), "{e}");
    let (head, sent) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        head.to_ascii_lowercase().contains("range: bytes=0-4096"),
        "only max_len + 1 bytes are asked for: {head}"
    );
    // What the kernel buffers before the client hangs up, not the 64 MiB.
    assert!(sent < 16 << 20, "the client read {sent} of {body} bytes");
}
