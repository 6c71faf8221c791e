//! The scheduler: fires every schedule's steps from one ordered timer map.
//!
//! Each scheduled broadcast is a *track*: its occurrences (generated lazily, one or two ahead),
//! the steps armed from them in order, and its durable cursor. The timer map holds one entry per
//! track, keyed by the instant of its next step; one task sleeps until the earliest, capped at
//! `max_sleep` so that a wall-clock jump (NTP step, resumed VM) is noticed within it. Due steps
//! of all tracks are taken together, published in one batch with confirms, and only then are the
//! cursors and audit rows committed: a crash in between publishes them again at the next start,
//! which the engine absorbs as duplicates (the step ids are deterministic).
//!
//! At start, a track resumes after its cursor. A step found later than `misfire_grace` follows
//! its schedule's catch-up policy; every step not published is audited (`missed` or `skipped`)
//! and counted.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{CatchUp, Occurrence, Occurrences, Settings, Skip, Spec, StepKind, occurrence_id};
use crate::clock::SharedClock;
use crate::event::{self, Event};
use crate::store::{Cursor, ScheduleRecord, Store};

/// Where published steps go: the broker in the daemon, a channel in benchmarks.
pub trait Sink: Send + Sync + 'static {
    /// Publishes `events` in order, each confirmed; an error means some may not have been.
    fn publish(&self, events: &[Event]) -> impl Future<Output = Result<(), String>> + Send;

    /// Gets ready to publish (opens connections), so that the first step is not late.
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

impl Sink for mpsc::UnboundedSender<Event> {
    async fn publish(&self, events: &[Event]) -> Result<(), String> {
        for event in events {
            self.send(event.clone()).map_err(|_| "the receiver is gone".to_string())?;
        }
        Ok(())
    }
}

/// Counters, shared with whoever reports on the scheduler.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Counters>);

#[derive(Debug)]
struct Counters {
    tracks: AtomicU64,
    published: AtomicU64,
    missed: AtomicU64,
    skipped: AtomicU64,
    publish_failures: AtomicU64,
    /// Seconds from each published step's planned instant to its confirmation.
    lateness: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            tracks: AtomicU64::default(),
            published: AtomicU64::default(),
            missed: AtomicU64::default(),
            skipped: AtomicU64::default(),
            publish_failures: AtomicU64::default(),
            lateness: prometheus_client::metrics::histogram::Histogram::new(crate::metrics::LATENESS_BUCKETS),
        }
    }
}

impl Stats {
    /// Schedules armed.
    pub fn tracks(&self) -> u64 {
        self.0.tracks.load(Ordering::Relaxed)
    }
    /// Steps published.
    pub fn published(&self) -> u64 {
        self.0.published.load(Ordering::Relaxed)
    }
    /// Steps not published because they were found too late (catch-up policy).
    pub fn missed(&self) -> u64 {
        self.0.missed.load(Ordering::Relaxed)
    }
    /// Occurrences skipped (daylight saving, excluded dates, overlaps).
    pub fn skipped(&self) -> u64 {
        self.0.skipped.load(Ordering::Relaxed)
    }
    /// Publish attempts that failed (and were retried).
    pub fn publish_failures(&self) -> u64 {
        self.0.publish_failures.load(Ordering::Relaxed)
    }
    /// How late published steps were (seconds from planned to confirmed), for `/metrics`.
    pub fn lateness(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.0.lateness
    }
}

/// What the runner reports on a pass, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub published: usize,
    pub missed: usize,
    pub skipped: usize,
}

/// A step's place in its track's order.
type Key = Cursor;

/// An armed step, or an occurrence that does not go on air (audited when its air time comes).
#[derive(Debug, Clone, Copy)]
struct Armed {
    key: Key,
    step: Result<StepKind, Skip>,
    /// When its occurrence's cooldown is (the occurrence is open until then).
    closes: DateTime<Utc>,
}

#[derive(Debug)]
struct Track {
    broadcast: String,
    spec: Arc<Spec>,
    occurrences: Occurrences,
    /// The next occurrence, not armed yet.
    next: Option<Occurrence>,
    armed: VecDeque<Armed>,
    cursor: Key,
    /// After a schedule change: occurrences whose warm-up comes before this instant are not
    /// armed (the change applies to occurrences whose warm-up has not fired).
    floor: Option<DateTime<Utc>>,
    /// The air instants of the occurrences kept from the schedule before a change (on air, or
    /// warming up): the new schedule does not arm them again.
    held: Vec<DateTime<Utc>>,
    /// The broadcast is being removed, or its schedule was: only the steps already armed of an
    /// occurrence already started are left; nothing new is armed.
    retired: bool,
}

/// A change to the scheduled set while the scheduler runs.
#[derive(Debug, Clone)]
pub enum Control {
    /// Arms `broadcast` with `spec`, or changes its schedule: occurrences whose warm-up fired
    /// keep their steps; the new schedule applies to the later ones.
    Arm { broadcast: String, spec: Arc<Spec> },
    /// Disarms `broadcast` (being removed, or no longer scheduled): an occurrence already started
    /// (its warm-up fired) keeps its steps and ends as planned; no later occurrence is armed.
    Disarm { broadcast: String },
}

impl Track {
    /// The key of the next step, arming occurrences as needed: every occurrence whose warm-up
    /// could come before the earliest armed step is armed first, so steps leave in key order.
    fn front(&mut self) -> Option<Key> {
        if self.retired {
            return self.armed.front().map(|armed| armed.key);
        }
        loop {
            if self.next.is_none() {
                self.next = self.occurrences.next();
            }
            let Some(next) = &self.next else { break };
            let arm_at = next.air - self.spec.lead_channel;
            if self.armed.front().is_some_and(|front| front.key.at < arm_at) {
                break;
            }
            let Some(occurrence) = self.next.take() else { break };
            self.arm(&occurrence);
        }
        self.armed.front().map(|armed| armed.key)
    }

    fn arm(&mut self, occurrence: &Occurrence) {
        if self.held.contains(&occurrence.air)
            || self.floor.is_some_and(|floor| occurrence.air - self.spec.lead_channel < floor)
        {
            return;
        }
        let closes = occurrence.end + self.spec.post_roll;
        let mut insert = |armed: Armed| {
            if armed.key > self.cursor {
                let index = self.armed.partition_point(|other| other.key < armed.key);
                self.armed.insert(index, armed);
            }
        };
        match occurrence.skipped {
            Some(skip) => insert(Armed {
                key: Key { at: occurrence.air, air: occurrence.air, rank: StepKind::Air.rank() },
                step: Err(skip),
                closes,
            }),
            None => {
                for (step, at) in occurrence.steps(&self.spec) {
                    insert(Armed { key: Key { at, air: occurrence.air, rank: step.rank() }, step: Ok(step), closes });
                }
            }
        }
    }
}

impl Track {
    /// A track for `spec` after `cursor`; without one (a schedule seen for the first time) it
    /// starts at `now` (nothing before counts as missed), with the record of its new cursor.
    fn new(
        broadcast: String,
        spec: Arc<Spec>,
        cursor: Option<Key>,
        now: DateTime<Utc>,
    ) -> (Self, Option<ScheduleRecord>) {
        let (cursor, fresh) = match cursor {
            Some(cursor) => (cursor, None),
            None => {
                let cursor = Key { at: now, air: DateTime::<Utc>::MAX_UTC, rank: u8::MAX };
                let record = ScheduleRecord {
                    broadcast: broadcast.clone(),
                    cursor,
                    at: now,
                    event_id: None,
                    outcome: Some("armed".into()),
                    reason: "schedule armed; steps from now on fire".into(),
                    detail: json!({}),
                };
                (cursor, Some(record))
            }
        };
        // Every occurrence with a step after the cursor.
        let from = cursor.at - spec.duration - spec.post_roll;
        let occurrences = spec.occurrences(from);
        // Five steps per armed occurrence; one occurrence at a time is usual.
        let armed = VecDeque::with_capacity(StepKind::ALL.len());
        let track = Track {
            broadcast,
            spec,
            occurrences,
            next: None,
            armed,
            cursor,
            floor: None,
            held: Vec::new(),
            retired: false,
        };
        (track, fresh)
    }

    /// Keeps only the occurrences already started (their warm-up fired): they end as planned,
    /// and nothing later is armed.
    fn retire(&mut self) {
        let started = self.cursor.air != DateTime::<Utc>::MAX_UTC;
        let cursor = self.cursor;
        // The next step of a started occurrence may not be armed yet (`front` arms lazily).
        let _ = self.front();
        self.armed.retain(|armed| started && armed.key.air <= cursor.air);
        self.next = None;
        self.retired = true;
    }

    /// Changes the schedule: the occurrences already started (their warm-up fired) keep their
    /// armed steps; the new schedule's occurrences whose warm-up is still to come are armed.
    fn change(&mut self, spec: Arc<Spec>, now: DateTime<Utc>) {
        let started = |armed: &Armed| armed.key.air <= self.cursor.air && self.cursor.air != DateTime::<Utc>::MAX_UTC;
        let kept: VecDeque<Armed> = self.armed.iter().copied().filter(started).collect();
        let mut held: Vec<DateTime<Utc>> = kept.iter().map(|armed| armed.key.air).collect();
        held.dedup();
        let from = self.cursor.at.max(now) - spec.duration - spec.post_roll - spec.lead_channel;
        self.occurrences = spec.occurrences(from);
        self.spec = spec;
        self.next = None;
        self.armed = kept;
        self.held = held;
        self.floor = Some(self.cursor.at.max(now));
    }
}

/// The scheduler task.
pub struct Scheduler<S: Sink> {
    settings: Settings,
    store: Arc<dyn Store>,
    sink: Arc<S>,
    clock: SharedClock,
    stats: Stats,
    tracks: Vec<Track>,
    /// Each broadcast's track index.
    index: std::collections::HashMap<String, usize>,
    /// (next step instant, track index): one entry per track with something armed.
    timers: BTreeSet<(DateTime<Utc>, usize)>,
    /// Changes to the scheduled set (`following`).
    controls: Option<mpsc::UnboundedReceiver<Control>>,
}

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("the store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl<S: Sink> Scheduler<S> {
    /// Loads the cursors and arms every schedule. A schedule seen for the first time starts at
    /// the current instant (nothing before it counts as missed); its cursor is recorded at once,
    /// so that a restart after downtime knows what it missed.
    pub async fn new(
        settings: Settings,
        schedules: Vec<(String, Arc<Spec>)>,
        store: Arc<dyn Store>,
        sink: Arc<S>,
        clock: SharedClock,
        stats: Stats,
    ) -> Result<Self, Error> {
        let reader = Arc::clone(&store);
        let span = tracing::info_span!("store.schedule_cursors");
        let cursors = tokio::task::spawn_blocking(move || span.in_scope(|| reader.schedule_cursors())).await??;
        let now = clock.now();
        let mut fresh = Vec::new();
        let mut tracks = Vec::with_capacity(schedules.len());
        for (broadcast, spec) in schedules {
            let cursor = cursors.get(&broadcast).copied();
            let (track, armed) = Track::new(broadcast, spec, cursor, now);
            fresh.extend(armed);
            tracks.push(track);
        }
        if !fresh.is_empty() {
            let writer = Arc::clone(&store);
            let span = tracing::info_span!("store.schedule_progress");
            tokio::task::spawn_blocking(move || span.in_scope(|| writer.schedule_progress(fresh))).await??;
        }
        let mut timers = BTreeSet::new();
        for (index, track) in tracks.iter_mut().enumerate() {
            if let Some(key) = track.front() {
                timers.insert((key.at, index));
            }
        }
        let index = tracks.iter().enumerate().map(|(index, track)| (track.broadcast.clone(), index)).collect();
        stats.0.tracks.store(tracks.len() as u64, Ordering::Relaxed);
        Ok(Self { settings, store, sink, clock, stats, tracks, index, timers, controls: None })
    }

    /// Follows `controls`: schedules armed, changed and disarmed while it runs.
    pub fn following(mut self, controls: mpsc::UnboundedReceiver<Control>) -> Self {
        self.controls = Some(controls);
        self
    }

    /// Applies one change to the scheduled set; the progress to record (a new track's cursor).
    pub fn apply(&mut self, control: Control) -> Vec<ScheduleRecord> {
        let now = self.clock.now();
        let mut records = Vec::new();
        match control {
            Control::Arm { broadcast, spec } => match self.index.get(&broadcast).copied() {
                Some(index) => {
                    self.unset_timer(index);
                    let track = &mut self.tracks[index];
                    if track.retired {
                        // Armed again after it was disarmed: from now on, like a new schedule.
                        let (fresh, armed) = Track::new(broadcast, spec, None, now);
                        *track = fresh;
                        records.extend(armed);
                    } else {
                        track.change(spec, now);
                    }
                    self.set_timer(index);
                    tracing::info!(broadcast = %self.tracks[index].broadcast, next = ?self.tracks[index].armed.front().map(|armed| armed.key.at), "Schedule changed.");
                }
                None => {
                    let (track, armed) = Track::new(broadcast.clone(), spec, None, now);
                    records.extend(armed);
                    let index = self.tracks.len();
                    self.tracks.push(track);
                    self.index.insert(broadcast.clone(), index);
                    self.set_timer(index);
                    tracing::info!(%broadcast, next = ?self.tracks[index].armed.front().map(|armed| armed.key.at), "Schedule armed.");
                }
            },
            Control::Disarm { broadcast } => {
                if let Some(index) = self.index.get(&broadcast).copied() {
                    self.unset_timer(index);
                    self.tracks[index].retire();
                    self.set_timer(index);
                    tracing::info!(%broadcast, started = !self.tracks[index].armed.is_empty(), "Schedule disarmed; an occurrence already started ends as planned.");
                }
            }
        }
        let live = self.tracks.iter().filter(|track| !track.retired).count();
        self.stats.0.tracks.store(live as u64, Ordering::Relaxed);
        records
    }

    fn unset_timer(&mut self, index: usize) {
        if let Some(armed) = self.tracks[index].armed.front() {
            self.timers.remove(&(armed.key.at, index));
        }
    }

    fn set_timer(&mut self, index: usize) {
        if let Some(key) = self.tracks[index].front() {
            self.timers.insert((key.at, index));
        }
    }

    /// The instant of the earliest armed step.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Fires steps until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(schedules = self.tracks.len(), next = ?self.next_due(), "Scheduler running.");
        tokio::select! {
            () = shutdown.cancelled() => return,
            ready = self.sink.ready() => if let Err(error) = ready {
                tracing::warn!(%error, "The scheduler cannot publish yet; it retries when a step is due.");
            }
        }
        // Progress is recorded by a task of its own, in order, so that the timer never waits for a
        // commit's fsync; what is not recorded when the process dies is published again at the
        // next start (a duplicate the engine absorbs).
        let (recorder, mut pending) = mpsc::unbounded_channel::<Vec<ScheduleRecord>>();
        let store = Arc::clone(&self.store);
        let recording = async move {
            while let Some(records) = pending.recv().await {
                record(&store, records).await;
            }
        };
        let writer = tokio::spawn(recording.instrument(tracing::info_span!("schedule_recorder")));
        self.tick_loop(&shutdown, &recorder).await;
        drop(recorder);
        let _ = writer.await;
    }

    async fn tick_loop(&mut self, shutdown: &CancellationToken, recorder: &mpsc::UnboundedSender<Vec<ScheduleRecord>>) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let now = self.clock.now();
            if self.next_due().is_some_and(|due| due <= now) {
                let Some((_, records)) = self.take(now, shutdown).await else { return };
                if !records.is_empty() {
                    let _ = recorder.send(records);
                }
                continue;
            }
            let wait = self
                .next_due()
                .and_then(|due| (due - now).to_std().ok())
                .map_or(self.settings.max_sleep, |wait| wait.min(self.settings.max_sleep));
            let control = async {
                match self.controls.as_mut() {
                    Some(controls) => controls.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                control = control => match control {
                    Some(control) => {
                        let records = self.apply(control);
                        if !records.is_empty() {
                            let _ = recorder.send(records);
                        }
                    }
                    None => self.controls = None,
                },
            }
        }
    }

    /// Takes every step due at `now`, publishes what is to be published, then records the
    /// progress. `None` when shut down before the publish was confirmed (nothing recorded).
    pub async fn fire(&mut self, now: DateTime<Utc>, shutdown: &CancellationToken) -> Option<Progress> {
        let (progress, records) = self.take(now, shutdown).await?;
        record(&self.store, records).await;
        Some(progress)
    }

    /// Takes every step due at `now` and publishes what is to be published; returns the progress
    /// to record.
    async fn take(
        &mut self,
        now: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Option<(Progress, Vec<ScheduleRecord>)> {
        let due = self.pop_due(now);
        let mut pass = Pass::default();
        let mut progress = Progress::default();
        for &index in &due {
            let track = &mut self.tracks[index];
            let missed_unaudited = pass.take_track(track, now, &self.settings, &mut progress);
            if pass.events.len() >= PUBLISH_CHUNK
                && !pass.flush(&*self.sink, &self.stats, &self.clock, self.settings.max_sleep, shutdown).await
            {
                return None;
            }
            if missed_unaudited > 0 {
                pass.records.push(missed_summary(track, now, missed_unaudited));
            }
        }
        if !pass.flush(&*self.sink, &self.stats, &self.clock, self.settings.max_sleep, shutdown).await {
            return None;
        }
        self.count(&progress);
        self.rearm(due);
        Some((progress, pass.records))
    }

    /// Removes the timers due at `now`; returns their tracks' indexes, earliest first.
    fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<usize> {
        let mut due = Vec::new();
        while let Some(&(at, index)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            due.push(index);
        }
        due
    }

    /// Adds a pass's progress to the counters.
    fn count(&self, progress: &Progress) {
        for (step, count) in [
            (&self.stats.0.published, progress.published),
            (&self.stats.0.missed, progress.missed),
            (&self.stats.0.skipped, progress.skipped),
        ] {
            step.fetch_add(count as u64, Ordering::Relaxed);
        }
        if progress.missed > 0 {
            tracing::warn!(missed = progress.missed, "Schedule steps missed (found too late); see the audit trail.");
        }
    }

    /// Sets the timers of the `due` tracks again, at their next armed steps.
    fn rearm(&mut self, due: Vec<usize>) {
        for index in due {
            if let Some(key) = self.tracks[index].front() {
                self.timers.insert((key.at, index));
            }
        }
    }
}

/// The record of the missed steps of `track` that were not audited one by one.
fn missed_summary(track: &Track, now: DateTime<Utc>, missed_unaudited: usize) -> ScheduleRecord {
    ScheduleRecord {
        broadcast: track.broadcast.clone(),
        cursor: track.cursor,
        at: now,
        event_id: None,
        outcome: Some("missed".into()),
        reason: format!("missed {missed_unaudited} more steps (not listed one by one)"),
        detail: json!({"count": missed_unaudited}),
    }
}

/// One step taken from a track in a pass at `now`: what its event and records say.
struct Taken<'a> {
    broadcast: &'a str,
    spec: &'a Spec,
    armed: &'a Armed,
    now: DateTime<Utc>,
    occurrence: String,
}

impl<'a> Taken<'a> {
    fn new(track: &'a Track, armed: &'a Armed, now: DateTime<Utc>) -> Self {
        Self { broadcast: &track.broadcast, spec: &track.spec, armed, now, occurrence: occurrence_id(armed.key.air) }
    }

    fn record(&self, outcome: &str, event_id: Option<String>, reason: String, detail: Value) -> ScheduleRecord {
        ScheduleRecord {
            broadcast: self.broadcast.to_string(),
            cursor: self.armed.key,
            at: self.now,
            event_id,
            outcome: Some(outcome.to_string()),
            reason,
            detail,
        }
    }

    /// The step's event id (deterministic, so that a step published twice is a duplicate).
    fn event_id(&self, step: StepKind) -> String {
        format!("{}/{}/{}", self.broadcast, self.occurrence, step.name())
    }

    /// The record of an occurrence that does not go on air.
    fn skipped(&self, skip: Skip) -> ScheduleRecord {
        let occurrence = &self.occurrence;
        let reason = format!("occurrence {occurrence} skipped: {}", skip_reason(skip, self.spec));
        self.record("skipped", None, reason, json!({"occurrence": occurrence}))
    }

    /// The event of a step to publish, and its record (stamped with the confirmation later).
    fn published(&self, step: StepKind) -> (Event, ScheduleRecord) {
        let (occurrence, now) = (&self.occurrence, self.now);
        let id = self.event_id(step);
        let planned = self.armed.key.at;
        let data = json!({
            "broadcast": self.broadcast,
            "occurrence": occurrence,
            "step": step.name(),
            "planned": stamp(planned),
            "air": stamp(self.armed.key.air),
        });
        let event = Event::new(id.clone(), event::SCHEDULE_FIRED, self.broadcast.to_string(), data, now);
        let reason = format!("published {} of {occurrence} (planned {})", step.name(), stamp(planned));
        let detail = json!({
            "step": step.name(),
            "occurrence": occurrence,
            "planned": stamp(planned),
            "fired": stamp(now),
            "late_ms": (now - planned).num_milliseconds(),
        });
        (event, self.record("published", Some(id), reason, detail))
    }

    /// The record of a step found too late for its catch-up policy.
    fn missed(&self, step: StepKind) -> ScheduleRecord {
        let occurrence = &self.occurrence;
        let late = self.now - self.armed.key.at;
        let reason = format!(
            "missed {} of {occurrence}: found {} late (catch_up = {})",
            step.name(),
            humanize(late),
            catch_up_name(self.spec.catch_up)
        );
        let detail = json!({
            "step": step.name(),
            "occurrence": occurrence,
            "planned": stamp(self.armed.key.at),
            "late_ms": late.num_milliseconds(),
        });
        self.record("missed", Some(self.event_id(step)), reason, detail)
    }
}

/// Commits schedule progress; a failure is logged (the steps are published again at the next
/// start).
async fn record(store: &Arc<dyn Store>, records: Vec<ScheduleRecord>) {
    if records.is_empty() {
        return;
    }
    let store = Arc::clone(store);
    let span = tracing::info_span!("store.schedule_progress");
    match tokio::task::spawn_blocking(move || span.in_scope(|| store.schedule_progress(records))).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, "Cannot record schedule progress; these steps are published again at the next start.")
        }
        Err(error) => tracing::error!(%error, "The store task failed."),
    }
}

/// Steps handed to the sink at once at most: a large burst starts leaving before all of it is
/// prepared.
const PUBLISH_CHUNK: usize = 512;

/// What one pass of the scheduler publishes and records.
#[derive(Default)]
struct Pass {
    /// Steps to publish, not yet handed to the sink.
    events: Vec<Event>,
    /// Progress to record, in order.
    records: Vec<ScheduleRecord>,
    /// The records of `events` and their planned instants, to stamp with the confirmation time.
    published: Vec<(usize, DateTime<Utc>)>,
}

impl Pass {
    /// Takes `track`'s steps due at `now`: each is published, missed or skipped as its schedule
    /// says, and recorded (missed steps one by one up to `audit_missed_limit`). Returns how many
    /// missed steps were not recorded one by one.
    fn take_track(
        &mut self,
        track: &mut Track,
        now: DateTime<Utc>,
        settings: &Settings,
        progress: &mut Progress,
    ) -> usize {
        let taken = take_due(track, now);
        let decisions = decide(&track.spec, &taken, now, settings.misfire_grace);
        let mut missed_audited = 0;
        let mut missed_unaudited = 0;
        for (armed, publish) in taken.iter().zip(decisions) {
            track.cursor = armed.key;
            let step = Taken::new(track, armed, now);
            match armed.step {
                Err(skip) => {
                    progress.skipped += 1;
                    self.records.push(step.skipped(skip));
                }
                Ok(kind) if publish => {
                    progress.published += 1;
                    let (event, record) = step.published(kind);
                    self.events.push(event);
                    self.published.push((self.records.len(), armed.key.at));
                    self.records.push(record);
                }
                Ok(kind) => {
                    progress.missed += 1;
                    if missed_audited < settings.audit_missed_limit {
                        missed_audited += 1;
                        self.records.push(step.missed(kind));
                    } else {
                        missed_unaudited += 1;
                    }
                }
            }
        }
        missed_unaudited
    }

    /// Publishes the pending steps (retrying until confirmed; `false` when shut down first) and
    /// stamps the confirmation time on their records. Retries back off up to `max_sleep`, like
    /// every other wait of the scheduler.
    async fn flush<S: Sink>(
        &mut self,
        sink: &S,
        stats: &Stats,
        clock: &SharedClock,
        max_sleep: Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        if self.events.is_empty() {
            return true;
        }
        let mut backoff = Duration::from_millis(100).min(max_sleep);
        while let Err(error) = sink.publish(&self.events).await {
            stats.0.publish_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, steps = self.events.len(), retry_in = ?backoff, "Cannot publish schedule steps; retrying.");
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max_sleep);
        }
        let now = clock.now();
        let confirmed = stamp(now);
        for (index, planned) in self.published.drain(..) {
            stats.0.lateness.observe((now - planned).to_std().unwrap_or_default().as_secs_f64());
            if let Value::Object(detail) = &mut self.records[index].detail {
                detail.insert("published".into(), Value::String(confirmed.clone()));
            }
        }
        self.events.clear();
        true
    }
}

/// The track's armed steps due at `now`, in order.
fn take_due(track: &mut Track, now: DateTime<Utc>) -> Vec<Armed> {
    let mut taken = Vec::new();
    while track.front().is_some_and(|key| key.at <= now) {
        if let Some(armed) = track.armed.pop_front() {
            taken.push(armed);
        }
    }
    taken
}

/// For each taken step, whether it is published: on time (within the grace), or late but
/// kept by the catch-up policy.
fn decide(spec: &Spec, taken: &[Armed], now: DateTime<Utc>, grace: Duration) -> Vec<bool> {
    let grace = TimeDelta::from_std(grace).unwrap_or(TimeDelta::MAX);
    let on_time = |armed: &Armed| now - armed.key.at <= grace;
    taken
        .iter()
        .enumerate()
        .map(|(index, armed)| {
            if armed.step.is_err() || on_time(armed) {
                return armed.step.is_ok();
            }
            match spec.catch_up {
                CatchUp::None => false,
                CatchUp::All => armed.key.at >= now - spec.catch_up_window,
                CatchUp::Latest => {
                    // Only the latest due step of an occurrence still open, and only when no
                    // later step of it is due.
                    armed.closes > now
                        && !taken[index + 1..].iter().any(|later| later.key.air == armed.key.air && later.step.is_ok())
                }
            }
        })
        .collect()
}

fn skip_reason(skip: Skip, spec: &Spec) -> String {
    match skip {
        Skip::Gap => "its local time does not exist (daylight saving; dst_gap = \"skip\")".into(),
        Skip::Fold => "this pass of a repeated local time does not fire (daylight saving; dst_fold)".into(),
        Skip::Excluded => "excluded date".into(),
        Skip::Merged => "it lands on the same instant as another occurrence".into(),
        Skip::Overlap { previous } => format!(
            "{} is still on air (overlap = \"skip\"; on air until {})",
            occurrence_id(previous),
            stamp(previous + spec.duration)
        ),
    }
}

fn catch_up_name(catch_up: CatchUp) -> &'static str {
    match catch_up {
        CatchUp::Latest => "latest",
        CatchUp::None => "none",
        CatchUp::All => "all",
    }
}

/// An instant as RFC 3339 UTC with milliseconds.
pub(crate) fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn humanize(delta: TimeDelta) -> String {
    let millis = delta.num_milliseconds().max(0) as u64;
    humantime::format_duration(Duration::from_millis(millis - millis % 1000)).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A sink that refuses the first `failures` publishes and records when each call came.
    struct Refusing {
        failures: usize,
        calls: Mutex<Vec<tokio::time::Instant>>,
    }

    impl Sink for Refusing {
        async fn publish(&self, _events: &[Event]) -> Result<(), String> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(tokio::time::Instant::now());
            if calls.len() <= self.failures { Err("the broker is away".into()) } else { Ok(()) }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_publish_is_retried_no_later_than_max_sleep() {
        let sink = Refusing { failures: 8, calls: Mutex::new(Vec::new()) };
        let now = crate::clock::system().now();
        let mut pass = Pass {
            events: vec![Event::new("step", "onair.test", "broadcast/news", json!({}), now)],
            ..Default::default()
        };
        let max_sleep = Duration::from_millis(700);
        let done =
            pass.flush(&sink, &Stats::default(), &crate::clock::system(), max_sleep, &CancellationToken::new()).await;
        assert!(done);
        let calls = sink.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 9, "eight refusals, then the publish that went through");
        let gaps: Vec<Duration> = calls.windows(2).map(|pair| pair[1] - pair[0]).collect();
        assert!(gaps.iter().all(|gap| *gap <= max_sleep), "{gaps:?}");
        assert_eq!(gaps[0], Duration::from_millis(100), "{gaps:?}");
        assert_eq!(gaps[7], max_sleep, "the backoff grows to max_sleep and stays there: {gaps:?}");
    }
}
