//! Reusable O_DIRECT buffers for the I/O paths.
//!
//! A fresh [`AlignedBuf`] is an over-aligned allocation plus a `memset`; at the sizes a restore
//! or a commit group uses (hundreds of KiB to MiB) the allocator maps fresh pages for each one,
//! so every I/O step paid page faults, page clearing and unmapping for memory it was about to
//! overwrite anyway. A [`Scratch`] comes from a pool instead and goes back to it when dropped.
//! Its bytes are whatever the previous user left there: every caller fully overwrites the part
//! it reads (an I/O read into it, or explicit copies) before looking at it.
//!
//! Small buffers (one block, the copy-on-write case) are cached per thread, with no locking;
//! larger ones go to one shared pool so that memory is not stranded in threads that used a
//! large buffer once. Both pools are bounded; what does not fit is freed.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use crate::buf::{AlignedBuf, IO_ALIGN};

/// Buffers up to this size are cached per thread.
const SMALL_MAX: usize = 64 << 10;
/// Small buffers kept per thread.
const SMALL_PER_THREAD: usize = 8;
/// Largest buffer worth pooling (a commit group of 1024 blocks of 16 KiB).
const LARGE_MAX: usize = 16 << 20;
/// Bytes the shared pool keeps at most.
const LARGE_TOTAL: usize = 64 << 20;

thread_local! {
    static SMALL: RefCell<Vec<AlignedBuf>> = const { RefCell::new(Vec::new()) };
}

struct Large {
    bufs: Vec<AlignedBuf>,
    bytes: usize,
}

static LARGE: Mutex<Large> = Mutex::new(Large {
    bufs: Vec::new(),
    bytes: 0,
});

/// The capacity a request for `len` bytes is served with: a power of two, so that buffers are
/// interchangeable between requests of similar sizes.
fn class(len: usize) -> usize {
    len.max(IO_ALIGN).next_power_of_two()
}

/// A pooled, [`IO_ALIGN`]-aligned buffer of a fixed length with unspecified initial contents.
pub struct Scratch {
    buf: AlignedBuf,
    len: usize,
}

impl Scratch {
    /// A buffer of `len` bytes whose contents are unspecified (left over from an earlier use):
    /// the caller must write every byte it later reads.
    pub fn take(len: usize) -> Scratch {
        if len == 0 {
            return Scratch {
                buf: AlignedBuf::zeroed(0),
                len: 0,
            };
        }
        let cap = class(len);
        let reused = if cap <= SMALL_MAX {
            SMALL
                .try_with(|p| {
                    let mut p = p.borrow_mut();
                    let i = p.iter().position(|b| b.len() == cap)?;
                    Some(p.swap_remove(i))
                })
                .ok()
                .flatten()
        } else if cap <= LARGE_MAX {
            // The pool holds plain buffers; a panic elsewhere cannot leave it inconsistent.
            let mut p = LARGE.lock().unwrap_or_else(|e| e.into_inner());
            let i = p.bufs.iter().position(|b| b.len() == cap);
            i.map(|i| {
                p.bytes -= cap;
                p.bufs.swap_remove(i)
            })
        } else {
            None
        };
        Scratch {
            buf: reused.unwrap_or_else(|| AlignedBuf::zeroed(cap)),
            len,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let cap = self.buf.len();
        if cap == 0 || cap > LARGE_MAX {
            return;
        }
        let buf = std::mem::replace(&mut self.buf, AlignedBuf::zeroed(0));
        if cap <= SMALL_MAX {
            // During thread teardown the cache may be gone; the buffer is then simply freed.
            let _ = SMALL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < SMALL_PER_THREAD {
                    p.push(buf);
                }
            });
        } else {
            let mut p = LARGE.lock().unwrap_or_else(|e| e.into_inner());
            if p.bytes + cap <= LARGE_TOTAL {
                p.bytes += cap;
                p.bufs.push(buf);
            }
        }
    }
}

impl Deref for Scratch {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_sized_and_reused() {
        let a = Scratch::take(5000);
        assert_eq!(a.len(), 5000);
        assert_eq!(a.as_ptr() as usize % IO_ALIGN, 0);
        let p = a.as_ptr();
        drop(a);
        // Same size class, same thread: the cached buffer comes back.
        let b = Scratch::take(8192);
        assert_eq!(b.as_ptr(), p);
        assert_eq!(b.len(), 8192);
    }

    #[test]
    fn large_buffers_are_shared_and_oversized_ones_are_not_kept() {
        let mut a = Scratch::take(1 << 20);
        a.fill(0xAB);
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a.as_ptr() as usize % IO_ALIGN, 0);
        drop(a);
        // Another thread may take the same large buffer; its old bytes are simply there.
        let b = std::thread::spawn(|| Scratch::take(1 << 20).len())
            .join()
            .unwrap();
        assert_eq!(b, 1 << 20);
        let big = Scratch::take(LARGE_MAX + 1);
        assert_eq!(big.len(), LARGE_MAX + 1);
        drop(big);
        let p = LARGE.lock().unwrap();
        assert!(p.bufs.iter().all(|b| b.len() <= LARGE_MAX));
        assert!(p.bytes <= LARGE_TOTAL);
        drop(p);
        assert!(Scratch::take(0).is_empty());
    }
}
