//! What users are told when the files are not what a command expects: moved or copied
//! volumes, paths that are not stores, special files, failed I/O, a full store, damage
//! that opening worked around and the ship points that hold store space. Each message
//! must name the object and a fix that keeps the user's data.

mod common;

use common::{fails_with, json, ok, pattern, snapblk, volume, Vol, BS};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const BLOCKS: usize = 256;

/// A volume with snapshot `s1` of `pattern(1, ..)`, after which blocks 10..20 changed.
fn snapped() -> Vol {
    let v = volume(BLOCKS, BLOCKS);
    v.with_engine(|e| {
        e.create_snapshot("s1").unwrap();
        e.write((10 * BS) as u64, &pattern(7, 10 * BS)).unwrap();
    });
    v
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `args` on the files `backing` and `store`.
fn on(v: &Vol, args: &[&str], backing: &Path, store: &Path) -> Output {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend([
        "--backing".into(),
        backing.display().to_string(),
        "--store".into(),
        store.display().to_string(),
    ]);
    snapblk(&v.run_dir(), &a)
}

/// The binary run with the file size limit `limit` (RLIMIT_FSIZE) and SIGXFSZ ignored,
/// so a write past it fails with EFBIG like a write to a full filesystem.
fn with_file_limit(v: &Vol, args: &[String], limit: u64) -> Output {
    let mut c = common::command(&v.run_dir(), args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().unwrap()
}

#[test]
fn a_volume_copied_elsewhere_opens_with_adopt_and_keeps_its_snapshots() {
    let v = snapped();
    let live = std::fs::read(&v.backing).unwrap();
    let (b, s) = v.copy_pair("moved");
    let store_before = std::fs::read(&s).unwrap();

    // Refused, and the message names the flag that keeps the snapshots.
    let err = fails_with(
        &on(&v, &["snapshot", "list"], &b, &s),
        &format!(
            "if you moved or copied the pair together (and {} was not written since without the daemon), pass --adopt to bind the store to {}",
            b.display(),
            b.display()
        ),
    );
    assert!(!err.contains("a new --store path"), "{err}");
    assert!(
        std::fs::read(&s).unwrap() == store_before,
        "refusing changed the store"
    );

    // A read-only verb with --adopt binds the store and lists its snapshots.
    let out = ok(&on(&v, &["snapshot", "list", "--adopt"], &b, &s));
    assert!(out.contains("s1"), "{out}");
    // Bound: no flag needed from now on, and the snapshot's content is intact.
    let list = json(&on(&v, &["snapshot", "list", "--json"], &b, &s));
    assert_eq!(list[0]["name"], "s1", "{list}");
    let img = v.s("s1-from-the-copy.img");
    ok(&on(&v, &["export", "s1", "--to", &img], &b, &s));
    assert!(std::fs::read(&img).unwrap() == pattern(1, BS * BLOCKS));
    // The original pair is untouched and still opens as before.
    assert!(std::fs::read(&v.backing).unwrap() == live);
    ok(&v.run_offline(&["status"]));

    // A read-write verb adopts in its own open; status takes the flag too.
    let (b2, s2) = v.copy_pair("again");
    fails_with(&on(&v, &["status"], &b2, &s2), "pass --adopt");
    ok(&on(&v, &["status", "--adopt"], &b2, &s2));
    ok(&on(&v, &["snapshot", "create", "s2"], &b2, &s2));

    let (b3, s3) = v.copy_pair("third");
    let out = ok(&on(&v, &["restore", "s1", "--adopt"], &b3, &s3));
    assert!(out.contains("undo with"), "{out}");
    assert!(std::fs::read(&b3).unwrap() == pattern(1, BS * BLOCKS));

    // ship checks its flags before the store is touched, then adopts in its one open.
    let (b4, s4) = v.copy_pair("fourth");
    let before = std::fs::read(&s4).unwrap();
    let url = format!("file://{}", v.s("remote-adopt"));
    fails_with(
        &on(&v, &["ship", "--to", &url, "--adopt"], &b4, &s4),
        "add --once",
    );
    assert!(
        std::fs::read(&s4).unwrap() == before,
        "a refused ship changed the store"
    );
    let out = ok(&on(
        &v,
        &["ship", "--to", &url, "--once", "--adopt"],
        &b4,
        &s4,
    ));
    assert!(out.contains("committed point"), "{out}");

    // --adopt documents when it is safe.
    let help = ok(&v.run(&["snapshot", "list", "--help"]));
    assert!(
        help.contains("--adopt") && help.contains("moved or copied together"),
        "{help}"
    );
    let help = ok(&v.run(&["create", "--help"]));
    assert!(help.contains("--adopt"), "{help}");
}

#[test]
fn a_path_that_is_not_a_store_is_never_advised_to_be_removed() {
    let v = snapped();
    let live = std::fs::read(&v.backing).unwrap();
    // The backing image itself as the store.
    let err = fails_with(
        &on(&v, &["snapshot", "list"], &v.backing, &v.backing),
        "is the backing file itself",
    );
    assert!(!err.contains("remove"), "{err}");
    assert!(err.contains("does not exist yet"), "{err}");
    // A device file.
    let err = fails_with(
        &on(
            &v,
            &["snapshot", "list"],
            &v.backing,
            Path::new("/dev/null"),
        ),
        "/dev/null is a character device, not a regular file or block device",
    );
    assert!(!err.contains("remove"), "{err}");
    // Someone's document.
    let doc = v.p("notes.txt");
    std::fs::write(&doc, "someone's notes\n".repeat(1000)).unwrap();
    for verb in [&["snapshot", "create", "x"][..], &["status"][..]] {
        let err = fails_with(
            &on(&v, verb, &v.backing, &doc),
            "is not a snapblk store (no valid superblock) and was left untouched",
        );
        assert!(!err.contains("remove"), "{err}");
        assert!(err.contains("point --store at the store"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(&doc).unwrap(),
        "someone's notes\n".repeat(1000)
    );
    assert!(std::fs::read(&v.backing).unwrap() == live);
}

#[test]
fn empty_files_directories_and_fifos_are_named_for_what_they_are() {
    let v = snapped();
    let empty = v.p("empty.store");
    std::fs::write(&empty, b"").unwrap();
    let err = fails_with(
        &on(&v, &["snapshot", "list"], &v.backing, &empty),
        "is an empty file (0 bytes), not a snapblk store",
    );
    assert!(!err.contains("does not exist:"), "{err}");

    let dir = v.p("a-dir");
    std::fs::create_dir(&dir).unwrap();
    let err = fails_with(
        &on(&v, &["snapshot", "list"], &dir, &v.store),
        &format!(
            "backing {} is a directory, not a regular file or block device",
            dir.display()
        ),
    );
    assert!(!err.contains("bytes but store"), "{err}");
    fails_with(
        &on(&v, &["snapshot", "list"], &v.backing, &dir),
        &format!("store {} is a directory", dir.display()),
    );

    // Opening a FIFO blocks until a writer comes: it must be refused before any open.
    let fifo = v.p("fifo");
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (b, s, what) in [(&fifo, &v.store, "backing"), (&v.backing, &fifo, "store")] {
        let mut child = common::command(
            &v.run_dir(),
            &[
                "snapshot",
                "list",
                "--backing",
                b.to_str().unwrap(),
                "--store",
                s.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("snapblk hangs on a FIFO as the {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().unwrap();
        fails_with(
            &o,
            &format!(
                "{what} {} is a named pipe (FIFO), not a regular file or block device",
                fifo.display()
            ),
        );
    }
}

#[test]
fn an_os_error_is_said_once() {
    let v = snapped();
    // A read-write open writes the superblock; with no room for any byte it fails.
    let o = with_file_limit(&v, &v.offline_args(&["snapshot", "create", "x"]), 0);
    let err = fails_with(&o, "write superblock");
    assert_eq!(
        err.matches("File too large (os error 27)").count(),
        1,
        "{err}"
    );
}

#[test]
fn a_full_store_says_how_to_make_room() {
    // 64 MiB, never written; the store file starts at one 16 MiB growth step.
    let v = volume(16384, 0);
    v.with_engine(|e| {
        e.create_snapshot("s1").unwrap();
        // 8 MiB of originals preserved for s1.
        e.write(0, &pattern(3, 2048 * BS)).unwrap();
    });
    let len = std::fs::metadata(&v.store).unwrap().len();
    // Restoring s1 preserves the current 8 MiB too: the store must grow, and cannot.
    let o = with_file_limit(&v, &v.offline_args(&["restore", "s1"]), len);
    assert!(!o.status.success(), "restore succeeded");
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or("");
    for needle in [
        "restore snapshot s1: store",
        "is full",
        "`snapblk snapshot delete NAME`",
        "--max-store",
        "every snapshot is intact",
    ] {
        assert!(last.contains(needle), "{needle:?} not in {last:?}");
    }
}

/// Flips a byte inside the superblock copy at `off` (past its magic), so its checksum fails.
fn damage(store: &Path, off: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(store)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off + 200).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], off + 200).unwrap();
}

#[test]
fn status_and_check_report_damage_that_opening_worked_around() {
    let v = snapped();
    damage(&v.store, 0);
    let note = "superblock copy at byte 0 failed its checksum";

    let out = ok(&v.run_offline(&["status"]));
    assert!(out.contains(&format!("repaired    {note}")), "{out}");
    assert!(out.contains("snapblk check --repair"), "{out}");

    // Consistent, but with lost redundancy: exit 3, one warning line per repair.
    let o = v.run_offline(&["check"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("warning: {note}")), "{out}");
    assert!(!out.contains("store is consistent"), "{out}");
    fails_with(&o, "snapblk check --repair --backing");
    let o = v.run_offline(&["check", "--json"]);
    assert_eq!(o.status.code(), Some(3));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["repaired"][0], note, "{j}");
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["repair_pending"], true, "{j}");
    // --adopt on a store that already matches its backing writes nothing: the damage
    // stays reported instead of being silently rewritten.
    ok(&v.run_offline(&["status", "--adopt"]));
    let o = v.run_offline(&["check", "--adopt"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");

    // --repair rewrites the copy; afterwards the store is clean.
    let out = ok(&v.run_offline(&["check", "--repair"]));
    assert!(out.contains(&format!("repaired: {note}")), "{out}");
    let out = ok(&v.run_offline(&["check"]));
    assert!(
        out.contains("store is consistent") && !out.contains("warning"),
        "{out}"
    );
    let out = ok(&v.run_offline(&["status"]));
    assert!(!out.contains("repaired"), "{out}");
}

#[test]
fn ship_points_are_accounted_for_in_status_and_snapshot_list() {
    let v = snapped();
    let remote = v.p("remote");
    let url = format!("file://{}", remote.display());
    v.ship(&url);
    // Changes after the point make it hold the originals.
    v.with_engine(|e| e.write(0, &pattern(5, 64 * BS)).unwrap());

    let st = json(&v.run_offline(&["status", "--json"]));
    let pts = st["engine"]["internal_snapshots"].as_array().unwrap();
    assert_eq!(pts.len(), 1, "{st}");
    let name = pts[0]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("ship-"), "{name}");

    let out = ok(&v.run_offline(&["status"]));
    let line = out
        .lines()
        .find(|l| l.starts_with("ship point  "))
        .unwrap_or_else(|| panic!("no ship point line in {out}"));
    assert!(line.contains(&name), "{line}");
    assert!(line.contains("holds 256.0 KiB"), "{line}");
    assert!(
        line.contains(&format!("for file://{}", remote.display())),
        "{line}"
    );
    assert!(
        out.contains("`snapblk snapshot delete NAME` releases one"),
        "{out}"
    );

    let out = ok(&v.run_offline(&["snapshot", "list"]));
    let note = out
        .lines()
        .find(|l| l.starts_with("note: 1 internal ship point"))
        .unwrap_or_else(|| panic!("no ship point note in {out}"));
    assert!(
        note.contains(&name) && note.contains("holds 256.0 KiB"),
        "{note}"
    );
    // The JSON stays the documented array of user snapshots.
    let list = json(&v.run_offline(&["snapshot", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // The advice works: deleting the point releases it, and shipping still works.
    ok(&v.run_offline(&["snapshot", "delete", &name]));
    let out = ok(&v.run_offline(&["snapshot", "list"]));
    assert!(!out.contains("note:"), "{out}");
    let r = v.ship(&url);
    assert_eq!(r["full"], true, "{r}");
    ok(&v.run(&["remote", "verify", "--from", &url]));
}

#[test]
fn help_warns_against_writing_the_backing_file_without_the_daemon() {
    let d = tempfile::tempdir().unwrap();
    let help = ok(&snapblk(d.path(), &["create", "--help"]));
    assert!(
        help.contains("bypasses copy-on-write and silently corrupts every snapshot"),
        "{help}"
    );
    for verb in [
        &["restore", "--help"][..],
        &["snapshot", "list", "--help"][..],
    ] {
        let help = ok(&snapblk(d.path(), verb));
        assert!(
            help.contains("Never write the") && help.contains("bypass copy-on-write"),
            "{verb:?}: {help}"
        );
    }
    let help = ok(&snapblk(d.path(), &["--help"]));
    assert!(help.contains("silently corrupts every snapshot"), "{help}");
}
