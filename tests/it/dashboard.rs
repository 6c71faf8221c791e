//! The dashboard in headless Chromium (Debian's `chromium`), against a real daemon: it loads,
//! shows the broadcasts and the timeline, shows a broadcast going live, and leaves a screenshot
//! (`target/tmp/artefacts/dashboard.png`). Driven through WebDriver (Debian's `chromium-driver`)
//! as an operator would use it: the broadcast pages, creating, editing, extending and deleting a
//! broadcast, on a desktop and on a phone, with screenshots of each kept in
//! `target/tmp/artefacts/`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use onair::daemon::Daemon;

use crate::broker::EXCLUSIVE;
use crate::helpers::{TestEmulator, emulator_settings};
use crate::operations::{TOKEN, artefact, command, daemon_with_http, state_of, until_async};
use crate::rabbit;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Runs headless Chromium on `url` with `arguments` (after the page's scripts ran for a while).
async fn chromium(profile: &Path, url: &str, arguments: &[&str]) -> String {
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)");
    let mut command = Command::new(CHROMIUM);
    command
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=6000", "--window-size=1280,900"])
        .args(arguments)
        .arg(url);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The `data-state` of the broadcast's element in a dumped DOM.
fn shown_state(dom: &str, broadcast: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"broadcast-{broadcast}\""))?;
    let tag_start = dom[..start].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let value = tag.split("data-state=\"").nth(1)?;
    Some(value[..value.find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_broadcast_going_live() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("dashboard");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts = "[broadcasts.news]\n[broadcasts.news.schedule]\ncron = \"0 19 * * *\"\ntimezone = \"Europe/Paris\"\nduration = \"30m\"\n[broadcasts.sport]\n";
    let (daemon, base, _) = daemon_with_http(directory.path(), &emulator, &broker, broadcasts).await;
    let profile = directory.path().join("chromium");
    let url = format!("{base}/");

    let before = chromium(&profile, &url, &["--dump-dom"]).await;
    assert!(before.contains("data-loaded=\"true\""), "the page rendered the API's data:\n{before}");
    assert!(before.contains("id=\"timeline\"") && before.contains("id=\"audit\""), "{before}");
    let state = shown_state(&before, "news");
    assert!(state.as_deref().is_some_and(|state| state != "live"), "{state:?}");
    assert!(shown_state(&before, "sport").is_some());

    let (status, _) = command(&base, "news", Some(TOKEN), json!({"command": "start-now"})).await;
    assert_eq!(status, 202);
    until_async(Duration::from_secs(30), "news live", || async {
        state_of(&base, "news").await.as_deref() == Some("live")
    })
    .await;
    let after = chromium(&profile, &url, &["--dump-dom"]).await;
    assert_eq!(shown_state(&after, "news").as_deref(), Some("live"), "{after}");
    assert!(after.contains("→ live"), "the audit shows the move to live:\n{after}");

    let screenshot = artefact("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(&profile, &url, &[&format!("--screenshot={}", screenshot.display())]).await;
    let bytes = std::fs::read(&screenshot).unwrap();
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{} bytes", bytes.len());
    println!(
        "dashboard: news shown {:?} then \"live\"; screenshot {} ({} bytes)",
        state,
        screenshot.display(),
        bytes.len()
    );
    daemon.stop().await.unwrap();
}

/// A headless Chromium driven through WebDriver (Debian's `chromium-driver`): one chromedriver
/// process (in its own process group, so that dropping it ends its browsers too) and one session.
struct Browser {
    driver: std::process::Child,
    session: String,
    http: reqwest::Client,
}

/// The page's time zone: not the daemon's (UTC) nor the broadcasts' (Europe/Paris), so that all
/// three differ.
const VIEWER_ZONE: &str = "America/New_York";

impl Browser {
    async fn start(profile: &Path) -> Self {
        assert!(
            Path::new(CHROMEDRIVER).exists(),
            "{CHROMEDRIVER} is missing: install Debian's chromium-driver package"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("TZ", VIEWER_ZONE)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        until_async(Duration::from_secs(20), "chromedriver ready", || async {
            let answer = http.get(format!("{base}/status")).send().await;
            match answer {
                Ok(answer) => answer.json::<Value>().await.is_ok_and(|body| body["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                         "--window-size=1400,1000", format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let answer: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session =
            answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}")).to_string();
        Self { driver, session: format!("{base}/session/{session}"), http }
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let answer = self.attempt(method, path, body).await;
        assert!(answer["value"]["error"].is_null(), "WebDriver {path}: {answer}");
        answer["value"].clone()
    }

    /// One WebDriver command; its whole answer, an error included.
    async fn attempt(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; what it returns.
    async fn run(&self, script: &str, args: Value) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": args}))).await
    }

    /// Waits until `script` returns true in the page.
    async fn until(&self, what: &str, script: &str) {
        self.until_within(Duration::from_secs(30), what, script).await;
    }

    async fn until_within(&self, limit: Duration, what: &str, script: &str) {
        let started = std::time::Instant::now();
        loop {
            if self.run(script, json!([])).await == true {
                return;
            }
            if started.elapsed() > limit {
                let body = self.run("return document.body.innerText", json!([])).await;
                panic!("{what}: not after {limit:?}; the page reads:\n{}", body.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found =
            self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found.as_object().and_then(|found| found.values().next()).and_then(Value::as_str).unwrap().to_string()
    }

    /// Clicks `css` as a user would (scrolled into view, hit-tested). The page re-renders its
    /// lists every 2 s: an element replaced between finding and clicking it is found again.
    async fn click(&self, css: &str) {
        for _ in 0..5 {
            let element = self.element(css).await;
            let path = format!("/element/{element}/click");
            let answer = self.attempt(reqwest::Method::POST, &path, Some(json!({}))).await;
            match answer["value"]["error"].as_str() {
                None => return,
                Some("stale element reference") => continue,
                Some(_) => panic!("WebDriver {path}: {answer}"),
            }
        }
        panic!("{css}: replaced five times in a row");
    }

    /// Replaces the content of the field `css` with `text`, typed.
    async fn fill(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/clear"), Some(json!({}))).await;
        if !text.is_empty() {
            self.call(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let script = "const node = document.querySelector(arguments[0]); return node ? node.innerText : null";
        self.run(script, json!([css])).await.as_str().unwrap_or_default().to_string()
    }

    /// The viewport's width and height in CSS pixels (a phone's, a desktop's).
    async fn viewport(&self, width: u32, height: u32) {
        let metrics = json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false});
        self.cdp("Emulation.setDeviceMetricsOverride", metrics).await;
        let inner = self.run("return window.innerWidth", json!([])).await;
        assert_eq!(inner, width, "the viewport is {width} px wide");
    }

    /// A DevTools command, through chromedriver.
    async fn cdp(&self, command: &str, params: Value) -> Value {
        let path = "/goog/cdp/execute";
        self.call(reqwest::Method::POST, path, Some(json!({"cmd": command, "params": params}))).await
    }

    /// The whole page (not only the viewport) as a PNG at `path`; its size in bytes.
    async fn screenshot(&self, name: &str) -> usize {
        let shot = self.cdp("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, shot["data"].as_str().unwrap()).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{name}: {} bytes", bytes.len());
        std::fs::write(artefact(name), &bytes).unwrap();
        bytes.len()
    }

    /// No horizontal page scroll: the document is no wider than the viewport.
    async fn assert_no_horizontal_scroll(&self, what: &str) {
        let widths = self.run("return [document.documentElement.scrollWidth, window.innerWidth]", json!([])).await;
        assert!(widths[0].as_u64() <= widths[1].as_u64(), "{what}: the page scrolls sideways: {widths}");
    }

    async fn close(mut self) {
        let _ = self.http.delete(&self.session).send().await;
        self.end();
    }

    fn end(&mut self) {
        // The group chromedriver leads: chromedriver and the browsers it started.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.driver.try_wait().ok().flatten().is_none() {
            self.end();
        }
    }
}

use crate::broadcasts_api::{ADMIN, OPERATOR, VIEWER};

/// A daemon with the operations listener and the API tests' named tokens (alice admin, olga
/// operator, vera viewer); reads need one of them when `read_auth`.
async fn daemon_with_tokens(
    directory: &Path,
    emulator: &TestEmulator,
    broker: &onair::broker::Settings,
    broadcasts: &str,
    read_auth: bool,
) -> (Daemon, String) {
    let (daemon, base, _) = crate::broadcasts_api::start(directory, emulator, broker, broadcasts, read_auth).await;
    (daemon, base)
}

/// A command with `token`; its status and body.
async fn send(base: &str, broadcast: &str, token: &str, body: Value) -> (u16, Value) {
    command(base, broadcast, Some(token), body).await
}

/// The next spring-forward day of Europe/Paris (the last Sunday of March) at least two days ahead.
fn next_spring_forward() -> chrono::NaiveDate {
    use chrono::Datelike;
    let today = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()).date_naive();
    (today.year()..)
        .map(|year| {
            let last = chrono::NaiveDate::from_ymd_opt(year, 3, 31).unwrap();
            last - chrono::TimeDelta::days(i64::from(last.weekday().num_days_from_sunday()))
        })
        .find(|day| *day > today + chrono::TimeDelta::days(2))
        .unwrap()
}

/// Three broadcasts in three time zones, none of them the viewer's; travel airs at 02:30 in
/// Paris, a time that does not exist on the spring-forward day.
const THREE: &str = r#"
[broadcasts.news]
[broadcasts.news.schedule]
cron = "0 19 * * *"
timezone = "Europe/Paris"
duration = "30m"
[broadcasts.sport]
channel = "sport"
[broadcasts.sport.schedule]
cron = "30 21 * * *"
timezone = "Asia/Tokyo"
duration = "2h"
[broadcasts.travel]
channel = "travel"
[broadcasts.travel.schedule]
cron = "30 2 * * *"
timezone = "Europe/Paris"
duration = "1h"
"#;

/// What a hostile note looks like: it must show as text, never run.
const HOSTILE: &str = "<img src=x onerror=\"document.body.dataset.pwned='yes'\"> flooded";

/// The state a broadcast's row shows on the list.
const ROW_STATE: &str =
    "const row = document.getElementById('broadcast-' + arguments[0]); return row ? row.dataset.state : null";

/// Whether a hostile note ran: images injected, and what its handler would have set.
const INJECTED: &str = "return [document.querySelectorAll('main img').length, document.body.dataset.pwned || null]";

/// Whether the page let a token do what its role allows: [admin, operator] buttons enabled.
const ALLOWED: &str = "return [!document.getElementById('new').disabled, \
    !document.querySelector('#broadcasts button[data-command=pause]').disabled]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reads_each_broadcast_in_its_own_time_zone_on_a_desktop_and_a_phone() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("dashboard-pages");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base) = daemon_with_tokens(directory.path(), &emulator, &broker, THREE, true).await;

    // news on air; sport idle, paused and skipping its next occurrence; travel forced to failed.
    for (broadcast, body) in [
        ("news", json!({"command": "start-now"})),
        ("sport", json!({"command": "pause"})),
        ("sport", json!({"command": "skip-next"})),
        ("travel", json!({"command": "force-state", "state": "failed", "note": HOSTILE})),
        // More audit entries for news than a page holds.
        ("news", json!({"command": "pause"})),
        ("news", json!({"command": "resume"})),
        ("news", json!({"command": "pause"})),
        ("news", json!({"command": "resume"})),
    ] {
        let (status, answer) = send(&base, broadcast, OPERATOR, body).await;
        assert_eq!(status, 202, "{broadcast}: {answer}");
    }
    let state = |id: &'static str| {
        let base = base.clone();
        async move {
            let response = reqwest::Client::new()
                .get(format!("{base}/api/v1/broadcasts/{id}"))
                .bearer_auth(VIEWER)
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()["state"].as_str().map(str::to_string)
        }
    };
    until_async(Duration::from_secs(30), "news live, travel failed", || async {
        state("news").await.as_deref() == Some("live") && state("travel").await.as_deref() == Some("failed")
    })
    .await;

    let browser = Browser::start(&directory.path().join("chromium")).await;
    browser.goto(&format!("{base}/#/")).await;
    tokens_gate_what_the_page_offers(&browser).await;
    the_lists_show_flags_origins_and_filter(&browser).await;
    let (desktop, dst, spring) = each_broadcast_in_its_own_zone(&browser, &base).await;
    let (phone, list) = no_sideways_scroll(&browser, &base).await;
    println!(
        "dashboard pages: viewer/operator/admin tokens gate the buttons; DST marked on {spring}; screenshots 1400 px \
         list {list} B, broadcast {desktop} B, plan with DST {dst} B; 420 px list/broadcast/editor {phone:?} B"
    );
    browser.close().await;
    daemon.stop().await.unwrap();
}

/// The keys the editor shows problems at.
const PROBLEM_KEYS: &str = "return [...document.querySelectorAll('#problems li')].map((li) => li.dataset.key)";

/// An admin creates a one-off broadcast through the page (after the page showed every problem of
/// a bad definition, and saved none of it), sees it scheduled, loses an edit race with a 412 and
/// redoes the edit, sees extend refused before air, extends it on air, and deletes it (busy,
/// then forced). Three file broadcasts stay as they were meanwhile: one live, one paused, one idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_edits_extends_and_deletes_a_broadcast_through_the_page() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("dashboard-changes");
    let directory = tempfile::tempdir().unwrap();
    let (daemon, base) = daemon_with_tokens(directory.path(), &emulator, &broker, THREE, false).await;
    for (broadcast, body) in [("news", json!({"command": "start-now"})), ("sport", json!({"command": "pause"}))] {
        assert_eq!(send(&base, broadcast, OPERATOR, body).await.0, 202);
    }
    until_async(Duration::from_secs(30), "news live", || async {
        state_of(&base, "news").await.as_deref() == Some("live")
    })
    .await;

    let browser = Browser::start(&directory.path().join("chromium")).await;
    browser.goto(&format!("{base}/#/")).await;
    browser.until("the list", "return document.body.dataset.loaded === 'true'").await;
    assert_eq!(browser.run("return document.getElementById('new').disabled", json!([])).await, true, "no token");
    browser.fill("#token", ADMIN).await;
    browser.until("an admin token", "return document.body.dataset.role === 'admin'").await;
    browser.click("#new").await;
    browser.until("the editor", "return document.body.dataset.editor === 'ready'").await;

    let (keys, editor, editor_phone) = every_problem_at_its_key(&browser, &base).await;

    // A one-off 45 s ahead, warming 10 s before.
    let air = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()) + chrono::TimeDelta::seconds(45);
    let air_text = air.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let air: chrono::DateTime<chrono::Utc> = air_text.parse().unwrap();
    let definition = |duration: &str| {
        json!({"channel": "oneoff", "schedule": {"at": air_text, "timezone": "Europe/Paris", "duration": duration,
            "lead": {"channel": "10s", "scale": "5s"}, "post_roll": "5s"}})
    };
    let created = std::time::Instant::now();
    browser.fill("#editor-text", &serde_json::to_string_pretty(&definition("10m")).unwrap()).await;
    browser.click("#editor-save").await;
    browser.until("its page", "return document.body.dataset.view === 'broadcast' && document.getElementById('b-id').innerText === 'oneoff'").await;
    browser
        .until("it is scheduled", "return document.querySelectorAll('#b-plan tr[data-step=air]').length === 1")
        .await;
    assert!(browser.text("#b-outcome").await.contains("created"), "{}", browser.text("#b-outcome").await);
    assert_eq!(
        browser.run("return document.querySelector('#b-title [data-origin]').dataset.origin", json!([])).await,
        "api"
    );
    assert!(browser.text("#b-facts").await.contains("warmup"), "the next step");

    lose_an_edit_race_then_edit(&browser, &base, &definition).await;
    let edited = created.elapsed();

    let (refusal, extended, live_after, on_air, on_air_phone) =
        extend_before_and_on_air(&browser, &base, air, created).await;
    let busy = delete_it_forced(&browser, &base).await;
    println!(
        "dashboard changes: problems at {keys:?}; created and edited twice (one 412) in {edited:?}, live {live_after:?} \
         after creation; before air: {refusal:?}; on air: {extended:?}; delete: {busy:?} then forced; screenshots \
         editor {editor}/{editor_phone} B, extended {on_air}/{on_air_phone} B (1400/420 px)"
    );
    browser.close().await;
    daemon.stop().await.unwrap();
}

/// `PUT /api/v1/broadcasts/{id}` as the admin, with `If-Match`.
async fn put(base: &str, id: &str, definition: &Value, revision: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(format!("{base}/api/v1/broadcasts/{id}"))
        .bearer_auth(ADMIN)
        .header("if-match", revision)
        .json(definition)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// With 10,000 broadcasts (one in ten scheduled, twenty on air), the page fetches one page of each
/// list, not the whole set: each 2-second refresh transfers under 100 KB (headers included, as
/// the browser's resource timing counts them), and searching or filtering by state finds any
/// broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ten_thousand_broadcasts_a_refresh_transfers_under_100_kb() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let broker = rabbit::settings("dashboard-10k");
    let directory = tempfile::tempdir().unwrap();
    let broadcasts = crate::helpers::ten_thousand_broadcasts(chrono_tz::Europe::Paris, "duration = \"30m\"\n");
    let (daemon, base) = daemon_with_tokens(directory.path(), &emulator, &broker, &broadcasts, false).await;
    let live: Vec<String> = (5..10_000).step_by(500).map(|index| format!("b{index:05}")).collect();
    for id in &live {
        let (status, answer) =
            send(&base, id, OPERATOR, json!({"command": "force-state", "state": "live", "note": "load"})).await;
        assert_eq!(status, 202, "{answer}");
    }
    until_async(Duration::from_secs(60), "twenty live", || async {
        crate::operations::get(&base, "/api/v1/broadcasts?state=live&limit=1").await.1["total"] == 20
    })
    .await;

    let browser = Browser::start(&directory.path().join("chromium")).await;
    browser.goto(&format!("{base}/#/")).await;
    browser.until("the list", "return document.body.dataset.loaded === 'true'").await;
    browser.until("on air first", "return document.querySelectorAll('#soon tr[data-state=live]').length === 20").await;
    let rows = "return [document.querySelectorAll('#soon tr[data-id]').length, document.querySelectorAll('#broadcasts tr[data-id]').length]";
    assert_eq!(browser.run(rows, json!([])).await, json!([20, 20]), "one page of each list");
    assert!(browser.text("#timeline").await.contains("10000 broadcasts are too many"), "no plan of 10,000");
    // Refreshes, each measured by the page from the browser's resource timing.
    let mut transfers = Vec::new();
    for _ in 0..5 {
        let before = browser.run("return Number(document.body.dataset.updates)", json!([])).await.as_u64().unwrap();
        browser.until("a refresh", &format!("return Number(document.body.dataset.updates) > {before}")).await;
        let figures = browser
            .run("return [Number(document.body.dataset.transferred), Number(document.body.dataset.bytes)]", json!([]))
            .await;
        transfers.push((figures[0].as_u64().unwrap(), figures[1].as_u64().unwrap()));
    }
    let most = transfers.iter().map(|(transferred, body)| *transferred.max(body)).max().unwrap();
    assert!(transfers.iter().all(|(transferred, body)| *transferred > 0 && *body > 0), "{transfers:?}");
    assert!(most < 100_000, "a refresh transferred {most} B: {transfers:?}");
    // Search finds one broadcast of 10,000; the state filter the twenty on air.
    browser.fill("#q", "b09990").await;
    browser.until("the search", "return [...document.querySelectorAll('#broadcasts tr[data-id]')].map((r) => r.dataset.id).join() === 'b09990'").await;
    browser.fill("#q", "").await;
    browser
        .run(
            "const s = document.getElementById('state-filter'); s.value = 'live'; s.dispatchEvent(new Event('change'))",
            json!([]),
        )
        .await;
    browser.until("the state filter", "return document.querySelectorAll('#broadcasts tr[data-state=live]').length === 20 && document.querySelectorAll('#broadcasts tr[data-id]').length === 20").await;
    // The next page of every broadcast, by id.
    browser
        .run(
            "const s = document.getElementById('state-filter'); s.value = ''; s.dispatchEvent(new Event('change'))",
            json!([]),
        )
        .await;
    browser
        .until("the first page", "return document.querySelector('#broadcasts tr[data-id]').dataset.id === 'b00000'")
        .await;
    browser.click("#all-more").await;
    browser
        .until("the second page", "return document.querySelector('#broadcasts tr[data-id]').dataset.id === 'b00020'")
        .await;
    assert!(browser.text("#all-page").await.contains("21–40 of 10000"), "{}", browser.text("#all-page").await);
    browser.assert_no_horizontal_scroll("10,000 broadcasts").await;
    println!(
        "dashboard with 10,000 broadcasts: each refresh (transferred, JSON bodies) in bytes {transfers:?}; bar 100,000 B"
    );
    browser.close().await;
    daemon.stop().await.unwrap();
}

/// Reads need a token here: the page says so, reads once given one, and offers what the token's
/// role allows; the token stays in the tab's session, never in the URL.
async fn tokens_gate_what_the_page_offers(browser: &Browser) {
    browser
        .until("the page asks for a token", "return document.getElementById('banner').innerText.includes('token')")
        .await;
    browser.fill("#token", VIEWER).await;
    browser
        .until(
            "the list loaded",
            "return document.body.dataset.loaded === 'true' && document.body.dataset.role === 'viewer'",
        )
        .await;
    browser.until("every row", "return document.querySelectorAll('#broadcasts tr[data-id]').length === 3").await;
    assert_eq!(browser.run(ALLOWED, json!([])).await, json!([false, false]), "a viewer changes nothing");
    browser.fill("#token", OPERATOR).await;
    browser.until("an operator token", "return document.body.dataset.role === 'operator'").await;
    assert_eq!(browser.run(ALLOWED, json!([])).await, json!([false, true]), "an operator sends commands only");
    browser.fill("#token", ADMIN).await;
    browser.until("an admin token", "return document.body.dataset.role === 'admin'").await;
    assert_eq!(browser.run(ALLOWED, json!([])).await, json!([true, true]), "an admin does everything");
    let stored =
        "return [sessionStorage.getItem('onair.token') === arguments[0], location.href.includes(arguments[0])]";
    assert_eq!(browser.run(stored, json!([ADMIN])).await, json!([true, false]), "in the session, never in the URL");
}

/// The lists: each broadcast's state, flags and origin; on air or due first; search and state
/// filter; a hostile note shown as text.
async fn the_lists_show_flags_origins_and_filter(browser: &Browser) {
    let flags = "return [...document.querySelectorAll('#broadcast-' + arguments[0] + ' [data-flag]')].map((n) => n.dataset.flag)";
    browser
        .until(
            "sport paused and skipping",
            "return document.querySelectorAll('#broadcast-sport [data-flag]').length === 2",
        )
        .await;
    assert_eq!(browser.run(ROW_STATE, json!(["news"])).await, "live");
    assert_eq!(browser.run(ROW_STATE, json!(["travel"])).await, "failed");
    assert_eq!(browser.run(ROW_STATE, json!(["sport"])).await, "idle");
    assert_eq!(browser.run(flags, json!(["sport"])).await, json!(["paused", "skip-next"]));
    assert_eq!(browser.run(flags, json!(["news"])).await, json!([]));
    assert_eq!(browser.run(flags, json!(["travel"])).await, json!([]));
    let origins = "return [...document.querySelectorAll('#broadcasts [data-origin]')].map((n) => n.dataset.origin)";
    assert_eq!(browser.run(origins, json!([])).await, json!(["file", "file", "file"]));
    // On air or due within the hour first: news (on air) and travel (failed), not sport.
    browser
        .run(
            "const s = document.getElementById('window'); s.value = '1h'; s.dispatchEvent(new Event('change'))",
            json!([]),
        )
        .await;
    browser.until("the hour's list", "return [...document.querySelectorAll('#soon tr[data-id]')].map((r) => r.dataset.id).join().startsWith('news,travel')").await;
    // Search and state filter.
    browser.fill("#q", "spo").await;
    browser.until("the search", "return [...document.querySelectorAll('#broadcasts tr[data-id]')].map((r) => r.dataset.id).join() === 'sport'").await;
    browser.fill("#q", "").await;
    browser.run("const s = document.getElementById('state-filter'); s.value = 'failed'; s.dispatchEvent(new Event('change'))", json!([])).await;
    browser.until("the state filter", "return [...document.querySelectorAll('#broadcasts tr[data-id]')].map((r) => r.dataset.id).join() === 'travel'").await;
    browser
        .run(
            "const s = document.getElementById('state-filter'); s.value = ''; s.dispatchEvent(new Event('change'))",
            json!([]),
        )
        .await;
    browser.until("every row again", "return document.querySelectorAll('#broadcasts tr[data-id]').length === 3").await;
    // The hostile note is shown as text, and ran nothing.
    browser
        .until("the note in the audit", "return document.getElementById('audit').innerText.includes('onerror=')")
        .await;
    assert_eq!(browser.run(INJECTED, json!([])).await, json!([0, null]));
}

/// Each broadcast's page in its own time zone and the viewer's; audit paging; a plan from a
/// date with the DST change marked. The sizes of two screenshots, and the DST day.
async fn each_broadcast_in_its_own_zone(browser: &Browser, base: &str) -> (usize, usize, chrono::NaiveDate) {
    // news's page: its next air time in Paris, and in New York (the viewer's zone), 6 hours apart.
    browser.click("#broadcast-news a.b-link").await;
    browser.until("news's plan", "return document.querySelectorAll('#b-plan tr[data-step=air]').length >= 7").await;
    let air = browser.text("#b-plan tr[data-step=air]").await;
    assert!(air.contains("19:00") && air.contains("13:00"), "Paris and New York: {air}");
    let facts = browser.text("#b-facts").await;
    assert!(facts.contains("Europe/Paris") && facts.contains(VIEWER_ZONE), "{facts}");
    browser.until("news's variables", "return document.querySelector('#b-vars [data-var=hls]') !== null").await;
    browser.until("news's audit", "return document.getElementById('b-audit').innerText.includes('→ live')").await;
    let others = "return [...document.querySelectorAll('#b-audit tr[data-id]')].length";
    assert!(browser.run(others, json!([])).await.as_u64().unwrap() > 0);
    assert!(!browser.text("#b-audit").await.contains("flooded"), "news's audit is news's only");
    // A file broadcast is changed in the file: no edit, no delete.
    let blocked = "return [document.getElementById('edit').disabled, document.getElementById('delete').disabled]";
    assert_eq!(browser.run(blocked, json!([])).await, json!([true, true]));
    let desktop = browser.screenshot("dashboard-1400-broadcast.png").await;

    // Audit paging: older entries load below, none twice.
    let shown = "return [...document.querySelectorAll('#b-audit tr[data-id]')].map((r) => r.dataset.id)";
    let first = browser.run(shown, json!([])).await.as_array().unwrap().len();
    browser.click("#b-audit-older").await;
    browser
        .until("older entries", &format!("return document.querySelectorAll('#b-audit tr[data-id]').length > {first}"))
        .await;
    let ids: Vec<i64> = serde_json::from_value::<Vec<String>>(browser.run(shown, json!([])).await)
        .unwrap()
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "newest first, no entry twice: {ids:?}");

    // sport's page: Tokyo's 21:30 is New York's 07:30.
    browser.goto(&format!("{base}/#/broadcasts/sport")).await;
    browser.until("sport's plan", "return document.querySelectorAll('#b-plan tr[data-step=air]').length >= 7").await;
    let air = browser.text("#b-plan tr[data-step=air]").await;
    assert!(air.contains("21:30") && air.contains("07:30"), "Tokyo and New York: {air}");
    assert!(browser.text("#b-title").await.contains("paused"), "the flags on sport's page");
    // travel's page: failed, its audit says why (as text); its plan from two days before the
    // spring-forward day marks the 02:30 that does not exist that day.
    browser.goto(&format!("{base}/#/broadcasts/travel")).await;
    browser.until("travel's audit", "return document.getElementById('b-audit').innerText.includes('flooded')").await;
    assert_eq!(browser.run("return document.body.dataset.state", json!([])).await, "failed");
    assert_eq!(browser.run(INJECTED, json!([])).await, json!([0, null]));
    let spring = next_spring_forward();
    let from = (spring - chrono::TimeDelta::days(2)).format("%Y-%m-%d").to_string();
    browser.until("travel's plan", "return document.querySelectorAll('#b-plan tr[data-step=air]').length >= 7").await;
    browser
        .run("const i = document.getElementById('plan-from'); i.value = arguments[0]; i.dispatchEvent(new Event('change'))", json!([from]))
        .await;
    browser.until("the DST mark", "return document.querySelectorAll('#b-plan tr.dst').length > 0").await;
    let marked = browser.text("#b-plan tr.dst").await;
    assert!(marked.contains("DST") && marked.contains("02:30"), "{marked}");
    let dst = browser.screenshot("dashboard-1400-dst.png").await;
    (desktop, dst, spring)
}

/// A phone: nothing scrolls sideways, on any view; then the desktop list. The screenshots' sizes.
async fn no_sideways_scroll(browser: &Browser, base: &str) -> (Vec<usize>, usize) {
    browser.goto(&format!("{base}/#/")).await;
    browser.viewport(420, 900).await;
    let mut phone = Vec::new();
    for (view, ready, name) in [
        (
            "#/",
            "return document.body.dataset.loaded === 'true' && document.getElementById('broadcast-news') !== null",
            "dashboard-420-list.png",
        ),
        (
            "#/broadcasts/news",
            "return document.querySelectorAll('#b-plan tr').length > 7",
            "dashboard-420-broadcast.png",
        ),
        ("#/new", "return document.body.dataset.editor === 'ready'", "dashboard-420-editor.png"),
    ] {
        browser.goto(&format!("{base}/{view}")).await;
        browser.until(view, ready).await;
        browser.assert_no_horizontal_scroll(view).await;
        phone.push(browser.screenshot(name).await);
    }
    browser.viewport(1400, 1000).await;
    browser.goto(&format!("{base}/#/")).await;
    browser.until("the list again", "return document.getElementById('broadcast-news') !== null").await;
    browser.assert_no_horizontal_scroll("the list at 1400 px").await;
    let list = browser.screenshot("dashboard-1400-list.png").await;
    (phone, list)
}

/// What the page tells by itself, then every problem the daemon finds, each at its key, nothing
/// saved. The keys, and the screenshots' sizes (1400 and 420 px).
async fn every_problem_at_its_key(browser: &Browser, base: &str) -> (Vec<String>, usize, usize) {
    browser.fill("#editor-id", "oneoff").await;
    browser.fill("#editor-text", "{\"channel\": ").await;
    browser.click("#editor-check").await;
    browser.until("not JSON", "return document.getElementById('problems').innerText.includes('not JSON')").await;
    let bad = json!({"channel": "not a channel!", "protocol": "SRT", "units": {"on_air": -1},
        "schedule": {"cron": "every day", "timezone": "Mars/Olympus", "duration": "1h"}});
    browser.fill("#editor-text", &serde_json::to_string_pretty(&bad).unwrap()).await;
    browser.click("#editor-save").await;
    browser.until("the problems", "return document.querySelectorAll('#problems li[data-key]').length >= 3").await;
    let keys: Vec<String> = serde_json::from_value(browser.run(PROBLEM_KEYS, json!([])).await).unwrap();
    for key in ["channel", "protocol", "schedule.timezone"] {
        assert!(keys.iter().any(|shown| shown == key), "{key} in {keys:?}");
    }
    let lines = "return [...document.querySelectorAll('#problems li .where')].length";
    assert!(browser.run(lines, json!([])).await.as_u64().unwrap() >= 3, "each problem names its line");
    assert!(browser.text("#editor-outcome").await.contains("nothing saved"));
    assert_eq!(crate::operations::get(base, "/api/v1/broadcasts/oneoff").await.0, 404, "nothing saved");
    let editor = browser.screenshot("dashboard-1400-editor-problems.png").await;
    browser.viewport(420, 900).await;
    browser.assert_no_horizontal_scroll("the editor with problems").await;
    let editor_phone = browser.screenshot("dashboard-420-editor-problems.png").await;
    browser.viewport(1400, 1000).await;
    (keys, editor, editor_phone)
}

/// Extend refused before air, then, on air, extended by 30 minutes from the page. What the page
/// said each time, when it went live, and the screenshots' sizes.
async fn extend_before_and_on_air(
    browser: &Browser,
    base: &str,
    air: chrono::DateTime<chrono::Utc>,
    created: std::time::Instant,
) -> (String, String, Duration, usize, usize) {
    browser.fill("#extend-by", "30m").await;
    browser.click("#extend").await;
    browser
        .until("the refusal", "return document.getElementById('b-outcome').innerText.includes('refused (409)')")
        .await;
    let refusal = browser.text("#b-outcome").await;
    // On air through the schedule, then extended from the page.
    browser
        .until_within(Duration::from_secs(120), "oneoff live", "return document.body.dataset.state === 'live'")
        .await;
    let live_after = created.elapsed();
    browser.click("#extend").await;
    browser.until("extended", "return document.getElementById('b-outcome').innerText.includes('the end moved')").await;
    let extended = browser.text("#b-outcome").await;
    browser
        .until("the held end", "return document.querySelectorAll('#b-plan tr.held[data-step=end]').length === 1")
        .await;
    let (_, plan) = crate::operations::get(base, "/api/v1/plan?hours=2&broadcast=oneoff").await;
    let end = plan["rows"].as_array().unwrap().iter().find(|row| row["step"] == "end").cloned().unwrap();
    let end_at: chrono::DateTime<chrono::Utc> = end["planned"].as_str().unwrap().parse().unwrap();
    assert_eq!(end_at - air, chrono::TimeDelta::minutes(50), "20 min, extended by 30: {end}");
    let on_air = browser.screenshot("dashboard-1400-extended.png").await;
    browser.viewport(420, 900).await;
    browser.assert_no_horizontal_scroll("a broadcast on air").await;
    let on_air_phone = browser.screenshot("dashboard-420-extended.png").await;
    browser.viewport(1400, 1000).await;
    (refusal, extended, live_after, on_air, on_air_phone)
}

/// Delete: confirmed, refused while live, then forced; gone from the list, the file broadcasts
/// as they were. What the page said of the refusal.
async fn delete_it_forced(browser: &Browser, base: &str) -> String {
    browser.click("#delete").await;
    browser.until("the question", "return !document.getElementById('delete-confirm').hidden").await;
    browser.click("#delete-yes").await;
    browser.until("busy", "return !document.getElementById('delete-force').hidden").await;
    let busy = browser.text("#delete-question").await;
    assert!(busy.contains("live"), "{busy}");
    browser.click("#delete-force").await;
    browser
        .until("being removed", "return document.getElementById('b-outcome').innerText.includes('being stopped')")
        .await;
    until_async(Duration::from_secs(60), "oneoff removed", || async {
        crate::operations::get(base, "/api/v1/broadcasts/oneoff").await.0 == 404
    })
    .await;
    browser.until("the page says so", "return document.body.dataset.state === 'removed'").await;
    browser.goto(&format!("{base}/#/")).await;
    browser.until("the list without it", "return document.body.dataset.loaded === 'true' && document.querySelectorAll('#broadcasts tr[data-id]').length === 3 && !document.getElementById('broadcast-oneoff')").await;
    // The file broadcasts went on meanwhile, each in its own state.
    assert_eq!(browser.run(ROW_STATE, json!(["news"])).await, "live");
    assert_eq!(browser.run(ROW_STATE, json!(["travel"])).await, "none");
    assert_eq!(browser.run(ROW_STATE, json!(["sport"])).await, "idle");
    busy
}

/// Two admins: the page's edit started from one revision, the API's change made the next; the
/// page's save is refused (412), the page loads the current definition, and the edit is made again.
async fn lose_an_edit_race_then_edit(browser: &Browser, base: &str, definition: &dyn Fn(&str) -> Value) {
    browser.click("#edit").await;
    browser.until("the definition", "return document.body.dataset.editor === 'ready' && document.getElementById('editor-text').value.includes('10m')").await;
    let (_, record) = crate::operations::get(base, "/api/v1/broadcasts/oneoff").await;
    let revision = format!("\"{}\"", record["revision"]);
    let (status, answer) = put(base, "oneoff", &definition("15m"), &revision).await;
    assert_eq!(status, 200, "{answer}");
    browser.fill("#editor-text", &serde_json::to_string_pretty(&definition("20m")).unwrap()).await;
    browser.click("#editor-save").await;
    browser
        .until(
            "the 412",
            "return document.getElementById('editor-outcome').innerText.includes('changed this broadcast')",
        )
        .await;
    assert!(
        crate::operations::get(base, "/api/v1/broadcasts/oneoff").await.1["definition"].to_string().contains("15m")
    );
    browser.click("#editor-reload").await;
    browser.until("revision 2", "return document.body.dataset.editor === 'ready' && document.getElementById('editor-text').value.includes('15m')").await;
    browser.fill("#editor-text", &serde_json::to_string_pretty(&definition("20m")).unwrap()).await;
    browser.click("#editor-save").await;
    browser.until("saved", "return document.body.dataset.view === 'broadcast' && document.getElementById('b-outcome').innerText.includes('saved')").await;
    let (_, record) = crate::operations::get(base, "/api/v1/broadcasts/oneoff").await;
    assert_eq!(
        record["revision"].as_i64(),
        revision.trim_matches('"').parse::<i64>().ok().map(|first| first + 2),
        "{record}"
    );
}
