//! The spawn step: starts what `Built` holds, in order, and nothing here binds or opens.
//!
//! The engine starts first (it loads its state before it spawns anything, so its failure leaves
//! nothing running), then the inputs that feed it, each serving what the build step bound, as
//! mini-redis's `run(listener, shutdown)` does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::build::Bound;
use super::{Built, Daemon, Error};
use crate::broker::{self, Publisher};
use crate::engine::{Engine, Parts, Runner, inbox};
use crate::event::Event;

impl Built {
    /// Starts the engine (which resumes timers and pending actions first), then the inputs, the
    /// media probe and the operations listener.
    pub async fn spawn(self) -> Result<Daemon, Error> {
        let Built { settings, clock, media, store, library, initial_states, listeners, scheduler, schedule_stats } =
            self;
        let broker_settings = Arc::new(settings.broker.clone());
        let engine_settings = Arc::new(settings.engine.clone());
        let publisher = Arc::new(Publisher::new(Arc::clone(&broker_settings)));
        let metrics = crate::metrics::Metrics::default();
        let (outbound, published) = mpsc::unbounded_channel::<Event>();
        let core = CancellationToken::new();
        let intake = CancellationToken::new();
        let parts = Parts {
            settings: Arc::clone(&engine_settings),
            library: Arc::clone(&library),
            store: Arc::clone(&store),
            runner: Arc::new(Runner::new(Some(media.clone()), outbound, Arc::clone(&clock))),
            clock: Arc::clone(&clock),
            metrics: metrics.clone(),
        };
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
        let scheduler = scheduler.map(|(scheduler, sink)| {
            let stop = intake.clone();
            tokio::spawn(async move {
                scheduler.run(stop).await;
                sink.close().await;
            })
        });
        let ingress = listeners.ingress.map(|bound| {
            let ingress = crate::ingress::Ingress::new(
                settings.ingress.clone(),
                &engine_settings.broadcasts,
                Arc::new(Publisher::new(Arc::clone(&broker_settings))),
                Arc::clone(&clock),
            );
            serve_ingress(bound, ingress, intake.clone())
        });
        let health = crate::health::Health::new(
            settings.health.clone(),
            engine_settings.store.clone(),
            status.clone(),
            metrics.commits().clone(),
        );
        let probe = tokio::spawn(health.clone().probe_media(media, intake.clone()));
        let http = listeners.http.map(|bound| {
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
            serve_http(bound, router, settings.http.connections, intake.clone())
        });
        tracing::info!(
            broadcasts = engine_settings.broadcasts.len(),
            store = %engine_settings.store.display(),
            broker = %broker_settings.endpoint(),
            "onair running."
        );
        Ok(Daemon {
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
}

/// Serves the webhook ingress on its bound listener until `shutdown`.
fn serve_ingress(
    Bound { listener, address }: Bound,
    ingress: crate::ingress::Ingress,
    shutdown: CancellationToken,
) -> (SocketAddr, crate::ingress::Ingress, JoinHandle<()>) {
    let task = tokio::spawn(crate::ingress::serve(listener, ingress.clone(), shutdown));
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
    let task = tokio::spawn(crate::http::serve(listener, router, limits, shutdown));
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
