//! The small local state file: which point was last committed to a target, and which one
//! is being shipped. The remote manifests stay the truth; this file only lets a ship
//! resume the same frozen point and drop local points nobody needs.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::Path;

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
