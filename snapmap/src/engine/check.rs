//! Status, counters, the consistency check and a clean close.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::Result;
use crate::format::SUPER_SLOTS;
use crate::index::SlotRef;
use crate::io::AlignedBuf;
use crate::store::Recovery;

use super::{read_lock, Engine, RestoreState, SnapshotInfo, MAX_RUN};

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
impl Engine {
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
                // Sized to the longest run seen so far, not to MAX_RUN: at 64 KiB blocks a
                // full-size buffer is 16 MiB to zero for a store holding a few blocks.
                buf = AlignedBuf::zeroed((j - k) * bs);
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
        if self.read_only {
            return Ok(());
        }
        // Even a failed engine syncs the origin: writes it acknowledged before the failure
        // (ones that preserved nothing went straight to the origin) may sit only in its cache.
        self.flush()?;
        if self.has_failed.load(Ordering::Acquire) {
            // The store is not touched again: its journal is the authority on reopen.
            return Ok(());
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_locked(&mut w)?;
        Ok(())
    }
}
