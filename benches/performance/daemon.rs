//! The daemon as users run it (`onair run`, a separate process, release build) with 100,000
//! broadcasts: resident memory and time to ready.
//!
//! Each scenario has its own state directory, queue and daemon process; they share a private
//! RabbitMQ node and the emulator (in this process: `/readyz` needs the media probe to succeed).
//! Ready is `/readyz` answering 200, polled every 10 ms from the spawn; RSS is the daemon's
//! VmRSS read at that moment. `ONAIR_BENCH_BROADCASTS` changes the count (100,000).
//!
//! 1. 100,000 `[broadcasts.bNNNNN]` (each its own channel), a fresh store: RSS when ready.
//! 2. The same with a stored machine per broadcast: a first daemon decides one `pause` command
//!    per broadcast (published through RabbitMQ), stops; a second one starts on that store: RSS
//!    when ready.
//! 3. 100,000 broadcasts, each with its own daily schedule (distinct cron texts, air times 2 to
//!    22 hours away, so that nothing fires or is caught up during the run): time to ready and
//!    RSS when ready.
//! 4. The daemon of 2 killed with SIGKILL and started again: time to ready.

pub mod process;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Timelike;
use onair::clock::{Clock, SystemClock};
use onair::event::Event;

use crate::report::{Report, Row, Target};
use process::{Daemon, Setup};

pub fn run(report: &mut Report) {
    process::runtime().block_on(measure(report));
}

async fn measure(report: &mut Report) {
    let count = process::broadcasts();
    let directory = tempfile::tempdir().expect("temp dir");
    let node = process::rabbitmq(directory.path());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let media = process::emulator(16, shutdown.clone()).await;
    let http = reqwest::Client::new();
    let plain = plain_broadcasts(count);
    let scenario = |name: &str, broadcasts: &str| -> (Setup, std::path::PathBuf) {
        let root = directory.path().join(name);
        std::fs::create_dir_all(&root).expect("scenario directory");
        let port = process::free_port();
        let config = root.join("onair.toml");
        std::fs::write(&config, process::config(&root.join("state"), &node.url(), port, broadcasts)).expect("config");
        let setup = Setup { config, port, media: media.clone(), queue: format!("onair.events.{name}") };
        (setup, root.join("onair.log"))
    };
    let thousands = count / 1000;

    // 1. Configured, nothing decided yet.
    let (setup, log) = scenario("configured", &plain);
    let mut daemon = Daemon::spawn(&setup, &log);
    let ready = daemon.ready(&http).await;
    let rss = daemon.rss_mb();
    let settled = daemon.settled_mb().await;
    daemon.stop();
    process::push(
        report,
        Row::new(
            "rss_configured_100k",
            &format!("RSS, {thousands}k broadcasts configured, nothing decided yet"),
            rss,
            "MB",
        )
        .bar(Target::AtMost(300.0))
        .goal(Target::AtMost(150.0))
        .reference(format!(
            "onair run, {count} [broadcasts.*] each its own channel, fresh store; ready (/readyz 200) {:.2} s after \
             spawn, VmRSS then ({settled})",
            ready.as_secs_f64()
        )),
    );

    // 2. Each broadcast with a stored machine: a first daemon decides a `pause` per broadcast.
    let (setup, log) = scenario("stored", &plain);
    let mut filler = Daemon::spawn(&setup, &log);
    filler.ready(&http).await;
    let filled = Instant::now();
    fill(&setup, count).await;
    while filler.metric(&http, "onair_events_acked_total").await < count as u64 {
        assert!(
            filled.elapsed() < Duration::from_secs(600),
            "not every pause decided after 600 s; the log ends with:\n{}",
            filler.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took_fill = filled.elapsed();
    filler.stop();
    let store = setup.config.with_file_name("state").join("onair.db");
    let instances = onair::store::SqliteStore::open_read_only(&store)
        .and_then(|store| store.load_instances())
        .expect("read the stored instances")
        .len();
    assert_eq!(instances, count, "one stored machine per broadcast");
    let mut daemon = Daemon::spawn(&setup, &log);
    let ready = daemon.ready(&http).await;
    let rss = daemon.rss_mb();
    let settled = daemon.settled_mb().await;
    process::push(
        report,
        Row::new("rss_stored_100k", &format!("RSS, {thousands}k broadcasts each with a stored machine"), rss, "MB")
            .bar(Target::AtMost(300.0))
            .goal(Target::AtMost(150.0))
            .reference(format!(
                "{count} instances stored by a first onair run (one pause command each through RabbitMQ, decided in \
                 {:.1} s), stopped; a second one ready {:.2} s after spawn, VmRSS then ({settled})",
                took_fill.as_secs_f64(),
                ready.as_secs_f64()
            )),
    );

    // 4. The same daemon killed (SIGKILL) and started again.
    daemon.kill();
    let mut daemon = Daemon::spawn(&setup, &log);
    let ready = daemon.ready(&http).await;
    let rss = daemon.rss_mb();
    daemon.stop();
    let ready_after_kill = Row::new(
        "ready_after_sigkill_100k",
        &format!("ready after SIGKILL with {thousands}k stored machines"),
        ready.as_secs_f64(),
        "s",
    )
    .bar(Target::AtMost(5.0))
    .goal(Target::AtMost(2.0))
    .reference(format!(
        "the daemon of the row above killed with SIGKILL, spawned again: spawn to /readyz 200 (RSS then {rss:.0} MB)"
    ));

    // 3. Each broadcast with its own daily schedule.
    let (setup, log) = scenario("scheduled", &scheduled_broadcasts(count, SystemClock.now().hour()));
    let mut daemon = Daemon::spawn(&setup, &log);
    let ready = daemon.ready(&http).await;
    let rss = daemon.rss_mb();
    while daemon.metric(&http, "onair_schedules_armed").await < count as u64 {
        assert!(
            daemon.spawned.elapsed() < process::READY_TIMEOUT,
            "not every schedule armed after {:?}; the log ends with:\n{}",
            process::READY_TIMEOUT,
            daemon.tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let armed = daemon.spawned.elapsed();
    let settled = daemon.settled_mb().await;
    daemon.stop();
    let how = format!(
        "{count} broadcasts, each a daily cron schedule of its own text (6 fields, air 2 to 22 h away), fresh store"
    );
    process::push(
        report,
        Row::new(
            "ready_scheduled_100k",
            &format!("{thousands}k broadcasts each with its own daily schedule: ready after start"),
            ready.as_secs_f64(),
            "s",
        )
        .bar(Target::AtMost(5.0))
        .goal(Target::AtMost(2.0))
        .reference(format!(
            "{how}: spawn to /readyz 200; all armed (onair_schedules_armed) {:.2} s after spawn",
            armed.as_secs_f64()
        )),
    );
    process::push(
        report,
        Row::new(
            "rss_scheduled_100k",
            &format!("{thousands}k broadcasts each with its own daily schedule: RSS when ready"),
            rss,
            "MB",
        )
        .bar(Target::AtMost(300.0))
        .goal(Target::AtMost(150.0))
        .reference(format!("{how}: VmRSS at /readyz 200 (once all armed: {settled})")),
    );
    process::push(report, ready_after_kill);
    shutdown.cancel();
    drop(node);
}

/// `count` broadcasts, each on its own channel (the id), the defaults otherwise.
fn plain_broadcasts(count: usize) -> String {
    let mut text = String::with_capacity(count * 24);
    for index in 0..count {
        text.push_str(&format!("[broadcasts.b{index:06}]\n"));
    }
    text
}

/// `count` broadcasts, each with a daily schedule whose cron text is its own: second, minute and
/// hour differ (air times 2 to 22 hours after the hour `hour`, so that no step falls in the run
/// nor in the catch-up hour before it); beyond 72,000 the day-of-month field is written `1-31`
/// (every day still, another text).
fn scheduled_broadcasts(count: usize, hour: u32) -> String {
    let mut text = String::with_capacity(count * 120);
    for index in 0..count {
        let slot = (index / 3600) % 20;
        let day = if index / 72_000 == 0 { "*" } else { "1-31" };
        text.push_str(&format!(
            "[broadcasts.b{index:06}]\n[broadcasts.b{index:06}.schedule]\ncron = \"{} {} {} {day} * *\"\nduration = \"30m\"\n",
            index % 60,
            (index / 60) % 60,
            (hour as usize + 2 + slot) % 24,
        ));
    }
    text
}

/// Publishes one `onair.command.pause` per broadcast (4 publishers, confirmed bursts of 1,000).
async fn fill(setup: &Setup, count: usize) {
    let settings = Arc::new(setup.broker());
    let now = SystemClock.now();
    let publishers = 4;
    let tasks: Vec<_> = (0..publishers)
        .map(|part| {
            let publisher = onair::broker::Publisher::new(Arc::clone(&settings));
            tokio::spawn(async move {
                let mine: Vec<usize> = (part..count).step_by(publishers).collect();
                for chunk in mine.chunks(1000) {
                    let events: Vec<Event> = chunk
                        .iter()
                        .map(|index| {
                            Event::new(
                                format!("bench-fill-{index}"),
                                "onair.command.pause",
                                format!("b{index:06}"),
                                serde_json::json!({}),
                                now,
                            )
                        })
                        .collect();
                    publisher.publish_many(&events).await.expect("publish the pause commands");
                }
                publisher.close().await;
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher task");
    }
}
