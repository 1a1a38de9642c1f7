//! `snapblk-bench vm-report` on a VM_OUT directory shaped like the one
//! tests/vm/bench/fio-compare.sh leaves (the VM itself only runs in scripts/bench-vm.sh):
//! it must write the JSON, table and plot, and then `render --json` must redraw them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fio_json(read: bool, iops: f64) -> String {
    let side = serde_json::json!({
        "total_ios": 1000, "iops": iops, "bw_bytes": (iops * 4096.0) as u64, "runtime": 1000,
        "clat_ns": { "mean": 2000.0, "percentile": { "99.000000": 9000 } },
    });
    let idle = serde_json::json!({ "total_ios": 0, "iops": 0.0 });
    let (r, w) = if read { (side, idle) } else { (idle, side) };
    serde_json::json!({ "jobs": [{ "jobname": "j", "error": 0, "read": r, "write": w }] })
        .to_string()
}

fn vm_out(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("fio")).unwrap();
    std::fs::create_dir_all(dir.join("status")).unwrap();
    std::fs::write(
        dir.join("meta.json"),
        r#"{"mode":"quick","reps":2,"dev_mib":256,"randwrite_mib":16,"seqwrite_mib":64,
            "seqwrite_offset_mib":192,"randread_secs":2,"kernel":"6.12.95","cpus":2,
            "mem_kib":3050856,"orders":["x","y"]}"#,
    )
    .unwrap();
    let targets = [
        ("loop-dio", 4000.0),
        ("libublk-loop", 2000.0),
        ("dm-snap", 1000.0),
        ("snapblk", 1900.0),
        ("snapblk-cow", 1200.0),
        ("snapblk-rewrite", 1800.0),
    ];
    for rep in 1..=2 {
        for (t, iops) in targets {
            for job in ["randwrite-4k", "randread-4k", "seqwrite-1m"] {
                let v = iops * rep as f64;
                std::fs::write(
                    dir.join(format!("fio/r{rep}-{t}-{job}.json")),
                    fio_json(job == "randread-4k", v),
                )
                .unwrap();
            }
        }
    }
    std::fs::write(
        dir.join("status/r1-snapblk-cow.json"),
        r#"{"engine":{"stats":{"preserves":4096}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("status/r1-dm-snap.txt"),
        "0 524288 snapshot 8/524288 16\n",
    )
    .unwrap();
}

fn newest_json(out: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

#[test]
fn vm_report_writes_json_table_and_plot_and_render_redraws_them() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vm-report");
    let dir = base.join("vm-out");
    let out = base.join("results");
    vm_out(&dir);
    let _ = std::fs::remove_dir_all(&out);
    let st = Command::new(env!("CARGO_BIN_EXE_snapblk-bench"))
        .arg("vm-report")
        .arg(&dir)
        .args(["--source", "test-rev", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "vm-report failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let json = newest_json(&out);
    assert!(json
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("vm-"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["source"], "test-rev");
    assert_eq!(v["targets"].as_array().unwrap().len(), 6);
    let ratio = v["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "snapblk ÷ libublk-loop, randwrite-4k")
        .unwrap();
    // 1900/2000 in both repetitions.
    assert!((ratio["summary"]["ratio_median"].as_f64().unwrap() - 0.95).abs() < 1e-9);
    assert_eq!(ratio["summary"]["met"], true);
    let md = std::fs::read_to_string(out.join("vm-latest.md")).unwrap();
    assert!(
        md.contains(
            "| snapblk-cow ÷ dm-snap, randwrite-4k | 1500 | 1800 | 1.20 [1.20–1.20] | ≥ 1× | yes |"
        ),
        "{md}"
    );
    assert!(md.contains("| loop-dio | 6000 [4000–8000] |"), "{md}");
    let svg = std::fs::read_to_string(out.join("vm-latest.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    // render --json redraws the same table from the JSON alone.
    std::fs::remove_file(out.join("vm-latest.md")).unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_snapblk-bench"))
        .args(["render", "--json"])
        .arg(&json)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("vm-latest.md")).unwrap(),
        md
    );
}

#[test]
fn vm_report_names_the_missing_directory() {
    let st = Command::new(env!("CARGO_BIN_EXE_snapblk-bench"))
        .args(["vm-report", "/nonexistent/snapblk-vm-out"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        err.contains("/nonexistent/snapblk-vm-out/meta.json") && err.contains("bench-vm.sh"),
        "{err}"
    );
}
