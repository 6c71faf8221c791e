//! The closed set of actions a machine can ask for.
//!
//! `ActionKind` is the one list: the loader validates `do = "…"` and its parameters with it, the
//! executor dispatches on it with exhaustive matches, `docs/rules.md` documents every kind (a unit
//! test checks it) and an integration test runs every kind against the emulator. Adding a variant
//! is a compile error in the executor until it is executed there, and a test failure until it is
//! documented and tested. Outbox rows store the kind by name (`name`, read back with `parse`).

use std::fmt;

/// Declares `ActionKind` from one table: each variant with its name and the parameters it takes.
/// The enum, `ALL`, `name` and `params` come from the same lines, so they cannot drift apart.
macro_rules! action_kinds {
    ($($(#[$doc:meta])* $variant:ident = $name:literal [$($param:literal),* $(,)?],)+) => {
        /// An action a machine can ask for.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ActionKind {
            $($(#[$doc])* $variant,)+
        }

        impl ActionKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [ActionKind] = &[$(ActionKind::$variant,)+];

            /// Its name, as machines write it in `do = "…"` and the outbox stores it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ActionKind::$variant => $name,)+
                }
            }

            /// The parameters it accepts.
            pub const fn params(self) -> &'static [&'static str] {
                match self {
                    $(ActionKind::$variant => &[$($param),*],)+
                }
            }
        }
    };
}

action_kinds! {
    /// Creates the live event if absent, starts it and waits until it runs.
    ChannelStart = "channel.start" ["channel"],
    /// Stops the live event (absent counts as stopped).
    ChannelStop = "channel.stop" ["channel", "remove_outputs"],
    /// Resets a running live event once per decision.
    ChannelReset = "channel.reset" ["channel"],
    /// Creates the live event if absent and allocates it (StandBy).
    ChannelAllocate = "channel.allocate" ["channel"],
    /// Creates the asset and the live output recording into it.
    ProgramCreate = "program.create" ["channel", "name", "asset", "manifest", "archive_window", "description"],
    /// Deletes the live output; the asset stays.
    ProgramStop = "program.stop" ["channel", "name"],
    /// Creates the streaming locator (and, for a protected broadcast, its policies).
    LocatorPublish = "locator.publish" ["name", "asset", "policy", "endpoint"],
    /// Deletes the streaming locator.
    LocatorUnpublish = "locator.unpublish" ["name"],
    /// Creates the streaming endpoint if absent and starts it.
    EndpointStart = "endpoint.start" ["endpoint"],
    /// Stops the streaming endpoint.
    EndpointStop = "endpoint.stop" ["endpoint"],
    /// Sets the streaming endpoint's scale units.
    EndpointScale = "endpoint.scale" ["endpoint", "units"],
    /// Logs a message and publishes an `onair.notification` event.
    Notify = "notify" ["message", "severity", "data"],
    /// Calls any HTTP API.
    Http = "http" ["method", "url", "headers", "body", "expect"],
    /// Repeats a recorded action; `step` resolves it, so it never reaches the executor.
    Rerun = "rerun" ["action"],
}

impl ActionKind {
    /// The kind named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|kind| kind.name() == name)
    }

    /// Every name, for messages that list them.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().map(|kind| kind.name())
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::ActionKind;

    #[test]
    fn every_kind_parses_back_from_its_name_and_names_are_unique() {
        for kind in ActionKind::ALL {
            assert_eq!(ActionKind::parse(kind.name()), Some(*kind));
        }
        let mut names: Vec<&str> = ActionKind::names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ActionKind::ALL.len());
        assert_eq!(ActionKind::parse("channel.launch"), None);
        assert_eq!(ActionKind::parse(""), None);
    }

    /// `docs/rules.md` documents every action and each of its parameters in the actions table.
    #[test]
    fn the_rules_document_every_action_and_parameter() {
        let rules = include_str!("../../docs/rules.md");
        for kind in ActionKind::ALL {
            let row = rules
                .lines()
                .find(|line| line.starts_with(&format!("| `{}` |", kind.name())))
                .unwrap_or_else(|| panic!("docs/rules.md has no row for the action {kind}"));
            let documented = row.split('|').nth(2).unwrap_or_default();
            for param in kind.params() {
                assert!(
                    documented.contains(&format!("`{param}`")),
                    "docs/rules.md does not document the parameter {param:?} of {kind}: {row}"
                );
            }
        }
    }
}
