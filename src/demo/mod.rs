//! `onair demo`: onair end to end on this machine, for a new user.
//!
//! - `daemon` (the default): a private RabbitMQ node (Debian's `rabbitmq-server`, installed with
//!   apt-get when missing and allowed), the emulator and the daemon, all local; schedule steps
//!   published to RabbitMQ drive one broadcast through its lifecycle, and every state change is
//!   printed with the API writes it caused and the streaming URLs.
//! - `client` (`--client-only`): the same lifecycle through the media client alone.
//!
//! The demo changes nothing outside a temporary directory and the processes it starts.

mod client;
mod daemon;

use std::time::Duration;

use crate::{broker, emulator, media};

pub use client::run as run_client;
pub use daemon::run as run_end_to_end;

/// What to demonstrate.
#[derive(Debug, Clone)]
pub struct Options {
    /// A running emulator to drive (client-only); `None` starts one.
    pub external: Option<url::Url>,
    /// The channel name.
    pub channel: String,
    /// Time on air between publishing and cleaning up.
    pub on_air: Duration,
    /// Keep the demo's emulator running until shutdown (client-only).
    pub keep_running: bool,
    /// Where the end-to-end demo keeps its RabbitMQ node and store; removed first.
    pub directory: std::path::PathBuf,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The emulator could not start.
    #[error("cannot start the emulator: {0}")]
    Emulator(#[from] emulator::Error),
    /// A media operation failed.
    #[error(transparent)]
    Media(#[from] media::Error),
    /// The emulator's request log could not be read.
    #[error("cannot read the emulator's request log: {0}")]
    Log(String),
    /// RabbitMQ is missing and could not be installed.
    #[error("{0}")]
    Rabbitmq(String),
    /// The local RabbitMQ node did not start.
    #[error(transparent)]
    Node(#[from] broker::local::Error),
    /// Publishing a schedule step failed.
    #[error(transparent)]
    Broker(#[from] broker::Error),
    /// The daemon failed.
    #[error("the daemon failed: {0}")]
    Daemon(String),
    /// The broadcast did not reach a state in time.
    #[error("{0}")]
    Stuck(String),
    /// Shutdown was requested.
    #[error("interrupted")]
    Interrupted,
}
