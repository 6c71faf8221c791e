//! The tracing subscriber: readable text by default, JSON on request, filtered by `RUST_LOG`.
//!
//! Log messages are capitalised sentences ending with a period; facts go in fields
//! (`info!(channel = %name, "Channel running.")`), errors as `error = %error`.
//!
//! Spans carry the context: every spawned task runs in a span naming it, and the work on one
//! event runs in spans that carry its `event_id` (the broker's `delivery`, the lane's `event`, the
//! executor's `action`). A JSON line holds its current span (`span`) and all the spans it is in
//! (`spans`), each with its fields, so that one grep for an event id follows it from the broker
//! through the decision to each REST request and its result.

use tracing_subscriber::EnvFilter;

/// The output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers, with the current span and the list of spans.
    Json,
}

/// The filter used when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber; `filter` is the value of `RUST_LOG`, if any.
///
/// Logs go to standard error so that commands that print results (`onair demo`, `onair check`)
/// keep standard output for the user.
pub fn init(format: LogFormat, filter: Option<&str>) -> Result<(), String> {
    let filter = match filter {
        Some(directives) => EnvFilter::try_new(directives).map_err(|error| format!("RUST_LOG: {error}"))?,
        None => EnvFilter::new(DEFAULT_FILTER),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(true).try_init(),
    };
    result.map_err(|error| error.to_string())
}
