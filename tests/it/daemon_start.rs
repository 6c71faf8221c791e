//! Starting the daemon: a failure while building leaves nothing running.
//!
//! The broker and the media API are stood in for by a bare TCP listener that nobody answers on:
//! any task that started (the consumer, the media probe, the relay) would connect to it.

use std::collections::HashMap;
use std::time::Duration;

use onair::daemon::{Daemon, Error};
use onair::machine::Library;
use onair::store::{SqliteStore, Store};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_http_port_fails_start_before_anything_runs() {
    let directory = tempfile::tempdir().unwrap();
    let outside = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outside_address = outside.local_addr().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_address = taken.local_addr().unwrap();
    let file = directory.path().join("onair.toml");
    let text = format!(
        r#"
[media]
arm_url = "http://{outside_address}"
token_url = "http://{outside_address}/t/oauth2/v2.0/token"
subscription_id = "{subscription}"
resource_group = "{group}"
account = "{account}"
client_id = "onair-emulator"
[broker]
url = "amqp://guest@{outside_address}/%2f"
[http]
enabled = true
listen = "{taken_address}"
[engine]
state_dir = "{state_dir}"
[broadcasts.news]
channel = "news"
[broadcasts.news.schedule]
cron = "0 19 * * *"
timezone = "Europe/Paris"
duration = "30m"
"#,
        subscription = crate::helpers::SUBSCRIPTION,
        group = crate::helpers::GROUP,
        account = crate::helpers::ACCOUNT,
        state_dir = directory.path().display(),
    );
    std::fs::write(&file, text).unwrap();
    let env = HashMap::from([
        ("ONAIR__MEDIA__CLIENT_SECRET".to_string(), "onair-emulator-secret".to_string()),
        ("ONAIR__BROKER__PASSWORD".to_string(), "guest".to_string()),
    ]);
    let settings = onair::daemon::load(&onair::config::Source { file: Some(file), env }).unwrap();
    assert!(settings.scheduler.enabled);

    let Err(error) = Daemon::start(&settings, Library::built_in()).await else {
        panic!("the daemon started on a port already taken");
    };
    assert!(
        matches!(error, Error::Bind { setting: "http.listen", address, .. } if address == taken_address),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.starts_with(&format!("cannot listen on {taken_address} (http.listen): ")), "{message}");

    // Nothing started: no consumer connects to the broker, no probe and no relay reach out.
    let reached = tokio::time::timeout(Duration::from_secs(2), outside.accept()).await;
    assert!(reached.is_err(), "a task was left running and connected: {reached:?}");
    // Nothing was recorded either: the scheduler, built after the listeners, armed nothing.
    let store = SqliteStore::open(&settings.engine.store).unwrap();
    assert!(store.schedule_cursors().unwrap().is_empty());
    // Held until here so that the port stays taken while the daemon tries it.
    drop(taken);
}
