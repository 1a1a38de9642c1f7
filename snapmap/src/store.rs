//! The bytes on the store device: formatting, opening (superblock → checkpoint → journal
//! replay), appending commit groups, and writing checkpoints. Ordering rules live here, next to
//! the writes they order; `FORMAT.md` explains why they are enough.

use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::format::{
    CheckpointBody, CheckpointRef, Entry, JournalBlock, SuperError, Superblock, FLAG_GROUP_END,
    FORMAT_VERSION, SUPER_SLOTS,
};
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

/// Bytes read at once when replay follows the journal chain.
const READ_AHEAD_BYTES: usize = 256 << 10;

/// Serves journal blocks to replay from one larger read. A commit group's journal blocks after
/// its first, and the next group's first, are allocated together, right after the group's
/// preserved data: one read of the window that starts at a group's second block usually holds
/// the rest of that group and the start of the next. Reading them one at a time made a dirty
/// open of a store with 1 M preserved blocks wait out thousands of single-block reads, more
/// than a second on a disk with 0.25 ms reads.
struct ReadAhead {
    buf: AlignedBuf,
    block_size: usize,
    /// The slot `buf` starts at, and how many slots of it were read.
    start: u64,
    valid: u64,
}

impl ReadAhead {
    fn new(block_size: u64) -> Self {
        let block_size = block_size as usize;
        let blocks = (READ_AHEAD_BYTES / block_size).max(1);
        ReadAhead {
            buf: AlignedBuf::zeroed(blocks * block_size),
            block_size,
            start: 0,
            valid: 0,
        }
    }

    /// The bytes of `slot` (below `dev_slots`), read with the slots after it unless a previous
    /// read already covered it. Replay only reads, so what was read stays current.
    fn block(&mut self, dev: &dyn BlockDev, slot: u64, dev_slots: u64) -> std::io::Result<&[u8]> {
        if slot < self.start || slot >= self.start + self.valid {
            let cap = (self.buf.len() / self.block_size) as u64;
            let n = cap.min(dev_slots.saturating_sub(slot)).max(1);
            let len = n as usize * self.block_size;
            let off = slot * self.block_size as u64;
            self.valid = 0;
            let n = match dev.read_at(&mut self.buf[..len], off) {
                Ok(()) => n,
                // An unreadable slot among the ones read ahead (a preserved block, say) must
                // not fail a replay that never needed it: read the one block asked for.
                Err(_) if n > 1 => {
                    dev.read_at(&mut self.buf[..self.block_size], off)?;
                    1
                }
                Err(e) => return Err(e),
            };
            self.start = slot;
            self.valid = n;
        }
        let at = (slot - self.start) as usize * self.block_size;
        Ok(&self.buf[at..at + self.block_size])
    }
}

/// An open store device and its current superblock.
pub struct Store {
    dev: Arc<dyn BlockDev>,
    sb: Superblock,
    read_only: bool,
    grow_step: u64,
    cap_slots: Option<u64>,
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
            return Err(Error::StoreFull {
                store: store.dev.name(),
                used_bytes: 0,
                capacity_bytes: store.dev.len().unwrap_or(0),
            });
        }
        let ix = index.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok((store, ix, pos))
    }

    /// Opens a store: picks the newest valid superblock, loads its checkpoint, replays the
    /// journal, and (unless read-only) starts a new epoch. `verify` sees the superblock before
    /// anything is written, so a store refused for the wrong origin is left untouched.
    pub fn open(
        dev: Arc<dyn BlockDev>,
        read_only: bool,
        verify: impl Fn(&Superblock) -> Result<()>,
    ) -> Result<(Store, Index, JournalPos, Recovery)> {
        let name = dev.name();
        let mut copies = Vec::new();
        let mut errors = Vec::new();
        // Copy B sits at the start of slot 1, whose size we do not know before reading A; try
        // every legal block size.
        let mut offsets = vec![0u64];
        offsets.extend((12..=16).map(|s| 1u64 << s));
        for off in offsets {
            let mut b = AlignedBuf::zeroed(4096);
            dev.read_at(&mut b, off)
                .map_err(|e| Error::io(format!("read superblock of store {name}"), e))?;
            match Superblock::decode(&b) {
                Ok(sb) if off == 0 || off == sb.block_size as u64 => copies.push(sb),
                Ok(_) => {}
                Err(e) => errors.push((off, e)),
            }
        }
        copies.sort_by_key(|c| std::cmp::Reverse(c.generation));
        if copies.is_empty() {
            if let Some((_, SuperError::Version(v))) = errors
                .iter()
                .find(|(_, e)| matches!(e, SuperError::Version(_)))
            {
                return Err(Error::FutureVersion {
                    store: name,
                    found: *v,
                    supported: FORMAT_VERSION,
                });
            }
            if errors.iter().all(|(_, e)| *e == SuperError::Magic) {
                return Err(Error::NotAStore { store: name });
            }
            let why: Vec<String> = errors
                .iter()
                .filter(|(_, e)| *e != SuperError::Magic)
                .map(|(off, e)| format!("superblock at byte {off}: {e:?}"))
                .collect();
            return Err(Error::Corrupt {
                store: name,
                detail: format!("no valid superblock copy ({})", why.join(", ")),
            });
        }
        verify(&copies[0])?;
        // The store only ever grows, and each growth is recorded before it is used: a store
        // shorter than its newest superblock says has lost its tail (synced records with it).
        let len = dev
            .len()
            .map_err(|e| Error::io(format!("size of store {name}"), e))?;
        let want = copies[0]
            .reserved_slots
            .saturating_mul(copies[0].block_size as u64);
        if len < want {
            return Err(Error::Corrupt {
                store: name,
                detail: format!(
                    "it is {len} bytes long but had grown to {want} bytes: it was truncated, and the records in its lost tail cannot be recovered"
                ),
            });
        }
        let damaged: Vec<String> = errors
            .iter()
            .filter(|(_, e)| *e == SuperError::Checksum)
            .map(|(off, _)| format!("superblock copy at byte {off} failed its checksum"))
            .collect();
        // Newest copy first. If its checkpoint is damaged, the other copy names the previous
        // checkpoint, which is kept (with its journal) until the next one exists; replaying from
        // it covers everything since.
        let mut last_err = None;
        for (i, sb) in copies.iter().enumerate() {
            // Every copy answers for the origin, not only the newest.
            verify(sb)?;
            let store = Store {
                dev: dev.clone(),
                sb: sb.clone(),
                read_only,
                grow_step: GROW_STEP,
                cap_slots: None,
            };
            match store.load() {
                Ok((mut ix, pos, mut recovery, max_epoch)) => {
                    let mut notes = damaged.clone();
                    if i > 0 {
                        notes.push(format!(
                            "used the older superblock copy (generation {}) because the newer one's checkpoint did not verify",
                            sb.generation
                        ));
                    }
                    recovery.repaired = notes;
                    let mut store = store;
                    if !read_only {
                        // A new epoch before any new journal write: journal blocks left from a
                        // dropped tail carry an older epoch and can never be mistaken for
                        // successors of new ones. This write also rewrites a damaged copy.
                        // Counters at their maximum cannot come from use (2^64 opens);
                        // wrapping would break the epoch order, so such a store is refused.
                        store.sb.epoch = store
                            .sb
                            .epoch
                            .max(max_epoch)
                            .checked_add(1)
                            .ok_or_else(|| store.corrupt("journal epoch at its maximum"))?;
                        store.write_superblock()?;
                    }
                    ix.alloc.mark_used(pos.slot);
                    return Ok((store, ix, pos, recovery));
                }
                Err(e @ Error::Corrupt { .. }) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(Error::NotAStore { store: name }))
    }

    fn load(&self) -> Result<(Index, JournalPos, Recovery, u64)> {
        let bs = self.sb.block_size as u64;
        let cp = self.sb.checkpoint;
        let dev_slots = self.dev.len().map_err(|e| self.io_err("size", e))? / bs;
        // Untrusted numbers: check them against the device before sizing anything by them.
        let fits = cp
            .slot
            .checked_add(cp.slots)
            .is_some_and(|end| end <= dev_slots);
        // A checkpoint records each slot at most once, in 16 bytes at most (a preserve; a free
        // or metadata slot takes 8), plus its snapshot records. Bounding its length by that
        // keeps a forged superblock from sizing the buffer below by the whole store.
        let most = dev_slots
            .saturating_mul(16)
            .saturating_add(CHECKPOINT_SNAPSHOT_ROOM);
        if cp.slots == 0
            || !fits
            || cp.len > cp.slots * bs
            || cp.len > most
            || cp.slot < SUPER_SLOTS
        {
            return Err(self.corrupt(format!(
                "superblock names an impossible checkpoint {cp:?} (the store has {dev_slots} slots)"
            )));
        }
        let mut buf = AlignedBuf::zeroed((cp.len.div_ceil(bs) * bs) as usize);
        self.dev
            .read_at(&mut buf, cp.slot * bs)
            .map_err(|e| self.io_err("read checkpoint", e))?;
        if crc32fast::hash(&buf[..cp.len as usize]) != cp.crc {
            return Err(self.corrupt(format!(
                "checkpoint at slot {} does not match the superblock's checksum",
                cp.slot
            )));
        }
        let body = CheckpointBody::decode(&buf).map_err(|e| self.corrupt(e))?;
        if body.high_water > dev_slots || body.journal_slot >= dev_slots.max(body.high_water + 1) {
            return Err(self.corrupt(format!(
                "checkpoint claims {} slots in use (journal at slot {}) but the store has {dev_slots}",
                body.high_water, body.journal_slot
            )));
        }
        let nblocks = self.sb.origin_size / bs;
        let mut ix = Index::from_checkpoint(&body, cp.slot..cp.slot + cp.slots, nblocks)
            .map_err(|e| self.corrupt(e.0))?;
        let mut pos = JournalPos {
            seq: body.next_seq,
            slot: body.journal_slot,
        };
        let (applied, recovery, max_epoch) = self.replay(&mut ix, pos)?;
        pos = applied;
        Ok((ix, pos, recovery, max_epoch))
    }

    /// Follows the journal chain from `start`. Every complete group but the last is known
    /// durable (the next group was only written after its sync); the last one is applied only
    /// if every preserved block it names verifies.
    fn replay(&self, ix: &mut Index, start: JournalPos) -> Result<(JournalPos, Recovery, u64)> {
        let bs = self.sb.block_size as u64;
        let dev_slots = self.dev.len().map_err(|e| self.io_err("size", e))? / bs;
        let mut rec = Recovery::default();
        let mut pos = start;
        let mut applied = start;
        let mut last_epoch = 0;
        let mut group: Vec<(u64, JournalBlock)> = Vec::new();
        let mut held: Option<(Vec<(u64, JournalBlock)>, JournalPos)> = None;
        let mut ahead = ReadAhead::new(bs);
        while pos.slot >= SUPER_SLOTS && pos.slot < dev_slots {
            let buf = ahead
                .block(self.dev.as_ref(), pos.slot, dev_slots)
                .map_err(|e| self.io_err("read journal", e))?;
            let jb = match JournalBlock::decode(&self.sb.uuid, buf) {
                Ok(jb) => jb,
                Err(e) => {
                    rec.torn_tail = e != crate::format::JournalError::Foreign;
                    if rec.torn_tail {
                        self.refuse_damage_mid_journal(buf, pos, last_epoch, dev_slots)?;
                    }
                    break;
                }
            };
            // Epochs never decrease along the chain: a block from an older epoch is a stale
            // leftover of a dropped tail, not a successor. (No upper bound: blocks of a newer
            // epoch than the superblock's mean the newest superblock copy was lost.)
            if jb.seq != pos.seq || jb.epoch < last_epoch {
                break;
            }
            last_epoch = jb.epoch;
            let end = jb.flags & FLAG_GROUP_END != 0;
            let slot = pos.slot;
            pos = JournalPos {
                seq: jb.seq + 1,
                slot: jb.next_slot,
            };
            group.push((slot, jb));
            if end {
                if let Some((g, after)) = held.take() {
                    self.apply_group(ix, &g, &mut rec)?;
                    applied = after;
                }
                held = Some((std::mem::take(&mut group), pos));
            }
        }
        if !group.is_empty() {
            rec.groups_dropped += 1;
        }
        if let Some((g, after)) = held {
            if self.group_payload_verifies(&g)? {
                self.apply_group(ix, &g, &mut rec)?;
                applied = after;
            } else {
                rec.groups_dropped += 1;
            }
        }
        Ok((applied, rec, last_epoch))
    }

    /// The journal ended at a block of this store that fails its checksum. After a crash that
    /// is the torn last write. But if the (untrusted) next-slot field leads to a chain holding a
    /// complete commit group followed by more journal, the damaged block was followed by synced
    /// groups: it was durable, and something damaged it since. Truncating there would silently
    /// lose those groups, so refuse.
    fn refuse_damage_mid_journal(
        &self,
        damaged: &[u8],
        pos: JournalPos,
        epoch: u64,
        dev_slots: u64,
    ) -> Result<()> {
        let field = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&damaged[at..at + 8]);
            u64::from_le_bytes(a)
        };
        if field(32) != pos.seq {
            return Ok(());
        }
        // Successors of the damaged block were written in its epoch or later.
        let epoch = epoch.max(field(24));
        let bs = self.sb.block_size as u64;
        let mut slot = field(40);
        let mut groups_after = 0;
        let mut buf = AlignedBuf::zeroed(bs as usize);
        for seq in pos.seq + 1..pos.seq + 257 {
            if slot < SUPER_SLOTS || slot >= dev_slots {
                break;
            }
            self.dev
                .read_at(&mut buf, slot * bs)
                .map_err(|e| self.io_err("read journal", e))?;
            let Ok(jb) = JournalBlock::decode(&self.sb.uuid, &buf) else {
                break;
            };
            if jb.seq != seq || jb.epoch < epoch {
                break;
            }
            if groups_after > 0 {
                return Err(self.corrupt(format!(
                    "journal block {} at slot {} is damaged, but the journal continues after it with synced commit groups; refusing to drop them (restore the store from a copy)",
                    pos.seq, pos.slot
                )));
            }
            if jb.flags & FLAG_GROUP_END != 0 {
                groups_after += 1;
            }
            slot = jb.next_slot;
        }
        Ok(())
    }

    fn group_payload_verifies(&self, g: &[(u64, JournalBlock)]) -> Result<bool> {
        let bs = self.sb.block_size as u64;
        let dev_slots = self.dev.len().map_err(|e| self.io_err("size", e))? / bs;
        // A group's preserved blocks were allocated together, mostly in consecutive slots.
        let mut ahead = ReadAhead::new(bs);
        for (_, jb) in g {
            if jb.next_slot < SUPER_SLOTS || jb.next_slot >= dev_slots {
                return Ok(false);
            }
            for e in &jb.entries {
                if let Entry::Preserve { slot, crc, .. } = e {
                    if *slot < SUPER_SLOTS || *slot >= dev_slots {
                        return Ok(false);
                    }
                    let buf = ahead
                        .block(self.dev.as_ref(), *slot, dev_slots)
                        .map_err(|e| self.io_err("verify journal tail", e))?;
                    if crc32fast::hash(buf) != *crc {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    fn apply_group(
        &self,
        ix: &mut Index,
        g: &[(u64, JournalBlock)],
        rec: &mut Recovery,
    ) -> Result<()> {
        // Slots come from untrusted bytes: every one must lie inside the store.
        let bs = self.sb.block_size as u64;
        let dev_slots = self.dev.len().map_err(|e| self.io_err("size", e))? / bs;
        for (_, jb) in g {
            let bad = |s: u64| s < SUPER_SLOTS || s >= dev_slots;
            let preserve_bad = jb
                .entries
                .iter()
                .any(|e| matches!(e, Entry::Preserve { slot, .. } if bad(*slot)));
            if bad(jb.next_slot) || preserve_bad {
                return Err(self.corrupt(format!(
                    "journal block {} names a slot outside the store's {dev_slots} slots",
                    jb.seq
                )));
            }
        }
        // When replaying from an older checkpoint (the newer superblock copy was damaged),
        // later history may reuse slots that checkpoint still retains: that history freed
        // them, so they are no longer retained.
        let nblocks = self.sb.origin_size / bs;
        let next = g.last().map(|(_, jb)| jb.next_slot);
        for (slot, jb) in g {
            ix.alloc.mark_used(*slot);
            ix.retained.remove(slot);
            ix.journal_slots.push(*slot);
            for e in &jb.entries {
                if let Entry::Preserve { slot, block, .. } = e {
                    // The group took each preserve's slot from the free ones when it was
                    // written; one still in use here (another delta's data, a journal or
                    // checkpoint block) would be handed out twice, and restore writes every
                    // preserved block back to the origin.
                    let taken = !ix.alloc.is_free(*slot) && !ix.retained.contains(slot);
                    if taken || Some(*slot) == next || u64::from(*block) >= nblocks {
                        return Err(self.corrupt(format!(
                            "journal block {} preserves block {block} into slot {slot}, {}",
                            jb.seq,
                            if u64::from(*block) >= nblocks {
                                format!("past the origin's {nblocks} blocks")
                            } else {
                                "a slot that is already in use".to_string()
                            }
                        )));
                    }
                    ix.retained.remove(slot);
                }
                ix.apply(e)
                    .map_err(|e| self.corrupt(format!("journal block {}: {}", jb.seq, e.0)))?;
            }
            rec.journal_blocks += 1;
        }
        // The slot the group reserved for the block after it is in use too.
        if let Some((_, last)) = g.last() {
            ix.alloc.mark_used(last.next_slot);
            ix.retained.remove(&last.next_slot);
        }
        rec.groups += 1;
        Ok(())
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
                    self.io_err("grow", std::io::Error::from_raw_os_error(28)),
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

    /// Writes the superblock copy not holding the newest generation, then syncs.
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
        let copy = next.generation % 2;
        let mut b = AlignedBuf::zeroed(self.sb.block_size as usize);
        b[..4096].copy_from_slice(&next.encode());
        self.dev
            .write_at(&b, copy * self.sb.block_size as u64)
            .map_err(|e| self.io_err("write superblock", e))?;
        self.dev
            .sync()
            .map_err(|e| self.io_err("sync superblock", e))?;
        self.sb = next;
        Ok(())
    }

    /// Records a new identity for the origin (after the user confirmed a moved origin).
    pub fn set_origin(&mut self, origin: Identity) -> Result<()> {
        self.sb.origin = origin;
        self.write_superblock()
    }

    /// Writes one commit group: `blocks` (journal blocks in order, each with its slot) and
    /// `data` (preserved blocks, each with its slot), then one sync. Contiguous slots go out in
    /// one write.
    pub fn write_group(
        &self,
        blocks: &[(u64, JournalBlock)],
        data: &[(u64, &[u8])],
    ) -> std::result::Result<(), GroupError> {
        self.write_group_unsynced(blocks, data)
            .map_err(GroupError::Write)?;
        self.sync().map_err(GroupError::Sync)
    }

    fn write_group_unsynced(
        &self,
        blocks: &[(u64, JournalBlock)],
        data: &[(u64, &[u8])],
    ) -> Result<()> {
        let bs = self.sb.block_size as usize;
        let mut items: Vec<(u64, usize)> = Vec::with_capacity(blocks.len() + data.len());
        // Pooled: both buffers are fully overwritten below (encode_into zero-fills its block).
        let mut encoded = crate::scratch::Scratch::take(bs * blocks.len());
        for (i, (slot, jb)) in blocks.iter().enumerate() {
            jb.encode_into(&self.sb.uuid, &mut encoded[i * bs..(i + 1) * bs])
                .map_err(|e| Error::Invalid(format!("journal block: {e}")))?;
            items.push((*slot, i));
        }
        for (j, (slot, _)) in data.iter().enumerate() {
            items.push((*slot, blocks.len() + j));
        }
        items.sort_unstable_by_key(|x| x.0);
        let src = |k: usize| -> &[u8] {
            if k < blocks.len() {
                &encoded[k * bs..(k + 1) * bs]
            } else {
                data[k - blocks.len()].1
            }
        };
        let mut i = 0;
        while i < items.len() {
            let mut j = i + 1;
            while j < items.len() && items[j].0 == items[j - 1].0 + 1 {
                j += 1;
            }
            // The pieces go as they are (one piece is a plain write): joining them first copied
            // every preserved block once more, a quarter of a restore's CPU (bench/HISTORY.md,
            // 2026-12-04).
            let pieces: Vec<&[u8]> = items[i..j].iter().map(|it| src(it.1)).collect();
            self.dev
                .write_vectored_at(&pieces, items[i].0 * bs as u64)
                .map_err(|e| self.io_err("append", e))?;
            i = j;
        }
        Ok(())
    }

    /// Syncs the store device.
    pub fn sync(&self) -> Result<()> {
        self.dev.sync().map_err(|e| self.io_err("sync", e))
    }

    /// Writes a checkpoint of the index as of journal position `pos` and points the superblock
    /// at it. Returns false (and changes nothing) when the store has no room for it.
    ///
    /// The caller must be the only one changing the index until this returns (the engine
    /// holds its writer). The index is then only read while the checkpoint is encoded and
    /// locked for writing twice, briefly, to reserve its slots and to free what it replaces:
    /// its writes and syncs, tens of milliseconds for a million preserved blocks, run while
    /// reads and writes that preserve nothing go on.
    ///
    /// Order: checkpoint bytes → sync → superblock → sync → only then free the journal blocks
    /// and the previous checkpoint it replaces. A crash at any point leaves the previous
    /// superblock naming a checkpoint and journal that are both still intact.
    pub fn write_checkpoint(&mut self, index: &RwLock<Index>, pos: JournalPos) -> Result<bool> {
        let bs = self.sb.block_size as u64;
        let read = || index.read().unwrap_or_else(|p| p.into_inner());
        let write = || index.write().unwrap_or_else(|p| p.into_inner());
        // The checkpoint before the current one, and its journal, become free; the current
        // one and the journal since are kept one more round for the other superblock copy.
        let (mut body, obsolete, keep, len) = {
            let ix = read();
            let obsolete: Vec<u64> = ix.retained.iter().copied().collect();
            let mut keep: Vec<u64> = ix.journal_slots.clone();
            keep.extend(ix.checkpoint_slots.clone());
            let body = ix.to_checkpoint(pos.seq, pos.slot, obsolete.clone(), keep.clone());
            let len = body
                .encoded_len()
                .map_err(|e| Error::Invalid(format!("checkpoint: {e}")))?
                as u64;
            (body, obsolete, keep, len)
        };
        let n = len.div_ceil(bs);
        let start = {
            let mut ix = write();
            let Some(start) = ix.alloc.alloc_run_at_end(n) else {
                return Ok(false);
            };
            // Allocating at the end changes only the high-water mark (fixed width), so the
            // length computed above holds.
            body.high_water = ix.alloc.high_water();
            start
        };
        let give_back = || {
            let mut ix = write();
            for s in start..start + n {
                ix.alloc.free(s);
            }
        };
        if let Err(e) = self.ensure_slots(start + n) {
            give_back();
            let (GroupError::Write(e) | GroupError::Sync(e)) = e;
            return Err(e);
        }
        let bytes = match body.encode(self.sb.block_size) {
            Ok(b) => b,
            Err(e) => {
                give_back();
                return Err(Error::Invalid(format!("checkpoint: {e}")));
            }
        };
        debug_assert!(bytes.len() as u64 <= n * bs);
        let aligned = AlignedBuf::from_slice(&bytes);
        let written = self
            .dev
            .write_at(&aligned, start * bs)
            .map_err(|e| self.io_err("write checkpoint", e))
            .and_then(|_| self.sync());
        if let Err(e) = written {
            // Nothing points at the new slots: give them back.
            give_back();
            return Err(e);
        }
        let old = self.sb.checkpoint;
        self.sb.checkpoint = CheckpointRef {
            slot: start,
            slots: n,
            len,
            crc: crc32fast::hash(&bytes[..len as usize]),
        };
        if let Err(e) = self.write_superblock() {
            // The superblock may have reached the disk naming the new slots: they stay in use.
            self.sb.checkpoint = old;
            return Err(e);
        }
        let mut ix = write();
        for s in obsolete {
            ix.alloc.free(s);
        }
        ix.retained = keep.into_iter().collect();
        ix.journal_slots.clear();
        ix.checkpoint_slots = start..start + n;
        Ok(true)
    }
}
