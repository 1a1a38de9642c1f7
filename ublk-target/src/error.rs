/// Everything that can go wrong while creating or serving a ublk device.
///
/// Texts say what failed and on which object; what to run about it is the CLI's to say.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/ublk-control` is missing: the kernel has no ublk driver loaded.
    #[error("/dev/ublk-control not found")]
    NoKernelModule,
    /// The process lacks the privileges ublk needs.
    #[error("{what} needs root")]
    NotRoot {
        /// The operation that was refused.
        what: String,
    },
    /// The requested device id is taken by a live device.
    #[error("device id {id} is already in use")]
    IdInUse {
        /// The id that was asked for.
        id: u32,
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
    /// A device spec cannot be served as asked.
    #[error("{0}")]
    Spec(String),
    /// A file or thread operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the object.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with a description naming the object.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
