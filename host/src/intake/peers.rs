//! Who may talk to the intake: processes the agent injected, and their descendants (forked workers).
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

/// How far up the process tree a peer may be from an injected process (gunicorn master → worker is
/// one step; a worker's own children, two).
const MAX_ANCESTRY: usize = 16;

/// The shared allow-list. The injector (or orchestrator) calls [`PeerRegistry::allow`] before it
/// injects; the intake checks each connecting peer's pid and its ancestors against it.
///
/// Entries carry the process's start time, so a pid reused by an unrelated process is not trusted.
#[derive(Debug, Clone, Default)]
pub struct PeerRegistry {
    allowed: Arc<RwLock<HashMap<u32, Option<u64>>>>,
}

impl PeerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `pid` and, from then on, every process that descends from it.
    pub fn allow(&self, pid: u32) {
        let start = stat(pid).map(|s| s.start_time);
        self.allowed.write().insert(pid, start);
    }

    pub fn revoke(&self, pid: u32) {
        self.allowed.write().remove(&pid);
    }

    /// The allowed pid `pid` is or descends from, if any.
    pub fn allowed_root(&self, pid: u32) -> Option<u32> {
        let allowed = self.allowed.read();
        if allowed.is_empty() {
            return None;
        }
        let mut cur = pid;
        for _ in 0..MAX_ANCESTRY {
            let st = stat(cur)?;
            if let Some(want) = allowed.get(&cur) {
                if want.is_none() || *want == Some(st.start_time) {
                    return Some(cur);
                }
            }
            if st.ppid <= 1 {
                return None;
            }
            cur = st.ppid;
        }
        None
    }

    pub fn is_allowed(&self, pid: u32) -> bool {
        self.allowed_root(pid).is_some()
    }
}

struct Stat {
    ppid: u32,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let st = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    Some(Stat {
        ppid: u32::try_from(st.ppid).ok()?,
        start_time: st.starttime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_pid_and_its_descendants_only() {
        let reg = PeerRegistry::new();
        let me = std::process::id();
        assert!(!reg.is_allowed(me));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        reg.allow(me);
        assert_eq!(reg.allowed_root(me), Some(me));
        assert_eq!(reg.allowed_root(child.id()), Some(me));
        reg.revoke(me);
        reg.allow(child.id());
        assert!(
            !reg.is_allowed(me),
            "an ancestor of an allowed pid is not allowed"
        );
        assert!(reg.is_allowed(child.id()));
        let _ = child.kill();
        let _ = child.wait();
    }
}
