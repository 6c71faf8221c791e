//! HTTP plumbing: the bearer token, one request with its retries, long-running operations, pages.
//!
//! Retry rules, in one place (`Client::send`):
//! - 2xx: done. 401: the token is refreshed once and the request repeated.
//! - 429: wait exactly as long as `Retry-After` (or `retry-after-ms`) says, never less; the request was
//!   refused, not applied, so it is repeated as is.
//! - 5xx, connection errors, timeouts: reads are repeated after a capped exponential backoff with
//!   jitter. Writes are not, because the write may have been applied: they return `Error::Ambiguous`
//!   and the ensure-operation reads the resource before deciding again. A write whose connection
//!   could not even be opened was not sent, so it is repeated like a read.
//! - Other 4xx: a typed `Error::Api` with the provider's code and message, not retried.
//! - Attempts and total time are bounded by the `RetryPolicy`.
//!
//! Each attempt carries a fresh `x-ms-client-request-id` and is logged (debug) when sent and when
//! answered, with ARM's `x-ms-correlation-request-id` and `x-ms-request-id` from the answer.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use super::model::{self, AsyncOperationResult, OperationStatus, Page};
use super::{Error, RetryPolicy, Settings};

/// A Media Services client for one account. Cheap to clone; clones share the token.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    arm_url: Url,
    token_url: Url,
    scope: String,
    client_id: String,
    client_secret: SecretString,
    /// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Media/mediaservices/{a}`
    base_path: String,
    pub(super) location: String,
    retry: RetryPolicy,
    pub(super) poll_interval: Duration,
    pub(super) operation_timeout: Duration,
    /// The cached token. The async mutex makes concurrent callers wait for one refresh
    /// instead of each asking the token endpoint.
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

#[derive(Debug)]
struct CachedToken {
    value: SecretString,
    refresh_at: Instant,
    generation: u64,
}

/// A long-running operation started by a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lro {
    /// Method and resource of the write that started it.
    pub operation: String,
    /// The `Azure-AsyncOperation` URL, polled first.
    pub async_operation: Option<Url>,
    /// The `Location` URL, polled when there is no `Azure-AsyncOperation`.
    pub location: Option<Url>,
}

impl Lro {
    /// Whether the write finished synchronously (no URL to poll).
    pub fn is_done(&self) -> bool {
        self.async_operation.is_none() && self.location.is_none()
    }
}

/// One HTTP answer, already read.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// What went wrong with one attempt.
enum Failure {
    /// The request could not be sent at all (nothing reached the server).
    NotSent(String),
    /// The request was sent but no complete answer came back.
    NoAnswer(String),
}

impl Client {
    /// A client for the account in `settings`; fails if required settings are missing.
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        let missing = settings.missing();
        let (Some(token_url), Some(subscription), Some(group), Some(account), Some(client_id), Some(secret)) = (
            &settings.token_url,
            &settings.subscription_id,
            &settings.resource_group,
            &settings.account,
            &settings.client_id,
            &settings.client_secret,
        ) else {
            return Err(Error::Incomplete { missing });
        };
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("onair/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Build)?;
        let base_path = format!(
            "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Media/mediaservices/{account}"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                arm_url: settings.arm_url.clone(),
                token_url: token_url.clone(),
                scope: settings.scope.clone(),
                client_id: client_id.clone(),
                client_secret: secret.clone(),
                base_path,
                location: settings.location.clone(),
                retry: settings.retry,
                poll_interval: settings.poll_interval,
                operation_timeout: settings.operation_timeout,
                token: tokio::sync::Mutex::new(None),
            }),
        })
    }

    pub(super) fn location(&self) -> &str {
        &self.inner.location
    }

    pub(super) fn poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }

    pub(super) fn operation_timeout(&self) -> Duration {
        self.inner.operation_timeout
    }

    pub(super) fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    // === Resource verbs ===

    /// `GET` a resource; `None` when it does not exist.
    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str, api_version: &str) -> Result<Option<T>, Error> {
        let url = self.url(path, api_version, &[]);
        let operation = self.operation(&Method::GET, path);
        match self.send(Method::GET, url, None, &operation).await {
            Ok(reply) => decode(&operation, &reply.body).map(Some),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Every item of a list, following `@odata.nextLink`.
    pub(super) async fn list<T: DeserializeOwned>(&self, path: &str, api_version: &str) -> Result<Vec<T>, Error> {
        const MAX_PAGES: usize = 1000;
        let operation = self.operation(&Method::GET, path);
        let mut url = self.url(path, api_version, &[]);
        let mut items = Vec::new();
        for _ in 0..MAX_PAGES {
            let reply = self.send(Method::GET, url, None, &operation).await?;
            let page: Page<T> = decode(&operation, &reply.body)?;
            items.extend(page.value);
            match page.next_link {
                Some(next) => url = self.same_origin(&operation, &next)?,
                None => return Ok(items),
            }
        }
        Err(Error::InvalidResponse { operation, reason: format!("more than {MAX_PAGES} pages") })
    }

    /// `PUT` a resource; returns the body and the long-running operation, if one was started.
    pub(super) async fn put<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        api_version: &str,
        query: &[(&str, &str)],
        body: &B,
    ) -> Result<(T, Lro), Error> {
        let url = self.url(path, api_version, query);
        let operation = self.operation(&Method::PUT, path);
        let body = request_body(&operation, body)?;
        let reply = self.send(Method::PUT, url, Some(body), &operation).await?;
        let lro = self.lro(&operation, &reply.headers)?;
        Ok((decode(&operation, &reply.body)?, lro))
    }

    /// `POST` an action (`start`, `stop`, `scale`, …); returns the long-running operation.
    pub(super) async fn action<B: serde::Serialize>(
        &self,
        path: &str,
        api_version: &str,
        body: Option<&B>,
    ) -> Result<Lro, Error> {
        let (_, lro) = self.post_raw(path, api_version, body).await?;
        Ok(lro)
    }

    /// `POST` a function (`listPaths`, `listContentKeys`, …) and decode its answer.
    ///
    /// Functions read and change nothing, so they are retried like reads.
    pub(super) async fn call<T: DeserializeOwned>(&self, path: &str, api_version: &str) -> Result<T, Error> {
        let url = self.url(path, api_version, &[]);
        let operation = self.operation(&Method::POST, path);
        let reply = self.send_with(Method::POST, url, None, &operation, true).await?;
        decode(&operation, &reply.body)
    }

    async fn post_raw<B: serde::Serialize>(
        &self,
        path: &str,
        api_version: &str,
        body: Option<&B>,
    ) -> Result<(Reply, Lro), Error> {
        let url = self.url(path, api_version, &[]);
        let operation = self.operation(&Method::POST, path);
        let body = body.map(|body| request_body(&operation, body)).transpose()?;
        let reply = self.send(Method::POST, url, body, &operation).await?;
        let lro = self.lro(&operation, &reply.headers)?;
        Ok((reply, lro))
    }

    /// `DELETE` a resource; absent already counts as deleted.
    pub(super) async fn delete(&self, path: &str, api_version: &str) -> Result<Lro, Error> {
        let url = self.url(path, api_version, &[]);
        let operation = self.operation(&Method::DELETE, path);
        match self.send(Method::DELETE, url, None, &operation).await {
            Ok(reply) => self.lro(&operation, &reply.headers),
            Err(Error::Api { status: 404, .. }) => Ok(Lro { operation, async_operation: None, location: None }),
            Err(error) => Err(error),
        }
    }

    // === Long-running operations ===

    /// Waits for `lro` to finish; a Failed or Canceled operation becomes `Error::OperationFailed`.
    ///
    /// Polls `Azure-AsyncOperation` (falling back to `Location`), honouring `Retry-After`,
    /// for at most the operation timeout.
    pub async fn wait(&self, lro: &Lro) -> Result<(), Error> {
        let deadline = Instant::now() + self.inner.operation_timeout;
        loop {
            let (done, retry_after) = match (&lro.async_operation, &lro.location) {
                (None, None) => return Ok(()),
                (Some(url), _) => {
                    let reply = self.send(Method::GET, url.clone(), None, &lro.operation).await?;
                    let result: AsyncOperationResult = decode(&lro.operation, &reply.body)?;
                    let done = match result.status {
                        Some(OperationStatus::Succeeded) => true,
                        Some(OperationStatus::InProgress) | None => false,
                        Some(
                            status @ (OperationStatus::Failed | OperationStatus::Canceled | OperationStatus::Other(_)),
                        ) => {
                            let detail = result.error.unwrap_or_default();
                            return Err(Error::OperationFailed {
                                operation: lro.operation.clone(),
                                status: status.to_string(),
                                code: detail.code.unwrap_or_else(|| "Unknown".into()),
                                message: detail.message.unwrap_or_default(),
                            });
                        }
                    };
                    (done, retry_after(&reply.headers))
                }
                (None, Some(url)) => {
                    let reply = self.send(Method::GET, url.clone(), None, &lro.operation).await?;
                    (reply.status != StatusCode::ACCEPTED, retry_after(&reply.headers))
                }
            };
            if done {
                return Ok(());
            }
            let pause = retry_after.unwrap_or(self.inner.poll_interval);
            if Instant::now() + pause > deadline {
                return Err(Error::Timeout {
                    operation: lro.operation.clone(),
                    after: self.inner.operation_timeout,
                    waiting_for: "the long-running operation".into(),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    fn lro(&self, operation: &str, headers: &HeaderMap) -> Result<Lro, Error> {
        let header = |name: &str| -> Result<Option<Url>, Error> {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| self.same_origin(operation, value))
                .transpose()
        };
        Ok(Lro {
            operation: operation.to_string(),
            async_operation: header("azure-asyncoperation")?,
            location: header("location")?,
        })
    }

    /// Parses a URL the service handed back and refuses any other origin than the ARM base URL,
    /// so that the bearer token is never sent elsewhere.
    fn same_origin(&self, operation: &str, text: &str) -> Result<Url, Error> {
        let url = Url::parse(text).or_else(|_| self.inner.arm_url.join(text)).map_err(|error| {
            Error::InvalidResponse { operation: operation.to_string(), reason: format!("bad URL {text:?} ({error})") }
        })?;
        if url.origin() != self.inner.arm_url.origin() {
            return Err(Error::InvalidResponse {
                operation: operation.to_string(),
                reason: format!(
                    "refusing to follow {} outside {}",
                    url.origin().ascii_serialization(),
                    self.inner.arm_url
                ),
            });
        }
        Ok(url)
    }

    // === One request, with retries ===

    /// Sends one request with the retry rules of this module.
    /// `safe` requests (reads, and POSTs of functions like `listPaths`) are repeated on any
    /// transient failure; other writes only when they were refused (429) or never sent.
    async fn send(&self, method: Method, url: Url, body: Option<Vec<u8>>, operation: &str) -> Result<Reply, Error> {
        let safe = method == Method::GET;
        self.send_with(method, url, body, operation, safe).await
    }

    async fn send_with(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        operation: &str,
        is_read: bool,
    ) -> Result<Reply, Error> {
        let policy = self.inner.retry;
        let started = Instant::now();
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let (token, generation) = self.token().await?;
            let client_request_id = uuid::Uuid::new_v4();
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose_secret())
                .header(CLIENT_REQUEST_ID, client_request_id.to_string());
            if let Some(body) = &body {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
            }
            tracing::debug!(%operation, attempt, %client_request_id, "Request sent.");
            let sent = Instant::now();
            let answer = attempt_once(request).await;
            log_answer(operation, attempt, &client_request_id, &answer, sent.elapsed());
            let (wait, last) = match answer {
                Ok(reply) if reply.status.is_success() => return Ok(reply),
                Ok(reply) if reply.status == StatusCode::UNAUTHORIZED && !refreshed => {
                    // The token may have been revoked or expired early: get a new one, once.
                    refreshed = true;
                    self.forget_token(generation).await;
                    (Duration::ZERO, "HTTP 401".to_string())
                }
                Ok(reply) if reply.status == StatusCode::TOO_MANY_REQUESTS => {
                    let wait = retry_after(&reply.headers).unwrap_or_else(|| policy.backoff(attempt));
                    tracing::debug!(%operation, wait = ?wait, "Throttled by the service.");
                    (wait, "HTTP 429".to_string())
                }
                Ok(reply) if reply.status.is_server_error() => {
                    let last = describe_error(&reply);
                    if !is_read {
                        return Err(Error::Ambiguous { operation: operation.into(), reason: last });
                    }
                    (retry_after(&reply.headers).unwrap_or_else(|| policy.backoff(attempt)), last)
                }
                Ok(reply) => return Err(api_error(operation, &reply)),
                Err(Failure::NotSent(reason)) => (policy.backoff(attempt), reason),
                Err(Failure::NoAnswer(reason)) => {
                    if !is_read {
                        return Err(Error::Ambiguous { operation: operation.into(), reason });
                    }
                    (policy.backoff(attempt), reason)
                }
            };
            let elapsed = started.elapsed();
            if attempt >= policy.max_attempts || elapsed + wait > policy.max_elapsed {
                return Err(Error::RetriesExhausted { operation: operation.into(), attempts: attempt, elapsed, last });
            }
            tracing::debug!(%operation, attempt, wait = ?wait, reason = %last, "Retrying.");
            tokio::time::sleep(wait).await;
        }
    }

    // === Token ===

    /// A valid bearer token and its generation, fetching a new one when the cached one is near expiry.
    async fn token(&self) -> Result<(SecretString, u64), Error> {
        let mut slot = self.inner.token.lock().await;
        if let Some(cached) = slot.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok((cached.value.clone(), cached.generation));
        }
        let generation = slot.as_ref().map_or(1, |cached| cached.generation + 1);
        let (value, lifetime) = self.fetch_token().await?;
        // Refresh ahead of expiry: five minutes early, or a fifth of a short lifetime.
        let margin = (lifetime / 5).min(Duration::from_secs(300));
        *slot = Some(CachedToken { value: value.clone(), refresh_at: Instant::now() + lifetime - margin, generation });
        tracing::debug!(lifetime = ?lifetime, "Bearer token obtained.");
        Ok((value, generation))
    }

    async fn forget_token(&self, generation: u64) {
        let mut slot = self.inner.token.lock().await;
        if slot.as_ref().is_some_and(|cached| cached.generation == generation)
            && let Some(cached) = slot.as_mut()
        {
            cached.refresh_at = Instant::now();
        }
    }

    async fn fetch_token(&self) -> Result<(SecretString, Duration), Error> {
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Value,
        }
        #[derive(serde::Deserialize)]
        struct TokenError {
            error: Option<String>,
            error_description: Option<String>,
        }
        let policy = self.inner.retry;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", self.inner.client_id.as_str()),
                ("client_secret", self.inner.client_secret.expose_secret()),
                ("scope", self.inner.scope.as_str()),
            ];
            let request = self.inner.http.post(self.inner.token_url.clone()).form(&form);
            let (wait, last) = match attempt_once(request).await {
                Ok(reply) if reply.status.is_success() => {
                    let parsed: TokenResponse = serde_json::from_slice(&reply.body)
                        .map_err(|error| Error::Token { reason: format!("unreadable answer ({error})") })?;
                    let seconds = match &parsed.expires_in {
                        Value::Number(number) => number.as_u64(),
                        Value::String(text) => text.parse().ok(),
                        _ => None,
                    }
                    .ok_or_else(|| Error::Token { reason: "answer without a usable expires_in".into() })?;
                    return Ok((SecretString::from(parsed.access_token), Duration::from_secs(seconds)));
                }
                Ok(reply) if reply.status == StatusCode::TOO_MANY_REQUESTS || reply.status.is_server_error() => (
                    retry_after(&reply.headers).unwrap_or_else(|| policy.backoff(attempt)),
                    format!("HTTP {}", reply.status),
                ),
                Ok(reply) => {
                    let reason = match serde_json::from_slice::<TokenError>(&reply.body) {
                        Ok(TokenError { error: Some(error), error_description }) => {
                            format!(
                                "{error}: {} (HTTP {})",
                                error_description.unwrap_or_default(),
                                reply.status.as_u16()
                            )
                        }
                        _ => format!("HTTP {}", reply.status),
                    };
                    return Err(Error::Token { reason });
                }
                Err(Failure::NotSent(reason) | Failure::NoAnswer(reason)) => (policy.backoff(attempt), reason),
            };
            if attempt >= policy.max_attempts || started.elapsed() + wait > policy.max_elapsed {
                return Err(Error::Token { reason: format!("gave up after {attempt} attempts: {last}") });
            }
            tokio::time::sleep(wait).await;
        }
    }

    // === Paths ===

    /// `{base}/{tail}`, where base is the account's ARM path.
    pub(super) fn path(&self, tail: &str) -> String {
        format!("{}/{tail}", self.inner.base_path)
    }

    fn url(&self, path: &str, api_version: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.inner.arm_url.clone();
        let prefix = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{prefix}{path}"));
        {
            let mut pairs = url.query_pairs_mut();
            pairs.clear().append_pair("api-version", api_version);
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        url
    }

    /// `METHOD tail`, the tail being the path under the account, for messages.
    fn operation(&self, method: &Method, path: &str) -> String {
        let tail = path.strip_prefix(&self.inner.base_path).unwrap_or(path).trim_start_matches('/');
        format!("{method} {tail}")
    }
}

/// The header naming one attempt, so that the service's logs can find it (a UUID per attempt).
const CLIENT_REQUEST_ID: &str = "x-ms-client-request-id";

/// Logs how one attempt ended, with the ids that ARM's support and logs know it by: the
/// correlation id (`x-ms-correlation-request-id`) and the request id (`x-ms-request-id`).
fn log_answer(
    operation: &str,
    attempt: u32,
    client_request_id: &uuid::Uuid,
    answer: &Result<Reply, Failure>,
    elapsed: Duration,
) {
    match answer {
        Ok(reply) => {
            let header = |name: &str| reply.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default();
            tracing::debug!(
                %operation,
                attempt,
                %client_request_id,
                status = reply.status.as_u16(),
                correlation_id = header("x-ms-correlation-request-id"),
                request_id = header("x-ms-request-id"),
                elapsed = ?elapsed,
                "Request answered."
            );
        }
        Err(Failure::NotSent(reason) | Failure::NoAnswer(reason)) => {
            tracing::debug!(%operation, attempt, %client_request_id, %reason, elapsed = ?elapsed, "Request got no answer.");
        }
    }
}

async fn attempt_once(request: reqwest::RequestBuilder) -> Result<Reply, Failure> {
    let response = request.send().await.map_err(|error| {
        if error.is_connect() { Failure::NotSent(error_chain(&error)) } else { Failure::NoAnswer(error_chain(&error)) }
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|error| Failure::NoAnswer(error_chain(&error)))?;
    Ok(Reply { status, headers, body: body.to_vec() })
}

/// The error and its causes on one line: reqwest's own message rarely says what happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn request_body<B: serde::Serialize>(operation: &str, body: &B) -> Result<Vec<u8>, Error> {
    let value = serde_json::to_value(body).map_err(|error| Error::InvalidResponse {
        operation: operation.into(),
        reason: format!("cannot encode the request ({error})"),
    })?;
    serde_json::to_vec(&model::without_nulls(value)).map_err(|error| Error::InvalidResponse {
        operation: operation.into(),
        reason: format!("cannot encode the request ({error})"),
    })
}

fn decode<T: DeserializeOwned>(operation: &str, body: &[u8]) -> Result<T, Error> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|error| Error::InvalidResponse {
        operation: operation.into(),
        reason: format!("unreadable body ({error})"),
    })
}

fn api_error(operation: &str, reply: &Reply) -> Error {
    let detail = serde_json::from_slice::<model::ErrorResponse>(&reply.body).ok().and_then(|body| body.error);
    let (code, message) = match detail {
        Some(detail) => (
            detail.code.unwrap_or_else(|| reply.status.canonical_reason().unwrap_or("Error").to_string()),
            detail.message.unwrap_or_default(),
        ),
        None => (
            reply.status.canonical_reason().unwrap_or("Error").replace(' ', ""),
            String::from_utf8_lossy(&reply.body).chars().take(200).collect(),
        ),
    };
    Error::Api { operation: operation.into(), status: reply.status.as_u16(), code, message }
}

fn describe_error(reply: &Reply) -> String {
    match api_error("", reply) {
        Error::Api { status, code, message, .. } => format!("HTTP {status} {code}: {message}"),
        other => other.to_string(),
    }
}

/// `Retry-After` (seconds or an HTTP date) or Azure's `retry-after-ms`, whichever is given.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| headers.get(name).and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok());
    if let Some(millis) =
        text("retry-after-ms").or_else(|| text("x-ms-retry-after-ms")).and_then(|v| v.trim().parse().ok())
    {
        return Some(Duration::from_millis(millis));
    }
    let value = text(RETRY_AFTER.as_str())?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    Some((at.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        assert_eq!(retry_after(&headers(&[("retry-after", "2")])), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500"), ("retry-after", "9")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            max_elapsed: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
            let late = policy.backoff(30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1), "{late:?}");
        }
    }
}
