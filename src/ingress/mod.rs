//! Webhook ingress: an HTTP listener that takes events from encoders, Event Grid and other
//! systems, authenticates them, and publishes them to RabbitMQ like any other input.
//!
//! - `POST /events`: CloudEvents 1.0, structured (one event or a batch) or binary mode;
//!   `OPTIONS /events`: the CloudEvents abuse-protection handshake.
//! - `POST /eventgrid`: Event Grid schema deliveries, including the subscription validation
//!   handshake (`{"validationResponse": code}` for configured topics only).
//!
//! Every request goes through the same steps, and the first that fails answers: the body limit
//! (413, before any parsing), authentication (401: an HMAC signature or a query key, `auth`),
//! parsing (400 with the reason, `parse`), then publishing with confirms (503 while the broker is
//! away, so the sender retries). A delivery is answered 2xx only after every event in it is
//! confirmed by RabbitMQ; none of the refusals changes anything. Events about no configured
//! broadcast are acknowledged and dropped (counted), so that a busy account's heartbeats do not
//! fill the dead-letter queue.

pub mod auth;
pub mod parse;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::broker::Publisher;
use crate::clock::SharedClock;
use crate::engine::Broadcast;
use crate::event::Event;
pub use auth::{KEY_PARAMETER, SIGNATURE_HEADER, Secrets, sign};
use parse::Delivery;

/// `[ingress]` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether `onair run` listens for webhooks.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The largest body accepted, in bytes (413 beyond, before any parsing).
    pub max_body_bytes: usize,
    /// How old (or how far ahead) a signature's timestamp may be.
    pub replay_window: Duration,
    /// HMAC secrets and query keys; several of each during a rotation.
    pub secrets: Secrets,
    /// Event Grid topics whose subscription validation is answered.
    pub topics: Vec<String>,
    /// Origins the CloudEvents handshake is answered for (`WebHook-Request-Origin`).
    pub allowed_origins: Vec<String>,
    /// Slow and idle clients, connections at once.
    pub connections: crate::http::Limits,
}

impl Settings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let split = |secret: Option<SecretString>| -> Vec<SecretString> {
            secret.map_or_else(Vec::new, |secret| {
                secret
                    .expose_secret()
                    .split(['\n', ','])
                    .map(str::trim)
                    .filter(|part| !part.is_empty())
                    .map(|part| SecretString::from(part.to_string()))
                    .collect()
            })
        };
        let settings = Self {
            enabled: section.value("enabled"),
            listen: section.value::<String>("listen").parse().unwrap_or_else(|_| {
                section.problem("listen", "expected an address such as 127.0.0.1:8780");
                SocketAddr::from(([127, 0, 0, 1], 8780))
            }),
            max_body_bytes: section.value("max_body_bytes"),
            replay_window: section.duration("replay_window"),
            secrets: Secrets { hmac: split(section.secret("hmac_secrets")), keys: split(section.secret("query_keys")) },
            topics: section.value("topics"),
            allowed_origins: section.value("allowed_origins"),
            connections: crate::http::Limits::parse(section),
        };
        section.check("max_body_bytes", settings.max_body_bytes >= 1024, "must be at least 1024");
        section.check(
            "replay_window",
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&settings.replay_window),
            "must be between 1s and 1h",
        );
        let short =
            settings.secrets.hmac.iter().chain(&settings.secrets.keys).any(|secret| secret.expose_secret().len() < 16);
        section.check("hmac_secrets", !short, "every secret and key must be at least 16 characters");
        section.check(
            "hmac_secrets",
            !settings.enabled || settings.secrets.any(),
            "the ingress is enabled but has no hmac_secrets and no query_keys: every delivery would be refused",
        );
        settings
    }
}

/// What the ingress counted, for tests and (later) metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub deliveries: AtomicU64,
    pub accepted_events: AtomicU64,
    pub ignored_events: AtomicU64,
    pub replays: AtomicU64,
    pub too_large: AtomicU64,
    pub unauthorized: AtomicU64,
    pub malformed: AtomicU64,
    pub unavailable: AtomicU64,
    pub handshakes: AtomicU64,
    pub refused_handshakes: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BTreeMap::from([
            ("deliveries", load(&self.deliveries)),
            ("accepted_events", load(&self.accepted_events)),
            ("ignored_events", load(&self.ignored_events)),
            ("replays", load(&self.replays)),
            ("too_large", load(&self.too_large)),
            ("unauthorized", load(&self.unauthorized)),
            ("malformed", load(&self.malformed)),
            ("unavailable", load(&self.unavailable)),
            ("handshakes", load(&self.handshakes)),
            ("refused_handshakes", load(&self.refused_handshakes)),
        ])
    }
}

/// Signed deliveries seen within the replay window, so that a replay is answered without
/// publishing again (the engine would absorb it anyway: same event ids).
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(i64, [u8; 32])>,
    set: HashSet<[u8; 32]>,
}

impl Seen {
    /// Records a delivery; `false` if it was already seen.
    fn insert(&mut self, timestamp: i64, digest: [u8; 32], now: i64, window: i64) -> bool {
        while self.order.front().is_some_and(|(at, _)| *at < now - window * 2) {
            if let Some((_, old)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        if !self.set.insert(digest) {
            return false;
        }
        self.order.push_back((timestamp, digest));
        true
    }
}

struct Inner {
    settings: Settings,
    publisher: Arc<Publisher>,
    clock: SharedClock,
    /// Subjects that reach a broadcast: broadcast ids and `liveEvent/<channel>`.
    subjects: HashSet<String>,
    stats: Arc<Stats>,
    seen: Mutex<Seen>,
}

/// The ingress: its router and counters.
#[derive(Clone)]
pub struct Ingress {
    inner: Arc<Inner>,
}

impl Ingress {
    pub fn new(
        settings: Settings,
        broadcasts: &BTreeMap<String, Broadcast>,
        publisher: Arc<Publisher>,
        clock: SharedClock,
    ) -> Self {
        let mut subjects: HashSet<String> = broadcasts.keys().cloned().collect();
        subjects.extend(broadcasts.values().map(|broadcast| format!("liveEvent/{}", broadcast.channel)));
        let inner = Inner { settings, publisher, clock, subjects, stats: Arc::default(), seen: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.inner.stats)
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/events", post(events).options(handshake))
            .route("/eventgrid", post(eventgrid).options(handshake))
            .with_state(self.clone())
    }

    /// Reads the body, up to the limit (413 beyond it, without looking at what was read).
    async fn read(&self, body: Body) -> Result<Bytes, Box<Response>> {
        match axum::body::to_bytes(body, self.inner.settings.max_body_bytes).await {
            Ok(bytes) => Ok(bytes),
            Err(_) => {
                Stats::bump(&self.inner.stats.deliveries);
                Stats::bump(&self.inner.stats.too_large);
                let limit = self.inner.settings.max_body_bytes;
                Err(Box::new(refuse(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is larger than {limit} bytes"))))
            }
        }
    }

    /// The body of an admitted request: read within the limit, authenticated, not a replay.
    async fn receive(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Bytes, Box<Response>> {
        let body = self.read(body).await?;
        match self.admit(query, headers, &body) {
            Some(response) => Err(Box::new(response)),
            None => Ok(body),
        }
    }

    /// Checks the authentication of a request (and whether it is a replay); the response when it
    /// is not to be processed.
    fn admit(&self, query: &HashMap<String, String>, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
        let inner = &self.inner;
        Stats::bump(&inner.stats.deliveries);
        let signature = headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok());
        let now = inner.clock.now();
        let window = inner.settings.replay_window;
        match inner.settings.secrets.check(query.get(KEY_PARAMETER).map(String::as_str), signature, body, now, window) {
            Ok(auth::Authenticated::Key) => None,
            Ok(auth::Authenticated::Signature { timestamp }) => {
                use sha2::Digest;
                let digest: [u8; 32] = sha2::Sha256::new()
                    .chain_update(signature.unwrap_or_default().as_bytes())
                    .chain_update(body)
                    .finalize()
                    .into();
                let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
                let fresh = inner.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(
                    timestamp,
                    digest,
                    now.timestamp(),
                    window,
                );
                if fresh {
                    None
                } else {
                    Stats::bump(&inner.stats.replays);
                    Some((StatusCode::OK, axum::Json(json!({"accepted": 0, "replay": true}))).into_response())
                }
            }
            Err(rejection) => {
                Stats::bump(&inner.stats.unauthorized);
                tracing::warn!(reason = %rejection, "Webhook delivery refused.");
                Some(refuse(StatusCode::UNAUTHORIZED, "unauthorized"))
            }
        }
    }

    /// Publishes the events about configured broadcasts, with confirms.
    async fn publish(&self, events: Vec<Event>) -> Response {
        let stats = &self.inner.stats;
        let total = events.len();
        let events: Vec<Event> =
            events.into_iter().filter(|event| self.inner.subjects.contains(&event.subject)).collect();
        let ignored = total - events.len();
        stats.ignored_events.fetch_add(ignored as u64, Ordering::Relaxed);
        if ignored > 0 {
            tracing::debug!(ignored, "Webhook events about no configured broadcast dropped.");
        }
        if !events.is_empty() {
            if let Err(error) = self.inner.publisher.publish_many(&events).await {
                Stats::bump(&stats.unavailable);
                tracing::warn!(%error, events = events.len(), "Cannot publish webhook events; answering 503 so the sender retries.");
                let mut response = refuse(StatusCode::SERVICE_UNAVAILABLE, "the broker is unavailable; retry later");
                response.headers_mut().insert("retry-after", HeaderValue::from_static("5"));
                return response;
            }
            stats.accepted_events.fetch_add(events.len() as u64, Ordering::Relaxed);
        }
        (StatusCode::OK, axum::Json(json!({"accepted": events.len(), "ignored": ignored}))).into_response()
    }
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({"error": reason}))).into_response()
}

fn malformed(ingress: &Ingress, error: parse::Malformed) -> Response {
    Stats::bump(&ingress.inner.stats.malformed);
    refuse(StatusCode::BAD_REQUEST, &error.0)
}

async fn events(
    State(ingress): State<Ingress>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match ingress.receive(&query, &headers, body).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    match parse::cloudevents(&headers, &body) {
        Ok(events) => ingress.publish(events).await,
        Err(error) => malformed(&ingress, error),
    }
}

async fn eventgrid(
    State(ingress): State<Ingress>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match ingress.receive(&query, &headers, body).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    match parse::eventgrid(&headers, &body) {
        Ok(Delivery::Events(events)) => ingress.publish(events).await,
        Ok(Delivery::Validation { topic, code }) => {
            let stats = &ingress.inner.stats;
            if ingress.inner.settings.topics.iter().any(|known| known.eq_ignore_ascii_case(&topic)) {
                Stats::bump(&stats.handshakes);
                tracing::info!(%topic, "Event Grid subscription validated.");
                (StatusCode::OK, axum::Json(json!({"validationResponse": code}))).into_response()
            } else {
                Stats::bump(&stats.refused_handshakes);
                tracing::warn!(%topic, "Event Grid validation for a topic not in ingress.topics refused.");
                refuse(StatusCode::FORBIDDEN, "this topic is not expected here")
            }
        }
        Ok(Delivery::SubscriptionDeleted) => {
            tracing::warn!("Event Grid says the subscription was deleted.");
            (StatusCode::OK, axum::Json(json!({"accepted": 0}))).into_response()
        }
        Err(error) => malformed(&ingress, error),
    }
}

/// The CloudEvents webhook abuse-protection handshake (`OPTIONS`), for allowed origins only.
async fn handshake(
    State(ingress): State<Ingress>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    debug_assert_eq!(method, Method::OPTIONS);
    if let Some(response) = ingress.admit(&query, &headers, b"") {
        return response;
    }
    let stats = &ingress.inner.stats;
    let origin = headers.get("webhook-request-origin").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let allowed = &ingress.inner.settings.allowed_origins;
    if origin.is_empty() || !allowed.iter().any(|known| known == "*" || known.eq_ignore_ascii_case(origin)) {
        Stats::bump(&stats.refused_handshakes);
        return refuse(StatusCode::FORBIDDEN, "this origin is not expected here");
    }
    Stats::bump(&stats.handshakes);
    let mut response = StatusCode::OK.into_response();
    let headers_out = response.headers_mut();
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers_out.insert("webhook-allowed-origin", origin);
    }
    headers_out.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    headers_out.insert("allow", HeaderValue::from_static("POST, OPTIONS"));
    response
}

/// Serves the ingress on `listener` within `[ingress]`'s connection limits until `shutdown`; requests in
/// flight finish.
pub async fn serve(listener: tokio::net::TcpListener, ingress: Ingress, shutdown: CancellationToken) {
    let limits = ingress.inner.settings.connections;
    crate::http::listener::serve(listener, ingress.router(), limits, shutdown, "ingress").await;
}
