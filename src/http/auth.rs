//! Who calls the API: named bearer tokens, each with a role.
//!
//! `[http.tokens.<name>]` gives a token its `role` (`viewer` reads, `operator` also sends
//! commands and replays dead letters, `admin` also changes broadcasts); its secret comes from
//! `token_file` or `ONAIR__HTTP__TOKENS__<NAME>__TOKEN`, never from the config file. The single
//! `http.api_token` of earlier versions is an admin token named `api_token`.
//!
//! A presented token is compared with every configured token, each through SHA-256 (so that
//! neither the lengths nor the contents of the secrets shape the time taken) and without an early
//! exit, so the time does not tell which token matched, or how close a guess came. What the rest
//! of the API learns is the token's name and role, never its secret.

use axum::http::{HeaderMap, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::api::ApiError;

/// What a token may do; each role may do what the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads (needed only with `http.read_auth = true`).
    Viewer,
    /// Reads, operator commands, dead-letter replay.
    Operator,
    /// Everything, broadcast changes included.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One named token.
#[derive(Clone)]
pub struct NamedToken {
    pub name: String,
    pub role: Role,
    pub secret: SecretString,
}

impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedToken").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// The name `http.api_token` goes by.
pub const LEGACY_NAME: &str = "api_token";

/// The weak-token rules `http.api_token` has always had: a problem, or none.
pub(super) fn weakness(token: &str) -> Option<&'static str> {
    let token = token.trim();
    if token.len() < 16 {
        Some("must be at least 16 characters")
    } else if token.chars().any(char::is_whitespace) {
        Some("must not contain spaces (a bearer token is one word)")
    } else {
        None
    }
}

/// `[http.tokens]`: every named token, each checked; duplicate secrets (with `legacy` too) are
/// problems.
pub(super) fn parse_tokens(section: &mut crate::config::Section<'_>, legacy: Option<&SecretString>) -> Vec<NamedToken> {
    let mut tokens = section.section("tokens");
    let mut parsed: Vec<NamedToken> = Vec::new();
    for name in tokens.keys() {
        let mut table = tokens.section(&name);
        let valid_name = !name.is_empty()
            && name.len() <= 40
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && name != LEGACY_NAME;
        if !valid_name {
            table.problem(
                "",
                "a token name is 1 to 40 lowercase letters, digits and underscores (it names the environment \
                 variable ONAIR__HTTP__TOKENS__<NAME>__TOKEN), and not api_token",
            );
        }
        let role_name = table.optional::<String>("role");
        let role = match role_name.as_deref().map(|name| (name, Role::parse(name))) {
            Some((_, Some(role))) => Some(role),
            Some((other, None)) => {
                table.problem("role", format!("unknown role {other:?}: one of viewer, operator, admin"));
                None
            }
            None => {
                table.problem("role", "missing: one of viewer, operator, admin");
                None
            }
        };
        // An unreadable token_file, or a secret written in the file, is reported by `secret`.
        let from_file = table.peek("token_file").is_some();
        let secret = table.secret("token");
        match &secret {
            None if !from_file => {
                let variable = format!("ONAIR__HTTP__TOKENS__{}__TOKEN", name.to_uppercase());
                let reason = format!("no secret: set token_file or the environment variable {variable}");
                table.check("token", false, &reason);
            }
            Some(secret) => {
                if let Some(reason) = weakness(secret.expose_secret()) {
                    table.problem("token", reason);
                }
            }
            None => {}
        }
        if let (Some(role), Some(secret)) = (role, secret) {
            parsed.push(NamedToken { name: name.clone(), role, secret });
        }
    }
    drop(tokens);
    // The same secret under two names would make the audit's `who` a guess.
    let mut secrets: Vec<(&str, &str)> = parsed.iter().map(|t| (t.name.as_str(), t.secret.expose_secret())).collect();
    if let Some(legacy) = legacy {
        secrets.push((LEGACY_NAME, legacy.expose_secret()));
    }
    let mut duplicates = Vec::new();
    for (index, (name, secret)) in secrets.iter().enumerate() {
        if let Some((other, _)) = secrets[..index].iter().find(|(_, earlier)| earlier.trim() == secret.trim()) {
            let key = if *name == LEGACY_NAME { LEGACY_NAME.to_string() } else { format!("tokens.{name}.token") };
            duplicates.push((key, format!("tokens {other} and {name} have the same secret: each token needs its own")));
        }
    }
    for (key, problem) in duplicates {
        section.problem(&key, problem);
    }
    parsed
}

/// The caller a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (what the audit records as `who`).
    pub name: String,
    pub role: Role,
}

/// Every token of the settings: the named ones and `api_token` (admin).
fn all(settings: &super::Settings) -> impl Iterator<Item = (&str, Role, &SecretString)> {
    settings
        .tokens
        .iter()
        .map(|token| (token.name.as_str(), token.role, &token.secret))
        .chain(settings.api_token.iter().map(|secret| (LEGACY_NAME, Role::Admin, secret)))
}

/// The caller `headers` name by their bearer token, if it is one of the settings' tokens.
pub fn authenticate(settings: &super::Settings, headers: &HeaderMap) -> Option<Caller> {
    // Exactly `Bearer <token>`: no padding around the token and nothing inside it is forgiven,
    // so a token with spaces (inner, leading or trailing) is another token.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|given| !given.is_empty())?;
    let given = Sha256::digest(given.as_bytes());
    // 0: none; i + 1: the i-th token. Every token is compared, whatever matched before.
    let mut found = 0u32;
    let tokens: Vec<(&str, Role, &SecretString)> = all(settings).collect();
    for (index, (_, _, secret)) in tokens.iter().enumerate() {
        let expected = Sha256::digest(secret.expose_secret().trim().as_bytes());
        let candidate = u32::try_from(index + 1).unwrap_or(u32::MAX);
        found = u32::conditional_select(&found, &candidate, given.as_slice().ct_eq(expected.as_slice()));
    }
    let index = usize::try_from(found).ok()?.checked_sub(1)?;
    tokens.get(index).map(|(name, role, _)| Caller { name: (*name).to_string(), role: *role })
}

/// The caller, if its token has at least `role`: 401 without a valid token, 403 with one whose
/// role is too low, 403 when no token at all is configured (the operation is disabled).
pub fn require(settings: &super::Settings, headers: &HeaderMap, role: Role) -> Result<Caller, ApiError> {
    if all(settings).next().is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "commands_disabled",
            "no API token is configured (http.api_token_file, [http.tokens.<name>]): changes and commands are \
             disabled",
        ));
    }
    let Some(caller) = authenticate(settings, headers) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is needed"));
    };
    if caller.role < role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {:?} has the role {}; this needs {} or above", caller.name, caller.role.name(), role.name()),
        ));
    }
    Ok(caller)
}

/// Whether a GET of `path` needs a viewer token under `http.read_auth`: everything (the API,
/// `/metrics`, paths that match no route) but the probes, the dashboard page (which holds no
/// data) and the OpenAPI document. An allowlist, so that no spelling of a path slips through.
pub fn read_guarded(path: &str) -> bool {
    !matches!(path, "/" | "/healthz" | "/readyz" | "/api/v1/openapi.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(tokens: Vec<NamedToken>, legacy: Option<&str>) -> super::super::Settings {
        super::super::Settings {
            enabled: true,
            listen: ([127, 0, 0, 1], 0).into(),
            api_token: legacy.map(SecretString::from),
            tokens,
            read_auth: false,
            connections: crate::http::Limits {
                header_read_timeout: std::time::Duration::from_secs(1),
                idle_timeout: std::time::Duration::from_secs(1),
                request_timeout: std::time::Duration::from_secs(1),
                max_connections: 1,
            },
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    #[test]
    fn each_token_is_found_by_its_secret_alone_and_roles_are_ordered() {
        let token = |name: &str, role, secret: &str| NamedToken { name: name.into(), role, secret: secret.into() };
        let settings = settings(
            vec![
                token("vera", Role::Viewer, "vera-0123456789abcdef"),
                token("olga", Role::Operator, "olga-0123456789abcdef"),
                token("alice", Role::Admin, "alice-0123456789abcdef"),
            ],
            Some("legacy-0123456789abcdef"),
        );
        for (secret, name, role) in [
            ("vera-0123456789abcdef", "vera", Role::Viewer),
            ("olga-0123456789abcdef", "olga", Role::Operator),
            ("alice-0123456789abcdef", "alice", Role::Admin),
            ("legacy-0123456789abcdef", LEGACY_NAME, Role::Admin),
        ] {
            assert_eq!(authenticate(&settings, &bearer(secret)), Some(Caller { name: name.into(), role }));
        }
        for wrong in ["vera-0123456789abcde", "vera-0123456789abcdefg", "VERA-0123456789abcdef", "x"] {
            assert_eq!(authenticate(&settings, &bearer(wrong)), None, "{wrong}");
        }
        assert_eq!(authenticate(&settings, &HeaderMap::new()), None);
        let status = |secret: &str, role| require(&settings, &bearer(secret), role).err().map(|error| error.status());
        assert_eq!(status("vera-0123456789abcdef", Role::Operator), Some(StatusCode::FORBIDDEN));
        assert_eq!(status("olga-0123456789abcdef", Role::Operator), None);
        assert_eq!(status("olga-0123456789abcdef", Role::Admin), Some(StatusCode::FORBIDDEN));
        assert_eq!(status("nobody-0123456789abcdef", Role::Viewer), Some(StatusCode::UNAUTHORIZED));
        let none = super::tests::settings(Vec::new(), None);
        let disabled = require(&none, &bearer("anything-0123456789"), Role::Operator).err().map(|e| e.status());
        assert_eq!(disabled, Some(StatusCode::FORBIDDEN));
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn reads_guarded_are_the_api_and_the_metrics() {
        for path in ["/api/v1/broadcasts", "/api/v1/audit", "/metrics", "/api/v1/nope", "/%61pi/v1/audit", "//metrics"]
        {
            assert!(read_guarded(path), "{path}");
        }
        for path in ["/", "/healthz", "/readyz", "/api/v1/openapi.json"] {
            assert!(!read_guarded(path), "{path}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let token = NamedToken { name: "alice".into(), role: Role::Admin, secret: "alice-0123456789abcdef".into() };
        assert!(!format!("{token:?}").contains("0123456789"));
    }
}
