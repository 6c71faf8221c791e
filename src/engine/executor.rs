//! The executor: runs outbox actions, one at a time per broadcast, several broadcasts at once.
//!
//! Each action is an idempotent ensure-operation (`media::Client::ensure_*`), so running it again
//! after a crash is always safe: on start, every pending outbox row is run again. A result becomes
//! an `onair.action.succeeded` or `onair.action.failed` event (id `action/<outbox id>`) that goes
//! back through the broadcast's lane; the outbox row is closed by that event's commit, not before.
//! When an action fails, the actions queued after it by the same decision are dropped (the commit
//! of the failure marks them skipped).
//!
//! `Runner::run` dispatches on `ActionKind` with one exhaustive match: `media` holds one function
//! per media action, `notify` the notification, and `http` the `http` action with the executor's
//! own HTTP client (the only one outside `media`).

mod http;
mod media;
mod notify;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{Broadcast, Delivery, Settings};
use crate::clock::SharedClock;
use crate::event::{self, Event};
use crate::machine::ActionKind;
use crate::metrics::Attempt;
use crate::store::{OutboxRow, Store};
use http::HttpCaller;

/// Why an action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ActionError {
    /// The provider's error code, or onair's (`NoMediaClient`, `BadParameter`, …).
    pub code: String,
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl ActionError {
    fn permanent(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), retryable: false }
    }
}

impl From<crate::media::Error> for ActionError {
    fn from(error: crate::media::Error) -> Self {
        use crate::media::Error as MediaError;
        let retryable = matches!(
            error,
            MediaError::Ambiguous { .. }
                | MediaError::RetriesExhausted { .. }
                | MediaError::Timeout { .. }
                | MediaError::OperationFailed { .. }
                | MediaError::Token { .. }
        );
        let code = match &error {
            MediaError::Api { code, .. } | MediaError::OperationFailed { code, .. } => code.clone(),
            MediaError::Timeout { .. } => "Timeout".into(),
            MediaError::RetriesExhausted { .. } => "RetriesExhausted".into(),
            MediaError::Ambiguous { .. } => "NoAnswer".into(),
            MediaError::Token { .. } => "TokenFailed".into(),
            MediaError::NotFound { .. } => "NotFound".into(),
            MediaError::Unexpected { .. } => "Unexpected".into(),
            MediaError::Incomplete { .. } | MediaError::Build(_) => "MediaSettings".into(),
            MediaError::InvalidResponse { .. } => "InvalidResponse".into(),
        };
        Self { code, message: error.to_string(), retryable }
    }
}

/// What actions act on: the media client, an HTTP client for `http`, and `outbound`, where the
/// events onair publishes for other systems go (notifications, copies of action results).
pub struct Runner {
    media: Option<crate::media::Client>,
    http: HttpCaller,
    outbound: mpsc::UnboundedSender<Event>,
    clock: SharedClock,
}

impl Runner {
    /// A runner; without a media client, media actions fail with `NoMediaClient`.
    pub fn new(
        media: Option<crate::media::Client>,
        outbound: mpsc::UnboundedSender<Event>,
        clock: SharedClock,
    ) -> Self {
        Self { media, http: HttpCaller::new(), outbound, clock }
    }

    /// Runs one action once. A row whose action has no `ActionKind` fails with `UnknownAction`.
    pub async fn run(&self, row: &OutboxRow, broadcast: &Broadcast) -> Result<Value, ActionError> {
        let Some(kind) = ActionKind::parse(&row.kind) else {
            return Err(unknown_action(&row.kind));
        };
        let action = Request { row, broadcast };
        let media = || {
            self.media.as_ref().ok_or_else(|| ActionError::permanent("NoMediaClient", "no media client is configured"))
        };
        match kind {
            ActionKind::ChannelStart => media::channel_start(media()?, &action).await,
            ActionKind::ChannelStop => media::channel_stop(media()?, &action).await,
            ActionKind::ChannelReset => media::channel_reset(media()?, &action).await,
            ActionKind::ChannelAllocate => media::channel_allocate(media()?, &action).await,
            ActionKind::ProgramCreate => media::program_create(media()?, &action).await,
            ActionKind::ProgramStop => media::program_stop(media()?, &action).await,
            ActionKind::LocatorPublish => media::locator_publish(media()?, &action).await,
            ActionKind::LocatorUnpublish => media::locator_unpublish(media()?, &action).await,
            ActionKind::EndpointStart => media::endpoint_start(media()?, &action).await,
            ActionKind::EndpointStop => media::endpoint_stop(media()?, &action).await,
            ActionKind::EndpointScale => media::endpoint_scale(media()?, &action).await,
            ActionKind::Notify => Ok(notify::notify(&action, &self.outbound, &self.clock)),
            ActionKind::Http => self.http.call(&action).await,
            // `step` turns a rerun into the action it repeats; a stored one is not runnable.
            ActionKind::Rerun => Err(unknown_action(&row.kind)),
        }
    }
}

fn unknown_action(name: &str) -> ActionError {
    ActionError::permanent("UnknownAction", format!("no action named {name:?}"))
}

/// One outbox row to run, with its broadcast: the parameters as the actions read them.
struct Request<'a> {
    row: &'a OutboxRow,
    broadcast: &'a Broadcast,
}

impl Request<'_> {
    /// A text parameter; empty counts as absent.
    fn text(&self, key: &str) -> Option<String> {
        self.row.params[key].as_str().filter(|value| !value.is_empty()).map(str::to_string)
    }

    /// `channel`, or the broadcast's.
    fn channel(&self) -> String {
        self.text("channel").unwrap_or_else(|| self.broadcast.channel.clone())
    }

    /// `endpoint`, or the broadcast's.
    fn endpoint(&self) -> String {
        self.text("endpoint").unwrap_or_else(|| self.broadcast.endpoint.clone())
    }

    /// `name`, which the action cannot do without.
    fn name(&self) -> Result<String, ActionError> {
        self.text("name")
            .ok_or_else(|| ActionError::permanent("BadParameter", format!("{} needs a name", self.row.kind)))
    }
}

/// Queues per broadcast, shared by the dispatcher and the workers.
#[derive(Default)]
struct Queues {
    waiting: HashMap<String, VecDeque<Queued>>,
    busy: HashSet<String>,
    skipped: HashSet<i64>,
}

/// An outbox row waiting its turn, with the id of the event whose decision queued it (for the
/// logs; unknown for rows resumed after a restart).
struct Queued {
    row: OutboxRow,
    cause: Option<String>,
}

/// A handle to the executor.
#[derive(Clone)]
pub(super) struct Executor {
    inner: Arc<ExecutorInner>,
}

struct ExecutorInner {
    queues: Mutex<Queues>,
    permits: Arc<Semaphore>,
    runner: Arc<Runner>,
    store: Arc<dyn Store>,
    settings: Arc<Settings>,
    /// The running set: an action runs with its broadcast's definition as it is now.
    registry: crate::catalog::Registry,
    input: mpsc::Sender<Delivery>,
    clock: SharedClock,
    metrics: crate::metrics::Metrics,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Executor {
    /// Starts the executor on the engine's parts; results go to `input`.
    pub fn start(
        tracker: &TaskTracker,
        parts: &super::Parts,
        input: mpsc::Sender<Delivery>,
        shutdown: CancellationToken,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(parts.settings.action_concurrency));
        Self {
            inner: Arc::new(ExecutorInner {
                queues: Mutex::new(Queues::default()),
                permits,
                runner: Arc::clone(&parts.runner),
                store: Arc::clone(&parts.store),
                settings: Arc::clone(&parts.settings),
                registry: parts.registry.clone(),
                input,
                clock: Arc::clone(&parts.clock),
                metrics: parts.metrics.clone(),
                shutdown,
                tracker: tracker.clone(),
            }),
        }
    }

    /// Queues an outbox row behind the broadcast's earlier ones; `cause` is the id of the event
    /// whose decision queued it, when known.
    pub fn run(&self, row: OutboxRow, cause: Option<&str>) {
        let broadcast = row.broadcast.clone();
        let start_worker = {
            let mut queues = self.queues();
            let queued = Queued { row, cause: cause.map(str::to_string) };
            queues.waiting.entry(broadcast.clone()).or_default().push_back(queued);
            queues.busy.insert(broadcast.clone())
        };
        if start_worker {
            let executor = self.clone();
            // No parent: the worker outlives the event that started it and runs later events' actions.
            let span = tracing::info_span!(parent: None, "executor", broadcast = %broadcast);
            self.inner.tracker.spawn(async move { executor.work(broadcast).await }.instrument(span));
        }
    }

    /// Drops queued rows that a failure made pointless.
    pub fn skip(&self, ids: Vec<i64>) {
        if !ids.is_empty() {
            self.queues().skipped.extend(ids);
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        crate::sync::lock(&self.inner.queues)
    }

    /// Runs one broadcast's queue until it is empty.
    async fn work(self, broadcast: String) {
        loop {
            let next = {
                let mut queues = self.queues();
                let Queues { waiting, busy, skipped } = &mut *queues;
                let queue = waiting.entry(broadcast.clone()).or_default();
                let mut next = None;
                while let Some(queued) = queue.pop_front() {
                    if !skipped.remove(&queued.row.id) {
                        next = Some(queued);
                        break;
                    }
                }
                if next.is_none() {
                    waiting.remove(&broadcast);
                    busy.remove(&broadcast);
                }
                next
            };
            let Some(Queued { row, cause }) = next else { return };
            let Some(config) = self.inner.registry.current().get(&broadcast).map(|entry| Arc::clone(&entry.broadcast))
            else {
                continue;
            };
            let span = tracing::info_span!(
                "action",
                broadcast = %row.broadcast,
                action = %row.kind,
                action_id = row.id,
                event_id = cause.as_deref()
            );
            let result = tokio::select! {
                // Stopping mid-action is safe: the row stays pending and runs again after a restart.
                _ = self.inner.shutdown.cancelled() => return,
                result = self.attempts(&row, &config).instrument(span) => result,
            };
            if result.is_err() {
                // The rest of this decision's actions would act on a failed premise.
                let mut queues = self.queues();
                if let Some(queue) = queues.waiting.get_mut(&broadcast) {
                    queue.retain(|queued| queued.row.decision != row.decision);
                }
            }
            let event = self.result_event(&row, result);
            // A copy for other systems; the engine's own copy goes straight to the lane.
            let _ = self.inner.runner.outbound.send(event.clone());
            if self.inner.input.send(Delivery { event, reply: None }).await.is_err() {
                return;
            }
        }
    }

    async fn attempts(&self, row: &OutboxRow, broadcast: &Broadcast) -> Result<Value, ActionError> {
        let settings = &self.inner.settings;
        let mut attempt = u32::try_from(row.attempts).unwrap_or(0);
        let mut backoff = settings.action_backoff;
        loop {
            attempt += 1;
            let _permit = self
                .inner
                .permits
                .acquire()
                .await
                .map_err(|_| ActionError::permanent("Stopped", "executor stopped"))?;
            tracing::info!(broadcast = %row.broadcast, action = %row.kind, outbox_id = row.id, attempt, "Action started.");
            // The attempt is recorded while it runs, and nothing waits for the record: it counts
            // attempts (for the audit trail and the dashboard) and guards nothing, since every
            // action is idempotent and one whose record failed runs all the same. A crash before
            // the record lands only leaves the count one short. Waiting for it would put a store
            // round trip (a transaction and its fsync) before every action's first request, or
            // between an action and the next. The store queues it ahead of the commit of the
            // action's result; only when it could not (`Queued::is_ordered`) is it waited for
            // before the result is reported, so the audit trail keeps its order either way.
            let record = self.record_start(row.id, attempt);
            let result = self.inner.runner.run(row, broadcast).await;
            if let Some(record) = record {
                record.await;
            }
            match result {
                Ok(result) => {
                    tracing::info!(broadcast = %row.broadcast, action = %row.kind, outbox_id = row.id, "Action succeeded.");
                    self.inner.metrics.action(&row.kind, Attempt::Succeeded);
                    return Ok(result);
                }
                Err(error) if error.retryable && attempt < settings.action_attempts => {
                    tracing::warn!(broadcast = %row.broadcast, action = %row.kind, attempt, %error, "Action failed; trying again.");
                    self.inner.metrics.action(&row.kind, Attempt::Retrying);
                    drop(_permit);
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(error) => {
                    tracing::error!(broadcast = %row.broadcast, action = %row.kind, attempt, %error, "Action failed.");
                    self.inner.metrics.action(&row.kind, Attempt::Failed);
                    return Err(error);
                }
            }
        }
    }

    /// Asks the store to record an attempt's start. Its outcome is awaited (and a failure logged)
    /// in a task of its own when the store queued it in order; otherwise the returned future is
    /// that wait, for the caller to finish before it reports the action's result.
    fn record_start(&self, outbox_id: i64, attempt: u32) -> Option<impl Future<Output = ()> + use<>> {
        let at: DateTime<Utc> = self.inner.clock.now();
        let queued = self.inner.store.action_started(outbox_id, attempt, at);
        let ordered = queued.is_ordered();
        let span = tracing::info_span!("store.action_started");
        let recorded = tokio::task::spawn_blocking(move || span.in_scope(|| queued.wait()));
        let logged = async move {
            if let Ok(Err(error)) = recorded.await {
                tracing::warn!(outbox_id, %error, "Could not record the start of an action.");
            }
        };
        if ordered {
            self.inner.tracker.spawn(logged);
            None
        } else {
            Some(logged)
        }
    }

    fn result_event(&self, row: &OutboxRow, result: Result<Value, ActionError>) -> Event {
        let (kind, data) = match result {
            Ok(result) => (
                event::ACTION_SUCCEEDED,
                json!({"action": row.kind, "outbox_id": row.id, "params": row.params, "result": result}),
            ),
            Err(error) => (
                event::ACTION_FAILED,
                json!({"action": row.kind, "outbox_id": row.id, "params": row.params,
                       "error": {"code": error.code, "message": error.message}}),
            ),
        };
        Event::new(format!("action/{}", row.id), kind, row.broadcast.clone(), data, self.inner.clock.now())
    }
}
