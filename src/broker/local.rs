//! A private RabbitMQ node, for tests, benchmarks and `onair demo`; never for production.
//!
//! It runs Debian's `rabbitmq-server` without systemd: its own node name, free ports, a private
//! data and log directory, a configuration file of its own. A watcher shell stops the node when
//! the process that started it exits, so that no node outlives its test run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the server's commands.
const SBIN: &str = "/usr/sbin";

/// Why a node cannot be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rabbitmq-server is not installed (apt-get install -y rabbitmq-server)")]
    NotInstalled,
    #[error("cannot prepare the node's directory {path}: {reason}")]
    Directory { path: String, reason: String },
    #[error("the RabbitMQ node did not start within {seconds} s; last lines of its log:\n{log}")]
    Start { seconds: u64, log: String },
    #[error("rabbitmqctl {command} failed: {reason}")]
    Control { command: String, reason: String },
}

/// A running private node.
#[derive(Debug)]
pub struct LocalNode {
    /// `onair-<something>@localhost`.
    pub name: String,
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    /// Data and logs.
    pub directory: PathBuf,
    environment: Vec<(String, String)>,
}

impl LocalNode {
    /// Whether `rabbitmq-server` is installed.
    pub fn installed() -> bool {
        Path::new(SBIN).join("rabbitmq-server").exists()
    }

    /// Starts a node in `directory` and waits until it is ready (at most `timeout`).
    pub fn start(directory: &Path, timeout: Duration) -> Result<Self, Error> {
        if !Self::installed() {
            return Err(Error::NotInstalled);
        }
        let fail = |reason: String| Error::Directory { path: directory.display().to_string(), reason };
        let port = free_port().map_err(|error| fail(error.to_string()))?;
        let distribution = free_port().map_err(|error| fail(error.to_string()))?;
        let name = format!("onair-{}-{port}@localhost", std::process::id());
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(directory.join(sub)).map_err(|error| fail(error.to_string()))?;
        }
        std::fs::write(directory.join("enabled_plugins"), "[].\n").map_err(|error| fail(error.to_string()))?;
        std::fs::write(
            directory.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{port}\nheartbeat = 10\nconsumer_timeout = 900000\nloopback_users = none\n"
            ),
        )
        .map_err(|error| fail(error.to_string()))?;
        // The server drops to the rabbitmq user: it must be able to write here.
        let _ = Command::new("chmod").args(["-R", "a+rwX"]).arg(directory).status();
        let environment = vec![
            ("RABBITMQ_NODENAME".to_string(), name.clone()),
            ("RABBITMQ_NODE_PORT".into(), port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), distribution.to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), directory.join("mnesia").display().to_string()),
            ("RABBITMQ_LOG_BASE".into(), directory.join("log").display().to_string()),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), directory.join("enabled_plugins").display().to_string()),
            ("RABBITMQ_CONFIG_FILE".into(), directory.join("rabbitmq").display().to_string()),
        ];
        let node = Self { name, port, directory: directory.to_path_buf(), environment };
        node.launch()?;
        node.wait_ready(timeout)?;
        Ok(node)
    }

    /// `amqp://127.0.0.1:<port>/%2f` (the default guest user).
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl -n <node> <args>`.
    pub fn control(&self, args: &[&str]) -> Result<Output, Error> {
        let command = args.join(" ");
        let output = Command::new(Path::new(SBIN).join("rabbitmqctl"))
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .envs(self.environment.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .output()
            .map_err(|error| Error::Control { command: command.clone(), reason: error.to_string() })?;
        if output.status.success() {
            Ok(output)
        } else {
            let reason =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            Err(Error::Control { command, reason: reason.trim().chars().take(2000).collect() })
        }
    }

    /// Stops the RabbitMQ application, keeping the node (connections drop).
    pub fn stop_app(&self) -> Result<(), Error> {
        self.control(&["stop_app"]).map(drop)
    }

    /// Starts the application again and waits until it serves.
    pub fn start_app(&self, timeout: Duration) -> Result<(), Error> {
        self.control(&["start_app"])?;
        self.wait_ready(timeout)
    }

    /// Kills the node's Erlang VM with SIGKILL (a broker crash).
    pub fn kill(&self) -> Result<(), Error> {
        let output = self.control(&["eval", "os:getpid()."])?;
        let pid = String::from_utf8_lossy(&output.stdout).trim().trim_matches('"').to_string();
        let status = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .map_err(|error| Error::Control { command: "kill".into(), reason: error.to_string() })?;
        if !status.success() {
            return Err(Error::Control { command: format!("kill -9 {pid}"), reason: "kill failed".into() });
        }
        // Wait until the port is closed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts the node again after `kill`, with its data, and waits until it serves.
    pub fn restart(&self, timeout: Duration) -> Result<(), Error> {
        self.launch()?;
        self.wait_ready(timeout)
    }

    /// Runs the server under a watcher shell that stops it once our process is gone.
    fn launch(&self) -> Result<(), Error> {
        let script = format!(
            "{SBIN}/rabbitmq-server >> '{console}' 2>&1 & \
             while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
             {SBIN}/rabbitmqctl -n '{name}' stop > /dev/null 2>&1",
            console = self.directory.join("log").join("console.log").display(),
            parent = std::process::id(),
            name = self.name,
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .envs(self.environment.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|error| Error::Control { command: "rabbitmq-server".into(), reason: error.to_string() })
    }

    /// Stops the node.
    pub fn stop(&self) {
        let _ = self.control(&["stop"]);
    }

    /// The last lines of the node's logs.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        let log = self.directory.join("log");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&log)
            .map(|entries| entries.filter_map(Result::ok).map(|entry| entry.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let content = std::fs::read_to_string(&file).unwrap_or_default();
            let tail: Vec<&str> = content.lines().rev().take(lines).collect();
            text.push_str(&format!("== {}\n", file.display()));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            let serving = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if serving && self.control(&["await_startup", "--timeout", "10"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(Error::Start { seconds: timeout.as_secs(), log: self.log_tail(40) })
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
