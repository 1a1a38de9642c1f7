//! The ublk frontend of snapblk: glue between libublk and the engine.
//!
//! - [`device`]: add / recover / stop / delete through libublk's control device;
//! - [`queue`] and [`worker`]: per-queue io_uring loops that serve plain
//!   origin reads and writes on the queue's own ring and hand every other
//!   block request to a pool of engine threads, completing it back on the
//!   queue;
//! - [`io_op`]: how a ublk operation maps to a backend call;
//! - device kinds: the volume (`volume.rs`, the engine as a backend) and, for kinds
//!   that read from elsewhere, [`source`]'s block-source trait;
//! - [`spec`]: what a device is made of.
//!
//! The daemon around it (control socket, run directory, schedules) is the
//! `snapblk-daemon` crate.

#![warn(missing_docs)]

pub mod device;
mod error;
mod inbox;
pub mod io_op;
pub mod queue;
pub mod source;
pub mod spec;
mod volume;
pub mod worker;

pub use error::Error;
pub use spec::{DeviceSpec, SpecError};
