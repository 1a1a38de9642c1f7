use std::path::PathBuf;

/// Everything that can go wrong while creating, serving or talking to a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/ublk-control` is missing: the kernel has no ublk driver loaded.
    #[error("/dev/ublk-control not found: load ublk_drv: modprobe ublk_drv")]
    NoKernelModule,
    /// The process lacks the privileges ublk and the run directory need.
    #[error("{what} needs root: run it as root (sudo)")]
    NotRoot {
        /// The operation that was refused.
        what: String,
    },
    /// The requested device id is taken by a live device or daemon.
    #[error(
        "device id {id} is already in use: pick another -n, or `snapblk delete -n {id}` first"
    )]
    IdInUse {
        /// The id that was asked for.
        id: u32,
    },
    /// No daemon state exists for this id.
    #[error("no snapblk device {id} (nothing under {dir}): check `snapblk list`")]
    NoSuchDevice {
        /// The id that was asked for.
        id: u32,
        /// The run directory that was looked at.
        dir: PathBuf,
    },
    /// The daemon for this device is not running.
    #[error("the daemon of device {id} is not running (pid {pid}): `snapblk recover -n {id}` reattaches it")]
    DaemonDead {
        /// Device id.
        id: u32,
        /// The pid recorded in the run directory.
        pid: i32,
    },
    /// The daemon for this device is still running, so the action is refused.
    #[error(
        "the daemon of device {id} is still running (pid {pid}): `snapblk delete -n {id}` first"
    )]
    DaemonAlive {
        /// Device id.
        id: u32,
        /// Its pid.
        pid: i32,
    },
    /// A libublk control or queue call failed.
    #[error("ublk {what} failed for device {id}: {source}")]
    Ublk {
        /// What was being done.
        what: &'static str,
        /// Device id (-1 when the kernel had not allocated one yet).
        id: i32,
        /// The libublk error.
        #[source]
        source: libublk::UblkError,
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
    /// The block device is mounted or open, so rewriting it is refused.
    #[error("{0}")]
    Busy(String),
    /// A control request or reply was malformed or rejected.
    #[error("{0}")]
    Protocol(String),
    /// The daemon answered the request with an error.
    #[error("{0}")]
    Remote(String),
    /// Waiting for something bounded ran out of time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
}

impl Error {
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
