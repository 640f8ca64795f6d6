//! OTLP/HTTP export (protobuf): every enriched batch becomes spans under its process's resource
//! (`service.name`, `host.name`, `process.*`, `telemetry.sdk.*`), queued with a bound, sent in
//! batches from one thread and retried per the OTLP spec, so a receiver's transient outage loses
//! nothing until the queue bound is reached.
mod config;
mod encode;
mod exporter;
mod queue;
mod transport;

pub use config::{Compression, OtlpConfig, RetryPolicy};
pub use encode::SCOPE_NAME;
pub use exporter::{OtlpExporter, OtlpStats};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTLP endpoint {0}")]
    Endpoint(String),
    #[error("OTLP header {0}")]
    Header(String),
    #[error("OTLP export config: {0}")]
    Config(String),
    #[error("starting the OTLP export thread: {0}")]
    Thread(std::io::Error),
}
