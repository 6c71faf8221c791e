//! Whether the daemon is ready and making progress: what `/readyz` answers and what the systemd
//! watchdog is fed from.
//!
//! Ready means: the engine's commits succeed (`Commits`: the last commit did not fail) and the
//! store takes a write (a write transaction can begin), RabbitMQ is connected with the consumer
//! registered, and the media API answered the last probe. Progress means the consumer is not
//! stalled: deliveries that arrive get committed (`broker::Status::stalled`), and no commit has
//! been failing for `stall_after`. An idle daemon is making progress; a daemon whose commits keep
//! failing, or whose deliveries sit in hand, is not, and the watchdog stops so that systemd
//! restarts it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::store::Commits;

/// `[health]`
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often the media API is probed.
    pub media_check_interval: Duration,
    /// How long deliveries may go without a commit before the consumer counts as stalled.
    pub stall_after: Duration,
}

impl Settings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let settings = Self {
            media_check_interval: section.duration("media_check_interval"),
            stall_after: section.duration("stall_after"),
        };
        section.check(
            "media_check_interval",
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&settings.media_check_interval),
            "must be between 1s and 1h",
        );
        section.check(
            "stall_after",
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&settings.stall_after),
            "must be between 1s and 1h",
        );
        settings
    }
}

/// One check's answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// `/readyz`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: std::collections::BTreeMap<&'static str, Check>,
}

/// The daemon's health, shared by the HTTP server, the watchdog and the media probe.
#[derive(Clone, Debug)]
pub struct Health(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    settings: Settings,
    store: PathBuf,
    broker: crate::broker::Status,
    commits: Commits,
    media: Mutex<Option<(Check, tokio::time::Instant)>>,
    /// Start-up is still finishing (`onair run` gives back what only start-up needed first).
    starting: std::sync::atomic::AtomicBool,
}

impl Health {
    pub fn new(settings: Settings, store: PathBuf, broker: crate::broker::Status, commits: Commits) -> Self {
        let starting = std::sync::atomic::AtomicBool::new(false);
        Self(Arc::new(Inner { settings, store, broker, commits, media: Mutex::new(None), starting }))
    }

    /// Holds readiness (the `start` check) while start-up is finishing, or releases it.
    pub fn set_starting(&self, starting: bool) {
        self.0.starting.store(starting, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every check, now (the media check is the last probe's answer).
    pub async fn readiness(&self) -> Readiness {
        let store = match self.0.commits.failing() {
            // A write transaction may still begin on a full disk: the commits' own result wins.
            Some(failing) => Check {
                ok: false,
                detail: format!(
                    "{}: {} commit{} failed in {} s, retrying; last: {}",
                    failing.label(),
                    failing.failures,
                    if failing.failures == 1 { "" } else { "s" },
                    failing.since.elapsed().as_secs(),
                    failing.reason
                ),
            },
            None => {
                let path = self.0.store.clone();
                let span = tracing::info_span!("store.probe_writable");
                match tokio::task::spawn_blocking(move || span.in_scope(|| crate::store::probe_writable(&path))).await {
                    Ok(Ok(())) => Check { ok: true, detail: "writable".into() },
                    Ok(Err(error)) => Check { ok: false, detail: error.to_string() },
                    Err(error) => Check { ok: false, detail: format!("the probe did not finish: {error}") },
                }
            }
        };
        let status = &self.0.broker;
        let broker = if status.is_ready() {
            Check { ok: true, detail: "connected and consuming".into() }
        } else {
            Check { ok: false, detail: status.last_error().unwrap_or_else(|| "not connected yet".into()) }
        };
        let media = match &*self.media() {
            Some((check, at)) => {
                Check { ok: check.ok, detail: format!("{} (checked {} s ago)", check.detail, at.elapsed().as_secs()) }
            }
            None => Check { ok: false, detail: "not checked yet".into() },
        };
        let progress = match self.stalled() {
            None => Check { ok: true, detail: "events are committed as they arrive".into() },
            Some(stalled) => Check { ok: false, detail: stalled },
        };
        let start = if self.0.starting.load(std::sync::atomic::Ordering::Relaxed) {
            Check { ok: false, detail: "finishing start-up".into() }
        } else {
            Check { ok: true, detail: "started".into() }
        };
        let checks =
            [("store", store), ("broker", broker), ("media", media), ("progress", progress), ("start", start)].into();
        let checks: std::collections::BTreeMap<&'static str, Check> = checks;
        Readiness { ready: checks.values().all(|check| check.ok), checks }
    }

    /// Why the daemon is not making progress, if it is not: the consumer holds deliveries that
    /// do not get committed, or commits (of any event, internal ones included) have been failing
    /// for `stall_after`.
    pub fn stalled(&self) -> Option<String> {
        let threshold = self.0.settings.stall_after;
        if let Some(stalled) = self.0.broker.stalled(threshold) {
            return Some(stalled.to_string());
        }
        let failing = self.0.commits.failing()?;
        let for_ = failing.since.elapsed();
        (for_ >= threshold).then(|| {
            format!(
                "no event committed for {for_:.0?}: store {} ({} failed commits)",
                failing.label(),
                failing.failures
            )
        })
    }

    fn media(&self) -> std::sync::MutexGuard<'_, Option<(Check, tokio::time::Instant)>> {
        crate::sync::lock(&self.0.media)
    }

    /// Probes the media API every `media_check_interval` until `shutdown`.
    pub async fn probe_media(self, client: crate::media::Client, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.0.settings.media_check_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let timeout = self.0.settings.media_check_interval.min(Duration::from_secs(15));
            let check = match tokio::time::timeout(timeout, client.get_streaming_endpoint("default")).await {
                Ok(Ok(_)) => Check { ok: true, detail: "reachable".into() },
                Ok(Err(error)) => Check { ok: false, detail: error.to_string() },
                Err(_) => Check { ok: false, detail: format!("no answer within {timeout:?}") },
            };
            let previous = self.media().replace((check.clone(), tokio::time::Instant::now()));
            if previous.as_ref().map(|(previous, _)| previous.ok) != Some(check.ok) {
                if check.ok {
                    tracing::info!("Media API reachable.");
                } else {
                    tracing::warn!(detail = %check.detail, "Media API not reachable.");
                }
            }
        }
    }
}
