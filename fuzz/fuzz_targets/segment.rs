//! `shipper::format::decode_segment` (a remote segment object) with its expected size and
//! SHA-256 taken from the object itself and the header crc re-sealed, as a hostile remote that
//! also wrote the manifest could do; then every record is read.
//!
//! Input: byte 0 picks the volume's block count (`1 << (b % 40)`), the rest is the object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shipper::format::{
    decode_segment, sha256, Record, SegmentInfo, MAX_BLOCK_SIZE, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
};

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn exercise(obj: &[u8], nblocks: u64) {
    if obj.len() < SEGMENT_HEADER_LEN {
        return;
    }
    let block_size = le_u32(obj, 16);
    // A manifest with any other block size is refused before its segments are read.
    if block_size == 0 || !block_size.is_power_of_two() || block_size > MAX_BLOCK_SIZE {
        return;
    }
    let expect = SegmentInfo {
        index: le_u32(obj, 32),
        records: le_u32(obj, 20),
        first_block: 0,
        last_block: 0,
        size: obj.len() as u64,
        sha256: sha256(obj),
    };
    let seq = le_u64(obj, 24);
    let Ok(seg) = decode_segment("fuzz/segment", obj, &expect, seq, block_size, nblocks) else {
        return;
    };
    let mut n = 0u32;
    for r in seg.records() {
        match r {
            Record::Data(b, d) => {
                assert!(b < nblocks, "record names block {b} past {nblocks}");
                assert_eq!(
                    d.len(),
                    block_size as usize,
                    "data record of the wrong size"
                );
            }
            Record::Zero(b) => assert!(b < nblocks, "record names block {b} past {nblocks}"),
        }
        n += 1;
    }
    assert_eq!(n, expect.records, "record count differs from the header");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, obj)) = data.split_first() else {
        return;
    };
    let nblocks = 1u64 << (which % 40);
    exercise(obj, nblocks);
    if obj.len() >= SEGMENT_HEADER_LEN {
        let mut b = obj.to_vec();
        b[..8].copy_from_slice(SEGMENT_MAGIC);
        let stored = (b.len() - SEGMENT_HEADER_LEN) as u64;
        b[48..56].copy_from_slice(&stored.to_le_bytes());
        let crc = crc32fast::hash(&b[..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        exercise(&b, nblocks);
    }
});
