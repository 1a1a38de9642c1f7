//! `CheckpointBody::decode` on the raw bytes and again with magic, version, reserved bytes and
//! crc made valid, then the index is rebuilt from what decoded (`Index::from_checkpoint`, as
//! `Store::open` does) and queried the way `status` and `check` query it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapblk_fuzz::seal_checkpoint;
use snapmap::format::{CheckpointBody, CHECKPOINT_HEADER, CHECKPOINT_MAGIC, FORMAT_VERSION};
use snapmap::index::Index;

fn exercise(b: &[u8]) {
    let Ok(body) = CheckpointBody::decode(b) else {
        return;
    };
    match body.encode(4096) {
        Ok(enc) => assert_eq!(
            CheckpointBody::decode(&enc).as_ref(),
            Ok(&body),
            "checkpoint did not survive encode/decode"
        ),
        Err(e) => panic!("decoded checkpoint does not re-encode: {e}"),
    }
    if let Ok(ix) = Index::from_checkpoint(&body, 2..3, 1 << 20) {
        let _ = ix.alloc.used();
        let _ = ix.alloc.available();
        for pos in 0..ix.snaps.len() {
            let _ = ix.union(pos, ix.snaps.len());
            let _ = ix.resolve(pos, 0);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= CHECKPOINT_HEADER {
        let mut b = data.to_vec();
        b[..4].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[20..24].fill(0);
        seal_checkpoint(&mut b);
        exercise(&b);
    }
});
