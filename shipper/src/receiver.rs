//! The receiving end of `peer://` (`snapblk receive`): serves authenticated peers and
//! stores what they send into a directory laid out exactly like a `file://` target.
//!
//! Storing through [`FileTarget`] is what makes a PUT acknowledged only after the object
//! and its directory are fsynced, and what refuses to overwrite a published object; the
//! wire protocol and its handshake are in [`crate::targets::peer`].

use crate::error::{Error, Result};
use crate::targets::file::FileTarget;
use crate::targets::peer::{
    kind_code, mac, mac_eq, nonce, put_str, Conn, Cur, HANDSHAKE_TIMEOUT, IO_TIMEOUT,
    MAX_CONNECTIONS, PEER_MAGIC, PEER_VERSION, REQ_DELETE, REQ_GET, REQ_HEAD, REQ_LIST, REQ_PUT,
    RESP_ERR, RESP_OK,
};
use crate::targets::{validate_key, Target, TargetResult};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The receiving end: stores what authenticated peers send into a directory laid out
/// exactly like a `file://` target.
pub struct Receiver {
    listener: TcpListener,
    store: Arc<FileTarget>,
    key: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
}

/// Stops a running [`Receiver`] from another thread.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl StopHandle {
    /// Asks the receiver to stop accepting; in-flight requests finish.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

impl Receiver {
    /// Binds `listen_addr` and prepares to store into `dir` with pre-shared `key`.
    pub fn bind(listen_addr: &str, dir: &Path, key: Vec<u8>) -> Result<Receiver> {
        if key.len() < 16 {
            return Err(Error::Credentials(
                "peer key shorter than 16 bytes; generate a longer key file".into(),
            ));
        }
        let store = FileTarget::new(dir).map_err(Error::Target)?;
        let listener = TcpListener::bind(listen_addr)
            .map_err(|e| Error::io(listen_addr, "listen (is the port free?)", e))?;
        Ok(Receiver {
            listener,
            store: Arc::new(store),
            key: Arc::new(key),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("listener", "local address", e))
    }

    /// A handle that stops [`Receiver::run`].
    pub fn stop_handle(&self) -> Result<StopHandle> {
        Ok(StopHandle {
            stop: self.stop.clone(),
            addr: self.local_addr()?,
        })
    }

    /// Serves connections until stopped, each on its own thread (at most [`MAX_CONNECTIONS`]).
    pub fn run(self) -> Result<()> {
        let active = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("receiver accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                tracing::warn!("receiver: refusing connection, {MAX_CONNECTIONS} already active");
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let (store, key, active2) = (self.store.clone(), self.key.clone(), active.clone());
            std::thread::spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                if let Err(e) = serve(stream, &store, &key) {
                    tracing::warn!("receiver: connection from {peer} closed: {e}");
                }
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Ok(())
    }
}

/// Runs a receiver on `listen_addr` storing into `dir` until the process ends.
pub fn receive(listen_addr: &str, dir: &Path, key: Vec<u8>) -> Result<()> {
    let r = Receiver::bind(listen_addr, dir, key)?;
    tracing::info!("receiving on {} into {}", r.local_addr()?, dir.display());
    r.run()
}

fn serve(mut s: TcpStream, store: &FileTarget, key: &[u8]) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let ns = nonce()?;
    let mut hello = Vec::with_capacity(44);
    hello.extend_from_slice(PEER_MAGIC);
    hello.extend_from_slice(&PEER_VERSION.to_le_bytes());
    hello.extend_from_slice(&ns);
    s.write_all(&hello)?;
    let mut auth = [0u8; 76];
    s.read_exact(&mut auth)?;
    if &auth[..8] != PEER_MAGIC || auth[8..12] != PEER_VERSION.to_le_bytes() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a snapblk peer (bad greeting)",
        ));
    }
    let nc = &auth[12..44];
    if !mac_eq(key, &[b"snapblk-peer client", &ns, nc], &auth[44..76]) {
        let _ = s.write_all(&[1u8; 33]);
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "client failed authentication (wrong key)",
        ));
    }
    let mut reply = vec![0u8];
    reply.extend_from_slice(&mac(key, &[b"snapblk-peer server", nc, &ns]));
    s.write_all(&reply)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut conn = Conn::established(s, key, &ns, nc, b'S');
    loop {
        let (kind, payload) = match conn.recv() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut c = Cur(&payload);
        let key = c.str()?;
        if !(kind == REQ_LIST && key.is_empty()) {
            let check = if kind == REQ_LIST {
                key.trim_end_matches('/')
            } else {
                key
            };
            if let Err(d) = validate_key(check) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, d));
            }
        }
        let result: TargetResult<Vec<u8>> = match kind {
            REQ_PUT => store.put_new(key, c.rest()).map(|_| Vec::new()),
            REQ_GET => {
                let max = c.u64()?;
                c.end()?;
                store.get(key, max)
            }
            REQ_HEAD => {
                c.end()?;
                store.head(key).map(|h| {
                    let mut r = vec![h.is_some() as u8];
                    r.extend_from_slice(&h.unwrap_or(0).to_le_bytes());
                    r
                })
            }
            REQ_LIST => {
                c.end()?;
                store.list(key).map(|keys| {
                    let mut r = (keys.len() as u32).to_le_bytes().to_vec();
                    for k in keys {
                        put_str(&mut r, &k);
                    }
                    r
                })
            }
            REQ_DELETE => {
                c.end()?;
                store.delete(key).map(|_| Vec::new())
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown request type {other:#x}"),
                ))
            }
        };
        match result {
            Ok(r) => conn.send(RESP_OK, &[&r])?,
            Err(e) => {
                // Never leak the receiver's local paths: send the kind and the detail only.
                conn.send(RESP_ERR, &[&[kind_code(e.kind)], e.detail.as_bytes()])?
            }
        }
    }
}
