//! The agent's configuration: built-in defaults, overridden by an optional TOML file
//! (`--config FILE`, else `/etc/zerostep/zerostep.toml` when it exists), overridden by flags.
//! Every key is optional; `zerostep agent` with no file and no flag is the intended setup.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG_FILE: &str = "/etc/zerostep/zerostep.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7787";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/zerostep";
pub const DEFAULT_SENSORS_DIR: &str = "/var/lib/zerostep/sensors";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

/// The file's shape. Unknown keys are an error, so a typo does not silently do nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub sensors_dir: Option<PathBuf>,
    #[serde(default)]
    pub otlp: OtlpSection,
    #[serde(default)]
    pub exclude: ExcludeSection,
    #[serde(default)]
    pub scope: ScopeSection,
    #[serde(default)]
    pub sampling: SamplingSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub discovery: DiscoverySection,
    #[serde(default)]
    pub injection: InjectionSection,
    #[serde(default)]
    pub api: ApiSection,
}

/// Who may use the HTTP API and UI. State-changing routes always need the token (or a UI session
/// made from it); these keys only open the read-only ones.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Read-only routes and the UI answer without the token. Only allowed with a loopback listen
    /// address (any local user can then read traces: URLs, SQL, headers).
    #[serde(default)]
    pub open_reads_on_loopback: bool,
    /// Host names (besides IP literals and `localhost`) the `Host` header may carry, e.g. the
    /// name a reverse proxy forwards. Anything else is refused (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSection {
    /// e.g. `http://collector:4318` (the exporter posts to `/v1/traces`).
    pub endpoint: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ExcludeSection {
    /// Service names (as `zerostep ps` shows them) never injected.
    #[serde(default)]
    pub services: Vec<String>,
    /// Users (names or numeric uids) whose processes are never injected.
    #[serde(default)]
    pub users: Vec<String>,
}

/// Limits the agent to part of the host. Empty (the default): every process.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ScopeSection {
    /// Only processes descending from one of these pids (e.g. a supervisor, or a test harness)
    /// are considered at all.
    #[serde(default)]
    pub descendants_of: Vec<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSection {
    /// Fraction of new traces recorded, 0.0–1.0 (incoming sampled parents are always followed).
    pub rate: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub retention_hours: Option<u64>,
    pub max_size_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    pub rescan_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectionSection {
    pub max_concurrent: Option<usize>,
}

/// Flags given on the command line (each overrides the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub sensors_dir: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
}

/// Everything the agent runs with, resolved.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub sensors_dir: PathBuf,
    pub otlp_endpoint: Option<String>,
    pub otlp_headers: Vec<(String, String)>,
    pub exclude: ExcludeSection,
    pub scope: ScopeSection,
    pub sample_rate: f64,
    pub retention: Duration,
    pub max_store_bytes: u64,
    pub rescan: Duration,
    pub max_concurrent_injections: usize,
    pub api: ApiSection,
}

impl AgentConfig {
    pub fn load(o: &Overrides) -> Result<AgentConfig, ConfigError> {
        let (source, file) = match &o.config {
            Some(p) => (Some(p.clone()), read(p)?),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                (Some(p.clone()), read(&p)?)
            }
            None => (None, FileConfig::default()),
        };
        let shown = source.clone().unwrap_or_else(|| "defaults".into());
        let invalid = |m: String| ConfigError::Invalid(shown.clone(), m);
        let sample_rate = file.sampling.rate.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_rate) {
            return Err(invalid(format!(
                "sampling.rate must be within 0.0–1.0, got {sample_rate}"
            )));
        }
        let state_dir = o
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let default_listen: SocketAddr = DEFAULT_LISTEN
            .parse()
            .map_err(|e| invalid(format!("{e}")))?;
        let otlp_endpoint = o.otlp_endpoint.clone().or(file.otlp.endpoint);
        if let Some(e) = &otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(format!(
                    "the OTLP endpoint must be an http:// or https:// URL, got {e:?}"
                )));
            }
        }
        let listen = o.listen.or(file.listen).unwrap_or(default_listen);
        if file.api.open_reads_on_loopback && !listen.ip().is_loopback() {
            return Err(invalid(format!(
                "api.open_reads_on_loopback needs a loopback listen address, got {listen}"
            )));
        }
        Ok(AgentConfig {
            source,
            listen,
            sensors_dir: o
                .sensors_dir
                .clone()
                .or(file.sensors_dir)
                .unwrap_or_else(|| DEFAULT_SENSORS_DIR.into()),
            state_dir,
            otlp_endpoint,
            otlp_headers: file.otlp.headers.into_iter().collect(),
            exclude: file.exclude,
            scope: file.scope,
            sample_rate,
            retention: Duration::from_secs(3600 * file.store.retention_hours.unwrap_or(24)),
            max_store_bytes: file.store.max_size_mb.unwrap_or(1024) << 20,
            rescan: Duration::from_secs(file.discovery.rescan_secs.unwrap_or(5).max(1)),
            max_concurrent_injections: file.injection.max_concurrent.unwrap_or(4).max(1),
            api: file.api,
        })
    }

    /// The numeric uids of `exclude.users` (names resolved through the passwd database).
    pub fn excluded_uids(&self) -> Vec<u32> {
        self.exclude
            .users
            .iter()
            .filter_map(|u| {
                u.parse::<u32>().ok().or_else(|| {
                    nix::unistd::User::from_name(u)
                        .ok()
                        .flatten()
                        .map(|u| u.uid.as_raw())
                })
            })
            .collect()
    }
}

fn read(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, o: Overrides) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z.toml");
        std::fs::write(&p, text).unwrap();
        AgentConfig::load(&Overrides {
            config: Some(p),
            ..o
        })
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let c = load_text(
            "listen = \"127.0.0.1:9999\"\nstate_dir = \"/tmp/s\"\n[otlp]\nendpoint = \"http://c:4318\"\nheaders = { x-key = \"v\" }\n[exclude]\nservices = [\"billing\"]\n[sampling]\nrate = 0.5\n",
            Overrides {
                state_dir: Some("/tmp/flag".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/flag"));
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://c:4318"));
        assert_eq!(c.otlp_headers, vec![("x-key".into(), "v".into())]);
        assert_eq!(c.exclude.services, vec!["billing".to_string()]);
        assert_eq!(c.sample_rate, 0.5);
        assert_eq!(c.sensors_dir, PathBuf::from(DEFAULT_SENSORS_DIR));
    }

    #[test]
    fn typos_and_bad_values_are_clear_errors() {
        let e = load_text("listne = \"x\"\n", Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
        let e = load_text("[sampling]\nrate = 2.0\n", Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("sampling.rate"), "{e}");
        let e = load_text(
            "[otlp]\nendpoint = \"collector:4318\"\n",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let e = AgentConfig::load(&Overrides {
            config: Some("/nonexistent/z.toml".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/z.toml"), "{e}");
        let e = load_text(
            "listen = \"0.0.0.0:7787\"\n[api]\nopen_reads_on_loopback = true\n",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let c = load_text(
            "[api]\nopen_reads_on_loopback = true\nallowed_hosts = [\"zs.internal\"]\n",
            Overrides::default(),
        )
        .unwrap();
        assert!(c.api.open_reads_on_loopback);
        assert_eq!(c.api.allowed_hosts, vec!["zs.internal".to_string()]);
    }
}
