//! Slow and idle clients against both listeners of a real daemon (RabbitMQ, engine, SQLite,
//! emulator): silent connections, headers sent a byte a second, bodies that stop arriving,
//! bodies trickled a byte just under the idle timeout apart, deliveries with a wrong query key
//! whose body never comes, and more connections than the limit. The daemon closes them within
//! its timeouts (the trickled bodies at the request deadline, with 408; the wrong keys at once,
//! with 401) while it stays ready and answers real signed deliveries and probes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use onair::daemon::Daemon;
use onair::http::Limits;
use onair::ingress::{Proof, SIGNATURE_HEADER, external_id, sign};
use onair::machine::Library;
use onair::store::SqliteStore;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::broker::EXCLUSIVE;
use crate::helpers::{TestEmulator, emulator_settings};
use crate::ingress::{KEY, SECRET, TOPIC};
use crate::operations::{TOKEN, command, get, until_async};
use crate::rabbit;
use crate::schedule::daemon_settings;

const HEADERS: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);
const REQUEST: Duration = Duration::from_secs(4);
/// How often a trickling body sends a byte: just under the idle timeout, so that it never fires.
const BODY_TRICKLE: Duration = Duration::from_millis(1500);
/// Scheduling and timer slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

const BROADCASTS: &str = "[broadcasts.news]\nchannel = \"mle1\"\n[broadcasts.sport]\nchannel = \"mle2\"\n\
                          [broadcasts.weather]\nchannel = \"mle3\"\n";

async fn daemon(directory: &Path, emulator: &TestEmulator, broker: &onair::broker::Settings, limits: Limits) -> Daemon {
    let mut settings = daemon_settings(directory, emulator, broker, BROADCASTS);
    settings.http.enabled = true;
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.api_token = Some(SecretString::from(TOKEN));
    settings.http.connections = limits;
    settings.health.media_check_interval = Duration::from_millis(500);
    settings.ingress.enabled = true;
    settings.ingress.listen = "127.0.0.1:0".parse().unwrap();
    settings.ingress.secrets.hmac = vec![SecretString::from(SECRET)];
    settings.ingress.secrets.keys = vec![SecretString::from(KEY)];
    settings.ingress.connections = limits;
    Daemon::start(&settings, Library::built_in()).await.unwrap()
}

/// What an attacking connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Attack {
    /// Connects and says nothing.
    Silent,
    /// Sends a request's head one byte a second.
    Trickle,
    /// Sends a whole head announcing a body, ten bytes of it, then nothing.
    StalledBody,
    /// Sends a whole head announcing a body, then the body a byte every `BODY_TRICKLE` (just
    /// under the idle timeout: only the request deadline stops it).
    TrickleBody,
    /// Sends a whole head with a wrong query key announcing a body, and no body.
    WrongKey,
}

/// What the server did with an attacking connection.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// How long it kept the connection open.
    open: Duration,
    /// The status it answered, and when, if it answered.
    answer: Option<(u16, Duration)>,
}

/// Runs one attacking connection.
async fn attack(address: std::net::SocketAddr, kind: Attack, path: &'static str) -> Outcome {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    let target = if kind == Attack::WrongKey { format!("{path}?key=not-the-key-0123456789") } else { path.to_string() };
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: onair\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    let (mut reader, mut writer) = stream.split();
    let writing = async {
        match kind {
            Attack::Silent => std::future::pending::<()>().await,
            Attack::Trickle => {
                for byte in head.bytes() {
                    if writer.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await;
            }
            Attack::StalledBody => {
                let _ = writer.write_all(head.as_bytes()).await;
                let _ = writer.write_all(b"{\"id\": \"x\"").await;
                std::future::pending::<()>().await;
            }
            Attack::TrickleBody => {
                let _ = writer.write_all(head.as_bytes()).await;
                loop {
                    if writer.write_all(b" ").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(BODY_TRICKLE).await;
                }
                std::future::pending::<()>().await;
            }
            Attack::WrongKey => {
                let _ = writer.write_all(head.as_bytes()).await;
                std::future::pending::<()>().await;
            }
        }
    };
    let mut answer = None;
    let closed = async {
        let mut buffer = [0_u8; 1024];
        let mut received = Vec::new();
        // Whatever the server answers (408, 401, nothing), the end is EOF or a reset.
        while let Ok(read) = reader.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..read]);
            if answer.is_none() && received.windows(2).any(|window| window == b"\r\n") {
                let status = String::from_utf8_lossy(&received)
                    .split_whitespace()
                    .nth(1)
                    .and_then(|status| status.parse().ok())
                    .unwrap_or(0);
                answer = Some((status, started.elapsed()));
            }
        }
    };
    tokio::select! {
        () = writing => {}
        () = closed => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => panic!("{kind:?} connection on {path} still open after 30s"),
    }
    Outcome { open: started.elapsed(), answer }
}

fn delivery(id: &str, channel: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": id, "source": TOPIC, "subject": format!("liveEvent/{channel}"),
        "type": "Microsoft.Media.LiveEventIngestHeartbeat", "time": "2026-12-02T10:00:00Z",
        "data": {"trackType": "video", "trackName": "video", "bitrate": 2500000, "incomingBitrate": 2462597, "healthy": true},
    }))
    .unwrap()
}

fn summary(name: &str, mut durations: Vec<Duration>) -> (Duration, Duration) {
    durations.sort();
    let (min, max) = (durations[0], durations[durations.len() - 1]);
    let median = durations[durations.len() / 2];
    println!(
        "{name}: {} closed, after min {:.2} s, median {:.2} s, max {:.2} s",
        durations.len(),
        min.as_secs_f64(),
        median.as_secs_f64(),
        max.as_secs_f64()
    );
    (min, max)
}

fn latencies(name: &str, mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    let max = durations[durations.len() - 1];
    println!(
        "{name}: {} answered during the attack, latency median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        durations.len(),
        durations[durations.len() / 2].as_secs_f64() * 1000.0,
        durations[durations.len() * 95 / 100].as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
    max
}

async fn listed_state(base: &str, broadcast: &str) -> Option<String> {
    let (_, list) = get(base, "/api/v1/broadcasts").await;
    list["broadcasts"].as_array()?.iter().find(|entry| entry["id"] == broadcast)?["state"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_clients_are_closed_while_real_requests_are_answered() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("slowclients");
    let directory = tempfile::tempdir().unwrap();
    let limits =
        Limits { header_read_timeout: HEADERS, idle_timeout: IDLE, request_timeout: REQUEST, max_connections: 512 };
    let daemon = daemon(directory.path(), &emulator, &broker, limits).await;
    let operations = daemon.http_address().unwrap();
    let ingress = daemon.ingress().unwrap().0;
    let base = format!("http://{operations}");
    until_async(Duration::from_secs(20), "ready", || async { get(&base, "/readyz").await.0 == 200 }).await;

    // Three broadcasts in three states.
    for (id, state) in [("news", "standby"), ("sport", "failed")] {
        let body = json!({"command": "force-state", "state": state, "note": "test set-up"});
        assert_eq!(command(&base, id, Some(TOKEN), body).await.0, 202);
        until_async(Duration::from_secs(10), id, || async { listed_state(&base, id).await.as_deref() == Some(state) })
            .await;
    }
    assert_eq!(listed_state(&base, "weather").await, None, "never decided: idle");

    // The attack: on each listener, 50 silent, 50 trickling, 10 stalled-body and 20
    // trickling-body connections; on the ingress, 20 deliveries with a wrong key and no body.
    let started = Instant::now();
    let mut attackers = tokio::task::JoinSet::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let mut total = 0;
    for (address, path) in [(ingress, "/eventgrid"), (operations, "/api/v1/broadcasts/news/commands")] {
        for (kind, count) in [
            (Attack::Silent, 50),
            (Attack::Trickle, 50),
            (Attack::StalledBody, 10),
            (Attack::TrickleBody, 20),
            (Attack::WrongKey, if address == ingress { 20 } else { 0 }),
        ] {
            total += count;
            for _ in 0..count {
                let finished = Arc::clone(&finished);
                attackers.spawn(async move {
                    let outcome = attack(address, kind, path).await;
                    let at = started.elapsed();
                    finished.fetch_add(1, Ordering::Relaxed);
                    (address, kind, outcome, at)
                });
            }
        }
    }

    // Meanwhile, real requests: a signed delivery and a readiness probe every 100 ms.
    let http = reqwest::Client::new();
    let channels = [("news", "mle1"), ("sport", "mle2"), ("weather", "mle3")];
    let (mut delivered, mut probed, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    while finished.load(Ordering::Relaxed) < total && started.elapsed() < Duration::from_secs(10) {
        let (broadcast, channel) = channels[ids.len() % 3];
        let id = format!("slow-{}", ids.len());
        let body = delivery(&id, channel);
        let sent = Instant::now();
        let response = http
            .post(format!("http://{ingress}/events"))
            .header("content-type", "application/cloudevents+json")
            .header(
                SIGNATURE_HEADER,
                sign(SECRET, onair::clock::Clock::now(&onair::clock::SystemClock).timestamp(), &body),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        delivered.push(sent.elapsed());
        assert_eq!(status, 200, "delivery {id} during the attack: {answer}");
        // The engine knows an outside event by its namespaced id.
        ids.push((external_id(Proof::Signature, TOPIC, &id), broadcast));
        let sent = Instant::now();
        let (status, ready) = get(&base, "/readyz").await;
        probed.push(sent.elapsed());
        assert_eq!(status, 200, "readiness during the attack: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut closed: std::collections::BTreeMap<(bool, Attack), Vec<Outcome>> = Default::default();
    let mut all_closed = Duration::ZERO;
    while let Some(result) = attackers.join_next().await {
        let (address, kind, outcome, at) = result.unwrap();
        all_closed = all_closed.max(at);
        closed.entry((address == ingress, kind)).or_default().push(outcome);
    }
    println!(
        "attack: {total} connections, all closed {:.2} s after the attack began (header timeout {HEADERS:?}, idle timeout {IDLE:?}, request deadline {REQUEST:?})",
        all_closed.as_secs_f64()
    );
    for ((on_ingress, kind), outcomes) in closed {
        let listener = if on_ingress { "ingress" } else { "operations" };
        let name = match kind {
            Attack::Silent => "silent",
            Attack::Trickle => "trickling",
            Attack::StalledBody => "stalled body",
            Attack::TrickleBody => "body trickled a byte every 1.5 s",
            Attack::WrongKey => "wrong query key, no body",
        };
        let expected = match kind {
            Attack::Silent | Attack::Trickle => 50,
            Attack::StalledBody => 10,
            Attack::TrickleBody | Attack::WrongKey => 20,
        };
        assert_eq!(outcomes.len(), expected, "{listener} {name}");
        if kind == Attack::WrongKey {
            // Refused on the key alone, without waiting for a body that never comes.
            let answered: Vec<Duration> = outcomes
                .iter()
                .map(|outcome| match outcome.answer {
                    Some((401, at)) => at,
                    other => panic!("{listener} {name}: answered {other:?}, not 401"),
                })
                .collect();
            let (_, max) = summary(&format!("{listener}, {name}: answered 401"), answered);
            let (_, open) =
                summary(&format!("{listener}, {name}: then"), outcomes.iter().map(|outcome| outcome.open).collect());
            assert!(max < HEADERS && open < HEADERS, "{listener} {name}: 401 after {max:?}, closed after {open:?}");
            continue;
        }
        let (min, max) = summary(&format!("{listener}, {name}"), outcomes.iter().map(|outcome| outcome.open).collect());
        let (earliest, limit) = match kind {
            Attack::StalledBody => (IDLE - Duration::from_millis(100), IDLE),
            Attack::TrickleBody => (REQUEST - Duration::from_millis(100), REQUEST),
            _ => (HEADERS - Duration::from_millis(100), HEADERS),
        };
        assert!(min >= earliest, "{listener} {name}: closed after {min:?}, before its timeout {limit:?}");
        assert!(max <= limit + SLACK, "{listener} {name}: open {max:?}, timeout {limit:?}");
        if kind == Attack::TrickleBody {
            let timed_out = outcomes.iter().filter(|outcome| matches!(outcome.answer, Some((408, _)))).count();
            println!("{listener}, {name}: {timed_out} of {expected} answered 408 before the close");
            assert_eq!(timed_out, expected, "{listener} {name}: 408 at the deadline");
        }
    }
    let delivery_max = latencies("signed deliveries (200, confirmed)", delivered);
    let probe_max = latencies("/readyz (200)", probed);
    // Far below the timeouts the attackers are cut at (generous for a loaded CI machine).
    assert!(delivery_max < Duration::from_secs(2) && probe_max < Duration::from_secs(2));

    // Every delivery was decided for its broadcast; the states are as they were.
    let store = directory.path().join("onair.db");
    until_async(Duration::from_secs(10), "every delivery decided", || async {
        let rows = SqliteStore::open_read_only(&store).and_then(|store| store.all_audit()).unwrap_or_default();
        ids.iter().all(|(id, broadcast)| {
            rows.iter().any(|row| row.event_id.as_deref() == Some(id.as_str()) && row.broadcast == *broadcast)
        })
    })
    .await;
    println!("{} deliveries decided, each for its broadcast", ids.len());
    assert_eq!(listed_state(&base, "news").await.as_deref(), Some("standby"));
    assert_eq!(listed_state(&base, "sport").await.as_deref(), Some("failed"));
    assert_eq!(listed_state(&base, "weather").await.as_deref(), Some("idle"), "its first events: decided, still idle");
    assert_eq!(get(&base, "/readyz").await.0, 200);
    daemon.stop().await.unwrap();
}

/// Sends `GET path` on a kept-alive connection and reads the whole answer; returns the status.
async fn get_on(stream: &mut TcpStream, path: &str) -> u16 {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: onair\r\n\r\n").as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed before the answer");
        received.extend_from_slice(&buffer[..read]);
        let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        if received.len() >= end + 4 + length {
            return head.split_whitespace().nth(1).and_then(|status| status.parse().ok()).unwrap_or(0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_without_hurting_those_in_service() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("maxconn");
    let directory = tempfile::tempdir().unwrap();
    let limits =
        Limits { header_read_timeout: HEADERS, idle_timeout: IDLE, request_timeout: REQUEST, max_connections: 4 };
    let daemon = daemon(directory.path(), &emulator, &broker, limits).await;
    let address = daemon.http_address().unwrap();

    // Four clients in service, on kept-alive connections.
    let mut served = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(address).await.unwrap();
        assert_eq!(get_on(&mut stream, "/healthz").await, 200);
        served.push(stream);
    }
    let ready = Instant::now();
    while get_on(&mut served[0], "/readyz").await != 200 {
        assert!(ready.elapsed() < Duration::from_secs(20), "not ready after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Twenty more connections: over the limit, they wait (not accepted, so not served).
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..20 {
        waiting.spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let started = Instant::now();
            (get_on(&mut stream, "/healthz").await, started.elapsed())
        });
    }
    // The four go on being served, well within their timeouts, while the twenty wait.
    let started = Instant::now();
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        for stream in &mut served {
            let sent = Instant::now();
            assert_eq!(get_on(stream, "/readyz").await, 200, "ready, and answered");
            slowest = slowest.max(sent.elapsed());
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(waiting.try_join_next().is_none(), "a connection beyond the limit was served");
    }
    println!(
        "limit 4: {answered} requests answered on the 4 connections in service in 3 s (slowest {:.1} ms) while 20 waited",
        slowest.as_secs_f64() * 1000.0
    );
    // The four leave: the twenty are served in turn.
    drop(served);
    let released = Instant::now();
    let mut waits = Vec::new();
    while let Some(result) = waiting.join_next().await {
        let (status, _) = result.unwrap();
        assert_eq!(status, 200);
        waits.push(released.elapsed());
    }
    waits.sort();
    println!(
        "then the 20 waiting connections were served, the last {:.2} s after the four closed",
        waits[waits.len() - 1].as_secs_f64()
    );
    daemon.stop().await.unwrap();
}
