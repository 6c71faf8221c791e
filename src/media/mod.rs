//! The Media Services v3 REST client and the idempotent operations onair drives.
//!
//! - `model`: the REST shapes, shared with the emulator.
//! - `client`: token (client credentials, cached, refreshed early, one refresh at a time), requests
//!   with bounded retries (429 waits for `Retry-After`; 5xx, connection errors and timeouts back off
//!   exponentially with jitter), long-running operations, and typed errors.
//! - `ops`: ensure-operations that read first, do only what is missing, wait out transient states,
//!   and succeed when the goal already holds; safe to repeat after a crash or a lost response.
//!
//! What this module does not do: decide *when* to act (the engine does) or remember anything
//! between calls beyond the cached token. Every operation is idempotent by resource name.

mod client;
pub mod model;
mod ops;

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

pub use client::{Client, Lro};
pub use ops::{ChannelSpec, EndpointSpec, LiveEventAction, LocatorSpec, ProgramSpec, Published};

/// `[media]` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Azure Resource Manager base URL.
    pub arm_url: Url,
    /// OAuth 2.0 token endpoint (client credentials).
    pub token_url: Option<Url>,
    /// OAuth 2.0 scope asked for.
    pub scope: String,
    /// Subscription of the Media Services account.
    pub subscription_id: Option<String>,
    /// Resource group of the account.
    pub resource_group: Option<String>,
    /// Media Services account name.
    pub account: Option<String>,
    /// Service principal (application) id.
    pub client_id: Option<String>,
    /// Service principal secret; redacted in `Debug`.
    pub client_secret: Option<SecretString>,
    /// Region for the tracked resources onair creates.
    pub location: String,
    /// Time limit of one HTTP request.
    pub request_timeout: Duration,
    /// Retry policy of one request.
    pub retry: RetryPolicy,
    /// Interval between polls when the service gives no `Retry-After`.
    pub poll_interval: Duration,
    /// Time limit of one ensure-operation, transient states included.
    pub operation_timeout: Duration,
}

/// Bounded retries with capped exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Time from the first attempt after which no retry starts.
    pub max_elapsed: Duration,
    /// Backoff before the first retry.
    pub initial_backoff: Duration,
    /// The cap of the backoff.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1 for the first), with "equal jitter":
    /// uniformly between half and all of the capped exponential value.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(20);
        let ceiling = self.initial_backoff.saturating_mul(1 << exponent).min(self.max_backoff);
        let half = ceiling / 2;
        half + ceiling.mul_f64(rand::random::<f64>() * 0.5)
    }
}

impl Settings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let arm_url =
            section.url("arm_url").unwrap_or_else(|| Url::parse("https://management.azure.com").expect("constant URL"));
        let settings = Self {
            arm_url,
            token_url: section.url("token_url"),
            scope: section.value("scope"),
            subscription_id: section.optional("subscription_id"),
            resource_group: section.optional("resource_group"),
            account: section.optional("account"),
            client_id: section.optional("client_id"),
            client_secret: section.secret("client_secret"),
            location: section.value("location"),
            request_timeout: section.duration("request_timeout"),
            retry: RetryPolicy {
                max_attempts: section.value("max_attempts"),
                max_elapsed: section.duration("max_elapsed"),
                initial_backoff: section.duration("backoff_initial"),
                max_backoff: section.duration("backoff_max"),
            },
            poll_interval: section.duration("poll_interval"),
            operation_timeout: section.duration("operation_timeout"),
        };
        section.check("max_attempts", settings.retry.max_attempts >= 1, "must be at least 1");
        section.check("request_timeout", !settings.request_timeout.is_zero(), "must be greater than zero");
        section.check("poll_interval", !settings.poll_interval.is_zero(), "must be greater than zero");
        section.check("operation_timeout", !settings.operation_timeout.is_zero(), "must be greater than zero");
        section.check(
            "backoff_max",
            settings.retry.max_backoff >= settings.retry.initial_backoff,
            "must not be smaller than backoff_initial",
        );
        for (key, value) in [
            ("subscription_id", &settings.subscription_id),
            ("resource_group", &settings.resource_group),
            ("account", &settings.account),
        ] {
            if let Some(value) = value {
                section.check(
                    key,
                    !value.contains('/') && !value.trim().is_empty(),
                    "must be a plain name, without '/'",
                );
            }
        }
        settings
    }

    /// The settings a client needs that have no default, as `media.<key>` paths, if any are unset.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.token_url.is_none() {
            missing.push("media.token_url");
        }
        if self.subscription_id.is_none() {
            missing.push("media.subscription_id");
        }
        if self.resource_group.is_none() {
            missing.push("media.resource_group");
        }
        if self.account.is_none() {
            missing.push("media.account");
        }
        if self.client_id.is_none() {
            missing.push("media.client_id");
        }
        if self.client_secret.is_none() {
            missing.push("media.client_secret (ONAIR__MEDIA__CLIENT_SECRET or media.client_secret_file)");
        }
        missing
    }
}

/// Everything that can go wrong talking to Media Services.
///
/// No variant carries a secret: tokens and client secrets never reach an error message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings needed to talk to the service are missing.
    #[error("media settings incomplete: {}", missing.join(", "))]
    Incomplete {
        /// The missing keys.
        missing: Vec<&'static str>,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// The service refused the request; not retried (other than 429 and 5xx).
    #[error("{operation}: {code}: {message} (HTTP {status})")]
    Api {
        /// Method and resource, for example `PUT liveEvents/news`.
        operation: String,
        /// HTTP status.
        status: u16,
        /// The provider's error code.
        code: String,
        /// The provider's message.
        message: String,
    },
    /// A write got no answer (connection lost, timeout, 5xx): it may or may not have been applied,
    /// so it is not repeated blindly; the ensure-operations read the resource again instead.
    #[error("{operation}: no usable answer, the write may or may not have been applied ({reason})")]
    Ambiguous {
        /// Method and resource.
        operation: String,
        /// What happened.
        reason: String,
    },
    /// Retries ran out.
    #[error("{operation}: gave up after {attempts} attempts in {elapsed:?}: {last}")]
    RetriesExhausted {
        /// Method and resource.
        operation: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: std::time::Duration,
        /// The last failure.
        last: String,
    },
    /// A long-running operation ended Failed or Canceled.
    #[error("{operation}: the operation ended {status}: {code}: {message}")]
    OperationFailed {
        /// Method and resource.
        operation: String,
        /// `Failed` or `Canceled`.
        status: String,
        /// The provider's error code.
        code: String,
        /// The provider's message.
        message: String,
    },
    /// A wait went past its time limit.
    #[error("{operation}: still not done after {after:?} ({waiting_for})")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The limit.
        after: std::time::Duration,
        /// The last thing seen.
        waiting_for: String,
    },
    /// The token endpoint refused or failed.
    #[error("token endpoint: {reason}")]
    Token {
        /// What it said, without the credentials.
        reason: String,
    },
    /// A resource the operation needs does not exist.
    #[error("{what} does not exist")]
    NotFound {
        /// The missing resource.
        what: String,
    },
    /// The resource is in a state the operation will not change on its own.
    #[error("{what}: {reason}")]
    Unexpected {
        /// The goal.
        what: String,
        /// What stands in the way.
        reason: String,
    },
    /// The service answered something onair cannot use.
    #[error("{operation}: unexpected response: {reason}")]
    InvalidResponse {
        /// Method and resource.
        operation: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The provider's error code, when the provider gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } | Error::OperationFailed { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether reading the resource again and retrying may succeed: the outcome of a write is
    /// unknown, or the resource changed under us (409), or an operation record expired.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Ambiguous { .. } => true,
            Error::Api { status, code, .. } => {
                (*status == 409 && code != "InvalidOperation") || code == "OperationNotFound"
            }
            _ => false,
        }
    }
}
