//! The operations listener (`[http]`): probes (`/healthz`, `/readyz`), `/metrics`, the JSON API
//! under `/api/v1/` (broadcasts, audit, plan, dead letters, operator commands) with its OpenAPI
//! document, and the dashboard at `/`.
//!
//! It is separate from the webhook ingress on purpose: the ingress may face the internet (Event
//! Grid must reach it), this one is for the operations network. Reads need no credentials;
//! every `POST` needs the bearer token of `http.api_token`, compared in constant time, and is
//! refused outright when no token is configured.

mod api;
pub mod listener;
pub mod reload;

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
    /// The bearer token operator commands need; commands are refused without one.
    pub api_token: Option<SecretString>,
    /// Slow and idle clients, connections at once.
    pub connections: Limits,
}

impl Settings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let settings = Self {
            enabled: section.value("enabled"),
            listen: section.value::<String>("listen").parse().unwrap_or_else(|_| {
                section.problem("listen", "expected an address such as 127.0.0.1:8781");
                SocketAddr::from(([127, 0, 0, 1], 8781))
            }),
            api_token: section.secret("api_token"),
            connections: Limits::parse(section),
        };
        if let Some(token) = &settings.api_token {
            let token = secrecy::ExposeSecret::expose_secret(token).trim();
            section.check("api_token", token.len() >= 16, "must be at least 16 characters");
            section.check(
                "api_token",
                !token.chars().any(char::is_whitespace),
                "must not contain spaces (a bearer token is one word)",
            );
        }
        settings
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
    /// Asks the daemon to reload its config file (`POST /api/v1/reload`).
    pub reload: reload::Reloads,
    pub clock: SharedClock,
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
        .route("/api/v1/broadcasts", get(api::broadcasts))
        .route("/api/v1/broadcasts/{id}", get(api::broadcast))
        .route("/api/v1/broadcasts/{id}/audit", get(api::audit))
        .route("/api/v1/broadcasts/{id}/commands", post(api::command))
        .route("/api/v1/audit", get(api::recent_audit))
        .route("/api/v1/plan", get(api::plan))
        .route("/api/v1/dead-letters", get(api::dead_letters))
        .route("/api/v1/dead-letters/replay", post(api::replay))
        .route("/api/v1/reload", post(reload::reload))
        .fallback(|| async { api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
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
