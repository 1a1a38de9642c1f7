//! Device lifecycle through libublk's control device: add or recover,
//! serve, stop, delete. Block geometry and the attributes advertised to the
//! block layer are decided here, in [`params`].

use crate::io_op::IoBackend;
use crate::queue::{serve_queue, QueueCtx, ORIGIN_FIXED_FD};
use crate::worker::{CommitThread, WorkerPool};
use crate::{io_op::IoStats, DeviceSpec, Error};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkError, UblkFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kernel's ublk control node.
pub const CONTROL_NODE: &str = "/dev/ublk-control";

/// Set (to anything) in the daemon's environment to send every request
/// through the engine worker pool, never issuing origin I/O on the queue
/// threads (for diagnosis and A/B measurements).
pub const NO_DIRECT_ENV: &str = "SNAPBLK_NO_DIRECT_IO";

/// Largest discard / write-zeroes request, in bytes. Bounded because with
/// snapshots a discard preserves every block it covers, like a write.
pub const MAX_DISCARD_BYTES: u32 = 64 << 20;

/// Whether the daemon creates a new device or takes over a quiesced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// `UBLK_CMD_ADD_DEV` a new device.
    Add,
    /// `START_USER_RECOVERY` on a device whose daemon died.
    Recover,
}

/// Path of the block device for `id`.
pub fn bdev_path(id: u32) -> PathBuf {
    PathBuf::from(format!("/dev/ublkb{id}"))
}

/// Fails with the fix when the kernel has no ublk driver.
pub fn check_kernel() -> Result<(), Error> {
    if Path::new(CONTROL_NODE).exists() {
        Ok(())
    } else {
        Err(Error::NoKernelModule)
    }
}

/// Fails with the fix unless running as root.
pub fn check_root(what: &str) -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(Error::NotRoot {
            what: what.to_string(),
        })
    }
}

/// Whether the kernel knows a ublk device with this id.
pub fn kernel_has_device(id: u32) -> bool {
    Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
        || Path::new(&format!("/dev/ublkc{id}")).exists()
}

/// The ublk parameters for an origin of `size` bytes tracked in `block_size`
/// blocks: the origin's logical sector (`sector`: 512, or 4096 for a 4Kn disk
/// under O_DIRECT, which refuses smaller I/O), physical sector = engine block,
/// a volatile write cache (so FLUSH reaches us) and FUA, discard and
/// write-zeroes at block granularity.
pub fn params(
    size: u64,
    block_size: u32,
    io_buf_bytes: u32,
    sector: u32,
    read_only: bool,
) -> sys::ublk_params {
    let bs_shift = block_size.trailing_zeros() as u8;
    let sector_shift = sector.clamp(512, 4096).trailing_zeros() as u8;
    sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE
                | sys::UBLK_ATTR_FUA
                | if read_only {
                    sys::UBLK_ATTR_READ_ONLY
                } else {
                    0
                },
            logical_bs_shift: sector_shift.min(bs_shift),
            physical_bs_shift: bs_shift,
            io_min_shift: bs_shift,
            io_opt_shift: bs_shift,
            max_sectors: io_buf_bytes >> 9,
            dev_sectors: size >> 9,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: block_size,
            max_discard_sectors: MAX_DISCARD_BYTES >> 9,
            max_write_zeroes_sectors: MAX_DISCARD_BYTES >> 9,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ublk_err(what: &'static str, id: i32) -> impl FnOnce(UblkError) -> Error {
    move |source| match source {
        UblkError::OtherError(e) if e == -libc::EEXIST && id >= 0 => {
            Error::IdInUse { id: id as u32 }
        }
        UblkError::IOError(ref io) if io.raw_os_error() == Some(libc::EEXIST) && id >= 0 => {
            Error::IdInUse { id: id as u32 }
        }
        source => Error::Ublk { what, id, source },
    }
}

/// A device whose queues have stopped; [`Stopped::delete`] removes it from
/// the kernel once the engine is closed.
pub struct Stopped {
    ctrl: UblkCtrl,
    id: u32,
}

impl Stopped {
    /// The device id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Deletes the ublk device (char node and id).
    pub fn delete(self) -> Result<(), Error> {
        let id = self.id;
        match self.ctrl.del_dev() {
            Ok(_) => Ok(()),
            // Already gone (deleted by another tool): nothing left to do.
            Err(UblkError::OtherError(e)) if e == -libc::ENODEV || e == -libc::ENOENT => Ok(()),
            Err(e) => Err(ublk_err("delete", id as i32)(e)),
        }
    }
}

/// Adds (or recovers) the device described by `spec` and serves it from
/// `backend` until it is stopped. `on_ready(id)` runs once `/dev/ublkbN`
/// exists. Returns when every queue has drained and exited.
#[allow(clippy::too_many_arguments)]
pub fn serve<F>(
    spec: &DeviceSpec,
    attach: Attach,
    backend: Arc<dyn IoBackend>,
    size: u64,
    block_size: u32,
    stats: Arc<IoStats>,
    on_ready: F,
) -> Result<Stopped, Error>
where
    F: FnOnce(u32) + Send + Sync + 'static,
{
    check_kernel()?;
    let req_id = spec.id.map(|i| i as i32).unwrap_or(-1);
    // REISSUE: requests in flight when a daemon dies are re-sent to the
    // recovered daemon instead of failing; writes are idempotent.
    let ctrl_flags = (sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64;
    let ctrl = match attach {
        Attach::Add => UblkCtrlBuilder::default()
            .name("snapblk")
            .id(req_id)
            .nr_queues(spec.nr_queues)
            .depth(spec.depth)
            .io_buf_bytes(spec.io_buf_bytes)
            .ctrl_flags(ctrl_flags)
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
            .map_err(ublk_err("add", req_id))?,
        Attach::Recover => {
            if req_id < 0 {
                return Err(Error::Spec(
                    "recovering a device needs its device id".into(),
                ));
            }
            UblkCtrl::new_simple(req_id)
                .map_err(ublk_err("open for recovery", req_id))?
                .start_user_recover()
                .map_err(ublk_err("start user recovery", req_id))?;
            UblkCtrlBuilder::default()
                .name("snapblk")
                .id(req_id)
                .ctrl_flags(ctrl_flags)
                .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
                .build()
                .map_err(ublk_err("recover", req_id))?
        }
    };
    // Deletion is explicit (Stopped::delete), after the engine is closed.
    ctrl.disown();
    let id = ctrl.dev_info().dev_id;
    let info = ctrl.dev_info();
    tracing::info!(
        id,
        queues = info.nr_hw_queues,
        depth = info.queue_depth,
        ?attach,
        "ublk device ready for queues"
    );

    let pool = WorkerPool::start(spec.effective_workers(), backend.clone(), stats.clone())
        .map_err(Error::io("start engine worker threads"))?;
    let commits =
        CommitThread::start(backend.clone()).map_err(Error::io("start the commit thread"))?;
    // Plain reads and writes go to the origin on the queue's own ring unless
    // the backend has no file (tests) or the operator turned it off.
    let origin_fd = match std::env::var_os(NO_DIRECT_ENV) {
        Some(_) => None,
        None => backend.origin_fd(),
    };
    tracing::info!(direct = origin_fd.is_some(), "queue-thread origin I/O");
    let sector = backend.sector_size();
    let read_only = backend.read_only();
    let ctx = QueueCtx {
        pool: pool.handle(),
        commits: commits.handle(),
        backend,
        stats,
        dev_size: size,
        direct: false,
    };
    let io_buf_bytes = info.max_io_buf_bytes;
    let direct = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let direct_set = direct.clone();
    let tgt_init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = size;
        dev.tgt.params = params(size, block_size, io_buf_bytes, sector, read_only);
        if let Some(fd) = origin_fd {
            let n = dev.tgt.nr_fds;
            // libublk registers fds[0] (the char device) and these with each
            // queue's ring; the origin must land at ORIGIN_FIXED_FD.
            if n as u32 == ORIGIN_FIXED_FD {
                dev.tgt.fds[n as usize] = fd;
                dev.tgt.nr_fds = n + 1;
                direct_set.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        // Each tag can have its ublk command and one origin I/O in flight,
        // plus the queue's one completion eventfd read.
        let ring = dev.dev_info.queue_depth.saturating_mul(2).saturating_add(1);
        dev.tgt.sq_depth = ring;
        dev.tgt.cq_depth = ring;
        Ok(())
    };
    let q_fn = move |qid: u16, dev: &UblkDev| {
        let mut ctx = ctx.clone();
        ctx.direct = direct.load(std::sync::atomic::Ordering::SeqCst);
        serve_queue(qid, dev, ctx)
    };
    let ready = move |_: &UblkCtrl| {
        wait_for_path(&bdev_path(id), Duration::from_secs(10));
        on_ready(id);
    };
    let res = ctrl.run_target(tgt_init, q_fn, ready);
    // Queues are joined; let the workers finish what is queued and exit.
    drop(pool);
    drop(commits);
    if let Err(e) = res {
        if attach == Attach::Add {
            // A device we just added and never served would be left behind.
            if let Err(d) = ctrl.del_dev() {
                tracing::warn!(id, error = %d, "could not remove the half-started device");
            }
        }
        return Err(ublk_err("serve", id as i32)(e));
    }
    Ok(Stopped { ctrl, id })
}

fn wait_for_path(p: &Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(path = %p.display(), "block device node did not appear");
    false
}

/// Stops device `id` (its queues abort once in-flight requests complete);
/// the serving daemon then closes its engine and deletes the device.
pub fn stop(id: u32) -> Result<(), Error> {
    let ctrl = UblkCtrl::new_simple(id as i32).map_err(ublk_err("open", id as i32))?;
    ctrl.kill_dev().map_err(ublk_err("stop", id as i32))?;
    Ok(())
}

/// Deletes device `id` whose daemon is gone (nothing is serving it).
pub fn delete_orphan(id: u32) -> Result<(), Error> {
    let ctrl = UblkCtrl::new_simple(id as i32).map_err(ublk_err("open", id as i32))?;
    ctrl.del_dev().map_err(ublk_err("delete", id as i32))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_advertise_cache_fua_discard_and_geometry() {
        let p = params(1 << 30, 16384, 512 * 1024, 512, false);
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.attrs & sys::UBLK_ATTR_READ_ONLY, 0);
        assert_eq!(p.basic.physical_bs_shift, 14);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_FUA, 0);
        assert_eq!(p.basic.dev_sectors, (1 << 30) >> 9);
        assert_eq!(p.basic.max_sectors, 1024);
        assert_ne!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(p.discard.discard_granularity, 16384);
        assert_eq!(p.discard.max_discard_sectors, MAX_DISCARD_BYTES >> 9);
        assert_eq!(p.discard.max_write_zeroes_sectors, MAX_DISCARD_BYTES >> 9);
    }

    #[test]
    fn params_advertise_a_4kn_origins_sector() {
        let p = params(1 << 30, 16384, 512 * 1024, 4096, false);
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.physical_bs_shift, 14);
    }

    #[test]
    fn params_tell_the_kernel_a_read_only_device_is_read_only() {
        let p = params(1 << 30, 4096, 512 * 1024, 512, true);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_READ_ONLY, 0);
    }

    #[test]
    fn bdev_path_names_the_block_node() {
        assert_eq!(bdev_path(7), PathBuf::from("/dev/ublkb7"));
    }
}
