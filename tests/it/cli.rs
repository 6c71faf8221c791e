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
    assert_eq!(commands, ["emulator", "demo", "run", "check", "status", "send", "dlq", "plan", "token", "help"]);
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
