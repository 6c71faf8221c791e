//! The daemon's wiring (`onair run`) and the commands that look at it (`status`, `send`, the
//! checks behind `check`).
//!
//! `run` checks everything first (settings, machines, broadcasts, media settings: exit 78 on any
//! problem), opens the store, starts the engine (which resumes timers and pending actions from the
//! store before taking events), then the inputs, and waits for the shutdown signal.

mod machines;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Publisher};
use crate::cli::{DlqCommand, SendArgs};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::engine::{Engine, Parts, Runner, inbox};
use crate::event::Event;
use crate::machine::Library;
use crate::store::{SqliteStore, Store};
pub use machines::{load_machines, read_machine_dir};

/// Every reason the daemon cannot run with these settings: machine problems (with file and
/// location), broadcasts naming a missing machine, schedule problems over the coming year (from
/// `now`), missing media settings.
pub fn problems(settings: &Settings, library: &Library, now: DateTime<Utc>) -> Vec<String> {
    let mut problems: Vec<String> = library.problems.iter().map(ToString::to_string).collect();
    for (id, broadcast) in &settings.engine.broadcasts {
        if library.get(&broadcast.machine).is_none() {
            let known = library.machines.keys().cloned().collect::<Vec<_>>().join(", ");
            problems
                .push(format!("broadcasts.{id}.machine: no machine named {:?} (loaded: {known})", broadcast.machine));
        }
    }
    problems.extend(crate::schedule::plan::problems(&settings.engine.broadcasts, now));
    problems.extend(settings.media.missing().into_iter().map(|key| format!("{key}: required to run (no default)")));
    problems
}

/// `onair run`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let library = load_machines(settings.engine.machines_dir.as_deref());
    let problems = problems(&settings, &library, crate::clock::system().now());
    if !problems.is_empty() {
        eprintln!("error: cannot run ({} problem{}):", problems.len(), if problems.len() == 1 { "" } else { "s" });
        for problem in problems {
            eprintln!("  - {problem}");
        }
        return Ok(ExitCode::from(crate::config::EXIT_CODE as u8));
    }
    let daemon = match Daemon::start(&settings, library).await {
        Ok(daemon) => daemon,
        Err(error) => match error.downcast_ref::<crate::store::Error>() {
            // Damaged, too new, not writable: nothing will change by retrying; say what to do.
            Some(store) if store.is_unusable() => {
                eprintln!("error: {store}");
                return Ok(ExitCode::from(crate::config::EXIT_CODE as u8));
            }
            _ => return Err(error),
        },
    };
    // READY=1 once the store is open (start did it) and the consumer is registered; then the
    // watchdog, fed only while events get committed.
    let status = daemon.broker_status().clone();
    let health = daemon.health().clone();
    let notifier = shutdown.child_token();
    let notify = {
        let notifier = notifier.clone();
        tokio::spawn(async move {
            while !status.is_ready() {
                tokio::select! {
                    () = notifier.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            tracing::info!("Ready: store open, topology declared, consumer registered.");
            crate::systemd::ready("running");
            if let Some(interval) = crate::systemd::watchdog_interval() {
                tracing::info!(interval = ?interval, "systemd watchdog enabled; pinging while events are committed.");
                crate::systemd::watchdog(health, interval, notifier).await;
            }
        })
    };
    shutdown.cancelled().await;
    crate::systemd::stopping();
    notifier.cancel();
    let _ = notify.await;
    daemon.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// A running daemon: the engine, its inputs (broker consumer, inbox) and the relay that publishes
/// what onair produces for other systems.
pub struct Daemon {
    engine: Engine,
    /// Stops the engine, after the inputs.
    core: CancellationToken,
    /// Stops the inputs: they finish what they handed over (acks) before the engine stops.
    intake: CancellationToken,
    consumer: tokio::task::JoinHandle<()>,
    inbox: tokio::task::JoinHandle<Result<(), inbox::Error>>,
    relay: tokio::task::JoinHandle<()>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
    ingress: Option<(SocketAddr, crate::ingress::Ingress, tokio::task::JoinHandle<()>)>,
    publisher: Arc<Publisher>,
    status: broker::Status,
    schedule_stats: crate::schedule::Stats,
    http: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    probe: tokio::task::JoinHandle<()>,
    health: crate::health::Health,
    metrics: crate::metrics::Metrics,
}

impl Daemon {
    /// Opens the store, starts the engine (which resumes timers and pending actions first), then
    /// the inputs. `library` must have passed the checks of `problems`.
    pub async fn start(settings: &Settings, library: Library) -> anyhow::Result<Self> {
        Self::start_with_clock(settings, library, crate::clock::system()).await
    }

    /// `start` with a given wall clock (tests move it to put the daemon before or after a step).
    pub async fn start_with_clock(settings: &Settings, library: Library, clock: SharedClock) -> anyhow::Result<Self> {
        let media = crate::media::Client::new(&settings.media)?;
        let store_path = settings.engine.store.clone();
        let store: Arc<dyn Store> =
            Arc::new(tokio::task::spawn_blocking(move || SqliteStore::open(&store_path)).await??);
        let broker_settings = Arc::new(settings.broker.clone());
        let publisher = Arc::new(Publisher::new(Arc::clone(&broker_settings)));
        let (outbound, published) = mpsc::unbounded_channel::<Event>();
        let runner = Arc::new(Runner::new(Some(media.clone()), outbound, Arc::clone(&clock)));
        let engine_settings = Arc::new(settings.engine.clone());
        let metrics = crate::metrics::Metrics::default();
        let initial_states = engine_settings
            .broadcasts
            .iter()
            .filter_map(|(id, broadcast)| Some((id.clone(), library.get(&broadcast.machine)?.initial.clone())))
            .collect();
        let library = Arc::new(library);
        let parts = Parts {
            settings: Arc::clone(&engine_settings),
            library: Arc::clone(&library),
            store: Arc::clone(&store),
            runner,
            clock: Arc::clone(&clock),
            metrics: metrics.clone(),
        };
        let core = CancellationToken::new();
        let intake = CancellationToken::new();
        let engine = Engine::start(parts, core.clone()).await?;
        let status = broker::Status::default();
        status.watch_commits(metrics.commits().clone());
        let consumer =
            tokio::spawn(broker::consume(Arc::clone(&broker_settings), engine.input(), status.clone(), intake.clone()));
        let inbox = tokio::spawn(inbox::run(
            engine_settings.inbox.clone(),
            engine_settings.inbox_poll,
            engine.input(),
            intake.clone(),
        ));
        let relay = tokio::spawn(relay(published, Arc::clone(&publisher), core.clone()));
        let schedule_stats = crate::schedule::Stats::default();
        let schedules: Vec<_> = engine_settings
            .broadcasts
            .iter()
            .filter_map(|(id, broadcast)| Some((id.clone(), Arc::clone(broadcast.schedule.as_ref()?))))
            .collect();
        let scheduler = if settings.scheduler.enabled && !schedules.is_empty() {
            let sink = Arc::new(Publisher::new(Arc::clone(&broker_settings)));
            let scheduler = crate::schedule::Scheduler::new(
                settings.scheduler.clone(),
                schedules,
                Arc::clone(&store),
                Arc::clone(&sink),
                Arc::clone(&clock),
                schedule_stats.clone(),
            )
            .await?;
            let stop = intake.clone();
            Some(tokio::spawn(async move {
                scheduler.run(stop).await;
                sink.close().await;
            }))
        } else {
            None
        };
        let ingress = if settings.ingress.enabled {
            let listener = tokio::net::TcpListener::bind(settings.ingress.listen).await.map_err(|error| {
                anyhow::anyhow!("cannot listen on {} (ingress.listen): {error}", settings.ingress.listen)
            })?;
            let address = listener.local_addr()?;
            let ingress = crate::ingress::Ingress::new(
                settings.ingress.clone(),
                &engine_settings.broadcasts,
                Arc::new(Publisher::new(Arc::clone(&broker_settings))),
                Arc::clone(&clock),
            );
            let task = tokio::spawn(crate::ingress::serve(listener, ingress.clone(), intake.clone()));
            tracing::info!(%address, "Webhook ingress listening.");
            Some((address, ingress, task))
        } else {
            None
        };
        let health = crate::health::Health::new(
            settings.health.clone(),
            engine_settings.store.clone(),
            status.clone(),
            metrics.commits().clone(),
        );
        let probe = tokio::spawn(health.clone().probe_media(media, intake.clone()));
        let http = if settings.http.enabled {
            let listener = tokio::net::TcpListener::bind(settings.http.listen)
                .await
                .map_err(|error| anyhow::anyhow!("cannot listen on {} (http.listen): {error}", settings.http.listen))?;
            let address = listener.local_addr()?;
            let router = crate::http::router(crate::http::Parts {
                settings: settings.http.clone(),
                engine: Arc::clone(&engine_settings),
                broker: Arc::clone(&broker_settings),
                store,
                publisher: Arc::clone(&publisher),
                status: status.clone(),
                schedule: schedule_stats.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                initial_states,
                library,
                dead_letters: Default::default(),
                clock: Arc::clone(&clock),
                started: std::time::Instant::now(),
            });
            let task = tokio::spawn(crate::http::serve(listener, router, settings.http.connections, intake.clone()));
            tracing::info!(%address, "Operations listener (health, metrics, API, dashboard) listening.");
            Some((address, task))
        } else {
            None
        };
        tracing::info!(
            broadcasts = engine_settings.broadcasts.len(),
            store = %engine_settings.store.display(),
            broker = %broker_settings.endpoint(),
            "onair running."
        );
        Ok(Self {
            engine,
            core,
            intake,
            consumer,
            inbox,
            relay,
            scheduler,
            ingress,
            publisher,
            status,
            schedule_stats,
            http,
            probe,
            health,
            metrics,
        })
    }

    /// Readiness and progress.
    pub fn health(&self) -> &crate::health::Health {
        &self.health
    }

    /// The daemon's measurements.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Where the operations listener listens, when it is enabled.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(address, _)| *address)
    }

    /// The broker consumer's state.
    pub fn broker_status(&self) -> &broker::Status {
        &self.status
    }

    /// Where the webhook ingress listens, and its counters, when it is enabled.
    pub fn ingress(&self) -> Option<(SocketAddr, Arc<crate::ingress::Stats>)> {
        self.ingress.as_ref().map(|(address, ingress, _)| (*address, ingress.stats()))
    }

    /// The scheduler's counters.
    pub fn schedule_stats(&self) -> &crate::schedule::Stats {
        &self.schedule_stats
    }

    /// Stops the inputs (in-flight events finish and are acknowledged), then the engine.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!(
            "Stopping: no new events; in-flight events finish and are acknowledged; pending actions resume at the next start."
        );
        self.intake.cancel();
        if let Some(scheduler) = self.scheduler {
            let _ = scheduler.await;
        }
        if let Some((_, _, task)) = self.ingress {
            let _ = task.await;
        }
        if let Some((_, task)) = self.http {
            let _ = task.await;
        }
        let _ = self.probe.await;
        let _ = self.consumer.await;
        self.inbox.await??;
        self.core.cancel();
        self.engine.join().await;
        let _ = self.relay.await;
        self.publisher.close().await;
        Ok(())
    }
}

/// Publishes what onair produces for other systems, in order, retrying while the broker is away.
async fn relay(mut published: mpsc::UnboundedReceiver<Event>, publisher: Arc<Publisher>, shutdown: CancellationToken) {
    while let Some(event) = published.recv().await {
        let mut backoff = Duration::from_millis(200);
        loop {
            match publisher.publish_output(&event).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(event_id = %event.id, %error, "Cannot publish; trying again.");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// `onair status`.
pub fn status(settings: &Settings, only: &Option<String>, as_json: bool, events: usize) -> anyhow::Result<ExitCode> {
    if let Some(id) = only
        && !settings.engine.broadcasts.contains_key(id)
    {
        anyhow::bail!("no broadcast {id:?} in the settings");
    }
    // No file yet is fine (nothing has run); a store this onair cannot read rightly (damaged, or
    // of a newer schema) is refused rather than shown wrongly.
    let store = match settings.engine.store.exists() {
        false => None,
        true => match SqliteStore::open_read_only(&settings.engine.store) {
            Ok(store) => Some(store),
            Err(error) if error.is_unusable() => {
                eprintln!("error: {error}");
                return Ok(ExitCode::from(crate::config::EXIT_CODE as u8));
            }
            Err(error) => return Err(error.into()),
        },
    };
    let instances = match &store {
        Some(store) => store.load_instances()?,
        None => Vec::new(),
    };
    let pending = match &store {
        Some(store) => store.pending_actions()?,
        None => Vec::new(),
    };
    let now = crate::clock::system().now();
    let mut report = Vec::new();
    for (id, broadcast) in &settings.engine.broadcasts {
        if only.as_ref().is_some_and(|only| only != id) {
            continue;
        }
        let instance = instances.iter().find(|instance| &instance.broadcast == id);
        let audit = match &store {
            Some(store) => store.audit(id, events.max(1) * 4)?,
            None => Vec::new(),
        };
        let decisions: Vec<_> = audit.iter().filter(|row| row.kind == "decision" || row.kind == "duplicate").collect();
        let last: Vec<Value> = decisions[decisions.len().saturating_sub(events)..]
            .iter()
            .map(|row| json!({"at": row.at.to_rfc3339(), "event": row.event_type, "event_id": row.event_id, "reason": row.reason}))
            .collect();
        let actions: Vec<Value> = pending
            .iter()
            .filter(|row| &row.broadcast == id)
            .map(|row| json!({"id": row.id, "action": row.kind, "attempts": row.attempts, "since": row.created.to_rfc3339()}))
            .collect();
        let next_timer = instance
            .and_then(|instance| instance.timers.iter().min_by_key(|(_, due)| **due))
            .map(|(name, due)| json!({"timer": name, "due": due.to_rfc3339()}));
        let next_step = broadcast
            .schedule
            .as_ref()
            .and_then(|spec| crate::schedule::plan::next_step(id, spec, now))
            .map(|row| json!({"step": row.step, "occurrence": row.occurrence, "planned": row.planned.to_rfc3339(), "local": row.local}));
        let missed = audit.iter().filter(|row| row.kind == "schedule" && row.detail["outcome"] == "missed").count();
        report.push(json!({
            "broadcast": id,
            "machine": broadcast.machine,
            "channel": broadcast.channel,
            "state": instance.map_or("idle (no event yet)".to_string(), |instance| instance.state.clone()),
            "since": instance.map(|instance| instance.since.to_rfc3339()),
            "vars": instance.map(|instance| Value::Object(instance.vars.clone())),
            "pending_actions": actions,
            "next_timer": next_timer,
            "next_step": next_step,
            "recently_missed_steps": missed,
            "last_events": last,
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if store.is_none() {
        println!("(no store at {} yet: nothing has run)", settings.engine.store.display());
    }
    for entry in &report {
        let since = entry["since"].as_str().map(|since| format!(" since {since}")).unwrap_or_default();
        println!(
            "{}  {}{since}  (machine {}, channel {})",
            entry["broadcast"].as_str().unwrap_or_default(),
            entry["state"].as_str().unwrap_or_default(),
            entry["machine"].as_str().unwrap_or_default(),
            entry["channel"].as_str().unwrap_or_default()
        );
        for action in entry["pending_actions"].as_array().into_iter().flatten() {
            println!(
                "    pending  {} #{} (attempts {})",
                action["action"].as_str().unwrap_or_default(),
                action["id"],
                action["attempts"]
            );
        }
        if let Some(step) = entry["next_step"].as_object() {
            println!(
                "    next     {} of {} at {} ({})",
                step["step"].as_str().unwrap_or_default(),
                step["occurrence"].as_str().unwrap_or_default(),
                step["planned"].as_str().unwrap_or_default(),
                step["local"].as_str().unwrap_or_default()
            );
        }
        if let Some(missed) = entry["recently_missed_steps"].as_u64().filter(|missed| *missed > 0) {
            println!("    missed   {missed} schedule steps among the recent audit rows (see the audit trail)");
        }
        if let Some(timer) = entry["next_timer"].as_object() {
            println!(
                "    timer    {} at {}",
                timer["timer"].as_str().unwrap_or_default(),
                timer["due"].as_str().unwrap_or_default()
            );
        }
        for event in entry["last_events"].as_array().into_iter().flatten() {
            println!(
                "    {}  {}: {}",
                event["at"].as_str().unwrap_or_default(),
                event["event"].as_str().unwrap_or_default(),
                event["reason"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `onair send`: one event, published with a confirm (or written into the local inbox).
pub async fn send(settings: &Settings, args: SendArgs) -> anyhow::Result<ExitCode> {
    let data: Value = match &args.data {
        Some(text) => serde_json::from_str(text).map_err(|error| anyhow::anyhow!("--data is not JSON: {error}"))?,
        None => json!({}),
    };
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let id = args.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut event = Event::new(id, args.kind.clone(), args.subject.clone(), data, now);
    event.source = args.source.clone();
    let event = Event::from_value(serde_json::to_value(&event)?)
        .map_err(|error| anyhow::anyhow!("not a valid event: {error}"))?;
    if args.inbox {
        let path = inbox::write(&settings.engine.inbox, &event, 0)?;
        println!("{} queued in {}", event.id, path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let publisher = Publisher::new(Arc::new(settings.broker.clone()));
    let published = publisher.publish(&event).await;
    publisher.close().await;
    published?;
    println!("{} published to {} (confirmed)", event.id, settings.broker.exchange);
    Ok(ExitCode::SUCCESS)
}

/// `onair dlq list` and `onair dlq replay`.
pub async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { limit, json } => {
            let letters = broker::dlq::list(&settings.broker, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters in {}", settings.broker.dead_queue);
            } else {
                for letter in &letters {
                    println!(
                        "{}  {}  {} bytes  reason: {}",
                        letter.message_id.as_deref().unwrap_or("(no id)"),
                        letter.routing_key,
                        letter.bytes,
                        letter.reason
                    );
                }
                println!(
                    "{} dead letter{} (at most {limit} listed)",
                    letters.len(),
                    if letters.len() == 1 { "" } else { "s" }
                );
            }
        }
        DlqCommand::Replay { id, limit } => {
            let report = broker::dlq::replay(&settings.broker, id.as_deref(), limit).await?;
            println!("replayed {}, kept {}", report.replayed, report.kept);
        }
        DlqCommand::Migrate => {
            let report = broker::dlq::migrate(&settings.broker).await?;
            if report.migrated {
                println!(
                    "{} is now a classic queue; {} dead letter{} moved, in order",
                    settings.broker.dead_queue,
                    report.letters,
                    if report.letters == 1 { "" } else { "s" }
                );
            } else {
                println!("{} is already a classic queue: nothing to do", settings.broker.dead_queue);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
