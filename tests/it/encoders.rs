//! Simulated encoders and their Event Grid deliveries: handshakes in both schemas, the events of
//! connect, degrade, recover and disconnect, heartbeats, the live event's stop and reset, retries,
//! and the endpoint's secret kept out of logs.
//!
//! Every test delivers to a real HTTP receiver (an axum router on 127.0.0.1:0) that records what
//! it gets and answers as told.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode};
use axum::response::{IntoResponse, Response};
use onair::emulator::{DeliveryRecord, EncoderStatus, Endpoint, EventSchema, Settings};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::{ACCOUNT, GROUP, SUBSCRIPTION, TestEmulator, emulator_settings};

const STREAMING: &str = "api-version=2022-11-01";
/// The secret the webhook's URL carries; it must never show.
const KEY: &str = "k3y-Sup3r-S3cret";
const HEARTBEAT: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(10);

const CONNECTED: &str = "Microsoft.Media.LiveEventEncoderConnected";
const DISCONNECTED: &str = "Microsoft.Media.LiveEventEncoderDisconnected";
const RECEIVED: &str = "Microsoft.Media.LiveEventIncomingStreamReceived";
const HEARTBEAT_TYPE: &str = "Microsoft.Media.LiveEventIngestHeartbeat";
const REJECTED: &str = "Microsoft.Media.LiveEventConnectionRejected";

// === The receiver ===

/// How the receiver answers.
#[derive(Debug, Clone)]
struct Behaviour {
    /// Event Grid handshake: echo the code (true) or answer another one.
    echo_code: bool,
    /// Event Grid handshake: answer 200 with an empty body (asynchronous validation).
    empty_validation_answer: bool,
    /// CloudEvents handshake: the `WebHook-Allowed-Origin` answered.
    allowed_origin: Option<String>,
    /// Notifications answered 500 before the receiver accepts them.
    fail_next: usize,
    /// Answer 500 to every notification.
    always_fail: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            echo_code: true,
            empty_validation_answer: false,
            allowed_origin: Some("eventgrid.azure.net".into()),
            fail_next: 0,
            always_fail: false,
        }
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Value,
    at: Instant,
    /// The status it was answered with.
    status: u16,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn is_validation(&self) -> bool {
        self.method == "OPTIONS" || self.header("aeg-event-type") == Some("SubscriptionValidation")
    }

    fn is_notification(&self) -> bool {
        self.method == "POST" && self.header("aeg-event-type") == Some("Notification")
    }

    /// The delivered event, in either schema.
    fn event(&self) -> &Value {
        if self.body.is_array() { &self.body[0] } else { &self.body }
    }

    fn event_type(&self) -> &str {
        let event = self.event();
        event["eventType"].as_str().or_else(|| event["type"].as_str()).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Recorded {
    behaviour: Behaviour,
    hits: Vec<Hit>,
}

/// A webhook on 127.0.0.1 that records every request; stopped when dropped.
struct Receiver {
    base: String,
    recorded: Arc<Mutex<Recorded>>,
    shutdown: CancellationToken,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let base = format!("http://{}", listener.local_addr().expect("receiver address"));
        let recorded = Arc::new(Mutex::new(Recorded { behaviour, hits: Vec::new() }));
        let router = axum::Router::new().fallback(receive).with_state(Arc::clone(&recorded));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Self { base, recorded, shutdown }
    }

    /// The webhook URL, with the secret key in its query.
    fn endpoint(&self) -> String {
        format!("{}/eventgrid?key={KEY}", self.base)
    }

    fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.recorded.lock().unwrap().behaviour);
    }

    fn hits(&self) -> Vec<Hit> {
        self.recorded.lock().unwrap().hits.clone()
    }

    fn validations(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(Hit::is_validation).collect()
    }

    /// Notifications answered with success, in order of arrival.
    fn delivered(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(|hit| hit.is_notification() && (200..=204).contains(&hit.status)).collect()
    }

    /// Waits until the delivered notifications satisfy `done`; returns them.
    async fn wait_delivered(&self, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        wait_for(what, || {
            let delivered = self.delivered();
            done(&delivered).then_some(delivered)
        })
        .await
    }

    /// Waits for `count` delivered events of `event_type`, then returns every delivered event.
    async fn wait_for_type(&self, event_type: &str, count: usize) -> Vec<Hit> {
        self.wait_delivered(&format!("{count} × {event_type}"), |hits| {
            hits.iter().filter(|hit| hit.event_type() == event_type).count() >= count
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn receive(State(recorded): State<Arc<Mutex<Recorded>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut recorded = recorded.lock().unwrap();
    let behaviour = recorded.behaviour.clone();
    let event_type = parts.headers.get("aeg-event-type").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let response = if parts.method == HttpMethod::OPTIONS {
        let mut response = StatusCode::OK.into_response();
        if let Some(origin) = &behaviour.allowed_origin {
            response.headers_mut().insert("WebHook-Allowed-Origin", origin.parse().unwrap());
            response.headers_mut().insert("WebHook-Allowed-Rate", "*".parse().unwrap());
        }
        response
    } else if event_type == "SubscriptionValidation" {
        let code = body[0]["data"]["validationCode"].as_str().unwrap_or_default();
        if behaviour.empty_validation_answer {
            StatusCode::OK.into_response()
        } else if behaviour.echo_code {
            axum::Json(json!({"validationResponse": code})).into_response()
        } else {
            axum::Json(json!({"validationResponse": "not-the-code"})).into_response()
        }
    } else if behaviour.always_fail || behaviour.fail_next > 0 {
        recorded.behaviour.fail_next = behaviour.fail_next.saturating_sub(1);
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    } else {
        StatusCode::OK.into_response()
    };
    recorded.hits.push(Hit {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts.headers,
        body,
        at: Instant::now(),
        status: response.status().as_u16(),
    });
    response
}

// === Helpers ===

/// Polls `probe` until it gives a value, for at most `WAIT`.
async fn wait_for<T>(what: &str, probe: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Emulator settings delivering to `receiver` with short intervals, on the tests' account topic.
fn settings_for(receiver: &Receiver, schema: EventSchema) -> Settings {
    let mut settings = emulator_settings();
    let events = &mut settings.events;
    events.endpoint = Some(Endpoint::parse(&receiver.endpoint()).unwrap());
    events.schema = schema;
    events.topic = Some(account_topic());
    events.heartbeat_interval = HEARTBEAT;
    events.retry_initial = Duration::from_millis(20);
    events.retry_max = Duration::from_millis(80);
    events.max_attempts = 10;
    events.timeout = Duration::from_secs(5);
    settings
}

fn account_topic() -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Media/mediaservices/{ACCOUNT}")
}

/// Creates the live event `name` with autoStart (Running at the next request, with no transition time).
async fn running_live_event(emulator: &TestEmulator, name: &str, protocol: &str) {
    let body = json!({"location": "westeurope", "properties": {"input": {"streamingProtocol": protocol}}});
    let url = emulator.test_url(&format!("liveEvents/{name}?{STREAMING}&autoStart=true"));
    let (status, _) = emulator.raw(Method::PUT, &url, Some(&body.to_string())).await;
    assert_eq!(status, 201);
    let (_, resource) =
        emulator.raw(Method::GET, &emulator.test_url(&format!("liveEvents/{name}?{STREAMING}")), None).await;
    assert_eq!(resource["properties"]["resourceState"], "Running");
}

/// `POST /_emulator/encoders/{name}`: the status and the JSON answer.
async fn encoder(emulator: &TestEmulator, name: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_emulator/encoders/{name}", emulator.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn act(emulator: &TestEmulator, name: &str, action: &str) -> EncoderStatus {
    let (status, body) = encoder(emulator, name, json!({"action": action})).await;
    assert_eq!(status, 200, "{action}: {body}");
    serde_json::from_value(body).unwrap()
}

async fn live_event_action(emulator: &TestEmulator, name: &str, action: &str, body: Option<&str>) {
    let url = emulator.test_url(&format!("liveEvents/{name}/{action}?{STREAMING}"));
    let (status, answer) = emulator.raw(Method::POST, &url, body).await;
    assert_eq!(status, 202, "{action}: {answer}");
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn deliveries(emulator: &TestEmulator) -> Vec<DeliveryRecord> {
    serde_json::from_value(get_json(&format!("{}/_emulator/deliveries", emulator.base)).await).unwrap()
}

fn types(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|hit| hit.event_type().to_string()).collect()
}

/// The data of the delivered heartbeats of `track`, in order.
fn heartbeats(hits: &[Hit], track: &str) -> Vec<Value> {
    hits.iter()
        .filter(|hit| hit.event_type() == HEARTBEAT_TYPE && hit.event()["data"]["trackName"] == track)
        .map(|hit| hit.event()["data"].clone())
        .collect()
}

/// The data of the heartbeats of `track` the emulator raised after `mark` (an action's answer).
fn raised_after(hits: &[Hit], mark: chrono::DateTime<chrono::Utc>, track: &str) -> Vec<Value> {
    hits.iter()
        .filter(|hit| hit.event_type() == HEARTBEAT_TYPE && hit.event()["data"]["trackName"] == track)
        .filter(|hit| {
            hit.event()["eventTime"].as_str().and_then(|time| time.parse::<chrono::DateTime<chrono::Utc>>().ok())
                > Some(mark)
        })
        .map(|hit| hit.event()["data"].clone())
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().map(|object| object.keys().cloned().collect()).unwrap_or_default()
}

fn fixture(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/tests/fixtures/eventgrid/{path}", env!("CARGO_MANIFEST_DIR")))
        .expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

// === Handshakes ===

#[tokio::test]
async fn the_event_grid_handshake_comes_first_and_a_wrong_answer_holds_every_delivery() {
    let receiver = Receiver::start(Behaviour { echo_code: false, ..Behaviour::default() }).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::EventGrid)).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;

    // Retried with growing delivery counts, and nothing is delivered meanwhile.
    let attempts = wait_for("three handshakes", || Some(receiver.validations()).filter(|hits| hits.len() >= 3)).await;
    assert!(receiver.hits().iter().all(Hit::is_validation), "no notification before validation");
    let counts: Vec<&str> = attempts.iter().take(3).map(|hit| hit.header("aeg-delivery-count").unwrap()).collect();
    assert_eq!(counts, ["0", "1", "2"]);
    let first = &attempts[0];
    assert_eq!(first.method, "POST");
    assert_eq!((first.path.as_str(), first.query.as_str()), ("/eventgrid", format!("key={KEY}").as_str()));
    assert_eq!(first.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(first.header("aeg-subscription-name"), Some("onair"));
    assert_eq!(first.header("aeg-metadata-version"), Some("1"));
    let events = first.body.as_array().expect("a JSON array");
    assert_eq!(events.len(), 1, "only the validation event");
    let validation = &events[0];
    assert_eq!(validation["eventType"], "Microsoft.EventGrid.SubscriptionValidationEvent");
    assert_eq!(validation["subject"], "");
    assert_eq!(validation["topic"], account_topic());
    let code = validation["data"]["validationCode"].as_str().unwrap();
    uuid::Uuid::parse_str(code).expect("the code is a GUID");
    assert!(validation["data"]["validationUrl"].as_str().unwrap().starts_with(&emulator.base));
    assert!(attempts.iter().all(|hit| hit.body[0]["data"]["validationCode"] == code), "one code until validated");
    let log = deliveries(&emulator).await;
    assert!(log.iter().all(|record| record.kind == "validation" && record.outcome == "retrying"), "{log:#?}");
    assert_eq!(log[0].error.as_deref(), Some("the validationResponse is not the validation code"));

    // Once the receiver echoes the code, the held events follow, in order.
    receiver.set(|behaviour| behaviour.echo_code = true);
    let delivered = receiver.wait_for_type(RECEIVED, 2).await;
    assert_eq!(types(&delivered)[..3], [CONNECTED, RECEIVED, RECEIVED]);
    let last_validation = receiver.validations().last().unwrap().at;
    assert!(delivered.iter().all(|hit| hit.at > last_validation));
    let log = deliveries(&emulator).await;
    assert!(log.iter().any(|record| record.kind == "validation" && record.outcome == "validated"));
}

#[tokio::test]
async fn the_event_grid_handshake_can_complete_through_the_validation_url() {
    let receiver = Receiver::start(Behaviour { empty_validation_answer: true, ..Behaviour::default() }).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::EventGrid)).await;
    let first = wait_for("a handshake", || receiver.validations().into_iter().next()).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;

    let url = first.body[0]["data"]["validationUrl"].as_str().unwrap().to_string();
    let wrong = reqwest::get(url.replace("id=", "id=0")).await.unwrap();
    assert_eq!(wrong.status(), 400);
    let answer = reqwest::get(&url).await.unwrap();
    assert_eq!(answer.status(), 200);
    let delivered = receiver.wait_for_type(RECEIVED, 2).await;
    assert_eq!(types(&delivered)[0], CONNECTED);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 400, "a code validates once");
}

#[tokio::test]
async fn cloud_events_use_the_options_handshake_and_single_structured_events() {
    let receiver =
        Receiver::start(Behaviour { allowed_origin: Some("example.com".into()), ..Behaviour::default() }).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::CloudEvents)).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;

    let attempts = wait_for("two OPTIONS", || Some(receiver.validations()).filter(|hits| hits.len() >= 2)).await;
    assert!(receiver.hits().iter().all(|hit| hit.method == "OPTIONS"), "nothing posted before validation");
    assert_eq!(attempts[0].header("webhook-request-origin"), Some("eventgrid.azure.net"));
    assert_eq!(attempts[0].header("webhook-request-rate"), Some("120"));
    assert_eq!(attempts[0].query, format!("key={KEY}"));

    receiver.set(|behaviour| behaviour.allowed_origin = Some("*".into()));
    let delivered = receiver.wait_for_type(RECEIVED, 2).await;
    assert_eq!(types(&delivered)[..3], [CONNECTED, RECEIVED, RECEIVED]);
    let hit = &delivered[0];
    assert!(hit.body.is_object(), "a single structured-mode event: {}", hit.body);
    assert_eq!(hit.header("content-type"), Some("application/cloudevents+json; charset=utf-8"));
    assert_eq!(hit.header("aeg-event-type"), Some("Notification"));
    assert_eq!(hit.header("aeg-subscription-name"), Some("onair"));
    assert_eq!(hit.header("aeg-delivery-count"), Some("0"));
    assert_eq!(hit.header("aeg-output-event-id"), hit.body["id"].as_str());
    assert_eq!(hit.header("aeg-data-version"), None, "Event Grid schema only");
    let expected: BTreeSet<String> =
        ["specversion", "id", "source", "subject", "type", "time", "data"].map(String::from).into();
    assert_eq!(keys(&hit.body), expected);
    assert_eq!(hit.body["specversion"], "1.0");
    assert_eq!(hit.body["source"], account_topic());
    assert_eq!(hit.body["subject"], "liveEvent/news");

    // Heartbeats carry the published sample's fields.
    let delivered = receiver.wait_for_type(HEARTBEAT_TYPE, 2).await;
    let heartbeat = delivered.iter().find(|hit| hit.event_type() == HEARTBEAT_TYPE).unwrap();
    let sample = fixture("cloud-events-schema/MediaLiveEventIngestHeartbeatEvent.json");
    assert_eq!(keys(&heartbeat.body), keys(&sample));
    assert_eq!(keys(&heartbeat.body["data"]), keys(&sample["data"]));
}

// === Encoder sequences ===

#[tokio::test]
async fn connect_degrade_recover_and_disconnect_raise_the_service_events() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::EventGrid)).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    let status = act(&emulator, "news", "connect").await;
    assert_eq!(status.protocol, "FragmentedMP4");
    assert_eq!(serde_json::to_value(status.state).unwrap(), "connected");
    assert_eq!(status.tracks.len(), 2);

    // Connected, then each track received, then heartbeats.
    let delivered = receiver.wait_for_type(HEARTBEAT_TYPE, 6).await;
    assert_eq!(types(&delivered)[..3], [CONNECTED, RECEIVED, RECEIVED]);
    let hit = &delivered[0];
    assert_eq!(hit.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(hit.header("aeg-event-type"), Some("Notification"));
    assert_eq!(hit.header("aeg-subscription-name"), Some("onair"));
    assert_eq!(hit.header("aeg-delivery-count"), Some("0"));
    assert_eq!(hit.header("aeg-metadata-version"), Some("1"));
    assert_eq!(hit.header("aeg-data-version"), Some("1.0"));
    assert_eq!(hit.header("aeg-output-event-id"), hit.event()["id"].as_str());
    assert_eq!(hit.body.as_array().map(Vec::len), Some(1), "an array of one event");
    let event = hit.event();
    let sample = fixture("event-grid-schema/MediaLiveEventIngestHeartbeatEvent.json");
    assert_eq!(keys(event), keys(&sample[0]), "the envelope");
    assert_eq!(event["topic"], account_topic());
    assert_eq!(event["subject"], "liveEvent/news");
    assert_eq!((event["dataVersion"].as_str(), event["metadataVersion"].as_str()), (Some("1.0"), Some("1")));
    let data = &event["data"];
    let expected: BTreeSet<String> = ["ingestUrl", "streamId", "encoderIp", "encoderPort"].map(String::from).into();
    assert_eq!(keys(data), expected);
    assert!(data["ingestUrl"].as_str().unwrap().ends_with("/ingest.isml"), "{data}");
    let received: Vec<(&str, &str, i64)> = delivered[1..3]
        .iter()
        .map(|hit| {
            let data = &hit.event()["data"];
            (
                data["trackType"].as_str().unwrap(),
                data["trackName"].as_str().unwrap(),
                data["bitrate"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(received, [("video", "video", 2_500_000), ("audio", "audio", 128_000)]);

    let video = heartbeats(&delivered, "video");
    assert_eq!(keys(&video[0]), keys(&sample[0]["data"]), "the heartbeat's fields");
    for beat in video.iter().chain(&heartbeats(&delivered, "audio")) {
        let (bitrate, incoming) = (beat["bitrate"].as_i64().unwrap(), beat["incomingBitrate"].as_i64().unwrap());
        assert!((bitrate - incoming).abs() * 50 <= bitrate, "within 2%: {beat}");
        assert_eq!((beat["healthy"].as_bool(), beat["unexpectedBitrate"].as_bool()), (Some(true), Some(false)));
        assert_eq!(beat["state"], "Running");
        assert_eq!(beat["ingestDriftValue"], "0");
    }
    // The first heartbeat comes one interval after the connection, then one per interval (event
    // times are when the emulator raised them; the bounds leave room for a loaded machine).
    let time =
        |hit: &Hit| -> chrono::DateTime<chrono::Utc> { hit.event()["eventTime"].as_str().unwrap().parse().unwrap() };
    let first_beat = delivered.iter().find(|hit| hit.event_type() == HEARTBEAT_TYPE).unwrap();
    let lead = (time(first_beat) - time(&delivered[0])).to_std().unwrap();
    assert!(lead >= HEARTBEAT - Duration::from_millis(5) && lead < HEARTBEAT * 4, "first heartbeat after {lead:?}");
    let times: Vec<_> = delivered
        .iter()
        .filter(|hit| hit.event_type() == HEARTBEAT_TYPE && hit.event()["data"]["trackName"] == "video")
        .map(time)
        .collect();
    let spread = (times[2] - times[0]).to_std().unwrap();
    assert!(spread >= HEARTBEAT && spread < HEARTBEAT * 10, "{spread:?}");
    let stamps: Vec<u64> = video.iter().map(|beat| beat["lastTimestamp"].as_str().unwrap().parse().unwrap()).collect();
    assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]), "media time advances: {stamps:?}");

    // Degraded: a fifth of the bitrate, unexpected and unhealthy (heartbeats raised after the call).
    let status = act(&emulator, "news", "degrade").await;
    let mark = onair::clock::system().now();
    assert_eq!(status.tracks[0].incoming_bitrate, 500_000);
    let delivered =
        receiver.wait_delivered("degraded heartbeats", |hits| raised_after(hits, mark, "video").len() >= 2).await;
    let degraded = raised_after(&delivered, mark, "video");
    assert_eq!(degraded[0]["incomingBitrate"], 500_000);
    assert_eq!(
        (degraded[0]["healthy"].as_bool(), degraded[0]["unexpectedBitrate"].as_bool()),
        (Some(false), Some(true))
    );

    // Recovered: healthy again.
    act(&emulator, "news", "recover").await;
    let mark = onair::clock::system().now();
    let delivered =
        receiver.wait_delivered("healthy heartbeats", |hits| raised_after(hits, mark, "audio").len() >= 2).await;
    let recovered = raised_after(&delivered, mark, "audio");
    assert!(
        recovered.iter().all(|beat| beat["healthy"] == true && beat["unexpectedBitrate"] == false),
        "{recovered:?}"
    );

    // Disconnected by the encoder (fMP4): heartbeats go on with nothing coming in.
    let before = delivered.len();
    let status = act(&emulator, "news", "disconnect").await;
    assert_eq!(status.result_code.as_deref(), Some("MPE_CLIENT_DISCONNECTED"));
    let delivered = receiver
        .wait_delivered("heartbeats after the disconnection", |hits| heartbeats(&hits[before..], "video").len() >= 2)
        .await;
    let after = &delivered[before..];
    let gone = after.iter().position(|hit| hit.event_type() == DISCONNECTED).expect("disconnected");
    assert_eq!(after[gone].event()["data"]["resultCode"], "MPE_CLIENT_DISCONNECTED");
    let silent = heartbeats(&after[gone..], "video");
    assert!(!silent.is_empty());
    for beat in &silent {
        assert_eq!((beat["incomingBitrate"].as_i64(), beat["healthy"].as_bool()), (Some(0), Some(false)), "{beat}");
        assert_eq!((beat["unexpectedBitrate"].as_bool(), beat["ingestDriftValue"].as_str()), (Some(true), Some("n/a")));
    }
    // Disconnecting again changes nothing.
    let again = act(&emulator, "news", "disconnect").await;
    assert_eq!(serde_json::to_value(again.state).unwrap(), "disconnected");
    let listed: Vec<EncoderStatus> =
        serde_json::from_value(get_json(&format!("{}/_emulator/encoders", emulator.base)).await).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].live_event.as_str(), listed[0].heartbeating), ("news", true));
    assert_eq!(listed[0].account, format!("{SUBSCRIPTION}/{GROUP}/{ACCOUNT}"));
}

#[tokio::test]
async fn rtmp_tracks_are_named_by_type_and_bitrate() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::EventGrid)).await;
    running_live_event(&emulator, "rtmp", "RTMP").await;
    act(&emulator, "rtmp", "connect").await;
    let delivered = receiver.wait_for_type(HEARTBEAT_TYPE, 2).await;
    assert!(delivered[0].event()["data"]["ingestUrl"].as_str().unwrap().starts_with("rtmp://"));
    let names: Vec<&str> =
        delivered[1..3].iter().map(|hit| hit.event()["data"]["trackName"].as_str().unwrap()).collect();
    assert_eq!(names, ["video_2500000", "audio_128000"]);
    let beat = &heartbeats(&delivered, "video_2500000")[0];
    assert_eq!(beat["timescale"], "1000");
    act(&emulator, "rtmp", "disconnect").await;
    let delivered = receiver.wait_for_type(DISCONNECTED, 1).await;
    let disconnected = delivered.iter().find(|hit| hit.event_type() == DISCONNECTED).unwrap();
    assert_eq!(disconnected.event()["data"]["resultCode"], "MPE_CLIENT_TERMINATED_SESSION");
}

// === The live event's lifecycle ===

#[tokio::test]
async fn stopping_the_live_event_disconnects_the_encoder_and_ends_heartbeats() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::EventGrid)).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;
    receiver.wait_for_type(HEARTBEAT_TYPE, 2).await;

    live_event_action(&emulator, "news", "stop", Some(r#"{"removeOutputsOnStop": true}"#)).await;
    let delivered = receiver.wait_for_type(DISCONNECTED, 1).await;
    let gone = delivered.iter().position(|hit| hit.event_type() == DISCONNECTED).unwrap();
    assert_eq!(delivered[gone].event()["data"]["resultCode"], "MPI_REST_API_CHANNEL_STOP");
    tokio::time::sleep(HEARTBEAT * 4).await;
    let after: Vec<String> = types(&receiver.delivered()[gone + 1..]);
    assert!(after.is_empty(), "nothing after the stop: {after:?}");
    let listed: Vec<EncoderStatus> =
        serde_json::from_value(get_json(&format!("{}/_emulator/encoders", emulator.base)).await).unwrap();
    assert!(!listed[0].heartbeating && listed[0].tracks.is_empty(), "{listed:?}");

    // A connection to a live event that is not Running is rejected, and says so.
    let (status, body) = encoder(&emulator, "news", json!({"action": "connect"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("LiveEventNotRunning")), "{body}");
    let delivered = receiver.wait_for_type(REJECTED, 1).await;
    let rejected = delivered.iter().find(|hit| hit.event_type() == REJECTED).unwrap();
    assert_eq!(rejected.event()["data"]["resultCode"], "MPE_INGEST_CHANNEL_NOT_RUNNING");
    let (status, body) = encoder(&emulator, "news", json!({"action": "degrade"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("LiveEventNotRunning")));

    // Deleting it forgets the encoder.
    let url = emulator.test_url(&format!("liveEvents/news?{STREAMING}"));
    let (status, _) = emulator.raw(Method::DELETE, &url, None).await;
    assert_eq!(status, 202);
    let listed = get_json(&format!("{}/_emulator/encoders", emulator.base)).await;
    assert_eq!(listed, json!([]));
    let (status, body) = encoder(&emulator, "news", json!({"action": "connect"})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("LiveEventNotFound")));
}

#[tokio::test]
async fn a_reset_disconnects_the_encoder_until_it_connects_again() {
    let receiver = Receiver::start(Behaviour::default()).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::EventGrid)).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;
    receiver.wait_for_type(HEARTBEAT_TYPE, 2).await;

    live_event_action(&emulator, "news", "reset", None).await;
    let delivered = receiver
        .wait_delivered("heartbeats after the reset", |hits| {
            hits.iter()
                .position(|hit| hit.event_type() == DISCONNECTED)
                .is_some_and(|gone| heartbeats(&hits[gone..], "video").len() >= 2)
        })
        .await;
    let gone = delivered.iter().position(|hit| hit.event_type() == DISCONNECTED).unwrap();
    assert_eq!(delivered[gone].event()["data"]["resultCode"], "MPI_REST_API_CHANNEL_RESET");
    let after = &delivered[gone + 1..];
    assert!(after.iter().all(|hit| hit.event_type() == HEARTBEAT_TYPE), "{:?}", types(after));
    assert!(heartbeats(after, "video").iter().all(|beat| beat["incomingBitrate"] == 0 && beat["healthy"] == false));
    let (status, body) = encoder(&emulator, "news", json!({"action": "recover"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("EncoderNotConnected")), "still disconnected");

    let before = delivered.len();
    act(&emulator, "news", "connect").await;
    let delivered = receiver
        .wait_delivered("healthy heartbeats again", |hits| {
            heartbeats(&hits[before..], "video").iter().any(|beat| beat["healthy"] == true)
        })
        .await;
    assert!(types(&delivered[before..]).contains(&CONNECTED.to_string()));
}

// === Retries ===

#[tokio::test]
async fn failed_deliveries_are_retried_in_order_with_the_delivery_count() {
    let receiver = Receiver::start(Behaviour { fail_next: 3, ..Behaviour::default() }).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::EventGrid)).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;
    let delivered = receiver.wait_for_type(RECEIVED, 2).await;
    assert_eq!(types(&delivered)[..3], [CONNECTED, RECEIVED, RECEIVED], "order kept behind the failing head");

    let tries: Vec<Hit> =
        receiver.hits().into_iter().filter(|hit| hit.is_notification() && hit.event_type() == CONNECTED).collect();
    let counts: Vec<&str> = tries.iter().map(|hit| hit.header("aeg-delivery-count").unwrap()).collect();
    assert_eq!(counts, ["0", "1", "2", "3"]);
    let statuses: Vec<u16> = tries.iter().map(|hit| hit.status).collect();
    assert_eq!(statuses, [500, 500, 500, 200]);
    assert!(tries.iter().all(|hit| hit.event()["id"] == tries[0].event()["id"]), "the same event each time");
    let gaps: Vec<Duration> = tries.windows(2).map(|pair| pair[1].at - pair[0].at).collect();
    assert!(gaps[1] >= Duration::from_millis(35), "the backoff doubles: {gaps:?}");

    let log: Vec<DeliveryRecord> =
        deliveries(&emulator).await.into_iter().filter(|record| record.event_type == CONNECTED).collect();
    let outcomes: Vec<(u32, Option<u16>, &str)> =
        log.iter().map(|record| (record.attempt, record.status, record.outcome.as_str())).collect();
    assert_eq!(
        outcomes,
        [
            (0, Some(500), "retrying"),
            (1, Some(500), "retrying"),
            (2, Some(500), "retrying"),
            (3, Some(200), "delivered")
        ]
    );
    assert_eq!(log[0].error.as_deref(), Some("status 500"));
    assert_eq!(log[0].subject, "liveEvent/news");
}

#[tokio::test]
async fn an_event_is_dropped_as_dead_after_max_attempts() {
    let receiver = Receiver::start(Behaviour { always_fail: true, ..Behaviour::default() }).await;
    let mut settings = settings_for(&receiver, EventSchema::EventGrid);
    settings.events.max_attempts = 2;
    let emulator = TestEmulator::start(settings).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;
    let dead_count = |log: &[DeliveryRecord]| log.iter().filter(|record| record.outcome == "dead").count();
    let log = loop_until(&emulator, |log| dead_count(log) >= 3).await;
    let dead: Vec<&DeliveryRecord> = log.iter().filter(|record| record.outcome == "dead").collect();
    let types: Vec<&str> = dead.iter().take(3).map(|record| record.event_type.as_str()).collect();
    assert_eq!(types, [CONNECTED, RECEIVED, RECEIVED], "each dropped after its last attempt, in order");
    assert!(dead.iter().all(|record| record.attempt == 1 && record.status == Some(500)));
    let tries =
        receiver.hits().into_iter().filter(|hit| hit.is_notification() && hit.event_type() == CONNECTED).count();
    assert_eq!(tries, 2);
}

// === Without an endpoint; the introspection API ===

#[tokio::test]
async fn without_an_endpoint_events_are_recorded_and_the_api_refuses_bad_requests() {
    let mut settings = emulator_settings();
    settings.events.heartbeat_interval = HEARTBEAT;
    let emulator = TestEmulator::start(settings).await;
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;
    let log = loop_until(&emulator, |log| log.iter().any(|record| record.event_type == HEARTBEAT_TYPE)).await;
    let types: Vec<&str> = log.iter().take(3).map(|record| record.event_type.as_str()).collect();
    assert_eq!(types, [CONNECTED, RECEIVED, RECEIVED]);
    assert!(
        log.iter()
            .all(|record| record.outcome == "undelivered"
                && record.error.as_deref() == Some("not delivered: no endpoint"))
    );
    assert_eq!(log[1].data.as_ref().unwrap()["trackName"], "video");
    let since = get_json(&format!("{}/_emulator/deliveries?since=2", emulator.base)).await;
    assert_eq!(since[0]["seq"], 3);
    let cleared =
        reqwest::Client::new().delete(format!("{}/_emulator/deliveries", emulator.base)).send().await.unwrap();
    assert_eq!(cleared.status(), 204);

    // Bad bodies, unknown live events, a second account with the same live event name.
    for body in [json!({"action": "explode"}), json!({"action": "connect", "extra": 1}), json!("connect")] {
        let (status, answer) = encoder(&emulator, "news", body).await;
        assert_eq!((status, answer["code"].as_str()), (400, Some("BadRequest")), "{answer}");
    }
    let (status, answer) = encoder(&emulator, "nowhere", json!({"action": "connect"})).await;
    assert_eq!((status, answer["code"].as_str()), (404, Some("LiveEventNotFound")));
    assert!(answer["error"].as_str().unwrap().contains("nowhere"));
    let body = json!({"location": "westeurope", "properties": {"input": {"streamingProtocol": "RTMP"}}});
    let other = emulator.url("sub-2", "rg-2", "other", &format!("liveEvents/news?{STREAMING}&autoStart=true"));
    assert_eq!(emulator.raw(Method::PUT, &other, Some(&body.to_string())).await.0, 201);
    let (status, answer) = encoder(&emulator, "news", json!({"action": "degrade"})).await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("AmbiguousLiveEvent")));
    let (status, answer) =
        encoder(&emulator, "NEWS", json!({"action": "connect", "account": "SUB-2/rg-2/Other"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["account"].as_str(), answer["protocol"].as_str()), (Some("sub-2/rg-2/other"), Some("RTMP")));
    let (status, _) = encoder(&emulator, "news", json!({"action": "degrade", "account": "sub-2/rg-2/other"})).await;
    assert_eq!(status, 200);

    // A reset of the emulator forgets encoders and the log.
    let reset = reqwest::Client::new().post(format!("{}/_emulator/reset", emulator.base)).send().await.unwrap();
    assert_eq!(reset.status(), 204);
    assert_eq!(get_json(&format!("{}/_emulator/encoders", emulator.base)).await, json!([]));
    assert_eq!(get_json(&format!("{}/_emulator/deliveries", emulator.base)).await, json!([]));
}

async fn loop_until(emulator: &TestEmulator, done: impl Fn(&[DeliveryRecord]) -> bool) -> Vec<DeliveryRecord> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = deliveries(emulator).await;
        if done(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "timed out waiting on the delivery log");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === Secrets ===

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_endpoint_key_never_appears_in_logs_or_introspection() {
    // This test's runtime has one thread, so the emulator's tasks log to this subscriber.
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("onair=trace")
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A receiver that refuses the handshake once and fails deliveries: every warning path.
    let receiver = Receiver::start(Behaviour { echo_code: false, fail_next: 2, ..Behaviour::default() }).await;
    let emulator = TestEmulator::start(settings_for(&receiver, EventSchema::EventGrid)).await;
    wait_for("a refused handshake", || receiver.validations().into_iter().next()).await;
    receiver.set(|behaviour| behaviour.echo_code = true);
    running_live_event(&emulator, "news", "FragmentedMP4").await;
    act(&emulator, "news", "connect").await;
    receiver.wait_for_type(RECEIVED, 2).await;

    // An endpoint nobody listens on: connection errors.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut settings = emulator_settings();
    settings.events.endpoint =
        Some(Endpoint::parse(&format!("http://127.0.0.1:{closed_port}/hook?key={KEY}")).unwrap());
    settings.events.topic = Some(account_topic());
    settings.events.retry_initial = Duration::from_millis(10);
    settings.events.retry_max = Duration::from_millis(20);
    let unreachable = TestEmulator::start(settings).await;
    let failed = loop_until(&unreachable, |log| log.len() >= 2).await;
    assert!(failed[0].error.as_deref().unwrap().starts_with("connection failed"), "{failed:?}");

    let mut shown = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(shown.contains(&format!("{}/eventgrid", receiver.base.trim_start_matches("http://"))), "{shown}");
    assert!(shown.contains("Event Grid subscription validation failed."), "{shown}");
    assert!(shown.contains("Event delivery failed."), "{shown}");
    for emulator in [&emulator, &unreachable] {
        for path in ["deliveries", "encoders", "requests", "state", "faults"] {
            shown.push_str(
                &reqwest::get(format!("{}/_emulator/{path}", emulator.base)).await.unwrap().text().await.unwrap(),
            );
        }
        shown.push_str(&format!("{:?}", emulator.emulator.settings()));
    }
    assert!(!shown.contains(KEY), "the key leaked");
    assert!(!shown.contains("key="), "the query leaked");
}
