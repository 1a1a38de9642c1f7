//! One module per verb group.

mod daemon;
mod device;
mod ship;
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
        Command::Ship(a) => ship::ship(a),
        Command::Receive(a) => ship::receive(a),
        Command::Remote(c) => ship::remote(c),
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut cmd = crate::args::Cli::command();
            clap_complete::generate(a.shell, &mut cmd, "snapblk", &mut std::io::stdout());
            Ok(())
        }
    }
}
