//! Long-running operation records: `…Operations/{id}` (the `AsyncOperationResult`) and
//! `…/operationLocations/{id}` (202 while in progress, then the resource), for live events,
//! live outputs and streaming endpoints alike.

use axum::http::StatusCode;

use super::arm::{ArmError, ArmResult, Reply};
use super::state::{Account, Env, OperationKind};

/// `GET …Operations/{id}`: the `AsyncOperationResult`.
pub(crate) fn status(account: &Account, env: &Env<'_>, id: &str, kind: OperationKind) -> ArmResult {
    let record = env
        .operations
        .get(id)
        .filter(|record| record.kind == kind && record.account == account.id.key())
        .ok_or_else(|| operation_not_found(id))?;
    let (status, error) = if env.now < record.deadline {
        ("InProgress", serde_json::json!({"code": "None", "message": null, "target": id}))
    } else if let Some(failure) = &record.failure {
        ("Failed", serde_json::json!({"code": failure.code, "message": failure.message, "target": id}))
    } else {
        ("Succeeded", serde_json::json!({"code": "None", "message": null, "target": id}))
    };
    Ok(Reply::ok(serde_json::json!({"error": error, "name": id, "status": status})))
}

/// `GET …/operationLocations/{id}`: 202 while in progress, then the resource (200) or 204 if gone.
pub(crate) fn location(account: &Account, env: &Env<'_>, id: &str) -> ArmResult {
    let record = env
        .operations
        .get(id)
        .filter(|record| record.account == account.id.key())
        .ok_or_else(|| operation_not_found(id))?;
    if env.now < record.deadline {
        return Ok(Reply::json(StatusCode::ACCEPTED, serde_json::json!({})));
    }
    if let Some(failure) = &record.failure {
        let code = failure.code.clone().unwrap_or_default();
        return Err(ArmError::new(StatusCode::BAD_REQUEST, &code, failure.message.clone().unwrap_or_default()));
    }
    let (name, output) = &record.target;
    let found = match (record.kind, output) {
        (OperationKind::LiveEvent, _) => {
            account.live_events.get(&name.to_lowercase()).map(|entry| Reply::ok(&entry.resource))
        }
        (OperationKind::LiveOutput, Some(output)) => account
            .live_events
            .get(&name.to_lowercase())
            .and_then(|entry| entry.outputs.get(&output.to_lowercase()))
            .map(|entry| Reply::ok(&entry.resource)),
        (OperationKind::StreamingEndpoint, _) => {
            account.streaming_endpoints.get(&name.to_lowercase()).map(|entry| Reply::ok(&entry.resource))
        }
        (OperationKind::LiveOutput, None) => None,
    };
    Ok(found.unwrap_or_else(|| Reply::empty(StatusCode::NO_CONTENT)))
}

fn operation_not_found(id: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "OperationNotFound",
        format!("The operation '{id}' was not found or has expired."),
    )
}
