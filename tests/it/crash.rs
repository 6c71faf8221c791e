//! Crash test: a real `onair run` process drives 50 broadcasts (a third through the
//! whole lifecycle, a third to live, a third to standby) against the emulator and
//! is killed with SIGKILL at random moments, then restarted; nothing is lost or done twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onair::event::{self, Event};
use onair::store::SqliteStore;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::helpers::{TestEmulator, emulator_settings};

const BROADCASTS: usize = 50;
const KILLS: usize = 20;
/// Each step, and the state the broadcast settles in after it.
const STEPS: [(&str, &str); 5] =
    [("warmup", "standby"), ("scale", "standby"), ("air", "live"), ("end", "cooldown"), ("cooldown", "idle")];

/// How many steps broadcast `index` goes through: a third end idle (the whole lifecycle), a
/// third stay live, a third stay in standby, so that every read has neighbours in other states.
fn steps_of(index: usize) -> usize {
    [5, 3, 2][index % 3]
}

/// Creating writes (PUTs) after that many steps: channel and endpoint at the warm-up; asset, live
/// output and locator on air.
fn puts_after(steps: usize) -> usize {
    if steps >= 3 { 5 } else { 2 }
}

fn start(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_onair"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("ONAIR__MEDIA__CLIENT_SECRET", "onair-emulator-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("onair run starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_lifecycles_survive_sigkill_at_random_moments() {
    let mut settings = emulator_settings();
    settings.transition = Duration::from_millis(150);
    settings.quotas.live_events = 100;
    settings.quotas.streaming_endpoints = 100;
    let emulator = TestEmulator::start(settings).await;
    let directory = tempfile::tempdir().unwrap();
    let mut broadcasts = String::new();
    for index in 0..BROADCASTS {
        broadcasts.push_str(&format!(
            "[broadcasts.b{index:02}]\nendpoint = \"ep-b{index:02}\"\nunits = {{ on_air = 2, off_air = 1 }}\n"
        ));
    }
    let settings = crate::daemon::settings(&emulator, directory.path(), &broadcasts);
    let config = directory.path().join("onair.toml");
    let log = directory.path().join("onair.log");
    let inbox = settings.engine.inbox.clone();

    let mut rng = rand::rngs::StdRng::seed_from_u64(20261124);
    let started = Instant::now();
    let mut child = start(&config, &log);
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(rng.random_range(200..700));
    let mut progress: BTreeMap<String, usize> = (0..BROADCASTS).map(|index| (format!("b{index:02}"), 0)).collect();
    let last: BTreeMap<String, usize> =
        (0..BROADCASTS).map(|index| (format!("b{index:02}"), steps_of(index))).collect();
    let final_state = |broadcast: &str| STEPS[last[broadcast] - 1].1;
    let mut written = 0u64;
    loop {
        assert!(started.elapsed() < Duration::from_secs(240), "not done after 4 minutes: {progress:?}");
        if kills < KILLS && Instant::now() >= next_kill {
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
            kills += 1;
            child = start(&config, &log);
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(150..700));
        }
        if let Ok(store) = SqliteStore::open_read_only(&settings.engine.store)
            && let (Ok(instances), Ok(pending)) = (store.load_instances(), store.pending_actions())
        {
            for (broadcast, step) in progress.iter_mut() {
                let instance = instances.iter().find(|instance| &instance.broadcast == broadcast);
                let busy = pending.iter().any(|row| &row.broadcast == broadcast);
                let settled = match *step {
                    0 => true,
                    done => instance.is_some_and(|instance| instance.state == STEPS[done - 1].1) && !busy,
                };
                if settled && *step < last[broadcast] {
                    let (name, _) = STEPS[*step];
                    let data = json!({"broadcast": broadcast, "occurrence": "20261124t1800z", "step": name});
                    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
                    let event = Event::new(
                        format!("{broadcast}/20261124t1800z/{name}"),
                        event::SCHEDULE_FIRED,
                        broadcast.clone(),
                        data,
                        now,
                    );
                    written += 1;
                    onair::engine::inbox::write(&inbox, &event, written).unwrap();
                    *step += 1;
                }
            }
            let all_done = progress.iter().all(|(broadcast, step)| *step == last[broadcast])
                && instances.len() == BROADCASTS
                && instances.iter().all(|instance| instance.state == final_state(&instance.broadcast))
                && pending.is_empty();
            if all_done && kills >= KILLS {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let elapsed = started.elapsed();
    // Let the last restart finish starting before asking it to stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "a clean stop after SIGTERM; log:\n{}",
        log_text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );

    // Each creating write exactly once.
    let mut puts: BTreeMap<String, usize> = BTreeMap::new();
    for entry in emulator.arm_requests().iter().filter(|entry| entry.method == "PUT") {
        *puts.entry(entry.path.to_lowercase()).or_default() += 1;
    }
    let twice: Vec<_> = puts.iter().filter(|(_, count)| **count != 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:#?}");
    let expected_puts: usize = last.values().map(|steps| puts_after(*steps)).sum();
    assert_eq!(
        puts.len(),
        expected_puts,
        "a channel and an endpoint each; an asset, a live output and a locator for those that aired"
    );

    // Only legal transitions, a sound database, nothing left pending.
    let store = SqliteStore::open_read_only(&settings.engine.store).unwrap();
    let audit = store.all_audit().unwrap();
    let library = onair::machine::Library::built_in();
    let problems = crate::history::illegal(library.get("live").unwrap(), &audit);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let decisions = audit.iter().filter(|row| row.kind == "decision").count();
    let duplicates = audit.iter().filter(|row| row.kind == "duplicate").count();
    let resumed = audit
        .iter()
        .filter(|row| {
            row.kind == "action" && row.reason.contains("started, attempt") && !row.reason.ends_with("attempt 1")
        })
        .count();
    let counts = store.outbox_counts().unwrap();
    assert_eq!(counts.get("pending"), None);
    assert_eq!(counts.get("failed"), None, "{counts:?}");
    // What operators see.
    let status = Command::new(env!("CARGO_BIN_EXE_onair"))
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let report = report.as_array().unwrap();
    assert_eq!(report.len(), BROADCASTS);
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for entry in report {
        let broadcast = entry["broadcast"].as_str().unwrap();
        assert_eq!(entry["state"], final_state(broadcast), "{entry}");
        *states.entry(final_state(broadcast).to_string()).or_default() += 1;
        let hls = entry["vars"]["hls"].as_str().unwrap_or_default();
        if last[broadcast] >= 3 {
            // Its own locator: `<broadcast>-<occurrence>`.
            assert!(hls.contains(&format!("{broadcast}-20261124t1800z.ism/manifest(format=m3u8-aapl)")), "{entry}");
        } else {
            assert_eq!(hls, "", "never on air: {entry}");
        }
        assert!(entry["pending_actions"].as_array().unwrap().is_empty());
    }
    assert_eq!(states.len(), 3, "{states:?}");
    println!(
        "crash test: {BROADCASTS} broadcasts (final states {states:?}), {kills} SIGKILLs, {written} events, {decisions} decisions, {duplicates} duplicates absorbed, \
         {} actions ({resumed} resumed after a kill), {} API requests, {} creating writes each once, {:.1} s; integrity ok, history legal",
        counts.values().sum::<i64>(),
        emulator.arm_requests().len(),
        puts.len(),
        elapsed.as_secs_f64()
    );
}
