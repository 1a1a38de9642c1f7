//! `shipper::format::Manifest::decode` (a remote manifest, read from a target we do not
//! control) on the raw bytes, and again with magic and SHA-256 trailer made valid, as a
//! hostile remote could. Whatever decodes must re-encode and decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shipper::format::{sha256, Manifest, MANIFEST_MAGIC};

fn exercise(key: &str, b: &[u8]) {
    let Ok(m) = Manifest::decode(key, b) else {
        return;
    };
    let _ = m.nblocks();
    let _ = m.segment_keys();
    let _ = m.identity(b);
    match m.encode() {
        Ok(enc) => assert_eq!(
            Manifest::decode(key, &enc).as_ref().ok(),
            Some(&m),
            "manifest did not survive encode/decode"
        ),
        Err(e) => panic!("decoded manifest does not re-encode: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // The reader checks a manifest against its key when the key parses; try both.
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let key = if which & 1 == 0 {
        "fuzz/manifest".to_string()
    } else {
        shipper::format::manifest_key(u64::from(which >> 1), 0)
    };
    exercise(&key, body);
    if body.len() >= 8 + 32 {
        let mut b = body.to_vec();
        b[..8].copy_from_slice(MANIFEST_MAGIC);
        let n = b.len() - 32;
        let digest = sha256(&b[..n]);
        b[n..].copy_from_slice(&digest);
        exercise(&key, &b);
    }
});
