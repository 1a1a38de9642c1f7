//! Damaged and mismatched stores: every kind of corruption is refused or worked around with a
//! precise message; never a panic, never a silently wrong read.

use std::sync::Arc;

use snapmap::format::{Entry, JournalBlock, Superblock, FORMAT_VERSION};
use snapmap::{BlockDev, Engine, Error, MemDev, OpenOptions};

const BS: usize = 4096;
const BLOCKS: usize = 32;

struct Fixture {
    origin: Vec<u8>,
    store: Vec<u8>,
    snap_a: Vec<u8>,
    live: Vec<u8>,
}

fn opts() -> OpenOptions {
    OpenOptions {
        checkpoint_every: 1_000_000,
        store_grow_bytes: 64 << 10,
        ..OpenOptions::default()
    }
}

fn devs(o: &[u8], s: &[u8]) -> (Arc<dyn BlockDev>, Arc<dyn BlockDev>) {
    let od = MemDev::new("origin", 0, true);
    od.write_at(o, 0).unwrap();
    let sd = MemDev::new("store", 0, true);
    sd.write_at(s, 0).unwrap();
    (Arc::new(od), Arc::new(sd))
}

fn contents(d: &Arc<dyn BlockDev>) -> Vec<u8> {
    let mut v = vec![0u8; d.len().unwrap() as usize];
    d.read_at(&mut v, 0).unwrap();
    v
}

/// A store with a snapshot, two checkpoints (so the superblock copies name different ones) and
/// journal after the last checkpoint.
fn fixture() -> Fixture {
    let o: Arc<dyn BlockDev> = Arc::new(MemDev::new("origin", (BLOCKS * BS) as u64, false));
    let s: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
    let e = Engine::format(o.clone(), s.clone(), &opts()).unwrap();
    for b in 0..BLOCKS {
        e.write((b * BS) as u64, &vec![b as u8 + 1; BS]).unwrap();
    }
    e.create_snapshot("a").unwrap();
    for b in 0..8 {
        e.write((b * BS) as u64, &vec![0xA0; BS]).unwrap();
    }
    e.checkpoint().unwrap();
    for b in 8..16 {
        e.write((b * BS) as u64, &vec![0xB0; BS]).unwrap();
    }
    e.checkpoint().unwrap();
    for b in 16..24 {
        e.write((b * BS) as u64, &vec![0xC0; BS]).unwrap();
    }
    let mut snap_a = vec![0u8; BLOCKS * BS];
    e.read_snapshot("a", 0, &mut snap_a).unwrap();
    let mut live = vec![0u8; BLOCKS * BS];
    e.read(0, &mut live).unwrap();
    drop(e);
    Fixture {
        origin: contents(&o),
        store: contents(&s),
        snap_a,
        live,
    }
}

fn open(o: &[u8], s: &[u8]) -> Result<Engine, Error> {
    let (od, sd) = devs(o, s);
    Engine::open(od, sd, &opts())
}

/// Opening must fail as corrupt, saying `says`.
fn refused_as_corrupt(opened: Result<Engine, Error>, says: &str) {
    let err = opened.err().expect("a damaged store was opened");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(says), "{err}");
}

fn assert_intact(e: &Engine, f: &Fixture) {
    let mut buf = vec![0u8; BLOCKS * BS];
    e.read_snapshot("a", 0, &mut buf).unwrap();
    assert!(buf == f.snap_a, "snapshot a differs");
    e.read(0, &mut buf).unwrap();
    assert!(buf == f.live, "live image differs");
    let rep = e.check().unwrap();
    assert!(rep.ok(), "{:?}", rep.problems);
}

fn superblocks(store: &[u8]) -> Vec<(usize, Superblock)> {
    [0usize, BS]
        .iter()
        .filter_map(|&off| {
            Superblock::decode(&store[off..off + 4096])
                .ok()
                .map(|s| (off, s))
        })
        .collect()
}

fn newest_superblock(store: &[u8]) -> (usize, Superblock) {
    superblocks(store)
        .into_iter()
        .max_by_key(|(_, s)| s.generation)
        .unwrap()
}

#[test]
fn any_bit_flip_in_the_newest_superblock_copy_is_survived_through_the_other() {
    let f = fixture();
    let (off, _) = newest_superblock(&f.store);
    for bit in (0..4096 * 8).step_by(97) {
        let mut s = f.store.clone();
        s[off + bit / 8] ^= 1 << (bit % 8);
        let e = open(&f.origin, &s).unwrap_or_else(|e| panic!("bit {bit}: {e}"));
        assert_intact(&e, &f);
    }
}

#[test]
fn both_superblock_copies_damaged_is_refused_precisely() {
    let f = fixture();
    let mut s = f.store.clone();
    s[100] ^= 1;
    s[BS + 100] ^= 1;
    refused_as_corrupt(open(&f.origin, &s), "no valid superblock copy");
}

#[test]
fn a_damaged_newest_checkpoint_is_recovered_through_the_previous_one() {
    let f = fixture();
    let (_, sb) = newest_superblock(&f.store);
    let at = (sb.checkpoint.slot as usize) * BS + 40;
    let mut s = f.store.clone();
    s[at] ^= 0x40;
    let e = open(&f.origin, &s).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        e.recovery()
            .repaired
            .iter()
            .any(|r| r.contains("older superblock copy")),
        "{:?}",
        e.recovery()
    );
    assert_intact(&e, &f);
    // And the repair sticks: the next open uses a valid newest copy again.
    drop(e);
}

/// Reopening (a new epoch, a superblock write that keeps the checkpoint) does not cost the
/// fallback: after several read-write opens the copies still name two checkpoints, and damage
/// to the newest one is still recovered through the previous one.
#[test]
fn reopens_keep_the_previous_checkpoint_as_a_fallback() {
    let f = fixture();
    let (od, sd) = devs(&f.origin, &f.store);
    for _ in 0..3 {
        drop(Engine::open(od.clone(), sd.clone(), &opts()).unwrap());
    }
    let store = contents(&sd);
    let named: std::collections::BTreeSet<u64> = superblocks(&store)
        .iter()
        .map(|(_, sb)| sb.checkpoint.slot)
        .collect();
    assert_eq!(named.len(), 2, "both superblock copies name one checkpoint");
    let (_, sb) = newest_superblock(&store);
    let mut s = store.clone();
    s[sb.checkpoint.slot as usize * BS + 40] ^= 0x40;
    let e = open(&contents(&od), &s).unwrap_or_else(|e| panic!("after reopens: {e}"));
    assert_intact(&e, &f);
}

#[test]
fn a_damaged_journal_block_followed_by_synced_groups_is_refused_not_truncated() {
    let f = fixture();
    let (_, sb) = newest_superblock(&f.store);
    let uuid = sb.uuid;
    // The oldest journal block written after the newest checkpoint has synced successors.
    let mut blocks: Vec<(usize, JournalBlock)> = (2..f.store.len() / BS)
        .filter_map(|k| {
            JournalBlock::decode(&uuid, &f.store[k * BS..(k + 1) * BS])
                .ok()
                .map(|j| (k, j))
        })
        .collect();
    blocks.sort_by_key(|(_, j)| j.seq);
    let newest_seq = blocks.last().unwrap().1.seq;
    let (slot, _) = blocks
        .iter()
        .find(|(_, j)| j.seq + 3 <= newest_seq && !j.entries.is_empty())
        .cloned()
        .expect("a journal block with successors");
    let mut s = f.store.clone();
    s[slot * BS + 70] ^= 0x01;
    match open(&f.origin, &s) {
        Err(err) => {
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("journal continues"), "{err}");
        }
        // A block from before the checkpoint (no longer needed) may be the one hit.
        Ok(e) => assert_intact(&e, &f),
    }
}

#[test]
fn a_damaged_preserved_block_fails_reads_and_check_never_returns_wrong_bytes() {
    let f = fixture();
    let e = open(&f.origin, &f.store).unwrap();
    let (block, slot) = e.preserved_slots("a").unwrap()[3];
    drop(e);
    let mut s = f.store.clone();
    s[slot as usize * BS + 10] ^= 0xFF;
    let e = open(&f.origin, &s).unwrap();
    let mut buf = vec![0u8; BS];
    let err = e
        .read_snapshot("a", block * BS as u64, &mut buf)
        .expect_err("read a damaged block without error");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&format!("block {block}")), "{err}");
    let rep = e.check().unwrap();
    assert_eq!(rep.problems.len(), 1, "{:?}", rep.problems);
    // Restoring through a damaged block stops with the same error rather than writing garbage.
    let err = e
        .restore("a", &|_, _| {})
        .expect_err("restored through damage");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn a_truncated_store_is_refused_or_reads_fail_but_never_lie() {
    let f = fixture();
    for keep in [BS, 3 * BS, f.store.len() / 2, f.store.len() - BS] {
        let s = &f.store[..keep];
        let Ok(e) = open(&f.origin, s) else {
            continue;
        };
        let mut buf = vec![0u8; BS];
        for b in 0..BLOCKS {
            if e.read_snapshot("a", (b * BS) as u64, &mut buf).is_ok() {
                assert!(
                    buf[..] == f.snap_a[b * BS..(b + 1) * BS],
                    "truncated at {keep}: block {b} wrong"
                );
            }
        }
    }
}

#[test]
fn a_store_of_a_future_format_version_is_refused_as_such() {
    let f = fixture();
    let mut s = f.store.clone();
    for (off, mut sb) in superblocks(&f.store) {
        sb.version = FORMAT_VERSION + 1;
        s[off..off + 4096].copy_from_slice(&sb.encode());
    }
    let err = open(&f.origin, &s).err().expect("future version accepted");
    assert!(matches!(err, Error::FutureVersion { .. }), "{err}");
    assert!(err.to_string().contains("upgrade snapblk"), "{err}");
}

#[test]
fn an_origin_of_another_size_is_refused_without_touching_the_store() {
    let f = fixture();
    let short = &f.origin[..f.origin.len() - BS];
    let (od, sd) = devs(short, &f.store);
    let err = Engine::open(od, sd.clone(), &opts())
        .err()
        .expect("short origin accepted");
    assert!(matches!(err, Error::OriginSize { .. }), "{err}");
    assert!(contents(&sd) == f.store, "store was modified");
}

/// Rewrites the first preserve of the oldest journal group written after the newest checkpoint
/// (a group with successors, so replay applies it without re-reading its data) through `edit`,
/// and seals the block again: its checksum is valid, its content is not.
fn forge_journal_preserve(f: &Fixture, edit: impl Fn(&mut Entry, &[u8])) -> Vec<u8> {
    let (_, sb) = newest_superblock(&f.store);
    let uuid = sb.uuid;
    let mut blocks: Vec<(usize, JournalBlock)> = (2..f.store.len() / BS)
        .filter_map(|k| {
            JournalBlock::decode(&uuid, &f.store[k * BS..(k + 1) * BS])
                .ok()
                .map(|j| (k, j))
        })
        .filter(|(_, j)| {
            j.entries
                .iter()
                .any(|e| matches!(e, Entry::Preserve { block, .. } if (16..24).contains(block)))
        })
        .collect();
    blocks.sort_by_key(|(_, j)| j.seq);
    let (k, mut jb) = blocks
        .first()
        .cloned()
        .expect("a journal block after the checkpoint");
    let e = jb
        .entries
        .iter_mut()
        .find(|e| matches!(e, Entry::Preserve { .. }))
        .expect("a preserve");
    edit(e, &f.store);
    let mut s = f.store.clone();
    jb.encode_into(&uuid, &mut s[k * BS..(k + 1) * BS]).unwrap();
    s
}

#[test]
fn a_sealed_journal_preserve_into_a_live_slot_is_refused() {
    let f = fixture();
    let e = open(&f.origin, &f.store).unwrap();
    // Block 0 was preserved before the first checkpoint: its slot is live in the checkpoint.
    let (_, live) = e.preserved_slots("a").unwrap()[0];
    drop(e);
    let s = forge_journal_preserve(&f, |entry, store| {
        if let Entry::Preserve { slot, crc, .. } = entry {
            let at = live as usize * BS;
            *slot = live;
            *crc = crc32fast::hash(&store[at..at + BS]);
        }
    });
    refused_as_corrupt(open(&f.origin, &s), "already in use");
}

#[test]
fn a_sealed_journal_preserve_past_the_origin_is_refused() {
    let f = fixture();
    let s = forge_journal_preserve(&f, |entry, _| {
        if let Entry::Preserve { block, .. } = entry {
            *block = BLOCKS as u32 + 5;
        }
    });
    refused_as_corrupt(open(&f.origin, &s), "past the origin's 32 blocks");
}

#[test]
fn a_forged_checkpoint_length_on_a_huge_store_is_refused_before_anything_is_read() {
    let f = fixture();
    // A sparse 1 TiB store file with the fixture's bytes at its start: a superblock naming a
    // checkpoint over nearly all of it must not make the open allocate and read a terabyte.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1 << 40).unwrap();
    let mut s = f.store.clone();
    for (off, mut sb) in superblocks(&f.store) {
        let slots = (1u64 << 40) / BS as u64 - 2;
        sb.checkpoint.slot = 2;
        sb.checkpoint.slots = slots;
        sb.checkpoint.len = slots * BS as u64;
        s[off..off + 4096].copy_from_slice(&sb.encode());
    }
    std::os::unix::fs::FileExt::write_all_at(&file, &s, 0).unwrap();
    drop(file);
    let (od, _) = devs(&f.origin, &f.store);
    let sd: Arc<dyn BlockDev> = Arc::new(snapmap::FileDev::open(&path, false, true).unwrap());
    let ro = OpenOptions {
        read_only: true,
        ..opts()
    };
    refused_as_corrupt(Engine::open(od, sd, &ro), "impossible checkpoint");
}

/// A guest's blocks that look like superblocks of a store with larger blocks (and a newer
/// generation), preserved into store slots that sit where copy B of such a store would be,
/// change nothing about how the store opens: copy B is read only at copy A's block size.
#[test]
fn superblock_shaped_guest_data_in_store_slots_cannot_steer_how_the_store_opens() {
    let blocks = 48;
    let o: Arc<dyn BlockDev> = Arc::new(MemDev::new("origin", (blocks * BS) as u64, false));
    let s: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
    let e = Engine::format(o.clone(), s.clone(), &opts()).unwrap();
    let forged: Vec<Vec<u8>> = (0..blocks)
        .map(|b| {
            let mut sb = newest_superblock(&contents(&s)).1;
            sb.block_size = 65536;
            sb.origin_size = b as u64;
            sb.uuid = [0x66; 16];
            sb.generation = u64::MAX / 2;
            let mut img = sb.encode();
            img.resize(BS, 0);
            img
        })
        .collect();
    // One write each way: the preserved copies land in consecutive slots, across byte 65536.
    e.write(0, &forged.concat()).unwrap();
    e.create_snapshot("guest").unwrap();
    e.write(0, &vec![0x5A; blocks * BS]).unwrap();
    drop(e);
    let store = contents(&s);
    let planted = [8192usize, 16384, 32768, 65536]
        .iter()
        .filter(|&&off| {
            Superblock::decode(&store[off..off + 4096])
                .is_ok_and(|sb| sb.uuid == [0x66; 16] && sb.block_size as usize == off)
        })
        .count();
    let at: Vec<usize> = (0..store.len() / BS)
        .filter(|k| {
            Superblock::decode(&store[k * BS..k * BS + 4096]).is_ok_and(|sb| sb.uuid == [0x66; 16])
        })
        .collect();
    assert!(
        planted > 0,
        "the test planted no forged copy where a probe would look (forged copies at slots {at:?})"
    );
    let origin = contents(&o);
    let e = open(&origin, &store).unwrap_or_else(|e| panic!("forged copies steered the open: {e}"));
    assert_eq!(e.block_size(), BS as u32);
    for (b, img) in forged.iter().enumerate() {
        let mut buf = vec![0u8; BS];
        e.read_snapshot("guest", (b * BS) as u64, &mut buf).unwrap();
        assert!(&buf == img, "guest block {b} did not read back");
    }
    drop(e);
    // With copy A damaged, the search for copy B stops at B itself and never reaches them.
    let mut damaged = store.clone();
    let (a_off, _) = superblocks(&store)
        .into_iter()
        .find(|(off, _)| *off == 0)
        .unwrap();
    damaged[a_off + 200] ^= 1;
    let e = open(&origin, &damaged).unwrap_or_else(|e| panic!("with copy A damaged: {e}"));
    assert_eq!(e.block_size(), BS as u32);
}

/// Two copies that name different stores are refused, saying so, and nothing is written.
#[test]
fn superblock_copies_of_different_stores_are_refused() {
    let f = fixture();
    let mut s = f.store.clone();
    let (_, mut b) = superblocks(&s)
        .into_iter()
        .find(|(off, _)| *off == BS)
        .unwrap();
    b.uuid = [0x77; 16];
    s[BS..BS + 4096].copy_from_slice(&b.encode());
    let before = s.clone();
    refused_as_corrupt(open(&f.origin, &s), "superblock copies disagree");
    assert!(s == before);
}
