//! Where a target is and whether it exists: the read-only verbs (remote list, verify,
//! restore, prune) never create anything, `ship` creates at most the last directory of a
//! file:// URL, and a URL that names no directory fails with one line naming it and the fix.

mod common;

use common::{fails_with, json, ok, Vol};
use std::path::Path;

fn volume() -> Vol {
    common::volume(64, 32)
}

/// Every entry under `dir`, sorted, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn read_only_verbs_on_a_missing_directory_fail_naming_it_and_create_nothing() {
    let v = volume();
    let missing = v.p("backup/vm0");
    let url = format!("file://{}", missing.display());
    let before = tree(v.dir.path());
    for args in [
        vec!["remote", "list", "--from", &url],
        vec!["remote", "list", "--from", &url, "--json"],
        vec!["remote", "verify", "--from", &url],
        vec!["remote", "prune", "--from", &url, "--keep", "1"],
    ] {
        let err = fails_with(&v.run(&args), &url);
        assert!(err.contains("nothing has been shipped there"), "{err}");
    }
    let out = v.s("out.img");
    let err = fails_with(
        &v.run(&["remote", "restore", "--from", &url, "--to", &out]),
        &url,
    );
    assert!(err.contains("no such directory"), "{err}");
    assert_eq!(
        tree(v.dir.path()),
        before,
        "a read-only verb created something"
    );
}

#[test]
fn an_empty_target_lists_no_points_and_does_not_verify() {
    let v = volume();
    std::fs::create_dir(v.p("empty")).unwrap();
    let url = format!("file://{}", v.s("empty"));
    let out = ok(&v.run(&["remote", "list", "--from", &url]));
    assert!(out.contains("no committed points"), "{out}");
    let o = v.run(&["remote", "verify", "--from", &url]);
    let err = fails_with(&o, "nothing has been shipped to");
    assert!(err.contains(&url), "{err}");
    // The JSON report agrees with the exit status.
    let o = v.run(&["remote", "verify", "--from", &url, "--json"]);
    assert!(!o.status.success());
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["ok"], false, "{rep}");
}

#[test]
fn ship_creates_only_the_last_directory() {
    let v = volume();
    let url = format!("file://{}", v.s("nonexistent/dir/x"));
    let err = fails_with(&v.run_offline(&["ship", "--to", &url, "--once"]), &url);
    assert!(
        err.contains(&format!(
            "parent directory {} does not exist",
            v.s("nonexistent/dir")
        )),
        "{err}"
    );
    assert!(!v.p("nonexistent").exists(), "ship created the tree");
    let url = format!("file://{}", v.s("x"));
    let p = v.ship(&url);
    assert_eq!(p["committed"], true, "{p}");
    assert!(v.p("x/manifests").is_dir());
}

#[test]
fn file_urls_are_absolute_decoded_and_name_a_directory() {
    let v = volume();
    // %20 is a space: the point lands in "sp ace", and no "sp%20ace" appears.
    std::fs::create_dir(v.p("sp ace")).unwrap();
    let url = format!("file://{}/sp%20ace/x", v.dir.path().display());
    assert_eq!(v.ship(&url)["committed"], true);
    assert!(v.p("sp ace/x/manifests").is_dir());
    assert!(!v.p("sp%20ace").exists());
    let list = json(&v.run(&["remote", "list", "--from", &url, "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // A regular file: one sentence that names it once per mention, not "a.img//a.img".
    let img = v.backing.display().to_string();
    let err = fails_with(
        &v.run(&["remote", "list", "--from", &format!("file://{img}")]),
        "is not a directory",
    );
    assert!(
        !err.contains(&format!("{img}/{img}")) && !err.contains("File exists"),
        "{err}"
    );
    let err = fails_with(
        &v.run_offline(&["ship", "--to", &format!("file://{img}"), "--once"]),
        "is not a directory",
    );
    assert!(!err.contains("File exists"), "{err}");

    // A relative file URL is refused with the absolute form as the fix.
    let err = fails_with(
        &v.run(&["remote", "list", "--from", "file://relative/dir"]),
        "file:///absolute/path",
    );
    assert!(err.contains("/relative/dir"), "{err}");
    let err = fails_with(
        &v.run_offline(&["ship", "--to", "file://relative/dir", "--once"]),
        "file:///absolute/path",
    );
    assert!(err.contains("/relative/dir"), "{err}");
}

#[test]
fn ship_once_with_nothing_changed_commits_no_point_and_exits_0() {
    let v = volume();
    let url = format!("file://{}", v.s("remote"));
    assert_eq!(v.ship(&url)["committed"], true);
    let again = v.ship(&url);
    assert_eq!(again["committed"], false, "{again}");
    assert_eq!(again["seq"], 1, "{again}");
    let out = ok(&v.run_offline(&["ship", "--to", &url, "--once"]));
    assert!(out.contains("nothing changed since point 1"), "{out}");
    let list = json(&v.run(&["remote", "list", "--from", &url, "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    // A change is shipped as the next point.
    v.with_engine(|e| {
        e.write(0, &common::pattern(9, common::BS)).unwrap();
    });
    let p = v.ship(&url);
    assert_eq!(
        (p["committed"].clone(), p["seq"].clone()),
        (true.into(), 2.into()),
        "{p}"
    );
}

#[test]
fn receive_into_a_regular_file_names_it_and_the_fix() {
    let v = volume();
    let key = v.p("peer.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let img = v.backing.display().to_string();
    let err = fails_with(
        &v.run(&[
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            &img,
            "--key-file",
            &key.display().to_string(),
        ]),
        "is not a directory",
    );
    assert!(err.contains(&img) && err.contains("--dir"), "{err}");
}
