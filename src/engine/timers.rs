//! Durable machine timers: one ordered map of deadlines for every broadcast, one task.
//!
//! Timers are stored with the instance they belong to (the store's `timers` table); this task only
//! schedules them. When one comes due it becomes an `onair.timer.fired` event with a deterministic
//! id (`timer/<broadcast>/<name>/<due ms>`) that goes through the broadcast's lane; the lane checks
//! the timer is still armed, so a timer cancelled meanwhile does nothing, and a timer that fires
//! again after a restart is a duplicate. A timer that came due while onair was down fires once at
//! start. Sleeps are capped at one second so that a wall-clock jump is noticed quickly.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Delivery;
use crate::clock::SharedClock;
use crate::event::{self, Event};

/// The longest the timer task sleeps before looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(1);

enum Command {
    Set { broadcast: String, name: String, due: DateTime<Utc> },
    Cancel { broadcast: String, name: String },
}

/// A handle to the timer task.
#[derive(Clone)]
pub(super) struct Timers {
    commands: mpsc::UnboundedSender<Command>,
}

impl Timers {
    /// Starts the timer task; its handle is the engine's to join.
    pub fn start(
        input: mpsc::Sender<Delivery>,
        clock: SharedClock,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(receiver, input, clock, shutdown).instrument(tracing::info_span!("timers")));
        (Self { commands }, task)
    }

    pub fn set(&self, broadcast: &str, name: &str, due: DateTime<Utc>) {
        let _ = self.commands.send(Command::Set { broadcast: broadcast.into(), name: name.into(), due });
    }

    pub fn cancel(&self, broadcast: &str, name: &str) {
        let _ = self.commands.send(Command::Cancel { broadcast: broadcast.into(), name: name.into() });
    }
}

async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    input: mpsc::Sender<Delivery>,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    // Ordered by due instant; `armed` finds an entry by broadcast and name.
    let mut queue: BTreeSet<(DateTime<Utc>, String, String)> = BTreeSet::new();
    let mut armed: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    loop {
        let now = clock.now();
        while let Some(first) = queue.first().cloned() {
            if first.0 > now {
                break;
            }
            queue.pop_first();
            let (due, broadcast, name) = first;
            armed.remove(&(broadcast.clone(), name.clone()));
            let event = Event::new(
                format!("timer/{broadcast}/{name}/{}", due.timestamp_millis()),
                event::TIMER_FIRED,
                broadcast.clone(),
                json!({"timer": name, "due": due.to_rfc3339(), "lateness_ms": (now - due).num_milliseconds()}),
                now,
            );
            tracing::debug!(%broadcast, timer = %name, "Timer fired.");
            if input.send(Delivery { event, reply: None }).await.is_err() {
                return;
            }
        }
        let sleep = queue
            .first()
            .map(|(due, _, _)| (*due - clock.now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
            command = commands.recv() => match command {
                Some(Command::Set { broadcast, name, due }) => {
                    if let Some(previous) = armed.insert((broadcast.clone(), name.clone()), due) {
                        queue.remove(&(previous, broadcast.clone(), name.clone()));
                    }
                    queue.insert((due, broadcast, name));
                }
                Some(Command::Cancel { broadcast, name }) => {
                    if let Some(previous) = armed.remove(&(broadcast.clone(), name.clone())) {
                        queue.remove(&(previous, broadcast, name));
                    }
                }
                None => return,
            },
        }
    }
}
