//! Every `ActionKind`, from a machine's `do = "…"` through the loader, `step` and the real
//! executor to its effect on the emulator (or on a local HTTP receiver for `http`). The loop runs
//! over `ActionKind::ALL` and the cases are exhaustive matches: a new action fails to compile here
//! until it has a case.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, Uri};
use onair::engine::Runner;
use onair::event::{self, Event};
use onair::machine::{self, Action, ActionKind, Instance, Library};
use onair::media::Client;
use onair::media::model::{LiveEventState, StreamingEndpointState};
use onair::store::OutboxRow;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::daemon::settings;
use crate::helpers::{TestEmulator, emulator_settings};
use crate::lifecycle::writes;

/// What a case needs (the emulator allows five live events and two endpoints, so cases share them): actions run
/// first (straight through the runner), then the action itself
/// with these parameters.
struct Case {
    setup: Vec<(ActionKind, Value)>,
    params: Value,
}

fn case(kind: ActionKind, receiver: &str) -> Case {
    let start = |channel: &str| (ActionKind::ChannelStart, json!({"channel": channel}));
    let create = |channel: &str, name: &str| (ActionKind::ProgramCreate, json!({"channel": channel, "name": name}));
    let endpoint = (ActionKind::EndpointStart, json!({}));
    let (setup, params) = match kind {
        ActionKind::ChannelStart => (vec![], json!({"channel": "c-program"})),
        ActionKind::ChannelStop => (vec![start("c-stop")], json!({"channel": "c-stop", "remove_outputs": true})),
        ActionKind::ChannelReset => (vec![start("c-reset")], json!({"channel": "c-reset"})),
        ActionKind::ChannelAllocate => (vec![], json!({"channel": "c-allocate"})),
        ActionKind::ProgramCreate => (
            vec![start("c-program")],
            json!({"channel": "c-program", "name": "p-create", "asset": "a-create", "manifest": "m-create",
                   "archive_window": "PT2H", "description": "every action"}),
        ),
        ActionKind::ProgramStop => {
            (vec![start("c-program"), create("c-program", "p-stop")], json!({"channel": "c-program", "name": "p-stop"}))
        }
        ActionKind::LocatorPublish => (
            vec![endpoint.clone(), start("c-program"), create("c-program", "p-publish")],
            json!({"name": "l-publish", "asset": "p-publish", "policy": "Predefined_ClearStreamingOnly",
                   "endpoint": "default"}),
        ),
        ActionKind::LocatorUnpublish => (
            vec![
                endpoint.clone(),
                start("c-program"),
                create("c-program", "p-unpublish"),
                (ActionKind::LocatorPublish, json!({"name": "p-unpublish"})),
            ],
            json!({"name": "p-unpublish"}),
        ),
        ActionKind::EndpointStart => (vec![], json!({"endpoint": "e-other"})),
        ActionKind::EndpointStop => {
            (vec![(ActionKind::EndpointStart, json!({"endpoint": "e-other"}))], json!({"endpoint": "e-other"}))
        }
        ActionKind::EndpointScale => (vec![], json!({"endpoint": "default", "units": 2})),
        ActionKind::Notify => {
            (vec![], json!({"message": "every action", "severity": "warning", "data": {"checked": true}}))
        }
        ActionKind::Http => (
            vec![],
            json!({"method": "PUT", "url": format!("{receiver}/hook"), "headers": {"X-Check": "yes"},
                   "body": {"every": "action"}, "expect": 200}),
        ),
        // `${event.data}` is the recorded action, as resume passes it.
        ActionKind::Rerun => (vec![start("c-stop")], json!({"action": "${event.data}"})),
    };
    Case { setup, params }
}

/// The event each case's transition fires on; only `rerun` reads its data.
fn trigger() -> Event {
    let recorded = json!({"action": "channel.stop", "params": {"channel": "c-stop"}});
    Event::new("e-every-action", "test.run", "news", recorded, now())
}

fn now() -> chrono::DateTime<chrono::Utc> {
    onair::clock::Clock::now(&onair::clock::SystemClock)
}

/// A one-state machine whose one transition runs `kind` with `params`, written as TOML.
fn machine_text(kind: ActionKind, params: &Value) -> String {
    let mut action = params.as_object().cloned().unwrap_or_default();
    action.insert("do".into(), json!(kind.name()));
    let machine = json!({
        "initial": "ready",
        "states": {"ready": {}},
        "transitions": [{"from": "ready", "on": "test.run", "actions": [action]}],
    });
    toml::to_string(&machine).unwrap()
}

fn row(id: i64, kind: &str, params: Value) -> OutboxRow {
    OutboxRow {
        id,
        broadcast: "news".into(),
        decision: id,
        position: 0,
        kind: kind.into(),
        params,
        status: "pending".into(),
        attempts: 0,
        created: now(),
    }
}

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: String,
}

/// A local HTTP server that records every request and answers 200.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
        let log = Arc::clone(&log);
        async move {
            log.lock().unwrap().push(Received { method, path: uri.path().to_string(), headers, body });
            "received"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

/// Where the actions' effects show: the emulator, the receiver, and the events published.
struct Effects {
    emulator: TestEmulator,
    client: Client,
    received: Arc<Mutex<Vec<Received>>>,
    published: mpsc::UnboundedReceiver<Event>,
}

#[tokio::test]
async fn every_action_runs_through_step_and_the_executor_and_has_its_effect() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let (receiver, received) = receiver().await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(&emulator, directory.path(), "[broadcasts.news]\n");
    let broadcast = settings.engine.broadcasts["news"].clone();
    let (outbound, published) = mpsc::unbounded_channel();
    let runner = Runner::new(Some(emulator.client()), outbound, onair::clock::system());
    let client = emulator.client();
    let mut effects = Effects { emulator, client, received, published };
    let mut ids = 0;

    for kind in ActionKind::ALL.iter().copied() {
        let Case { setup, params } = case(kind, &receiver);
        for (before, params) in setup {
            ids += 1;
            runner.run(&row(ids, before.name(), params), &broadcast).await.unwrap_or_else(|error| {
                panic!("{kind}: setting up with {before}: {error}");
            });
        }
        let action = decide(kind, &params, &broadcast.expression_view());
        ids += 1;
        let result = runner
            .run(&row(ids, &action.kind, action.params.clone()), &broadcast)
            .await
            .unwrap_or_else(|error| panic!("{kind}: {error}"));
        assert_effect(kind, &action, &result, ids, &mut effects).await;
    }
}

/// The action `step` decides for a machine that runs `kind` with `params`: the loader accepts
/// it with every parameter it takes, and step resolves it (a rerun to the action it repeats).
fn decide(kind: ActionKind, params: &Value, broadcast: &Value) -> Action {
    let text = machine_text(kind, params);
    let library = Library::load(
        vec![machine::MachineText { file: format!("{kind}.toml"), name: "every".into(), text }],
        Vec::new(),
    );
    assert!(library.problems.is_empty(), "{kind}: {:#?}", library.problems);
    let definition = library.get("every").unwrap();
    let decision = machine::step(definition, &Instance::new(definition), &trigger(), broadcast, now());
    assert_eq!(decision.actions.len(), 1, "{kind}: {}", decision.reason);
    decision.actions[0].clone()
}

/// What `kind` did, as the emulator, the receiver or the published events show it; `id` is the
/// outbox id it ran as.
async fn assert_effect(kind: ActionKind, action: &Action, result: &Value, id: i64, effects: &mut Effects) {
    let client = &effects.client;
    match kind {
        ActionKind::ChannelStart => {
            let event = client.get_live_event("c-program").await.unwrap().unwrap();
            assert_eq!(event.properties.resource_state, Some(LiveEventState::Running), "{kind}");
            assert!(result["ingest"].is_string(), "{kind}: {result}");
        }
        ActionKind::ChannelStop | ActionKind::Rerun => {
            assert_eq!(action.kind, "channel.stop", "{kind}");
            let event = client.get_live_event("c-stop").await.unwrap().unwrap();
            assert_eq!(event.properties.resource_state, Some(LiveEventState::Stopped), "{kind}");
        }
        ActionKind::ChannelReset => {
            let resets = writes(&effects.emulator.requests());
            assert!(resets.contains(&"POST liveEvents/c-reset/reset".to_string()), "{kind}: {resets:?}");
            assert_eq!(result["reset"], true, "{kind}");
        }
        ActionKind::ChannelAllocate => {
            let event = client.get_live_event("c-allocate").await.unwrap().unwrap();
            assert_eq!(event.properties.resource_state, Some(LiveEventState::StandBy), "{kind}");
        }
        ActionKind::ProgramCreate => {
            let output = client.get_live_output("c-program", "p-create").await.unwrap().unwrap();
            assert_eq!(output.properties.asset_name.as_deref(), Some("a-create"), "{kind}");
            assert_eq!(output.properties.manifest_name.as_deref(), Some("m-create"), "{kind}");
            assert!(client.get_asset("a-create").await.unwrap().is_some(), "{kind}");
        }
        ActionKind::ProgramStop => {
            assert!(client.get_live_output("c-program", "p-stop").await.unwrap().is_none(), "{kind}");
            assert!(client.get_asset("p-stop").await.unwrap().is_some(), "{kind}: the asset stays");
        }
        ActionKind::LocatorPublish => {
            assert!(client.get_streaming_locator("l-publish").await.unwrap().is_some(), "{kind}");
            assert!(result["hls"].is_string(), "{kind}: {result}");
        }
        ActionKind::LocatorUnpublish => {
            assert!(client.get_streaming_locator("p-unpublish").await.unwrap().is_none(), "{kind}");
        }
        ActionKind::EndpointStart => {
            let endpoint = client.get_streaming_endpoint("e-other").await.unwrap().unwrap();
            assert_eq!(endpoint.properties.resource_state, Some(StreamingEndpointState::Running), "{kind}");
        }
        ActionKind::EndpointStop => {
            let endpoint = client.get_streaming_endpoint("e-other").await.unwrap().unwrap();
            assert_eq!(endpoint.properties.resource_state, Some(StreamingEndpointState::Stopped), "{kind}");
        }
        ActionKind::EndpointScale => {
            let endpoint = client.get_streaming_endpoint("default").await.unwrap().unwrap();
            assert_eq!(endpoint.properties.scale_units, Some(2), "{kind}");
        }
        ActionKind::Notify => {
            let notification = effects.published.try_recv().unwrap();
            assert_eq!(notification.kind, event::NOTIFICATION, "{kind}");
            assert_eq!(notification.data["message"], "every action", "{kind}");
            assert_eq!(notification.data["severity"], "warning", "{kind}");
            assert_eq!(notification.data["data"], json!({"checked": true}), "{kind}");
            assert_eq!(result["published"], true, "{kind}");
        }
        ActionKind::Http => {
            let requests = effects.received.lock().unwrap().clone();
            assert_eq!(requests.len(), 1, "{kind}: {requests:?}");
            let request = &requests[0];
            assert_eq!((request.method.as_str(), request.path.as_str()), ("PUT", "/hook"), "{kind}");
            assert_eq!(request.headers["x-check"], "yes", "{kind}");
            assert_eq!(request.headers["idempotency-key"], format!("onair-news-{id}").as_str(), "{kind}");
            assert_eq!(serde_json::from_str::<Value>(&request.body).unwrap(), json!({"every": "action"}));
            assert_eq!(result["status"], 200, "{kind}");
        }
    }
}

#[tokio::test]
async fn a_row_naming_no_action_fails_as_unknown() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(&emulator, directory.path(), "[broadcasts.news]\n");
    let broadcast = settings.engine.broadcasts["news"].clone();
    let (outbound, _published) = mpsc::unbounded_channel();
    let runner = Runner::new(Some(emulator.client()), outbound, onair::clock::system());
    for name in ["channel.launch", "rerun"] {
        let error = runner.run(&row(1, name, json!({})), &broadcast).await.unwrap_err();
        assert_eq!(error.code, "UnknownAction", "{name}");
        assert!(!error.retryable, "{name}");
    }
    assert!(emulator.arm_requests().is_empty(), "nothing was called");
}
