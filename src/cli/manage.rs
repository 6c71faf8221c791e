//! `onair get broadcasts`, `onair delete broadcast`, `onair audit`, `onair extend` and
//! `onair reload`: a running daemon's broadcasts, read and changed through its API (`client`).

use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::client::{Client, Error};
use super::{AuditArgs, ExtendArgs};

/// How many broadcasts one page of the listing asks for.
const PAGE: usize = 500;

/// Every broadcast the daemon runs, in id order, page after page (`next`); a daemon that does not
/// page answers them all at once.
pub async fn list(client: &Client) -> Result<Vec<Value>, Error> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", PAGE.to_string())];
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let answer = client.get("list the broadcasts", client.url("broadcasts", &query)?).await?;
        let page = answer.body["broadcasts"].as_array().cloned().unwrap_or_default();
        all.extend(page);
        // Stop on no cursor, and on a cursor that does not move (never loop on a daemon's answer).
        match cursor(&answer.body["next"]) {
            Some(next) if after.as_deref() != Some(next.as_str()) => after = Some(next),
            _ => return Ok(all),
        }
    }
}

/// A paging cursor (`next`), a string or a number; `None` at the end.
fn cursor(next: &Value) -> Option<String> {
    match next {
        Value::String(next) if !next.is_empty() => Some(next.clone()),
        Value::Number(next) => Some(next.to_string()),
        _ => None,
    }
}

/// `onair get broadcasts [ID]`.
pub async fn get(client: &Client, id: Option<&str>, as_json: bool) -> Result<ExitCode, Error> {
    if let Some(id) = id {
        let answer = client.get(&format!("get {id}"), client.url(&format!("broadcasts/{}", segment(id)), &[])?).await?;
        if as_json {
            println!("{}", pretty(&answer.body));
        } else {
            print!("{}", table(std::slice::from_ref(&answer.body)));
            if let Some(definition) = answer.body.get("definition").and_then(Value::as_object) {
                println!("\n{}", definition_toml(id, definition));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let broadcasts = list(client).await?;
    if as_json {
        println!("{}", pretty(&json!({ "broadcasts": broadcasts })));
    } else {
        print!("{}", table(&broadcasts));
    }
    Ok(ExitCode::SUCCESS)
}

/// The table of `onair get broadcasts`: id, origin, revision, state, channel, next step.
fn table(broadcasts: &[Value]) -> String {
    let mut rows = vec![["ID", "ORIGIN", "REVISION", "STATE", "CHANNEL", "NEXT STEP"].map(str::to_string)];
    for broadcast in broadcasts {
        let text = |key: &str| broadcast[key].as_str().unwrap_or("-").to_string();
        let state = broadcast["state"].as_str().or(broadcast["initial_state"].as_str()).unwrap_or("-");
        let state = if [&broadcast["removing"], &broadcast["deleting"]].iter().any(|flag| flag.as_bool() == Some(true))
        {
            format!("{state} (deleting)")
        } else {
            state.into()
        };
        let next = &broadcast["next_step"];
        let next = match (next["step"].as_str(), next["planned"].as_str()) {
            (Some(step), Some(planned)) => format!("{step} {planned}"),
            _ => "-".into(),
        };
        let revision = broadcast["revision"].as_i64().map_or_else(|| "-".into(), |revision| revision.to_string());
        rows.push([text("id"), text("origin"), revision, state, text("channel"), next]);
    }
    let widths: Vec<usize> =
        (0..6).map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}", width = *width)).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A definition as the `[broadcasts.<id>]` table it came from (JSON when TOML cannot say it).
pub fn definition_toml(id: &str, definition: &serde_json::Map<String, Value>) -> String {
    let mut root = toml::Table::new();
    let mut broadcasts = toml::Table::new();
    match serde_json::from_value::<toml::Table>(Value::Object(definition.clone())) {
        Ok(table) => {
            broadcasts.insert(id.to_string(), toml::Value::Table(table));
            root.insert("broadcasts".into(), toml::Value::Table(broadcasts));
            toml::to_string(&root).unwrap_or_else(|_| pretty(&Value::Object(definition.clone())))
        }
        Err(_) => pretty(&Value::Object(definition.clone())),
    }
}

/// `onair delete broadcast ID [--force]`.
pub async fn delete(client: &Client, id: &str, force: bool) -> Result<ExitCode, Error> {
    let query = if force { vec![("force", "true".to_string())] } else { Vec::new() };
    let url = client.url(&format!("broadcasts/{}", segment(id)), &query)?;
    let answer = client.delete(&format!("delete {id}"), url).await?;
    if answer.status == reqwest::StatusCode::ACCEPTED {
        let state = answer.body["state"].as_str().map(|state| format!(" (it is {state})")).unwrap_or_default();
        println!("broadcast {id} is being stopped{state}; it is removed once idle");
    } else {
        println!("broadcast {id} deleted");
    }
    Ok(ExitCode::SUCCESS)
}

/// `onair audit`.
pub async fn audit(client: &Client, args: &AuditArgs, now: DateTime<Utc>) -> Result<ExitCode, Error> {
    let mut query = vec![("limit", args.limit.to_string())];
    let filters = [("broadcast", args.broadcast.clone()), ("kind", args.kind.clone()), ("before", args.before.clone())];
    query.extend(filters.into_iter().filter_map(|(key, value)| Some((key, value?))));
    if let Some(since) = &args.since {
        query.push(("since", instant(since, now)));
    }
    if let Some(until) = &args.until {
        query.push(("until", instant(until, now)));
    }
    let answer = client.get("read the audit", client.url("audit", &query)?).await?;
    let entries = answer.body["entries"].as_array().cloned().unwrap_or_default();
    if args.json {
        println!(
            "{}",
            pretty(&json!({"entries": entries, "next": answer.body.get("next").cloned().unwrap_or(Value::Null)}))
        );
        return Ok(ExitCode::SUCCESS);
    }
    for entry in &entries {
        print!("{}", audit_line(entry));
    }
    if entries.is_empty() {
        println!("(no audit entries)");
    }
    if let Some(next) = cursor(&answer.body["next"]) {
        println!("(older entries: --before {next})");
    }
    Ok(ExitCode::SUCCESS)
}

/// One audit entry: when, which broadcast, what kind, what happened; a change's diff below it.
fn audit_line(entry: &Value) -> String {
    let text = |key: &str| entry[key].as_str().unwrap_or_default();
    let broadcast = if text("broadcast").is_empty() { "(all)" } else { text("broadcast") };
    let what = match (entry["from"].as_str(), entry["to"].as_str()) {
        (Some(from), Some(to)) if from != to => format!("{from} -> {to}: {}", text("reason")),
        _ => text("reason").to_string(),
    };
    let mut line = format!("{}  {broadcast}  {}  {what}\n", text("at"), text("kind"));
    let detail = &entry["detail"];
    let lines = detail["diff"].as_array().or(detail["problems"].as_array());
    for item in lines.into_iter().flatten().filter_map(Value::as_str) {
        line.push_str(&format!("    {item}\n"));
    }
    line
}

/// An instant for the audit's filters: a duration ago (`2h`), else as given (RFC 3339).
fn instant(given: &str, now: DateTime<Utc>) -> String {
    match humantime::parse_duration(given.trim()).ok().and_then(|ago| chrono::Duration::from_std(ago).ok()) {
        Some(ago) => (now - ago).to_rfc3339_opts(SecondsFormat::Secs, true),
        None => given.trim().to_string(),
    }
}

/// `onair extend ID --by D | --until INSTANT`.
pub async fn extend(client: &Client, args: &ExtendArgs) -> Result<ExitCode, Error> {
    let mut body = json!({"command": "extend"});
    if let Some(by) = &args.by {
        body["by"] = json!(by);
    }
    if let Some(until) = &args.until {
        body["until"] = json!(until);
    }
    let id = &args.id;
    let url = client.url(&format!("broadcasts/{}/commands", segment(id)), &[])?;
    let answer = client.post(&format!("extend {id}"), url, &body).await?;
    let event = answer.body["event_id"].as_str().unwrap_or("-");
    println!("extend of {id} accepted (event {event}); `onair get broadcasts {id}` shows the new times once applied");
    Ok(ExitCode::SUCCESS)
}

/// `onair reload`.
pub async fn reload(client: &Client) -> Result<ExitCode, Error> {
    let answer = client.post("reload", client.url("reload", &[])?, &json!({})).await?;
    let body = &answer.body;
    let ids = |key: &str| -> String {
        let ids: Vec<&str> =
            body[key].as_array().map(|ids| ids.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if ids.is_empty() { "-".into() } else { ids.join(", ") }
    };
    println!("reloaded");
    for key in ["created", "changed", "removed", "retiring"] {
        println!("  {key:<10} {}", ids(key));
    }
    println!("  {:<10} {}", "unchanged", body["unchanged"].as_u64().unwrap_or(0));
    let restart = ids("restart_needed");
    if restart != "-" {
        println!("needs a restart to take effect: {restart}");
    }
    Ok(ExitCode::SUCCESS)
}

/// An id as one path segment (ids are checked by the daemon; nothing here may add a path).
pub fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_origin_revision_state_and_next_step() {
        let broadcasts = [
            json!({"id": "news", "origin": "file", "revision": 3, "state": "live", "channel": "news",
                   "next_step": {"step": "end", "planned": "2026-12-07T20:00:00.000Z"}}),
            json!({"id": "sport", "origin": "api", "revision": 12, "state": null, "initial_state": "idle",
                   "channel": "arena", "next_step": null}),
            json!({"id": "gone", "origin": "api", "revision": 13, "state": "live", "removing": true, "channel": "g"}),
        ];
        let text = table(&broadcasts);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "ORIGIN", "REVISION", "STATE", "CHANNEL", "NEXT", "STEP"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["news", "file", "3", "live", "news", "end", "2026-12-07T20:00:00.000Z"]
        );
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["sport", "api", "12", "idle", "arena", "-"]);
        assert!(lines[3].contains("live (deleting)"), "{text}");
    }

    #[test]
    fn ids_stay_one_path_segment_and_since_takes_a_duration_ago() {
        assert_eq!(segment("news"), "news");
        assert_eq!(segment("../x?y"), "%2E%2E%2Fx%3Fy");
        let now = DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(instant("2h", now), "2026-12-07T10:00:00Z");
        assert_eq!(instant("2026-12-01T00:00:00Z", now), "2026-12-01T00:00:00Z");
    }
}
