//! Reload of the built binary from its config file: SIGHUP applies the file's broadcasts (a new
//! one scheduled within a second, its warm-up fired with no restart, a changed one re-planned, a
//! removed one that runs left to finish), refuses an invalid file whole (nothing changes, every
//! problem logged and audited), and reports the settings that need a restart; `onair reload`
//! does the same through `POST /api/v1/reload`.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Timelike, Utc};
use onair::store::SqliteStore;
use serde_json::{Value, json};

use crate::broker::{EXCLUSIVE, daemon_config, onair, terminate};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::operations::{TOKEN, command, get, until_async};
use crate::rabbit;

/// The first three broadcasts: `news` stays idle, `sport` is forced to failed, `travel` to standby.
/// news airs daily (UTC) eleven to twelve hours after the test binary started, and the reloaded
/// file moves it an hour later: it stays idle whenever the test runs.
static NEWS_HOUR: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| crate::helpers::hour_from_now(12));

fn first() -> String {
    format!(
        "[broadcasts.news.schedule]\ncron = \"0 {} * * *\"\nduration = \"30m\"\n\
         [broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.travel]\nchannel = \"travel\"\n",
        *NEWS_HOUR
    )
}

/// news's cron after the reload.
fn moved_cron() -> String {
    format!("0 {} * * *", (*NEWS_HOUR + 1) % 24)
}

/// A daemon from `config`, logging JSON to `log`; its operations listener's address. The caller
/// terminates it (the child is killed and waited for here only when it never listens).
#[allow(clippy::zombie_processes)]
pub(crate) fn start(config: &Path, log: &Path) -> (Child, String) {
    let file = std::fs::File::create(log).unwrap();
    let mut child = onair(config)
        .args(["--log-format", "json", "run"])
        .env("RUST_LOG", "info")
        .env("ONAIR__HTTP__API_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let address = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["message"].as_str().is_some_and(|message| message.starts_with("Operations listener")))
            .and_then(|line| line["address"].as_str().map(str::to_string));
        if let Some(address) = address {
            return (child, format!("http://{address}"));
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no operations listener in:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now() -> DateTime<Utc> {
    onair::clock::Clock::now(&onair::clock::SystemClock)
}

fn hangup(child: &Child) {
    let sent = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
}

/// Every broadcast the API lists: id, revision, state.
async fn listed(base: &str) -> Vec<(String, i64, Option<String>)> {
    let (status, body) = get(base, "/api/v1/broadcasts").await;
    assert_eq!(status, 200, "{body}");
    body["broadcasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["id"].as_str().unwrap().to_string(),
                entry["revision"].as_i64().unwrap(),
                entry["state"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The store's audit rows about the whole set (reload refusals), newest last.
fn set_notes(store: &Path) -> Vec<String> {
    SqliteStore::open_read_only(store).unwrap().audit("", 100).unwrap().into_iter().map(|row| row.reason).collect()
}

fn log_lines(log: &Path, needle: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A daemon of the built binary and its files.
struct Running {
    child: Child,
    base: String,
    config: PathBuf,
    store: PathBuf,
    log: PathBuf,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_file_refuses_an_invalid_one_whole_and_reports_restart_settings() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("reload");
    let directory = tempfile::tempdir().unwrap();
    let config = daemon_config(directory.path(), &emulator, &broker, &first());
    let written = std::fs::read_to_string(&config).unwrap();
    let log = directory.path().join("onair.log");
    let (child, base) = start(&config, &log);
    let mut daemon = Running { child, base, config, store: directory.path().join("onair.db"), log };
    until_async(Duration::from_secs(30), "ready", || async { get(&daemon.base, "/readyz").await.0 == 200 }).await;
    force_states(&daemon.base).await;

    let (second, scheduled_after, warmed_after) = sighup_applies_the_file(&daemon, &written).await;
    let notes = set_notes(&daemon.store).len();
    an_invalid_file_changes_nothing(&daemon, &second, notes).await;
    onair_reload_answers_through_the_api(&daemon, &second).await;
    assert_eq!(set_notes(&daemon.store).len(), notes + 2, "both refusals audited");
    println!(
        "reload: SIGHUP to planned in {scheduled_after:?}; its warm-up fired {warmed_after} ms after its planned instant, no restart; \
         an invalid file refused whole (2 problems logged and audited); `onair reload` refused a busy change (exit 78), then reported http.listen as needing a restart"
    );

    let (code, _) = terminate(&mut daemon.child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&daemon.log).unwrap_or_default());
}

/// Three states: news idle, sport failed, travel standby.
async fn force_states(base: &str) {
    for (broadcast, state) in [("sport", "failed"), ("travel", "standby")] {
        let force = json!({"command": "force-state", "state": state, "note": "reload test"});
        assert_eq!(command(base, broadcast, Some(TOKEN), force).await.0, 202);
    }
    let expected = vec![
        ("news".to_string(), None),
        ("sport".to_string(), Some("failed".to_string())),
        ("travel".to_string(), Some("standby".to_string())),
    ];
    until_async(Duration::from_secs(20), "forced states", || async {
        listed(base).await.into_iter().map(|(id, _, state)| (id, state)).collect::<Vec<_>>() == expected
    })
    .await;
}

/// A new broadcast (warm-up 12 s ahead), news re-planned, travel (standby) removed, and a
/// listener setting changed: SIGHUP. The file written, how long until the new broadcast was
/// planned, and how late (ms) its warm-up fired.
async fn sighup_applies_the_file(daemon: &Running, written: &str) -> (String, Duration, i64) {
    let base = daemon.base.as_str();
    // Whole seconds, as written in the file.
    let air = (now() + TimeDelta::seconds(17)).with_nanosecond(0).unwrap();
    let late = format!(
        "[broadcasts.late]\nchannel = \"late\"\n[broadcasts.late.schedule]\nat = \"{}\"\nduration = \"1m\"\n\
         lead = {{ channel = \"5s\", scale = \"2s\" }}\npost_roll = \"5s\"\n",
        air.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    let second = written.replace(&first(), "").replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
        + &format!("[broadcasts.news.schedule]\ncron = \"{}\"\nduration = \"30m\"\n", moved_cron())
        + "[broadcasts.sport]\nchannel = \"sport\"\n"
        + &late;
    std::fs::write(&daemon.config, &second).unwrap();
    let revisions_before = listed(base).await;
    let sent = Instant::now();
    hangup(&daemon.child);
    let scheduled_after = loop {
        let (status, plan) = get(base, "/api/v1/plan?broadcast=late&hours=1").await;
        if status == 200 && plan["rows"].as_array().is_some_and(|rows| !rows.is_empty()) {
            break sent.elapsed();
        }
        assert!(sent.elapsed() < Duration::from_secs(5), "late not planned 5 s after SIGHUP");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(scheduled_after < Duration::from_secs(1), "planned {scheduled_after:?} after SIGHUP");
    let (_, plan) = get(base, "/api/v1/plan?broadcast=news&hours=48").await;
    let planned: Vec<&str> =
        plan["rows"].as_array().unwrap().iter().filter_map(|row| row["planned"].as_str()).collect();
    let at_hour = |hour: u32| format!("T{hour:02}:00:00");
    let (old, new) = (at_hour(*NEWS_HOUR), at_hour((*NEWS_HOUR + 1) % 24));
    assert!(planned.iter().any(|at| at.contains(&new)), "news follows its new schedule: {planned:?}");
    assert!(!planned.iter().any(|at| at.contains(&old)), "{planned:?}");
    // Nothing that runs was disturbed: sport is still failed; travel, standby, ends as planned
    // (it is marked for removal); news changed (a new revision), sport did not.
    let after = listed(base).await;
    let revision =
        |list: &[(String, i64, Option<String>)], id: &str| list.iter().find(|entry| entry.0 == id).map(|entry| entry.1);
    assert_eq!(after.iter().find(|entry| entry.0 == "sport").unwrap().2.as_deref(), Some("failed"));
    assert_eq!(after.iter().find(|entry| entry.0 == "travel").unwrap().2.as_deref(), Some("standby"));
    assert_eq!(revision(&after, "sport"), revision(&revisions_before, "sport"));
    assert!(revision(&after, "news") > revision(&revisions_before, "news"));
    let reloaded = log_lines(&daemon.log, "\"Reloaded.\"");
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    let fields = &reloaded[0];
    for (key, wanted) in
        [("created", "late"), ("changed", "news"), ("retiring", "travel"), ("restart_needed", "http.listen")]
    {
        assert!(fields[key].as_str().is_some_and(|value| value.contains(wanted)), "{key}: {fields}");
    }
    assert!(!log_lines(&daemon.log, "next restart").is_empty(), "the restart-only setting is logged");
    // The scheduler armed late with no restart: its warm-up fires, the machine leaves idle.
    let warmup = air - TimeDelta::seconds(5);
    until_async(Duration::from_secs(40), "late warming", || async {
        listed(base)
            .await
            .iter()
            .any(|(id, _, state)| id == "late" && state.as_deref().is_some_and(|state| state != "idle"))
    })
    .await;
    (second, scheduled_after, (now() - warmup).num_milliseconds())
}

/// An invalid file: nothing changes; every problem is logged and audited.
async fn an_invalid_file_changes_nothing(daemon: &Running, second: &str, notes: usize) {
    let broken = second.replace(&format!("cron = \"{}\"", moved_cron()), "cron = \"every evening\"")
        + "[broadcasts.Bad_Id]\nchannel = \"x\"\n";
    std::fs::write(&daemon.config, &broken).unwrap();
    let revisions = |list: Vec<(String, i64, Option<String>)>| -> Vec<(String, i64)> {
        list.into_iter().map(|(id, revision, _)| (id, revision)).collect()
    };
    let before = revisions(listed(&daemon.base).await);
    let sent = Instant::now();
    hangup(&daemon.child);
    let refused = loop {
        let found = set_notes(&daemon.store);
        if found.len() > notes {
            break found.last().unwrap().clone();
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "no refusal audited 10 s after SIGHUP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused, "reload refused: 2 problems; nothing changed");
    let problems = log_lines(&daemon.log, "Reload refused: problem");
    let problems: Vec<String> =
        problems.iter().map(|line| line["problem"].as_str().unwrap_or_default().to_string()).collect();
    assert!(problems.iter().any(|problem| problem.starts_with("broadcasts.news.schedule.cron: ")), "{problems:?}");
    assert!(problems.iter().any(|problem| problem.starts_with("broadcasts.Bad_Id")), "{problems:?}");
    assert_eq!(revisions(listed(&daemon.base).await), before, "nothing changed");
}

/// `onair reload` (POST /api/v1/reload): a change the manager refuses (sport's channel while it
/// is failed) exits 78 with the problem; once undone, it reloads and names the restart-only
/// setting; a wrong token exits 77.
async fn onair_reload_answers_through_the_api(daemon: &Running, second: &str) {
    let config = &daemon.config;
    std::fs::write(config, second.replace("channel = \"sport\"", "channel = \"arena\"")).unwrap();
    let reload = |token: &str| {
        onair(config).args(["reload", "--api", &daemon.base]).env("ONAIR_API_TOKEN", token).output().unwrap()
    };
    let output = reload(TOKEN);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("reload refused: 1 problem; nothing changed"), "{stderr}");
    assert!(stderr.contains("broadcasts.sport: not idle: its channel cannot change until it is idle"), "{stderr}");
    std::fs::write(config, second).unwrap();
    let output = reload(TOKEN);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("needs a restart to take effect: http.listen"), "{stdout}");
    let unauthorized = reload("wrong-token-0123456789");
    assert_eq!(unauthorized.status.code(), Some(77));
    assert!(String::from_utf8_lossy(&unauthorized.stderr).contains("does not accept the API token"));
}
