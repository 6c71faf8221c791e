//! The REST shapes of the Media Services v3 API (live-streaming subset), shared by the client and
//! the emulator.
//!
//! Field names follow the published specs (`streamingservice.json` 2022-11-01, the Metadata
//! 2023-01-01 files). Every optional field serializes as `null` when unset, as the service does in
//! its responses; the client strips nulls before sending a request (`without_nulls`), so what it
//! sends has exactly the keys it set. Properties the specs define but onair does not use are kept in
//! `extra` maps, so a round trip through these types loses nothing.
//! Enumerations are extensible strings in the specs (`modelAsString`), so every enum here has an
//! `Other` case instead of failing on a value it does not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The API version of live events, live outputs and streaming endpoints.
pub const STREAMING_API_VERSION: &str = "2022-11-01";
/// The API version of assets, streaming locators, streaming policies and content key policies.
pub const METADATA_API_VERSION: &str = "2023-01-01";

/// Declares an extensible string enumeration: known values plus `Other(String)`.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $(#[doc = $text] $variant,)+
            /// A value this version of onair does not know.
            Other(String),
        }

        impl $name {
            /// The wire form.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_string()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Ok(Self::from(text.as_str()))
            }
        }
    };
}

string_enum! {
    /// `LiveEvent.properties.resourceState`. `Creating` is not in the spec's enum but its examples use it.
    LiveEventState {
        Creating = "Creating",
        Stopped = "Stopped",
        Allocating = "Allocating",
        StandBy = "StandBy",
        Starting = "Starting",
        Running = "Running",
        Stopping = "Stopping",
        Deleting = "Deleting",
    }
}

string_enum! {
    /// `LiveOutput.properties.resourceState`.
    LiveOutputState {
        Creating = "Creating",
        Running = "Running",
        Deleting = "Deleting",
    }
}

string_enum! {
    /// `StreamingEndpoint.properties.resourceState`. `Creating` appears in the spec's examples only.
    StreamingEndpointState {
        Creating = "Creating",
        Stopped = "Stopped",
        Starting = "Starting",
        Running = "Running",
        Stopping = "Stopping",
        Deleting = "Deleting",
        Scaling = "Scaling",
    }
}

string_enum! {
    /// `AsyncOperationResult.status`.
    OperationStatus {
        InProgress = "InProgress",
        Succeeded = "Succeeded",
        Failed = "Failed",
        Canceled = "Canceled",
    }
}

/// The ARM envelope shared by every resource: `Resource<LiveEventProperties>` is a live event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<P> {
    /// The resource name (read-only; the name is in the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The full ARM id (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The ARM type, for example `Microsoft.Media/mediaservices/liveevents` (read-only).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Azure region (tracked resources only: live events and streaming endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Resource tags (tracked resources only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// The resource's properties.
    #[serde(default)]
    pub properties: P,
    /// SKU (streaming endpoints only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Value>,
    /// Who created and last changed the resource, and when (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_data: Option<SystemData>,
}

/// A live event: the onair "channel".
pub type LiveEvent = Resource<LiveEventProperties>;
/// A live output: with its asset, the onair "program".
pub type LiveOutput = Resource<LiveOutputProperties>;
/// A streaming endpoint.
pub type StreamingEndpoint = Resource<StreamingEndpointProperties>;
/// An asset.
pub type Asset = Resource<AssetProperties>;
/// A streaming locator: the onair "locator".
pub type StreamingLocator = Resource<StreamingLocatorProperties>;
/// A streaming policy (the delivery policy).
pub type StreamingPolicy = Resource<StreamingPolicyProperties>;
/// A content key policy.
pub type ContentKeyPolicy = Resource<ContentKeyPolicyProperties>;

/// ARM `systemData`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemData {
    pub created_by: Option<String>,
    pub created_by_type: Option<String>,
    pub created_at: Option<String>,
    pub last_modified_by: Option<String>,
    pub last_modified_by_type: Option<String>,
    pub last_modified_at: Option<String>,
}

// === Live events ===

/// `LiveEventProperties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEventProperties {
    pub description: Option<String>,
    pub input: Option<LiveEventInput>,
    pub preview: Option<LiveEventPreview>,
    pub encoding: Option<LiveEventEncoding>,
    pub transcriptions: Option<Vec<Value>>,
    pub provisioning_state: Option<String>,
    pub resource_state: Option<LiveEventState>,
    pub cross_site_access_policies: Option<CrossSiteAccessPolicies>,
    pub use_static_hostname: Option<bool>,
    pub hostname_prefix: Option<String>,
    pub stream_options: Option<Vec<String>>,
    pub created: Option<String>,
    pub last_modified: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `LiveEventInput`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEventInput {
    /// `FragmentedMP4` or `RTMP`; set at creation only.
    pub streaming_protocol: Option<String>,
    pub access_control: Option<AccessControl>,
    pub key_frame_interval_duration: Option<String>,
    pub access_token: Option<String>,
    pub endpoints: Option<Vec<LiveEventEndpoint>>,
    pub timed_metadata_endpoints: Option<Vec<Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `LiveEventPreview`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEventPreview {
    pub endpoints: Option<Vec<LiveEventEndpoint>>,
    pub access_control: Option<AccessControl>,
    pub preview_locator: Option<String>,
    pub streaming_policy_name: Option<String>,
    pub alternative_media_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `LiveEventEndpoint`: an ingest or preview URL.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEventEndpoint {
    pub protocol: Option<String>,
    pub url: Option<String>,
}

/// `LiveEventInputAccessControl` / `LiveEventPreviewAccessControl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessControl {
    pub ip: Option<IpAccessControl>,
}

/// `IPAccessControl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAccessControl {
    pub allow: Option<Vec<IpRange>>,
}

/// `IPRange`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    pub name: Option<String>,
    pub address: Option<String>,
    pub subnet_prefix_length: Option<i32>,
}

impl IpRange {
    /// The "allow everyone" rule of the examples (`0.0.0.0/0`).
    pub fn allow_all() -> Self {
        Self { name: Some("AllowAll".into()), address: Some("0.0.0.0".into()), subnet_prefix_length: Some(0) }
    }
}

/// `LiveEventEncoding`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEventEncoding {
    /// `None` (pass-through), `PassthroughBasic`, `PassthroughStandard`, `Standard`, `Premium1080p`.
    pub encoding_type: Option<String>,
    pub preset_name: Option<String>,
    pub stretch_mode: Option<String>,
    pub key_frame_interval: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `CrossSiteAccessPolicies`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrossSiteAccessPolicies {
    pub client_access_policy: Option<String>,
    pub cross_domain_policy: Option<String>,
}

/// `LiveEventActionInput`, the body of `stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEventActionInput {
    pub remove_outputs_on_stop: Option<bool>,
}

// === Live outputs ===

/// `LiveOutputProperties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveOutputProperties {
    pub description: Option<String>,
    pub asset_name: Option<String>,
    /// ISO 8601 duration, `PT1M` to `PT25H`.
    pub archive_window_length: Option<String>,
    pub rewind_window_length: Option<String>,
    pub manifest_name: Option<String>,
    pub hls: Option<Hls>,
    pub output_snap_time: Option<i64>,
    pub created: Option<String>,
    pub last_modified: Option<String>,
    pub provisioning_state: Option<String>,
    pub resource_state: Option<LiveOutputState>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `Hls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hls {
    pub fragments_per_ts_segment: Option<i32>,
}

// === Streaming endpoints ===

/// `StreamingEndpointProperties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingEndpointProperties {
    pub description: Option<String>,
    pub scale_units: Option<i32>,
    pub availability_set_name: Option<String>,
    pub access_control: Option<StreamingEndpointAccessControl>,
    pub max_cache_age: Option<i64>,
    pub custom_host_names: Option<Vec<String>>,
    pub host_name: Option<String>,
    pub cdn_enabled: Option<bool>,
    pub cdn_provider: Option<String>,
    pub cdn_profile: Option<String>,
    pub provisioning_state: Option<String>,
    pub resource_state: Option<StreamingEndpointState>,
    pub cross_site_access_policies: Option<CrossSiteAccessPolicies>,
    pub free_trial_end_time: Option<String>,
    pub created: Option<String>,
    pub last_modified: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `StreamingEndpointAccessControl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingEndpointAccessControl {
    pub akamai: Option<AkamaiAccessControl>,
    pub ip: Option<IpAccessControl>,
}

/// `AkamaiAccessControl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AkamaiAccessControl {
    pub akamai_signature_header_authentication_key_list: Option<Vec<AkamaiSignatureHeaderAuthenticationKey>>,
}

/// `AkamaiSignatureHeaderAuthenticationKey`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AkamaiSignatureHeaderAuthenticationKey {
    pub identifier: Option<String>,
    pub base64_key: Option<String>,
    pub expiration: Option<String>,
}

/// `StreamingEntityScaleUnit`, the body of `scale`: note the singular `scaleUnit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleUnit {
    pub scale_unit: Option<i32>,
}

// === Assets ===

/// `AssetProperties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetProperties {
    pub asset_id: Option<String>,
    pub created: Option<String>,
    pub last_modified: Option<String>,
    pub alternate_id: Option<String>,
    pub description: Option<String>,
    pub container: Option<String>,
    pub storage_account_name: Option<String>,
    pub storage_encryption_format: Option<String>,
    pub encryption_scope: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// === Streaming locators and policies ===

/// `StreamingLocatorProperties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingLocatorProperties {
    pub asset_name: Option<String>,
    pub created: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    /// The GUID that starts every streaming path; generated when not given.
    pub streaming_locator_id: Option<String>,
    pub streaming_policy_name: Option<String>,
    pub default_content_key_policy_name: Option<String>,
    pub content_keys: Option<Vec<StreamingLocatorContentKey>>,
    pub alternative_media_id: Option<String>,
    pub filters: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `StreamingLocatorContentKey`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingLocatorContentKey {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub label_reference_in_streaming_policy: Option<String>,
    pub value: Option<String>,
    pub policy_name: Option<String>,
    pub tracks: Option<Vec<Value>>,
}

/// The answer of `listContentKeys`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListContentKeysResponse {
    pub content_keys: Vec<StreamingLocatorContentKey>,
}

/// The answer of `listPaths`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPathsResponse {
    pub streaming_paths: Vec<StreamingPath>,
    pub download_paths: Vec<String>,
}

/// One protocol's paths in `listPaths`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingPath {
    /// `Hls`, `Dash`, `SmoothStreaming` or `Download`.
    pub streaming_protocol: String,
    /// `NoEncryption`, `EnvelopeEncryption`, `CommonEncryptionCenc` or `CommonEncryptionCbcs`.
    pub encryption_scheme: String,
    pub paths: Vec<String>,
}

/// `StreamingPolicyProperties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingPolicyProperties {
    pub created: Option<String>,
    pub default_content_key_policy_name: Option<String>,
    pub envelope_encryption: Option<EncryptionScheme>,
    pub common_encryption_cenc: Option<EncryptionScheme>,
    pub common_encryption_cbcs: Option<EncryptionScheme>,
    pub no_encryption: Option<NoEncryption>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The common part of `EnvelopeEncryption`, `CommonEncryptionCenc` and `CommonEncryptionCbcs`;
/// the scheme-specific fields (content keys, DRM, templates) are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionScheme {
    pub enabled_protocols: Option<EnabledProtocols>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `NoEncryption`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NoEncryption {
    pub enabled_protocols: Option<EnabledProtocols>,
}

/// `EnabledProtocols`: all four are required by the spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnabledProtocols {
    pub download: bool,
    pub dash: bool,
    pub hls: bool,
    pub smooth_streaming: bool,
}

// === Content key policies ===

/// `ContentKeyPolicyProperties`; option configurations and restrictions are polymorphic
/// (`@odata.type`) and kept as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentKeyPolicyProperties {
    pub policy_id: Option<String>,
    pub created: Option<String>,
    pub last_modified: Option<String>,
    pub description: Option<String>,
    pub options: Option<Vec<ContentKeyPolicyOption>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ContentKeyPolicyProperties {
    /// Whether an existing content key policy (read with its secrets) says what `desired` says:
    /// the same options by name, configuration and restriction; server-set fields aside.
    pub fn says_the_same_as(&self, desired: &ContentKeyPolicyProperties) -> bool {
        let options = |properties: &ContentKeyPolicyProperties| -> Vec<(Option<String>, Value, Value)> {
            let mut options: Vec<_> = properties
                .options
                .iter()
                .flatten()
                .map(|option| {
                    (
                        option.name.clone(),
                        normalized(option.configuration.clone().unwrap_or(Value::Null)),
                        normalized(option.restriction.clone().unwrap_or(Value::Null)),
                    )
                })
                .collect();
            options.sort_by(|a, b| a.0.cmp(&b.0));
            options
        };
        options(self) == options(desired)
    }
}

/// Nulls and empty arrays removed, recursively, so that a service's defaults do not count as a
/// difference.
fn normalized(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, value)| !value.is_null() && value.as_array().is_none_or(|array| !array.is_empty()))
                .map(|(key, value)| (key, normalized(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalized).collect()),
        other => other,
    }
}

/// `ContentKeyPolicyOption`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentKeyPolicyOption {
    pub policy_option_id: Option<String>,
    pub name: Option<String>,
    pub configuration: Option<Value>,
    pub restriction: Option<Value>,
}

// === Lists, operations, errors ===

/// A page of a list; `next_link` leads to the next page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

/// `AsyncOperationResult`, the resource behind `Azure-AsyncOperation`.
///
/// The service keeps an `error` with code `None` while in progress, so `error` alone does not
/// mean failure: only `status` does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncOperationResult {
    pub error: Option<ErrorDetail>,
    pub name: Option<String>,
    pub status: Option<OperationStatus>,
}

/// The ARM error body, `{"error": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: Option<ErrorDetail>,
}

/// ARM `ErrorDetail`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    pub code: Option<String>,
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<ErrorDetail>>,
}

impl ErrorDetail {
    /// A detail with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: Some(code.into()), message: Some(message.into()), target: None, details: None }
    }
}

/// Whether `name` follows the spec's pattern `^[a-zA-Z0-9]+(-*[a-zA-Z0-9])*$` within `max_len`
/// characters (live events 32, streaming endpoints 24, live outputs 256).
pub fn valid_name(name: &str, max_len: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks a live event (channel) name.
pub fn valid_live_event_name(name: &str) -> Result<(), String> {
    if valid_name(name, 32) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a live event name (1 to 32 letters, digits and inner hyphens)"))
    }
}

/// Removes every `null` member of every object in `value`, recursively.
///
/// The types above serialize unset fields as `null`; requests should carry only what was set.
pub fn without_nulls(mut value: Value) -> Value {
    fn prune(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.retain(|_, member| !member.is_null());
                map.values_mut().for_each(prune);
            }
            Value::Array(items) => items.iter_mut().for_each(prune),
            _ => {}
        }
    }
    prune(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_enum_values_are_kept_not_rejected() {
        let state: LiveEventState = serde_json::from_value(json!("Hibernating")).unwrap();
        assert_eq!(state, LiveEventState::Other("Hibernating".into()));
        assert_eq!(serde_json::to_value(&state).unwrap(), json!("Hibernating"));
        assert_eq!(LiveEventState::from("StandBy"), LiveEventState::StandBy);
    }

    #[test]
    fn unset_fields_serialize_as_null_and_requests_drop_them() {
        let asset = Asset {
            properties: AssetProperties { description: Some("news".into()), ..Default::default() },
            ..Default::default()
        };
        let full = serde_json::to_value(&asset).unwrap();
        assert_eq!(full["properties"]["container"], Value::Null);
        assert_eq!(without_nulls(full), json!({"properties": {"description": "news"}}));
    }

    #[test]
    fn unmodelled_properties_survive_a_round_trip() {
        let body = json!({"properties": {"description": "d", "futureField": {"a": 1}}});
        let asset: Asset = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(without_nulls(serde_json::to_value(&asset).unwrap()), body);
    }
}
