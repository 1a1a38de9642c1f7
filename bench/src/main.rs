//! `snapblk-bench`: benchmark front end. `host` runs the engine bench and writes the results.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use snapblk_bench::host::{self, HostConfig};
use snapblk_bench::report::{replace_between, Report};

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
    /// Re-renders host-latest.md / .svg (and the README table) from a results JSON.
    Render(RenderArgs),
}

#[derive(clap::Args)]
struct RenderArgs {
    /// A `host-*.json` written by `host` [default: the newest in bench/results].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write host-latest.md and host-latest.svg [default: bench/results].
    #[arg(long)]
    out: Option<PathBuf>,
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

/// Writes host-latest.md and host-latest.svg into `out`, prints the table, and — when `out`
/// is bench/results and `readme` — copies the table into bench/README.md.
fn publish(report: &Report, out: &Path, readme: bool) -> Result<()> {
    let md = report.markdown(Some("host-latest.svg"));
    write(&out.join("host-latest.md"), &md)?;
    write(&out.join("host-latest.svg"), &report.svg())?;
    println!("{md}");
    eprintln!(
        "wrote {0}/host-latest.md and {0}/host-latest.svg",
        out.display()
    );
    let default_out = bench_dir().join("results");
    let same_dir = std::fs::canonicalize(out).ok() == std::fs::canonicalize(&default_out).ok();
    if same_dir && readme {
        let path = bench_dir().join("README.md");
        let doc =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let body = report.markdown(Some("results/host-latest.svg"));
        match replace_between(
            &doc,
            "<!-- host-results:begin -->",
            "<!-- host-results:end -->",
            &body,
        ) {
            Some(new) => write(&path, &new)?,
            None => eprintln!(
                "{} has no <!-- host-results:begin/end --> markers: table not copied there",
                path.display()
            ),
        }
    }
    Ok(())
}

fn render_cmd(a: RenderArgs) -> Result<bool> {
    let results = bench_dir().join("results");
    let json = match a.json {
        Some(j) => j,
        None => {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&results)
                .with_context(|| format!("list {}", results.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("host-") && n.ends_with(".json"))
                })
                .collect();
            found.sort();
            found.pop().with_context(|| {
                format!(
                    "no host-*.json in {}: run `snapblk-bench host` first or pass --json",
                    results.display()
                )
            })?
        }
    };
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("read {}", json.display()))?;
    let report: Report = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a results file of this version of snapblk-bench host",
            json.display()
        )
    })?;
    let out = a.out.unwrap_or(results);
    std::fs::create_dir_all(&out)
        .with_context(|| format!("create results directory {}", out.display()))?;
    let all_cases = report.config["cases"]
        .as_array()
        .is_none_or(|c| c.is_empty());
    publish(&report, &out, report.mode == "full" && all_cases)?;
    Ok(report.correctness_ok())
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
    publish(&report, &out, cfg.cases.is_empty() && !cfg.quick)?;
    Ok(report.correctness_ok())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Host(a) => host_cmd(a),
        Cmd::Render(a) => render_cmd(a),
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
