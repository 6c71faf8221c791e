//! The engine against the emulator, fed directly: lifecycles, duplicates, failures, durable
//! timers and restarts.

use std::sync::Arc;
use std::time::Duration;

use onair::engine;
use onair::engine::Outcome;
use onair::event::{self, Event};
use onair::store;
use serde_json::json;

use crate::daemon::{NEIGHBOURS, TestEngine, settings, settled, state, view};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::lifecycle::writes;

/// `news`, and two neighbours (one failed, one in cooldown) that its lifecycle must not touch.
const NEWS: &str = "[broadcasts.news]\nunits = { on_air = 3, off_air = 1 }\n[broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.travel]\nchannel = \"travel\"\n";

#[tokio::test]
async fn schedule_steps_drive_a_broadcast_through_its_lifecycle() {
    let mut emulator_settings = emulator_settings();
    emulator_settings.transition = std::time::Duration::from_millis(30);
    let emulator = TestEmulator::start(emulator_settings).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(&emulator, directory.path(), NEWS);
    let engine = TestEngine::start(&settings).await;
    let neighbours = engine.neighbours(&settings).await;

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
    neighbours.untouched(&settings);
}

#[tokio::test]
async fn a_duplicate_event_has_one_effect_and_unknown_subjects_are_refused() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(&emulator, directory.path(), NEWS);
    let engine = TestEngine::start(&settings).await;
    let neighbours = engine.neighbours(&settings).await;
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
    neighbours.untouched(&settings);
}

/// A lane reads nothing before deciding a batch whose broadcasts it holds: the commit's own
/// check finds a duplicate, refuses the batch, and the batch is decided again at once after a
/// read of what is processed. Three broadcasts in three states, each held by its lane, each
/// sent its last event again: each is a duplicate, audited, with no effect, no commit failure
/// and no backoff (an hour here, which the test would never outlive).
#[tokio::test]
async fn a_duplicate_for_a_broadcast_its_lane_holds_is_refused_by_the_commit_and_decided_again_at_once() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let mut settings = settings(&emulator, directory.path(), NEWS);
    settings.engine.commit_backoff_initial = Duration::from_secs(3600);
    settings.engine.commit_backoff_max = Duration::from_secs(3600);
    let engine = TestEngine::start(&settings).await;
    assert_eq!(engine.step("news", "warmup").await, Outcome::Committed);
    settled(&settings, "news", "standby").await;
    let pause = |id: &str, broadcast: &str| (id.to_string(), "onair.command.pause", broadcast.to_string());
    let resume = |id: &str, broadcast: &str| (id.to_string(), "onair.command.resume", broadcast.to_string());
    let (sport, travel) = (pause("p1", "sport"), resume("r1", "travel"));
    for (id, kind, subject) in [pause("p0", "travel"), sport.clone(), travel.clone()] {
        assert_eq!(engine.send(&id, kind, &subject, json!({})).await, Outcome::Committed, "{id}");
    }
    let states = || -> Vec<(String, serde_json::Value)> {
        ["news", "sport", "travel"]
            .iter()
            .map(|broadcast| state(&settings, broadcast).map(|(state, vars)| (state, vars["paused"].clone())).unwrap())
            .collect()
    };
    let before = states();
    assert_eq!(before, [("standby".into(), json!(false)), ("idle".into(), json!(true)), ("idle".into(), json!(false))]);

    // All three at once, so that they share batches where their lanes do.
    let again = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            engine.step("news", "warmup"),
            engine.send(&sport.0, sport.1, &sport.2, json!({})),
            engine.send(&travel.0, travel.1, &travel.2, json!({})),
        )
    })
    .await
    .expect("decided again at once, not after the backoff");
    assert_eq!(again, (Outcome::Duplicate, Outcome::Duplicate, Outcome::Duplicate));
    assert_eq!(engine.metrics.commits().failures(), 0, "a duplicate is not a failure of the store");
    assert_eq!(states(), before, "no effect");
    for broadcast in ["news", "sport", "travel"] {
        let audit = view(&settings).audit(broadcast, 100).unwrap();
        assert_eq!(audit.iter().filter(|row| row.kind == "duplicate").count(), 1, "{broadcast}: {audit:?}");
    }
    let starts = writes(&emulator.requests()).iter().filter(|write| *write == "PUT liveEvents/news").count();
    assert_eq!(starts, 1);
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
            ..onair::emulator::Faults::none()
        })
        .unwrap();
    let engine = TestEngine::start(&settings).await;
    let neighbours = engine.neighbours(&settings).await;
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
    neighbours.untouched(&settings);
}

#[tokio::test]
async fn a_durable_timer_due_while_down_fires_exactly_once_after_restart() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(
        &emulator,
        directory.path(),
        &format!("[broadcasts.news]\nsettings = {{ reset_after = \"1s\" }}\n{NEIGHBOURS}"),
    );
    let engine = TestEngine::start(&settings).await;
    let neighbours = engine.neighbours(&settings).await;
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
    neighbours.untouched(&settings);

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
    let neighbours = engine.neighbours(&settings).await;
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
    neighbours.untouched(&settings);
    let channel_writes: Vec<String> =
        writes(&emulator.requests()).into_iter().filter(|write| write.contains("liveEvents/news")).collect();
    assert_eq!(channel_writes, ["PUT liveEvents/news"], "the start was resumed, not repeated");
}

/// The real store, with faults the test switches on: commits refused as if an event of the batch
/// had been processed meanwhile (the lane then starts over from the store), and failed reads.
struct Faulty {
    store: onair::store::SqliteStore,
    refuse_commits: std::sync::atomic::AtomicUsize,
    fail_reads: std::sync::atomic::AtomicUsize,
    /// Commits that take 400 ms (after the refusal check), to hold a lane busy.
    slow_commits: std::sync::atomic::AtomicUsize,
    /// Attempt records the store cannot queue at once (as when its writer's queue is full):
    /// written 300 ms after they are waited for, in no order with other writes.
    late_records: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    fn take(counter: &std::sync::atomic::AtomicUsize) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        counter.fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1)).is_ok()
    }
}

impl onair::store::Store for Faulty {
    fn load_instances(&self) -> Result<Vec<store::InstanceRecord>, store::Error> {
        self.store.load_instances()
    }
    fn load_instance(&self, broadcast: &str) -> Result<Option<store::InstanceRecord>, store::Error> {
        if Self::take(&self.fail_reads) {
            return Err(store::Error::Sql { operation: "load instances", reason: "disk I/O error".into() });
        }
        self.store.load_instance(broadcast)
    }
    fn processed(&self, events: &[(String, String)]) -> Result<Vec<bool>, store::Error> {
        self.store.processed(events)
    }
    fn commit(&self, batch: Vec<store::Commit>) -> Result<Vec<store::Committed>, store::Error> {
        if Self::take(&self.refuse_commits) {
            let first = &batch[0];
            return Err(store::Error::UnexpectedDuplicate {
                event_id: first.event_id.clone(),
                broadcast: first.broadcast.clone(),
            });
        }
        if Self::take(&self.slow_commits) {
            std::thread::sleep(Duration::from_millis(400));
        }
        self.store.commit(batch)
    }
    fn pending_actions(&self) -> Result<Vec<store::OutboxRow>, store::Error> {
        self.store.pending_actions()
    }
    fn action_started(&self, outbox_id: i64, attempt: u32, at: chrono::DateTime<chrono::Utc>) -> store::Queued<()> {
        if Self::take(&self.late_records) {
            let path = self.store.path().to_path_buf();
            return store::Queued::later(move || {
                std::thread::sleep(Duration::from_millis(300));
                onair::store::SqliteStore::open(&path)?.action_started(outbox_id, attempt, at).wait()
            });
        }
        self.store.action_started(outbox_id, attempt, at)
    }
    fn audit(&self, broadcast: &str, limit: usize) -> Result<Vec<store::AuditRow>, store::Error> {
        self.store.audit(broadcast, limit)
    }
    fn audit_query(&self, query: &store::AuditQuery) -> Result<Vec<store::AuditRow>, store::Error> {
        self.store.audit_query(query)
    }
    fn purge_processed(&self, before: chrono::DateTime<chrono::Utc>) -> Result<usize, store::Error> {
        self.store.purge_processed(before)
    }
    fn integrity_check(&self) -> Result<String, store::Error> {
        self.store.integrity_check()
    }
    fn schedule_cursors(&self) -> Result<std::collections::BTreeMap<String, store::Cursor>, store::Error> {
        self.store.schedule_cursors()
    }
    fn schedule_progress(&self, records: Vec<store::ScheduleRecord>) -> Result<(), store::Error> {
        self.store.schedule_progress(records)
    }
    fn broadcasts(&self) -> Result<Vec<store::BroadcastRecord>, store::Error> {
        self.store.broadcasts()
    }
    fn change_broadcasts(
        &self,
        changes: Vec<store::BroadcastChange>,
    ) -> Result<Vec<Option<store::BroadcastRecord>>, store::Error> {
        self.store.change_broadcasts(changes)
    }
    fn schedule_holds(&self) -> Result<store::ScheduleHolds, store::Error> {
        self.store.schedule_holds()
    }
    fn write_schedule_holds(&self, write: store::HoldWrite) -> Result<(), store::Error> {
        self.store.write_schedule_holds(write)
    }
}

/// news live, sport failed and weather standby, sharing one lane (as many broadcasts share a lane
/// in production), on the real store behind `Faulty`.
async fn three_on_one_lane() -> (TestEmulator, tempfile::TempDir, onair::daemon::Settings, Arc<Faulty>, TestEngine) {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let mut settings = settings(
        &emulator,
        directory.path(),
        "[broadcasts.news]\n[broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.weather]\nchannel = \"weather\"\n",
    );
    settings.engine.lanes = 1;
    let faulty = Arc::new(Faulty {
        store: onair::store::SqliteStore::open(&settings.engine.store).unwrap(),
        refuse_commits: 0.into(),
        fail_reads: 0.into(),
        slow_commits: 0.into(),
        late_records: 0.into(),
    });
    let engine = TestEngine::start_with_store(&settings, faulty.clone()).await;
    let force = |state: &str| json!({"state": state, "note": "test", "by": "test"});
    for (broadcast, state) in [("news", "live"), ("sport", "failed"), ("weather", "standby")] {
        let outcome = engine.send(&format!("force-{broadcast}"), event::FORCE_STATE, broadcast, force(state)).await;
        assert_eq!(outcome, Outcome::Committed, "{broadcast}");
    }
    (emulator, directory, settings, faulty, engine)
}

/// An attempt record the store could not queue at once is waited for before the action's result
/// is reported: in the audit, each of weather's actions shows its start before its result (it
/// fails: weather was forced to standby with no channel), though the records land 300 ms late.
/// news (live) and sport (failed) run no action.
#[tokio::test]
async fn an_attempt_record_not_queued_in_order_is_waited_for_before_the_result() {
    use std::sync::atomic::Ordering::SeqCst;
    let (_emulator, _directory, settings, faulty, engine) = three_on_one_lane().await;
    faulty.late_records.store(usize::MAX, SeqCst);
    let command = format!("{}start-now", event::COMMAND_PREFIX);
    assert_eq!(engine.send("go", &command, "weather", json!({})).await, Outcome::Committed);
    let pending = || async { view(&settings).pending_actions().unwrap().iter().all(|row| row.broadcast != "weather") };
    crate::operations::until_async(Duration::from_secs(20), "weather's actions finish", pending).await;
    engine.stop().await;
    assert!(faulty.late_records.load(SeqCst) < usize::MAX, "records were late");

    let reasons: Vec<String> = view(&settings)
        .audit("weather", 200)
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == "action")
        .map(|row| row.reason)
        .collect();
    let results: Vec<&String> = reasons.iter().filter(|reason| !reason.contains(" started, attempt ")).collect();
    assert!(!results.is_empty(), "weather ran its actions: {reasons:#?}");
    for result in &results {
        // "action <kind> (#<id>) failed": its start is "action <kind> (#<id>) started, attempt 1".
        let head = &result[..result.find(')').unwrap() + 1];
        let started = reasons.iter().position(|reason| reason.starts_with(head) && reason.contains("started"));
        let finished = reasons.iter().position(|reason| reason == *result);
        assert!(started.is_some() && started < finished, "{head}: {reasons:#?}");
    }
    for other in ["news", "sport"] {
        assert!(view(&settings).audit(other, 100).unwrap().iter().all(|row| row.kind != "action"), "{other}");
    }
    println!("weather's action results, each after its start with records 300 ms late: {results:?}");
}

/// After a refused commit a lane reads its broadcast again from the store; it must get that
/// broadcast's record (not the one sorting last), and a failed read must not restart the
/// broadcast from its initial state. Three broadcasts in three states; each is checked.
#[tokio::test]
async fn a_lane_starts_over_from_its_own_broadcasts_record_after_a_refused_commit() {
    use std::sync::atomic::Ordering::SeqCst;
    let (_emulator, _directory, settings, faulty, engine) = three_on_one_lane().await;
    let before: Vec<_> = view(&settings).load_instances().unwrap();
    assert_eq!(
        before.iter().map(|record| (record.broadcast.as_str(), record.state.as_str())).collect::<Vec<_>>(),
        [("news", "live"), ("sport", "failed"), ("weather", "standby")]
    );

    // news's commit is refused (as if n1 had been processed meanwhile) and the read that follows
    // fails once: the lane holds n1, forgets its cached news, and retries until it reads news's
    // own record again and commits n1 on it. n1 is answered only then.
    faulty.refuse_commits.store(1, SeqCst);
    faulty.fail_reads.store(1, SeqCst);
    assert_eq!(engine.send("n1", "something.else", "news", json!({})).await, Outcome::Committed);
    assert_eq!(faulty.refuse_commits.load(SeqCst), 0, "the refusal happened");
    assert_eq!(faulty.fail_reads.load(SeqCst), 0, "the failed read happened");
    assert_eq!(engine.send("s1", "something.else", "sport", json!({})).await, Outcome::Committed);
    // Refused twice: the second time after the read that follows the first, so the lane takes
    // its backoff rather than looping; n2 is still committed once.
    faulty.refuse_commits.store(2, SeqCst);
    assert_eq!(engine.send("n2", "something.else", "news", json!({})).await, Outcome::Committed);
    assert_eq!(faulty.refuse_commits.load(SeqCst), 0, "both refusals happened");
    engine.stop().await;

    let after = view(&settings).load_instances().unwrap();
    let by_id = |records: &[onair::store::InstanceRecord], id: &str| {
        records.iter().find(|record| record.broadcast == id).cloned().unwrap()
    };
    let (news_before, news_after) = (by_id(&before, "news"), by_id(&after, "news"));
    assert_eq!(news_after.state, "live", "news kept its own state: {news_after:?}");
    assert_eq!(news_after.vars, news_before.vars, "and its own variables");
    assert_eq!(news_after.since, news_before.since, "and the instant it went live");
    assert_eq!(news_after.seq, news_before.seq + 2, "two more decisions (n1, n2), each committed once after refusals");
    let sport = by_id(&after, "sport");
    assert_eq!((sport.state.as_str(), sport.seq), ("failed", by_id(&before, "sport").seq + 1));
    assert_eq!(by_id(&after, "weather"), by_id(&before, "weather"), "weather untouched");
    let decided: Vec<String> = view(&settings)
        .audit("news", 100)
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == "decision")
        .filter_map(|row| row.event_id)
        .collect();
    assert_eq!(decided, ["force-news", "n1", "n2"]);
    println!(
        "lane re-read: news {} seq {} -> {}, sport {} seq {}, weather {} seq {}",
        news_after.state,
        news_before.seq,
        news_after.seq,
        sport.state,
        sport.seq,
        by_id(&after, "weather").state,
        by_id(&after, "weather").seq
    );
}

/// Two events of one broadcast in one batch, and the first cannot be decided (its broadcast's
/// record cannot be read after a refused commit): the second waits with it, so they are decided
/// in their order, never the second first. Three broadcasts in three states share the lane.
#[tokio::test]
async fn a_broadcasts_later_event_waits_for_an_earlier_one_that_could_not_be_decided() {
    use std::sync::atomic::Ordering::SeqCst;
    let (_emulator, _directory, settings, faulty, engine) = three_on_one_lane().await;
    let engine = Arc::new(engine);
    // weather's commit holds the lane while n1 and n2 queue behind it; then n1 and n2's commit
    // is refused and the read of news that follows fails once.
    faulty.slow_commits.store(1, SeqCst);
    let busy = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move { engine.send("w1", "something.else", "weather", json!({})).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    faulty.refuse_commits.store(1, SeqCst);
    faulty.fail_reads.store(1, SeqCst);
    let (n1, n2) = tokio::join!(
        engine.send("n1", "something.else", "news", json!({})),
        engine.send("n2", "something.else", "news", json!({}))
    );
    assert_eq!(busy.await.unwrap(), Outcome::Committed);
    assert_eq!((n1, n2), (Outcome::Committed, Outcome::Committed));
    assert_eq!(faulty.refuse_commits.load(SeqCst), 0, "the refusal happened");
    assert_eq!(faulty.fail_reads.load(SeqCst), 0, "the failed read happened");
    assert_eq!(engine.send("s1", "something.else", "sport", json!({})).await, Outcome::Committed);
    Arc::into_inner(engine).expect("one owner").stop().await;

    let decided = |broadcast: &str| -> Vec<String> {
        view(&settings)
            .audit(broadcast, 100)
            .unwrap()
            .into_iter()
            .filter(|row| row.kind == "decision")
            .filter_map(|row| row.event_id)
            .collect()
    };
    assert_eq!(decided("news"), ["force-news", "n1", "n2"], "news's events in their order");
    assert_eq!(decided("sport"), ["force-sport", "s1"]);
    assert_eq!(decided("weather"), ["force-weather", "w1"]);
    let states: Vec<(String, String, i64)> = view(&settings)
        .load_instances()
        .unwrap()
        .into_iter()
        .map(|record| (record.broadcast, record.state, record.seq))
        .collect();
    assert_eq!(
        states,
        [
            ("news".to_string(), "live".to_string(), 3),
            ("sport".to_string(), "failed".to_string(), 2),
            ("weather".to_string(), "standby".to_string(), 2)
        ]
    );
}

/// A heartbeat's time feeds the silent-encoder gauge, but never beyond now: one dated years ahead
/// (a wrong clock, or a forged delivery) would hide the encoder's silence for good. Three channels:
/// a future-dated heartbeat, a past-dated one, one without a time.
#[tokio::test]
async fn a_heartbeat_dated_in_the_future_counts_as_now() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let settings = settings(
        &emulator,
        directory.path(),
        "[broadcasts.news]\n[broadcasts.sport]\nchannel = \"sport\"\n[broadcasts.weather]\nchannel = \"weather\"\n",
    );
    let engine = TestEngine::start(&settings).await;
    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
    let future = now + chrono::Duration::days(3650);
    let past = now - chrono::Duration::seconds(90);
    for (id, channel, time) in
        [("h-news", "news", Some(future)), ("h-sport", "sport", Some(past)), ("h-weather", "weather", None)]
    {
        let mut heartbeat = Event::new(id, event::ENCODER_HEARTBEAT, format!("liveEvent/{channel}"), json!({}), now);
        heartbeat.time = time;
        assert_eq!(engine::deliver(&engine.engine.input(), heartbeat).await, Outcome::Committed, "{channel}");
    }
    let after = onair::clock::Clock::now(&onair::clock::SystemClock);
    let news = engine.metrics.last_heartbeat("news").unwrap();
    assert!(news >= now && news <= after, "a heartbeat from the future counts as now: {news}");
    assert_eq!(engine.metrics.last_heartbeat("sport"), Some(past), "a past heartbeat keeps its time");
    let weather = engine.metrics.last_heartbeat("weather").unwrap();
    assert!(weather >= now && weather <= after, "no time: now ({weather})");
    engine.stop().await;
}
