//! Letting a frontend do the engine's plain I/O itself (e.g. with io_uring), for the cases where
//! the engine would do nothing but one origin read or write.
//!
//! - Reads of the live image are origin reads; the engine also remembers each whole block's
//!   checksum for the write path's compare-skip. A caller that reads the origin through
//!   [`Engine::origin_fd`] reports what it read with [`Engine::note_read`].
//! - A write that needs no preserve (no snapshot, or every block already in the newest delta)
//!   and whose data is known to differ from what the blocks hold is one origin write.
//!   [`Engine::try_direct_write`] admits such a write without ever blocking and returns a
//!   [`DirectWrite`] that holds the write's block locks and the snapshot gate (so no snapshot can
//!   be taken and no other write to these blocks can run until it is finished); the caller writes
//!   the bytes to the origin and then calls [`DirectWrite::finish`]. Everything else (a
//!   preserve, a possible identical rewrite, a partial block, a busy lock) returns `None` and
//!   goes through [`Engine::write`] as before, so the ordering rule, per-block ordering and
//!   compare-skip hold unchanged.

use super::{add, Engine, MAX_RUN};
use crate::locks::RangeGuard;
use std::os::fd::RawFd;
use std::sync::RwLockReadGuard;

/// An admitted origin write (see the module docs). Dropping it without [`DirectWrite::finish`]
/// counts as a failed write.
pub struct DirectWrite<'a> {
    engine: &'a Engine,
    _locks: RangeGuard<'a>,
    _gate: RwLockReadGuard<'a, ()>,
    b0: u64,
    len: u64,
    crcs: Vec<u32>,
    done: bool,
}

impl DirectWrite<'_> {
    /// Records the outcome of the caller's origin write: on success the blocks' checksums are
    /// remembered and the write is counted; on failure their checksums are forgotten (the
    /// origin may hold either version). Releases the locks.
    pub fn finish(mut self, ok: bool) {
        self.record(ok);
    }

    fn record(&mut self, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let e = self.engine;
        for (i, crc) in self.crcs.iter().enumerate() {
            let b = (self.b0 + i as u64) as u32;
            if ok {
                e.csum.put(b, *crc);
            } else {
                e.csum.forget(b);
            }
        }
        if ok {
            add(&e.counters.writes, 1);
            add(&e.counters.write_bytes, self.len);
            add(&e.counters.blocks_written, self.crcs.len() as u64);
        }
    }
}

impl Drop for DirectWrite<'_> {
    fn drop(&mut self) {
        self.record(false);
    }
}

impl Engine {
    /// The origin's file descriptor, when the origin is a plain file or block device opened by
    /// the engine (`None` for other [`crate::BlockDev`]s). It is opened with O_DIRECT when the
    /// engine was (`OpenOptions::direct_io`), and stays valid as long as the engine lives.
    /// Only reads of the live image, and writes admitted by [`Engine::try_direct_write`], may go
    /// through it.
    pub fn origin_fd(&self) -> Option<RawFd> {
        self.origin.raw_fd()
    }

    /// Tells the engine what a read of the live image at `off` returned, when the caller read
    /// it through [`Engine::origin_fd`] itself: the same bookkeeping [`Engine::read`] does
    /// (the checksums of whole blocks, which let a later differing write skip its compare
    /// read). A stale note is harmless: equality is always confirmed by comparing bytes.
    pub fn note_read(&self, off: u64, buf: &[u8]) {
        let bs = self.bs as u64;
        if off.is_multiple_of(bs) && (buf.len() as u64).is_multiple_of(bs) {
            for (i, chunk) in buf.chunks(bs as usize).enumerate() {
                self.csum
                    .put((off / bs) as u32 + i as u32, crc32fast::hash(chunk));
            }
        }
    }

    /// Admits `buf` at `off` as a write the caller performs itself on [`Engine::origin_fd`],
    /// when the engine would do exactly that and nothing else: whole blocks, at most one write
    /// step, no FUA handling (the caller flushes), nothing to preserve, every block's
    /// remembered checksum different from the new data (or unknown), and every lock free right
    /// now. Never blocks; `None` means "use [`Engine::write`]".
    pub fn try_direct_write(&self, off: u64, buf: &[u8]) -> Option<DirectWrite<'_>> {
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
        let n = len / bs;
        let gate = self.gate.try_read().ok()?;
        let locks = self.locks.try_lock(b0, n)?;
        {
            let ix = match self.index.try_read() {
                Ok(ix) => ix,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return None,
            };
            if let Some(s) = ix.newest() {
                if (b0..b0 + n).any(|b| !s.delta.contains(b as u32)) {
                    return None;
                }
            }
        }
        let crcs: Vec<u32> = buf.chunks(bs as usize).map(crc32fast::hash).collect();
        if crcs
            .iter()
            .enumerate()
            .any(|(i, c)| self.csum.get((b0 + i as u64) as u32) == Some(*c))
        {
            // Possibly an identical rewrite: the engine compares and skips it.
            return None;
        }
        // Re-check after taking the gate: a failure recorded meanwhile stops writes.
        if self.check_writable().is_err() {
            return None;
        }
        Some(DirectWrite {
            engine: self,
            _locks: locks,
            _gate: gate,
            b0,
            len,
            crcs,
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::io::{BlockDev, MemDev};
    use crate::{Engine, OpenOptions};
    use std::sync::Arc;

    const BS: usize = 4096;

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
        // A read noted by the caller feeds the checksum table the same way.
        let mut got = vec![0u8; BS];
        origin.read_at(&mut got, 2 * BS as u64).unwrap();
        e.note_read(2 * BS as u64, &got);
        assert!(e.try_direct_write(2 * BS as u64, &got).is_none());
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
}
