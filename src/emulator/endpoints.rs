//! Streaming endpoints: Stopped ↔ (Starting) Running ↔ (Stopping) Stopped, and (Scaling) while a
//! running endpoint changes its scale units. A stopped endpoint is rescaled at once (200).
//! Every account has a `default` endpoint, Stopped, from its first use.

use std::collections::BTreeMap;

use axum::http::StatusCode;

use crate::media::model::{STREAMING_API_VERSION, ScaleUnit, StreamingEndpoint, StreamingEndpointState};

use super::arm::{self, ArmError, ArmRequest, ArmResult, Reply};
use super::resources::Family;
use super::state::{Account, AccountId, Effect, Entry, Env, OperationKind, Outcome, Pending, endpoint_host};

/// The largest `scaleUnit` accepted (the default quota of premium streaming units).
const MAX_SCALE_UNITS: i32 = 10;

type EndpointEntry = Entry<StreamingEndpoint, StreamingEndpointState>;

/// The streaming endpoints of an account.
pub(crate) struct StreamingEndpoints;

impl Family for StreamingEndpoints {
    type Item = EndpointEntry;
    type View = StreamingEndpoint;

    fn kind(&self) -> String {
        "streamingEndpoints".into()
    }

    fn items<'a>(&self, account: &'a Account) -> Result<&'a BTreeMap<String, EndpointEntry>, ArmError> {
        Ok(&account.streaming_endpoints)
    }

    fn view(&self, entry: &EndpointEntry) -> StreamingEndpoint {
        entry.resource.clone()
    }
}

/// `PUT`: create (201, long-running, optionally started) or update a settled endpoint (200).
pub(crate) fn put(account: &mut Account, env: &mut Env<'_>, name: &str, request: &ArmRequest<'_>) -> ArmResult {
    arm::check_name("streaming endpoint", name, 24)?;
    let body: StreamingEndpoint = request.json()?;
    let auto_start = request.auto_start()?;
    if let Some(entry) = account.streaming_endpoints.get_mut(&name.to_lowercase()) {
        update(entry, env, name, body)?;
        return Ok(Reply::ok(&entry.resource));
    }
    ArmError::check_quota(account.streaming_endpoints.len(), env.quotas().streaming_endpoints, "streaming endpoints")?;
    let location = ArmError::require_location(body.location.as_ref())?;
    let mut properties = body.properties;
    let units = properties.scale_units.ok_or_else(|| ArmError::bad_request("properties.scaleUnits is required."))?;
    check_units(units)?;
    properties.host_name = Some(endpoint_host(name, &account.id.name));
    properties.custom_host_names.get_or_insert_with(Vec::new);
    properties.cdn_enabled.get_or_insert(false);
    properties.cdn_profile.get_or_insert_with(String::new);
    properties.free_trial_end_time.get_or_insert_with(|| "0001-01-01T00:00:00Z".into());
    properties.provisioning_state = Some("InProgress".into());
    properties.resource_state = Some(StreamingEndpointState::Creating);
    properties.created = Some(env.wall.clone());
    properties.last_modified = Some(env.wall.clone());
    let resource = StreamingEndpoint {
        name: Some(name.to_string()),
        id: Some(format!("{}/streamingendpoints/{name}", account.id.base())),
        kind: Some("Microsoft.Media/mediaservices/streamingEndpoints".into()),
        location: Some(location),
        tags: Some(body.tags.unwrap_or_default()),
        properties,
        sku: body.sku,
        system_data: Some(env.system_data(None)),
    };
    use StreamingEndpointState as S;
    let (phases, success) = if auto_start {
        (vec![S::Creating, S::Starting], Outcome::to(S::Running))
    } else {
        (vec![S::Creating], Outcome::to(S::Stopped))
    };
    let pending = env.start(
        OperationKind::StreamingEndpoint,
        &account.id.key(),
        (name.to_string(), None),
        phases,
        success,
        Outcome::removed(),
    );
    let headers = headers(env, &account.id, name, &pending);
    let reply = Reply::json(StatusCode::CREATED, &resource).with_headers(headers);
    account.streaming_endpoints.insert(name.to_lowercase(), Entry { resource, pending: Some(pending) });
    Ok(reply)
}

pub(crate) fn patch(account: &mut Account, env: &mut Env<'_>, name: &str, request: &ArmRequest<'_>) -> ArmResult {
    let body: StreamingEndpoint = request.json()?;
    let id = account.id.clone();
    let entry = account
        .streaming_endpoints
        .get_mut(&name.to_lowercase())
        .ok_or_else(|| ArmError::not_found("streamingEndpoints", name, &id))?;
    update(entry, env, name, body)?;
    Ok(Reply::ok(&entry.resource))
}

pub(crate) fn delete(account: &mut Account, env: &mut Env<'_>, name: &str) -> ArmResult {
    let id = account.id.clone();
    let Some(entry) = account.streaming_endpoints.get_mut(&name.to_lowercase()) else {
        return Ok(Reply::empty(StatusCode::NO_CONTENT));
    };
    let state = state_of(entry);
    if entry.pending.is_some() {
        return Err(ArmError::in_progress("streaming endpoint", name, state));
    }
    if state != StreamingEndpointState::Stopped {
        return Err(ArmError::invalid_state(format!(
            "The streaming endpoint '{name}' is {state}; stop it before deleting it."
        )));
    }
    let pending = env.start(
        OperationKind::StreamingEndpoint,
        &id.key(),
        (name.to_string(), None),
        vec![StreamingEndpointState::Deleting],
        Outcome::removed(),
        Outcome::to(StreamingEndpointState::Stopped),
    );
    begin(entry, pending, env, &id, name)
}

/// `POST start|stop|scale`.
pub(crate) fn action(
    account: &mut Account,
    env: &mut Env<'_>,
    name: &str,
    action: &str,
    request: &ArmRequest<'_>,
) -> ArmResult {
    let id = account.id.clone();
    let action = action.to_lowercase();
    let units = match action.as_str() {
        "scale" => {
            let body: ScaleUnit = request.json()?;
            let units = body.scale_unit.ok_or_else(|| ArmError::bad_request("scaleUnit is required."))?;
            check_units(units)?;
            Some(units)
        }
        "start" | "stop" => None,
        other => {
            return Err(ArmError::new(
                StatusCode::NOT_FOUND,
                "InvalidResourceType",
                format!(
                    "The resource type '{other}' could not be found under streamingEndpoints for api version '{STREAMING_API_VERSION}'."
                ),
            ));
        }
    };
    let entry = account
        .streaming_endpoints
        .get_mut(&name.to_lowercase())
        .ok_or_else(|| ArmError::not_found("streamingEndpoints", name, &id))?;
    let state = state_of(entry);
    if entry.pending.is_some() {
        return Err(ArmError::in_progress("streaming endpoint", name, state));
    }
    use StreamingEndpointState as S;
    let current_units = entry.resource.properties.scale_units.unwrap_or(0);
    let (phases, success, failure) = match (action.as_str(), &state, units) {
        ("start", S::Running, _) | ("stop", S::Stopped, _) => {
            return Ok(Reply::empty(StatusCode::OK));
        }
        ("scale", S::Running | S::Stopped, Some(units)) if units == current_units => {
            return Ok(Reply::empty(StatusCode::OK));
        }
        ("scale", S::Stopped, Some(units)) => {
            entry.resource.properties.scale_units = Some(units);
            entry.resource.properties.last_modified = Some(env.wall.clone());
            return Ok(Reply::empty(StatusCode::OK));
        }
        ("scale", S::Running, Some(units)) => {
            (vec![S::Scaling], Outcome::to(S::Running).with(Effect::ScaleUnits(units)), Outcome::to(S::Running))
        }
        ("start", S::Stopped, _) => (vec![S::Starting], Outcome::to(S::Running), Outcome::to(S::Stopped)),
        ("stop", S::Running, _) => (vec![S::Stopping], Outcome::to(S::Stopped), Outcome::to(S::Running)),
        (action, state, _) => {
            return Err(ArmError::invalid_state(format!(
                "Cannot {action} the streaming endpoint '{name}' while it is {state}."
            )));
        }
    };
    let pending =
        env.start(OperationKind::StreamingEndpoint, &id.key(), (name.to_string(), None), phases, success, failure);
    begin(entry, pending, env, &id, name)
}

fn update(entry: &mut EndpointEntry, env: &Env<'_>, name: &str, body: StreamingEndpoint) -> Result<(), ArmError> {
    if entry.pending.is_some() {
        return Err(ArmError::in_progress("streaming endpoint", name, state_of(entry)));
    }
    if let Some(tags) = body.tags {
        entry.resource.tags = Some(tags);
    }
    let update = body.properties;
    let properties = &mut entry.resource.properties;
    if update.description.is_some() {
        properties.description = update.description;
    }
    if update.access_control.is_some() {
        properties.access_control = update.access_control;
    }
    if update.max_cache_age.is_some() {
        properties.max_cache_age = update.max_cache_age;
    }
    if update.custom_host_names.is_some() {
        properties.custom_host_names = update.custom_host_names;
    }
    if update.cross_site_access_policies.is_some() {
        properties.cross_site_access_policies = update.cross_site_access_policies;
    }
    properties.last_modified = Some(env.wall.clone());
    Ok(())
}

fn begin(
    entry: &mut EndpointEntry,
    pending: Pending<StreamingEndpointState>,
    env: &Env<'_>,
    id: &AccountId,
    name: &str,
) -> ArmResult {
    let headers = headers(env, id, name, &pending);
    if let Some(first) = pending.phases.first() {
        entry.resource.properties.resource_state = Some(first.clone());
        entry.resource.properties.provisioning_state = Some("InProgress".into());
    }
    entry.pending = Some(pending);
    Ok(Reply::empty(StatusCode::ACCEPTED).with_headers(headers))
}

fn headers(
    env: &Env<'_>,
    id: &AccountId,
    name: &str,
    pending: &Pending<StreamingEndpointState>,
) -> Vec<(String, String)> {
    arm::lro_headers(env, id, "streamingendpointoperations", &format!("streamingendpoints/{name}"), &pending.operation)
}

fn check_units(units: i32) -> Result<(), ArmError> {
    if (0..=MAX_SCALE_UNITS).contains(&units) {
        Ok(())
    } else {
        Err(ArmError::bad_request(format!("Scale units must be between 0 and {MAX_SCALE_UNITS}, not {units}.")))
    }
}

fn state_of(entry: &EndpointEntry) -> StreamingEndpointState {
    entry.resource.properties.resource_state.clone().unwrap_or(StreamingEndpointState::Stopped)
}
