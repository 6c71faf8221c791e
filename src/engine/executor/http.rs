//! `http`: a templated request to any URL. The executor's own HTTP client lives here and nowhere
//! else (the media client is `media`'s).

use std::time::Duration;

use serde_json::{Value, json};

use super::{ActionError, Request};

/// The client `http` actions call through.
pub(super) struct HttpCaller {
    client: reqwest::Client,
}

impl HttpCaller {
    pub(super) fn new() -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        Self { client }
    }

    /// Sends the request with an `Idempotency-Key`, so that a repeat after a crash can be
    /// recognised by the receiver; 5xx and 429 answers may be retried.
    pub(super) async fn call(&self, action: &Request<'_>) -> Result<Value, ActionError> {
        let (row, broadcast) = (action.row, action.broadcast);
        let url = row.params["url"].as_str().unwrap_or_default();
        let url = url::Url::parse(url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| ActionError::permanent("BadParameter", format!("http needs an http(s) url, not {url:?}")))?;
        let method = row.params["method"].as_str().unwrap_or("POST").to_uppercase();
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ActionError::permanent("BadParameter", format!("bad method {method:?}")))?;
        let mut request =
            self.client.request(method, url).header("Idempotency-Key", format!("onair-{}-{}", broadcast.id, row.id));
        if let Some(headers) = row.params["headers"].as_object() {
            for (name, value) in headers {
                if let Some(value) = value.as_str() {
                    request = request.header(name, value);
                }
            }
        }
        request = match &row.params["body"] {
            Value::Null => request,
            Value::String(text) => request.body(text.clone()),
            other => request.json(other),
        };
        let response = request.send().await.map_err(|error| ActionError {
            code: "NoAnswer".into(),
            message: error.to_string(),
            retryable: true,
        })?;
        let status = response.status();
        let body: String = response.text().await.unwrap_or_default().chars().take(2048).collect();
        if status.is_success() {
            return Ok(json!({"status": status.as_u16(), "body": body}));
        }
        let retryable = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err(ActionError {
            code: format!("HTTP{}", status.as_u16()),
            message: format!("HTTP {status}: {body}"),
            retryable,
        })
    }
}
