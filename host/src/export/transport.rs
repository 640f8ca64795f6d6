//! One OTLP/HTTP request and what its answer means under the OTLP spec: delivered (perhaps
//! partly), worth retrying (429/502/503/504, connection errors, timeouts; with the receiver's
//! `Retry-After`), or not (any other status: the data is dropped).
//!
//! ureq (already a dependency, blocking): the exporter sends one request at a time from its own
//! thread, so an async client would add a runtime hop and nothing else.
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use super::config::{Compression, OtlpConfig, RetryPolicy};
use super::ExportError;

/// How much of a response body we read: enough for any status message.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// How much of a plain-text error body ends up in a log line.
const MAX_REASON_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// 2xx. `rejected` spans were refused by the receiver (partial success), for `message`.
    Delivered {
        rejected: u64,
        message: String,
    },
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Fail {
        reason: String,
    },
}

/// `google.rpc.Status`, the body OTLP/HTTP receivers send with an error status.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

pub(crate) struct Transport {
    agent: ureq::Agent,
    url: String,
    headers: Vec<(String, String)>,
    compression: Compression,
}

impl Transport {
    pub fn new(config: &OtlpConfig) -> Result<Self, ExportError> {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(config.timeout))
                .user_agent(concat!("zerostep/", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        Ok(Self {
            agent,
            url: config.traces_url()?,
            headers: config.headers.clone(),
            compression: config.compression,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `body` (already compressed as configured) within `timeout`.
    pub fn send(&self, body: &[u8], timeout: Duration, max_retry_after: Duration) -> Outcome {
        let mut req = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/x-protobuf");
        if self.compression == Compression::Gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let mut resp = match req.send(body) {
            Ok(resp) => resp,
            Err(e) => {
                return Outcome::Retry {
                    reason: format!("POST {}: {e}", self.url),
                    after: None,
                }
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .map(|d| d.min(max_retry_after));
        let is_protobuf = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-protobuf"));
        // A body we cannot read is treated as empty: the status alone decides.
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .unwrap_or_default();
        classify(status, &bytes, is_protobuf, retry_after)
    }
}

fn classify(status: u16, body: &[u8], is_protobuf: bool, retry_after: Option<Duration>) -> Outcome {
    if (200..300).contains(&status) {
        let partial = ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success);
        return match partial {
            Some(p) => Outcome::Delivered {
                rejected: u64::try_from(p.rejected_spans).unwrap_or(0),
                message: p.error_message,
            },
            None => Outcome::Delivered {
                rejected: 0,
                message: String::new(),
            },
        };
    }
    let detail = if is_protobuf {
        RpcStatus::decode(body)
            .map(|s| s.message)
            .unwrap_or_default()
    } else {
        String::from_utf8_lossy(body)
            .chars()
            .take(MAX_REASON_CHARS)
            .collect::<String>()
            .trim()
            .to_string()
    };
    let reason = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    match status {
        429 | 502 | 503 | 504 => Outcome::Retry {
            reason,
            after: retry_after,
        },
        _ => Outcome::Fail { reason },
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Exponential backoff with jitter for the attempts of one request.
pub(crate) struct Backoff {
    policy: RetryPolicy,
    current: Duration,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        let current = policy.initial_backoff;
        Self { policy, current }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = self
            .current
            .mul_f64(self.policy.multiplier)
            .min(self.policy.max_backoff);
        let unit = getrandom::u32().map_or(0.5, |r| f64::from(r) / f64::from(u32::MAX));
        base.mul_f64(1.0 + self.policy.jitter * (2.0 * unit - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    #[test]
    fn statuses_per_the_spec() {
        let ok = classify(200, b"", false, None);
        assert_eq!(
            ok,
            Outcome::Delivered {
                rejected: 0,
                message: String::new()
            }
        );
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            classify(200, &partial, true, None),
            Outcome::Delivered {
                rejected: 3,
                message: "too old".into()
            }
        );
        for s in [429, 502, 503, 504] {
            assert!(
                matches!(classify(s, b"", false, None), Outcome::Retry { .. }),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 413, 500, 301] {
            assert!(
                matches!(classify(s, b"", false, None), Outcome::Fail { .. }),
                "{s}"
            );
        }
        let rpc = RpcStatus {
            code: 3,
            message: "bad span".into(),
        }
        .encode_to_vec();
        assert_eq!(
            classify(400, &rpc, true, None),
            Outcome::Fail {
                reason: "HTTP 400: bad span".into()
            }
        );
        assert_eq!(
            classify(503, b"busy", false, Some(Duration::from_secs(2))),
            Outcome::Retry {
                reason: "HTTP 503: busy".into(),
                after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > Duration::from_secs(110) && d <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_to_the_cap_within_jitter() {
        let mut b = Backoff::new(RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            multiplier: 2.0,
            jitter: 0.1,
            max_retry_after: Duration::from_secs(1),
        });
        let expect = [100.0, 200.0, 350.0, 350.0];
        for e in expect {
            let d = b.next_delay().as_secs_f64() * 1000.0;
            assert!(d >= e * 0.9 - 0.001 && d <= e * 1.1 + 0.001, "{d} vs {e}");
        }
    }
}
