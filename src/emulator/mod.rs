//! `onair emulator`: an HTTP server that behaves like the Media Services v3 API (live streaming).
//!
//! - `pipeline`: the ARM request pipeline (body limit, auth, faults, routing, `api-version`,
//!   dispatch under the world's lock, dropped responses, the request log).
//! - `arm`: ARM's vocabulary: errors, replies, routes, dispatch and paging.
//! - `resources`: the list, get and delete handlers every resource family shares.
//! - `live`, `endpoints`, `publish`: the service's rules per resource family; `operations` the
//!   long-running operation records they share.
//! - `state`: accounts, resources, transient states and long-running operations.
//! - `faults`: throttling, server errors, latency, dropped responses and failed operations.
//! - `encoders`: simulated encoders on live events; `events`: their Event Grid deliveries.
//!
//! Besides ARM it serves an Azure AD v2-style token endpoint (`POST /{tenant}/oauth2/v2.0/token`)
//! and, under `/_emulator/`, the request log, reset, fault settings, a state dump, the encoders and
//! the delivery log for tests. Two background tasks run beside the server: encoder heartbeats and
//! Event Grid deliveries; they never change ARM resources.
//! State lives in memory, optionally loaded from and saved to a JSON snapshot.
//!
//! The server runs its own accept loop (hyper) rather than `axum::serve` so that a fault can close
//! a connection without answering: a write applied but whose response is lost.

mod arm;
mod encoders;
mod endpoints;
mod events;
mod faults;
mod keydelivery;
mod live;
mod operations;
mod pipeline;
mod publish;
mod resources;
mod state;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use encoders::{
    AUDIO_BITRATE, EncoderAction, EncoderState, EncoderStatus, NOT_RUNNING_CODE, TrackStatus, VIDEO_BITRATE,
};
pub use events::{DeliveryRecord, Endpoint, EventSchema, EventSettings, VALIDATION_EVENT_TYPE, WEBHOOK_ORIGIN};
pub use faults::Faults;

use crate::clock::{SharedClock, arm_timestamp};
// The emulator's state stays usable after a panicking handler: each leaves it consistent first.
use crate::sync::lock;
use encoders::Tick;
use events::{Outbox, Stamp};
use state::World;

/// The client secret the emulator accepts when none is configured; a well-known development
/// value, like Azurite's account key.
pub const DEFAULT_CLIENT_SECRET: &str = "onair-emulator-secret";

/// `[emulator]` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// The client id the token endpoint accepts.
    pub client_id: String,
    /// The client secret the token endpoint accepts; redacted in `Debug`.
    pub client_secret: SecretString,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// Duration of each transient state.
    pub transition: Duration,
    /// Seed of the fault generator.
    pub seed: u64,
    /// JSON snapshot loaded at start and saved on shutdown.
    pub snapshot: Option<PathBuf>,
    /// Items per list page.
    pub page_size: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests kept in the log.
    pub request_log_limit: usize,
    /// Per-account quotas.
    pub quotas: Quotas,
    /// Faults at start.
    pub faults: Faults,
    /// Simulated encoders' events and their Event Grid deliveries (`[emulator.events]`).
    pub events: EventSettings,
}

/// Per-account quotas (the service's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    pub live_events: usize,
    pub live_outputs_per_live_event: usize,
    pub streaming_endpoints: usize,
}

impl Settings {
    /// The `[emulator]` section of the layered settings (the other sections are the daemon's).
    pub fn load(source: &crate::config::Source) -> Result<Self, crate::config::Error> {
        crate::config::load(source, |root| {
            let settings = Self::parse(&mut root.section("emulator"));
            root.ignore_rest();
            settings
        })
    }

    /// The built-in defaults: `config/default.toml`'s `[emulator]`, without a config file or
    /// environment, for tests and embedding. This is the one place that loads them.
    pub fn defaults() -> Result<Self, crate::config::Error> {
        Self::load(&crate::config::Source::default())
    }

    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let listen_text: String = section.value("listen");
        let listen = match listen_text.parse() {
            Ok(listen) => listen,
            Err(_) => {
                section.problem("listen", format!("expected an address like 127.0.0.1:8700, not {listen_text:?}"));
                SocketAddr::from(([127, 0, 0, 1], 8700))
            }
        };
        let mut quotas_section = section.section("quotas");
        let quotas = Quotas {
            live_events: quotas_section.value("live_events"),
            live_outputs_per_live_event: quotas_section.value("live_outputs_per_live_event"),
            streaming_endpoints: quotas_section.value("streaming_endpoints"),
        };
        drop(quotas_section);
        let mut faults_section = section.section("faults");
        let faults = Faults {
            throttle_rate: faults_section.value("throttle_rate"),
            retry_after_secs: faults_section.duration("retry_after").as_secs(),
            error_rate: faults_section.value("error_rate"),
            latency_ms: u64::try_from(faults_section.duration("latency").as_millis()).unwrap_or(u64::MAX),
            drop_rate: faults_section.value("drop_rate"),
            lro_failure_rate: faults_section.value("lro_failure_rate"),
            lro_failure_code: faults_section.value("lro_failure_code"),
            lro_fail_next: 0,
        };
        for problem in faults.problems() {
            let key = problem.split_whitespace().next().unwrap_or("faults").to_string();
            faults_section.problem(&key, problem);
        }
        drop(faults_section);
        let mut events_section = section.section("events");
        let events = EventSettings::parse(&mut events_section);
        drop(events_section);
        let settings = Self {
            listen,
            client_id: section.value("client_id"),
            client_secret: section.secret("client_secret").unwrap_or_else(|| SecretString::from(DEFAULT_CLIENT_SECRET)),
            token_ttl: section.duration("token_ttl"),
            transition: section.duration("transition"),
            seed: section.value("seed"),
            snapshot: section.optional("snapshot"),
            page_size: section.value("page_size"),
            max_body_bytes: section.value("max_body_bytes"),
            request_log_limit: section.value("request_log_limit"),
            quotas,
            faults,
            events,
        };
        section.check("token_ttl", settings.token_ttl >= Duration::from_secs(1), "must be at least 1s");
        section.check("page_size", settings.page_size >= 1, "must be at least 1");
        section.check("max_body_bytes", settings.max_body_bytes >= 1024, "must be at least 1024");
        section.check("client_id", !settings.client_id.is_empty(), "must not be empty");
        settings
    }
}

/// Failures of the emulator as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The snapshot could not be read or written.
    #[error("snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
    /// The Event Grid endpoint is not a usable URL (the message never repeats the URL).
    #[error("invalid Event Grid endpoint: {reason}")]
    InvalidEndpoint { reason: String },
    /// No live event of that name (in that account).
    #[error("the live event {name:?} does not exist")]
    LiveEventNotFound { name: String },
    /// Several accounts have a live event of that name.
    #[error("several accounts have a live event {name:?}; name the account as subscription/resourceGroup/account")]
    AmbiguousLiveEvent { name: String },
    /// The live event is not Running, so an encoder cannot connect to it or change its stream.
    #[error("the live event {name:?} is {state}, not Running")]
    LiveEventNotRunning { name: String, state: String },
    /// The encoder must be connected for this.
    #[error("no encoder is connected to the live event {name:?}")]
    EncoderNotConnected { name: String },
}

impl Error {
    /// The HTTP status and code `/_emulator/` answers this error with.
    fn introspection_status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::LiveEventNotFound { .. } => (StatusCode::NOT_FOUND, "LiveEventNotFound"),
            Self::AmbiguousLiveEvent { .. } => (StatusCode::BAD_REQUEST, "AmbiguousLiveEvent"),
            Self::LiveEventNotRunning { .. } => (StatusCode::CONFLICT, "LiveEventNotRunning"),
            Self::EncoderNotConnected { .. } => (StatusCode::CONFLICT, "EncoderNotConnected"),
            Self::InvalidEndpoint { .. } => (StatusCode::BAD_REQUEST, "BadRequest"),
            Self::Bind { .. } | Self::Snapshot { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }
}

/// One logged request, as `/_emulator/requests` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// Milliseconds since the emulator started, when the request arrived.
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The JSON body, if it was JSON (token requests are not logged with their body).
    pub body: Option<Value>,
    /// The status answered, or that would have been answered when the response was dropped.
    pub status: u16,
    /// `throttled`, `error`, `dropped`, or `null`.
    pub fault: Option<String>,
    /// The `Retry-After` sent, in seconds.
    pub retry_after: Option<u64>,
}

/// The emulator: settings, world, request log and token table, shared by all connections.
#[derive(Debug, Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    clock: SharedClock,
    started: Instant,
    world: Mutex<World>,
    log: Mutex<RequestLog>,
    /// Issued bearer tokens and when they expire.
    tokens: Mutex<HashMap<String, Instant>>,
    /// Wakes the delivery task: events were queued, or the subscription was validated.
    wake_deliveries: Notify,
    /// Wakes the heartbeat task: an encoder's schedule changed.
    wake_heartbeats: Notify,
    /// The address `serve` listens on, for the validation URL.
    address: OnceLock<SocketAddr>,
}

#[derive(Debug, Default)]
struct RequestLog {
    next_seq: u64,
    entries: VecDeque<LoggedRequest>,
}

impl Emulator {
    /// A fresh emulator; no account exists until a path names it.
    pub fn new(settings: Settings, clock: SharedClock) -> Self {
        let outbox = Outbox::new(&settings.events, settings.request_log_limit);
        let world = World::new(faults::FaultState::new(settings.faults.clone(), settings.seed), outbox);
        Self {
            inner: Arc::new(Inner {
                settings,
                clock,
                started: Instant::now(),
                world: Mutex::new(world),
                log: Mutex::new(RequestLog { next_seq: 1, entries: VecDeque::new() }),
                tokens: Mutex::new(HashMap::new()),
                wake_deliveries: Notify::new(),
                wake_heartbeats: Notify::new(),
                address: OnceLock::new(),
            }),
        }
    }

    /// The settings it was started with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The logged requests, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.inner.log).entries.iter().cloned().collect()
    }

    /// The current fault settings.
    pub fn faults(&self) -> Faults {
        lock(&self.inner.world).faults.settings.clone()
    }

    /// Replaces the fault settings; returns the problems if they are invalid.
    pub fn set_faults(&self, faults: Faults) -> Result<(), Vec<String>> {
        let problems = faults.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        lock(&self.inner.world).faults.settings = faults;
        Ok(())
    }

    /// Forgets every account, operation, encoder, queued event and logged request or delivery;
    /// faults and the subscription's validation stay as they are.
    pub fn reset(&self) {
        let mut world = lock(&self.inner.world);
        world.accounts.clear();
        world.operations.clear();
        world.encoders.clear();
        world.outbox.clear();
        drop(world);
        self.inner.wake_heartbeats.notify_one();
        self.inner.wake_deliveries.notify_one();
        let mut log = lock(&self.inner.log);
        log.entries.clear();
        log.next_seq = 1;
    }

    /// Acts on the simulated encoder of `live_event`; `account` (`subscription/resourceGroup/account`)
    /// is needed only when several accounts have a live event of that name.
    pub fn encoder(
        &self,
        live_event: &str,
        account: Option<&str>,
        action: EncoderAction,
    ) -> Result<EncoderStatus, Error> {
        let stamp = self.stamp();
        let now = Instant::now();
        let result = {
            let mut world = lock(&self.inner.world);
            let World { accounts, encoders, outbox, .. } = &mut *world;
            for account in accounts.values_mut() {
                account.settle(now, &stamp.wall);
            }
            let tick = Tick { now, stamp: &stamp, interval: self.inner.settings.events.heartbeat_interval };
            encoders.act(accounts, outbox, account, live_event, action, &tick)
        };
        self.inner.wake_heartbeats.notify_one();
        self.inner.wake_deliveries.notify_one();
        result
    }

    /// Every simulated encoder.
    pub fn encoders(&self) -> Vec<EncoderStatus> {
        lock(&self.inner.world).encoders.statuses()
    }

    /// The delivery log, oldest first: handshakes, delivery attempts and undelivered events.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        lock(&self.inner.world).outbox.log()
    }

    /// The Event Grid validation URL of a handshake (the asynchronous way to validate).
    fn validation_url(&self, code: &str) -> String {
        let mut address = self.inner.address.get().copied().unwrap_or(self.inner.settings.listen);
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let name = &self.inner.settings.events.subscription_name;
        format!("http://{address}/_emulator/eventsubscriptions/{name}/validate?id={code}")
    }

    fn stamp(&self) -> Stamp {
        Stamp { at_ms: self.elapsed_ms(), wall: arm_timestamp(self.inner.clock.now()) }
    }

    /// Loads accounts from a snapshot file.
    pub fn load_snapshot(&self, path: &std::path::Path) -> Result<(), Error> {
        let fail = |reason: String| Error::Snapshot { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
        let accounts: Vec<state::Account> = serde_json::from_str(&text).map_err(|error| fail(error.to_string()))?;
        let mut world = lock(&self.inner.world);
        for account in accounts {
            world.accounts.insert(account.id.key(), account);
        }
        Ok(())
    }

    /// Saves every account to a snapshot file, finishing what is in flight first.
    pub fn save_snapshot(&self, path: &std::path::Path) -> Result<(), Error> {
        let fail = |reason: String| Error::Snapshot { path: path.to_path_buf(), reason };
        let text = {
            let mut world = lock(&self.inner.world);
            world.fast_forward(Instant::now());
            let accounts: Vec<&state::Account> = world.accounts.values().collect();
            serde_json::to_string_pretty(&accounts).map_err(|error| fail(error.to_string()))?
        };
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text).map_err(|error| fail(error.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|error| fail(error.to_string()))
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/_emulator/requests", get(list_requests).delete(clear_requests))
            .route("/_emulator/reset", post(reset))
            .route("/_emulator/faults", get(get_faults).put(put_faults))
            .route("/_emulator/state", get(dump_state))
            .route("/_emulator/encoders", get(list_encoders))
            .route("/_emulator/encoders/{live_event}", post(act_on_encoder))
            .route("/_emulator/deliveries", get(list_deliveries).delete(clear_deliveries))
            .route("/_emulator/eventsubscriptions/{name}/validate", get(validate_subscription))
            .route(
                "/keydelivery/{subscription}/{resource_group}/{account}",
                get(keydelivery::deliver).post(keydelivery::deliver),
            )
            .fallback(pipeline::handle)
            .with_state(self.clone())
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self, mut entry: LoggedRequest) {
        tracing::debug!(method = %entry.method, path = %entry.path, status = entry.status, fault = ?entry.fault, "Request answered.");
        let mut log = lock(&self.inner.log);
        entry.seq = log.next_seq;
        log.next_seq += 1;
        log.entries.push_back(entry);
        while log.entries.len() > self.inner.settings.request_log_limit {
            log.entries.pop_front();
        }
    }
}

/// Binds `settings.listen`, serves until `shutdown`, and handles the snapshot.
pub async fn run(settings: Settings, clock: SharedClock, shutdown: CancellationToken) -> Result<(), Error> {
    let address = settings.listen;
    let listener = TcpListener::bind(address).await.map_err(|source| Error::Bind { address, source })?;
    let snapshot = settings.snapshot.clone();
    let emulator = Emulator::new(settings, clock);
    if let Some(path) = &snapshot
        && path.exists()
    {
        emulator.load_snapshot(path)?;
        tracing::info!(path = %path.display(), "Snapshot loaded.");
    }
    tracing::info!(address = %listener.local_addr().unwrap_or(address), "Emulator listening.");
    serve(listener, emulator.clone(), shutdown).await;
    if let Some(path) = &snapshot {
        emulator.save_snapshot(path)?;
        tracing::info!(path = %path.display(), "Snapshot saved.");
    }
    Ok(())
}

/// Serves `emulator` on `listener` until `shutdown` is cancelled; open connections finish their
/// current request (graceful), for at most five seconds.
pub async fn serve(listener: TcpListener, emulator: Emulator, shutdown: CancellationToken) {
    if let Ok(address) = listener.local_addr() {
        let _ = emulator.inner.address.set(address);
    }
    let router = emulator.router();
    let background = TaskTracker::new();
    background.spawn(
        encoders::heartbeats(emulator.clone(), shutdown.clone()).instrument(tracing::info_span!("emulator_heartbeats")),
    );
    background
        .spawn(events::deliver(emulator.clone(), shutdown.clone()).instrument(tracing::info_span!("emulator_events")));
    background.close();
    let connections = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let kill = Arc::new(Notify::new());
        let service = {
            let kill = Arc::clone(&kill);
            let router = router.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(DropConnection(Arc::clone(&kill)));
                let router = router.clone();
                async move { tower::ServiceExt::oneshot(router, request.map(Body::new)).await }
            })
        };
        let shutdown = shutdown.clone();
        let serving = async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Dropping the connection future closes the socket without a response.
                _ = kill.notified() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        };
        connections.spawn(serving.instrument(tracing::info_span!("emulator_connection")));
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), background.wait()).await;
}

/// Lets a handler close its connection without answering.
#[derive(Debug, Clone)]
struct DropConnection(Arc<Notify>);

// === Token endpoint ===

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

/// `POST /{tenant}/oauth2/v2.0/token`, client-credentials grant, answered like Azure AD v2.
async fn token(State(emulator): State<Emulator>, Path(tenant): Path<String>, request: Request) -> Response {
    let at_ms = emulator.elapsed_ms();
    let path = request.uri().path().to_string();
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024).await.unwrap_or_default();
    let form: TokenRequest = match serde_urlencoded::from_bytes(&body) {
        Ok(form) => form,
        Err(_) => TokenRequest { grant_type: None, client_id: None, client_secret: None, scope: None },
    };
    let settings = &emulator.inner.settings;
    let refuse = |status: StatusCode, error: &str, description: String| (status, error.to_string(), description);
    let outcome = match (&form.grant_type, &form.client_id, &form.client_secret, &form.scope) {
        (Some(grant), _, _, _) if grant != "client_credentials" => Err(refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("AADSTS70003: The grant type '{grant}' is not supported; use client_credentials."),
        )),
        (None, _, _, _) | (_, None, _, _) | (_, _, None, _) | (_, _, _, None) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain grant_type, client_id, client_secret and scope.".into(),
        )),
        (_, Some(id), Some(secret), _)
            if *id != settings.client_id || secret != settings.client_secret.expose_secret() =>
        {
            Err(refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided, or unknown client id.".into(),
            ))
        }
        _ => Ok(()),
    };
    let (status, body) = match outcome {
        Ok(()) => {
            let value = format!("emu.{}", uuid::Uuid::new_v4().simple());
            let expires_in = settings.token_ttl.as_secs();
            let mut tokens = lock(&emulator.inner.tokens);
            let now = Instant::now();
            tokens.retain(|_, expires| *expires > now);
            tokens.insert(value.clone(), now + settings.token_ttl);
            (
                StatusCode::OK,
                json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": value}),
            )
        }
        Err((status, error, description)) => {
            (status, json!({"error": error, "error_description": description, "error_codes": [], "trace_id": tenant}))
        }
    };
    emulator.record(LoggedRequest {
        seq: 0,
        at_ms,
        method: "POST".into(),
        path,
        query: String::new(),
        body: None,
        status: status.as_u16(),
        fault: None,
        retry_after: None,
    });
    (status, axum::Json(body)).into_response()
}

// === /_emulator ===

#[derive(Debug, Deserialize)]
struct Since {
    since: Option<u64>,
}

async fn list_requests(State(emulator): State<Emulator>, Query(since): Query<Since>) -> Response {
    let after = since.since.unwrap_or(0);
    let entries: Vec<LoggedRequest> = emulator.requests().into_iter().filter(|entry| entry.seq > after).collect();
    axum::Json(entries).into_response()
}

async fn clear_requests(State(emulator): State<Emulator>) -> StatusCode {
    lock(&emulator.inner.log).entries.clear();
    StatusCode::NO_CONTENT
}

async fn reset(State(emulator): State<Emulator>) -> StatusCode {
    emulator.reset();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(emulator): State<Emulator>) -> Response {
    axum::Json(emulator.faults()).into_response()
}

async fn put_faults(State(emulator): State<Emulator>, body: axum::body::Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(error) => {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error.to_string()}))).into_response();
        }
    };
    match emulator.set_faults(faults) {
        Ok(()) => axum::Json(emulator.faults()).into_response(),
        Err(problems) => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": problems.join("; ")}))).into_response(),
    }
}

async fn dump_state(State(emulator): State<Emulator>) -> Response {
    let mut world = lock(&emulator.inner.world);
    let now = Instant::now();
    for account in world.accounts.values_mut() {
        account.settle(now, "");
    }
    let accounts: Vec<&state::Account> = world.accounts.values().collect();
    let body = serde_json::to_value(accounts).unwrap_or(Value::Null);
    drop(world);
    axum::Json(body).into_response()
}

async fn list_encoders(State(emulator): State<Emulator>) -> Response {
    axum::Json(emulator.encoders()).into_response()
}

/// The body of `POST /_emulator/encoders/{liveEvent}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncoderRequest {
    action: EncoderAction,
    /// `subscription/resourceGroup/account`, needed only when the name is in several accounts.
    account: Option<String>,
}

async fn act_on_encoder(
    State(emulator): State<Emulator>,
    Path(live_event): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let request: EncoderRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            let body = json!({"error": format!("invalid body: {error}"), "code": "BadRequest"});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    match emulator.encoder(&live_event, request.account.as_deref(), request.action) {
        Ok(status) => axum::Json(status).into_response(),
        Err(error) => {
            let (status, code) = error.introspection_status();
            (status, axum::Json(json!({"error": error.to_string(), "code": code}))).into_response()
        }
    }
}

async fn list_deliveries(State(emulator): State<Emulator>, Query(since): Query<Since>) -> Response {
    let after = since.since.unwrap_or(0);
    let entries: Vec<DeliveryRecord> = emulator.deliveries().into_iter().filter(|entry| entry.seq > after).collect();
    axum::Json(entries).into_response()
}

async fn clear_deliveries(State(emulator): State<Emulator>) -> StatusCode {
    lock(&emulator.inner.world).outbox.clear_log();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct ValidationQuery {
    id: Option<String>,
}

/// `GET` on the validation URL: the asynchronous way to complete the Event Grid handshake.
async fn validate_subscription(
    State(emulator): State<Emulator>,
    Path(name): Path<String>,
    Query(query): Query<ValidationQuery>,
) -> Response {
    let stamp = emulator.stamp();
    let validated = name == emulator.inner.settings.events.subscription_name
        && query.id.as_deref().is_some_and(|code| lock(&emulator.inner.world).outbox.validate_by_url(code, &stamp));
    if !validated {
        let body = json!({"error": "no handshake is waiting for this validation code", "code": "BadRequest"});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    emulator.inner.wake_deliveries.notify_one();
    let body = json!({"message": "Webhook successfully validated as a part of the subscription creation."});
    axum::Json(body).into_response()
}
