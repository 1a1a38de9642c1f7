//! How a failed verb is reported: one line on stderr, and an exit status.
//!
//! The libraries say what failed and where; this is the one place that says what to do
//! about it. [`message`] walks an error's causes and, after each cause whose type or
//! [`FailureKind`] it knows, adds the advice: the verbs to run and the flags to pass.
//! A request the daemon ran arrives as a typed [`Failure`] and gets the same advice as
//! the same error met in this process.

use snapblk_daemon::control::{DaemonOnly, Failure, FailureKind};
use std::fmt;

/// A failure that asks for an exit status other than the usual 1 (see `check`).
#[derive(Debug)]
pub struct Exit {
    /// The process exit status.
    pub code: u8,
    /// The line to print (naming the object and the fix).
    pub message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The exit status for `e`.
pub fn code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Exit>().map_or(1, |x| x.code)
}

/// The one line shown for `e`: its chain of causes joined by ": ", each followed by
/// the advice for it.
///
/// Error types that print their source inside their own message (the engine's `Io`,
/// the daemon's `Engine`, thiserror's usual `"{what}: {source}"`) also hand that source
/// on as the next cause, so printing the whole chain (anyhow's `{:#}`) says it twice
/// ("Is a directory (os error 21): Is a directory (os error 21)"). A cause whose text
/// the message above it already contains adds nothing and is left out; its advice goes
/// right after its text inside the message that contains it.
pub fn message(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut above = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !text.is_empty() && !above.contains(&text) {
            parts.push(text.clone());
        }
        if let Some(advice) = advice_for(cause) {
            if let Some(part) = parts.iter_mut().rev().find(|p| p.contains(&text)) {
                if let Some(at) = part.find(&text) {
                    part.insert_str(at + text.len(), &advice);
                }
            }
        }
        above = text;
    }
    parts.join(": ")
}

/// The advice for one cause, with its leading separator (": " or "; ").
fn advice_for(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    use snapblk_daemon::Error as D;
    if let Some(e) = cause.downcast_ref::<ublk_target::Error>() {
        return device_advice(e);
    }
    if let Some(e) = cause.downcast_ref::<D>() {
        return match e {
            // Transparent: the inner error is not a cause of its own in the chain.
            D::Device(inner) => device_advice(inner),
            D::NoSuchDevice { .. } => Some(": check `snapblk list`".into()),
            D::DaemonDead { id, .. } => Some(format!(": `snapblk recover -n {id}` reattaches it")),
            D::DaemonAlive { id, .. } => Some(format!(": `snapblk delete -n {id}` first")),
            D::Connect { .. } => Some(": is the daemon running? see `snapblk list`".into()),
            D::Version { .. } => Some(version_advice()),
            D::Remote(f) => kind_advice(&f.kind),
            // Engine, Remote and Device errors carry their cause, which gets its own advice.
            _ => None,
        };
    }
    if let Some(f) = cause.downcast_ref::<Failure>() {
        return kind_advice(&f.kind);
    }
    if let Some(e) = cause.downcast_ref::<snapmap::Error>() {
        return engine_advice(e);
    }
    if let Some(e) = cause.downcast_ref::<shipper::TargetError>() {
        return target_advice(e);
    }
    if let Some(e) = cause.downcast_ref::<shipper::Error>() {
        return match e {
            // Transparent: the target's error is not a cause of its own in the chain.
            shipper::Error::Target(t) => target_advice(t),
            shipper::Error::Source { .. } | shipper::Error::Corrupt { .. } => {
                kind_advice(&FailureKind::of_shipper(e))
            }
            shipper::Error::NoSuchPoint { .. } => {
                Some("; list committed points with `snapblk remote list`".into())
            }
            shipper::Error::BadPoint { .. } => Some(" from `snapblk remote list`".into()),
            _ => None,
        };
    }
    None
}

fn device_advice(e: &ublk_target::Error) -> Option<String> {
    match e {
        ublk_target::Error::NoKernelModule => Some(": load ublk_drv: modprobe ublk_drv".into()),
        ublk_target::Error::NotRoot { .. } => Some(": run it as root (sudo)".into()),
        ublk_target::Error::IdInUse { id } => Some(format!(
            ": pick another -n, or `snapblk delete -n {id}` first"
        )),
        _ => None,
    }
}

/// A peer that could not be reached (after retries) is most often a receiver that is not
/// running; the other targets' errors name their own fix (the S3 endpoint variable).
fn target_advice(e: &shipper::TargetError) -> Option<String> {
    (e.kind == shipper::TargetErrorKind::Transient && e.object.starts_with("peer://"))
        .then(|| "; start `snapblk receive` on the peer if it is not running".into())
}

fn version_advice() -> String {
    ": use the snapblk that started the daemon, or restart the device with this one (`snapblk delete -n ID`, then `snapblk create` with the same files; the data stays on disk)".into()
}

/// Advice for an engine error met in this process (an offline verb).
fn engine_advice(e: &snapmap::Error) -> Option<String> {
    kind_advice(&FailureKind::of_engine(e))
}

/// Advice for a kind of failure, wherever it happened.
fn kind_advice(kind: &FailureKind) -> Option<String> {
    Some(match kind {
        FailureKind::Version { .. } => version_advice(),
        FailureKind::NotRoot => ": run snapblk as root".into(),
        FailureKind::ShuttingDown => "; retry once it is back (`snapblk list`)".into(),
        FailureKind::NeedsDaemon {
            what: DaemonOnly::Shutdown,
        } => ": use `snapblk delete -n ID`".into(),
        FailureKind::NeedsDaemon {
            what: DaemonOnly::Ship,
        } => ": use -n ID, or ship the files once with `snapblk ship --backing PATH --to URL --once`".into(),
        FailureKind::ShipRunning { url } => format!(
            ": pause it first (`snapblk ship -n ID --to {url} --pause`) or read its progress with `snapblk status`"
        ),
        FailureKind::NoSchedule { url } => {
            format!("; start it with `snapblk ship -n ID --to {url} --interval DUR`")
        }
        FailureKind::StoreFull => ": make room by deleting a snapshot (`snapblk snapshot list` shows what each holds, `snapblk snapshot delete NAME` frees it) or a ship point (`snapblk status` lists them), or give the store more room (a larger --max-store when creating the device, or free space on the store's filesystem)".into(),
        FailureKind::StoreFailed => ": close and reopen the device (`snapblk recover`) so the log is replayed".into(),
        FailureKind::NoSuchSnapshot => ": see `snapblk snapshot list`".into(),
        FailureKind::InUse => "; `snapblk list` shows running devices, and while a device runs, use its own commands with -n ID instead of --backing (`snapblk snapshot create NAME -n ID`, `snapblk restore NAME -n ID`, `snapblk status -n ID`)".into(),
        FailureKind::Corrupt => ". If it still opens, `snapblk check` lists all the damage; otherwise restore the volume from a copy or a remote (`snapblk remote restore`)".into(),
        FailureKind::WrongOrigin { found } => format!(
            ": if you moved or copied the pair together (and {found} was not written since without the daemon), pass --adopt to bind the store to {found}; otherwise pass the store that belongs to {found}"
        ),
        FailureKind::NotAStore => ": point --store at the store of this backing file, or give `snapblk create` a --store path that does not exist yet to start a new store".into(),
        FailureKind::NoBacking { path } => {
            format!(": create it (e.g. `truncate -s 20G {path}`) or pass --size")
        }
        FailureKind::BackingLarger => ": omit --size or give the backing's size".into(),
        FailureKind::NoStore => ": give the right --store path, or create the device first".into(),
        FailureKind::TooManyBlocks => ": use a larger --block-size".into(),
        FailureKind::RestoreAbandoned { pre_restore } => format!(
            ": `snapblk restore {pre_restore}` puts it back"
        ),
        FailureKind::LocalVolume => "; check the device/store with `snapblk status`".into(),
        FailureKind::RemoteCorrupt => {
            "; run `snapblk remote verify` and re-ship or prune the damaged points".into()
        }
        FailureKind::SnapshotAttached { device: Some(d) } => {
            format!(": detach it first (`snapblk snapshot detach -n {d}`)")
        }
        FailureKind::SnapshotAttached { device: None } => {
            ": detach it first (`snapblk list` shows the attached devices)".into()
        }
        FailureKind::IdInUse { id } => {
            format!(": leave out --as for the next free id, or pick another than {id} (`snapblk list`)")
        }
        FailureKind::NotAttached { id } => format!(
            ": `snapblk list` shows the attachments; `snapblk delete -n {id}` stops a volume"
        ),
        FailureKind::NeedsDaemon {
            what: DaemonOnly::Attach,
        } => ": start the volume with `snapblk create` and attach with -n ID".into(),
        FailureKind::Other
        | FailureKind::Busy
        | FailureKind::SnapshotExists
        | FailureKind::FutureVersion
        | FailureKind::OriginSize => return None,
    })
}

/// A device spec refused before anything was started, in the terms of the flags that set it
/// (`--depth 0 out of range: use 1..=4096`).
pub fn spec_message(e: &ublk_target::SpecError) -> String {
    use ublk_target::SpecError as S;
    match e {
        S::Queues(n) => format!("--queues {n} out of range: use 1..=32"),
        S::Depth(n) => format!("--depth {n} out of range: use 1..=4096"),
        S::BlockSize(n) => format!("--block-size {n} invalid: use a power of two from 4K to 64K"),
        S::Size(n) => format!("--size {n} invalid: use a non-zero multiple of 512 bytes"),
        S::IoBuffer(_) | S::RelativePath => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_source_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(21);
        let e = snapmap::Error::Io {
            what: "read superblock of store /s".into(),
            source: io,
        };
        let e = Err::<(), _>(e).context("open store /s").unwrap_err();
        assert_eq!(
            message(&e),
            "open store /s: read superblock of store /s: Is a directory (os error 21)"
        );
        // Plain contexts are all kept.
        let e = Err::<(), _>(anyhow::anyhow!("inner"))
            .context("outer")
            .unwrap_err();
        assert_eq!(message(&e), "outer: inner");
    }

    #[test]
    fn advice_follows_the_cause_it_belongs_to_wherever_the_request_ran() {
        // In this process: the engine's typed error, under a context.
        let e = snapmap::Error::NoSuchSnapshot("s9".into());
        let e = Err::<(), _>(e).context("restore s9").unwrap_err();
        assert_eq!(
            message(&e),
            "restore s9: snapshot \"s9\" does not exist: see `snapblk snapshot list`"
        );
        // From a daemon: the same situation as a typed failure, the same advice.
        let f = Failure::new(
            FailureKind::NoSuchSnapshot,
            "restore snapshot s9: snapshot \"s9\" does not exist",
        );
        let e = anyhow::Error::from(snapblk_daemon::Error::Remote(f));
        assert!(
            message(&e).ends_with("does not exist: see `snapblk snapshot list`"),
            "{}",
            message(&e)
        );
        // A wrapped ublk error keeps its advice through the daemon's transparent variant.
        let e = anyhow::Error::from(snapblk_daemon::Error::from(ublk_target::Error::IdInUse {
            id: 3,
        }));
        assert_eq!(
            message(&e),
            "device id 3 is already in use: pick another -n, or `snapblk delete -n 3` first"
        );
        // A shipper error: the library names the point and the target, the CLI the verb.
        let e = anyhow::Error::from(shipper::Error::NoSuchPoint {
            what: "9".into(),
            target: "file:///r".into(),
        });
        assert_eq!(
            message(&e),
            "point 9 not found on file:///r; list committed points with `snapblk remote list`"
        );
        // An error nobody advises on is printed as it is.
        let e = anyhow::anyhow!("plain");
        assert_eq!(message(&e), "plain");
    }
}
