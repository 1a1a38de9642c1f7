//! Where `remote_restore` writes: a new image file appears only when complete and never
//! touches a neighbour; a block device is opened exclusively and must be large enough
//! before anything is written to it.

mod common;

use common::*;
use shipper::{remote_restore, FileTarget, PointSel, Retry, Retrying, ShipOptions, Target};
use std::path::{Path, PathBuf};
use std::process::Command;

fn shipped(dir: &Path) -> (Retrying<FileTarget>, String) {
    let t = Retrying::new(FileTarget::new(dir.join("remote")).unwrap(), Retry::none());
    let (_, sha) = ship(&volume(4), &t, &ShipOptions::new(dir.join("state.json")));
    (t, sha)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_unrelated_partial_file_is_never_touched_and_a_failed_restore_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (t, sha) = shipped(d.path());
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mine = out_dir.join("r.img.partial");
    std::fs::write(&mine, b"the user's own file").unwrap();
    let out = out_dir.join("r.img");

    remote_restore(&t, PointSel::Latest, &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), sha);
    assert!(
        std::fs::read(&mine).unwrap() == b"the user's own file",
        "the user's file was changed"
    );
    assert_eq!(names(&out_dir), ["r.img", "r.img.partial"]);

    // An existing image is refused with the fix.
    let e = remote_restore(&t, PointSel::Latest, &out, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists") && e.contains("r.img"), "{e}");

    // A damaged segment fails the restore midway: nothing new appears, the neighbour stays.
    let seg = t.list("segments/").unwrap()[0].clone();
    let path = d.path().join("remote").join(&seg);
    let mut b = std::fs::read(&path).unwrap();
    let n = b.len() / 2;
    b[n] ^= 1;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b).unwrap();
    let out2 = out_dir.join("r2.img");
    std::fs::write(out_dir.join("r2.img.partial"), b"mine too").unwrap();
    let e = remote_restore(&t, PointSel::Latest, &out2, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert_eq!(
        names(&out_dir),
        ["r.img", "r.img.partial", "r2.img.partial"]
    );
    assert_eq!(
        std::fs::read(out_dir.join("r2.img.partial")).unwrap(),
        b"mine too"
    );
}

/// A loop device over a file of `bytes` bytes filled with 0xAB; detached on drop.
struct Loop {
    dev: PathBuf,
    backing: PathBuf,
}

impl Loop {
    fn new(dir: &Path, name: &str, bytes: usize) -> Option<Loop> {
        let backing = dir.join(name);
        std::fs::write(&backing, vec![0xABu8; bytes]).unwrap();
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing)
            .output()
            .ok()?;
        if !o.status.success() {
            eprintln!(
                "*** SKIPPED the block-device part: losetup failed (needs root and /dev/loop*): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        Some(Loop { dev, backing })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn a_block_device_must_be_free_and_large_enough_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let (t, sha) = shipped(d.path());
    let vol = 4u64 << 20;

    // Too small: refused with both sizes, and not one byte written.
    let Some(small) = Loop::new(d.path(), "small", 1 << 20) else {
        return;
    };
    let e = remote_restore(&t, PointSel::Latest, &small.dev, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&small.dev.display().to_string())
            && e.contains(&format!("{}", 1u64 << 20))
            && e.contains(&vol.to_string()),
        "{e}"
    );
    assert!(
        std::fs::read(&small.backing)
            .unwrap()
            .iter()
            .all(|&b| b == 0xAB),
        "the too-small device was written to"
    );

    // In use (held exclusively, as a mount would): refused, untouched.
    let Some(big) = Loop::new(d.path(), "big", 5 << 20) else {
        return;
    };
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&big.dev)
            .unwrap();
        let e = remote_restore(&t, PointSel::Latest, &big.dev, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use") && e.contains("unmount"), "{e}");
    }
    assert!(
        std::fs::read(&big.backing)
            .unwrap()
            .iter()
            .all(|&b| b == 0xAB),
        "the busy device was written to"
    );

    // Free and large enough: the volume is restored, the tail beyond it is left alone.
    remote_restore(&t, PointSel::Latest, &big.dev, &|_, _| {}).unwrap();
    let img = std::fs::read(&big.backing).unwrap();
    assert_eq!(sha_hex(&img[..vol as usize]), sha);
    assert!(img[vol as usize..].iter().all(|&b| b == 0xAB));
}
