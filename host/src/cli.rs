//! The command-line tree. Each command's work lives in the module it belongs to; this file only
//! parses and dispatches.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

pub use crate::config::DEFAULT_LISTEN;

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
    /// The Python processes the running agent sees, and whether each is traced.
    Ps {
        #[command(flatten)]
        agent: AgentAddr,
        /// Print the agent's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Recent traces from the running agent's store.
    Traces(crate::client::TracesArgs),
    /// Remove the tracer from live processes (they keep serving, untraced, until the agent
    /// restarts).
    Detach {
        #[command(flatten)]
        agent: AgentAddr,
        /// One process (and the workers that inherited the tracer from it).
        #[arg(long, conflicts_with = "service", required_unless_present = "service")]
        pid: Option<u32>,
        /// Every process of a service, as `zerostep ps` names it.
        #[arg(long)]
        service: Option<String>,
    },
    /// Print a link that opens the web UI logged in (reads the API token: run as root).
    Ui {
        #[command(flatten)]
        agent: AgentAddr,
    },
}

/// Where the running agent's API is, and its token (`crate::client::ApiClient`).
#[derive(Debug, Args, Clone, Default)]
pub struct AgentAddr {
    /// The agent's API address [default: the configuration's `listen`, else 127.0.0.1:7787].
    #[arg(long = "agent")]
    pub addr: Option<SocketAddr>,
    /// The agent's configuration, for its address and state directory [default:
    /// /etc/zerostep/zerostep.toml when it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The agent's API token file, readable by root only [default: STATE_DIR/api-token].
    #[arg(long, env = "ZEROSTEP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Every flag overrides the configuration file, which overrides the built-in defaults.
#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// TOML configuration (default: /etc/zerostep/zerostep.toml when it exists; none is needed).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of sensor components (`*.wasm`); watched for new, replaced and removed files
    /// [default: /var/lib/zerostep/sensors].
    #[arg(long)]
    pub sensors_dir: Option<PathBuf>,
    /// Directory for the agent's own state: store, compiled-sensor cache [default: /var/lib/zerostep].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Address of the HTTP API and UI [default: 127.0.0.1:7787].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Also export spans as OTLP to this URL (e.g. http://collector:4318, or
    /// https://collector:4317 with --otlp-protocol grpc) [default: OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` [default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf].
    #[arg(long)]
    pub otlp_protocol: Option<String>,
}

impl AgentArgs {
    pub fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            config: self.config.clone(),
            listen: self.listen,
            state_dir: self.state_dir.clone(),
            sensors_dir: self.sensors_dir.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_protocol: self.otlp_protocol.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SensorsCommand {
    /// Run the canary on a sensor file without an agent: prints name, version and contract version,
    /// or exits non-zero with the reason it would be refused.
    Check {
        /// The sensor component.
        file: PathBuf,
    },
    /// Return a sensor of the running agent to the version that served before the current one,
    /// in the agent and in every process it traces (its bundles are replaced in place).
    Rollback {
        /// The sensor's name (`zerostep sensors list`).
        name: String,
        #[command(flatten)]
        agent: AgentAddr,
    },
    /// List the sensors of the running agent (asks its API).
    List {
        #[command(flatten)]
        agent: AgentAddr,
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
    if !matches!(cli.command, Command::Agent(_) | Command::Inject(_)) {
        // Commands that print behave like other Unix tools when piped into `head`: they end
        // quietly on a closed pipe instead of panicking. The agent keeps SIGPIPE ignored.
        // SAFETY: setting a signal disposition before any thread of ours writes to a pipe.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Agent(args) => {
            let cfg = crate::config::AgentConfig::load(&args.overrides())?;
            crate::agent::run(cfg).map(|()| ExitCode::SUCCESS)
        }
        Command::Ps { agent, json } => crate::client::ps(&agent.client()?, json),
        Command::Traces(args) => crate::client::traces(&args),
        Command::Detach {
            agent,
            pid,
            service,
        } => crate::client::detach(&agent.client()?, pid, service),
        Command::Ui { agent } => crate::client::ui_link(&agent.client()?),
        Command::Sensors(SensorsCommand::Check { file }) => crate::sensors::cli::check(&file),
        Command::Sensors(SensorsCommand::List { agent, json }) => {
            crate::sensors::cli::list(&agent.client()?, json)
        }
        Command::Sensors(SensorsCommand::Rollback { name, agent }) => {
            crate::sensors::cli::rollback(&agent.client()?, &name)
        }
        Command::Inject(args) => crate::inject::cli::run(args),
    }
}
