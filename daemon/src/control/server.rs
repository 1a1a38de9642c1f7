//! The daemon side of the control socket. One thread per connection, a cap
//! on connections, bounded line length and read/write timeouts: a slow or
//! hostile client can waste one thread, never stall device I/O.

use super::protocol::{read_line_bounded, Reply, ReplyLine, Request, MAX_LINE, PROTOCOL_VERSION};
use super::{Answer, Failure, FailureKind};
use crate::Error;
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request or accept a reply line.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Who is on the other end of a connection (from `SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Peer process id.
    pub pid: i32,
    /// Peer user id.
    pub uid: u32,
}

/// Executes validated requests.
pub trait Handler: Send + Sync + 'static {
    /// Runs `req` for `peer`; `progress(done, total)` may be called any number
    /// of times.
    fn handle(
        &self,
        req: Request,
        peer: Peer,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Answer, Failure>;
}

/// A listening control socket.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `path` (mode 0600) and serves it on a background thread. Only
    /// peers with uid `allowed_uid` are answered.
    pub fn start(
        path: &Path,
        handler: Arc<dyn Handler>,
        allowed_uid: u32,
    ) -> Result<Server, Error> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove stale socket {}", path.display()))(e)),
        }
        let listener = UnixListener::bind(path)
            .map_err(Error::io(format!("bind control socket {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            Error::io(format!("chmod control socket {}", path.display())),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("snapblk-ctl".into())
            .spawn(move || accept_loop(listener, handler, allowed_uid, &stop2))
            .map_err(Error::io("start control socket thread"))?;
        Ok(Server {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting; connections in progress finish on their own threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    allowed_uid: u32,
    stop: &AtomicBool,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.write_all(&reply_line(Reply::Error {
                failure: Failure::other(format!(
                    "daemon busy: more than {MAX_CONNECTIONS} control connections; retry later"
                )),
            }));
            continue;
        }
        // Connections hold the handler weakly: an idle client must not keep
        // the engine alive once the daemon shuts the socket down.
        let handler = Arc::downgrade(&handler);
        let active2 = active.clone();
        let spawned = std::thread::Builder::new()
            .name("snapblk-ctl-conn".into())
            .spawn(move || {
                serve_connection(stream, &handler, allowed_uid);
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "cannot start control connection thread");
        }
    }
}

/// Reads `SO_PEERCRED` of a connected unix socket.
pub fn peer_of(stream: &UnixStream) -> Option<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(Peer {
        pid: cred.pid,
        uid: cred.uid,
    })
}

/// One reply as a line of this protocol version.
fn reply_line(reply: Reply) -> Vec<u8> {
    super::protocol::encode(&ReplyLine {
        version: PROTOCOL_VERSION,
        reply,
    })
}

fn error(failure: Failure) -> Reply {
    Reply::Error { failure }
}

fn serve_connection(stream: UnixStream, handler: &Weak<dyn Handler>, allowed_uid: u32) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let send = |w: &mut UnixStream, r: Reply| w.write_all(&reply_line(r)).is_ok();
    let Some(peer) = peer_of(&stream) else {
        send(
            &mut writer,
            error(Failure::other("cannot identify the peer process")),
        );
        return;
    };
    if peer.uid != allowed_uid && peer.uid != 0 {
        send(
            &mut writer,
            error(Failure::new(FailureKind::NotRoot, "permission denied")),
        );
        return;
    }
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line_bounded(&mut reader, MAX_LINE) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                send(&mut writer, error(Failure::other(e.to_string())));
                return;
            }
        };
        let reply = match (Request::decode(&line), handler.upgrade()) {
            (Err(failure), _) => error(failure),
            (Ok(_), None) => error(Failure::new(
                FailureKind::ShuttingDown,
                "the daemon is shutting down",
            )),
            (Ok(req), Some(handler)) => {
                tracing::info!(?req, pid = peer.pid, "control request");
                // The first progress line goes out at once.
                let first = Instant::now().checked_sub(PROGRESS_EVERY);
                let w = std::sync::Mutex::new((writer.try_clone().ok(), first));
                let progress = |done: u64, total: u64| {
                    let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
                    if g.1.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) || done == total {
                        g.1 = Some(Instant::now());
                        if let Some(s) = g.0.as_mut() {
                            // A client that stopped reading only loses progress.
                            if s.write_all(&reply_line(Reply::Progress { done, total }))
                                .is_err()
                            {
                                g.0 = None;
                            }
                        }
                    }
                };
                match handler.handle(req, peer, &progress) {
                    Ok(answer) => Reply::Ok {
                        answer: Box::new(answer),
                    },
                    Err(failure) => error(failure),
                }
            }
        };
        if !send(&mut writer, reply) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::answer::{Deleted, Restored};
    use crate::control::client::Client;

    struct Echo;
    impl Handler for Echo {
        fn handle(
            &self,
            req: Request,
            peer: Peer,
            progress: &(dyn Fn(u64, u64) + Sync),
        ) -> Result<Answer, Failure> {
            match req {
                Request::Restore { name } => {
                    for i in 1..=3 {
                        progress(i, 3);
                    }
                    Ok(Answer::Restored(Restored {
                        restored: name.clone(),
                        elapsed_secs: 0.5,
                        report: snapmap::RestoreReport {
                            snapshot: name,
                            pre_restore: "pre".into(),
                            resumed: false,
                            blocks: 3,
                            written: 2,
                            skipped: 1,
                        },
                    }))
                }
                Request::SnapshotDelete { name } => Err(Failure::new(
                    FailureKind::NoSuchSnapshot,
                    format!("snapshot {name} not found"),
                )),
                _ => Ok(Answer::Deleted(Deleted {
                    deleted: peer.pid.to_string(),
                })),
            }
        }
    }

    #[test]
    fn serves_requests_progress_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let server = Server::start(&path, Arc::new(Echo), uid).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let client = Client::new(&path);
        let r = client.call(&Request::Status, &mut |_, _| {}).unwrap();
        assert!(
            matches!(&r, Answer::Deleted(d) if d.deleted == std::process::id().to_string()),
            "{r:?}"
        );

        let mut seen = vec![];
        let r = client
            .call(&Request::Restore { name: "s1".into() }, &mut |d, t| {
                seen.push((d, t))
            })
            .unwrap();
        assert!(
            matches!(&r, Answer::Restored(x) if x.restored == "s1" && x.report.written == 2),
            "{r:?}"
        );
        assert_eq!(seen.last(), Some(&(3, 3)));

        let e = client
            .call(
                &Request::SnapshotDelete {
                    name: "nope".into(),
                },
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(e.to_string().contains("snapshot nope not found"), "{e}");
        assert!(
            matches!(&e, Error::Remote(f) if f.kind == FailureKind::NoSuchSnapshot),
            "{e:?}"
        );
        server.stop();
        assert!(!path.exists());
    }

    #[test]
    fn malformed_and_oversized_lines_get_an_error_and_io_continues() {
        use std::io::{BufRead, Read};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        // SAFETY: geteuid has no preconditions.
        let server = Server::start(&path, Arc::new(Echo), unsafe { libc::geteuid() }).unwrap();

        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"version\":2,\"request\":{\"op\":\"nuke\"}}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let reply: ReplyLine = serde_json::from_str(&line).unwrap();
        assert!(
            matches!(reply.reply, Reply::Error { ref failure } if failure.message.contains("malformed")),
            "{line}"
        );

        // A request of another protocol version gets the version failure, in the shape
        // every version keeps.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"op\":\"status\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains(r#""kind":{"code":"version","daemon":2}"#),
            "{line}"
        );

        // A client that sends an endless line is cut off...
        let mut s = UnixStream::connect(&path).unwrap();
        let big = vec![b'x'; MAX_LINE + 10];
        let _ = s.write_all(&big);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.contains("longer than"), "{out}");

        // ...while a client that sends nothing does not block others.
        let _idle = UnixStream::connect(&path).unwrap();
        let r = Client::new(&path)
            .call(&Request::Status, &mut |_, _| {})
            .unwrap();
        assert!(matches!(r, Answer::Deleted(_)), "{r:?}");
        server.stop();
    }

    #[test]
    fn idle_clients_do_not_keep_the_handler_alive_after_stop() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let handler = Arc::new(Echo);
        let as_dyn: Arc<dyn Handler> = handler.clone();
        // SAFETY: geteuid has no preconditions.
        let server = Server::start(&path, as_dyn, unsafe { libc::geteuid() }).unwrap();
        let mut idle = UnixStream::connect(&path).unwrap();
        // Make sure the connection thread exists before stopping.
        idle.write_all(&Request::Status.line()).unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(idle.try_clone().unwrap());
        r.read_line(&mut line).unwrap();
        server.stop();
        assert_eq!(
            Arc::strong_count(&handler),
            1,
            "only the test holds the handler now"
        );
        drop(handler);
        idle.write_all(&Request::Status.line()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("shutting down"), "{line}");
    }
}
