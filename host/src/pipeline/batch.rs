//! What the pipeline hands every sink: one traced process's enriched spans plus the resource that
//! describes that process (OpenTelemetry resource attributes).
use std::sync::Arc;

use serde::Serialize;

use crate::span::Span;

/// The process the spans came from. Shared by every batch of that process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// `service.name`, as the matching sensor derived it.
    pub service_name: String,
    /// `host.name`.
    pub host_name: String,
    /// `process.pid`.
    pub pid: u32,
    /// `process.executable.path`.
    pub executable: String,
    /// `process.command_line`, joined with spaces.
    pub command_line: String,
    /// `process.runtime.version`, e.g. `3.11.7` (`process.runtime.name` is always `cpython`).
    pub runtime_version: String,
    /// The matching sensor's technology (`gunicorn`, `uwsgi`) and the process's role in it.
    pub technology: String,
    pub role: String,
    /// `telemetry.sdk.version`: the in-process tracer's version.
    pub tracer_version: String,
}

/// One frame's worth of spans from one process, after enrichment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichedBatch {
    pub resource: Arc<Resource>,
    pub spans: Vec<Span>,
}

/// Counters every sink reports (for `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// Spans accepted into the sink's queue.
    pub accepted: u64,
    /// Spans written or sent successfully.
    pub delivered: u64,
    /// Spans dropped: queue full, or given up after retries.
    pub dropped: u64,
    /// Spans waiting in the sink's queue now.
    pub queued: u64,
    /// Failed attempts (write errors, failed requests), each retried or counted in `dropped`.
    pub errors: u64,
}

/// A destination for enriched spans.
pub trait Sink: Send + Sync {
    fn name(&self) -> &'static str;
    /// Never blocks: a sink that cannot keep up drops (oldest first) and counts it.
    fn submit(&self, batch: Arc<EnrichedBatch>);
    fn stats(&self) -> SinkStats;
}
