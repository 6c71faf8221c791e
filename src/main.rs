//! The `onair` binary: parse the command line, set up logging and settings, run the command,
//! turn the outcome into an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod allocator;

use onair::cli::Cli;
use onair::{config, shutdown, telemetry};

fn main() -> ExitCode {
    onair::daemon::after_start(allocator::release_free_memory);
    let cli = Cli::parse();
    let source = config::Source::from_process(cli.config.clone());
    let filter = source.var("RUST_LOG").map(str::to_string);
    // The demo prints its own story on standard output; keep the logs to warnings unless asked.
    let filter = filter.or_else(|| matches!(cli.command, onair::cli::Command::Demo(_)).then(|| "warn".to_string()));
    if let Err(error) = telemetry::init(cli.log_format, filter.as_deref()) {
        eprintln!("error: cannot set up logging: {error}");
        return ExitCode::FAILURE;
    }
    let settings = match onair::cli::load(&source) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(config::EXIT_CODE as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli, settings));
    // Tasks still running after a forced stop are abandoned here, not awaited.
    runtime.shutdown_background();
    code
}

/// Runs the command under the shutdown root: on SIGTERM/SIGINT it gets the grace period to stop.
async fn run(cli: Cli, settings: onair::cli::Loaded) -> ExitCode {
    let root = CancellationToken::new();
    shutdown::cancel_on_signal(root.clone());
    let tracker = TaskTracker::new();
    let grace = settings.daemon.shutdown.grace;
    let execute = onair::cli::execute(cli.command, settings, root.child_token());
    let mut command = tracker.spawn(execute.instrument(tracing::info_span!("command")));
    let joined = tokio::select! {
        joined = &mut command => joined,
        _ = root.cancelled() => match shutdown::drain(&root, &tracker, grace).await {
            shutdown::Drain::Clean => command.await,
            shutdown::Drain::Forced => return ExitCode::FAILURE,
        },
    };
    match joined {
        Ok(Ok(code)) => code,
        Ok(Err(error)) => {
            // anyhow prints the chain of causes with `{:#}`, one after the other.
            let error = anyhow::Error::from(error);
            tracing::error!(error = %format!("{error:#}"), "Command failed.");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: the command panicked: {error}");
            ExitCode::FAILURE
        }
    }
}
