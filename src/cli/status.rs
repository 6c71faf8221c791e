//! `onair status`: each broadcast's state, pending actions, next timer and step, and last events,
//! read from the store without a running daemon.

use std::process::ExitCode;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Error, StatusArgs};
use crate::broadcast::Broadcast;
use crate::daemon::Settings;
use crate::store::{AuditRow, InstanceRecord, OutboxRow, ReadOnly, SqliteStore};

/// `onair status`.
pub fn status(settings: &Settings, args: &StatusArgs) -> Result<ExitCode, Error> {
    // No file yet is fine (nothing has run); a store this onair cannot read rightly (damaged, or
    // of a newer schema) is refused rather than shown wrongly.
    let store = match open(settings) {
        Ok(store) => store,
        Err(error) if error.is_unusable() => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(crate::config::EXIT_CODE as u8));
        }
        Err(error) => return Err(error.into()),
    };
    let broadcasts = broadcasts(settings, store.as_ref())?;
    if let Some(id) = &args.broadcast
        && !broadcasts.contains_key(id)
    {
        return Err(Error::UnknownBroadcast(id.clone()));
    }
    let report = report(&broadcasts, store.as_ref(), args, crate::clock::system().now())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if store.is_none() {
        println!("(no store at {} yet: nothing has run)", settings.engine.store.display());
    }
    for entry in &report {
        print_entry(entry);
    }
    Ok(ExitCode::SUCCESS)
}

/// The store, read-only; `None` when it does not exist yet.
fn open(settings: &Settings) -> Result<Option<ReadOnly>, crate::store::Error> {
    match settings.engine.store.exists() {
        false => Ok(None),
        true => SqliteStore::open_read_only(&settings.engine.store).map(Some),
    }
}

/// The broadcasts to show: the config file's, and those the API created (from the store), each
/// with its origin. An API definition that no longer reads is shown by its id alone.
pub(super) fn broadcasts(
    settings: &Settings,
    store: Option<&ReadOnly>,
) -> Result<BTreeMap<String, (&'static str, Broadcast)>, crate::store::Error> {
    let mut broadcasts: BTreeMap<String, (&'static str, Broadcast)> =
        settings.engine.broadcasts.iter().map(|(id, broadcast)| (id.clone(), ("file", broadcast.clone()))).collect();
    let parser =
        crate::catalog::Parser::new(settings.engine.defaults.clone(), settings.engine.content_key_policies.clone());
    for record in store.map(ReadOnly::broadcasts).transpose()?.unwrap_or_default() {
        if record.origin != "api" || broadcasts.contains_key(&record.id) {
            continue;
        }
        if let Ok(broadcast) = parser.parse(&record.id, &record.definition) {
            broadcasts.insert(record.id, ("api", broadcast));
        }
    }
    Ok(broadcasts)
}

/// One entry per broadcast shown (all, or the one asked for), in id order.
fn report(
    broadcasts: &BTreeMap<String, (&'static str, Broadcast)>,
    store: Option<&ReadOnly>,
    args: &StatusArgs,
    now: DateTime<Utc>,
) -> Result<Vec<Value>, crate::store::Error> {
    let instances = match store {
        Some(store) => store.load_instances()?,
        None => Vec::new(),
    };
    let pending = match store {
        Some(store) => store.pending_actions()?,
        None => Vec::new(),
    };
    let mut report = Vec::new();
    for (id, (origin, broadcast)) in broadcasts {
        if args.broadcast.as_ref().is_some_and(|only| only != id) {
            continue;
        }
        let audit = match store {
            Some(store) => store.audit(id, args.events.max(1) * 4)?,
            None => Vec::new(),
        };
        let instance = instances.iter().find(|instance| &instance.broadcast == id);
        let seen = Seen { instance, pending: &pending, audit: &audit };
        let mut entry = entry(id, broadcast, &seen, args.events, now);
        entry["origin"] = json!(origin);
        report.push(entry);
    }
    Ok(report)
}

/// What the store holds about one broadcast.
struct Seen<'a> {
    instance: Option<&'a InstanceRecord>,
    /// Every pending action (of every broadcast).
    pending: &'a [OutboxRow],
    /// The broadcast's most recent audit rows.
    audit: &'a [AuditRow],
}

/// One broadcast's entry: its state, pending actions, next timer and step, recent misses and the
/// last `events` decisions.
fn entry(id: &str, broadcast: &Broadcast, seen: &Seen<'_>, events: usize, now: DateTime<Utc>) -> Value {
    let Seen { instance, pending, audit } = *seen;
    let decisions: Vec<_> = audit.iter().filter(|row| row.kind == "decision" || row.kind == "duplicate").collect();
    let last: Vec<Value> = decisions[decisions.len().saturating_sub(events)..]
        .iter()
        .map(|row| json!({"at": row.at.to_rfc3339(), "event": row.event_type, "event_id": row.event_id, "reason": row.reason}))
        .collect();
    let actions: Vec<Value> = pending
        .iter()
        .filter(|row| row.broadcast == id)
        .map(|row| json!({"id": row.id, "action": row.kind, "attempts": row.attempts, "since": row.created.to_rfc3339()}))
        .collect();
    let next_timer = instance
        .and_then(|instance| instance.timers.iter().min_by_key(|(_, due)| **due))
        .map(|(name, due)| json!({"timer": name, "due": due.to_rfc3339()}));
    let next_step = broadcast
        .schedule
        .as_ref()
        .and_then(|spec| crate::schedule::plan::next_step(id, spec, now))
        .map(|row| json!({"step": row.step, "occurrence": row.occurrence, "planned": row.planned.to_rfc3339(), "local": row.local}));
    let missed = audit.iter().filter(|row| row.kind == "schedule" && row.detail["outcome"] == "missed").count();
    json!({
        "broadcast": id,
        "machine": broadcast.machine,
        "channel": broadcast.channel,
        "state": instance.map_or("idle (no event yet)".to_string(), |instance| instance.state.clone()),
        "since": instance.map(|instance| instance.since.to_rfc3339()),
        "vars": instance.map(|instance| Value::Object(instance.vars.clone())),
        "pending_actions": actions,
        "next_timer": next_timer,
        "next_step": next_step,
        "recently_missed_steps": missed,
        "last_events": last,
    })
}

/// Prints one entry as text: the state line, then one indented line per detail.
fn print_entry(entry: &Value) {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let since = entry["since"].as_str().map(|since| format!(" since {since}")).unwrap_or_default();
    println!(
        "{}  {}{since}  (machine {}, channel {})",
        text(&entry["broadcast"]),
        text(&entry["state"]),
        text(&entry["machine"]),
        text(&entry["channel"])
    );
    for action in entry["pending_actions"].as_array().into_iter().flatten() {
        println!("    pending  {} #{} (attempts {})", text(&action["action"]), action["id"], action["attempts"]);
    }
    let step = &entry["next_step"];
    if step.is_object() {
        println!(
            "    next     {} of {} at {} ({})",
            text(&step["step"]),
            text(&step["occurrence"]),
            text(&step["planned"]),
            text(&step["local"])
        );
    }
    if let Some(missed) = entry["recently_missed_steps"].as_u64().filter(|missed| *missed > 0) {
        println!("    missed   {missed} schedule steps among the recent audit rows (see the audit trail)");
    }
    let timer = &entry["next_timer"];
    if timer.is_object() {
        println!("    timer    {} at {}", text(&timer["timer"]), text(&timer["due"]));
    }
    for event in entry["last_events"].as_array().into_iter().flatten() {
        println!("    {}  {}: {}", text(&event["at"]), text(&event["event"]), text(&event["reason"]));
    }
}
