//! `s3://bucket/prefix` target (rust-s3, path-style addressing).
//!
//! Endpoint, region and keys come from [`Credentials`] (environment or config file).
//! The signing region must equal the server's region (Garage: `s3_region`).
//! `If-None-Match: *` is sent on every PUT for servers that honour it; Garage ignores it,
//! so never-overwrite rests on unique keys plus the HEAD check in [`super::publish`].

use super::{Target, TargetError, TargetErrorKind, TargetResult};
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use s3::error::S3Error;
use s3::{Bucket, Region};
use std::time::Duration;

/// Timeout of one HTTP request (connect + transfer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A bucket (and key prefix) on an S3-compatible server.
pub struct S3Target {
    bucket: Box<Bucket>,
    prefix: String,
    id: String,
    /// `AWS_ENDPOINT_URL`, named in errors (it holds no secret).
    endpoint: String,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl S3Target {
    /// Connects lazily to `bucket` under `prefix` (no request is made here).
    pub fn new(bucket: &str, prefix: &str, creds: &Credentials) -> Result<S3Target> {
        let endpoint = creds.endpoint.clone().ok_or_else(|| {
            Error::Credentials("no S3 endpoint: set AWS_ENDPOINT_URL (e.g. http://127.0.0.1:3900) in the environment or config file".into())
        })?;
        let region = creds
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_string());
        // Only http(s) can work; anything else would fail every request the same way.
        let scheme_ok = ["http://", "https://"].iter().any(|p| {
            endpoint
                .strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        });
        if !scheme_ok {
            return Err(Error::Credentials(format!(
                "AWS_ENDPOINT_URL={endpoint} is not an http:// or https:// URL with a host; write e.g. http://127.0.0.1:3900 or https://s3.example.net"
            )));
        }
        let (ak, sk) = match (&creds.access_key, &creds.secret_key) {
            (Some(ak), Some(sk)) => (ak, sk),
            (ak, sk) => {
                let missing: Vec<&str> = [
                    ak.is_none().then_some("AWS_ACCESS_KEY_ID"),
                    sk.is_none().then_some("AWS_SECRET_ACCESS_KEY"),
                ]
                .into_iter()
                .flatten()
                .collect();
                return Err(Error::Credentials(format!(
                    "no {} for the S3 endpoint {endpoint}: set it in the environment or a credentials file",
                    missing.join(" and ")
                )));
            }
        };
        // The shipper retries every request itself (`Retrying`), with its own bounds and
        // quieter logging; rust-s3's own retry would multiply the attempts, add seconds
        // of sleep to each, and warn on every one.
        s3::set_retries(0);
        let c = s3::creds::Credentials::new(Some(ak), Some(sk), None, None, None).map_err(|e| {
            Error::Credentials(format!("S3 credentials rejected by the client: {e}"))
        })?;
        let bucket = Bucket::new(
            bucket,
            Region::Custom {
                region,
                endpoint: endpoint.clone(),
            },
            c,
        )
        .map_err(|e| Error::Url {
            url: format!("s3://{bucket}/{prefix}"),
            detail: format!("client setup failed: {e}"),
        })?
        .with_path_style()
        .with_request_timeout(REQUEST_TIMEOUT)
        .map_err(|e| Error::Invalid(format!("S3 client timeout setup failed: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", "start S3 client runtime", e))?;
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let host = endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&endpoint)
            .trim_end_matches('/');
        let id = format!(
            "s3://{host}/{}/{}",
            bucket.name,
            prefix.trim_end_matches('/')
        );
        Ok(S3Target {
            bucket,
            prefix,
            id,
            endpoint,
            rt,
        })
    }

    fn err(&self, key: &str, op: &str, e: S3Error) -> TargetError {
        let object = format!("{}/{key}", self.id.trim_end_matches('/'));
        let (kind, detail) = match &e {
            S3Error::HttpFailWithBody(code, body) => {
                let body: String = body.chars().take(300).collect();
                match *code {
                    401 | 403 if body.contains("InvalidAccessKeyId") => (
                        TargetErrorKind::Auth,
                        format!("{op}: HTTP {code}: {} does not know this access key id; check AWS_ACCESS_KEY_ID ({body})", self.endpoint),
                    ),
                    401 | 403 if body.contains("SignatureDoesNotMatch") => (
                        TargetErrorKind::Auth,
                        format!("{op}: HTTP {code}: the request signature was rejected; check AWS_SECRET_ACCESS_KEY (and AWS_REGION) ({body})"),
                    ),
                    401 | 403 => (
                        TargetErrorKind::Auth,
                        format!("{op}: HTTP {code}: access denied; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the key's permissions on the bucket ({body})"),
                    ),
                    400 if body.contains("AuthorizationHeaderMalformed") || body.contains("region") => (
                        TargetErrorKind::Auth,
                        format!("{op}: HTTP 400: signature region rejected; set AWS_REGION to the server's region (Garage: s3_region) ({body})"),
                    ),
                    404 if body.contains("NoSuchBucket") => (
                        TargetErrorKind::NotFound,
                        format!("{op}: bucket {} does not exist on {}; check the bucket in the URL (s3://BUCKET/PREFIX) and AWS_ENDPOINT_URL", self.bucket.name, self.endpoint),
                    ),
                    404 => (TargetErrorKind::NotFound, format!("{op}: not found")),
                    412 => (TargetErrorKind::AlreadyExists, format!("{op}: object already exists")),
                    408 | 429 | 500..=599 => (TargetErrorKind::Transient, format!("{op}: HTTP {code} from {} ({body})", self.endpoint)),
                    _ => (TargetErrorKind::Permanent, format!("{op}: HTTP {code} ({body})")),
                }
            }
            // A request that could not even be built (bad URL) fails the same way forever.
            S3Error::Reqwest(r) if r.is_builder() => (
                TargetErrorKind::Permanent,
                format!("{op}: cannot build a request for the endpoint {} ({e}); check AWS_ENDPOINT_URL (e.g. http://127.0.0.1:3900)", self.endpoint),
            ),
            S3Error::Reqwest(r) => (
                TargetErrorKind::Transient,
                format!(
                    "{op}: cannot reach the S3 endpoint {} ({}); check AWS_ENDPOINT_URL and that the server is up",
                    self.endpoint,
                    root_cause(r)
                ),
            ),
            S3Error::Io(_) | S3Error::HttpFail => (
                TargetErrorKind::Transient,
                format!("{op}: {e}; check AWS_ENDPOINT_URL ({}) and that the server is up", self.endpoint),
            ),
            _ => (TargetErrorKind::Permanent, format!("{op}: {e}")),
        };
        TargetError::new(kind, object, detail)
    }
}

/// The innermost error of `e`'s chain ("Connection refused (os error 111)"): the part a
/// user can act on, without reqwest's wrapping.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Collects a download, failing (and remembering why) once it would exceed `limit` bytes.
/// The failed write aborts the transfer: the rest of the body is never read.
struct Bounded {
    buf: Vec<u8>,
    limit: u64,
    over: bool,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() as u64 + data.len() as u64 > this.limit {
            this.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other("object too large")));
        }
        this.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Target for S3Target {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn put_new(&self, key: &str, data: &[u8]) -> TargetResult<()> {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::IF_NONE_MATCH,
            http::HeaderValue::from_static("*"),
        );
        let path = format!("{}{key}", self.prefix);
        self.rt
            .block_on(self.bucket.put_object_with_headers(&path, data, Some(h)))
            .map(|_| ())
            .map_err(|e| self.err(key, "PUT", e))
    }

    fn get(&self, key: &str, max_len: u64) -> TargetResult<Vec<u8>> {
        let path = format!("{}{key}", self.prefix);
        // Ask for at most max_len + 1 bytes, and stop reading there even if the server
        // ignores the range: an oversized object is refused without being downloaded.
        let mut sink = Bounded {
            buf: Vec::new(),
            limit: max_len,
            over: false,
        };
        let r = self.rt.block_on(self.bucket.get_object_range_to_writer(
            &path,
            0,
            Some(max_len),
            &mut sink,
        ));
        if sink.over {
            return Err(TargetError::new(
                TargetErrorKind::Permanent,
                format!("{}/{key}", self.id),
                format!("object is more than the {max_len} bytes allowed for it; it is not a valid snapblk object: remove it, or prune the point it belongs to"),
            ));
        }
        match r {
            Ok(_) => Ok(sink.buf),
            // A range cannot be satisfied only by an empty object.
            Err(S3Error::HttpFailWithBody(416, _)) => Ok(Vec::new()),
            Err(e) => Err(self.err(key, "GET", e)),
        }
    }

    fn head(&self, key: &str) -> TargetResult<Option<u64>> {
        let path = format!("{}{key}", self.prefix);
        match self.rt.block_on(self.bucket.head_object(&path)) {
            Ok((h, _)) => Ok(Some(h.content_length.unwrap_or(0).max(0) as u64)),
            Err(e) => match self.err(key, "HEAD", e) {
                t if t.kind == TargetErrorKind::NotFound => Ok(None),
                t => Err(t),
            },
        }
    }

    fn list(&self, prefix: &str) -> TargetResult<Vec<String>> {
        let full = format!("{}{prefix}", self.prefix);
        let pages = self
            .rt
            .block_on(self.bucket.list(full, None))
            .map_err(|e| self.err(prefix, "LIST", e))?;
        let mut keys: Vec<String> = pages
            .into_iter()
            .flat_map(|p| p.contents)
            .filter_map(|o| o.key.strip_prefix(&self.prefix).map(str::to_string))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> TargetResult<()> {
        let path = format!("{}{key}", self.prefix);
        match self.rt.block_on(self.bucket.delete_object(&path)) {
            Ok(_) => Ok(()),
            Err(e) => match self.err(key, "DELETE", e) {
                t if t.kind == TargetErrorKind::NotFound => Ok(()),
                t => Err(t),
            },
        }
    }
}
