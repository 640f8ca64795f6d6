//! The bounded hand-off between the pipeline (many submitters, never blocked) and the store's one
//! writer thread. Bounded in spans, not batches: when full, the oldest batches are dropped and
//! counted. Sequence numbers let `Store::flush` wait for everything submitted before it.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::pipeline::{EnrichedBatch, Sink, SinkStats};

#[derive(Default)]
struct Inner {
    batches: VecDeque<Arc<EnrichedBatch>>,
    spans: usize,
    closed: bool,
    /// Batches accepted so far / batches finished (written, failed or dropped).
    submitted: u64,
    finished: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
}

pub(crate) struct Queue {
    inner: Mutex<Inner>,
    ready: Condvar,
    finished: Condvar,
    capacity_spans: usize,
    pub counters: Counters,
}

impl Queue {
    pub fn new(capacity_spans: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Condvar::new(),
            finished: Condvar::new(),
            capacity_spans: capacity_spans.max(1),
            counters: Counters::default(),
        }
    }

    fn push(&self, batch: Arc<EnrichedBatch>) {
        let n = batch.spans.len();
        let mut inner = self.inner.lock();
        if inner.closed {
            self.counters.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        self.counters
            .accepted
            .fetch_add(n as u64, Ordering::Relaxed);
        inner.submitted += 1;
        inner.spans += n;
        inner.batches.push_back(batch);
        let mut dropped = 0u64;
        // Keep at least the newest batch even when it alone exceeds the bound.
        while inner.spans > self.capacity_spans && inner.batches.len() > 1 {
            if let Some(old) = inner.batches.pop_front() {
                inner.spans -= old.spans.len();
                inner.finished += 1;
                dropped += old.spans.len() as u64;
            }
        }
        drop(inner);
        if dropped > 0 {
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
            self.finished.notify_all();
        }
        self.ready.notify_one();
    }

    /// Waits up to `wait` for work, then takes batches holding up to `max_spans` spans.
    /// Returns `None` once closed and empty.
    pub fn take(&self, wait: Duration, max_spans: usize) -> Option<Vec<Arc<EnrichedBatch>>> {
        let mut inner = self.inner.lock();
        if inner.batches.is_empty() && !inner.closed {
            self.ready.wait_for(&mut inner, wait);
        }
        if inner.batches.is_empty() && inner.closed {
            return None;
        }
        let mut out = Vec::new();
        let mut spans = 0;
        while let Some(b) = inner.batches.front() {
            if !out.is_empty() && spans + b.spans.len() > max_spans {
                break;
            }
            spans += b.spans.len();
            if let Some(b) = inner.batches.pop_front() {
                out.push(b);
            }
        }
        inner.spans -= spans;
        Some(out)
    }

    pub fn finish(&self, batches: usize) {
        self.inner.lock().finished += batches as u64;
        self.finished.notify_all();
    }

    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.ready.notify_all();
    }

    /// Waits until every batch submitted before this call is finished.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.inner.lock();
        let target = inner.submitted;
        while inner.finished < target {
            if self.finished.wait_until(&mut inner, deadline).timed_out() {
                return inner.finished >= target;
            }
        }
        true
    }

    pub fn stats(&self) -> SinkStats {
        let queued = self.inner.lock().spans as u64;
        SinkStats {
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            queued,
            errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }
}

/// The store as a pipeline sink. Cheap to clone; submitting never blocks on the database.
#[derive(Clone)]
pub struct StoreSink {
    pub(crate) queue: Arc<Queue>,
}

impl Sink for StoreSink {
    fn name(&self) -> &'static str {
        "store"
    }

    fn submit(&self, batch: Arc<EnrichedBatch>) {
        if !batch.spans.is_empty() {
            self.queue.push(batch);
        }
    }

    fn stats(&self) -> SinkStats {
        self.queue.stats()
    }
}
