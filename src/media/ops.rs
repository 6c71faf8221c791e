//! Resource operations, one per REST verb, and the ensure-operations built on them.
//!
//! An ensure-operation is a small convergence loop: read the resource, compare with the goal, do the
//! one write that is missing (and wait for its long-running operation), read again. It succeeds
//! when the goal holds, however it got there, so it can be repeated after a crash, a dropped
//! response or a concurrent change without doing anything twice. Transient states (Starting,
//! Scaling, …) are waited out by polling; an ambiguous or conflicting write is followed by a
//! fresh read instead of a blind retry.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::time::Instant;

use super::Error;
use super::client::{Client, Lro};
use super::model::{
    self, AccessControl, Asset, AssetProperties, AsyncOperationResult, ContentKeyPolicy, ContentKeyPolicyProperties,
    IpAccessControl, IpRange, LiveEvent, LiveEventActionInput, LiveEventEncoding, LiveEventInput, LiveEventPreview,
    LiveEventProperties, LiveEventState, LiveOutput, LiveOutputProperties, LiveOutputState, METADATA_API_VERSION,
    STREAMING_API_VERSION, ScaleUnit, StreamingEndpoint, StreamingEndpointProperties, StreamingEndpointState,
    StreamingLocator, StreamingLocatorProperties, StreamingPolicy, StreamingPolicyProperties,
};

/// How a channel (live event) is created when it does not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSpec {
    /// Live event name: 1–32 letters, digits and inner hyphens.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// `RTMP` or `FragmentedMP4`.
    pub protocol: String,
    /// Key frame interval of the contribution stream, ISO 8601 (`PT2S`); pass-through only.
    pub key_frame_interval: Option<String>,
    /// `None` (pass-through), `PassthroughBasic`, `PassthroughStandard`, `Standard`, `Premium1080p`.
    pub encoding_type: Option<String>,
    /// Who may push the contribution stream.
    pub ingest_allow: Vec<IpRange>,
    /// Who may watch the preview.
    pub preview_allow: Vec<IpRange>,
    /// ARM tags.
    pub tags: BTreeMap<String, String>,
}

impl ChannelSpec {
    /// An RTMP pass-through channel open to every address, the usual rehearsal setup.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: None,
            protocol: "RTMP".into(),
            key_frame_interval: None,
            encoding_type: None,
            ingest_allow: vec![IpRange::allow_all()],
            preview_allow: vec![IpRange::allow_all()],
            tags: BTreeMap::new(),
        }
    }

    /// The live event body to create.
    pub fn to_resource(&self, location: &str) -> LiveEvent {
        let access =
            |allow: &[IpRange]| Some(AccessControl { ip: Some(IpAccessControl { allow: Some(allow.to_vec()) }) });
        LiveEvent {
            location: Some(location.to_string()),
            tags: (!self.tags.is_empty()).then(|| self.tags.clone()),
            properties: LiveEventProperties {
                description: self.description.clone(),
                input: Some(LiveEventInput {
                    streaming_protocol: Some(self.protocol.clone()),
                    key_frame_interval_duration: self.key_frame_interval.clone(),
                    access_control: access(&self.ingest_allow),
                    ..Default::default()
                }),
                preview: Some(LiveEventPreview { access_control: access(&self.preview_allow), ..Default::default() }),
                encoding: self
                    .encoding_type
                    .as_ref()
                    .map(|kind| LiveEventEncoding { encoding_type: Some(kind.clone()), ..Default::default() }),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// A program: an asset and the live output that records the channel into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramSpec {
    /// The live event it records.
    pub channel: String,
    /// Live output name.
    pub name: String,
    /// Asset name.
    pub asset: String,
    /// Archive (DVR) window, ISO 8601, `PT1M` to `PT25H`.
    pub archive_window: String,
    /// Manifest file name (without `.ism`); streaming URLs end with it.
    pub manifest_name: String,
    /// Free text, on both the asset and the live output.
    pub description: Option<String>,
}

/// A locator publishing an asset through a streaming endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatorSpec {
    /// Streaming locator name.
    pub name: String,
    /// The asset it publishes.
    pub asset: String,
    /// The streaming (delivery) policy, for example `Predefined_ClearStreamingOnly`.
    pub streaming_policy: String,
    /// The content key policy of its keys, for a protected streaming policy.
    pub content_key_policy: Option<String>,
    /// The streaming endpoint whose host name the URLs use.
    pub endpoint: String,
}

/// How a streaming endpoint is created when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Streaming endpoint name: 1–24 letters, digits and inner hyphens.
    pub name: String,
    /// Scale units at creation.
    pub scale_units: i32,
    /// Free text.
    pub description: Option<String>,
}

/// Where viewers find a published program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Streaming locator name.
    pub locator: String,
    /// The locator's GUID, the first segment of every path.
    pub locator_id: String,
    /// HLS URL.
    pub hls: Option<String>,
    /// MPEG-DASH URL.
    pub dash: Option<String>,
    /// Smooth Streaming URL.
    pub smooth: Option<String>,
}

/// One turn of a convergence loop.
enum Step<T> {
    /// The goal holds.
    Done(T),
    /// A write (and its long-running operation) finished; read again at once.
    Wrote,
    /// A transient state; read again after the poll interval.
    Wait(String),
}

/// Writes one convergence loop may make before it is declared stuck.
const MAX_WRITES: u32 = 10;

// === impl Client: resource verbs ===

impl Client {
    /// `GET liveEvents/{name}`.
    pub async fn get_live_event(&self, name: &str) -> Result<Option<LiveEvent>, Error> {
        self.get(&self.path(&format!("liveEvents/{name}")), STREAMING_API_VERSION).await
    }

    /// `GET liveEvents`.
    pub async fn list_live_events(&self) -> Result<Vec<LiveEvent>, Error> {
        self.list(&self.path("liveEvents"), STREAMING_API_VERSION).await
    }

    /// `PUT liveEvents/{name}?autoStart=…`.
    pub async fn create_live_event(
        &self,
        name: &str,
        body: &LiveEvent,
        auto_start: bool,
    ) -> Result<(LiveEvent, Lro), Error> {
        let auto_start = if auto_start { "true" } else { "false" };
        self.put(&self.path(&format!("liveEvents/{name}")), STREAMING_API_VERSION, &[("autoStart", auto_start)], body)
            .await
    }

    /// `POST liveEvents/{name}/allocate|start|reset`.
    pub async fn live_event_action(&self, name: &str, action: LiveEventAction) -> Result<Lro, Error> {
        let path = self.path(&format!("liveEvents/{name}/{}", action.as_str()));
        self.action::<Value>(&path, STREAMING_API_VERSION, None).await
    }

    /// `POST liveEvents/{name}/stop` with `removeOutputsOnStop`.
    pub async fn stop_live_event(&self, name: &str, remove_outputs_on_stop: bool) -> Result<Lro, Error> {
        let body = LiveEventActionInput { remove_outputs_on_stop: Some(remove_outputs_on_stop) };
        self.action(&self.path(&format!("liveEvents/{name}/stop")), STREAMING_API_VERSION, Some(&body)).await
    }

    /// `DELETE liveEvents/{name}`.
    pub async fn delete_live_event(&self, name: &str) -> Result<Lro, Error> {
        self.delete(&self.path(&format!("liveEvents/{name}")), STREAMING_API_VERSION).await
    }

    /// `GET liveEventOperations/{id}`.
    pub async fn live_event_operation(&self, id: &str) -> Result<Option<AsyncOperationResult>, Error> {
        self.get(&self.path(&format!("liveEventOperations/{id}")), STREAMING_API_VERSION).await
    }

    /// `GET liveEvents/{channel}/liveOutputs/{name}`.
    pub async fn get_live_output(&self, channel: &str, name: &str) -> Result<Option<LiveOutput>, Error> {
        self.get(&self.path(&format!("liveEvents/{channel}/liveOutputs/{name}")), STREAMING_API_VERSION).await
    }

    /// `GET liveEvents/{channel}/liveOutputs`.
    pub async fn list_live_outputs(&self, channel: &str) -> Result<Vec<LiveOutput>, Error> {
        self.list(&self.path(&format!("liveEvents/{channel}/liveOutputs")), STREAMING_API_VERSION).await
    }

    /// `PUT liveEvents/{channel}/liveOutputs/{name}`.
    pub async fn create_live_output(
        &self,
        channel: &str,
        name: &str,
        body: &LiveOutput,
    ) -> Result<(LiveOutput, Lro), Error> {
        self.put(&self.path(&format!("liveEvents/{channel}/liveOutputs/{name}")), STREAMING_API_VERSION, &[], body)
            .await
    }

    /// `DELETE liveEvents/{channel}/liveOutputs/{name}`.
    pub async fn delete_live_output(&self, channel: &str, name: &str) -> Result<Lro, Error> {
        self.delete(&self.path(&format!("liveEvents/{channel}/liveOutputs/{name}")), STREAMING_API_VERSION).await
    }

    /// `GET assets/{name}`.
    pub async fn get_asset(&self, name: &str) -> Result<Option<Asset>, Error> {
        self.get(&self.path(&format!("assets/{name}")), METADATA_API_VERSION).await
    }

    /// `GET assets`.
    pub async fn list_assets(&self) -> Result<Vec<Asset>, Error> {
        self.list(&self.path("assets"), METADATA_API_VERSION).await
    }

    /// `PUT assets/{name}` (create or update, synchronous).
    pub async fn put_asset(&self, name: &str, body: &Asset) -> Result<Asset, Error> {
        let (asset, _) = self.put(&self.path(&format!("assets/{name}")), METADATA_API_VERSION, &[], body).await?;
        Ok(asset)
    }

    /// `DELETE assets/{name}`.
    pub async fn delete_asset(&self, name: &str) -> Result<(), Error> {
        self.delete(&self.path(&format!("assets/{name}")), METADATA_API_VERSION).await.map(drop)
    }

    /// `GET streamingLocators/{name}`.
    pub async fn get_streaming_locator(&self, name: &str) -> Result<Option<StreamingLocator>, Error> {
        self.get(&self.path(&format!("streamingLocators/{name}")), METADATA_API_VERSION).await
    }

    /// `GET streamingLocators`.
    pub async fn list_streaming_locators(&self) -> Result<Vec<StreamingLocator>, Error> {
        self.list(&self.path("streamingLocators"), METADATA_API_VERSION).await
    }

    /// `PUT streamingLocators/{name}` (create only: a second create is a conflict).
    pub async fn create_streaming_locator(
        &self,
        name: &str,
        body: &StreamingLocator,
    ) -> Result<StreamingLocator, Error> {
        let (locator, _) =
            self.put(&self.path(&format!("streamingLocators/{name}")), METADATA_API_VERSION, &[], body).await?;
        Ok(locator)
    }

    /// `DELETE streamingLocators/{name}`.
    pub async fn delete_streaming_locator(&self, name: &str) -> Result<(), Error> {
        self.delete(&self.path(&format!("streamingLocators/{name}")), METADATA_API_VERSION).await.map(drop)
    }

    /// `POST streamingLocators/{name}/listPaths`.
    pub async fn list_paths(&self, name: &str) -> Result<model::ListPathsResponse, Error> {
        self.call(&self.path(&format!("streamingLocators/{name}/listPaths")), METADATA_API_VERSION).await
    }

    /// `GET streamingPolicies`.
    pub async fn list_streaming_policies(&self) -> Result<Vec<StreamingPolicy>, Error> {
        self.list(&self.path("streamingPolicies"), METADATA_API_VERSION).await
    }

    /// `GET streamingPolicies/{name}`.
    pub async fn get_streaming_policy(&self, name: &str) -> Result<Option<StreamingPolicy>, Error> {
        self.get(&self.path(&format!("streamingPolicies/{name}")), METADATA_API_VERSION).await
    }

    /// `GET contentKeyPolicies/{name}`.
    pub async fn get_content_key_policy(&self, name: &str) -> Result<Option<ContentKeyPolicy>, Error> {
        self.get(&self.path(&format!("contentKeyPolicies/{name}")), METADATA_API_VERSION).await
    }

    /// `PUT contentKeyPolicies/{name}`.
    pub async fn put_content_key_policy(&self, name: &str, body: &ContentKeyPolicy) -> Result<ContentKeyPolicy, Error> {
        let (policy, _) =
            self.put(&self.path(&format!("contentKeyPolicies/{name}")), METADATA_API_VERSION, &[], body).await?;
        Ok(policy)
    }

    /// `POST contentKeyPolicies/{name}/getPolicyPropertiesWithSecrets`: the policy as it is,
    /// verification keys included; `None` when there is no such policy.
    pub async fn content_key_policy_with_secrets(
        &self,
        name: &str,
    ) -> Result<Option<ContentKeyPolicyProperties>, Error> {
        let path = self.path(&format!("contentKeyPolicies/{name}/getPolicyPropertiesWithSecrets"));
        match self.call(&path, METADATA_API_VERSION).await {
            Ok(properties) => Ok(Some(properties)),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `PUT streamingPolicies/{name}` (create only: streaming policies cannot be changed).
    pub async fn put_streaming_policy(&self, name: &str, body: &StreamingPolicy) -> Result<StreamingPolicy, Error> {
        let (policy, _) =
            self.put(&self.path(&format!("streamingPolicies/{name}")), METADATA_API_VERSION, &[], body).await?;
        Ok(policy)
    }

    /// `POST streamingLocators/{name}/listContentKeys`.
    pub async fn list_content_keys(&self, name: &str) -> Result<Vec<model::StreamingLocatorContentKey>, Error> {
        let path = self.path(&format!("streamingLocators/{name}/listContentKeys"));
        let answer: model::ListContentKeysResponse = self.call(&path, METADATA_API_VERSION).await?;
        Ok(answer.content_keys)
    }

    /// `GET streamingEndpoints/{name}`.
    pub async fn get_streaming_endpoint(&self, name: &str) -> Result<Option<StreamingEndpoint>, Error> {
        self.get(&self.path(&format!("streamingEndpoints/{name}")), STREAMING_API_VERSION).await
    }

    /// `GET streamingEndpoints`.
    pub async fn list_streaming_endpoints(&self) -> Result<Vec<StreamingEndpoint>, Error> {
        self.list(&self.path("streamingEndpoints"), STREAMING_API_VERSION).await
    }

    /// `PUT streamingEndpoints/{name}?autoStart=…`.
    pub async fn create_streaming_endpoint(
        &self,
        name: &str,
        body: &StreamingEndpoint,
        auto_start: bool,
    ) -> Result<(StreamingEndpoint, Lro), Error> {
        let auto_start = if auto_start { "true" } else { "false" };
        self.put(
            &self.path(&format!("streamingEndpoints/{name}")),
            STREAMING_API_VERSION,
            &[("autoStart", auto_start)],
            body,
        )
        .await
    }

    /// `POST streamingEndpoints/{name}/start|stop`.
    pub async fn streaming_endpoint_action(&self, name: &str, start: bool) -> Result<Lro, Error> {
        let action = if start { "start" } else { "stop" };
        self.action::<Value>(&self.path(&format!("streamingEndpoints/{name}/{action}")), STREAMING_API_VERSION, None)
            .await
    }

    /// `POST streamingEndpoints/{name}/scale` with `{"scaleUnit": units}`.
    pub async fn scale_streaming_endpoint(&self, name: &str, units: i32) -> Result<Lro, Error> {
        let body = ScaleUnit { scale_unit: Some(units) };
        self.action(&self.path(&format!("streamingEndpoints/{name}/scale")), STREAMING_API_VERSION, Some(&body)).await
    }

    /// `DELETE streamingEndpoints/{name}`.
    pub async fn delete_streaming_endpoint(&self, name: &str) -> Result<Lro, Error> {
        self.delete(&self.path(&format!("streamingEndpoints/{name}")), STREAMING_API_VERSION).await
    }
}

/// The live event actions without a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveEventAction {
    /// `allocate`: Stopped to StandBy.
    Allocate,
    /// `start`: Stopped or StandBy to Running.
    Start,
    /// `reset`: restart a running live event, deleting its live outputs.
    Reset,
}

impl LiveEventAction {
    fn as_str(self) -> &'static str {
        match self {
            LiveEventAction::Allocate => "allocate",
            LiveEventAction::Start => "start",
            LiveEventAction::Reset => "reset",
        }
    }
}

// === impl Client: ensure-operations ===

impl Client {
    /// The channel exists and is Running; it is created (with `autoStart`) from `spec` if absent.
    pub async fn ensure_channel_running(&self, spec: &ChannelSpec) -> Result<LiveEvent, Error> {
        let name = spec.name.as_str();
        let mut converging = Converging::new(self, format!("channel {name} running"));
        loop {
            let step: Result<Step<_>, Error> = async {
                let Some(live_event) = self.get_live_event(name).await? else {
                    let (_, lro) = self.create_live_event(name, &spec.to_resource(self.location()), true).await?;
                    self.wait(&lro).await?;
                    return Ok(Step::Wrote);
                };
                match state_of(&live_event) {
                    LiveEventState::Running => Ok(Step::Done(live_event)),
                    LiveEventState::Stopped | LiveEventState::StandBy => {
                        self.wait(&self.live_event_action(name, LiveEventAction::Start).await?).await?;
                        Ok(Step::Wrote)
                    }
                    other => Ok(Step::Wait(format!("channel {name} is {other}"))),
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The channel exists and is allocated (StandBy) or Running; created from `spec` if absent.
    pub async fn ensure_channel_allocated(&self, spec: &ChannelSpec) -> Result<LiveEvent, Error> {
        let name = spec.name.as_str();
        let mut converging = Converging::new(self, format!("channel {name} allocated"));
        loop {
            let step: Result<Step<_>, Error> = async {
                let Some(live_event) = self.get_live_event(name).await? else {
                    let (_, lro) = self.create_live_event(name, &spec.to_resource(self.location()), false).await?;
                    self.wait(&lro).await?;
                    return Ok(Step::Wrote);
                };
                match state_of(&live_event) {
                    LiveEventState::StandBy | LiveEventState::Running => Ok(Step::Done(live_event)),
                    LiveEventState::Stopped => {
                        self.wait(&self.live_event_action(name, LiveEventAction::Allocate).await?).await?;
                        Ok(Step::Wrote)
                    }
                    other => Ok(Step::Wait(format!("channel {name} is {other}"))),
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The channel is Stopped, or does not exist. With `remove_outputs`, its live outputs are
    /// deleted by the stop (their assets stay).
    pub async fn ensure_channel_stopped(&self, name: &str, remove_outputs: bool) -> Result<(), Error> {
        let mut converging = Converging::new(self, format!("channel {name} stopped"));
        loop {
            let step: Result<Step<_>, Error> = async {
                let Some(live_event) = self.get_live_event(name).await? else {
                    return Ok(Step::Done(()));
                };
                match state_of(&live_event) {
                    LiveEventState::Stopped => Ok(Step::Done(())),
                    LiveEventState::Running | LiveEventState::StandBy => {
                        self.wait(&self.stop_live_event(name, remove_outputs).await?).await?;
                        Ok(Step::Wrote)
                    }
                    other => Ok(Step::Wait(format!("channel {name} is {other}"))),
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The channel has been restarted since `requested_at`: reset if it is Running and has not
    /// changed since then, started if it is stopped.
    ///
    /// A reset is an action, not a state, so `requested_at` is what makes it idempotent: after a
    /// crash, a channel whose last change is newer than the request is not reset a second time.
    pub async fn ensure_channel_reset(&self, name: &str, requested_at: DateTime<Utc>) -> Result<LiveEvent, Error> {
        let mut reset_done = false;
        let mut converging = Converging::new(self, format!("channel {name} reset"));
        loop {
            let step: Result<Step<_>, Error> = async {
                let Some(live_event) = self.get_live_event(name).await? else {
                    return Err(Error::NotFound { what: format!("channel {name}") });
                };
                let changed_since = live_event
                    .properties
                    .last_modified
                    .as_deref()
                    .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                    .is_some_and(|modified| modified >= requested_at);
                match state_of(&live_event) {
                    LiveEventState::Running if reset_done || changed_since => Ok(Step::Done(live_event)),
                    LiveEventState::Running => {
                        self.wait(&self.live_event_action(name, LiveEventAction::Reset).await?).await?;
                        reset_done = true;
                        Ok(Step::Wrote)
                    }
                    LiveEventState::Stopped | LiveEventState::StandBy => {
                        self.wait(&self.live_event_action(name, LiveEventAction::Start).await?).await?;
                        reset_done = true;
                        Ok(Step::Wrote)
                    }
                    other => Ok(Step::Wait(format!("channel {name} is {other}"))),
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The program's asset exists and its live output is Running on the channel.
    pub async fn ensure_program_present(&self, spec: &ProgramSpec) -> Result<LiveOutput, Error> {
        let what = format!("program {} on channel {}", spec.name, spec.channel);
        let mut converging = Converging::new(self, &what);
        loop {
            let step: Result<Step<_>, Error> = async {
                if self.get_asset(&spec.asset).await?.is_none() {
                    let asset = Asset {
                        properties: AssetProperties { description: spec.description.clone(), ..Default::default() },
                        ..Default::default()
                    };
                    self.put_asset(&spec.asset, &asset).await?;
                }
                let Some(output) = self.get_live_output(&spec.channel, &spec.name).await? else {
                    let body = LiveOutput {
                        properties: LiveOutputProperties {
                            description: spec.description.clone(),
                            asset_name: Some(spec.asset.clone()),
                            archive_window_length: Some(spec.archive_window.clone()),
                            manifest_name: Some(spec.manifest_name.clone()),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    let (_, lro) = self.create_live_output(&spec.channel, &spec.name, &body).await?;
                    self.wait(&lro).await?;
                    return Ok(Step::Wrote);
                };
                if output.properties.asset_name.as_deref().is_some_and(|asset| !asset.eq_ignore_ascii_case(&spec.asset))
                {
                    return Err(Error::Unexpected {
                        what: what.clone(),
                        reason: format!(
                            "live output records into asset {:?}, not {:?}",
                            output.properties.asset_name, spec.asset
                        ),
                    });
                }
                match output.properties.resource_state.clone().unwrap_or(LiveOutputState::Running) {
                    LiveOutputState::Running => Ok(Step::Done(output)),
                    other => Ok(Step::Wait(format!("live output {} is {other}", spec.name))),
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The program's live output is gone (its asset stays, for on-demand viewing).
    pub async fn ensure_program_removed(&self, channel: &str, name: &str) -> Result<(), Error> {
        let mut converging = Converging::new(self, format!("program {name} removed from channel {channel}"));
        loop {
            let step: Result<Step<_>, Error> = async {
                if self.get_live_event(channel).await?.is_none() {
                    return Ok(Step::Done(()));
                }
                match self.get_live_output(channel, name).await? {
                    None => Ok(Step::Done(())),
                    Some(output) if output.properties.resource_state == Some(LiveOutputState::Deleting) => {
                        Ok(Step::Wait(format!("live output {name} is Deleting")))
                    }
                    Some(_) => {
                        self.wait(&self.delete_live_output(channel, name).await?).await?;
                        Ok(Step::Wrote)
                    }
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The locator exists for the asset, and its streaming URLs on the endpoint are returned.
    pub async fn ensure_locator_published(&self, spec: &LocatorSpec) -> Result<Published, Error> {
        let what = format!("locator {}", spec.name);
        let mut converging = Converging::new(self, &what);
        let locator = loop {
            let step: Result<Step<StreamingLocator>, Error> = async {
                match self.get_streaming_locator(&spec.name).await? {
                    Some(locator) => {
                        let asset = locator.properties.asset_name.as_deref().unwrap_or_default();
                        if !asset.eq_ignore_ascii_case(&spec.asset) {
                            return Err(Error::Unexpected {
                                what: what.clone(),
                                reason: format!("the locator publishes asset {asset:?}, not {:?}", spec.asset),
                            });
                        }
                        Ok(Step::Done(locator))
                    }
                    None => {
                        let body = StreamingLocator {
                            properties: StreamingLocatorProperties {
                                asset_name: Some(spec.asset.clone()),
                                streaming_policy_name: Some(spec.streaming_policy.clone()),
                                default_content_key_policy_name: spec.content_key_policy.clone(),
                                ..Default::default()
                            },
                            ..Default::default()
                        };
                        self.create_streaming_locator(&spec.name, &body).await?;
                        Ok(Step::Wrote)
                    }
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break done;
            }
        };
        let endpoint = self
            .get_streaming_endpoint(&spec.endpoint)
            .await?
            .ok_or_else(|| Error::NotFound { what: format!("streaming endpoint {}", spec.endpoint) })?;
        let host = endpoint.properties.host_name.unwrap_or_default();
        let paths = self.list_paths(&spec.name).await?;
        let url = |protocol: &str| {
            paths
                .streaming_paths
                .iter()
                .find(|path| path.streaming_protocol.eq_ignore_ascii_case(protocol))
                .and_then(|path| path.paths.first())
                .map(|path| format!("https://{host}{path}"))
        };
        Ok(Published {
            locator: spec.name.clone(),
            locator_id: locator.properties.streaming_locator_id.unwrap_or_default(),
            hls: url("Hls"),
            dash: url("Dash"),
            smooth: url("SmoothStreaming"),
        })
    }

    /// The content key policy exists and says what `desired` says: created when absent, updated
    /// when it differs (compared with its secrets, server-set fields aside).
    pub async fn ensure_content_key_policy(
        &self,
        name: &str,
        desired: &ContentKeyPolicyProperties,
    ) -> Result<(), Error> {
        let mut converging = Converging::new(self, format!("content key policy {name}"));
        loop {
            let step: Result<Step<()>, Error> = async {
                match self.content_key_policy_with_secrets(name).await? {
                    Some(existing) if existing.says_the_same_as(desired) => Ok(Step::Done(())),
                    _ => {
                        let body = ContentKeyPolicy { properties: desired.clone(), ..Default::default() };
                        self.put_content_key_policy(name, &body).await?;
                        Ok(Step::Wrote)
                    }
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The streaming policy exists with the encryption of `desired`. Streaming policies cannot be
    /// changed: one that exists with another encryption or other keys is an error to resolve by
    /// hand (delete it, or rename the content key policy).
    pub async fn ensure_streaming_policy(&self, name: &str, desired: &StreamingPolicyProperties) -> Result<(), Error> {
        let what = format!("streaming policy {name}");
        let mut converging = Converging::new(self, &what);
        loop {
            let step: Result<Step<()>, Error> = async {
                match self.get_streaming_policy(name).await? {
                    Some(existing) => {
                        let scheme = |properties: &StreamingPolicyProperties| {
                            (
                                properties.envelope_encryption.is_some(),
                                properties.common_encryption_cenc.is_some(),
                                properties.common_encryption_cbcs.is_some(),
                                properties.default_content_key_policy_name.clone(),
                            )
                        };
                        if scheme(&existing.properties) == scheme(desired) {
                            Ok(Step::Done(()))
                        } else {
                            Err(Error::Unexpected {
                                what: what.clone(),
                                reason: "it exists with another encryption or content key policy, and streaming \
                                         policies cannot be changed; delete it or rename the content key policy"
                                    .into(),
                            })
                        }
                    }
                    None => {
                        let body = StreamingPolicy { properties: desired.clone(), ..Default::default() };
                        self.put_streaming_policy(name, &body).await?;
                        Ok(Step::Wrote)
                    }
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The locator is gone.
    pub async fn ensure_locator_removed(&self, name: &str) -> Result<(), Error> {
        self.delete_streaming_locator(name).await
    }

    /// The streaming endpoint exists and is Running; created (with `autoStart`) if absent.
    pub async fn ensure_endpoint_running(&self, spec: &EndpointSpec) -> Result<StreamingEndpoint, Error> {
        let name = spec.name.as_str();
        let mut converging = Converging::new(self, format!("streaming endpoint {name} running"));
        loop {
            let step: Result<Step<_>, Error> = async {
                let Some(endpoint) = self.get_streaming_endpoint(name).await? else {
                    let body = StreamingEndpoint {
                        location: Some(self.location().to_string()),
                        properties: StreamingEndpointProperties {
                            description: spec.description.clone(),
                            scale_units: Some(spec.scale_units),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    let (_, lro) = self.create_streaming_endpoint(name, &body, true).await?;
                    self.wait(&lro).await?;
                    return Ok(Step::Wrote);
                };
                match endpoint_state_of(&endpoint) {
                    StreamingEndpointState::Running => Ok(Step::Done(endpoint)),
                    StreamingEndpointState::Stopped => {
                        self.wait(&self.streaming_endpoint_action(name, true).await?).await?;
                        Ok(Step::Wrote)
                    }
                    other => Ok(Step::Wait(format!("streaming endpoint {name} is {other}"))),
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The streaming endpoint is Stopped, or does not exist.
    pub async fn ensure_endpoint_stopped(&self, name: &str) -> Result<(), Error> {
        let mut converging = Converging::new(self, format!("streaming endpoint {name} stopped"));
        loop {
            let step: Result<Step<()>, Error> = async {
                let Some(endpoint) = self.get_streaming_endpoint(name).await? else {
                    return Ok(Step::Done(()));
                };
                match endpoint_state_of(&endpoint) {
                    StreamingEndpointState::Stopped => Ok(Step::Done(())),
                    StreamingEndpointState::Running => {
                        self.wait(&self.streaming_endpoint_action(name, false).await?).await?;
                        Ok(Step::Wrote)
                    }
                    other => Ok(Step::Wait(format!("streaming endpoint {name} is {other}"))),
                }
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }

    /// The streaming endpoint has `units` scale units (whether it runs or not).
    pub async fn ensure_endpoint_scaled(&self, name: &str, units: i32) -> Result<StreamingEndpoint, Error> {
        let mut converging = Converging::new(self, format!("streaming endpoint {name} at {units} units"));
        loop {
            let step: Result<Step<_>, Error> = async {
                let Some(endpoint) = self.get_streaming_endpoint(name).await? else {
                    return Err(Error::NotFound { what: format!("streaming endpoint {name}") });
                };
                let state = endpoint_state_of(&endpoint);
                let settled = matches!(state, StreamingEndpointState::Running | StreamingEndpointState::Stopped);
                if settled && endpoint.properties.scale_units == Some(units) {
                    return Ok(Step::Done(endpoint));
                }
                if settled {
                    self.wait(&self.scale_streaming_endpoint(name, units).await?).await?;
                    return Ok(Step::Wrote);
                }
                Ok(Step::Wait(format!("streaming endpoint {name} is {state}")))
            }
            .await;
            if let Some(done) = converging.next(step).await? {
                break Ok(done);
            }
        }
    }
}

/// The bookkeeping of one convergence loop: bounded by the operation timeout, the retry budget
/// for transient failures, and `MAX_WRITES`.
struct Converging {
    what: String,
    started: Instant,
    limit: Duration,
    poll_interval: Duration,
    policy: super::RetryPolicy,
    failures: u32,
    writes: u32,
    last_seen: String,
}

impl Converging {
    fn new(client: &Client, what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            started: Instant::now(),
            limit: client.operation_timeout(),
            poll_interval: client.poll_interval(),
            policy: client.retry_policy(),
            failures: 0,
            writes: 0,
            last_seen: String::from("the first read"),
        }
    }

    /// Takes the outcome of one turn: the value when done, `None` to go round again (after the
    /// pause the turn calls for), or the error that ends the loop.
    async fn next<T>(&mut self, step: Result<Step<T>, Error>) -> Result<Option<T>, Error> {
        let pause = match step {
            Ok(Step::Done(value)) => return Ok(Some(value)),
            Ok(Step::Wrote) => {
                self.writes += 1;
                if self.writes > MAX_WRITES {
                    return Err(Error::Unexpected {
                        what: self.what.clone(),
                        reason: format!("not reached after {MAX_WRITES} writes ({})", self.last_seen),
                    });
                }
                Duration::ZERO
            }
            Ok(Step::Wait(state)) => {
                self.last_seen = state;
                self.poll_interval
            }
            Err(error) if error.is_transient() && self.failures + 1 < self.policy.max_attempts => {
                self.failures += 1;
                tracing::info!(operation = %self.what, %error, "Reading again before retrying.");
                self.last_seen = error.to_string();
                self.policy.backoff(self.failures)
            }
            Err(error) => return Err(error),
        };
        if self.started.elapsed() + pause > self.limit {
            return Err(Error::Timeout {
                operation: self.what.clone(),
                after: self.limit,
                waiting_for: self.last_seen.clone(),
            });
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Ok(None)
    }
}

fn state_of(live_event: &LiveEvent) -> LiveEventState {
    live_event.properties.resource_state.clone().unwrap_or(LiveEventState::Other("unknown".into()))
}

fn endpoint_state_of(endpoint: &StreamingEndpoint) -> StreamingEndpointState {
    endpoint.properties.resource_state.clone().unwrap_or(StreamingEndpointState::Other("unknown".into()))
}
