//! Runs [`ship_once`] every interval on a background thread, with pause/resume/stop and
//! lag (RPO) and throughput reporting.

use crate::remote::remote_prune;
use crate::ship::{ship_once, PointInfo, ShipOptions};
use crate::source::PointSource;
use crate::targets::Target;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A snapshot of the scheduler's progress.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SchedulerStats {
    /// `running`, `paused` or `stopped`.
    pub state: String,
    /// Current interval between ships (seconds in JSON, as `interval_secs`).
    #[serde(rename = "interval_secs", with = "crate::secs")]
    pub interval: Duration,
    /// True while a ship (or retention run) is in progress.
    pub shipping: bool,
    /// Points committed since start.
    pub points_committed: u64,
    /// Successful ships that found nothing changed (with `skip_unchanged`).
    pub unchanged: u64,
    /// Failed ships since start.
    pub failures: u64,
    /// Failures in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Most recent error text.
    pub last_error: Option<String>,
    /// Result of the most recent successful ship.
    pub last_ship: Option<PointInfo>,
    /// Seconds since the epoch of the newest image known safe on the target.
    pub safe_as_of_unix: Option<u64>,
    /// Recovery point objective right now: how much recent writing would be lost.
    #[serde(rename = "lag_secs", with = "crate::secs::option")]
    pub lag: Option<Duration>,
    /// Retention runs (see `ShipOptions::keep_points`) that completed.
    pub prunes: u64,
    /// Bytes uploaded since start.
    pub bytes_uploaded: u64,
    /// Upload throughput of the last ship, bytes per second.
    pub last_throughput_bps: f64,
    /// Bytes uploaded divided by time spent shipping, since start.
    pub avg_throughput_bps: f64,
}

struct Ctl {
    paused: bool,
    stop: bool,
    trigger: bool,
    interval: Duration,
    stats: SchedulerStats,
    busy_secs: f64,
}

struct Shared {
    ctl: Mutex<Ctl>,
    cv: Condvar,
}

/// A background shipping loop. Dropping it stops the loop (after the current ship).
pub struct Scheduler {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Scheduler {
    /// Starts shipping `source` to `target` now and then every `interval`.
    pub fn start(
        source: Arc<dyn PointSource>,
        target: Arc<dyn Target>,
        opts: ShipOptions,
        interval: Duration,
    ) -> Scheduler {
        let shared = Arc::new(Shared {
            ctl: Mutex::new(Ctl {
                paused: false,
                stop: false,
                trigger: true,
                interval,
                stats: SchedulerStats {
                    state: "running".into(),
                    interval,
                    ..Default::default()
                },
                busy_secs: 0.0,
            }),
            cv: Condvar::new(),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("snapblk-ship".into())
            .spawn(move || run(sh, source, target, opts))
            .ok();
        if thread.is_none() {
            let mut c = shared.ctl.lock().unwrap_or_else(|p| p.into_inner());
            c.stats.state = "stopped".into();
            c.stats.last_error = Some("could not start the shipping thread".into());
        }
        Scheduler { shared, thread }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Ctl) -> R) -> R {
        let mut c = self.shared.ctl.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut c);
        self.shared.cv.notify_all();
        r
    }

    /// Stops starting new ships (one in flight completes).
    pub fn pause(&self) {
        self.with(|c| {
            c.paused = true;
            c.stats.state = "paused".into();
        })
    }

    /// Resumes after [`Scheduler::pause`]; ships at once.
    pub fn resume(&self) {
        self.with(|c| {
            c.paused = false;
            c.trigger = true;
            c.stats.state = "running".into();
        })
    }

    /// Changes the interval (takes effect for the next wait).
    pub fn set_interval(&self, interval: Duration) {
        self.with(|c| {
            c.interval = interval;
            c.stats.interval = interval;
        })
    }

    /// Ships as soon as possible instead of waiting for the interval.
    pub fn trigger(&self) {
        self.with(|c| c.trigger = true)
    }

    /// Current statistics, with `lag` computed now.
    pub fn stats(&self) -> SchedulerStats {
        self.with(|c| {
            let mut s = c.stats.clone();
            s.lag = s
                .safe_as_of_unix
                .map(|t| Duration::from_secs(now_unix().saturating_sub(t)));
            s
        })
    }

    /// Stops the loop, waits for the current ship to finish, and returns final statistics.
    pub fn stop(mut self) -> SchedulerStats {
        self.shutdown();
        let mut s = self.stats();
        s.state = "stopped".into();
        s
    }

    fn shutdown(&mut self) {
        self.with(|c| c.stop = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(sh: Arc<Shared>, source: Arc<dyn PointSource>, target: Arc<dyn Target>, opts: ShipOptions) {
    let mut last_start: Option<Instant> = None;
    let mut commits_since_prune = 0usize;
    loop {
        {
            let mut c = sh.ctl.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if c.stop {
                    c.stats.state = "stopped".into();
                    return;
                }
                let due = last_start
                    .map(|t| t + c.interval)
                    .unwrap_or_else(Instant::now);
                let now = Instant::now();
                if !c.paused && (c.trigger || now >= due) {
                    c.trigger = false;
                    c.stats.shipping = true;
                    break;
                }
                let wait = if c.paused {
                    Duration::from_secs(3600)
                } else {
                    due.saturating_duration_since(now)
                };
                c = sh
                    .cv
                    .wait_timeout(c, wait)
                    .map(|r| r.0)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        last_start = Some(Instant::now());
        let result = ship_once(source.as_ref(), target.as_ref(), &opts);
        // Retention runs on this thread, between ships, so it never races our own commits.
        let mut pruned = None;
        if let (Ok(info), Some(keep)) = (&result, opts.keep_points) {
            commits_since_prune += usize::from(info.committed);
            if commits_since_prune >= keep.max(1) {
                commits_since_prune = 0;
                pruned = Some(remote_prune(target.as_ref(), keep, opts.zstd_level));
            }
        }
        let mut c = sh.ctl.lock().unwrap_or_else(|p| p.into_inner());
        c.stats.shipping = false;
        match pruned {
            Some(Ok(_)) => c.stats.prunes += 1,
            Some(Err(e)) => {
                tracing::warn!("retention failed: {e}");
                c.stats.last_error = Some(format!("retention: {e}"));
            }
            None => {}
        }
        match result {
            Ok(info) => {
                let secs = info.elapsed.as_secs_f64().max(1e-6);
                c.busy_secs += secs;
                let s = &mut c.stats;
                if info.committed {
                    s.points_committed += 1;
                } else {
                    s.unchanged += 1;
                }
                s.consecutive_failures = 0;
                s.bytes_uploaded += info.bytes_uploaded;
                s.last_throughput_bps = info.bytes_uploaded as f64 / secs;
                s.safe_as_of_unix = Some(info.created_unix);
                s.last_ship = Some(info);
                let busy = c.busy_secs;
                c.stats.avg_throughput_bps = c.stats.bytes_uploaded as f64 / busy;
            }
            Err(e) => {
                tracing::warn!("ship failed: {e}");
                c.stats.failures += 1;
                c.stats.consecutive_failures += 1;
                c.stats.last_error = Some(e.to_string());
            }
        }
    }
}
