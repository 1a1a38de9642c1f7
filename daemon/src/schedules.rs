//! Daemon-side shipping: the daemon owns the engine, so `snapblk ship -n ID` runs here.
//! One [`shipper::Scheduler`] per target URL (one volume to many targets), plus one-shot
//! ships that answer once the point is committed. Schedules are saved in the run directory
//! on every change, so a daemon restarted by `snapblk recover` after a crash resumes them
//! (paused ones stay paused) instead of silently stopping the off-site copy.

use crate::control::answer::{ShipControlled, ShipJob, ShipStarted, Shipped};
use crate::control::{Failure, FailureKind, ShipAction};
use shipper::{ship_state_path, Credentials, PointSource, Scheduler, ShipOptions, Target};
use snapmap::Engine;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a one-shot ship reports progress to the waiting client.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

fn open_target(url: &str, secrets: Credentials) -> Result<Arc<dyn Target>, Failure> {
    shipper::target_from_url(url, &secrets)
        .map(Arc::from)
        .map_err(|e| Failure::other(format!("open ship target {url}: {e}")))
}

struct Job {
    sched: Scheduler,
    state_file: PathBuf,
    interval: Duration,
    paused: bool,
    secrets: Credentials,
}

/// A schedule as saved for a restarted daemon.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    url: String,
    interval_ms: u64,
    paused: bool,
    secrets: Credentials,
}

/// The device's shipping jobs.
pub struct Ships {
    engine: Arc<Engine>,
    store: PathBuf,
    jobs: Mutex<BTreeMap<String, Job>>,
    /// Where the schedules are saved (none: not saved).
    saved: Option<PathBuf>,
}

impl Ships {
    /// No jobs yet for the engine whose store is at `store`; schedules are saved to `saved`.
    pub fn new(engine: Arc<Engine>, store: PathBuf, saved: Option<PathBuf>) -> Ships {
        Ships {
            engine,
            store,
            jobs: Mutex::new(BTreeMap::new()),
            saved,
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the current schedules to the save file. A failure is logged, not returned: the
    /// schedules keep running, only a later restart would not resume them.
    fn save(&self, jobs: &BTreeMap<String, Job>) {
        let Some(path) = &self.saved else { return };
        let list: Vec<Saved> = jobs
            .iter()
            .map(|(url, j)| Saved {
                url: url.clone(),
                interval_ms: j.interval.as_millis() as u64,
                paused: j.paused,
                secrets: j.secrets.clone(),
            })
            .collect();
        let res = serde_json::to_vec_pretty(&list)
            .map_err(|e| e.to_string())
            .and_then(|d| crate::rundir::write_private(path, &d).map_err(|e| e.to_string()));
        if let Err(e) = res {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the shipping schedules; a restarted daemon would not resume them");
        }
    }

    /// Starts the schedules a previous daemon of this device saved (after `recover`); returns
    /// how many run again. One that cannot start is logged and dropped.
    pub fn resume_saved(&self) -> usize {
        let Some(path) = &self.saved else { return 0 };
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the saved shipping schedules");
                return 0;
            }
        };
        let list: Vec<Saved> = match serde_json::from_slice(&data) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "saved shipping schedules are unreadable; not resumed");
                return 0;
            }
        };
        let mut n = 0;
        for s in list {
            let interval = Duration::from_millis(s.interval_ms.max(1));
            match self.start(&s.url, interval, s.secrets) {
                Ok(_) => {
                    if s.paused {
                        if let Err(e) = self.control(&s.url, ShipAction::Pause) {
                            tracing::warn!(url = %s.url, error = %e, "could not pause a resumed schedule");
                        }
                    }
                    tracing::info!(url = %s.url, paused = s.paused, "shipping schedule resumed after restart");
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(url = %s.url, error = %e, "saved shipping schedule could not be resumed");
                }
            }
        }
        n
    }

    /// Forgets any saved schedules (a new device reusing this id must not inherit them).
    pub fn clear_saved(&self) {
        if let Some(path) = &self.saved {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove stale shipping schedules");
                }
            }
        }
    }

    /// Ships one point to `url`; returns once it is committed.
    pub fn once(
        &self,
        url: &str,
        secrets: Credentials,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Shipped, Failure> {
        if self.jobs().contains_key(url) {
            return Err(Failure::new(
                FailureKind::ShipRunning { url: url.into() },
                format!("continuous shipping to {url} is running in this daemon"),
            ));
        }
        let target = open_target(url, secrets)?;
        let state_file = ship_state_path(&self.store, url);
        let counters = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let mut opts = ShipOptions::new(&state_file);
        let c = counters.clone();
        opts.progress = Some(Arc::new(move |done, total| {
            c.0.store(done, Ordering::Relaxed);
            c.1.store(total, Ordering::Relaxed);
        }));
        // The control socket's progress callback borrows the connection, so the ship runs
        // on a scoped thread and this one relays its counters.
        let result = std::thread::scope(|s| {
            let h = s.spawn(|| shipper::ship_once(self.engine.as_ref(), target.as_ref(), &opts));
            while !h.is_finished() {
                std::thread::sleep(PROGRESS_EVERY);
                // Sent even before reading starts (0 of 0): the client bounds silence.
                progress(
                    counters.0.load(Ordering::Relaxed),
                    counters.1.load(Ordering::Relaxed),
                );
            }
            h.join()
        });
        let point = match result {
            Ok(r) => r.map_err(|e| {
                Failure::new(FailureKind::of_shipper(&e), format!("ship to {url}: {e}"))
            })?,
            Err(_) => {
                return Err(Failure::other(format!(
                    "ship to {url}: the shipping thread panicked"
                )))
            }
        };
        Ok(Shipped {
            point,
            url: url.into(),
            state_file,
        })
    }

    /// Starts continuous shipping to `url`, or changes the interval of a running schedule.
    pub fn start(
        &self,
        url: &str,
        interval: Duration,
        secrets: Credentials,
    ) -> Result<ShipStarted, Failure> {
        let mut jobs = self.jobs();
        if let Some(job) = jobs.get_mut(url) {
            job.sched.set_interval(interval);
            job.sched.resume();
            job.interval = interval;
            job.paused = false;
            let state_file = job.state_file.clone();
            self.save(&jobs);
            return Ok(ShipStarted {
                url: url.into(),
                started: false,
                interval_secs: interval.as_secs_f64(),
                state_file,
            });
        }
        let target = open_target(url, secrets.clone())?;
        let state_file = ship_state_path(&self.store, url);
        let mut opts = ShipOptions::new(&state_file);
        // A schedule commits only when something changed, so an idle volume costs nothing.
        opts.skip_unchanged = true;
        let source: Arc<dyn PointSource> = self.engine.clone();
        let sched = Scheduler::start(source, target, opts, interval);
        tracing::info!(
            url,
            interval_ms = interval.as_millis() as u64,
            "continuous shipping started"
        );
        jobs.insert(
            url.to_string(),
            Job {
                sched,
                state_file: state_file.clone(),
                interval,
                paused: false,
                secrets,
            },
        );
        self.save(&jobs);
        Ok(ShipStarted {
            url: url.into(),
            started: true,
            interval_secs: interval.as_secs_f64(),
            state_file,
        })
    }

    /// Pauses, resumes or stops the schedule of `url`.
    pub fn control(&self, url: &str, action: ShipAction) -> Result<ShipControlled, Failure> {
        let mut jobs = self.jobs();
        let missing = |jobs: &BTreeMap<String, Job>| {
            Failure::new(
                FailureKind::NoSchedule { url: url.into() },
                format!(
                    "no continuous shipping to {url} in this daemon (running: {})",
                    jobs_list(jobs.keys())
                ),
            )
        };
        if !jobs.contains_key(url) {
            return Err(missing(&jobs));
        }
        if action == ShipAction::Stop {
            if let Some(job) = jobs.remove(url) {
                self.save(&jobs);
                // Release the lock first: stopping waits for a ship in flight.
                drop(jobs);
                let stats = job.sched.stop();
                tracing::info!(url, "continuous shipping stopped");
                return Ok(ShipControlled {
                    url: url.into(),
                    action,
                    stats,
                });
            }
        }
        let Some(job) = jobs.get_mut(url) else {
            return Err(missing(&jobs));
        };
        match action {
            ShipAction::Pause => job.sched.pause(),
            ShipAction::Resume | ShipAction::Stop => job.sched.resume(),
        }
        job.paused = action == ShipAction::Pause;
        let stats = job.sched.stats();
        self.save(&jobs);
        Ok(ShipControlled {
            url: url.into(),
            action,
            stats,
        })
    }

    /// Every schedule with its statistics (last point, lag, throughput).
    pub fn status(&self) -> Vec<ShipJob> {
        self.jobs()
            .iter()
            .map(|(url, job)| ShipJob {
                url: url.clone(),
                state_file: job.state_file.clone(),
                stats: job.sched.stats(),
            })
            .collect()
    }

    /// Stops every schedule (waiting for ships in flight), before the engine closes.
    pub fn stop_all(&self) {
        let jobs = std::mem::take(&mut *self.jobs());
        for (url, job) in jobs {
            job.sched.stop();
            tracing::info!(url, "continuous shipping stopped at shutdown");
        }
    }
}

fn jobs_list<'a>(urls: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = urls.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_saved_root_only_and_resumed_by_a_restarted_daemon() {
        use snapmap::{BlockDev, MemDev, OpenOptions};
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let origin: Arc<dyn BlockDev> = Arc::new(MemDev::new("origin", 1 << 20, false));
        let store: Arc<dyn BlockDev> = Arc::new(MemDev::new("store", 0, true));
        let engine = Arc::new(Engine::format(origin, store, &OpenOptions::default()).unwrap());
        let saved = t.path().join("ships.json");
        let url = format!("file://{}", t.path().join("remote").display());
        let secrets = Credentials {
            access_key: Some("AK".into()),
            ..Credentials::default()
        };
        let store_path = t.path().join("d.snapstore");
        let a = Ships::new(engine.clone(), store_path.clone(), Some(saved.clone()));
        a.start(&url, Duration::from_secs(3600), secrets.clone())
            .unwrap();
        a.control(&url, ShipAction::Pause).unwrap();
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the save file holds secrets");
        let text = std::fs::read_to_string(&saved).unwrap();
        assert!(
            text.contains(&url) && text.contains("3600000") && text.contains("\"paused\": true"),
            "{text}"
        );
        a.stop_all();

        // A restarted daemon: the schedule comes back, still paused, with its secrets.
        let b = Ships::new(engine.clone(), store_path.clone(), Some(saved.clone()));
        assert_eq!(b.resume_saved(), 1);
        let st = b.status();
        assert_eq!(st[0].url, url);
        assert_eq!(
            b.jobs().get(&url).map(|j| (j.paused, j.secrets == secrets)),
            Some((true, true))
        );
        // Stopping it forgets it for the next restart too.
        b.control(&url, ShipAction::Stop).unwrap();
        let c = Ships::new(engine.clone(), store_path.clone(), Some(saved.clone()));
        assert_eq!(c.resume_saved(), 0);
        // A new device with this id starts clean.
        b.start(&url, Duration::from_secs(3600), Credentials::default())
            .unwrap();
        b.stop_all();
        let d = Ships::new(engine, store_path, Some(saved.clone()));
        d.clear_saved();
        assert!(!saved.exists());
        assert_eq!(d.resume_saved(), 0);
    }
}
