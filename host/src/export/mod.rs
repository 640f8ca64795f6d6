//! OTLP export (OTLP/gRPC or OTLP/HTTP protobuf, clear text or TLS): every enriched batch
//! becomes spans under its process's resource (`service.name`, `host.name`, `process.*`,
//! `telemetry.sdk.*`), queued with a bound, sent in batches from one thread and retried per the
//! OTLP spec, so a receiver's transient outage loses nothing until the queue bound is reached.
mod config;
mod connect;
mod encode;
mod env;
mod exporter;
mod grpc;
mod http;
mod queue;
mod tls;
mod transport;

pub use config::{Compression, OtlpConfig, Protocol, RetryPolicy, TlsSettings};
pub use encode::SCOPE_NAME;
pub use env::EnvSettings;
pub use exporter::{OtlpExporter, OtlpStats};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTLP endpoint {0}")]
    Endpoint(String),
    #[error("OTLP header {0}")]
    Header(String),
    #[error("OTLP export config: {0}")]
    Config(String),
    #[error("OTLP TLS: {0}")]
    Tls(String),
    #[error("OTEL_EXPORTER_OTLP environment: {0}")]
    Env(String),
    #[error("starting the OTLP export thread: {0}")]
    Thread(std::io::Error),
}
