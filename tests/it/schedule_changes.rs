//! Schedules changed while onair runs, for real (RabbitMQ, the engine, SQLite, the emulator over
//! HTTP): a change on a live broadcast leaves the occurrence on air on its times; `extend` moves
//! the end of the occurrence on air, durably (a restart keeps it), shown by the plan; and what
//! `extend` refuses.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use onair::catalog::Who;
use onair::clock::{OffsetClock, SharedClock};
use onair::daemon::Daemon;
use onair::machine::Library;
use onair::store::{AuditRow, Expected, SqliteStore};
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use crate::broker::{EXCLUSIVE, state_of};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::rabbit;
use crate::schedule::daemon_settings;

const TOKEN: &str = "schedule-changes-token-0123456789";

fn real_now() -> DateTime<Utc> {
    onair::clock::Clock::now(&onair::clock::SystemClock)
}

/// A whole second `seconds` from now.
fn in_seconds(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(real_now().timestamp() + seconds, 0).unwrap()
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

/// A one-shot schedule at `air`: warm-up 3 s before, scale-up 1 s before, `duration` on air,
/// cooldown 2 s after the end.
fn show(air: DateTime<Utc>, duration: &str) -> Map<String, Value> {
    let definition = json!({"schedule": {
        "at": air.to_rfc3339(), "duration": duration, "lead": {"channel": "3s", "scale": "1s"}, "post_roll": "2s",
    }});
    definition.as_object().unwrap().clone()
}

async fn put(daemon: &Daemon, id: &str, definition: Map<String, Value>) {
    daemon.catalog().put(id, definition, Expected::Any, &Who("test".into())).await.unwrap();
}

fn settings(directory: &Path, emulator: &TestEmulator, broker: &onair::broker::Settings) -> onair::daemon::Settings {
    // `plain` is in the config file and has no schedule.
    let mut settings = daemon_settings(directory, emulator, broker, "[broadcasts.plain]\n");
    settings.http.enabled = true;
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.api_token = Some(SecretString::from(TOKEN));
    settings
}

async fn extend(base: &str, id: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/broadcasts/{id}/commands"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The published schedule steps of `broadcast`: (occurrence, step, planned, fired).
fn published(store: &Path, broadcast: &str) -> Vec<(String, String, DateTime<Utc>, DateTime<Utc>)> {
    let rows: Vec<AuditRow> = SqliteStore::open_read_only(store).unwrap().all_audit().unwrap();
    rows.into_iter()
        .filter(|row| row.kind == "schedule" && row.broadcast == broadcast && row.detail["outcome"] == "published")
        .map(|row| {
            (
                row.detail["occurrence"].as_str().unwrap().to_string(),
                row.detail["step"].as_str().unwrap().to_string(),
                at(row.detail["planned"].as_str().unwrap()),
                at(row.detail["fired"].as_str().unwrap()),
            )
        })
        .collect()
}

/// How late each step fired, in ms, as `step +N ms`; asserts each within `limit_ms`.
fn lateness(steps: &[(String, String, DateTime<Utc>, DateTime<Utc>)], limit_ms: i64) -> Vec<String> {
    steps
        .iter()
        .map(|(occurrence, step, planned, fired)| {
            let late = (*fired - *planned).num_milliseconds();
            assert!((0..=limit_ms).contains(&late), "{occurrence}/{step}: planned {planned}, fired {fired}");
            format!("{step} {late:+} ms")
        })
        .collect()
}

/// The emulator's live output (program) requests for `channel`: (method, path).
fn program_calls(emulator: &TestEmulator, channel: &str) -> Vec<String> {
    emulator
        .arm_requests()
        .iter()
        .filter(|entry| entry.path.contains(&format!("/liveEvents/{channel}/liveOutputs/")) && entry.method != "GET")
        .map(|entry| format!("{} {}", entry.method, entry.path.rsplit('/').next().unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_change_on_a_live_broadcast_leaves_the_occurrence_on_air_on_its_times() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut emulator = emulator_settings();
    emulator.transition = Duration::from_millis(100);
    let emulator = TestEmulator::start(emulator).await;
    let broker = rabbit::settings("schedule-changes");
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(directory.path(), &emulator, &broker);
    let store = settings.engine.store.clone();
    // Occurrence ids are to the minute: the daemon's clock reads second 40 of a minute, so that
    // the air time A is at second 45 and the next occurrence (A + 20 s) in the next minute.
    let now = real_now();
    let offset = TimeDelta::seconds((100 - i64::from(chrono::Timelike::second(&now))) % 60);
    let clock: SharedClock = Arc::new(OffsetClock::new(offset));
    let daemon = Daemon::start_with_clock(&settings, Library::built_in(), clock).await.unwrap();
    let base = format!("http://{}", daemon.http_address().unwrap());

    // `live` goes on air at A for 6 s; `moved` is due at A + 10 s and moved before its warm-up.
    let air = in_seconds(5) + offset;
    put(&daemon, "live", show(air, "6s")).await;
    put(&daemon, "moved", show(air + TimeDelta::seconds(10), "4s")).await;
    until(Duration::from_secs(20), "live on air", || state_of(&store, "live").as_deref() == Some("live")).await;

    // While `live` is on air: its next occurrence at A + 20 s (after this one's cooldown at
    // A + 8 s), and `moved` to A + 25 s.
    let next = air + TimeDelta::seconds(20);
    put(&daemon, "live", show(next, "4s")).await;
    put(&daemon, "moved", show(air + TimeDelta::seconds(25), "4s")).await;
    assert_eq!(state_of(&store, "live").as_deref(), Some("live"), "the change did not disturb it");
    assert_ne!(state_of(&store, "moved").as_deref(), Some("live"));

    // What `extend` refuses meanwhile: a cooldown into the next occurrence's warm-up (A + 17 s),
    // nothing on air, no schedule, bad bodies.
    let (status, body) = extend(&base, "live", json!({"command": "extend", "by": "15s"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "overlap");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&stamp(next - TimeDelta::seconds(3))), "says when the next warm-up is: {message}");
    let (status, body) = extend(&base, "moved", json!({"command": "extend", "by": "1m"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_on_air")), "{body}");
    let (status, body) = extend(&base, "plain", json!({"command": "extend", "by": "1m"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_scheduled")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no scheduled occurrence"), "{body}");
    for bad in [
        json!({"command": "extend"}),
        json!({"command": "extend", "by": "soon"}),
        json!({"command": "extend", "by": "1m", "until": stamp(next)}),
        json!({"command": "extend", "by": "30d"}),
        json!({"command": "extend", "until": "tomorrow"}),
        json!({"command": "extend", "by": "1m", "state": "live"}),
    ] {
        let (status, body) = extend(&base, "live", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Both occurrences of `live` and the new one of `moved`: 15 steps.
    until(Duration::from_secs(40), "every step published", || daemon.schedule_stats().published() >= 15).await;
    until(Duration::from_secs(20), "both idle", || {
        state_of(&store, "live").as_deref() == Some("idle") && state_of(&store, "moved").as_deref() == Some("idle")
    })
    .await;
    daemon.stop().await.unwrap();

    let live = published(&store, "live");
    let first = onair::schedule::occurrence_id(air);
    let second = onair::schedule::occurrence_id(next);
    let of = |occurrence: &str| -> Vec<(String, DateTime<Utc>)> {
        live.iter().filter(|row| row.0 == occurrence).map(|row| (row.1.clone(), row.2)).collect()
    };
    assert_eq!(
        of(&first),
        [
            ("warmup".into(), air - TimeDelta::seconds(3)),
            ("scale".into(), air - TimeDelta::seconds(1)),
            ("air".into(), air),
            ("end".into(), air + TimeDelta::seconds(6)),
            ("cooldown".into(), air + TimeDelta::seconds(8)),
        ],
        "the occurrence on air ended on its original times"
    );
    assert_eq!(of(&second).len(), 5, "the next follows the new schedule: {live:?}");
    assert_eq!(of(&second)[3], ("end".into(), next + TimeDelta::seconds(4)));
    let moved = published(&store, "moved");
    let moved_air = onair::schedule::occurrence_id(air + TimeDelta::seconds(25));
    assert!(moved.iter().all(|row| row.0 == moved_air), "only the new time of moved fired: {moved:?}");
    assert_eq!(moved.len(), 5);
    assert_eq!(moved[2].2, air + TimeDelta::seconds(25), "moved went on air at its new time");
    assert!(published(&store, "plain").is_empty());
    assert_eq!(state_of(&store, "plain"), None, "plain never ran");

    // The program: created and stopped once per occurrence of `live`, once for `moved`.
    let programs = program_calls(&emulator, "live");
    assert_eq!(
        programs,
        [
            format!("PUT live-{first}"),
            format!("DELETE live-{first}"),
            format!("PUT live-{second}"),
            format!("DELETE live-{second}"),
        ]
    );
    assert_eq!(
        program_calls(&emulator, "moved"),
        [format!("PUT moved-{moved_air}"), format!("DELETE moved-{moved_air}")]
    );
    println!(
        "schedule change on a live broadcast: {first} ended as first planned, {second} followed the new schedule; \
         fired minus planned: live {}; moved {}",
        lateness(&live, 100).join(", "),
        lateness(&moved, 100).join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_moves_the_end_on_air_through_a_restart_and_the_plan_shows_it() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut emulator = emulator_settings();
    emulator.transition = Duration::from_millis(100);
    let emulator = TestEmulator::start(emulator).await;
    let broker = rabbit::settings("schedule-extend");
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(directory.path(), &emulator, &broker);
    let store = settings.engine.store.clone();
    let daemon = Daemon::start(&settings, Library::built_in()).await.unwrap();
    let base = format!("http://{}", daemon.http_address().unwrap());

    // `ext` on air at A for 6 s; `later` idle, due in ten minutes; `plain` unscheduled.
    let air = in_seconds(5);
    put(&daemon, "ext", show(air, "6s")).await;
    put(&daemon, "later", show(air + TimeDelta::minutes(10), "1m")).await;
    until(Duration::from_secs(20), "ext on air", || state_of(&store, "ext").as_deref() == Some("live")).await;

    let (status, body) = extend(&base, "ext", json!({"command": "extend", "by": "2m", "note": "extra time"})).await;
    assert_eq!(status, 200, "{body}");
    let (end_was, end) = (air + TimeDelta::seconds(6), air + TimeDelta::seconds(126));
    assert_eq!(body["extended"]["end_was"], stamp(end_was));
    assert_eq!(body["extended"]["end"], stamp(end));
    assert_eq!(body["extended"]["cooldown"], stamp(end + TimeDelta::seconds(2)));
    let (status, body) = extend(&base, "later", json!({"command": "extend", "by": "2m"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_on_air")), "{body}");
    let (status, body) = extend(&base, "plain", json!({"command": "extend", "until": stamp(end)})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not_scheduled")), "{body}");

    // The plan shows the new end and cooldown.
    let plan: Value =
        reqwest::get(format!("{base}/api/v1/plan?hours=1&broadcast=ext")).await.unwrap().json().await.unwrap();
    let planned = |plan: &Value, step: &str| -> Option<String> {
        plan["rows"].as_array().unwrap().iter().find(|row| row["step"] == step).map(|row| {
            assert!(row["note"].as_str().unwrap().starts_with("held"), "{row}");
            row["planned"].as_str().unwrap().to_string()
        })
    };
    assert_eq!(planned(&plan, "end"), Some(stamp(end)), "{plan}");
    assert_eq!(planned(&plan, "cooldown"), Some(stamp(end + TimeDelta::seconds(2))), "{plan}");
    // `from` moves the window: from the air time, the whole occurrence.
    let plan: Value =
        reqwest::get(format!("{base}/api/v1/plan?hours=1&broadcast=ext&from={}", air.format("%Y-%m-%dT%H:%M:%SZ")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(planned(&plan, "air"), Some(stamp(air)), "{plan}");
    assert_eq!(planned(&plan, "end"), Some(stamp(end)), "{plan}");
    let (status, _) = crate::operations::get(&base, "/api/v1/plan?from=someday").await;
    assert_eq!(status, 400);

    // A restart in between, with the daemon's clock 1m50s ahead: the original end and cooldown
    // are past, the extended end is 10-odd seconds away.
    daemon.stop().await.unwrap();
    let audit = SqliteStore::open_read_only(&store).unwrap().audit("ext", 1000).unwrap();
    let command = audit.iter().find(|row| row.kind == "command").expect("the extend is audited");
    assert_eq!(command.detail["end_was"], stamp(end_was));
    assert_eq!(command.detail["end"], stamp(end));
    assert_eq!(command.detail["by"], "api");
    assert_eq!(command.detail["note"], "extra time");
    let offset = TimeDelta::seconds(110);
    let clock: SharedClock = Arc::new(OffsetClock::new(offset));
    let daemon = Daemon::start_with_clock(&settings, Library::built_in(), clock).await.unwrap();
    assert_eq!(state_of(&store, "ext").as_deref(), Some("live"), "still on air after the restart");
    let mut stopped_at = None;
    let started = Instant::now();
    while stopped_at.is_none() {
        if program_calls(&emulator, "ext").iter().any(|call| call.starts_with("DELETE")) {
            stopped_at = Some(real_now() + offset);
        }
        assert!(started.elapsed() < Duration::from_secs(40), "the program was not stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped_at = stopped_at.unwrap();
    assert!(stopped_at >= end, "the program stopped at {stopped_at}, before the new end {end}");
    assert!(stopped_at - end < TimeDelta::seconds(2), "the program stopped at {stopped_at}, well after {end}");
    until(Duration::from_secs(20), "ext idle", || state_of(&store, "ext").as_deref() == Some("idle")).await;
    daemon.stop().await.unwrap();

    let steps = published(&store, "ext");
    let names: Vec<(&str, DateTime<Utc>)> = steps.iter().map(|row| (row.1.as_str(), row.2)).collect();
    assert_eq!(
        names,
        [
            ("warmup", air - TimeDelta::seconds(3)),
            ("scale", air - TimeDelta::seconds(1)),
            ("air", air),
            ("end", end),
            ("cooldown", end + TimeDelta::seconds(2)),
        ],
        "the end and cooldown fired at the extended times only"
    );
    assert_eq!(state_of(&store, "later"), None, "later never started");
    assert!(published(&store, "later").is_empty());
    assert!(published(&store, "plain").is_empty());
    println!(
        "extend by 2m through a restart: the program stopped {} ms after the new end ({}); fired minus planned: {}",
        (stopped_at - end).num_milliseconds(),
        stamp(end),
        lateness(&steps, 100).join(", ")
    );
}

#[test]
fn plan_from_a_date_previews_next_springs_daylight_saving_change() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("onair.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\nstate_dir = \"{}\"\n[broadcasts.night.schedule]\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"\n\
             duration = \"10m\"\nlead = {{ channel = \"2m\", scale = \"1m\" }}\n",
            directory.path().display()
        ),
    )
    .unwrap();
    let plan = |from: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_onair"))
            .arg("--config")
            .arg(&file)
            .env_remove("RUST_LOG")
            .env_remove("ONAIR_CONFIG")
            .args(["plan", "--from", from, "--hours", "24", "--json"])
            .output()
            .unwrap()
    };
    let output = plan("2027-03-28");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(rows.iter().all(|row| row["planned"].as_str().unwrap() >= "2027-03-28T00:00:00.000Z"), "{rows:?}");
    let air = rows.iter().find(|row| row["step"] == "air").expect("the night's air time");
    assert_eq!(air["planned"], "2027-03-28T01:00:00.000Z");
    assert!(air["note"].as_str().unwrap().contains("does not exist"), "{air}");
    // An instant with an offset is that instant (01:00Z, the shifted air time, included).
    let output = plan("2027-03-28T02:00:00+01:00");
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let steps: Vec<(&str, &str)> =
        rows.iter().map(|row| (row["step"].as_str().unwrap(), row["planned"].as_str().unwrap())).collect();
    assert_eq!(steps[0], ("air", "2027-03-28T01:00:00.000Z"), "{rows:?}");
    assert_eq!(steps[3], ("warmup", "2027-03-29T00:28:00.000Z"), "the next night's, in summer time: {rows:?}");
    let output = plan("next spring");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a date"), "{output:?}");
}
