//! Schedule operations of `/api/v1`: the `extend` command (the occurrence on air ends later, or
//! earlier) and the plan with what the scheduler holds.
//!
//! `extend` is handled by onair itself, not by the broadcast's machine: the scheduler task moves
//! the end and cooldown steps of the occurrence on air, records the move (a schedule hold, and an
//! audit row of kind `command`) and only then answers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::json;

use super::Parts;
use super::api::ApiError;
use crate::schedule::{Control, ExtendError, Extension};

/// The longest an `extend` may move an end: a week.
const MAX_EXTENSION: TimeDelta = TimeDelta::days(7);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extend {
    command: String,
    by: Option<String>,
    until: Option<String>,
    note: Option<String>,
}

/// Whether a command body asks for `extend` (handled here, not published to the machine).
pub fn is_extend(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Named {
        command: Option<String>,
    }
    serde_json::from_slice::<Named>(body).is_ok_and(|named| named.command.as_deref() == Some("extend"))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_command", message)
}

/// What an `extend` body asks for, read strictly: exactly one of `by` (a positive duration such as
/// `30m`, at most a week) and `until` (an RFC 3339 instant, at most a week from `now`).
fn extension(body: &[u8], now: DateTime<Utc>) -> Result<(Extension, Option<String>), ApiError> {
    let request: Extend =
        serde_json::from_slice(body).map_err(|error| bad(format!("not an extend command: {error}")))?;
    debug_assert_eq!(request.command, "extend");
    let note = request.note.as_deref().map(str::trim).filter(|note| !note.is_empty()).map(str::to_string);
    if note.as_deref().is_some_and(|note| note.chars().count() > 500) {
        return Err(bad("the note is longer than 500 characters"));
    }
    let extension = match (request.by.as_deref().map(str::trim), request.until.as_deref().map(str::trim)) {
        (Some(by), None) => {
            let by = humantime::parse_duration(by)
                .ok()
                .and_then(|by| TimeDelta::from_std(by).ok())
                .ok_or_else(|| bad(format!("by: {by:?} is not a duration such as \"30m\" or \"1h30m\"")))?;
            if by <= TimeDelta::zero() || by > MAX_EXTENSION {
                return Err(bad("by: must be more than 0 and at most 7 days"));
            }
            Ok(Extension::By(by))
        }
        (None, Some(until)) => {
            let until = DateTime::parse_from_rfc3339(until)
                .map_err(|_| bad(format!("until: {until:?} is not an RFC 3339 instant such as 2026-11-24T20:30:00Z")))?
                .with_timezone(&Utc);
            if until > now + MAX_EXTENSION {
                return Err(bad("until: must be within 7 days from now"));
            }
            Ok(Extension::Until(until))
        }
        (Some(_), Some(_)) => Err(bad("extend takes one of by and until, not both")),
        (None, None) => Err(bad("extend needs by (a duration such as \"30m\") or until (an RFC 3339 instant)")),
    }?;
    Ok((extension, note))
}

/// `POST /api/v1/broadcasts/{id}/commands` with `{"command": "extend", ...}`, once the caller is
/// authorized and the broadcast known: 200 with the new end and cooldown once recorded; 409 when
/// nothing is on air, the broadcast has no scheduled occurrence, or the new cooldown would run into
/// the next occurrence's warm-up.
pub async fn command(state: &Arc<Parts>, id: &str, body: &[u8]) -> Result<Response, ApiError> {
    let (extension, note) = extension(body, state.clock.now())?;
    let conflict =
        |code: &'static str, error: ExtendError| ApiError::new(StatusCode::CONFLICT, code, error.to_string());
    let Some(controls) = &state.schedule_control else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "scheduler_disabled",
            "the scheduler is not enabled (scheduler.enabled = false): nothing is scheduled to extend",
        ));
    };
    let stopped =
        || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "scheduler_stopped", "the scheduler is not running");
    let (reply, answer) = tokio::sync::oneshot::channel();
    let control = Control::Extend { broadcast: id.to_string(), extension, who: "api".into(), note, reply };
    controls.send(control).map_err(|_| stopped())?;
    match answer.await.map_err(|_| stopped())? {
        Ok(extended) => {
            tracing::info!(broadcast = %id, occurrence = %extended.occurrence, "Extend command applied.");
            Ok((StatusCode::OK, Json(json!({"command": "extend", "extended": extended}))).into_response())
        }
        Err(error @ ExtendError::NotScheduled(_)) => Err(conflict("not_scheduled", error)),
        Err(error @ ExtendError::NotOnAir(_)) => Err(conflict("not_on_air", error)),
        Err(error @ ExtendError::Overlap { .. }) => Err(conflict("overlap", error)),
        Err(error @ ExtendError::TooEarly { .. }) => Err(bad(error.to_string())),
        Err(error @ (ExtendError::Store(_) | ExtendError::Stopped)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", error.to_string()))
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PlanQuery {
    hours: Option<u32>,
    broadcast: Option<String>,
    from: Option<String>,
}

/// A date (`2027-03-28`, its 00:00 UTC) or an RFC 3339 instant.
pub fn parse_from(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(text).ok().map(|at| at.with_timezone(&Utc))
}

/// `GET /api/v1/plan?hours=&broadcast=&from=`: with the schedule holds (extended ends, occurrences
/// kept through a schedule change).
pub async fn plan(State(state): State<Arc<Parts>>, Query(query): Query<PlanQuery>) -> Result<Response, ApiError> {
    let hours = query.hours.unwrap_or(24);
    if !(1..=168).contains(&hours) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", "hours must be between 1 and 168"));
    }
    let catalog = state.catalog.registry().current();
    if let Some(id) = &query.broadcast
        && !catalog.contains(id)
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_broadcast", format!("no broadcast {id:?}")));
    }
    let from = match query.from.as_deref() {
        None => state.clock.now(),
        Some(text) => parse_from(text).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_parameter",
                "from must be a date (2027-03-28, its 00:00 UTC) or an RFC 3339 instant",
            )
        })?,
    };
    let store = Arc::clone(&state.store);
    let holds = tokio::task::spawn_blocking(move || store.schedule_holds())
        .await
        .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", error.to_string()))?
        .map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("cannot read the store: {error}"),
            )
        })?;
    // Holds of broadcasts no longer in the running set are not shown.
    let holds: Vec<_> = holds.holds.into_iter().filter(|hold| catalog.contains(&hold.broadcast)).collect();
    let to = from.checked_add_signed(TimeDelta::hours(i64::from(hours))).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let rows = crate::schedule::plan::plan_with(&catalog.scheduled(), query.broadcast.as_deref(), from, hours, &holds);
    Ok(Json(json!({"from": stamp(from), "to": stamp(to), "rows": rows})).into_response())
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
