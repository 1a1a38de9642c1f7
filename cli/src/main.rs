//! `snapblk`: parse the command line, dispatch to a verb module, print one
//! error line (naming the object and the fix) and exit non-zero on failure.

mod args;
mod commands;
mod failure;
mod help;
mod logging;
mod output;
mod progress;
mod session;
mod size;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    if !cli.command.is_daemon() && !cli.command.uses_network() {
        // `snapblk list | head` should end quietly like any Unix tool; the
        // daemon keeps ignoring SIGPIPE so a vanished client cannot kill it,
        // and so do the shipping verbs: a peer that hangs up must become an
        // error message, not a silent death by signal.
        // SAFETY: resets one signal's disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    logging::init(cli.command.is_daemon());
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::debug!(error = ?e, "command failed");
            eprintln!("snapblk: {}", failure::message(&e));
            ExitCode::from(failure::code(&e))
        }
    }
}
