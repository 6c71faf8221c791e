//! Changing the running set: create, replace and remove broadcasts, and reconcile the config
//! file's broadcasts on start and reload.
//!
//! Every change is validated as `onair check` would (the definition's own problems, its machine,
//! its schedule against the broadcasts it shares a channel with), refused when it would disturb
//! what runs (a new channel, endpoint or protection for a broadcast that is not idle), written to
//! the store with a `config` audit row (who, and a readable diff), and only then published to the
//! registry. One change at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Catalog, Entry, Origin, Registry};
use crate::broadcast::{Broadcast, Defaults};
use crate::clock::SharedClock;
use crate::machine::Library;
use crate::store::{self, BroadcastChange, BroadcastRecord, Change, Expected, Store};

/// Who makes a change: a token's name, or the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who(pub String);

impl Who {
    /// The config file, read at start or on reload.
    pub fn config_file() -> Self {
        Self("config file".into())
    }
}

/// One problem with a definition: its key path (`broadcasts.<id>.schedule.cron`) and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemAt {
    pub key: String,
    pub reason: String,
}

impl ProblemAt {
    /// Splits a located problem (`key: reason`) as the checks write them.
    pub fn from_line(line: &str) -> Self {
        match line.split_once(": ") {
            Some((key, reason)) if !key.contains(' ') || key.starts_with("broadcasts.") => {
                Self { key: key.to_string(), reason: reason.to_string() }
            }
            _ => Self { key: String::new(), reason: line.to_string() },
        }
    }
}

impl std::fmt::Display for ProblemAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() { f.write_str(&self.reason) } else { write!(f, "{}: {}", self.key, self.reason) }
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The definition (or the set it would make) has problems; nothing changed.
    #[error("invalid broadcast definition ({} problem{})", .0.len(), if .0.len() == 1 { "" } else { "s" })]
    Invalid(Vec<ProblemAt>),
    /// No broadcast with this id.
    #[error("no broadcast {0:?}")]
    NotFound(String),
    /// The config file defines it: only the file changes it.
    #[error("broadcast {0:?} is defined in the config file; change it there and reload")]
    FileOwned(String),
    /// Not idle, and the change would disturb what runs.
    #[error("broadcast {id:?} is {state}, not idle: {what}")]
    Busy { id: String, state: String, what: String },
    /// The revision is not the one the change expected.
    #[error("broadcast {id:?} is at revision {found:?}, not the expected {expected:?}")]
    Conflict { id: String, expected: Expected, found: Option<i64> },
    /// The store could not record the change; nothing changed.
    #[error(transparent)]
    Store(store::Error),
}

impl Error {
    pub(super) fn missing_machine(id: &str, machine: &str, library: &Library) -> Self {
        Self::Invalid(vec![missing_machine(id, machine, library)])
    }
}

impl From<store::Error> for Error {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::Conflict { broadcast, expected, found } => Error::Conflict { id: broadcast, expected, found },
            other => Error::Store(other),
        }
    }
}

fn missing_machine(id: &str, machine: &str, library: &Library) -> ProblemAt {
    let known = library.machines.keys().cloned().collect::<Vec<_>>().join(", ");
    ProblemAt {
        key: format!("broadcasts.{id}.machine"),
        reason: format!("no machine named {machine:?} (loaded: {known})"),
    }
}

/// How a definition is read: the same defaults and content key policies as the config file's.
#[derive(Debug, Clone)]
pub struct Parser {
    defaults: Defaults,
    policies: crate::protection::Policies,
}

impl Parser {
    pub fn new(defaults: Defaults, policies: crate::protection::Policies) -> Self {
        Self { defaults, policies }
    }

    /// Reads `definition` as `[broadcasts.<id>]`; every problem, located.
    pub fn parse(&self, id: &str, definition: &Map<String, Value>) -> Result<Broadcast, Vec<ProblemAt>> {
        let root = json!({"broadcasts": {id: Value::Object(definition.clone())}});
        let parsed = crate::config::parse_value("api", root, |root| {
            crate::broadcast::parse(&mut root.section("broadcasts"), &self.policies, &self.defaults)
        });
        match parsed {
            Ok(mut broadcasts) => broadcasts.remove(id).ok_or_else(|| {
                vec![ProblemAt { key: format!("broadcasts.{id}"), reason: "not a broadcast definition".into() }]
            }),
            Err(crate::config::Error::Invalid(problems)) => Err(problems
                .0
                .into_iter()
                .map(|problem| ProblemAt { key: problem.key, reason: problem.reason })
                .collect()),
        }
    }
}

/// What a removal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// Removed now (it was idle).
    Removed,
    /// Marked for removal: it is being taken to idle (stop-now), then removed.
    Stopping { state: String },
}

/// What a reload changed, by broadcast id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reloaded {
    pub created: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Removed from the file while not idle: what it started ends as planned (nothing new is
    /// scheduled), then it is removed.
    pub retiring: Vec<String>,
    pub unchanged: usize,
}

/// A broadcast's instance as the checks see it: its state, and whether actions are pending.
#[derive(Debug, Clone)]
struct Activity {
    state: Option<String>,
    pending: bool,
}

/// The only writer of the running set.
pub struct Manager {
    registry: Registry,
    store: Arc<dyn Store>,
    parser: Arc<Parser>,
    library: std::sync::Mutex<Arc<Library>>,
    clock: SharedClock,
    /// One change at a time, so that each is validated against the set it changes.
    changing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("broadcasts", &self.registry.current().len()).finish_non_exhaustive()
    }
}

impl Manager {
    /// Loads the stored definitions, reconciles the config file's broadcasts with them (created,
    /// changed, removed to match the file, each audited) and publishes the running set.
    ///
    /// An API broadcast that no longer validates (its machine or content key policy is gone) is
    /// kept in the store but not run, with an error logged; it runs again once fixed.
    pub async fn start(
        store: Arc<dyn Store>,
        parser: Parser,
        library: Arc<Library>,
        file: &FileBroadcasts<'_>,
        clock: SharedClock,
    ) -> Result<Self, Error> {
        let manager = Self {
            registry: Registry::new(Catalog::default()),
            store,
            parser: Arc::new(parser),
            library: std::sync::Mutex::new(library),
            clock,
            changing: tokio::sync::Mutex::new(()),
        };
        let stored = manager.read(|store| store.broadcasts()).await?;
        let activity = manager.activity().await?;
        let library = manager.library();
        let plan = reconcile(file, &stored, &activity, &library, &manager.parser, manager.clock.now());
        // At start the file is what the operator wants: a change that would disturb a broadcast
        // on air is still refused, the rest applied, and what was refused is logged.
        for problem in &plan.refused {
            tracing::error!(%problem, "Config file change not applied (the broadcast is not idle); the stored definition runs.");
        }
        let records = manager.write_over(stored, plan.changes).await?;
        let catalog = manager.build(records, file, &library, true);
        tracing::info!(
            broadcasts = catalog.len(),
            from_file = catalog.iter().filter(|(_, entry)| entry.origin == Origin::File).count(),
            "Broadcasts loaded."
        );
        manager.registry.replace(catalog);
        Ok(manager)
    }

    /// The running set, which the rest of the daemon reads.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The machines the broadcasts run.
    pub fn library(&self) -> Arc<Library> {
        Arc::clone(&crate::sync::lock(&self.library))
    }

    /// Creates or replaces the API broadcast `id` with `definition`, if the stored revision is
    /// the `expected` one.
    pub async fn put(
        &self,
        id: &str,
        definition: Map<String, Value>,
        expected: Expected,
        who: &Who,
    ) -> Result<Arc<Entry>, Error> {
        // What the definition says on its own is checked before the one-at-a-time part, off the
        // async threads (a year of its schedule is looked at): puts overlap here.
        let library = self.library();
        let (parser, own_id, own) = (Arc::clone(&self.parser), id.to_string(), definition.clone());
        let (checks, now) = (Arc::clone(&library), self.clock.now());
        let broadcast = tokio::task::spawn_blocking(move || validate(&parser, &checks, &own_id, &own, now))
            .await
            .map_err(|_| Error::Store(store::Error::Stopped))??;
        let _one = self.changing.lock().await;
        let catalog = self.registry.current();
        let existing = catalog.get(id).cloned();
        if let Some(existing) = &existing
            && existing.origin == Origin::File
        {
            return Err(Error::FileOwned(id.to_string()));
        }
        let clashes = channel_clashes(&catalog, &broadcast, self.clock.now()).await;
        if !clashes.is_empty() {
            return Err(Error::Invalid(clashes));
        }
        if let Some(existing) = &existing {
            let activity = self.activity_of(id).await?;
            if let Some(what) = disturbing(&existing.broadcast, &broadcast)
                && !is_idle(&activity, &existing.machine.initial)
            {
                return Err(Error::Busy { id: id.to_string(), state: state_of(&activity, existing), what });
            }
        }
        let now = self.clock.now();
        let before = existing.as_ref().map(|entry| entry.definition());
        let lines = diff(before.as_ref(), Some(&definition));
        let record = BroadcastRecord {
            id: id.to_string(),
            origin: Origin::Api.name().into(),
            revision: 0,
            incarnation: 0,
            definition,
            updated: now,
            updated_by: who.0.clone(),
            deleting: false,
        };
        let verb = if existing.is_some() { "changed" } else { "created" };
        let change = BroadcastChange {
            id: id.to_string(),
            expected,
            change: Change::Put(record),
            at: now,
            reason: format!("broadcast {verb} by {} (api)", who.0),
            detail: json!({"who": who.0, "origin": "api", "change": verb, "diff": lines}),
        };
        let written = self.write(vec![change]).await?;
        let Some(Some(record)) = written.into_iter().next() else {
            return Err(Error::Store(store::Error::Stopped));
        };
        let entry =
            Arc::new(entry_of(record, Arc::new(broadcast), &library).map_err(|problem| Error::Invalid(vec![problem]))?);
        self.publish(&catalog, |entries| {
            entries.insert(id.to_string(), Arc::clone(&entry));
        });
        tracing::info!(broadcast = %id, revision = entry.revision, who = %who.0, change = verb, "Broadcast {verb}.");
        Ok(entry)
    }

    /// Removes the API broadcast `id` when it is idle; when it is not, refuses, or with `force`
    /// marks it for removal (`Deleted::Stopping`: the caller sends it stop-now; nothing new is
    /// scheduled for it) and it is removed once idle (`finish_removal`).
    pub async fn delete(&self, id: &str, expected: Expected, force: bool, who: &Who) -> Result<Deleted, Error> {
        let _one = self.changing.lock().await;
        let catalog = self.registry.current();
        let entry = catalog.get(id).cloned().ok_or_else(|| Error::NotFound(id.to_string()))?;
        if entry.origin == Origin::File {
            return Err(Error::FileOwned(id.to_string()));
        }
        let activity = self.activity_of(id).await?;
        let now = self.clock.now();
        if is_idle(&activity, &entry.machine.initial) {
            let change = removal(&entry, expected, now, who, "removed");
            self.write(vec![change]).await?;
            self.publish(&catalog, |entries| {
                entries.remove(id);
            });
            tracing::info!(broadcast = %id, who = %who.0, "Broadcast removed.");
            return Ok(Deleted::Removed);
        }
        let state = state_of(&activity, &entry);
        if !force {
            return Err(Error::Busy {
                id: id.to_string(),
                state,
                what: "delete it with force (it is stopped first), or stop it and delete it once idle".into(),
            });
        }
        if !entry.deleting {
            self.mark_deleting(&catalog, &entry, expected, now, who, &state).await?;
        }
        Ok(Deleted::Stopping { state })
    }

    /// The broadcasts marked for removal.
    pub fn deleting(&self) -> Vec<Arc<Entry>> {
        self.registry.current().iter().filter(|(_, entry)| entry.deleting).map(|(_, entry)| Arc::clone(entry)).collect()
    }

    /// Removes `id`, marked for removal, if it is idle now; whether it was removed.
    pub async fn finish_removal(&self, id: &str) -> Result<bool, Error> {
        let _one = self.changing.lock().await;
        let catalog = self.registry.current();
        let Some(entry) = catalog.get(id).cloned().filter(|entry| entry.deleting) else { return Ok(false) };
        let activity = self.activity_of(id).await?;
        if !is_idle(&activity, &entry.machine.initial) {
            return Ok(false);
        }
        let who = Who(entry.updated_by.clone());
        let change = removal(&entry, Expected::Revision(entry.revision), self.clock.now(), &who, "removed once idle");
        self.write(vec![change]).await?;
        self.publish(&catalog, |entries| {
            entries.remove(id);
        });
        tracing::info!(broadcast = %id, "Broadcast removed once idle.");
        Ok(true)
    }

    /// Re-reads the config file's broadcasts and the machines: applied like `apply` would, or,
    /// when anything is invalid, refused whole with every problem (the running set unchanged,
    /// the refusal audited).
    pub async fn reload(&self, file: &FileBroadcasts<'_>, library: Arc<Library>) -> Result<Reloaded, Error> {
        let _one = self.changing.lock().await;
        let catalog = self.registry.current();
        let stored = self.read(|store| store.broadcasts()).await?;
        let activity = self.activity().await?;
        let plan = reconcile(file, &stored, &activity, &library, &self.parser, self.clock.now());
        let mut problems: Vec<ProblemAt> =
            library.problems.iter().map(|problem| ProblemAt::from_line(&problem.to_string())).collect();
        problems.extend(plan.refused.iter().cloned());
        for (id, broadcast) in file.broadcasts {
            if library.get(&broadcast.machine).is_none() {
                problems.push(missing_machine(id, &broadcast.machine, &library));
            }
        }
        // API broadcasts must still run on the new machines.
        for record in stored.iter().filter(|record| record.origin == Origin::Api.name()) {
            if file.broadcasts.contains_key(&record.id) {
                continue;
            }
            match self.parser.parse(&record.id, &record.definition) {
                Ok(broadcast) if library.get(&broadcast.machine).is_none() => {
                    problems.push(missing_machine(&record.id, &broadcast.machine, &library))
                }
                _ => {}
            }
        }
        // A running broadcast must find its state in its (new) machine.
        let file_set: BTreeMap<String, Arc<Broadcast>> =
            file.broadcasts.iter().map(|(id, broadcast)| (id.clone(), Arc::new(broadcast.clone()))).collect();
        for (id, activity) in &activity {
            let machine = file_set
                .get(id)
                .map(|broadcast| broadcast.machine.clone())
                .or_else(|| catalog.get(id).map(|entry| entry.broadcast.machine.clone()));
            if let (Some(machine), Some(state)) = (machine, &activity.state)
                && let Some(definition) = library.get(&machine)
                && !definition.states.contains_key(state)
            {
                problems.push(ProblemAt {
                    key: format!("broadcasts.{id}.machine"),
                    reason: format!("machine {machine:?} has no state {state:?}, which this broadcast is in"),
                });
            }
        }
        let mut candidate: BTreeMap<String, Arc<Broadcast>> = catalog
            .iter()
            .filter(|(_, entry)| entry.origin == Origin::Api)
            .map(|(id, entry)| (id.clone(), Arc::clone(&entry.broadcast)))
            .collect();
        candidate.extend(file_set);
        // A year of every schedule: off the async threads.
        let now = self.clock.now();
        let year = tokio::task::spawn_blocking(move || {
            let scheduled: Vec<_> = candidate
                .values()
                .filter_map(|broadcast| {
                    let spec = broadcast.schedule.as_ref()?;
                    Some(crate::schedule::plan::Scheduled { id: &broadcast.id, channel: &broadcast.channel, spec })
                })
                .collect();
            crate::schedule::plan::problems(&scheduled, now)
        });
        let year = year.await.map_err(|_| Error::Store(store::Error::Stopped))?;
        problems.extend(year.iter().map(|line| ProblemAt::from_line(line)));
        if !problems.is_empty() {
            self.audit_refused_reload(&problems).await;
            return Err(Error::Invalid(problems));
        }
        let report = plan.report.clone();
        let records = self.write_over(stored, plan.changes).await?;
        *crate::sync::lock(&self.library) = Arc::clone(&library);
        let next = self.build(records, file, &library, false);
        self.registry.replace(next);
        tracing::info!(
            created = report.created.len(),
            changed = report.changed.len(),
            removed = report.removed.len(),
            retiring = report.retiring.len(),
            unchanged = report.unchanged,
            "Config reloaded."
        );
        Ok(report)
    }

    /// Audits a reload refused with `problems` (nothing changed): by `reload` itself, or by its
    /// caller when the config file could not even be read.
    pub async fn audit_refused_reload(&self, problems: &[ProblemAt]) {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let note = BroadcastChange {
            id: String::new(),
            expected: Expected::Any,
            change: Change::Note,
            at: self.clock.now(),
            reason: format!(
                "reload refused: {} problem{}; nothing changed",
                lines.len(),
                if lines.len() == 1 { "" } else { "s" }
            ),
            detail: json!({"who": Who::config_file().0, "problems": lines}),
        };
        if let Err(error) = self.write(vec![note]).await {
            tracing::warn!(%error, "Cannot audit the refused reload.");
        }
    }

    /// Builds the running set from the stored records: the file's broadcasts as the file parsed
    /// them, the API's parsed again; one that does not validate is left out (logged).
    fn build(
        &self,
        records: Vec<BroadcastRecord>,
        file: &FileBroadcasts<'_>,
        library: &Library,
        starting: bool,
    ) -> Catalog {
        let mut entries = BTreeMap::new();
        for record in records {
            // The file's parsed broadcast, unless the stored definition differs (a change refused
            // because the broadcast is not idle: the stored one runs until it is).
            // (Settings built in code, as the demo's, may have no definition as written: the
            // parsed broadcast is then the file's whatever is stored.)
            let from_file = file.broadcasts.get(&record.id).filter(|_| {
                record.origin == Origin::File.name()
                    && file.sources.get(&record.id).is_none_or(|source| source == &record.definition)
            });
            let parsed = match from_file {
                Some(broadcast) => Ok(broadcast.clone()),
                None => self.parser.parse(&record.id, &record.definition),
            };
            let id = record.id.clone();
            let entry = parsed
                .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
                .and_then(|broadcast| {
                    entry_of(record, Arc::new(broadcast), library).map_err(|problem| problem.to_string())
                });
            match entry {
                Ok(entry) => {
                    entries.insert(id, Arc::new(entry));
                }
                Err(problems) => {
                    tracing::error!(broadcast = %id, %problems, starting, "Stored broadcast definition does not validate; it is kept in the store but does not run.");
                }
            }
        }
        Catalog::new(entries)
    }

    async fn mark_deleting(
        &self,
        catalog: &Catalog,
        entry: &Entry,
        expected: Expected,
        now: DateTime<Utc>,
        who: &Who,
        state: &str,
    ) -> Result<(), Error> {
        let record = BroadcastRecord {
            id: entry.broadcast.id.clone(),
            origin: entry.origin.name().into(),
            revision: 0,
            incarnation: 0,
            definition: entry.definition(),
            updated: now,
            updated_by: who.0.clone(),
            deleting: true,
        };
        let change = BroadcastChange {
            id: entry.broadcast.id.clone(),
            expected,
            change: Change::Put(record),
            at: now,
            reason: format!("forced delete by {}: stopping (it is {state}), removed once idle", who.0),
            detail: json!({"who": who.0, "origin": entry.origin.name(), "change": "deleting", "state": state}),
        };
        let written = self.write(vec![change]).await?;
        if let Some(Some(record)) = written.into_iter().next() {
            let library = self.library();
            let marked = entry_of(record, Arc::clone(&entry.broadcast), &library)
                .map_err(|problem| Error::Invalid(vec![problem]))?;
            let id = entry.broadcast.id.clone();
            self.publish(catalog, |entries| {
                entries.insert(id, Arc::new(marked));
            });
        }
        tracing::info!(broadcast = %entry.broadcast.id, %state, who = %who.0, "Broadcast marked for removal; stopping it first.");
        Ok(())
    }

    /// Publishes `catalog` changed by `change`.
    fn publish(&self, catalog: &Catalog, change: impl FnOnce(&mut BTreeMap<String, Arc<Entry>>)) {
        let mut entries = catalog.entries.clone();
        change(&mut entries);
        self.registry.replace(Catalog::new(entries));
    }

    async fn write(&self, changes: Vec<BroadcastChange>) -> Result<Vec<Option<BroadcastRecord>>, Error> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |store| store.change_broadcasts(changes)).await
    }

    /// Writes `changes` over `stored` (the records read under the `changing` lock, which every
    /// writer of definitions holds): the records as the store holds them now, without reading
    /// back and parsing every definition (100,000 of them at a first start).
    async fn write_over(
        &self,
        stored: Vec<BroadcastRecord>,
        changes: Vec<BroadcastChange>,
    ) -> Result<Vec<BroadcastRecord>, Error> {
        let removed: Vec<String> = changes
            .iter()
            .filter(|change| matches!(change.change, Change::Remove))
            .map(|change| change.id.clone())
            .collect();
        let written = self.write(changes).await?;
        let mut records: BTreeMap<String, BroadcastRecord> =
            stored.into_iter().map(|record| (record.id.clone(), record)).collect();
        for id in removed {
            records.remove(&id);
        }
        for record in written.into_iter().flatten() {
            records.insert(record.id.clone(), record);
        }
        Ok(records.into_values().collect())
    }

    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Store) -> Result<T, store::Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = Arc::clone(&self.store);
        let span = tracing::info_span!("store.broadcasts");
        Ok(tokio::task::spawn_blocking(move || span.in_scope(|| work(store.as_ref())))
            .await
            .unwrap_or(Err(store::Error::Stopped))?)
    }

    /// Every stored instance's state and whether it has pending actions.
    async fn activity(&self) -> Result<BTreeMap<String, Activity>, Error> {
        let (instances, pending) = self.read(|store| Ok((store.instance_states()?, store.pending_actions()?))).await?;
        let mut activity: BTreeMap<String, Activity> = instances
            .into_iter()
            .map(|(broadcast, state)| (broadcast, Activity { state: Some(state), pending: false }))
            .collect();
        for row in pending {
            activity.entry(row.broadcast).or_insert(Activity { state: None, pending: false }).pending = true;
        }
        Ok(activity)
    }

    async fn activity_of(&self, id: &str) -> Result<Activity, Error> {
        let wanted = id.to_string();
        let (instance, pending) = self
            .read(move |store| {
                let instance = store.load_instance(&wanted)?;
                let pending = store.pending_actions()?.iter().any(|row| row.broadcast == wanted);
                Ok((instance, pending))
            })
            .await?;
        Ok(Activity { state: instance.map(|instance| instance.state), pending })
    }
}

/// The config file's broadcasts: parsed, and as written.
#[derive(Debug, Clone, Copy)]
pub struct FileBroadcasts<'a> {
    pub broadcasts: &'a BTreeMap<String, Broadcast>,
    pub sources: &'a BTreeMap<String, Map<String, Value>>,
}

/// What reconciling the file with the store changes.
struct Reconciled {
    changes: Vec<BroadcastChange>,
    report: Reloaded,
    /// Changes that would disturb a broadcast that is not idle.
    refused: Vec<ProblemAt>,
}

/// The changes that make the stored file broadcasts match the file: created, changed (refused
/// when that would disturb a broadcast that is not idle), removed (marked for removal when not
/// idle). A file broadcast whose id an API broadcast had takes it over.
fn reconcile(
    file: &FileBroadcasts<'_>,
    stored: &[BroadcastRecord],
    activity: &BTreeMap<String, Activity>,
    library: &Library,
    parser: &Parser,
    now: DateTime<Utc>,
) -> Reconciled {
    let who = Who::config_file();
    let stored_by_id: BTreeMap<&str, &BroadcastRecord> =
        stored.iter().map(|record| (record.id.as_str(), record)).collect();
    let mut changes = Vec::new();
    let mut report = Reloaded::default();
    let mut refused = Vec::new();
    let initial_of = |machine: &str| library.get(machine).map(|definition| definition.initial.clone());
    let empty = Map::new();
    for (id, broadcast) in file.broadcasts {
        // Borrowed: copied only into a change (a restart with nothing changed copies nothing).
        let definition = file.sources.get(id).unwrap_or(&empty);
        let record = |deleting| BroadcastRecord {
            id: id.clone(),
            origin: Origin::File.name().into(),
            revision: 0,
            incarnation: 0,
            definition: definition.clone(),
            updated: now,
            updated_by: who.0.clone(),
            deleting,
        };
        match stored_by_id.get(id.as_str()) {
            None => {
                report.created.push(id.clone());
                changes.push(BroadcastChange {
                    id: id.clone(),
                    expected: Expected::Absent,
                    change: Change::Put(record(false)),
                    at: now,
                    reason: "broadcast created by the config file".into(),
                    detail: json!({"who": who.0, "origin": "file", "change": "created", "diff": diff(None, Some(definition))}),
                });
            }
            Some(previous)
                if previous.origin == Origin::File.name()
                    && previous.definition == *definition
                    && !previous.deleting =>
            {
                report.unchanged += 1;
            }
            Some(previous) => {
                let idle = activity.get(id).is_none_or(|activity| {
                    !activity.pending
                        && activity
                            .state
                            .as_deref()
                            .is_none_or(|state| Some(state.to_string()) == initial_of(&broadcast.machine))
                });
                if !idle && previous.origin == Origin::File.name() {
                    // Only what would disturb it is refused; the stored definition is compared
                    // through what it says (channel, endpoint, protection).
                    if let Some(what) = disturbing_definitions(&previous.definition, definition) {
                        refused.push(ProblemAt {
                            key: format!("broadcasts.{id}"),
                            reason: format!("not idle: {what}; stop it first, or change it back"),
                        });
                        continue;
                    }
                }
                let taken_over = previous.origin != Origin::File.name();
                report.changed.push(id.clone());
                changes.push(BroadcastChange {
                    id: id.clone(),
                    expected: Expected::Revision(previous.revision),
                    change: Change::Put(record(false)),
                    at: now,
                    reason: if taken_over {
                        "broadcast taken over by the config file (its API definition is replaced)".into()
                    } else {
                        "broadcast changed by the config file".into()
                    },
                    detail: json!({"who": who.0, "origin": "file", "change": "changed", "diff": diff(Some(&previous.definition), Some(definition))}),
                });
            }
        }
    }
    for previous in stored.iter().filter(|record| record.origin == Origin::File.name()) {
        if file.broadcasts.contains_key(&previous.id) || previous.deleting {
            continue;
        }
        // Idle in its machine's initial state (a definition that no longer parses counts as busy).
        let machine = parser.parse(&previous.id, &previous.definition).ok().map(|broadcast| broadcast.machine);
        let busy = activity.get(&previous.id).is_some_and(|activity| {
            activity.pending
                || activity
                    .state
                    .as_ref()
                    .is_some_and(|state| machine.as_deref().and_then(initial_of).as_deref() != Some(state.as_str()))
        });
        // A broadcast that runs is not cut off: what it started ends as planned, nothing new is
        // scheduled, and it is removed once idle (`finish_removal`).
        let change = if busy {
            report.retiring.push(previous.id.clone());
            BroadcastChange {
                id: previous.id.clone(),
                expected: Expected::Revision(previous.revision),
                change: Change::Put(BroadcastRecord {
                    deleting: true,
                    updated: now,
                    updated_by: who.0.clone(),
                    ..previous.clone()
                }),
                at: now,
                reason: "removed from the config file: what it started ends as planned, then it is removed".into(),
                detail: json!({"who": who.0, "origin": "file", "change": "deleting"}),
            }
        } else {
            report.removed.push(previous.id.clone());
            BroadcastChange {
                id: previous.id.clone(),
                expected: Expected::Revision(previous.revision),
                change: Change::Remove,
                at: now,
                reason: "broadcast removed from the config file".into(),
                detail: json!({"who": who.0, "origin": "file", "change": "removed", "diff": diff(Some(&previous.definition), None)}),
            }
        };
        changes.push(change);
    }
    Reconciled { changes, report, refused }
}

fn removal(entry: &Entry, expected: Expected, now: DateTime<Utc>, who: &Who, verb: &str) -> BroadcastChange {
    BroadcastChange {
        id: entry.broadcast.id.clone(),
        expected,
        change: Change::Remove,
        at: now,
        reason: format!("broadcast {verb} by {} ({})", who.0, entry.origin.name()),
        detail: json!({"who": who.0, "origin": entry.origin.name(), "change": "removed", "diff": diff(Some(&entry.definition()), None)}),
    }
}

fn entry_of(record: BroadcastRecord, broadcast: Arc<Broadcast>, library: &Library) -> Result<Entry, ProblemAt> {
    let machine = library
        .get(&broadcast.machine)
        .cloned()
        .ok_or_else(|| missing_machine(&record.id, &broadcast.machine, library))?;
    Ok(Entry {
        broadcast,
        machine,
        origin: Origin::parse(&record.origin),
        revision: record.revision,
        incarnation: record.incarnation,
        written: super::Written::of(&record.definition),
        updated: record.updated,
        updated_by: record.updated_by,
        deleting: record.deleting,
    })
}

/// Whether a broadcast is idle: never decided, or in its machine's initial state, with no action
/// pending.
fn is_idle(activity: &Activity, initial: &str) -> bool {
    !activity.pending && activity.state.as_deref().is_none_or(|state| state == initial)
}

fn state_of(activity: &Activity, entry: &Entry) -> String {
    match (&activity.state, activity.pending) {
        (Some(state), false) => state.clone(),
        (Some(state), true) => format!("{state} (actions pending)"),
        (None, _) => format!("{} (actions pending)", entry.machine.initial),
    }
}

/// What in a change would disturb a broadcast that runs: its channel, endpoint or protection.
fn disturbing(before: &Broadcast, after: &Broadcast) -> Option<String> {
    let mut changed = Vec::new();
    if before.channel != after.channel {
        changed.push("channel");
    }
    if before.endpoint != after.endpoint {
        changed.push("endpoint");
    }
    if before.protection != after.protection {
        changed.push("protection");
    }
    (!changed.is_empty()).then(|| format!("its {} cannot change until it is idle", changed.join(", ")))
}

/// `disturbing` on definitions as written.
fn disturbing_definitions(before: &Map<String, Value>, after: &Map<String, Value>) -> Option<String> {
    let changed: Vec<&str> = ["channel", "endpoint", "protection", "content_key_policy"]
        .into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .collect();
    (!changed.is_empty()).then(|| format!("its {} cannot change until it is idle", changed.join(", ")))
}

/// A definition's own problems: its id, what it says, its machine, its schedule over the coming
/// year (a date that never comes, leads longer than the gaps); the broadcast when there are none.
fn validate(
    parser: &Parser,
    library: &Library,
    id: &str,
    definition: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Broadcast, Error> {
    if !crate::broadcast::valid_id(id) {
        return Err(Error::Invalid(vec![ProblemAt {
            key: format!("broadcasts.{id}"),
            reason: "a broadcast id is 1 to 40 lowercase letters, digits and inner hyphens".into(),
        }]));
    }
    let broadcast = parser.parse(id, definition).map_err(Error::Invalid)?;
    let mut problems = Vec::new();
    if library.get(&broadcast.machine).is_none() {
        problems.push(missing_machine(id, &broadcast.machine, library));
    }
    if let Some(spec) = broadcast.schedule.as_ref() {
        let own = [crate::schedule::plan::Scheduled { id, channel: &broadcast.channel, spec }];
        problems.extend(crate::schedule::plan::problems(&own, now).iter().map(|line| ProblemAt::from_line(line)));
    }
    if problems.is_empty() { Ok(broadcast) } else { Err(Error::Invalid(problems)) }
}

/// Times `broadcast` would be on air together with another broadcast on its channel (its own
/// problems are known to be none).
async fn channel_clashes(catalog: &Catalog, broadcast: &Broadcast, now: DateTime<Utc>) -> Vec<ProblemAt> {
    let Some(spec) = broadcast.schedule.clone() else { return Vec::new() };
    let others: Vec<(String, String, Arc<crate::schedule::Spec>)> = catalog
        .iter()
        .filter(|(id, entry)| {
            *id != &broadcast.id && entry.broadcast.channel.eq_ignore_ascii_case(&broadcast.channel) && !entry.deleting
        })
        .filter_map(|(id, entry)| {
            Some((id.clone(), entry.broadcast.channel.clone(), Arc::clone(entry.broadcast.schedule.as_ref()?)))
        })
        .collect();
    if others.is_empty() {
        return Vec::new();
    }
    let (id, channel) = (broadcast.id.clone(), broadcast.channel.clone());
    let check = move || {
        let mut scheduled = vec![crate::schedule::plan::Scheduled { id: &id, channel: &channel, spec: &spec }];
        scheduled.extend(others.iter().map(|(id, channel, spec)| crate::schedule::plan::Scheduled {
            id,
            channel,
            spec,
        }));
        crate::schedule::plan::problems(&scheduled, now).iter().map(|line| ProblemAt::from_line(line)).collect()
    };
    tokio::task::spawn_blocking(check).await.unwrap_or_default()
}

/// A readable diff of two definitions, one line per key (dotted): `+ key = value` added,
/// `- key = value` removed, `~ key: old -> new` changed.
pub fn diff(before: Option<&Map<String, Value>>, after: Option<&Map<String, Value>>) -> Vec<String> {
    let flat = |map: Option<&Map<String, Value>>| {
        let mut flat = BTreeMap::new();
        if let Some(map) = map {
            flatten("", &Value::Object(map.clone()), &mut flat);
        }
        flat
    };
    let (before, after) = (flat(before), flat(after));
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|key| match (before.get(key), after.get(key)) {
            (None, Some(new)) => Some(format!("+ {key} = {new}")),
            (Some(old), None) => Some(format!("- {key} = {old}")),
            (Some(old), Some(new)) if old != new => Some(format!("~ {key}: {old} -> {new}")),
            _ => None,
        })
        .collect()
}

fn flatten(prefix: &str, value: &Value, into: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&path, value, into);
            }
        }
        _ => {
            into.insert(prefix.to_string(), value.to_string());
        }
    }
}
