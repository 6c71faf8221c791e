//! The end-to-end demo: RabbitMQ, the emulator and the daemon on this machine.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Error, Options};
use crate::broadcast::Broadcast;
use crate::broker::local::LocalNode;
use crate::clock::{Clock, SystemClock};
use crate::daemon::Daemon;
use crate::daemon::Settings;
use crate::emulator::{self, Emulator, LoggedRequest};
use crate::event;
use crate::machine::Library;
use crate::schedule::{Spec, When};
use crate::store::{AuditRow, SqliteStore};

/// Runs the demo with `settings` (the built-in defaults, the file and the environment) as a base.
pub async fn run(
    mut settings: Settings,
    mut emulator_settings: emulator::Settings,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let started = Instant::now();
    println!("onair demo: RabbitMQ, the Media Services emulator and the onair daemon, all on this machine");
    ensure_rabbitmq()?;
    let directory = options.directory.clone();
    let _ = std::fs::remove_dir_all(&directory);
    let node_directory = directory.join("rabbitmq");
    println!("  starting a private RabbitMQ node (it stops with the demo)…");
    let span = tracing::info_span!("rabbitmq_start");
    let node = tokio::task::spawn_blocking(move || {
        span.in_scope(|| LocalNode::start(&node_directory, Duration::from_secs(120)))
    })
    .await
    .map_err(|error| Error::Daemon(error.to_string()))??;
    println!("  rabbitmq   {} on 127.0.0.1:{}", node.name, node.port);

    emulator_settings.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = tokio::net::TcpListener::bind(emulator_settings.listen)
        .await
        .map_err(|source| emulator::Error::Bind { address: emulator_settings.listen, source })?;
    let base = format!(
        "http://{}",
        listener.local_addr().map_err(|source| emulator::Error::Bind { address: emulator_settings.listen, source })?
    );
    let emulator = Emulator::new(emulator_settings.clone(), crate::clock::system());
    let serving = CancellationToken::new();
    let server = tokio::spawn(
        emulator::serve(listener, emulator.clone(), serving.clone()).instrument(tracing::info_span!("emulator")),
    );
    println!("  emulator   {base} (transient states last {:?})", emulator_settings.transition);

    configure(&mut settings, &emulator_settings, &base, &node, &directory, &options);
    let daemon =
        Daemon::start(&settings, Library::built_in()).await.map_err(|error| Error::Daemon(format!("{error:#}")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.broker_status().is_ready() {
        if Instant::now() > deadline {
            return Err(Error::Stuck(format!(
                "the daemon did not connect to RabbitMQ: {:?}",
                daemon.broker_status().last_error()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("  onair      consuming {} (store {})", settings.broker.queue, settings.engine.store.display());
    if let Some(address) = daemon.http_address() {
        println!("  dashboard  http://{address}/ (metrics at /metrics, API under /api/v1/)");
    }
    println!();

    let outcome = tokio::select! {
        outcome = lifecycle(&settings, &emulator, &options) => outcome,
        _ = shutdown.cancelled() => Err(Error::Interrupted),
    };
    daemon.stop().await.map_err(|error| Error::Daemon(format!("{error:#}")))?;
    serving.cancel();
    let _ = server.await;
    drop(node);
    let _ = std::fs::remove_dir_all(&directory);
    if outcome.is_ok() {
        let requests = emulator.requests();
        let creates = requests.iter().filter(|entry| entry.method == "PUT" && entry.status == 201).count();
        println!();
        println!(
            "Done in {:.1} s: {} API requests, {creates} resources created, each once; RabbitMQ and the emulator are stopped.",
            started.elapsed().as_secs_f64(),
            requests.iter().filter(|entry| entry.path.starts_with("/subscriptions/")).count(),
        );
    }
    outcome
}

/// Installs Debian's `rabbitmq-server` when it is missing and this user may.
fn ensure_rabbitmq() -> Result<(), Error> {
    if LocalNode::installed() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false);
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        return Err(Error::Rabbitmq(
            "rabbitmq-server is not installed; install it with: sudo apt-get install -y rabbitmq-server".into(),
        ));
    }
    println!("  rabbitmq-server is not installed: installing Debian's package (apt-get install -y rabbitmq-server)…");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "rabbitmq-server"][..]] {
        let output = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|error| Error::Rabbitmq(format!("apt-get failed to run: {error}")))?;
        if !output.status.success() {
            let errors = String::from_utf8_lossy(&output.stderr);
            return Err(Error::Rabbitmq(format!("apt-get {} failed:\n{}", args.join(" "), errors.trim())));
        }
    }
    Ok(())
}

/// Points the settings at the local node and emulator, with one broadcast and a private store.
fn configure(
    settings: &mut Settings,
    emulator: &emulator::Settings,
    base: &str,
    node: &LocalNode,
    directory: &Path,
    options: &Options,
) {
    let media = &mut settings.media;
    media.arm_url = url::Url::parse(base).unwrap_or_else(|_| media.arm_url.clone());
    media.token_url = url::Url::parse(&format!("{base}/onair-demo/oauth2/v2.0/token")).ok();
    media.subscription_id = Some("00000000-0000-0000-0000-00000000d3e0".into());
    media.resource_group = Some("onair-demo".into());
    media.account = Some("demo".into());
    media.client_id = Some(emulator.client_id.clone());
    media.client_secret = Some(emulator.client_secret.clone());
    media.poll_interval = Duration::from_millis(250);
    if let Ok(url) = url::Url::parse(&node.url()) {
        settings.broker.url = url;
    }
    settings.broker.password = None;
    // A free port: the demo may run next to a daemon on the default one.
    settings.http.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let engine = &mut settings.engine;
    engine.state_dir = directory.join("state");
    engine.store = engine.state_dir.join("onair.db");
    engine.inbox = engine.state_dir.join("inbox");
    engine.action_backoff = Duration::from_millis(500);
    engine.broadcasts.clear();
    engine.broadcasts.insert(
        options.channel.clone(),
        Broadcast {
            id: options.channel.clone(),
            machine: "live".into(),
            channel: options.channel.clone(),
            protocol: "RTMP".into(),
            endpoint: "default".into(),
            streaming_policy: "Predefined_ClearStreamingOnly".into(),
            archive_window: "PT1H".into(),
            on_air_units: 3,
            off_air_units: 1,
            settings: Default::default(),
            schedule: Some(Arc::new(demo_schedule(options))),
            protection: Default::default(),
        },
    );
}

/// One air time a few seconds from now, with leads that fit the emulator's transient states.
fn demo_schedule(options: &Options) -> Spec {
    let now = SystemClock.now();
    let air = DateTime::from_timestamp(now.timestamp() + 12, 0).unwrap_or(now);
    let seconds = |seconds: i64| TimeDelta::seconds(seconds);
    let duration = TimeDelta::from_std(options.on_air).unwrap_or(seconds(3)).max(seconds(1));
    let mut spec = Spec::new(When::Instant(air), chrono_tz::UTC, duration);
    spec.lead_channel = seconds(9);
    spec.lead_scale = seconds(3);
    spec.post_roll = seconds(3);
    spec.catch_up_window = seconds(60);
    spec
}

/// Shows the plan, then follows the broadcast as the scheduler publishes each step through
/// RabbitMQ and the engine drives the emulator, until it is idle again.
async fn lifecycle(settings: &Settings, emulator: &Emulator, options: &Options) -> Result<(), Error> {
    let broadcast = options.channel.as_str();
    // From a minute back: on a slow machine the warm-up may already be due when the daemon is up,
    // and the plan lists every step the demo then follows.
    let rows = crate::schedule::plan::plan(
        &crate::broadcast::scheduled(&settings.engine.broadcasts),
        Some(broadcast),
        SystemClock.now() - TimeDelta::minutes(1),
        1,
    );
    println!("The plan (onair plan):");
    for line in crate::schedule::plan::render(&rows).lines() {
        println!("  {line}");
    }
    println!();
    let deadline = rows.last().map_or_else(|| SystemClock.now(), |row| row.planned) + TimeDelta::minutes(2);
    let mut seen_requests = 0;
    let mut seen_audit = 0;
    let mut last_state = String::from("idle");
    let mut published = 0;
    let mut shown_urls = false;
    loop {
        let (state, pending, vars, audit) = snapshot(&settings.engine.store, broadcast);
        for row in
            audit.iter().skip(seen_audit).filter(|row| row.kind == "schedule" && row.detail["outcome"] == "published")
        {
            published += 1;
            println!(
                "→ scheduler published {} step={} (planned {}, {:+} ms) to RabbitMQ (confirmed)",
                event::SCHEDULE_FIRED,
                row.detail["step"].as_str().unwrap_or_default(),
                row.detail["planned"].as_str().unwrap_or_default(),
                row.detail["late_ms"].as_i64().unwrap_or_default(),
            );
        }
        seen_audit = audit.len();
        if state != last_state {
            println!("    {broadcast}: {last_state} → {state}");
            last_state = state.clone();
        }
        let requests = emulator.requests();
        for entry in requests
            .iter()
            .skip(seen_requests)
            .filter(|entry| entry.method != "GET" && entry.path.starts_with("/subscriptions/"))
        {
            println!("        {:<6} {} → {}", entry.method, tail(entry), entry.status);
        }
        seen_requests = requests.len();
        // Shown once the locator's URLs are stored, even when the broadcast has moved on from
        // live between two looks (a one-second show on a slow machine).
        if !shown_urls {
            let urls: Vec<(&str, &str)> = [("HLS", "hls"), ("DASH", "dash")]
                .into_iter()
                .filter_map(|(label, key)| Some((label, vars.get(key)?.as_str().filter(|url| !url.is_empty())?)))
                .collect();
            if urls.len() == 2 {
                for (label, url) in urls {
                    println!("      {label:<5} {url}");
                }
                shown_urls = true;
            }
        }
        if published == rows.len() && state == "idle" && pending == 0 {
            return Ok(());
        }
        if SystemClock.now() > deadline {
            return Err(Error::Stuck(format!("{broadcast} is {state} after {published} of {} steps", rows.len())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the store says of the broadcast: its state, its pending actions, its variables, and its
/// audit trail.
fn snapshot(
    store: &Path,
    broadcast: &str,
) -> (String, usize, serde_json::Map<String, serde_json::Value>, Vec<AuditRow>) {
    let Ok(store) = SqliteStore::open_read_only(store) else {
        return ("idle".into(), 0, Default::default(), Vec::new());
    };
    let instance = store
        .load_instances()
        .ok()
        .and_then(|instances| instances.into_iter().find(|instance| instance.broadcast == broadcast));
    let pending =
        store.pending_actions().map(|rows| rows.iter().filter(|row| row.broadcast == broadcast).count()).unwrap_or(0);
    let audit = store.audit(broadcast, 10_000).unwrap_or_default();
    match instance {
        Some(instance) => (instance.state, pending, instance.vars, audit),
        None => ("idle".into(), pending, Default::default(), audit),
    }
}

fn tail(entry: &LoggedRequest) -> &str {
    let tail = entry.path.split_once("/mediaservices/").map_or(entry.path.as_str(), |(_, tail)| tail);
    tail.split_once('/').map_or("", |(_, tail)| tail)
}
