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
    // One stripe is the common case (a 4 KiB write): no allocation for it.
    _guards: Guards<'a>,
}

// Held for their drop only.
enum Guards<'a> {
    One { _g: MutexGuard<'a, ()> },
    Many { _g: Vec<MutexGuard<'a, ()>> },
}

// A poisoned stripe only means another writer panicked; the unit () it guards cannot be left
// inconsistent.
fn unpoison<T>(r: std::sync::LockResult<T>) -> T {
    r.unwrap_or_else(|p| p.into_inner())
}

impl BlockLocks {
    /// A table of `n` stripes (a power of two).
    pub fn new(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        BlockLocks {
            stripes: (0..n).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The stripes of `start..start + count`, each once, in ascending order (computed, not
    /// collected: this runs on every write).
    fn stripe_indices(&self, start: u64, count: u64) -> impl Iterator<Item = usize> {
        let n = self.stripes.len() as u64;
        let (low, high) = if count >= n {
            (0..0, 0..n)
        } else {
            let first = start % n;
            let end = first + count;
            if end <= n {
                (0..0, first..end)
            } else {
                // The range wraps: its tail's stripes come first in ascending order.
                (0..end - n, first..n)
            }
        };
        low.chain(high).map(|i| i as usize)
    }

    fn take<'a>(
        &'a self,
        start: u64,
        count: u64,
        mut get: impl FnMut(&'a Mutex<()>) -> Option<MutexGuard<'a, ()>>,
    ) -> Option<RangeGuard<'a>> {
        let mut it = self.stripe_indices(start, count);
        let first = get(&self.stripes[it.next()?])?;
        let Some(second) = it.next() else {
            return Some(RangeGuard {
                _guards: Guards::One { _g: first },
            });
        };
        let mut v = Vec::with_capacity(count.min(self.stripes.len() as u64) as usize);
        v.push(first);
        v.push(get(&self.stripes[second])?);
        for i in it {
            v.push(get(&self.stripes[i])?);
        }
        Some(RangeGuard {
            _guards: Guards::Many { _g: v },
        })
    }

    /// Locks every block in `start..start + count` if no stripe is held right now; never waits
    /// (for callers that must not block, such as an io_uring queue thread).
    pub fn try_lock(&self, start: u64, count: u64) -> Option<RangeGuard<'_>> {
        self.take(start, count, |m| match m.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })
    }

    /// Locks every block in `start..start + count`.
    pub fn lock(&self, start: u64, count: u64) -> RangeGuard<'_> {
        self.take(start, count, |m| Some(unpoison(m.lock())))
            .unwrap_or(RangeGuard {
                // An empty range (waiting on a stripe always yields its guard).
                _guards: Guards::Many { _g: Vec::new() },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_range_takes_each_of_its_stripes_once_in_ascending_order() {
        let l = BlockLocks::new(8);
        let got = |s, c| l.stripe_indices(s, c).collect::<Vec<_>>();
        assert_eq!(got(3, 1), vec![3]);
        assert_eq!(got(3, 4), vec![3, 4, 5, 6]);
        assert_eq!(got(6, 4), vec![0, 1, 6, 7]); // wraps
        assert_eq!(got(13, 3), vec![5, 6, 7]);
        assert_eq!(got(5, 8), (0..8).collect::<Vec<_>>());
        assert_eq!(got(5, 100), (0..8).collect::<Vec<_>>());
        assert_eq!(got(5, 0), Vec::<usize>::new());
        // An empty range locks nothing.
        drop(l.lock(3, 0));
        // Held stripes are held: a try on any of them fails, a disjoint one succeeds.
        let g = l.try_lock(6, 4).unwrap();
        assert!(l.try_lock(0, 1).is_none());
        assert!(l.try_lock(7, 1).is_none());
        assert!(l.try_lock(2, 3).is_some());
        drop(g);
        assert!(l.try_lock(0, 1).is_some());
    }

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
