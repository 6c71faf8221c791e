//! The dashboard in headless Chromium (Debian's `chromium`), against a real daemon: it loads,
//! shows the broadcasts and the timeline, shows a broadcast going live, and leaves a screenshot
//! (`target/tmp/artefacts/dashboard.png`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::broker::EXCLUSIVE;
use crate::helpers::{TestEmulator, emulator_settings};
use crate::operations::{TOKEN, artefact, command, daemon_with_http, state_of, until_async};
use crate::rabbit;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `arguments` (after the page's scripts ran for a while).
async fn chromium(profile: &Path, url: &str, arguments: &[&str]) -> String {
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)");
    let mut command = Command::new(CHROMIUM);
    command
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=6000", "--window-size=1280,900"])
        .args(arguments)
        .arg(url);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The `data-state` of the broadcast's element in a dumped DOM.
fn shown_state(dom: &str, broadcast: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"broadcast-{broadcast}\""))?;
    let tag_start = dom[..start].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let value = tag.split("data-state=\"").nth(1)?;
    Some(value[..value.find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_broadcast_going_live() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("dashboard");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts = "[broadcasts.news]\n[broadcasts.news.schedule]\ncron = \"0 19 * * *\"\ntimezone = \"Europe/Paris\"\nduration = \"30m\"\n[broadcasts.sport]\n";
    let (daemon, base, _) = daemon_with_http(directory.path(), &emulator, &broker, broadcasts).await;
    let profile = directory.path().join("chromium");
    let url = format!("{base}/");

    let before = chromium(&profile, &url, &["--dump-dom"]).await;
    assert!(before.contains("data-loaded=\"true\""), "the page rendered the API's data:\n{before}");
    assert!(before.contains("id=\"timeline\"") && before.contains("id=\"audit\""), "{before}");
    let state = shown_state(&before, "news");
    assert!(state.as_deref().is_some_and(|state| state != "live"), "{state:?}");
    assert!(shown_state(&before, "sport").is_some());

    let (status, _) = command(&base, "news", Some(TOKEN), json!({"command": "start-now"})).await;
    assert_eq!(status, 202);
    until_async(Duration::from_secs(30), "news live", || async {
        state_of(&base, "news").await.as_deref() == Some("live")
    })
    .await;
    let after = chromium(&profile, &url, &["--dump-dom"]).await;
    assert_eq!(shown_state(&after, "news").as_deref(), Some("live"), "{after}");
    assert!(after.contains("→ live"), "the audit shows the move to live:\n{after}");

    let screenshot = artefact("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(&profile, &url, &[&format!("--screenshot={}", screenshot.display())]).await;
    let bytes = std::fs::read(&screenshot).unwrap();
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{} bytes", bytes.len());
    println!(
        "dashboard: news shown {:?} then \"live\"; screenshot {} ({} bytes)",
        state,
        screenshot.display(),
        bytes.len()
    );
    daemon.stop().await.unwrap();
}
