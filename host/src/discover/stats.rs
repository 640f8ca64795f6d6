//! Discovery's counters, for /metrics and for the cost benchmark.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connector_active: AtomicBool,
    pub connector_events: AtomicU64,
    pub connector_overruns: AtomicU64,
    pub rescans: AtomicU64,
    pub last_rescan_us: AtomicU64,
    pub examined: AtomicU64,
    pub maps_reads: AtomicU64,
    pub inherited: AtomicU64,
    pub appeared: AtomicU64,
    pub changed: AtomicU64,
    pub exited: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_last_rescan(&self, d: Duration) {
        self.last_rescan_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DiscoveryStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiscoveryStats {
            connector_active: self.connector_active.load(Ordering::Relaxed),
            connector_events: get(&self.connector_events),
            connector_overruns: get(&self.connector_overruns),
            rescans: get(&self.rescans),
            last_rescan_us: get(&self.last_rescan_us),
            examined: get(&self.examined),
            maps_reads: get(&self.maps_reads),
            inherited: get(&self.inherited),
            appeared: get(&self.appeared),
            changed: get(&self.changed),
            exited: get(&self.exited),
            tracked_python: 0,
        }
    }
}

/// Counters since start.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Events come from the proc connector (false: periodic rescans only).
    pub connector_active: bool,
    /// Fork/exec/exit/comm/uid events read from the connector (thread events included).
    pub connector_events: u64,
    /// Times the kernel dropped connector events (ENOBUFS); each triggers a rescan.
    pub connector_overruns: u64,
    pub rescans: u64,
    pub last_rescan_us: u64,
    /// New processes or program images looked at.
    pub examined: u64,
    /// `/proc/PID/maps` reads (the expensive part).
    pub maps_reads: u64,
    /// Forks of a known Python process that took its runtime without reading maps.
    pub inherited: u64,
    pub appeared: u64,
    pub changed: u64,
    pub exited: u64,
    /// Python processes known now.
    pub tracked_python: u64,
}
