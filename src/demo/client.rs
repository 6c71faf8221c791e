//! `onair demo --client-only`: one broadcast lifecycle through the media client alone.
//!
//! It shows what the ensure-operations do: each step, the requests it took (from the emulator's
//! request log, retries and faults included) and the streaming URLs. It starts its own emulator
//! on a free port unless pointed at a running one. It changes nothing outside that emulator.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::{Clock, SystemClock};
use crate::emulator::{self, Emulator, LoggedRequest};
use crate::media::{self, ChannelSpec, Client, EndpointSpec, LocatorSpec, ProgramSpec};

use super::{Error, Options};

/// Runs the demo: starts or finds the emulator, drives the lifecycle, prints it.
pub async fn run(
    emulator_settings: emulator::Settings,
    media_settings: media::Settings,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let serving = CancellationToken::new();
    let (base, server) = match &options.external {
        Some(url) => (url.as_str().trim_end_matches('/').to_string(), None),
        None => {
            let listener = TcpListener::bind(emulator_settings.listen)
                .await
                .map_err(|source| emulator::Error::Bind { address: emulator_settings.listen, source })?;
            let address = listener
                .local_addr()
                .map_err(|source| emulator::Error::Bind { address: emulator_settings.listen, source })?;
            let emulator = Emulator::new(emulator_settings.clone(), crate::clock::system());
            let task = tokio::spawn(
                emulator::serve(listener, emulator, serving.clone()).instrument(tracing::info_span!("emulator")),
            );
            (format!("http://{address}"), Some(task))
        }
    };
    let client = Client::new(&client_settings(&base, &emulator_settings, &media_settings))?;
    println!("onair demo: one broadcast lifecycle, driven through the media client");
    println!("  emulator  {base}  (transient states last {:?})", emulator_settings.transition);
    println!(
        "  account   subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{DEMO_GROUP}/…/mediaservices/{DEMO_ACCOUNT}"
    );
    println!();
    let outcome = tokio::select! {
        outcome = lifecycle(&client, &base, &options) => outcome,
        _ = shutdown.cancelled() => Err(Error::Interrupted),
    };
    if outcome.is_ok() && options.keep_running && server.is_some() {
        println!();
        println!("The emulator keeps running at {base}; try GET {base}/_emulator/state. Ctrl-C stops it.");
        shutdown.cancelled().await;
    }
    serving.cancel();
    if let Some(task) = server {
        let _ = task.await;
    }
    outcome
}

const DEMO_SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000d3e0";
const DEMO_GROUP: &str = "onair-demo";
const DEMO_ACCOUNT: &str = "demo";

fn client_settings(base: &str, emulator: &emulator::Settings, media: &media::Settings) -> media::Settings {
    let mut settings = media.clone();
    settings.arm_url = url::Url::parse(base).unwrap_or_else(|_| media.arm_url.clone());
    settings.token_url = url::Url::parse(&format!("{base}/onair-demo/oauth2/v2.0/token")).ok();
    settings.subscription_id = Some(DEMO_SUBSCRIPTION.into());
    settings.resource_group = Some(DEMO_GROUP.into());
    settings.account = Some(DEMO_ACCOUNT.into());
    settings.client_id = Some(emulator.client_id.clone());
    settings.client_secret = Some(emulator.client_secret.clone());
    settings.poll_interval = Duration::from_millis(250);
    settings.request_timeout = Duration::from_secs(5);
    settings
}

async fn lifecycle(client: &Client, base: &str, options: &Options) -> Result<(), Error> {
    let started = Instant::now();
    let mut trace = Trace { http: reqwest::Client::new(), base: base.to_string(), seen: 0, step: 0 };
    trace.skip_history().await?;
    let occurrence = format!("{}-{}", options.channel, SystemClock.now().format("%Y%m%dt%H%Mz"));
    let endpoint = "default";

    let channel = client.ensure_channel_running(&ChannelSpec::new(&options.channel)).await?;
    trace.step(&format!("channel {:?} created and started", options.channel)).await?;
    let ingest =
        channel.properties.input.and_then(|input| input.endpoints).and_then(|endpoints| endpoints.into_iter().next());
    if let Some(url) = ingest.and_then(|endpoint| endpoint.url) {
        println!("      ingest  {url}");
    }

    client.ensure_endpoint_running(&EndpointSpec { name: endpoint.into(), scale_units: 1, description: None }).await?;
    trace.step(&format!("streaming endpoint {endpoint:?} started")).await?;
    client.ensure_endpoint_scaled(endpoint, 3).await?;
    trace.step(&format!("streaming endpoint {endpoint:?} scaled to 3 units for the audience")).await?;

    let program = ProgramSpec {
        channel: options.channel.clone(),
        name: occurrence.clone(),
        asset: occurrence.clone(),
        archive_window: "PT1H".into(),
        manifest_name: occurrence.clone(),
        description: Some("onair demo".into()),
    };
    client.ensure_program_present(&program).await?;
    trace.step(&format!("program {occurrence:?} created: asset and live output (archive PT1H)")).await?;

    let locator = LocatorSpec {
        name: occurrence.clone(),
        asset: occurrence.clone(),
        streaming_policy: "Predefined_ClearStreamingOnly".into(),
        content_key_policy: None,
        endpoint: endpoint.into(),
    };
    let published = client.ensure_locator_published(&locator).await?;
    trace.step(&format!("locator {occurrence:?} published")).await?;
    for (label, url) in [("HLS", &published.hls), ("DASH", &published.dash), ("Smooth", &published.smooth)] {
        if let Some(url) = url {
            println!("      {label:<7} {url}");
        }
    }

    println!("\n  … on air for {:?} …\n", options.on_air);
    tokio::time::sleep(options.on_air).await;

    client.ensure_program_removed(&options.channel, &occurrence).await?;
    trace.step("program removed (the asset and its locator stay, for on-demand viewing)").await?;
    client.ensure_channel_stopped(&options.channel, false).await?;
    trace.step(&format!("channel {:?} stopped", options.channel)).await?;
    client.ensure_endpoint_scaled(endpoint, 1).await?;
    trace.step(&format!("streaming endpoint {endpoint:?} scaled back to 1 unit")).await?;

    let log = trace.all().await?;
    let arm: Vec<&LoggedRequest> = log.iter().filter(|entry| entry.path.starts_with("/subscriptions/")).collect();
    let creates: Vec<&&LoggedRequest> =
        arm.iter().filter(|entry| entry.method == "PUT" && entry.status == 201).collect();
    let mut created_paths: Vec<String> = creates.iter().map(|entry| entry.path.to_lowercase()).collect();
    created_paths.sort();
    created_paths.dedup();
    println!();
    println!(
        "Done in {:.1} s: {} requests to the API, {} resources created, each with one PUT{}.",
        started.elapsed().as_secs_f64(),
        arm.len(),
        created_paths.len(),
        if created_paths.len() == creates.len() { "" } else { " (some more than once)" }
    );
    Ok(())
}

/// Prints each step with the requests it took, read from `/_emulator/requests`.
struct Trace {
    http: reqwest::Client,
    base: String,
    seen: u64,
    step: usize,
}

impl Trace {
    async fn all(&self) -> Result<Vec<LoggedRequest>, Error> {
        let url = format!("{}/_emulator/requests", self.base);
        let response = self.http.get(&url).send().await.map_err(|error| Error::Log(error.to_string()))?;
        response.json().await.map_err(|error| Error::Log(error.to_string()))
    }

    async fn skip_history(&mut self) -> Result<(), Error> {
        self.seen = self.all().await?.iter().map(|entry| entry.seq).max().unwrap_or(0);
        Ok(())
    }

    async fn step(&mut self, what: &str) -> Result<(), Error> {
        self.step += 1;
        println!("{:>3}. {what}", self.step);
        let entries: Vec<LoggedRequest> = self.all().await?.into_iter().filter(|entry| entry.seq > self.seen).collect();
        // Consecutive identical lines (polls of an operation) are shown once with a count.
        let mut lines: Vec<(String, usize)> = Vec::new();
        for entry in &entries {
            let tail = entry.path.split_once("/mediaservices/").map_or(entry.path.as_str(), |(_, tail)| tail);
            let tail = tail.split_once('/').map_or("", |(_, tail)| tail);
            let shown = if entry.path.contains("/oauth2/") { "token".to_string() } else { tail.to_string() };
            let fault = match (&entry.fault, entry.retry_after) {
                (Some(fault), Some(seconds)) => format!("  ({fault}, Retry-After {seconds} s)"),
                (Some(fault), None) => format!("  ({fault})"),
                _ => String::new(),
            };
            let line = format!("{:<6} {shown} → {}{fault}", entry.method, entry.status);
            match lines.last_mut() {
                Some((last, count)) if *last == line => *count += 1,
                _ => lines.push((line, 1)),
            }
        }
        for (line, count) in lines {
            let repeated = if count > 1 { format!("  ×{count}") } else { String::new() };
            println!("        {line}{repeated}");
        }
        self.seen = entries.iter().map(|entry| entry.seq).max().unwrap_or(self.seen);
        Ok(())
    }
}
