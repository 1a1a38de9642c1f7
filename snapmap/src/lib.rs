//! # snapmap — snapblk's engine
//!
//! A snapshot-capable view of an *origin* device. Every write is compared with what the origin
//! already holds (identical writes are skipped); the first change of a block after a snapshot
//! preserves the original into that snapshot's *delta* in the *store* — durably, in a group
//! commit shared with concurrent writers — before the new data may reach the origin.
//! Snapshots are O(1) to take, merge on delete without copying data, and restore as a stream of
//! ordinary writes that is safe to interrupt and re-run.
//!
//! Layout (after dm-snapshot's split of policy and exception store):
//! - [`engine`]: the write path and snapshot operations — what happens on a first write is
//!   `Engine::write_locked` in `engine/write.rs`, under the ordering rule stated there;
//! - [`index`]: the snapshot chain, deltas and slot allocator (pure data);
//! - [`store`] and [`format`]: the bytes on the store device (superblock, journal,
//!   checkpoints), documented in `FORMAT.md`;
//! - [`io`]: the device trait that tests wrap to count I/O or inject faults.
//!
//! No ublk, no network: this crate is a plain library.

pub mod buf;
pub mod commit;
pub mod csum;
pub mod engine;
pub mod error;
pub mod format;
pub mod index;
pub mod io;
pub mod locks;
pub mod newfile;
mod scratch;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use engine::cow::{CowWrite, Preserve, Span};
pub use engine::direct::DirectWrite;
pub use engine::{
    validate_name, BlockRange, CheckReport, Engine, OpenOptions, RestoreReport, RestoreState,
    SnapshotInfo, Stats, Status,
};
pub use error::{Error, Result};
pub use io::{AlignedBuf, BlockDev, FileDev, Identity};
pub use newfile::NewFile;
pub use roaring::RoaringBitmap;
pub use store::Recovery;
#[cfg(any(test, feature = "testing"))]
pub use testing::{CountingDev, MemDev};
