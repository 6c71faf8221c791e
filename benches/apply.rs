//! Broadcasts changed while onair runs, at scale: `onair run` (a separate process, release build)
//! with a private RabbitMQ node; `onair apply --dry-run`, then `onair apply` of a file of 1,000
//! broadcasts (each with its own daily schedule) through the API; the time until the scheduler
//! has armed them all (`onair_schedules_armed`), without a restart; a second `apply` (nothing to
//! change); and the daemon's resident memory before and after. The bar: all accepted in under
//! 10 s. `cargo bench --bench apply`; `ONAIR_BENCH_BROADCASTS` changes the count.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{rss_mb, stop};

const TOKEN: &str = "bench-admin-token-0123456789";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    // A bench is not the daemon, whose environment config.rs alone reads.
    #[allow(clippy::disallowed_methods)]
    let count: usize =
        std::env::var("ONAIR_BENCH_BROADCASTS").ok().and_then(|count| count.parse().ok()).unwrap_or(1000);
    let directory = tempfile::tempdir().expect("temp dir");
    let node = onair::broker::local::LocalNode::start(&directory.path().join("rabbitmq"), Duration::from_secs(120))
        .expect("RabbitMQ node (is rabbitmq-server installed?)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("address").port();
    let config = directory.path().join("onair.toml");
    let settings = support::base_config(&directory.path().join("state"), &node.url());
    std::fs::write(&config, format!("{settings}[http]\nlisten = \"127.0.0.1:{port}\"\n")).expect("config");
    let log = std::fs::File::create(directory.path().join("onair.log")).expect("log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_onair"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("ONAIR__MEDIA__CLIENT_SECRET", "bench-client-secret")
        .env("ONAIR__HTTP__API_TOKEN", TOKEN)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("onair run");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "the daemon did not come up; see its log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_before = rss_mb(&daemon);
    let file = directory.path().join("broadcasts.toml");
    std::fs::write(&file, broadcasts(count)).expect("broadcasts file");

    let (dry, took_dry) = apply(&config, &base, &file, &["--dry-run"]);
    assert!(dry.status.success(), "apply --dry-run: {}", String::from_utf8_lossy(&dry.stderr));
    assert_eq!(armed(&http, &base).await, 0, "a dry run changes nothing");
    let (applied, took_apply) = apply(&config, &base, &file, &[]);
    assert!(applied.status.success(), "apply: {}", String::from_utf8_lossy(&applied.stderr));
    let applied_at = Instant::now();
    while armed(&http, &base).await < count as u64 {
        assert!(applied_at.elapsed() < Duration::from_secs(60), "not all armed after 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took_arming = applied_at.elapsed();
    let (again, took_again) = apply(&config, &base, &file, &[]);
    assert!(again.status.success(), "second apply: {}", String::from_utf8_lossy(&again.stderr));
    let rss_after = rss_mb(&daemon);
    stop(&mut daemon);

    println!("onair apply of {count} broadcasts, each with its own daily schedule, to a running daemon:");
    println!("{:<44} {:>10}  bar", "figure", "measured");
    println!("{:<44} {:>9.2}s  -", "apply --dry-run (diff and plan changes)", took_dry.as_secs_f64());
    let verdict = if took_apply < Duration::from_secs(10) { "met" } else { "NOT met" };
    println!("{:<44} {:>9.2}s  < 10 s: {verdict}", "apply (all accepted)", took_apply.as_secs_f64());
    println!("{:<44} {:>9.3}s  -", "then until the scheduler armed them all", took_arming.as_secs_f64());
    println!("{:<44} {:>9.2}s  -", "apply again (nothing to change)", took_again.as_secs_f64());
    println!(
        "{:<44} {:>7.1} MB  ({:.1} MB before, {:+.2} KB per broadcast)",
        "RSS after",
        rss_after,
        rss_before,
        (rss_after - rss_before) * 1024.0 / count as f64
    );
}

/// `count` broadcasts, each on its own channel with its own daily schedule.
fn broadcasts(count: usize) -> String {
    let mut text = String::new();
    for index in 0..count {
        text.push_str(&format!(
            "[broadcasts.bench-{index:05}]\nchannel = \"bench-{index:05}\"\n[broadcasts.bench-{index:05}.schedule]\n\
             cron = \"{} {} * * *\"\ntimezone = \"Europe/Paris\"\nduration = \"30m\"\n",
            index % 60,
            (index / 60) % 24,
        ));
    }
    text
}

/// Runs `onair apply -f file` against the daemon; its output and how long it took.
fn apply(config: &Path, base: &str, file: &Path, extra: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_onair"))
        .arg("--config")
        .arg(config)
        .args(["apply", "--api", base, "-f"])
        .arg(file)
        .args(extra)
        .env("ONAIR_API_TOKEN", TOKEN)
        .env("RUST_LOG", "error")
        .output()
        .expect("onair apply");
    (output, started.elapsed())
}

/// `onair_schedules_armed` from `/metrics`.
async fn armed(http: &reqwest::Client, base: &str) -> u64 {
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    text.lines()
        .find_map(|line| line.strip_prefix("onair_schedules_armed "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}
