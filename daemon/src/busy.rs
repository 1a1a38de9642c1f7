//! Is anyone using the block device? Restore rewrites the device under its
//! users, so it is refused while the device is mounted (in the host's mount
//! namespace, which the daemon does not share), held by another device
//! (holders), or open by another process.

use crate::Error;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `BLKFLSBUF`: write back and drop the block device's page cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// An exclusive open of the block device: while held, nobody can mount it
/// or claim it exclusively. Dropping the page cache on release makes later
/// readers see what the engine wrote underneath.
pub struct ExclusiveOpen {
    fd: OwnedFd,
}

impl Drop for ExclusiveOpen {
    fn drop(&mut self) {
        // SAFETY: ioctl on an fd we own; no argument.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), BLKFLSBUF as _, 0) };
        if r != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "BLKFLSBUF failed");
        }
    }
}

/// Mount points of `major:minor` listed in a mountinfo text.
pub fn mounts_of(mountinfo: &str, major_minor: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 4 && f[2] == major_minor).then(|| f[4].to_string())
        })
        .collect()
}

fn major_minor(dev_name: &str) -> Option<String> {
    fs::read_to_string(format!("/sys/block/{dev_name}/dev"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn holders(dev_name: &str) -> Vec<String> {
    fs::read_dir(format!("/sys/block/{dev_name}/holders"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes other than this one with `dev` open, as "pid (comm)".
fn openers(dev: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == dev))
        {
            let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("{pid} ({})", comm.trim()));
        }
        if out.len() >= 8 {
            break;
        }
    }
    out
}

/// Refuses `action` while `/dev/<dev_name>` is mounted in the host's mount
/// namespace, held by another device, or open by another process, naming
/// them and the fix.
///
/// Run this in the CLI (full root), not only in the daemon: seeing other
/// processes' open files and pid 1's mounts takes ptrace access, which the
/// daemon gave up with `CAP_SYS_PTRACE` (see `privilege.rs`). There it finds
/// nothing, and the daemon's exclusive open in [`claim`] still catches
/// mounts and exclusive holders.
pub fn check_users(dev_name: &str, action: &str) -> Result<(), Error> {
    let dev = Path::new("/dev").join(dev_name);
    let host_mounts = major_minor(dev_name)
        .map(|mm| {
            mounts_of(
                &fs::read_to_string("/proc/1/mountinfo").unwrap_or_default(),
                &mm,
            )
        })
        .unwrap_or_default();
    if !host_mounts.is_empty() {
        return Err(Error::Busy(format!(
            "refusing {action}: {} is mounted at {}; umount it first",
            dev.display(),
            host_mounts.join(", ")
        )));
    }
    let held = holders(dev_name);
    if !held.is_empty() {
        return Err(Error::Busy(format!(
            "refusing {action}: {} is held by {}; remove those devices first",
            dev.display(),
            held.join(", ")
        )));
    }
    let others = openers(&dev);
    if !others.is_empty() {
        return Err(Error::Busy(format!(
            "refusing {action}: {} is open by pid {}; close it first",
            dev.display(),
            others.join(", ")
        )));
    }
    Ok(())
}

/// Claims `/dev/<dev_name>` for rewriting, or explains who uses it and how
/// to stop them. `action` names what is being refused ("restore").
pub fn claim(dev_name: &str, action: &str) -> Result<ExclusiveOpen, Error> {
    check_users(dev_name, action)?;
    let dev = Path::new("/dev").join(dev_name);
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(&dev)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::Busy(format!(
                    "refusing {action}: {} is in use (mounted in another namespace or claimed exclusively); \
                     umount or release it first",
                    dev.display()
                ))
            } else {
                Error::io(format!("open {} exclusively", dev.display()))(e)
            }
        })?;
    let others = openers(&dev);
    if !others.is_empty() {
        return Err(Error::Busy(format!(
            "refusing {action}: {} is open by pid {}; close it first",
            dev.display(),
            others.join(", ")
        )));
    }
    Ok(ExclusiveOpen { fd: file.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_by_device_number() {
        let info = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
40 1 259:0 / /mnt/data rw,relatime - ext4 /dev/ublkb0 rw
41 1 259:0 /sub /srv rw,relatime - ext4 /dev/ublkb0 rw
42 1 259:1 / /other rw - ext4 /dev/ublkb1 rw";
        assert_eq!(mounts_of(info, "259:0"), vec!["/mnt/data", "/srv"]);
        assert!(mounts_of(info, "8:0").is_empty());
    }

    #[test]
    fn finds_other_processes_holding_a_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        std::fs::write(&path, b"x").unwrap();
        let path = path.canonicalize().unwrap();
        // Our own descriptors do not count: the daemon holds the device itself.
        let _mine = std::fs::File::open(&path).unwrap();
        assert!(openers(&path).is_empty());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(&path).unwrap())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let mut found = openers(&path);
        while found.is_empty() && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(20));
            found = openers(&path);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, vec![format!("{} (sleep)", child.id())]);
    }
}
