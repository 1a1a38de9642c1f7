//! The serving process of one device: opens the engine, adds (or recovers)
//! the ublk device, answers the control socket, and shuts down cleanly on
//! `delete` or SIGTERM: stop the device (in-flight I/O drains), close the
//! engine (checkpoint), delete the device, remove the run directory.

use crate::attach::Attachments;
use crate::busy;
use crate::control::answer::{DeviceInfo, Exported, Serving, StatusAnswer, Stopping};
use crate::control::ops::{engine_request, engine_status};
use crate::control::server::{Handler, Peer, Server};
use crate::control::{Answer, Failure, FailureKind, Request};
use crate::rundir::RunDir;
use crate::schedules::Ships;
use crate::Error;
use snapmap::{Engine, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ublk_target::device::{self, Attach};
use ublk_target::io_op::{IoBackend, IoStats};
use ublk_target::DeviceSpec;

/// How long shutdown waits for control requests still using the engine.
const ENGINE_RELEASE_WAIT: Duration = Duration::from_secs(120);

/// Moves this process into its own mount namespace with private propagation,
/// so the device's mounts in the host are never pinned by the daemon and the
/// daemon never sees (or blocks unmounting of) filesystems on its own
/// device. Must run before any thread is started (unshare(CLONE_NEWNS)
/// fails in a process whose threads share the fs context).
pub fn enter_private_mount_namespace() -> Result<(), Error> {
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(Error::io("unshare the mount namespace")(
                std::io::Error::last_os_error(),
            ));
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(Error::io("make mounts private")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local value.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// How the daemon opens the engine for `spec`: `create` may format a new store and, with
/// `--adopt`, bind a moved store to its backing; `recover` only reopens what its daemon
/// had open, so it never formats and never needs to adopt (the first open recorded the
/// new identity).
fn open_options(spec: &DeviceSpec, attach: Attach) -> OpenOptions {
    OpenOptions {
        block_size: spec.block_size,
        size: spec.size,
        direct_io: spec.direct_io,
        max_store_bytes: spec.max_store_bytes,
        create: attach == Attach::Add,
        read_only: false,
        adopt_origin: spec.adopt_origin && attach == Attach::Add,
        ..OpenOptions::default()
    }
}

/// Runs the daemon for `spec` until the device is stopped. `ready(id)` is
/// called once `/dev/ublkbN` exists and the control socket listens.
pub fn run<F>(spec: DeviceSpec, attach: Attach, ready: F) -> Result<(), Error>
where
    F: FnOnce(u32) + Send + Sync + 'static,
{
    device::check_root("serving a ublk device")?;
    device::check_kernel()?;
    enter_private_mount_namespace()?;
    // After the namespace (unshare needs CAP_SYS_ADMIN, which stays anyway) and before
    // the first thread: capabilities are per thread and inherited at creation.
    crate::privilege::drop_privileges()?;
    let signals = shutdown_signals();
    // Block shutdown signals in every thread; one thread takes them with sigwait.
    // SAFETY: sets this thread's mask; threads spawned later inherit it.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
        libc::umask(0o077);
    }
    if let Some(id) = spec.id {
        let rd = RunDir::new(id);
        if let Some(pid) = rd.live_pid() {
            if pid != std::process::id() as i32 {
                return Err(Error::DaemonAlive { id, pid });
            }
        }
        if attach == Attach::Add && device::kernel_has_device(id) {
            return Err(ublk_target::Error::IdInUse { id }.into());
        }
    }

    let opts = open_options(&spec, attach);
    let engine =
        Engine::open_files(&spec.backing, &spec.store, &opts).map_err(Error::engine(format!(
            "open store {} for backing file {}",
            spec.store.display(),
            spec.backing.display()
        )))?;
    let engine = Arc::new(engine);
    let size = engine.size();
    let block_size = engine.block_size();
    tracing::info!(size, block_size, backing = %spec.backing.display(), store = %spec.store.display(), "engine open");

    // -1 until the kernel has given the device its id.
    let dev_id = Arc::new(AtomicI64::new(-1));
    let stop_requested = Arc::new(AtomicBool::new(false));
    spawn_signal_thread(signals, dev_id.clone(), stop_requested.clone())?;

    let stats = Arc::new(IoStats::default());
    let server: Arc<Mutex<Option<Server>>> = Arc::new(Mutex::new(None));
    // Filled once the volume has its id; stopped before the engine closes (each holds it).
    let attachments: Arc<Mutex<Option<Arc<Attachments>>>> = Arc::new(Mutex::new(None));
    // Set when the device came up but its state could not be published.
    let publish_error: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let on_ready = {
        let engine = engine.clone();
        let stats = stats.clone();
        let server = server.clone();
        let dev_id = dev_id.clone();
        let stop_requested = stop_requested.clone();
        let publish_error = publish_error.clone();
        let attachments = attachments.clone();
        let mut spec = spec.clone();
        move |id: u32| {
            dev_id.store(i64::from(id), Ordering::SeqCst);
            spec.id = Some(id);
            let att = Arc::new(Attachments::new(engine.clone(), id, spec.clone()));
            *attachments.lock().unwrap_or_else(|p| p.into_inner()) = Some(att.clone());
            match publish(&spec, id, engine, stats, attach, att) {
                Ok(s) => {
                    *server.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                    ready(id);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot publish device state; stopping");
                    *publish_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    stop_requested.store(true, Ordering::SeqCst);
                }
            }
            if stop_requested.load(Ordering::SeqCst) {
                request_stop(id);
            }
        }
    };
    let backend: Arc<dyn IoBackend> = engine.clone();
    let served = device::serve(&spec, attach, backend, size, block_size, stats, on_ready);
    // From here on no request reaches the engine through the device.
    if let Some(s) = server.lock().unwrap_or_else(|p| p.into_inner()).take() {
        s.stop();
    }
    if let Some(a) = attachments.lock().unwrap_or_else(|p| p.into_inner()).take() {
        a.stop_all();
    }
    let close_result = close_engine(engine);
    let stopped = served?;
    let id = stopped.id();
    close_result?;
    stopped.delete()?;
    RunDir::new(id).remove()?;
    tracing::info!(id, "device deleted; data stays on disk");
    let failed = publish_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn publish(
    spec: &DeviceSpec,
    id: u32,
    engine: Arc<Engine>,
    stats: Arc<IoStats>,
    attach: Attach,
    attachments: Arc<Attachments>,
) -> Result<Server, Error> {
    let rd = RunDir::new(id);
    rd.create()?;
    rd.write_config(spec)?;
    rd.write_pid(std::process::id() as i32)?;
    let ships = Ships::new(engine.clone(), spec.store.clone(), Some(rd.ships_path()));
    match attach {
        // The previous daemon of this device died: its schedules run on.
        Attach::Recover => {
            let n = ships.resume_saved();
            if n > 0 {
                tracing::info!(id, schedules = n, "shipping resumed after recovery");
            }
        }
        Attach::Add => ships.clear_saved(),
    }
    let handler = DaemonHandler {
        ships,
        engine,
        stats,
        id,
        spec: spec.clone(),
        started: Instant::now(),
        exclusive: Mutex::new(()),
        attachments,
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    Server::start(&rd.socket_path(), Arc::new(handler), uid)
}

fn request_stop(id: u32) {
    if let Err(e) = device::stop(id) {
        tracing::error!(id, error = %e, "stopping the device failed");
    }
}

fn spawn_signal_thread(
    set: libc::sigset_t,
    dev_id: Arc<AtomicI64>,
    stop_requested: Arc<AtomicBool>,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("snapblk-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on a valid, blocked signal set.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            tracing::info!(sig, "shutdown signal");
            stop_requested.store(true, Ordering::SeqCst);
            let id = dev_id.load(Ordering::SeqCst);
            if id >= 0 {
                request_stop(id as u32);
            }
        })
        .map(|_| ())
        .map_err(Error::io("start signal thread"))
}

fn close_engine(mut engine: Arc<Engine>) -> Result<(), Error> {
    let t = Instant::now();
    loop {
        match Arc::try_unwrap(engine) {
            Ok(e) => {
                return e
                    .close()
                    .map_err(Error::engine("close the engine (checkpoint)"))
            }
            Err(still_shared) if t.elapsed() < ENGINE_RELEASE_WAIT => {
                engine = still_shared;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(still_shared) => {
                // A control request is still running; flush what we can and
                // let the log recovery do the rest on the next open.
                tracing::error!("engine still in use at shutdown; flushing without checkpoint");
                return still_shared
                    .flush()
                    .map_err(Error::engine("flush the engine at shutdown"));
            }
        }
    }
}

/// Executes control requests against the running engine.
struct DaemonHandler {
    engine: Arc<Engine>,
    stats: Arc<IoStats>,
    id: u32,
    spec: DeviceSpec,
    started: Instant,
    /// Serializes restore and export: one bulk rewrite/read at a time.
    exclusive: Mutex<()>,
    /// Shipping jobs; they hold the engine, so they stop when the handler goes away.
    ships: Ships,
    /// Snapshots served as devices of their own.
    attachments: Arc<Attachments>,
}

impl Drop for DaemonHandler {
    fn drop(&mut self) {
        // Runs when the control server stops, before the engine is closed.
        self.ships.stop_all();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DaemonHandler {
    fn dev_name(&self) -> String {
        format!("ublkb{}", self.id)
    }

    fn status(&self) -> Answer {
        let StatusAnswer {
            engine,
            ship_targets,
            ..
        } = engine_status(&self.engine);
        Answer::Status(Box::new(StatusAnswer {
            device: Some(DeviceInfo {
                id: self.id,
                path: device::bdev_path(self.id),
                state: "running".into(),
                pid: Some(std::process::id() as i32),
                backing: Some(self.spec.backing.clone()),
                store: Some(self.spec.store.clone()),
                attachment: None,
                serving: Some(Serving {
                    size: self.engine.size(),
                    block_size: self.engine.block_size(),
                    nr_queues: self.spec.nr_queues,
                    depth: self.spec.depth,
                    workers: self.spec.effective_workers(),
                    uptime_secs: self.started.elapsed().as_secs_f64(),
                }),
            }),
            engine,
            io: Some(self.stats.snapshot()),
            ship: self.ships.status(),
            ship_targets,
            attachments: self.attachments.list(),
        }))
    }

    fn export_path(&self, peer: Peer, to: &std::path::Path) -> PathBuf {
        // The daemon lives in its own mount namespace; resolve the path in
        // the requester's view of the filesystem instead.
        let mut p = PathBuf::from(format!("/proc/{}/root", peer.pid));
        p.push(to.strip_prefix("/").unwrap_or(to));
        p
    }
}

impl Handler for DaemonHandler {
    fn handle(
        &self,
        req: Request,
        peer: Peer,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Answer, Failure> {
        match req {
            Request::Status => Ok(self.status()),
            Request::Restore { .. } => {
                let _one = self.exclusive.lock().unwrap_or_else(|p| p.into_inner());
                let claim = busy::claim(&self.dev_name(), "restore")
                    .map_err(|err| Failure::new(err.kind(), err.to_string()))?;
                let res = engine_request(&self.engine, &req, progress);
                // Dropping the claim flushes the device's page cache, so the
                // next reader sees the restored blocks.
                drop(claim);
                res
            }
            Request::Export { name, to } => {
                let _one = self.exclusive.lock().unwrap_or_else(|p| p.into_inner());
                let resolved = Request::Export {
                    name: name.clone(),
                    to: self.export_path(peer, &to),
                };
                engine_request(&self.engine, &resolved, progress)?;
                Ok(Answer::Exported(Exported { exported: name, to }))
            }
            Request::Shutdown => {
                // Mounted attachments keep the volume up: stopping would pull their
                // filesystems away. Unused ones go with it.
                self.attachments.check_unused()?;
                self.attachments.stop_all();
                device::stop(self.id)
                    .map_err(|err| Failure::new(FailureKind::Other, err.to_string()))?;
                Ok(Answer::Stopping(Stopping {
                    stopping: self.id,
                    at: unix_now(),
                }))
            }
            Request::ShipOnce { url, secrets } => self
                .ships
                .once(&url, secrets, progress)
                .map(Answer::Shipped),
            Request::ShipStart {
                url,
                interval_ms,
                secrets,
            } => self
                .ships
                .start(&url, Duration::from_millis(interval_ms), secrets)
                .map(Answer::ShipStarted),
            Request::ShipControl { url, action } => {
                self.ships.control(&url, action).map(Answer::ShipControlled)
            }
            Request::ShipStatus => Ok(Answer::ShipJobs(self.ships.status())),
            Request::SnapshotAttach { name, as_id } => {
                self.attachments.attach(&name, as_id).map(Answer::Attached)
            }
            Request::SnapshotDetach { id } => self.attachments.detach(id).map(Answer::Detached),
            Request::SnapshotDelete { ref name } => {
                if let Some(dev) = self.attachments.of_snapshot(name) {
                    return Err(Failure::new(
                        FailureKind::SnapshotAttached { device: Some(dev) },
                        format!(
                            "delete snapshot {name}: it is attached as {}",
                            device::bdev_path(dev).display()
                        ),
                    ));
                }
                engine_request(&self.engine, &req, progress)
            }
            other => engine_request(&self.engine, &other, progress),
        }
    }
}

#[cfg(test)]
mod open_options_tests {
    use super::*;

    #[test]
    fn create_adopt_reaches_the_engine_and_recover_never_formats_or_adopts() {
        let mut spec = DeviceSpec::new("/b".into(), "/s".into());
        let o = open_options(&spec, Attach::Add);
        assert!(o.create && !o.adopt_origin && !o.read_only);
        spec.adopt_origin = true;
        spec.max_store_bytes = Some(1 << 20);
        let o = open_options(&spec, Attach::Add);
        assert!(o.create && o.adopt_origin);
        assert_eq!(o.max_store_bytes, Some(1 << 20));
        let o = open_options(&spec, Attach::Recover);
        assert!(!o.create && !o.adopt_origin);
    }
}
