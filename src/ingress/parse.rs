//! Deliveries into events: CloudEvents 1.0 (structured, batch and binary modes) and the Event
//! Grid schema, with the Media Services live event types mapped to onair's.
//!
//! Parsing is strict about what onair needs and lenient about what senders vary (`specVersion`,
//! times without `Z`, ports as numbers). It never panics; a body that cannot be used is a
//! `Malformed` with a reason for the sender.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use crate::event::{self, Event};

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Events to publish.
    Events(Vec<Event>),
    /// Event Grid's subscription validation: answer with the code if the topic is expected.
    Validation { topic: String, code: String },
    /// Event Grid says the subscription was deleted; nothing to do.
    SubscriptionDeleted,
}

/// Why a body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// The Media Services live event types and onair's names for them.
pub const MEDIA_TYPES: [(&str, &str); 10] = [
    ("Microsoft.Media.LiveEventEncoderConnected", "onair.encoder.connected"),
    ("Microsoft.Media.LiveEventEncoderDisconnected", "onair.encoder.disconnected"),
    ("Microsoft.Media.LiveEventIngestHeartbeat", "onair.encoder.heartbeat"),
    ("Microsoft.Media.LiveEventIncomingStreamReceived", "onair.encoder.stream-received"),
    ("Microsoft.Media.LiveEventConnectionRejected", "onair.encoder.rejected"),
    ("Microsoft.Media.LiveEventIncomingDataChunkDropped", "onair.encoder.chunk-dropped"),
    ("Microsoft.Media.LiveEventIncomingStreamsOutOfSync", "onair.encoder.streams-out-of-sync"),
    ("Microsoft.Media.LiveEventIncomingVideoStreamsOutOfSync", "onair.encoder.video-out-of-sync"),
    ("Microsoft.Media.LiveEventTrackDiscontinuityDetected", "onair.encoder.discontinuity"),
    ("Microsoft.Media.LiveEventChannelArchiveHeartbeat", "onair.channel.archive-heartbeat"),
];

/// Event Grid's validation event type.
const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
const DELETION_EVENT: &str = "Microsoft.EventGrid.SubscriptionDeletedEvent";

/// Events sent to `POST /events`: CloudEvents in structured mode (one object, or an array), or in
/// binary mode (`ce-*` headers, the body is the data).
pub fn cloudevents(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, Malformed> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if header("ce-specversion").is_some() {
        return binary(headers, body).map(|event| vec![event]);
    }
    let value: Value = serde_json::from_slice(body).map_err(|error| Malformed(format!("not JSON: {error}")))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => return Err(Malformed(format!("expected a CloudEvent object or an array, found {}", kind(&other)))),
    };
    if items.is_empty() {
        return Err(Malformed("an empty batch".into()));
    }
    items.into_iter().enumerate().map(|(index, item)| structured(item).map_err(|error| at(index, error))).collect()
}

/// Event Grid schema deliveries to `POST /eventgrid`: a JSON array of events.
pub fn eventgrid(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, Malformed> {
    let value: Value = serde_json::from_slice(body).map_err(|error| Malformed(format!("not JSON: {error}")))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => return Err(Malformed(format!("expected an array of Event Grid events, found {}", kind(&other)))),
    };
    let aeg = headers.get("aeg-event-type").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let first_type = items.first().and_then(|item| item["eventType"].as_str()).unwrap_or_default();
    if aeg.eq_ignore_ascii_case("SubscriptionValidation") || first_type == VALIDATION_EVENT {
        let item = items.first().ok_or_else(|| Malformed("an empty validation delivery".into()))?;
        let code = item["data"]["validationCode"]
            .as_str()
            .filter(|code| !code.is_empty())
            .ok_or_else(|| Malformed("a validation event without data.validationCode".into()))?;
        let topic = item["topic"].as_str().unwrap_or_default();
        return Ok(Delivery::Validation { topic: topic.to_string(), code: code.to_string() });
    }
    if aeg.eq_ignore_ascii_case("SubscriptionDeletion") || first_type == DELETION_EVENT {
        return Ok(Delivery::SubscriptionDeleted);
    }
    if items.is_empty() {
        return Err(Malformed("an empty batch".into()));
    }
    let events: Result<Vec<Event>, Malformed> =
        items.into_iter().enumerate().map(|(index, item)| grid_event(item).map_err(|error| at(index, error))).collect();
    events.map(Delivery::Events)
}

fn at(index: usize, error: Malformed) -> Malformed {
    Malformed(format!("event {index}: {}", error.0))
}

/// One structured-mode CloudEvent.
fn structured(item: Value) -> Result<Event, Malformed> {
    let Value::Object(mut object) = item else {
        return Err(Malformed(format!("expected an object, found {}", kind(&item))));
    };
    if let Some(encoded) = object.remove("data_base64") {
        // Binary data has no JSON form onair can reason about; keep it as the string it is.
        object.entry("data").or_insert(encoded);
    }
    finish(Value::Object(object))
}

/// A binary-mode CloudEvent: attributes in `ce-*` headers.
fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Event, Malformed> {
    let mut object = Map::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else { continue };
        let value = value.to_str().map_err(|_| Malformed(format!("header {name} is not text")))?;
        object.insert(attribute.to_string(), Value::String(value.to_string()));
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|content_type| content_type.contains("json"));
    let data = if body.is_empty() {
        Value::Null
    } else if json {
        serde_json::from_slice(body).map_err(|error| Malformed(format!("data is not JSON: {error}")))?
    } else {
        Value::String(String::from_utf8_lossy(body).into_owned())
    };
    object.insert("data".into(), data);
    finish(Value::Object(object))
}

/// One Event Grid schema event, as a CloudEvent.
fn grid_event(item: Value) -> Result<Event, Malformed> {
    let Value::Object(mut grid) = item else {
        return Err(Malformed(format!("expected an object, found {}", kind(&item))));
    };
    let mut object = Map::new();
    for (from, to) in
        [("id", "id"), ("topic", "source"), ("eventType", "type"), ("subject", "subject"), ("eventTime", "time")]
    {
        if let Some(value) = grid.remove(from) {
            object.insert(to.into(), value);
        }
    }
    if !object.contains_key("type") {
        return Err(Malformed("missing eventType".into()));
    }
    object.insert("data".into(), grid.remove("data").unwrap_or(Value::Null));
    object.insert("specversion".into(), Value::String("1.0".into()));
    finish(Value::Object(object))
}

/// Validates the envelope, then maps Media Services types.
fn finish(value: Value) -> Result<Event, Malformed> {
    let size = value.to_string().len();
    if size > event::MAX_EVENT_BYTES {
        return Err(Malformed(format!("event too large: {size} bytes, the limit is {}", event::MAX_EVENT_BYTES)));
    }
    let event = Event::from_value(value).map_err(|error| Malformed(error.to_string()))?;
    Ok(map_media(event))
}

/// A Media Services live event type becomes onair's (`onair.encoder.*`), its subject the
/// channel's (`liveEvent/<name>`); the data is kept, with the original type added as
/// `original_type`. Other events pass unchanged.
pub fn map_media(mut event: Event) -> Event {
    let Some((original, mapped)) = MEDIA_TYPES.iter().find(|(original, _)| *original == event.kind) else {
        return event;
    };
    event.kind = (*mapped).to_string();
    if let Some(name) = channel_of(&event.subject) {
        event.subject = format!("liveEvent/{name}");
    }
    let mut data = match std::mem::take(&mut event.data) {
        Value::Object(data) => data,
        Value::Null => Map::new(),
        other => Map::from_iter([("value".to_string(), other)]),
    };
    data.insert("original_type".into(), Value::String((*original).to_string()));
    event.data = Value::Object(data);
    event
}

/// The live event name in a Media Services subject: `liveEvent/<name>` or the older
/// `/LiveEvents/<name>`.
fn channel_of(subject: &str) -> Option<&str> {
    let trimmed = subject.trim_start_matches('/');
    let (kind, name) = trimmed.split_once('/')?;
    (kind.eq_ignore_ascii_case("liveEvent") || kind.eq_ignore_ascii_case("liveEvents"))
        .then_some(name)
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn media_types_are_mapped_with_the_channel_and_the_original_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("aeg-event-type", HeaderValue::from_static("Notification"));
        let body = br#"[{"topic":"/subscriptions/s/resourceGroups/g/providers/Microsoft.Media/mediaservices/a",
            "subject":"/LiveEvents/news","eventType":"Microsoft.Media.LiveEventEncoderDisconnected",
            "eventTime":"2018-01-16T01:57:26.005121Z","id":"e1","data":{"encoderPort":52859,"resultCode":"S_OK"},
            "dataVersion":"1.0","metadataVersion":"1"}]"#;
        let Delivery::Events(events) = eventgrid(&headers, body).unwrap() else { panic!("events") };
        assert_eq!(events[0].kind, "onair.encoder.disconnected");
        assert_eq!(events[0].subject, "liveEvent/news");
        assert_eq!(events[0].source, "/subscriptions/s/resourceGroups/g/providers/Microsoft.Media/mediaservices/a");
        assert_eq!(events[0].data["original_type"], "Microsoft.Media.LiveEventEncoderDisconnected");
        assert_eq!(events[0].data["encoderPort"], 52859);
    }

    #[test]
    fn validation_and_deletion_are_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert("aeg-event-type", HeaderValue::from_static("SubscriptionValidation"));
        let body = br#"[{"id":"v","topic":"/subscriptions/s/x","subject":"","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime":"2026-11-24T10:00:00Z","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},"dataVersion":"1"}]"#;
        assert_eq!(
            eventgrid(&headers, body).unwrap(),
            Delivery::Validation {
                topic: "/subscriptions/s/x".into(),
                code: "512d38b6-c7b8-40c8-89fe-f46f9e9622b6".into()
            }
        );
        headers.insert("aeg-event-type", HeaderValue::from_static("SubscriptionDeletion"));
        assert_eq!(eventgrid(&headers, b"[]").unwrap(), Delivery::SubscriptionDeleted);
    }

    #[test]
    fn binary_mode_takes_attributes_from_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "b1"),
            ("ce-type", "onair.command.pause"),
            ("ce-source", "playout"),
            ("ce-subject", "news"),
            ("content-type", "application/json"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let events = cloudevents(&headers, br#"{"reason":"rehearsal"}"#).unwrap();
        assert_eq!(
            (events[0].id.as_str(), events[0].kind.as_str(), events[0].subject.as_str()),
            ("b1", "onair.command.pause", "news")
        );
        assert_eq!(events[0].data["reason"], "rehearsal");
    }

    #[test]
    fn malformed_bodies_say_why() {
        let headers = HeaderMap::new();
        for (body, reason) in [
            (&b"{"[..], "not JSON"),
            (b"42", "expected a CloudEvent object"),
            (b"[]", "an empty batch"),
            (br#"[{"id":"1","type":"t","source":"s"}]"#, "event 0: missing attribute subject"),
            (br#"[{"id":"1","type":"t","source":"s","subject":"x","specversion":"0.3"}]"#, "specversion"),
        ] {
            let error = cloudevents(&headers, body).unwrap_err();
            assert!(error.0.contains(reason), "{}: {}", String::from_utf8_lossy(body), error.0);
        }
        assert!(eventgrid(&headers, br#"[{"id":"1","subject":"s"}]"#).unwrap_err().0.contains("missing eventType"));
    }
}
