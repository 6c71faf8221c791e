//! When onair's own store fails, it pauses and loses nothing: events whose commit fails are kept
//! and retried (deliveries stay unacknowledged, never requeued or dead-lettered), readiness and
//! the watchdog say so, and everything is decided once when the store takes writes again.
//!
//! - the store names the fault behind a failed commit (disk full, locked);
//! - an engine on a store whose file system fills up: an internal event (a timer fire) and an
//!   external one are held, retried and committed once;
//! - `onair run` (the binary) with its state directory on a small tmpfs of its own, a real
//!   RabbitMQ node and the emulator: the file system is filled, 1,000 events arrive, then space
//!   is freed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onair::broker::{self, Publisher};
use onair::engine::{self, Engine, Outcome, Parts, Runner};
use onair::event::Event;
use onair::machine::Library;
use onair::store::{SqliteStore, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::broker::{EXCLUSIVE, daemon_config, onair, terminate};
use crate::daemon::{settings, settled, state, view};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::lifecycle::writes;
use crate::rabbit;
use crate::systemd::{Manager, pings};

fn now() -> chrono::DateTime<chrono::Utc> {
    onair::clock::Clock::now(&onair::clock::SystemClock)
}

/// Decision rows (not duplicates) per event id.
fn decisions(store: &Path) -> BTreeMap<String, usize> {
    let rows = SqliteStore::open_read_only(store).and_then(|store| store.all_audit()).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for row in rows.into_iter().filter(|row| row.kind == "decision") {
        if let Some(id) = row.event_id {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

fn decision(event_id: &str, broadcast: &str) -> onair::store::Commit {
    onair::store::Commit {
        duplicate: false,
        broadcast: broadcast.into(),
        machine: "live".into(),
        at: now(),
        event_id: event_id.into(),
        event_type: "onair.command.pause".into(),
        // Large enough that the audit row needs a new page.
        event: json!({"padding": "x".repeat(64 * 1024)}),
        decision: onair::store::DecisionRecord {
            outcome: "ignored".into(),
            from: "idle".into(),
            to: "idle".into(),
            transition: None,
            reason: "test".into(),
            detail: Value::Null,
        },
        instance: None,
        actions: Vec::new(),
        completes: None,
    }
}

#[test]
fn a_failed_commit_names_the_fault_of_the_store() {
    let disk = Tmpfs::mount("4m");
    let path = disk.path.join("onair.db");
    let store = SqliteStore::open(&path).unwrap();
    store.commit(vec![decision("before", "news")]).unwrap();
    disk.fill("filler");
    let full = store.commit(vec![decision("full", "news")]).unwrap_err();
    assert_eq!(full.fault(), Some(onair::store::Fault::DiskFull), "{full}");
    std::fs::remove_file(disk.path.join("filler")).unwrap();
    store.commit(vec![decision("freed", "news")]).unwrap();

    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let locked = store.commit(vec![decision("locked", "sport")]).unwrap_err();
    assert_eq!(locked.fault(), Some(onair::store::Fault::Locked), "{locked}");
    lock.execute_batch("ROLLBACK;").unwrap();
    store.commit(vec![decision("unlocked", "sport")]).unwrap();
    let duplicate = store.commit(vec![decision("unlocked", "sport")]).unwrap_err();
    assert_eq!(duplicate.fault(), None, "an event already processed is not a fault of the store: {duplicate}");
    println!("store faults: {full} / {locked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_and_external_events_whose_commit_fails_are_retried_and_committed_once() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let disk = Tmpfs::mount("8m");
    let broadcasts =
        "[broadcasts.news]\nsettings = { reset_after = \"3s\" }\n[broadcasts.sport]\n[broadcasts.weather]\n";
    let mut settings = settings(&emulator, &disk.path, broadcasts);
    settings.engine.commit_backoff_initial = Duration::from_millis(100);
    settings.engine.commit_backoff_max = Duration::from_millis(400);
    settings.health.stall_after = Duration::from_secs(2);
    let metrics = onair::metrics::Metrics::default();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).unwrap());
    let (outbound, mut published) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while published.recv().await.is_some() {} });
    let clock = onair::clock::system();
    let media = onair::media::Client::new(&settings.media).unwrap();
    let shutdown = CancellationToken::new();
    let parts = Parts {
        settings: Arc::new(settings.engine.clone()),
        registry: onair::catalog::Registry::fixed(&settings.engine.broadcasts, &Library::built_in()).expect("machines"),
        store,
        runner: Arc::new(Runner::new(Some(media), outbound, Arc::clone(&clock))),
        clock,
        metrics: metrics.clone(),
    };
    let engine = Engine::start(parts, shutdown.clone()).await.unwrap();
    let health = onair::health::Health::new(
        settings.health.clone(),
        settings.engine.store.clone(),
        broker::Status::default(),
        metrics.commits().clone(),
    );
    let input = engine.input();
    let send = |id: &str, kind: &str, subject: &str| {
        let event = Event::new(id, kind, subject, json!({}), now());
        let input = input.clone();
        async move { engine::deliver(&input, event).await }
    };

    // Three broadcasts in three states: news degraded (its still-lost timer due in 3 s), sport
    // on standby, weather idle and paused.
    let start = Event::new("go", "onair.command.start-now", "news", json!({"occurrence": "20261124t1800z"}), now());
    assert_eq!(engine::deliver(&engine.input(), start).await, Outcome::Committed);
    settled(&settings, "news", "live").await;
    let warmup = Event::new(
        "sport/20261124t1800z/warmup",
        onair::event::SCHEDULE_FIRED,
        "sport",
        json!({"broadcast": "sport", "occurrence": "20261124t1800z", "step": "warmup"}),
        now(),
    );
    assert_eq!(engine::deliver(&engine.input(), warmup).await, Outcome::Committed);
    assert_eq!(send("weather-pause", "onair.command.pause", "weather").await, Outcome::Committed);
    settled(&settings, "sport", "standby").await;
    assert_eq!(send("lost", "onair.encoder.disconnected", "liveEvent/news").await, Outcome::Committed);
    settled(&settings, "news", "degraded").await;

    // The file system fills up: every commit fails with SQLITE_FULL.
    disk.fill("filler");
    let full_at = Instant::now();
    // The timer comes due within 3 s; it is the only event in flight, so the first failed commit
    // is its.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics.commits().failures() == 0 {
        assert!(Instant::now() < deadline, "the timer's commit never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let timer_failed_after = full_at.elapsed();
    // An external event arrives meanwhile: held too (retried, or queued behind the timer). The
    // disk stays full for 3 s more, longer than any fixed number of quick retries.
    let sport_pause = tokio::spawn(async move {
        let event = Event::new("sport-pause", "onair.command.pause", "sport", json!({}), now());
        let outcome = engine::deliver(&input, event).await;
        (outcome, Instant::now())
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures_while_full = metrics.commits().failures();
    assert!(failures_while_full >= 5, "the timer fire is retried: {failures_while_full} failed commits");
    let failing = metrics.commits().failing().expect("commits fail");
    assert_eq!(failing.label(), "disk full");
    let timer_decisions = |settings: &onair::daemon::Settings| {
        view(settings)
            .audit("news", 200)
            .unwrap()
            .into_iter()
            .filter(|row| row.kind == "decision" && row.event_type.as_deref() == Some(onair::event::TIMER_FIRED))
            .count()
    };
    assert_eq!(timer_decisions(&settings), 0, "nothing committed while full");
    assert!(!sport_pause.is_finished(), "the command is held, not answered");
    let readiness = health.readiness().await;
    let store_check = &readiness.checks["store"];
    assert!(!store_check.ok && store_check.detail.starts_with("disk full:"), "{store_check:?}");
    assert!(health.stalled().is_some(), "commits failing for longer than stall_after is no progress");

    // Space comes back: both events commit, once, and the timer's decision runs its action.
    std::fs::remove_file(disk.path.join("filler")).unwrap();
    let released = Instant::now();
    let (outcome, answered) = sport_pause.await.unwrap();
    assert_eq!(outcome, Outcome::Committed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while timer_decisions(&settings) == 0 {
        assert!(Instant::now() < deadline, "the timer fire was never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let committed_after = released.elapsed();
    let resets =
        |emulator: &TestEmulator| writes(&emulator.requests()).iter().filter(|w| w.ends_with("/reset")).count();
    while resets(&emulator) == 0 {
        assert!(Instant::now() < deadline, "the timer's channel.reset never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settled(&settings, "news", "degraded").await;
    assert!(metrics.commits().failing().is_none(), "a successful commit ends the episode");
    assert!(health.readiness().await.checks["store"].ok);
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    engine.join().await;

    assert_eq!(timer_decisions(&settings), 1, "the timer fire is decided exactly once");
    assert_eq!(resets(&emulator), 1, "one channel reset");
    let (news, news_vars) = state(&settings, "news").unwrap();
    let (sport, sport_vars) = state(&settings, "sport").unwrap();
    let (weather, weather_vars) = state(&settings, "weather").unwrap();
    assert_eq!((news.as_str(), news_vars["paused"].clone()), ("degraded", json!(false)));
    assert_eq!((sport.as_str(), sport_vars["paused"].clone()), ("standby", json!(true)));
    assert_eq!((weather.as_str(), weather_vars["paused"].clone()), ("idle", json!(true)));
    let sport_pauses = view(&settings)
        .audit("sport", 100)
        .unwrap()
        .into_iter()
        .filter(|row| row.event_id.as_deref() == Some("sport-pause"))
        .count();
    assert_eq!(sport_pauses, 1, "the command is decided once");
    println!(
        "disk full {:.1?} (the timer's first commit failed {timer_failed_after:.1?} in): {failures_while_full} failed commits while full, {} in all; the timer fire and the command were held and committed once, {committed_after:.2?} after space was freed (the command answered {:.2?} after)",
        released - full_at,
        metrics.commits().failures(),
        answered.saturating_duration_since(released),
    );
}

/// A tmpfs of its own, unmounted (lazily) when dropped, even if the test fails.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        // A test helper: the mount point lives under the test machine's temporary directory.
        #[allow(clippy::disallowed_methods)]
        let path = std::env::temp_dir().join(format!("onair-disk-full-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "onair-disk-full"])
            .arg(&path)
            .output()
            .expect("mount(8) runs");
        assert!(
            output.status.success(),
            "cannot mount a tmpfs at {} ({}): this test needs root (CI runs as root); the daemon's store cannot be capped from outside (max_page_count is per connection), so there is no fallback",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Self { path }
    }

    /// Writes a file until the file system is full; returns its size.
    fn fill(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join(name)).unwrap();
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 512] {
            let block = vec![0u8; chunk];
            while file.write_all(&block).is_ok() {
                written += chunk as u64;
            }
        }
        let _ = file.sync_all();
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// An HTTP client that gives up (loudly) rather than hang.
fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn ready(base: &str) -> (u16, Value) {
    match http().get(format!("{base}/readyz")).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn metric(base: &str, name: &str) -> u64 {
    let text = http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// Messages on a queue of the node (ready and unacknowledged), by `rabbitmqctl list_queues`.
fn queue_depth(queue: &str) -> (u64, u64) {
    let output = rabbit::node()
        .control(&["list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"])
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&queue))
        .map_or((0, 0), |fields| {
            (
                fields.get(1).and_then(|n| n.parse().ok()).unwrap_or(0),
                fields.get(2).and_then(|n| n.parse().ok()).unwrap_or(0),
            )
        })
}

async fn until(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_the_daemon_and_loses_nothing() {
    const BROADCASTS: usize = 10;
    const EVENTS: usize = 1_000;
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let settings = rabbit::settings("disk-full");
    let disk = Tmpfs::mount("32m");
    let outside = tempfile::tempdir().unwrap();
    let broadcasts: String = (0..BROADCASTS).map(|index| format!("[broadcasts.b{index}]\n")).collect();
    let config = daemon_config(&disk.path, &emulator, &settings, &broadcasts);
    let store = disk.path.join("onair.db");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let socket_path = outside.path().join("notify.sock");
    let mut manager = Manager::bind(&socket_path);
    let log = outside.path().join("onair.log");
    let mut child = onair(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("ONAIR__HEALTH__STALL_AFTER", "2s")
        .env("ONAIR__HEALTH__MEDIA_CHECK_INTERVAL", "1s")
        .env("ONAIR__HTTP__ENABLED", "true")
        .env("ONAIR__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    tokio::task::block_in_place(|| manager.read_until("READY=1", Duration::from_secs(60)));
    until(Duration::from_secs(30), "ready", async || ready(&base).await.0 == 200).await;
    let publisher = Publisher::new(Arc::new(settings.clone()));

    // Three states among the ten broadcasts: b0-b2 standby, b3-b5 cooldown, b6-b9 idle.
    let forced: Vec<(String, &str)> = (0..BROADCASTS)
        .map(|index| {
            (
                format!("b{index}"),
                ["standby", "standby", "standby", "cooldown", "cooldown", "cooldown"]
                    .get(index)
                    .copied()
                    .unwrap_or("idle"),
            )
        })
        .collect();
    let setup: Vec<Event> = forced
        .iter()
        .filter(|(_, state)| *state != "idle")
        .map(|(broadcast, state)| {
            Event::new(
                format!("force-{broadcast}"),
                onair::event::FORCE_STATE,
                broadcast.clone(),
                json!({"state": state, "note": "disk-full test"}),
                now(),
            )
        })
        .collect();
    publisher.publish_many(&setup).await.unwrap();
    until(Duration::from_secs(30), "forced states", async || {
        forced
            .iter()
            .filter(|(_, state)| *state != "idle")
            .all(|(broadcast, state)| crate::broker::state_of(&store, broadcast).as_deref() == Some(state))
    })
    .await;
    let pings_healthy = pings(&tokio::task::block_in_place(|| manager.read_for(Duration::from_secs(2))));
    assert!(pings_healthy >= 2, "pings while healthy: {pings_healthy}");

    // The file system is full; 1,000 events arrive (100 per broadcast, resume and pause in turn,
    // the last one a pause).
    let filler = disk.fill("filler");
    let events: Vec<Event> = (0..EVENTS)
        .map(|index| {
            let broadcast = format!("b{}", index % BROADCASTS);
            let kind =
                if (index / BROADCASTS).is_multiple_of(2) { "onair.command.resume" } else { "onair.command.pause" };
            Event::new(format!("e{index:04}"), kind, broadcast, json!({}), now())
        })
        .collect();
    publisher.publish_many(&events).await.unwrap();
    let full_at = Instant::now();
    until(Duration::from_secs(30), "readyz 503 with store: disk full", async || {
        let (status, body) = ready(&base).await;
        status == 503
            && body["checks"]["store"]["detail"].as_str().is_some_and(|detail| detail.starts_with("disk full"))
    })
    .await;
    let (_, readiness) = ready(&base).await;
    let stalled = tokio::task::block_in_place(|| manager.read_until("STATUS=stalled", Duration::from_secs(20)));
    let silent = tokio::task::block_in_place(|| manager.read_for(Duration::from_secs(3)));
    assert_eq!(pings(&silent), 0, "no watchdog ping while nothing commits: {silent:?}");
    let (_, stalled_readiness) = ready(&base).await;
    assert_eq!(stalled_readiness["checks"]["progress"]["ok"], false, "{stalled_readiness}");
    let held_for = full_at.elapsed();
    let consumed_while_full = metric(&base, "onair_events_consumed_total").await;
    let failures_while_full = metric(&base, "onair_store_commit_failures_total").await;
    let (_, unacked_while_full) = queue_depth(&settings.queue);
    assert!(failures_while_full >= 1, "{failures_while_full}");
    assert!(
        consumed_while_full <= setup.len() as u64 + u64::from(settings.prefetch),
        "no redelivery churn: {consumed_while_full} deliveries"
    );
    assert_eq!(metric(&base, "onair_events_dead_lettered_total").await, 0);
    assert_eq!(queue_depth(&settings.dead_queue), (0, 0), "nothing dead-lettered while full");

    // Space comes back.
    std::fs::remove_file(disk.path.join("filler")).unwrap();
    let freed = Instant::now();
    let ids: Vec<String> = events.iter().map(|event| event.id.clone()).collect();
    until(Duration::from_secs(120), "all decided", async || {
        let counts = decisions(&store);
        ids.iter().all(|id| counts.contains_key(id))
    })
    .await;
    let all_decided_after = freed.elapsed();
    until(Duration::from_secs(30), "ready again", async || ready(&base).await.0 == 200).await;
    tokio::task::block_in_place(|| manager.read_until("WATCHDOG=1", Duration::from_secs(20)));
    // Keep reading the notify socket, as systemd does: a full datagram queue would block the
    // daemon's next notification.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let drain = {
        let draining = Arc::clone(&draining);
        std::thread::spawn(move || {
            while draining.load(std::sync::atomic::Ordering::Relaxed) {
                manager.read_for(Duration::from_millis(200));
            }
        })
    };
    until(Duration::from_secs(30), "queue drained", async || queue_depth(&settings.queue) == (0, 0)).await;

    let counts = decisions(&store);
    let lost = ids.iter().filter(|id| !counts.contains_key(*id)).count();
    let twice = ids.iter().filter(|id| counts.get(*id).copied().unwrap_or(0) > 1).count();
    let dead_by_onair = metric(&base, "onair_events_dead_lettered_total").await;
    let (dead_ready, dead_unacked) = queue_depth(&settings.dead_queue);
    let dead_lettered = dead_by_onair + dead_ready + dead_unacked;
    let consumed = metric(&base, "onair_events_consumed_total").await;
    let acked = metric(&base, "onair_events_acked_total").await;
    let failures = metric(&base, "onair_store_commit_failures_total").await;
    let read = SqliteStore::open_read_only(&store).unwrap();
    assert_eq!(read.integrity_check().unwrap(), "ok");
    for (broadcast, expected) in &forced {
        let instance = read.load_instances().unwrap().into_iter().find(|instance| &instance.broadcast == broadcast);
        let instance = instance.unwrap_or_else(|| panic!("{broadcast} has no state"));
        assert_eq!(&instance.state, expected, "{broadcast}");
        assert_eq!(instance.vars["paused"], json!(true), "{broadcast}: its last event (a pause) was decided last");
        assert_eq!(instance.seq as usize, EVENTS / BROADCASTS + usize::from(*expected != "idle"), "{broadcast}");
    }
    let (code, stop_took) = terminate(&mut child, Duration::from_secs(20));
    draining.store(false, std::sync::atomic::Ordering::Relaxed);
    drain.join().unwrap();
    publisher.close().await;
    println!(
        "disk full ({filler} bytes of filler on a 32 MiB tmpfs): readyz {:?}; watchdog {:?}, 0 pings in 3 s; held {held_for:.1?} with {consumed_while_full} deliveries received ({unacked_while_full} unacknowledged, prefetch {}), {failures_while_full} failed commits",
        readiness["checks"]["store"]["detail"].as_str().unwrap_or_default(),
        stalled.lines().find(|line| line.starts_with("STATUS=")).unwrap_or_default(),
        settings.prefetch,
    );
    println!(
        "space freed: {EVENTS} events over {BROADCASTS} broadcasts: dead-lettered {dead_lettered}, lost {lost}, decided twice {twice}; all decided {:.2} s after space was freed; deliveries {consumed} (acked {acked}, {} redelivered); {failures} failed commits in all; stopped in {stop_took:.1?}",
        all_decided_after.as_secs_f64(),
        consumed.saturating_sub((EVENTS + setup.len()) as u64),
    );
    assert_eq!(code, Some(0), "{}", log_text());
    assert_eq!((dead_lettered, lost, twice), (0, 0, 0));
    assert_eq!(consumed, (EVENTS + setup.len()) as u64, "no message was delivered twice");
    let text = log_text();
    let episodes = text.matches("Store commits fail;").count();
    assert!(episodes >= 1 && text.contains("Store commits succeed again"), "{text}");
    println!("log: {episodes} episode line(s) of failing commits for {failures} failed commits, and one recovery line");
}

/// The `x-delivery-count` RabbitMQ gives each of the next `count` messages of `queue`, peeked
/// with a consumer of our own whose connection then closes (returning them all, in order).
async fn peek_delivery_counts(settings: &broker::Settings, count: usize) -> Vec<i64> {
    use futures_lite::StreamExt;
    let connection = broker::connect(settings, "disk-full-peek").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(u16::try_from(count).unwrap(), Default::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(settings.queue.as_str().into(), "peek".into(), Default::default(), Default::default())
        .await
        .unwrap();
    let mut counts = Vec::new();
    while counts.len() < count {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await else {
            break;
        };
        let header =
            delivery.properties.headers().as_ref().and_then(|headers| headers.inner().get("x-delivery-count").cloned());
        counts.push(match header {
            Some(lapin::types::AMQPValue::LongLongInt(count)) => count,
            Some(lapin::types::AMQPValue::LongInt(count)) => i64::from(count),
            Some(lapin::types::AMQPValue::LongUInt(count)) => i64::from(count),
            Some(lapin::types::AMQPValue::ShortInt(count)) => i64::from(count),
            _ => 0,
        });
    }
    let _ = connection.close(200, "bye".into()).await;
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_disk_is_full_stops_in_time_and_the_held_deliveries_come_back() {
    const EVENTS: usize = 30;
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let settings = rabbit::settings("disk-full-stop");
    let disk = Tmpfs::mount("16m");
    let outside = tempfile::tempdir().unwrap();
    let broadcasts = "[broadcasts.news]\n[broadcasts.sport]\n[broadcasts.weather]\n";
    let config = daemon_config(&disk.path, &emulator, &settings, broadcasts);
    let store = disk.path.join("onair.db");
    let log = outside.path().join("onair.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut child = crate::broker::run_daemon(&config, &log);
    let publisher = Publisher::new(Arc::new(settings.clone()));
    let forced = [("news", "standby"), ("sport", "cooldown"), ("weather", "idle")];
    let setup: Vec<Event> = forced
        .iter()
        .map(|(broadcast, state)| {
            Event::new(
                format!("force-{broadcast}"),
                onair::event::FORCE_STATE,
                *broadcast,
                json!({"state": state}),
                now(),
            )
        })
        .collect();
    publisher.publish_many(&setup).await.unwrap();
    until(Duration::from_secs(60), "forced states", async || {
        forced.iter().all(|(broadcast, state)| crate::broker::state_of(&store, broadcast).as_deref() == Some(state))
    })
    .await;

    disk.fill("filler");
    let events: Vec<Event> = (0..EVENTS)
        .map(|index| {
            let (broadcast, _) = forced[index % forced.len()];
            let kind =
                if (index / forced.len()).is_multiple_of(2) { "onair.command.resume" } else { "onair.command.pause" };
            Event::new(format!("s{index:02}"), kind, broadcast, json!({}), now())
        })
        .collect();
    publisher.publish_many(&events).await.unwrap();
    until(Duration::from_secs(20), "commits failing", async || log_text().contains("Store commits fail;")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, stop_took) = terminate(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", log_text());
    assert!(stop_took < Duration::from_secs(10), "stopped within the grace: {stop_took:?}");
    let decided_before = decisions(&store);
    let held = events.iter().filter(|event| !decided_before.contains_key(&event.id)).count();
    assert!(held > 0, "the full disk held events");
    // The queue's figures are refreshed every few seconds.
    let back_after = until(Duration::from_secs(20), "the held deliveries back in the queue", async || {
        queue_depth(&settings.queue) == (held as u64, 0)
    })
    .await;
    assert_eq!(queue_depth(&settings.dead_queue), (0, 0));
    // What RabbitMQ counted for the return by channel close (the daemon's) of the held messages;
    // peeking returns them once more.
    let counts_after_close = peek_delivery_counts(&settings, held).await;
    assert_eq!(counts_after_close.len(), held);
    let count_after_close = (counts_after_close.iter().min().copied(), counts_after_close.iter().max().copied());
    until(Duration::from_secs(20), "the peeked deliveries back in the queue", async || {
        queue_depth(&settings.queue) == (held as u64, 0)
    })
    .await;

    std::fs::remove_file(disk.path.join("filler")).unwrap();
    let mut child = crate::broker::run_daemon(&config, &log);
    let restarted = Instant::now();
    let ids: Vec<String> = events.iter().map(|event| event.id.clone()).collect();
    until(Duration::from_secs(60), "all decided after the restart", async || {
        let counts = decisions(&store);
        ids.iter().all(|id| counts.contains_key(id))
    })
    .await;
    let decided_after = restarted.elapsed();
    until(Duration::from_secs(30), "queue drained", async || queue_depth(&settings.queue) == (0, 0)).await;
    let (code, _) = terminate(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", log_text());
    publisher.close().await;

    let counts = decisions(&store);
    let twice = ids.iter().filter(|id| counts.get(*id).copied().unwrap_or(0) > 1).count();
    let dead = queue_depth(&settings.dead_queue);
    let read = SqliteStore::open_read_only(&store).unwrap();
    for (broadcast, expected) in forced {
        let instance =
            read.load_instances().unwrap().into_iter().find(|instance| instance.broadcast == broadcast).unwrap();
        assert_eq!(instance.state, expected, "{broadcast}");
        assert_eq!(instance.vars["paused"], json!(true), "{broadcast}: the last event, a pause, decided last");
    }
    println!(
        "SIGTERM with the disk full: stopped in {stop_took:.2?} (exit 0) holding {held} of {EVENTS} events; all {held} back in the queue (0 unacknowledged, 0 dead-lettered; seen {back_after:.1?} after the stop); x-delivery-count (min, max) seen after that return: {count_after_close:?}; after a restart with space: all decided in {:.2} s, decided twice {twice}, dead-lettered {}",
        decided_after.as_secs_f64(),
        dead.0 + dead.1,
    );
    assert_eq!((twice, dead), (0, (0, 0)));
}
