//! The bytes on the store device: formatting, opening (superblock → checkpoint → journal
//! replay), appending commit groups, and writing checkpoints. The store's own ordering rules
//! (growth recorded before it is used, a checkpoint synced before the superblock names it)
//! live here, next to the writes they order; `FORMAT.md` explains why they are enough.
//!
//! - `mod.rs`: the store handle, formatting, growth, the superblock and what "full" means;
//! - `open.rs`: choosing a superblock copy, loading the checkpoint, replaying the journal;
//! - `append.rs`: the narrow interface the engine commits through ([`Store::append_group`],
//!   as dm-snapshot's exception store takes `commit_exception`) and checkpoints.

use std::sync::{Arc, RwLock};

mod append;
mod open;

use crate::error::{Error, Result};
use crate::format::{CheckpointRef, Superblock, FORMAT_VERSION, SUPER_SLOTS};
use crate::index::Index;
use crate::io::{AlignedBuf, BlockDev, Identity};

/// Where the journal continues: the next block's sequence number and its (pre-allocated) slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalPos {
    /// Sequence number of the next journal block.
    pub seq: u64,
    /// Slot it will be written to.
    pub slot: u64,
}

/// What opening a store found.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Recovery {
    /// Journal blocks replayed on top of the checkpoint.
    pub journal_blocks: u64,
    /// Commit groups replayed.
    pub groups: u64,
    /// Commit groups found incomplete or unverifiable at the tail and dropped (their writes
    /// were never acknowledged).
    pub groups_dropped: u64,
    /// The journal ended at a block of this store that failed its checksum (a write torn by
    /// a crash; it was never acknowledged).
    pub torn_tail: bool,
    /// Damage that opening worked around (a superblock copy rewritten, an older checkpoint used).
    pub repaired: Vec<String>,
}

/// How writing a commit group failed.
#[derive(Debug)]
pub enum GroupError {
    /// A write failed; nothing was synced, the previous state is intact.
    Write(Error),
    /// The sync failed: what reached the disk is unknown.
    Sync(Error),
}

/// An open store device and its current superblock.
pub struct Store {
    dev: Arc<dyn BlockDev>,
    sb: Superblock,
    /// The copy (0 = A, 1 = B) that holds `sb` on disk, and the checkpoint it names there.
    at: u64,
    at_names: CheckpointRef,
    /// The checkpoint the other copy names, when that copy is valid and older: it is the
    /// fallback if the newest checkpoint is damaged, so writes that keep the checkpoint leave
    /// it alone (see [`Store::write_superblock`]).
    other: Option<CheckpointRef>,
    read_only: bool,
    grow_step: u64,
    cap_slots: Option<u64>,
}

/// Errors from the store device that mean "no room" rather than "broken": the filesystem
/// holding a store file is full, or the file reached the filesystem's size limit.
const NO_SPACE_ERRNOS: [i32; 2] = [libc::ENOSPC, libc::EFBIG];

/// Whether `e` is an I/O error of the store device that means it has no room left.
pub(crate) fn is_no_space(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if source.raw_os_error().is_some_and(|n| NO_SPACE_ERRNOS.contains(&n)))
}

/// Why a store counts as full, which decides what its capacity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// The slot allocator refused: the recorded size limit is reached.
    Limit,
    /// The device refused to grow or to take a write (its filesystem is full, or a block
    /// device is used up).
    Device,
}

/// Default growth step of a store file, in bytes.
pub const GROW_STEP: u64 = 16 << 20;

/// Room a checkpoint may take for its snapshot records beyond 16 bytes per slot: a record is
/// at most 233 bytes, so this is over a million snapshots.
const CHECKPOINT_SNAPSHOT_ROOM: u64 = 256 << 20;

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// The superblock in force.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Block (slot) size.
    pub fn block_size(&self) -> u32 {
        self.sb.block_size
    }

    /// The store's name for messages.
    pub fn name(&self) -> String {
        self.dev.name()
    }

    /// The device.
    pub fn dev(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }

    /// The store's capacity in bytes, the one definition every "store full" report uses:
    /// the recorded size limit when the allocator hit it; otherwise where the device stopped
    /// growing (its current length).
    pub(crate) fn capacity_bytes(&self, ix: &Index, why: Full) -> u64 {
        let bs = self.sb.block_size as u64;
        match (why, ix.alloc.limit()) {
            (Full::Limit, Some(limit)) => limit * bs,
            _ => self.dev.len().unwrap_or(self.sb.reserved_slots * bs),
        }
    }

    /// The error every write that found no room in this store gets.
    pub(crate) fn full_error(&self, ix: &Index, why: Full) -> Error {
        Error::StoreFull {
            store: self.dev.name(),
            used_bytes: ix.alloc.used() * self.sb.block_size as u64,
            capacity_bytes: self.capacity_bytes(ix, why),
        }
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> Error {
        Error::io(format!("{what} on store {}", self.dev.name()), e)
    }

    fn corrupt(&self, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            store: self.dev.name(),
            detail: detail.into(),
        }
    }

    /// Formats `dev` as an empty store for an origin of `origin_size` bytes.
    pub fn format(
        dev: Arc<dyn BlockDev>,
        block_size: u32,
        origin_size: u64,
        origin: Identity,
        grow_step: u64,
        cap_slots: Option<u64>,
    ) -> Result<(Store, Index, JournalPos)> {
        let mut ix = Index::empty();
        let journal_slot = ix.alloc.alloc_meta(1).map_or(SUPER_SLOTS, |v| v[0]);
        let pos = JournalPos {
            seq: 1,
            slot: journal_slot,
        };
        let sb = Superblock {
            version: FORMAT_VERSION,
            block_size,
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            origin_size,
            generation: 0,
            epoch: 1,
            checkpoint: CheckpointRef::default(),
            created_unix: now_unix(),
            origin,
            reserved_slots: 0,
            limit_slots: cap_slots.unwrap_or(0),
        };
        let mut store = Store {
            dev,
            sb,
            // Nothing is on disk yet: the first write goes to copy B, the next to A.
            at: 0,
            at_names: CheckpointRef::default(),
            other: None,
            read_only: false,
            grow_step: grow_step.max(block_size as u64),
            cap_slots,
        };
        if let Err(e) = store.ensure_slots(journal_slot + 1) {
            let (GroupError::Write(e) | GroupError::Sync(e)) = e;
            return Err(e);
        }
        // Zero the first journal slot so that no stale bytes there can pass for a journal block.
        let zero = AlignedBuf::zeroed(block_size as usize);
        store
            .dev
            .write_at(&zero, journal_slot * block_size as u64)
            .map_err(|e| store.io_err("format", e))?;
        let index = RwLock::new(ix);
        if !store.write_checkpoint(&index, pos)? {
            let ix = index.read().unwrap_or_else(|p| p.into_inner());
            return Err(store.full_error(&ix, Full::Limit));
        }
        let ix = index.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok((store, ix, pos))
    }

    /// Sets how much a growing store file grows at a time (at least).
    pub fn set_grow_step(&mut self, bytes: u64) {
        self.grow_step = bytes.max(self.sb.block_size as u64);
    }

    /// Caps growth at `slots` slots (the store's configured size limit).
    pub fn set_cap(&mut self, slots: Option<u64>) {
        self.cap_slots = slots;
    }

    /// The size limit recorded in the superblock, if any.
    pub fn recorded_limit(&self) -> Option<u64> {
        (self.sb.limit_slots != 0).then_some(self.sb.limit_slots)
    }

    /// Records `slots` as the store's size limit (None: no limit) in the superblock.
    pub fn record_limit(&mut self, slots: Option<u64>) -> Result<()> {
        let old = self.sb.limit_slots;
        self.sb.limit_slots = slots.unwrap_or(0);
        if old == self.sb.limit_slots {
            return Ok(());
        }
        if let Err(e) = self.write_superblock() {
            self.sb.limit_slots = old;
            return Err(e);
        }
        Ok(())
    }

    /// Makes sure slots `0..needed` exist on the device, growing it (by at least a quarter, or
    /// the grow step) and recording the new length in the superblock before any of the new
    /// slots is used. A failed growth leaves the store as it was ([`GroupError::Write`]); a
    /// failed superblock write leaves it uncertain ([`GroupError::Sync`]).
    pub fn ensure_slots(&mut self, needed: u64) -> std::result::Result<(), GroupError> {
        if needed <= self.sb.reserved_slots {
            return Ok(());
        }
        let bs = self.sb.block_size as u64;
        let cur = self.sb.reserved_slots;
        let target = needed
            .max(cur + cur / 4)
            .max(cur + self.grow_step / bs)
            .min(self.cap_slots.unwrap_or(u64::MAX).max(needed));
        let len = self
            .dev
            .len()
            .map_err(|e| GroupError::Write(self.io_err("size", e)))?;
        let target = if self.dev.can_grow() {
            self.dev
                .grow_to(target * bs)
                .map_err(|e| GroupError::Write(self.io_err("grow", e)))?;
            target
        } else {
            // A block device: its whole length is the store.
            let all = len / bs;
            if all < needed {
                return Err(GroupError::Write(
                    self.io_err("grow", std::io::Error::from_raw_os_error(libc::ENOSPC)),
                ));
            }
            all
        };
        self.dev
            .sync()
            .map_err(|e| GroupError::Sync(self.io_err("sync after grow", e)))?;
        let old = self.sb.reserved_slots;
        self.sb.reserved_slots = target;
        if let Err(e) = self.write_superblock() {
            self.sb.reserved_slots = old;
            return Err(GroupError::Sync(e));
        }
        Ok(())
    }

    /// Writes the superblock, then syncs.
    ///
    /// A write that names a new checkpoint goes to the copy not holding the newest generation,
    /// so the other copy keeps naming the previous checkpoint (kept, with its journal, until
    /// the next one). A write that keeps the checkpoint (a new epoch on open, growth, a new
    /// limit) overwrites the copy that already names it, as long as the other copy is valid
    /// and names an earlier checkpoint: alternating there too would leave both copies
    /// naming the same checkpoint after one reopen, and damage to it would then leave the
    /// store unopenable. A torn in-place write leaves the other copy, which opens through the
    /// previous checkpoint and replays the journal since.
    pub fn write_superblock(&mut self) -> Result<()> {
        if self.read_only {
            return Err(Error::Invalid(format!(
                "store {} is open read-only",
                self.dev.name()
            )));
        }
        let mut next = self.sb.clone();
        // A wrapped generation would make this copy look older than the stale one.
        next.generation = next
            .generation
            .checked_add(1)
            .ok_or_else(|| self.corrupt("superblock generation at its maximum"))?;
        // The other copy is a fallback only if it names a checkpoint at all (a new store's
        // first copy names none).
        let in_place = next.checkpoint == self.at_names
            && self
                .other
                .is_some_and(|o| o != next.checkpoint && o.slots > 0);
        let copy = if in_place { self.at } else { 1 - self.at };
        let mut b = AlignedBuf::zeroed(self.sb.block_size as usize);
        b[..4096].copy_from_slice(&next.encode());
        self.dev
            .write_at(&b, copy * self.sb.block_size as u64)
            .map_err(|e| self.io_err("write superblock", e))?;
        self.dev
            .sync()
            .map_err(|e| self.io_err("sync superblock", e))?;
        if !in_place {
            self.other = Some(self.at_names);
            self.at = copy;
            self.at_names = next.checkpoint;
        }
        self.sb = next;
        Ok(())
    }

    /// Records a new identity for the origin (after the user confirmed a moved origin).
    pub fn set_origin(&mut self, origin: Identity) -> Result<()> {
        self.sb.origin = origin;
        self.write_superblock()
    }

    /// Syncs the store device.
    pub fn sync(&self) -> Result<()> {
        self.dev.sync().map_err(|e| self.io_err("sync", e))
    }
}
