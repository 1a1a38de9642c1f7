//! The in-memory index: the snapshot chain with one delta per snapshot, and the slot
//! allocator. Pure data, no I/O: the store fills it from a checkpoint plus journal entries,
//! and the engine applies new entries only after they are durable.
//!
//! Snapshot model: snapshots S1..Sn in time order; delta k holds the original content of every
//! block first changed after Sk was taken and before Sk+1 (or now, for the newest). The content
//! of block b in Sk is delta j's copy for the smallest j >= k that holds b, else the origin.

use std::collections::HashMap;

use roaring::{RoaringBitmap, RoaringTreemap};

use crate::format::{CheckpointBody, Entry, SnapshotRecord, SUPER_SLOTS};

/// Where a preserved block lives and the crc32 of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRef {
    /// Store slot.
    pub slot: u64,
    /// crc32 of the slot's bytes, checked on every read.
    pub crc: u32,
}

/// One snapshot's delta.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    /// Blocks held, for set operations (diffs, restore).
    pub blocks: RoaringBitmap,
    /// Every write after a snapshot and every commit looks blocks up here, and opening a
    /// store rebuilds it (a million entries): a hasher of a few instructions per key rather
    /// than std's SipHash, seeded per process like std's, so that a crafted store cannot
    /// know in advance which block numbers collide.
    map: HashMap<u32, SlotRef, rapidhash::fast::RandomState>,
}

impl Delta {
    /// The preserved copy of `block`, if this delta holds one.
    pub fn get(&self, block: u32) -> Option<SlotRef> {
        self.map.get(&block).copied()
    }

    /// Whether this delta holds `block`.
    pub fn contains(&self, block: u32) -> bool {
        self.map.contains_key(&block)
    }

    /// Number of blocks held.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn insert(&mut self, block: u32, r: SlotRef) -> Option<SlotRef> {
        self.blocks.insert(block);
        self.map.insert(block, r)
    }

    /// All (block, slot) pairs, in block order.
    pub fn entries(&self) -> impl Iterator<Item = (u32, SlotRef)> + '_ {
        self.blocks
            .iter()
            .filter_map(|b| self.map.get(&b).map(|r| (b, *r)))
    }
}

/// A snapshot in the chain.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Id, unique for the store's lifetime.
    pub id: u64,
    /// Name, unique among live snapshots.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Hidden from users (ship points).
    pub internal: bool,
    /// Original contents of blocks changed after this snapshot and before the next.
    pub delta: Delta,
}

/// Hands out store slots: lowest free slot first, then the high-water mark.
#[derive(Clone, Debug)]
pub struct Allocator {
    high_water: u64,
    free: RoaringTreemap,
    limit: Option<u64>,
    reserve: u64,
}

impl Allocator {
    /// Slots kept back from preserved data so that deleting a snapshot (which needs a journal
    /// block) still works when the store is otherwise full.
    pub const RESERVE: u64 = 16;

    fn new(high_water: u64, free: impl IntoIterator<Item = u64>) -> Self {
        Allocator {
            high_water,
            free: free.into_iter().collect(),
            limit: None,
            reserve: Self::RESERVE,
        }
    }

    /// Caps the store at `slots` slots (None: unlimited).
    pub fn set_limit(&mut self, slots: Option<u64>) {
        self.limit = slots;
    }

    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.high_water - self.free.len()
    }

    /// One past the highest slot in use or ever used.
    pub fn high_water(&self) -> u64 {
        self.high_water
    }

    /// Slots free now, or None when unlimited.
    pub fn available(&self) -> Option<u64> {
        self.limit
            .map(|l| self.free.len() + l.saturating_sub(self.high_water))
    }

    /// The cap, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// `n` slots for preserved data or checkpoints, leaving the reserve untouched.
    pub fn alloc_data(&mut self, n: u64) -> Option<Vec<u64>> {
        if let Some(avail) = self.available() {
            if avail < n + self.reserve {
                return None;
            }
        }
        Some(self.take(n))
    }

    /// `n` slots for journal blocks; may use the reserve.
    pub fn alloc_meta(&mut self, n: u64) -> Option<Vec<u64>> {
        if let Some(avail) = self.available() {
            if avail < n {
                return None;
            }
        }
        Some(self.take(n))
    }

    /// `n` consecutive slots at the end (for checkpoints), leaving the reserve untouched.
    pub fn alloc_run_at_end(&mut self, n: u64) -> Option<u64> {
        if let Some(l) = self.limit {
            let avail = self.free.len() + l.saturating_sub(self.high_water);
            if self.high_water + n > l || avail < n + self.reserve {
                return None;
            }
        }
        let start = self.high_water;
        self.high_water += n;
        Some(start)
    }

    fn take(&mut self, n: u64) -> Vec<u64> {
        let mut out = Vec::with_capacity(n as usize);
        while (out.len() as u64) < n {
            match self.free.min() {
                Some(s) => {
                    self.free.remove(s);
                    out.push(s);
                }
                None => {
                    out.push(self.high_water);
                    self.high_water += 1;
                }
            }
        }
        out
    }

    /// Records that `slot` is in use (journal replay).
    pub fn mark_used(&mut self, slot: u64) {
        if slot >= self.high_water {
            self.free.insert_range(self.high_water..slot);
            self.high_water = slot + 1;
        } else {
            self.free.remove(slot);
        }
    }

    /// Whether `slot` is currently free.
    pub fn is_free(&self, slot: u64) -> bool {
        slot >= self.high_water || self.free.contains(slot)
    }

    /// Returns `slot` to the pool.
    pub fn free(&mut self, slot: u64) {
        if slot < self.high_water && slot >= SUPER_SLOTS {
            self.free.insert(slot);
        }
    }
}

/// The whole index.
#[derive(Clone, Debug)]
pub struct Index {
    /// Snapshots, oldest first.
    pub snaps: Vec<Snapshot>,
    /// Id of the next snapshot.
    pub next_id: u64,
    /// Slot allocator.
    pub alloc: Allocator,
    /// A restore that started and has not finished: (target id, pre-restore id).
    pub restore: Option<(u64, u64)>,
    /// Journal blocks written since the newest checkpoint (freed by the next one).
    pub journal_slots: Vec<u64>,
    /// Slots of the newest checkpoint (retained by the next one).
    pub checkpoint_slots: std::ops::Range<u64>,
    /// Previous checkpoint and its journal, kept for the other superblock copy (see
    /// [`CheckpointBody::retained`]); freed when the next checkpoint is committed.
    pub retained: std::collections::BTreeSet<u64>,
}

/// A journal entry that contradicts the index (the store is corrupt or mis-replayed).
#[derive(Debug)]
pub struct ApplyError(pub String);

impl Index {
    /// An index for a freshly formatted store.
    pub fn empty() -> Self {
        Index {
            snaps: Vec::new(),
            next_id: 1,
            alloc: Allocator::new(SUPER_SLOTS, []),
            restore: None,
            journal_slots: Vec::new(),
            checkpoint_slots: 0..0,
            retained: Default::default(),
        }
    }

    /// Position of snapshot `id` in the chain.
    pub fn pos(&self, id: u64) -> Option<usize> {
        self.snaps.iter().position(|s| s.id == id)
    }

    /// Position of the snapshot named `name`.
    pub fn pos_by_name(&self, name: &str) -> Option<usize> {
        self.snaps.iter().position(|s| s.name == name)
    }

    /// The snapshot whose delta receives preserves now.
    pub fn newest(&self) -> Option<&Snapshot> {
        self.snaps.last()
    }

    /// Where block `b` of the snapshot at position `pos` lives: a store slot, or None for the
    /// origin.
    pub fn resolve(&self, pos: usize, b: u32) -> Option<SlotRef> {
        self.snaps[pos..].iter().find_map(|s| s.delta.get(b))
    }

    /// Union of the deltas at positions `from..to`.
    pub fn union(&self, from: usize, to: usize) -> RoaringBitmap {
        let mut u = RoaringBitmap::new();
        for s in &self.snaps[from..to] {
            u |= &s.delta.blocks;
        }
        u
    }

    /// Applies one durable journal entry.
    pub fn apply(&mut self, e: &Entry) -> Result<(), ApplyError> {
        match e {
            Entry::Preserve {
                snap,
                block,
                slot,
                crc,
            } => {
                let pos = self
                    .pos(*snap)
                    .ok_or_else(|| ApplyError(format!("preserve for unknown snapshot {snap}")))?;
                if *slot < SUPER_SLOTS {
                    return Err(ApplyError(format!("preserve into reserved slot {slot}")));
                }
                let r = SlotRef {
                    slot: *slot,
                    crc: *crc,
                };
                if let Some(old) = self.snaps[pos].delta.insert(*block, r) {
                    return Err(ApplyError(format!(
                        "block {block} preserved twice in snapshot {snap} (slots {} and {slot})",
                        old.slot
                    )));
                }
                self.alloc.mark_used(*slot);
            }
            Entry::SnapshotCreated {
                id,
                name,
                created_unix,
                internal,
            } => {
                if *id < self.next_id || self.pos_by_name(name).is_some() {
                    return Err(ApplyError(format!(
                        "snapshot {id} ({name:?}) created twice"
                    )));
                }
                // Ids count up from 0 one at a time; the last one cannot come from use.
                let next_id = id
                    .checked_add(1)
                    .ok_or_else(|| ApplyError(format!("snapshot id {id} out of range")))?;
                self.snaps.push(Snapshot {
                    id: *id,
                    name: name.clone(),
                    created_unix: *created_unix,
                    internal: *internal,
                    delta: Delta::default(),
                });
                self.next_id = next_id;
            }
            Entry::SnapshotDeleted { id } => {
                let pos = self
                    .pos(*id)
                    .ok_or_else(|| ApplyError(format!("delete of unknown snapshot {id}")))?;
                let gone = self.snaps.remove(pos);
                // Blocks the previous delta lacks move there (the older snapshot resolved
                // them through the deleted delta); the rest only served the deleted snapshot.
                for (b, r) in gone.delta.map {
                    match pos.checked_sub(1).map(|p| &mut self.snaps[p]) {
                        Some(prev) if !prev.delta.contains(b) => {
                            prev.delta.insert(b, r);
                        }
                        _ => self.alloc.free(r.slot),
                    }
                }
                // An unfinished restore needs both its target and its pre-restore snapshot;
                // without either it is abandoned (re-running takes a new pre-restore snapshot).
                if matches!(self.restore, Some((t, p)) if t == *id || p == *id) {
                    self.restore = None;
                }
            }
            Entry::RestoreStarted { target, pre } => self.restore = Some((*target, *pre)),
            Entry::RestoreFinished => self.restore = None,
        }
        Ok(())
    }

    /// Serializes the index for a checkpoint.
    pub fn to_checkpoint(
        &self,
        next_seq: u64,
        journal_slot: u64,
        free_on_load: Vec<u64>,
        retained: Vec<u64>,
    ) -> CheckpointBody {
        CheckpointBody {
            next_seq,
            journal_slot,
            next_snapshot_id: self.next_id,
            snapshots: self
                .snaps
                .iter()
                .map(|s| SnapshotRecord {
                    id: s.id,
                    name: s.name.clone(),
                    created_unix: s.created_unix,
                    internal: s.internal,
                    delta: s.delta.entries().map(|(b, r)| (b, r.slot, r.crc)).collect(),
                })
                .collect(),
            high_water: self.alloc.high_water,
            free: self.alloc.free.iter().collect(),
            free_on_load,
            retained,
            restore: self.restore,
        }
    }

    /// Rebuilds the index from a checkpoint stored in `slots`, for an origin of `nblocks`
    /// blocks.
    ///
    /// The checkpoint's crc proves its bytes are the ones written, not that they describe a
    /// possible store, so everything the engine later relies on without looking again is
    /// checked here: blocks inside the origin (restore writes them back), snapshot ids in
    /// chain order and names unique (lookups take the first match), and every preserved
    /// slot owned by exactly one delta and by nothing else (the allocator would otherwise
    /// hand a live slot out again, and a new preserve would overwrite another snapshot's
    /// data).
    pub fn from_checkpoint(
        c: &CheckpointBody,
        slots: std::ops::Range<u64>,
        nblocks: u64,
    ) -> Result<Self, ApplyError> {
        // Untrusted lists: every slot they name must lie in the store's used range, or the
        // allocator's arithmetic (used = high water - free) stops meaning anything.
        let inside = |s: u64| (SUPER_SLOTS..c.high_water).contains(&s);
        if let Some(s) = c
            .free
            .iter()
            .chain(&c.free_on_load)
            .chain(&c.retained)
            .find(|s| !inside(**s))
        {
            return Err(ApplyError(format!(
                "checkpoint lists slot {s} outside the used range {SUPER_SLOTS}..{}",
                c.high_water
            )));
        }
        if c.free.len() as u64 > c.high_water {
            return Err(ApplyError(
                "checkpoint lists more free slots than exist".into(),
            ));
        }
        let mut alloc = Allocator::new(c.high_water, c.free.iter().copied());
        for &s in &c.free_on_load {
            alloc.free(s);
        }
        let mut snaps = Vec::with_capacity(c.snapshots.len());
        let mut names = std::collections::HashSet::with_capacity(c.snapshots.len());
        let mut owned = RoaringTreemap::new();
        let mut prev_id = None;
        for r in &c.snapshots {
            if prev_id.is_some_and(|p| r.id <= p) || r.id >= c.next_snapshot_id {
                return Err(ApplyError(format!(
                    "snapshot id {} is out of order (ids must rise along the chain and stay below {})",
                    r.id, c.next_snapshot_id
                )));
            }
            prev_id = Some(r.id);
            if !names.insert(r.name.as_str()) {
                return Err(ApplyError(format!("two snapshots are named {:?}", r.name)));
            }
            let mut d = Delta::default();
            d.map.reserve(r.delta.len());
            for &(b, slot, crc) in &r.delta {
                if slot >= c.high_water || slot < SUPER_SLOTS || slots.contains(&slot) {
                    return Err(ApplyError(format!(
                        "snapshot {} maps block {b} to slot {slot} outside the store's data",
                        r.id
                    )));
                }
                if u64::from(b) >= nblocks {
                    return Err(ApplyError(format!(
                        "snapshot {} preserves block {b}, past the origin's {nblocks} blocks",
                        r.id
                    )));
                }
                if !owned.insert(slot) {
                    return Err(ApplyError(format!(
                        "slot {slot} holds two preserved blocks (snapshot {} block {b} and another)",
                        r.id
                    )));
                }
                d.map.insert(b, SlotRef { slot, crc });
            }
            d.blocks = RoaringBitmap::from_sorted_iter(r.delta.iter().map(|x| x.0))
                .map_err(|_| ApplyError(format!("snapshot {} delta is not sorted", r.id)))?;
            if d.blocks.len() != r.delta.len() as u64 {
                return Err(ApplyError(format!(
                    "snapshot {} delta repeats a block",
                    r.id
                )));
            }
            snaps.push(Snapshot {
                id: r.id,
                name: r.name.clone(),
                created_unix: r.created_unix,
                internal: r.internal,
                delta: d,
            });
        }
        if let Some(s) = c
            .free
            .iter()
            .chain(&c.free_on_load)
            .chain(&c.retained)
            .find(|s| owned.contains(**s))
        {
            return Err(ApplyError(format!(
                "slot {s} is listed as free or as metadata but holds a preserved block"
            )));
        }
        Ok(Index {
            snaps,
            next_id: c.next_snapshot_id,
            alloc,
            restore: c.restore,
            journal_slots: Vec::new(),
            checkpoint_slots: slots,
            retained: c.retained.iter().copied().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(id: u64) -> Entry {
        Entry::SnapshotCreated {
            id,
            name: format!("s{id}"),
            created_unix: 0,
            internal: false,
        }
    }
    fn pres(snap: u64, block: u32, slot: u64) -> Entry {
        Entry::Preserve {
            snap,
            block,
            slot,
            crc: slot as u32,
        }
    }

    #[test]
    fn deleting_a_snapshot_moves_blocks_the_older_delta_lacks_and_frees_the_rest() {
        let mut ix = Index::empty();
        for e in [
            created(1),
            pres(1, 5, 10),
            created(2),
            pres(2, 5, 11),
            pres(2, 6, 12),
        ] {
            ix.apply(&e).unwrap();
        }
        ix.apply(&Entry::SnapshotDeleted { id: 2 }).unwrap();
        assert_eq!(ix.snaps.len(), 1);
        assert_eq!(ix.snaps[0].delta.get(5).unwrap().slot, 10);
        assert_eq!(ix.snaps[0].delta.get(6).unwrap().slot, 12);
        assert!(ix.alloc.is_free(11));
        assert!(!ix.alloc.is_free(12));
    }

    #[test]
    fn deleting_the_oldest_snapshot_frees_its_delta() {
        let mut ix = Index::empty();
        for e in [created(1), pres(1, 5, 10), created(2), pres(2, 6, 11)] {
            ix.apply(&e).unwrap();
        }
        ix.apply(&Entry::SnapshotDeleted { id: 1 }).unwrap();
        assert!(ix.alloc.is_free(10));
        assert_eq!(ix.resolve(0, 6).unwrap().slot, 11);
        assert_eq!(ix.resolve(0, 5), None);
    }

    #[test]
    fn resolve_uses_the_oldest_delta_at_or_after_the_snapshot() {
        let mut ix = Index::empty();
        for e in [
            created(1),
            created(2),
            pres(2, 3, 20),
            created(3),
            pres(3, 3, 30),
        ] {
            ix.apply(&e).unwrap();
        }
        assert_eq!(ix.resolve(0, 3).unwrap().slot, 20);
        assert_eq!(ix.resolve(1, 3).unwrap().slot, 20);
        assert_eq!(ix.resolve(2, 3).unwrap().slot, 30);
    }

    #[test]
    fn freed_slots_are_reused_lowest_first_and_the_reserve_is_kept_for_metadata() {
        let mut ix = Index::empty();
        ix.alloc.set_limit(Some(40));
        let a = ix.alloc.alloc_data(20).unwrap();
        assert_eq!(a[0], SUPER_SLOTS);
        // 40 - 2 superblocks - 20 = 18 left; the reserve keeps 16 back from data.
        assert!(ix.alloc.alloc_data(3).is_none());
        assert_eq!(ix.alloc.alloc_data(2).unwrap(), vec![22, 23]);
        assert!(ix.alloc.alloc_meta(16).is_some());
        assert!(ix.alloc.alloc_meta(1).is_none());
        ix.alloc.free(7);
        ix.alloc.free(5);
        assert_eq!(ix.alloc.alloc_meta(2).unwrap(), vec![5, 7]);
    }

    #[test]
    fn a_preserve_twice_in_one_delta_is_refused() {
        let mut ix = Index::empty();
        ix.apply(&created(1)).unwrap();
        ix.apply(&pres(1, 5, 10)).unwrap();
        assert!(ix.apply(&pres(1, 5, 11)).is_err());
    }

    #[test]
    fn checkpoint_round_trip_keeps_everything() {
        let mut ix = Index::empty();
        for e in [
            created(1),
            pres(1, 9, 10),
            pres(1, 2, 14),
            created(2),
            pres(2, 9, 12),
        ] {
            ix.apply(&e).unwrap();
        }
        ix.alloc.free(11);
        let c = ix.to_checkpoint(4, 15, vec![13], vec![]);
        let back = Index::from_checkpoint(&c, 16..17, 100).unwrap();
        assert_eq!(back.snaps.len(), 2);
        assert_eq!(back.resolve(0, 9).unwrap().slot, 10);
        assert_eq!(back.resolve(0, 2).unwrap().slot, 14);
        assert_eq!(back.resolve(1, 9).unwrap().slot, 12);
        assert!(back.alloc.is_free(11));
        assert!(back.alloc.is_free(13));
        assert_eq!(back.next_id, 3);
    }

    fn two_snapshot_checkpoint() -> CheckpointBody {
        let mut ix = Index::empty();
        for e in [created(1), pres(1, 9, 10), created(2), pres(2, 9, 12)] {
            ix.apply(&e).unwrap();
        }
        ix.to_checkpoint(4, 13, vec![], vec![])
    }

    fn refusal(c: &CheckpointBody) -> String {
        match Index::from_checkpoint(c, 14..15, 100) {
            Ok(_) => panic!("an impossible checkpoint was accepted"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn a_checkpoint_giving_one_slot_to_two_deltas_is_refused() {
        let mut c = two_snapshot_checkpoint();
        c.snapshots[1].delta[0].1 = 10;
        assert!(refusal(&c).contains("slot 10 holds two preserved blocks"));
    }

    #[test]
    fn a_checkpoint_listing_a_live_slot_as_free_is_refused() {
        let mut c = two_snapshot_checkpoint();
        c.free.push(12);
        assert!(refusal(&c).contains("slot 12 is listed as free"));
        let mut c = two_snapshot_checkpoint();
        c.retained.push(10);
        assert!(refusal(&c).contains("slot 10 is listed as free or as metadata"));
        let mut c = two_snapshot_checkpoint();
        c.snapshots[0].delta[0].1 = 14;
        assert!(refusal(&c).contains("outside the store's data"));
    }

    #[test]
    fn a_checkpoint_preserving_a_block_past_the_origin_is_refused() {
        let c = two_snapshot_checkpoint();
        let e = Index::from_checkpoint(&c, 14..15, 9).err().unwrap().0;
        assert!(e.contains("block 9, past the origin's 9 blocks"), "{e}");
        assert!(Index::from_checkpoint(&c, 14..15, 10).is_ok());
    }

    #[test]
    fn a_checkpoint_with_snapshot_ids_out_of_order_or_names_twice_is_refused() {
        let mut c = two_snapshot_checkpoint();
        c.snapshots[1].id = 1;
        assert!(refusal(&c).contains("snapshot id 1 is out of order"));
        let mut c = two_snapshot_checkpoint();
        c.next_snapshot_id = 2;
        assert!(refusal(&c).contains("snapshot id 2 is out of order"));
        let mut c = two_snapshot_checkpoint();
        c.snapshots[1].name = c.snapshots[0].name.clone();
        assert!(refusal(&c).contains("two snapshots are named"));
    }
}
