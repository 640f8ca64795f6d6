//! Running Python code inside a live CPython process, without restarting it and without gdb.
//!
//! # Library API
//!
//! [`inject`] is the one entry point: `inject(pid, code, &InjectOptions::default())` runs `code` once in
//! the target's main interpreter and returns an [`InjectReport`] (mode used, how long the main thread was
//! stopped, whether the code was confirmed to have run), or an [`InjectError`] whose refusal variants
//! (`NotCPython`, `UnsupportedVersion`, `FreeThreaded`, `AlreadyTraced`, `OptedOut`, …) had no side
//! effect on the target. It blocks; call it from a plain or `spawn_blocking` thread (every ptrace request
//! of one injection must come from the same thread, which a synchronous call guarantees).
//!
//! # How (CPython 3.8–3.13)
//!
//! 1. Before stopping anything: refusal checks, runtime detection from `/proc/PID/maps`, symbol
//!    resolution in libpython or the executable (through `/proc/PID/root`), and two gadgets in libc
//!    (`syscall; ret` and `__restore_rt`).
//! 2. `PTRACE_SEIZE` + `PTRACE_INTERRUPT` of the main thread only. Its registers, extended state and
//!    signal mask are written as a kernel signal frame below its red zone ([`sigframe`]).
//! 3. Scratch memory by a raw `mmap` through the `syscall; ret` gadget; the page gets a small stub and
//!    the Python text ([`scratch`]).
//! 4. Blocked in a listed wait (or a futex outside `_PyRuntime`): the stub calls `PyGILState_Ensure` →
//!    `PyRun_SimpleString` → `PyGILState_Release` (mode [`InjectMode::Direct`]). Otherwise the stub only
//!    calls `Py_AddPendingCall` (mode [`InjectMode::Pending`]); the code runs when the thread next runs
//!    bytecode, and the page is released by a second, sub-millisecond stop once it has.
//! 5. Every stub returns into `__restore_rt`: `rt_sigreturn` restores the exact context (a system call
//!    that was interrupted is re-entered). Killing the injector at any instant changes nothing about
//!    that path, which is what makes the injector crash-safe. The direct call runs without
//!    syscall-stops (`PTRACE_CONT`); the injector polls the page's `state` and, when the stub parks in
//!    its final 100 ms `nanosleep`, interrupts it and unmaps the page with one remote `munmap` whose
//!    `ret` lands in `__restore_rt`. A dead injector only means the park runs out.
//!
//! # CPython 3.14 and 3.15
//!
//! The same recipe, measured on Debian's 3.14.10 and 3.15.2 (`bench/30-inject.sh`). PEP 768
//! (`sys.remote_exec`) was the alternative and is not used: the target opens a script *file* by path
//! (something would have to be written into its filesystem, in its mount namespace), and the script
//! runs only when the chosen thread next evaluates bytecode, so an idle gunicorn worker or uWSGI
//! worker runs it seconds or requests later — the direct call reaches it at once. `_Py_DebugOffsets`
//! ([`debug_offsets`]) is read for what the native path needs to refuse: free-threaded builds and
//! processes whose operator disabled remote debugging.
pub mod cli;
pub mod debug_offsets;
pub mod elf_symbols;
pub mod gadgets;
mod hijack;
pub mod ptrace_call;
pub mod readiness;
pub mod remote_mem;
pub mod scratch;
pub mod sigframe;
pub mod thread_state;
pub mod wrapper;

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info};

use crate::discover::python_runtime::{self, RuntimeDetails};
use crate::discover::LibPython;
use thread_state::ThreadState;
use wrapper::{Handshake, Outcome};

/// The environment variable a service owner sets to `1` to keep zerostep out of a process.
pub const OPT_OUT_ENV: &str = "ZEROSTEP_DISABLE";

const API_SYMBOLS: &[&str] = &[
    "PyGILState_Ensure",
    "PyRun_SimpleString",
    "PyGILState_Release",
    "Py_AddPendingCall",
    "_PyRuntime",
];

/// Exported only by free-threaded (`Py_GIL_DISABLED`) builds, 3.13t onwards: the binary says what it
/// is even when its file name does not carry the `t`.
pub const FREE_THREADED_SYMBOLS: &[&str] = &["_Py_DecRefShared", "_Py_MergeZeroLocalRefcount"];

/// How an injection is carried out.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// Bound on every wait: the thread stopping, the injected call, and (pending mode) the
    /// confirmation that the code ran. On expiry the thread is released and keeps running normally.
    pub timeout: Duration,
    /// Pending mode: wait (within `timeout`) for the code to run and then release its page. Without it,
    /// the report says `confirmed: false` and the page is swept by a later injection.
    pub wait_for_pending: bool,
    /// Testing only: sleep this long between ptrace steps (to land kills between them).
    #[doc(hidden)]
    pub step_delay: Option<Duration>,
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            timeout: Duration::from_secs(5),
            wait_for_pending: true,
            step_delay: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectMode {
    /// Called on the interrupted main thread while it was blocked in a wait.
    Direct,
    /// Scheduled with `Py_AddPendingCall`; runs when the main thread next runs bytecode.
    Pending,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct InjectReport {
    pub pid: u32,
    pub python: String,
    pub mode: InjectMode,
    /// Why this mode: the main thread's state at the interrupt (e.g. `epoll_wait`).
    pub thread_state: String,
    /// From `PTRACE_INTERRUPT` to `PTRACE_DETACH` of the injection stop (zero for PEP 768).
    #[serde(serialize_with = "ser_micros")]
    pub stop_time: Duration,
    /// Pending mode: the second, short stop that released the page.
    #[serde(serialize_with = "ser_opt_micros")]
    pub cleanup_stop_time: Option<Duration>,
    /// The wrapper reported back with this injection's nonce.
    pub confirmed: bool,
    /// The same code had already run in this process (idempotency marker), so it was not run again.
    pub already_present: bool,
    /// The code raised (the exception was caught inside the target); the message.
    pub raised: Option<String>,
    /// How many times the stub entered the code, read back from the page (exactly-once check).
    pub runs: Option<u32>,
    /// The scratch page is unmapped again.
    pub scratch_released: bool,
    /// Pages of earlier, interrupted injections removed during this one.
    pub swept: usize,
    #[serde(serialize_with = "ser_micros")]
    pub total_time: Duration,
}

fn ser_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

fn ser_opt_micros<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_micros() as u64)),
        None => s.serialize_none(),
    }
}

/// Why an injection did not happen or did not complete. The refusals (`NotCPython` through `Stopped`)
/// are decided before the target is touched.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("pid {pid} is not a CPython process: {detail}")]
    NotCPython { pid: u32, detail: String },
    #[error("pid {pid} runs Python {version}; supported: 3.8 to 3.15")]
    UnsupportedVersion { pid: u32, version: String },
    #[error(
        "pid {pid} runs a free-threaded Python ({version}, {evidence}); the injector's recipe relies on the GIL and is not used there"
    )]
    FreeThreaded {
        pid: u32,
        version: String,
        evidence: String,
    },
    #[error("pid {pid}: remote debugging is disabled in this process ({how}); its operator said no to remote code")]
    RemoteDebugDisabled { pid: u32, how: String },
    #[error(
        "pid {pid} is already traced by pid {tracer_pid} (a debugger, strace or another agent)"
    )]
    AlreadyTraced { pid: u32, tracer_pid: u32 },
    #[error("pid {pid} opted out with {OPT_OUT_ENV}=1 in its environment")]
    OptedOut { pid: u32 },
    #[error("no permission to inject into pid {pid}: {detail}")]
    PermissionDenied { pid: u32, detail: String },
    #[error("pid {pid} is stopped (signal {signal}); not injecting into a stopped process")]
    Stopped { pid: u32, signal: i32 },
    #[error("refusing to inject into the injector itself")]
    SelfInjection,
    #[error(
        "pid {pid}: the interpreter is still starting up (not yet initialised); try again shortly"
    )]
    NotReady { pid: u32 },
    #[error("pid {pid} exited")]
    ProcessExited { pid: u32 },
    #[error("timed out: {0}; the thread was released and restores itself")]
    Timeout(String),
    #[error("reading the target's ELF file: {0}")]
    Elf(String),
    #[error("unsupported target: {0}")]
    Unsupported(String),
    #[error("ptrace: {0}")]
    Ptrace(String),
    #[error("the interpreter refused the pending call (queue full)")]
    PendingQueueFull,
    #[error("handshake socket: {0}")]
    Handshake(std::io::Error),
}

impl InjectError {
    /// True for the refusals: nothing in the target was touched.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            InjectError::NotCPython { .. }
                | InjectError::UnsupportedVersion { .. }
                | InjectError::FreeThreaded { .. }
                | InjectError::AlreadyTraced { .. }
                | InjectError::OptedOut { .. }
                | InjectError::RemoteDebugDisabled { .. }
                | InjectError::PermissionDenied { .. }
                | InjectError::Stopped { .. }
                | InjectError::SelfInjection
                | InjectError::NotReady { .. }
        )
    }

    pub(crate) fn from_io(pid: u32, what: &str, e: std::io::Error) -> InjectError {
        match e.kind() {
            std::io::ErrorKind::NotFound
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() =>
            {
                InjectError::ProcessExited { pid }
            }
            std::io::ErrorKind::PermissionDenied => InjectError::PermissionDenied {
                pid,
                detail: format!("{what}: {e}"),
            },
            _ => InjectError::Elf(format!("{what}: {e}")),
        }
    }
}

/// `TracerPid` from `/proc/PID/status`, if readable.
pub fn tracer_pid(pid: u32) -> Option<u32> {
    status_field(pid, "TracerPid:")?.parse().ok()
}

fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// Checks everything that can refuse an injection without touching the target.
pub fn preflight(pid: u32) -> Result<RuntimeDetails, InjectError> {
    if pid == std::process::id() {
        return Err(InjectError::SelfInjection);
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| InjectError::ProcessExited { pid })?;
    let zombie_state = status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .is_some_and(|v| matches!(v.trim().chars().next(), Some('Z' | 'X')));
    // This kernel (6.18) has been seen reporting `State: Z` for a live process right after a
    // previous tracer detached; a real zombie has no address space left, so its maps are empty.
    if zombie_state
        && std::fs::read_to_string(format!("/proc/{pid}/maps")).map_or(true, |m| m.is_empty())
    {
        return Err(InjectError::ProcessExited { pid });
    }
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let state = field("State:").unwrap_or_default();
    if state.starts_with('T') {
        return Err(InjectError::Stopped {
            pid,
            signal: libc::SIGSTOP,
        });
    }
    if let Some(t) = field("TracerPid:")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|t| *t != 0)
    {
        return Err(InjectError::AlreadyTraced { pid, tracer_pid: t });
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .map_err(|e| InjectError::from_io(pid, "reading its environment", e))?;
    let opt_out = format!("{OPT_OUT_ENV}=1");
    if environ
        .split(|b| *b == 0)
        .any(|kv| kv == opt_out.as_bytes())
    {
        return Err(InjectError::OptedOut { pid });
    }
    let runtime = python_runtime::detect(pid)
        .map_err(|e| InjectError::from_io(pid, "reading its maps", e))?
        .ok_or_else(|| InjectError::NotCPython {
            pid,
            detail: "no libpython mapped, not a python executable".into(),
        })?;
    if runtime.free_threaded {
        return Err(InjectError::FreeThreaded {
            pid,
            version: runtime.version_string(),
            evidence: "its libpython or executable name has the `t` ABI flag".into(),
        });
    }
    if runtime.version.1 >= 14 {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if let Some(how) = debug_offsets::disabled_by_startup(&environ, &cmdline) {
            return Err(InjectError::RemoteDebugDisabled {
                pid,
                how: how.into(),
            });
        }
    }
    if runtime.version.0 != 3 || !(8..=15).contains(&runtime.version.1) {
        return Err(InjectError::UnsupportedVersion {
            pid,
            version: runtime.version_string(),
        });
    }
    Ok(runtime)
}

/// Runs `code` once inside the CPython process `pid`. See the module documentation.
pub fn inject(pid: u32, code: &str, opts: &InjectOptions) -> Result<InjectReport, InjectError> {
    let begun = Instant::now();
    let deadline = begun + opts.timeout;
    let runtime = preflight(pid)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| InjectError::from_io(pid, "reading its executable", e))?
        .to_string_lossy()
        .trim_end_matches(" (deleted)")
        .to_string();
    let maps = python_runtime::read_maps(pid)
        .map_err(|e| InjectError::from_io(pid, "reading its maps", e))?;
    let api_path = runtime.api_path(&exe).to_string();
    // Moments after exec the loader may not have mapped everything yet: that is "not ready".
    let young = |e: InjectError| match process_age(pid) {
        Some(age) if age < Duration::from_secs(2) => InjectError::NotReady { pid },
        _ => e,
    };
    let names: Vec<&str> = API_SYMBOLS
        .iter()
        .chain(FREE_THREADED_SYMBOLS)
        .copied()
        .collect();
    let syms = elf_symbols::resolve(pid, &maps, &api_path, &names).map_err(young)?;
    if let Some(mark) = free_threaded_mark(&syms) {
        return Err(InjectError::FreeThreaded {
            pid,
            version: runtime.version_string(),
            evidence: format!("{api_path} exports {mark}"),
        });
    }
    let sym = |n: &str| {
        syms.get(n).copied().ok_or_else(|| InjectError::NotCPython {
            pid,
            detail: format!("{n} not found in {api_path}"),
        })
    };
    let rt = sym("_PyRuntime")?;
    // One read of `_PyRuntime`'s head serves the debug offsets and the init flags.
    let head = remote_mem::read(pid, rt.addr, readiness::PROBE_LEN)
        .map_err(|e| runtime_read_error(pid, e))?;
    if runtime.version.1 >= 13 {
        check_debug_offsets(pid, &runtime, rt.addr, &head)?;
    }
    ensure_initialized(pid, runtime.version.1, &head)?;
    let gadgets = gadgets::find(pid, &maps).map_err(young)?;
    let api = scratch::Api {
        ensure: sym("PyGILState_Ensure")?.addr,
        run: sym("PyRun_SimpleString")?.addr,
        release: sym("PyGILState_Release")?.addr,
        add_pending: sym("Py_AddPendingCall")?.addr,
        syscall_ret: gadgets.syscall_ret,
    };
    let leftovers = hijack::find_leftovers(pid, &maps);
    let mut handshake = Handshake::for_target(pid).map_err(InjectError::Handshake)?;
    let text = wrapper::render(code, &handshake.nonce, &handshake.name);
    let len = scratch::size_for(&text) as u64;
    debug!(pid, python = %runtime.version_string(), ?api, ?gadgets, prep = ?begun.elapsed(), "resolved");

    let mut session = hijack::Session::open(pid, gadgets, deadline, opts.step_delay)?;
    let state = session.classify((rt.addr, rt.size));
    let (mode, thread_state) = match &state {
        ThreadState::BlockedWait(name) => (InjectMode::Direct, name.to_string()),
        ThreadState::Busy(why) => (InjectMode::Pending, why.clone()),
    };
    let swept = session.sweep(&leftovers);
    let base = session.map_scratch(|base| scratch::build(base, &api, &text), len)?;
    let started = session.started();
    let (header, released, stop_time) = if mode == InjectMode::Direct {
        session.call_direct(base + scratch::STUB_DIRECT as u64, base, len)?
    } else {
        session.call(base + scratch::STUB_SCHEDULE as u64)?;
        let header = read_header(pid, base);
        if header.map(|h| h.schedule_result) != Some(0) {
            let _ = session.unmap_and_detach(base, len)?;
            return Err(InjectError::PendingQueueFull);
        }
        (header, false, session.detach()?)
    };
    debug!(pid, ?mode, ?stop_time, since_interrupt = ?started.elapsed(), "thread released");

    let mut report = InjectReport {
        pid,
        python: runtime.version_string(),
        mode,
        thread_state,
        stop_time,
        cleanup_stop_time: None,
        confirmed: false,
        already_present: false,
        raised: None,
        runs: header.map(|h| h.entries),
        scratch_released: released,
        swept,
        total_time: Duration::ZERO,
    };
    let confirm_deadline = match mode {
        // The datagram was sent before the call returned; allow for scheduling only.
        InjectMode::Direct => Instant::now() + Duration::from_millis(500),
        _ if opts.wait_for_pending => deadline,
        _ => Instant::now(),
    };
    record_outcome(
        &mut report,
        handshake.wait(confirm_deadline.min(deadline.max(Instant::now()))),
    );
    if mode == InjectMode::Direct && !released {
        // The park ran out before the interrupt landed (a very slow injector): sweep the page now.
        sweep_into(&mut report, pid, gadgets, deadline)?;
    }
    if mode == InjectMode::Pending && report.confirmed {
        // The callback sets `state = finished` a few instructions after the datagram went out.
        let finished = wait_for(
            deadline.max(Instant::now() + Duration::from_millis(200)),
            || read_header(pid, base).is_some_and(|h| h.state == scratch::STATE_FINISHED),
        );
        if finished {
            report.runs = read_header(pid, base).map(|h| h.entries);
            sweep_into(&mut report, pid, gadgets, deadline)?;
        }
    }
    handshake.drain_now();
    if handshake.received.len() > 1 {
        report.runs = Some(handshake.received.len() as u32);
    }
    report.total_time = begun.elapsed();
    info!(pid, mode = ?report.mode, stop_us = report.stop_time.as_micros() as u64, confirmed = report.confirmed, "injected");
    Ok(report)
}

/// The free-threaded-only symbol among those resolved, if any.
pub fn free_threaded_mark(
    syms: &std::collections::HashMap<String, elf_symbols::Symbol>,
) -> Option<&'static str> {
    FREE_THREADED_SYMBOLS
        .iter()
        .copied()
        .find(|n| syms.contains_key(*n))
}

fn runtime_read_error(pid: u32, e: nix::Error) -> InjectError {
    match e {
        nix::Error::ESRCH => InjectError::ProcessExited { pid },
        e => InjectError::Ptrace(format!("reading _PyRuntime: {e}")),
    }
}

const _: () = assert!(readiness::PROBE_LEN >= debug_offsets::READ_LEN);

/// 3.13+: what the interpreter's own `_Py_DebugOffsets` says (see [`debug_offsets`]); `table` is
/// the head of `_PyRuntime` at `runtime_addr`.
fn check_debug_offsets(
    pid: u32,
    runtime: &RuntimeDetails,
    runtime_addr: u64,
    table: &[u8],
) -> Result<(), InjectError> {
    let Some(header) = debug_offsets::header(table) else {
        return Err(InjectError::Unsupported(format!(
            "no _Py_DebugOffsets at _PyRuntime in a {} process",
            runtime.version_string()
        )));
    };
    if header.version != runtime.version {
        return Err(InjectError::Unsupported(format!(
            "_Py_DebugOffsets says {}.{}, the process was detected as {}",
            header.version.0,
            header.version.1,
            runtime.version_string()
        )));
    }
    if header.free_threaded {
        return Err(InjectError::FreeThreaded {
            pid,
            version: runtime.version_string(),
            evidence: "_Py_DebugOffsets.free_threaded is set".into(),
        });
    }
    if let debug_offsets::Layout::RemoteDebug {
        interpreters_head,
        remote_debugging_enabled,
    } = debug_offsets::layout(table, runtime.version.1)
    {
        // `interpreters.head` lies inside the head already read (at 0x328 on 3.14).
        let at = interpreters_head as usize;
        let interp = match table.get(at..at + 8) {
            Some(b) => b.try_into().map(u64::from_le_bytes).unwrap_or(0),
            None => {
                let b = remote_mem::read(pid, runtime_addr + interpreters_head, 8)
                    .map_err(|e| runtime_read_error(pid, e))?;
                b.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0)
            }
        };
        if interp == 0 {
            return Err(InjectError::NotReady { pid });
        }
        let flag = remote_mem::read(pid, interp + remote_debugging_enabled, 4)
            .map_err(|e| runtime_read_error(pid, e))?;
        if flag.get(..4) == Some(&[0, 0, 0, 0]) {
            return Err(InjectError::RemoteDebugDisabled {
                pid,
                how: "the interpreter's remote_debug setting is off".into(),
            });
        }
    }
    Ok(())
}

/// Refuses (retryably) while `Py_Initialize` has not finished: see [`readiness`].
fn ensure_initialized(pid: u32, minor: u32, head: &[u8]) -> Result<(), InjectError> {
    match readiness::initialized(minor, head) {
        Some(true) => Ok(()),
        Some(false) => Err(InjectError::NotReady { pid }),
        // An unknown layout: trust that a process this old has finished starting.
        None if process_age(pid).is_some_and(|a| a > Duration::from_secs(2)) => Ok(()),
        None => Err(InjectError::NotReady { pid }),
    }
}

fn process_age(pid: u32) -> Option<Duration> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    crate::discover::age_since_start(stat.starttime)
}

fn record_outcome(report: &mut InjectReport, outcome: Option<Outcome>) {
    match outcome {
        Some(Outcome::Ran) => report.confirmed = true,
        Some(Outcome::AlreadyPresent) => {
            report.confirmed = true;
            report.already_present = true;
        }
        Some(Outcome::Raised(msg)) => {
            report.confirmed = true;
            report.raised = Some(msg);
        }
        None => {}
    }
}

fn read_header(pid: u32, base: u64) -> Option<scratch::Header> {
    remote_mem::read(pid, base, scratch::HEADER_LEN)
        .ok()
        .as_deref()
        .and_then(scratch::parse_header)
}

fn wait_for(deadline: Instant, mut f: impl FnMut() -> bool) -> bool {
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Removes this injection's page after the call (given at least 500 ms more), and records it.
fn sweep_into(
    report: &mut InjectReport,
    pid: u32,
    gadgets: gadgets::Gadgets,
    deadline: Instant,
) -> Result<(), InjectError> {
    let (removed, stop) = sweep_pass(
        pid,
        gadgets,
        deadline.max(Instant::now() + Duration::from_millis(500)),
    )?;
    report.cleanup_stop_time = Some(stop);
    report.scratch_released = removed > 0;
    Ok(())
}

/// One short stop that unmaps every page earlier injections left behind and nothing still uses.
/// Returns how many were removed and the stop time.
fn sweep_pass(
    pid: u32,
    gadgets: gadgets::Gadgets,
    deadline: Instant,
) -> Result<(usize, Duration), InjectError> {
    // A page is only removed while the thread's stack is above the stub that used it (no handler or
    // callback frame can return into it); a busy thread may be deeper at a given instant, so a few
    // short stops a few milliseconds apart are tried. The stop time reported is the longest one.
    let (mut removed, mut longest) = (0, Duration::ZERO);
    for _ in 0..20 {
        let maps = python_runtime::read_maps(pid)
            .map_err(|e| InjectError::from_io(pid, "reading its maps", e))?;
        let leftovers = hijack::find_leftovers(pid, &maps);
        if leftovers.is_empty() || Instant::now() >= deadline {
            break;
        }
        let mut session = hijack::Session::open(pid, gadgets, deadline, None)?;
        let n = session.sweep(&leftovers);
        longest = longest.max(session.detach()?);
        removed += n;
        if n == leftovers.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    Ok((removed, longest))
}

/// Removes pages of interrupted or pending injections that are no longer needed (one short stop, only
/// if there is anything to remove). For the agent's housekeeping and `zerostep inject --cleanup`.
pub fn cleanup(pid: u32, timeout: Duration) -> Result<usize, InjectError> {
    preflight(pid)?;
    let maps = python_runtime::read_maps(pid)
        .map_err(|e| InjectError::from_io(pid, "reading its maps", e))?;
    let gadgets = gadgets::find(pid, &maps)?;
    sweep_pass(pid, gadgets, Instant::now() + timeout).map(|(n, _)| n)
}

/// The runtime details the agent will want alongside a report.
pub fn describe(runtime: &RuntimeDetails) -> String {
    match &runtime.libpython {
        LibPython::Shared(p) => format!("CPython {} ({p})", runtime.version_string()),
        LibPython::LinkedIntoExecutable => format!(
            "CPython {} (linked into the executable)",
            runtime.version_string()
        ),
    }
}
