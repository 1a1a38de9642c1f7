//! The engine: the write path (compare, preserve, overwrite), reads of the live image and of
//! snapshots, snapshot lifecycle, restore, export, diffs, status and consistency check.
//!
//! The ordering rule every write obeys: the preserved copy of a block and the journal record
//! naming it are durable in the store before the new data can reach the origin.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use roaring::RoaringBitmap;
use serde::Serialize;

use crate::commit::{Committer, Kept, Request};
use crate::csum::{fingerprint, CsumCache};
use crate::error::{Error, Result};
use crate::format::{Entry, MAX_BLOCK, MIN_BLOCK, SUPER_SLOTS};
use crate::index::{Index, SlotRef};
use crate::io::{AlignedBuf, BlockDev, FileDev};
use crate::locks::BlockLocks;
use crate::scratch::Scratch;
use crate::store::{JournalPos, Recovery, Store};

/// Largest run of blocks one write step locks and processes at once.
const MAX_RUN: u64 = 256;

pub mod direct;

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

/// Restore workers. Each one alternates between reads, a wait for its commit group and an
/// origin write, so many are needed to keep both devices busy and groups full. While one
/// commit group (at most 15 runs of 1 MiB) is written and synced, the others read: 64 against
/// 32 took a 256 MiB restore from 313 to 341 MiB/s (median of 4 alternating host runs).
const RESTORE_WORKERS: usize = 64;

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

/// A snapshot as users see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// Id, unique for the store's lifetime.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Blocks preserved in its delta.
    pub preserved_blocks: u64,
    /// Bytes preserved in its delta.
    pub preserved_bytes: u64,
    /// Hidden from users (ship points).
    pub internal: bool,
}

/// A run of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BlockRange {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub len: u64,
}

/// What a restore did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RestoreReport {
    /// Snapshot restored.
    pub snapshot: String,
    /// The automatic snapshot holding the image from before the restore (restore it to undo).
    pub pre_restore: String,
    /// Whether this call resumed an interrupted restore.
    pub resumed: bool,
    /// Blocks that had to be considered.
    pub blocks: u64,
    /// Blocks written to the origin.
    pub written: u64,
    /// Blocks already right (compare-skipped).
    pub skipped: u64,
}

/// Counters since open.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Stats {
    /// Write calls (incl. discard and write-zeroes).
    pub writes: u64,
    /// Bytes those calls covered.
    pub write_bytes: u64,
    /// Blocks written to the origin.
    pub blocks_written: u64,
    /// Blocks not written because the origin already held the same bytes.
    pub blocks_skipped_identical: u64,
    /// Blocks read from the origin to compare or preserve.
    pub compare_reads: u64,
    /// Blocks preserved into a snapshot delta (copy-on-write).
    pub preserves: u64,
    /// Commit groups written (one store sync each).
    pub commit_groups: u64,
    /// Requests carried by those groups.
    pub commit_requests: u64,
    /// Largest number of requests in one group.
    pub max_group_requests: u64,
    /// Flushes.
    pub flushes: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Writes refused because the store was full.
    pub store_full_errors: u64,
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

/// Where a restore stands.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RestoreState {
    /// Snapshot being restored.
    pub target: String,
    /// Snapshot holding the image from before it.
    pub pre_restore: String,
}

/// Everything `snapblk status` shows.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Status {
    /// Origin name (path).
    pub origin: String,
    /// Store name (path).
    pub store: String,
    /// Device size in bytes.
    pub size_bytes: u64,
    /// Block size.
    pub block_size: u32,
    /// Store bytes in use.
    pub store_used_bytes: u64,
    /// Store limit in bytes, if any.
    pub store_capacity_bytes: Option<u64>,
    /// The last preserve failed for lack of room; writes needing a preserve fail until space
    /// is freed.
    pub store_full: bool,
    /// Why the engine stopped accepting writes, if it did.
    pub failed: Option<String>,
    /// User snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Internal snapshots (ship points).
    pub internal_snapshots: Vec<SnapshotInfo>,
    /// An interrupted restore, if any.
    pub restore_in_progress: Option<RestoreState>,
    /// Counters since open.
    pub stats: Stats,
    /// What opening found in the journal.
    pub recovery: Recovery,
}

/// Result of [`Engine::check`].
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Preserved blocks read and verified.
    pub preserved_blocks: u64,
    /// Slots in use that nothing references (left by failed commits; reclaimed on reopen).
    pub unreferenced_slots: u64,
    /// Inconsistencies found; empty means the store is consistent.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether no inconsistency was found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
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
}

/// Names users may give snapshots.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
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

/// Where the new data of a write comes from.
#[derive(Clone, Copy)]
enum Src<'a> {
    Data(&'a [u8]),
    Zeroes(u64),
}

impl Src<'_> {
    fn len(&self) -> u64 {
        match self {
            Src::Data(d) => d.len() as u64,
            Src::Zeroes(n) => *n,
        }
    }
}

/// Locks `dev` (exclusively for a writer) or reports who is in the way.
fn lock(
    dev: &FileDev,
    what: &'static str,
    path: &Path,
    exclusive: bool,
    wait: std::time::Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let mut got = dev.try_lock(exclusive);
    while matches!(got, Ok(false)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        got = dev.try_lock(exclusive);
    }
    match got {
        Ok(true) => Ok(()),
        Ok(false) => {
            let holders = dev.lock_holders();
            Err(Error::InUse {
                what,
                path: path.display().to_string(),
                holder: if holders.is_empty() {
                    "another snapblk process (a running device, or an offline command on it) or another open in this one".to_string()
                } else {
                    holders.join(", ")
                },
            })
        }
        Err(e) => Err(Error::io(format!("lock {what} {}", path.display()), e)),
    }
}

/// Per-run scratch: what the origin held for the blocks we had to read.
struct Run {
    b0: u64,
    n: usize,
    newest: Option<u64>,
    need: Vec<bool>,
    /// Pooled: only the blocks marked in `have_old` hold meaningful bytes.
    old: Scratch,
    have_old: Vec<bool>,
}

/// The fingerprints of a write's new data ([`crate::csum::fingerprint`]).
enum NewFps {
    /// Compute them from the data.
    Compute,
    /// Every block is zero.
    Zero,
}

impl Engine {
    /// Opens `store` for the origin file or device `backing`, formatting a new store when
    /// `opts.create` and it does not exist yet.
    pub fn open_files(backing: &Path, store: &Path, opts: &OpenOptions) -> Result<Engine> {
        if !backing.exists() {
            match opts.size {
                Some(_) if !opts.read_only => {
                    FileDev::create(backing, false).map_err(|e| {
                        Error::io(format!("create backing file {}", backing.display()), e)
                    })?;
                }
                _ => {
                    return Err(Error::NoBacking {
                        path: backing.display().to_string(),
                    })
                }
            }
        }
        let origin = FileDev::open(backing, opts.direct_io, opts.read_only)
            .map_err(|e| Error::io(format!("open backing {}", backing.display()), e))?;
        // Two writers on one origin or store would each trust an index the other is changing:
        // silent corruption. Readers share; a writer excludes everyone.
        lock(&origin, "backing", backing, !opts.read_only, opts.lock_wait)?;
        let cur = origin
            .len()
            .map_err(|e| Error::io(format!("size of backing {}", backing.display()), e))?;
        if let Some(want) = opts.size {
            if cur < want && !opts.read_only {
                origin.set_len(want).map_err(|e| {
                    Error::io(
                        format!("extend backing {} to {want} bytes", backing.display()),
                        e,
                    )
                })?;
            } else if cur > want {
                return Err(Error::BackingLarger {
                    path: backing.display().to_string(),
                    found: cur,
                    wanted: want,
                });
            }
        }
        let store_exists = store.exists()
            && std::fs::metadata(store)
                .map(|m| m.len() > 0 || !m.is_file())
                .unwrap_or(false);
        let origin: Arc<dyn BlockDev> = Arc::new(origin);
        if store_exists {
            let dev = FileDev::open(store, opts.direct_io, opts.read_only)
                .map_err(|e| Error::io(format!("open store {}", store.display()), e))?;
            lock(&dev, "store", store, !opts.read_only, opts.lock_wait)?;
            return Engine::open(origin, Arc::new(dev), opts);
        }
        if !opts.create || opts.read_only {
            return Err(Error::NoStore {
                path: store.display().to_string(),
            });
        }
        if store.exists() {
            // An empty regular file: reuse it.
            std::fs::remove_file(store)
                .map_err(|e| Error::io(format!("replace empty store {}", store.display()), e))?;
        }
        let dev = FileDev::create(store, opts.direct_io)
            .map_err(|e| Error::io(format!("create store {}", store.display()), e))?;
        lock(&dev, "store", store, true, opts.lock_wait)?;
        let dev: Arc<dyn BlockDev> = Arc::new(dev);
        match Engine::format(origin, dev, opts) {
            Ok(e) => Ok(e),
            Err(e) => {
                // Leave nothing half-made behind.
                let _ = std::fs::remove_file(store);
                Err(e)
            }
        }
    }

    /// Formats `store` for `origin` (whose current length is the device size) and opens it.
    pub fn format(
        origin: Arc<dyn BlockDev>,
        store: Arc<dyn BlockDev>,
        opts: &OpenOptions,
    ) -> Result<Engine> {
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) {
            return Err(Error::Invalid(format!(
                "block size {bs} is not a power of two between {MIN_BLOCK} and {MAX_BLOCK}"
            )));
        }
        let size = origin
            .len()
            .map_err(|e| Error::io(format!("size of backing {}", origin.name()), e))?;
        if size == 0 || size % bs as u64 != 0 {
            return Err(Error::Invalid(format!(
                "backing {} is {size} bytes: the size must be a non-zero multiple of the block size ({bs})",
                origin.name()
            )));
        }
        if size / bs as u64 >= u32::MAX as u64 {
            return Err(Error::TooManyBlocks {
                path: origin.name().to_string(),
                block_size: bs,
            });
        }
        let ident = origin.identity().unwrap_or_default();
        let cap = opts.max_store_bytes.map(|b| b / bs as u64);
        let (st, ix, pos) =
            Store::format(store.clone(), bs, size, ident, opts.store_grow_bytes, cap)?;
        Engine::assemble(origin, store, st, ix, pos, Recovery::default(), opts)
    }

    /// Opens an existing store for `origin`.
    pub fn open(
        origin: Arc<dyn BlockDev>,
        store: Arc<dyn BlockDev>,
        opts: &OpenOptions,
    ) -> Result<Engine> {
        let size = origin
            .len()
            .map_err(|e| Error::io(format!("size of backing {}", origin.name()), e))?;
        let ident = origin.identity();
        let origin_name = origin.name();
        let store_name = store.name();
        let adopt = opts.adopt_origin;
        let (mut st, ix, pos, rec) = Store::open(store.clone(), opts.read_only, |sb| {
            if sb.origin_size != size {
                return Err(Error::OriginSize {
                    origin: origin_name.clone(),
                    store: store_name.clone(),
                    expected: sb.origin_size,
                    found: size,
                });
            }
            if let Some(id) = &ident {
                if !sb.origin.path.is_empty() && !sb.origin.matches(id) && !adopt {
                    return Err(Error::WrongOrigin {
                        store: store_name.clone(),
                        expected: sb.origin.path.clone(),
                        found: id.path.clone(),
                    });
                }
            }
            Ok(())
        })?;
        if let Some(id) = ident {
            if !opts.read_only && st.superblock().origin != id {
                // Same origin, moved or copied: remember where it is now.
                st.set_origin(id)?;
            }
        }
        Engine::assemble(origin, store, st, ix, pos, rec, opts)
    }

    fn assemble(
        origin: Arc<dyn BlockDev>,
        store_dev: Arc<dyn BlockDev>,
        mut store: Store,
        mut ix: Index,
        pos: JournalPos,
        recovery: Recovery,
        opts: &OpenOptions,
    ) -> Result<Engine> {
        store.set_grow_step(opts.store_grow_bytes);
        let sb = store.superblock().clone();
        let bs = sb.block_size;
        // A limit given now replaces the recorded one (that is how it is changed); none given
        // means the recorded one holds, for offline commands as for the device.
        let mut limit = match opts.max_store_bytes {
            Some(b) => {
                let l = b / bs as u64;
                if !opts.read_only {
                    store.record_limit(Some(l))?;
                }
                Some(l)
            }
            None => store.recorded_limit(),
        };
        if !store_dev.can_grow() {
            let dev_slots = store_dev
                .len()
                .map_err(|e| Error::io(format!("size of store {}", store_dev.name()), e))?
                / bs as u64;
            limit = Some(limit.map_or(dev_slots, |l| l.min(dev_slots)));
        }
        ix.alloc.set_limit(limit);
        store.set_cap(limit);
        let zero = vec![0u8; bs as usize];
        Ok(Engine {
            origin_name: origin.name(),
            store_name: store_dev.name(),
            origin,
            store_dev,
            bs,
            size: sb.origin_size,
            nblocks: sb.origin_size / bs as u64,
            read_only: opts.read_only,
            index: RwLock::new(ix),
            gate: RwLock::new(()),
            locks: BlockLocks::new(LOCK_STRIPES),
            csum: CsumCache::new(opts.csum_entries),
            committer: Committer::new((GROUP_BYTES / bs as usize).max(1)),
            writer: Mutex::new(Writer {
                store,
                pos,
                since_checkpoint: 0,
            }),
            counters: Counters::default(),
            store_full: AtomicBool::new(false),
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
            recovery,
            checkpoint_every: opts.checkpoint_every.max(1),
            zero_fp: fingerprint(&zero),
        })
    }

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

    // ---------------------------------------------------------------- reads

    /// Reads the live image.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(off, buf.len() as u64)?;
        self.origin
            .read_at(buf, off)
            .map_err(|e| self.origin_err("read", e))?;
        Ok(())
    }

    /// Reads `out.len()` bytes of the store from slot `slot` on.
    fn read_store(&self, out: &mut [u8], slot: u64) -> Result<()> {
        self.store_dev
            .read_at(out, slot * self.bs as u64)
            .map_err(|e| {
                Error::io(
                    format!("read preserved blocks from store {}", self.store_name),
                    e,
                )
            })
    }

    /// Whether `bytes`, read from slot `r`, are the preserved copy of `block` it recorded.
    fn check_slot(&self, bytes: &[u8], r: SlotRef, block: u64) -> Result<()> {
        if crc32fast::hash(bytes) != r.crc {
            return Err(Error::Corrupt {
                store: self.store_name.clone(),
                detail: format!(
                    "preserved copy of block {block} in slot {} fails its checksum",
                    r.slot
                ),
            });
        }
        Ok(())
    }

    fn read_slot(&self, r: SlotRef, out: &mut [u8], block: u64) -> Result<()> {
        self.read_store(out, r.slot)?;
        self.check_slot(out, r, block)
    }

    /// Reads the preserved copies `refs[i]` (where present) into `img` at block `i` (block
    /// `b0 + i` of the device), coalescing consecutive store slots into single reads: deltas
    /// written by sequential or batched writes sit in consecutive slots.
    fn read_slots(&self, b0: u64, refs: &[Option<SlotRef>], img: &mut [u8]) -> Result<()> {
        let bs = self.bs as usize;
        let mut order: Vec<(usize, SlotRef)> = refs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|r| (i, r)))
            .collect();
        order.sort_unstable_by_key(|(_, r)| r.slot);
        let mut k = 0;
        let mut tmp = Scratch::take(0);
        while k < order.len() {
            let mut j = k + 1;
            while j < order.len() && order[j].1.slot == order[j - 1].1.slot + 1 {
                j += 1;
            }
            let run = &order[k..j];
            // Consecutive slots holding consecutive blocks (a delta written by large writes):
            // read straight into place; otherwise read the run once and scatter it.
            let in_place = run.windows(2).all(|w| w[1].0 == w[0].0 + 1);
            let (i0, first) = run[0];
            if in_place {
                let dst = &mut img[i0 * bs..(i0 + run.len()) * bs];
                self.read_store(dst, first.slot)?;
                for (m, &(i, r)) in run.iter().enumerate() {
                    self.check_slot(&dst[m * bs..(m + 1) * bs], r, b0 + i as u64)?;
                }
            } else {
                if tmp.len() < run.len() * bs {
                    tmp = Scratch::take(run.len() * bs);
                }
                self.read_store(&mut tmp[..run.len() * bs], first.slot)?;
                for (m, &(i, r)) in run.iter().enumerate() {
                    let bytes = &tmp[m * bs..(m + 1) * bs];
                    self.check_slot(bytes, r, b0 + i as u64)?;
                    img[i * bs..(i + 1) * bs].copy_from_slice(bytes);
                }
            }
            k = j;
        }
        Ok(())
    }

    fn snap_pos(&self, ix: &Index, name: &str) -> Result<usize> {
        ix.pos_by_name(name)
            .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))
    }

    /// Reads the frozen image of snapshot `name`.
    pub fn read_snapshot(&self, name: &str, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(off, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let _gate = read_lock(&self.gate);
        let bs = self.bs as u64;
        let b0 = off / bs;
        let b1 = (off + buf.len() as u64).div_ceil(bs);
        let n = (b1 - b0) as usize;
        let resolve = |ix: &Index| -> Result<Vec<Option<SlotRef>>> {
            let pos = self.snap_pos(ix, name)?;
            Ok((b0..b1).map(|b| ix.resolve(pos, b as u32)).collect())
        };
        let first = resolve(&read_lock(&self.index))?;
        let mut img = Scratch::take(n * bs as usize);
        self.read_origin_where(b0, &first, |r| r.is_none(), &mut img)?;
        // A writer may have preserved and overwritten a block between our lookup and our
        // origin read. It records the preserve before touching the origin, so a second lookup
        // sees every block whose origin bytes we may have read too late.
        let second = resolve(&read_lock(&self.index))?;
        // Deltas only gain blocks while the gate is held shared, so every block the first
        // lookup sent to the store the second does too; read any other from the origin rather
        // than leave pooled bytes in the image.
        let lost: Vec<bool> = first
            .iter()
            .zip(&second)
            .map(|(a, b)| a.is_some() && b.is_none())
            .collect();
        self.read_origin_where(b0, &lost, |&l| l, &mut img)?;
        self.read_slots(b0, &second, &mut img)?;
        let start = (off - b0 * bs) as usize;
        buf.copy_from_slice(&img[start..start + buf.len()]);
        Ok(())
    }

    /// Reads into `img` (block `b0` first) every block for which `pick` holds, in coalesced runs.
    fn read_origin_where<T>(
        &self,
        b0: u64,
        items: &[T],
        pick: impl Fn(&T) -> bool,
        img: &mut [u8],
    ) -> Result<u64> {
        let bs = self.bs as usize;
        let mut i = 0;
        let mut count = 0;
        while i < items.len() {
            if !pick(&items[i]) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < items.len() && pick(&items[j]) {
                j += 1;
            }
            self.origin
                .read_at(&mut img[i * bs..j * bs], (b0 + i as u64) * bs as u64)
                .map_err(|e| self.origin_err("read", e))?;
            count += (j - i) as u64;
            i = j;
        }
        Ok(count)
    }

    // ---------------------------------------------------------------- writes

    /// Writes `buf` at byte offset `off` (any alignment).
    pub fn write(&self, off: u64, buf: &[u8]) -> Result<()> {
        self.write_src(off, Src::Data(buf))
    }

    /// Makes `len` bytes at `off` read as zero, preserving originals like a write.
    pub fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        self.write_src(off, Src::Zeroes(len))
    }

    /// Discards `len` bytes at `off`: they read back as zero, and snapshots keep their copies.
    pub fn discard(&self, off: u64, len: u64) -> Result<()> {
        self.write_src(off, Src::Zeroes(len))
    }

    fn write_src(&self, off: u64, src: Src<'_>) -> Result<()> {
        let len = src.len();
        self.check_range(off, len)?;
        self.check_writable()?;
        add(&self.counters.writes, 1);
        add(&self.counters.write_bytes, len);
        if len == 0 {
            return Ok(());
        }
        let _gate = read_lock(&self.gate);
        let bs = self.bs as u64;
        let mut done = 0u64;
        while done < len {
            let cur = off + done;
            let step_end = ((cur / bs + MAX_RUN) * bs).min(off + len);
            let step = step_end - cur;
            let part = match src {
                Src::Data(d) => Src::Data(&d[done as usize..(done + step) as usize]),
                Src::Zeroes(_) => Src::Zeroes(step),
            };
            self.write_run(cur, part)?;
            done += step;
        }
        Ok(())
    }

    fn new_run(&self, b0: u64, n: usize) -> Run {
        let ix = read_lock(&self.index);
        let newest = ix.newest().map(|s| s.id);
        let need = match ix.newest() {
            Some(s) => (b0..b0 + n as u64)
                .map(|b| !s.delta.contains(b as u32))
                .collect(),
            None => vec![false; n],
        };
        Run {
            b0,
            n,
            newest,
            need,
            // Taken on the first read: a plain overwrite never needs it.
            old: Scratch::take(0),
            have_old: vec![false; n],
        }
    }

    fn ensure_old(&self, run: &mut Run) {
        if run.old.is_empty() {
            run.old = Scratch::take(run.n * self.bs as usize);
        }
    }

    fn read_old(&self, run: &mut Run, want: &[bool]) -> Result<()> {
        let pick: Vec<bool> = (0..run.n).map(|i| want[i] && !run.have_old[i]).collect();
        if !pick.contains(&true) {
            return Ok(());
        }
        self.ensure_old(run);
        let got = self.read_origin_where(run.b0, &pick, |&p| p, &mut run.old)?;
        add(&self.counters.compare_reads, got);
        for (have, p) in run.have_old.iter_mut().zip(&pick) {
            *have |= *p;
        }
        Ok(())
    }

    /// One step of a write: at most MAX_RUN blocks, locked for the whole step.
    fn write_run(&self, off: u64, src: Src<'_>) -> Result<()> {
        let bs = self.bs as usize;
        let len = src.len() as usize;
        let b0 = off / bs as u64;
        let head = (off % bs as u64) as usize;
        let n = (head + len).div_ceil(bs);
        let _locks = self.locks.lock(b0, n as u64);
        let mut run = self.new_run(b0, n);
        let first_partial = head != 0 || (n == 1 && len < bs);
        let last_partial = !(head + len).is_multiple_of(bs);
        let mut want = run.need.clone();
        want[0] |= first_partial;
        want[n - 1] |= last_partial;
        self.read_old(&mut run, &want)?;
        let aligned = !first_partial && !last_partial;
        let built;
        let data: &[u8] = match src {
            Src::Data(d) if aligned => d,
            _ => {
                // Every byte is set below: the head and tail blocks from the origin, the rest
                // from the write.
                let mut b = Scratch::take(n * bs);
                if first_partial {
                    b[..bs].copy_from_slice(&run.old[..bs]);
                }
                if last_partial {
                    b[(n - 1) * bs..].copy_from_slice(&run.old[(n - 1) * bs..]);
                }
                if let Src::Data(d) = src {
                    b[head..head + len].copy_from_slice(d);
                } else {
                    b[head..head + len].fill(0);
                }
                built = b;
                &built
            }
        };
        let zero = matches!(src, Src::Zeroes(_)) && !first_partial && !last_partial;
        let fps = if zero { NewFps::Zero } else { NewFps::Compute };
        self.write_locked(&mut run, data, zero, fps).map(|_| ())
    }

    /// The write path proper, for whole blocks whose locks the caller holds: skip blocks that
    /// already hold these bytes, preserve the originals the newest snapshot still needs (durably,
    /// in one commit), then write the rest.
    /// Returns the number of blocks written to the origin.
    fn write_locked(&self, run: &mut Run, data: &[u8], zero: bool, fps: NewFps) -> Result<u64> {
        let bs = self.bs as usize;
        let n = run.n;
        let fps: Vec<u32> = match fps {
            NewFps::Zero => vec![self.zero_fp; n],
            NewFps::Compute => data.chunks(bs).map(fingerprint).collect(),
        };
        // Blocks the newest snapshot still needs must be read (to preserve them, or to find
        // they already hold the new bytes). Otherwise a block whose remembered checksum equals
        // the new data's is probably unchanged: read it to be sure. A different checksum
        // proves it changed, with no read.
        let want: Vec<bool> = (0..n)
            .map(|i| {
                run.need[i]
                    || (!run.have_old[i]
                        && self.csum.get((run.b0 + i as u64) as u32) == Some(fps[i]))
            })
            .collect();
        self.read_old(run, &want)?;
        let write: Vec<bool> = (0..n)
            .map(|i| {
                let blk = i * bs..(i + 1) * bs;
                !(run.have_old[i] && run.old[blk.clone()] == data[blk])
            })
            .collect();
        let preserve: Vec<usize> = (0..n).filter(|&i| write[i] && run.need[i]).collect();
        let skipped = n - write.iter().filter(|&&w| w).count();
        add(&self.counters.blocks_skipped, skipped as u64);
        if let (false, Some(snap)) = (preserve.is_empty(), run.newest) {
            // The originals travel in the run's own buffer (no copy) and come back with the
            // request; their checksums are computed here, in parallel with other writers,
            // rather than by the group's leader.
            let req = Request {
                meta: Vec::new(),
                snap,
                blocks: preserve
                    .iter()
                    .map(|&i| Kept {
                        block: (run.b0 + i as u64) as u32,
                        crc: crc32fast::hash(&run.old[i * bs..(i + 1) * bs]),
                        at: i as u32,
                    })
                    .collect(),
                data: std::mem::replace(&mut run.old, Scratch::take(0)),
            };
            let (res, back) = self.commit_back(req);
            run.old = back.data;
            res?;
            add(&self.counters.preserves, back.blocks.len() as u64);
        }
        // The preserves are durable: the origin may now change.
        let mut written = 0;
        let mut i = 0;
        while i < n {
            if !write[i] {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && write[j] {
                j += 1;
            }
            let off = (run.b0 + i as u64) * bs as u64;
            let res = if zero {
                self.origin.zero_range(off, ((j - i) * bs) as u64)
            } else {
                self.origin.write_at(&data[i * bs..j * bs], off)
            };
            if let Err(e) = res {
                for k in i..j {
                    self.csum.forget((run.b0 + k as u64) as u32);
                }
                return Err(self.origin_err("write", e));
            }
            add(&self.counters.blocks_written, (j - i) as u64);
            written += (j - i) as u64;
            i = j;
        }
        for (i, fp) in fps.iter().enumerate() {
            self.csum.put((run.b0 + i as u64) as u32, *fp);
        }
        Ok(written)
    }

    /// Makes every acknowledged write durable.
    pub fn flush(&self) -> Result<()> {
        add(&self.counters.flushes, 1);
        self.origin.sync().map_err(|e| self.origin_err("sync", e))?;
        // Store writes are synced when committed; nothing else is pending there.
        Ok(())
    }

    // ---------------------------------------------------------------- commit groups

    fn commit(&self, req: Request) -> Result<()> {
        self.commit_back(req).0
    }

    /// [`Engine::commit`], handing the request (and its buffer) back.
    fn commit_back(&self, req: Request) -> (Result<()>, Request) {
        if let Err(e) = self.check_writable() {
            return (Err(e), req);
        }
        self.committer.commit(req, |batch| self.run_group(batch))
    }

    /// One [`Error::Failed`] per request, when the engine stopped taking writes (`why`).
    fn all_failed(&self, n: usize, why: &Error) -> Vec<Result<()>> {
        let reason = why.to_string();
        (0..n)
            .map(|_| {
                Err(Error::Failed {
                    store: self.store_name.clone(),
                    reason: reason.clone(),
                })
            })
            .collect()
    }

    /// Commits one group (run by the leader only; see commit.rs). The store does the bytes
    /// ([`Store::append_group`]); the engine keeps its flags, counters and the checkpoint
    /// schedule.
    fn run_group(&self, batch: &[Request]) -> Vec<Result<()>> {
        if let Err(e) = self.check_writable() {
            return self.all_failed(batch.len(), &e);
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Writer { store, pos, .. } = &mut *w;
        let g = store.append_group(&self.index, pos, batch);
        if let Some(reason) = g.failed {
            self.fail(reason);
        }
        let full = g
            .results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.is_store_full()));
        let full = full.count() as u64;
        if full > 0 {
            // Writes needing a preserve are failing: the store stays marked full even if a
            // smaller request of the same group fitted.
            self.store_full.store(true, Ordering::Release);
            add(&self.counters.store_full, full);
        } else if g.had_room {
            self.store_full.store(false, Ordering::Release);
        }
        if g.journal_blocks == 0 {
            return g.results;
        }
        w.since_checkpoint += g.journal_blocks;
        add(&self.counters.groups, 1);
        add(&self.counters.group_requests, g.committed as u64);
        self.counters
            .max_group
            .fetch_max(g.committed as u64, Ordering::Relaxed);
        // Journal blocks are only freed by a checkpoint. Checkpoint on a fixed period, and
        // also once the journal holds more than an eighth of the used slots: that bounds the
        // journal's share of the store, and a checkpoint (about 12 bytes per preserved block)
        // then costs a few percent of the journal written since the last one.
        let used = read_lock(&self.index).alloc.used();
        if w.since_checkpoint >= self.checkpoint_every
            || (w.since_checkpoint >= 256 && w.since_checkpoint * 8 >= used)
        {
            if let Err(e) = self.checkpoint_locked(&mut w) {
                tracing::warn!(store = %self.store_name, error = %e, "checkpoint failed; the journal keeps growing");
            }
        }
        g.results
    }

    fn checkpoint_locked(&self, w: &mut Writer) -> Result<bool> {
        let pos = w.pos;
        let r = w.store.write_checkpoint(&self.index, pos);
        match r {
            Ok(true) => {
                w.since_checkpoint = 0;
                add(&self.counters.checkpoints, 1);
            }
            Ok(false) => {}
            Err(ref e @ Error::Io { .. }) => {
                self.fail(e.to_string());
                if crate::store::is_no_space(e) {
                    self.store_full.store(true, Ordering::Release);
                    let ix = read_lock(&self.index);
                    return Err(w.store.full_error(&ix, crate::store::Full::Device));
                }
            }
            Err(_) => {}
        }
        r
    }

    /// Writes a checkpoint now (normally periodic and at close). Returns false when the store
    /// had no room for it.
    pub fn checkpoint(&self) -> Result<bool> {
        self.check_writable()?;
        // Become the only committer for the duration: a checkpoint captures a quiet index.
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_locked(&mut w)
    }

    // ---------------------------------------------------------------- snapshots

    /// Takes a snapshot named `name` of everything written so far. O(1): it starts a new, empty
    /// delta (after flushing the origin, so the snapshot holds every acknowledged write).
    pub fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        validate_name(name)?;
        let _gate = write_lock(&self.gate);
        self.create_locked(name, false)
    }

    /// Takes a snapshot hidden from [`Engine::snapshots`] (ship points).
    pub fn create_internal_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        validate_name(name)?;
        let _gate = write_lock(&self.gate);
        self.create_locked(name, true)
    }

    fn create_locked(&self, name: &str, internal: bool) -> Result<SnapshotInfo> {
        self.check_writable()?;
        self.flush()?;
        let id = {
            let ix = read_lock(&self.index);
            if ix.pos_by_name(name).is_some() {
                return Err(Error::SnapshotExists(name.to_string()));
            }
            if ix.next_id == u64::MAX {
                // Only a damaged or crafted checkpoint gets here; journaling this id would
                // make the store fail its own replay.
                return Err(Error::Corrupt {
                    store: self.store_dev.name(),
                    detail: "the next snapshot id is out of range".to_string(),
                });
            }
            ix.next_id
        };
        let created_unix = now_unix();
        self.commit(Request::meta(vec![Entry::SnapshotCreated {
            id,
            name: name.to_string(),
            created_unix,
            internal,
        }]))?;
        Ok(SnapshotInfo {
            id,
            name: name.to_string(),
            created_unix,
            preserved_blocks: 0,
            preserved_bytes: 0,
            internal,
        })
    }

    /// Deletes snapshot `name`. Its delta merges into the previous snapshot's (no data moves);
    /// blocks no other snapshot needs are freed for reuse.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let _gate = write_lock(&self.gate);
        self.check_writable()?;
        let id = {
            let ix = read_lock(&self.index);
            ix.snaps[self.snap_pos(&ix, name)?].id
        };
        self.commit(Request::meta(vec![Entry::SnapshotDeleted { id }]))?;
        // Freed space may end a store-full condition.
        self.store_full.store(false, Ordering::Release);
        Ok(())
    }

    fn infos(&self, internal: Option<bool>) -> Vec<SnapshotInfo> {
        let ix = read_lock(&self.index);
        ix.snaps
            .iter()
            .filter(|s| internal.is_none_or(|i| s.internal == i))
            .map(|s| SnapshotInfo {
                id: s.id,
                name: s.name.clone(),
                created_unix: s.created_unix,
                preserved_blocks: s.delta.len(),
                preserved_bytes: s.delta.len() * self.bs as u64,
                internal: s.internal,
            })
            .collect()
    }

    /// User snapshots, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.infos(Some(false))
    }

    /// Every snapshot including internal ones, oldest first.
    pub fn all_snapshots(&self) -> Vec<SnapshotInfo> {
        self.infos(None)
    }

    /// Blocks that may differ between snapshot `from` and snapshot `to` (None: the live image).
    /// Answered from the deltas alone; the disk is not scanned.
    pub fn changed_blocks(&self, from: &str, to: Option<&str>) -> Result<RoaringBitmap> {
        let ix = read_lock(&self.index);
        let a = self.snap_pos(&ix, from)?;
        let b = match to {
            Some(t) => self.snap_pos(&ix, t)?,
            None => ix.snaps.len(),
        };
        Ok(ix.union(a.min(b), a.max(b)))
    }

    /// Diagnostics: (block, store slot) of every block preserved in snapshot `name`'s delta.
    pub fn preserved_slots(&self, name: &str) -> Result<Vec<(u64, u64)>> {
        let ix = read_lock(&self.index);
        let pos = self.snap_pos(&ix, name)?;
        Ok(ix.snaps[pos]
            .delta
            .entries()
            .map(|(b, r)| (b as u64, r.slot))
            .collect())
    }

    /// [`Engine::changed_blocks`] as runs of consecutive blocks.
    pub fn diff(&self, from: &str, to: Option<&str>) -> Result<Vec<BlockRange>> {
        let set = self.changed_blocks(from, to)?;
        let mut out: Vec<BlockRange> = Vec::new();
        for b in set.iter() {
            let b = b as u64;
            match out.last_mut() {
                Some(r) if r.start + r.len == b => r.len += 1,
                _ => out.push(BlockRange { start: b, len: 1 }),
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- restore, export

    /// Rolls the live image back (or forward) to snapshot `name`, as a stream of ordinary
    /// writes through the copy-on-write path: newer snapshots survive, identical blocks cost
    /// nothing, and an interrupted restore is simply run again. An automatic
    /// `pre-restore-<time>` snapshot is taken first, so a restore can itself be undone.
    pub fn restore(
        &self,
        name: &str,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<RestoreReport> {
        self.check_writable()?;
        let (target, pre_name, resumed) = {
            let _gate = write_lock(&self.gate);
            let (target, resume) = {
                let ix = read_lock(&self.index);
                let t = ix.snaps[self.snap_pos(&ix, name)?].id;
                let resume = match ix.restore {
                    Some((rt, pre)) if rt == t => ix.pos(pre).map(|p| ix.snaps[p].name.clone()),
                    _ => None,
                };
                (t, resume)
            };
            match resume {
                Some(pre) => (target, pre, true),
                None => {
                    let base = format!("pre-restore-{}", now_unix());
                    let mut pre = base.clone();
                    let mut k = 2;
                    while read_lock(&self.index).pos_by_name(&pre).is_some() {
                        pre = format!("{base}-{k}");
                        k += 1;
                    }
                    let info = self.create_locked(&pre, false)?;
                    self.commit(Request::meta(vec![Entry::RestoreStarted {
                        target,
                        pre: info.id,
                    }]))?;
                    (target, pre, false)
                }
            }
        };
        let blocks = {
            let ix = read_lock(&self.index);
            let pos = ix
                .pos(target)
                .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))?;
            ix.union(pos, ix.snaps.len())
        };
        let total = blocks.len();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for b in blocks.iter() {
            let b = b as u64;
            match runs.last_mut() {
                Some((s, l)) if *s + *l == b && *l < MAX_RUN => *l += 1,
                _ => runs.push((b, 1)),
            }
        }
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let written = AtomicU64::new(0);
        let first_err: Mutex<Option<Error>> = Mutex::new(None);
        let workers = RESTORE_WORKERS.min(runs.len().max(1));
        progress(0, total);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if first_err.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(b0, n)) = runs.get(i) else { return };
                    match self.restore_run(target, b0, n) {
                        Ok(w) => {
                            written.fetch_add(w, Ordering::Relaxed);
                            let d = done.fetch_add(n, Ordering::Relaxed) + n;
                            progress(d, total);
                        }
                        Err(e) => {
                            if let Ok(mut f) = first_err.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().ok().flatten() {
            if read_lock(&self.index).pos(target).is_none() {
                return Err(Error::RestoreAbandoned {
                    snapshot: name.to_string(),
                    pre_restore: pre_name,
                });
            }
            return Err(e);
        }
        self.flush()?;
        self.commit(Request::meta(vec![Entry::RestoreFinished]))?;
        let written = written.into_inner();
        Ok(RestoreReport {
            snapshot: name.to_string(),
            pre_restore: pre_name,
            resumed,
            blocks: total,
            written,
            skipped: total - written,
        })
    }

    /// Writes snapshot `target`'s content back to blocks `b0..b0+n`; returns blocks written.
    fn restore_run(&self, target: u64, b0: u64, n: u64) -> Result<u64> {
        let _gate = read_lock(&self.gate);
        self.check_writable()?;
        let bs = self.bs as usize;
        let _locks = self.locks.lock(b0, n);
        let refs: Vec<Option<SlotRef>> = {
            let ix = read_lock(&self.index);
            let Some(pos) = ix.pos(target) else {
                return Err(Error::Invalid(
                    "the snapshot being restored was deleted during the restore".into(),
                ));
            };
            (b0..b0 + n).map(|b| ix.resolve(pos, b as u32)).collect()
        };
        // Blocks with no preserved copy already hold the snapshot's bytes in the origin: writing
        // them would be compare-skipped, so they are not even read.
        let mut written = 0;
        let mut i = 0;
        while i < refs.len() {
            if refs[i].is_none() {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < refs.len() && refs[j].is_some() {
                j += 1;
            }
            let p0 = b0 + i as u64;
            let mut run = self.new_run(p0, j - i);
            let mut data = Scratch::take((j - i) * bs);
            // The preserved copies (store) and the originals the pre-restore snapshot needs
            // (origin) are independent reads: issue them at once.
            let want = run.need.clone();
            let (slots, old) = std::thread::scope(|sc| {
                let h = sc.spawn(|| self.read_slots(p0, &refs[i..j], &mut data));
                let old = self.read_old(&mut run, &want);
                let slots = h.join().unwrap_or_else(|_| {
                    Err(Error::Invalid(format!(
                        "reading preserved blocks from store {} panicked (a bug)",
                        self.store_name
                    )))
                });
                (slots, old)
            });
            slots?;
            old?;
            written += self.write_locked(&mut run, &data, false, NewFps::Compute)?;
            i = j;
        }
        Ok(written)
    }

    /// Writes snapshot `name` as a plain image file at `to` (sparse where the image is zero).
    /// The file appears only when complete.
    pub fn export(&self, name: &str, to: &Path, progress: &dyn Fn(u64, u64)) -> Result<()> {
        {
            let ix = read_lock(&self.index);
            self.snap_pos(&ix, name)?;
        }
        if to.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is a directory: give the path of a new image file, e.g. {}",
                to.display(),
                to.join(format!("{name}.img")).display()
            )));
        }
        let exists = |to: &Path| {
            Error::Invalid(format!(
                "{} already exists: exports never replace a file; choose a new path",
                to.display()
            ))
        };
        let out = crate::newfile::NewFile::create(to).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists(to)
            } else {
                Error::io(
                    format!(
                        "create {} (is its directory there and writable?)",
                        to.display()
                    ),
                    e,
                )
            }
        })?;
        use std::os::unix::fs::FileExt;
        let f = out.file();
        let chunk = 1usize << 20;
        let mut buf = vec![0u8; chunk];
        let mut off = 0u64;
        while off < self.size {
            let n = (self.size - off).min(chunk as u64) as usize;
            self.read_snapshot(name, off, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                f.write_all_at(&buf[..n], off)
                    .map_err(|e| Error::io(format!("write {}", to.display()), e))?;
            }
            off += n as u64;
            progress(off, self.size);
        }
        f.set_len(self.size)
            .map_err(|e| Error::io(format!("size {}", to.display()), e))?;
        out.persist().map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists(to)
            } else {
                Error::io(format!("finish {}", to.display()), e)
            }
        })
    }

    // ---------------------------------------------------------------- status, check, close

    /// Counters since open.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            writes: l(&c.writes),
            write_bytes: l(&c.write_bytes),
            blocks_written: l(&c.blocks_written),
            blocks_skipped_identical: l(&c.blocks_skipped),
            compare_reads: l(&c.compare_reads),
            preserves: l(&c.preserves),
            commit_groups: l(&c.groups),
            commit_requests: l(&c.group_requests),
            max_group_requests: l(&c.max_group),
            flushes: l(&c.flushes),
            checkpoints: l(&c.checkpoints),
            store_full_errors: l(&c.store_full),
        }
    }

    /// Everything `snapblk status` shows.
    pub fn status(&self) -> Status {
        let bs = self.bs as u64;
        let (used, cap, restore) = {
            let ix = read_lock(&self.index);
            let name = |id: u64| {
                ix.pos(id)
                    .map(|p| ix.snaps[p].name.clone())
                    .unwrap_or_default()
            };
            (
                ix.alloc.used() * bs,
                ix.alloc.limit().map(|l| l * bs),
                ix.restore.map(|(t, p)| RestoreState {
                    target: name(t),
                    pre_restore: name(p),
                }),
            )
        };
        Status {
            origin: self.origin_name.clone(),
            store: self.store_name.clone(),
            size_bytes: self.size,
            block_size: self.bs,
            store_used_bytes: used,
            store_capacity_bytes: cap,
            store_full: self.store_full.load(Ordering::Acquire),
            failed: self.failed.lock().ok().and_then(|f| f.clone()),
            snapshots: self.infos(Some(false)),
            internal_snapshots: self.infos(Some(true)),
            restore_in_progress: restore,
            stats: self.stats(),
            recovery: self.recovery.clone(),
        }
    }

    /// Offline-grade consistency check: every preserved block is readable and matches its
    /// checksum, no slot is used twice, and the allocator agrees with the index.
    ///
    /// Safe on a live device: the index is examined under the writer (commits wait for a
    /// moment), and the preserved blocks are then read with no lock held, so a check of a
    /// large store does not stall the device's I/O. A block whose copy fails to verify is
    /// reported only if the index still names that copy afterwards (a snapshot deleted
    /// meanwhile may have freed and reused its slot).
    pub fn check(&self) -> Result<CheckReport> {
        // Who uses a slot, kept small: a million preserved blocks are examined under the
        // writer, and only a conflict needs words.
        #[derive(Clone, Copy)]
        enum Owner {
            Journal,
            Checkpoint,
            Retained,
            NextJournal,
            Block(usize, u32),
        }
        let mut rep = CheckReport::default();
        let mut refs: Vec<(usize, u32, SlotRef)>;
        let snaps: Vec<(u64, String)>;
        {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let ix = read_lock(&self.index);
            rep.snapshots = ix.snaps.len() as u64;
            snaps = ix.snaps.iter().map(|s| (s.id, s.name.clone())).collect();
            let describe = |o: Owner, slot: u64| match o {
                Owner::Journal => format!("journal block at slot {slot}"),
                Owner::Checkpoint => "the checkpoint".to_string(),
                Owner::Retained => format!("the previous checkpoint or its journal (slot {slot})"),
                Owner::NextJournal => "the next journal block".to_string(),
                Owner::Block(p, b) => format!("block {b} of snapshot {:?}", snaps[p].1),
            };
            let mut owner: std::collections::HashMap<u64, Owner, rapidhash::fast::RandomState> =
                std::collections::HashMap::with_capacity_and_hasher(
                    ix.alloc.used() as usize,
                    rapidhash::fast::RandomState::default(),
                );
            let mut claim = |slot: u64, who: Owner, rep: &mut CheckReport| {
                if slot < SUPER_SLOTS || slot >= ix.alloc.high_water() {
                    rep.problems.push(format!(
                        "{} uses slot {slot}, outside the store's slots",
                        describe(who, slot)
                    ));
                } else if ix.alloc.is_free(slot) {
                    rep.problems.push(format!(
                        "{} uses slot {slot}, which the allocator has free",
                        describe(who, slot)
                    ));
                }
                if let Some(prev) = owner.insert(slot, who) {
                    rep.problems.push(format!(
                        "slot {slot} is used by both {} and {}",
                        describe(prev, slot),
                        describe(who, slot)
                    ));
                }
            };
            for s in ix.journal_slots.iter() {
                claim(*s, Owner::Journal, &mut rep);
            }
            for s in ix.checkpoint_slots.clone() {
                claim(s, Owner::Checkpoint, &mut rep);
            }
            for s in ix.retained.iter() {
                claim(*s, Owner::Retained, &mut rep);
            }
            claim(w.pos.slot, Owner::NextJournal, &mut rep);
            refs = Vec::with_capacity(ix.snaps.iter().map(|s| s.delta.len() as usize).sum());
            for (p, snap) in ix.snaps.iter().enumerate() {
                for (b, r) in snap.delta.entries() {
                    claim(r.slot, Owner::Block(p, b), &mut rep);
                    if u64::from(b) >= self.nblocks {
                        rep.problems.push(format!(
                            "snapshot {:?} holds block {b}, past the device's end",
                            snap.name
                        ));
                    }
                    refs.push((p, b, r));
                }
            }
            let referenced = owner.len() as u64;
            rep.unreferenced_slots = ix.alloc.used().saturating_sub(SUPER_SLOTS + referenced);
            if let Some((t, p)) = ix.restore {
                if ix.pos(t).is_none() || ix.pos(p).is_none() {
                    rep.problems
                        .push("an unfinished restore names a snapshot that does not exist".into());
                }
            }
        }
        // In slot order, consecutive slots in one read.
        refs.sort_unstable_by_key(|&(_, _, r)| r.slot);
        let bs = self.bs as usize;
        let mut buf = AlignedBuf::zeroed(0);
        let mut k = 0;
        while k < refs.len() {
            let mut j = k + 1;
            while j < refs.len()
                && j - k < MAX_RUN as usize
                && refs[j].2.slot == refs[j - 1].2.slot + 1
            {
                j += 1;
            }
            if buf.len() < (j - k) * bs {
                buf = AlignedBuf::zeroed(MAX_RUN as usize * bs);
            }
            let run = &mut buf[..(j - k) * bs];
            // A run that cannot be read whole is read block by block, so that the report
            // names only the blocks that are unreadable.
            let whole = self.read_store(run, refs[k].2.slot).is_ok();
            for (m, &(p, b, r)) in refs[k..j].iter().enumerate() {
                let bytes = &mut run[m * bs..(m + 1) * bs];
                let verdict = if whole {
                    self.check_slot(bytes, r, u64::from(b))
                } else {
                    self.read_slot(r, bytes, u64::from(b))
                }
                .map_err(|e| e.to_string());
                match verdict {
                    Ok(()) => rep.preserved_blocks += 1,
                    Err(e) => {
                        let ix = read_lock(&self.index);
                        let current = ix
                            .pos(snaps[p].0)
                            .and_then(|q| ix.snaps[q].delta.get(b))
                            .is_some_and(|now| now == r);
                        if current {
                            rep.problems.push(e);
                        }
                    }
                }
            }
            k = j;
        }
        Ok(rep)
    }

    /// Flushes, writes a checkpoint and closes. Dropping without closing is safe too: the
    /// journal is replayed on the next open.
    pub fn close(self) -> Result<()> {
        if self.read_only || self.has_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.flush()?;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_locked(&mut w)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemDev;

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A restore spanning many runs, restored by parallel workers from a delta whose slots are
    /// partly consecutive (1 MiB writes) and partly scattered (single blocks, a partial write),
    /// brings back the snapshot's exact bytes, keeps the replaced image in the pre-restore
    /// snapshot, reports exactly the blocks it wrote, and is a no-op when repeated.
    #[test]
    fn parallel_restore_is_exact_reversible_and_idempotent() {
        const BS: usize = 4096;
        let size = 16 << 20;
        let origin: Arc<dyn BlockDev> = Arc::new(MemDev::new("origin", size as u64, false));
        let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
        let e = Engine::format(origin, store, &OpenOptions::default()).unwrap();
        let a = pattern(1, size);
        e.write(0, &a).unwrap();
        e.create_snapshot("s").unwrap();
        let mut changed = std::collections::BTreeSet::new();
        for (k, chunk) in [3usize, 7, 8, 15].iter().enumerate() {
            let off = chunk << 20;
            e.write(off as u64, &pattern(10 + k as u64, 1 << 20))
                .unwrap();
            changed.extend(off / BS..(off + (1 << 20)) / BS);
        }
        for b in [5usize, 700, 701, 2000, 4095] {
            e.write((b * BS) as u64, &pattern(100 + b as u64, BS))
                .unwrap();
            changed.insert(b);
        }
        // Part of one block; the rest of it keeps the snapshot's bytes.
        e.write((3000 * BS + 100) as u64, &[0xEE; 50]).unwrap();
        changed.insert(3000);
        let mut b_img = vec![0u8; size];
        e.read(0, &mut b_img).unwrap();

        let rep = e.restore("s", &|_, _| {}).unwrap();
        assert_eq!(rep.blocks, changed.len() as u64);
        assert_eq!(rep.written, changed.len() as u64);
        assert_eq!(rep.skipped, 0);
        let mut now = vec![0u8; size];
        e.read(0, &mut now).unwrap();
        assert!(now == a, "the live image is not the snapshot's");
        let mut pre = vec![0u8; size];
        e.read_snapshot(&rep.pre_restore, 0, &mut pre).unwrap();
        assert!(
            pre == b_img,
            "the pre-restore snapshot lost the replaced image"
        );

        let again = e.restore("s", &|_, _| {}).unwrap();
        assert_eq!(again.written, 0);
        e.read(0, &mut now).unwrap();
        assert!(now == a);
        let c = e.check().unwrap();
        assert!(c.ok(), "{:?}", c.problems);

        // Undo: back to the image the restore replaced.
        let undo = e.restore(&rep.pre_restore, &|_, _| {}).unwrap();
        assert_eq!(undo.written, changed.len() as u64);
        e.read(0, &mut now).unwrap();
        assert!(
            now == b_img,
            "restoring the pre-restore snapshot did not undo the restore"
        );
    }
}
