//! OTLP/gRPC: `TraceService/Export` calls on a tonic channel (hyper + h2) that connects through
//! the shared connector (TLS by rustls for `https://`), and what a gRPC status means under the
//! OTLP spec. The request is encoded once per batch (opentelemetry-proto's message, prost) and
//! its bytes are sent as they are on every attempt: the generated client would want the message
//! itself, cloned and encoded again per attempt (a quarter of the exporter's gRPC CPU).
use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::config::{Compression, Target};
use super::connect::{error_chain, Connector};
use super::transport::Outcome;
use super::ExportError;

/// What is needed to open the channel, checked at start (the channel itself must be made inside
/// the exporter thread's runtime).
pub(crate) struct GrpcParts {
    endpoint: Endpoint,
    metadata: MetadataMap,
    compression: Compression,
    url: String,
}

impl GrpcParts {
    pub fn new(
        target: &Target,
        headers: &[(String, String)],
        compression: Compression,
        timeout: Duration,
    ) -> Result<Self, ExportError> {
        let bad = |e: tonic::transport::Error| {
            ExportError::Endpoint(format!("`{}`: {}", target.url, error_chain(&e)))
        };
        let endpoint = Endpoint::from_shared(target.url.clone())
            .map_err(bad)?
            .user_agent(concat!("zerostep/", env!("CARGO_PKG_VERSION")))
            .map_err(bad)?
            .connect_timeout(timeout)
            // An idle agent keeps its connection; h2 pings find a dead one before the next batch.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let mut metadata = MetadataMap::new();
        for (k, v) in headers {
            let key = AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| ExportError::Header(format!("name `{k}`: {e}")))?;
            let value = AsciiMetadataValue::try_from(v.as_str())
                .map_err(|e| ExportError::Header(format!("value of `{k}`: {e}")))?;
            metadata.insert(key, value);
        }
        Ok(Self {
            endpoint,
            metadata,
            compression,
            url: target.url.clone(),
        })
    }

    /// Must be called within a tokio runtime (the channel spawns its worker task there).
    pub fn open(self, connector: Connector) -> GrpcTransport {
        let channel = self.endpoint.connect_with_connector_lazy(connector);
        let mut client = Grpc::new(channel);
        if self.compression == Compression::Gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        GrpcTransport {
            client,
            metadata: self.metadata,
            url: self.url,
        }
    }
}

/// The method's path, as in the service definition (and the generated client).
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub(crate) struct GrpcTransport {
    client: Grpc<Channel>,
    metadata: MetadataMap,
    url: String,
}

impl GrpcTransport {
    /// `body` is an encoded `ExportTraceServiceRequest`.
    pub async fn send(
        &mut self,
        body: &Bytes,
        timeout: Duration,
        max_retry_after: Duration,
    ) -> Outcome {
        let mut request = tonic::Request::new(body.clone());
        *request.metadata_mut() = self.metadata.clone();
        // Tells the receiver (grpc-timeout) as well as bounding our wait.
        request.set_timeout(timeout);
        let call = async {
            // The channel's buffer is always ready; a connection failure comes from the call.
            self.client
                .ready()
                .await
                .map_err(|e| tonic::Status::from_error(e.into()))?;
            self.client
                .unary(request, PathAndQuery::from_static(EXPORT_PATH), RawCodec)
                .await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(resp)) => Outcome::delivered(Some(resp.into_inner())),
            Ok(Err(status)) => classify(&status, &self.url, max_retry_after),
            Err(_) => Outcome::Retry {
                reason: format!("gRPC {}: no answer within {timeout:?}", self.url),
                after: None,
            },
        }
    }
}

/// Sends already-encoded request bytes; decodes the response with the official message.
struct RawCodec;

struct RawEncoder;

struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        // An answer we cannot read still means delivered (as for OTLP/HTTP): no partial success.
        Ok(Some(
            ExportTraceServiceResponse::decode(src).unwrap_or_default(),
        ))
    }
}

/// The OTLP/gRPC spec's table: these codes are retryable; RESOURCE_EXHAUSTED only when the
/// server says when (`RetryInfo`); every other code drops the data.
pub(crate) fn classify(status: &tonic::Status, url: &str, max_retry_after: Duration) -> Outcome {
    let after = retry_delay(status.details()).map(|d| d.min(max_retry_after));
    let mut detail = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let chain = error_chain(source);
        if !detail.contains(&chain) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&chain);
        }
    }
    let reason = if detail.is_empty() {
        format!("gRPC {url}: {:?}", status.code())
    } else {
        format!("gRPC {url}: {:?}: {detail}", status.code())
    };
    // A status with a source was made here from a transport error (connection refused or
    // reset, TLS refused...), not sent by the receiver: that is an outage, whatever its code.
    if std::error::Error::source(status).is_some() {
        return Outcome::Retry { reason, after };
    }
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Outcome::Retry { reason, after },
        Code::ResourceExhausted if after.is_some() => Outcome::Retry { reason, after },
        _ => Outcome::Fail { reason },
    }
}

/// `google.rpc.Status` with its details, as carried in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusDetails {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

fn retry_delay(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = StatusDetails::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|a| a.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(info.value.as_slice()).ok()?.retry_delay?;
    let secs = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos).ok()?.min(999_999_999);
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details_with_delay(secs: i64, nanos: i32) -> Vec<u8> {
        StatusDetails {
            code: Code::ResourceExhausted as i32,
            message: "slow down".into(),
            details: vec![ProtoAny {
                type_url: RETRY_INFO_TYPE.into(),
                value: RetryInfo {
                    retry_delay: Some(ProtoDuration {
                        seconds: secs,
                        nanos,
                    }),
                }
                .encode_to_vec(),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn codes_per_the_otlp_spec() {
        let max = Duration::from_secs(60);
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            let o = classify(&tonic::Status::new(code, "x"), "u", max);
            assert!(
                matches!(o, Outcome::Retry { after: None, .. }),
                "{code:?}: {o:?}"
            );
        }
        for code in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            let o = classify(&tonic::Status::new(code, "x"), "u", max);
            assert!(matches!(o, Outcome::Fail { .. }), "{code:?}: {o:?}");
        }
        let throttled = tonic::Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            details_with_delay(2, 500_000_000).into(),
        );
        assert_eq!(
            classify(&throttled, "u", max),
            Outcome::Retry {
                reason: "gRPC u: ResourceExhausted: slow down".into(),
                after: Some(Duration::from_millis(2500)),
            }
        );
        let long =
            tonic::Status::with_details(Code::Unavailable, "", details_with_delay(3600, 0).into());
        assert!(matches!(
            classify(&long, "u", max),
            Outcome::Retry { after: Some(d), .. } if d == max
        ));
        // Made here from a transport error (tonic says Unknown): an outage, retried.
        let reset = tonic::Status::from_error(Box::new(std::io::Error::other("reset by peer")));
        assert!(matches!(
            classify(&reset, "u", max),
            Outcome::Retry { reason, .. } if reason.contains("reset by peer")
        ));
        assert_eq!(retry_delay(b"\xff\xff"), None);
        assert_eq!(retry_delay(&details_with_delay(-1, 0)), None);
    }
}
