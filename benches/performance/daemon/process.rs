//! What the daemon sections share: a private RabbitMQ node, the emulator in this process, and
//! `onair run` as a child process (the release build) with its readiness, memory and log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

/// How long a daemon may take to answer `/readyz` 200 before the run stops, loudly: far beyond
/// the bars (5 s), so that a slow start-up is measured and shown missed, and only a hang stops
/// the run (100,000 distinct schedules took minutes on a loaded 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// `ONAIR_BENCH_BROADCASTS` (the daemon sections' broadcast count; 100,000 unless set).
pub fn broadcasts() -> usize {
    // A bench is not the daemon, whose environment config.rs alone reads.
    #[allow(clippy::disallowed_methods)]
    std::env::var("ONAIR_BENCH_BROADCASTS").ok().and_then(|count| count.parse().ok()).unwrap_or(100_000)
}

/// A runtime for a section (the sections are synchronous functions).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

/// A private RabbitMQ node under `directory`.
pub fn rabbitmq(directory: &Path) -> onair::broker::local::LocalNode {
    onair::broker::local::LocalNode::start(&directory.join("rabbitmq"), Duration::from_secs(120))
        .expect("RabbitMQ node (is rabbitmq-server installed?)")
}

/// The emulator's settings for a bench: quotas that `live_events` broadcasts never reach.
pub fn emulator_settings(live_events: usize) -> onair::emulator::Settings {
    let mut settings = onair::emulator::Settings::defaults().expect("the emulator's defaults");
    settings.quotas.live_events = live_events + 16;
    settings.quotas.live_outputs_per_live_event = 16;
    settings.quotas.streaming_endpoints = 16;
    settings.request_log_limit = 1000;
    settings
}

/// Serves the emulator on a free loopback port of this process until `shutdown`; its base URL.
pub async fn emulator(live_events: usize, shutdown: tokio_util::sync::CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("emulator port");
    let base = format!("http://{}", listener.local_addr().expect("emulator address"));
    let emulator = onair::emulator::Emulator::new(emulator_settings(live_events), onair::clock::system());
    tokio::spawn(onair::emulator::serve(listener, emulator, shutdown));
    base
}

/// A free loopback port (for the daemon's operations listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("address").port()
}

/// `onair run` as the benches run it, in its own state directory.
pub struct Daemon {
    pub child: Child,
    /// Its stderr (RUST_LOG=warn).
    pub log: PathBuf,
    /// The operations listener.
    pub base: String,
    /// When it was spawned.
    pub spawned: Instant,
}

/// What a daemon of the benches is configured with.
pub struct Setup {
    /// The config file (written by the caller: `support::base_config`, `[http] listen = base`,
    /// the broadcasts).
    pub config: PathBuf,
    /// The operations listener's port (the config's `[http] listen`).
    pub port: u16,
    /// The emulator's base URL (the media API and its token endpoint).
    pub media: String,
    /// The queue it consumes (each scenario its own).
    pub queue: String,
}

impl Setup {
    /// The settings the bench process reads for its own publishers: the broker's.
    pub fn broker(&self) -> onair::broker::Settings {
        let env = [("ONAIR__BROKER__QUEUE".to_string(), self.queue.clone())].into();
        let source = onair::config::Source { file: Some(self.config.clone()), env };
        onair::daemon::load(&source).expect("the daemon's settings").broker
    }
}

/// The config file's text: the benches' base settings, the operations listener on `port`, then
/// `broadcasts` (TOML tables).
pub fn config(state: &Path, broker: &str, port: u16, broadcasts: &str) -> String {
    format!("{}[http]\nlisten = \"127.0.0.1:{port}\"\n{broadcasts}", support::base_config(state, broker))
}

impl Daemon {
    /// Spawns `onair run` (release build) on `setup`, its stderr to `log`.
    pub fn spawn(setup: &Setup, log: &Path) -> Self {
        let file = std::fs::File::options().create(true).append(true).open(log).expect("log");
        let spawned = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_onair"))
            .arg("--config")
            .arg(&setup.config)
            .arg("run")
            .env("ONAIR__MEDIA__ARM_URL", &setup.media)
            .env("ONAIR__MEDIA__TOKEN_URL", format!("{}/tenant/oauth2/v2.0/token", setup.media))
            .env("ONAIR__MEDIA__CLIENT_ID", "onair-emulator")
            .env("ONAIR__MEDIA__CLIENT_SECRET", onair::emulator::DEFAULT_CLIENT_SECRET)
            .env("ONAIR__BROKER__QUEUE", &setup.queue)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("onair run");
        Self { child, log: log.to_path_buf(), base: format!("http://127.0.0.1:{}", setup.port), spawned }
    }

    /// Waits until `/readyz` answers 200; the time since the spawn. Panics with the log's tail
    /// when the daemon exits or is not ready within `READY_TIMEOUT`.
    pub async fn ready(&mut self, http: &reqwest::Client) -> Duration {
        loop {
            if let Ok(response) = http.get(format!("{}/readyz", self.base)).send().await
                && response.status().is_success()
            {
                return self.spawned.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("onair run exited ({status}) before it was ready; its log ends with:\n{}", self.tail());
            }
            if self.spawned.elapsed() > READY_TIMEOUT {
                let answer = match http.get(format!("{}/readyz", self.base)).send().await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(error) => error.to_string(),
                };
                support::stop(&mut self.child);
                panic!(
                    "onair run not ready after {READY_TIMEOUT:?} (/readyz: {answer}); its log ends with:\n{}",
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resident memory now, MB.
    pub fn rss_mb(&self) -> f64 {
        support::rss_mb(&self.child)
    }

    /// Resident memory 2 s from now and the peak so far, as the reference column says them.
    pub async fn settled_mb(&self) -> String {
        tokio::time::sleep(Duration::from_secs(2)).await;
        format!("{:.0} MB 2 s later, peak {:.0} MB", support::rss_mb(&self.child), support::peak_rss_mb(&self.child))
    }

    /// A counter or gauge of `/metrics` (`onair_events_acked_total`); 0 when unreadable.
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> u64 {
        let text = match http.get(format!("{}/metrics", self.base)).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => return 0,
        };
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    }

    /// SIGTERM (support::stop); says so when it did not stop by itself within its grace period
    /// (a finding about the daemon, not a reason to lose the run's other figures).
    pub fn stop(mut self) {
        support::stop(&mut self.child);
        let status = self.child.wait().expect("wait for onair run");
        if !status.success() {
            println!("  NOTE: onair run did not stop cleanly ({status}); its log ends with:\n{}", self.tail());
        }
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// The last lines of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Daemon {
    /// A panic elsewhere does not leave the daemon running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Pushes `row` on `report`, its reference printed under it (how it was measured).
pub fn push(report: &mut crate::report::Report, row: crate::report::Row) {
    let reference = row.reference.clone();
    report.push(row);
    println!("    {reference}");
}

/// Quantiles of a set of figures (nearest rank).
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |quantile: f64| {
            let rank = ((values.len() as f64 * quantile).ceil() as usize).clamp(1, values.len().max(1));
            values.get(rank - 1).copied().unwrap_or(f64::NAN)
        };
        Self { p50: at(0.5), p99: at(0.99), max: values.last().copied().unwrap_or(f64::NAN) }
    }
}
