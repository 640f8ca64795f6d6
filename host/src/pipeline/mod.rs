//! From the intake's span batches to the sinks: enrichment through the sensor that matched the
//! sending process (or, when that fails, the native baseline redaction: fail closed), then fan-out
//! to every sink (store, OTLP export). Nothing here blocks the
//! intake: each sink owns a bounded queue and counts what it drops.
pub mod baseline;
mod batch;
mod run;

pub use batch::{EnrichedBatch, Resource, Sink, SinkStats};
pub use run::{Pipeline, PipelineStats};
