//! Orchestration: every discovered process goes through the sensors' `match-process`; matches are
//! injected (masters, so later forks inherit the tracer, and every worker that does not inherit
//! it), with a per-process state machine, retries with backoff, at most one injection per process
//! at a time, a cap on concurrent injections, and pid-reuse safety (pid + start time).
//!
//! It is one task that owns all process state; injections run on blocking threads and report
//! back through a channel, so no lock is held across an injection.
mod directory;
mod rematch;
mod rollout;
mod state;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::discover::{since_boot, started_since_boot, DiscoveryEvent, ProcessInfo};
use crate::inject::{self, InjectError, InjectOptions, InjectReport};
use crate::intake::{Command, Intake, PeerRegistry};
use crate::pipeline::Resource;
use crate::sensors::{ChildPolicy, Match, Role, SensorRef, SensorRegistry};

pub use directory::{Attribution, ProcessDirectory};
pub use state::{RetryPolicy, State, Via};

/// What discovery tells the orchestrator.
#[derive(Debug, Clone)]
pub enum ProcessEvent {
    /// A new process, or one seen for the first time (startup scan).
    Appeared(ProcessInfo),
    /// Its command line or runtime changed (exec, setproctitle, libpython mapped late).
    Changed(ProcessInfo),
    Exited {
        pid: u32,
        start_time: u64,
    },
}

/// What to detach from.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetachTarget {
    Pid(u32),
    Service(String),
}

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub max_concurrent_injections: usize,
    pub inject_timeout: Duration,
    pub retry: RetryPolicy,
    /// A worker forked from a traced master gets this long to connect by itself before it is
    /// injected directly (a worker forked before its master was traced never will).
    pub inherit_grace: Duration,
    /// After the bootstrap ran, how long its tracer may take to connect.
    pub connect_grace: Duration,
    /// A pending-mode injection that was not confirmed in time (an idle worker that runs no
    /// bytecode, e.g. a gunicorn sync worker sleeping `timeout/2`): how long to wait for it.
    pub pending_grace: Duration,
    /// Services never injected (config `exclude.services`).
    pub excluded_services: Vec<String>,
    /// A bundle change goes to one process per service first; after this long without a
    /// regression (bundle refused, breaker tripped, tracer lost), to the rest.
    pub canary_watch: Duration,
    /// Users whose processes are never injected (config `exclude.users`).
    pub excluded_uids: Vec<u32>,
    /// When not empty, only descendants of these pids are considered (config `scope`).
    pub descendants_of: Vec<u32>,
    pub host_name: String,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            max_concurrent_injections: 4,
            inject_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            inherit_grace: Duration::from_secs(2),
            connect_grace: Duration::from_secs(5),
            pending_grace: Duration::from_secs(60),
            canary_watch: Duration::from_secs(2),
            excluded_services: Vec::new(),
            excluded_uids: Vec::new(),
            descendants_of: Vec::new(),
            host_name: host_name(),
        }
    }
}

pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// One row of `zerostep ps`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ProcessView {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub start_time: u64,
    pub python: Option<String>,
    pub service: Option<String>,
    pub service_name_source: Option<String>,
    pub technology: Option<String>,
    pub role: Option<Role>,
    pub state: String,
    pub reason: Option<String>,
    pub via: Option<Via>,
    pub attempts: u32,
    pub connected: bool,
    pub since_unix_ms: u64,
    pub cmdline: String,
    /// In other pid/mount/network namespaces than the agent (a container).
    #[serde(default)]
    pub container: bool,
    /// The last injection's report (mode, stop time in µs, confirmation).
    pub last_injection: Option<serde_json::Value>,
    /// What its tracer says of its bundles: `{name: {version, state, reason, instrumentations}}`
    /// (state `active`, `waiting` for a trigger import, or `refused` with the reason).
    #[serde(default)]
    pub bundles: Option<serde_json::Value>,
}

/// Injections by outcome, for `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OrchestratorStats {
    pub injections_ok: u64,
    pub injections_failed: u64,
    pub injections_refused: u64,
    pub injections_not_ready: u64,
    pub inherited: u64,
    pub detached: u64,
    pub tracked: u64,
}

enum Control {
    Snapshot(oneshot::Sender<Vec<ProcessView>>),
    Stats(oneshot::Sender<OrchestratorStats>),
    Detach(DetachTarget, oneshot::Sender<Vec<u32>>),
}

/// The handle the API and CLI use.
#[derive(Clone)]
pub struct Orchestrator {
    control: mpsc::Sender<Control>,
}

impl Orchestrator {
    pub async fn processes(&self) -> Vec<ProcessView> {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Snapshot(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    pub async fn stats(&self) -> OrchestratorStats {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Stats(tx)).await.is_err() {
            return OrchestratorStats::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Sends `detach` to every matching traced process; returns their pids. They stay excluded
    /// (new processes of a detached service too) until the agent restarts.
    pub async fn detach(&self, target: DetachTarget) -> Vec<u32> {
        let (tx, rx) = oneshot::channel();
        if self
            .control
            .send(Control::Detach(target, tx))
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct Tracked {
    info: ProcessInfo,
    matched: Option<(SensorRef, Match)>,
    state: State,
    via: Option<Via>,
    since: SystemTime,
    /// Failed attempts so far (not counting "not ready yet").
    failures: u32,
    /// When the next step is due: an injection attempt, or giving up waiting for the tracer.
    due: Option<Instant>,
    /// Injection attempts have begun (so a missed connection is a failure, not a missed fork).
    injected: bool,
    not_ready_since: Option<Instant>,
    last_injection: Option<InjectReport>,
    /// Since when (time since boot) this process has had the tracer, as far as forks go: a
    /// child forked earlier cannot have inherited it. Zero when it had it before we knew it.
    tracer_since: Option<Duration>,
}

struct Done {
    pid: u32,
    start_time: u64,
    result: Result<InjectReport, InjectError>,
}

struct Core {
    cfg: OrchestratorConfig,
    sensors: Arc<SensorRegistry>,
    intake: Arc<Intake>,
    peers: PeerRegistry,
    directory: ProcessDirectory,
    procs: HashMap<u32, Tracked>,
    detached_services: HashSet<String>,
    detached_pids: HashSet<(u32, u64)>,
    permits: Arc<Semaphore>,
    done_tx: mpsc::Sender<Done>,
    stats: OrchestratorStats,
    /// The sensors' generation the processes were last matched against.
    sensors_generation: u64,
    /// A bundle change on its way: canaries first.
    rollout: Option<rollout::Rollout>,
    /// The next sensors change is an automatic rollback: sent to everyone at once.
    rolling_back: bool,
}

/// Starts the orchestrator task on the current runtime.
pub fn start(
    cfg: OrchestratorConfig,
    sensors: Arc<SensorRegistry>,
    intake: Arc<Intake>,
    directory: ProcessDirectory,
    mut events: mpsc::Receiver<DiscoveryEvent>,
) -> Orchestrator {
    let (control_tx, mut control_rx) = mpsc::channel(64);
    let (done_tx, mut done_rx) = mpsc::channel(256);
    let mut core = Core {
        permits: Arc::new(Semaphore::new(cfg.max_concurrent_injections.max(1))),
        peers: intake.registry().clone(),
        cfg,
        sensors,
        intake,
        directory,
        procs: HashMap::new(),
        detached_services: HashSet::new(),
        detached_pids: HashSet::new(),
        done_tx,
        stats: OrchestratorStats::default(),
        sensors_generation: 0,
        rollout: None,
        rolling_back: false,
    };
    core.sensors_generation = core.sensors.generation();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => core.on_event(ev),
                    None => break,
                },
                Some(done) = done_rx.recv() => core.on_done(done),
                Some(c) = control_rx.recv() => core.on_control(c),
                _ = tick.tick() => core.on_tick(),
            }
        }
        tracing::debug!("orchestrator stopped: discovery ended");
    });
    Orchestrator {
        control: control_tx,
    }
}

impl Core {
    fn on_event(&mut self, ev: DiscoveryEvent) {
        match ev {
            DiscoveryEvent::Appeared(info) | DiscoveryEvent::Changed(info) => self.consider(info),
            DiscoveryEvent::InitialScanDone => {
                tracing::info!(python_processes = self.procs.len(), "initial scan done")
            }
            DiscoveryEvent::Exited { pid, start_time } => {
                if self
                    .procs
                    .get(&pid)
                    .is_some_and(|t| t.info.start_time == start_time || start_time == 0)
                {
                    self.procs.remove(&pid);
                    self.directory.exited(pid);
                    self.peers.revoke(pid);
                }
            }
        }
    }

    /// A new or changed process: match it and decide what to do.
    fn consider(&mut self, info: ProcessInfo) {
        if info.python.is_none() || !self.in_scope(&info) {
            return;
        }
        let pid = info.pid;
        if let Some(t) = self.procs.get(&pid) {
            if t.info.start_time != info.start_time {
                // The pid was reused: forget the old process entirely.
                self.procs.remove(&pid);
                self.directory.exited(pid);
            } else if matches!(
                t.state,
                State::Injecting | State::AwaitingTracer | State::Traced
            ) {
                // Already on its way; a renamed worker keeps its match (service names come
                // from the master's command line either way).
                if let Some(t) = self.procs.get_mut(&pid) {
                    t.info = info;
                }
                return;
            }
        }
        let matched = self.sensors.match_process(&info);
        let mut t = Tracked {
            info,
            matched: None,
            state: State::Seen,
            via: None,
            since: SystemTime::now(),
            failures: 0,
            due: None,
            injected: false,
            not_ready_since: None,
            last_injection: None,
            tracer_since: None,
        };
        let Some((sensor, m)) = matched else {
            t.state = State::Excluded(rematch::NO_SENSOR_MATCHED.into());
            self.procs.insert(pid, t);
            return;
        };
        self.directory.insert(
            pid,
            Attribution {
                sensor: sensor.clone(),
                matched: m.clone(),
                resource: Arc::new(resource(&t.info, &m, &self.cfg.host_name)),
            },
        );
        let excluded = if self.detached_services.contains(&m.service_name)
            || self.detached_pids.contains(&(pid, t.info.start_time))
        {
            Some("detached by the operator".to_string())
        } else if self.cfg.excluded_services.contains(&m.service_name) {
            Some("service excluded by configuration".to_string())
        } else if self.cfg.excluded_uids.contains(&t.info.uid) {
            Some(format!("user {} excluded by configuration", t.info.uid))
        } else {
            None
        };
        // The parent's sensor says what becomes of its children (contract 0.2's injection
        // policy; 0.1 sensors get the default: forked children inherit, spawned ones are injected).
        let parent = self.procs.get(&t.info.ppid).and_then(|p| {
            let (_, pm) = p.matched.as_ref()?;
            let forked = p.info.cmdline == t.info.cmdline || m.role == Role::Worker;
            Some(if forked {
                pm.injection.forked_children
            } else {
                pm.injection.spawned_children
            })
        });
        let inject_self = m.injection.inject;
        t.matched = Some((sensor, m));
        if let Some(reason) = excluded {
            t.state = State::Excluded(reason);
        } else if parent == Some(ChildPolicy::Ignore) && !self.intake_has(pid) {
            t.state = State::Excluded("its parent's sensor leaves such children alone".into());
        } else if self.intake_has(pid) {
            // Already traced (the agent restarted, or the tracer arrived with a fork).
            t.state = State::Traced;
            t.via = Some(Via::Inherited);
            t.tracer_since = Some(Duration::ZERO);
        } else if self.parent_traced(&t) && parent != Some(ChildPolicy::Inject) {
            t.state = State::AwaitingTracer;
            t.via = Some(Via::Inherited);
            t.due = Some(Instant::now() + self.cfg.inherit_grace);
        } else if !inject_self {
            t.state = State::Excluded("its sensor traces it only through its parent".into());
        } else {
            t.state = State::Matched;
            t.due = Some(Instant::now());
        }
        self.procs.insert(pid, t);
    }

    fn in_scope(&self, info: &ProcessInfo) -> bool {
        if self.cfg.descendants_of.is_empty() {
            return true;
        }
        let mut cur = info.ppid;
        for _ in 0..64 {
            if self.cfg.descendants_of.contains(&cur) {
                return true;
            }
            match parent_of(cur) {
                Some(p) if p > 1 => cur = p,
                _ => return false,
            }
        }
        false
    }

    fn parent_traced(&self, t: &Tracked) -> bool {
        let is_worker = t
            .matched
            .as_ref()
            .is_some_and(|(_, m)| m.role == Role::Worker);
        is_worker
            && self.procs.get(&t.info.ppid).is_some_and(|p| {
                matches!(
                    p.state,
                    State::Traced | State::AwaitingTracer | State::Injecting
                )
            })
    }

    fn intake_has(&self, pid: u32) -> bool {
        self.intake.peers().iter().any(|p| p.pid == pid)
    }

    fn on_tick(&mut self) {
        self.rematch_if_sensors_changed();
        self.advance_rollout();
        let now = Instant::now();
        let awaiting = self
            .procs
            .values()
            .any(|t| t.state == State::AwaitingTracer);
        let connected: HashSet<u32> = if awaiting {
            self.intake.peers().iter().map(|p| p.pid).collect()
        } else {
            HashSet::new()
        };
        // A worker waiting to inherit its master's tracer, but forked before the master had it,
        // is injected now rather than after the grace (uWSGI and gunicorn fork their first
        // workers before the agent may have reached the master).
        let tracer_since: HashMap<u32, Duration> = if awaiting {
            self.procs
                .iter()
                .filter_map(|(pid, t)| Some((*pid, t.tracer_since?)))
                .collect()
        } else {
            HashMap::new()
        };
        let mut to_inject = Vec::new();
        for (pid, t) in self.procs.iter_mut() {
            if t.state == State::AwaitingTracer && connected.contains(pid) {
                t.state = State::Traced;
                t.since = SystemTime::now();
                t.due = None;
                if t.via == Some(Via::Inherited) {
                    self.stats.inherited += 1;
                    t.tracer_since = Some(Duration::ZERO);
                }
                tracing::info!(pid, service = ?t.matched.as_ref().map(|m| &m.1.service_name), via = ?t.via, "traced");
                continue;
            }
            if t.state == State::AwaitingTracer
                && !t.injected
                && tracer_since
                    .get(&t.info.ppid)
                    .is_some_and(|since| forked_before(t.info.start_time, *since))
            {
                tracing::debug!(
                    pid,
                    ppid = t.info.ppid,
                    "forked before its parent had the tracer"
                );
                t.due = Some(now);
            }
            let Some(due) = t.due else { continue };
            if due > now {
                continue;
            }
            t.due = None;
            match &t.state {
                State::Matched | State::Failed(_) => to_inject.push(*pid),
                State::AwaitingTracer if !t.injected => {
                    // The fork did not bring a tracer (forked before the master was traced).
                    t.via = None;
                    to_inject.push(*pid);
                }
                State::AwaitingTracer => {
                    t.failures += 1;
                    let reason = "the tracer did not connect after the injection".to_string();
                    schedule_retry(t, &self.cfg.retry, reason);
                }
                _ => {}
            }
        }
        for pid in to_inject {
            self.start_injection(pid);
        }
    }

    fn start_injection(&mut self, pid: u32) {
        let Some(t) = self.procs.get_mut(&pid) else {
            return;
        };
        // Pid-reuse safety: the process behind the pid must still be the one we matched.
        if current_start_time(pid) != Some(t.info.start_time) {
            self.procs.remove(&pid);
            self.directory.exited(pid);
            return;
        }
        t.state = State::Injecting;
        t.injected = true;
        self.peers.allow(pid);
        let start_time = t.info.start_time;
        let intake = self.intake.clone();
        let opts = InjectOptions {
            timeout: self.cfg.inject_timeout,
            wait_for_pending: true,
            step_delay: None,
        };
        let permits = self.permits.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            // A process in another network namespace (a container) gets a listener inside it.
            let result = tokio::task::spawn_blocking(move || {
                let code = intake.bootstrap_code_for(pid).map_err(|e| {
                    InjectError::Unsupported(format!("intake for this process: {e}"))
                })?;
                inject::inject(pid, &code, &opts)
            })
            .await
            .unwrap_or_else(|e| Err(InjectError::Unsupported(format!("injector task: {e}"))));
            let _ = done
                .send(Done {
                    pid,
                    start_time,
                    result,
                })
                .await;
        });
    }

    fn on_done(&mut self, done: Done) {
        let Some(t) = self.procs.get_mut(&done.pid) else {
            return;
        };
        if t.info.start_time != done.start_time {
            return;
        }
        let retry = self.cfg.retry.clone();
        match done.result {
            Ok(report) if report.raised.is_some() => {
                self.stats.injections_failed += 1;
                let reason = format!(
                    "the bootstrap ran but failed: {}",
                    report.raised.as_deref().unwrap_or("")
                );
                tracing::warn!(pid = done.pid, %reason, "injection failed");
                t.failures += 1;
                t.last_injection = Some(report);
                schedule_retry(t, &retry, reason);
            }
            Ok(report) => {
                self.stats.injections_ok += 1;
                t.state = State::AwaitingTracer;
                t.via = Some(Via::Injected);
                // A little after the bootstrap really ran: a child forked in between is
                // injected itself and finds the tracer already there, which is harmless.
                t.tracer_since = since_boot();
                t.not_ready_since = None;
                let grace = if report.confirmed {
                    self.cfg.connect_grace
                } else {
                    self.cfg.pending_grace
                };
                // An already-present bootstrap means a tracer from an earlier agent run, which
                // reconnects with its own backoff (up to 30 s).
                let grace = if report.already_present {
                    grace.max(Duration::from_secs(35))
                } else {
                    grace
                };
                t.due = Some(Instant::now() + grace);
                t.last_injection = Some(report);
            }
            Err(InjectError::NotReady { .. }) => {
                self.stats.injections_not_ready += 1;
                let since = *t.not_ready_since.get_or_insert_with(Instant::now);
                if since.elapsed() > retry.not_ready_for {
                    t.state = State::Failed("the interpreter never finished starting".into());
                } else {
                    t.state = State::Matched;
                    t.due = Some(Instant::now() + retry.not_ready_every);
                }
            }
            Err(InjectError::ProcessExited { .. }) => {
                self.procs.remove(&done.pid);
                self.directory.exited(done.pid);
            }
            Err(
                e @ (InjectError::NotCPython { .. }
                | InjectError::UnsupportedVersion { .. }
                | InjectError::FreeThreaded { .. }
                | InjectError::OptedOut { .. }
                | InjectError::RemoteDebugDisabled { .. }
                | InjectError::SelfInjection),
            ) => {
                self.stats.injections_refused += 1;
                tracing::info!(pid = done.pid, reason = %e, "not injecting");
                t.state = State::Excluded(e.to_string());
            }
            Err(e) => {
                if e.is_refusal() {
                    self.stats.injections_refused += 1;
                } else {
                    self.stats.injections_failed += 1;
                }
                tracing::warn!(pid = done.pid, error = %e, "injection failed");
                t.failures += 1;
                schedule_retry(t, &retry, e.to_string());
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
            }
            Control::Stats(tx) => {
                let mut s = self.stats.clone();
                s.tracked = self.procs.len() as u64;
                let _ = tx.send(s);
            }
            Control::Detach(target, tx) => {
                let _ = tx.send(self.detach(target));
            }
        }
    }

    fn detach(&mut self, target: DetachTarget) -> Vec<u32> {
        let peers = self.intake.peers();
        let selected: Vec<u32> = match &target {
            DetachTarget::Service(name) => {
                self.detached_services.insert(name.clone());
                self.procs
                    .iter()
                    .filter(|(_, t)| {
                        t.matched
                            .as_ref()
                            .is_some_and(|(_, m)| &m.service_name == name)
                    })
                    .map(|(pid, _)| *pid)
                    .collect()
            }
            DetachTarget::Pid(pid) => {
                let mut v = vec![*pid];
                // Workers that inherited the tracer from this process carry their own copy.
                v.extend(
                    peers
                        .iter()
                        .filter(|p| p.root_pid == *pid && p.pid != *pid)
                        .map(|p| p.pid),
                );
                v
            }
        };
        let mut detached = Vec::new();
        for pid in selected {
            if let Some(t) = self.procs.get_mut(&pid) {
                self.detached_pids.insert((pid, t.info.start_time));
                t.state = State::Excluded("detached by the operator".into());
                t.due = None;
            }
            if peers.iter().any(|p| p.pid == pid) {
                match self.intake.send(pid, &Command::Detach) {
                    Ok(()) => detached.push(pid),
                    Err(e) => tracing::warn!(pid, error = %e, "detach not sent"),
                }
            }
        }
        self.stats.detached += detached.len() as u64;
        tracing::info!(?target, pids = ?detached, "detached");
        detached.sort_unstable();
        detached
    }

    fn snapshot(&self) -> Vec<ProcessView> {
        let peers = self.intake.peers();
        let connected: HashSet<u32> = peers.iter().map(|p| p.pid).collect();
        let bundles: HashMap<u32, serde_json::Value> = peers
            .iter()
            .filter_map(|p| {
                let b = p.status.as_ref()?.get("bundles")?;
                (!b.is_null()).then(|| (p.pid, b.clone()))
            })
            .collect();
        let unserved: HashSet<u32> = peers
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(serves_nothing))
            .map(|p| p.pid)
            .collect();
        let mut v: Vec<ProcessView> = self
            .procs
            .iter()
            .map(|(pid, t)| {
                let m = t.matched.as_ref().map(|(_, m)| m);
                // A tracer that says no server instrumentation of its serves this process would
                // give no span: not `traced` (a master serves nothing by design).
                let (state, reason) = if t.state == State::Traced
                    && unserved.contains(pid)
                    && m.is_some_and(|m| m.role != Role::Master)
                {
                    (
                        "no_server_instrumentation".to_string(),
                        Some(NO_SERVER.to_string()),
                    )
                } else {
                    (
                        t.state.name().to_string(),
                        t.state.reason().map(str::to_string),
                    )
                };
                ProcessView {
                    pid: *pid,
                    ppid: t.info.ppid,
                    uid: t.info.uid,
                    start_time: t.info.start_time,
                    python: t.info.python.as_ref().map(|p| p.version.clone()),
                    service: m.map(|m| m.service_name.clone()),
                    service_name_source: m.map(|m| m.service_name_source.clone()),
                    technology: m.map(|m| m.technology.clone()),
                    role: m.map(|m| m.role),
                    state,
                    reason,
                    via: t.via,
                    attempts: t.failures,
                    connected: connected.contains(pid),
                    since_unix_ms: state::unix_ms(t.since),
                    cmdline: t.info.cmdline.join(" "),
                    container: t.info.namespaces.is_foreign(),
                    last_injection: t
                        .last_injection
                        .as_ref()
                        .and_then(|r| serde_json::to_value(r).ok()),
                    bundles: bundles.get(pid).cloned(),
                }
            })
            .collect();
        v.sort_by_key(|p| p.pid);
        v
    }
}

const NO_SERVER: &str = "matched and injected, but no sensor's bundle instruments the server this \
     process runs (no span will come): add or update the sensor for it";

/// The tracer's status names server instrumentations (those reporting `serves`) and none of them
/// serves. Silent when none reports it at all (bundles older than the flag, 0.1 sensors).
fn serves_nothing(status: &serde_json::Value) -> bool {
    let Some(insts) = status.get("instrumentations").and_then(|v| v.as_object()) else {
        return false;
    };
    let flags: Vec<bool> = insts
        .values()
        .filter_map(|i| i.get("serves").and_then(serde_json::Value::as_bool))
        .collect();
    !flags.is_empty() && !flags.contains(&true)
}

fn schedule_retry(t: &mut Tracked, retry: &RetryPolicy, reason: String) {
    match retry.backoff(t.failures) {
        Some(wait) => {
            t.state = State::Failed(format!("{reason} (retrying in {} s)", wait.as_secs()));
            t.due = Some(Instant::now() + wait);
        }
        None => {
            t.state = State::Failed(format!("{reason} (gave up after {} attempts)", t.failures));
            t.due = None;
        }
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    u32::try_from(p.stat().ok()?.ppid).ok()
}

fn current_start_time(pid: u32) -> Option<u64> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    Some(p.stat().ok()?.starttime)
}

fn resource(info: &ProcessInfo, m: &Match, host_name: &str) -> Resource {
    Resource {
        service_name: m.service_name.clone(),
        host_name: host_name.to_string(),
        pid: info.pid,
        executable: info.exe.clone(),
        command_line: info.cmdline.join(" "),
        runtime_version: info
            .python
            .as_ref()
            .map(|p| p.version.clone())
            .unwrap_or_default(),
        technology: m.technology.clone(),
        role: match m.role {
            Role::Master => "master",
            Role::Worker => "worker",
            Role::Standalone => "standalone",
        }
        .to_string(),
        tracer_version: crate::intake::TRACER_VERSION.to_string(),
    }
}

/// Whether a process with this start time (clock ticks since boot) certainly started before
/// `since`: start times are truncated to a tick, so one tick of doubt counts as "maybe not".
fn forked_before(start_ticks: u64, since: Duration) -> bool {
    started_since_boot(start_ticks.saturating_add(1)) < since
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tracer_whose_server_instrumentations_all_serve_nothing_is_flagged() {
        let st = |v: serde_json::Value| serde_json::json!({ "instrumentations": v });
        let gunicorn_under_uvicorn = st(serde_json::json!({
            "gunicorn": {"applied": true, "serves": false}, "flask": {"applied": false}}));
        assert!(serves_nothing(&gunicorn_under_uvicorn));
        let with_asgi = st(serde_json::json!({
            "gunicorn": {"serves": false}, "uvicorn.h11": {"serves": true}}));
        assert!(!serves_nothing(&with_asgi));
        // No instrumentation says either way (older bundles): not flagged.
        assert!(!serves_nothing(&st(
            serde_json::json!({"flask": {"applied": true}})
        )));
        assert!(!serves_nothing(&serde_json::json!({"bundles": {}})));
    }

    #[test]
    fn a_child_is_known_to_predate_the_tracer_only_with_a_tick_to_spare() {
        let tick = Duration::from_nanos(1_000_000_000 / procfs::ticks_per_second());
        let since = tick * 200;
        assert!(forked_before(198, since));
        // Started within the tick before `since`: may have forked after the tracer arrived.
        assert!(!forked_before(199, since));
        assert!(!forked_before(250, since));
        assert!(!forked_before(0, Duration::ZERO));
    }

    #[test]
    fn our_own_start_is_known_to_predate_now() {
        let me = procfs::process::Process::myself()
            .and_then(|p| p.stat())
            .map(|s| s.starttime)
            .unwrap_or(0);
        let now = since_boot().unwrap_or_default();
        assert!(
            forked_before(me, now + Duration::from_millis(50)),
            "{me} {now:?}"
        );
        assert!(!forked_before(me, started_since_boot(me)));
    }
}
