//! Engine benchmark: decisions per second (step + durable commit) and resident memory, for 10 and
//! 10,000 broadcasts, side by side. Run with `cargo bench --bench engine`.
//!
//! Each size runs in its own process (this binary re-runs itself) so that memory figures do not
//! mix. Events are operator commands that change variables without actions (`pause`, `resume`),
//! so the figure is the engine's own cost: route, step, SQLite commit with `synchronous=FULL`
//! (group commit), reply.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use onair::engine::{Engine, Outcome, Parts, Runner};
use onair::event::Event;
use onair::machine::Library;
use onair::store::{SqliteStore, Store};

const EVENTS: usize = 20_000;
const SIZES: [usize; 2] = [10, 10_000];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|arg| arg == "--size") {
        let size: usize = args[position + 1].parse().expect("size");
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let (rate, rss) = runtime.block_on(run(size));
        println!("RESULT {size} {rate:.0} {rss}");
        return;
    }
    println!("onair engine benchmark: {EVENTS} decisions (step + commit, synchronous=FULL), per broadcast count");
    println!("{:>12} {:>16} {:>14}", "broadcasts", "decisions/s", "RSS (MiB)");
    let mut rates = Vec::new();
    for size in SIZES {
        let output = Command::new(&args[0]).args(["--size", &size.to_string()]).output().expect("run a size");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().find(|line| line.starts_with("RESULT")).unwrap_or_else(|| panic!("no result: {text}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let rate: f64 = fields[2].parse().unwrap_or(0.0);
        let rss_kib: f64 = fields[3].parse().unwrap_or(0.0);
        println!("{size:>12} {rate:>16.0} {:>14.1}", rss_kib / 1024.0);
        rates.push(rate);
    }
    let flat = rates[1] / rates[0];
    println!(
        "10,000 vs 10 broadcasts: {:.0}% of the throughput (design target: within 10%, i.e. at least 90%)",
        flat * 100.0
    );
}

async fn run(broadcasts: usize) -> (f64, u64) {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut toml = format!("[engine]\nstate_dir = \"{}\"\n", directory.path().display());
    for index in 0..broadcasts {
        toml.push_str(&format!("[broadcasts.b{index}]\n"));
    }
    let file = directory.path().join("onair.toml");
    std::fs::write(&file, toml).expect("settings");
    let settings =
        onair::daemon::load(&onair::config::Source { file: Some(file), env: Default::default() }).expect("settings");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).expect("store"));
    let (outbound, _published) = tokio::sync::mpsc::unbounded_channel();
    let clock = onair::clock::system();
    let runner = Arc::new(Runner::new(None, outbound, Arc::clone(&clock)));
    let shutdown = tokio_util::sync::CancellationToken::new();
    // As in the daemon: the running set holds the broadcasts, the engine's settings do not.
    let registry =
        onair::catalog::Registry::fixed(&settings.engine.broadcasts, &Library::built_in()).expect("machines");
    let mut engine_settings = settings.engine;
    engine_settings.broadcasts.clear();
    engine_settings.sources.clear();
    let parts =
        Parts { settings: Arc::new(engine_settings), registry, store, runner, clock, metrics: Default::default() };
    let engine = Engine::start(parts, shutdown.clone()).await.expect("engine");
    let input = engine.input();
    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
    let started = Instant::now();
    let mut replies = Vec::with_capacity(EVENTS);
    for index in 0..EVENTS {
        let broadcast = format!("b{}", index % broadcasts);
        let command = if (index / broadcasts).is_multiple_of(2) { "pause" } else { "resume" };
        let event =
            Event::new(format!("e{index}"), format!("onair.command.{command}"), broadcast, serde_json::json!({}), now);
        let (reply, outcome) = tokio::sync::oneshot::channel();
        input.send(onair::engine::Delivery { event, reply: Some(reply) }).await.expect("engine running");
        replies.push(outcome);
    }
    for outcome in replies {
        assert_eq!(outcome.await.expect("reply"), Outcome::Committed);
    }
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    let rss = resident_kib();
    shutdown.cancel();
    engine.join().await;
    (rate, rss)
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find(|line| line.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|line| line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()))
        .unwrap_or(0)
}
