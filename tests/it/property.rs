//! Property: whatever events arrive, in whatever order, duplicated or not, the stored history
//! holds only legal transitions of the definition.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use onair::event::{self, Event};
use onair::machine::{self, Instance, Library, Outcome};
use onair::store::{Commit, Committed, DecisionRecord, InstanceRecord, NewAction, SqliteStore, Store};
use proptest::prelude::*;
use serde_json::{Value, json};

fn any_event() -> impl Strategy<Value = (String, Value)> {
    let step = prop_oneof!["warmup", "scale", "air", "end", "cooldown"].prop_map(String::from);
    let occurrence = prop_oneof!["o1", "o2"].prop_map(String::from);
    let action = proptest::sample::select(machine::ActionKind::names().map(str::to_string).collect::<Vec<_>>());
    let command = proptest::sample::select(event::COMMANDS.iter().map(|name| name.to_string()).collect::<Vec<_>>());
    let state = prop_oneof!["idle", "live", "degraded", "failed", "limbo"].prop_map(String::from);
    prop_oneof![
        4 => (step, occurrence).prop_map(|(step, occurrence)| (event::SCHEDULE_FIRED.to_string(), json!({"step": step, "occurrence": occurrence}))),
        4 => action.clone().prop_map(|action| (event::ACTION_SUCCEEDED.to_string(), json!({"action": action, "outbox_id": 1, "params": {}, "result": {"hls": "h", "dash": "d"}}))),
        1 => action.prop_map(|action| (event::ACTION_FAILED.to_string(), json!({"action": action, "outbox_id": 1, "params": {}, "error": {"code": "X", "message": "boom"}}))),
        2 => (command, state).prop_map(|(command, state)| (format!("onair.command.{command}"), json!({"state": state, "note": "test"}))),
        1 => Just((event::TIMER_FIRED.to_string(), json!({"timer": "still-lost"}))),
        1 => prop_oneof!["onair.encoder.connected", "onair.encoder.disconnected", "something.else"].prop_map(|kind| (kind.to_string(), json!({}))),
    ]
}

/// Events, some of which repeat an earlier event's id (a redelivery).
fn histories() -> impl Strategy<Value = Vec<((String, Value), Option<prop::sample::Index>)>> {
    proptest::collection::vec((any_event(), proptest::option::weighted(0.15, any::<prop::sample::Index>())), 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn the_stored_history_holds_only_legal_transitions(history in histories()) {
        let library = Library::built_in();
        let definition = Arc::clone(library.get("live").unwrap());
        let directory = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&directory.path().join("onair.db")).unwrap();
        let broadcast = json!({"id": "news", "units": {"on_air": 2, "off_air": 0}, "settings": {}});
        let start = DateTime::parse_from_rfc3339("2026-11-24T17:00:00Z").unwrap().with_timezone(&Utc);
        let mut instance = Instance::new(&definition);
        let mut seq = 0;
        let mut ids: Vec<String> = Vec::new();
        for (position, ((kind, data), repeat)) in history.into_iter().enumerate() {
            let now = start + chrono::Duration::seconds(position as i64);
            let id = match repeat {
                Some(index) if !ids.is_empty() => ids[index.index(ids.len())].clone(),
                _ => format!("e{position}"),
            };
            ids.push(id.clone());
            let event = Event::new(id.clone(), kind.clone(), "news", data, now);
            let decision = machine::step(&definition, &instance, &event, &broadcast, now);
            let next = decision.apply(&instance);
            let (outcome, transition) = match &decision.outcome {
                Outcome::Transitioned { transition, .. } => ("transition", *transition),
                Outcome::Ignored => ("ignored", None),
            };
            let already = store.processed(&[(id.clone(), "news".to_string())]).unwrap()[0];
            let commit = Commit {
                duplicate: already,
                broadcast: "news".into(),
                machine: "live".into(),
                at: now,
                event_id: id,
                event_type: kind,
                event: json!({}),
                decision: DecisionRecord { outcome: outcome.into(), from: instance.state.clone(), to: next.state.clone(), transition, reason: decision.reason.clone(), detail: json!({}) },
                instance: Some(InstanceRecord { broadcast: "news".into(), machine: "live".into(), state: next.state.clone(), vars: next.vars.clone(), timers: BTreeMap::new(), since: now, seq: seq + 1 }),
                actions: decision.actions.iter().map(|action| NewAction { kind: action.kind.clone(), params: action.params.clone() }).collect(),
                completes: None,
            };
            if let Committed::Applied { .. } = store.commit(vec![commit]).unwrap().remove(0) {
                instance = next;
                seq += 1;
            }
        }
        drop(store);
        let view = SqliteStore::open_read_only(&directory.path().join("onair.db")).unwrap();
        let problems = crate::history::illegal(&definition, &view.all_audit().unwrap());
        prop_assert!(problems.is_empty(), "{problems:#?}");
    }
}
