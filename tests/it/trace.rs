//! One trace from event to REST call: a real `onair run` logging JSON, three broadcasts in
//! different states, one start-now; one grep for its event id finds the broker's delivery, the
//! lane's decision (with the transition), the executor's actions and each REST request with ARM's
//! correlation id, and nothing about the other broadcasts.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use onair::event::{self, Event};
use serde_json::{Value, json};

use crate::broker::{EXCLUSIVE, daemon_config, onair, state_of, terminate};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::rabbit::{self, publish_all};

/// The filter `docs/operations.md` gives for following one event.
const FILTER: &str = "info,onair::broker=debug,onair::engine=debug,onair::media=debug";

const BROADCASTS: &str = "\
[broadcasts.alpha]\nendpoint = \"ep-alpha\"\nunits = { on_air = 2, off_air = 1 }\n\
[broadcasts.bravo]\nendpoint = \"ep-bravo\"\nunits = { on_air = 2, off_air = 1 }\n\
[broadcasts.charlie]\nendpoint = \"ep-charlie\"\nunits = { on_air = 2, off_air = 1 }\n";

fn run_json(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    onair(config)
        .args(["--log-format", "json", "run"])
        .env("RUST_LOG", FILTER)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn step(broadcast: &str, step: &str) -> Event {
    let data = json!({"broadcast": broadcast, "occurrence": "20261124t1800z", "step": step});
    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
    Event::new(format!("{broadcast}/20261124t1800z/{step}"), event::SCHEDULE_FIRED, broadcast, data, now)
}

/// Waits until `broadcast` is in `expected` with no pending action.
async fn settled(store: &Path, broadcast: &str, expected: &str, log: &Path) {
    let started = Instant::now();
    loop {
        let state = state_of(store, broadcast);
        let pending = crate::helpers::pending_actions_of(store, broadcast);
        if state.as_deref() == Some(expected) && pending == 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{broadcast} never settled in {expected}: {state:?} with {pending} pending actions; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The spans a log line is in, outermost first, and its current span.
fn spans(line: &Value) -> Vec<&Value> {
    let mut spans: Vec<&Value> = line["spans"].as_array().map(|spans| spans.iter().collect()).unwrap_or_default();
    if line["span"].is_object() {
        spans.push(&line["span"]);
    }
    spans
}

/// The span named `name` the line is in, if any.
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    spans(line).into_iter().find(|span| span["name"] == name)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grep_for_an_event_id_follows_it_from_the_broker_to_each_rest_call() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut settings = emulator_settings();
    settings.quotas.live_events = 10;
    settings.quotas.streaming_endpoints = 10;
    let emulator = TestEmulator::start(settings).await;
    let broker = rabbit::settings("trace");
    let directory = tempfile::tempdir().unwrap();
    let config = daemon_config(directory.path(), &emulator, &broker, BROADCASTS);
    let store = directory.path().join("onair.db");
    let log = directory.path().join("onair.log");
    let mut daemon = run_json(&config, &log);

    // bravo waits in standby, charlie is live, alpha is idle.
    publish_all(&broker, vec![step("bravo", "warmup"), step("charlie", "warmup")], 1).await;
    settled(&store, "bravo", "standby", &log).await;
    settled(&store, "charlie", "standby", &log).await;
    publish_all(&broker, vec![step("charlie", "air")], 1).await;
    settled(&store, "charlie", "live", &log).await;

    let id = format!("trace-start-now-{}", uuid::Uuid::new_v4().simple());
    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
    let start_now = Event::new(id.clone(), "onair.command.start-now", "alpha", json!({"by": "trace test"}), now);
    publish_all(&broker, vec![start_now], 1).await;
    settled(&store, "alpha", "live", &log).await;
    let (code, _) = terminate(&mut daemon, Duration::from_secs(10));
    assert_eq!(code, Some(0));

    let text_log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text_log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect();
    // `grep <id>`.
    let grep: Vec<&Value> =
        text_log.lines().zip(&lines).filter(|(raw, _)| raw.contains(&id)).map(|(_, line)| line).collect();
    let of_event = |line: &&Value, name: &str| span(line, name).is_some_and(|span| span["event_id"] == id.as_str());
    let shown = || grep.iter().map(|line| line.to_string()).collect::<Vec<_>>().join("\n");

    // The broker consumer: the delivery, with its tag.
    assert!(
        grep.iter().any(|line| text(&line["target"]).starts_with("onair::broker")
            && of_event(line, "delivery")
            && span(line, "delivery").is_some_and(|span| span["delivery_tag"].is_u64())),
        "no broker consumer line:\n{}",
        shown()
    );
    // The lane: the decision, with its transition.
    let transitions: Vec<&str> = grep
        .iter()
        .filter(|line| of_event(line, "event"))
        .filter_map(|line| span(line, "event")?["transition"].as_str())
        .collect();
    assert!(
        transitions.iter().any(|transition| transition.contains("idle -> warming")),
        "no lane line with the transition: {transitions:?}\n{}",
        shown()
    );
    assert!(grep.iter().any(|line| of_event(line, "event") && line["message"] == "Decided."), "{}", shown());
    // The executor: each action the decision queued, with its name and outbox id.
    let actions: std::collections::BTreeSet<&str> = grep
        .iter()
        .filter(|line| of_event(line, "action"))
        .filter_map(|line| span(line, "action").filter(|span| span["action_id"].is_i64())?["action"].as_str())
        .collect();
    assert_eq!(actions, ["channel.start", "endpoint.start"].into_iter().collect(), "{}", shown());
    // The media client: each REST request and its answer, with ARM's correlation id.
    let answered: Vec<&&Value> = grep
        .iter()
        .filter(|line| text(&line["target"]).starts_with("onair::media") && line["message"] == "Request answered.")
        .collect();
    assert!(!answered.is_empty(), "no REST request line:\n{}", shown());
    for line in &answered {
        assert!(of_event(line, "action"), "{line}");
        assert!(!text(&line["correlation_id"]).is_empty(), "no correlation id: {line}");
        assert!(!text(&line["client_request_id"]).is_empty(), "no client request id: {line}");
        assert!(line["status"].is_u64(), "{line}");
    }
    let writes = answered.iter().filter(|line| text(&line["operation"]).starts_with("PUT ")).count();
    assert!(writes > 0, "no PUT among the requests:\n{}", shown());

    // Every line of the grep is about alpha; the other broadcasts' lines do not carry the id.
    for line in &grep {
        for span in spans(line) {
            assert!(matches!(span["broadcast"].as_str(), None | Some("alpha")), "{line}");
        }
    }
    for other in ["bravo", "charlie"] {
        let theirs: Vec<&Value> =
            lines.iter().filter(|line| spans(line).iter().any(|span| span["broadcast"] == other)).collect();
        assert!(theirs.iter().any(|line| span(line, "action").is_some()), "no action line for {other}");
        assert!(theirs.iter().all(|line| !line.to_string().contains(&id)), "{other} carries {id}");
    }
    println!(
        "trace: {} log lines, {} carry {id}: transitions {transitions:?}, actions {actions:?}, {} REST answers ({writes} writes)",
        lines.len(),
        grep.len(),
        answered.len()
    );
}
