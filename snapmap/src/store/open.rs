//! Opening a store: choosing the superblock copy, loading its checkpoint and replaying the
//! journal written since, with the damage each step may meet and what it does about it.

use std::sync::Arc;

use super::{JournalPos, Recovery, Store, CHECKPOINT_SNAPSHOT_ROOM, GROW_STEP};
use crate::error::{Error, Result};
use crate::format::{
    CheckpointBody, Entry, JournalBlock, SuperError, Superblock, FLAG_GROUP_END, FORMAT_VERSION,
    SUPER_SLOTS,
};
use crate::index::Index;
use crate::io::{AlignedBuf, BlockDev};

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

/// The uuid bytes of a superblock image, valid or not (a damaged copy still names its store
/// unless the damage hit them).
const UUID_AT: std::ops::Range<usize> = 16..32;

/// Reads one 4 KiB superblock candidate at byte `off`: its bytes and what they decode to.
fn candidate(
    dev: &dyn BlockDev,
    off: u64,
) -> Result<(AlignedBuf, std::result::Result<Superblock, SuperError>)> {
    let mut b = AlignedBuf::zeroed(4096);
    dev.read_at(&mut b, off)
        .map_err(|e| Error::io(format!("read superblock of store {}", dev.name()), e))?;
    let sb = Superblock::decode(&b);
    Ok((b, sb))
}

/// A superblock candidate that failed to decode: its byte offset and why.
type Refused = (u64, SuperError);

/// A valid superblock copy: its number (0 = A, 1 = B) and contents.
type FoundCopy = (u64, Superblock);

/// The valid superblock copies of `dev` (each with its copy number, 0 for A and 1 for B) and
/// the candidates that failed (by byte offset).
///
/// Copy A is at byte 0 and copy B at the start of slot 1, whose offset is the block size.
/// With A valid, B is read only at A's block size and must carry A's uuid: no other offset is
/// ever looked at, because beyond slot 1 the store holds preserved guest data, and a guest
/// must not be able to influence how its host opens the store. Copies that disagree are
/// refused. Only when A is unusable are the legal block sizes probed, smallest first, and the
/// first candidate carrying the superblock magic ends the search: for a true block size `b`,
/// every offset below `b` lies in slot 0 (copy A and its zero padding) and `b` itself is slot
/// 1, so that candidate is ours; what a guest wrote lies at `2b` or beyond and is reached
/// only when copy B is gone too. When the damaged A still has its magic, the copy found must
/// also carry A's uuid, which a guest never sees.
fn read_superblocks(dev: &dyn BlockDev) -> Result<(Vec<FoundCopy>, Vec<Refused>)> {
    let name = dev.name();
    let mut errors = Vec::new();
    let a = match candidate(dev, 0)? {
        (_, Ok(a)) => a,
        (raw_a, Err(e)) => {
            let a_uuid = (e != SuperError::Magic).then(|| raw_a[UUID_AT].to_vec());
            errors.push((0, e));
            for shift in 12..=16 {
                let off = 1u64 << shift;
                match candidate(dev, off)? {
                    (_, Err(SuperError::Magic)) => errors.push((off, SuperError::Magic)),
                    // Byte 4096 is slot 1 or slot 0's padding for every block size: never
                    // guest data, so a bit flip in A's uuid does not cost the store.
                    (_, Ok(b))
                        if b.block_size as u64 == off
                            && (off == 4096 || a_uuid.as_ref().is_none_or(|u| u[..] == b.uuid)) =>
                    {
                        return Ok((vec![(1, b)], errors));
                    }
                    (_, Ok(_)) => break,
                    (_, Err(e)) => {
                        errors.push((off, e));
                        break;
                    }
                }
            }
            return Ok((Vec::new(), errors));
        }
    };
    let off = a.block_size as u64;
    let b = match candidate(dev, off)?.1 {
        Ok(b) => b,
        Err(e) => {
            errors.push((off, e));
            return Ok((vec![(0, a)], errors));
        }
    };
    if b.uuid != a.uuid || b.block_size != a.block_size {
        return Err(Error::Corrupt {
            store: name,
            detail: format!(
                "its two superblock copies disagree (copy A at byte 0: uuid {}, {}-byte blocks; copy B at byte {off}: uuid {}, {}-byte blocks), so which store this is cannot be told; nothing was changed",
                uuid::Uuid::from_bytes(a.uuid),
                a.block_size,
                uuid::Uuid::from_bytes(b.uuid),
                b.block_size
            ),
        });
    }
    Ok((vec![(0, a), (1, b)], errors))
}

impl Store {
    /// Opens a store: picks the newest valid superblock, loads its checkpoint, replays the
    /// journal, and (unless read-only) starts a new epoch. `verify` sees the superblock before
    /// anything is written, so a store refused for the wrong origin is left untouched.
    pub fn open(
        dev: Arc<dyn BlockDev>,
        read_only: bool,
        verify: impl Fn(&Superblock) -> Result<()>,
    ) -> Result<(Store, Index, JournalPos, Recovery)> {
        let name = dev.name();
        let (mut copies, errors) = read_superblocks(&*dev)?;
        copies.sort_by_key(|(_, c)| std::cmp::Reverse(c.generation));
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
        verify(&copies[0].1)?;
        // The store only ever grows, and each growth is recorded before it is used: a store
        // shorter than its newest superblock says has lost its tail (synced records with it).
        let len = dev
            .len()
            .map_err(|e| Error::io(format!("size of store {name}"), e))?;
        let want = copies[0]
            .1
            .reserved_slots
            .saturating_mul(copies[0].1.block_size as u64);
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
        for (i, (at, sb)) in copies.iter().enumerate() {
            // Every copy answers for the origin, not only the newest.
            verify(sb)?;
            // The older copy is worth keeping only while the newest one is the copy used.
            let other = (i == 0 && copies.len() == 2).then(|| copies[1].1.checkpoint);
            let store = Store {
                dev: dev.clone(),
                sb: sb.clone(),
                at: *at,
                at_names: sb.checkpoint,
                other,
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
}
