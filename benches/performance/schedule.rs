//! The scheduler: how late steps fire (fire instant minus planned instant, p50/p99/max, and how
//! many out of order) with 1,000 and 100,000 armed schedules (1,000 steps spread over 20 s, the
//! others daily cron expressions that do not fire during the run) and with 10,000 steps due in the
//! same second; and the resident memory per armed schedule. The scheduler runs for real (system
//! clock, SQLite store with `synchronous=FULL`); its sink is an in-process channel, so the figures
//! are the scheduler's own, not RabbitMQ's (the throughput section measures the broker).
//!
//! Fired: the timer takes the step (the event's `time`). Handed: the step reaches the sink (the
//! publisher's input). Memory: a child process (`--child schedule-memory <count> [shared]`) arms
//! the schedules and reports its resident set before and after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use onair::clock::{Clock, SystemClock};
use onair::schedule::{CronExpr, Scheduler, Spec, When};
use onair::store::{SqliteStore, Store};
use tokio_util::sync::CancellationToken;

use crate::report::{Report, Row, Target, trim};
use crate::{in_child, rss_kib, scaled, thousands};

const LEAD: TimeDelta = TimeDelta::minutes(10);
/// Seconds from arming to the first step that fires (arming 100,000 takes a while).
const LEAD_IN: i64 = 5;

fn spec(when: When) -> Spec {
    let mut spec = Spec::new(when, chrono_tz::Europe::Paris, TimeDelta::minutes(30));
    spec.lead_channel = LEAD;
    spec.lead_scale = TimeDelta::minutes(5);
    spec.post_roll = TimeDelta::minutes(5);
    spec.catch_up_window = TimeDelta::hours(1);
    spec
}

/// A daily cron schedule at a time of day that does not fire during the benchmark, each with
/// its own parsed expression (as `[broadcasts.<id>.schedule]` gives).
fn idle_cron(index: usize, now: DateTime<Utc>) -> Spec {
    let hour = (now + TimeDelta::hours(6)).format("%H").to_string();
    let expression = format!("{} {} {hour} * * *", index % 60, (index / 60) % 60);
    spec(When::Cron(Arc::new(CronExpr::parse(&expression).expect("cron"))))
}

/// Quantiles of a set of lateness figures, in milliseconds.
struct Quantiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Quantiles {
    fn of(values: &[f64]) -> Self {
        let mut values = values.to_vec();
        values.sort_by(f64::total_cmp);
        let at = |quantile: f64| {
            values.get(((values.len() as f64 * quantile) as usize).min(values.len().saturating_sub(1))).copied()
        };
        Self {
            p50: at(0.5).unwrap_or(f64::NAN),
            p99: at(0.99).unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }
}

struct Figures {
    fired: usize,
    /// Steps planned before the scheduler had armed (left out of the figures).
    before_armed: usize,
    /// When the timer took the step (the event's `time`) minus the planned instant, in ms.
    timer: Vec<f64>,
    /// When the step reached the sink minus the planned instant, in ms.
    handed: Vec<f64>,
    out_of_order: usize,
}

/// Arms `armed` schedules of which `firing` have their warm-up in the coming seconds: spread
/// uniformly over `spread` (or all at the same instant when `spread` is zero).
async fn scenario(armed: usize, firing: usize, spread: Duration) -> Figures {
    let directory = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&directory.path().join("onair.db")).expect("store"));
    // The idle schedules first, so that parsing them does not eat into the lead-in.
    let now = SystemClock.now();
    let idle: Vec<Spec> = (firing..armed).map(|index| idle_cron(index, now)).collect();
    let first = DateTime::from_timestamp(SystemClock.now().timestamp() + LEAD_IN, 0).expect("instant");
    let spread_ms = spread.as_millis() as i64;
    let firing_specs = (0..firing).map(|index| {
        let offset = if spread_ms == 0 { 0 } else { spread_ms * index as i64 / firing as i64 };
        spec(When::Instant(first + TimeDelta::milliseconds(offset) + LEAD))
    });
    let schedules: Vec<_> =
        firing_specs.chain(idle).enumerate().map(|(index, spec)| (format!("b{index}"), Arc::new(spec))).collect();
    let (sink, mut published) = tokio::sync::mpsc::unbounded_channel();
    let mut settings = onair::daemon::load(&onair::config::Source::default()).expect("defaults").scheduler;
    settings.max_sleep = Duration::from_secs(1);
    let scheduler =
        Scheduler::new(settings, schedules, store, Arc::new(sink), onair::clock::system(), Default::default())
            .await
            .expect("scheduler");
    let armed_at = SystemClock.now();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(shutdown.clone()));
    let (mut timer, mut handed) = (Vec::with_capacity(firing), Vec::with_capacity(firing));
    let mut planned_order = Vec::with_capacity(firing);
    let deadline = Instant::now() + spread + Duration::from_secs(30);
    let millis = |delta: TimeDelta| delta.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let mut before_armed = 0;
    while handed.len() + before_armed < firing && Instant::now() < deadline {
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), published.recv()).await else { continue };
        let received = SystemClock.now();
        let planned = DateTime::parse_from_rfc3339(event.data["planned"].as_str().unwrap_or_default())
            .map(|at| at.with_timezone(&Utc))
            .unwrap_or(received);
        if planned < armed_at {
            // Due before the scheduler was there to fire it (a slow start on a busy machine): a
            // catch-up, not lateness.
            before_armed += 1;
            continue;
        }
        timer.push(millis(event.time.unwrap_or(received) - planned));
        handed.push(millis(received - planned));
        planned_order.push(planned);
    }
    shutdown.cancel();
    let _ = task.await;
    Figures {
        fired: handed.len() + before_armed,
        before_armed,
        timer,
        handed,
        out_of_order: planned_order.windows(2).filter(|pair| pair[1] < pair[0]).count(),
    }
}

/// Arms `count` cron schedules in a fresh process and reports the resident memory they take:
/// each with its own expression, or sharing `shared` expressions (as broadcasts with the same
/// cron text do: the settings parse each text once).
async fn memory(count: usize, shared: Option<usize>) -> (f64, f64) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&directory.path().join("onair.db")).expect("store"));
    let (sink, _published) = tokio::sync::mpsc::unbounded_channel();
    let settings = onair::daemon::load(&onair::config::Source::default()).expect("defaults").scheduler;
    let now = SystemClock.now();
    crate::release_free_memory();
    let before = rss_kib();
    let expressions: Vec<Spec> = (0..shared.unwrap_or(0)).map(|index| idle_cron(index, now)).collect();
    let schedules: Vec<_> = (0..count)
        .map(|index| {
            let spec = match shared {
                Some(shared) => expressions[index % shared].clone(),
                None => idle_cron(index, now),
            };
            (format!("b{index}"), Arc::new(spec))
        })
        .collect();
    let scheduler =
        Scheduler::new(settings, schedules, store, Arc::new(sink), onair::clock::system(), Default::default())
            .await
            .expect("scheduler");
    // As `onair run` does before it says ready: what start-up freed is not held per schedule.
    crate::release_free_memory();
    let after = rss_kib();
    assert!(scheduler.next_due().is_some());
    (before, after)
}

pub fn run(report: &mut Report) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (one, hundred, burst) = (scaled(1_000), scaled(100_000), scaled(10_000));
    for (key, armed, firing, spread) in [
        ("1k", one, one, Duration::from_secs(20)),
        ("100k", hundred, one, Duration::from_secs(20)),
        ("burst", burst, burst, Duration::ZERO),
    ] {
        let figures = runtime.block_on(scenario(armed, firing, spread));
        let (timer, handed) = (Quantiles::of(&figures.timer), Quantiles::of(&figures.handed));
        let order = if figures.out_of_order == 0 {
            "in order".to_string()
        } else {
            format!("{} out of order", figures.out_of_order)
        };
        let mut fired = if figures.fired == firing {
            format!("{} fired", thousands(firing))
        } else {
            format!("ONLY {} of {} fired", thousands(figures.fired), thousands(firing))
        };
        if figures.before_armed > 0 {
            fired.push_str(&format!(
                " ({} due before the scheduler had armed, left out)",
                thousands(figures.before_armed)
            ));
        }
        println!(
            "  {} armed, {} due{}: fired p50/p99/max {:.2}/{:.2}/{:.2} ms, handed {:.2}/{:.2}/{:.2} ms, {fired}, {order}",
            thousands(armed),
            thousands(firing),
            if spread.is_zero() { " in the same second".to_string() } else { format!(" over {} s", spread.as_secs()) },
            timer.p50,
            timer.p99,
            timer.max,
            handed.p50,
            handed.p99,
            handed.max
        );
        let row = if key == "burst" {
            Row::new(
                "schedule_burst_handed_p99",
                &format!("{} steps due in the same second handed to the publisher, p99", thousands(firing)),
                handed.p99,
                "ms",
            )
            .goal(Target::AtMost(20.0))
            .reference(format!(
                "p50 {} ms, max {} ms; fired p99 {} ms; {fired}, {order}",
                trim(handed.p50),
                trim(handed.max),
                trim(timer.p99)
            ))
        } else {
            Row::new(
                &format!("schedule_lateness_p99_{key}"),
                &format!("schedule lateness p99 (fired), {} armed", thousands(armed)),
                timer.p99,
                "ms",
            )
            .bar(Target::AtMost(10.0))
            .goal(Target::AtMost(5.0))
            .reference(format!(
                "p50 {} ms, max {} ms; handed p99 {} ms; {} steps over {} s, {fired}, {order}",
                trim(timer.p50),
                trim(timer.max),
                trim(handed.p99),
                thousands(firing),
                spread.as_secs()
            ))
        };
        report.push(row);
        if key == "100k" {
            report.lateness_ms = figures.timer;
        }
    }
    // Resident memory per armed schedule, each count in a fresh process.
    let per_schedule = |count: usize, shared: Option<usize>| {
        let mut args = vec!["schedule-memory".to_string(), count.to_string()];
        args.extend(shared.map(|shared| shared.to_string()));
        let result = in_child(&args);
        let grown_kib = (result[1] - result[0]).max(0.0);
        (grown_kib, grown_kib / count as f64)
    };
    let (distinct_kib, distinct) = per_schedule(hundred, None);
    let (_, shared) = per_schedule(hundred, Some(100));
    println!(
        "  {} daily cron schedules armed: {:.1} MiB more resident, {:.0} bytes each ({:.0} bytes each with 100 expressions shared)",
        thousands(hundred),
        distinct_kib / 1024.0,
        distinct * 1024.0,
        shared * 1024.0
    );
    report.push(
        Row::new(
            "rss_per_schedule",
            &format!("RSS per armed schedule, every expression distinct ({})", thousands(hundred)),
            distinct,
            "KB",
        )
        .bar(Target::AtMost(1.0))
        .goal(Target::AtMost(0.5))
        .reference(format!(
            "{} MB for {}; {} KB each when 100 expressions are shared",
            trim(distinct_kib / 1024.0),
            thousands(hundred),
            trim(shared)
        )),
    );
}

/// `--child schedule-memory <count> [shared]`: prints `RESULT <RSS KiB before> <RSS KiB after>`.
pub fn child(args: &[String]) {
    let count: usize = args[0].parse().expect("count");
    let shared: Option<usize> = args.get(1).and_then(|shared| shared.parse().ok());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (before, after) = runtime.block_on(memory(count, shared));
    println!("RESULT {before} {after}");
}
