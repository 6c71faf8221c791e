//! `/api/v1/`: the handlers. Shapes are documented in `docs/openapi.json`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Parts;
use super::auth::{self, Role};
use crate::event::{self, Event};
use crate::store::{AuditQuery, AuditRow};

/// An API error: `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After`, in seconds, when the caller should come back.
    retry_after: Option<u64>,
    /// More members of the error object (`problems`, `state`, `revision`).
    extra: serde_json::Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None, extra: serde_json::Map::new() }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Adds `key` to the error object.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    pub(super) fn store(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("cannot read the store: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        error.extend(self.extra);
        let mut response = (self.status, Json(json!({"error": error}))).into_response();
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

pub(super) fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Runs a store read off the async threads.
pub(super) async fn read<T: Send + 'static>(
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

fn known(state: &Parts, id: &str) -> Result<(), ApiError> {
    if state.catalog.registry().current().contains(id) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_broadcast", format!("no broadcast {id:?} in the settings")))
    }
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

/// The audit kinds a filter may name.
const AUDIT_KINDS: [&str; 6] = ["decision", "duplicate", "action", "schedule", "config", "command"];

/// `GET /api/v1/audit?broadcast=&kind=&since=&until=&before=&limit=`: newest first, a page at a
/// time (`next` is the `before` of the next page). The audit of a removed broadcast stays.
pub async fn recent_audit(State(state): State<Arc<Parts>>, RawQuery(query): RawQuery) -> Answer {
    let query = audit_query(query.as_deref())?;
    let limit = query.limit;
    let selected = query.clone();
    let rows = read(&state, move |store| store.audit_query(&selected)).await?;
    let next = (rows.len() == limit).then(|| rows.last().map(|row| row.id)).flatten();
    Ok(Json(json!({"entries": rows.iter().map(audit_json).collect::<Vec<_>>(), "next": next})).into_response())
}

/// The audit query a request asks for; every bad parameter is a 400.
fn audit_query(query: Option<&str>) -> Result<AuditQuery, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", message);
    let parameters = super::broadcasts::parameters(query, &["broadcast", "kind", "since", "until", "before", "limit"])?;
    let instant = |key: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
        parameters
            .get(key)
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(|_| bad(format!("{key} is an RFC 3339 instant (2026-11-24T18:00:00Z), not {text:?}")))
            })
            .transpose()
    };
    let broadcast = parameters.get("broadcast").cloned();
    if let Some(id) = broadcast.as_deref().filter(|id| !crate::broadcast::valid_id(id)) {
        return Err(bad(format!("{id:?} is not a broadcast id")));
    }
    let kind = parameters.get("kind").cloned();
    if let Some(kind) = kind.as_deref().filter(|kind| !AUDIT_KINDS.contains(kind)) {
        return Err(bad(format!("unknown kind {kind:?}; one of {}", AUDIT_KINDS.join(", "))));
    }
    let before = match parameters.get("before") {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .filter(|before| *before > 0)
                .ok_or_else(|| bad(format!("before is an audit entry id (a positive number), not {text:?}")))?,
        ),
    };
    let (since, until) = (instant("since")?, instant("until")?);
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(bad("since must be before until".into()));
    }
    let limit = super::broadcasts::limit(&parameters, 50, 1000)?;
    Ok(AuditQuery { broadcast, kind, since, until, before, limit })
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    id: Option<String>,
}

/// `POST /api/v1/dead-letters/replay`
pub async fn replay(State(state): State<Arc<Parts>>, headers: HeaderMap, body: axum::body::Bytes) -> Answer {
    let caller = auth::require(&state.settings, &headers, Role::Operator)?;
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
    tracing::info!(id = ?request.id, replayed = report.replayed, kept = report.kept, who = %caller.name, "Dead letters replayed through the API.");
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
    let caller = auth::require(&state.settings, &headers, Role::Operator)?;
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
    let mut data = json!({"by": caller.name});
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
