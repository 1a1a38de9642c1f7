//! Wire types of the control socket and their validation.
//!
//! One JSON object per line, each carrying the protocol version. A restore, as the
//! CLI sends it and the daemon answers (progress lines are rate-limited and optional):
//!
//! ```text
//! -> {"version":2,"request":{"op":"restore","name":"before-upgrade"}}
//! <- {"version":2,"type":"progress","done":512,"total":2048}
//! <- {"version":2,"type":"ok","answer":{"kind":"restored","value":{"restored":"before-upgrade","elapsed_secs":0.4,"report":{...}}}}
//! ```
//!
//! Errors end the exchange with `{"version":2,"type":"error","failure":{"message":"...","kind":{"code":"..."}}}`:
//! the message says what failed and where, the kind lets the CLI add what to do.
//! Requests, [`Answer`]s and [`Failure`]s are typed once, here, and used by both ends;
//! durations are float seconds (fields named `*_secs`).

#[cfg(test)]
use super::FailureKind;
use super::{Answer, Failure};
use crate::Error;
use serde::{Deserialize, Serialize};
use shipper::Credentials;
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
    /// Ship one point to `url` and answer once it is committed.
    ShipOnce {
        /// Target URL (`file:///DIR`, `s3://BUCKET/PREFIX`, `peer://HOST:PORT`).
        url: String,
        /// Settings and secrets for the target, from the CLI's environment, in shipper's
        /// own wire form; they cross only the root-only socket, never a command line, and
        /// `Debug` shows none of them.
        secrets: Credentials,
    },
    /// Start (or retune) continuous shipping to `url` every `interval_ms`.
    ShipStart {
        /// Target URL.
        url: String,
        /// Milliseconds between ship points.
        interval_ms: u64,
        /// Settings and secrets for the target.
        secrets: Credentials,
    },
    /// Pause, resume or stop continuous shipping to `url`.
    ShipControl {
        /// Target URL, as given to `ShipStart`.
        url: String,
        /// What to do.
        action: ShipAction,
    },
    /// Per-target shipping statistics.
    ShipStatus,
    /// Serve snapshot `name` as a new read-only device (`/dev/ublkbM`), alongside the
    /// volume.
    SnapshotAttach {
        /// Snapshot name.
        name: String,
        /// The device id to ask for (`--as M`); the kernel picks one when `None`.
        as_id: Option<u32>,
    },
    /// Stop and remove the attached device `id` (the snapshot stays).
    SnapshotDetach {
        /// Device id of the attachment.
        id: u32,
    },
}

/// What [`Request::ShipControl`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipAction {
    /// Stop starting new points (one in flight completes).
    Pause,
    /// Resume after a pause; ships at once.
    Resume,
    /// Stop and forget the schedule (the ship state file stays).
    Stop,
}

/// Longest accepted ship target URL.
pub const MAX_URL: usize = 1024;
/// Shortest continuous shipping interval.
pub const MIN_SHIP_INTERVAL_MS: u64 = 100;
/// Longest continuous shipping interval (a week).
pub const MAX_SHIP_INTERVAL_MS: u64 = 7 * 24 * 3600 * 1000;

fn validate_url(url: &str) -> Result<(), String> {
    if url.is_empty() || url.len() > MAX_URL {
        return Err(format!(
            "ship target URL must be 1-{MAX_URL} bytes, e.g. file:///srv/backup"
        ));
    }
    if url.chars().any(char::is_control) {
        return Err("ship target URL contains control characters".into());
    }
    Ok(())
}

/// The version of this protocol. Both sides send it on every line; a client and a daemon
/// of different versions fail with one clear line ([`Error::Version`]) instead of a parse
/// error. Bump it whenever a request, answer or failure changes shape.
pub const PROTOCOL_VERSION: u32 = 2;

/// One request line: the protocol version and the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// What is asked.
    pub request: Request,
}

/// One reply line: the protocol version and the reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyLine {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The reply.
    #[serde(flatten)]
    pub reply: Reply,
}

/// One reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Progress of a long request, in blocks.
    Progress {
        /// Blocks done.
        done: u64,
        /// Blocks in total.
        total: u64,
    },
    /// Final success.
    Ok {
        /// The answer, typed per request (boxed: answers are much larger than progress).
        answer: Box<Answer>,
    },
    /// Final failure.
    Error {
        /// What went wrong, and of which kind.
        failure: Failure,
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
            | Request::Restore { name }
            | Request::SnapshotAttach { name, .. } => validate_name(name),
            Request::SnapshotDetach { .. } => Ok(()),
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
            Request::ShipOnce { url, .. } | Request::ShipControl { url, .. } => validate_url(url),
            Request::ShipStart {
                url, interval_ms, ..
            } => {
                validate_url(url)?;
                if !(MIN_SHIP_INTERVAL_MS..=MAX_SHIP_INTERVAL_MS).contains(interval_ms) {
                    return Err(format!(
                        "ship interval {interval_ms} ms is out of range: use 100ms to 7 days"
                    ));
                }
                Ok(())
            }
            Request::Status
            | Request::SnapshotList
            | Request::Check
            | Request::Shutdown
            | Request::ShipStatus => Ok(()),
        }
    }

    /// This request as one line of the current protocol version.
    pub fn line(&self) -> Vec<u8> {
        encode(&RequestLine {
            version: PROTOCOL_VERSION,
            request: self.clone(),
        })
    }

    /// Parses and validates one request line. A line of another protocol version (or
    /// none: an older client) is refused with a [`FailureKind::Version`] failure, whose
    /// shape every version keeps, so that client can say so in one line.
    pub fn decode(line: &str) -> Result<Request, Failure> {
        let v: serde_json::Value = serde_json::from_str(line.trim_end())
            .map_err(|e| Failure::other(format!("malformed request: {e}")))?;
        let theirs = v.get("version").and_then(serde_json::Value::as_u64);
        if theirs != Some(u64::from(PROTOCOL_VERSION)) {
            return Err(Failure::version(theirs));
        }
        let line: RequestLine = serde_json::from_value(v)
            .map_err(|e| Failure::other(format!("malformed request: {e}")))?;
        line.request.validate().map_err(Failure::other)?;
        Ok(line.request)
    }
}

/// Serializes one message as a JSON line.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail; fall back to an error line
    // rather than panic.
    let mut v = serde_json::to_vec(msg).unwrap_or_else(|e| {
        format!(
            r#"{{"version":{PROTOCOL_VERSION},"type":"error","failure":{{"message":"encode failed: {e}","kind":{{"code":"other"}}}}}}"#
        )
        .into_bytes()
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

    /// A request body as a line of this protocol version.
    fn v2(request: &str) -> String {
        format!(r#"{{"version":{PROTOCOL_VERSION},"request":{request}}}"#)
    }

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
            Request::ShipOnce {
                url: "file:///tmp/r".into(),
                secrets: Credentials::default(),
            },
            Request::ShipStart {
                url: "s3://b-1/p".into(),
                interval_ms: 2000,
                secrets: Credentials {
                    secret_key: Some("s".into()),
                    ..Credentials::default()
                },
            },
            Request::ShipControl {
                url: "file:///tmp/r".into(),
                action: ShipAction::Pause,
            },
            Request::ShipStatus,
            Request::SnapshotAttach {
                name: "s1".into(),
                as_id: Some(7),
            },
            Request::SnapshotDetach { id: 7 },
        ];
        for r in reqs {
            let line = String::from_utf8(r.line()).unwrap();
            assert!(line.ends_with('\n'));
            assert_eq!(Request::decode(&line).unwrap(), r);
        }
    }

    #[test]
    fn wire_format_is_tagged_by_op() {
        let line = String::from_utf8(Request::SnapshotCreate { name: "s1".into() }.line()).unwrap();
        assert_eq!(
            line,
            "{\"version\":2,\"request\":{\"op\":\"snapshot_create\",\"name\":\"s1\"}}\n"
        );
        let r = Request::decode(r#"{"version":2,"request":{"op":"diff","from":"a","to":null}}"#)
            .unwrap();
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
        assert!(Request::decode("{")
            .unwrap_err()
            .message
            .contains("malformed"));
        assert!(Request::decode(&v2(r#"{"op":"format_disk"}"#))
            .unwrap_err()
            .message
            .contains("malformed"));
        let e = Request::decode(&v2(r#"{"op":"snapshot_create","name":"../etc"}"#)).unwrap_err();
        assert!(e.message.contains("invalid snapshot name"), "{e}");
        let e = Request::decode(&v2(r#"{"op":"snapshot_create","name":"a b"}"#)).unwrap_err();
        assert!(e.message.contains("invalid snapshot name \"a b\""), "{e}");
        let long = "x".repeat(201);
        let e =
            Request::decode(&v2(&format!(r#"{{"op":"restore","name":"{long}"}}"#))).unwrap_err();
        assert!(e.message.contains("1-200 characters"), "{e}");
        let e = Request::decode(&v2(r#"{"op":"export","name":"a","to":"rel.img"}"#)).unwrap_err();
        assert!(e.message.contains("absolute"), "{e}");
    }

    #[test]
    fn ship_secrets_never_show_in_debug() {
        let r = Request::ShipOnce {
            url: "s3://bucket/p".into(),
            secrets: Credentials {
                endpoint: Some("http://127.0.0.1:3900".into()),
                region: Some("garage".into()),
                access_key: Some("GKSECRETACCESS".into()),
                secret_key: Some("topsecretvalue".into()),
                peer_key: Some(b"peerkeypeerkey0123".to_vec()),
                ..Credentials::default()
            },
        };
        let d = format!("{r:?}");
        for secret in ["GKSECRETACCESS", "topsecretvalue", "peerkey", "112, 101"] {
            assert!(!d.contains(secret), "{secret} leaked in {d}");
        }
        assert!(
            d.contains("<redacted>") && d.contains("127.0.0.1:3900"),
            "{d}"
        );
        let e = Request::decode(&v2(
            r#"{"op":"ship_start","url":"file:///x","interval_ms":5,"secrets":{}}"#,
        ))
        .unwrap_err();
        assert!(e.message.contains("100ms"), "{e}");
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Progress { done: 1, total: 2 },
            Reply::Ok {
                answer: Box::new(Answer::Snapshots(vec![])),
            },
            Reply::Error {
                failure: Failure::other("no"),
            },
        ] {
            let line = String::from_utf8(encode(&ReplyLine {
                version: PROTOCOL_VERSION,
                reply: r.clone(),
            }))
            .unwrap();
            let back: ReplyLine = serde_json::from_str(&line).unwrap();
            assert_eq!(back.version, PROTOCOL_VERSION);
            assert_eq!(format!("{:?}", back.reply), format!("{r:?}"));
        }
    }

    #[test]
    fn requests_of_another_version_get_the_version_failure() {
        for line in [
            r#"{"op":"status"}"#,
            r#"{"version":1,"request":{"op":"status"}}"#,
        ] {
            let f = Request::decode(line).unwrap_err();
            assert_eq!(
                f.kind,
                FailureKind::Version {
                    daemon: PROTOCOL_VERSION
                },
                "{line}"
            );
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
