//! Call counters and latency percentiles per sensor.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub struct CallStats {
    calls: AtomicU64,
    errors: AtomicU64,
    traps: AtomicU64,
    latency_ns: Mutex<Histogram<u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallStatsSnapshot {
    pub calls: u64,
    pub errors: u64,
    pub traps: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Default for CallStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            // 1 ns .. 60 s, 2 significant digits: a few KB.
            latency_ns: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000_000, 2)
                    .expect("constant bounds are valid"),
            ),
        }
    }
}

/// How a call ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The instance trapped (panic, limit, out of memory): it was dropped.
    Trap,
}

impl CallStats {
    pub fn record(&self, elapsed: Duration, outcome: Outcome) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Ok => {}
            Outcome::Trap => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.traps.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self.latency_ns.lock().record(ns.min(60_000_000_000));
    }

    /// A call that returned, but whose answer was refused.
    pub fn mark_refused(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CallStatsSnapshot {
        let h = self.latency_ns.lock();
        CallStatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        }
    }
}
