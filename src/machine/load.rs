//! Reading machine definitions from TOML and compiling them.
//!
//! Loading never stops at the first problem: every state name, action, guard and template is
//! checked, and each problem carries the file, line and column it is about. A definition with
//! problems is not used.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use super::expr::{Expr, Template};
use super::{ActionTemplate, Definition, Location, Matcher, Problem, State, Target, TimerTemplate, Transition};

/// The actions the executor knows, with the parameters each takes.
pub const ACTIONS: &[(&str, &[&str])] = &[
    ("channel.start", &["channel"]),
    ("channel.stop", &["channel", "remove_outputs"]),
    ("channel.reset", &["channel"]),
    ("channel.allocate", &["channel"]),
    ("program.create", &["channel", "name", "asset", "manifest", "archive_window", "description"]),
    ("program.stop", &["channel", "name"]),
    ("locator.publish", &["name", "asset", "policy", "endpoint"]),
    ("locator.unpublish", &["name"]),
    ("endpoint.start", &["endpoint"]),
    ("endpoint.stop", &["endpoint"]),
    ("endpoint.scale", &["endpoint", "units"]),
    ("notify", &["message", "severity", "data"]),
    ("http", &["method", "url", "headers", "body", "expect"]),
    ("rerun", &["action"]),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    name: Option<Spanned<String>>,
    description: Option<String>,
    initial: Spanned<String>,
    #[serde(default)]
    vars: toml::Table,
    #[serde(default)]
    states: BTreeMap<Spanned<String>, Spanned<RawState>>,
    #[serde(default)]
    transitions: Vec<Spanned<RawTransition>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    description: Option<String>,
    #[serde(default)]
    entry: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    exit: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    after: Vec<Spanned<RawTimer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimer {
    name: String,
    delay: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    description: Option<String>,
    from: Spanned<OneOrMany>,
    on: Spanned<OneOrMany>,
    guard: Option<Spanned<String>>,
    #[serde(default)]
    set: Option<Spanned<toml::Table>>,
    #[serde(default)]
    actions: Vec<Spanned<toml::Table>>,
    to: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// Compiles one definition from `text`; `file` names it in problems and `fallback_name` is used
/// when the file has no `name`.
pub fn parse(file: &str, text: &str, fallback_name: &str) -> (Option<Definition>, Vec<Problem>) {
    let lines = LineIndex::new(text);
    let mut problems = Vec::new();
    let raw: RawMachine = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            let location =
                error.span().map(|span| lines.locate(file, span.start)).unwrap_or_else(|| Location::file(file));
            problems.push(Problem::new(location, error.message().trim().to_string()));
            return (None, problems);
        }
    };
    let at = |span: std::ops::Range<usize>| lines.locate(file, span.start);
    let name = raw.name.map_or_else(|| fallback_name.to_string(), |name| name.into_inner());

    let mut vars = Map::new();
    for (key, value) in raw.vars {
        vars.insert(key, toml_to_json(value));
    }

    let mut states = BTreeMap::new();
    for (state_name, state) in raw.states {
        let location = at(state_name.span());
        let state_name = state_name.into_inner();
        let state = state.into_inner();
        let entry = compile_actions(state.entry, &at, &mut problems);
        let exit = compile_actions(state.exit, &at, &mut problems);
        let mut after = Vec::new();
        for timer in state.after {
            let location = at(timer.span());
            let timer = timer.into_inner();
            let delay_location = at(timer.delay.span());
            match Template::compile(timer.delay.get_ref()) {
                Ok(delay) => {
                    if let Some(literal) = delay.literal()
                        && humantime::parse_duration(literal).is_err()
                    {
                        problems.push(Problem::new(
                            delay_location,
                            format!("timer {:?}: invalid delay {literal:?}; write it like \"90s\"", timer.name),
                        ));
                    }
                    after.push(TimerTemplate { name: timer.name, delay, location });
                }
                Err(error) => problems.push(Problem::new(delay_location, format!("timer {:?}: {error}", timer.name))),
            }
        }
        states.insert(
            state_name.clone(),
            State { name: state_name, description: state.description, entry, exit, after, location },
        );
    }
    if states.is_empty() {
        problems.push(Problem::new(Location::file(file), "the machine has no states".into()));
    }
    let initial = raw.initial.get_ref().clone();
    if !states.contains_key(&initial) {
        problems.push(Problem::new(at(raw.initial.span()), format!("initial state {initial:?} is not a state")));
    }

    let mut transitions = Vec::new();
    for (index, transition) in raw.transitions.into_iter().enumerate() {
        let location = at(transition.span());
        let transition = transition.into_inner();
        let from_location = at(transition.from.span());
        let from = transition.from.into_inner().into_vec();
        let from = if from.iter().any(|state| state == "*") {
            Matcher::Any
        } else {
            for state in &from {
                if !states.contains_key(state) {
                    problems.push(Problem::new(
                        from_location.clone(),
                        format!("transition #{}: unknown state {state:?} in from", index + 1),
                    ));
                }
            }
            Matcher::Only(from)
        };
        let on_location = at(transition.on.span());
        let on = transition.on.into_inner().into_vec();
        if on.is_empty() || on.iter().any(|kind| kind.trim().is_empty()) {
            problems.push(Problem::new(
                on_location,
                format!("transition #{}: on needs at least one event type", index + 1),
            ));
        }
        let guard = transition.guard.and_then(|guard| {
            let guard_location = at(guard.span());
            match Expr::compile(guard.get_ref()) {
                Ok(expr) => Some(expr),
                Err(error) => {
                    problems.push(Problem::new(
                        guard_location,
                        format!("transition #{}: guard does not compile: {error}", index + 1),
                    ));
                    None
                }
            }
        });
        let mut set = Vec::new();
        if let Some(table) = transition.set {
            let set_location = at(table.span());
            for (key, value) in table.into_inner() {
                match compile_value(value) {
                    Ok(value) => set.push((key, value)),
                    Err(error) => problems.push(Problem::new(
                        set_location.clone(),
                        format!("transition #{}: set.{key}: {error}", index + 1),
                    )),
                }
            }
        }
        let actions = compile_actions(transition.actions, &at, &mut problems);
        let to = match transition.to {
            None => Target::Stay,
            Some(to) => {
                let to_location = at(to.span());
                let text = to.into_inner();
                match Template::compile(&text) {
                    Ok(template) => match template.literal() {
                        Some(state) => {
                            if !states.contains_key(state) {
                                problems.push(Problem::new(
                                    to_location,
                                    format!("transition #{}: unknown state {state:?} in to", index + 1),
                                ));
                            }
                            Target::State(state.to_string())
                        }
                        None => Target::Dynamic(template),
                    },
                    Err(error) => {
                        problems.push(Problem::new(to_location, format!("transition #{}: to: {error}", index + 1)));
                        Target::Stay
                    }
                }
            }
        };
        transitions.push(Transition {
            index: index + 1,
            description: transition.description,
            from,
            on,
            guard,
            set,
            actions,
            to,
            location,
        });
    }

    let definition =
        Definition { name, file: file.to_string(), description: raw.description, initial, vars, states, transitions };
    problems.extend(super::check::check(&definition));
    (Some(definition), problems)
}

/// Reads and compiles a definition file; the machine is named after the file unless it says otherwise.
pub fn read(path: &Path) -> (Option<Definition>, Vec<Problem>) {
    let file = path.display().to_string();
    let fallback = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&file, &text, &fallback),
        Err(error) => (None, vec![Problem::new(Location::file(&file), format!("cannot read the file: {error}"))]),
    }
}

fn compile_actions(
    tables: Vec<Spanned<toml::Table>>,
    at: &impl Fn(std::ops::Range<usize>) -> Location,
    problems: &mut Vec<Problem>,
) -> Vec<ActionTemplate> {
    let mut actions = Vec::new();
    for table in tables {
        let location = at(table.span());
        let mut table = table.into_inner();
        let kind = match table.remove("do") {
            Some(toml::Value::String(kind)) => kind,
            _ => {
                problems.push(Problem::new(location, "an action needs do = \"<action>\"".into()));
                continue;
            }
        };
        let Some((_, allowed)) = ACTIONS.iter().find(|(name, _)| *name == kind) else {
            let known: Vec<&str> = ACTIONS.iter().map(|(name, _)| *name).collect();
            problems
                .push(Problem::new(location, format!("unknown action {kind:?}; known actions: {}", known.join(", "))));
            continue;
        };
        let mut params = Vec::new();
        for (key, value) in table {
            if !allowed.contains(&key.as_str()) {
                problems.push(Problem::new(
                    location.clone(),
                    format!("action {kind}: unknown parameter {key:?}; it takes {}", allowed.join(", ")),
                ));
                continue;
            }
            match compile_value(value) {
                Ok(value) => params.push((key, value)),
                Err(error) => problems.push(Problem::new(location.clone(), format!("action {kind}: {key}: {error}"))),
            }
        }
        actions.push(ActionTemplate { kind, params, location });
    }
    actions
}

/// A parameter or `set` value: strings are templates, tables and arrays hold templates.
#[derive(Debug, Clone)]
pub enum ValueTemplate {
    Literal(Value),
    Template(Template),
    Array(Vec<ValueTemplate>),
    Table(Vec<(String, ValueTemplate)>),
}

impl ValueTemplate {
    /// Evaluates every template inside.
    pub fn eval(&self, scope: &super::expr::Scope) -> Result<Value, String> {
        Ok(match self {
            ValueTemplate::Literal(value) => value.clone(),
            ValueTemplate::Template(template) => template.eval(scope)?,
            ValueTemplate::Array(items) => {
                Value::Array(items.iter().map(|item| item.eval(scope)).collect::<Result<_, _>>()?)
            }
            ValueTemplate::Table(entries) => {
                let mut map = Map::new();
                for (key, value) in entries {
                    map.insert(key.clone(), value.eval(scope)?);
                }
                Value::Object(map)
            }
        })
    }

    /// The expressions inside, for the checker.
    pub fn exprs(&self) -> Vec<&Expr> {
        match self {
            ValueTemplate::Literal(_) => Vec::new(),
            ValueTemplate::Template(template) => template.exprs().collect(),
            ValueTemplate::Array(items) => items.iter().flat_map(ValueTemplate::exprs).collect(),
            ValueTemplate::Table(entries) => entries.iter().flat_map(|(_, value)| value.exprs()).collect(),
        }
    }
}

fn compile_value(value: toml::Value) -> Result<ValueTemplate, String> {
    Ok(match value {
        toml::Value::String(text) => {
            let template = Template::compile(&text)?;
            match template.literal() {
                Some(literal) => ValueTemplate::Literal(Value::String(literal.to_string())),
                None => ValueTemplate::Template(template),
            }
        }
        toml::Value::Array(items) => {
            ValueTemplate::Array(items.into_iter().map(compile_value).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => ValueTemplate::Table(
            table.into_iter().map(|(key, value)| Ok((key, compile_value(value)?))).collect::<Result<_, String>>()?,
        ),
        other => ValueTemplate::Literal(toml_to_json(other)),
    })
}

fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(text) => Value::String(text),
        toml::Value::Integer(number) => Value::from(number),
        toml::Value::Float(number) => serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(flag) => Value::Bool(flag),
        toml::Value::Datetime(datetime) => Value::String(datetime.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => {
            Value::Object(table.into_iter().map(|(key, value)| (key, toml_to_json(value))).collect())
        }
    }
}

/// Byte offsets to line and column.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(index, _)| index + 1));
        Self { starts }
    }

    fn locate(&self, file: &str, offset: usize) -> Location {
        let line = self.starts.partition_point(|start| *start <= offset);
        let column = offset - self.starts[line.saturating_sub(1)] + 1;
        Location { file: file.to_string(), line, column }
    }
}
