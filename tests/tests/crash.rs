//! Crash consistency: cut the power at every write/sync of short workloads (exhaustive) and at
//! random points of long ones, let the disks keep any subset of their unsynced writes (torn at
//! sector granularity), reopen, and check the invariants:
//!   1. every write acknowledged before the last completed flush is present (and nothing that
//!      was never written appears);
//!   2. every snapshot whose creation returned reads back exactly as it was taken;
//!   3. the store opens, recovers, and passes the consistency check;
//!   4. an interrupted restore, re-run, ends in exactly the snapshot's image.
//!
//! Then work continues on the recovered disks and the power is cut again, which exercises
//! recovery on top of a previously torn journal.
//!
//! Both crash-point tests run on 4 KiB tracking blocks over 512-byte sectors, and again (with
//! their own test names) on 8, 16 and 64 KiB blocks and over 4 KiB-sector (4Kn) disks: the
//! engine's journal, preserves and restores work in blocks, and a disk persists in sectors,
//! so each pairing tears the engine's writes differently. The model tracks what every sector
//! may hold at the disk's own sector size, so a 4Kn shape also checks that no 4 KiB sector
//! ends up holding a mix of two values.
//!
//! Counts: `CRASH_SEEDS` (default 200) workloads for the exhaustive test and `CRASH_CASES`
//! (default 4000) crash points for the random one, on 4 KiB blocks over 512-byte sectors.
//! The other shapes run far fewer (see `Extra`: together they add about a minute, and a case
//! costs more as the blocks grow); `CRASH_SHAPE_SCALE=n` multiplies their counts by n for a
//! longer soak.
//!
//! A failure prints the seed and crash point; `CRASH_REPLAY=seed:point:ops cargo test -p
//! snapblk-tests --test crash replay -- --nocapture` replays exactly that case, and
//! `CRASH_REPLAY=seed:point:ops:block:blocks:sector` one on another shape (the failure
//! message prints the right one). In a workload with a restore the point may land a sync or
//! so off: a restore's runs go to parallel workers, and how their preserves share commits
//! depends on timing, so such a workload's count of mutating operations varies by a few.

use std::sync::Arc;

use fixtures::{random_ops, repetitive, Geometry, Op, Rng};
use snapblk_tests::faultdisk::{CrashDisk, Fault, PowerDomain, SECTOR};
use snapmap::{BlockDev, Engine, Error, OpenOptions};

/// The device a workload runs on: tracking block size, blocks, and the sector size both
/// disks persist in.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Shape {
    block: usize,
    blocks: usize,
    sector: usize,
}

impl Shape {
    /// The shape the tests ran on before there were others; its runs and replay lines stay
    /// as they were.
    const BASE: Shape = Shape::new(4096, 12, SECTOR);

    const fn new(block: usize, blocks: usize, sector: usize) -> Shape {
        assert!(block.is_multiple_of(sector));
        Shape {
            block,
            blocks,
            sector,
        }
    }

    fn size(self) -> usize {
        self.block * self.blocks
    }

    fn geometry(self) -> Geometry {
        Geometry {
            block: self.block,
            blocks: self.blocks,
        }
    }

    /// What `CRASH_REPLAY` needs, after the seed and crash point, to replay a case.
    fn replay(self, ops_per_round: usize) -> String {
        if self == Shape::BASE {
            format!("{ops_per_round}")
        } else {
            format!(
                "{ops_per_round}:{}:{}:{}",
                self.block, self.blocks, self.sector
            )
        }
    }

    /// A disk of this shape holding `image`.
    fn disk(self, name: &str, power: &PowerDomain, image: Vec<u8>, grow: bool) -> CrashDisk {
        CrashDisk::new(name, power, image, grow).with_sector(self.sector)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} KiB blocks x {} over {}-byte sectors",
            self.block >> 10,
            self.blocks,
            self.sector
        )
    }
}

fn gen_ops(shape: Shape, rng: &mut Rng, n: usize) -> Vec<Op> {
    random_ops(rng, shape.geometry(), n)
}

#[derive(Clone, Debug, PartialEq)]
enum Certainty {
    Sure,
    Maybe,
}

#[derive(Clone, Debug)]
struct Snap {
    name: String,
    image: Vec<u8>,
    certainty: Certainty,
}

/// What the disks may hold. Each sector may hold any value it had since the last completed
/// flush (the first candidate is its flushed value).
#[derive(Clone, Debug)]
struct Model {
    /// The disks' sector: the unit a power cut keeps or loses.
    sector: usize,
    live: Vec<u8>,
    cands: Vec<Vec<Vec<u8>>>,
    snaps: Vec<Snap>,
    counter: u64,
    /// A restore that did not return: (target, image before it).
    restore: Option<(String, Vec<u8>)>,
}

impl Model {
    fn new(shape: Shape) -> Self {
        let live = vec![0u8; shape.size()];
        let mut m = Model {
            sector: shape.sector,
            cands: Vec::new(),
            live,
            snaps: Vec::new(),
            counter: 0,
            restore: None,
        };
        m.flushed();
        m
    }

    fn flushed(&mut self) {
        self.cands = self
            .live
            .chunks(self.sector)
            .map(|c| vec![c.to_vec()])
            .collect();
    }

    /// The live image now holds `data` at `off` (or may, when the write did not return).
    fn wrote(&mut self, off: usize, data: &[u8], sure: bool) {
        let mut next = self.live.clone();
        next[off..off + data.len()].copy_from_slice(data);
        let sector = self.sector;
        for s in off / sector..(off + data.len()).div_ceil(sector) {
            let v = next[s * sector..(s + 1) * sector].to_vec();
            if !self.cands[s].contains(&v) {
                self.cands[s].push(v);
            }
        }
        if sure {
            self.live = next;
        }
    }
}

fn opts(shape: Shape) -> OpenOptions {
    OpenOptions {
        block_size: shape.block as u32,
        checkpoint_every: 5,
        csum_entries: 16,
        store_grow_bytes: 32 << 10,
        ..OpenOptions::default()
    }
}

/// Runs `ops` on `e`, keeping `m` in step; stops at the first error (the power cut or an
/// injected fault) and records that operation's possible effects. Returns how many ops ran
/// (the failed one included) and the error.
fn run_ops(e: &Engine, origin: &dyn BlockDev, m: &mut Model, ops: &[Op]) -> (usize, Option<Error>) {
    for (i, op) in ops.iter().enumerate() {
        let r: Result<(), Error> = match op {
            Op::Write {
                off,
                len,
                seed,
                frontend,
            } => {
                let data = repetitive(*seed, *off, *len);
                let r = if *frontend {
                    e.write_as_frontend(origin, *off as u64, &data).map(|_| ())
                } else {
                    e.write(*off as u64, &data)
                };
                m.wrote(*off, &data, r.is_ok());
                r
            }
            Op::Rewrite { off, len, frontend } => {
                let data = m.live[*off..*off + *len].to_vec();
                let r = if *frontend {
                    e.write_as_frontend(origin, *off as u64, &data).map(|_| ())
                } else {
                    e.write(*off as u64, &data)
                };
                m.wrote(*off, &data, r.is_ok());
                r
            }
            // Every power cut already ends in a reopen; the workloads here do not ask for more.
            Op::Reopen { .. } => Ok(()),
            Op::Zero { off, len } => {
                let r = e.discard(*off as u64, *len as u64);
                m.wrote(*off, &vec![0u8; *len], r.is_ok());
                r
            }
            Op::Flush => e.flush().map(|_| m.flushed()),
            Op::Snapshot => {
                m.counter += 1;
                let name = format!("s{}", m.counter);
                let r = e.create_snapshot(&name);
                m.snaps.push(Snap {
                    name,
                    image: m.live.clone(),
                    certainty: if r.is_ok() {
                        Certainty::Sure
                    } else {
                        Certainty::Maybe
                    },
                });
                if r.is_ok() {
                    m.flushed();
                }
                r.map(|_| ())
            }
            Op::Delete(k) => {
                if m.snaps.is_empty() {
                    Ok(())
                } else {
                    let i = (*k % m.snaps.len() as u64) as usize;
                    let r = e.delete_snapshot(&m.snaps[i].name);
                    match &r {
                        Ok(()) => {
                            m.snaps.remove(i);
                        }
                        Err(_) => m.snaps[i].certainty = Certainty::Maybe,
                    }
                    r
                }
            }
            Op::Restore(k) => {
                let sure: Vec<usize> = (0..m.snaps.len())
                    .filter(|&i| m.snaps[i].certainty == Certainty::Sure)
                    .collect();
                if sure.is_empty() {
                    Ok(())
                } else {
                    let i = sure[(*k % sure.len() as u64) as usize];
                    let target = m.snaps[i].clone();
                    let before = m.live.clone();
                    match e.restore(&target.name, &|_, _| {}) {
                        Ok(rep) => {
                            m.restore = None;
                            // A resumed restore reuses the pre-restore snapshot it took first.
                            if !m.snaps.iter().any(|s| s.name == rep.pre_restore) {
                                m.snaps.push(Snap {
                                    name: rep.pre_restore,
                                    image: before,
                                    certainty: Certainty::Sure,
                                });
                            }
                            m.live = target.image.clone();
                            m.flushed();
                            Ok(())
                        }
                        Err(err) => {
                            // Any block may hold the target's bytes now.
                            let img = target.image.clone();
                            m.wrote(0, &img, false);
                            // A pre-restore snapshot the engine lists was committed.
                            for sn in e.snapshots() {
                                if !m.snaps.iter().any(|x| x.name == sn.name) {
                                    m.snaps.push(Snap {
                                        name: sn.name,
                                        image: before.clone(),
                                        certainty: Certainty::Sure,
                                    });
                                }
                            }
                            m.restore = Some((target.name, before));
                            Err(err)
                        }
                    }
                }
            }
            Op::Checkpoint => e.checkpoint().map(|_| ()),
        };
        if let Err(err) = r {
            return (i + 1, Some(err));
        }
    }
    (ops.len(), None)
}

/// Every snapshot the model is sure of must exist and read back exactly as taken; one whose
/// create or delete failed may or may not exist. What the engine lists is the truth from here.
fn settle_snapshots(e: &Engine, m: &mut Model, ctx: &str) {
    let names: Vec<String> = e.snapshots().into_iter().map(|s| s.name).collect();
    let mut buf = vec![0u8; m.live.len()];
    m.snaps.retain_mut(|sn| {
        let exists = names.contains(&sn.name);
        assert!(
            exists || sn.certainty == Certainty::Maybe,
            "{ctx}: snapshot {} lost",
            sn.name
        );
        if exists {
            e.read_snapshot(&sn.name, 0, &mut buf).unwrap();
            assert!(buf == sn.image, "{ctx}: snapshot {} changed", sn.name);
        }
        sn.certainty = Certainty::Sure;
        exists
    });
}

/// A snapshot the model does not know may only be the pre-restore snapshot of a restore that
/// did not return; it must hold the image from before that restore.
fn adopt_pre_restore(e: &Engine, m: &mut Model, ctx: &str) {
    let mut buf = vec![0u8; m.live.len()];
    for n in e.snapshots().into_iter().map(|s| s.name) {
        if !m.snaps.iter().any(|s| s.name == n) {
            let (_, before) = m
                .restore
                .as_ref()
                .unwrap_or_else(|| panic!("{ctx}: unknown snapshot {n} appeared"));
            assert!(n.starts_with("pre-restore-"), "{ctx}: unknown snapshot {n}");
            e.read_snapshot(&n, 0, &mut buf).unwrap();
            assert!(
                &buf == before,
                "{ctx}: pre-restore snapshot {n} is not the image before the restore"
            );
            m.snaps.push(Snap {
                name: n,
                image: before.clone(),
                certainty: Certainty::Sure,
            });
        }
    }
}

/// Reopens the disks after a power cut and checks every invariant; leaves `m` describing the
/// recovered state exactly and returns the recovered disk images.
fn recover_and_verify(
    shape: Shape,
    origin: Vec<u8>,
    store: Vec<u8>,
    m: &mut Model,
    ctx: &str,
) -> (Vec<u8>, Vec<u8>) {
    // Disks that keep power: the recovering engine sees the same sector size as the one that
    // crashed.
    let power = PowerDomain::new(None);
    let o = Arc::new(shape.disk("origin", &power, origin, false));
    let s = Arc::new(shape.disk("store", &power, store, true));
    let od: Arc<dyn BlockDev> = o.clone();
    let sd: Arc<dyn BlockDev> = s.clone();
    let e = match Engine::open(od, sd, &opts(shape)) {
        Ok(e) => e,
        Err(err) => panic!("{ctx}: store does not reopen after the crash: {err}"),
    };
    let rep = e
        .check()
        .unwrap_or_else(|err| panic!("{ctx}: check failed to run: {err}"));
    assert!(rep.ok(), "{ctx}: check found {:?}", rep.problems);
    assert_eq!(rep.unreferenced_slots, 0, "{ctx}: slots leaked");
    // Invariant 1: the live image.
    let mut live = vec![0u8; shape.size()];
    e.read(0, &mut live).unwrap();
    for (i, c) in live.chunks(shape.sector).enumerate() {
        assert!(
            m.cands[i].iter().any(|v| v == c),
            "{ctx}: sector {i} holds bytes that were never written there since the last flush"
        );
    }
    // Invariant 2: snapshots.
    settle_snapshots(&e, m, ctx);
    adopt_pre_restore(&e, m, ctx);
    m.live = live.clone();
    // Invariant 4: an interrupted restore, re-run, lands exactly.
    if let Some((target, _)) = m.restore.take() {
        if let Some(t) = m.snaps.iter().find(|s| s.name == target).cloned() {
            let before = m.live.clone();
            let rep = e
                .restore(&target, &|_, _| {})
                .unwrap_or_else(|err| panic!("{ctx}: re-running the restore failed: {err}"));
            e.read(0, &mut live).unwrap();
            assert!(
                live == t.image,
                "{ctx}: re-run restore did not produce {target}"
            );
            if !m.snaps.iter().any(|s| s.name == rep.pre_restore) {
                m.snaps.push(Snap {
                    name: rep.pre_restore,
                    image: before,
                    certainty: Certainty::Sure,
                });
            }
            m.live = live.clone();
            let rep = e.check().unwrap();
            assert!(
                rep.ok(),
                "{ctx}: check after re-run restore: {:?}",
                rep.problems
            );
        }
    }
    m.flushed();
    drop(e);
    (o.current(), s.current())
}

/// One round on disks `images` (None: format new ones): run `ops` with the power failing at
/// mutating operation `crash_at`, then cut power and take what survives.
fn round(
    shape: Shape,
    images: Option<(Vec<u8>, Vec<u8>)>,
    m: &mut Model,
    ops: &[Op],
    crash_at: Option<u64>,
    rng: &mut Rng,
) -> (Vec<u8>, Vec<u8>, u64) {
    let power = PowerDomain::new(crash_at);
    let (oi, si) = images.unwrap_or((vec![0u8; shape.size()], Vec::new()));
    let o = Arc::new(shape.disk("origin", &power, oi, false));
    let s = Arc::new(shape.disk("store", &power, si, true));
    let od: Arc<dyn BlockDev> = o.clone();
    let sd: Arc<dyn BlockDev> = s.clone();
    let fresh = m.snaps.is_empty() && s.len().unwrap_or(0) == 0;
    let opened = if fresh {
        Engine::format(od, sd, &opts(shape))
    } else {
        Engine::open(od, sd, &opts(shape))
    };
    if let Ok(e) = opened {
        let _ = run_ops(&e, &*o, m, ops);
    } else if fresh {
        // Power failed while formatting: nothing was ever acknowledged.
        return (vec![0u8; shape.size()], Vec::new(), power.ops());
    }
    (o.after_power_cut(rng), s.after_power_cut(rng), power.ops())
}

fn case(shape: Shape, seed: u64, crash_at: u64, ops_per_round: usize) {
    let replay = shape.replay(ops_per_round);
    let ctx = if shape == Shape::BASE {
        format!(
            "seed {seed} crash point {crash_at} (replay: CRASH_REPLAY={seed}:{crash_at}:{replay})"
        )
    } else {
        format!("{shape}: seed {seed} crash point {crash_at} (replay: CRASH_REPLAY={seed}:{crash_at}:{replay})")
    };
    let mut rng = Rng::new(seed);
    let ops1 = gen_ops(shape, &mut rng, ops_per_round);
    let ops2 = gen_ops(shape, &mut rng, ops_per_round);
    let mut cut = Rng::new(seed ^ crash_at.wrapping_mul(0x9E37));
    let mut m = Model::new(shape);
    let (o, s, n) = round(shape, None, &mut m, &ops1, Some(crash_at), &mut cut);
    if s.is_empty() {
        return;
    }
    let (o, s) = recover_and_verify(shape, o, s, &mut m, &format!("{ctx}, after the first cut"));
    let second = cut.below(2 * n.max(1) + 1);
    let (o, s, _) = round(shape, Some((o, s)), &mut m, &ops2, Some(second), &mut cut);
    recover_and_verify(
        shape,
        o,
        s,
        &mut m,
        &format!("{ctx}, after the second cut at {second}"),
    );
}

fn ops_in_first_round(shape: Shape, seed: u64, ops_per_round: usize) -> u64 {
    let mut rng = Rng::new(seed);
    let ops1 = gen_ops(shape, &mut rng, ops_per_round);
    let mut m = Model::new(shape);
    round(shape, None, &mut m, &ops1, None, &mut Rng::new(0)).2
}

/// `var` from the environment, or `default`.
fn count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Cuts the power at every mutating operation of the first round of `seeds` 10-operation
/// workloads on `shape`.
fn every_crash_point(shape: Shape, seeds: u64) {
    let mut points = 0u64;
    for seed in 0..seeds {
        let n = ops_in_first_round(shape, seed, 10);
        for k in 0..=n {
            case(shape, seed, k, 10);
            points += 1;
        }
    }
    if shape == Shape::BASE {
        eprintln!("exhaustive: {points} crash points over {seeds} workloads");
    } else {
        eprintln!("exhaustive, {shape}: {points} crash points over {seeds} workloads");
    }
    assert!(
        points >= 25 * seeds,
        "{shape}: only {points} crash points over {seeds} workloads"
    );
}

/// Cuts the power at one random point in each of `cases` 60-operation workloads on `shape`.
fn random_crash_points(shape: Shape, cases: u64) {
    for i in 0..cases {
        let seed = 1_000_000 + i;
        let n = ops_in_first_round(shape, seed, 60);
        let k = Rng::new(seed).below(n + 1);
        case(shape, seed, k, 60);
    }
    if shape == Shape::BASE {
        eprintln!("random: {cases} crash points on 60-operation workloads");
    } else {
        eprintln!("random, {shape}: {cases} crash points on 60-operation workloads");
    }
}

#[test]
fn every_crash_point_of_short_workloads() {
    every_crash_point(Shape::BASE, count("CRASH_SEEDS", 200));
}

#[test]
fn random_crash_points_of_long_workloads() {
    random_crash_points(Shape::BASE, count("CRASH_CASES", 4000));
}

/// The other shapes, with their exhaustive workloads and random cases. Fewer blocks as they
/// grow, so that a 10-operation workload still spans several of them with partial-block
/// writes, snapshots and restores. Counts are set so each shape costs a few seconds on two
/// cores: a 64 KiB case costs several times a 4 KiB one, mostly in `Engine::check`, which
/// zeroes a buffer of `MAX_RUN` blocks per call.
struct Extra {
    shape: Shape,
    seeds: u64,
    cases: u64,
}

const BLOCKS_8K: Extra = Extra {
    shape: Shape::new(8 << 10, 8, SECTOR),
    seeds: 60,
    cases: 900,
};
const BLOCKS_16K: Extra = Extra {
    shape: Shape::new(16 << 10, 6, SECTOR),
    seeds: 45,
    cases: 750,
};
const BLOCKS_64K: Extra = Extra {
    shape: Shape::new(64 << 10, 4, SECTOR),
    seeds: 15,
    cases: 225,
};
const SECTORS_4K: Extra = Extra {
    shape: Shape::new(4 << 10, 12, 4096),
    seeds: 120,
    cases: 900,
};
const BLOCKS_16K_SECTORS_4K: Extra = Extra {
    shape: Shape::new(16 << 10, 6, 4096),
    seeds: 45,
    cases: 750,
};

impl Extra {
    fn every_crash_point(&self) {
        every_crash_point(self.shape, self.seeds * count("CRASH_SHAPE_SCALE", 1));
    }

    fn random_crash_points(&self) {
        random_crash_points(self.shape, self.cases * count("CRASH_SHAPE_SCALE", 1));
    }
}

#[test]
fn every_crash_point_of_short_workloads_8k_blocks() {
    BLOCKS_8K.every_crash_point();
}

#[test]
fn random_crash_points_of_long_workloads_8k_blocks() {
    BLOCKS_8K.random_crash_points();
}

#[test]
fn every_crash_point_of_short_workloads_16k_blocks() {
    BLOCKS_16K.every_crash_point();
}

#[test]
fn random_crash_points_of_long_workloads_16k_blocks() {
    BLOCKS_16K.random_crash_points();
}

#[test]
fn every_crash_point_of_short_workloads_64k_blocks() {
    BLOCKS_64K.every_crash_point();
}

#[test]
fn random_crash_points_of_long_workloads_64k_blocks() {
    BLOCKS_64K.random_crash_points();
}

#[test]
fn every_crash_point_of_short_workloads_4k_sectors() {
    SECTORS_4K.every_crash_point();
}

#[test]
fn random_crash_points_of_long_workloads_4k_sectors() {
    SECTORS_4K.random_crash_points();
}

#[test]
fn every_crash_point_of_short_workloads_16k_blocks_4k_sectors() {
    BLOCKS_16K_SECTORS_4K.every_crash_point();
}

#[test]
fn random_crash_points_of_long_workloads_16k_blocks_4k_sectors() {
    BLOCKS_16K_SECTORS_4K.random_crash_points();
}

#[test]
fn replay() {
    let Ok(spec) = std::env::var("CRASH_REPLAY") else {
        return;
    };
    let v: Vec<u64> = spec.split(':').filter_map(|x| x.parse().ok()).collect();
    let shape = match v[..] {
        [_, _, _] => Shape::BASE,
        [_, _, _, block, blocks, sector] => {
            Shape::new(block as usize, blocks as usize, sector as usize)
        }
        _ => panic!("CRASH_REPLAY=seed:point:ops or seed:point:ops:block:blocks:sector"),
    };
    case(shape, v[0], v[1], v[2] as usize);
}

/// An EIO on an origin read (the compare or preserve read of a write) fails that write and
/// changes nothing: the block keeps its old bytes and every snapshot stays whole.
#[test]
fn a_failed_origin_read_fails_the_write_and_changes_nothing() {
    const BS: usize = Shape::BASE.block;
    const BLOCKS: usize = Shape::BASE.blocks;
    const SIZE: usize = BS * BLOCKS;
    let mut failed = 0;
    for seed in 0..200u64 {
        let ctx = format!("read fault seed {seed}");
        let power = PowerDomain::new(None);
        let o = Arc::new(CrashDisk::new("origin", &power, vec![0u8; SIZE], false));
        let s = Arc::new(CrashDisk::new("store", &power, Vec::new(), true));
        let e = Engine::format(o.clone(), s.clone(), &opts(Shape::BASE)).unwrap();
        let mut rng = Rng::new(seed);
        // A snapshot, so that first writes read the origin to preserve it.
        for b in 0..BLOCKS {
            e.write((b * BS) as u64, &vec![b as u8 + 1; BS]).unwrap();
        }
        e.create_snapshot("a").unwrap();
        let target = rng.below(BLOCKS as u64) as usize;
        let off = target * BS + rng.below(BS as u64) as usize / 2;
        let len = 1 + rng.below((BS / 2) as u64) as usize;
        power.inject_read(power.reads(), "origin");
        let err = e
            .write(off as u64, &vec![0xEE; len])
            .expect_err(&format!("{ctx}: write succeeded through a failed read"));
        assert!(matches!(err, Error::Io { .. }), "{ctx}: {err}");
        failed += 1;
        let mut buf = vec![0u8; BS];
        e.read((target * BS) as u64, &mut buf).unwrap();
        assert!(
            buf.iter().all(|&x| x == target as u8 + 1),
            "{ctx}: block changed"
        );
        e.read_snapshot("a", (target * BS) as u64, &mut buf)
            .unwrap();
        assert!(
            buf.iter().all(|&x| x == target as u8 + 1),
            "{ctx}: snapshot changed"
        );
        // The engine goes on serving.
        e.write(off as u64, &vec![0xEE; len]).unwrap();
        assert!(e.check().unwrap().ok(), "{ctx}");
    }
    assert_eq!(failed, 200);
}

/// Injected I/O errors (EIO on writes and syncs of either disk, ENOSPC on the store) surface as
/// errors and never corrupt a snapshot; after a failed sync the engine refuses writes until
/// reopened, and reopening recovers.
#[test]
fn injected_io_errors_surface_and_never_corrupt_a_snapshot() {
    let shape = Shape::BASE;
    let mut surfaced = 0;
    let mut reopened = 0;
    for seed in 0..400u64 {
        let ctx = format!("fault seed {seed}");
        let mut rng = Rng::new(seed);
        let ops = gen_ops(shape, &mut rng, 40);
        let total = {
            let mut m = Model::new(shape);
            round(shape, None, &mut m, &ops, None, &mut Rng::new(0)).2
        };
        let power = PowerDomain::new(None);
        let at = rng.below(total.max(1));
        let (disk, fault) = match rng.below(3) {
            0 => ("origin", Fault::Eio),
            1 => ("store", Fault::Eio),
            _ => ("store", Fault::NoSpace),
        };
        power.inject(at, disk, fault);
        let o = Arc::new(shape.disk("origin", &power, vec![0u8; shape.size()], false));
        let s = Arc::new(shape.disk("store", &power, Vec::new(), true));
        let od: Arc<dyn BlockDev> = o.clone();
        let sd: Arc<dyn BlockDev> = s.clone();
        let Ok(mut e) = Engine::format(od.clone(), sd.clone(), &opts(shape)) else {
            continue;
        };
        let mut m = Model::new(shape);
        let mut surfaced_here = 0;
        let mut rest: &[Op] = &ops;
        while !rest.is_empty() {
            let (ran, err) = run_ops(&e, &*od, &mut m, rest);
            rest = &rest[ran..];
            let Some(err) = err else { break };
            surfaced += 1;
            if surfaced_here == 0 && fault == Fault::NoSpace && !matches!(err, Error::Failed { .. })
            {
                assert!(
                    err.is_store_full(),
                    "{ctx}: ENOSPC on the store surfaced as {err}"
                );
            }
            surfaced_here += 1;
            if matches!(err, Error::Failed { .. }) || e.status().failed.is_some() {
                // A failed sync: the engine must refuse writes until reopened.
                assert!(
                    e.write(0, &[1u8; 512]).is_err(),
                    "{ctx}: write accepted after a failed sync"
                );
                drop(e);
                reopened += 1;
                e = Engine::open(od.clone(), sd.clone(), &opts(shape))
                    .unwrap_or_else(|err| panic!("{ctx}: reopen after a failed sync: {err}"));
            }
            // A failed snapshot operation may or may not have happened: what the (reopened,
            // if the store failed) engine lists is now the truth. Snapshots must all be whole.
            settle_snapshots(&e, &mut m, &ctx);
            adopt_pre_restore(&e, &mut m, &ctx);
            // The failed operation's blocks are uncertain: adopt what is there, after checking
            // the model allows it, so the model is exact again.
            let mut live = vec![0u8; shape.size()];
            e.read(0, &mut live).unwrap();
            for (i, c) in live.chunks(shape.sector).enumerate() {
                assert!(
                    m.cands[i].iter().any(|v| v == c),
                    "{ctx}: sector {i} after a fault"
                );
            }
            m.live = live;
        }
        drop(e);
        // No power cut: the disks keep everything, cached or not.
        let (o_img, s_img) = (o.current(), s.current());
        recover_and_verify(shape, o_img, s_img, &mut m, &ctx);
    }
    eprintln!("faults: {surfaced} surfaced as errors, {reopened} needed a reopen");
    assert!(surfaced > 200, "only {surfaced} injected faults surfaced");
}
