//! Where a verb's request goes: to a running daemon over its control
//! socket (`-n ID`), or straight to the engine on the files (`--backing`,
//! offline). Both give the same typed answer, so verbs print the same way.

use crate::args::Target;
use anyhow::{anyhow, bail, Context, Result};
use snapblk_daemon::control::answer::StatusAnswer;
use snapblk_daemon::control::{ops::engine_request, Answer, Client, Request};
use snapblk_daemon::rundir::{self, RunDir};
use snapblk_daemon::Error;
use snapmap::{Engine, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use ublk_target::DeviceSpec;

/// The error for a daemon that answered a request with the wrong kind of answer.
pub fn unexpected(got: &Answer, want: &str) -> anyhow::Error {
    anyhow!(
        "the daemon answered with {} where {want} was expected",
        got.kind()
    )
}

/// Takes the answer of the expected kind out of `$answer`, or fails naming both kinds.
macro_rules! expect_answer {
    ($answer:expr, $kind:ident) => {
        match $answer {
            snapblk_daemon::control::Answer::$kind(x) => x,
            other => return Err($crate::session::unexpected(&other, stringify!($kind))),
        }
    };
}
pub(crate) use expect_answer;

/// Whether an offline verb writes to the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// list, diff, export, check, status.
    ReadOnly,
    /// snapshot create/delete, restore.
    ReadWrite,
}

/// An open target.
pub enum Session {
    /// A running daemon.
    Online {
        /// Device id.
        id: u32,
        /// Its control socket.
        client: Client,
    },
    /// The engine opened in this process.
    Offline {
        /// The engine.
        engine: Box<Engine>,
        /// Whether it was opened read-only (nothing it worked around was rewritten).
        read_only: bool,
    },
}

/// Makes `p` absolute against the current directory without requiring it to exist.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolve path {}", p.display()))
}

/// The live daemon serving `backing` or `store`, if any, as (id, pid).
pub fn serving_daemon(backing: &Path, store: &Path) -> Option<(u32, i32)> {
    let same = |a: &Path, b: &Path| {
        a == b
            || (a
                .canonicalize()
                .ok()
                .is_some_and(|x| Some(x) == b.canonicalize().ok()))
    };
    rundir::list_ids().into_iter().find_map(|id| {
        let rd = RunDir::new(id);
        let spec = rd.read_config().ok()?;
        let pid = rd.live_pid()?;
        (same(&spec.backing, backing) || same(&spec.store, store)).then_some((id, pid))
    })
}

/// What kind of file `m` describes, for a message ("a directory", "a named pipe").
fn kind_of(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    }
}

/// Refuses a backing path that cannot be a volume's live data, before anything opens
/// it: opening a FIFO blocks until a writer appears (the command would hang), and a
/// directory or character device would only fail later with a misleading size or
/// superblock complaint. A missing path is left to the caller.
pub fn check_backing(backing: &Path) -> Result<()> {
    let Ok(m) = std::fs::metadata(backing) else {
        return Ok(());
    };
    use std::os::unix::fs::FileTypeExt;
    if m.is_file() || m.file_type().is_block_device() {
        return Ok(());
    }
    bail!(
        "backing {} is {}, not a regular file or block device: --backing names the disk image or block device holding the live data",
        backing.display(),
        kind_of(&m)
    )
}

/// Refuses a store path that cannot be `backing`'s store, before anything opens it
/// (see [`check_backing`]); `creating` for `create`, which formats a new store in a
/// path that does not exist yet or in an empty file. The advice never suggests removing
/// the file: it may hold someone's data.
pub fn check_store(backing: &Path, store: &Path, creating: bool) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(m) = std::fs::metadata(store) else {
        return Ok(());
    };
    let hint = format!(
        "point --store at the store of {} (default {}), or {} a --store path that does not exist yet to start a new store",
        backing.display(),
        DeviceSpec::default_store(backing).display(),
        if creating { "give" } else { "give `snapblk create`" }
    );
    if !(m.is_file() || m.file_type().is_block_device()) {
        bail!(
            "store {} is {}, not a regular file or block device: {hint}",
            store.display(),
            kind_of(&m)
        );
    }
    if let Ok(b) = std::fs::metadata(backing) {
        if b.dev() == m.dev() && b.ino() == m.ino() {
            bail!(
                "--store {} is the backing file itself: the store must be a separate file; {hint}",
                store.display()
            );
        }
    }
    if m.is_file() && m.len() == 0 && !creating {
        bail!(
            "store {} is an empty file (0 bytes), not a snapblk store: if it was this volume's store it has been truncated and its snapshots are lost; {hint}",
            store.display()
        );
    }
    Ok(())
}

/// Opens the engine on `backing` and `store` (both absolute, already checked); with
/// `adopt` and read-write, a store recorded for another backing path and inode is
/// bound to `backing` by this open.
fn open_engine(
    backing: &Path,
    store: &Path,
    read_only: bool,
    adopt: bool,
) -> snapmap::Result<Engine> {
    let opts = OpenOptions {
        create: false,
        read_only,
        adopt_origin: adopt && !read_only,
        ..OpenOptions::default()
    };
    Engine::open_files(backing, store, &opts)
}

/// Binds a store that was moved or copied together with its backing file to the
/// backing's new path (`--adopt` on a verb that only reads, whose read-only open found
/// the store recorded for another file): one read-write open with the engine's adopt
/// option records the new identity, so later commands need no flag.
fn bind_to_backing(backing: &Path, store: &Path) -> Result<()> {
    tracing::debug!(backing = %backing.display(), store = %store.display(), "binding the store to this backing file (--adopt)");
    let engine = open_engine(backing, store, false, true).with_context(|| {
        format!(
            "bind store {} to backing file {} (--adopt)",
            store.display(),
            backing.display()
        )
    })?;
    engine
        .close()
        .with_context(|| format!("close store {} (checkpoint)", store.display()))
}

impl Session {
    /// Opens the target named on the command line.
    pub fn open(t: &Target, access: Access) -> Result<Session> {
        match (t.id, &t.backing) {
            (Some(id), _) => Session::online(id),
            (None, Some(backing)) => {
                Session::offline_adopting(backing, t.store.as_deref(), access, t.adopt)
            }
            (None, None) => {
                bail!("name a device with -n ID, or its files with --backing PATH [--store PATH]")
            }
        }
    }

    /// Connects to the daemon of device `id`.
    pub fn online(id: u32) -> Result<Session> {
        let rd = RunDir::new(id);
        let pid = rd.read_pid()?;
        if !rundir::pid_alive(pid) {
            return Err(Error::DaemonDead { id, pid }.into());
        }
        tracing::debug!(id, pid, socket = %rd.socket_path().display(), "talking to the device's daemon");
        Ok(Session::Online {
            id,
            client: Client::new(&rd.socket_path()),
        })
    }

    /// Opens the engine on the files; refuses while a daemon serves them. With `adopt`,
    /// a store whose recorded backing path and inode differ from `backing`'s (the pair
    /// was moved or copied) is bound to `backing`.
    pub fn offline_adopting(
        backing: &Path,
        store: Option<&Path>,
        access: Access,
        adopt: bool,
    ) -> Result<Session> {
        let backing = absolute(backing)?;
        let store = match store {
            Some(s) => absolute(s)?,
            None => DeviceSpec::default_store(&backing),
        };
        if let Some((id, pid)) = serving_daemon(&backing, &store) {
            bail!(
                "{} is served by device {id} (daemon pid {pid}): use -n {id} instead of --backing, or `snapblk delete -n {id}` first",
                backing.display()
            );
        }
        if !backing.exists() {
            bail!(
                "backing file {} does not exist: check the --backing path",
                backing.display()
            );
        }
        check_backing(&backing)?;
        check_store(&backing, &store, false)?;
        if !store.exists() {
            bail!(
                "store {} does not exist: pass the store of {} with --store",
                store.display(),
                backing.display()
            );
        }
        let read_only = access == Access::ReadOnly;
        tracing::debug!(backing = %backing.display(), store = %store.display(), ?access, adopt, "opening the store offline");
        // A read-write open records a new identity itself. A read-only one cannot: only
        // when the store really is recorded for another file does --adopt bind it (one
        // read-write open), so a store that already matches is never written.
        let engine = match open_engine(&backing, &store, read_only, adopt) {
            Err(snapmap::Error::WrongOrigin { .. }) if adopt && read_only => {
                bind_to_backing(&backing, &store)?;
                open_engine(&backing, &store, read_only, adopt)
            }
            r => r,
        }
        .with_context(|| {
            format!(
                "open store {} for backing file {}",
                store.display(),
                backing.display()
            )
        })?;
        tracing::debug!(store = %store.display(), "store open");
        Ok(Session::Offline {
            engine: Box::new(engine),
            read_only,
        })
    }

    /// The device id when online.
    pub fn id(&self) -> Option<u32> {
        match self {
            Session::Online { id, .. } => Some(*id),
            Session::Offline { .. } => None,
        }
    }

    /// Whether this process opened the engine read-only, so damage its open worked
    /// around is still on disk; false online (the daemon opened it read-write).
    pub fn opened_read_only(&self) -> bool {
        match self {
            Session::Online { .. } => false,
            Session::Offline { read_only, .. } => *read_only,
        }
    }

    /// Sends one request; progress goes to `progress(done, total)`.
    pub fn request(
        &self,
        req: Request,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Answer> {
        req.validate().map_err(|e| anyhow!(e))?;
        match self {
            Session::Online { client, .. } => Ok(client.call(&req, progress)?),
            Session::Offline { engine, .. } => {
                let p = Mutex::new(progress);
                let report = |d: u64, t: u64| {
                    let mut g = p.lock().unwrap_or_else(|e| e.into_inner());
                    (*g)(d, t)
                };
                Ok(engine_request(engine, &req, &report)?)
            }
        }
    }

    /// The engine status of this target (the whole status online).
    pub fn status(&self) -> Result<Box<StatusAnswer>> {
        match self.request(Request::Status, &mut |_, _| {})? {
            Answer::Status(s) => Ok(s),
            other => Err(unexpected(&other, "status")),
        }
    }

    /// Closes an offline engine cleanly (checkpoint); no-op online.
    pub fn close(self) -> Result<()> {
        match self {
            Session::Online { .. } => Ok(()),
            Session::Offline { engine, .. } => {
                tracing::debug!("closing the store (checkpoint)");
                engine.close().context("close the store (checkpoint)")
            }
        }
    }
}
