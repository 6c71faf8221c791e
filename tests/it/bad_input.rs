//! Bad input gets a 4xx ARM error with a code and a message, the client turns it into a typed
//! error, and nothing panics: the emulator answers the next request as usual.

use std::time::Duration;

use onair::media::{ChannelSpec, Error, LiveEventAction};
use reqwest::Method;

use crate::helpers::{TestEmulator, assert_arm_error, emulator_settings};

const STREAMING: &str = "api-version=2022-11-01";
const METADATA: &str = "api-version=2023-01-01";

type Case<'a> = (&'a str, Method, String, Option<&'a str>, u16, &'a str);

#[tokio::test]
async fn malformed_requests_get_arm_errors() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let event = |name: &str| emulator.test_url(&format!("liveEvents/{name}?{STREAMING}"));
    let valid = r#"{"location": "westeurope", "properties": {"input": {"streamingProtocol": "RTMP"}}}"#;

    // (what, method, URL, body, status, error code)
    let cases: Vec<Case<'_>> = vec![
        ("malformed JSON", Method::PUT, event("news"), Some("{not json"), 400, "InvalidRequestContent"),
        ("empty body", Method::PUT, event("news"), Some(""), 400, "InvalidRequestContent"),
        ("wrong shape", Method::PUT, event("news"), Some(r#"{"properties": []}"#), 400, "InvalidRequestContent"),
        (
            "no location",
            Method::PUT,
            event("news"),
            Some(r#"{"properties": {"input": {"streamingProtocol": "RTMP"}}}"#),
            400,
            "LocationRequired",
        ),
        (
            "bad protocol",
            Method::PUT,
            event("news"),
            Some(r#"{"location": "x", "properties": {"input": {"streamingProtocol": "SRT"}}}"#),
            400,
            "BadRequest",
        ),
        (
            "unknown api-version",
            Method::GET,
            emulator.test_url("liveEvents?api-version=2018-07-01"),
            None,
            400,
            "InvalidApiVersionParameter",
        ),
        (
            "metadata version on streaming",
            Method::GET,
            emulator.test_url(&format!("liveEvents?{METADATA}")),
            None,
            400,
            "InvalidApiVersionParameter",
        ),
        ("missing api-version", Method::GET, emulator.test_url("assets"), None, 400, "MissingApiVersionParameter"),
        ("name with underscore", Method::PUT, event("bad_name"), Some(valid), 400, "InvalidResourceName"),
        ("name too long", Method::PUT, event(&"x".repeat(33)), Some(valid), 400, "InvalidResourceName"),
        ("leading hyphen", Method::PUT, event("-news"), Some(valid), 400, "InvalidResourceName"),
        (
            "unknown action",
            Method::POST,
            emulator.test_url(&format!("liveEvents/news/explode?{STREAMING}")),
            None,
            404,
            "InvalidResourceType",
        ),
        (
            "unknown resource type",
            Method::GET,
            emulator.test_url(&format!("transforms?{STREAMING}")),
            None,
            404,
            "InvalidResourceType",
        ),
        (
            "live output without its live event",
            Method::GET,
            emulator.test_url(&format!("liveEvents/none/liveOutputs?{STREAMING}")),
            None,
            404,
            "ParentResourceNotFound",
        ),
        ("missing resource", Method::GET, event("absent"), None, 404, "ResourceNotFound"),
        (
            "method not allowed",
            Method::PATCH,
            emulator.test_url(&format!("streamingLocators/x?{METADATA}")),
            Some("{}"),
            405,
            "MethodNotAllowed",
        ),
        (
            "scale out of range",
            Method::POST,
            emulator.test_url(&format!("streamingEndpoints/default/scale?{STREAMING}")),
            Some(r#"{"scaleUnit": 99}"#),
            400,
            "BadRequest",
        ),
        (
            "stop without its body",
            Method::POST,
            emulator.test_url(&format!("liveEvents/absent/stop?{STREAMING}")),
            None,
            400,
            "InvalidRequestContent",
        ),
        (
            "locator of a missing asset",
            Method::PUT,
            emulator.test_url(&format!("streamingLocators/l?{METADATA}")),
            Some(r#"{"properties": {"assetName": "none", "streamingPolicyName": "Predefined_ClearStreamingOnly"}}"#),
            400,
            "AssetNotFound",
        ),
        (
            "live output archive window too long",
            Method::PUT,
            emulator.test_url(&format!("liveEvents/none/liveOutputs/o?{STREAMING}")),
            Some(r#"{"properties": {"assetName": "a", "archiveWindowLength": "PT26H"}}"#),
            400,
            "BadRequest",
        ),
    ];
    for (what, method, url, body, status, code) in cases {
        let (answered, error) = emulator.raw(method, &url, body).await;
        assert_eq!(answered, status, "{what}: {error}");
        assert_arm_error(&error, code);
    }
    // Still serving.
    let (status, _) = emulator.raw(Method::PUT, &event("news"), Some(valid)).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn illegal_transitions_are_refused_with_the_state_in_the_message() {
    let mut settings = emulator_settings();
    settings.transition = Duration::from_millis(300);
    let emulator = TestEmulator::start(settings).await;
    let client = emulator.client();
    let (_, lro) =
        client.create_live_event("news", &ChannelSpec::new("news").to_resource("westeurope"), false).await.unwrap();
    client.wait(&lro).await.unwrap();

    let refusal = |result: Result<onair::media::Lro, Error>| match result {
        Err(Error::Api { status, code, message, .. }) => (status, code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (status, code, message) = refusal(client.live_event_action("news", LiveEventAction::Reset).await);
    assert_eq!((status, code.as_str()), (409, "InvalidOperation"));
    assert!(message.contains("Stopped"), "{message}");

    client.live_event_action("news", LiveEventAction::Start).await.unwrap();
    let (status, code, message) = refusal(client.live_event_action("news", LiveEventAction::Allocate).await);
    assert_eq!((status, code.as_str()), (409, "OperationInProgress"));
    assert!(message.contains("Starting"), "{message}");
    // An operation in progress is worth re-reading; a wrong state is not.
    assert!(Error::Api { operation: String::new(), status, code, message }.is_transient());

    let running = client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    assert_eq!(running.properties.resource_state, Some(onair::media::model::LiveEventState::Running));
    let (status, code, _) = refusal(client.delete_live_event("news").await);
    assert_eq!((status, code.as_str()), (409, "InvalidOperation"));

    // A live output makes a plain stop illegal; removeOutputsOnStop allows it.
    client.ensure_program_present(&crate::lifecycle::program("p1")).await.unwrap();
    let (status, code, message) = refusal(client.stop_live_event("news", false).await);
    assert_eq!((status, code.as_str()), (409, "InvalidOperation"));
    assert!(message.contains("removeOutputsOnStop"), "{message}");
    client.ensure_channel_stopped("news", true).await.unwrap();
    assert!(client.list_live_outputs("news").await.unwrap().is_empty());

    // A live output needs a running live event.
    let error = client.ensure_program_present(&crate::lifecycle::program("p2")).await.unwrap_err();
    assert_eq!(error.code(), Some("InvalidOperation"), "{error}");
}

#[tokio::test]
async fn quotas_and_the_body_limit_are_enforced() {
    let mut settings = emulator_settings();
    settings.quotas.live_events = 2;
    settings.max_body_bytes = 2048;
    let emulator = TestEmulator::start(settings).await;
    let client = emulator.client();
    for name in ["one", "two"] {
        client.create_live_event(name, &ChannelSpec::new(name).to_resource("westeurope"), false).await.unwrap();
    }
    let error = client
        .create_live_event("three", &ChannelSpec::new("three").to_resource("westeurope"), false)
        .await
        .unwrap_err();
    assert!(matches!(&error, Error::Api { status: 403, code, .. } if code == "ExceededResourceQuota"), "{error}");

    let big = format!(r#"{{"properties": {{"description": "{}"}}}}"#, "x".repeat(4096));
    let (status, body) =
        emulator.raw(Method::PUT, &emulator.test_url(&format!("assets/big?{METADATA}")), Some(&big)).await;
    assert_eq!(status, 413);
    assert_arm_error(&body, "RequestBodyTooLarge");
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let url = emulator.test_url(&format!("liveEvents?{STREAMING}"));
    let http = reqwest::Client::new();
    let missing = http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_arm_error(&missing.json().await.unwrap(), "AuthenticationFailed");
    let forged = http.get(&url).bearer_auth("emu.forged").send().await.unwrap();
    assert_eq!(forged.status(), 401);
    assert_arm_error(&forged.json().await.unwrap(), "InvalidAuthenticationToken");

    let mut settings = emulator.media_settings();
    settings.client_secret = Some(secrecy::SecretString::from("wrong"));
    let client = onair::media::Client::new(&settings).unwrap();
    match client.get_live_event("news").await {
        Err(Error::Token { reason }) => {
            assert!(reason.starts_with("invalid_client"), "{reason}");
            assert!(!reason.contains("wrong"), "the secret is not echoed: {reason}");
        }
        other => panic!("expected a token error, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_tokens_are_refused_and_the_client_recovers() {
    let mut settings = emulator_settings();
    settings.token_ttl = Duration::from_secs(1);
    let emulator = TestEmulator::start(settings).await;
    let token = emulator.token().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = reqwest::Client::new()
        .get(emulator.test_url(&format!("liveEvents?{STREAMING}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    assert_arm_error(&expired.json().await.unwrap(), "ExpiredAuthenticationToken");
}

#[tokio::test]
async fn the_client_names_what_is_missing_in_its_settings() {
    let mut settings = onair::daemon::load(&onair::config::Source::default()).unwrap().media;
    settings.account = Some("a".into());
    match onair::media::Client::new(&settings) {
        Err(Error::Incomplete { missing }) => {
            assert!(missing.contains(&"media.token_url") && missing.contains(&"media.subscription_id"), "{missing:?}");
            assert!(!missing.contains(&"media.account"));
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
}
