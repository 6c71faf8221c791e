//! The emulator's world: accounts, their resources, transient states and long-running operations.
//!
//! Time is lazy: a write that starts a long-running operation records a `Pending` (the transient
//! states it passes through, each lasting the configured transition time, and the outcome), and
//! every request first `settle`s the account, applying whatever is due by now. No background task
//! moves state, so a test with a zero transition time sees each operation done by the next request,
//! and a snapshot is a plain fast-forward.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::media::model::{
    Asset, ContentKeyPolicy, EnabledProtocols, EncryptionScheme, ErrorDetail, LiveEvent, LiveEventState, LiveOutput,
    NoEncryption, Resource, StreamingEndpoint, StreamingEndpointProperties, StreamingEndpointState, StreamingLocator,
    StreamingPolicy, StreamingPolicyProperties, SystemData,
};

use super::encoders::Encoders;
use super::events::Outbox;
use super::faults::FaultState;
use super::{Quotas, Settings};

/// Operation records are kept this long after they finish, then answer `OperationNotFound`.
const OPERATION_RETENTION: Duration = Duration::from_secs(3600);

/// The names of the six predefined streaming policies.
pub(crate) const PREDEFINED_POLICIES: [&str; 6] = [
    "Predefined_DownloadOnly",
    "Predefined_ClearStreamingOnly",
    "Predefined_DownloadAndClearStreaming",
    "Predefined_ClearKey",
    "Predefined_MultiDrmCencStreaming",
    "Predefined_MultiDrmStreaming",
];

/// Everything the emulator knows. Guarded by one mutex, never held across an `await`.
#[derive(Debug)]
pub(crate) struct World {
    pub accounts: BTreeMap<String, Account>,
    pub operations: HashMap<String, Operation>,
    pub faults: FaultState,
    /// Simulated encoders (not ARM state: never in snapshots).
    pub encoders: Encoders,
    /// Events waiting for delivery, and the delivery log.
    pub outbox: Outbox,
}

/// Account identity as first seen in a path, with the key it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccountId {
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
}

impl AccountId {
    /// Paths are case-insensitive, so the storage key is lowercase.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.subscription, self.resource_group, self.name).to_lowercase()
    }

    /// `/subscriptions/…/mediaservices/{name}`, the prefix of every resource id.
    pub fn base(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Media/mediaservices/{}",
            self.subscription, self.resource_group, self.name
        )
    }
}

/// One Media Services account; it comes into being on first use.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Account {
    pub id: AccountId,
    pub live_events: BTreeMap<String, LiveEventEntry>,
    pub streaming_endpoints: BTreeMap<String, Entry<StreamingEndpoint, StreamingEndpointState>>,
    pub assets: BTreeMap<String, AssetEntry>,
    pub streaming_locators: BTreeMap<String, StreamingLocator>,
    pub streaming_policies: BTreeMap<String, StreamingPolicy>,
    pub content_key_policies: BTreeMap<String, ContentKeyPolicy>,
}

/// A resource with long-running operations and what is in flight on it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "R: Serialize", deserialize = "R: Deserialize<'de>"))]
pub(crate) struct Entry<R, S> {
    pub resource: R,
    /// In flight; not saved in snapshots (they are fast-forwarded first).
    #[serde(skip)]
    pub pending: Option<Pending<S>>,
}

/// A live event, its live outputs, and what is in flight on it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LiveEventEntry {
    pub resource: LiveEvent,
    #[serde(skip)]
    pub pending: Option<Pending<LiveEventState>>,
    pub outputs: BTreeMap<String, Entry<LiveOutput, crate::media::model::LiveOutputState>>,
}

/// An asset and the manifest name its live output gave it (used to build streaming paths).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssetEntry {
    pub resource: Asset,
    pub manifest_name: Option<String>,
}

/// A long-running change in flight on one resource.
#[derive(Debug, Clone)]
pub(crate) struct Pending<S> {
    pub operation: String,
    /// The transient states passed through, in order; each lasts `step`.
    pub phases: Vec<S>,
    pub started: Instant,
    pub step: Duration,
    /// What happens at the end when the operation succeeds.
    pub success: Outcome<S>,
    /// The failure to report instead, and what happens then.
    pub failure: Option<(ErrorDetail, Outcome<S>)>,
}

/// The end of a long-running change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome<S> {
    /// The state reached; `None` removes the resource.
    pub state: Option<S>,
    /// Side effects the owner applies.
    pub effect: Effect,
}

/// Side effects of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    /// The live event's outputs are deleted (stop with `removeOutputsOnStop`, reset).
    ClearOutputs,
    /// The streaming endpoint now has this many scale units.
    ScaleUnits(i32),
}

impl<S: Clone> Outcome<S> {
    pub fn to(state: S) -> Self {
        Self { state: Some(state), effect: Effect::None }
    }

    pub fn removed() -> Self {
        Self { state: None, effect: Effect::None }
    }

    pub fn with(mut self, effect: Effect) -> Self {
        self.effect = effect;
        self
    }
}

impl<S: Clone> Pending<S> {
    /// When the outcome applies.
    pub fn deadline(&self) -> Instant {
        self.started + self.step * u32::try_from(self.phases.len()).unwrap_or(u32::MAX)
    }

    /// The transient state at `now`, or `None` once the deadline has passed.
    pub fn phase_at(&self, now: Instant) -> Option<S> {
        if now >= self.deadline() {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.started);
        let index = if self.step.is_zero() { 0 } else { (elapsed.as_nanos() / self.step.as_nanos()) as usize };
        self.phases.get(index.min(self.phases.len().saturating_sub(1))).cloned()
    }

    /// The outcome that applies at the deadline.
    pub fn outcome(&self) -> &Outcome<S> {
        match &self.failure {
            Some((_, outcome)) => outcome,
            None => &self.success,
        }
    }
}

/// A long-running operation record, answered at `…Operations/{id}` and `…/operationLocations/{id}`.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub kind: OperationKind,
    pub account: String,
    /// The live event or streaming endpoint, and the live output for live output operations.
    pub target: (String, Option<String>),
    pub deadline: Instant,
    pub failure: Option<ErrorDetail>,
}

/// The three operation collections of the streaming API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperationKind {
    LiveEvent,
    LiveOutput,
    StreamingEndpoint,
}

/// Everything a request handler needs besides the account it works on.
#[derive(Debug)]
pub(crate) struct Env<'a> {
    pub now: Instant,
    /// The current wall-clock time, ARM-formatted.
    pub wall: String,
    pub settings: &'a Settings,
    /// `scheme://host[:port]` the request came to, for the URLs in LRO headers.
    pub origin: String,
    pub operations: &'a mut HashMap<String, Operation>,
    pub faults: &'a mut FaultState,
    /// Live events this request stopped, reset or deleted, for their encoders to follow.
    pub changes: Vec<LiveEventChange>,
}

/// A change of a live event that its encoder follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LiveEventChange {
    /// A stop was accepted: the encoder is disconnected and heartbeats end.
    Stopped(String),
    /// A reset was accepted: the encoder is disconnected.
    Reset(String),
    /// A delete was accepted: the encoder is forgotten.
    Deleted(String),
}

impl Env<'_> {
    /// Registers a long-running operation and builds the pending change for it; the fault
    /// settings decide here whether it will fail.
    pub fn start<S: Clone>(
        &mut self,
        kind: OperationKind,
        account: &str,
        target: (String, Option<String>),
        phases: Vec<S>,
        success: Outcome<S>,
        on_failure: Outcome<S>,
    ) -> Pending<S> {
        let operation = uuid::Uuid::new_v4().to_string();
        let failure = self.faults.lro_failure().map(|detail| (detail, on_failure));
        let pending =
            Pending { operation: operation.clone(), phases, started: self.now, step: self.step(), success, failure };
        self.operations.retain(|_, record| record.deadline + OPERATION_RETENTION > self.now);
        self.operations.insert(
            operation,
            Operation {
                kind,
                account: account.to_string(),
                target,
                deadline: pending.deadline(),
                failure: pending.failure.as_ref().map(|(detail, _)| detail.clone()),
            },
        );
        pending
    }

    pub fn step(&self) -> Duration {
        self.settings.transition
    }

    pub fn quotas(&self) -> &Quotas {
        &self.settings.quotas
    }

    /// `systemData` for a resource created or changed now by the emulator's client.
    pub fn system_data(&self, created_at: Option<&str>) -> SystemData {
        let by = Some(self.settings.client_id.clone());
        SystemData {
            created_by: by.clone(),
            created_by_type: Some("Application".into()),
            created_at: Some(created_at.unwrap_or(&self.wall).to_string()),
            last_modified_by: by,
            last_modified_by_type: Some("Application".into()),
            last_modified_at: Some(self.wall.clone()),
        }
    }
}

// === impl World ===

impl World {
    pub fn new(faults: FaultState, outbox: Outbox) -> Self {
        Self { accounts: BTreeMap::new(), operations: HashMap::new(), faults, encoders: Encoders::default(), outbox }
    }

    /// Applies every due outcome everywhere, then finishes what is still in flight as if its time
    /// had come: the state a snapshot saves.
    pub fn fast_forward(&mut self, now: Instant) {
        let far = now + Duration::from_secs(10 * 365 * 24 * 3600);
        for account in self.accounts.values_mut() {
            account.settle(far, "");
        }
    }
}

// === impl Account ===

/// The account in `accounts`, created with its `default` streaming endpoint and the predefined
/// streaming policies on first use.
pub(crate) fn account<'a>(
    accounts: &'a mut BTreeMap<String, Account>,
    id: &AccountId,
    wall: &str,
    client_id: &str,
) -> &'a mut Account {
    accounts.entry(id.key()).or_insert_with(|| Account::new(id.clone(), wall, client_id))
}

impl Account {
    fn new(id: AccountId, wall: &str, client_id: &str) -> Self {
        let base = id.base();
        let system_data = SystemData {
            created_by: Some(client_id.to_string()),
            created_by_type: Some("Application".into()),
            created_at: Some(wall.to_string()),
            last_modified_by: Some(client_id.to_string()),
            last_modified_by_type: Some("Application".into()),
            last_modified_at: Some(wall.to_string()),
        };
        let default_endpoint = StreamingEndpoint {
            name: Some("default".into()),
            id: Some(format!("{base}/streamingendpoints/default")),
            kind: Some("Microsoft.Media/mediaservices/streamingEndpoints".into()),
            location: Some("westeurope".into()),
            tags: Some(BTreeMap::new()),
            properties: StreamingEndpointProperties {
                description: Some("Default streaming endpoint".into()),
                scale_units: Some(0),
                custom_host_names: Some(vec![]),
                host_name: Some(endpoint_host("default", &id.name)),
                cdn_enabled: Some(false),
                cdn_profile: Some(String::new()),
                provisioning_state: Some("Succeeded".into()),
                resource_state: Some(StreamingEndpointState::Stopped),
                free_trial_end_time: Some("0001-01-01T00:00:00Z".into()),
                created: Some(wall.to_string()),
                last_modified: Some(wall.to_string()),
                ..Default::default()
            },
            sku: None,
            system_data: Some(system_data.clone()),
        };
        let streaming_policies = PREDEFINED_POLICIES
            .iter()
            .map(|name| {
                let policy = Resource {
                    name: Some(name.to_string()),
                    id: Some(format!("{base}/streamingPolicies/{name}")),
                    kind: Some("Microsoft.Media/mediaservices/streamingPolicies".into()),
                    properties: predefined_policy(name, wall),
                    system_data: Some(system_data.clone()),
                    ..Default::default()
                };
                (name.to_lowercase(), policy)
            })
            .collect();
        Self {
            id,
            live_events: BTreeMap::new(),
            streaming_endpoints: BTreeMap::from([(
                "default".to_string(),
                Entry { resource: default_endpoint, pending: None },
            )]),
            assets: BTreeMap::new(),
            streaming_locators: BTreeMap::new(),
            streaming_policies,
            content_key_policies: BTreeMap::new(),
        }
    }

    /// Moves every change in flight forward to `now`; `wall` stamps `lastModified` of what
    /// finished (empty keeps it).
    pub fn settle(&mut self, now: Instant, wall: &str) {
        let account = self.id.name.clone();
        self.live_events.retain(|_, entry| {
            let resource = &mut entry.resource;
            let outputs = &mut entry.outputs;
            let exists = settle(&mut entry.pending, now, |step| {
                if let Step::Done(_, Effect::ClearOutputs) = step {
                    outputs.clear();
                }
                let properties = &mut resource.properties;
                let exists = step.apply(
                    &mut properties.resource_state,
                    &mut properties.provisioning_state,
                    &mut properties.last_modified,
                    wall,
                );
                let running =
                    matches!(properties.resource_state, Some(LiveEventState::Running | LiveEventState::StandBy));
                let name = resource.name.clone().unwrap_or_default();
                super::live::set_endpoints(resource, &name, &account, running);
                exists
            });
            for output in entry.outputs.values_mut() {
                let properties = &mut output.resource.properties;
                settle(&mut output.pending, now, |step| {
                    step.apply(
                        &mut properties.resource_state,
                        &mut properties.provisioning_state,
                        &mut properties.last_modified,
                        wall,
                    )
                });
            }
            entry.outputs.retain(|_, output| output.resource.properties.resource_state.is_some());
            exists
        });
        self.streaming_endpoints.retain(|_, entry| {
            let properties = &mut entry.resource.properties;
            settle(&mut entry.pending, now, |step| {
                if let Step::Done(Some(_), Effect::ScaleUnits(units)) = step {
                    properties.scale_units = Some(units);
                }
                step.apply(
                    &mut properties.resource_state,
                    &mut properties.provisioning_state,
                    &mut properties.last_modified,
                    wall,
                )
            })
        });
    }
}

/// Where a change in flight stands at some instant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step<S> {
    /// Still in this transient state.
    Phase(S),
    /// Finished: the final state (`None` when removed) and the side effect.
    Done(Option<S>, Effect),
}

impl<S> Step<S> {
    /// Writes this step into a resource's common fields; false when the resource is removed.
    pub fn apply(
        self,
        resource_state: &mut Option<S>,
        provisioning_state: &mut Option<String>,
        last_modified: &mut Option<String>,
        wall: &str,
    ) -> bool {
        match self {
            Step::Phase(phase) => {
                *resource_state = Some(phase);
                *provisioning_state = Some("InProgress".into());
                true
            }
            Step::Done(None, _) => {
                *resource_state = None;
                false
            }
            Step::Done(Some(state), _) => {
                *resource_state = Some(state);
                *provisioning_state = Some("Succeeded".into());
                if !wall.is_empty() {
                    *last_modified = Some(wall.to_string());
                }
                true
            }
        }
    }
}

/// Moves `pending` forward to `now`, handing the step to `apply`, which returns whether the
/// resource still exists. Returns that answer (true when nothing is in flight).
pub(crate) fn settle<S: Clone>(
    pending: &mut Option<Pending<S>>,
    now: Instant,
    apply: impl FnOnce(Step<S>) -> bool,
) -> bool {
    let Some(change) = pending.as_ref() else {
        return true;
    };
    match change.phase_at(now) {
        Some(phase) => apply(Step::Phase(phase)),
        None => {
            let outcome = change.outcome().clone();
            *pending = None;
            apply(Step::Done(outcome.state, outcome.effect))
        }
    }
}

/// `{endpoint}-{account}.streaming.mediaservices.windows.net`, the form of the spec's examples.
pub(crate) fn endpoint_host(endpoint: &str, account: &str) -> String {
    format!("{endpoint}-{account}.streaming.mediaservices.windows.net").to_lowercase()
}

fn predefined_policy(name: &str, wall: &str) -> StreamingPolicyProperties {
    let protocols =
        |download, dash, hls, smooth_streaming| Some(EnabledProtocols { download, dash, hls, smooth_streaming });
    let scheme = |enabled: Option<EnabledProtocols>, label: &str| {
        let mut extra = serde_json::Map::new();
        extra.insert("clearTracks".into(), serde_json::json!([]));
        extra.insert(
            "contentKeys".into(),
            serde_json::json!({"defaultKey": {"label": label}, "keyToTrackMappings": []}),
        );
        Some(EncryptionScheme { enabled_protocols: enabled, extra })
    };
    let mut properties = StreamingPolicyProperties { created: Some(wall.to_string()), ..Default::default() };
    match name {
        "Predefined_DownloadOnly" => {
            properties.no_encryption = Some(NoEncryption { enabled_protocols: protocols(true, false, false, false) })
        }
        "Predefined_ClearStreamingOnly" => {
            properties.no_encryption = Some(NoEncryption { enabled_protocols: protocols(false, true, true, true) })
        }
        "Predefined_DownloadAndClearStreaming" => {
            properties.no_encryption = Some(NoEncryption { enabled_protocols: protocols(true, true, true, true) })
        }
        "Predefined_ClearKey" => {
            properties.envelope_encryption = scheme(protocols(false, true, true, true), "aesDefaultKey")
        }
        "Predefined_MultiDrmCencStreaming" => {
            properties.common_encryption_cenc = scheme(protocols(false, true, false, true), "cencDefaultKey")
        }
        _ => {
            properties.common_encryption_cenc = scheme(protocols(false, true, false, true), "cencDefaultKey");
            properties.common_encryption_cbcs = scheme(protocols(false, false, true, false), "cbcsDefaultKey");
        }
    }
    properties
}
