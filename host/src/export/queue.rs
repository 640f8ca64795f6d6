//! A bounded queue of spans that holds the pipeline's batches as they came (no span is copied on
//! submit) and drops the oldest spans when full.
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use crate::pipeline::EnrichedBatch;

/// The spans `range` of `batch`.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub batch: Arc<EnrichedBatch>,
    pub range: Range<usize>,
}

impl Part {
    pub fn len(&self) -> usize {
        self.range.len()
    }
}

#[derive(Debug)]
pub(crate) struct SpanQueue {
    parts: VecDeque<Part>,
    len: usize,
    cap: usize,
}

impl SpanQueue {
    pub fn new(cap: usize) -> Self {
        Self {
            parts: VecDeque::new(),
            len: 0,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the batch's spans; returns how many spans (oldest first, possibly of this batch)
    /// were dropped to stay within the bound.
    pub fn push(&mut self, batch: Arc<EnrichedBatch>) -> usize {
        let n = batch.spans.len();
        if n == 0 {
            return 0;
        }
        let mut dropped = 0;
        let start = n.saturating_sub(self.cap);
        dropped += start;
        let kept = n - start;
        dropped += self.drop_oldest((self.len + kept).saturating_sub(self.cap));
        self.parts.push_back(Part {
            batch,
            range: start..n,
        });
        self.len += kept;
        dropped
    }

    fn drop_oldest(&mut self, mut count: usize) -> usize {
        let wanted = count;
        while count > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            let take = count.min(front.len());
            front.range.start += take;
            count -= take;
            self.len -= take;
            if front.range.is_empty() {
                self.parts.pop_front();
            }
        }
        wanted - count
    }

    /// Removes up to `max` spans from the front, in order.
    pub fn take(&mut self, max: usize) -> Vec<Part> {
        let mut out = Vec::new();
        let mut left = max;
        while left > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            let take = left.min(front.len());
            let end = front.range.start + take;
            out.push(Part {
                batch: front.batch.clone(),
                range: front.range.start..end,
            });
            front.range.start = end;
            left -= take;
            self.len -= take;
            if front.range.is_empty() {
                self.parts.pop_front();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Resource;
    use crate::span::{Span, SpanKind, Status};

    fn batch(ids: Range<u64>) -> Arc<EnrichedBatch> {
        let resource = Arc::new(Resource {
            service_name: "s".into(),
            host_name: "h".into(),
            pid: 1,
            executable: String::new(),
            command_line: String::new(),
            runtime_version: String::new(),
            technology: String::new(),
            role: String::new(),
            tracer_version: String::new(),
        });
        let spans = ids
            .map(|id| Span {
                trace_id: 1,
                span_id: id,
                parent_span_id: None,
                name: "n".into(),
                kind: SpanKind::Server,
                start_unix_nano: 0,
                end_unix_nano: 0,
                status: Status::default(),
                attributes: vec![],
                events: vec![],
            })
            .collect();
        Arc::new(EnrichedBatch { resource, spans })
    }

    fn ids(parts: &[Part]) -> Vec<u64> {
        parts
            .iter()
            .flat_map(|p| p.batch.spans[p.range.clone()].iter().map(|s| s.span_id))
            .collect()
    }

    #[test]
    fn takes_in_order_across_batches() {
        let mut q = SpanQueue::new(100);
        assert_eq!(q.push(batch(0..3)), 0);
        assert_eq!(q.push(batch(3..8)), 0);
        assert_eq!(q.len(), 8);
        assert_eq!(ids(&q.take(4)), vec![0, 1, 2, 3]);
        assert_eq!(ids(&q.take(10)), vec![4, 5, 6, 7]);
        assert!(q.is_empty());
        assert!(q.take(3).is_empty());
    }

    #[test]
    fn full_queue_drops_oldest() {
        let mut q = SpanQueue::new(5);
        assert_eq!(q.push(batch(0..3)), 0);
        assert_eq!(q.push(batch(3..6)), 1);
        assert_eq!(q.push(batch(6..8)), 2);
        assert_eq!(q.len(), 5);
        // A batch larger than the whole queue keeps only its newest spans.
        assert_eq!(q.push(batch(8..20)), 12);
        assert_eq!(ids(&q.take(100)), vec![15, 16, 17, 18, 19]);
        assert_eq!(q.push(batch(0..0)), 0);
    }
}
