//! The one place where a target URL becomes a [`Target`].
//!
//! Accepted forms:
//! - `file:///absolute/dir` (`%XX` escapes decoded, e.g. `file:///srv/my%20backups`;
//!   `file://localhost/dir` is the same; a relative `file://dir` is refused, since it would
//!   silently depend on the working directory)
//! - `s3://bucket/optional/prefix` — endpoint, region and keys from [`Credentials`]
//! - `peer://host:port` — pre-shared key from [`Credentials::peer_key`]
//!
//! URLs never carry secrets: a `user:password@` part is refused.

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::targets::file::FileTarget;
use crate::targets::peer::PeerTarget;
use crate::targets::s3::S3Target;
use crate::targets::{validate_key, Retrying, Target};

/// A parsed target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetUrl {
    /// A local directory.
    File(String),
    /// Bucket and key prefix (without surrounding slashes; may be empty).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
    /// `host:port` of a receiver.
    Peer(String),
}

/// The canonical spelling: every URL naming the same target prints the same, so that ship
/// state, ship points and a daemon's schedules, all keyed by the URL, are found again
/// whichever spelling the user typed (`file://localhost/d`, `%XX` escapes, a trailing `/`).
/// It parses back to the same target.
impl std::fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetUrl::File(dir) => {
                let dir = match dir.trim_end_matches('/') {
                    "" => "/",
                    d => d,
                };
                // '%' is the one character the parser would read differently.
                write!(f, "file://{}", dir.replace('%', "%25"))
            }
            TargetUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            TargetUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            TargetUrl::Peer(hp) => write!(f, "peer://{hp}"),
        }
    }
}

impl TargetUrl {
    /// Parses `url`; errors say which form was expected.
    pub fn parse(url: &str) -> Result<TargetUrl> {
        let bad = |d: &str| Error::Url {
            url: url.to_string(),
            detail: d.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected file:///DIR, s3://BUCKET/PREFIX or peer://HOST:PORT"))?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(bad("credentials must not be in the URL; use AWS_* environment variables, a config file or a key file"));
        }
        match scheme {
            "file" => {
                // RFC 8089: file://localhost/p is file:///p; any other host is not ours.
                let path = match rest.strip_prefix("localhost") {
                    Some(p) if p.starts_with('/') => p,
                    _ => rest,
                };
                if path.is_empty() {
                    return Err(bad(
                        "file URL without a directory; write file:///path/to/dir",
                    ));
                }
                if !path.starts_with('/') {
                    return Err(bad(&format!(
                        "a file URL names an absolute directory: write file:///absolute/path (three slashes), e.g. file://{}",
                        std::env::current_dir()
                            .map(|d| d.join(path).display().to_string())
                            .unwrap_or_else(|_| format!("/{path}"))
                    )));
                }
                Ok(TargetUrl::File(percent_decode(path).map_err(|d| bad(&d))?))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let ok = (3..=63).contains(&bucket.len())
                    && bucket.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    });
                if !ok {
                    return Err(bad("bucket name must be 3-63 characters of a-z, 0-9, '-' and '.'; write s3://BUCKET/PREFIX"));
                }
                let prefix = prefix.trim_matches('/');
                if !prefix.is_empty() && validate_key(prefix).is_err() {
                    return Err(bad("prefix must be '/'-separated parts of A-Z a-z 0-9 . _ - (no empty or dot-leading parts)"));
                }
                Ok(TargetUrl::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                })
            }
            "peer" => {
                let hp = rest.trim_end_matches('/');
                let port_ok = hp
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !port_ok || hp.contains('/') {
                    return Err(bad("write peer://HOST:PORT (e.g. peer://10.0.0.2:7070)"));
                }
                Ok(TargetUrl::Peer(hp.to_string()))
            }
            other => Err(bad(&format!(
                "unknown scheme {other:?}; use file://, s3:// or peer://"
            ))),
        }
    }

    /// Builds the target for shipping, wrapped with the retry policy from `creds`. A
    /// `file://` directory is created if missing, but only its last component.
    pub fn open(&self, creds: &Credentials) -> Result<Box<dyn Target>> {
        self.open_as(creds, true)
    }

    /// Builds the target for reading what was shipped (list, verify, restore, prune):
    /// nothing is created, and a missing `file://` directory is an error naming it.
    pub fn open_existing(&self, creds: &Credentials) -> Result<Box<dyn Target>> {
        self.open_as(creds, false)
    }

    fn open_as(&self, creds: &Credentials, create: bool) -> Result<Box<dyn Target>> {
        Ok(match self {
            TargetUrl::File(dir) => {
                let t = if create {
                    FileTarget::new(dir.as_str())?
                } else {
                    FileTarget::open(dir.as_str())?
                };
                Box::new(Retrying::new(t, creds.retry))
            }
            TargetUrl::S3 { bucket, prefix } => Box::new(Retrying::new(
                S3Target::new(bucket, prefix, creds)?,
                creds.retry,
            )),
            TargetUrl::Peer(addr) => {
                let key = creds.peer_key.clone().ok_or_else(|| {
                    Error::Credentials(format!("peer://{addr} needs the pre-shared key: it is read from the key file that SNAPBLK_PEER_KEY_FILE or the key-file option names"))
                })?;
                Box::new(Retrying::new(PeerTarget::new(addr, key), creds.retry))
            }
        })
    }
}

/// Decodes `%XX` escapes of a `file://` path; refuses malformed escapes, NUL and non-UTF-8.
fn percent_decode(path: &str) -> std::result::Result<String, String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(0) => return Err("%00 (NUL) cannot be part of a path".into()),
            Some(v) => out.push(v),
            None => {
                return Err(format!(
                    "bad escape at byte {i}: '%' must be followed by two hex digits (write %25 for a literal '%')"
                ))
            }
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| "the decoded path is not UTF-8".into())
}

/// Parses `url` and opens the target it names for shipping (see [`TargetUrl::open`]).
pub fn target_from_url(url: &str, creds: &Credentials) -> Result<Box<dyn Target>> {
    TargetUrl::parse(url)?.open(creds)
}

/// Parses `url` and opens the target it names for reading what was shipped there; creates
/// nothing (see [`TargetUrl::open_existing`]).
pub fn existing_target_from_url(url: &str, creds: &Credentials) -> Result<Box<dyn Target>> {
    TargetUrl::parse(url)?.open_existing(creds)
}

impl dyn Target {
    /// Same as [`target_from_url`]: `<dyn Target>::from_url("s3://b/p", &creds)`.
    pub fn from_url(url: &str, creds: &Credentials) -> Result<Box<dyn Target>> {
        target_from_url(url, creds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_target_print_the_same_and_parse_back() {
        for (a, b) in [
            ("file:///srv/b", "file://localhost/srv/b"),
            ("file:///srv/b", "file:///srv/%62/"),
            ("s3://bkt/p/q", "s3://bkt//p/q/"),
            ("peer://h:7070", "peer://h:7070/"),
        ] {
            let (x, y) = (TargetUrl::parse(a).unwrap(), TargetUrl::parse(b).unwrap());
            assert_eq!(x.to_string(), y.to_string(), "{a} vs {b}");
            assert_eq!(TargetUrl::parse(&x.to_string()).unwrap(), x);
        }
        let odd = TargetUrl::parse("file:///a%2541").unwrap();
        assert_eq!(TargetUrl::parse(&odd.to_string()).unwrap(), odd);
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            TargetUrl::parse("file:///srv/b").unwrap(),
            TargetUrl::File("/srv/b".into())
        );
        assert_eq!(
            TargetUrl::parse("s3://bkt/a/b/").unwrap(),
            TargetUrl::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            TargetUrl::parse("s3://bkt").unwrap(),
            TargetUrl::S3 {
                bucket: "bkt".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            TargetUrl::parse("peer://127.0.0.1:7070").unwrap(),
            TargetUrl::Peer("127.0.0.1:7070".into())
        );
    }

    #[test]
    fn file_paths_are_percent_decoded_and_localhost_is_accepted() {
        for (u, p) in [
            ("file:///tmp/sp%20ace/x", "/tmp/sp ace/x"),
            ("file:///tmp/100%25", "/tmp/100%"),
            ("file://localhost/srv/b", "/srv/b"),
            ("file:///tmp/%C3%A9t%C3%A9", "/tmp/\u{e9}t\u{e9}"),
        ] {
            assert_eq!(
                TargetUrl::parse(u).unwrap(),
                TargetUrl::File(p.into()),
                "{u}"
            );
        }
    }

    #[test]
    fn a_relative_file_url_names_the_absolute_fix() {
        let e = TargetUrl::parse("file://rel/dir").unwrap_err().to_string();
        let cwd = std::env::current_dir().unwrap();
        assert!(
            e.contains(&format!("file://{}", cwd.join("rel/dir").display())),
            "{e}"
        );
    }

    #[test]
    fn refuses_bad_urls_with_a_hint() {
        for (u, hint) in [
            ("ftp://x", "unknown scheme"),
            ("/just/a/path", "expected file"),
            ("s3://AK:SECRET@bkt/p", "must not be in the URL"),
            ("s3://B_/p", "bucket name"),
            ("s3://bkt/../x", "prefix"),
            ("peer://host", "HOST:PORT"),
            ("peer://host:0", "HOST:PORT"),
            ("file://relative/dir", "file:///absolute/path"),
            ("file://", "without a directory"),
            ("file:///a%2", "two hex digits"),
            ("file:///a%zz", "two hex digits"),
            ("file:///a%00b", "NUL"),
            ("file:///a%ff", "UTF-8"),
        ] {
            let e = TargetUrl::parse(u).unwrap_err().to_string();
            assert!(e.contains(hint), "{u}: {e}");
            assert!(
                !e.contains("SECRET") || u.contains("SECRET") && e.contains(u),
                "{e}"
            );
        }
    }

    #[test]
    fn s3_needs_endpoint_and_keys_and_peer_needs_a_key() {
        let c = Credentials::default();
        let e = <dyn Target>::from_url("s3://bkt/p", &c)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("AWS_ENDPOINT_URL"), "{e}");
        let c = Credentials {
            endpoint: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        };
        let e = target_from_url("s3://bkt/p", &c).err().unwrap().to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        let e = target_from_url("peer://127.0.0.1:9", &Credentials::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("key file"), "{e}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials {
            access_key: Some("GKSECRETID".into()),
            secret_key: Some("s3cr3t".into()),
            peer_key: Some(b"k".to_vec()),
            ..Default::default()
        };
        let d = format!("{c:?}");
        assert!(!d.contains("GKSECRETID") && !d.contains("s3cr3t"), "{d}");
    }
}
