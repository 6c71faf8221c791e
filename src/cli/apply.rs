//! `onair apply -f broadcasts.toml [--dry-run] [--prune]`: declarative, like `kubectl apply`.
//!
//! The file holds `[broadcasts.<id>]` tables, the config file's shape. Each API broadcast it names
//! is created (`PUT` with `If-None-Match: *`) or changed (`PUT` with `If-Match` of the revision
//! read, so that a change made meanwhile is reported, not overwritten); one whose definition is
//! already the file's is not sent. `--prune` deletes the API broadcasts the file does not name
//! (never the config file's). `--dry-run` prints each broadcast's diff and the plan's changes in
//! the next 48 hours (steps added, moved, removed), computed here with the local settings'
//! defaults, and changes nothing. Requests run `--concurrency` at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::ApplyArgs;
use super::client::{self, Client, Error};
use super::manage::{list, segment};
use crate::catalog::Parser;
use crate::schedule::plan::{Row, Scheduled};

/// How far ahead `--dry-run` compares the plans.
const PLAN_HOURS: u32 = 48;
/// How many plan changes `--dry-run` prints at most (all are counted).
const PLAN_LINES: usize = 200;

/// A broadcast as the daemon has it.
#[derive(Debug, Clone)]
struct Current {
    origin: String,
    revision: i64,
    definition: Option<Map<String, Value>>,
}

/// What applying the file does to one broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Create,
    Change {
        revision: i64,
    },
    Unchanged,
    Prune,
    /// The config file defines it: `apply` does not touch it.
    FileOwned,
}

/// `onair apply`.
pub async fn apply(client: &Client, parser: &Parser, args: &ApplyArgs, now: DateTime<Utc>) -> Result<ExitCode, Error> {
    let wanted = match read(&args.file) {
        Ok(wanted) => wanted,
        Err(problems) => {
            eprintln!("error: {} is not a file of [broadcasts.<id>] tables:", args.file.display());
            for problem in problems {
                eprintln!("  - {problem}");
            }
            return Ok(ExitCode::from(client::EXIT_INVALID));
        }
    };
    let current = current(client, &wanted, usize::from(args.concurrency)).await?;
    let steps = steps(&wanted, &current, args.prune);
    if args.dry_run {
        return Ok(dry_run(parser, &wanted, &current, &steps, now));
    }
    let started = std::time::Instant::now();
    let outcomes = send(client, &wanted, &steps, usize::from(args.concurrency)).await;
    Ok(summary(&steps, &outcomes, started.elapsed()))
}

/// The file's broadcasts, each definition as JSON; every problem of the file at once.
fn read(path: &Path) -> Result<BTreeMap<String, Map<String, Value>>, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|error| vec![format!("cannot read it: {error}")])?;
    let root: toml::Table = toml::from_str(&text).map_err(|error| vec![error.to_string().trim().to_string()])?;
    let mut problems = Vec::new();
    let mut wanted = BTreeMap::new();
    for (key, value) in root {
        match (key.as_str(), value) {
            ("broadcasts", toml::Value::Table(broadcasts)) => {
                for (id, definition) in broadcasts {
                    match json(definition) {
                        Value::Object(definition) => {
                            wanted.insert(id, definition);
                        }
                        _ => problems.push(format!("broadcasts.{id}: expected a table")),
                    }
                }
            }
            ("broadcasts", _) => problems.push("broadcasts: expected tables [broadcasts.<id>]".into()),
            (other, _) => problems.push(format!("{other}: only [broadcasts.<id>] tables are applied")),
        }
    }
    if problems.is_empty() { Ok(wanted) } else { Err(problems) }
}

/// A TOML value as JSON, dates and times as the text they were written as.
fn json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(text) => Value::String(text),
        toml::Value::Integer(number) => Value::from(number),
        toml::Value::Float(number) => Value::from(number),
        toml::Value::Boolean(flag) => Value::Bool(flag),
        toml::Value::Datetime(at) => Value::String(at.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        toml::Value::Table(table) => Value::Object(table.into_iter().map(|(key, value)| (key, json(value))).collect()),
    }
}

/// Every broadcast the daemon runs; the definitions of the API broadcasts the file names (asked
/// one by one, `concurrency` at a time, when the listing does not carry them).
async fn current(
    client: &Client,
    wanted: &BTreeMap<String, Map<String, Value>>,
    concurrency: usize,
) -> Result<BTreeMap<String, Current>, Error> {
    let mut current = BTreeMap::new();
    for entry in list(client).await? {
        let Some(id) = entry["id"].as_str() else { continue };
        current.insert(
            id.to_string(),
            Current {
                origin: entry["origin"].as_str().unwrap_or("file").to_string(),
                revision: entry["revision"].as_i64().unwrap_or(0),
                definition: entry["definition"].as_object().cloned(),
            },
        );
    }
    let missing: Vec<String> = current
        .iter()
        .filter(|(id, entry)| entry.origin == "api" && entry.definition.is_none() && wanted.contains_key(*id))
        .map(|(id, _)| id.clone())
        .collect();
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut asks = JoinSet::new();
    for id in missing {
        let (client, limit) = (client.clone(), Arc::clone(&limit));
        asks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let url = client.url(&format!("broadcasts/{}", segment(&id)), &[])?;
            let answer = client.get(&format!("get {id}"), url).await?;
            Ok::<_, Error>((id, answer))
        });
    }
    while let Some(joined) = asks.join_next().await {
        let Ok(asked) = joined else { continue };
        let (id, answer) = asked?;
        if let Some(entry) = current.get_mut(&id) {
            entry.definition = answer.body["definition"].as_object().cloned();
            if let Some(revision) = answer.body["revision"].as_i64() {
                entry.revision = revision;
            }
        }
    }
    Ok(current)
}

/// What to do with each broadcast, in id order.
fn steps(
    wanted: &BTreeMap<String, Map<String, Value>>,
    current: &BTreeMap<String, Current>,
    prune: bool,
) -> BTreeMap<String, Step> {
    let mut steps = BTreeMap::new();
    for (id, definition) in wanted {
        let step = match current.get(id) {
            None => Step::Create,
            Some(entry) if entry.origin != "api" => Step::FileOwned,
            Some(entry) if entry.definition.as_ref() == Some(definition) => Step::Unchanged,
            Some(entry) => Step::Change { revision: entry.revision },
        };
        steps.insert(id.clone(), step);
    }
    if prune {
        for (id, entry) in current {
            if entry.origin == "api" && !wanted.contains_key(id) {
                steps.insert(id.clone(), Step::Prune);
            }
        }
    }
    steps
}

/// `--dry-run`: each broadcast's diff, then the plan's changes; nothing is sent.
fn dry_run(
    parser: &Parser,
    wanted: &BTreeMap<String, Map<String, Value>>,
    current: &BTreeMap<String, Current>,
    steps: &BTreeMap<String, Step>,
    now: DateTime<Utc>,
) -> ExitCode {
    let mut counts = Counts::default();
    for (id, step) in steps {
        let before = current.get(id).and_then(|entry| entry.definition.as_ref());
        let after = wanted.get(id);
        let (sign, what) = match step {
            Step::Create => ('+', "create".to_string()),
            Step::Change { revision } => ('~', format!("change (revision {revision})")),
            Step::Prune => ('-', "prune".to_string()),
            Step::FileOwned => {
                ('!', "skipped: defined in the daemon's config file (change it there and reload)".into())
            }
            Step::Unchanged => {
                counts.unchanged += 1;
                continue;
            }
        };
        counts.note(step);
        println!("{sign} {id}: {what}");
        if matches!(step, Step::FileOwned) {
            continue;
        }
        let after = if matches!(step, Step::Prune) { None } else { after };
        for line in crate::catalog::diff(before, after) {
            println!("    {line}");
        }
    }
    let (changes, problems) = plan_changes(parser, wanted, current, steps, now);
    println!();
    println!(
        "plan changes in the next {PLAN_HOURS} h: {} added, {} moved, {} removed",
        changes.iter().filter(|change| change.starts_with('+')).count(),
        changes.iter().filter(|change| change.starts_with('~')).count(),
        changes.iter().filter(|change| change.starts_with('-')).count(),
    );
    for change in changes.iter().take(PLAN_LINES) {
        println!("  {change}");
    }
    if changes.len() > PLAN_LINES {
        println!("  … and {} more", changes.len() - PLAN_LINES);
    }
    println!();
    println!(
        "dry run: {} to create, {} to change, {} unchanged, {} to prune{}; nothing changed",
        counts.created,
        counts.changed,
        counts.unchanged,
        counts.pruned,
        if counts.skipped > 0 { format!(", {} skipped (config file)", counts.skipped) } else { String::new() },
    );
    if !problems.is_empty() {
        eprintln!(
            "{} problem{} (the daemon would refuse these):",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for problem in &problems {
            eprintln!("  - {problem}");
        }
        return ExitCode::from(client::EXIT_INVALID);
    }
    if counts.skipped > 0 { ExitCode::from(client::EXIT_REFUSED) } else { ExitCode::SUCCESS }
}

/// The plan's changes in the next `PLAN_HOURS` from the broadcasts that change (`+` added,
/// `~` moved, `-` removed, in time order), and the problems of the file's definitions as the
/// local settings read them.
fn plan_changes(
    parser: &Parser,
    wanted: &BTreeMap<String, Map<String, Value>>,
    current: &BTreeMap<String, Current>,
    steps: &BTreeMap<String, Step>,
    now: DateTime<Utc>,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut before = Vec::new();
    let mut after = Vec::new();
    for (id, step) in steps {
        if matches!(step, Step::Change { .. } | Step::Prune)
            && let Some(definition) = current.get(id).and_then(|entry| entry.definition.as_ref())
            && let Ok(broadcast) = parser.parse(id, definition)
        {
            before.push(broadcast);
        }
        if matches!(step, Step::Create | Step::Change { .. })
            && let Some(definition) = wanted.get(id)
        {
            match parser.parse(id, definition) {
                Ok(broadcast) => after.push(broadcast),
                Err(found) => problems.extend(found.iter().map(ToString::to_string)),
            }
        }
    }
    let mut changes = step_changes(&rows(&before, now), &rows(&after, now));
    changes.sort();
    (changes.into_iter().map(|(_, line)| line).collect(), problems)
}

/// Each broadcast's plan rows by step, in time order.
type Steps = BTreeMap<(String, String), Vec<Row>>;

fn rows(broadcasts: &[crate::broadcast::Broadcast], now: DateTime<Utc>) -> Steps {
    let scheduled: Vec<Scheduled<'_>> = broadcasts
        .iter()
        .filter_map(|broadcast| {
            let spec = broadcast.schedule.as_ref()?;
            Some(Scheduled { id: &broadcast.id, channel: &broadcast.channel, spec })
        })
        .collect();
    let mut steps = Steps::new();
    for row in crate::schedule::plan::plan(&scheduled, None, now, PLAN_HOURS) {
        let key = (row.broadcast.clone(), row.step.unwrap_or("(not on air)").to_string());
        steps.entry(key).or_default().push(row);
    }
    for rows in steps.values_mut() {
        rows.sort_by_key(|row| row.planned);
    }
    steps
}

/// The k-th step of a kind before and after: moved when its instant differs; the rest added or
/// removed. Each with its instant, to sort them.
fn step_changes(before: &Steps, after: &Steps) -> Vec<(DateTime<Utc>, String)> {
    let empty = Vec::new();
    let keys: BTreeSet<&(String, String)> = before.keys().chain(after.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        let (id, step) = key;
        let (old, new) = (before.get(key).unwrap_or(&empty), after.get(key).unwrap_or(&empty));
        for index in 0..old.len().max(new.len()) {
            let line = match (old.get(index), new.get(index)) {
                (None, Some(row)) => (row.planned, format!("+ {id} {step} {} ({})", stamp(row.planned), row.local)),
                (Some(row), None) => (row.planned, format!("- {id} {step} {} ({})", stamp(row.planned), row.local)),
                (Some(old), Some(new)) if old.planned != new.planned => (
                    new.planned,
                    format!("~ {id} {step} {} -> {} ({})", stamp(old.planned), stamp(new.planned), new.local),
                ),
                _ => continue,
            };
            changes.push(line);
        }
    }
    changes
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The outcome of one request.
type Outcome = Result<client::Answer, Error>;

/// Sends every create, change and prune, `concurrency` at a time (the prunes after the rest, so
/// that a broadcast moving to a new id never leaves its channel unscheduled).
async fn send(
    client: &Client,
    wanted: &BTreeMap<String, Map<String, Value>>,
    steps: &BTreeMap<String, Step>,
    concurrency: usize,
) -> BTreeMap<String, Outcome> {
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut outcomes = BTreeMap::new();
    for prunes in [false, true] {
        let mut requests = JoinSet::new();
        for (id, step) in steps {
            if matches!(step, Step::Prune) != prunes {
                continue;
            }
            let headers = match step {
                Step::Create => client::if_absent(),
                Step::Change { revision } => client::if_match(*revision),
                Step::Prune => reqwest::header::HeaderMap::new(),
                Step::Unchanged | Step::FileOwned => continue,
            };
            let body = Value::Object(wanted.get(id).cloned().unwrap_or_default());
            let (client, limit, id, prune) = (client.clone(), Arc::clone(&limit), id.clone(), prunes);
            requests.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let outcome = match client.url(&format!("broadcasts/{}", segment(&id)), &[]) {
                    Ok(url) if prune => client.delete(&format!("prune {id}"), url).await,
                    Ok(url) => client.put(&format!("apply {id}"), url, headers, &body).await,
                    Err(error) => Err(error),
                };
                (id, outcome)
            });
        }
        while let Some(joined) = requests.join_next().await {
            if let Ok((id, outcome)) = joined {
                outcomes.insert(id, outcome);
            }
        }
    }
    outcomes
}

#[derive(Debug, Default)]
struct Counts {
    created: usize,
    changed: usize,
    unchanged: usize,
    pruned: usize,
    skipped: usize,
    failed: usize,
}

impl Counts {
    fn note(&mut self, step: &Step) {
        match step {
            Step::Create => self.created += 1,
            Step::Change { .. } => self.changed += 1,
            Step::Unchanged => self.unchanged += 1,
            Step::Prune => self.pruned += 1,
            Step::FileOwned => self.skipped += 1,
        }
    }
}

/// Prints what was done to each broadcast and the counts; the exit code of the worst failure.
fn summary(
    steps: &BTreeMap<String, Step>,
    outcomes: &BTreeMap<String, Outcome>,
    elapsed: std::time::Duration,
) -> ExitCode {
    let mut counts = Counts::default();
    let mut code = 0u8;
    let mut said_missing = false;
    for (id, step) in steps {
        match (step, outcomes.get(id)) {
            (Step::Unchanged, _) => counts.unchanged += 1,
            (Step::FileOwned, _) => {
                counts.skipped += 1;
                code = code.max(client::EXIT_REFUSED);
                eprintln!("error: apply {id}: defined in the daemon's config file; change it there and reload");
            }
            (step, Some(Ok(answer))) => {
                counts.note(step);
                let revision = answer.etag.as_deref().map(|etag| format!(" (revision {etag})")).unwrap_or_default();
                match step {
                    Step::Create => println!("{id} created{revision}"),
                    Step::Change { .. } => println!("{id} changed{revision}"),
                    _ if answer.status == reqwest::StatusCode::ACCEPTED => {
                        println!("{id} pruned: being stopped, removed once idle")
                    }
                    _ => println!("{id} pruned"),
                }
            }
            (_, Some(Err(error))) => {
                counts.failed += 1;
                code = code.max(error.exit_code());
                // A daemon without this API refuses them all alike: said once.
                let missing = matches!(error, Error::Refused { status, .. } if *status == reqwest::StatusCode::METHOD_NOT_ALLOWED);
                if !missing || !std::mem::replace(&mut said_missing, true) {
                    eprintln!("error: {error}");
                }
            }
            (_, None) => {
                counts.failed += 1;
                code = code.max(1);
                eprintln!("error: {id}: the request did not complete");
            }
        }
    }
    println!(
        "applied in {:.1} s: {} created, {} changed, {} unchanged, {} pruned{}{}",
        elapsed.as_secs_f64(),
        counts.created,
        counts.changed,
        counts.unchanged,
        counts.pruned,
        if counts.skipped > 0 { format!(", {} skipped (config file)", counts.skipped) } else { String::new() },
        if counts.failed > 0 { format!(", {} failed", counts.failed) } else { String::new() },
    );
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn the_file_holds_broadcast_tables_only_and_every_problem_is_told() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("b.toml");
        std::fs::write(&path, "[broadcasts.news]\nchannel = \"n\"\nunits = { on_air = 2 }\n[broadcasts.sport.schedule]\nat = 2026-12-07T20:00:00Z\n").unwrap();
        let wanted = read(&path).unwrap();
        assert_eq!(wanted["news"], map(json!({"channel": "n", "units": {"on_air": 2}})));
        assert_eq!(wanted["sport"], map(json!({"schedule": {"at": "2026-12-07T20:00:00Z"}})));
        std::fs::write(&path, "[http]\nlisten = \"x\"\n[broadcasts]\nnews = 1\n").unwrap();
        let problems = read(&path).unwrap_err();
        assert_eq!(problems, ["broadcasts.news: expected a table", "http: only [broadcasts.<id>] tables are applied"]);
    }

    #[test]
    fn only_what_differs_is_sent_file_broadcasts_are_left_alone_and_prune_takes_api_broadcasts_only() {
        let wanted = BTreeMap::from([
            ("new".to_string(), map(json!({"channel": "a"}))),
            ("same".to_string(), map(json!({"channel": "b"}))),
            ("moved".to_string(), map(json!({"channel": "c2"}))),
            ("owned".to_string(), map(json!({"channel": "d"}))),
        ]);
        let api =
            |revision, definition: Value| Current { origin: "api".into(), revision, definition: Some(map(definition)) };
        let current = BTreeMap::from([
            ("same".to_string(), api(4, json!({"channel": "b"}))),
            ("moved".to_string(), api(5, json!({"channel": "c"}))),
            ("owned".to_string(), Current { origin: "file".into(), revision: 1, definition: None }),
            ("old".to_string(), api(6, json!({"channel": "e"}))),
            ("config".to_string(), Current { origin: "file".into(), revision: 2, definition: None }),
        ]);
        let steps = steps(&wanted, &current, true);
        assert_eq!(steps["new"], Step::Create);
        assert_eq!(steps["same"], Step::Unchanged);
        assert_eq!(steps["moved"], Step::Change { revision: 5 });
        assert_eq!(steps["owned"], Step::FileOwned);
        assert_eq!(steps["old"], Step::Prune);
        assert!(!steps.contains_key("config"), "a file broadcast is never pruned");
    }
}
