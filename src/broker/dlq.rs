//! Dead letters: list them, replay them to the events exchange, and migrate the queue an earlier
//! onair declared.
//!
//! Listing takes messages from the dead-letter queue without acknowledging them, then closes its
//! channel, so they all go back. The queue is a classic queue (`super::DeadQueue`): it has no
//! delivery limit and puts a returned message back in its place, so listing as often as anyone
//! likes neither drops nor reorders a letter. A quorum queue declared by an earlier onair would
//! count each listing as a delivery (RabbitMQ 4 drops a message after 20 by default): listing and
//! replaying it are refused until `migrate` has made it a classic queue. Replaying republishes the chosen ones (confirmed) with their
//! original routing key and without onair's reason header, and acknowledges each only after its
//! republish is confirmed; the others go back untouched. Only the letters present when it starts
//! are looked at, so a replayed event that fails again is not replayed in a loop.

use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use super::{
    DeadQueue, Error, REASON_HEADER, Settings, amqp, bind_dead_queue, confirmed_publish, connect, declare, queue_depth,
};

/// One dead letter, as `onair dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The AMQP message id (onair sets it to the event id).
    pub message_id: Option<String>,
    /// onair's reason, or the broker's (`delivery_limit`, `rejected`, …).
    pub reason: String,
    pub routing_key: String,
    pub bytes: usize,
    /// The start of the body, as text.
    pub preview: String,
}

/// What `replay` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Replayed {
    pub replayed: usize,
    pub kept: usize,
}

/// Lists up to `limit` dead letters; they all stay in the queue.
pub async fn list(settings: &Settings, limit: usize) -> Result<Vec<DeadLetter>, Error> {
    let (connection, channel) = open_dead_queue(settings).await?;
    let mut letters = Vec::new();
    while letters.len() < limit {
        let Some(delivery) = take(&channel, &settings.dead_queue).await? else {
            break;
        };
        letters.push(describe(&delivery));
    }
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "bye".into()).await;
    Ok(letters)
}

/// Replays the dead letter whose message id is `id`, or all of them (up to `limit`).
pub async fn replay(settings: &Settings, id: Option<&str>, limit: usize) -> Result<Replayed, Error> {
    let (connection, channel) = open_dead_queue(settings).await?;
    let publisher = connection.create_channel().await.map_err(amqp("channel.open"))?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp("confirm.select"))?;
    // Only the letters there now: a replayed event that fails again comes back behind them.
    let waiting = queue_depth(&channel, &settings.dead_queue).await? as usize;
    let mut report = Replayed { replayed: 0, kept: 0 };
    while report.replayed + report.kept < limit.min(waiting) {
        let Some(delivery) = take(&channel, &settings.dead_queue).await? else {
            break;
        };
        let letter = describe(&delivery);
        if id.is_some_and(|id| letter.message_id.as_deref() != Some(id)) {
            report.kept += 1;
            continue;
        }
        let (routing_key, headers) = original_route(&delivery, &letter);
        let properties = delivery.properties.clone().with_headers(headers);
        confirmed_publish(
            &publisher,
            &settings.exchange,
            &routing_key,
            &delivery.data,
            properties,
            true,
            settings.confirm_timeout,
        )
        .await?;
        delivery.ack(BasicAckOptions::default()).await.map_err(amqp("basic.ack"))?;
        report.replayed += 1;
    }
    let _ = channel.close(200, "replayed".into()).await;
    let _ = publisher.close(200, "replayed".into()).await;
    let _ = connection.close(200, "bye".into()).await;
    Ok(report)
}

/// What `migrate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Migrated {
    /// Whether the queue had to be migrated (false: it already was a classic queue).
    pub migrated: bool,
    /// Letters moved into the new queue, in their order.
    pub letters: usize,
}

/// Makes the dead-letter queue a classic queue when an earlier onair declared it otherwise: its
/// letters are moved, in order and each confirmed before it is acknowledged, to
/// `<dead_queue>.migrating`; the old queue is deleted (only when empty) and declared again as
/// onair declares it now, bound to the dead-letter exchange; the letters are moved back and the
/// temporary queue deleted. Run it with onair stopped (nothing else dead-lettering): a letter
/// arriving meanwhile could find no queue, or come before older ones. Interrupted, it can be run
/// again: the temporary queue is emptied into the new one first.
pub async fn migrate(settings: &Settings) -> Result<Migrated, Error> {
    let connection = connect(settings, "onair-dlq-migrate").await?;
    let channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
    let found = declare(&connection, &channel, settings).await?;
    let temporary = format!("{}.migrating", settings.dead_queue);
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut moved = 0;
    if found == DeadQueue::Legacy {
        channel
            .queue_declare(temporary.as_str().into(), durable, super::dead_queue_arguments())
            .await
            .map_err(amqp("queue.declare"))?;
        moved = transfer(&connection, settings, &settings.dead_queue, &temporary).await?;
        // Quorum queues refuse `if_empty`: look, then delete.
        let left = queue_depth(&channel, &settings.dead_queue).await?;
        if left > 0 {
            let _ = connection.close(200, "bye".into()).await;
            return Err(Error::Amqp {
                operation: "migrate",
                reason: format!(
                    "{left} letters arrived in {} while it was being emptied: stop onair and run it again",
                    settings.dead_queue
                ),
            });
        }
        channel
            .queue_delete(settings.dead_queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(amqp("queue.delete"))?;
        channel
            .queue_declare(settings.dead_queue.as_str().into(), durable, super::dead_queue_arguments())
            .await
            .map_err(amqp("queue.declare"))?;
        bind_dead_queue(&channel, settings).await?;
    }
    // Also after an interrupted run: whatever waits in the temporary queue goes back.
    let pending = queue_depth(&channel, &temporary).await;
    if pending.is_ok() {
        transfer(&connection, settings, &temporary, &settings.dead_queue).await?;
        let cleanup = connection.create_channel().await.map_err(amqp("channel.open"))?;
        cleanup
            .queue_delete(temporary.as_str().into(), QueueDeleteOptions { if_empty: true, ..Default::default() })
            .await
            .map_err(amqp("queue.delete"))?;
    }
    let _ = connection.close(200, "migrated".into()).await;
    if found == DeadQueue::Legacy {
        tracing::info!(queue = %settings.dead_queue, letters = moved, "Dead-letter queue migrated to a classic queue.");
    }
    Ok(Migrated { migrated: found == DeadQueue::Legacy, letters: moved })
}

/// Moves every message of queue `from` to queue `to` (through the default exchange), in order:
/// each is acknowledged only after its copy is confirmed.
async fn transfer(connection: &lapin::Connection, settings: &Settings, from: &str, to: &str) -> Result<usize, Error> {
    let channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
    let publisher = connection.create_channel().await.map_err(amqp("channel.open"))?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp("confirm.select"))?;
    let mut moved = 0;
    while let Some(delivery) = take(&channel, from).await? {
        confirmed_publish(
            &publisher,
            "",
            to,
            &delivery.data,
            delivery.properties.clone(),
            true,
            settings.confirm_timeout,
        )
        .await?;
        delivery.ack(BasicAckOptions::default()).await.map_err(amqp("basic.ack"))?;
        moved += 1;
    }
    let _ = channel.close(200, "moved".into()).await;
    let _ = publisher.close(200, "moved".into()).await;
    Ok(moved)
}

/// Connects, declares the topology and refuses a dead-letter queue an earlier onair declared
/// otherwise (`migrate` first): the connection and a channel on which to take letters.
async fn open_dead_queue(settings: &Settings) -> Result<(lapin::Connection, lapin::Channel), Error> {
    let connection = connect(settings, "onair-dlq").await?;
    let channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
    if declare(&connection, &channel, settings).await? == DeadQueue::Legacy {
        let _ = connection.close(200, "bye".into()).await;
        return Err(Error::LegacyDeadQueue { queue: settings.dead_queue.clone() });
    }
    Ok((connection, channel))
}

/// Takes the next message of `queue` without acknowledging it: acknowledged, it is gone; left
/// unacknowledged, it goes back in its place when the channel closes. `None` when the queue is empty.
async fn take(channel: &lapin::Channel, queue: &str) -> Result<Option<lapin::message::Delivery>, Error> {
    let message =
        channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await.map_err(amqp("basic.get"))?;
    Ok(message.map(|message| message.delivery))
}

/// The routing key a dead letter was first published with, and its headers without onair's
/// reason and the broker's death records: what a replay republishes it with.
fn original_route(delivery: &lapin::message::Delivery, letter: &DeadLetter) -> (String, FieldTable) {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let routing_key = match headers.inner().get("x-onair-original-routing-key") {
        Some(AMQPValue::LongString(key)) => key.to_string(),
        _ => letter.routing_key.clone(),
    };
    let mut cleaned = FieldTable::default();
    for (key, value) in headers.inner() {
        if !matches!(
            key.as_str(),
            REASON_HEADER
                | "x-onair-original-routing-key"
                | "x-death"
                | "x-first-death-reason"
                | "x-first-death-queue"
                | "x-first-death-exchange"
        ) {
            cleaned.insert(key.clone(), value.clone());
        }
    }
    (routing_key, cleaned)
}

fn describe(delivery: &lapin::message::Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = |key: &str| match headers.inner().get(key) {
        Some(AMQPValue::LongString(value)) => Some(value.to_string()),
        Some(AMQPValue::ShortString(value)) => Some(value.to_string()),
        _ => None,
    };
    let reason = text(REASON_HEADER).or_else(|| text("x-first-death-reason")).unwrap_or_else(|| "unknown".into());
    let routing_key = text("x-onair-original-routing-key").unwrap_or_else(|| delivery.routing_key.to_string());
    DeadLetter {
        message_id: delivery.properties.message_id().as_ref().map(ToString::to_string),
        reason,
        routing_key,
        bytes: delivery.data.len(),
        preview: String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(120)]).into_owned(),
    }
}
