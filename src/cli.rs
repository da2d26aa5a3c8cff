//! The command line: flags are parsed by clap into per-command argument structs, validated
//! into plain config, then handed to the command's module.

// `println!`, `print!` and `eprintln!` for `cli/` (and only there: macros are scoped by text,
// so the modules below see these and no other module does), shadowing std's: a closed stdout
// or stderr (`emulate run IMAGE 2>&1 | head`) is ignored instead of panicking, since a panic
// would skip the shutdown that removes the containers.
macro_rules! println {
    () => {
        $crate::cli::terminal::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::terminal::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cli::terminal::stdout(format_args!($($arg)*))
    };
}
macro_rules! eprintln {
    () => {
        $crate::cli::terminal::stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::terminal::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod access_flags;
pub mod auth;
pub mod control;
pub mod deploy;
pub mod documents;
pub mod logs;
pub mod revision_flags;
pub mod revisions;
pub mod run;
pub mod services;
pub mod smoke;
pub mod source_flags;
pub mod terminal;
pub mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run your container image locally as Google Cloud Run would run it.
#[derive(Debug, Parser)]
#[command(name = "emulate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an image (default: the built-in hello sample) as a Cloud Run service on localhost.
    Run(run::RunArgs),
    /// Deploy a new revision to the running emulator, as `gcloud run deploy`.
    Deploy(deploy::DeployArgs),
    /// Manage services of the running emulator, as `gcloud run services`.
    #[command(subcommand)]
    Services(services::ServicesCommand),
    /// Manage revisions of the running emulator, as `gcloud run revisions`.
    #[command(subcommand)]
    Revisions(revisions::RevisionsCommand),
    /// Smoke-test an image before `gcloud run deploy`: fails where Cloud Run would.
    /// Exit codes: 0 passed, 1 a check failed, 2 bad usage or input, 3 the service never
    /// became ready, 4 Docker unavailable, 130 interrupted.
    Smoke(smoke::SmokeArgs),
    /// Identity tokens for calling private services, as `gcloud auth`.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Read the running emulator's log (requests, containers' output, system lines), as
    /// `gcloud beta run services logs read`; --follow as `... logs tail`.
    Logs(logs::LogsArgs),
}

/// Exit codes, the same for every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done (for `run`: stopped cleanly after serving).
    Success = 0,
    /// Failed for another reason (port busy, Docker operation failed...).
    Failure = 1,
    /// Bad flags or input.
    Usage = 2,
    /// The revision never became ready: wrong platform, crashed, never listened on $PORT.
    NotReady = 3,
    /// The Docker engine could not be reached.
    DockerUnavailable = 4,
    /// Interrupted (Ctrl-C) before the service was ready.
    Interrupted = 130,
}

/// A bad flag value: which flag, and why.
pub(crate) fn invalid(flag: &str, message: impl Into<String>) -> crate::config::FieldError {
    crate::config::FieldError::new(flag, message)
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// The binary's entry point: parse, set up tracing and the async runtime, dispatch.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EMULATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(terminal::tracing_writer)
        .init();
    // One worker thread, as nginx runs one worker: the proxy's client task, instance
    // connection and timers then wake each other on the same thread. Two workers cost 20-30%
    // more CPU per proxied request here (cross-thread wake-ups: futex and IPI), and on a
    // developer's machine the other cores belong to the app under test. Blocking work goes to
    // `spawn_blocking`. (ARCHITECTURE.md, "Proxy cost".)
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let exit = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Deploy(args) => deploy::run(args).await,
            Command::Services(command) => services::run(command).await,
            Command::Revisions(command) => revisions::run(command).await,
            Command::Smoke(args) => smoke::run(args).await,
            Command::Auth(command) => auth::run(command).await,
            Command::Logs(args) => logs::run(args).await,
        }
    });
    // Tasks still running (log followers of removed containers) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    exit.into()
}
