//! snapblk's shipper: continuous incremental shipping of a volume's changed blocks to a
//! `file://` directory, an `s3://` bucket or a `peer://` receiver, and remote
//! list/restore/verify/prune.
//!
//! Model: each point freezes the volume as a local ship point, sends the blocks changed
//! since the previous committed point (the first point is a sparse full base) as immutable
//! segment objects, then publishes a manifest — the commit marker — chained to its parent.
//! The byte layout is in `shipper/REMOTE-FORMAT.md`.
//!
//! Entry points for the CLI/daemon: [`target_from_url`], [`ship_once`], [`Scheduler`],
//! [`remote_list`], [`remote_restore`], [`remote_verify`], [`remote_prune`], [`receive`].
//!
//! ```no_run
//! use shipper::{Credentials, PointSel, ShipOptions};
//! use std::sync::Arc;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let engine: Arc<snapmap::Engine> = unimplemented!();
//! // Secrets come from the environment (or Credentials::from_file), never from argv.
//! let creds = Credentials::from_env()?;
//! let target: Arc<dyn shipper::Target> = shipper::target_from_url("s3://backups/vol0", &creds)?.into();
//! let opts = ShipOptions::new("/var/lib/snapblk/0/ship-state.json");
//! // `snapblk ship --once`: returns when the point is committed.
//! let point = shipper::ship_once(engine.as_ref(), target.as_ref(), &opts)?;
//! println!("committed point {} ({} blocks)", point.seq, point.data_blocks);
//! // `snapblk ship --interval 5s`: background loop.
//! let sched = shipper::Scheduler::start(engine.clone(), target.clone(), opts, std::time::Duration::from_secs(5));
//! println!("lag {:?}", sched.stats().lag);
//! sched.stop();
//! // `snapblk remote restore --point latest --to out.img`
//! shipper::remote_restore(target.as_ref(), PointSel::Latest, "out.img".as_ref(), &|done, total| {
//!     eprintln!("{done}/{total} segments");
//! })?;
//! # Ok(()) }
//! ```

pub mod credentials;
pub mod error;
pub mod format;
pub mod receiver;
pub mod remote;
pub mod scheduler;
pub mod secs;
pub mod ship;
pub mod source;
pub mod state;
pub mod targets;
pub mod url;

pub use credentials::Credentials;
pub use error::{Error, Result, SourceError};
pub use receiver::{receive, Receiver, StopHandle};
pub use remote::{
    remote_list, remote_prune, remote_restore, remote_verify, PointSel, PruneReport, RemotePoint,
    RestoreReport, VerifyReport,
};
pub use scheduler::{Scheduler, SchedulerStats};
pub use ship::{point_prefix, ship_once, PointInfo, ShipOptions};
pub use source::{MemSource, PointSource};
pub use state::{ship_state_path, ship_targets, ShipTarget};
pub use targets::file::FileTarget;
pub use targets::peer::PeerTarget;
pub use targets::s3::S3Target;
pub use targets::{Retry, Retrying, Target, TargetError, TargetErrorKind};
pub use url::{existing_target_from_url, target_from_url, TargetUrl};
