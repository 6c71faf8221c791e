//! The webhook ingress in a real daemon (RabbitMQ, engine, SQLite, emulator): the published
//! Event Grid samples in both schemas, the refusals (signatures, keys, sizes, replays,
//! handshakes) with their figures, and 503 while the broker is away.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onair::daemon::Daemon;
use onair::ingress::{Proof, SIGNATURE_HEADER, external_id, sign};
use onair::machine::Library;
use onair::store::SqliteStore;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::broker::EXCLUSIVE;
use crate::helpers::{TestEmulator, emulator_settings};
use crate::rabbit::{self, node};
use crate::schedule::daemon_settings;

pub(crate) const SECRET: &str = "ingress-hmac-secret-0123456789";
pub(crate) const KEY: &str = "ingress-query-key-0123456789";
pub(crate) const TOPIC: &str =
    "/subscriptions/<subscription-id>/resourceGroups/<rg-name>/providers/Microsoft.Media/mediaservices/<account-name>";

/// A daemon with the ingress on a free port; `broadcasts` TOML as in the schedule tests.
pub(crate) async fn daemon_with_ingress(
    directory: &Path,
    emulator: &TestEmulator,
    broker: &onair::broker::Settings,
    broadcasts: &str,
    max_body_bytes: usize,
) -> (Daemon, String, onair::daemon::Settings) {
    daemon_with(directory, emulator, broker, broadcasts, max_body_bytes, |_| {}).await
}

/// `daemon_with_ingress`, with more settings changed by `configure`.
pub(crate) async fn daemon_with(
    directory: &Path,
    emulator: &TestEmulator,
    broker: &onair::broker::Settings,
    broadcasts: &str,
    max_body_bytes: usize,
    configure: impl FnOnce(&mut onair::daemon::Settings),
) -> (Daemon, String, onair::daemon::Settings) {
    let mut settings = daemon_settings(directory, emulator, broker, broadcasts);
    let ingress = &mut settings.ingress;
    ingress.enabled = true;
    ingress.listen = "127.0.0.1:0".parse().unwrap();
    ingress.max_body_bytes = max_body_bytes;
    ingress.secrets.hmac = vec![SecretString::from("retired-hmac-secret-000000"), SecretString::from(SECRET)];
    ingress.secrets.keys = vec![SecretString::from(KEY)];
    ingress.topics = vec![TOPIC.to_string()];
    configure(&mut settings);
    let daemon = Daemon::start(&settings, Library::built_in()).await.unwrap();
    let (address, _) = daemon.ingress().unwrap();
    (daemon, format!("http://{address}"), settings)
}

fn audit(store: &Path) -> Vec<onair::store::AuditRow> {
    SqliteStore::open_read_only(store).and_then(|store| store.all_audit()).unwrap_or_default()
}

/// Decisions (and duplicates) recorded for `event_id`.
fn decided(store: &Path, event_id: &str) -> (usize, usize) {
    let rows = audit(store);
    let of =
        |kind: &str| rows.iter().filter(|row| row.kind == kind && row.event_id.as_deref() == Some(event_id)).count();
    (of("decision"), of("duplicate"))
}

async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now() -> i64 {
    onair::clock::Clock::now(&onair::clock::SystemClock).timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_samples_in_both_schemas_reach_the_broadcast_on_their_channel() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("ingress-samples");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, settings) =
        daemon_with_ingress(directory.path(), &emulator, &broker, "[broadcasts.studio]\nchannel = \"mle1\"\n", 1 << 20)
            .await;
    let http = reqwest::Client::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eventgrid");

    // Event Grid schema, with the query key (Event Grid cannot sign) and its headers.
    let body = std::fs::read(fixtures.join("event-grid-schema/MediaLiveEventIngestHeartbeatEvent.json")).unwrap();
    let response = http
        .post(format!("{base}/eventgrid?key={KEY}"))
        .header("content-type", "application/json; charset=utf-8")
        .header("aeg-event-type", "Notification")
        .header("aeg-subscription-name", "onair")
        .header("aeg-delivery-count", "0")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    // The ingress puts the id in its own namespace (source and id as sent).
    let event_id = &external_id(Proof::Key, TOPIC, "7f450938-491f-41e1-b06f-c6cd3965d786");
    until(Duration::from_secs(10), "the Event Grid sample decided", || {
        decided(&settings.engine.store, event_id).0 == 1
    })
    .await;
    let row = audit(&settings.engine.store).into_iter().find(|row| row.event_id.as_deref() == Some(event_id)).unwrap();
    assert_eq!(row.broadcast, "studio", "liveEvent/mle1 reaches the broadcast on channel mle1");
    assert_eq!(row.event_type.as_deref(), Some("onair.encoder.heartbeat"));

    // CloudEvents schema, signed. The sample has the same source and id, but a signed delivery's
    // ids live apart from a query key's (a key holder cannot take a signer's ids): it is its own
    // event, decided once; sent again with a new signature (not a replay), it is a duplicate.
    let body = std::fs::read(fixtures.join("cloud-events-schema/MediaLiveEventIngestHeartbeatEvent.json")).unwrap();
    let signed_id = &external_id(Proof::Signature, TOPIC, "7f450938-491f-41e1-b06f-c6cd3965d786");
    for (attempt, timestamp) in [now() - 1, now()].into_iter().enumerate() {
        let response = http
            .post(format!("{base}/events"))
            .header("content-type", "application/cloudevents+json; charset=utf-8")
            .header(SIGNATURE_HEADER, sign(SECRET, timestamp, &body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let expected = (1, attempt);
        until(Duration::from_secs(10), "the CloudEvents sample routed", || {
            decided(&settings.engine.store, signed_id) == expected
        })
        .await;
    }
    assert_eq!(decided(&settings.engine.store, event_id), (1, 0), "the keyed delivery is another event");

    // The original type and data are kept.
    let event = &row.detail["event"];
    assert_eq!(event["source"], TOPIC);
    assert_eq!(event["data"]["original_type"], "Microsoft.Media.LiveEventIngestHeartbeat");
    assert_eq!(event["data"]["incomingBitrate"], 2462597);
    assert_eq!(event["data"]["healthy"], true);

    // An event about a channel nobody runs is acknowledged and dropped, not dead-lettered.
    let stranger = json!([{"id": "x1", "topic": TOPIC, "subject": "liveEvent/other", "eventType": "Microsoft.Media.LiveEventEncoderConnected",
        "eventTime": "2026-11-24T10:00:00Z", "data": {}, "dataVersion": "1.0"}]);
    let response = http.post(format!("{base}/eventgrid?key={KEY}")).json(&stranger).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["ignored"], 1);
    daemon.stop().await.unwrap();
}

/// One request of the security test and the status it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Attack {
    Missing,
    BadSignature,
    Stale,
    WrongKey,
    Oversized,
    Replay,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_deliveries_are_refused_and_change_nothing() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("ingress-attacks");
    let directory = tempfile::tempdir().unwrap();
    let max_body = 16 * 1024;
    let (daemon, base, settings) =
        daemon_with(directory.path(), &emulator, &broker, "[broadcasts.news]\n", max_body, |settings| {
            settings.ingress.accept_commands = true;
        })
        .await;
    let store = settings.engine.store.clone();
    let http = reqwest::Client::new();
    let valid_id = &external_id(Proof::Signature, "playout", "valid-1");

    // One valid delivery: a signed command that changes a variable (one decision).
    let valid = serde_json::to_vec(&json!({"specversion": "1.0", "id": "valid-1", "source": "playout", "type": "onair.command.pause", "subject": "news", "data": {}})).unwrap();
    let valid_signature = sign(SECRET, now(), &valid);
    let response = http
        .post(format!("{base}/events"))
        .header("content-type", "application/cloudevents+json")
        .header(SIGNATURE_HEADER, &valid_signature)
        .body(valid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    until(Duration::from_secs(10), "the valid delivery decided", || decided(&store, valid_id).0 == 1).await;
    let decisions_before = audit(&store).iter().filter(|row| row.kind == "decision").count();

    let attacks =
        [Attack::Missing, Attack::BadSignature, Attack::Stale, Attack::WrongKey, Attack::Oversized, Attack::Replay];
    let total = 10_000;
    let started = Instant::now();
    let tally = Arc::new(std::sync::Mutex::new(BTreeMap::<(Attack, u16), usize>::new()));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (http, base, valid, valid_signature, tally) =
            (http.clone(), base.clone(), valid.clone(), valid_signature.clone(), Arc::clone(&tally));
        tasks.push(tokio::spawn(async move {
            for index in (worker..total).step_by(16) {
                let attack = attacks[index % attacks.len()];
                // Each forged body is a different, otherwise valid command.
                let forged = serde_json::to_vec(
                    &json!({"specversion": "1.0", "id": format!("forged-{index}"), "source": "attacker",
                    "type": "onair.command.stop-now", "subject": "news", "data": {}}),
                )
                .unwrap();
                let request =
                    http.post(format!("{base}/events")).header("content-type", "application/cloudevents+json");
                let request = match attack {
                    Attack::Missing => request.body(forged),
                    Attack::BadSignature => {
                        request.header(SIGNATURE_HEADER, sign("guessed-secret-0123456789", now(), &forged)).body(forged)
                    }
                    Attack::Stale => request.header(SIGNATURE_HEADER, sign(SECRET, now() - 301, &forged)).body(forged),
                    Attack::WrongKey => http.post(format!("{base}/events?key=not-the-key-0123456789")).body(forged),
                    Attack::Oversized => {
                        let mut big = forged.clone();
                        big.extend(std::iter::repeat_n(b' ', max_body));
                        let signature = sign(SECRET, now(), &big);
                        request.header(SIGNATURE_HEADER, signature).body(big)
                    }
                    Attack::Replay => request.header(SIGNATURE_HEADER, &valid_signature).body(valid.clone()),
                };
                let status = request.send().await.map(|response| response.status().as_u16()).unwrap_or(0);
                *tally.lock().unwrap().entry((attack, status)).or_default() += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();

    // Handshakes for a topic or an origin nobody configured are refused.
    let validation = json!([{"id": "v1", "topic": "/subscriptions/someone-else/x", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-11-24T10:00:00Z", "data": {"validationCode": "3c1f3c8e-0000-4000-8000-000000000001"}, "dataVersion": "1"}]);
    let refused = http
        .post(format!("{base}/eventgrid?key={KEY}"))
        .header("aeg-event-type", "SubscriptionValidation")
        .json(&validation)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let mut ours = validation.clone();
    ours[0]["topic"] = json!(TOPIC);
    let accepted = http
        .post(format!("{base}/eventgrid?key={KEY}"))
        .header("aeg-event-type", "SubscriptionValidation")
        .json(&ours)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    assert_eq!(
        accepted.json::<Value>().await.unwrap(),
        json!({"validationResponse": "3c1f3c8e-0000-4000-8000-000000000001"})
    );
    let options = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/events?key={KEY}"))
            .header("webhook-request-origin", origin)
            .send()
    };
    let refused = options("evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    let allowed = options("eventgrid.azure.net").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["webhook-allowed-origin"], "eventgrid.azure.net");

    let tally = tally.lock().unwrap().clone();
    let expected = |attack: Attack| match attack {
        Attack::Oversized => 413,
        Attack::Replay => 200,
        _ => 401,
    };
    for ((attack, status), count) in &tally {
        assert_eq!(*status, expected(*attack), "{count} × {attack:?} got {status}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = audit(&store);
    let decisions_after = rows.iter().filter(|row| row.kind == "decision").count();
    let forged = rows.iter().filter(|row| row.event_id.as_deref().is_some_and(|id| id.contains("forged-"))).count();
    assert_eq!(decisions_after, decisions_before, "no state change");
    assert_eq!(forged, 0);
    assert_eq!(decided(&store, valid_id), (1, 0), "replays had no second effect (not even published again)");
    let (_, stats) = daemon.ingress().unwrap();
    let stats = stats.snapshot();
    println!(
        "ingress under attack: {total} requests in {:.1} s ({:.0}/s): {} unauthorized (401), {} too large (413), {} replays answered without effect; \
         0 state changes; validation for an unknown topic and OPTIONS from an unknown origin refused (403)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        stats["unauthorized"],
        stats["too_large"],
        stats["replays"],
    );
    assert_eq!(stats["unauthorized"] as usize + stats["too_large"] as usize + stats["replays"] as usize, total);
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_stopped_deliveries_get_503_and_the_retry_is_the_only_copy() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("ingress-503");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts = "[broadcasts.news]\n[broadcasts.sport]\n[broadcasts.weather]\n";
    let (daemon, base, settings) = daemon_with_ingress(directory.path(), &emulator, &broker, broadcasts, 1 << 20).await;
    let store = settings.engine.store.clone();
    three_states(&broker, &store).await;
    let http = reqwest::Client::new();
    // By key (Event Grid's way) and signed (a sender of ours): both retried with the same bytes.
    let delivery = json!([{"id": "during-outage", "topic": TOPIC, "subject": "liveEvent/news",
        "eventType": "Microsoft.Media.LiveEventEncoderConnected", "eventTime": "2026-11-24T10:00:00Z", "data": {}, "dataVersion": "1.0"}]);
    let send = || http.post(format!("{base}/eventgrid?key={KEY}")).json(&delivery).send();
    let signed = serde_json::to_vec(&json!({"specversion": "1.0", "id": "signed-during-outage", "source": "encoder",
        "type": "Microsoft.Media.LiveEventEncoderConnected", "subject": "liveEvent/sport", "data": {}}))
    .unwrap();
    let signature = sign(SECRET, now(), &signed);
    let send_signed = || {
        http.post(format!("{base}/events"))
            .header("content-type", "application/cloudevents+json")
            .header(SIGNATURE_HEADER, &signature)
            .body(signed.clone())
            .send()
    };

    node().stop_app().unwrap();
    let stopped = Instant::now();
    let response = send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let response = send_signed().await.unwrap();
    assert_eq!(response.status(), 503, "the signed delivery is refused too, and not recorded as seen");
    node().start_app(Duration::from_secs(60)).unwrap();

    // The senders retry (as Event Grid does) until they get a 2xx.
    let mut attempts = 1;
    loop {
        attempts += 1;
        if send().await.unwrap().status() == 200 {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(90), "still refused after {attempts} attempts");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let retried = send_signed().await.unwrap();
    assert_eq!(retried.status(), 200);
    assert_eq!(
        retried.json::<Value>().await.unwrap(),
        json!({"accepted": 1, "ignored": 0}),
        "the signed retry is published, not answered as a replay"
    );
    let replay = send_signed().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(replay["replay"], true, "once published, the same signed delivery is a replay");
    let (key_id, signed_id) = (
        external_id(Proof::Key, TOPIC, "during-outage"),
        external_id(Proof::Signature, "encoder", "signed-during-outage"),
    );
    until(Duration::from_secs(20), "the retried deliveries decided", || {
        decided(&store, &key_id).0 == 1 && decided(&store, &signed_id).0 == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(decided(&store, &key_id), (1, 0));
    assert_eq!(decided(&store, &signed_id), (1, 0));
    // news got the keyed delivery, sport the signed one, weather nothing; no state changed.
    let states = snapshot(&store);
    for (broadcast, state, connected, decisions) in
        [("news", "live", true, 2), ("sport", "standby", true, 2), ("weather", "idle", false, 1)]
    {
        assert_eq!(states[broadcast].0, state, "{broadcast}");
        assert_eq!(states[broadcast].1["encoder_connected"], connected, "{broadcast}");
        let rows = audit(&store);
        let decided = rows.iter().filter(|row| row.broadcast == broadcast && row.kind == "decision").count();
        assert_eq!(decided, decisions, "{broadcast}: set-up and its own delivery, once");
    }
    println!(
        "broker stopped: the ingress answered 503 (Retry-After 5) to a keyed and a signed delivery; {attempts} attempts until 200 {:.1} s later; \
         the signed retry (same signature) published, its replay answered without effect; each decided once",
        stopped.elapsed().as_secs_f64()
    );
    daemon.stop().await.unwrap();
}

/// The transitions of `broadcast` recorded so far, in order (numbers of the `live` machine).
fn transitions(store: &Path, broadcast: &str) -> Vec<i64> {
    audit(store)
        .into_iter()
        .filter(|row| row.kind == "decision" && row.broadcast == broadcast)
        .filter_map(|row| row.transition)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_broadcast_waits_for_its_encoder_degrades_recovers_and_resets_on_a_long_loss() {
    use onair::emulator::{EncoderAction, Endpoint};
    let _exclusive = EXCLUSIVE.lock().await;
    // The ingress's port first: the emulator delivers its Event Grid events there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut emulator_settings = emulator_settings();
    emulator_settings.transition = Duration::from_millis(100);
    let events = &mut emulator_settings.events;
    events.endpoint = Some(Endpoint::parse(&format!("http://127.0.0.1:{port}/eventgrid?key={KEY}")).unwrap());
    let topic = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Media/mediaservices/{}",
        crate::helpers::SUBSCRIPTION,
        crate::helpers::GROUP,
        crate::helpers::ACCOUNT
    );
    events.topic = Some(topic.clone());
    events.heartbeat_interval = Duration::from_millis(200);
    events.retry_initial = Duration::from_millis(100);
    events.retry_max = Duration::from_secs(1);
    let emulator = TestEmulator::start(emulator_settings).await;
    let broker = rabbit::settings("ingress-encoder");
    let directory = tempfile::tempdir().unwrap();
    let real_now = onair::clock::Clock::now(&onair::clock::SystemClock);
    let air = chrono::DateTime::from_timestamp(real_now.timestamp() + 6, 0).unwrap();
    let broadcasts = format!(
        "[broadcasts.news]\nsettings = {{ wait_for_encoder = true, encoder_deadline = \"60s\", heartbeat_timeout = \"1s\", reset_after = \"3s\" }}\n\
         [broadcasts.news.schedule]\nat = \"{}\"\nduration = \"10m\"\nlead = {{ channel = \"4s\", scale = \"1s\" }}\n",
        air.to_rfc3339()
    );
    let mut settings = daemon_settings(directory.path(), &emulator, &broker, &broadcasts);
    let ingress = &mut settings.ingress;
    ingress.enabled = true;
    ingress.listen = format!("127.0.0.1:{port}").parse().unwrap();
    ingress.secrets.keys = vec![SecretString::from(KEY)];
    ingress.topics = vec![topic];
    let daemon = Daemon::start(&settings, Library::built_in()).await.unwrap();
    let store = settings.engine.store.clone();
    let state = || crate::broker::state_of(&store, "news").unwrap_or_default();
    let started = Instant::now();
    let mut timeline = Vec::new();
    let mut mark = |what: &str| timeline.push(format!("{what} at {:.1} s", started.elapsed().as_secs_f64()));

    // Air time comes, the encoder is not there: the broadcast waits.
    until(Duration::from_secs(30), "waiting for the encoder", || state() == "waiting").await;
    mark("waiting");
    // The encoder connects; its first healthy heartbeats (through Event Grid and the ingress) put it on air.
    emulator.emulator.encoder("news", None, EncoderAction::Connect).unwrap();
    until(Duration::from_secs(10), "live after the encoder connects", || state() == "live").await;
    mark("live");
    // Heartbeats turn unhealthy: no healthy heartbeat for heartbeat_timeout, degraded.
    emulator.emulator.encoder("news", None, EncoderAction::Degrade).unwrap();
    until(Duration::from_secs(10), "degraded on unhealthy heartbeats", || state() == "degraded").await;
    mark("degraded");
    // Healthy again: back on air.
    emulator.emulator.encoder("news", None, EncoderAction::Recover).unwrap();
    until(Duration::from_secs(10), "live again", || state() == "live").await;
    mark("live again");
    // A long loss: the encoder disconnects and stays away; after reset_after, the channel is reset.
    emulator.emulator.encoder("news", None, EncoderAction::Disconnect).unwrap();
    until(Duration::from_secs(10), "degraded on disconnect", || state() == "degraded").await;
    mark("disconnected, degraded");
    let reset = || {
        emulator
            .arm_requests()
            .iter()
            .any(|entry| entry.method == "POST" && entry.path.ends_with("/liveEvents/news/reset"))
    };
    until(Duration::from_secs(15), "the channel reset", reset).await;
    mark("channel reset");
    daemon.stop().await.unwrap();

    // All of it is in the audit trail, in order.
    let seen = transitions(&store, "news");
    let position = |transition: i64| seen.iter().position(|seen| *seen == transition);
    let order = [
        ("wait for the encoder", position(38).or(position(37))),
        ("healthy heartbeat: live", position(40)),
        ("heartbeat lost: degraded", position(44)),
        ("healthy again: live", position(45)),
        ("disconnected: degraded", position(25)),
        ("still lost: channel reset", position(27)),
    ];
    for window in order.windows(2) {
        let (Some(before), Some(after)) = (window[0].1, window[1].1) else {
            panic!("{:?} or {:?} missing from {seen:?}", window[0].0, window[1].0)
        };
        assert!(before < after, "{} before {} in {seen:?}", window[0].0, window[1].0);
    }
    let rows = audit(&store);
    let notices: Vec<&str> = rows
        .iter()
        .filter(|row| row.kind == "action")
        .map(|row| row.reason.as_str())
        .filter(|reason| reason.contains("channel.reset"))
        .collect();
    assert!(!notices.is_empty(), "the reset action is audited");
    let heartbeats = rows.iter().filter(|row| row.event_type.as_deref() == Some("onair.encoder.heartbeat")).count();
    println!("encoder end to end: {}; {heartbeats} heartbeats decided", timeline.join(", "));
}

/// Each broadcast's state, vars and number of audit rows.
fn snapshot(store: &Path) -> BTreeMap<String, (String, Value, usize)> {
    let rows = audit(store);
    let instances = SqliteStore::open_read_only(store).and_then(|store| store.load_instances()).unwrap();
    instances
        .into_iter()
        .map(|instance| {
            let audited = rows.iter().filter(|row| row.broadcast == instance.broadcast).count();
            (instance.broadcast, (instance.state, Value::Object(instance.vars), audited))
        })
        .collect()
}

/// Puts news live, sport in standby and weather idle by force-state through the broker (the
/// operator's path), and waits for it: three broadcasts in three states.
async fn three_states(broker: &onair::broker::Settings, store: &Path) {
    let at = onair::clock::Clock::now(&onair::clock::SystemClock);
    let force = |broadcast: &str, state: &str| {
        onair::event::Event::new(
            format!("setup-{broadcast}"),
            onair::event::FORCE_STATE,
            broadcast,
            json!({"state": state, "by": "test"}),
            at,
        )
    };
    trusted(broker, vec![force("news", "live"), force("sport", "standby"), force("weather", "idle")]).await;
    until(Duration::from_secs(10), "the three broadcasts set up", || {
        let states = snapshot(store);
        [("news", "live"), ("sport", "standby"), ("weather", "idle")]
            .iter()
            .all(|(broadcast, state)| states.get(*broadcast).is_some_and(|(now, ..)| now == state))
    })
    .await;
}

/// Publishes events through the broker: the trusted path (onair's own components, `onair send`).
async fn trusted(broker: &onair::broker::Settings, events: Vec<onair::event::Event>) {
    rabbit::publish_all(broker, events, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_internal_events_and_commands_by_key_are_refused_and_squatted_ids_have_no_effect() {
    use onair::event::Event;
    let _exclusive = EXCLUSIVE.lock().await;
    let mut emulator_settings = emulator_settings();
    emulator_settings.transition = Duration::from_millis(100);
    let emulator = TestEmulator::start(emulator_settings).await;
    let broker = rabbit::settings("ingress-forgeries");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts = "[broadcasts.news]\n[broadcasts.sport]\n[broadcasts.weather]\n";
    // Commands are on here, so that the refusal of a command by key is for the key alone.
    let (daemon, base, settings) = daemon_with(directory.path(), &emulator, &broker, broadcasts, 1 << 20, |settings| {
        settings.ingress.accept_commands = true;
    })
    .await;
    let store = settings.engine.store.clone();
    let http = reqwest::Client::new();
    let at = onair::clock::Clock::now(&onair::clock::SystemClock);

    // Three broadcasts in three states, set by the operator (force-state through the broker):
    // news live, sport standby, weather idle (untouched until now, then given a first decision).
    let force = |id: &str, broadcast: &str, state: &str| {
        Event::new(id, onair::event::FORCE_STATE, broadcast, json!({"state": state, "by": "test"}), at)
    };
    trusted(
        &broker,
        vec![
            force("setup-news", "news", "live"),
            force("setup-sport", "sport", "standby"),
            force("setup-weather", "weather", "idle"),
        ],
    )
    .await;
    until(Duration::from_secs(10), "the three broadcasts set up", || {
        let states = snapshot(&store);
        states.get("news").is_some_and(|(state, ..)| state == "live")
            && states.get("sport").is_some_and(|(state, ..)| state == "standby")
            && states.get("weather").is_some_and(|(state, ..)| state == "idle")
    })
    .await;
    let before = snapshot(&store);

    // The forgeries, each by key (Event Grid and CloudEvents schemas) and signed.
    let forgeries = [
        (
            "forged action result",
            "onair.action.succeeded",
            "sport",
            json!({"action": "locator.publish", "outbox_id": 1, "params": {}, "result": {"hls": "https://evil.example/stream.m3u8"}}),
            400,
        ),
        (
            "forged failure",
            "onair.action.failed",
            "news",
            json!({"action": "channel.start", "outbox_id": 2, "params": {}, "error": {"message": "forged"}}),
            400,
        ),
        (
            "forged timer",
            "onair.timer.fired",
            "news",
            json!({"timer": "heartbeat-lost", "state": "live", "due": "2026-12-02T00:00:00Z"}),
            400,
        ),
        (
            "forged schedule step",
            "onair.schedule.fired",
            "weather",
            json!({"broadcast": "weather", "occurrence": "forged", "step": "warmup", "planned": "2026-12-02T00:00:00Z"}),
            400,
        ),
        ("forged notification", "onair.notification", "weather", json!({"message": "forged"}), 400),
        (
            "command by query key",
            "onair.command.force-state",
            "news",
            json!({"state": "failed", "by": "attacker"}),
            403,
        ),
    ];
    let mut refused = Vec::new();
    for (index, (what, kind, subject, data, status)) in forgeries.iter().enumerate() {
        let cloudevent = json!({"specversion": "1.0", "id": format!("forgery-{index}"), "source": "attacker", "type": kind, "subject": subject, "data": data});
        let grid = json!([{"id": format!("forgery-grid-{index}"), "topic": TOPIC, "eventType": kind, "subject": subject,
            "eventTime": "2026-12-02T00:00:00Z", "data": data, "dataVersion": "1.0"}]);
        let body = serde_json::to_vec(&cloudevent).unwrap();
        let requests = [
            ("CloudEvents by key", http.post(format!("{base}/events?key={KEY}")).json(&cloudevent)),
            ("Event Grid by key", http.post(format!("{base}/eventgrid?key={KEY}")).json(&grid)),
            (
                "CloudEvents signed",
                http.post(format!("{base}/events")).header(SIGNATURE_HEADER, sign(SECRET, now(), &body)).body(body),
            ),
        ];
        for (how, request) in requests {
            let response = request.send().await.unwrap();
            let got = response.status().as_u16();
            let reason = response.json::<Value>().await.unwrap()["error"].as_str().unwrap_or_default().to_string();
            // A signed command is the operator's own way in (accept_commands is on here).
            let expected = if *kind == onair::event::FORCE_STATE && how.ends_with("signed") { 200 } else { *status };
            if expected == 200 {
                assert_eq!(got, 200, "{what} {how}");
                continue;
            }
            assert_eq!(got, expected, "{what} {how}: {reason}");
            assert!(reason.contains(kind), "{what} {how}: the reason names the type: {reason}");
            refused.push(format!("{what} ({how}): {got}"));
        }
    }
    // The signed force-state above was accepted: wait for it, then undo it, so that the rest
    // compares with the set-up (it is the operator's path, not a forgery).
    until(Duration::from_secs(10), "the signed command decided", || {
        snapshot(&store).get("news").is_some_and(|(state, ..)| state == "failed")
    })
    .await;
    trusted(&broker, vec![force("restore-news", "news", "live")]).await;
    until(Duration::from_secs(10), "news restored", || {
        snapshot(&store).get("news").is_some_and(|(state, ..)| state == "live")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = snapshot(&store);
    for broadcast in ["news", "sport", "weather"] {
        let (state, vars, _) = &after[broadcast];
        assert_eq!(
            (state, vars),
            (&before[broadcast].0, &before[broadcast].1),
            "{broadcast}: state and vars unchanged"
        );
    }
    assert_eq!(after["sport"].2, before["sport"].2, "sport: no audit row from the forgeries");
    assert_eq!(after["weather"].2, before["weather"].2, "weather: no audit row from the forgeries");
    assert_eq!(after["news"].2, before["news"].2 + 2, "news: only the signed command and its undoing");
    assert_eq!(after["sport"].1["hls"], "", "the forged hls URL is nowhere");
    let rows = audit(&store);
    assert!(
        !rows
            .iter()
            .any(|row| row.event_id.as_deref().is_some_and(|id| id.contains("forgery-") && !id.ends_with("forgery-5")))
    );

    // Id squatting: the predictable ids of weather's next schedule step and of the actions it
    // starts, sent first as accepted external events (about weather, news and sport)...
    let occurrence = "2026-12-02";
    let step_id = format!("weather/{occurrence}/warmup");
    let mut squatters: Vec<String> = vec![step_id.clone()];
    squatters.extend((1..=40).map(|n| format!("action/{n}")));
    for broadcast in ["weather", "news", "sport"] {
        let batch: Vec<Value> = squatters
            .iter()
            .map(|id| json!({"specversion": "1.0", "id": id, "source": "onair", "type": "Microsoft.Media.LiveEventEncoderConnected", "subject": broadcast, "data": {}}))
            .collect();
        let response = http.post(format!("{base}/events?key={KEY}")).json(&batch).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap()["accepted"], squatters.len());
    }
    until(Duration::from_secs(20), "the squatting events decided", || {
        squatters.iter().all(|id| decided(&store, &external_id(Proof::Key, "onair", id)).0 == 3)
    })
    .await;
    let squatted = snapshot(&store);
    // ...then the real ones come: weather's warm-up step, and the results of the actions it runs.
    trusted(
        &broker,
        vec![Event::new(
            step_id.clone(),
            onair::event::SCHEDULE_FIRED,
            "weather",
            json!({"broadcast": "weather", "occurrence": occurrence, "step": "warmup", "planned": at.to_rfc3339(), "air": at.to_rfc3339()}),
            at,
        )],
    )
    .await;
    until(Duration::from_secs(30), "weather warmed up to standby", || {
        snapshot(&store).get("weather").is_some_and(|(state, ..)| state == "standby")
    })
    .await;
    assert_eq!(decided(&store, &step_id), (1, 0), "the real schedule step is decided, not a duplicate");
    let rows = audit(&store);
    let actions: Vec<&onair::store::AuditRow> = rows
        .iter()
        .filter(|row| row.broadcast == "weather" && row.event_id.as_deref().is_some_and(|id| id.starts_with("action/")))
        .collect();
    let decisions = actions.iter().filter(|row| row.kind == "decision").count();
    assert!(decisions >= 2, "endpoint.start and channel.start results decided: {actions:?}");
    assert!(
        !actions.iter().any(|row| row.kind == "duplicate"),
        "no real action result taken for a duplicate: {actions:?}"
    );
    let last = snapshot(&store);
    for broadcast in ["news", "sport"] {
        assert_eq!(last[broadcast].0, before[broadcast].0, "{broadcast}: state unchanged by the squatters");
        assert_eq!(last[broadcast].2, squatted[broadcast].2, "{broadcast}: nothing more after the squatting events");
    }
    assert_eq!(last["weather"].1["occurrence"], occurrence);
    println!(
        "trust boundary: {} forgeries refused ({} with 400, {} with 403); 0 changes to news (live), sport (standby), weather (idle); \
         {} squatted ids (schedule step, action/1..40) × 3 broadcasts absorbed in the ingress namespace; weather then warmed up \
         to standby on the real step and {} real action results, none taken for a duplicate",
        refused.len(),
        refused.iter().filter(|line| line.ends_with("400")).count(),
        refused.iter().filter(|line| line.ends_with("403")).count(),
        squatters.len(),
        decisions
    );
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_recognised_by_their_signed_content_and_wild_timestamps_are_401() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("ingress-replays");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts = "[broadcasts.news]\n[broadcasts.sport]\n[broadcasts.weather]\n";
    let (daemon, base, settings) = daemon_with_ingress(directory.path(), &emulator, &broker, broadcasts, 1 << 20).await;
    let store = settings.engine.store.clone();
    three_states(&broker, &store).await;
    let http = reqwest::Client::new();
    let post = |signature: String, body: Vec<u8>| {
        http.post(format!("{base}/events"))
            .header("content-type", "application/cloudevents+json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
    };
    let body = |broadcast: &str, id: &str| {
        serde_json::to_vec(&json!({"specversion": "1.0", "id": id, "source": "encoder",
            "type": "Microsoft.Media.LiveEventEncoderConnected", "subject": broadcast, "data": {}}))
        .unwrap()
    };

    // One delivery per broadcast; then each replayed with the header written differently.
    let t = now();
    let mut replays = 0;
    for broadcast in ["news", "sport", "weather"] {
        let body = body(broadcast, &format!("connected-{broadcast}"));
        let header = sign(SECRET, t, &body);
        let hex = header.split_once(",v1=").unwrap().1.to_string();
        let other = sign("retired-hmac-secret-000000", t, &body).split_once(",v1=").unwrap().1.to_string();
        let first = post(header.clone(), body.clone()).await.unwrap().json::<Value>().await.unwrap();
        assert_eq!(first, json!({"accepted": 1, "ignored": 0}), "{broadcast}");
        for variant in [
            header.clone(),
            format!("t={t},v1={hex},v1={}", "0".repeat(64)),
            format!("t={t},v1={other},v1={hex}"),
            format!("v1={hex},t={t}"),
            format!(" t={t} , v1={hex} "),
            format!("t=+{t},v1={hex}"),
            format!("t={t},v0=ignored,v1={hex}"),
        ] {
            let response = post(variant.clone(), body.clone()).await.unwrap();
            assert_eq!(response.status(), 200, "{variant}");
            assert_eq!(response.json::<Value>().await.unwrap()["replay"], true, "{broadcast}: {variant} is a replay");
            replays += 1;
        }
    }

    // Two identical deliveries at once: one is published, the other is a replay (never both,
    // never neither).
    let concurrent = body("news", "concurrent");
    let header = sign(SECRET, t, &concurrent);
    let (a, b) = tokio::join!(post(header.clone(), concurrent.clone()), post(header.clone(), concurrent.clone()));
    let mut answers = [a.unwrap().json::<Value>().await.unwrap(), b.unwrap().json::<Value>().await.unwrap()];
    answers.sort_by_key(|answer| answer["replay"].as_bool().unwrap_or(false));
    assert_eq!(answers, [json!({"accepted": 1, "ignored": 0}), json!({"accepted": 0, "replay": true})]);

    // Timestamps far out, or beyond i64: 401, and the daemon (a debug build) still answers.
    let wild = body("news", "wild");
    for t in ["-9223372036854775808", "9223372036854775807", "-1", "9223372036854775808", "99999999999999999999999999"]
    {
        let response = post(format!("t={t},v1={}", "ab".repeat(32)), wild.clone()).await.unwrap();
        assert_eq!(response.status(), 401, "t={t}");
    }
    let response = post(sign(SECRET, now(), &wild), wild.clone()).await.unwrap();
    assert_eq!(response.status(), 200, "still answering");

    let ids = ["connected-news", "connected-sport", "connected-weather", "concurrent", "wild"];
    until(Duration::from_secs(10), "each delivery decided", || {
        ids.iter().all(|id| decided(&store, &external_id(Proof::Signature, "encoder", id)).0 == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in ids {
        assert_eq!(
            decided(&store, &external_id(Proof::Signature, "encoder", id)),
            (1, 0),
            "{id}: decided once, never republished"
        );
    }
    let states = snapshot(&store);
    for (broadcast, state) in [("news", "live"), ("sport", "standby"), ("weather", "idle")] {
        assert_eq!(states[broadcast].0, state, "{broadcast}: the encoder events change no state");
        assert_eq!(states[broadcast].1["encoder_connected"], true, "{broadcast}: its own event, once");
    }
    let decisions = |broadcast: &str| {
        audit(&store).iter().filter(|row| row.broadcast == broadcast && row.kind == "decision").count()
    };
    // setup + connected (+ concurrent and wild for news): nothing republished by a replay.
    assert_eq!((decisions("news"), decisions("sport"), decisions("weather")), (4, 2, 2));
    let (_, stats) = daemon.ingress().unwrap();
    let stats = stats.snapshot();
    assert_eq!(stats["replays"], replays + 1);
    println!(
        "replays: {replays} header variants (the same, an extra v1, reordered, spaced, t=+, an unknown part) of 3 deliveries \
         answered as replays; 2 identical concurrent deliveries: 1 published, 1 replay; 5 wild timestamps: 401; each event decided once"
    );
    daemon.stop().await.unwrap();
}
