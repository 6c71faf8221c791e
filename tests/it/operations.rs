//! The operations listener in a real daemon (RabbitMQ, engine, SQLite, emulator): probes, the
//! JSON API and its commands, metrics, the OpenAPI document, the dashboard in headless Chromium.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use onair::daemon::Daemon;
use onair::machine::Library;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::broker::EXCLUSIVE;
use crate::helpers::{TestEmulator, emulator_settings};
use crate::rabbit;
use crate::schedule::daemon_settings;

pub(crate) const TOKEN: &str = "operations-api-token-0123456789";

/// news airs daily at the top of the hour eleven to twelve hours from now (UTC): the test never
/// runs near its steps (a fixed air time made it fail every day in the hour before it), so its
/// next step is the warm-up and the plan's next 48 hours start with a whole occurrence.
fn news() -> String {
    let hour = crate::helpers::hour_from_now(12);
    format!(
        r#"
[broadcasts.news]
units = {{ on_air = 2, off_air = 0 }}
[broadcasts.news.schedule]
cron = "0 {hour} * * *"
timezone = "UTC"
duration = "30m"
[broadcasts.sport]
channel = "sport"
[broadcasts.travel]
channel = "travel"
"#
    )
}

/// A daemon with the operations listener on a free port and an API token.
pub(crate) async fn daemon_with_http(
    directory: &Path,
    emulator: &TestEmulator,
    broker: &onair::broker::Settings,
    broadcasts: &str,
) -> (Daemon, String, onair::daemon::Settings) {
    let mut settings = daemon_settings(directory, emulator, broker, broadcasts);
    settings.http.enabled = true;
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.api_token = Some(SecretString::from(TOKEN));
    settings.health.media_check_interval = Duration::from_millis(500);
    let daemon = Daemon::start(&settings, Library::built_in()).await.unwrap();
    let base = format!("http://{}", daemon.http_address().unwrap());
    (daemon, base, settings)
}

pub(crate) async fn until_async<F: Future<Output = bool>>(limit: Duration, what: &str, mut done: impl FnMut() -> F) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn command(base: &str, broadcast: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{base}/api/v1/broadcasts/{broadcast}/commands")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn state_of(base: &str, broadcast: &str) -> Option<String> {
    let (_, body) = get(base, &format!("/api/v1/broadcasts/{broadcast}")).await;
    body["state"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_api_commands_and_metrics_tell_the_truth() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("operations");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, settings) = daemon_with_http(directory.path(), &emulator, &broker, &news()).await;

    let (status, body) = get(&base, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    until_async(Duration::from_secs(20), "ready", || async { get(&base, "/readyz").await.0 == 200 }).await;
    let (_, ready) = get(&base, "/readyz").await;
    for part in ["store", "broker", "media", "progress", "start"] {
        assert_eq!(ready["checks"][part]["ok"], true, "{part}: {ready}");
    }

    // A store that cannot take a write makes the daemon not ready, and says so.
    let lock = rusqlite::Connection::open(&settings.engine.store).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let (status, ready) = get(&base, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["store"]["ok"], false, "{ready}");
    assert_eq!(ready["checks"]["broker"]["ok"], true, "{ready}");
    println!("readyz with the store locked: {}", ready["checks"]["store"]["detail"]);
    lock.execute_batch("ROLLBACK;").unwrap();
    drop(lock);
    assert_eq!(get(&base, "/readyz").await.0, 200);

    // Reads.
    let (status, list) = get(&base, "/api/v1/broadcasts").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["broadcasts"].as_array().unwrap().iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids, ["news", "sport", "travel"]);
    assert_eq!(list["broadcasts"][0]["next_step"]["step"], "warmup", "{list}");
    assert_eq!(list["broadcasts"][0]["scheduled"], true);
    assert_eq!(list["broadcasts"][1]["state"], Value::Null, "never decided yet");
    assert_eq!(get(&base, "/api/v1/broadcasts/weather").await.0, 404);
    let (status, plan) = get(&base, "/api/v1/plan?hours=48").await;
    assert_eq!(status, 200);
    let steps: Vec<&str> = plan["rows"].as_array().unwrap().iter().filter_map(|row| row["step"].as_str()).collect();
    assert_eq!(steps[..5], ["warmup", "scale", "air", "end", "cooldown"], "{plan}");
    assert_eq!(get(&base, "/api/v1/plan?hours=0").await.0, 400);

    // Commands: refused without the token, with another one, or malformed; accepted otherwise.
    let start = json!({"command": "start-now", "note": "rehearsal"});
    assert_eq!(command(&base, "news", None, start.clone()).await.0, 401);
    assert_eq!(command(&base, "news", Some("not-the-token-000000000"), start.clone()).await.0, 401);
    assert_eq!(command(&base, "news", Some(TOKEN), json!({"command": "launch"})).await.0, 400);
    assert_eq!(command(&base, "news", Some(TOKEN), json!({"command": "force-state"})).await.0, 400);
    assert_eq!(command(&base, "weather", Some(TOKEN), start.clone()).await.0, 404);
    let (status, accepted) = command(&base, "news", Some(TOKEN), start).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["type"], "onair.command.start-now");
    // Live, then published: the locator is an action of the live state, so its URL follows.
    until_async(Duration::from_secs(30), "news live and published", || async {
        let (_, news) = get(&base, "/api/v1/broadcasts/news").await;
        news["state"] == "live" && news["vars"]["hls"].as_str().is_some_and(|hls| hls.contains("m3u8"))
    })
    .await;
    let (_, news) = get(&base, "/api/v1/broadcasts/news").await;
    assert_eq!(news["state"], "live", "{news}");
    assert!(news["vars"]["hls"].as_str().unwrap_or_default().contains("/news-"), "news's own URL: {news}");
    let (_, audit) = get(&base, "/api/v1/broadcasts/news/audit?limit=100").await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|entry| entry["event_id"] == accepted["event_id"] && entry["to"] == "warming"),
        "{audit}"
    );
    let (_, recent) = get(&base, "/api/v1/audit?limit=5").await;
    assert_eq!(recent["entries"].as_array().unwrap().len(), 5);
    let (status, forced) = command(
        &base,
        "sport",
        Some(TOKEN),
        json!({"command": "force-state", "state": "failed", "note": "encoder room flooded"}),
    )
    .await;
    assert_eq!(status, 202, "{forced}");
    until_async(Duration::from_secs(10), "sport forced", || async {
        state_of(&base, "sport").await.as_deref() == Some("failed")
    })
    .await;
    // Each broadcast reads back its own record: live, failed, and none yet.
    assert_eq!(state_of(&base, "news").await.as_deref(), Some("live"));
    let (_, travel) = get(&base, "/api/v1/broadcasts/travel").await;
    assert_eq!((travel["id"].as_str(), &travel["state"]), (Some("travel"), &Value::Null), "{travel}");
    assert_eq!(travel["vars"], json!({}), "{travel}");

    // Dead letters: one malformed message, listed with its reason, replayed (and dead again).
    let publisher = onair::broker::Publisher::new(std::sync::Arc::new(broker.clone()));
    let properties = lapin::BasicProperties::default().with_message_id("bad-1".into()).with_delivery_mode(2);
    publisher.publish_to(&broker.exchange, "bad", b"{not json", properties, true).await.unwrap();
    until_async(Duration::from_secs(10), "a dead letter", || async {
        get(&base, "/api/v1/dead-letters").await.1["dead_letters"].as_array().is_some_and(|letters| letters.len() == 1)
    })
    .await;
    let (_, letters) = get(&base, "/api/v1/dead-letters").await;
    assert!(letters["dead_letters"][0]["reason"].as_str().unwrap().contains("JSON"), "{letters}");
    let replay = reqwest::Client::new().post(format!("{base}/api/v1/dead-letters/replay")).json(&json!({}));
    assert_eq!(replay.try_clone().unwrap().send().await.unwrap().status(), 401);
    let replayed: Value = replay.bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(replayed, json!({"replayed": 1, "kept": 0}));
    publisher.close().await;

    // Metrics.
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert!(value("onair_events_consumed_total") >= 4.0);
    assert!(value("onair_events_acked_total") >= 2.0, "the two commands");
    assert!(value("onair_events_dead_lettered_total") >= 1.0);
    assert_eq!(value("onair_broadcasts{state=\"live\"}"), 1.0);
    assert_eq!(value("onair_broadcasts{state=\"failed\"}"), 1.0);
    assert!(value("onair_decision_latency_seconds_count") >= 2.0);
    assert!(value("onair_action_attempts_total{action=\"channel.start\"}") >= 1.0);
    assert!(value("onair_heartbeat_age_seconds{channel=\"news\",broadcast=\"news\"}") >= 0.0);
    assert_eq!(value("onair_broker_ready"), 1.0);
    assert_eq!(value("onair_schedules_armed"), 1.0, "news alone is scheduled");
    assert_eq!(value("onair_broker_reconnects_total"), 0.0);
    assert!(text.contains("# TYPE onair_schedule_lateness_seconds histogram"), "{text}");
    assert!(text.ends_with("# EOF\n"));
    println!(
        "metrics: consumed {}, acked {}, dead-lettered {}, decisions {} (latency sum {:.3} s)",
        value("onair_events_consumed_total"),
        value("onair_events_acked_total"),
        value("onair_events_dead_lettered_total"),
        value("onair_decision_latency_seconds_count"),
        value("onair_decision_latency_seconds_sum"),
    );
    daemon.stop().await.unwrap();
}

/// Three broadcasts in three states (live, failed, standby) and a fourth with no record: the API
/// (one by one and in the list) and `onair status` show each its own state and variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broadcast_reads_back_its_own_state_through_the_api_and_status() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("own-state");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts = "[broadcasts.alpha]\nchannel = \"alpha\"\n[broadcasts.news]\nunits = { on_air = 2, off_air = 0 }\n\
                      [broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.weather]\nchannel = \"weather\"\n";
    let (daemon, base, _settings) = daemon_with_http(directory.path(), &emulator, &broker, broadcasts).await;
    until_async(Duration::from_secs(20), "ready", || async { get(&base, "/readyz").await.0 == 200 }).await;

    let start = json!({"command": "start-now", "note": "regression"});
    assert_eq!(command(&base, "news", Some(TOKEN), start).await.0, 202);
    for (broadcast, state) in [("sport", "failed"), ("weather", "standby")] {
        let force = json!({"command": "force-state", "state": state, "note": format!("{broadcast} test")});
        assert_eq!(command(&base, broadcast, Some(TOKEN), force).await.0, 202);
    }
    let expected = [("alpha", None), ("news", Some("live")), ("sport", Some("failed")), ("weather", Some("standby"))];
    // Wait on the list (every record at once), then read each broadcast on its own.
    let states = |list: Value| -> Vec<(String, Option<String>)> {
        list["broadcasts"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| {
                        (
                            entry["id"].as_str().unwrap_or_default().to_string(),
                            entry["state"].as_str().map(str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let wanted: Vec<(String, Option<String>)> =
        expected.iter().map(|(id, state)| (id.to_string(), state.map(str::to_string))).collect();
    until_async(Duration::from_secs(30), "three states in the list", || async {
        states(get(&base, "/api/v1/broadcasts").await.1) == wanted
    })
    .await;
    // news is live as soon as start-now is decided; its URL comes with its locator, an action later.
    until_async(Duration::from_secs(30), "news published", || async {
        get(&base, "/api/v1/broadcasts/news").await.1["vars"]["hls"].as_str().is_some_and(|hls| !hls.is_empty())
    })
    .await;

    // One by one.
    for (broadcast, state) in expected {
        let (status, body) = get(&base, &format!("/api/v1/broadcasts/{broadcast}")).await;
        assert_eq!(status, 200);
        assert_eq!((body["id"].as_str(), body["state"].as_str()), (Some(broadcast), state), "{body}");
        let hls = body["vars"]["hls"].as_str().unwrap_or_default();
        match broadcast {
            "news" => assert!(hls.contains("/news-") && hls.contains("m3u8"), "news's own URL: {body}"),
            "alpha" => assert_eq!(body["vars"], json!({}), "no record, no variables: {body}"),
            _ => assert_eq!(hls, "", "{broadcast} never published: {body}"),
        }
        let (_, audit) = get(&base, &format!("/api/v1/broadcasts/{broadcast}/audit?limit=1000")).await;
        let entries = audit["entries"].as_array().unwrap();
        assert!(entries.iter().all(|entry| entry["broadcast"] == broadcast), "{audit}");
        // Each was created by the config file (a `config` row); only those that were decided
        // have more.
        let (config, decided): (Vec<&Value>, Vec<&Value>) = entries.iter().partition(|entry| entry["kind"] == "config");
        assert_eq!(config.len(), 1, "{broadcast}: {audit}");
        assert_eq!(config[0]["reason"], "broadcast created by the config file", "{broadcast}: {audit}");
        assert_eq!(decided.is_empty(), state.is_none(), "{broadcast}: {audit}");
    }
    let listed = states(get(&base, "/api/v1/broadcasts").await.1);
    assert_eq!(listed, wanted);
    daemon.stop().await.unwrap();

    // What `onair status` prints, from the same store.
    let config = directory.path().join("onair.toml");
    let output = crate::broker::onair(&config).args(["status", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let shown = crate::cli::status_states(&report);
    assert_eq!(
        shown,
        [("alpha", "idle (no event yet)"), ("news", "live"), ("sport", "failed"), ("weather", "standby")]
    );
    assert!(report[1]["vars"]["hls"].as_str().is_some_and(|hls| hls.contains("/news-")), "{report}");
    assert_eq!(report[3]["vars"]["hls"], "", "{report}");
    let one = crate::broker::onair(&config).args(["status", "--broadcast", "sport"]).output().unwrap();
    let text = String::from_utf8(one.stdout).unwrap();
    assert!(text.starts_with("sport  failed since "), "{text}");
    assert_eq!(text.lines().filter(|line| !line.starts_with(' ')).count(), 1, "{text}");
    println!("own state: {listed:?}; status: {shown:?}");
}

/// The routes the router serves, as the OpenAPI document names them.
const ROUTES: [(&str, &str); 16] = [
    ("get", "/"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/broadcasts"),
    ("get", "/api/v1/broadcasts/{id}"),
    ("put", "/api/v1/broadcasts/{id}"),
    ("delete", "/api/v1/broadcasts/{id}"),
    ("get", "/api/v1/broadcasts/{id}/audit"),
    ("post", "/api/v1/broadcasts/{id}/commands"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/plan"),
    ("get", "/api/v1/dead-letters"),
    ("post", "/api/v1/dead-letters/replay"),
    ("post", "/api/v1/reload"),
];

#[test]
fn the_openapi_document_describes_exactly_the_routes_served() {
    let document: Value = serde_json::from_str(onair::http::OPENAPI).unwrap();
    assert_eq!(document["openapi"].as_str().map(|version| version.starts_with("3.")), Some(true));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys().filter(|key| *key != "parameters") {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> =
        ROUTES.iter().map(|(method, path)| (method.to_string(), path.to_string())).collect();
    served.sort();
    assert_eq!(documented, served);
    for (method, path) in ROUTES.iter().filter(|(method, _)| *method != "get") {
        let security = &document["paths"][path][method]["security"];
        assert!(security.as_array().is_some_and(|schemes| !schemes.is_empty()), "{path} needs the bearer token");
    }
}

/// The screenshot the dashboard test leaves behind.
pub(crate) fn artefact(name: &str) -> PathBuf {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&directory).unwrap();
    directory.join(name)
}

/// A force-state to a state the broadcast's machine lacks is refused (400, with the machine's
/// states) and publishes nothing; bearer tokens are taken exactly as given. Three broadcasts on
/// two machines, in three different states, each checked before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_state_to_an_unknown_state_and_padded_tokens_are_refused() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("forcestate");
    let directory = tempfile::tempdir().unwrap();
    let machines = directory.path().join("machines");
    std::fs::create_dir_all(&machines).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/machines/examples/always-on.toml"),
        machines.join("always-on.toml"),
    )
    .unwrap();
    let broadcasts = "[broadcasts.news]\n[broadcasts.sport]\n[broadcasts.lobby]\nmachine = \"always-on\"\n";
    let mut settings = daemon_settings(directory.path(), &emulator, &broker, broadcasts);
    settings.engine.machines_dir = Some(machines);
    settings.http.enabled = true;
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.api_token = Some(SecretString::from(TOKEN));
    let library = onair::daemon::load_machines(settings.engine.machines_dir.as_deref());
    assert!(library.problems.is_empty(), "{:?}", library.problems);
    let daemon = Daemon::start(&settings, library).await.unwrap();
    let base = format!("http://{}", daemon.http_address().unwrap());
    until_async(Duration::from_secs(20), "consumer ready", || async { daemon.broker_status().is_ready() }).await;

    // Three broadcasts, three states (two machines).
    let force = |state: &str, note: &str| json!({"command": "force-state", "state": state, "note": note});
    for (id, state) in [("news", "standby"), ("sport", "failed"), ("lobby", "lost")] {
        let (status, body) = command(&base, id, Some(TOKEN), force(state, "set up the test")).await;
        assert_eq!(status, 202, "{id}: {body}");
        until_async(Duration::from_secs(10), id, || async { listed_state(&base, id).await.as_deref() == Some(state) })
            .await;
    }
    let audit_len = |id: &'static str| {
        let base = base.clone();
        async move {
            let (_, audit) = get(&base, &format!("/api/v1/broadcasts/{id}/audit?limit=1000")).await;
            audit["entries"].as_array().map_or(0, Vec::len)
        }
    };
    let before = [audit_len("news").await, audit_len("sport").await, audit_len("lobby").await];
    assert!(before.iter().all(|rows| *rows >= 1), "{before:?}");

    // States each machine lacks: refused with the machine's states in the message.
    let live_states = "cooldown, degraded, ending, failed, idle, live, standby, waiting, warming";
    for (id, target, machine, known) in [
        ("news", "bogus", "live", live_states),
        ("sport", "watching", "live", live_states),
        ("lobby", "failed", "always-on", "lost, watching"),
    ] {
        let (status, body) = command(&base, id, Some(TOKEN), force(target, "mistake")).await;
        println!("force-state {id} -> {target}: {status} {}", body["error"]["message"]);
        assert_eq!(status, 400, "{id}: {body}");
        assert_eq!(body["error"]["code"], "bad_command", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("{target:?} is not a state of machine {machine:?}")), "{message}");
        assert!(message.ends_with(&format!("its states: {known}")), "{message}");
    }

    // Bearer tokens: exactly `Bearer <token>`. (Spaces at the very end of the header line are not
    // part of the field value in HTTP (RFC 9110 5.5): the HTTP parser drops them before onair.)
    let padded = [
        format!("Bearer  {TOKEN}"),
        format!("Bearer \t{TOKEN}"),
        format!("Bearer {TOKEN} x"),
        format!("Bearer {} {}", &TOKEN[..10], &TOKEN[10..]),
        format!("Bearer {TOKEN}\u{a0}"),
        format!("Bearer {}", TOKEN.replace('-', " ")),
    ];
    for value in &padded {
        let response = reqwest::Client::new()
            .post(format!("{base}/api/v1/broadcasts/news/commands"))
            .header("authorization", value.as_bytes())
            .json(&force("live", "padded token"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{value:?}");
    }

    // Nothing was published: a later command is decided, and nothing else changed.
    let (status, _) = command(&base, "news", Some(TOKEN), force("cooldown", "back to normal")).await;
    assert_eq!(status, 202);
    until_async(Duration::from_secs(10), "news cooldown", || async {
        listed_state(&base, "news").await.as_deref() == Some("cooldown")
    })
    .await;
    assert_eq!(listed_state(&base, "sport").await.as_deref(), Some("failed"));
    assert_eq!(listed_state(&base, "lobby").await.as_deref(), Some("lost"));
    let after = [audit_len("news").await, audit_len("sport").await, audit_len("lobby").await];
    assert_eq!(after, [before[0] + 1, before[1], before[2]], "one decision more for news, none for the others");
    println!("audit rows before {before:?}, after {after:?}");
    daemon.stop().await.unwrap();
}

/// A broadcast's state as the list shows it.
async fn listed_state(base: &str, broadcast: &str) -> Option<String> {
    let (_, list) = get(base, "/api/v1/broadcasts").await;
    list["broadcasts"].as_array()?.iter().find(|entry| entry["id"] == broadcast)?["state"].as_str().map(str::to_string)
}
