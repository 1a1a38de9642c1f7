//! The remote format: object keys, segment objects and manifests.
//!
//! Every byte written here is described in `shipper/REMOTE-FORMAT.md`; the constants below
//! are the single place each fact is defined.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};

/// Version of the remote format, stored in every segment and manifest.
pub const FORMAT_VERSION: u32 = 1;
/// First 8 bytes of every segment object.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SNAPSEG1";
/// First 8 bytes of every manifest object.
pub const MANIFEST_MAGIC: &[u8; 8] = b"SNAPMAN1";
/// Key prefix (below the target root) of manifests.
pub const MANIFEST_DIR: &str = "manifests/";
/// Key prefix (below the target root) of segments.
pub const SEGMENT_DIR: &str = "segments/";
/// Segments are cut once their uncompressed record body reaches this many bytes.
pub const DEFAULT_SEGMENT_BYTES: usize = 4 << 20;
/// Largest segment object a reader accepts (guards memory against hostile objects).
pub const MAX_SEGMENT_OBJECT: u64 = 80 << 20;
/// Largest uncompressed segment body a reader accepts.
pub const MAX_SEGMENT_BODY: u64 = 80 << 20;
/// Largest manifest object a reader accepts.
pub const MAX_MANIFEST_OBJECT: u64 = 64 << 20;
/// Largest block size the format accepts.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Length of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 60;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// Segment flag: the body is one zstd frame.
pub const SEG_FLAG_ZSTD: u32 = 1;
/// Manifest flag: the point is a full base (restore stops walking the chain here).
pub const MAN_FLAG_FULL: u32 = 1;
/// Record kind: the payload is the block's content.
pub const RECORD_DATA: u8 = 0;
/// Record kind: the block is all zeroes; no payload.
pub const RECORD_ZERO: u8 = 1;

/// Key of the manifest of point `seq`, generation `gen`.
pub fn manifest_key(seq: u64, gen: u32) -> String {
    format!("{MANIFEST_DIR}{seq:016x}-{gen:08x}")
}

/// Parses a manifest key back into `(seq, gen)`; `None` for anything else (temp files, junk).
pub fn parse_manifest_key(key: &str) -> Option<(u64, u32)> {
    let rest = key.strip_prefix(MANIFEST_DIR)?;
    let (s, g) = rest.split_once('-')?;
    if s.len() != 16 || g.len() != 8 {
        return None;
    }
    Some((
        u64::from_str_radix(s, 16).ok()?,
        u32::from_str_radix(g, 16).ok()?,
    ))
}

/// Key of a segment: unique by construction (point, generation, index, content hash).
pub fn segment_key(seq: u64, gen: u32, index: u32, sha256: &[u8; 32]) -> String {
    format!(
        "{SEGMENT_DIR}{seq:016x}/{gen:08x}-{index:08x}-{}",
        hex::encode(&sha256[..8])
    )
}

/// Parses a segment key into `(seq, gen)`; `None` for anything else.
pub fn parse_segment_key(key: &str) -> Option<(u64, u32)> {
    let rest = key.strip_prefix(SEGMENT_DIR)?;
    let (s, name) = rest.split_once('/')?;
    let mut parts = name.split('-');
    let g = parts.next()?;
    let i = parts.next()?;
    let h = parts.next()?;
    if s.len() != 16 || g.len() != 8 || i.len() != 8 || h.len() != 16 || parts.next().is_some() {
        return None;
    }
    Some((
        u64::from_str_radix(s, 16).ok()?,
        u32::from_str_radix(g, 16).ok()?,
    ))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn record_crc(block: u64, kind: u8, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&block.to_le_bytes());
    h.update(&[kind]);
    h.update(data);
    h.finalize()
}

/// Accumulates records of one segment.
pub struct SegmentBuilder {
    block_size: u32,
    body: Vec<u8>,
    records: u32,
    first_block: Option<u64>,
    last_block: u64,
}

impl SegmentBuilder {
    /// Starts an empty segment for blocks of `block_size` bytes.
    pub fn new(block_size: u32) -> Self {
        SegmentBuilder {
            block_size,
            body: Vec::new(),
            records: 0,
            first_block: None,
            last_block: 0,
        }
    }
    /// Appends a block: a zero record when `data` is all zeroes, a data record otherwise.
    pub fn push(&mut self, block: u64, data: &[u8]) {
        debug_assert_eq!(data.len(), self.block_size as usize);
        let zero = is_zero(data);
        let kind = if zero { RECORD_ZERO } else { RECORD_DATA };
        let payload: &[u8] = if zero { &[] } else { data };
        self.body.extend_from_slice(&block.to_le_bytes());
        self.body.push(kind);
        self.body.extend_from_slice(&[0u8; 3]);
        self.body
            .extend_from_slice(&record_crc(block, kind, payload).to_le_bytes());
        self.body.extend_from_slice(payload);
        self.records += 1;
        self.first_block.get_or_insert(block);
        self.last_block = block;
    }
    /// Uncompressed body length so far.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
    /// Number of records so far.
    pub fn records(&self) -> u32 {
        self.records
    }
    /// Encodes the segment object; `zstd_level` of `None` stores the body raw.
    pub fn finish(
        &mut self,
        seq: u64,
        index: u32,
        zstd_level: Option<i32>,
    ) -> Result<EncodedSegment> {
        let raw = std::mem::take(&mut self.body);
        let (flags, stored) = match zstd_level {
            Some(level) => {
                let c = zstd::bulk::compress(&raw, level).map_err(|e| {
                    Error::Invalid(format!("zstd compression of segment {index} failed: {e}"))
                })?;
                (SEG_FLAG_ZSTD, c)
            }
            None => (0, raw.clone()),
        };
        let mut obj = Vec::with_capacity(SEGMENT_HEADER_LEN + stored.len());
        obj.extend_from_slice(SEGMENT_MAGIC);
        obj.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        obj.extend_from_slice(&flags.to_le_bytes());
        obj.extend_from_slice(&self.block_size.to_le_bytes());
        obj.extend_from_slice(&self.records.to_le_bytes());
        obj.extend_from_slice(&seq.to_le_bytes());
        obj.extend_from_slice(&index.to_le_bytes());
        obj.extend_from_slice(&0u32.to_le_bytes());
        obj.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        obj.extend_from_slice(&(stored.len() as u64).to_le_bytes());
        let crc = crc32fast::hash(&obj[..56]);
        obj.extend_from_slice(&crc.to_le_bytes());
        obj.extend_from_slice(&stored);
        let digest = sha256(&obj);
        let seg = EncodedSegment {
            info: SegmentInfo {
                index,
                records: self.records,
                first_block: self.first_block.unwrap_or(0),
                last_block: self.last_block,
                size: obj.len() as u64,
                sha256: digest,
            },
            bytes: obj,
        };
        self.records = 0;
        self.first_block = None;
        self.last_block = 0;
        Ok(seg)
    }
}

/// True when every byte is zero.
pub fn is_zero(data: &[u8]) -> bool {
    // Word-wise: this runs for every block of a full base.
    let mut chunks = data.chunks_exact(8);
    chunks.all(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// A segment ready to publish.
pub struct EncodedSegment {
    /// What the manifest records about it.
    pub info: SegmentInfo,
    /// The object's bytes.
    pub bytes: Vec<u8>,
}

/// One record decoded from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// Block `0` holds `1`.
    Data(u64, &'a [u8]),
    /// Block `0` is all zeroes.
    Zero(u64),
}

/// A decoded segment body.
pub struct DecodedSegment {
    body: Vec<u8>,
    block_size: u32,
    records: u32,
}

impl DecodedSegment {
    /// Iterates the records; each was checked (structure and crc32) by [`decode_segment`].
    pub fn records(&self) -> RecordIter<'_> {
        RecordIter {
            body: &self.body,
            pos: 0,
            block_size: self.block_size as usize,
            left: self.records,
        }
    }
}

/// Iterator over a decoded segment's records.
pub struct RecordIter<'a> {
    body: &'a [u8],
    pos: usize,
    block_size: usize,
    left: u32,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Record<'a>;
    fn next(&mut self) -> Option<Record<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let h = &self.body[self.pos..self.pos + RECORD_HEADER_LEN];
        let block = u64::from_le_bytes(h[0..8].try_into().ok()?);
        let kind = h[8];
        self.pos += RECORD_HEADER_LEN;
        if kind == RECORD_ZERO {
            return Some(Record::Zero(block));
        }
        let data = &self.body[self.pos..self.pos + self.block_size];
        self.pos += self.block_size;
        Some(Record::Data(block, data))
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks a segment object against what its manifest says and decodes its records.
///
/// Refuses anything it cannot fully verify: size, SHA-256, magic, version, header crc,
/// block size, point, index, record count, every record's crc32 and block range.
pub fn decode_segment(
    key: &str,
    obj: &[u8],
    expect: &SegmentInfo,
    seq: u64,
    block_size: u32,
    nblocks: u64,
) -> Result<DecodedSegment> {
    let bad = |d: String| Error::corrupt(key, d);
    if obj.len() as u64 != expect.size {
        return Err(bad(format!(
            "size {} but the manifest says {}",
            obj.len(),
            expect.size
        )));
    }
    if sha256(obj) != expect.sha256 {
        return Err(bad(
            "SHA-256 does not match the manifest (object altered or damaged)".into(),
        ));
    }
    if obj.len() < SEGMENT_HEADER_LEN || &obj[..8] != SEGMENT_MAGIC {
        return Err(bad("not a snapblk segment (bad magic)".into()));
    }
    if le_u32(obj, 56) != crc32fast::hash(&obj[..56]) {
        return Err(bad("segment header crc32 mismatch".into()));
    }
    let version = le_u32(obj, 8);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads {FORMAT_VERSION}; upgrade snapblk"
        )));
    }
    let flags = le_u32(obj, 12);
    if le_u32(obj, 16) != block_size {
        return Err(bad(format!(
            "block size {} but the manifest says {block_size}",
            le_u32(obj, 16)
        )));
    }
    let records = le_u32(obj, 20);
    if le_u64(obj, 24) != seq || le_u32(obj, 32) != expect.index || records != expect.records {
        return Err(bad(
            "segment header does not match its manifest entry (point, index or record count)"
                .into(),
        ));
    }
    let raw_len = le_u64(obj, 40);
    let stored_len = le_u64(obj, 48);
    if raw_len > MAX_SEGMENT_BODY || stored_len != (obj.len() - SEGMENT_HEADER_LEN) as u64 {
        return Err(bad("segment body length fields are inconsistent".into()));
    }
    let stored = &obj[SEGMENT_HEADER_LEN..];
    let body = if flags & SEG_FLAG_ZSTD != 0 {
        zstd::bulk::decompress(stored, raw_len as usize)
            .map_err(|e| bad(format!("zstd body does not decode: {e}")))?
    } else if flags == 0 {
        stored.to_vec()
    } else {
        return Err(bad(format!("unknown segment flags {flags:#x}")));
    };
    if body.len() as u64 != raw_len {
        return Err(bad("decoded body length differs from the header".into()));
    }
    // Walk the records once to prove every later access is in bounds and every crc holds.
    let bs = block_size as usize;
    let mut pos = 0usize;
    for n in 0..records {
        if body.len() - pos < RECORD_HEADER_LEN {
            return Err(bad(format!("record {n} truncated")));
        }
        let block = le_u64(&body, pos);
        let kind = body[pos + 8];
        let crc = le_u32(&body, pos + 12);
        pos += RECORD_HEADER_LEN;
        let payload: &[u8] = match kind {
            RECORD_ZERO => &[],
            RECORD_DATA => {
                if body.len() - pos < bs {
                    return Err(bad(format!("record {n} (block {block}) truncated")));
                }
                &body[pos..pos + bs]
            }
            k => return Err(bad(format!("record {n} has unknown kind {k}"))),
        };
        if block >= nblocks {
            return Err(bad(format!(
                "record {n} names block {block}, beyond the volume's {nblocks} blocks"
            )));
        }
        if record_crc(block, kind, payload) != crc {
            return Err(bad(format!("record {n} (block {block}) crc32 mismatch")));
        }
        pos += payload.len();
    }
    if pos != body.len() {
        return Err(bad("trailing bytes after the last record".into()));
    }
    Ok(DecodedSegment {
        body,
        block_size,
        records,
    })
}

/// What a manifest records about one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Position of the segment within its point, from 0.
    pub index: u32,
    /// Number of records.
    pub records: u32,
    /// Block number of the first record.
    pub first_block: u64,
    /// Block number of the last record.
    pub last_block: u64,
    /// Object length in bytes.
    pub size: u64,
    /// SHA-256 of the whole object.
    pub sha256: [u8; 32],
}

/// A point's manifest: the commit marker, written after all its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Point number, from 1, consecutive per target.
    pub seq: u64,
    /// Generation: 0 as shipped; higher when retention rewrote the point as a merged base.
    pub gen: u32,
    /// True when the point holds the whole volume (restore needs nothing older).
    pub full: bool,
    /// Tracking block size in bytes.
    pub block_size: u32,
    /// Volume size in bytes.
    pub volume_size: u64,
    /// Random id of the shipped volume; every point on a target carries the same one.
    pub volume_id: [u8; 16],
    /// Seconds since the epoch when the point's frozen snapshot was taken.
    pub created_unix: u64,
    /// The previous point (0 for the first).
    pub parent_seq: u64,
    /// Identity (see [`Manifest::identity`]) of the parent's manifest; zeroes without parent.
    pub parent_identity: [u8; 32],
    /// For gen > 0: identity of the gen-0 manifest this one replaces; zeroes for gen 0.
    pub origin_identity: [u8; 32],
    /// Number of data records over all segments.
    pub data_blocks: u64,
    /// Number of zero records over all segments.
    pub zero_blocks: u64,
    /// Name of the local ship-point snapshot the point was read from.
    pub point_name: String,
    /// The segments, in index order.
    pub segments: Vec<SegmentInfo>,
}

const MANIFEST_FIXED: usize = 154;
const SEGMENT_ENTRY: usize = 64;

impl Manifest {
    /// Number of blocks of the volume.
    pub fn nblocks(&self) -> u64 {
        self.volume_size.div_ceil(self.block_size as u64)
    }

    /// Key of every segment, in index order.
    pub fn segment_keys(&self) -> Vec<String> {
        self.segments
            .iter()
            .map(|s| segment_key(self.seq, self.gen, s.index, &s.sha256))
            .collect()
    }

    /// Encodes the manifest object (ends with a SHA-256 of everything before it).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let name = self.point_name.as_bytes();
        if name.len() > 255 {
            return Err(Error::Invalid(format!(
                "point name {:?} longer than 255 bytes",
                self.point_name
            )));
        }
        let mut b = Vec::with_capacity(
            MANIFEST_FIXED + name.len() + 4 + self.segments.len() * SEGMENT_ENTRY + 32,
        );
        b.extend_from_slice(MANIFEST_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(if self.full { MAN_FLAG_FULL } else { 0 }).to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.gen.to_le_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&self.volume_size.to_le_bytes());
        b.extend_from_slice(&self.volume_id);
        b.extend_from_slice(&self.created_unix.to_le_bytes());
        b.extend_from_slice(&self.parent_seq.to_le_bytes());
        b.extend_from_slice(&self.parent_identity);
        b.extend_from_slice(&self.origin_identity);
        b.extend_from_slice(&self.data_blocks.to_le_bytes());
        b.extend_from_slice(&self.zero_blocks.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        debug_assert_eq!(b.len(), MANIFEST_FIXED);
        b.extend_from_slice(name);
        b.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            b.extend_from_slice(&s.index.to_le_bytes());
            b.extend_from_slice(&s.records.to_le_bytes());
            b.extend_from_slice(&s.first_block.to_le_bytes());
            b.extend_from_slice(&s.last_block.to_le_bytes());
            b.extend_from_slice(&s.size.to_le_bytes());
            b.extend_from_slice(&s.sha256);
        }
        let digest = sha256(&b);
        b.extend_from_slice(&digest);
        Ok(b)
    }

    /// Decodes and checks a manifest object read from `key`.
    pub fn decode(key: &str, b: &[u8]) -> Result<Manifest> {
        let bad = |d: &str| Error::corrupt(key, d.to_string());
        if b.len() < MANIFEST_FIXED + 4 + 32 || &b[..8] != MANIFEST_MAGIC {
            return Err(bad("not a snapblk manifest (bad magic or too short)"));
        }
        let (body, tail) = b.split_at(b.len() - 32);
        if sha256(body)[..] != tail[..] {
            return Err(bad(
                "manifest SHA-256 trailer mismatch (object altered or damaged)",
            ));
        }
        let version = le_u32(b, 8);
        if version != FORMAT_VERSION {
            return Err(bad("unsupported manifest format version; upgrade snapblk"));
        }
        let flags = le_u32(b, 12);
        if flags & !MAN_FLAG_FULL != 0 {
            return Err(bad("unknown manifest flags"));
        }
        let arr32 = |at: usize| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(&b[at..at + 32]);
            a
        };
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[40..56]);
        let name_len = u16::from_le_bytes([b[152], b[153]]) as usize;
        let mut pos = MANIFEST_FIXED;
        if body.len() < pos + name_len + 4 {
            return Err(bad("manifest truncated in the point name"));
        }
        let point_name = std::str::from_utf8(&b[pos..pos + name_len])
            .map_err(|_| bad("point name is not UTF-8"))?
            .to_string();
        pos += name_len;
        let count = le_u32(b, pos) as usize;
        pos += 4;
        if body.len() != pos + count * SEGMENT_ENTRY {
            return Err(bad("segment table length does not match the segment count"));
        }
        let mut segments = Vec::with_capacity(count);
        for i in 0..count {
            let at = pos + i * SEGMENT_ENTRY;
            let s = SegmentInfo {
                index: le_u32(b, at),
                records: le_u32(b, at + 4),
                first_block: le_u64(b, at + 8),
                last_block: le_u64(b, at + 16),
                size: le_u64(b, at + 24),
                sha256: arr32(at + 32),
            };
            if s.index as usize != i {
                return Err(bad("segment table out of order"));
            }
            segments.push(s);
        }
        let m = Manifest {
            seq: le_u64(b, 16),
            gen: le_u32(b, 24),
            full: flags & MAN_FLAG_FULL != 0,
            block_size: le_u32(b, 28),
            volume_size: le_u64(b, 32),
            volume_id,
            created_unix: le_u64(b, 56),
            parent_seq: le_u64(b, 64),
            parent_identity: arr32(72),
            origin_identity: arr32(104),
            data_blocks: le_u64(b, 136),
            zero_blocks: le_u64(b, 144),
            point_name,
            segments,
        };
        if m.block_size == 0 || !m.block_size.is_power_of_two() || m.block_size > MAX_BLOCK_SIZE {
            return Err(bad("block size is not a power of two up to 1 MiB"));
        }
        if m.seq == 0 || (m.parent_seq != 0 && m.parent_seq != m.seq - 1) {
            return Err(bad(
                "point numbers are not consecutive (seq 0 or parent not seq-1)",
            ));
        }
        if !m.full && m.parent_seq == 0 {
            return Err(bad("incremental point without a parent"));
        }
        if let Some((s, g)) = parse_manifest_key(key) {
            if s != m.seq || g != m.gen {
                return Err(bad(
                    "manifest content does not match its key (seq/generation)",
                ));
            }
        }
        Ok(m)
    }

    /// The identity children link to: SHA-256 of the gen-0 object, kept across rewrites.
    pub fn identity(&self, encoded: &[u8]) -> [u8; 32] {
        if self.gen == 0 {
            sha256(encoded)
        } else {
            self.origin_identity
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_roundtrip_raw_and_zstd_and_tamper_detected() {
        for level in [None, Some(3)] {
            let mut sb = SegmentBuilder::new(4096);
            let a = vec![7u8; 4096];
            let z = vec![0u8; 4096];
            sb.push(3, &a);
            sb.push(9, &z);
            let seg = sb.finish(5, 0, level).unwrap();
            let key = segment_key(5, 0, 0, &seg.info.sha256);
            assert_eq!(parse_segment_key(&key), Some((5, 0)));
            let d = decode_segment(&key, &seg.bytes, &seg.info, 5, 4096, 10).unwrap();
            let recs: Vec<_> = d.records().collect();
            assert_eq!(recs, vec![Record::Data(3, &a[..]), Record::Zero(9)]);
            // Out-of-range block numbers are refused even with a matching checksum.
            let e = decode_segment(&key, &seg.bytes, &seg.info, 5, 4096, 5)
                .err()
                .unwrap();
            assert!(e.to_string().contains("beyond the volume"), "{e}");
            let mut t = seg.bytes.clone();
            let last = t.len() - 1;
            t[last] ^= 1;
            let e = decode_segment(&key, &t, &seg.info, 5, 4096, 10)
                .err()
                .unwrap();
            assert!(e.to_string().contains("SHA-256"), "{e}");
        }
    }

    #[test]
    fn manifest_roundtrip_and_trailer_check() {
        let m = Manifest {
            seq: 2,
            gen: 0,
            full: false,
            block_size: 4096,
            volume_size: 1 << 20,
            volume_id: [1; 16],
            created_unix: 1234,
            parent_seq: 1,
            parent_identity: [2; 32],
            origin_identity: [0; 32],
            data_blocks: 1,
            zero_blocks: 1,
            point_name: "ship-abc-2".into(),
            segments: vec![SegmentInfo {
                index: 0,
                records: 2,
                first_block: 3,
                last_block: 9,
                size: 100,
                sha256: [4; 32],
            }],
        };
        let b = m.encode().unwrap();
        let key = manifest_key(2, 0);
        assert_eq!(parse_manifest_key(&key), Some((2, 0)));
        assert_eq!(Manifest::decode(&key, &b).unwrap(), m);
        let mut t = b.clone();
        t[20] ^= 0xff;
        assert!(Manifest::decode(&key, &t).is_err());
        // A manifest stored under another point's key is refused.
        assert!(Manifest::decode(&manifest_key(3, 0), &b).is_err());
    }
}
