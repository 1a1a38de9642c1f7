//! The write path: compare, preserve, overwrite.
//!
//! **The ordering rule**, which every write obeys (this one and the caller-driven
//! copy-on-write in `cow.rs`): the preserved copy of a block and the journal record naming it are durable
//! in the store before the new data can reach the origin. A crash at any point then leaves
//! either the old block in the origin or its preserved copy named by a durable record, so
//! every snapshot reads back exactly. The store's side of it is `Store::append_group` (one
//! write and one sync per commit group); this file's side is to wait for that group before
//! touching the origin.

use crate::commit::{Kept, Request};
use crate::csum::fingerprint;
use crate::error::Result;
use crate::scratch::Scratch;

use super::{add, read_lock, Engine, MAX_RUN};

/// Where the new data of a write comes from.
#[derive(Clone, Copy)]
pub(super) enum Src<'a> {
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

/// Per-run scratch: what the origin held for the blocks we had to read.
pub(super) struct Run {
    /// First block of the run.
    pub(super) b0: u64,
    /// Blocks in the run.
    pub(super) n: usize,
    /// The newest snapshot, whose delta receives what the run preserves.
    pub(super) newest: Option<u64>,
    /// Blocks the newest snapshot has not preserved yet (a first write would preserve them).
    pub(super) need: Vec<bool>,
    /// Pooled: only the blocks marked in `have_old` hold meaningful bytes.
    pub(super) old: Scratch,
    /// Blocks whose original content `old` holds.
    pub(super) have_old: Vec<bool>,
}

/// The fingerprints of a write's new data ([`crate::csum::fingerprint`]).
pub(super) enum NewFps {
    /// Compute them from the data.
    Compute,
    /// Every block is zero.
    Zero,
}

impl Engine {
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

    pub(super) fn write_src(&self, off: u64, src: Src<'_>) -> Result<()> {
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

    pub(super) fn new_run(&self, b0: u64, n: usize) -> Run {
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

    pub(super) fn ensure_old(&self, run: &mut Run) {
        if run.old.is_empty() {
            run.old = Scratch::take(run.n * self.bs as usize);
        }
    }

    pub(super) fn read_old(&self, run: &mut Run, want: &[bool]) -> Result<()> {
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
    pub(super) fn write_run(&self, off: u64, src: Src<'_>) -> Result<()> {
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
    pub(super) fn write_locked(
        &self,
        run: &mut Run,
        data: &[u8],
        zero: bool,
        fps: NewFps,
    ) -> Result<u64> {
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
}
