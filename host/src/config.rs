//! The agent's configuration: built-in defaults, overridden by an optional TOML file
//! (`--config FILE`, else `/etc/zerostep/zerostep.toml` when it exists), overridden by flags.
//! Every key is optional; `zerostep agent` with no file and no flag is the intended setup.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::export::{Compression, EnvSettings, OtlpConfig, Protocol, TlsSettings};

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

/// OTLP export. Each key overrides its `OTEL_EXPORTER_OTLP_*` variable; headers are merged
/// (these win for the same name).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSection {
    /// e.g. `http://collector:4318` (OTLP/HTTP posts to `/v1/traces` under it) or
    /// `https://collector:4317` with `protocol = "grpc"`.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (the default, as in the OpenTelemetry SDKs).
    pub protocol: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// `gzip` (the default) or `none`.
    pub compression: Option<String>,
    pub timeout_ms: Option<u64>,
    /// PEM CA certificates that sign the receiver's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// The name to check the receiver's certificate against, when not the endpoint's host.
    pub server_name: Option<String>,
    /// Spans held while the receiver is slow or down (oldest dropped beyond it).
    pub queue_spans: Option<usize>,
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
    pub otlp_protocol: Option<String>,
}

/// Everything the agent runs with, resolved.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub sensors_dir: PathBuf,
    /// OTLP export, when an endpoint is set by a flag, the file or the environment.
    pub otlp: Option<OtlpConfig>,
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
    /// The configuration from flags, the file and the process environment.
    pub fn load(o: &Overrides) -> Result<AgentConfig, ConfigError> {
        Self::load_with_env(o, |k| std::env::var(k).ok())
    }

    /// As `load`, with the `OTEL_EXPORTER_OTLP_*` variables read through `env`.
    pub fn load_with_env(
        o: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
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
        let otlp = otlp_config(o, file.otlp, env).map_err(invalid)?;
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
            otlp,
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

/// Flags over the file over the environment over the defaults. `None`: no endpoint anywhere, no
/// export (the environment is not even checked then).
fn otlp_config(
    o: &Overrides,
    file: OtlpSection,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpConfig>, String> {
    let given = o.otlp_endpoint.clone().or(file.endpoint);
    let env_names = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ];
    let env_has_endpoint = env_names
        .iter()
        .any(|k| env(k).is_some_and(|v| !v.trim().is_empty()));
    if given.is_none() && !env_has_endpoint {
        return Ok(None);
    }
    let e = EnvSettings::read(&env).map_err(|e| e.to_string())?;
    let (endpoint, exact_path) = match given {
        Some(endpoint) => (endpoint, false),
        None => match e.endpoint {
            Some(endpoint) => (endpoint, e.endpoint_exact),
            None => return Ok(None),
        },
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(format!(
            "the OTLP endpoint must be an http:// or https:// URL, got {endpoint:?}"
        ));
    }
    let mut c = OtlpConfig::new(endpoint);
    c.exact_path = exact_path;
    let text = |what: &str, e: crate::export::ExportError| format!("otlp.{what}: {e}");
    c.protocol = match o.otlp_protocol.as_deref().or(file.protocol.as_deref()) {
        Some(p) => Protocol::parse(p).map_err(|e| text("protocol", e))?,
        None => e.protocol.unwrap_or_default(),
    };
    c.compression = match file.compression.as_deref() {
        Some(v) => Compression::parse(v).map_err(|e| text("compression", e))?,
        None => e.compression.unwrap_or_default(),
    };
    if let Some(ms) = file.timeout_ms {
        if ms == 0 {
            return Err("otlp.timeout_ms must be positive".into());
        }
        c.timeout = Duration::from_millis(ms);
    } else if let Some(t) = e.timeout {
        c.timeout = t;
    }
    if let Some(n) = file.queue_spans {
        c.queue_spans = n;
    }
    // The file's headers replace the environment's of the same name (names are case-blind).
    let mut headers = e.headers;
    for (k, v) in file.headers {
        headers.retain(|(ek, _)| !ek.eq_ignore_ascii_case(&k));
        headers.push((k, v));
    }
    c.headers = headers;
    c.tls = TlsSettings {
        ca_file: file.ca_file.or(e.ca_file),
        client_cert_file: file.client_cert_file.or(e.client_cert_file),
        client_key_file: file.client_key_file.or(e.client_key_file),
        server_name: file.server_name,
    };
    Ok(Some(c))
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
        load_env(text, o, &[])
    }

    /// With exactly these environment variables (not the test process's).
    fn load_env(
        text: &str,
        o: Overrides,
        vars: &[(&str, &str)],
    ) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z.toml");
        std::fs::write(&p, text).unwrap();
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AgentConfig::load_with_env(
            &Overrides {
                config: Some(p),
                ..o
            },
            |k| vars.get(k).cloned(),
        )
    }

    #[test]
    fn otlp_from_the_environment_alone() {
        let c = load_env(
            "",
            Overrides::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=k1"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ],
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(o.endpoint, "https://collector:4317");
        assert_eq!(o.protocol, Protocol::Grpc);
        assert_eq!(o.traces_url().unwrap(), "https://collector:4317");
        assert_eq!(o.headers, vec![("api-key".into(), "k1".into())]);
        assert_eq!(o.tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(o.compression, Compression::None);
        assert_eq!(o.timeout, Duration::from_millis(2500));

        // OTLP/HTTP: the generic endpoint is a base, the traces one is used as-is.
        let url = |vars: &[(&str, &str)]| {
            load_env("", Overrides::default(), vars)
                .unwrap()
                .otlp
                .unwrap()
                .traces_url()
                .unwrap()
        };
        assert_eq!(
            url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/base/")]),
            "http://c:4318/base/v1/traces"
        );
        assert_eq!(
            url(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/ingest")
            ]),
            "http://t:4318/ingest"
        );
    }

    #[test]
    fn file_and_flags_override_the_environment() {
        let env = [
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/x"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "API-Key=env,x-env=1"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/env/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/env/c.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/env/c.key"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ];
        let file = "[otlp]\nendpoint = \"https://file:4318\"\nprotocol = \"http/protobuf\"\n\
                    headers = { api-key = \"file\" }\nca_file = \"/file/ca.pem\"\n\
                    compression = \"gzip\"\ntimeout_ms = 700\nserver_name = \"collector.internal\"\n";
        let o = load_env(file, Overrides::default(), &env)
            .unwrap()
            .otlp
            .unwrap();
        // The file's endpoint is a base like the generic variable.
        assert_eq!(o.traces_url().unwrap(), "https://file:4318/v1/traces");
        assert_eq!(o.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            o.headers,
            vec![
                ("x-env".into(), "1".into()),
                ("api-key".into(), "file".into())
            ]
        );
        assert_eq!(o.tls.ca_file, Some(PathBuf::from("/file/ca.pem")));
        assert_eq!(o.tls.client_cert_file, Some(PathBuf::from("/env/c.pem")));
        assert_eq!(o.tls.client_key_file, Some(PathBuf::from("/env/c.key")));
        assert_eq!(o.tls.server_name.as_deref(), Some("collector.internal"));
        assert_eq!(o.compression, Compression::Gzip);
        assert_eq!(o.timeout, Duration::from_millis(700));

        let flags = Overrides {
            otlp_endpoint: Some("https://flag:4317".into()),
            otlp_protocol: Some("grpc".into()),
            ..Default::default()
        };
        let o = load_env(file, flags, &env).unwrap().otlp.unwrap();
        assert_eq!(o.traces_url().unwrap(), "https://flag:4317");
        assert_eq!(o.protocol, Protocol::Grpc);

        // No endpoint anywhere: no export, and the other variables are not even looked at.
        let c = load_env(
            "",
            Overrides::default(),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")],
        )
        .unwrap();
        assert!(c.otlp.is_none());
        let e = load_env(
            "",
            Overrides::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
        let e = load_text(
            "[otlp]\nendpoint = \"http://c\"\nprotocol = \"udp\"\n",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("otlp.protocol"), "{e}");
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
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://c:4318");
        assert_eq!(otlp.headers, vec![("x-key".into(), "v".into())]);
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
