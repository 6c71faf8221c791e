//! `/api/v1/broadcasts`: the list (paged, filtered, counted), one broadcast, and the changes
//! (`PUT` creates or replaces an API broadcast, `DELETE` removes one), which go through
//! `catalog::Manager` and answer with its refusals as HTTP statuses.
//!
//! A list request reads the catalog (in memory) and one view of the broadcasts' states and
//! pending actions, shared by every list request for `FRESH` (so a dashboard per operator, each
//! refreshing every 2 s, costs the store one read per `FRESH`); one broadcast is read fresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::Parts;
use super::api::{ApiError, read, stamp};
use super::auth::{self, Role};
use crate::catalog::{Deleted, Entry, Error as CatalogError, Who};
use crate::event::Event;
use crate::store::{Expected, InstanceRecord, OutboxRow};

/// How long one read of the states serves list requests.
pub const FRESH: Duration = Duration::from_millis(500);

/// The largest definition a `PUT` takes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Broadcasts per list page unless `limit` says otherwise, and at most.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

type Answer = Result<Response, ApiError>;

/// The states and pending actions of every broadcast that has them, as read at one instant.
#[derive(Debug, Default)]
struct Activity {
    instances: HashMap<String, InstanceRecord>,
    pending: HashMap<String, Vec<OutboxRow>>,
}

/// The last `Activity` read, for `FRESH`; and each scheduled broadcast's next step, which holds
/// until it passes or the broadcast changes.
#[derive(Debug, Default)]
pub struct ActivityCache {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<Activity>)>>,
    next_steps: std::sync::Mutex<HashMap<String, NextStep>>,
}

/// A broadcast's next planned step, as computed for one revision of it.
#[derive(Debug, Clone, Copy)]
struct NextStep {
    revision: i64,
    incarnation: i64,
    /// `None`: no step to come (a one-shot schedule that has passed).
    planned: Option<DateTime<Utc>>,
}

impl ActivityCache {
    /// When `entry`'s next step is planned (at or after `now`), computed again only when the
    /// cached one has passed or the broadcast changed since.
    fn next_planned(&self, entry: &Entry, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let spec = entry.broadcast.schedule.as_ref()?;
        let id = &entry.broadcast.id;
        let mut cache = crate::sync::lock(&self.next_steps);
        if let Some(known) = cache.get(id)
            && known.revision == entry.revision
            && known.incarnation == entry.incarnation
            && known.planned.is_none_or(|planned| planned >= now)
        {
            return known.planned;
        }
        let planned = crate::schedule::plan::next_step(id, spec, now).map(|row| row.planned);
        cache.insert(id.clone(), NextStep { revision: entry.revision, incarnation: entry.incarnation, planned });
        planned
    }

    /// Forgets the next steps of broadcasts no longer in `catalog` (once they are many).
    fn prune(&self, catalog: &crate::catalog::Catalog) {
        let mut cache = crate::sync::lock(&self.next_steps);
        if cache.len() > catalog.len() + 1024 {
            cache.retain(|id, _| catalog.contains(id));
        }
    }
}

async fn activity(state: &Arc<Parts>) -> Result<Arc<Activity>, ApiError> {
    let mut last = state.activity.last.lock().await;
    if let Some((at, activity)) = last.as_ref()
        && at.elapsed() < FRESH
    {
        return Ok(Arc::clone(activity));
    }
    let (instances, pending) = read(state, |store| Ok((store.load_instances()?, store.pending_actions()?))).await?;
    let mut read = Activity::default();
    for instance in instances {
        read.instances.insert(instance.broadcast.clone(), instance);
    }
    for row in pending {
        read.pending.entry(row.broadcast.clone()).or_default().push(row);
    }
    let read = Arc::new(read);
    *last = Some((tokio::time::Instant::now(), Arc::clone(&read)));
    Ok(read)
}

/// A broadcast as the API shows it; `full` adds its definition as written.
fn broadcast_json(
    entry: &Entry,
    instance: Option<&InstanceRecord>,
    pending: &[OutboxRow],
    now: DateTime<Utc>,
    full: bool,
) -> Value {
    let broadcast = &entry.broadcast;
    let id = broadcast.id.as_str();
    let next_step = broadcast
        .schedule
        .as_ref()
        .and_then(|spec| crate::schedule::plan::next_step(id, spec, now))
        .and_then(|row| serde_json::to_value(row).ok());
    let flag = |name: &str| instance.and_then(|instance| instance.vars.get(name)).and_then(Value::as_bool);
    let mut shown = json!({
        "id": id,
        "machine": broadcast.machine,
        "channel": broadcast.channel,
        "protection": broadcast.protection.mode.name(),
        "state": instance.map(|instance| instance.state.clone()),
        "initial_state": entry.machine.initial,
        "origin": entry.origin.name(),
        "revision": entry.revision,
        "updated": stamp(entry.updated),
        "updated_by": entry.updated_by,
        "removing": entry.deleting,
        "flags": {"paused": flag("paused").unwrap_or(false), "skip_next": flag("skip_next").unwrap_or(false)},
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
        "timezone": broadcast.schedule.as_ref().map(|spec| spec.timezone.name()),
    });
    if full {
        shown["definition"] = Value::Object(entry.definition());
    }
    shown
}

fn etag(revision: i64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
}

/// The query's parameters; one given twice, or one not in `known`, is refused.
pub(super) fn parameters(query: Option<&str>, known: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut parameters = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !known.contains(&key.as_ref()) {
            return Err(bad(format!("unknown parameter {key:?}; known: {}", known.join(", "))));
        }
        if parameters.insert(key.to_string(), value.to_string()).is_some() {
            return Err(bad(format!("parameter {key:?} given more than once")));
        }
    }
    Ok(parameters)
}

/// `limit` between 1 and `max`, `default` when absent.
pub(super) fn limit(parameters: &BTreeMap<String, String>, default: usize, max: usize) -> Result<usize, ApiError> {
    match parameters.get("limit") {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
            _ => Err(bad(format!("limit must be a number between 1 and {max}, not {text:?}"))),
        },
    }
}

/// What a list request asks for.
struct ListQuery {
    state: Option<String>,
    q: Option<String>,
    limit: usize,
    after: Option<String>,
    due_within: Option<chrono::TimeDelta>,
}

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let parameters = parameters(query, &["state", "q", "limit", "after", "due_within"])?;
        let short = |key: &str, max: usize| -> Result<Option<String>, ApiError> {
            match parameters.get(key) {
                Some(value) if value.is_empty() || value.chars().count() > max => {
                    Err(bad(format!("{key} must be 1 to {max} characters")))
                }
                other => Ok(other.cloned()),
            }
        };
        let due_within = match parameters.get("due_within") {
            None => None,
            Some(text) => {
                let within = humantime::parse_duration(text)
                    .ok()
                    .filter(|within| (Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600)).contains(within))
                    .and_then(|within| chrono::TimeDelta::from_std(within).ok())
                    .ok_or_else(|| {
                        bad(format!("due_within must be a duration from 1m to 7d (such as 6h), not {text:?}"))
                    })?;
                Some(within)
            }
        };
        Ok(Self {
            state: short("state", 64)?,
            q: short("q", 100)?.map(|q| q.to_lowercase()),
            limit: limit(&parameters, PAGE, MAX_PAGE)?,
            after: short("after", 64)?,
            due_within,
        })
    }
}

/// Where a broadcast stands for the list: its state (its machine's initial one when never
/// decided), and whether it needs attention first (not idle, or actions pending).
fn standing<'a>(entry: &'a Entry, activity: &'a Activity) -> (&'a str, bool) {
    let id = entry.broadcast.id.as_str();
    let state = activity.instances.get(id).map_or(entry.machine.initial.as_str(), |instance| instance.state.as_str());
    (state, state != entry.machine.initial || activity.pending.contains_key(id))
}

/// A broadcast a list request selected, with where it sorts under `due_within`: rank 0 is on air
/// or busy, rank 1 due within the window (then by when).
struct Selected<'a> {
    rank: u8,
    due: Option<DateTime<Utc>>,
    entry: &'a Arc<Entry>,
}

/// What a list request selects, in its order, and the count per state of what `q` and
/// `due_within` select (the state filter aside, so that a dashboard's tabs show every count).
fn select<'a>(
    catalog: &'a crate::catalog::Catalog,
    activity: &Activity,
    cache: &ActivityCache,
    query: &ListQuery,
    now: DateTime<Utc>,
) -> (Vec<Selected<'a>>, BTreeMap<String, usize>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut selected = Vec::new();
    for (id, entry) in catalog.iter() {
        if let Some(q) = &query.q
            && !id.contains(q.as_str())
            && !entry.broadcast.channel.to_lowercase().contains(q.as_str())
        {
            continue;
        }
        let (current, busy) = standing(entry, activity);
        let (rank, due) = match query.due_within {
            None => (0, None),
            Some(_) if busy => (0, None),
            Some(within) => {
                let due = cache.next_planned(entry, now).filter(|planned| *planned <= now + within);
                match due {
                    Some(due) => (1, Some(due)),
                    None => continue,
                }
            }
        };
        *counts.entry(current.to_string()).or_default() += 1;
        if query.state.as_deref().is_some_and(|wanted| wanted != current) {
            continue;
        }
        selected.push(Selected { rank, due, entry });
    }
    if query.due_within.is_some() {
        cache.prune(catalog);
        selected.sort_by(|a, b| (a.rank, a.due, &a.entry.broadcast.id).cmp(&(b.rank, b.due, &b.entry.broadcast.id)));
    }
    (selected, counts)
}

/// `GET /api/v1/broadcasts?state=&q=&limit=&after=&due_within=`
pub async fn list(State(state): State<Arc<Parts>>, RawQuery(query): RawQuery) -> Answer {
    let query = ListQuery::parse(query.as_deref())?;
    let activity = activity(&state).await?;
    let now = state.clock.now();
    let catalog = state.catalog.registry().current();
    let (selected, counts) = select(&catalog, &activity, &state.activity, &query, now);
    let start = match (&query.after, query.due_within) {
        (None, _) => 0,
        (Some(after), None) => selected.partition_point(|one| one.entry.broadcast.id.as_str() <= after.as_str()),
        (Some(after), Some(_)) => {
            selected.iter().position(|one| &one.entry.broadcast.id == after).map(|at| at + 1).ok_or_else(|| {
                bad(format!("{after:?} is no longer on air or due in this view; list again from the start"))
            })?
        }
    };
    let page: Vec<&Arc<Entry>> = selected.iter().skip(start).take(query.limit).map(|one| one.entry).collect();
    let next = (start + page.len() < selected.len()).then(|| page.last().map(|entry| entry.broadcast.id.clone()));
    let shown: Vec<Value> = page
        .iter()
        .map(|entry| {
            let id = entry.broadcast.id.as_str();
            let pending = activity.pending.get(id).map_or(&[][..], Vec::as_slice);
            broadcast_json(entry, activity.instances.get(id), pending, now, false)
        })
        .collect();
    Ok(Json(json!({
        "generated_at": stamp(now),
        "broadcasts": shown,
        "total": selected.len(),
        "counts": counts,
        "next": next.flatten(),
    }))
    .into_response())
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_broadcast", format!("no broadcast {id:?}"))
}

/// One broadcast, read fresh, with its `ETag`.
async fn shown(state: &Arc<Parts>, entry: &Entry) -> Result<Value, ApiError> {
    let wanted = entry.broadcast.id.clone();
    let (instance, pending) = read(state, move |store| {
        let pending = store.pending_actions()?.into_iter().filter(|row| row.broadcast == wanted).collect::<Vec<_>>();
        Ok((store.load_instance(&wanted)?, pending))
    })
    .await?;
    Ok(broadcast_json(entry, instance.as_ref(), &pending, state.clock.now(), true))
}

/// `GET /api/v1/broadcasts/{id}`
pub async fn one(State(state): State<Arc<Parts>>, Path(id): Path<String>) -> Answer {
    let entry = state.catalog.registry().current().get(&id).cloned().ok_or_else(|| unknown(&id))?;
    let body = shown(&state, &entry).await?;
    Ok(([(header::ETAG, etag(entry.revision))], Json(body)).into_response())
}

/// What `If-Match` / `If-None-Match` ask for.
fn expected(headers: &HeaderMap, exists: bool) -> Result<Expected, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        match headers.get(&name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|value| Some(value.trim().to_string()))
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_precondition", format!("{name} is not text"))),
        }
    };
    let failed = |message: String| ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message);
    match (text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?) {
        (Some(_), Some(_)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_precondition", "give If-Match or If-None-Match, not both"))
        }
        (Some(tag), None) if tag == "*" => {
            if exists {
                Ok(Expected::Any)
            } else {
                Err(failed("If-Match: * but the broadcast does not exist".into()))
            }
        }
        (Some(tag), None) => {
            let revision = tag.strip_prefix('"').and_then(|tag| tag.strip_suffix('"')).and_then(|tag| tag.parse().ok());
            revision.map(Expected::Revision).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_precondition",
                    "If-Match takes one revision as its ETag shows it (\"12\"), or *",
                )
            })
        }
        (None, Some(tag)) if tag == "*" => Ok(Expected::Absent),
        (None, Some(_)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_precondition", "If-None-Match takes only * here"))
        }
        (None, None) => Ok(Expected::Any),
    }
}

/// A refusal of the manager as the API answers it.
fn refused(error: CatalogError) -> ApiError {
    match error {
        CatalogError::Invalid(problems) => {
            let message = error_message(&problems);
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_definition", message).with("problems", json!(problems))
        }
        CatalogError::NotFound(id) => unknown(&id),
        error @ CatalogError::FileOwned(_) => ApiError::new(StatusCode::CONFLICT, "file_broadcast", error.to_string()),
        CatalogError::Busy { id, state, what } => {
            let (current, pending) = split_state(&state);
            ApiError::new(StatusCode::CONFLICT, "busy", format!("broadcast {id:?} is {state}, not idle: {what}"))
                .with("state", json!(current))
                .with("actions_pending", json!(pending))
        }
        CatalogError::Conflict { id, found, .. } => {
            let message = match found {
                Some(revision) => format!("broadcast {id:?} is at revision {revision}; read it again and retry"),
                None => format!("broadcast {id:?} does not exist"),
            };
            ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
                .with("revision", json!(found))
        }
        CatalogError::Store(error) => ApiError::store(error),
    }
}

/// The manager's `live (actions pending)`: the state, and whether actions are pending.
fn split_state(state: &str) -> (&str, bool) {
    match state.strip_suffix(" (actions pending)") {
        Some(current) => (current, true),
        None => (state, false),
    }
}

fn error_message(problems: &[crate::catalog::ProblemAt]) -> String {
    let count = problems.len();
    format!("invalid broadcast definition ({count} problem{})", if count == 1 { "" } else { "s" })
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    if crate::broadcast::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            "a broadcast id is 1 to 40 lowercase letters, digits and inner hyphens",
        ))
    }
}

/// `PUT /api/v1/broadcasts/{id}`: creates (201) or replaces (200) the API broadcast `id` from a
/// `[broadcasts.<id>]` table in JSON.
pub async fn put(
    State(state): State<Arc<Parts>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Answer {
    let caller = auth::require(&state.settings, &headers, Role::Admin)?;
    valid_id(&id)?;
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a broadcast definition is at most {BODY_LIMIT} bytes"),
        )
    })?;
    let definition: Map<String, Value> = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(definition)) => definition,
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the body is a JSON object: the [broadcasts.<id>] table",
            ));
        }
        Err(error) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("not JSON: {error}")));
        }
    };
    let current = state.catalog.registry().current().get(&id).cloned();
    if current.as_ref().is_some_and(|entry| entry.deleting) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "removing",
            format!(
                "broadcast {id:?} is being removed (stopped, then removed once idle); create it again once it is gone"
            ),
        ));
    }
    let expected = expected(&headers, current.is_some())?;
    let entry = state.catalog.put(&id, definition, expected, &Who(caller.name)).await.map_err(refused)?;
    // The change that created this life of the id has its revision as the incarnation.
    let status = if entry.incarnation == entry.revision { StatusCode::CREATED } else { StatusCode::OK };
    let body = shown(&state, &entry).await?;
    Ok((status, [(header::ETAG, etag(entry.revision))], Json(body)).into_response())
}

/// `DELETE /api/v1/broadcasts/{id}[?force=true]`: 204 removed; 202 when forced on a broadcast that
/// is not idle (stop-now is sent; it is removed once idle).
pub async fn delete(
    State(state): State<Arc<Parts>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Answer {
    let caller = auth::require(&state.settings, &headers, Role::Admin)?;
    valid_id(&id)?;
    let parameters = parameters(query.as_deref(), &["force"])?;
    let force = match parameters.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad(format!("force is true or false, not {other:?}"))),
    };
    let exists = state.catalog.registry().current().contains(&id);
    let expected = expected(&headers, exists)?;
    let who = Who(caller.name);
    match state.catalog.delete(&id, expected, force, &who).await.map_err(refused)? {
        Deleted::Removed => Ok(StatusCode::NO_CONTENT.into_response()),
        Deleted::Stopping { state: current } => {
            stop_now(&state, &id, &who).await?;
            let (current, pending) = split_state(&current);
            let body = json!({"id": id, "state": current, "actions_pending": pending, "removing": true});
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
    }
}

/// Sends the broadcast being removed `stop-now`, under an event id fixed by its revision, so
/// that a repeated forced delete is a duplicate the engine drops.
async fn stop_now(state: &Arc<Parts>, id: &str, who: &Who) -> Result<(), ApiError> {
    let revision = state.catalog.registry().current().get(id).map_or(0, |entry| entry.revision);
    let data = json!({"by": who.0, "note": "forced delete: stopped, then removed once idle"});
    let kind = format!("{}stop-now", crate::event::COMMAND_PREFIX);
    let mut event = Event::new(format!("delete/{id}/{revision}"), kind, id.to_string(), data, state.clock.now());
    event.source = "onair-api".into();
    state.publisher.publish(&event).await.map_err(|error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            format!("marked for removal, but stop-now could not be sent ({error}); repeat the delete"),
        )
    })?;
    tracing::info!(broadcast = %id, event_id = %event.id, who = %who.0, "Forced delete: stop-now published.");
    Ok(())
}
