//! Protected publishing against the emulator: a broadcast with envelope encryption goes live,
//! its keys are delivered for a token `onair token` mints and refused otherwise; the publish step
//! converges once; incomplete protection settings are reported without their secret.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use onair::emulator::LoggedRequest;
use onair::engine::Runner;
use onair::media::model::{Asset, StreamingLocatorContentKey};
use onair::protection::CONTENT_KEY_ID_CLAIM;
use onair::store::OutboxRow;
use serde_json::json;

use crate::daemon::{TestEngine, settings, settled};
use crate::helpers::{ACCOUNT, GROUP, SUBSCRIPTION, TestEmulator, emulator_settings};

const ISSUER: &str = "https://sts.onair.test";
const AUDIENCE: &str = "urn:onair:premium";
const KEY: &[u8] = b"onair-premium-verification-key-32";

/// A broadcast published with envelope encryption whose keys need a token with the key id, and a
/// clear one; the verification key is read from `key_file`.
fn broadcasts(key_file: &std::path::Path, audience: &str) -> String {
    format!(
        r#"
[broadcasts.premium]
protection = "envelope"
content_key_policy = "premium"
[broadcasts.free]
[content_key_policies.premium]
issuer = "{ISSUER}"
audience = "{audience}"
required_claims = ["{CONTENT_KEY_ID_CLAIM}"]
verification_key_file = "{key}"
"#,
        key = key_file.display()
    )
}

fn key_file(directory: &std::path::Path) -> std::path::PathBuf {
    let path = directory.join("premium.key");
    std::fs::write(&path, format!("{}\n", BASE64.encode(KEY))).unwrap();
    path
}

/// The resources PUT, in order: `PUT <collection>/<name>`.
fn puts(requests: &[LoggedRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|entry| entry.method == "PUT")
        .filter_map(|entry| entry.path.split_once("/mediaservices/").map(|(_, tail)| tail))
        .filter_map(|tail| tail.split_once('/').map(|(_, tail)| format!("PUT {tail}")))
        .collect()
}

fn jwt(key: &[u8], audience: &str, kid: &str, expires_in: i64) -> String {
    let now = onair::clock::Clock::now(&onair::clock::SystemClock).timestamp();
    let claims = json!({"iss": ISSUER, "aud": audience, "exp": now + expires_in, CONTENT_KEY_ID_CLAIM: kid});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

/// Asks the emulator's key delivery for `kid`: the status and the body.
async fn deliver(emulator: &TestEmulator, kid: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let url = format!("{}/keydelivery/{SUBSCRIPTION}/{GROUP}/{ACCOUNT}?kid={kid}", emulator.base);
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// `onair token` as a process (off the runtime: the emulator serves on it).
async fn onair_token(config: &std::path::Path, broadcast: &str) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_onair"));
    command
        .arg("--config")
        .arg(config)
        .args(["token", "--broadcast", broadcast, "--ttl", "10m"])
        .env("ONAIR__MEDIA__CLIENT_SECRET", "onair-emulator-secret")
        .env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

#[tokio::test]
async fn a_protected_broadcast_goes_live_and_its_key_needs_a_valid_token() {
    let mut emulator_settings = emulator_settings();
    emulator_settings.transition = Duration::from_millis(30);
    let emulator = TestEmulator::start(emulator_settings).await;
    let directory = tempfile::tempdir().unwrap();
    let key_file = key_file(directory.path());
    let settings = settings(&emulator, directory.path(), &broadcasts(&key_file, AUDIENCE));
    let engine = TestEngine::start(&settings).await;
    for (step, expected) in [("warmup", "standby"), ("air", "live")] {
        engine.step("premium", step).await;
        settled(&settings, "premium", expected).await;
    }
    engine.stop().await;

    let locator = "premium-20261124t1800z";
    let written = puts(&emulator.requests());
    let position = |write: &str| written.iter().position(|entry| entry == write).unwrap_or(usize::MAX);
    let (keys, streaming, published) = (
        position("PUT contentKeyPolicies/premium"),
        position("PUT streamingPolicies/onair-envelope-premium"),
        position(&format!("PUT streamingLocators/{locator}")),
    );
    assert!(keys < streaming && streaming < published && published < written.len(), "{written:?}");

    let client = emulator.client();
    let paths = client.list_paths(locator).await.unwrap().streaming_paths;
    let schemes: Vec<&str> = paths.iter().map(|path| path.encryption_scheme.as_str()).collect();
    assert!(paths.len() >= 2, "HLS and DASH at least: {paths:?}");
    assert!(schemes.iter().all(|scheme| *scheme == "EnvelopeEncryption"), "{schemes:?}");
    let content_keys: Vec<StreamingLocatorContentKey> = client.list_content_keys(locator).await.unwrap();
    assert_eq!(content_keys.len(), 1, "{content_keys:?}");
    assert_eq!(content_keys[0].kind.as_deref(), Some("EnvelopeEncryption"));
    assert_eq!(content_keys[0].policy_name.as_deref(), Some("premium"));
    let kid = content_keys[0].id.clone().unwrap();
    let key = BASE64.decode(content_keys[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(key.len(), 16);

    // The token onair mints (it finds the key id through the store and the API) opens the key.
    let config = directory.path().join("onair.toml");
    let output = onair_token(&config, "premium").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("key {kid}")) && stderr.contains(AUDIENCE), "{stderr}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert!(!stderr.contains(&BASE64.encode(KEY)) && !token.contains(&BASE64.encode(KEY)));
    assert_eq!(deliver(&emulator, &kid, Some(&token)).await, (200, key.clone()));

    // Refused: expired, another audience, another signing key, no token.
    let refused = [
        ("expired", Some(jwt(KEY, AUDIENCE, &kid, -120))),
        ("wrong audience", Some(jwt(KEY, "urn:onair:other", &kid, 600))),
        ("other key", Some(jwt(b"another-verification-key-32bytes!", AUDIENCE, &kid, 600))),
        ("another key id", Some(jwt(KEY, AUDIENCE, "00000000-0000-4000-8000-000000000000", 600))),
        ("no token", None),
    ];
    for (what, token) in refused {
        let (status, body) = deliver(&emulator, &kid, token.as_deref()).await;
        assert!(status == 401 || status == 403, "{what}: {status}");
        assert_ne!(body, key, "{what}");
        println!("key delivery, {what}: {status} {}", String::from_utf8_lossy(&body));
    }

    // A clear broadcast has nothing to sign.
    let output = onair_token(&config, "free").await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("published in the clear"));
}

fn publish_row(id: i64, name: &str) -> OutboxRow {
    OutboxRow {
        id,
        broadcast: "premium".into(),
        decision: id,
        position: 0,
        kind: "locator.publish".into(),
        params: json!({"name": name}),
        status: "pending".into(),
        attempts: 0,
        created: onair::clock::Clock::now(&onair::clock::SystemClock),
    }
}

#[tokio::test]
async fn the_publish_step_creates_each_policy_and_locator_once_across_repeats_and_crashes() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let key_file = key_file(directory.path());
    let settings = settings(&emulator, directory.path(), &broadcasts(&key_file, AUDIENCE));
    let broadcast = settings.engine.broadcasts["premium"].clone();
    let policy = broadcast.protection.policy.clone().unwrap();
    let client = emulator.client();
    client.put_asset("premium-1", &Asset::default()).await.unwrap();
    // A first run that crashed after the content key policy, before the streaming policy.
    client.ensure_content_key_policy("premium", &policy.content_key_policy(broadcast.protection.mode)).await.unwrap();

    let (outbound, _published) = tokio::sync::mpsc::unbounded_channel();
    let runner = Runner::new(Some(client.clone()), outbound, onair::clock::system());
    let first = runner.run(&publish_row(1, "premium-1"), &broadcast).await.unwrap();
    let again = runner.run(&publish_row(2, "premium-1"), &broadcast).await.unwrap();
    assert_eq!(first, again, "the same locator both times");
    assert_eq!(first["streaming_policy"], "onair-envelope-premium");
    assert_eq!(first["protection"], "envelope");
    assert_eq!(
        puts(&emulator.requests())[1..],
        [
            "PUT contentKeyPolicies/premium".to_string(),
            "PUT streamingPolicies/onair-envelope-premium".into(),
            "PUT streamingLocators/premium-1".into(),
        ],
        "each once, after the asset"
    );

    // A policy changed in the settings is updated in place; the rest stays.
    let changed = settings_with_audience(&emulator, directory.path(), &key_file, "urn:onair:gold");
    let broadcast = changed.engine.broadcasts["premium"].clone();
    runner.run(&publish_row(3, "premium-1"), &broadcast).await.unwrap();
    let written = puts(&emulator.requests());
    assert_eq!(written.iter().filter(|write| *write == "PUT contentKeyPolicies/premium").count(), 2, "{written:?}");
    assert_eq!(written.len(), 5, "{written:?}");
    let stored = client.content_key_policy_with_secrets("premium").await.unwrap().unwrap();
    let restriction = stored.options.unwrap()[0].restriction.clone().unwrap();
    assert_eq!(restriction["audience"], "urn:onair:gold");
    assert_eq!(restriction["primaryVerificationKey"]["keyValue"], BASE64.encode(KEY));
    let shown = client.get_content_key_policy("premium").await.unwrap().unwrap();
    let shown = shown.properties.options.unwrap()[0].restriction.clone().unwrap();
    assert_eq!(shown["primaryVerificationKey"]["keyValue"], "", "GET blanks the key");
}

fn settings_with_audience(
    emulator: &TestEmulator,
    directory: &std::path::Path,
    key_file: &std::path::Path,
    audience: &str,
) -> onair::daemon::Settings {
    let other = directory.join("changed");
    settings(emulator, &other, &broadcasts(key_file, audience))
}

#[test]
fn check_reports_incomplete_protection_with_the_broadcast_and_never_the_secret() {
    let directory = tempfile::tempdir().unwrap();
    let secret = "NOT$BASE64$premium-verification-secret";
    let config = directory.path().join("onair.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[media]
token_url = "https://login.example/t/oauth2/v2.0/token"
subscription_id = "s"
resource_group = "g"
account = "a"
client_id = "c"
[engine]
state_dir = "{state}"
[broadcasts.news]
protection = "envelope"
content_key_policy = "nokey"
[broadcasts.sport]
protection = "multi-drm"
content_key_policy = "ghost"
[broadcasts.films]
protection = "envelope"
[broadcasts.series]
protection = "envelope"
content_key_policy = "badkey"
[content_key_policies.nokey]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
[content_key_policies.badkey]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
"#,
            state = directory.path().display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_onair"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env("ONAIR__MEDIA__CLIENT_SECRET", "x")
        .env("ONAIR__CONTENT_KEY_POLICIES__BADKEY__VERIFICATION_KEY", secret)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    for expected in [
        "content_key_policies.nokey.verification_key: missing",
        "broadcasts.news.content_key_policy: no usable content key policy named \"nokey\"",
        "broadcasts.sport.content_key_policy: no usable content key policy named \"ghost\"",
        "broadcasts.films.content_key_policy: missing: protection = \"envelope\" needs a content key policy",
        "content_key_policies.badkey.verification_key: the key is not valid base64",
        "broadcasts.series.content_key_policy: no usable content key policy named \"badkey\"",
    ] {
        assert!(report.contains(expected), "{expected:?} in {report}");
    }
    assert!(!report.contains(secret) && !report.contains("premium-verification-secret"), "{report}");
}

#[tokio::test]
async fn the_emulator_checks_policies_hides_keys_and_serves_open_ones_to_anyone() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let client = emulator.client();
    let http = reqwest::Client::new();
    let token = emulator.token().await;
    let arm = |tail: &str| {
        format!(
            "{}{}?api-version=2023-01-01",
            emulator.base,
            crate::helpers::account_path(SUBSCRIPTION, GROUP, ACCOUNT, tail)
        )
    };
    let put = |tail: &str, body: serde_json::Value| http.put(arm(tail)).bearer_auth(&token).json(&body).send();

    // Invalid options are refused with the field named.
    let clear_key = json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyClearKeyConfiguration"});
    let open = json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyOpenRestriction"});
    for (what, configuration, restriction, field) in [
        (
            "token without issuer",
            clear_key.clone(),
            json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyTokenRestriction", "audience": "a", "restrictionTokenType": "Jwt", "primaryVerificationKey": {"@odata.type": "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey", "keyValue": BASE64.encode(KEY)}}),
            "restriction.issuer",
        ),
        (
            "PlayReady without licenses",
            json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyPlayReadyConfiguration", "licenses": []}),
            open.clone(),
            "configuration.licenses",
        ),
        ("unknown type", json!({"@odata.type": "#Microsoft.Media.Teleporter"}), open.clone(), "configuration"),
    ] {
        let body = json!({"properties": {"options": [{"name": "o", "configuration": configuration, "restriction": restriction}]}});
        let response = put("contentKeyPolicies/bad", body).await.unwrap();
        assert_eq!(response.status(), 400, "{what}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(error["error"]["message"].as_str().unwrap().contains(field), "{what}: {error}");
    }

    // An open envelope policy: keys for anyone, values only through listContentKeys.
    let body =
        json!({"properties": {"options": [{"name": "clear-key", "configuration": clear_key, "restriction": open}]}});
    assert_eq!(put("contentKeyPolicies/open", body).await.unwrap().status(), 201);
    let streaming = onair::protection::streaming_policy(onair::protection::Mode::Envelope, "open").unwrap();
    client
        .put_streaming_policy(
            "envelope-open",
            &onair::media::model::StreamingPolicy { properties: streaming, ..Default::default() },
        )
        .await
        .unwrap();
    client.put_asset("open-asset", &Asset::default()).await.unwrap();
    let body = json!({"properties": {"assetName": "open-asset", "streamingPolicyName": "envelope-open"}});
    assert_eq!(put("streamingLocators/open-locator", body).await.unwrap().status(), 201);
    let shown = client.get_streaming_locator("open-locator").await.unwrap().unwrap();
    let shown_keys = shown.properties.content_keys.unwrap();
    assert_eq!(shown_keys.len(), 1);
    assert_eq!(shown_keys[0].value, None, "GET does not show key values");
    let keys = client.list_content_keys("open-locator").await.unwrap();
    let kid = keys[0].id.clone().unwrap();
    let value = BASE64.decode(keys[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(deliver(&emulator, &kid, None).await, (200, value));
    assert_eq!(deliver(&emulator, "00000000-0000-4000-8000-000000000000", None).await.0, 404);

    // A streaming policy in use stays; once its locator is gone it can go.
    let delete = || http.delete(arm("streamingPolicies/envelope-open")).bearer_auth(&token).send();
    assert_eq!(delete().await.unwrap().status().as_u16() / 100, 4, "in use by open-locator");
    client.delete_streaming_locator("open-locator").await.unwrap();
    assert_eq!(delete().await.unwrap().status(), 200);
}
