//! The per-volume daemon of snapblk.
//!
//! One daemon serves one volume: it holds the [`snapmap::Engine`], serves `/dev/ublkbN`
//! through [`ublk_target`], and answers the CLI on a root-only control socket.
//! - [`daemon`]: the process that ties the pieces together, from open to clean shutdown;
//! - [`control`]: the control socket, its typed, versioned protocol, server and client,
//!   and the requests the CLI's offline forms run on the engine directly ([`control::ops`]);
//! - [`rundir`]: the daemon's state under `/run/snapblk/<id>/`;
//! - [`busy`]: whether a block device may be rewritten under its users;
//! - [`privilege`]: the capabilities the daemon keeps once it runs;
//! - [`schedules`]: continuous shipping schedules and one-shot ships run in the daemon;
//! - [`sources`]: block sources for device kinds that read from elsewhere;
//! - [`attach`]: snapshots attached as devices of their own, served beside the volume.

#![warn(missing_docs)]

pub mod attach;
pub mod busy;
pub mod control;
pub mod daemon;
mod error;
pub mod privilege;
pub mod rundir;
pub mod schedules;
pub mod sources;

pub use error::Error;
