//! Fault injection: throttling, server errors, latency, dropped responses, failed operations.
//!
//! Faults are set at start (`[emulator.faults]`, `--fault-*` flags) and changed at run time through
//! `PUT /_emulator/faults`. Decisions come from a seeded generator, so a single-client run repeats.
//! They apply to ARM requests only; the token endpoint and `/_emulator/` are never faulted.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::media::model::ErrorDetail;

/// The fault settings; a field a JSON object leaves out takes its value from `Faults::none()`, so
/// a partial object is a valid update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default = "Faults::none", deny_unknown_fields)]
pub struct Faults {
    /// Share of ARM requests answered 429 with `Retry-After`.
    pub throttle_rate: f64,
    /// The `Retry-After` of those answers, in seconds.
    pub retry_after_secs: u64,
    /// Share of ARM requests answered 500 or 503 (half each) without being applied.
    pub error_rate: f64,
    /// Delay added before every ARM response, in milliseconds.
    pub latency_ms: u64,
    /// Share of writes applied but whose response is dropped (connection closed, no answer).
    pub drop_rate: f64,
    /// Share of long-running operations that end Failed.
    pub lro_failure_rate: f64,
    /// The error code failed operations report.
    pub lro_failure_code: String,
    /// The next this-many long-running operations fail, whatever the rate.
    pub lro_fail_next: u32,
}

impl Faults {
    /// No fault at all: the values of `config/default.toml`'s `[emulator.faults]` (a test checks
    /// they agree), and what a partial `PUT /_emulator/faults` body leaves unset.
    pub fn none() -> Self {
        Self {
            throttle_rate: 0.0,
            retry_after_secs: 1,
            error_rate: 0.0,
            latency_ms: 0,
            drop_rate: 0.0,
            lro_failure_rate: 0.0,
            lro_failure_code: "InternalServerError".into(),
            lro_fail_next: 0,
        }
    }

    /// Every reason these settings cannot be used.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, rate) in [
            ("throttle_rate", self.throttle_rate),
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("lro_failure_rate", self.lro_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                problems.push(format!("{name} must be between 0 and 1, not {rate}"));
            }
        }
        if self.throttle_rate + self.error_rate > 1.0 {
            problems.push("throttle_rate + error_rate must not exceed 1".into());
        }
        if self.lro_failure_code.trim().is_empty() {
            problems.push("lro_failure_code must not be empty".into());
        }
        problems
    }
}

/// What happens to one ARM request before it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it.
    Pass,
    /// Answer 429 with this `Retry-After`.
    Throttle(u64),
    /// Answer this 5xx status.
    Fail(u16),
}

/// The fault settings and the generator that applies them.
#[derive(Debug)]
pub(crate) struct FaultState {
    pub settings: Faults,
    rng: StdRng,
}

impl FaultState {
    pub fn new(settings: Faults, seed: u64) -> Self {
        Self { settings, rng: StdRng::seed_from_u64(seed) }
    }

    /// The delay to add before answering.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.settings.latency_ms)
    }

    /// Throttle, fail or pass this request.
    pub fn verdict(&mut self) -> Verdict {
        let draw: f64 = self.rng.random();
        if draw < self.settings.throttle_rate {
            Verdict::Throttle(self.settings.retry_after_secs)
        } else if draw < self.settings.throttle_rate + self.settings.error_rate {
            Verdict::Fail(if self.rng.random::<bool>() { 500 } else { 503 })
        } else {
            Verdict::Pass
        }
    }

    /// Whether to drop the response of a write that was applied.
    pub fn drop_response(&mut self) -> bool {
        self.settings.drop_rate > 0.0 && self.rng.random::<f64>() < self.settings.drop_rate
    }

    /// The failure a new long-running operation will end with, if any.
    pub fn lro_failure(&mut self) -> Option<ErrorDetail> {
        let fails = if self.settings.lro_fail_next > 0 {
            self.settings.lro_fail_next -= 1;
            true
        } else {
            self.settings.lro_failure_rate > 0.0 && self.rng.random::<f64>() < self.settings.lro_failure_rate
        };
        fails.then(|| {
            ErrorDetail::new(
                self.settings.lro_failure_code.clone(),
                format!("The operation failed ({}; injected by the emulator).", self.settings.lro_failure_code),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_respected_over_many_draws() {
        let faults = Faults { throttle_rate: 0.3, error_rate: 0.1, ..Faults::none() };
        let mut state = FaultState::new(faults, 7);
        let mut throttled = 0;
        let mut failed = 0;
        for _ in 0..10_000 {
            match state.verdict() {
                Verdict::Throttle(1) => throttled += 1,
                Verdict::Fail(500 | 503) => failed += 1,
                Verdict::Pass => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((2800..3200).contains(&throttled), "{throttled}");
        assert!((850..1150).contains(&failed), "{failed}");
    }

    #[test]
    fn fail_next_overrides_the_rate_then_runs_out() {
        let faults = Faults { lro_fail_next: 2, lro_failure_code: "InsufficientCapacity".into(), ..Faults::none() };
        let mut state = FaultState::new(faults, 0);
        assert_eq!(state.lro_failure().unwrap().code.as_deref(), Some("InsufficientCapacity"));
        assert!(state.lro_failure().is_some());
        assert!(state.lro_failure().is_none());
    }

    #[test]
    fn out_of_range_settings_are_reported() {
        let faults = Faults { throttle_rate: 1.5, error_rate: -0.1, ..Faults::none() };
        assert_eq!(faults.problems().len(), 3);
        assert!(Faults::none().problems().is_empty());
    }

    #[test]
    fn no_faults_are_the_built_in_defaults() {
        let defaults = crate::emulator::Settings::defaults().expect("the built-in defaults load");
        assert_eq!(defaults.faults, Faults::none());
    }

    #[test]
    fn a_partial_update_leaves_the_rest_without_faults() {
        let faults: Faults = serde_json::from_str(r#"{"error_rate": 0.5}"#).expect("a partial object is valid");
        assert_eq!(faults, Faults { error_rate: 0.5, ..Faults::none() });
    }
}
