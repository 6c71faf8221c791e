//! The tracing subscriber: readable text by default, JSON on request, filtered by `RUST_LOG`.
//!
//! Log messages are capitalised sentences ending with a period; facts go in fields
//! (`info!(channel = %name, "Channel running.")`), errors as `error = %error`.

use tracing_subscriber::EnvFilter;

/// The output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
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
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|error| error.to_string())
}
