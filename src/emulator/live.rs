//! Live events and live outputs: the service's rules for channels and programs.
//!
//! Live event states: Stopped →allocate→ (Allocating) StandBy →start→ (Starting) Running
//! →stop→ (Stopping) Stopped; reset goes (Stopping, Starting) back to Running and deletes the live
//! outputs; a failed start returns to Stopped. A live output can only be created on a Running live
//! event, runs from creation (Creating → Running) and stops by deletion (Deleting → gone).
//! Repeating an action whose goal already holds is answered 200 and changes nothing; acting on a
//! resource that is in a transient state is a 409.

use std::collections::BTreeMap;

use axum::http::StatusCode;

use crate::media::model::{
    CrossSiteAccessPolicies, LiveEvent, LiveEventActionInput, LiveEventEncoding, LiveEventEndpoint, LiveEventInput,
    LiveEventPreview, LiveEventState, LiveOutput, LiveOutputProperties, LiveOutputState, STREAMING_API_VERSION,
};

use super::arm::{self, ArmError, ArmRequest, ArmResult, Reply};
use super::resources::Family;
use super::state::{Account, Effect, Entry, Env, LiveEventChange, LiveEventEntry, OperationKind, Outcome};

const KIND: &str = "liveEvents";

type OutputEntry = Entry<LiveOutput, LiveOutputState>;

/// The live events of an account.
pub(crate) struct LiveEvents;

impl Family for LiveEvents {
    type Item = LiveEventEntry;
    type View = LiveEvent;

    fn kind(&self) -> String {
        KIND.into()
    }

    fn items<'a>(&self, account: &'a Account) -> Result<&'a BTreeMap<String, LiveEventEntry>, ArmError> {
        Ok(&account.live_events)
    }

    fn view(&self, entry: &LiveEventEntry) -> LiveEvent {
        entry.resource.clone()
    }
}

/// The live outputs of one live event; its absence is ARM's `ParentResourceNotFound`.
pub(crate) struct LiveOutputs<'a> {
    /// The live event's name, as the path spells it.
    pub event: &'a str,
}

impl Family for LiveOutputs<'_> {
    type Item = OutputEntry;
    type View = LiveOutput;

    fn kind(&self) -> String {
        format!("liveEvents/{}/liveOutputs", self.event)
    }

    fn items<'a>(&self, account: &'a Account) -> Result<&'a BTreeMap<String, OutputEntry>, ArmError> {
        Ok(&parent(account, self.event)?.outputs)
    }

    fn view(&self, entry: &OutputEntry) -> LiveOutput {
        entry.resource.clone()
    }
}

/// `PUT`: create (201, long-running, optionally started) or update a settled live event (200).
pub(crate) fn put(account: &mut Account, env: &mut Env<'_>, name: &str, request: &ArmRequest<'_>) -> ArmResult {
    arm::check_name("live event", name, 32)?;
    let body: LiveEvent = request.json()?;
    let auto_start = request.auto_start()?;
    if let Some(entry) = account.live_events.get_mut(&name.to_lowercase()) {
        update(entry, env, name, body)?;
        return Ok(Reply::ok(&entry.resource));
    }
    ArmError::check_quota(account.live_events.len(), env.quotas().live_events, "live events")?;
    let resource = new_live_event(account, env, name, body)?;
    let (phases, success) = if auto_start {
        (vec![LiveEventState::Creating, LiveEventState::Starting], Outcome::to(LiveEventState::Running))
    } else {
        (vec![LiveEventState::Creating], Outcome::to(LiveEventState::Stopped))
    };
    let pending = env.start(
        OperationKind::LiveEvent,
        &account.id.key(),
        (name.to_string(), None),
        phases,
        success,
        Outcome::removed(),
    );
    let headers =
        arm::lro_headers(env, &account.id, "liveeventoperations", &format!("liveevents/{name}"), &pending.operation);
    let entry = LiveEventEntry { resource, pending: Some(pending), outputs: BTreeMap::new() };
    let reply = Reply::json(StatusCode::CREATED, &entry.resource).with_headers(headers);
    account.live_events.insert(name.to_lowercase(), entry);
    Ok(reply)
}

pub(crate) fn patch(account: &mut Account, env: &mut Env<'_>, name: &str, request: &ArmRequest<'_>) -> ArmResult {
    let body: LiveEvent = request.json()?;
    let entry = find_mut(account, name)?;
    update(entry, env, name, body)?;
    Ok(Reply::ok(&entry.resource))
}

pub(crate) fn delete(account: &mut Account, env: &mut Env<'_>, name: &str) -> ArmResult {
    let key = account.id.key();
    let Some(entry) = account.live_events.get_mut(&name.to_lowercase()) else {
        return Ok(Reply::empty(StatusCode::NO_CONTENT));
    };
    let state = state_of(entry);
    if entry.pending.is_some() {
        return Err(ArmError::in_progress("live event", name, state));
    }
    if state == LiveEventState::Running {
        return Err(ArmError::invalid_state(format!(
            "The live event '{name}' is Running; stop it before deleting it."
        )));
    }
    let pending = env.start(
        OperationKind::LiveEvent,
        &key,
        (name.to_string(), None),
        vec![LiveEventState::Deleting],
        Outcome::removed().with(Effect::ClearOutputs),
        Outcome::to(state),
    );
    env.changes.push(LiveEventChange::Deleted(name.to_string()));
    begin(entry, pending, env, &account.id, name)
}

/// `POST allocate|start|stop|reset`.
pub(crate) fn action(
    account: &mut Account,
    env: &mut Env<'_>,
    name: &str,
    action: &str,
    request: &ArmRequest<'_>,
) -> ArmResult {
    let key = account.id.key();
    let account_id = account.id.clone();
    let action = action.to_lowercase();
    let stop_input = match action.as_str() {
        "stop" => Some(request.json::<LiveEventActionInput>()?),
        "allocate" | "start" | "reset" => None,
        _ => return Err(unknown_action(&action)),
    };
    let entry = find_mut(account, name)?;
    let state = state_of(entry);
    if entry.pending.is_some() {
        return Err(ArmError::in_progress("live event", name, state));
    }
    use LiveEventState as S;
    let (phases, success, failure) = match (action.as_str(), &state) {
        ("allocate", S::StandBy | S::Running) | ("start", S::Running) | ("stop", S::Stopped) => {
            return Ok(Reply::empty(StatusCode::OK));
        }
        ("allocate", S::Stopped) => (vec![S::Allocating], Outcome::to(S::StandBy), Outcome::to(S::Stopped)),
        ("start", S::Stopped | S::StandBy) => (vec![S::Starting], Outcome::to(S::Running), Outcome::to(S::Stopped)),
        ("stop", S::Running | S::StandBy) => {
            let remove_outputs = stop_input.and_then(|input| input.remove_outputs_on_stop).unwrap_or(false);
            if !entry.outputs.is_empty() && !remove_outputs {
                return Err(ArmError::invalid_state(format!(
                    "The live event '{name}' has {} live output(s); delete them first or stop with removeOutputsOnStop.",
                    entry.outputs.len()
                )));
            }
            let success =
                Outcome::to(S::Stopped).with(if remove_outputs { Effect::ClearOutputs } else { Effect::None });
            (vec![S::Stopping], success, Outcome::to(state.clone()))
        }
        ("reset", S::Running) => {
            // The live outputs go at once; the restart takes two transition times.
            entry.outputs.clear();
            (vec![S::Stopping, S::Starting], Outcome::to(S::Running), Outcome::to(S::Running))
        }
        (action, state) => {
            return Err(ArmError::invalid_state(format!(
                "Cannot {action} the live event '{name}' while it is {state}."
            )));
        }
    };
    let pending = env.start(OperationKind::LiveEvent, &key, (name.to_string(), None), phases, success, failure);
    match action.as_str() {
        "stop" => env.changes.push(LiveEventChange::Stopped(name.to_string())),
        "reset" => env.changes.push(LiveEventChange::Reset(name.to_string())),
        _ => {}
    }
    begin(entry, pending, env, &account_id, name)
}

/// `PUT` a live output: 201 and long-running when new, 200 when the same one exists.
pub(crate) fn put_output(
    account: &mut Account,
    env: &mut Env<'_>,
    event: &str,
    name: &str,
    request: &ArmRequest<'_>,
) -> ArmResult {
    arm::check_name("live output", name, 256)?;
    let body: LiveOutput = request.json()?;
    let properties = body.properties;
    let asset_name = check_output_properties(account, &properties)?;
    let asset_key = asset_name.to_lowercase();
    let recorded_by = recorder_of(account, &asset_key);
    let key = account.id.key();
    let base = account.id.base();
    let account_id = account.id.clone();
    let quota = env.quotas().live_outputs_per_live_event;
    let entry = find_mut(account, event)?;
    if let Some(existing) = entry.outputs.get(&name.to_lowercase()) {
        return repeated_output(existing, name, &asset_key, &properties);
    }
    if let Some(output) = recorded_by {
        return Err(ArmError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("The asset '{asset_name}' is already recorded by the live output '{output}'."),
        ));
    }
    check_room_for_output(entry, event, quota)?;
    let event_name = entry.resource.name.clone().unwrap_or_else(|| event.to_string());
    let manifest_name = properties.manifest_name.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut output = LiveOutput {
        name: Some(name.to_string()),
        id: Some(format!("{base}/liveevents/{event_name}/liveoutputs/{name}")),
        kind: Some("Microsoft.Media/mediaservices/liveevents/liveoutputs".into()),
        properties,
        system_data: Some(env.system_data(None)),
        ..Default::default()
    };
    output.properties.asset_name = Some(asset_name.clone());
    output.properties.manifest_name = Some(manifest_name.clone());
    output.properties.output_snap_time.get_or_insert(0);
    output.properties.created = Some(env.wall.clone());
    output.properties.last_modified = Some(env.wall.clone());
    output.properties.provisioning_state = Some("InProgress".into());
    output.properties.resource_state = Some(LiveOutputState::Creating);
    let pending = env.start(
        OperationKind::LiveOutput,
        &key,
        (event_name.clone(), Some(name.to_string())),
        vec![LiveOutputState::Creating],
        Outcome::to(LiveOutputState::Running),
        Outcome::removed(),
    );
    let headers = output_headers(env, &account_id, &event_name, name, &pending.operation);
    let reply = Reply::json(StatusCode::CREATED, &output).with_headers(headers);
    entry.outputs.insert(name.to_lowercase(), Entry { resource: output, pending: Some(pending) });
    if let Some(asset) = account.assets.get_mut(&asset_key) {
        asset.manifest_name = Some(manifest_name);
    }
    Ok(reply)
}

/// Checks a new live output's asset (named and existing) and its archive and rewind windows;
/// returns the asset's name.
fn check_output_properties(account: &Account, properties: &LiveOutputProperties) -> Result<String, ArmError> {
    let asset_name = properties.asset_name.clone().filter(|asset| !asset.is_empty());
    let Some(asset_name) = asset_name else {
        return Err(ArmError::bad_request("properties.assetName is required."));
    };
    let archive = properties.archive_window_length.clone().unwrap_or_default();
    let archive_window =
        parse_iso_duration(&archive).filter(|seconds| (60..=25 * 3600).contains(seconds)).ok_or_else(|| {
            ArmError::bad_request(format!(
                "properties.archiveWindowLength must be an ISO 8601 duration from PT1M to PT25H, not {archive:?}."
            ))
        })?;
    if let Some(rewind) = &properties.rewind_window_length {
        let valid = parse_iso_duration(rewind).is_some_and(|seconds| seconds <= archive_window);
        if !valid {
            return Err(ArmError::bad_request(
                "properties.rewindWindowLength must be a duration no longer than the archive window.",
            ));
        }
    }
    if !account.assets.contains_key(&asset_name.to_lowercase()) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "AssetNotFound",
            format!("The asset '{asset_name}' does not exist."),
        ));
    }
    Ok(asset_name)
}

/// The key of the live output (on any live event) that records the asset `asset_key`, if one does.
fn recorder_of(account: &Account, asset_key: &str) -> Option<String> {
    account.live_events.values().flat_map(|entry| entry.outputs.iter()).find_map(|(output_key, output)| {
        let same_asset =
            output.resource.properties.asset_name.as_deref().map(str::to_lowercase).as_deref() == Some(asset_key);
        same_asset.then(|| output_key.clone())
    })
}

/// A `PUT` of a live output that exists: 200 when it asks for the same asset (and manifest), 409
/// otherwise, since live outputs cannot be updated.
fn repeated_output(
    existing: &OutputEntry,
    name: &str,
    asset_key: &str,
    properties: &LiveOutputProperties,
) -> ArmResult {
    let same = existing.resource.properties.asset_name.as_deref().map(str::to_lowercase).as_deref() == Some(asset_key)
        && properties
            .manifest_name
            .as_ref()
            .is_none_or(|manifest| existing.resource.properties.manifest_name.as_ref() == Some(manifest));
    if same {
        Ok(Reply::ok(&existing.resource))
    } else {
        Err(ArmError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("The live output '{name}' exists with other properties; live outputs cannot be updated."),
        ))
    }
}

/// A live output can be added to a settled, Running live event under its quota.
fn check_room_for_output(entry: &LiveEventEntry, event: &str, quota: usize) -> Result<(), ArmError> {
    let state = state_of(entry);
    if entry.pending.is_some() {
        return Err(ArmError::in_progress("live event", event, state));
    }
    if state != LiveEventState::Running {
        return Err(ArmError::invalid_state(format!(
            "The live event '{event}' is {state}; live outputs need it Running."
        )));
    }
    if entry.outputs.len() >= quota {
        return Err(ArmError::quota(format!("The live event '{event}' already has {quota} live outputs, its quota.")));
    }
    Ok(())
}

/// The operation headers of a live output's long-running create or delete.
fn output_headers(
    env: &Env<'_>,
    account: &super::state::AccountId,
    event_name: &str,
    name: &str,
    operation: &str,
) -> Vec<(String, String)> {
    arm::lro_headers(
        env,
        account,
        "liveoutputoperations",
        &format!("liveevents/{event_name}/liveoutputs/{name}"),
        operation,
    )
}

pub(crate) fn delete_output(account: &mut Account, env: &mut Env<'_>, event: &str, name: &str) -> ArmResult {
    let key = account.id.key();
    let account_id = account.id.clone();
    let entry = find_mut(account, event)?;
    let event_name = entry.resource.name.clone().unwrap_or_else(|| event.to_string());
    let Some(output) = entry.outputs.get_mut(&name.to_lowercase()) else {
        return Ok(Reply::empty(StatusCode::NO_CONTENT));
    };
    if let Some(state) = output.pending.as_ref().and(output.resource.properties.resource_state.as_ref()) {
        return Err(ArmError::in_progress("live output", name, state));
    }
    let pending = env.start(
        OperationKind::LiveOutput,
        &key,
        (event_name.clone(), Some(name.to_string())),
        vec![LiveOutputState::Deleting],
        Outcome::removed(),
        Outcome::to(LiveOutputState::Running),
    );
    output.resource.properties.resource_state = Some(LiveOutputState::Deleting);
    output.resource.properties.provisioning_state = Some("InProgress".into());
    let headers = output_headers(env, &account_id, &event_name, name, &pending.operation);
    output.pending = Some(pending);
    Ok(Reply::empty(StatusCode::ACCEPTED).with_headers(headers))
}

/// Fills or clears the ingest and preview URLs: they exist while the live event is allocated or running.
pub(crate) fn set_endpoints(resource: &mut LiveEvent, name: &str, account: &str, running: bool) {
    let region = resource.location.clone().unwrap_or_default().to_lowercase().replace(' ', "");
    let properties = &mut resource.properties;
    let host = format!("{name}-{account}").to_lowercase();
    let Some(input) = properties.input.as_mut() else {
        return;
    };
    let token = input.access_token.clone().unwrap_or_default();
    input.endpoints = Some(if running {
        let endpoint =
            |protocol: &str, url: String| LiveEventEndpoint { protocol: Some(protocol.into()), url: Some(url) };
        match input.streaming_protocol.as_deref() {
            Some("RTMP") => vec![
                endpoint("RTMP", format!("rtmp://{host}.channel.media.azure.net:1935/live/{token}")),
                endpoint("RTMP", format!("rtmps://{host}.channel.media.azure.net:2935/live/{token}")),
            ],
            _ => vec![
                endpoint("FragmentedMP4", format!("http://{host}.channel.media.azure.net/{token}/ingest.isml")),
                endpoint("FragmentedMP4", format!("https://{host}.channel.media.azure.net/{token}/ingest.isml")),
            ],
        }
    } else {
        Vec::new()
    });
    if let Some(preview) = properties.preview.as_mut() {
        let locator = preview.preview_locator.clone().unwrap_or_default();
        preview.endpoints = Some(if running {
            vec![LiveEventEndpoint {
                protocol: Some("FragmentedMP4".into()),
                url: Some(format!(
                    "https://{host}.preview-{region}.channel.media.azure.net/{locator}/preview.ism/manifest"
                )),
            }]
        } else {
            Vec::new()
        });
    }
}

/// Parses the ISO 8601 durations the API uses (`PT5M`, `PT1H30M`, `P1D`, `PT0.5S`) into whole seconds.
pub(crate) fn parse_iso_duration(text: &str) -> Option<u64> {
    let rest = text.strip_prefix('P')?;
    let (date, time) = rest.split_once('T').unwrap_or((rest, ""));
    if date.is_empty() && time.is_empty() {
        return None;
    }
    let mut seconds = 0f64;
    for (part, units) in
        [(date, [('D', 86_400.0), ('W', 604_800.0), ('\0', 0.0)]), (time, [('H', 3600.0), ('M', 60.0), ('S', 1.0)])]
    {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let factor = units.iter().find(|(unit, _)| *unit == c && *unit != '\0')?.1;
            seconds += number.parse::<f64>().ok()? * factor;
            number.clear();
        }
        if !number.is_empty() {
            return None;
        }
    }
    Some(seconds.round() as u64)
}

fn new_live_event(account: &Account, env: &Env<'_>, name: &str, body: LiveEvent) -> Result<LiveEvent, ArmError> {
    let location = ArmError::require_location(body.location.as_ref())?;
    let mut properties = body.properties;
    let mut input: LiveEventInput =
        properties.input.take().ok_or_else(|| ArmError::bad_request("properties.input is required."))?;
    match input.streaming_protocol.as_deref() {
        Some("RTMP" | "FragmentedMP4") => {}
        other => {
            return Err(ArmError::bad_request(format!(
                "properties.input.streamingProtocol must be RTMP or FragmentedMP4, not {other:?}."
            )));
        }
    }
    if let Some(token) = &input.access_token
        && uuid::Uuid::parse_str(token).is_err()
    {
        return Err(ArmError::bad_request("properties.input.accessToken must be a GUID."));
    }
    input.access_token.get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string());
    input.endpoints = Some(Vec::new());
    input.timed_metadata_endpoints.get_or_insert_with(Vec::new);
    let mut preview = properties.preview.take().unwrap_or_default();
    preview.preview_locator.get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
    preview.endpoints = Some(Vec::new());
    let encoding = properties
        .encoding
        .take()
        .unwrap_or(LiveEventEncoding { encoding_type: Some("None".into()), ..Default::default() });
    properties.input = Some(input);
    properties.preview = Some(LiveEventPreview { ..preview });
    properties.encoding =
        Some(LiveEventEncoding { encoding_type: encoding.encoding_type.or(Some("None".into())), ..encoding });
    properties.cross_site_access_policies.get_or_insert_with(CrossSiteAccessPolicies::default);
    properties.description.get_or_insert_with(String::new);
    properties.use_static_hostname.get_or_insert(false);
    properties.stream_options.get_or_insert_with(Vec::new);
    properties.transcriptions.get_or_insert_with(Vec::new);
    properties.provisioning_state = Some("InProgress".into());
    properties.resource_state = Some(LiveEventState::Creating);
    properties.created = Some(env.wall.clone());
    properties.last_modified = Some(env.wall.clone());
    Ok(LiveEvent {
        name: Some(name.to_string()),
        id: Some(format!("{}/liveevents/{name}", account.id.base())),
        kind: Some("Microsoft.Media/mediaservices/liveevents".into()),
        location: Some(location),
        tags: Some(body.tags.unwrap_or_default()),
        properties,
        sku: None,
        system_data: Some(env.system_data(None)),
    })
}

/// Applies the updatable properties of `body` to a settled live event.
fn update(entry: &mut LiveEventEntry, env: &Env<'_>, name: &str, body: LiveEvent) -> Result<(), ArmError> {
    if entry.pending.is_some() {
        return Err(ArmError::in_progress("live event", name, state_of(entry)));
    }
    let resource = &mut entry.resource;
    if let Some(tags) = body.tags {
        resource.tags = Some(tags);
    }
    let update = body.properties;
    let properties = &mut resource.properties;
    if update.description.is_some() {
        properties.description = update.description;
    }
    if update.cross_site_access_policies.is_some() {
        properties.cross_site_access_policies = update.cross_site_access_policies;
    }
    if let (Some(input), Some(current)) = (update.input, properties.input.as_mut()) {
        if input.access_control.is_some() {
            current.access_control = input.access_control;
        }
        if input.key_frame_interval_duration.is_some() {
            current.key_frame_interval_duration = input.key_frame_interval_duration;
        }
    }
    if let (Some(preview), Some(current)) = (update.preview, properties.preview.as_mut())
        && preview.access_control.is_some()
    {
        current.access_control = preview.access_control;
    }
    properties.last_modified = Some(env.wall.clone());
    resource.system_data =
        Some(env.system_data(resource.system_data.as_ref().and_then(|data| data.created_at.as_deref())));
    Ok(())
}

/// Installs `pending` on a live event and answers 202 with the operation headers.
fn begin(
    entry: &mut LiveEventEntry,
    pending: super::state::Pending<LiveEventState>,
    env: &Env<'_>,
    account: &super::state::AccountId,
    name: &str,
) -> ArmResult {
    let headers =
        arm::lro_headers(env, account, "liveeventoperations", &format!("liveevents/{name}"), &pending.operation);
    if let Some(first) = pending.phases.first() {
        entry.resource.properties.resource_state = Some(first.clone());
        entry.resource.properties.provisioning_state = Some("InProgress".into());
    }
    entry.pending = Some(pending);
    Ok(Reply::empty(StatusCode::ACCEPTED).with_headers(headers))
}

fn state_of(entry: &LiveEventEntry) -> LiveEventState {
    entry.resource.properties.resource_state.clone().unwrap_or(LiveEventState::Stopped)
}

fn find_mut<'a>(account: &'a mut Account, name: &str) -> Result<&'a mut LiveEventEntry, ArmError> {
    let id = account.id.clone();
    account.live_events.get_mut(&name.to_lowercase()).ok_or_else(|| ArmError::not_found(KIND, name, &id))
}

/// The live event in a live output path; its absence is ARM's `ParentResourceNotFound`.
fn parent<'a>(account: &'a Account, event: &str) -> Result<&'a LiveEventEntry, ArmError> {
    account.live_events.get(&event.to_lowercase()).ok_or_else(|| {
        ArmError::new(
            StatusCode::NOT_FOUND,
            "ParentResourceNotFound",
            format!(
                "Cannot perform the requested operation on nested resource: the live event '{event}' was not found."
            ),
        )
    })
}

fn unknown_action(action: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "InvalidResourceType",
        format!(
            "The resource type '{action}' could not be found under liveEvents for api version '{STREAMING_API_VERSION}'."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations_parse_to_seconds() {
        assert_eq!(parse_iso_duration("PT5M"), Some(300));
        assert_eq!(parse_iso_duration("PT1H30M"), Some(5400));
        assert_eq!(parse_iso_duration("PT25H"), Some(90_000));
        assert_eq!(parse_iso_duration("P1D"), Some(86_400));
        assert_eq!(parse_iso_duration("PT0.5S"), Some(1));
        for bad in ["", "P", "5M", "PT5", "PTXM", "PT5Q"] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }
}
