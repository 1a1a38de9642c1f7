//! Progress bars for long verbs (restore, export, ship, remote restore), drawn
//! on stderr only when stderr is a terminal, so scripts, pipes and logs never
//! see bar redraws. Progress is also logged (debug, every tenth of the work),
//! so a log file of a long run shows how far it got; on a terminal, log lines
//! are printed above the bar ([`log_writer`]), never into it.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The bar on the terminal, if any: log lines suspend it while they print.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn shown() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    SHOWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where `tracing` writes: stderr, with the bar on screen (if any) cleared
/// for the line and redrawn below it. Each log event is one `write`.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = shown().clone();
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A [`LogWriter`] (for `tracing_subscriber`'s `with_writer`).
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// What a bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Tracking blocks.
    Blocks,
    /// Bytes (shown in KiB/MiB/GiB with a rate).
    Bytes,
    /// Remote segment objects.
    Segments,
}

/// A progress display that may be invisible.
pub struct Progress {
    what: String,
    unit: Unit,
    visible: bool,
    /// Tenths of the work done at the last progress log line (+1; 0: none yet).
    logged: AtomicU64,
    // Made on the first update: the total is unknown until the engine reports it, and a
    // bar of length 0 would flash "100%" before the work starts.
    bar: OnceLock<ProgressBar>,
}

impl Progress {
    /// A bar labelled `what` counting `unit`, shown only when stderr is a terminal.
    pub fn new(what: &str, unit: Unit) -> Progress {
        Progress::with_visibility(what, unit, std::io::stderr().is_terminal())
    }

    fn with_visibility(what: &str, unit: Unit, visible: bool) -> Progress {
        Progress {
            what: what.to_string(),
            unit,
            visible,
            logged: AtomicU64::new(0),
            bar: OnceLock::new(),
        }
    }

    fn template(&self) -> &'static str {
        match self.unit {
            Unit::Blocks => "{msg} [{bar:40}] {percent:>3}% {pos}/{len} blocks, eta {eta}",
            Unit::Bytes => {
                "{msg} [{bar:40}] {percent:>3}% {bytes}/{total_bytes} ({binary_bytes_per_sec}), eta {eta}"
            }
            Unit::Segments => "{msg} [{bar:40}] {percent:>3}% {pos}/{len} segments, eta {eta}",
        }
    }

    fn bar(&self, total: u64) -> &ProgressBar {
        self.bar.get_or_init(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(self.template()) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.what.clone());
            *shown() = Some(bar.clone());
            bar
        })
    }

    /// Records `done` of `total` units.
    pub fn update(&self, done: u64, total: u64) {
        let done_pct = done.min(total).saturating_mul(100).checked_div(total);
        if let Some(pct) = done_pct {
            let tenth = pct / 10 + 1;
            if self.logged.fetch_max(tenth, Ordering::Relaxed) < tenth {
                tracing::debug!(what = %self.what, done, total, "progress {pct}%");
            }
        }
        if !self.visible {
            return;
        }
        let b = self.bar(total);
        if b.length() != Some(total) {
            b.set_length(total);
        }
        b.set_position(done);
    }

    /// Removes the bar (the verb prints its own one-line result).
    pub fn finish(&self) {
        if let Some(b) = self.bar.get() {
            // A verb shows one bar at a time: this is the one on screen.
            *shown() = None;
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Left without `finish` (an error path): log lines need not suspend it any more.
        if self.bar.get().is_some() {
            *shown() = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invisible_bar_never_makes_one() {
        let p = Progress::with_visibility("x", Unit::Blocks, false);
        p.update(1, 2);
        p.finish();
        assert!(p.bar.get().is_none());
    }

    #[test]
    fn the_bar_starts_at_the_first_reported_total() {
        let p = Progress::with_visibility("x", Unit::Bytes, true);
        assert!(p.bar.get().is_none(), "no bar before any update");
        p.update(0, 4096);
        p.update(1024, 4096);
        let b = p.bar.get().map(|b| (b.length(), b.position()));
        assert_eq!(b, Some((Some(4096), 1024)));
        p.finish();
    }

    #[test]
    fn every_template_is_valid() {
        for unit in [Unit::Blocks, Unit::Bytes, Unit::Segments] {
            let p = Progress::with_visibility("x", unit, true);
            assert!(
                ProgressStyle::with_template(p.template()).is_ok(),
                "{unit:?}"
            );
        }
    }
}
