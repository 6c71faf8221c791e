//! The operations listener (`[http]`): probes (`/healthz`, `/readyz`), `/metrics`, the JSON API
//! under `/api/v1/` (broadcasts, audit, plan, dead letters, operator commands) with its OpenAPI
//! document, and the dashboard at `/`.
//!
//! It is separate from the webhook ingress on purpose: the ingress may face the internet (Event
//! Grid must reach it), this one is for the operations network. Reads need no credentials
//! unless `http.read_auth` is on (then a viewer token); commands and dead-letter replay need an
//! operator token, broadcast changes (`PUT`, `DELETE`) an admin token (`auth`). Changes and
//! commands are refused outright when no token is configured.

mod api;
pub mod auth;
mod broadcasts;
mod extend;
pub mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::broker::Publisher;
use crate::clock::SharedClock;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::Store;
pub use api::{LISTING_CACHE, dead_letter_budget};
pub use extend::parse_from as parse_plan_from;
pub use listener::Limits;

/// The dashboard, one self-contained page (no external assets).
const DASHBOARD: &str = include_str!("dashboard.html");
/// The OpenAPI document of `/api/v1`, kept in the repository.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `[http]`
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether `onair run` serves the operations listener.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The admin token of earlier versions (named `api_token` in the audit).
    pub api_token: Option<SecretString>,
    /// `[http.tokens.<name>]`: named tokens with their roles.
    pub tokens: Vec<auth::NamedToken>,
    /// Whether reads (the API and `/metrics`) need a viewer token or better.
    pub read_auth: bool,
    /// Slow and idle clients, connections at once.
    pub connections: Limits,
}

impl Settings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let enabled = section.value("enabled");
        let listen = section.value::<String>("listen").parse().unwrap_or_else(|_| {
            section.problem("listen", "expected an address such as 127.0.0.1:8781");
            SocketAddr::from(([127, 0, 0, 1], 8781))
        });
        let api_token = section.secret("api_token");
        if let Some(reason) =
            api_token.as_ref().and_then(|token| auth::weakness(secrecy::ExposeSecret::expose_secret(token)))
        {
            section.check("api_token", false, reason);
        }
        let tokens = auth::parse_tokens(section, api_token.as_ref());
        let read_auth = section.value("read_auth");
        let connections = Limits::parse(section);
        if read_auth && api_token.is_none() && tokens.is_empty() {
            section.problem("read_auth", "needs at least one token (api_token or [http.tokens.<name>]) to read with");
        }
        Self { enabled, listen, api_token, tokens, read_auth, connections }
    }
}

/// What the handlers read and act on.
pub struct Parts {
    pub settings: Settings,
    pub engine: Arc<crate::engine::Settings>,
    pub broker: Arc<crate::broker::Settings>,
    pub store: Arc<dyn Store>,
    pub publisher: Arc<Publisher>,
    pub status: crate::broker::Status,
    pub schedule: crate::schedule::Stats,
    pub metrics: Metrics,
    pub health: Health,
    /// The running set of broadcasts (each with its machine, origin and revision), and the
    /// only way to change it.
    pub catalog: Arc<crate::catalog::Manager>,
    /// One dead-letter listing or replay at a time, and a short cache of the last listing.
    pub dead_letters: api::DeadLetterGate,
    /// The broadcasts' states and pending actions, read at most once per `broadcasts::FRESH`
    /// for however many list requests.
    pub activity: broadcasts::ActivityCache,
    pub clock: SharedClock,
    /// Tells the scheduler of operator commands it handles (`extend`); `None` when it is disabled.
    pub schedule_control: Option<tokio::sync::mpsc::UnboundedSender<crate::schedule::Control>>,
    /// When the daemon started.
    pub started: std::time::Instant,
}

type State = Arc<Parts>;

/// The listener's routes.
pub fn router(parts: Parts) -> Router {
    let state: State = Arc::new(parts);
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/broadcasts", get(broadcasts::list))
        .route("/api/v1/broadcasts/{id}", get(broadcasts::one).put(broadcasts::put).delete(broadcasts::delete))
        .route("/api/v1/broadcasts/{id}/audit", get(api::audit))
        .route("/api/v1/broadcasts/{id}/commands", post(api::command))
        .route("/api/v1/audit", get(api::recent_audit))
        .route("/api/v1/plan", get(extend::plan))
        .route("/api/v1/dead-letters", get(api::dead_letters))
        .route("/api/v1/dead-letters/replay", post(api::replay))
        .fallback(|| async { api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), read_auth))
        .with_state(state)
}

/// Under `http.read_auth`, a read of the API or the metrics needs a viewer token or better.
async fn read_auth(
    axum::extract::State(state): axum::extract::State<State>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let reads = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if state.settings.read_auth
        && reads
        && auth::read_guarded(request.uri().path())
        && let Err(error) = auth::require(&state.settings, request.headers(), auth::Role::Viewer)
    {
        return error.into_response();
    }
    next.run(request).await
}

/// Serves `router` on `listener` within `limits` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, limits: Limits, shutdown: CancellationToken) {
    listener::serve(listener, router, limits, shutdown, "operations").await;
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                ),
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI).into_response()
}

async fn healthz(axum::extract::State(state): axum::extract::State<State>) -> Response {
    axum::Json(json!({"status": "ok", "uptime_seconds": state.started.elapsed().as_secs()})).into_response()
}

async fn readyz(axum::extract::State(state): axum::extract::State<State>) -> Response {
    let readiness = state.health.readiness().await;
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(readiness)).into_response()
}

async fn metrics(axum::extract::State(state): axum::extract::State<State>) -> Response {
    match api::snapshot(&state).await {
        Ok(snapshot) => match state.metrics.render(&snapshot) {
            Ok(text) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                )],
                text,
            )
                .into_response(),
            Err(_) => api::ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding", "cannot encode the metrics")
                .into_response(),
        },
        Err(error) => error.into_response(),
    }
}
