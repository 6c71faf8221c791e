//! The daemon's wiring (`onair run`) and the checks behind `check` and `run`.
//!
//! `run` checks everything first (settings, machines, broadcasts, media settings: exit 78 on any
//! problem), then starts the daemon in two steps, as linkerd's `build` and `spawn`:
//! - `build` (`Built::build`) does everything that can fail and starts nothing: the media client,
//!   the store, the machines, both listeners bound, the scheduler's cursors;
//! - `spawn` (`Built::spawn`) takes what was built (listeners already bound, as mini-redis's
//!   `run(listener, shutdown)`) and starts the engine (which resumes timers and pending actions
//!   from the store before taking events), then the inputs.
//!
//! A failure while building leaves nothing running. `Daemon::stop` stops the inputs, then the
//! engine, and reports a task that panicked or failed as an error.
//!
//! While it runs, `onair run` reloads its config file on SIGHUP and `POST /api/v1/reload`
//! (`reload`): the broadcasts and the machines change, the rest is reported as needing a restart.
//!
//! The commands that look at a daemon from outside (`status`, `send`, `dlq`) live in `cli`;
//! `daemon` does not know the command line.

mod build;
mod reload;
mod spawn;

mod settings;

pub use reload::Baseline;
pub use settings::{Settings, load};

mod machines;
mod reaper;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::{self, Publisher};
use crate::clock::SharedClock;
use crate::engine::{Engine, inbox};
use crate::machine::Library;

pub use build::{Bound, Built, Listeners};

/// Why the daemon could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The media client could not be built from its settings.
    #[error(transparent)]
    Media(#[from] crate::media::Error),
    /// The store could not be opened (`is_unusable` tells whether retrying can help).
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// A listener's address could not be bound.
    #[error("cannot listen on {address} ({setting}): {error}")]
    Bind { setting: &'static str, address: SocketAddr, error: std::io::Error },
    /// The scheduler could not read or record its cursors.
    #[error(transparent)]
    Scheduler(#[from] crate::schedule::SchedulerError),
    /// The running set of broadcasts could not be loaded or reconciled with the config file.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::Error),
    /// The engine could not load its state.
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    /// The inbox could not be read.
    #[error(transparent)]
    Inbox(#[from] inbox::Error),
    /// A task panicked or was cancelled instead of finishing.
    #[error("the {task} task failed: {source}")]
    Task { task: &'static str, source: tokio::task::JoinError },
}

impl Error {
    /// The store is damaged, too new or not writable: nothing changes by retrying.
    pub fn unusable_store(&self) -> Option<&crate::store::Error> {
        match self {
            Error::Store(store)
            | Error::Catalog(crate::catalog::Error::Store(store))
            | Error::Scheduler(crate::schedule::SchedulerError::Store(store))
                if store.is_unusable() =>
            {
                Some(store)
            }
            _ => None,
        }
    }
}
pub use machines::{load_machines, read_machine_dir};

/// Every reason the daemon cannot run with these settings: machine problems (with file and
/// location), broadcasts naming a missing machine, schedule problems over the coming year (from
/// `now`), missing media settings.
pub fn problems(settings: &Settings, library: &Library, now: DateTime<Utc>) -> Vec<String> {
    let mut problems: Vec<String> = library.problems.iter().map(ToString::to_string).collect();
    for (id, broadcast) in &settings.engine.broadcasts {
        if library.get(&broadcast.machine).is_none() {
            let known = library.machines.keys().cloned().collect::<Vec<_>>().join(", ");
            problems
                .push(format!("broadcasts.{id}.machine: no machine named {:?} (loaded: {known})", broadcast.machine));
        }
    }
    problems.extend(crate::schedule::plan::problems(&crate::broadcast::scheduled(&settings.engine.broadcasts), now));
    problems.extend(settings.media.missing().into_iter().map(|key| format!("{key}: required to run (no default)")));
    problems
}

/// What `run` calls once the daemon has started (`after_start`).
static AFTER_START: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what `run` calls (on a blocking thread) once the daemon has started and what only
/// start-up needed is freed: the binary gives the allocator's free memory back to the system
/// there (the library uses no unsafe code). Only the first call counts.
pub fn after_start(hook: fn()) {
    let _ = AFTER_START.set(hook);
}

/// `onair run`: the daemon from the settings read from `source`, which a reload reads again.
pub async fn run(
    mut settings: Settings,
    source: &crate::config::Source,
    shutdown: CancellationToken,
) -> Result<ExitCode, Error> {
    // First: from now on a SIGHUP asks for a reload and never ends the process.
    let hangups = crate::shutdown::Hangups::listen();
    let library = load_machines(settings.engine.machines_dir.as_deref());
    let problems = problems(&settings, &library, crate::clock::system().now());
    if !problems.is_empty() {
        eprintln!("error: cannot run ({} problem{}):", problems.len(), if problems.len() == 1 { "" } else { "s" });
        for problem in problems {
            eprintln!("  - {problem}");
        }
        return Ok(ExitCode::from(crate::config::EXIT_CODE as u8));
    }
    // Not ready before what only start-up needed is given back (below).
    let built = Built::build(&settings, library, crate::clock::system()).await;
    // The running set holds the file's broadcasts from now on (a reload reads the file again).
    settings = settings.without_broadcasts();
    let started = async { built?.holding_readiness().spawn().await };
    let daemon = match started.await {
        Ok(daemon) => daemon,
        // Damaged, too new, not writable: nothing will change by retrying; say what to do.
        Err(error) => match error.unusable_store() {
            Some(store) => {
                eprintln!("error: {store}");
                return Ok(ExitCode::from(crate::config::EXIT_CODE as u8));
            }
            None => return Err(error),
        },
    };
    // What start-up needed for a while only (the config file's trees, the store's rows read to
    // build the running set, the file's broadcasts) is freed by now: give it back
    // (`after_start`), then say ready, so that what a monitor reads at ready is what stays.
    if let Some(hook) = AFTER_START.get().copied() {
        let _ = tokio::task::spawn_blocking(hook).await;
    }
    daemon.health().set_starting(false);
    // READY=1 once the store is open (start did it) and the consumer is registered; then the
    // watchdog, fed only while events get committed.
    let status = daemon.broker_status().clone();
    let health = daemon.health().clone();
    let notifier = shutdown.child_token();
    let watchdog = settings.watchdog;
    let notify = {
        let notifier = notifier.clone();
        let notifying = async move {
            while !status.is_ready() {
                tokio::select! {
                    () = notifier.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            tracing::info!("Ready: store open, topology declared, consumer registered.");
            crate::systemd::ready("running");
            if let Some(interval) = watchdog {
                tracing::info!(interval = ?interval, "systemd watchdog enabled; pinging while events are committed.");
                crate::systemd::watchdog(health, interval, notifier).await;
            }
        };
        tokio::spawn(notifying.instrument(tracing::info_span!("systemd_notify")))
    };
    let reloads = reload::spawn(
        reload::Reloader::new(source.clone(), settings.clone(), Arc::clone(&daemon.catalog)),
        daemon.reloads.connect(),
        hangups,
        daemon.broker_status().clone(),
        notifier.clone(),
    );
    shutdown.cancelled().await;
    crate::systemd::stopping();
    notifier.cancel();
    let mut failures = Failures::default();
    failures.note(joined("systemd notifier", notify).await);
    failures.note(joined("reload", reloads).await);
    failures.note(daemon.stop().await);
    failures.into_result()?;
    Ok(ExitCode::SUCCESS)
}

/// A running daemon: the engine, its inputs (broker consumer, inbox, scheduler, ingress), the
/// operations listener, and the relay that publishes what onair produces for other systems.
pub struct Daemon {
    engine: Engine,
    /// Stops the engine, after the inputs.
    core: CancellationToken,
    /// Stops the inputs: they finish what they handed over (acks) before the engine stops.
    intake: CancellationToken,
    consumer: JoinHandle<()>,
    inbox: JoinHandle<Result<(), inbox::Error>>,
    relay: JoinHandle<()>,
    scheduler: Option<JoinHandle<()>>,
    ingress: Option<(SocketAddr, crate::ingress::Ingress, JoinHandle<()>)>,
    publisher: Arc<Publisher>,
    status: broker::Status,
    schedule_stats: crate::schedule::Stats,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    probe: JoinHandle<()>,
    health: crate::health::Health,
    metrics: crate::metrics::Metrics,
    /// The running set of broadcasts and its only writer.
    catalog: Arc<crate::catalog::Manager>,
    /// Where `POST /api/v1/reload` sends its requests, once `run` serves them.
    reloads: crate::http::reload::Reloads,
}

impl Daemon {
    /// Builds (store, listeners, machines: everything that can fail), then spawns the engine
    /// (which resumes timers and pending actions first) and the inputs. `library` must have
    /// passed the checks of `problems`.
    pub async fn start(settings: &Settings, library: Library) -> Result<Self, Error> {
        Self::start_with_clock(settings, library, crate::clock::system()).await
    }

    /// `start` with a given wall clock (tests move it to put the daemon before or after a step).
    pub async fn start_with_clock(settings: &Settings, library: Library, clock: SharedClock) -> Result<Self, Error> {
        Built::build(settings, library, clock).await?.spawn().await
    }

    /// Readiness and progress.
    pub fn health(&self) -> &crate::health::Health {
        &self.health
    }

    /// The daemon's measurements.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Where the operations listener listens, when it is enabled.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(address, _)| *address)
    }

    /// The broker consumer's state.
    pub fn broker_status(&self) -> &broker::Status {
        &self.status
    }

    /// Where the webhook ingress listens, and its counters, when it is enabled.
    pub fn ingress(&self) -> Option<(SocketAddr, Arc<crate::ingress::Stats>)> {
        self.ingress.as_ref().map(|(address, ingress, _)| (*address, ingress.stats()))
    }

    /// The scheduler's counters.
    pub fn schedule_stats(&self) -> &crate::schedule::Stats {
        &self.schedule_stats
    }

    /// The running set of broadcasts, and the way to change it.
    pub fn catalog(&self) -> &Arc<crate::catalog::Manager> {
        &self.catalog
    }

    /// Stops the inputs (in-flight events finish and are acknowledged), then the engine.
    ///
    /// Every stage runs even when a task failed, so that nothing is left running; the first
    /// failure (a task that panicked, the inbox that could not be read) is returned and any
    /// further ones are logged.
    pub async fn stop(self) -> Result<(), Error> {
        tracing::info!(
            "Stopping: no new events; in-flight events finish and are acknowledged; pending actions resume at the next start."
        );
        let mut failures = Failures::default();
        self.intake.cancel();
        if let Some(scheduler) = self.scheduler {
            failures.note(joined("scheduler", scheduler).await);
        }
        if let Some((_, _, task)) = self.ingress {
            failures.note(joined("ingress", task).await);
        }
        if let Some((_, task)) = self.http {
            failures.note(joined("operations listener", task).await);
        }
        failures.note(joined("media probe", self.probe).await);
        failures.note(joined("broker consumer", self.consumer).await);
        failures.note(joined("inbox", self.inbox).await.and_then(|read| read.map_err(Error::from)));
        self.core.cancel();
        for (task, source) in self.engine.join().await {
            failures.note(Err(Error::Task { task, source }));
        }
        failures.note(joined("relay", self.relay).await);
        self.publisher.close().await;
        failures.into_result()
    }
}

/// Waits for a task and names it when it panicked or was cancelled.
async fn joined<T>(task: &'static str, handle: JoinHandle<T>) -> Result<T, Error> {
    handle.await.map_err(|source| Error::Task { task, source })
}

/// What went wrong while stopping: the first failure, returned; the others, logged as they come.
#[derive(Default)]
struct Failures(Option<Error>);

impl Failures {
    fn note(&mut self, result: Result<(), Error>) {
        let Err(error) = result else { return };
        match self.0 {
            None => self.0 = Some(error),
            Some(_) => tracing::error!(%error, "A further task failed while stopping."),
        }
    }

    fn into_result(self) -> Result<(), Error> {
        self.0.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panicked_is_an_error_naming_it() {
        let handle = tokio::spawn(async { panic!("boom") });
        let error = joined::<()>("relay", handle).await.unwrap_err();
        assert!(matches!(error, Error::Task { task: "relay", .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.starts_with("the relay task failed: "), "{message}");
        assert!(message.contains("panicked"), "{message}");
    }

    #[tokio::test]
    async fn stopping_keeps_the_first_failure() {
        let mut failures = Failures::default();
        failures.note(Ok(()));
        assert!(failures.0.is_none());
        let first = joined::<()>("scheduler", tokio::spawn(async { panic!("first") })).await;
        let second = joined::<()>("relay", tokio::spawn(async { panic!("second") })).await;
        failures.note(first);
        failures.note(second);
        failures.note(Ok(()));
        let error = failures.into_result().unwrap_err();
        assert!(matches!(error, Error::Task { task: "scheduler", .. }), "{error:?}");
    }
}
