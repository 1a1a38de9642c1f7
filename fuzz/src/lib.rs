//! Helpers shared by the fuzz targets: turning fuzzer bytes into store images, and re-sealing
//! checksums so that mutations get past the crc checks and reach the code behind them.
//!
//! Why re-seal: crc32 protects the store against *accidental* damage, and a random mutation
//! almost never carries a matching crc, so without re-sealing the fuzzer would only ever test
//! the crc comparison. A crc is not authentication, though: anyone who can write the store file
//! can write a valid crc too, so everything behind the checks must survive hostile values.

/// Blocks of the origin that `store_open` pairs with every image (the seeds were made with it).
pub const ORIGIN_BLOCKS: u64 = 32;
/// Origin size in bytes: 32 blocks of 4 KiB (also a whole number of 8/16/32/64 KiB blocks).
pub const ORIGIN_BYTES: u64 = ORIGIN_BLOCKS * 4096;
/// Largest image `store_open` builds from a compact input (keeps one execution cheap).
pub const MAX_IMAGE: usize = 4 << 20;

/// Input flag: recompute each superblock copy's crc (and its checkpoint crc field).
pub const FIX_SUPER: u8 = 1;
/// Input flag: recompute the body crc of the checkpoint each superblock copy names.
pub const FIX_CHECKPOINT: u8 = 2;
/// Input flag: recompute the crc of every slot that starts with the journal magic.
pub const FIX_JOURNAL: u8 = 4;
/// Input flag: open the store read-only (as `snapblk check` / offline `list` do).
pub const READ_ONLY: u8 = 8;
/// Input flag: the rest of the input is a compact (sparse) image, not raw bytes.
pub const SPARSE: u8 = 0x80;

// The store's format facts and codecs come from the engine itself, so a format change
// cannot leave the fuzzers sealing a layout that no longer exists.
use snapmap::format::{
    get_u32, get_u64, put_u32, put_u64, CHECKPOINT_HEADER, CHECKPOINT_MAGIC, JOURNAL_HEADER,
    JOURNAL_MAGIC, SUPER_BODY,
};

/// Gives a 4096-byte superblock image a valid crc (bytes 4092..4096).
pub fn seal_superblock(b: &mut [u8]) {
    if b.len() >= 4096 {
        let crc = crc32fast::hash(&b[..SUPER_BODY]);
        put_u32(b, SUPER_BODY, crc);
    }
}

/// Gives a journal block a valid crc, clamping its payload length to the block first.
pub fn seal_journal(b: &mut [u8]) {
    if b.len() < JOURNAL_HEADER {
        return;
    }
    let p = (get_u32(b, 48) as usize).min(b.len() - JOURNAL_HEADER);
    put_u32(b, 48, p as u32);
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..52]);
    h.update(&b[JOURNAL_HEADER..JOURNAL_HEADER + p]);
    put_u32(b, 52, h.finalize());
}

/// Gives a checkpoint a valid body crc, clamping its body length to the buffer first.
pub fn seal_checkpoint(b: &mut [u8]) {
    if b.len() < CHECKPOINT_HEADER {
        return;
    }
    let n = (get_u64(b, 8) as usize).min(b.len() - CHECKPOINT_HEADER);
    put_u64(b, 8, n as u64);
    let crc = crc32fast::hash(&b[CHECKPOINT_HEADER..CHECKPOINT_HEADER + n]);
    put_u32(b, 16, crc);
}

/// crc32 of `len` bytes of `img` from `off`, reading past the end as zeros (as a store device
/// does).
fn crc_padded(img: &[u8], off: usize, len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let have = img.len().saturating_sub(off).min(len);
    if have > 0 {
        h.update(&img[off..off + have]);
    }
    let zeros = [0u8; 4096];
    let mut left = len - have;
    while left > 0 {
        let n = left.min(zeros.len());
        h.update(&zeros[..n]);
        left -= n;
    }
    h.finalize()
}

/// Block size a store image claims in superblock copy A (4096 when it claims nothing sane).
pub fn claimed_block_size(img: &[u8]) -> usize {
    if img.len() >= 16 {
        let bs = get_u32(img, 12);
        if bs.is_power_of_two() && (4096..=65536).contains(&bs) {
            return bs as usize;
        }
    }
    4096
}

/// Re-seals the checksums `flags` asks for, innermost first: journal blocks, then the
/// checkpoints the superblock copies name, then the copies themselves.
pub fn seal_store(img: &mut [u8], flags: u8) {
    let bs = claimed_block_size(img);
    if flags & FIX_JOURNAL != 0 {
        let mut off = 2 * bs;
        while off + bs <= img.len() {
            if get_u32(img, off) == JOURNAL_MAGIC {
                seal_journal(&mut img[off..off + bs]);
            }
            off += bs;
        }
    }
    for copy in [0, bs] {
        if copy + 4096 > img.len() {
            continue;
        }
        if flags & FIX_CHECKPOINT != 0 {
            let slot = get_u64(img, copy + 56);
            let off = slot.saturating_mul(bs as u64);
            if off >= 2 * bs as u64 && off < img.len() as u64 {
                let off = off as usize;
                if get_u32(img, off) == CHECKPOINT_MAGIC {
                    seal_checkpoint(&mut img[off..]);
                }
            }
        }
        if flags & FIX_SUPER != 0 {
            let slot = get_u64(img, copy + 56);
            let len = get_u64(img, copy + 72);
            if let Some(off) = slot.checked_mul(bs as u64) {
                // Only lengths a real checkpoint can have; a larger one stays unsealed.
                if off < img.len() as u64 && len <= MAX_IMAGE as u64 {
                    let crc = crc_padded(img, off as usize, len as usize);
                    put_u32(img, copy + 80, crc);
                }
            }
            seal_superblock(&mut img[copy..copy + 4096]);
        }
    }
}

/// Turns fuzzer input into (flags, store image).
///
/// Byte 0 holds the flags. Without [`SPARSE`] the rest is the raw image. With it, the image
/// is described compactly, because real stores are mostly zeros: byte 1 picks the slot size
/// (4 KiB << (b % 5)), bytes 2..4 the slot count (u16 LE), then records of
/// `slot: u16 LE, len: u16 LE, bytes[len]` each placing bytes at the start of a slot; the rest
/// of the image is zero. Any image up to [`MAX_IMAGE`] can be written either way.
pub fn image_from_input(data: &[u8]) -> Option<(u8, Vec<u8>)> {
    let (&flags, rest) = data.split_first()?;
    if flags & SPARSE == 0 {
        return Some((flags, rest.to_vec()));
    }
    if rest.len() < 3 {
        return None;
    }
    let bs = 4096usize << (rest[0] % 5);
    let slots = u16::from_le_bytes([rest[1], rest[2]]) as usize;
    let len = (slots * bs).min(MAX_IMAGE);
    let mut img = vec![0u8; len];
    let mut r = &rest[3..];
    while r.len() >= 4 {
        let slot = u16::from_le_bytes([r[0], r[1]]) as usize;
        let n = (u16::from_le_bytes([r[2], r[3]]) as usize).min(r.len() - 4);
        let bytes = &r[4..4 + n];
        r = &r[4 + n..];
        let off = slot * bs;
        if off < img.len() {
            let n = bytes.len().min(img.len() - off).min(bs);
            img[off..off + n].copy_from_slice(&bytes[..n]);
        }
    }
    Some((flags, img))
}

/// The compact form of `img` for [`image_from_input`] (used to write seeds): every slot's
/// bytes up to its last non-zero byte.
pub fn sparse_input(flags: u8, img: &[u8], bs: usize) -> Vec<u8> {
    let shift = (bs / 4096).trailing_zeros() as u8;
    let slots = img.len().div_ceil(bs);
    let mut out = vec![flags | SPARSE, shift];
    out.extend_from_slice(&(slots as u16).to_le_bytes());
    for (k, chunk) in img.chunks(bs).enumerate() {
        // A record's length is a u16: a 64 KiB slot's very last byte cannot be expressed.
        let used = chunk
            .iter()
            .rposition(|&x| x != 0)
            .map_or(0, |p| p + 1)
            .min(u16::MAX as usize);
        if used == 0 {
            continue;
        }
        out.extend_from_slice(&(k as u16).to_le_bytes());
        out.extend_from_slice(&(used as u16).to_le_bytes());
        out.extend_from_slice(&chunk[..used]);
    }
    out
}
