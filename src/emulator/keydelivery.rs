//! Content protection in the emulator: what a content key policy option may say (validated on
//! `PUT`), the content keys a locator gets from a protected streaming policy, and a ClearKey
//! (AES envelope) key delivery that checks tokens against the policy's restriction, so that
//! protection can be rehearsed end to end.
//!
//! Key delivery: `GET` or `POST /keydelivery/{subscription}/{resourceGroup}/{account}?kid={keyId}`
//! with `Authorization: Bearer <token>`; 200 with the 16 key bytes, or a JSON error saying which
//! check failed (never the key). JWT (HS256/384/512 with a symmetric key, RS256/384/512 with an
//! RSA key; issuer, audience, `exp` with no leeway, `nbf`, required claims) and SWT (HMAC-SHA256).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Value, json};

use super::arm::ArmError;
use super::{Emulator, LoggedRequest, lock};
use crate::media::model::{ContentKeyPolicyOption, StreamingLocatorContentKey, StreamingPolicy};

/// The claim whose required value is the content key's id.
const KEY_ID_CLAIM: &str = "urn:microsoft:azure:mediaservices:contentkeyidentifier";
const CONFIGURATION: &str = "#Microsoft.Media.ContentKeyPolicy";

// === Validation of content key policy options ===

fn odata_type(value: &Value) -> &str {
    value.get("@odata.type").and_then(Value::as_str).unwrap_or_default()
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str).filter(|text| !text.is_empty())
}

/// Checks one option's configuration and restriction as the service would.
pub(crate) fn validate_option(index: usize, option: &ContentKeyPolicyOption) -> Result<(), ArmError> {
    let field = |name: &str| format!("properties.options[{index}].{name}");
    let bad = |message: String| Err(ArmError::bad_request(message));
    let configuration = option.configuration.as_ref().unwrap_or(&Value::Null);
    match odata_type(configuration).strip_prefix(CONFIGURATION) {
        Some("ClearKeyConfiguration" | "UnknownConfiguration" | "FairPlayConfiguration") => {}
        Some("PlayReadyConfiguration") => {
            let licenses = configuration.get("licenses").and_then(Value::as_array);
            let Some(licenses) = licenses.filter(|licenses| !licenses.is_empty()) else {
                return bad(format!("{} needs at least one license", field("configuration.licenses")));
            };
            for (position, license) in licenses.iter().enumerate() {
                for required in ["licenseType", "contentType", "contentKeyLocation"] {
                    if license.get(required).is_none_or(Value::is_null) {
                        return bad(format!(
                            "{} is required",
                            field(&format!("configuration.licenses[{position}].{required}"))
                        ));
                    }
                }
            }
        }
        Some("WidevineConfiguration") => {
            let template = text(configuration, "widevineTemplate");
            if template.is_none_or(|template| serde_json::from_str::<Value>(template).is_err()) {
                return bad(format!("{} must be a JSON document in a string", field("configuration.widevineTemplate")));
            }
        }
        _ => {
            return bad(format!(
                "{} must be a ClearKey, PlayReady, Widevine, FairPlay or Unknown configuration (@odata.type {:?})",
                field("configuration"),
                odata_type(configuration)
            ));
        }
    }
    let restriction = option.restriction.as_ref().unwrap_or(&Value::Null);
    match odata_type(restriction).strip_prefix(CONFIGURATION) {
        Some("OpenRestriction" | "UnknownRestriction") => Ok(()),
        Some("TokenRestriction") => {
            for required in ["issuer", "audience"] {
                if text(restriction, required).is_none() {
                    return bad(format!("{} is required", field(&format!("restriction.{required}"))));
                }
            }
            if !matches!(text(restriction, "restrictionTokenType"), Some("Jwt" | "Swt")) {
                return bad(format!("{} must be Jwt or Swt", field("restriction.restrictionTokenType")));
            }
            let primary = restriction.get("primaryVerificationKey").unwrap_or(&Value::Null);
            validate_key(&field("restriction.primaryVerificationKey"), primary)?;
            let alternates = restriction.get("alternateVerificationKeys").and_then(Value::as_array);
            for (position, key) in alternates.into_iter().flatten().enumerate() {
                validate_key(&field(&format!("restriction.alternateVerificationKeys[{position}]")), key)?;
            }
            let claims = restriction.get("requiredClaims").and_then(Value::as_array);
            for (position, claim) in claims.into_iter().flatten().enumerate() {
                if text(claim, "claimType").is_none() {
                    return bad(format!(
                        "{} is required",
                        field(&format!("restriction.requiredClaims[{position}].claimType"))
                    ));
                }
            }
            Ok(())
        }
        _ => bad(format!(
            "{} must be an Open, Token or Unknown restriction (@odata.type {:?})",
            field("restriction"),
            odata_type(restriction)
        )),
    }
}

fn validate_key(field: &str, key: &Value) -> Result<(), ArmError> {
    let base64 = |name: &str| text(key, name).is_some_and(|value| BASE64.decode(value).is_ok());
    let valid = match odata_type(key).strip_prefix(CONFIGURATION) {
        Some("SymmetricTokenKey") => base64("keyValue"),
        Some("RsaTokenKey") => base64("exponent") && base64("modulus"),
        Some("X509CertificateTokenKey") => base64("rawBody"),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(ArmError::bad_request(format!(
            "{field} must be a SymmetricTokenKey {{keyValue}}, RsaTokenKey {{exponent, modulus}} or X509CertificateTokenKey {{rawBody}}, base64"
        )))
    }
}

// === Content keys of a locator ===

/// The content keys a locator with `policy` gets: the ones asked for (checked, completed), or one
/// generated per encryption section of the policy. `fallback` is the content key policy when
/// neither the key nor the section names one.
pub(crate) fn content_keys(
    policy: &StreamingPolicy,
    requested: Option<Vec<StreamingLocatorContentKey>>,
    fallback: Option<&str>,
) -> Result<Vec<StreamingLocatorContentKey>, ArmError> {
    let properties = &policy.properties;
    let sections = [
        ("EnvelopeEncryption", &properties.envelope_encryption),
        ("CommonEncryptionCenc", &properties.common_encryption_cenc),
        ("CommonEncryptionCbcs", &properties.common_encryption_cbcs),
    ];
    let mut keys = Vec::new();
    for (kind, section) in sections {
        let Some(section) = section else { continue };
        let default_key = section.extra.get("contentKeys").and_then(|keys| keys.get("defaultKey"));
        let label = default_key.and_then(|key| text(key, "label")).map(str::to_string);
        let policy_name = default_key
            .and_then(|key| text(key, "policyName"))
            .map(str::to_string)
            .or_else(|| fallback.map(str::to_string))
            .or_else(|| properties.default_content_key_policy_name.clone());
        let asked = requested.as_ref().and_then(|requested| {
            requested.iter().find(|key| key.label_reference_in_streaming_policy == label || requested.len() == 1)
        });
        let id = match asked.and_then(|key| key.id.clone()) {
            Some(id) if uuid::Uuid::parse_str(&id).is_err() => {
                return Err(ArmError::bad_request("properties.contentKeys[].id must be a GUID."));
            }
            Some(id) => id,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let value = match asked.and_then(|key| key.value.clone()) {
            Some(value) if BASE64.decode(&value).map(|bytes| bytes.len()) != Ok(16) => {
                return Err(ArmError::bad_request("properties.contentKeys[].value must be 16 bytes, base64."));
            }
            Some(value) => value,
            None => BASE64.encode(rand::random::<[u8; 16]>()),
        };
        keys.push(StreamingLocatorContentKey {
            id: Some(id),
            kind: Some(kind.into()),
            label_reference_in_streaming_policy: label,
            value: Some(value),
            policy_name,
            tracks: Some(Vec::new()),
        });
    }
    if keys.is_empty() && requested.is_some_and(|requested| !requested.is_empty()) {
        return Err(ArmError::bad_request("properties.contentKeys is only for a streaming policy with encryption."));
    }
    Ok(keys)
}

// === Key delivery ===

#[derive(Debug, Deserialize)]
pub(crate) struct KeyQuery {
    kid: Option<String>,
}

/// Why a key is not delivered.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn token(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "InvalidToken", message)
    }
}

/// `GET|POST /keydelivery/{subscription}/{resourceGroup}/{account}?kid=`.
pub(crate) async fn deliver(
    State(emulator): State<Emulator>,
    Path((subscription, group, account)): Path<(String, String, String)>,
    Query(query): Query<KeyQuery>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let at_ms = emulator.elapsed_ms();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("Bearer=")))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let now = emulator.inner.clock.now().timestamp();
    let outcome = {
        let world = lock(&emulator.inner.world);
        let key = format!("{subscription}/{group}/{account}").to_lowercase();
        match world.accounts.get(&key) {
            None => Err(Refusal::new(StatusCode::NOT_FOUND, "AccountNotFound", format!("no account {account:?}"))),
            Some(account) => find_and_check(account, query.kid.as_deref(), token, now),
        }
    };
    let status = match &outcome {
        Ok(_) => StatusCode::OK,
        Err(refusal) => refusal.status,
    };
    emulator.record(LoggedRequest {
        seq: 0,
        at_ms,
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        body: None,
        status: status.as_u16(),
        fault: None,
        retry_after: None,
    });
    match outcome {
        Ok(key) => ([(header::CONTENT_TYPE, "application/octet-stream")], key).into_response(),
        Err(refusal) => {
            tracing::debug!(code = refusal.code, reason = %refusal.message, "Key delivery refused.");
            let body = json!({"error": {"code": refusal.code, "message": refusal.message}});
            let mut response = (refusal.status, axum::Json(body)).into_response();
            if refusal.status == StatusCode::UNAUTHORIZED
                && let Ok(value) = axum::http::HeaderValue::from_str("Bearer")
            {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
            }
            response
        }
    }
}

fn find_and_check(
    account: &super::state::Account,
    kid: Option<&str>,
    token: Option<&str>,
    now: i64,
) -> Result<Vec<u8>, Refusal> {
    let kid = kid.filter(|kid| !kid.is_empty()).ok_or_else(|| {
        Refusal::new(StatusCode::BAD_REQUEST, "MissingKeyId", "the key id is the kid query parameter")
    })?;
    let key = account
        .streaming_locators
        .values()
        .flat_map(|locator| locator.properties.content_keys.iter().flatten())
        .find(|key| key.id.as_deref().is_some_and(|id| id.eq_ignore_ascii_case(kid)))
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "KeyNotFound", format!("no content key {kid}")))?;
    let policy_name = key.policy_name.as_deref().unwrap_or_default();
    let policy = account.content_key_policies.get(&policy_name.to_lowercase()).ok_or_else(|| {
        Refusal::new(
            StatusCode::FORBIDDEN,
            "PolicyNotFound",
            format!("the key's content key policy {policy_name:?} does not exist"),
        )
    })?;
    let clear_key: Vec<&ContentKeyPolicyOption> = policy
        .properties
        .options
        .iter()
        .flatten()
        .filter(|option| {
            option.configuration.as_ref().is_some_and(|configuration| {
                odata_type(configuration) == "#Microsoft.Media.ContentKeyPolicyClearKeyConfiguration"
            })
        })
        .collect();
    if clear_key.is_empty() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "NoClearKeyOption",
            format!(
                "the content key policy {policy_name:?} has no ClearKey option: this delivery serves AES keys only"
            ),
        ));
    }
    let value = BASE64
        .decode(key.value.as_deref().unwrap_or_default())
        .map_err(|_| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "BadKey", "the stored key is not base64"))?;
    let mut refusal = None;
    for option in clear_key {
        let restriction = option.restriction.as_ref().unwrap_or(&Value::Null);
        match check(restriction, token, kid, now) {
            Ok(()) => return Ok(value),
            Err(why) => refusal = Some(why),
        }
    }
    Err(refusal.unwrap_or_else(|| Refusal::token("no option accepts this token")))
}

/// Whether `token` satisfies `restriction` for key `kid` at `now` (Unix seconds).
fn check(restriction: &Value, token: Option<&str>, kid: &str, now: i64) -> Result<(), Refusal> {
    match odata_type(restriction) {
        "#Microsoft.Media.ContentKeyPolicyOpenRestriction" => return Ok(()),
        "#Microsoft.Media.ContentKeyPolicyTokenRestriction" => {}
        other => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "UnsupportedRestriction",
                format!("{other:?} cannot be checked here"),
            ));
        }
    }
    let token = token.ok_or_else(|| Refusal::token("a token is required: Authorization: Bearer <token>"))?;
    let issuer = text(restriction, "issuer").unwrap_or_default();
    let audience = text(restriction, "audience").unwrap_or_default();
    let keys: Vec<&Value> = std::iter::once(restriction.get("primaryVerificationKey"))
        .flatten()
        .chain(restriction.get("alternateVerificationKeys").and_then(Value::as_array).into_iter().flatten())
        .collect();
    let claims = match text(restriction, "restrictionTokenType") {
        Some("Swt") => swt_claims(token, &keys, issuer, audience, now)?,
        _ => jwt_claims(token, &keys, issuer, audience)?,
    };
    for required in restriction.get("requiredClaims").and_then(Value::as_array).into_iter().flatten() {
        let kind = text(required, "claimType").unwrap_or_default();
        let present = claims.get(kind).map(|value| value.as_str().map_or_else(|| value.to_string(), str::to_string));
        let Some(present) = present else { return Err(Refusal::token(format!("the token lacks the claim {kind}"))) };
        let matches = match text(required, "claimValue") {
            Some(expected) => present == expected,
            None if kind == KEY_ID_CLAIM => present.eq_ignore_ascii_case(kid),
            None => true,
        };
        if !matches {
            return Err(Refusal::token(format!("the claim {kind} does not have the required value")));
        }
    }
    Ok(())
}

fn jwt_claims(
    token: &str,
    keys: &[&Value],
    issuer: &str,
    audience: &str,
) -> Result<serde_json::Map<String, Value>, Refusal> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
    let header = jsonwebtoken::decode_header(token).map_err(|error| Refusal::token(format!("not a JWT: {error}")))?;
    let mut last = Refusal::token("no verification key of the policy fits the token's algorithm");
    for key in keys {
        let (decoding, algorithms) = match odata_type(key) {
            "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey" => {
                let Ok(secret) = BASE64.decode(text(key, "keyValue").unwrap_or_default()) else { continue };
                (DecodingKey::from_secret(&secret), vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])
            }
            "#Microsoft.Media.ContentKeyPolicyRsaTokenKey" => {
                let component = |name| {
                    BASE64.decode(text(key, name).unwrap_or_default()).ok().map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
                };
                let (Some(modulus), Some(exponent)) = (component("modulus"), component("exponent")) else { continue };
                let Ok(decoding) = DecodingKey::from_rsa_components(&modulus, &exponent) else { continue };
                (decoding, vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512])
            }
            _ => {
                last = Refusal::token("X.509 verification keys are not supported by the emulator's key delivery");
                continue;
            }
        };
        if !algorithms.contains(&header.alg) {
            continue;
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &decoding, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(error) => {
                let message = match error.kind() {
                    ErrorKind::InvalidSignature => {
                        "the signature does not match the policy's verification keys".to_string()
                    }
                    ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                    ErrorKind::InvalidAudience => format!("the token's audience is not {audience}"),
                    ErrorKind::InvalidIssuer => format!("the token's issuer is not {issuer}"),
                    ErrorKind::MissingRequiredClaim(claim) => format!("the token lacks the claim {claim}"),
                    _ => format!("invalid token: {error}"),
                };
                let signature = matches!(error.kind(), ErrorKind::InvalidSignature);
                last = Refusal::token(message);
                if !signature {
                    // The key fitted: the token itself is wrong, another key will not help.
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

fn swt_claims(
    token: &str,
    keys: &[&Value],
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<serde_json::Map<String, Value>, Refusal> {
    use hmac::Mac;
    let (unsigned, signature) =
        token.rsplit_once("&HMACSHA256=").ok_or_else(|| Refusal::token("not an SWT: no HMACSHA256 signature"))?;
    let signature: String = url::form_urlencoded::parse(format!("s={signature}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let signature = BASE64.decode(signature).map_err(|_| Refusal::token("the SWT signature is not base64"))?;
    let signed =
        keys.iter().filter(|key| odata_type(key) == "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey").any(|key| {
            let secret = BASE64.decode(text(key, "keyValue").unwrap_or_default()).unwrap_or_default();
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret)
                .map(|mut mac| {
                    mac.update(unsigned.as_bytes());
                    mac.verify_slice(&signature).is_ok()
                })
                .unwrap_or(false)
        });
    if !signed {
        return Err(Refusal::token("the signature does not match the policy's verification keys"));
    }
    let claims: serde_json::Map<String, Value> = url::form_urlencoded::parse(unsigned.as_bytes())
        .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
        .collect();
    let field = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    if field("Issuer") != issuer {
        return Err(Refusal::token(format!("the token's issuer is not {issuer}")));
    }
    if field("Audience") != audience {
        return Err(Refusal::token(format!("the token's audience is not {audience}")));
    }
    match field("ExpiresOn").parse::<i64>() {
        Ok(expires) if expires > now => Ok(claims),
        Ok(_) => Err(Refusal::token("the token has expired")),
        Err(_) => Err(Refusal::token("the token lacks ExpiresOn")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(configuration: Value, restriction: Value) -> ContentKeyPolicyOption {
        ContentKeyPolicyOption {
            configuration: Some(configuration),
            restriction: Some(restriction),
            ..Default::default()
        }
    }

    fn token_restriction() -> Value {
        json!({
            "@odata.type": "#Microsoft.Media.ContentKeyPolicyTokenRestriction",
            "issuer": "https://sts.example", "audience": "urn:a", "restrictionTokenType": "Jwt",
            "primaryVerificationKey": {"@odata.type": "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey", "keyValue": BASE64.encode(b"0123456789abcdef")},
            "requiredClaims": [{"claimType": KEY_ID_CLAIM}]
        })
    }

    #[test]
    fn options_are_checked_field_by_field() {
        let clear = json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyClearKeyConfiguration"});
        assert!(validate_option(0, &option(clear.clone(), token_restriction())).is_ok());
        let mut no_issuer = token_restriction();
        no_issuer["issuer"] = json!("");
        let error = validate_option(2, &option(clear.clone(), no_issuer)).unwrap_err();
        assert!(error.message.contains("properties.options[2].restriction.issuer"), "{}", error.message);
        let playready =
            json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyPlayReadyConfiguration", "licenses": []});
        assert!(validate_option(0, &option(playready, token_restriction())).is_err());
        let widevine = json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyWidevineConfiguration", "widevineTemplate": "{not json"});
        assert!(validate_option(0, &option(widevine, token_restriction())).is_err());
        let unknown = json!({"@odata.type": "#Microsoft.Media.Something"});
        assert!(validate_option(0, &option(unknown, token_restriction())).is_err());
        let mut bad_key = token_restriction();
        bad_key["primaryVerificationKey"]["keyValue"] = json!("***");
        assert!(validate_option(0, &option(clear, bad_key)).is_err());
    }

    #[test]
    fn an_swt_is_checked_for_signature_issuer_audience_and_expiry() {
        use hmac::Mac;
        let restriction = token_restriction();
        let keys = vec![&restriction["primaryVerificationKey"]];
        let sign = |unsigned: &str, secret: &[u8]| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            mac.update(unsigned.as_bytes());
            let signature = BASE64.encode(mac.finalize().into_bytes());
            format!(
                "{unsigned}&HMACSHA256={}",
                url::form_urlencoded::byte_serialize(signature.as_bytes()).collect::<String>()
            )
        };
        let unsigned = "Issuer=https%3A%2F%2Fsts.example&Audience=urn%3Aa&ExpiresOn=2000";
        assert!(swt_claims(&sign(unsigned, b"0123456789abcdef"), &keys, "https://sts.example", "urn:a", 1000).is_ok());
        assert!(swt_claims(&sign(unsigned, b"another-key-0000"), &keys, "https://sts.example", "urn:a", 1000).is_err());
        assert!(swt_claims(&sign(unsigned, b"0123456789abcdef"), &keys, "https://sts.example", "urn:a", 3000).is_err());
        assert!(swt_claims(&sign(unsigned, b"0123456789abcdef"), &keys, "https://sts.example", "urn:b", 1000).is_err());
    }
}
