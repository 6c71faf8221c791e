//! One shutdown root for the whole process.
//!
//! `main` owns a `CancellationToken` and a `TaskTracker`; every subsystem gets a child token and
//! is spawned on the tracker. On SIGTERM or SIGINT the token is cancelled, tasks stop at their next
//! safe point, and `drain` waits for them up to the grace period before giving up with a warning.
//! This module deliberately knows nothing about what the tasks do.
//!
//! SIGHUP is not a stop: `onair run` listens for it (`Hangups`) and reloads its config file; the
//! other commands keep its default action.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Shutdown settings (`[shutdown]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long tasks get to reach a safe point before the process stops anyway.
    pub grace: Duration,
}

impl Settings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let grace = section.duration("grace");
        section.check("grace", grace > Duration::ZERO, "must be greater than zero");
        Self { grace }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every task finished within the grace period.
    Clean,
    /// The grace period ran out with tasks still running.
    Forced,
}

/// Resolves when the process is asked to stop.
///
/// SIGTERM is what systemd and container runtimes send; SIGINT is Ctrl-C at a terminal.
/// Both mean "finish what you are doing and exit", so they are treated the same.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "Shutdown requested."),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "Shutdown requested."),
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "Cannot install signal handlers; falling back to Ctrl-C only.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP, heard: each one asks the daemon to reload. Once listening, a SIGHUP no longer ends the
/// process (its default action); listen before anything slow, so that none comes in between.
#[derive(Debug)]
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts listening (within a tokio runtime); when the handler cannot be installed, says so
    /// and never hears one.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|error| tracing::warn!(%error, "Cannot listen for SIGHUP; reload through the API only."))
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves at the next SIGHUP (never, when not listening).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            tracing::info!(signal = "SIGHUP", "Reload requested.");
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Cancels `root` when a signal arrives or when `root` is cancelled by someone else.
pub fn cancel_on_signal(root: CancellationToken) {
    let watch = async move {
        tokio::select! {
            _ = signal() => root.cancel(),
            _ = root.cancelled() => {}
        }
    };
    tokio::spawn(watch.instrument(tracing::info_span!("signals")));
}

/// Waits for every tracked task to finish, at most `grace` after `root` is cancelled.
pub async fn drain(root: &CancellationToken, tracker: &TaskTracker, grace: Duration) -> Drain {
    root.cancel();
    tracker.close();
    match tokio::time::timeout(grace, tracker.wait()).await {
        Ok(()) => Drain::Clean,
        Err(_) => {
            tracing::warn!(grace = ?grace, tasks = tracker.len(), "Grace period over; stopping the remaining tasks by force.");
            Drain::Forced
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_is_clean_when_tasks_stop_at_their_safe_point() {
        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        let token = root.child_token();
        tracker.spawn(async move { token.cancelled().await });
        assert_eq!(drain(&root, &tracker, Duration::from_secs(5)).await, Drain::Clean);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_is_forced_after_the_grace_period() {
        let root = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        let started = tokio::time::Instant::now();
        assert_eq!(drain(&root, &tracker, Duration::from_secs(5)).await, Drain::Forced);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
