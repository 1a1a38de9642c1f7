//! The small local state file: which point was last committed to a target, and which one
//! is being shipped. The remote manifests stay the truth; this file only lets a ship
//! resume the same frozen point and drop local points nobody needs.
//!
//! Where the file lives ([`ship_state_path`]) and how a store's files are found again
//! ([`ship_targets`]) are defined here only: the daemon, the offline `ship --once` and
//! `status` must agree on them, or a ship would restart from a full base.

use crate::error::{Error, Result};
use crate::ship::point_prefix;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The ship state file of the store at `store` shipping to `url`:
/// `<store file name>.ship-<12 hex digits of SHA-256(url)>.json`, next to the store.
///
/// Beside the store, so it survives daemon restarts and `recover`, and an offline ship
/// of the same files finds it. `url` must be the canonical spelling
/// ([`crate::TargetUrl`]'s `Display`), so every spelling of one target shares one file.
pub fn ship_state_path(store: &Path, url: &str) -> PathBuf {
    let digest = crate::format::sha256(url.as_bytes());
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(
        ".{STATE_FILE_LEAD}{}.json",
        hex::encode(&digest[..6])
    ));
    store.with_file_name(name)
}

/// What follows `<store file name>.` in every ship state file name.
const STATE_FILE_LEAD: &str = "ship-";

/// State files are a few hundred bytes; a larger file by that name is not one.
const MAX_STATE_FILE: u64 = 1 << 20;

/// A target a store has shipped to, as named by a ship state file next to the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShipTarget {
    /// Prefix of the local ship-point names kept for this target ([`point_prefix`]).
    pub point_prefix: String,
    /// `Target::id()` of the target, as recorded in the state file.
    pub target: String,
    /// The state file it was read from.
    pub state_path: PathBuf,
}

impl ShipTarget {
    /// True when the local snapshot `name` is a ship point kept for this target.
    pub fn owns_point(&self, name: &str) -> bool {
        name.starts_with(&self.point_prefix)
    }
}

/// The targets the store at `store` has shipped to, read from the ship state files next
/// to it ([`ship_state_path`]), sorted by point prefix. Ship points are internal
/// snapshots that hold store space; this lets `status` say which target keeps each one.
/// Unreadable or foreign files are skipped, not reported: the answer is only a label.
pub fn ship_targets(store: &Path) -> Vec<ShipTarget> {
    let Some(name) = store.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let lead = format!("{name}.{STATE_FILE_LEAD}");
    let dir = match store.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<ShipTarget> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|f| f.starts_with(&lead) && f.ends_with(".json"))
        })
        .filter_map(|e| {
            if e.metadata().ok()?.len() > MAX_STATE_FILE {
                return None;
            }
            let text = fs::read_to_string(e.path()).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let target = v.get("target")?.as_str()?.to_string();
            Some(ShipTarget {
                point_prefix: point_prefix(&target),
                target,
                state_path: e.path(),
            })
        })
        .collect();
    out.sort();
    out
}

/// A local ship point known to the shipper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPoint {
    /// Remote point number it is (or will be) shipped as.
    pub seq: u64,
    /// Name of the local ship-point snapshot.
    pub name: String,
    /// Seconds since the epoch when the point was frozen.
    #[serde(default)]
    pub created_unix: u64,
}

/// Contents of the state file (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    /// Format version of this file (1).
    pub version: u32,
    /// `Target::id()` of the target this state belongs to.
    pub target: String,
    /// Hex volume id stamped on every point of the target (empty until the first point).
    pub volume_id: String,
    /// Last point known committed remotely (its local snapshot is the next base).
    pub committed: Option<LocalPoint>,
    /// A point frozen locally whose manifest may not be published yet.
    pub in_progress: Option<LocalPoint>,
    /// Local points no longer needed whose deletion failed; retried on the next ship.
    #[serde(default)]
    pub stale: Vec<String>,
}

impl ShipState {
    /// Loads the state at `path`, or a fresh state for `target` when the file is absent.
    pub fn load(path: &Path, target: &str) -> Result<ShipState> {
        let bad = |d: String| Error::State {
            path: path.display().to_string(),
            detail: d,
        };
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ShipState {
                    version: 1,
                    target: target.to_string(),
                    ..Default::default()
                })
            }
            Err(e) => return Err(Error::io(path, "read ship state", e)),
        };
        let st: ShipState = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "not valid ship state JSON ({e}); delete it to start over with a full base point"
            ))
        })?;
        if st.version != 1 {
            return Err(bad(format!(
                "version {} is not supported by this build",
                st.version
            )));
        }
        if st.target != target {
            return Err(bad(format!(
                "belongs to target {} but this ship goes to {target}; use one state file per target",
                st.target
            )));
        }
        Ok(st)
    }

    /// Replaces the file atomically and durably (temp + fsync + rename + dir fsync).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Invalid(format!("ship state does not serialize: {e}")))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("ship-state")
        ));
        let mut f = fs::File::create(&tmp)
            .map_err(|e| Error::io(&tmp, "create ship state temp file", e))?;
        f.write_all(&text)
            .map_err(|e| Error::io(&tmp, "write ship state", e))?;
        f.sync_all()
            .map_err(|e| Error::io(&tmp, "fsync ship state", e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, "replace ship state", e))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, "fsync ship state directory", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ship_targets_come_from_the_state_files_next_to_the_store() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("d.img.snapstore");
        let target = "file:///srv/backup";
        let st = ship_state_path(&store, "file:///srv/backup");
        ShipState::load(&st, target).unwrap().save(&st).unwrap();
        // Another store's file and a file that is not JSON are not ours.
        std::fs::write(
            d.path().join("other.snapstore.ship-1.json"),
            r#"{"target":"s3://x"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("d.img.snapstore.ship-2.json"), "not json").unwrap();
        let found = ship_targets(&store);
        assert_eq!(
            found,
            vec![ShipTarget {
                point_prefix: point_prefix(target),
                target: target.to_string(),
                state_path: st.clone(),
            }]
        );
        assert!(found[0].owns_point(&format!("{}7", point_prefix(target))));
        assert!(!found[0].owns_point(&format!("{}7", point_prefix("s3://x"))));
        let name = st.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("d.img.snapstore.ship-") && name.ends_with(".json"),
            "{name}"
        );
        assert_eq!(st.parent(), store.parent());
    }

    #[test]
    fn each_url_has_its_own_state_file() {
        let store = Path::new("/var/lib/d.img.snapstore");
        assert_ne!(
            ship_state_path(store, "file:///a"),
            ship_state_path(store, "file:///b")
        );
        assert_eq!(
            ship_state_path(store, "file:///a"),
            ship_state_path(store, "file:///a")
        );
    }
}
