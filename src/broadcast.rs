//! Broadcasts as configured (`[broadcasts.<id>]`): what the engine runs, the scheduler plans,
//! the ingress routes webhooks to and the API shows. Every module that needs a broadcast's
//! definition depends on this one; this one depends on none of them but the pieces a broadcast
//! is made of (its media specs, its schedule, its protection).

use serde_json::{Map, Value, json};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::media::{ChannelSpec, EndpointSpec};
use crate::schedule::Spec;
use crate::schedule::plan::Scheduled;

/// One broadcast: which channel, endpoint and machine, how it is published, how many units.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// Its id: lowercase letters, digits and inner hyphens; resource names start with it.
    pub id: String,
    /// The machine definition that runs it.
    pub machine: String,
    /// The live event (channel) name.
    pub channel: String,
    /// `RTMP` or `FragmentedMP4`.
    pub protocol: String,
    /// The streaming endpoint.
    pub endpoint: String,
    /// The streaming (delivery) policy of its locators.
    pub streaming_policy: String,
    /// The archive (DVR) window of its programs, ISO 8601.
    pub archive_window: String,
    /// Streaming units while on air.
    pub on_air_units: i32,
    /// Streaming units off air.
    pub off_air_units: i32,
    /// Free-form settings for rules (`broadcast.settings.*`).
    pub settings: Map<String, Value>,
    /// When it goes on air (`[broadcasts.<id>.schedule]`), if onair schedules it.
    pub schedule: Option<Arc<Spec>>,
    /// How it is published: clear, envelope or multi-DRM, and its content key policy.
    pub protection: crate::protection::Protection,
}

impl Broadcast {
    /// What expressions see as `broadcast`.
    pub fn expression_view(&self) -> Value {
        json!({
            "id": self.id,
            "machine": self.machine,
            "channel": self.channel,
            "protocol": self.protocol,
            "endpoint": self.endpoint,
            "streaming_policy": self.streaming_policy,
            "archive_window": self.archive_window,
            "units": {"on_air": self.on_air_units, "off_air": self.off_air_units},
            "protection": self.protection.mode.name(),
            "settings": self.settings,
        })
    }

    /// How its channel is created when it does not exist.
    pub fn channel_spec(&self, name: &str) -> ChannelSpec {
        let mut spec = ChannelSpec::new(name);
        spec.protocol.clone_from(&self.protocol);
        spec.description = Some(format!("onair broadcast {}", self.id));
        spec.tags.insert("onair-broadcast".into(), self.id.clone());
        spec
    }

    /// How its streaming endpoint is created when it does not exist.
    pub fn endpoint_spec(&self, name: &str) -> EndpointSpec {
        EndpointSpec {
            name: name.to_string(),
            scale_units: self.off_air_units.max(0),
            description: Some(format!("onair broadcast {}", self.id)),
        }
    }
}

/// Whether `id` can name a broadcast: 1 to 40 lowercase letters, digits and inner hyphens, so that
/// `<id>-<occurrence>` is a valid live output and asset name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

/// The scheduled broadcasts, in id order, as the plan and the schedule checks see them.
pub fn scheduled(broadcasts: &BTreeMap<String, Broadcast>) -> Vec<Scheduled<'_>> {
    broadcasts
        .values()
        .filter_map(|broadcast| {
            let spec = broadcast.schedule.as_ref()?;
            Some(Scheduled { id: &broadcast.id, channel: &broadcast.channel, spec })
        })
        .collect()
}

/// `[defaults.broadcast]` and `[defaults.schedule]`: what each `[broadcasts.<id>]` and its
/// schedule table fall back on.
#[derive(Debug, Clone)]
pub struct Defaults {
    broadcast: crate::config::Fallback,
    schedule: crate::config::Fallback,
}

impl Defaults {
    /// Takes the two tables from `[defaults]`.
    pub(crate) fn parse(defaults: &mut crate::config::Section<'_>) -> Self {
        let broadcast = defaults.fallback(
            "broadcast",
            &[
                "machine",
                "protocol",
                "endpoint",
                "streaming_policy",
                "protection",
                "content_key_policy",
                "archive_window",
                "units.on_air",
                "units.off_air",
                "settings",
            ],
        );
        let schedule = defaults.fallback(
            "schedule",
            &[
                "timezone",
                "lead.channel",
                "lead.scale",
                "post_roll",
                "dst_gap",
                "dst_fold",
                "catch_up",
                "catch_up_window",
                "overlap",
                "duration",
            ],
        );
        Self { broadcast, schedule }
    }
}

/// The broadcasts of `[broadcasts]`, each checked; problems are recorded in `section`.
pub(crate) fn parse(
    section: &mut crate::config::Section<'_>,
    policies: &crate::protection::Policies,
    defaults: &Defaults,
) -> BTreeMap<String, Broadcast> {
    parse_with_sources(section, policies, defaults).0
}

/// `parse`, and each broadcast's definition as written (`[broadcasts.<id>]` as a JSON table,
/// defaults not filled in): what is stored, compared and shown as the broadcast's source. The
/// tables are parsed on the machine's cores when there are many (`Section::tables_over`).
pub(crate) fn parse_with_sources(
    section: &mut crate::config::Section<'_>,
    policies: &crate::protection::Policies,
    defaults: &Defaults,
) -> (BTreeMap<String, Broadcast>, BTreeMap<String, Map<String, Value>>) {
    let parsed =
        section.tables_over(&defaults.broadcast, |interned: &mut crate::schedule::Interned, id, written, table| {
            (parse_one(table, id, policies, defaults, interned), written)
        });
    let (mut broadcasts, mut sources) = (BTreeMap::new(), BTreeMap::new());
    for (broadcast, written) in parsed {
        if let Some(written) = written {
            sources.insert(broadcast.id.clone(), written);
        }
        broadcasts.insert(broadcast.id.clone(), broadcast);
    }
    (broadcasts, sources)
}

/// One `[broadcasts.<id>]` table, its defaults filled in.
fn parse_one(
    mut table: crate::config::Section<'_>,
    id: String,
    policies: &crate::protection::Policies,
    defaults: &Defaults,
    interned: &mut crate::schedule::Interned,
) -> Broadcast {
    if !valid_id(&id) {
        table.problem("", "a broadcast id is 1 to 40 lowercase letters, digits and inner hyphens");
    }
    let channel = table.optional::<String>("channel").unwrap_or_else(|| id.clone());
    if crate::media::model::valid_live_event_name(&channel).is_err() {
        table.problem("channel", "a channel (live event) name is 1 to 32 letters, digits and inner hyphens");
    }
    let protocol: String = table.value("protocol");
    if !matches!(protocol.as_str(), "RTMP" | "FragmentedMP4") {
        table.problem("protocol", "must be RTMP or FragmentedMP4");
    }
    let mut units = table.section("units");
    let on_air_units: i32 = units.value("on_air");
    let off_air_units: i32 = units.value("off_air");
    for (key, value) in [("on_air", on_air_units), ("off_air", off_air_units)] {
        units.check(key, (0..=10).contains(&value), "must be between 0 and 10");
    }
    drop(units);
    let settings = table.optional::<Map<String, Value>>("settings").unwrap_or_default();
    let protection = crate::protection::parse_protection(&mut table, policies);
    let schedule = if table.keys().iter().any(|key| key == "schedule") {
        crate::schedule::parse_spec(&mut table.section_over("schedule", &defaults.schedule), interned)
            .map(std::sync::Arc::new)
    } else {
        None
    };
    Broadcast {
        machine: table.value("machine"),
        endpoint: table.value("endpoint"),
        streaming_policy: table.value("streaming_policy"),
        archive_window: table.value("archive_window"),
        id,
        channel,
        protocol,
        on_air_units,
        off_air_units,
        settings,
        schedule,
        protection,
    }
}
