//! The OTLP sink: `submit` only queues (drop-oldest bound); one thread takes up to a batch of
//! spans, sends it, and retries it with backoff until it is delivered, refused for good, or the
//! shutdown deadline passes. While a request is retried new spans keep queueing, so an outage
//! loses nothing until the queue bound is reached.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use super::config::{OtlpConfig, Protocol};
use super::connect::{ConnectCounters, Connector};
use super::encode;
use super::grpc::GrpcParts;
use super::http::HttpTransport;
use super::queue::{Part, SpanQueue};
use super::tls;
use super::transport::{Backoff, Outcome, Transport};
use super::ExportError;
use crate::pipeline::{EnrichedBatch, Sink, SinkStats};

/// `SinkStats` plus what only an exporter has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OtlpStats {
    #[serde(flatten)]
    pub sink: SinkStats,
    /// Requests (HTTP or gRPC calls) made, retries included.
    pub requests: u64,
    /// Requests made again after a retryable failure.
    pub retries: u64,
    /// Spans the receiver refused in a partial-success answer (also counted in `dropped`).
    pub rejected: u64,
    /// Requests dropped because the receiver answered with a non-retryable status.
    pub failed_requests: u64,
    /// Bytes of request bodies sent (HTTP: after compression; gRPC: before, tonic compresses),
    /// retries included.
    pub bytes_sent: u64,
    /// Spans dropped, by why: the queue was full (oldest first), the receiver refused the request
    /// for good (`failed_requests`), or shutdown came before they could be sent. With
    /// `rejected` these add up to `sink.dropped`.
    pub dropped_queue_full: u64,
    pub dropped_refused: u64,
    pub dropped_shutdown: u64,
    /// TCP connections opened, and attempts that failed.
    pub connects: u64,
    pub connect_failures: u64,
    /// TLS handshakes that failed (bad or unknown certificate, name mismatch, client
    /// certificate refused...). Never retried in clear text.
    pub tls_handshake_failures: u64,
    /// The most recent failure, cleared by the next delivery.
    pub last_error: Option<String>,
}

struct State {
    queue: SpanQueue,
    /// When the oldest queued span arrived (approximately, after a partial take).
    oldest_at: Option<Instant>,
    /// Spans taken from the queue and not yet delivered or dropped.
    in_flight: usize,
    /// Set by `shutdown`: send what can be sent until then, drop the rest.
    deadline: Option<Instant>,
    stats: OtlpStats,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    counters: Arc<ConnectCounters>,
}

/// The transport, checked at start and opened in the exporter's thread (the gRPC channel needs
/// that thread's runtime).
enum Prepared {
    Http(HttpTransport),
    Grpc(Box<GrpcParts>, Connector),
}

pub struct OtlpExporter {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    url: String,
    max_batch_spans: usize,
}

impl OtlpExporter {
    /// Checks the configuration and starts the sending thread.
    pub fn start(config: OtlpConfig) -> Result<OtlpExporter, ExportError> {
        config.validate()?;
        let target = config.target()?;
        let url = target.url.clone();
        let tls = if target.tls {
            Some(tls::client_config(
                &config.tls,
                config.protocol,
                &target.host,
            )?)
        } else {
            None
        };
        let counters = Arc::new(ConnectCounters::default());
        let connector = Connector::new(target.host.clone(), target.port, tls, counters.clone());
        let prepared = match config.protocol {
            Protocol::HttpProtobuf => Prepared::Http(HttpTransport::new(
                &target,
                connector,
                &config.headers,
                config.compression,
            )?),
            Protocol::Grpc => Prepared::Grpc(
                Box::new(GrpcParts::new(
                    &target,
                    &config.headers,
                    config.compression,
                    config.timeout,
                )?),
                connector,
            ),
        };
        let max_batch_spans = config.max_batch_spans;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: SpanQueue::new(config.queue_spans),
                oldest_at: None,
                in_flight: 0,
                deadline: None,
                stats: OtlpStats::default(),
            }),
            wake: Condvar::new(),
            counters,
        });
        let worker_shared = shared.clone();
        let worker_url = url.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let protocol = config.protocol;
        let handle = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                // One small runtime of its own: the exporter's I/O never waits behind (or
                // holds up) the agent's API and pipeline tasks.
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let transport = match prepared {
                    Prepared::Http(t) => Transport::Http(t),
                    Prepared::Grpc(parts, connector) => {
                        let _guard = rt.enter();
                        Transport::Grpc((*parts).open(connector))
                    }
                };
                let _ = ready_tx.send(Ok(()));
                Worker {
                    shared: worker_shared,
                    transport,
                    rt,
                    url: worker_url,
                    config,
                    logged_error: None,
                }
                .run();
            })
            .map_err(ExportError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ExportError::Thread(e)),
            Err(_) => {
                return Err(ExportError::Thread(std::io::Error::other(
                    "the export thread ended at start",
                )))
            }
        }
        tracing::info!(%url, protocol = protocol.as_str(), "OTLP export started");
        Ok(OtlpExporter {
            shared,
            worker: Mutex::new(Some(handle)),
            url,
            max_batch_spans,
        })
    }

    /// Where requests go (`…/v1/traces`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn otlp_stats(&self) -> OtlpStats {
        let st = self.shared.state.lock();
        let mut stats = st.stats.clone();
        stats.sink.queued = (st.queue.len() + st.in_flight) as u64;
        drop(st);
        let c = &self.shared.counters;
        stats.connects = c.connects.load(Ordering::Relaxed);
        stats.connect_failures = c.connect_failures.load(Ordering::Relaxed);
        stats.tls_handshake_failures = c.tls_handshake_failures.load(Ordering::Relaxed);
        stats
    }

    /// Sends what is queued, for at most `timeout`; spans still unsent then are counted as
    /// dropped. Later submits are dropped and counted. Returns the final counters.
    pub fn shutdown(&self, timeout: Duration) -> OtlpStats {
        {
            let mut st = self.shared.state.lock();
            let deadline = Instant::now() + timeout;
            st.deadline = Some(st.deadline.map_or(deadline, |d| d.min(deadline)));
        }
        self.shared.wake.notify_all();
        if let Some(handle) = self.worker.lock().take() {
            if handle.join().is_err() {
                tracing::error!("OTLP export thread panicked");
            }
        }
        self.otlp_stats()
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        // Without a shutdown, stop at once; the thread ends after its current attempt.
        let mut st = self.shared.state.lock();
        if st.deadline.is_none() {
            st.deadline = Some(Instant::now());
        }
        drop(st);
        self.shared.wake.notify_all();
    }
}

impl Sink for OtlpExporter {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn submit(&self, batch: Arc<EnrichedBatch>) {
        let n = batch.spans.len() as u64;
        if n == 0 {
            return;
        }
        let mut st = self.shared.state.lock();
        st.stats.sink.accepted += n;
        if st.deadline.is_some() {
            st.stats.sink.dropped += n;
            st.stats.dropped_shutdown += n;
            return;
        }
        let was_empty = st.queue.is_empty();
        let dropped = st.queue.push(batch) as u64;
        st.stats.sink.dropped += dropped;
        st.stats.dropped_queue_full += dropped;
        if was_empty {
            st.oldest_at = Some(Instant::now());
        }
        // The worker re-checks on every wake: once when work appears and once per full batch.
        let wake = was_empty || st.queue.len() >= self.max_batch_spans;
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    fn stats(&self) -> SinkStats {
        self.otlp_stats().sink
    }
}

struct Worker {
    shared: Arc<Shared>,
    transport: Transport,
    rt: tokio::runtime::Runtime,
    url: String,
    config: OtlpConfig,
    /// The last failure logged at warn level: the same reason again is logged at debug.
    logged_error: Option<String>,
}

impl Worker {
    fn run(mut self) {
        while let Some(parts) = self.next_batch() {
            self.deliver(&parts);
        }
        let mut st = self.shared.state.lock();
        let left = st.queue.len() as u64;
        if left > 0 {
            st.queue.take(usize::MAX);
            st.stats.sink.dropped += left;
            st.stats.dropped_shutdown += left;
            tracing::warn!(spans = left, "OTLP export stopped with spans unsent");
        }
    }

    /// Waits for a full batch, the flush interval, or shutdown; `None` when it is time to stop.
    fn next_batch(&self) -> Option<Vec<Part>> {
        let max = self.config.max_batch_spans;
        let mut st = self.shared.state.lock();
        loop {
            if let Some(deadline) = st.deadline {
                if st.queue.is_empty() || Instant::now() >= deadline {
                    return None;
                }
                break;
            }
            if st.queue.len() >= max {
                break;
            }
            match st.oldest_at {
                Some(oldest) if !st.queue.is_empty() => {
                    let due = oldest + self.config.flush_interval;
                    if Instant::now() >= due {
                        break;
                    }
                    self.shared.wake.wait_until(&mut st, due);
                }
                _ => self.shared.wake.wait(&mut st),
            }
        }
        let parts = st.queue.take(max);
        st.in_flight = parts.iter().map(Part::len).sum();
        st.oldest_at = (!st.queue.is_empty()).then(Instant::now);
        Some(parts)
    }

    fn deliver(&mut self, parts: &[Part]) {
        let spans = parts.iter().map(Part::len).sum::<usize>() as u64;
        let payload = self
            .transport
            .prepare(encode::request(parts), self.config.compression);
        let wire_len = payload.wire_len() as u64;
        let mut backoff = Backoff::new(self.config.retry.clone());
        let mut failures = 0u32;
        loop {
            let deadline = self.shared.state.lock().deadline;
            let timeout = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(self.config.timeout),
                    _ => return self.finish_shutdown(spans),
                },
                None => self.config.timeout,
            };
            let max_retry_after = self.config.retry.max_retry_after;
            let handshakes_failed = || {
                self.shared
                    .counters
                    .tls_handshake_failures
                    .load(Ordering::Relaxed)
            };
            let failed_before = handshakes_failed();
            let mut outcome =
                self.rt
                    .block_on(self.transport.send(&payload, timeout, max_retry_after));
            // Say so when TLS was the problem: a refusal after the handshake reads as a mere
            // closed connection otherwise.
            if handshakes_failed() > failed_before {
                if let Outcome::Retry { reason, .. } | Outcome::Fail { reason } = &mut outcome {
                    *reason = format!("TLS handshake failed or refused (certificates?): {reason}");
                }
            }
            {
                let mut st = self.shared.state.lock();
                st.stats.requests += 1;
                st.stats.bytes_sent += wire_len;
            }
            match outcome {
                Outcome::Delivered { rejected, message } => {
                    let rejected = rejected.min(spans);
                    if failures > 0 {
                        tracing::info!(failures, "OTLP endpoint accepts spans again");
                    }
                    self.logged_error = None;
                    if rejected > 0 {
                        self.note_error(format!("receiver rejected spans: {message}"), rejected);
                    }
                    let mut st = self.shared.state.lock();
                    st.stats.rejected += rejected;
                    if rejected == 0 {
                        st.stats.last_error = None;
                    }
                    drop(st);
                    return self.finish(spans, spans - rejected, rejected);
                }
                Outcome::Fail { reason } => {
                    self.note_error(format!("{reason} (not retryable; spans dropped)"), spans);
                    let mut st = self.shared.state.lock();
                    st.stats.failed_requests += 1;
                    st.stats.dropped_refused += spans;
                    st.stats.sink.errors += 1;
                    drop(st);
                    return self.finish(spans, 0, spans);
                }
                Outcome::Retry { reason, after } => {
                    failures += 1;
                    // A `Retry-After: 0` (or a past date) must not turn into a busy loop.
                    let delay = match after {
                        Some(after) => after.max(self.config.retry.initial_backoff),
                        None => backoff.next_delay(),
                    };
                    self.note_error(format!("{reason} (retrying)"), spans);
                    let mut st = self.shared.state.lock();
                    st.stats.sink.errors += 1;
                    let resume = Instant::now() + delay;
                    // Sleep, but no later than a shutdown deadline, which may come meanwhile.
                    loop {
                        let until = st.deadline.map_or(resume, |d| d.min(resume));
                        if Instant::now() >= until {
                            break;
                        }
                        self.shared.wake.wait_until(&mut st, until);
                    }
                    if st.deadline.is_some_and(|d| Instant::now() >= d) {
                        drop(st);
                        return self.finish_shutdown(spans);
                    }
                    st.stats.retries += 1;
                }
            }
        }
    }

    /// Settles the request in flight.
    fn finish(&self, spans: u64, delivered: u64, dropped: u64) {
        let mut st = self.shared.state.lock();
        debug_assert_eq!(spans, delivered + dropped);
        st.in_flight = 0;
        st.stats.sink.delivered += delivered;
        st.stats.sink.dropped += dropped;
    }

    /// The request in flight is given up because shutdown's deadline has come.
    fn finish_shutdown(&self, spans: u64) {
        self.shared.state.lock().stats.dropped_shutdown += spans;
        self.finish(spans, 0, spans);
    }

    /// Records a failure's reason; logs it at warn level only when it differs from the last one.
    fn note_error(&mut self, reason: String, spans: u64) {
        self.shared.state.lock().stats.last_error = Some(reason.clone());
        let url = &self.url;
        if self.logged_error.as_deref() == Some(reason.as_str()) {
            tracing::debug!(%url, spans, "OTLP export: {reason}");
        } else {
            tracing::warn!(%url, spans, "OTLP export: {reason}");
            self.logged_error = Some(reason);
        }
    }
}
