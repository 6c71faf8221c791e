//! The media actions: one function per action, each an idempotent `ensure_*` of the media client.

use serde_json::{Value, json};

use super::{ActionError, Request};
use crate::media::{Client, LocatorSpec, ProgramSpec};
use crate::protection::{self, Mode};

/// `channel.start`: the live event running; the result carries its ingest URL.
pub(super) async fn channel_start(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let channel = action.channel();
    let event = media.ensure_channel_running(&action.broadcast.channel_spec(&channel)).await?;
    let ingest =
        event.properties.input.and_then(|input| input.endpoints).and_then(|endpoints| endpoints.into_iter().next());
    Ok(json!({"channel": channel, "state": "Running", "ingest": ingest.and_then(|endpoint| endpoint.url)}))
}

/// `channel.allocate`: the live event allocated (StandBy).
pub(super) async fn channel_allocate(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let channel = action.channel();
    media.ensure_channel_allocated(&action.broadcast.channel_spec(&channel)).await?;
    Ok(json!({"channel": channel, "state": "StandBy"}))
}

/// `channel.stop`: the live event stopped, its outputs removed unless `remove_outputs = false`.
pub(super) async fn channel_stop(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let channel = action.channel();
    let remove_outputs = action.row.params["remove_outputs"].as_bool().unwrap_or(true);
    media.ensure_channel_stopped(&channel, remove_outputs).await?;
    Ok(json!({"channel": channel, "state": "Stopped"}))
}

/// `channel.reset`: the live event reset once for this row.
pub(super) async fn channel_reset(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let channel = action.channel();
    // The row's creation time makes the reset idempotent across restarts.
    media.ensure_channel_reset(&channel, action.row.created).await?;
    Ok(json!({"channel": channel, "reset": true}))
}

/// `program.create`: the asset and the live output recording into it.
pub(super) async fn program_create(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let name = action.name()?;
    let broadcast = action.broadcast;
    let spec = ProgramSpec {
        channel: action.channel(),
        asset: action.text("asset").unwrap_or_else(|| name.clone()),
        manifest_name: action.text("manifest").unwrap_or_else(|| name.clone()),
        archive_window: action.text("archive_window").unwrap_or_else(|| broadcast.archive_window.clone()),
        description: action.text("description").or_else(|| Some(format!("onair broadcast {}", broadcast.id))),
        name: name.clone(),
    };
    media.ensure_program_present(&spec).await?;
    Ok(json!({"program": name, "asset": spec.asset, "manifest": spec.manifest_name}))
}

/// `program.stop`: the live output gone; the asset stays.
pub(super) async fn program_stop(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let name = action.name()?;
    media.ensure_program_removed(&action.channel(), &name).await?;
    Ok(json!({"program": name, "removed": true}))
}

/// `locator.publish`: the streaming locator, after the broadcast's protection policies.
pub(super) async fn locator_publish(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let name = action.name()?;
    let broadcast = action.broadcast;
    let (streaming_policy, content_key_policy) = match publish_policies(media, action).await? {
        Some((streaming, content_key)) => (streaming, Some(content_key)),
        None => (action.text("policy").unwrap_or_else(|| broadcast.streaming_policy.clone()), None),
    };
    let spec = LocatorSpec {
        asset: action.text("asset").unwrap_or_else(|| name.clone()),
        streaming_policy,
        content_key_policy,
        endpoint: action.endpoint(),
        name,
    };
    let published = media.ensure_locator_published(&spec).await?;
    Ok(json!({
        "locator": published.locator,
        "locator_id": published.locator_id,
        "hls": published.hls,
        "dash": published.dash,
        "smooth": published.smooth,
        "streaming_policy": spec.streaming_policy,
        "protection": broadcast.protection.mode.name(),
    }))
}

/// For a protected broadcast, its content key policy and then the streaming policy that uses it:
/// their names (streaming, content key). `None` for a clear broadcast.
async fn publish_policies(media: &Client, action: &Request<'_>) -> Result<Option<(String, String)>, ActionError> {
    let protection = &action.broadcast.protection;
    let Some(policy) = protection.policy.as_ref().filter(|_| protection.mode != Mode::Clear) else {
        return Ok(None);
    };
    let mode = protection.mode;
    // Keys first, then the policy that uses them, then the locator: each step converges on its
    // own, so a crash between two of them repeats nothing.
    media.ensure_content_key_policy(&policy.name, &policy.content_key_policy(mode)).await?;
    let streaming = protection::streaming_policy_name(mode, &policy.name);
    let body = protection::streaming_policy(mode, &policy.name)
        .map_err(|error| ActionError::permanent("BadParameter", format!("streaming policy {streaming}: {error}")))?;
    media.ensure_streaming_policy(&streaming, &body).await?;
    Ok(Some((streaming, policy.name.clone())))
}

/// `locator.unpublish`: the streaming locator gone.
pub(super) async fn locator_unpublish(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let name = action.name()?;
    media.ensure_locator_removed(&name).await?;
    Ok(json!({"locator": name, "removed": true}))
}

/// `endpoint.start`: the streaming endpoint running.
pub(super) async fn endpoint_start(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let endpoint = action.endpoint();
    media.ensure_endpoint_running(&action.broadcast.endpoint_spec(&endpoint)).await?;
    Ok(json!({"endpoint": endpoint, "state": "Running"}))
}

/// `endpoint.stop`: the streaming endpoint stopped.
pub(super) async fn endpoint_stop(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let endpoint = action.endpoint();
    media.ensure_endpoint_stopped(&endpoint).await?;
    Ok(json!({"endpoint": endpoint, "state": "Stopped"}))
}

/// `endpoint.scale`: the streaming endpoint at `units` scale units (created first if absent).
pub(super) async fn endpoint_scale(media: &Client, action: &Request<'_>) -> Result<Value, ActionError> {
    let endpoint = action.endpoint();
    let units = &action.row.params["units"];
    let units = units.as_i64().and_then(|units| i32::try_from(units).ok()).ok_or_else(|| {
        ActionError::permanent("BadParameter", format!("endpoint.scale needs whole units, not {units}"))
    })?;
    if media.get_streaming_endpoint(&endpoint).await?.is_none() {
        media.ensure_endpoint_running(&action.broadcast.endpoint_spec(&endpoint)).await?;
    }
    media.ensure_endpoint_scaled(&endpoint, units).await?;
    Ok(json!({"endpoint": endpoint, "units": units}))
}
