//! `peer://host:port` target: the client of a `snapblk receive` process
//! ([`crate::receiver`]), and the wire protocol both sides speak.
//!
//! Wire protocol (all integers little-endian; see REMOTE-FORMAT.md, "Peer protocol"):
//! a mutual HMAC-SHA256 challenge-response over a pre-shared key (the key never crosses
//! the wire), then request/response frames each carrying an HMAC tag under a per-session
//! key and a per-direction counter, so a frame cannot be forged, altered, replayed or
//! reordered. Frames are size-limited and every socket operation has a timeout. The
//! receiver stores objects through [`super::file::FileTarget`], so a PUT is acknowledged only after the
//! object and its directory are fsynced; the manifest (a point's commit) is the last PUT.
//! Traffic is authenticated, not encrypted: tunnel it if the data is confidential.

use super::{Target, TargetError, TargetErrorKind, TargetResult};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Greeting magic of both handshake messages.
pub const PEER_MAGIC: &[u8; 8] = b"SNAPPEER";
/// Protocol version.
pub const PEER_VERSION: u32 = 1;
/// Largest frame (type + payload + tag) either side accepts.
pub const MAX_FRAME: u32 = (crate::format::MAX_SEGMENT_OBJECT as u32) + 4096;
/// Timeout for connecting and for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of any single read or write once connected (an idle connection is closed).
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the receiver serves at once; more are refused.
pub const MAX_CONNECTIONS: usize = 16;

pub(crate) const REQ_PUT: u8 = 1;
pub(crate) const REQ_GET: u8 = 2;
pub(crate) const REQ_HEAD: u8 = 3;
pub(crate) const REQ_LIST: u8 = 4;
pub(crate) const REQ_DELETE: u8 = 5;
pub(crate) const RESP_OK: u8 = 0x80;
pub(crate) const RESP_ERR: u8 = 0x81;
const TAG_LEN: usize = 32;

pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

pub(crate) fn mac_eq(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let Ok(mut m) = <HmacSha256 as Mac>::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok() // constant time
}

pub(crate) fn nonce() -> io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    Ok(n)
}

/// An authenticated connection: framing, tags and counters.
pub(crate) struct Conn {
    stream: TcpStream,
    session: [u8; 32],
    send_dir: u8,
    send_ctr: u64,
    recv_ctr: u64,
}

impl Conn {
    /// The connection after a successful handshake of server nonce `ns` and client nonce
    /// `nc`; `send_dir` is `b'C'` on the client, `b'S'` on the receiver. Both sides derive
    /// the same session key, and each direction counts its own frames from zero.
    pub(crate) fn established(
        stream: TcpStream,
        key: &[u8],
        ns: &[u8],
        nc: &[u8],
        send_dir: u8,
    ) -> Conn {
        Conn {
            stream,
            session: mac(key, &[b"snapblk-peer session", ns, nc]),
            send_dir,
            send_ctr: 0,
            recv_ctr: 0,
        }
    }

    pub(crate) fn send(&mut self, kind: u8, parts: &[&[u8]]) -> io::Result<()> {
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        let len = 1 + payload_len + TAG_LEN;
        if len > MAX_FRAME as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {len} bytes exceeds the {MAX_FRAME} limit"),
            ));
        }
        let ctr = self.send_ctr.to_le_bytes();
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.session)
            .map_err(|e| io::Error::other(e.to_string()))?;
        m.update(&[self.send_dir]);
        m.update(&ctr);
        m.update(&[kind]);
        for p in parts {
            m.update(p);
        }
        let tag: [u8; 32] = m.finalize().into_bytes().into();
        let mut buf = Vec::with_capacity(4 + len);
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        buf.push(kind);
        for p in parts {
            buf.extend_from_slice(p);
        }
        buf.extend_from_slice(&tag);
        self.stream.write_all(&buf)?;
        self.stream.flush()?;
        self.send_ctr += 1;
        Ok(())
    }

    pub(crate) fn recv(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut lb = [0u8; 4];
        self.stream.read_exact(&mut lb)?;
        let len = u32::from_le_bytes(lb);
        if len < 1 + TAG_LEN as u32 || len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame length {len} outside 33..={MAX_FRAME}"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf)?;
        let (body, tag) = buf.split_at(buf.len() - TAG_LEN);
        let recv_dir = if self.send_dir == b'C' { b'S' } else { b'C' };
        if !mac_eq(
            &self.session,
            &[&[recv_dir], &self.recv_ctr.to_le_bytes(), body],
            tag,
        ) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame authentication tag mismatch (tampered, replayed or wrong key)",
            ));
        }
        self.recv_ctr += 1;
        let kind = body[0];
        let payload = body[1..].to_vec();
        Ok((kind, payload))
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Cursor over a received payload; every read is bounds-checked.
pub(crate) struct Cur<'a>(pub(crate) &'a [u8]);

impl<'a> Cur<'a> {
    pub(crate) fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated payload",
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn str(&mut self) -> io::Result<&'a str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "key is not UTF-8"))
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    pub(crate) fn end(&self) -> io::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "trailing bytes in payload",
            ))
        }
    }
}

pub(crate) fn kind_code(k: TargetErrorKind) -> u8 {
    match k {
        TargetErrorKind::NotFound => 0,
        TargetErrorKind::AlreadyExists => 1,
        TargetErrorKind::Auth => 2,
        TargetErrorKind::Transient => 3,
        TargetErrorKind::Permanent => 4,
    }
}

fn code_kind(c: u8) -> TargetErrorKind {
    match c {
        0 => TargetErrorKind::NotFound,
        1 => TargetErrorKind::AlreadyExists,
        2 => TargetErrorKind::Auth,
        3 => TargetErrorKind::Transient,
        _ => TargetErrorKind::Permanent,
    }
}

/// Client side of the peer protocol.
pub struct PeerTarget {
    addr: String,
    key: Vec<u8>,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for PeerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTarget")
            .field("addr", &self.addr)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl PeerTarget {
    /// A target talking to the receiver at `addr` (`host:port`); connects on first use.
    pub fn new(addr: &str, key: Vec<u8>) -> PeerTarget {
        PeerTarget {
            addr: addr.to_string(),
            key,
            conn: Mutex::new(None),
        }
    }

    fn terr(&self, kind: TargetErrorKind, what: &str, detail: impl Into<String>) -> TargetError {
        TargetError::new(kind, format!("peer://{}/{what}", self.addr), detail)
    }

    fn io_err(&self, what: &str, op: &str, e: io::Error) -> TargetError {
        let kind = match e.kind() {
            io::ErrorKind::InvalidData => TargetErrorKind::Permanent,
            _ => TargetErrorKind::Transient,
        };
        self.terr(
            kind,
            what,
            format!(
                "{op}: {e}; is a receiver running on {}, and reachable?",
                self.addr
            ),
        )
    }

    fn connect(&self) -> TargetResult<Conn> {
        let addrs: Vec<SocketAddr> = self
            .addr
            .to_socket_addrs()
            .map_err(|e| {
                self.terr(
                    TargetErrorKind::Permanent,
                    "",
                    format!("cannot resolve {}: {e}; write peer://HOST:PORT", self.addr),
                )
            })?
            .collect();
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, HANDSHAKE_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut s = match stream {
            Some(s) => s,
            None => {
                return Err(self.io_err(
                    "",
                    "connect",
                    last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
                ))
            }
        };
        let hs = |e: io::Error| self.io_err("", "handshake", e);
        s.set_nodelay(true).map_err(hs)?;
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(hs)?;
        s.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(hs)?;
        let mut hello = [0u8; 44];
        s.read_exact(&mut hello).map_err(hs)?;
        if &hello[..8] != PEER_MAGIC || hello[8..12] != PEER_VERSION.to_le_bytes() {
            return Err(self.terr(
                TargetErrorKind::Permanent,
                "",
                "the server does not speak version 1 of the snapblk peer protocol",
            ));
        }
        let ns: [u8; 32] = hello[12..44]
            .try_into()
            .map_err(|_| self.terr(TargetErrorKind::Permanent, "", "bad hello"))?;
        let nc = nonce().map_err(hs)?;
        let proof = mac(&self.key, &[b"snapblk-peer client", &ns, &nc]);
        let mut auth = Vec::with_capacity(76);
        auth.extend_from_slice(PEER_MAGIC);
        auth.extend_from_slice(&PEER_VERSION.to_le_bytes());
        auth.extend_from_slice(&nc);
        auth.extend_from_slice(&proof);
        s.write_all(&auth).map_err(hs)?;
        let mut reply = [0u8; 33];
        match s.read_exact(&mut reply) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(self.terr(
                    TargetErrorKind::Auth,
                    "",
                    "the receiver rejected our key; use the same key file on both sides",
                ))
            }
            Err(e) => return Err(hs(e)),
        }
        if reply[0] != 0 {
            return Err(self.terr(
                TargetErrorKind::Auth,
                "",
                "the receiver rejected our key; use the same key file on both sides",
            ));
        }
        if !mac_eq(&self.key, &[b"snapblk-peer server", &nc, &ns], &reply[1..]) {
            return Err(self.terr(TargetErrorKind::Auth, "", "the receiver does not know our key (impostor or different key file); refusing to send data"));
        }
        s.set_read_timeout(Some(IO_TIMEOUT)).map_err(hs)?;
        s.set_write_timeout(Some(IO_TIMEOUT)).map_err(hs)?;
        Ok(Conn::established(s, &self.key, &ns, &nc, b'C'))
    }

    /// One request/response; any transport failure drops the connection so the next
    /// attempt (see `Retrying`) reconnects.
    fn call(&self, what: &str, kind: u8, parts: &[&[u8]]) -> TargetResult<Vec<u8>> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.connect()?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(self.terr(TargetErrorKind::Transient, what, "not connected"));
        };
        let result = conn.send(kind, parts).and_then(|_| conn.recv());
        match result {
            Ok((RESP_OK, payload)) => Ok(payload),
            Ok((RESP_ERR, payload)) => {
                let mut c = Cur(&payload);
                let code = c.u8().unwrap_or(4);
                let msg = String::from_utf8_lossy(c.rest()).to_string();
                Err(self.terr(code_kind(code), what, format!("receiver: {msg}")))
            }
            Ok((t, _)) => {
                *guard = None;
                Err(self.terr(
                    TargetErrorKind::Permanent,
                    what,
                    format!("unexpected response type {t:#x}"),
                ))
            }
            Err(e) => {
                *guard = None;
                Err(self.io_err(what, "request", e))
            }
        }
    }
}

impl Target for PeerTarget {
    fn id(&self) -> String {
        format!("peer://{}", self.addr)
    }
    fn put_new(&self, key: &str, data: &[u8]) -> TargetResult<()> {
        let mut h = Vec::new();
        put_str(&mut h, key);
        self.call(key, REQ_PUT, &[&h, data]).map(|_| ())
    }
    fn get(&self, key: &str, max_len: u64) -> TargetResult<Vec<u8>> {
        let mut h = Vec::new();
        put_str(&mut h, key);
        h.extend_from_slice(&max_len.to_le_bytes());
        self.call(key, REQ_GET, &[&h])
    }
    fn head(&self, key: &str) -> TargetResult<Option<u64>> {
        let mut h = Vec::new();
        put_str(&mut h, key);
        let r = self.call(key, REQ_HEAD, &[&h])?;
        let mut c = Cur(&r);
        let bad = |_| self.terr(TargetErrorKind::Permanent, key, "malformed HEAD response");
        let exists = c.u8().map_err(bad)?;
        let size = c.u64().map_err(bad)?;
        Ok((exists == 1).then_some(size))
    }
    fn list(&self, prefix: &str) -> TargetResult<Vec<String>> {
        let mut h = Vec::new();
        put_str(&mut h, prefix);
        let r = self.call(prefix, REQ_LIST, &[&h])?;
        let mut c = Cur(&r);
        let bad = |_| {
            self.terr(
                TargetErrorKind::Permanent,
                prefix,
                "malformed LIST response",
            )
        };
        let n = c.u32().map_err(bad)?;
        let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
        for _ in 0..n {
            out.push(c.str().map_err(bad)?.to_string());
        }
        Ok(out)
    }
    fn delete(&self, key: &str) -> TargetResult<()> {
        let mut h = Vec::new();
        put_str(&mut h, key);
        self.call(key, REQ_DELETE, &[&h]).map(|_| ())
    }
}
