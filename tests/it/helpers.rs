//! Shared harness: an emulator on a free port and clients pointed at it.

use std::sync::LazyLock;
use std::time::Duration;

use onair::emulator::{self, Emulator, LoggedRequest};
use onair::media::{self, Client};
use tokio_util::sync::CancellationToken;

static TRACING: LazyLock<()> = LazyLock::new(|| {
    // Logs are silent unless TEST_LOG is set, as in zero-to-production's harness.
    #[allow(clippy::disallowed_methods)]
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = onair::telemetry::init(onair::telemetry::LogFormat::Text, Some(&filter));
    }
});

/// The account the tests use unless they replay a published example.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-0000000000aa";
pub const GROUP: &str = "onair-tests";
pub const ACCOUNT: &str = "testmedia";

/// An emulator serving on 127.0.0.1 with a free port; stopped when dropped.
pub struct TestEmulator {
    pub base: String,
    pub emulator: Emulator,
    shutdown: CancellationToken,
}

impl TestEmulator {
    pub async fn start(settings: emulator::Settings) -> Self {
        LazyLock::force(&TRACING);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let emulator = Emulator::new(settings, onair::clock::system());
        let shutdown = CancellationToken::new();
        tokio::spawn(emulator::serve(listener, emulator.clone(), shutdown.clone()));
        Self { base, emulator, shutdown }
    }

    /// Media settings for `account`, with fast polling and short backoffs.
    pub fn media_settings_for(&self, subscription: &str, group: &str, account: &str) -> media::Settings {
        let mut settings = onair::daemon::load(&onair::config::Source::default()).expect("defaults").media;
        settings.arm_url = url::Url::parse(&self.base).expect("base URL");
        settings.token_url =
            Some(url::Url::parse(&format!("{}/test-tenant/oauth2/v2.0/token", self.base)).expect("token URL"));
        settings.subscription_id = Some(subscription.into());
        settings.resource_group = Some(group.into());
        settings.account = Some(account.into());
        settings.client_id = Some(self.emulator.settings().client_id.clone());
        settings.client_secret = Some(self.emulator.settings().client_secret.clone());
        settings.poll_interval = Duration::from_millis(20);
        settings.request_timeout = Duration::from_secs(5);
        settings.retry.initial_backoff = Duration::from_millis(20);
        settings.retry.max_backoff = Duration::from_millis(200);
        settings.operation_timeout = Duration::from_secs(60);
        settings
    }

    pub fn media_settings(&self) -> media::Settings {
        self.media_settings_for(SUBSCRIPTION, GROUP, ACCOUNT)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.media_settings()).expect("client")
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.emulator.requests()
    }

    /// ARM requests only (no token requests).
    pub fn arm_requests(&self) -> Vec<LoggedRequest> {
        self.requests().into_iter().filter(|entry| entry.path.starts_with("/subscriptions/")).collect()
    }

    /// A bearer token for raw requests.
    pub async fn token(&self) -> String {
        let settings = self.emulator.settings();
        let secret = secrecy::ExposeSecret::expose_secret(&settings.client_secret).to_string();
        let response = reqwest::Client::new()
            .post(format!("{}/t/oauth2/v2.0/token", self.base))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", settings.client_id.as_str()),
                ("client_secret", secret.as_str()),
                ("scope", "https://management.azure.com/.default"),
            ])
            .send()
            .await
            .expect("token request");
        let body: serde_json::Value = response.json().await.expect("token body");
        body["access_token"].as_str().expect("access_token").to_string()
    }

    /// The URL of `tail` under an account.
    pub fn url(&self, subscription: &str, group: &str, account: &str, tail: &str) -> String {
        format!("{}{}", self.base, account_path(subscription, group, account, tail))
    }

    /// The URL of `tail` under the tests' account.
    pub fn test_url(&self, tail: &str) -> String {
        self.url(SUBSCRIPTION, GROUP, ACCOUNT, tail)
    }

    /// A raw authenticated request; returns the status and the JSON body (`Null` when empty).
    pub async fn raw(&self, method: reqwest::Method, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let token = self.token().await;
        let mut request = reqwest::Client::new().request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for TestEmulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `/subscriptions/…/mediaservices/{account}/{tail}` as the spec spells it.
pub fn account_path(subscription: &str, group: &str, account: &str, tail: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Media/mediaservices/{account}/{tail}"
    )
}

/// Emulator settings for tests: the built-in defaults (`config/default.toml`), zero transition time.
pub fn emulator_settings() -> emulator::Settings {
    emulator::Settings::defaults().expect("the built-in defaults load")
}

/// The api-version a logged request carried.
pub fn api_version(entry: &LoggedRequest) -> Option<String> {
    url::form_urlencoded::parse(entry.query.as_bytes())
        .find(|(key, _)| key == "api-version")
        .map(|(_, value)| value.into_owned())
}

/// Asserts an ARM error body: `{"error": {"code": <code>, "message": <non-empty>}}`.
pub fn assert_arm_error(body: &serde_json::Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|message| !message.is_empty()), "{body}");
}

/// The outbox rows of `broadcast` still pending in the store at `store` (0 when it cannot be read).
pub fn pending_actions_of(store: &std::path::Path, broadcast: &str) -> usize {
    onair::store::SqliteStore::open_read_only(store)
        .ok()
        .and_then(|store| store.pending_actions().ok())
        .map_or(0, |rows| rows.iter().filter(|row| row.broadcast == broadcast).count())
}

/// 10,000 broadcasts `b00000`..`b09999`, one in ten scheduled daily at a minute of its own in
/// `zone` with `schedule` (the rest of its schedule table: duration, leads). The thousand minutes
/// start an hour from now, so that none is on air or warming up while a test runs, whatever the
/// time of day, and the next six hours have some due.
pub(crate) fn ten_thousand_broadcasts(zone: chrono_tz::Tz, schedule: &str) -> String {
    let first = onair::clock::Clock::now(&onair::clock::SystemClock).with_timezone(&zone) + chrono::TimeDelta::hours(1);
    let mut broadcasts = String::new();
    for index in 0..10_000 {
        broadcasts.push_str(&format!("[broadcasts.b{index:05}]\n"));
        if index % 10 == 0 {
            let at = first + chrono::TimeDelta::minutes(index as i64 / 10);
            broadcasts.push_str(&format!(
                "[broadcasts.b{index:05}.schedule]\ncron = \"0 {} {} * * *\"\ntimezone = \"{}\"\n{schedule}",
                chrono::Timelike::minute(&at),
                chrono::Timelike::hour(&at),
                zone.name()
            ));
        }
    }
    broadcasts
}

/// The UTC hour `hours` from now: a daily schedule at the top of it never runs near its steps
/// while a test reads the next step, the plan or an idle state on the system clock (a fixed air
/// time made such tests fail every day in the hour before it).
pub(crate) fn hour_from_now(hours: i64) -> u32 {
    use chrono::Timelike;
    (onair::clock::Clock::now(&onair::clock::SystemClock) + chrono::Duration::hours(hours)).hour()
}
