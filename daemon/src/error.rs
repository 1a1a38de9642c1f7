use std::path::PathBuf;

/// Everything that can go wrong in the daemon or while talking to it.
///
/// Texts say what failed and on which object; the CLI adds what to run about it
/// (`cli/src/failure.rs`), keyed on these variants.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ublk frontend failed (kernel module, device add/recover, queues), or what it
    /// also reports for the daemon: a device id in use, an operation that needs root.
    #[error(transparent)]
    Device(#[from] ublk_target::Error),
    /// No daemon state exists for this id.
    #[error("no snapblk device {id} (nothing under {dir})")]
    NoSuchDevice {
        /// The id that was asked for.
        id: u32,
        /// The run directory that was looked at.
        dir: PathBuf,
    },
    /// The daemon for this device is not running.
    #[error("the daemon of device {id} is not running (pid {pid})")]
    DaemonDead {
        /// Device id.
        id: u32,
        /// The pid recorded in the run directory.
        pid: i32,
    },
    /// The daemon for this device is still running, so the action is refused.
    #[error("the daemon of device {id} is still running (pid {pid})")]
    DaemonAlive {
        /// Device id.
        id: u32,
        /// Its pid.
        pid: i32,
    },
    /// The engine refused or failed an operation.
    #[error("{what}: {source}")]
    Engine {
        /// What was being done, naming the object.
        what: String,
        /// The engine error.
        #[source]
        source: snapmap::Error,
    },
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the object.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be reached.
    #[error("connect to control socket {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The block device is mounted or open, so rewriting it is refused.
    #[error("{0}")]
    Busy(String),
    /// A control request or reply was malformed or rejected.
    #[error("{0}")]
    Protocol(String),
    /// The daemon and this client speak different control protocol versions.
    #[error("{}", version_text(*.ours, *.theirs))]
    Version {
        /// This client's protocol version.
        ours: u32,
        /// The daemon's, when it said one (older daemons do not).
        theirs: Option<u32>,
    },
    /// The daemon answered the request with an error.
    #[error("{0}")]
    Remote(crate::control::Failure),
    /// A ship state file or schedule could not be saved or read.
    #[error("{0}")]
    Ship(String),
}

fn version_text(ours: u32, theirs: Option<u32>) -> String {
    match theirs {
        Some(t) => {
            format!("the daemon speaks control protocol version {t}, this client version {ours}")
        }
        None => {
            format!("the daemon speaks an older control protocol than this client's version {ours}")
        }
    }
}

impl Error {
    /// The situation this error is, for the CLI's advice (and for a failure sent to a
    /// client).
    pub fn kind(&self) -> crate::control::FailureKind {
        use crate::control::FailureKind as K;
        match self {
            Error::Busy(_) => K::Busy,
            Error::Device(ublk_target::Error::NotRoot { .. }) => K::NotRoot,
            Error::Engine { source, .. } => K::of_engine(source),
            Error::Remote(f) => f.kind.clone(),
            _ => K::Other,
        }
    }

    /// Wraps an I/O error with a description naming the object.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// Wraps an engine error with a description naming the object.
    pub fn engine(what: impl Into<String>) -> impl FnOnce(snapmap::Error) -> Error {
        let what = what.into();
        move |source| Error::Engine { what, source }
    }
}
