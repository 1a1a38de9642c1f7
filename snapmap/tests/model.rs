//! The engine against a reference model: random sequences of writes (any alignment),
//! identical rewrites, discards, snapshot create/delete, restore, checkpoints and reopen. After
//! every sequence, the live image and every snapshot must read back byte-identical to the
//! model, and the store must pass its consistency check. Writes go either through
//! `Engine::write` or, as the ublk queues issue them, through the caller-driven paths
//! (`try_direct_write`, `try_cow_write` + `commit_preserves`) with the origin I/O done by the
//! test itself.
//!
//! The property runs on 4 KiB tracking blocks and, with fewer cases each, on 8, 16 and 64 KiB
//! ones: block size decides how writes split into read-modify-write, preserve and compare
//! units, so every size gets its own strategy, scaled to its blocks.

use std::sync::Arc;

use fixtures::{repetitive, Geometry, Op};
use proptest::prelude::*;
use snapmap::{BlockDev, Engine, MemDev, OpenOptions};

const BASE: Geometry = Geometry {
    block: 4096,
    blocks: 24,
};
// Fewer blocks as they grow: a sequence still spans several blocks with writes of up to
// three blocks, at a cost per case not far from a 4 KiB one.
const BLOCKS_8K: Geometry = Geometry {
    block: 8 << 10,
    blocks: 16,
};
const BLOCKS_16K: Geometry = Geometry {
    block: 16 << 10,
    blocks: 12,
};
const BLOCKS_64K: Geometry = Geometry {
    block: 64 << 10,
    blocks: 6,
};

fn op(g: Geometry) -> impl Strategy<Value = Op> {
    let (bs, nblocks, size) = (g.block, g.blocks, g.size());
    let range = (0..size).prop_flat_map(move |off| (Just(off), 1..=(size - off).min(3 * bs + 100)));
    // Whole-block writes too: only those can take the caller-driven paths.
    let blocks = (0..nblocks).prop_flat_map(move |b| {
        (
            Just(b * bs),
            (1..=(nblocks - b).min(4)).prop_map(move |n| n * bs),
        )
    });
    prop_oneof![
        4 => (blocks.clone(), any::<u64>(), any::<bool>())
            .prop_map(|((off, len), seed, frontend)| Op::Write { off, len, seed, frontend }),
        1 => (blocks, any::<bool>())
            .prop_map(|((off, len), frontend)| Op::Rewrite { off, len, frontend }),
        6 => (range.clone(), any::<u64>(), any::<bool>())
            .prop_map(|((off, len), seed, frontend)| Op::Write { off, len, seed, frontend }),
        2 => (range.clone(), any::<bool>())
            .prop_map(|((off, len), frontend)| Op::Rewrite { off, len, frontend }),
        1 => range.prop_map(|(off, len)| Op::Zero { off, len }),
        2 => Just(Op::Snapshot),
        1 => any::<u64>().prop_map(Op::Delete),
        1 => any::<u64>().prop_map(Op::Restore),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

struct Model {
    live: Vec<u8>,
    snaps: Vec<(String, Vec<u8>)>,
    counter: usize,
}

fn opts(g: Geometry) -> OpenOptions {
    OpenOptions {
        block_size: g.block as u32,
        checkpoint_every: 3,
        csum_entries: 8,
        store_grow_bytes: 64 << 10,
        ..OpenOptions::default()
    }
}

fn verify(e: &Engine, g: Geometry, m: &Model) -> Result<(), TestCaseError> {
    let mut buf = vec![0u8; g.size()];
    e.read(0, &mut buf)
        .map_err(|x| TestCaseError::fail(x.to_string()))?;
    prop_assert!(buf == m.live, "live image differs from the model");
    let names: Vec<String> = e.snapshots().into_iter().map(|s| s.name).collect();
    let model_names: Vec<String> = m.snaps.iter().map(|s| s.0.clone()).collect();
    prop_assert_eq!(names, model_names);
    for (name, img) in &m.snaps {
        e.read_snapshot(name, 0, &mut buf)
            .map_err(|x| TestCaseError::fail(x.to_string()))?;
        prop_assert!(&buf == img, "snapshot {} differs from the model", name);
        // Unaligned reads of snapshots too: from inside the first block to inside the
        // second, at the same place in every block size.
        let (at, len) = (3000 * g.block / 4096, 5000 * g.block / 4096);
        let mut part = vec![0u8; len];
        e.read_snapshot(name, at as u64, &mut part)
            .map_err(|x| TestCaseError::fail(x.to_string()))?;
        prop_assert!(part[..] == img[at..at + len]);
    }
    Ok(())
}

fn frontend_write(e: &Engine, origin: &dyn BlockDev, off: u64, data: &[u8]) -> snapmap::Result<()> {
    e.write_as_frontend(origin, off, data).map(|_| ())
}

fn run(g: Geometry, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let origin: Arc<dyn BlockDev> = Arc::new(MemDev::new("origin", g.size() as u64, false));
    let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
    let fail = |x: snapmap::Error| TestCaseError::fail(x.to_string());
    let mut e = Engine::format(origin.clone(), store.clone(), &opts(g)).map_err(fail)?;
    let mut m = Model {
        live: vec![0; g.size()],
        snaps: Vec::new(),
        counter: 0,
    };
    for op in ops {
        match op {
            Op::Write {
                off,
                len,
                seed,
                frontend,
            } => {
                let data = repetitive(seed, off, len);
                if frontend {
                    frontend_write(&e, &*origin, off as u64, &data).map_err(fail)?;
                } else {
                    e.write(off as u64, &data).map_err(fail)?;
                }
                m.live[off..off + len].copy_from_slice(&data);
            }
            Op::Rewrite { off, len, frontend } => {
                let data = m.live[off..off + len].to_vec();
                if frontend {
                    frontend_write(&e, &*origin, off as u64, &data).map_err(fail)?;
                } else {
                    e.write(off as u64, &data).map_err(fail)?;
                }
            }
            Op::Zero { off, len } => {
                e.discard(off as u64, len as u64).map_err(fail)?;
                m.live[off..off + len].fill(0);
            }
            Op::Snapshot => {
                m.counter += 1;
                let name = format!("s{}", m.counter);
                e.create_snapshot(&name).map_err(fail)?;
                m.snaps.push((name, m.live.clone()));
            }
            Op::Delete(i) => {
                if !m.snaps.is_empty() {
                    let (name, _) = m.snaps.remove((i % m.snaps.len() as u64) as usize);
                    e.delete_snapshot(&name).map_err(fail)?;
                }
            }
            Op::Restore(i) => {
                let user: Vec<usize> = (0..m.snaps.len()).collect();
                if !user.is_empty() {
                    let (name, img) = m.snaps[(i % m.snaps.len() as u64) as usize].clone();
                    let rep = e.restore(&name, &|_, _| {}).map_err(fail)?;
                    m.snaps.push((rep.pre_restore.clone(), m.live.clone()));
                    m.live = img;
                }
            }
            Op::Checkpoint => {
                e.checkpoint().map_err(fail)?;
            }
            Op::Flush => {
                e.flush().map_err(fail)?;
            }
            Op::Reopen { clean } => {
                if clean {
                    e.close().map_err(fail)?;
                } else {
                    drop(e);
                }
                e = Engine::open(origin.clone(), store.clone(), &opts(g)).map_err(fail)?;
            }
        }
    }
    verify(&e, g, &m)?;
    let rep = e.check().map_err(fail)?;
    prop_assert!(rep.ok(), "check found problems: {:?}", rep.problems);
    prop_assert_eq!(rep.unreferenced_slots, 0, "slots leaked");
    // And once more after a reopen from disk alone.
    drop(e);
    let e = Engine::open(origin, store, &opts(g)).map_err(fail)?;
    verify(&e, g, &m)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_the_model(ops in prop::collection::vec(op(BASE), 1..40)) {
        run(BASE, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_the_model_8k_blocks(ops in prop::collection::vec(op(BLOCKS_8K), 1..40)) {
        run(BLOCKS_8K, ops)?;
    }

    #[test]
    fn engine_matches_the_model_16k_blocks(ops in prop::collection::vec(op(BLOCKS_16K), 1..40)) {
        run(BLOCKS_16K, ops)?;
    }

    #[test]
    fn engine_matches_the_model_64k_blocks(ops in prop::collection::vec(op(BLOCKS_64K), 1..40)) {
        run(BLOCKS_64K, ops)?;
    }
}
