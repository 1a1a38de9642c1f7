//! `Superblock::decode` on arbitrary bytes, and again with the magic and crc made valid so the
//! field checks behind them are exercised. Whatever decodes must re-encode and decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapblk_fuzz::seal_superblock;
use snapmap::format::{Superblock, MAX_PATH, SUPER_MAGIC};

fn round_trip(sb: &Superblock) {
    let again = Superblock::decode(&sb.encode());
    // A path longer than MAX_PATH (after lossy UTF-8 repair) is cut by encode, so only
    // shorter ones must come back unchanged.
    if sb.origin.path.len() <= MAX_PATH {
        assert_eq!(
            again.as_ref(),
            Ok(sb),
            "superblock did not survive encode/decode"
        );
    } else {
        assert!(again.is_ok(), "re-encoded superblock refused: {again:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::decode(data) {
        round_trip(&sb);
    }
    if data.len() >= 4096 {
        let mut b = data[..4096].to_vec();
        b[..8].copy_from_slice(&SUPER_MAGIC);
        seal_superblock(&mut b);
        if let Ok(sb) = Superblock::decode(&b) {
            round_trip(&sb);
        }
    }
});
