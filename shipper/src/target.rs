//! The `Target` trait every backend implements, its error type, and the retry policy.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why a target request failed; decides whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetErrorKind {
    /// The object does not exist.
    NotFound,
    /// `put_new` found the key already taken.
    AlreadyExists,
    /// The target refused our identity (wrong key/credentials, unauthenticated peer).
    Auth,
    /// Worth retrying: connection refused/reset, timeout, 5xx, throttling.
    Transient,
    /// Retrying will not help: bad request, permission, protocol violation.
    Permanent,
}

/// A failed request to a target. The message never contains secrets.
#[derive(Debug, Clone)]
pub struct TargetError {
    /// The class of failure.
    pub kind: TargetErrorKind,
    /// Target (redacted URL) and object key the request was about.
    pub object: String,
    /// What happened and what to do about it.
    pub detail: String,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.detail)
    }
}

impl std::error::Error for TargetError {}

impl TargetError {
    /// Builds an error of `kind` about `object`.
    pub fn new(
        kind: TargetErrorKind,
        object: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        TargetError {
            kind,
            object: object.into(),
            detail: detail.into(),
        }
    }
    /// True when another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == TargetErrorKind::Transient
    }
}

/// Result of a target request.
pub type TargetResult<T> = std::result::Result<T, TargetError>;

/// A place that stores the remote layout (`REMOTE-FORMAT.md`): a flat namespace of
/// immutable objects addressed by `/`-separated keys.
///
/// Implementations make one attempt per call; [`Retry`] wraps them with backoff.
pub trait Target: Send + Sync {
    /// Stable, secret-free identity of the location (used to name ship points), e.g.
    /// `file:///srv/backup`, `s3://host:port/bucket/prefix`, `peer://host:port`.
    fn id(&self) -> String;
    /// Stores `data` under `key` only if `key` does not exist yet, durably before returning
    /// where the backend allows it. Fails with [`TargetErrorKind::AlreadyExists`] when the
    /// key is taken (best effort on servers that ignore conditional writes: see S3).
    fn put_new(&self, key: &str, data: &[u8]) -> TargetResult<()>;
    /// Reads a whole object, refusing objects larger than `max_len`.
    fn get(&self, key: &str, max_len: u64) -> TargetResult<Vec<u8>>;
    /// Size of the object, or `None` when it does not exist.
    fn head(&self, key: &str) -> TargetResult<Option<u64>>;
    /// All keys starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> TargetResult<Vec<String>>;
    /// Removes an object; removing a missing object succeeds.
    fn delete(&self, key: &str) -> TargetResult<()>;
}

/// A shared or boxed target is a target: each call goes to the one inside.
macro_rules! forward_target {
    ($($ptr:ident)::+) => {
        impl<T: Target + ?Sized> Target for $($ptr)::+<T> {
            fn id(&self) -> String {
                (**self).id()
            }
            fn put_new(&self, key: &str, data: &[u8]) -> TargetResult<()> {
                (**self).put_new(key, data)
            }
            fn get(&self, key: &str, max_len: u64) -> TargetResult<Vec<u8>> {
                (**self).get(key, max_len)
            }
            fn head(&self, key: &str) -> TargetResult<Option<u64>> {
                (**self).head(key)
            }
            fn list(&self, prefix: &str) -> TargetResult<Vec<String>> {
                (**self).list(prefix)
            }
            fn delete(&self, key: &str) -> TargetResult<()> {
                (**self).delete(key)
            }
        }
    };
}
forward_target!(std::sync::Arc);
forward_target!(Box);

/// Exponential backoff applied to every target request.
///
/// Only [`TargetErrorKind::Transient`] failures are retried (a refused connection, a
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

/// Publishes an immutable object exactly once.
///
/// A retried PUT whose first attempt did land finds the key taken; that counts as success
/// only when the stored object is ours. `content_addressed` keys embed the content hash,
/// so an equal size suffices there; other keys (manifests) are compared byte for byte.
/// Returns `true` when the object was already present (nothing uploaded).
/// Retries come from the target (wrap it in [`Retrying`]).
pub fn publish(
    target: &dyn Target,
    key: &str,
    data: &[u8],
    content_addressed: bool,
) -> TargetResult<bool> {
    // Check before put: Garage and others ignore conditional writes, so the HEAD is what
    // keeps a resumed point from uploading (or overwriting) what is already there.
    if let Some(size) = target.head(key)? {
        check_same(target, key, data, size, content_addressed)?;
        return Ok(true);
    }
    match target.put_new(key, data) {
        Ok(()) => Ok(false),
        // A retried PUT whose earlier attempt landed: fine if the object is ours.
        Err(e) if e.kind == TargetErrorKind::AlreadyExists => {
            let size = target.head(key)?.unwrap_or(u64::MAX);
            check_same(target, key, data, size, content_addressed).map(|_| false)
        }
        Err(e) => Err(e),
    }
}

fn check_same(
    target: &dyn Target,
    key: &str,
    data: &[u8],
    size: u64,
    content_addressed: bool,
) -> TargetResult<()> {
    let same = size == data.len() as u64
        && (content_addressed || target.get(key, data.len() as u64)? == data);
    if same {
        Ok(())
    } else {
        Err(TargetError::new(
            TargetErrorKind::AlreadyExists,
            format!("{}/{key}", target.id()),
            "a different object is already published under this key; another writer ships to this target, or the local ship state was lost: use one target per volume",
        ))
    }
}
