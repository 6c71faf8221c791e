//! `onair run` under a fake service manager: a `NOTIFY_SOCKET` datagram socket this test reads.
//! `READY=1` comes once the consumer is registered; `WATCHDOG=1` pings stop while the consumer is
//! stuck (the store refuses every commit) and come back once it is not.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use onair::broker::{self, Publisher};
use onair::event::Event;

use crate::broker::{EXCLUSIVE, daemon_config, onair, terminate};
use crate::helpers::{TestEmulator, emulator_settings};
use crate::rabbit;

/// Messages from the daemon, each with when it came.
pub(crate) struct Manager {
    socket: UnixDatagram,
    started: Instant,
    log: Vec<(Duration, String)>,
}

impl Manager {
    pub(crate) fn bind(path: &std::path::Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Self { socket, started: Instant::now(), log: Vec::new() }
    }

    /// Reads for `duration`; returns what came.
    pub(crate) fn read_for(&mut self, duration: Duration) -> Vec<String> {
        let until = Instant::now() + duration;
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(length) = self.socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..length]).to_string();
                self.log.push((self.started.elapsed(), message.clone()));
                received.push(message);
            }
        }
        received
    }

    /// Reads until a message contains `needle` (within `limit`).
    pub(crate) fn read_until(&mut self, needle: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        let mut buffer = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(length) = self.socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..length]).to_string();
                self.log.push((self.started.elapsed(), message.clone()));
                if message.contains(needle) {
                    return message;
                }
            }
        }
        panic!("no {needle:?} within {limit:?}; received {:?}", self.log);
    }
}

pub(crate) fn pings(messages: &[String]) -> usize {
    messages.iter().filter(|message| message.lines().any(|line| line == "WATCHDOG=1")).count()
}

async fn consumers(settings: &broker::Settings) -> u32 {
    let connection = broker::connect(settings, "systemd-test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            settings.queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;
    queue.consumer_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_consumer_and_watchdog_only_while_events_commit() {
    let _exclusive = EXCLUSIVE.lock().await;
    let emulator = TestEmulator::start(emulator_settings()).await;
    let settings = rabbit::settings("systemd");
    let directory = tempfile::tempdir().unwrap();
    let config = daemon_config(directory.path(), &emulator, &settings, "[broadcasts.news]\n");
    let socket_path = directory.path().join("notify.sock");
    let mut manager = Manager::bind(&socket_path);
    let log = directory.path().join("onair.log");
    let mut child = onair(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("ONAIR__HEALTH__STALL_AFTER", "2s")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    let ready = tokio::task::block_in_place(|| manager.read_until("READY=1", Duration::from_secs(60)));
    assert!(ready.lines().any(|line| line == "STATUS=running"), "{ready}");
    assert_eq!(consumers(&settings).await, 1, "READY=1 only once the consumer is registered");
    let healthy = tokio::task::block_in_place(|| manager.read_for(Duration::from_secs(3)));
    let healthy_pings = pings(&healthy);
    assert!((4..=8).contains(&healthy_pings), "a ping every 0.5 s: {healthy:?}");

    // The store refuses every write: deliveries stay in hand, nothing commits.
    let lock = rusqlite::Connection::open(directory.path().join("onair.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let publisher = Publisher::new(Arc::new(settings.clone()));
    let now = onair::clock::Clock::now(&onair::clock::SystemClock);
    let event = Event::new("stuck-1", "onair.command.pause", "news", serde_json::json!({}), now);
    publisher.publish(&event).await.unwrap();
    let stalled = tokio::task::block_in_place(|| manager.read_until("STATUS=stalled", Duration::from_secs(20)));
    let silent = tokio::task::block_in_place(|| manager.read_for(Duration::from_secs(4)));
    assert_eq!(pings(&silent), 0, "no ping while stuck: {silent:?}");

    // Writable again: the event commits and the pings resume.
    lock.execute_batch("ROLLBACK;").unwrap();
    drop(lock);
    let resumed_at = Instant::now();
    tokio::task::block_in_place(|| manager.read_until("WATCHDOG=1", Duration::from_secs(30)));
    let resumed_after = resumed_at.elapsed();
    let after = tokio::task::block_in_place(|| manager.read_for(Duration::from_secs(2)));
    assert!(pings(&after) >= 3, "{after:?}");
    println!(
        "systemd: READY=1 with 1 consumer registered; {healthy_pings} pings in 3 s while healthy; {stalled:?} then 0 pings in 4 s while the store refused commits; pings again {resumed_after:.1?} after the store was released"
    );

    let (code, _) = terminate(&mut child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let stopping = manager.log.iter().any(|(_, message)| message.contains("STOPPING=1"));
    let rest = tokio::task::block_in_place(|| manager.read_for(Duration::from_millis(300)));
    assert!(stopping || rest.iter().any(|message| message.contains("STOPPING=1")), "{:?}", manager.log);
    publisher.close().await;
}
