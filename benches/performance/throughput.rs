//! Events per second through onair against a bare lapin consume-and-ack loop, on the same private
//! RabbitMQ node and the same kind of queue (quorum, onair's arguments), in one run: at 10, 1,000
//! and 10,000 broadcasts with prefetch 256 (the ratio is the design's figure), then onair's
//! throughput by prefetch (16, 64, 256, 1024) at 10 broadcasts. Also events per CPU-second of
//! this process.
//!
//! Both sides consume a queue filled beforehand with the same events (20,000; operator commands
//! `pause`/`resume` spread over the broadcasts). The bare loop acks with `multiple` every tenth
//! of the prefetch, as RabbitMQ's guidance recommends; onair parses, deduplicates, decides (step),
//! commits to SQLite with `synchronous=FULL`, then acks. onair's run ends when its consumer has
//! acknowledged every event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use onair::broker::{self, Publisher};
use onair::event::Event;
use tokio_util::sync::CancellationToken;

use crate::engine::{Running, commands, start};
use crate::report::{Report, Row, Target, Throughput, trim};
use crate::{scaled, thousands};

/// The broadcast counts of the chart; the design's figure is at the first and the last.
const BROADCASTS: [usize; 3] = [10, 1_000, 10_000];
/// The prefetch of the comparison (onair's default).
const PREFETCH: u16 = 256;
/// The prefetch values of onair's own curve (at 10 broadcasts).
const PREFETCHES: [u16; 4] = [16, 64, 256, 1024];

/// One side's run: events per second, and per CPU-second of this process.
#[derive(Clone, Copy)]
struct Rate {
    per_second: f64,
    per_cpu_second: f64,
}

pub fn run(report: &mut Report) {
    let events = scaled(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let directory = tempfile::tempdir().expect("temp dir");
        let node = onair::broker::local::LocalNode::start(&directory.path().join("rabbitmq"), Duration::from_secs(120))
            .expect("RabbitMQ node (is rabbitmq-server installed?)");
        println!("  {} events per run, quorum queue, RabbitMQ on this machine", thousands(events));
        let mut onair_at_10 = None;
        for broadcasts in BROADCASTS {
            let bare = bare_loop(&node, events, broadcasts, PREFETCH).await;
            let onair = onair_run(&node, directory.path(), events, broadcasts, PREFETCH).await;
            println!(
                "  {broadcasts:>6} broadcasts, prefetch {PREFETCH}: bare loop {:.0} ev/s ({:.0} per CPU-s), onair {:.0} ev/s ({:.0} per CPU-s)",
                bare.per_second, bare.per_cpu_second, onair.per_second, onair.per_cpu_second
            );
            for (side, rate) in [("bare loop", bare), ("onair", onair)] {
                report.throughput.push(Throughput {
                    side: side.into(),
                    broadcasts,
                    prefetch: PREFETCH,
                    events_per_second: rate.per_second,
                });
            }
            if broadcasts == 10 {
                onair_at_10 = Some(onair);
            }
            if broadcasts == 1_000 {
                // In the chart only: the design's figure is at 10 and 10,000.
                continue;
            }
            report.push(
                Row::new(
                    &format!("throughput_ratio_{broadcasts}"),
                    &format!(
                        "events/s through onair vs the bare lapin loop, {} broadcasts (prefetch {PREFETCH})",
                        thousands(broadcasts)
                    ),
                    onair.per_second / bare.per_second * 100.0,
                    "%",
                )
                .bar(Target::AtLeast(50.0))
                .goal(Target::AtLeast(80.0))
                .reference(format!(
                    "onair {} ev/s ({} per CPU-s) vs bare loop {} ev/s ({} per CPU-s), same quorum queue, {} events",
                    trim(onair.per_second),
                    trim(onair.per_cpu_second),
                    trim(bare.per_second),
                    trim(bare.per_cpu_second),
                    thousands(events)
                )),
            );
        }
        println!("  onair by prefetch (10 broadcasts):");
        for prefetch in PREFETCHES {
            let rate = match onair_at_10 {
                Some(rate) if prefetch == PREFETCH => rate,
                _ => onair_run(&node, directory.path(), events, 10, prefetch).await,
            };
            println!("    prefetch {prefetch:>5}: {:.0} ev/s ({:.0} per CPU-s)", rate.per_second, rate.per_cpu_second);
            report.throughput.push(Throughput {
                side: "onair".into(),
                broadcasts: 10,
                prefetch,
                events_per_second: rate.per_second,
            });
        }
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
async fn bare_loop(node: &onair::broker::local::LocalNode, events: usize, broadcasts: usize, prefetch: u16) -> Rate {
    let settings = settings(node, prefetch);
    fill(&settings, commands(events, broadcasts)).await;
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
        if count % batch == 0 || count == events {
            delivery.ack(BasicAckOptions { multiple: true }).await.expect("ack");
        }
        if count == events {
            break;
        }
    }
    let (elapsed, cpu_used) = (started.elapsed(), cpu() - cpu_started);
    let _ = connection.close(200, "done".into()).await;
    Rate {
        per_second: count as f64 / elapsed.as_secs_f64(),
        per_cpu_second: count as f64 / cpu_used.as_secs_f64().max(0.001),
    }
}

/// The same events through onair's consumer and engine: (events/s, events per CPU-second).
async fn onair_run(
    node: &onair::broker::local::LocalNode,
    directory: &std::path::Path,
    events: usize,
    broadcasts: usize,
    prefetch: u16,
) -> Rate {
    let settings = settings(node, prefetch);
    fill(&settings, commands(events, broadcasts)).await;
    let state = directory.join(uuid::Uuid::new_v4().simple().to_string());
    let running = start(&state, broadcasts).await;
    // The receiver of the actions' events stays in `running` until the end.
    let Running { engine, shutdown, .. } = running;
    let status = broker::Status::default();
    let intake = CancellationToken::new();
    let (started, cpu_started) = (Instant::now(), cpu());
    let consumer = tokio::spawn(broker::consume(Arc::new(settings), engine.input(), status.clone(), intake.clone()));
    while (status.counts().1 as usize) < events {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (elapsed, cpu_used) = (started.elapsed(), cpu() - cpu_started);
    intake.cancel();
    let _ = consumer.await;
    shutdown.cancel();
    engine.join().await;
    Rate {
        per_second: events as f64 / elapsed.as_secs_f64(),
        per_cpu_second: events as f64 / cpu_used.as_secs_f64().max(0.001),
    }
}
