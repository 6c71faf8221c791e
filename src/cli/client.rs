//! The API client of the commands that change a running daemon (`apply`, `get`, `delete`,
//! `audit`, `extend`, `reload`): they talk to its `/api/v1/`, so they work from another host.
//!
//! The address is `--api URL`, else `http://<http.listen>` of the local settings; the token is
//! `$ONAIR_API_TOKEN` (read through `config::Source`), sent as a bearer token and never shown.
//!
//! Exit codes (`Error::exit_code`): 0 done; 1 failed (no daemon answers, the daemon failed);
//! 2 refused as asked (bad request, no such broadcast, busy, changed meanwhile: 400, 404, 409,
//! 412); 77 not allowed (401, 403); 78 invalid (a definition or the config file, with every
//! problem).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// The exit code of a request refused as asked.
pub const EXIT_REFUSED: u8 = 2;
/// The exit code of a request the token does not allow (`EX_NOPERM`).
pub const EXIT_NOT_ALLOWED: u8 = 77;
/// The exit code of an invalid definition or config file (`EX_CONFIG`, as `onair check`).
pub const EXIT_INVALID: u8 = crate::config::EXIT_CODE as u8;

/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One problem the daemon found with a definition: its key path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Problem {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() { f.write_str(&self.reason) } else { write!(f, "{}: {}", self.key, self.reason) }
    }
}

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--api` (or `http.listen`) does not make a URL.
    #[error("{0:?} is not an API address (expected http://HOST:PORT)")]
    Address(String),
    /// Nothing answers at the address.
    #[error("no onair daemon answers at {url} ({reason}); start it with `onair run`, or pass --api")]
    Unreachable { url: String, reason: String },
    /// The daemon did not answer in time, or the connection broke.
    #[error("{what}: no answer from {url} ({reason})")]
    NoAnswer { what: String, url: String, reason: String },
    /// 401: no token, or not one the daemon knows.
    #[error("{what}: {}", unauthorized(*.token_given))]
    Unauthorized { what: String, token_given: bool },
    /// 403: the token's role does not allow it, or the API has no token configured.
    #[error("{what}: not allowed (403): {message}")]
    Forbidden { what: String, message: String },
    /// 400 with problems: an invalid definition or config file.
    #[error("{what}: {message}{}", problems_list(.problems))]
    Invalid { what: String, message: String, problems: Vec<Problem> },
    /// Any other refusal (400, 404, 405, 409, 412, 5xx), with the daemon's reason.
    #[error("{what}: {message} ({status})")]
    Refused { what: String, status: StatusCode, code: String, message: String },
    /// The answer is not what this onair expects (another program, or another version).
    #[error("{what}: the answer of {url} is not onair's ({reason})")]
    Protocol { what: String, url: String, reason: String },
}

fn unauthorized(token_given: bool) -> &'static str {
    if token_given {
        "the daemon does not accept the API token in ONAIR_API_TOKEN (401)"
    } else {
        "the daemon wants an API token (401): set ONAIR_API_TOKEN to a token of its http settings"
    }
}

fn problems_list(problems: &[Problem]) -> String {
    problems.iter().map(|problem| format!("\n  - {problem}")).collect()
}

impl Error {
    /// The exit code of the command that met this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid { .. } => EXIT_INVALID,
            Error::Unauthorized { .. } | Error::Forbidden { .. } => EXIT_NOT_ALLOWED,
            Error::Refused { status, .. } if status.is_client_error() => EXIT_REFUSED,
            Error::Address(_) => EXIT_REFUSED,
            _ => 1,
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// The `ETag` (a revision), without its quotes.
    pub etag: Option<String>,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
}

/// Talks to one daemon's API.
#[derive(Clone)]
pub struct Client {
    base: url::Url,
    token: Option<SecretString>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base.as_str()).field("token", &self.token.is_some()).finish()
    }
}

impl Client {
    /// A client of the daemon at `api` (else `http://<listen>`, a wildcard address read as the
    /// loopback), with the token of `$ONAIR_API_TOKEN` from `source`.
    pub fn new(api: Option<&str>, listen: std::net::SocketAddr, source: &crate::config::Source) -> Result<Self, Error> {
        let base = match api {
            Some(api) => api.trim().to_string(),
            None => format!("http://{}", loopback(listen)),
        };
        let mut url = url::Url::parse(&base).map_err(|_| Error::Address(base.clone()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::Address(base));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let token = source
            .var("ONAIR_API_TOKEN")
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .map(|token| SecretString::from(token.to_string()));
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("onair-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::Address(format!("{base} ({error})")))?;
        Ok(Self { base: url, token, http })
    }

    /// The daemon's address, as shown to the operator.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `path` (under `api/v1/`) with `query`.
    pub fn url(&self, path: &str, query: &[(&str, String)]) -> Result<url::Url, Error> {
        let mut url = self.base.join(&format!("api/v1/{path}")).map_err(|_| Error::Address(self.base().into()))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(key, value)| (*key, value.as_str())));
        }
        Ok(url)
    }

    pub async fn get(&self, what: &str, url: url::Url) -> Result<Answer, Error> {
        self.send(what, self.http.get(url), HeaderMap::new(), None).await
    }

    pub async fn post(&self, what: &str, url: url::Url, body: &Value) -> Result<Answer, Error> {
        self.send(what, self.http.post(url), HeaderMap::new(), Some(body)).await
    }

    pub async fn put(&self, what: &str, url: url::Url, headers: HeaderMap, body: &Value) -> Result<Answer, Error> {
        self.send(what, self.http.put(url), headers, Some(body)).await
    }

    pub async fn delete(&self, what: &str, url: url::Url) -> Result<Answer, Error> {
        self.send(what, self.http.delete(url), HeaderMap::new(), None).await
    }

    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        headers: HeaderMap,
        body: Option<&Value>,
    ) -> Result<Answer, Error> {
        let mut request = request.headers(headers);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| self.failed(what, &error))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.trim_start_matches("W/").trim_matches('"').to_string());
        let bytes = response.bytes().await.map_err(|error| self.failed(what, &error))?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(body) => body,
                Err(_) if !status.is_success() => Value::Null,
                Err(error) => {
                    return Err(Error::Protocol {
                        what: what.into(),
                        url: self.base().into(),
                        reason: error.to_string(),
                    });
                }
            }
        };
        if status.is_success() {
            return Ok(Answer { status, etag, body });
        }
        Err(refusal(what, status, &body, self.token.is_some()))
    }

    fn failed(&self, what: &str, error: &reqwest::Error) -> Error {
        let reason = cause(error);
        if error.is_connect() {
            Error::Unreachable { url: self.base().into(), reason }
        } else {
            Error::NoAnswer { what: what.into(), url: self.base().into(), reason }
        }
    }
}

/// An `If-Match` header for `revision`.
pub fn if_match(revision: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        headers.insert(reqwest::header::IF_MATCH, value);
    }
    headers
}

/// An `If-None-Match: *` header: create only, never replace one created meanwhile.
pub fn if_absent() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::IF_NONE_MATCH, HeaderValue::from_static("*"));
    headers
}

/// What the daemon's error answer says.
fn refusal(what: &str, status: StatusCode, body: &Value, token_given: bool) -> Error {
    let code = body["error"]["code"].as_str().unwrap_or_default().to_string();
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").to_lowercase());
    // In the error object, or beside it.
    let problems: Vec<Problem> = [&body["error"]["problems"], &body["problems"]]
        .into_iter()
        .find_map(|problems| serde_json::from_value(problems.clone()).ok())
        .unwrap_or_default();
    match status {
        StatusCode::UNAUTHORIZED => Error::Unauthorized { what: what.into(), token_given },
        StatusCode::FORBIDDEN => Error::Forbidden { what: what.into(), message },
        StatusCode::BAD_REQUEST if !problems.is_empty() => Error::Invalid { what: what.into(), message, problems },
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_FOUND if code.is_empty() || code == "not_found" => {
            Error::Refused {
                what: what.into(),
                status,
                code,
                message: format!("{message}: the daemon does not have this API (an older onair?)"),
            }
        }
        _ => Error::Refused { what: what.into(), status, code, message },
    }
}

/// The innermost cause, in words ("connection refused", "operation timed out").
fn cause(error: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut last = error.to_string();
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return io.kind().to_string();
        }
        last = current.to_string();
        source = current.source();
    }
    if error.is_timeout() { "timed out".into() } else { last }
}

/// The address to reach a listener on: a wildcard one is reached on the loopback.
fn loopback(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(token: Option<&str>) -> crate::config::Source {
        let env = token.map(|token| ("ONAIR_API_TOKEN".to_string(), token.to_string())).into_iter().collect();
        crate::config::Source { file: None, env }
    }

    #[test]
    fn the_address_comes_from_api_else_the_listen_setting_read_on_the_loopback() {
        let listen: std::net::SocketAddr = "0.0.0.0:8781".parse().unwrap();
        let client = Client::new(None, listen, &source(None)).unwrap();
        assert_eq!(client.base(), "http://127.0.0.1:8781");
        assert_eq!(client.url("broadcasts", &[]).unwrap().as_str(), "http://127.0.0.1:8781/api/v1/broadcasts");
        let client = Client::new(Some("https://onair.example/ops"), listen, &source(None)).unwrap();
        assert_eq!(
            client.url("audit", &[("kind", "config".into())]).unwrap().as_str(),
            "https://onair.example/ops/api/v1/audit?kind=config"
        );
        assert!(matches!(Client::new(Some("localhost:8781"), listen, &source(None)), Err(Error::Address(_))));
        assert!(matches!(Client::new(Some("ftp://x"), listen, &source(None)), Err(Error::Address(_))));
    }

    #[test]
    fn the_token_is_never_shown() {
        let listen: std::net::SocketAddr = "127.0.0.1:8781".parse().unwrap();
        let client = Client::new(None, listen, &source(Some("secret-token-0123456789"))).unwrap();
        assert!(!format!("{client:?}").contains("secret-token"), "{client:?}");
    }

    #[test]
    fn refusals_have_their_exit_codes_and_list_every_problem() {
        let body = serde_json::json!({
            "error": {
                "code": "invalid_definition",
                "message": "invalid broadcast definition (2 problems)",
                "problems": [{"key": "broadcasts.a.schedule.cron", "reason": "bad"}, {"key": "", "reason": "clash"}],
            },
        });
        let error = refusal("apply a", StatusCode::BAD_REQUEST, &body, true);
        assert_eq!(error.exit_code(), EXIT_INVALID);
        assert_eq!(
            error.to_string(),
            "apply a: invalid broadcast definition (2 problems)\n  - broadcasts.a.schedule.cron: bad\n  - clash"
        );
        let busy = serde_json::json!({"error": {"code": "busy", "message": "broadcast \"a\" is live, not idle"}});
        assert_eq!(refusal("delete a", StatusCode::CONFLICT, &busy, true).exit_code(), EXIT_REFUSED);
        let error = refusal("get", StatusCode::UNAUTHORIZED, &Value::Null, false);
        assert_eq!(error.exit_code(), EXIT_NOT_ALLOWED);
        assert!(error.to_string().contains("set ONAIR_API_TOKEN"), "{error}");
        assert_eq!(refusal("get", StatusCode::BAD_GATEWAY, &Value::Null, false).exit_code(), 1);
    }
}
