//! Copy-on-write driven by the caller, step by step, for a whole-block first write after a
//! snapshot (see `direct.rs` for the caller-driven paths as a whole, and `write.rs` for the
//! ordering rule these steps keep): admit, read the originals, compare, commit the preserves
//! in shared group commits, and only then write the origin.

use super::direct::{BlockSet, Held};
use super::{add, Engine};
use crate::commit::{Kept, Request};
use crate::error::{Error, Result};
use crate::io::BlockDev;
use crate::scratch::Scratch;

/// Where a [`CowWrite`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CowState {
    /// Waiting for the caller to read the originals.
    Reading,
    /// A [`Preserve`] is out; nothing may be written until it is committed.
    Committing,
    /// Preserves are durable (or none were needed): the writes may be issued.
    Writable,
    /// The commit failed: nothing may be written.
    Failed,
}

/// An admitted copy-on-write the caller drives step by step (see the module docs). Holds the
/// write's block locks and the snapshot gate until finished; dropping it without
/// [`CowWrite::finish`] counts as a failed write.
pub struct CowWrite<'a> {
    held: Held<'a>,
    n: usize,
    snap: u64,
    /// Blocks the newest snapshot still needs (their originals must be read and preserved).
    need: BlockSet,
    /// Blocks to write to the origin (cleared for a needed block found to hold the new bytes).
    write: BlockSet,
    /// The originals of the needed blocks, at their block index.
    old: Scratch,
    state: CowState,
}

/// The originals one [`CowWrite`] preserves, ready to be committed by
/// [`Engine::commit_preserves`] on any thread.
pub struct Preserve {
    req: Request,
}

impl Preserve {
    /// Number of blocks it preserves.
    pub fn blocks(&self) -> usize {
        self.req.blocks.len()
    }
}

/// Consecutive blocks of a [`CowWrite`] that the caller reads or writes in one I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Byte offset on the origin.
    pub off: u64,
    /// Byte offset within the write's data (and within [`CowWrite::old_mut`]).
    pub at: usize,
    /// Bytes.
    pub len: usize,
}

impl CowWrite<'_> {
    fn spans(&self, pick: impl Fn(usize) -> bool) -> Vec<Span> {
        let bs = self.held.engine.bs as usize;
        // One span in the common case (a write of consecutive blocks all needing the same).
        let mut out = Vec::with_capacity(1);
        let mut i = 0;
        while i < self.n {
            if !pick(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < self.n && pick(j) {
                j += 1;
            }
            out.push(Span {
                off: (self.held.b0 + i as u64) * bs as u64,
                at: i * bs,
                len: (j - i) * bs,
            });
            i = j;
        }
        out
    }

    /// The origin reads to issue before [`CowWrite::prepare`]: each span's bytes go to the same
    /// place (`at`) in [`CowWrite::old_mut`].
    pub fn reads(&self) -> Vec<Span> {
        self.spans(|i| self.need.contains(i))
    }

    /// The buffer the originals are read into (as long as the write; aligned for O_DIRECT).
    pub fn old_mut(&mut self) -> &mut [u8] {
        &mut self.old
    }

    /// Compares the originals (read into [`CowWrite::old_mut`]) with the new data `new` (the
    /// same bytes that were admitted). A needed block that already holds its new bytes is
    /// neither preserved nor written. Returns the preserves to commit, or `None` when there is
    /// nothing to preserve (the writes may then be issued at once).
    pub fn prepare(&mut self, new: &[u8]) -> Option<Preserve> {
        if self.state != CowState::Reading {
            return None;
        }
        let bs = self.held.engine.bs as usize;
        let e = self.held.engine;
        add(&e.counters.compare_reads, self.need.len() as u64);
        let mut kept = Vec::with_capacity(self.need.len());
        for i in (0..self.n).filter(|&i| self.need.contains(i)) {
            let blk = i * bs..(i + 1) * bs;
            // The bytes themselves: a comparison stops at the first difference, and equal
            // blocks must be compared in full whatever a checksum says.
            if self.old[blk.clone()] == new[blk.clone()] {
                self.write.remove(i);
                add(&e.counters.blocks_skipped, 1);
                continue;
            }
            kept.push(Kept {
                block: (self.held.b0 + i as u64) as u32,
                // The store record's checksum (crc32, as the format defines it).
                crc: crc32fast::hash(&self.old[blk]),
                at: i as u32,
            });
        }
        if kept.is_empty() {
            self.state = CowState::Writable;
            return None;
        }
        self.state = CowState::Committing;
        Some(Preserve {
            req: Request {
                meta: Vec::new(),
                snap: self.snap,
                blocks: kept,
                data: std::mem::replace(&mut self.old, Scratch::take(0)),
            },
        })
    }

    /// Accepts the outcome of committing this write's [`Preserve`]: only a success lets
    /// [`CowWrite::writes`] name anything.
    pub fn committed(&mut self, ok: bool) {
        if self.state == CowState::Committing {
            self.state = if ok {
                CowState::Writable
            } else {
                CowState::Failed
            };
        }
    }

    /// The origin writes to issue (from the new data at `at`), once the preserves are durable;
    /// empty before that, after a failed commit, or when every block already held its bytes.
    pub fn writes(&self) -> Vec<Span> {
        if self.state != CowState::Writable {
            return Vec::new();
        }
        self.spans(|i| self.write.contains(i))
    }

    /// Records the outcome of the caller's origin writes (`true`: every span written in full):
    /// the blocks' checksums are remembered, or forgotten after a failure. Releases the locks.
    pub fn finish(mut self, ok: bool) {
        let ok = ok && self.state == CowState::Writable;
        let len = self.n as u64 * self.held.engine.bs as u64;
        let write = &self.write;
        self.held.settle(|i| write.contains(i), ok, len);
    }

    /// The caller's origin writes did not all complete in full: the engine issues every span of
    /// [`CowWrite::writes`] again itself, from `data` (the admitted bytes), on the calling
    /// thread, with the gate and locks still held, then settles. For the same reason as
    /// [`DirectWrite::redo`](crate::DirectWrite::redo): a snapshot taken between a failed attempt and a retry would
    /// preserve the half-written block. Refused (and settled as failed) before the preserves
    /// are durable, since the ordering rule forbids the write then.
    pub fn redo(mut self, data: &[u8]) -> Result<()> {
        let e = self.held.engine;
        let len = self.n as u64 * e.bs as u64;
        if self.state != CowState::Writable {
            self.held.settle(|_| true, false, len);
            return Err(Error::Invalid(
                "a copy-on-write was redone before its preserves were durable (a bug)".into(),
            ));
        }
        let mut r = Ok(());
        for s in self.writes() {
            r = e.origin.write_at(&data[s.at..s.at + s.len], s.off);
            if r.is_err() {
                break;
            }
        }
        let write = &self.write;
        self.held.settle(|i| write.contains(i), r.is_ok(), len);
        r.map_err(|err| e.origin_err("write", err))
    }
}

impl Engine {
    /// The bookkeeping after a caller-driven write of `len` bytes from block `b0` whose new
    /// data has fingerprints `fps`, of which the blocks `written` picks were to be written. On
    /// success every block holds its new data: its checksum is recorded and the write counted.
    /// On failure a block that was to be written may hold either version, so its checksum is
    /// forgotten.
    pub(super) fn settle(
        &self,
        b0: u64,
        fps: &[u32],
        written: impl Fn(usize) -> bool,
        ok: bool,
        len: u64,
    ) {
        for (i, fp) in fps.iter().enumerate() {
            let b = (b0 + i as u64) as u32;
            if ok {
                self.csum.put(b, *fp);
            } else if written(i) {
                self.csum.forget(b);
            }
        }
        if ok {
            add(&self.counters.writes, 1);
            add(&self.counters.write_bytes, len);
            add(
                &self.counters.blocks_written,
                (0..fps.len()).filter(|&i| written(i)).count() as u64,
            );
        }
    }

    /// Admits `buf` at `off` as a copy-on-write the caller drives (see [`CowWrite`]): whole
    /// blocks, at most one write step, at least one block the newest snapshot still needs, no
    /// already-preserved block that might hold these bytes already, and every lock free right
    /// now. Never blocks; `None` means "use [`Engine::write`]" (or
    /// [`Engine::try_direct_write`] when nothing needs preserving).
    pub fn try_cow_write(&self, off: u64, buf: &[u8]) -> Option<CowWrite<'_>> {
        let a = self.admit(off, buf, true)?;
        Some(CowWrite {
            held: a.held,
            n: a.n,
            snap: a.snap,
            write: BlockSet::first(a.n),
            need: a.need,
            old: Scratch::take(a.n * self.bs as usize),
            state: CowState::Reading,
        })
    }

    /// Writes `data` at `off` the way a frontend with its own origin I/O does (the ublk queue
    /// does the same steps asynchronously): through [`Engine::try_direct_write`] or
    /// [`Engine::try_cow_write`] with the origin I/O done here on `origin` (which must be the
    /// engine's origin device), else through [`Engine::write`]. The reference for driving those
    /// paths, and how tests (model, crash) exercise them. Returns whether a caller-driven path
    /// took the write.
    pub fn write_as_frontend(&self, origin: &dyn BlockDev, off: u64, data: &[u8]) -> Result<bool> {
        let io = |what: &str, e: std::io::Error| self.origin_err(what, e);
        if let Some(w) = self.try_direct_write(off, data) {
            let r = origin.write_at(data, off);
            w.finish(r.is_ok());
            r.map_err(|e| io("write", e))?;
            return Ok(true);
        }
        let Some(mut c) = self.try_cow_write(off, data) else {
            self.write(off, data)?;
            return Ok(false);
        };
        for s in c.reads() {
            origin
                .read_at(&mut c.old_mut()[s.at..s.at + s.len], s.off)
                .map_err(|e| io("read", e))?;
        }
        if let Some(p) = c.prepare(data) {
            let r = self
                .commit_preserves(vec![p])
                .pop()
                .unwrap_or_else(|| Err(Error::Invalid("no commit result (a bug)".into())));
            c.committed(r.is_ok());
            r?;
        }
        for s in c.writes() {
            if let Err(e) = origin.write_at(&data[s.at..s.at + s.len], s.off) {
                c.finish(false);
                return Err(io("write", e));
            }
        }
        c.finish(true);
        Ok(true)
    }

    /// Makes a batch of [`Preserve`]s durable (in as few group commits as their size allows,
    /// shared with any other writer's preserves) and returns one result per preserve, in order.
    /// Blocks until the store's sync returned; run it off any thread that must not block.
    pub fn commit_preserves(&self, batch: Vec<Preserve>) -> Vec<Result<()>> {
        if batch.is_empty() {
            return Vec::new();
        }
        if let Err(e) = self.check_writable() {
            return self.all_failed(batch.len(), &e);
        }
        let reqs = batch.into_iter().map(|p| p.req).collect();
        self.committer
            .commit_many(reqs, |b| self.run_group(b))
            .into_iter()
            .map(|(r, req)| {
                if r.is_ok() {
                    add(&self.counters.preserves, req.blocks.len() as u64);
                }
                r
            })
            .collect()
    }
}
