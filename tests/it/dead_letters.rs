//! Listing dead letters, as often and as concurrently as anyone likes, on a real RabbitMQ node:
//! no letter is ever dropped or reordered. The queue an earlier onair declared (quorum, which
//! RabbitMQ 4 gives a delivery limit of 20) is kept working, refused for listing, and migrated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use onair::broker::{self, DeadQueue, Publisher, dlq};
use onair::daemon::Daemon;
use onair::machine::Library;
use secrecy::SecretString;

use crate::broker::EXCLUSIVE;
use crate::helpers::{TestEmulator, emulator_settings};
use crate::operations::{TOKEN, daemon_with_http, get, until_async};
use crate::rabbit::{self, node};
use crate::schedule::daemon_settings;

const LETTERS: usize = 30;

/// Publishes `LETTERS` letters (`dl-00` …) to the dead-letter exchange, confirmed.
async fn dead_letters(settings: &broker::Settings) {
    let publisher = Publisher::new(Arc::new(settings.clone()));
    for index in 0..LETTERS {
        let mut headers = FieldTable::default();
        headers.insert("x-onair-reason".into(), AMQPValue::LongString(format!("test letter {index}").into()));
        let properties = lapin::BasicProperties::default()
            .with_message_id(format!("dl-{index:02}").into())
            .with_delivery_mode(2)
            .with_headers(headers);
        publisher
            .publish_to(
                &settings.dead_exchange,
                "onair.test",
                format!("{{\"n\": {index}}}").as_bytes(),
                properties,
                true,
            )
            .await
            .unwrap();
    }
    publisher.close().await;
}

fn expected() -> Vec<String> {
    (0..LETTERS).map(|index| format!("dl-{index:02}")).collect()
}

fn ids(letters: &[dlq::DeadLetter]) -> Vec<String> {
    letters.iter().map(|letter| letter.message_id.clone().unwrap_or_default()).collect()
}

fn queue_type(name: &str) -> String {
    let output = node().control(&["list_queues", "name", "type", "--no-table-headers", "--quiet"]).unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(name)).then(|| fields.next().unwrap_or_default().to_string())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_listings_in_a_row_and_fifty_at_once_keep_every_dead_letter_in_order() {
    let _exclusive = EXCLUSIVE.lock().await;
    let settings = rabbit::settings("dlqlist");
    // The topology as onair declares it, then the letters.
    assert!(dlq::list(&settings, 1).await.unwrap().is_empty());
    assert_eq!(queue_type(&settings.dead_queue), "classic", "no delivery limit on any RabbitMQ version");
    dead_letters(&settings).await;

    let started = Instant::now();
    for round in 0..50 {
        let letters = dlq::list(&settings, 10_000).await.unwrap();
        assert_eq!(ids(&letters), expected(), "listing {round}");
        assert!(letters.iter().all(|letter| letter.reason.starts_with("test letter")), "listing {round}");
    }
    println!(
        "50 listings in a row: {LETTERS} of {LETTERS} letters each time, in order ({:.2} s)",
        started.elapsed().as_secs_f64()
    );

    // Concurrent listings on their own connections (as `onair dlq list` run by several people
    // at once, bypassing the API's gate): each sees only what the others do not hold at that
    // moment, and letters they give back may show up out of order in its view; the queue itself
    // loses nothing and keeps its order.
    let mut listings = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let settings = settings.clone();
        listings.spawn(async move { dlq::list(&settings, 10_000).await.unwrap() });
    }
    let (mut seen, mut partial_views) = (Vec::new(), 0);
    while let Some(letters) = listings.join_next().await {
        let letters = ids(&letters.unwrap());
        partial_views += usize::from(letters != expected());
        seen.push(letters.len());
    }
    let after = dlq::list(&settings, 10_000).await.unwrap();
    assert_eq!(ids(&after), expected(), "all there, in order, after 50 concurrent listings");
    println!(
        "50 concurrent listings without the API's gate: {}..{} letters each ({partial_views} partial or unordered views), \
         then {} of {LETTERS} present, in order",
        seen.iter().min().unwrap(),
        seen.iter().max().unwrap(),
        after.len()
    );
    let replayed = dlq::replay(&settings, Some("dl-07"), 10_000).await.unwrap();
    assert_eq!(replayed, dlq::Replayed { replayed: 1, kept: LETTERS - 1 });
    let mut rest = expected();
    rest.remove(7);
    assert_eq!(ids(&dlq::list(&settings, 10_000).await.unwrap()), rest, "a replay keeps the others in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_one_at_a_time_and_every_caller_gets_every_letter() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("dlqapi");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, _) = daemon_with_http(directory.path(), &emulator, &broker, "[broadcasts.news]\n").await;
    until_async(Duration::from_secs(20), "consumer ready", || async { daemon.broker_status().is_ready() }).await;
    dead_letters(&broker).await;

    let first = Instant::now();
    assert_eq!(get(&base, "/api/v1/dead-letters?limit=1000").await.0, 200);
    println!("one API listing: {:.0} ms", first.elapsed().as_secs_f64() * 1000.0);
    tokio::time::sleep(onair::http::LISTING_CACHE).await;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let http = reqwest::Client::new();
    for _ in 0..50 {
        let url = format!("{base}/api/v1/dead-letters?limit=1000");
        let http = http.clone();
        calls.spawn(async move {
            let sent = Instant::now();
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body, sent.elapsed())
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(call) = calls.join_next().await {
        let (status, body, took) = call.unwrap();
        assert_eq!(status, 200, "{body}");
        let listed: Vec<String> = body["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|letter| letter["message_id"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(listed, expected(), "every caller gets every letter, in order");
        slowest = slowest.max(took);
    }
    println!(
        "50 concurrent API listings: all 200 with {LETTERS} of {LETTERS} letters in order, in {:.2} s (slowest {:.0} ms)",
        started.elapsed().as_secs_f64(),
        slowest.as_secs_f64() * 1000.0
    );
    for round in 0..50 {
        let (status, body) = get(&base, "/api/v1/dead-letters?limit=5").await;
        assert_eq!(status, 200);
        assert_eq!(body["dead_letters"].as_array().map(Vec::len), Some(5), "round {round}");
    }
    assert_eq!(ids(&dlq::list(&broker, 10_000).await.unwrap()), expected(), "still all there, in order");
    let (status, body) = get(&base, "/api/v1/dead-letters?limit=10001").await;
    assert_eq!(status, 400, "{body}");
    daemon.stop().await.unwrap();
}

/// The queue as onair declared it before: quorum, here with RabbitMQ 4's default delivery limit
/// (20) made explicit, since this node is RabbitMQ 3.10.
async fn declare_legacy(settings: &broker::Settings) -> lapin::Connection {
    let connection = broker::connect(settings, "test-legacy").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(20));
    channel
        .queue_declare(
            settings.dead_queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            arguments,
        )
        .await
        .unwrap();
    connection
}

/// A listing the way onair did it: take everything unacknowledged, close the channel.
async fn list_as_before(connection: &lapin::Connection, queue: &str) -> usize {
    let channel = connection.create_channel().await.unwrap();
    let mut taken = 0;
    while channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await.unwrap().is_some() {
        taken += 1;
    }
    channel.close(200, "listed".into()).await.unwrap();
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_from_an_earlier_onair_keeps_working_and_is_migrated_in_order() {
    let _exclusive = EXCLUSIVE.lock().await;
    // What went wrong: on a quorum queue with a delivery limit of 20, listings drop letters.
    let before = rabbit::settings("dlqold");
    let connection = declare_legacy(&before).await;
    broker::declare(&connection, &connection.create_channel().await.unwrap(), &before).await.unwrap();
    dead_letters(&before).await;
    let mut counts = Vec::new();
    for _ in 0..25 {
        counts.push(list_as_before(&connection, &before.dead_queue).await);
    }
    println!("listing as before on a quorum queue with RabbitMQ 4's delivery limit, 25 times: {counts:?} letters");
    assert_eq!(counts[0], LETTERS);
    assert_eq!(counts[24], 0, "every letter was dropped by the 21st listing");

    // An existing deployment: the queue is there with its letters; onair keeps running.
    let settings = rabbit::settings("dlqmigrate");
    let connection = declare_legacy(&settings).await;
    let found = broker::declare(&connection, &connection.create_channel().await.unwrap(), &settings).await.unwrap();
    assert_eq!(found, DeadQueue::Legacy, "re-declaring does not fail");
    dead_letters(&settings).await;
    let refused = dlq::list(&settings, 100).await.unwrap_err().to_string();
    println!("listing the old queue: {refused}");
    assert!(refused.contains("onair dlq migrate"), "{refused}");
    assert!(dlq::replay(&settings, None, 100).await.is_err());
    let waiting = connection
        .create_channel()
        .await
        .unwrap()
        .queue_declare(
            settings.dead_queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(waiting as usize, LETTERS, "nothing was taken");

    // The migration: the same letters, in order, in a classic queue.
    let migrated = dlq::migrate(&settings).await.unwrap();
    assert_eq!(migrated, dlq::Migrated { migrated: true, letters: LETTERS });
    assert_eq!(queue_type(&settings.dead_queue), "classic");
    assert_eq!(queue_type(&format!("{}.migrating", settings.dead_queue)), "", "the temporary queue is gone");
    for round in 0..50 {
        assert_eq!(ids(&dlq::list(&settings, 10_000).await.unwrap()), expected(), "listing {round} after migration");
    }
    println!("migrated {LETTERS} letters; 50 listings after: {LETTERS} of {LETTERS} each time, in order");
    assert_eq!(dlq::migrate(&settings).await.unwrap(), dlq::Migrated { migrated: false, letters: 0 });
    // New dead letters reach the new queue.
    let publisher = Publisher::new(Arc::new(settings.clone()));
    let properties = lapin::BasicProperties::default().with_message_id("dl-new".into());
    publisher.publish_to(&settings.dead_exchange, "x", b"{}", properties, true).await.unwrap();
    publisher.close().await;
    let letters = ids(&dlq::list(&settings, 10_000).await.unwrap());
    assert_eq!(letters.last().map(String::as_str), Some("dl-new"));
    assert_eq!(letters.len(), LETTERS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_an_old_dead_letter_queue_runs_and_answers_listings_with_the_way_out() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("dlqdaemon");
    let connection = declare_legacy(&broker).await;
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, _) = daemon_with_http(directory.path(), &emulator, &broker, "[broadcasts.news]\n").await;
    until_async(Duration::from_secs(20), "consumer ready on the old queue", || async {
        daemon.broker_status().is_ready()
    })
    .await;
    // Malformed messages are still dead-lettered into the old queue.
    let publisher = Publisher::new(Arc::new(broker.clone()));
    let properties = lapin::BasicProperties::default().with_message_id("bad-1".into()).with_delivery_mode(2);
    publisher.publish_to(&broker.exchange, "bad", b"{not json", properties, true).await.unwrap();
    publisher.close().await;
    let channel = connection.create_channel().await.unwrap();
    until_async(Duration::from_secs(10), "dead-lettered into the old queue", || {
        let channel = channel.clone();
        let queue = broker.dead_queue.clone();
        async move {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions { passive: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
                .map(|queue| queue.message_count())
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    let (status, body) = get(&base, "/api/v1/dead-letters").await;
    println!("GET /api/v1/dead-letters on the old queue: {status} {}", body["error"]["message"]);
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("onair dlq migrate"), "{body}");
    assert_eq!(get(&base, "/readyz").await.0, 200, "the daemon itself is fine");
    daemon.stop().await.unwrap();
}

/// `GET` or `POST` on the API; the status, `Retry-After`, the body and how long the answer took.
async fn timed(request: reqwest::RequestBuilder) -> (u16, Option<String>, serde_json::Value, Duration) {
    let sent = Instant::now();
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()).map(str::to_string);
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, retry_after, body, sent.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_stuck_on_the_broker_and_those_behind_it_are_answered_503_well_within_the_request_deadline() {
    let _exclusive = EXCLUSIVE.lock().await;
    // The relation with the default limits: 5 s waiting for the gate and 15 s of work, within
    // the 30 s request deadline and the 60 s idle timeout.
    let defaults = onair::daemon::load(&onair::config::Source::default()).unwrap();
    let budget = onair::http::dead_letter_budget(&defaults.http.connections);
    assert_eq!(budget, (Duration::from_secs(5), Duration::from_secs(15)));
    assert!(
        budget.0 + budget.1 < defaults.http.connections.request_timeout.min(defaults.http.connections.idle_timeout)
    );

    // A broker that takes connections and never says a word (listening, never accepting): a
    // listing on it hangs for as long as it is let, holding the API's dead-letter gate.
    let emulator = TestEmulator::start(emulator_settings()).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut broker = rabbit::settings("dlqstuck");
    broker.url = url::Url::parse(&format!("amqp://{}/%2f", silent.local_addr().unwrap())).unwrap();
    broker.connection_timeout = Duration::from_secs(60);
    let directory = tempfile::tempdir().unwrap();
    let mut settings = daemon_settings(directory.path(), &emulator, &broker, "[broadcasts.news]\n");
    settings.http.enabled = true;
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.api_token = Some(SecretString::from(TOKEN));
    settings.http.connections.request_timeout = Duration::from_secs(6);
    let (wait, work) = onair::http::dead_letter_budget(&settings.http.connections);
    assert_eq!((wait, work), (Duration::from_secs(1), Duration::from_secs(3)));
    let daemon = Daemon::start(&settings, Library::built_in()).await.unwrap();
    let base = format!("http://{}", daemon.http_address().unwrap());

    let http = reqwest::Client::new();
    let first = tokio::spawn(timed(http.get(format!("{base}/api/v1/dead-letters"))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tokio::spawn(timed(http.get(format!("{base}/api/v1/dead-letters?limit=5"))));
    let replay = tokio::spawn(timed(http.post(format!("{base}/api/v1/dead-letters/replay")).bearer_auth(TOKEN)));
    let slack = Duration::from_millis(1500);
    for (name, call) in [("listing behind it", second.await.unwrap()), ("replay behind it", replay.await.unwrap())] {
        let (status, retry_after, body, took) = call;
        println!("{name}: {status} after {:.2} s, Retry-After {retry_after:?}: {body}", took.as_secs_f64());
        assert_eq!(status, 503, "{name}: {body}");
        assert_eq!(body["error"]["code"], "dead_letters_busy", "{name}: {body}");
        assert_eq!(retry_after.as_deref(), Some("3"), "{name}");
        assert!(
            took >= wait - Duration::from_millis(100) && took <= wait + slack,
            "{name}: {took:?}, gate wait {wait:?}"
        );
    }
    let (status, retry_after, body, took) = first.await.unwrap();
    println!(
        "stuck listing: {status} after {:.2} s (its budget {work:?}, request deadline 6 s): {body}",
        took.as_secs_f64()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    assert_eq!(retry_after.as_deref(), Some("3"));
    assert!(took >= work - Duration::from_millis(100) && took <= work + slack, "{took:?}, budget {work:?}");
    assert!(took < settings.http.connections.request_timeout, "answered before the deadline");
    drop(silent);
    daemon.stop().await.unwrap();
}
