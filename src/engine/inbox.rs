//! The local inbox: a directory of event files, read in name order.
//!
//! Each `*.json` file holds one CloudEvents event. A file is deleted only after its event is
//! committed (or found a duplicate), so a crash at any point delivers it again and the engine
//! deduplicates it: the same at-least-once contract as the broker. A file that is not a valid event,
//! or whose subject no broadcast has, is moved to `rejected/` with a `.reason` file beside it.
//! Writers must create files atomically: write `name.json.tmp` (or anywhere on the same file
//! system), then rename it to `name.json` (`onair send` does).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Delivery, Outcome};
use crate::event::Event;
use crate::sync::lock;

/// Why the inbox cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("inbox {path}: {reason}")]
pub struct Error {
    pub path: String,
    pub reason: String,
}

/// Reads `directory` every `poll` and hands its events to `input` until `shutdown`.
pub async fn run(
    directory: PathBuf,
    poll: Duration,
    input: mpsc::Sender<Delivery>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let rejected = directory.join("rejected");
    std::fs::create_dir_all(&rejected)
        .map_err(|error| Error { path: directory.display().to_string(), reason: error.to_string() })?;
    tracing::info!(path = %directory.display(), "Reading the inbox.");
    let in_flight: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    loop {
        for path in ready_files(&directory) {
            if !lock(&in_flight).insert(path.clone()) {
                continue;
            }
            let event = match std::fs::read(&path)
                .map_err(|error| error.to_string())
                .and_then(|bytes| Event::parse(&bytes).map_err(|error| error.to_string()))
            {
                Ok(event) => event,
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "Inbox file rejected.");
                    reject(&path, &rejected, &reason);
                    lock(&in_flight).remove(&path);
                    continue;
                }
            };
            let span = tracing::info_span!("inbox_file", event_id = %event.id);
            let (reply, outcome) = tokio::sync::oneshot::channel();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                sent = input.send(Delivery { event, reply: Some(reply) }) => if sent.is_err() { return Ok(()) },
            }
            let in_flight = Arc::clone(&in_flight);
            let rejected = rejected.clone();
            let settle = async move {
                match outcome.await {
                    Ok(Outcome::Committed | Outcome::Duplicate) => {
                        if let Err(error) = std::fs::remove_file(&path) {
                            tracing::warn!(file = %path.display(), %error, "Cannot delete a processed inbox file.");
                        }
                    }
                    Ok(Outcome::Unroutable(reason)) => reject(&path, &rejected, &reason),
                    // Not committed: the file stays and is read again.
                    Ok(Outcome::Failed(_)) | Err(_) => {}
                }
                lock(&in_flight).remove(&path);
            };
            tokio::spawn(settle.instrument(span));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Writes one event into `directory` atomically, named so that files sort in writing order.
pub fn write(directory: &Path, event: &Event, sequence: u64) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(directory)?;
    let safe_id: String =
        event.id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(80).collect();
    let name = format!("{:020}-{sequence:06}-{safe_id}.json", event.time.map_or(0, |time| time.timestamp_micros()));
    let path = directory.join(&name);
    let temporary = directory.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, event.to_json())?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

fn ready_files(directory: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(directory) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    files.sort();
    files
}

fn reject(path: &Path, rejected: &Path, reason: &str) {
    let Some(name) = path.file_name() else { return };
    let target = rejected.join(name);
    if std::fs::rename(path, &target).is_ok() {
        let _ = std::fs::write(target.with_extension("reason"), format!("{reason}\n"));
    }
}
