//! Makes real stores with snapmap (format, writes, snapshots, checkpoints, deletes, restores)
//! and writes pieces of them as fuzz seeds: superblock copies, journal blocks, checkpoints and
//! whole images (in the compact form `store_open` reads).
//!
//! Usage: `snapblk-fuzz-seedgen CORPUS_DIR` (writes CORPUS_DIR/<target>/<name>).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use snapmap::format::{get_u32, JournalBlock, Superblock, JOURNAL_HEADER};
use snapmap::{Engine, MemDev, OpenOptions};

// The helpers the fuzz targets use, without linking libFuzzer into this program.
#[allow(dead_code)]
#[path = "../../src/lib.rs"]
mod helpers;

use helpers::{
    seal_journal, sparse_input, FIX_CHECKPOINT, FIX_JOURNAL, FIX_SUPER, ORIGIN_BYTES, READ_ONLY,
};

/// The uuid the `journal_block` target checks against (must match fuzz_targets/journal_block.rs).
const FUZZ_UUID: [u8; 16] = *b"snapblk-fuzz-uid";

/// A block that is mostly zero, so seeds stay small once trailing zeros are trimmed.
fn block(bs: usize, tag: u8, b: u64) -> Vec<u8> {
    let mut v = vec![0u8; bs];
    v[0] = tag;
    v[1..9].copy_from_slice(&b.to_le_bytes());
    v
}

struct Devs {
    origin: Arc<MemDev>,
    store: Arc<MemDev>,
}

fn open_opts(bs: u32) -> OpenOptions {
    OpenOptions {
        block_size: bs,
        csum_entries: 1024,
        // Small steps keep the images small; a high interval leaves journal after checkpoints.
        store_grow_bytes: 64 << 10,
        checkpoint_every: 1_000_000,
        ..OpenOptions::default()
    }
}

fn format(bs: u32) -> Result<(Devs, Engine)> {
    let origin = Arc::new(MemDev::new("origin", ORIGIN_BYTES, false));
    let store = Arc::new(MemDev::new("store", 0, true));
    let e = Engine::format(origin.clone(), store.clone(), &open_opts(bs))
        .context("format a store for the seeds")?;
    Ok((Devs { origin, store }, e))
}

fn write_blocks(e: &Engine, tag: u8, blocks: impl IntoIterator<Item = u64>) -> Result<()> {
    let bs = e.block_size() as usize;
    for b in blocks {
        e.write(b * bs as u64, &block(bs, tag, b))
            .with_context(|| format!("write block {b}"))?;
    }
    Ok(())
}

/// Each scenario leaves a store in a state recovery must handle differently.
fn scenarios() -> Result<Vec<(&'static str, u32, Vec<u8>)>> {
    let mut out = Vec::new();

    let (d, e) = format(4096)?;
    drop(e);
    out.push(("fresh", 4096, d.store.contents()));

    let (d, e) = format(4096)?;
    write_blocks(&e, 1, 0..8)?;
    e.create_snapshot("a")?;
    write_blocks(&e, 2, 0..4)?;
    drop(e); // no clean close: journal after the format-time checkpoint
    out.push(("snapshot-journal", 4096, d.store.contents()));

    let (d, e) = format(4096)?;
    write_blocks(&e, 1, 0..16)?;
    e.create_snapshot("a")?;
    write_blocks(&e, 2, 0..4)?;
    e.checkpoint()?;
    e.create_snapshot("b")?;
    write_blocks(&e, 3, 2..8)?;
    e.checkpoint()?;
    e.create_internal_snapshot("ship-1")?;
    write_blocks(&e, 4, 6..10)?;
    drop(e);
    out.push(("two-checkpoints-and-tail", 4096, d.store.contents()));

    let (d, e) = format(4096)?;
    write_blocks(&e, 1, 0..8)?;
    e.create_snapshot("a")?;
    write_blocks(&e, 2, 0..6)?;
    e.create_snapshot("b")?;
    write_blocks(&e, 3, 3..8)?;
    e.delete_snapshot("a")?;
    e.restore("b", &|_, _| {})?;
    e.close()?;
    out.push(("delete-restore-closed", 4096, d.store.contents()));

    let (d, e) = format(4096)?;
    write_blocks(&e, 1, 0..4)?;
    e.create_snapshot("a")?;
    write_blocks(&e, 2, 0..4)?;
    e.create_snapshot("b")?;
    write_blocks(&e, 3, 0..2)?;
    e.delete_snapshot("b")?;
    drop(e);
    out.push(("delete-in-journal", 4096, d.store.contents()));

    let (d, e) = format(16384)?;
    write_blocks(&e, 1, 0..8)?;
    e.create_snapshot("a")?;
    write_blocks(&e, 2, 0..3)?;
    e.checkpoint()?;
    write_blocks(&e, 2, 3..5)?;
    drop(e);
    out.push(("bs16k", 16384, d.store.contents()));

    // The origin must stay as the store expects for reopening; `store_open` pairs every
    // image with a zeroed origin, which is fine: the store's correctness is what is fuzzed.
    let _ = &d.origin;
    Ok(out)
}

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    let p = d.join(name);
    std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))
}


/// Remote-format seeds made with the shipper's own encoders: segments (raw and zstd) and the
/// manifests of a full base and an incremental point.
fn remote_seeds(dir: &Path) -> Result<()> {
    use shipper::format::{Manifest, SegmentBuilder};
    let bs = 4096u32;
    let mut segs = Vec::new();
    for (name, zstd) in [("raw", None), ("zstd", Some(3))] {
        let mut b = SegmentBuilder::new(bs);
        b.push(3, &vec![0u8; bs as usize]);
        b.push(7, &block(bs as usize, 0x5A, 7));
        if zstd.is_some() {
            for k in 8..16 {
                b.push(k, &block(bs as usize, 0x33, k));
            }
        }
        let seg = b.finish(1, segs.len() as u32, zstd)?;
        // Byte 0: the volume's block count for the target, 1 << (10 % 40) = 1024 blocks.
        let mut input = vec![10u8];
        input.extend_from_slice(&seg.bytes);
        put(dir, "segment", name, &input)?;
        segs.push(seg.info);
    }
    let full = Manifest {
        seq: 1,
        gen: 0,
        full: true,
        block_size: bs,
        volume_size: 1024 * bs as u64,
        volume_id: *b"fuzz-volume-id-1",
        created_unix: 1_700_000_000,
        parent_seq: 0,
        parent_identity: [0; 32],
        origin_identity: [0; 32],
        data_blocks: 9,
        zero_blocks: 1,
        point_name: "ship-1".into(),
        segments: segs.clone(),
    };
    let enc = full.encode()?;
    // Byte 0 odd: the target checks it against manifest_key(byte >> 1, 0), its own key.
    let mut input = vec![(1u8 << 1) | 1];
    input.extend_from_slice(&enc);
    put(dir, "manifest", "full-base", &input)?;
    let incr = Manifest {
        seq: 2,
        full: false,
        parent_seq: 1,
        parent_identity: full.identity(&enc),
        point_name: "ship-2".into(),
        segments: segs[..1].to_vec(),
        ..full.clone()
    };
    let mut input = vec![0u8];
    input.extend_from_slice(&incr.encode()?);
    put(dir, "manifest", "incremental", &input)?;
    Ok(())
}

/// Peer seeds (layout in fuzz_targets/peer.rs): a keyless greeting answer, and an
/// authenticated session doing PUT, HEAD, GET, LIST and DELETE.
fn peer_seeds(dir: &Path) -> Result<()> {
    let mut keyless = vec![0u8];
    keyless.extend_from_slice(b"SNAPPEER");
    keyless.extend_from_slice(&1u32.to_le_bytes());
    keyless.extend_from_slice(&[0x11; 32]);
    keyless.extend_from_slice(&[0x22; 32]);
    put(dir, "peer", "keyless-handshake", &keyless)?;
    let key = |k: &str| {
        let mut v = (k.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(k.as_bytes());
        v
    };
    let mut frames: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut p = key("segments/0000000001-0-0000");
    p.extend_from_slice(b"segment bytes");
    frames.push((1, p));
    frames.push((3, key("segments/0000000001-0-0000")));
    let mut p = key("segments/0000000001-0-0000");
    p.extend_from_slice(&(1u64 << 20).to_le_bytes());
    frames.push((2, p));
    frames.push((4, key("segments/")));
    frames.push((4, key("")));
    frames.push((5, key("segments/0000000001-0-0000")));
    let mut session = vec![1u8];
    for (kind, payload) in frames {
        session.push(kind);
        session.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        session.extend_from_slice(&payload);
    }
    put(dir, "peer", "session", &session)
}

/// Control-socket seeds: one line per request type, as the CLI sends them.
fn control_seeds(dir: &Path) -> Result<()> {
    let lines = [
        ("status", r#"{"op":"status"}"#),
        (
            "snapshot-create",
            r#"{"op":"snapshot_create","name":"before-upgrade"}"#,
        ),
        ("snapshot-list", r#"{"op":"snapshot_list"}"#),
        (
            "snapshot-delete",
            r#"{"op":"snapshot_delete","name":"a.1"}"#,
        ),
        ("restore", r#"{"op":"restore","name":"before-upgrade"}"#),
        ("export", r#"{"op":"export","name":"a","to":"/tmp/a.img"}"#),
        ("diff", r#"{"op":"diff","from":"a","to":"b"}"#),
        ("diff-live", r#"{"op":"diff","from":"a","to":null}"#),
        ("check", r#"{"op":"check"}"#),
        ("shutdown", r#"{"op":"shutdown"}"#),
    ];
    let mut all = String::new();
    for (name, line) in lines {
        put(dir, "control_request", name, format!("{line}\n").as_bytes())?;
        all.push_str(line);
        all.push('\n');
    }
    put(dir, "control_request", "session", all.as_bytes())
}

fn main() -> Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        bail!("usage: snapblk-fuzz-seedgen CORPUS_DIR (e.g. fuzz/corpus)");
    };
    remote_seeds(&dir)?;
    peer_seeds(&dir)?;
    control_seeds(&dir)?;
    let all = FIX_SUPER | FIX_CHECKPOINT | FIX_JOURNAL;
    let mut journal_seen = BTreeSet::new();
    for (name, bs, img) in scenarios()? {
        let bs_us = bs as usize;
        put(&dir, "store_open", name, &sparse_input(all, &img, bs_us))?;
        if name == "two-checkpoints-and-tail" {
            put(
                &dir,
                "store_open",
                &format!("{name}-ro"),
                &sparse_input(all | READ_ONLY, &img, bs_us),
            )?;
        }
        let mut sbs = Vec::new();
        for (copy, off) in [("a", 0), ("b", bs_us)] {
            let raw = &img[off..off + 4096];
            put(&dir, "superblock", &format!("{name}-{copy}"), raw)?;
            if let Ok(sb) = Superblock::decode(raw) {
                sbs.push(sb);
            }
        }
        let Some(sb) = sbs.iter().max_by_key(|s| s.generation) else {
            bail!("scenario {name}: no valid superblock copy");
        };
        for s in &sbs {
            let cp = s.checkpoint;
            if cp.len == 0 {
                continue;
            }
            let at = (cp.slot * bs as u64) as usize;
            let bytes = &img[at..at + cp.len as usize];
            put(
                &dir,
                "checkpoint",
                &format!("{name}-gen{}", s.generation),
                bytes,
            )?;
        }
        for (k, slot) in img.chunks(bs_us).enumerate().skip(2) {
            let Ok(jb) = JournalBlock::decode(&sb.uuid, slot) else {
                continue;
            };
            // Rewrite to the fixed uuid the target uses, trimmed to header + payload.
            let p = get_u32(slot, 48) as usize;
            let mut b = slot[..JOURNAL_HEADER + p].to_vec();
            b[8..24].copy_from_slice(&FUZZ_UUID);
            seal_journal(&mut b);
            if JournalBlock::decode(&FUZZ_UUID, &b).is_err() {
                bail!(
                    "scenario {name}: re-sealed journal block {} does not decode",
                    jb.seq
                );
            }
            // One seed per distinct payload shape is plenty.
            if journal_seen.insert(b[JOURNAL_HEADER..].to_vec()) {
                put(&dir, "journal_block", &format!("{name}-slot{k}"), &b)?;
            }
        }
    }
    Ok(())
}
