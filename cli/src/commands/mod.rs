//! One module per verb group. Shipping verbs (`ship`, `receive`, `remote`)
//! belong in their own module next to these.

mod daemon;
mod device;
mod snapshot;

use crate::args::Command;
use anyhow::Result;

/// Runs one verb.
pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Create(a) => device::create(a),
        Command::List(a) => device::list(a.json),
        Command::Status(a) => device::status(a),
        Command::Delete(a) => device::delete(a.id),
        Command::Recover(a) => device::recover(a),
        Command::Daemon(a) => daemon::run(a),
        Command::Snapshot(s) => snapshot::snapshot(s),
        Command::Restore(a) => snapshot::restore(a),
        Command::Export(a) => snapshot::export(a),
        Command::Diff(a) => snapshot::diff(a),
        Command::Check(a) => snapshot::check(a),
    }
}
