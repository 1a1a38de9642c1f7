//! What the integration tests share: running the built binary with a clean
//! environment, asserting on its outcome, and a small volume (backing file plus
//! store) made with the real engine.

// Each test crate compiles this module and uses a different part of it.
#![allow(dead_code)]

use snapmap::{Engine, OpenOptions};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Tracking block size of the test volumes.
pub const BS: usize = 4096;

/// `len` bytes of test data that differ for every `seed` and every block (none all
/// zero): [`fixtures::block_pattern`], so a shorter run is a prefix of a longer one
/// and a failing test replays exactly.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    fixtures::block_pattern(seed.into(), 0, len)
}

/// The built binary with an environment that cannot leak the caller's settings
/// (log filter, credentials) into a test.
pub fn command(run_dir: &Path, args: &[impl AsRef<OsStr>]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snapblk"));
    c.args(args)
        .env("SNAPBLK_RUN_DIR", run_dir)
        .env_remove("RUST_LOG")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("SNAPBLK_PEER_KEY_FILE")
        .stdin(Stdio::null());
    c
}

/// Runs the binary to completion (stdout and stderr are pipes, not terminals).
pub fn snapblk(run_dir: &Path, args: &[impl AsRef<OsStr>]) -> Output {
    command(run_dir, args).output().expect("run snapblk")
}

/// Asserts success; returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}): {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts failure with exactly one line on stderr containing `needle`; returns stderr.
pub fn fails_with(o: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is not one line: {err:?}"
    );
    err
}

/// Parses stdout of a successful run as JSON.
pub fn json(o: &Output) -> serde_json::Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"))
}

/// A backing file and its store in a temporary directory.
pub struct Vol {
    /// Holds everything, removed on drop.
    pub dir: tempfile::TempDir,
    /// The backing (origin) file.
    pub backing: PathBuf,
    /// Its store.
    pub store: PathBuf,
}

/// A volume of `blocks` blocks whose first `written` blocks hold `pattern(1, ..)`;
/// the rest was never written.
pub fn volume(blocks: usize, written: usize) -> Vol {
    let dir = tempfile::tempdir().expect("temp dir");
    let backing = dir.path().join("disk.img");
    let store = dir.path().join("disk.img.snapstore");
    let opts = OpenOptions {
        size: Some((BS * blocks) as u64),
        ..OpenOptions::default()
    };
    let e = Engine::open_files(&backing, &store, &opts).expect("create the test store");
    if written > 0 {
        e.write(0, &pattern(1, BS * written))
            .expect("write the test volume");
    }
    e.close().expect("close the test store");
    std::fs::create_dir(dir.path().join("run")).expect("create the run dir");
    Vol {
        dir,
        backing,
        store,
    }
}

impl Vol {
    /// A path in the volume's directory.
    pub fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The same, as a string.
    pub fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }

    /// Copies the backing file and its store together into a new directory `name` of the
    /// volume's, as `cp disk.img disk.img.snapstore NAME/` would; returns the copies' paths.
    pub fn copy_pair(&self, name: &str) -> (PathBuf, PathBuf) {
        let to = self.p(name);
        std::fs::create_dir(&to).unwrap();
        let (b, s) = (to.join("disk.img"), to.join("disk.img.snapstore"));
        std::fs::copy(&self.backing, &b).unwrap();
        std::fs::copy(&self.store, &s).unwrap();
        (b, s)
    }

    /// The daemon state directory the binary is pointed at (always empty: no daemons).
    pub fn run_dir(&self) -> PathBuf {
        self.p("run")
    }

    /// Opens the engine on the files for `f`, then closes it cleanly.
    pub fn with_engine(&self, f: impl FnOnce(&Engine)) {
        let e = Engine::open_files(&self.backing, &self.store, &OpenOptions::default())
            .expect("open the test store");
        f(&e);
        e.close().expect("close the test store");
    }

    /// `--backing PATH --store PATH`.
    pub fn files(&self) -> Vec<String> {
        vec![
            "--backing".into(),
            self.backing.display().to_string(),
            "--store".into(),
            self.store.display().to_string(),
        ]
    }

    /// `args` as given.
    pub fn run(&self, args: &[&str]) -> Output {
        snapblk(&self.run_dir(), args)
    }

    /// `args` followed by `--backing PATH --store PATH`.
    pub fn run_offline(&self, args: &[&str]) -> Output {
        snapblk(&self.run_dir(), &self.offline_args(args))
    }

    /// `args` followed by `--backing PATH --store PATH`, as owned strings.
    pub fn offline_args(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(self.files());
        v
    }

    /// Ships one point offline to `url` and returns the `--json` report.
    pub fn ship(&self, url: &str) -> serde_json::Value {
        json(&self.run_offline(&["ship", "--to", url, "--once", "--json"]))
    }

    /// Exports snapshot `snap` to `to` and returns its bytes.
    pub fn export(&self, snap: &str, to: &str) -> Vec<u8> {
        ok(&self.run_offline(&["export", snap, "--to", to]));
        std::fs::read(to).expect("read the exported image")
    }
}

/// `snapblk ARGS` run under a pseudo-terminal by util-linux `script`, so stdin,
/// stdout and stderr are all the terminal; returns (exit code, everything the
/// terminal showed). None when `script` is not installed.
pub fn under_pty(run_dir: &Path, args: &[String], env: &[(&str, &str)]) -> Option<(i32, String)> {
    let mut line = shell_quote(env!("CARGO_BIN_EXE_snapblk"));
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    sh_under_pty(run_dir, &line, env)
}

/// The sh command `line` under a pseudo-terminal (see [`under_pty`]).
pub fn sh_under_pty(run_dir: &Path, line: &str, env: &[(&str, &str)]) -> Option<(i32, String)> {
    let which = Command::new("sh")
        .args(["-c", "command -v script"])
        .output()
        .ok()?;
    if !which.status.success() {
        return None;
    }
    // A size, so the bar has a width: the pty starts at 0x0 when stdin is no terminal.
    let line = format!("stty cols 100 rows 30 2>/dev/null; {line}");
    // Only what the binary needs: nothing from the caller's environment (log filter,
    // credentials) may change what the terminal shows.
    let mut c = Command::new("script");
    c.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("SNAPBLK_RUN_DIR", run_dir)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("run script");
    Some((
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    ))
}

/// `s` in single quotes for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
