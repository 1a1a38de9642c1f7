//! The engine's error type. Every message names the object and, where there is one, the fix.

use std::io;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call on the origin or the store failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file or device.
        what: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The store has no room for another preserved block.
    #[error("store {store} is full ({used_bytes} of {capacity_bytes} bytes used): make room by deleting a snapshot (`snapblk snapshot list` shows what each holds, `snapblk snapshot delete NAME` frees it) or a ship point (`snapblk status` lists them), or give the store more room (a larger --max-store when creating the device, or free space on the store's filesystem); the write was refused and every snapshot is intact")]
    StoreFull {
        /// The store's name (path).
        store: String,
        /// Bytes in use.
        used_bytes: u64,
        /// The store's limit in bytes.
        capacity_bytes: u64,
    },
    /// The store was formatted for a different origin.
    #[error("store {store} belongs to backing {expected}, not {found}: if you moved or copied the pair together (and {found} was not written since without the daemon), pass --adopt to bind the store to {found}; otherwise pass the store that belongs to {found}")]
    WrongOrigin {
        /// The store's name.
        store: String,
        /// The origin recorded in the store.
        expected: String,
        /// The origin it was opened with.
        found: String,
    },
    /// The file holds no snapblk superblock.
    #[error("{store} is not a snapblk store (no valid superblock) and was left untouched: point --store at the store of this backing file, or give `snapblk create` a --store path that does not exist yet to start a new store")]
    NotAStore {
        /// The file's name.
        store: String,
    },
    /// The store was written by a newer snapblk.
    #[error("store {store} has format version {found}, newer than this snapblk understands ({supported}): upgrade snapblk")]
    FutureVersion {
        /// The store's name.
        store: String,
        /// Version found on disk.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// Metadata or preserved data failed verification.
    #[error("store {store} is corrupt: {detail}. Nothing was changed; keep a copy of the store file. If it still opens, `snapblk check` lists all the damage; otherwise restore the volume from a copy or a remote (`snapblk remote restore`)")]
    Corrupt {
        /// The store's name.
        store: String,
        /// What failed to verify, and where.
        detail: String,
    },
    /// The origin's size disagrees with the store.
    #[error("backing {origin} is {found} bytes but store {store} was made for {expected} bytes: use the matching backing file or store")]
    OriginSize {
        /// The origin's name.
        origin: String,
        /// The store's name.
        store: String,
        /// Size recorded in the store.
        expected: u64,
        /// Size found.
        found: u64,
    },
    /// A snapshot name that does not exist.
    #[error("snapshot {0:?} does not exist: see `snapblk snapshot list`")]
    NoSuchSnapshot(String),
    /// A snapshot name that is taken.
    #[error("snapshot {0:?} already exists: pick another name or delete the old one first")]
    SnapshotExists(String),
    /// A snapshot name that cannot be used.
    #[error("invalid snapshot name {0:?}: use 1-200 characters of letters, digits, '.', '_', ':', '-', not starting with '-'")]
    InvalidName(String),
    /// An I/O range outside the device.
    #[error("range {off}+{len} reaches past the end of the device ({size} bytes)")]
    OutOfRange {
        /// Start offset in bytes.
        off: u64,
        /// Length in bytes.
        len: u64,
        /// Device size in bytes.
        size: u64,
    },
    /// Another process (or another open in this one) already has the file.
    #[error("{what} {path} is in use by {holder}: stop that first; `snapblk list` shows running devices, and while a device runs, use its own commands with -n ID instead of --backing (`snapblk snapshot create NAME -n ID`, `snapblk restore NAME -n ID`, `snapblk status -n ID`)")]
    InUse {
        /// "store" or "backing".
        what: &'static str,
        /// The file's path.
        path: String,
        /// Who holds it, as well as can be told ("pid 123 (snapblk)", or a description).
        holder: String,
    },
    /// A caller passed something unusable.
    #[error("{0}")]
    Invalid(String),
    /// An earlier sync failure left the on-disk state uncertain; the engine refuses further writes.
    #[error("store {store} stopped accepting writes after a failed sync ({reason}): close and reopen the device (`snapblk recover`) so the log is replayed")]
    Failed {
        /// The store's name.
        store: String,
        /// The first failure.
        reason: String,
    },
}

impl Error {
    /// Whether this error means the store ran out of room.
    pub fn is_store_full(&self) -> bool {
        matches!(self, Error::StoreFull { .. })
    }

    /// The errno a block device should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::StoreFull { .. } => libc::ENOSPC,
            Error::OutOfRange { .. } | Error::Invalid(_) | Error::InvalidName(_) => libc::EINVAL,
            Error::InUse { .. } => libc::EBUSY,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let errno = e.errno();
        io::Error::new(io::Error::from_raw_os_error(errno).kind(), e)
    }
}

/// Shorthand for the engine's results.
pub type Result<T> = std::result::Result<T, Error>;
