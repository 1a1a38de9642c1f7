//! Retry with backoff, applied around every request of every backend.
//!
//! Lives apart from the backends because rust-s3 never retries a single PUT or DELETE and
//! a peer connection can drop at any time: one policy here covers them all the same way.

use super::{Target, TargetResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Exponential backoff applied to every target request.
///
/// Only [`Transient`](super::TargetErrorKind::Transient) failures are retried (a refused connection, a
/// timeout, a 5xx); a bad URL, a refused key or a protocol violation fails at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Total attempts per request (at least 1).
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time.
    pub initial: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
    /// No new attempt starts once this much time has passed since the first one, however
    /// many attempts remain (each attempt is itself bounded by the backend's timeouts).
    pub give_up_after: Duration,
}

impl Default for Retry {
    /// 8 attempts, 200 ms doubling to 5 s, at most 60 s: rides out about 20 s of outage.
    fn default() -> Self {
        Retry {
            attempts: 8,
            initial: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// No retries at all (for tests and interactive checks).
    pub fn none() -> Self {
        Retry {
            attempts: 1,
            initial: Duration::ZERO,
            max_delay: Duration::ZERO,
            give_up_after: Duration::ZERO,
        }
    }

    /// Runs `op` until it succeeds, fails permanently, or attempts (or time) run out.
    /// Each retry is logged at debug level, the first one also as a single warning.
    pub fn run<T>(&self, what: &str, op: impl FnMut() -> TargetResult<T>) -> TargetResult<T> {
        self.run_warning_once(what, &AtomicBool::new(false), op)
    }

    /// [`Retry::run`], warning only while `warned` is false (it is set by the warning and
    /// cleared by a success): one line per outage, not one per attempt and request.
    fn run_warning_once<T>(
        &self,
        what: &str,
        warned: &AtomicBool,
        mut op: impl FnMut() -> TargetResult<T>,
    ) -> TargetResult<T> {
        let started = Instant::now();
        let mut delay = self.initial;
        let attempts = self.attempts.max(1);
        let mut n = 1;
        loop {
            match op() {
                Ok(v) => {
                    if warned.swap(false, Ordering::Relaxed) {
                        tracing::info!("{what}: the target answers again");
                    }
                    return Ok(v);
                }
                Err(e)
                    if e.is_transient()
                        && n < attempts
                        && started.elapsed() + delay < self.give_up_after =>
                {
                    tracing::debug!(
                        attempt = n,
                        of = attempts,
                        "{what}: {e}; retrying in {delay:?}"
                    );
                    if !warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "{}: {}; retrying (up to {} attempts within {} s; RUST_LOG=debug shows each)",
                            e.object,
                            e.detail,
                            attempts,
                            self.give_up_after.as_secs()
                        );
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.max_delay);
                    n += 1;
                }
                Err(mut e) => {
                    if e.is_transient() && attempts > 1 {
                        e.detail = format!(
                            "{} (gave up after {n} attempts in {:.0} s)",
                            e.detail,
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// Wraps a target so that every request is retried with backoff on transient failures.
///
/// rust-s3 never retries a single PUT or DELETE, and a peer connection can drop at any
/// time; retrying here covers every backend the same way.
#[derive(Debug)]
pub struct Retrying<T> {
    inner: T,
    policy: Retry,
    /// An outage was reported and the target has not answered since.
    warned: AtomicBool,
}

impl<T: Target> Retrying<T> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: T, policy: Retry) -> Self {
        Retrying {
            inner,
            policy,
            warned: AtomicBool::new(false),
        }
    }
    /// The wrapped target.
    pub fn inner(&self) -> &T {
        &self.inner
    }
    fn run<R>(&self, what: &str, op: impl FnMut() -> TargetResult<R>) -> TargetResult<R> {
        self.policy.run_warning_once(what, &self.warned, op)
    }
}

impl<T: Target> Target for Retrying<T> {
    fn id(&self) -> String {
        self.inner.id()
    }
    fn put_new(&self, key: &str, data: &[u8]) -> TargetResult<()> {
        self.run(&format!("PUT {key}"), || self.inner.put_new(key, data))
    }
    fn get(&self, key: &str, max_len: u64) -> TargetResult<Vec<u8>> {
        self.run(&format!("GET {key}"), || self.inner.get(key, max_len))
    }
    fn head(&self, key: &str) -> TargetResult<Option<u64>> {
        self.run(&format!("HEAD {key}"), || self.inner.head(key))
    }
    fn list(&self, prefix: &str) -> TargetResult<Vec<String>> {
        self.run(&format!("LIST {prefix}"), || self.inner.list(prefix))
    }
    fn delete(&self, key: &str) -> TargetResult<()> {
        self.run(&format!("DELETE {key}"), || self.inner.delete(key))
    }
}
