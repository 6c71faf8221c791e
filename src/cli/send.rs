//! `onair send`: one event, published with a confirm (or written into the local inbox).

use std::process::ExitCode;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Error, SendArgs};
use crate::broker::Publisher;
use crate::daemon::Settings;
use crate::engine::inbox;
use crate::event::Event;

/// `onair send`.
pub async fn send(settings: &Settings, args: SendArgs) -> Result<ExitCode, Error> {
    let data: Value = match &args.data {
        Some(text) => serde_json::from_str(text).map_err(Error::Data)?,
        None => json!({}),
    };
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let id = args.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut event = Event::new(id, args.kind.clone(), args.subject.clone(), data, now);
    event.source = args.source.clone();
    let event = Event::from_value(serde_json::to_value(&event)?).map_err(Error::InvalidEvent)?;
    if args.inbox {
        let path = inbox::write(&settings.engine.inbox, &event, 0)?;
        println!("{} queued in {}", event.id, path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let publisher = Publisher::new(Arc::new(settings.broker.clone()));
    let published = publisher.publish(&event).await;
    publisher.close().await;
    published?;
    println!("{} published to {} (confirmed)", event.id, settings.broker.exchange);
    Ok(ExitCode::SUCCESS)
}
