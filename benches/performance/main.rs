//! The performance benchmark: one run measures every figure of the design's table (section 9),
//! prints each next to its bar, its goal and the reference measured in the same run (the bare
//! lapin loop), writes them as JSON (`docs/performance.json` and the target's tmp directory) and
//! draws the charts of docs/performance.md (`docs/performance-*.svg`).
//!
//! `cargo bench --bench performance` (needs rabbitmq-server); `-- --only engine,schedule` runs
//! some sections only (throughput, engine, schedule, daemon). `ONAIR_BENCH_SCALE=0.1` scales the
//! counts (events, armed schedules) down for a quick look; the docs' figures are at scale 1.
//! See docs/performance.md.
//!
//! Sections that measure the memory of their own structures run in a child process: this binary
//! re-runs itself with `--child <section> <arguments>` and reads the child's `RESULT` line.

#[path = "../support/mod.rs"]
mod support;

// The allocator `onair run` uses (jemalloc), so that the engine is measured with it.
#[path = "../../src/allocator.rs"]
mod allocator;

mod chart;
mod daemon;
mod engine;
mod latency;
mod report;
mod schedule;
mod throughput;

use std::path::Path;
use std::process::Command;

use report::Report;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|arg| arg == "--child") {
        let rest = &args[position + 1..];
        match rest.first().map(String::as_str) {
            Some("engine") => engine::child(&rest[1..]),
            Some("schedule-memory") => schedule::child(&rest[1..]),
            other => panic!("unknown child section {other:?}"),
        }
        return;
    }
    let only = args.iter().position(|arg| arg == "--only").and_then(|position| args.get(position + 1)).cloned();
    let wanted = |section: &str| only.as_deref().is_none_or(|only| only.split(',').any(|name| name == section));
    let mut report = Report {
        date: onair::clock::Clock::now(&onair::clock::SystemClock).format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: machine(),
        scale: scale(),
        ..Report::default()
    };
    println!("onair performance benchmark, {} on {} (scale {})", report.date, report.machine, report.scale);
    if wanted("throughput") {
        println!("\n== events/s through onair vs the bare lapin loop");
        throughput::run(&mut report);
    }
    if wanted("engine") {
        println!("\n== the engine alone (step + durable commit)");
        engine::run(&mut report);
    }
    if wanted("schedule") {
        println!("\n== the scheduler: lateness and memory per armed schedule");
        schedule::run(&mut report);
    }
    if wanted("daemon") {
        println!("\n== the daemon with 100,000 broadcasts");
        daemon::run(&mut report);
    }
    if wanted("latency") {
        println!("== publish to first REST call at 1,000 events/s");
        latency::run(&mut report);
    }
    println!("\n{}", report.table());
    let json = serde_json::to_string_pretty(&report).expect("report as JSON");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for path in [Path::new(env!("CARGO_TARGET_TMPDIR")).join("performance.json"), docs.join("performance.json")] {
        std::fs::write(&path, &json).expect("write the JSON report");
        println!("JSON: {}", path.display());
    }
    // A chart is drawn when the run measured its series (an `--only` run leaves the others).
    if !report.throughput.is_empty() {
        let path = docs.join("performance-throughput.svg");
        chart::throughput(&report, &path).expect("draw the throughput chart");
        println!("chart: {}", path.display());
    }
    if !report.lateness_ms.is_empty() {
        let path = docs.join("performance-lateness.svg");
        chart::lateness(&report, &path).expect("draw the lateness chart");
        println!("chart: {}", path.display());
    }
}

/// The factor `ONAIR_BENCH_SCALE` applies to the counts (1 unless set).
pub fn scale() -> f64 {
    // A bench is not the daemon, whose environment config.rs alone reads.
    #[allow(clippy::disallowed_methods)]
    let scale = std::env::var("ONAIR_BENCH_SCALE").ok().and_then(|scale| scale.parse().ok()).unwrap_or(1.0);
    scale
}

/// `count` scaled by `ONAIR_BENCH_SCALE`, at least 1.
pub fn scaled(count: usize) -> usize {
    ((count as f64 * scale()).round() as usize).max(1)
}

/// A count as the docs write it: `100,000`.
pub fn thousands(count: usize) -> String {
    let digits = count.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Runs this binary again as `--child <args>` and returns the numbers of its `RESULT` line.
pub fn in_child(args: &[String]) -> Vec<f64> {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let output = Command::new(exe).arg("--child").args(args).output().expect("run a child section");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find(|line| line.starts_with("RESULT")).unwrap_or_else(|| {
        panic!("no result from the child {args:?}: {text}{}", String::from_utf8_lossy(&output.stderr))
    });
    line.split_whitespace().skip(1).map(|value| value.parse().unwrap_or(f64::NAN)).collect()
}

/// Gives the allocator's free pages back to the system, as `onair run` does before it says ready,
/// so that a resident figure counts what is held, not what start-up freed.
pub fn release_free_memory() {
    allocator::release_free_memory();
}

/// This process's resident set, in KiB, from /proc.
pub fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find_map(|line| line.strip_prefix("VmRSS:")).map(str::to_string))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// The machine, as the docs quote it: CPU model, cores, memory.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, name)| name))
        .map_or("unknown CPU".to_string(), |name| name.split_whitespace().collect::<Vec<_>>().join(" "));
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:")).map(str::to_string))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    format!("{model}, {cores} cores, {:.0} GiB", memory_kib / 1024.0 / 1024.0)
}
