//! The build step: everything that can fail, before anything runs.
//!
//! `Built::build` creates the media client, opens the store, checks that every broadcast's
//! machine is loaded, binds the listeners and loads the scheduler's cursors. It spawns no task:
//! when it fails, nothing was started and nothing is left running (what it opened is dropped).

use std::collections::BTreeMap;
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

/// A daemon built and not started: the settings it runs with and what it opened.
pub struct Built {
    pub(super) settings: Settings,
    pub(super) clock: SharedClock,
    pub(super) media: crate::media::Client,
    pub(super) store: Arc<dyn Store>,
    pub(super) library: Arc<Library>,
    /// Each broadcast's machine's initial state (for the API).
    pub(super) initial_states: BTreeMap<String, String>,
    pub(super) listeners: Listeners,
    /// The scheduler with its cursors loaded, and the publisher it fires steps into; `None` when
    /// disabled or nothing is scheduled.
    pub(super) scheduler: Option<(Scheduler<Publisher>, Arc<Publisher>)>,
    pub(super) schedule_stats: crate::schedule::Stats,
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
        let initial_states = initial_states(settings, &library);
        let listeners = Listeners::bind(settings).await?;
        let schedule_stats = crate::schedule::Stats::default();
        let scheduler = scheduler(settings, &store, &clock, &schedule_stats).await?;
        Ok(Self {
            settings: settings.clone(),
            clock,
            media,
            store,
            library: Arc::new(library),
            initial_states,
            listeners,
            scheduler,
            schedule_stats,
        })
    }
}

/// Each broadcast's machine's initial state, for the API. A broadcast whose machine is not
/// loaded has none here: `daemon::problems` refuses it before start, and the engine's start
/// (the first thing `spawn` does, before it spawns anything) fails on it.
fn initial_states(settings: &Settings, library: &Library) -> BTreeMap<String, String> {
    settings
        .engine
        .broadcasts
        .iter()
        .filter_map(|(id, broadcast)| Some((id.clone(), library.get(&broadcast.machine)?.initial.clone())))
        .collect()
}

/// The scheduler over the scheduled broadcasts, its cursors loaded (and the new ones recorded),
/// when it is enabled and something is scheduled.
async fn scheduler(
    settings: &Settings,
    store: &Arc<dyn Store>,
    clock: &SharedClock,
    stats: &crate::schedule::Stats,
) -> Result<Option<(Scheduler<Publisher>, Arc<Publisher>)>, Error> {
    let schedules: Vec<_> = settings
        .engine
        .broadcasts
        .iter()
        .filter_map(|(id, broadcast)| Some((id.clone(), Arc::clone(broadcast.schedule.as_ref()?))))
        .collect();
    if !settings.scheduler.enabled || schedules.is_empty() {
        return Ok(None);
    }
    let sink = Arc::new(Publisher::new(Arc::new(settings.broker.clone())));
    let scheduler = Scheduler::new(
        settings.scheduler.clone(),
        schedules,
        Arc::clone(store),
        Arc::clone(&sink),
        Arc::clone(clock),
        stats.clone(),
    )
    .await?;
    Ok(Some((scheduler, sink)))
}
