//! Event Grid deliveries: the events of the simulated encoders, sent to one webhook the way an
//! Event Grid subscription on the account's system topic sends them.
//!
//! - Event Grid schema: the `SubscriptionValidationEvent` handshake first (a 200 echoing the
//!   validation code, or a `GET` on the validation URL), then one `POST` per event with a JSON array
//!   of one event and the `aeg-*` headers.
//! - CloudEvents 1.0: the `OPTIONS` abuse-protection handshake first (a 200 with
//!   `WebHook-Allowed-Origin`), then one `POST` per event with a single structured-mode event.
//!
//! Success is 200 to 204 only. A failure is retried after a doubling backoff (`retry_initial` up to
//! `retry_max`) until `max_attempts`, then the event is dropped as dead. One queue, in order: a
//! failing event delays the ones behind it. Every attempt is recorded in the delivery log
//! (`/_emulator/deliveries`).
//!
//! The endpoint may carry a secret in its query (`?code=…`): only `scheme://host:port/path` is
//! ever logged, shown or put in an error.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Emulator, Error, lock};

/// `eventType` of the Event Grid validation handshake.
pub const VALIDATION_EVENT_TYPE: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// The origin Event Grid announces in the CloudEvents abuse-protection handshake.
pub const WEBHOOK_ORIGIN: &str = "eventgrid.azure.net";
/// The delivery rate (per minute) asked for in the CloudEvents handshake.
const WEBHOOK_RATE: &str = "120";
/// `dataVersion` of the Media Services events.
const DATA_VERSION: &str = "1.0";
/// `metadataVersion` of the Event Grid schema.
const METADATA_VERSION: &str = "1";
/// The CloudEvents specification version.
const SPEC_VERSION: &str = "1.0";
/// Largest answer read from the webhook, in bytes (the validation response is small).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The webhook the emulator delivers to. Its query (and any user information) may hold a
/// secret, so `Debug` and `Display` show `scheme://host:port/path` only.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(url::Url);

impl Endpoint {
    /// An absolute `http` or `https` URL with a host; the error never repeats the text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let url = url::Url::parse(text).map_err(|error| Error::InvalidEndpoint { reason: error.to_string() })?;
        Self::new(url)
    }

    /// Checks the scheme and host of `url`.
    pub fn new(url: url::Url) -> Result<Self, Error> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidEndpoint {
                reason: format!("unsupported scheme {:?}; use http or https", url.scheme()),
            });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::InvalidEndpoint { reason: "the URL has no host".into() });
        }
        Ok(Self(url))
    }

    /// `scheme://host:port/path`: what may be logged.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let host = url.host_str().unwrap_or_default();
        match url.port_or_known_default() {
            Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
            None => format!("{}://{host}{}", url.scheme(), url.path()),
        }
    }

    /// The full URL, secret included: for sending only.
    pub fn expose_url(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Endpoint({})", self.redacted())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.redacted())
    }
}

/// The event schema of the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSchema {
    /// Event Grid schema: a JSON array of events, validation by `SubscriptionValidationEvent`.
    EventGrid,
    /// CloudEvents 1.0 structured mode, validation by the `OPTIONS` handshake.
    CloudEvents,
}

/// `[emulator.events]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSettings {
    /// The webhook events are delivered to; without it events are only logged.
    pub endpoint: Option<Endpoint>,
    pub schema: EventSchema,
    /// The resource id of the account whose system topic the subscription is on; only its events
    /// are delivered. Without it, the subscription takes every account's events and its handshake
    /// names the topic of the first event to deliver.
    pub topic: Option<String>,
    /// Sent as `aeg-subscription-name`.
    pub subscription_name: String,
    /// Interval between ingest heartbeats of one track (20 s on the real service).
    pub heartbeat_interval: Duration,
    /// First wait before a failed attempt is retried; it doubles after each failure.
    pub retry_initial: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
    /// Attempts per event before it is dropped as dead.
    pub max_attempts: u32,
    /// Time limit of one attempt.
    pub timeout: Duration,
}

impl EventSettings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        // Not `section.url`: its problems quote the text, and this one may hold a secret.
        let endpoint = section.optional::<String>("endpoint").and_then(|text| match Endpoint::parse(&text) {
            Ok(endpoint) => Some(endpoint),
            Err(error) => {
                section.problem("endpoint", error.to_string());
                None
            }
        });
        let schema_text: String = section.value("schema");
        let schema = match schema_text.as_str() {
            "eventgrid" => EventSchema::EventGrid,
            "cloudevents" => EventSchema::CloudEvents,
            other => {
                section.problem("schema", format!("expected \"eventgrid\" or \"cloudevents\", not {other:?}"));
                EventSchema::EventGrid
            }
        };
        let topic = section.optional::<String>("topic").and_then(|text| {
            let topic = account_topic(&text);
            if topic.is_none() {
                section.problem(
                    "topic",
                    format!(
                        "expected subscription/resourceGroup/account or \
                         /subscriptions/…/resourceGroups/…/providers/Microsoft.Media/mediaservices/…, not {text:?}"
                    ),
                );
            }
            topic
        });
        let settings = Self {
            endpoint,
            schema,
            topic,
            subscription_name: section.value("subscription_name"),
            heartbeat_interval: section.duration("heartbeat_interval"),
            retry_initial: section.duration("retry_initial"),
            retry_max: section.duration("retry_max"),
            max_attempts: section.value("max_attempts"),
            timeout: section.duration("timeout"),
        };
        for (key, problem) in settings.problems() {
            section.check(key, false, &problem);
        }
        settings
    }

    /// Every reason these settings cannot be used, by key.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let name = &self.subscription_name;
        if !(3..=64).contains(&name.len()) || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            problems.push(("subscription_name", "must be 3 to 64 letters, digits and hyphens".to_string()));
        }
        for (key, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("retry_initial", self.retry_initial),
            ("timeout", self.timeout),
        ] {
            if value < Duration::from_millis(1) {
                problems.push((key, "must be at least 1ms".to_string()));
            }
        }
        if self.retry_max < self.retry_initial {
            problems.push(("retry_max", "must be at least retry_initial".to_string()));
        }
        if self.max_attempts == 0 {
            problems.push(("max_attempts", "must be at least 1".to_string()));
        }
        problems
    }

    /// The wait after the failed attempt `delivery_count` (0 for the first): doubling, capped.
    pub fn backoff(&self, delivery_count: u32) -> Duration {
        let factor = 2u32.saturating_pow(delivery_count.min(31));
        self.retry_initial.saturating_mul(factor).min(self.retry_max)
    }
}

/// The resource id of an account, from `subscription/resourceGroup/account` or the resource id itself.
pub fn account_topic(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.trim_matches('/').split('/').collect();
    let named = |part: &str| !part.is_empty() && !part.contains(char::is_whitespace);
    match parts.as_slice() {
        [subscription, group, account] if [subscription, group, account].iter().all(|part| named(part)) => {
            Some(format!(
                "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Media/mediaservices/{account}"
            ))
        }
        [s, subscription, g, group, p, namespace, m, account]
            if s.eq_ignore_ascii_case("subscriptions")
                && g.eq_ignore_ascii_case("resourceGroups")
                && p.eq_ignore_ascii_case("providers")
                && namespace.eq_ignore_ascii_case("Microsoft.Media")
                && m.eq_ignore_ascii_case("mediaservices")
                && [subscription, group, account].iter().all(|part| named(part)) =>
        {
            Some(format!(
                "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Media/mediaservices/{account}"
            ))
        }
        _ => None,
    }
}

/// One Media Services event, before it is put in the subscription's schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MediaEvent {
    pub id: String,
    /// `/subscriptions/…/providers/Microsoft.Media/mediaservices/{account}`.
    pub topic: String,
    /// `liveEvent/{name}`.
    pub subject: String,
    pub event_type: String,
    pub event_time: String,
    pub data: Value,
}

impl MediaEvent {
    pub fn new(topic: String, subject: String, event_type: &str, event_time: &str, data: Value) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            topic,
            subject,
            event_type: event_type.to_string(),
            event_time: event_time.to_string(),
            data,
        }
    }

    /// The event in the Event Grid schema (delivered inside an array).
    pub fn event_grid(&self) -> Value {
        json!({
            "id": self.id,
            "topic": self.topic,
            "subject": self.subject,
            "eventType": self.event_type,
            "eventTime": self.event_time,
            "data": self.data,
            "dataVersion": DATA_VERSION,
            "metadataVersion": METADATA_VERSION,
        })
    }

    /// The event as a CloudEvents 1.0 structured-mode object.
    pub fn cloud_event(&self) -> Value {
        json!({
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.topic,
            "subject": self.subject,
            "type": self.event_type,
            "time": self.event_time,
            "data": self.data,
        })
    }
}

/// One line of the delivery log, as `/_emulator/deliveries` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Order of recording, from 1.
    pub seq: u64,
    /// Milliseconds since the emulator started.
    pub at_ms: u64,
    /// Wall-clock time of the record, ARM-formatted.
    pub time: String,
    /// `validation` (a handshake attempt) or `notification` (an event).
    pub kind: String,
    /// The event id (the validation code for an Event Grid handshake; empty for `OPTIONS`).
    pub event_id: String,
    /// The event type (`Microsoft.EventGrid.SubscriptionValidationEvent` or `OPTIONS` for handshakes).
    pub event_type: String,
    pub subject: String,
    /// The `aeg-delivery-count` of the attempt: 0 for the first.
    pub attempt: u32,
    /// The status the webhook answered.
    pub status: Option<u16>,
    /// Why the attempt failed (timeout, connection, status, wrong validation answer).
    pub error: Option<String>,
    /// `delivered`, `validated`, `retrying`, `dead` or `undelivered` (no endpoint).
    pub outcome: String,
    /// The event's `data` (absent for handshakes).
    pub data: Option<Value>,
}

/// When something is recorded: elapsed and wall-clock time.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    pub at_ms: u64,
    pub wall: String,
}

/// The subscription's handshake.
#[derive(Debug, Clone, PartialEq)]
enum Validation {
    /// Not validated yet: the code of the handshake and the attempts made.
    Pending {
        code: String,
        attempts: u32,
    },
    Validated,
}

/// What the delivery task should do next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Job {
    Idle,
    Validate { code: String, attempt: u32, topic: String },
    Deliver { event: MediaEvent, attempt: u32 },
}

impl Job {
    /// What a retry waits for: the validation code or the event id.
    fn identity(&self) -> Option<&str> {
        match self {
            Job::Idle => None,
            Job::Validate { code, .. } => Some(code),
            Job::Deliver { event, .. } => Some(&event.id),
        }
    }
}

/// What became of an event after a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    Yes,
    /// Failed; it stays at the head of the queue.
    Retry,
    /// Failed for the last time; dropped.
    Dead,
    /// No longer queued (an emulator reset, or the queue overflowed meanwhile).
    Gone,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attempt {
    pub status: Option<u16>,
    /// `None` when the attempt succeeded.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
struct Queued {
    event: MediaEvent,
    /// Failed attempts so far, the `aeg-delivery-count` of the next one.
    attempts: u32,
}

/// Events waiting for delivery and the delivery log. Lives in the `World`, behind its mutex.
#[derive(Debug)]
pub(crate) struct Outbox {
    has_endpoint: bool,
    topic: Option<String>,
    max_attempts: u32,
    limit: usize,
    queue: VecDeque<Queued>,
    validation: Validation,
    log: VecDeque<DeliveryRecord>,
    next_seq: u64,
}

impl Outbox {
    pub fn new(settings: &EventSettings, limit: usize) -> Self {
        Self {
            has_endpoint: settings.endpoint.is_some(),
            topic: settings.topic.clone(),
            max_attempts: settings.max_attempts.max(1),
            limit: limit.max(1),
            queue: VecDeque::new(),
            validation: Validation::Pending { code: uuid::Uuid::new_v4().to_string(), attempts: 0 },
            log: VecDeque::new(),
            next_seq: 1,
        }
    }

    /// Queues an event for delivery; without an endpoint it is only recorded as undelivered.
    pub fn push(&mut self, event: MediaEvent, stamp: &Stamp) {
        if !self.has_endpoint {
            let record = notification_record(&event, 0, "undelivered", None, Some("not delivered: no endpoint".into()));
            self.record(record, stamp);
            return;
        }
        if let Some(topic) = self.topic.as_ref().filter(|topic| !topic.eq_ignore_ascii_case(&event.topic)) {
            let error = format!("not delivered: the subscription is on {topic}");
            let record = notification_record(&event, 0, "undelivered", None, Some(error));
            self.record(record, stamp);
            return;
        }
        self.queue.push_back(Queued { event, attempts: 0 });
        while self.queue.len() > self.limit {
            if let Some(dropped) = self.queue.pop_front() {
                let error = Some("dropped: the delivery queue is full".to_string());
                let record = notification_record(&dropped.event, dropped.attempts, "dead", None, error);
                self.record(record, stamp);
            }
        }
    }

    pub fn next_job(&self) -> Job {
        if !self.has_endpoint {
            return Job::Idle;
        }
        if let Validation::Pending { code, attempts } = &self.validation {
            // The handshake names the subscription's topic: the configured one, or the first event's.
            let topic = self.topic.clone().or_else(|| self.queue.front().map(|head| head.event.topic.clone()));
            return match topic {
                Some(topic) => Job::Validate { code: code.clone(), attempt: *attempts, topic },
                None => Job::Idle,
            };
        }
        match self.queue.front() {
            Some(head) => Job::Deliver { event: head.event.clone(), attempt: head.attempts },
            None => Job::Idle,
        }
    }

    /// Records a handshake attempt; true when the subscription is now validated.
    pub fn validation_done(&mut self, code: &str, schema: EventSchema, attempt: &Attempt, stamp: &Stamp) -> bool {
        let Validation::Pending { code: pending, attempts } = &mut self.validation else {
            return true;
        };
        if pending != code {
            return false;
        }
        let delivery_count = *attempts;
        let validated = attempt.error.is_none();
        if validated {
            self.validation = Validation::Validated;
        } else {
            *attempts = attempts.saturating_add(1);
        }
        let (event_id, event_type) = match schema {
            EventSchema::EventGrid => (code.to_string(), VALIDATION_EVENT_TYPE.to_string()),
            EventSchema::CloudEvents => (String::new(), "OPTIONS".to_string()),
        };
        let record = DeliveryRecord {
            seq: 0,
            at_ms: 0,
            time: String::new(),
            kind: "validation".into(),
            event_id,
            event_type,
            subject: String::new(),
            attempt: delivery_count,
            status: attempt.status,
            error: attempt.error.clone(),
            outcome: if validated { "validated" } else { "retrying" }.into(),
            data: None,
        };
        self.record(record, stamp);
        validated
    }

    /// Validates the subscription from its validation URL (asynchronous handshake); false when
    /// `code` is not the pending code.
    pub fn validate_by_url(&mut self, code: &str, stamp: &Stamp) -> bool {
        match &self.validation {
            Validation::Validated => false,
            Validation::Pending { code: pending, attempts } => {
                if pending != code {
                    return false;
                }
                let record = DeliveryRecord {
                    seq: 0,
                    at_ms: 0,
                    time: String::new(),
                    kind: "validation".into(),
                    event_id: code.to_string(),
                    event_type: VALIDATION_EVENT_TYPE.into(),
                    subject: String::new(),
                    attempt: *attempts,
                    status: None,
                    error: None,
                    outcome: "validated".into(),
                    data: None,
                };
                self.validation = Validation::Validated;
                self.record(record, stamp);
                true
            }
        }
    }

    /// Records a delivery attempt of `event` and says what became of it.
    pub fn delivery_done(&mut self, event: &MediaEvent, attempt: &Attempt, stamp: &Stamp) -> Delivered {
        // The head may have changed meanwhile (reset, full queue): record nothing then.
        let Some(head) = self.queue.front_mut().filter(|head| head.event.id == event.id) else {
            return Delivered::Gone;
        };
        let delivery_count = head.attempts;
        let finished = if attempt.error.is_none() {
            true
        } else {
            head.attempts = head.attempts.saturating_add(1);
            head.attempts >= self.max_attempts
        };
        let outcome = match (&attempt.error, finished) {
            (None, _) => "delivered",
            (Some(_), true) => "dead",
            (Some(_), false) => "retrying",
        };
        if finished {
            self.queue.pop_front();
        }
        let record = notification_record(event, delivery_count, outcome, attempt.status, attempt.error.clone());
        self.record(record, stamp);
        match (&attempt.error, finished) {
            (None, _) => Delivered::Yes,
            (Some(_), true) => Delivered::Dead,
            (Some(_), false) => Delivered::Retry,
        }
    }

    /// The delivery log, oldest first.
    pub fn log(&self) -> Vec<DeliveryRecord> {
        self.log.iter().cloned().collect()
    }

    pub fn clear_log(&mut self) {
        self.log.clear();
    }

    /// Forgets queued events and the log (an emulator reset); the validation stays.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.log.clear();
        self.next_seq = 1;
    }

    fn record(&mut self, mut record: DeliveryRecord, stamp: &Stamp) {
        record.seq = self.next_seq;
        record.at_ms = stamp.at_ms;
        record.time.clone_from(&stamp.wall);
        self.next_seq += 1;
        self.log.push_back(record);
        while self.log.len() > self.limit {
            self.log.pop_front();
        }
    }
}

fn notification_record(
    event: &MediaEvent,
    attempt: u32,
    outcome: &str,
    status: Option<u16>,
    error: Option<String>,
) -> DeliveryRecord {
    DeliveryRecord {
        seq: 0,
        at_ms: 0,
        time: String::new(),
        kind: "notification".into(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        subject: event.subject.clone(),
        attempt,
        status,
        error,
        outcome: outcome.into(),
        data: Some(event.data.clone()),
    }
}

// === The delivery task ===

/// Delivers queued events until `shutdown`: the handshake first, then the queue in order.
pub(crate) async fn deliver(emulator: Emulator, shutdown: CancellationToken) {
    let settings = emulator.settings().events.clone();
    let Some(endpoint) = settings.endpoint.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(error = %error.without_url(), "Cannot build the Event Grid delivery client; events stay queued.");
            return;
        }
    };
    tracing::info!(endpoint = %endpoint, schema = ?settings.schema, "Event Grid deliveries enabled.");
    let subscriber = Subscriber { emulator, settings, endpoint, client };
    let wake = &subscriber.emulator.inner.wake_deliveries;
    // The job that failed (its validation code or event id) and when to try it again.
    let mut retry: Option<Retry> = None;
    loop {
        let job = lock(&subscriber.emulator.inner.world).outbox.next_job();
        if let Some((identity, at)) = &retry
            && job.identity() == Some(identity.as_str())
            && Instant::now() < *at
        {
            tokio::select! {
                _ = tokio::time::sleep_until(*at) => {}
                _ = wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        // Cancellation interrupts a request in flight; recording its outcome never waits.
        retry = match job {
            Job::Idle => {
                tokio::select! {
                    _ = wake.notified() => None,
                    _ = shutdown.cancelled() => return,
                }
            }
            Job::Validate { code, attempt, topic } => {
                tokio::select! {
                    retry = subscriber.validate(code, attempt, &topic) => retry,
                    _ = shutdown.cancelled() => return,
                }
            }
            Job::Deliver { event, attempt } => {
                tokio::select! {
                    retry = subscriber.deliver(&event, attempt) => retry,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
    }
}

/// A failed job (its validation code or event id) and when to try it again.
type Retry = (String, Instant);

/// The Event Grid subscription the delivery task serves: where and how it delivers.
struct Subscriber {
    emulator: Emulator,
    settings: EventSettings,
    endpoint: Endpoint,
    client: reqwest::Client,
}

impl Subscriber {
    /// One handshake attempt, recorded; the retry when it failed.
    async fn validate(&self, code: String, attempt: u32, topic: &str) -> Option<Retry> {
        let Self { emulator, settings, endpoint, client } = self;
        let request = validation_request(client, settings, endpoint, &code, attempt, topic, emulator);
        let outcome = handshake(request, settings.schema, &code).await;
        let stamp = emulator.stamp();
        let validated = lock(&emulator.inner.world).outbox.validation_done(&code, settings.schema, &outcome, &stamp);
        if validated {
            tracing::info!(endpoint = %endpoint, attempt, "Event Grid subscription validated.");
            return None;
        }
        let wait = settings.backoff(attempt);
        let error = outcome.error.unwrap_or_default();
        tracing::warn!(endpoint = %endpoint, attempt, %error, retry_in = ?wait, "Event Grid subscription validation failed.");
        Some((code, Instant::now() + wait))
    }

    /// One delivery attempt of `event`, recorded; the retry when it failed and attempts remain.
    async fn deliver(&self, event: &MediaEvent, attempt: u32) -> Option<Retry> {
        let Self { emulator, settings, endpoint, client } = self;
        let request = notification_request(client, settings, endpoint, event, attempt);
        let outcome = send(request).await;
        let stamp = emulator.stamp();
        let delivered = lock(&emulator.inner.world).outbox.delivery_done(event, &outcome, &stamp);
        let error = outcome.error.unwrap_or_default();
        match delivered {
            Delivered::Yes => {
                tracing::debug!(endpoint = %endpoint, event_type = %event.event_type, subject = %event.subject, attempt, "Event delivered.");
                None
            }
            Delivered::Gone => None,
            Delivered::Dead => {
                tracing::warn!(endpoint = %endpoint, event_type = %event.event_type, event_id = %event.id, attempts = attempt + 1, %error, "Event dropped after its last delivery attempt.");
                None
            }
            Delivered::Retry => {
                let wait = settings.backoff(attempt);
                tracing::warn!(endpoint = %endpoint, event_type = %event.event_type, attempt, %error, retry_in = ?wait, "Event delivery failed.");
                Some((event.id.clone(), Instant::now() + wait))
            }
        }
    }
}

/// The handshake request of the subscription's schema.
fn validation_request(
    client: &reqwest::Client,
    settings: &EventSettings,
    endpoint: &Endpoint,
    code: &str,
    attempt: u32,
    topic: &str,
    emulator: &Emulator,
) -> reqwest::RequestBuilder {
    match settings.schema {
        EventSchema::EventGrid => {
            let event = json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "topic": topic,
                "subject": "",
                "data": {"validationCode": code, "validationUrl": emulator.validation_url(code)},
                "eventType": VALIDATION_EVENT_TYPE,
                "eventTime": emulator.stamp().wall,
                "metadataVersion": METADATA_VERSION,
                "dataVersion": "1",
            });
            client
                .post(endpoint.expose_url().clone())
                .header("content-type", "application/json; charset=utf-8")
                .header("aeg-event-type", "SubscriptionValidation")
                .header("aeg-subscription-name", settings.subscription_name.as_str())
                .header("aeg-delivery-count", attempt.to_string())
                .header("aeg-metadata-version", METADATA_VERSION)
                .header("aeg-data-version", "1")
                .body(json!([event]).to_string())
        }
        EventSchema::CloudEvents => client
            .request(reqwest::Method::OPTIONS, endpoint.expose_url().clone())
            .header("WebHook-Request-Origin", WEBHOOK_ORIGIN)
            .header("WebHook-Request-Rate", WEBHOOK_RATE),
    }
}

/// One event's delivery request.
fn notification_request(
    client: &reqwest::Client,
    settings: &EventSettings,
    endpoint: &Endpoint,
    event: &MediaEvent,
    attempt: u32,
) -> reqwest::RequestBuilder {
    let request = client
        .post(endpoint.expose_url().clone())
        .header("aeg-event-type", "Notification")
        .header("aeg-subscription-name", settings.subscription_name.as_str())
        .header("aeg-delivery-count", attempt.to_string())
        .header("aeg-output-event-id", event.id.as_str());
    match settings.schema {
        EventSchema::EventGrid => request
            .header("content-type", "application/json; charset=utf-8")
            .header("aeg-metadata-version", METADATA_VERSION)
            .header("aeg-data-version", DATA_VERSION)
            .body(json!([event.event_grid()]).to_string()),
        EventSchema::CloudEvents => request
            .header("content-type", "application/cloudevents+json; charset=utf-8")
            .header("aeg-metadata-version", SPEC_VERSION)
            .body(event.cloud_event().to_string()),
    }
}

/// Sends a handshake and judges the answer.
async fn handshake(request: reqwest::RequestBuilder, schema: EventSchema, code: &str) -> Attempt {
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Attempt { status: None, error: Some(describe(&error)) },
    };
    let status = response.status();
    let attempt = |error: Option<String>| Attempt { status: Some(status.as_u16()), error };
    if status != StatusCode::OK {
        return attempt(Some(format!("status {}", status.as_u16())));
    }
    match schema {
        EventSchema::EventGrid => {
            let body = match read_limited(response).await {
                Ok(body) => body,
                Err(error) => return attempt(Some(error)),
            };
            let echoed = serde_json::from_slice::<Value>(&body).ok().and_then(|value| {
                let object = value.as_object()?;
                let (_, echoed) = object.iter().find(|(key, _)| key.eq_ignore_ascii_case("validationResponse"))?;
                echoed.as_str().map(str::to_string)
            });
            match echoed {
                Some(echoed) if echoed == code => attempt(None),
                Some(_) => attempt(Some("the validationResponse is not the validation code".into())),
                None => attempt(Some("the answer has no validationResponse".into())),
            }
        }
        EventSchema::CloudEvents => {
            let allowed = response
                .headers()
                .get("webhook-allowed-origin")
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .map(str::to_string);
            match allowed {
                Some(origin) if origin == "*" || origin.eq_ignore_ascii_case(WEBHOOK_ORIGIN) => attempt(None),
                Some(_) => attempt(Some("WebHook-Allowed-Origin does not allow eventgrid.azure.net".into())),
                None => attempt(Some("the answer has no WebHook-Allowed-Origin".into())),
            }
        }
    }
}

/// Sends one event; success is 200 to 204.
async fn send(request: reqwest::RequestBuilder) -> Attempt {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the answer so the connection can be reused; its content does not matter.
            let _ = read_limited(response).await;
            let error = (!(200..=204).contains(&status)).then(|| format!("status {status}"));
            Attempt { status: Some(status), error }
        }
        Err(error) => Attempt { status: None, error: Some(describe(&error)) },
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => return Err(describe(&error)),
        }
    }
}

/// A failed request in words, without its URL (which may hold the endpoint's secret).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return format!("{kind}: {io}");
        }
        source = cause.source();
    }
    kind.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp { at_ms: 1, wall: "2026-01-01T00:00:00.0000000Z".into() }
    }

    fn event(name: &str) -> MediaEvent {
        MediaEvent::new("/t".into(), format!("liveEvent/{name}"), "Microsoft.Media.X", "now", json!({}))
    }

    /// `[emulator.events]` as `config/default.toml` sets it.
    fn defaults() -> EventSettings {
        crate::emulator::Settings::defaults().expect("the built-in defaults load").events
    }

    fn with_endpoint() -> EventSettings {
        EventSettings {
            topic: None,
            endpoint: Some(Endpoint::parse("http://127.0.0.1:9/hook?code=s3cret").unwrap()),
            max_attempts: 2,
            ..defaults()
        }
    }

    #[test]
    fn the_endpoint_never_shows_its_query() {
        let endpoint = Endpoint::parse("https://user:pw@example.com/api/events?code=s3cret&x=1").unwrap();
        assert_eq!(endpoint.redacted(), "https://example.com:443/api/events");
        assert_eq!(format!("{endpoint:?}"), "Endpoint(https://example.com:443/api/events)");
        let settings = EventSettings { endpoint: Some(endpoint), ..defaults() };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("pw"), "{shown}");
        let error = Endpoint::parse("ftp://example.com/?code=s3cret").unwrap_err().to_string();
        assert!(!error.contains("s3cret"), "{error}");
        let error = Endpoint::parse("http://[bad/?code=s3cret").unwrap_err().to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }

    fn load(env: &[(&str, &str)]) -> Result<super::super::Settings, crate::config::Error> {
        let env = env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        super::super::Settings::load(&crate::config::Source { file: None, env })
    }

    #[test]
    fn settings_parse_from_the_defaults_and_the_environment() {
        let expected = EventSettings {
            endpoint: None,
            schema: EventSchema::EventGrid,
            topic: None,
            subscription_name: "onair".into(),
            heartbeat_interval: Duration::from_secs(20),
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            max_attempts: 30,
            timeout: Duration::from_secs(30),
        };
        assert_eq!(load(&[]).unwrap().events, expected);
        let settings = load(&[
            ("ONAIR__EMULATOR__EVENTS__ENDPOINT", "http://127.0.0.1:8780/eventgrid?key=s3cret"),
            ("ONAIR__EMULATOR__EVENTS__SCHEMA", "cloudevents"),
            ("ONAIR__EMULATOR__EVENTS__TOPIC", "s/g/a"),
            ("ONAIR__EMULATOR__EVENTS__HEARTBEAT_INTERVAL", "100ms"),
            ("ONAIR__EMULATOR__EVENTS__MAX_ATTEMPTS", "3"),
        ])
        .unwrap()
        .events;
        assert_eq!(
            settings.endpoint.as_ref().map(Endpoint::redacted).as_deref(),
            Some("http://127.0.0.1:8780/eventgrid")
        );
        assert_eq!(settings.endpoint.unwrap().expose_url().query(), Some("key=s3cret"));
        assert_eq!(settings.schema, EventSchema::CloudEvents);
        assert_eq!(
            settings.topic.as_deref(),
            Some("/subscriptions/s/resourceGroups/g/providers/Microsoft.Media/mediaservices/a")
        );
        assert_eq!(settings.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(settings.max_attempts, 3);
    }

    #[test]
    fn bad_settings_are_reported_without_the_endpoint_secret() {
        let Err(crate::config::Error::Invalid(problems)) = load(&[
            ("ONAIR__EMULATOR__EVENTS__ENDPOINT", "http://[bad/eventgrid?key=s3cret"),
            ("ONAIR__EMULATOR__EVENTS__SCHEMA", "xml"),
            ("ONAIR__EMULATOR__EVENTS__RETRY_MAX", "1s"),
            ("ONAIR__EMULATOR__EVENTS__COLOUR", "blue"),
        ]) else {
            panic!("invalid settings must be refused");
        };
        let keys: Vec<&str> = problems.0.iter().map(|problem| problem.key.as_str()).collect();
        for key in ["endpoint", "schema", "retry_max", "colour"] {
            assert!(keys.contains(&format!("emulator.events.{key}").as_str()), "{keys:?}");
        }
        let rendered = problems.to_string();
        assert!(!rendered.contains("s3cret"), "{rendered}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let settings =
            EventSettings { retry_initial: Duration::from_secs(10), retry_max: Duration::from_secs(600), ..defaults() };
        let waits: Vec<u64> = (0..8).map(|count| settings.backoff(count).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(settings.backoff(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn settings_problems_are_found() {
        let settings = EventSettings {
            subscription_name: "a b".into(),
            heartbeat_interval: Duration::ZERO,
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(1),
            max_attempts: 0,
            ..defaults()
        };
        let keys: Vec<&str> = settings.problems().into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, ["subscription_name", "heartbeat_interval", "retry_max", "max_attempts"]);
        assert!(defaults().problems().is_empty());
    }

    #[test]
    fn nothing_is_delivered_before_validation_and_order_is_kept() {
        let mut outbox = Outbox::new(&with_endpoint(), 100);
        outbox.push(event("a"), &stamp());
        outbox.push(event("b"), &stamp());
        let Job::Validate { code, attempt: 0, topic } = outbox.next_job() else { panic!("validation first") };
        assert_eq!(topic, "/t", "the first event's topic");
        let failed = Attempt { status: Some(200), error: Some("wrong code".into()) };
        assert!(!outbox.validation_done(&code, EventSchema::EventGrid, &failed, &stamp()));
        assert_eq!(outbox.next_job(), Job::Validate { code: code.clone(), attempt: 1, topic });
        let ok = Attempt { status: Some(200), error: None };
        assert!(outbox.validation_done(&code, EventSchema::EventGrid, &ok, &stamp()));
        let Job::Deliver { event: first, attempt: 0 } = outbox.next_job() else { panic!("delivery") };
        assert_eq!(first.subject, "liveEvent/a");
        let failed = Attempt { status: Some(500), error: Some("status 500".into()) };
        assert_eq!(outbox.delivery_done(&first, &failed, &stamp()), Delivered::Retry);
        assert_eq!(outbox.next_job(), Job::Deliver { event: first.clone(), attempt: 1 });
        assert_eq!(outbox.delivery_done(&first, &failed, &stamp()), Delivered::Dead, "max_attempts 2");
        assert_eq!(outbox.delivery_done(&first, &failed, &stamp()), Delivered::Gone);
        let Job::Deliver { event: second, .. } = outbox.next_job() else { panic!("the next event") };
        assert_eq!(second.subject, "liveEvent/b");
        let outcomes: Vec<String> = outbox.log().into_iter().map(|record| record.outcome).collect();
        assert_eq!(outcomes, ["retrying", "validated", "retrying", "dead"]);
    }

    #[test]
    fn without_an_endpoint_events_are_only_recorded() {
        let mut outbox = Outbox::new(&defaults(), 2);
        for name in ["a", "b", "c"] {
            outbox.push(event(name), &stamp());
        }
        assert_eq!(outbox.next_job(), Job::Idle);
        let log = outbox.log();
        assert_eq!(log.len(), 2, "bounded");
        assert_eq!(log[1].subject, "liveEvent/c");
        assert_eq!(log[1].outcome, "undelivered");
        assert_eq!(log[1].error.as_deref(), Some("not delivered: no endpoint"));
        assert_eq!(log[1].seq, 3);
    }

    #[test]
    fn a_subscription_on_one_topic_validates_at_once_and_takes_only_its_events() {
        let topic = account_topic("s/g/a").unwrap();
        let settings = EventSettings { topic: Some(topic.clone()), ..with_endpoint() };
        let mut outbox = Outbox::new(&settings, 10);
        let Job::Validate { topic: named, .. } = outbox.next_job() else { panic!("validation at once") };
        assert_eq!(named, topic);
        outbox.push(event("other"), &stamp());
        assert_eq!(outbox.log()[0].outcome, "undelivered");
        let mine = MediaEvent::new(topic.to_uppercase(), "liveEvent/x".into(), "Microsoft.Media.X", "now", json!({}));
        outbox.push(mine, &stamp());
        assert_eq!(outbox.log().len(), 1, "queued, not recorded");
    }

    #[test]
    fn account_topics_take_both_forms() {
        let full = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Media/mediaservices/a";
        assert_eq!(account_topic("s/g/a").as_deref(), Some(full));
        assert_eq!(account_topic(full).as_deref(), Some(full));
        assert_eq!(
            account_topic("/SUBSCRIPTIONS/s/resourcegroups/g/providers/microsoft.media/MediaServices/a").as_deref(),
            Some(full)
        );
        for bad in ["", "s/g", "s//a", "/subscriptions/s/resourceGroups/g/providers/Microsoft.Other/x/a", "s/g/a b"] {
            assert_eq!(account_topic(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_by_url_needs_the_code() {
        let mut outbox = Outbox::new(&with_endpoint(), 10);
        assert_eq!(outbox.next_job(), Job::Idle, "no topic yet");
        outbox.push(event("a"), &stamp());
        let Job::Validate { code, .. } = outbox.next_job() else { panic!("validation first") };
        assert!(!outbox.validate_by_url("other", &stamp()));
        assert!(outbox.validate_by_url(&code, &stamp()));
        assert!(matches!(outbox.next_job(), Job::Deliver { attempt: 0, .. }));
    }
}
