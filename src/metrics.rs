//! What `/metrics` shows: the live measurements the daemon's parts record as they work
//! (histograms, per-action counters, heartbeat times) and, at each scrape, a snapshot of the
//! counters other parts already keep (broker, scheduler, store).
//!
//! One `Metrics` per daemon (no process-wide registry), so that tests running several daemons
//! in one process see their own figures. Rendered in the OpenMetrics text format, which
//! Prometheus scrapes natively.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label sets are plain name/value pairs.
type Labels = Vec<(&'static str, String)>;

/// Upper bounds (seconds) of the decision latency histogram: from a millisecond to 5 s.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Upper bounds (seconds) of the schedule lateness histogram: from 10 ms to 5 minutes.
pub(crate) const LATENESS_BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0];

/// The daemon's live measurements; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    decision_latency: Histogram,
    action_attempts: Family<Labels, Counter>,
    action_retries: Family<Labels, Counter>,
    action_failures: Family<Labels, Counter>,
    /// The last heartbeat per channel (lowercase), as the event says it was sent.
    heartbeats: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Whether the engine's commits succeed, and how many failed.
    commits: crate::store::Commits,
}

impl Default for Metrics {
    fn default() -> Self {
        Self(Arc::new(Inner {
            decision_latency: Histogram::new(LATENCY_BUCKETS),
            action_attempts: Family::default(),
            action_retries: Family::default(),
            action_failures: Family::default(),
            heartbeats: Mutex::new(HashMap::new()),
            commits: crate::store::Commits::default(),
        }))
    }
}

/// How an action attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Succeeded,
    /// Failed, and will be tried again.
    Retrying,
    /// Failed for good.
    Failed,
}

impl Metrics {
    /// From an event's arrival in the engine to its decision committed.
    pub fn decided(&self, latency: Duration) {
        self.0.decision_latency.observe(latency.as_secs_f64());
    }

    /// One attempt of `action`.
    pub fn action(&self, action: &str, attempt: Attempt) {
        let labels = vec![("action", action.to_string())];
        self.0.action_attempts.get_or_create(&labels).inc();
        match attempt {
            Attempt::Succeeded => {}
            Attempt::Retrying => {
                self.0.action_retries.get_or_create(&labels).inc();
            }
            Attempt::Failed => {
                self.0.action_failures.get_or_create(&labels).inc();
            }
        }
    }

    /// The engine's commit results (failures counted as `onair_store_commit_failures_total`).
    pub fn commits(&self) -> &crate::store::Commits {
        &self.0.commits
    }

    /// An encoder heartbeat for `channel`.
    pub fn heartbeat(&self, channel: &str, at: DateTime<Utc>) {
        let mut heartbeats = crate::sync::lock(&self.0.heartbeats);
        let last = heartbeats.entry(channel.to_lowercase()).or_insert(at);
        *last = (*last).max(at);
    }

    /// The last heartbeat of `channel`.
    pub fn last_heartbeat(&self, channel: &str) -> Option<DateTime<Utc>> {
        let heartbeats = crate::sync::lock(&self.0.heartbeats);
        heartbeats.get(&channel.to_lowercase()).copied()
    }

    /// The text of `/metrics`: these measurements and `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("onair");
        self.register_counters(&mut registry, snapshot);
        registry.register(
            "decision_latency_seconds",
            "From an event's arrival in the engine to its decision committed",
            self.0.decision_latency.clone(),
        );
        if let Some(lateness) = &snapshot.schedule_lateness {
            registry.register(
                "schedule_lateness_seconds",
                "How long after its planned instant a schedule step was published (confirmed)",
                lateness.clone(),
            );
        }
        registry.register("action_attempts", "Action attempts, by action", self.0.action_attempts.clone());
        registry.register(
            "action_retries",
            "Failed action attempts tried again, by action",
            self.0.action_retries.clone(),
        );
        registry.register("action_failures", "Actions failed for good, by action", self.0.action_failures.clone());
        self.register_gauges(&mut registry, snapshot);
        let mut text = String::new();
        encode(&mut text, &registry)?;
        Ok(text)
    }

    /// The counters: deliveries, reconnects, failed commits, schedule steps.
    fn register_counters(&self, registry: &mut Registry, snapshot: &Snapshot) {
        let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
            let counter: Counter = Counter::default();
            counter.inc_by(value);
            registry.register(name, help, counter);
        };
        counter(registry, "events_consumed", "Deliveries received from RabbitMQ", snapshot.consumed);
        counter(registry, "events_acked", "Deliveries acknowledged after their decision was committed", snapshot.acked);
        counter(registry, "events_deduplicated", "Deliveries acknowledged as already decided", snapshot.deduplicated);
        counter(
            registry,
            "events_dead_lettered",
            "Deliveries onair dead-lettered (invalid or unroutable)",
            snapshot.dead_lettered,
        );
        counter(
            registry,
            "broker_reconnects",
            "Reconnections to RabbitMQ after the first connection",
            snapshot.reconnects,
        );
        counter(
            registry,
            "store_commit_failures",
            "Commits of decisions that failed (disk full, I/O error, locked, …) and were retried",
            self.0.commits.failures(),
        );
        counter(registry, "schedule_steps_published", "Schedule steps published", snapshot.steps_published);
        counter(
            registry,
            "schedule_steps_missed",
            "Schedule steps not published because they were found too late",
            snapshot.steps_missed,
        );
    }

    /// The gauges: broadcasts by state, heartbeat ages, the broker connection.
    fn register_gauges(&self, registry: &mut Registry, snapshot: &Snapshot) {
        let states: Family<Labels, Gauge> = Family::default();
        for (state, count) in &snapshot.states {
            states.get_or_create(&vec![("state", state.clone())]).set(*count);
        }
        registry.register("broadcasts", "Broadcasts by state", states);
        let heartbeats: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        for (channel, (broadcast, since)) in &snapshot.live_channels {
            // Without a heartbeat since it went on air, the time since it did.
            let last = self.last_heartbeat(channel).map_or(*since, |last| last.max(*since));
            let age = (snapshot.now - last).to_std().unwrap_or_default().as_secs_f64();
            heartbeats.get_or_create(&vec![("channel", channel.clone()), ("broadcast", broadcast.clone())]).set(age);
        }
        registry.register(
            "heartbeat_age_seconds",
            "Seconds since the last encoder heartbeat (or since going on air), per live channel",
            heartbeats,
        );
        let armed: Gauge = Gauge::default();
        armed.set(i64::try_from(snapshot.schedules_armed).unwrap_or(i64::MAX));
        registry.register("schedules_armed", "Schedules the scheduler has armed (one per scheduled broadcast)", armed);
        let ready: Gauge = Gauge::default();
        ready.set(i64::from(snapshot.broker_ready));
        registry.register("broker_ready", "1 while connected to RabbitMQ and consuming", ready);
    }
}

/// Figures read at scrape time from the parts that keep them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub consumed: u64,
    pub acked: u64,
    pub deduplicated: u64,
    pub dead_lettered: u64,
    pub reconnects: u64,
    pub broker_ready: bool,
    pub steps_published: u64,
    pub steps_missed: u64,
    /// Schedules armed by the scheduler.
    pub schedules_armed: u64,
    /// The scheduler's lateness histogram (shared, not copied).
    pub schedule_lateness: Option<Histogram>,
    /// Broadcasts per state.
    pub states: BTreeMap<String, i64>,
    /// Channels whose broadcast is on air (live or degraded): channel to the broadcast and when
    /// it entered that state.
    pub live_channels: BTreeMap<String, (String, DateTime<Utc>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_holds_every_family_with_its_figures() {
        let metrics = Metrics::default();
        metrics.decided(Duration::from_millis(3));
        metrics.decided(Duration::from_millis(30));
        let lateness = Histogram::new(LATENESS_BUCKETS);
        lateness.observe(0.12);
        metrics.action("channel.start", Attempt::Retrying);
        metrics.action("channel.start", Attempt::Succeeded);
        metrics.action("locator.publish", Attempt::Failed);
        let now = DateTime::from_timestamp(1_764_007_200, 0).unwrap();
        metrics.heartbeat("News", now - chrono::TimeDelta::seconds(25));
        let full = crate::store::Error::Unavailable {
            operation: "commit",
            fault: crate::store::Fault::DiskFull,
            reason: "database or disk is full".into(),
        };
        assert!(metrics.commits().failed(&full), "the first failure starts an episode");
        assert!(!metrics.commits().failed(&full), "the second continues it");
        let snapshot = Snapshot {
            now,
            consumed: 10,
            acked: 9,
            deduplicated: 2,
            dead_lettered: 1,
            reconnects: 3,
            broker_ready: true,
            steps_published: 5,
            steps_missed: 4,
            schedules_armed: 7,
            schedule_lateness: Some(lateness),
            states: [("live".to_string(), 1), ("idle".to_string(), 2)].into(),
            live_channels: [
                ("news".to_string(), ("news".to_string(), now - chrono::TimeDelta::seconds(600))),
                ("sport".to_string(), ("sport".to_string(), now - chrono::TimeDelta::seconds(90))),
            ]
            .into(),
        };
        let text = metrics.render(&snapshot).unwrap();
        for line in [
            "onair_events_consumed_total 10",
            "onair_events_acked_total 9",
            "onair_events_deduplicated_total 2",
            "onair_events_dead_lettered_total 1",
            "onair_broker_reconnects_total 3",
            "onair_store_commit_failures_total 2",
            "onair_schedule_steps_missed_total 4",
            "onair_decision_latency_seconds_count 2",
            "onair_decision_latency_seconds_bucket{le=\"0.005\"} 1",
            "onair_schedule_lateness_seconds_count 1",
            "onair_action_attempts_total{action=\"channel.start\"} 2",
            "onair_action_retries_total{action=\"channel.start\"} 1",
            "onair_action_failures_total{action=\"locator.publish\"} 1",
            "onair_broadcasts{state=\"idle\"} 2",
            "onair_heartbeat_age_seconds{channel=\"news\",broadcast=\"news\"} 25.0",
            "onair_heartbeat_age_seconds{channel=\"sport\",broadcast=\"sport\"} 90.0",
            "onair_broker_ready 1",
            "onair_schedules_armed 7",
        ] {
            assert!(text.lines().any(|candidate| candidate == line), "{line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
