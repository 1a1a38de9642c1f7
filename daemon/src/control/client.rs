//! The CLI side of the control socket.

use super::protocol::{
    read_line_bounded, Reply, ReplyLine, Request, MAX_REPLY_LINE, PROTOCOL_VERSION,
};
use super::{Answer, FailureKind};
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
    /// `progress(done, total)`. A daemon of another protocol version is reported as
    /// [`Error::Version`], whatever it answered.
    pub fn call(&self, req: &Request, progress: &mut dyn FnMut(u64, u64)) -> Result<Answer, Error> {
        let sock = self.path.display().to_string();
        let mut stream = UnixStream::connect(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => ublk_target::Error::NotRoot {
                what: format!("talking to the daemon (control socket {sock})"),
            }
            .into(),
            _ => Error::Connect {
                socket: self.path.clone(),
                source: e,
            },
        })?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(Duration::from_secs(30))))
            .map_err(Error::io(format!("configure control socket {sock}")))?;
        stream
            .write_all(&req.line())
            .map_err(Error::io(format!("send request to control socket {sock}")))?;
        let mut reader = BufReader::new(stream);
        loop {
            let line = read_line_bounded(&mut reader, MAX_REPLY_LINE)?.ok_or_else(|| {
                Error::Protocol(format!(
                    "daemon closed control socket {sock} without a reply"
                ))
            })?;
            match decode_reply(&line)? {
                Reply::Progress { done, total } => progress(done, total),
                Reply::Ok { answer } => return Ok(*answer),
                Reply::Error { failure } => {
                    if let FailureKind::Version { daemon } = failure.kind {
                        return Err(Error::Version {
                            ours: PROTOCOL_VERSION,
                            theirs: Some(daemon),
                        });
                    }
                    return Err(Error::Remote(failure));
                }
            }
        }
    }
}

/// Reads one reply line, telling a daemon of another protocol version (whose lines
/// carry another version, or none) from a malformed reply.
fn decode_reply(line: &str) -> Result<Reply, Error> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Error::Protocol(format!("malformed reply from daemon ({e})")))?;
    let theirs = value.get("version").and_then(serde_json::Value::as_u64);
    if theirs != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(Error::Version {
            ours: PROTOCOL_VERSION,
            theirs: theirs.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
        });
    }
    serde_json::from_value::<ReplyLine>(value)
        .map(|l| l.reply)
        .map_err(|e| Error::Protocol(format!("malformed reply from daemon ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_of_another_version_is_named_as_such() {
        // What an unversioned daemon answers a versioned request with.
        let old = r#"{"type":"error","message":"malformed request: unknown field `version`"}"#;
        let e = decode_reply(old).unwrap_err();
        assert!(matches!(e, Error::Version { theirs: None, .. }), "{e:?}");
        assert!(e.to_string().contains("older control protocol"), "{e}");
        let newer = r#"{"version":99,"type":"ok","answer":{"kind":"future"}}"#;
        let e = decode_reply(newer).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
        assert!(decode_reply("{")
            .unwrap_err()
            .to_string()
            .contains("malformed"));
    }
}
