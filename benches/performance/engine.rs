//! The engine alone: decisions per second (route, step, SQLite commit with `synchronous=FULL`
//! and group commit, reply) and resident memory, for 10 and 10,000 broadcasts. No broker: events
//! go straight into the engine's input; they are operator commands that change variables without
//! actions (`pause`, `resume`), so the figure is the engine's own cost. A decision counts when
//! its reply says committed.
//!
//! Each size runs in its own process (`--child engine <broadcasts>`) so that memory figures do
//! not mix.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use onair::engine::{Engine, Outcome, Parts, Runner};
use onair::event::Event;
use onair::machine::Library;
use onair::store::{SqliteStore, Store};

use crate::report::{Report, Row, trim};
use crate::{in_child, rss_kib, scaled, thousands};

const SIZES: [usize; 2] = [10, 10_000];

pub fn run(report: &mut Report) {
    let events = scaled(20_000);
    println!("  {} decisions per size, each size in its own process", thousands(events));
    let mut first = None;
    for size in SIZES {
        let result = in_child(&["engine".into(), size.to_string(), events.to_string()]);
        let (rate, rss) = (result[0], result[1] / 1024.0);
        println!("  {size:>6} broadcasts: {rate:.0} decisions/s, RSS {rss:.1} MiB");
        let flat = first.map_or(String::new(), |first: f64| {
            format!("; {:.0}% of the rate at 10 broadcasts (design: within 10%)", rate / first * 100.0)
        });
        first.get_or_insert(rate);
        report.push(
            Row::new(
                &format!("engine_decisions_{size}"),
                &format!("engine alone (step + durable commit), {} broadcasts", thousands(size)),
                rate,
                "decisions/s",
            )
            .reference(format!(
                "{} decisions, synchronous=FULL; RSS {} MiB{flat}",
                thousands(events),
                trim(rss)
            )),
        );
    }
}

/// `--child engine <broadcasts> <events>`: prints `RESULT <decisions/s> <RSS KiB>`.
pub fn child(args: &[String]) {
    let broadcasts: usize = args[0].parse().expect("broadcasts");
    let events: usize = args[1].parse().expect("events");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (rate, rss) = runtime.block_on(decide(broadcasts, events));
    println!("RESULT {rate:.0} {rss}");
}

/// An engine as the daemon runs it: `broadcasts` broadcasts of the built-in machine in the running
/// set, its store under `state` (SQLite, `synchronous=FULL`), its actions' events kept (unread).
pub struct Running {
    pub engine: Engine,
    pub shutdown: CancellationToken,
    _published: UnboundedReceiver<Event>,
}

pub async fn start(state: &Path, broadcasts: usize) -> Running {
    let mut toml = format!("[engine]\nstate_dir = \"{}\"\n", state.display());
    for index in 0..broadcasts {
        toml.push_str(&format!("[broadcasts.b{index}]\n"));
    }
    std::fs::create_dir_all(state).expect("state dir");
    let file = state.join("onair.toml");
    std::fs::write(&file, toml).expect("settings");
    let settings =
        onair::daemon::load(&onair::config::Source { file: Some(file), env: Default::default() }).expect("settings");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).expect("store"));
    let (outbound, published) = tokio::sync::mpsc::unbounded_channel();
    let clock = onair::clock::system();
    let runner = Arc::new(Runner::new(None, outbound, Arc::clone(&clock)));
    let shutdown = CancellationToken::new();
    // As in the daemon: the running set holds the broadcasts, the engine's settings do not.
    let registry =
        onair::catalog::Registry::fixed(&settings.engine.broadcasts, &Library::built_in()).expect("machines");
    let mut engine_settings = settings.engine;
    engine_settings.broadcasts.clear();
    engine_settings.sources.clear();
    let parts =
        Parts { settings: Arc::new(engine_settings), registry, store, runner, clock, metrics: Default::default() };
    let engine = Engine::start(parts, shutdown.clone()).await.expect("engine");
    Running { engine, shutdown, _published: published }
}

/// `count` operator commands over `broadcasts` broadcasts, `pause` and `resume` in turn for each:
/// every one changes a variable and takes no action.
pub fn commands(count: usize, broadcasts: usize) -> Vec<Event> {
    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
    (0..count)
        .map(|index| {
            let command = if (index / broadcasts).is_multiple_of(2) { "pause" } else { "resume" };
            Event::new(
                format!("e{index}"),
                format!("onair.command.{command}"),
                format!("b{}", index % broadcasts),
                serde_json::json!({}),
                now,
            )
        })
        .collect()
}

async fn decide(broadcasts: usize, events: usize) -> (f64, f64) {
    let directory = tempfile::tempdir().expect("temp dir");
    let running = start(directory.path(), broadcasts).await;
    // The receiver of the actions' events stays in `running` until the end.
    let Running { engine, shutdown, .. } = running;
    let commands = commands(events, broadcasts);
    let input = engine.input();
    let started = Instant::now();
    let mut replies = Vec::with_capacity(events);
    for event in commands {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        input.send(onair::engine::Delivery { event, reply: Some(reply) }).await.expect("engine running");
        replies.push(outcome);
    }
    for outcome in replies {
        assert_eq!(outcome.await.expect("reply"), Outcome::Committed);
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    // While the engine still holds its broadcasts.
    let rss = rss_kib();
    shutdown.cancel();
    engine.join().await;
    (rate, rss)
}
