//! Static checks of a compiled definition: what can never happen is a mistake.
//!
//! States that cannot be reached from the initial state, transitions that can never fire (every
//! `from` state unreachable, shadowed by an earlier transition without a guard, or a guard that is
//! false whatever happens), expressions that read variables that do not exist, and timers that no
//! transition listens to.

use std::collections::{BTreeSet, VecDeque};

use serde_json::{Map, Value};

use super::expr::{Expr, Scope, VARIABLES};
use super::{Definition, Matcher, Problem, Target};

/// Every problem of `definition`.
pub fn check(definition: &Definition) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_variables(definition, &mut problems);
    let reachable = reachable(definition);
    for state in definition.states.values() {
        if !reachable.contains(&state.name) {
            problems.push(Problem::new(
                state.location.clone(),
                format!("state {:?} cannot be reached from {:?}", state.name, definition.initial),
            ));
        }
    }
    for (position, transition) in definition.transitions.iter().enumerate() {
        let label = format!("transition #{}", transition.index);
        if let Matcher::Only(from) = &transition.from
            && !from.is_empty()
            && from.iter().all(|state| !reachable.contains(state))
        {
            problems.push(Problem::new(
                transition.location.clone(),
                format!("{label} can never fire: no state it starts from can be reached"),
            ));
            continue;
        }
        let shadow = definition.transitions[..position].iter().find(|earlier| {
            earlier.guard.is_none()
                && covers_states(&earlier.from, &transition.from)
                && covers_types(&earlier.on, &transition.on)
        });
        if let Some(earlier) = shadow {
            problems.push(Problem::new(
                transition.location.clone(),
                format!(
                    "{label} can never fire: transition #{} has no guard and takes every event it would",
                    earlier.index
                ),
            ));
            continue;
        }
        if let Some(guard) = &transition.guard
            && guard.variables().is_empty()
        {
            let no_vars = Map::new();
            let scope = Scope::new(&Value::Null, &Value::Null, &no_vars, "", chrono::DateTime::UNIX_EPOCH);
            match guard.eval_bool(&scope) {
                Ok(false) => problems.push(Problem::new(
                    transition.location.clone(),
                    format!("{label} can never fire: its guard is always false"),
                )),
                Err(error) => problems.push(Problem::new(
                    transition.location.clone(),
                    format!("{label}: its guard always fails: {error}"),
                )),
                Ok(true) => {}
            }
        }
    }
    for state in definition.states.values() {
        for timer in &state.after {
            let handled = definition.transitions.iter().any(|transition| {
                transition.from.matches(&state.name)
                    && transition.on.iter().any(|on| type_matches(on, crate::event::TIMER_FIRED))
            });
            if !handled {
                problems.push(Problem::new(
                    timer.location.clone(),
                    format!(
                        "timer {:?} of state {:?}: no transition from {:?} takes {}",
                        timer.name,
                        state.name,
                        state.name,
                        crate::event::TIMER_FIRED
                    ),
                ));
            }
        }
    }
    problems
}

/// States reachable from the initial state through transitions (a dynamic target reaches all).
pub fn reachable(definition: &Definition) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([definition.initial.clone()]);
    while let Some(state) = queue.pop_front() {
        if !seen.insert(state.clone()) {
            continue;
        }
        for transition in definition.transitions.iter().filter(|transition| transition.from.matches(&state)) {
            match &transition.to {
                Target::Stay => {}
                Target::State(to) => queue.push_back(to.clone()),
                Target::Dynamic(_) => queue.extend(definition.states.keys().cloned()),
            }
        }
    }
    seen.retain(|state| definition.states.contains_key(state));
    seen
}

/// Whether an event type matches a pattern: exact, `prefix.*`, or `*`.
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

fn covers_states(earlier: &Matcher, later: &Matcher) -> bool {
    match (earlier, later) {
        (Matcher::Any, _) => true,
        (Matcher::Only(_), Matcher::Any) => false,
        (Matcher::Only(earlier), Matcher::Only(later)) => later.iter().all(|state| earlier.contains(state)),
    }
}

fn covers_types(earlier: &[String], later: &[String]) -> bool {
    later.iter().all(|kind| {
        earlier.iter().any(|pattern| match kind.strip_suffix('*') {
            Some(prefix) => pattern.strip_suffix('*').is_some_and(|earlier_prefix| prefix.starts_with(earlier_prefix)),
            None => type_matches(pattern, kind),
        })
    })
}

fn check_variables(definition: &Definition, problems: &mut Vec<Problem>) {
    let mut report = |expr: &Expr, location: &super::Location, what: &str| {
        for variable in expr.variables() {
            if !VARIABLES.contains(&variable.as_str()) {
                problems.push(Problem::new(
                    location.clone(),
                    format!(
                        "{what}: unknown variable {variable:?} in {:?}; expressions can use {}",
                        expr.source,
                        VARIABLES.join(", ")
                    ),
                ));
            }
        }
    };
    for transition in &definition.transitions {
        let what = format!("transition #{}", transition.index);
        if let Some(guard) = &transition.guard {
            report(guard, &transition.location, &what);
        }
        for (_, value) in &transition.set {
            value.exprs().into_iter().for_each(|expr| report(expr, &transition.location, &what));
        }
        for action in &transition.actions {
            action
                .params
                .iter()
                .flat_map(|(_, value)| value.exprs())
                .for_each(|expr| report(expr, &action.location, &what));
        }
        if let Target::Dynamic(template) = &transition.to {
            template.exprs().for_each(|expr| report(expr, &transition.location, &what));
        }
    }
    for state in definition.states.values() {
        let what = format!("state {:?}", state.name);
        for action in state.entry.iter().chain(&state.exit) {
            action
                .params
                .iter()
                .flat_map(|(_, value)| value.exprs())
                .for_each(|expr| report(expr, &action.location, &what));
        }
        for timer in &state.after {
            timer.delay.exprs().for_each(|expr| report(expr, &timer.location, &what));
        }
    }
}
