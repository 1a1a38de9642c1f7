//! The engine: the write path (compare, preserve, overwrite), reads of the live image and of
//! snapshots, snapshot lifecycle, restore, export, diffs, status and consistency check.
//!
//! One file per concern, each an `impl Engine` block over the struct defined here:
//! - `open.rs`: opening files, locking them, formatting, assembling an engine;
//! - `read.rs`: the live image, snapshots through the delta chain, verified slots;
//! - `write.rs`: the write path, and **the ordering rule** every write obeys, stated there;
//! - `direct.rs`: plain writes a frontend issues with its own I/O (io_uring), admitted here;
//! - `cow.rs`: first writes after a snapshot driven by the frontend, in steps;
//! - `group.rs`: commit groups (the store's `append_group`) and checkpoints;
//! - `snapshot.rs`: snapshot lifecycle and diffs; `restore.rs`: restore and export;
//! - `check.rs`: status, counters, the consistency check and close.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::commit::Committer;
use crate::csum::CsumCache;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::io::BlockDev;
use crate::locks::BlockLocks;
use crate::store::{JournalPos, Recovery, Store};

/// Largest run of blocks one write step locks and processes at once.
const MAX_RUN: u64 = 256;

mod check;
pub mod cow;
pub mod direct;
mod group;
mod open;
mod read;
mod restore;
mod snapshot;
mod write;

pub use check::{CheckReport, Stats, Status};
pub use restore::{RestoreReport, RestoreState};
pub use snapshot::{validate_name, BlockRange, SnapshotInfo};

/// Block-lock stripes. Block `b` maps to stripe `b mod LOCK_STRIPES`, so two runs of `MAX_RUN`
/// blocks at unrelated places share stripes (and wait for each other) when their starts are
/// equal modulo this: with 4096 stripes a restore's 1 MiB runs fell into only 16 classes and
/// its workers queued behind each other. 65536 stripes (a few hundred KiB) make that rare.
const LOCK_STRIPES: usize = 1 << 16;

/// Preserved bytes one commit group carries at most. Large groups share one sync among many
/// requests (a restore fills them: each of its requests is a whole run); the cap bounds the
/// group buffer, and leaves room for the group's journal blocks within the largest pooled
/// buffer (16 MiB, see scratch.rs).
const GROUP_BYTES: usize = 15 << 20;

/// How to open (and, if needed, format) a store.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Block size for a new store (power of two, 4 KiB–64 KiB).
    pub block_size: u32,
    /// Origin size in bytes; the backing file is created or extended to it.
    pub size: Option<u64>,
    /// Use O_DIRECT on origin and store files.
    pub direct_io: bool,
    /// Cap on the store's size in bytes. It is recorded in the store: `None` keeps the
    /// recorded cap (if any), `Some` replaces it.
    pub max_store_bytes: Option<u64>,
    /// Format the store when it does not exist (or is empty).
    pub create: bool,
    /// Open without writing anything (offline list, export, diff, check).
    pub read_only: bool,
    /// Accept an origin whose path and inode both changed (the user says it is the same disk).
    pub adopt_origin: bool,
    /// Entries in the per-block checksum table (8 bytes each).
    pub csum_entries: usize,
    /// Journal blocks between checkpoints.
    pub checkpoint_every: u64,
    /// A store file grows by at least this many bytes at a time (each growth costs a
    /// superblock write; the space is reserved up front so that a full filesystem is noticed
    /// before anything is written).
    pub store_grow_bytes: u64,
    /// How long `open_files` waits for another holder of the origin or store to let go
    /// before reporting [`Error::InUse`]. A short wait rides out a process that is just
    /// exiting, and a multi-threaded program's fork-to-exec window, during which a child
    /// briefly shares its parent's open files (and their locks).
    pub lock_wait: std::time::Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            block_size: 4096,
            size: None,
            direct_io: false,
            max_store_bytes: None,
            create: true,
            read_only: false,
            adopt_origin: false,
            csum_entries: 1 << 20,
            checkpoint_every: 4096,
            store_grow_bytes: crate::store::GROW_STEP,
            lock_wait: std::time::Duration::from_secs(2),
        }
    }
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    write_bytes: AtomicU64,
    blocks_written: AtomicU64,
    blocks_skipped: AtomicU64,
    compare_reads: AtomicU64,
    preserves: AtomicU64,
    groups: AtomicU64,
    group_requests: AtomicU64,
    max_group: AtomicU64,
    flushes: AtomicU64,
    checkpoints: AtomicU64,
    store_full: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

struct Writer {
    store: Store,
    pos: JournalPos,
    since_checkpoint: u64,
}

/// A snapshot-capable view of an origin device backed by a store. See the crate docs.
pub struct Engine {
    origin: Arc<dyn BlockDev>,
    store_dev: Arc<dyn BlockDev>,
    origin_name: String,
    store_name: String,
    bs: u32,
    size: u64,
    nblocks: u64,
    read_only: bool,
    index: RwLock<Index>,
    /// Writers hold it shared; snapshot create/delete hold it exclusively, so every write falls
    /// wholly before or wholly after a snapshot.
    gate: RwLock<()>,
    locks: BlockLocks,
    csum: CsumCache,
    committer: Committer,
    writer: Mutex<Writer>,
    counters: Counters,
    store_full: AtomicBool,
    failed: Mutex<Option<String>>,
    has_failed: AtomicBool,
    recovery: Recovery,
    checkpoint_every: u64,
    zero_fp: u32,
    /// Snapshots something reads from (an attached device), by id, with how many readers:
    /// they cannot be deleted until every reader unpins them.
    pins: Mutex<std::collections::HashMap<u64, u32>>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // The index is only mutated by whole-entry applies; a panic mid-apply is a bug that the
    // check function would report, not a reason to stop serving reads.
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.bs
    }

    /// Device size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What opening the store found in its journal.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    fn check_range(&self, off: u64, len: u64) -> Result<()> {
        if off.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::OutOfRange {
                off,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::Invalid(format!(
                "store {} is open read-only",
                self.store_name
            )));
        }
        if self.has_failed.load(Ordering::Acquire) {
            let reason = self
                .failed
                .lock()
                .map(|f| f.clone().unwrap_or_default())
                .unwrap_or_default();
            return Err(Error::Failed {
                store: self.store_name.clone(),
                reason,
            });
        }
        Ok(())
    }

    fn fail(&self, reason: String) {
        tracing::error!(store = %self.store_name, %reason, "engine stops accepting writes");
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(reason);
        }
        self.has_failed.store(true, Ordering::Release);
    }

    fn origin_err(&self, what: &str, e: std::io::Error) -> Error {
        Error::io(format!("{what} backing {}", self.origin_name), e)
    }
}
