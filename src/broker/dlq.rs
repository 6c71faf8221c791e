//! Dead letters: list them, and replay them to the events exchange.
//!
//! Listing takes messages from the dead-letter queue without acknowledging them, then closes its
//! channel, so they all go back. Replaying republishes the chosen ones (confirmed) with their
//! original routing key and without onair's reason header, and acknowledges each only after its
//! republish is confirmed; the others go back untouched. Only the letters present when it starts
//! are looked at, so a replayed event that fails again is not replayed in a loop.

use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use super::{Error, REASON_HEADER, Settings, amqp, confirmed_publish, connect, declare};

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
    let connection = connect(settings, "onair-dlq").await?;
    let channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
    declare(&channel, settings).await?;
    let mut letters = Vec::new();
    while letters.len() < limit {
        let Some(message) = channel
            .basic_get(settings.dead_queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(amqp("basic.get"))?
        else {
            break;
        };
        letters.push(describe(&message.delivery));
    }
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "bye".into()).await;
    Ok(letters)
}

/// Replays the dead letter whose message id is `id`, or all of them (up to `limit`).
pub async fn replay(settings: &Settings, id: Option<&str>, limit: usize) -> Result<Replayed, Error> {
    let connection = connect(settings, "onair-dlq").await?;
    let channel = connection.create_channel().await.map_err(amqp("channel.open"))?;
    declare(&channel, settings).await?;
    let publisher = connection.create_channel().await.map_err(amqp("channel.open"))?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp("confirm.select"))?;
    // Only the letters there now: a replayed event that fails again comes back behind them.
    let waiting = channel
        .queue_declare(
            settings.dead_queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(amqp("queue.declare"))?
        .message_count() as usize;
    let mut report = Replayed { replayed: 0, kept: 0 };
    while report.replayed + report.kept < limit.min(waiting) {
        let Some(message) = channel
            .basic_get(settings.dead_queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(amqp("basic.get"))?
        else {
            break;
        };
        let delivery = message.delivery;
        let letter = describe(&delivery);
        if id.is_some_and(|id| letter.message_id.as_deref() != Some(id)) {
            report.kept += 1;
            continue;
        }
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
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
        headers = cleaned;
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
