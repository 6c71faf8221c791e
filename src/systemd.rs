//! The systemd service protocol: `READY=1` once the daemon takes events, `WATCHDOG=1` only while
//! it makes progress, `STOPPING=1` on the way out. Without `$NOTIFY_SOCKET` every call is a
//! no-op, so the daemon runs the same outside systemd.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// Tells the service manager the daemon is ready, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the daemon reloads its configuration (`ready` follows when done).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
    // The time of the request, which `Type=notify-reload` requires with RELOADING=1.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tells the service manager the daemon is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "Cannot notify the service manager.");
    }
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`, given as `usec`), when it is meant
/// for this process (`$WATCHDOG_PID`, given as `pid`, unset or `process`), as
/// `sd_watchdog_enabled(3)` reads them. The settings read the variables (`daemon::Settings`).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, process: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|usec| *usec > 0)?;
    match pid.map(|pid| pid.trim().parse::<u32>()) {
        None => {}
        Some(Ok(pid)) if pid == process => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval while `health` shows progress; while the consumer is
/// stalled it stays silent (and says why in the status line), so that systemd restarts a daemon
/// that is up but no longer doing its job.
pub async fn watchdog(health: Health, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_stalled = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match health.stalled() {
            None => {
                if was_stalled {
                    tracing::info!("Progress again; watchdog pings resume.");
                    send(&[NotifyState::Watchdog, NotifyState::Status("running")]);
                } else {
                    send(&[NotifyState::Watchdog]);
                }
                was_stalled = false;
            }
            Some(reason) => {
                if !was_stalled {
                    tracing::error!(%reason, "No progress; watchdog pings stop (systemd restarts onair if it lasts).");
                    send(&[NotifyState::Status(&format!("stalled: {reason}"))]);
                }
                was_stalled = true;
            }
        }
    }
}
