//! The CLI side of the control socket.

use super::protocol::{encode, read_line_bounded, Reply, Request, MAX_REPLY_LINE};
use crate::Error;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for the daemon to say anything (progress included).
/// Long requests report progress, so this bounds silence, not duration.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection factory for one device's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client for the socket at `path`.
    pub fn new(path: &Path) -> Client {
        Client {
            path: path.to_path_buf(),
        }
    }

    /// Sends `req` and waits for the final reply, passing progress lines to
    /// `progress(done, total)`.
    pub fn call(
        &self,
        req: &Request,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<serde_json::Value, Error> {
        let sock = self.path.display().to_string();
        let mut stream = UnixStream::connect(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Error::NotRoot {
                what: format!("talking to the daemon (control socket {sock})"),
            },
            _ => Error::io(format!(
                "connect to control socket {sock} (is the daemon running? see `snapblk list`)"
            ))(e),
        })?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(Duration::from_secs(30))))
            .map_err(Error::io(format!("configure control socket {sock}")))?;
        stream
            .write_all(&encode(req))
            .map_err(Error::io(format!("send request to control socket {sock}")))?;
        let mut reader = BufReader::new(stream);
        loop {
            let line = read_line_bounded(&mut reader, MAX_REPLY_LINE)?.ok_or_else(|| {
                Error::Protocol(format!(
                    "daemon closed control socket {sock} without a reply"
                ))
            })?;
            let reply: Reply = serde_json::from_str(&line).map_err(|e| {
                Error::Protocol(format!("malformed reply from daemon ({e}): check versions"))
            })?;
            match reply {
                Reply::Progress { done, total } => progress(done, total),
                Reply::Ok { result } => return Ok(result),
                Reply::Error { message } => return Err(Error::Remote(message)),
            }
        }
    }
}
