//! Broadcasts changed while onair runs, through the API of a real daemon (RabbitMQ, engine,
//! SQLite, emulator): create, replace, delete (forced), validation, optimistic concurrency,
//! tokens and roles, restarts, the paged list and the paged audit.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use onair::daemon::Daemon;
use onair::http::auth::{NamedToken, Role};
use onair::machine::Library;
use onair::store::SqliteStore;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::broker::EXCLUSIVE;
use crate::helpers::{TestEmulator, emulator_settings};
use crate::operations::until_async;
use crate::rabbit;
use crate::schedule::daemon_settings;

pub(crate) const ADMIN: &str = "admin-alice-secret-0123456789";
pub(crate) const OPERATOR: &str = "operator-olga-secret-0123456789";
pub(crate) const VIEWER: &str = "viewer-vera-secret-0123456789";
const LEGACY: &str = "legacy-api-token-0123456789";

const FILE_BROADCASTS: &str = "[broadcasts.news]\n[broadcasts.sport]\nchannel = \"sport\"\n";

fn token(name: &str, role: Role, secret: &str) -> NamedToken {
    NamedToken { name: name.into(), role, secret: SecretString::from(secret) }
}

/// A daemon with the operations listener, three named tokens (alice admin, olga operator, vera
/// viewer) and the legacy `api_token`; reads need one of them when `read_auth`. The dashboard's
/// tests start theirs here too.
pub(crate) async fn start(
    directory: &Path,
    emulator: &TestEmulator,
    broker: &onair::broker::Settings,
    broadcasts: &str,
    read_auth: bool,
) -> (Daemon, String, onair::daemon::Settings) {
    let mut settings = daemon_settings(directory, emulator, broker, broadcasts);
    settings.http.enabled = true;
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.api_token = Some(SecretString::from(LEGACY));
    settings.http.tokens = vec![
        token("alice", Role::Admin, ADMIN),
        token("olga", Role::Operator, OPERATOR),
        token("vera", Role::Viewer, VIEWER),
    ];
    settings.http.read_auth = read_auth;
    let daemon = Daemon::start(&settings, Library::built_in()).await.unwrap();
    let base = format!("http://{}", daemon.http_address().unwrap());
    until_async(Duration::from_secs(20), "consumer ready", || async { daemon.broker_status().is_ready() }).await;
    (daemon, base, settings)
}

/// An answer: status, headers, JSON body (`Null` when empty).
struct Answer {
    status: u16,
    etag: Option<String>,
    body: Value,
    bytes: usize,
}

async fn call(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag = response.headers().get("etag").and_then(|value| value.to_str().ok()).map(str::to_string);
    let text = response.text().await.unwrap();
    Answer { status, etag, bytes: text.len(), body: serde_json::from_str(&text).unwrap_or(Value::Null) }
}

async fn put(base: &str, id: &str, token: Option<&str>, definition: &Value, headers: &[(&str, &str)]) -> Answer {
    call(reqwest::Method::PUT, format!("{base}/api/v1/broadcasts/{id}"), token, Some(definition.to_string()), headers)
        .await
}

async fn delete(base: &str, path: &str, token: Option<&str>) -> Answer {
    call(reqwest::Method::DELETE, format!("{base}/api/v1/broadcasts/{path}"), token, None, &[]).await
}

async fn get(base: &str, path: &str, token: Option<&str>) -> Answer {
    call(reqwest::Method::GET, format!("{base}{path}"), token, None, &[]).await
}

async fn command(base: &str, id: &str, token: &str, body: Value) -> Answer {
    call(
        reqwest::Method::POST,
        format!("{base}/api/v1/broadcasts/{id}/commands"),
        Some(token),
        Some(body.to_string()),
        &[],
    )
    .await
}

async fn force(base: &str, id: &str, state: &str) {
    let answer = command(base, id, OPERATOR, json!({"command": "force-state", "state": state, "note": "test"})).await;
    assert_eq!(answer.status, 202, "{id}: {}", answer.body);
    until_async(Duration::from_secs(15), &format!("{id} {state}"), || async {
        state_of(base, id).await.as_deref() == Some(state)
    })
    .await;
}

async fn state_of(base: &str, id: &str) -> Option<String> {
    get(base, &format!("/api/v1/broadcasts/{id}"), Some(VIEWER)).await.body["state"].as_str().map(str::to_string)
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

/// A broadcast created through the API with its air time 20 s ahead goes warming, live, idle on
/// the emulator with no restart, each step fired within the usual lateness; the broadcasts beside
/// it (one never decided, one failed) keep their own states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_created_through_the_api_twenty_seconds_ahead_goes_on_air() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut emulator = emulator_settings();
    emulator.transition = Duration::from_millis(100);
    let emulator = TestEmulator::start(emulator).await;
    let broker = rabbit::settings("api-create");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, settings) = start(directory.path(), &emulator, &broker, FILE_BROADCASTS, false).await;
    force(&base, "sport", "failed").await;

    let air = DateTime::from_timestamp(now().timestamp() + 20, 0).unwrap();
    let definition = json!({
        "channel": "match",
        "units": {"on_air": 2, "off_air": 0},
        "schedule": {"at": air.to_rfc3339(), "duration": "8s", "lead": {"channel": "6s", "scale": "3s"}, "post_roll": "4s"},
    });
    let created = put(&base, "match", Some(ADMIN), &definition, &[("if-none-match", "*")]).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let revision = created.body["revision"].as_i64().unwrap();
    assert_eq!(created.etag, Some(format!("\"{revision}\"")));
    assert_eq!(created.body["origin"], "api");
    assert_eq!(created.body["updated_by"], "alice");
    assert_eq!(created.body["definition"], definition);
    assert_eq!(created.body["next_step"]["step"], "warmup", "{}", created.body);

    let mut seen: Vec<String> = Vec::new();
    let started = Instant::now();
    loop {
        if let Some(state) = state_of(&base, "match").await
            && seen.last() != Some(&state)
        {
            seen.push(state);
        }
        if seen.iter().any(|state| state == "live") && seen.last().map(String::as_str) == Some("idle") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "states so far: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for state in ["warming", "live", "idle"] {
        assert!(seen.iter().any(|seen| seen == state), "{state} not in {seen:?}");
    }
    // Each broadcast its own state: the API one back to idle, the file ones as they were.
    assert_eq!(state_of(&base, "match").await.as_deref(), Some("idle"));
    assert_eq!(state_of(&base, "sport").await.as_deref(), Some("failed"));
    assert_eq!(state_of(&base, "news").await, None, "news was never decided");
    daemon.stop().await.unwrap();

    let rows = SqliteStore::open_read_only(&settings.engine.store).unwrap().all_audit().unwrap();
    let mut report = Vec::new();
    for step in ["warmup", "scale", "air", "end", "cooldown"] {
        let row = rows
            .iter()
            .find(|row| {
                row.broadcast == "match"
                    && row.kind == "schedule"
                    && row.detail["step"] == step
                    && row.detail["outcome"] == "published"
            })
            .unwrap_or_else(|| panic!("{step} not published"));
        let lateness = (at(row.detail["fired"].as_str().unwrap()) - at(row.detail["planned"].as_str().unwrap()))
            .num_milliseconds();
        assert!((0..=50).contains(&lateness), "{step}: {lateness} ms late");
        report.push(format!("{step} {lateness:+} ms"));
    }
    assert!(rows.iter().all(|row| row.broadcast != "news" || row.kind == "config"), "news untouched");
    println!("API broadcast 20 s ahead: states {seen:?}; fired minus planned: {}", report.join(", "));
}

/// Optimistic concurrency, validation with every problem, file broadcasts, and a broadcast on air:
/// its channel cannot change, it cannot be deleted unless forced, and a forced delete stops it and
/// removes it once idle, its audit kept. Four broadcasts: never decided, failed, live, idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_validated_serialized_and_never_disturb_what_runs() {
    let _exclusive = EXCLUSIVE.lock().await;
    let mut emulator = emulator_settings();
    emulator.transition = Duration::from_millis(100);
    let emulator = TestEmulator::start(emulator).await;
    let broker = rabbit::settings("api-changes");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, settings) = start(directory.path(), &emulator, &broker, FILE_BROADCASTS, false).await;
    force(&base, "sport", "failed").await;

    // Two operators read revision r and both change it: one wins, the other gets 412.
    let first = put(&base, "match", Some(ADMIN), &json!({"channel": "match"}), &[]).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let tag = first.etag.clone().unwrap();
    let (two, three) =
        (json!({"channel": "match", "units": {"on_air": 2}}), json!({"channel": "match", "units": {"on_air": 3}}));
    let precondition = [("if-match", tag.as_str())];
    let (a, b) = tokio::join!(
        put(&base, "match", Some(ADMIN), &two, &precondition),
        put(&base, "match", Some(LEGACY), &three, &precondition),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{} / {}", a.body, b.body);
    let (won, lost) = if a.status == 200 { (&a, &b) } else { (&b, &a) };
    assert_eq!(lost.body["error"]["code"], "precondition_failed", "{}", lost.body);
    assert_eq!(lost.body["error"]["revision"], won.body["revision"], "the 412 names the current revision");
    assert!(won.body["revision"].as_i64() > first.body["revision"].as_i64());
    let again = put(&base, "match", Some(ADMIN), &json!({"channel": "match"}), &[("if-none-match", "*")]).await;
    assert_eq!(again.status, 412, "{}", again.body);
    println!("concurrent If-Match: {statuses:?}; loser: {}", lost.body["error"]["message"]);

    // Every problem at once, each with its key.
    let invalid = json!({
        "channel": "no spaces allowed",
        "protocol": "SRT",
        "units": {"on_air": 99},
        "schedule": {"cron": "not a cron", "timezone": "Mars/Olympus", "duration": "30m"},
        "colour": "red",
    });
    let refused = put(&base, "gala", Some(ADMIN), &invalid, &[]).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "invalid_definition");
    let keys: Vec<&str> =
        refused.body["error"]["problems"].as_array().unwrap().iter().filter_map(|p| p["key"].as_str()).collect();
    println!("invalid definition: {} problems: {keys:?}", keys.len());
    for key in ["broadcasts.gala.channel", "broadcasts.gala.protocol", "broadcasts.gala.units.on_air"] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    assert!(keys.iter().any(|key| key.starts_with("broadcasts.gala.schedule")), "{keys:?}");
    assert!(keys.len() >= 5, "{keys:?}");
    assert_eq!(get(&base, "/api/v1/broadcasts/gala", None).await.status, 404, "nothing created");
    for (body, status) in [("[1, 2]", 400), ("\"text\"", 400), ("{not json", 400)] {
        let answer =
            call(reqwest::Method::PUT, format!("{base}/api/v1/broadcasts/gala"), Some(ADMIN), Some(body.into()), &[])
                .await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
    }
    let huge = json!({"settings": {"blob": "x".repeat(70 * 1024)}});
    assert_eq!(put(&base, "gala", Some(ADMIN), &huge, &[]).await.status, 413);
    assert_eq!(put(&base, "Not_An_Id", Some(ADMIN), &json!({}), &[]).await.status, 400);
    assert_eq!(put(&base, "gala", Some(ADMIN), &json!({}), &[("if-match", "12")]).await.status, 400);

    // A file broadcast is the file's.
    let file = put(&base, "news", Some(ADMIN), &json!({"channel": "news"}), &[]).await;
    assert_eq!((file.status, file.body["error"]["code"].as_str()), (409, Some("file_broadcast")), "{}", file.body);
    assert_eq!(delete(&base, "sport", Some(ADMIN)).await.status, 409);

    // A broadcast on air: no new channel, no delete without force.
    let gala = put(&base, "gala", Some(ADMIN), &json!({"channel": "gala"}), &[]).await;
    assert_eq!(gala.status, 201, "{}", gala.body);
    let started = command(&base, "gala", OPERATOR, json!({"command": "start-now", "note": "test"})).await;
    assert_eq!(started.status, 202);
    until_async(Duration::from_secs(30), "gala live", || async {
        state_of(&base, "gala").await.as_deref() == Some("live")
    })
    .await;
    let moved = put(&base, "gala", Some(ADMIN), &json!({"channel": "gala2"}), &[]).await;
    assert_eq!(moved.status, 409, "{}", moved.body);
    assert_eq!(
        (moved.body["error"]["code"].as_str(), moved.body["error"]["state"].as_str()),
        (Some("busy"), Some("live"))
    );
    let kept = put(&base, "gala", Some(ADMIN), &json!({"channel": "gala", "units": {"on_air": 2}}), &[]).await;
    assert_eq!(kept.status, 200, "units may change on air: {}", kept.body);
    let refused = delete(&base, "gala", Some(ADMIN)).await;
    assert_eq!((refused.status, refused.body["error"]["state"].as_str()), (409, Some("live")), "{}", refused.body);
    let forced = delete(&base, "gala?force=true", Some(ADMIN)).await;
    assert_eq!(forced.status, 202, "{}", forced.body);
    assert_eq!(forced.body["removing"], true);
    // Stopping takes the channel down first (a second at least): meanwhile it cannot be replaced.
    let meanwhile = put(&base, "gala", Some(ADMIN), &json!({"channel": "gala"}), &[]).await;
    assert_eq!(
        (meanwhile.status, meanwhile.body["error"]["code"].as_str()),
        (409, Some("removing")),
        "{}",
        meanwhile.body
    );
    let listed = get(&base, "/api/v1/broadcasts?q=gala", None).await.body;
    assert_eq!(listed["broadcasts"][0]["removing"], true, "{listed}");
    let repeated = delete(&base, "gala?force=true", Some(ADMIN)).await;
    assert!(matches!(repeated.status, 202 | 204 | 404), "{}", repeated.status);
    let removing_seen = Instant::now();
    until_async(Duration::from_secs(30), "gala removed", || async {
        get(&base, "/api/v1/broadcasts/gala", None).await.status == 404
    })
    .await;
    println!("forced delete of a live broadcast: removed {:?} after the 202", removing_seen.elapsed());
    assert_eq!(delete(&base, "gala", Some(ADMIN)).await.status, 404);
    // Its audit stays: created, changed, marked, removed once idle; and stop-now decided once.
    let audit = get(&base, "/api/v1/audit?broadcast=gala&limit=1000", None).await.body;
    let entries = audit["entries"].as_array().unwrap();
    let config: Vec<&str> =
        entries.iter().filter(|e| e["kind"] == "config").filter_map(|e| e["detail"]["change"].as_str()).collect();
    assert_eq!(config, ["removed", "deleting", "changed", "created"], "{audit}");
    let stops =
        entries.iter().filter(|e| e["kind"] == "decision" && e["event_type"] == "onair.command.stop-now").count();
    assert_eq!(stops, 1, "one stop-now decided, the repeat a duplicate: {audit}");

    // An idle API broadcast is deleted at once; each other broadcast is as it was.
    assert_eq!(state_of(&base, "sport").await.as_deref(), Some("failed"));
    assert_eq!(state_of(&base, "news").await, None);
    let stale = delete(&base, "match", Some(ADMIN)).await;
    assert_eq!(stale.status, 204);
    daemon.stop().await.unwrap();
    let rows = SqliteStore::open_read_only(&settings.engine.store).unwrap().all_audit().unwrap();
    assert!(rows.iter().any(|row| row.broadcast == "match" && row.detail["change"] == "removed"));
}

/// Roles: viewer reads, operator commands, admin changes; 401 without a valid token, 403 with a
/// role too low; with `read_auth`, reads need a token too. The audit names tokens, never secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_what_it_is_for_and_the_audit_names_the_token() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("api-roles");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, settings) = start(directory.path(), &emulator, &broker, FILE_BROADCASTS, true).await;

    // Reads need a token; the probes, the dashboard page and the OpenAPI document do not.
    for path in ["/api/v1/broadcasts", "/api/v1/broadcasts/news", "/api/v1/audit", "/api/v1/plan", "/metrics"] {
        assert_eq!(get(&base, path, None).await.status, 401, "{path}");
        assert_eq!(get(&base, path, Some("not-a-token-000000000000")).await.status, 401, "{path}");
        assert_eq!(get(&base, path, Some(VIEWER)).await.status, 200, "{path}");
    }
    for path in ["/healthz", "/", "/api/v1/openapi.json"] {
        assert_eq!(get(&base, path, None).await.status, 200, "{path}");
    }
    for path in ["/%61pi/v1/broadcasts", "/api/v1/broadcasts/", "//api/v1/broadcasts", "/api/v1/./audit", "/METRICS"] {
        assert_eq!(get(&base, path, None).await.status, 401, "{path}: no spelling of a path reads without a token");
    }

    let definition = json!({"channel": "match"});
    let start_now = json!({"command": "start-now", "note": "roles"});
    // Viewer: no commands, no changes.
    let denied = command(&base, "news", VIEWER, start_now.clone()).await;
    assert_eq!((denied.status, denied.body["error"]["code"].as_str()), (403, Some("forbidden")), "{}", denied.body);
    assert!(!denied.body.to_string().contains(VIEWER));
    assert_eq!(put(&base, "match", Some(VIEWER), &definition, &[]).await.status, 403);
    assert_eq!(delete(&base, "news", Some(VIEWER)).await.status, 403);
    // Operator: commands, no changes.
    assert_eq!(put(&base, "match", Some(OPERATOR), &definition, &[]).await.status, 403);
    assert_eq!(delete(&base, "news", Some(OPERATOR)).await.status, 403);
    assert_eq!(put(&base, "match", None, &definition, &[]).await.status, 401);
    assert_eq!(command(&base, "news", OPERATOR, start_now).await.status, 202);
    force(&base, "sport", "failed").await;
    // Admin (named, and the legacy token): changes.
    let created = put(&base, "match", Some(ADMIN), &definition, &[]).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let changed = put(&base, "match", Some(LEGACY), &json!({"channel": "match", "units": {"on_air": 2}}), &[]).await;
    assert_eq!((changed.status, changed.body["updated_by"].as_str()), (200, Some("api_token")), "{}", changed.body);
    until_async(Duration::from_secs(30), "news live", || async {
        state_of(&base, "news").await.as_deref() == Some("live")
    })
    .await;
    // Three broadcasts, three states, each its own.
    assert_eq!(state_of(&base, "sport").await.as_deref(), Some("failed"));
    assert_eq!(state_of(&base, "match").await, None);
    daemon.stop().await.unwrap();

    let rows = SqliteStore::open_read_only(&settings.engine.store).unwrap().all_audit().unwrap();
    let who: Vec<(&str, &str)> = rows
        .iter()
        .filter(|row| row.kind == "config" && row.broadcast == "match")
        .map(|row| (row.detail["who"].as_str().unwrap_or_default(), row.detail["change"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(who, [("alice", "created"), ("api_token", "changed")]);
    let commanded = rows
        .iter()
        .find(|row| row.broadcast == "news" && row.event_type.as_deref() == Some("onair.command.start-now"))
        .unwrap();
    assert!(commanded.reason.contains("olga") || commanded.detail.to_string().contains("olga"), "{commanded:?}");
    let everything = serde_json::to_string(&rows).unwrap();
    for secret in [ADMIN, OPERATOR, VIEWER, LEGACY] {
        assert!(!everything.contains(secret), "a secret in the audit");
    }
    println!("roles: config rows by {who:?}; start-now by olga; {} audit rows free of secrets", rows.len());
}

/// `onair check` (the same settings loader) refuses weak, missing and shared secrets, unknown
/// roles and secrets written in the file; a secret from the environment is taken.
#[test]
fn token_settings_are_checked() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("onair.toml");
    let bob = directory.path().join("bob-token");
    std::fs::write(&bob, "shared-secret-0123456789\n").unwrap();
    let bob = bob.display();
    std::fs::write(
        &file,
        format!(
            "[http]\nread_auth = true\n[http.tokens.alice]\nrole = \"admin\"\n[http.tokens.bob]\nrole = \"operator\"\n\
         token_file = \"{bob}\"\n[http.tokens.carol]\nrole = \"superuser\"\n[http.tokens.dave]\nrole = \"viewer\"\n\
         token = \"written-in-the-file-0123\"\n[http.tokens.erin]\nrole = \"viewer\"\n"
        ),
    )
    .unwrap();
    let env = std::collections::HashMap::from([
        ("ONAIR__HTTP__TOKENS__ALICE__TOKEN".to_string(), "shared-secret-0123456789".to_string()),
        ("ONAIR__HTTP__TOKENS__CAROL__TOKEN".to_string(), "carol-secret-0123456789".to_string()),
        ("ONAIR__HTTP__TOKENS__ERIN__TOKEN".to_string(), "short".to_string()),
        ("ONAIR__MEDIA__CLIENT_SECRET".to_string(), "x".to_string()),
    ]);
    let mut source = onair::config::Source { file: Some(file.clone()), env };
    let problems = match onair::daemon::load(&source) {
        Ok(_) => panic!("accepted"),
        Err(error) => error.to_string(),
    };
    println!("{problems}");
    for expected in [
        "http.tokens.carol.role: unknown role \"superuser\"",
        "http.tokens.dave.token: secrets are not read from config files",
        "http.tokens.erin.token: must be at least 16 characters",
        "tokens alice and bob have the same secret",
    ] {
        assert!(problems.contains(expected), "{expected} in {problems}");
    }
    assert!(!problems.contains("shared-secret") && !problems.contains("carol-secret"), "no secret in errors");
    // `onair check` says the same, and exits with the settings code.
    let mut check = crate::broker::onair(&file);
    check.arg("check");
    for (name, value) in &source.env {
        check.env(name, value);
    }
    let output = check.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("unknown role \"superuser\"") && stderr.contains("have the same secret"), "{stderr}");
    assert!(!stderr.contains("shared-secret-0123456789"), "{stderr}");

    // Fixed: every token from the environment or a file, each its own.
    std::fs::write(
        &file,
        format!(
            "[http]\nread_auth = true\n[http.tokens.alice]\nrole = \"admin\"\n[http.tokens.bob]\nrole = \"operator\"\n\
         token_file = \"{bob}\"\n"
        ),
    )
    .unwrap();
    source.env.insert("ONAIR__HTTP__TOKENS__ALICE__TOKEN".into(), "alice-secret-0123456789".into());
    source.env.retain(|name, _| !name.contains("CAROL") && !name.contains("ERIN"));
    let settings = onair::daemon::load(&onair::config::Source { file: Some(file), env: source.env.clone() });
    let settings = match settings {
        Ok(settings) => settings,
        Err(error) => panic!("{error}"),
    };
    let tokens: Vec<(String, Role)> = settings.http.tokens.iter().map(|t| (t.name.clone(), t.role)).collect();
    assert_eq!(tokens, [("alice".to_string(), Role::Admin), ("bob".to_string(), Role::Operator)]);
    assert!(!format!("{:?}", settings.http.tokens).contains("secret-0123"), "Debug shows no secret");
}

/// API broadcasts and their revisions survive a restart; so do file broadcasts and states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_broadcasts_and_revisions_survive_a_restart() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("api-restart");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, _) = start(directory.path(), &emulator, &broker, FILE_BROADCASTS, false).await;
    let cron =
        json!({"channel": "evening", "schedule": {"cron": "0 20 * * *", "timezone": "Europe/Paris", "duration": "1h"}});
    assert_eq!(put(&base, "evening", Some(ADMIN), &cron, &[]).await.status, 201);
    assert_eq!(put(&base, "gala", Some(ADMIN), &json!({"channel": "gala"}), &[]).await.status, 201);
    let changed = put(&base, "gala", Some(ADMIN), &json!({"channel": "gala", "units": {"on_air": 3}}), &[]).await;
    assert_eq!(changed.status, 200);
    force(&base, "gala", "standby").await;
    force(&base, "sport", "failed").await;
    let before: Vec<Value> = futures_one_by_one(&base, &["evening", "gala", "news", "sport"]).await;
    daemon.stop().await.unwrap();

    let (daemon, base, _) = start(directory.path(), &emulator, &broker, FILE_BROADCASTS, false).await;
    let after: Vec<Value> = futures_one_by_one(&base, &["evening", "gala", "news", "sport"]).await;
    for (before, after) in before.iter().zip(&after) {
        for key in ["id", "origin", "revision", "definition", "updated_by", "state", "timezone"] {
            assert_eq!(before[key], after[key], "{key}: {before} / {after}");
        }
    }
    let shown: Vec<String> =
        after.iter().map(|b| format!("{} {} r{} {}", b["id"], b["origin"], b["revision"], b["state"])).collect();
    assert_eq!(after[0]["timezone"], "Europe/Paris");
    assert_eq!(after[1]["state"], "standby");
    assert_eq!(after[3]["state"], "failed");
    assert_eq!(after[2]["state"], Value::Null);
    // Revisions go on from where they were: never reused.
    let next = put(
        &base,
        "gala",
        Some(ADMIN),
        &json!({"channel": "gala"}),
        &[("if-match", &format!("\"{}\"", after[1]["revision"]))],
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert!(next.body["revision"].as_i64() > after.iter().filter_map(|b| b["revision"].as_i64()).max());
    daemon.stop().await.unwrap();
    println!("after restart: {shown:?}; next revision {}", next.body["revision"]);
}

async fn futures_one_by_one(base: &str, ids: &[&str]) -> Vec<Value> {
    let mut shown = Vec::new();
    for id in ids {
        let answer = get(base, &format!("/api/v1/broadcasts/{id}"), None).await;
        assert_eq!(answer.status, 200, "{id}");
        assert_eq!(answer.etag, Some(format!("\"{}\"", answer.body["revision"])), "{id}");
        shown.push(answer.body);
    }
    shown
}

/// The list pages, filters, counts and puts what needs attention first; the audit pages newest
/// first and filters. Five broadcasts: live, standby, failed, never decided, due in two hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_and_the_audit_page_and_filter() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("api-paging");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts =
        "[broadcasts.news]\n[broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.travel]\nchannel = \"voyage\"\n";
    let (daemon, base, settings) = start(directory.path(), &emulator, &broker, broadcasts, false).await;
    let soon = DateTime::from_timestamp(now().timestamp() + 2 * 3600, 0).unwrap();
    let gala = json!({"channel": "gala", "schedule": {"at": soon.to_rfc3339(), "duration": "1h"}});
    assert_eq!(put(&base, "gala", Some(ADMIN), &gala, &[]).await.status, 201);
    assert_eq!(put(&base, "match", Some(ADMIN), &json!({"channel": "match"}), &[]).await.status, 201);
    force(&base, "match", "live").await;
    force(&base, "news", "standby").await;
    force(&base, "sport", "failed").await;
    let settled = now();
    tokio::time::sleep(FRESH_WAIT).await;

    // Pages of two, in id order, until `next` is null.
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(after) => format!("/api/v1/broadcasts?limit=2&after={after}"),
            None => "/api/v1/broadcasts?limit=2".into(),
        };
        let page = get(&base, &path, None).await.body;
        assert_eq!(page["total"], 5, "{page}");
        ids.extend(page["broadcasts"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(ids, ["gala", "match", "news", "sport", "travel"]);
    assert_eq!(pages, 3);
    let all = get(&base, "/api/v1/broadcasts", None).await.body;
    assert_eq!(all["counts"], json!({"idle": 2, "live": 1, "standby": 1, "failed": 1}), "{}", all["counts"]);
    let listed = |body: &Value| -> Vec<String> {
        body["broadcasts"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(listed(&get(&base, "/api/v1/broadcasts?state=failed", None).await.body), ["sport"]);
    assert_eq!(listed(&get(&base, "/api/v1/broadcasts?state=idle", None).await.body), ["gala", "travel"]);
    assert_eq!(listed(&get(&base, "/api/v1/broadcasts?q=voy", None).await.body), ["travel"], "by channel");
    assert_eq!(listed(&get(&base, "/api/v1/broadcasts?q=SPO", None).await.body), ["sport"]);
    let attention = get(&base, "/api/v1/broadcasts?due_within=6h", None).await.body;
    assert_eq!(listed(&attention), ["match", "news", "sport", "gala"], "busy first, then due: {attention}");
    let first = get(&base, "/api/v1/broadcasts?due_within=6h&limit=3", None).await.body;
    assert_eq!(first["next"], "sport");
    let rest = get(&base, "/api/v1/broadcasts?due_within=6h&limit=3&after=sport", None).await.body;
    assert_eq!(listed(&rest), ["gala"]);
    assert_eq!(listed(&get(&base, "/api/v1/broadcasts?due_within=1h", None).await.body), ["match", "news", "sport"]);
    let one = &all["broadcasts"][1];
    assert_eq!((one["id"].as_str(), one["flags"]["paused"].as_bool()), (Some("match"), Some(false)), "{one}");
    for bad in
        ["limit=0", "limit=1001", "limit=x", "due_within=1s", "due_within=soon", "colour=red", "q=", "state=a&state=b"]
    {
        let answer = get(&base, &format!("/api/v1/broadcasts?{bad}"), None).await;
        assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (400, Some("bad_parameter")), "{bad}");
    }

    // The audit, newest first, in pages of 3 until `next` is null: every row once.
    let mut seen: Vec<i64> = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(before) => format!("/api/v1/audit?limit=3&before={before}"),
            None => "/api/v1/audit?limit=3".into(),
        };
        let page = get(&base, &path, None).await.body;
        let entries = page["entries"].as_array().unwrap();
        seen.extend(entries.iter().map(|e| e["id"].as_i64().unwrap()));
        match page["next"].as_i64() {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert!(seen.windows(2).all(|pair| pair[0] > pair[1]), "newest first, no repeat");
    let stored = SqliteStore::open_read_only(&settings.engine.store).unwrap().all_audit().unwrap();
    let expected: Vec<i64> = stored.iter().rev().map(|row| row.id).filter(|id| *id <= seen[0]).collect();
    assert_eq!(seen, expected);
    // Filters: per broadcast (each its own), per kind, per time.
    for (id, kinds) in
        [("match", vec!["config", "decision"]), ("sport", vec!["config", "decision"]), ("travel", vec!["config"])]
    {
        let page = get(&base, &format!("/api/v1/audit?broadcast={id}&limit=1000"), None).await.body;
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.iter().all(|e| e["broadcast"] == id), "{page}");
        let mut found: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
        found.sort();
        found.dedup();
        assert_eq!(found, kinds, "{id}");
    }
    let config = get(&base, "/api/v1/audit?kind=config&limit=1000", None).await.body;
    assert_eq!(config["entries"].as_array().unwrap().len(), 5, "{config}");
    let since = settled.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let late = get(&base, &format!("/api/v1/audit?since={since}&limit=1000"), None).await.body;
    assert!(late["entries"].as_array().unwrap().iter().all(|e| at(e["at"].as_str().unwrap()) >= settled), "{late}");
    let early = get(&base, &format!("/api/v1/audit?until={since}&kind=config&limit=1000"), None).await.body;
    assert_eq!(early["entries"].as_array().unwrap().len(), 5);
    for bad in [
        "limit=0",
        "limit=1001",
        "kind=gossip",
        "since=yesterday",
        "before=-1",
        "broadcast=Not_Id",
        "who=me",
        &format!("since={since}&until={since}"),
    ] {
        let answer = get(&base, &format!("/api/v1/audit?{bad}"), None).await;
        assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (400, Some("bad_parameter")), "{bad}");
    }
    // The per-broadcast audit still answers, oldest first.
    let sport = get(&base, "/api/v1/broadcasts/sport/audit", None).await.body;
    assert_eq!(sport["entries"][0]["kind"], "config");
    daemon.stop().await.unwrap();
    println!("list: {pages} pages of 2, counts {}; audit: {} rows in pages of 3", all["counts"], seen.len());
}

/// How long list states may lag (the list's shared read of the store).
pub(crate) const FRESH_WAIT: Duration = Duration::from_millis(600);

/// With 10,000 broadcasts, one dashboard-style refresh (what is on air or due first, a page of
/// 50, with the counts) stays under 100 KB, and is quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_refresh_over_ten_thousand_broadcasts_stays_under_100_kb() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("api-10k");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts = crate::helpers::ten_thousand_broadcasts(
        chrono_tz::UTC,
        "duration = \"30s\"\nlead = { channel = \"10s\", scale = \"5s\" }\npost_roll = \"5s\"\n",
    );
    let started = Instant::now();
    let (daemon, base, _) = start(directory.path(), &emulator, &broker, &broadcasts, false).await;
    let startup = started.elapsed();
    // Twenty on air (forced: state and variables, no actions).
    for index in (5..10_000).step_by(500) {
        let id = format!("b{index:05}");
        let answer =
            command(&base, &id, OPERATOR, json!({"command": "force-state", "state": "live", "note": "load"})).await;
        assert_eq!(answer.status, 202);
    }
    until_async(Duration::from_secs(60), "twenty live", || async {
        get(&base, "/api/v1/broadcasts?state=live&limit=1", None).await.body["total"] == 20
    })
    .await;
    tokio::time::sleep(FRESH_WAIT).await;
    let timed = Instant::now();
    let refresh = get(&base, "/api/v1/broadcasts?due_within=6h&limit=50", None).await;
    let took = timed.elapsed();
    assert_eq!(refresh.status, 200);
    let page = refresh.body["broadcasts"].as_array().unwrap();
    assert_eq!(page.len(), 50);
    assert!(page[..20].iter().all(|b| b["state"] == "live"), "on air first");
    assert_eq!(refresh.body["counts"]["live"], 20);
    // Again, as the next refresh would: the next steps are known by now.
    let timed = Instant::now();
    let again = get(&base, "/api/v1/broadcasts?due_within=6h&limit=50", None).await;
    let took_again = timed.elapsed();
    assert_eq!(again.body["broadcasts"], refresh.body["broadcasts"]);
    let audit = get(&base, "/api/v1/audit?limit=30", None).await;
    let first_page = get(&base, "/api/v1/broadcasts?limit=50", None).await;
    let everything = get(&base, "/api/v1/broadcasts?limit=1000", None).await;
    let bytes = refresh.bytes + audit.bytes;
    println!(
        "10,000 broadcasts (started in {startup:?}): dashboard refresh {} B list (due_within=6h, 50, {took:?}, then \
         {took_again:?}) + {} B audit = {bytes} B, bar 100,000 B; a plain page of 50: {} B; a page of 1,000: {} B",
        refresh.bytes, audit.bytes, first_page.bytes, everything.bytes
    );
    assert!(bytes < 100_000, "{bytes} B");
    daemon.stop().await.unwrap();
}

/// The wall clock, as the daemon reads it.
fn now() -> DateTime<Utc> {
    onair::clock::Clock::now(&onair::clock::SystemClock)
}
