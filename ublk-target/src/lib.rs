//! The ublk frontend of snapblk.
//!
//! One daemon per device serves `/dev/ublkbN` from a [`snapmap::Engine`]:
//! - [`device`]: add / recover / stop / delete through libublk's control device;
//! - [`queue`] and [`worker`]: per-queue io_uring loops that serve plain
//!   origin reads and writes on the queue's own ring and hand every other
//!   block request to a pool of engine threads, completing it back on the
//!   queue;
//! - [`io_op`]: how a ublk operation maps to an engine call;
//! - [`control`]: the per-device control socket (JSON lines) and its client;
//! - [`daemon`]: the process that ties the above together, with [`rundir`]
//!   holding its state under `/run/snapblk/<id>/` and [`busy`] deciding
//!   whether the block device may be rewritten under its users.

#![warn(missing_docs)]

pub mod busy;
pub mod control;
pub mod daemon;
pub mod device;
mod error;
mod inbox;
pub mod io_op;
pub mod privilege;
pub mod queue;
pub mod rundir;
pub mod ship;
pub mod spec;
pub mod worker;

pub use error::Error;
pub use spec::DeviceSpec;
