//! Crash consistency with concurrent writers: commit groups then carry several requests, and
//! the power fails in the middle of them. Each thread owns two blocks and writes increasing
//! versions (every 512-byte sector carries the version), while the main thread takes
//! snapshots and flushes. After the cut and recovery:
//! - every sector of the live image holds a version of its own block that is no older than
//!   the last one acknowledged before the last completed flush, and no newer than the last
//!   one attempted;
//! - every snapshot that was created holds, for each block, one untorn version between the
//!   last acknowledged before the snapshot and the first started after it;
//! - the store passes its check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fixtures::Rng;
use snapblk_tests::faultdisk::{CrashDisk, PowerDomain, SECTOR};
use snapmap::{BlockDev, Engine, MemDev, OpenOptions};

const BS: usize = 4096;
const THREADS: usize = 4;
const BLOCKS: usize = THREADS * 2;
const SIZE: usize = BLOCKS * BS;

fn opts() -> OpenOptions {
    OpenOptions {
        checkpoint_every: 7,
        csum_entries: 16,
        store_grow_bytes: 32 << 10,
        ..OpenOptions::default()
    }
}

/// Version v of thread t goes to block 2t + v % 2.
fn block_of(t: usize, v: u64) -> usize {
    2 * t + (v % 2) as usize
}

fn content(v: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    for s in b.chunks_mut(SECTOR) {
        s[..8].copy_from_slice(&v.to_le_bytes());
        s[8] = 0x5A;
    }
    b
}

fn sector_version(s: &[u8]) -> u64 {
    u64::from_le_bytes(s[..8].try_into().unwrap_or([0; 8]))
}

/// The newest version ≤ `upto` that thread `t` writes to block `b` (0: the initial zeros).
fn last_for_block(t: usize, b: usize, upto: u64) -> u64 {
    (1..=upto).rev().find(|&v| block_of(t, v) == b).unwrap_or(0)
}

struct Snap {
    name: String,
    lo: Vec<u64>,
    hi: Vec<u64>,
}

/// What one case exercised: (snapshots verified, largest commit group in requests, writes
/// acknowledged).
fn case(seed: u64) -> (usize, u64, u64) {
    let ctx = format!("concurrent crash seed {seed} (CRASH_CONCURRENT_SEED={seed})");
    let mut rng = Rng::new(seed);
    let crash_at = 20 + rng.below(400);
    let power = PowerDomain::new(Some(crash_at));
    let o = Arc::new(CrashDisk::new("origin", &power, vec![0u8; SIZE], false));
    let s = Arc::new(
        CrashDisk::new("store", &power, Vec::new(), true)
            .with_sync_delay(std::time::Duration::from_millis(1)),
    );
    let od: Arc<dyn BlockDev> = o.clone();
    let sd: Arc<dyn BlockDev> = s.clone();
    let Ok(e) = Engine::format(od, sd, &opts()) else {
        return (0, 0, 0);
    };
    let e = Arc::new(e);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (e, acked, started, stop) =
                (e.clone(), acked.clone(), started.clone(), stop.clone());
            // Odd threads write as the ublk queue does (their preserves committed through
            // commit_preserves, their origin I/O done by the caller), sharing commit groups
            // with the others.
            let origin: Option<Arc<dyn BlockDev>> = (t % 2 == 1).then(|| o.clone() as _);
            std::thread::spawn(move || {
                for v in 1..=10_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    started[t].store(v, Ordering::SeqCst);
                    let off = (block_of(t, v) * BS) as u64;
                    let r = match &origin {
                        Some(o) => e.write_as_frontend(&**o, off, &content(v)).map(|_| ()),
                        None => e.write(off, &content(v)),
                    };
                    if r.is_err() {
                        return;
                    }
                    acked[t].store(v, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut snaps: Vec<Snap> = Vec::new();
    let flushed: Mutex<Vec<u64>> = Mutex::new(vec![0; THREADS]);
    for i in 0..200 {
        if power.crashed() {
            break;
        }
        let lo: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        if i % 2 == 0 {
            let name = format!("s{i}");
            if e.create_snapshot(&name).is_ok() {
                let hi: Vec<u64> = started
                    .iter()
                    .map(|a| a.load(Ordering::SeqCst) + 1)
                    .collect();
                snaps.push(Snap { name, lo, hi });
            }
        } else if e.flush().is_ok() {
            *flushed.lock().unwrap() = lo;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let max_started: Vec<u64> = started.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let max_group = e.stats().max_group_requests;
    let total_acked: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    drop(e);
    let mut cut = Rng::new(seed ^ 0xC0FFEE);
    let oi = o.after_power_cut(&mut cut);
    let si = s.after_power_cut(&mut cut);
    if si.is_empty() {
        return (0, max_group, total_acked);
    }
    let od = MemDev::new("origin", 0, true);
    od.write_at(&oi, 0).unwrap();
    let sdv = MemDev::new("store", 0, true);
    sdv.write_at(&si, 0).unwrap();
    let e = Engine::open(Arc::new(od), Arc::new(sdv), &opts())
        .unwrap_or_else(|err| panic!("{ctx}: reopen failed: {err}"));
    let rep = e.check().unwrap();
    assert!(rep.ok(), "{ctx}: {:?}", rep.problems);
    let flushed = flushed.into_inner().unwrap();
    let mut buf = vec![0u8; BS];
    for t in 0..THREADS {
        for b in [2 * t, 2 * t + 1] {
            e.read((b * BS) as u64, &mut buf).unwrap();
            let floor = last_for_block(t, b, flushed[t]);
            for (k, sec) in buf.chunks(SECTOR).enumerate() {
                let v = sector_version(sec);
                assert!(
                    v >= floor && v <= max_started[t] && (v == 0 || block_of(t, v) == b),
                    "{ctx}: block {b} sector {k} holds version {v}; flushed floor {floor}, max started {}",
                    max_started[t]
                );
            }
        }
    }
    let names: Vec<String> = e.snapshots().into_iter().map(|s| s.name).collect();
    for sn in &snaps {
        assert!(names.contains(&sn.name), "{ctx}: snapshot {} lost", sn.name);
        for t in 0..THREADS {
            for b in [2 * t, 2 * t + 1] {
                e.read_snapshot(&sn.name, (b * BS) as u64, &mut buf)
                    .unwrap();
                let v = sector_version(&buf[..SECTOR]);
                assert!(
                    buf.chunks(SECTOR).all(|s| sector_version(s) == v),
                    "{ctx}: snapshot {} block {b} is torn",
                    sn.name
                );
                let lo = last_for_block(t, b, sn.lo[t]);
                assert!(
                    v >= lo && v <= sn.hi[t] && (v == 0 || block_of(t, v) == b),
                    "{ctx}: snapshot {} block {b} holds version {v}, outside {lo}..={}",
                    sn.name,
                    sn.hi[t]
                );
            }
        }
    }
    (snaps.len(), max_group, total_acked)
}

#[test]
fn power_cuts_under_concurrent_writers() {
    if let Some(seed) = std::env::var("CRASH_CONCURRENT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        case(seed);
        return;
    }
    let cases: u64 = std::env::var("CRASH_CONCURRENT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (mut snaps, mut grouped, mut writes) = (0, 0, 0);
    for seed in 0..cases {
        let (n, g, w) = case(seed);
        snaps += n;
        grouped += u64::from(g > 1);
        writes += w;
    }
    eprintln!("concurrent: {cases} cuts, {snaps} snapshots verified, {writes} acknowledged writes, {grouped} cases with multi-request commit groups");
    assert!(
        snaps as u64 > cases,
        "too few snapshots were exercised: {snaps}"
    );
    assert!(
        grouped > cases / 10,
        "commit groups rarely carried several requests: {grouped}"
    );
}
