//! The removal reaper: broadcasts marked for removal (a forced delete, or removed from the config
//! file while they ran) are removed once idle.
//!
//! While any is marked, it asks `Manager::finish_removal` for each every `EVERY`; while none is,
//! it waits for the next change of the running set.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::Manager;

/// How often broadcasts marked for removal are looked at.
pub const EVERY: Duration = Duration::from_millis(500);

/// Runs until `shutdown`.
pub async fn run(manager: Arc<Manager>, shutdown: CancellationToken) {
    let mut changes = manager.registry().subscribe();
    loop {
        let marked = manager.deleting();
        if marked.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            continue;
        }
        for entry in marked {
            if shutdown.is_cancelled() {
                return;
            }
            let id = &entry.broadcast.id;
            if let Err(error) = manager.finish_removal(id).await {
                tracing::warn!(broadcast = %id, %error, "Cannot remove a broadcast marked for removal yet; trying again.");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}
