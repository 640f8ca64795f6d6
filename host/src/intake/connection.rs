//! One task per peer connection: check who it is, read its frames, write it commands.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::wire::{self, PeerFrame, PeerRole};
use super::{PeerEntry, PeerInfo, Shared, SpanBatch, TRACER_MODULES, TRACER_VERSION};

/// Commands queued for one peer before `Intake::send` reports it busy.
const COMMAND_BACKLOG: usize = 16;
/// A peer that does not take our bytes within this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Tiny frames still cost: a flood of them is a flood.
const MIN_FRAME_COST: u64 = 256;

pub(super) async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let c = &shared.counters;
                // Only this loop adds connections, so checking before adding is exact and the
                // count never shows one over the limit, even for a moment.
                if c.connections.load(Ordering::Relaxed) >= shared.config.max_connections {
                    c.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                c.connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve(stream, shared.clone()).await;
                    shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "intake accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum End {
    Closed,
    Oversize(usize),
    Flooding,
    OverBudget(usize),
    Unauthenticated,
    Malformed(wire::WireError),
    Io(std::io::Error),
}

async fn serve(stream: UnixStream, shared: Arc<Shared>) {
    let pid = match stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok())
    {
        Some(pid) => pid,
        None => {
            shared
                .counters
                .rejected_peers
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Some(root_pid) = shared.registry.allowed_root(pid) else {
        shared
            .counters
            .rejected_peers
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(pid, "intake: refused a peer the agent did not inject");
        return;
    };
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(COMMAND_BACKLOG);
    tokio::spawn(write_loop(wr, rx));
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let end = read_loop(rd, &shared, pid, root_pid, id, tx).await;
    {
        let mut peers = shared.peers.lock();
        if peers.get(&pid).is_some_and(|e| e.id == id) {
            peers.remove(&pid);
        }
    }
    let c = &shared.counters;
    match end {
        End::Closed => tracing::debug!(pid, "intake: peer closed"),
        End::Io(e) => tracing::debug!(pid, error = %e, "intake: peer connection failed"),
        End::Oversize(n) => {
            c.cut_off_oversize.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pid,
                bytes = n,
                "intake: cut off a peer sending an oversized frame"
            );
        }
        End::Unauthenticated => {
            c.cut_off_unauthenticated.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pid,
                root_pid,
                "intake: cut off a peer that could not show its tree's secret"
            );
        }
        End::OverBudget(n) => {
            c.cut_off_budget.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pid,
                bytes = n,
                "intake: cut off a peer whose frame would exceed the intake's memory budget"
            );
        }
        End::Flooding => {
            c.cut_off_flooding.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pid, "intake: cut off a peer sending faster than allowed");
        }
        End::Malformed(e) => {
            c.cut_off_malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pid, error = %e, "intake: cut off a peer sending a malformed frame");
        }
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Sustained rate with a burst of twice the rate.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        Self {
            rate,
            burst: rate * 2.0,
            tokens: rate * 2.0,
            last: Instant::now(),
        }
    }

    fn take(&mut self, cost: u64) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= cost.max(MIN_FRAME_COST) as f64;
        self.tokens >= 0.0
    }
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    shared: &Shared,
    pid: u32,
    root_pid: u32,
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
) -> End {
    let mut bucket = TokenBucket::new(shared.config.max_bytes_per_sec);
    let mut head = [0u8; wire::LEN_PREFIX];
    let mut tx = Some(tx);
    let mut sends_spans = false;
    loop {
        // While the pipeline is behind, a tracer's frames stay unread: its reporter never blocks
        // (non-blocking sends into a bounded buffer), so it keeps them and then drops and counts
        // them in-process, instead of us decoding spans the queue would drop. Only a connection
        // that has sent spans waits: a bootstrap's hello is awaited by the target's main thread.
        if sends_spans {
            shared.queue.wait_for_room().await;
        }
        if let Err(e) = rd.read_exact(&mut head).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                End::Closed
            } else {
                End::Io(e)
            };
        }
        let n = u32::from_be_bytes(head) as usize;
        if n > shared.config.max_frame_bytes {
            return End::Oversize(n);
        }
        if !bucket.take((n + wire::LEN_PREFIX) as u64) {
            return End::Flooding;
        }
        let mut held = Held::new(&shared.counters);
        let body = match read_body(&mut rd, n, shared, &mut held).await {
            Ok(b) => b,
            Err(end) => return end,
        };
        let decoded = wire::decode(&body);
        drop(body);
        drop(held);
        let frame = match decoded {
            Ok(f) => f,
            Err(e) => return End::Malformed(e),
        };
        // The first frame registers the peer; its command sender moves into the registry so that
        // dropping the registry entry (Intake dropped) closes the writer.
        if let Some(tx) = tx.take() {
            if !peer_authenticated(shared, pid, root_pid, &frame) {
                return End::Unauthenticated;
            }
            // A tracer accepts no command before the agent's proof: it goes out first, before
            // the peer is visible to `Intake::send`.
            if let PeerFrame::Hello {
                role: PeerRole::Tracer,
                nonce: Some(nonce),
                root,
                ..
            } = &frame
            {
                if let Some(p) = agent_proof(shared, pid, root_pid, nonce, *root) {
                    let _ = tx.try_send(wire::encode(&wire::auth_message(&p)));
                }
            }
            let info = PeerInfo {
                pid,
                root_pid,
                role: None,
                python: String::new(),
                tracer_version: None,
                connected_at: SystemTime::now(),
                spans: 0,
                dropped_in_process: 0,
                status: None,
            };
            shared.peers.lock().insert(
                pid,
                PeerEntry {
                    id,
                    info,
                    commands: tx,
                },
            );
        }
        sends_spans |= matches!(frame, PeerFrame::Spans { .. });
        handle(frame, shared, pid, root_pid, id);
    }
}

fn handle(frame: PeerFrame, shared: &Shared, pid: u32, root_pid: u32, id: u64) {
    let c = &shared.counters;
    match frame {
        PeerFrame::Hello {
            role,
            python,
            version,
            installed,
            nonce,
            root,
            ..
        } => {
            let proof = match (&role, nonce) {
                (PeerRole::Bootstrap, Some(n)) => agent_proof(shared, pid, root_pid, &n, root),
                _ => None,
            };
            // The bundles are looked up before the peers' lock is taken (the source asks the
            // sensors' directory, which must never wait for the intake).
            let config = (role == PeerRole::Bootstrap).then(|| shared.tracer_config_for(pid));
            let mut peers = shared.peers.lock();
            let Some(entry) = peers.get_mut(&pid).filter(|e| e.id == id) else {
                return;
            };
            entry.info.python = python;
            entry.info.tracer_version = version.or(installed);
            if let Some(config) = config {
                let mut msg = wire::load_message(TRACER_VERSION, TRACER_MODULES, &config);
                if let Some(p) = proof {
                    msg["proof"] = p.into();
                }
                if entry.commands.try_send(wire::encode(&msg)).is_ok() {
                    c.modules_served.fetch_add(1, Ordering::Relaxed);
                    entry.info.tracer_version = Some(TRACER_VERSION.to_string());
                }
            }
            entry.info.role = Some(role);
        }
        PeerFrame::Spans {
            dropped_in_process,
            spans,
        } => {
            c.batches.fetch_add(1, Ordering::Relaxed);
            c.spans.fetch_add(spans.len() as u64, Ordering::Relaxed);
            let mut tracer_version = None;
            if let Some(entry) = shared.peers.lock().get_mut(&pid) {
                entry.info.spans += spans.len() as u64;
                entry.info.dropped_in_process = dropped_in_process;
                tracer_version = entry.info.tracer_version.as_deref().map(Arc::from);
            }
            if !spans.is_empty() {
                shared.queue.push(SpanBatch {
                    pid,
                    root_pid,
                    spans,
                    dropped_in_process,
                    received_at: SystemTime::now(),
                    tracer_version,
                });
            }
        }
        PeerFrame::Status {
            status,
            dropped_in_process,
            ..
        } => {
            if let Some(entry) = shared.peers.lock().get_mut(&pid) {
                entry.info.dropped_in_process = dropped_in_process;
                if let Some(v) = status.get("version").and_then(|v| v.as_str()) {
                    entry.info.tracer_version = Some(v.to_string());
                }
                entry.info.status = Some(status);
            }
        }
    }
}

/// The answer to a peer's nonce, for the root its secret was made for (the registry's root when
/// it names none). None when that root is neither the peer nor one of its ancestors: the agent
/// never signs for an unrelated process (see `auth.rs`).
fn agent_proof(
    shared: &Shared,
    pid: u32,
    root_pid: u32,
    nonce: &str,
    root: Option<(u32, u64)>,
) -> Option<String> {
    let root = root.or_else(|| super::auth::process_root(root_pid))?;
    if !super::auth::is_self_or_ancestor(pid, root) {
        tracing::warn!(
            pid,
            claimed_root = root.0,
            "intake: a peer asked for the proof of a process it does not descend from"
        );
        return None;
    }
    Some(super::auth::proof(
        &shared.key.secret(root.0, root.1),
        nonce,
    ))
}

/// Bytes of one peer's partly received frame, counted in the intake-wide gauge until dropped.
struct Held<'a> {
    counters: &'a super::Counters,
    bytes: usize,
}

impl<'a> Held<'a> {
    fn new(counters: &'a super::Counters) -> Self {
        Held { counters, bytes: 0 }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.counters
            .inflight_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Reads a frame body of `n` bytes, growing the buffer only as bytes arrive (a length prefix
/// alone costs nothing) and taking each growth from the intake-wide budget.
async fn read_body(
    rd: &mut OwnedReadHalf,
    n: usize,
    shared: &Shared,
    held: &mut Held<'_>,
) -> Result<Vec<u8>, End> {
    const CHUNK: usize = 256 << 10;
    let budget = shared.config.max_inflight_bytes;
    let mut body = Vec::new();
    while body.len() < n {
        let step = CHUNK.min(n - body.len());
        let before = shared
            .counters
            .inflight_bytes
            .fetch_add(step, Ordering::Relaxed);
        held.bytes += step;
        if before + step > budget {
            return Err(End::OverBudget(n));
        }
        let start = body.len();
        body.reserve_exact(step);
        body.resize(start + step, 0);
        if let Err(e) = rd.read_exact(&mut body[start..]).await {
            return Err(End::Io(e));
        }
    }
    Ok(body)
}

/// Whether a peer whose first frame is `frame` may stay. A hello with a nonce and tag must carry
/// the tag for its root (itself or an ancestor, as for the proof); a tree whose bootstrap carried
/// a secret, or that has shown one since (tracers injected by an earlier agent run), must say
/// such a hello; trees without a secret (tracers from before secrets) need not.
fn peer_authenticated(shared: &Shared, pid: u32, root_pid: u32, frame: &PeerFrame) -> bool {
    let registry_root = super::auth::process_root(root_pid);
    if let PeerFrame::Hello {
        nonce: Some(nonce),
        root,
        tag: Some(tag),
        ..
    } = frame
    {
        let Some(claimed) = root.or(registry_root) else {
            return false;
        };
        let ok = super::auth::is_self_or_ancestor(pid, claimed)
            && super::auth::ct_eq(
                tag,
                &super::auth::tracer_tag(&shared.key.secret(claimed.0, claimed.1), nonce),
            );
        if ok {
            if let Some((p, start)) = registry_root {
                shared.remember_secret_root(p, start);
            }
        }
        return ok;
    }
    let want = shared.secret_roots.lock().get(&root_pid).copied();
    // A recycled pid is not the tree the secret was made for.
    want.is_none() || registry_root.map(|r| r.1) != want
}
