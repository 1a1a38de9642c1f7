//! Per-block locks, striped: a writer holds the stripes of every block it touches for the whole
//! read-compare-preserve-write sequence, so two writes to one block never interleave and a
//! sub-block read-modify-write never loses a neighbour's bytes. Stripes are always taken in
//! ascending order, so writers spanning many blocks cannot deadlock.

use std::sync::{Mutex, MutexGuard};

/// The stripe table.
pub struct BlockLocks {
    stripes: Box<[Mutex<()>]>,
}

/// Held stripes; dropping releases them.
pub struct RangeGuard<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl BlockLocks {
    /// A table of `n` stripes (a power of two).
    pub fn new(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        BlockLocks {
            stripes: (0..n).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Locks every block in `start..start + count` if no stripe is held right now; never waits
    /// (for callers that must not block, such as an io_uring queue thread).
    pub fn try_lock(&self, start: u64, count: u64) -> Option<RangeGuard<'_>> {
        let mut guards = Vec::new();
        for i in self.stripe_indices(start, count) {
            match self.stripes[i].try_lock() {
                Ok(g) => guards.push(g),
                Err(std::sync::TryLockError::Poisoned(p)) => guards.push(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => return None,
            }
        }
        Some(RangeGuard { _guards: guards })
    }

    fn stripe_indices(&self, start: u64, count: u64) -> Vec<usize> {
        let n = self.stripes.len() as u64;
        if count >= n {
            (0..n as usize).collect()
        } else {
            let mut v: Vec<usize> = (start..start + count).map(|b| (b % n) as usize).collect();
            v.sort_unstable();
            v.dedup();
            v
        }
    }

    /// Locks every block in `start..start + count`.
    pub fn lock(&self, start: u64, count: u64) -> RangeGuard<'_> {
        let n = self.stripes.len() as u64;
        let mut idx: Vec<usize> = if count >= n {
            (0..n as usize).collect()
        } else {
            let mut v: Vec<usize> = (start..start + count).map(|b| (b % n) as usize).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        idx.shrink_to_fit();
        RangeGuard {
            // A poisoned stripe only means another writer panicked; the unit () it guards
            // cannot be left inconsistent.
            _guards: idx
                .into_iter()
                .map(|i| self.stripes[i].lock().unwrap_or_else(|p| p.into_inner()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn overlapping_ranges_from_many_threads_do_not_deadlock() {
        let l = Arc::new(BlockLocks::new(64));
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let _g = l.lock((i * 7 + t * 13) % 200, 1 + (i % 90));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}
