//! Latency histograms for the per-minute rollups: fixed log-scale buckets (4 per power of two, so a
//! percentile is within ~9 % of the truth), stored sparse so a quiet minute costs a few bytes, and
//! merged across minutes at query time. Fixed buckets (rather than hdrhistogram) because rollups of
//! different minutes and endpoints must merge by plain addition and encode to a small blob.

/// Buckets per power of two.
const SUB: f64 = 4.0;
/// Bucket 0 holds everything up to 1 µs; the last one everything above ~2^40 µs.
pub const BUCKETS: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
        }
    }
}

fn bucket_of(duration_ns: u64) -> usize {
    let us = duration_ns as f64 / 1000.0;
    if us <= 1.0 {
        return 0;
    }
    let b = (us.log2() * SUB).ceil() as usize;
    b.min(BUCKETS - 1)
}

/// The upper bound of a bucket, in nanoseconds.
fn bucket_upper_ns(bucket: usize) -> f64 {
    2f64.powf(bucket as f64 / SUB) * 1000.0
}

impl Histogram {
    pub fn record(&mut self, duration_ns: u64) {
        self.counts[bucket_of(duration_ns)] += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value below which `q` (0..=1) of the samples fall, in milliseconds; 0 when empty.
    /// Interpolated geometrically inside the bucket that holds the rank.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let upper = bucket_upper_ns(b);
                let lower = if b == 0 { 0.0 } else { bucket_upper_ns(b - 1) };
                let frac = (rank - seen as f64) / c as f64;
                return (lower + (upper - lower) * frac) / 1e6;
            }
            seen += c;
        }
        bucket_upper_ns(BUCKETS - 1) / 1e6
    }

    /// The non-empty buckets: (lower bound ms, upper bound ms, count), fastest first.
    pub fn buckets_ms(&self) -> Vec<(f64, f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(b, &c)| {
                let lower = if b == 0 { 0.0 } else { bucket_upper_ns(b - 1) };
                (lower / 1e6, bucket_upper_ns(b) / 1e6, c)
            })
            .collect()
    }

    /// Sparse encoding: (bucket u8, count as LEB128) for every non-empty bucket.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_into(&mut out);
        out
    }

    /// As `encode`, into a reused buffer (cleared first).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        for (b, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            out.push(b as u8);
            let mut v = c;
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
    }

    /// Adds an encoded histogram to this one. A malformed blob stops at the first bad byte: the
    /// rollup is then undercounted rather than the query failing.
    pub fn merge_encoded(&mut self, mut blob: &[u8]) {
        while let Some((&b, rest)) = blob.split_first() {
            let mut v = 0u64;
            let mut shift = 0;
            let mut used = 0;
            let mut done = false;
            for &byte in rest {
                used += 1;
                if shift < 64 {
                    v |= u64::from(byte & 0x7f) << shift;
                }
                shift += 7;
                if byte & 0x80 == 0 {
                    done = true;
                    break;
                }
            }
            if !done || usize::from(b) >= BUCKETS {
                return;
            }
            self.counts[usize::from(b)] += v;
            blob = &rest[used..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(ms * 1_000_000);
        }
        for (q, want) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile_ms(q);
            assert!((got - want).abs() / want < 0.1, "q{q}: {got} vs {want}");
        }
    }

    #[test]
    fn encode_roundtrip_and_merge() {
        let mut a = Histogram::default();
        a.record(0);
        a.record(5_000);
        for _ in 0..300 {
            a.record(u64::MAX);
        }
        let mut b = Histogram::default();
        b.merge_encoded(&a.encode());
        assert_eq!(a, b);
        b.merge_encoded(&a.encode());
        assert_eq!(b.total(), 2 * a.total());
        // Garbage never panics.
        b.merge_encoded(&[255, 1, 3, 0x80]);
        assert_eq!(Histogram::default().quantile_ms(0.5), 0.0);
    }
}
