//! Durable state: instances, the outbox, timers, the audit trail and processed event ids.
//!
//! The engine sees only the `Store` trait: a handful of operations, each atomic, narrow enough
//! that a PostgreSQL implementation can be added without touching the engine. `sqlite` is the
//! default implementation (WAL, `synchronous=FULL`, migrations versioned in the code).
//!
//! The central operation is `commit`: one decision's consequences in one transaction (the new
//! state and variables, the outbox rows of its actions, timers set and cancelled, the audit row,
//! the event id as processed, and the completion of the action it reports on). Nothing is
//! acknowledged to an event's source before its commit returns.

mod commits;
mod sqlite;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use commits::{Commits, Failing, fault_label};
pub use sqlite::{ReadOnly, SqliteStore, check, probe_writable, schema_version};

/// A write a store has taken, and how to learn its outcome.
pub struct Queued<T>(QueuedWrite<T>);

enum QueuedWrite<T> {
    /// Already written (or refused).
    Done(Result<T, Error>),
    /// Queued, in order with the writes asked for after it: its answer comes here.
    InOrder(std::sync::mpsc::Receiver<Result<T, Error>>),
    /// Not queued yet (the store's queue was full): `wait` writes it, in no particular order.
    Later(Box<dyn FnOnce() -> Result<T, Error> + Send>),
}

impl<T> Queued<T> {
    /// A write done (or refused) before the call returned.
    pub fn done(result: Result<T, Error>) -> Self {
        Self(QueuedWrite::Done(result))
    }

    /// A write queued in order, whose answer comes on `answer`.
    pub(crate) fn in_order(answer: std::sync::mpsc::Receiver<Result<T, Error>>) -> Self {
        Self(QueuedWrite::InOrder(answer))
    }

    /// A write to be made by `wait` (the store could not queue it yet), in no order with the
    /// writes asked for meanwhile.
    pub fn later(write: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Self {
        Self(QueuedWrite::Later(Box::new(write)))
    }

    /// Whether the write is done or lands before every write asked for after it.
    pub fn is_ordered(&self) -> bool {
        !matches!(self.0, QueuedWrite::Later(_))
    }

    /// Its outcome; blocks until the store has written it.
    pub fn wait(self) -> Result<T, Error> {
        match self.0 {
            QueuedWrite::Done(result) => result,
            QueuedWrite::InOrder(answer) => answer.recv().map_err(|_| Error::Stopped)?,
            QueuedWrite::Later(write) => write(),
        }
    }
}

/// The store's operations. Implementations are blocking; the engine calls them from
/// `spawn_blocking`. Every method is atomic.
pub trait Store: Send + Sync + 'static {
    /// Every broadcast instance, with its armed timers.
    fn load_instances(&self) -> Result<Vec<InstanceRecord>, Error>;
    /// One broadcast's instance, if it has one.
    fn load_instance(&self, broadcast: &str) -> Result<Option<InstanceRecord>, Error>;
    /// Every armed timer, by broadcast: what start-up re-arms (instances are read one at a time,
    /// on their broadcast's first event). By default from `load_instances`.
    fn load_timers(&self) -> Result<Vec<TimerRecord>, Error> {
        let mut timers = Vec::new();
        for record in self.load_instances()? {
            for (name, due) in record.timers {
                timers.push(TimerRecord { broadcast: record.broadcast.clone(), name, due });
            }
        }
        Ok(timers)
    }
    /// Every stored instance's broadcast and state (without its variables). By default from
    /// `load_instances`.
    fn instance_states(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(self.load_instances()?.into_iter().map(|record| (record.broadcast, record.state)).collect())
    }
    /// Which of these (event id, broadcast) pairs were already processed.
    fn processed(&self, events: &[(String, String)]) -> Result<Vec<bool>, Error>;
    /// What a lane reads before deciding a batch, in one call: `processed` for the batch's
    /// events, and `load_instance` for each of the `missing` broadcasts (those it has not read
    /// yet), each with its own result. By default from `processed` and `load_instance`.
    fn prepare(&self, events: &[(String, String)], missing: &[String]) -> Prepared {
        Prepared {
            processed: self.processed(events),
            instances: missing.iter().map(|broadcast| (broadcast.clone(), self.load_instance(broadcast))).collect(),
        }
    }
    /// Records a batch of decisions, in order, all or nothing: the decisions of one lane, each
    /// possibly built on the one before. A `Commit` marked `duplicate` records only an audit row.
    /// An event found already processed fails the whole batch (the lane then starts over from
    /// the store), since later decisions may have been built on it. A broadcast's instance is
    /// written by its last decision of the batch (the earlier ones would be replaced in the same
    /// transaction), so only that one need carry the variables and timers.
    fn commit(&self, batch: Vec<Commit>) -> Result<Vec<Committed>, Error>;
    /// Outbox rows still to run, oldest first.
    fn pending_actions(&self) -> Result<Vec<OutboxRow>, Error>;
    /// Notes that an action attempt starts (attempt count and an audit row). The write is queued
    /// before this returns, ahead of every write asked for after it, unless `Queued::is_ordered`
    /// says otherwise: the attempt then lands before the action's result without the action
    /// waiting for it. `Queued::wait` blocks until it is written.
    fn action_started(&self, outbox_id: i64, attempt: u32, at: DateTime<Utc>) -> Queued<()>;
    /// The most recent audit rows of a broadcast, oldest first.
    fn audit(&self, broadcast: &str, limit: usize) -> Result<Vec<AuditRow>, Error>;
    /// The audit rows `query` selects, newest first (by id), at most `query.limit`.
    fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRow>, Error>;
    /// Forgets processed event ids recorded before `before`; returns how many.
    fn purge_processed(&self, before: DateTime<Utc>) -> Result<usize, Error>;
    /// `PRAGMA integrity_check` or its equivalent: `"ok"` when sound.
    fn integrity_check(&self) -> Result<String, Error>;
    /// Each schedule's progress: every step at or before its cursor is handled.
    fn schedule_cursors(&self) -> Result<BTreeMap<String, Cursor>, Error>;
    /// Records schedule progress, in order, all or nothing: cursors and their audit rows.
    fn schedule_progress(&self, records: Vec<ScheduleRecord>) -> Result<(), Error>;
    /// Every stored broadcast definition (from the config file and from the API), by id.
    fn broadcasts(&self) -> Result<Vec<BroadcastRecord>, Error>;
    /// Applies definition changes, in order, all or nothing, each with its `config` audit row;
    /// a change whose expected revision is not the stored one fails the whole batch with
    /// `Error::Conflict`. Returns the records as written (`None` for a removal).
    fn change_broadcasts(&self, changes: Vec<BroadcastChange>) -> Result<Vec<Option<BroadcastRecord>>, Error>;
    /// Every schedule hold and floor (see `ScheduleHolds`).
    fn schedule_holds(&self) -> Result<ScheduleHolds, Error>;
    /// Replaces one broadcast's holds and floor, with its audit row when there is one, all or
    /// nothing.
    fn write_schedule_holds(&self, write: HoldWrite) -> Result<(), Error>;
}

/// Store failures. The messages name the file and the operation, never data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or prepared.
    #[error("cannot open the store {path}: {reason}")]
    Open { path: String, reason: String },
    /// The database was written by a newer onair.
    #[error(
        "the store {path} has schema version {found}, newer than this onair knows ({known}): it was written by a \
         newer onair; run that version, or restore a backup made by this one"
    )]
    TooNew { path: String, found: i64, known: i64 },
    /// The file is not a SQLite database, or a damaged one.
    #[error(
        "the store {path} is not a readable SQLite database ({reason}): restore it from a backup, or move it \
         aside to start with an empty store"
    )]
    Corrupt { path: String, reason: String },
    /// The database, or its directory, cannot be written (permissions, a read-only filesystem).
    #[error("cannot write the store {path} ({reason}): make {directory} writable by the user onair runs as")]
    Unwritable { path: String, directory: String, reason: String },
    /// A statement failed for a reason not classified as a `Fault`.
    #[error("store {operation} failed: {reason}")]
    Sql { operation: &'static str, reason: String },
    /// A write failed because of the store's own condition (disk full, I/O error, locked), not
    /// because of what was written: nothing was recorded, and the same write can succeed later.
    #[error("store {operation} failed ({fault}): {reason}")]
    Unavailable { operation: &'static str, fault: Fault, reason: String },
    /// An event of the batch was already processed although the batch said otherwise.
    #[error("event {event_id} was already processed for {broadcast}; the batch was not recorded")]
    UnexpectedDuplicate { event_id: String, broadcast: String },
    /// A decision carried another broadcast's instance; nothing of the batch was recorded.
    #[error("event {event_id} for {broadcast} carries the instance of {instance}; the batch was not recorded")]
    Mismatch { event_id: String, broadcast: String, instance: String },
    /// The writer thread is gone.
    #[error("the store's writer has stopped")]
    Stopped,
    /// A definition change expected another revision than the stored one; nothing was recorded.
    #[error("broadcast {broadcast} is at revision {found:?}, not {expected:?}; nothing was changed")]
    Conflict { broadcast: String, expected: Expected, found: Option<i64> },
}

impl Error {
    /// Whether the store cannot be used as configured, whatever the number of tries: an operator
    /// has to act, and `onair run` exits with the settings exit code (78, which systemd does not
    /// restart). Other failures (a lock held by another process, a full disk) may pass.
    pub fn is_unusable(&self) -> bool {
        matches!(self, Error::TooNew { .. } | Error::Corrupt { .. } | Error::Unwritable { .. })
    }

    /// The store-side condition behind this error, when it is one.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            Error::Unavailable { fault, .. } => Some(*fault),
            _ => None,
        }
    }
}

/// A condition of the store itself that makes writes fail for a while (SQLite's `SQLITE_FULL`,
/// `SQLITE_IOERR`, `SQLITE_BUSY` or `SQLITE_LOCKED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The file system holding the store is full.
    DiskFull,
    /// Reading or writing the file failed.
    Io,
    /// Another connection holds the lock for longer than the busy timeout.
    Locked,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::DiskFull => "disk full",
            Fault::Io => "I/O error",
            Fault::Locked => "locked",
        })
    }
}

/// A broadcast's definition as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastRecord {
    pub id: String,
    /// `file` (the config file's) or `api`.
    pub origin: String,
    /// Set by the store at each change, from one counter for all broadcasts, so that a revision
    /// is never reused (not even by a broadcast removed and created again).
    pub revision: i64,
    /// Which life of the id this is: the revision that created it (so that nothing of a removed
    /// broadcast is taken for a new one of the same id); set by the store.
    pub incarnation: i64,
    /// The definition, the same shape as a `[broadcasts.<id>]` table.
    pub definition: Map<String, Value>,
    pub updated: DateTime<Utc>,
    /// Who made the last change: a token's name, or `config file`.
    pub updated_by: String,
    /// Marked for removal: it is being taken to idle first (a forced delete).
    pub deleting: bool,
}

/// What a definition change expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// Whatever is there.
    Any,
    /// No definition with this id.
    Absent,
    /// This revision.
    Revision(i64),
}

/// One definition change and its audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastChange {
    /// The broadcast (empty for a `Note` about the whole set).
    pub id: String,
    pub expected: Expected,
    pub change: Change,
    pub at: DateTime<Utc>,
    /// The audit row's reason and detail (who, what changed).
    pub reason: String,
    pub detail: Value,
}

/// What a definition change does.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Creates or replaces the definition (its revision and incarnation are the store's).
    Put(BroadcastRecord),
    /// Removes the definition, with the broadcast's instance, timers and schedule cursor; its
    /// audit trail stays.
    Remove,
    /// Changes nothing: only the audit row (a refused reload).
    Note,
}

/// One broadcast's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub broadcast: String,
    pub machine: String,
    pub state: String,
    pub vars: Map<String, Value>,
    /// Armed timers: name to due instant.
    pub timers: BTreeMap<String, DateTime<Utc>>,
    /// When it entered `state`.
    pub since: DateTime<Utc>,
    /// Decisions recorded so far; the next decision's sequence number is `seq + 1`.
    pub seq: i64,
}

/// What `Store::prepare` read: the processed flags of a batch's events, and the instances of the
/// broadcasts asked for (`None` for a broadcast without one), each read on its own.
#[derive(Debug)]
pub struct Prepared {
    pub processed: Result<Vec<bool>, Error>,
    pub instances: Vec<(String, Result<Option<InstanceRecord>, Error>)>,
}

/// One armed timer of a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerRecord {
    pub broadcast: String,
    pub name: String,
    pub due: DateTime<Utc>,
}

/// One decision to record.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Only an audit row saying the event was a duplicate; nothing else changes.
    pub duplicate: bool,
    pub broadcast: String,
    pub machine: String,
    pub at: DateTime<Utc>,
    /// The event: id, type and a JSON copy for the audit trail.
    pub event_id: String,
    pub event_type: String,
    pub event: Value,
    /// What was decided.
    pub decision: DecisionRecord,
    /// The instance after the decision; `None` leaves it as it is (an ignored event on a
    /// broadcast that already has a row).
    pub instance: Option<InstanceRecord>,
    /// Actions to queue, in order.
    pub actions: Vec<NewAction>,
    /// The action this event reports on, and how it ended.
    pub completes: Option<Completion>,
}

/// The audit form of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// `transition` or `ignored`.
    pub outcome: String,
    pub from: String,
    pub to: String,
    /// The transition's number in the definition; `None` when ignored or forced.
    pub transition: Option<usize>,
    pub reason: String,
    /// Actions and timer changes, for the record.
    pub detail: Value,
}

/// An action to put in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    pub kind: String,
    pub params: Value,
}

/// How an outbox action ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub outbox_id: i64,
    pub succeeded: bool,
    /// The result, or the error.
    pub result: Value,
}

/// What `commit` did with one decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Committed {
    /// Recorded; the new outbox rows, and those skipped because an earlier action of the same
    /// decision failed.
    Applied { outbox: Vec<OutboxRow>, skipped: Vec<i64> },
    /// A duplicate: only the audit row was written.
    Duplicate,
}

/// An action in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRow {
    pub id: i64,
    pub broadcast: String,
    /// The decision that queued it.
    pub decision: i64,
    /// Its position among that decision's actions, from 0.
    pub position: i64,
    pub kind: String,
    pub params: Value,
    /// `pending`, `succeeded`, `failed` or `skipped`.
    pub status: String,
    pub attempts: i64,
    pub created: DateTime<Utc>,
}

/// How far a schedule has got: the last step handled, by its place in the schedule's order
/// (planned instant, then the occurrence's air instant, then the step's rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub air: DateTime<Utc>,
    pub rank: u8,
}

/// One step of schedule progress: the new cursor and, usually, an audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    pub broadcast: String,
    pub cursor: Cursor,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// The step's event id, when it is about one step.
    pub event_id: Option<String>,
    /// `armed`, `published`, `missed` or `skipped`; `None` writes no audit row.
    pub outcome: Option<String>,
    pub reason: String,
    pub detail: Value,
}

/// Which audit rows to read (`Store::audit_query`); every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// One broadcast's rows.
    pub broadcast: Option<String>,
    /// One kind (`decision`, `config`, ...).
    pub kind: Option<String>,
    /// Rows at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Rows before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Rows with a smaller id (the paging cursor: the last id of the previous page).
    pub before: Option<i64>,
    pub limit: usize,
}

/// An occurrence kept on its own step instants, whatever the broadcast's schedule says now: one
/// already started when its schedule changed (it ends as first planned), or one extended by an
/// operator. The scheduler arms it in place of the occurrence its schedule generates at the same
/// air instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleHold {
    pub broadcast: String,
    /// The occurrence's air instant (its id).
    pub air: DateTime<Utc>,
    /// Its steps' planned instants, by rank (`schedule::StepKind::rank`), in order.
    pub steps: Vec<HeldStep>,
}

/// One step of a held occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldStep {
    pub rank: u8,
    pub at: DateTime<Utc>,
}

impl ScheduleHold {
    /// The instant of the step of `rank`, when it has one.
    pub fn step(&self, rank: u8) -> Option<DateTime<Utc>> {
        self.steps.iter().find(|step| step.rank == rank).map(|step| step.at)
    }

    /// Its last step's instant (when the occurrence closes).
    pub fn closes(&self) -> DateTime<Utc> {
        self.steps.iter().map(|step| step.at).max().unwrap_or(self.air)
    }
}

/// The schedule holds, and each broadcast's floor: after a schedule change, the new schedule's
/// steps at or before its floor (the instant of the change) do not fire, even after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleHolds {
    pub holds: Vec<ScheduleHold>,
    pub floors: BTreeMap<String, DateTime<Utc>>,
}

/// One broadcast's holds and floor as they are now (replacing what was stored), and the audit
/// row of what changed them (an operator's `extend`), written together.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldWrite {
    pub broadcast: String,
    /// When it is written.
    pub at: DateTime<Utc>,
    pub holds: Vec<ScheduleHold>,
    pub floor: Option<DateTime<Utc>>,
    pub audit: Option<CommandAudit>,
}

/// An audit row of kind `command`: an operator command handled by onair itself.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandAudit {
    pub reason: String,
    pub detail: Value,
}

/// One line of a broadcast's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub id: i64,
    pub broadcast: String,
    pub at: DateTime<Utc>,
    /// `decision`, `duplicate`, `action`, `schedule`, `config`, `command`.
    pub kind: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub transition: Option<i64>,
    pub reason: String,
    pub detail: Value,
}
