//! ARM's vocabulary for the pipeline (`pipeline.rs`): error bodies, replies, routes, the
//! `api-version` check, dispatch to the resource families, paging and long-running operation headers.
//!
//! Paths are matched case-insensitively, as ARM does (the spec's examples mix `liveEvents`,
//! `liveevents` and `mediaServices`); resource names keep the case they were created with and are
//! looked up case-insensitively. Every refusal is an ARM error body `{"error":{"code","message"}}`.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::media::model::{METADATA_API_VERSION, Page, STREAMING_API_VERSION};

use super::state::{Account, AccountId, Env};
use super::{endpoints, live, operations, publish, resources};

/// A refusal, rendered as the ARM error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArmError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ArmError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(kind: &str, name: &str, account: &AccountId) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!(
                "The Resource 'Microsoft.Media/mediaservices/{}/{kind}/{name}' under resource group '{}' was not found.",
                account.name, account.resource_group
            ),
        )
    }

    /// The resource exists but is in a state where this cannot be done.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "InvalidOperation", message)
    }

    /// Another operation is in progress on the resource.
    pub fn in_progress(kind: &str, name: &str, state: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "OperationInProgress",
            format!("The {kind} '{name}' is {state}; wait for the current operation to finish."),
        )
    }

    pub fn quota(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "ExceededResourceQuota", message)
    }

    /// Refuses a new `kind` when `count` already reached `limit`.
    pub fn check_quota(count: usize, limit: usize, kind: &str) -> Result<(), Self> {
        if count < limit {
            return Ok(());
        }
        Err(Self::quota(format!("The account already has {count} {kind}, its quota; delete one first.")))
    }

    /// The `location` of a tracked resource (live events, streaming endpoints), which is required.
    pub fn require_location(location: Option<&String>) -> Result<String, Self> {
        location.filter(|location| !location.trim().is_empty()).cloned().ok_or_else(|| {
            Self::new(
                StatusCode::BAD_REQUEST,
                "LocationRequired",
                "The location property is required for this definition.",
            )
        })
    }

    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

/// An answer before it becomes an HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl Reply {
    pub fn json(status: StatusCode, body: impl Serialize) -> Self {
        Self { status, headers: Vec::new(), body: Some(serde_json::to_value(body).unwrap_or(Value::Null)) }
    }

    pub fn ok(body: impl Serialize) -> Self {
        Self::json(StatusCode::OK, body)
    }

    pub fn empty(status: StatusCode) -> Self {
        Self { status, headers: Vec::new(), body: None }
    }

    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers = headers;
        self
    }
}

pub(crate) type ArmResult = Result<Reply, ArmError>;

/// One parsed ARM request.
#[derive(Debug)]
pub(crate) struct ArmRequest<'a> {
    pub method: Method,
    pub account: AccountId,
    pub route: Route,
    /// Query parameters, keys lowercased.
    pub query: HashMap<String, String>,
    pub body: &'a [u8],
}

impl ArmRequest<'_> {
    /// The JSON body, required.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ArmError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                "The request content was empty.",
            ));
        }
        serde_json::from_slice(self.body).map_err(|error| {
            ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                format!("The request content was invalid and could not be deserialized: {error}"),
            )
        })
    }

    /// `?autoStart=true`, case-insensitively.
    pub fn auto_start(&self) -> Result<bool, ArmError> {
        match self.query.get("autostart").map(|value| value.to_ascii_lowercase()) {
            None => Ok(false),
            Some(value) if value == "true" => Ok(true),
            Some(value) if value == "false" => Ok(false),
            Some(value) => Err(ArmError::bad_request(format!("autoStart must be true or false, not {value:?}."))),
        }
    }
}

/// Every path the emulator serves under an account, with the names in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    LiveEvents,
    LiveEvent(String),
    LiveEventAction(String, String),
    LiveEventOperation(String),
    LiveEventOperationLocation(String, String),
    LiveOutputs(String),
    LiveOutput(String, String),
    LiveOutputOperation(String),
    LiveOutputOperationLocation(String, String, String),
    StreamingEndpoints,
    StreamingEndpoint(String),
    StreamingEndpointAction(String, String),
    StreamingEndpointOperation(String),
    StreamingEndpointOperationLocation(String, String),
    Assets,
    Asset(String),
    StreamingLocators,
    StreamingLocator(String),
    StreamingLocatorAction(String, String),
    StreamingPolicies,
    StreamingPolicy(String),
    ContentKeyPolicies,
    ContentKeyPolicy(String),
    ContentKeyPolicyAction(String, String),
}

impl Route {
    /// The `api-version` the resource family requires.
    pub fn api_version(&self) -> &'static str {
        use Route::*;
        match self {
            Assets
            | Asset(_)
            | StreamingLocators
            | StreamingLocator(_)
            | StreamingLocatorAction(..)
            | StreamingPolicies
            | StreamingPolicy(_)
            | ContentKeyPolicies
            | ContentKeyPolicy(_)
            | ContentKeyPolicyAction(..) => METADATA_API_VERSION,
            _ => STREAMING_API_VERSION,
        }
    }
}

/// Splits an ARM path into the account and the route under it; `None` when it is not one.
pub(crate) fn parse_path(path: &str) -> Option<(AccountId, Route)> {
    let original: Vec<String> = path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned())
        .collect();
    let lower: Vec<String> = original.iter().map(|segment| segment.to_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let name = |index: usize| original[index].clone();
    let ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.media", "mediaservices", _, rest @ ..] =
        lower.as_slice()
    else {
        return None;
    };
    let account = AccountId { subscription: name(1), resource_group: name(3), name: name(7) };
    let at = |offset: usize| name(8 + offset);
    let route = match rest {
        ["liveevents"] => Route::LiveEvents,
        ["liveevents", _] => Route::LiveEvent(at(1)),
        ["liveevents", _, "operationlocations", _] => Route::LiveEventOperationLocation(at(1), at(3)),
        ["liveevents", _, "liveoutputs"] => Route::LiveOutputs(at(1)),
        ["liveevents", _, "liveoutputs", _] => Route::LiveOutput(at(1), at(3)),
        ["liveevents", _, "liveoutputs", _, "operationlocations", _] => {
            Route::LiveOutputOperationLocation(at(1), at(3), at(5))
        }
        ["liveevents", _, action] => Route::LiveEventAction(at(1), action.to_string()),
        ["liveeventoperations", _] => Route::LiveEventOperation(at(1)),
        ["liveoutputoperations", _] => Route::LiveOutputOperation(at(1)),
        ["streamingendpoints"] => Route::StreamingEndpoints,
        ["streamingendpoints", _] => Route::StreamingEndpoint(at(1)),
        ["streamingendpoints", _, "operationlocations", _] => Route::StreamingEndpointOperationLocation(at(1), at(3)),
        ["streamingendpoints", _, action] => Route::StreamingEndpointAction(at(1), action.to_string()),
        ["streamingendpointoperations", _] => Route::StreamingEndpointOperation(at(1)),
        ["assets"] => Route::Assets,
        ["assets", _] => Route::Asset(at(1)),
        ["streaminglocators"] => Route::StreamingLocators,
        ["streaminglocators", _] => Route::StreamingLocator(at(1)),
        ["streaminglocators", _, action] => Route::StreamingLocatorAction(at(1), action.to_string()),
        ["streamingpolicies"] => Route::StreamingPolicies,
        ["streamingpolicies", _] => Route::StreamingPolicy(at(1)),
        ["contentkeypolicies"] => Route::ContentKeyPolicies,
        ["contentkeypolicies", _] => Route::ContentKeyPolicy(at(1)),
        ["contentkeypolicies", _, action] => Route::ContentKeyPolicyAction(at(1), action.to_string()),
        _ => return None,
    };
    Some((account, route))
}

/// Checks `api-version` against the resource family.
pub(crate) fn check_api_version(route: &Route, query: &HashMap<String, String>) -> Result<(), ArmError> {
    let expected = route.api_version();
    match query.get("api-version") {
        None => Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            format!(
                "The api-version query parameter (?api-version=) is required for all requests; this resource supports {expected}."
            ),
        )),
        Some(version) if version == expected => Ok(()),
        Some(version) => Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!("The api-version '{version}' is invalid. The supported version for this resource is '{expected}'."),
        )),
    }
}

/// Dispatches a parsed request on its (settled) account.
pub(crate) fn dispatch(account: &mut Account, env: &mut Env<'_>, request: &ArmRequest<'_>, path: &str) -> ArmResult {
    use Method as M;
    use Route as R;
    let method = &request.method;
    match (&request.route, method) {
        (R::LiveEvents, &M::GET) => resources::list(&live::LiveEvents, account, request, env, path),
        (R::LiveEvent(name), &M::GET) => resources::get(&live::LiveEvents, account, name),
        (R::LiveEvent(name), &M::PUT) => live::put(account, env, name, request),
        (R::LiveEvent(name), &M::PATCH) => live::patch(account, env, name, request),
        (R::LiveEvent(name), &M::DELETE) => live::delete(account, env, name),
        (R::LiveEventAction(name, action), &M::POST) => live::action(account, env, name, action, request),
        (R::LiveEventOperation(id), &M::GET) => {
            operations::status(account, env, id, super::state::OperationKind::LiveEvent)
        }
        (R::LiveEventOperationLocation(_, id), &M::GET) => operations::location(account, env, id),
        (R::LiveOutputs(event), &M::GET) => resources::list(&live::LiveOutputs { event }, account, request, env, path),
        (R::LiveOutput(event, name), &M::GET) => resources::get(&live::LiveOutputs { event }, account, name),
        (R::LiveOutput(event, name), &M::PUT) => live::put_output(account, env, event, name, request),
        (R::LiveOutput(event, name), &M::DELETE) => live::delete_output(account, env, event, name),
        (R::LiveOutputOperation(id), &M::GET) => {
            operations::status(account, env, id, super::state::OperationKind::LiveOutput)
        }
        (R::LiveOutputOperationLocation(_, _, id), &M::GET) => operations::location(account, env, id),
        (R::StreamingEndpoints, &M::GET) => {
            resources::list(&endpoints::StreamingEndpoints, account, request, env, path)
        }
        (R::StreamingEndpoint(name), &M::GET) => resources::get(&endpoints::StreamingEndpoints, account, name),
        (R::StreamingEndpoint(name), &M::PUT) => endpoints::put(account, env, name, request),
        (R::StreamingEndpoint(name), &M::PATCH) => endpoints::patch(account, env, name, request),
        (R::StreamingEndpoint(name), &M::DELETE) => endpoints::delete(account, env, name),
        (R::StreamingEndpointAction(name, action), &M::POST) => endpoints::action(account, env, name, action, request),
        (R::StreamingEndpointOperation(id), &M::GET) => {
            operations::status(account, env, id, super::state::OperationKind::StreamingEndpoint)
        }
        (R::StreamingEndpointOperationLocation(_, id), &M::GET) => operations::location(account, env, id),
        (R::Assets, &M::GET) => resources::list(&publish::Assets, account, request, env, path),
        (R::Asset(name), &M::GET) => resources::get(&publish::Assets, account, name),
        (R::Asset(name), &M::PUT | &M::PATCH) => publish::put_asset(account, env, name, request),
        (R::Asset(name), &M::DELETE) => resources::delete(&publish::Assets, account, name),
        (R::StreamingLocators, &M::GET) => resources::list(&publish::StreamingLocators, account, request, env, path),
        (R::StreamingLocator(name), &M::GET) => resources::get(&publish::StreamingLocators, account, name),
        (R::StreamingLocator(name), &M::PUT) => publish::put_locator(account, env, name, request),
        (R::StreamingLocator(name), &M::DELETE) => resources::delete(&publish::StreamingLocators, account, name),
        (R::StreamingLocatorAction(name, action), &M::POST) => publish::locator_action(account, name, action),
        (R::StreamingPolicies, &M::GET) => resources::list(&publish::StreamingPolicies, account, request, env, path),
        (R::StreamingPolicy(name), &M::GET) => resources::get(&publish::StreamingPolicies, account, name),
        (R::StreamingPolicy(name), &M::PUT) => publish::put_policy(account, env, name, request),
        (R::StreamingPolicy(name), &M::DELETE) => resources::delete(&publish::StreamingPolicies, account, name),
        (R::ContentKeyPolicies, &M::GET) => resources::list(&publish::ContentKeyPolicies, account, request, env, path),
        (R::ContentKeyPolicy(name), &M::GET) => resources::get(&publish::ContentKeyPolicies, account, name),
        (R::ContentKeyPolicy(name), &M::PUT | &M::PATCH) => {
            publish::put_content_key_policy(account, env, name, request)
        }
        (R::ContentKeyPolicy(name), &M::DELETE) => resources::delete(&publish::ContentKeyPolicies, account, name),
        (R::ContentKeyPolicyAction(name, action), &M::POST) => {
            publish::content_key_policy_action(account, name, action)
        }
        _ => Err(ArmError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("The method {method} is not supported on this resource."),
        )),
    }
}

/// Whether a request changes state (and may have its response dropped by the faults): POSTs of
/// functions (`listPaths`, `listContentKeys`, `getPolicyPropertiesWithSecrets`) only read.
pub(crate) fn is_write(method: &Method, route: &Route) -> bool {
    let function = matches!(route, Route::StreamingLocatorAction(..) | Route::ContentKeyPolicyAction(..));
    matches!(*method, Method::PUT | Method::PATCH | Method::DELETE) || (*method == Method::POST && !function)
}

/// The bearer token of `Authorization`, if the header is well formed.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// Validates a resource name against the spec's pattern `^[a-zA-Z0-9]+(-*[a-zA-Z0-9])*$`.
pub(crate) fn check_name(kind: &str, name: &str, max_len: usize) -> Result<(), ArmError> {
    if crate::media::model::valid_name(name, max_len) {
        Ok(())
    } else {
        Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidResourceName",
            format!(
                "The {kind} name '{name}' is invalid: use 1 to {max_len} letters, digits and hyphens, starting and ending with a letter or digit."
            ),
        ))
    }
}

/// Validates a name that the spec leaves free (assets, locators, policies): ARM limits only.
pub(crate) fn check_free_name(kind: &str, name: &str) -> Result<(), ArmError> {
    let valid = !name.is_empty()
        && name.len() <= 260
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '\\' | '?' | '#' | '%' | '&' | ':' | '<' | '>' | '*'));
    if valid {
        Ok(())
    } else {
        Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidResourceName",
            format!(
                "The {kind} name '{name}' is invalid: use 1 to 260 characters without control characters or / \\ ? # % & : < > *."
            ),
        ))
    }
}

/// One page of `items` (already sorted), honouring `$top` and `$skiptoken`, with `@odata.nextLink`.
pub(crate) fn page<T: Serialize + Clone>(
    items: Vec<(String, T)>,
    request: &ArmRequest<'_>,
    env: &Env<'_>,
    path: &str,
) -> ArmResult {
    let size = match request.query.get("$top") {
        Some(top) => top
            .parse::<usize>()
            .ok()
            .filter(|top| *top > 0)
            .ok_or_else(|| ArmError::bad_request(format!("$top must be a positive integer, not {top:?}.")))?,
        None => env.settings.page_size,
    };
    let skip = request.query.get("$skiptoken").map(|token| token.to_lowercase());
    let remaining: Vec<(String, T)> =
        items.into_iter().filter(|(key, _)| skip.as_ref().is_none_or(|skip| key.as_str() > skip.as_str())).collect();
    let more = remaining.len() > size;
    let value: Vec<T> = remaining.iter().take(size).map(|(_, item)| item.clone()).collect();
    let next_link = more.then(|| {
        let last = remaining[size - 1].0.clone();
        let mut url = format!(
            "{}{path}?api-version={}&$skiptoken={}",
            env.origin,
            request.route.api_version(),
            percent_encoding::utf8_percent_encode(&last, percent_encoding::NON_ALPHANUMERIC)
        );
        if let Some(top) = request.query.get("$top") {
            url.push_str(&format!("&$top={top}"));
        }
        url
    });
    Ok(Reply::ok(Page { value, next_link }))
}

/// The `Azure-AsyncOperation` and `Location` headers of a long-running operation.
pub(crate) fn lro_headers(
    env: &Env<'_>,
    account: &AccountId,
    collection: &str,
    resource: &str,
    operation: &str,
) -> Vec<(String, String)> {
    let base = format!("{}{}", env.origin, account.base());
    vec![
        ("azure-asyncoperation".into(), format!("{base}/{collection}/{operation}?api-version={STREAMING_API_VERSION}")),
        (
            "location".into(),
            format!("{base}/{resource}/operationlocations/{operation}?api-version={STREAMING_API_VERSION}"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_case_insensitively_and_keep_name_case() {
        let (account, route) = parse_path(
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Media/mediaServices/Acct/liveEvents/News-1/liveOutputs/Prog%201",
        )
        .unwrap();
        assert_eq!(account.name, "Acct");
        assert_eq!(route, Route::LiveOutput("News-1".into(), "Prog 1".into()));
        let (_, route) = parse_path(
            "/subscriptions/s/resourcegroups/rg/providers/microsoft.media/mediaservices/a/liveeventoperations/op1",
        )
        .unwrap();
        assert_eq!(route, Route::LiveEventOperation("op1".into()));
        assert!(parse_path("/subscriptions/s/resourcegroups/rg/providers/Microsoft.Web/sites/a").is_none());
        assert!(parse_path("/nothing").is_none());
    }

    #[test]
    fn names_follow_the_spec_pattern() {
        assert!(check_name("live event", "news-1", 32).is_ok());
        assert!(check_name("live event", "a--b", 32).is_ok());
        for bad in ["", "-news", "news-", "news_1", "nouvelles-été", &"x".repeat(33)] {
            assert_eq!(check_name("live event", bad, 32).unwrap_err().code, "InvalidResourceName", "{bad}");
        }
    }

    #[test]
    fn api_versions_are_checked_per_family() {
        let query = |version: &str| HashMap::from([("api-version".to_string(), version.to_string())]);
        assert!(check_api_version(&Route::LiveEvents, &query("2022-11-01")).is_ok());
        assert!(check_api_version(&Route::Assets, &query("2023-01-01")).is_ok());
        assert_eq!(
            check_api_version(&Route::Assets, &query("2022-11-01")).unwrap_err().code,
            "InvalidApiVersionParameter"
        );
        assert_eq!(
            check_api_version(&Route::LiveEvents, &HashMap::new()).unwrap_err().code,
            "MissingApiVersionParameter"
        );
    }
}
