//! The build step: everything that can fail, before anything runs.
//!
//! `Built::build` creates the media client, opens the store, checks that every broadcast's
//! machine is loaded, binds the listeners and loads the scheduler's cursors. It spawns no task:
//! when it fails, nothing was started and nothing is left running (what it opened is dropped).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::Error;
use super::Settings;
use crate::broker::Publisher;
use crate::clock::SharedClock;
use crate::machine::Library;
use crate::schedule::Scheduler;
use crate::store::{SqliteStore, Store};

/// The daemon's listeners, bound and not yet accepting: the spawn step serves them.
pub struct Listeners {
    /// The operations listener (`http.listen`), when enabled.
    pub http: Option<Bound>,
    /// The webhook ingress (`ingress.listen`), when enabled.
    pub ingress: Option<Bound>,
}

/// A bound listener and the address it got (port 0 picks a free one).
pub struct Bound {
    pub listener: TcpListener,
    pub address: SocketAddr,
}

impl Listeners {
    /// Binds every enabled listener; a refused address is an error naming its setting.
    pub async fn bind(settings: &Settings) -> Result<Self, Error> {
        let ingress = match settings.ingress.enabled {
            true => Some(Bound::bind("ingress.listen", settings.ingress.listen).await?),
            false => None,
        };
        let http = match settings.http.enabled {
            true => Some(Bound::bind("http.listen", settings.http.listen).await?),
            false => None,
        };
        Ok(Self { http, ingress })
    }
}

impl Bound {
    async fn bind(setting: &'static str, address: SocketAddr) -> Result<Self, Error> {
        let refused = |error| Error::Bind { setting, address, error };
        let listener = TcpListener::bind(address).await.map_err(refused)?;
        let address = listener.local_addr().map_err(refused)?;
        Ok(Self { listener, address })
    }
}

/// The scheduler, built.
pub(super) struct Scheduling {
    pub(super) scheduler: Scheduler<Publisher>,
    pub(super) sink: Arc<Publisher>,
    pub(super) follow: Follow,
    /// Operator commands for the scheduler (`extend`), from the API.
    pub(super) controls: tokio::sync::mpsc::UnboundedSender<crate::schedule::Control>,
}

/// Turns each new snapshot of the running set into the scheduler's changes.
pub(super) struct Follow {
    catalog: Arc<crate::catalog::Catalog>,
    catalogs: tokio::sync::watch::Receiver<Arc<crate::catalog::Catalog>>,
    controls: tokio::sync::mpsc::UnboundedSender<crate::schedule::Control>,
}

impl Follow {
    /// Runs until `shutdown` or the scheduler is gone.
    pub(super) async fn run(mut self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = self.catalogs.changed() => if changed.is_err() { return },
            }
            let next = Arc::clone(&self.catalogs.borrow_and_update());
            for control in self.catalog.schedule_changes(&next) {
                if self.controls.send(control).is_err() {
                    return;
                }
            }
            self.catalog = next;
        }
    }
}

/// A daemon built and not started: the settings it runs with and what it opened.
pub struct Built {
    pub(super) settings: Settings,
    pub(super) clock: SharedClock,
    pub(super) media: crate::media::Client,
    pub(super) store: Arc<dyn Store>,
    /// The running set of broadcasts (the config file's and the API's) and its only writer.
    pub(super) catalog: Arc<crate::catalog::Manager>,
    pub(super) listeners: Listeners,
    /// The scheduler with its cursors loaded, the publisher it fires steps into and what tells it
    /// of schedule changes; `None` when disabled.
    pub(super) scheduler: Option<Scheduling>,
    pub(super) schedule_stats: crate::schedule::Stats,
    /// Readiness waits for `Health::set_starting(false)` (`holding_readiness`).
    pub(super) hold_ready: bool,
}

impl Built {
    /// Opens and binds everything the daemon needs; starts nothing.
    pub async fn build(settings: &Settings, library: Library, clock: SharedClock) -> Result<Self, Error> {
        let media = crate::media::Client::new(&settings.media)?;
        let store_path = settings.engine.store.clone();
        let span = tracing::info_span!("store.open");
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || span.in_scope(|| SqliteStore::open(&store_path)))
                .await
                .map_err(|source| Error::Task { task: "store open", source })??,
        );
        let parser =
            crate::catalog::Parser::new(settings.engine.defaults.clone(), settings.engine.content_key_policies.clone());
        let file = crate::catalog::FileBroadcasts {
            broadcasts: &settings.engine.broadcasts,
            sources: &settings.engine.sources,
        };
        let catalog = Arc::new(
            crate::catalog::Manager::start(Arc::clone(&store), parser, Arc::new(library), &file, Arc::clone(&clock))
                .await?,
        );
        let listeners = Listeners::bind(settings).await?;
        let schedule_stats = crate::schedule::Stats::default();
        let scheduler = scheduler(settings, &store, &clock, &schedule_stats, catalog.registry()).await?;
        Ok(Self {
            // The running set holds the file's broadcasts from now on.
            settings: settings.clone_without_broadcasts(),
            clock,
            media,
            store,
            catalog,
            listeners,
            scheduler,
            schedule_stats,
            hold_ready: false,
        })
    }

    /// The daemon will not say it is ready (`/readyz`, the `start` check) until
    /// `Health::set_starting(false)`: `onair run` first gives back what only start-up needed.
    pub fn holding_readiness(mut self) -> Self {
        self.hold_ready = true;
        self
    }
}

/// The scheduler over the scheduled broadcasts of the running set, its cursors loaded (and the
/// new ones recorded), when it is enabled; it follows the running set's changes.
async fn scheduler(
    settings: &Settings,
    store: &Arc<dyn Store>,
    clock: &SharedClock,
    stats: &crate::schedule::Stats,
    registry: &crate::catalog::Registry,
) -> Result<Option<Scheduling>, Error> {
    if !settings.scheduler.enabled {
        return Ok(None);
    }
    // Subscribed before the first snapshot is read: no change falls in between.
    let mut catalogs = registry.subscribe();
    let catalog = Arc::clone(&catalogs.borrow_and_update());
    let schedules = catalog.schedules();
    let (controls, changes) = tokio::sync::mpsc::unbounded_channel();
    let sink = Arc::new(Publisher::new(Arc::new(settings.broker.clone())));
    let mut scheduler = Scheduler::new(
        settings.scheduler.clone(),
        schedules,
        Arc::clone(store),
        Arc::clone(&sink),
        Arc::clone(clock),
        stats.clone(),
    )
    .await?
    .following(changes);
    for broadcast in catalog.deleting() {
        scheduler.apply(crate::schedule::Control::Disarm { broadcast });
    }
    Ok(Some(Scheduling { scheduler, sink, controls: controls.clone(), follow: Follow { catalog, catalogs, controls } }))
}
