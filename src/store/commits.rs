//! Whether the engine's commits succeed: one shared record that the lanes write and readiness,
//! the progress check, the broker consumer and `/metrics` read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How a store failure is named to the operator: `disk full`, `I/O error`, `locked`, or `error`
/// when the store gave no known condition.
pub fn fault_label(fault: Option<super::Fault>) -> String {
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
    pub fault: Option<super::Fault>,
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
    pub fn failed(&self, error: &super::Error) -> bool {
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
        crate::sync::lock(&self.0.failing)
    }
}
