//! create, list, status, delete, recover.

use super::daemon;
use crate::args::{CreateArgs, RecoverArgs, StatusArgs};
use crate::output;
use crate::session::{absolute, check_backing, check_store, serving_daemon, Access, Session};
use anyhow::{bail, Context, Result};
use snapblk_daemon::control::answer::{DeviceInfo, StatusAnswer};
use snapblk_daemon::control::{Client, Request};
use snapblk_daemon::rundir::{self, RunDir};
use snapblk_daemon::Error;
use std::time::{Duration, Instant};
use ublk_target::device::{self, bdev_path, Attach};
use ublk_target::DeviceSpec;

/// How long `delete` waits for the daemon to drain and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Fails unless device id `id` is free for a new device.
fn check_id_free(id: u32) -> Result<()> {
    let rd = RunDir::new(id);
    if rd.live_pid().is_some() || device::kernel_has_device(id) {
        return Err(ublk_target::Error::IdInUse { id }.into());
    }
    // State left by a daemon that died and whose device is gone.
    rd.remove()?;
    Ok(())
}

/// Builds the spec `create` starts a daemon with.
fn create_spec(a: &CreateArgs) -> Result<DeviceSpec> {
    let backing = absolute(&a.backing)?;
    if !backing.exists() && a.size.is_none() {
        bail!(
            "backing file {} does not exist: create it (e.g. `truncate -s 20G {}`) or pass --size SIZE",
            backing.display(),
            backing.display()
        );
    }
    let backing = backing.canonicalize().unwrap_or(backing);
    let store = match &a.store {
        Some(s) => absolute(s)?,
        None => DeviceSpec::default_store(&backing),
    };
    check_backing(&backing)?;
    // An empty store file is formatted by create.
    check_store(&backing, &store, true)?;
    let mut spec = DeviceSpec::new(backing, store);
    spec.id = a.id;
    spec.size = a.size;
    spec.block_size = a.block_size;
    spec.nr_queues = a.queues;
    spec.depth = a.depth;
    spec.workers = a.workers;
    spec.direct_io = a.direct_io;
    spec.max_store_bytes = a.max_store;
    spec.adopt_origin = a.adopt;
    spec.validate()
        .map_err(|e| anyhow::anyhow!(crate::failure::spec_message(&e)))?;
    Ok(spec)
}

/// `create`.
pub fn create(a: CreateArgs) -> Result<()> {
    device::check_root("snapblk create")?;
    device::check_kernel()?;
    let spec = create_spec(&a)?;
    if let Some(id) = spec.id {
        check_id_free(id)?;
    }
    if let Some((id, pid)) = serving_daemon(&spec.backing, &spec.store) {
        bail!(
            "{} is already served by device {id} (daemon pid {pid}): use /dev/ublkb{id}, or `snapblk delete -n {id}` first",
            spec.backing.display()
        );
    }
    if a.foreground {
        return daemon::foreground(spec, Attach::Add);
    }
    let id = daemon::spawn(&spec, Attach::Add)?;
    println!("{}", bdev_path(id).display());
    Ok(())
}

/// One device's summary for `list` and for `status` of a dead daemon.
fn summary(id: u32) -> DeviceInfo {
    let rd = RunDir::new(id);
    let spec = rd.read_config().ok();
    let pid = rd.read_pid().ok();
    let alive = pid.is_some_and(rundir::pid_alive);
    let state = match (alive, device::kernel_has_device(id)) {
        (true, _) => "running",
        (false, true) => "daemon dead (snapblk recover -n ID)",
        (false, false) => "stale (device gone; snapblk delete -n ID cleans up)",
    };
    DeviceInfo {
        id,
        path: bdev_path(id),
        state: state.replace("ID", &id.to_string()),
        pid,
        backing: spec.as_ref().map(|s| s.backing.clone()),
        store: spec.as_ref().map(|s| s.store.clone()),
        serving: None,
        attachment: rd.read_attachment(),
    }
}

/// `list`.
pub fn list(as_json: bool) -> Result<()> {
    let rows: Vec<DeviceInfo> = rundir::list_ids().into_iter().map(summary).collect();
    if as_json {
        output::json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no snapblk devices");
        return Ok(());
    }
    println!(
        "{:<4} {:<14} {:<8} {:<40} STATE",
        "ID", "DEVICE", "PID", "BACKING"
    );
    for r in rows {
        let pid = r.pid.map_or("-".into(), |p| p.to_string());
        let backing = match (&r.attachment, &r.backing) {
            (Some(a), _) => format!("snapshot {} of device {} (read-only)", a.snapshot, a.volume),
            (None, Some(b)) => b.display().to_string(),
            (None, None) => "-".into(),
        };
        println!(
            "{:<4} {:<14} {:<8} {:<40} {}",
            r.id,
            r.path.display(),
            pid,
            backing,
            r.state
        );
    }
    Ok(())
}

fn device_status(id: u32) -> Result<Box<StatusAnswer>> {
    let rd = RunDir::new(id);
    if !rd.exists() {
        return Err(Error::NoSuchDevice {
            id,
            dir: rd.dir().to_path_buf(),
        }
        .into());
    }
    let dead = || StatusAnswer {
        device: Some(summary(id)),
        engine: None,
        io: None,
        ship: Vec::new(),
        ship_targets: Vec::new(),
        attachments: Vec::new(),
    };
    if let Some(a) = rd.read_attachment() {
        // An attachment has no socket: its volume's daemon answers for it.
        let mut v = dead();
        if rd.live_pid().is_some() {
            let volume = Session::online(a.volume)?.status()?;
            if let Some(live) = volume.attachments.into_iter().find(|x| x.id == id) {
                v.io = live.io.clone();
                if let Some(d) = v.device.as_mut() {
                    d.attachment = Some(live);
                }
            }
        }
        return Ok(Box::new(v));
    }
    match rd.live_pid() {
        Some(_) => Session::online(id)?.status(),
        None => Ok(Box::new(dead())),
    }
}

/// `status`.
pub fn status(a: StatusArgs) -> Result<()> {
    let v = match (a.id, &a.backing) {
        (Some(id), _) => device_status(id)?,
        (None, Some(backing)) => {
            let session =
                Session::offline_adopting(backing, a.store.as_deref(), Access::ReadOnly, a.adopt)?;
            let status = session.status()?;
            session.close()?;
            status
        }
        (None, None) => {
            let all: Result<Vec<Box<StatusAnswer>>> =
                rundir::list_ids().into_iter().map(device_status).collect();
            let all = all?;
            if a.json {
                output::json(&all);
            } else if all.is_empty() {
                println!("no snapblk devices");
            } else {
                for (i, v) in all.iter().enumerate() {
                    if i > 0 {
                        println!();
                    }
                    output::status(v);
                }
            }
            return Ok(());
        }
    };
    if a.json {
        output::json(&v);
    } else {
        output::status(&v);
    }
    Ok(())
}

fn wait_gone(pid: i32, id: u32) -> Result<()> {
    let t = Instant::now();
    while rundir::pid_alive(pid) {
        if t.elapsed() > STOP_TIMEOUT {
            bail!(
                "the daemon of device {id} (pid {pid}) did not exit within {} s; see {}",
                STOP_TIMEOUT.as_secs(),
                RunDir::new(id).log_path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `delete`.
pub fn delete(id: u32) -> Result<()> {
    device::check_root("snapblk delete")?;
    let rd = RunDir::new(id);
    if rd.read_attachment().is_some() {
        return super::snapshot::detach(id, false);
    }
    let backing = rd
        .read_config()
        .ok()
        .map(|s| s.backing.display().to_string());
    match rd.live_pid() {
        Some(pid) => {
            // Attached snapshots go with the volume, but not from under a mount; checked
            // here, with full root, since the daemon cannot see the host's mounts.
            if let Ok(v) = Session::online(id).and_then(|s| s.status()) {
                for a in &v.attachments {
                    snapblk_daemon::busy::check_users(&format!("ublkb{}", a.id), "delete")
                        .with_context(|| {
                            format!(
                                "device {id} has snapshot {} attached as {}",
                                a.snapshot,
                                a.device.display()
                            )
                        })?;
                }
            }
            Client::new(&rd.socket_path())
                .call(&Request::Shutdown, &mut |_, _| {})
                .with_context(|| format!("ask the daemon of device {id} to stop"))?;
            wait_gone(pid, id)?;
            // The daemon removes its state; a crash during shutdown may not.
            rd.remove()?;
        }
        None => {
            let in_kernel = device::kernel_has_device(id);
            if !rd.exists() && !in_kernel {
                return Err(Error::NoSuchDevice {
                    id,
                    dir: rd.dir().to_path_buf(),
                }
                .into());
            }
            if in_kernel {
                device::check_kernel()?;
                device::delete_orphan(id)?;
            }
            rd.remove()?;
            eprintln!("note: the daemon of device {id} was not running; the store's log is replayed on its next open");
        }
    }
    match backing {
        Some(b) => println!("deleted {}; data stays in {b}", bdev_path(id).display()),
        None => println!("deleted {}", bdev_path(id).display()),
    }
    Ok(())
}

/// `recover`.
pub fn recover(a: RecoverArgs) -> Result<()> {
    device::check_root("snapblk recover")?;
    device::check_kernel()?;
    let rd = RunDir::new(a.id);
    let mut spec = rd.read_config()?;
    spec.id = Some(a.id);
    if let Some(pid) = rd.live_pid() {
        return Err(Error::DaemonAlive { id: a.id, pid }.into());
    }
    if !device::kernel_has_device(a.id) {
        bail!(
            "device {} no longer exists in the kernel, nothing to reattach: create it again with `snapblk create --backing {} --store {} -n {}`",
            a.id,
            spec.backing.display(),
            spec.store.display(),
            a.id
        );
    }
    if a.foreground {
        return daemon::foreground(spec, Attach::Recover);
    }
    let id = daemon::spawn(&spec, Attach::Recover)?;
    println!("{}", bdev_path(id).display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(backing: &std::path::Path) -> CreateArgs {
        CreateArgs {
            backing: backing.to_path_buf(),
            store: None,
            size: None,
            block_size: 4096,
            id: None,
            foreground: false,
            queues: 1,
            depth: 64,
            workers: 0,
            direct_io: false,
            max_store: None,
            adopt: false,
        }
    }

    #[test]
    fn missing_backing_without_size_names_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let e = create_spec(&args(&d.path().join("nope.img")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.img does not exist") && e.contains("--size"),
            "{e}"
        );
    }

    #[test]
    fn spec_defaults_store_next_to_backing() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("disk.img");
        std::fs::write(&b, vec![0u8; 4096]).unwrap();
        let spec = create_spec(&args(&b)).unwrap();
        assert!(spec.backing.is_absolute());
        assert_eq!(spec.store, DeviceSpec::default_store(&spec.backing));
        assert!(spec.store.to_string_lossy().ends_with("disk.img.snapstore"));
        let mut a = args(&d.path().join("new.img"));
        a.size = Some(1 << 20);
        a.depth = 0;
        assert!(create_spec(&a).unwrap_err().to_string().contains("--depth"));
    }
}
