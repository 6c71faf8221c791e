//! The ARM request pipeline, in the order a request goes through it: body limit, bearer token,
//! injected latency and faults, path and `api-version`, dispatch on the settled account (under the
//! world's lock), encoder notifications, then a dropped response or the logged answer.
//!
//! `handle` is the router's fallback: every path that is not the token endpoint or `/_emulator/`
//! comes here. The rules of each resource family live in their own modules (`arm::dispatch`).

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::clock::arm_timestamp;

use super::arm::{self, ArmError, ArmRequest, Reply};
use super::encoders::Tick;
use super::events::Stamp;
use super::faults::Verdict;
use super::state::{self, Env, World};
use super::{DropConnection, Emulator, LoggedRequest, lock};

/// Answers one ARM request.
pub(super) async fn handle(State(emulator): State<Emulator>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let settings = &emulator.inner.settings;
    let mut entry = arrived(&parts, emulator.elapsed_ms());
    let body = match axum::body::to_bytes(body, settings.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let error = ArmError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestBodyTooLarge",
                format!("The request body is larger than {} bytes.", settings.max_body_bytes),
            );
            return finish(&emulator, entry, Err(error));
        }
    };
    entry.body = serde_json::from_slice(&body).ok();
    let now = Instant::now();
    if let Err(error) = authenticate(&emulator, &parts.headers, now) {
        return finish(&emulator, entry, Err(error));
    }
    let (latency, verdict) = {
        let mut world = lock(&emulator.inner.world);
        (world.faults.latency(), world.faults.verdict())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = Fault::of(verdict) {
        return fault.answer(&emulator, entry);
    }
    let (account, route, query) = match route(&entry.path, &entry.query) {
        Ok(routed) => routed,
        Err(error) => return finish(&emulator, entry, Err(error)),
    };
    let request = ArmRequest { method: parts.method.clone(), account, route, query, body: &body };
    let applied = apply(&emulator, &request, &parts.headers, &entry.path, now);
    if applied.changed {
        emulator.inner.wake_heartbeats.notify_one();
        emulator.inner.wake_deliveries.notify_one();
    }
    if applied.drop_response {
        return drop_response(&emulator, entry, &applied.result, &parts).await;
    }
    finish(&emulator, entry, applied.result)
}

/// The log entry of a request that just arrived; its body, status and fault are filled in later.
fn arrived(parts: &Parts, at_ms: u64) -> LoggedRequest {
    LoggedRequest {
        seq: 0,
        at_ms,
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        body: None,
        status: 0,
        fault: None,
        retry_after: None,
    }
}

/// Checks the bearer token: issued by the token endpoint and not expired.
fn authenticate(emulator: &Emulator, headers: &HeaderMap, now: Instant) -> Result<(), ArmError> {
    let authorized =
        arm::bearer(headers).map(|token| lock(&emulator.inner.tokens).get(token).map(|expires| *expires > now));
    match authorized {
        Some(Some(true)) => Ok(()),
        Some(Some(false)) => {
            Err(ArmError::new(StatusCode::UNAUTHORIZED, "ExpiredAuthenticationToken", "The access token has expired."))
        }
        Some(None) => {
            Err(ArmError::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "The access token is invalid."))
        }
        None => Err(ArmError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or is not a Bearer token.",
        )),
    }
}

/// An injected refusal: throttled (429 with `Retry-After`) or a server error, never applied.
struct Fault {
    /// The request log's `fault`.
    label: &'static str,
    retry_after: Option<u64>,
    error: ArmError,
}

impl Fault {
    /// The refusal a fault verdict calls for; `None` lets the request through.
    fn of(verdict: Verdict) -> Option<Self> {
        match verdict {
            Verdict::Pass => None,
            Verdict::Throttle(seconds) => Some(Self {
                label: "throttled",
                retry_after: Some(seconds),
                error: ArmError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "The request was throttled (injected by the emulator); retry after the time in Retry-After.",
                ),
            }),
            Verdict::Fail(status) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let code = if status == StatusCode::SERVICE_UNAVAILABLE {
                    "ServiceUnavailable"
                } else {
                    "InternalServerError"
                };
                Some(Self {
                    label: "error",
                    retry_after: None,
                    error: ArmError::new(
                        status,
                        code,
                        "The server could not handle the request (injected by the emulator).",
                    ),
                })
            }
        }
    }

    /// Logs the request as faulted and answers the refusal.
    fn answer(self, emulator: &Emulator, mut entry: LoggedRequest) -> Response {
        entry.fault = Some(self.label.into());
        entry.retry_after = self.retry_after;
        let mut response = finish(emulator, entry, Err(self.error));
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

/// The account, route and query (keys lowercased) of an ARM path, its `api-version` checked.
fn route(path: &str, raw_query: &str) -> Result<(state::AccountId, arm::Route, HashMap<String, String>), ArmError> {
    let Some((account, route)) = arm::parse_path(path) else {
        return Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The resource type could not be found in the namespace 'Microsoft.Media'.",
        ));
    };
    let query: HashMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes())
        .map(|(key, value)| (key.to_lowercase(), value.into_owned()))
        .collect();
    arm::check_api_version(&route, &query)?;
    Ok((account, route, query))
}

/// What dispatching a request did to the world.
struct Applied {
    result: Result<Reply, ArmError>,
    /// A write applied whose response the faults drop.
    drop_response: bool,
    /// A live event changed in a way its encoder heeds.
    changed: bool,
}

/// Dispatches the request on its settled account under the world's lock, and tells the encoders
/// what changed.
fn apply(emulator: &Emulator, request: &ArmRequest<'_>, headers: &HeaderMap, path: &str, now: Instant) -> Applied {
    let settings = &emulator.inner.settings;
    let origin = match headers.get(axum::http::header::HOST).and_then(|host| host.to_str().ok()) {
        Some(host) => format!("http://{host}"),
        None => format!("http://{}", settings.listen),
    };
    let wall = arm_timestamp(emulator.inner.clock.now());
    let mut guard = lock(&emulator.inner.world);
    let World { accounts, operations, faults, encoders, outbox } = &mut *guard;
    let account = state::account(accounts, &request.account, &wall, &settings.client_id);
    account.settle(now, &wall);
    let mut env = Env { now, wall, settings, origin, operations, faults, changes: Vec::new() };
    let result = arm::dispatch(account, &mut env, request, path);
    let changes = std::mem::take(&mut env.changes);
    let stamp = Stamp { at_ms: emulator.elapsed_ms(), wall: env.wall };
    let drop_response = result.is_ok() && arm::is_write(&request.method, &request.route) && faults.drop_response();
    let tick = Tick { now, stamp: &stamp, interval: settings.events.heartbeat_interval };
    for change in &changes {
        encoders.live_event_changed(account, change, outbox, &tick);
    }
    Applied { result, drop_response, changed: !changes.is_empty() }
}

/// Logs a write whose response is dropped and closes the connection without answering.
async fn drop_response(
    emulator: &Emulator,
    mut entry: LoggedRequest,
    result: &Result<Reply, ArmError>,
    parts: &Parts,
) -> Response {
    entry.fault = Some("dropped".into());
    entry.status = result.as_ref().map_or(0, |reply| reply.status.as_u16());
    emulator.record(entry);
    if let Some(DropConnection(kill)) = parts.extensions.get::<DropConnection>() {
        kill.notify_one();
        std::future::pending::<()>().await;
    }
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

/// Logs the request with its outcome and renders the answer.
fn finish(emulator: &Emulator, mut entry: LoggedRequest, result: Result<Reply, ArmError>) -> Response {
    let reply = match result {
        Ok(reply) => reply,
        Err(error) => Reply::json(error.status, error.body()),
    };
    entry.status = reply.status.as_u16();
    emulator.record(entry);
    let mut response = match reply.body {
        Some(body) => (reply.status, axum::Json(body)).into_response(),
        None => reply.status.into_response(),
    };
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (axum::http::HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            response.headers_mut().insert(name, value);
        }
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-ms-request-id", value.clone());
        response.headers_mut().insert("x-ms-correlation-request-id", value);
    }
    response
}
