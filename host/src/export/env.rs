//! The standard `OTEL_EXPORTER_OTLP_*` environment, read the way the OpenTelemetry SDKs read it,
//! so that a fleet's existing settings configure the agent too. Each `TRACES_` form wins over the
//! generic one; an empty value counts as unset. The agent's config file and flags override what
//! is read here (see `config.rs`).
use std::path::PathBuf;
use std::time::Duration;

use super::config::{Compression, OtlpConfig, Protocol};
use super::ExportError;

const PREFIX: &str = "OTEL_EXPORTER_OTLP_";

/// What the environment says; `None`/empty where it says nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvSettings {
    pub endpoint: Option<String>,
    /// The endpoint came from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: it is used as-is, whereas
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is a base that OTLP/HTTP appends `/v1/traces` to.
    pub endpoint_exact: bool,
    pub protocol: Option<Protocol>,
    pub headers: Vec<(String, String)>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub compression: Option<Compression>,
    pub timeout: Option<Duration>,
}

impl EnvSettings {
    /// Reads the variables through `get` (the process environment in the agent, a map in tests).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<EnvSettings, ExportError> {
        // (value, name it came from), the signal-specific name first.
        let lookup = |key: &str| -> Option<(String, String)> {
            [format!("{PREFIX}TRACES_{key}"), format!("{PREFIX}{key}")]
                .into_iter()
                .find_map(|name| {
                    get(&name)
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                        .map(|v| (v, name))
                })
        };
        let err = |name: &str, e: ExportError| ExportError::Env(format!("{name}: {e}"));
        let mut out = EnvSettings::default();
        if let Some((v, name)) = lookup("ENDPOINT") {
            out.endpoint_exact = name.contains("_TRACES_");
            out.endpoint = Some(v);
        }
        if let Some((v, name)) = lookup("PROTOCOL") {
            out.protocol = Some(Protocol::parse(&v).map_err(|e| err(&name, e))?);
        }
        if let Some((v, name)) = lookup("HEADERS") {
            out.headers = OtlpConfig::parse_headers(&v).map_err(|e| err(&name, e))?;
        }
        out.ca_file = lookup("CERTIFICATE").map(|(v, _)| v.into());
        out.client_cert_file = lookup("CLIENT_CERTIFICATE").map(|(v, _)| v.into());
        out.client_key_file = lookup("CLIENT_KEY").map(|(v, _)| v.into());
        if let Some((v, name)) = lookup("COMPRESSION") {
            out.compression = Some(Compression::parse(&v).map_err(|e| err(&name, e))?);
        }
        if let Some((v, name)) = lookup("TIMEOUT") {
            // Milliseconds, per the spec.
            let ms: u64 = v.parse().map_err(|_| {
                ExportError::Env(format!("{name}: `{v}` is not a number of milliseconds"))
            })?;
            if ms == 0 {
                return Err(ExportError::Env(format!("{name}: must be positive")));
            }
            out.timeout = Some(Duration::from_millis(ms));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<EnvSettings, ExportError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EnvSettings::read(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_nothing() {
        assert_eq!(read(&[]).unwrap(), EnvSettings::default());
        assert_eq!(
            read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).unwrap(),
            EnvSettings::default()
        );
    }

    #[test]
    fn generic_forms() {
        let e = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=k1,x-org=a%2Cb"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/c.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/c.key"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap();
        assert_eq!(e.endpoint.as_deref(), Some("https://collector:4317"));
        assert!(!e.endpoint_exact);
        assert_eq!(e.protocol, Some(Protocol::Grpc));
        assert_eq!(
            e.headers,
            vec![
                ("api-key".to_string(), "k1".to_string()),
                ("x-org".to_string(), "a,b".to_string())
            ]
        );
        assert_eq!(e.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(e.client_cert_file, Some(PathBuf::from("/etc/c.pem")));
        assert_eq!(e.client_key_file, Some(PathBuf::from("/etc/c.key")));
        assert_eq!(e.compression, Some(Compression::None));
        assert_eq!(e.timeout, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn traces_forms_win() {
        let e = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/g.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/t.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/g.key"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/t.key"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/g.crt"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "/t.crt"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3000"),
        ])
        .unwrap();
        assert_eq!(e.endpoint.as_deref(), Some("http://traces:4318/custom"));
        assert!(e.endpoint_exact);
        assert_eq!(e.protocol, Some(Protocol::HttpProtobuf));
        assert_eq!(e.headers, vec![("b".to_string(), "2".to_string())]);
        assert_eq!(e.ca_file, Some(PathBuf::from("/t.pem")));
        assert_eq!(e.client_key_file, Some(PathBuf::from("/t.key")));
        assert_eq!(e.client_cert_file, Some(PathBuf::from("/t.crt")));
        assert_eq!(e.compression, Some(Compression::Gzip));
        assert_eq!(e.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0"),
        ] {
            let e = read(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }
}
