//! The host engine bench: `snapmap::Engine` on O_DIRECT files against raw io_uring on a file of
//! the same size, in one process. Each repetition measures the baseline and the engine back to
//! back (their order alternating between repetitions), so machine noise hits both.

use std::fs::{File, OpenOptions as FsOpen};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use snapmap::{AlignedBuf, BlockDev, CountingDev, Engine, FileDev, OpenOptions};

use crate::pattern::{distinct, Contents, BS};
use crate::report::{Case, Counts, Machine, Report, Target};
use crate::uring::{self, Dir};

const MIB: u64 = 1 << 20;
/// Blocks in one 1 MiB write.
const RUN_BLOCKS: u64 = MIB / BS as u64;

/// Every case, in run order; `--cases` picks a subset by these names.
pub const CASES: &[&str] = &[
    "randwrite-plain",
    "randwrite-cow",
    "rewrite-identical-snap",
    "rewrite-identical-nosnap",
    "seqwrite-1m",
    "randread",
    "restore",
    "open",
];

/// Sizes and parallelism of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostConfig {
    /// Directory for the scratch files (must support O_DIRECT: not tmpfs).
    pub scratch: PathBuf,
    /// Size of the origin and of the raw baseline file, bytes (multiple of 1 MiB).
    pub size: u64,
    /// 4 KiB operations per random-I/O run.
    pub ops: usize,
    /// Size of the delta the restore case restores, bytes (multiple of 1 MiB, ≤ size).
    pub restore_bytes: u64,
    /// Preserved blocks in the store the open case opens.
    pub open_blocks: u64,
    /// Repetitions of every case.
    pub reps: usize,
    /// io_uring queue depth of the baseline.
    pub qd: usize,
    /// Threads calling the (synchronous) engine.
    pub threads: usize,
    /// Cases to run (empty: all).
    pub cases: Vec<String>,
    /// Keep the scratch files afterwards.
    pub keep: bool,
    /// Tiny sizes; figures mean nothing.
    pub quick: bool,
}

impl HostConfig {
    /// The sizes the targets are stated for.
    pub fn full(scratch: PathBuf) -> Self {
        HostConfig {
            scratch,
            size: 1 << 30,
            ops: 65536,
            restore_bytes: 256 * MIB,
            open_blocks: 1_000_000,
            reps: 3,
            qd: 32,
            threads: 32,
            cases: Vec::new(),
            keep: false,
            quick: false,
        }
    }

    /// A few seconds, for CI to keep the bench working.
    pub fn quick(scratch: PathBuf) -> Self {
        HostConfig {
            size: 32 * MIB,
            ops: 2048,
            restore_bytes: 4 * MIB,
            open_blocks: 10_000,
            reps: 1,
            quick: true,
            ..HostConfig::full(scratch)
        }
    }

    fn wants(&self, case: &str) -> bool {
        self.cases.is_empty() || self.cases.iter().any(|c| c == case)
    }

    fn check(&self) -> Result<()> {
        if self.size == 0 || !self.size.is_multiple_of(MIB) {
            bail!("--size-mib must be a positive number of MiB");
        }
        if self.restore_bytes == 0
            || !self.restore_bytes.is_multiple_of(MIB)
            || self.restore_bytes > self.size
        {
            bail!("--restore-mib must be between 1 and --size-mib");
        }
        if self.ops == 0 || self.ops as u64 > self.size / BS as u64 {
            bail!(
                "--ops must be between 1 and the number of 4 KiB blocks in --size-mib ({})",
                self.size / BS as u64
            );
        }
        if self.reps == 0 || self.qd == 0 || self.threads == 0 || self.open_blocks == 0 {
            bail!("--reps, --qd, --threads and --open-blocks must be at least 1");
        }
        for c in &self.cases {
            if !CASES.contains(&c.as_str()) {
                bail!("unknown case {c:?}: pick from {}", CASES.join(", "));
            }
        }
        Ok(())
    }
}

fn open_direct(path: &Path, create: bool) -> Result<File> {
    FsOpen::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| {
            format!(
                "open {} with O_DIRECT: the scratch directory must be on a disk filesystem \
                 (not tmpfs); pass --scratch DIR on one",
                path.display()
            )
        })
}

/// Creates `path` of `size` bytes and writes every byte (so no write later allocates), block
/// `b` holding `contents` generation 0.
fn prefill(path: &Path, size: u64, contents: Option<&Contents>, qd: usize) -> Result<File> {
    let f = open_direct(path, true)?;
    f.set_len(size)
        .with_context(|| format!("size {} to {size} bytes", path.display()))?;
    let offs: Vec<u64> = (0..size / MIB).map(|i| i * MIB).collect();
    let name = path.display().to_string();
    uring::run(
        (&f, &name),
        Dir::Write,
        &offs,
        MIB as usize,
        qd.min(8),
        |i, buf| {
            if let Some(c) = contents {
                c.fill_run(buf, i as u64 * RUN_BLOCKS, 0);
            } else {
                buf.fill(0x5a);
            }
        },
        |_, _| Ok(()),
    )?;
    f.sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    Ok(f)
}

/// Runs `f(i, buf)` for i in 0..n on `threads` threads (each with its own aligned buffer of
/// `len` bytes); returns the wall time. The first error stops every thread.
fn par(
    threads: usize,
    n: usize,
    len: usize,
    f: impl Fn(usize, &mut AlignedBuf) -> Result<()> + Sync,
) -> Result<Duration> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.min(n).max(1) {
            s.spawn(|| {
                let mut buf = AlignedBuf::zeroed(len);
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if let Err(e) = f(i, &mut buf) {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut g) = first.lock() {
                            g.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    let t = start.elapsed();
    if let Some(e) = first.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(t)
}

/// The files and the engine the throughput cases share.
struct Rig<'a> {
    cfg: &'a HostConfig,
    raw: File,
    raw_name: String,
    copy_src: File,
    origin: Arc<CountingDev>,
    store: Arc<CountingDev>,
    engine: Engine,
    contents: Contents,
    blocks: u64,
    gen: u32,
    rng: fastrand::Rng,
}

/// User + system CPU time of the whole process so far, milliseconds.
fn cpu_ms() -> u64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

fn snapshot_counts(e: &Engine, o: &CountingDev, s: &CountingDev) -> Counts {
    let st = e.stats();
    let (or, ow, os) = o.counts();
    let (sr, sw, ss) = s.counts();
    Counts {
        commit_groups: st.commit_groups,
        commit_requests: st.commit_requests,
        max_group_requests: st.max_group_requests,
        preserves: st.preserves,
        blocks_written: st.blocks_written,
        blocks_skipped: st.blocks_skipped_identical,
        origin_reads: or,
        origin_writes: ow,
        store_reads: sr,
        store_writes: sw,
        store_syncs: ss,
        origin_syncs: os,
        checkpoints: st.checkpoints,
        cpu_ms: cpu_ms(),
    }
}

fn diff(a: &Counts, b: &Counts) -> Counts {
    Counts {
        commit_groups: b.commit_groups - a.commit_groups,
        commit_requests: b.commit_requests - a.commit_requests,
        // A running maximum: the run's own maximum is not recoverable, the overall one is.
        max_group_requests: b.max_group_requests,
        preserves: b.preserves - a.preserves,
        blocks_written: b.blocks_written - a.blocks_written,
        blocks_skipped: b.blocks_skipped - a.blocks_skipped,
        origin_reads: b.origin_reads - a.origin_reads,
        origin_writes: b.origin_writes - a.origin_writes,
        store_reads: b.store_reads - a.store_reads,
        store_writes: b.store_writes - a.store_writes,
        store_syncs: b.store_syncs - a.store_syncs,
        origin_syncs: b.origin_syncs - a.origin_syncs,
        checkpoints: b.checkpoints - a.checkpoints,
        cpu_ms: b.cpu_ms.saturating_sub(a.cpu_ms),
    }
}

fn iops(n: usize, t: Duration) -> f64 {
    n as f64 / t.as_secs_f64().max(1e-9)
}

fn mibs(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / MIB as f64 / t.as_secs_f64().max(1e-9)
}

impl<'a> Rig<'a> {
    fn new(cfg: &'a HostConfig, dir: &Path) -> Result<Rig<'a>> {
        let blocks = cfg.size / BS as u64;
        let contents = Contents::new(blocks, 0x5eed);
        let raw_path = dir.join("raw.img");
        let origin_path = dir.join("origin.img");
        let store_path = dir.join("store.img");
        for p in [&raw_path, &origin_path, &store_path] {
            if p.exists() {
                std::fs::remove_file(p)
                    .with_context(|| format!("remove old scratch file {}", p.display()))?;
            }
        }
        let raw = prefill(&raw_path, cfg.size, None, cfg.qd)?;
        drop(prefill(&origin_path, cfg.size, Some(&contents), cfg.qd)?);
        let src_path = dir.join("copy-src.img");
        if src_path.exists() {
            std::fs::remove_file(&src_path)
                .with_context(|| format!("remove old scratch file {}", src_path.display()))?;
        }
        let copy_src = prefill(&src_path, cfg.restore_bytes, None, cfg.qd)?;
        let od = FileDev::open(&origin_path, true, false)
            .with_context(|| format!("open origin {}", origin_path.display()))?;
        let sd = FileDev::create(&store_path, true)
            .with_context(|| format!("create store {}", store_path.display()))?;
        let origin = Arc::new(CountingDev::new(Arc::new(od)));
        let store = Arc::new(CountingDev::new(Arc::new(sd)));
        let opts = OpenOptions {
            direct_io: true,
            ..OpenOptions::default()
        };
        let engine = Engine::format(
            origin.clone() as Arc<dyn BlockDev>,
            store.clone() as Arc<dyn BlockDev>,
            &opts,
        )
        .with_context(|| format!("format store {}", store_path.display()))?;
        Ok(Rig {
            cfg,
            raw,
            raw_name: raw_path.display().to_string(),
            copy_src,
            origin,
            store,
            engine,
            contents,
            blocks,
            gen: 0,
            rng: fastrand::Rng::with_seed(42),
        })
    }

    fn counts(&self) -> Counts {
        snapshot_counts(&self.engine, &self.origin, &self.store)
    }

    fn next_gen(&mut self) -> u32 {
        self.gen += 1;
        self.gen
    }

    /// Raw io_uring 4 KiB writes at `blocks`.
    fn raw_writes(&self, blocks: &[u64], gen: u32) -> Result<f64> {
        let offs: Vec<u64> = blocks.iter().map(|b| b * BS as u64).collect();
        let t = uring::run(
            (&self.raw, &self.raw_name),
            Dir::Write,
            &offs,
            BS,
            self.cfg.qd,
            |i, buf| self.contents.fill_gen(buf, blocks[i], gen),
            |_, _| Ok(()),
        )?;
        Ok(iops(blocks.len(), t))
    }

    /// Engine 4 KiB writes at `blocks`: generation `gen`, or each block's current content.
    fn engine_writes(&self, blocks: &[u64], gen: Option<u32>) -> Result<(f64, Counts)> {
        let before = self.counts();
        let t = par(self.cfg.threads, blocks.len(), BS, |i, buf| {
            let b = blocks[i];
            match gen {
                Some(g) => self.contents.fill_gen(buf, b, g),
                None => self.contents.fill_current(buf, b),
            }
            self.engine
                .write(b * BS as u64, buf)
                .with_context(|| format!("engine write of block {b}"))?;
            if let Some(g) = gen {
                self.contents.set_gen(b, g);
            }
            Ok(())
        })?;
        Ok((iops(blocks.len(), t), diff(&before, &self.counts())))
    }

    /// Synchronous 4 KiB I/O on the baseline file from `cfg.threads` threads (pwrite/pread, as
    /// the engine's callers do): the second, informational baseline.
    fn psync(&self, blocks: &[u64], dir: Dir, gen: u32) -> Result<f64> {
        use std::os::unix::fs::FileExt;
        let t = par(self.cfg.threads, blocks.len(), BS, |i, buf| {
            let off = blocks[i] * BS as u64;
            match dir {
                Dir::Write => {
                    self.contents.fill_gen(buf, blocks[i], gen);
                    self.raw.write_all_at(buf, off)
                }
                Dir::Read => self.raw.read_exact_at(buf, off),
            }
            .with_context(|| format!("pwrite/pread at byte {off} of {}", self.raw_name))
        })?;
        Ok(iops(blocks.len(), t))
    }

    /// Baseline and engine, in alternating order, recorded into `case`; with `alt`, the
    /// synchronous-threads baseline on those blocks runs between them.
    fn pair(
        &mut self,
        case: &mut Case,
        rep: usize,
        alt: Option<(&[u64], Dir, u32)>,
        raw: impl FnOnce(&mut Self) -> Result<f64>,
        engine: impl FnOnce(&mut Self) -> Result<(f64, Counts)>,
    ) -> Result<()> {
        let run_alt =
            |s: &Self| -> Result<Option<f64>> { alt.map(|(b, d, g)| s.psync(b, d, g)).transpose() };
        let (r, a, (e, c)) = if rep.is_multiple_of(2) {
            let r = raw(self)?;
            let a = run_alt(self)?;
            (r, a, engine(self)?)
        } else {
            let e = engine(self)?;
            let a = run_alt(self)?;
            (raw(self)?, a, e)
        };
        case.raw.push(r);
        case.engine.push(e);
        case.ratios.push(e / r.max(1e-9));
        case.counts.push(c);
        if let Some(a) = a {
            case.alt_baseline = Some(format!(
                "raw {} threads {} 4 KiB",
                self.cfg.threads,
                if alt.is_some_and(|x| x.1 == Dir::Read) {
                    "pread"
                } else {
                    "pwrite"
                }
            ));
            case.alt.push(a);
            case.alt_ratios.push(e / a.max(1e-9));
        }
        Ok(())
    }

    fn randwrite_plain(&mut self, case: &mut Case, rep: usize) -> Result<()> {
        let blocks = distinct(self.blocks, self.cfg.ops, &mut self.rng);
        let g = self.next_gen();
        self.pair(
            case,
            rep,
            Some((&blocks, Dir::Write, g)),
            |s| s.raw_writes(&blocks, g),
            |s| s.engine_writes(&blocks, Some(g)),
        )
    }

    fn randwrite_cow(&mut self, case: &mut Case, rep: usize) -> Result<()> {
        let blocks = distinct(self.blocks, self.cfg.ops, &mut self.rng);
        let g = self.next_gen();
        let snap = format!("cow-{rep}");
        let n = blocks.len() as u64;
        self.pair(
            case,
            rep,
            Some((&blocks, Dir::Write, g)),
            |s| s.raw_writes(&blocks, g),
            |s| {
                s.engine
                    .create_snapshot(&snap)
                    .with_context(|| format!("create snapshot {snap}"))?;
                let r = s.engine_writes(&blocks, Some(g))?;
                s.engine
                    .delete_snapshot(&snap)
                    .with_context(|| format!("delete snapshot {snap}"))?;
                if r.1.preserves != n {
                    bail!(
                        "COW case: expected {n} preserves (every write a first write), the engine made {}",
                        r.1.preserves
                    );
                }
                Ok(r)
            },
        )
    }

    fn rewrite_identical(&mut self, case: &mut Case, rep: usize, snap: bool) -> Result<()> {
        let blocks = distinct(self.blocks, self.cfg.ops, &mut self.rng);
        let g = self.next_gen();
        let name = format!("same-{rep}");
        self.pair(
            case,
            rep,
            Some((&blocks, Dir::Write, g)),
            |s| s.raw_writes(&blocks, g),
            |s| {
                if snap {
                    s.engine
                        .create_snapshot(&name)
                        .with_context(|| format!("create snapshot {name}"))?;
                } else {
                    // Without a snapshot the engine compares only where its checksum table
                    // says the bytes may be equal, and only writes feed that table (reads do
                    // not): write the blocks' current bytes once, untimed, as any earlier
                    // write of them would have.
                    s.engine_writes(&blocks, None)?;
                }
                let r = s.engine_writes(&blocks, None)?;
                if snap {
                    s.engine
                        .delete_snapshot(&name)
                        .with_context(|| format!("delete snapshot {name}"))?;
                }
                Ok(r)
            },
        )
    }

    fn seqwrite(&mut self, case: &mut Case, rep: usize) -> Result<()> {
        let chunks = (self.cfg.size / MIB) as usize;
        let g = self.next_gen();
        let bytes = self.cfg.size;
        self.pair(
            case,
            rep,
            None,
            |s| {
                let offs: Vec<u64> = (0..chunks as u64).map(|i| i * MIB).collect();
                let t = uring::run(
                    (&s.raw, &s.raw_name),
                    Dir::Write,
                    &offs,
                    MIB as usize,
                    s.cfg.qd,
                    |i, buf| s.contents.fill_run(buf, i as u64 * RUN_BLOCKS, g),
                    |_, _| Ok(()),
                )?;
                Ok(mibs(bytes, t))
            },
            |s| {
                let before = s.counts();
                let t = par(s.cfg.threads, chunks, MIB as usize, |i, buf| {
                    let b0 = i as u64 * RUN_BLOCKS;
                    s.contents.fill_run(buf, b0, g);
                    s.engine
                        .write(b0 * BS as u64, buf)
                        .with_context(|| format!("engine 1 MiB write at block {b0}"))?;
                    for b in b0..b0 + RUN_BLOCKS {
                        s.contents.set_gen(b, g);
                    }
                    Ok(())
                })?;
                Ok((mibs(bytes, t), diff(&before, &s.counts())))
            },
        )
    }

    fn randread(&mut self, case: &mut Case, rep: usize) -> Result<()> {
        let blocks = distinct(self.blocks, self.cfg.ops, &mut self.rng);
        self.pair(
            case,
            rep,
            Some((&blocks, Dir::Read, 0)),
            |s| {
                let offs: Vec<u64> = blocks.iter().map(|b| b * BS as u64).collect();
                let t = uring::run(
                    (&s.raw, &s.raw_name),
                    Dir::Read,
                    &offs,
                    BS,
                    s.cfg.qd,
                    |_, _| {},
                    |_, _| Ok(()),
                )?;
                Ok(iops(blocks.len(), t))
            },
            |s| {
                let before = s.counts();
                let t = par(s.cfg.threads, blocks.len(), BS, |i, buf| {
                    let b = blocks[i];
                    s.engine
                        .read(b * BS as u64, buf)
                        .with_context(|| format!("engine read of block {b}"))?;
                    if !s.contents.matches(buf, b) {
                        bail!(
                            "engine read of block {b} returned bytes that were never written there"
                        );
                    }
                    Ok(())
                })?;
                Ok((iops(blocks.len(), t), diff(&before, &s.counts())))
            },
        )
    }

    fn restore(&mut self, case: &mut Case, rep: usize) -> Result<()> {
        let nchunks = (self.cfg.restore_bytes / MIB) as usize;
        let chunks = distinct(self.cfg.size / MIB, nchunks, &mut self.rng);
        let g = self.next_gen();
        let bytes = self.cfg.restore_bytes;
        self.pair(
            case,
            rep,
            None,
            |s| {
                // Read the delta-sized source sequentially (as the store's slots lie), write
                // it where the delta's chunks are.
                let pairs: Vec<(u64, u64)> = chunks
                    .iter()
                    .enumerate()
                    .map(|(k, c)| (k as u64 * MIB, c * MIB))
                    .collect();
                let t = uring::copy(
                    &s.copy_src,
                    &s.raw,
                    &s.raw_name,
                    &pairs,
                    MIB as usize,
                    s.cfg.qd,
                )?;
                Ok(mibs(bytes, t))
            },
            |s| {
                let snap = "restore-base";
                s.engine
                    .create_snapshot(snap)
                    .with_context(|| format!("create snapshot {snap}"))?;
                let saved: Vec<u32> = chunks
                    .iter()
                    .flat_map(|c| (c * RUN_BLOCKS..(c + 1) * RUN_BLOCKS).map(|b| s.contents.gen(b)))
                    .collect();
                // The delta: 1 MiB writes over the chosen chunks after the snapshot.
                par(s.cfg.threads, nchunks, MIB as usize, |i, buf| {
                    let b0 = chunks[i] * RUN_BLOCKS;
                    s.contents.fill_run(buf, b0, g);
                    s.engine
                        .write(b0 * BS as u64, buf)
                        .with_context(|| format!("engine write of delta chunk at block {b0}"))
                })?;
                let before = s.counts();
                let t0 = Instant::now();
                let rep_ = s
                    .engine
                    .restore(snap, &|_, _| {})
                    .with_context(|| format!("restore snapshot {snap}"))?;
                let t = t0.elapsed();
                let counts = diff(&before, &s.counts());
                // The image is back to what it held before the delta: check a sample.
                let mut k = 0;
                for c in &chunks {
                    for b in c * RUN_BLOCKS..(c + 1) * RUN_BLOCKS {
                        s.contents.set_gen(b, saved[k]);
                        k += 1;
                    }
                }
                let mut buf = AlignedBuf::zeroed(BS);
                for c in chunks.iter().take(64) {
                    let b = c * RUN_BLOCKS + (c % RUN_BLOCKS);
                    s.engine
                        .read(b * BS as u64, &mut buf)
                        .with_context(|| format!("read block {b} after the restore"))?;
                    if !s.contents.matches(&buf, b) {
                        bail!(
                            "after restoring {snap}, block {b} does not hold its snapshot content"
                        );
                    }
                }
                if rep_.written != nchunks as u64 * RUN_BLOCKS {
                    bail!(
                        "restore wrote {} blocks, expected the whole delta of {}",
                        rep_.written,
                        nchunks as u64 * RUN_BLOCKS
                    );
                }
                for name in [snap, rep_.pre_restore.as_str()] {
                    s.engine
                        .delete_snapshot(name)
                        .with_context(|| format!("delete snapshot {name}"))?;
                }
                Ok((mibs(bytes, t), counts))
            },
        )
    }
}

/// Builds a store with `cfg.open_blocks` preserved blocks (1 MiB writes after a snapshot, so
/// commit groups are large), then times opening it after a drop without close (journal
/// replay) and after a clean close (checkpoint only).
fn open_cases(cfg: &HostConfig, dir: &Path) -> Result<(Case, Case)> {
    let n = cfg.open_blocks;
    let origin_size = (n * BS as u64).div_ceil(MIB) * MIB;
    let origin = dir.join("open-origin.img");
    let store = dir.join("open-store.img");
    for p in [&origin, &store] {
        if p.exists() {
            std::fs::remove_file(p)
                .with_context(|| format!("remove old scratch file {}", p.display()))?;
        }
    }
    let opts = OpenOptions {
        direct_io: true,
        size: Some(origin_size),
        ..OpenOptions::default()
    };
    let contents = Contents::new(origin_size / BS as u64, 7);
    let mut dirty = Case::new(
        "open-dirty",
        "Engine::open_files after a drop without close (checkpoint + journal replay)",
        "budget",
        "s",
        Target::MaxSeconds { seconds: 1.0 },
    );
    let mut clean = Case::new(
        "open-clean",
        "Engine::open_files after a clean close (checkpoint only)",
        "budget",
        "s",
        Target::MaxSeconds { seconds: 1.0 },
    );
    let t0 = Instant::now();
    {
        let e = Engine::open_files(&origin, &store, &opts)
            .with_context(|| format!("create store {}", store.display()))?;
        e.create_snapshot("base").context("create snapshot base")?;
        let chunks = n.div_ceil(RUN_BLOCKS) as usize;
        par(cfg.threads, chunks, MIB as usize, |i, buf| {
            let b0 = i as u64 * RUN_BLOCKS;
            let len = (n - b0).min(RUN_BLOCKS) as usize * BS;
            contents.fill_run(&mut buf[..len], b0, 1);
            e.write(b0 * BS as u64, &buf[..len])
                .with_context(|| format!("build: write at block {b0}"))
        })?;
        let st = e.stats();
        let note = format!(
            "built {n} preserved blocks in {:.1} s: {} commit groups, {:.1} requests/group (max {}), {} checkpoints",
            t0.elapsed().as_secs_f64(),
            st.commit_groups,
            st.commit_requests as f64 / st.commit_groups.max(1) as f64,
            st.max_group_requests,
            st.checkpoints
        );
        dirty.notes.push(note);
        // Dropped without close: the journal since the last checkpoint must be replayed.
    }
    let open = |case: &mut Case| -> Result<Engine> {
        let t = Instant::now();
        let e = Engine::open_files(&origin, &store, &opts)
            .with_context(|| format!("open store {}", store.display()))?;
        let secs = t.elapsed().as_secs_f64();
        let held = e.snapshots().first().map_or(0, |s| s.preserved_blocks);
        if held != n {
            bail!(
                "opened store {} holds {held} preserved blocks, expected {n}",
                store.display()
            );
        }
        case.engine.push(secs);
        case.ratios.push(1.0 / secs.max(1e-9));
        Ok(e)
    };
    for _ in 0..cfg.reps {
        let e = open(&mut dirty)?;
        let r = e.recovery();
        let note = format!(
            "replayed {} journal blocks in {} groups",
            r.journal_blocks, r.groups
        );
        if !dirty.notes.contains(&note) {
            dirty.notes.push(note);
        }
        drop(e);
    }
    {
        let e = open(&mut Case::new("", "", "", "s", Target::Info))?;
        let t = Instant::now();
        e.close().context("close the open-case store")?;
        clean.notes.push(format!(
            "close (flush + checkpoint) took {:.3} s",
            t.elapsed().as_secs_f64()
        ));
    }
    for _ in 0..cfg.reps {
        let e = open(&mut clean)?;
        if e.recovery().journal_blocks != 0 {
            bail!("a store closed cleanly replayed journal blocks on open");
        }
        drop(e);
    }
    let size = std::fs::metadata(&store).map(|m| m.len()).unwrap_or(0);
    clean.notes.push(format!(
        "store file {:.2} GiB",
        size as f64 / (1u64 << 30) as f64
    ));
    if !cfg.keep {
        for p in [&origin, &store] {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok((dirty, clean))
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the host bench; `log` receives progress lines.
pub fn run(cfg: &HostConfig, command: &str, log: &dyn Fn(&str)) -> Result<Report> {
    cfg.check()?;
    let dir = &cfg.scratch;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create scratch directory {}", dir.display()))?;
    let load_start = loadavg();
    let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut cases: Vec<Case> = Vec::new();
    let throughput: Vec<&str> = CASES
        .iter()
        .copied()
        .filter(|c| *c != "open" && cfg.wants(c))
        .collect();
    if !throughput.is_empty() {
        log(&format!(
            "preparing {} MiB origin and baseline files in {}",
            cfg.size / MIB,
            dir.display()
        ));
        let mut rig = Rig::new(cfg, dir)?;
        let raw4k = format!("raw io_uring 4 KiB randwrite QD{}", cfg.qd);
        // A 4 KiB random-write case: measured in IOPS against raw io_uring randwrite.
        let randwrite_4k =
            |name: &str, what: &str, target| Case::new(name, what, &raw4k, "IOPS", target);
        let mut made: Vec<Case> = throughput
            .iter()
            .map(|name| match *name {
                "randwrite-plain" => randwrite_4k(
                    name,
                    "4 KiB random writes, no snapshot",
                    Target::MinRatio { ratio: 0.9 },
                ),
                "randwrite-cow" => randwrite_4k(
                    name,
                    "4 KiB random first writes after a snapshot (every write preserves)",
                    Target::MinRatio { ratio: 0.3 },
                ),
                "rewrite-identical-snap" => randwrite_4k(
                    name,
                    "4 KiB random rewrites of identical bytes after a snapshot",
                    Target::ZeroOriginWrites,
                ),
                "rewrite-identical-nosnap" => randwrite_4k(
                    name,
                    "4 KiB random rewrites of identical bytes, no snapshot, blocks known to the checksum table",
                    Target::ZeroOriginWrites,
                ),
                "seqwrite-1m" => Case::new(
                    name,
                    "sequential 1 MiB writes over the whole origin, no snapshot",
                    &format!("raw io_uring 1 MiB seq write QD{}", cfg.qd),
                    "MiB/s",
                    Target::Info,
                ),
                "randread" => Case::new(
                    name,
                    "4 KiB random reads",
                    &format!("raw io_uring 4 KiB randread QD{}", cfg.qd),
                    "IOPS",
                    Target::Info,
                ),
                _ => Case::new(
                    name,
                    &format!("Engine::restore of a {} MiB delta (1 MiB chunks)", cfg.restore_bytes / MIB),
                    &format!("raw O_DIRECT copy, 1 MiB QD{}", cfg.qd),
                    "MiB/s",
                    Target::MinRatio { ratio: 0.5 },
                ),
            })
            .collect();
        for rep in 0..cfg.reps {
            for case in made.iter_mut() {
                log(&format!("rep {}/{}: {}", rep + 1, cfg.reps, case.name));
                let name = case.name.clone();
                match name.as_str() {
                    "randwrite-plain" => rig.randwrite_plain(case, rep),
                    "randwrite-cow" => rig.randwrite_cow(case, rep),
                    "rewrite-identical-snap" => rig.rewrite_identical(case, rep, true),
                    "rewrite-identical-nosnap" => rig.rewrite_identical(case, rep, false),
                    "seqwrite-1m" => rig.seqwrite(case, rep),
                    "randread" => rig.randread(case, rep),
                    _ => rig.restore(case, rep),
                }
                .with_context(|| format!("case {name}, repetition {}", rep + 1))?;
                if let (Some(r), Some(e)) = (case.raw.last(), case.engine.last()) {
                    log(&format!(
                        "  baseline {r:.0} {u}, engine {e:.0} {u}, ratio {:.2}",
                        e / r,
                        u = case.unit
                    ));
                }
            }
        }
        let stats = rig.engine.stats();
        log(&format!(
            "engine totals: {} commit groups, {} checkpoints",
            stats.commit_groups, stats.checkpoints
        ));
        let Rig { engine, .. } = rig;
        engine.close().context("close the bench engine")?;
        cases.append(&mut made);
        if !cfg.keep {
            for f in ["raw.img", "origin.img", "store.img", "copy-src.img"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
    }
    if cfg.wants("open") {
        log(&format!(
            "open: building a store with {} preserved blocks",
            cfg.open_blocks
        ));
        let (dirty, clean) = open_cases(cfg, dir)?;
        cases.push(dirty);
        cases.push(clean);
    }
    for c in cases.iter_mut() {
        c.finish();
    }
    Ok(Report {
        date_utc: date,
        mode: if cfg.quick { "quick" } else { "full" }.into(),
        command: command.into(),
        config: serde_json::to_value(cfg).context("serialize the configuration")?,
        machine: Machine {
            kernel: kernel(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_start,
            load_end: loadavg(),
        },
        cases,
    })
}
