//! Unreachable or misconfigured endpoints (loopback only): permanent errors fail at once,
//! transient ones are retried quietly (at most one warning line), and the final error
//! names the endpoint and what to check.

mod common;

use common::command;
use std::net::TcpListener;
use std::process::Output;
use std::time::{Duration, Instant};

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(run_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut c = command(run_dir, args);
    for (k, v) in env {
        c.env(k, v);
    }
    let t = Instant::now();
    let o = c.output().unwrap();
    (o, t.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const KEYS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "GK000000000000000000000000"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "0000000000000000000000000000000000000000000000000000000000000000",
    ),
    ("AWS_REGION", "garage"),
];

#[test]
fn an_endpoint_that_can_never_work_fails_at_once_with_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let mut env = KEYS.to_vec();
    env.push(("AWS_ENDPOINT_URL", "ftp://127.0.0.1:1"));
    let (o, took) = run(d.path(), &["remote", "list", "--from", "s3://bkt/p"], &env);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(3), "took {took:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("AWS_ENDPOINT_URL=ftp://127.0.0.1:1") && err.contains("http://"),
        "{err}"
    );
}

#[test]
fn only_the_secret_missing_names_only_the_secret() {
    let d = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ("AWS_ACCESS_KEY_ID", "GK000000000000000000000000"),
    ];
    let (o, _) = run(d.path(), &["remote", "list", "--from", "s3://bkt/p"], &env);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("no AWS_SECRET_ACCESS_KEY for") && !err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
}

#[test]
fn an_unreachable_endpoint_warns_once_and_names_it() {
    let d = tempfile::tempdir().unwrap();
    let s3_port = closed_port().to_string();
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let mut env = KEYS.to_vec();
    env.push(("AWS_ENDPOINT_URL", &endpoint));
    let key = d.path().join("peer.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let key = key.display().to_string();
    let peer = format!("peer://127.0.0.1:{}", closed_port());
    let dir = d.path().to_path_buf();
    // Both run at once: each retries for its bounded window.
    let s3 = {
        let dir = dir.clone();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        std::thread::spawn(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run(&dir, &["remote", "list", "--from", "s3://bkt/p"], &env)
        })
    };
    let (po, ptook) = run(
        &dir,
        &["remote", "verify", "--from", &peer, "--key-file", &key],
        &[],
    );
    let (so, stook) = s3.join().unwrap();
    for (o, took, name, check) in [
        (
            &so,
            stook,
            endpoint.as_str(),
            "check AWS_ENDPOINT_URL and that the server is up",
        ),
        (&po, ptook, peer.as_str(), "snapblk receive"),
    ] {
        let err = stderr(o);
        assert!(!o.status.success(), "{err}");
        let lines: Vec<&str> = err.trim_end().lines().collect();
        assert!(lines.len() <= 2, "more than one warning: {err}");
        let last = lines.last().copied().unwrap_or("");
        let name = name
            .trim_start_matches("http://")
            .trim_start_matches("peer://");
        assert!(
            last.contains(name) && last.contains(check) && last.contains("gave up after"),
            "{err}"
        );
        assert!(!err.contains("remote verify"), "useless advice: {err}");
        assert!(took < Duration::from_secs(70), "{took:?}");
    }
}
