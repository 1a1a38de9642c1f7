//! The engine's share of copy-on-write first writes, isolated for an instruction counter.
//!
//! Drives `--writes` whole-block first writes after a snapshot through the caller-driven path
//! the ublk queue uses (`try_cow_write` → read originals → `prepare` → `commit_preserves` in
//! batches of `--batch` → `writes` → `finish`), on memory devices so that no disk time or
//! syscall noise enters the count. `--plain` drives the same writes without a snapshot through
//! `try_direct_write`, the baseline the COW path is compared against.
//!
//! ```text
//! cargo build --release -p snapblk-bench --example cow_steps
//! valgrind --tool=callgrind --callgrind-out-file=cow.cg target/release/examples/cow_steps
//! callgrind_annotate --inclusive=yes cow.cg | head -60
//! ```
//!
//! Instruction counts are repeatable where timings here are not: a change to the write path
//! is judged by instructions per first write. The set-up (filling the origin) grows with
//! `--writes`, so compare runs of the same size: two builds, or a run against its `--plain`
//! twin (whose difference is the copy-on-write's extra work plus the memory devices'
//! copying for the origin read and the store write).

use anyhow::{bail, Context, Result};
use snapmap::{BlockDev, Engine, MemDev, OpenOptions};
use std::sync::Arc;

const BS: usize = 4096;

struct Args {
    writes: usize,
    batch: usize,
    /// Blocks per write (1: fio's 4 KiB randwrite; 256: its 1 MiB writes).
    blocks: usize,
    plain: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        writes: 12_000,
        batch: 6,
        blocks: 1,
        plain: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--writes" => a.writes = num("--writes")?,
            "--batch" => a.batch = num("--batch")?.max(1),
            "--blocks" => a.blocks = num("--blocks")?.clamp(1, 256),
            "--plain" => a.plain = true,
            other => {
                bail!("unknown argument {other:?} (use --writes N, --batch N, --blocks N, --plain)")
            }
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    // Twice as many blocks as writes, written in a scattered order, so every write is a first
    // write of a block whose neighbours are not preserved yet (as in fio's randwrite).
    let wlen = a.blocks * BS;
    const STEP: usize = 7919;
    let mut slots = (a.writes * 2).max(64);
    // Write i goes to slot i·STEP mod slots; STEP is prime, so with `slots` not a multiple of
    // it the first `slots` writes land on distinct slots (each one a first write).
    if slots % STEP == 0 {
        slots += 1;
    }
    let blocks = slots * a.blocks;
    let origin = Arc::new(MemDev::new("origin", (blocks * BS) as u64, false));
    let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
    let mut old = vec![0u8; BS];
    for b in 0..blocks {
        old.fill((b % 251) as u8);
        // Never equal to the new data (whose bytes are all 0xA0..0xA0+batch): no compare-skip.
        old[0] = 0x55;
        origin.write_at(&old, (b * BS) as u64)?;
    }
    let e = Engine::format(origin.clone(), store, &OpenOptions::default())?;
    if !a.plain {
        e.create_snapshot("s")?;
    }
    let order: Vec<usize> = (0..a.writes).map(|i| (i * STEP) % slots).collect();
    let data: Vec<Vec<u8>> = (0..a.batch).map(|i| vec![0xA0 ^ i as u8; wlen]).collect();
    let mut done = 0usize;
    for chunk in order.chunks(a.batch) {
        if a.plain {
            for (k, &b) in chunk.iter().enumerate() {
                let off = (b * wlen) as u64;
                let w = e
                    .try_direct_write(off, &data[k])
                    .with_context(|| format!("block {b}: not admitted as a direct write"))?;
                let r = origin.write_at(&data[k], off);
                w.finish(r.is_ok());
                r?;
                done += 1;
            }
            continue;
        }
        let mut cows = Vec::with_capacity(chunk.len());
        let mut preserves = Vec::with_capacity(chunk.len());
        for (k, &b) in chunk.iter().enumerate() {
            let off = (b * wlen) as u64;
            let mut c = e
                .try_cow_write(off, &data[k])
                .with_context(|| format!("block {b}: not admitted as a first write"))?;
            for s in c.reads() {
                origin.read_at(&mut c.old_mut()[s.at..s.at + s.len], s.off)?;
            }
            let p = c
                .prepare(&data[k])
                .with_context(|| format!("block {b}: nothing to preserve"))?;
            preserves.push(p);
            cows.push((c, k));
        }
        let results = e.commit_preserves(preserves);
        for ((mut c, k), r) in cows.into_iter().zip(results) {
            c.committed(r.is_ok());
            r?;
            let mut ok = true;
            for s in c.writes() {
                ok &= origin.write_at(&data[k][s.at..s.at + s.len], s.off).is_ok();
            }
            c.finish(ok);
            done += 1;
        }
    }
    let st = e.stats();
    println!(
        "{} writes of {} block(s) ({}), batch {}: preserves {}, commit groups {}",
        done,
        a.blocks,
        if a.plain { "plain" } else { "first writes" },
        a.batch,
        st.preserves,
        st.commit_groups
    );
    Ok(())
}
