//! Shipping one point: freeze, send what changed since the last committed point, commit.

use crate::error::{Error, Result};
use crate::format::{self, EncodedSegment, Manifest, SegmentBuilder};
use crate::remote;
use crate::source::PointSource;
use crate::state::{LocalPoint, ShipState};
use crate::targets::{publish, Target};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Progress callback: `(blocks examined, blocks to examine)` of the point being shipped.
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How to ship.
#[derive(Clone)]
pub struct ShipOptions {
    /// Local state file for this (volume, target) pair; created on first use.
    pub state_path: PathBuf,
    /// zstd level for segment bodies; `None` stores them raw.
    pub zstd_level: Option<i32>,
    /// Cut a segment once its uncompressed body reaches this many bytes.
    pub segment_bytes: usize,
    /// When nothing changed since the last committed point, commit nothing and drop the
    /// new local point: the latest committed point already holds the image. The scheduler
    /// and the offline `ship --once` set it; leave it off to always commit a point (e.g.
    /// to record a point in time even on an idle volume).
    pub skip_unchanged: bool,
    /// Called as blocks are read; `None` for silence.
    pub progress: Option<Progress>,
    /// Retention for [`crate::Scheduler`]: after every `keep` new commits it runs
    /// [`crate::remote_prune`] to keep the newest `keep` points. `ship_once` ignores it.
    pub keep_points: Option<usize>,
}

impl std::fmt::Debug for ShipOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipOptions")
            .field("state_path", &self.state_path)
            .field("zstd_level", &self.zstd_level)
            .field("segment_bytes", &self.segment_bytes)
            .field("skip_unchanged", &self.skip_unchanged)
            .field("progress", &self.progress.is_some())
            .field("keep_points", &self.keep_points)
            .finish()
    }
}

impl ShipOptions {
    /// [`ShipOptions::new`] with the state file of the store at `store` for the target
    /// `url` (canonical spelling): [`crate::state::ship_state_path`].
    pub fn for_store(store: &std::path::Path, url: &str) -> Self {
        ShipOptions::new(crate::state::ship_state_path(store, url))
    }

    /// Defaults: zstd level 3, 4 MiB segments, always commit.
    pub fn new(state_path: impl Into<PathBuf>) -> Self {
        ShipOptions {
            state_path: state_path.into(),
            zstd_level: Some(3),
            segment_bytes: format::DEFAULT_SEGMENT_BYTES,
            skip_unchanged: false,
            progress: None,
            keep_points: None,
        }
    }
}

/// What one `ship_once` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PointInfo {
    /// Remote point number (the latest committed one when `committed` is false).
    pub seq: u64,
    /// Local ship-point snapshot name.
    pub point_name: String,
    /// True when this call published a new manifest.
    pub committed: bool,
    /// True when the point is a full (sparse) base rather than an increment.
    pub full: bool,
    /// True when the call finished a point an earlier, interrupted call had frozen.
    pub resumed: bool,
    /// Seconds since the epoch when the point was frozen (what RPO is measured from).
    pub created_unix: u64,
    /// Blocks sent with content.
    pub data_blocks: u64,
    /// Changed blocks sent as zero records (content all zeroes, no payload).
    pub zero_blocks: u64,
    /// Segments in the point.
    pub segments: u32,
    /// Segments found already published (by an interrupted attempt) and not sent again.
    pub segments_reused: u32,
    /// Bytes uploaded (segments + manifest).
    pub bytes_uploaded: u64,
    /// Bytes read from the frozen point.
    pub bytes_read: u64,
    /// Wall time of the call (seconds in JSON, as `elapsed_secs`).
    #[serde(rename = "elapsed_secs", with = "crate::secs")]
    pub elapsed: Duration,
}

impl PointInfo {
    /// Point `seq` before anything of it is sent (and what an unchanged volume reports).
    fn unsent(seq: u64, point_name: &str, full: bool, created_unix: u64) -> PointInfo {
        PointInfo {
            seq,
            point_name: point_name.to_string(),
            committed: false,
            full,
            resumed: false,
            created_unix,
            data_blocks: 0,
            zero_blocks: 0,
            segments: 0,
            segments_reused: 0,
            bytes_uploaded: 0,
            bytes_read: 0,
            elapsed: Duration::ZERO,
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Prefix of every local ship point for `target_id` (`ship-<12 hex digits>-`): stable and
/// unique per target, so a store shipping to several targets keeps their points apart and
/// [`crate::state::ShipTarget::owns_point`] can tell whose a point is.
pub fn point_prefix(target_id: &str) -> String {
    format!(
        "ship-{}-",
        hex::encode(&format::sha256(target_id.as_bytes())[..6])
    )
}

/// Segments uploaded concurrently (hides per-request latency of S3 and peers).
const UPLOAD_THREADS: usize = 3;

/// Blocks read from the source per request.
const READ_RUN_BLOCKS: u64 = 256;

/// Ships one point to `target` and returns once its manifest is published (committed).
///
/// Invariants: a manifest is published only after every segment it names; an interrupted
/// call leaves at most unreferenced segments, and the next call re-ships the same frozen
/// point under the same keys, skipping what is already there; the previous local ship
/// point is dropped only after the new one is committed.
pub fn ship_once(
    source: &dyn PointSource,
    target: &dyn Target,
    opts: &ShipOptions,
) -> Result<PointInfo> {
    let started = Instant::now();
    let tid = target.id();
    let bs = source.block_size();
    let size = source.size();
    if bs == 0 || !bs.is_power_of_two() || bs > format::MAX_BLOCK_SIZE {
        return Err(Error::Invalid(format!(
            "volume block size {bs} is not a power of two up to 1 MiB"
        )));
    }
    let nblocks = size.div_ceil(bs as u64);
    if nblocks > u32::MAX as u64 {
        return Err(Error::Invalid(format!(
            "volume of {nblocks} blocks exceeds 2^32 blocks; use a larger block size"
        )));
    }
    // One ship per state file at a time (e.g. the daemon's scheduler and a manual --once).
    let _lock = lock_state(&opts.state_path, &tid)?;
    let mut st = ShipState::load(&opts.state_path, &tid)?;
    let prefix = point_prefix(&tid);

    // The remote is the truth; reconcile the local state with its latest manifest.
    let latest = remote::latest(target)?;
    if let Some((m, _)) = &latest {
        let vid = hex::encode(m.volume_id);
        if !st.volume_id.is_empty() && st.volume_id != vid {
            return Err(Error::Conflict {
                target: tid,
                detail: format!("it holds points of volume {vid}, this state file ships volume {}; use a separate target per volume", st.volume_id),
            });
        }
        st.volume_id = vid;
        // Crash after publishing a manifest but before saving the state: promote it.
        if st
            .in_progress
            .as_ref()
            .is_some_and(|ip| ip.seq == m.seq && ip.name == m.point_name)
        {
            if let Some(old) = st.committed.take() {
                st.stale.push(old.name);
            }
            st.committed = st.in_progress.take();
        }
    } else if st.volume_id.is_empty() {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)
            .map_err(|e| Error::Invalid(format!("no randomness for a volume id: {e}")))?;
        st.volume_id = hex::encode(id);
    }
    let mut volume_id = [0u8; 16];
    hex::decode_to_slice(&st.volume_id, &mut volume_id).map_err(|_| Error::State {
        path: opts.state_path.display().to_string(),
        detail: "volume_id is not 32 hex digits; delete the file".into(),
    })?;

    let has = |name: &str| {
        source
            .has_point(name)
            .map_err(|e| Error::source(format!("look up point {name}"), e))
    };
    let base = match &latest {
        Some((m, _)) if m.point_name.starts_with(&prefix) && has(&m.point_name)? => {
            Some(m.point_name.clone())
        }
        _ => None,
    };
    let seq = latest.as_ref().map(|(m, _)| m.seq + 1).unwrap_or(1);
    let name = format!("{prefix}{seq}");

    let prev_in_progress = st.in_progress.clone();
    // Any other local point this state knows of is no longer needed once we commit.
    for lp in [st.committed.take(), st.in_progress.take()]
        .into_iter()
        .flatten()
    {
        if Some(&lp.name) != base.as_ref() && lp.name != name {
            st.stale.push(lp.name);
        }
    }
    if let Some(b) = &base {
        let bseq = latest.as_ref().map(|(m, _)| m.seq).unwrap_or(0);
        st.committed = Some(LocalPoint {
            seq: bseq,
            name: b.clone(),
            created_unix: latest.as_ref().map(|(m, _)| m.created_unix).unwrap_or(0),
        });
    }
    // Resume only the point this state recorded as in progress: a same-named leftover of
    // unknown age (state file lost, remote wiped) is replaced by a fresh freeze. Unchanged
    // content still costs nothing to upload: segment keys are content hashes.
    let recorded = prev_in_progress.filter(|p| p.name == name);
    let exists = has(&name)?;
    let resumed = exists && recorded.is_some();
    if exists && !resumed {
        source
            .delete_point(&name)
            .map_err(|e| Error::source(format!("drop leftover ship point {name}"), e))?;
    }
    let created_unix = match recorded {
        Some(p) if resumed && p.created_unix != 0 => p.created_unix,
        _ => now_unix(),
    };
    // Record the point before freezing it so a crash right after still finds it.
    st.in_progress = Some(LocalPoint {
        seq,
        name: name.clone(),
        created_unix,
    });
    st.save(&opts.state_path)?;
    if !resumed {
        source
            .create_point(&name)
            .map_err(|e| Error::source(format!("create ship point {name}"), e))?;
    }

    let (blocks, total): (Box<dyn Iterator<Item = u64>>, u64) = match &base {
        Some(b) => {
            let changed = source
                .changed_blocks(b, &name)
                .map_err(|e| Error::source(format!("changed blocks {b}..{name}"), e))?;
            if changed.is_empty() && opts.skip_unchanged {
                source
                    .delete_point(&name)
                    .map_err(|e| Error::source(format!("drop unchanged point {name}"), e))?;
                st.in_progress = None;
                drop_stale(source, &mut st);
                st.save(&opts.state_path)?;
                let (m, _) = latest
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("base without a latest point".into()))?;
                let mut info = PointInfo::unsent(m.seq, &m.point_name, m.full, created_unix);
                info.elapsed = started.elapsed();
                return Ok(info);
            }
            let total = changed.range_cardinality(..nblocks as u32);
            let iter = changed
                .into_iter()
                .map(u64::from)
                .filter(move |&b| b < nblocks);
            (Box::new(iter), total)
        }
        None => (Box::new(0..nblocks), nblocks),
    };
    let full = base.is_none();

    let mut info = PointInfo {
        resumed,
        ..PointInfo::unsent(seq, &name, full, created_unix)
    };
    let segments = send_blocks(
        source,
        target,
        &name,
        (seq, bs, size),
        (blocks, total),
        full,
        opts,
        &mut info,
    )?;

    let (parent_seq, parent_identity) = match &latest {
        Some((m, id)) => (m.seq, *id),
        None => (0, [0u8; 32]),
    };
    let manifest = Manifest {
        seq,
        gen: 0,
        full,
        block_size: bs,
        volume_size: size,
        volume_id,
        created_unix,
        parent_seq,
        parent_identity,
        origin_identity: [0; 32],
        data_blocks: info.data_blocks,
        zero_blocks: info.zero_blocks,
        point_name: name.clone(),
        segments,
    };
    let bytes = manifest.encode()?;
    // The commit: published last, after every segment it names.
    publish(target, &format::manifest_key(seq, 0), &bytes, false)?;
    info.bytes_uploaded += bytes.len() as u64;
    info.committed = true;

    if let Some(old) = st.committed.take() {
        st.stale.push(old.name);
    }
    st.committed = st.in_progress.take();
    st.save(&opts.state_path)?;
    drop_stale(source, &mut st);
    st.save(&opts.state_path)?;
    info.elapsed = started.elapsed();
    tracing::info!(
        seq,
        full,
        data_blocks = info.data_blocks,
        bytes = info.bytes_uploaded,
        "committed point to {tid}"
    );
    Ok(info)
}

/// The lock of one ship per state file, held for the length of a ship.
///
/// Its file (`STATE.lock`) exists only while a ship runs: it is unlinked on drop, while
/// still locked, so failed or finished ships leave nothing next to the store.
struct StateLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Unlinked before `_file` closes (and unlocks): whoever opened the old name meanwhile
        // finds, once it gets the lock, that the name no longer leads to its inode, and
        // retries on a fresh one (see `lock_state`).
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_state(state: &std::path::Path, tid: &str) -> Result<StateLock> {
    use std::os::unix::fs::MetadataExt;
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    // Each round loses only to a holder that unlinked the name in the meantime; a handful
    // of rounds is plenty, the bound only keeps a pathological race finite.
    for _ in 0..100 {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "open ship lock file", e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Conflict {
                    target: tid.to_string(),
                    detail: format!(
                        "another ship using state file {} is running; wait for it or stop the other shipper",
                        state.display()
                    ),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(&path, "lock ship state", e))
            }
        }
        // A lock on an inode the name no longer leads to (unlinked by the previous holder)
        // excludes nobody: only the lock on the current file counts.
        let ours = f
            .metadata()
            .map_err(|e| Error::io(&path, "stat ship lock file", e))?;
        match std::fs::metadata(&path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                return Ok(StateLock { path, _file: f })
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, "stat ship lock file", e)),
        }
    }
    Err(Error::Conflict {
        target: tid.to_string(),
        detail: format!(
            "the ship lock {} keeps changing hands; another shipper uses state file {}: stop it",
            path.display(),
            state.display()
        ),
    })
}

/// Deletes local points that are no longer needed; keeps the names whose deletion failed.
fn drop_stale(source: &dyn PointSource, st: &mut ShipState) {
    let keep: Vec<String> = [&st.committed, &st.in_progress]
        .into_iter()
        .flatten()
        .map(|p| p.name.clone())
        .collect();
    st.stale.retain(|n| {
        if keep.contains(n) {
            return false;
        }
        match source.has_point(n) {
            Ok(false) => false,
            Ok(true) => match source.delete_point(n) {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(
                        "could not drop old ship point {n}: {e}; will retry on the next ship"
                    );
                    true
                }
            },
            Err(_) => true,
        }
    });
}

/// Reads `blocks` from point `name`, builds segments and publishes them on a second thread
/// so reading/compressing overlaps uploading. Returns the manifest's segment table.
#[allow(clippy::too_many_arguments)]
fn send_blocks(
    source: &dyn PointSource,
    target: &dyn Target,
    name: &str,
    (seq, bs, size): (u64, u32, u64),
    (mut blocks, total): (Box<dyn Iterator<Item = u64>>, u64),
    full: bool,
    opts: &ShipOptions,
    info: &mut PointInfo,
) -> Result<Vec<format::SegmentInfo>> {
    let bsz = bs as u64;
    let (tx, rx) = mpsc::sync_channel::<EncodedSegment>(UPLOAD_THREADS);
    let rx = Mutex::new(rx);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let uploaders: Vec<_> = (0..UPLOAD_THREADS)
            .map(|_| {
                let (rx, failed) = (&rx, &failed);
                scope.spawn(move || -> Result<(u32, u64, Vec<format::SegmentInfo>)> {
                    let (mut reused, mut bytes, mut table) = (0u32, 0u64, Vec::new());
                    let mut error = None;
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(seg) = next else { break };
                        // After any failure keep draining (without uploading) until the
                        // producer stops: it may be blocked sending into a full channel.
                        if failed.load(Ordering::SeqCst) {
                            continue;
                        }
                        let key = format::segment_key(seq, 0, seg.info.index, &seg.info.sha256);
                        match publish(target, &key, &seg.bytes, true) {
                            Ok(true) => reused += 1,
                            Ok(false) => bytes += seg.bytes.len() as u64,
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                error = Some(e);
                                continue;
                            }
                        }
                        table.push(seg.info);
                    }
                    match error {
                        Some(e) => Err(e.into()),
                        None => Ok((reused, bytes, table)),
                    }
                })
            })
            .collect();

        let mut produce = || -> Result<()> {
            let mut builder = SegmentBuilder::new(bs);
            let mut index = 0u32;
            let mut buf = vec![0u8; (READ_RUN_BLOCKS * bsz) as usize];
            let mut examined = 0u64;
            let mut pending = blocks.next();
            while let Some(first) = pending {
                // Gather a run of consecutive blocks to read in one request.
                let mut n = 1u64;
                pending = blocks.next();
                while n < READ_RUN_BLOCKS && pending == Some(first + n) {
                    n += 1;
                    pending = blocks.next();
                }
                let off = first * bsz;
                let len = (n * bsz).min(size - off) as usize;
                buf[..(n * bsz) as usize].fill(0);
                source
                    .read_point(name, off, &mut buf[..len])
                    .map_err(|e| Error::source(format!("read point {name} at byte {off}"), e))?;
                info.bytes_read += len as u64;
                examined += n;
                if let Some(p) = &opts.progress {
                    p(examined, total);
                }
                for i in 0..n {
                    let data = &buf[(i * bsz) as usize..((i + 1) * bsz) as usize];
                    let zero = format::is_zero(data);
                    // A full base is sparse: absent blocks restore as zeroes.
                    if zero && full {
                        continue;
                    }
                    if zero {
                        info.zero_blocks += 1;
                    } else {
                        info.data_blocks += 1;
                    }
                    builder.push(first + i, data);
                    if builder.body_len() >= opts.segment_bytes {
                        let seg = builder.finish(seq, index, opts.zstd_level)?;
                        index += 1;
                        if failed.load(Ordering::SeqCst) || tx.send(seg).is_err() {
                            return Ok(()); // an upload failed; its error is reported below
                        }
                    }
                }
            }
            if builder.records() > 0 {
                let seg = builder.finish(seq, index, opts.zstd_level)?;
                let _ = tx.send(seg);
            }
            Ok(())
        };
        let produced = produce();
        drop(tx);
        let (mut reused, mut bytes, mut table) = (0u32, 0u64, Vec::new());
        let mut upload_error = None;
        for u in uploaders {
            match u.join() {
                Ok(Ok((r, b, t))) => {
                    reused += r;
                    bytes += b;
                    table.extend(t);
                }
                Ok(Err(e)) => upload_error = upload_error.or(Some(e)),
                Err(_) => {
                    upload_error = upload_error.or(Some(Error::Invalid(
                        "segment uploader thread panicked".into(),
                    )))
                }
            }
        }
        // An upload error explains a producer that stopped early; report it first.
        if let Some(e) = upload_error {
            return Err(e);
        }
        produced?;
        // Uploads finish out of order; the manifest lists segments by index.
        table.sort_by_key(|s| s.index);
        info.segments = table.len() as u32;
        info.segments_reused = reused;
        info.bytes_uploaded += bytes;
        Ok(table)
    })
}
