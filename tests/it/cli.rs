//! The built binary as a process: exit codes, settings errors, signals, JSON logs, the demo.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn onair() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_onair"));
    command.env_remove("RUST_LOG").env_remove("ONAIR_CONFIG");
    command
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn help_lists_exactly_the_working_subcommands() {
    let output = onair().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        [
            "emulator", "demo", "run", "check", "status", "send", "dlq", "plan", "token", "apply", "get", "delete",
            "audit", "extend", "reload", "help"
        ]
    );
}

#[test]
fn invalid_settings_are_all_reported_with_exit_code_78() {
    let file = config_file("[shutdown]\ngrace = \"whenever\"\n[media]\narm_url = \"ftp://x\"\nretries = 3\n");
    let output =
        onair().arg("--config").arg(file.path()).arg("check").env("ONAIR__EMULATOR__PAGE_SIZE", "0").output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    let errors = String::from_utf8(output.stderr).unwrap();
    let path = file.path().display().to_string();
    assert!(errors.contains("invalid settings (4 problems)"), "{errors}");
    assert!(errors.contains(&format!("{path}: shutdown.grace: invalid duration")), "{errors}");
    assert!(errors.contains(&format!("{path}: media.arm_url: unsupported URL scheme")), "{errors}");
    assert!(errors.contains(&format!("{path}: media.retries: unknown setting")), "{errors}");
    assert!(
        errors.contains("environment variable ONAIR__EMULATOR__PAGE_SIZE: emulator.page_size: must be at least 1"),
        "{errors}"
    );
}

#[test]
fn check_names_the_settings_running_needs() {
    let output = onair().arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    let report = String::from_utf8(output.stdout).unwrap();
    for key in [
        "media.token_url",
        "media.subscription_id",
        "media.resource_group",
        "media.account",
        "media.client_id",
        "media.client_secret",
    ] {
        assert!(report.contains(key), "{key} in {report}");
    }
}

#[test]
fn check_passes_with_complete_settings_and_never_prints_the_secret() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "very-secret-value\n").unwrap();
    let file = config_file(&format!(
        "[media]\ntoken_url = \"https://login.example/t/oauth2/v2.0/token\"\nsubscription_id = \"s\"\nresource_group = \"g\"\naccount = \"a\"\nclient_id = \"c\"\nclient_secret_file = \"{}\"\n",
        secret.path().display()
    ));
    let output = onair().arg("--config").arg(file.path()).arg("check").env("RUST_LOG", "trace").output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("settings OK"), "{stdout}");
    assert!(!stdout.contains("very-secret-value") && !stderr.contains("very-secret-value"));
}

#[test]
fn the_emulator_logs_json_and_saves_its_snapshot_on_sigterm() {
    let directory = tempfile::tempdir().unwrap();
    let snapshot = directory.path().join("state.json");
    let mut child = onair()
        .args(["--log-format", "json", "emulator", "--listen", "127.0.0.1:0", "--snapshot"])
        .arg(&snapshot)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).expect("a JSON log line");
    assert_eq!(first["message"], "Emulator listening.");
    let address = first["address"].as_str().unwrap().to_string();

    let token = raw_http::token(&address);
    assert!(token.contains("access_token"), "{token}");
    let token = token.split("\"access_token\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let created = raw_http::put_asset(&address, &token, "kept-asset");
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");

    let sent = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|line| line.contains("SIGTERM")), "{rest:?}");
    let saved = std::fs::read_to_string(&snapshot).expect("snapshot written on shutdown");
    assert!(saved.contains("kept-asset"), "{saved}");
    println!("emulator stopped {} ms after SIGTERM", sent.elapsed().as_millis());
}

#[test]
fn the_client_demo_walks_through_the_lifecycle_and_prints_the_urls() {
    let output =
        onair().args(["demo", "--client-only", "--transition-ms", "20", "--on-air-secs", "0"]).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for step in [
        "1. channel \"news\" created and started",
        "streaming endpoint \"default\" scaled to 3 units",
        "locator \"news-",
        "program removed",
        "channel \"news\" stopped",
        "scaled back to 1 unit",
    ] {
        assert!(stdout.contains(step), "{step:?} missing from:\n{stdout}");
    }
    assert!(stdout.contains("HLS     https://default-demo.streaming.mediaservices.windows.net/"), "{stdout}");
    assert!(stdout.contains("(format=mpd-time-csf)"), "{stdout}");
    assert!(stdout.contains("4 resources created, each with one PUT."), "{stdout}");
}

#[test]
fn the_demo_runs_onair_end_to_end_with_rabbitmq_the_emulator_and_the_daemon() {
    // The README's run command; it needs rabbitmq-server, which .ci/run installs.
    let output = onair().args(["demo", "--transition-ms", "100", "--on-air-secs", "0"]).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for line in [
        "rabbitmq   onair-",
        "onair      consuming onair.events",
        "published onair.schedule.fired step=warmup",
        "news: idle → warming",
        "news: standby → live",
        "HLS   https://default-demo.streaming.mediaservices.windows.net/",
        "news: cooldown → idle",
        "4 resources created, each once",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}

/// A token request with a plain TCP socket: the test stays synchronous, like the process it drives.
mod raw_http {
    use std::io::{Read, Write};

    pub fn token(address: &str) -> String {
        let body = "grant_type=client_credentials&client_id=onair-emulator&client_secret=onair-emulator-secret&scope=x";
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "POST /t/oauth2/v2.0/token HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    pub fn put_asset(address: &str, token: &str, name: &str) -> String {
        let body = r#"{"properties": {}}"#;
        let path = format!(
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Media/mediaservices/a/assets/{name}?api-version=2023-01-01"
        );
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "PUT {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }
}

fn complete_settings(extra: &str, state_dir: &std::path::Path) -> tempfile::NamedTempFile {
    config_file(&format!(
        "[media]\ntoken_url = \"https://login.example/t/oauth2/v2.0/token\"\nsubscription_id = \"s\"\nresource_group = \"g\"\naccount = \"a\"\nclient_id = \"c\"\n[engine]\nstate_dir = \"{}\"\n{extra}",
        state_dir.display()
    ))
}

#[test]
fn check_reports_machine_and_broadcast_problems_with_their_location() {
    let directory = tempfile::tempdir().unwrap();
    let machines = directory.path().join("machines");
    std::fs::create_dir_all(&machines).unwrap();
    std::fs::write(
        machines.join("mine.toml"),
        "initial = \"a\"\n[states.a]\n[[transitions]]\nfrom = \"a\"\non = \"x\"\nguard = \"((\"\nto = \"b\"\n",
    )
    .unwrap();
    let file = complete_settings(
        &format!(
            "machines_dir = \"{}\"\n[broadcasts.news]\nmachine = \"mine\"\n[broadcasts.sport]\nmachine = \"nope\"\n",
            machines.display()
        ),
        directory.path(),
    );
    let output =
        onair().arg("--config").arg(file.path()).arg("check").env("ONAIR__MEDIA__CLIENT_SECRET", "x").output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    let report = String::from_utf8(output.stdout).unwrap();
    let mine = machines.join("mine.toml").display().to_string();
    assert!(report.contains(&format!("{mine}:6:9: transition #1: guard does not compile")), "{report}");
    assert!(report.contains(&format!("{mine}:7:6: transition #1: unknown state \"b\" in to")), "{report}");
    assert!(
        report.contains("broadcasts.news.machine: no machine named \"mine\""),
        "a machine with problems is not loaded: {report}"
    );
    assert!(report.contains("broadcasts.sport.machine: no machine named \"nope\""), "{report}");

    let run =
        onair().arg("--config").arg(file.path()).arg("run").env("ONAIR__MEDIA__CLIENT_SECRET", "x").output().unwrap();
    assert_eq!(run.status.code(), Some(78), "run refuses to start");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("cannot run (4 problems)"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn send_queues_in_the_inbox_and_status_shows_the_broadcasts() {
    let directory = tempfile::tempdir().unwrap();
    let file = complete_settings("[broadcasts.news]\nunits = { on_air = 2 }\n", directory.path());
    let sent = onair()
        .args(["--config"])
        .arg(file.path())
        .args([
            "send",
            "--inbox",
            "--type",
            "onair.command.pause",
            "--subject",
            "news",
            "--data",
            "{\"note\": \"lunch\"}",
            "--id",
            "cmd-1",
        ])
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let queued: Vec<_> =
        std::fs::read_dir(directory.path().join("inbox")).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(queued.len(), 1);
    let event: serde_json::Value = serde_json::from_slice(&std::fs::read(&queued[0]).unwrap()).unwrap();
    assert_eq!(
        (event["id"].as_str(), event["type"].as_str(), event["data"]["note"].as_str()),
        (Some("cmd-1"), Some("onair.command.pause"), Some("lunch"))
    );

    let bad = onair()
        .arg("--config")
        .arg(file.path())
        .args(["send", "--type", "t", "--subject", "news", "--data", "{oops"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--data is not JSON"));

    let status = onair().arg("--config").arg(file.path()).args(["status", "--json"]).output().unwrap();
    assert!(status.status.success());
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report[0]["broadcast"], "news");
    assert_eq!(report[0]["state"], "idle (no event yet)");
    let unknown = onair().arg("--config").arg(file.path()).args(["status", "--broadcast", "weather"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(1));
}

/// A store written by the real `SqliteStore`: `news` live with its URL, `sport` failed with an
/// action pending, `weather` in standby with a timer armed; `travel` has no record.
fn store_with_three_states(path: &std::path::Path) {
    use onair::store::{Commit, DecisionRecord, InstanceRecord, NewAction, SqliteStore, Store};
    let store = SqliteStore::open(path).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-24T18:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let commit = |broadcast: &str, state: &str, hls: &str, timers: &[(&str, i64)], actions: &[&str]| Commit {
        duplicate: false,
        broadcast: broadcast.into(),
        machine: "live".into(),
        at,
        event_id: format!("{broadcast}-1"),
        event_type: "onair.command.force-state".into(),
        event: serde_json::json!({}),
        decision: DecisionRecord {
            outcome: "transition".into(),
            from: "idle".into(),
            to: state.into(),
            transition: None,
            reason: format!("{broadcast} to {state}"),
            detail: serde_json::json!({}),
        },
        instance: Some(InstanceRecord {
            broadcast: broadcast.into(),
            machine: "live".into(),
            state: state.into(),
            vars: serde_json::json!({"hls": hls}).as_object().unwrap().clone(),
            timers: timers
                .iter()
                .map(|(name, minutes)| (name.to_string(), at + chrono::Duration::minutes(*minutes)))
                .collect(),
            since: at,
            seq: 1,
        }),
        actions: actions
            .iter()
            .map(|kind| NewAction { kind: kind.to_string(), params: serde_json::json!({}) })
            .collect(),
        completes: None,
    };
    store
        .commit(vec![
            commit("news", "live", "https://x/news-20261124t1800z.ism/manifest(format=m3u8-aapl)", &[], &[]),
            commit("sport", "failed", "", &[], &["notify"]),
            commit("weather", "standby", "", &[("air_late", 5)], &[]),
        ])
        .unwrap();
}

/// Stores `id` as a broadcast created through the API, on channel `<id>-ch`.
fn api_broadcast(path: &std::path::Path, id: &str) {
    api_broadcast_with(path, id, serde_json::json!({"channel": format!("{id}-ch")}));
}

/// Stores `id` as a broadcast created through the API with `definition`.
fn api_broadcast_with(path: &std::path::Path, id: &str, definition: serde_json::Value) {
    use onair::store::{BroadcastChange, BroadcastRecord, Change, Expected, SqliteStore, Store};
    let store = SqliteStore::open(path).unwrap();
    let definition = definition.as_object().unwrap().clone();
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-24T17:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let record = BroadcastRecord {
        id: id.into(),
        origin: "api".into(),
        revision: 0,
        incarnation: 0,
        definition,
        updated: at,
        updated_by: "test".into(),
        deleting: false,
    };
    let change = BroadcastChange {
        id: id.into(),
        expected: Expected::Absent,
        change: Change::Put(record),
        at,
        reason: "created by the test".into(),
        detail: serde_json::json!({}),
    };
    store.change_broadcasts(vec![change]).unwrap();
}

#[test]
fn plan_shows_the_broadcasts_created_through_the_api_next_to_the_files() {
    let directory = tempfile::tempdir().unwrap();
    let file = complete_settings(
        "[broadcasts.news.schedule]\ncron = \"0 19 * * *\"\ntimezone = \"Europe/Paris\"\nduration = \"30m\"\n\
         [broadcasts.sport]\nchannel = \"sport\"\n",
        directory.path(),
    );
    let store = directory.path().join("onair.db");
    let schedule = serde_json::json!({"at": "2026-11-25T20:45:00Z", "duration": "2h", "timezone": "Europe/Paris"});
    api_broadcast_with(&store, "match", serde_json::json!({"channel": "match", "schedule": schedule}));
    api_broadcast(&store, "rain");
    let output = onair()
        .arg("--config")
        .arg(file.path())
        .args(["plan", "--from", "2026-11-25", "--hours", "48", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let steps = |broadcast: &str| -> Vec<String> {
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|row| row["broadcast"] == broadcast)
            .map(|row| format!("{} {}", row["step"].as_str().unwrap(), row["planned"].as_str().unwrap()))
            .collect()
    };
    // news (the file's) twice in 48 hours; match (the API's) once; sport and rain have no schedule.
    assert_eq!(steps("news").len(), 10, "{rows}");
    assert_eq!(
        steps("match"),
        [
            "warmup 2026-11-25T20:35:00.000Z",
            "scale 2026-11-25T20:43:00.000Z",
            "air 2026-11-25T20:45:00.000Z",
            "end 2026-11-25T22:45:00.000Z",
            "cooldown 2026-11-25T22:50:00.000Z"
        ],
        "{rows}"
    );
    assert!(steps("sport").is_empty() && steps("rain").is_empty(), "{rows}");
    let one = onair().arg("--config").arg(file.path()).args(["plan", "--broadcast", "match"]).output().unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
}

const FOUR: &str = "[broadcasts.news]\n[broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.travel]\nchannel = \"travel\"\n[broadcasts.weather]\nchannel = \"weather\"\n";

#[test]
fn status_shows_each_broadcast_its_own_state_and_refuses_a_newer_schema() {
    let directory = tempfile::tempdir().unwrap();
    let file = complete_settings(FOUR, directory.path());
    let store = directory.path().join("onair.db");
    store_with_three_states(&store);
    api_broadcast(&store, "rain");

    let status = onair().arg("--config").arg(file.path()).args(["status", "--json"]).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let mut report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    // rain was created through the API: the store holds it, the file does not.
    let rain = report.as_array_mut().unwrap().remove(1);
    assert_eq!((rain["broadcast"].as_str(), rain["origin"].as_str()), (Some("rain"), Some("api")), "{rain}");
    assert_eq!((rain["channel"].as_str(), rain["state"].as_str()), (Some("rain-ch"), Some("idle (no event yet)")));
    assert!(report.as_array().unwrap().iter().all(|entry| entry["origin"] == "file"), "{report}");
    let shown = status_states(&report);
    assert_eq!(
        shown,
        [("news", "live"), ("sport", "failed"), ("travel", "idle (no event yet)"), ("weather", "standby")]
    );
    assert!(report[0]["vars"]["hls"].as_str().unwrap().contains("/news-"), "{report}");
    assert_eq!(report[0]["pending_actions"], serde_json::json!([]), "{report}");
    assert_eq!(report[1]["pending_actions"][0]["action"], "notify", "{report}");
    assert_eq!(report[1]["vars"]["hls"], "", "{report}");
    assert_eq!(report[2]["vars"], serde_json::Value::Null, "{report}");
    assert_eq!(report[3]["next_timer"]["timer"], "air_late", "{report}");
    assert_eq!(report[0]["next_timer"], serde_json::Value::Null, "{report}");
    for (index, broadcast) in ["news", "sport", "travel", "weather"].iter().enumerate() {
        let events = report[index]["last_events"].as_array().unwrap();
        let own: Vec<&str> = events.iter().filter_map(|event| event["event_id"].as_str()).collect();
        let expected = if *broadcast == "travel" { vec![] } else { vec![format!("{broadcast}-1")] };
        assert_eq!(own, expected, "{broadcast}: {report}");
    }
    let weather = onair().arg("--config").arg(file.path()).args(["status", "--broadcast", "weather"]).output().unwrap();
    let text = String::from_utf8(weather.stdout).unwrap();
    assert!(text.starts_with("weather  standby since 2026-11-24T18:00:00"), "{text}");

    // A store written by a newer onair is refused, not printed.
    rusqlite::Connection::open(&store).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let refused = onair().arg("--config").arg(file.path()).args(["status", "--json"]).output().unwrap();
    let errors = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{errors}");
    assert!(refused.stdout.is_empty(), "nothing printed: {}", String::from_utf8_lossy(&refused.stdout));
    assert!(errors.contains(&format!("the store {} has schema version 99", store.display())), "{errors}");
    println!("status: {shown:?}; newer schema refused: {}", errors.trim());
}

/// Each broadcast and its state in the report of `onair status --json`, in order.
pub(crate) fn status_states(report: &serde_json::Value) -> Vec<(&str, &str)> {
    report
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| (entry["broadcast"].as_str().unwrap(), entry["state"].as_str().unwrap()))
        .collect()
}

/// The user id this test runs as (of a file it creates).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().unwrap();
    probe.as_file().metadata().unwrap().uid() == 0
}

#[test]
fn a_store_that_cannot_be_opened_stops_run_and_check_with_78_and_says_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    struct Case {
        name: &'static str,
        /// What `run` and `check` must say.
        says: Vec<String>,
        /// Whether `status` refuses it too (it only reads, so an unwritable directory is fine).
        status_refuses: bool,
    }
    let mut figures = Vec::new();
    for name in ["corrupt", "newer schema", "unwritable directory"] {
        let directory = tempfile::tempdir().unwrap();
        std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = directory.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let store = state.join("onair.db");
        let file = complete_settings(FOUR, &state);
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut as_other_user = false;
        let case = match name {
            "corrupt" => {
                std::fs::write(&store, "these are not the bytes of a database\n".repeat(200)).unwrap();
                Case {
                    name,
                    says: vec![
                        format!("the store {} is not a readable SQLite database", store.display()),
                        "restore it from a backup".into(),
                    ],
                    status_refuses: true,
                }
            }
            "newer schema" => {
                store_with_three_states(&store);
                rusqlite::Connection::open(&store).unwrap().pragma_update(None, "user_version", 7).unwrap();
                Case {
                    name,
                    says: vec![
                        format!("the store {} has schema version 7, newer than this onair knows", store.display()),
                        "run that version".into(),
                    ],
                    status_refuses: true,
                }
            }
            _ => {
                std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();
                // Root writes anywhere: run onair as nobody, as a service user would be.
                as_other_user = running_as_root();
                Case {
                    name,
                    says: vec![
                        state.display().to_string(),
                        format!("make {} writable by the user onair runs as", state.display()),
                    ],
                    status_refuses: false,
                }
            }
        };
        // Another user needs a binary it can reach: the clone may sit under a private directory.
        let binary = directory.path().join("onair");
        if as_other_user {
            std::fs::copy(env!("CARGO_BIN_EXE_onair"), &binary).unwrap();
            std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let command = |arguments: &[&str]| {
            let mut command = if as_other_user {
                let mut command = Command::new(&binary);
                command.env_remove("RUST_LOG").env_remove("ONAIR_CONFIG");
                command
            } else {
                onair()
            };
            command.arg("--config").arg(file.path()).args(arguments).env("ONAIR__MEDIA__CLIENT_SECRET", "x");
            if as_other_user {
                command.uid(65534).gid(65534);
            }
            command.output().unwrap()
        };
        let run = command(&["run"]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(78), "{}: run: {stderr}", case.name);
        let message: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error: ")).collect();
        assert_eq!(message.len(), 1, "{}: one line: {stderr}", case.name);
        for part in &case.says {
            assert!(message[0].contains(part.as_str()), "{}: {part:?} in {message:?}", case.name);
        }
        let check = command(&["check"]);
        let report = String::from_utf8_lossy(&check.stdout);
        assert_eq!(check.status.code(), Some(78), "{}: check: {report}", case.name);
        assert!(report.contains(case.says[0].as_str()), "{}: check: {report}", case.name);
        let status = command(&["status"]);
        assert_eq!(status.status.code(), Some(if case.status_refuses { 78 } else { 0 }), "{}: status", case.name);
        figures.push(format!("{}: exit {:?}, {:?}", case.name, run.status.code(), message[0]));
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A missing store in a writable directory is fine for check (it will be created).
    let directory = tempfile::tempdir().unwrap();
    let file = complete_settings(FOUR, directory.path());
    let check =
        onair().arg("--config").arg(file.path()).arg("check").env("ONAIR__MEDIA__CLIENT_SECRET", "x").output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{report}");
    assert!(report.contains("(not created yet)"), "{report}");
    for line in figures {
        println!("{line}");
    }
}
