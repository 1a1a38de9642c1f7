//! Why a request failed, typed so the CLI can say what to do about it.
//!
//! A [`Failure`]'s message says what failed and where, as the library that failed
//! worded it; its [`FailureKind`] names the situation, and `cli/src/failure.rs` turns
//! that into advice (the one place that names verbs and flags). Errors the CLI meets
//! in-process map to the same kinds ([`FailureKind::of_engine`], [`crate::Error::kind`]),
//! so the advice is the same whether a daemon ran the request or not.

use serde::{Deserialize, Serialize};

/// A failed request: the message and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What failed, naming the object.
    pub message: String,
    /// The situation, for the CLI's advice.
    pub kind: FailureKind,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The verbs that only a running daemon serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonOnly {
    /// Stopping the device.
    Shutdown,
    /// Shipping from the daemon (once through it, or continuously).
    Ship,
    /// Attaching a snapshot as a device, or detaching one.
    Attach,
}

/// What kind of failure a [`Failure`] is. Every protocol version keeps the shape of
/// `Version`, so clients of other versions can still read that one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum FailureKind {
    /// Nothing more specific to say than the message.
    Other,
    /// The request was of another protocol version than the daemon's.
    Version {
        /// The daemon's protocol version.
        daemon: u32,
    },
    /// The requester is not allowed to use the control socket.
    NotRoot,
    /// The daemon is stopping and no longer serves requests.
    ShuttingDown,
    /// The request needs a running daemon, but ran on the files.
    NeedsDaemon {
        /// Which verb.
        what: DaemonOnly,
    },
    /// A one-shot ship was asked while a continuous schedule to the same target runs.
    ShipRunning {
        /// The target.
        url: String,
    },
    /// Pause, resume or stop of a schedule the daemon does not run.
    NoSchedule {
        /// The target.
        url: String,
    },
    /// The block device is mounted or open.
    Busy,
    /// The store is full.
    StoreFull,
    /// The store stopped accepting writes after a failed sync.
    StoreFailed,
    /// The snapshot does not exist.
    NoSuchSnapshot,
    /// A snapshot of that name exists.
    SnapshotExists,
    /// The store or backing is held by another process or open.
    InUse,
    /// Metadata or preserved data failed verification.
    Corrupt,
    /// The store was made for another backing file.
    WrongOrigin {
        /// The backing it was opened with.
        found: String,
    },
    /// The file is not a store.
    NotAStore,
    /// The store was written by a newer snapblk.
    FutureVersion,
    /// The backing's size disagrees with the store.
    OriginSize,
    /// The backing file does not exist (and no size was given to create it).
    NoBacking {
        /// The backing's path.
        path: String,
    },
    /// The backing is larger than the size asked for.
    BackingLarger,
    /// The store file does not exist.
    NoStore,
    /// The backing has more blocks than a store can track at this block size.
    TooManyBlocks,
    /// Shipping failed reading the local volume.
    LocalVolume,
    /// A remote object failed an integrity check.
    RemoteCorrupt,
    /// The snapshot is served as a device (`device`, when the daemon knows which).
    SnapshotAttached {
        /// Device id of the attachment.
        device: Option<u32>,
    },
    /// The device id asked for is taken.
    IdInUse {
        /// The id.
        id: u32,
    },
    /// The device is not a snapshot attached to this volume.
    NotAttached {
        /// The id.
        id: u32,
    },
    /// The snapshot being restored was deleted mid-way; the pre-restore snapshot holds
    /// the image from before.
    RestoreAbandoned {
        /// The pre-restore snapshot.
        pre_restore: String,
    },
}

impl Failure {
    /// A failure with nothing more specific than its message.
    pub fn other(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind: FailureKind::Other,
        }
    }

    /// A failure of `kind`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind,
        }
    }

    /// The daemon's answer to a request of protocol version `theirs` (None: a client
    /// older than versioning).
    pub fn version(theirs: Option<u64>) -> Failure {
        let ours = super::PROTOCOL_VERSION;
        let message = match theirs {
            Some(v) => {
                format!("the daemon speaks control protocol version {ours}, the client version {v}")
            }
            None => format!(
                "the daemon speaks control protocol version {ours}, the client an older one"
            ),
        };
        Failure::new(FailureKind::Version { daemon: ours }, message)
    }

    /// An engine error that ended a request, after `what` (e.g. "restore snapshot a").
    pub fn engine(what: &str, e: &snapmap::Error) -> Failure {
        Failure::new(FailureKind::of_engine(e), format!("{what}: {e}"))
    }
}

impl FailureKind {
    /// The kind of a shipper error.
    pub fn of_shipper(e: &shipper::Error) -> FailureKind {
        match e {
            shipper::Error::Source { .. } => FailureKind::LocalVolume,
            shipper::Error::Corrupt { .. } => FailureKind::RemoteCorrupt,
            _ => FailureKind::Other,
        }
    }

    /// The kind of an engine error.
    pub fn of_engine(e: &snapmap::Error) -> FailureKind {
        use snapmap::Error as E;
        match e {
            E::StoreFull { .. } => FailureKind::StoreFull,
            E::Failed { .. } => FailureKind::StoreFailed,
            E::NoSuchSnapshot(_) => FailureKind::NoSuchSnapshot,
            E::SnapshotExists(_) => FailureKind::SnapshotExists,
            E::SnapshotPinned(_) => FailureKind::SnapshotAttached { device: None },
            E::InUse { .. } => FailureKind::InUse,
            E::Corrupt { .. } => FailureKind::Corrupt,
            E::WrongOrigin { found, .. } => FailureKind::WrongOrigin {
                found: found.clone(),
            },
            E::NotAStore { .. } => FailureKind::NotAStore,
            E::FutureVersion { .. } => FailureKind::FutureVersion,
            E::OriginSize { .. } => FailureKind::OriginSize,
            E::NoBacking { path } => FailureKind::NoBacking { path: path.clone() },
            E::BackingLarger { .. } => FailureKind::BackingLarger,
            E::NoStore { .. } => FailureKind::NoStore,
            E::TooManyBlocks { .. } => FailureKind::TooManyBlocks,
            E::RestoreAbandoned { pre_restore, .. } => FailureKind::RestoreAbandoned {
                pre_restore: pre_restore.clone(),
            },
            _ => FailureKind::Other,
        }
    }
}
