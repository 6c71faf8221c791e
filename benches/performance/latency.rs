//! Publish → first REST call at a steady 1,000 events/s: `onair run` (a separate process,
//! release build), the emulator in this process behind a layer that notes when the first request
//! naming each live event arrives, and events published through RabbitMQ at 1,000/s (16 confirmed
//! publishers, each taking the next event as it comes due): one in twenty an
//! `onair.command.start-now` for an idle broadcast of its own (50 a second, each a chain of about
//! seven REST calls, as many as the emulator can answer alongside), the others `pause`/`resume`
//! commands for 500 other broadcasts (decided and committed, no REST call). The figure for a
//! start-now: the instant the first request whose path names its channel
//! (`…/liveEvents/<channel>…`) reached the emulator's router, minus the instant its publish
//! began; both from this process's monotonic clock.
//!
//! The `live` machine answers start-now with `endpoint.start` (the shared streaming endpoint,
//! which names no channel) then `channel.start`, whose first request is the GET of the live
//! event: that request is the "first REST call" for the broadcast.
//! The reference, measured first in the same run: the broker alone, the same events through the
//! same publishers to a quorum queue of their own and a bare lapin consumer, publish → delivery.
//! `ONAIR_BENCH_LATENCY_EVENTS` changes the count (10,000, i.e. 10 s). With every event a
//! start-now, the REST calls they start (7,000 a second) exceed what the emulator answers on
//! two cores, and the figure measures that backlog instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onair::clock::{Clock, SystemClock};
use onair::event::Event;

use crate::daemon::process::{self, Daemon, Quantiles, Setup};
use crate::report::{Report, Row, Target};

/// Events published per second.
const RATE: u64 = 1000;
/// Publishers, each with its own connection and channel (one confirmed publish at a time each).
const PUBLISHERS: usize = 16;
/// One event in this many starts a broadcast; the others change variables only.
const START_EVERY: usize = 20;
/// Broadcasts the other events are for.
const OTHERS: usize = 500;

pub fn run(report: &mut Report) {
    process::runtime().block_on(measure(report));
}

/// When the first request naming each live event (lower case) arrived, and how many requests
/// arrived in all.
#[derive(Clone, Default)]
struct Arrivals {
    first: Arc<Mutex<HashMap<String, Instant>>>,
    requests: Arc<AtomicUsize>,
}

async fn measure(report: &mut Report) {
    // A bench is not the daemon, whose environment config.rs alone reads.
    #[allow(clippy::disallowed_methods)]
    let count: usize =
        std::env::var("ONAIR_BENCH_LATENCY_EVENTS").ok().and_then(|count| count.parse().ok()).unwrap_or(10_000);
    let directory = tempfile::tempdir().expect("temp dir");
    let node = process::rabbitmq(directory.path());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let arrivals = Arrivals::default();
    let media = emulator(count, arrivals.clone(), shutdown.clone()).await;

    let starts = count.div_ceil(START_EVERY);
    let mut broadcasts = String::with_capacity((starts + OTHERS) * 24);
    for index in 0..starts {
        broadcasts.push_str(&format!("[broadcasts.{}]\n", name(index)));
    }
    for index in 0..OTHERS {
        broadcasts.push_str(&format!("[broadcasts.{}]\n", other(index)));
    }
    let port = process::free_port();
    let config = directory.path().join("onair.toml");
    std::fs::write(&config, process::config(&directory.path().join("state"), &node.url(), port, &broadcasts))
        .expect("config");
    let setup = Setup { config, port, media, queue: "onair.events.latency".into() };
    // The broker's own share first, on queues of its own: publish → delivery to a bare consumer.
    let bare = bare_broker(setup.broker(), count).await;
    let http = reqwest::Client::new();
    let mut daemon = Daemon::spawn(&setup, &directory.path().join("onair.log"));
    daemon.ready(&http).await;

    let (began, lag) = publish(Arc::new(setup.broker()), count).await;
    let published = Instant::now();
    let deadline = Duration::from_secs(120);
    loop {
        let arrived = arrivals.first.lock().expect("arrivals").len();
        if arrived >= starts {
            break;
        }
        if published.elapsed() > deadline {
            panic!(
                "only {arrived} of {starts} started broadcasts had a REST call {deadline:?} after the last publish; the log ends \
                 with:\n{}",
                daemon.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = published.elapsed();
    let requests = arrivals.requests.load(Ordering::Relaxed);
    let window = published.duration_since(began[0]) + took;
    let arrivals = arrivals.first.lock().expect("arrivals");
    let latencies: Vec<f64> = (0..starts)
        .map(|start| {
            let arrived = arrivals[&name(start)];
            arrived.saturating_duration_since(began[start * START_EVERY]).as_secs_f64() * 1000.0
        })
        .collect();
    let quantiles = Quantiles::of(latencies);
    let lag = Quantiles::of(lag);
    process::push(
        report,
        Row::new(
            "latency_publish_first_rest_p99",
            "p99 publish → first REST call at 1,000 events/s",
            quantiles.p99,
            "ms",
        )
        .bar(Target::AtMost(20.0))
        .goal(Target::AtMost(5.0))
        .reference(format!(
            "p50 {:.1} ms, max {:.0} ms; {count} events at {RATE}/s: {starts} start-now commands (one in \
             {START_EVERY}, each for an idle broadcast of its own, live machine), the others pause/resume for \
             {OTHERS} broadcasts; published by {PUBLISHERS} confirmed publishers (publish began p99 {:.1} ms, max {:.0} ms \
             after due), to the first request naming the live event at the emulator (in this process); the last \
             arrived {:.2} s after the last publish; the emulator answered {requests} requests in {:.1} s; the broker \
             alone (the same events and publishers, a quorum queue of its own, a bare lapin consumer, prefetch 256): \
             publish → delivery p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
            quantiles.p50,
            quantiles.max,
            lag.p99,
            lag.max,
            took.as_secs_f64(),
            window.as_secs_f64(),
            bare.p50,
            bare.p99,
            bare.max
        )),
    );
    drop(arrivals);
    // It may still be running the actions the commands started.
    daemon.stop();
    shutdown.cancel();
    drop(node);
}

fn name(index: usize) -> String {
    format!("b{index:05}")
}

fn other(index: usize) -> String {
    format!("o{index:05}")
}

/// The `index`-th event published: a start-now one in `START_EVERY`, else a pause or a resume
/// (in turns for each broadcast).
fn event(index: usize) -> Event {
    let (kind, broadcast) = if index.is_multiple_of(START_EVERY) {
        ("onair.command.start-now", name(index / START_EVERY))
    } else if (index / OTHERS).is_multiple_of(2) {
        ("onair.command.pause", other(index % OTHERS))
    } else {
        ("onair.command.resume", other(index % OTHERS))
    };
    Event::new(format!("bench-{index}"), kind, broadcast, serde_json::json!({}), SystemClock.now())
}

/// The emulator on a free port of this process, behind a layer that notes the first arrival of a
/// request naming each live event; its base URL.
async fn emulator(live_events: usize, arrivals: Arrivals, shutdown: tokio_util::sync::CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("emulator port");
    let base = format!("http://{}", listener.local_addr().expect("emulator address"));
    let emulator = onair::emulator::Emulator::new(process::emulator_settings(live_events), onair::clock::system());
    let note = move |request: axum::extract::Request| {
        let at = Instant::now();
        arrivals.requests.fetch_add(1, Ordering::Relaxed);
        let path = request.uri().path().to_ascii_lowercase();
        if let Some((_, rest)) = path.split_once("/liveevents/") {
            let channel = rest.split('/').next().unwrap_or_default().to_string();
            arrivals.first.lock().expect("arrivals").entry(channel).or_insert(at);
        }
        request
    };
    let router = emulator.router().layer(tower::util::MapRequestLayer::new(note));
    tokio::spawn(async move {
        let serving = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
        serving.await.expect("the emulator serves");
    });
    base
}

/// The broker alone: the same `count` events at the same rate through the same publishers, to a
/// quorum queue and exchange of their own, consumed by a bare lapin consumer (prefetch 256, a
/// `multiple` ack every 16 deliveries); publish began → delivered, in ms.
async fn bare_broker(mut settings: onair::broker::Settings, count: usize) -> Quantiles {
    use futures_lite::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    for name in [&mut settings.exchange, &mut settings.queue, &mut settings.dead_exchange, &mut settings.dead_queue] {
        name.push_str(".bare");
    }
    let connection = onair::broker::connect(&settings, "bench-bare-latency").await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    onair::broker::declare(&connection, &channel, &settings).await.expect("declare the bare queues");
    channel.basic_qos(256, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume");
    let consuming = tokio::spawn(async move {
        let mut delivered = vec![None; count];
        let mut seen = 0;
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            let index = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                .ok()
                .and_then(|event| event["id"].as_str()?.strip_prefix("bench-")?.parse::<usize>().ok());
            if let Some(slot) = index.and_then(|index| delivered.get_mut(index)) {
                *slot = Some(at);
            }
            seen += 1;
            if seen % 16 == 0 || seen == count {
                delivery.ack(BasicAckOptions { multiple: true }).await.expect("ack");
            }
            if seen == count {
                break;
            }
        }
        delivered
    });
    let (began, _) = publish(Arc::new(settings), count).await;
    let delivered = consuming.await.expect("the bare consumer");
    let _ = connection.close(200, "done".into()).await;
    Quantiles::of(
        began
            .iter()
            .zip(delivered)
            .filter_map(|(began, delivered)| Some(delivered?.saturating_duration_since(*began).as_secs_f64() * 1000.0))
            .collect(),
    )
}

/// Publishes `count` events, the i-th due at i ms; when each publish began, and how late it began
/// after it was due (ms).
async fn publish(settings: Arc<onair::broker::Settings>, count: usize) -> (Vec<Instant>, Vec<f64>) {
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, Instant)>();
    // One queue of due events, taken by whichever publisher is free.
    let (due, waiting) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let queue = Arc::new(tokio::sync::Mutex::new(waiting));
    let mut tasks = Vec::new();
    for _ in 0..PUBLISHERS {
        let publisher = onair::broker::Publisher::new(Arc::clone(&settings));
        // Connects before the clock starts.
        publisher.publish_many(&[]).await.expect("publisher connection");
        let (queue, done) = (Arc::clone(&queue), done.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().await.recv().await;
                let Some((index, due)) = next else { break };
                let began = Instant::now();
                publisher.publish(&event(index)).await.expect("publish an event");
                let _ = done.send((index, due, began));
            }
            publisher.close().await;
        }));
    }
    drop(done);
    let mut interval = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for index in 0..count {
        interval.tick().await;
        due.send((index, Instant::now())).expect("publishers running");
    }
    drop(due);
    for task in tasks {
        task.await.expect("publisher task");
    }
    let mut began = vec![Instant::now(); count];
    let mut lag = Vec::with_capacity(count);
    while let Some((index, due, at)) = finished.recv().await {
        began[index] = at;
        lag.push(at.saturating_duration_since(due).as_secs_f64() * 1000.0);
    }
    (began, lag)
}
