//! Daemon state under `/run/snapblk/<id>/`: `pid`, `config.json` (the
//! [`DeviceSpec`] with its final id) and `control.sock`. Logs go to
//! `/run/snapblk/<id>.log` so they survive the directory's removal.

use crate::Error;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use ublk_target::DeviceSpec;

/// Environment variable overriding the run root (tests).
pub const RUN_ROOT_ENV: &str = "SNAPBLK_RUN_DIR";
/// Default run root.
pub const RUN_ROOT: &str = "/run/snapblk";

/// The run root in effect.
pub fn root() -> PathBuf {
    std::env::var_os(RUN_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(RUN_ROOT))
}

/// One device's run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    id: u32,
    dir: PathBuf,
}

impl RunDir {
    /// The run directory of device `id` (may not exist).
    pub fn new(id: u32) -> RunDir {
        RunDir {
            id,
            dir: root().join(id.to_string()),
        }
    }

    /// Device id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `pid` file.
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// `config.json` file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The device's shipping schedules, with their targets' secrets, so that a daemon
    /// restarted by `recover` resumes them. It lives here (root-only, on /run) and nowhere
    /// else: never on the data disks, gone with `delete` or a reboot.
    pub fn ships_path(&self) -> PathBuf {
        self.dir.join("ships.json")
    }

    /// Daemon log, outside the directory so it outlives `delete`.
    pub fn log_path(&self) -> PathBuf {
        root().join(format!("{}.log", self.id))
    }

    /// Whether the directory exists.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Creates the directory, root-only.
    pub fn create(&self) -> Result<(), Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(Error::io(format!(
                "create run directory {}",
                self.dir.display()
            )))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(Error::io(
            format!("chmod run directory {}", self.dir.display()),
        ))
    }

    /// Records the serving daemon's pid.
    pub fn write_pid(&self, pid: i32) -> Result<(), Error> {
        write_atomic(&self.pid_path(), format!("{pid}\n").as_bytes())
    }

    /// The recorded daemon pid.
    pub fn read_pid(&self) -> Result<i32, Error> {
        let p = self.pid_path();
        let text = fs::read_to_string(&p).map_err(|e| self.missing_or(e, &p))?;
        text.trim()
            .parse()
            .map_err(|_| Error::Protocol(format!("{} is corrupt: remove it", p.display())))
    }

    /// Records the device spec (with its final id).
    pub fn write_config(&self, spec: &DeviceSpec) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(spec)
            .map_err(|e| Error::Protocol(format!("encode device config: {e}")))?;
        write_atomic(&self.config_path(), &text)
    }

    /// The recorded device spec.
    pub fn read_config(&self) -> Result<DeviceSpec, Error> {
        let p = self.config_path();
        let text = fs::read(&p).map_err(|e| self.missing_or(e, &p))?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::Protocol(format!("{} is corrupt ({e}): remove it", p.display())))
    }

    /// `attachment.json`: present when the device is a snapshot attached to a volume.
    pub fn attachment_path(&self) -> PathBuf {
        self.dir.join("attachment.json")
    }

    /// Records that this device serves an attached snapshot.
    pub fn write_attachment(&self, a: &crate::control::answer::Attachment) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(a)
            .map_err(|e| Error::Protocol(format!("encode attachment record: {e}")))?;
        write_atomic(&self.attachment_path(), &text)
    }

    /// The attachment this device serves, when it is one (`None`: a volume, or nothing).
    pub fn read_attachment(&self) -> Option<crate::control::answer::Attachment> {
        let text = fs::read(self.attachment_path()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The pid of a live daemon serving this device, if any.
    pub fn live_pid(&self) -> Option<i32> {
        self.read_pid().ok().filter(|&p| pid_alive(p))
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> Result<(), Error> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", self.dir.display()))(e)),
        }
    }

    fn missing_or(&self, e: std::io::Error, p: &Path) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NoSuchDevice {
                id: self.id,
                dir: self.dir.clone(),
            }
        } else {
            Error::io(format!("read {}", p.display()))(e)
        }
    }
}

/// Ids that have a run directory, ascending.
pub fn list_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = fs::read_dir(root())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Whether `pid` is a live snapblk process (guards against pid reuse by
/// checking the command name).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // A zombie (dead, not yet reaped by a parent that ignores children)
    // still answers kill(0); it serves nothing.
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, Some("Z") | Some("X")) {
            return false;
        }
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim_end().starts_with("snapblk"),
        // No /proc: trust kill().
        Err(_) => true,
    }
}

/// Replaces `path` with `data` atomically, readable by its owner only (it may hold secrets).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(format!("create {}", tmp.display())))?;
    f.write_all(data)
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    drop(f);
    fs::rename(&tmp, path).map_err(Error::io(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(Error::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(Error::io(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_and_config_round_trip_and_missing_dir_names_fix() {
        let t = tempfile::tempdir().unwrap();
        std::env::set_var(RUN_ROOT_ENV, t.path());
        let rd = RunDir::new(5);
        let err = rd.read_config().unwrap_err().to_string();
        assert!(err.contains("no snapblk device 5"), "{err}");
        rd.create().unwrap();
        rd.write_pid(std::process::id() as i32).unwrap();
        assert_eq!(rd.read_pid().unwrap(), std::process::id() as i32);
        let mut spec = DeviceSpec::new("/x".into(), "/y".into());
        spec.id = Some(5);
        rd.write_config(&spec).unwrap();
        assert_eq!(rd.read_config().unwrap(), spec);
        assert_eq!(list_ids(), vec![5]);
        assert!(!pid_alive(0));
        rd.remove().unwrap();
        assert!(!rd.exists());
        assert!(list_ids().is_empty());
    }
}
