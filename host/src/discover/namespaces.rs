//! Which pid, mount and network namespaces a process lives in, compared with the agent's, and a way
//! to create a socket inside another process's network namespace.
//!
//! A container is not a kernel object: a process is "in a container" when some of its namespaces
//! differ from the agent's. Two of them matter to zerostep: a different mount namespace hides the
//! agent's socket files (ELF files are read through `/proc/PID/root`), and a different network
//! namespace hides the agent's abstract sockets (so the intake listens inside that namespace too).
use std::os::fd::AsFd;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Namespace inode numbers (`readlink /proc/PID/ns/X` → `X:[inode]`) and whether each differs from
/// the agent's own. Zero means unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Namespaces {
    pub pid: u64,
    pub mnt: u64,
    pub net: u64,
    pub pid_differs: bool,
    pub mnt_differs: bool,
    pub net_differs: bool,
}

impl Namespaces {
    /// Reads the namespaces of `pid`. Unreadable entries are 0 and never "differ".
    pub fn of(pid: u32) -> Namespaces {
        let agent = agent();
        let (p, m, n) = (
            ns_inode(pid, "pid"),
            ns_inode(pid, "mnt"),
            ns_inode(pid, "net"),
        );
        let differs = |mine: u64, theirs: u64| mine != 0 && theirs != 0 && mine != theirs;
        Namespaces {
            pid: p,
            mnt: m,
            net: n,
            pid_differs: differs(agent.0, p),
            mnt_differs: differs(agent.1, m),
            net_differs: differs(agent.2, n),
        }
    }

    /// Any namespace that matters differs from the agent's: the process runs in a container.
    pub fn is_foreign(&self) -> bool {
        self.pid_differs || self.mnt_differs || self.net_differs
    }
}

/// The agent's own (pid, mnt, net) inodes, read once.
fn agent() -> (u64, u64, u64) {
    static AGENT: OnceLock<(u64, u64, u64)> = OnceLock::new();
    *AGENT.get_or_init(|| {
        let me = std::process::id();
        (
            ns_inode(me, "pid"),
            ns_inode(me, "mnt"),
            ns_inode(me, "net"),
        )
    })
}

/// The agent's network namespace inode (0 if unreadable).
pub fn agent_net() -> u64 {
    agent().2
}

/// The inode of one namespace of `pid`, 0 if it cannot be read.
pub fn ns_inode(pid: u32, kind: &str) -> u64 {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .and_then(|l| parse_ns_link(&l.to_string_lossy()))
        .unwrap_or(0)
}

/// `net:[4026531840]` → 4026531840.
fn parse_ns_link(link: &str) -> Option<u64> {
    let (_, rest) = link.split_once(":[")?;
    rest.strip_suffix(']')?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening the network namespace of pid {0}: {1}")]
    Open(u32, #[source] std::io::Error),
    #[error("entering the network namespace of pid {0}: {1}")]
    Enter(u32, #[source] nix::Error),
    #[error("the helper thread for pid {0}'s network namespace panicked")]
    Thread(u32),
}

/// Runs `f` on a short-lived thread that has joined the network namespace of `pid`, and returns what
/// it returned. Sockets created by `f` stay in that namespace for their whole life, wherever they
/// are used afterwards; the calling thread and the rest of the agent are not moved.
pub fn in_netns_of<T, F>(pid: u32, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns =
        std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| NetnsError::Open(pid, e))?;
    let handle = std::thread::Builder::new()
        .name("zerostep-netns".into())
        .spawn(move || -> Result<T, NetnsError> {
            // setns affects this thread only; it ends right after `f`.
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetnsError::Enter(pid, e))?;
            Ok(f())
        })
        .map_err(|e| NetnsError::Open(pid, e))?;
    handle.join().map_err(|_| NetnsError::Thread(pid))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_links_and_reads_own_namespaces() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("garbage"), None);
        let me = Namespaces::of(std::process::id());
        assert!(me.net != 0 && me.pid != 0 && me.mnt != 0);
        assert!(!me.is_foreign());
    }
}
