//! Webhook ingress: an HTTP listener that takes events from encoders, Event Grid and other
//! systems, authenticates them, and publishes them to RabbitMQ like any other input.
//!
//! - `POST /events`: CloudEvents 1.0, structured (one event or a batch) or binary mode;
//!   `OPTIONS /events`: the CloudEvents abuse-protection handshake.
//! - `POST /eventgrid`: Event Grid schema deliveries, including the subscription validation
//!   handshake (`{"validationResponse": code}` for configured topics only).
//!
//! Every request goes through the same steps, and the first that fails answers: the body limit
//! (413, before any parsing) and authentication (401: an HMAC signature or a query key, `auth`;
//! a query key is checked before the body is read, a signature after, since it covers the body),
//! then, holding one of `MAX_CONCURRENT_BODIES` permits taken only once authenticated, parsing (400 with the reason, `parse`), the trust boundary (400 for onair's own event types,
//! 403 for operator commands not allowed here, `policy`), then publishing with confirms (503
//! while the broker is away, so the sender retries). A delivery is answered 2xx only after every
//! event in it is confirmed by RabbitMQ; none of the refusals changes anything. Events about no
//! configured broadcast, or of a type not accepted here, are acknowledged and dropped (counted),
//! so that a busy account's heartbeats do not fill the dead-letter queue.
//!
//! A signed delivery is recorded as seen (its replays answered `{"replay": true}` without
//! publishing) only once its events are confirmed; an identical delivery arriving meanwhile waits
//! for the first one's outcome, so that a failed first attempt never turns its retry into a
//! "replay" and loses it.

pub mod auth;
pub mod parse;
pub mod policy;

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
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::broker::Publisher;
use crate::clock::SharedClock;
use crate::event::Event;
pub use auth::{KEY_PARAMETER, SIGNATURE_HEADER, Secrets, sign};
use parse::Delivery;
pub use policy::{Proof, external_id};

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
    /// Event types accepted besides the mapped Media Services types (exact, or a prefix ending
    /// in `*`); never `onair.*`.
    pub allowed_types: Vec<String>,
    /// Whether operator commands (`onair.command.*`) are accepted, in signed deliveries only.
    pub accept_commands: bool,
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
            allowed_types: section.value("allowed_types"),
            accept_commands: section.value("accept_commands"),
        };
        section.check(
            "allowed_types",
            !settings.allowed_types.iter().any(|kind| policy::covers_reserved(kind) || kind.is_empty()),
            "onair.* types are onair's own and never come from outside; list external types (exact, or a prefix ending in *)",
        );
        section.check(
            "accept_commands",
            !settings.enabled || !settings.accept_commands || !settings.secrets.hmac.is_empty(),
            "operator commands need signed deliveries: set hmac_secrets, or turn accept_commands off",
        );
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
    pub refused_types: AtomicU64,
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
            ("refused_types", load(&self.refused_types)),
            ("unavailable", load(&self.unavailable)),
            ("handshakes", load(&self.handshakes)),
            ("refused_handshakes", load(&self.refused_handshakes)),
        ])
    }
}

/// Signed deliveries seen within the replay window, by the digest of their signed content, so
/// that a replay is answered without publishing again (the engine would absorb it anyway: same
/// event ids). At most `SEEN_CAPACITY` entries: beyond, the oldest are forgotten first (a replay
/// of one of those is published again and absorbed by the engine as a duplicate).
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(i64, [u8; 32])>,
    set: HashSet<[u8; 32]>,
}

/// The most signed deliveries remembered for replay detection (about 100 bytes each).
const SEEN_CAPACITY: usize = 100_000;

impl Seen {
    fn contains(&self, digest: &[u8; 32]) -> bool {
        self.set.contains(digest)
    }

    /// Forgets what is older than the window (a replay of it is stale anyway), then records.
    fn insert(&mut self, timestamp: i64, digest: [u8; 32], now: i64, window: i64) {
        let horizon = now.saturating_sub(window);
        while self.order.front().is_some_and(|(at, _)| *at < horizon) || self.order.len() >= SEEN_CAPACITY {
            if let Some((_, old)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        if self.set.insert(digest) {
            self.order.push_back((timestamp, digest));
        }
    }
}

/// Replay detection: deliveries seen, and deliveries being published right now.
#[derive(Debug, Default)]
struct Replays {
    seen: Seen,
    /// Each in-flight delivery's digest, with a receiver that is closed when it is decided.
    in_flight: HashMap<[u8; 32], watch::Receiver<()>>,
}

/// A signed delivery being processed: recorded as seen by `confirm` (once its events are
/// confirmed); dropped without it (refused, 503, the client went away), the delivery is not
/// recorded and its retry is processed as new. Either way the identical deliveries waiting for
/// it go on.
struct Claim {
    inner: Arc<Inner>,
    digest: [u8; 32],
    timestamp: i64,
    /// Dropped with the claim: closes the waiters' receivers.
    _decided: watch::Sender<()>,
}

impl Claim {
    fn confirm(self) {
        let now = self.inner.clock.now().timestamp();
        let window = i64::try_from(self.inner.settings.replay_window.as_secs()).unwrap_or(i64::MAX);
        self.inner.replays().seen.insert(self.timestamp, self.digest, now, window);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.inner.replays().in_flight.remove(&self.digest);
    }
}

struct Inner {
    settings: Settings,
    boundary: policy::Boundary,
    publisher: Arc<Publisher>,
    clock: SharedClock,
    /// Subjects that reach a broadcast: broadcast ids and `liveEvent/<channel>`.
    /// The running set: a delivery's events are published only for broadcasts it has.
    registry: crate::catalog::Registry,
    stats: Arc<Stats>,
    replays: Mutex<Replays>,
    /// Bounds the deliveries parsed and published at once (see `MAX_CONCURRENT_BODIES`).
    bodies: Arc<Semaphore>,
    /// Where deliveries are parsed (see `Parsers`).
    parsers: Parsers,
}

impl Inner {
    fn replays(&self) -> std::sync::MutexGuard<'_, Replays> {
        // A panic while holding the lock cannot leave the maps inconsistent (single inserts and
        // removes), so a poisoned lock is used as it is.
        crate::sync::lock(&self.replays)
    }
}

/// How many authenticated deliveries may be parsed and published at once; more wait, holding
/// only their body (up to `max_body_bytes`; unauthenticated requests never wait here). A 10,000-event batch parses into several times its body (JSON trees,
/// then events): without a bound, a burst of them multiplies the peak, and the allocator keeps
/// the peak's pages.
pub const MAX_CONCURRENT_BODIES: usize = 4;

/// How many threads parse deliveries.
pub const PARSE_THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

/// A few dedicated threads that parse deliveries. A 10,000-event batch parses into JSON trees and
/// events several times its body; parsed on the runtime's threads, each of them (one per core)
/// ends up with its own malloc arena holding that peak, and the daemon's resident memory grows
/// with the number of cores. Parsed here, the peaks stay in `PARSE_THREADS` arenas (and the
/// runtime's threads are not blocked by a large parse). The threads end when the ingress is
/// dropped.
struct Parsers {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Parsers {
    fn start() -> Self {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..PARSE_THREADS {
            let receiver = Arc::clone(&receiver);
            let span = tracing::info_span!(parent: None, "ingress_parser", parser = index);
            let spawned = std::thread::Builder::new().name(format!("onair-ingress-parse-{index}")).spawn(move || {
                let _entered = span.enter();
                loop {
                    // The lock is held only while taking a job; a poisoned lock still hands jobs out.
                    let job = crate::sync::lock(&receiver).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                }
            });
            if let Err(error) = spawned {
                tracing::error!(%error, "Cannot start an ingress parsing thread; parsing runs on the others.");
            }
        }
        Self { jobs: sender }
    }

    /// Runs `job` on a parsing thread; `None` if no thread could run it (none started, or the job
    /// panicked, which parsing never does by design).
    ///
    /// The job holds the delivery's `permit` until it has run: a handler cancelled while its job
    /// waits (the client went away, the request deadline passed) does not free a permit whose
    /// body is still queued here, so the queue never holds more than `MAX_CONCURRENT_BODIES`
    /// jobs and their bodies.
    async fn run<T: Send + 'static>(
        &self,
        permit: Arc<tokio::sync::OwnedSemaphorePermit>,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let answer = job();
            drop(permit);
            let _ = reply.send(answer);
        });
        self.jobs.send(job).ok()?;
        result.await.ok()
    }
}

/// An admitted request: its body, how it proved itself, and its replay claim when signed.
struct Admitted {
    body: Bytes,
    proof: Proof,
    claim: Option<Claim>,
    /// Held until the delivery is answered, and by its parsing job until that has run.
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// The ingress: its router and counters.
#[derive(Clone)]
pub struct Ingress {
    inner: Arc<Inner>,
}

impl Ingress {
    pub fn new(
        settings: Settings,
        registry: crate::catalog::Registry,
        publisher: Arc<Publisher>,
        clock: SharedClock,
    ) -> Self {
        let boundary = policy::Boundary {
            allowed_types: settings.allowed_types.clone(),
            accept_commands: settings.accept_commands,
        };
        let inner = Inner {
            settings,
            boundary,
            publisher,
            clock,
            registry,
            stats: Arc::default(),
            replays: Mutex::default(),
            bodies: Arc::new(Semaphore::new(MAX_CONCURRENT_BODIES)),
            parsers: Parsers::start(),
        };
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
    /// `counted`: whether the delivery was counted already (authenticated by key first).
    async fn read(&self, body: Body, counted: bool) -> Result<Bytes, Box<Response>> {
        match axum::body::to_bytes(body, self.inner.settings.max_body_bytes).await {
            Ok(bytes) => Ok(bytes),
            Err(_) => {
                if !counted {
                    Stats::bump(&self.inner.stats.deliveries);
                }
                Stats::bump(&self.inner.stats.too_large);
                let limit = self.inner.settings.max_body_bytes;
                Err(Box::new(refuse(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is larger than {limit} bytes"))))
            }
        }
    }

    /// The body of an admitted request: authenticated, read within the limit, not a replay.
    ///
    /// A delivery with a query key (`?key=`, Event Grid) is authenticated before its body is
    /// read: the key is in the URL, so a wrong one is answered 401 without taking a byte of body.
    /// A signed delivery's signature covers its body, which must be read first (within the
    /// request deadline). Either way the parsing permit is taken only once the delivery is
    /// authenticated: unauthenticated requests never queue for it, never hold it.
    async fn receive(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Admitted, Box<Response>> {
        let (body, (proof, claim)) = if query.contains_key(KEY_PARAMETER) {
            // With a key, `Secrets::check` looks at the key alone, never at the body.
            let admitted = self.admit(query, headers, b"").await.map_err(Box::new)?;
            (self.read(body, true).await?, admitted)
        } else {
            let body = self.read(body, false).await?;
            let admitted = self.admit(query, headers, &body).await.map_err(Box::new)?;
            (body, admitted)
        };
        // It bounds the parsing and publishing, where a delivery's memory multiplies. The
        // semaphore is never closed.
        let Ok(permit) = Arc::clone(&self.inner.bodies).acquire_owned().await else {
            return Err(Box::new(refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down")));
        };
        Ok(Admitted { body, proof, claim, permit: Arc::new(permit) })
    }

    /// Checks the authentication of a request (and whether it is a replay); the response when it
    /// is not to be processed.
    async fn admit(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(Proof, Option<Claim>), Response> {
        let inner = &self.inner;
        Stats::bump(&inner.stats.deliveries);
        let signature = headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok());
        let now = inner.clock.now();
        let window = inner.settings.replay_window;
        match inner.settings.secrets.check(query.get(KEY_PARAMETER).map(String::as_str), signature, body, now, window) {
            Ok(auth::Authenticated::Key) => Ok((Proof::Key, None)),
            Ok(auth::Authenticated::Signature { timestamp }) => {
                let digest = auth::signed_content_digest(timestamp, body);
                match self.claim(digest, timestamp).await {
                    Some(claim) => Ok((Proof::Signature, Some(claim))),
                    None => {
                        Stats::bump(&inner.stats.replays);
                        Err((StatusCode::OK, axum::Json(json!({"accepted": 0, "replay": true}))).into_response())
                    }
                }
            }
            Err(rejection) => {
                Stats::bump(&inner.stats.unauthorized);
                tracing::warn!(reason = %rejection, "Webhook delivery refused.");
                Err(refuse(StatusCode::UNAUTHORIZED, "unauthorized"))
            }
        }
    }

    /// The claim on a signed delivery, or `None` if it was seen already. An identical delivery in
    /// flight is waited for: seen once it is confirmed, claimed anew if it failed.
    async fn claim(&self, digest: [u8; 32], timestamp: i64) -> Option<Claim> {
        loop {
            let mut waiting = {
                let mut replays = self.inner.replays();
                if replays.seen.contains(&digest) {
                    return None;
                }
                match replays.in_flight.get(&digest) {
                    Some(receiver) => receiver.clone(),
                    None => {
                        let (sender, receiver) = watch::channel(());
                        replays.in_flight.insert(digest, receiver);
                        return Some(Claim { inner: Arc::clone(&self.inner), digest, timestamp, _decided: sender });
                    }
                }
            };
            // Returns (with an error) when the claim is dropped: confirmed or not, look again.
            while waiting.changed().await.is_ok() {}
        }
    }

    /// Parses an admitted delivery with `parser` on the parsing threads (holding its permit);
    /// 503 when no parsing thread can run it.
    async fn parse<T: Send + 'static>(
        &self,
        headers: &HeaderMap,
        admitted: &Admitted,
        parser: fn(&HeaderMap, &[u8]) -> T,
    ) -> Result<T, Box<Response>> {
        let (headers, body) = (headers.clone(), admitted.body.clone());
        self.inner.parsers.run(Arc::clone(&admitted.permit), move || parser(&headers, &body)).await.ok_or_else(|| {
            Box::new(refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot parse deliveries right now; retry later"))
        })
    }

    /// Publishes the accepted events about configured broadcasts, with confirms; records a
    /// signed delivery as seen only once they are confirmed.
    async fn publish(&self, events: Vec<Event>, admitted: Admitted) -> Response {
        let stats = &self.inner.stats;
        let (events, unlisted) = match self.inner.boundary.sort(events, admitted.proof) {
            Ok(sorted) => sorted,
            Err(refusal) => {
                Stats::bump(&stats.refused_types);
                tracing::warn!(reason = %refusal, proof = ?admitted.proof, "Webhook delivery refused at the trust boundary.");
                let status = if refusal.forbidden() { StatusCode::FORBIDDEN } else { StatusCode::BAD_REQUEST };
                return refuse(status, &refusal.to_string());
            }
        };
        let total = events.len() + unlisted;
        let catalog = self.inner.registry.current();
        let events: Vec<Event> =
            events.into_iter().filter(|event| !catalog.targets(&event.subject).is_empty()).collect();
        let ignored = total - events.len();
        stats.ignored_events.fetch_add(ignored as u64, Ordering::Relaxed);
        if ignored > 0 {
            tracing::debug!(
                ignored,
                unlisted,
                "Webhook events about no configured broadcast, or of types not accepted here, dropped."
            );
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
        if let Some(claim) = admitted.claim {
            claim.confirm();
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
    let admitted = match ingress.receive(&query, &headers, body).await {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let parsed = match ingress.parse(&headers, &admitted, parse::cloudevents).await {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    match parsed {
        Ok(events) => ingress.publish(events, admitted).await,
        Err(error) => malformed(&ingress, error),
    }
}

async fn eventgrid(
    State(ingress): State<Ingress>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let admitted = match ingress.receive(&query, &headers, body).await {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let parsed = match ingress.parse(&headers, &admitted, parse::eventgrid).await {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    match parsed {
        Ok(Delivery::Events(events)) => ingress.publish(events, admitted).await,
        Ok(Delivery::Validation { topic, code }) => {
            let stats = &ingress.inner.stats;
            if ingress.inner.settings.topics.iter().any(|known| known.eq_ignore_ascii_case(&topic)) {
                Stats::bump(&stats.handshakes);
                tracing::info!(%topic, "Event Grid subscription validated.");
                if let Some(claim) = admitted.claim {
                    claim.confirm();
                }
                (StatusCode::OK, axum::Json(json!({"validationResponse": code}))).into_response()
            } else {
                Stats::bump(&stats.refused_handshakes);
                tracing::warn!(%topic, "Event Grid validation for a topic not in ingress.topics refused.");
                refuse(StatusCode::FORBIDDEN, "this topic is not expected here")
            }
        }
        Ok(Delivery::SubscriptionDeleted) => {
            tracing::warn!("Event Grid says the subscription was deleted.");
            if let Some(claim) = admitted.claim {
                claim.confirm();
            }
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
    let claim = match ingress.admit(&query, &headers, b"").await {
        Ok((_, claim)) => claim,
        Err(response) => return response,
    };
    let stats = &ingress.inner.stats;
    let origin = headers.get("webhook-request-origin").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let allowed = &ingress.inner.settings.allowed_origins;
    if origin.is_empty() || !allowed.iter().any(|known| known == "*" || known.eq_ignore_ascii_case(origin)) {
        Stats::bump(&stats.refused_handshakes);
        return refuse(StatusCode::FORBIDDEN, "this origin is not expected here");
    }
    Stats::bump(&stats.handshakes);
    if let Some(claim) = claim {
        claim.confirm();
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::{PARSE_THREADS, Parsers};
    use crate::config::{Error, Source};
    use crate::daemon::load;

    #[tokio::test]
    async fn a_cancelled_delivery_keeps_its_permit_until_its_queued_parse_has_run() {
        let parsers = Parsers::start();
        // Both parsing threads busy until their senders are dropped.
        let mut blockers = Vec::new();
        for _ in 0..PARSE_THREADS {
            let (blocker, blocked) = std::sync::mpsc::channel::<()>();
            parsers.jobs.send(Box::new(move || while blocked.recv().is_ok() {})).unwrap();
            blockers.push(blocker);
        }
        // Three deliveries whose handlers are cancelled while their parse is queued (the client
        // left, or the request deadline passed).
        let permits = Arc::new(Semaphore::new(3));
        for _ in 0..3 {
            let permit = Arc::new(Arc::clone(&permits).acquire_owned().await.unwrap());
            let body = axum::body::Bytes::from(vec![b'x'; 1 << 20]);
            let parse = parsers.run(permit, move || body.len());
            assert!(tokio::time::timeout(Duration::from_millis(20), parse).await.is_err(), "parsing is blocked");
        }
        // Their jobs (and bodies) are still queued: their permits are not free for new deliveries.
        assert_eq!(permits.available_permits(), 0, "a queued job holds its delivery's permit");
        drop(blockers);
        let started = std::time::Instant::now();
        while permits.available_permits() < 3 {
            assert!(started.elapsed() < Duration::from_secs(5), "the queued jobs ran and released their permits");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let permit = Arc::new(Arc::clone(&permits).acquire_owned().await.unwrap());
        assert_eq!(parsers.run(permit, || 42).await, Some(42));
        assert_eq!(permits.available_permits(), 3);
    }

    fn problems(file: &str, env: &[(&str, &str)]) -> Vec<String> {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("onair.toml");
        std::fs::write(&path, file).unwrap();
        let env = env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        match load(&Source { file: Some(path), env }) {
            Ok(_) => Vec::new(),
            Err(Error::Invalid(problems)) => problems.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_boundary_settings_default_to_closed_and_cannot_open_onairs_own_types() {
        let settings = load(&Source::default()).unwrap().ingress;
        assert!(settings.allowed_types.is_empty());
        assert!(!settings.accept_commands);
        let secrets = [("ONAIR__INGRESS__HMAC_SECRETS", "hmac-secret-0123456789")];
        assert_eq!(
            problems(
                "[ingress]\nallowed_types = [\"com.example.cue\", \"org.playout.*\"]\naccept_commands = true\n",
                &secrets
            ),
            Vec::<String>::new()
        );
        for listed in ["onair.action.succeeded", "onair.*", "Onair.timer.fired", "*", "o*", "ONAIR*", "onair.t*"] {
            let found = problems(&format!("[ingress]\nallowed_types = [\"{listed}\"]\n"), &[]);
            assert!(found.iter().any(|problem| problem.contains("ingress.allowed_types")), "{listed}: {found:?}");
        }
        let keys_only = [("ONAIR__INGRESS__QUERY_KEYS", "query-key-0123456789")];
        let found = problems("[ingress]\nenabled = true\naccept_commands = true\n", &keys_only);
        assert!(found.iter().any(|problem| problem.contains("ingress.accept_commands")), "{found:?}");
    }
}
