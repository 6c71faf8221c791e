//! Reading machine definitions from TOML and compiling them.
//!
//! Loading never stops at the first problem: every state name, action, guard and template is
//! checked, and each problem carries the file, line and column it is about. A definition with
//! problems is not used.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use super::action::ActionKind;
use super::expr::{Expr, Template};
use super::{ActionTemplate, Definition, Location, Matcher, Problem, State, Target, TimerTemplate, Transition};

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
    let mut compiler = Compiler { file, lines: LineIndex::new(text), problems: Vec::new() };
    let raw: RawMachine = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            let location = error.span().map_or_else(|| Location::file(file), |span| compiler.at(span));
            compiler.problem(location, error.message().trim().to_string());
            return (None, compiler.problems);
        }
    };
    let name = raw.name.map_or_else(|| fallback_name.to_string(), |name| name.into_inner());
    let vars: Map<String, Value> = raw.vars.into_iter().map(|(key, value)| (key, toml_to_json(value))).collect();
    let states = compiler.states(raw.states);
    let initial = raw.initial.get_ref().clone();
    if !states.contains_key(&initial) {
        let location = compiler.at(raw.initial.span());
        compiler.problem(location, format!("initial state {initial:?} is not a state"));
    }
    let transitions = raw
        .transitions
        .into_iter()
        .enumerate()
        .map(|(index, transition)| compiler.transition(index + 1, transition, &states))
        .collect();
    let definition =
        Definition { name, file: file.to_string(), description: raw.description, initial, vars, states, transitions };
    let mut problems = compiler.problems;
    problems.extend(super::check::check(&definition));
    (Some(definition), problems)
}

/// Compiles the parts of one file, keeping every problem with its location.
struct Compiler<'a> {
    file: &'a str,
    lines: LineIndex,
    problems: Vec<Problem>,
}

impl Compiler<'_> {
    /// Where `span` starts.
    fn at(&self, span: Range<usize>) -> Location {
        self.lines.locate(self.file, span.start)
    }

    fn problem(&mut self, location: Location, message: String) {
        self.problems.push(Problem::new(location, message));
    }

    fn states(&mut self, raw: BTreeMap<Spanned<String>, Spanned<RawState>>) -> BTreeMap<String, State> {
        let mut states = BTreeMap::new();
        for (name, state) in raw {
            let location = self.at(name.span());
            let name = name.into_inner();
            let state = state.into_inner();
            let entry = self.actions(state.entry);
            let exit = self.actions(state.exit);
            let after = state.after.into_iter().filter_map(|timer| self.timer(timer)).collect();
            states.insert(name.clone(), State { name, description: state.description, entry, exit, after, location });
        }
        if states.is_empty() {
            self.problem(Location::file(self.file), "the machine has no states".into());
        }
        states
    }

    /// A state's `after` timer; a literal delay must be a duration.
    fn timer(&mut self, timer: Spanned<RawTimer>) -> Option<TimerTemplate> {
        let location = self.at(timer.span());
        let timer = timer.into_inner();
        let delay_location = self.at(timer.delay.span());
        match Template::compile(timer.delay.get_ref()) {
            Ok(delay) => {
                if let Some(literal) = delay.literal()
                    && humantime::parse_duration(literal).is_err()
                {
                    self.problem(
                        delay_location,
                        format!("timer {:?}: invalid delay {literal:?}; write it like \"90s\"", timer.name),
                    );
                }
                Some(TimerTemplate { name: timer.name, delay, location })
            }
            Err(error) => {
                self.problem(delay_location, format!("timer {:?}: {error}", timer.name));
                None
            }
        }
    }

    /// Transition number `index` (from 1).
    fn transition(
        &mut self,
        index: usize,
        transition: Spanned<RawTransition>,
        states: &BTreeMap<String, State>,
    ) -> Transition {
        let location = self.at(transition.span());
        let raw = transition.into_inner();
        let from = self.from(index, raw.from, states);
        let on = self.on(index, raw.on);
        let guard = raw.guard.and_then(|guard| self.guard(index, guard));
        let set = raw.set.map(|table| self.set(index, table)).unwrap_or_default();
        let actions = self.actions(raw.actions);
        let to = raw.to.map_or(Target::Stay, |to| self.target(index, to, states));
        Transition { index, description: raw.description, from, on, guard, set, actions, to, location }
    }

    fn from(&mut self, index: usize, from: Spanned<OneOrMany>, states: &BTreeMap<String, State>) -> Matcher {
        let location = self.at(from.span());
        let from = from.into_inner().into_vec();
        if from.iter().any(|state| state == "*") {
            return Matcher::Any;
        }
        for state in &from {
            if !states.contains_key(state) {
                self.problem(location.clone(), format!("transition #{index}: unknown state {state:?} in from"));
            }
        }
        Matcher::Only(from)
    }

    fn on(&mut self, index: usize, on: Spanned<OneOrMany>) -> Vec<String> {
        let location = self.at(on.span());
        let on = on.into_inner().into_vec();
        if on.is_empty() || on.iter().any(|kind| kind.trim().is_empty()) {
            self.problem(location, format!("transition #{index}: on needs at least one event type"));
        }
        on
    }

    fn guard(&mut self, index: usize, guard: Spanned<String>) -> Option<Expr> {
        let location = self.at(guard.span());
        match Expr::compile(guard.get_ref()) {
            Ok(expr) => Some(expr),
            Err(error) => {
                self.problem(location, format!("transition #{index}: guard does not compile: {error}"));
                None
            }
        }
    }

    fn set(&mut self, index: usize, table: Spanned<toml::Table>) -> Vec<(String, ValueTemplate)> {
        let location = self.at(table.span());
        let mut set = Vec::new();
        for (key, value) in table.into_inner() {
            match compile_value(value) {
                Ok(value) => set.push((key, value)),
                Err(error) => self.problem(location.clone(), format!("transition #{index}: set.{key}: {error}")),
            }
        }
        set
    }

    /// `to`: a state, or a template decided when the event is handled.
    fn target(&mut self, index: usize, to: Spanned<String>, states: &BTreeMap<String, State>) -> Target {
        let location = self.at(to.span());
        let text = to.into_inner();
        let template = match Template::compile(&text) {
            Ok(template) => template,
            Err(error) => {
                self.problem(location, format!("transition #{index}: to: {error}"));
                return Target::Stay;
            }
        };
        let Some(state) = template.literal() else {
            return Target::Dynamic(template);
        };
        if !states.contains_key(state) {
            self.problem(location, format!("transition #{index}: unknown state {state:?} in to"));
        }
        Target::State(state.to_string())
    }

    fn actions(&mut self, tables: Vec<Spanned<toml::Table>>) -> Vec<ActionTemplate> {
        tables.into_iter().filter_map(|table| self.action(table)).collect()
    }

    /// One `{ do = "<action>", params… }`: a known action with parameters it takes.
    fn action(&mut self, table: Spanned<toml::Table>) -> Option<ActionTemplate> {
        let location = self.at(table.span());
        let mut table = table.into_inner();
        let Some(toml::Value::String(name)) = table.remove("do") else {
            self.problem(location, "an action needs do = \"<action>\"".into());
            return None;
        };
        let Some(kind) = ActionKind::parse(&name) else {
            let known = ActionKind::names().collect::<Vec<_>>().join(", ");
            self.problem(location, format!("unknown action {name:?}; known actions: {known}"));
            return None;
        };
        let allowed = kind.params();
        let mut params = Vec::new();
        for (key, value) in table {
            if !allowed.contains(&key.as_str()) {
                self.problem(
                    location.clone(),
                    format!("action {kind}: unknown parameter {key:?}; it takes {}", allowed.join(", ")),
                );
                continue;
            }
            match compile_value(value) {
                Ok(value) => params.push((key, value)),
                Err(error) => self.problem(location.clone(), format!("action {kind}: {key}: {error}")),
            }
        }
        Some(ActionTemplate { kind, params, location })
    }
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
