//! The Unix-socket server that traced processes send their spans to (issue: tracer and intake).
//!
//! A peer is accepted only if its pid (`SO_PEERCRED`) is one the agent injected or descends from
//! one ([`PeerRegistry`]). Each connection speaks length-prefixed JSON frames (schema in README.md):
//! a bootstrap says hello and gets the tracer's modules; a tracer sends span batches and status.
//! Decoded batches go to a [`SpanQueue`] (bounded; while it is congested, connections that send
//! spans are not read, so traced processes hold or drop their spans themselves). The agent can send any connected
//! peer a [`Command`]. A peer that sends an oversized, malformed or too-fast stream is cut off; the
//! others never notice.
pub mod auth;
mod connection;
mod marshal;
mod marshal_frame;
mod netns;
mod peers;
mod queue;
mod tracer_source;
pub mod wire;

use std::collections::HashMap;
use std::os::linux::net::SocketAddrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;

pub use peers::PeerRegistry;
pub use queue::{SpanBatch, SpanQueue};
pub use tracer_source::{bootstrap_code, MODULES as TRACER_MODULES, TRACER_VERSION};
pub use wire::{Command, PeerRole};

/// How long a bootstrap waits to connect and be answered, in the target's main thread.
const BOOTSTRAP_TIMEOUT_SECS: f64 = 2.0;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("binding the intake socket {0}: {1}")]
    Bind(String, #[source] std::io::Error),
    #[error("no connected tracer with pid {0}")]
    NoSuchPeer(u32),
    #[error("peer {0} is not reading its commands")]
    PeerBusy(u32),
    #[error("no process with pid {0}")]
    NoSuchTarget(u32),
    #[error("listening inside the network namespace of pid {0}: {1}")]
    Namespace(u32, #[source] crate::discover::namespaces::NetnsError),
}

/// Where the intake listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeAddress {
    /// A socket file; reachable from other mount namespaces via /proc/PID/root only if shared.
    Path(PathBuf),
    /// A Linux abstract socket name (no file, scoped to the network namespace).
    Abstract(String),
}

impl IntakeAddress {
    /// The form the bootstrap's `address` parameter takes: the path, or `@name`.
    pub fn bootstrap_param(&self) -> String {
        match self {
            IntakeAddress::Path(p) => p.display().to_string(),
            IntakeAddress::Abstract(name) => format!("@{name}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IntakeConfig {
    pub address: IntakeAddress,
    /// Largest inbound frame body; a bigger length prefix cuts the peer off.
    pub max_frame_bytes: usize,
    /// Sustained inbound bytes per second per peer, with a burst of twice that.
    pub max_bytes_per_sec: u64,
    /// Batches waiting for the pipeline before the oldest is dropped.
    pub queue_capacity: usize,
    /// Spans waiting for the pipeline before the oldest batch is dropped (bounds memory).
    pub queue_max_spans: usize,
    /// Handed to every tracer at load (see host/python/zerostep/report.py for keys).
    pub tracer_config: serde_json::Value,
    /// Bytes of partly received frames, summed over all peers; a peer whose frame would take
    /// more is cut off (`cut_off_budget`). Bounds the agent's memory under a flood of peers that
    /// each announce a large frame and trickle it.
    pub max_inflight_bytes: usize,
    /// Connections open at once; more are closed as they arrive (`rejected_connections`).
    pub max_connections: usize,
    /// Derives each injected process's secret (`auth.rs`); the agent's persists in its state
    /// directory. None: a random key for this intake only.
    pub auth_key: Option<auth::IntakeKey>,
}

impl IntakeConfig {
    pub fn new(address: IntakeAddress) -> Self {
        Self {
            address,
            max_frame_bytes: 8 << 20,
            max_bytes_per_sec: 32 << 20,
            queue_capacity: 4096,
            queue_max_spans: 32_768,
            tracer_config: serde_json::json!({}),
            max_inflight_bytes: 64 << 20,
            max_connections: 4096,
            auth_key: None,
        }
    }
}

/// Counters since start.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct IntakeStats {
    pub accepted: u64,
    pub rejected_peers: u64,
    pub cut_off_malformed: u64,
    pub cut_off_oversize: u64,
    pub cut_off_flooding: u64,
    pub batches: u64,
    pub spans: u64,
    pub modules_served: u64,
    pub queue_dropped_batches: u64,
    pub queue_dropped_spans: u64,
    /// Times a connection stopped reading until the pipeline caught up (back-pressure).
    pub paused_reads: u64,
    /// Peers cut off because their frame would have gone over `max_inflight_bytes`.
    pub cut_off_budget: u64,
    /// Peers of a tree injected with a secret that could not show it (a process of that tree
    /// connecting by itself, or a forged tag).
    pub cut_off_unauthenticated: u64,
    /// Connections closed on arrival, over `max_connections`.
    pub rejected_connections: u64,
    /// Bytes of partly received frames now, and connections open now.
    pub inflight_bytes: u64,
    pub connections: u64,
}

/// A connected tracer, as the agent knows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    pub pid: u32,
    pub root_pid: u32,
    pub role: Option<PeerRole>,
    pub python: String,
    pub tracer_version: Option<String>,
    pub connected_at: SystemTime,
    pub spans: u64,
    pub dropped_in_process: u64,
    /// The tracer's last status frame: instrumentations, their errors and tripped breakers.
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    rejected_peers: AtomicU64,
    cut_off_malformed: AtomicU64,
    cut_off_oversize: AtomicU64,
    cut_off_flooding: AtomicU64,
    batches: AtomicU64,
    spans: AtomicU64,
    modules_served: AtomicU64,
    cut_off_budget: AtomicU64,
    cut_off_unauthenticated: AtomicU64,
    rejected_connections: AtomicU64,
    /// Gauges: bytes held in partly received frames, connections open.
    inflight_bytes: std::sync::atomic::AtomicUsize,
    connections: std::sync::atomic::AtomicUsize,
}

struct PeerEntry {
    id: u64,
    info: PeerInfo,
    commands: mpsc::Sender<Vec<u8>>,
}

struct Shared {
    config: IntakeConfig,
    registry: PeerRegistry,
    queue: SpanQueue,
    counters: Counters,
    peers: Mutex<HashMap<u32, PeerEntry>>,
    next_id: AtomicU64,
    /// Extra listeners inside containers' network namespaces.
    netns: Mutex<netns::NsListeners>,
    bundles: parking_lot::RwLock<Option<BundleSource>>,
    runtime: tokio::runtime::Handle,
    key: auth::IntakeKey,
    /// Roots (pid → start time) whose bootstrap carried a secret: their peers must prove they
    /// hold it (`tag`), so a process of that tree that connects by itself gets nowhere.
    secret_roots: Mutex<HashMap<u32, u64>>,
    /// Differs per intake, so the injector's run-once marker (a hash of the code) lets a new
    /// agent run bootstrap a process again (e.g. one detached by the previous run).
    run_id: String,
}

/// Which instrumentation bundles a process gets: asked when its bootstrap says hello and when a
/// command carries the config (the agent's answer comes from the sensors that matched the pid).
pub type BundleSource = Arc<dyn Fn(u32) -> Vec<crate::sensors::Bundle> + Send + Sync>;

impl Shared {
    /// Marks a tree as one whose peers must show its secret. Bounded: past 4096 entries, those
    /// of processes that are gone are forgotten.
    fn remember_secret_root(&self, pid: u32, start: u64) {
        let mut roots = self.secret_roots.lock();
        if roots.len() >= 4096 && !roots.contains_key(&pid) {
            roots.retain(|p, s| auth::process_root(*p).is_some_and(|r| r.1 == *s));
        }
        roots.insert(pid, start);
    }

    /// The tracer config for one process: the intake's, plus that process's bundles.
    fn tracer_config_for(&self, pid: u32) -> serde_json::Value {
        let mut cfg = self.config.tracer_config.clone();
        let source = self.bundles.read().clone();
        let bundles = source.map(|f| f(pid)).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut cfg {
            map.insert("bundles".into(), wire::bundles_json(&bundles));
        }
        cfg
    }
}

/// The running intake. Dropping it stops accepting; connected peers are closed.
pub struct Intake {
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
    prune_task: tokio::task::JoinHandle<()>,
}

impl Intake {
    /// Binds and starts serving on the current tokio runtime. A stale socket file at a `Path`
    /// address is replaced. An abstract name someone else holds (a squatter while the agent was
    /// away, or another agent) is not fought over: the intake takes a fresh name, logs it, and
    /// tracers learn it when they are bootstrapped again (`Intake::address` says which it is).
    pub fn start(mut config: IntakeConfig, registry: PeerRegistry) -> Result<Intake, IntakeError> {
        let std_listener = match bind(&config.address) {
            Err(IntakeError::Bind(_, e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let IntakeAddress::Abstract(name) = &config.address else {
                    return Err(IntakeError::Bind(config.address.bootstrap_param(), e));
                };
                let fresh = IntakeAddress::Abstract(format!("{name}-{}", random_hex(6)));
                tracing::warn!(
                    taken = %config.address.bootstrap_param(),
                    fresh = %fresh.bootstrap_param(),
                    "intake: the socket name is held by another process; listening on a fresh one \
                     (tracers are re-bootstrapped onto it)"
                );
                let l = bind(&fresh)?;
                config.address = fresh;
                l
            }
            other => other?,
        };
        let shown = config.address.bootstrap_param();
        std_listener
            .set_nonblocking(true)
            .map_err(|e| IntakeError::Bind(shown.clone(), e))?;
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .map_err(|e| IntakeError::Bind(shown, e))?;
        let key = match config.auth_key.clone() {
            Some(k) => k,
            None => auth::IntakeKey::random()
                .map_err(|e| IntakeError::Bind(config.address.bootstrap_param(), e))?,
        };
        let shared = Arc::new(Shared {
            key,
            secret_roots: Mutex::new(HashMap::new()),
            queue: SpanQueue::with_span_limit(config.queue_capacity, config.queue_max_spans),
            config,
            registry,
            counters: Counters::default(),
            peers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            netns: Mutex::new(netns::NsListeners::default()),
            bundles: parking_lot::RwLock::new(None),
            runtime: tokio::runtime::Handle::current(),
            run_id: random_hex(8),
        });
        let accept_task = tokio::spawn(connection::accept_loop(listener, shared.clone()));
        let prune_task = tokio::spawn(netns::prune_loop(Arc::downgrade(&shared)));
        Ok(Intake {
            shared,
            accept_task,
            prune_task,
        })
    }

    pub fn address(&self) -> &IntakeAddress {
        &self.shared.config.address
    }

    /// The address a process `target_pid` can reach: the main one when it shares the agent's
    /// network namespace (and, for a socket file, its mount namespace); otherwise an abstract
    /// socket inside the target's network namespace, created on first use and shared by every
    /// target there (see `netns.rs`). Callable from any thread.
    pub fn address_for(&self, target_pid: u32) -> Result<IntakeAddress, IntakeError> {
        let ns = crate::discover::Namespaces::of(target_pid);
        if ns.net == 0 {
            return Err(IntakeError::NoSuchTarget(target_pid));
        }
        let main = &self.shared.config.address;
        let reachable = match main {
            IntakeAddress::Abstract(_) => !ns.net_differs,
            IntakeAddress::Path(_) => !ns.net_differs && !ns.mnt_differs,
        };
        if reachable {
            return Ok(main.clone());
        }
        netns::listener_for(&self.shared, target_pid, ns.net)
    }

    /// The bootstrap for injecting `target_pid` with the injector (whose wrapper contains and
    /// reports exceptions), pointing at [`Intake::address_for`] it.
    pub fn bootstrap_code_for(&self, target_pid: u32) -> Result<String, IntakeError> {
        let address = self.address_for(target_pid)?;
        let (pid, start) =
            auth::process_root(target_pid).ok_or(IntakeError::NoSuchTarget(target_pid))?;
        let agent_uid = auth::uid_seen_by(target_pid, nix::unistd::geteuid().as_raw());
        self.shared.remember_secret_root(pid, start);
        Ok(tracer_source::bootstrap_for_injector(
            &address.bootstrap_param(),
            BOOTSTRAP_TIMEOUT_SECS,
            &self.shared.run_id,
            &serde_json::json!({
                "secret": self.shared.key.secret(pid, start),
                "root": [pid, start],
                "uid": agent_uid,
            }),
        ))
    }

    /// Listeners open inside other network namespaces now.
    pub fn namespace_listeners(&self) -> usize {
        self.shared.netns.lock().len()
    }

    /// The bootstrap for the injector, pointing at this intake.
    pub fn bootstrap_code(&self) -> String {
        bootstrap_code(
            &self.shared.config.address.bootstrap_param(),
            BOOTSTRAP_TIMEOUT_SECS,
        )
    }

    pub fn registry(&self) -> &PeerRegistry {
        &self.shared.registry
    }

    /// Where span batches come out; clone it for the pipeline.
    pub fn queue(&self) -> SpanQueue {
        self.shared.queue.clone()
    }

    /// Where the bundles of each process come from (none set: no bundles, the bare core).
    pub fn set_bundle_source(&self, source: BundleSource) {
        *self.shared.bundles.write() = Some(source);
    }

    /// Sends a command to the tracer connected as `pid`. Does not wait for it to act.
    pub fn send(&self, pid: u32, command: &Command) -> Result<(), IntakeError> {
        let cfg = self.shared.tracer_config_for(pid);
        let frame = wire::encode(&wire::command_message(
            command,
            TRACER_VERSION,
            TRACER_MODULES,
            &cfg,
        ));
        let peers = self.shared.peers.lock();
        let entry = peers.get(&pid).ok_or(IntakeError::NoSuchPeer(pid))?;
        entry.commands.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IntakeError::PeerBusy(pid),
            mpsc::error::TrySendError::Closed(_) => IntakeError::NoSuchPeer(pid),
        })
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .shared
            .peers
            .lock()
            .values()
            .map(|e| e.info.clone())
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    /// Waits until a tracer with this pid is connected (a bootstrap becomes one once it loaded).
    pub async fn wait_for_peer(&self, pid: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.shared.peers.lock().contains_key(&pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn stats(&self) -> IntakeStats {
        let c = &self.shared.counters;
        let (qb, qs) = self.shared.queue.dropped();
        IntakeStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected_peers: c.rejected_peers.load(Ordering::Relaxed),
            cut_off_malformed: c.cut_off_malformed.load(Ordering::Relaxed),
            cut_off_oversize: c.cut_off_oversize.load(Ordering::Relaxed),
            cut_off_flooding: c.cut_off_flooding.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            spans: c.spans.load(Ordering::Relaxed),
            modules_served: c.modules_served.load(Ordering::Relaxed),
            queue_dropped_batches: qb,
            queue_dropped_spans: qs,
            paused_reads: self.shared.queue.waits(),
            cut_off_budget: c.cut_off_budget.load(Ordering::Relaxed),
            cut_off_unauthenticated: c.cut_off_unauthenticated.load(Ordering::Relaxed),
            rejected_connections: c.rejected_connections.load(Ordering::Relaxed),
            inflight_bytes: c.inflight_bytes.load(Ordering::Relaxed) as u64,
            connections: c.connections.load(Ordering::Relaxed) as u64,
        }
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.prune_task.abort();
        self.shared.netns.lock().close_all();
        // Closing each peer's command channel ends its connection task.
        self.shared.peers.lock().clear();
        if let IntakeAddress::Path(p) = &self.shared.config.address {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `n` random bytes, hex. Without randomness, the clock is distinct enough for names and run ids.
fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            .to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % t.len()];
        }
    }
    hex::encode(b)
}

fn bind(address: &IntakeAddress) -> Result<std::os::unix::net::UnixListener, IntakeError> {
    let shown = address.bootstrap_param();
    match address {
        IntakeAddress::Path(p) => {
            if p.exists() {
                let _ = std::fs::remove_file(p);
            }
            let l = std::os::unix::net::UnixListener::bind(p)
                .map_err(|e| IntakeError::Bind(shown.clone(), e))?;
            // Traced apps run as any user; who may talk is decided by SO_PEERCRED, not file modes.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| IntakeError::Bind(shown, e))?;
            Ok(l)
        }
        IntakeAddress::Abstract(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|e| IntakeError::Bind(shown.clone(), e))?;
            std::os::unix::net::UnixListener::bind_addr(&addr)
                .map_err(|e| IntakeError::Bind(shown, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Write};
    use std::os::unix::net::{SocketAddr, UnixStream};

    use super::*;

    /// Writes what the socket takes, as the tracer's reporter does; true once it takes no more.
    fn fill(sock: &mut UnixStream, frame: &[u8], out: &mut Vec<u8>) -> bool {
        loop {
            if out.is_empty() {
                out.extend_from_slice(frame);
            }
            match sock.write(out) {
                Ok(n) => drop(out.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) => panic!("peer write: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_congested_queue_leaves_tracers_unread_instead_of_dropping() {
        let name = format!("zerostep-test-backpressure-{}", std::process::id());
        let mut config = IntakeConfig::new(IntakeAddress::Abstract(name.clone()));
        config.queue_capacity = 8;
        let registry = PeerRegistry::new();
        registry.allow(std::process::id());
        let intake = Intake::start(config, registry).expect("intake");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let mut sock = UnixStream::connect_addr(&addr).expect("connect");
        sock.set_nonblocking(true).expect("non-blocking");
        let body = include_bytes!("testdata/tracer_313.bin");
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);

        // Nobody drains the queue: past 3/4 of 8 batches the intake stops reading, the socket
        // buffers fill, and the writer is told to wait, as the reporter would be.
        let mut out = Vec::new();
        let queue = intake.queue();
        for _ in 0..100 {
            fill(&mut sock, &frame, &mut out);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(queue.is_congested());
        assert_eq!(queue.len(), 7, "reading stopped once congested");
        assert!(fill(&mut sock, &frame, &mut out), "the socket stays full");
        let stats = intake.stats();
        assert_eq!(stats.queue_dropped_spans, 0);
        assert_eq!(stats.paused_reads, 1);

        // Drained below half: reading resumes on its own.
        while queue.try_pop().is_some() {}
        let resumed = async {
            while queue.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), resumed)
            .await
            .expect("reading resumed");
        assert_eq!(intake.stats().cut_off_malformed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_peers_stays_within_the_byte_and_connection_budgets() {
        let name = format!("zerostep-test-budget-{}", std::process::id());
        let mut config = IntakeConfig::new(IntakeAddress::Abstract(name.clone()));
        config.max_inflight_bytes = 4 << 20;
        config.max_connections = 20;
        config.max_bytes_per_sec = 1 << 30; // this test is about memory, not rate
        let registry = PeerRegistry::new();
        registry.allow(std::process::id());
        let intake = Intake::start(config, registry).expect("intake");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let flood_addr = addr.clone();
        let flood = tokio::task::spawn_blocking(move || {
            let addr = flood_addr;
            // 16 peers each announce a 4 MiB frame (allowed: under max_frame_bytes) and trickle
            // 1 MiB of it: 16 MiB if each were buffered.
            let mut socks = Vec::new();
            for _ in 0..16 {
                let mut s = UnixStream::connect_addr(&addr).expect("connect");
                s.set_write_timeout(Some(Duration::from_secs(2))).ok();
                let _ = s.write_all(&(4u32 << 20).to_be_bytes());
                let _ = s.write_all(&vec![b'x'; 1 << 20]);
                socks.push(s);
            }
            // Then more connections than allowed at once.
            for _ in 0..40 {
                if let Ok(s) = UnixStream::connect_addr(&addr) {
                    socks.push(s);
                }
            }
            socks
        });
        let socks = flood.await.expect("flood");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut peak = 0;
        let mut peak_connections = 0;
        // Every one of the 56 connections is either accepted or rejected once the intake has
        // seen them all. How many are rejected depends on how many of the trickling peers the
        // byte budget had already cut off (each frees a slot), so only "some" is certain.
        while tokio::time::Instant::now() < deadline {
            let st = intake.stats();
            peak = peak.max(st.inflight_bytes);
            peak_connections = peak_connections.max(st.connections);
            if st.cut_off_budget > 0 && st.accepted + st.rejected_connections >= 56 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = intake.stats();
        assert!(st.cut_off_budget > 0, "{st:?}");
        assert!(st.rejected_connections > 0, "{st:?}");
        assert!(
            peak_connections <= 20,
            "{peak_connections} open at once: {st:?}"
        );
        assert!(peak <= 4 << 20, "held {peak} bytes");
        drop(socks);
        let drained = async {
            loop {
                let st = intake.stats();
                if st.connections == 0 && st.inflight_bytes == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("the flood's connections and bytes were released");

        // A well-behaved peer is served as before.
        let mut sock = UnixStream::connect_addr(&addr).expect("connect");
        let body = include_bytes!("testdata/tracer_313.bin");
        sock.write_all(&(body.len() as u32).to_be_bytes())
            .expect("write");
        sock.write_all(body).expect("write");
        let queue = intake.queue();
        let got = async {
            while queue.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), got)
            .await
            .expect("the batch arrived");
    }
}
