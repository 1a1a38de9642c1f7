//! Every byte the engine puts in a store: the superblock, journal blocks and checkpoints.
//! `FORMAT.md` documents this file; change them together.
//!
//! The store is an array of *slots* of `block_size` bytes. Slots 0 and 1 hold the two
//! superblock copies; every other slot holds a preserved block, a journal block, or a piece of
//! a checkpoint, as the index says.

use serde::{Deserialize, Serialize};

use crate::io::Identity;

/// First bytes of a superblock.
pub const SUPER_MAGIC: [u8; 8] = *b"SNAPBLK\x01";
/// The store format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// First four bytes of a journal block ("SJNL").
pub const JOURNAL_MAGIC: u32 = 0x4C4E_4A53;
/// First four bytes of a checkpoint ("SCKP").
pub const CHECKPOINT_MAGIC: u32 = 0x504B_4353;
/// Slots reserved for the superblock copies A (slot 0) and B (slot 1).
pub const SUPER_SLOTS: u64 = 2;
/// Bytes of a superblock that carry data; the crc32 sits right after them.
pub const SUPER_BODY: usize = 4092;
/// Longest origin path a superblock records.
pub const MAX_PATH: usize = 3072;
/// Offset of the reserved-length field in a superblock (after the longest path).
const RESERVED_AT: usize = 3192;
/// Where the store's size limit sits in the superblock (0: none).
const LIMIT_AT: usize = 3200;
/// Bytes of a journal block header.
pub const JOURNAL_HEADER: usize = 56;
/// Bytes of a checkpoint header.
pub const CHECKPOINT_HEADER: usize = 24;
/// Flag on the last journal block of a commit group.
pub const FLAG_GROUP_END: u32 = 1;
/// Smallest and largest block sizes.
pub const MIN_BLOCK: u32 = 4096;
/// See [`MIN_BLOCK`].
pub const MAX_BLOCK: u32 = 65536;

/// Where the newest checkpoint lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointRef {
    /// First slot of the checkpoint.
    pub slot: u64,
    /// Number of consecutive slots it occupies.
    pub slots: u64,
    /// Bytes of header + body.
    pub len: u64,
    /// crc32 of those bytes.
    pub crc: u32,
}

/// The superblock: identity and geometry (fixed at format) plus the pointer to the newest
/// checkpoint (updated by alternating between copies A and B).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Format version.
    pub version: u32,
    /// Block (= slot) size in bytes.
    pub block_size: u32,
    /// Random id of this store; journal blocks carry it too.
    pub uuid: [u8; 16],
    /// Origin size in bytes.
    pub origin_size: u64,
    /// Bumped on every superblock write; the valid copy with the highest wins.
    pub generation: u64,
    /// Bumped on every read-write open; journal blocks of older epochs never follow newer ones.
    pub epoch: u64,
    /// Newest checkpoint.
    pub checkpoint: CheckpointRef,
    /// Format time (seconds since the Unix epoch).
    pub created_unix: u64,
    /// The origin this store belongs to.
    pub origin: Identity,
    /// The store has been made at least this many slots long (it grows in steps, each
    /// recorded here): a shorter store was truncated.
    pub reserved_slots: u64,
    /// The store's size limit in slots (`--max-store`), 0 for none. Kept here rather than
    /// only in a device's settings so that every opener, offline commands included, stays
    /// inside it. Stores made before it existed read 0 here: no limit, as before.
    pub limit_slots: u64,
}

// Every integer on the store is little-endian; these are the only codecs for them (the
// fuzz crate uses them too, to re-seal what it mutates).

/// Writes `v` little-endian at byte `at`. Panics if `b` is too short (callers size it).
pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
/// Writes `v` little-endian at byte `at`. Panics if `b` is too short (callers size it).
pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
/// Reads a little-endian u32 at byte `at`. Panics if `b` is too short (callers check).
pub fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
/// Reads a little-endian u64 at byte `at`. Panics if `b` is too short (callers check).
pub fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Why a superblock copy was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum SuperError {
    /// Wrong magic: not a store at all (or never written).
    Magic,
    /// Right magic, bad checksum: torn or damaged.
    Checksum,
    /// Written by a newer format.
    Version(u32),
    /// Checksum fine, contents impossible.
    Invalid(String),
}

impl Superblock {
    /// Encodes into a 4096-byte image (the rest of the slot is zero).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&SUPER_MAGIC);
        put_u32(&mut b, 8, self.version);
        put_u32(&mut b, 12, self.block_size);
        b[16..32].copy_from_slice(&self.uuid);
        put_u64(&mut b, 32, self.origin_size);
        put_u64(&mut b, 40, self.generation);
        put_u64(&mut b, 48, self.epoch);
        put_u64(&mut b, 56, self.checkpoint.slot);
        put_u64(&mut b, 64, self.checkpoint.slots);
        put_u64(&mut b, 72, self.checkpoint.len);
        put_u32(&mut b, 80, self.checkpoint.crc);
        put_u64(&mut b, 88, self.created_unix);
        put_u64(&mut b, 96, self.origin.dev);
        put_u64(&mut b, 104, self.origin.ino);
        let path = self.origin.path.as_bytes();
        let n = path.len().min(MAX_PATH);
        put_u32(&mut b, 112, n as u32);
        b[116..116 + n].copy_from_slice(&path[..n]);
        put_u64(&mut b, RESERVED_AT, self.reserved_slots);
        put_u64(&mut b, LIMIT_AT, self.limit_slots);
        let crc = crc32fast::hash(&b[..SUPER_BODY]);
        put_u32(&mut b, SUPER_BODY, crc);
        b
    }

    /// Decodes and verifies one copy.
    pub fn decode(b: &[u8]) -> Result<Superblock, SuperError> {
        if b.len() < 4096 || b[0..8] != SUPER_MAGIC {
            return Err(SuperError::Magic);
        }
        if crc32fast::hash(&b[..SUPER_BODY]) != get_u32(b, SUPER_BODY) {
            return Err(SuperError::Checksum);
        }
        let version = get_u32(b, 8);
        if version > FORMAT_VERSION {
            return Err(SuperError::Version(version));
        }
        let block_size = get_u32(b, 12);
        if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
            return Err(SuperError::Invalid(format!("block size {block_size}")));
        }
        let n = get_u32(b, 112) as usize;
        if n > MAX_PATH {
            return Err(SuperError::Invalid(format!("origin path length {n}")));
        }
        // Byte counts are computed from the limit (status, store-full errors): one that
        // cannot be is no limit a user set.
        let limit_slots = get_u64(b, LIMIT_AT);
        if limit_slots.checked_mul(u64::from(block_size)).is_none() {
            return Err(SuperError::Invalid(format!(
                "store size limit of {limit_slots} slots"
            )));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        Ok(Superblock {
            version,
            block_size,
            uuid,
            origin_size: get_u64(b, 32),
            generation: get_u64(b, 40),
            epoch: get_u64(b, 48),
            checkpoint: CheckpointRef {
                slot: get_u64(b, 56),
                slots: get_u64(b, 64),
                len: get_u64(b, 72),
                crc: get_u32(b, 80),
            },
            created_unix: get_u64(b, 88),
            origin: Identity {
                dev: get_u64(b, 96),
                ino: get_u64(b, 104),
                path: String::from_utf8_lossy(&b[116..116 + n]).into_owned(),
            },
            reserved_slots: get_u64(b, RESERVED_AT),
            limit_slots,
        })
    }
}

/// One journal entry. Entries are replayed in order onto the index of the newest checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// Block `block`'s content as of snapshot `snap` was preserved in `slot`; `crc` is the
    /// crc32 of that slot's bytes.
    Preserve {
        /// Snapshot whose delta holds it.
        snap: u64,
        /// Origin block number.
        block: u32,
        /// Store slot.
        slot: u64,
        /// crc32 of the preserved bytes.
        crc: u32,
    },
    /// A snapshot was taken; its delta starts empty.
    SnapshotCreated {
        /// New snapshot id (ids only grow).
        id: u64,
        /// Its name.
        name: String,
        /// When (seconds since the Unix epoch).
        created_unix: u64,
        /// Hidden from users (ship points).
        internal: bool,
    },
    /// A snapshot was deleted; its delta merges into the previous one.
    SnapshotDeleted {
        /// The deleted snapshot.
        id: u64,
    },
    /// A restore to `target` began, with `pre` holding the image before it.
    RestoreStarted {
        /// Snapshot being restored.
        target: u64,
        /// The automatic pre-restore snapshot.
        pre: u64,
    },
    /// The restore in progress completed.
    RestoreFinished,
}

/// A decoded journal block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalBlock {
    /// [`FLAG_GROUP_END`] or 0.
    pub flags: u32,
    /// Epoch that wrote it.
    pub epoch: u64,
    /// Position in the journal; consecutive blocks have consecutive numbers.
    pub seq: u64,
    /// Slot of the next journal block, allocated before this one was written.
    pub next_slot: u64,
    /// What happened.
    pub entries: Vec<Entry>,
}

/// Why a journal block was not accepted (all mean: the journal ends before it).
#[derive(Debug, PartialEq, Eq)]
pub enum JournalError {
    /// Not a journal block of this store.
    Foreign,
    /// Header or payload checksum mismatch: torn or stale.
    Checksum,
    /// Payload does not decode.
    Payload,
}

impl JournalBlock {
    /// Room for entries in a block of `block_size` bytes.
    pub fn capacity(block_size: u32) -> usize {
        block_size as usize - JOURNAL_HEADER
    }

    /// Serialized size of `entries` as a payload.
    pub fn payload_len(entries: &[Entry]) -> usize {
        bincode::serialized_size(entries).map_or(usize::MAX, |n| n as usize)
    }

    /// Bytes one more entry adds to a payload.
    pub fn entry_len(entry: &Entry) -> usize {
        bincode::serialized_size(entry).map_or(usize::MAX, |n| n as usize)
    }

    /// Encodes into `out` (exactly one slot).
    pub fn encode_into(&self, uuid: &[u8; 16], out: &mut [u8]) -> Result<(), String> {
        let payload = bincode::serialize(&self.entries).map_err(|e| e.to_string())?;
        if payload.len() > out.len() - JOURNAL_HEADER {
            return Err(format!(
                "journal payload of {} bytes does not fit a {}-byte block",
                payload.len(),
                out.len()
            ));
        }
        out.fill(0);
        put_u32(out, 0, JOURNAL_MAGIC);
        put_u32(out, 4, self.flags);
        out[8..24].copy_from_slice(uuid);
        put_u64(out, 24, self.epoch);
        put_u64(out, 32, self.seq);
        put_u64(out, 40, self.next_slot);
        put_u32(out, 48, payload.len() as u32);
        out[JOURNAL_HEADER..JOURNAL_HEADER + payload.len()].copy_from_slice(&payload);
        let crc = Self::crc(out, payload.len());
        put_u32(out, 52, crc);
        Ok(())
    }

    fn crc(b: &[u8], payload_len: usize) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..52]);
        h.update(&b[JOURNAL_HEADER..JOURNAL_HEADER + payload_len]);
        h.finalize()
    }

    /// Decodes and verifies a slot's bytes as a journal block of store `uuid`.
    pub fn decode(uuid: &[u8; 16], b: &[u8]) -> Result<JournalBlock, JournalError> {
        if b.len() < JOURNAL_HEADER || get_u32(b, 0) != JOURNAL_MAGIC || b[8..24] != uuid[..] {
            return Err(JournalError::Foreign);
        }
        let payload_len = get_u32(b, 48) as usize;
        if payload_len > b.len() - JOURNAL_HEADER {
            return Err(JournalError::Checksum);
        }
        if Self::crc(b, payload_len) != get_u32(b, 52) {
            return Err(JournalError::Checksum);
        }
        let entries: Vec<Entry> =
            bincode::deserialize(&b[JOURNAL_HEADER..JOURNAL_HEADER + payload_len])
                .map_err(|_| JournalError::Payload)?;
        Ok(JournalBlock {
            flags: get_u32(b, 4),
            epoch: get_u64(b, 24),
            seq: get_u64(b, 32),
            next_slot: get_u64(b, 40),
            entries,
        })
    }
}

/// A snapshot as a checkpoint stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Snapshot id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_unix: u64,
    /// Hidden from users.
    pub internal: bool,
    /// Its delta: (block, slot, crc32 of the slot's bytes), sorted by block.
    pub delta: Vec<(u32, u64, u32)>,
}

/// The serialized index: everything needed to resume without reading the journal before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    /// Sequence number the journal continues with.
    pub next_seq: u64,
    /// Slot the next journal block goes to.
    pub journal_slot: u64,
    /// Id the next snapshot gets.
    pub next_snapshot_id: u64,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotRecord>,
    /// One past the highest slot ever allocated.
    pub high_water: u64,
    /// Free slots below `high_water`.
    pub free: Vec<u64>,
    /// Slots that were in use when this checkpoint was written but that it makes obsolete (the
    /// journal it replaces and the previous checkpoint): free once this checkpoint is the one
    /// the superblock names.
    pub free_on_load: Vec<u64>,
    /// Slots of the previous checkpoint and of the journal between it and this one. They stay
    /// in use until the next checkpoint, so that the other superblock copy, which may still
    /// name the previous checkpoint, always leads to an intact checkpoint and journal.
    pub retained: Vec<u64>,
    /// A restore that had started but not finished: (target, pre-restore snapshot).
    pub restore: Option<(u64, u64)>,
}

impl CheckpointBody {
    /// Header + bincode body, padded to whole slots.
    pub fn encode(&self, block_size: u32) -> Result<Vec<u8>, String> {
        let body = bincode::serialize(self).map_err(|e| e.to_string())?;
        let len = CHECKPOINT_HEADER + body.len();
        let mut out = vec![0u8; len.next_multiple_of(block_size as usize)];
        put_u32(&mut out, 0, CHECKPOINT_MAGIC);
        put_u32(&mut out, 4, FORMAT_VERSION);
        put_u64(&mut out, 8, body.len() as u64);
        put_u32(&mut out, 16, crc32fast::hash(&body));
        out[CHECKPOINT_HEADER..len].copy_from_slice(&body);
        // Bytes 20..24 stay zero (reserved).
        Ok(out)
    }

    /// Encoded length in bytes (header + body), without padding.
    pub fn encoded_len(&self) -> Result<usize, String> {
        bincode::serialized_size(self)
            .map(|n| n as usize + CHECKPOINT_HEADER)
            .map_err(|e| e.to_string())
    }

    /// Verifies and decodes.
    pub fn decode(b: &[u8]) -> Result<CheckpointBody, String> {
        if b.len() < CHECKPOINT_HEADER || get_u32(b, 0) != CHECKPOINT_MAGIC {
            return Err("checkpoint magic missing".into());
        }
        let version = get_u32(b, 4);
        if version > FORMAT_VERSION {
            return Err(format!(
                "checkpoint format version {version} is newer than {FORMAT_VERSION}"
            ));
        }
        if get_u32(b, 20) != 0 {
            return Err("checkpoint reserved header bytes are not zero".into());
        }
        let n = get_u64(b, 8) as usize;
        if n > b.len() - CHECKPOINT_HEADER {
            return Err("checkpoint length runs past its slots".into());
        }
        let body = &b[CHECKPOINT_HEADER..CHECKPOINT_HEADER + n];
        if crc32fast::hash(body) != get_u32(b, 16) {
            return Err("checkpoint checksum mismatch".into());
        }
        bincode::deserialize(body).map_err(|e| format!("checkpoint does not decode: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            version: FORMAT_VERSION,
            block_size: 4096,
            uuid: [3; 16],
            origin_size: 1 << 30,
            generation: 7,
            epoch: 2,
            checkpoint: CheckpointRef {
                slot: 2,
                slots: 1,
                len: 100,
                crc: 0xdead,
            },
            created_unix: 1,
            origin: Identity {
                path: "/x/disk.img".into(),
                dev: 5,
                ino: 9,
            },
            reserved_slots: 1234,
            limit_slots: 99,
        }
    }

    #[test]
    fn superblock_round_trips_and_detects_every_single_bit_flip_in_its_body() {
        let s = sb();
        let b = s.encode();
        assert_eq!(Superblock::decode(&b), Ok(s));
        for bit in (0..SUPER_BODY * 8).step_by(61) {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Superblock::decode(&c).is_err(),
                "flip of bit {bit} accepted"
            );
        }
    }

    #[test]
    fn superblock_of_a_future_version_is_refused_as_such() {
        let mut s = sb();
        s.version = FORMAT_VERSION + 1;
        assert_eq!(
            Superblock::decode(&s.encode()),
            Err(SuperError::Version(FORMAT_VERSION + 1))
        );
    }

    fn jb() -> JournalBlock {
        JournalBlock {
            flags: FLAG_GROUP_END,
            epoch: 3,
            seq: 42,
            next_slot: 99,
            entries: vec![
                Entry::SnapshotCreated {
                    id: 1,
                    name: "a".into(),
                    created_unix: 5,
                    internal: false,
                },
                Entry::Preserve {
                    snap: 1,
                    block: 7,
                    slot: 12,
                    crc: 0xabcd,
                },
            ],
        }
    }

    #[test]
    fn journal_block_round_trips() {
        let mut out = vec![0u8; 4096];
        jb().encode_into(&[1; 16], &mut out).unwrap();
        assert_eq!(JournalBlock::decode(&[1; 16], &out), Ok(jb()));
    }

    #[test]
    fn journal_block_detects_bit_flips_torn_tails_and_foreign_stores() {
        let mut out = vec![0u8; 4096];
        jb().encode_into(&[1; 16], &mut out).unwrap();
        let used = JOURNAL_HEADER + JournalBlock::payload_len(&jb().entries);
        for bit in 0..used * 8 {
            let mut c = out.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                JournalBlock::decode(&[1; 16], &c).is_err(),
                "flip of bit {bit} accepted"
            );
        }
        // A torn write: the second half of the sector never arrived.
        let mut torn = out.clone();
        torn[used / 2..].fill(0);
        assert!(JournalBlock::decode(&[1; 16], &torn).is_err());
        assert_eq!(
            JournalBlock::decode(&[2; 16], &out),
            Err(JournalError::Foreign)
        );
    }

    #[test]
    fn journal_block_refuses_a_payload_that_does_not_fit() {
        let mut b = jb();
        b.entries = (0..1000)
            .map(|i| Entry::Preserve {
                snap: 1,
                block: i,
                slot: i as u64,
                crc: 0,
            })
            .collect();
        let mut out = vec![0u8; 4096];
        assert!(b.encode_into(&[1; 16], &mut out).is_err());
    }

    #[test]
    fn checkpoint_round_trips_and_detects_corruption() {
        let c = CheckpointBody {
            next_seq: 5,
            journal_slot: 9,
            next_snapshot_id: 3,
            snapshots: vec![SnapshotRecord {
                id: 1,
                name: "s".into(),
                created_unix: 2,
                internal: false,
                delta: vec![(1, 10, 77), (4, 11, 78)],
            }],
            high_water: 20,
            free: vec![12, 13],
            free_on_load: vec![3],
            retained: vec![4, 5],
            restore: Some((1, 2)),
        };
        let b = c.encode(4096).unwrap();
        assert_eq!(b.len() % 4096, 0);
        assert_eq!(CheckpointBody::decode(&b), Ok(c.clone()));
        let len = c.encoded_len().unwrap();
        for byte in (0..len).step_by(7) {
            let mut d = b.clone();
            d[byte] ^= 0x10;
            assert!(
                CheckpointBody::decode(&d).is_err(),
                "flip at byte {byte} accepted"
            );
        }
    }
}
