//! Requests that only need the engine, answered with the typed [`Answer`]s both the
//! daemon and the CLI's offline forms (`--backing/--store`) return, so a verb prints the
//! same whether a daemon runs or not.

use super::answer::{CheckAnswer, Deleted, DiffAnswer, Exported, Restored, StatusAnswer};
use super::{Answer, DaemonOnly, Failure, FailureKind, Request};
use snapmap::Engine;
use std::time::Instant;

/// The engine part of a status (no device, no I/O counters, no schedules), with the
/// ship targets of the engine's store.
pub fn engine_status(e: &Engine) -> StatusAnswer {
    let status = e.status();
    let ship_targets = shipper::ship_targets(std::path::Path::new(&status.store));
    StatusAnswer {
        device: None,
        engine: Some(status),
        io: None,
        ship: Vec::new(),
        ship_targets,
        attachments: Vec::new(),
    }
}

/// Runs an engine-level request. `Status` returns the engine part only;
/// `Export` writes to the request's path as given (callers resolve it);
/// `Restore` does no in-use check (callers claim the device first).
/// `Shutdown` and the ship requests are not engine requests.
pub fn engine_request(
    e: &Engine,
    req: &Request,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Answer, Failure> {
    match req {
        Request::Status => Ok(Answer::Status(Box::new(engine_status(e)))),
        Request::SnapshotCreate { name } => e
            .create_snapshot(name)
            .map(Answer::Snapshot)
            .map_err(|err| Failure::engine(&format!("create snapshot {name}"), &err)),
        Request::SnapshotList => Ok(Answer::Snapshots(e.snapshots())),
        Request::SnapshotDelete { name } => e
            .delete_snapshot(name)
            .map(|_| {
                Answer::Deleted(Deleted {
                    deleted: name.clone(),
                })
            })
            .map_err(|err| Failure::engine(&format!("delete snapshot {name}"), &err)),
        Request::Restore { name } => {
            let started = Instant::now();
            let report = e
                .restore(name, progress)
                .map_err(|err| Failure::engine(&format!("restore snapshot {name}"), &err))?;
            Ok(Answer::Restored(Restored {
                restored: name.clone(),
                elapsed_secs: started.elapsed().as_secs_f64(),
                report,
            }))
        }
        Request::Export { name, to } => {
            e.export(name, to, &|done, total| progress(done, total))
                .map_err(|err| {
                    Failure::engine(&format!("export snapshot {name} to {}", to.display()), &err)
                })?;
            Ok(Answer::Exported(Exported {
                exported: name.clone(),
                to: to.clone(),
            }))
        }
        Request::Diff { from, to } => {
            let ranges = e.diff(from, to.as_deref()).map_err(|err| {
                Failure::engine(
                    &format!("diff {from} {}", to.as_deref().unwrap_or("(live)")),
                    &err,
                )
            })?;
            Ok(Answer::Diff(DiffAnswer {
                from: from.clone(),
                to: to.clone(),
                block_size: e.block_size(),
                changed_blocks: ranges.iter().map(|r| r.len).sum(),
                ranges,
            }))
        }
        Request::Check => e
            .check()
            .map(|report| {
                Answer::Check(CheckAnswer {
                    ok: report.ok(),
                    report,
                    // Damage that opening the store worked around (a superblock copy
                    // or checkpoint that failed to verify): the store is consistent, but
                    // it lost redundancy until a read-write open rewrites the damaged
                    // copy, so `check` reports it instead of calling the store
                    // consistent without comment.
                    repaired: e.recovery().repaired.clone(),
                    repair_pending: false,
                })
            })
            .map_err(|err| Failure::engine("check store", &err)),
        Request::Shutdown => Err(Failure::new(
            FailureKind::NeedsDaemon {
                what: DaemonOnly::Shutdown,
            },
            "shutdown needs a running daemon",
        )),
        Request::ShipOnce { .. }
        | Request::ShipStart { .. }
        | Request::ShipControl { .. }
        | Request::ShipStatus => Err(Failure::new(
            FailureKind::NeedsDaemon {
                what: DaemonOnly::Ship,
            },
            "continuous shipping needs a running daemon",
        )),
        Request::SnapshotAttach { .. } | Request::SnapshotDetach { .. } => Err(Failure::new(
            FailureKind::NeedsDaemon {
                what: DaemonOnly::Attach,
            },
            "attaching a snapshot through the files needs a running daemon",
        )),
    }
}
