//! The private RabbitMQ node shared by this test binary, started on first use and stopped when
//! the binary exits. If it cannot start, the tests that need it fail with the broker's log.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use onair::broker::local::LocalNode;
use onair::broker::{self, Publisher};
use onair::event::Event;

static NODE: OnceLock<Result<LocalNode, String>> = OnceLock::new();

/// The node, started once.
pub fn node() -> &'static LocalNode {
    let started = NODE.get_or_init(|| {
        // A test helper: the node lives under the test machine's temporary directory.
        #[allow(clippy::disallowed_methods)]
        let directory = std::env::temp_dir().join(format!("onair-rabbitmq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        LocalNode::start(&directory, Duration::from_secs(120)).map_err(|error| error.to_string())
    });
    match started {
        Ok(node) => node,
        Err(error) => panic!("the test RabbitMQ node did not start: {error}"),
    }
}

/// Broker settings on the shared node with names of their own, so tests do not see each other.
pub fn settings(prefix: &str) -> broker::Settings {
    let node = node();
    let unique = format!("{prefix}.{}", uuid::Uuid::new_v4().simple());
    let mut settings = onair::daemon::load(&onair::config::Source::default()).expect("defaults").broker;
    settings.url = url::Url::parse(&node.url()).expect("node URL");
    settings.exchange = format!("{unique}.events");
    settings.queue = format!("{unique}.events");
    settings.dead_exchange = format!("{unique}.dead");
    settings.dead_queue = format!("{unique}.dead");
    settings.reconnect_min = Duration::from_millis(200);
    settings.reconnect_max = Duration::from_secs(2);
    settings.liveness_interval = Duration::from_millis(500);
    settings
}

/// The `[broker]` TOML for the same names, for a daemon process.
pub fn toml(settings: &broker::Settings) -> String {
    format!(
        "[broker]\nurl = \"{}\"\nexchange = \"{}\"\nqueue = \"{}\"\ndead_exchange = \"{}\"\ndead_queue = \"{}\"\nreconnect_min = \"200ms\"\nreconnect_max = \"2s\"\nliveness_interval = \"500ms\"\n",
        settings.url, settings.exchange, settings.queue, settings.dead_exchange, settings.dead_queue
    )
}

/// Publishes every event with confirms, `window` at a time, retrying those the broker could not
/// confirm (a retried event may arrive twice: same id, one effect).
pub async fn publish_all(settings: &broker::Settings, events: Vec<Event>, window: usize) -> usize {
    let settings = Arc::new(settings.clone());
    let publishers: Vec<Arc<Publisher>> =
        (0..window.max(1)).map(|_| Arc::new(Publisher::new(Arc::clone(&settings)))).collect();
    let queue = Arc::new(tokio::sync::Mutex::new(events.into_iter().collect::<std::collections::VecDeque<_>>()));
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for publisher in publishers {
        let queue = Arc::clone(&queue);
        let retries = Arc::clone(&retries);
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(event) = queue.lock().await.pop_front() else { break };
                while publisher.publish(&event).await.is_err() {
                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            publisher.close().await;
        }));
    }
    for task in tasks {
        task.await.expect("publisher task");
    }
    retries.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn the_node_serves_and_answers_rabbitmqctl() {
    let node = node();
    assert!(std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok());
    let output = node.control(&["list_queues", "name"]).expect("rabbitmqctl");
    assert!(output.status.success());
}
