//! The engine against the emulator, fed directly: lifecycles, duplicates, failures, durable
//! timers and restarts.

use std::time::Duration;

use onair::engine::Outcome;
use onair::event;
use serde_json::json;

use crate::daemon::{TestEngine, settings, settled, state, view};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::lifecycle::writes;

const NEWS: &str = "[broadcasts.news]\nunits = { on_air = 3, off_air = 1 }\n";

#[tokio::test]
async fn schedule_steps_drive_a_broadcast_through_its_lifecycle() {
    let mut emulator_settings = emulator_settings();
    emulator_settings.transition = std::time::Duration::from_millis(30);
    let emulator = TestEmulator::start(emulator_settings).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(&emulator, directory.path(), NEWS);
    let engine = TestEngine::start(&settings).await;

    for (step, expected) in
        [("warmup", "standby"), ("scale", "standby"), ("air", "live"), ("end", "cooldown"), ("cooldown", "idle")]
    {
        assert_eq!(engine.step("news", step).await, Outcome::Committed, "{step}");
        settled(&settings, "news", expected).await;
    }
    let (_, vars) = state(&settings, "news").unwrap();
    assert!(vars["hls"].as_str().unwrap().ends_with("news-20261124t1800z.ism/manifest(format=m3u8-aapl)"), "{vars:?}");

    let occurrence = "news-20261124t1800z";
    assert_eq!(
        writes(&emulator.requests()),
        [
            "POST streamingEndpoints/default/start".to_string(),
            "PUT liveEvents/news".into(),
            "POST streamingEndpoints/default/scale".into(),
            format!("PUT assets/{occurrence}"),
            format!("PUT liveEvents/news/liveOutputs/{occurrence}"),
            format!("PUT streamingLocators/{occurrence}"),
            format!("DELETE liveEvents/news/liveOutputs/{occurrence}"),
            "POST liveEvents/news/stop".into(),
            "POST streamingEndpoints/default/scale".into(),
        ]
    );
    let endpoint = emulator.client().get_streaming_endpoint("default").await.unwrap().unwrap();
    assert_eq!(endpoint.properties.scale_units, Some(1), "scaled back to the off-air units");
    let store = view(&settings);
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let counts = store.outbox_counts().unwrap();
    assert_eq!(counts.get("succeeded"), Some(&10), "{counts:?}");
    engine.stop().await;
}

#[tokio::test]
async fn a_duplicate_event_has_one_effect_and_unknown_subjects_are_refused() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(&emulator, directory.path(), NEWS);
    let engine = TestEngine::start(&settings).await;
    assert_eq!(engine.step("news", "warmup").await, Outcome::Committed);
    assert_eq!(engine.step("news", "warmup").await, Outcome::Duplicate);
    settled(&settings, "news", "standby").await;
    assert_eq!(engine.step("news", "warmup").await, Outcome::Duplicate);
    let starts = writes(&emulator.requests()).iter().filter(|write| *write == "PUT liveEvents/news").count();
    assert_eq!(starts, 1);
    let duplicates = view(&settings).audit("news", 100).unwrap().iter().filter(|row| row.kind == "duplicate").count();
    assert_eq!(duplicates, 2, "duplicates are audited");

    let outcome = engine.send("x1", event::SCHEDULE_FIRED, "weather", json!({})).await;
    assert!(matches!(outcome, Outcome::Unroutable(reason) if reason.contains("weather")));
    // A liveEvent/<channel> subject reaches the broadcast of that channel.
    let outcome = engine.send("x2", "onair.encoder.connected", "liveEvent/news", json!({})).await;
    assert_eq!(outcome, Outcome::Committed);
    engine.stop().await;
}

#[tokio::test]
async fn a_failed_action_stops_the_broadcast_and_resume_picks_it_up() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let mut settings = settings(&emulator, directory.path(), NEWS);
    settings.engine.action_attempts = 2;
    emulator
        .emulator
        .set_faults(onair::emulator::Faults {
            lro_fail_next: 2,
            lro_failure_code: "InsufficientCapacity".into(),
            ..Default::default()
        })
        .unwrap();
    let engine = TestEngine::start(&settings).await;
    engine.step("news", "warmup").await;
    settled(&settings, "news", "failed").await;
    let (_, vars) = state(&settings, "news").unwrap();
    assert_eq!(vars["failed_in"], "warming");
    assert_eq!(vars["failed_action"]["action"], "endpoint.start", "the first long-running operation of the warm-up");
    assert!(vars["error"].as_str().unwrap().contains("InsufficientCapacity"), "{vars:?}");
    let audit = view(&settings).audit("news", 100).unwrap();
    let attempts = audit
        .iter()
        .filter(|row| row.reason.starts_with("action endpoint.start") && row.reason.contains("started"))
        .count();
    assert_eq!(attempts, 2, "retried up to action_attempts");
    assert!(
        audit.iter().any(|row| row.reason.starts_with("action notify") && row.reason.ends_with("succeeded")),
        "the failure was notified"
    );

    assert_eq!(engine.send("r1", "onair.command.resume", "news", json!({})).await, Outcome::Committed);
    settled(&settings, "news", "standby").await;
    engine.stop().await;
}

#[tokio::test]
async fn a_durable_timer_due_while_down_fires_exactly_once_after_restart() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(&emulator, directory.path(), "[broadcasts.news]\nsettings = { reset_after = \"1s\" }\n");
    let engine = TestEngine::start(&settings).await;
    engine.send("go", "onair.command.start-now", "news", json!({"occurrence": "20261124t1800z"})).await;
    settled(&settings, "news", "live").await;
    engine.send("lost", "onair.encoder.disconnected", "liveEvent/news", json!({})).await;
    settled(&settings, "news", "degraded").await;
    engine.stop().await;

    // Down while the timer comes due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let engine = TestEngine::start(&settings).await;
    let resets =
        |emulator: &TestEmulator| writes(&emulator.requests()).iter().filter(|write| write.ends_with("/reset")).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while resets(&emulator) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the overdue timer never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    settled(&settings, "news", "degraded").await;
    engine.stop().await;
    let engine = TestEngine::start(&settings).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.stop().await;

    assert_eq!(resets(&emulator), 1, "one channel reset");
    let fired = view(&settings)
        .audit("news", 200)
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == "decision" && row.event_type.as_deref() == Some(event::TIMER_FIRED))
        .collect::<Vec<_>>();
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert!(fired[0].reason.contains("still gone"), "{}", fired[0].reason);
}

#[tokio::test]
async fn an_action_in_flight_at_shutdown_resumes_without_a_second_write() {
    let mut emulator_settings = emulator_settings();
    emulator_settings.transition = Duration::from_millis(600);
    let emulator = TestEmulator::start(emulator_settings).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(&emulator, directory.path(), NEWS);
    let engine = TestEngine::start(&settings).await;
    engine.step("news", "warmup").await;
    let created =
        |emulator: &TestEmulator| writes(&emulator.requests()).iter().any(|write| write == "PUT liveEvents/news");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !created(&emulator) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.stop().await;
    assert_eq!(view(&settings).pending_actions().unwrap().len(), 1, "channel.start is still pending");

    let engine = TestEngine::start(&settings).await;
    settled(&settings, "news", "standby").await;
    engine.stop().await;
    let channel_writes: Vec<String> =
        writes(&emulator.requests()).into_iter().filter(|write| write.contains("liveEvents/news")).collect();
    assert_eq!(channel_writes, ["PUT liveEvents/news"], "the start was resumed, not repeated");
}
