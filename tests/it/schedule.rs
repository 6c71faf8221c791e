//! Schedules for real: the scheduler over a real SQLite store with a controllable clock (order,
//! restarts, catch-up policies, skips, wall-clock jumps), then through RabbitMQ, the engine and
//! the emulator (downtime around a step, a broadcast end to end against `onair plan`), then
//! `onair plan` and `onair check` as processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use onair::clock::{ManualClock, OffsetClock, SharedClock};
use onair::daemon::Daemon;
use onair::event::Event;
use onair::machine::Library;
use onair::schedule::{Scheduler, Spec};
use onair::store::{AuditRow, SqliteStore, Store};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

use crate::broker::{EXCLUSIVE, daemon_config, state_of};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::rabbit;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

/// Settings from `toml` (with `state_dir` in `directory`).
fn load(directory: &Path, toml: &str) -> onair::daemon::Settings {
    let file = directory.join("onair.toml");
    std::fs::write(&file, format!("[engine]\nstate_dir = \"{}\"\n{toml}", directory.display())).unwrap();
    onair::daemon::load(&onair::config::Source { file: Some(file), env: HashMap::new() }).unwrap()
}

fn schedules(settings: &onair::daemon::Settings) -> Vec<(String, Arc<Spec>)> {
    settings
        .engine
        .broadcasts
        .iter()
        .filter_map(|(id, broadcast)| Some((id.clone(), Arc::clone(broadcast.schedule.as_ref()?))))
        .collect()
}

type Sink = UnboundedSender<Event>;

async fn scheduler(
    settings: &onair::daemon::Settings,
    store: &Arc<dyn Store>,
    clock: &Arc<ManualClock>,
) -> (Scheduler<Sink>, UnboundedReceiver<Event>) {
    let (sink, published) = unbounded_channel();
    let clock: SharedClock = Arc::clone(clock) as SharedClock;
    let scheduler = Scheduler::new(
        settings.scheduler.clone(),
        schedules(settings),
        Arc::clone(store),
        Arc::new(sink),
        clock,
        Default::default(),
    )
    .await
    .unwrap();
    (scheduler, published)
}

fn ids(published: &mut UnboundedReceiver<Event>) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(event) = published.try_recv() {
        ids.push(event.id);
    }
    ids
}

/// The schedule audit rows: (broadcast, outcome, event id).
fn schedule_audit(store: &Path) -> Vec<(String, String, String)> {
    let rows: Vec<AuditRow> = SqliteStore::open_read_only(store).unwrap().all_audit().unwrap();
    rows.into_iter()
        .filter(|row| row.kind == "schedule")
        .map(|row| {
            (
                row.broadcast,
                row.detail["outcome"].as_str().unwrap_or_default().to_string(),
                row.event_id.unwrap_or_default(),
            )
        })
        .collect()
}

const SHOW: &str = "duration = \"30m\"\nlead = { channel = \"10m\", scale = \"2m\" }\npost_roll = \"5m\"\n";

#[tokio::test]
async fn steps_fire_once_in_order_and_a_restart_repeats_none() {
    let directory = tempfile::tempdir().unwrap();
    let settings =
        load(directory.path(), &format!("[broadcasts.news.schedule]\nat = \"2026-11-24T18:00:00Z\"\n{SHOW}"));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).unwrap());
    let clock = Arc::new(ManualClock::new(at("2026-11-24T17:40:00Z")));
    let shutdown = CancellationToken::new();
    let (mut first, mut published) = scheduler(&settings, &store, &clock).await;
    assert_eq!(first.next_due(), Some(at("2026-11-24T17:50:00Z")));
    for now in ["2026-11-24T17:49:59.999Z", "2026-11-24T17:50:00.004Z", "2026-11-24T17:58:00Z", "2026-11-24T18:00:00Z"]
    {
        clock.set(at(now));
        first.fire(at(now), &shutdown).await.unwrap();
    }
    assert_eq!(
        ids(&mut published),
        ["news/20261124t1800z/warmup", "news/20261124t1800z/scale", "news/20261124t1800z/air"]
    );
    // A restart (the first scheduler is simply dropped, as in a crash after its commit).
    drop(first);
    clock.set(at("2026-11-24T18:00:01Z"));
    let (mut second, mut published) = scheduler(&settings, &store, &clock).await;
    second.fire(at("2026-11-24T18:00:01Z"), &shutdown).await.unwrap();
    assert!(ids(&mut published).is_empty(), "nothing repeats");
    assert_eq!(second.next_due(), Some(at("2026-11-24T18:30:00Z")));
    for now in ["2026-11-24T18:30:00Z", "2026-11-24T18:35:00Z"] {
        second.fire(at(now), &shutdown).await.unwrap();
    }
    assert_eq!(ids(&mut published), ["news/20261124t1800z/end", "news/20261124t1800z/cooldown"]);
    assert_eq!(second.next_due(), None, "a one-shot schedule is done");
    let audit = schedule_audit(&settings.engine.store);
    let outcomes: Vec<&str> = audit.iter().map(|(_, outcome, _)| outcome.as_str()).collect();
    assert_eq!(outcomes, ["armed", "published", "published", "published", "published", "published"]);
}

#[tokio::test]
async fn catch_up_after_downtime_follows_each_policy_and_audits_every_miss() {
    let directory = tempfile::tempdir().unwrap();
    let mut toml = String::new();
    for (id, policy) in [("latest", "latest"), ("none", "none"), ("all", "all")] {
        toml.push_str(&format!(
            "[broadcasts.{id}.schedule]\nat = \"2026-11-24T18:00:00Z\"\ncatch_up = \"{policy}\"\n{SHOW}"
        ));
    }
    let settings = load(directory.path(), &toml);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).unwrap());
    let clock = Arc::new(ManualClock::new(at("2026-11-24T17:40:00Z")));
    let shutdown = CancellationToken::new();
    drop(scheduler(&settings, &store, &clock).await);

    // Down from 17:40 to 18:05: warm-up, scale-up and air are 15, 7 and 5 minutes late.
    clock.set(at("2026-11-24T18:05:00Z"));
    let (mut back, mut published) = scheduler(&settings, &store, &clock).await;
    let progress = back.fire(at("2026-11-24T18:05:00Z"), &shutdown).await.unwrap();
    let mut fired = ids(&mut published);
    fired.sort();
    assert_eq!(
        fired,
        [
            "all/20261124t1800z/air",
            "all/20261124t1800z/scale",
            "all/20261124t1800z/warmup",
            "latest/20261124t1800z/air",
        ],
        "latest: only the latest step of the open occurrence; none: nothing; all: everything in the window"
    );
    assert_eq!((progress.published, progress.missed), (4, 5));
    drop(back);

    // Down again from 18:05 to 18:40: end and cooldown are late, and the occurrence is over.
    clock.set(at("2026-11-24T18:40:00Z"));
    let (mut back, mut published) = scheduler(&settings, &store, &clock).await;
    back.fire(at("2026-11-24T18:40:00Z"), &shutdown).await.unwrap();
    assert_eq!(ids(&mut published), ["all/20261124t1800z/end", "all/20261124t1800z/cooldown"]);

    let audit = schedule_audit(&settings.engine.store);
    let missed = |broadcast: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|(id, outcome, _)| id == broadcast && outcome == "missed")
            .map(|(_, _, event)| event.rsplit('/').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(missed("latest"), ["warmup", "scale", "end", "cooldown"]);
    assert_eq!(missed("none"), ["warmup", "scale", "air", "end", "cooldown"]);
    assert!(missed("all").is_empty());
    println!(
        "catch-up after downtime: latest published 1 and missed 4, none missed 5, all published 5; {} missed steps audited",
        audit.iter().filter(|(_, outcome, _)| outcome == "missed").count()
    );
}

#[tokio::test]
async fn skipped_occurrences_are_audited_and_the_rest_fire() {
    let directory = tempfile::tempdir().unwrap();
    let settings = load(
        directory.path(),
        &format!(
            "[broadcasts.news.schedule]\ncron = \"0 19 * * *\"\ntimezone = \"Europe/Paris\"\nexclude = [\"2026-11-25\"]\n{SHOW}"
        ),
    );
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).unwrap());
    let clock = Arc::new(ManualClock::new(at("2026-11-24T12:00:00Z")));
    let shutdown = CancellationToken::new();
    let (mut runner, mut published) = scheduler(&settings, &store, &clock).await;
    while let Some(due) = runner.next_due().filter(|due| *due < at("2026-11-27T00:00:00Z")) {
        clock.set(due);
        runner.fire(due, &shutdown).await.unwrap();
    }
    let fired = ids(&mut published);
    assert_eq!(fired.len(), 10, "{fired:?}");
    assert!(fired.iter().all(|id| id.contains("20261124t1800z") || id.contains("20261126t1800z")), "{fired:?}");
    let audit = schedule_audit(&settings.engine.store);
    let skipped: Vec<_> = audit.iter().filter(|(_, outcome, _)| outcome == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{audit:?}");
    let reason = SqliteStore::open_read_only(&settings.engine.store)
        .unwrap()
        .all_audit()
        .unwrap()
        .into_iter()
        .find(|row| row.detail["outcome"] == "skipped")
        .unwrap()
        .reason;
    assert_eq!(reason, "occurrence 20261125t1800z skipped: excluded date");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_is_noticed_within_a_second() {
    let directory = tempfile::tempdir().unwrap();
    let settings =
        load(directory.path(), &format!("[broadcasts.news.schedule]\nat = \"2026-11-24T18:00:00Z\"\n{SHOW}"));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).unwrap());
    // An hour before the warm-up; the scheduler's next sleep would be an hour without the cap.
    let clock = Arc::new(ManualClock::new(at("2026-11-24T16:50:00Z")));
    let (runner, mut published) = scheduler(&settings, &store, &clock).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The clock steps forward (NTP, a resumed VM) to the warm-up.
    clock.set(at("2026-11-24T17:50:00Z"));
    let jumped = Instant::now();
    let event = tokio::time::timeout(Duration::from_secs(5), published.recv()).await.unwrap().unwrap();
    let noticed = jumped.elapsed();
    assert_eq!(event.id, "news/20261124t1800z/warmup");
    assert!(noticed <= Duration::from_millis(1100), "noticed after {noticed:?}");
    println!("wall-clock jump of one hour noticed after {} ms (max_sleep 1s)", noticed.as_millis());
    shutdown.cancel();
    task.await.unwrap();
}

// === Through RabbitMQ, the engine and the emulator ===

/// A daemon's settings: the emulator (quota large enough for many channels), a private broker
/// namespace, `broadcasts` TOML; the scheduler looks at the clock every 20 ms.
pub(crate) fn daemon_settings(
    directory: &Path,
    emulator: &TestEmulator,
    broker: &onair::broker::Settings,
    broadcasts: &str,
) -> onair::daemon::Settings {
    let file: PathBuf = daemon_config(directory, emulator, broker, broadcasts);
    let env = HashMap::from([("ONAIR__MEDIA__CLIENT_SECRET".to_string(), "onair-emulator-secret".to_string())]);
    let mut settings = onair::daemon::load(&onair::config::Source { file: Some(file), env }).unwrap();
    settings.scheduler.max_sleep = Duration::from_millis(20);
    settings.engine.action_backoff = Duration::from_millis(200);
    settings
}

async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Decisions (not duplicates) the engine recorded for `event_id`.
fn decisions_for(store: &Path, event_id: &str) -> usize {
    let rows = SqliteStore::open_read_only(store).unwrap().all_audit().unwrap();
    rows.iter().filter(|row| row.kind == "decision" && row.event_id.as_deref() == Some(event_id)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_due_while_the_daemon_is_down_fires_exactly_once_after_restart() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut emulator = emulator_settings();
    emulator.quotas.live_events = 100;
    let emulator = TestEmulator::start(emulator).await;
    let broker = rabbit::settings("schedule-down");
    let base = at("2026-11-24T18:00:00Z");
    let clock = Arc::new(ManualClock::new(base));
    let started = Instant::now();
    const REPETITIONS: i64 = 50;
    for repetition in 0..REPETITIONS {
        // Each repetition has its own broadcast, air time and store (a broadcast removed from the
        // config file while it runs would finish what it started: not what this test is about);
        // the warm-up W is the step.
        let directory = tempfile::tempdir().unwrap();
        let id = format!("rep-{repetition:02}");
        let air = base + TimeDelta::hours(repetition + 1);
        let warmup = air - TimeDelta::minutes(10);
        let broadcasts = format!(
            "[broadcasts.{id}.schedule]\nat = \"{}\"\nduration = \"30m\"\nlead = {{ channel = \"10m\", scale = \"5m\" }}\n",
            air.to_rfc3339()
        );
        let settings = daemon_settings(directory.path(), &emulator, &broker, &broadcasts);
        clock.set(warmup - TimeDelta::seconds(15));
        let daemon =
            Daemon::start_with_clock(&settings, Library::built_in(), Arc::clone(&clock) as SharedClock).await.unwrap();
        clock.set(warmup - TimeDelta::seconds(10));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(daemon.schedule_stats().published(), 0, "{id}: nothing is due before the warm-up");
        daemon.stop().await.unwrap();

        // Down from W-10s to W+20s.
        clock.set(warmup + TimeDelta::seconds(20));
        let daemon =
            Daemon::start_with_clock(&settings, Library::built_in(), Arc::clone(&clock) as SharedClock).await.unwrap();
        let event_id = format!("{id}/{}/warmup", onair::schedule::occurrence_id(air));
        let store = settings.engine.store.clone();
        until(Duration::from_secs(20), &event_id, || decisions_for(&store, &event_id) >= 1).await;
        assert_eq!(daemon.schedule_stats().published(), 1);
        assert_eq!(daemon.schedule_stats().missed(), 0);
        daemon.stop().await.unwrap();

        let audit = schedule_audit(&store);
        let published = audit.iter().filter(|(_, outcome, event)| outcome == "published" && *event == event_id).count();
        assert_eq!(published, 1, "{event_id} published once");
        assert_eq!(decisions_for(&store, &event_id), 1, "{event_id} decided once");
        assert_eq!(state_of(&store, &id).as_deref().map(|state| state != "idle"), Some(true), "{id} warmed up");
    }
    println!(
        "down from W-10s to W+20s, {REPETITIONS} times: each warm-up published once and decided once \
         ({:.1} s in all)",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_scheduled_two_minutes_ahead_runs_its_lifecycle_on_the_planned_instants() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut emulator = emulator_settings();
    emulator.transition = Duration::from_millis(100);
    let emulator = TestEmulator::start(emulator).await;
    let broker = rabbit::settings("schedule-e2e");
    let directory = tempfile::tempdir().unwrap();
    let real_now = onair::clock::Clock::now(&onair::clock::SystemClock);
    let air = DateTime::from_timestamp(real_now.timestamp() + 120, 0).unwrap();
    let broadcasts = format!(
        "[broadcasts.news]\nunits = {{ on_air = 2, off_air = 1 }}\n[broadcasts.news.schedule]\nat = \"{}\"\n\
         duration = \"8s\"\nlead = {{ channel = \"6s\", scale = \"3s\" }}\npost_roll = \"4s\"\n",
        air.to_rfc3339()
    );
    let settings = daemon_settings(directory.path(), &emulator, &broker, &broadcasts);

    // The plan, from the command line, before anything runs.
    let output = crate::broker::onair(&directory.path().join("onair.toml"))
        .args(["plan", "--hours", "1", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plan: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let planned: Vec<(String, DateTime<Utc>)> = plan
        .iter()
        .map(|row| (row["step"].as_str().unwrap().to_string(), at(row["planned"].as_str().unwrap())))
        .collect();
    let steps: Vec<&str> = planned.iter().map(|(step, _)| step.as_str()).collect();
    assert_eq!(steps, ["warmup", "scale", "air", "end", "cooldown"]);

    // The daemon's clock reads 1m50s ahead: it is 10 s before air, 4 s before the warm-up.
    let clock: SharedClock = Arc::new(OffsetClock::new(TimeDelta::seconds(110)));
    let daemon = Daemon::start_with_clock(&settings, Library::built_in(), clock).await.unwrap();
    let store = settings.engine.store.clone();
    let mut seen: Vec<String> = Vec::new();
    let started = Instant::now();
    loop {
        if let Some(state) = state_of(&store, "news")
            && seen.last() != Some(&state)
        {
            seen.push(state);
        }
        if daemon.schedule_stats().published() == 5 && seen.last().map(String::as_str) == Some("idle") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "states so far: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.stop().await.unwrap();
    for state in ["warming", "live", "ending", "cooldown", "idle"] {
        assert!(seen.iter().any(|seen| seen == state), "{state} not seen in {seen:?}");
    }
    let rows = SqliteStore::open_read_only(&store).unwrap().all_audit().unwrap();
    let mut report = Vec::new();
    for (step, planned_at) in &planned {
        let row = rows
            .iter()
            .find(|row| {
                row.kind == "schedule" && row.detail["step"] == step.as_str() && row.detail["outcome"] == "published"
            })
            .unwrap_or_else(|| panic!("{step} not published"));
        // The audited step time is when the scheduler fired it (also the event's `time`); the
        // broker's confirm follows (a quorum queue waits for its fsync), shown for information.
        let fired = at(row.detail["fired"].as_str().unwrap());
        let confirmed = at(row.detail["published"].as_str().unwrap());
        let difference = (fired - *planned_at).num_milliseconds();
        report.push(format!(
            "{step} {difference:+} ms (confirmed {:+} ms)",
            (confirmed - *planned_at).num_milliseconds()
        ));
        assert!((0..=50).contains(&difference), "{step}: fired {fired}, planned {planned_at}");
    }
    let requests: Vec<String> =
        emulator.arm_requests().iter().map(|entry| format!("{} {}", entry.method, entry.path)).collect();
    assert!(
        requests.iter().any(|line| line.starts_with("PUT") && line.contains("/liveOutputs/news-")),
        "a program was created"
    );
    println!("scheduled broadcast end to end: states {seen:?}; fired minus planned: {}", report.join(", "));
}

// === The command line ===

fn onair_with(config: &str) -> (tempfile::TempDir, Command) {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("onair.toml");
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_onair"));
    command.arg("--config").arg(&file).env_remove("RUST_LOG").env_remove("ONAIR_CONFIG");
    (directory, command)
}

#[test]
fn plan_marks_daylight_saving_shifts_in_utc_and_local_time() {
    let (_directory, mut command) = onair_with(
        "[broadcasts.night.schedule]\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"\nduration = \"10m\"\n\
         lead = { channel = \"2m\", scale = \"1m\" }\n",
    );
    let output = command.args(["plan", "--hours", "8784", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let shifted = rows
        .iter()
        .find(|row| row["note"].as_str().unwrap_or_default().contains("does not exist"))
        .expect("the spring-forward day of the coming year is marked");
    assert_eq!(shifted["step"], "air");
    assert_eq!(shifted["planned"], "2027-03-28T01:00:00.000Z");
    assert_eq!(shifted["local"], "2027-03-28 03:00:00 CEST");
    assert_eq!(shifted["timezone"], "Europe/Paris");
    let output = onair_with(
        "[broadcasts.news.schedule]\ncron = \"0 19 * * 1-5\"\ntimezone = \"Europe/Paris\"\nduration = \"30m\"\n",
    )
    .1
    .args(["plan", "--hours", "48"])
    .output()
    .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.starts_with("UTC"), "{table}");
    assert!(table.contains("CET  news"), "{table}");
}

#[test]
fn check_reports_each_bad_schedule_with_the_broadcast_and_the_reason() {
    let cases = [
        (
            "[broadcasts.news.schedule]\ncron = \"0 25 * * *\"\nduration = \"30m\"\n",
            "broadcasts.news.schedule.cron: invalid cron expression \"0 25 * * *\"",
        ),
        (
            "[broadcasts.news.schedule]\ncron = \"0 19 * * *\"\ntimezone = \"Europe/Pariss\"\nduration = \"30m\"\n",
            "broadcasts.news.schedule.timezone: unknown time zone \"Europe/Pariss\"",
        ),
        (
            "[broadcasts.news.schedule]\ncron = \"0,30 * * * *\"\nduration = \"20m\"\nlead = { channel = \"45m\" }\n",
            "broadcasts.news.schedule.lead.channel: 45m is longer than the 30m between occurrences",
        ),
        (
            "[broadcasts.morning]\nchannel = \"main\"\n[broadcasts.morning.schedule]\ncron = \"0 8 * * *\"\ntimezone = \"Europe/Paris\"\nduration = \"2h\"\n\
             [broadcasts.brunch]\nchannel = \"main\"\n[broadcasts.brunch.schedule]\ncron = \"0 9 * * 0\"\ntimezone = \"Europe/Paris\"\nduration = \"1h\"\n",
            "broadcasts.brunch and broadcasts.morning: both use channel \"main\" at the same time",
        ),
    ];
    for (config, expected) in cases {
        let output = onair_with(config).1.arg("check").output().unwrap();
        assert_eq!(output.status.code(), Some(78), "{config}");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }
}

#[test]
fn check_reports_a_schedule_that_can_never_fire() {
    // Feb 30 and Apr 31 never come; Feb 29 comes every four years; "day 30 of February or a
    // Monday" fires every Monday (Vixie cron's either-or). Only the first two are problems.
    let config = "[broadcasts.gala.schedule]\ncron = \"0 19 30 2 *\"\ntimezone = \"Europe/Paris\"\nduration = \"30m\"\n\
                  [broadcasts.spring.schedule]\ncron = \"0 6 31 4 *\"\nduration = \"1h\"\n\
                  [broadcasts.leap.schedule]\ncron = \"0 19 29 2 *\"\nduration = \"30m\"\n\
                  [broadcasts.weekly.schedule]\ncron = \"0 19 30 2 1\"\nduration = \"30m\"\n";
    let output = onair_with(config).1.arg("check").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{text}");
    assert_eq!(output.status.code(), Some(78), "{text}");
    for expected in [
        "broadcasts.gala.schedule.cron: \"0 19 30 2 *\" matches no date on the calendar",
        "broadcasts.spring.schedule.cron: \"0 6 31 4 *\" matches no date on the calendar",
    ] {
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }
    assert!(text.contains("can never go on air"), "{text}");
    assert!(!text.contains("broadcasts.leap.") && !text.contains("broadcasts.weekly."), "{text}");

    let fine = "[broadcasts.leap.schedule]\ncron = \"0 19 29 2 *\"\nduration = \"30m\"\n\
                [broadcasts.weekly.schedule]\ncron = \"0 19 30 2 1\"\nduration = \"30m\"\n";
    let output = onair_with(fine).1.arg("check").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!text.contains("matches no date"), "{text}");
}
