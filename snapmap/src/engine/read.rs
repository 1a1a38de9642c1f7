//! Reads: the live image, snapshots resolved through the delta chain, and preserved slots
//! verified against their checksums.

use crate::error::{Error, Result};
use crate::index::{Index, SlotRef};
use crate::scratch::Scratch;

use super::{read_lock, Engine};

impl Engine {
    /// Reads the live image.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(off, buf.len() as u64)?;
        self.origin
            .read_at(buf, off)
            .map_err(|e| self.origin_err("read", e))?;
        Ok(())
    }

    /// Reads `out.len()` bytes of the store from slot `slot` on.
    pub(super) fn read_store(&self, out: &mut [u8], slot: u64) -> Result<()> {
        self.store_dev
            .read_at(out, slot * self.bs as u64)
            .map_err(|e| {
                Error::io(
                    format!("read preserved blocks from store {}", self.store_name),
                    e,
                )
            })
    }

    /// Whether `bytes`, read from slot `r`, are the preserved copy of `block` it recorded.
    pub(super) fn check_slot(&self, bytes: &[u8], r: SlotRef, block: u64) -> Result<()> {
        if crc32fast::hash(bytes) != r.crc {
            return Err(Error::Corrupt {
                store: self.store_name.clone(),
                detail: format!(
                    "preserved copy of block {block} in slot {} fails its checksum",
                    r.slot
                ),
            });
        }
        Ok(())
    }

    pub(super) fn read_slot(&self, r: SlotRef, out: &mut [u8], block: u64) -> Result<()> {
        self.read_store(out, r.slot)?;
        self.check_slot(out, r, block)
    }

    /// Reads the preserved copies `refs[i]` (where present) into `img` at block `i` (block
    /// `b0 + i` of the device), coalescing consecutive store slots into single reads: deltas
    /// written by sequential or batched writes sit in consecutive slots.
    pub(super) fn read_slots(
        &self,
        b0: u64,
        refs: &[Option<SlotRef>],
        img: &mut [u8],
    ) -> Result<()> {
        let bs = self.bs as usize;
        let mut order: Vec<(usize, SlotRef)> = refs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|r| (i, r)))
            .collect();
        order.sort_unstable_by_key(|(_, r)| r.slot);
        let mut k = 0;
        let mut tmp = Scratch::take(0);
        while k < order.len() {
            let mut j = k + 1;
            while j < order.len() && order[j].1.slot == order[j - 1].1.slot + 1 {
                j += 1;
            }
            let run = &order[k..j];
            // Consecutive slots holding consecutive blocks (a delta written by large writes):
            // read straight into place; otherwise read the run once and scatter it.
            let in_place = run.windows(2).all(|w| w[1].0 == w[0].0 + 1);
            let (i0, first) = run[0];
            if in_place {
                let dst = &mut img[i0 * bs..(i0 + run.len()) * bs];
                self.read_store(dst, first.slot)?;
                for (m, &(i, r)) in run.iter().enumerate() {
                    self.check_slot(&dst[m * bs..(m + 1) * bs], r, b0 + i as u64)?;
                }
            } else {
                if tmp.len() < run.len() * bs {
                    tmp = Scratch::take(run.len() * bs);
                }
                self.read_store(&mut tmp[..run.len() * bs], first.slot)?;
                for (m, &(i, r)) in run.iter().enumerate() {
                    let bytes = &tmp[m * bs..(m + 1) * bs];
                    self.check_slot(bytes, r, b0 + i as u64)?;
                    img[i * bs..(i + 1) * bs].copy_from_slice(bytes);
                }
            }
            k = j;
        }
        Ok(())
    }

    pub(super) fn snap_pos(&self, ix: &Index, name: &str) -> Result<usize> {
        ix.pos_by_name(name)
            .ok_or_else(|| Error::NoSuchSnapshot(name.to_string()))
    }

    /// Reads the frozen image of snapshot `name`.
    pub fn read_snapshot(&self, name: &str, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(off, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let _gate = read_lock(&self.gate);
        let bs = self.bs as u64;
        let b0 = off / bs;
        let b1 = (off + buf.len() as u64).div_ceil(bs);
        let n = (b1 - b0) as usize;
        let resolve = |ix: &Index| -> Result<Vec<Option<SlotRef>>> {
            let pos = self.snap_pos(ix, name)?;
            Ok((b0..b1).map(|b| ix.resolve(pos, b as u32)).collect())
        };
        let first = resolve(&read_lock(&self.index))?;
        let mut img = Scratch::take(n * bs as usize);
        self.read_origin_where(b0, &first, |r| r.is_none(), &mut img)?;
        // A writer may have preserved and overwritten a block between our lookup and our
        // origin read. It records the preserve before touching the origin, so a second lookup
        // sees every block whose origin bytes we may have read too late.
        let second = resolve(&read_lock(&self.index))?;
        // Deltas only gain blocks while the gate is held shared, so every block the first
        // lookup sent to the store the second does too; read any other from the origin rather
        // than leave pooled bytes in the image.
        let lost: Vec<bool> = first
            .iter()
            .zip(&second)
            .map(|(a, b)| a.is_some() && b.is_none())
            .collect();
        self.read_origin_where(b0, &lost, |&l| l, &mut img)?;
        self.read_slots(b0, &second, &mut img)?;
        let start = (off - b0 * bs) as usize;
        buf.copy_from_slice(&img[start..start + buf.len()]);
        Ok(())
    }

    /// Reads into `img` (block `b0` first) every block for which `pick` holds, in coalesced runs.
    pub(super) fn read_origin_where<T>(
        &self,
        b0: u64,
        items: &[T],
        pick: impl Fn(&T) -> bool,
        img: &mut [u8],
    ) -> Result<u64> {
        let bs = self.bs as usize;
        let mut i = 0;
        let mut count = 0;
        while i < items.len() {
            if !pick(&items[i]) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < items.len() && pick(&items[j]) {
                j += 1;
            }
            self.origin
                .read_at(&mut img[i * bs..j * bs], (b0 + i as u64) * bs as u64)
                .map_err(|e| self.origin_err("read", e))?;
            count += (j - i) as u64;
            i = j;
        }
        Ok(count)
    }
}
