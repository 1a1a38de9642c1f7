//! Restore (roll the live image to a snapshot, safely interruptible) and export.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::commit::Request;
use crate::error::{Error, Result};
use crate::format::Entry;
use crate::index::SlotRef;
use crate::scratch::Scratch;

use super::write::NewFps;
use super::{now_unix, read_lock, write_lock, Engine, MAX_RUN};

/// Restore workers. Each one alternates between reads, a wait for its commit group and an
/// origin write, so many are needed to keep both devices busy and groups full. While one
/// commit group (at most 15 runs of 1 MiB) is written and synced, the others read: 64 against
/// 32 took a 256 MiB restore from 313 to 341 MiB/s (median of 4 alternating host runs).
const RESTORE_WORKERS: usize = 64;

/// What a restore did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RestoreReport {
    /// Snapshot restored.
    pub snapshot: String,
    /// The automatic snapshot holding the image from before the restore (restore it to undo).
    pub pre_restore: String,
    /// Whether this call resumed an interrupted restore.
    pub resumed: bool,
    /// Blocks that had to be considered.
    pub blocks: u64,
    /// Blocks written to the origin.
    pub written: u64,
    /// Blocks already right (compare-skipped).
    pub skipped: u64,
}

/// Where a restore stands.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RestoreState {
    /// Snapshot being restored.
    pub target: String,
    /// Snapshot holding the image from before it.
    pub pre_restore: String,
}

impl Engine {
    /// Rolls the live image back (or forward) to snapshot `name`, as a stream of ordinary
    /// writes through the copy-on-write path: newer snapshots survive, identical blocks cost
    /// nothing, and an interrupted restore is simply run again. An automatic
    /// `pre-restore-<time>` snapshot is taken first, so a restore can itself be undone.
    pub fn restore(
        &self,
        name: &str,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<RestoreReport> {
        self.check_writable()?;
        let (target, pre_name, resumed) = {
            let _gate = write_lock(&self.gate);
            let (target, resume) = {
                let ix = read_lock(&self.index);
                let t = ix.snaps[self.snap_pos(&ix, name)?].id;
                let resume = match ix.restore {
                    Some((rt, pre)) if rt == t => ix.pos(pre).map(|p| ix.snaps[p].name.clone()),
                    _ => None,
                };
                (t, resume)
            };
            match resume {
                Some(pre) => (target, pre, true),
                None => {
                    let base = format!("pre-restore-{}", now_unix());
                    let mut pre = base.clone();
                    let mut k = 2;
                    while read_lock(&self.index).pos_by_name(&pre).is_some() {
                        pre = format!("{base}-{k}");
                        k += 1;
                    }
                    let info = self.create_locked(&pre, false)?;
                    self.commit(Request::meta(vec![Entry::RestoreStarted {
                        target,
                        pre: info.id,
                    }]))?;
                    (target, pre, false)
                }
            }
        };
        let blocks = {
            let ix = read_lock(&self.index);
            let pos = ix
                .pos(target)
                .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))?;
            ix.union(pos, ix.snaps.len())
        };
        let total = blocks.len();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for b in blocks.iter() {
            let b = b as u64;
            match runs.last_mut() {
                Some((s, l)) if *s + *l == b && *l < MAX_RUN => *l += 1,
                _ => runs.push((b, 1)),
            }
        }
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let written = AtomicU64::new(0);
        let first_err: Mutex<Option<Error>> = Mutex::new(None);
        let workers = RESTORE_WORKERS.min(runs.len().max(1));
        progress(0, total);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if first_err.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(b0, n)) = runs.get(i) else { return };
                    match self.restore_run(target, b0, n) {
                        Ok(w) => {
                            written.fetch_add(w, Ordering::Relaxed);
                            let d = done.fetch_add(n, Ordering::Relaxed) + n;
                            progress(d, total);
                        }
                        Err(e) => {
                            if let Ok(mut f) = first_err.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().ok().flatten() {
            if read_lock(&self.index).pos(target).is_none() {
                return Err(Error::RestoreAbandoned {
                    snapshot: name.to_string(),
                    pre_restore: pre_name,
                });
            }
            return Err(e);
        }
        self.flush()?;
        self.commit(Request::meta(vec![Entry::RestoreFinished]))?;
        let written = written.into_inner();
        Ok(RestoreReport {
            snapshot: name.to_string(),
            pre_restore: pre_name,
            resumed,
            blocks: total,
            written,
            skipped: total - written,
        })
    }

    /// Writes snapshot `target`'s content back to blocks `b0..b0+n`; returns blocks written.
    pub(super) fn restore_run(&self, target: u64, b0: u64, n: u64) -> Result<u64> {
        let _gate = read_lock(&self.gate);
        self.check_writable()?;
        let bs = self.bs as usize;
        let _locks = self.locks.lock(b0, n);
        let refs: Vec<Option<SlotRef>> = {
            let ix = read_lock(&self.index);
            let Some(pos) = ix.pos(target) else {
                return Err(Error::Invalid(
                    "the snapshot being restored was deleted during the restore".into(),
                ));
            };
            (b0..b0 + n).map(|b| ix.resolve(pos, b as u32)).collect()
        };
        // Blocks with no preserved copy already hold the snapshot's bytes in the origin: writing
        // them would be compare-skipped, so they are not even read.
        let mut written = 0;
        let mut i = 0;
        while i < refs.len() {
            if refs[i].is_none() {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < refs.len() && refs[j].is_some() {
                j += 1;
            }
            let p0 = b0 + i as u64;
            let mut run = self.new_run(p0, j - i);
            let mut data = Scratch::take((j - i) * bs);
            // The preserved copies (store) and the originals the pre-restore snapshot needs
            // (origin) are independent reads: issue them at once.
            let want = run.need.clone();
            let (slots, old) = std::thread::scope(|sc| {
                let h = sc.spawn(|| self.read_slots(p0, &refs[i..j], &mut data));
                let old = self.read_old(&mut run, &want);
                let slots = h.join().unwrap_or_else(|_| {
                    Err(Error::Invalid(format!(
                        "reading preserved blocks from store {} panicked (a bug)",
                        self.store_name
                    )))
                });
                (slots, old)
            });
            slots?;
            old?;
            written += self.write_locked(&mut run, &data, false, NewFps::Compute)?;
            i = j;
        }
        Ok(written)
    }

    /// Writes snapshot `name` as a plain image file at `to` (sparse where the image is zero).
    /// The file appears only when complete.
    pub fn export(&self, name: &str, to: &Path, progress: &dyn Fn(u64, u64)) -> Result<()> {
        {
            let ix = read_lock(&self.index);
            self.snap_pos(&ix, name)?;
        }
        if to.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is a directory: give the path of a new image file, e.g. {}",
                to.display(),
                to.join(format!("{name}.img")).display()
            )));
        }
        let exists = |to: &Path| {
            Error::Invalid(format!(
                "{} already exists: exports never replace a file; choose a new path",
                to.display()
            ))
        };
        let out = crate::newfile::NewFile::create(to).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists(to)
            } else {
                Error::io(
                    format!(
                        "create {} (is its directory there and writable?)",
                        to.display()
                    ),
                    e,
                )
            }
        })?;
        use std::os::unix::fs::FileExt;
        let f = out.file();
        let chunk = 1usize << 20;
        let mut buf = vec![0u8; chunk];
        let mut off = 0u64;
        while off < self.size {
            let n = (self.size - off).min(chunk as u64) as usize;
            self.read_snapshot(name, off, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                f.write_all_at(&buf[..n], off)
                    .map_err(|e| Error::io(format!("write {}", to.display()), e))?;
            }
            off += n as u64;
            progress(off, self.size);
        }
        f.set_len(self.size)
            .map_err(|e| Error::io(format!("size {}", to.display()), e))?;
        out.persist().map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists(to)
            } else {
                Error::io(format!("finish {}", to.display()), e)
            }
        })
    }
}
