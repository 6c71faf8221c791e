//! The `onair` binary: parse the command line, set up logging and settings, run the command,
//! turn the outcome into an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use onair::cli::Cli;
use onair::{config, shutdown, telemetry};

fn main() -> ExitCode {
    onair::daemon::after_start(release_free_memory);
    let cli = Cli::parse();
    let source = config::Source::from_process(cli.config.clone());
    limit_allocator_arenas(&source);
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

/// Gives the memory glibc's allocator holds free back to the system. Start-up with many broadcasts
/// parses the config file and reads the store into short-lived trees; once they are freed, glibc
/// keeps their pages (freed chunks between live ones are not returned by `free`): 100,000
/// broadcasts left 1.09 GB mapped for 0.65 GB in use. `malloc_trim(0)` releases every free page.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own free lists under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes glibc's allocator use two arenas instead of up to eight per core, unless the environment
/// sets the arena count itself (`GLIBC_TUNABLES=glibc.malloc.arena_max=N`). Start-up with many
/// broadcasts allocates on several threads (the config parse, the store's writer, the runtime's
/// workers), and each arena keeps its own free pages between chunks that stay: with 100,000
/// scheduled broadcasts the process was at 556 MB when ready with the default, 443 MB with two
/// arenas (and ready 2.5 s sooner), 334 MB with one. Two cost no throughput measurably in the
/// benchmark (`docs/performance.md`); one serialises every allocation of the busy threads.
/// Called before any thread starts.
fn limit_allocator_arenas(source: &config::Source) {
    if source.var("GLIBC_TUNABLES").is_some_and(|tunables| tunables.contains("arena_max")) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes glibc's own allocator settings; no
    // other thread is allocating yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
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
