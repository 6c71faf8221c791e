//! A broadcast lifecycle through the ensure-operations, against the emulator over real HTTP.

use std::time::Duration;

use onair::emulator::LoggedRequest;
use onair::media::model::{LiveEventState, StreamingEndpointState};
use onair::media::{ChannelSpec, EndpointSpec, LocatorSpec, ProgramSpec};

use crate::helpers::{TestEmulator, emulator_settings};

pub fn program(name: &str) -> ProgramSpec {
    ProgramSpec {
        channel: "news".into(),
        name: name.into(),
        asset: name.into(),
        archive_window: "PT1H".into(),
        manifest_name: name.into(),
        description: Some("evening news".into()),
    }
}

pub fn locator(name: &str) -> LocatorSpec {
    LocatorSpec {
        name: name.into(),
        asset: name.into(),
        content_key_policy: None,
        streaming_policy: "Predefined_ClearStreamingOnly".into(),
        endpoint: "default".into(),
    }
}

/// Runs the whole lifecycle; returns the HLS and DASH URLs.
pub async fn run_lifecycle(client: &onair::media::Client) -> (String, String) {
    let occurrence = "news-20261124t1800z";
    let channel = client.ensure_channel_running(&ChannelSpec::new("news")).await.expect("channel running");
    assert_eq!(channel.properties.resource_state, Some(LiveEventState::Running));
    client
        .ensure_endpoint_running(&EndpointSpec { name: "default".into(), scale_units: 1, description: None })
        .await
        .expect("endpoint running");
    let scaled = client.ensure_endpoint_scaled("default", 3).await.expect("scaled up");
    assert_eq!(scaled.properties.scale_units, Some(3));
    client.ensure_program_present(&program(occurrence)).await.expect("program present");
    let published = client.ensure_locator_published(&locator(occurrence)).await.expect("locator published");
    client.ensure_program_removed("news", occurrence).await.expect("program removed");
    client.ensure_channel_stopped("news", false).await.expect("channel stopped");
    let back = client.ensure_endpoint_scaled("default", 1).await.expect("scaled back");
    assert_eq!(back.properties.scale_units, Some(1));
    (published.hls.expect("HLS URL"), published.dash.expect("DASH URL"))
}

/// The writes in the log, as `METHOD tail` (tail under the account), in order.
pub fn writes(requests: &[LoggedRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|entry| entry.method != "GET" && entry.path.starts_with("/subscriptions/"))
        .filter(|entry| !entry.path.to_lowercase().ends_with("/listpaths"))
        .map(|entry| {
            let tail = entry.path.split_once("/mediaservices/").map(|(_, tail)| tail).unwrap_or_default();
            let tail = tail.split_once('/').map(|(_, tail)| tail).unwrap_or_default();
            format!("{} {tail}", entry.method)
        })
        .collect()
}

#[tokio::test]
async fn a_full_lifecycle_writes_each_resource_once() {
    let mut settings = emulator_settings();
    settings.transition = Duration::from_millis(30);
    let emulator = TestEmulator::start(settings).await;
    let client = emulator.client();

    let (hls, dash) = run_lifecycle(&client).await;

    let locator =
        client.get_streaming_locator("news-20261124t1800z").await.unwrap().expect("locator kept for on-demand");
    let id = locator.properties.streaming_locator_id.unwrap();
    let host = "default-testmedia.streaming.mediaservices.windows.net";
    assert_eq!(hls, format!("https://{host}/{id}/news-20261124t1800z.ism/manifest(format=m3u8-aapl)"));
    assert_eq!(dash, format!("https://{host}/{id}/news-20261124t1800z.ism/manifest(format=mpd-time-csf)"));

    let channel = client.get_live_event("news").await.unwrap().unwrap();
    assert_eq!(channel.properties.resource_state, Some(LiveEventState::Stopped));
    let endpoint = client.get_streaming_endpoint("default").await.unwrap().unwrap();
    assert_eq!(endpoint.properties.resource_state, Some(StreamingEndpointState::Running));
    assert!(client.get_live_output("news", "news-20261124t1800z").await.unwrap().is_none());
    assert!(client.get_asset("news-20261124t1800z").await.unwrap().is_some(), "the asset stays for on-demand viewing");

    let occurrence = "news-20261124t1800z";
    assert_eq!(
        writes(&emulator.requests()),
        vec![
            "PUT liveEvents/news".to_string(),
            "POST streamingEndpoints/default/start".into(),
            "POST streamingEndpoints/default/scale".into(),
            format!("PUT assets/{occurrence}"),
            format!("PUT liveEvents/news/liveOutputs/{occurrence}"),
            format!("PUT streamingLocators/{occurrence}"),
            format!("DELETE liveEvents/news/liveOutputs/{occurrence}"),
            "POST liveEvents/news/stop".into(),
            "POST streamingEndpoints/default/scale".into(),
        ],
        "each creating write exactly once, and nothing else written"
    );
    let tokens = emulator.requests().iter().filter(|entry| entry.path.ends_with("/oauth2/v2.0/token")).count();
    assert_eq!(tokens, 1, "the token is cached");
    println!("lifecycle: {} requests, {} writes", emulator.arm_requests().len(), writes(&emulator.requests()).len());
}

#[tokio::test]
async fn repeating_the_lifecycle_writes_nothing_new_where_the_goal_holds() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let client = emulator.client();
    client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    client
        .ensure_endpoint_running(&EndpointSpec { name: "default".into(), scale_units: 1, description: None })
        .await
        .unwrap();
    client.ensure_program_present(&program("p1")).await.unwrap();
    client.ensure_locator_published(&locator("p1")).await.unwrap();
    let before = writes(&emulator.requests()).len();
    // The same operations again, as after a crash: only reads.
    client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    client
        .ensure_endpoint_running(&EndpointSpec { name: "default".into(), scale_units: 1, description: None })
        .await
        .unwrap();
    client.ensure_program_present(&program("p1")).await.unwrap();
    let again = client.ensure_locator_published(&locator("p1")).await.unwrap();
    assert!(again.hls.is_some());
    assert_eq!(writes(&emulator.requests()).len(), before);
}

#[tokio::test]
async fn a_client_dropped_during_a_start_is_finished_by_a_fresh_one_without_a_second_start() {
    let mut settings = emulator_settings();
    settings.transition = Duration::from_millis(400);
    let emulator = TestEmulator::start(settings).await;
    let first = emulator.client();
    let (_, lro) =
        first.create_live_event("news", &ChannelSpec::new("news").to_resource("westeurope"), false).await.unwrap();
    first.wait(&lro).await.unwrap();

    let in_flight = tokio::spawn(async move { first.ensure_channel_running(&ChannelSpec::new("news")).await });
    let is_start = |entry: &LoggedRequest| entry.method == "POST" && entry.path.ends_with("/liveEvents/news/start");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !emulator.requests().iter().any(is_start) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the start request was sent");
    in_flight.abort();
    assert!(in_flight.await.unwrap_err().is_cancelled());

    let fresh = emulator.client();
    let channel = fresh.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    assert_eq!(channel.properties.resource_state, Some(LiveEventState::Running));
    let starts = emulator.requests().iter().filter(|entry| is_start(entry)).count();
    assert_eq!(starts, 1, "no second start request");
}

#[tokio::test]
async fn tokens_are_refreshed_before_expiry_and_once_for_concurrent_callers() {
    let mut settings = emulator_settings();
    settings.token_ttl = Duration::from_secs(2);
    let emulator = TestEmulator::start(settings).await;
    let client = emulator.client();

    let calls: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get_live_event("nothing").await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap().is_none());
    }
    let token_requests = |emulator: &TestEmulator| {
        emulator.requests().iter().filter(|entry| entry.path.ends_with("/oauth2/v2.0/token")).count()
    };
    assert_eq!(token_requests(&emulator), 1, "one refresh at a time");

    // Past four fifths of the lifetime, the next call refreshes first: no 401 is ever seen.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    client.get_live_event("nothing").await.unwrap();
    assert_eq!(token_requests(&emulator), 2);
    assert!(emulator.requests().iter().all(|entry| entry.status != 401));
}

#[tokio::test]
async fn a_failed_long_running_operation_surfaces_the_providers_error() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let client = emulator.client();
    emulator
        .emulator
        .set_faults(onair::emulator::Faults {
            lro_fail_next: 1,
            lro_failure_code: "InsufficientCapacity".into(),
            ..onair::emulator::Faults::none()
        })
        .unwrap();
    let error = client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap_err();
    match &error {
        onair::media::Error::OperationFailed { code, status, .. } => {
            assert_eq!(code, "InsufficientCapacity");
            assert_eq!(status, "Failed");
        }
        other => panic!("expected OperationFailed, got {other:?}"),
    }
    assert_eq!(error.code(), Some("InsufficientCapacity"));
    // The failed create left nothing behind; a second attempt succeeds.
    assert!(client.get_live_event("news").await.unwrap().is_none());
    client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
}

#[tokio::test]
async fn a_reset_is_not_repeated_once_done() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let client = emulator.client();
    client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    client.ensure_program_present(&program("p1")).await.unwrap();
    let requested_at = onair::clock::Clock::now(&onair::clock::SystemClock);
    client.ensure_channel_reset("news", requested_at).await.unwrap();
    assert!(client.get_live_output("news", "p1").await.unwrap().is_none(), "a reset deletes the live outputs");
    // The same request again (after a crash, say): the channel changed since, so no second reset.
    client.ensure_channel_reset("news", requested_at).await.unwrap();
    let resets = emulator.requests().iter().filter(|entry| entry.path.ends_with("/reset")).count();
    assert_eq!(resets, 1);
}

#[tokio::test]
async fn allocation_and_unpublishing_are_idempotent_too() {
    let mut settings = emulator_settings();
    settings.transition = Duration::from_millis(20);
    let emulator = TestEmulator::start(settings).await;
    let client = emulator.client();
    let allocated = client.ensure_channel_allocated(&ChannelSpec::new("news")).await.unwrap();
    assert_eq!(allocated.properties.resource_state, Some(LiveEventState::StandBy));
    let ingest = allocated.properties.input.unwrap().endpoints.unwrap();
    assert!(!ingest.is_empty(), "an allocated channel has its ingest URLs");
    client.ensure_channel_allocated(&ChannelSpec::new("news")).await.unwrap();
    // From StandBy, running is one start away.
    client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    client.ensure_program_present(&program("p1")).await.unwrap();
    client.ensure_locator_published(&locator("p1")).await.unwrap();
    client.ensure_locator_removed("p1").await.unwrap();
    client.ensure_locator_removed("p1").await.unwrap();
    assert!(client.get_streaming_locator("p1").await.unwrap().is_none());
    let writes = writes(&emulator.requests());
    assert_eq!(writes.iter().filter(|write| *write == "PUT liveEvents/news").count(), 1);
    assert_eq!(writes.iter().filter(|write| write.ends_with("/allocate")).count(), 1);
    assert_eq!(writes.iter().filter(|write| write.ends_with("/start")).count(), 1);
    assert_eq!(writes.iter().filter(|write| write.starts_with("DELETE streamingLocators/p1")).count(), 2);
}
