//! The spawn step: starts what `Built` holds, in order, and nothing here binds or opens.
//!
//! The engine starts first (it loads its state before it spawns anything, so its failure leaves
//! nothing running), then the inputs that feed it, each serving what the build step bound, as
//! mini-redis's `run(listener, shutdown)` does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::build::Bound;
use super::{Built, Daemon, Error};
use crate::broker::{self, Publisher};
use crate::engine::{Engine, Parts, Runner, inbox};
use crate::event::Event;
use crate::store::Store;

impl Built {
    /// Starts the engine (which resumes timers and pending actions first), then the inputs, the
    /// media probe and the operations listener.
    pub async fn spawn(self) -> Result<Daemon, Error> {
        let Built { settings, clock, media, store, catalog, listeners, scheduler, schedule_stats, hold_ready } = self;
        let broker_settings = Arc::new(settings.broker.clone());
        // The running set (the catalog) holds the broadcasts; the engine's settings need not.
        let mut engine_settings = settings.engine.clone();
        engine_settings.broadcasts.clear();
        engine_settings.sources.clear();
        let engine_settings = Arc::new(engine_settings);
        let metrics = crate::metrics::Metrics::default();
        let status = broker::Status::default();
        status.watch_commits(metrics.commits().clone());
        let health = crate::health::Health::new(
            settings.health.clone(),
            engine_settings.store.clone(),
            status.clone(),
            metrics.commits().clone(),
        );
        health.set_starting(hold_ready);
        let shared = Shared {
            publisher: Arc::new(Publisher::new(Arc::clone(&broker_settings))),
            broker: broker_settings,
            engine: engine_settings,
            clock,
            metrics,
            status,
            health,
            schedule_stats,
            intake: CancellationToken::new(),
        };
        let core = CancellationToken::new();
        let (outbound, published) = mpsc::unbounded_channel::<Event>();
        let parts = Parts {
            settings: Arc::clone(&shared.engine),
            registry: catalog.registry().clone(),
            store: Arc::clone(&store),
            runner: Arc::new(Runner::new(Some(media.clone()), outbound, Arc::clone(&shared.clock))),
            clock: Arc::clone(&shared.clock),
            metrics: shared.metrics.clone(),
        };
        let engine = Engine::start(parts, core.clone()).await?;

        let relay = tokio::spawn(
            relay(published, Arc::clone(&shared.publisher), core.clone()).instrument(tracing::info_span!("relay")),
        );
        let schedule_control = scheduler.as_ref().map(|scheduling| scheduling.controls.clone());
        let inputs = shared.spawn_inputs(&engine, scheduler, listeners.ingress, &settings.ingress, catalog.registry());
        let probe = shared.health.clone().probe_media(media, shared.intake.clone());
        // The removal reaper shares the probe's task (both stop with the inputs).
        let reaper = super::reaper::run(Arc::clone(&catalog), shared.intake.clone());
        let probe = tokio::spawn(async move {
            tokio::join!(
                probe.instrument(tracing::info_span!("media_probe")),
                reaper.instrument(tracing::info_span!("reaper")),
            );
        });
        let reloads = crate::http::reload::Reloads::default();
        let http = listeners.http.map(|bound| {
            let router = shared.operations_router(
                &settings.http,
                store,
                Arc::clone(&catalog),
                schedule_control,
                reloads.clone(),
            );
            serve_http(bound, router, settings.http.connections, shared.intake.clone())
        });
        tracing::info!(
            broadcasts = catalog.registry().current().len(),
            store = %shared.engine.store.display(),
            broker = %shared.broker.endpoint(),
            "onair running."
        );
        Ok(Daemon {
            engine,
            core,
            intake: shared.intake,
            consumer: inputs.consumer,
            inbox: inputs.inbox,
            relay,
            scheduler: inputs.scheduler,
            ingress: inputs.ingress,
            publisher: shared.publisher,
            status: shared.status,
            schedule_stats: shared.schedule_stats,
            http,
            probe,
            health: shared.health,
            metrics: shared.metrics,
            catalog,
            reloads,
        })
    }
}

/// What the engine, the inputs and the operations listener share.
struct Shared {
    broker: Arc<crate::broker::Settings>,
    engine: Arc<crate::engine::Settings>,
    clock: crate::clock::SharedClock,
    metrics: crate::metrics::Metrics,
    status: broker::Status,
    health: crate::health::Health,
    /// Publishes what onair produces (the relay) and what the API sends.
    publisher: Arc<Publisher>,
    schedule_stats: crate::schedule::Stats,
    /// Stops the inputs.
    intake: CancellationToken,
}

/// The tasks that feed the engine.
struct Inputs {
    consumer: JoinHandle<()>,
    inbox: JoinHandle<Result<(), inbox::Error>>,
    scheduler: Option<JoinHandle<()>>,
    ingress: Option<(SocketAddr, crate::ingress::Ingress, JoinHandle<()>)>,
}

impl Shared {
    /// Starts the broker consumer, the inbox, the scheduler (when built) and the ingress (when its
    /// listener was bound), all stopped by `intake`.
    fn spawn_inputs(
        &self,
        engine: &Engine,
        scheduler: Option<super::build::Scheduling>,
        ingress: Option<Bound>,
        ingress_settings: &crate::ingress::Settings,
        registry: &crate::catalog::Registry,
    ) -> Inputs {
        let consumer = tokio::spawn(
            broker::consume(Arc::clone(&self.broker), engine.input(), self.status.clone(), self.intake.clone())
                .instrument(tracing::info_span!("broker_consumer")),
        );
        let inbox = tokio::spawn(
            inbox::run(self.engine.inbox.clone(), self.engine.inbox_poll, engine.input(), self.intake.clone())
                .instrument(tracing::info_span!("inbox")),
        );
        let scheduler = scheduler.map(|super::build::Scheduling { scheduler, sink, follow, .. }| {
            let stop = self.intake.clone();
            let following = follow.run(stop.clone());
            let scheduling = async move {
                tokio::join!(scheduler.run(stop), following);
                sink.close().await;
            };
            tokio::spawn(scheduling.instrument(tracing::info_span!("scheduler")))
        });
        let ingress = ingress.map(|bound| {
            let ingress = crate::ingress::Ingress::new(
                ingress_settings.clone(),
                registry.clone(),
                Arc::new(Publisher::new(Arc::clone(&self.broker))),
                Arc::clone(&self.clock),
            );
            serve_ingress(bound, ingress, self.intake.clone())
        });
        Inputs { consumer, inbox, scheduler, ingress }
    }

    /// The operations listener's routes over the daemon's state.
    fn operations_router(
        &self,
        settings: &crate::http::Settings,
        store: Arc<dyn Store>,
        catalog: Arc<crate::catalog::Manager>,
        schedule_control: Option<mpsc::UnboundedSender<crate::schedule::Control>>,
        reload: crate::http::reload::Reloads,
    ) -> axum::Router {
        crate::http::router(crate::http::Parts {
            settings: settings.clone(),
            engine: Arc::clone(&self.engine),
            broker: Arc::clone(&self.broker),
            store,
            publisher: Arc::clone(&self.publisher),
            status: self.status.clone(),
            schedule: self.schedule_stats.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            catalog,
            dead_letters: Default::default(),
            activity: Default::default(),
            reload,
            clock: Arc::clone(&self.clock),
            schedule_control,
            started: std::time::Instant::now(),
        })
    }
}

/// Serves the webhook ingress on its bound listener until `shutdown`.
fn serve_ingress(
    Bound { listener, address }: Bound,
    ingress: crate::ingress::Ingress,
    shutdown: CancellationToken,
) -> (SocketAddr, crate::ingress::Ingress, JoinHandle<()>) {
    let task = tokio::spawn(
        crate::ingress::serve(listener, ingress.clone(), shutdown).instrument(tracing::info_span!("ingress")),
    );
    tracing::info!(%address, "Webhook ingress listening.");
    (address, ingress, task)
}

/// Serves the operations listener on its bound listener until `shutdown`.
fn serve_http(
    Bound { listener, address }: Bound,
    router: axum::Router,
    limits: crate::http::Limits,
    shutdown: CancellationToken,
) -> (SocketAddr, JoinHandle<()>) {
    let task =
        tokio::spawn(crate::http::serve(listener, router, limits, shutdown).instrument(tracing::info_span!("http")));
    tracing::info!(%address, "Operations listener (health, metrics, API, dashboard) listening.");
    (address, task)
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
