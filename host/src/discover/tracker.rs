//! What discovery knows about every process, and the rules that keep it cheap: a process is examined
//! (its maps read) only when it is new or has exec'd, a fork of a known Python process inherits the
//! parent's runtime, and a freshly exec'd program is re-checked a few times while its loader maps
//! libpython (or uWSGI loads its Python plugin), then never again.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use procfs::process::Process;

use super::probe::{self, Stat};
use super::python_runtime::{self, RuntimeDetails};
use super::stats::Counters;
use super::{DiscoveryEvent, Namespaces, ProcessInfo};

/// A process started this recently, found by a rescan without Python, is re-checked like an exec.
const YOUNG_SECS: u64 = 5;
/// A retitled process is looked at again this long after its comm or uid changed.
const REFRESH_AGAIN: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Found by a rescan and running for a while: judged once, no re-checks.
    Settled,
    /// Found by a rescan shortly after it started: may still be loading libpython.
    Rescan,
    Exec,
    Fork {
        parent: u32,
    },
}

/// What one look at a process's maps said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    Python,
    NotPython,
    /// The loader has not mapped the libraries yet: too early to tell.
    Unsettled,
}

struct Known {
    image: (u64, u64),
    /// Set once reported (`Appeared`): the process runs CPython.
    info: Option<ProcessInfo>,
    recheck_pending: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Recheck {
    due: Instant,
    pid: u32,
    image: (u64, u64),
    attempt: usize,
}

pub(crate) struct Tracker {
    known: HashMap<u32, Known>,
    rechecks: BinaryHeap<Reverse<Recheck>>,
    /// Second looks after a comm/uid event (a title may be written after the comm changes).
    refreshes: BinaryHeap<Reverse<(Instant, u32)>>,
    recheck_after: Vec<Duration>,
    self_pid: u32,
    counters: Arc<Counters>,
    snapshot: Arc<RwLock<HashMap<u32, ProcessInfo>>>,
    pub out: Vec<DiscoveryEvent>,
}

impl Tracker {
    pub fn new(
        recheck_after: Vec<Duration>,
        counters: Arc<Counters>,
        snapshot: Arc<RwLock<HashMap<u32, ProcessInfo>>>,
    ) -> Tracker {
        Tracker {
            known: HashMap::new(),
            rechecks: BinaryHeap::new(),
            refreshes: BinaryHeap::new(),
            recheck_after,
            self_pid: std::process::id(),
            counters,
            snapshot,
            out: Vec::new(),
        }
    }

    /// Walks `/proc`: new or exec'd processes are examined, known Python processes refreshed
    /// (cmdline, uid, parent), vanished ones reported as exited. Known non-Python processes cost one
    /// `stat` read.
    pub fn rescan(&mut self) {
        Counters::bump(&self.counters.rescans);
        let started = Instant::now();
        let Ok(all) = procfs::process::all_processes() else {
            tracing::warn!("discovery: /proc is not readable");
            return;
        };
        let young_after = probe::now_ticks()
            .map(|now| now.saturating_sub(YOUNG_SECS * procfs::ticks_per_second()));
        let mut seen = HashSet::with_capacity(self.known.len() + 16);
        for p in all.flatten() {
            let Ok(pid) = u32::try_from(p.pid) else {
                continue;
            };
            let Some(st) = probe::stat(&p) else { continue };
            if st.zombie {
                continue;
            }
            seen.insert(pid);
            let reason = match young_after {
                Some(y) if st.start_time < y => Reason::Settled,
                _ => Reason::Rescan,
            };
            self.observe(pid, &p, st, reason);
        }
        let gone: Vec<u32> = self
            .known
            .keys()
            .filter(|pid| !seen.contains(pid))
            .copied()
            .collect();
        for pid in gone {
            self.forget(pid);
        }
        self.counters.set_last_rescan(started.elapsed());
    }

    pub fn on_exec(&mut self, pid: u32) {
        self.event_for(pid, Reason::Exec);
    }

    pub fn on_fork(&mut self, parent: u32, child: u32) {
        self.event_for(child, Reason::Fork { parent });
    }

    /// The process ended (or the connector said so): report it if it was reported.
    pub fn on_exit(&mut self, pid: u32) {
        self.forget(pid);
    }

    /// A comm or uid change: a known Python process may have retitled itself or dropped privileges.
    pub fn on_refresh(&mut self, pid: u32) {
        if self.known.get(&pid).is_some_and(|k| k.info.is_some()) {
            self.event_for(pid, Reason::Rescan);
            self.refreshes
                .push(Reverse((Instant::now() + REFRESH_AGAIN, pid)));
        }
    }

    fn event_for(&mut self, pid: u32, reason: Reason) {
        let Some(p) = probe::open(pid) else {
            return self.forget(pid);
        };
        match probe::stat(&p) {
            Some(st) if !st.zombie => self.observe(pid, &p, st, reason),
            _ => self.forget(pid),
        }
    }

    /// The earliest pending re-check.
    pub fn next_due(&self) -> Option<Instant> {
        let recheck = self.rechecks.peek().map(|Reverse(r)| r.due);
        let refresh = self.refreshes.peek().map(|Reverse((due, _))| *due);
        recheck.into_iter().chain(refresh).min()
    }

    pub fn run_due_rechecks(&mut self, now: Instant) {
        while self
            .refreshes
            .peek()
            .is_some_and(|Reverse((due, _))| *due <= now)
        {
            if let Some(Reverse((_, pid))) = self.refreshes.pop() {
                if self.known.get(&pid).is_some_and(|k| k.info.is_some()) {
                    self.event_for(pid, Reason::Rescan);
                }
            }
        }
        while self.rechecks.peek().is_some_and(|Reverse(r)| r.due <= now) {
            let Some(Reverse(r)) = self.rechecks.pop() else {
                break;
            };
            let current = self.known.get(&r.pid);
            if !current.is_some_and(|k| k.image == r.image && k.info.is_none()) {
                continue; // exited, exec'd again, or already found
            }
            let Some(p) = probe::open(r.pid) else {
                self.forget(r.pid);
                continue;
            };
            let Some(st) = probe::stat(&p).filter(|s| s.image() == r.image) else {
                continue; // the next event or rescan sorts it out
            };
            let last = r.attempt + 1 >= self.recheck_after.len();
            if self.try_detect(r.pid, &p, st, last) != Look::Python {
                self.schedule(r.pid, r.image, r.attempt + 1);
            }
        }
    }

    fn observe(&mut self, pid: u32, p: &Process, st: Stat, reason: Reason) {
        if pid == self.self_pid || st.kernel_thread {
            return;
        }
        if let Some(k) = self.known.get_mut(&pid) {
            if k.image == st.image() {
                if k.info.is_some() {
                    self.refresh(pid, p, st);
                } else if reason == Reason::Exec && !k.recheck_pending {
                    // Same stack as before the exec (no ASLR) or a late fork event: look again.
                    k.recheck_pending = true;
                    self.schedule(pid, st.image(), 0);
                }
                return;
            }
            // A new program image, or the pid now belongs to another process.
            self.forget(pid);
        }
        Counters::bump(&self.counters.examined);
        self.known.insert(
            pid,
            Known {
                image: st.image(),
                info: None,
                recheck_pending: false,
            },
        );
        let mut reason = reason;
        if let Reason::Fork { parent } = reason {
            match self.known.get(&parent) {
                // A copy of its parent (no exec since the fork): same interpreter, same addresses.
                Some(k) if k.image.1 == st.start_stack && st.start_stack != 0 => {
                    let parent_undecided = k.recheck_pending;
                    if let Some(info) = self.inherit(pid, p, st, parent) {
                        Counters::bump(&self.counters.inherited);
                        self.report_new(info);
                    } else if parent_undecided {
                        // uWSGI loads its Python plugin and forks workers at once, maybe before the
                        // master's own re-check: the workers are re-checked like it.
                        self.mark_pending(pid);
                        self.schedule(pid, st.image(), 0);
                    }
                    return;
                }
                // Exec'd before this fork event was read.
                Some(_) => reason = Reason::Exec,
                None => reason = Reason::Rescan,
            }
        } else if let Some(info) = self.inherit(pid, p, st, st.ppid) {
            // Found by a rescan (no connector): a fork of a known Python process.
            Counters::bump(&self.counters.inherited);
            return self.report_new(info);
        }
        // Right after exec the loader has not mapped anything yet: look shortly after instead.
        let look = match reason {
            Reason::Exec => Look::Unsettled,
            _ => self.try_detect(pid, p, st, false),
        };
        // A process running for a while without Python is settled; a young one may still load it,
        // and one without libc mapped may have exec'd moments ago (however old the process).
        let again = match look {
            Look::Python => false,
            Look::NotPython => reason != Reason::Settled,
            Look::Unsettled => true,
        };
        if again {
            self.mark_pending(pid);
            self.schedule(pid, st.image(), 0);
        }
    }

    /// A forked copy of a reported Python process (same stack: no exec since the fork) runs the
    /// same interpreter at the same addresses: reuse the parent's runtime without reading maps.
    fn inherit(&self, pid: u32, p: &Process, st: Stat, parent_pid: u32) -> Option<ProcessInfo> {
        let parent = self.known.get(&parent_pid)?;
        let pinfo = parent.info.as_ref()?;
        if parent.image.1 != st.start_stack || st.start_stack == 0 {
            return None;
        }
        Some(ProcessInfo {
            pid,
            start_time: st.start_time,
            ppid: st.ppid,
            uid: probe::uid(p),
            cmdline: probe::cmdline(p),
            parent_cmdline: pinfo.cmdline.clone(),
            namespaces: Namespaces::of(pid),
            ..pinfo.clone()
        })
    }

    /// Reads the maps and reports the process if it runs CPython. `accept_unloaded`: judge even if
    /// the loader has not mapped libc yet (the last re-check: a static program).
    fn try_detect(&mut self, pid: u32, p: &Process, st: Stat, accept_unloaded: bool) -> Look {
        Counters::bump(&self.counters.maps_reads);
        let Ok(maps) = python_runtime::read_maps(pid) else {
            return Look::NotPython;
        };
        if !accept_unloaded && !probe::libraries_loaded(&maps) {
            return Look::Unsettled;
        }
        let exe = probe::exe(p);
        let Some(runtime) = python_runtime::detect_from(&exe, &maps) else {
            return Look::NotPython;
        };
        // The loader maps libc and libpython one after the other: caught in between, a
        // `--enable-shared` build looks like one with libpython linked in. A young process that
        // looks linked-in is looked at again (a truly linked-in build is reported then).
        if !accept_unloaded
            && runtime.to_runtime().libpython == super::LibPython::LinkedIntoExecutable
            && super::age_since_start(st.start_time).is_none_or(|a| a < LOADER_SETTLED)
        {
            return Look::Unsettled;
        }
        let info = self.build(pid, p, st, exe, &runtime);
        self.report_new(info);
        Look::Python
    }

    fn build(
        &self,
        pid: u32,
        p: &Process,
        st: Stat,
        exe: String,
        runtime: &RuntimeDetails,
    ) -> ProcessInfo {
        ProcessInfo {
            pid,
            start_time: st.start_time,
            ppid: st.ppid,
            uid: probe::uid(p),
            exe,
            cmdline: probe::cmdline(p),
            cwd: probe::cwd(p),
            python: Some(runtime.to_runtime()),
            parent_cmdline: self.parent_cmdline(st.ppid),
            extra: Vec::new(),
            namespaces: Namespaces::of(pid),
        }
    }

    fn parent_cmdline(&self, ppid: u32) -> Vec<String> {
        match self.known.get(&ppid).and_then(|k| k.info.as_ref()) {
            Some(parent) => parent.cmdline.clone(),
            None if ppid > 0 => probe::cmdline_of(ppid),
            None => Vec::new(),
        }
    }

    /// A reported process: its title (setproctitle), uid or parent may have changed.
    fn refresh(&mut self, pid: u32, p: &Process, st: Stat) {
        let Some(old) = self.known.get(&pid).and_then(|k| k.info.as_ref()) else {
            return;
        };
        let cmdline = probe::cmdline(p);
        let uid = probe::uid(p);
        if cmdline.is_empty() || (cmdline == old.cmdline && uid == old.uid && st.ppid == old.ppid) {
            return;
        }
        let parent_cmdline = if st.ppid == old.ppid {
            old.parent_cmdline.clone()
        } else {
            self.parent_cmdline(st.ppid)
        };
        let info = ProcessInfo {
            cmdline,
            uid,
            ppid: st.ppid,
            parent_cmdline,
            ..old.clone()
        };
        if let Some(k) = self.known.get_mut(&pid) {
            k.info = Some(info.clone());
        }
        self.snapshot.write().insert(pid, info.clone());
        Counters::bump(&self.counters.changed);
        self.out.push(DiscoveryEvent::Changed(info));
    }

    fn report_new(&mut self, info: ProcessInfo) {
        if let Some(k) = self.known.get_mut(&info.pid) {
            k.info = Some(info.clone());
            k.recheck_pending = false;
        }
        self.snapshot.write().insert(info.pid, info.clone());
        Counters::bump(&self.counters.appeared);
        self.out.push(DiscoveryEvent::Appeared(info));
    }

    fn forget(&mut self, pid: u32) {
        let Some(k) = self.known.remove(&pid) else {
            return;
        };
        if k.info.is_some() {
            self.snapshot.write().remove(&pid);
            Counters::bump(&self.counters.exited);
            self.out.push(DiscoveryEvent::Exited {
                pid,
                start_time: k.image.0,
            });
        }
    }

    fn mark_pending(&mut self, pid: u32) {
        if let Some(k) = self.known.get_mut(&pid) {
            k.recheck_pending = true;
        }
    }

    fn schedule(&mut self, pid: u32, image: (u64, u64), attempt: usize) {
        if let Some(delay) = self.recheck_after.get(attempt) {
            // Delays are measured from the first look, so each step waits only the difference.
            let prev = attempt
                .checked_sub(1)
                .and_then(|a| self.recheck_after.get(a))
                .copied()
                .unwrap_or_default();
            self.rechecks.push(Reverse(Recheck {
                due: Instant::now() + delay.saturating_sub(prev),
                pid,
                image,
                attempt,
            }));
        } else if let Some(k) = self.known.get_mut(&pid) {
            k.recheck_pending = false;
        }
    }
}

/// Older than this, a process's loader has long finished mapping its libraries.
const LOADER_SETTLED: Duration = Duration::from_millis(60);
