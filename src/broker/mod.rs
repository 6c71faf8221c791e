//! RabbitMQ: the topology, the consumer that feeds the engine, the confirmed publisher.
//!
//! Only this module imports lapin. On every connect it declares the topology: a durable topic
//! exchange (`onair.events`), a quorum queue bound to it with a delivery limit and at-least-once
//! dead-lettering to a durable fanout exchange and a classic queue (`onair.dead`: no delivery
//! limit, so listing it can never drop a letter; see `DeadQueue`).
//!
//! The consumer acknowledges a message only after the engine reports its consequences committed
//! (or found it a duplicate). A message that is not a valid event, or that no broadcast is about,
//! is republished to the dead-letter exchange with an `x-onair-reason` header (confirmed) and then
//! acknowledged, so it never loops. Only what is wrong with the message itself dead-letters it.
//!
//! When onair's own store fails, nothing is rejected or requeued (RabbitMQ 3.10 counts a requeue
//! towards the delivery limit): the engine keeps the events and retries their commit, the
//! deliveries stay unacknowledged, prefetch bounds how many, and the consumer takes no more until
//! the engine takes events again. At shutdown while commits fail, the consumer does not wait for
//! them: closing the channel returns them to the queue. After the connection is lost while
//! commits fail (the broker's `consumer_timeout` closes a channel that holds a delivery for 30
//! minutes), the consumer waits for a commit to succeed before it consumes again
//! (`Status::watch_commits`), so that a long outage returns each message once, not every 30
//! minutes.
//!
//! Connection loss: the supervisor rebuilds the connection, channels, topology and consumer
//! after a capped, jittered backoff; heartbeats (`heartbeat`) and a periodic liveness check detect
//! a dead connection; unacknowledged messages come back from the broker and are deduplicated by
//! the engine. While the broker is away the daemon stays up and `Status` says not ready.
//!
//! - `local`: a private RabbitMQ node for tests and the demo.
//! - `dlq`: listing and replaying dead letters.

pub mod dlq;
pub mod local;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::engine::{Delivery, Outcome};
use crate::event::Event;

/// The header that carries onair's reason on a dead letter.
pub const REASON_HEADER: &str = "x-onair-reason";

/// The header that marks what onair publishes for other systems (notifications, copies of action
/// results): its own consumer acknowledges such messages without deciding them again.
pub const OUTPUT_HEADER: &str = "x-onair-output";

/// `[broker]` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `amqp://host:port/vhost` or `amqps://…`, without a password.
    pub url: Url,
    /// The user; the URL's user name wins when it has one.
    pub username: String,
    /// The password; redacted in `Debug`.
    pub password: Option<SecretString>,
    /// AMQP heartbeat; two missed beats mean the connection is dead.
    pub heartbeat: Duration,
    /// Time limit of a connection attempt.
    pub connection_timeout: Duration,
    pub exchange: String,
    pub queue: String,
    /// Routing keys the queue is bound with.
    pub bindings: Vec<String>,
    pub dead_exchange: String,
    pub dead_queue: String,
    /// Deliveries of one message before the broker dead-letters it.
    pub delivery_limit: u32,
    /// Unacknowledged deliveries in flight.
    pub prefetch: u16,
    /// Time limit of one publisher confirm.
    pub confirm_timeout: Duration,
    /// Reconnection backoff, first and largest.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often the connection's liveness is checked.
    pub liveness_interval: Duration,
}

impl Settings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let url = section.url_with("url", &["amqp", "amqps"]).unwrap_or_else(|| {
            // The default is a constant URL that parses.
            Url::parse("amqp://127.0.0.1:5672/%2f").expect("constant URL")
        });
        if url.password().is_some() {
            section.problem(
                "url",
                "the URL must not carry a password; set broker.password_file or ONAIR__BROKER__PASSWORD",
            );
        }
        let settings = Self {
            url,
            username: section.value("username"),
            password: section.secret("password"),
            heartbeat: section.duration("heartbeat"),
            connection_timeout: section.duration("connection_timeout"),
            exchange: section.value("exchange"),
            queue: section.value("queue"),
            bindings: section.value("bindings"),
            dead_exchange: section.value("dead_exchange"),
            dead_queue: section.value("dead_queue"),
            delivery_limit: section.value("delivery_limit"),
            prefetch: section.value("prefetch"),
            confirm_timeout: section.duration("confirm_timeout"),
            reconnect_min: section.duration("reconnect_min"),
            reconnect_max: section.duration("reconnect_max"),
            liveness_interval: section.duration("liveness_interval"),
        };
        section.check("heartbeat", settings.heartbeat >= Duration::from_secs(1), "must be at least 1s");
        section.check("connection_timeout", !settings.connection_timeout.is_zero(), "must be greater than zero");
        section.check("confirm_timeout", !settings.confirm_timeout.is_zero(), "must be greater than zero");
        section.check("liveness_interval", !settings.liveness_interval.is_zero(), "must be greater than zero");
        section.check(
            "prefetch",
            settings.prefetch >= 1 && settings.prefetch <= 2000,
            "must be between 1 and 2000 (quorum queues cap it at 2000)",
        );
        section.check("delivery_limit", settings.delivery_limit >= 1, "must be at least 1");
        section.check(
            "reconnect_max",
            settings.reconnect_max >= settings.reconnect_min,
            "must not be smaller than reconnect_min",
        );
        for (key, name) in [
            ("exchange", &settings.exchange),
            ("queue", &settings.queue),
            ("dead_exchange", &settings.dead_exchange),
            ("dead_queue", &settings.dead_queue),
        ] {
            section.check(key, !name.is_empty() && name.len() <= 255, "must be 1 to 255 characters");
        }
        section.check("bindings", !settings.bindings.is_empty(), "needs at least one routing key");
        settings
    }

    /// The URI lapin connects to, with credentials and tuning; never logged.
    fn connect_uri(&self) -> SecretString {
        let mut url = self.url.clone();
        if url.username().is_empty() {
            let _ = url.set_username(&self.username);
        }
        if let Some(password) = &self.password {
            let _ = url.set_password(Some(password.expose_secret()));
        }
        url.query_pairs_mut()
            .append_pair("heartbeat", &self.heartbeat.as_secs().max(1).to_string())
            .append_pair("connection_timeout", &self.connection_timeout.as_millis().to_string());
        SecretString::from(url.to_string())
    }

    /// Where it connects, for logs: host, port and vhost, no credentials.
    pub fn endpoint(&self) -> String {
        format!("{}:{}{}", self.url.host_str().unwrap_or("?"), self.url.port().unwrap_or(5672), self.url.path())
    }
}

/// Broker failures; none carries credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{operation} failed: {reason}")]
    Amqp { operation: &'static str, reason: String },
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {routing_key:?} on exchange {exchange:?}; the message was returned")]
    Unroutable { exchange: String, routing_key: String },
    #[error("the consumer stopped: {0}")]
    ConsumerEnded(String),
    #[error(
        "the dead-letter queue {queue:?} is a quorum queue declared by an earlier onair: listing or replaying it could \
         make RabbitMQ drop letters (its delivery limit); stop onair and run `onair dlq migrate` first"
    )]
    LegacyDeadQueue { queue: String },
}

fn amqp(operation: &'static str) -> impl Fn(lapin::Error) -> Error {
    move |error| Error::Amqp { operation, reason: error.to_string() }
}

/// Whether the consumer is connected and consuming, shared with health checks.
#[derive(Debug, Clone, Default)]
pub struct Status {
    inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    ready: AtomicBool,
    reconnects: AtomicU64,
    consumed: AtomicU64,
    acked: AtomicU64,
    deduplicated: AtomicU64,
    dead_lettered: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    work: std::sync::Mutex<Work>,
    /// The engine's commit results, when the consumer should hold back while commits fail.
    commits: std::sync::OnceLock<crate::store::Commits>,
}

/// Deliveries in hand and since when none has been settled for good (acknowledged or
/// dead-lettered): what tells a busy consumer from a stuck one.
#[derive(Debug, Default)]
struct Work {
    outstanding: u64,
    /// Set while there is work and no delivery has been settled for good since.
    waiting_since: Option<tokio::time::Instant>,
    /// The last delivery received or settled.
    last_activity: Option<tokio::time::Instant>,
}

/// A gap between deliveries after which a new delivery starts a new wait (`Status::received`).
const QUIET: Duration = Duration::from_secs(5);

/// Why the consumer is not making progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// Deliveries in hand.
    pub outstanding: u64,
    /// How long since a delivery was last settled for good.
    pub for_: Duration,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no event committed for {:.0?} with {} deliver{} in hand",
            self.for_,
            self.outstanding,
            if self.outstanding == 1 { "y" } else { "ies" }
        )
    }
}

impl Status {
    /// Connected, topology declared, consumer registered.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// Makes the consumer hold back while the engine's commits fail: it does not start consuming
    /// (after a lost connection) until a commit succeeds, and does not wait at shutdown for
    /// deliveries that cannot be committed. Set once, before `consume`.
    pub fn watch_commits(&self, commits: crate::store::Commits) {
        let _ = self.inner.commits.set(commits);
    }

    /// The engine's commits fail now.
    fn commits_failing(&self) -> bool {
        self.inner.commits.get().is_some_and(|commits| commits.failing().is_some())
    }

    /// Reconnections after the first connection.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Deliveries received, acknowledged, and dead-lettered by onair.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.inner.consumed.load(Ordering::Relaxed),
            self.inner.acked.load(Ordering::Relaxed),
            self.inner.dead_lettered.load(Ordering::Relaxed),
        )
    }

    /// Deliveries acknowledged as duplicates (already decided).
    pub fn deduplicated(&self) -> u64 {
        self.inner.deduplicated.load(Ordering::Relaxed)
    }

    /// Whether the consumer makes progress: stalled when deliveries keep arriving or stay in hand
    /// and none has been committed (or dead-lettered) for `threshold`. An idle consumer, or one
    /// waiting for the broker to come back, is not stalled.
    pub fn stalled(&self, threshold: Duration) -> Option<Stalled> {
        let work = self.work();
        let now = tokio::time::Instant::now();
        let waiting = now.saturating_duration_since(work.waiting_since?);
        let delivering = work.last_activity.is_some_and(|at| now.saturating_duration_since(at) < threshold);
        (waiting >= threshold && (work.outstanding > 0 || delivering))
            .then_some(Stalled { outstanding: work.outstanding, for_: waiting })
    }

    fn work(&self) -> std::sync::MutexGuard<'_, Work> {
        crate::sync::lock(&self.inner.work)
    }

    fn received(&self) {
        self.inner.consumed.fetch_add(1, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let mut work = self.work();
        // A delivery after a quiet spell starts a new wait; one right after a requeue (the broker
        // redelivers at once) continues the wait of the delivery that was not committed.
        let quiet = work.last_activity.is_none_or(|at| now.saturating_duration_since(at) > QUIET);
        if work.outstanding == 0 && quiet {
            work.waiting_since = None;
        }
        work.outstanding += 1;
        work.last_activity = Some(now);
        work.waiting_since.get_or_insert(now);
    }

    /// A delivery left onair's hands; `committed` when for good (acknowledged, dead-lettered),
    /// not when it went back to the queue.
    fn settled(&self, committed: bool) {
        let now = tokio::time::Instant::now();
        let mut work = self.work();
        work.outstanding = work.outstanding.saturating_sub(1);
        work.last_activity = Some(now);
        if committed {
            work.waiting_since = (work.outstanding > 0).then_some(now);
        }
    }

    /// Why it is not ready, if it is not.
    pub fn last_error(&self) -> Option<String> {
        crate::sync::lock(&self.inner.last_error).clone()
    }

    fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::SeqCst);
        *crate::sync::lock(&self.inner.last_error) = None;
    }

    fn set_down(&self, error: &str) {
        self.inner.ready.store(false, Ordering::SeqCst);
        *crate::sync::lock(&self.inner.last_error) = Some(error.to_string());
    }
}

/// Opens a connection (bounded by `connection_timeout`).
pub async fn connect(settings: &Settings, name: &str) -> Result<Connection, Error> {
    let fail = |reason: String| Error::Connect { endpoint: settings.endpoint(), reason };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let uri = settings.connect_uri();
    match tokio::time::timeout(
        settings.connection_timeout + Duration::from_secs(1),
        Connection::connect(uri.expose_secret(), properties),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(fail(error.to_string())),
        Err(_) => Err(fail(format!("no answer within {:?}", settings.connection_timeout))),
    }
}

/// How the dead-letter queue was found by `declare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadQueue {
    /// A classic queue, as onair declares it: no delivery limit, and letters taken for a listing
    /// go back to their place, so listing can neither drop nor reorder them.
    Classic,
    /// A queue declared with other arguments by an earlier onair (a quorum queue): used as it
    /// is, but not listed or replayed (on RabbitMQ 4 a quorum queue drops a message returned 20
    /// times) until `onair dlq migrate` makes it a classic queue.
    Legacy,
}

/// The dead-letter queue's arguments: a classic queue (explicitly, whatever the broker's default
/// queue type). Classic queues have no delivery limit on any RabbitMQ version, and a message
/// returned unacknowledged goes back to its original position.
fn dead_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
    arguments
}

/// Whether `error` is the broker's 406 PRECONDITION_FAILED (a declaration with other arguments).
fn precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(error) if error.get_id() == 406)
}

/// Declares the dead-letter queue on a channel of its own (a 406 closes the channel): classic, or
/// `Legacy` when an earlier onair declared it as a quorum queue.
async fn declare_dead_queue(connection: &Connection, settings: &Settings) -> Result<DeadQueue, Error> {
    let probe = connection.create_channel().await.map_err(amqp("channel.open"))?;
    let declared = probe
        .queue_declare(
            settings.dead_queue.as_str().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            dead_queue_arguments(),
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = probe.close(200, "declared".into()).await;
            Ok(DeadQueue::Classic)
        }
        Err(error) if precondition_failed(&error) => {
            tracing::warn!(
                queue = %settings.dead_queue,
                "The dead-letter queue was declared by an earlier onair (a quorum queue); it is used as it is, \
                 but listing and replaying it are refused until `onair dlq migrate` makes it a classic queue."
            );
            Ok(DeadQueue::Legacy)
        }
        Err(error) => Err(amqp("queue.declare")(error)),
    }
}

/// Binds the dead-letter queue to the dead-letter exchange.
async fn bind_dead_queue(channel: &Channel, settings: &Settings) -> Result<(), Error> {
    channel
        .queue_bind(
            settings.dead_queue.as_str().into(),
            settings.dead_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("queue.bind"))
}

/// Looks at an existing queue (a passive declare): its messages ready now. Fails if it does not
/// exist, which closes `channel`.
async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32, Error> {
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .map(|queue| queue.message_count())
        .map_err(amqp("queue.declare"))
}

/// Declares the exchanges, queues and bindings; idempotent, run on every connect. The dead-letter
/// queue is declared on a channel of its own from `connection`, the rest on `channel`.
pub async fn declare(connection: &Connection, channel: &Channel, settings: &Settings) -> Result<DeadQueue, Error> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(settings.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .map_err(amqp("exchange.declare"))?;
    channel
        .exchange_declare(settings.dead_exchange.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await
        .map_err(amqp("exchange.declare"))?;
    let queue_options = QueueDeclareOptions { durable: true, ..Default::default() };
    let dead_queue = declare_dead_queue(connection, settings).await?;
    bind_dead_queue(channel, settings).await?;
    channel
        .queue_declare(settings.queue.as_str().into(), queue_options, queue_arguments(settings))
        .await
        .map_err(amqp("queue.declare"))?;
    for binding in &settings.bindings {
        channel
            .queue_bind(
                settings.queue.as_str().into(),
                settings.exchange.as_str().into(),
                binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("queue.bind"))?;
    }
    Ok(dead_queue)
}

/// The main queue's arguments: quorum, delivery limit, at-least-once dead-lettering (which needs
/// `reject-publish` overflow). They must be identical on every declaration.
fn queue_arguments(settings: &Settings) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(settings.delivery_limit)));
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(settings.dead_exchange.as_str().into()));
    arguments.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
    arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    arguments
}

// === Publishing ===

/// The scheduler publishes its steps through the broker.
impl crate::schedule::Sink for Publisher {
    async fn publish(&self, events: &[Event]) -> Result<(), String> {
        self.publish_many(events).await.map_err(|error| error.to_string())
    }

    async fn ready(&self) -> Result<(), String> {
        self.publish_many(&[]).await.map_err(|error| error.to_string())
    }
}

/// Publishes with confirms on its own connection, opened on first use and again after a failure.
#[derive(Debug)]
pub struct Publisher {
    settings: Arc<Settings>,
    channel: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings, channel: tokio::sync::Mutex::new(None) }
    }

    /// Publishes `event` to the events exchange, routing key = its type, persistent, mandatory,
    /// `message_id` = its id; waits for the confirm (bounded).
    pub async fn publish(&self, event: &Event) -> Result<(), Error> {
        let exchange = self.settings.exchange.clone();
        self.publish_to(&exchange, &event.kind, &event.to_json(), properties(event), true).await
    }

    /// Publishes an event onair produced for other systems, marked so that onair's own consumer
    /// skips it; not mandatory (nobody may be listening).
    pub async fn publish_output(&self, event: &Event) -> Result<(), Error> {
        let exchange = self.settings.exchange.clone();
        let mut headers = FieldTable::default();
        headers.insert(OUTPUT_HEADER.into(), AMQPValue::Boolean(true));
        self.publish_to(&exchange, &event.kind, &event.to_json(), properties(event).with_headers(headers), false).await
    }

    /// Publishes raw bytes with confirms; `mandatory` returns unroutable messages as an error.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), Error> {
        let mut slot = self.channel.lock().await;
        let result = async {
            let channel = self.open(&mut slot).await?;
            let timeout = self.settings.confirm_timeout;
            confirmed_publish(channel, exchange, routing_key, payload, properties, mandatory, timeout).await
        }
        .await;
        Self::forget_on_failure(&mut slot, &result);
        result
    }

    /// Publishes events to the events exchange (like `publish`) in one go: all are sent, then
    /// all confirms awaited, so a burst costs one round trip instead of one per event. They
    /// reach the queue in order. An error means some may not have been confirmed; publishing
    /// them all again is safe, since consumers deduplicate on the event id. With no events, it
    /// only opens the channel.
    pub async fn publish_many(&self, events: &[Event]) -> Result<(), Error> {
        let exchange = self.settings.exchange.clone();
        let mut slot = self.channel.lock().await;
        let result = async {
            let channel = self.open(&mut slot).await?;
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let mut confirms = Vec::with_capacity(events.len());
            for event in events {
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        event.kind.as_str().into(),
                        options,
                        &event.to_json(),
                        properties(event),
                    )
                    .await
                    .map_err(amqp("basic.publish"))?;
                confirms.push((confirm, &event.kind));
            }
            for (confirm, routing_key) in confirms {
                confirmed(confirm, &exchange, routing_key, self.settings.confirm_timeout).await?;
            }
            Ok(())
        }
        .await;
        Self::forget_on_failure(&mut slot, &result);
        result
    }

    /// The publishing channel, opened (with confirms and the topology) when there is none.
    async fn open<'s>(&self, slot: &'s mut Option<(Connection, Channel)>) -> Result<&'s Channel, Error> {
        if slot.as_ref().is_none_or(|(connection, _)| !connection.status().connected()) {
            let connection = connect(&self.settings, "onair-publisher").await?;
            let channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
            channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp("confirm.select"))?;
            declare(&connection, &channel, &self.settings).await?;
            *slot = Some((connection, channel));
        }
        match slot.as_ref() {
            Some((_, channel)) => Ok(channel),
            None => Err(Error::Amqp { operation: "publish", reason: "no channel".into() }),
        }
    }

    fn forget_on_failure(slot: &mut Option<(Connection, Channel)>, result: &Result<(), Error>) {
        if matches!(result, Err(Error::Amqp { .. } | Error::Connect { .. } | Error::ConfirmTimeout(_))) {
            // The channel may be dead or in an unknown state: start from a new one next time.
            *slot = None;
        }
    }

    /// Closes the connection.
    pub async fn close(&self) {
        if let Some((connection, _)) = self.channel.lock().await.take() {
            let _ = connection.close(200, "bye".into()).await;
        }
    }
}

/// The AMQP properties of an event: persistent, JSON, `message_id` = event id.
pub fn properties(event: &Event) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/cloudevents+json".into())
        .with_message_id(ShortString::from(event.id.as_str()))
        .with_type(ShortString::from(event.kind.as_str()))
}

/// Publishes one message on `channel` (in confirm mode) and waits for its confirm (bounded).
async fn confirmed_publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
    mandatory: bool,
    timeout: Duration,
) -> Result<(), Error> {
    let options = BasicPublishOptions { mandatory, ..Default::default() };
    let confirm = channel
        .basic_publish(exchange.into(), routing_key.into(), options, payload, properties)
        .await
        .map_err(amqp("basic.publish"))?;
    confirmed(confirm, exchange, routing_key, timeout).await
}

/// Waits (bounded) for one publisher confirm.
async fn confirmed(
    confirm: lapin::PublisherConfirm,
    exchange: &str,
    routing_key: &str,
    timeout: Duration,
) -> Result<(), Error> {
    match tokio::time::timeout(timeout, confirm).await {
        Err(_) => Err(Error::ConfirmTimeout(timeout)),
        Ok(Err(error)) => Err(amqp("publisher confirm")(error)),
        Ok(Ok(lapin::Confirmation::Ack(Some(_)))) => {
            Err(Error::Unroutable { exchange: exchange.to_string(), routing_key: routing_key.to_string() })
        }
        Ok(Ok(lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(lapin::Confirmation::Nack(_))) => Err(Error::Nacked),
    }
}

// === Consuming ===

/// Consumes the events queue into the engine until `shutdown`, reconnecting as needed.
pub async fn consume(
    settings: Arc<Settings>,
    input: mpsc::Sender<Delivery>,
    status: Status,
    shutdown: CancellationToken,
) {
    let mut backoff = settings.reconnect_min;
    let mut first = true;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Some(commits) = status.inner.commits.get().filter(|commits| commits.failing().is_some()) {
            tracing::warn!("Store commits fail; consuming waits until a commit succeeds.");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = commits.until_ok() => {}
            }
        }
        let connected_at = tokio::time::Instant::now();
        let result = session(&settings, &input, &status, &shutdown, &mut first).await;
        match result {
            Ok(()) => return,
            Err(error) => {
                status.set_down(&error.to_string());
                tracing::warn!(endpoint = %settings.endpoint(), %error, retry_in = ?backoff, "Broker unavailable; consumption paused.");
            }
        }
        // A session that lasted a while resets the backoff.
        if connected_at.elapsed() > settings.reconnect_max {
            backoff = settings.reconnect_min;
        }
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff / 2 + jitter) => {}
        }
        backoff = (backoff * 2).min(settings.reconnect_max);
    }
}

/// One connection's life: declare, consume, and on shutdown cancel, drain and close.
async fn session(
    settings: &Settings,
    input: &mpsc::Sender<Delivery>,
    status: &Status,
    shutdown: &CancellationToken,
    first: &mut bool,
) -> Result<(), Error> {
    let connection = connect(settings, "onair-consumer").await?;
    let channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
    declare(&connection, &channel, settings).await?;
    channel.basic_qos(settings.prefetch, BasicQosOptions::default()).await.map_err(amqp("basic.qos"))?;
    let dead_channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
    dead_channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp("confirm.select"))?;
    let tag = format!("onair-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("basic.consume"))?;
    status.set_ready();
    if *first {
        *first = false;
        tracing::info!(endpoint = %settings.endpoint(), queue = %settings.queue, prefetch = settings.prefetch, "Consuming.");
    } else {
        status.inner.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(endpoint = %settings.endpoint(), queue = %settings.queue, "Reconnected; consuming again.");
    }
    let in_flight = TaskTracker::new();
    let dead = Arc::new(DeadLetters { channel: dead_channel, settings: settings.clone(), status: status.clone() });
    let (handed, acker_input) = mpsc::unbounded_channel();
    let acker = Acker { window: Window::default(), dead, tracker: in_flight.clone(), status: status.clone() };
    in_flight.spawn(acker.run(acker_input));
    let mut liveness = tokio::time::interval(settings.liveness_interval);
    let outcome = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = liveness.tick() => {
                if !connection.status().connected() || !channel.status().connected() {
                    break Err(Error::ConsumerEnded("the connection is no longer open".into()));
                }
            }
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    status.received();
                    handle(delivery, input, &handed, shutdown).await;
                }
                Some(Err(error)) => break Err(Error::ConsumerEnded(error.to_string())),
                None => break Err(Error::ConsumerEnded("the broker cancelled the consumer".into())),
            },
        }
    };
    // The acker finishes once every delivery handed to it is settled.
    drop(handed);
    status.set_down(match &outcome {
        Ok(()) => "stopping",
        Err(_) => "connection lost",
    });
    if outcome.is_ok() {
        drain(&connection, &channel, &tag, &in_flight, status).await;
    }
    outcome
}

/// On shutdown: stops deliveries, lets those in flight finish (ack or requeue), then closes:
/// whatever is still unacknowledged goes back to the queue.
async fn drain(
    connection: &lapin::Connection,
    channel: &lapin::Channel,
    tag: &str,
    in_flight: &TaskTracker,
    status: &Status,
) {
    let _ = channel.basic_cancel(tag.into(), BasicCancelOptions::default()).await;
    in_flight.close();
    // Deliveries whose commit the store refuses would never finish: do not wait for them.
    loop {
        tokio::select! {
            () = in_flight.wait() => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if status.commits_failing() {
                    tracing::warn!(
                        in_hand = status.work().outstanding,
                        "Store commits fail; deliveries in hand go back to the queue when the channel closes."
                    );
                    break;
                }
            }
        }
    }
    let _ = channel.close(200, "bye".into()).await;
    let _ = connection.close(200, "bye".into()).await;
    tracing::info!("Consumer stopped; in-flight events acknowledged or returned.");
}

/// A delivery on its way to the acker, in the order the broker delivered it, with what settles it.
struct Handed {
    delivery: lapin::message::Delivery,
    settle: Settle,
}

enum Settle {
    /// The engine decides it; this is its outcome.
    Decide(oneshot::Receiver<Outcome>),
    /// onair's own output: acknowledged without a decision.
    Output,
    /// Not a valid event: dead-lettered with this reason.
    Invalid(String),
    /// Not handed to the engine (stopping): left unacknowledged, it goes back to the queue.
    Leave,
}

/// Hands one delivery to the engine, and to the acker with the engine's outcome to wait for.
async fn handle(
    delivery: lapin::message::Delivery,
    input: &mpsc::Sender<Delivery>,
    acker: &mpsc::UnboundedSender<Handed>,
    shutdown: &CancellationToken,
) {
    // The acker lives as long as the session; should it be gone, the delivery stays
    // unacknowledged and goes back to the queue when the channel closes.
    let hand = |delivery, settle| drop(acker.send(Handed { delivery, settle }));
    let is_output =
        delivery.properties.headers().as_ref().is_some_and(|headers| headers.inner().contains_key(OUTPUT_HEADER));
    if is_output {
        return hand(delivery, Settle::Output);
    }
    let event = match Event::parse(&delivery.data) {
        Ok(event) => event,
        Err(error) => return hand(delivery, Settle::Invalid(error.to_string())),
    };
    let span = tracing::info_span!("delivery", delivery_tag = delivery.delivery_tag, event_id = %event.id);
    span.in_scope(|| tracing::debug!(kind = %event.kind, subject = %event.subject, "Delivery received."));
    let (reply, outcome) = oneshot::channel();
    // While the engine takes nothing (its commits fail and its queues are full) this waits, and
    // the consumer takes no new delivery: consumption is paused.
    let permit = tokio::select! {
        permit = input.reserve() => permit.ok(),
        () = shutdown.cancelled() => None,
    };
    let Some(permit) = permit else {
        // Stopping: leave the message unacknowledged; it goes back to the queue.
        return hand(delivery, Settle::Leave);
    };
    permit.send(Delivery { event, reply: Some(reply) });
    hand(delivery, Settle::Decide(outcome));
}

/// What became of a delivery handed to the acker, as the acker learns it.
enum Resolution {
    /// The engine's outcome.
    Decided(Outcome),
    /// The dead-letter task finished: the delivery was acknowledged or returned to the queue
    /// (`true`), or the task died with it in hand (`false`).
    DeadLettered(bool),
}

type Resolving = std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Resolution)> + Send>>;

/// Acknowledges the deliveries of one channel, in one task: once per batch, with `multiple`,
/// up to the highest delivery tag below which every delivery is settled (decided and committed,
/// a duplicate, onair's output, or dead-lettered). A delivery left unacknowledged (the engine
/// stopped before its commit) stays outstanding on the channel, and a `multiple` ack would cover
/// it: after one, the rest of the channel's deliveries are acknowledged one by one.
struct Acker {
    window: Window,
    dead: Arc<DeadLetters>,
    tracker: TaskTracker,
    status: Status,
}

impl Acker {
    async fn run(mut self, mut input: mpsc::UnboundedReceiver<Handed>) {
        let mut resolving: futures_util::stream::FuturesUnordered<Resolving> = Default::default();
        let mut open = true;
        while open || !resolving.is_empty() {
            tokio::select! {
                handed = input.recv(), if open => match handed {
                    Some(handed) => self.admit(handed, &resolving),
                    None => open = false,
                },
                Some((tag, resolution)) = resolving.next() => self.resolve(tag, resolution, &resolving),
            }
            // Take in what is already there, without waiting for more, then acknowledge it.
            loop {
                if open && let Ok(handed) = input.try_recv() {
                    self.admit(handed, &resolving);
                    continue;
                }
                match futures_lite::future::poll_once(resolving.next()).await {
                    Some(Some((tag, resolution))) => self.resolve(tag, resolution, &resolving),
                    _ => break,
                }
            }
            self.flush().await;
        }
    }

    fn admit(&mut self, handed: Handed, resolving: &futures_util::stream::FuturesUnordered<Resolving>) {
        let Handed { delivery, settle } = handed;
        let tag = delivery.delivery_tag;
        match settle {
            Settle::Decide(outcome) => {
                self.window.push(tag, Some(delivery), Slot::Waiting);
                resolving.push(Box::pin(async move {
                    let outcome =
                        outcome.await.unwrap_or_else(|_| Outcome::Failed("the engine stopped before deciding".into()));
                    (tag, Resolution::Decided(outcome))
                }));
            }
            Settle::Output => self.window.push(tag, Some(delivery), Slot::Ack(Kind::Output)),
            Settle::Invalid(reason) => {
                self.window.push(tag, None, Slot::Waiting);
                self.dead_letter(delivery, reason, resolving);
            }
            Settle::Leave => {
                self.status.settled(false);
                self.window.push(tag, None, Slot::Held);
            }
        }
    }

    fn resolve(
        &mut self,
        tag: u64,
        resolution: Resolution,
        resolving: &futures_util::stream::FuturesUnordered<Resolving>,
    ) {
        let Some((delivery, slot)) = self.window.get_mut(tag) else { return };
        match resolution {
            Resolution::Decided(Outcome::Committed) => *slot = Slot::Ack(Kind::Committed),
            Resolution::Decided(Outcome::Duplicate) => *slot = Slot::Ack(Kind::Duplicate),
            Resolution::Decided(Outcome::Unroutable(reason)) => {
                if let Some(delivery) = delivery.take() {
                    self.dead_letter(delivery, reason, resolving);
                }
            }
            Resolution::Decided(Outcome::Failed(reason)) => {
                // Only when the engine stops before its commit (store failures are retried, not
                // reported). Not rejected: a requeue counts towards the delivery limit. The
                // delivery stays unacknowledged until the channel closes, which returns it.
                tracing::debug!(%reason, delivery_tag = tag, "Event not committed; left unacknowledged, it goes back to the queue when the channel closes.");
                *delivery = None;
                *slot = Slot::Held;
                self.status.settled(false);
            }
            Resolution::DeadLettered(finished) => *slot = if finished { Slot::Done } else { Slot::Held },
        }
    }

    /// Dead-letters in a task of its own (a confirmed publish, then the ack of that delivery
    /// alone); the window waits for it.
    fn dead_letter(
        &self,
        delivery: lapin::message::Delivery,
        reason: String,
        resolving: &futures_util::stream::FuturesUnordered<Resolving>,
    ) {
        let tag = delivery.delivery_tag;
        let dead = Arc::clone(&self.dead);
        let task = self.tracker.spawn(async move { dead.dead_letter(delivery, &reason).await });
        resolving.push(Box::pin(async move { (tag, Resolution::DeadLettered(task.await.is_ok())) }));
    }

    /// Acknowledges what the window allows: the settled run at its front with one `multiple`
    /// ack; after a delivery left unacknowledged, each settled delivery by itself.
    async fn flush(&mut self) {
        let (run, last) = self.window.settled_run();
        if let Some(last) = last {
            let acked = ack(&last, true).await;
            self.account(&run, acked);
        }
        if self.window.single {
            for (delivery, kind) in self.window.settled_anywhere() {
                let acked = ack(&delivery, false).await;
                self.account(&[kind], acked);
            }
        }
    }

    /// Counts acknowledged deliveries (or, when the ack could not be sent, deliveries the broker
    /// will deliver again).
    fn account(&self, kinds: &[Kind], acked: bool) {
        let inner = &self.status.inner;
        for kind in kinds {
            if acked && *kind != Kind::Output {
                inner.acked.fetch_add(1, Ordering::Relaxed);
                if *kind == Kind::Duplicate {
                    inner.deduplicated.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.status.settled(acked);
        }
        if acked {
            tracing::debug!(deliveries = kinds.len(), "Deliveries acknowledged.");
        }
    }
}

/// What an acknowledged delivery counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Committed,
    Duplicate,
    Output,
}

/// Where one delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Its outcome, or its dead-lettering, is not known yet.
    Waiting,
    /// To acknowledge.
    Ack(Kind),
    /// Settled by another (dead-lettered: acknowledged or returned by that task).
    Done,
    /// Left unacknowledged on the channel until it closes.
    Held,
}

/// The deliveries of one channel not settled yet, in delivery-tag order.
#[derive(Default)]
struct Window {
    slots: std::collections::VecDeque<(u64, Option<lapin::message::Delivery>, Slot)>,
    /// A delivery was left unacknowledged: no `multiple` ack any more on this channel.
    single: bool,
}

impl Window {
    fn push(&mut self, tag: u64, delivery: Option<lapin::message::Delivery>, slot: Slot) {
        self.slots.push_back((tag, delivery, slot));
    }

    fn get_mut(&mut self, tag: u64) -> Option<(&mut Option<lapin::message::Delivery>, &mut Slot)> {
        let index = self.slots.binary_search_by_key(&tag, |(tag, ..)| *tag).ok()?;
        self.slots.get_mut(index).map(|(_, delivery, slot)| (delivery, slot))
    }

    /// Takes the run at the front in which every delivery is settled or to acknowledge: the kinds
    /// to acknowledge, and the delivery with the highest tag among them, whose `multiple` ack
    /// covers them all (every lower tag is settled). Stops at a delivery still waiting; one left
    /// unacknowledged switches the window to single acks.
    fn settled_run(&mut self) -> (Vec<Kind>, Option<lapin::message::Delivery>) {
        let mut kinds = Vec::new();
        let mut last = None;
        if self.single {
            return (kinds, last);
        }
        while let Some((_, _, slot)) = self.slots.front() {
            match *slot {
                Slot::Waiting => break,
                Slot::Held => {
                    self.single = true;
                    break;
                }
                Slot::Done => drop(self.slots.pop_front()),
                Slot::Ack(kind) => {
                    let Some((_, delivery, _)) = self.slots.pop_front() else { break };
                    kinds.push(kind);
                    last = delivery.or(last);
                }
            }
        }
        (kinds, last)
    }

    /// After a delivery was left unacknowledged: takes every delivery to acknowledge, wherever it
    /// stands, and forgets the settled ones.
    fn settled_anywhere(&mut self) -> Vec<(lapin::message::Delivery, Kind)> {
        let mut acks = Vec::new();
        self.slots.retain_mut(|(_, delivery, slot)| match *slot {
            Slot::Waiting => true,
            Slot::Held | Slot::Done => false,
            Slot::Ack(kind) => {
                if let Some(delivery) = delivery.take() {
                    acks.push((delivery, kind));
                }
                false
            }
        });
        acks
    }
}

/// Acknowledges (with `multiple`, this delivery and every earlier one of its channel); false when
/// the ack could not be sent (the broker will redeliver).
async fn ack(delivery: &lapin::message::Delivery, multiple: bool) -> bool {
    match delivery.ack(BasicAckOptions { multiple }).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                delivery_tag = delivery.delivery_tag,
                "Ack not sent (the channel is gone); the broker will redeliver."
            );
            false
        }
        Err(error) => {
            tracing::warn!(delivery_tag = delivery.delivery_tag, %error, "Ack failed; the broker will redeliver.");
            false
        }
    }
}

struct DeadLetters {
    channel: Channel,
    settings: Settings,
    status: Status,
}

impl DeadLetters {
    /// Republishes the message to the dead-letter exchange with onair's reason (confirmed), then
    /// acknowledges the original. If the republish fails, the original is returned to the queue.
    async fn dead_letter(&self, delivery: lapin::message::Delivery, reason: &str) {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let reason: String = reason.chars().take(1000).collect();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from(reason.as_str())));
        headers.insert(
            "x-onair-original-routing-key".into(),
            AMQPValue::LongString(LongString::from(delivery.routing_key.as_str())),
        );
        let properties = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
        let published = confirmed_publish(
            &self.channel,
            &self.settings.dead_exchange,
            "",
            &delivery.data,
            properties,
            false,
            self.settings.confirm_timeout,
        )
        .await;
        match published {
            Ok(()) => {
                tracing::warn!(%reason, delivery_tag = delivery.delivery_tag, "Message dead-lettered.");
                let acked = ack(&delivery, false).await;
                if acked {
                    self.status.inner.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
                self.status.settled(acked);
            }
            Err(error) => {
                tracing::warn!(%error, "Dead-lettering failed; the message goes back to the queue.");
                let _ = delivery.reject(BasicRejectOptions { requeue: true }).await;
                self.status.settled(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(tag: u64) -> lapin::message::Delivery {
        lapin::message::Delivery::mock(tag, "onair.events".into(), "b".into(), false, Vec::new())
    }

    fn window(slots: &[Slot]) -> Window {
        let mut window = Window::default();
        for (index, slot) in slots.iter().enumerate() {
            let tag = index as u64 + 1;
            let delivery = (!matches!(slot, Slot::Held | Slot::Done)).then(|| delivery(tag));
            window.push(tag, delivery, *slot);
        }
        window
    }

    fn tags(window: &Window) -> Vec<u64> {
        window.slots.iter().map(|(tag, ..)| *tag).collect()
    }

    #[test]
    fn a_multiple_ack_covers_only_a_settled_run_and_never_a_delivery_still_waiting() {
        use Slot::*;
        // Broadcast a committed (1, 2), b waiting for its commit (3), c a duplicate (4).
        let mut window = window(&[Ack(Kind::Committed), Ack(Kind::Committed), Waiting, Ack(Kind::Duplicate)]);
        let (kinds, last) = window.settled_run();
        assert_eq!(kinds, [Kind::Committed, Kind::Committed]);
        assert_eq!(last.map(|delivery| delivery.delivery_tag), Some(2), "not beyond the delivery still waiting");
        assert_eq!(tags(&window), [3, 4]);
        assert_eq!(window.settled_run().0, [], "nothing while the front waits");
        // 3 is being dead-lettered: still waiting, then settled by its own task.
        let (_, slot) = window.get_mut(3).unwrap();
        assert_eq!(*slot, Waiting);
        *slot = Done;
        let (kinds, last) = window.settled_run();
        assert_eq!(kinds, [Kind::Duplicate]);
        assert_eq!(
            last.map(|delivery| delivery.delivery_tag),
            Some(4),
            "over a dead-lettered delivery once it is settled"
        );
        assert!(window.slots.is_empty() && !window.single);
        // A run of dead letters alone acknowledges nothing.
        let mut window = window_of_done();
        let (kinds, last) = window.settled_run();
        assert!(kinds.is_empty() && last.is_none() && window.slots.is_empty());
    }

    fn window_of_done() -> Window {
        window(&[Slot::Done, Slot::Done])
    }

    #[test]
    fn after_a_delivery_left_unacknowledged_each_delivery_is_acknowledged_by_itself() {
        use Slot::*;
        // 1 committed, 2 left unacknowledged (the engine stopped), 3 committed, 4 waiting, 5 output.
        let mut window = window(&[Ack(Kind::Committed), Held, Ack(Kind::Committed), Waiting, Ack(Kind::Output)]);
        let (kinds, last) = window.settled_run();
        assert_eq!((kinds.len(), last.map(|delivery| delivery.delivery_tag)), (1, Some(1)), "up to the held one only");
        assert!(window.single, "a multiple ack above 2 would acknowledge it");
        assert_eq!(window.settled_run().0, [], "no multiple ack any more");
        let single: Vec<(u64, Kind)> =
            window.settled_anywhere().into_iter().map(|(delivery, kind)| (delivery.delivery_tag, kind)).collect();
        assert_eq!(single, [(3, Kind::Committed), (5, Kind::Output)]);
        assert_eq!(tags(&window), [4], "the waiting one stays");
        let (_, slot) = window.get_mut(4).unwrap();
        *slot = Ack(Kind::Duplicate);
        assert_eq!(window.settled_anywhere().len(), 1);
        assert!(window.slots.is_empty());
    }

    #[test]
    fn a_failed_batch_leaves_its_whole_range_unacknowledged() {
        use Slot::*;
        // Broadcasts a, b, c: a's event committed before, b's and c's in the batch whose commit
        // failed (still waiting, the lane retries), and a later one of a committed.
        let mut window = window(&[Ack(Kind::Committed), Waiting, Waiting, Ack(Kind::Committed)]);
        assert_eq!(window.settled_run().1.map(|delivery| delivery.delivery_tag), Some(1));
        assert_eq!(window.settled_run().1.map(|delivery| delivery.delivery_tag), None);
        assert_eq!(tags(&window), [2, 3, 4], "nothing of the failed range nor after it is acknowledged");
        // The engine stops before the retry succeeds: both are left for the channel's close.
        for tag in [2, 3] {
            let (delivery, slot) = window.get_mut(tag).unwrap();
            *delivery = None;
            *slot = Held;
        }
        assert_eq!(window.settled_run().1.map(|delivery| delivery.delivery_tag), None);
        let single: Vec<u64> =
            window.settled_anywhere().into_iter().map(|(delivery, _)| delivery.delivery_tag).collect();
        assert_eq!(single, [4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_is_stalled_only_while_deliveries_go_uncommitted() {
        let status = Status::default();
        let threshold = Duration::from_secs(30);
        assert_eq!(status.stalled(threshold), None, "idle from the start");
        status.received();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(status.stalled(threshold), None, "busy, not for long");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(status.stalled(threshold), Some(Stalled { outstanding: 1, for_: Duration::from_secs(31) }));
        // Returned to the queue and delivered again, still without a commit: stalled.
        status.settled(false);
        status.received();
        assert!(status.stalled(threshold).is_some());
        // Committed: progress; idle after it.
        status.settled(true);
        assert_eq!(status.stalled(threshold), None);
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(status.stalled(threshold), None, "idle is not stalled");
        // A delivery returned to the queue that never comes back (the broker dead-lettered it):
        // once nothing arrives for the threshold, it is idle again.
        status.received();
        status.settled(false);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(status.stalled(threshold), None);
        // The next delivery after that quiet spell starts a new wait.
        status.received();
        assert_eq!(status.stalled(threshold), None);
        let text = Stalled { outstanding: 2, for_: Duration::from_secs(61) }.to_string();
        assert_eq!(text, "no event committed for 61s with 2 deliveries in hand");
    }
}
