//! The event envelope: CloudEvents 1.0 in JSON, and the event types onair emits or understands.
//!
//! Every input (RabbitMQ, the local inbox, webhooks, the executor's results, durable timers)
//! becomes an `Event` before it reaches the engine. Parsing is strict about what onair needs
//! (`id`, `type`, `subject`) and lenient about the rest, since senders differ (`specVersion` vs
//! `specversion`, times without an offset). A message that is not a valid envelope gets a
//! `event::Error` saying why; it never panics.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Schedule steps: data `{broadcast, occurrence, step, planned}`.
pub const SCHEDULE_FIRED: &str = "onair.schedule.fired";
/// A durable machine timer came due: data `{timer, state, due}`.
pub const TIMER_FIRED: &str = "onair.timer.fired";
/// An action of the outbox finished: data `{action, outbox_id, params, result}`.
pub const ACTION_SUCCEEDED: &str = "onair.action.succeeded";
/// An action of the outbox failed after its retries: data `{action, outbox_id, params, error}`.
pub const ACTION_FAILED: &str = "onair.action.failed";
/// The prefix of operator commands (`start-now`, `stop-now`, `pause`, `resume`, `skip-next`, `force-state`).
pub const COMMAND_PREFIX: &str = "onair.command.";
/// The operator command that sets a broadcast's state by force (handled by `machine::step` itself).
pub const FORCE_STATE: &str = "onair.command.force-state";
/// What the `notify` action publishes.
pub const NOTIFICATION: &str = "onair.notification";
/// An encoder heartbeat (`Microsoft.Media.LiveEventIngestHeartbeat`), subject `liveEvent/<channel>`.
pub const ENCODER_HEARTBEAT: &str = "onair.encoder.heartbeat";

/// The operator commands onair knows.
pub const COMMANDS: [&str; 6] = ["start-now", "stop-now", "pause", "resume", "skip-next", "force-state"];

/// The largest event onair accepts, in bytes of JSON.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// A CloudEvents 1.0 envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique with `source`; onair deduplicates on it.
    pub id: String,
    /// Who sent it (a URI reference).
    pub source: String,
    /// What happened, for example `onair.schedule.fired`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is about: a broadcast id, or `liveEvent/<channel>`.
    pub subject: String,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// The payload (JSON).
    #[serde(default)]
    pub data: Value,
    /// Always `1.0`.
    pub specversion: String,
}

/// Why bytes are not a usable event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Larger than `MAX_EVENT_BYTES`.
    #[error("event too large: {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a CloudEvents object.
    #[error("not a CloudEvents envelope: {0}")]
    Shape(String),
    /// A required attribute is missing or empty.
    #[error("missing attribute {0}")]
    Missing(&'static str),
    /// An attribute has an unusable value.
    #[error("invalid attribute {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl Event {
    /// A new event with the current `time` and `specversion` 1.0.
    pub fn new(
        id: impl Into<String>,
        kind: impl Into<String>,
        subject: impl Into<String>,
        data: Value,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: id.into(),
            source: "onair".into(),
            kind: kind.into(),
            subject: subject.into(),
            time: Some(at),
            data,
            specversion: "1.0".into(),
        }
    }

    /// Parses and validates one event from JSON bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(Error::TooLarge { size: bytes.len(), limit: MAX_EVENT_BYTES });
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|error| Error::NotJson(error.to_string()))?;
        Self::from_value(value)
    }

    /// Validates one event given as JSON.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        let Value::Object(mut object) = value else {
            return Err(Error::Shape("expected a JSON object".into()));
        };
        let text = |object: &mut Map<String, Value>, name: &'static str| -> Result<String, Error> {
            match object.remove(name) {
                Some(Value::String(text)) if !text.trim().is_empty() => Ok(text),
                Some(Value::String(_)) | Some(Value::Null) | None => Err(Error::Missing(name)),
                Some(other) => Err(Error::Invalid { name, reason: format!("expected a string, found {other}") }),
            }
        };
        let specversion = match object.remove("specversion").or_else(|| object.remove("specVersion")) {
            None => "1.0".to_string(),
            Some(Value::String(version)) if version == "1.0" => version,
            Some(other) => {
                return Err(Error::Invalid { name: "specversion", reason: format!("expected \"1.0\", found {other}") });
            }
        };
        let id = text(&mut object, "id")?;
        let kind = text(&mut object, "type")?;
        let subject = text(&mut object, "subject")?;
        let source = match object.remove("source") {
            Some(Value::String(source)) if !source.is_empty() => source,
            _ => "unknown".into(),
        };
        let time = match object.remove("time") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(
                parse_time(&text)
                    .ok_or(Error::Invalid { name: "time", reason: format!("{text:?} is not an RFC 3339 time") })?,
            ),
            Some(other) => {
                return Err(Error::Invalid { name: "time", reason: format!("expected a string, found {other}") });
            }
        };
        if id.len() > 512 {
            return Err(Error::Invalid { name: "id", reason: "longer than 512 characters".into() });
        }
        let data = object.remove("data").unwrap_or(Value::Null);
        Ok(Self { id, source, kind, subject, time, data, specversion })
    }

    /// The JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The command name of an `onair.command.*` event.
    pub fn command(&self) -> Option<&str> {
        self.kind.strip_prefix(COMMAND_PREFIX)
    }
}

/// RFC 3339, or the same without an offset (taken as UTC), as some senders write it.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).map(|time| time.with_timezone(&Utc)).ok().or_else(|| {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|naive| naive.and_utc())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_envelope_parses() {
        let event = Event::parse(
            br#"{"specversion":"1.0","id":"e1","source":"/x","type":"onair.schedule.fired","subject":"news","time":"2026-11-24T18:00:00Z","data":{"step":"air"}}"#,
        )
        .unwrap();
        assert_eq!(event.kind, SCHEDULE_FIRED);
        assert_eq!(event.data["step"], "air");
        assert_eq!(event.time.unwrap().to_rfc3339(), "2026-11-24T18:00:00+00:00");
    }

    #[test]
    fn lenient_where_senders_differ() {
        let event = Event::from_value(json!({"specVersion": "1.0", "id": "e", "type": "t", "subject": "s", "time": "2021-05-14T23:50:00.3240000"})).unwrap();
        assert_eq!(event.source, "unknown");
        assert!(event.time.is_some());
    }

    #[test]
    fn every_kind_of_bad_input_has_its_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"{nope", "not JSON"),
            (b"[1,2]", "not a CloudEvents envelope"),
            (br#"{"id":"e","type":"t"}"#, "missing attribute subject"),
            (br#"{"id":"","type":"t","subject":"s"}"#, "missing attribute id"),
            (br#"{"id":"e","type":"t","subject":"s","specversion":"0.3"}"#, "invalid attribute specversion"),
            (br#"{"id":"e","type":"t","subject":"s","time":"yesterday"}"#, "invalid attribute time"),
            (br#"{"id":"e","type":7,"subject":"s"}"#, "invalid attribute type"),
        ];
        for (bytes, reason) in cases {
            let error = Event::parse(bytes).unwrap_err().to_string();
            assert!(error.starts_with(reason), "{error}");
        }
        let big = format!(r#"{{"id":"e","type":"t","subject":"s","data":"{}"}}"#, "x".repeat(MAX_EVENT_BYTES));
        assert!(matches!(Event::parse(big.as_bytes()), Err(Error::TooLarge { .. })));
    }
}
