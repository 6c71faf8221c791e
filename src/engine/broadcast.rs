//! A broadcast as configured (`[broadcasts.<id>]`), and what expressions see of it.

use serde_json::{Map, Value, json};

use std::sync::Arc;

use crate::media::{ChannelSpec, EndpointSpec};
use crate::schedule::Spec;

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
