//! `/api/v1/`: the handlers. Shapes are documented in `docs/openapi.json`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::Parts;
use crate::event::{self, Event};
use crate::store::{AuditRow, InstanceRecord, OutboxRow};

/// An API error: `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After`, in seconds, when the caller should come back.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    fn store(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("cannot read the store: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

type Answer = Result<Response, ApiError>;

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Runs a store read off the async threads.
async fn read<T: Send + 'static>(
    state: &Arc<Parts>,
    work: impl FnOnce(&dyn crate::store::Store) -> Result<T, crate::store::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(&state.store);
    let span = tracing::info_span!("store.read");
    tokio::task::spawn_blocking(move || span.in_scope(|| work(store.as_ref())))
        .await
        .map_err(ApiError::store)?
        .map_err(ApiError::store)
}

fn broadcast_json(
    state: &Parts,
    id: &str,
    instance: Option<&InstanceRecord>,
    pending: &[&OutboxRow],
    now: DateTime<Utc>,
) -> Value {
    let catalog = state.catalog.registry().current();
    let Some(entry) = catalog.get(id) else { return Value::Null };
    let broadcast = &entry.broadcast;
    let next_step = broadcast
        .schedule
        .as_ref()
        .and_then(|spec| crate::schedule::plan::next_step(id, spec, now))
        .and_then(|row| serde_json::to_value(row).ok());
    json!({
        "id": id,
        "machine": broadcast.machine,
        "channel": broadcast.channel,
        "protection": broadcast.protection.mode.name(),
        "state": instance.map(|instance| instance.state.clone()),
        "initial_state": entry.machine.initial,
        "origin": entry.origin.name(),
        "revision": entry.revision,
        "since": instance.map(|instance| stamp(instance.since)),
        "vars": instance.map_or_else(|| json!({}), |instance| Value::Object(instance.vars.clone())),
        "timers": instance.map_or_else(Vec::new, |instance| {
            instance.timers.iter().map(|(name, due)| json!({"name": name, "due": stamp(*due)})).collect()
        }),
        "pending_actions": pending.iter().map(|row| json!({
            "id": row.id, "kind": row.kind, "params": row.params, "attempts": row.attempts, "created": stamp(row.created),
        })).collect::<Vec<_>>(),
        "next_step": next_step,
        "scheduled": broadcast.schedule.is_some(),
    })
}

/// `GET /api/v1/broadcasts`
pub async fn broadcasts(State(state): State<Arc<Parts>>) -> Answer {
    let (instances, pending) = read(&state, |store| Ok((store.load_instances()?, store.pending_actions()?))).await?;
    let now = state.clock.now();
    let catalog = state.catalog.registry().current();
    let list: Vec<Value> = catalog
        .iter()
        .map(|(id, _)| {
            let instance = instances.iter().find(|instance| &instance.broadcast == id);
            let pending: Vec<&OutboxRow> = pending.iter().filter(|row| &row.broadcast == id).collect();
            broadcast_json(&state, id, instance, &pending, now)
        })
        .collect();
    Ok(Json(json!({"generated_at": stamp(now), "broadcasts": list})).into_response())
}

fn known(state: &Parts, id: &str) -> Result<(), ApiError> {
    if state.catalog.registry().current().contains(id) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_broadcast", format!("no broadcast {id:?} in the settings")))
    }
}

/// `GET /api/v1/broadcasts/{id}`
pub async fn broadcast(State(state): State<Arc<Parts>>, Path(id): Path<String>) -> Answer {
    known(&state, &id)?;
    let wanted = id.clone();
    let (instance, pending) = read(&state, move |store| {
        let pending = store.pending_actions()?.into_iter().filter(|row| row.broadcast == wanted).collect::<Vec<_>>();
        Ok((store.load_instance(&wanted)?, pending))
    })
    .await?;
    let pending: Vec<&OutboxRow> = pending.iter().collect();
    Ok(Json(broadcast_json(&state, &id, instance.as_ref(), &pending, state.clock.now())).into_response())
}

#[derive(Debug, Deserialize)]
pub struct Limit {
    limit: Option<usize>,
}

impl Limit {
    fn get(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(default),
            Some(limit) if (1..=max).contains(&limit) => Ok(limit),
            Some(limit) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_parameter",
                format!("limit must be between 1 and {max}, not {limit}"),
            )),
        }
    }
}

fn audit_json(row: &AuditRow) -> Value {
    json!({
        "id": row.id, "broadcast": row.broadcast, "at": stamp(row.at), "kind": row.kind,
        "event_id": row.event_id, "event_type": row.event_type, "from": row.from, "to": row.to,
        "transition": row.transition, "reason": row.reason, "detail": row.detail,
    })
}

/// `GET /api/v1/broadcasts/{id}/audit?limit=`: the last entries, oldest first.
pub async fn audit(State(state): State<Arc<Parts>>, Path(id): Path<String>, Query(limit): Query<Limit>) -> Answer {
    known(&state, &id)?;
    let limit = limit.get(50, 1000)?;
    let wanted = id.clone();
    let rows = read(&state, move |store| store.audit(&wanted, limit)).await?;
    Ok(Json(json!({"broadcast": id, "entries": rows.iter().map(audit_json).collect::<Vec<_>>()})).into_response())
}

/// `GET /api/v1/audit?limit=`: the latest entries of every broadcast, newest first.
pub async fn recent_audit(State(state): State<Arc<Parts>>, Query(limit): Query<Limit>) -> Answer {
    let limit = limit.get(50, 1000)?;
    let ids: Vec<String> = state.catalog.registry().current().iter().map(|(id, _)| id.clone()).collect();
    let mut rows = read(&state, move |store| {
        let mut rows = Vec::new();
        for id in &ids {
            rows.extend(store.audit(id, limit)?);
        }
        Ok(rows)
    })
    .await?;
    rows.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
    rows.truncate(limit);
    Ok(Json(json!({"entries": rows.iter().map(audit_json).collect::<Vec<_>>()})).into_response())
}

/// How long a dead-letter listing is answered again without asking RabbitMQ.
pub const LISTING_CACHE: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest a dead-letter listing or replay waits for the one in progress (with the default
/// limits), before the caller gets 503 with `Retry-After`.
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest one listing or replay may take (with the default limits) before the caller gets
/// 503.
const DEAD_LETTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a dead-letter operation may wait for the gate, and then work, so that its answer
/// comes well before the listener drops the request: no byte moves while it waits and works, so
/// both `request_timeout` and `idle_timeout` bound it. Of the smaller of the two, at most a sixth
/// waiting (and `GATE_WAIT`) and a half working (and `DEAD_LETTER_TIMEOUT`): together at most
/// two thirds, leaving a third for reading the request and writing the answer. With the defaults
/// (30 s and 60 s): 5 s and 15 s.
pub fn dead_letter_budget(limits: &super::Limits) -> (std::time::Duration, std::time::Duration) {
    let bound = limits.request_timeout.min(limits.idle_timeout);
    ((bound / 6).min(GATE_WAIT), (bound / 2).min(DEAD_LETTER_TIMEOUT))
}

/// Takes the dead-letter gate, or answers 503 with `Retry-After` when another listing or replay
/// holds it for longer than the budget allows.
async fn gate(state: &Parts) -> Result<tokio::sync::MutexGuard<'_, Option<Listing>>, ApiError> {
    let (wait, work) = dead_letter_budget(&state.settings.connections);
    tokio::time::timeout(wait, state.dead_letters.last.lock()).await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dead_letters_busy",
            format!("another dead-letter listing or replay is in progress (waited {wait:?}); retry later"),
        )
        .retry_after(work)
    })
}

/// Dead-letter operations through the API: one at a time (listing, replay), and the last listing
/// answered again for `LISTING_CACHE`, so that however many callers there are, RabbitMQ sees at
/// most one listing connection at a time and one listing per `LISTING_CACHE` from this listener.
#[derive(Debug, Default)]
pub struct DeadLetterGate {
    last: tokio::sync::Mutex<Option<Listing>>,
}

#[derive(Debug)]
struct Listing {
    at: tokio::time::Instant,
    limit: usize,
    letters: Vec<crate::broker::dlq::DeadLetter>,
}

impl Listing {
    /// The first `limit` letters, when this listing is recent and has them all.
    fn answer(&self, limit: usize) -> Option<&[crate::broker::dlq::DeadLetter]> {
        let complete = self.limit >= limit || self.letters.len() < self.limit;
        (self.at.elapsed() < LISTING_CACHE && complete).then(|| &self.letters[..limit.min(self.letters.len())])
    }
}

fn broker_unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", error.to_string())
}

/// `GET /api/v1/dead-letters?limit=`
pub async fn dead_letters(State(state): State<Arc<Parts>>, Query(limit): Query<Limit>) -> Answer {
    let limit = limit.get(100, 10_000)?;
    let mut last = gate(&state).await?;
    if let Some(letters) = last.as_ref().and_then(|listing| listing.answer(limit)) {
        return Ok(Json(json!({"dead_letters": letters})).into_response());
    }
    let (_, work) = dead_letter_budget(&state.settings.connections);
    let letters = tokio::time::timeout(work, crate::broker::dlq::list(&state.broker, limit))
        .await
        .map_err(|_| broker_unavailable(format!("no listing within {work:?}")).retry_after(work))?
        .map_err(broker_unavailable)?;
    let answer = Json(json!({"dead_letters": letters})).into_response();
    *last = Some(Listing { at: tokio::time::Instant::now(), limit, letters });
    Ok(answer)
}

/// Commands need the configured bearer token.
fn authorize(state: &Parts, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.settings.api_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "commands_disabled",
            "no API token is configured (http.api_token_file): commands are disabled",
        ));
    };
    // Exactly `Bearer <token>`: no padding around the token and nothing inside it is forgiven,
    // so a token with spaces (inner, leading or trailing) is another token.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = token.expose_secret().trim();
    if !given.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is needed"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    id: Option<String>,
}

/// `POST /api/v1/dead-letters/replay`
pub async fn replay(State(state): State<Arc<Parts>>, headers: HeaderMap, body: axum::body::Bytes) -> Answer {
    authorize(&state, &headers)?;
    let request: Replay = if body.iter().all(u8::is_ascii_whitespace) {
        Replay::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("not a replay request: {error}"))
        })?
    };
    let mut last = gate(&state).await?;
    *last = None;
    let (_, work) = dead_letter_budget(&state.settings.connections);
    let report = tokio::time::timeout(work, crate::broker::dlq::replay(&state.broker, request.id.as_deref(), 10_000))
        .await
        .map_err(|_| broker_unavailable(format!("no replay within {work:?}")).retry_after(work))?
        .map_err(broker_unavailable)?;
    drop(last);
    tracing::info!(id = ?request.id, replayed = report.replayed, kept = report.kept, "Dead letters replayed through the API.");
    Ok(Json(report).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    command: String,
    state: Option<String>,
    note: Option<String>,
}

/// `POST /api/v1/broadcasts/{id}/commands`: publishes `onair.command.<command>` for the
/// broadcast and answers 202 once RabbitMQ confirmed it; the engine decides it like any event.
pub async fn command(
    State(state): State<Arc<Parts>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    authorize(&state, &headers)?;
    known(&state, &id)?;
    if super::extend::is_extend(&body) {
        return super::extend::command(&state, &id, &body).await;
    }
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_command", message);
    let request: Command = serde_json::from_slice(&body).map_err(|error| bad(format!("not a command: {error}")))?;
    if !event::COMMANDS.contains(&request.command.as_str()) {
        return Err(bad(format!("unknown command {:?}; one of {}", request.command, event::COMMANDS.join(", "))));
    }
    let note = request.note.as_deref().map(str::trim).filter(|note| !note.is_empty());
    if note.is_some_and(|note| note.chars().count() > 500) {
        return Err(bad("the note is longer than 500 characters".into()));
    }
    let mut data = json!({"by": "api"});
    if let Some(note) = note {
        data["note"] = json!(note);
    }
    if request.command == "force-state" {
        let target = request.state.as_deref().map(str::trim).filter(|target| !target.is_empty());
        let Some(target) = target else { return Err(bad("force-state needs the state".into())) };
        if note.is_none() {
            return Err(bad("force-state needs a note saying why".into()));
        }
        // The machine would ignore it; say so now, with the states it has, rather than 202.
        let catalog = state.catalog.registry().current();
        let Some(entry) = catalog.get(&id) else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_broadcast", format!("no broadcast {id:?}")));
        };
        let (machine, definition) = (&entry.broadcast.machine, &entry.machine);
        if !definition.states.contains_key(target) {
            let known = definition.states.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
            return Err(bad(format!(
                "{target:?} is not a state of machine {machine:?} (broadcast {id:?}); its states: {known}"
            )));
        }
        data["state"] = json!(target);
    } else if request.state.is_some() {
        return Err(bad(format!("{} takes no state", request.command)));
    }
    let kind = format!("{}{}", event::COMMAND_PREFIX, request.command);
    let mut event = Event::new(uuid::Uuid::new_v4().to_string(), kind.clone(), id.clone(), data, state.clock.now());
    event.source = "onair-api".into();
    state.publisher.publish(&event).await.map_err(broker_unavailable)?;
    tracing::info!(broadcast = %id, command = %request.command, event_id = %event.id, "Operator command published.");
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event.id, "type": kind, "broadcast": id}))).into_response())
}

/// The figures `/metrics` reads from the other parts.
pub(super) async fn snapshot(state: &Arc<Parts>) -> Result<crate::metrics::Snapshot, ApiError> {
    let instances = read(state, |store| store.load_instances()).await?;
    let mut states: BTreeMap<String, i64> = BTreeMap::new();
    let mut live_channels = BTreeMap::new();
    let catalog = state.catalog.registry().current();
    for (id, entry) in catalog.iter() {
        let broadcast = &entry.broadcast;
        let instance = instances.iter().find(|instance| &instance.broadcast == id);
        let current = instance.map_or_else(|| entry.machine.initial.clone(), |instance| instance.state.clone());
        if let Some(instance) = instance.filter(|_| matches!(current.as_str(), "live" | "degraded")) {
            live_channels.insert(broadcast.channel.to_lowercase(), (id.clone(), instance.since));
        }
        *states.entry(current).or_default() += 1;
    }
    let (consumed, acked, dead_lettered) = state.status.counts();
    Ok(crate::metrics::Snapshot {
        now: state.clock.now(),
        consumed,
        acked,
        deduplicated: state.status.deduplicated(),
        dead_lettered,
        reconnects: state.status.reconnects(),
        broker_ready: state.status.is_ready(),
        steps_published: state.schedule.published(),
        steps_missed: state.schedule.missed(),
        schedule_lateness: Some(state.schedule.lateness().clone()),
        states,
        live_channels,
    })
}
