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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

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

/// How a store failure is named to the operator: `disk full`, `I/O error`, `locked`, or `error`
/// when the store gave no known condition.
pub fn fault_label(fault: Option<crate::store::Fault>) -> String {
    fault.map_or_else(|| "error".to_string(), |fault| fault.to_string())
}

/// Whether the engine's commits succeed. The lanes report every commit's result; readiness, the
/// progress check, the broker consumer (which does not start consuming while commits fail) and
/// `/metrics` read it. An episode starts with the first failed commit after a success and ends
/// with the next successful commit.
#[derive(Clone, Debug)]
pub struct Commits(Arc<CommitsInner>);

#[derive(Debug)]
struct CommitsInner {
    /// Failed commits since start.
    failures: AtomicU64,
    failing: Mutex<Option<Failing>>,
    /// `true` while commits fail.
    state: tokio::sync::watch::Sender<bool>,
}

/// An episode of failing commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    /// What the store said, when it is a known condition.
    pub fault: Option<crate::store::Fault>,
    /// The last error.
    pub reason: String,
    /// The first failure of the episode.
    pub since: tokio::time::Instant,
    /// Failed commits in the episode.
    pub failures: u64,
}

impl Failing {
    /// `disk full`, `I/O error`, `locked`, or `error` when the store gave no known condition.
    pub fn label(&self) -> String {
        fault_label(self.fault)
    }
}

impl Default for Commits {
    fn default() -> Self {
        Self(Arc::new(CommitsInner {
            failures: AtomicU64::new(0),
            failing: Mutex::new(None),
            state: tokio::sync::watch::channel(false).0,
        }))
    }
}

impl Commits {
    /// A commit failed; true when this starts an episode (the caller logs it, once).
    pub fn failed(&self, error: &crate::store::Error) -> bool {
        self.0.failures.fetch_add(1, Ordering::Relaxed);
        let mut failing = self.failing_lock();
        let started = failing.is_none();
        let episode = failing.get_or_insert_with(|| Failing {
            fault: None,
            reason: String::new(),
            since: tokio::time::Instant::now(),
            failures: 0,
        });
        episode.fault = error.fault();
        episode.reason = error.to_string();
        episode.failures += 1;
        drop(failing);
        if started {
            self.0.state.send_replace(true);
        }
        started
    }

    /// A commit succeeded; the episode it ends, if one was going on (the caller logs it, once).
    pub fn succeeded(&self) -> Option<Failing> {
        let ended = self.failing_lock().take();
        if ended.is_some() {
            self.0.state.send_replace(false);
        }
        ended
    }

    /// The episode going on, if commits fail.
    pub fn failing(&self) -> Option<Failing> {
        self.failing_lock().clone()
    }

    /// Failed commits since start (`onair_store_commit_failures_total`).
    pub fn failures(&self) -> u64 {
        self.0.failures.load(Ordering::Relaxed)
    }

    /// Returns once commits do not fail (at once when they do not).
    pub async fn until_ok(&self) {
        let mut state = self.0.state.subscribe();
        let _ = state.wait_for(|failing| !failing).await;
    }

    fn failing_lock(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        self.0.failing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
}

impl Health {
    pub fn new(settings: Settings, store: PathBuf, broker: crate::broker::Status, commits: Commits) -> Self {
        Self(Arc::new(Inner { settings, store, broker, commits, media: Mutex::new(None) }))
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
        let checks = [("store", store), ("broker", broker), ("media", media), ("progress", progress)].into();
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
        self.0.media.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
