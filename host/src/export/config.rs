//! What the OTLP exporter is told: where to send and how (gRPC or HTTP, TLS), with which
//! headers, how much to hold, how to retry.
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::ExportError;

/// The signal path the OTLP/HTTP spec appends to a base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`).
const TRACES_PATH: &str = "/v1/traces";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
}

impl Compression {
    /// `gzip` or `none`, the values of `OTEL_EXPORTER_OTLP_COMPRESSION`.
    pub fn parse(text: &str) -> Result<Self, ExportError> {
        match text.trim() {
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            other => Err(ExportError::Config(format!(
                "compression `{other}`: expected gzip or none"
            ))),
        }
    }
}

/// The OTLP transport. The default is the OpenTelemetry SDKs' default (`http/protobuf`, per the
/// OTLP exporter spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    Grpc,
    #[default]
    HttpProtobuf,
}

impl Protocol {
    /// `grpc` or `http/protobuf`, the values of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn parse(text: &str) -> Result<Self, ExportError> {
        match text.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err(ExportError::Config(
                "protocol http/json is not supported; use grpc or http/protobuf".into(),
            )),
            other => Err(ExportError::Config(format!(
                "protocol `{other}`: expected grpc or http/protobuf"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// TLS settings for an `https://` endpoint. Without a CA file the platform's roots are trusted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// PEM file of the CA certificates that may sign the receiver's certificate (instead of the
    /// platform's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the receiver (mTLS); needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// The name the receiver's certificate is checked against and sent as SNI, when it is not the
    /// endpoint's host (e.g. an IP address endpoint, or a collector behind a load balancer).
    pub server_name: Option<String>,
}

impl TlsSettings {
    pub fn is_empty(&self) -> bool {
        self == &TlsSettings::default()
    }
}

/// Exponential backoff between attempts of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Each delay is scaled by a random factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
    /// A receiver's `Retry-After` (or gRPC `RetryInfo`) is honoured up to this long; beyond it we
    /// retry sooner.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            max_retry_after: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// `http(s)://host:port[/path]`. For HTTP `/v1/traces` is appended unless `exact_path` or the
    /// path already ends so; for gRPC only scheme, host and port count.
    pub endpoint: String,
    /// The endpoint is the full URL (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is): nothing appended.
    pub exact_path: bool,
    pub protocol: Protocol,
    /// Extra request headers (gRPC metadata), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// Per-request timeout (connect + send + response).
    pub timeout: Duration,
    /// Spans waiting to be sent; beyond it the oldest are dropped and counted.
    pub queue_spans: usize,
    /// Spans per request.
    pub max_batch_spans: usize,
    /// A partial batch waits at most this long before it is sent.
    pub flush_interval: Duration,
    pub compression: Compression,
    pub retry: RetryPolicy,
    pub tls: TlsSettings,
}

/// Where requests go, resolved from the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// HTTP: the full URL requests are posted to; gRPC: the origin (`scheme://host:port`).
    pub url: String,
}

impl OtlpConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            exact_path: false,
            protocol: Protocol::default(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            queue_spans: 100_000,
            max_batch_spans: 512,
            flush_interval: Duration::from_secs(1),
            compression: Compression::Gzip,
            retry: RetryPolicy::default(),
            tls: TlsSettings::default(),
        }
    }

    /// The URL requests go to: for HTTP the endpoint with `/v1/traces` appended unless it
    /// already ends so (or `exact_path`); for gRPC the endpoint's origin.
    pub fn traces_url(&self) -> Result<String, ExportError> {
        Ok(self.target()?.url)
    }

    pub(crate) fn target(&self) -> Result<Target, ExportError> {
        target(&self.endpoint, self.protocol, self.exact_path)
    }

    /// Headers in the `OTEL_EXPORTER_OTLP_HEADERS` form: `key1=value1,key2=value2`, values
    /// percent-decoded (the W3C baggage form the spec names).
    pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, ExportError> {
        text.split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| ExportError::Header(format!("`{pair}` is not key=value")))?;
                let value = percent_decode(v.trim())
                    .ok_or_else(|| ExportError::Header(format!("`{pair}`: bad %-escape")))?;
                Ok((k.trim().to_string(), value))
            })
            .collect()
    }

    pub(crate) fn validate(&self) -> Result<(), ExportError> {
        let target = self.target()?;
        if !target.tls && !self.tls.is_empty() {
            return Err(ExportError::Endpoint(format!(
                "`{}`: TLS settings (CA file, client certificate, server name) are given for a \
                 clear-text http:// endpoint; use https:// or remove them",
                self.endpoint
            )));
        }
        for (name, value) in &self.headers {
            let name = match self.protocol {
                // gRPC metadata keys are lowercase; HTTP/2 would refuse anything else.
                Protocol::Grpc => name.to_ascii_lowercase(),
                Protocol::HttpProtobuf => name.clone(),
            };
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ExportError::Header(format!("name `{name}`: {e}")))?;
            HeaderValue::from_str(value)
                .map_err(|e| ExportError::Header(format!("value of `{name}`: {e}")))?;
        }
        let bad = |what: &str| Err(ExportError::Config(what.to_string()));
        if self.queue_spans == 0 {
            return bad("queue_spans must be at least 1");
        }
        if self.max_batch_spans == 0 {
            return bad("max_batch_spans must be at least 1");
        }
        if self.timeout.is_zero() {
            return bad("timeout must be positive");
        }
        let r = &self.retry;
        if !(r.multiplier >= 1.0 && r.multiplier.is_finite()) {
            return bad("retry multiplier must be a finite number >= 1");
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            return bad("retry jitter must be within 0..=1");
        }
        if r.initial_backoff.is_zero() || r.max_backoff < r.initial_backoff {
            return bad("retry backoff: need 0 < initial <= max");
        }
        Ok(())
    }
}

fn target(endpoint: &str, protocol: Protocol, exact_path: bool) -> Result<Target, ExportError> {
    let bad = |why: &str| ExportError::Endpoint(format!("`{endpoint}`: {why}"));
    let uri: Uri = endpoint.trim().parse().map_err(|e| bad(&format!("{e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("expected http://host:port or https://host:port")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user info is not allowed (use headers)"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let scheme = if tls { "https" } else { "http" };
    let url = match protocol {
        Protocol::Grpc => {
            if !matches!(uri.path(), "" | "/") {
                return Err(bad("a gRPC endpoint has no path (the service is always \
                     opentelemetry.proto.collector.trace.v1.TraceService)"));
            }
            format!("{scheme}://{authority}")
        }
        Protocol::HttpProtobuf if exact_path => {
            let path = match uri.path() {
                "" => "/",
                p => p,
            };
            format!("{scheme}://{authority}{path}")
        }
        Protocol::HttpProtobuf => {
            let path = uri.path().trim_end_matches('/');
            if path.ends_with(TRACES_PATH) {
                format!("{scheme}://{authority}{path}")
            } else {
                format!("{scheme}://{authority}{path}{TRACES_PATH}")
            }
        }
    };
    Ok(Target {
        tls,
        host: host.to_string(),
        port,
        url,
    })
}

/// `%XX` escapes decoded; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_full_endpoints() {
        let url = |e: &str| target(e, Protocol::HttpProtobuf, false).unwrap().url;
        assert_eq!(url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(url("http://h:4318/v1/traces"), "http://h:4318/v1/traces");
        assert_eq!(url("http://h:4318/v1/traces/"), "http://h:4318/v1/traces");
        assert_eq!(url("http://h/otlp"), "http://h/otlp/v1/traces");
        assert_eq!(url("https://h:4318"), "https://h:4318/v1/traces");
        for bad in [
            "h:4318",
            "ftp://h",
            "http://h/?a=1",
            "",
            "http://",
            "http://u:p@h:4318",
        ] {
            assert!(target(bad, Protocol::HttpProtobuf, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_and_grpc_endpoints() {
        let t = target(
            "https://c.example/custom/path",
            Protocol::HttpProtobuf,
            true,
        )
        .unwrap();
        assert_eq!(t.url, "https://c.example/custom/path");
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "c.example", 443));
        let t = target("http://h:4318", Protocol::HttpProtobuf, true).unwrap();
        assert_eq!(t.url, "http://h:4318/");
        let t = target("https://[::1]:4317/", Protocol::Grpc, false).unwrap();
        assert_eq!(t.url, "https://[::1]:4317");
        assert_eq!((t.host.as_str(), t.port), ("::1", 4317));
        let t = target("http://h", Protocol::Grpc, false).unwrap();
        assert_eq!(t.port, 80);
        assert!(target("http://h:4317/v1/traces", Protocol::Grpc, false).is_err());
    }

    #[test]
    fn tls_settings_need_https() {
        let mut c = OtlpConfig::new("http://h:4318");
        c.tls.ca_file = Some("/ca.pem".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("clear-text"), "{e}");
        c.endpoint = "https://h:4318".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn protocol_and_compression_values() {
        assert_eq!(Protocol::parse("grpc").unwrap(), Protocol::Grpc);
        assert_eq!(
            Protocol::parse(" http/protobuf").unwrap(),
            Protocol::HttpProtobuf
        );
        assert!(Protocol::parse("http/json")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        assert!(Protocol::parse("udp").is_err());
        assert_eq!(Protocol::default(), Protocol::HttpProtobuf);
        assert_eq!(Compression::parse("none").unwrap(), Compression::None);
        assert!(Compression::parse("zstd").is_err());
    }

    #[test]
    fn headers_in_env_form() {
        let h =
            OtlpConfig::parse_headers("api-key=abc, x-tenant = t1 ,auth=Basic%20eDp5%3D").unwrap();
        assert_eq!(
            h,
            vec![
                ("api-key".to_string(), "abc".to_string()),
                ("x-tenant".to_string(), "t1".to_string()),
                ("auth".to_string(), "Basic eDp5=".to_string()),
            ]
        );
        assert!(OtlpConfig::parse_headers("novalue").is_err());
        assert!(OtlpConfig::parse_headers("k=%zz").is_err());
        let mut c = OtlpConfig::new("http://h:4318");
        c.headers = vec![("bad name".into(), "v".into())];
        assert!(c.validate().is_err());
        c.headers = vec![("ok".into(), "line\nbreak".into())];
        assert!(c.validate().is_err());
    }
}
