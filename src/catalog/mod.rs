//! The running set of broadcasts: those of the config file and those created through the API,
//! changed while onair runs.
//!
//! A `Catalog` is an immutable snapshot: each broadcast's definition as written, its parsed form,
//! its machine, where it came from and its revision. The `Registry` holds the current snapshot
//! and tells subscribers when it is replaced; the engine, the ingress and the API read it per
//! event or request, and the scheduler re-arms what changed. `Manager` (`manage`) is the only
//! writer: it validates a change as `onair check` would, records it in the store with its audit
//! row, then publishes the new snapshot.
//!
//! ```text
//!   API (PUT, DELETE) ─┐                                   ┌─> engine (routing, decisions)
//!   reload (SIGHUP) ───┴─> Manager: validate ─> store ─> Registry ─> ingress (subjects)
//!   start (config file) ─┘                                 └─> scheduler (tracks re-armed)
//! ```

mod manage;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::broadcast::Broadcast;
use crate::machine::{Definition, Library};
use crate::schedule::plan::Scheduled;

pub use manage::{Deleted, Error, FileBroadcasts, Manager, Parser, ProblemAt, Reloaded, Who, diff};

/// Where a broadcast is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[broadcasts.<id>]` in the config file: changed by editing the file and reloading.
    File,
    /// Created through the API (`PUT /api/v1/broadcasts/{id}`, `onair apply`).
    Api,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Api => "api",
        }
    }

    fn parse(name: &str) -> Self {
        if name == "file" { Origin::File } else { Origin::Api }
    }
}

/// One broadcast of the running set.
#[derive(Debug)]
pub struct Entry {
    pub broadcast: Arc<Broadcast>,
    /// The machine that runs it.
    pub machine: Arc<Definition>,
    pub origin: Origin,
    /// Its revision (the `ETag` of the API); 0 for a broadcast not stored (tests, benchmarks).
    pub revision: i64,
    /// Which life of its id this is (see `store::BroadcastRecord::incarnation`).
    pub incarnation: i64,
    /// Its definition as written (a `[broadcasts.<id>]` table), kept as compact JSON text:
    /// `definition()` gives the table.
    pub written: Written,
    pub updated: DateTime<Utc>,
    pub updated_by: String,
    /// Being taken to idle before it is removed (a forced delete).
    pub deleting: bool,
}

impl Entry {
    /// Its definition as written (a `[broadcasts.<id>]` table as JSON).
    pub fn definition(&self) -> Map<String, Value> {
        self.written.table()
    }
}

/// A definition as written, held as its JSON text: a table in memory costs a map node of a few
/// hundred bytes per level even for one key, and it is read only when shown or compared (the API,
/// changes), never per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written(Box<str>);

impl Written {
    /// The text of `table`.
    pub fn of(table: &Map<String, Value>) -> Self {
        // A map of JSON values always serializes (its keys are strings).
        Self(serde_json::to_string(table).unwrap_or_default().into_boxed_str())
    }

    /// The table again.
    pub fn table(&self) -> Map<String, Value> {
        if self.0.is_empty() {
            return Map::new();
        }
        // Written from a `Map` by `of`, so it always parses back to one.
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

/// A snapshot of the running set.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: BTreeMap<String, Arc<Entry>>,
    /// Broadcast ids by channel name, lowercase (a channel's events reach every broadcast on it).
    channels: HashMap<String, Vec<String>>,
}

impl Catalog {
    fn new(entries: BTreeMap<String, Arc<Entry>>) -> Self {
        let mut channels: HashMap<String, Vec<String>> = HashMap::new();
        for (id, entry) in &entries {
            channels.entry(entry.broadcast.channel.to_ascii_lowercase()).or_default().push(id.clone());
        }
        Self { entries, channels }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        self.entries.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every broadcast, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Entry>)> {
        self.entries.iter()
    }

    /// Every broadcast from `after` (excluded), in id order.
    pub fn after<'a>(&'a self, after: Option<&str>) -> impl Iterator<Item = (&'a String, &'a Arc<Entry>)> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(after) => Bound::Excluded(after.to_string()),
            None => Bound::Unbounded,
        };
        self.entries.range((start, Bound::Unbounded))
    }

    /// The broadcasts an event is about: its subject is a broadcast id, or `liveEvent/<channel>`
    /// (every broadcast on that channel).
    pub fn targets(&self, subject: &str) -> Vec<String> {
        if self.entries.contains_key(subject) {
            return vec![subject.to_string()];
        }
        subject
            .split_once('/')
            .filter(|(kind, _)| kind.eq_ignore_ascii_case("liveEvent") || kind.eq_ignore_ascii_case("liveEvents"))
            .and_then(|(_, channel)| self.channels.get(&channel.to_ascii_lowercase()))
            .cloned()
            .unwrap_or_default()
    }

    /// The scheduled broadcasts, in id order, as the plan and the schedule checks see them.
    pub fn scheduled(&self) -> Vec<Scheduled<'_>> {
        self.entries
            .values()
            .filter_map(|entry| {
                let spec = entry.broadcast.schedule.as_ref()?;
                Some(Scheduled { id: &entry.broadcast.id, channel: &entry.broadcast.channel, spec })
            })
            .collect()
    }

    /// The broadcasts being removed (their schedules armed only for what they already started).
    pub fn deleting(&self) -> Vec<String> {
        self.entries.iter().filter(|(_, entry)| entry.deleting).map(|(id, _)| id.clone()).collect()
    }

    /// Each scheduled broadcast's schedule, in id order (those being removed included: the
    /// scheduler disarms them, see `deleting`).
    pub fn schedules(&self) -> Vec<(String, Arc<crate::schedule::Spec>)> {
        self.entries
            .iter()
            .filter_map(|(id, entry)| Some((id.clone(), Arc::clone(entry.broadcast.schedule.as_ref()?))))
            .collect()
    }

    /// What the scheduler must change to go from `self` to `next`: schedules armed, changed,
    /// disarmed (a broadcast whose definition did not change is not looked at further).
    pub fn schedule_changes(&self, next: &Catalog) -> Vec<crate::schedule::Control> {
        use crate::schedule::Control;
        let mut changes = Vec::new();
        // A broadcast being removed is scheduled no more (what it has started ends as planned).
        fn armed(entry: &Entry) -> Option<&Arc<crate::schedule::Spec>> {
            if entry.deleting { None } else { entry.broadcast.schedule.as_ref() }
        }
        for (id, entry) in &next.entries {
            let before = self.entries.get(id);
            if before.is_some_and(|old| Arc::ptr_eq(&old.broadcast, &entry.broadcast) && old.deleting == entry.deleting)
            {
                continue;
            }
            match (before.and_then(|old| armed(old)), armed(entry)) {
                (_, Some(spec)) => changes.push(Control::Arm { broadcast: id.clone(), spec: Arc::clone(spec) }),
                (Some(_), None) => changes.push(Control::Disarm { broadcast: id.clone() }),
                (None, None) => {}
            }
        }
        for (id, entry) in &self.entries {
            if !next.entries.contains_key(id) && armed(entry).is_some() {
                changes.push(Control::Disarm { broadcast: id.clone() });
            }
        }
        changes
    }

    /// The state of a broadcast never decided yet: its machine's initial state.
    pub fn initial_state(&self, id: &str) -> Option<&str> {
        self.entries.get(id).map(|entry| entry.machine.initial.as_str())
    }
}

/// The current catalog, and who wants to hear when it changes. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Registry {
    current: Arc<watch::Sender<Arc<Catalog>>>,
}

impl Registry {
    fn new(catalog: Catalog) -> Self {
        let (sender, _) = watch::channel(Arc::new(catalog));
        Self { current: Arc::new(sender) }
    }

    /// A registry of `broadcasts` as they are, not stored and never changed (tests, benchmarks,
    /// tools); a broadcast whose machine `library` lacks is an error.
    pub fn fixed(broadcasts: &BTreeMap<String, Broadcast>, library: &Library) -> Result<Self, Error> {
        let mut entries = BTreeMap::new();
        for (id, broadcast) in broadcasts {
            let machine = library
                .get(&broadcast.machine)
                .ok_or_else(|| Error::missing_machine(id, &broadcast.machine, library))?;
            entries.insert(
                id.clone(),
                Arc::new(Entry {
                    broadcast: Arc::new(broadcast.clone()),
                    machine: Arc::clone(machine),
                    origin: Origin::File,
                    revision: 0,
                    incarnation: 0,
                    written: Written::default(),
                    updated: DateTime::<Utc>::UNIX_EPOCH,
                    updated_by: String::new(),
                    deleting: false,
                }),
            );
        }
        Ok(Self::new(Catalog::new(entries)))
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.borrow())
    }

    /// Hears each new snapshot (the latest, when several came in between).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.current.subscribe()
    }

    fn replace(&self, catalog: Catalog) {
        self.current.send_replace(Arc::new(catalog));
    }
}

#[cfg(test)]
mod tests;
