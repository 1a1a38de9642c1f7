//! Reading the remote side: list, restore, verify, prune.

use crate::error::{Error, Result};
use crate::format::{self, decode_segment, DecodedSegment, Manifest, Record, SegmentBuilder};
use crate::targets::{publish, Target};
use roaring::RoaringBitmap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Which point to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointSel {
    /// The newest committed point.
    Latest,
    /// Point number `0`.
    Seq(u64),
}

impl FromStr for PointSel {
    type Err = Error;
    /// Parses `latest` or a point number.
    fn from_str(s: &str) -> Result<PointSel> {
        if s == "latest" {
            return Ok(PointSel::Latest);
        }
        s.parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .map(PointSel::Seq)
            .ok_or_else(|| Error::BadPoint {
                given: s.to_string(),
            })
    }
}

impl std::fmt::Display for PointSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PointSel::Latest => write!(f, "latest"),
            PointSel::Seq(n) => write!(f, "{n}"),
        }
    }
}

/// A committed point as `remote list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemotePoint {
    /// Point number.
    pub seq: u64,
    /// Manifest generation (0 as shipped, higher after retention merged it into a base).
    pub gen: u32,
    /// True for a full base.
    pub full: bool,
    /// Seconds since the epoch when the point was frozen.
    pub created_unix: u64,
    /// Volume size in bytes at that point.
    pub volume_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Data records in the point.
    pub data_blocks: u64,
    /// Zero records in the point.
    pub zero_blocks: u64,
    /// Segments in the point.
    pub segments: u32,
    /// Bytes of the point's segment objects.
    pub stored_bytes: u64,
}

pub(crate) struct Entry {
    pub manifest: Manifest,
    pub identity: [u8; 32],
}

/// Every live manifest (highest generation per point) of a target.
pub(crate) struct Catalog {
    pub points: BTreeMap<u64, Entry>,
    /// Manifests that did not decode: (key, error text).
    pub broken: Vec<(String, String)>,
}

/// The highest-generation manifest key of every point; lower generations are superseded.
fn live_manifest_keys(target: &dyn Target) -> Result<BTreeMap<u64, (u32, String)>> {
    let mut live: BTreeMap<u64, (u32, String)> = BTreeMap::new();
    for key in target.list(format::MANIFEST_DIR)? {
        let Some((seq, gen)) = format::parse_manifest_key(&key) else {
            continue;
        };
        let newer = match live.get(&seq) {
            Some((g, _)) => *g < gen,
            None => true,
        };
        if newer {
            live.insert(seq, (gen, key));
        }
    }
    Ok(live)
}

fn fetch_manifest(target: &dyn Target, key: &str) -> Result<Entry> {
    let bytes = target.get(key, format::MAX_MANIFEST_OBJECT)?;
    let manifest = Manifest::decode(key, &bytes)?;
    let identity = manifest.identity(&bytes);
    Ok(Entry { manifest, identity })
}

pub(crate) fn catalog(target: &dyn Target) -> Result<Catalog> {
    let live = live_manifest_keys(target)?;
    let mut points = BTreeMap::new();
    let mut broken = Vec::new();
    for (seq, (_, key)) in live {
        match fetch_manifest(target, &key) {
            Ok(e) => {
                points.insert(seq, e);
            }
            Err(Error::Target(t)) => return Err(Error::Target(t)),
            // Keep what is wrong, not the advice: list and prune wrap it again.
            Err(Error::Corrupt { detail, .. }) => broken.push((key, detail)),
            Err(e) => broken.push((key, e.to_string())),
        }
    }
    Ok(Catalog { points, broken })
}

/// The newest committed point and its identity, reading only its manifest.
pub(crate) fn latest(target: &dyn Target) -> Result<Option<(Manifest, [u8; 32])>> {
    let live = live_manifest_keys(target)?;
    match live.iter().next_back() {
        None => Ok(None),
        Some((_, (_, key))) => {
            let e = fetch_manifest(target, key)?;
            Ok(Some((e.manifest, e.identity)))
        }
    }
}

impl Catalog {
    fn resolve(&self, sel: PointSel, target: &dyn Target) -> Result<u64> {
        let seq = match sel {
            PointSel::Latest => self.points.keys().next_back().copied(),
            PointSel::Seq(n) => self.points.contains_key(&n).then_some(n),
        };
        seq.ok_or_else(|| Error::NoSuchPoint {
            what: sel.to_string(),
            target: target.id(),
        })
    }

    /// Manifests needed to restore `seq`: newest first, ending at a full base, every link
    /// checked against the parent's identity.
    fn chain(&self, seq: u64) -> Result<Vec<&Manifest>> {
        let mut out = Vec::new();
        let mut cur = seq;
        loop {
            let e = self.points.get(&cur).ok_or_else(|| {
                Error::corrupt(
                    format::manifest_key(cur, 0),
                    format!("point {cur}, needed to restore point {seq}, is missing or unreadable"),
                )
            })?;
            let m = &e.manifest;
            if let Some(child) = out.last().copied() {
                let child: &Manifest = child;
                if child.parent_identity != e.identity {
                    return Err(Error::corrupt(
                        format::manifest_key(child.seq, child.gen),
                        format!("parent link does not match point {cur}'s manifest (chain broken)"),
                    ));
                }
                if m.volume_id != child.volume_id || m.block_size != child.block_size {
                    return Err(Error::corrupt(
                        format::manifest_key(cur, m.gen),
                        "volume id or block size differs from its child",
                    ));
                }
            }
            out.push(m);
            if m.full {
                return Ok(out);
            }
            cur = m.parent_seq;
        }
    }
}

fn remote_point(m: &Manifest) -> RemotePoint {
    RemotePoint {
        seq: m.seq,
        gen: m.gen,
        full: m.full,
        created_unix: m.created_unix,
        volume_size: m.volume_size,
        block_size: m.block_size,
        data_blocks: m.data_blocks,
        zero_blocks: m.zero_blocks,
        segments: m.segments.len() as u32,
        stored_bytes: m.segments.iter().map(|s| s.size).sum(),
    }
}

/// Committed points of `target`, oldest first. Fails if a manifest is unreadable (run
/// [`remote_verify`] for a full diagnosis).
pub fn remote_list(target: &dyn Target) -> Result<Vec<RemotePoint>> {
    let cat = catalog(target)?;
    if let Some((key, err)) = cat.broken.first() {
        return Err(Error::corrupt(key.clone(), err.clone()));
    }
    Ok(cat
        .points
        .values()
        .map(|e| remote_point(&e.manifest))
        .collect())
}

fn fetch_segment(
    target: &dyn Target,
    m: &Manifest,
    idx: usize,
    nblocks: u64,
) -> Result<(DecodedSegment, u64)> {
    let s = &m.segments[idx];
    let key = format::segment_key(m.seq, m.gen, s.index, &s.sha256);
    let obj = target.get(&key, format::MAX_SEGMENT_OBJECT).map_err(|e| {
        if e.kind == crate::targets::TargetErrorKind::NotFound {
            Error::corrupt(&key, format!("segment of point {} is missing", m.seq))
        } else {
            Error::Target(e)
        }
    })?;
    let len = obj.len() as u64;
    Ok((
        decode_segment(&key, &obj, s, m.seq, m.block_size, nblocks.max(m.nblocks()))?,
        len,
    ))
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// The point restored.
    pub seq: u64,
    /// Bytes of the restored image.
    pub volume_size: u64,
    /// Blocks written with data.
    pub blocks_written: u64,
    /// Segments read and verified.
    pub segments_read: u64,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Wall time (seconds in JSON, as `elapsed_secs`).
    #[serde(rename = "elapsed_secs", with = "crate::secs")]
    pub elapsed: Duration,
}

/// Rebuilds the image of committed point `point` into `out`.
///
/// `out` is either a new regular file or a block device:
/// - a file must not exist; it is written unnamed ([`snapmap::NewFile`]) and appears at
///   `out` only once complete and durable, so a failed, interrupted or killed restore
///   leaves nothing, and no neighbouring file (such as an `out.partial` of the user's) is
///   touched;
/// - a device is opened exclusively (`O_EXCL`: the kernel refuses a mounted or otherwise
///   held device) and must be at least as large as the volume, checked before the first
///   write.
///
/// Every segment is checked (SHA-256 against the manifest, every record's crc32) before its
/// blocks are used. `progress(done, total)` counts segments.
pub fn remote_restore(
    target: &dyn Target,
    point: PointSel,
    out: &Path,
    progress: &dyn Fn(u64, u64),
) -> Result<RestoreReport> {
    let started = Instant::now();
    let cat = catalog(target)?;
    let seq = cat.resolve(point, target)?;
    let chain = cat.chain(seq)?;
    let tip = chain[0];
    let nblocks = tip.nblocks();
    if nblocks > u32::MAX as u64 {
        return Err(Error::corrupt(
            format::manifest_key(tip.seq, tip.gen),
            "volume has more than 2^32 blocks",
        ));
    }
    let is_blockdev = fs::metadata(out)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let (blocks_written, segments_read, bytes_downloaded) = if is_blockdev {
        let dev = open_device(out, tip.volume_size, seq)?;
        let r = restore_into(target, &chain, &dev, out, nblocks, true, progress)?;
        dev.sync_all()
            .map_err(|e| Error::io(out, "fsync the restored device", e))?;
        r
    } else {
        let image = snapmap::NewFile::create(out).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Output {
                path: out.display().to_string(),
                detail: "already exists; remove it or restore to another path".into(),
            },
            _ => Error::io(out, "create the restored image", e),
        })?;
        image
            .file()
            .set_len(tip.volume_size)
            .map_err(|e| Error::io(out, "size the restored image (is there room?)", e))?;
        // On any error `image` is dropped unnamed: nothing appears at `out`.
        let r = restore_into(target, &chain, image.file(), out, nblocks, false, progress)?;
        image.persist().map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Output {
                path: out.display().to_string(),
                detail: "appeared while the image was being restored and was left alone; remove it or restore to another path".into(),
            },
            _ => Error::io(out, "make the restored image durable and name it", e),
        })?;
        r
    };
    Ok(RestoreReport {
        seq,
        volume_size: tip.volume_size,
        blocks_written,
        segments_read,
        bytes_downloaded,
        elapsed: started.elapsed(),
    })
}

/// Opens block device `path` for a restore of `volume_size` bytes: exclusively, and only
/// if it is large enough, so nothing is written to a mounted or too-small device.
fn open_device(path: &Path, volume_size: u64, seq: u64) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let output = |detail: String| Error::Output {
        path: path.display().to_string(),
        detail,
    };
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => {
                let who = snapmap::io::claimants(path);
                let who = if who.is_empty() {
                    "another program (mounted, perhaps in another namespace, or held by a running device, LVM or md)".to_string()
                } else {
                    who.join(", ")
                };
                output(format!(
                    "the device is in use by {who}; unmount it or stop what holds it, then restore again"
                ))
            }
            _ => Error::io(path, "open the block device", e),
        })?;
    // A snapblk store on the device holds some volume's snapshots; a restore would destroy
    // them without a word. The superblock's first copy is at offset 0.
    let mut head = [0u8; 8];
    if std::os::unix::fs::FileExt::read_exact_at(&dev, &mut head, 0).is_ok()
        && head == snapmap::format::SUPER_MAGIC
    {
        return Err(output(
            "the device holds a snapblk store (the snapshots of some volume), which a restore would destroy; restore to another device, or zero its first 64 KiB if that store is no longer wanted".into(),
        ));
    }
    let size = snapmap::io::block_device_size(&dev)
        .map_err(|e| Error::io(path, "read the block device's size", e))?;
    if size < volume_size {
        return Err(output(format!(
            "the device holds {size} bytes, less than the {volume_size} bytes of point {seq}'s volume; restore to a device of at least {volume_size} bytes or to a new image file"
        )));
    }
    Ok(dev)
}

fn restore_into(
    target: &dyn Target,
    chain: &[&Manifest],
    file: &File,
    path: &Path,
    nblocks: u64,
    zero_fill: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<(u64, u64, u64)> {
    let tip = chain[0];
    let bs = tip.block_size as u64;
    let total: u64 = chain.iter().map(|m| m.segments.len() as u64).sum();
    let (mut written, mut segs, mut bytes) = (0u64, 0u64, 0u64);
    progress(0, total);
    let done = newest_records(target, chain, nblocks, |seen| {
        match seen {
            Seen::Block(block, Some(d)) => {
                let off = block * bs;
                let len = (bs.min(tip.volume_size - off)) as usize;
                file.write_all_at(&d[..len], off)
                    .map_err(|e| Error::io(path, "write restored block", e))?;
                written += 1;
            }
            Seen::Block(block, None) if zero_fill => {
                write_zero(file, path, block, bs, tip.volume_size)?;
            }
            Seen::Block(_, None) => {}
            Seen::Segment(len) => {
                bytes += len;
                segs += 1;
                progress(segs, total);
            }
        }
        Ok(())
    })?;
    if zero_fill {
        // A device is not fresh like a new sparse file: blank what the chain never names.
        for block in 0..nblocks {
            if !done.contains(block as u32) {
                write_zero(file, path, block, bs, tip.volume_size)?;
            }
        }
    }
    Ok((written, segs, bytes))
}

/// What [`newest_records`] reports, in chain order.
enum Seen<'a> {
    /// A block's newest record in the chain (its content at the tip): its bytes, or `None` for
    /// zeroes.
    Block(u64, Option<&'a [u8]>),
    /// A segment was read through (its size in bytes).
    Segment(u64),
}

/// Walks `chain` newest first and reports each block below `nblocks` once, at its first
/// (newest) record, which is its content at the chain's tip. Returns the blocks reported.
fn newest_records(
    target: &dyn Target,
    chain: &[&Manifest],
    nblocks: u64,
    mut each: impl FnMut(Seen<'_>) -> Result<()>,
) -> Result<RoaringBitmap> {
    let mut done = RoaringBitmap::new();
    for m in chain {
        for i in 0..m.segments.len() {
            let (seg, len) = fetch_segment(target, m, i, nblocks)?;
            for rec in seg.records() {
                let (block, data) = match rec {
                    Record::Data(b, d) => (b, Some(d)),
                    Record::Zero(b) => (b, None),
                };
                if block < nblocks && done.insert(block as u32) {
                    each(Seen::Block(block, data))?;
                }
            }
            each(Seen::Segment(len))?;
        }
    }
    Ok(done)
}

fn write_zero(file: &File, path: &Path, block: u64, bs: u64, size: u64) -> Result<()> {
    let off = block * bs;
    let len = bs.min(size - off) as usize;
    file.write_all_at(&vec![0u8; len], off)
        .map_err(|e| Error::io(path, "zero restored block", e))
}

/// Result of checking one point.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PointCheck {
    /// Point number.
    pub seq: u64,
    /// First problem that makes the point unrestorable, if any.
    pub problem: Option<String>,
}

/// Result of [`remote_verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Every live point, oldest first.
    pub points: Vec<PointCheck>,
    /// Problems not tied to one restorable point (unreadable manifests).
    pub problems: Vec<String>,
    /// Distinct segments downloaded and checked.
    pub segments_checked: u64,
    /// Bytes downloaded.
    pub bytes_checked: u64,
}

impl VerifyReport {
    /// True when at least one point was checked, every point is restorable and nothing is
    /// unreadable. An empty target proves nothing (a wrong URL looks exactly like it), so
    /// it is not "ok".
    pub fn ok(&self) -> bool {
        !self.points.is_empty()
            && self.problems.is_empty()
            && self.points.iter().all(|p| p.problem.is_none())
    }
}

/// Proves every committed point restorable: each manifest decodes, each chain link matches,
/// each segment is present with the recorded SHA-256 and every record's crc32 holds.
/// Transport failures are returned as `Err`; damage is reported in the [`VerifyReport`].
pub fn remote_verify(target: &dyn Target) -> Result<VerifyReport> {
    let cat = catalog(target)?;
    let mut report = VerifyReport {
        points: Vec::new(),
        problems: Vec::new(),
        segments_checked: 0,
        bytes_checked: 0,
    };
    for (key, err) in &cat.broken {
        report
            .problems
            .push(format!("remote object {key} is corrupt: {err}"));
    }
    // Each segment is downloaded once; its verdict is shared by every point whose chain uses it.
    let mut verdict: HashMap<String, Option<String>> = HashMap::new();
    for (&seq, _) in cat.points.iter() {
        let problem = match cat.chain(seq) {
            Err(e) => Some(e.finding()),
            Ok(chain) => {
                let nblocks = chain[0].nblocks();
                let mut first = None;
                for m in &chain {
                    for (i, key) in m.segment_keys().into_iter().enumerate() {
                        let v = match verdict.get(&key) {
                            Some(v) => v.clone(),
                            None => {
                                let v = match fetch_segment(target, m, i, nblocks) {
                                    Ok((_, len)) => {
                                        report.bytes_checked += len;
                                        None
                                    }
                                    Err(Error::Target(t))
                                        if t.is_transient()
                                            || t.kind == crate::targets::TargetErrorKind::Auth =>
                                    {
                                        return Err(Error::Target(t))
                                    }
                                    Err(e) => Some(e.finding()),
                                };
                                report.segments_checked += 1;
                                verdict.insert(key.clone(), v.clone());
                                v
                            }
                        };
                        if first.is_none() {
                            first = v;
                        }
                    }
                }
                first
            }
        };
        report.points.push(PointCheck { seq, problem });
    }
    Ok(report)
}

/// What [`remote_prune`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Points still on the target.
    pub kept: Vec<u64>,
    /// Points removed.
    pub removed: Vec<u64>,
    /// The oldest kept point, when it was rewritten as a merged full base.
    pub rebased: Option<u64>,
    /// Objects deleted (manifests and segments, including leftovers of interrupted ships).
    pub deleted_objects: u64,
}

/// Keeps the newest `keep` points and removes the rest without breaking the chain: when the
/// oldest kept point is an increment it is first rewritten (new generation, new segments)
/// as a full base holding the merged content of everything it depended on.
///
/// Ordering keeps every remaining point restorable at every step: the merged base is
/// committed before anything is deleted, and older manifests are deleted newest first.
/// Segments not referenced by any live manifest are deleted last, but only for points at
/// or below the newest committed one (a concurrent ship's pending segments are newer).
pub fn remote_prune(
    target: &dyn Target,
    keep: usize,
    zstd_level: Option<i32>,
) -> Result<PruneReport> {
    if keep == 0 {
        return Err(Error::Invalid(
            "keep must be at least 1 (prune never deletes every point)".into(),
        ));
    }
    let cat = catalog(target)?;
    if let Some((key, err)) = cat.broken.first() {
        return Err(Error::corrupt(
            key.clone(),
            format!("{err}; prune refuses to run on a damaged target"),
        ));
    }
    let seqs: Vec<u64> = cat.points.keys().copied().collect();
    let mut report = PruneReport {
        kept: seqs.clone(),
        removed: Vec::new(),
        rebased: None,
        deleted_objects: 0,
    };
    let Some(&newest) = seqs.last() else {
        return Ok(report);
    };
    let mut live: BTreeMap<u64, Manifest> = cat
        .points
        .iter()
        .map(|(s, e)| (*s, e.manifest.clone()))
        .collect();
    if seqs.len() > keep {
        let oldest_kept = seqs[seqs.len() - keep];
        let m = &cat.points[&oldest_kept].manifest;
        if !m.full {
            let merged = merge_base(target, &cat, oldest_kept, zstd_level)?;
            live.insert(oldest_kept, merged);
            report.rebased = Some(oldest_kept);
        }
        for &s in seqs.iter().rev().filter(|&&s| s < oldest_kept) {
            let e = &cat.points[&s];
            target.delete(&format::manifest_key(s, e.manifest.gen))?;
            live.remove(&s);
            report.removed.push(s);
            report.deleted_objects += 1;
        }
        report.removed.reverse();
        report.kept = live.keys().copied().collect();
    }
    // Superseded generations and unreferenced segments.
    let live_manifests: HashSet<String> = live
        .values()
        .map(|m| format::manifest_key(m.seq, m.gen))
        .collect();
    for key in target.list(format::MANIFEST_DIR)? {
        if let Some((s, _)) = format::parse_manifest_key(&key) {
            if s <= newest && !live_manifests.contains(&key) {
                target.delete(&key)?;
                report.deleted_objects += 1;
            }
        }
    }
    let referenced: HashSet<String> = live.values().flat_map(|m| m.segment_keys()).collect();
    for key in target.list(format::SEGMENT_DIR)? {
        if let Some((s, _)) = format::parse_segment_key(&key) {
            if s <= newest && !referenced.contains(&key) {
                target.delete(&key)?;
                report.deleted_objects += 1;
            }
        }
    }
    Ok(report)
}

fn merge_base(
    target: &dyn Target,
    cat: &Catalog,
    seq: u64,
    zstd_level: Option<i32>,
) -> Result<Manifest> {
    let chain = cat.chain(seq)?;
    let tip = chain[0];
    let gen = tip.gen + 1;
    let nblocks = tip.nblocks();
    let mut builder = SegmentBuilder::new(tip.block_size);
    let mut table = Vec::new();
    let mut data_blocks = 0u64;
    let flush =
        |builder: &mut SegmentBuilder, table: &mut Vec<format::SegmentInfo>| -> Result<()> {
            let seg = builder.finish(seq, table.len() as u32, zstd_level)?;
            publish(
                target,
                &format::segment_key(seq, gen, seg.info.index, &seg.info.sha256),
                &seg.bytes,
                true,
            )?;
            table.push(seg.info);
            Ok(())
        };
    // A full base is sparse: a block whose newest record is zero is simply absent.
    newest_records(target, &chain, nblocks, |seen| {
        if let Seen::Block(block, Some(d)) = seen {
            builder.push(block, d);
            data_blocks += 1;
            if builder.body_len() >= format::DEFAULT_SEGMENT_BYTES {
                flush(&mut builder, &mut table)?;
            }
        }
        Ok(())
    })?;
    if builder.records() > 0 {
        flush(&mut builder, &mut table)?;
    }
    let ident = cat.points[&seq].identity;
    let merged = Manifest {
        gen,
        full: true,
        data_blocks,
        zero_blocks: 0,
        origin_identity: ident,
        segments: table,
        ..tip.clone()
    };
    publish(
        target,
        &format::manifest_key(seq, gen),
        &merged.encode()?,
        false,
    )?;
    Ok(merged)
}
