//! The engine's error type. Every message says what failed and names the object; what to
//! run about it is the command line's to say (it matches on these variants).

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
    #[error("store {store} is full ({used_bytes} of {capacity_bytes} bytes used); the write was refused and every snapshot is intact")]
    StoreFull {
        /// The store's name (path).
        store: String,
        /// Bytes in use.
        used_bytes: u64,
        /// The store's limit in bytes.
        capacity_bytes: u64,
    },
    /// The store was formatted for a different origin.
    #[error("store {store} belongs to backing {expected}, not {found}")]
    WrongOrigin {
        /// The store's name.
        store: String,
        /// The origin recorded in the store.
        expected: String,
        /// The origin it was opened with.
        found: String,
    },
    /// The file holds no snapblk superblock.
    #[error("{store} is not a snapblk store (no valid superblock) and was left untouched")]
    NotAStore {
        /// The file's name.
        store: String,
    },
    /// The store was written by a newer snapblk.
    #[error("store {store} has format version {found}, newer than this build reads ({supported}): upgrade snapblk")]
    FutureVersion {
        /// The store's name.
        store: String,
        /// Version found on disk.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// Metadata or preserved data failed verification.
    #[error(
        "store {store} is corrupt: {detail}. Nothing was changed; keep a copy of the store file"
    )]
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
    #[error("snapshot {0:?} does not exist")]
    NoSuchSnapshot(String),
    /// A snapshot that something reads from (an attached device, a shipment) cannot go.
    #[error("snapshot {0:?} is in use (attached as a device)")]
    SnapshotPinned(String),
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
    #[error("{what} {path} is in use by {holder}: stop that first")]
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
    /// The backing file does not exist and no size was given to create it.
    #[error("backing file {path} does not exist")]
    NoBacking {
        /// The backing's path.
        path: String,
    },
    /// The backing is larger than the size asked for.
    #[error("backing {path} is {found} bytes, larger than the size asked for ({wanted} bytes)")]
    BackingLarger {
        /// The backing's path.
        path: String,
        /// Its size.
        found: u64,
        /// The size asked for.
        wanted: u64,
    },
    /// The store file does not exist (and was not to be created).
    #[error("store {path} does not exist")]
    NoStore {
        /// The store's path.
        path: String,
    },
    /// The backing has more blocks than a store tracks at this block size.
    #[error("backing {path} has more than 2^32-1 blocks of {block_size} bytes")]
    TooManyBlocks {
        /// The backing's path.
        path: String,
        /// The block size asked for.
        block_size: u32,
    },
    /// The snapshot being restored was deleted mid-way: the device is only partly restored.
    #[error("snapshot {snapshot:?} was deleted while it was being restored, so the device is only partly restored; snapshot {pre_restore} holds the image from before the restore")]
    RestoreAbandoned {
        /// The snapshot that was being restored.
        snapshot: String,
        /// The automatic pre-restore snapshot.
        pre_restore: String,
    },
    /// An earlier sync failure left the on-disk state uncertain; the engine refuses further writes.
    #[error("store {store} stopped accepting writes after a failed sync ({reason})")]
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
            Error::OutOfRange { .. }
            | Error::Invalid(_)
            | Error::InvalidName(_)
            | Error::NoBacking { .. }
            | Error::BackingLarger { .. }
            | Error::NoStore { .. }
            | Error::TooManyBlocks { .. }
            | Error::RestoreAbandoned { .. } => libc::EINVAL,
            Error::InUse { .. } | Error::SnapshotPinned(_) => libc::EBUSY,
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
