//! The engine: events in, decisions committed, actions out.
//!
//! ```text
//!   sources (inbox, broker, webhooks) ─┐
//!   executor results, durable timers ──┴─> input ─> router ─> lane (one per partition of broadcasts)
//!        lane: step (pure) ─> store.commit (one transaction) ─> reply to the source (ack)
//!                          └─> executor (outbox rows)   └─> timers (set, cancel)
//! ```
//!
//! - `executor`: runs outbox actions through the media client, one at a time per broadcast,
//!   and turns each result into an `onair.action.succeeded|failed` event.
//! - `timers`: durable timers, one ordered map for all broadcasts.
//! - `inbox`: a directory of event files, the local input.
//!
//! Ordering: a broadcast always maps to the same lane, and a lane handles one event at a time, so
//! each broadcast's events are decided in the order they arrive; lanes run concurrently.
//! Durability: nothing is acknowledged before the store's commit returns; actions are queued to the
//! executor only after the commit that decided them; on start, pending actions and armed timers
//! are resumed from the store before any event is taken.

mod executor;
pub mod inbox;
mod settings;
mod timers;

use std::collections::{HashMap, hash_map::DefaultHasher};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use executor::{ActionError, Runner};
pub use settings::Settings;

use crate::broadcast::Broadcast;
use crate::clock::SharedClock;
use crate::event::{self, Event};
use crate::machine::{self, Definition, Instance, Outcome as StepOutcome, TimerChange};
use crate::store::{self, Commit, Committed, Completion, DecisionRecord, InstanceRecord, NewAction, Store};

/// One event handed to the engine, with where to report its outcome.
#[derive(Debug)]
pub struct Delivery {
    pub event: Event,
    /// Told once the event's consequences are committed (or why not); `None` for internal events.
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Decided and committed (including "ignored, because …").
    Committed,
    /// Already processed; nothing changed.
    Duplicate,
    /// No broadcast matches the subject.
    Unroutable(String),
    /// Not committed; the source should deliver it again later.
    Failed(String),
}

impl Outcome {
    /// Whether the source may forget the event (acknowledge it).
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Failed(_))
    }
}

/// Why the engine cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A broadcast names a machine that is not loaded.
    #[error("broadcast {broadcast}: machine {machine:?} is not loaded")]
    MissingMachine { broadcast: String, machine: String },
}

/// What the engine needs from the rest of onair.
pub struct Parts {
    pub settings: Arc<Settings>,
    /// The running set of broadcasts (each with its machine), read per event.
    pub registry: crate::catalog::Registry,
    pub store: Arc<dyn Store>,
    pub runner: Arc<Runner>,
    pub clock: SharedClock,
    /// Where decision latencies, action attempts and heartbeats are recorded.
    pub metrics: crate::metrics::Metrics,
}

/// A running engine.
pub struct Engine {
    input: mpsc::Sender<Delivery>,
    /// The executor's workers, which come and go.
    tracker: TaskTracker,
    /// The long-lived tasks (timers, lanes, router, purge), by name, so that `join` reports one
    /// that panicked.
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl Engine {
    /// Loads the durable state, resumes timers and pending actions, then starts taking events.
    pub async fn start(parts: Parts, shutdown: CancellationToken) -> Result<Self, Error> {
        let executor_parts = &parts;
        let Parts { settings, registry, store, clock, metrics, .. } = &parts;
        let catalog = registry.current();
        let (loaded, pending) = load_state(store).await?;

        let tracker = TaskTracker::new();
        let (input, inbox) = mpsc::channel::<Delivery>(settings.input_queue);
        let mut tasks = Vec::new();
        let (timers, timer_task) = timers::Timers::start(input.clone(), Arc::clone(clock), shutdown.child_token());
        tasks.push(("timers", timer_task));
        let executor = executor::Executor::start(&tracker, executor_parts, input.clone(), shutdown.child_token());

        let lane_count = settings.lanes.max(1);
        let mut lanes = Vec::with_capacity(lane_count);
        let (caches, resumed_timers) = resume_instances(loaded, &catalog, &timers, lane_count);
        let resumed_actions = pending.iter().filter(|row| catalog.contains(&row.broadcast)).count();
        for row in pending.into_iter().filter(|row| catalog.contains(&row.broadcast)) {
            // The event that queued a resumed row is not known any more.
            executor.run(row, None);
        }
        tracing::info!(
            broadcasts = catalog.len(),
            timers = resumed_timers,
            actions = resumed_actions,
            "Engine state loaded; resuming timers and pending actions."
        );

        for (index, cache) in caches.into_iter().enumerate() {
            let (sender, receiver) = mpsc::channel::<Routed>(settings.lane_queue);
            let lane = Lane {
                settings: Arc::clone(settings),
                registry: registry.clone(),
                store: Arc::clone(store),
                executor: executor.clone(),
                timers: timers.clone(),
                clock: Arc::clone(clock),
                metrics: metrics.clone(),
                cache,
            };
            let lane = lane.run(receiver, shutdown.child_token()).instrument(tracing::info_span!("lane", lane = index));
            tasks.push(("lane", tokio::spawn(lane)));
            lanes.push(sender);
        }
        let router = route(inbox, lanes, registry.clone(), metrics.clone(), Arc::clone(clock), shutdown.child_token());
        tasks.push(("router", tokio::spawn(router.instrument(tracing::info_span!("router")))));
        let purge = purge_processed(Arc::clone(store), Arc::clone(settings), Arc::clone(clock), shutdown.child_token());
        tasks.push(("purge", tokio::spawn(purge.instrument(tracing::info_span!("purge_processed")))));
        tracker.close();
        Ok(Self { input, tracker, tasks })
    }

    /// Where sources send events.
    pub fn input(&self) -> mpsc::Sender<Delivery> {
        self.input.clone()
    }

    /// Waits until every task has stopped (after the shutdown token is cancelled); the
    /// long-lived tasks that panicked instead, by name.
    pub async fn join(self) -> Vec<(&'static str, tokio::task::JoinError)> {
        drop(self.input);
        let mut failed = Vec::new();
        for (name, task) in self.tasks {
            if let Err(error) = task.await {
                failed.push((name, error));
            }
        }
        self.tracker.wait().await;
        failed
    }
}

/// Sends `event` and waits for its outcome.
pub async fn deliver(input: &mpsc::Sender<Delivery>, event: Event) -> Outcome {
    let (reply, outcome) = oneshot::channel();
    if input.send(Delivery { event, reply: Some(reply) }).await.is_err() {
        return Outcome::Failed("the engine is stopping".into());
    }
    outcome.await.unwrap_or_else(|_| Outcome::Failed("the engine stopped before deciding".into()))
}

// === Routing ===

/// An event on its way to one broadcast's lane.
struct Routed {
    broadcast: String,
    event: Arc<Event>,
    reply: Option<oneshot::Sender<Outcome>>,
    /// When the engine took it (for the decision latency).
    arrived: std::time::Instant,
}

fn lane_of(broadcast: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    broadcast.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

async fn route(
    mut input: mpsc::Receiver<Delivery>,
    lanes: Vec<mpsc::Sender<Routed>>,
    registry: crate::catalog::Registry,
    metrics: crate::metrics::Metrics,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            delivery = input.recv() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        let Delivery { event, reply } = delivery;
        let arrived = std::time::Instant::now();
        if event.kind == crate::event::ENCODER_HEARTBEAT
            && let Some((_, channel)) = event.subject.split_once('/')
        {
            // Never later than now: a heartbeat dated in the future (a wrong clock, or a forged
            // delivery) would otherwise hide the encoder's silence from the age gauge for good.
            let now = clock.now();
            metrics.heartbeat(channel, event.time.map_or(now, |time| time.min(now)));
        }
        let broadcasts = registry.current().targets(&event.subject);
        let event = Arc::new(event);
        match broadcasts.len() {
            0 => {
                tracing::warn!(event_id = %event.id, subject = %event.subject, kind = %event.kind, "No broadcast for this subject; event not routed.");
                if let Some(reply) = reply {
                    let _ = reply.send(Outcome::Unroutable(format!("no broadcast for subject {:?}", event.subject)));
                }
            }
            1 => {
                let broadcast = broadcasts.into_iter().next().unwrap_or_default();
                let lane = &lanes[lane_of(&broadcast, lanes.len())];
                if lane.send(Routed { broadcast, event, reply, arrived }).await.is_err() {
                    break;
                }
            }
            _ => {
                // Several broadcasts share the channel: each decides; the source hears once all have.
                let mut outcomes = Vec::new();
                for broadcast in broadcasts {
                    let (sub_reply, outcome) = oneshot::channel();
                    let lane = &lanes[lane_of(&broadcast, lanes.len())];
                    if lane
                        .send(Routed { broadcast, event: Arc::clone(&event), reply: Some(sub_reply), arrived })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    outcomes.push(outcome);
                }
                if let Some(reply) = reply {
                    let span = tracing::info_span!("combine_outcomes", event_id = %event.id);
                    let combine = async move {
                        let mut combined = Outcome::Duplicate;
                        for outcome in outcomes {
                            match outcome.await.unwrap_or_else(|_| Outcome::Failed("engine stopped".into())) {
                                failed @ Outcome::Failed(_) => combined = failed,
                                Outcome::Committed if !matches!(combined, Outcome::Failed(_)) => {
                                    combined = Outcome::Committed
                                }
                                _ => {}
                            }
                        }
                        let _ = reply.send(combined);
                    };
                    tokio::spawn(combine.instrument(span));
                }
            }
        }
    }
}

// === Lanes ===

/// Why a batch's commit was refused, if it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    No,
    /// An event of the batch was processed already (`Store::commit`'s own check).
    Duplicate,
    /// The store failed (disk full, I/O error, locked): retried after a backoff.
    Failed,
}

/// A broadcast's instance as its lane keeps it.
#[derive(Debug, Clone)]
struct Cached {
    instance: Instance,
    since: DateTime<Utc>,
    seq: i64,
    /// The life of the broadcast's id it belongs to: an instance of a removed broadcast is never
    /// taken for a new one of the same id.
    incarnation: i64,
}

impl Cached {
    fn from_record(record: InstanceRecord, incarnation: i64) -> Self {
        Self {
            instance: Instance { state: record.state, vars: record.vars, timers: record.timers },
            since: record.since,
            seq: record.seq,
            incarnation,
        }
    }

    fn new(definition: &Definition, now: DateTime<Utc>, incarnation: i64) -> Self {
        Self { instance: Instance::new(definition), since: now, seq: 0, incarnation }
    }
}

struct Lane {
    settings: Arc<Settings>,
    registry: crate::catalog::Registry,
    store: Arc<dyn Store>,
    executor: executor::Executor,
    timers: timers::Timers,
    clock: SharedClock,
    metrics: crate::metrics::Metrics,
    /// The instances of this lane's broadcasts, each read from the store on its first event. Only
    /// this task touches them. A batch takes out those it decides on and its commit puts their
    /// successors back; after a failed commit they are read from the store again.
    cache: HashMap<String, Cached>,
}

/// The stored timers and the pending outbox rows, read before anything starts. Instances are
/// not: each is read on its broadcast's first event (`Lane::current`).
async fn load_state(store: &Arc<dyn Store>) -> Result<(Vec<store::TimerRecord>, Vec<store::OutboxRow>), Error> {
    let timers = {
        let store = Arc::clone(store);
        let span = tracing::info_span!("store.load_timers");
        tokio::task::spawn_blocking(move || span.in_scope(|| store.load_timers()))
            .await
            .unwrap_or(Err(store::Error::Stopped))?
    };
    let pending = {
        let store = Arc::clone(store);
        let span = tracing::info_span!("store.pending_actions");
        tokio::task::spawn_blocking(move || span.in_scope(|| store.pending_actions()))
            .await
            .unwrap_or(Err(store::Error::Stopped))?
    };
    Ok((timers, pending))
}

/// The stored timers of the running broadcasts re-armed, and how many that was; the lanes'
/// caches start empty.
fn resume_instances(
    loaded: Vec<store::TimerRecord>,
    catalog: &crate::catalog::Catalog,
    timers: &timers::Timers,
    lane_count: usize,
) -> (Vec<HashMap<String, Cached>>, usize) {
    let caches: Vec<HashMap<String, Cached>> = (0..lane_count).map(|_| HashMap::new()).collect();
    let mut resumed_timers = 0;
    let mut left_alone = None;
    for timer in loaded {
        if !catalog.contains(&timer.broadcast) {
            if left_alone.as_ref() != Some(&timer.broadcast) {
                tracing::warn!(broadcast = %timer.broadcast, "The store has a broadcast the settings no longer have; it is left alone.");
                left_alone = Some(timer.broadcast);
            }
            continue;
        }
        timers.set(&timer.broadcast, &timer.name, timer.due);
        resumed_timers += 1;
    }
    (caches, resumed_timers)
}

/// Instances `Lane::prepare` read for a batch, by broadcast, each with its own result.
type Read = HashMap<String, Result<Option<InstanceRecord>, store::Error>>;

/// What a lane decided for a batch, before the commit.
struct Decided {
    /// The broadcasts' instances after the batch's decisions.
    working: HashMap<String, Cached>,
    /// One per decided or duplicate event, in order.
    commits: Vec<Commit>,
    /// Per event: `None` when it waits for the commit, else its outcome already.
    outcomes: Vec<Option<Outcome>>,
    /// Per commit: its broadcast and the timer changes it makes.
    timer_changes: Vec<(String, Vec<TimerChange>)>,
}

impl Decided {
    fn with_capacity(events: usize) -> Self {
        Self {
            working: HashMap::new(),
            commits: Vec::with_capacity(events),
            outcomes: Vec::with_capacity(events),
            timer_changes: Vec::new(),
        }
    }

    /// Gives each broadcast's last instance of the batch its variables and timers, from the
    /// working copy. The store writes a broadcast's instance once per batch, by its last decision
    /// (the earlier rows would be replaced in the same transaction), so the earlier records carry
    /// only their state and sequence number: the variables are copied once per broadcast and
    /// batch rather than once per event.
    fn complete(&mut self) {
        let mut filled = std::collections::HashSet::new();
        for commit in self.commits.iter_mut().rev() {
            let Some(record) = commit.instance.as_mut() else { continue };
            if !filled.insert(record.broadcast.clone()) {
                continue;
            }
            if let Some(current) = self.working.get(&record.broadcast) {
                record.vars = current.instance.vars.clone();
                record.timers = current.instance.timers.clone();
            }
        }
    }

    /// One event's commit, waiting for its outcome.
    fn push(&mut self, broadcast: &str, commit: Commit, timers: Vec<TimerChange>) {
        self.commits.push(commit);
        self.timer_changes.push((broadcast.to_string(), timers));
        self.outcomes.push(None);
    }
}

impl Lane {
    /// Takes the events waiting for this lane, up to `lane_batch` at a time, decides them in order
    /// (each on the state the previous one left) and commits them together; the safe point is
    /// between batches.
    ///
    /// A batch whose commit fails (disk full, I/O error, store locked) is kept and decided and
    /// committed again after a capped backoff, until it commits: its sources are not answered
    /// meanwhile (deliveries stay unacknowledged, internal events are not lost), and the lane
    /// takes nothing new, so its queue fills and the inputs stop taking events. Only `shutdown`
    /// ends the retries; the events not committed are then answered `Failed`.
    async fn run(mut self, mut input: mpsc::Receiver<Routed>, shutdown: CancellationToken) {
        while let Some(first) = input.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.settings.lane_batch {
                match input.try_recv() {
                    Ok(routed) => batch.push(routed),
                    Err(_) => break,
                }
            }
            let mut delay = self.settings.commit_backoff_initial;
            let mut rechecked = false;
            loop {
                let (outcomes, refused) = self.handle(&batch).await;
                let mut retry = Vec::new();
                for (routed, outcome) in batch.into_iter().zip(outcomes) {
                    match outcome {
                        Outcome::Failed(_) if !shutdown.is_cancelled() => retry.push(routed),
                        outcome => self.answer(routed, outcome),
                    }
                }
                if retry.is_empty() {
                    break;
                }
                batch = retry;
                if refused == Refused::Duplicate {
                    if !rechecked {
                        // An event of the batch was processed already, which only the commit saw
                        // (its broadcasts were all cached, so nothing was read first): decided
                        // again at once, this time after a read of what is processed.
                        rechecked = true;
                        continue;
                    }
                    // The read did not show it either (it failed, or the store contradicts
                    // itself): no hot loop; the operator hears of it.
                    tracing::warn!(
                        events = batch.len(),
                        retry_in = ?delay,
                        "The store refused a duplicate that its read did not show; deciding the batch again after a pause."
                    );
                }
                // While commits fail, another lane's successful commit ends the wait: the store
                // takes writes again.
                let commits_failing = self.metrics.commits().failing().is_some();
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.metrics.commits().until_ok(), if commits_failing => {}
                }
                if shutdown.is_cancelled() {
                    tracing::warn!(
                        events = batch.len(),
                        "Stopping with events not committed; their sources deliver them again."
                    );
                    for routed in batch {
                        self.answer(
                            routed,
                            Outcome::Failed("the engine stopped before the store took the commit".into()),
                        );
                    }
                    return;
                }
                delay = (delay * 2).min(self.settings.commit_backoff_max);
            }
        }
    }

    fn answer(&self, routed: Routed, outcome: Outcome) {
        if outcome == Outcome::Committed {
            self.metrics.decided(routed.arrived.elapsed());
        }
        if let Some(reply) = routed.reply {
            let _ = reply.send(outcome);
        }
    }

    async fn handle(&mut self, batch: &[Routed]) -> (Vec<Outcome>, Refused) {
        let keys: Vec<(String, String)> =
            batch.iter().map(|routed| (routed.event.id.clone(), routed.broadcast.clone())).collect();
        let (processed, mut read) = self.prepare(batch, &keys).await;
        // One span per event: what is decided for it, and the actions it queues, are logged in it.
        let spans: Vec<tracing::Span> = batch
            .iter()
            .map(|routed| {
                tracing::info_span!(
                    "event",
                    event_id = %routed.event.id,
                    broadcast = %routed.broadcast,
                    transition = tracing::field::Empty
                )
            })
            .collect();
        let decided = self.decide_batch(batch, &keys, processed, &mut read, &spans).await;
        if decided.commits.is_empty() {
            let outcomes = decided.outcomes.into_iter().map(|outcome| outcome.unwrap_or(Outcome::Committed)).collect();
            return (outcomes, Refused::No);
        }
        let Decided { working, commits, outcomes, timer_changes } = decided;
        match self.commit(commits).await {
            Ok(results) => {
                self.cache.extend(working);
                let mut results = results.into_iter().zip(timer_changes);
                let outcomes = outcomes
                    .into_iter()
                    .zip(batch.iter().zip(&spans))
                    .map(|(outcome, (routed, span))| {
                        outcome.unwrap_or_else(|| {
                            let _entered = span.enter();
                            self.apply(results.next(), &routed.event.id)
                        })
                    })
                    .collect();
                (outcomes, Refused::No)
            }
            Err(error) => {
                // Nothing of the batch was recorded, and its broadcasts were taken out of the
                // cache (`current`): the retry starts again from what the store holds for them.
                drop(working);
                let refused = match error {
                    store::Error::UnexpectedDuplicate { .. } => Refused::Duplicate,
                    _ => Refused::Failed,
                };
                let reason = error.to_string();
                let outcomes = outcomes
                    .into_iter()
                    .map(|outcome| outcome.unwrap_or_else(|| Outcome::Failed(reason.clone())))
                    .collect();
                (outcomes, refused)
            }
        }
    }

    /// What the batch needs from the store, in one blocking call: which of its (event, broadcast)
    /// keys the store has already processed, and the stored instances of its broadcasts this
    /// lane has not read yet (`Read`). If the check fails, none is taken as processed: the
    /// commit's own check still catches a duplicate.
    ///
    /// When the lane holds every broadcast of the batch, nothing is read: the commit's check is
    /// the one that counts (a duplicate there refuses the whole batch, whose broadcasts leave the
    /// cache, and the batch is decided again at once after this read; `run`). A duplicate is
    /// rare (a redelivery after a lost ack, a publisher's retry), and the read it would save
    /// costs each batch a blocking call and a read transaction, which keeps the WAL from being
    /// checkpointed back to its beginning.
    async fn prepare(&self, batch: &[Routed], keys: &[(String, String)]) -> (Vec<bool>, Read) {
        let catalog = self.registry.current();
        let mut missing: Vec<String> = Vec::new();
        for routed in batch {
            let Some(entry) = catalog.get(&routed.broadcast) else { continue };
            let cached =
                self.cache.get(&routed.broadcast).is_some_and(|cached| cached.incarnation == entry.incarnation);
            if !cached && !missing.contains(&routed.broadcast) {
                missing.push(routed.broadcast.clone());
            }
        }
        if missing.is_empty() {
            return (vec![false; keys.len()], Read::new());
        }
        let store = Arc::clone(&self.store);
        let owned = keys.to_vec();
        let span = tracing::info_span!("store.prepare", missing = missing.len());
        let prepared = tokio::task::spawn_blocking(move || span.in_scope(|| store.prepare(&owned, &missing))).await;
        match prepared {
            Ok(store::Prepared { processed, instances }) => {
                (processed.unwrap_or_else(|_| vec![false; keys.len()]), instances.into_iter().collect())
            }
            Err(_) => (vec![false; keys.len()], Read::new()),
        }
    }

    /// Decides each event of the batch against the working copy of its broadcast's instance:
    /// a commit per decided (or duplicate) event, an outcome at once for the others.
    async fn decide_batch(
        &mut self,
        batch: &[Routed],
        keys: &[(String, String)],
        processed: Vec<bool>,
        read: &mut Read,
        spans: &[tracing::Span],
    ) -> Decided {
        let now = self.clock.now();
        let catalog = self.registry.current();
        let mut decided = Decided::with_capacity(batch.len());
        let mut seen = std::collections::HashSet::new();
        let mut undecided = std::collections::HashSet::new();
        for (((routed, key), known), span) in batch.iter().zip(keys).zip(processed).zip(spans) {
            let Some(entry) = catalog.get(&routed.broadcast) else {
                decided
                    .outcomes
                    .push(Some(Outcome::Unroutable(format!("broadcast {:?} is not configured", routed.broadcast))));
                continue;
            };
            // A broadcast whose earlier event of this batch could not be decided takes none of
            // its later ones: they wait with it, so its events are still decided in order.
            if undecided.contains(&routed.broadcast) {
                decided.outcomes.push(Some(Outcome::Failed(format!(
                    "an earlier event of broadcast {:?} is not decided yet",
                    routed.broadcast
                ))));
                continue;
            }
            let (broadcast, definition) = (&entry.broadcast, &entry.machine);
            let event = &routed.event;
            if known || !seen.insert(key.clone()) {
                span.record("transition", "duplicate");
                decided.push(
                    &routed.broadcast,
                    duplicate_commit(&routed.broadcast, &definition.name, event, now),
                    Vec::new(),
                );
                continue;
            }
            // The working copy is taken out and its successor put back: no copy per event.
            let current = match decided.working.remove(&routed.broadcast) {
                Some(current) => current,
                None => match self.current(&routed.broadcast, entry, now, read).await {
                    Ok(current) => current,
                    Err(error) => {
                        undecided.insert(routed.broadcast.clone());
                        decided.outcomes.push(Some(Outcome::Failed(error.to_string())));
                        continue;
                    }
                },
            };
            let (commit, next, timers) =
                span.in_scope(|| decide(&routed.broadcast, broadcast, definition, &current, event, now));
            decided.working.insert(routed.broadcast.clone(), next);
            decided.push(&routed.broadcast, commit, timers);
        }
        decided.complete();
        decided
    }

    /// After a successful commit: hands the decision's actions to the executor and its timer
    /// changes to the timer task; the outcome its source hears.
    fn apply(&self, result: Option<(Committed, (String, Vec<TimerChange>))>, event_id: &str) -> Outcome {
        match result {
            Some((Committed::Applied { outbox, skipped }, (broadcast, timers))) => {
                self.executor.skip(skipped);
                outbox.into_iter().for_each(|row| self.executor.run(row, Some(event_id)));
                for change in timers {
                    match change {
                        TimerChange::Set { name, due } => self.timers.set(&broadcast, &name, due),
                        TimerChange::Cancel { name } => self.timers.cancel(&broadcast, &name),
                    }
                }
                Outcome::Committed
            }
            Some((Committed::Duplicate, _)) => Outcome::Duplicate,
            None => Outcome::Failed("the store answered fewer decisions than it was given".into()),
        }
    }

    /// The broadcast's instance: cached; or read from the store on the broadcast's first event
    /// (instances are not loaded at start) and after a failed commit, usually already by
    /// `prepare` (`read`); new when the store has none. A failed read leaves it uncached, so it
    /// is read again rather than started afresh.
    async fn current(
        &mut self,
        broadcast: &str,
        entry: &crate::catalog::Entry,
        now: DateTime<Utc>,
        read: &mut Read,
    ) -> Result<Cached, store::Error> {
        let (definition, incarnation) = (&*entry.machine, entry.incarnation);
        // Taken out, not copied: the batch's commit puts its successor back (`handle`). An
        // instance of an earlier life of the id (removed and created again) is dropped.
        if let Some(cached) = self.cache.remove(broadcast)
            && cached.incarnation == incarnation
        {
            return Ok(cached);
        }
        let loaded = match read.remove(broadcast) {
            Some(loaded) => loaded?,
            None => {
                let store = Arc::clone(&self.store);
                let id = broadcast.to_string();
                let span = tracing::info_span!("store.load_instance");
                tokio::task::spawn_blocking(move || span.in_scope(|| store.load_instance(&id)))
                    .await
                    .unwrap_or(Err(store::Error::Stopped))?
            }
        };
        let cached = loaded
            .map(|record| Cached::from_record(record, incarnation))
            .unwrap_or_else(|| Cached::new(definition, now, incarnation));
        Ok(cached)
    }

    /// Commits a batch, once; reports the result to `metrics.commits()` and logs the start and
    /// the end of an episode of failures (not every retry). The caller retries.
    async fn commit(&self, batch: Vec<Commit>) -> Result<Vec<Committed>, store::Error> {
        let store = Arc::clone(&self.store);
        let span = tracing::info_span!("store.commit");
        let result = tokio::task::spawn_blocking(move || span.in_scope(|| store.commit(batch)))
            .await
            .unwrap_or(Err(store::Error::Stopped));
        let commits = self.metrics.commits();
        match &result {
            // Not a fault of the store: the batch is decided again with what it has processed.
            Err(error @ store::Error::UnexpectedDuplicate { .. }) => {
                tracing::debug!(%error, "Commit refused a duplicate; deciding the batch again.");
            }
            Ok(_) => {
                if let Some(episode) = commits.succeeded() {
                    tracing::info!(
                        fault = %episode.label(),
                        failed_commits = episode.failures,
                        after = ?episode.since.elapsed(),
                        "Store commits succeed again; events held meanwhile are committed and consumption resumes."
                    );
                }
            }
            Err(error) => {
                if commits.failed(error) {
                    tracing::error!(
                        fault = %crate::store::fault_label(error.fault()),
                        %error,
                        retry_max = ?self.settings.commit_backoff_max,
                        "Store commits fail; events are held (not acknowledged, not requeued) and retried, and no new deliveries are taken until a commit succeeds."
                    );
                } else {
                    tracing::debug!(%error, "Commit failed again; retrying.");
                }
            }
        }
        result
    }
}

/// Decides one event on `current`: the commit to record, the instance after it, its timer changes.
fn decide(
    broadcast_id: &str,
    broadcast: &Broadcast,
    definition: &Definition,
    current: &Cached,
    event: &Event,
    now: DateTime<Utc>,
) -> (Commit, Cached, Vec<TimerChange>) {
    let mut decision = match stale_timer(&current.instance, event) {
        Some(reason) => machine::Decision {
            outcome: StepOutcome::Ignored,
            reason,
            state: current.instance.state.clone(),
            vars: current.instance.vars.clone(),
            actions: Vec::new(),
            timers: Vec::new(),
        },
        None => machine::step(definition, &current.instance, event, &broadcast.expression_view(), now),
    };
    let instance = decision.take_instance(&current.instance);
    let changed_state = instance.state != current.instance.state;
    let next = Cached {
        since: if changed_state || current.seq == 0 { now } else { current.since },
        seq: current.seq + 1,
        instance,
        incarnation: current.incarnation,
    };
    let record = InstanceRecord {
        broadcast: broadcast_id.to_string(),
        machine: definition.name.clone(),
        state: next.instance.state.clone(),
        // Filled by `Decided::complete` for the batch's last decision of the broadcast only.
        vars: serde_json::Map::new(),
        timers: std::collections::BTreeMap::new(),
        since: next.since,
        seq: next.seq,
    };
    let (outcome, from, to, transition) = match &decision.outcome {
        StepOutcome::Transitioned { transition, from, to } => ("transition", from.clone(), to.clone(), *transition),
        StepOutcome::Ignored => ("ignored", current.instance.state.clone(), current.instance.state.clone(), None),
    };
    let transition_name = match (outcome, transition) {
        ("ignored", _) => "ignored".to_string(),
        (_, Some(index)) => format!("#{index} {from} -> {to}"),
        (_, None) => format!("forced {from} -> {to}"),
    };
    // The caller runs this in the event's span.
    tracing::Span::current().record("transition", transition_name.as_str());
    tracing::debug!(broadcast = %broadcast_id, event_id = %event.id, reason = %decision.reason, "Decided.");
    let commit = Commit {
        duplicate: false,
        broadcast: broadcast_id.to_string(),
        machine: definition.name.clone(),
        at: now,
        event_id: event.id.clone(),
        event_type: event.kind.clone(),
        event: json!({"id": event.id, "type": event.kind, "subject": event.subject, "source": event.source, "data": event.data}),
        decision: DecisionRecord {
            outcome: outcome.into(),
            from,
            to,
            transition,
            reason: std::mem::take(&mut decision.reason),
            detail: json!({
                "actions": decision.actions.iter().map(|action| json!({"action": action.kind, "params": action.params})).collect::<Vec<_>>(),
                "timers": decision.timers.iter().map(|change| match change {
                    TimerChange::Set { name, due } => json!({"set": name, "due": due.to_rfc3339()}),
                    TimerChange::Cancel { name } => json!({"cancel": name}),
                }).collect::<Vec<_>>(),
            }),
        },
        instance: Some(record),
        actions: std::mem::take(&mut decision.actions)
            .into_iter()
            .map(|action| NewAction { kind: action.kind, params: action.params })
            .collect(),
        completes: completion(event),
    };
    (commit, next, decision.timers)
}

/// The audit-only commit of an event already processed.
fn duplicate_commit(broadcast: &str, machine: &str, event: &Event, now: DateTime<Utc>) -> Commit {
    Commit {
        duplicate: true,
        broadcast: broadcast.to_string(),
        machine: machine.to_string(),
        at: now,
        event_id: event.id.clone(),
        event_type: event.kind.clone(),
        event: Value::Null,
        decision: DecisionRecord {
            outcome: "duplicate".into(),
            from: String::new(),
            to: String::new(),
            transition: None,
            reason: String::new(),
            detail: Value::Null,
        },
        instance: None,
        actions: Vec::new(),
        completes: None,
    }
}

/// A timer event for a timer that is no longer armed (cancelled, or re-armed for another time).
fn stale_timer(instance: &Instance, event: &Event) -> Option<String> {
    if event.kind != event::TIMER_FIRED {
        return None;
    }
    let name = event.data["timer"].as_str().unwrap_or_default();
    let due = event.data["due"].as_str().and_then(event::parse_time);
    match (instance.timers.get(name), due) {
        (Some(armed), Some(due)) if armed.timestamp_millis() == due.timestamp_millis() => None,
        _ => Some(format!("ignored: timer {name:?} is no longer armed")),
    }
}

/// The outbox row an action result reports on.
fn completion(event: &Event) -> Option<Completion> {
    let succeeded = match event.kind.as_str() {
        event::ACTION_SUCCEEDED => true,
        event::ACTION_FAILED => false,
        _ => return None,
    };
    let outbox_id = event.data["outbox_id"].as_i64()?;
    let result = if succeeded { event.data["result"].clone() } else { event.data["error"].clone() };
    Some(Completion { outbox_id, succeeded, result })
}

/// Forgets processed event ids older than the retention, every hour (or tenth of the retention).
async fn purge_processed(
    store: Arc<dyn Store>,
    settings: Arc<Settings>,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    let every = (settings.dedup_retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Ok(retention) = chrono::Duration::from_std(settings.dedup_retention) else { continue };
        let before = clock.now() - retention;
        let store = Arc::clone(&store);
        let span = tracing::info_span!("store.purge_processed");
        match tokio::task::spawn_blocking(move || span.in_scope(|| store.purge_processed(before))).await {
            Ok(Ok(count)) if count > 0 => tracing::info!(count, "Processed event ids past their retention purged."),
            Ok(Err(error)) => tracing::warn!(%error, "Purging processed event ids failed."),
            _ => {}
        }
    }
}

/// The JSON of an `Outcome`, for logs and tools.
pub fn outcome_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Committed => json!({"outcome": "committed"}),
        Outcome::Duplicate => json!({"outcome": "duplicate"}),
        Outcome::Unroutable(reason) => json!({"outcome": "unroutable", "reason": reason}),
        Outcome::Failed(reason) => json!({"outcome": "failed", "reason": reason}),
    }
}
