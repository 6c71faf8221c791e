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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{CatchUp, Occurrence, Occurrences, Settings, Skip, Spec, StepKind, When, occurrence_id};
use crate::clock::SharedClock;
use crate::event::{self, Event};
use crate::store::{CommandAudit, Cursor, HeldStep, HoldWrite, ScheduleHold, ScheduleRecord, Store};

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
}

#[derive(Debug)]
struct Track {
    /// Shared with the scheduler's index of tracks by broadcast.
    broadcast: Arc<str>,
    spec: Arc<Spec>,
    /// The occurrences not armed yet. The next one is generated again each time `front` looks
    /// at it rather than kept (80 bytes per track, against about a microsecond per step).
    occurrences: Occurrences,
    armed: VecDeque<Armed>,
    cursor: Key,
    /// After a schedule change: the instant of the change. The schedule's steps at or before it
    /// are not armed (the change applies to what has not fired, from then on); durable.
    floor: Option<DateTime<Utc>>,
    /// Occurrences kept on their own step instants (started before a schedule change, or
    /// extended), by air instant: armed in place of what the schedule generates at the same air;
    /// durable (`store::ScheduleHold`).
    holds: BTreeMap<DateTime<Utc>, Vec<(StepKind, DateTime<Utc>)>>,
    /// The broadcast is being removed, or its schedule was: only the steps already armed of an
    /// occurrence already started are left; nothing new is armed.
    retired: bool,
}

/// A change to the scheduled set while the scheduler runs.
#[derive(Debug)]
pub enum Control {
    /// Arms `broadcast` with `spec`, or changes its schedule: occurrences whose warm-up fired
    /// keep their steps; the new schedule applies to the later ones.
    Arm { broadcast: String, spec: Arc<Spec> },
    /// Disarms `broadcast` (being removed, or no longer scheduled): an occurrence already started
    /// (its warm-up fired) keeps its steps and ends as planned; no later occurrence is armed.
    Disarm { broadcast: String },
    /// Moves the end (and the cooldown with it) of `broadcast`'s occurrence on air, durably and
    /// audited as a command of `who`; `reply` hears the new times once they are recorded.
    Extend {
        broadcast: String,
        extension: Extension,
        who: String,
        /// Why, for the audit trail.
        note: Option<String>,
        reply: oneshot::Sender<Result<Extended, ExtendError>>,
    },
}

/// How far an `extend` moves the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// From the current end.
    By(TimeDelta),
    /// To this instant.
    Until(DateTime<Utc>),
}

/// What an `extend` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Extended {
    pub broadcast: String,
    pub occurrence: String,
    #[serde(serialize_with = "serialize_stamp")]
    pub air: DateTime<Utc>,
    #[serde(serialize_with = "serialize_stamp")]
    pub end_was: DateTime<Utc>,
    #[serde(serialize_with = "serialize_stamp")]
    pub end: DateTime<Utc>,
    #[serde(serialize_with = "serialize_stamp")]
    pub cooldown_was: DateTime<Utc>,
    #[serde(serialize_with = "serialize_stamp")]
    pub cooldown: DateTime<Utc>,
}

fn serialize_stamp<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&stamp(*at))
}

/// Why an `extend` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtendError {
    #[error("broadcast {0:?} has no scheduled occurrence")]
    NotScheduled(String),
    #[error("nothing of broadcast {0:?} is on air: no occurrence has started and not yet ended")]
    NotOnAir(String),
    #[error("the new end {} must be after now ({}) and after the air time {}", stamp(*.end), stamp(*.now), stamp(*.air))]
    TooEarly { end: DateTime<Utc>, now: DateTime<Utc>, air: DateTime<Utc> },
    #[error(
        "the cooldown would come at {}, after the warm-up of the next occurrence {next} at {}; extend the end to {} at \
         the latest",
        stamp(*.cooldown), stamp(*.warmup), stamp(*.latest)
    )]
    Overlap { cooldown: DateTime<Utc>, next: String, warmup: DateTime<Utc>, latest: DateTime<Utc> },
    #[error("the extension could not be recorded (it holds until the next restart): {0}")]
    Store(String),
    #[error("the scheduler is not running")]
    Stopped,
}

impl Track {
    /// The key of the next step, arming occurrences as needed: every occurrence whose warm-up
    /// could come before the earliest armed step is armed first, so steps leave in key order.
    fn front(&mut self) -> Option<Key> {
        if self.retired {
            return self.armed.front().map(|armed| armed.key);
        }
        loop {
            let mut rest = self.occurrences.clone();
            let Some(next) = rest.next() else { break };
            let arm_at = next.air - self.spec.lead_channel;
            if self.armed.front().is_some_and(|front| front.key.at < arm_at) {
                break;
            }
            self.occurrences = rest;
            self.arm(&next);
        }
        self.armed.front().map(|armed| armed.key)
    }

    /// Steps at or before this key are not armed from the schedule: the cursor's, or the
    /// floor's when later.
    fn bound(&self) -> Key {
        match self.floor {
            Some(floor) if floor > self.cursor.at => Key { at: floor, air: DateTime::<Utc>::MAX_UTC, rank: u8::MAX },
            _ => self.cursor,
        }
    }

    /// Inserts `armed` in order (nothing at or before `bound`).
    fn insert(&mut self, armed: Armed, bound: Key) {
        if armed.key > bound {
            let index = self.armed.partition_point(|other| other.key < armed.key);
            self.armed.insert(index, armed);
        }
    }

    /// The air instant of a held occurrence on air at some point of `[air, end)`.
    fn held_during(&self, air: DateTime<Utc>, end: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.holds.iter().find_map(|(held, steps)| {
            let held_end = steps.iter().find(|(step, _)| *step == StepKind::End).map_or(*held, |(_, at)| *at);
            (air < held_end && *held < end).then_some(*held)
        })
    }

    fn arm(&mut self, occurrence: &Occurrence) {
        if self.holds.contains_key(&occurrence.air) {
            return;
        }
        let bound = self.bound();
        // An occurrence that would be on air while a held one is does not go on air.
        let skipped = occurrence
            .skipped
            .or_else(|| self.held_during(occurrence.air, occurrence.end).map(|previous| Skip::Overlap { previous }));
        match skipped {
            Some(skip) => self.insert(
                Armed {
                    key: Key { at: occurrence.air, air: occurrence.air, rank: StepKind::Air.rank() },
                    step: Err(skip),
                },
                bound,
            ),
            None => {
                for (step, at) in occurrence.steps(&self.spec) {
                    let key = Key { at, air: occurrence.air, rank: step.rank() };
                    self.insert(Armed { key, step: Ok(step) }, bound);
                }
            }
        }
    }

    /// Arms a held occurrence's steps after the cursor.
    fn arm_held(&mut self, air: DateTime<Utc>, steps: &[(StepKind, DateTime<Utc>)]) {
        let cursor = self.cursor;
        self.armed.retain(|armed| armed.key.air != air);
        for &(step, at) in steps {
            self.insert(Armed { key: Key { at, air, rank: step.rank() }, step: Ok(step) }, cursor);
        }
    }

    /// Whether an occurrence (by its air instant) has started: a step of it, or of a later one,
    /// was handled.
    fn started(&self, air: DateTime<Utc>) -> bool {
        self.cursor.air != DateTime::<Utc>::MAX_UTC && air <= self.cursor.air
    }

    /// The step instants of the occurrence at `air`: held, or as its schedule generates them.
    fn steps_of(&self, air: DateTime<Utc>) -> Vec<(StepKind, DateTime<Utc>)> {
        if let Some(steps) = self.holds.get(&air) {
            return steps.clone();
        }
        let generated = self.spec.occurrences(air).next().filter(|occurrence| occurrence.air == air);
        match generated {
            Some(occurrence) if occurrence.skipped.is_none() => occurrence.steps(&self.spec),
            // Not generated any more: what is armed of it.
            _ => self
                .armed
                .iter()
                .filter(|armed| armed.key.air == air)
                .filter_map(|armed| Some((armed.step.ok()?, armed.key.at)))
                .collect(),
        }
    }

    /// Holds the occurrences already started that still have steps armed (they keep their
    /// times), and only those.
    fn hold_started(&mut self) {
        let mut airs: Vec<DateTime<Utc>> = self
            .armed
            .iter()
            .filter(|armed| armed.step.is_ok() && self.started(armed.key.air))
            .map(|armed| armed.key.air)
            .collect();
        airs.sort();
        airs.dedup();
        self.holds = airs.into_iter().map(|air| (air, self.steps_of(air))).collect();
    }

    /// Its holds and floor as the store keeps them, with the audit row of what changed them.
    fn hold_write(&self, at: DateTime<Utc>, audit: Option<CommandAudit>) -> HoldWrite {
        HoldWrite {
            broadcast: self.broadcast.to_string(),
            at,
            holds: self
                .holds
                .iter()
                .map(|(air, steps)| ScheduleHold {
                    broadcast: self.broadcast.to_string(),
                    air: *air,
                    steps: steps.iter().map(|(step, at)| HeldStep { rank: step.rank(), at: *at }).collect(),
                })
                .collect(),
            floor: self.floor,
            audit,
        }
    }
}

impl Track {
    /// A track for `spec` after `cursor`; without one (a schedule seen for the first time) it
    /// starts at `now` (nothing before counts as missed), with the record of its new cursor.
    /// Its `holds` with a step after the cursor are armed in place of the schedule's occurrences
    /// at the same air; the others are over and left out.
    fn new(
        broadcast: String,
        spec: Arc<Spec>,
        cursor: Option<Key>,
        now: DateTime<Utc>,
        held: Held,
    ) -> (Self, Option<ScheduleRecord>) {
        let fresh = cursor.is_none();
        let track = Self::start(broadcast, spec, cursor, now, held);
        let record = fresh.then(|| track.armed_record(now));
        (track, record)
    }

    /// The record of a schedule seen for the first time: its cursor at the instant it was armed.
    fn armed_record(&self, now: DateTime<Utc>) -> ScheduleRecord {
        ScheduleRecord {
            broadcast: self.broadcast.to_string(),
            cursor: self.cursor,
            at: now,
            event_id: None,
            outcome: Some("armed".into()),
            reason: "schedule armed; steps from now on fire".into(),
            detail: json!({}),
        }
    }

    /// `new` without the record.
    fn start(broadcast: String, spec: Arc<Spec>, cursor: Option<Key>, now: DateTime<Utc>, held: Held) -> Self {
        let cursor = cursor.unwrap_or(Key { at: now, air: DateTime::<Utc>::MAX_UTC, rank: u8::MAX });
        // Every occurrence with a step after the cursor.
        let from = cursor.at - spec.duration - spec.post_roll;
        let occurrences = spec.occurrences(from);
        // Five steps per armed occurrence; one occurrence at a time is usual.
        let armed = VecDeque::with_capacity(StepKind::ALL.len());
        let mut track = Track {
            broadcast: Arc::from(broadcast),
            spec,
            occurrences,
            armed,
            cursor,
            floor: held.floor,
            holds: BTreeMap::new(),
            retired: false,
        };
        for hold in held.holds {
            let steps: Vec<(StepKind, DateTime<Utc>)> =
                hold.steps.iter().filter_map(|step| Some((StepKind::from_rank(step.rank)?, step.at))).collect();
            if steps.iter().any(|&(step, at)| Key { at, air: hold.air, rank: step.rank() } > cursor) {
                track.arm_held(hold.air, &steps);
                track.holds.insert(hold.air, steps);
            }
        }
        track
    }

    /// Keeps only the occurrences already started (their warm-up fired): they end as planned,
    /// and nothing later is armed.
    fn retire(&mut self) {
        // The next step of a started occurrence may not be armed yet (`front` arms lazily).
        let _ = self.front();
        let cursor = self.cursor;
        let started = cursor.air != DateTime::<Utc>::MAX_UTC;
        self.armed.retain(|armed| started && armed.key.air <= cursor.air);
        self.hold_started();
        self.retired = true;
    }

    /// Changes the schedule: the occurrences already started (their warm-up fired) keep their
    /// armed steps and times (held); the new schedule applies to the steps after now, and none
    /// of its occurrences goes on air while a held one is on air.
    fn change(&mut self, spec: Arc<Spec>, now: DateTime<Utc>) {
        // A started occurrence's steps are all armed once its first step was (`arm` arms whole
        // occurrences), so what is armed of it is all that is left of it.
        let _ = self.front();
        let cursor = self.cursor;
        let started = cursor.air != DateTime::<Utc>::MAX_UTC;
        self.armed.retain(|armed| started && armed.key.air <= cursor.air);
        self.hold_started();
        let floor = cursor.at.max(now);
        let from = floor - spec.duration - spec.post_roll - spec.lead_channel;
        self.occurrences = spec.occurrences(from);
        self.spec = spec;
        self.floor = Some(floor);
    }

    /// Moves the end and cooldown of the occurrence on air; see `Control::Extend`.
    fn extend(&mut self, extension: Extension, now: DateTime<Utc>) -> Result<Extended, ExtendError> {
        let on_air = self
            .armed
            .iter()
            .find(|armed| armed.step == Ok(StepKind::End) && self.started(armed.key.air))
            .map(|armed| (armed.key.air, armed.key.at));
        let Some((air, end_was)) = on_air else { return Err(ExtendError::NotOnAir(self.broadcast.to_string())) };
        let mut steps = self.steps_of(air);
        let at = |steps: &[(StepKind, DateTime<Utc>)], kind| steps.iter().find(|(step, _)| *step == kind).map(|s| s.1);
        let cooldown_was = at(&steps, StepKind::Cooldown).unwrap_or(end_was);
        let post_roll = (cooldown_was - end_was).max(TimeDelta::zero());
        let end = match extension {
            Extension::By(by) => end_was.checked_add_signed(by).unwrap_or(DateTime::<Utc>::MAX_UTC),
            Extension::Until(until) => until,
        };
        if end <= now || end <= air {
            return Err(ExtendError::TooEarly { end, now, air });
        }
        let cooldown = end.checked_add_signed(post_roll).unwrap_or(DateTime::<Utc>::MAX_UTC);
        if let Some((next, warmup)) = self.next_warmup(air)
            && cooldown > warmup
        {
            let next = occurrence_id(next);
            return Err(ExtendError::Overlap { cooldown, next, warmup, latest: warmup - post_roll });
        }
        for (step, at) in &mut steps {
            match step {
                StepKind::End => *at = end,
                StepKind::Cooldown => *at = cooldown,
                _ => {}
            }
        }
        self.arm_held(air, &steps);
        self.holds.insert(air, steps);
        let broadcast = self.broadcast.clone();
        Ok(Extended {
            broadcast: broadcast.to_string(),
            occurrence: occurrence_id(air),
            air,
            end_was,
            end,
            cooldown_was,
            cooldown,
        })
    }

    /// The next occurrence after the one at `air` that goes on air, and its first step.
    fn next_warmup(&self, air: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let armed = self
            .armed
            .iter()
            .filter(|armed| armed.key.air > air && armed.step.is_ok())
            .map(|armed| (armed.key.air, armed.key.at))
            .min_by_key(|(_, at)| *at);
        let generated = match self.retired {
            true => None,
            false => self
                .occurrences
                .clone()
                .take(1000)
                .find(|occurrence| {
                    occurrence.air > air
                        && occurrence.skipped.is_none()
                        && !self.holds.contains_key(&occurrence.air)
                        && self.held_during(occurrence.air, occurrence.end).is_none()
                })
                .map(|occurrence| (occurrence.air, occurrence.first_step(&self.spec))),
        };
        [armed, generated].into_iter().flatten().min_by_key(|(_, at)| *at)
    }
}

/// A broadcast's holds and floor, as the store keeps them.
#[derive(Debug, Default)]
struct Held {
    holds: Vec<ScheduleHold>,
    floor: Option<DateTime<Utc>>,
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
    index: std::collections::HashMap<Arc<str>, usize>,
    /// (next step instant, track index): one entry per track with something armed.
    timers: BTreeSet<(DateTime<Utc>, usize)>,
    /// Changes to the scheduled set (`following`).
    controls: Option<mpsc::UnboundedReceiver<Control>>,
    /// Hold writes not yet handed to the recorder, each with the `extend` waiting for it.
    holding: Vec<(HoldWrite, Option<Waiting>)>,
}

/// What an `extend` asks, and who asks it.
struct Request {
    extension: Extension,
    who: String,
    note: Option<String>,
}

/// An `extend` waiting for its hold to be recorded.
type Waiting = (Extended, oneshot::Sender<Result<Extended, ExtendError>>);

/// What the recorder task writes, in order.
enum Record {
    Progress(Vec<ScheduleRecord>),
    Holds(Box<HoldWrite>, Option<Waiting>),
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
    /// Loads the cursors and holds and arms every schedule. A schedule seen for the first time
    /// starts at the current instant (nothing before it counts as missed); its cursor is recorded
    /// at once, so that a restart after downtime knows what it missed. An occurrence held by a
    /// broadcast no longer scheduled still ends as held.
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
        let (cursors, stored) = tokio::task::spawn_blocking(move || {
            span.in_scope(|| Ok::<_, crate::store::Error>((reader.schedule_cursors()?, reader.schedule_holds()?)))
        })
        .await??;
        let mut held: BTreeMap<String, Held> = BTreeMap::new();
        for hold in stored.holds {
            held.entry(hold.broadcast.clone()).or_default().holds.push(hold);
        }
        for (broadcast, floor) in stored.floors {
            held.entry(broadcast).or_default().floor = Some(floor);
        }
        let now = clock.now();
        // The tracks seen for the first time, whose cursors are recorded below.
        let mut fresh = Vec::new();
        let mut tracks = Vec::with_capacity(schedules.len());
        let mut holding = Vec::new();
        for (broadcast, spec) in schedules {
            let cursor = cursors.get(&broadcast).copied();
            let holds = held.remove(&broadcast).unwrap_or_default();
            let stored_holds = holds.holds.len();
            let track = Track::start(broadcast, spec, cursor, now, holds);
            if track.holds.len() != stored_holds {
                // Holds that are over are dropped.
                holding.push((track.hold_write(now, None), None));
            }
            if cursor.is_none() {
                fresh.push(tracks.len());
            }
            tracks.push(track);
        }
        // What is left is held by broadcasts not scheduled any more.
        for (broadcast, holds) in held {
            let cursor = cursors.get(&broadcast).copied();
            match held_only(broadcast.clone(), cursor, now, holds) {
                Some(track) => tracks.push(track),
                // Over: dropped.
                None => {
                    holding.push((HoldWrite { broadcast, at: now, holds: Vec::new(), floor: None, audit: None }, None))
                }
            }
        }
        let mut timers = BTreeSet::new();
        for (index, track) in tracks.iter_mut().enumerate() {
            if let Some(key) = track.front() {
                timers.insert((key.at, index));
            }
        }
        let index = tracks.iter().enumerate().map(|(index, track)| (Arc::clone(&track.broadcast), index)).collect();
        // The records are made after everything the scheduler keeps, so that, once written and
        // freed, they leave one free block the allocator can give back rather than a hole
        // between every two tracks (about 200 bytes of resident memory per schedule).
        if !fresh.is_empty() {
            let records: Vec<ScheduleRecord> = fresh.iter().map(|&index| tracks[index].armed_record(now)).collect();
            let writer = Arc::clone(&store);
            let span = tracing::info_span!("store.schedule_progress");
            tokio::task::spawn_blocking(move || span.in_scope(|| writer.schedule_progress(records))).await??;
        }
        let live = tracks.iter().filter(|track| !track.retired).count();
        stats.0.tracks.store(live as u64, Ordering::Relaxed);
        Ok(Self { settings, store, sink, clock, stats, tracks, index, timers, controls: None, holding })
    }

    /// Follows `controls`: schedules armed, changed and disarmed while it runs.
    pub fn following(mut self, controls: mpsc::UnboundedReceiver<Control>) -> Self {
        self.controls = Some(controls);
        self
    }

    /// Applies one change to the scheduled set; the progress to record (a new track's cursor).
    /// Holds to record are kept for the recorder (`run`, `fire`).
    pub fn apply(&mut self, control: Control) -> Vec<ScheduleRecord> {
        let now = self.clock.now();
        let mut records = Vec::new();
        match control {
            Control::Arm { broadcast, spec } => match self.index.get(broadcast.as_str()).copied() {
                // The same schedule (the broadcast changed otherwise): nothing to do, and a step
                // due this instant and not yet taken still fires.
                Some(index) if !self.tracks[index].retired && *self.tracks[index].spec == *spec => {}
                Some(index) => {
                    self.unset_timer(index);
                    let track = &mut self.tracks[index];
                    // Armed again after it was disarmed, or changed: what has started keeps its
                    // times (held), the schedule applies from now on.
                    track.retired = false;
                    track.change(spec, now);
                    self.holding.push((self.tracks[index].hold_write(now, None), None));
                    self.set_timer(index);
                    tracing::info!(broadcast = %self.tracks[index].broadcast, next = ?self.tracks[index].armed.front().map(|armed| armed.key.at), "Schedule changed.");
                }
                None => {
                    let (track, armed) = Track::new(broadcast.clone(), spec, None, now, Held::default());
                    records.extend(armed);
                    let index = self.tracks.len();
                    self.tracks.push(track);
                    self.index.insert(Arc::clone(&self.tracks[index].broadcast), index);
                    self.set_timer(index);
                    tracing::info!(%broadcast, next = ?self.tracks[index].armed.front().map(|armed| armed.key.at), "Schedule armed.");
                }
            },
            Control::Disarm { broadcast } => {
                if let Some(index) = self.index.get(broadcast.as_str()).copied() {
                    self.unset_timer(index);
                    self.tracks[index].retire();
                    self.holding.push((self.tracks[index].hold_write(now, None), None));
                    self.set_timer(index);
                    tracing::info!(%broadcast, started = !self.tracks[index].armed.is_empty(), "Schedule disarmed; an occurrence already started ends as planned.");
                }
            }
            Control::Extend { broadcast, extension, who, note, reply } => {
                self.extend(broadcast, Request { extension, who, note }, reply, now)
            }
        }
        let live = self.tracks.iter().filter(|track| !track.retired).count();
        self.stats.0.tracks.store(live as u64, Ordering::Relaxed);
        records
    }

    /// `Control::Extend`: validated and applied at once; answered once recorded.
    fn extend(
        &mut self,
        broadcast: String,
        Request { extension, who, note }: Request,
        reply: oneshot::Sender<Result<Extended, ExtendError>>,
        now: DateTime<Utc>,
    ) {
        let Some(index) = self.index.get(broadcast.as_str()).copied() else {
            let _ = reply.send(Err(ExtendError::NotScheduled(broadcast)));
            return;
        };
        self.unset_timer(index);
        let extended = self.tracks[index].extend(extension, now);
        self.set_timer(index);
        match extended {
            Ok(extended) => {
                let reason = format!(
                    "extend: the end of {} moved from {} to {} (cooldown {}), by {who}",
                    extended.occurrence,
                    stamp(extended.end_was),
                    stamp(extended.end),
                    stamp(extended.cooldown)
                );
                let detail = json!({
                    "command": "extend",
                    "by": who,
                    "occurrence": extended.occurrence,
                    "end_was": stamp(extended.end_was),
                    "end": stamp(extended.end),
                    "cooldown_was": stamp(extended.cooldown_was),
                    "cooldown": stamp(extended.cooldown),
                    "note": note,
                });
                tracing::info!(%broadcast, occurrence = %extended.occurrence, end = %stamp(extended.end), %who, "Occurrence on air extended.");
                let write = self.tracks[index].hold_write(now, Some(CommandAudit { reason, detail }));
                self.holding.push((write, Some((extended, reply))));
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
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
        let (recorder, mut pending) = mpsc::unbounded_channel::<Record>();
        let store = Arc::clone(&self.store);
        let recording = async move {
            while let Some(next) = pending.recv().await {
                match next {
                    Record::Progress(records) => record(&store, records).await,
                    Record::Holds(write, waiting) => record_holds(&store, *write, waiting).await,
                }
            }
        };
        let writer = tokio::spawn(recording.instrument(tracing::info_span!("schedule_recorder")));
        self.tick_loop(&shutdown, &recorder).await;
        drop(recorder);
        let _ = writer.await;
    }

    async fn tick_loop(&mut self, shutdown: &CancellationToken, recorder: &mpsc::UnboundedSender<Record>) {
        loop {
            for (write, waiting) in self.holding.drain(..) {
                let _ = recorder.send(Record::Holds(Box::new(write), waiting));
            }
            if shutdown.is_cancelled() {
                return;
            }
            let now = self.clock.now();
            if self.next_due().is_some_and(|due| due <= now) {
                let Some((_, records)) = self.take(now, shutdown).await else { return };
                if !records.is_empty() {
                    let _ = recorder.send(Record::Progress(records));
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
                            let _ = recorder.send(Record::Progress(records));
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
        for (write, waiting) in std::mem::take(&mut self.holding) {
            record_holds(&self.store, write, waiting).await;
        }
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
        broadcast: track.broadcast.to_string(),
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

/// Records a broadcast's holds; answers the `extend` waiting for them, if any. A failure is
/// logged (and told to the `extend`): the holds are in force until the next restart.
async fn record_holds(store: &Arc<dyn Store>, write: HoldWrite, waiting: Option<Waiting>) {
    let store = Arc::clone(store);
    let span = tracing::info_span!("store.schedule_holds");
    let broadcast = write.broadcast.clone();
    let written = match tokio::task::spawn_blocking(move || span.in_scope(|| store.write_schedule_holds(write))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = &written {
        tracing::error!(%broadcast, %error, "Cannot record schedule holds; they hold until the next restart.");
    }
    if let Some((extended, reply)) = waiting {
        let _ = reply.send(written.map(|()| extended).map_err(ExtendError::Store));
    }
}

/// A retired track for the holds of a broadcast no longer scheduled (its schedule was removed
/// while an occurrence was on air); `None` when they are over.
fn held_only(broadcast: String, cursor: Option<Key>, now: DateTime<Utc>, held: Held) -> Option<Track> {
    let first = held.holds.first()?;
    let step = |rank: StepKind| first.step(rank.rank());
    let air = first.air;
    let end = step(StepKind::End).unwrap_or(air);
    // The schedule is gone: a stand-in with the held occurrence's shape, for the catch-up policy
    // and the audit's words.
    let mut spec = Spec::new(When::Instant(air), chrono_tz::UTC, (end - air).max(TimeDelta::zero()));
    spec.post_roll =
        step(StepKind::Cooldown).map_or(TimeDelta::zero(), |cooldown| (cooldown - end).max(TimeDelta::zero()));
    let cursor = cursor?;
    let mut track =
        Track::start(broadcast.clone(), Arc::new(spec), Some(cursor), now, Held { holds: held.holds, floor: None });
    track.retired = true;
    (!track.armed.is_empty()).then_some(track)
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
        // An occurrence is open (its cooldown not due yet) while a step of it is still armed:
        // `arm` arms every step of an occurrence, its cooldown last.
        let open = |air: DateTime<Utc>| track.armed.iter().any(|armed| armed.key.air == air);
        let decisions = decide(&track.spec, &taken, now, settings.misfire_grace, open);
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
fn decide(
    spec: &Spec,
    taken: &[Armed],
    now: DateTime<Utc>,
    grace: Duration,
    open: impl Fn(DateTime<Utc>) -> bool,
) -> Vec<bool> {
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
                    open(armed.key.air)
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

    // === Schedule changes, holds and extend on one track ===

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    /// A one-shot show at `air`: 30 min on air, warm-up 10 min before, scale-up 2 min before,
    /// cooldown 5 min after.
    fn show(air: &str) -> Arc<Spec> {
        let mut spec = Spec::new(When::Instant(at(air)), chrono_tz::UTC, TimeDelta::minutes(30));
        (spec.lead_channel, spec.lead_scale, spec.post_roll) =
            (TimeDelta::minutes(10), TimeDelta::minutes(2), TimeDelta::minutes(5));
        Arc::new(spec)
    }

    /// Every step at or before `now` taken, as a pass does (the cursor follows).
    fn fire(track: &mut Track, now: &str) -> Vec<String> {
        take_due(track, at(now))
            .into_iter()
            .map(|armed| {
                track.cursor = armed.key;
                step_name(&armed)
            })
            .collect()
    }

    fn step_name(armed: &Armed) -> String {
        let occurrence = occurrence_id(armed.key.air);
        match armed.step {
            Ok(step) => format!("{occurrence}/{} {}", step.name(), stamp(armed.key.at)),
            Err(skip) => format!("{occurrence} skipped ({skip:?})"),
        }
    }

    /// What is armed, in order (arming lazily first).
    fn armed(track: &mut Track) -> Vec<String> {
        let _ = track.front();
        track.armed.iter().map(step_name).collect()
    }

    fn track(air: &str, now: &str) -> Track {
        Track::new("news".into(), show(air), None, at(now), Held::default()).0
    }

    #[test]
    fn a_change_before_anything_fired_arms_the_new_schedule_from_now() {
        // A fresh cursor (air = MAX): nothing has started, nothing is held.
        let mut track = track("2026-11-24T18:00:00Z", "2026-11-24T17:00:00Z");
        assert_eq!(armed(&mut track).len(), 5);
        track.change(show("2026-11-24T17:05:00Z"), at("2026-11-24T17:00:00Z"));
        assert!(track.holds.is_empty());
        // The new air time is closer than its warm-up lead: the steps after the change are armed
        // (the machine converges from scale-up), not the whole occurrence dropped.
        assert_eq!(
            armed(&mut track),
            [
                "20261124t1705z/scale 2026-11-24T17:03:00.000Z",
                "20261124t1705z/air 2026-11-24T17:05:00.000Z",
                "20261124t1705z/end 2026-11-24T17:35:00.000Z",
                "20261124t1705z/cooldown 2026-11-24T17:40:00.000Z",
            ]
        );
        assert_eq!(track.floor, Some(at("2026-11-24T17:00:00Z")));
    }

    #[test]
    fn a_change_during_warm_up_keeps_the_started_occurrence_and_skips_what_would_overlap_it() {
        let warming = || {
            let mut track = track("2026-11-24T18:00:00Z", "2026-11-24T17:00:00Z");
            assert_eq!(fire(&mut track, "2026-11-24T17:50:00Z"), ["20261124t1800z/warmup 2026-11-24T17:50:00.000Z"]);
            track
        };
        // Moved ten minutes later while warming up: the started occurrence keeps its times; the
        // new one would be on air with it.
        let mut track = warming();
        track.change(show("2026-11-24T18:10:00Z"), at("2026-11-24T17:52:00Z"));
        let held = &track.holds[&at("2026-11-24T18:00:00Z")];
        assert_eq!(held.len(), 5, "every step of the held occurrence, the fired warm-up too: {held:?}");
        assert_eq!(
            fire(&mut track, "2026-11-25T00:00:00Z"),
            [
                "20261124t1800z/scale 2026-11-24T17:58:00.000Z",
                "20261124t1800z/air 2026-11-24T18:00:00.000Z",
                "20261124t1810z skipped (Overlap { previous: 2026-11-24T18:00:00Z })",
                "20261124t1800z/end 2026-11-24T18:30:00.000Z",
                "20261124t1800z/cooldown 2026-11-24T18:35:00.000Z",
            ]
        );
        // Moved to after it instead: both run, each on its own times.
        let mut track = warming();
        track.change(show("2026-11-24T19:00:00Z"), at("2026-11-24T17:53:00Z"));
        let steps = fire(&mut track, "2026-11-25T00:00:00Z");
        assert_eq!(steps.len(), 9, "{steps:?}");
        assert_eq!(steps[3], "20261124t1800z/cooldown 2026-11-24T18:35:00.000Z");
        assert_eq!(steps[4], "20261124t1900z/warmup 2026-11-24T18:50:00.000Z");
        assert_eq!(steps[8], "20261124t1900z/cooldown 2026-11-24T19:35:00.000Z");
    }

    #[test]
    fn a_change_twice_keeps_the_first_times_and_only_the_last_schedule() {
        let mut track = track("2026-11-24T18:00:00Z", "2026-11-24T17:00:00Z");
        fire(&mut track, "2026-11-24T18:01:00Z");
        track.change(show("2026-11-24T19:00:00Z"), at("2026-11-24T18:02:00Z"));
        track.change(show("2026-11-24T20:00:00Z"), at("2026-11-24T18:03:00Z"));
        // The hold kept the first schedule's instants through both changes.
        let held = &track.holds[&at("2026-11-24T18:00:00Z")];
        assert_eq!(held[0], (StepKind::Warmup, at("2026-11-24T17:50:00Z")));
        assert_eq!(held[4], (StepKind::Cooldown, at("2026-11-24T18:35:00Z")));
        assert_eq!(
            fire(&mut track, "2026-11-25T00:00:00Z"),
            [
                "20261124t1800z/end 2026-11-24T18:30:00.000Z",
                "20261124t1800z/cooldown 2026-11-24T18:35:00.000Z",
                "20261124t2000z/warmup 2026-11-24T19:50:00.000Z",
                "20261124t2000z/scale 2026-11-24T19:58:00.000Z",
                "20261124t2000z/air 2026-11-24T20:00:00.000Z",
                "20261124t2000z/end 2026-11-24T20:30:00.000Z",
                "20261124t2000z/cooldown 2026-11-24T20:35:00.000Z",
            ]
        );
    }

    #[test]
    fn a_change_to_no_schedule_lets_the_occurrence_on_air_end_and_holds_it() {
        let mut on_air = track("2026-11-24T18:00:00Z", "2026-11-24T17:00:00Z");
        fire(&mut on_air, "2026-11-24T18:00:00Z");
        on_air.retire();
        assert_eq!(
            armed(&mut on_air),
            ["20261124t1800z/end 2026-11-24T18:30:00.000Z", "20261124t1800z/cooldown 2026-11-24T18:35:00.000Z"]
        );
        assert_eq!(on_air.hold_write(at("2026-11-24T18:01:00Z"), None).holds.len(), 1);
        // Scheduled again (as `Scheduler::apply` does): the held occurrence still ends on its
        // times, the new schedule follows.
        on_air.retired = false;
        on_air.change(show("2026-11-24T19:00:00Z"), at("2026-11-24T18:02:00Z"));
        let steps = fire(&mut on_air, "2026-11-25T00:00:00Z");
        assert_eq!(steps.len(), 7, "{steps:?}");
        assert_eq!(steps[1], "20261124t1800z/cooldown 2026-11-24T18:35:00.000Z");
        assert_eq!(steps[2], "20261124t1900z/warmup 2026-11-24T18:50:00.000Z");
        // Not started: nothing is left, nothing held.
        let mut waiting = track("2026-11-24T18:00:00Z", "2026-11-24T17:00:00Z");
        waiting.retire();
        assert!(armed(&mut waiting).is_empty());
        assert!(waiting.holds.is_empty());
    }

    #[test]
    fn a_restart_arms_the_hold_in_place_of_what_the_new_schedule_generates() {
        let mut before = track("2026-11-24T18:00:00Z", "2026-11-24T17:00:00Z");
        fire(&mut before, "2026-11-24T18:00:00Z");
        before.change(show("2026-11-24T18:05:00Z"), at("2026-11-24T18:01:00Z"));
        before.extend(Extension::By(TimeDelta::minutes(2)), at("2026-11-24T18:02:00Z")).unwrap();
        let write = before.hold_write(at("2026-11-24T18:02:00Z"), None);
        // The restart: the same cursor, the new schedule, the stored holds.
        let held = Held { holds: write.holds, floor: write.floor };
        let (mut after, fresh) = Track::new(
            "news".into(),
            show("2026-11-24T18:05:00Z"),
            Some(before.cursor),
            at("2026-11-24T18:03:00Z"),
            held,
        );
        assert!(fresh.is_none());
        assert_eq!(armed(&mut after), armed(&mut before));
        assert_eq!(
            armed(&mut after)[..3],
            [
                "20261124t1805z skipped (Overlap { previous: 2026-11-24T18:00:00Z })",
                "20261124t1800z/end 2026-11-24T18:32:00.000Z",
                "20261124t1800z/cooldown 2026-11-24T18:37:00.000Z",
            ]
        );
        // Once over, a hold is dropped at the next start.
        let mut later = after;
        fire(&mut later, "2026-11-24T18:40:00Z");
        let write = later.hold_write(at("2026-11-24T18:40:00Z"), None);
        let (again, _) = Track::new(
            "news".into(),
            show("2026-11-24T18:05:00Z"),
            Some(later.cursor),
            at("2026-11-24T18:41:00Z"),
            Held { holds: write.holds, floor: write.floor },
        );
        assert!(again.holds.is_empty());
    }

    #[test]
    fn extend_moves_the_end_on_air_and_refuses_what_it_cannot() {
        let mut track = track("2026-11-24T18:00:00Z", "2026-11-24T17:00:00Z");
        let now = at("2026-11-24T17:40:00Z");
        assert_eq!(track.extend(Extension::By(TimeDelta::minutes(2)), now), Err(ExtendError::NotOnAir("news".into())));
        fire(&mut track, "2026-11-24T18:10:00Z");
        let extended = track.extend(Extension::By(TimeDelta::minutes(2)), at("2026-11-24T18:10:00Z")).unwrap();
        assert_eq!((extended.end_was, extended.end), (at("2026-11-24T18:30:00Z"), at("2026-11-24T18:32:00Z")));
        assert_eq!(extended.cooldown, at("2026-11-24T18:37:00Z"));
        assert_eq!(
            armed(&mut track),
            ["20261124t1800z/end 2026-11-24T18:32:00.000Z", "20261124t1800z/cooldown 2026-11-24T18:37:00.000Z"]
        );
        let early = track.extend(Extension::Until(at("2026-11-24T18:05:00Z")), at("2026-11-24T18:10:00Z"));
        assert!(matches!(early, Err(ExtendError::TooEarly { .. })), "{early:?}");
        // A next occurrence at 19:00 warms up at 18:50: the cooldown (end + 5 min) cannot pass it.
        track.change(show("2026-11-24T19:00:00Z"), at("2026-11-24T18:11:00Z"));
        let overlap = track.extend(Extension::Until(at("2026-11-24T18:50:00Z")), at("2026-11-24T18:11:00Z"));
        let Err(ExtendError::Overlap { warmup, latest, next, .. }) = overlap else { panic!("{overlap:?}") };
        assert_eq!(
            (warmup, latest, next.as_str()),
            (at("2026-11-24T18:50:00Z"), at("2026-11-24T18:45:00Z"), "20261124t1900z")
        );
        track.extend(Extension::Until(latest), at("2026-11-24T18:11:00Z")).unwrap();
        assert_eq!(track.holds[&at("2026-11-24T18:00:00Z")][4], (StepKind::Cooldown, at("2026-11-24T18:50:00Z")));
    }

    #[tokio::test]
    async fn the_same_schedule_again_changes_nothing_and_a_change_survives_a_restart() {
        let directory = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::SqliteStore::open(&directory.path().join("onair.db")).unwrap());
        let settings = crate::daemon::load(&crate::config::Source::default()).unwrap().scheduler;
        let clock = Arc::new(crate::clock::ManualClock::new(at("2026-11-24T17:00:00Z")));
        let start = |spec: Arc<Spec>| {
            let (sink, published) = mpsc::unbounded_channel::<Event>();
            let clock = Arc::clone(&clock) as SharedClock;
            let new = Scheduler::new(
                settings.clone(),
                vec![("news".to_string(), spec)],
                Arc::clone(&store),
                Arc::new(sink),
                clock,
                Stats::default(),
            );
            async move { (new.await.unwrap(), published) }
        };
        let (mut scheduler, mut published) = start(show("2026-11-24T18:00:00Z")).await;
        let shutdown = CancellationToken::new();
        clock.set(at("2026-11-24T17:50:00Z"));
        scheduler.fire(at("2026-11-24T17:50:00Z"), &shutdown).await.unwrap();
        assert_eq!(published.try_recv().unwrap().id, "news/20261124t1800z/warmup");
        // The same schedule (another copy of it): nothing changes, nothing is held.
        scheduler.apply(Control::Arm { broadcast: "news".into(), spec: show("2026-11-24T18:00:00Z") });
        assert!(scheduler.tracks[0].floor.is_none() && scheduler.holding.is_empty());
        // Another: the occurrence warming up is held, durably (written at the next pass).
        scheduler.apply(Control::Arm { broadcast: "news".into(), spec: show("2026-11-24T19:00:00Z") });
        clock.set(at("2026-11-24T17:51:00Z"));
        scheduler.fire(at("2026-11-24T17:51:00Z"), &shutdown).await.unwrap();
        let stored = store.schedule_holds().unwrap();
        assert_eq!(stored.holds.len(), 1, "{stored:?}");
        assert_eq!(stored.holds[0].step(StepKind::End.rank()), Some(at("2026-11-24T18:30:00Z")));
        assert_eq!(stored.floors.get("news"), Some(&at("2026-11-24T17:50:00Z")));
        // A restart with the new schedule: the held occurrence goes on, then the new one.
        drop(scheduler);
        let (mut scheduler, mut published) = start(show("2026-11-24T19:00:00Z")).await;
        assert_eq!(scheduler.next_due(), Some(at("2026-11-24T17:58:00Z")));
        let mut fired = Vec::new();
        while let Some(due) = scheduler.next_due() {
            clock.set(due);
            scheduler.fire(due, &shutdown).await.unwrap();
            while let Ok(event) = published.try_recv() {
                fired.push(event.id);
            }
        }
        assert_eq!(fired.len(), 9, "{fired:?}");
        assert_eq!(fired[3], "news/20261124t1800z/cooldown");
        assert_eq!(fired[8], "news/20261124t1900z/cooldown");
    }
}
