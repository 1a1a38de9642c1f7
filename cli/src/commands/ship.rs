//! ship, receive, remote: the `shipper` crate behind the command line.
//!
//! `ship -n ID` runs in the device's daemon (it owns the engine); the CLI only forwards
//! the target's settings and secrets over the root-only control socket. `ship --backing`
//! opens the engine here. `remote` and `receive` need no daemon at all.

use crate::args::{CredArgs, ReceiveArgs, RemoteCommand, RemoteFrom, ShipArgs};
use crate::output;
use crate::progress::{Progress, Unit};
use crate::session::{absolute, expect_answer, unexpected, Access, Session};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use shipper::ship_state_path;
use shipper::{Credentials, PointSel, ShipOptions, TargetUrl};
use snapblk_daemon::control::answer::Shipped;
use snapblk_daemon::control::Answer;
use snapblk_daemon::control::{Request, ShipAction};
use std::path::Path;
use ublk_target::DeviceSpec;

/// Settings and secrets: the environment first, then `--credentials FILE`, then the key file.
fn credentials(c: &CredArgs) -> Result<Credentials> {
    let mut creds = Credentials::from_env().context(
        "read target settings from the environment (AWS_* / SNAPBLK_PEER_KEY_FILE): fix or unset the variable named",
    )?;
    if let Some(f) = &c.credentials {
        let file = Credentials::from_file(f)
            .with_context(|| format!("read credentials file {}", f.display()))?;
        creds = creds.or(file);
    }
    if let Some(k) = &c.key_file {
        creds = creds
            .with_peer_key_file(k)
            .with_context(|| format!("read key file {}", k.display()))?;
    }
    Ok(creds)
}

/// Checks `url` before anything else happens and returns its canonical spelling, the key of
/// the target's ship state and schedule. A `file://` URL must be absolute (the parser
/// refuses `file://relative`), so the daemon (another process, another working directory)
/// and later commands name the same place.
fn normalize_url(url: &str) -> Result<String> {
    Ok(TargetUrl::parse(url)
        .with_context(|| format!("target URL {url}"))?
        .to_string())
}

fn print_point(v: &Shipped) {
    let p = &v.point;
    let (url, secs) = (&v.url, p.elapsed.as_secs_f64());
    let kind = if p.full { "full" } else { "incremental" };
    if p.committed {
        println!(
            "committed point {} to {url}: {kind}, {} blocks ({} zero), {} segments, {} uploaded in {secs:.1} s",
            p.seq,
            p.data_blocks,
            p.zero_blocks,
            p.segments,
            output::bytes(p.bytes_uploaded),
        );
    } else {
        println!(
            "nothing changed since point {} on {url}, which already holds this image; no new point committed",
            p.seq
        );
    }
}

/// `ship`.
pub fn ship(a: ShipArgs) -> Result<()> {
    let url = normalize_url(&a.to)?;
    if let Some(backing) = &a.target.backing {
        if !a.once {
            bail!("offline shipping (--backing) ships one point: add --once, or create the device and run `snapblk ship -n ID --to {url} --interval DUR`");
        }
        return ship_offline(backing, a.target.store.as_deref(), &url, &a);
    }
    let s = Session::open(&a.target, Access::ReadWrite)?;
    let id = s.id().unwrap_or(0);
    let control = |action| -> Result<Answer> {
        s.request(
            Request::ShipControl {
                url: url.clone(),
                action,
            },
            &mut |_, _| {},
        )
    };
    let v = if a.pause {
        control(ShipAction::Pause)?
    } else if a.stop {
        control(ShipAction::Stop)?
    } else if a.resume && a.interval.is_none() {
        control(ShipAction::Resume)?
    } else if a.once {
        tracing::info!(id, %url, "ship: asking the daemon to ship one point");
        let bar = Progress::new("ship", Unit::Blocks);
        let res = s.request(
            Request::ShipOnce {
                url: url.clone(),
                secrets: credentials(&a.creds)?,
            },
            &mut |d, t| bar.update(d, t),
        );
        bar.finish();
        let v = expect_answer!(
            res.with_context(|| format!("ship device {id} to {url}"))?,
            Shipped
        );
        if a.json {
            output::json(&v);
        } else {
            print_point(&v);
        }
        return Ok(());
    } else {
        let interval = a.interval.unwrap_or(DEFAULT_INTERVAL);
        s.request(
            Request::ShipStart {
                url: url.clone(),
                interval_ms: interval.as_millis().min(u128::from(u64::MAX)) as u64,
                secrets: credentials(&a.creds)?,
            },
            &mut |_, _| {},
        )
        .with_context(|| format!("start shipping device {id} to {url}"))?
    };
    match v {
        Answer::ShipControlled(c) if a.json => output::json(&c),
        Answer::ShipStarted(st) if a.json => output::json(&st),
        Answer::ShipControlled(c) => {
            let action = match c.action {
                ShipAction::Pause => "pause",
                ShipAction::Resume => "resume",
                ShipAction::Stop => "stop",
            };
            println!("{action}: {}", output::ship_job(&c.url, &c.stats));
        }
        Answer::ShipStarted(st) => println!(
            "shipping device {id} to {url} every {:.1} s; see `snapblk status -n {id}`, stop with `snapblk ship -n {id} --to {url} --stop`",
            st.interval_secs
        ),
        other => return Err(unexpected(&other, "ship_started or ship_controlled")),
    }
    Ok(())
}

/// Interval of `ship` without `--once` or `--interval`.
const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

fn ship_offline(backing: &Path, store: Option<&Path>, url: &str, a: &ShipArgs) -> Result<()> {
    let store_path = match store {
        Some(s) => absolute(s)?,
        None => DeviceSpec::default_store(&absolute(backing)?),
    };
    let creds = credentials(&a.creds)?;
    tracing::debug!(%url, "ship: opening the target");
    let target =
        shipper::target_from_url(url, &creds).with_context(|| format!("open ship target {url}"))?;
    // One read-write open; with --adopt it also binds a moved store to `backing`.
    let Session::Offline { engine, .. } =
        Session::offline_adopting(backing, store, Access::ReadWrite, a.target.adopt)?
    else {
        bail!("internal: offline session expected");
    };
    let mut opts = ShipOptions::new(ship_state_path(&store_path, url));
    // `ship --help`: "committed ... (or nothing changed)", exit 0 either way. When nothing
    // changed since the latest committed point, that point already holds this exact
    // image, so it is committed: a new empty point would only lengthen the chain.
    opts.skip_unchanged = true;
    tracing::info!(%url, state = %opts.state_path.display(), "ship: freezing a ship point and sending the changed blocks");
    let bar = std::sync::Arc::new(Progress::new("ship", Unit::Blocks));
    let b = bar.clone();
    opts.progress = Some(std::sync::Arc::new(move |d, t| b.update(d, t)));
    let res = shipper::ship_once(engine.as_ref(), target.as_ref(), &opts);
    bar.finish();
    // Close (checkpoint) even when the ship failed: the ship point stays for a resume.
    let closed = engine
        .close()
        .context("close the store (checkpoint) after shipping");
    let info = res.with_context(|| format!("ship {} to {url}", backing.display()))?;
    closed?;
    tracing::info!(%url, seq = info.seq, committed = info.committed, "ship: done");
    let v = Shipped {
        point: info,
        url: url.to_string(),
        state_file: opts.state_path.clone(),
    };
    if a.json {
        output::json(&v);
    } else {
        print_point(&v);
    }
    Ok(())
}

/// `receive`.
pub fn receive(a: ReceiveArgs) -> Result<()> {
    let key = shipper::credentials::read_key_file(&a.key_file)
        .with_context(|| format!("read key file {}", a.key_file.display()))?;
    if let Ok(m) = std::fs::metadata(&a.dir) {
        if !m.is_dir() {
            bail!(
                "receive directory {} exists and is not a directory: pass a directory for --dir (it is created if missing)",
                a.dir.display()
            );
        }
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("create receive directory {}", a.dir.display()))?;
    // Block SIGINT/SIGTERM before any thread starts, then take them on one thread.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain sigset manipulation on a local, then this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let r = shipper::Receiver::bind(&a.listen, &a.dir, key)
        .with_context(|| format!("listen on {} (is the address free?)", a.listen))?;
    let addr = r.local_addr().context("read the listening address")?;
    let stop = r.stop_handle().context("prepare the stop handle")?;
    std::thread::Builder::new()
        .name("snapblk-signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on the set blocked above.
            unsafe { libc::sigwait(&set, &mut sig) };
            eprintln!("snapblk: signal {sig}, stopping the receiver");
            stop.stop();
        })
        .context("start the signal thread")?;
    println!("receiving on {addr} into {}", a.dir.display());
    r.run()
        .with_context(|| format!("receiver on {addr} into {}", a.dir.display()))?;
    println!("receiver stopped");
    Ok(())
}

/// Opens the remote of a `remote` verb: these only read what was shipped (prune deletes
/// what it replaced), so nothing is created and a missing `file://` directory is an error.
fn open_remote(f: &RemoteFrom) -> Result<Box<dyn shipper::Target>> {
    let url = normalize_url(&f.from)?;
    tracing::debug!(%url, "opening the remote");
    shipper::existing_target_from_url(&url, &credentials(&f.creds)?)
        .with_context(|| format!("open remote {url}"))
}

/// `remote ...`.
pub fn remote(cmd: RemoteCommand) -> Result<()> {
    match cmd {
        RemoteCommand::List(f) => {
            let t = open_remote(&f)?;
            let points = shipper::remote_list(t.as_ref())
                .with_context(|| format!("list points on {}", f.from))?;
            if f.json {
                output::json(&serde_json::to_value(&points).context("encode point list")?);
            } else if points.is_empty() {
                println!(
                    "no committed points on {}: nothing has been shipped there yet",
                    f.from
                );
            } else {
                println!(
                    "{:<6} {:<5} {:<20} {:>12} {:>10} {:>9} {:>12}",
                    "SEQ", "KIND", "CREATED (UTC)", "VOLUME", "BLOCKS", "SEGMENTS", "STORED"
                );
                for p in &points {
                    println!(
                        "{:<6} {:<5} {:<20} {:>12} {:>10} {:>9} {:>12}",
                        p.seq,
                        if p.full { "full" } else { "incr" },
                        output::utc(p.created_unix),
                        output::bytes(p.volume_size),
                        p.data_blocks + p.zero_blocks,
                        p.segments,
                        output::bytes(p.stored_bytes)
                    );
                }
            }
        }
        RemoteCommand::Verify(f) => {
            let t = open_remote(&f)?;
            let r =
                shipper::remote_verify(t.as_ref()).with_context(|| format!("verify {}", f.from))?;
            if f.json {
                let mut v = serde_json::to_value(&r).context("encode verify report")?;
                v["ok"] = json!(r.ok());
                output::json(&v);
            } else {
                for p in &r.points {
                    match &p.problem {
                        None => println!("point {}: ok", p.seq),
                        Some(e) => println!("point {}: NOT RESTORABLE: {e}", p.seq),
                    }
                }
                for p in &r.problems {
                    println!("problem: {p}");
                }
                println!(
                    "checked {} points, {} segments, {}",
                    r.points.len(),
                    r.segments_checked,
                    output::bytes(r.bytes_checked)
                );
            }
            if r.points.is_empty() && r.problems.is_empty() {
                bail!(
                    "nothing has been shipped to {}: it holds no committed points to verify; check the URL, or ship first with `snapblk ship -n ID --to {} --once`",
                    f.from,
                    f.from
                );
            }
            if !r.ok() {
                let bad = r.points.iter().filter(|p| p.problem.is_some()).count();
                bail!(
                    "{} is damaged: {bad} point(s) not restorable, {} other problem(s); restore from an intact point or re-ship to a fresh target",
                    f.from,
                    r.problems.len()
                );
            }
        }
        RemoteCommand::Restore { from, point, to } => {
            let sel = match point.as_str() {
                "latest" => PointSel::Latest,
                n => PointSel::Seq(n.parse().map_err(|_| {
                    anyhow!(
                        "--point {n:?}: use a point number from `snapblk remote list` or `latest`"
                    )
                })?),
            };
            let to = absolute(&to)?;
            let is_dev = std::fs::metadata(&to)
                .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
                .unwrap_or(false);
            if to.exists() && !is_dev {
                bail!(
                    "{} already exists: remove it or restore to another path",
                    to.display()
                );
            }
            if is_dev {
                // The daemon's exclusive claim already makes the open fail; this names the
                // device and the way out instead of "in use".
                if let Some((id, pid)) = crate::session::serving_daemon(&to, &to) {
                    bail!(
                        "{} is the backing or store of running device {id} (/dev/ublkb{id}, daemon pid {pid}): restoring over it would change the volume and its snapshots underneath; `snapblk delete -n {id}` first, or restore to another device",
                        to.display()
                    );
                }
            }
            let t = open_remote(&from)?;
            tracing::info!(from = %from.from, ?sel, to = %to.display(), "remote restore: rebuilding the image");
            let bar = Progress::new(&format!("restore point {point}"), Unit::Segments);
            let res = shipper::remote_restore(t.as_ref(), sel, &to, &|d, n| bar.update(d, n));
            bar.finish();
            let r = res.with_context(|| {
                format!("restore point {point} of {} to {}", from.from, to.display())
            })?;
            tracing::info!(
                seq = r.seq,
                blocks = r.blocks_written,
                segments = r.segments_read,
                "remote restore: done"
            );
            if from.json {
                output::json(&serde_json::to_value(&r).context("encode restore report")?);
            } else {
                println!(
                    "restored point {} to {}: {} ({} blocks with data, {} segments, {} downloaded) in {:.1} s",
                    r.seq,
                    to.display(),
                    output::bytes(r.volume_size),
                    r.blocks_written,
                    r.segments_read,
                    output::bytes(r.bytes_downloaded),
                    r.elapsed.as_secs_f64()
                );
            }
        }
        RemoteCommand::Prune { from, keep } => {
            let t = open_remote(&from)?;
            let r = shipper::remote_prune(t.as_ref(), keep, Some(3))
                .with_context(|| format!("prune {} to {keep} points", from.from))?;
            if from.json {
                output::json(&serde_json::to_value(&r).context("encode prune report")?);
            } else {
                println!(
                    "kept points {:?}, removed {:?}{}, {} objects deleted",
                    r.kept,
                    r.removed,
                    r.rebased
                        .map(|s| format!(", point {s} rewritten as a full base"))
                        .unwrap_or_default(),
                    r.deleted_objects
                );
            }
        }
    }
    Ok(())
}
