//! Content protection: content key policies defined in the settings, the streaming policies that
//! use them, and playback tokens for rehearsals.
//!
//! A broadcast is published in the clear (the default), with AES-128 envelope encryption
//! (`protection = "envelope"`, keys delivered by the service's ClearKey key delivery), or with
//! multi-DRM common encryption (`protection = "multi-drm"`: PlayReady and Widevine licences,
//! CENC). Either way it names a content key policy, `[content_key_policies.<name>]`, which says
//! who may get the keys: anyone (`restriction = "open"`) or holders of a token signed with the
//! policy's verification key, for its issuer and audience, with the required claims.
//!
//! The `locator.publish` action makes the content key policy equal to this definition (created,
//! or updated when it differs), makes the streaming policy `onair-<mode>-<policy>` present, and
//! publishes the locator with it (`engine::executor`); `onair token` mints a token for a
//! broadcast (`mint`).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use crate::media::model::{ContentKeyPolicyOption, ContentKeyPolicyProperties, StreamingPolicyProperties};

/// The claim whose value must be the content key's id when a policy requires it without a value.
pub const CONTENT_KEY_ID_CLAIM: &str = "urn:microsoft:azure:mediaservices:contentkeyidentifier";

/// How a broadcast is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No encryption (the broadcast's `streaming_policy` applies).
    #[default]
    Clear,
    /// AES-128 envelope encryption; keys by ClearKey key delivery (HLS, DASH, Smooth).
    Envelope,
    /// Common encryption (CENC) with PlayReady and Widevine licences (DASH, Smooth).
    MultiDrm,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Clear => "clear",
            Mode::Envelope => "envelope",
            Mode::MultiDrm => "multi-drm",
        }
    }
}

/// A broadcast's protection: the mode and, unless clear, its content key policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Protection {
    pub mode: Mode,
    /// Resolved from `[content_key_policies]` (a missing or unknown one is a settings problem).
    pub policy: Option<Arc<Policy>>,
}

/// The kind of token a restriction accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Jwt,
    Swt,
}

/// Who may get the keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Restriction {
    /// Anyone who asks.
    Open,
    /// Holders of a token signed with `key`, for `issuer` and `audience`, with the claims.
    Token {
        issuer: String,
        audience: String,
        token_type: TokenType,
        /// The symmetric verification key (raw bytes, from base64); never printed.
        key: SecretBytes,
        /// Claims the token must carry: type, and the value if one is required.
        required_claims: Vec<(String, Option<String>)>,
    },
}

/// Key bytes that never show in `Debug`.
#[derive(Clone, PartialEq)]
pub struct SecretBytes(Arc<Vec<u8>>);

impl SecretBytes {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([redacted; {}])", self.0.len())
    }
}

/// `[content_key_policies.<name>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub description: Option<String>,
    pub restriction: Restriction,
}

/// The policies by name.
pub type Policies = BTreeMap<String, Arc<Policy>>;

/// `[defaults.content_key_policy]`: what each `[content_key_policies.<name>]` falls back on.
pub(crate) fn parse_policy_defaults(defaults: &mut crate::config::Section<'_>) -> crate::config::Fallback {
    defaults.fallback(
        "content_key_policy",
        &["restriction", "token_type", "required_claims", "description", "issuer", "audience"],
    )
}

/// Parses `[content_key_policies]`; problems go to the sections.
pub(crate) fn parse_policies(section: &mut crate::config::Section<'_>, defaults: &crate::config::Fallback) -> Policies {
    let mut policies = Policies::new();
    for name in section.keys() {
        let mut table = section.section_over(&name, defaults);
        // Also the tail of the streaming policy's name, `onair-<mode>-<policy>`.
        if !crate::media::model::valid_name(&name, 200) {
            table.problem("", "a content key policy name is 1 to 200 letters, digits and inner hyphens");
        }
        let description: Option<String> = table.optional("description");
        let kind: String = table.value("restriction");
        let restriction = match kind.as_str() {
            "open" => Some(Restriction::Open),
            "token" => parse_token(&mut table),
            other => {
                table.problem("restriction", format!("{other:?} is not \"open\" or \"token\""));
                None
            }
        };
        if let Some(restriction) = restriction {
            policies.insert(name.clone(), Arc::new(Policy { name, description, restriction }));
        }
    }
    policies
}

fn parse_token(table: &mut crate::config::Section<'_>) -> Option<Restriction> {
    let issuer: Option<String> = table.optional("issuer");
    let audience: Option<String> = table.optional("audience");
    let token_type = match table.value::<String>("token_type").as_str() {
        "jwt" => Some(TokenType::Jwt),
        "swt" => Some(TokenType::Swt),
        other => {
            table.problem("token_type", format!("{other:?} is not \"jwt\" or \"swt\""));
            None
        }
    };
    let claims: Vec<String> = table.value("required_claims");
    let required_claims = claims
        .into_iter()
        .map(|claim| match claim.split_once('=') {
            Some((kind, value)) => (kind.to_string(), Some(value.to_string())),
            None => (claim, None),
        })
        .collect();
    let key = match table.secret("verification_key") {
        None => {
            table.problem(
                "verification_key",
                "missing: a token restriction needs its verification key (verification_key_file, or the \
                 environment variable): a base64 symmetric key of at least 16 bytes",
            );
            None
        }
        Some(secret) => match BASE64.decode(secret.expose_secret().trim()) {
            Ok(bytes) if bytes.len() >= 16 => Some(SecretBytes(Arc::new(bytes))),
            Ok(_) => {
                table.problem("verification_key", "the key must be at least 16 bytes (before base64)");
                None
            }
            Err(_) => {
                // Never repeat the value: it is a secret.
                table.problem("verification_key", "the key is not valid base64");
                None
            }
        },
    };
    if issuer.is_none() {
        table.problem("issuer", "missing: a token restriction needs the token issuer");
    }
    if audience.is_none() {
        table.problem("audience", "missing: a token restriction needs the token audience");
    }
    Some(Restriction::Token {
        issuer: issuer?,
        audience: audience?,
        token_type: token_type?,
        key: key?,
        required_claims,
    })
}

/// Parses a broadcast's `protection` and `content_key_policy` keys against `policies`.
pub(crate) fn parse_protection(table: &mut crate::config::Section<'_>, policies: &Policies) -> Protection {
    let mode = match table.value::<String>("protection").as_str() {
        "clear" => Mode::Clear,
        "envelope" => Mode::Envelope,
        "multi-drm" => Mode::MultiDrm,
        other => {
            table.problem("protection", format!("{other:?} is not \"clear\", \"envelope\" or \"multi-drm\""));
            Mode::Clear
        }
    };
    let name: Option<String> = table.optional("content_key_policy");
    let policy = name.as_ref().and_then(|name| policies.get(name).cloned());
    match (&name, &policy, mode) {
        (None, _, Mode::Envelope | Mode::MultiDrm) => table.problem(
            "content_key_policy",
            format!("missing: protection = \"{}\" needs a content key policy ([content_key_policies.<name>])", mode.name()),
        ),
        (Some(name), None, _) => {
            let known = policies.keys().cloned().collect::<Vec<_>>().join(", ");
            let known = if known.is_empty() { "none".to_string() } else { known };
            table.problem(
                "content_key_policy",
                format!("no usable content key policy named {name:?} in [content_key_policies] (usable: {known})"),
            );
        }
        (Some(_), Some(_), Mode::Clear) => table.problem(
            "content_key_policy",
            "set, but protection is \"clear\" (the default): say protection = \"envelope\" or \"multi-drm\", or drop the key",
        ),
        _ => {}
    }
    Protection { mode, policy }
}

impl Policy {
    /// The restriction as the API writes it.
    fn restriction_json(&self) -> Value {
        match &self.restriction {
            Restriction::Open => json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyOpenRestriction"}),
            Restriction::Token { issuer, audience, token_type, key, required_claims } => json!({
                "@odata.type": "#Microsoft.Media.ContentKeyPolicyTokenRestriction",
                "issuer": issuer,
                "audience": audience,
                "primaryVerificationKey": {
                    "@odata.type": "#Microsoft.Media.ContentKeyPolicySymmetricTokenKey",
                    "keyValue": BASE64.encode(key.expose()),
                },
                "alternateVerificationKeys": [],
                "requiredClaims": required_claims
                    .iter()
                    .map(|(kind, value)| json!({"claimType": kind, "claimValue": value}))
                    .collect::<Vec<_>>(),
                "restrictionTokenType": match token_type { TokenType::Jwt => "Jwt", TokenType::Swt => "Swt" },
            }),
        }
    }

    /// The content key policy for `mode`: one option per key system, each with the restriction.
    pub fn content_key_policy(&self, mode: Mode) -> ContentKeyPolicyProperties {
        let configurations: Vec<(&str, Value)> = match mode {
            Mode::Clear | Mode::Envelope => {
                vec![("clear-key", json!({"@odata.type": "#Microsoft.Media.ContentKeyPolicyClearKeyConfiguration"}))]
            }
            Mode::MultiDrm => vec![
                (
                    "playready",
                    json!({
                        "@odata.type": "#Microsoft.Media.ContentKeyPolicyPlayReadyConfiguration",
                        "licenses": [{
                            "allowTestDevices": false,
                            "licenseType": "NonPersistent",
                            "contentKeyLocation": {"@odata.type": "#Microsoft.Media.ContentKeyPolicyPlayReadyContentEncryptionKeyFromHeader"},
                            "contentType": "UltraVioletStreaming",
                            "playRight": {
                                "digitalVideoOnlyContentRestriction": false,
                                "imageConstraintForAnalogComponentVideoRestriction": false,
                                "imageConstraintForAnalogComputerMonitorRestriction": false,
                                "allowPassingVideoContentToUnknownOutput": "NotAllowed"
                            }
                        }]
                    }),
                ),
                (
                    "widevine",
                    json!({
                        "@odata.type": "#Microsoft.Media.ContentKeyPolicyWidevineConfiguration",
                        "widevineTemplate": "{\"allowed_track_types\":\"SD_HD\",\"content_key_specs\":[{\"track_type\":\"SD\",\"security_level\":1}],\"policy_overrides\":{\"can_play\":true}}"
                    }),
                ),
            ],
        };
        ContentKeyPolicyProperties {
            description: self.description.clone().or_else(|| Some(format!("onair {} keys", mode.name()))),
            options: Some(
                configurations
                    .into_iter()
                    .map(|(name, configuration)| ContentKeyPolicyOption {
                        name: Some(name.to_string()),
                        configuration: Some(configuration),
                        restriction: Some(self.restriction_json()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// Mints a playback token valid from `now` for `ttl`; `key_id` fills the content key id claim
    /// when the policy requires it. `None` for an open restriction (no token needed).
    pub fn mint(
        &self,
        key_id: Option<&str>,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, TokenError> {
        let Restriction::Token { issuer, audience, token_type, key, required_claims } = &self.restriction else {
            return Ok(None);
        };
        let expires = now.timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let mut claims: Vec<(String, String)> = Vec::new();
        for (kind, value) in required_claims {
            let value = match (value, kind.as_str()) {
                (Some(value), _) => value.clone(),
                (None, CONTENT_KEY_ID_CLAIM) => key_id.ok_or(TokenError::KeyIdNeeded)?.to_string(),
                (None, other) => return Err(TokenError::UnknownClaimValue(other.to_string())),
            };
            claims.push((kind.clone(), value));
        }
        match token_type {
            TokenType::Jwt => {
                let mut body = Map::new();
                body.insert("iss".into(), json!(issuer));
                body.insert("aud".into(), json!(audience));
                body.insert("nbf".into(), json!(now.timestamp()));
                body.insert("iat".into(), json!(now.timestamp()));
                body.insert("exp".into(), json!(expires));
                for (kind, value) in claims {
                    body.insert(kind, Value::String(value));
                }
                let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
                jsonwebtoken::encode(&header, &body, &jsonwebtoken::EncodingKey::from_secret(key.expose()))
                    .map(Some)
                    .map_err(|error| TokenError::Signing(error.to_string()))
            }
            TokenType::Swt => {
                let mut pairs = vec![
                    ("Issuer".to_string(), issuer.clone()),
                    ("Audience".to_string(), audience.clone()),
                    ("ExpiresOn".to_string(), expires.to_string()),
                ];
                pairs.extend(claims);
                let unsigned =
                    serde_urlencoded::to_string(&pairs).map_err(|error| TokenError::Signing(error.to_string()))?;
                use hmac::Mac;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose())
                    .map_err(|error| TokenError::Signing(error.to_string()))?;
                mac.update(unsigned.as_bytes());
                let signature = BASE64.encode(mac.finalize().into_bytes());
                let signed = serde_urlencoded::to_string([("HMACSHA256", signature)])
                    .map_err(|error| TokenError::Signing(error.to_string()))?;
                Ok(Some(format!("{unsigned}&{signed}")))
            }
        }
    }
}

/// Why a token cannot be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the policy requires the content key id claim; give --kid or publish the broadcast first")]
    KeyIdNeeded,
    #[error("the policy requires claim {0:?} without saying its value; onair cannot know it")]
    UnknownClaimValue(String),
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

/// The streaming policy a protected broadcast publishes with, for `policy`.
pub fn streaming_policy_name(mode: Mode, policy: &str) -> String {
    match mode {
        Mode::Clear => String::new(),
        Mode::Envelope => format!("onair-envelope-{policy}"),
        Mode::MultiDrm => format!("onair-multidrm-{policy}"),
    }
}

/// The streaming policy for `mode` whose keys come from content key policy `policy`.
pub fn streaming_policy(mode: Mode, policy: &str) -> Result<StreamingPolicyProperties, serde_json::Error> {
    let keys = json!({"defaultKey": {"label": "onair", "policyName": policy}, "keyToTrackMappings": []});
    let body = match mode {
        Mode::Clear => {
            json!({"noEncryption": {"enabledProtocols": {"download": false, "dash": true, "hls": true, "smoothStreaming": true}}})
        }
        Mode::Envelope => json!({
            "defaultContentKeyPolicyName": policy,
            "envelopeEncryption": {
                "enabledProtocols": {"download": false, "dash": true, "hls": true, "smoothStreaming": true},
                "clearTracks": [],
                "contentKeys": keys,
            }
        }),
        Mode::MultiDrm => json!({
            "defaultContentKeyPolicyName": policy,
            "commonEncryptionCenc": {
                "enabledProtocols": {"download": false, "dash": true, "hls": false, "smoothStreaming": true},
                "clearTracks": [],
                "contentKeys": keys,
                "drm": {"playReady": {}, "widevine": {}}
            }
        }),
    };
    serde_json::from_value(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(token_type: TokenType, claims: Vec<(String, Option<String>)>) -> Policy {
        Policy {
            name: "premium".into(),
            description: None,
            restriction: Restriction::Token {
                issuer: "https://sts.onair.example".into(),
                audience: "urn:onair:premium".into(),
                token_type,
                key: SecretBytes(Arc::new(b"0123456789abcdef0123456789abcdef".to_vec())),
                required_claims: claims,
            },
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_007_200, 0).unwrap()
    }

    #[test]
    fn a_jwt_carries_issuer_audience_expiry_and_the_key_id() {
        let premium =
            policy(TokenType::Jwt, vec![(CONTENT_KEY_ID_CLAIM.into(), None), ("tier".into(), Some("gold".into()))]);
        let token = premium.mint(Some("kid-1"), now(), std::time::Duration::from_secs(3600)).unwrap().unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_audience(&["urn:onair:premium"]);
        validation.set_issuer(&["https://sts.onair.example"]);
        validation.validate_exp = false;
        let decoded = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims[CONTENT_KEY_ID_CLAIM], "kid-1");
        assert_eq!(decoded.claims["tier"], "gold");
        assert_eq!(decoded.claims["exp"], 1_764_007_200 + 3600);
        assert_eq!(premium.mint(None, now(), std::time::Duration::from_secs(60)), Err(TokenError::KeyIdNeeded));
    }

    #[test]
    fn an_swt_is_form_encoded_and_signed() {
        let token =
            policy(TokenType::Swt, vec![]).mint(None, now(), std::time::Duration::from_secs(60)).unwrap().unwrap();
        assert!(
            token.starts_with(
                "Issuer=https%3A%2F%2Fsts.onair.example&Audience=urn%3Aonair%3Apremium&ExpiresOn=1764007260&HMACSHA256="
            ),
            "{token}"
        );
    }

    #[test]
    fn the_policy_body_holds_the_restriction_and_compares_without_server_fields() {
        let premium = policy(TokenType::Jwt, vec![]);
        let desired = premium.content_key_policy(Mode::Envelope);
        let options = desired.options.clone().unwrap();
        assert_eq!(options.len(), 1);
        assert_eq!(options[0].restriction.as_ref().unwrap()["issuer"], "https://sts.onair.example");
        let mut existing = desired.clone();
        existing.policy_id = Some("c2a4b6d8-0000-4000-8000-000000000001".into());
        if let Some(option) = existing.options.as_mut().and_then(|options| options.first_mut()) {
            option.policy_option_id = Some("c2a4b6d8-0000-4000-8000-000000000002".into());
        }
        assert!(existing.says_the_same_as(&desired));
        let other = policy(TokenType::Swt, vec![]).content_key_policy(Mode::Envelope);
        assert!(!other.says_the_same_as(&desired));
        assert_eq!(premium.content_key_policy(Mode::MultiDrm).options.unwrap().len(), 2);
    }

    #[test]
    fn keys_never_show_in_debug() {
        let text = format!("{:?}", policy(TokenType::Jwt, vec![]));
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }
}
