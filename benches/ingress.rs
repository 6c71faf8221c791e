//! The daemon's resident memory under a hostile webhook mix: `onair run` (a separate process, so
//! its RSS is its own, with 16 runtime threads as on a 16-core server) with a private RabbitMQ
//! node and three broadcasts, and 200 rounds of deliveries sent at once: bodies near the 1 MiB
//! limit with bad signatures, oversized bodies, 10,000-event batches (about no configured
//! broadcast, keyed and signed; of onair's own types, refused; one malformed event at the end),
//! a valid signed delivery and its replays. RSS is printed every 20 rounds; the bar: the last 100
//! rounds grow it by less than 10%.
//! Run with `cargo bench --bench ingress` (needs rabbitmq-server); `--profile dev` builds faster.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onair::ingress::{SIGNATURE_HEADER, sign};

mod support;
use support::{rss_mb, stop};

const ROUNDS: usize = 200;
const SECRET: &str = "bench-hmac-secret-0123456789";
const KEY: &str = "bench-query-key-0123456789";
const MAX_BODY: usize = 1 << 20;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let directory = tempfile::tempdir().expect("temp dir");
    let node = onair::broker::local::LocalNode::start(&directory.path().join("rabbitmq"), Duration::from_secs(120))
        .expect("RabbitMQ node (is rabbitmq-server installed?)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("address").port();
    let config = directory.path().join("onair.toml");
    let settings = support::base_config(&directory.path().join("state"), &node.url());
    std::fs::write(
        &config,
        format!(
            "{settings}[http]\nlisten = \"127.0.0.1:0\"\n\
             [ingress]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = {MAX_BODY}\n\
             [broadcasts.news]\n[broadcasts.sport]\n[broadcasts.weather]\n"
        ),
    )
    .expect("config");
    let log = std::fs::File::create(directory.path().join("onair.log")).expect("log");
    // ONAIR_BENCH_BINARY runs another build (to compare before and after a change); a bench is
    // not the daemon, whose environment config.rs alone reads.
    #[allow(clippy::disallowed_methods)]
    let binary = std::env::var("ONAIR_BENCH_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_onair").to_string());
    // ONAIR_BENCH_COPIES sends each hostile request that many times per round (default 1),
    // ONAIR_BENCH_ROUNDS runs fewer or more rounds (a multiple of 20, at least 100 for the bar),
    // ONAIR_BENCH_WORKERS sets the daemon's runtime threads (default 16, as on a 16-core server:
    // each thread parses a delivery and allocates from its own malloc arena).
    #[allow(clippy::disallowed_methods)]
    let knob = |name: &str, default: usize| -> usize {
        std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
    };
    let copies = knob("ONAIR_BENCH_COPIES", 1);
    let rounds = knob("ONAIR_BENCH_ROUNDS", ROUNDS);
    let workers = knob("ONAIR_BENCH_WORKERS", 16);
    let mut daemon = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("ONAIR__MEDIA__CLIENT_SECRET", "bench-client-secret")
        .env("ONAIR__INGRESS__HMAC_SECRETS", SECRET)
        .env("ONAIR__INGRESS__QUERY_KEYS", KEY)
        .env("RUST_LOG", "error")
        .env("TOKIO_WORKER_THREADS", workers.to_string())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("onair run");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.post(format!("{base}/events")).body("x").send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "the ingress did not come up; see {}", log_path(&config));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let bodies = Bodies::new();
    println!(
        "onair's RSS under a hostile ingress mix: {rounds} rounds of {} deliveries each (sent at once), {workers} runtime threads",
        bodies.per_round(copies)
    );
    println!("{:>6} {:>10} {:>9}", "round", "RSS (MB)", "elapsed");
    let mut samples = vec![(0, rss_mb(&daemon))];
    println!("{:>6} {:>10.1} {:>8.1}s", 0, samples[0].1, 0.0);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let clock = Instant::now();
    for round in 1..=rounds {
        for status in bodies.round(&http, &base, round, copies).await {
            *statuses.entry(status).or_default() += 1;
        }
        if round % 20 == 0 {
            let rss = rss_mb(&daemon);
            samples.push((round, rss));
            println!("{round:>6} {rss:>10.1} {:>8.1}s", clock.elapsed().as_secs_f64());
        }
    }
    let at = |round: usize| samples.iter().find(|(at, _)| *at == round).map(|(_, rss)| *rss).unwrap_or_default();
    let from = rounds.saturating_sub(100);
    let growth = (at(rounds) - at(from)) / at(from) * 100.0;
    println!("answers: {statuses:?}");
    println!(
        "growth over the last {} rounds: {growth:+.1}% ({:.1} MB to {:.1} MB); the bar (last 100 of 200 rounds): < 10% -> {}",
        rounds - from,
        at(from),
        at(rounds),
        if growth < 10.0 { "met" } else { "NOT met" }
    );
    stop(&mut daemon);
    assert!(!statuses.contains_key(&0), "requests failed without an answer: {statuses:?}");
}

fn log_path(config: &Path) -> String {
    config.with_file_name("onair.log").display().to_string()
}

/// The bodies of a round, built once.
struct Bodies {
    near_limit: Vec<u8>,
    oversized: Vec<u8>,
    unknown_channel: Vec<u8>,
    internal: Vec<u8>,
    malformed: Vec<u8>,
}

impl Bodies {
    fn new() -> Self {
        let batch = |kind: &str, subject: &str| -> Vec<u8> {
            let events: Vec<String> = (0..10_000)
                .map(|index| format!(r#"{{"id":"{index}","type":"{kind}","subject":"{subject}"}}"#))
                .collect();
            format!("[{}]", events.join(",")).into_bytes()
        };
        let unknown_channel = batch("Microsoft.Media.LiveEventIngestHeartbeat", "liveEvent/zz");
        let internal = batch("onair.action.succeeded", "liveEvent/zz");
        let mut malformed = batch("Microsoft.Media.LiveEventIngestHeartbeat", "liveEvent/zz");
        malformed.truncate(malformed.len() - 1);
        malformed.extend_from_slice(br#",{"id":"bad"}]"#);
        for body in [&unknown_channel, &internal, &malformed] {
            assert!(body.len() <= MAX_BODY, "a 10,000-event batch of {} bytes is over the limit", body.len());
        }
        let padding = |size: usize| {
            let mut body =
                br#"{"specversion":"1.0","id":"p","source":"x","type":"t","subject":"news","data":""#.to_vec();
            body.resize(size - 2, b'a');
            body.extend_from_slice(b"\"}");
            body
        };
        Self {
            near_limit: padding(MAX_BODY - 64),
            oversized: padding(MAX_BODY + 4096),
            unknown_channel,
            internal,
            malformed,
        }
    }

    fn per_round(&self, copies: usize) -> usize {
        9 * copies + 5
    }

    /// Sends one round at once; the answers' statuses (0: no answer).
    async fn round(&self, http: &reqwest::Client, base: &str, round: usize, copies: usize) -> Vec<u16> {
        let now = onair::clock::Clock::now(&onair::clock::SystemClock).timestamp();
        let valid = format!(
            r#"[{{"id":"hb-{round}","source":"encoder","type":"Microsoft.Media.LiveEventIngestHeartbeat","subject":"liveEvent/news","data":{{"trackType":"video","healthy":true}}}}]"#
        )
        .into_bytes();
        let valid_signature = sign(SECRET, now, &valid);
        let mut requests = Vec::new();
        let post = |path: &str| http.post(format!("{base}{path}")).header("content-type", "application/json");
        for _ in 0..4 * copies {
            let forged = sign("guessed-secret-0123456789", now, &self.near_limit);
            requests.push(post("/events").header(SIGNATURE_HEADER, forged).body(self.near_limit.clone()));
        }
        for _ in 0..2 * copies {
            requests.push(post(&format!("/events?key={KEY}")).body(self.oversized.clone()));
        }
        for _ in 0..copies {
            requests.push(post(&format!("/events?key={KEY}")).body(self.unknown_channel.clone()));
            requests.push(post(&format!("/events?key={KEY}")).body(self.internal.clone()));
            requests.push(post(&format!("/events?key={KEY}")).body(self.malformed.clone()));
        }
        // A signed near-limit batch that is valid and about no configured broadcast.
        requests.push(
            post("/events")
                .header(SIGNATURE_HEADER, sign(SECRET, now, &self.unknown_channel))
                .body(self.unknown_channel.clone()),
        );
        for _ in 0..4 {
            requests.push(post("/events").header(SIGNATURE_HEADER, &valid_signature).body(valid.clone()));
        }
        let answers = requests.into_iter().map(|request| async move {
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            }
        });
        join_all(answers).await
    }
}

/// Runs the futures concurrently (tasks on the runtime) and collects their outputs in order.
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<u16>
where
    F: std::future::Future<Output = u16> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap_or(0));
    }
    out
}
