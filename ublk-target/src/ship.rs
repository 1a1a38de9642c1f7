//! Daemon-side shipping: the daemon owns the engine, so `snapblk ship -n ID` runs here.
//! One [`shipper::Scheduler`] per target URL (one volume to many targets), plus one-shot
//! ships that answer once the point is committed.

use crate::control::{ShipAction, ShipSecrets};
use serde_json::{json, Value};
use shipper::{Credentials, PointSource, Scheduler, ShipOptions, Target};
use snapmap::Engine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a one-shot ship reports progress to the waiting client.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The ship state file of (`store`, `url`): next to the store, so it survives daemon
/// restarts, `recover` and offline ships of the same files.
pub fn ship_state_path(store: &Path, url: &str) -> PathBuf {
    let digest = shipper::format::sha256(url.as_bytes());
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".ship-{tag}.json"));
    store.with_file_name(name)
}

/// Turns the wire form of the secrets into the shipper's credentials.
pub fn credentials(s: ShipSecrets) -> Credentials {
    Credentials {
        endpoint: s.endpoint,
        region: s.region,
        access_key: s.access_key,
        secret_key: s.secret_key,
        peer_key: s.peer_key,
        ..Credentials::default()
    }
}

fn open_target(url: &str, secrets: ShipSecrets) -> Result<Arc<dyn Target>, String> {
    shipper::target_from_url(url, &credentials(secrets))
        .map(Arc::from)
        .map_err(|e| format!("open ship target {url}: {e}"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("encode reply: {e}"))
}

struct Job {
    sched: Scheduler,
    state_file: PathBuf,
}

/// The device's shipping jobs.
pub struct Ships {
    engine: Arc<Engine>,
    store: PathBuf,
    jobs: Mutex<BTreeMap<String, Job>>,
}

impl Ships {
    /// No jobs yet for the engine whose store is at `store`.
    pub fn new(engine: Arc<Engine>, store: PathBuf) -> Ships {
        Ships {
            engine,
            store,
            jobs: Mutex::new(BTreeMap::new()),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ships one point to `url`; returns once it is committed.
    pub fn once(
        &self,
        url: &str,
        secrets: ShipSecrets,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Value, String> {
        if self.jobs().contains_key(url) {
            return Err(format!(
                "continuous shipping to {url} is running in this daemon: pause it first (`snapblk ship -n ID --to {url} --pause`) or read its progress with `snapblk status`"
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
        let info = match result {
            Ok(r) => r.map_err(|e| format!("ship to {url}: {e}"))?,
            Err(_) => return Err(format!("ship to {url}: the shipping thread panicked")),
        };
        let mut v = to_json(&info)?;
        v["url"] = json!(url);
        v["state_file"] = json!(state_file);
        Ok(v)
    }

    /// Starts continuous shipping to `url`, or changes the interval of a running schedule.
    pub fn start(
        &self,
        url: &str,
        interval: Duration,
        secrets: ShipSecrets,
    ) -> Result<Value, String> {
        let mut jobs = self.jobs();
        if let Some(job) = jobs.get(url) {
            job.sched.set_interval(interval);
            job.sched.resume();
            return Ok(
                json!({ "url": url, "started": false, "interval_ms": interval.as_millis() as u64 }),
            );
        }
        let target = open_target(url, secrets)?;
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
            },
        );
        Ok(
            json!({ "url": url, "started": true, "interval_ms": interval.as_millis() as u64, "state_file": state_file }),
        )
    }

    /// Pauses, resumes or stops the schedule of `url`.
    pub fn control(&self, url: &str, action: ShipAction) -> Result<Value, String> {
        let mut jobs = self.jobs();
        if !jobs.contains_key(url) {
            return Err(format!(
                "no continuous shipping to {url} in this daemon (running: {}); start it with `snapblk ship -n ID --to {url} --interval DUR`",
                jobs_list(jobs.keys())
            ));
        }
        if action == ShipAction::Stop {
            if let Some(job) = jobs.remove(url) {
                // Release the lock first: stopping waits for a ship in flight.
                drop(jobs);
                let stats = job.sched.stop();
                tracing::info!(url, "continuous shipping stopped");
                return Ok(json!({ "url": url, "action": "stop", "stats": to_json(&stats)? }));
            }
        }
        let Some(job) = jobs.get(url) else {
            return Err(format!("no continuous shipping to {url} in this daemon"));
        };
        match action {
            ShipAction::Pause => job.sched.pause(),
            ShipAction::Resume | ShipAction::Stop => job.sched.resume(),
        }
        Ok(json!({ "url": url, "action": action, "stats": to_json(&job.sched.stats())? }))
    }

    /// Every schedule with its statistics (last point, lag, throughput).
    pub fn status(&self) -> Result<Value, String> {
        let jobs = self.jobs();
        let mut out = Vec::new();
        for (url, job) in jobs.iter() {
            let stats = job.sched.stats();
            let mut v = to_json(&stats)?;
            v["url"] = json!(url);
            v["state_file"] = json!(job.state_file);
            v["lag_secs"] = json!(stats.lag.map(|d| d.as_secs()));
            out.push(v);
        }
        Ok(Value::Array(out))
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
    fn state_file_sits_next_to_the_store_and_differs_per_url() {
        let a = ship_state_path(Path::new("/srv/d.img.snapstore"), "file:///r1");
        let b = ship_state_path(Path::new("/srv/d.img.snapstore"), "file:///r2");
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/srv")));
        let name = a.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            name.starts_with("d.img.snapstore.ship-") && name.ends_with(".json"),
            "{name}"
        );
    }
}
