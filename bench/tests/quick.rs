//! The `--quick` smoke CI runs: the whole bench end to end on tiny files. Asserts that it works
//! and that the correctness properties hold; never asserts on speed.

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    // Under target/: a disk filesystem (O_DIRECT), unlike a tmpfs /tmp.
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn quick_run_writes_json_markdown_and_svg_with_every_case() {
    let dir = scratch("bench-quick");
    let out = dir.join("out");
    let st = Command::new(env!("CARGO_BIN_EXE_snapblk-bench"))
        .args(["host", "--quick", "--reps", "2", "--open-blocks", "3000"])
        .arg("--scratch")
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(st.status.success(), "bench failed: {stderr}");
    let md = std::fs::read_to_string(out.join("host-latest.md")).unwrap();
    let svg = std::fs::read_to_string(out.join("host-latest.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let json_path = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "randwrite-plain",
        "randwrite-cow",
        "rewrite-identical-snap",
        "rewrite-identical-nosnap",
        "seqwrite-1m",
        "randread",
        "restore",
        "open-dirty",
        "open-clean",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
        assert!(md.contains(want), "{want} missing from the table");
        assert!(svg.contains(want), "{want} missing from the plot");
    }
    for c in cases {
        let eng = c["engine"].as_array().unwrap();
        assert_eq!(eng.len(), 2, "{}: two repetitions", c["name"]);
        assert!(eng.iter().all(|x| x.as_f64().unwrap() > 0.0));
    }
    let by = |n: &str| cases.iter().find(|c| c["name"] == n).unwrap();
    // Identical rewrites: every block compare-skipped, not one origin write.
    for n in ["rewrite-identical-snap", "rewrite-identical-nosnap"] {
        for k in by(n)["counts"].as_array().unwrap() {
            assert_eq!(k["origin_writes"], 0, "{n}");
            assert_eq!(k["blocks_skipped"], 2048, "{n}");
        }
        assert_eq!(by(n)["summary"]["met"], true);
    }
    // COW: one preserve per write, committed in groups with one sync each (a checkpoint
    // syncs twice: its body, then the superblock naming it).
    for k in by("randwrite-cow")["counts"].as_array().unwrap() {
        assert_eq!(k["preserves"], 2048);
        let n = |f: &str| k[f].as_u64().unwrap();
        assert_eq!(n("store_syncs"), n("commit_groups") + 2 * n("checkpoints"));
        assert!(n("commit_groups") > 0 && n("commit_groups") <= 2048);
    }
    // Restore re-preserves the whole 4 MiB delta into the pre-restore snapshot.
    for k in by("restore")["counts"].as_array().unwrap() {
        assert_eq!(k["preserves"], 1024);
    }
    assert_eq!(v["mode"], "quick");

    // `render` rebuilds the same table and plot from the JSON alone.
    let again = dir.join("again");
    let st = Command::new(env!("CARGO_BIN_EXE_snapblk-bench"))
        .arg("render")
        .arg("--json")
        .arg(&json_path)
        .arg("--out")
        .arg(&again)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(again.join("host-latest.md")).unwrap(),
        md
    );
    assert_eq!(
        std::fs::read_to_string(again.join("host-latest.svg")).unwrap(),
        svg
    );
}

#[test]
fn an_unknown_case_is_refused_with_the_list_of_cases() {
    let dir = scratch("bench-bad");
    let st = Command::new(env!("CARGO_BIN_EXE_snapblk-bench"))
        .args(["host", "--quick", "--cases", "nope"])
        .arg("--scratch")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!st.status.success());
    let e = String::from_utf8_lossy(&st.stderr);
    assert!(
        e.contains("unknown case \"nope\"") && e.contains("randwrite-cow"),
        "{e}"
    );
}
