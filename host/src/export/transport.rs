//! What an OTLP answer means under the OTLP spec, for both transports: delivered (perhaps
//! partly), worth retrying (HTTP 429/502/503/504, the retryable gRPC codes, connection errors,
//! timeouts; with the receiver's `Retry-After` or gRPC `RetryInfo`), or not (the data is
//! dropped). `Transport` sends one request with whichever protocol is configured.
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::config::{Compression, RetryPolicy};
use super::encode;
use super::grpc::GrpcTransport;
use super::http::HttpTransport;

/// How much of a plain-text error body ends up in a log line.
const MAX_REASON_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// 2xx / gRPC OK. `rejected` spans were refused by the receiver (partial success), for
    /// `message`.
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

impl Outcome {
    pub(crate) fn delivered(response: Option<ExportTraceServiceResponse>) -> Outcome {
        match response.and_then(|r| r.partial_success) {
            Some(p) => Outcome::Delivered {
                rejected: u64::try_from(p.rejected_spans).unwrap_or(0),
                message: p.error_message,
            },
            None => Outcome::Delivered {
                rejected: 0,
                message: String::new(),
            },
        }
    }
}

/// `google.rpc.Status`, the body OTLP/HTTP receivers send with an error status.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// One batch, encoded once for all its attempts.
pub(crate) enum Payload {
    /// The protobuf body, compressed as configured.
    Http(Bytes),
    /// The protobuf bytes, uncompressed (tonic gzips them per attempt, when asked).
    Grpc(Bytes),
}

impl Payload {
    /// Bytes on the wire per attempt (for gRPC before compression: tonic compresses inside).
    pub fn wire_len(&self) -> usize {
        match self {
            Payload::Http(b) => b.len(),
            Payload::Grpc(b) => b.len(),
        }
    }
}

pub(crate) enum Transport {
    Http(HttpTransport),
    Grpc(GrpcTransport),
}

impl Transport {
    pub fn prepare(&self, req: ExportTraceServiceRequest, compression: Compression) -> Payload {
        match self {
            Transport::Http(_) => Payload::Http(Bytes::from(encode::body(&req, compression))),
            Transport::Grpc(_) => Payload::Grpc(Bytes::from(req.encode_to_vec())),
        }
    }

    /// One attempt within `timeout`.
    pub async fn send(
        &mut self,
        payload: &Payload,
        timeout: Duration,
        max_retry_after: Duration,
    ) -> Outcome {
        match (self, payload) {
            (Transport::Http(t), Payload::Http(body)) => {
                t.send(body, timeout, max_retry_after).await
            }
            (Transport::Grpc(t), Payload::Grpc(req)) => t.send(req, timeout, max_retry_after).await,
            _ => Outcome::Fail {
                reason: "internal: payload prepared for the other protocol".into(),
            },
        }
    }
}

/// An OTLP/HTTP answer.
pub(crate) fn classify(
    status: u16,
    body: &[u8],
    is_protobuf: bool,
    retry_after: Option<Duration>,
) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::delivered(ExportTraceServiceResponse::decode(body).ok());
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
