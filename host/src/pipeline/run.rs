//! The pipeline thread: takes span batches off the intake's queue, groups what is waiting by
//! process (so one sandbox call enriches many frames), enriches each group through the sensor
//! that matched that process, and hands the result to every sink.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{EnrichedBatch, Sink};
use crate::intake::{SpanBatch, SpanQueue};
use crate::orchestrate::ProcessDirectory;
use crate::sensors::SensorRegistry;

/// Frames taken per round; bounds the latency one round adds.
const MAX_FRAMES_PER_ROUND: usize = 512;

#[derive(Debug, Default)]
struct Counters {
    batches_in: AtomicU64,
    spans_in: AtomicU64,
    spans_out: AtomicU64,
    enrich_calls: AtomicU64,
    enrich_failures: AtomicU64,
    redacted_natively: AtomicU64,
    unattributed_spans: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineStats {
    pub batches_in: u64,
    pub spans_in: u64,
    pub spans_out: u64,
    pub enrich_calls: u64,
    /// Groups whose enrichment failed; their spans went on un-enriched rather than being lost.
    pub enrich_failures: u64,
    /// Spans whose secrets the native baseline redaction removed (their sensor did not enrich them).
    pub redacted_natively: u64,
    /// Spans from a process nobody matched (should stay 0; the intake only admits injected ones).
    pub unattributed_spans: u64,
    pub queue_depth: u64,
}

pub struct Pipeline {
    counters: Arc<Counters>,
    queue: SpanQueue,
    stop: Arc<AtomicBool>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Pipeline {
    pub fn start(
        queue: SpanQueue,
        directory: ProcessDirectory,
        sensors: Arc<SensorRegistry>,
        sinks: Vec<Arc<dyn Sink>>,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<Pipeline> {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            queue: queue.clone(),
            directory,
            sensors,
            sinks,
            counters: counters.clone(),
            last_unattributed_log: None,
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("zerostep-pipeline".into())
            .spawn(move || worker.run(&runtime, &stop2))?;
        Ok(Pipeline {
            counters,
            queue,
            stop,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    pub fn stats(&self) -> PipelineStats {
        let c = &self.counters;
        PipelineStats {
            batches_in: c.batches_in.load(Ordering::Relaxed),
            spans_in: c.spans_in.load(Ordering::Relaxed),
            spans_out: c.spans_out.load(Ordering::Relaxed),
            enrich_calls: c.enrich_calls.load(Ordering::Relaxed),
            enrich_failures: c.enrich_failures.load(Ordering::Relaxed),
            redacted_natively: c.redacted_natively.load(Ordering::Relaxed),
            unattributed_spans: c.unattributed_spans.load(Ordering::Relaxed),
            queue_depth: self.queue.len() as u64,
        }
    }

    /// Processes what is queued, then stops.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Worker {
    queue: SpanQueue,
    directory: ProcessDirectory,
    sensors: Arc<SensorRegistry>,
    sinks: Vec<Arc<dyn Sink>>,
    counters: Arc<Counters>,
    last_unattributed_log: Option<Instant>,
}

impl Worker {
    fn run(mut self, runtime: &tokio::runtime::Handle, stop: &AtomicBool) {
        loop {
            let first = runtime.block_on(async {
                tokio::time::timeout(Duration::from_millis(200), self.queue.recv())
                    .await
                    .ok()
            });
            let Some(first) = first else {
                if stop.load(Ordering::Relaxed) && self.queue.is_empty() {
                    return;
                }
                continue;
            };
            let mut frames = vec![first];
            while frames.len() < MAX_FRAMES_PER_ROUND {
                match self.queue.try_pop() {
                    Some(b) => frames.push(b),
                    None => break,
                }
            }
            self.round(frames);
        }
    }

    fn round(&mut self, frames: Vec<SpanBatch>) {
        // Group by sending process, keeping each process's frames in arrival order.
        let mut order: Vec<(u32, u32)> = Vec::new();
        let mut groups: HashMap<(u32, u32), Vec<crate::span::Span>> = HashMap::new();
        let mut versions: HashMap<(u32, u32), std::sync::Arc<str>> = HashMap::new();
        for f in frames {
            self.counters.batches_in.fetch_add(1, Ordering::Relaxed);
            self.counters
                .spans_in
                .fetch_add(f.spans.len() as u64, Ordering::Relaxed);
            let key = (f.pid, f.root_pid);
            if let Some(v) = f.tracer_version {
                versions.insert(key, v);
            }
            match groups.get_mut(&key) {
                Some(v) => v.extend(f.spans),
                None => {
                    order.push(key);
                    groups.insert(key, f.spans);
                }
            }
        }
        for key in order {
            let Some(mut spans) = groups.remove(&key) else {
                continue;
            };
            let Some(attr) = self.directory.lookup(key.0, key.1) else {
                self.unattributed(key.0, spans.len());
                continue;
            };
            self.counters.enrich_calls.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.sensors.enrich(&attr.sensor, &attr.matched, &mut spans) {
                self.counters
                    .enrich_failures
                    .fetch_add(1, Ordering::Relaxed);
                // Fail closed: no sensor redacted these, so the host's own rules do.
                let declared: Vec<_> = self
                    .sensors
                    .rules()
                    .into_iter()
                    .map(|(_, r)| r.redaction)
                    .collect();
                let n = super::baseline::redact_spans(&mut spans, &declared);
                // The matched sensor's own declared route templates, if it still serves.
                if let Some(rules) = self.sensors.rules_of(&attr.sensor) {
                    super::baseline::apply_routes(&mut spans, &rules.routes);
                }
                self.counters
                    .redacted_natively
                    .fetch_add(n as u64, Ordering::Relaxed);
                tracing::debug!(pid = key.0, error = %e, "enrichment failed; spans go on with the native baseline redaction");
            }
            self.counters
                .spans_out
                .fetch_add(spans.len() as u64, Ordering::Relaxed);
            // Labelled with the tracer the process runs (an older one until it is upgraded).
            let resource = match versions.get(&key) {
                Some(v) if **v != *attr.resource.tracer_version => {
                    let mut r = (*attr.resource).clone();
                    r.tracer_version = v.to_string();
                    Arc::new(r)
                }
                _ => attr.resource.clone(),
            };
            let batch = Arc::new(EnrichedBatch { resource, spans });
            for sink in &self.sinks {
                sink.submit(batch.clone());
            }
        }
    }

    fn unattributed(&mut self, pid: u32, n: usize) {
        self.counters
            .unattributed_spans
            .fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        if self
            .last_unattributed_log
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            self.last_unattributed_log = Some(now);
            tracing::warn!(
                pid,
                spans = n,
                "spans from a process no sensor matched; dropped"
            );
        }
    }
}
