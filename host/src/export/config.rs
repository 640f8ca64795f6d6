//! What the OTLP exporter is told: where to send, with which headers, how much to hold, how to retry.
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

/// Exponential backoff between attempts of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Each delay is scaled by a random factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
    /// A receiver's `Retry-After` is honoured up to this long; beyond it we retry sooner.
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
    /// `http://host:4318` (then `/v1/traces` is appended) or a full `http://host:4318/v1/traces`.
    pub endpoint: String,
    /// Extra request headers, e.g. an API key.
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
}

impl OtlpConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            queue_spans: 100_000,
            max_batch_spans: 512,
            flush_interval: Duration::from_secs(1),
            compression: Compression::Gzip,
            retry: RetryPolicy::default(),
        }
    }

    /// The URL requests go to: the endpoint with `/v1/traces` appended unless it already ends so.
    pub fn traces_url(&self) -> Result<String, ExportError> {
        traces_url(&self.endpoint)
    }

    /// Headers in the `OTEL_EXPORTER_OTLP_HEADERS` form: `key1=value1,key2=value2`.
    pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, ExportError> {
        text.split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| ExportError::Header(format!("`{pair}` is not key=value")))?;
                Ok((k.trim().to_string(), v.trim().to_string()))
            })
            .collect()
    }

    pub(crate) fn validate(&self) -> Result<(), ExportError> {
        self.traces_url()?;
        for (name, value) in &self.headers {
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

fn traces_url(endpoint: &str) -> Result<String, ExportError> {
    let bad = |why: &str| ExportError::Endpoint(format!("`{endpoint}`: {why}"));
    let uri: Uri = endpoint.trim().parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported by this build (no TLS); use http",
            ))
        }
        _ => return Err(bad("expected http://host:port")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let path = uri.path().trim_end_matches('/');
    let path = if path.ends_with(TRACES_PATH) {
        path.to_string()
    } else {
        format!("{path}{TRACES_PATH}")
    };
    Ok(format!("http://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_full_endpoints() {
        let url = |e: &str| traces_url(e).unwrap();
        assert_eq!(url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(url("http://h:4318/v1/traces"), "http://h:4318/v1/traces");
        assert_eq!(url("http://h:4318/v1/traces/"), "http://h:4318/v1/traces");
        assert_eq!(url("http://h/otlp"), "http://h/otlp/v1/traces");
        for bad in [
            "h:4318",
            "https://h:4318",
            "ftp://h",
            "http://h/?a=1",
            "",
            "http://",
        ] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_in_env_form() {
        let h = OtlpConfig::parse_headers("api-key=abc, x-tenant = t1 ,").unwrap();
        assert_eq!(
            h,
            vec![
                ("api-key".to_string(), "abc".to_string()),
                ("x-tenant".to_string(), "t1".to_string())
            ]
        );
        assert!(OtlpConfig::parse_headers("novalue").is_err());
        let mut c = OtlpConfig::new("http://h:4318");
        c.headers = vec![("bad name".into(), "v".into())];
        assert!(c.validate().is_err());
        c.headers = vec![("ok".into(), "line\nbreak".into())];
        assert!(c.validate().is_err());
    }
}
