//! The manager over a real SQLite store: three broadcasts in different states (news: from the
//! file, never decided; sport: from the file, live; weather: from the API, standby), each checked.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::*;
use crate::clock::{ManualClock, SharedClock};
use crate::machine::Library;
use crate::store::{Commit, DecisionRecord, Expected, InstanceRecord, SqliteStore, Store};

fn now() -> DateTime<Utc> {
    "2026-12-07T10:00:00Z".parse().unwrap()
}

/// The daemon's settings from a config file holding `broadcasts`.
fn settings(broadcasts: &str) -> crate::daemon::Settings {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(broadcasts.as_bytes()).unwrap();
    let source = crate::config::Source { file: Some(file.path().to_path_buf()), env: Default::default() };
    crate::daemon::load(&source).unwrap()
}

fn parser(settings: &crate::daemon::Settings) -> Parser {
    Parser::new(settings.engine.defaults.clone(), settings.engine.content_key_policies.clone())
}

fn file(settings: &crate::daemon::Settings) -> FileBroadcasts<'_> {
    FileBroadcasts { broadcasts: &settings.engine.broadcasts, sources: &settings.engine.sources }
}

const FILE: &str = "[broadcasts.news]\n[broadcasts.sport]\nprotocol = \"RTMP\"\n\
                    [broadcasts.sport.schedule]\ncron = \"0 19 * * *\"\nduration = \"30m\"\n";

struct Fixture {
    _directory: tempfile::TempDir,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    manager: Manager,
}

async fn start(store: Arc<dyn Store>, clock: &Arc<ManualClock>, config: &str) -> Result<Manager, Error> {
    let settings = settings(config);
    Manager::start(
        store,
        parser(&settings),
        Arc::new(Library::built_in()),
        &file(&settings),
        Arc::clone(clock) as SharedClock,
    )
    .await
}

/// news and sport from the file, weather from the API; sport live, weather standby.
async fn fixture() -> Fixture {
    let directory = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&directory.path().join("onair.db")).unwrap());
    let clock = Arc::new(ManualClock::new(now()));
    let manager = start(Arc::clone(&store), &clock, FILE).await.unwrap();
    let weather = definition(json!({"channel": "weather-ch", "settings": {"region": "north"}}));
    manager.put("weather", weather, Expected::Absent, &Who("alice".into())).await.unwrap();
    set_state(&store, "sport", "live", 1);
    set_state(&store, "weather", "standby", 1);
    Fixture { _directory: directory, store, clock, manager }
}

fn definition(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn set_state(store: &Arc<dyn Store>, broadcast: &str, state: &str, seq: i64) {
    let commit = Commit {
        duplicate: false,
        broadcast: broadcast.into(),
        machine: "live".into(),
        at: now(),
        event_id: format!("{broadcast}-{seq}"),
        event_type: "test".into(),
        event: json!({}),
        decision: DecisionRecord {
            outcome: "transition".into(),
            from: "idle".into(),
            to: state.into(),
            transition: None,
            reason: "test".into(),
            detail: json!({}),
        },
        instance: Some(InstanceRecord {
            broadcast: broadcast.into(),
            machine: "live".into(),
            state: state.into(),
            vars: Map::new(),
            timers: BTreeMap::new(),
            since: now(),
            seq,
        }),
        actions: Vec::new(),
        completes: None,
    };
    store.commit(vec![commit]).unwrap();
}

fn config_rows(store: &Arc<dyn Store>, broadcast: &str) -> Vec<crate::store::AuditRow> {
    store.audit(broadcast, 1000).unwrap().into_iter().filter(|row| row.kind == "config").collect()
}

#[tokio::test]
async fn each_broadcast_keeps_its_origin_revision_and_audit() {
    let Fixture { store, manager, .. } = fixture().await;
    let catalog = manager.registry().current();
    let origins: Vec<(&str, Origin)> = catalog.iter().map(|(id, entry)| (id.as_str(), entry.origin)).collect();
    assert_eq!(origins, [("news", Origin::File), ("sport", Origin::File), ("weather", Origin::Api)]);
    let revisions: Vec<i64> = catalog.iter().map(|(_, entry)| entry.revision).collect();
    assert_eq!(revisions, [1, 2, 3], "one counter for all broadcasts");
    assert_eq!(catalog.get("weather").unwrap().broadcast.settings["region"], "north");
    assert_eq!(catalog.get("weather").unwrap().updated_by, "alice");
    assert_eq!(catalog.targets("liveEvent/WEATHER-CH"), ["weather"]);
    assert_eq!(catalog.targets("liveEvent/sport"), ["sport"]);
    for (id, who) in [("news", "config file"), ("sport", "config file"), ("weather", "alice")] {
        let rows = config_rows(&store, id);
        assert_eq!(rows.len(), 1, "{id}: {rows:?}");
        assert_eq!(rows[0].detail["who"], who, "{id}");
        assert_eq!(rows[0].detail["change"], "created", "{id}");
    }
    let diff = config_rows(&store, "weather")[0].detail["diff"].clone();
    assert_eq!(diff, json!(["+ channel = \"weather-ch\"", "+ settings.region = \"north\""]));
}

#[tokio::test]
async fn a_put_is_validated_whole_and_refused_when_it_would_disturb_what_runs() {
    let Fixture { store, manager, .. } = fixture().await;
    let alice = Who("alice".into());
    // Every problem at once, each with its key.
    let bad =
        definition(json!({"protocol": "SRT", "machine": "nope", "schedule": {"cron": "0 25 * * *"}, "colour": 1}));
    let Err(Error::Invalid(problems)) = manager.put("rain", bad, Expected::Any, &alice).await else { panic!() };
    let keys: Vec<&str> = problems.iter().map(|problem| problem.key.as_str()).collect();
    for key in ["broadcasts.rain.protocol", "broadcasts.rain.schedule.cron", "broadcasts.rain.colour"] {
        assert!(keys.contains(&key), "{key} in {problems:?}");
    }
    let unknown_machine = definition(json!({"machine": "nope"}));
    let Err(Error::Invalid(problems)) = manager.put("rain", unknown_machine, Expected::Any, &alice).await else {
        panic!()
    };
    assert_eq!(problems[0].key, "broadcasts.rain.machine", "{problems:?}");
    assert!(manager.put("Rain!", Map::new(), Expected::Any, &alice).await.is_err());
    // A clash with sport's channel at the same time, found with the broadcasts on its channel.
    let clash = definition(json!({"channel": "sport", "schedule": {"cron": "10 19 * * *", "duration": "30m"}}));
    let Err(Error::Invalid(problems)) = manager.put("rain", clash, Expected::Any, &alice).await else { panic!() };
    assert!(problems.iter().any(|problem| problem.reason.contains("same time")), "{problems:?}");

    // The file's broadcasts are the file's.
    assert!(matches!(manager.put("sport", Map::new(), Expected::Any, &alice).await, Err(Error::FileOwned(_))));
    // weather is on standby: a new channel would disturb it; new settings do not.
    let moved = definition(json!({"channel": "elsewhere"}));
    let Err(Error::Busy { state, .. }) = manager.put("weather", moved, Expected::Any, &alice).await else { panic!() };
    assert_eq!(state, "standby");
    let revision = manager.registry().current().get("weather").unwrap().revision;
    let stale = Expected::Revision(revision - 1);
    let calmer = definition(json!({"channel": "weather-ch", "settings": {"region": "south"}}));
    let Err(Error::Conflict { found, .. }) = manager.put("weather", calmer.clone(), stale, &alice).await else {
        panic!()
    };
    assert_eq!(found, Some(revision));
    let entry = manager.put("weather", calmer, Expected::Revision(revision), &Who("bob".into())).await.unwrap();
    assert!(entry.revision > revision);
    assert_eq!(entry.broadcast.settings["region"], "south");
    let rows = config_rows(&store, "weather");
    assert_eq!(rows.last().unwrap().detail["diff"], json!(["~ settings.region: \"north\" -> \"south\""]));
    assert_eq!(rows.last().unwrap().detail["who"], "bob");
    // Nothing of the refusals reached the others.
    let catalog = manager.registry().current();
    assert_eq!(catalog.len(), 3);
    assert_eq!(catalog.get("sport").unwrap().revision, 2);
    assert_eq!(store.load_instance("sport").unwrap().unwrap().state, "live");
}

#[tokio::test]
async fn delete_removes_idle_refuses_busy_and_forced_waits_for_idle() {
    let Fixture { store, manager, .. } = fixture().await;
    let alice = Who("alice".into());
    let hail = definition(json!({"channel": "hail"}));
    manager.put("hail", hail.clone(), Expected::Absent, &alice).await.unwrap();
    let first_life = manager.registry().current().get("hail").unwrap().incarnation;
    set_state(&store, "hail", "idle", 1);
    assert_eq!(manager.delete("hail", Expected::Any, false, &alice).await.unwrap(), Deleted::Removed);
    assert!(store.load_instance("hail").unwrap().is_none(), "its instance went with it");
    assert_eq!(config_rows(&store, "hail").len(), 2, "its audit stays");
    // Created again: a new life.
    manager.put("hail", hail, Expected::Absent, &alice).await.unwrap();
    assert!(manager.registry().current().get("hail").unwrap().incarnation > first_life);

    assert!(matches!(manager.delete("news", Expected::Any, true, &alice).await, Err(Error::FileOwned(_))));
    let Err(Error::Busy { state, .. }) = manager.delete("weather", Expected::Any, false, &alice).await else {
        panic!()
    };
    assert_eq!(state, "standby");
    let before = manager.registry().current();
    let deleted = manager.delete("weather", Expected::Any, true, &alice).await.unwrap();
    assert_eq!(deleted, Deleted::Stopping { state: "standby".into() });
    let after = manager.registry().current();
    assert!(after.get("weather").unwrap().deleting);
    assert_eq!(after.deleting(), ["weather"]);
    assert!(!manager.finish_removal("weather").await.unwrap(), "still on standby");
    assert!(!manager.finish_removal("sport").await.unwrap(), "not marked");
    set_state(&store, "weather", "idle", 2);
    assert!(manager.finish_removal("weather").await.unwrap());
    let catalog = manager.registry().current();
    assert!(!catalog.contains("weather"));
    assert_eq!(store.load_instance("sport").unwrap().unwrap().state, "live", "sport untouched");
    let changes = before.schedule_changes(&after);
    assert!(changes.is_empty(), "weather has no schedule: {changes:?}");
}

#[tokio::test]
async fn start_and_reload_reconcile_the_file() {
    let Fixture { store, clock, manager, .. } = fixture().await;
    drop(manager);
    // Same file: nothing changes.
    let manager = start(Arc::clone(&store), &clock, FILE).await.unwrap();
    let revisions: Vec<i64> = manager.registry().current().iter().map(|(_, entry)| entry.revision).collect();
    assert_eq!(revisions, [1, 2, 3], "the API broadcast survives a restart with its revision");

    // Reload: news (idle) removed, sport (live) gets a new duration, rain added.
    let changed = "[broadcasts.sport]\nprotocol = \"RTMP\"\n[broadcasts.sport.schedule]\ncron = \"0 19 * * *\"\n\
                   duration = \"45m\"\n[broadcasts.rain]\nchannel = \"rain\"\n";
    let next = settings(changed);
    let before = manager.registry().current();
    let report = manager.reload(&file(&next), Arc::new(Library::built_in())).await.unwrap();
    assert_eq!(
        (report.created, report.changed, report.removed),
        (vec!["rain".into()], vec!["sport".into()], vec!["news".into()])
    );
    let after = manager.registry().current();
    let ids: Vec<&String> = after.iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["rain", "sport", "weather"]);
    assert_eq!(
        after.get("sport").unwrap().broadcast.schedule.as_ref().unwrap().duration,
        chrono::TimeDelta::minutes(45)
    );
    let changes: Vec<String> = before.schedule_changes(&after).iter().map(|change| format!("{change:?}")).collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].starts_with("Arm { broadcast: \"sport\""), "{changes:?}");

    // A live broadcast's channel cannot change; an unknown machine is refused: the whole reload
    // is, with every problem, and audited.
    let invalid =
        "[broadcasts.sport]\nchannel = \"other\"\nprotocol = \"RTMP\"\n[broadcasts.rain]\nmachine = \"gone\"\n";
    let refused = manager.reload(&file(&settings(invalid)), Arc::new(Library::built_in())).await;
    let Err(Error::Invalid(problems)) = refused else { panic!("{refused:?}") };
    let keys: Vec<&str> = problems.iter().map(|problem| problem.key.as_str()).collect();
    assert!(keys.contains(&"broadcasts.sport"), "{problems:?}");
    assert!(keys.contains(&"broadcasts.rain.machine"), "{problems:?}");
    let unchanged = manager.registry().current();
    assert_eq!(unchanged.get("sport").unwrap().revision, after.get("sport").unwrap().revision);
    let notes = config_rows(&store, "");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].reason.starts_with("reload refused"), "{notes:?}");

    // sport removed from the file while live: it finishes what it started, then goes.
    let report = manager.reload(&file(&settings("[broadcasts.rain]\n")), Arc::new(Library::built_in())).await.unwrap();
    assert_eq!(report.retiring, ["sport"]);
    let retiring = manager.registry().current();
    assert!(retiring.get("sport").unwrap().deleting);
    let changes = unchanged.schedule_changes(&retiring);
    assert!(changes.iter().any(|change| format!("{change:?}") == "Disarm { broadcast: \"sport\" }"), "{changes:?}");
    set_state(&store, "sport", "idle", 2);
    assert!(manager.finish_removal("sport").await.unwrap());
    assert_eq!(manager.registry().current().get("weather").unwrap().updated_by, "alice", "the API's untouched");
}

/// A definition as written is kept as text and given back as the same table: nested tables,
/// arrays, numbers, booleans and strings; an empty one too.
#[test]
fn a_definition_as_written_comes_back_as_written() {
    let tables = [
        json!({}),
        json!({"channel": "news"}),
        json!({"channel": "sport", "units": {"on_air": 3, "off_air": 0}, "settings": {"reset_after": "90s", "ratio": 0.5}}),
        json!({"schedule": {"cron": "0 19 * * 1-5", "exclude": ["2026-12-25"], "lead": {"channel": "10m"}}, "paused": false}),
    ];
    for table in tables {
        let table = table.as_object().cloned().unwrap();
        assert_eq!(Written::of(&table).table(), table);
    }
    assert_eq!(Written::default().table(), Map::new());
}
