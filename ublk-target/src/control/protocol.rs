//! Wire types of the control socket and their validation.
//!
//! One JSON object per line. A restore, as the CLI sends it and the daemon
//! answers (progress lines are rate-limited and optional):
//!
//! ```text
//! -> {"op":"restore","name":"before-upgrade"}
//! <- {"type":"progress","done":512,"total":2048}
//! <- {"type":"ok","result":{"restored":"before-upgrade","secs":0.4,"report":{...}}}
//! ```
//!
//! Errors end the exchange with `{"type":"error","message":"..."}`, the
//! message naming the object and the fix.
//!
//! New verb groups (shipping) add variants to [`Request`]; the framing
//! ([`encode`], [`read_line_bounded`]) stays the same.

use crate::Error;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::PathBuf;

/// Longest accepted line (request or reply), in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Longest reply line; a diff of a fragmented disk can be large.
pub const MAX_REPLY_LINE: usize = 256 * 1024 * 1024;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Device, I/O and engine status.
    Status,
    /// Take a snapshot.
    SnapshotCreate {
        /// Snapshot name.
        name: String,
    },
    /// List user snapshots, oldest first.
    SnapshotList,
    /// Delete a snapshot.
    SnapshotDelete {
        /// Snapshot name.
        name: String,
    },
    /// Roll the device back to a snapshot (refused while the device is in use).
    Restore {
        /// Snapshot name.
        name: String,
    },
    /// Write a snapshot as a plain image file.
    Export {
        /// Snapshot name.
        name: String,
        /// Absolute path of the image, as seen by the requesting process.
        to: PathBuf,
    },
    /// Changed block ranges between two snapshots (`to` = None: the live image).
    Diff {
        /// Older snapshot.
        from: String,
        /// Newer snapshot.
        to: Option<String>,
    },
    /// Verify the store.
    Check,
    /// Stop the device, close the engine and delete the device.
    Shutdown,
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Progress of a long request, in blocks.
    Progress {
        /// Blocks done.
        done: u64,
        /// Blocks in total.
        total: u64,
    },
    /// Final success, with a request-specific result.
    Ok {
        /// The result.
        result: serde_json::Value,
    },
    /// Final failure; the message names the object and the fix.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Checks a snapshot name with the engine's rule (one place for that fact).
pub fn validate_name(name: &str) -> Result<(), String> {
    snapmap::validate_name(name).map_err(|e| e.to_string())
}

impl Request {
    /// Checks the fields a client controls.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Request::SnapshotCreate { name }
            | Request::SnapshotDelete { name }
            | Request::Restore { name } => validate_name(name),
            Request::Export { name, to } => {
                validate_name(name)?;
                if !to.is_absolute() {
                    return Err(format!(
                        "export target {} must be an absolute path",
                        to.display()
                    ));
                }
                if to.as_os_str().len() > 4096 {
                    return Err("export target path is too long".into());
                }
                Ok(())
            }
            Request::Diff { from, to } => {
                validate_name(from)?;
                to.as_deref().map(validate_name).transpose().map(|_| ())
            }
            Request::Status | Request::SnapshotList | Request::Check | Request::Shutdown => Ok(()),
        }
    }

    /// Parses and validates one request line.
    pub fn decode(line: &str) -> Result<Request, String> {
        let req: Request =
            serde_json::from_str(line.trim_end()).map_err(|e| format!("malformed request: {e}"))?;
        req.validate()?;
        Ok(req)
    }
}

/// Serializes one message as a JSON line.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail; fall back to an error line
    // rather than panic.
    let mut v = serde_json::to_vec(msg).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","message":"encode failed: {e}"}}"#).into_bytes()
    });
    v.push(b'\n');
    v
}

/// Reads one `\n`-terminated line of at most `max` bytes. `Ok(None)` on a
/// clean EOF before any byte.
pub fn read_line_bounded<R: BufRead>(r: &mut R, max: usize) -> Result<Option<String>, Error> {
    let mut buf = Vec::new();
    loop {
        let chunk = r
            .fill_buf()
            .map_err(Error::io("read from control socket"))?;
        if chunk.is_empty() {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(Error::Protocol("control socket closed mid-line".into()));
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > max {
            return Err(Error::Protocol(format!(
                "control message longer than {max} bytes"
            )));
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            buf.pop();
            return String::from_utf8(buf)
                .map(Some)
                .map_err(|_| Error::Protocol("control message is not UTF-8".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let reqs = vec![
            Request::Status,
            Request::SnapshotCreate {
                name: "before-upgrade".into(),
            },
            Request::SnapshotList,
            Request::SnapshotDelete { name: "a".into() },
            Request::Restore { name: "a.1".into() },
            Request::Export {
                name: "a".into(),
                to: "/tmp/x.img".into(),
            },
            Request::Diff {
                from: "a".into(),
                to: Some("b".into()),
            },
            Request::Diff {
                from: "a".into(),
                to: None,
            },
            Request::Check,
            Request::Shutdown,
        ];
        for r in reqs {
            let line = String::from_utf8(encode(&r)).unwrap();
            assert!(line.ends_with('\n'));
            assert_eq!(Request::decode(&line).unwrap(), r);
        }
    }

    #[test]
    fn wire_format_is_tagged_by_op() {
        let line =
            String::from_utf8(encode(&Request::SnapshotCreate { name: "s1".into() })).unwrap();
        assert_eq!(line, "{\"op\":\"snapshot_create\",\"name\":\"s1\"}\n");
        let r = Request::decode(r#"{"op":"diff","from":"a","to":null}"#).unwrap();
        assert_eq!(
            r,
            Request::Diff {
                from: "a".into(),
                to: None
            }
        );
    }

    #[test]
    fn bad_requests_are_rejected_with_reason() {
        assert!(Request::decode("{").unwrap_err().contains("malformed"));
        assert!(Request::decode(r#"{"op":"format_disk"}"#)
            .unwrap_err()
            .contains("malformed"));
        let e = Request::decode(r#"{"op":"snapshot_create","name":"../etc"}"#).unwrap_err();
        assert!(e.contains("invalid snapshot name"), "{e}");
        let e = Request::decode(r#"{"op":"snapshot_create","name":"a b"}"#).unwrap_err();
        assert!(e.contains("invalid snapshot name \"a b\""), "{e}");
        let long = "x".repeat(201);
        let e = Request::decode(&format!(r#"{{"op":"restore","name":"{long}"}}"#)).unwrap_err();
        assert!(e.contains("1-200 characters"), "{e}");
        let e = Request::decode(r#"{"op":"export","name":"a","to":"rel.img"}"#).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Progress { done: 1, total: 2 },
            Reply::Ok {
                result: serde_json::json!({"a": 1}),
            },
            Reply::Error {
                message: "no".into(),
            },
        ] {
            let line = String::from_utf8(encode(&r)).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), r);
        }
    }

    #[test]
    fn line_reader_bounds_and_splits() {
        let data = b"abc\ndef\nxyz";
        let mut r = std::io::BufReader::with_capacity(2, &data[..]);
        assert_eq!(
            read_line_bounded(&mut r, 10).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            read_line_bounded(&mut r, 10).unwrap().as_deref(),
            Some("def")
        );
        assert!(read_line_bounded(&mut r, 10).is_err(), "unterminated tail");
        let mut r = std::io::BufReader::new(&b""[..]);
        assert_eq!(read_line_bounded(&mut r, 10).unwrap(), None);
        let big = [b'a'; 100];
        let mut r = std::io::BufReader::new(&big[..]);
        let e = read_line_bounded(&mut r, 10).unwrap_err().to_string();
        assert!(e.contains("longer than 10"), "{e}");
    }
}
