//! What the daemon answers, typed once for both ends of the control socket (and for the
//! CLI's offline forms, which run the same requests on the engine in-process). The CLI
//! prints an answer's value as its `--json` output; durations are float seconds.

use serde::{Deserialize, Serialize};
use shipper::{PointInfo, SchedulerStats, ShipTarget};
use snapmap::{BlockRange, CheckReport, RestoreReport, SnapshotInfo};
use std::path::PathBuf;
use ublk_target::io_op::IoCounters;

/// A successful reply, one variant per kind of request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Answer {
    /// `Status`.
    Status(Box<StatusAnswer>),
    /// `SnapshotCreate`: the new snapshot.
    Snapshot(SnapshotInfo),
    /// `SnapshotList`: user snapshots, oldest first.
    Snapshots(Vec<SnapshotInfo>),
    /// `SnapshotDelete`.
    Deleted(Deleted),
    /// `Restore`.
    Restored(Restored),
    /// `Export`.
    Exported(Exported),
    /// `Diff`.
    Diff(DiffAnswer),
    /// `Check`.
    Check(CheckAnswer),
    /// `Shutdown`: the device is stopping.
    Stopping(Stopping),
    /// `ShipOnce`: the committed (or unchanged) point.
    Shipped(Shipped),
    /// `ShipStart`.
    ShipStarted(ShipStarted),
    /// `ShipControl`.
    ShipControlled(ShipControlled),
    /// `ShipStatus`: every continuous schedule.
    ShipJobs(Vec<ShipJob>),
    /// `SnapshotAttach`: the new device.
    Attached(Attachment),
    /// `SnapshotDetach`: the device that went.
    Detached(Attachment),
}

/// A snapshot served as its own device (`snapshot attach`), in `status` both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Device id of the attachment (`/dev/ublkb<id>`).
    pub id: u32,
    /// Its block device.
    pub device: PathBuf,
    /// The snapshot it serves.
    pub snapshot: String,
    /// Device id of the volume the snapshot belongs to.
    pub volume: u32,
    /// Whether writes are refused (always, until writable attachments exist).
    pub read_only: bool,
    /// The device's I/O counters, when its daemon answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoCounters>,
}

impl Answer {
    /// The kind's name, for a message about an answer that was not the one expected.
    pub fn kind(&self) -> &'static str {
        match self {
            Answer::Status(_) => "status",
            Answer::Snapshot(_) => "snapshot",
            Answer::Snapshots(_) => "snapshots",
            Answer::Deleted(_) => "deleted",
            Answer::Restored(_) => "restored",
            Answer::Exported(_) => "exported",
            Answer::Diff(_) => "diff",
            Answer::Check(_) => "check",
            Answer::Stopping(_) => "stopping",
            Answer::Shipped(_) => "shipped",
            Answer::ShipStarted(_) => "ship_started",
            Answer::ShipControlled(_) => "ship_controlled",
            Answer::ShipJobs(_) => "ship_jobs",
            Answer::Attached(_) => "attached",
            Answer::Detached(_) => "detached",
        }
    }
}

/// A device as `status` and `list` show it: from its running daemon, or from its run
/// directory when the daemon is gone (then `serving` is absent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device id.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub path: PathBuf,
    /// `running`, or what is wrong with a device whose daemon is gone.
    pub state: String,
    /// The daemon's pid, when recorded.
    pub pid: Option<i32>,
    /// Backing file or disk, when the run directory records it.
    pub backing: Option<PathBuf>,
    /// Store, when the run directory records it.
    pub store: Option<PathBuf>,
    /// What only a running daemon knows; its fields sit beside the others in JSON.
    #[serde(flatten)]
    pub serving: Option<Serving>,
    /// When the device is a snapshot attached to a volume: which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// The shape of a device its running daemon serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Serving {
    /// Origin size in bytes.
    pub size: u64,
    /// Tracking block size.
    pub block_size: u32,
    /// Hardware queues.
    pub nr_queues: u16,
    /// Queue depth.
    pub depth: u16,
    /// Engine worker threads.
    pub workers: usize,
    /// Seconds since the daemon started serving.
    pub uptime_secs: f64,
}

/// `status`: the device (absent offline), its I/O counters (absent offline), the engine
/// (absent when the daemon is gone), continuous schedules and known ship targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// The device.
    pub device: Option<DeviceInfo>,
    /// Engine status.
    pub engine: Option<snapmap::Status>,
    /// Device I/O counters.
    pub io: Option<IoCounters>,
    /// Continuous shipping schedules running in the daemon.
    #[serde(default)]
    pub ship: Vec<ShipJob>,
    /// Targets the store has shipped to (labels its ship points).
    #[serde(default)]
    pub ship_targets: Vec<ShipTarget>,
    /// Snapshots of this volume attached as devices.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

impl StatusAnswer {
    /// The ship target whose point the snapshot `name` is, if known.
    pub fn target_of(&self, name: &str) -> Option<&str> {
        self.ship_targets
            .iter()
            .find(|t| t.owns_point(name))
            .map(|t| t.target.as_str())
    }
}

/// `snapshot delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    /// The deleted snapshot.
    pub deleted: String,
}

/// `restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    /// The snapshot restored.
    pub restored: String,
    /// Wall time of the restore.
    pub elapsed_secs: f64,
    /// What it wrote and skipped.
    pub report: RestoreReport,
}

/// `export`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exported {
    /// The snapshot exported.
    pub exported: String,
    /// The image written, as the requester named it.
    pub to: PathBuf,
}

/// `diff`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffAnswer {
    /// Older snapshot.
    pub from: String,
    /// Newer snapshot; `None` is the live image.
    pub to: Option<String>,
    /// Block size of the ranges.
    pub block_size: u32,
    /// Blocks in all ranges.
    pub changed_blocks: u64,
    /// Changed block ranges, ascending.
    pub ranges: Vec<BlockRange>,
}

/// `check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckAnswer {
    /// What the check found.
    #[serde(flatten)]
    pub report: CheckReport,
    /// No problems.
    pub ok: bool,
    /// Damage that opening the store worked around (a superblock copy or checkpoint that
    /// failed to verify): consistent, but with lost redundancy until it is rewritten.
    pub repaired: Vec<String>,
    /// Whether that damage is still on disk (an offline read-only open cannot rewrite
    /// it). Set by the CLI, which knows how the store was opened.
    #[serde(default)]
    pub repair_pending: bool,
}

/// `delete` of a running device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stopping {
    /// The device stopping.
    pub stopping: u32,
    /// When the stop was asked, seconds since the epoch.
    pub at: u64,
}

/// `ship --once`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shipped {
    /// The point.
    #[serde(flatten)]
    pub point: PointInfo,
    /// The target, canonically spelt.
    pub url: String,
    /// The ship state file of (store, target).
    pub state_file: PathBuf,
}

/// `ship --interval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipStarted {
    /// The target.
    pub url: String,
    /// False when a running schedule was retuned (and resumed) instead.
    pub started: bool,
    /// The interval now in force.
    pub interval_secs: f64,
    /// The ship state file of (store, target).
    pub state_file: PathBuf,
}

/// `ship --pause | --resume | --stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipControlled {
    /// The target.
    pub url: String,
    /// What was done.
    pub action: super::ShipAction,
    /// The schedule's statistics after it.
    pub stats: SchedulerStats,
}

/// One continuous shipping schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipJob {
    /// The target.
    pub url: String,
    /// The ship state file of (store, target).
    pub state_file: PathBuf,
    /// The scheduler's statistics.
    #[serde(flatten)]
    pub stats: SchedulerStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_device_shows_its_shape_beside_its_identity_and_a_dead_one_does_not() {
        let mut d = DeviceInfo {
            id: 3,
            path: "/dev/ublkb3".into(),
            state: "running".into(),
            pid: Some(7),
            backing: None,
            store: None,
            attachment: None,
            serving: Some(Serving {
                size: 1 << 20,
                block_size: 4096,
                nr_queues: 1,
                depth: 64,
                workers: 8,
                uptime_secs: 1.5,
            }),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            (v["size"].as_u64(), v["uptime_secs"].as_f64()),
            (Some(1 << 20), Some(1.5))
        );
        let back: DeviceInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back.serving.map(|s| s.depth), Some(64));
        d.serving = None;
        let v = serde_json::to_value(&d).unwrap();
        assert!(v.get("size").is_none(), "{v}");
        let back: DeviceInfo = serde_json::from_value(v).unwrap();
        assert!(back.serving.is_none());
    }
}
