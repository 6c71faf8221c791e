//! Who may deliver: an HMAC-SHA256 signature over a timestamp and the raw body, or a secret key
//! in the query string (Event Grid cannot sign). Both compare in constant time and accept several
//! secrets, so a secret can be rotated without dropping deliveries.
//!
//! The signature header (Stripe's scheme):
//!
//! ```text
//! onair-signature: t=1764007200,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//! ```
//!
//! `v1` is the hex HMAC-SHA256, under a shared secret, of `"{t}.{body}"` (the raw bytes as sent);
//! a sender rotating its secret may send several `v1` values. `t` is Unix seconds and must be
//! within the replay window of the receiver's clock, in both directions.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "onair-signature";

/// The query parameter that carries a key.
pub const KEY_PARAMETER: &str = "key";

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery is not authenticated. The HTTP answer never says which (401 for all); logs and
/// counters do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    #[error("no signature and no key")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the replay window")]
    Stale,
    #[error("no secret produces this signature")]
    BadSignature,
    #[error("the key is not one of the configured keys")]
    BadKey,
}

/// The secrets a delivery is checked against.
#[derive(Clone, Default)]
pub struct Secrets {
    pub hmac: Vec<SecretString>,
    pub keys: Vec<SecretString>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets {{ hmac: {} secret(s), keys: {} key(s) }}", self.hmac.len(), self.keys.len())
    }
}

impl Secrets {
    /// Whether any way of authenticating is configured.
    pub fn any(&self) -> bool {
        !self.hmac.is_empty() || !self.keys.is_empty()
    }

    /// Checks a delivery: the query key if one is given, else the signature header.
    pub fn check(
        &self,
        key: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
        window: std::time::Duration,
    ) -> Result<Authenticated, Rejection> {
        if let Some(key) = key {
            // Hash both sides first: equal lengths, so the comparison time says nothing.
            let given = Sha256::digest(key.as_bytes());
            let known = self.keys.iter().any(|secret| {
                let expected = Sha256::digest(secret.expose_secret().as_bytes());
                bool::from(given.as_slice().ct_eq(expected.as_slice()))
            });
            return if known { Ok(Authenticated::Key) } else { Err(Rejection::BadKey) };
        }
        let Some(header) = signature else { return Err(Rejection::Missing) };
        let (timestamp, signatures) = parse_header(header).ok_or(Rejection::Malformed)?;
        // `abs_diff` cannot overflow, whatever the sender puts in `t` (i64::MIN included).
        if now.timestamp().abs_diff(timestamp) > window.as_secs() {
            return Err(Rejection::Stale);
        }
        for secret in &self.hmac {
            for signature in &signatures {
                let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) else { continue };
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                // `verify_slice` compares in constant time.
                if mac.verify_slice(signature).is_ok() {
                    return Ok(Authenticated::Signature { timestamp });
                }
            }
        }
        Err(Rejection::BadSignature)
    }
}

/// How a delivery proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    Key,
    Signature { timestamp: i64 },
}

/// The digest of what a signature covers: the timestamp (as a number, however the header spelled
/// it) and the body. Replay detection keys on it, so that a second `v1=`, reordered parts or
/// spaces in the header do not make a replay look new.
pub fn signed_content_digest(timestamp: i64, body: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update(timestamp.to_string().as_bytes()).chain_update(b".").chain_update(body).finalize().into()
}

/// `t=<unix>,v1=<hex>[,v1=<hex>…]` → (t, decoded signatures).
fn parse_header(header: &str) -> Option<(i64, Vec<Vec<u8>>)> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "t" => timestamp = Some(value.parse::<i64>().ok()?),
            "v1" => signatures.push(hex(value)?),
            _ => {}
        }
    }
    if signatures.is_empty() || signatures.len() > 8 {
        return None;
    }
    Some((timestamp?, signatures))
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len()).step_by(2).map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok()).collect()
}

/// The signature header for `body` at `timestamp` under `secret`: what a sender puts in
/// `onair-signature`. Tests, the docs' examples and senders written in Rust use it.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length; this branch cannot be taken.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secrets() -> Secrets {
        Secrets {
            hmac: vec![SecretString::from("old-secret-0123456789"), SecretString::from("new-secret-0123456789")],
            keys: vec![SecretString::from("query-key-0123456789")],
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_007_200, 0).unwrap()
    }

    const WINDOW: Duration = Duration::from_secs(300);

    #[test]
    fn signatures_under_any_configured_secret_within_the_window_pass() {
        let body = br#"[{"id":"1"}]"#;
        for secret in ["old-secret-0123456789", "new-secret-0123456789"] {
            let header = sign(secret, now().timestamp() - 299, body);
            assert_eq!(
                secrets().check(None, Some(&header), body, now(), WINDOW),
                Ok(Authenticated::Signature { timestamp: now().timestamp() - 299 })
            );
        }
        // A sender rotating its own secret sends two v1 values.
        let both = format!(
            "{},{}",
            sign("unknown-secret-000000", 1_764_007_200, body),
            &sign("new-secret-0123456789", 1_764_007_200, body)["t=1764007200,".len()..]
        );
        assert!(secrets().check(None, Some(&both), body, now(), WINDOW).is_ok());
    }

    #[test]
    fn every_bad_delivery_is_refused_for_its_reason() {
        let body = br#"[{"id":"1"}]"#;
        let good = sign("new-secret-0123456789", now().timestamp(), body);
        let check = |key: Option<&str>, signature: Option<&str>, body: &[u8]| {
            secrets().check(key, signature, body, now(), WINDOW)
        };
        assert_eq!(check(None, None, body), Err(Rejection::Missing));
        assert_eq!(check(None, Some("sha256=abc"), body), Err(Rejection::Malformed));
        assert_eq!(check(None, Some("t=1,v1=zz"), body), Err(Rejection::Malformed));
        assert_eq!(check(None, Some(&good), br#"[{"id":"2"}]"#), Err(Rejection::BadSignature));
        assert_eq!(
            check(None, Some(&sign("wrong-secret-000000000", now().timestamp(), body)), body),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            check(None, Some(&sign("new-secret-0123456789", now().timestamp() - 301, body)), body),
            Err(Rejection::Stale)
        );
        assert_eq!(
            check(None, Some(&sign("new-secret-0123456789", now().timestamp() + 301, body)), body),
            Err(Rejection::Stale)
        );
        assert_eq!(check(Some("query-key-012345678"), None, body), Err(Rejection::BadKey));
        assert_eq!(check(Some("query-key-0123456789"), None, body), Ok(Authenticated::Key));
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        let body = br#"[{"id":"1"}]"#;
        for t in ["-9223372036854775808", "9223372036854775807", "-1", "0"] {
            let header = format!("t={t},v1={}", "ab".repeat(32));
            assert_eq!(secrets().check(None, Some(&header), body, now(), WINDOW), Err(Rejection::Stale), "t={t}");
        }
        for t in ["9223372036854775808", "-9223372036854775809", "99999999999999999999999999999"] {
            let header = format!("t={t},v1={}", "ab".repeat(32));
            assert_eq!(secrets().check(None, Some(&header), body, now(), WINDOW), Err(Rejection::Malformed), "t={t}");
        }
        // A window as long as it gets does not overflow either.
        let header = format!("t={},v1={}", i64::MIN, "ab".repeat(32));
        assert_eq!(secrets().check(None, Some(&header), body, now(), Duration::MAX), Err(Rejection::BadSignature));
    }

    #[test]
    fn the_replay_digest_covers_the_signed_content_not_the_header_text() {
        let body = br#"[{"id":"1"}]"#;
        assert_eq!(signed_content_digest(1_764_007_200, body), signed_content_digest(1_764_007_200, body));
        assert_ne!(signed_content_digest(1_764_007_200, body), signed_content_digest(1_764_007_201, body));
        assert_ne!(signed_content_digest(1_764_007_200, body), signed_content_digest(1_764_007_200, b"[]"));
    }

    #[test]
    fn the_signature_matches_the_documented_recipe() {
        // printf '%s.%s' 1764007200 '{"id":"1"}' | openssl dgst -sha256 -hmac whsec-test-0123456789 -hex
        assert_eq!(
            sign("whsec-test-0123456789", 1_764_007_200, br#"{"id":"1"}"#),
            "t=1764007200,v1=6ab6623ffc95a633708916f5f955098b1ee051939c24d99821bfd367f1995144"
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        assert!(!format!("{:?}", secrets()).contains("secret-0123456789"));
    }
}
