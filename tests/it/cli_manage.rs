//! The operator commands of the built binary against a real daemon (RabbitMQ, engine, SQLite,
//! emulator) over its API: `apply` (dry run, create, unchanged, change, prune, refusals), `get`,
//! `delete`, `audit`, `extend`, `reload`, the error when no daemon answers, and 1,000 broadcasts
//! applied and armed by the scheduler without a restart.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::broker::{EXCLUSIVE, onair};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::operations::{TOKEN, command, daemon_with_http, get, until_async};
use crate::rabbit;

/// The file broadcasts: `news` airs daily (UTC) eleven to twelve hours from now, so its next step
/// is the warm-up whenever the test runs.
fn file() -> String {
    format!(
        "[broadcasts.news.schedule]\ncron = \"0 {} * * *\"\nduration = \"30m\"\n\
         [broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.travel]\nchannel = \"travel\"\n",
        crate::helpers::hour_from_now(12)
    )
}

/// `onair <args> --api <base>` with the token, as a command line would run it.
fn cli(config: &Path, base: &str, args: &[&str]) -> Output {
    onair(config).args(args).args(["--api", base]).env("ONAIR_API_TOKEN", TOKEN).output().unwrap()
}

/// a1's daily schedule at `minute` past the UTC hour six hours after the test binary started:
/// one hour for the whole test, never near a step while the test reads a1 idle.
fn a1_cron(minute: u32) -> String {
    static HOUR: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| crate::helpers::hour_from_now(6));
    format!("{minute} {} * * *", *HOUR)
}

fn text(output: &Output) -> (Option<i32>, String, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn write(directory: &Path, name: &str, text: &str) -> String {
    let path = directory.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Each broadcast the API lists: (id, origin, state).
async fn listed(base: &str) -> Vec<(String, String, Option<String>)> {
    let (status, body) = get(base, "/api/v1/broadcasts").await;
    assert_eq!(status, 200, "{body}");
    body["broadcasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["id"].as_str().unwrap().to_string(),
                entry["origin"].as_str().unwrap_or_default().to_string(),
                entry["state"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn the_commands_say_when_no_daemon_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("onair.toml");
    std::fs::write(&config, format!("[http]\nlisten = \"0.0.0.0:{port}\"\n")).unwrap();
    let expected = format!(
        "error: no onair daemon answers at http://127.0.0.1:{port} (connection refused); start it with `onair run`, or pass --api\n"
    );
    // The address from the settings (a wildcard listener is reached on the loopback) or --api.
    for args in [
        vec!["get", "broadcasts"],
        vec!["reload"],
        vec!["get", "broadcasts", "--api", &format!("http://127.0.0.1:{port}")],
    ] {
        let (code, stdout, stderr) = text(&onair(&config).args(&args).output().unwrap());
        assert_eq!(code, Some(1), "{args:?}: {stdout}{stderr}");
        assert_eq!(stderr, expected, "{args:?}");
    }
    let (code, _, stderr) = text(&onair(&config).args(["get", "broadcasts", "--api", "localhost:1"]).output().unwrap());
    assert_eq!(code, Some(2));
    assert!(stderr.contains("\"localhost:1\" is not an API address (expected http://HOST:PORT)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_delete_audit_and_extend_through_a_running_daemon() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("cli-manage");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, _settings) = daemon_with_http(directory.path(), &emulator, &broker, &file()).await;
    let config = directory.path().join("onair.toml");
    until_async(Duration::from_secs(20), "ready", || async { get(&base, "/readyz").await.0 == 200 }).await;

    get_lists_the_file_broadcasts(&config, &base).await;
    dry_run_then_apply(&config, &base, directory.path()).await;
    force_states(&base).await;
    apply_changes_and_prunes(&config, &base, directory.path()).await;
    get_one_and_delete(&config, &base).await;
    audit_extend_and_reload(&config, &base).await;
    daemon.stop().await.unwrap();
}

/// The file's broadcasts, with their origin.
async fn get_lists_the_file_broadcasts(config: &Path, base: &str) {
    let (code, table, stderr) = text(&cli(config, base, &["get", "broadcasts"]));
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<Vec<&str>> = table.lines().map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(rows[0][..4], ["ID", "ORIGIN", "REVISION", "STATE"]);
    for (row, id) in rows[1..].iter().zip(["news", "sport", "travel"]) {
        assert_eq!((row[0], row[1], row[3]), (id, "file", "idle"), "{table}");
    }
    assert!(rows[1].contains(&"warmup"), "news has a next step: {table}");
}

/// `apply --dry-run` changes nothing; `apply` creates; again, nothing is sent.
async fn dry_run_then_apply(config: &Path, base: &str, directory: &Path) {
    // apply --dry-run: the diff and the plan's changes; nothing changes.
    let first = format!("[broadcasts.a1.schedule]\ncron = \"{}\"\nduration = \"30m\"\n", a1_cron(0))
        + "[broadcasts.a2]\nchannel = \"a2\"\n[broadcasts.a3]\nchannel = \"a3\"\n[broadcasts.a4]\nchannel = \"a4\"\n";
    let file = write(directory, "broadcasts.toml", &first);
    let (code, stdout, stderr) = text(&cli(config, base, &["apply", "-f", &file, "--dry-run"]));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let cron_line = format!("    + schedule.cron = \"{}\"", a1_cron(0));
    for line in ["+ a1: create", &cron_line, "+ a4: create", "    + channel = \"a4\""] {
        assert!(stdout.lines().any(|shown| shown == line), "{line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("plan changes in the next 48 h: 10 added, 0 moved, 0 removed"), "{stdout}");
    assert!(stdout.contains("+ a1 warmup "), "{stdout}");
    assert!(stdout.contains("dry run: 4 to create, 0 to change, 0 unchanged, 0 to prune; nothing changed"), "{stdout}");
    assert_eq!(listed(base).await.len(), 3, "the dry run changed nothing");

    // apply: created; again: unchanged, nothing sent.
    let (code, stdout, stderr) = text(&cli(config, base, &["apply", "-f", &file]));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(": 4 created, 0 changed, 0 unchanged, 0 pruned"), "{stdout}");
    let (code, stdout, _) = text(&cli(config, base, &["apply", "-f", &file]));
    assert_eq!(code, Some(0));
    assert!(stdout.contains(": 0 created, 0 changed, 4 unchanged, 0 pruned"), "{stdout}");
    let origins: Vec<(String, String)> = listed(base).await.into_iter().map(|(id, origin, _)| (id, origin)).collect();
    assert_eq!(
        origins,
        [
            ("a1", "api"),
            ("a2", "api"),
            ("a3", "api"),
            ("a4", "api"),
            ("news", "file"),
            ("sport", "file"),
            ("travel", "file")
        ]
        .map(|(id, origin)| (id.to_string(), origin.to_string()))
    );
}

/// Three states: a1 and a4 idle, a2 standby, a3 failed.
async fn force_states(base: &str) {
    for (broadcast, state) in [("a2", "standby"), ("a3", "failed")] {
        let force = json!({"command": "force-state", "state": state, "note": "cli test"});
        assert_eq!(command(base, broadcast, Some(TOKEN), force).await.0, 202);
    }
    until_async(Duration::from_secs(20), "forced", || async {
        let states: Vec<Option<String>> = listed(base).await.into_iter().take(4).map(|(_, _, state)| state).collect();
        states == [None, Some("standby".into()), Some("failed".into()), None]
    })
    .await;
}

/// A change applied, another refused (not idle), a file broadcast skipped, prunes.
async fn apply_changes_and_prunes(config: &Path, base: &str, directory: &Path) {
    // A second file: a1 moved by 30 min (idle: changed), a2 on a new channel (standby: refused),
    // news (the config file's: skipped); with --prune, a3 (failed: refused) and a4 (idle: pruned).
    let second = format!("[broadcasts.a1.schedule]\ncron = \"{}\"\nduration = \"30m\"\n", a1_cron(30))
        + "[broadcasts.a2]\nchannel = \"a2-new\"\n[broadcasts.news]\nchannel = \"elsewhere\"\n";
    let file = write(directory, "broadcasts.toml", &second);
    let (code, stdout, stderr) = text(&cli(config, base, &["apply", "-f", &file, "--prune", "--dry-run"]));
    assert_eq!(code, Some(2), "the config file's news is skipped: {stdout}{stderr}");
    assert!(stdout.contains(&format!("~ schedule.cron: \"{}\" -> \"{}\"", a1_cron(0), a1_cron(30))), "{stdout}");
    assert!(stdout.contains("- a3: prune") && stdout.contains("- a4: prune"), "{stdout}");
    assert!(stdout.contains("! news: skipped: defined in the daemon's config file"), "{stdout}");
    assert!(stdout.contains("plan changes in the next 48 h: 0 added, 10 moved, 0 removed"), "{stdout}");
    let (code, stdout, stderr) = text(&cli(config, base, &["apply", "-f", &file, "--prune"]));
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("a1 changed (revision "), "{stdout}");
    assert!(stdout.contains("a4 pruned"), "{stdout}");
    assert!(stderr.contains("error: apply a2: ") && stderr.contains("standby"), "{stderr}");
    assert!(stderr.contains("error: prune a3: ") && stderr.contains("failed"), "{stderr}");
    assert!(stderr.contains("error: apply news: defined in the daemon's config file"), "{stderr}");
    assert!(
        stdout.contains(": 0 created, 1 changed, 0 unchanged, 1 pruned, 1 skipped (config file), 2 failed"),
        "{stdout}"
    );
    let states: Vec<(String, Option<String>)> =
        listed(base).await.into_iter().map(|(id, _, state)| (id, state)).collect();
    assert_eq!(
        states[..3],
        [("a1".into(), None), ("a2".into(), Some("standby".into())), ("a3".into(), Some("failed".into()))]
    );
    assert!(!states.iter().any(|(id, _)| id == "a4"), "{states:?}");
}

/// One broadcast's definition; deletes refused, forced, done.
async fn get_one_and_delete(config: &Path, base: &str) {
    // get one: its definition, as a table to apply.
    let (code, stdout, _) = text(&cli(config, base, &["get", "broadcast", "a1"]));
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("[broadcasts.a1.schedule]") && stdout.contains(&format!("cron = \"{}\"", a1_cron(30))),
        "{stdout}"
    );
    let (code, stdout, _) = text(&cli(config, base, &["get", "broadcasts", "a2", "--json"]));
    assert_eq!(code, Some(0));
    let a2: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((a2["origin"].as_str(), a2["state"].as_str()), (Some("api"), Some("standby")));

    // delete: a3 is not idle (refused), forced it is stopped first; a1 (idle) goes now; news is
    // the config file's.
    let (code, _, stderr) = text(&cli(config, base, &["delete", "broadcast", "a3"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.starts_with("error: delete a3: ") && stderr.contains("failed"), "{stderr}");
    let (code, stdout, stderr) = text(&cli(config, base, &["delete", "broadcast", "a3", "--force"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("broadcast a3 is being stopped"), "{stdout}");
    let (code, stdout, _) = text(&cli(config, base, &["delete", "broadcast", "a1"]));
    assert_eq!((code, stdout.as_str()), (Some(0), "broadcast a1 deleted\n"));
    let (code, _, stderr) = text(&cli(config, base, &["delete", "broadcast", "news"]));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("config file"), "{stderr}");
}

/// The audit with its diffs; extend and reload refused as they should be.
async fn audit_extend_and_reload(config: &Path, base: &str) {
    // audit: a1's changes, each with its diff.
    let (code, stdout, stderr) =
        text(&cli(config, base, &["audit", "--broadcast", "a1", "--kind", "config", "--since", "1h"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout.lines().filter(|line| line.contains("  a1  config  ")).count(),
        3,
        "created, changed, removed:\n{stdout}"
    );
    assert!(stdout.contains(&format!("    ~ schedule.cron: \"{}\" -> \"{}\"", a1_cron(0), a1_cron(30))), "{stdout}");
    let (code, stdout, _) = text(&cli(config, base, &["audit", "--broadcast", "a1", "--json", "--limit", "2"]));
    assert_eq!(code, Some(0));
    let entries: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(entries["entries"].as_array().map(Vec::len), Some(2), "{entries}");

    // extend: nothing of news is on air.
    let (code, _, stderr) = text(&cli(config, base, &["extend", "news", "--by", "30m"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.starts_with("error: extend news: "), "{stderr}");
    let (code, _, stderr) = text(&onair(config).args(["extend", "news", "--by", "soon"]).output().unwrap());
    assert_eq!(code, Some(2), "a usage error: {stderr}");

    // reload: this daemon was not started by `onair run` from a file.
    let (code, _, stderr) = text(&cli(config, base, &["reload"]));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not started from a config file"), "{stderr}");
    // No token: 401, explained.
    let output = onair(config).args(["delete", "broadcast", "a2", "--api", base]).output().unwrap();
    let (code, _, stderr) = text(&output);
    assert_eq!(code, Some(77));
    assert!(stderr.contains("set ONAIR_API_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_broadcasts_apply_and_the_scheduler_arms_them_without_a_restart() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("cli-thousand");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base, _settings) = daemon_with_http(directory.path(), &emulator, &broker, &file()).await;
    let config = directory.path().join("onair.toml");
    until_async(Duration::from_secs(20), "ready", || async { get(&base, "/readyz").await.0 == 200 }).await;
    let tracks_before = daemon.schedule_stats().tracks();

    const COUNT: usize = 1000;
    let mut text_file = String::new();
    for index in 0..COUNT {
        text_file.push_str(&format!(
            "[broadcasts.bulk-{index:04}.schedule]\ncron = \"{} {} * * *\"\nduration = \"20m\"\n",
            index % 60,
            index / 60 % 24
        ));
    }
    let file = write(directory.path(), "bulk.toml", &text_file);
    let started = Instant::now();
    let (code, stdout, stderr) = text(&cli(&config, &base, &["apply", "-f", &file, "--dry-run"]));
    let dry_run = started.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("dry run: {COUNT} to create, 0 to change, 0 unchanged, 0 to prune")), "{stderr}");
    let started = Instant::now();
    let (code, stdout, stderr) = text(&cli(&config, &base, &["apply", "-f", &file]));
    let applied = started.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!(": {COUNT} created, 0 changed, 0 unchanged, 0 pruned")),
        "{}",
        stdout.lines().last().unwrap_or_default()
    );
    // The 10 s bar is held by `cargo bench --bench apply` (the release build, as users run it); a
    // test build on a shared machine only prints its figure.
    let armed_at = Instant::now();
    until_async(Duration::from_secs(10), "armed", || async {
        daemon.schedule_stats().tracks() >= tracks_before + COUNT as u64
    })
    .await;
    let armed = started.elapsed();
    let armed_after_return = armed_at.elapsed();
    let (_, plan) = get(&base, "/api/v1/plan?hours=24").await;
    let planned: std::collections::BTreeSet<&str> =
        plan["rows"].as_array().unwrap().iter().filter_map(|row| row["broadcast"].as_str()).collect();
    assert_eq!(planned.iter().filter(|id| id.starts_with("bulk-")).count(), COUNT);
    let started = Instant::now();
    let (code, stdout, _) = text(&cli(&config, &base, &["apply", "-f", &file]));
    let again = started.elapsed();
    assert_eq!(code, Some(0));
    assert!(stdout.contains(&format!(": 0 created, 0 changed, {COUNT} unchanged, 0 pruned")), "{stdout}");
    println!(
        "apply of {COUNT} broadcasts: dry run {dry_run:.2?}, applied in {applied:.2?}, all armed by the scheduler {armed:.2?} after apply started ({:.2?} after it returned), no restart; applied again (all unchanged) in {again:.2?}",
        armed_after_return
    );
    daemon.stop().await.unwrap();
}
