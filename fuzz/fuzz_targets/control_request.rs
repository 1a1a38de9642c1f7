//! The control socket's request path in the daemon crate: `read_line_bounded` framing over the
//! raw bytes a local client sends, then `Request::decode` (JSON parse + validation) of every
//! line. Accepted requests must re-encode and decode the same.
#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;
use snapblk_daemon::control::protocol::{read_line_bounded, Request, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    // A small buffer makes lines span many fill_buf calls, as on a slow socket.
    let mut r = BufReader::with_capacity(7, data);
    for _ in 0..64 {
        let Ok(Some(line)) = read_line_bounded(&mut r, MAX_LINE) else {
            break;
        };
        assert!(
            line.len() < MAX_LINE,
            "a line of {} bytes was accepted",
            line.len()
        );
        let Ok(req) = Request::decode(&line) else {
            continue;
        };
        let text = String::from_utf8(req.line()).unwrap_or_default();
        assert_eq!(
            Request::decode(&text).ok().as_ref(),
            Some(&req),
            "request did not survive encode/decode"
        );
    }
});
