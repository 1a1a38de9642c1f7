//! Commit groups: the leader of a group hands the batch to the store and keeps the engine's
//! flags, counters and checkpoint schedule (the committer itself is `crate::commit`).

use std::sync::atomic::Ordering;

use crate::commit::Request;
use crate::error::{Error, Result};

use super::{add, read_lock, Engine, Writer};

impl Engine {
    pub(super) fn commit(&self, req: Request) -> Result<()> {
        self.commit_back(req).0
    }

    /// [`Engine::commit`], handing the request (and its buffer) back.
    pub(super) fn commit_back(&self, req: Request) -> (Result<()>, Request) {
        if let Err(e) = self.check_writable() {
            return (Err(e), req);
        }
        self.committer.commit(req, |batch| self.run_group(batch))
    }

    /// One [`Error::Failed`] per request, when the engine stopped taking writes (`why`).
    pub(super) fn all_failed(&self, n: usize, why: &Error) -> Vec<Result<()>> {
        let reason = why.to_string();
        (0..n)
            .map(|_| {
                Err(Error::Failed {
                    store: self.store_name.clone(),
                    reason: reason.clone(),
                })
            })
            .collect()
    }

    /// Commits one group (run by the leader only; see commit.rs). The store does the bytes
    /// ([`Store::append_group`]); the engine keeps its flags, counters and the checkpoint
    /// schedule.
    pub(super) fn run_group(&self, batch: &[Request]) -> Vec<Result<()>> {
        if let Err(e) = self.check_writable() {
            return self.all_failed(batch.len(), &e);
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Writer { store, pos, .. } = &mut *w;
        let g = store.append_group(&self.index, pos, batch);
        if let Some(reason) = g.failed {
            self.fail(reason);
        }
        let full = g
            .results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.is_store_full()));
        let full = full.count() as u64;
        if full > 0 {
            // Writes needing a preserve are failing: the store stays marked full even if a
            // smaller request of the same group fitted.
            self.store_full.store(true, Ordering::Release);
            add(&self.counters.store_full, full);
        } else if g.had_room {
            self.store_full.store(false, Ordering::Release);
        }
        if g.journal_blocks == 0 {
            return g.results;
        }
        w.since_checkpoint += g.journal_blocks;
        add(&self.counters.groups, 1);
        add(&self.counters.group_requests, g.committed as u64);
        self.counters
            .max_group
            .fetch_max(g.committed as u64, Ordering::Relaxed);
        // Journal blocks are only freed by a checkpoint. Checkpoint on a fixed period, and
        // also once the journal holds more than an eighth of the used slots: that bounds the
        // journal's share of the store, and a checkpoint (about 12 bytes per preserved block)
        // then costs a few percent of the journal written since the last one.
        let used = read_lock(&self.index).alloc.used();
        if w.since_checkpoint >= self.checkpoint_every
            || (w.since_checkpoint >= 256 && w.since_checkpoint * 8 >= used)
        {
            if let Err(e) = self.checkpoint_locked(&mut w) {
                tracing::warn!(store = %self.store_name, error = %e, "checkpoint failed; the journal keeps growing");
            }
        }
        g.results
    }

    pub(super) fn checkpoint_locked(&self, w: &mut Writer) -> Result<bool> {
        let pos = w.pos;
        let r = w.store.write_checkpoint(&self.index, pos);
        match r {
            Ok(true) => {
                w.since_checkpoint = 0;
                add(&self.counters.checkpoints, 1);
            }
            Ok(false) => {}
            Err(ref e @ Error::Io { .. }) => {
                self.fail(e.to_string());
                if crate::store::is_no_space(e) {
                    self.store_full.store(true, Ordering::Release);
                    let ix = read_lock(&self.index);
                    return Err(w.store.full_error(&ix, crate::store::Full::Device));
                }
            }
            Err(_) => {}
        }
        r
    }

    /// Writes a checkpoint now (normally periodic and at close). Returns false when the store
    /// had no room for it.
    pub fn checkpoint(&self) -> Result<bool> {
        self.check_writable()?;
        // Become the only committer for the duration: a checkpoint captures a quiet index.
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_locked(&mut w)
    }
}
