//! The lifecycle with the API misbehaving: throttling, server errors, lost responses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use onair::emulator::Faults;

use crate::helpers::{TestEmulator, emulator_settings};
use crate::lifecycle::run_lifecycle;

#[tokio::test]
async fn the_lifecycle_completes_under_throttling_errors_and_dropped_responses() {
    let mut settings = emulator_settings();
    settings.seed = 2026;
    settings.faults =
        Faults { throttle_rate: 0.30, retry_after_secs: 1, error_rate: 0.10, drop_rate: 0.05, ..Faults::none() };
    let emulator = TestEmulator::start(settings).await;
    let mut media = emulator.media_settings();
    media.retry.max_attempts = 12;
    media.retry.max_elapsed = Duration::from_secs(60);
    let client = onair::media::Client::new(&media).unwrap();

    let started = Instant::now();
    let (hls, dash) = run_lifecycle(&client).await;
    assert!(hls.contains("m3u8") && dash.contains("mpd"));

    let requests = emulator.arm_requests();
    let count = |fault: &str| requests.iter().filter(|entry| entry.fault.as_deref() == Some(fault)).count();
    let (throttled, errors, dropped) = (count("throttled"), count("error"), count("dropped"));
    println!(
        "faults: {} requests in {:.1} s, {throttled} throttled, {errors} server errors, {dropped} dropped responses",
        requests.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(throttled > 0 && errors > 0 && dropped > 0, "every fault kind happened ({throttled}, {errors}, {dropped})");

    // No request was sent before the Retry-After of the 429 before it had elapsed.
    for pair in requests.windows(2) {
        if let (Some(seconds), next) = (pair[0].retry_after, &pair[1]) {
            let waited = next.at_ms - pair[0].at_ms;
            assert!(
                waited >= seconds * 1000,
                "request {} came {waited} ms after a 429 with Retry-After {seconds}",
                next.seq
            );
        }
    }

    // Zero duplicate resources: one of each was created, with one successful create each.
    let created: BTreeMap<String, usize> = requests
        .iter()
        .filter(|entry| entry.method == "PUT" && entry.status == 201)
        .fold(BTreeMap::new(), |mut counts, entry| {
            *counts.entry(entry.path.to_lowercase()).or_default() += 1;
            counts
        });
    assert_eq!(created.len(), 4, "{created:#?}");
    assert!(created.values().all(|count| *count == 1), "{created:#?}");
    assert_eq!(client.list_live_events().await.unwrap().len(), 1);
    assert_eq!(client.list_assets().await.unwrap().len(), 1);
    assert_eq!(client.list_streaming_locators().await.unwrap().len(), 1);
    assert_eq!(client.list_live_outputs("news").await.unwrap().len(), 0);
}
