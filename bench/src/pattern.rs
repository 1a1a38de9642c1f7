//! Block contents the bench writes: a fixed random page stamped with (block, generation), so
//! that any block's current content can be rebuilt (identical rewrites, read checks) and two
//! generations of one block always differ.

use std::sync::atomic::{AtomicU32, Ordering};

/// The tracking block size the bench uses everywhere.
pub const BS: usize = 4096;

/// The generation each block of a file currently holds.
pub struct Contents {
    base: Vec<u8>,
    gens: Vec<AtomicU32>,
}

impl Contents {
    /// `blocks` blocks, all at generation 0, with a base page drawn from `seed`.
    pub fn new(blocks: u64, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let base = (0..BS).map(|_| rng.u8(..)).collect();
        Contents {
            base,
            gens: (0..blocks).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Number of blocks tracked.
    pub fn blocks(&self) -> u64 {
        self.gens.len() as u64
    }

    /// Writes the content of `block` at generation `gen` into `out` (one block).
    pub fn fill_gen(&self, out: &mut [u8], block: u64, gen: u32) {
        out.copy_from_slice(&self.base);
        out[..8].copy_from_slice(&block.to_le_bytes());
        out[8..12].copy_from_slice(&gen.to_le_bytes());
    }

    /// Writes what `block` holds now into `out`.
    pub fn fill_current(&self, out: &mut [u8], block: u64) {
        self.fill_gen(out, block, self.gen(block));
    }

    /// The generation `block` holds.
    pub fn gen(&self, block: u64) -> u32 {
        self.gens[block as usize].load(Ordering::Relaxed)
    }

    /// Records that `block` now holds generation `gen`.
    pub fn set_gen(&self, block: u64, gen: u32) {
        self.gens[block as usize].store(gen, Ordering::Relaxed);
    }

    /// Whether `data` (one block) is `block` at the generation recorded for it.
    pub fn matches(&self, data: &[u8], block: u64) -> bool {
        data[..8] == block.to_le_bytes()
            && data[8..12] == self.gen(block).to_le_bytes()
            && data[12..] == self.base[12..]
    }

    /// Fills `out` (whole blocks starting at `block`) with generation `gen`.
    pub fn fill_run(&self, out: &mut [u8], block: u64, gen: u32) {
        for (i, chunk) in out.chunks_mut(BS).enumerate() {
            self.fill_gen(chunk, block + i as u64, gen);
        }
    }
}

/// `n` distinct items of `0..universe`, in random order.
pub fn distinct(universe: u64, n: usize, rng: &mut fastrand::Rng) -> Vec<u64> {
    let mut all: Vec<u64> = (0..universe).collect();
    rng.shuffle(&mut all);
    all.truncate(n.min(universe as usize));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_differ_and_current_content_round_trips() {
        let c = Contents::new(4, 1);
        let mut a = vec![0u8; BS];
        let mut b = vec![0u8; BS];
        c.fill_gen(&mut a, 2, 0);
        c.fill_gen(&mut b, 2, 1);
        assert_ne!(a, b);
        assert!(c.matches(&a, 2));
        assert!(!c.matches(&b, 2));
        c.set_gen(2, 1);
        c.fill_current(&mut a, 2);
        assert_eq!(a, b);
        assert!(!c.matches(&a, 3));
    }

    #[test]
    fn distinct_has_no_repeats() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut v = distinct(1000, 500, &mut rng);
        assert_eq!(v.len(), 500);
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 500);
        assert!(v.iter().all(|&x| x < 1000));
    }
}
