//! Shared harness for engine tests: an emulator, settings pointing at it, an engine on a temporary
//! store, and a read-only view of that store.

use std::sync::Arc;
use std::time::Duration;

use onair::config::Source;
use onair::daemon::Settings;
use onair::engine::{self, Engine, Outcome, Parts, Runner};
use onair::event::Event;
use onair::store::{SqliteStore, Store};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::TestEmulator;

/// Settings for `broadcasts` (TOML tables, e.g. `[broadcasts.news]\nunits = {...}`) against `emulator`.
pub fn settings(emulator: &TestEmulator, state_dir: &std::path::Path, broadcasts: &str) -> Settings {
    let text = format!(
        r#"
[media]
arm_url = "{base}"
token_url = "{base}/t/oauth2/v2.0/token"
subscription_id = "{subscription}"
resource_group = "{group}"
account = "{account}"
client_id = "onair-emulator"
poll_interval = "20ms"
backoff_initial = "20ms"
backoff_max = "200ms"
[http]
listen = "127.0.0.1:0"
[engine]
state_dir = "{state_dir}"
inbox_poll = "20ms"
action_backoff = "50ms"
{broadcasts}
"#,
        base = emulator.base,
        subscription = crate::helpers::SUBSCRIPTION,
        group = crate::helpers::GROUP,
        account = crate::helpers::ACCOUNT,
        state_dir = state_dir.display(),
    );
    let file = state_dir.join("onair.toml");
    std::fs::create_dir_all(state_dir).unwrap();
    std::fs::write(&file, text).unwrap();
    let env = [("ONAIR__MEDIA__CLIENT_SECRET".to_string(), "onair-emulator-secret".to_string())].into_iter().collect();
    onair::daemon::load(&Source { file: Some(file), env }).expect("settings")
}

/// A running engine.
pub struct TestEngine {
    pub engine: Engine,
    pub shutdown: CancellationToken,
    /// What the engine records (heartbeats, decision latencies, commit failures).
    pub metrics: onair::metrics::Metrics,
}

impl TestEngine {
    pub async fn start(settings: &Settings) -> Self {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).expect("store"));
        Self::start_with_store(settings, store).await
    }

    /// `start` on a given store (a real one, possibly wrapped to inject faults).
    pub async fn start_with_store(settings: &Settings, store: Arc<dyn Store>) -> Self {
        let library = onair::daemon::load_machines(settings.engine.machines_dir.as_deref());
        assert!(library.problems.is_empty(), "{:?}", library.problems);
        let media = onair::media::Client::new(&settings.media).expect("media client");
        let (outbound, mut published) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move { while published.recv().await.is_some() {} });
        let clock = onair::clock::system();
        let runner = Arc::new(Runner::new(Some(media), outbound, Arc::clone(&clock)));
        let shutdown = CancellationToken::new();
        let metrics = onair::metrics::Metrics::default();
        let parts = Parts {
            settings: Arc::new(settings.engine.clone()),
            registry: onair::catalog::Registry::fixed(&settings.engine.broadcasts, &library).expect("machines"),
            store,
            runner,
            clock,
            metrics: metrics.clone(),
        };
        let engine = Engine::start(parts, shutdown.clone()).await.expect("engine");
        Self { engine, shutdown, metrics }
    }

    /// Delivers one event and returns its outcome.
    pub async fn send(&self, id: &str, kind: &str, subject: &str, data: Value) -> Outcome {
        let event = Event::new(id, kind, subject, data, onair::clock::Clock::now(&onair::clock::SystemClock));
        engine::deliver(&self.engine.input(), event).await
    }

    /// A schedule step of occurrence `20261124t1800z`.
    pub async fn step(&self, broadcast: &str, step: &str) -> Outcome {
        let data = serde_json::json!({"broadcast": broadcast, "occurrence": "20261124t1800z", "step": step});
        self.send(&format!("{broadcast}/20261124t1800z/{step}"), onair::event::SCHEDULE_FIRED, broadcast, data).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.engine.join().await;
    }
}

/// Two broadcasts tests add beside their own, so that every read of per-broadcast state has
/// neighbours in other states to be confused with.
pub const NEIGHBOURS: &str = "[broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.travel]\nchannel = \"travel\"\n";

/// The neighbours' records once placed.
pub struct Neighbours(Vec<onair::store::InstanceRecord>);

impl TestEngine {
    /// Forces `sport` into `failed` and `travel` into `cooldown` (no actions run, no timers) and
    /// records them.
    pub async fn neighbours(&self, settings: &Settings) -> Neighbours {
        let mut records = Vec::new();
        for (broadcast, state) in [("sport", "failed"), ("travel", "cooldown")] {
            let data = serde_json::json!({"state": state, "note": "a neighbour"});
            let outcome =
                self.send(&format!("neighbour-{broadcast}"), onair::event::FORCE_STATE, broadcast, data).await;
            assert_eq!(outcome, Outcome::Committed, "{broadcast}");
            let record = record(settings, broadcast).expect("the neighbour's record");
            assert_eq!(record.state, state);
            records.push(record);
        }
        Neighbours(records)
    }
}

impl Neighbours {
    /// Asserts that neither neighbour changed: state, variables, timers, since, decisions.
    pub fn untouched(&self, settings: &Settings) {
        for placed in &self.0 {
            assert_eq!(record(settings, &placed.broadcast).as_ref(), Some(placed), "{} changed", placed.broadcast);
            let decided = view(settings)
                .audit(&placed.broadcast, 100)
                .unwrap()
                .iter()
                .filter(|row| row.kind == "decision")
                .count();
            assert_eq!(decided, 1, "{}: only the decision that placed it", placed.broadcast);
        }
    }
}

/// The record of `broadcast` in the store.
pub fn record(settings: &Settings, broadcast: &str) -> Option<onair::store::InstanceRecord> {
    SqliteStore::open_read_only(&settings.engine.store)
        .ok()?
        .load_instances()
        .ok()?
        .into_iter()
        .find(|instance| instance.broadcast == broadcast)
}

/// A read-only view of a store.
pub fn view(settings: &Settings) -> onair::store::ReadOnly {
    SqliteStore::open_read_only(&settings.engine.store).expect("read-only store")
}

/// The state of `broadcast` in the store.
pub fn state(settings: &Settings, broadcast: &str) -> Option<(String, serde_json::Map<String, Value>)> {
    let store = SqliteStore::open_read_only(&settings.engine.store).ok()?;
    store
        .load_instances()
        .ok()?
        .into_iter()
        .find(|instance| instance.broadcast == broadcast)
        .map(|instance| (instance.state, instance.vars))
}

/// Waits until `broadcast` is in `expected` with no pending action.
pub async fn settled(settings: &Settings, broadcast: &str, expected: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = state(settings, broadcast).map(|(state, _)| state);
        let pending = crate::helpers::pending_actions_of(&settings.engine.store, broadcast);
        if state.as_deref() == Some(expected) && pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{broadcast} never settled in {expected}: it is {state:?} with {pending} pending actions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
