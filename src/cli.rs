//! The command line: what each subcommand takes and what it runs.
//!
//! `main` parses, sets up logging and settings, and calls `execute`; every subcommand listed here
//! works. Commands print their results on standard output; logs go to standard error.
//!
//! The commands that read or feed a daemon from outside live in their own files (`status`, `send`,
//! `dlq`); `cli` imports `daemon` (to run it, and for the checks behind `check`), never the other
//! way round. Those that change a running daemon's broadcasts (`apply`, `get`, `delete`, `audit`,
//! `extend`, `reload`) talk to its API (`client`), so they work from another host.

mod apply;
mod client;
mod dlq;
mod manage;
mod send;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::daemon::Settings;
use crate::protection::Mode;
use crate::telemetry::LogFormat;

/// Why a command failed (its exit code is then 1; problems with the settings, the machines or the
/// store that retrying cannot fix are reported by the command itself with exit code 78).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command names a broadcast the settings do not have.
    #[error("no broadcast {0:?} in the settings")]
    UnknownBroadcast(String),
    /// `onair plan --broadcast` names a broadcast without a schedule.
    #[error("broadcast {0:?} has no schedule ([broadcasts.{0}.schedule])")]
    Unscheduled(String),
    /// The emulator's fault options are out of range.
    #[error("invalid fault options: {0}")]
    Faults(String),
    /// `onair send --data` is not JSON.
    #[error("--data is not JSON: {0}")]
    Data(serde_json::Error),
    /// `onair send` would send something that is not a valid event.
    #[error("not a valid event: {0}")]
    InvalidEvent(crate::event::Error),
    /// `onair token` for a broadcast published in the clear.
    #[error("broadcast {0:?} is published in the clear: it has no content key policy, players need no token")]
    Clear(String),
    /// `onair token` for a broadcast whose content key policy is open.
    #[error("the content key policy {policy:?} of {broadcast:?} is open: players need no token")]
    OpenPolicy { policy: String, broadcast: String },
    /// `onair token` cannot find the content key id by itself.
    #[error("{0}; give --kid")]
    KeyId(String),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::Error),
    #[error(transparent)]
    Emulator(#[from] crate::emulator::Error),
    #[error(transparent)]
    Demo(#[from] crate::demo::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Broker(#[from] crate::broker::Error),
    #[error(transparent)]
    Media(#[from] crate::media::Error),
    #[error(transparent)]
    Token(#[from] crate::protection::TokenError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// onair runs live-streaming operations unattended.
#[derive(Debug, Parser)]
#[command(name = "onair", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Settings file (TOML), else $ONAIR_CONFIG; layered over the built-in defaults, under
    /// ONAIR__SECTION__KEY variables.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format on standard error; the filter comes from RUST_LOG (default "info").
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Media Services v3 emulator (ARM API, token endpoint, /_emulator/ introspection).
    Emulator(EmulatorArgs),
    /// Run onair end to end on this machine: a private RabbitMQ node, the emulator and the daemon,
    /// and one broadcast driven through its lifecycle by schedule events.
    Demo(DemoArgs),
    /// Run the daemon: the engine, the executor and the local inbox, until SIGTERM or SIGINT.
    Run,
    /// Validate the settings, the machines and the broadcasts; report every problem at once (exit code 78 if any).
    Check,
    /// Show each broadcast's state, pending actions, next timer and last events (reads the store).
    Status(StatusArgs),
    /// Publish one event to the broker, with a confirm (or write it into the local inbox).
    Send(SendArgs),
    /// Dead letters: list them, replay them.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Show the coming schedule steps in UTC and local time, with DST shifts, skips and overlaps marked.
    Plan(PlanArgs),
    /// Mint a playback token for a token-restricted broadcast (for players and rehearsals); the
    /// token alone goes to standard output.
    Token(TokenArgs),
    /// Create and change API broadcasts from a file of [broadcasts.<id>] tables, like `kubectl apply` (through the API).
    Apply(ApplyArgs),
    /// Show the running broadcasts: origin, revision, state, next step (through the API).
    #[command(subcommand)]
    Get(GetCommand),
    /// Delete an API broadcast (through the API).
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// Show the audit: decisions, commands and broadcast changes, newest first (through the API).
    Audit(AuditArgs),
    /// Move the end of the occurrence on air: the match goes to extra time (through the API).
    Extend(ExtendArgs),
    /// Make the daemon re-read its config file's broadcasts and the machines, as SIGHUP does (through the API).
    Reload(ApiArgs),
}

/// Where the daemon's API is, for the commands that talk to it; the token is $ONAIR_API_TOKEN.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The daemon's API, for example http://onair-1:8781 (default: http://<http.listen> of the settings).
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
}

/// `onair apply` options.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The file of [broadcasts.<id>] tables (the config file's shape).
    #[arg(short = 'f', long, value_name = "PATH")]
    pub file: PathBuf,
    /// Print each broadcast's diff and the plan's changes in the next 48 h; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the API broadcasts the file does not name (never the config file's).
    #[arg(long)]
    pub prune: bool,
    /// How many requests at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `onair get` subcommands.
#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Every broadcast (a table), or one with its definition.
    #[command(visible_alias = "broadcast")]
    Broadcasts {
        /// Only this broadcast.
        id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `onair delete` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete an API broadcast; one that is not idle is refused unless forced.
    #[command(visible_alias = "broadcasts")]
    Broadcast {
        /// The broadcast.
        id: String,
        /// Delete it even when it is not idle: it is stopped first (stop-now), then removed.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `onair audit` options.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this broadcast's entries.
    #[arg(long, value_name = "ID")]
    pub broadcast: Option<String>,
    /// Only entries of this kind, for example config (broadcast changes), transition, command.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only entries from this instant (RFC 3339) or this long ago (2h, 1d).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only entries before this instant (RFC 3339) or this long ago.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only entries older than this one (the `next` of a previous page).
    #[arg(long, value_name = "ENTRY")]
    pub before: Option<String>,
    /// Show at most this many.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `onair extend` options.
#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// The broadcast whose occurrence is on air.
    pub id: String,
    /// Move the end and cooldown by this much, for example 30m.
    #[arg(long, value_name = "DURATION", value_parser = duration_text, required_unless_present = "until", conflicts_with = "until")]
    pub by: Option<String>,
    /// Move the end to this instant (RFC 3339).
    #[arg(long, value_name = "INSTANT", value_parser = instant_text)]
    pub until: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn duration_text(text: &str) -> Result<String, String> {
    humantime::parse_duration(text).map(|_| text.trim().to_string()).map_err(|error| error.to_string())
}

fn instant_text(text: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|_| text.trim().to_string())
        .map_err(|error| format!("expected an instant such as 2026-12-07T21:30:00Z: {error}"))
}

/// `onair token` options.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The broadcast, whose content key policy signs the token.
    #[arg(long, value_name = "ID")]
    pub broadcast: String,
    /// How long the token is valid, for example 1h, 30m, 2h 30m.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The content key id, when the policy requires the key id claim (default: the first key of
    /// the broadcast's current locator, asked of the media API).
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
}

/// `onair plan` options.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// How far ahead to look, in hours.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=8784))]
    pub hours: u32,
    /// Only this broadcast.
    #[arg(long, value_name = "ID")]
    pub broadcast: Option<String>,
    /// Start there instead of now: a date (2027-03-28, its 00:00 UTC) or an RFC 3339 instant.
    #[arg(long, value_name = "DATE", value_parser = parse_plan_from)]
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_plan_from(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    crate::http::parse_plan_from(text)
        .ok_or_else(|| format!("{text:?} is not a date (2027-03-28) or an RFC 3339 instant (2027-03-28T01:00:00Z)"))
}

/// `onair dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters and why they are there (they stay in the queue).
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters to the events exchange again: the one with this message id, or all.
    Replay {
        /// The message (event) id; all dead letters when absent.
        #[arg(long)]
        id: Option<String>,
        /// Look at most at this many.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Make a dead-letter queue declared by an earlier onair (quorum) a classic queue, keeping
    /// its letters in order. Run it once, with onair stopped.
    Migrate,
}

/// `onair status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this broadcast.
    #[arg(long, value_name = "ID")]
    pub broadcast: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// How many recent events to show per broadcast.
    #[arg(long, default_value_t = 5)]
    pub events: usize,
}

/// `onair send` options.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The event type, for example onair.command.start-now.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    /// The subject: a broadcast id, or liveEvent/<channel>.
    #[arg(long)]
    pub subject: String,
    /// The data, as JSON.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// The event id (default: a new UUID); sending the same id twice has one effect.
    #[arg(long)]
    pub id: Option<String>,
    /// The source attribute.
    #[arg(long, default_value = "onair-cli")]
    pub source: String,
    /// Write it into the local inbox (engine.inbox) instead of publishing it.
    #[arg(long)]
    pub inbox: bool,
}

/// `onair emulator` options; each overrides the matching `[emulator]` setting.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Listen address.
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<SocketAddr>,
    /// How long each transient state (Starting, Scaling, …) lasts, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub transition_ms: Option<u64>,
    /// The client id the token endpoint accepts.
    #[arg(long)]
    pub client_id: Option<String>,
    /// The client secret the token endpoint accepts (a development credential; visible in `ps`).
    #[arg(long)]
    pub client_secret: Option<String>,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub token_ttl_secs: Option<u64>,
    /// Load state from this JSON file at start and save it there on shutdown.
    #[arg(long, value_name = "PATH")]
    pub snapshot: Option<PathBuf>,
    /// Seed of the fault generator.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Fault options, shared by `emulator` and `demo`.
#[derive(Debug, Args, Default)]
pub struct FaultArgs {
    /// Share of ARM requests answered 429 (0 to 1).
    #[arg(long, value_name = "RATE")]
    pub fault_throttle_rate: Option<f64>,
    /// Retry-After of throttled answers, in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub fault_retry_after: Option<u64>,
    /// Share of ARM requests answered 500 or 503 (0 to 1).
    #[arg(long, value_name = "RATE")]
    pub fault_error_rate: Option<f64>,
    /// Delay added to every ARM response, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub fault_latency_ms: Option<u64>,
    /// Share of writes applied but whose response is dropped (0 to 1).
    #[arg(long, value_name = "RATE")]
    pub fault_drop_rate: Option<f64>,
    /// Share of long-running operations that end Failed (0 to 1).
    #[arg(long, value_name = "RATE")]
    pub fault_lro_failure_rate: Option<f64>,
    /// Error code of failed long-running operations.
    #[arg(long, value_name = "CODE")]
    pub fault_lro_failure_code: Option<String>,
}

impl FaultArgs {
    fn apply(&self, faults: &mut crate::emulator::Faults) {
        let overrides = [
            (self.fault_throttle_rate, &mut faults.throttle_rate),
            (self.fault_error_rate, &mut faults.error_rate),
            (self.fault_drop_rate, &mut faults.drop_rate),
            (self.fault_lro_failure_rate, &mut faults.lro_failure_rate),
        ];
        for (value, field) in overrides {
            if let Some(value) = value {
                *field = value;
            }
        }
        if let Some(seconds) = self.fault_retry_after {
            faults.retry_after_secs = seconds;
        }
        if let Some(millis) = self.fault_latency_ms {
            faults.latency_ms = millis;
        }
        if let Some(code) = &self.fault_lro_failure_code {
            faults.lro_failure_code.clone_from(code);
        }
    }
}

/// `onair demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo's own emulator listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDRESS")]
    pub listen: SocketAddr,
    /// Drive an emulator that is already running at this URL instead of starting one (with --client-only).
    #[arg(long, value_name = "URL")]
    pub emulator: Option<url::Url>,
    /// How long each transient state lasts in the demo's own emulator, in milliseconds.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    pub transition_ms: u64,
    /// The channel (live event) name.
    #[arg(long, default_value = "news")]
    pub channel: String,
    /// How long the program stays on air before the cleanup starts, in seconds.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub on_air_secs: u64,
    /// Keep the demo's emulator running afterwards, until Ctrl-C, to explore it (with --client-only).
    #[arg(long)]
    pub keep_running: bool,
    /// Drive the lifecycle through the media client alone: no broker, no daemon.
    #[arg(long)]
    pub client_only: bool,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// What the commands read from the settings' layers.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The daemon's settings.
    pub daemon: Settings,
    /// `[emulator]`, for `onair emulator` and `onair demo`.
    pub emulator: crate::emulator::Settings,
    /// Where the demo keeps its private RabbitMQ node and store (`$TMPDIR`, else `/tmp`).
    pub temp_dir: PathBuf,
    /// Where they were read from: a reload reads the same file and environment again, and the
    /// API commands take their token from it (`ONAIR_API_TOKEN`).
    pub source: crate::config::Source,
}

/// Loads the daemon's settings and the emulator's from the same layers, in one pass, so that
/// every problem of either is reported at once.
pub fn load(source: &crate::config::Source) -> Result<Loaded, crate::config::Error> {
    crate::config::load(source, |root| {
        let emulator = crate::emulator::Settings::parse(&mut root.section("emulator"));
        Loaded { daemon: Settings::parse(root, source), emulator, temp_dir: source.temp_dir(), source: source.clone() }
    })
}

/// Runs one subcommand to completion or until `shutdown`.
pub async fn execute(command: Command, loaded: Loaded, shutdown: CancellationToken) -> Result<ExitCode, Error> {
    let Loaded { daemon: settings, emulator, temp_dir, source } = loaded;
    match command {
        Command::Emulator(args) => {
            let mut emulator = emulator;
            apply_emulator_args(&mut emulator, &args);
            let problems = emulator.faults.problems();
            if !problems.is_empty() {
                return Err(Error::Faults(problems.join("; ")));
            }
            crate::emulator::run(emulator, crate::clock::system(), shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let mut emulator = emulator;
            emulator.listen = args.listen;
            emulator.transition = Duration::from_millis(args.transition_ms);
            args.faults.apply(&mut emulator.faults);
            let options = crate::demo::Options {
                external: args.emulator.clone(),
                channel: args.channel.clone(),
                on_air: Duration::from_secs(args.on_air_secs),
                keep_running: args.keep_running,
                directory: temp_dir.join(format!("onair-demo-{}", std::process::id())),
            };
            if args.client_only {
                crate::demo::run_client(emulator, settings.media, options, shutdown).await?;
            } else {
                crate::demo::run_end_to_end(settings, emulator, options, shutdown).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => Ok(crate::daemon::run(settings, &source, shutdown).await?),
        Command::Check => Ok(check(&settings)),
        Command::Status(args) => status::status(&settings, &args),
        Command::Send(args) => send::send(&settings, args).await,
        Command::Dlq(command) => dlq::dlq(&settings, command).await,
        Command::Plan(args) => plan(&settings, &args),
        Command::Token(args) => token(&settings, &args).await,
        command => Ok(over_api(command, &settings, &source).await),
    }
}

/// The commands that talk to a running daemon's API; an error is printed here, with its exit
/// code (`client`).
async fn over_api(command: Command, settings: &Settings, source: &crate::config::Source) -> ExitCode {
    let api = match &command {
        Command::Apply(ApplyArgs { api, .. })
        | Command::Get(GetCommand::Broadcasts { api, .. })
        | Command::Delete(DeleteCommand::Broadcast { api, .. })
        | Command::Audit(AuditArgs { api, .. })
        | Command::Extend(ExtendArgs { api, .. })
        | Command::Reload(api) => api.api.clone(),
        _ => None,
    };
    let client = match client::Client::new(api.as_deref(), settings.http.listen, source) {
        Ok(client) => client,
        Err(error) => return failed(&error),
    };
    let now = crate::clock::system().now();
    let done = match &command {
        Command::Apply(args) => {
            let parser = crate::catalog::Parser::new(
                settings.engine.defaults.clone(),
                settings.engine.content_key_policies.clone(),
            );
            apply::apply(&client, &parser, args, now).await
        }
        Command::Get(GetCommand::Broadcasts { id, json, .. }) => manage::get(&client, id.as_deref(), *json).await,
        Command::Delete(DeleteCommand::Broadcast { id, force, .. }) => manage::delete(&client, id, *force).await,
        Command::Audit(args) => manage::audit(&client, args, now).await,
        Command::Extend(args) => manage::extend(&client, args).await,
        Command::Reload(_) => manage::reload(&client).await,
        _ => Ok(ExitCode::FAILURE),
    };
    done.unwrap_or_else(|error| failed(&error))
}

fn failed(error: &client::Error) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(error.exit_code())
}

fn apply_emulator_args(emulator: &mut crate::emulator::Settings, args: &EmulatorArgs) {
    if let Some(listen) = args.listen {
        emulator.listen = listen;
    }
    if let Some(millis) = args.transition_ms {
        emulator.transition = Duration::from_millis(millis);
    }
    if let Some(client_id) = &args.client_id {
        emulator.client_id.clone_from(client_id);
    }
    if let Some(secret) = &args.client_secret {
        emulator.client_secret = SecretString::from(secret.clone());
    }
    if let Some(seconds) = args.token_ttl_secs {
        emulator.token_ttl = Duration::from_secs(seconds.max(1));
    }
    if let Some(path) = &args.snapshot {
        emulator.snapshot = Some(path.clone());
    }
    if let Some(seed) = args.seed {
        emulator.seed = seed;
    }
    args.faults.apply(&mut emulator.faults);
}

/// `onair plan`.
fn plan(settings: &Settings, args: &PlanArgs) -> Result<ExitCode, Error> {
    // The config file's broadcasts and, from the store when there is one, those created through
    // the API and what the running daemon holds (extended ends, occurrences kept through a
    // schedule change).
    let store = crate::store::SqliteStore::open_read_only(&settings.engine.store).ok();
    let broadcasts: std::collections::BTreeMap<String, crate::broadcast::Broadcast> =
        status::broadcasts(settings, store.as_ref())?.into_iter().map(|(id, (_, broadcast))| (id, broadcast)).collect();
    let broadcasts = &broadcasts;
    if let Some(id) = &args.broadcast {
        match broadcasts.get(id) {
            None => return Err(Error::UnknownBroadcast(id.clone())),
            Some(broadcast) if broadcast.schedule.is_none() => return Err(Error::Unscheduled(id.clone())),
            Some(_) => {}
        }
    }
    let from = args.from.unwrap_or_else(|| crate::clock::system().now());
    let holds = store.and_then(|store| store.schedule_holds().ok()).map(|holds| holds.holds).unwrap_or_default();
    let rows = crate::schedule::plan::plan_with(
        &crate::broadcast::scheduled(broadcasts),
        args.broadcast.as_deref(),
        from,
        args.hours,
        &holds,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", crate::schedule::plan::render(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// `onair token`: the token on standard output, what it is on standard error.
async fn token(settings: &Settings, args: &TokenArgs) -> Result<ExitCode, Error> {
    use crate::protection::{CONTENT_KEY_ID_CLAIM, Restriction};
    let id = &args.broadcast;
    let Some(broadcast) = settings.engine.broadcasts.get(id) else {
        return Err(Error::UnknownBroadcast(id.clone()));
    };
    let Some(policy) = broadcast.protection.policy.as_ref().filter(|_| broadcast.protection.mode != Mode::Clear) else {
        return Err(Error::Clear(id.clone()));
    };
    let Restriction::Token { issuer, audience, required_claims, .. } = &policy.restriction else {
        return Err(Error::OpenPolicy { policy: policy.name.clone(), broadcast: id.clone() });
    };
    let needs_kid = required_claims.iter().any(|(kind, value)| kind == CONTENT_KEY_ID_CLAIM && value.is_none());
    let kid = match (&args.kid, needs_kid) {
        (Some(kid), _) => Some(kid.clone()),
        (None, true) => Some(current_key_id(settings, id).await?),
        (None, false) => None,
    };
    let now = crate::clock::system().now();
    let token = policy.mint(kid.as_deref(), now, args.ttl)?.unwrap_or_default();
    let expires = now + chrono::Duration::from_std(args.ttl).unwrap_or(chrono::Duration::MAX);
    eprintln!(
        "token for {id} (policy {}): issuer {issuer}, audience {audience}{}, expires {}",
        policy.name,
        kid.as_deref().map(|kid| format!(", key {kid}")).unwrap_or_default(),
        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// The id of the first content key of the broadcast's current locator (`<id>-<occurrence>`, the
/// name the `live` machine publishes under), asked of the media API.
async fn current_key_id(settings: &Settings, id: &str) -> Result<String, Error> {
    let store = crate::store::SqliteStore::open_read_only(&settings.engine.store)
        .map_err(|error| Error::KeyId(format!("cannot read the store to find {id:?}'s locator ({error})")))?;
    let instance = store.load_instances()?.into_iter().find(|instance| instance.broadcast == id);
    let occurrence = instance
        .as_ref()
        .and_then(|instance| instance.vars.get("occurrence"))
        .and_then(serde_json::Value::as_str)
        .filter(|occurrence| !occurrence.is_empty())
        .ok_or_else(|| Error::KeyId(format!("{id:?} has not been published yet (no occurrence in the store)")))?;
    let locator = format!("{id}-{occurrence}");
    let media = crate::media::Client::new(&settings.media)?;
    let keys = media.list_content_keys(&locator).await?;
    keys.into_iter()
        .find_map(|key| key.id)
        .ok_or_else(|| Error::KeyId(format!("the locator {locator:?} has no content keys")))
}

/// `onair check`: the settings loaded (main already refused invalid ones); now the machines, the
/// broadcasts, and what running needs.
fn check(settings: &Settings) -> ExitCode {
    let library = crate::daemon::load_machines(settings.engine.machines_dir.as_deref());
    let mut problems = crate::daemon::problems(settings, &library, crate::clock::system().now());
    problems.extend(crate::store::check(&settings.engine.state_dir, &settings.engine.store));
    if !problems.is_empty() {
        println!("{} problem{}:", problems.len(), if problems.len() == 1 { "" } else { "s" });
        for problem in problems {
            println!("  - {problem}");
        }
        return ExitCode::from(crate::config::EXIT_CODE as u8);
    }
    let media = &settings.media;
    println!("settings OK");
    println!("  media       {} account {}", media.arm_url, media.account.as_deref().unwrap_or_default());
    println!("  machines    {}", library.machines.keys().cloned().collect::<Vec<_>>().join(", "));
    println!("  broadcasts  {}", settings.engine.broadcasts.keys().cloned().collect::<Vec<_>>().join(", "));
    let scheduled: Vec<&str> = settings
        .engine
        .broadcasts
        .iter()
        .filter(|(_, broadcast)| broadcast.schedule.is_some())
        .map(|(id, _)| id.as_str())
        .collect();
    println!("  schedules   {}", if scheduled.is_empty() { "(none)".to_string() } else { scheduled.join(", ") });
    let schema = match crate::store::schema_version(&settings.engine.store) {
        Ok(Some(version)) => format!("schema version {version}"),
        _ => "not created yet".to_string(),
    };
    println!("  store       {} ({schema})", settings.engine.store.display());
    println!("  shutdown    grace {:?}", settings.shutdown.grace);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Error, Source};

    fn source(env: &[(&str, &str)]) -> Source {
        Source { file: None, env: env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect() }
    }

    #[test]
    fn the_daemons_and_the_emulators_settings_load_together_from_the_defaults() {
        let loaded = load(&source(&[("TMPDIR", "/var/tmp/onair")])).expect("defaults load");
        assert_eq!(loaded.emulator.listen.to_string(), "127.0.0.1:8700");
        assert_eq!(loaded.daemon.shutdown.grace, Duration::from_secs(10));
        assert_eq!(loaded.temp_dir, PathBuf::from("/var/tmp/onair"));
        assert_eq!(load(&source(&[])).unwrap().temp_dir, PathBuf::from("/tmp"));
    }

    #[test]
    fn problems_of_both_are_reported_at_once_with_their_origins() {
        let Err(Error::Invalid(problems)) =
            load(&source(&[("ONAIR__EMULATOR__LISTEN", "nowhere"), ("ONAIR__SHUTDOWN__GRACE", "soon")]))
        else {
            panic!("expected problems");
        };
        let rendered: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
        assert_eq!(rendered.len(), 2, "{rendered:#?}");
        assert!(
            rendered.iter().any(|p| p.starts_with("environment variable ONAIR__EMULATOR__LISTEN: emulator.listen:")),
            "{rendered:#?}"
        );
        assert!(
            rendered.iter().any(|p| p.starts_with("environment variable ONAIR__SHUTDOWN__GRACE: shutdown.grace:")),
            "{rendered:#?}"
        );
    }
}
