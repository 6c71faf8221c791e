//! Model-based property test of the store: random sequences of operations across many
//! broadcasts, applied to a real `SqliteStore` (a temporary file) and to a small in-memory
//! reference model; after every step every read of the store must equal the model's.
//!
//! The model is the specification of what belongs to whom: an instance, its timers, processed
//! ids, outbox rows and audit rows are each one broadcast's, and no operation on one broadcast
//! may show through a read of another.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use onair::event;
use onair::store::{
    AuditRow, BroadcastChange, BroadcastRecord, Change, Commit, Committed, Completion, Cursor, DecisionRecord, Error,
    Expected, InstanceRecord, NewAction, OutboxRow, ScheduleRecord, SqliteStore, Store,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

/// Broadcasts the operations touch (the first few much more often than the rest).
const BROADCASTS: usize = 20;
/// Event ids per broadcast: a small pool, so that repeats (duplicates) are frequent. The same id
/// is used by every broadcast, which must not make one broadcast's event another's duplicate.
const EVENTS: usize = 5;
/// The broadcasts most operations touch (and whose audit is also read with a small limit).
const HOT: usize = 4;
const STATES: [&str; 5] = ["idle", "warming", "standby", "live", "failed"];
const OUTCOMES: [&str; 4] = ["armed", "published", "missed", "skipped"];

fn name(broadcast: usize) -> String {
    format!("b{broadcast:02}")
}

fn event_id(event: usize) -> String {
    format!("e{event}")
}

/// One decision of a batch.
#[derive(Debug, Clone)]
struct Decision {
    broadcast: usize,
    event: usize,
    state: usize,
    var: u8,
    /// `false`: an ignored event that leaves the instance as it is (`instance: None`).
    with_instance: bool,
    /// Timer name index to seconds from now.
    timers: BTreeMap<usize, i64>,
    actions: usize,
    /// An outbox row (any broadcast's, or none) this event reports on, and whether it succeeded.
    completes: Option<(usize, bool)>,
    transition: Option<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    /// A lane's batch of decisions, recorded all or nothing.
    Decide(Vec<Decision>),
    /// An event the lane already knew as processed: an audit row only.
    Duplicate { broadcast: usize, event: usize },
    /// A decision carrying another broadcast's instance: refused whole.
    Foreign { broadcast: usize, other: usize, event: usize },
    /// An action attempt starts (any row, or one that does not exist).
    Started { row: usize, attempt: u32 },
    /// Processed ids older than `back` seconds are forgotten.
    Purge { back: i64 },
    /// Schedule progress with or without an audit row.
    Schedule { broadcast: usize, rank: u8, outcome: Option<usize>, with_event: bool },
    /// A definition change of one broadcast (`put`: its new `channel`, else a removal), expecting
    /// `expect`: 0 any, 1 absent, 2 the current revision, 3 a stale or made-up one.
    Define { broadcast: usize, put: Option<u8>, expect: u8 },
}

fn broadcast() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0..HOT, 2 => 0..BROADCASTS]
}

fn decision() -> impl Strategy<Value = Decision> {
    (
        broadcast(),
        0..EVENTS,
        0..STATES.len(),
        any::<u8>(),
        proptest::bool::weighted(0.85),
        proptest::collection::btree_map(0..3usize, -60..3600i64, 0..3),
        prop_oneof![2 => Just(0usize), 2 => 1..3usize],
        proptest::option::weighted(0.4, (any::<usize>(), proptest::bool::weighted(0.7))),
        proptest::option::of(0..20u8),
    )
        .prop_map(|(broadcast, event, state, var, with_instance, timers, actions, completes, transition)| {
            Decision { broadcast, event, state, var, with_instance, timers, actions, completes, transition }
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => proptest::collection::vec(decision(), 1..4).prop_map(Op::Decide),
        2 => (broadcast(), 0..EVENTS).prop_map(|(broadcast, event)| Op::Duplicate { broadcast, event }),
        1 => (broadcast(), broadcast(), 0..EVENTS)
            .prop_filter("another broadcast", |(broadcast, other, _)| broadcast != other)
            .prop_map(|(broadcast, other, event)| Op::Foreign { broadcast, other, event }),
        3 => (any::<usize>(), 1..5u32).prop_map(|(row, attempt)| Op::Started { row, attempt }),
        1 => (0..40i64).prop_map(|back| Op::Purge { back }),
        2 => (broadcast(), 0..5u8, proptest::option::of(0..OUTCOMES.len()), any::<bool>())
            .prop_map(|(broadcast, rank, outcome, with_event)| Op::Schedule { broadcast, rank, outcome, with_event }),
        2 => (broadcast(), proptest::option::weighted(0.7, any::<u8>()), 0..4u8)
            .prop_map(|(broadcast, put, expect)| Op::Define { broadcast, put, expect }),
    ]
}

/// The reference: what each read must answer.
#[derive(Debug, Clone)]
struct Model {
    instances: BTreeMap<String, InstanceRecord>,
    processed: BTreeMap<(String, String), i64>,
    outbox: Vec<OutboxRow>,
    audit: Vec<AuditRow>,
    cursors: BTreeMap<String, Cursor>,
    definitions: BTreeMap<String, BroadcastRecord>,
    /// The last revision given (one counter for all broadcasts).
    revision: i64,
    next_outbox: i64,
    next_audit: i64,
}

impl Model {
    fn new() -> Self {
        Self {
            instances: BTreeMap::new(),
            processed: BTreeMap::new(),
            outbox: Vec::new(),
            audit: Vec::new(),
            cursors: BTreeMap::new(),
            definitions: BTreeMap::new(),
            revision: 0,
            next_outbox: 1,
            next_audit: 1,
        }
    }

    /// A definition change, as the specification says: refused whole when the revision is not
    /// the expected one; a removal takes the broadcast's instance (with its timers) and schedule
    /// cursor with it and leaves its audit trail, outbox and processed ids.
    fn define(&mut self, change: &BroadcastChange) -> Result<Option<BroadcastRecord>, Option<i64>> {
        let found = self.definitions.get(&change.id).map(|record| record.revision);
        let expected = match change.expected {
            Expected::Any => true,
            Expected::Absent => found.is_none(),
            Expected::Revision(revision) => found == Some(revision),
        };
        if !expected {
            return Err(found);
        }
        let written = match &change.change {
            Change::Put(next) => {
                self.revision += 1;
                let incarnation = self.definitions.get(&change.id).map_or(self.revision, |record| record.incarnation);
                let record =
                    BroadcastRecord { revision: self.revision, incarnation, updated: change.at, ..next.clone() };
                self.definitions.insert(change.id.clone(), record.clone());
                Some(record)
            }
            Change::Remove => {
                self.definitions.remove(&change.id);
                self.instances.remove(&change.id);
                self.cursors.remove(&change.id);
                None
            }
            Change::Note => None,
        };
        let mut detail = change.detail.clone();
        detail["revision"] = written.as_ref().map_or(Value::Null, |record| record.revision.into());
        self.push_audit(&change.id, change.at, "config", None, None, None, None, change.reason.clone(), detail);
        Ok(written)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_audit(
        &mut self,
        broadcast: &str,
        at: DateTime<Utc>,
        kind: &str,
        event_id: Option<String>,
        event_type: Option<String>,
        from_to: Option<(String, String)>,
        transition: Option<i64>,
        reason: String,
        detail: Value,
    ) {
        let (from, to) = from_to.unzip();
        self.audit.push(AuditRow {
            id: self.next_audit,
            broadcast: broadcast.to_string(),
            at,
            kind: kind.into(),
            event_id,
            event_type,
            from,
            to,
            transition,
            reason,
            detail,
        });
        self.next_audit += 1;
    }

    /// One decision, as the specification says; `None` when its event was already processed.
    fn commit(&mut self, commit: &Commit) -> Option<Committed> {
        let at = commit.at;
        if commit.duplicate {
            self.push_audit(
                &commit.broadcast,
                at,
                "duplicate",
                Some(commit.event_id.clone()),
                Some(commit.event_type.clone()),
                None,
                None,
                "duplicate: this event was already processed".into(),
                json!({}),
            );
            return Some(Committed::Duplicate);
        }
        let key = (commit.event_id.clone(), commit.broadcast.clone());
        if self.processed.contains_key(&key) {
            return None;
        }
        self.processed.insert(key, at.timestamp_millis());
        let mut decision_seq = 0;
        if let Some(instance) = &commit.instance {
            decision_seq = instance.seq;
            self.instances.insert(instance.broadcast.clone(), instance.clone());
        }
        let decision = &commit.decision;
        self.push_audit(
            &commit.broadcast,
            at,
            "decision",
            Some(commit.event_id.clone()),
            Some(commit.event_type.clone()),
            Some((decision.from.clone(), decision.to.clone())),
            decision.transition.map(|index| index as i64),
            decision.reason.clone(),
            json!({"event": commit.event, "decision": decision.detail, "outcome": decision.outcome}),
        );
        let mut skipped = Vec::new();
        if let Some(completion) = &commit.completes {
            // Only the decision's own broadcast's action can be closed by it.
            let found =
                self.outbox.iter().position(|row| row.id == completion.outbox_id && row.broadcast == commit.broadcast);
            if let Some(index) = found {
                let status = if completion.succeeded { "succeeded" } else { "failed" };
                if self.outbox[index].status == "pending" {
                    self.outbox[index].status = status.into();
                }
                let row = self.outbox[index].clone();
                self.push_audit(
                    &row.broadcast,
                    at,
                    "action",
                    Some(commit.event_id.clone()),
                    None,
                    None,
                    None,
                    format!("action {} (#{}) {status}", row.kind, row.id),
                    json!({"outbox_id": row.id, "result": completion.result}),
                );
                if !completion.succeeded {
                    for other in self.outbox.iter_mut().filter(|other| {
                        other.broadcast == row.broadcast
                            && other.decision == row.decision
                            && other.position > row.position
                            && other.status == "pending"
                    }) {
                        other.status = "skipped".into();
                        skipped.push(other.id);
                    }
                }
            }
        }
        let mut outbox = Vec::new();
        for (position, action) in commit.actions.iter().enumerate() {
            let row = OutboxRow {
                id: self.next_outbox,
                broadcast: commit.broadcast.clone(),
                decision: decision_seq,
                position: position as i64,
                kind: action.kind.clone(),
                params: action.params.clone(),
                status: "pending".into(),
                attempts: 0,
                created: at,
            };
            self.next_outbox += 1;
            self.outbox.push(row.clone());
            outbox.push(row);
        }
        Some(Committed::Applied { outbox, skipped })
    }

    fn action_started(&mut self, outbox_id: i64, attempt: u32, at: DateTime<Utc>) {
        let Some(row) = self.outbox.iter_mut().find(|row| row.id == outbox_id) else { return };
        row.attempts = i64::from(attempt);
        let (broadcast, kind) = (row.broadcast.clone(), row.kind.clone());
        self.push_audit(
            &broadcast,
            at,
            "action",
            None,
            None,
            None,
            None,
            format!("action {kind} (#{outbox_id}) started, attempt {attempt}"),
            json!({"outbox_id": outbox_id, "attempt": attempt}),
        );
    }

    fn purge(&mut self, before: DateTime<Utc>) -> usize {
        let count = self.processed.len();
        self.processed.retain(|_, at| *at >= before.timestamp_millis());
        count - self.processed.len()
    }

    fn schedule(&mut self, record: &ScheduleRecord) {
        self.cursors.insert(record.broadcast.clone(), record.cursor);
        if let Some(outcome) = &record.outcome {
            let mut detail = record.detail.clone();
            if let Value::Object(map) = &mut detail {
                map.insert("outcome".into(), Value::String(outcome.clone()));
            }
            self.push_audit(
                &record.broadcast,
                record.at,
                "schedule",
                record.event_id.clone(),
                record.event_id.as_ref().map(|_| event::SCHEDULE_FIRED.to_string()),
                None,
                None,
                record.reason.clone(),
                detail,
            );
        }
    }

    fn audit(&self, broadcast: &str) -> Vec<AuditRow> {
        self.audit.iter().filter(|row| row.broadcast == broadcast).cloned().collect()
    }
}

/// Builds the store's commit for `decision` on the state `model` has reached.
fn build(model: &Model, decision: &Decision, at: DateTime<Utc>) -> Commit {
    let broadcast = name(decision.broadcast);
    let current = model.instances.get(&broadcast);
    let from = current.map_or("idle".to_string(), |instance| instance.state.clone());
    let state = STATES[decision.state].to_string();
    let mut vars = Map::new();
    vars.insert("var".into(), json!(decision.var));
    vars.insert("owner".into(), json!(broadcast));
    let instance = decision.with_instance.then(|| InstanceRecord {
        broadcast: broadcast.clone(),
        machine: "live".into(),
        state: state.clone(),
        vars,
        timers: decision
            .timers
            .iter()
            .map(|(timer, seconds)| (format!("t{timer}"), at + chrono::Duration::milliseconds(seconds * 1000 + 7)))
            .collect(),
        since: at,
        seq: current.map_or(0, |instance| instance.seq) + 1,
    });
    let completes = decision.completes.as_ref().map(|(row, succeeded)| {
        // Any row ever queued, whoever's it is; or one past the last (no such row).
        let outbox_id = (row % model.next_outbox as usize) as i64 + 1;
        Completion { outbox_id, succeeded: *succeeded, result: json!({"n": outbox_id}) }
    });
    let kind = match &completes {
        Some(completion) if completion.succeeded => event::ACTION_SUCCEEDED,
        Some(_) => event::ACTION_FAILED,
        None => event::SCHEDULE_FIRED,
    };
    Commit {
        duplicate: false,
        broadcast: broadcast.clone(),
        machine: "live".into(),
        at,
        event_id: event_id(decision.event),
        event_type: kind.into(),
        event: json!({"id": event_id(decision.event), "subject": broadcast}),
        decision: DecisionRecord {
            outcome: if decision.with_instance { "transition" } else { "ignored" }.into(),
            from: from.clone(),
            to: if decision.with_instance { state } else { from },
            transition: decision.transition.map(usize::from),
            reason: format!("reason of {broadcast}"),
            detail: json!({"actions": decision.actions}),
        },
        instance,
        actions: (0..decision.actions)
            .map(|position| NewAction { kind: format!("act{position}"), params: json!({"of": broadcast}) })
            .collect(),
        completes,
    }
}

fn duplicate(broadcast: usize, event: usize, at: DateTime<Utc>) -> Commit {
    Commit {
        duplicate: true,
        broadcast: name(broadcast),
        machine: "live".into(),
        at,
        event_id: event_id(event),
        event_type: event::SCHEDULE_FIRED.into(),
        event: Value::Null,
        decision: DecisionRecord {
            outcome: "duplicate".into(),
            from: String::new(),
            to: String::new(),
            transition: None,
            reason: String::new(),
            detail: Value::Null,
        },
        instance: None,
        actions: Vec::new(),
        completes: None,
    }
}

fn sorted_skips(committed: Vec<Committed>) -> Vec<Committed> {
    committed
        .into_iter()
        .map(|committed| match committed {
            Committed::Applied { outbox, mut skipped } => {
                skipped.sort_unstable();
                Committed::Applied { outbox, skipped }
            }
            other => other,
        })
        .collect()
}

/// A definition change of `broadcast` (see `Op::Define`).
fn definition_change(
    model: &Model,
    broadcast: &str,
    put: Option<u8>,
    expect: u8,
    at: DateTime<Utc>,
) -> BroadcastChange {
    let current = model.definitions.get(broadcast).map(|record| record.revision);
    let expected = match expect {
        0 => Expected::Any,
        1 => Expected::Absent,
        2 => current.map_or(Expected::Absent, Expected::Revision),
        _ => Expected::Revision(current.map_or(model.revision + 1, |revision| revision - 1)),
    };
    let change = match put {
        Some(channel) => Change::Put(BroadcastRecord {
            id: broadcast.to_string(),
            origin: if channel % 2 == 0 { "api" } else { "file" }.into(),
            revision: 0,
            incarnation: 0,
            definition: json!({"channel": format!("{broadcast}-{channel}")}).as_object().cloned().unwrap_or_default(),
            updated: at,
            updated_by: "model".into(),
            deleting: channel % 5 == 0,
        }),
        None => Change::Remove,
    };
    BroadcastChange {
        id: broadcast.to_string(),
        expected,
        change,
        at,
        reason: format!("{broadcast} changed"),
        detail: json!({"who": "model"}),
    }
}

/// Every read of the store against the model.
fn compare(store: &SqliteStore, model: &Model, step: usize) -> Result<(), TestCaseError> {
    for broadcast in (0..BROADCASTS).map(name) {
        let stored = store.load_instance(&broadcast).map_err(fail)?;
        prop_assert_eq!(
            stored.as_ref(),
            model.instances.get(&broadcast),
            "step {}: load_instance({})",
            step,
            broadcast
        );
        let audit = store.audit(&broadcast, 10_000).map_err(fail)?;
        let expected = model.audit(&broadcast);
        prop_assert_eq!(&audit, &expected, "step {}: audit({})", step, broadcast);
    }
    for broadcast in (0..HOT).map(name) {
        let expected = model.audit(&broadcast);
        let last = store.audit(&broadcast, 2).map_err(fail)?;
        prop_assert_eq!(
            &last[..],
            &expected[expected.len().saturating_sub(2)..],
            "step {}: audit({}, 2)",
            step,
            broadcast
        );
    }
    let all = store.load_instances().map_err(fail)?;
    prop_assert_eq!(all, model.instances.values().cloned().collect::<Vec<_>>(), "step {}: load_instances", step);
    let pending: Vec<OutboxRow> = model.outbox.iter().filter(|row| row.status == "pending").cloned().collect();
    prop_assert_eq!(store.pending_actions().map_err(fail)?, pending, "step {}: pending_actions", step);
    let keys: Vec<(String, String)> = (0..BROADCASTS)
        .flat_map(|broadcast| (0..EVENTS).map(move |event| (event_id(event), name(broadcast))))
        .collect();
    let expected: Vec<bool> = keys.iter().map(|key| model.processed.contains_key(key)).collect();
    prop_assert_eq!(store.processed(&keys).map_err(fail)?, expected, "step {}: processed", step);
    prop_assert_eq!(store.schedule_cursors().map_err(fail)?, model.cursors.clone(), "step {}: schedule_cursors", step);
    let definitions: Vec<BroadcastRecord> = model.definitions.values().cloned().collect();
    prop_assert_eq!(store.broadcasts().map_err(fail)?, definitions, "step {}: broadcasts", step);
    Ok(())
}

fn fail(error: Error) -> TestCaseError {
    TestCaseError::fail(format!("store error: {error}"))
}

/// Where the test's database files go: tmpfs when there is one (the same SQLite file, without
/// the disk's fsync time, which is most of the run otherwise), else the temporary directory.
fn scratch() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() { tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir()) } else { tempfile::tempdir() }
}

/// Applies `ops` to a fresh store and to the model, comparing after each; returns the number of
/// reads compared.
fn run(ops: &[Op]) -> Result<usize, TestCaseError> {
    let directory = scratch().map_err(|error| TestCaseError::fail(error.to_string()))?;
    let store = SqliteStore::open(&directory.path().join("onair.db")).map_err(fail)?;
    let mut model = Model::new();
    let start = DateTime::parse_from_rfc3339("2026-11-24T17:00:00.250Z").unwrap().with_timezone(&Utc);
    let mut reads = 0;
    for (step, op) in ops.iter().enumerate() {
        let at = start + chrono::Duration::milliseconds(step as i64 * 1_003);
        match op {
            Op::Decide(decisions) => {
                // The batch is decided on a copy; it replaces the model only if all of it applies.
                let mut working = model.clone();
                let mut commits = Vec::new();
                let mut expected = Ok(Vec::new());
                for decision in decisions {
                    let commit = build(&working, decision, at);
                    match working.commit(&commit) {
                        Some(committed) => {
                            if let Ok(done) = &mut expected {
                                done.push(committed);
                            }
                        }
                        None => {
                            if expected.is_ok() {
                                expected = Err((commit.event_id.clone(), commit.broadcast.clone()));
                            }
                        }
                    }
                    commits.push(commit);
                }
                let result = store.commit(commits);
                match expected {
                    Ok(done) => {
                        prop_assert_eq!(sorted_skips(result.map_err(fail)?), sorted_skips(done), "step {}", step);
                        model = working;
                    }
                    Err((event_id, broadcast)) => match result {
                        Err(Error::UnexpectedDuplicate { event_id: found, broadcast: of }) => {
                            prop_assert_eq!((found, of), (event_id, broadcast), "step {}", step);
                        }
                        other => prop_assert!(false, "step {}: expected a refused batch, got {:?}", step, other),
                    },
                }
            }
            Op::Duplicate { broadcast, event } => {
                let commit = duplicate(*broadcast, *event, at);
                let done = model.commit(&commit).into_iter().collect::<Vec<_>>();
                prop_assert_eq!(store.commit(vec![commit]).map_err(fail)?, done, "step {}", step);
            }
            Op::Foreign { broadcast, other, event } => {
                let decision = Decision {
                    broadcast: *broadcast,
                    event: *event,
                    state: 4,
                    var: 0,
                    with_instance: true,
                    timers: BTreeMap::new(),
                    actions: 1,
                    completes: None,
                    transition: None,
                };
                let mut commit = build(&model, &decision, at);
                if let Some(instance) = commit.instance.as_mut() {
                    instance.broadcast = name(*other);
                }
                let result = store.commit(vec![commit]);
                prop_assert!(matches!(result, Err(Error::Mismatch { .. })), "step {}: {:?}", step, result);
            }
            Op::Started { row, attempt } => {
                let outbox_id = (row % model.next_outbox as usize) as i64 + 1;
                model.action_started(outbox_id, *attempt, at);
                store.action_started(outbox_id, *attempt, at).wait().map_err(fail)?;
            }
            Op::Purge { back } => {
                let before = at - chrono::Duration::seconds(*back);
                prop_assert_eq!(store.purge_processed(before).map_err(fail)?, model.purge(before), "step {}", step);
            }
            Op::Schedule { broadcast, rank, outcome, with_event } => {
                let broadcast = name(*broadcast);
                let record = ScheduleRecord {
                    broadcast: broadcast.clone(),
                    cursor: Cursor { at, air: at + chrono::Duration::minutes(5), rank: *rank },
                    at,
                    event_id: with_event.then(|| format!("{broadcast}/o1/{rank}")),
                    outcome: outcome.map(|outcome| OUTCOMES[outcome].to_string()),
                    reason: format!("step {rank} of {broadcast}"),
                    detail: json!({"rank": rank}),
                };
                model.schedule(&record);
                store.schedule_progress(vec![record]).map_err(fail)?;
            }
            Op::Define { broadcast, put, expect } => {
                let change = definition_change(&model, &name(*broadcast), *put, *expect, at);
                match (model.define(&change), store.change_broadcasts(vec![change])) {
                    (Ok(expected), Ok(written)) => prop_assert_eq!(written, vec![expected], "step {}", step),
                    (Err(found), Err(Error::Conflict { found: stored, .. })) => {
                        prop_assert_eq!(stored, found, "step {}: the conflict names the stored revision", step)
                    }
                    (model, store) => {
                        prop_assert!(false, "step {}: the model says {:?}, the store {:?}", step, model, store)
                    }
                }
            }
        }
        compare(&store, &model, step)?;
        reads += 1;
    }
    Ok(reads)
}

/// 64 random sequences of up to 40 operations each; prints how much was compared.
#[test]
fn every_read_of_the_store_matches_the_model() {
    let started = Instant::now();
    let config =
        ProptestConfig { cases: 64, max_shrink_iters: 2_000, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let steps = std::cell::Cell::new(0usize);
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        steps.set(steps.get() + run(&ops)?);
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    println!(
        "store model: 64 cases, {} steps across {BROADCASTS} broadcasts, every read compared after each ({} reads a step), {:.1} s (files in {})",
        steps.get(),
        BROADCASTS * 2 + HOT + 4,
        started.elapsed().as_secs_f64(),
        scratch()
            .map(|directory| directory.path().parent().map(|parent| parent.display().to_string()).unwrap_or_default())
            .unwrap_or_default()
    );
}

/// A fixed sequence that fails on a store mixing broadcasts up.
#[test]
fn three_broadcasts_in_different_states_read_back_their_own_records() {
    let started = Instant::now();
    let decide = |broadcast, event, state, actions| Decision {
        broadcast,
        event,
        state,
        var: broadcast as u8,
        with_instance: true,
        timers: BTreeMap::from([(broadcast, 60)]),
        actions,
        completes: None,
        transition: Some(1),
    };
    // b00 live with one action, b01 warming with two, b02 failed with none; then b00's first
    // action fails (skipping nothing), and b01 sees a duplicate.
    let ops = vec![
        Op::Decide(vec![decide(0, 0, 3, 1), decide(1, 0, 1, 2)]),
        Op::Decide(vec![decide(2, 0, 4, 0)]),
        Op::Duplicate { broadcast: 1, event: 0 },
        Op::Started { row: 0, attempt: 1 },
        Op::Schedule { broadcast: 2, rank: 1, outcome: Some(2), with_event: true },
        // Definitions: b00 and b02 defined, b01 refused (a made-up revision), then b02 (failed,
        // with a timer and a cursor) removed: its instance and cursor go, its audit stays.
        Op::Define { broadcast: 0, put: Some(2), expect: 1 },
        Op::Define { broadcast: 2, put: Some(4), expect: 0 },
        Op::Define { broadcast: 1, put: Some(6), expect: 3 },
        Op::Define { broadcast: 0, put: Some(8), expect: 2 },
        Op::Define { broadcast: 2, put: None, expect: 2 },
    ];
    let steps = run(&ops).unwrap();
    assert_eq!(steps, ops.len());
    println!(
        "store model, fixed sequence: {steps} steps compared in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}
