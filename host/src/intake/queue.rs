//! The bounded hand-off from the intake to the pipeline. When it fills past three quarters, the
//! queue is congested: connections stop reading until the pipeline has drained it to half (see
//! `connection.rs`), so the spans wait or are dropped inside the traced processes instead of being
//! decoded here for nothing. When it fills all the same (many connections resuming at once), the
//! oldest batch goes (fresh spans are worth more than stale ones) and the loss is counted.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::span::Span;

/// Spans from one frame of one traced process.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanBatch {
    /// The sending process, from `SO_PEERCRED` (not from the frame).
    pub pid: u32,
    /// The injected process this one is or descends from.
    pub root_pid: u32,
    pub spans: Vec<Span>,
    /// Spans that process dropped so far (its own bounded buffer), cumulative.
    pub dropped_in_process: u64,
    pub received_at: SystemTime,
    /// The tracer version that process runs (its hello or last status), when known: spans are
    /// labelled with it, not with this agent's, since a process may run an older tracer.
    pub tracer_version: Option<std::sync::Arc<str>>,
}

#[derive(Debug, Default)]
struct Queued {
    batches: VecDeque<SpanBatch>,
    /// Spans in `batches`: the bound that matters for memory (a batch holds 1 to 256 spans).
    spans: usize,
}

#[derive(Debug)]
struct Inner {
    batches: Mutex<Queued>,
    capacity: usize,
    max_spans: usize,
    notify: Notify,
    dropped_batches: AtomicU64,
    dropped_spans: AtomicU64,
    congested: AtomicBool,
    /// Wakes every connection waiting for room once congestion ends.
    room: Notify,
    waits: AtomicU64,
}

/// Cloneable; every clone is the same queue.
#[derive(Debug, Clone)]
pub struct SpanQueue {
    inner: Arc<Inner>,
}

impl SpanQueue {
    pub fn new(capacity: usize) -> Self {
        Self::with_span_limit(capacity, usize::MAX)
    }

    /// At most `capacity` batches and `max_spans` spans (one batch is always accepted).
    pub fn with_span_limit(capacity: usize, max_spans: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                batches: Mutex::new(Queued {
                    batches: VecDeque::with_capacity(capacity.min(1024)),
                    spans: 0,
                }),
                capacity: capacity.max(1),
                max_spans,
                notify: Notify::new(),
                dropped_batches: AtomicU64::new(0),
                dropped_spans: AtomicU64::new(0),
                congested: AtomicBool::new(false),
                room: Notify::new(),
                waits: AtomicU64::new(0),
            }),
        }
    }

    pub fn push(&self, batch: SpanBatch) {
        {
            let mut q = self.inner.batches.lock();
            while q.batches.len() >= self.inner.capacity
                || (!q.batches.is_empty() && q.spans + batch.spans.len() > self.inner.max_spans)
            {
                let Some(old) = q.batches.pop_front() else {
                    break;
                };
                q.spans -= old.spans.len();
                self.inner.dropped_batches.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .dropped_spans
                    .fetch_add(old.spans.len() as u64, Ordering::Relaxed);
            }
            q.spans += batch.spans.len();
            q.batches.push_back(batch);
            if self.above(&q, 3) {
                self.inner.congested.store(true, Ordering::Relaxed);
            }
        }
        self.inner.notify.notify_one();
    }

    pub fn try_pop(&self) -> Option<SpanBatch> {
        let mut q = self.inner.batches.lock();
        let b = q.batches.pop_front()?;
        q.spans -= b.spans.len();
        // Hysteresis: waiting connections resume together at half, not one frame at a time.
        if self.inner.congested.load(Ordering::Relaxed) && !self.above(&q, 2) {
            self.inner.congested.store(false, Ordering::Relaxed);
            self.inner.room.notify_waiters();
        }
        Some(b)
    }

    /// Whether batches or spans fill more than `quarters`/4 of their bound.
    fn above(&self, q: &Queued, quarters: usize) -> bool {
        let over = |n: usize, bound: usize| n > bound / 4 * quarters;
        over(q.batches.len(), self.inner.capacity) || over(q.spans, self.inner.max_spans)
    }

    pub fn is_congested(&self) -> bool {
        self.inner.congested.load(Ordering::Relaxed)
    }

    /// Returns at once unless the queue is congested; then waits until the pipeline drained it.
    pub async fn wait_for_room(&self) {
        let mut counted = false;
        loop {
            // Registered before the check, so a wake-up between the two is not lost.
            let room = self.inner.room.notified();
            if !self.is_congested() {
                return;
            }
            if !counted {
                counted = true;
                self.inner.waits.fetch_add(1, Ordering::Relaxed);
            }
            room.await;
        }
    }

    /// Times a reader waited for room.
    pub fn waits(&self) -> u64 {
        self.inner.waits.load(Ordering::Relaxed)
    }

    /// Waits for the next batch.
    pub async fn recv(&self) -> SpanBatch {
        loop {
            let notified = self.inner.notify.notified();
            if let Some(b) = self.try_pop() {
                return b;
            }
            notified.await;
        }
    }

    pub fn len(&self) -> usize {
        self.inner.batches.lock().batches.len()
    }

    /// Spans waiting now.
    pub fn spans(&self) -> usize {
        self.inner.batches.lock().spans
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (batches, spans) dropped because the queue was full.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.inner.dropped_batches.load(Ordering::Relaxed),
            self.inner.dropped_spans.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(pid: u32, n: usize) -> SpanBatch {
        let span = Span {
            trace_id: 1,
            span_id: 1,
            parent_span_id: None,
            name: "x".into(),
            kind: Default::default(),
            start_unix_nano: 0,
            end_unix_nano: 0,
            status: Default::default(),
            attributes: vec![],
            events: vec![],
        };
        SpanBatch {
            tracer_version: None,
            pid,
            root_pid: pid,
            spans: vec![span; n],
            dropped_in_process: 0,
            received_at: SystemTime::now(),
        }
    }

    #[test]
    fn drops_oldest_and_counts() {
        let q = SpanQueue::new(2);
        q.push(batch(1, 3));
        q.push(batch(2, 1));
        q.push(batch(3, 1));
        assert_eq!(q.dropped(), (1, 3));
        assert_eq!(q.try_pop().map(|b| b.pid), Some(2));
        assert_eq!(q.try_pop().map(|b| b.pid), Some(3));
        assert!(q.is_empty());
    }

    #[test]
    fn bounds_spans_too() {
        let q = SpanQueue::with_span_limit(100, 5);
        q.push(batch(1, 3));
        q.push(batch(2, 2));
        q.push(batch(3, 2));
        assert_eq!(q.dropped(), (1, 3));
        assert_eq!(q.spans(), 4);
        // A batch bigger than the bound still gets in, alone.
        q.push(batch(4, 9));
        assert_eq!(q.len(), 1);
        assert_eq!(q.spans(), 9);
    }

    #[tokio::test]
    async fn congestion_holds_readers_until_drained_to_half() {
        let q = SpanQueue::with_span_limit(100, 8);
        q.push(batch(1, 6));
        assert!(!q.is_congested());
        q.push(batch(2, 1));
        assert!(q.is_congested(), "7 of 8 spans");
        let q2 = q.clone();
        let reader = tokio::spawn(async move { q2.wait_for_room().await });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        q.push(batch(3, 1));
        assert_eq!(q.try_pop().map(|b| b.pid), Some(1));
        // 2 of 8 spans left: below half.
        assert!(!q.is_congested());
        tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("reader resumed")
            .expect("join");
        assert_eq!(q.waits(), 1);
        assert_eq!(q.dropped(), (0, 0));
    }

    #[tokio::test]
    async fn recv_wakes_on_push() {
        let q = SpanQueue::new(4);
        let q2 = q.clone();
        let t = tokio::spawn(async move { q2.recv().await.pid });
        tokio::task::yield_now().await;
        q.push(batch(9, 1));
        assert_eq!(t.await.expect("join"), 9);
    }
}
