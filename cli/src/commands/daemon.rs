//! Starting the per-device daemon: `create` and `recover` re-execute this
//! binary as `snapblk daemon --spec JSON` and wait for it to report
//! `READY <id>` (or `ERROR <message>`) on its stdout.

use crate::args::DaemonArgs;
use anyhow::{anyhow, bail, Context, Result};
use snapblk_daemon::rundir::{self, RunDir};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use ublk_target::device::{bdev_path, Attach};
use ublk_target::DeviceSpec;

/// How long `create` waits for the device (engine open includes log replay).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The hidden `daemon` verb: serve until stopped.
pub fn run(a: DaemonArgs) -> Result<()> {
    // Detach from the caller's session and working directory so neither a
    // terminal hangup nor an unmount of the caller's cwd reaches us.
    // SAFETY: setsid has no preconditions; failure (already a leader) is harmless.
    unsafe {
        libc::setsid();
    }
    std::env::set_current_dir("/").context("chdir to /")?;
    let spec: DeviceSpec = serde_json::from_str(&a.spec).context("parse --spec")?;
    let attach = if a.recover {
        Attach::Recover
    } else {
        Attach::Add
    };
    let res = snapblk_daemon::daemon::run(spec, attach, |id| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "READY {id}");
        let _ = out.flush();
        silence_stdout();
    })
    .map_err(anyhow::Error::from);
    if let Err(e) = &res {
        tracing::error!(error = %e, "daemon failed");
        // One line, with the CLI's advice: the starter shows it as the error. After
        // READY stdout is /dev/null and this goes nowhere, which is fine: it is in the log.
        println!("ERROR {}", crate::failure::message(e).replace('\n', " "));
    }
    res
}

fn silence_stdout() {
    // SAFETY: open/dup2/close on fds we own; the parent stopped reading.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::dup2(fd, 1);
            libc::close(fd);
        }
    }
}

/// Serves in this process (`--foreground`), printing the device path when ready.
pub fn foreground(spec: DeviceSpec, attach: Attach) -> Result<()> {
    snapblk_daemon::daemon::run(spec, attach, |id| {
        println!("{}", bdev_path(id).display());
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}

/// Starts a daemon for `spec` and waits until its device exists; returns the id.
pub fn spawn(spec: &DeviceSpec, attach: Attach) -> Result<u32> {
    let root = rundir::root();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .with_context(|| format!("create {}", root.display()))?;
    let log_path: PathBuf = match spec.id {
        Some(id) => RunDir::new(id).log_path(),
        None => root.join(format!("create-{}.log", std::process::id())),
    };
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open daemon log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("find the snapblk executable")?;
    let spec_json = serde_json::to_string(spec).context("encode device spec")?;
    let mut cmd = Command::new(exe);
    cmd.arg("daemon").arg("--spec").arg(spec_json);
    if attach == Attach::Recover {
        cmd.arg("--recover");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("start the snapblk daemon")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("daemon stdout missing"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(r.map(|_| line));
    });
    let see_log = format!("see {}", log_path.display());
    let line = match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => bail!("reading from the daemon failed: {e}; {see_log}"),
        Err(_) => {
            // SAFETY: signals the child we started, by its pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            bail!(
                "the daemon did not bring the device up within {} s; {see_log}",
                START_TIMEOUT.as_secs()
            );
        }
    };
    if let Some(id) = line.trim().strip_prefix("READY ") {
        let id: u32 = id
            .parse()
            .map_err(|_| anyhow!("daemon reported a bad device id {id:?}; {see_log}"))?;
        let final_log = RunDir::new(id).log_path();
        if final_log != log_path {
            let _ = fs::rename(&log_path, &final_log);
        }
        return Ok(id);
    }
    if let Some(msg) = line.trim().strip_prefix("ERROR ") {
        let _ = child.wait();
        bail!("{msg}");
    }
    let status = child
        .wait()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    bail!("the daemon exited ({status}) before the device came up; {see_log}")
}
