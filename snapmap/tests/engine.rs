//! Behaviour of the engine that the model test does not pin down by itself: I/O counts,
//! recovery details, space accounting, refusals and concurrency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use snapmap::{BlockDev, CountingDev, Engine, Error, FileDev, MemDev, OpenOptions};

const BS: usize = 4096;

fn mem(blocks: usize) -> (Arc<dyn BlockDev>, Arc<dyn BlockDev>) {
    (
        Arc::new(MemDev::new("origin", (blocks * BS) as u64, false)),
        Arc::new(MemDev::new("store", 0, true)),
    )
}

/// A zeroed origin of `blocks` blocks wrapped to count the I/O made to it.
fn counted_origin(blocks: usize) -> Arc<CountingDev> {
    Arc::new(CountingDev::new(Arc::new(MemDev::new(
        "o",
        (blocks * BS) as u64,
        false,
    ))))
}

fn block(v: u8) -> Vec<u8> {
    vec![v; BS]
}

#[test]
fn identical_rewrites_cause_zero_origin_writes() {
    let counted = counted_origin(64);
    let origin: Arc<dyn BlockDev> = counted.clone();
    let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("s", 0, true));
    let e = Engine::format(origin, store, &OpenOptions::default()).unwrap();
    for b in 0..64u64 {
        e.write(b * BS as u64, &block(b as u8 + 1)).unwrap();
    }
    let before = counted.counts().1;
    for b in 0..64u64 {
        e.write(b * BS as u64, &block(b as u8 + 1)).unwrap();
    }
    assert_eq!(
        counted.counts().1,
        before,
        "identical rewrites reached the origin"
    );
    assert_eq!(e.stats().blocks_skipped_identical, 64);
    // Also after a snapshot: the first write compares with the original and skips.
    e.create_snapshot("s").unwrap();
    let before = counted.counts().1;
    for b in 0..64u64 {
        e.write(b * BS as u64, &block(b as u8 + 1)).unwrap();
    }
    assert_eq!(counted.counts().1, before);
    assert_eq!(
        e.stats().preserves,
        0,
        "nothing changed, nothing to preserve"
    );
}

#[test]
fn a_changed_block_is_written_without_a_compare_read_when_its_checksum_is_known() {
    let counted = counted_origin(8);
    let origin: Arc<dyn BlockDev> = counted.clone();
    let e = Engine::format(
        origin,
        Arc::new(MemDev::new("s", 0, true)),
        &OpenOptions::default(),
    )
    .unwrap();
    e.write(0, &block(1)).unwrap();
    let reads = counted.counts().0;
    e.write(0, &block(2)).unwrap();
    assert_eq!(counted.counts().0, reads, "a known mismatch needed no read");
}

#[test]
fn first_write_after_a_snapshot_costs_one_read_two_writes_and_one_store_sync() {
    let o = counted_origin(8);
    let s = Arc::new(CountingDev::new(Arc::new(MemDev::new("s", 0, true))));
    let e = Engine::format(o.clone(), s.clone(), &OpenOptions::default()).unwrap();
    e.write(0, &block(1)).unwrap();
    e.create_snapshot("a").unwrap();
    let (or, ow, _) = o.counts();
    let (_, sw, ss) = s.counts();
    e.write(0, &block(2)).unwrap();
    assert_eq!(o.counts().0 - or, 1, "one origin read");
    assert_eq!(o.counts().1 - ow, 1, "one origin write");
    assert_eq!(
        s.counts().1 - sw,
        1,
        "journal block and data go out in one store write"
    );
    assert_eq!(s.counts().2 - ss, 1, "one store sync");
}

#[test]
fn reopen_rebuilds_the_index_from_checkpoint_plus_journal_tail() {
    let (o, s) = mem(32);
    let opts = OpenOptions {
        checkpoint_every: 4,
        ..OpenOptions::default()
    };
    let e = Engine::format(o.clone(), s.clone(), &opts).unwrap();
    e.create_snapshot("a").unwrap();
    for b in 0..10u64 {
        e.write(b * BS as u64, &block(9)).unwrap();
    }
    assert!(e.stats().checkpoints >= 1);
    drop(e); // no close: the tail after the last checkpoint must be replayed
    let e = Engine::open(o, s, &opts).unwrap();
    assert!(e.recovery().journal_blocks > 0, "{:?}", e.recovery());
    assert_eq!(e.recovery().groups_dropped, 0);
    let mut buf = vec![1u8; BS];
    for b in 0..10u64 {
        e.read_snapshot("a", b * BS as u64, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
    }
    assert_eq!(e.snapshots()[0].preserved_blocks, 10);
}

#[test]
fn a_torn_journal_tail_is_dropped_and_never_trusted() {
    let (o, s) = mem(16);
    let e = Engine::format(o.clone(), s.clone(), &OpenOptions::default()).unwrap();
    e.create_snapshot("a").unwrap();
    e.write(0, &block(1)).unwrap();
    drop(e);
    // Find the newest journal block (highest sequence) and tear it.
    let bytes = match s.len() {
        Ok(n) => n as usize,
        Err(e) => panic!("{e}"),
    };
    let mut img = vec![0u8; bytes];
    s.read_at(&mut img, 0).unwrap();
    let mut newest = None;
    for slot in 2..bytes / BS {
        let b = &img[slot * BS..(slot + 1) * BS];
        if b[0..4] == 0x4C4E_4A53u32.to_le_bytes() {
            let seq = u64::from_le_bytes(b[32..40].try_into().unwrap());
            if newest.is_none_or(|(_, q)| seq > q) {
                newest = Some((slot, seq));
            }
        }
    }
    let (slot, _) = newest.expect("a journal block");
    s.write_at(&[0xEE; 100], (slot * BS + 60) as u64).unwrap();
    let e = Engine::open(o, s, &OpenOptions::default()).unwrap();
    assert!(e.recovery().torn_tail, "{:?}", e.recovery());
    // The preserve of block 0 was the torn group: the snapshot now resolves to the origin, and
    // the store is consistent.
    assert_eq!(e.snapshots()[0].preserved_blocks, 0);
    assert!(e.check().unwrap().ok());
}

#[test]
fn a_last_group_whose_preserved_data_did_not_reach_the_store_is_dropped() {
    let (o, s) = mem(16);
    let e = Engine::format(o.clone(), s.clone(), &OpenOptions::default()).unwrap();
    e.create_snapshot("a").unwrap();
    e.write(0, &block(1)).unwrap();
    e.write(BS as u64, &block(2)).unwrap();
    // The preserved copy of block 1 came last; make it look like its write never arrived.
    let slot = e
        .preserved_slots("a")
        .unwrap()
        .into_iter()
        .find(|&(b, _)| b == 1)
        .map(|(_, s)| s as usize)
        .unwrap();
    drop(e);
    s.write_at(&block(0x55), (slot * BS) as u64).unwrap();
    let e = Engine::open(o, s, &OpenOptions::default()).unwrap();
    assert_eq!(e.recovery().groups_dropped, 1, "{:?}", e.recovery());
    assert_eq!(e.snapshots()[0].preserved_blocks, 1);
    assert!(e.check().unwrap().ok());
}

#[test]
fn freed_slots_are_reused_so_the_store_does_not_grow() {
    let (o, s) = mem(64);
    let opts = OpenOptions {
        store_grow_bytes: 64 << 10,
        ..OpenOptions::default()
    };
    let e = Engine::format(o, s.clone(), &opts).unwrap();
    for round in 0..20u8 {
        e.create_snapshot("s").unwrap();
        for b in 0..64u64 {
            e.write(b * BS as u64, &block(round + 1)).unwrap();
        }
        e.delete_snapshot("s").unwrap();
    }
    let used = e.status().store_used_bytes;
    let len = s.len().unwrap();
    // Twenty rounds of 64 preserved blocks (and their journal) would need 2560 slots without
    // reuse; with it, one round's data plus a bounded journal.
    assert!(
        len < (700 * BS) as u64,
        "store grew to {len} bytes (used {used})"
    );
}

#[test]
fn a_full_store_refuses_the_write_keeps_every_snapshot_and_says_so() {
    let (o, s) = mem(256);
    let opts = OpenOptions {
        max_store_bytes: Some(80 * BS as u64),
        ..OpenOptions::default()
    };
    let e = Engine::format(o.clone(), s.clone(), &opts).unwrap();
    for b in 0..256u64 {
        e.write(b * BS as u64, &block(1)).unwrap();
    }
    e.create_snapshot("keep").unwrap();
    let mut refused = None;
    for b in 0..256u64 {
        match e.write(b * BS as u64, &block(2)) {
            Ok(()) => {}
            Err(err) => {
                refused = Some((b, err));
                break;
            }
        }
    }
    let (at, err) = refused.expect("the store must fill up");
    assert!(err.is_store_full(), "{err}");
    // The way out (`snapblk snapshot delete NAME`, a larger --max-store) is the CLI's to
    // say; cli/tests/diagnosis.rs checks it.
    assert!(
        err.to_string().contains("every snapshot is intact"),
        "{err}"
    );
    assert_eq!(err.errno(), libc_enospc());
    assert!(e.status().store_full);
    // The refused block still holds its old data, and the snapshot is whole.
    let mut buf = vec![0u8; BS];
    e.read(at * BS as u64, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 1));
    for b in 0..256u64 {
        e.read_snapshot("keep", b * BS as u64, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 1), "snapshot block {b}");
    }
    // Deleting the snapshot frees room; writes work again.
    e.delete_snapshot("keep").unwrap();
    e.create_snapshot("next").unwrap();
    e.write(at * BS as u64, &block(2)).unwrap();
    assert!(!e.status().store_full);
    assert!(e.check().unwrap().ok());
}

#[test]
fn the_store_limit_is_recorded_in_the_store_and_kept_by_every_opener() {
    let (o, s) = mem(256);
    let capped = |bytes: Option<u64>| OpenOptions {
        max_store_bytes: bytes,
        ..OpenOptions::default()
    };
    let e = Engine::format(o.clone(), s.clone(), &capped(Some(80 * BS as u64))).unwrap();
    e.write(0, &vec![1u8; 256 * BS]).unwrap();
    e.create_snapshot("keep").unwrap();
    e.close().unwrap();
    // An opener that names no limit (an offline command) keeps the recorded one.
    let e = Engine::open(o.clone(), s.clone(), &capped(None)).unwrap();
    assert_eq!(e.status().store_capacity_bytes, Some(80 * BS as u64));
    let mut fit = 0u64;
    while fit < 256 && e.write(fit * BS as u64, &block(2)).is_ok() {
        fit += 1;
    }
    assert!(fit < 80, "{fit} preserves fitted in an 80-block store");
    assert!(
        s.len().unwrap() <= 80 * BS as u64,
        "the store grew past its limit"
    );
    e.close().unwrap();
    // A new limit replaces it, for later openers too.
    let e = Engine::open(o.clone(), s.clone(), &capped(Some(1 << 20))).unwrap();
    e.close().unwrap();
    let e = Engine::open(o.clone(), s.clone(), &capped(None)).unwrap();
    assert_eq!(e.status().store_capacity_bytes, Some(1 << 20));
    e.write(fit * BS as u64, &block(2)).unwrap();
    e.close().unwrap();
    // A store formatted without one has none.
    let (o, s) = mem(16);
    Engine::format(o.clone(), s.clone(), &capped(None))
        .unwrap()
        .close()
        .unwrap();
    let e = Engine::open(o, s, &capped(None)).unwrap();
    assert_eq!(e.status().store_capacity_bytes, None);
}

/// A group that refuses one request for lack of room leaves the store marked full, even when a
/// smaller request in the same group fits: writes needing a preserve are failing.
#[test]
fn a_group_that_refuses_a_preserve_leaves_the_store_marked_full() {
    let fresh = || {
        let (o, s) = mem(256);
        let opts = OpenOptions {
            max_store_bytes: Some(80 * BS as u64),
            ..OpenOptions::default()
        };
        let e = Engine::format(o.clone(), s, &opts).unwrap();
        e.write(0, &vec![1u8; 256 * BS]).unwrap();
        e.create_snapshot("keep").unwrap();
        (o, e)
    };
    // How many single-block first writes fit.
    let (_, probe) = fresh();
    let mut fit = 0u64;
    while fit < 256 && probe.write(fit * BS as u64, &block(2)).is_ok() {
        fit += 1;
    }
    assert!((16..200).contains(&fit), "{fit} single preserves fit");
    // Leave room for about 8: a 64-block preserve cannot fit, a 1-block one can.
    let (o, e) = fresh();
    for x in 0..fit - 8 {
        e.write(x * BS as u64, &block(2)).unwrap();
    }
    let big = vec![3u8; 64 * BS];
    let small = block(3);
    let cow = |off: u64, data: &[u8]| {
        let mut c = e
            .try_cow_write(off, data)
            .expect("a first write is admitted");
        for sp in c.reads() {
            o.read_at(&mut c.old_mut()[sp.at..sp.at + sp.len], sp.off)
                .unwrap();
        }
        let p = c.prepare(data).expect("originals differ");
        (c, p)
    };
    let (c1, p1) = cow(100 * BS as u64, &big);
    let (c2, p2) = cow(200 * BS as u64, &small);
    let res = e.commit_preserves(vec![p1, p2]);
    assert!(
        res[0].as_ref().is_err_and(|err| err.is_store_full()),
        "{:?}",
        res[0]
    );
    assert!(res[1].is_ok(), "{:?}", res[1]);
    assert!(
        e.status().store_full,
        "a refused preserve must show in status"
    );
    drop((c1, c2));
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn a_store_is_refused_for_another_backing_file_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    let store = dir.path().join("a.store");
    let opts = OpenOptions {
        size: Some(1 << 20),
        ..OpenOptions::default()
    };
    let e = Engine::open_files(&a, &store, &opts).unwrap();
    e.create_snapshot("x").unwrap();
    e.close().unwrap();
    let before = std::fs::read(&store).unwrap();
    std::fs::write(&b, vec![0u8; 1 << 20]).unwrap();
    let err = Engine::open_files(&b, &store, &OpenOptions::default())
        .err()
        .expect("wrong store accepted");
    assert!(matches!(err, Error::WrongOrigin { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("a.img") && msg.contains("b.img"), "{msg}");
    assert_eq!(std::fs::read(&store).unwrap(), before, "store changed");
    // The right origin still opens.
    Engine::open_files(&a, &store, &OpenOptions::default()).unwrap();
}

#[test]
fn a_store_open_for_writing_is_refused_to_everyone_else_until_it_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let store = dir.path().join("a.store");
    let wait = std::time::Duration::from_millis(100);
    let rw = OpenOptions {
        size: Some(1 << 20),
        lock_wait: wait,
        ..OpenOptions::default()
    };
    let ro = OpenOptions {
        read_only: true,
        lock_wait: wait,
        ..OpenOptions::default()
    };
    let e = Engine::open_files(&a, &store, &rw).unwrap();
    e.write(0, &block(7)).unwrap();
    for opts in [&rw, &ro] {
        let err = Engine::open_files(&a, &store, opts)
            .err()
            .expect("second open of a store in use");
        assert!(
            matches!(
                err,
                Error::InUse {
                    what: "backing",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("a.img"), "{err}");
        assert_eq!(err.errno(), libc_ebusy());
    }
    // Another backing file cannot reach a store in use either: the store's own lock says so.
    let b = dir.path().join("b.img");
    std::fs::write(&b, vec![0u8; 1 << 20]).unwrap();
    let err = Engine::open_files(&b, &store, &rw).err().unwrap();
    assert!(matches!(err, Error::InUse { what: "store", .. }), "{err}");
    e.close().unwrap();
    // Readers share; a writer waits for them to go.
    let r1 = Engine::open_files(&a, &store, &ro).unwrap();
    let r2 = Engine::open_files(&a, &store, &ro).unwrap();
    let mut buf = block(0);
    r2.read(0, &mut buf).unwrap();
    assert_eq!(buf, block(7));
    assert!(matches!(
        Engine::open_files(&a, &store, &rw).err().unwrap(),
        Error::InUse { .. }
    ));
    drop(r1);
    // A holder that lets go within the wait is waited for, not reported.
    let slow = OpenOptions {
        lock_wait: std::time::Duration::from_secs(5),
        ..rw.clone()
    };
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(r2);
    });
    Engine::open_files(&a, &store, &slow).unwrap();
    t.join().unwrap();
}

fn libc_ebusy() -> i32 {
    16
}

#[test]
fn a_missing_backing_file_without_size_is_a_clear_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("nope.img");
    let s = dir.path().join("nope.store");
    let err = Engine::open_files(&a, &s, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!s.exists() && !a.exists());
}

#[test]
fn a_file_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let s = dir.path().join("junk");
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&s, vec![7u8; 1 << 16]).unwrap();
    let err = Engine::open_files(&a, &s, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
}

#[test]
fn files_with_direct_io_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let s = dir.path().join("a.store");
    let opts = OpenOptions {
        size: Some(1 << 20),
        direct_io: FileDev::create(&dir.path().join("probe"), true).is_ok(),
        ..OpenOptions::default()
    };
    let e = Engine::open_files(&a, &s, &opts).unwrap();
    e.write(100, b"hello").unwrap();
    e.create_snapshot("one").unwrap();
    e.write(100, b"world").unwrap();
    let mut buf = [0u8; 5];
    e.read_snapshot("one", 100, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    e.restore("one", &|_, _| {}).unwrap();
    e.read(100, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    let out = dir.path().join("one.img");
    e.export("one", &out, &|_, _| {}).unwrap();
    let img = std::fs::read(&out).unwrap();
    assert_eq!(img.len(), 1 << 20);
    assert_eq!(&img[100..105], b"hello");
    e.close().unwrap();
}

#[test]
fn concurrent_writers_see_snapshots_as_consistent_cuts() {
    const THREADS: usize = 8;
    const SNAPS: usize = 20;
    let (o, s) = mem(THREADS);
    let e = Arc::new(Engine::format(o, s, &OpenOptions::default()).unwrap());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (e, acked, stop) = (e.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut v = 0u64;
                while !stop.load(Ordering::Relaxed) && v < 10_000_000 {
                    v += 1;
                    let mut b = vec![0u8; BS];
                    b[..8].copy_from_slice(&v.to_le_bytes());
                    e.write((t * BS) as u64, &b).unwrap();
                    acked[t].store(v, Ordering::Release);
                }
            })
        })
        .collect();
    let mut cuts = Vec::new();
    for i in 0..SNAPS {
        let lo: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
        let name = format!("c{i}");
        e.create_snapshot(&name).unwrap();
        // A write acknowledged after the snapshot returned started after it.
        let hi: Vec<u64> = acked
            .iter()
            .map(|a| a.load(Ordering::Acquire) + 1)
            .collect();
        // Let every thread write after this snapshot before taking the next, so each interval
        // has a first write (a preserve) from every thread.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while acked
            .iter()
            .zip(&hi)
            .any(|(a, h)| a.load(Ordering::Acquire) <= *h)
        {
            assert!(std::time::Instant::now() < deadline, "writers stalled");
            std::thread::yield_now();
        }
        cuts.push((name, lo, hi));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    for (name, lo, hi) in cuts {
        for t in 0..THREADS {
            let mut b = [0u8; 8];
            e.read_snapshot(&name, (t * BS) as u64, &mut b).unwrap();
            let v = u64::from_le_bytes(b);
            assert!(
                lo[t] <= v && v <= hi[t],
                "{name} thread {t}: {v} not in {}..={}",
                lo[t],
                hi[t]
            );
        }
    }
    assert_eq!(e.stats().preserves, (SNAPS * THREADS) as u64);
    assert!(e.check().unwrap().ok());
}

/// A store device that runs `before_sync` ahead of every sync: a delay (a real disk's cache
/// flush) or an injected failure.
struct OnSync<F> {
    inner: Arc<dyn BlockDev>,
    before_sync: F,
}

impl<F: Fn() -> std::io::Result<()> + Send + Sync> BlockDev for OnSync<F> {
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, off)
    }
    fn sync(&self) -> std::io::Result<()> {
        (self.before_sync)()?;
        self.inner.sync()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn can_grow(&self) -> bool {
        self.inner.can_grow()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn grow_to(&self, len: u64) -> std::io::Result<()> {
        self.inner.grow_to(len)
    }
}

#[test]
fn concurrent_first_writes_share_one_commit_group() {
    const THREADS: usize = 16;
    let o: Arc<dyn BlockDev> = Arc::new(MemDev::new("o", (THREADS * BS) as u64, false));
    let s: Arc<dyn BlockDev> = Arc::new(OnSync {
        inner: Arc::new(MemDev::new("s", 0, true)),
        before_sync: || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        },
    });
    let e = Arc::new(Engine::format(o, s, &OpenOptions::default()).unwrap());
    e.create_snapshot("a").unwrap();
    let before = e.stats().commit_groups;
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let hs: Vec<_> = (0..THREADS)
        .map(|t| {
            let (e, barrier) = (e.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                e.write((t * BS) as u64, &block(7)).unwrap();
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let st = e.stats();
    assert_eq!(st.preserves, THREADS as u64);
    // While the first group syncs (20 ms), the others queue up and go out together.
    let groups = st.commit_groups - before;
    assert!(
        groups <= 4,
        "{THREADS} preserves took {groups} commit groups: {st:?}"
    );
    assert!(st.max_group_requests >= 4, "{st:?}");
}

#[test]
fn a_store_capped_below_its_growth_step_fills_cleanly_with_large_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("full.img");
    let st = dir.path().join("full.store");
    let opts = OpenOptions {
        size: Some(64 << 20),
        max_store_bytes: Some(8 << 20),
        ..OpenOptions::default()
    };
    let e = Arc::new(Engine::open_files(&a, &st, &opts).unwrap());
    let mb = vec![0x11u8; 1 << 20];
    for i in 0..16u64 {
        e.write(i << 20, &mb).unwrap();
    }
    e.create_snapshot("s").unwrap();
    let hs: Vec<_> = (0..4u64)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mb = vec![0x22u8 + t as u8; 1 << 20];
                let mut errs = 0;
                for i in (t..16).step_by(4) {
                    if e.write(i << 20, &mb).is_err() {
                        errs += 1;
                    }
                }
                errs
            })
        })
        .collect();
    let errs: u32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(errs > 0, "16 MiB of changes fit in an 8 MiB store");
    assert!(e.status().store_full);
    let rep = e.check().unwrap();
    assert!(rep.ok(), "{:?}", rep.problems);
    assert_eq!(rep.unreferenced_slots, 0);
    let len = std::fs::metadata(&st).unwrap().len();
    assert!(
        len <= 8 << 20,
        "store grew to {len} bytes past its 8 MiB cap"
    );
}

/// 64 writes of 16 blocks after snapshot "a", one at a time, dropped without close: 64 commit
/// groups, each with one journal block and 16 preserved blocks in consecutive slots (the shape
/// of 4 KiB first writes committed in groups of about 16), all to be replayed on open.
const REPLAY_RUN: usize = 16;
const REPLAY_WRITES: usize = 64;

fn replay_data(w: usize) -> Vec<u8> {
    (0..REPLAY_RUN * BS)
        .map(|i| (w * 7 + i / BS + 1) as u8)
        .collect()
}

fn replay_opts() -> OpenOptions {
    OpenOptions {
        checkpoint_every: 1 << 20,
        ..OpenOptions::default()
    }
}

fn store_needing_replay() -> (Arc<dyn BlockDev>, Arc<dyn BlockDev>) {
    let o: Arc<dyn BlockDev> = Arc::new(MemDev::new(
        "o",
        (REPLAY_RUN * REPLAY_WRITES * BS) as u64,
        false,
    ));
    let s: Arc<dyn BlockDev> = Arc::new(MemDev::new("s", 0, true));
    let e = Engine::format(o.clone(), s.clone(), &replay_opts()).unwrap();
    e.create_snapshot("a").unwrap();
    for w in 0..REPLAY_WRITES {
        e.write((w * REPLAY_RUN * BS) as u64, &replay_data(w))
            .unwrap();
    }
    drop(e);
    (o, s)
}

/// The device reads as written and snapshot "a" as zeros, as before the replay.
fn assert_replayed(e: &Engine) {
    let r = e.recovery();
    assert!(r.journal_blocks >= REPLAY_WRITES as u64, "{r:?}");
    assert_eq!(r.groups_dropped, 0, "{r:?}");
    let mut buf = vec![1u8; REPLAY_RUN * BS];
    for w in [0, REPLAY_WRITES / 2, REPLAY_WRITES - 1] {
        let off = (w * REPLAY_RUN * BS) as u64;
        e.read(off, &mut buf).unwrap();
        assert_eq!(buf, replay_data(w), "device, write {w}");
        e.read_snapshot("a", off, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "snapshot, write {w}");
    }
}

#[test]
fn replay_reads_the_journal_and_the_last_groups_data_in_runs_not_block_by_block() {
    let (o, s) = store_needing_replay();
    let counted = Arc::new(CountingDev::new(s));
    let e = Engine::open(o, counted.clone(), &replay_opts()).unwrap();
    let reads = counted.counts().0;
    let journal = e.recovery().journal_blocks;
    // Block by block this took a read per journal block plus one per preserved block of
    // the last group (89).
    assert!(
        reads < journal / 2,
        "{reads} store reads to replay {journal} journal blocks"
    );
    assert_replayed(&e);
}

/// While armed, fails every read of more than one block: the read-ahead's, during open.
struct NoLongReads {
    inner: Arc<dyn BlockDev>,
    armed: std::sync::atomic::AtomicBool,
    refused: AtomicU64,
}

impl BlockDev for NoLongReads {
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        if buf.len() > BS && self.armed.load(Ordering::Relaxed) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::from_raw_os_error(5));
        }
        self.inner.read_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, off)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn can_grow(&self) -> bool {
        true
    }
    fn grow_to(&self, len: u64) -> std::io::Result<()> {
        self.inner.grow_to(len)
    }
    fn name(&self) -> String {
        "no-long-reads".into()
    }
}

#[test]
fn an_unreadable_slot_in_the_read_ahead_does_not_fail_a_replay_that_never_needed_it() {
    let (o, s) = store_needing_replay();
    let dev = Arc::new(NoLongReads {
        inner: s,
        armed: true.into(),
        refused: AtomicU64::new(0),
    });
    let e = Engine::open(o, dev.clone(), &replay_opts()).unwrap();
    dev.armed.store(false, Ordering::Relaxed);
    assert!(
        dev.refused.load(Ordering::Relaxed) > 0,
        "no read-ahead was tried"
    );
    assert_replayed(&e);
}

/// A store whose syncs or reads can be held: while `held` names an operation, that operation
/// waits (and says so through `entered`) until `held` is cleared.
struct Held {
    inner: Arc<dyn BlockDev>,
    held: std::sync::Mutex<Option<&'static str>>,
    cv: std::sync::Condvar,
    entered: std::sync::mpsc::SyncSender<()>,
}

impl Held {
    fn new(inner: Arc<dyn BlockDev>) -> (Arc<Held>, std::sync::mpsc::Receiver<()>) {
        let (entered, rx) = std::sync::mpsc::sync_channel(1);
        let h = Held {
            inner,
            held: std::sync::Mutex::new(None),
            cv: std::sync::Condvar::new(),
            entered,
        };
        (Arc::new(h), rx)
    }

    fn hold(&self, op: Option<&'static str>) {
        *self.held.lock().unwrap() = op;
        self.cv.notify_all();
    }

    fn gate(&self, op: &str) {
        let mut held = self.held.lock().unwrap();
        if *held == Some(op) {
            let _ = self.entered.try_send(());
            while *held == Some(op) {
                held = self.cv.wait(held).unwrap();
            }
        }
    }
}

impl BlockDev for Held {
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        self.gate("read");
        self.inner.read_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, off)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.gate("sync");
        self.inner.sync()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn can_grow(&self) -> bool {
        self.inner.can_grow()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

/// Runs `work` on another thread while `store` holds `op` inside `busy` (started first), and
/// returns what `work` gave; panics if `work` did not finish while `busy` was held.
fn while_held<B: Send, W: Send>(
    store: &Held,
    entered: &std::sync::mpsc::Receiver<()>,
    op: &'static str,
    busy: impl FnOnce() -> B + Send,
    work: impl FnOnce() -> W + Send,
) -> (B, W) {
    store.hold(Some(op));
    std::thread::scope(|s| {
        let busy = s.spawn(busy);
        entered
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("never reached the held {op}"));
        let (done, finished) = std::sync::mpsc::channel();
        s.spawn(move || {
            let _ = done.send(work());
        });
        let got = finished.recv_timeout(std::time::Duration::from_secs(60));
        store.hold(None);
        let got = got.unwrap_or_else(|_| panic!("the work waited for the held {op}"));
        (busy.join().unwrap(), got)
    })
}

/// An engine on a [`Held`] store with snapshot "a" and blocks `0..first` preserved in it.
fn held_engine(first: u64) -> (Arc<Held>, std::sync::mpsc::Receiver<()>, Engine) {
    let (origin, inner) = mem(256);
    let (store, entered) = Held::new(inner);
    let e = Engine::format(origin, store.clone(), &OpenOptions::default()).unwrap();
    e.create_snapshot("a").unwrap();
    for b in 0..first {
        e.write(b * BS as u64, &block(7)).unwrap();
    }
    (store, entered, e)
}

#[test]
fn reads_and_plain_writes_go_on_while_a_checkpoint_syncs() {
    let (store, entered, e) = held_engine(128);
    // Blocks already preserved in the newest delta need no commit, and reads need none
    // either: both must finish while the checkpoint is inside its I/O.
    let (cp, (r, snaps)) = while_held(
        &store,
        &entered,
        "sync",
        || e.checkpoint(),
        || {
            let mut buf = vec![0u8; BS];
            let r = e
                .read(3 * BS as u64, &mut buf)
                .and_then(|()| e.write(5 * BS as u64, &block(9)))
                .and_then(|()| e.read(5 * BS as u64, &mut buf));
            (r.map(|()| buf), e.status().snapshots.len())
        },
    );
    assert!(cp.unwrap());
    assert_eq!(r.unwrap(), block(9));
    assert_eq!(snaps, 1);
    let mut buf = vec![0u8; BS];
    e.read_snapshot("a", 5 * BS as u64, &mut buf).unwrap();
    assert_eq!(buf, vec![0u8; BS]);
}

#[test]
fn a_check_reading_the_store_stalls_no_write() {
    let (store, entered, e) = held_engine(64);
    // While the check reads preserved blocks, a first write (a preserve and its commit) and
    // a plain write both complete.
    let (rep, w) = while_held(
        &store,
        &entered,
        "read",
        || e.check(),
        || {
            e.write(100 * BS as u64, &block(5))
                .and_then(|()| e.write(3 * BS as u64, &block(6)))
        },
    );
    w.unwrap();
    let rep = rep.unwrap();
    assert!(rep.ok(), "{:?}", rep.problems);
    assert_eq!(rep.preserved_blocks, 64);
    assert_eq!(e.check().unwrap().preserved_blocks, 65);
}

/// A restore spanning many runs, restored by parallel workers from a delta whose slots are
/// partly consecutive (1 MiB writes) and partly scattered (single blocks, a partial write),
/// brings back the snapshot's exact bytes, keeps the replaced image in the pre-restore
/// snapshot, reports exactly the blocks it wrote, and is a no-op when repeated.
#[test]
fn parallel_restore_is_exact_reversible_and_idempotent() {
    let size = 16 << 20;
    let origin: Arc<dyn BlockDev> = Arc::new(MemDev::new("origin", size as u64, false));
    let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
    let e = Engine::format(origin, store, &OpenOptions::default()).unwrap();
    let a = fixtures::block_pattern(1, 0, size);
    e.write(0, &a).unwrap();
    e.create_snapshot("s").unwrap();
    let mut changed = std::collections::BTreeSet::new();
    for (k, chunk) in [3usize, 7, 8, 15].iter().enumerate() {
        let off = chunk << 20;
        e.write(
            off as u64,
            &fixtures::block_pattern(10 + k as u64, 0, 1 << 20),
        )
        .unwrap();
        changed.extend(off / BS..(off + (1 << 20)) / BS);
    }
    for b in [5usize, 700, 701, 2000, 4095] {
        e.write(
            (b * BS) as u64,
            &fixtures::block_pattern(100 + b as u64, 0, BS),
        )
        .unwrap();
        changed.insert(b);
    }
    // Part of one block; the rest of it keeps the snapshot's bytes.
    e.write((3000 * BS + 100) as u64, &[0xEE; 50]).unwrap();
    changed.insert(3000);
    let mut b_img = vec![0u8; size];
    e.read(0, &mut b_img).unwrap();

    let rep = e.restore("s", &|_, _| {}).unwrap();
    assert_eq!(rep.blocks, changed.len() as u64);
    assert_eq!(rep.written, changed.len() as u64);
    assert_eq!(rep.skipped, 0);
    let mut now = vec![0u8; size];
    e.read(0, &mut now).unwrap();
    assert!(now == a, "the live image is not the snapshot's");
    let mut pre = vec![0u8; size];
    e.read_snapshot(&rep.pre_restore, 0, &mut pre).unwrap();
    assert!(
        pre == b_img,
        "the pre-restore snapshot lost the replaced image"
    );

    let again = e.restore("s", &|_, _| {}).unwrap();
    assert_eq!(again.written, 0);
    e.read(0, &mut now).unwrap();
    assert!(now == a);
    let c = e.check().unwrap();
    assert!(c.ok(), "{:?}", c.problems);

    // Undo: back to the image the restore replaced.
    let undo = e.restore(&rep.pre_restore, &|_, _| {}).unwrap();
    assert_eq!(undo.written, changed.len() as u64);
    e.read(0, &mut now).unwrap();
    assert!(
        now == b_img,
        "restoring the pre-restore snapshot did not undo the restore"
    );
}

/// An engine that stopped taking writes (a store sync failed) still syncs the origin when it
/// closes: writes it acknowledged before the failure may sit only in the origin's cache.
#[test]
fn close_syncs_the_origin_even_after_the_engine_failed() {
    let counted = counted_origin(64);
    let origin: Arc<dyn BlockDev> = counted.clone();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Arc::new(OnSync {
        inner: Arc::new(MemDev::new("s", 0, true)),
        before_sync: {
            let broken = broken.clone();
            move || match broken.load(Ordering::Relaxed) {
                true => Err(std::io::Error::other("injected sync failure")),
                false => Ok(()),
            }
        },
    });
    let e = Engine::format(origin, store, &OpenOptions::default()).unwrap();
    e.write(0, &block(1)).unwrap();
    e.create_snapshot("s").unwrap();
    broken.store(true, Ordering::Relaxed);
    // A first write after the snapshot needs a preserve: its group's sync fails.
    assert!(e.write(BS as u64, &block(2)).is_err());
    assert!(e.status().failed.is_some(), "the engine did not stop");
    let before = counted.counts().2;
    let _ = e.close();
    assert!(
        counted.counts().2 > before,
        "close of a failed engine did not sync the origin"
    );
}

/// A caller-driven write whose origin I/O fell short, redone by the engine, against a snapshot
/// that is already waiting for the gate: the snapshot must see the write wholly or not at all,
/// never the half-written block (issue 24, finding 3). `short` does the caller's part up to the
/// short write and returns what redoes it.
fn snapshot_waiting_on_a_short_write(
    snapshot_first: bool,
    short: impl for<'e> FnOnce(&'e Engine, &dyn BlockDev, &[u8]) -> Box<dyn FnOnce() + 'e>,
) {
    let origin: Arc<dyn BlockDev> = Arc::new(MemDev::new("o", 4 * BS as u64, false));
    let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("s", 0, true));
    let old = fixtures::block_pattern(1, 0, 2 * BS);
    let new = fixtures::block_pattern(2, 0, 2 * BS);
    origin.write_at(&old, 0).unwrap();
    let e = Engine::format(origin.clone(), store, &OpenOptions::default()).unwrap();
    if snapshot_first {
        e.create_snapshot("before").unwrap();
    }
    let redo = short(&e, &*origin, &new);
    std::thread::scope(|s| {
        let snap = s.spawn(|| e.create_snapshot("mid"));
        // Give the snapshot time to queue on the gate (an ordering aid, not a measurement:
        // with the gate held it can only finish after the redo, however long this waits).
        std::thread::sleep(std::time::Duration::from_millis(200));
        redo();
        snap.join().unwrap().unwrap();
    });
    let mut got = vec![0u8; 2 * BS];
    e.read_snapshot("mid", 0, &mut got).unwrap();
    assert!(got == new, "the snapshot holds a half-written block");
    e.read(0, &mut got).unwrap();
    assert!(got == new);
    if snapshot_first {
        e.read_snapshot("before", 0, &mut got).unwrap();
        assert!(got == old, "the earlier snapshot changed");
    }
    assert!(e.check().unwrap().ok());
}

#[test]
fn a_short_direct_write_is_redone_before_any_snapshot_can_see_it() {
    snapshot_waiting_on_a_short_write(false, |e, origin, new| {
        let w = e
            .try_direct_write(0, new)
            .expect("a plain write is admitted");
        // The caller's write on the ring moved only the first block.
        origin.write_at(&new[..BS], 0).unwrap();
        let new = new.to_vec();
        Box::new(move || w.redo(&new).unwrap())
    });
}

#[test]
fn a_short_copy_on_write_is_redone_before_any_snapshot_can_see_it() {
    snapshot_waiting_on_a_short_write(true, |e, origin, new| {
        let mut c = e.try_cow_write(0, new).expect("a first write is admitted");
        for sp in c.reads() {
            origin
                .read_at(&mut c.old_mut()[sp.at..sp.at + sp.len], sp.off)
                .unwrap();
        }
        let p = c.prepare(new).expect("the originals differ");
        let r = e.commit_preserves(vec![p]).pop().unwrap();
        c.committed(r.is_ok());
        r.unwrap();
        assert_eq!(c.writes().len(), 1);
        origin.write_at(&new[..BS], 0).unwrap();
        let new = new.to_vec();
        Box::new(move || c.redo(&new).unwrap())
    });
}

#[test]
fn a_pinned_snapshot_cannot_be_deleted_and_keeps_its_bytes_while_everything_else_changes() {
    let (o, s) = mem(16);
    let e = Engine::format(o, s, &OpenOptions::default()).unwrap();
    let first = fixtures::block_pattern(3, 0, 4 * BS);
    e.write(0, &first).unwrap();
    e.create_snapshot("a").unwrap();
    e.write(0, &fixtures::block_pattern(4, 0, 4 * BS)).unwrap();
    e.create_snapshot("b").unwrap();
    let id = e.pin_snapshot("a").unwrap();
    let again = e.pin_snapshot("a").unwrap();
    assert_eq!(id, again);
    assert!(matches!(
        e.pin_snapshot("nope"),
        Err(Error::NoSuchSnapshot(_))
    ));
    let err = e.delete_snapshot("a").unwrap_err();
    assert!(
        matches!(err, Error::SnapshotPinned(ref n) if n == "a"),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EBUSY);
    // Everything around it goes on: writes, another snapshot's delete, a restore.
    e.write(BS as u64, &fixtures::block_pattern(5, 0, 2 * BS))
        .unwrap();
    e.delete_snapshot("b").unwrap();
    e.restore("a", &|_, _| {}).unwrap();
    e.write(0, &fixtures::block_pattern(6, 0, BS)).unwrap();
    let mut got = vec![0u8; 4 * BS];
    e.read_snapshot("a", 0, &mut got).unwrap();
    assert!(got == first);
    e.unpin_snapshot(id);
    assert!(e.is_pinned("a"), "pinned twice, unpinned once");
    assert!(e.delete_snapshot("a").is_err());
    e.unpin_snapshot(id);
    assert!(!e.is_pinned("a"));
    e.delete_snapshot("a").unwrap();
    assert!(e.check().unwrap().ok());
}
