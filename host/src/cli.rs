//! The command-line tree. Each command's work lives in the module it belongs to; this file only
//! parses and dispatches.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7787";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/zerostep";
pub const DEFAULT_SENSORS_DIR: &str = "/var/lib/zerostep/sensors";

/// zerostep traces every gunicorn and uWSGI process on this host: no change to the services.
#[derive(Debug, Parser)]
#[command(name = "zerostep", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,zerostep=debug`); also `ZEROSTEP_LOG`.
    #[arg(long, global = true, env = "ZEROSTEP_LOG")]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground: load and watch sensors, serve the API.
    Agent(AgentArgs),
    /// Work with sensors (WebAssembly components).
    #[command(subcommand)]
    Sensors(SensorsCommand),
    /// Run Python code inside a running CPython process (no restart, no gdb).
    Inject(crate::inject::cli::InjectArgs),
}

#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// Directory of sensor components (`*.wasm`); watched for new, replaced and removed files.
    #[arg(long, default_value = DEFAULT_SENSORS_DIR)]
    pub sensors_dir: PathBuf,
    /// Directory for the agent's own state (compiled-sensor cache, store).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Address of the HTTP API and UI.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum SensorsCommand {
    /// Run the canary on a sensor file without an agent: prints name, version and contract version,
    /// or exits non-zero with the reason it would be refused.
    Check {
        /// The sensor component.
        file: PathBuf,
    },
    /// List the sensors of the running agent (asks its API).
    List {
        /// The agent's API address.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        agent: SocketAddr,
        /// Print the agent's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

pub fn init_logging(filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only on a terminal, not in journald or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if matches!(cli.command, Command::Sensors(_)) {
        // Commands that print behave like other Unix tools when piped into `head`: they end
        // quietly on a closed pipe instead of panicking. The agent keeps SIGPIPE ignored.
        // SAFETY: setting a signal disposition before any thread of ours writes to a pipe.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Agent(args) => crate::agent::run(args).map(|()| ExitCode::SUCCESS),
        Command::Sensors(SensorsCommand::Check { file }) => crate::sensors::cli::check(&file),
        Command::Sensors(SensorsCommand::List { agent, json }) => {
            crate::sensors::cli::list(agent, json)
        }
        Command::Inject(args) => crate::inject::cli::run(args),
    }
}
