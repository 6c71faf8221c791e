//! `POST /api/v1/reload`: re-read the config file's broadcasts and the machines directory, as
//! SIGHUP does (`daemon::reload` does the work; this hands it the request and returns its answer).
//!
//! Admin only: the bearer token of `http.api_token`, compared in constant time. One reload at a
//! time; a request that finds one already waiting is answered 503 with `Retry-After`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::Parts;
use super::api::ApiError;
use crate::catalog::{ProblemAt, Reloaded};

/// How long a caller waits for the reload it asked for before it gets 503 (the reload still
/// completes; its outcome is logged and audited).
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// What a reload did: the running set's changes, and the settings that changed in the file but
/// only take effect at the next start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub reloaded: Reloaded,
    /// Dotted keys (`http.listen`, `broker.url`, …) whose new value needs a restart.
    pub restart_needed: Vec<String>,
}

impl Report {
    /// The answer's shape (`docs/openapi.json`, `ReloadReport`).
    pub fn to_json(&self) -> serde_json::Value {
        let reloaded = &self.reloaded;
        json!({
            "created": reloaded.created,
            "changed": reloaded.changed,
            "removed": reloaded.removed,
            "retiring": reloaded.retiring,
            "unchanged": reloaded.unchanged,
            "restart_needed": self.restart_needed,
        })
    }
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The file, a machine or the set they would make has problems: every one of them.
    Invalid(Vec<ProblemAt>),
    /// The reload could not be carried out (the store refused the change).
    Failed(String),
}

/// What a reload answers.
pub type Outcome = Result<Report, Refusal>;

/// A request for a reload: where its outcome goes.
pub type Request = oneshot::Sender<Outcome>;

/// Asks the daemon's reload loop for a reload, once the daemon serves reloads (`onair run`
/// does; a daemon started otherwise answers 503). Cloning shares the loop.
#[derive(Debug, Clone, Default)]
pub struct Reloads {
    requests: Arc<OnceLock<mpsc::Sender<Request>>>,
}

impl Reloads {
    /// Connects this handle to the loop that answers: the requests it will receive; `None` when
    /// it is connected already.
    pub fn connect(&self) -> Option<mpsc::Receiver<Request>> {
        // One running and one waiting: a reload reads the file when it starts, so a second
        // waiting request would see nothing newer than the first.
        let (requests, received) = mpsc::channel(1);
        self.requests.set(requests).ok().map(|()| received)
    }
}

/// `POST /api/v1/reload`
pub async fn reload(State(state): State<Arc<Parts>>, headers: HeaderMap) -> Result<Response, ApiError> {
    // A reload changes broadcasts: an admin's.
    super::auth::require(&state.settings, &headers, super::auth::Role::Admin)?;
    let Some(requests) = state.reload.requests.get() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "this daemon was not started from a config file by `onair run`: nothing to reload",
        ));
    };
    let (answer, outcome) = oneshot::channel();
    let stopping =
        || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the daemon is stopping; nothing was reloaded");
    requests.try_send(answer).map_err(|error| match error {
        mpsc::error::TrySendError::Full(_) => busy(),
        mpsc::error::TrySendError::Closed(_) => stopping(),
    })?;
    let outcome = tokio::time::timeout(ANSWER_WITHIN, outcome).await.map_err(|_| busy())?.map_err(|_| stopping())?;
    match outcome {
        Ok(report) => Ok(Json(report.to_json()).into_response()),
        Err(Refusal::Invalid(problems)) => {
            let message = format!(
                "reload refused: {} problem{}; nothing changed",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            let body = json!({"error": {"code": "invalid_config", "message": message, "problems": problems}});
            Ok((StatusCode::BAD_REQUEST, Json(body)).into_response())
        }
        Err(Refusal::Failed(reason)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_failed",
            format!("reload failed, nothing changed: {reason}"),
        )),
    }
}

fn busy() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "reload_busy", "a reload is in progress; retry when it is done")
}
