//! `onair dlq list`, `onair dlq replay` and `onair dlq migrate`.

use std::process::ExitCode;

use super::{DlqCommand, Error};
use crate::broker::dlq;
use crate::daemon::Settings;

/// `onair dlq`.
pub async fn dlq(settings: &Settings, command: DlqCommand) -> Result<ExitCode, Error> {
    match command {
        DlqCommand::List { limit, json } => list(settings, limit, json).await?,
        DlqCommand::Replay { id, limit } => {
            let report = dlq::replay(&settings.broker, id.as_deref(), limit).await?;
            println!("replayed {}, kept {}", report.replayed, report.kept);
        }
        DlqCommand::Migrate => {
            let report = dlq::migrate(&settings.broker).await?;
            if report.migrated {
                println!(
                    "{} is now a classic queue; {} dead letter{} moved, in order",
                    settings.broker.dead_queue,
                    report.letters,
                    if report.letters == 1 { "" } else { "s" }
                );
            } else {
                println!("{} is already a classic queue: nothing to do", settings.broker.dead_queue);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `onair dlq list`: the dead letters and why they are there, as JSON or one line each.
async fn list(settings: &Settings, limit: usize, json: bool) -> Result<(), Error> {
    let letters = dlq::list(&settings.broker, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(());
    }
    if letters.is_empty() {
        println!("no dead letters in {}", settings.broker.dead_queue);
        return Ok(());
    }
    for letter in &letters {
        println!(
            "{}  {}  {} bytes  reason: {}",
            letter.message_id.as_deref().unwrap_or("(no id)"),
            letter.routing_key,
            letter.bytes,
            letter.reason
        );
    }
    println!("{} dead letter{} (at most {limit} listed)", letters.len(), if letters.len() == 1 { "" } else { "s" });
    Ok(())
}
