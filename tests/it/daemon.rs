//! Shared harness for engine tests: an emulator, settings pointing at it, an engine on a temporary
//! store, and a read-only view of that store.

use std::sync::Arc;
use std::time::Duration;

use onair::config::{self, Settings, Source};
use onair::engine::{self, Engine, Outcome, Parts, Runner};
use onair::event::Event;
use onair::machine::Library;
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
    config::load(&Source { file: Some(file), env }).expect("settings")
}

/// A running engine.
pub struct TestEngine {
    pub engine: Engine,
    pub shutdown: CancellationToken,
}

impl TestEngine {
    pub async fn start(settings: &Settings) -> Self {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&settings.engine.store).expect("store"));
        Self::start_with_store(settings, store).await
    }

    /// `start` on a given store (a real one, possibly wrapped to inject faults).
    pub async fn start_with_store(settings: &Settings, store: Arc<dyn Store>) -> Self {
        let library = Library::load(settings.engine.machines_dir.as_deref());
        assert!(library.problems.is_empty(), "{:?}", library.problems);
        let media = onair::media::Client::new(&settings.media).expect("media client");
        let (outbound, mut published) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move { while published.recv().await.is_some() {} });
        let clock = onair::clock::system();
        let runner = Arc::new(Runner::new(Some(media), outbound, Arc::clone(&clock)));
        let shutdown = CancellationToken::new();
        let parts = Parts {
            settings: Arc::new(settings.engine.clone()),
            library: Arc::new(library),
            store,
            runner,
            clock,
            metrics: Default::default(),
        };
        let engine = Engine::start(parts, shutdown.clone()).await.expect("engine");
        Self { engine, shutdown }
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
        let pending = SqliteStore::open_read_only(&settings.engine.store)
            .ok()
            .and_then(|store| store.pending_actions().ok())
            .map_or(0, |rows| rows.iter().filter(|row| row.broadcast == broadcast).count());
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
