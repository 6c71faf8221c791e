//! Expressions (CEL) and templates (`"${broadcast.id}-${vars.occurrence}"`).
//!
//! Guards and template parts are compiled once, when a definition is loaded, and evaluated in a
//! `Scope` that exposes `event`, `broadcast`, `vars`, `state` and `now`. Evaluation is pure: the
//! same scope always gives the same value.
//!
//! A scope converts a variable to CEL only when an expression that reads it is first evaluated
//! (each expression knows the variables it reads from its compilation): a decision whose
//! transition has no guard and only literal values builds no CEL value at all, and a guard on
//! `vars` does not pay for converting the event or the broadcast.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// The variables an expression may use.
pub const VARIABLES: [&str; 5] = ["event", "broadcast", "vars", "state", "now"];

/// Functions onair adds to CEL's standard library.
pub const FUNCTIONS: [&str; 1] = ["occurrence"];

static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A compiled CEL expression and its source text.
#[derive(Clone)]
pub struct Expr {
    pub source: String,
    program: Arc<cel::Program>,
    /// The scope's bindings it reads (`Binding` bits), known from its compilation.
    needs: u8,
}

/// One bit per binding a scope can make: the variables of `VARIABLES`, in order, then the
/// `occurrence` function.
struct Binding;

impl Binding {
    const OCCURRENCE: u8 = 1 << VARIABLES.len();
    const ALL: u8 = (1 << (VARIABLES.len() + 1)) - 1;

    /// The bits for the variables and functions a program references.
    fn of(program: &cel::Program) -> u8 {
        let references = program.references();
        let mut needs = 0;
        for variable in references.variables() {
            if let Some(index) = VARIABLES.iter().position(|name| *name == variable) {
                needs |= 1 << index;
            }
        }
        if references.functions().contains(&"occurrence") {
            needs |= Self::OCCURRENCE;
        }
        needs
    }
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    /// Compiles `source`; the error is CEL's message, with the position in the expression.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = ENV.compile(source).map_err(|error| error.to_string())?;
        let needs = Binding::of(&program);
        Ok(Self { source: source.to_string(), program: Arc::new(program), needs })
    }

    /// The top-level variables it reads.
    pub fn variables(&self) -> Vec<String> {
        self.program.references().variables().into_iter().map(str::to_string).collect()
    }

    /// The functions it calls (operators excluded).
    pub fn functions(&self) -> Vec<String> {
        self.program
            .references()
            .functions()
            .into_iter()
            .filter(|name| !name.starts_with('_') && !name.starts_with('@'))
            .map(str::to_string)
            .collect()
    }

    /// Evaluates to JSON.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, String> {
        let result = scope.execute(&self.program, self.needs);
        // Should the references have missed a variable the expression reads, the error comes
        // from a partial scope: evaluate again with every binding, as an eager scope would.
        let result = match result {
            Err(_) if scope.bound.get() != Binding::ALL => scope.execute(&self.program, Binding::ALL),
            result => result,
        };
        to_json(&result.map_err(|error| error.to_string())?)
    }

    /// Evaluates a guard: it must give a boolean.
    pub fn eval_bool(&self, scope: &Scope<'_>) -> Result<bool, String> {
        match self.eval(scope)? {
            Value::Bool(value) => Ok(value),
            other => Err(format!("expected a boolean, got {other}")),
        }
    }
}

/// A string with `${expression}` parts. A template that is one expression and nothing else
/// keeps the expression's type (`"${broadcast.units.on_air}"` is a number); otherwise parts are
/// joined as text. `$${` writes a literal `${`.
#[derive(Debug, Clone)]
pub struct Template {
    pub source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr(Expr),
}

impl Template {
    /// Parses and compiles every expression of `source`.
    pub fn compile(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        while let Some(start) = rest.find('$') {
            text.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                text.push_str("${");
                rest = escaped;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                text.push('$');
                rest = after;
                continue;
            };
            let end = closing_brace(body).ok_or_else(|| format!("unclosed ${{ in {source:?}"))?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            let expression = body[..end].trim();
            if expression.is_empty() {
                return Err(format!("empty ${{}} in {source:?}"));
            }
            parts.push(Part::Expr(Expr::compile(expression)?));
            rest = &body[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self { source: source.to_string(), parts })
    }

    /// The expressions in it.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|part| match part {
            Part::Expr(expr) => Some(expr),
            Part::Text(_) => None,
        })
    }

    /// The literal text when it has no expression.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(text)] => Some(text),
            _ => None,
        }
    }

    /// Evaluates to JSON: the typed value of a lone expression, otherwise a string.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, String> {
        if let [Part::Expr(expr)] = self.parts.as_slice() {
            return expr.eval(scope).map_err(|error| format!("${{{}}}: {error}", expr.source));
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Expr(expr) => match expr.eval(scope).map_err(|error| format!("${{{}}}: {error}", expr.source))? {
                    Value::String(text) => out.push_str(&text),
                    Value::Null => {}
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(Value::String(out))
    }
}

/// The position of the `}` closing a `${`, skipping nested braces and quoted strings.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (index, c) in body.char_indices() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(index),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// What expressions can see while one event is handled. Each variable becomes a CEL value the
/// first time an expression that reads it is evaluated, and stays bound for the next ones.
pub struct Scope<'a> {
    event: &'a Value,
    broadcast: &'a Value,
    vars: &'a Map<String, Value>,
    state: &'a str,
    now: DateTime<Utc>,
    context: RefCell<cel::Context<'static, 'static>>,
    /// The `Binding` bits already in `context`.
    bound: Cell<u8>,
}

impl<'a> Scope<'a> {
    /// A scope for `event` (as JSON) on a broadcast in `state` with `vars`, at `now`.
    pub fn new(
        event: &'a Value,
        broadcast: &'a Value,
        vars: &'a Map<String, Value>,
        state: &'a str,
        now: DateTime<Utc>,
    ) -> Self {
        let context = RefCell::new(cel::Context::with_env(Arc::clone(&ENV)));
        Self { event, broadcast, vars, state, now, context, bound: Cell::new(0) }
    }

    /// Binds what `needs` names and is not bound yet, then runs `program`.
    fn execute(&self, program: &cel::Program, needs: u8) -> Result<cel::Value, cel::ExecutionError> {
        let missing = needs & !self.bound.get();
        if missing != 0 {
            let mut context = self.context.borrow_mut();
            for (index, name) in VARIABLES.iter().enumerate() {
                if missing & (1 << index) == 0 {
                    continue;
                }
                // Adding a serde_json value cannot fail: every JSON value has a CEL counterpart.
                let _ = match *name {
                    "event" => context.add_variable(*name, AsCel(self.event)),
                    "broadcast" => context.add_variable(*name, AsCel(self.broadcast)),
                    "vars" => context.add_variable(*name, AsCelMap(self.vars)),
                    "state" => context.add_variable(*name, self.state),
                    _ => {
                        context.add_variable_from_value(*name, cel::Value::Timestamp(self.now.fixed_offset()));
                        Ok(())
                    }
                };
            }
            if missing & Binding::OCCURRENCE != 0 {
                let _ = context.add_function("occurrence", occurrence);
            }
            self.bound.set(self.bound.get() | missing);
        }
        program.execute(&self.context.borrow())
    }
}

/// JSON as CEL should see it: whole numbers are `int`, not `uint`.
///
/// serde_json hands non-negative integers over as unsigned, and CEL has no `uint + int`: without
/// this, `vars.count + 1` would fail for any count read from JSON.
struct AsCel<'a>(&'a Value);

struct AsCelMap<'a>(&'a Map<String, Value>);

impl serde::Serialize for AsCel<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
                (Some(int), _, _) => serializer.serialize_i64(int),
                (None, Some(uint), _) => serializer.serialize_u64(uint),
                (_, _, float) => serializer.serialize_f64(float.unwrap_or(f64::NAN)),
            },
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&AsCel(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map {
                    out.serialize_entry(key, &AsCel(value))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

impl serde::Serialize for AsCelMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut out = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            out.serialize_entry(key, &AsCel(value))?;
        }
        out.end()
    }
}

/// `occurrence(timestamp)`: the occurrence id of an instant, `20261124t1800z` (UTC, minutes).
fn occurrence(at: chrono::DateTime<chrono::FixedOffset>) -> String {
    format_occurrence(at.with_timezone(&Utc))
}

/// The occurrence id of an instant: `20261124t1800z`.
pub fn format_occurrence(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dt%H%Mz").to_string()
}

fn to_json(value: &cel::Value) -> Result<Value, String> {
    match value {
        cel::Value::Timestamp(at) => Ok(Value::String(at.with_timezone(&Utc).to_rfc3339())),
        cel::Value::Duration(duration) => {
            Ok(Value::String(format!("{}s", duration.num_milliseconds() as f64 / 1000.0)))
        }
        other => other.json().map_err(|error| format!("value cannot become JSON: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope<'static> {
        let vars = json!({"occurrence": "20261124t1800z", "paused": false}).as_object().unwrap().clone();
        let now = DateTime::parse_from_rfc3339("2026-11-24T17:45:00Z").unwrap().with_timezone(&Utc);
        // The scope borrows what it shows; a test's values may live as long as the test binary.
        Scope::new(
            Box::leak(Box::new(json!({"type": "t", "data": {"step": "air"}}))),
            Box::leak(Box::new(json!({"id": "news", "units": {"on_air": 3}}))),
            Box::leak(Box::new(vars)),
            "standby",
            now,
        )
    }

    #[test]
    fn a_scope_binds_only_what_its_expressions_read_and_gives_the_same_values() {
        let scope = scope();
        let guard = Expr::compile("vars.paused == false && state == 'standby'").unwrap();
        assert!(guard.eval_bool(&scope).unwrap());
        assert_eq!(scope.bound.get(), 0b01100, "vars and state only");
        let literal = Expr::compile("1 + 2").unwrap();
        assert_eq!(literal.eval(&scope).unwrap(), json!(3));
        assert_eq!(scope.bound.get(), 0b01100, "nothing more for an expression without variables");
        let both = Template::compile("${event.data.step}-${occurrence(now)}").unwrap();
        assert_eq!(both.eval(&scope).unwrap(), json!("air-20261124t1745z"));
        assert_eq!(scope.bound.get(), Binding::ALL & !0b00010, "every binding but the broadcast");
        // A comprehension's own variable is not a binding of the scope.
        let each = Expr::compile("[1, 2].all(x, x > 0) && broadcast.units.on_air == 3").unwrap();
        assert!(each.eval_bool(&scope).unwrap());
        assert_eq!(scope.bound.get(), Binding::ALL);
    }

    #[test]
    fn templates_interpolate_or_keep_the_type_of_a_lone_expression() {
        let scope = scope();
        let name = Template::compile("${broadcast.id}-${vars.occurrence}").unwrap();
        assert_eq!(name.eval(&scope).unwrap(), json!("news-20261124t1800z"));
        assert_eq!(Template::compile("${broadcast.units.on_air}").unwrap().eval(&scope).unwrap(), json!(3));
        assert_eq!(Template::compile("plain").unwrap().literal(), Some("plain"));
        assert_eq!(
            Template::compile("cost $5, $${literal}").unwrap().eval(&scope).unwrap(),
            json!("cost $5, ${literal}")
        );
        assert_eq!(Template::compile("${ {'a': 1}['a'] }").unwrap().eval(&scope).unwrap(), json!(1));
        assert_eq!(Template::compile("${occurrence(now)}").unwrap().eval(&scope).unwrap(), json!("20261124t1745z"));
        assert_eq!(
            Template::compile("${broadcast.units.on_air + 1}").unwrap().eval(&scope).unwrap(),
            json!(4),
            "JSON numbers are CEL ints"
        );
    }

    #[test]
    fn guards_must_be_boolean_and_errors_are_values() {
        let scope = scope();
        assert!(Expr::compile("event.data.step == 'air' && !vars.paused").unwrap().eval_bool(&scope).unwrap());
        assert!(
            Expr::compile("vars.occurrence").unwrap().eval_bool(&scope).unwrap_err().contains("expected a boolean")
        );
        assert!(Expr::compile("vars.missing == 1").unwrap().eval_bool(&scope).is_err());
        assert!(Expr::compile("event.data ==").is_err());
        assert!(Template::compile("${unclosed").is_err());
    }

    #[test]
    fn references_are_listed_for_the_checker() {
        let expr = Expr::compile("size(vars.x) > 0 && occurrence(now) != ''").unwrap();
        let mut variables = expr.variables();
        variables.sort();
        assert_eq!(variables, ["now", "vars"]);
        let mut functions = expr.functions();
        functions.sort();
        assert_eq!(functions, ["occurrence", "size"]);
    }
}
