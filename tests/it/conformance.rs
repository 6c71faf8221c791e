//! Conformance with the published Media Services v3 examples (`tests/fixtures/ams-v3/examples/`).
//!
//! Each example is replayed against the emulator: the answer must carry one of the example's
//! status codes, its LRO headers when it has them, and a body with every key of the example's body
//! (values, ids and times may differ). Then the client performs the same operation, and the request
//! it sends must match the example's method, path, api-version and body (keys and values).

use std::collections::BTreeSet;
use std::path::PathBuf;

use onair::media::Client;
use onair::media::model::{Asset, LiveEvent, LiveOutput, StreamingEndpoint, StreamingLocator};
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{TestEmulator, account_path, api_version, emulator_settings};

/// Every fixture file must have a test below; this list is checked against the folder.
const COVERED: &[&str] = &[
    "assets-create.json",
    "async-operation-result.json",
    "liveevent-create.json",
    "liveevent-list-by-name.json",
    "liveevent-stop.json",
    "liveoutput-create.json",
    "streaming-locators-create-clear.json",
    "streaming-policies-list.json",
    "streamingendpoint-create.json",
    "streamingendpoint-scale.json",
];

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ams-v3/examples")
}

/// One published example: `{parameters: {...}, responses: {"<status>": {headers?, body?}}}`.
struct Example {
    file: &'static str,
    parameters: Value,
    responses: Value,
}

/// One answer of the emulator.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Example {
    fn load(file: &'static str) -> Self {
        let text = std::fs::read_to_string(examples_dir().join(file)).expect("fixture");
        let value: Value = serde_json::from_str(&text).expect("fixture JSON");
        Self { file, parameters: value["parameters"].clone(), responses: value["responses"].clone() }
    }

    fn param(&self, name: &str) -> &str {
        self.parameters[name].as_str().unwrap_or_else(|| panic!("{}: parameter {name}", self.file))
    }

    /// The ARM path of the example, the tail written with `{parameter}` placeholders.
    fn path(&self, tail: &str) -> String {
        let mut tail = tail.to_string();
        if let Value::Object(parameters) = &self.parameters {
            for (name, value) in parameters {
                if let Value::String(value) = value {
                    tail = tail.replace(&format!("{{{name}}}"), value);
                }
            }
        }
        account_path(self.param("subscriptionId"), self.param("resourceGroupName"), self.param("accountName"), &tail)
    }

    fn request_body(&self) -> Option<&Value> {
        self.parameters.get("parameters")
    }

    fn api_version(&self) -> &str {
        self.param("api-version")
    }

    fn client(&self, emulator: &TestEmulator) -> Client {
        let settings = emulator.media_settings_for(
            self.param("subscriptionId"),
            self.param("resourceGroupName"),
            self.param("accountName"),
        );
        Client::new(&settings).expect("client")
    }

    /// Replays the example's request (its body as is) on `path`.
    async fn replay(&self, emulator: &TestEmulator, method: Method, path: &str) -> Answer {
        self.send(emulator, method, path, self.request_body()).await
    }

    async fn send(&self, emulator: &TestEmulator, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let token = emulator.token().await;
        let url = format!("{}{path}?api-version={}", emulator.base, self.api_version());
        let mut request = reqwest::Client::new().request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::Null) }
    }

    /// The answer must be the example's response `status`: same headers present, every body key.
    fn check(&self, answer: &Answer, status: u16) {
        let expected = &self.responses[status.to_string()];
        assert!(expected.is_object(), "{}: the example has no {status} response", self.file);
        assert_eq!(answer.status, status, "{}: {}", self.file, answer.body);
        if let Some(Value::Object(headers)) = expected.get("headers") {
            for name in headers.keys() {
                assert!(answer.headers.contains_key(name.as_str()), "{}: header {name} missing", self.file);
            }
        }
        if let Some(body) = expected.get("body") {
            let mut missing = Vec::new();
            missing_keys(body, &answer.body, "body", &mut missing);
            assert!(missing.is_empty(), "{}: {status} lacks {missing:?}\nanswer: {:#}", self.file, answer.body);
        }
    }

    /// The last request the emulator logged must be the example's request.
    fn check_client_request(&self, emulator: &TestEmulator, method: &str, path: &str) {
        let logged = emulator
            .requests()
            .into_iter()
            .rev()
            .find(|entry| entry.path == path && entry.method == method)
            .unwrap_or_else(|| panic!("{}: no {method} {path} logged", self.file));
        assert_eq!(api_version(&logged).as_deref(), Some(self.api_version()), "{}", self.file);
        assert_eq!(logged.body.as_ref(), self.request_body(), "{}: request body", self.file);
    }
}

/// Collects the keys of `example` missing from `actual`, recursively; arrays are compared element
/// by element (matched by `name` when they have one) where `actual` has elements.
fn missing_keys(example: &Value, actual: &Value, path: &str, missing: &mut Vec<String>) {
    match (example, actual) {
        (Value::Object(expected), Value::Object(found)) => {
            for (key, value) in expected {
                match found.get(key) {
                    None => missing.push(format!("{path}.{key}")),
                    Some(found) => missing_keys(value, found, &format!("{path}.{key}"), missing),
                }
            }
        }
        (Value::Object(expected), _) if !expected.is_empty() => missing.push(format!("{path} (not an object)")),
        (Value::Array(expected), Value::Array(found)) if !found.is_empty() => {
            for (index, value) in expected.iter().enumerate() {
                // Named items are compared with the item of the same name, if this page has it.
                let item = match value.get("name") {
                    Some(name) => found.iter().find(|item| item.get("name") == Some(name)),
                    None => found.get(index).or(found.first()),
                };
                if let Some(item) = item {
                    missing_keys(value, item, &format!("{path}[{index}]"), missing);
                }
            }
        }
        _ => {}
    }
}

async fn conformance_emulator() -> TestEmulator {
    // A small page size makes the list example come back with @odata.nextLink, as published.
    let mut settings = emulator_settings();
    settings.page_size = 5;
    TestEmulator::start(settings).await
}

#[test]
fn every_fixture_is_covered() {
    let files: BTreeSet<String> = std::fs::read_dir(examples_dir())
        .expect("examples folder")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let covered: BTreeSet<String> = COVERED.iter().map(|file| file.to_string()).collect();
    assert_eq!(files, covered);
}

#[tokio::test]
async fn liveevent_create() {
    let example = Example::load("liveevent-create.json");
    let emulator = conformance_emulator().await;
    let path = example.path("liveEvents/{liveEventName}");
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 201);
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 200);

    let fresh = conformance_emulator().await;
    let body: LiveEvent = serde_json::from_value(example.request_body().cloned().unwrap()).unwrap();
    example.client(&fresh).create_live_event(example.param("liveEventName"), &body, false).await.unwrap();
    example.check_client_request(&fresh, "PUT", &path);
}

#[tokio::test]
async fn liveevent_get() {
    let example = Example::load("liveevent-list-by-name.json");
    let create = Example::load("liveevent-create.json");
    let emulator = conformance_emulator().await;
    let path = example.path("liveEvents/{liveEventName}");
    create.replay(&emulator, Method::PUT, &path).await;
    example.check(&example.replay(&emulator, Method::GET, &path).await, 200);

    let found = example.client(&emulator).get_live_event(example.param("liveEventName")).await.unwrap();
    assert_eq!(found.and_then(|event| event.name).as_deref(), Some("myLiveEvent1"));
    example.check_client_request(&emulator, "GET", &path);
}

#[tokio::test]
async fn liveevent_stop() {
    let example = Example::load("liveevent-stop.json");
    let create = Example::load("liveevent-create.json");
    let emulator = conformance_emulator().await;
    let event = example.path("liveEvents/{liveEventName}");
    create.replay(&emulator, Method::PUT, &event).await;
    let start = example.send(&emulator, Method::POST, &format!("{event}/start"), None).await;
    assert_eq!(start.status, 202);
    let path = example.path("liveEvents/{liveEventName}/stop");
    example.check(&example.replay(&emulator, Method::POST, &path).await, 202);
    // Stopping a stopped live event changes nothing: the example's 200.
    example.check(&example.replay(&emulator, Method::POST, &path).await, 200);

    let client = example.client(&emulator);
    client.live_event_action("myLiveEvent1", onair::media::LiveEventAction::Start).await.unwrap();
    let lro = client.stop_live_event("myLiveEvent1", false).await.unwrap();
    client.wait(&lro).await.unwrap();
    example.check_client_request(&emulator, "POST", &path);
}

#[tokio::test]
async fn liveoutput_create() {
    let example = Example::load("liveoutput-create.json");
    let create = Example::load("liveevent-create.json");
    let emulator = conformance_emulator().await;
    let event = example.path("liveEvents/{liveEventName}");
    create.replay(&emulator, Method::PUT, &event).await;
    example.send(&emulator, Method::POST, &format!("{event}/start"), None).await;
    let asset = example.request_body().unwrap()["properties"]["assetName"].as_str().unwrap().to_string();
    let asset_url = format!("{}{}?api-version=2023-01-01", emulator.base, example.path(&format!("assets/{asset}")));
    let (status, _) = emulator.raw(Method::PUT, &asset_url, Some(r#"{"properties": {}}"#)).await;
    assert_eq!(status, 201);

    let path = example.path("liveEvents/{liveEventName}/liveOutputs/{liveOutputName}");
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 201);
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 200);

    let client = example.client(&emulator);
    let body: LiveOutput = serde_json::from_value(example.request_body().cloned().unwrap()).unwrap();
    client.create_live_output("myLiveEvent1", "myLiveOutput1", &body).await.unwrap();
    example.check_client_request(&emulator, "PUT", &path);
}

#[tokio::test]
async fn streamingendpoint_create() {
    let example = Example::load("streamingendpoint-create.json");
    let emulator = conformance_emulator().await;
    let path = example.path("streamingEndpoints/{streamingEndpointName}");
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 201);
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 200);

    let fresh = conformance_emulator().await;
    let body: StreamingEndpoint = serde_json::from_value(example.request_body().cloned().unwrap()).unwrap();
    example.client(&fresh).create_streaming_endpoint("myStreamingEndpoint1", &body, false).await.unwrap();
    example.check_client_request(&fresh, "PUT", &path);
}

#[tokio::test]
async fn streamingendpoint_scale() {
    let example = Example::load("streamingendpoint-scale.json");
    let create = Example::load("streamingendpoint-create.json");
    let emulator = conformance_emulator().await;
    let endpoint = example.path("streamingEndpoints/{streamingEndpointName}");
    create.replay(&emulator, Method::PUT, &endpoint).await;
    assert_eq!(example.send(&emulator, Method::POST, &format!("{endpoint}/start"), None).await.status, 202);
    let path = example.path("streamingEndpoints/{streamingEndpointName}/scale");
    // Running: a long-running scale (202 with both headers); already at 5: nothing to do (200).
    example.check(&example.replay(&emulator, Method::POST, &path).await, 202);
    example.check(&example.replay(&emulator, Method::POST, &path).await, 200);

    let client = example.client(&emulator);
    let lro = client.scale_streaming_endpoint("myStreamingEndpoint1", 5).await.unwrap();
    client.wait(&lro).await.unwrap();
    example.check_client_request(&emulator, "POST", &path);
}

#[tokio::test]
async fn async_operation_result() {
    let example = Example::load("async-operation-result.json");
    let create = Example::load("liveevent-create.json");
    let emulator = conformance_emulator().await;
    let created = create.replay(&emulator, Method::PUT, &create.path("liveEvents/{liveEventName}")).await;
    // The example's operation id is the service's; replay with the one the emulator issued.
    let operation = created.headers["azure-asyncoperation"].to_str().unwrap().to_string();
    let id = operation.split('/').next_back().unwrap().split('?').next().unwrap().to_string();
    let path = example.path(&format!("liveEventOperations/{id}"));
    let answer = example.replay(&emulator, Method::GET, &path).await;
    example.check(&answer, 200);
    assert_eq!(answer.body["name"], id.as_str());
    assert_eq!(answer.body["status"], "Succeeded");

    let result = example.client(&emulator).live_event_operation(&id).await.unwrap().unwrap();
    assert_eq!(result.status, Some(onair::media::model::OperationStatus::Succeeded));
    example.check_client_request(&emulator, "GET", &path);
}

#[tokio::test]
async fn assets_create() {
    let example = Example::load("assets-create.json");
    let emulator = conformance_emulator().await;
    let path = example.path("assets/{assetName}");
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 201);
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 200);

    let fresh = conformance_emulator().await;
    let body: Asset = serde_json::from_value(example.request_body().cloned().unwrap()).unwrap();
    example.client(&fresh).put_asset("ClimbingMountLogan", &body).await.unwrap();
    example.check_client_request(&fresh, "PUT", &path);
}

#[tokio::test]
async fn streaming_locators_create_clear() {
    let example = Example::load("streaming-locators-create-clear.json");
    let emulator = conformance_emulator().await;
    let setup = |tail: &str| example.path(tail);
    let asset = example
        .send(
            &emulator,
            Method::PUT,
            &setup("assets/ClimbingMountRainier"),
            Some(&serde_json::json!({"properties": {}})),
        )
        .await;
    assert_eq!(asset.status, 201);
    let clear = serde_json::json!({"properties": {"noEncryption": {"enabledProtocols": {"download": true, "dash": true, "hls": true, "smoothStreaming": true}}}});
    assert_eq!(
        example
            .send(&emulator, Method::PUT, &setup("streamingPolicies/clearStreamingPolicy"), Some(&clear))
            .await
            .status,
        201
    );

    let path = example.path("streamingLocators/{streamingLocatorName}");
    example.check(&example.replay(&emulator, Method::PUT, &path).await, 201);
    // The spec has no update: a second create of the same name is a conflict.
    let again = example.replay(&emulator, Method::PUT, &path).await;
    assert_eq!(again.status, 409);
    crate::helpers::assert_arm_error(&again.body, "Conflict");

    let client = example.client(&emulator);
    client.delete_streaming_locator("UserCreatedClearStreamingLocator").await.unwrap();
    let body: StreamingLocator = serde_json::from_value(example.request_body().cloned().unwrap()).unwrap();
    client.create_streaming_locator("UserCreatedClearStreamingLocator", &body).await.unwrap();
    example.check_client_request(&emulator, "PUT", &path);
}

#[tokio::test]
async fn streaming_policies_list() {
    let example = Example::load("streaming-policies-list.json");
    let emulator = conformance_emulator().await;
    // The policies of the example, created from the example itself; their content key policies first.
    for name in ["PolicyWithMultipleOptions", "PolicyWithClearKeyOptionAndTokenRestriction"] {
        let policy = serde_json::json!({"properties": {"options": [{
            "name": "ClearKeyOption",
            "configuration": {"@odata.type": "#Microsoft.Media.ContentKeyPolicyClearKeyConfiguration"},
            "restriction": {"@odata.type": "#Microsoft.Media.ContentKeyPolicyOpenRestriction"}
        }]}});
        let answer = example
            .send(&emulator, Method::PUT, &example.path(&format!("contentKeyPolicies/{name}")), Some(&policy))
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let listed = example.responses["200"]["body"]["value"].as_array().unwrap().clone();
    for policy in &listed {
        let name = policy["name"].as_str().unwrap();
        let mut properties = policy["properties"].clone();
        properties.as_object_mut().unwrap().remove("created");
        let body = serde_json::json!({"properties": properties});
        let answer = example
            .send(&emulator, Method::PUT, &example.path(&format!("streamingPolicies/{name}")), Some(&body))
            .await;
        assert_eq!(answer.status, 201, "{name}: {}", answer.body);
    }
    let path = example.path("streamingPolicies");
    let first_page = example.replay(&emulator, Method::GET, &path).await;
    example.check(&first_page, 200);

    // Every policy of the example, wherever its page, has the example's keys.
    let client = example.client(&emulator);
    let all = client.list_streaming_policies().await.unwrap();
    assert_eq!(all.len(), listed.len() + 6, "the example's policies and the six predefined ones");
    let all = serde_json::to_value(&all).unwrap();
    let mut missing = Vec::new();
    missing_keys(&Value::Array(listed), &all, "value", &mut missing);
    assert!(missing.is_empty(), "{missing:?}");
    for predefined in [
        "Predefined_DownloadOnly",
        "Predefined_ClearStreamingOnly",
        "Predefined_DownloadAndClearStreaming",
        "Predefined_ClearKey",
        "Predefined_MultiDrmCencStreaming",
        "Predefined_MultiDrmStreaming",
    ] {
        assert!(all.as_array().unwrap().iter().any(|policy| policy["name"] == predefined), "{predefined}");
    }
    example.check_client_request(&emulator, "GET", &path);
}
