//! onair against a bare lapin consume-and-ack loop, on the same private RabbitMQ node and the same
//! kind of queue (quorum, onair's arguments), in one run: events per second and per CPU-second of
//! this process, for 10 and 10,000 broadcasts; then onair's throughput for several prefetch values.
//! Run with `cargo bench --bench broker` (needs rabbitmq-server).
//!
//! Both sides consume a queue filled beforehand with the same events. The bare loop acks with
//! `multiple` every tenth of the prefetch, as RabbitMQ's guidance recommends; onair parses,
//! deduplicates, decides (step), commits to SQLite with `synchronous=FULL`, then acks each event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use onair::broker::{self, Publisher};
use onair::engine::{Engine, Parts, Runner};
use onair::event::Event;
use onair::store::{SqliteStore, Store};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 20_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let directory = tempfile::tempdir().expect("temp dir");
        let node = onair::broker::local::LocalNode::start(&directory.path().join("rabbitmq"), Duration::from_secs(120))
            .expect("RabbitMQ node");
        println!("onair vs a bare lapin consume-and-ack loop: {EVENTS} events, quorum queue, RabbitMQ on this machine");
        println!(
            "{:>10} {:>9} {:>14} {:>16} {:>14} {:>16} {:>8}",
            "broadcasts", "prefetch", "bare ev/s", "bare ev/CPU-s", "onair ev/s", "onair ev/CPU-s", "ratio"
        );
        let prefetch = 256;
        for broadcasts in [10, 10_000] {
            let bare = bare_loop(&node, broadcasts, prefetch).await;
            let onair = onair_run(&node, directory.path(), broadcasts, prefetch).await;
            println!(
                "{broadcasts:>10} {prefetch:>9} {:>14.0} {:>16.0} {:>14.0} {:>16.0} {:>7.0}%",
                bare.0,
                bare.1,
                onair.0,
                onair.1,
                onair.0 / bare.0 * 100.0
            );
        }
        println!("\nonair's throughput by prefetch (10 broadcasts):");
        for prefetch in [16, 64, 256, 1024] {
            let (rate, per_cpu) = onair_run(&node, directory.path(), 10, prefetch).await;
            println!("  prefetch {prefetch:>5}: {rate:>8.0} events/s, {per_cpu:>8.0} events per CPU-second");
        }
        println!("\nThe design's bar: onair at least 50% of the bare loop.");
    });
}

fn settings(node: &onair::broker::local::LocalNode, prefetch: u16) -> broker::Settings {
    let unique = format!("bench.{}", uuid::Uuid::new_v4().simple());
    let mut settings = onair::daemon::load(&onair::config::Source::default()).expect("defaults").broker;
    settings.url = url::Url::parse(&node.url()).expect("URL");
    settings.exchange = format!("{unique}.events");
    settings.queue = format!("{unique}.events");
    settings.dead_exchange = format!("{unique}.dead");
    settings.dead_queue = format!("{unique}.dead");
    settings.prefetch = prefetch;
    settings
}

fn events(broadcasts: usize) -> Vec<Event> {
    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
    (0..EVENTS)
        .map(|index| {
            let kind =
                if (index / broadcasts).is_multiple_of(2) { "onair.command.pause" } else { "onair.command.resume" };
            Event::new(format!("e{index}"), kind, format!("b{}", index % broadcasts), serde_json::json!({}), now)
        })
        .collect()
}

/// Fills the queue (declared by the publisher with onair's topology) with the events.
async fn fill(settings: &broker::Settings, events: Vec<Event>) {
    let settings = Arc::new(settings.clone());
    let queue = Arc::new(tokio::sync::Mutex::new(events));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let publisher = Publisher::new(Arc::clone(&settings));
        let queue = Arc::clone(&queue);
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(event) = queue.lock().await.pop() else { break };
                // A nack or a lost confirm: publish again (same id, one effect).
                while publisher.publish(&event).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            publisher.close().await;
        }));
    }
    for task in tasks {
        task.await.expect("publisher");
    }
}

/// The process's CPU time (user + system).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|value| value.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|value| value.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Consume-and-ack with lapin only: (events/s, events per CPU-second).
async fn bare_loop(node: &onair::broker::local::LocalNode, broadcasts: usize, prefetch: u16) -> (f64, f64) {
    let settings = settings(node, prefetch);
    fill(&settings, events(broadcasts)).await;
    let connection = broker::connect(&settings, "bench-bare").await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let batch = (usize::from(prefetch) / 10).max(1);
    let (started, cpu_started) = (Instant::now(), cpu());
    let mut count = 0;
    while let Some(Ok(delivery)) = consumer.next().await {
        count += 1;
        if count % batch == 0 || count == EVENTS {
            delivery.ack(BasicAckOptions { multiple: true }).await.expect("ack");
        }
        if count == EVENTS {
            break;
        }
    }
    let (elapsed, cpu_used) = (started.elapsed(), cpu() - cpu_started);
    let _ = connection.close(200, "done".into()).await;
    (count as f64 / elapsed.as_secs_f64(), count as f64 / cpu_used.as_secs_f64().max(0.001))
}

/// The same events through onair's consumer and engine: (events/s, events per CPU-second).
async fn onair_run(
    node: &onair::broker::local::LocalNode,
    directory: &std::path::Path,
    broadcasts: usize,
    prefetch: u16,
) -> (f64, f64) {
    let settings = settings(node, prefetch);
    fill(&settings, events(broadcasts)).await;
    let state = directory.join(uuid::Uuid::new_v4().simple().to_string());
    let mut toml = format!("[engine]\nstate_dir = \"{}\"\n", state.display());
    for index in 0..broadcasts {
        toml.push_str(&format!("[broadcasts.b{index}]\n"));
    }
    std::fs::create_dir_all(&state).expect("state dir");
    let file = state.join("onair.toml");
    std::fs::write(&file, toml).expect("settings");
    let config =
        onair::daemon::load(&onair::config::Source { file: Some(file), env: Default::default() }).expect("settings");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.engine.store).expect("store"));
    let (outbound, _published) = tokio::sync::mpsc::unbounded_channel();
    let clock = onair::clock::system();
    let runner = Arc::new(Runner::new(None, outbound, Arc::clone(&clock)));
    let core = CancellationToken::new();
    let parts = Parts {
        settings: Arc::new(config.engine.clone()),
        registry: onair::catalog::Registry::fixed(&config.engine.broadcasts, &onair::machine::Library::built_in())
            .expect("machines"),
        store,
        runner,
        clock,
        metrics: Default::default(),
    };
    let engine = Engine::start(parts, core.clone()).await.expect("engine");
    let status = broker::Status::default();
    let intake = CancellationToken::new();
    let (started, cpu_started) = (Instant::now(), cpu());
    let consumer = tokio::spawn(broker::consume(Arc::new(settings), engine.input(), status.clone(), intake.clone()));
    while (status.counts().1 as usize) < EVENTS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (elapsed, cpu_used) = (started.elapsed(), cpu() - cpu_started);
    intake.cancel();
    let _ = consumer.await;
    core.cancel();
    engine.join().await;
    (EVENTS as f64 / elapsed.as_secs_f64(), EVENTS as f64 / cpu_used.as_secs_f64().max(0.001))
}
