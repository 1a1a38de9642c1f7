//! Two processes must never write one store: the second is refused with a
//! line that names the file and who holds it, and nothing changes.

mod common;

use common::{fails_with, ok, snapblk, volume};
use snapmap::{Engine, OpenOptions};

#[test]
fn an_offline_command_is_refused_while_another_process_has_the_store_open() {
    let v = volume(64, 64);
    let b = v.backing.display().to_string();
    let s = v.store.display().to_string();
    let e = Engine::open_files(&v.backing, &v.store, &OpenOptions::default()).unwrap();
    let before = std::fs::read(&v.store).unwrap();
    let run_dir = v.p("run");
    let args = ["snapshot", "create", "x", "--backing", &b, "--store", &s];
    let err = fails_with(&snapblk(&run_dir, &args), "is in use by pid");
    assert!(err.contains("disk.img"), "{err}");
    // The advice names commands that exist.
    assert!(!err.contains("--dev"), "{err}");
    assert!(err.contains("`snapblk restore NAME -n ID`"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "does not name this test process: {err}"
    );
    // Reads are refused too: they would see an index that is changing under them.
    let list = ["snapshot", "list", "--backing", &b, "--store", &s];
    fails_with(&snapblk(&run_dir, &list), "is in use by");
    assert!(
        std::fs::read(&v.store).unwrap() == before,
        "the refused commands changed the store"
    );
    drop(e);
    ok(&snapblk(&run_dir, &args));
    assert!(ok(&snapblk(&run_dir, &list)).contains('x'));
}
