//! snapshot create/list/delete, restore, export, diff, check: each works on
//! a running device (`-n ID`) or offline on the files.

use crate::args::{CheckArgs, DiffArgs, ExportArgs, RestoreArgs, SnapshotCommand};
use crate::failure::Exit;
use crate::output;
use crate::progress::{Progress, Unit};
use crate::session::expect_answer;
use crate::session::{absolute, Access, Session};
use anyhow::{bail, Result};
use snapblk_daemon::control::{Answer, Request};
use ublk_target::DeviceSpec;

fn no_progress() -> impl FnMut(u64, u64) + Send {
    |_, _| {}
}

/// Runs one quick request on a device or store and prints its answer: the JSON with `--json`,
/// else what `say` makes of it.
fn quick(
    target: &crate::args::Target,
    access: Access,
    req: Request,
    json: bool,
    say: impl FnOnce(&Answer),
) -> Result<()> {
    let s = Session::open(target, access)?;
    let v = s.request(req, &mut no_progress())?;
    s.close()?;
    if json {
        print_answer(&v);
    } else {
        say(&v);
    }
    Ok(())
}

/// Prints an answer's value as the verb's `--json` output.
fn print_answer(a: &Answer) {
    match a {
        Answer::Snapshot(x) => output::json(x),
        Answer::Deleted(x) => output::json(x),
        other => output::json(other),
    }
}

/// `snapshot ...`.
pub fn snapshot(cmd: SnapshotCommand) -> Result<()> {
    match cmd {
        SnapshotCommand::Create { name, target, json } => quick(
            &target,
            Access::ReadWrite,
            Request::SnapshotCreate { name: name.clone() },
            json,
            |v| {
                let id = match v {
                    Answer::Snapshot(info) => info.id,
                    _ => 0,
                };
                println!("created snapshot {name} (id {id})")
            },
        ),
        SnapshotCommand::List { target, json } => {
            let s = Session::open(&target, Access::ReadOnly)?;
            let list = expect_answer!(
                s.request(Request::SnapshotList, &mut no_progress())?,
                Snapshots
            );
            // The table shows user snapshots only; internal ship points also hold store
            // space, so the text says so (the JSON stays the documented array).
            let status = if json { None } else { Some(s.status()?) };
            s.close()?;
            match status {
                None => output::json(&list),
                Some(st) => {
                    output::snapshots(&list);
                    output::ship_points_footer(&st);
                }
            }
            Ok(())
        }
        SnapshotCommand::Delete { name, target, json } => quick(
            &target,
            Access::ReadWrite,
            Request::SnapshotDelete { name: name.clone() },
            json,
            |_| println!("deleted snapshot {name}"),
        ),
        SnapshotCommand::Attach {
            name,
            id,
            as_id,
            json,
        } => {
            let s = Session::online(id)?;
            let a = expect_answer!(
                s.request(
                    Request::SnapshotAttach {
                        name: name.clone(),
                        as_id
                    },
                    &mut no_progress()
                )?,
                Attached
            );
            if json {
                output::json(&a);
            } else {
                println!("{}", a.device.display());
            }
            Ok(())
        }
        SnapshotCommand::Detach { id, json } => detach(id, json),
    }
}

/// `snapshot detach -n M`, and `delete -n M` of an attachment.
pub fn detach(id: u32, json: bool) -> Result<()> {
    use snapblk_daemon::rundir::RunDir;
    use ublk_target::device;
    device::check_root("snapblk snapshot detach")?;
    let rd = RunDir::new(id);
    let Some(a) = rd.read_attachment() else {
        bail!(
            "device {id} is not an attached snapshot: `snapblk list` shows attachments, and `snapblk delete -n {id}` stops a volume"
        );
    };
    // Here, with full root: the daemon cannot see the host's mounts (see busy.rs).
    snapblk_daemon::busy::check_users(&format!("ublkb{id}"), "detach")?;
    let volume = RunDir::new(a.volume);
    let gone = if volume.live_pid().is_some() {
        let s = Session::online(a.volume)?;
        expect_answer!(
            s.request(Request::SnapshotDetach { id }, &mut no_progress())?,
            Detached
        )
    } else {
        // The volume's daemon died: the attachment's device is an orphan.
        if device::kernel_has_device(id) {
            device::check_kernel()?;
            device::delete_orphan(id)?;
        }
        rd.remove()?;
        a
    };
    if json {
        output::json(&gone);
    } else {
        println!(
            "detached {} (snapshot {} of device {}; the snapshot stays)",
            gone.device.display(),
            gone.snapshot,
            gone.volume
        );
    }
    Ok(())
}

/// `restore`.
pub fn restore(a: RestoreArgs) -> Result<()> {
    let s = Session::open(&a.target, Access::ReadWrite)?;
    if let Some(id) = s.id() {
        // The daemon cannot see other processes' open files (it dropped ptrace
        // access); this process can, so it refuses a busy device first.
        snapblk_daemon::busy::check_users(&format!("ublkb{id}"), "restore")?;
    }
    tracing::info!(snapshot = %a.name, "restore: writing the snapshot's blocks back");
    let bar = Progress::new(&format!("restore {}", a.name), Unit::Blocks);
    let res = s.request(
        Request::Restore {
            name: a.name.clone(),
        },
        &mut |d, t| bar.update(d, t),
    );
    bar.finish();
    let id = s.id();
    // A failed restore usually leaves the close failing for the same reason (a full
    // store cannot take the checkpoint either): report the restore's own error.
    let closed = s.close();
    let v = expect_answer!(res?, Restored);
    closed?;
    tracing::info!(snapshot = %a.name, report = ?v.report, "restore: done");
    if a.json {
        output::json(&v);
        return Ok(());
    }
    let r = &v.report;
    println!(
        "restored {}: {} blocks considered, {} written, {} already equal ({:.1} s)",
        a.name, r.blocks, r.written, r.skipped, v.elapsed_secs
    );
    {
        let pre = r.pre_restore.as_str();
        let how = match (id, &a.target.backing) {
            (Some(id), _) => format!("-n {id}"),
            (None, Some(backing)) => {
                let backing = absolute(backing)?;
                let store = match &a.target.store {
                    Some(st) => absolute(st)?,
                    None => DeviceSpec::default_store(&backing),
                };
                output::target_args(
                    None,
                    &backing.display().to_string(),
                    &store.display().to_string(),
                )
            }
            (None, None) => "with the same --backing/--store".into(),
        };
        println!(
            "undo with: snapblk restore {} {how}",
            output::shell_quote(pre)
        );
    }
    Ok(())
}

/// `export`.
pub fn export(a: ExportArgs) -> Result<()> {
    let to = absolute(&a.to)?;
    // The engine checks again, atomically, when the image gets its name; this only saves
    // opening the store for nothing.
    if to.is_dir() {
        bail!(
            "{} is a directory: give the path of a new image file, e.g. {}",
            to.display(),
            to.join(format!("{}.img", a.name)).display()
        );
    }
    if to.symlink_metadata().is_ok() {
        bail!(
            "{} already exists: exports never replace a file; choose a new path",
            to.display()
        );
    }
    let s = Session::open(&a.target, Access::ReadOnly)?;
    if s.id().is_some() {
        // The daemon writes the image at `to` as seen from this process, through
        // /proc/<pid>/root; the kernel allows that only if we hold nothing it lacks.
        snapblk_daemon::privilege::limit_to_daemon()?;
    }
    tracing::info!(snapshot = %a.name, to = %to.display(), "export: writing the snapshot image");
    let bar = Progress::new(&format!("export {}", a.name), Unit::Bytes);
    let res = s.request(
        Request::Export {
            name: a.name.clone(),
            to: to.clone(),
        },
        &mut |d, t| bar.update(d, t),
    );
    bar.finish();
    let closed = s.close();
    let v = expect_answer!(res?, Exported);
    closed?;
    tracing::info!(snapshot = %a.name, to = %to.display(), "export: done");
    if a.json {
        output::json(&v);
    } else {
        println!("exported snapshot {} to {}", a.name, to.display());
    }
    Ok(())
}

/// `diff`.
pub fn diff(a: DiffArgs) -> Result<()> {
    let s = Session::open(&a.target, Access::ReadOnly)?;
    let v = expect_answer!(
        s.request(
            Request::Diff {
                from: a.from,
                to: a.to,
            },
            &mut no_progress(),
        )?,
        Diff
    );
    s.close()?;
    if a.json {
        output::json(&v);
    } else {
        output::diff(&v);
    }
    Ok(())
}

/// Exit status of `check` for a store that is consistent only thanks to damage worked
/// around when it was opened (a superblock copy or checkpoint that failed to verify):
/// the data is intact but a redundant copy is not, so neither 0 (healthy) nor 1 (broken).
pub const CHECK_REPAIRABLE: u8 = 3;

/// `check`.
pub fn check(a: CheckArgs) -> Result<()> {
    let access = if a.repair {
        // A read-write open rewrites what it worked around (the superblock write of
        // every read-write open lands on the damaged copy).
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let s = Session::open(&a.target, access)?;
    // Still damaged on disk only when the store was opened read-only; a daemon (online)
    // and --repair opened it read-write, which rewrote the copy.
    let read_only = s.opened_read_only();
    let mut v = expect_answer!(s.request(Request::Check, &mut no_progress())?, Check);
    s.close()?;
    let problems = v.report.problems.clone();
    let repaired = v.repaired.clone();
    let pending = !repaired.is_empty() && read_only;
    if a.json {
        v.repair_pending = pending;
        output::json(&v);
    } else {
        println!(
            "checked {} snapshots, {} preserved blocks, {} unreferenced slots",
            v.report.snapshots, v.report.preserved_blocks, v.report.unreferenced_slots
        );
        for p in &problems {
            println!("problem: {p}");
        }
        for r in &repaired {
            if pending {
                println!("warning: {r} (worked around; still damaged on disk)");
            } else {
                println!("repaired: {r}");
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "store check found {} problem(s): restore the store from a copy or a remote",
            problems.len()
        );
    }
    if pending {
        let how = match &a.target.backing {
            Some(b) => {
                let b = absolute(b)?;
                let st = match &a.target.store {
                    Some(st) => absolute(st)?,
                    None => DeviceSpec::default_store(&b),
                };
                output::target_args(None, &b.display().to_string(), &st.display().to_string())
            }
            None => "with the same --backing/--store".into(),
        };
        return Err(Exit {
            code: CHECK_REPAIRABLE,
            message: format!(
                "the store is consistent, but opening it had to work around {} damaged cop{} of its metadata (see the warning lines): it has lost that redundancy; rewrite it with `snapblk check --repair {how}`, and check the disk holding the store",
                repaired.len(),
                if repaired.len() == 1 { "y" } else { "ies" }
            ),
        }
        .into());
    }
    if !a.json {
        if repaired.is_empty() {
            println!("store is consistent");
        } else {
            println!("store is consistent (after the repairs above)");
        }
    }
    Ok(())
}
