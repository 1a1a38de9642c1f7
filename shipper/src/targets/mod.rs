//! Where shipped objects live: the [`Target`] trait and its three backends, one module
//! each — [`file`](mod@file) (a local directory), [`s3`] (a bucket) and [`peer`] (a `snapblk
//! receive` process). [`crate::url`] is the one place that turns a URL into one of them.
//!
//! The shipper needs only a flat namespace of immutable objects, so a backend is five
//! small requests; everything that makes a point durable, resumable and never-overwriting
//! is built on them once ([`publish`], [`Retrying`]) instead of per backend. The contract
//! below is checked against every backend by `shipper/tests/conformance.rs`.

pub mod file;
pub mod peer;
mod retry;
pub mod s3;

pub use retry::{Retry, Retrying};

use std::fmt;

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

/// Longest object key, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Checks that `key` has the shape of a key of the remote layout: `/`-separated parts of
/// `[A-Za-z0-9._-]`, none empty or starting with `.`, at most [`MAX_KEY_LEN`] bytes.
///
/// Every key the shipper writes has this shape. A directory-backed store must refuse the
/// rest, since `..`, an absolute path or a dot-name (our temp files) would let a key
/// escape the root or collide with an upload in flight.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err("key is empty or longer than 512 bytes".into());
    }
    for part in key.split('/') {
        if part.is_empty() || part.starts_with('.') {
            return Err(format!("key {key:?} has an empty or dot-leading component"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(format!("key {key:?} has characters outside [A-Za-z0-9._-]"));
        }
    }
    Ok(())
}

/// A place that stores the remote layout (`REMOTE-FORMAT.md`): a flat namespace of
/// immutable objects addressed by `/`-separated keys (see [`validate_key`]; the `file://`
/// and `peer://` backends refuse other keys, `s3://` passes them to the server as they are).
///
/// Each call makes one attempt and reports a failure by its [`TargetErrorKind`]; wrap the
/// target in [`Retrying`] (as [`crate::target_from_url`] does) to retry transient ones.
/// Only a missing object of [`Target::get`] is an error of kind `NotFound`: `head` answers
/// `None` and `delete` succeeds for it, and `list` returns no key for it.
pub trait Target: Send + Sync {
    /// Stable, secret-free identity of the location, e.g. `file:///srv/backup` (the
    /// directory canonicalized when it exists), `s3://host:port/bucket/prefix`,
    /// `peer://host:port`. Ship points and ship state are named after it, so it must
    /// not change between calls or runs for the same location. Makes no request.
    fn id(&self) -> String;

    /// Stores `data` under `key`, provided `key` is not taken yet.
    ///
    /// Never overwrites: when `key` exists the call fails with
    /// [`TargetErrorKind::AlreadyExists`] and the stored object stays as it was — enforced
    /// atomically by `file://` (`link(2)`) and by `peer://` (the receiver stores through
    /// `file://`), but only requested from an `s3://` server (`If-None-Match: *`): Garage
    /// ignores it and overwrites silently. Code that must never overwrite therefore
    /// publishes through [`publish`], which checks with `head` first.
    ///
    /// Durable when it returns `Ok`: `file://` fsyncs the object and its directory,
    /// `peer://` acknowledges after the receiver did so, `s3://` after the server's 200.
    /// An object is visible whole or not at all; a failed call leaves no partial object
    /// under `key` (a retried call may find its own earlier attempt as `AlreadyExists`).
    fn put_new(&self, key: &str, data: &[u8]) -> TargetResult<()>;

    /// Reads the whole object under `key`.
    ///
    /// A missing object is an error of kind [`TargetErrorKind::NotFound`]. An object of
    /// more than `max_len` bytes is refused with [`TargetErrorKind::Permanent`] without
    /// being read into memory past `max_len + 1` bytes; exactly `max_len` bytes is fine,
    /// and an empty object reads as empty.
    fn get(&self, key: &str, max_len: u64) -> TargetResult<Vec<u8>>;

    /// Size in bytes of the object under `key`, or `Ok(None)` when there is none (a
    /// missing object is not an error here). Reports what [`Target::get`] would read:
    /// `file://` refuses, rather than follows, a symbolic link or a non-regular file.
    fn head(&self, key: &str) -> TargetResult<Option<u64>>;

    /// Every key that starts with `prefix` (a plain string prefix, not only whole `/`
    /// parts; `""` lists everything), sorted. No match, or a prefix naming nothing, is an
    /// empty list, not an error. An `s3://` bucket that does not exist is
    /// [`TargetErrorKind::NotFound`].
    fn list(&self, prefix: &str) -> TargetResult<Vec<String>>;

    /// Removes the object under `key`. Idempotent: deleting a missing object succeeds,
    /// so a retried or repeated delete is harmless. Once it returns, `head` answers
    /// `None`, and the key may be published again.
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

/// Publishes an immutable object exactly once.
///
/// A retried PUT whose first attempt did land finds the key taken; that counts as success
/// only when the stored object is ours. `content_addressed` keys embed the content hash,
/// so an equal size suffices there; other keys (manifests) are compared byte for byte.
/// Returns `true` when the object was already present (nothing uploaded).
/// Retries come from the target (wrap it in [`Retrying`]). The one never-overwrite rule
/// that holds on every backend, including servers that ignore conditional writes.
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
