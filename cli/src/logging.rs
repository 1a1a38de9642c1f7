//! `tracing` output: stderr, filtered by `RUST_LOG` (default: warnings for
//! commands, info for the daemon, whose stderr is its log file).

use tracing_subscriber::EnvFilter;

/// Installs the subscriber once.
pub fn init(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::progress::log_writer)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
