//! Appending to the store: commit groups and checkpoints.
//!
//! The engine hands [`Store::append_group`] a batch of commit requests (blocks to preserve and
//! events to journal) and gets one result per request. Everything about the bytes happens
//! here: slots for the preserved data and for the journal blocks, packing entries into journal
//! blocks, chaining them (epoch, sequence number, the slot of the next block), growing the
//! device, one write per contiguous stretch, one sync, and only then the index. A request that
//! finds no room fails alone; a failure that leaves the disk uncertain is reported so the
//! engine stops taking writes.

use std::sync::{RwLock, RwLockWriteGuard};

use super::{is_no_space, Full, GroupError, JournalPos, Store};
use crate::commit::Request;
use crate::error::{Error, Result};
use crate::format::{CheckpointRef, Entry, JournalBlock, FLAG_GROUP_END};
use crate::index::Index;
use crate::io::AlignedBuf;

/// What [`Store::append_group`] did with a batch.
pub(crate) struct Appended {
    /// One result per request, in batch order.
    pub results: Vec<Result<()>>,
    /// Journal blocks written; 0 when nothing was committed.
    pub journal_blocks: u64,
    /// Requests committed.
    pub committed: usize,
    /// Whether the group preserved blocks with every request finding room: the store is
    /// then known not to be full.
    pub had_room: bool,
    /// Set when what is on the store is no longer known (a failed write or sync of the group,
    /// an entry the index refused): the engine must stop taking writes until reopened.
    pub failed: Option<String>,
}

/// How a whole group failed: what each of its requests gets, and whether the engine must
/// stop (`stop` holds the reason).
struct Failure {
    each: Each,
    stop: Option<String>,
}

/// The error each request of a failed group gets.
enum Each {
    /// No room in the store.
    Full(Full),
    /// The store could not grow, for another reason than room.
    Grow(String),
    /// The group's fate on disk is unknown.
    Failed(String),
}

/// Slots taken from the allocator for one group: given back unless the group commits.
struct Taken {
    /// Per accepted request: its batch position and the data slot of each preserved block.
    data: Vec<(usize, Vec<u64>)>,
    /// The slot each journal block names as its successor.
    next: Vec<u64>,
}

impl Taken {
    fn give_back(&self, ix: &mut Index) {
        for s in self.data.iter().flat_map(|(_, s)| s).chain(&self.next) {
            ix.alloc.free(*s);
        }
    }
}

fn write_index(index: &RwLock<Index>) -> RwLockWriteGuard<'_, Index> {
    index.write().unwrap_or_else(|p| p.into_inner())
}

/// Splits `entries` into journal blocks of at most `cap` encoded bytes, in order.
fn pack(entries: Vec<Entry>, cap: usize) -> Vec<Vec<Entry>> {
    // bincode's length prefix of the entry list.
    const PREFIX: usize = 8;
    // Most groups fit one journal block.
    let mut blocks: Vec<Vec<Entry>> = vec![Vec::with_capacity(entries.len())];
    let mut used = PREFIX;
    for e in entries {
        let l = JournalBlock::entry_len(&e);
        if used + l > cap && !blocks.last().is_none_or(|b| b.is_empty()) {
            blocks.push(Vec::new());
            used = PREFIX;
        }
        used += l;
        if let Some(b) = blocks.last_mut() {
            b.push(e);
        }
    }
    blocks
}

impl Store {
    /// Commits one group: the blocks the requests preserve and the events they journal,
    /// durable when this returns `Ok` for a request. `pos` is where the journal continues and
    /// moves past the group. The caller must be the only committer (the engine's writer lock).
    ///
    /// Order (see FORMAT.md): the preserved data and the journal blocks naming it are written
    /// and synced together; the index changes only after the sync, so nothing reads a slot
    /// whose record is not durable.
    pub(crate) fn append_group(
        &mut self,
        index: &RwLock<Index>,
        pos: &mut JournalPos,
        batch: &[Request],
    ) -> Appended {
        let mut out = Appended {
            results: (0..batch.len()).map(|_| Ok(())).collect(),
            journal_blocks: 0,
            committed: 0,
            had_room: true,
            failed: None,
        };
        let bs = self.sb.block_size as usize;
        // 1. Room for the preserved blocks, per request: one request failing for lack of room
        //    does not fail its neighbours.
        let mut taken = Taken {
            data: Vec::with_capacity(batch.len()),
            next: Vec::new(),
        };
        {
            let mut ix = write_index(index);
            for (t, req) in batch.iter().enumerate() {
                if req.blocks.is_empty() {
                    taken.data.push((t, Vec::new()));
                    continue;
                }
                match ix.alloc.alloc_data(req.blocks.len() as u64) {
                    Some(slots) => taken.data.push((t, slots)),
                    None => {
                        out.had_room = false;
                        out.results[t] = Err(self.full_error(&ix, Full::Limit));
                    }
                }
            }
        }
        if taken.data.is_empty() {
            return out;
        }
        // 2. Journal entries: preserves first, then events, in request order.
        let mut entries = Vec::new();
        let mut data: Vec<(u64, &[u8])> = Vec::new();
        for (t, slots) in &taken.data {
            let req = &batch[*t];
            for (kept, &slot) in req.blocks.iter().zip(slots) {
                let at = kept.at as usize;
                entries.push(Entry::Preserve {
                    snap: req.snap,
                    block: kept.block,
                    slot,
                    crc: kept.crc,
                });
                data.push((slot, &req.data[at * bs..(at + 1) * bs]));
            }
            entries.extend(req.meta.iter().cloned());
        }
        let packed = pack(entries, JournalBlock::capacity(self.sb.block_size));
        // 3. Slots for the journal blocks and room on the device, then the chain.
        let k = packed.len();
        if let Err(f) = self.reserve(index, &mut taken, k, pos.slot) {
            return self.fail_group(index, out, &taken, f);
        }
        let epoch = self.sb.epoch;
        let mut slot = pos.slot;
        let blocks: Vec<(u64, JournalBlock)> = packed
            .into_iter()
            .zip(&taken.next)
            .enumerate()
            .map(|(i, (entries, &next_slot))| {
                let at = std::mem::replace(&mut slot, next_slot);
                let flags = if i + 1 == k { FLAG_GROUP_END } else { 0 };
                let seq = pos.seq + i as u64;
                let jb = JournalBlock {
                    flags,
                    epoch,
                    seq,
                    next_slot,
                    entries,
                };
                (at, jb)
            })
            .collect();
        // 4. One write per contiguous stretch, one sync.
        if let Err(GroupError::Write(e) | GroupError::Sync(e)) = self.write_group(&blocks, &data) {
            // What reached the store is unknown (a failed write may have left the group's
            // journal block in place; a failed sync may have dropped pages). Serving on would
            // let the in-memory index and the disk disagree: reopening replays the journal and
            // makes the disk the authority again.
            let each = if is_no_space(&e) {
                Each::Full(Full::Device)
            } else {
                Each::Failed(e.to_string())
            };
            let stop = Some(e.to_string());
            return self.fail_group(index, out, &taken, Failure { each, stop });
        }
        // 5. Durable: apply to the index, then release the callers.
        {
            let mut ix = write_index(index);
            for e in blocks.iter().flat_map(|(_, jb)| &jb.entries) {
                if let Err(err) = ix.apply(e) {
                    drop(ix);
                    let stop = Some(format!(
                        "applying a committed journal entry failed: {}",
                        err.0
                    ));
                    let each = Each::Failed(err.0);
                    return self.fail_group(index, out, &taken, Failure { each, stop });
                }
            }
            ix.journal_slots.extend(blocks.iter().map(|(s, _)| *s));
        }
        *pos = JournalPos {
            seq: pos.seq + k as u64,
            slot: taken.next[k - 1],
        };
        out.journal_blocks = k as u64;
        out.committed = taken.data.len();
        out.had_room &= taken.data.iter().any(|(_, s)| !s.is_empty());
        out
    }

    /// Takes `k` journal slots and makes sure the device holds every slot the group will
    /// write (growing it, recorded in the superblock, before any of them is used). On failure
    /// every slot `taken` holds is given back.
    fn reserve(
        &mut self,
        index: &RwLock<Index>,
        taken: &mut Taken,
        k: usize,
        journal_slot: u64,
    ) -> std::result::Result<(), Failure> {
        {
            let mut ix = write_index(index);
            match ix.alloc.alloc_meta(k as u64) {
                Some(next) => taken.next = next,
                None => {
                    taken.give_back(&mut ix);
                    let each = Each::Full(Full::Limit);
                    return Err(Failure { each, stop: None });
                }
            }
        }
        let highest = taken
            .data
            .iter()
            .flat_map(|(_, s)| s)
            .chain(&taken.next)
            .copied()
            .fold(journal_slot, u64::max);
        let Err(ge) = self.ensure_slots(highest + 1) else {
            return Ok(());
        };
        taken.give_back(&mut write_index(index));
        // A failed growth changes nothing; a failed superblock sync leaves it uncertain.
        let (stop, e) = match ge {
            GroupError::Write(e) => (None, e),
            GroupError::Sync(e) => (Some(e.to_string()), e),
        };
        let each = if is_no_space(&e) {
            Each::Full(Full::Device)
        } else {
            Each::Grow(e.to_string())
        };
        Err(Failure { each, stop })
    }

    /// Fails every request of the group that had been accepted, as `f` says.
    fn fail_group(
        &self,
        index: &RwLock<Index>,
        mut out: Appended,
        taken: &Taken,
        f: Failure,
    ) -> Appended {
        let ix = index.read().unwrap_or_else(|p| p.into_inner());
        for (t, _) in &taken.data {
            out.results[*t] = Err(match &f.each {
                Each::Full(why) => self.full_error(&ix, *why),
                Each::Grow(reason) => Error::io(
                    format!("grow store {}", self.dev.name()),
                    std::io::Error::other(reason.clone()),
                ),
                Each::Failed(reason) => Error::Failed {
                    store: self.dev.name(),
                    reason: reason.clone(),
                },
            });
        }
        out.had_room &= !matches!(f.each, Each::Full(_));
        out.failed = f.stop;
        out
    }

    /// Writes one commit group: `blocks` (journal blocks in order, each with its slot) and
    /// `data` (preserved blocks, each with its slot), then one sync. Contiguous slots go out in
    /// one write.
    fn write_group(
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
