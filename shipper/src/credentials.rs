//! Credentials for S3 and peer targets: from the environment or a config file, never argv.

use crate::error::{Error, Result};
use crate::targets::Retry;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Secrets and connection settings a target may need. `Debug` never shows secrets.
///
/// The serde form is also the wire form the CLI hands to a daemon (over the root-only
/// control socket, and in the daemon's 0600 saved schedules), so that secrets never
/// appear on a command line: a JSON object with the optional fields `endpoint`,
/// `region`, `access_key`, `secret_key` (strings) and `peer_key` (an array of bytes),
/// unknown fields refused. It carries the secrets in clear; the retry policy is not part
/// of it (the receiving side applies its own, [`Retry::default`] when deserialized).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// S3 endpoint URL, e.g. `http://127.0.0.1:3900` (`AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// S3 signing region; must equal the server's region (`AWS_REGION`).
    pub region: Option<String>,
    /// S3 access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key: Option<String>,
    /// S3 secret key (`AWS_SECRET_ACCESS_KEY`).
    pub secret_key: Option<String>,
    /// Pre-shared key for `peer://` targets (contents of a key file).
    pub peer_key: Option<Vec<u8>>,
    /// Retry policy applied to every request of targets built from these settings.
    #[serde(skip)]
    pub retry: Retry,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let red = |o: bool| if o { "<redacted>" } else { "<unset>" };
        f.debug_struct("Credentials")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &red(self.access_key.is_some()))
            .field("secret_key", &red(self.secret_key.is_some()))
            .field("peer_key", &red(self.peer_key.is_some()))
            .field("retry", &self.retry)
            .finish()
    }
}

/// Environment variables read by [`Credentials::from_env`] (and keys of the config file).
pub const ENV_VARS: [&str; 5] = [
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SNAPBLK_PEER_KEY_FILE",
];

impl Credentials {
    fn set(&mut self, name: &str, value: String, origin: &str) -> Result<()> {
        match name {
            "AWS_ENDPOINT_URL" => self.endpoint = Some(value),
            "AWS_REGION" => self.region = Some(value),
            "AWS_ACCESS_KEY_ID" => self.access_key = Some(value),
            "AWS_SECRET_ACCESS_KEY" => self.secret_key = Some(value),
            "SNAPBLK_PEER_KEY_FILE" => self.peer_key = Some(read_key_file(Path::new(&value))?),
            other => {
                return Err(Error::Credentials(format!(
                    "{origin}: unknown setting {other}; known: {}",
                    ENV_VARS.join(", ")
                )))
            }
        }
        Ok(())
    }

    /// Reads the `ENV_VARS` that are set; unset ones stay `None`.
    pub fn from_env() -> Result<Credentials> {
        let mut c = Credentials::default();
        for name in ENV_VARS {
            if let Ok(v) = std::env::var(name) {
                if !v.is_empty() {
                    c.set(name, v, "environment")?;
                }
            }
        }
        Ok(c)
    }

    /// Reads a config file of `NAME=value` lines (names from [`ENV_VARS`]; `#` comments).
    /// The file must not be readable by group or others, since it holds secrets.
    pub fn from_file(path: &Path) -> Result<Credentials> {
        let text = read_private(path)?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::Credentials(format!("{}: not UTF-8 text", path.display())))?;
        let mut c = Credentials::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                Error::Credentials(format!("{}:{}: expected NAME=value", path.display(), n + 1))
            })?;
            c.set(
                k.trim(),
                v.trim().trim_matches('"').to_string(),
                &format!("{}:{}", path.display(), n + 1),
            )?;
        }
        Ok(c)
    }

    /// Fills every unset field of `self` from `other` (e.g. env over config file).
    pub fn or(mut self, other: Credentials) -> Credentials {
        self.endpoint = self.endpoint.or(other.endpoint);
        self.region = self.region.or(other.region);
        self.access_key = self.access_key.or(other.access_key);
        self.secret_key = self.secret_key.or(other.secret_key);
        self.peer_key = self.peer_key.or(other.peer_key);
        self
    }

    /// Sets the peer key from a key file.
    pub fn with_peer_key_file(mut self, path: &Path) -> Result<Credentials> {
        self.peer_key = Some(read_key_file(path)?);
        Ok(self)
    }
}

fn read_private(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Credentials(format!("{}: {e}", path.display())))?;
    // Checked before the mode: `chmod 600` is no fix for a directory or a device.
    if !meta.is_file() {
        return Err(Error::Credentials(format!(
            "{} is {}, not a file; pass the file itself (NAME=value lines, or the key)",
            path.display(),
            if meta.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            }
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Credentials(format!(
            "{} is readable by group/others; run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    std::fs::read(path).map_err(|e| Error::Credentials(format!("{}: {e}", path.display())))
}

/// Reads a pre-shared peer key: at least 16 bytes (surrounding whitespace trimmed), mode 0600.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    let raw = read_private(path)?;
    let key: Vec<u8> = raw.trim_ascii().to_vec();
    if key.len() < 16 {
        return Err(Error::Credentials(format!(
            "key file {} holds {} bytes; use at least 16, e.g. `head -c 32 /dev/urandom | base64 > {}`",
            path.display(),
            key.len(),
            path.display()
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn config_file_parses_and_must_be_private() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("peer.key");
        std::fs::write(&key, "  0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let conf = d.path().join("creds");
        std::fs::write(
            &conf,
            format!(
                "# test\nAWS_ENDPOINT_URL=http://127.0.0.1:3900\nAWS_REGION = garage\nAWS_ACCESS_KEY_ID=\"GKabc\"\nAWS_SECRET_ACCESS_KEY=sek\nSNAPBLK_PEER_KEY_FILE={}\n",
                key.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::from_file(&conf).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::from_file(&conf).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(c.region.as_deref(), Some("garage"));
        assert_eq!(c.access_key.as_deref(), Some("GKabc"));
        assert_eq!(c.secret_key.as_deref(), Some("sek"));
        assert_eq!(c.peer_key.as_deref(), Some(&b"0123456789abcdef0123"[..]));
        let merged = Credentials {
            region: Some("other".into()),
            ..Default::default()
        }
        .or(c);
        assert_eq!(merged.region.as_deref(), Some("other"));
        assert_eq!(merged.access_key.as_deref(), Some("GKabc"));
        std::fs::write(&conf, "AWS_SECRET=x\n").unwrap();
        let e = Credentials::from_file(&conf).unwrap_err().to_string();
        assert!(
            e.contains("unknown setting AWS_SECRET") && e.contains(":1"),
            "{e}"
        );
    }

    #[test]
    fn a_directory_is_not_a_credentials_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for e in [
            Credentials::from_file(d.path()).unwrap_err().to_string(),
            read_key_file(d.path()).unwrap_err().to_string(),
        ] {
            assert!(e.contains("is a directory") && !e.contains("chmod"), "{e}");
        }
    }

    #[test]
    fn the_wire_form_carries_the_settings_but_not_the_retry_policy() {
        let c = Credentials {
            endpoint: Some("http://127.0.0.1:3900".into()),
            region: Some("garage".into()),
            access_key: Some("GKabc".into()),
            secret_key: Some("sek".into()),
            peer_key: Some(vec![1, 2]),
            retry: Retry::none(),
        };
        let wire = serde_json::to_string(&c).unwrap();
        assert_eq!(
            wire,
            r#"{"endpoint":"http://127.0.0.1:3900","region":"garage","access_key":"GKabc","secret_key":"sek","peer_key":[1,2]}"#
        );
        let back: Credentials = serde_json::from_str(&wire).unwrap();
        assert_eq!(
            back,
            Credentials {
                retry: Retry::default(),
                ..c
            }
        );
        let none: Credentials = serde_json::from_str("{}").unwrap();
        assert_eq!(none, Credentials::default());
        assert!(serde_json::from_str::<Credentials>(r#"{"retry":{}}"#).is_err());
        assert!(!format!("{back:?}").contains("sek"));
    }

    #[test]
    fn short_key_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k");
        std::fs::write(&key, "short").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_key_file(&key).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
    }
}
