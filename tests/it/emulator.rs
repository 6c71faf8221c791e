//! Emulator behaviours beyond the lifecycle: accounts, paging, operations, policies, faults,
//! introspection and snapshots.

use std::time::Duration;

use onair::emulator::{Emulator, Faults};
use onair::media::model::StreamingEndpointState;
use onair::media::{ChannelSpec, LocatorSpec, ProgramSpec};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestEmulator, emulator_settings};

const STREAMING: &str = "api-version=2022-11-01";
const METADATA: &str = "api-version=2023-01-01";

#[tokio::test]
async fn any_account_exists_on_first_use_with_a_stopped_default_endpoint() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let url = emulator.url("sub-1", "RG-One", "Account1", &format!("streamingEndpoints?{STREAMING}"));
    let (status, body) = emulator.raw(Method::GET, &url, None).await;
    assert_eq!(status, 200);
    let endpoints = body["value"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["name"], "default");
    assert_eq!(endpoints[0]["properties"]["resourceState"], "Stopped");
    assert_eq!(endpoints[0]["properties"]["hostName"], "default-account1.streaming.mediaservices.windows.net");

    // Paths are case-insensitive: the same account, spelled differently.
    let lower = format!(
        "{}/subscriptions/sub-1/resourcegroups/rg-one/providers/microsoft.media/MEDIASERVICES/account1/STREAMINGENDPOINTS/Default?{STREAMING}",
        emulator.base
    );
    let (status, body) = emulator.raw(Method::GET, &lower, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "default");
}

#[tokio::test]
async fn lists_are_paged_with_top_and_next_links() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let client = emulator.client();
    for index in 0..7 {
        client.put_asset(&format!("asset-{index}"), &Default::default()).await.unwrap();
    }
    let (status, page) =
        emulator.raw(Method::GET, &emulator.test_url(&format!("assets?{METADATA}&$top=3")), None).await;
    assert_eq!(status, 200);
    assert_eq!(page["value"].as_array().unwrap().len(), 3);
    let next = page["@odata.nextLink"].as_str().unwrap().to_string();
    let (_, second) = emulator.raw(Method::GET, &next, None).await;
    assert_eq!(second["value"][0]["name"], "asset-3");
    // The client follows the links.
    assert_eq!(client.list_assets().await.unwrap().len(), 7);
    let (_, bad) = emulator.raw(Method::GET, &emulator.test_url(&format!("assets?{METADATA}&$top=zero")), None).await;
    assert_eq!(bad["error"]["code"], "BadRequest");
}

#[tokio::test]
async fn operations_report_progress_then_the_outcome() {
    let mut settings = emulator_settings();
    settings.transition = Duration::from_millis(300);
    let emulator = TestEmulator::start(settings).await;
    let token = emulator.token().await;
    let http = reqwest::Client::new();
    let created = http
        .put(emulator.test_url(&format!("liveEvents/news?{STREAMING}&autoStart=true")))
        .bearer_auth(&token)
        .json(&ChannelSpec::new("news").to_resource("westeurope"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let operation = created.headers()["azure-asyncoperation"].to_str().unwrap().to_string();
    let location = created.headers()["location"].to_str().unwrap().to_string();
    assert!(operation.starts_with(&emulator.base) && operation.contains("/liveeventoperations/"), "{operation}");
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["properties"]["resourceState"], "Creating");
    assert_eq!(body["properties"]["provisioningState"], "InProgress");

    let get = |url: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, progress) = get(operation.clone()).await;
    assert_eq!((status, progress["status"].as_str()), (200, Some("InProgress")));
    assert_eq!(progress["error"]["code"], "None");
    assert_eq!(get(location.clone()).await.0, 202);
    let (_, resource) = get(emulator.test_url(&format!("liveEvents/news?{STREAMING}"))).await;
    assert_eq!(resource["properties"]["resourceState"], "Creating");

    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, resource) = get(emulator.test_url(&format!("liveEvents/news?{STREAMING}"))).await;
    assert_eq!(resource["properties"]["resourceState"], "Starting", "create with autoStart goes on to start");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get(operation).await.1["status"], "Succeeded");
    let (status, resource) = get(location).await;
    assert_eq!(status, 200);
    assert_eq!(resource["properties"]["resourceState"], "Running");
    assert!(
        resource["properties"]["input"]["endpoints"][0]["url"].as_str().unwrap().starts_with("rtmp://news-testmedia.")
    );

    let (status, missing) = get(emulator.test_url(&format!("liveEventOperations/unknown?{STREAMING}"))).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "OperationNotFound");
}

#[tokio::test]
async fn locator_paths_follow_the_policy_and_the_live_outputs_manifest() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let client = emulator.client();
    client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    let program = ProgramSpec {
        channel: "news".into(),
        name: "evening".into(),
        asset: "evening-asset".into(),
        archive_window: "PT30M".into(),
        manifest_name: "evening-manifest".into(),
        description: None,
    };
    client.ensure_program_present(&program).await.unwrap();
    let locator = |name: &str, policy: &str| LocatorSpec {
        name: name.into(),
        asset: "evening-asset".into(),
        streaming_policy: policy.into(),
        content_key_policy: None,
        endpoint: "default".into(),
    };
    client.ensure_locator_published(&locator("clear", "Predefined_ClearStreamingOnly")).await.unwrap();
    let paths = client.list_paths("clear").await.unwrap();
    let protocols: Vec<(&str, &str)> = paths
        .streaming_paths
        .iter()
        .map(|path| (path.streaming_protocol.as_str(), path.encryption_scheme.as_str()))
        .collect();
    assert_eq!(protocols, [("Hls", "NoEncryption"), ("Dash", "NoEncryption"), ("SmoothStreaming", "NoEncryption")]);
    assert!(paths.streaming_paths[0].paths[0].ends_with("/evening-manifest.ism/manifest(format=m3u8-aapl)"));

    client.ensure_locator_published(&locator("protected", "Predefined_ClearKey")).await.unwrap();
    let paths = client.list_paths("protected").await.unwrap();
    assert!(paths.streaming_paths.iter().all(|path| path.encryption_scheme == "EnvelopeEncryption"));

    // A policy in use cannot go; a predefined one never can.
    let (status, body) = emulator
        .raw(Method::DELETE, &emulator.test_url(&format!("streamingPolicies/Predefined_ClearKey?{METADATA}")), None)
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("BadRequest")));
    // An asset being recorded cannot be deleted; once the program is gone it can, with its locators.
    let (status, _) =
        emulator.raw(Method::DELETE, &emulator.test_url(&format!("assets/evening-asset?{METADATA}")), None).await;
    assert_eq!(status, 409);
    client.ensure_program_removed("news", "evening").await.unwrap();
    client.delete_asset("evening-asset").await.unwrap();
    assert!(client.list_streaming_locators().await.unwrap().is_empty());
}

#[tokio::test]
async fn content_key_policy_secrets_are_blanked_except_on_request() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let policy = json!({"properties": {"description": "token", "options": [{
        "name": "ClearKeyOption",
        "configuration": {"@odata.type": "#Microsoft.Media.ContentKeyPolicyClearKeyConfiguration"},
        "restriction": {
            "@odata.type": "#Microsoft.Media.ContentKeyPolicyTokenRestriction",
            "issuer": "urn:issuer", "audience": "urn:audience",
            "primaryVerificationKey": {"@odata.type": "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey", "keyValue": "AAAAAAAAAAAAAAAAAAAAAA=="},
            "restrictionTokenType": "Jwt"
        }
    }]}});
    let url = emulator.test_url(&format!("contentKeyPolicies/token?{METADATA}"));
    let (status, created) = emulator.raw(Method::PUT, &url, Some(&policy.to_string())).await;
    assert_eq!(status, 201);
    let key = "/properties/options/0/restriction/primaryVerificationKey/keyValue";
    assert_eq!(created.pointer(key), Some(&json!("")));
    assert!(created.pointer("/properties/options/0/policyOptionId").and_then(Value::as_str).is_some());
    let (_, fetched) = emulator.raw(Method::GET, &url, None).await;
    assert_eq!(fetched.pointer(key), Some(&json!("")));
    let secrets = emulator.test_url(&format!("contentKeyPolicies/token/getPolicyPropertiesWithSecrets?{METADATA}"));
    let (status, properties) = emulator.raw(Method::POST, &secrets, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        properties.pointer("/options/0/restriction/primaryVerificationKey/keyValue"),
        Some(&json!("AAAAAAAAAAAAAAAAAAAAAA=="))
    );
    let (status, body) = emulator.raw(Method::PUT, &url, Some(r#"{"properties": {"options": [{"name": "x"}]}}"#)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn faults_change_at_run_time_and_a_dropped_response_closes_the_connection() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let http = reqwest::Client::new();
    let faults_url = format!("{}/_emulator/faults", emulator.base);
    let refused = http.put(&faults_url).json(&json!({"throttle_rate": 2.0})).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let set = http.put(&faults_url).json(&json!({"drop_rate": 1.0})).send().await.unwrap();
    assert_eq!(set.status(), 200);
    let current: Faults = http.get(&faults_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(current.drop_rate, 1.0);
    assert_eq!(current.throttle_rate, 0.0);

    let token = emulator.token().await;
    let write = http
        .put(emulator.test_url(&format!("assets/dropped?{METADATA}")))
        .bearer_auth(&token)
        .json(&json!({"properties": {}}))
        .send()
        .await;
    let error = write.expect_err("no answer to an applied write");
    assert!(!error.is_connect(), "the request reached the server: {error}");
    let logged = emulator.requests().into_iter().find(|entry| entry.path.ends_with("/assets/dropped")).unwrap();
    assert_eq!((logged.status, logged.fault.as_deref()), (201, Some("dropped")));

    http.put(&faults_url).json(&json!({})).send().await.unwrap();
    let (status, _) = emulator.raw(Method::GET, &emulator.test_url(&format!("assets/dropped?{METADATA}")), None).await;
    assert_eq!(status, 200, "the write was applied");
}

#[tokio::test]
async fn the_request_log_can_be_read_since_a_point_and_reset() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let client = emulator.client();
    client.get_live_event("a").await.unwrap();
    let http = reqwest::Client::new();
    let log: Vec<Value> =
        http.get(format!("{}/_emulator/requests", emulator.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(log.len(), 2, "token and GET");
    assert!(log[0]["body"].is_null(), "token requests are logged without their body");
    let since: Vec<Value> =
        http.get(format!("{}/_emulator/requests?since=1", emulator.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0]["status"], 404);

    client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    let reset = http.post(format!("{}/_emulator/reset", emulator.base)).send().await.unwrap();
    assert_eq!(reset.status(), 204);
    assert!(emulator.requests().is_empty());
    let fresh = emulator.client();
    assert!(fresh.get_live_event("news").await.unwrap().is_none());
}

#[tokio::test]
async fn a_snapshot_keeps_state_across_restarts() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("emulator.json");
    let mut settings = emulator_settings();
    settings.transition = Duration::from_secs(30);
    let emulator = TestEmulator::start(settings.clone()).await;
    let client = emulator.client();
    client.put_asset("kept", &Default::default()).await.unwrap();
    let lro = client.streaming_endpoint_action("default", true).await.unwrap();
    assert!(!lro.is_done());
    // Saved mid-start: the snapshot holds the finished state.
    emulator.emulator.save_snapshot(&path).unwrap();

    let restarted = Emulator::new(settings, onair::clock::system());
    restarted.load_snapshot(&path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(onair::emulator::serve(listener, restarted, shutdown.clone()));
    let mut media = emulator.media_settings();
    media.arm_url = url::Url::parse(&base).unwrap();
    media.token_url = Some(url::Url::parse(&format!("{base}/t/oauth2/v2.0/token")).unwrap());
    let client = onair::media::Client::new(&media).unwrap();
    assert!(client.get_asset("kept").await.unwrap().is_some());
    let endpoint = client.get_streaming_endpoint("default").await.unwrap().unwrap();
    assert_eq!(endpoint.properties.resource_state, Some(StreamingEndpointState::Running));
    shutdown.cancel();
}
