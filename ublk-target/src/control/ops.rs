//! Requests that only need the engine, shaped into the JSON replies both the
//! daemon and the CLI's offline forms (`--backing/--store`) return, so a
//! verb prints the same whether a daemon runs or not.

use super::Request;
use serde_json::{json, Value};
use snapmap::Engine;
use std::time::Instant;

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("encode reply: {e}"))
}

/// Runs an engine-level request. `Status` returns the engine part only;
/// `Export` writes to the request's path as given (callers resolve it);
/// `Restore` does no in-use check (callers claim the device first).
/// `Shutdown` is not an engine request.
pub fn engine_request(
    e: &Engine,
    req: &Request,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Value, String> {
    match req {
        Request::Status => to_json(&e.status()),
        Request::SnapshotCreate { name } => e
            .create_snapshot(name)
            .map_err(|err| format!("create snapshot {name}: {err}"))
            .and_then(|info| to_json(&info)),
        Request::SnapshotList => to_json(&e.snapshots()),
        Request::SnapshotDelete { name } => e
            .delete_snapshot(name)
            .map(|_| json!({ "deleted": name }))
            .map_err(|err| format!("delete snapshot {name}: {err}")),
        Request::Restore { name } => {
            let started = Instant::now();
            let report = e
                .restore(name, progress)
                .map_err(|err| format!("restore snapshot {name}: {err}"))?;
            Ok(json!({
                "restored": name,
                "secs": started.elapsed().as_secs_f64(),
                "report": to_json(&report)?,
            }))
        }
        Request::Export { name, to } => {
            e.export(name, to, &|done, total| progress(done, total))
                .map_err(|err| {
                    format!("export snapshot {name} to {}: {err}", to.display())
                })?;
            Ok(json!({ "exported": name, "to": to }))
        }
        Request::Diff { from, to } => {
            let ranges = e.diff(from, to.as_deref()).map_err(|err| {
                format!("diff {from} {}: {err}", to.as_deref().unwrap_or("(live)"))
            })?;
            let changed: u64 = ranges.iter().map(|r| r.len).sum();
            Ok(json!({
                "from": from,
                "to": to,
                "block_size": e.block_size(),
                "changed_blocks": changed,
                "ranges": to_json(&ranges)?,
            }))
        }
        Request::Check => e
            .check()
            .map_err(|err| format!("check store: {err}"))
            .and_then(|r| {
                let ok = r.ok();
                let mut v = to_json(&r)?;
                v["ok"] = json!(ok);
                // Damage that opening the store worked around (a superblock copy or
                // checkpoint that failed to verify): the store is consistent, but it lost
                // redundancy until a read-write open rewrites the damaged copy, so `check`
                // reports it instead of calling the store consistent without comment.
                v["repaired"] = json!(e.recovery().repaired);
                Ok(v)
            }),
        Request::Shutdown => {
            Err("shutdown needs a running daemon: use `snapblk delete -n ID`".into())
        }
        Request::ShipOnce { .. }
        | Request::ShipStart { .. }
        | Request::ShipControl { .. }
        | Request::ShipStatus => Err(
            "continuous shipping needs a running daemon: use -n ID, or ship the files once with `snapblk ship --backing PATH --to URL --once`"
                .into(),
        ),
    }
}
