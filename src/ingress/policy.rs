//! What may come in from outside: the trust boundary of the ingress.
//!
//! onair's own events (`onair.action.*` results, `onair.timer.*`, `onair.schedule.*`,
//! notifications: the whole `onair.` namespace) drive the machines with authority no webhook
//! sender has, so the ingress never takes them, whoever authenticated. It takes:
//!
//! - the Media Services live event types it maps (sent as `Microsoft.Media.*`, or as onair's
//!   name for them, which is the same event after mapping);
//! - the types on `ingress.allowed_types` (exact, or a prefix ending in `*`; never `onair.*`);
//! - operator commands (`onair.command.*`) only when `ingress.accept_commands` is on, and then
//!   only in a delivery signed with an HMAC secret: a query key travels in URLs and proxy logs.
//!
//! Any other type is acknowledged and dropped (counted as ignored), like an event about no
//! configured broadcast: an Event Grid subscription may carry types onair has no use for.
//!
//! Every admitted event also gets an id in a namespace no internal id can take,
//! `ingress:<16 hex digits of SHA-256(source)>:<id as sent>`, so that an outside sender can never
//! make one of onair's own events (`action/<n>`, `timer/…`, `<broadcast>/<occurrence>/<step>`,
//! the operations API's UUIDs) look like a duplicate, while a retry of the same external event
//! (same source, same id) still is one.

use sha2::{Digest, Sha256};

use super::parse::MEDIA_TYPES;
use crate::event::{COMMAND_PREFIX, Event};

/// The prefix of every id the ingress gives an event.
pub const ID_PREFIX: &str = "ingress:";

/// The longest id an outside sender may use: the rewritten id must stay within the envelope's
/// 512 characters (`ingress:` + 16 hex digits + `:`).
pub const MAX_EXTERNAL_ID: usize = 512 - ID_PREFIX.len() - 17;

/// How a delivery proved itself, as far as the boundary cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// An HMAC signature over the timestamp and the body.
    Signature,
    /// A key in the query string.
    Key,
}

/// Why a delivery is refused at the boundary; the message is the answer's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An event of onair's own (400).
    #[error(
        "event {index}: type {kind:?} is one of onair's own events, which never come from outside (only the mapped Media Services types and ingress.allowed_types are accepted)"
    )]
    Internal { index: usize, kind: String },
    /// An operator command while `accept_commands` is off (403).
    #[error(
        "event {index}: operator commands ({kind:?}) are not accepted by the ingress (ingress.accept_commands is off); use the operations API"
    )]
    CommandsOff { index: usize, kind: String },
    /// An operator command authenticated by a query key (403).
    #[error("event {index}: operator commands ({kind:?}) need a signed delivery (onair-signature), not a query key")]
    CommandByKey { index: usize, kind: String },
    /// An id too long to be namespaced (400).
    #[error("event {index}: id longer than {MAX_EXTERNAL_ID} characters")]
    IdTooLong { index: usize },
}

impl Refusal {
    /// Whether the sender is not allowed (403) rather than sending something wrong (400).
    pub fn forbidden(&self) -> bool {
        matches!(self, Self::CommandsOff { .. } | Self::CommandByKey { .. })
    }
}

/// The boundary's settings.
#[derive(Debug, Clone, Default)]
pub struct Boundary {
    /// `ingress.allowed_types`.
    pub allowed_types: Vec<String>,
    /// `ingress.accept_commands`.
    pub accept_commands: bool,
}

/// What the boundary does with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Ignore,
}

impl Boundary {
    /// Sorts a parsed (and mapped) delivery: the events to publish, with their ids namespaced, and
    /// how many were dropped as not accepted here. One refused event refuses the whole delivery:
    /// nothing of it is published.
    pub fn sort(&self, events: Vec<Event>, proof: Proof) -> Result<(Vec<Event>, usize), Refusal> {
        let mut accepted = Vec::with_capacity(events.len());
        let mut ignored = 0;
        for (index, mut event) in events.into_iter().enumerate() {
            match self.verdict(index, &event.kind, proof)? {
                Verdict::Ignore => ignored += 1,
                Verdict::Accept => {
                    if event.id.len() > MAX_EXTERNAL_ID {
                        return Err(Refusal::IdTooLong { index });
                    }
                    event.id = external_id(proof, &event.source, &event.id);
                    accepted.push(event);
                }
            }
        }
        Ok((accepted, ignored))
    }

    fn verdict(&self, index: usize, kind: &str, proof: Proof) -> Result<Verdict, Refusal> {
        if MEDIA_TYPES.iter().any(|(_, mapped)| *mapped == kind) {
            return Ok(Verdict::Accept);
        }
        if kind.starts_with(COMMAND_PREFIX) {
            return match (self.accept_commands, proof) {
                (false, _) => Err(Refusal::CommandsOff { index, kind: kind.to_string() }),
                (true, Proof::Key) => Err(Refusal::CommandByKey { index, kind: kind.to_string() }),
                (true, Proof::Signature) => Ok(Verdict::Accept),
            };
        }
        if reserved(kind) {
            return Err(Refusal::Internal { index, kind: kind.to_string() });
        }
        if self.allowed_types.iter().any(|allowed| matches(allowed, kind)) {
            Ok(Verdict::Accept)
        } else {
            Ok(Verdict::Ignore)
        }
    }
}

/// Whether `kind` is in onair's own namespace (any case: no near-miss spelling gets through).
pub fn reserved(kind: &str) -> bool {
    kind.get(..6).is_some_and(|head| head.eq_ignore_ascii_case("onair."))
}

/// Whether an allowlist entry could admit one of onair's own types: `onair.…` itself, or a
/// prefix of it such as `o*` or `ONAIR*` (or `*`).
pub fn covers_reserved(entry: &str) -> bool {
    if reserved(entry) {
        return true;
    }
    entry
        .strip_suffix('*')
        .is_some_and(|prefix| "onair.".get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix)))
}

/// An allowlist entry: an exact type, or a prefix ending in `*`.
fn matches(allowed: &str, kind: &str) -> bool {
    match allowed.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => allowed == kind,
    }
}

/// The id an external event gets: `ingress:<16 hex digits of SHA-256(proof, source)>:<id>`. The
/// kind of proof is part of the namespace, so that the holder of a query key (which travels in
/// URLs and proxy logs) cannot take the ids of a sender that signs, whatever source they claim.
pub fn external_id(proof: Proof, source: &str, id: &str) -> String {
    let tag: &[u8] = match proof {
        Proof::Signature => b"signed\n",
        Proof::Key => b"key\n",
    };
    let digest = Sha256::new().chain_update(tag).chain_update(source.as_bytes()).finalize();
    let hex: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    format!("{ID_PREFIX}{hex}:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: &str, kind: &str) -> Event {
        let mut event = Event::new(id, kind, "news", json!({}), chrono::DateTime::UNIX_EPOCH);
        event.source = "playout".into();
        event
    }

    fn boundary(accept_commands: bool) -> Boundary {
        Boundary { allowed_types: vec!["com.example.cue".into(), "org.playout.*".into()], accept_commands }
    }

    #[test]
    fn internal_types_are_refused_whoever_sends_them() {
        for kind in [
            "onair.action.succeeded",
            "onair.action.failed",
            "onair.timer.fired",
            "onair.schedule.fired",
            "onair.notification",
            "ONAIR.Action.succeeded",
            "onair.anything-new",
        ] {
            for proof in [Proof::Signature, Proof::Key] {
                let refusal = boundary(true).sort(vec![event("1", kind)], proof).unwrap_err();
                assert_eq!(refusal, Refusal::Internal { index: 0, kind: kind.into() });
                assert!(!refusal.forbidden());
            }
        }
    }

    #[test]
    fn commands_need_the_setting_and_a_signature() {
        let kind = "onair.command.force-state";
        assert!(matches!(
            boundary(false).sort(vec![event("1", kind)], Proof::Signature),
            Err(Refusal::CommandsOff { index: 0, .. })
        ));
        assert!(matches!(boundary(true).sort(vec![event("1", kind)], Proof::Key), Err(Refusal::CommandByKey { .. })));
        let (accepted, ignored) = boundary(true).sort(vec![event("1", kind)], Proof::Signature).unwrap();
        assert_eq!((accepted.len(), ignored), (1, 0));
    }

    #[test]
    fn media_types_and_the_allowlist_pass_and_other_types_are_ignored() {
        let events = vec![
            event("a", "onair.encoder.heartbeat"),
            event("b", "com.example.cue"),
            event("c", "org.playout.rundown.changed"),
            event("d", "com.example.cue.other"),
            event("e", "Microsoft.Media.JobStateChange"),
        ];
        let (accepted, ignored) = boundary(false).sort(events, Proof::Key).unwrap();
        let ids: Vec<&str> = accepted.iter().map(|event| event.id.as_str()).collect();
        let prefix = external_id(Proof::Key, "playout", "");
        assert_eq!(ids, [format!("{prefix}a"), format!("{prefix}b"), format!("{prefix}c")]);
        assert_eq!(ignored, 2);
    }

    #[test]
    fn one_refused_event_refuses_the_delivery() {
        let events = vec![event("a", "onair.encoder.heartbeat"), event("b", "onair.action.succeeded")];
        assert_eq!(
            boundary(false).sort(events, Proof::Signature).unwrap_err(),
            Refusal::Internal { index: 1, kind: "onair.action.succeeded".into() }
        );
    }

    #[test]
    fn external_ids_live_in_their_own_namespace_and_stay_stable() {
        let id = external_id(Proof::Key, "/subscriptions/s/x", "action/1");
        assert!(id.starts_with("ingress:") && id.ends_with(":action/1") && id.len() == "ingress:".len() + 17 + 8);
        assert_eq!(id, external_id(Proof::Key, "/subscriptions/s/x", "action/1"), "a retry deduplicates");
        assert_ne!(id, external_id(Proof::Key, "/subscriptions/s/y", "action/1"), "another source is another event");
        assert_ne!(
            id,
            external_id(Proof::Signature, "/subscriptions/s/x", "action/1"),
            "a key holder cannot take a signed sender's ids"
        );
        let long = "x".repeat(MAX_EXTERNAL_ID);
        let (accepted, _) = boundary(false).sort(vec![event(&long, "onair.encoder.connected")], Proof::Key).unwrap();
        assert_eq!(accepted[0].id.len(), 512);
        let longer = "x".repeat(MAX_EXTERNAL_ID + 1);
        assert_eq!(
            boundary(false).sort(vec![event(&longer, "onair.encoder.connected")], Proof::Key).unwrap_err(),
            Refusal::IdTooLong { index: 0 }
        );
    }
}
