//! The executor: runs outbox actions, one at a time per broadcast, several broadcasts at once.
//!
//! Each action is an idempotent ensure-operation (`media::Client::ensure_*`), so running it again
//! after a crash is always safe: on start, every pending outbox row is run again. A result becomes
//! an `onair.action.succeeded` or `onair.action.failed` event (id `action/<outbox id>`) that goes
//! back through the broadcast's lane; the outbox row is closed by that event's commit, not before.
//! When an action fails, the actions queued after it by the same decision are dropped (the commit
//! of the failure marks them skipped).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{Broadcast, Delivery, Settings};
use crate::clock::SharedClock;
use crate::event::{self, Event};
use crate::media::{self, LocatorSpec, ProgramSpec};
use crate::metrics::Attempt;
use crate::protection::{self, Mode};
use crate::store::{OutboxRow, Store};

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

impl From<media::Error> for ActionError {
    fn from(error: media::Error) -> Self {
        let retryable = matches!(
            error,
            media::Error::Ambiguous { .. }
                | media::Error::RetriesExhausted { .. }
                | media::Error::Timeout { .. }
                | media::Error::OperationFailed { .. }
                | media::Error::Token { .. }
        );
        let code = match &error {
            media::Error::Api { code, .. } | media::Error::OperationFailed { code, .. } => code.clone(),
            media::Error::Timeout { .. } => "Timeout".into(),
            media::Error::RetriesExhausted { .. } => "RetriesExhausted".into(),
            media::Error::Ambiguous { .. } => "NoAnswer".into(),
            media::Error::Token { .. } => "TokenFailed".into(),
            media::Error::NotFound { .. } => "NotFound".into(),
            media::Error::Unexpected { .. } => "Unexpected".into(),
            media::Error::Incomplete { .. } | media::Error::Build(_) => "MediaSettings".into(),
            media::Error::InvalidResponse { .. } => "InvalidResponse".into(),
        };
        Self { code, message: error.to_string(), retryable }
    }
}

/// What actions act on: the media client, an HTTP client for `http`, and `outbound`, where the
/// events onair publishes for other systems go (notifications, copies of action results).
pub struct Runner {
    media: Option<media::Client>,
    http: reqwest::Client,
    outbound: mpsc::UnboundedSender<Event>,
    clock: SharedClock,
}

impl Runner {
    /// A runner; without a media client, media actions fail with `NoMediaClient`.
    pub fn new(media: Option<media::Client>, outbound: mpsc::UnboundedSender<Event>, clock: SharedClock) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        Self { media, http, outbound, clock }
    }

    /// Runs one action once.
    pub async fn run(&self, row: &OutboxRow, broadcast: &Broadcast) -> Result<Value, ActionError> {
        let params = &row.params;
        let text = |key: &str| params[key].as_str().filter(|value| !value.is_empty()).map(str::to_string);
        let channel = || text("channel").unwrap_or_else(|| broadcast.channel.clone());
        let endpoint = || text("endpoint").unwrap_or_else(|| broadcast.endpoint.clone());
        match row.kind.as_str() {
            "notify" => Ok(self.notify(row, broadcast)),
            "http" => self.http(row, broadcast).await,
            _ => {
                let Some(media) = &self.media else {
                    return Err(ActionError::permanent("NoMediaClient", "no media client is configured"));
                };
                self.media_action(media, row, broadcast, &channel(), &endpoint(), &text).await
            }
        }
    }

    async fn media_action(
        &self,
        media: &media::Client,
        row: &OutboxRow,
        broadcast: &Broadcast,
        channel: &str,
        endpoint: &str,
        text: &impl Fn(&str) -> Option<String>,
    ) -> Result<Value, ActionError> {
        let name =
            || text("name").ok_or_else(|| ActionError::permanent("BadParameter", format!("{} needs a name", row.kind)));
        let result = match row.kind.as_str() {
            "channel.start" => {
                let event = media.ensure_channel_running(&broadcast.channel_spec(channel)).await?;
                let ingest = event
                    .properties
                    .input
                    .and_then(|input| input.endpoints)
                    .and_then(|endpoints| endpoints.into_iter().next());
                json!({"channel": channel, "state": "Running", "ingest": ingest.and_then(|endpoint| endpoint.url)})
            }
            "channel.allocate" => {
                media.ensure_channel_allocated(&broadcast.channel_spec(channel)).await?;
                json!({"channel": channel, "state": "StandBy"})
            }
            "channel.stop" => {
                let remove_outputs = row.params["remove_outputs"].as_bool().unwrap_or(true);
                media.ensure_channel_stopped(channel, remove_outputs).await?;
                json!({"channel": channel, "state": "Stopped"})
            }
            "channel.reset" => {
                // The row's creation time makes the reset idempotent across restarts.
                media.ensure_channel_reset(channel, row.created).await?;
                json!({"channel": channel, "reset": true})
            }
            "program.create" => {
                let name = name()?;
                let spec = ProgramSpec {
                    channel: channel.to_string(),
                    asset: text("asset").unwrap_or_else(|| name.clone()),
                    manifest_name: text("manifest").unwrap_or_else(|| name.clone()),
                    archive_window: text("archive_window").unwrap_or_else(|| broadcast.archive_window.clone()),
                    description: text("description").or_else(|| Some(format!("onair broadcast {}", broadcast.id))),
                    name: name.clone(),
                };
                media.ensure_program_present(&spec).await?;
                json!({"program": name, "asset": spec.asset, "manifest": spec.manifest_name})
            }
            "program.stop" => {
                let name = name()?;
                media.ensure_program_removed(channel, &name).await?;
                json!({"program": name, "removed": true})
            }
            "locator.publish" => {
                let name = name()?;
                let (streaming_policy, content_key_policy) = match &broadcast.protection.policy {
                    Some(policy) if broadcast.protection.mode != Mode::Clear => {
                        let mode = broadcast.protection.mode;
                        // Keys first, then the policy that uses them, then the locator: each step
                        // converges on its own, so a crash between two of them repeats nothing.
                        media.ensure_content_key_policy(&policy.name, &policy.content_key_policy(mode)).await?;
                        let streaming = protection::streaming_policy_name(mode, &policy.name);
                        let body = protection::streaming_policy(mode, &policy.name).map_err(|error| {
                            ActionError::permanent("BadParameter", format!("streaming policy {streaming}: {error}"))
                        })?;
                        media.ensure_streaming_policy(&streaming, &body).await?;
                        (streaming, Some(policy.name.clone()))
                    }
                    _ => (text("policy").unwrap_or_else(|| broadcast.streaming_policy.clone()), None),
                };
                let spec = LocatorSpec {
                    asset: text("asset").unwrap_or_else(|| name.clone()),
                    streaming_policy,
                    content_key_policy,
                    endpoint: endpoint.to_string(),
                    name,
                };
                let published = media.ensure_locator_published(&spec).await?;
                json!({
                    "locator": published.locator,
                    "locator_id": published.locator_id,
                    "hls": published.hls,
                    "dash": published.dash,
                    "smooth": published.smooth,
                    "streaming_policy": spec.streaming_policy,
                    "protection": broadcast.protection.mode.name(),
                })
            }
            "locator.unpublish" => {
                let name = name()?;
                media.ensure_locator_removed(&name).await?;
                json!({"locator": name, "removed": true})
            }
            "endpoint.start" => {
                media.ensure_endpoint_running(&broadcast.endpoint_spec(endpoint)).await?;
                json!({"endpoint": endpoint, "state": "Running"})
            }
            "endpoint.stop" => {
                media.ensure_endpoint_stopped(endpoint).await?;
                json!({"endpoint": endpoint, "state": "Stopped"})
            }
            "endpoint.scale" => {
                let units =
                    row.params["units"].as_i64().and_then(|units| i32::try_from(units).ok()).ok_or_else(|| {
                        ActionError::permanent(
                            "BadParameter",
                            format!("endpoint.scale needs whole units, not {}", row.params["units"]),
                        )
                    })?;
                if media.get_streaming_endpoint(endpoint).await?.is_none() {
                    media.ensure_endpoint_running(&broadcast.endpoint_spec(endpoint)).await?;
                }
                media.ensure_endpoint_scaled(endpoint, units).await?;
                json!({"endpoint": endpoint, "units": units})
            }
            other => return Err(ActionError::permanent("UnknownAction", format!("no action named {other:?}"))),
        };
        Ok(result)
    }

    fn notify(&self, row: &OutboxRow, broadcast: &Broadcast) -> Value {
        let severity = row.params["severity"].as_str().unwrap_or("info").to_string();
        let message = row.params["message"].as_str().unwrap_or_default().to_string();
        match severity.as_str() {
            "error" | "critical" => tracing::error!(broadcast = %broadcast.id, %message, "Notification."),
            "warning" => tracing::warn!(broadcast = %broadcast.id, %message, "Notification."),
            _ => tracing::info!(broadcast = %broadcast.id, %message, "Notification."),
        }
        let notification = Event::new(
            format!("notification/{}", row.id),
            event::NOTIFICATION,
            broadcast.id.clone(),
            json!({"broadcast": broadcast.id, "severity": severity, "message": message, "data": row.params["data"]}),
            self.clock.now(),
        );
        let published = self.outbound.send(notification).is_ok();
        json!({"severity": severity, "message": message, "published": published})
    }

    /// `http`: a templated request to any URL, with an `Idempotency-Key` so that a repeat after a
    /// crash can be recognised by the receiver.
    async fn http(&self, row: &OutboxRow, broadcast: &Broadcast) -> Result<Value, ActionError> {
        let url = row.params["url"].as_str().unwrap_or_default();
        let url = url::Url::parse(url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| ActionError::permanent("BadParameter", format!("http needs an http(s) url, not {url:?}")))?;
        let method = row.params["method"].as_str().unwrap_or("POST").to_uppercase();
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ActionError::permanent("BadParameter", format!("bad method {method:?}")))?;
        let mut request =
            self.http.request(method, url).header("Idempotency-Key", format!("onair-{}-{}", broadcast.id, row.id));
        if let Some(headers) = row.params["headers"].as_object() {
            for (name, value) in headers {
                if let Some(value) = value.as_str() {
                    request = request.header(name, value);
                }
            }
        }
        request = match &row.params["body"] {
            Value::Null => request,
            Value::String(text) => request.body(text.clone()),
            other => request.json(other),
        };
        let response = request.send().await.map_err(|error| ActionError {
            code: "NoAnswer".into(),
            message: error.to_string(),
            retryable: true,
        })?;
        let status = response.status();
        let body: String = response.text().await.unwrap_or_default().chars().take(2048).collect();
        if status.is_success() {
            return Ok(json!({"status": status.as_u16(), "body": body}));
        }
        let retryable = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err(ActionError {
            code: format!("HTTP{}", status.as_u16()),
            message: format!("HTTP {status}: {body}"),
            retryable,
        })
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
            let Some(config) = self.inner.settings.broadcasts.get(&broadcast) else { continue };
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
                result = self.attempts(&row, config).instrument(span) => result,
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
            self.record_start(row.id, attempt).await;
            tracing::info!(broadcast = %row.broadcast, action = %row.kind, outbox_id = row.id, attempt, "Action started.");
            match self.inner.runner.run(row, broadcast).await {
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

    async fn record_start(&self, outbox_id: i64, attempt: u32) {
        let store = Arc::clone(&self.inner.store);
        let at: DateTime<Utc> = self.inner.clock.now();
        let span = tracing::info_span!("store.action_started");
        let recorded =
            tokio::task::spawn_blocking(move || span.in_scope(|| store.action_started(outbox_id, attempt, at))).await;
        if let Ok(Err(error)) = recorded {
            tracing::warn!(outbox_id, %error, "Could not record the start of an action.");
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
