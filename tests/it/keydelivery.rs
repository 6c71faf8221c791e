//! Content protection in the emulator over raw HTTP: content key policies are validated and hide
//! their secrets, a locator on an envelope streaming policy gets its content key, and the ClearKey
//! key delivery gives the 16 key bytes only for a token that passes every check of the policy.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::Mac as _;
use onair::media::{ChannelSpec, ProgramSpec};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ACCOUNT, GROUP, SUBSCRIPTION, TestEmulator, assert_arm_error, emulator_settings};

const METADATA: &str = "api-version=2023-01-01";
const ISSUER: &str = "https://sts.keydelivery.test";
const AUDIENCE: &str = "urn:keydelivery:viewers";
const KEY: &[u8] = b"keydelivery-test-signing-key-32b";
const OTHER_KEY: &[u8] = b"another-signing-key-of-32-bytes!";
const KEY_ID_CLAIM: &str = "urn:microsoft:azure:mediaservices:contentkeyidentifier";

fn url(emulator: &TestEmulator, tail: &str) -> String {
    emulator.test_url(&format!("{tail}?{METADATA}"))
}

async fn put(emulator: &TestEmulator, tail: &str, body: &Value) -> (u16, Value) {
    emulator.raw(Method::PUT, &url(emulator, tail), Some(&body.to_string())).await
}

fn clear_key() -> Value {
    json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyClearKeyConfiguration"})
}

fn token_restriction(kind: &str) -> Value {
    json!({
        "@odata.type": "#Microsoft.Media.ContentKeyPolicyTokenRestriction",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "primaryVerificationKey": {"@odata.type": "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey", "keyValue": BASE64.encode(KEY)},
        "alternateVerificationKeys": [],
        "requiredClaims": [{"claimType": KEY_ID_CLAIM}],
        "restrictionTokenType": kind
    })
}

fn policy(configuration: Value, restriction: Value) -> Value {
    json!({"properties": {"description": "test", "options": [{"name": "option", "configuration": configuration, "restriction": restriction}]}})
}

fn now() -> i64 {
    onair::clock::Clock::now(&onair::clock::SystemClock).timestamp()
}

/// An HS256 JWT with `claims`, signed with `key`.
fn jwt(claims: &Value, key: &[u8]) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(key)).unwrap()
}

fn claims(kid: &str, audience: &str, expires_in: i64) -> Value {
    json!({"iss": ISSUER, "aud": audience, "exp": now() + expires_in, "nbf": now() - 60, KEY_ID_CLAIM: kid})
}

/// A simple web token: the form-encoded claims, then `&HMACSHA256=` and the HMAC of what precedes.
fn swt(kid: &str, key: &[u8], expires_in: i64) -> String {
    let expires = (now() + expires_in).to_string();
    let unsigned = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("Issuer", ISSUER)
        .append_pair("Audience", AUDIENCE)
        .append_pair("ExpiresOn", &expires)
        .append_pair(KEY_ID_CLAIM, kid)
        .finish();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(unsigned.as_bytes());
    let signature = BASE64.encode(mac.finalize().into_bytes());
    let signature: String = url::form_urlencoded::byte_serialize(signature.as_bytes()).collect();
    format!("{unsigned}&HMACSHA256={signature}")
}

/// A key delivery request: the status, the `Content-Type` and the body.
async fn deliver(emulator: &TestEmulator, method: Method, kid: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let url = format!("{}/keydelivery/{SUBSCRIPTION}/{GROUP}/{ACCOUNT}?kid={kid}", emulator.base);
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, response.bytes().await.unwrap().to_vec())
}

/// The error code of a refused key delivery.
fn refusal_code(body: &[u8]) -> String {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    body["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// The one content key of a locator, from `listContentKeys`: its id and its 16 bytes.
async fn content_key(emulator: &TestEmulator, locator: &str, policy_name: &str) -> (String, Vec<u8>) {
    let (status, body) =
        emulator.raw(Method::POST, &url(emulator, &format!("streamingLocators/{locator}/listContentKeys")), None).await;
    assert_eq!(status, 200, "{body}");
    let keys = body["contentKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{body}");
    assert_eq!(keys[0]["type"], "EnvelopeEncryption");
    assert_eq!(keys[0]["labelReferenceInStreamingPolicy"], "aes");
    assert_eq!(keys[0]["policyName"], policy_name);
    let id = keys[0]["id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let value = BASE64.decode(keys[0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(value.len(), 16);
    (id, value)
}

/// A live event records `show-asset` (manifest `show`), so that its locators have paths.
async fn recorded_asset(emulator: &TestEmulator) {
    let client = emulator.client();
    client.ensure_channel_running(&ChannelSpec::new("news")).await.unwrap();
    let program = ProgramSpec {
        channel: "news".into(),
        name: "show".into(),
        asset: "show-asset".into(),
        archive_window: "PT30M".into(),
        manifest_name: "show".into(),
        description: None,
    };
    client.ensure_program_present(&program).await.unwrap();
}

fn envelope_policy(policy_name: Option<&str>) -> Value {
    let mut default_key = json!({"label": "aes"});
    if let Some(name) = policy_name {
        default_key["policyName"] = json!(name);
    }
    json!({"properties": {"envelopeEncryption": {
        "enabledProtocols": {"download": false, "dash": true, "hls": true, "smoothStreaming": true},
        "clearTracks": [],
        "contentKeys": {"defaultKey": default_key, "keyToTrackMappings": []}
    }}})
}

#[tokio::test]
async fn a_token_restricted_envelope_key_is_delivered_only_for_a_valid_token() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    recorded_asset(&emulator).await;

    // The content key policy: ClearKey, a JWT with the key id; GET hides the key, secrets show it.
    let (status, created) =
        put(&emulator, "contentKeyPolicies/jwt", &policy(clear_key(), token_restriction("Jwt"))).await;
    assert_eq!(status, 201, "{created}");
    let key_value = "/properties/options/0/restriction/primaryVerificationKey/keyValue";
    assert_eq!(created.pointer(key_value), Some(&json!("")));
    let (status, fetched) = emulator.raw(Method::GET, &url(&emulator, "contentKeyPolicies/jwt"), None).await;
    assert_eq!((status, fetched.pointer(key_value)), (200, Some(&json!(""))));
    let secrets = url(&emulator, "contentKeyPolicies/jwt/getPolicyPropertiesWithSecrets");
    let (status, properties) = emulator.raw(Method::POST, &secrets, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        properties.pointer("/options/0/restriction/primaryVerificationKey/keyValue"),
        Some(&json!(BASE64.encode(KEY)))
    );

    // The streaming policy names it; a locator on it gets one envelope key.
    let (status, body) = put(&emulator, "streamingPolicies/envelope-jwt", &envelope_policy(Some("jwt"))).await;
    assert_eq!(status, 201, "{body}");
    let locator = json!({"properties": {"assetName": "show-asset", "streamingPolicyName": "envelope-jwt"}});
    let (status, created) = put(&emulator, "streamingLocators/jwt-locator", &locator).await;
    assert_eq!(status, 201, "{created}");
    let (kid, key) = content_key(&emulator, "jwt-locator", "jwt").await;
    let (status, shown) = emulator.raw(Method::GET, &url(&emulator, "streamingLocators/jwt-locator"), None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["properties"]["contentKeys"][0]["id"], kid.as_str());
    assert_eq!(shown["properties"]["contentKeys"][0]["value"], Value::Null, "GET hides the value: {shown}");
    assert_eq!(created["properties"]["contentKeys"][0]["value"], Value::Null, "so does the PUT answer");

    let paths = url(&emulator, "streamingLocators/jwt-locator/listPaths");
    let (status, paths) = emulator.raw(Method::POST, &paths, None).await;
    assert_eq!(status, 200);
    let paths = paths["streamingPaths"].as_array().unwrap().clone();
    let protocols: Vec<(&str, &str)> = paths
        .iter()
        .map(|path| (path["streamingProtocol"].as_str().unwrap(), path["encryptionScheme"].as_str().unwrap()))
        .collect();
    assert_eq!(
        protocols,
        [("Hls", "EnvelopeEncryption"), ("Dash", "EnvelopeEncryption"), ("SmoothStreaming", "EnvelopeEncryption")]
    );
    assert!(paths[0]["paths"][0].as_str().unwrap().ends_with("/show.ism/manifest(format=m3u8-aapl,encryption=cbc)"));
    assert!(paths[1]["paths"][0].as_str().unwrap().ends_with("/show.ism/manifest(format=mpd-time-csf,encryption=cbc)"));
    assert!(paths[2]["paths"][0].as_str().unwrap().ends_with("/show.ism/manifest(encryption=cbc)"));

    // A valid token opens the key, by GET and by POST; faults do not touch key delivery.
    let token = jwt(&claims(&kid, AUDIENCE, 600), KEY);
    let expected = (200, "application/octet-stream".to_string(), key.clone());
    assert_eq!(deliver(&emulator, Method::GET, &kid, Some(&token)).await, expected);
    emulator
        .emulator
        .set_faults(onair::emulator::Faults { error_rate: 1.0, ..onair::emulator::Faults::none() })
        .unwrap();
    assert_eq!(deliver(&emulator, Method::POST, &kid, Some(&token)).await, expected);
    emulator.emulator.set_faults(onair::emulator::Faults::none()).unwrap();

    // Every failed check is a 401 naming it, without the key.
    let mut no_claim = claims(&kid, AUDIENCE, 600);
    no_claim.as_object_mut().unwrap().remove(KEY_ID_CLAIM);
    let refused = [
        ("expired", Some(jwt(&claims(&kid, AUDIENCE, -120), KEY)), "TokenExpired"),
        ("wrong audience", Some(jwt(&claims(&kid, "urn:keydelivery:others", 600), KEY)), "InvalidAudience"),
        ("another signing key", Some(jwt(&claims(&kid, AUDIENCE, 600), OTHER_KEY)), "InvalidSignature"),
        ("missing key id claim", Some(jwt(&no_claim, KEY)), "MissingClaim"),
        (
            "another key id",
            Some(jwt(&claims("00000000-0000-4000-8000-000000000000", AUDIENCE, 600), KEY)),
            "InvalidClaim",
        ),
        ("an SWT where a JWT is due", Some(swt(&kid, KEY, 600)), "MalformedToken"),
        ("no token", None, "MissingToken"),
    ];
    for (what, token, code) in refused {
        let (status, content_type, body) = deliver(&emulator, Method::GET, &kid, token.as_deref()).await;
        assert_eq!((status, refusal_code(&body).as_str()), (401, code), "{what}: {}", String::from_utf8_lossy(&body));
        assert!(content_type.starts_with("application/json"), "{what}: {content_type}");
        assert!(!body.windows(key.len()).any(|window| window == key.as_slice()), "{what}: the key leaked");
    }
    let (status, _, body) = deliver(&emulator, Method::GET, "00000000-0000-4000-8000-000000000000", Some(&token)).await;
    assert_eq!((status, refusal_code(&body).as_str()), (404, "KeyNotFound"));

    // Key deliveries are in the request log like every request.
    let logged: Vec<(String, u16)> = emulator
        .requests()
        .into_iter()
        .filter(|entry| entry.path.starts_with("/keydelivery/"))
        .map(|entry| (entry.method, entry.status))
        .collect();
    assert_eq!(logged.len(), 10, "{logged:?}");
    assert_eq!(logged[..2], [("GET".to_string(), 200), ("POST".to_string(), 200)]);
    assert_eq!(logged.iter().filter(|(_, status)| *status == 401).count(), 7, "{logged:?}");

    // The streaming policy stays while the locator uses it.
    let policy_url = url(&emulator, "streamingPolicies/envelope-jwt");
    let (status, body) = emulator.raw(Method::DELETE, &policy_url, None).await;
    assert_eq!(status, 409, "{body}");
    assert_arm_error(&body, "InvalidOperation");
    let (status, _) = emulator.raw(Method::DELETE, &url(&emulator, "streamingLocators/jwt-locator"), None).await;
    assert_eq!(status, 200);
    let (status, _) = emulator.raw(Method::DELETE, &policy_url, None).await;
    assert_eq!(status, 200);
    assert_eq!(deliver(&emulator, Method::GET, &kid, Some(&token)).await.0, 404, "the key went with its locator");
}

#[tokio::test]
async fn swt_and_open_policies_and_the_locators_policy_name() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    recorded_asset(&emulator).await;
    let (status, _) = put(&emulator, "contentKeyPolicies/swt", &policy(clear_key(), token_restriction("Swt"))).await;
    assert_eq!(status, 201);
    let open = json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyOpenRestriction"});
    let (status, _) = put(&emulator, "contentKeyPolicies/open", &policy(clear_key(), open)).await;
    assert_eq!(status, 201);
    // A streaming policy without a content key policy: each locator names its own.
    let (status, _) = put(&emulator, "streamingPolicies/envelope-any", &envelope_policy(None)).await;
    assert_eq!(status, 201);
    for (locator, key_policy) in [("swt-locator", "swt"), ("open-locator", "open")] {
        let body = json!({"properties": {"assetName": "show-asset", "streamingPolicyName": "envelope-any", "defaultContentKeyPolicyName": key_policy}});
        let (status, body) = put(&emulator, &format!("streamingLocators/{locator}"), &body).await;
        assert_eq!(status, 201, "{body}");
    }

    // SWT: a valid one opens the key; expired, other key or no token do not.
    let (kid, key) = content_key(&emulator, "swt-locator", "swt").await;
    let expected = (200, "application/octet-stream".to_string(), key.clone());
    assert_eq!(deliver(&emulator, Method::GET, &kid, Some(&swt(&kid, KEY, 600))).await, expected);
    for (what, token, code) in [
        ("expired", Some(swt(&kid, KEY, -5)), "TokenExpired"),
        ("another signing key", Some(swt(&kid, OTHER_KEY, 600)), "InvalidSignature"),
        ("no token", None, "MissingToken"),
    ] {
        let (status, _, body) = deliver(&emulator, Method::GET, &kid, token.as_deref()).await;
        assert_eq!((status, refusal_code(&body).as_str()), (401, code), "{what}");
    }

    // Open: the key for anyone, with or without a token.
    let (kid, key) = content_key(&emulator, "open-locator", "open").await;
    let expected = (200, "application/octet-stream".to_string(), key.clone());
    assert_eq!(deliver(&emulator, Method::GET, &kid, None).await, expected);
    assert_eq!(deliver(&emulator, Method::POST, &kid, Some("anything")).await, expected);

    // Keys given in the request are used; a named content key policy must exist.
    let given = json!({"properties": {"assetName": "show-asset", "streamingPolicyName": "envelope-any",
        "defaultContentKeyPolicyName": "open",
        "contentKeys": [{"labelReferenceInStreamingPolicy": "aes", "id": "60000000-0000-0000-0000-000000000001", "value": BASE64.encode([9u8; 16])}]}});
    let (status, body) = put(&emulator, "streamingLocators/given-locator", &given).await;
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = deliver(&emulator, Method::GET, "60000000-0000-0000-0000-000000000001", None).await;
    assert_eq!((status, body), (200, vec![9u8; 16]));
    let mut short = given.clone();
    short["properties"]["contentKeys"][0]["value"] = json!(BASE64.encode([9u8; 8]));
    let (status, body) = put(&emulator, "streamingLocators/short-locator", &short).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("contentKeys[0].value"), "{body}");
    let ghost = json!({"properties": {"assetName": "show-asset", "streamingPolicyName": "envelope-any", "defaultContentKeyPolicyName": "ghost"}});
    let (status, body) = put(&emulator, "streamingLocators/ghost-locator", &ghost).await;
    assert_eq!(status, 400);
    assert_arm_error(&body, "ContentKeyPolicyNotFound");

    // A policy with no ClearKey option delivers nothing here.
    let widevine =
        json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyWidevineConfiguration", "widevineTemplate": "{}"});
    let (status, _) = put(&emulator, "contentKeyPolicies/widevine", &policy(widevine, open_restriction())).await;
    assert_eq!(status, 201);
    let body = json!({"properties": {"assetName": "show-asset", "streamingPolicyName": "envelope-any", "defaultContentKeyPolicyName": "widevine"}});
    assert_eq!(put(&emulator, "streamingLocators/widevine-locator", &body).await.0, 201);
    let (kid, _) = content_key(&emulator, "widevine-locator", "widevine").await;
    let (status, _, body) = deliver(&emulator, Method::GET, &kid, None).await;
    assert_eq!((status, refusal_code(&body).as_str()), (403, "NoClearKeyOption"));
}

fn open_restriction() -> Value {
    json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyOpenRestriction"})
}

#[tokio::test]
async fn invalid_content_key_policies_are_refused_naming_the_field() {
    let emulator = TestEmulator::start(emulator_settings()).await;
    let mut no_issuer = token_restriction("Jwt");
    no_issuer.as_object_mut().unwrap().remove("issuer");
    let mut bad_token_type = token_restriction("Jwt");
    bad_token_type["restrictionTokenType"] = json!("Saml");
    let mut rsa_without_modulus = token_restriction("Jwt");
    rsa_without_modulus["primaryVerificationKey"] =
        json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyRsaTokenKey", "exponent": "AQAB"});
    let mut claim_without_type = token_restriction("Jwt");
    claim_without_type["requiredClaims"] = json!([{"claimValue": "x"}]);
    let playready = |licenses: Value| json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyPlayReadyConfiguration", "licenses": licenses});
    let cases = [
        ("token restriction without issuer", clear_key(), no_issuer, "restriction.issuer"),
        ("token type Saml", clear_key(), bad_token_type, "restriction.restrictionTokenType"),
        ("RSA key without modulus", clear_key(), rsa_without_modulus, "restriction.primaryVerificationKey"),
        ("claim without type", clear_key(), claim_without_type, "restriction.requiredClaims[0].claimType"),
        ("PlayReady without licenses", playready(json!([])), open_restriction(), "configuration.licenses"),
        (
            "PlayReady license without contentKeyLocation",
            playready(json!([{"licenseType": "NonPersistent", "contentType": "Unspecified"}])),
            open_restriction(),
            "configuration.licenses[0].contentKeyLocation",
        ),
        (
            "Widevine template not JSON",
            json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyWidevineConfiguration", "widevineTemplate": "{oops"}),
            open_restriction(),
            "configuration.widevineTemplate",
        ),
        (
            "unknown configuration",
            json!({"@odata.type": "#Microsoft.Media.Teleporter"}),
            open_restriction(),
            "configuration",
        ),
        ("unknown restriction", clear_key(), json!({"@odata.type": "#Microsoft.Media.Velvet"}), "restriction"),
    ];
    for (what, configuration, restriction, field) in cases {
        let (status, body) = put(&emulator, "contentKeyPolicies/bad", &policy(configuration, restriction)).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_arm_error(&body, "BadRequest");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("properties.options[0].{field}")), "{what}: {message}");
    }
    let (status, _) = emulator.raw(Method::GET, &url(&emulator, "contentKeyPolicies/bad"), None).await;
    assert_eq!(status, 404, "nothing was stored");

    // PUT replaces (200) and PATCH updates (200), both validated.
    let open = policy(clear_key(), open_restriction());
    assert_eq!(put(&emulator, "contentKeyPolicies/good", &open).await.0, 201);
    assert_eq!(put(&emulator, "contentKeyPolicies/good", &open).await.0, 200);
    let invalid = policy(clear_key(), json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyTokenRestriction"}));
    let (status, _) =
        emulator.raw(Method::PATCH, &url(&emulator, "contentKeyPolicies/good"), Some(&invalid.to_string())).await;
    assert_eq!(status, 400);
    let patch = json!({"properties": {"description": "patched"}});
    let (status, body) =
        emulator.raw(Method::PATCH, &url(&emulator, "contentKeyPolicies/good"), Some(&patch.to_string())).await;
    assert_eq!((status, body["properties"]["description"].as_str()), (200, Some("patched")));
    assert_eq!(body["properties"]["options"].as_array().map(Vec::len), Some(1), "options kept: {body}");
}
