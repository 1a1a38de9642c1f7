//! Letting a frontend do the engine's plain I/O itself (e.g. with io_uring), for the cases where
//! the engine would do nothing but one origin read or write.
//!
//! - Reads of the live image are plain origin reads: a caller may issue them on
//!   [`Engine::origin_fd`] and tell the engine nothing. Reads do not feed the checksum table
//!   (see [`Engine::origin_fd`]).
//! - A write that needs no preserve (no snapshot, or every block already in the newest delta)
//!   and whose data is known to differ from what the blocks hold is one origin write.
//!   [`Engine::try_direct_write`] admits such a write without ever blocking and returns a
//!   [`DirectWrite`] that holds the write's block locks and the snapshot gate (so no snapshot can
//!   be taken and no other write to these blocks can run until it is finished); the caller writes
//!   the bytes to the origin and then calls [`DirectWrite::finish`]. Everything else (a
//!   preserve, a possible identical rewrite, a partial block, a busy lock) returns `None` and
//!   goes through [`Engine::write`] as before, so the ordering rule, per-block ordering and
//!   compare-skip hold unchanged.
//! - A whole-block write that does need preserves can be driven by the caller too, in steps, so
//!   that its origin I/O goes wherever the caller's other I/O goes and many preserves share
//!   one commit call: [`Engine::try_cow_write`] admits it (locks held, never blocks), the caller
//!   reads the originals named by [`CowWrite::reads`](crate::CowWrite::reads) into [`CowWrite::old_mut`](crate::CowWrite::old_mut),
//!   [`CowWrite::prepare`](crate::CowWrite::prepare) compares them with the new data and hands back a [`Preserve`](crate::Preserve) (the
//!   originals that really change), [`Engine::commit_preserves`] makes a batch of those durable
//!   in group commits, and only after [`CowWrite::committed`](crate::CowWrite::committed) accepted a successful result does
//!   [`CowWrite::writes`](crate::CowWrite::writes) name the origin writes to issue. That order is the ordering rule
//!   (stated in `write.rs`): no new data can reach the origin before its block's original and
//!   mapping are durable.

use super::{Engine, MAX_RUN};
use crate::error::Result;
use crate::locks::RangeGuard;
use std::os::fd::RawFd;
use std::sync::RwLockReadGuard;

/// An admitted origin write (see the module docs). Dropping it without [`DirectWrite::finish`]
/// counts as a failed write.
pub struct DirectWrite<'a> {
    held: Held<'a>,
    len: u64,
}

impl DirectWrite<'_> {
    /// Records the outcome of the caller's origin write: on success the blocks' checksums are
    /// remembered and the write is counted; on failure their checksums are forgotten (the
    /// origin may hold either version). Releases the locks.
    pub fn finish(mut self, ok: bool) {
        self.held.settle(|_| true, ok, self.len);
    }

    /// The caller's origin write did not complete in full (a short write, an error): the engine
    /// writes `data` (the bytes that were admitted) itself, on the calling thread, while the
    /// snapshot gate and block locks are still held, then settles. Finishing with `false` and
    /// retrying through [`Engine::write`] would open a window between the two in which a
    /// snapshot could be taken and preserve the half-written block as its original, breaking
    /// "every write falls wholly before or wholly after a snapshot".
    pub fn redo(mut self, data: &[u8]) -> Result<()> {
        let e = self.held.engine;
        let r = e.origin.write_at(data, self.held.b0 * e.bs as u64);
        self.held.settle(|_| true, r.is_ok(), self.len);
        r.map_err(|err| e.origin_err("write", err))
    }
}

/// What a caller-driven write holds from admission until it is settled: the snapshot gate, its
/// block locks, and its new data's checksums. Dropped unsettled (the caller gave up midway), it
/// forgets every block's checksum, since the origin may hold either version: forgetting is
/// always safe, it only costs a later compare.
pub(super) struct Held<'a> {
    pub(super) engine: &'a Engine,
    // Field order is drop order: the block locks go before the snapshot gate.
    _locks: RangeGuard<'a>,
    _gate: RwLockReadGuard<'a, ()>,
    pub(super) b0: u64,
    /// [`crate::csum::fingerprint`] of each block's new data.
    fps: Fingerprints,
    settled: bool,
}

impl Held<'_> {
    /// [`Engine::settle`], once; the locks go when `self` does.
    pub(super) fn settle(&mut self, written: impl Fn(usize) -> bool, ok: bool, len: u64) {
        if !self.settled {
            self.settled = true;
            self.engine.settle(self.b0, &self.fps, written, ok, len);
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.settle(|_| true, false, 0);
    }
}

/// The fingerprints of a write's blocks; one block (the common 4 KiB write) needs no
/// allocation.
enum Fingerprints {
    One(u32),
    Many(Vec<u32>),
}

impl Fingerprints {
    fn of(data: &[u8], bs: usize) -> Self {
        if data.len() == bs {
            Fingerprints::One(crate::csum::fingerprint(data))
        } else {
            Fingerprints::Many(data.chunks(bs).map(crate::csum::fingerprint).collect())
        }
    }
}

impl std::ops::Deref for Fingerprints {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match self {
            Fingerprints::One(f) => std::slice::from_ref(f),
            Fingerprints::Many(v) => v,
        }
    }
}

/// A set of a write step's blocks (by index within the step), as bits: a first write is
/// admitted on every request's path, and two lists of flags were two heap allocations each.
#[derive(Clone, Copy, Default)]
pub(super) struct BlockSet([u64; BlockSet::WORDS]);

impl BlockSet {
    const WORDS: usize = (MAX_RUN as usize).div_ceil(64);

    /// Blocks `0..n` (n ≤ `MAX_RUN`).
    pub(super) fn first(n: usize) -> BlockSet {
        let mut s = BlockSet::default();
        for (k, w) in s.0.iter_mut().enumerate() {
            let bits = n.saturating_sub(k * 64).min(64);
            *w = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
        }
        s
    }

    pub(super) fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub(super) fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    pub(super) fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub(super) fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}

/// A write [`Engine::admit`] let through.
pub(super) struct Admission<'a> {
    pub(super) held: Held<'a>,
    pub(super) n: usize,
    /// The newest snapshot (0 when there is none).
    pub(super) snap: u64,
    /// Blocks the newest snapshot still needs (empty for a plain write).
    pub(super) need: BlockSet,
}

impl Engine {
    /// The origin's file descriptor, when the origin is a plain file or block device opened by
    /// the engine (`None` for other [`crate::BlockDev`]s). It is opened with O_DIRECT when the
    /// engine was (`OpenOptions::direct_io`), and stays valid as long as the engine lives.
    /// Only reads of the live image, and writes admitted by [`Engine::try_direct_write`] or
    /// [`Engine::try_cow_write`], may go through it.
    ///
    /// Reads need no bookkeeping: the checksum table that lets a write skip identical data is
    /// fed by writes only. Summing every block read would put a checksum on every read's path
    /// (a cost per byte read, however fast the hash), and a scan of a large disk would push the
    /// entries of recently written blocks (the ones a rewrite is likely to hit) out of the
    /// bounded table. A block the table does not know is simply written, as the design allows.
    pub fn origin_fd(&self) -> Option<RawFd> {
        self.origin.raw_fd()
    }

    /// The origin's sector size ([`crate::io::BlockDev::sector_size`]): the smallest request a frontend
    /// should let through, and the logical block size to advertise, since I/O on
    /// [`Engine::origin_fd`] below it fails (a 4Kn disk under O_DIRECT refuses 512-byte I/O).
    pub fn sector_size(&self) -> u32 {
        self.origin.sector_size()
    }

    /// Admits `buf` at `off` as a write the caller performs itself on [`Engine::origin_fd`],
    /// when the engine would do exactly that and nothing else: whole blocks, at most one write
    /// step, no FUA handling (the caller flushes), nothing to preserve, every block's
    /// remembered checksum different from the new data (or unknown), and every lock free right
    /// now. Never blocks; `None` means "use [`Engine::write`]".
    pub fn try_direct_write(&self, off: u64, buf: &[u8]) -> Option<DirectWrite<'_>> {
        let a = self.admit(off, buf, false)?;
        Some(DirectWrite {
            held: a.held,
            len: buf.len() as u64,
        })
    }

    /// What both caller-driven paths check before taking a write: whole blocks, at most one
    /// write step, the engine accepting writes, the gate and every block lock free right now
    /// (taken here), and whether the newest snapshot still needs any of the blocks — which must
    /// be `cow`. A block that needs no preserve and whose remembered checksum equals the new
    /// data's may already hold these bytes: the engine compares it, so such writes are refused.
    pub(super) fn admit(&self, off: u64, buf: &[u8], cow: bool) -> Option<Admission<'_>> {
        let bs = self.bs as u64;
        let len = buf.len() as u64;
        if len == 0
            || !off.is_multiple_of(bs)
            || !len.is_multiple_of(bs)
            || len / bs > MAX_RUN
            || self.check_range(off, len).is_err()
            || self.check_writable().is_err()
        {
            return None;
        }
        let b0 = off / bs;
        let n = (len / bs) as usize;
        let gate = self.gate.try_read().ok()?;
        let locks = self.locks.try_lock(b0, n as u64)?;
        let (snap, need) = {
            let ix = match self.index.try_read() {
                Ok(ix) => ix,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return None,
            };
            let blocks = b0..b0 + n as u64;
            match ix.newest() {
                None if !cow => (0, BlockSet::default()),
                None => return None,
                Some(s) if !cow => {
                    if blocks.clone().any(|b| !s.delta.contains(b as u32)) {
                        return None;
                    }
                    (s.id, BlockSet::default())
                }
                Some(s) => {
                    let mut need = BlockSet::default();
                    for (i, b) in blocks.enumerate() {
                        if !s.delta.contains(b as u32) {
                            need.insert(i);
                        }
                    }
                    if need.is_empty() {
                        return None;
                    }
                    (s.id, need)
                }
            }
        };
        let fps = Fingerprints::of(buf, bs as usize);
        // Empty `need` (a plain write): no block is preserved, so every one is compare-checked.
        if fps
            .iter()
            .enumerate()
            .any(|(i, c)| !need.contains(i) && self.csum.get((b0 + i as u64) as u32) == Some(*c))
        {
            return None;
        }
        // Re-check after taking the gate: a failure recorded meanwhile stops writes.
        if self.check_writable().is_err() {
            return None;
        }
        Some(Admission {
            held: Held {
                engine: self,
                _locks: locks,
                _gate: gate,
                b0,
                fps,
                settled: false,
            },
            n,
            snap,
            need,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::io::BlockDev;
    use crate::testing::MemDev;
    use crate::{Engine, OpenOptions};
    use std::sync::Arc;

    const BS: usize = 4096;

    #[test]
    fn a_block_set_holds_exactly_its_blocks_across_word_edges() {
        use super::{BlockSet, MAX_RUN};
        let max = MAX_RUN as usize;
        for n in [0, 1, 63, 64, 65, 128, 200, max] {
            let s = BlockSet::first(n);
            assert_eq!(s.len(), n, "first({n})");
            assert_eq!(s.is_empty(), n == 0);
            assert!((0..max).all(|i| s.contains(i) == (i < n)), "first({n})");
        }
        let mut s = BlockSet::first(max);
        s.remove(0);
        s.remove(64);
        s.remove(max - 1);
        assert_eq!(s.len(), max - 3);
        assert!(!s.contains(64) && s.contains(63) && s.contains(65));
        // Past the end is never a member.
        assert!(!s.contains(max));
    }

    fn engine() -> (Engine, Arc<MemDev>) {
        let origin = Arc::new(MemDev::new("origin", 64 * BS as u64, false));
        let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
        let e = Engine::format(origin.clone(), store, &OpenOptions::default()).unwrap();
        (e, origin)
    }

    #[test]
    fn admits_only_plain_whole_block_writes_and_keeps_compare_skip() {
        let (e, origin) = engine();
        assert!(e.origin_fd().is_none(), "a MemDev has no file descriptor");
        let a = vec![7u8; BS];
        // Partial or misaligned: the engine's read-modify-write is needed.
        assert!(e.try_direct_write(512, &a).is_none());
        assert!(e.try_direct_write(0, &a[..512]).is_none());
        // Past the end.
        assert!(e.try_direct_write(64 * BS as u64, &a).is_none());
        // A plain write: admitted; the caller writes the origin itself.
        let w = e.try_direct_write(BS as u64, &a).unwrap();
        // Its block stays locked until finished.
        assert!(e.try_direct_write(BS as u64, &[9u8; BS]).is_none());
        origin.write_at(&a, BS as u64).unwrap();
        w.finish(true);
        let s = e.stats();
        assert_eq!((s.writes, s.blocks_written), (1, 1));
        // The same bytes again: maybe identical, so not admitted; the engine skips it.
        assert!(e.try_direct_write(BS as u64, &a).is_none());
        e.write(BS as u64, &a).unwrap();
        assert_eq!(e.stats().blocks_skipped_identical, 1);
    }

    #[test]
    fn reads_leave_the_checksum_table_to_writes() {
        // A 16-entry table: block 16 maps to block 0's entry.
        let origin = Arc::new(MemDev::new("origin", 64 * BS as u64, false));
        let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
        let opts = OpenOptions {
            csum_entries: 16,
            ..OpenOptions::default()
        };
        let e = Engine::format(origin, store, &opts).unwrap();
        let a = vec![1u8; BS];
        e.write(0, &a).unwrap();
        // Reading block 16 (and everything else) must not evict block 0's checksum...
        let mut all = vec![0u8; 64 * BS];
        e.read(0, &mut all).unwrap();
        // ...so rewriting block 0 with the same bytes still counts as possibly identical.
        assert!(e.try_direct_write(0, &a).is_none());
        e.write(0, &a).unwrap();
        assert_eq!(e.stats().blocks_skipped_identical, 1);
        // A block only read is unknown: a write of the bytes it holds is simply written.
        let w = e.try_direct_write(16 * BS as u64, &all[16 * BS..17 * BS]);
        assert!(w.is_some(), "an unknown block is admitted");
    }

    #[test]
    fn a_block_the_newest_snapshot_still_needs_goes_through_the_engine() {
        let (e, origin) = engine();
        e.write(0, &vec![1u8; 2 * BS]).unwrap();
        e.create_snapshot("s").unwrap();
        let b = vec![2u8; BS];
        assert!(
            e.try_direct_write(0, &b).is_none(),
            "block 0 must be preserved first"
        );
        e.write(0, &b).unwrap();
        assert_eq!(e.stats().preserves, 1);
        // Preserved now: a different write may go straight to the origin.
        let c = vec![3u8; BS];
        let w = e.try_direct_write(0, &c).unwrap();
        origin.write_at(&c, 0).unwrap();
        w.finish(true);
        let mut snap = vec![0u8; BS];
        e.read_snapshot("s", 0, &mut snap).unwrap();
        assert!(
            snap.iter().all(|&x| x == 1),
            "the snapshot keeps the original"
        );
        // Block 1 was never preserved: still refused, even after block 0 went direct.
        assert!(e.try_direct_write(BS as u64, &c).is_none());
    }

    #[test]
    fn a_failed_or_dropped_write_forgets_the_checksums() {
        let (e, _origin) = engine();
        let a = vec![4u8; BS];
        e.write(0, &a).unwrap();
        // Known checksum equal to the data: refused (compare needed).
        assert!(e.try_direct_write(0, &a).is_none());
        let b = vec![5u8; BS];
        let w = e.try_direct_write(0, &b).unwrap();
        drop(w);
        // The origin may hold either version now; nothing is assumed, so even the old bytes
        // are admitted (no checksum to compare against) and nothing is counted.
        assert!(e.try_direct_write(0, &a).is_some());
        assert_eq!(e.stats().writes, 1);
    }

    /// Drives a copy-on-write the way the ublk queue does; returns the write's spans.
    fn cow(e: &Engine, origin: &MemDev, off: u64, data: &[u8]) -> Vec<crate::Span> {
        let mut c = e.try_cow_write(off, data).unwrap();
        for s in c.reads() {
            origin
                .read_at(&mut c.old_mut()[s.at..s.at + s.len], s.off)
                .unwrap();
        }
        if let Some(p) = c.prepare(data) {
            assert!(
                c.writes().is_empty(),
                "no write may be named before the commit"
            );
            let r = e.commit_preserves(vec![p]);
            assert_eq!(r.len(), 1);
            c.committed(r[0].is_ok());
        }
        let spans = c.writes();
        for s in &spans {
            origin.write_at(&data[s.at..s.at + s.len], s.off).unwrap();
        }
        c.finish(true);
        spans
    }

    #[test]
    fn a_cow_write_preserves_only_what_the_snapshot_needs_before_writing() {
        let (e, origin) = engine();
        e.write(0, &vec![1u8; 4 * BS]).unwrap();
        // No snapshot: nothing to preserve, so not a copy-on-write.
        assert!(e.try_cow_write(0, &[2u8; BS]).is_none());
        e.create_snapshot("s").unwrap();
        e.write(BS as u64, &vec![2u8; 2 * BS]).unwrap(); // blocks 1-2 preserved already
        let data: Vec<u8> = (0..4 * BS).map(|i| (i / BS) as u8 + 10).collect();
        {
            let c = e.try_cow_write(0, &data).unwrap();
            // Only blocks 0 and 3 are read; the locks exclude any other writer meanwhile.
            let reads: Vec<(u64, usize)> = c.reads().iter().map(|s| (s.off, s.len)).collect();
            assert_eq!(reads, vec![(0, BS), (3 * BS as u64, BS)]);
            assert!(e.try_direct_write(0, &data[..BS]).is_none());
            assert!(
                c.writes().is_empty(),
                "nothing may be written before the preserve"
            );
            // Dropped unfinished: nothing happened.
        }
        assert_eq!(e.stats().preserves, 2);
        let spans = cow(&e, &origin, 0, &data);
        assert_eq!(spans.len(), 1, "one origin write for the whole run");
        assert_eq!((spans[0].off, spans[0].len), (0, 4 * BS));
        assert_eq!(e.stats().preserves, 4);
        let mut img = vec![0u8; 4 * BS];
        e.read_snapshot("s", 0, &mut img).unwrap();
        assert!(
            img.iter().all(|&b| b == 1),
            "the snapshot keeps the originals"
        );
        e.read(0, &mut img).unwrap();
        assert_eq!(img, data);
        assert!(e.check().unwrap().ok());
    }

    #[test]
    fn a_cow_write_of_the_bytes_already_there_preserves_and_writes_nothing() {
        let (e, origin) = engine();
        e.write(0, &vec![5u8; 2 * BS]).unwrap();
        e.create_snapshot("s").unwrap();
        let before = e.stats();
        let mut same = vec![5u8; 2 * BS];
        same[BS..].fill(6); // block 1 changes, block 0 does not
        let spans = cow(&e, &origin, 0, &same);
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].off, spans[0].len), (BS as u64, BS));
        let s = e.stats();
        assert_eq!(s.preserves - before.preserves, 1);
        assert_eq!(
            s.blocks_skipped_identical - before.blocks_skipped_identical,
            1
        );
        assert_eq!(s.blocks_written - before.blocks_written, 1);
    }

    #[test]
    fn a_failed_commit_names_no_write() {
        let origin = Arc::new(MemDev::new("origin", 64 * BS as u64, false));
        let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
        let opts = OpenOptions {
            max_store_bytes: Some(128 << 10),
            store_grow_bytes: 32 << 10,
            ..OpenOptions::default()
        };
        let e = Engine::format(origin.clone(), store, &opts).unwrap();
        e.write(0, &vec![1u8; 64 * BS]).unwrap();
        e.create_snapshot("s").unwrap();
        // Far more than the store holds: the commit fails for lack of room.
        let big = vec![2u8; 64 * BS];
        let mut c = e.try_cow_write(0, &big).unwrap();
        for s in c.reads() {
            origin
                .read_at(&mut c.old_mut()[s.at..s.at + s.len], s.off)
                .unwrap();
        }
        let p = c.prepare(&big).unwrap();
        assert_eq!(p.blocks(), 64);
        let r = e.commit_preserves(vec![p]);
        assert!(
            matches!(r[0], Err(crate::Error::StoreFull { .. })),
            "{:?}",
            r[0]
        );
        c.committed(false);
        assert!(c.writes().is_empty());
        c.finish(true);
        let mut got = vec![0u8; 64 * BS];
        e.read(0, &mut got).unwrap();
        assert!(got.iter().all(|&b| b == 1), "the live image is unchanged");
        assert_eq!(e.stats().preserves, 0);
    }
}
