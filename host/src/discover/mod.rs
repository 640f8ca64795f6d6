//! Finding the Python processes on the host: exec/fork/exit events from the kernel's proc connector,
//! plus a periodic `/proc` rescan as a safety net (and the only source where the connector is
//! unavailable: no `CAP_NET_ADMIN`, not in the initial network namespace, or turned off).
//!
//! What the consumer receives on the channel from [`Discovery::start`], in order per process:
//! - [`DiscoveryEvent::Appeared`] once a process runs CPython: found at start, forked from a Python
//!   process (runtime inherited, no maps read), or exec'd and found to have libpython mapped
//!   (checked ~20 ms, 100 ms, 500 ms and 2 s after the exec; the loader or uWSGI's plugin loader maps
//!   it after exec). Only Python processes are ever reported; never by executable name alone.
//! - [`DiscoveryEvent::Changed`] when a reported process's cmdline (setproctitle, e.g. gunicorn
//!   workers), effective uid or parent changed. `pid` and `start_time` stay the same.
//! - [`DiscoveryEvent::Exited`] when it exited, or when it exec'd (its old program image is gone;
//!   an `Appeared` with the same pid and start time follows if the new image is Python too).
//! - [`DiscoveryEvent::InitialScanDone`] once, after the `Appeared` of every Python process that
//!   was running at start.
//!
//! Cost: a known process costs one `stat` read per rescan, a reported one also a cmdline read;
//! maps are read only for new or exec'd processes (see [`DiscoveryStats::maps_reads`]).
mod connector;
pub mod namespaces;
mod probe;
mod process;
pub mod python_runtime;
mod stats;
mod tracker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::mpsc;

pub use namespaces::Namespaces;
pub use process::{LibPython, ProcessInfo, PythonRuntime};
pub use stats::DiscoveryStats;

use connector::{Connector, Event, Recv};
use stats::Counters;
use tracker::Tracker;

/// The longest the discovery thread sleeps before looking at its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(250);
/// Rescans triggered by connector overruns are at least this far apart.
const MIN_RESCAN_GAP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// How often `/proc` is walked in full (the safety net; the only source without connector).
    pub rescan_interval: Duration,
    /// Listen to the proc connector (falls back to rescans alone, logged once, if unavailable).
    pub use_connector: bool,
    /// When to look again at an exec'd process that has no libpython yet, counted from the exec.
    pub recheck_after_exec: Vec<Duration>,
    /// Events buffered for a slow consumer; when full, discovery waits (the kernel may then drop
    /// connector events, which triggers a rescan: nothing is lost, only later).
    pub channel_capacity: usize,
    /// Kernel buffer for connector events, for bursts (a `make -j` forks thousands of processes a
    /// second). When it overflows, the kernel drops events and discovery rescans.
    pub connector_buffer_bytes: usize,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            rescan_interval: Duration::from_secs(5),
            use_connector: true,
            recheck_after_exec: [20, 100, 500, 2000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            channel_capacity: 1024,
            connector_buffer_bytes: 4 << 20,
        }
    }
}

/// What the orchestrator receives. See the module documentation for the order and meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DiscoveryEvent {
    Appeared(ProcessInfo),
    Changed(ProcessInfo),
    Exited { pid: u32, start_time: u64 },
    InitialScanDone,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("/proc is not readable: {0}")]
    Proc(String),
    #[error("starting the discovery thread: {0}")]
    Thread(#[source] std::io::Error),
}

struct Shared {
    counters: Arc<Counters>,
    snapshot: Arc<RwLock<HashMap<u32, ProcessInfo>>>,
    stop: AtomicBool,
}

/// Running discovery (its own thread). Dropping it stops the thread; the channel then closes.
pub struct Discovery {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Discovery {
    /// Subscribes to the connector, scans `/proc` once and keeps watching on a thread of its own.
    /// Callable from inside or outside a tokio runtime.
    pub fn start(
        config: DiscoveryConfig,
    ) -> Result<(Discovery, mpsc::Receiver<DiscoveryEvent>), DiscoveryError> {
        procfs::process::all_processes().map_err(|e| DiscoveryError::Proc(e.to_string()))?;
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let shared = Arc::new(Shared {
            counters: Arc::new(Counters::default()),
            snapshot: Arc::new(RwLock::new(HashMap::new())),
            stop: AtomicBool::new(false),
        });
        // Subscribed before the first scan, so nothing started in between is missed.
        let connector = if config.use_connector {
            open_connector(config.connector_buffer_bytes)
        } else {
            None
        };
        shared
            .counters
            .connector_active
            .store(connector.is_some(), Ordering::Relaxed);
        let worker = Worker {
            tracker: Tracker::new(
                config.recheck_after_exec.clone(),
                shared.counters.clone(),
                shared.snapshot.clone(),
            ),
            connector,
            config,
            shared: shared.clone(),
            tx,
        };
        let thread = std::thread::Builder::new()
            .name("zerostep-discover".into())
            .spawn(move || worker.run())
            .map_err(DiscoveryError::Thread)?;
        Ok((
            Discovery {
                shared,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// The Python processes known now, by pid.
    pub fn snapshot(&self) -> Vec<ProcessInfo> {
        let mut v: Vec<ProcessInfo> = self.shared.snapshot.read().values().cloned().collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    pub fn stats(&self) -> DiscoveryStats {
        DiscoveryStats {
            tracked_python: self.shared.snapshot.read().len() as u64,
            ..self.shared.counters.snapshot()
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_connector(buffer: usize) -> Option<Connector> {
    match Connector::open(buffer) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "discovery: proc connector unavailable, rescanning /proc only");
            None
        }
    }
}

struct Worker {
    tracker: Tracker,
    connector: Option<Connector>,
    config: DiscoveryConfig,
    shared: Arc<Shared>,
    tx: mpsc::Sender<DiscoveryEvent>,
}

impl Worker {
    fn run(mut self) {
        self.tracker.rescan();
        self.tracker.out.push(DiscoveryEvent::InitialScanDone);
        let mut last_rescan = Instant::now();
        let mut next_rescan = last_rescan + self.config.rescan_interval;
        while self.flush() {
            let now = Instant::now();
            if now >= next_rescan {
                self.tracker.rescan();
                last_rescan = now;
                next_rescan = now + self.config.rescan_interval;
            }
            self.tracker.run_due_rechecks(now);
            if !self.flush() {
                break;
            }
            let until = self
                .tracker
                .next_due()
                .map_or(next_rescan, |d| d.min(next_rescan));
            let wait = until
                .saturating_duration_since(Instant::now())
                .min(MAX_WAIT);
            match self.connector.as_mut().map(|c| c.recv(wait)) {
                None => std::thread::sleep(wait),
                Some(Ok(Recv::Timeout)) => {}
                Some(Ok(Recv::Event(ev))) => self.on_event(ev),
                Some(Ok(Recv::Overrun)) => {
                    Counters::bump(&self.shared.counters.connector_overruns);
                    tracing::debug!("discovery: connector overrun, rescanning");
                    // Soon, but not more often than this however fast the kernel overflows.
                    next_rescan = next_rescan.min(last_rescan + MIN_RESCAN_GAP);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "discovery: proc connector failed, rescanning /proc only");
                    self.connector = None;
                    self.shared
                        .counters
                        .connector_active
                        .store(false, Ordering::Relaxed);
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        Counters::bump(&self.shared.counters.connector_events);
        match ev {
            Event::Fork { parent, child } => self.tracker.on_fork(parent, child),
            Event::Exec(pid) => self.tracker.on_exec(pid),
            Event::Exit(pid) => self.tracker.on_exit(pid),
            Event::Refresh(pid) => self.tracker.on_refresh(pid),
            Event::Ignored => {}
        }
    }

    /// Hands queued events to the consumer, waiting while its channel is full. False once the
    /// consumer is gone or discovery is stopping.
    fn flush(&mut self) -> bool {
        for ev in std::mem::take(&mut self.tracker.out) {
            let mut ev = ev;
            loop {
                if self.shared.stop.load(Ordering::Relaxed) {
                    return false;
                }
                match self.tx.try_send(ev) {
                    Ok(()) => break,
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                    Err(mpsc::error::TrySendError::Full(back)) => {
                        ev = back;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        !self.shared.stop.load(Ordering::Relaxed)
    }
}

/// Time since boot, on the clock `/proc/PID/stat` start times count (`/proc/uptime`'s clock,
/// read without opening a file).
pub fn since_boot() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .ok()
        .map(Duration::from)
}

/// When a process with this start time (clock ticks since boot, `/proc/PID/stat` field 22)
/// started, as time since boot. Truncated to a tick.
pub fn started_since_boot(start_ticks: u64) -> Duration {
    Duration::from_nanos(start_ticks.saturating_mul(1_000_000_000) / procfs::ticks_per_second())
}

/// How long ago a process with this start time started; `None` if the clock cannot be read.
pub fn age_since_start(start_ticks: u64) -> Option<Duration> {
    since_boot()?.checked_sub(started_since_boot(start_ticks))
}
