//! The offline forms (`--backing PATH --store PATH`) run the real engine on
//! temp files through the built binary, and the one-line errors users see.

mod common;

use common::{fails_with, ok, pattern, snapblk, volume, Vol, BS};
use std::path::{Path, PathBuf};
use std::process::Output;

const BLOCKS: usize = 256;

struct Fixture {
    dir: tempfile::TempDir,
    backing: PathBuf,
    store: PathBuf,
    original: Vec<u8>,
}

/// A store with snapshot `s1` of `original`, after which blocks 10..20 and
/// 100 were overwritten.
fn fixture() -> Fixture {
    let v = volume(BLOCKS, BLOCKS);
    v.with_engine(|e| {
        e.create_snapshot("s1").unwrap();
        e.write((10 * BS) as u64, &pattern(7, 10 * BS)).unwrap();
        e.write((100 * BS) as u64, &pattern(9, BS)).unwrap();
    });
    let Vol {
        dir,
        backing,
        store,
    } = v;
    Fixture {
        dir,
        backing,
        store,
        original: pattern(1, BS * BLOCKS),
    }
}

impl Fixture {
    fn run(&self, args: &[&str]) -> Output {
        let mut v: Vec<&str> = args.to_vec();
        v.extend([
            "--backing",
            self.backing.to_str().unwrap(),
            "--store",
            self.store.to_str().unwrap(),
        ]);
        snapblk(self.dir.path(), &v)
    }
}

#[test]
fn offline_list_diff_export_restore_check() {
    let f = fixture();
    let list: serde_json::Value =
        serde_json::from_str(&ok(&f.run(&["snapshot", "list", "--json"]))).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["s1"]);

    let diff: serde_json::Value =
        serde_json::from_str(&ok(&f.run(&["diff", "s1", "--json"]))).unwrap();
    assert_eq!(diff["changed_blocks"], 11, "{diff}");
    let text = ok(&f.run(&["diff", "s1"]));
    assert!(text.contains("11 changed blocks"), "{text}");

    let img = f.dir.path().join("s1.img");
    ok(&f.run(&["export", "s1", "--to", img.to_str().unwrap()]));
    assert!(
        std::fs::read(&img).unwrap() == f.original,
        "export differs from the snapshot"
    );
    fails_with(
        &f.run(&["export", "s1", "--to", img.to_str().unwrap()]),
        "already exists",
    );
    // A file next to the image whose name an export might use for scratch is not touched.
    let img2 = f.dir.path().join("s1-again.img");
    let neighbour = f.dir.path().join("s1-again.partial");
    std::fs::write(&neighbour, b"someone's data").unwrap();
    ok(&f.run(&["export", "s1", "--to", img2.to_str().unwrap()]));
    assert_eq!(std::fs::read(&neighbour).unwrap(), b"someone's data");
    assert!(std::fs::read(&img2).unwrap() == f.original);
    fails_with(
        &f.run(&["export", "s1", "--to", f.dir.path().to_str().unwrap()]),
        "is a directory: give the path of a new image file",
    );

    let live = std::fs::read(&f.backing).unwrap();
    assert!(live != f.original);
    let out = ok(&f.run(&["restore", "s1"]));
    assert!(
        out.contains("undo with: snapblk restore pre-restore"),
        "{out}"
    );
    assert!(
        std::fs::read(&f.backing).unwrap() == f.original,
        "restore did not bring back s1"
    );

    let status: serde_json::Value =
        serde_json::from_str(&ok(&f.run(&["status", "--json"]))).unwrap();
    let snaps = status["engine"]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "s1 plus the pre-restore snapshot: {status}");

    let out = ok(&f.run(&["check"]));
    assert!(out.contains("store is consistent"), "{out}");

    ok(&f.run(&["snapshot", "delete", "s1"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&f.run(&["snapshot", "list", "--json"]))).unwrap();
    assert!(list.as_array().unwrap().iter().all(|s| s["name"] != "s1"));
}

#[test]
fn offline_errors_name_the_fix() {
    let f = fixture();
    // A store used with another backing file.
    let other = f.dir.path().join("other.img");
    std::fs::write(&other, vec![0u8; BS * BLOCKS]).unwrap();
    let o = snapblk(
        f.dir.path(),
        &[
            "snapshot",
            "list",
            "--backing",
            other.to_str().unwrap(),
            "--store",
            f.store.to_str().unwrap(),
        ],
    );
    fails_with(&o, "belongs to");
    // A missing store.
    let o = snapblk(
        f.dir.path(),
        &["snapshot", "list", "--backing", other.to_str().unwrap()],
    );
    fails_with(&o, "does not exist");
    // An unknown snapshot.
    fails_with(&f.run(&["restore", "nope"]), "does not exist");
    // A device id with no daemon state.
    fails_with(
        &snapblk(f.dir.path(), &["snapshot", "list", "-n", "42"]),
        "no snapblk device 42",
    );
    // A bad snapshot name never reaches the engine.
    fails_with(
        &f.run(&["snapshot", "create", "a b"]),
        "invalid snapshot name",
    );
}

#[test]
fn create_reports_missing_backing_and_missing_kernel_module() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.img");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let o = snapblk(
        d.path(),
        &["create", "--backing", missing.to_str().unwrap()],
    );
    if !root {
        fails_with(&o, "needs root");
    } else if !Path::new("/dev/ublk-control").exists() {
        fails_with(&o, "modprobe ublk_drv");
        let o = snapblk(
            d.path(),
            &[
                "create",
                "--backing",
                missing.to_str().unwrap(),
                "--size",
                "1M",
            ],
        );
        fails_with(&o, "modprobe ublk_drv");
    } else {
        fails_with(&o, "does not exist");
    }
}

#[test]
fn the_printed_undo_command_runs_as_is_and_undoes_the_restore() {
    let f = fixture();
    let live = std::fs::read(&f.backing).unwrap();
    // Relative paths in, absolute paths out: the undo must work from anywhere.
    let o = common::command(
        f.dir.path(),
        &[
            "restore",
            "s1",
            "--backing",
            "disk.img",
            "--store",
            "disk.img.snapstore",
        ],
    )
    .current_dir(f.dir.path())
    .output()
    .unwrap();
    let out = ok(&o);
    let undo = out
        .lines()
        .find_map(|l| l.strip_prefix("undo with: snapblk "))
        .unwrap_or_else(|| panic!("no undo line in {out:?}"));
    let args: Vec<&str> = undo.split_whitespace().collect();
    assert!(
        args.contains(&"--backing") && args.contains(&"--store"),
        "{undo}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(&args)
        .current_dir(elsewhere.path())
        .env("SNAPBLK_RUN_DIR", f.dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    ok(&o);
    assert!(
        std::fs::read(&f.backing).unwrap() == live,
        "the undo command did not bring back the image from before the restore"
    );
}

#[test]
fn the_printed_undo_command_is_shell_quoted() {
    let d = tempfile::tempdir().unwrap();
    // A directory whose name a shell would split and unquote.
    let odd = d.path().join("sp ace's $dir");
    std::fs::create_dir(&odd).unwrap();
    let (b, s) = (odd.join("disk.img"), odd.join("disk.img.snapstore"));
    let opts = snapmap::OpenOptions {
        size: Some((BS * BLOCKS) as u64),
        ..snapmap::OpenOptions::default()
    };
    let e = snapmap::Engine::open_files(&b, &s, &opts).unwrap();
    let original = pattern(1, BS * BLOCKS);
    e.write(0, &original).unwrap();
    e.create_snapshot("s1").unwrap();
    e.write((10 * BS) as u64, &pattern(7, 10 * BS)).unwrap();
    e.close().unwrap();
    let live = std::fs::read(&b).unwrap();
    let o = snapblk(
        d.path(),
        &[
            "restore",
            "s1",
            "--backing",
            b.to_str().unwrap(),
            "--store",
            s.to_str().unwrap(),
        ],
    );
    let out = ok(&o);
    assert!(std::fs::read(&b).unwrap() == original);
    let undo = out
        .lines()
        .find_map(|l| l.strip_prefix("undo with: "))
        .unwrap_or_else(|| panic!("no undo line in {out:?}"));
    // Pasted into a shell as printed, with snapblk on the PATH.
    let bin = Path::new(env!("CARGO_BIN_EXE_snapblk")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = std::process::Command::new("sh")
        .args(["-c", undo])
        .env("PATH", path)
        .env("SNAPBLK_RUN_DIR", d.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    ok(&o);
    assert!(
        std::fs::read(&b).unwrap() == live,
        "the pasted undo command did not bring back the image from before the restore: {undo}"
    );
}
