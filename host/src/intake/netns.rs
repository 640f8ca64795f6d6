//! Intake listeners inside other network namespaces (containers).
//!
//! An abstract socket is scoped to its network namespace and a socket file to its mount namespace,
//! so a process in a container can reach neither of the agent's main addresses. For such a target
//! the intake binds one more abstract socket, created by a thread that briefly joins the target's
//! network namespace (the socket keeps that namespace for its whole life), and serves it with the
//! same accept loop, peer check and queue. Nothing is written into the container's filesystem.
//!
//! One listener per namespace, shared by every target in it; it is closed once none of its
//! targets lives and no peer that connected from that namespace is still connected.
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{connection, IntakeAddress, IntakeError, Shared};
use crate::discover::namespaces;

/// How often unused listeners are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

pub(super) struct NsListener {
    address: IntakeAddress,
    accept_task: tokio::task::JoinHandle<()>,
    /// (pid, start time) of each target this listener was handed out for.
    targets: Vec<(u32, u64)>,
}

#[derive(Default)]
pub(super) struct NsListeners {
    by_netns: HashMap<u64, NsListener>,
}

impl NsListeners {
    pub fn len(&self) -> usize {
        self.by_netns.len()
    }

    pub fn close_all(&mut self) {
        for (_, l) in self.by_netns.drain() {
            l.accept_task.abort();
        }
    }
}

/// The listener for the network namespace `netns` that `pid` lives in, created on first use.
pub(super) fn listener_for(
    shared: &Arc<Shared>,
    pid: u32,
    netns: u64,
) -> Result<IntakeAddress, IntakeError> {
    let start = start_time(pid).ok_or(IntakeError::NoSuchTarget(pid))?;
    let mut all = shared.netns.lock();
    if let Some(l) = all.by_netns.get_mut(&netns) {
        if !l.targets.contains(&(pid, start)) {
            l.targets.push((pid, start));
        }
        return Ok(l.address.clone());
    }
    let name = unique_name()?;
    let address = IntakeAddress::Abstract(name);
    let bind_addr = address.clone();
    let std_listener = namespaces::in_netns_of(pid, move || super::bind(&bind_addr))
        .map_err(|e| IntakeError::Namespace(pid, e))??;
    let shown = address.bootstrap_param();
    std_listener
        .set_nonblocking(true)
        .map_err(|e| IntakeError::Bind(shown.clone(), e))?;
    let listener = {
        let _rt = shared.runtime.enter();
        tokio::net::UnixListener::from_std(std_listener).map_err(|e| IntakeError::Bind(shown, e))?
    };
    let accept_task = shared
        .runtime
        .spawn(connection::accept_loop(listener, shared.clone()));
    tracing::info!(pid, netns, address = %address.bootstrap_param(), "intake: listening inside a container's network namespace");
    all.by_netns.insert(
        netns,
        NsListener {
            address: address.clone(),
            accept_task,
            targets: vec![(pid, start)],
        },
    );
    Ok(address)
}

/// Closes listeners nobody can use any more, until the intake is gone.
pub(super) async fn prune_loop(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        prune(&shared);
    }
}

fn prune(shared: &Shared) {
    let peer_netns: Vec<u64> = shared
        .peers
        .lock()
        .keys()
        .map(|pid| namespaces::ns_inode(*pid, "net"))
        .collect();
    let mut all = shared.netns.lock();
    all.by_netns.retain(|netns, l| {
        l.targets
            .retain(|(pid, start)| start_time(*pid) == Some(*start));
        let used = !l.targets.is_empty() || peer_netns.contains(netns);
        if !used {
            l.accept_task.abort();
            tracing::info!(
                netns,
                "intake: closed the listener of a network namespace no longer in use"
            );
        }
        used
    });
}

fn start_time(pid: u32) -> Option<u64> {
    procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()
        .map(|s| s.starttime)
}

/// Unique per agent and listener, so two agents (or tests) never collide in one namespace.
fn unique_name() -> Result<String, IntakeError> {
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).map_err(|e| {
        IntakeError::Bind("@zerostep-…".into(), std::io::Error::other(e.to_string()))
    })?;
    Ok(format!(
        "zerostep-{}-{}",
        std::process::id(),
        hex::encode(raw)
    ))
}
