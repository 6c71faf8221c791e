//! The SQLite store: WAL, `synchronous=FULL`, schema migrations versioned in the code.
//!
//! Writes go through one writer thread that owns the write connection. It takes every commit
//! waiting in its queue and writes them in one SQLite transaction (group commit), each decision
//! inside its own savepoint: a decision is all or nothing, one fsync covers many decisions, and a
//! decision that fails (a constraint, say) is rolled back alone. Reads use a second connection;
//! WAL lets them run while the writer writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, TrySendError, sync_channel};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use serde_json::{Map, Value};

use super::{
    AuditQuery, AuditRow, BroadcastChange, BroadcastRecord, Change, Commit, Committed, Completion, Cursor, Error,
    Expected, Fault, HeldStep, HoldWrite, InstanceRecord, OutboxRow, Prepared, Queued, ScheduleHold, ScheduleHolds,
    ScheduleRecord, Store, TimerRecord,
};

/// Schema migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: instances, timers, outbox, processed event ids, audit trail.
    "CREATE TABLE instances (
        broadcast TEXT PRIMARY KEY,
        machine TEXT NOT NULL,
        state TEXT NOT NULL,
        vars TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE timers (
        broadcast TEXT NOT NULL,
        name TEXT NOT NULL,
        due_ms INTEGER NOT NULL,
        PRIMARY KEY (broadcast, name)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        broadcast TEXT NOT NULL,
        decision INTEGER NOT NULL,
        position INTEGER NOT NULL,
        kind TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        result TEXT
    );
    CREATE INDEX outbox_pending ON outbox (status, id) WHERE status = 'pending';
    CREATE TABLE processed (
        event_id TEXT NOT NULL,
        broadcast TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (event_id, broadcast)
    ) WITHOUT ROWID;
    CREATE INDEX processed_at ON processed (at_ms);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        broadcast TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        event_id TEXT,
        event_type TEXT,
        from_state TEXT,
        to_state TEXT,
        transition INTEGER,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_broadcast ON audit (broadcast, id);",
    // 2: schedule cursors (audit rows of kind `schedule` need no new table).
    "CREATE TABLE schedule_cursors (
        broadcast TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        air_ms INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );",
    // 3: broadcast definitions, from the config file and from the API.
    "CREATE TABLE broadcasts (
        id TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        revision INTEGER NOT NULL,
        incarnation INTEGER NOT NULL,
        definition TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        updated_by TEXT NOT NULL,
        deleting INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE revisions (last INTEGER NOT NULL);
    INSERT INTO revisions (last) VALUES (0);
    CREATE INDEX audit_kind ON audit (kind, id);",
    // 4: schedule holds (occurrences kept on their own times) and floors (the instant of the last
    // schedule change, before which the new schedule fires nothing).
    "CREATE TABLE schedule_holds (
        broadcast TEXT NOT NULL,
        air_ms INTEGER NOT NULL,
        steps TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (broadcast, air_ms)
    );
    CREATE TABLE schedule_floors (
        broadcast TEXT PRIMARY KEY,
        floor_ms INTEGER NOT NULL
    );",
];

/// Commits written in one transaction at most.
const MAX_BATCH: usize = 512;

/// Write transactions between two forced WAL checkpoints. Readers that never pause would
/// otherwise keep the WAL from restarting ("checkpoint starvation") and it would grow without end.
const CHECKPOINT_EVERY: u32 = 256;

/// The SQLite implementation of `Store`.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    writer: SyncSender<Request>,
    reader: Mutex<Connection>,
}

/// How a request is answered once its transaction's fate is known (`Some(error)` when the
/// transaction itself failed to commit).
type Answer = Box<dyn FnOnce(Option<&rusqlite::Error>)>;

enum Request {
    Commit(Vec<Commit>, Sender<Result<Vec<Committed>, Error>>),
    ActionStarted { outbox_id: i64, attempt: u32, at: DateTime<Utc>, reply: Sender<Result<(), Error>> },
    Purge { before: DateTime<Utc>, reply: Sender<Result<usize, Error>> },
    Schedule(Vec<ScheduleRecord>, Sender<Result<(), Error>>),
    Broadcasts(Vec<BroadcastChange>, Sender<Result<Vec<Option<BroadcastRecord>>, Error>>),
    Holds(Box<HoldWrite>, Sender<Result<(), Error>>),
}

impl SqliteStore {
    /// Opens (creating it if needed) the store at `path` and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let fail = |reason: String| Error::Open { path: path.display().to_string(), reason };
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| Error::Unwritable {
                path: path.display().to_string(),
                directory: parent.display().to_string(),
                reason: format!("cannot create {}: {error}", parent.display()),
            })?;
        }
        let classify = |error| open_error(path, error, true);
        let mut writer = Connection::open(path).map_err(classify)?;
        configure(&writer).map_err(classify)?;
        let version = read_schema(&writer, path, true)?;
        migrate(&mut writer, path, version)?;
        let reader =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(classify)?;
        reader.busy_timeout(std::time::Duration::from_secs(5)).map_err(|error| fail(error.to_string()))?;
        let (sender, receiver) = sync_channel(4096);
        let span = tracing::info_span!(parent: None, "store_writer");
        std::thread::Builder::new()
            .name("onair-store".into())
            .spawn(move || span.in_scope(|| write_loop(writer, receiver)))
            .map_err(|error| fail(format!("cannot start the writer thread: {error}")))?;
        Ok(Self { path: path.to_path_buf(), writer: sender, reader: Mutex::new(reader) })
    }

    /// Opens an existing store for reading only (`onair status`, tests); no migration.
    pub fn open_read_only(path: &Path) -> Result<ReadOnly, Error> {
        let fail = |reason: String| Error::Open { path: path.display().to_string(), reason };
        if !path.exists() {
            return Err(fail("no such file (has `onair run` started with this state_dir?)".into()));
        }
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|error| open_error(path, error, false))?;
        connection.busy_timeout(std::time::Duration::from_secs(5)).map_err(|error| fail(error.to_string()))?;
        // Refuse a store this onair cannot read rightly: damaged, or of a newer schema.
        read_schema(&connection, path, false)?;
        Ok(ReadOnly { connection })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        crate::sync::lock(&self.reader)
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<Result<T, Error>>) -> Request) -> Result<T, Error> {
        ask(&self.writer, make)
    }
}

/// Sends a request to the writer (waiting for room in its queue) and waits for its answer.
fn ask<T>(writer: &SyncSender<Request>, make: impl FnOnce(Sender<Result<T, Error>>) -> Request) -> Result<T, Error> {
    let (reply, answer) = std::sync::mpsc::channel();
    writer.send(make(reply)).map_err(|_| Error::Stopped)?;
    answer.recv().map_err(|_| Error::Stopped)?
}

impl Store for SqliteStore {
    fn load_instances(&self) -> Result<Vec<InstanceRecord>, Error> {
        load_instances(&self.reader())
    }

    fn load_instance(&self, broadcast: &str) -> Result<Option<InstanceRecord>, Error> {
        load_instance(&self.reader(), broadcast)
    }

    fn load_timers(&self) -> Result<Vec<TimerRecord>, Error> {
        let sql = |error: rusqlite::Error| Error::Sql { operation: "load timers", reason: error.to_string() };
        let reader = self.reader();
        let mut statement = reader
            .prepare_cached("SELECT broadcast, name, due_ms FROM timers ORDER BY broadcast, name")
            .map_err(sql)?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?)))
            .map_err(sql)?;
        rows.map(|row| {
            let (broadcast, name, due) = row.map_err(sql)?;
            Ok(TimerRecord { broadcast, name, due: time(due) })
        })
        .collect()
    }

    fn instance_states(&self) -> Result<Vec<(String, String)>, Error> {
        let sql = |error: rusqlite::Error| Error::Sql { operation: "load instances", reason: error.to_string() };
        let reader = self.reader();
        let mut statement = reader.prepare_cached("SELECT broadcast, state FROM instances").map_err(sql)?;
        let rows =
            statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))).map_err(sql)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql)
    }

    fn processed(&self, events: &[(String, String)]) -> Result<Vec<bool>, Error> {
        processed(&self.reader(), events)
    }

    fn prepare(&self, events: &[(String, String)], missing: &[String]) -> Prepared {
        // One lock of the read connection and one read transaction (one snapshot) for the
        // whole batch, rather than one per statement.
        let reader = self.reader();
        let snapshot = reader.unchecked_transaction();
        let prepared = Prepared {
            processed: processed(&reader, events),
            instances: missing.iter().map(|broadcast| (broadcast.clone(), load_instance(&reader, broadcast))).collect(),
        };
        // A read transaction ends the same whichever way; nothing was written.
        drop(snapshot);
        prepared
    }

    fn commit(&self, batch: Vec<Commit>) -> Result<Vec<Committed>, Error> {
        // A decision writes only its own broadcast's state: an instance filed under another
        // broadcast would overwrite that broadcast's row and timers.
        if let Some((commit, instance)) = batch.iter().find_map(|commit| {
            commit.instance.as_ref().filter(|instance| instance.broadcast != commit.broadcast).map(|i| (commit, i))
        }) {
            return Err(Error::Mismatch {
                event_id: commit.event_id.clone(),
                broadcast: commit.broadcast.clone(),
                instance: instance.broadcast.clone(),
            });
        }
        self.ask(|reply| Request::Commit(batch, reply))
    }

    fn pending_actions(&self) -> Result<Vec<OutboxRow>, Error> {
        pending_actions(&self.reader())
    }

    fn action_started(&self, outbox_id: i64, attempt: u32, at: DateTime<Utc>) -> Queued<()> {
        // Queued now, without blocking: the writer takes its requests in order, so this one is
        // written before the commit of the action's result, which is asked for later.
        let (reply, answer) = std::sync::mpsc::channel();
        match self.writer.try_send(Request::ActionStarted { outbox_id, attempt, at, reply }) {
            Ok(()) => Queued::in_order(answer),
            Err(TrySendError::Full(_)) => {
                let writer = self.writer.clone();
                Queued::later(move || ask(&writer, |reply| Request::ActionStarted { outbox_id, attempt, at, reply }))
            }
            Err(TrySendError::Disconnected(_)) => Queued::done(Err(Error::Stopped)),
        }
    }

    fn audit(&self, broadcast: &str, limit: usize) -> Result<Vec<AuditRow>, Error> {
        audit(&self.reader(), broadcast, limit)
    }

    fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRow>, Error> {
        audit_query(&self.reader(), query)
    }

    fn purge_processed(&self, before: DateTime<Utc>) -> Result<usize, Error> {
        self.ask(|reply| Request::Purge { before, reply })
    }

    fn schedule_cursors(&self) -> Result<BTreeMap<String, Cursor>, Error> {
        schedule_cursors(&self.reader())
    }

    fn schedule_progress(&self, records: Vec<ScheduleRecord>) -> Result<(), Error> {
        self.ask(|reply| Request::Schedule(records, reply))
    }

    fn integrity_check(&self) -> Result<String, Error> {
        integrity_check(&self.reader())
    }

    fn broadcasts(&self) -> Result<Vec<BroadcastRecord>, Error> {
        broadcasts(&self.reader())
    }

    fn change_broadcasts(&self, changes: Vec<BroadcastChange>) -> Result<Vec<Option<BroadcastRecord>>, Error> {
        self.ask(|reply| Request::Broadcasts(changes, reply))
    }

    fn schedule_holds(&self) -> Result<ScheduleHolds, Error> {
        schedule_holds(&self.reader())
    }

    fn write_schedule_holds(&self, write: HoldWrite) -> Result<(), Error> {
        self.ask(|reply| Request::Holds(Box::new(write), reply))
    }
}

/// Whether the store at `path` takes a write now: a write transaction begins (and is rolled
/// back) within a second. For readiness checks; it writes nothing.
pub fn probe_writable(path: &Path) -> Result<(), Error> {
    let fail = |reason: String| Error::Open { path: path.display().to_string(), reason };
    if !path.exists() {
        return Err(fail("no such file".into()));
    }
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|error| fail(error.to_string()))?;
    connection.busy_timeout(std::time::Duration::from_secs(1)).map_err(|error| fail(error.to_string()))?;
    connection
        .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .map_err(|error| Error::Sql { operation: "begin a write", reason: error.to_string() })
}

/// A read-only view of a store, for `onair status` and tests, safe while `onair run` writes.
#[derive(Debug)]
pub struct ReadOnly {
    connection: Connection,
}

impl ReadOnly {
    pub fn load_instances(&self) -> Result<Vec<InstanceRecord>, Error> {
        load_instances(&self.connection)
    }

    pub fn pending_actions(&self) -> Result<Vec<OutboxRow>, Error> {
        pending_actions(&self.connection)
    }

    pub fn audit(&self, broadcast: &str, limit: usize) -> Result<Vec<AuditRow>, Error> {
        audit(&self.connection, broadcast, limit)
    }

    /// The stored broadcast definitions (none in a store older than schema 3).
    pub fn broadcasts(&self) -> Result<Vec<BroadcastRecord>, Error> {
        let exists = self
            .connection
            .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'broadcasts'", [], |_| Ok(()))
            .optional()
            .map_err(|error| Error::Sql { operation: "read broadcasts", reason: error.to_string() })?;
        match exists {
            Some(()) => broadcasts(&self.connection),
            None => Ok(Vec::new()),
        }
    }

    /// Every audit row of every broadcast, in order (for checkers).
    pub fn all_audit(&self) -> Result<Vec<AuditRow>, Error> {
        query_audit(&self.connection, "SELECT * FROM audit ORDER BY id", params![])
    }

    pub fn integrity_check(&self) -> Result<String, Error> {
        integrity_check(&self.connection)
    }

    pub fn schedule_cursors(&self) -> Result<BTreeMap<String, Cursor>, Error> {
        schedule_cursors(&self.connection)
    }

    /// The schedule holds and floors (empty in a store older than migration 4).
    pub fn schedule_holds(&self) -> Result<ScheduleHolds, Error> {
        schedule_holds(&self.connection)
    }

    /// Decisions recorded, distinct events decided, and duplicates absorbed.
    pub fn decision_counts(&self) -> Result<(i64, i64, i64), Error> {
        let sql = |error: rusqlite::Error| Error::Sql { operation: "decision counts", reason: error.to_string() };
        self.connection
            .query_row(
                "SELECT (SELECT count(*) FROM audit WHERE kind = 'decision'),
                        (SELECT count(DISTINCT event_id) FROM audit WHERE kind = 'decision'),
                        (SELECT count(*) FROM audit WHERE kind = 'duplicate')",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(sql)
    }

    /// Counts of outbox rows by status.
    pub fn outbox_counts(&self) -> Result<BTreeMap<String, i64>, Error> {
        let sql = |error: rusqlite::Error| Error::Sql { operation: "outbox counts", reason: error.to_string() };
        let mut statement =
            self.connection.prepare("SELECT status, count(*) FROM outbox GROUP BY status").map_err(sql)?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))).map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }
}

/// The store's schema version, read without changing anything: `None` when there is no file yet
/// (`onair run` creates it). A damaged file, a newer schema or an unreadable file is an error.
pub fn schema_version(path: &Path) -> Result<Option<i64>, Error> {
    if !path.exists() {
        return Ok(None);
    }
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|error| open_error(path, error, false))?;
    read_schema(&connection, path, false).map(Some)
}

/// What `onair check` finds wrong with the store's place and file, one line each: the state
/// directory and the store's directory must be writable (or, when missing, creatable), and an
/// existing store must be a sound database of a schema this onair knows.
pub fn check(state_dir: &Path, store: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let store_dir = directory_of(store);
    let mut directories = vec![("engine.state_dir", state_dir)];
    if store_dir != state_dir {
        directories.push(("engine.store", store_dir));
    }
    for (key, directory) in directories {
        if let Err(reason) = probe_directory(directory) {
            problems.push(format!(
                "{key}: {} is not writable ({reason}): make it writable by the user onair runs as",
                directory.display()
            ));
        }
    }
    if let Err(error) = schema_version(store) {
        problems.push(format!("engine.store: {error}"));
    }
    problems
}

/// Whether files can be created in `directory`: a probe file is created and removed. A missing
/// directory is fine when its nearest existing ancestor is a directory (it will be created).
fn probe_directory(directory: &Path) -> Result<(), String> {
    match std::fs::metadata(directory) {
        Ok(metadata) if !metadata.is_dir() => Err("it is not a directory".into()),
        Ok(_) => {
            let probe = directory.join(format!(".onair-check-{}", std::process::id()));
            std::fs::OpenOptions::new().write(true).create_new(true).open(&probe).map_err(|error| error.to_string())?;
            std::fs::remove_file(&probe).map_err(|error| error.to_string())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            match directory.ancestors().skip(1).find(|ancestor| ancestor.exists()) {
                Some(ancestor) if !ancestor.is_dir() => Err(format!("{} is not a directory", ancestor.display())),
                _ => Ok(()),
            }
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Reads the schema version and the schema itself (which a damaged or foreign file fails), and
/// refuses a version newer than this onair knows.
fn read_schema(connection: &Connection, path: &Path, writing: bool) -> Result<i64, Error> {
    let classify = |error| open_error(path, error, writing);
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(classify)?;
    connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get::<_, i64>(0)).map_err(classify)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::TooNew { path: path.display().to_string(), found: version, known });
    }
    if version < 0 {
        let reason = format!("schema version {version}, which no onair writes");
        return Err(Error::Corrupt { path: path.display().to_string(), reason });
    }
    Ok(version)
}

/// The directory a store file lives in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Names why a store cannot be opened: damaged, not writable (`writing`), or another reason.
fn open_error(path: &Path, error: rusqlite::Error, writing: bool) -> Error {
    use rusqlite::ErrorCode;
    let reason = error.to_string();
    let path_text = path.display().to_string();
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Error::Corrupt { path: path_text, reason },
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) if writing => {
            let directory = directory_of(path);
            Error::Unwritable { path: path_text, directory: directory.display().to_string(), reason }
        }
        _ => Error::Open { path: path_text, reason },
    }
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Each request of a group commit runs in a savepoint, whose rollback needs the pages it
    // changed as they were (the sub-journal). SQLite spills a sub-journal over 64 KiB to a
    // temporary file: a file opened, written page by page and closed in every transaction of
    // the writer (about 200 page writes each under load). In memory it is a copy of each page.
    // Durability is the WAL's alone; nothing of a sub-journal outlives its transaction.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    // Room for every statement of the write path (rusqlite keeps 16 by default), so that a
    // decision's statements stay prepared between batches.
    connection.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Applies the migrations after `version` (read by `read_schema`, which refused a newer one).
fn migrate(connection: &mut Connection, path: &Path, version: i64) -> Result<(), Error> {
    let sql = |error: rusqlite::Error| match open_error(path, error, true) {
        Error::Open { reason, .. } => Error::Sql { operation: "migration", reason },
        unusable => unusable,
    };
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let transaction = connection.transaction().map_err(sql)?;
        transaction.execute_batch(migration).map_err(sql)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1).map_err(sql)?;
        transaction.commit().map_err(sql)?;
        tracing::info!(version = index + 1, "Store schema migrated.");
    }
    Ok(())
}

// === The writer ===

fn write_loop(mut connection: Connection, requests: Receiver<Request>) {
    let mut since_checkpoint = 0;
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        write_batch(&mut connection, batch);
        since_checkpoint += 1;
        if since_checkpoint >= CHECKPOINT_EVERY {
            since_checkpoint = 0;
            // RESTART waits (busy_timeout) for readers to reach the latest snapshot, then lets
            // the next write start the WAL from the beginning.
            if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                tracing::warn!(%error, "WAL checkpoint failed.");
            }
        }
    }
}

/// One transaction for the whole batch, one savepoint per request.
fn write_batch(connection: &mut Connection, batch: Vec<Request>) {
    let transaction = match connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(transaction) => transaction,
        Err(error) => {
            for request in batch {
                fail(request, write_error("begin", &error));
            }
            return;
        }
    };
    let mut replies: Vec<Answer> = Vec::with_capacity(batch.len());
    let mut transaction = transaction;
    let mut requests = batch.into_iter();
    for request in requests.by_ref() {
        let (reply, failure) = apply(&mut transaction, request);
        replies.push(reply);
        // Some failures (disk full, I/O errors) make SQLite roll back the whole transaction, not
        // only the savepoint. A later savepoint would then open a transaction of its own and
        // commit by itself while the batch is reported failed: stop, and fail the whole batch
        // with the fault that rolled it back.
        if let Some(code) = failure
            && transaction.is_autocommit()
        {
            let error = rusqlite::Error::SqliteFailure(
                code,
                Some("rolled back with the rest of its batch by an earlier write's failure".into()),
            );
            replies.into_iter().for_each(|reply| reply(Some(&error)));
            for request in requests {
                fail(request, write_error("commit", &error));
            }
            return;
        }
    }
    match transaction.commit() {
        Ok(()) => replies.into_iter().for_each(|reply| reply(None)),
        Err(error) => replies.into_iter().for_each(|reply| reply(Some(&error))),
    }
}

/// The SQLite result code of a failed write, to tell the rest of its batch why it was rolled back.
fn failure_code<T>(result: &rusqlite::Result<T>) -> Option<rusqlite::ffi::Error> {
    match result {
        Err(rusqlite::Error::SqliteFailure(code, _)) => Some(*code),
        Err(_) => Some(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR)),
        Ok(_) => None,
    }
}

/// Applies one request inside a savepoint; returns how to answer it once the transaction's fate
/// is known (`Some(reason)` when the commit failed), and its failure's result code, if it failed.
fn apply(transaction: &mut Transaction<'_>, request: Request) -> (Answer, Option<rusqlite::ffi::Error>) {
    match request {
        Request::Commit(batch, reply) => {
            let mut duplicate = None;
            let result = in_savepoint(transaction, |savepoint| {
                let mut committed = Vec::with_capacity(batch.len());
                let last = last_instances(&batch);
                for (index, commit) in batch.iter().enumerate() {
                    // Only a broadcast's last instance of the batch is written: the earlier ones
                    // would be replaced in the same transaction.
                    let latest = commit.instance.as_ref().is_some_and(|instance| {
                        last.get(instance.broadcast.as_str()).is_none_or(|position| *position == index)
                    });
                    match write_commit(savepoint, commit, latest)? {
                        Some(done) => committed.push(done),
                        None => {
                            // Returning an error rolls the whole batch back; the reply says why.
                            duplicate = Some((commit.event_id.clone(), commit.broadcast.clone()));
                            return Err(rusqlite::Error::QueryReturnedNoRows);
                        }
                    }
                }
                Ok(committed)
            });
            let failure = failure_code(&result);
            match duplicate {
                Some((event_id, broadcast)) => (
                    Box::new(move |_| drop(reply.send(Err(Error::UnexpectedDuplicate { event_id, broadcast })))),
                    failure,
                ),
                None => (answer(reply, result, "commit"), failure),
            }
        }
        Request::ActionStarted { outbox_id, attempt, at, reply } => {
            let result = in_savepoint(transaction, |savepoint| write_action_started(savepoint, outbox_id, attempt, at));
            let failure = failure_code(&result);
            (answer(reply, result, "action start"), failure)
        }
        Request::Purge { before, reply } => {
            let result = in_savepoint(transaction, |savepoint| {
                savepoint.execute("DELETE FROM processed WHERE at_ms < ?1", params![before.timestamp_millis()])
            });
            let failure = failure_code(&result);
            (answer(reply, result, "purge"), failure)
        }
        Request::Schedule(records, reply) => {
            let result = in_savepoint(transaction, |savepoint| write_schedule(savepoint, &records));
            let failure = failure_code(&result);
            (answer(reply, result, "schedule progress"), failure)
        }
        Request::Broadcasts(changes, reply) => {
            let mut conflict = None;
            let result = in_savepoint(transaction, |savepoint| {
                let mut written = Vec::with_capacity(changes.len());
                // The revision counter is read once and written once per request, not updated
                // per change (`UPDATE … RETURNING` builds a temporary table at every call).
                let mut last: i64 =
                    savepoint.prepare_cached("SELECT last FROM revisions")?.query_row([], |row| row.get(0))?;
                let before = last;
                for change in changes {
                    let (broadcast, expected) = (change.id.clone(), change.expected);
                    match write_broadcast(savepoint, change, &mut last)? {
                        Ok(record) => written.push(record),
                        Err(found) => {
                            // Returning an error rolls the whole change back; the reply says why.
                            conflict = Some(Error::Conflict { broadcast, expected, found });
                            return Err(rusqlite::Error::QueryReturnedNoRows);
                        }
                    }
                }
                if last != before {
                    savepoint.prepare_cached("UPDATE revisions SET last = ?1")?.execute(params![last])?;
                }
                Ok(written)
            });
            let failure = failure_code(&result);
            match conflict {
                Some(conflict) => (Box::new(move |_| drop(reply.send(Err(conflict)))), failure),
                None => (answer(reply, result, "broadcast change"), failure),
            }
        }
        Request::Holds(write, reply) => {
            let result = in_savepoint(transaction, |savepoint| write_holds(savepoint, &write));
            let failure = failure_code(&result);
            (answer(reply, result, "schedule holds"), failure)
        }
    }
}

fn answer<T: 'static>(reply: Sender<Result<T, Error>>, result: rusqlite::Result<T>, operation: &'static str) -> Answer {
    Box::new(move |commit_failure: Option<&rusqlite::Error>| {
        let outcome = match (result, commit_failure) {
            (Ok(value), None) => Ok(value),
            (Err(error), _) => Err(write_error(operation, &error)),
            (Ok(_), Some(error)) => Err(write_error(operation, error)),
        };
        let _ = reply.send(outcome);
    })
}

fn fail(request: Request, error: Error) {
    match request {
        Request::Commit(_, reply) => drop(reply.send(Err(error))),
        Request::ActionStarted { reply, .. } => drop(reply.send(Err(error))),
        Request::Purge { reply, .. } => drop(reply.send(Err(error))),
        Request::Schedule(_, reply) => drop(reply.send(Err(error))),
        Request::Broadcasts(_, reply) => drop(reply.send(Err(error))),
        Request::Holds(_, reply) => drop(reply.send(Err(error))),
    }
}

/// A failed write as a store error: `Unavailable` with its `Fault` when SQLite says the store
/// itself is the problem (full, I/O error, busy or locked), `Sql` otherwise.
fn write_error(operation: &'static str, error: &rusqlite::Error) -> Error {
    let reason = error.to_string();
    match fault(error) {
        Some(fault) => Error::Unavailable { operation, fault, reason },
        None => Error::Sql { operation, reason },
    }
}

/// The store-side condition behind a SQLite error, from its primary result code.
fn fault(error: &rusqlite::Error) -> Option<Fault> {
    let rusqlite::Error::SqliteFailure(failure, _) = error else { return None };
    match failure.code {
        rusqlite::ErrorCode::DiskFull => Some(Fault::DiskFull),
        rusqlite::ErrorCode::SystemIoFailure => Some(Fault::Io),
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => Some(Fault::Locked),
        _ => None,
    }
}

fn in_savepoint<T>(
    transaction: &mut Transaction<'_>,
    work: impl FnOnce(&rusqlite::Savepoint<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let savepoint = transaction.savepoint()?;
    let result = work(&savepoint);
    match result {
        Ok(value) => {
            savepoint.commit()?;
            Ok(value)
        }
        // Dropping the savepoint rolls it back.
        Err(error) => Err(error),
    }
}

/// Runs one write through the connection's cache of prepared statements: the hot path's
/// statements are parsed once, not on every decision.
fn cached(db: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    db.prepare_cached(sql)?.execute(params)
}

/// Per broadcast, the position of the last commit of `batch` that carries its instance.
fn last_instances(batch: &[Commit]) -> std::collections::HashMap<&str, usize> {
    let mut last = std::collections::HashMap::new();
    for (index, commit) in batch.iter().enumerate() {
        if let Some(instance) = &commit.instance {
            last.insert(instance.broadcast.as_str(), index);
        }
    }
    last
}

/// Writes one decision, and its instance when `with_instance` (a later decision of the same
/// transaction replaces it otherwise); `None` when its event turns out to be processed already.
fn write_commit(
    db: &rusqlite::Savepoint<'_>,
    commit: &Commit,
    with_instance: bool,
) -> rusqlite::Result<Option<Committed>> {
    let at = commit.at.timestamp_millis();
    if commit.duplicate {
        cached(
            db,
            "INSERT INTO audit (broadcast, at_ms, kind, event_id, event_type, reason, detail) VALUES (?1, ?2, 'duplicate', ?3, ?4, ?5, '{}')",
            params![
                commit.broadcast,
                at,
                commit.event_id,
                commit.event_type,
                "duplicate: this event was already processed"
            ],
        )?;
        return Ok(Some(Committed::Duplicate));
    }
    let inserted = cached(
        db,
        "INSERT INTO processed (event_id, broadcast, at_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![commit.event_id, commit.broadcast, at],
    )?;
    if inserted == 0 {
        return Ok(None);
    }
    let mut decision_seq = 0;
    if let Some(instance) = &commit.instance {
        decision_seq = instance.seq;
        if with_instance {
            write_instance(db, instance, at)?;
        }
    }
    write_decision_audit(db, commit, at)?;
    let skipped = match &commit.completes {
        Some(completion) => write_completion(db, commit, completion, at)?,
        None => Vec::new(),
    };
    let outbox = queue_actions(db, commit, decision_seq)?;
    Ok(Some(Committed::Applied { outbox, skipped }))
}

/// Replaces the broadcast's instance row and its armed timers.
fn write_instance(db: &rusqlite::Savepoint<'_>, instance: &InstanceRecord, at: i64) -> rusqlite::Result<()> {
    cached(
        db,
        "INSERT INTO instances (broadcast, machine, state, vars, since_ms, seq, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (broadcast) DO UPDATE SET machine = ?2, state = ?3, vars = ?4, since_ms = ?5, seq = ?6, updated_ms = ?7",
        params![
            instance.broadcast,
            instance.machine,
            instance.state,
            text(&instance.vars)?,
            instance.since.timestamp_millis(),
            instance.seq,
            at
        ],
    )?;
    cached(db, "DELETE FROM timers WHERE broadcast = ?1", params![instance.broadcast])?;
    for (name, due) in &instance.timers {
        cached(
            db,
            "INSERT INTO timers (broadcast, name, due_ms) VALUES (?1, ?2, ?3)",
            params![instance.broadcast, name, due.timestamp_millis()],
        )?;
    }
    Ok(())
}

/// JSON text of a value, written from borrowed parts (no copy of the value first).
fn text(value: &impl serde::Serialize) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))
}

/// A decision's audit detail, serialized from the commit without copying its parts: the same
/// text as the JSON object of these keys (in this order, which is a JSON map's sorted order).
#[derive(serde::Serialize)]
struct AuditDetail<'a> {
    decision: &'a Value,
    event: &'a Value,
    outcome: &'a str,
}

/// The audit row of the decision itself.
fn write_decision_audit(db: &rusqlite::Savepoint<'_>, commit: &Commit, at: i64) -> rusqlite::Result<()> {
    let decision = &commit.decision;
    cached(
        db,
        "INSERT INTO audit (broadcast, at_ms, kind, event_id, event_type, from_state, to_state, transition, reason, detail)
         VALUES (?1, ?2, 'decision', ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            commit.broadcast,
            at,
            commit.event_id,
            commit.event_type,
            decision.from,
            decision.to,
            decision.transition.map(|index| index as i64),
            decision.reason,
            text(&AuditDetail { decision: &decision.detail, event: &commit.event, outcome: &decision.outcome })?
        ],
    )?;
    Ok(())
}

/// Closes the outbox row the event reports on, audits it, and after a failure skips the rest of
/// its decision's pending actions; returns the ids skipped.
fn write_completion(
    db: &rusqlite::Savepoint<'_>,
    commit: &Commit,
    completion: &Completion,
    at: i64,
) -> rusqlite::Result<Vec<i64>> {
    let status = if completion.succeeded { "succeeded" } else { "failed" };
    // Only an action of this decision's broadcast: a result naming another broadcast's
    // outbox row must not close it (nor skip the rest of that broadcast's decision).
    let row: Option<(String, i64, i64, String)> = db
        .prepare_cached("SELECT broadcast, decision, position, kind FROM outbox WHERE id = ?1 AND broadcast = ?2")?
        .query_row(params![completion.outbox_id, commit.broadcast], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    cached(
        db,
        "UPDATE outbox SET status = ?2, finished_ms = ?3, result = ?4
         WHERE id = ?1 AND broadcast = ?5 AND status = 'pending'",
        params![completion.outbox_id, status, at, completion.result.to_string(), commit.broadcast],
    )?;
    let Some((broadcast, decision, position, kind)) = row else { return Ok(Vec::new()) };
    cached(
        db,
        "INSERT INTO audit (broadcast, at_ms, kind, event_id, reason, detail) VALUES (?1, ?2, 'action', ?3, ?4, ?5)",
        params![
            broadcast,
            at,
            commit.event_id,
            format!("action {kind} (#{}) {status}", completion.outbox_id),
            serde_json::json!({"outbox_id": completion.outbox_id, "result": completion.result}).to_string()
        ],
    )?;
    if completion.succeeded {
        return Ok(Vec::new());
    }
    let mut statement = db.prepare_cached(
        "UPDATE outbox SET status = 'skipped', finished_ms = ?4
         WHERE broadcast = ?1 AND decision = ?2 AND position > ?3 AND status = 'pending' RETURNING id",
    )?;
    let ids = statement.query_map(params![broadcast, decision, position, at], |row| row.get::<_, i64>(0))?;
    ids.collect()
}

/// Puts the decision's actions in the outbox, in order; returns the new rows.
fn queue_actions(db: &rusqlite::Savepoint<'_>, commit: &Commit, decision_seq: i64) -> rusqlite::Result<Vec<OutboxRow>> {
    let at = commit.at.timestamp_millis();
    let mut outbox = Vec::with_capacity(commit.actions.len());
    for (position, action) in commit.actions.iter().enumerate() {
        cached(
            db,
            "INSERT INTO outbox (broadcast, decision, position, kind, params, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![commit.broadcast, decision_seq, position as i64, action.kind, action.params.to_string(), at],
        )?;
        outbox.push(OutboxRow {
            id: db.last_insert_rowid(),
            broadcast: commit.broadcast.clone(),
            decision: decision_seq,
            position: position as i64,
            kind: action.kind.clone(),
            params: action.params.clone(),
            status: "pending".into(),
            attempts: 0,
            created: commit.at,
        });
    }
    Ok(outbox)
}

fn write_action_started(
    db: &rusqlite::Savepoint<'_>,
    outbox_id: i64,
    attempt: u32,
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    cached(db, "UPDATE outbox SET attempts = ?2 WHERE id = ?1", params![outbox_id, attempt])?;
    let row: Option<(String, String)> = db
        .query_row("SELECT broadcast, kind FROM outbox WHERE id = ?1", params![outbox_id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    if let Some((broadcast, kind)) = row {
        cached(
            db,
            "INSERT INTO audit (broadcast, at_ms, kind, reason, detail) VALUES (?1, ?2, 'action', ?3, ?4)",
            params![
                broadcast,
                at.timestamp_millis(),
                format!("action {kind} (#{outbox_id}) started, attempt {attempt}"),
                serde_json::json!({"outbox_id": outbox_id, "attempt": attempt}).to_string()
            ],
        )?;
    }
    Ok(())
}

fn write_schedule(db: &rusqlite::Savepoint<'_>, records: &[ScheduleRecord]) -> rusqlite::Result<()> {
    let mut cursor = db.prepare_cached(
        "INSERT INTO schedule_cursors (broadcast, at_ms, air_ms, rank, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (broadcast) DO UPDATE SET at_ms = ?2, air_ms = ?3, rank = ?4, updated_ms = ?5",
    )?;
    let mut audit = db.prepare_cached(
        "INSERT INTO audit (broadcast, at_ms, kind, event_id, event_type, reason, detail)
         VALUES (?1, ?2, 'schedule', ?3, ?4, ?5, ?6)",
    )?;
    for record in records {
        let at = record.at.timestamp_millis();
        cursor.execute(params![
            record.broadcast,
            record.cursor.at.timestamp_millis(),
            record.cursor.air.timestamp_millis(),
            record.cursor.rank,
            at
        ])?;
        if let Some(outcome) = &record.outcome {
            let mut detail = record.detail.clone();
            if let Value::Object(map) = &mut detail {
                map.insert("outcome".into(), Value::String(outcome.clone()));
            }
            audit.execute(params![
                record.broadcast,
                at,
                record.event_id,
                record.event_id.as_ref().map(|_| crate::event::SCHEDULE_FIRED),
                record.reason,
                detail.to_string()
            ])?;
        }
    }
    Ok(())
}

/// Writes one definition change, counting its revision from `last` (the counter, written back
/// by the caller); `Err(found)` (the stored revision) when it expected another.
/// The change is taken whole: its definition moves into the record it returns (a first start
/// writes 100,000 of them; a copy each was a third of the writer's time).
fn write_broadcast(
    db: &rusqlite::Savepoint<'_>,
    change: BroadcastChange,
    last: &mut i64,
) -> rusqlite::Result<Result<Option<BroadcastRecord>, Option<i64>>> {
    let find = |id: &str| -> rusqlite::Result<Option<(i64, i64)>> {
        db.prepare_cached("SELECT revision, incarnation FROM broadcasts WHERE id = ?1")?
            .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
    };
    // A creation (a first start makes 100,000) needs no look first: its insert changes nothing
    // on an id already there, and only then is the stored revision read for the conflict.
    let creation = matches!((&change.expected, &change.change), (Expected::Absent, Change::Put(_)));
    let found = if creation { None } else { find(&change.id)? };
    let revision = found.map(|(revision, _)| revision);
    let expected = match change.expected {
        Expected::Any => true,
        Expected::Absent => revision.is_none(),
        Expected::Revision(wanted) => revision == Some(wanted),
    };
    if !expected {
        return Ok(Err(revision));
    }
    let at = change.at.timestamp_millis();
    let BroadcastChange { id, change, reason, mut detail, .. } = change;
    let written = match change {
        Change::Note => None,
        Change::Put(next) => {
            // Revisions count changes of every broadcast, so none is ever reused: a removed
            // broadcast created again starts a new life (its incarnation, the revision that
            // created it) and an `If-Match` from its old life cannot match.
            *last += 1;
            let revision = *last;
            let incarnation = found.map_or(revision, |(_, incarnation)| incarnation);
            // As a read gives it back (to the millisecond): the catalog keeps this record.
            let record = BroadcastRecord { revision, incarnation, updated: time(at), ..next };
            // A creation does not replace what is there (`WHERE ?9` is false for it): no row
            // changed means the id was taken meanwhile, a conflict with the revision it has
            // (the request's savepoint, counter included, is rolled back).
            let changed = db
                .prepare_cached(
                    "INSERT INTO broadcasts (id, origin, revision, incarnation, definition, updated_ms, updated_by, deleting)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (id) DO UPDATE SET origin = ?2, revision = ?3, incarnation = ?4, definition = ?5,
                     updated_ms = ?6, updated_by = ?7, deleting = ?8 WHERE ?9",
                )?
                .execute(params![
                    record.id,
                    record.origin,
                    record.revision,
                    record.incarnation,
                    text(&record.definition)?,
                    at,
                    record.updated_by,
                    record.deleting,
                    !creation
                ])?;
            if changed == 0 {
                return Ok(Err(find(&id)?.map(|(revision, _)| revision)));
            }
            Some(record)
        }
        Change::Remove => {
            db.prepare_cached("DELETE FROM broadcasts WHERE id = ?1")?.execute(params![id])?;
            db.prepare_cached("DELETE FROM instances WHERE broadcast = ?1")?.execute(params![id])?;
            db.prepare_cached("DELETE FROM timers WHERE broadcast = ?1")?.execute(params![id])?;
            db.prepare_cached("DELETE FROM schedule_cursors WHERE broadcast = ?1")?.execute(params![id])?;
            db.prepare_cached("DELETE FROM schedule_holds WHERE broadcast = ?1")?.execute(params![id])?;
            db.prepare_cached("DELETE FROM schedule_floors WHERE broadcast = ?1")?.execute(params![id])?;
            None
        }
    };
    if let Value::Object(map) = &mut detail {
        map.insert("revision".into(), written.as_ref().map_or(Value::Null, |record| record.revision.into()));
    }
    db.prepare_cached("INSERT INTO audit (broadcast, at_ms, kind, reason, detail) VALUES (?1, ?2, 'config', ?3, ?4)")?
        .execute(params![id, at, reason, detail.to_string()])?;
    Ok(Ok(written))
}

/// Replaces one broadcast's holds and floor; writes the audit row of what changed them.
fn write_holds(db: &rusqlite::Savepoint<'_>, write: &HoldWrite) -> rusqlite::Result<()> {
    let now = write.at.timestamp_millis();
    db.prepare_cached("DELETE FROM schedule_holds WHERE broadcast = ?1")?.execute(params![write.broadcast])?;
    let mut insert = db.prepare_cached(
        "INSERT INTO schedule_holds (broadcast, air_ms, steps, updated_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (broadcast, air_ms) DO UPDATE SET steps = ?3, updated_ms = ?4",
    )?;
    for hold in write.holds.iter().filter(|hold| hold.broadcast == write.broadcast) {
        let steps: Vec<Value> = hold
            .steps
            .iter()
            .map(|step| serde_json::json!({"rank": step.rank, "at_ms": step.at.timestamp_millis()}))
            .collect();
        insert.execute(params![write.broadcast, hold.air.timestamp_millis(), Value::Array(steps).to_string(), now])?;
    }
    match write.floor {
        Some(floor) => db
            .prepare_cached(
                "INSERT INTO schedule_floors (broadcast, floor_ms) VALUES (?1, ?2)
                 ON CONFLICT (broadcast) DO UPDATE SET floor_ms = ?2",
            )?
            .execute(params![write.broadcast, floor.timestamp_millis()])?,
        None => {
            db.prepare_cached("DELETE FROM schedule_floors WHERE broadcast = ?1")?.execute(params![write.broadcast])?
        }
    };
    if let Some(audit) = &write.audit {
        db.prepare_cached(
            "INSERT INTO audit (broadcast, at_ms, kind, reason, detail) VALUES (?1, ?2, 'command', ?3, ?4)",
        )?
        .execute(params![write.broadcast, now, audit.reason, audit.detail.to_string()])?;
    }
    Ok(())
}

// === Reads ===

fn broadcasts(connection: &Connection) -> Result<Vec<BroadcastRecord>, Error> {
    let sql = |error: rusqlite::Error| Error::Sql { operation: "read broadcasts", reason: error.to_string() };
    let mut statement = connection
        .prepare_cached(
            "SELECT id, origin, revision, incarnation, definition, updated_ms, updated_by, deleting FROM broadcasts
             ORDER BY id",
        )
        .map_err(sql)?;
    let rows = statement
        .query_map([], |row| {
            Ok(BroadcastRecord {
                id: row.get(0)?,
                origin: row.get(1)?,
                revision: row.get(2)?,
                incarnation: row.get(3)?,
                definition: match json(&row.get::<_, String>(4)?) {
                    Value::Object(map) => map,
                    _ => Map::new(),
                },
                updated: time(row.get(5)?),
                updated_by: row.get(6)?,
                deleting: row.get(7)?,
            })
        })
        .map_err(sql)?;
    rows.collect::<Result<_, _>>().map_err(sql)
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn processed(connection: &Connection, events: &[(String, String)]) -> Result<Vec<bool>, Error> {
    let sql = |error: rusqlite::Error| Error::Sql { operation: "processed", reason: error.to_string() };
    let mut statement =
        connection.prepare_cached("SELECT 1 FROM processed WHERE event_id = ?1 AND broadcast = ?2").map_err(sql)?;
    events.iter().map(|(event_id, broadcast)| statement.exists(params![event_id, broadcast]).map_err(sql)).collect()
}

fn load_instance(connection: &Connection, broadcast: &str) -> Result<Option<InstanceRecord>, Error> {
    // `broadcast` is the primary key: at most one row, and it is this broadcast's.
    Ok(query_instances(connection, Some(broadcast))?.pop())
}

fn load_instances(connection: &Connection) -> Result<Vec<InstanceRecord>, Error> {
    query_instances(connection, None)
}

/// Every instance, or the one of `only`.
fn query_instances(connection: &Connection, only: Option<&str>) -> Result<Vec<InstanceRecord>, Error> {
    let sql = |error: rusqlite::Error| Error::Sql { operation: "load instances", reason: error.to_string() };
    let mut timers: BTreeMap<String, BTreeMap<String, DateTime<Utc>>> = BTreeMap::new();
    {
        // Two statements rather than `?1 IS NULL OR …`, which SQLite cannot answer from the index.
        let mut statement = match only {
            Some(_) => connection.prepare_cached("SELECT broadcast, name, due_ms FROM timers WHERE broadcast = ?1"),
            None => connection.prepare_cached("SELECT broadcast, name, due_ms FROM timers WHERE ?1 IS NULL"),
        }
        .map_err(sql)?;
        let rows = statement
            .query_map(params![only], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
            })
            .map_err(sql)?;
        for row in rows {
            let (broadcast, name, due) = row.map_err(sql)?;
            timers.entry(broadcast).or_default().insert(name, time(due));
        }
    }
    // The same filter as the timers: `only` selects one broadcast's row and nothing else.
    let mut statement = match only {
        Some(_) => connection.prepare_cached(
            "SELECT broadcast, machine, state, vars, since_ms, seq FROM instances WHERE broadcast = ?1",
        ),
        None => connection.prepare_cached(
            "SELECT broadcast, machine, state, vars, since_ms, seq FROM instances WHERE ?1 IS NULL ORDER BY broadcast",
        ),
    }
    .map_err(sql)?;
    let rows = statement
        .query_map(params![only], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })
        .map_err(sql)?;
    let mut instances = Vec::new();
    for row in rows {
        let (broadcast, machine, state, vars, since, seq) = row.map_err(sql)?;
        let vars = match json(&vars) {
            Value::Object(vars) => vars,
            _ => Default::default(),
        };
        let timers = timers.remove(&broadcast).unwrap_or_default();
        instances.push(InstanceRecord { broadcast, machine, state, vars, timers, since: time(since), seq });
    }
    Ok(instances)
}

fn pending_actions(connection: &Connection) -> Result<Vec<OutboxRow>, Error> {
    let sql = |error: rusqlite::Error| Error::Sql { operation: "pending actions", reason: error.to_string() };
    let mut statement = connection
        .prepare(
            "SELECT id, broadcast, decision, position, kind, params, status, attempts, created_ms FROM outbox
             WHERE status = 'pending' ORDER BY id",
        )
        .map_err(sql)?;
    let rows = statement
        .query_map([], |row| {
            Ok(OutboxRow {
                id: row.get(0)?,
                broadcast: row.get(1)?,
                decision: row.get(2)?,
                position: row.get(3)?,
                kind: row.get(4)?,
                params: json(&row.get::<_, String>(5)?),
                status: row.get(6)?,
                attempts: row.get(7)?,
                created: time(row.get(8)?),
            })
        })
        .map_err(sql)?;
    rows.collect::<Result<_, _>>().map_err(sql)
}

fn audit(connection: &Connection, broadcast: &str, limit: usize) -> Result<Vec<AuditRow>, Error> {
    let mut rows = query_audit(
        connection,
        "SELECT * FROM audit WHERE broadcast = ?1 ORDER BY id DESC LIMIT ?2",
        params![broadcast, limit as i64],
    )?;
    rows.reverse();
    Ok(rows)
}

/// `Store::audit_query`: only the filters given reach the SQL, so that SQLite walks the index
/// that fits (`audit_broadcast`, `audit_kind` or the ids) backwards from the cursor.
fn audit_query(connection: &Connection, query: &AuditQuery) -> Result<Vec<AuditRow>, Error> {
    use rusqlite::types::Value as Sql;
    let mut conditions = Vec::new();
    let mut values: Vec<Sql> = Vec::new();
    let mut filter = |condition: &str, value: Sql| {
        values.push(value);
        conditions.push(format!("{condition} ?{}", values.len()));
    };
    if let Some(broadcast) = &query.broadcast {
        filter("broadcast =", Sql::Text(broadcast.clone()));
    }
    if let Some(kind) = &query.kind {
        filter("kind =", Sql::Text(kind.clone()));
    }
    if let Some(since) = query.since {
        filter("at_ms >=", Sql::Integer(since.timestamp_millis()));
    }
    if let Some(until) = query.until {
        filter("at_ms <", Sql::Integer(until.timestamp_millis()));
    }
    if let Some(before) = query.before {
        filter("id <", Sql::Integer(before));
    }
    let clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    values.push(Sql::Integer(i64::try_from(query.limit).unwrap_or(i64::MAX)));
    let sql = format!("SELECT * FROM audit {clause} ORDER BY id DESC LIMIT ?{}", values.len());
    query_audit(connection, &sql, rusqlite::params_from_iter(values))
}

fn query_audit(
    connection: &Connection,
    query: &str,
    parameters: impl rusqlite::Params,
) -> Result<Vec<AuditRow>, Error> {
    let sql = |error: rusqlite::Error| Error::Sql { operation: "audit", reason: error.to_string() };
    let mut statement = connection.prepare_cached(query).map_err(sql)?;
    let rows = statement
        .query_map(parameters, |row| {
            Ok(AuditRow {
                id: row.get("id")?,
                broadcast: row.get("broadcast")?,
                at: time(row.get("at_ms")?),
                kind: row.get("kind")?,
                event_id: row.get("event_id")?,
                event_type: row.get("event_type")?,
                from: row.get("from_state")?,
                to: row.get("to_state")?,
                transition: row.get("transition")?,
                reason: row.get("reason")?,
                detail: json(&row.get::<_, String>("detail")?),
            })
        })
        .map_err(sql)?;
    rows.collect::<Result<_, _>>().map_err(sql)
}

fn schedule_cursors(connection: &Connection) -> Result<BTreeMap<String, Cursor>, Error> {
    let sql = |error: rusqlite::Error| Error::Sql { operation: "read schedule cursors", reason: error.to_string() };
    let mut statement =
        connection.prepare("SELECT broadcast, at_ms, air_ms, rank FROM schedule_cursors").map_err(sql)?;
    let rows = statement
        .query_map([], |row| {
            let rank: i64 = row.get(3)?;
            Ok((
                row.get::<_, String>(0)?,
                Cursor { at: time(row.get(1)?), air: time(row.get(2)?), rank: u8::try_from(rank).unwrap_or(u8::MAX) },
            ))
        })
        .map_err(sql)?;
    rows.collect::<Result<BTreeMap<_, _>, _>>().map_err(sql)
}

fn schedule_holds(connection: &Connection) -> Result<ScheduleHolds, Error> {
    let sql = |error: rusqlite::Error| Error::Sql { operation: "read schedule holds", reason: error.to_string() };
    // A read-only view of a store not yet migrated to 4 has no holds.
    let migrated: bool = connection
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schedule_holds'", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(sql)?
        > 0;
    if !migrated {
        return Ok(ScheduleHolds::default());
    }
    let mut statement = connection
        .prepare_cached("SELECT broadcast, air_ms, steps FROM schedule_holds ORDER BY broadcast, air_ms")
        .map_err(sql)?;
    let holds = statement
        .query_map([], |row| {
            let steps = match json(&row.get::<_, String>(2)?) {
                Value::Array(steps) => steps
                    .iter()
                    .filter_map(|step| {
                        let rank = u8::try_from(step["rank"].as_u64()?).ok()?;
                        Some(HeldStep { rank, at: time(step["at_ms"].as_i64()?) })
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Ok(ScheduleHold { broadcast: row.get(0)?, air: time(row.get(1)?), steps })
        })
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    let mut statement = connection.prepare_cached("SELECT broadcast, floor_ms FROM schedule_floors").map_err(sql)?;
    let floors = statement
        .query_map([], |row| Ok((row.get::<_, String>(0)?, time(row.get(1)?))))
        .map_err(sql)?
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map_err(sql)?;
    Ok(ScheduleHolds { holds, floors })
}

fn integrity_check(connection: &Connection) -> Result<String, Error> {
    connection
        .query_row("PRAGMA integrity_check", [], |row| row.get::<_, String>(0))
        .map_err(|error| Error::Sql { operation: "integrity check", reason: error.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Completion, DecisionRecord, NewAction};
    use serde_json::json;

    fn commit(event_id: &str, seq: i64, actions: &[&str], completes: Option<Completion>) -> Commit {
        let now = fixed_now();
        Commit {
            duplicate: false,
            broadcast: "news".into(),
            machine: "live".into(),
            at: now,
            event_id: event_id.into(),
            event_type: "t".into(),
            event: json!({}),
            decision: DecisionRecord {
                outcome: "transition".into(),
                from: "idle".into(),
                to: "warming".into(),
                transition: Some(1),
                reason: "because".into(),
                detail: json!({}),
            },
            instance: Some(InstanceRecord {
                broadcast: "news".into(),
                machine: "live".into(),
                state: "warming".into(),
                vars: json!({"occurrence": "x"}).as_object().unwrap().clone(),
                timers: BTreeMap::from([("t1".to_string(), now)]),
                since: now,
                seq,
            }),
            actions: actions.iter().map(|kind| NewAction { kind: kind.to_string(), params: json!({"n": 1}) }).collect(),
            completes,
        }
    }

    fn fixed_now() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_795_000_000_000).unwrap()
    }

    /// A creation inserts without looking first: over an id already there it is a conflict
    /// naming the revision found, the whole request rolls back (the counter included), and
    /// nothing stored changes. Three broadcasts at different revisions, each checked.
    #[test]
    fn a_creation_over_a_taken_id_is_a_conflict_and_changes_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&directory.path().join("onair.db")).unwrap();
        let change = |id: &str, expected: Expected, channel: &str| BroadcastChange {
            id: id.into(),
            expected,
            change: Change::Put(BroadcastRecord {
                id: id.into(),
                origin: "api".into(),
                revision: 0,
                incarnation: 0,
                definition: json!({"channel": channel}).as_object().unwrap().clone(),
                updated: fixed_now(),
                updated_by: "test".into(),
                deleting: false,
            }),
            at: fixed_now(),
            reason: format!("{id} written"),
            detail: json!({}),
        };
        store
            .change_broadcasts(vec![change("news", Expected::Absent, "n1"), change("sport", Expected::Absent, "s1")])
            .unwrap();
        store.change_broadcasts(vec![change("news", Expected::Revision(1), "n2")]).unwrap();
        let stored = || -> Vec<(String, i64, i64, Value)> {
            store
                .broadcasts()
                .unwrap()
                .into_iter()
                .map(|record| (record.id, record.revision, record.incarnation, record.definition["channel"].clone()))
                .collect()
        };
        let before = stored();
        assert_eq!(before, [("news".into(), 3, 1, json!("n2")), ("sport".into(), 2, 2, json!("s1"))]);

        // weather is new, sport is taken: refused whole.
        let refused = store.change_broadcasts(vec![
            change("weather", Expected::Absent, "w1"),
            change("sport", Expected::Absent, "s2"),
        ]);
        let Err(Error::Conflict { broadcast, expected, found }) = refused else { panic!("{refused:?}") };
        assert_eq!((broadcast.as_str(), expected, found), ("sport", Expected::Absent, Some(2)));
        assert_eq!(stored(), before, "weather not created, sport unchanged");
        // A stale revision is refused as before.
        let stale = store.change_broadcasts(vec![change("news", Expected::Revision(1), "n3")]);
        assert!(matches!(stale, Err(Error::Conflict { found: Some(3), .. })), "{stale:?}");
        // The counter went back with the refused request: weather gets the next revision.
        let written = store.change_broadcasts(vec![change("weather", Expected::Absent, "w1")]).unwrap();
        let weather = written[0].as_ref().unwrap();
        assert_eq!((weather.revision, weather.incarnation), (4, 4));
        assert_eq!(stored().len(), 3);
        let audit = store.audit("sport", 10).unwrap();
        assert_eq!(audit.iter().filter(|row| row.kind == "config").count(), 1, "no audit row for the refused change");
    }

    /// An attempt's record is queued at once, in order: the commit of the action's result, asked
    /// for before the record is waited for, lands after it. Three broadcasts with actions in
    /// different states: only the attempted row counts an attempt, and only its broadcast's
    /// audit shows it, before the result.
    #[test]
    fn an_attempt_queued_without_waiting_lands_before_the_result_asked_for_after_it() {
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&directory.path().join("onair.db")).unwrap();
        let mut batch = Vec::new();
        for (broadcast, state, actions) in [
            ("news", "warming", &["channel.start", "program.create"][..]),
            ("sport", "live", &["notify"][..]),
            ("weather", "idle", &[][..]),
        ] {
            let mut commit = commit(&format!("{broadcast}-1"), 1, actions, None);
            commit.broadcast = broadcast.into();
            let instance = commit.instance.as_mut().unwrap();
            instance.broadcast = broadcast.into();
            instance.state = state.into();
            batch.push(commit);
        }
        let committed = store.commit(batch).unwrap();
        let outbox: Vec<OutboxRow> = committed
            .into_iter()
            .flat_map(|done| match done {
                Committed::Applied { outbox, .. } => outbox,
                Committed::Duplicate => Vec::new(),
            })
            .collect();
        assert_eq!(outbox.len(), 3);
        let started = &outbox[0];
        assert_eq!((started.broadcast.as_str(), started.kind.as_str()), ("news", "channel.start"));

        let record = store.action_started(started.id, 1, fixed_now());
        assert!(record.is_ordered());
        let mut result =
            commit("action/1", 2, &[], Some(Completion { outbox_id: started.id, succeeded: true, result: json!({}) }));
        result.event_type = "onair.action.succeeded".into();
        store.commit(vec![result]).unwrap();
        record.wait().unwrap();

        let audit = store.audit("news", 100).unwrap();
        let position = |text: &str| audit.iter().position(|row| row.reason.contains(text));
        let (attempt, outcome) = (position("started, attempt 1"), position("succeeded"));
        assert!(attempt.is_some() && attempt < outcome, "{audit:#?}");
        for other in ["sport", "weather"] {
            assert!(store.audit(other, 100).unwrap().iter().all(|row| row.kind != "action"), "{other}");
        }
        let attempts: Vec<(String, i64)> =
            store.pending_actions().unwrap().into_iter().map(|row| (row.kind, row.attempts)).collect();
        assert_eq!(attempts, [("program.create".to_string(), 0), ("notify".to_string(), 0)]);
    }

    /// What start-up reads instead of every instance: the timers (each with its broadcast) and
    /// each instance's state, equal to what `load_instances` says. Three broadcasts in three
    /// states, with two, one and no timers.
    #[test]
    fn start_up_reads_timers_and_states_as_the_instances_have_them() {
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&directory.path().join("onair.db")).unwrap();
        let now = fixed_now();
        let mut batch = Vec::new();
        for (broadcast, state, timers) in [("news", "live", 2), ("sport", "failed", 1), ("weather", "standby", 0)] {
            let mut commit = commit(&format!("{broadcast}-1"), 1, &[], None);
            commit.broadcast = broadcast.into();
            let instance = commit.instance.as_mut().unwrap();
            instance.broadcast = broadcast.into();
            instance.state = state.into();
            instance.timers = (0..timers).map(|n| (format!("t{n}"), now + chrono::TimeDelta::seconds(n))).collect();
            batch.push(commit);
        }
        store.commit(batch).unwrap();
        let instances = store.load_instances().unwrap();
        assert_eq!(instances.len(), 3);
        let mut states = store.instance_states().unwrap();
        states.sort();
        let expected: Vec<(String, String)> =
            instances.iter().map(|record| (record.broadcast.clone(), record.state.clone())).collect();
        assert_eq!(states, expected);
        let timers = store.load_timers().unwrap();
        let expected: Vec<TimerRecord> = instances
            .iter()
            .flat_map(|record| {
                record.timers.iter().map(|(name, due)| TimerRecord {
                    broadcast: record.broadcast.clone(),
                    name: name.clone(),
                    due: *due,
                })
            })
            .collect();
        assert_eq!(timers, expected);
        assert_eq!(timers.iter().filter(|timer| timer.broadcast == "news").count(), 2);
        assert_eq!(timers.iter().filter(|timer| timer.broadcast == "weather").count(), 0);
    }

    /// A batch whose write fills the store: every request is answered as it was written. A
    /// request answered "failed" left nothing behind, and one answered "committed" is there,
    /// even when SQLite rolled back the whole transaction after the failing write.
    #[test]
    fn a_full_store_answers_each_request_of_a_batch_as_written() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("onair.db");
        drop(SqliteStore::open(&path).unwrap());
        let mut connection = Connection::open(&path).unwrap();
        configure(&connection).unwrap();
        let pages: i64 = connection.query_row("PRAGMA page_count", [], |row| row.get(0)).unwrap();
        connection.pragma_update(None, "max_page_count", pages + 8).unwrap();
        let mut huge = commit("huge", 1, &[], None);
        huge.broadcast = "sport".into();
        huge.instance.as_mut().unwrap().broadcast = "sport".into();
        huge.event = json!({"padding": "x".repeat(1 << 20)});
        let mut replies = Vec::new();
        let mut batch = Vec::new();
        for (index, commit) in
            [commit("before", 1, &["notify"], None), huge, commit("after", 2, &[], None)].into_iter().enumerate()
        {
            let (reply, answer) = std::sync::mpsc::channel();
            replies.push((index, commit.event_id.clone(), commit.broadcast.clone(), answer));
            batch.push(Request::Commit(vec![commit], reply));
        }
        write_batch(&mut connection, batch);
        connection.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        let mut answered = Vec::new();
        for (index, event_id, broadcast, answer) in replies {
            let result = answer.recv().unwrap();
            let stored = store.processed(&[(event_id.clone(), broadcast)]).unwrap()[0];
            assert_eq!(result.is_ok(), stored, "request {index} ({event_id}): answered {result:?}, stored {stored}");
            if let Err(error) = &result {
                assert_eq!(error.fault(), Some(Fault::DiskFull), "{event_id}: {error}");
            }
            answered.push(result.is_ok());
        }
        assert!(!answered[1], "the write that does not fit fails");
        assert_eq!(answered[0], answered[2], "the rest of the batch shares one fate: {answered:?}");
    }

    #[test]
    fn a_commit_is_atomic_deduplicated_and_migrations_are_versioned() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("onair.db");
        let store = SqliteStore::open(&path).unwrap();
        let Committed::Applied { outbox, .. } =
            store.commit(vec![commit("e1", 1, &["channel.start", "notify"], None)]).unwrap().remove(0)
        else {
            panic!("applied")
        };
        assert_eq!(outbox.len(), 2);
        assert_eq!(
            store.processed(&[("e1".into(), "news".into()), ("e9".into(), "news".into())]).unwrap(),
            [true, false]
        );
        // A batch with an event already processed is refused whole.
        let unexpected = store.commit(vec![commit("e5", 2, &[], None), commit("e1", 3, &["channel.start"], None)]);
        assert!(matches!(unexpected, Err(Error::UnexpectedDuplicate { .. })), "{unexpected:?}");
        let mut duplicate = commit("e1", 2, &["channel.start"], None);
        duplicate.duplicate = true;
        assert_eq!(store.commit(vec![duplicate]).unwrap(), [Committed::Duplicate]);
        let instances = store.load_instances().unwrap();
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].seq, 1, "neither the refused batch nor the duplicate changed anything");
        assert_eq!(instances[0].timers.len(), 1);
        assert_eq!(store.load_instance("news").unwrap().unwrap().state, "warming");
        assert_eq!(store.processed(&[("e5".into(), "news".into())]).unwrap(), [false]);
        assert_eq!(store.pending_actions().unwrap().len(), 2);
        let kinds: Vec<String> = store.audit("news", 10).unwrap().into_iter().map(|row| row.kind).collect();
        assert_eq!(kinds, ["decision", "duplicate"]);

        // The first action fails: the second of the same decision is skipped.
        let failure = Completion { outbox_id: outbox[0].id, succeeded: false, result: json!({"error": "x"}) };
        let Committed::Applied { skipped, .. } =
            store.commit(vec![commit("e2", 2, &[], Some(failure))]).unwrap().remove(0)
        else {
            panic!()
        };
        assert_eq!(skipped, vec![outbox[1].id]);
        assert!(store.pending_actions().unwrap().is_empty());
        assert_eq!(store.integrity_check().unwrap(), "ok");
        drop(store);

        let connection = Connection::open(&path).unwrap();
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        connection.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(read_schema(&connection, &path, true), Err(Error::TooNew { found: 99, .. })));
        let journal: String = connection.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
        assert_eq!(journal, "wal");
    }

    #[test]
    fn processed_ids_are_purged_after_the_retention() {
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&directory.path().join("onair.db")).unwrap();
        store.commit(vec![commit("old", 1, &[], None)]).unwrap();
        let purged = store.purge_processed(fixed_now() + chrono::Duration::seconds(1)).unwrap();
        assert_eq!(purged, 1);
    }

    #[test]
    fn many_concurrent_commits_are_grouped_and_all_land() {
        let directory = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&directory.path().join("onair.db")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|thread| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    for index in 0..50 {
                        let mut commit = commit(&format!("e{thread}-{index}"), index, &["notify"], None);
                        commit.broadcast = format!("b{thread}");
                        if let Some(instance) = commit.instance.as_mut() {
                            instance.broadcast = commit.broadcast.clone();
                        }
                        store.commit(vec![commit]).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        assert_eq!(store.pending_actions().unwrap().len(), 400);
        assert_eq!(store.load_instances().unwrap().len(), 8);
    }
}
