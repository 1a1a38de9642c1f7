//! `snapblk-bench`: benchmark front end. `host` runs the engine bench and writes the results;
//! `vm-report` turns the VM fio bench's output (scripts/bench-vm.sh) into results; `render`
//! redraws tables, plots and the README sections from results JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use snapblk_bench::host::{self, HostConfig};
use snapblk_bench::report::{replace_between, Report};
use snapblk_bench::vm::{self, VmReport};

#[derive(Parser)]
#[command(
    name = "snapblk-bench",
    about = "snapblk benchmarks, as ratios against baselines measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Engine on O_DIRECT files versus raw io_uring on the same kind of file.
    Host(HostArgs),
    /// Re-renders host-latest.md / .svg and vm-latest.md / .svg (and the README sections)
    /// from results JSON.
    Render(RenderArgs),
    /// Reads the VM fio bench's output directory (target/vm-out/bench_fio-compare) and writes
    /// vm-<UTC>.json, vm-latest.md, vm-latest.svg (and the README's VM section).
    VmReport(VmReportArgs),
}

#[derive(clap::Args)]
struct RenderArgs {
    /// A `host-*.json` or `vm-*.json` results file [default: the newest of each kind in
    /// bench/results].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write the *-latest.md and *-latest.svg files [default: bench/results].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct VmReportArgs {
    /// The scenario's VM_OUT directory as the harness copied it out.
    dir: PathBuf,
    /// Where results go [default: bench/results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Which snapblk was measured (git revision and local changes), for the record.
    #[arg(long, default_value = "unknown")]
    source: String,
}

#[derive(clap::Args)]
struct HostArgs {
    /// Tiny sizes, one repetition, a few seconds: keeps the bench working (figures mean nothing).
    #[arg(long)]
    quick: bool,
    /// Scratch directory for the test files (a disk filesystem: O_DIRECT is required).
    #[arg(long, default_value_os_t = default_scratch())]
    scratch: PathBuf,
    /// Where results go [default: bench/results, or SCRATCH/results with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repetitions of every case (the median is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// 4 KiB operations per random-I/O run.
    #[arg(long)]
    ops: Option<usize>,
    /// Origin and baseline file size in MiB.
    #[arg(long)]
    size_mib: Option<u64>,
    /// Size of the restored delta in MiB.
    #[arg(long)]
    restore_mib: Option<u64>,
    /// Preserved blocks in the store the open case opens.
    #[arg(long)]
    open_blocks: Option<u64>,
    /// io_uring queue depth of the baseline.
    #[arg(long)]
    qd: Option<usize>,
    /// Threads calling the engine.
    #[arg(long)]
    threads: Option<usize>,
    /// Only these cases (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Keep the scratch files.
    #[arg(long)]
    keep: bool,
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn default_scratch() -> PathBuf {
    bench_dir().join("..").join("target").join("bench-tmp")
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Writes KIND-latest.md and KIND-latest.svg into `out`, prints the table, and — when `out`
/// is bench/results and `readme` — copies the table into bench/README.md between the
/// `<!-- KIND-results:begin/end -->` markers. `markdown` renders with a given plot path.
fn publish(
    kind: &str,
    markdown: &dyn Fn(&str) -> String,
    svg: &str,
    out: &Path,
    readme: bool,
) -> Result<()> {
    let md = markdown(&format!("{kind}-latest.svg"));
    write(&out.join(format!("{kind}-latest.md")), &md)?;
    write(&out.join(format!("{kind}-latest.svg")), svg)?;
    println!("{md}");
    eprintln!(
        "wrote {0}/{kind}-latest.md and {0}/{kind}-latest.svg",
        out.display()
    );
    let default_out = bench_dir().join("results");
    let same_dir = std::fs::canonicalize(out).ok() == std::fs::canonicalize(&default_out).ok();
    if same_dir && readme {
        let path = bench_dir().join("README.md");
        let doc =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let body = markdown(&format!("results/{kind}-latest.svg"));
        match replace_between(
            &doc,
            &format!("<!-- {kind}-results:begin -->"),
            &format!("<!-- {kind}-results:end -->"),
            &body,
        ) {
            Some(new) => write(&path, &new)?,
            None => eprintln!(
                "{} has no <!-- {kind}-results:begin/end --> markers: table not copied there",
                path.display()
            ),
        }
    }
    Ok(())
}

fn publish_host(report: &Report, out: &Path, readme: bool) -> Result<()> {
    publish(
        "host",
        &|svg| report.markdown(Some(svg)),
        &report.svg(),
        out,
        readme,
    )
}

fn publish_vm(report: &VmReport, out: &Path) -> Result<()> {
    publish(
        "vm",
        &|svg| report.markdown(Some(svg)),
        &report.svg(),
        out,
        report.mode == "full",
    )
}

/// The newest `PREFIX*.json` in `dir` (names carry a sortable UTC stamp).
fn newest(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

fn render_host(json: &Path, out: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
    let report: Report = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a results file of this version of snapblk-bench host",
            json.display()
        )
    })?;
    let all_cases = report.config["cases"]
        .as_array()
        .is_none_or(|c| c.is_empty());
    publish_host(&report, out, report.mode == "full" && all_cases)?;
    Ok(report.correctness_ok())
}

fn render_vm(json: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
    let report: VmReport = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a results file of this version of snapblk-bench vm-report",
            json.display()
        )
    })?;
    publish_vm(&report, out)
}

fn render_cmd(a: RenderArgs) -> Result<bool> {
    let results = bench_dir().join("results");
    let out = a.out.unwrap_or_else(|| results.clone());
    std::fs::create_dir_all(&out)
        .with_context(|| format!("create results directory {}", out.display()))?;
    if let Some(json) = a.json {
        let is_vm = json
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vm-"));
        if is_vm {
            render_vm(&json, &out)?;
            return Ok(true);
        }
        return render_host(&json, &out);
    }
    let host = newest(&results, "host-")?;
    let vm = newest(&results, "vm-")?;
    if host.is_none() && vm.is_none() {
        anyhow::bail!(
            "no host-*.json or vm-*.json in {}: run `snapblk-bench host` or scripts/bench-vm.sh first, or pass --json",
            results.display()
        );
    }
    if let Some(vm) = vm {
        render_vm(&vm, &out)?;
    }
    match host {
        Some(h) => render_host(&h, &out),
        None => Ok(true),
    }
}

fn vm_report_cmd(a: VmReportArgs) -> Result<bool> {
    let command: Vec<String> = std::env::args().collect();
    let report = vm::collect(&a.dir, &command.join(" "), &a.source)?;
    let out = a.out.unwrap_or_else(|| bench_dir().join("results"));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("create results directory {}", out.display()))?;
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H%M%SZ");
    let json = serde_json::to_string_pretty(&report).context("encode the results as JSON")?;
    let json_path = out.join(format!("vm-{stamp}.json"));
    write(&json_path, &json)?;
    eprintln!("results: {}", json_path.display());
    publish_vm(&report, &out)?;
    for p in &report.problems {
        eprintln!("warning: {p}");
    }
    Ok(true)
}

fn host_cmd(a: HostArgs) -> Result<bool> {
    let mut cfg = if a.quick {
        HostConfig::quick(a.scratch.clone())
    } else {
        HostConfig::full(a.scratch.clone())
    };
    if let Some(v) = a.reps {
        cfg.reps = v;
    }
    if let Some(v) = a.ops {
        cfg.ops = v;
    }
    if let Some(v) = a.size_mib {
        cfg.size = v << 20;
    }
    if let Some(v) = a.restore_mib {
        cfg.restore_bytes = v << 20;
    }
    if let Some(v) = a.open_blocks {
        cfg.open_blocks = v;
    }
    if let Some(v) = a.qd {
        cfg.qd = v;
    }
    if let Some(v) = a.threads {
        cfg.threads = v;
    }
    cfg.cases = a.cases;
    cfg.keep = a.keep;
    let default_out = bench_dir().join("results");
    let out = a.out.clone().unwrap_or_else(|| {
        if a.quick {
            a.scratch.join("results")
        } else {
            default_out.clone()
        }
    });
    let command: Vec<String> = std::env::args().collect();
    let report = host::run(&cfg, &command.join(" "), &|l| eprintln!("{l}"))?;
    std::fs::create_dir_all(&out)
        .with_context(|| format!("create results directory {}", out.display()))?;
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H%M%SZ");
    let json = serde_json::to_string_pretty(&report).context("encode the results as JSON")?;
    let json_path = out.join(format!("host-{stamp}.json"));
    write(&json_path, &json)?;
    eprintln!("results: {}", json_path.display());
    publish_host(&report, &out, cfg.cases.is_empty() && !cfg.quick)?;
    Ok(report.correctness_ok())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Host(a) => host_cmd(a),
        Cmd::Render(a) => render_cmd(a),
        Cmd::VmReport(a) => vm_report_cmd(a),
    };
    match r {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: an identical-rewrite case wrote to the origin (compare-skip broken); see the table");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
