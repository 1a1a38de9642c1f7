//! `JournalBlock::decode` for a fixed store uuid, on the raw bytes and again with magic, uuid
//! and crc made valid so the bincode payload decoder is reached. Whatever decodes must
//! re-encode into a block of the same size and decode to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapblk_fuzz::seal_journal;
use snapmap::format::{JournalBlock, JOURNAL_HEADER, JOURNAL_MAGIC};

/// The uuid the seeds' journal blocks were rewritten to (see fuzz/seedgen).
const UUID: [u8; 16] = *b"snapblk-fuzz-uid";

fn round_trip(b: &[u8]) {
    let Ok(jb) = JournalBlock::decode(&UUID, b) else {
        return;
    };
    let mut out = vec![0u8; b.len()];
    // A payload decoded from this block fits this block again: bincode's encoding is canonical.
    if let Err(e) = jb.encode_into(&UUID, &mut out) {
        panic!("decoded journal block does not re-encode: {e}");
    }
    assert_eq!(
        JournalBlock::decode(&UUID, &out).as_ref(),
        Ok(&jb),
        "journal block did not survive encode/decode"
    );
}

fuzz_target!(|data: &[u8]| {
    round_trip(data);
    if data.len() >= JOURNAL_HEADER {
        let mut b = data.to_vec();
        b[..4].copy_from_slice(&JOURNAL_MAGIC.to_le_bytes());
        b[8..24].copy_from_slice(&UUID);
        seal_journal(&mut b);
        round_trip(&b);
    }
});
