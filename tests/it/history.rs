//! A checker for stored histories, independent of `step`: every recorded decision must be a legal
//! move of the definition, and each broadcast's decisions must chain (each starts where the
//! previous one ended).

use std::collections::HashMap;

use onair::machine::{Definition, Target, type_matches};
use onair::store::AuditRow;

/// Every illegal decision in `rows` (audit rows of any kind, in order).
pub fn illegal(definition: &Definition, rows: &[AuditRow]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut current: HashMap<&str, String> = HashMap::new();
    for row in rows.iter().filter(|row| row.kind == "decision") {
        let (Some(from), Some(to), Some(kind)) = (&row.from, &row.to, &row.event_type) else {
            problems.push(format!("audit row {} lacks from, to or type", row.id));
            continue;
        };
        let expected_from = current.get(row.broadcast.as_str()).cloned().unwrap_or_else(|| definition.initial.clone());
        if *from != expected_from {
            problems.push(format!("row {}: {} decided from {from} but was in {expected_from}", row.id, row.broadcast));
        }
        let outcome = row.detail["outcome"].as_str().unwrap_or_default();
        let legal = match (outcome, row.transition) {
            ("ignored", None) => from == to,
            ("transition", None) => kind == onair::event::FORCE_STATE && definition.states.contains_key(to),
            ("transition", Some(index)) => {
                definition.transitions.iter().find(|transition| transition.index as i64 == index).is_some_and(
                    |transition| {
                        transition.from.matches(from)
                            && transition.on.iter().any(|on| type_matches(on, kind))
                            && match &transition.to {
                                Target::Stay => from == to,
                                Target::State(state) => state == to,
                                Target::Dynamic(_) => definition.states.contains_key(to),
                            }
                    },
                )
            }
            _ => false,
        };
        if !legal {
            problems.push(format!(
                "row {}: {} {from} → {to} on {kind} ({outcome}, transition {:?}) is not a move of {}",
                row.id, row.broadcast, row.transition, definition.name
            ));
        }
        current.insert(&row.broadcast, to.clone());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use onair::machine::Library;
    use serde_json::json;

    fn row(id: i64, from: &str, to: &str, kind: &str, transition: Option<i64>, outcome: &str) -> AuditRow {
        AuditRow {
            id,
            broadcast: "news".into(),
            at: chrono::DateTime::UNIX_EPOCH,
            kind: "decision".into(),
            event_id: Some(format!("e{id}")),
            event_type: Some(kind.into()),
            from: Some(from.into()),
            to: Some(to.into()),
            transition,
            reason: String::new(),
            detail: json!({"outcome": outcome}),
        }
    }

    #[test]
    fn the_checker_catches_illegal_moves_and_broken_chains() {
        let library = Library::built_in();
        let live = library.get("live").unwrap();
        let legal = [row(1, "idle", "warming", onair::event::SCHEDULE_FIRED, Some(8), "transition")];
        assert!(illegal(live, &legal).is_empty());
        // Transition #17 goes from standby, not idle.
        let wrong_from = [row(1, "idle", "live", onair::event::SCHEDULE_FIRED, Some(17), "transition")];
        assert_eq!(illegal(live, &wrong_from).len(), 1);
        // The second decision does not start where the first ended.
        let broken = [
            row(1, "idle", "warming", onair::event::SCHEDULE_FIRED, Some(8), "transition"),
            row(2, "standby", "live", onair::event::SCHEDULE_FIRED, Some(17), "transition"),
        ];
        assert_eq!(illegal(live, &broken).len(), 1);
        let ignored_moves = [row(1, "idle", "live", "x", None, "ignored")];
        assert_eq!(illegal(live, &ignored_moves).len(), 1, "an ignored event cannot change the state");
    }
}
