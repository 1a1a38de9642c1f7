//! A whole store image (see `snapblk_fuzz::image_from_input` for the input layout) opened with
//! `Engine::open` against a small in-memory origin. Opening must return Ok or Err; an opened
//! store must then survive what a daemon or `snapblk check` does with it: check, status, read
//! the live image and every snapshot, diff, and close (which writes a checkpoint).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use snapblk_fuzz::{image_from_input, seal_store, ORIGIN_BYTES, READ_ONLY};
use snapmap::{BlockDev, Engine, MemDev, OpenOptions};

fuzz_target!(|data: &[u8]| {
    let Some((flags, mut img)) = image_from_input(data) else {
        return;
    };
    seal_store(&mut img, flags);
    let origin = MemDev::new("origin", ORIGIN_BYTES, false);
    let store = MemDev::new("store", 0, true);
    if store.write_at(&img, 0).is_err() {
        return;
    }
    let opts = OpenOptions {
        read_only: flags & READ_ONLY != 0,
        create: false,
        csum_entries: 1024,
        store_grow_bytes: 64 << 10,
        ..OpenOptions::default()
    };
    let Ok(e) = Engine::open(Arc::new(origin), Arc::new(store), &opts) else {
        return;
    };
    // The store was opened for this origin: it must describe exactly this origin (a store for
    // another size is refused by `open`), whichever superblock copy recovery ended up using.
    assert_eq!(
        e.size(),
        ORIGIN_BYTES,
        "engine opened a {}-byte origin as {} bytes",
        ORIGIN_BYTES,
        e.size()
    );
    let _ = e.check();
    let _ = e.status();
    // Block by block: one whole-device buffer per call would make every read an mmap of
    // its own and cost most of the execution time.
    let bs = e.block_size() as u64;
    let mut buf = vec![0u8; bs as usize];
    let blocks = e.size() / bs;
    for b in 0..blocks {
        let _ = e.read(b * bs, &mut buf);
    }
    for s in &e.all_snapshots() {
        for b in 0..blocks {
            let _ = e.read_snapshot(&s.name, b * bs, &mut buf);
        }
        let _ = e.diff(&s.name, None);
    }
    let _ = e.close();
});
