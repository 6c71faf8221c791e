//! `notify`: a log line and an `onair.notification` event for other systems.

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Request;
use crate::clock::SharedClock;
use crate::event::{self, Event};

/// Logs the message at its severity and publishes it on `outbound`; never fails.
pub(super) fn notify(action: &Request<'_>, outbound: &mpsc::UnboundedSender<Event>, clock: &SharedClock) -> Value {
    let (row, broadcast) = (action.row, action.broadcast);
    let severity = row.params["severity"].as_str().unwrap_or("info").to_string();
    let message = row.params["message"].as_str().unwrap_or_default().to_string();
    match severity.as_str() {
        "error" | "critical" => tracing::error!(broadcast = %broadcast.id, %message, "Notification."),
        "warning" => tracing::warn!(broadcast = %broadcast.id, %message, "Notification."),
        _ => tracing::info!(broadcast = %broadcast.id, %message, "Notification."),
    }
    let notification = Event::new(
        format!("notification/{}", row.id),
        event::NOTIFICATION,
        broadcast.id.clone(),
        json!({"broadcast": broadcast.id, "severity": severity, "message": message, "data": row.params["data"]}),
        clock.now(),
    );
    let published = outbound.send(notification).is_ok();
    json!({"severity": severity, "message": message, "published": published})
}
