//! `remote restore --to IMAGE` interrupted by a signal leaves nothing behind and never
//! touches a neighbouring `IMAGE.partial` that belongs to the user.

mod common;

use common::{command, ok, Vol};
use std::path::Path;
use std::time::{Duration, Instant};

/// True when `pid` has a descriptor open on something inside `dir` (the image being
/// restored, named or unnamed).
fn writes_into(pid: u32, dir: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.starts_with(dir) && l != dir))
}

#[test]
fn an_interrupted_restore_leaves_nothing_and_spares_the_users_partial_file() {
    // 64 MiB of data, so the restore runs long enough to be caught midway.
    let blocks = 16384;
    let v: Vol = common::volume(blocks, blocks);
    let url = format!("file://{}", v.s("remote"));
    assert_eq!(v.ship(&url)["committed"], true);
    let out_dir = v.p("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mine = out_dir.join("r.img.partial");
    std::fs::write(&mine, b"the user's own file").unwrap();
    let out = out_dir.join("r.img");
    let out_s = out.display().to_string();

    let mut caught = false;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        for _attempt in 0..5 {
            let mut child = command(
                &v.run_dir(),
                &["remote", "restore", "--from", &url, "--to", &out_s],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
            let started = Instant::now();
            let mut signalled = false;
            while started.elapsed() < Duration::from_secs(60) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if writes_into(child.id(), &out_dir) {
                    // SAFETY: signals our own child, by its pid.
                    unsafe { libc::kill(child.id() as i32, sig) };
                    signalled = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let st = child.wait().unwrap();
            if signalled && !st.success() {
                caught = true;
                let mut names: Vec<_> = std::fs::read_dir(&out_dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort();
                assert_eq!(names, ["r.img.partial"], "signal {sig} left something");
                assert!(
                    std::fs::read(&mine).unwrap() == b"the user's own file",
                    "the user's file was changed"
                );
                break;
            }
            // Finished before the signal landed: start again from nothing.
            let _ = std::fs::remove_file(&out);
        }
    }
    assert!(caught, "never caught the restore midway");
    // And an uninterrupted restore still completes next to the user's file.
    ok(&v.run(&["remote", "restore", "--from", &url, "--to", &out_s]));
    assert!(
        std::fs::read(&mine).unwrap() == b"the user's own file",
        "the user's file was changed"
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        (blocks * common::BS) as u64
    );
}
