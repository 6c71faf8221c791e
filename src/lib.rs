//! onair: a daemon that runs live-streaming operations unattended.
//!
//! # Layout
//!
//! - `broadcast`: broadcasts as configured (`[broadcasts.<id>]`), read by the engine, the scheduler,
//!   the ingress and the API.
//! - `broker`: RabbitMQ: topology, the consumer feeding the engine, the confirmed publisher, dead letters.
//! - `cli`: the subcommands, their options, and the commands that look at a daemon (`status`, `send`, `dlq`);
//!   `main` only parses and calls `cli::execute`.
//! - `config`: the layered settings loader (built-in defaults, file, `ONAIR__*` environment), validated in
//!   one pass; it knows no module (the composition is `daemon::Settings`). The only reader of the environment.
//! - `telemetry`: the tracing subscriber (text or JSON, filtered by `RUST_LOG`).
//! - `shutdown`: the root cancellation token, OS signals, and the grace period.
//! - `clock`: wall-clock time behind a trait so that tests can control it.
//! - `event`: the CloudEvents envelope and the event types onair emits or understands.
//! - `machine`: machine definitions (TOML, CEL guards) and the pure `step`.
//! - `daemon`: the daemon's settings (the composition), the wiring of `onair run` (build, then spawn;
//!   stop), the machines directory, and the checks behind `check`.
//! - `ingress`: the webhook listener: CloudEvents and Event Grid deliveries, signatures and keys,
//!   Media Services event types mapped to onair's, published to RabbitMQ with confirms.
//! - `schedule`: cron/one-shot schedules with time zones and DST policy, the plan, and the
//!   scheduler that publishes each step (warm-up, scale, air, end, cooldown) as an event.
//! - `engine`: routing, one ordered lane per broadcast, the executor, durable timers, the inbox.
//! - `media`: the Media Services v3 REST shapes, the client (token, retries, long-running operations)
//!   and the idempotent ensure-operations that the rest of onair drives.
//! - `protection`: content key policies from the settings, the streaming policies that use them,
//!   playback tokens (`onair token`).
//! - `http`: the operations listener: `/healthz`, `/readyz`, `/metrics`, the JSON API under
//!   `/api/v1/` (with its OpenAPI document) and the dashboard.
//! - `health`: readiness (store, broker, media) and progress (the consumer is not stalled).
//! - `metrics`: the daemon's measurements, rendered for Prometheus.
//! - `systemd`: `READY=1`, the progress-gated watchdog, `STOPPING=1`.
//! - `store`: durable state behind a narrow trait; SQLite (WAL, `synchronous=FULL`) by default.
//! - `sync`: the one way a `std::sync::Mutex` is locked (recovering from poison).
//! - `emulator`: an HTTP server that behaves like the Media Services v3 API, for tests, demos and rehearsals.
//! - `demo`: one broadcast lifecycle driven through the client against an emulator, step by step.
//!
//! Only `media`, `emulator`, `demo` and the executor's `http` action speak HTTP; `emulator` reuses
//! the shapes in `media::model`, and both are held against the published examples in
//! `tests/fixtures/ams-v3/`. `tests/it/architecture.rs` checks the module boundaries.

#![forbid(unsafe_code)]

pub mod broadcast;
pub mod broker;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod emulator;
pub mod engine;
pub mod event;
pub mod health;
pub mod http;
pub mod ingress;
pub mod machine;
pub mod media;
pub mod metrics;
pub mod protection;
pub mod schedule;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod telemetry;
