//! A bounded table of per-block checksums of what the origin holds, so that a write whose data
//! differs from the stored block is known to differ without reading it. Direct-mapped and
//! lock-free: an entry is (block << 32 | crc32) in one atomic word. A missing or stale entry
//! only costs an extra read or write, never correctness: equality is always confirmed by
//! comparing bytes, and a mismatch only ever leads to writing.

use std::sync::atomic::{AtomicU64, Ordering};

const EMPTY: u64 = u64::MAX;

/// The checksum table.
pub struct CsumCache {
    slots: Box<[AtomicU64]>,
    mask: u64,
}

impl CsumCache {
    /// A table of at least `entries` entries (rounded up to a power of two; 8 bytes each).
    pub fn new(entries: usize) -> Self {
        let n = entries.max(1).next_power_of_two();
        CsumCache {
            slots: (0..n).map(|_| AtomicU64::new(EMPTY)).collect(),
            mask: n as u64 - 1,
        }
    }

    fn slot(&self, block: u32) -> &AtomicU64 {
        // Consecutive blocks take consecutive entries: a contiguous working set up to the table
        // size never collides.
        &self.slots[(block as u64 & self.mask) as usize]
    }

    /// The crc32 last recorded for `block`, if the table still has it.
    pub fn get(&self, block: u32) -> Option<u32> {
        let v = self.slot(block).load(Ordering::Acquire);
        (v != EMPTY && (v >> 32) as u32 == block).then_some(v as u32)
    }

    /// Records that `block` now holds data with checksum `crc`.
    pub fn put(&self, block: u32, crc: u32) {
        self.slot(block)
            .store(((block as u64) << 32) | crc as u64, Ordering::Release);
    }

    /// Forgets `block` (its content is no longer known).
    pub fn forget(&self, block: u32) {
        let s = self.slot(block);
        let v = s.load(Ordering::Acquire);
        if v != EMPTY && (v >> 32) as u32 == block {
            let _ = s.compare_exchange(v, EMPTY, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Bytes of memory the table uses.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_colliding_block_evicts_and_is_never_confused_with_the_other() {
        let c = CsumCache::new(4);
        c.put(1, 10);
        assert_eq!(c.get(1), Some(10));
        c.put(5, 50);
        assert_eq!(c.get(1), None);
        assert_eq!(c.get(5), Some(50));
        c.forget(1);
        assert_eq!(c.get(5), Some(50));
        c.forget(5);
        assert_eq!(c.get(5), None);
    }
}
