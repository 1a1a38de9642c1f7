//! Typed errors of the shipper library.

use crate::targets::TargetError;

/// Result alias used across the shipper.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Error returned by a [`crate::PointSource`] implementation (the engine or a test source).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong while shipping, listing, restoring, verifying or pruning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the target failed (after retries, where retrying made sense).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The local volume (engine) refused an operation.
    #[error("local volume: {op} failed: {source}")]
    Source {
        /// What the shipper was doing.
        op: String,
        /// The engine's error.
        source: SourceError,
    },
    /// A remote object failed an integrity check (checksum, magic, structure, chain link).
    #[error("remote object {key} is corrupt: {detail}")]
    Corrupt {
        /// Key of the object, relative to the target's root.
        key: String,
        /// What exactly is wrong.
        detail: String,
    },
    /// The requested point does not exist on the target.
    #[error("point {what} not found on {target}")]
    NoSuchPoint {
        /// The selector the caller asked for.
        what: String,
        /// The target, as a redacted URL.
        target: String,
    },
    /// A point selector that is neither `latest` nor a point number.
    #[error("point {given:?}: give `latest` or a point number")]
    BadPoint {
        /// What was given.
        given: String,
    },
    /// A URL could not be turned into a target.
    #[error("bad target URL {url:?}: {detail}")]
    Url {
        /// The URL as given (it never carries secrets: credentials come from env/config).
        url: String,
        /// What is wrong and how to write it instead.
        detail: String,
    },
    /// Credentials or key material are missing or malformed.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The local ship state file is unreadable or belongs to something else.
    #[error("ship state file {path}: {detail}")]
    State {
        /// Path of the state file.
        path: String,
        /// What is wrong and the fix.
        detail: String,
    },
    /// The target already holds points of another volume, or another writer raced us.
    #[error("conflict on {target}: {detail}")]
    Conflict {
        /// The target, as a redacted URL.
        target: String,
        /// What is wrong and the fix.
        detail: String,
    },
    /// A local file operation (restore output, state file, receiver directory) failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file or directory involved.
        path: String,
        /// What the shipper was doing with it.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The output of a restore (an image file or a block device) cannot be used as it is.
    #[error("restore output {path}: {detail}")]
    Output {
        /// The file or device.
        path: String,
        /// What is wrong and the fix.
        detail: String,
    },
    /// A caller-supplied argument is invalid.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// The problem alone, without the advice to run `snapblk remote verify`: what verify
    /// itself reports (advising the command that is already running helps nobody).
    pub fn finding(&self) -> String {
        match self {
            Error::Corrupt { key, detail } => format!("remote object {key} is corrupt: {detail}"),
            e => e.to_string(),
        }
    }

    pub(crate) fn io(
        path: impl AsRef<std::path::Path>,
        op: &'static str,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            op,
            source,
        }
    }
    pub(crate) fn source(op: impl Into<String>, source: SourceError) -> Self {
        Error::Source {
            op: op.into(),
            source,
        }
    }
    pub(crate) fn corrupt(key: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            key: key.into(),
            detail: detail.into(),
        }
    }
}
