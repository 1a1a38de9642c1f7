//! Snapshots attached as devices of their own (`snapblk snapshot attach`): the volume's
//! daemon serves each attached snapshot as a read-only `/dev/ublkbM` from the engine it
//! already holds, beside the volume, until it is detached or the volume stops.
//!
//! An attachment has its own run directory (`/run/snapblk/M/`) holding the daemon's pid and
//! `attachment.json` (which volume, which snapshot), so that `list`, `status -n M` and
//! `delete -n M` find it; it has no socket of its own: requests for it go to the volume's.

use crate::busy;
use crate::control::answer::Attachment;
use crate::control::{Failure, FailureKind};
use crate::rundir::RunDir;
use crate::sources::SnapshotSource;
use snapmap::Engine;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use ublk_target::device::{self, Attach};
use ublk_target::io_op::{IoBackend, IoStats};
use ublk_target::source::ReadOnly;
use ublk_target::DeviceSpec;

/// How long an attach waits for the kernel to bring the new device up.
const READY_WAIT: Duration = Duration::from_secs(60);

/// One attached snapshot.
struct Live {
    info: Attachment,
    stats: Arc<IoStats>,
    /// Serves the device; returns once it is stopped and deleted.
    serving: Option<JoinHandle<()>>,
}

/// The attachments of one volume.
pub struct Attachments {
    engine: Arc<Engine>,
    volume: u32,
    spec: DeviceSpec,
    live: Mutex<Vec<Live>>,
}

fn failure(kind: FailureKind, message: String) -> Failure {
    Failure::new(kind, message)
}

impl Attachments {
    /// No attachments yet, for volume `volume` served with `spec` (whose queue count,
    /// depth and buffer size attachments reuse).
    pub fn new(engine: Arc<Engine>, volume: u32, spec: DeviceSpec) -> Attachments {
        Attachments {
            engine,
            volume,
            spec,
            live: Mutex::new(Vec::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Vec<Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every attachment, oldest first, with its I/O counters.
    pub fn list(&self) -> Vec<Attachment> {
        self.live()
            .iter()
            .map(|l| Attachment {
                io: Some(l.stats.snapshot()),
                ..l.info.clone()
            })
            .collect()
    }

    /// The first device attaching snapshot `name`, if any.
    pub fn of_snapshot(&self, name: &str) -> Option<u32> {
        self.live()
            .iter()
            .find(|l| l.info.snapshot == name)
            .map(|l| l.info.id)
    }

    /// Serves snapshot `name` as a new read-only device, with id `as_id` when given.
    /// Returns once `/dev/ublkbM` exists.
    pub fn attach(&self, name: &str, as_id: Option<u32>) -> Result<Attachment, Failure> {
        let what = format!("attach snapshot {name}");
        let source = SnapshotSource::new(self.engine.clone(), name).map_err(|e| {
            let mut f = Failure::engine(&what, &e);
            if matches!(e, snapmap::Error::NoSuchSnapshot(_)) {
                let names: Vec<String> = self
                    .engine
                    .snapshots()
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                f.message.push_str(&if names.is_empty() {
                    " (the volume has no snapshots)".to_string()
                } else {
                    format!(" (snapshots: {})", names.join(", "))
                });
            }
            f
        })?;
        if let Some(id) = as_id {
            if device::kernel_has_device(id) || RunDir::new(id).live_pid().is_some() {
                return Err(failure(
                    FailureKind::IdInUse { id },
                    format!("{what}: device id {id} is in use"),
                ));
            }
        }
        let mut spec = self.spec.clone();
        spec.id = as_id;
        let size = self.engine.size();
        let block_size = self.engine.block_size();
        let backend: Arc<dyn IoBackend> = Arc::new(ReadOnly::new(source));
        let stats = Arc::new(IoStats::default());
        // Err: (the id asked for was taken, the message).
        let (tx, rx) = mpsc::channel::<Result<u32, (bool, String)>>();
        let failed = tx.clone();
        let thread_stats = stats.clone();
        let serving = std::thread::Builder::new()
            .name("snapblk-attach".into())
            .spawn(move || {
                let ready = move |id: u32| {
                    let _ = tx.send(Ok(id));
                };
                match device::serve(&spec, Attach::Add, backend, size, block_size, thread_stats, ready) {
                    Ok(stopped) => {
                        let id = stopped.id();
                        if let Err(e) = stopped.delete() {
                            tracing::warn!(id, error = %e, "could not delete the detached device");
                        }
                        if let Err(e) = RunDir::new(id).remove() {
                            tracing::warn!(id, error = %e, "could not remove the attachment's run directory");
                        }
                        tracing::info!(id, "attachment detached");
                    }
                    Err(e) => {
                        let taken = matches!(e, ublk_target::Error::IdInUse { .. });
                        let _ = failed.send(Err((taken, e.to_string())));
                    }
                }
            })
            .map_err(|e| Failure::other(format!("{what}: start its serving thread: {e}")))?;
        let id = match rx.recv_timeout(READY_WAIT) {
            Ok(Ok(id)) => id,
            Ok(Err((taken, msg))) => {
                let _ = serving.join();
                let kind = match as_id {
                    Some(id) if taken => FailureKind::IdInUse { id },
                    _ => FailureKind::Other,
                };
                return Err(failure(kind, format!("{what}: {msg}")));
            }
            Err(_) => {
                return Err(Failure::other(format!(
                    "{what}: the device did not come up within {} s",
                    READY_WAIT.as_secs()
                )))
            }
        };
        let info = Attachment {
            id,
            device: device::bdev_path(id),
            snapshot: name.to_string(),
            volume: self.volume,
            read_only: true,
            io: None,
        };
        let rd = RunDir::new(id);
        let published = rd
            .create()
            .and_then(|_| rd.write_pid(std::process::id() as i32))
            .and_then(|_| rd.write_attachment(&info));
        self.live().push(Live {
            info: info.clone(),
            stats,
            serving: Some(serving),
        });
        if let Err(e) = published {
            let _ = self.stop(id, false);
            return Err(Failure::other(format!(
                "{what}: record it in {}: {e}",
                rd.dir().display()
            )));
        }
        tracing::info!(id, snapshot = name, "snapshot attached");
        Ok(info)
    }

    /// Stops attachment `id` and waits until its device is gone. `check_users` refuses
    /// while it is mounted or open (what `detach` does; the volume's shutdown checks all
    /// of them first).
    fn stop(&self, id: u32, check_users: bool) -> Result<Attachment, Failure> {
        let pos = self.live().iter().position(|l| l.info.id == id);
        let Some(pos) = pos else {
            return Err(failure(
                FailureKind::NotAttached { id },
                format!(
                    "device {id} is not a snapshot attached to device {}",
                    self.volume
                ),
            ));
        };
        if check_users {
            busy::check_users(&format!("ublkb{id}"), "detach")
                .map_err(|e| Failure::new(e.kind(), e.to_string()))?;
        }
        let mut l = self.live().remove(pos);
        if let Err(e) = device::stop(id) {
            tracing::warn!(id, error = %e, "stopping the attached device failed");
        }
        if let Some(h) = l.serving.take() {
            let _ = h.join();
        }
        Ok(l.info)
    }

    /// `snapshot detach -n M`: refused while the device is mounted or open.
    pub fn detach(&self, id: u32) -> Result<Attachment, Failure> {
        self.stop(id, true)
    }

    /// Refuses (naming the device and who uses it) while any attachment is mounted or open.
    pub fn check_unused(&self) -> Result<(), Failure> {
        for a in self.list() {
            busy::check_users(&format!("ublkb{}", a.id), "stopping the volume").map_err(|e| {
                Failure::new(e.kind(), format!("attached snapshot {}: {e}", a.snapshot))
            })?;
        }
        Ok(())
    }

    /// Stops every attachment (the volume is stopping).
    pub fn stop_all(&self) {
        for a in self.list() {
            if let Err(f) = self.stop(a.id, false) {
                tracing::warn!(id = a.id, error = %f.message, "could not stop an attachment");
            }
        }
    }
}
