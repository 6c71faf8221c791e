//! What several benchmarks share: the daemon as a process, its memory, stopping it.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The settings every benchmark's `onair run` starts from: a media API that is not there (no step
/// reaches it), the state under `state`, the broker at `broker`; the caller adds its sections.
pub fn base_config(state: &std::path::Path, broker: &str) -> String {
    format!(
        "[media]\narm_url = \"http://127.0.0.1:9\"\ntoken_url = \"http://127.0.0.1:9/t/oauth2/v2.0/token\"\n\
         subscription_id = \"s\"\nresource_group = \"g\"\naccount = \"a\"\nclient_id = \"onair\"\n\
         [engine]\nstate_dir = \"{}\"\n[broker]\nurl = \"{broker}\"\n",
        state.display()
    )
}

/// The process's resident set, in MB, from /proc.
pub fn rss_mb(daemon: &Child) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The process's peak resident set so far (VmHWM), in MB, from /proc.
#[allow(dead_code)] // Not every bench reads it.
pub fn peak_rss_mb(daemon: &Child) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// SIGTERM, up to 20 s to stop, then SIGKILL.
pub fn stop(daemon: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    let started = Instant::now();
    while daemon.try_wait().ok().flatten().is_none() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = daemon.kill();
}
