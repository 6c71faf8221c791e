//! `step` over the built-in `live` machine, table-driven: every transition, the late events, the
//! operator commands and the `failed` path; then the loader's and checker's problems.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::*;

fn live() -> Definition {
    let (definition, problems) = Library::parse("built-in:live.toml", BUILT_IN[0].1, "live");
    assert!(problems.is_empty(), "{problems:#?}");
    definition.unwrap()
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T17:45:00Z").unwrap().with_timezone(&Utc)
}

fn broadcast() -> Value {
    json!({"id": "news", "channel": "news", "endpoint": "default", "units": {"on_air": 3, "off_air": 1}, "settings": {"reset_after": "90s"}})
}

fn event(kind: &str, data: Value) -> Event {
    Event::new("e1", kind, "news", data, now())
}

fn schedule(step: &str) -> Event {
    event(crate::event::SCHEDULE_FIRED, json!({"step": step, "occurrence": "20261124t1800z", "broadcast": "news"}))
}

/// A step of the next day's occurrence.
fn next_schedule(step: &str) -> Event {
    event(crate::event::SCHEDULE_FIRED, json!({"step": step, "occurrence": "20261125t1800z", "broadcast": "news"}))
}

fn succeeded(action: &str) -> Event {
    event(
        crate::event::ACTION_SUCCEEDED,
        json!({"action": action, "outbox_id": 7, "params": {}, "result": {"hls": "https://h/x.m3u8", "dash": "https://h/x.mpd"}}),
    )
}

fn command(name: &str) -> Event {
    event(&format!("onair.command.{name}"), json!({}))
}

/// One case: a broadcast in `state` (with `vars` over the defaults) receives `event`.
struct Case {
    name: &'static str,
    state: &'static str,
    vars: Value,
    event: Event,
    /// The transition that fires, or `None` when the event is ignored.
    transition: Option<usize>,
    to: &'static str,
    actions: &'static [&'static str],
    /// Variables the decision must leave with these values.
    sets: Value,
    /// The broadcast's settings, over `broadcast()`'s.
    settings: Value,
}

fn case(
    name: &'static str,
    state: &'static str,
    event: Event,
    transition: Option<usize>,
    to: &'static str,
    actions: &'static [&'static str],
) -> Case {
    Case { name, state, vars: json!({}), event, transition, to, actions, sets: json!({}), settings: json!({}) }
}

impl Case {
    fn vars(mut self, vars: Value) -> Self {
        self.vars = vars;
        self
    }

    fn sets(mut self, sets: Value) -> Self {
        self.sets = sets;
        self
    }

    fn settings(mut self, settings: Value) -> Self {
        self.settings = settings;
        self
    }
}

fn heartbeat(track: &str, healthy: bool) -> Event {
    event(
        "onair.encoder.heartbeat",
        json!({"trackType": track, "healthy": healthy, "original_type": "Microsoft.Media.LiveEventIngestHeartbeat"}),
    )
}

fn timer(name: &str) -> Event {
    event(crate::event::TIMER_FIRED, json!({"timer": name}))
}

const GO_LIVE: &[&str] = &["program.create", "locator.publish", "endpoint.scale", "notify"];

fn cases() -> Vec<Case> {
    let current = json!({"occurrence": "20261124t1800z"});
    vec![
        // Commands everywhere.
        case("pause", "live", command("pause"), Some(1), "live", &[]).sets(json!({"paused": true})),
        case("resume after a failure returns and reruns", "failed", command("resume"), Some(2), "warming", &["channel.start", "endpoint.start", "channel.start"])
            .vars(json!({"failed_in": "warming", "failed_action": {"action": "channel.start", "params": {}}, "error": "boom", "paused": true}))
            .sets(json!({"paused": false, "error": ""})),
        case("resume", "standby", command("resume"), Some(3), "standby", &[]).vars(json!({"paused": true})).sets(json!({"paused": false})),
        case("skip-next", "idle", command("skip-next"), Some(4), "idle", &[]).sets(json!({"skip_next": true})),
        // Failures.
        case("an action fails", "live", event(crate::event::ACTION_FAILED, json!({"action": "locator.publish", "outbox_id": 3, "params": {"name": "news-x"}, "error": {"code": "Conflict", "message": "boom"}})), Some(5), "failed", &["notify"])
            .sets(json!({"failed_in": "live", "error": "boom", "failed_action": {"action": "locator.publish", "outbox_id": 3, "params": {"name": "news-x"}, "error": {"code": "Conflict", "message": "boom"}}})),
        case("stop-now after a failure cleans up", "failed", command("stop-now"), Some(6), "cooldown", &["program.stop", "channel.stop", "endpoint.scale"]).vars(current.clone()).sets(json!({"stopping": true})),
        case("a failure while failed changes nothing", "failed", event(crate::event::ACTION_FAILED, json!({"action": "notify", "error": {"message": "x"}})), None, "failed", &[]),
        // idle.
        case("skip-next skips the next occurrence", "idle", schedule("warmup"), Some(7), "idle", &[]).vars(json!({"skip_next": true})).sets(json!({"skip_next": false, "skipped": "20261124t1800z"})),
        case("the skipped occurrence's later steps are ignored", "idle", schedule("air"), None, "idle", &[]).vars(json!({"skipped": "20261124t1800z"})),
        case("warm-up", "idle", schedule("warmup"), Some(8), "warming", &["endpoint.start", "channel.start"]).sets(json!({"occurrence": "20261124t1800z", "air_pending": false})),
        case("scale-up while idle", "idle", schedule("scale"), Some(9), "warming", &["endpoint.scale", "endpoint.start", "channel.start"]),
        case("late air while idle goes live as soon as the channel runs", "idle", schedule("air"), Some(10), "warming", &["endpoint.start", "channel.start"]).sets(json!({"air_pending": true})),
        case("start-now", "idle", command("start-now"), Some(11), "warming", &["endpoint.start", "channel.start"]).sets(json!({"air_pending": true, "occurrence": "20261124t1745z"})),
        case("end while idle: nothing to clean up", "idle", schedule("end"), None, "idle", &[]),
        case("paused: warm-up ignored", "idle", schedule("warmup"), None, "idle", &[]).vars(json!({"paused": true})),
        // warming and standby.
        case("channel runs, air pending: live", "warming", succeeded("channel.start"), Some(12), "live", &["program.create", "locator.publish", "endpoint.scale", "notify"]).vars(json!({"air_pending": true, "occurrence": "20261124t1800z"})).sets(json!({"air_pending": false})),
        case("channel runs: standby", "warming", succeeded("channel.start"), Some(13), "standby", &[]),
        case("endpoint started: nothing to decide", "warming", succeeded("endpoint.start"), None, "warming", &[]),
        case("scale-up on standby", "standby", schedule("scale"), Some(14), "standby", &["endpoint.scale"]).vars(current.clone()),
        case("air while warming", "warming", schedule("air"), Some(15), "warming", &[]).vars(current.clone()).sets(json!({"air_pending": true})),
        case("start-now while warming", "warming", command("start-now"), Some(16), "warming", &[]).sets(json!({"air_pending": true})),
        case("air", "standby", schedule("air"), Some(17), "live", &["program.create", "locator.publish", "endpoint.scale", "notify"]).vars(current.clone()),
        case("another occurrence's air is ignored", "standby", schedule("air"), None, "standby", &[]).vars(json!({"occurrence": "20261123t1800z"})),
        case("start-now on standby", "standby", command("start-now"), Some(18), "live", &["program.create", "locator.publish", "endpoint.scale", "notify"]).vars(current.clone()),
        case("end before air cleans up", "warming", schedule("end"), Some(19), "cooldown", &["channel.stop", "endpoint.scale"]).vars(current.clone()).sets(json!({"stopping": true})),
        case("stop-now before air", "standby", command("stop-now"), Some(20), "cooldown", &["channel.stop", "endpoint.scale"]),
        // live and degraded.
        case("the locator's URLs are kept", "live", succeeded("locator.publish"), Some(21), "live", &[]).sets(json!({"hls": "https://h/x.m3u8", "dash": "https://h/x.mpd"})),
        case("a duplicate air while live changes nothing", "live", schedule("air"), None, "live", &[]).vars(current.clone()),
        case("end", "live", schedule("end"), Some(22), "ending", &["program.stop"]).vars(current.clone()),
        case("cooldown while live (end missed)", "live", schedule("cooldown"), Some(23), "ending", &["program.stop"]).vars(current.clone()).sets(json!({"cooldown_pending": true})),
        case("stop-now while live", "degraded", command("stop-now"), Some(24), "ending", &["program.stop"]).sets(json!({"cooldown_pending": true})),
        case("encoder lost", "live", event("onair.encoder.disconnected", json!({})), Some(25), "degraded", &["notify"]),
        case("encoder back", "degraded", event("onair.encoder.connected", json!({})), Some(26), "live", &["notify"]),
        case("encoder still lost", "degraded", event(crate::event::TIMER_FIRED, json!({"timer": "still-lost"})), Some(27), "degraded", &["channel.reset", "notify"]),
        // ending and cooldown.
        case("program stopped, cooldown pending", "ending", succeeded("program.stop"), Some(28), "cooldown", &["channel.stop", "endpoint.scale"]).vars(json!({"cooldown_pending": true})).sets(json!({"stopping": true, "cooldown_pending": false})),
        case("program stopped", "ending", succeeded("program.stop"), Some(29), "cooldown", &[]),
        case("cooldown while ending", "ending", schedule("cooldown"), Some(30), "ending", &[]).vars(current.clone()).sets(json!({"cooldown_pending": true})),
        case("cooldown", "cooldown", schedule("cooldown"), Some(31), "cooldown", &["channel.stop", "endpoint.scale"]).vars(current.clone()).sets(json!({"stopping": true})),
        case("a second cooldown step while stopping", "cooldown", schedule("cooldown"), None, "cooldown", &[]).vars(json!({"occurrence": "20261124t1800z", "stopping": true})),
        case("channel stopped: wait for the endpoint", "cooldown", succeeded("channel.stop"), None, "cooldown", &[]).vars(json!({"stopping": true})),
        case("everything stopped", "cooldown", succeeded("endpoint.scale"), Some(32), "idle", &[]).vars(json!({"stopping": true})).sets(json!({"stopping": false})),
        // The next occurrence while this one still runs.
        case("post-roll, next warm-up: the channel passes on", "cooldown", next_schedule("warmup"), Some(33), "warming", &["endpoint.start", "channel.start"]).vars(current.clone()).sets(json!({"occurrence": "20261125t1800z", "air_pending": false})),
        case("post-roll, next air: live as soon as the channel runs", "cooldown", next_schedule("air"), Some(33), "warming", &["endpoint.start", "channel.start"]).vars(current.clone()).sets(json!({"occurrence": "20261125t1800z", "air_pending": true})),
        case("an earlier occurrence's step in post-roll is ignored", "cooldown", schedule("warmup"), None, "cooldown", &[]).vars(json!({"occurrence": "20261125t1800z"})),
        case("next warm-up while live is remembered", "live", next_schedule("warmup"), Some(34), "live", &[]).vars(current.clone()).sets(json!({"next_occurrence": "20261125t1800z", "next_air": false})),
        case("next air while ending is remembered", "ending", next_schedule("air"), Some(34), "ending", &[]).vars(json!({"occurrence": "20261124t1800z", "next_occurrence": "20261125t1800z"})).sets(json!({"next_air": true})),
        case("next warm-up while stopping is remembered", "cooldown", next_schedule("warmup"), Some(34), "cooldown", &[]).vars(json!({"occurrence": "20261124t1800z", "stopping": true})).sets(json!({"next_occurrence": "20261125t1800z"})),
        case("program stopped, next occurrence waiting", "ending", succeeded("program.stop"), Some(35), "warming", &["endpoint.start", "channel.start"]).vars(json!({"occurrence": "20261124t1800z", "next_occurrence": "20261125t1800z", "next_air": true, "cooldown_pending": true})).sets(json!({"occurrence": "20261125t1800z", "air_pending": true, "next_occurrence": "", "cooldown_pending": false})),
        case("stopped, next occurrence waiting", "cooldown", succeeded("endpoint.scale"), Some(36), "warming", &["endpoint.start", "channel.start"]).vars(json!({"stopping": true, "next_occurrence": "20261125t1800z"})).sets(json!({"occurrence": "20261125t1800z", "stopping": false, "air_pending": false})),
        case("stop-now while live forgets the next occurrence", "live", command("stop-now"), Some(24), "ending", &["program.stop"]).vars(json!({"next_occurrence": "20261125t1800z"})).sets(json!({"next_occurrence": ""})),
        // The encoder: readiness gate and heartbeats.
        case("gated, encoder ready: the channel runs and goes live", "warming", succeeded("channel.start"), Some(12), "live", GO_LIVE).vars(json!({"air_pending": true, "occurrence": "20261124t1800z", "encoder_connected": true, "video_healthy": true})).settings(json!({"wait_for_encoder": true})),
        case("gated, encoder not ready: the channel runs, wait", "warming", succeeded("channel.start"), Some(37), "waiting", &["notify"]).vars(json!({"air_pending": true, "occurrence": "20261124t1800z"})).settings(json!({"wait_for_encoder": true})).sets(json!({"air_pending": false})),
        case("gated, encoder not ready: air waits", "standby", schedule("air"), Some(38), "waiting", &["notify"]).vars(current.clone()).settings(json!({"wait_for_encoder": true})),
        case("not gated: air goes live without an encoder", "standby", schedule("air"), Some(17), "live", GO_LIVE).vars(current.clone()).settings(json!({"wait_for_encoder": false})),
        case("waiting, the encoder connects after healthy heartbeats: live", "waiting", event("onair.encoder.connected", json!({})), Some(39), "live", GO_LIVE).vars(json!({"occurrence": "20261124t1800z", "video_healthy": true})).sets(json!({"encoder_connected": true})),
        case("waiting, the encoder connects but no healthy heartbeat yet", "waiting", event("onair.encoder.connected", json!({})), Some(46), "waiting", &[]).vars(current.clone()).sets(json!({"encoder_connected": true})),
        case("waiting, first healthy heartbeat: live", "waiting", heartbeat("video", true), Some(40), "live", GO_LIVE).vars(json!({"occurrence": "20261124t1800z", "encoder_connected": true})).sets(json!({"video_healthy": true})),
        case("waiting, an unhealthy heartbeat: still waiting", "waiting", heartbeat("video", false), Some(48), "waiting", &[]).vars(json!({"encoder_connected": true, "video_healthy": true})).sets(json!({"video_healthy": false})),
        case("deadline, fallback cancel: clean up", "waiting", timer("encoder-deadline"), Some(41), "cooldown", &["notify", "channel.stop", "endpoint.scale"]).vars(current.clone()).settings(json!({"encoder_fallback": "cancel"})).sets(json!({"stopping": true})),
        case("deadline: go live anyway", "waiting", timer("encoder-deadline"), Some(42), "live", GO_LIVE).vars(current.clone()),
        case("end while waiting: clean up", "waiting", schedule("end"), Some(19), "cooldown", &["channel.stop", "endpoint.scale"]).vars(current.clone()),
        case("start-now while waiting: go live", "waiting", command("start-now"), Some(18), "live", GO_LIVE).vars(current.clone()),
        case("a healthy heartbeat while live restarts the heartbeat timer", "live", heartbeat("video", true), Some(43), "live", &[]).vars(json!({"encoder_connected": true, "video_healthy": true})).settings(json!({"heartbeat_timeout": "60s"})),
        case("an unhealthy heartbeat while live is only noted", "live", heartbeat("audio", false), Some(48), "live", &[]).vars(json!({"encoder_connected": true, "video_healthy": true})).sets(json!({"audio_healthy": false})),
        case("no healthy heartbeat for heartbeat_timeout: degraded", "live", timer("heartbeat-lost"), Some(44), "degraded", &["notify"]).settings(json!({"heartbeat_timeout": "60s"})),
        case("healthy again: back on air", "degraded", heartbeat("video", true), Some(45), "live", &["notify"]).vars(json!({"encoder_connected": true, "audio_healthy": true})),
        case("an unhealthy heartbeat while degraded is only noted", "degraded", heartbeat("video", false), Some(48), "degraded", &[]).vars(json!({"encoder_connected": true})),
        case("the encoder connects while idle", "idle", event("onair.encoder.connected", json!({})), Some(46), "idle", &[]).sets(json!({"encoder_connected": true})),
        case("the encoder disconnects on standby", "standby", event("onair.encoder.disconnected", json!({})), Some(47), "standby", &[]).vars(json!({"encoder_connected": true, "video_healthy": true})).sets(json!({"encoder_connected": false, "video_healthy": false})),
        case("a heartbeat on standby is noted", "standby", heartbeat("video", true), Some(48), "standby", &[]).sets(json!({"video_healthy": true})),
    ]
}

#[test]
fn every_transition_of_live_does_what_it_says() {
    let definition = live();
    let mut fired = BTreeSet::new();
    for case in cases() {
        let mut instance = Instance::new(&definition);
        instance.state = case.state.to_string();
        for (key, value) in case.vars.as_object().unwrap() {
            instance.vars.insert(key.clone(), value.clone());
        }
        let mut broadcast = broadcast();
        for (key, value) in case.settings.as_object().unwrap() {
            broadcast["settings"][key] = value.clone();
        }
        let decision = step(&definition, &instance, &case.event, &broadcast, now());
        let transition = match &decision.outcome {
            Outcome::Transitioned { transition, .. } => *transition,
            Outcome::Ignored => None,
        };
        assert_eq!(transition, case.transition, "{}: {}", case.name, decision.reason);
        assert_eq!(decision.state, case.to, "{}", case.name);
        let actions: Vec<&str> = decision.actions.iter().map(|action| action.kind.as_str()).collect();
        assert_eq!(actions, case.actions, "{}", case.name);
        for (key, value) in case.sets.as_object().unwrap() {
            assert_eq!(decision.vars.get(key), Some(value), "{}: vars.{key}", case.name);
        }
        if transition.is_none() {
            assert!(decision.reason.starts_with("ignored"), "{}: {}", case.name, decision.reason);
            assert_eq!(decision.vars, instance.vars, "{}: an ignored event changes nothing", case.name);
        }
        fired.extend(transition);
    }
    let all: BTreeSet<usize> = definition.transitions.iter().map(|transition| transition.index).collect();
    assert_eq!(fired, all, "every transition of live is exercised");
}

#[test]
fn actions_carry_resolved_parameters() {
    let definition = live();
    let mut instance = Instance::new(&definition);
    instance.state = "standby".into();
    instance.vars.insert("occurrence".into(), json!("20261124t1800z"));
    let decision = step(&definition, &instance, &schedule("air"), &broadcast(), now());
    assert_eq!(
        decision.actions[0],
        Action { kind: "program.create".into(), params: json!({"name": "news-20261124t1800z"}) }
    );
    assert_eq!(decision.actions[2], Action { kind: "endpoint.scale".into(), params: json!({"units": 3}) });
    assert_eq!(decision.actions[3].params["message"], "news is on air (20261124t1800z)");
}

#[test]
fn states_with_after_timers_arm_and_cancel_them() {
    let definition = live();
    let mut instance = Instance::new(&definition);
    instance.state = "live".into();
    let lost = step(&definition, &instance, &event("onair.encoder.disconnected", json!({})), &broadcast(), now());
    assert_eq!(
        lost.timers,
        vec![
            TimerChange::Cancel { name: "heartbeat-lost".into() },
            TimerChange::Set { name: "still-lost".into(), due: now() + chrono::Duration::seconds(90) }
        ]
    );
    let degraded = lost.apply(&instance);
    assert_eq!(degraded.timers.len(), 1);
    let back = step(&definition, &degraded, &event("onair.encoder.connected", json!({})), &broadcast(), now());
    assert_eq!(
        back.timers,
        vec![TimerChange::Cancel { name: "still-lost".into() }],
        "heartbeat_timeout unset: no timer"
    );
    assert!(back.apply(&degraded).timers.is_empty());
    // With heartbeat_timeout, entering live arms heartbeat-lost (an optional timer).
    let mut watched = broadcast();
    watched["settings"]["heartbeat_timeout"] = json!("45s");
    let back = step(&definition, &degraded, &event("onair.encoder.connected", json!({})), &watched, now());
    assert_eq!(
        back.timers,
        vec![
            TimerChange::Cancel { name: "still-lost".into() },
            TimerChange::Set { name: "heartbeat-lost".into(), due: now() + chrono::Duration::seconds(45) }
        ]
    );
}

#[test]
fn force_state_moves_without_actions_and_says_who_and_why() {
    let definition = live();
    let instance = Instance::new(&definition);
    let forced = event(
        crate::event::FORCE_STATE,
        json!({"state": "degraded", "note": "encoder swapped by hand", "by": "alice"}),
    );
    let decision = step(&definition, &instance, &forced, &broadcast(), now());
    assert_eq!(
        decision.outcome,
        Outcome::Transitioned { transition: None, from: "idle".into(), to: "degraded".into() }
    );
    assert_eq!(decision.reason, "forced by alice: encoder swapped by hand");
    assert!(decision.actions.is_empty());
    assert_eq!(decision.timers.len(), 1, "the target state's timers are armed");
    let nowhere = event(crate::event::FORCE_STATE, json!({"state": "limbo"}));
    assert_eq!(step(&definition, &instance, &nowhere, &broadcast(), now()).outcome, Outcome::Ignored);
}

#[test]
fn expression_errors_are_ignored_decisions_with_their_reason() {
    let definition = live();
    let mut instance = Instance::new(&definition);
    instance.state = "idle".into();
    // A schedule event without the occurrence the guards read.
    let broken = event(crate::event::SCHEDULE_FIRED, json!({"step": "warmup"}));
    let decision = step(&definition, &instance, &broken, &broadcast(), now());
    assert_eq!(decision.outcome, Outcome::Ignored);
    assert!(decision.reason.contains("guard error"), "{}", decision.reason);
}

#[test]
fn loading_reports_every_problem_with_its_location() {
    let text = r#"
name = "broken"
initial = "idle"

[states.idle]
entry = [{ do = "channel.explode" }]

[states.orphan]

[[transitions]]
from = "idle"
on = "x"
to = "nowhere"

[[transitions]]
from = "idle"
on = "y"
guard = "event.data ==="

[[transitions]]
from = "idle"
on = "z"
guard = "false"

[[transitions]]
from = "idle"
on = "x"
guard = "secret.value == 1"
actions = [{ do = "notify", colour = "red" }]
"#;
    let (_, problems) = Library::parse("machines/broken.toml", text, "broken");
    let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let expect = [
        "machines/broken.toml:6:10: unknown action \"channel.explode\"",
        "machines/broken.toml:13:6: transition #1: unknown state \"nowhere\" in to",
        "machines/broken.toml:18:9: transition #2: guard does not compile",
        "machines/broken.toml:29:12: action notify: unknown parameter \"colour\"",
        "machines/broken.toml:25:1: transition #4: unknown variable \"secret\"",
        "machines/broken.toml:8:9: state \"orphan\" cannot be reached from \"idle\"",
        "machines/broken.toml:20:1: transition #3 can never fire: its guard is always false",
        "machines/broken.toml:25:1: transition #4 can never fire: transition #1 has no guard",
    ];
    for expected in expect {
        assert!(rendered.iter().any(|problem| problem.starts_with(expected)), "{expected:?} not in {rendered:#?}");
    }
}

#[test]
fn shadowed_transitions_and_unheard_timers_are_reported() {
    let text = r#"
initial = "a"
[states.a]
after = [{ name = "t", delay = "5s" }]
[states.b]
[[transitions]]
from = "*"
on = "go.*"
to = "b"
[[transitions]]
from = "a"
on = "go.now"
to = "b"
"#;
    let (_, problems) = Library::parse("m.toml", text, "m");
    let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        rendered.iter().any(|problem| problem.contains("transition #2 can never fire: transition #1 has no guard")),
        "{rendered:#?}"
    );
    assert!(
        rendered.iter().any(|problem| problem.contains("timer \"t\" of state \"a\": no transition")),
        "{rendered:#?}"
    );
}

#[test]
fn a_syntax_error_names_its_line() {
    let (definition, problems) = Library::parse("m.toml", "initial = \"a\"\n[states.a\n", "m");
    assert!(definition.is_none());
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().starts_with("m.toml:2:"), "{}", problems[0]);
}

#[test]
fn the_worked_examples_load_and_behave() {
    let example = |name: &str, text: &str| MachineText {
        file: format!("config/machines/examples/{name}.toml"),
        name: name.to_string(),
        text: text.to_string(),
    };
    let library = Library::load(
        vec![
            example("always-on", include_str!("../../config/machines/examples/always-on.toml")),
            example("encoder-gated", include_str!("../../config/machines/examples/encoder-gated.toml")),
        ],
        Vec::new(),
    );
    assert!(library.problems.is_empty(), "{:#?}", library.problems);
    let gated = library.get("encoder-gated").unwrap();
    let mut instance = Instance::new(gated);
    let mut run = |event: Event| {
        let decision = step(gated, &instance, &event, &broadcast(), now());
        instance = decision.apply(&instance);
        instance.state.clone()
    };
    assert_eq!(run(schedule("warmup")), "warming");
    assert_eq!(run(succeeded("channel.start")), "standby");
    assert_eq!(run(schedule("air")), "waiting", "no encoder yet");
    assert_eq!(run(event("onair.encoder.connected", json!({}))), "live");
    assert_eq!(run(schedule("end")), "stopping");
    assert_eq!(run(succeeded("endpoint.scale")), "idle");

    let always_on = library.get("always-on").unwrap();
    let watching = Instance::new(always_on);
    let lost = step(always_on, &watching, &event("onair.encoder.disconnected", json!({})), &broadcast(), now())
        .apply(&watching);
    assert_eq!(lost.state, "lost");
    assert_eq!(lost.timers.len(), 2);
    let reset =
        step(always_on, &lost, &event(crate::event::TIMER_FIRED, json!({"timer": "reset"})), &broadcast(), now());
    assert_eq!(reset.actions[0].kind, "channel.reset");
    assert_eq!(reset.vars["resets"], json!(1));
}
