//! The performance benchmark: one run measures every figure of the design's table (section 9),
//! prints each next to its bar, its goal and the reference measured in the same run (the bare
//! lapin loop), writes them as JSON and draws the charts of docs/performance.md.
//!
//! `cargo bench --bench performance` (needs rabbitmq-server); `-- --only daemon,schedule` runs
//! some sections only. See docs/performance.md.

#[path = "../support/mod.rs"]
mod support;

mod daemon;
mod latency;
// Until every section is in (issue 15 is being built in parts).
#[allow(dead_code)]
mod report;

use report::Report;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().position(|arg| arg == "--only").and_then(|position| args.get(position + 1)).cloned();
    let wanted = |section: &str| only.as_deref().is_none_or(|only| only.split(',').any(|name| name == section));
    let mut report = Report::default();
    if wanted("daemon") {
        println!("== the daemon with 100,000 broadcasts");
        daemon::run(&mut report);
    }
    if wanted("latency") {
        println!("== publish to first REST call at 1,000 events/s");
        latency::run(&mut report);
    }
    println!("\n{}", report.table());
    let json = serde_json::to_string_pretty(&report).expect("report as JSON");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("performance.json");
    std::fs::write(&path, json).expect("write the JSON report");
    println!("JSON: {}", path.display());
}
