//! The event path through a real RabbitMQ node: end to end with the CLI, and faults (broker
//! stopped, killed, malformed input, duplicates, SIGTERM), each printing its figures.
//!
//! Broker tests take a lock so that a fault injected on the shared node hits one test only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use onair::broker::{self, Publisher};
use onair::engine::{Engine, Parts, Runner};
use onair::event::Event;
use onair::store::{SqliteStore, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestEmulator, emulator_settings};
use crate::rabbit::{self, node, publish_all};

pub(crate) static EXCLUSIVE: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// An engine fed by the broker consumer, in this process; broadcasts `b0`…`b<n-1>`, no media.
struct Running {
    engine: Engine,
    core: CancellationToken,
    intake: CancellationToken,
    consumer: tokio::task::JoinHandle<()>,
    status: broker::Status,
    store: PathBuf,
}

impl Running {
    async fn start(broadcasts: usize, broker: &broker::Settings, directory: &Path) -> Self {
        let mut toml = format!("[engine]\nstate_dir = \"{}\"\n", directory.display());
        for index in 0..broadcasts {
            toml.push_str(&format!("[broadcasts.b{index}]\n"));
        }
        let file = directory.join("onair.toml");
        std::fs::write(&file, toml).unwrap();
        let settings =
            onair::daemon::load(&onair::config::Source { file: Some(file), env: Default::default() }).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).unwrap());
        let (outbound, mut published) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move { while published.recv().await.is_some() {} });
        let clock = onair::clock::system();
        let runner = Arc::new(Runner::new(None, outbound, Arc::clone(&clock)));
        let core = CancellationToken::new();
        let parts = Parts {
            settings: Arc::new(settings.engine.clone()),
            registry: onair::catalog::Registry::fixed(
                &settings.engine.broadcasts,
                &onair::machine::Library::built_in(),
            )
            .expect("machines"),
            store,
            runner,
            clock,
            metrics: Default::default(),
        };
        let engine = Engine::start(parts, core.clone()).await.unwrap();
        let intake = CancellationToken::new();
        let status = broker::Status::default();
        let consumer =
            tokio::spawn(broker::consume(Arc::new(broker.clone()), engine.input(), status.clone(), intake.clone()));
        Self { engine, core, intake, consumer, status, store: settings.engine.store.clone() }
    }

    /// (decisions, distinct events decided, duplicates absorbed).
    fn counts(&self) -> (i64, i64, i64) {
        SqliteStore::open_read_only(&self.store).and_then(|store| store.decision_counts()).unwrap_or((0, 0, 0))
    }

    async fn until_decided(&self, events: i64, limit: Duration) {
        let started = Instant::now();
        while self.counts().1 < events {
            assert!(started.elapsed() < limit, "only {:?} of {events} decided after {limit:?}", self.counts());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.intake.cancel();
        self.consumer.await.unwrap();
        self.core.cancel();
        self.engine.join().await;
    }
}

/// Commands that change variables and run no action: each is one decision.
fn commands(count: usize, broadcasts: usize, prefix: &str) -> Vec<Event> {
    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
    (0..count)
        .map(|index| {
            let kind =
                if (index / broadcasts).is_multiple_of(2) { "onair.command.pause" } else { "onair.command.resume" };
            Event::new(format!("{prefix}-{index}"), kind, format!("b{}", index % broadcasts), json!({}), now)
        })
        .collect()
}

/// Watches the consumer's readiness: how long it was paused in all, and how many times.
fn watch(status: &broker::Status) -> (tokio::task::JoinHandle<()>, Arc<std::sync::Mutex<(Duration, u32)>>) {
    let paused = Arc::new(std::sync::Mutex::new((Duration::ZERO, 0)));
    let status = status.clone();
    let record = Arc::clone(&paused);
    let task = tokio::spawn(async move {
        let mut down_since: Option<Instant> = None;
        loop {
            match (status.is_ready(), down_since) {
                (false, None) => down_since = Some(Instant::now()),
                (true, Some(since)) => {
                    let mut record = record.lock().unwrap();
                    record.0 += since.elapsed();
                    record.1 += 1;
                    down_since = None;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (task, paused)
}

async fn wait_ready(status: &broker::Status, limit: Duration) -> Duration {
    let started = Instant::now();
    while !status.is_ready() {
        assert!(started.elapsed() < limit, "consumer not ready after {limit:?}: {:?}", status.last_error());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stopped_and_started_during_a_burst_loses_nothing() {
    let _exclusive = EXCLUSIVE.lock().await;
    let settings = rabbit::settings("stopapp");
    let directory = tempfile::tempdir().unwrap();
    let running = Running::start(10, &settings, directory.path()).await;
    wait_ready(&running.status, Duration::from_secs(30)).await;
    let burst = tokio::spawn({
        let settings = settings.clone();
        async move { publish_all(&settings, commands(10_000, 10, "burst"), 32).await }
    });
    running.until_decided(2_000, Duration::from_secs(120)).await;
    let (watcher, paused) = watch(&running.status);
    let outage = Instant::now();
    node().stop_app().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    node().start_app(Duration::from_secs(60)).unwrap();
    let outage = outage.elapsed();
    wait_ready(&running.status, Duration::from_secs(60)).await;
    let retries = burst.await.unwrap();
    running.until_decided(10_000, Duration::from_secs(180)).await;
    watcher.abort();
    let (paused_for, pauses) = *paused.lock().unwrap();
    let (decisions, distinct, duplicates) = running.counts();
    println!(
        "broker stop_app/start_app during a 10,000-event burst: {distinct} decided, 0 lost, {} decided twice, \
         {duplicates} redeliveries absorbed, {retries} publishes retried; broker away {} ms, consumer paused {} ms ({pauses} pause(s), {} reconnect(s))",
        decisions - distinct,
        outage.as_millis(),
        paused_for.as_millis(),
        running.status.reconnects(),
    );
    assert_eq!((decisions, distinct), (10_000, 10_000));
    assert!(running.status.reconnects() >= 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_and_restarted_during_a_burst_loses_nothing() {
    let _exclusive = EXCLUSIVE.lock().await;
    let settings = rabbit::settings("kill");
    let directory = tempfile::tempdir().unwrap();
    let running = Running::start(10, &settings, directory.path()).await;
    wait_ready(&running.status, Duration::from_secs(30)).await;
    let burst = tokio::spawn({
        let settings = settings.clone();
        async move { publish_all(&settings, commands(10_000, 10, "burst"), 32).await }
    });
    running.until_decided(2_000, Duration::from_secs(120)).await;
    let (watcher, paused) = watch(&running.status);
    let outage = Instant::now();
    node().kill().unwrap();
    node().restart(Duration::from_secs(90)).unwrap();
    let outage = outage.elapsed();
    wait_ready(&running.status, Duration::from_secs(60)).await;
    let retries = burst.await.unwrap();
    running.until_decided(10_000, Duration::from_secs(180)).await;
    watcher.abort();
    let (paused_for, pauses) = *paused.lock().unwrap();
    let (decisions, distinct, duplicates) = running.counts();
    println!(
        "broker SIGKILL and restart during a 10,000-event burst: {distinct} decided, 0 lost, {} decided twice, \
         {duplicates} redeliveries absorbed, {retries} publishes retried; broker away {} ms, consumer paused {} ms ({pauses} pause(s), {} reconnect(s))",
        decisions - distinct,
        outage.as_millis(),
        paused_for.as_millis(),
        running.status.reconnects(),
    );
    assert_eq!((decisions, distinct), (10_000, 10_000));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_their_reason_and_the_rest_is_processed() {
    let _exclusive = EXCLUSIVE.lock().await;
    let settings = rabbit::settings("malformed");
    let directory = tempfile::tempdir().unwrap();
    let running = Running::start(10, &settings, directory.path()).await;
    wait_ready(&running.status, Duration::from_secs(30)).await;
    let publisher = Publisher::new(Arc::new(settings.clone()));
    let valid = commands(1_000, 10, "valid");
    let oversized = format!(r#"{{"id":"big","type":"t","subject":"b0","data":"{}"}}"#, "x".repeat(300 * 1024));
    for (index, event) in valid.into_iter().enumerate() {
        publisher.publish(&event).await.unwrap();
        let bad: Vec<u8> = match index % 4 {
            0 => b"{not json".to_vec(),
            1 => b"[1, 2, 3]".to_vec(),
            2 => format!(r#"{{"id":"nosubject-{index}","type":"onair.command.pause"}}"#).into_bytes(),
            _ => oversized.clone().into_bytes(),
        };
        let properties = lapin_free_properties(index);
        publisher.publish_to(&settings.exchange, "bad", &bad, properties, true).await.unwrap();
    }
    running.until_decided(1_000, Duration::from_secs(120)).await;
    let started = Instant::now();
    let letters = loop {
        let letters = broker::dlq::list(&settings, 2_000).await.unwrap();
        if letters.len() >= 1_000 || started.elapsed() > Duration::from_secs(60) {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let count = |reason: &str| letters.iter().filter(|letter| letter.reason.starts_with(reason)).count();
    let (json_errors, shapes, subjects, large) = (
        count("not JSON"),
        count("not a CloudEvents envelope"),
        count("missing attribute subject"),
        count("event too large"),
    );
    println!(
        "1,000 malformed among 1,000 valid: {} dead-lettered ({json_errors} not JSON, {shapes} not an envelope, {subjects} without subject, {large} oversized), {} processed, consumer ready: {}",
        letters.len(),
        running.counts().1,
        running.status.is_ready()
    );
    assert_eq!(letters.len(), 1_000);
    assert_eq!((json_errors, shapes, subjects, large), (250, 250, 250, 250));
    assert_eq!(running.counts().1, 1_000);
    assert!(running.status.is_ready(), "the daemon is still consuming");
    publisher.close().await;
    running.stop().await;
}

/// AMQP properties for a malformed message: only a message id.
fn lapin_free_properties(index: usize) -> lapin::BasicProperties {
    lapin::BasicProperties::default().with_message_id(format!("bad-{index}").into()).with_delivery_mode(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_published_twice_has_one_effect() {
    let _exclusive = EXCLUSIVE.lock().await;
    let settings = rabbit::settings("twice");
    let directory = tempfile::tempdir().unwrap();
    let running = Running::start(10, &settings, directory.path()).await;
    wait_ready(&running.status, Duration::from_secs(30)).await;
    let events = commands(1_000, 10, "pair");
    let doubled: Vec<Event> = events.iter().flat_map(|event| [event.clone(), event.clone()]).collect();
    publish_all(&settings, doubled, 16).await;
    running.until_decided(1_000, Duration::from_secs(120)).await;
    let started = Instant::now();
    while running.counts().2 < 1_000 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (decisions, distinct, duplicates) = running.counts();
    println!(
        "1,000 events published twice: {decisions} decisions, {distinct} distinct, {duplicates} duplicates absorbed"
    );
    assert_eq!((decisions, distinct, duplicates), (1_000, 1_000, 1_000));
    running.stop().await;
}

// === The daemon as a process ===

pub(crate) fn daemon_config(
    directory: &Path,
    emulator: &TestEmulator,
    broker: &broker::Settings,
    broadcasts: &str,
) -> PathBuf {
    let config = format!(
        "[media]\narm_url = \"{base}\"\ntoken_url = \"{base}/t/oauth2/v2.0/token\"\nsubscription_id = \"{s}\"\nresource_group = \"{g}\"\naccount = \"{a}\"\nclient_id = \"onair-emulator\"\npoll_interval = \"50ms\"\n[engine]\nstate_dir = \"{dir}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{broker}{broadcasts}",
        base = emulator.base,
        s = crate::helpers::SUBSCRIPTION,
        g = crate::helpers::GROUP,
        a = crate::helpers::ACCOUNT,
        dir = directory.display(),
        broker = rabbit::toml(broker),
    );
    let path = directory.join("onair.toml");
    std::fs::write(&path, config).unwrap();
    path
}

pub(crate) fn onair(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_onair"));
    command
        .arg("--config")
        .arg(config)
        .env("ONAIR__MEDIA__CLIENT_SECRET", "onair-emulator-secret")
        .env_remove("RUST_LOG");
    command
}

pub(crate) fn run_daemon(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    onair(config).arg("run").env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

pub(crate) fn terminate(child: &mut Child, grace: Duration) -> (Option<i32>, Duration) {
    let sent = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), sent.elapsed());
        }
        assert!(sent.elapsed() < grace + Duration::from_secs(5), "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn state_of(store: &Path, broadcast: &str) -> Option<String> {
    let store = SqliteStore::open_read_only(store).ok()?;
    store
        .load_instances()
        .ok()?
        .into_iter()
        .find(|instance| instance.broadcast == broadcast)
        .map(|instance| instance.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_with_the_cli_drive_a_broadcast_end_to_end() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut emulator_settings = emulator_settings();
    emulator_settings.transition = Duration::from_millis(100);
    let emulator = TestEmulator::start(emulator_settings).await;
    let broker = rabbit::settings("e2e");
    let directory = tempfile::tempdir().unwrap();
    let config =
        daemon_config(directory.path(), &emulator, &broker, "[broadcasts.news]\nunits = { on_air = 2, off_air = 1 }\n");
    let store = directory.path().join("onair.db");
    let log = directory.path().join("onair.log");
    let mut daemon = run_daemon(&config, &log);

    let mut seen = Vec::new();
    for (step, settles) in [("warmup", "standby"), ("air", "live"), ("end", "cooldown"), ("cooldown", "idle")] {
        let data = json!({"broadcast": "news", "occurrence": "20261124t1800z", "step": step}).to_string();
        let sent = onair(&config)
            .args([
                "send",
                "--type",
                "onair.schedule.fired",
                "--subject",
                "news",
                "--id",
                &format!("news/20261124t1800z/{step}"),
                "--data",
                &data,
            ])
            .output()
            .unwrap();
        assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
        assert!(String::from_utf8_lossy(&sent.stdout).contains("(confirmed)"));
        let started = Instant::now();
        loop {
            let state = state_of(&store, "news");
            if !seen.contains(&state) {
                seen.push(state.clone());
            }
            if state.as_deref() == Some(settles) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{step}: stuck in {state:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let states: Vec<String> = seen.into_iter().flatten().collect();
    for state in ["warming", "live", "ending", "cooldown", "idle"] {
        assert!(states.iter().any(|seen| seen == state), "{state} not seen in {states:?}");
    }

    // An event about nobody is dead-lettered with its reason; listing leaves it there; replaying
    // publishes it again (and, still about nobody, it comes back).
    let sent = onair(&config)
        .args(["send", "--type", "onair.command.pause", "--subject", "weather", "--id", "orphan-1"])
        .output()
        .unwrap();
    assert!(sent.status.success());
    let started = Instant::now();
    let listed = loop {
        let output = onair(&config).args(["dlq", "list", "--json"]).output().unwrap();
        let letters: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or(json!([]));
        if letters.as_array().is_some_and(|letters| !letters.is_empty()) || started.elapsed() > Duration::from_secs(20)
        {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed[0]["message_id"], "orphan-1", "{listed}");
    assert!(listed[0]["reason"].as_str().unwrap().contains("no broadcast for subject \"weather\""), "{listed}");
    let replay = onair(&config).args(["dlq", "replay", "--id", "orphan-1"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).trim(),
        "replayed 1, kept 0",
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );

    let (code, took) = terminate(&mut daemon, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    println!("end to end: {} states seen, daemon stopped {} ms after SIGTERM", states.len(), took.as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_stops_cleanly_and_loses_nothing() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("sigterm");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts: String = (0..10).map(|index| format!("[broadcasts.b{index}]\n")).collect();
    let config = daemon_config(directory.path(), &emulator, &broker, &broadcasts);
    let store = directory.path().join("onair.db");
    let log = directory.path().join("onair.log");
    let mut daemon = run_daemon(&config, &log);
    // Published while the daemon decides, so that SIGTERM comes in the middle of the burst
    // however fast the daemon is.
    const TOTAL: i64 = 10_000;
    let publishing = {
        let broker = broker.clone();
        tokio::spawn(async move { publish_all(&broker, commands(TOTAL as usize, 10, "term"), 32).await })
    };
    let decided = |store: &Path| {
        SqliteStore::open_read_only(store).and_then(|store| store.decision_counts()).map_or(0, |counts| counts.1)
    };
    let started = Instant::now();
    while decided(&store) < 1_000 {
        assert!(started.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_publishing = !publishing.is_finished();
    let (code, took) = terminate(&mut daemon, Duration::from_secs(10));
    let at_stop = decided(&store);
    assert_eq!(code, Some(0), "log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(still_publishing || at_stop < TOTAL, "the burst was still going when SIGTERM came");
    // Every event published (confirmed) before the restart; the retries do not matter here.
    publishing.await.unwrap();

    let mut daemon = run_daemon(&config, &log);
    let started = Instant::now();
    while decided(&store) < TOTAL {
        assert!(started.elapsed() < Duration::from_secs(120), "{} decided", decided(&store));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (decisions, distinct, duplicates) = SqliteStore::open_read_only(&store).unwrap().decision_counts().unwrap();
    terminate(&mut daemon, Duration::from_secs(10));
    println!(
        "SIGTERM during a 10,000-event burst: exit 0 after {} ms with {at_stop} decided; after restart {distinct} decided, \
         {} twice, {duplicates} redeliveries absorbed",
        took.as_millis(),
        decisions - distinct
    );
    assert_eq!((decisions, distinct), (TOTAL, TOTAL));
}
