//! Content protection in the emulator: what a content key policy option may say (validated on
//! `PUT` and `PATCH`), the content keys a locator gets from a protected streaming policy, and a
//! ClearKey (AES envelope) key delivery that checks tokens against the policy's restriction, so
//! that protection can be rehearsed end to end.
//!
//! Key delivery: `GET` or `POST /keydelivery/{subscription}/{resourceGroup}/{account}?kid={keyId}`
//! with `Authorization: Bearer <token>` (the playback token, not an ARM one; never faulted, always
//! logged); 200 with the 16 key bytes, or a JSON error whose code names the failed check (never
//! the key). JWT (HS256/384/512 with a symmetric key, RS256/384/512 with an RSA key; issuer,
//! audience, `exp` required with no leeway, `nbf`, required claims; times from the emulator's
//! clock) and SWT (HMAC-SHA256 over everything before `&HMACSHA256=`).

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

/// The encryption sections of a streaming policy that carry a content key: the key type, and the
/// section if the policy has it.
fn encryption_sections(
    policy: &StreamingPolicy,
) -> [(&'static str, Option<&crate::media::model::EncryptionScheme>); 3] {
    let properties = &policy.properties;
    [
        ("EnvelopeEncryption", properties.envelope_encryption.as_ref()),
        ("CommonEncryptionCenc", properties.common_encryption_cenc.as_ref()),
        ("CommonEncryptionCbcs", properties.common_encryption_cbcs.as_ref()),
    ]
}

/// The content keys a locator with `policy` gets: one per encryption section of the policy, taken
/// from the keys asked for (matched by `labelReferenceInStreamingPolicy`, checked, completed) or
/// generated. A key's content key policy is its section's `contentKeys.defaultKey.policyName`, else
/// `fallback` (the locator's `defaultContentKeyPolicyName`), else the policy's.
pub(crate) fn content_keys(
    policy: &StreamingPolicy,
    requested: Option<Vec<StreamingLocatorContentKey>>,
    fallback: Option<&str>,
) -> Result<Vec<StreamingLocatorContentKey>, ArmError> {
    let requested = requested.unwrap_or_default();
    let sections: Vec<(&str, &crate::media::model::EncryptionScheme)> = encryption_sections(policy)
        .into_iter()
        .filter_map(|(kind, section)| section.map(|section| (kind, section)))
        .collect();
    if sections.is_empty() {
        if !requested.is_empty() {
            return Err(ArmError::bad_request(
                "properties.contentKeys is only for a streaming policy with envelopeEncryption, commonEncryptionCenc or commonEncryptionCbcs.",
            ));
        }
        return Ok(Vec::new());
    }
    let labels: Vec<Option<String>> = sections
        .iter()
        .map(|(_, section)| {
            let default_key = section.extra.get("contentKeys").and_then(|keys| keys.get("defaultKey"));
            default_key.and_then(|key| text(key, "label")).map(str::to_string)
        })
        .collect();
    // Which section each requested key is for; every requested key must be for exactly one.
    let mut given: Vec<Option<(usize, &StreamingLocatorContentKey)>> = vec![None; sections.len()];
    for (position, key) in requested.iter().enumerate() {
        let field = |name: &str| format!("properties.contentKeys[{position}].{name}");
        let section = match key.label_reference_in_streaming_policy.as_deref().filter(|label| !label.is_empty()) {
            Some(label) => labels.iter().position(|known| known.as_deref() == Some(label)).ok_or_else(|| {
                ArmError::bad_request(format!(
                    "{} {label:?} is not the label of a content key in the streaming policy.",
                    field("labelReferenceInStreamingPolicy")
                ))
            })?,
            None if sections.len() == 1 => 0,
            None => {
                return Err(ArmError::bad_request(format!(
                    "{} is required: the streaming policy has several content keys.",
                    field("labelReferenceInStreamingPolicy")
                )));
            }
        };
        if given[section].is_some() {
            return Err(ArmError::bad_request(format!(
                "{} names a content key that another entry already gives.",
                field("labelReferenceInStreamingPolicy")
            )));
        }
        given[section] = Some((position, key));
    }
    let mut keys = Vec::new();
    for (((kind, section), label), asked) in sections.iter().zip(labels).zip(given) {
        let default_key = section.extra.get("contentKeys").and_then(|keys| keys.get("defaultKey"));
        let policy_name = default_key
            .and_then(|key| text(key, "policyName"))
            .or(fallback)
            .or(policy.properties.default_content_key_policy_name.as_deref())
            .filter(|name| !name.is_empty())
            .map(str::to_string);
        let (id, value) = match asked {
            Some((position, key)) => checked_key(position, key)?,
            None => (uuid::Uuid::new_v4().to_string(), BASE64.encode(rand::random::<[u8; 16]>())),
        };
        keys.push(StreamingLocatorContentKey {
            id: Some(id),
            kind: Some((*kind).into()),
            label_reference_in_streaming_policy: label,
            value: Some(value),
            policy_name,
            tracks: Some(Vec::new()),
        });
    }
    Ok(keys)
}

/// A requested key's id (a GUID, generated when missing) and value (16 bytes in base64, generated
/// when missing).
fn checked_key(position: usize, key: &StreamingLocatorContentKey) -> Result<(String, String), ArmError> {
    let id = match key.id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => uuid::Uuid::parse_str(id)
            .map(|id| id.hyphenated().to_string())
            .map_err(|_| ArmError::bad_request(format!("properties.contentKeys[{position}].id must be a GUID.")))?,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let value = match key.value.as_deref().filter(|value| !value.is_empty()) {
        Some(value) if BASE64.decode(value).map(|bytes| bytes.len()) == Ok(16) => value.to_string(),
        Some(_) => {
            return Err(ArmError::bad_request(format!(
                "properties.contentKeys[{position}].value must be 16 bytes in base64."
            )));
        }
        None => BASE64.encode(rand::random::<[u8; 16]>()),
    };
    Ok((id, value))
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

    /// A 401: the token is missing or fails the check `code` names.
    fn token(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
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
    Err(refusal.unwrap_or_else(|| Refusal::token("InvalidToken", "no option accepts this token")))
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
    let token =
        token.ok_or_else(|| Refusal::token("MissingToken", "a token is required: Authorization: Bearer <token>"))?;
    let issuer = text(restriction, "issuer").unwrap_or_default();
    let audience = text(restriction, "audience").unwrap_or_default();
    let keys: Vec<&Value> = std::iter::once(restriction.get("primaryVerificationKey"))
        .flatten()
        .chain(restriction.get("alternateVerificationKeys").and_then(Value::as_array).into_iter().flatten())
        .collect();
    let claims = match text(restriction, "restrictionTokenType") {
        Some("Swt") => swt_claims(token, &keys, issuer, audience, now)?,
        _ => jwt_claims(token, &keys, issuer, audience, now)?,
    };
    for required in restriction.get("requiredClaims").and_then(Value::as_array).into_iter().flatten() {
        let kind = text(required, "claimType").unwrap_or_default();
        let present = claims.get(kind).map(|value| value.as_str().map_or_else(|| value.to_string(), str::to_string));
        let Some(present) = present else {
            return Err(Refusal::token("MissingClaim", format!("the token lacks the claim {kind}")));
        };
        let matches = match text(required, "claimValue") {
            Some(expected) => present == expected,
            None if kind == KEY_ID_CLAIM => present.eq_ignore_ascii_case(kid),
            None => true,
        };
        if !matches {
            return Err(Refusal::token("InvalidClaim", format!("the claim {kind} does not have the required value")));
        }
    }
    Ok(())
}

/// The claims of a JWT signed by one of `keys`, for `issuer` and `audience`, valid at `now`
/// (`exp` required, no leeway; `nbf` if present). Times are the emulator's clock.
fn jwt_claims(
    token: &str,
    keys: &[&Value],
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<serde_json::Map<String, Value>, Refusal> {
    use jsonwebtoken::Validation;
    let header = jsonwebtoken::decode_header(token)
        .map_err(|error| Refusal::token("MalformedToken", format!("not a JWT: {error}")))?;
    let mut last = Refusal::token("InvalidSignature", "no verification key of the policy fits the token's algorithm");
    for key in keys {
        let (decoding, algorithms) = match jwt_key(key) {
            Ok(Some(fitting)) => fitting,
            Ok(None) => continue,
            Err(refusal) => {
                last = refusal;
                continue;
            }
        };
        if !algorithms.contains(&header.alg) {
            continue;
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        // Expiry and not-before are checked below against the emulator's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &decoding, &validation) {
            Ok(data) => data.claims,
            Err(error) => {
                let (code, message) = jwt_refusal(&error, issuer, audience);
                last = Refusal::token(code, message);
                if code == "InvalidSignature" {
                    continue;
                }
                // The key fitted: the token itself is wrong, another key will not help.
                return Err(last);
            }
        };
        return check_jwt_times(&claims, now).map(|()| claims);
    }
    Err(last)
}

/// The decoding key of a policy's verification key and the algorithms it verifies; `None` when
/// the key's material is unusable, a refusal when its type is not supported.
fn jwt_key(key: &Value) -> Result<Option<(jsonwebtoken::DecodingKey, Vec<jsonwebtoken::Algorithm>)>, Refusal> {
    use jsonwebtoken::{Algorithm, DecodingKey};
    match odata_type(key) {
        "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey" => {
            let Ok(secret) = BASE64.decode(text(key, "keyValue").unwrap_or_default()) else { return Ok(None) };
            Ok(Some((DecodingKey::from_secret(&secret), vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])))
        }
        "#Microsoft.Media.ContentKeyPolicyRsaTokenKey" => {
            let component = |name| {
                BASE64.decode(text(key, name).unwrap_or_default()).ok().map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
            };
            let (Some(modulus), Some(exponent)) = (component("modulus"), component("exponent")) else {
                return Ok(None);
            };
            let Ok(decoding) = DecodingKey::from_rsa_components(&modulus, &exponent) else { return Ok(None) };
            Ok(Some((decoding, vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512])))
        }
        _ => Err(Refusal::token(
            "UnsupportedVerificationKey",
            "X.509 verification keys are not supported by the emulator's key delivery",
        )),
    }
}

/// The code and message of a JWT the library refused.
fn jwt_refusal(error: &jsonwebtoken::errors::Error, issuer: &str, audience: &str) -> (&'static str, String) {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => {
            ("InvalidSignature", "the signature does not match the policy's verification keys".to_string())
        }
        ErrorKind::InvalidAudience => ("InvalidAudience", format!("the token's audience is not {audience}")),
        ErrorKind::InvalidIssuer => ("InvalidIssuer", format!("the token's issuer is not {issuer}")),
        ErrorKind::MissingRequiredClaim(claim) => ("MissingClaim", format!("the token lacks the claim {claim}")),
        _ => ("MalformedToken", format!("invalid token: {error}")),
    }
}

/// Checks a verified JWT's `exp` (required) and `nbf` against the emulator's clock (Unix seconds).
fn check_jwt_times(claims: &serde_json::Map<String, Value>, now: i64) -> Result<(), Refusal> {
    let time = |name: &str| claims.get(name).map(|value| value.as_i64().or_else(|| value.as_f64().map(|v| v as i64)));
    match (time("exp"), time("nbf")) {
        (Some(None), _) | (_, Some(None)) => {
            Err(Refusal::token("MalformedToken", "exp and nbf must be numbers (Unix seconds)"))
        }
        (Some(Some(expires)), _) if expires <= now => Err(Refusal::token("TokenExpired", "the token has expired")),
        (_, Some(Some(not_before))) if not_before > now => {
            Err(Refusal::token("TokenNotYetValid", "the token is not valid yet (nbf)"))
        }
        (None, _) => Err(Refusal::token("MissingClaim", "the token lacks the claim exp")),
        _ => Ok(()),
    }
}

/// The claims of an SWT (`Issuer=..&Audience=..&ExpiresOn=..&..&HMACSHA256=..`) signed with one
/// of the symmetric `keys`, for `issuer` and `audience`, unexpired at `now`.
fn swt_claims(
    token: &str,
    keys: &[&Value],
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<serde_json::Map<String, Value>, Refusal> {
    use hmac::Mac;
    let (unsigned, signature) = token
        .rsplit_once("&HMACSHA256=")
        .ok_or_else(|| Refusal::token("MalformedToken", "not an SWT: no HMACSHA256 signature"))?;
    let signature: String = url::form_urlencoded::parse(format!("s={signature}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let signature =
        BASE64.decode(signature).map_err(|_| Refusal::token("MalformedToken", "the SWT signature is not base64"))?;
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
        return Err(Refusal::token("InvalidSignature", "the signature does not match the policy's verification keys"));
    }
    let claims: serde_json::Map<String, Value> = url::form_urlencoded::parse(unsigned.as_bytes())
        .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
        .collect();
    let field = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    if field("Issuer") != issuer {
        return Err(Refusal::token("InvalidIssuer", format!("the token's issuer is not {issuer}")));
    }
    if field("Audience") != audience {
        return Err(Refusal::token("InvalidAudience", format!("the token's audience is not {audience}")));
    }
    match field("ExpiresOn").parse::<i64>() {
        Ok(expires) if expires > now => Ok(claims),
        Ok(_) => Err(Refusal::token("TokenExpired", "the token has expired")),
        Err(_) => Err(Refusal::token("MissingClaim", "the token lacks ExpiresOn")),
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

    fn envelope_policy(label: &str, policy_name: Option<&str>) -> StreamingPolicy {
        let mut default_key = json!({"label": label});
        if let Some(name) = policy_name {
            default_key["policyName"] = json!(name);
        }
        serde_json::from_value(json!({"properties": {"envelopeEncryption": {
            "enabledProtocols": {"download": false, "dash": true, "hls": true, "smoothStreaming": true},
            "contentKeys": {"defaultKey": default_key}
        }}}))
        .unwrap()
    }

    fn requested(label: Option<&str>, id: Option<&str>, value: Option<&str>) -> StreamingLocatorContentKey {
        StreamingLocatorContentKey {
            label_reference_in_streaming_policy: label.map(str::to_string),
            id: id.map(str::to_string),
            value: value.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn a_protected_policy_gives_one_key_per_section_generated_or_as_asked() {
        let policy = envelope_policy("aes", Some("tokens"));
        let keys = content_keys(&policy, None, Some("fallback")).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kind.as_deref(), Some("EnvelopeEncryption"));
        assert_eq!(keys[0].label_reference_in_streaming_policy.as_deref(), Some("aes"));
        assert_eq!(keys[0].policy_name.as_deref(), Some("tokens"), "the section's policy first");
        assert!(uuid::Uuid::parse_str(keys[0].id.as_deref().unwrap()).is_ok());
        assert_eq!(BASE64.decode(keys[0].value.as_deref().unwrap()).unwrap().len(), 16);

        let unnamed = envelope_policy("aes", None);
        let keys = content_keys(&unnamed, None, Some("fallback")).unwrap();
        assert_eq!(keys[0].policy_name.as_deref(), Some("fallback"), "then the locator's");

        let value = BASE64.encode([7u8; 16]);
        let id = "60000000-0000-0000-0000-00000000000A";
        let keys = content_keys(&policy, Some(vec![requested(Some("aes"), Some(id), Some(&value))]), None).unwrap();
        assert_eq!(keys[0].id.as_deref(), Some("60000000-0000-0000-0000-00000000000a"));
        assert_eq!(keys[0].value.as_deref(), Some(value.as_str()));
        let keys = content_keys(&policy, Some(vec![requested(None, None, None)]), None).unwrap();
        assert_eq!(BASE64.decode(keys[0].value.as_deref().unwrap()).unwrap().len(), 16, "completed");

        for (what, key, field) in [
            ("an id that is no GUID", requested(Some("aes"), Some("key-1"), None), "contentKeys[0].id"),
            ("8 bytes", requested(Some("aes"), None, Some(&BASE64.encode([1u8; 8]))), "contentKeys[0].value"),
            ("not base64", requested(Some("aes"), None, Some("***")), "contentKeys[0].value"),
            ("an unknown label", requested(Some("cenc"), None, None), "labelReferenceInStreamingPolicy"),
        ] {
            let error = content_keys(&policy, Some(vec![key]), None).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{what}");
            assert!(error.message.contains(field), "{what}: {}", error.message);
        }
        let clear: StreamingPolicy = serde_json::from_value(json!({"properties": {"noEncryption": {
            "enabledProtocols": {"download": false, "dash": true, "hls": true, "smoothStreaming": true}}}}))
        .unwrap();
        assert_eq!(content_keys(&clear, None, None).unwrap(), Vec::new());
        assert!(content_keys(&clear, Some(vec![requested(None, None, None)]), None).is_err());
    }

    const SECRET: &[u8] = b"0123456789abcdef";

    fn jwt(claims: Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn a_jwt_is_checked_against_the_emulators_clock_and_the_required_claims() {
        let restriction = token_restriction();
        let kid = "9259eb06-eeee-4f77-987f-48f4ea5c649f";
        let now = 1_000_000;
        let claims = |exp: i64| json!({"iss": "https://sts.example", "aud": "urn:a", "exp": exp, KEY_ID_CLAIM: kid});
        let code = |token: Option<String>, at: i64| {
            check(&restriction, token.as_deref(), kid, at).err().map(|refusal| (refusal.status.as_u16(), refusal.code))
        };
        assert_eq!(code(Some(jwt(claims(now + 60), SECRET)), now), None);
        assert_eq!(code(Some(jwt(claims(now), SECRET)), now), Some((401, "TokenExpired")), "no leeway");
        assert_eq!(code(Some(jwt(claims(now + 60), SECRET)), now + 61), Some((401, "TokenExpired")));
        let mut early = claims(now + 60);
        early["nbf"] = json!(now + 30);
        assert_eq!(code(Some(jwt(early, SECRET)), now), Some((401, "TokenNotYetValid")));
        assert_eq!(code(Some(jwt(claims(now + 60), b"fedcba9876543210")), now), Some((401, "InvalidSignature")));
        let mut other_audience = claims(now + 60);
        other_audience["aud"] = json!("urn:b");
        assert_eq!(code(Some(jwt(other_audience, SECRET)), now), Some((401, "InvalidAudience")));
        let mut other_issuer = claims(now + 60);
        other_issuer["iss"] = json!("https://elsewhere");
        assert_eq!(code(Some(jwt(other_issuer, SECRET)), now), Some((401, "InvalidIssuer")));
        let mut no_kid = claims(now + 60);
        no_kid.as_object_mut().unwrap().remove(KEY_ID_CLAIM);
        assert_eq!(code(Some(jwt(no_kid, SECRET)), now), Some((401, "MissingClaim")));
        let mut other_kid = claims(now + 60);
        other_kid[KEY_ID_CLAIM] = json!("00000000-0000-4000-8000-000000000000");
        assert_eq!(code(Some(jwt(other_kid, SECRET)), now), Some((401, "InvalidClaim")));
        let no_exp = json!({"iss": "https://sts.example", "aud": "urn:a", KEY_ID_CLAIM: kid});
        assert_eq!(code(Some(jwt(no_exp, SECRET)), now), Some((401, "MissingClaim")));
        assert_eq!(code(None, now), Some((401, "MissingToken")));
        assert_eq!(code(Some("not-a-token".into()), now), Some((401, "MalformedToken")));

        // An alternate key verifies too.
        let mut with_alternate = token_restriction();
        with_alternate["alternateVerificationKeys"] = json!([{"@odata.type": "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey", "keyValue": BASE64.encode(b"fedcba9876543210")}]);
        assert!(check(&with_alternate, Some(&jwt(claims(now + 60), b"fedcba9876543210")), kid, now).is_ok());
        let open = json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyOpenRestriction"});
        assert!(check(&open, None, kid, now).is_ok());
    }
}
