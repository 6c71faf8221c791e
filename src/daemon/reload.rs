//! Reload: SIGHUP, `systemctl reload onair` (which sends it) and `POST /api/v1/reload` re-read
//! the config file with the `config::Source` the daemon started with, and the machines directory.
//!
//! The file's broadcasts and the machines are applied through `catalog::Manager::reload`, or the
//! whole reload is refused with every problem (the running set unchanged, the refusal audited and
//! each problem logged). Every other setting (listeners, broker, store, engine sizes, media, …)
//! is only read at start: a changed one is reported as needing a restart, not silently ignored.
//! One reload at a time; under systemd, `RELOADING=1` then `READY=1` around each.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Settings;
use crate::catalog::{FileBroadcasts, Manager, ProblemAt};
use crate::config::Source;
use crate::http::reload::{Outcome, Refusal, Report, Request};
use crate::shutdown::Hangups;

/// The top-level tables a reload applies (the rest needs a restart). `emulator` is not the
/// daemon's.
const APPLIED: &[&str] = &["broadcasts", "emulator"];

/// What a reload needs: where the settings come from, those the daemon runs with, and the only
/// writer of the running set.
pub struct Reloader {
    source: Source,
    running: Settings,
    /// The settings as written when the daemon started (`None` when they could not be read
    /// again), flattened to dotted keys, to tell which changed.
    baseline: Option<BTreeMap<String, Value>>,
    catalog: Arc<Manager>,
}

impl Reloader {
    /// The settings the daemon started with are the baseline of the restart-needed keys (read in
    /// the same pass as the settings, `Settings::written`); the file's broadcasts are not kept
    /// (a reload reads them again).
    pub fn new(source: Source, running: Settings, catalog: Arc<Manager>) -> Self {
        let baseline = Some(BTreeMap::clone(&running.written.0));
        Self { source, running: running.without_broadcasts(), baseline, catalog }
    }

    /// Re-reads the config file and the machines and applies them, or refuses with every problem.
    pub async fn reload(&mut self) -> Outcome {
        let (settings, written) = match read(&self.source) {
            Ok(read) => read,
            Err(crate::config::Error::Invalid(problems)) => {
                let problems: Vec<ProblemAt> = problems
                    .0
                    .into_iter()
                    .map(|problem| ProblemAt {
                        key: problem.key,
                        reason: format!("{} ({})", problem.reason, problem.origin),
                    })
                    .collect();
                return Err(self.refuse(problems).await);
            }
        };
        let restart_needed = match &self.baseline {
            Some(baseline) => changed_keys(baseline, &written),
            None => {
                self.baseline = Some(written);
                Vec::new()
            }
        };
        // The machines directory the daemon runs with (a new `engine.machines_dir` needs a restart).
        let library = super::load_machines(self.running.engine.machines_dir.as_deref());
        // What `onair check` would refuse and the manager does not look at: a file this daemon
        // could not start from. The manager checks the rest as `onair check` would (the machines'
        // problems, each broadcast's machine, a year of every schedule, file and API broadcasts
        // together) and audits a refusal.
        let missing: Vec<ProblemAt> = settings
            .media
            .missing()
            .into_iter()
            .map(|key| ProblemAt { key: key.to_string(), reason: "required to run (no default)".into() })
            .collect();
        if !missing.is_empty() {
            return Err(self.refuse(missing).await);
        }
        let file = FileBroadcasts { broadcasts: &settings.engine.broadcasts, sources: &settings.engine.sources };
        match self.catalog.reload(&file, Arc::new(library)).await {
            Ok(reloaded) => {
                for key in &restart_needed {
                    tracing::warn!(setting = %key, "Setting changed in the config file; it takes effect at the next restart.");
                }
                Ok(Report { reloaded, restart_needed })
            }
            Err(crate::catalog::Error::Invalid(problems)) => {
                log_refused(&problems);
                Err(Refusal::Invalid(problems))
            }
            Err(error) => {
                tracing::error!(%error, "Reload failed; nothing changed.");
                Err(Refusal::Failed(error.to_string()))
            }
        }
    }

    /// Refuses the reload before the manager saw it: logged and audited as the manager does.
    async fn refuse(&self, problems: Vec<ProblemAt>) -> Refusal {
        log_refused(&problems);
        self.catalog.audit_refused_reload(&problems).await;
        Refusal::Invalid(problems)
    }
}

fn log_refused(problems: &[ProblemAt]) {
    for problem in problems {
        tracing::error!(%problem, "Reload refused: problem in the config file or the machines.");
    }
    tracing::error!(problems = problems.len(), "Reload refused; nothing changed.");
}

/// The daemon's settings from `source`, and every setting as written (defaults, file and
/// environment merged) by dotted key, but those a reload applies.
fn read(source: &Source) -> Result<(Settings, BTreeMap<String, Value>), crate::config::Error> {
    crate::config::load(source, |root| {
        root.ignore("emulator");
        let settings = Settings::parse(root, source);
        let written = BTreeMap::clone(&settings.written.0);
        (settings, written)
    })
}

/// Every setting as written by dotted key, but those a reload applies. Values may be secrets:
/// `Debug` shows only how many there are.
#[derive(Clone, Default)]
pub struct Baseline(Arc<BTreeMap<String, Value>>);

impl Baseline {
    /// The settings of `root`.
    pub(super) fn of(root: &crate::config::Section<'_>) -> Self {
        let mut written = BTreeMap::new();
        for key in root.keys().into_iter().filter(|key| !APPLIED.contains(&key.as_str())) {
            if let Some(value) = root.peek(&key) {
                flatten(&key, value, &mut written);
            }
        }
        Self(Arc::new(written))
    }
}

impl std::fmt::Debug for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Baseline({} settings)", self.0.len())
    }
}

fn flatten(prefix: &str, value: &Value, into: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                flatten(&format!("{prefix}.{key}"), value, into);
            }
        }
        _ => {
            into.insert(prefix.to_string(), value.clone());
        }
    }
}

/// The keys whose value differs (added, removed or changed), in order. Only keys: a secret's
/// value is never shown.
fn changed_keys(before: &BTreeMap<String, Value>, after: &BTreeMap<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> =
        before.iter().filter(|(key, value)| after.get(*key) != Some(*value)).map(|(key, _)| key.clone()).collect();
    keys.extend(after.keys().filter(|key| !before.contains_key(*key)).cloned());
    keys.sort();
    keys
}

/// Serves reloads until `shutdown`: each SIGHUP, and each request of `POST /api/v1/reload` (when
/// `requests` is given), one at a time. `ready` tells whether the daemon told systemd it is ready
/// (only then does a reload say `RELOADING=1` and `READY=1`).
pub fn spawn(
    mut reloader: Reloader,
    mut requests: Option<mpsc::Receiver<Request>>,
    mut hangups: Hangups,
    ready: crate::broker::Status,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let serving = async move {
        loop {
            let answer: Option<Request> = tokio::select! {
                () = shutdown.cancelled() => return,
                () = hangups.recv() => None,
                request = next(&mut requests) => Some(request),
            };
            let notify = ready.is_ready();
            if notify {
                crate::systemd::reloading();
            }
            let started = std::time::Instant::now();
            let outcome = reloader.reload().await;
            if let Ok(report) = &outcome {
                tracing::info!(
                    elapsed = ?started.elapsed(),
                    created = ?report.reloaded.created,
                    changed = ?report.reloaded.changed,
                    removed = ?report.reloaded.removed,
                    retiring = ?report.reloaded.retiring,
                    restart_needed = ?report.restart_needed,
                    "Reloaded."
                );
            }
            if notify {
                crate::systemd::ready("running");
            }
            if let Some(answer) = answer {
                // The caller may have given up waiting; the outcome is logged either way.
                let _ = answer.send(outcome);
            }
        }
    };
    tokio::spawn(serving.instrument(tracing::info_span!("reload")))
}

/// The next request, or never once there are none (the listener is gone or disabled).
async fn next(requests: &mut Option<mpsc::Receiver<Request>>) -> Request {
    if let Some(receiver) = requests {
        if let Some(request) = receiver.recv().await {
            return request;
        }
        *requests = None;
    }
    std::future::pending().await
}

/// The restart-needed keys of two sets of settings as written (tests).
#[cfg(test)]
fn restart_needed(before: &serde_json::Map<String, Value>, after: &serde_json::Map<String, Value>) -> Vec<String> {
    let flat = |map: &serde_json::Map<String, Value>| {
        let mut flat = BTreeMap::new();
        for (key, value) in map.iter().filter(|(key, _)| !APPLIED.contains(&key.as_str())) {
            flatten(key, value, &mut flat);
        }
        flat
    };
    changed_keys(&flat(before), &flat(after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn only_settings_outside_the_broadcasts_need_a_restart_and_secrets_are_named_not_shown() {
        let before = map(json!({
            "http": {"listen": "127.0.0.1:8781", "api_token": "old-secret-token-0123"},
            "broker": {"url": "amqp://a"},
            "broadcasts": {"news": {"channel": "news"}},
            "engine": {"workers": 4},
        }));
        let after = map(json!({
            "http": {"listen": "127.0.0.1:9000", "api_token": "new-secret-token-0123"},
            "broker": {"url": "amqp://a"},
            "broadcasts": {"news": {"channel": "other"}, "sport": {}},
            "engine": {"workers": 4, "inbox_poll": "1s"},
        }));
        let keys = restart_needed(&before, &after);
        assert_eq!(keys, ["engine.inbox_poll", "http.api_token", "http.listen"]);
        assert!(!format!("{keys:?}").contains("secret"));
        assert!(restart_needed(&before, &before).is_empty());
        let removed =
            map(json!({"http": {"listen": "127.0.0.1:8781"}, "broker": {"url": "amqp://a"}, "engine": {"workers": 4}}));
        assert_eq!(restart_needed(&before, &removed), ["http.api_token"]);
    }
}
