//! Machines as data, and the pure `step`.
//!
//! A machine definition is a TOML file (`config/machines/live.toml` is the built-in `live`
//! machine): states with entry and exit actions and `after` timers, an initial state, variables
//! with defaults, and transitions `from` states `on` event types with an optional CEL `guard`,
//! variable assignments (`set`), actions and a target (`to`). `docs/rules.md` is the reference.
//!
//! `step(definition, instance, event, broadcast, now)` is pure and synchronous: no IO, no clock,
//! no randomness. It returns a `Decision`: the new state and variables, the actions to run, the
//! timers to set and cancel, and the reason, or an explicit "ignored, because …". Errors in
//! expressions become ignored decisions with their reason; `step` never fails and never panics.
//!
//! Machine does no IO and reads no clock or environment: it is given texts (`MachineText`, read
//! by `daemon::read_machine_dir`) and the instant `now`.
//!
//! - `action`: `ActionKind`, the closed set of actions and the parameters each takes.
//! - `expr`: CEL expressions and `${…}` templates.
//! - `load`: TOML to a compiled `Definition`, with every problem located (file, line, column).
//! - `check`: static checks (unreachable states, transitions that can never fire, …).

mod action;
mod check;
pub mod expr;
mod load;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::event::{Event, FORCE_STATE};
pub use action::ActionKind;
pub use check::{reachable, type_matches};
use expr::{Scope, Template};
pub use load::ValueTemplate;

/// The built-in machine definitions, compiled into the binary.
pub const BUILT_IN: &[(&str, &str)] = &[("live", include_str!("../../config/machines/live.toml"))];

/// A compiled machine definition.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Its name, which broadcasts refer to.
    pub name: String,
    /// The file it came from (`built-in:live.toml` for built-ins).
    pub file: String,
    pub description: Option<String>,
    /// The state a new broadcast starts in.
    pub initial: String,
    /// Variables and their initial values.
    pub vars: Map<String, Value>,
    pub states: BTreeMap<String, State>,
    /// In file order; the first that matches wins.
    pub transitions: Vec<Transition>,
}

/// A state.
#[derive(Debug, Clone)]
pub struct State {
    pub name: String,
    pub description: Option<String>,
    /// Run when the state is entered by a transition with a `to`.
    pub entry: Vec<ActionTemplate>,
    /// Run when the state is left by a transition with a `to`.
    pub exit: Vec<ActionTemplate>,
    /// Durable timers set on entry and cancelled on exit.
    pub after: Vec<TimerTemplate>,
    pub location: Location,
}

/// A transition.
#[derive(Debug, Clone)]
pub struct Transition {
    /// Its number in the file, from 1.
    pub index: usize,
    pub description: Option<String>,
    pub from: Matcher,
    /// Event types: exact, `prefix.*`, or `*`.
    pub on: Vec<String>,
    pub guard: Option<expr::Expr>,
    /// Variable assignments, evaluated before the actions.
    pub set: Vec<(String, ValueTemplate)>,
    pub actions: Vec<ActionTemplate>,
    pub to: Target,
    pub location: Location,
}

/// Which states a transition starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    Any,
    Only(Vec<String>),
}

impl Matcher {
    pub fn matches(&self, state: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Only(states) => states.iter().any(|candidate| candidate == state),
        }
    }
}

/// Where a transition goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// No `to`: an internal transition, no exit or entry actions, timers untouched.
    Stay,
    /// `to = "state"`: exit, actions, entry (even when it is the same state).
    State(String),
    /// `to = "${vars.failed_in}"`: decided when the event is handled.
    Dynamic(Template),
}

/// An action with templated parameters.
#[derive(Debug, Clone)]
pub struct ActionTemplate {
    pub kind: ActionKind,
    pub params: Vec<(String, ValueTemplate)>,
    pub location: Location,
}

/// A durable timer of a state.
#[derive(Debug, Clone)]
pub struct TimerTemplate {
    pub name: String,
    /// A duration like `"90s"`, or a template that gives one.
    pub delay: Template,
    pub location: Location,
}

/// Where something is in a definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// From 1; 0 when the problem is about the whole file.
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub fn file(file: &str) -> Self {
        Self { file: file.to_string(), line: 0, column: 0 }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// A problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    pub message: String,
}

impl Problem {
    pub fn new(location: Location, message: String) -> Self {
        Self { location, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Where one broadcast is: its state, variables and armed timers.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub state: String,
    pub vars: Map<String, Value>,
    /// Armed timers: name to due instant.
    pub timers: BTreeMap<String, DateTime<Utc>>,
}

impl Instance {
    /// A new broadcast: the initial state and the variables' initial values.
    pub fn new(definition: &Definition) -> Self {
        Self { state: definition.initial.clone(), vars: definition.vars.clone(), timers: BTreeMap::new() }
    }
}

/// What `step` decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    /// Why, in words, for the audit trail.
    pub reason: String,
    /// The state after the decision.
    pub state: String,
    /// The variables after the decision.
    pub vars: Map<String, Value>,
    /// Actions to run, in order.
    pub actions: Vec<Action>,
    /// Timers to set or cancel.
    pub timers: Vec<TimerChange>,
}

/// The kind of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A transition matched (`transition` is `None` for force-state).
    Transitioned { transition: Option<usize>, from: String, to: String },
    /// Nothing matched, or the event could not be used.
    Ignored,
}

/// One action to run, parameters resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub kind: String,
    pub params: Value,
}

/// A change to the armed timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerChange {
    Set { name: String, due: DateTime<Utc> },
    Cancel { name: String },
}

impl Decision {
    fn ignored(instance: &Instance, reason: String) -> Self {
        Self {
            outcome: Outcome::Ignored,
            reason,
            state: instance.state.clone(),
            vars: instance.vars.clone(),
            actions: Vec::new(),
            timers: Vec::new(),
        }
    }

    /// The instance after this decision.
    pub fn apply(&self, instance: &Instance) -> Instance {
        Instance { state: self.state.clone(), vars: self.vars.clone(), timers: self.timers_after(instance) }
    }

    /// The instance after this decision, as `apply`, moving the decision's state and variables
    /// into it rather than copying them: they are left empty here.
    pub fn take_instance(&mut self, instance: &Instance) -> Instance {
        let timers = self.timers_after(instance);
        Instance { state: std::mem::take(&mut self.state), vars: std::mem::take(&mut self.vars), timers }
    }

    /// The armed timers after this decision's changes.
    fn timers_after(&self, instance: &Instance) -> BTreeMap<String, DateTime<Utc>> {
        let mut timers = instance.timers.clone();
        for change in &self.timers {
            match change {
                TimerChange::Set { name, due } => {
                    timers.insert(name.clone(), *due);
                }
                TimerChange::Cancel { name } => {
                    timers.remove(name);
                }
            }
        }
        timers
    }
}

/// The event as expressions see it.
pub fn event_json(event: &Event) -> Value {
    json!({
        "id": event.id,
        "source": event.source,
        "type": event.kind,
        "subject": event.subject,
        "time": event.time.map(|time| time.to_rfc3339()),
        "data": event.data,
    })
}

/// Decides what `event` does to a broadcast in `instance`. Pure: no IO, no clock.
pub fn step(
    definition: &Definition,
    instance: &Instance,
    event: &Event,
    broadcast: &Value,
    now: DateTime<Utc>,
) -> Decision {
    if event.kind == FORCE_STATE {
        return force_state(definition, instance, event, now, broadcast);
    }
    let event_value = event_json(event);
    let scope = Scope::new(&event_value, broadcast, &instance.vars, &instance.state, now);
    let mut refused = Vec::new();
    for transition in &definition.transitions {
        if !transition.from.matches(&instance.state) || !transition.on.iter().any(|on| type_matches(on, &event.kind)) {
            continue;
        }
        let passes = match &transition.guard {
            None => Ok(true),
            Some(guard) => guard.eval_bool(&scope),
        };
        match passes {
            Ok(true) => return fire(definition, instance, transition, &event_value, &scope, broadcast, now),
            Ok(false) => refused.push(format!(
                "#{} guard false ({})",
                transition.index,
                transition.guard.as_ref().map_or("", |g| &g.source)
            )),
            Err(error) => refused.push(format!("#{} guard error ({error})", transition.index)),
        }
    }
    let reason = if refused.is_empty() {
        format!("ignored: no transition from {:?} on {}", instance.state, event.kind)
    } else {
        format!("ignored: {}", refused.join("; "))
    };
    Decision::ignored(instance, reason)
}

fn fire(
    definition: &Definition,
    instance: &Instance,
    transition: &Transition,
    event: &Value,
    scope: &Scope,
    broadcast: &Value,
    now: DateTime<Utc>,
) -> Decision {
    let label = format!("transition #{}", transition.index);
    let mut vars = instance.vars.clone();
    for (key, value) in &transition.set {
        match value.eval(scope) {
            Ok(value) => {
                vars.insert(key.clone(), value);
            }
            Err(error) => return Decision::ignored(instance, format!("ignored: {label}: set.{key}: {error}")),
        }
    }
    let target = match &transition.to {
        Target::Stay => None,
        Target::State(state) => Some(state.clone()),
        Target::Dynamic(template) => match template.eval(scope) {
            Ok(Value::String(state)) if definition.states.contains_key(&state) => Some(state),
            Ok(other) => {
                return Decision::ignored(instance, format!("ignored: {label}: target {other} is not a state"));
            }
            Err(error) => return Decision::ignored(instance, format!("ignored: {label}: to: {error}")),
        },
    };
    // Actions see the variables as the transition set them.
    let scope = Scope::new(event, broadcast, &vars, &instance.state, now);
    let mut templates: Vec<&ActionTemplate> = Vec::new();
    let mut timers = Vec::new();
    if target.is_some()
        && let Some(state) = definition.states.get(&instance.state)
    {
        templates.extend(&state.exit);
        timers.extend(state.after.iter().map(|timer| TimerChange::Cancel { name: timer.name.clone() }));
    }
    templates.extend(&transition.actions);
    if let Some(target) = &target
        && let Some(state) = definition.states.get(target)
    {
        templates.extend(&state.entry);
        match arm_timers(state, &scope, now) {
            Ok(armed) => timers.extend(armed),
            Err(error) => return Decision::ignored(instance, format!("ignored: {label}: {error}")),
        }
    }
    let mut actions = Vec::new();
    for template in templates {
        match evaluate_action(template, &scope) {
            Ok(action) => actions.push(action),
            Err(error) => {
                return Decision::ignored(instance, format!("ignored: {label}: action {}: {error}", template.kind));
            }
        }
    }
    let to = target.clone().unwrap_or_else(|| instance.state.clone());
    let reason = match &transition.description {
        Some(description) => format!("{label}: {description}"),
        None => format!("{label}: {} → {to} on {}", instance.state, event["type"].as_str().unwrap_or_default()),
    };
    Decision {
        outcome: Outcome::Transitioned {
            transition: Some(transition.index),
            from: instance.state.clone(),
            to: to.clone(),
        },
        reason,
        state: to,
        vars,
        actions,
        timers,
    }
}

/// The timers `state` sets on entry; a delay that comes out null or empty arms nothing (the timer
/// is optional), one that is not a duration is an error naming the timer.
fn arm_timers(state: &State, scope: &Scope, now: DateTime<Utc>) -> Result<Vec<TimerChange>, String> {
    let mut timers = Vec::new();
    for timer in &state.after {
        let delay = timer.delay.eval(scope).map_err(|error| error.to_string());
        if matches!(&delay, Ok(Value::Null)) || matches!(&delay, Ok(Value::String(text)) if text.is_empty()) {
            continue;
        }
        let delay =
            delay.and_then(|delay| parse_delay(&delay)).map_err(|error| format!("timer {}: {error}", timer.name))?;
        timers.push(TimerChange::Set { name: timer.name.clone(), due: now + delay });
    }
    Ok(timers)
}

fn evaluate_action(template: &ActionTemplate, scope: &Scope) -> Result<Action, String> {
    let mut params = Map::new();
    for (key, value) in &template.params {
        params.insert(key.clone(), value.eval(scope).map_err(|error| format!("{key}: {error}"))?);
    }
    if template.kind == ActionKind::Rerun {
        // `rerun` repeats a recorded action: `action` holds `{action, params}`, as in an
        // `onair.action.failed` event's data.
        let recorded = params.remove("action").unwrap_or(Value::Null);
        let kind = recorded["action"].as_str().and_then(ActionKind::parse).filter(|kind| *kind != ActionKind::Rerun);
        let Some(kind) = kind else {
            return Err(format!("nothing to rerun in {recorded}"));
        };
        return Ok(Action { kind: kind.name().to_string(), params: recorded["params"].clone() });
    }
    Ok(Action { kind: template.kind.name().to_string(), params: Value::Object(params) })
}

fn parse_delay(value: &Value) -> Result<std::time::Duration, String> {
    match value {
        Value::String(text) => {
            humantime::parse_duration(text).map_err(|error| format!("invalid delay {text:?} ({error})"))
        }
        Value::Number(seconds) => seconds
            .as_f64()
            .filter(|seconds| *seconds >= 0.0)
            .map(std::time::Duration::from_secs_f64)
            .ok_or_else(|| format!("invalid delay {seconds}")),
        other => Err(format!("invalid delay {other}")),
    }
    .map(|delay| delay.min(std::time::Duration::from_secs(10 * 365 * 24 * 3600)))
}

/// `onair.command.force-state` (data `{state, note, by}`): the operator sets the state. No exit or
/// entry actions run; the old state's timers are cancelled and the new state's are set.
fn force_state(
    definition: &Definition,
    instance: &Instance,
    event: &Event,
    now: DateTime<Utc>,
    broadcast: &Value,
) -> Decision {
    let Some(target) = event.data["state"].as_str() else {
        return Decision::ignored(instance, "ignored: force-state without data.state".into());
    };
    let Some(state) = definition.states.get(target) else {
        return Decision::ignored(
            instance,
            format!("ignored: force-state to {target:?}, which is not a state of {}", definition.name),
        );
    };
    let note = event.data["note"].as_str().unwrap_or("no note");
    let by = event.data["by"].as_str().unwrap_or("an operator");
    let mut timers: Vec<TimerChange> = definition
        .states
        .get(&instance.state)
        .map(|current| current.after.iter().map(|timer| TimerChange::Cancel { name: timer.name.clone() }).collect())
        .unwrap_or_default();
    let event_value = event_json(event);
    let scope = Scope::new(&event_value, broadcast, &instance.vars, target, now);
    for timer in &state.after {
        if let Ok(delay) =
            timer.delay.eval(&scope).map_err(|error| error.to_string()).and_then(|delay| parse_delay(&delay))
        {
            timers.push(TimerChange::Set { name: timer.name.clone(), due: now + delay });
        }
    }
    Decision {
        outcome: Outcome::Transitioned { transition: None, from: instance.state.clone(), to: target.to_string() },
        reason: format!("forced by {by}: {note}"),
        state: target.to_string(),
        vars: instance.vars.clone(),
        actions: Vec::new(),
        timers,
    }
}

/// The text of one definition file, read by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineText {
    /// Where it came from; problems name it.
    pub file: String,
    /// The machine's name when the text gives none (the file's stem).
    pub name: String,
    pub text: String,
}

/// Every loaded definition by name, and every problem found loading them.
#[derive(Debug, Clone, Default)]
pub struct Library {
    pub machines: BTreeMap<String, Arc<Definition>>,
    pub problems: Vec<Problem>,
}

impl Library {
    /// The built-in machines, then `files` in order (which replace built-ins of the same name).
    /// `unread` are the problems met reading them (a directory or file that could not be read);
    /// they come first. Definitions with problems are left out; the problems are kept.
    pub fn load(files: Vec<MachineText>, unread: Vec<Problem>) -> Self {
        let mut library = Self::built_in();
        library.problems.extend(unread);
        for file in files {
            library.add(load::parse(&file.file, &file.text, &file.name));
        }
        library
    }

    /// The built-in machines alone.
    pub fn built_in() -> Self {
        let mut library = Self::default();
        for (name, text) in BUILT_IN {
            library.add(load::parse(&format!("built-in:{name}.toml"), text, name));
        }
        library
    }

    /// Compiles one definition from text (for tests and tools).
    pub fn parse(file: &str, text: &str, name: &str) -> (Option<Definition>, Vec<Problem>) {
        load::parse(file, text, name)
    }

    fn add(&mut self, (definition, problems): (Option<Definition>, Vec<Problem>)) {
        let usable = problems.is_empty();
        self.problems.extend(problems);
        if let (Some(definition), true) = (definition, usable) {
            self.machines.insert(definition.name.clone(), Arc::new(definition));
        }
    }

    /// The definition named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Definition>> {
        self.machines.get(name)
    }
}

#[cfg(test)]
mod tests;
