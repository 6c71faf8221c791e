//! Assets, streaming locators, streaming policies and content key policies: the synchronous
//! publishing resources.
//!
//! Rules kept: a locator needs an existing asset and policy and cannot be created twice; its paths
//! are built from its GUID and the manifest name of the live output that recorded the asset, with
//! the encryption scheme (and `encryption=` argument) of its policy; a protected policy gives the
//! locator content keys, whose content key policies must exist; an asset recorded by a live output
//! cannot be deleted, and deleting an asset deletes its locators; a streaming policy in use, or
//! predefined, cannot be deleted; content key policy secrets are blanked except through
//! `getPolicyPropertiesWithSecrets`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::Value;

use crate::media::model::{
    Asset, ContentKeyPolicy, EnabledProtocols, ListContentKeysResponse, ListPathsResponse, METADATA_API_VERSION,
    StreamingLocator, StreamingLocatorContentKey, StreamingLocatorProperties, StreamingPath, StreamingPolicy,
};

use super::arm::{self, ArmError, ArmRequest, ArmResult, Reply};
use super::keydelivery;
use super::resources::{Family, Removable};
use super::state::{Account, AssetEntry, Env, PREDEFINED_POLICIES};

/// Locators one asset may have (the service's default quota).
const MAX_LOCATORS_PER_ASSET: usize = 100;
/// Options one content key policy may have.
const MAX_POLICY_OPTIONS: usize = 30;
/// The end time the service gives a locator without one.
const FOREVER: &str = "9999-12-31T23:59:59.9999999Z";

// === Assets ===

/// The assets of an account. An asset recorded by a live output cannot be deleted; deleting one
/// deletes its locators.
pub(crate) struct Assets;

impl Family for Assets {
    type Item = AssetEntry;
    type View = Asset;

    fn kind(&self) -> String {
        "assets".into()
    }

    fn items<'a>(&self, account: &'a Account) -> Result<&'a BTreeMap<String, AssetEntry>, ArmError> {
        Ok(&account.assets)
    }

    fn view(&self, entry: &AssetEntry) -> Asset {
        entry.resource.clone()
    }
}

impl Removable for Assets {
    fn items_mut<'a>(&self, account: &'a mut Account) -> &'a mut BTreeMap<String, AssetEntry> {
        &mut account.assets
    }

    fn check_delete(&self, account: &Account, name: &str) -> Result<(), ArmError> {
        let key = name.to_lowercase();
        if !account.assets.contains_key(&key) {
            return Ok(());
        }
        let recording = account.live_events.values().flat_map(|entry| entry.outputs.values()).any(|output| {
            output.resource.properties.asset_name.as_deref().map(str::to_lowercase).as_deref() == Some(key.as_str())
        });
        if recording {
            return Err(ArmError::invalid_state(format!(
                "The asset '{name}' is being recorded by a live output; delete the live output first."
            )));
        }
        Ok(())
    }

    fn cascade(&self, account: &mut Account, key: &str) {
        account.streaming_locators.retain(|_, locator| {
            locator.properties.asset_name.as_deref().map(str::to_lowercase).as_deref() != Some(key)
        });
    }
}

/// `PUT` (create 201 or update 200) and `PATCH` (update 200).
pub(crate) fn put_asset(account: &mut Account, env: &mut Env<'_>, name: &str, request: &ArmRequest<'_>) -> ArmResult {
    arm::check_free_name("asset", name)?;
    let body: Asset = request.json()?;
    let update = body.properties;
    if let Some(entry) = account.assets.get_mut(&name.to_lowercase()) {
        let properties = &mut entry.resource.properties;
        if update.description.is_some() {
            properties.description = update.description;
        }
        if update.alternate_id.is_some() {
            properties.alternate_id = update.alternate_id;
        }
        properties.last_modified = Some(env.wall.clone());
        return Ok(Reply::ok(&entry.resource));
    }
    if request.method == axum::http::Method::PATCH {
        return Err(ArmError::not_found("assets", name, &account.id));
    }
    let asset_id = uuid::Uuid::new_v4().to_string();
    let mut properties = update;
    properties.container = Some(properties.container.unwrap_or_else(|| format!("asset-{asset_id}")));
    properties.asset_id = Some(asset_id);
    properties.storage_account_name.get_or_insert_with(|| "onairemulator".into());
    properties.storage_encryption_format = Some("None".into());
    properties.created = Some(env.wall.clone());
    properties.last_modified = Some(env.wall.clone());
    let resource = Asset {
        name: Some(name.to_string()),
        id: Some(format!("{}/assets/{name}", account.id.base())),
        kind: Some("Microsoft.Media/mediaservices/assets".into()),
        properties,
        system_data: Some(env.system_data(None)),
        ..Default::default()
    };
    let reply = Reply::json(StatusCode::CREATED, &resource);
    account.assets.insert(name.to_lowercase(), AssetEntry { resource, manifest_name: None });
    Ok(reply)
}

// === Streaming locators ===

/// The streaming locators of an account; GET shows their content keys without values.
pub(crate) struct StreamingLocators;

impl Family for StreamingLocators {
    type Item = StreamingLocator;
    type View = StreamingLocator;

    fn kind(&self) -> String {
        "streamingLocators".into()
    }

    fn items<'a>(&self, account: &'a Account) -> Result<&'a BTreeMap<String, StreamingLocator>, ArmError> {
        Ok(&account.streaming_locators)
    }

    fn view(&self, locator: &StreamingLocator) -> StreamingLocator {
        without_key_values(locator)
    }
}

impl Removable for StreamingLocators {
    fn items_mut<'a>(&self, account: &'a mut Account) -> &'a mut BTreeMap<String, StreamingLocator> {
        &mut account.streaming_locators
    }
}

/// The locator as GET shows it: its content keys without their values (`listContentKeys` has them).
fn without_key_values(locator: &StreamingLocator) -> StreamingLocator {
    let mut locator = locator.clone();
    for key in locator.properties.content_keys.iter_mut().flatten() {
        key.value = None;
    }
    locator
}

/// `PUT`: create only (201); an existing name is a 409.
pub(crate) fn put_locator(account: &mut Account, env: &mut Env<'_>, name: &str, request: &ArmRequest<'_>) -> ArmResult {
    arm::check_free_name("streaming locator", name)?;
    let body: StreamingLocator = request.json()?;
    if account.streaming_locators.contains_key(&name.to_lowercase()) {
        return Err(ArmError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("A streaming locator named '{name}' already exists; streaming locators cannot be updated."),
        ));
    }
    let mut properties = body.properties;
    check_asset_and_policy(account, &properties)?;
    assign_locator_id(account, &mut properties)?;
    let keys = locator_content_keys(account, &mut properties)?;
    properties.content_keys = Some(keys);
    properties.end_time.get_or_insert_with(|| FOREVER.into());
    properties.created = Some(env.wall.clone());
    let locator = StreamingLocator {
        name: Some(name.to_string()),
        id: Some(format!("{}/streamingLocators/{name}", account.id.base())),
        kind: Some("Microsoft.Media/mediaservices/streamingLocators".into()),
        properties,
        system_data: Some(env.system_data(None)),
        ..Default::default()
    };
    let reply = Reply::json(StatusCode::CREATED, without_key_values(&locator));
    account.streaming_locators.insert(name.to_lowercase(), locator);
    Ok(reply)
}

/// A new locator's asset and streaming policy must exist, and the asset have room for a locator.
fn check_asset_and_policy(account: &Account, properties: &StreamingLocatorProperties) -> Result<(), ArmError> {
    let asset = properties.asset_name.clone().unwrap_or_default();
    let asset_key = asset.to_lowercase();
    if asset.is_empty() || !account.assets.contains_key(&asset_key) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "AssetNotFound",
            format!("The asset '{asset}' does not exist."),
        ));
    }
    let policy = properties.streaming_policy_name.clone().unwrap_or_default();
    if policy.is_empty() || !account.streaming_policies.contains_key(&policy.to_lowercase()) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "StreamingPolicyNotFound",
            format!("The streaming policy '{policy}' does not exist."),
        ));
    }
    let locators_of_asset = account
        .streaming_locators
        .values()
        .filter(|locator| {
            locator.properties.asset_name.as_deref().map(str::to_lowercase).as_deref() == Some(asset_key.as_str())
        })
        .count();
    if locators_of_asset >= MAX_LOCATORS_PER_ASSET {
        return Err(ArmError::quota(format!(
            "The asset '{asset}' already has {MAX_LOCATORS_PER_ASSET} streaming locators."
        )));
    }
    Ok(())
}

/// Checks the `streamingLocatorId` asked for (a GUID no other locator has), or draws one.
fn assign_locator_id(account: &Account, properties: &mut StreamingLocatorProperties) -> Result<(), ArmError> {
    match &properties.streaming_locator_id {
        Some(id) if uuid::Uuid::parse_str(id).is_err() => {
            return Err(ArmError::bad_request("properties.streamingLocatorId must be a GUID."));
        }
        Some(_) => {}
        None => properties.streaming_locator_id = Some(uuid::Uuid::new_v4().to_string()),
    }
    let taken = account
        .streaming_locators
        .values()
        .any(|locator| locator.properties.streaming_locator_id == properties.streaming_locator_id);
    if taken {
        return Err(ArmError::new(
            StatusCode::CONFLICT,
            "Conflict",
            "Another streaming locator has this streamingLocatorId.",
        ));
    }
    Ok(())
}

/// The content keys a new locator gets from its policy (those asked for, or drawn), each of
/// whose content key policies must exist and whose ids must not clash with the account's keys.
fn locator_content_keys(
    account: &Account,
    properties: &mut StreamingLocatorProperties,
) -> Result<Vec<StreamingLocatorContentKey>, ArmError> {
    let policy = properties.streaming_policy_name.clone().unwrap_or_default();
    let streaming_policy = account
        .streaming_policies
        .get(&policy.to_lowercase())
        .ok_or_else(|| ArmError::not_found("streamingPolicies", &policy, &account.id))?;
    let keys = keydelivery::content_keys(
        streaming_policy,
        properties.content_keys.take(),
        properties.default_content_key_policy_name.as_deref(),
    )?;
    let named = keys.iter().filter_map(|key| key.policy_name.as_deref());
    let locator_default = properties.default_content_key_policy_name.as_deref().filter(|_| !keys.is_empty());
    if let Some(missing) =
        named.chain(locator_default).find(|name| !account.content_key_policies.contains_key(&name.to_lowercase()))
    {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "ContentKeyPolicyNotFound",
            format!("The content key policy '{missing}' does not exist."),
        ));
    }
    check_key_ids(account, &keys)?;
    Ok(keys)
}

/// A content key id names one key: the same id with another value, in this locator or another
/// one of the account, is refused (key delivery finds a key by its id).
fn check_key_ids(account: &Account, keys: &[StreamingLocatorContentKey]) -> Result<(), ArmError> {
    let existing =
        account.streaming_locators.values().flat_map(|locator| locator.properties.content_keys.iter().flatten());
    let mut seen: Vec<&StreamingLocatorContentKey> = Vec::new();
    for key in keys {
        let clash = existing.clone().chain(seen.iter().copied()).any(|other| {
            other.id.as_deref().is_some_and(|id| Some(id) == key.id.as_deref()) && other.value != key.value
        });
        if clash {
            return Err(ArmError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "The content key id '{}' is already used with another value.",
                    key.id.as_deref().unwrap_or_default()
                ),
            ));
        }
        seen.push(key);
    }
    Ok(())
}

/// `POST listPaths` and `listContentKeys`.
pub(crate) fn locator_action(account: &Account, name: &str, action: &str) -> ArmResult {
    let locator = account
        .streaming_locators
        .get(&name.to_lowercase())
        .ok_or_else(|| ArmError::not_found("streamingLocators", name, &account.id))?;
    match action.to_lowercase().as_str() {
        "listpaths" => Ok(Reply::ok(paths(account, locator))),
        "listcontentkeys" => Ok(Reply::ok(ListContentKeysResponse {
            content_keys: locator.properties.content_keys.clone().unwrap_or_default(),
        })),
        other => Err(unknown_action("streamingLocators", other)),
    }
}

/// The streaming paths of a locator: one entry per enabled protocol of its policy's scheme.
fn paths(account: &Account, locator: &StreamingLocator) -> ListPathsResponse {
    let asset = locator.properties.asset_name.as_deref().unwrap_or_default().to_lowercase();
    let manifest = account.assets.get(&asset).and_then(|entry| entry.manifest_name.clone());
    let policy = locator
        .properties
        .streaming_policy_name
        .as_deref()
        .and_then(|name| account.streaming_policies.get(&name.to_lowercase()));
    let (Some(manifest), Some(policy), Some(id)) = (manifest, policy, &locator.properties.streaming_locator_id) else {
        return ListPathsResponse::default();
    };
    let base = format!("/{id}/{manifest}.ism/manifest");
    let schemes: [(&str, Option<EnabledProtocols>); 4] = [
        ("NoEncryption", policy.properties.no_encryption.as_ref().and_then(|scheme| scheme.enabled_protocols)),
        (
            "EnvelopeEncryption",
            policy.properties.envelope_encryption.as_ref().and_then(|scheme| scheme.enabled_protocols),
        ),
        (
            "CommonEncryptionCenc",
            policy.properties.common_encryption_cenc.as_ref().and_then(|scheme| scheme.enabled_protocols),
        ),
        (
            "CommonEncryptionCbcs",
            policy.properties.common_encryption_cbcs.as_ref().and_then(|scheme| scheme.enabled_protocols),
        ),
    ];
    let mut streaming_paths = Vec::new();
    for (scheme, protocols) in schemes {
        let Some(protocols) = protocols else { continue };
        let mut add = |protocol: &str, paths: Vec<String>| {
            streaming_paths.push(StreamingPath {
                streaming_protocol: protocol.into(),
                encryption_scheme: scheme.into(),
                paths,
            })
        };
        // The `encryption=` argument the service adds for the scheme, per protocol.
        let (hls, other) = match scheme {
            "EnvelopeEncryption" => (",encryption=cbc", ",encryption=cbc"),
            "CommonEncryptionCenc" => (",encryption=cenc", ",encryption=cenc"),
            "CommonEncryptionCbcs" => (",encryption=cbcs-aapl", ",encryption=cbcs"),
            _ => ("", ""),
        };
        if protocols.hls {
            add("Hls", vec![format!("{base}(format=m3u8-aapl{hls})"), format!("{base}(format=m3u8-cmaf{hls})")]);
        }
        if protocols.dash {
            add(
                "Dash",
                vec![format!("{base}(format=mpd-time-csf{other})"), format!("{base}(format=mpd-time-cmaf{other})")],
            );
        }
        if protocols.smooth_streaming {
            let smooth = match other.strip_prefix(',') {
                Some(argument) => format!("{base}({argument})"),
                None => base.clone(),
            };
            add("SmoothStreaming", vec![smooth]);
        }
    }
    ListPathsResponse { streaming_paths, download_paths: Vec::new() }
}

// === Streaming policies ===

/// The streaming policies of an account, the predefined ones included; those, and a policy a
/// locator uses, cannot be deleted.
pub(crate) struct StreamingPolicies;

impl Family for StreamingPolicies {
    type Item = StreamingPolicy;
    type View = StreamingPolicy;

    fn kind(&self) -> String {
        "streamingPolicies".into()
    }

    fn items<'a>(&self, account: &'a Account) -> Result<&'a BTreeMap<String, StreamingPolicy>, ArmError> {
        Ok(&account.streaming_policies)
    }

    fn view(&self, policy: &StreamingPolicy) -> StreamingPolicy {
        policy.clone()
    }
}

impl Removable for StreamingPolicies {
    fn items_mut<'a>(&self, account: &'a mut Account) -> &'a mut BTreeMap<String, StreamingPolicy> {
        &mut account.streaming_policies
    }

    fn check_delete(&self, account: &Account, name: &str) -> Result<(), ArmError> {
        let key = name.to_lowercase();
        if PREDEFINED_POLICIES.iter().any(|predefined| predefined.eq_ignore_ascii_case(name)) {
            return Err(ArmError::bad_request(format!("The predefined streaming policy '{name}' cannot be deleted.")));
        }
        let in_use = account.streaming_locators.values().find(|locator| {
            locator.properties.streaming_policy_name.as_deref().map(str::to_lowercase).as_deref() == Some(key.as_str())
        });
        if let Some(locator) = in_use {
            return Err(ArmError::invalid_state(format!(
                "The streaming policy '{name}' is used by the streaming locator '{}'.",
                locator.name.as_deref().unwrap_or_default()
            )));
        }
        Ok(())
    }
}

/// `PUT`: create only (201).
pub(crate) fn put_policy(account: &mut Account, env: &mut Env<'_>, name: &str, request: &ArmRequest<'_>) -> ArmResult {
    arm::check_free_name("streaming policy", name)?;
    let body: StreamingPolicy = request.json()?;
    if account.streaming_policies.contains_key(&name.to_lowercase()) {
        return Err(ArmError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("A streaming policy named '{name}' already exists; streaming policies cannot be updated."),
        ));
    }
    let mut properties = body.properties;
    let sections = [
        properties.no_encryption.as_ref().map(|scheme| scheme.enabled_protocols),
        properties.envelope_encryption.as_ref().map(|scheme| scheme.enabled_protocols),
        properties.common_encryption_cenc.as_ref().map(|scheme| scheme.enabled_protocols),
        properties.common_encryption_cbcs.as_ref().map(|scheme| scheme.enabled_protocols),
    ];
    if sections.iter().all(Option::is_none) {
        return Err(ArmError::bad_request(
            "A streaming policy needs one of noEncryption, envelopeEncryption, commonEncryptionCenc or commonEncryptionCbcs.",
        ));
    }
    if sections.iter().flatten().any(Option::is_none) {
        return Err(ArmError::bad_request(
            "Every encryption section needs enabledProtocols {download, dash, hls, smoothStreaming}.",
        ));
    }
    if let Some(default_policy) = &properties.default_content_key_policy_name
        && !account.content_key_policies.contains_key(&default_policy.to_lowercase())
    {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "ContentKeyPolicyNotFound",
            format!("The content key policy '{default_policy}' does not exist."),
        ));
    }
    properties.created = Some(env.wall.clone());
    let policy = StreamingPolicy {
        name: Some(name.to_string()),
        id: Some(format!("{}/streamingPolicies/{name}", account.id.base())),
        kind: Some("Microsoft.Media/mediaservices/streamingPolicies".into()),
        properties,
        system_data: Some(env.system_data(None)),
        ..Default::default()
    };
    let reply = Reply::json(StatusCode::CREATED, &policy);
    account.streaming_policies.insert(name.to_lowercase(), policy);
    Ok(reply)
}

// === Content key policies ===

/// The content key policies of an account; GET blanks their secrets.
pub(crate) struct ContentKeyPolicies;

impl Family for ContentKeyPolicies {
    type Item = ContentKeyPolicy;
    type View = ContentKeyPolicy;

    fn kind(&self) -> String {
        "contentKeyPolicies".into()
    }

    fn items<'a>(&self, account: &'a Account) -> Result<&'a BTreeMap<String, ContentKeyPolicy>, ArmError> {
        Ok(&account.content_key_policies)
    }

    fn view(&self, policy: &ContentKeyPolicy) -> ContentKeyPolicy {
        without_secrets(policy)
    }
}

impl Removable for ContentKeyPolicies {
    fn items_mut<'a>(&self, account: &'a mut Account) -> &'a mut BTreeMap<String, ContentKeyPolicy> {
        &mut account.content_key_policies
    }
}

/// `PUT` (create 201 or replace 200) and `PATCH` (update 200).
pub(crate) fn put_content_key_policy(
    account: &mut Account,
    env: &mut Env<'_>,
    name: &str,
    request: &ArmRequest<'_>,
) -> ArmResult {
    arm::check_free_name("content key policy", name)?;
    let body: ContentKeyPolicy = request.json()?;
    let mut properties = body.properties;
    let existing = account.content_key_policies.get(&name.to_lowercase()).cloned();
    let is_patch = request.method == axum::http::Method::PATCH;
    if is_patch && existing.is_none() {
        return Err(ArmError::not_found("contentKeyPolicies", name, &account.id));
    }
    if is_patch && properties.options.is_none() {
        properties.options = existing.as_ref().and_then(|policy| policy.properties.options.clone());
    }
    let options = properties
        .options
        .as_mut()
        .filter(|options| !options.is_empty())
        .ok_or_else(|| ArmError::bad_request("properties.options must hold at least one option."))?;
    if options.len() > MAX_POLICY_OPTIONS {
        return Err(ArmError::quota(format!("A content key policy has at most {MAX_POLICY_OPTIONS} options.")));
    }
    for (index, option) in options.iter_mut().enumerate() {
        keydelivery::validate_option(index, option)?;
        option.policy_option_id.get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
    }
    let created = existing.as_ref().and_then(|policy| policy.properties.created.clone());
    properties.policy_id = existing
        .as_ref()
        .and_then(|policy| policy.properties.policy_id.clone())
        .or_else(|| Some(uuid::Uuid::new_v4().to_string()));
    if properties.description.is_none() {
        properties.description = existing.as_ref().and_then(|policy| policy.properties.description.clone());
    }
    properties.created = Some(created.clone().unwrap_or_else(|| env.wall.clone()));
    properties.last_modified = Some(env.wall.clone());
    let policy = ContentKeyPolicy {
        name: Some(name.to_string()),
        id: Some(format!("{}/contentKeyPolicies/{name}", account.id.base())),
        kind: Some("Microsoft.Media/mediaservices/contentKeyPolicies".into()),
        properties,
        system_data: Some(env.system_data(created.as_deref())),
        ..Default::default()
    };
    let status = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    let reply = Reply::json(status, without_secrets(&policy));
    account.content_key_policies.insert(name.to_lowercase(), policy);
    Ok(reply)
}

/// `POST getPolicyPropertiesWithSecrets`.
pub(crate) fn content_key_policy_action(account: &Account, name: &str, action: &str) -> ArmResult {
    let policy = find_content_key_policy(account, name)?;
    match action.to_lowercase().as_str() {
        "getpolicypropertieswithsecrets" => Ok(Reply::ok(&policy.properties)),
        other => Err(unknown_action("contentKeyPolicies", other)),
    }
}

fn find_content_key_policy<'a>(account: &'a Account, name: &str) -> Result<&'a ContentKeyPolicy, ArmError> {
    account
        .content_key_policies
        .get(&name.to_lowercase())
        .ok_or_else(|| ArmError::not_found("contentKeyPolicies", name, &account.id))
}

/// The policy as GET shows it: key values, FairPlay secrets and certificates blanked.
fn without_secrets(policy: &ContentKeyPolicy) -> ContentKeyPolicy {
    fn blank(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, member) in map.iter_mut() {
                    if matches!(key.as_str(), "keyValue" | "ask" | "fairPlayPfx" | "fairPlayPfxPassword" | "rawBody") {
                        *member = Value::String(String::new());
                    } else {
                        blank(member);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(blank),
            _ => {}
        }
    }
    let mut policy = policy.clone();
    for option in policy.properties.options.iter_mut().flatten() {
        option.configuration.iter_mut().for_each(blank);
        option.restriction.iter_mut().for_each(blank);
    }
    policy
}

fn unknown_action(collection: &str, action: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "InvalidResourceType",
        format!(
            "The resource type '{action}' could not be found under {collection} for api version '{METADATA_API_VERSION}'."
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::emulator::state::{self, AccountId};
    use crate::media::model::StreamingLocatorProperties;

    /// An account with an asset recorded as `show` and a locator `id` on `policy`.
    fn account_with_locator(policy: &str) -> (BTreeMap<String, Account>, String) {
        let mut accounts = BTreeMap::new();
        let id = AccountId { subscription: "s".into(), resource_group: "g".into(), name: "a".into() };
        let account = state::account(&mut accounts, &id, "2026-01-01T00:00:00Z", "client");
        account
            .assets
            .insert("asset".into(), AssetEntry { resource: Asset::default(), manifest_name: Some("show".into()) });
        let locator = StreamingLocator {
            properties: StreamingLocatorProperties {
                asset_name: Some("asset".into()),
                streaming_policy_name: Some(policy.into()),
                streaming_locator_id: Some("c3cd62e3-d117-4619-bcbd-99f96edd8dbe".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        account.streaming_locators.insert("locator".into(), locator);
        (accounts, id.key())
    }

    fn listed(policy: &str) -> Vec<(String, String, Vec<String>)> {
        let (accounts, key) = account_with_locator(policy);
        let account = &accounts[&key];
        paths(account, &account.streaming_locators["locator"])
            .streaming_paths
            .into_iter()
            .map(|path| (path.streaming_protocol, path.encryption_scheme, path.paths))
            .collect()
    }

    #[test]
    fn encrypted_paths_carry_the_schemes_encryption_argument() {
        let base = "/c3cd62e3-d117-4619-bcbd-99f96edd8dbe/show.ism/manifest";
        let clear = listed("Predefined_ClearStreamingOnly");
        assert_eq!(clear[0].2, [format!("{base}(format=m3u8-aapl)"), format!("{base}(format=m3u8-cmaf)")]);
        assert_eq!(clear[2].2, [base.to_string()]);
        let envelope = listed("Predefined_ClearKey");
        let expected = [
            (
                "Hls",
                vec![
                    format!("{base}(format=m3u8-aapl,encryption=cbc)"),
                    format!("{base}(format=m3u8-cmaf,encryption=cbc)"),
                ],
            ),
            (
                "Dash",
                vec![
                    format!("{base}(format=mpd-time-csf,encryption=cbc)"),
                    format!("{base}(format=mpd-time-cmaf,encryption=cbc)"),
                ],
            ),
            ("SmoothStreaming", vec![format!("{base}(encryption=cbc)")]),
        ];
        assert_eq!(envelope.len(), 3);
        for ((protocol, scheme, paths), (expected_protocol, expected_paths)) in envelope.iter().zip(expected) {
            assert_eq!((protocol.as_str(), scheme.as_str()), (expected_protocol, "EnvelopeEncryption"));
            assert_eq!(paths, &expected_paths);
        }
        let multi_drm = listed("Predefined_MultiDrmStreaming");
        let summary: Vec<(&str, &str, &str)> = multi_drm
            .iter()
            .map(|(protocol, scheme, paths)| (protocol.as_str(), scheme.as_str(), paths[0].as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("Dash", "CommonEncryptionCenc", format!("{base}(format=mpd-time-csf,encryption=cenc)").as_str()),
                ("SmoothStreaming", "CommonEncryptionCenc", format!("{base}(encryption=cenc)").as_str()),
                ("Hls", "CommonEncryptionCbcs", format!("{base}(format=m3u8-aapl,encryption=cbcs-aapl)").as_str()),
            ]
        );
    }

    #[test]
    fn a_key_id_names_one_value_across_the_account() {
        let (mut accounts, key) = account_with_locator("Predefined_ClearKey");
        let account = accounts.get_mut(&key).unwrap();
        let existing = StreamingLocatorContentKey {
            id: Some("60000000-0000-0000-0000-000000000001".into()),
            value: Some("AAAAAAAAAAAAAAAAAAAAAA==".into()),
            ..Default::default()
        };
        if let Some(locator) = account.streaming_locators.get_mut("locator") {
            locator.properties.content_keys = Some(vec![existing.clone()]);
        }
        assert!(check_key_ids(account, std::slice::from_ref(&existing)).is_ok(), "the same key may be shared");
        let clash = StreamingLocatorContentKey { value: Some("AQEBAQEBAQEBAQEBAQEBAQ==".into()), ..existing };
        assert_eq!(check_key_ids(account, &[clash]).unwrap_err().status, StatusCode::CONFLICT);
    }
}
