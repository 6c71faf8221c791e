//! `[engine]` and `[broadcasts.<id>]` settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::broadcast::Broadcast;

/// The engine's settings and the broadcasts it runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the store and the inbox live by default.
    pub state_dir: PathBuf,
    /// The SQLite database.
    pub store: PathBuf,
    /// The local inbox directory.
    pub inbox: PathBuf,
    /// How often the inbox is read.
    pub inbox_poll: Duration,
    /// User machine definitions (`*.toml`), which replace built-ins of the same name.
    pub machines_dir: Option<PathBuf>,
    /// Partitions of broadcasts decided concurrently.
    pub lanes: usize,
    /// Events waiting for the router, and per lane.
    pub input_queue: usize,
    pub lane_queue: usize,
    /// Events one lane decides and commits together at most.
    pub lane_batch: usize,
    /// Actions running at once, across broadcasts.
    pub action_concurrency: usize,
    /// Attempts of one action before it fails.
    pub action_attempts: u32,
    /// Backoff before an action's second attempt; it doubles.
    pub action_backoff: Duration,
    /// Wait before a failed commit is tried again; it doubles up to `commit_backoff_max`. A
    /// commit is retried until it succeeds (or the engine stops): the events stay in hand.
    pub commit_backoff_initial: Duration,
    pub commit_backoff_max: Duration,
    /// How long processed event ids are kept for deduplication.
    pub dedup_retention: Duration,
    /// The config file's broadcasts, by id (the running set, with those created through the API,
    /// is `catalog::Catalog`).
    pub broadcasts: BTreeMap<String, Broadcast>,
    /// The config file's broadcasts as written, by id (what is stored and compared on reload).
    pub sources: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// `[defaults.broadcast]` and `[defaults.schedule]`, which a definition sent to the API falls
    /// back on too.
    pub defaults: crate::broadcast::Defaults,
    /// The content key policies protected broadcasts name (`[content_key_policies.<name>]`).
    pub content_key_policies: crate::protection::Policies,
}

impl Settings {
    /// A copy without the broadcasts and their sources, for what runs after start (the running
    /// set holds them): 100,000 broadcasts are not copied to be dropped. Every field is named, so
    /// that a new one is not forgotten here.
    pub fn clone_without_broadcasts(&self) -> Settings {
        let Settings {
            state_dir,
            store,
            inbox,
            inbox_poll,
            machines_dir,
            lanes,
            input_queue,
            lane_queue,
            lane_batch,
            action_concurrency,
            action_attempts,
            action_backoff,
            commit_backoff_initial,
            commit_backoff_max,
            dedup_retention,
            broadcasts: _,
            sources: _,
            defaults,
            content_key_policies,
        } = self;
        Settings {
            state_dir: state_dir.clone(),
            store: store.clone(),
            inbox: inbox.clone(),
            inbox_poll: *inbox_poll,
            machines_dir: machines_dir.clone(),
            lanes: *lanes,
            input_queue: *input_queue,
            lane_queue: *lane_queue,
            lane_batch: *lane_batch,
            action_concurrency: *action_concurrency,
            action_attempts: *action_attempts,
            action_backoff: *action_backoff,
            commit_backoff_initial: *commit_backoff_initial,
            commit_backoff_max: *commit_backoff_max,
            dedup_retention: *dedup_retention,
            broadcasts: Default::default(),
            sources: Default::default(),
            defaults: defaults.clone(),
            content_key_policies: content_key_policies.clone(),
        }
    }

    pub(crate) fn parse(
        engine: &mut crate::config::Section<'_>,
        broadcasts: &mut crate::config::Section<'_>,
        defaults: &crate::broadcast::Defaults,
        content_key_policies: crate::protection::Policies,
    ) -> Self {
        let state_dir: PathBuf = engine.value::<String>("state_dir").into();
        let store = engine.optional::<PathBuf>("store").unwrap_or_else(|| state_dir.join("onair.db"));
        let inbox = engine.optional::<PathBuf>("inbox").unwrap_or_else(|| state_dir.join("inbox"));
        let (broadcasts, sources) = crate::broadcast::parse_with_sources(broadcasts, &content_key_policies, defaults);
        let settings = Self {
            store,
            inbox,
            inbox_poll: engine.duration("inbox_poll"),
            machines_dir: engine.optional("machines_dir"),
            lanes: engine.value("lanes"),
            input_queue: engine.value("input_queue"),
            lane_queue: engine.value("lane_queue"),
            lane_batch: engine.value("lane_batch"),
            action_concurrency: engine.value("action_concurrency"),
            action_attempts: engine.value("action_attempts"),
            action_backoff: engine.duration("action_backoff"),
            commit_backoff_initial: engine.duration("commit_backoff_initial"),
            commit_backoff_max: engine.duration("commit_backoff_max"),
            dedup_retention: engine.duration("dedup_retention"),
            sources,
            broadcasts,
            defaults: defaults.clone(),
            content_key_policies,
            state_dir,
        };
        engine.check("state_dir", !settings.state_dir.as_os_str().is_empty(), "must not be empty");
        engine.check("lanes", (1..=1024).contains(&settings.lanes), "must be between 1 and 1024");
        engine.check("input_queue", settings.input_queue >= 1, "must be at least 1");
        engine.check("lane_queue", settings.lane_queue >= 1, "must be at least 1");
        engine.check("lane_batch", (1..=4096).contains(&settings.lane_batch), "must be between 1 and 4096");
        engine.check("action_concurrency", settings.action_concurrency >= 1, "must be at least 1");
        engine.check("action_attempts", settings.action_attempts >= 1, "must be at least 1");
        engine.check(
            "commit_backoff_initial",
            (Duration::from_millis(1)..=Duration::from_secs(60)).contains(&settings.commit_backoff_initial),
            "must be between 1ms and 1m",
        );
        engine.check(
            "commit_backoff_max",
            settings.commit_backoff_max >= settings.commit_backoff_initial
                && settings.commit_backoff_max <= Duration::from_secs(300),
            "must be at least commit_backoff_initial and at most 5m",
        );
        engine.check("inbox_poll", !settings.inbox_poll.is_zero(), "must be greater than zero");
        engine.check("dedup_retention", settings.dedup_retention >= Duration::from_secs(60), "must be at least 1m");
        settings
    }
}
