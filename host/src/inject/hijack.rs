//! The stop-the-main-thread sequence. Everything that can be prepared without stopping the target
//! (symbols, gadgets, the page contents) is prepared by the caller; here the thread is stopped, its
//! context is saved into a signal frame on its own stack, and from that moment on every register
//! change makes the thread return through `__restore_rt` → `rt_sigreturn(frame)`. The injector only
//! watches: if it dies, the thread completes the operation and restores itself.
use std::time::{Duration, Instant};

use libc::user_regs_struct;
use nix::errno::Errno;
use tracing::{debug, warn};

use super::gadgets::{Gadgets, RESTORE_RT_SYSCALL_END};
use super::ptrace_call::{Stop, Tracee, WaitError};
use super::scratch;
use super::sigframe::{self, SigFrame};
use super::thread_state::{self, ThreadState};
use super::{remote_mem, InjectError};

const SYS_MMAP: u64 = 9;
const SYS_MUNMAP: u64 = 11;
const PROT_RWX: u64 = 7;
const MAP_PRIVATE_ANON: u64 = 0x22;
/// Scratch pages are requested at a random page inside this 1 GiB window (a hint, not MAP_FIXED), so a
/// page whose injector died before filling it is still recognisable as ours.
pub const SCRATCH_WINDOW: (u64, u64) = (0x7a5e_0000_0000, 1 << 30);
/// Below the red zone, leave room so the frame never touches anything the thread might still own.
const STACK_SLACK: u64 = 128 + 256;

/// A page left by an earlier injection, found before stopping anything.
#[derive(Debug, Clone, Copy)]
pub struct Leftover {
    pub addr: u64,
    pub len: u64,
}

/// A stopped main thread with its saved context.
pub struct Session {
    pid: u32,
    tracee: Tracee,
    saved: user_regs_struct,
    frame: SigFrame,
    gadgets: Gadgets,
    deadline: Instant,
    step_delay: Option<Duration>,
    started: Instant,
}

fn gone(pid: u32, site: &str, status: i32) -> InjectError {
    warn!(pid, site, status, "thread reported gone");
    InjectError::ProcessExited { pid }
}

fn errno_to(pid: u32, what: &str, e: Errno) -> InjectError {
    match e {
        Errno::ESRCH if std::path::Path::new(&format!("/proc/{pid}")).exists() => {
            InjectError::Ptrace(format!("{what}: thread not stopped (ESRCH)"))
        }
        Errno::ESRCH => {
            warn!(pid, what, "ESRCH and no /proc entry");
            InjectError::ProcessExited { pid }
        }
        Errno::EPERM | Errno::EACCES => InjectError::PermissionDenied {
            pid,
            detail: what.to_string(),
        },
        e => InjectError::Ptrace(format!("{what}: {e}")),
    }
}

fn wait_to(pid: u32, what: &str, e: WaitError) -> InjectError {
    match e {
        WaitError::Timeout => InjectError::Timeout(format!("{what} (pid {pid})")),
        WaitError::Sys(Errno::ECHILD) | WaitError::Sys(Errno::ESRCH)
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() =>
        {
            warn!(pid, what, "wait failed and no /proc entry");
            InjectError::ProcessExited { pid }
        }
        WaitError::Sys(e) => InjectError::Ptrace(format!("{what}: {e}")),
    }
}

/// The thread's blocked-signal mask, which `rt_sigreturn` will reinstate.
fn sig_blocked(pid: u32) -> Result<u64, InjectError> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).map_err(|e| {
            warn!(pid, error = %e, "reading the thread status");
            InjectError::ProcessExited { pid }
        })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| InjectError::Ptrace("no SigBlk in status".into()))
}

impl Session {
    /// Seizes and interrupts the main thread, saves its context, and writes the signal frame.
    pub fn open(
        pid: u32,
        gadgets: Gadgets,
        deadline: Instant,
        step_delay: Option<Duration>,
    ) -> Result<Session, InjectError> {
        let tracee = Tracee::seize(pid).map_err(|e| match e {
            Errno::EPERM => match super::tracer_pid(pid) {
                Some(t) if t != 0 => InjectError::AlreadyTraced { pid, tracer_pid: t },
                _ => InjectError::PermissionDenied {
                    pid,
                    detail: "PTRACE_SEIZE refused".into(),
                },
            },
            e => errno_to(pid, "PTRACE_SEIZE", e),
        })?;
        let started = Instant::now();
        tracee
            .interrupt()
            .map_err(|e| errno_to(pid, "PTRACE_INTERRUPT", e))?;
        loop {
            match tracee
                .wait(deadline)
                .map_err(|e| wait_to(pid, "waiting for the interrupt stop", e))?
            {
                Stop::Interrupt => break,
                Stop::Signal(sig) => tracee
                    .resume(sig)
                    .map_err(|e| errno_to(pid, "pass signal", e))?,
                Stop::GroupStop(sig) => return Err(InjectError::Stopped { pid, signal: sig }),
                Stop::Gone(st) => return Err(gone(pid, "site1", st)),
                Stop::SyscallEntry | Stop::SyscallExit => {
                    tracee.resume(0).map_err(|e| errno_to(pid, "resume", e))?
                }
            }
        }
        debug!(pid, at = ?started.elapsed(), "interrupt stop");
        let saved = tracee.regs().map_err(|e| errno_to(pid, "GETREGS", e))?;
        let xstate = tracee
            .xstate()
            .map_err(|e| errno_to(pid, "GETREGSET xstate", e))?;
        let mask = sig_blocked(pid)?;
        let resume = sigframe::resume_context(&saved);
        let limit = saved
            .rsp
            .checked_sub(STACK_SLACK)
            .ok_or_else(|| InjectError::Ptrace("rsp too low".into()))?;
        let frame = sigframe::build(&resume, &xstate, mask, gadgets.restore_rt, limit)
            .map_err(InjectError::Ptrace)?;
        remote_mem::write(pid, frame.addr, &frame.bytes)
            .map_err(|e| errno_to(pid, "writing the signal frame", e))?;
        debug!(pid, at = ?started.elapsed(), "frame written");
        let s = Session {
            pid,
            tracee,
            saved,
            frame,
            gadgets,
            deadline,
            step_delay,
            started,
        };
        s.pause();
        Ok(s)
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn classify(&self, runtime: (u64, u64)) -> ThreadState {
        thread_state::classify(&self.saved, runtime)
    }

    /// Test hook: widen every step so a kill can land between any two of them.
    fn pause(&self) {
        if let Some(d) = self.step_delay {
            std::thread::sleep(d);
        }
    }

    /// Runs one system call in the thread through the `syscall; ret` gadget. Called at a stop where the
    /// registers are ours to set (the interrupt stop, or the exit stop of the previous remote call). The
    /// `ret` after the call lands in `__restore_rt`, so a vanished injector leaves a restored thread.
    pub fn remote_syscall(&mut self, nr: u64, args: [u64; 6]) -> Result<u64, InjectError> {
        let pid = self.pid;
        let mut r = self.saved;
        r.rip = self.gadgets.syscall_ret;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r.rsp = self.frame.addr;
        self.tracee
            .set_regs(r)
            .map_err(|e| errno_to(pid, "SETREGS", e))?;
        self.pause();
        let at = self.gadgets.syscall_ret + 2;
        let mut entered = false;
        self.tracee
            .resume_syscall(0)
            .map_err(|e| errno_to(pid, "PTRACE_SYSCALL", e))?;
        loop {
            let stop = self
                .tracee
                .wait(self.deadline)
                .map_err(|e| wait_to(pid, "remote system call", e))?;
            match stop {
                Stop::SyscallEntry => {
                    let regs = self
                        .tracee
                        .regs()
                        .map_err(|e| errno_to(pid, "GETREGS", e))?;
                    if regs.rip == at && regs.orig_rax == nr {
                        entered = true;
                    }
                    self.tracee.resume_syscall(0)
                }
                Stop::SyscallExit => {
                    let regs = self
                        .tracee
                        .regs()
                        .map_err(|e| errno_to(pid, "GETREGS", e))?;
                    if entered && regs.rip == at {
                        self.pause();
                        return Ok(regs.rax);
                    }
                    self.tracee.resume_syscall(0)
                }
                Stop::Signal(sig) => self.tracee.resume_syscall(sig),
                Stop::Interrupt | Stop::GroupStop(_) => self.tracee.resume_syscall(0),
                Stop::Gone(st) => return Err(gone(pid, "site2", st)),
            }
            .map_err(|e| errno_to(pid, "PTRACE_SYSCALL", e))?;
        }
    }

    /// Unmaps pages of earlier injections that nothing can return into any more.
    pub fn sweep(&mut self, leftovers: &[Leftover]) -> usize {
        let mut removed = 0;
        for l in leftovers {
            let rip = self.saved.rip;
            let in_page = l.addr <= rip && rip < l.addr + l.len;
            let Ok(fresh) = remote_mem::read(self.pid, l.addr, scratch::HEADER_LEN) else {
                continue;
            };
            let sweepable = match scratch::parse_header(&fresh) {
                Some(h) => h.sweepable(in_page),
                // Mapped by an injector that died before filling it: nothing can run in it.
                None => !in_page && fresh.iter().all(|b| *b == 0),
            };
            if !sweepable {
                continue;
            }
            match self.remote_syscall(SYS_MUNMAP, [l.addr, l.len, 0, 0, 0, 0]) {
                Ok(0) => removed += 1,
                Ok(r) => warn!(
                    pid = self.pid,
                    addr = l.addr,
                    rc = r as i64,
                    "munmap of a leftover page failed"
                ),
                Err(e) => {
                    warn!(pid = self.pid, error = %e, "sweeping a leftover page");
                    break;
                }
            }
        }
        removed
    }

    /// Maps the scratch page (read/write/execute, anonymous, private) and fills it.
    pub fn map_scratch(
        &mut self,
        page: impl FnOnce(u64) -> Vec<u8>,
        len: u64,
    ) -> Result<u64, InjectError> {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        let slots = (SCRATCH_WINDOW.1 - len) / 4096;
        let hint = SCRATCH_WINDOW.0 + (u64::from_le_bytes(r) % slots.max(1)) * 4096;
        let addr = self.remote_syscall(
            SYS_MMAP,
            [hint, len, PROT_RWX, MAP_PRIVATE_ANON, u64::MAX, 0],
        )?;
        if (addr as i64) < 0 && (addr as i64) > -4096 {
            return Err(InjectError::Ptrace(format!(
                "remote mmap failed: errno {}",
                -(addr as i64)
            )));
        }
        debug!(pid = self.pid, at = ?self.started.elapsed(), "mapped");
        let bytes = page(addr);
        remote_mem::write(self.pid, addr, &bytes)
            .map_err(|e| errno_to(self.pid, "writing the scratch page", e))?;
        self.pause();
        Ok(addr)
    }

    /// Points the thread at `entry` with `rsp` at the frame (its final `ret` goes to `__restore_rt`),
    /// outside any syscall so the kernel does not restart one on resume.
    fn enter(&mut self, entry: u64) -> Result<(), InjectError> {
        let mut r = self.saved;
        r.rip = entry;
        r.rsp = self.frame.addr;
        r.rax = 0;
        r.orig_rax = u64::MAX;
        self.tracee
            .set_regs(r)
            .map_err(|e| errno_to(self.pid, "SETREGS", e))?;
        self.pause();
        Ok(())
    }

    /// Calls `entry` with `rsp` at the frame, so its final `ret` goes to `__restore_rt`; returns at the
    /// entry stop of that `rt_sigreturn`, before the thread is restored. Signals arriving meanwhile are
    /// delivered (their handlers run on top of the call, as they would on top of any C code).
    pub fn call(&mut self, entry: u64) -> Result<(), InjectError> {
        let pid = self.pid;
        self.enter(entry)?;
        let sigreturn_at = self.gadgets.restore_rt + RESTORE_RT_SYSCALL_END;
        self.tracee
            .resume_syscall(0)
            .map_err(|e| errno_to(pid, "PTRACE_SYSCALL", e))?;
        let began = Instant::now();
        let mut stops = 0u32;
        loop {
            let stop = self
                .tracee
                .wait(self.deadline)
                .map_err(|e| wait_to(pid, "the injected call", e))?;
            stops += 1;
            match stop {
                Stop::SyscallEntry => {
                    let regs = self
                        .tracee
                        .regs()
                        .map_err(|e| errno_to(pid, "GETREGS", e))?;
                    // Signal handlers return through the same `__restore_rt`; ours is the one whose
                    // stack pointer sits just above our frame's `pretcode`.
                    if regs.rip == sigreturn_at && regs.rsp == self.frame.addr + 8 {
                        debug!(pid, stops, took = ?began.elapsed(), "call returned");
                        self.pause();
                        return Ok(());
                    }
                    self.tracee.resume_syscall(0)
                }
                Stop::SyscallExit | Stop::Interrupt | Stop::GroupStop(_) => {
                    self.tracee.resume_syscall(0)
                }
                Stop::Signal(sig) => self.tracee.resume_syscall(sig),
                Stop::Gone(st) => return Err(gone(pid, "site3", st)),
            }
            .map_err(|e| errno_to(pid, "PTRACE_SYSCALL", e))?;
        }
    }

    /// The direct call without syscall-stops: the thread runs `Ensure → Run → Release` at full speed
    /// (`PTRACE_CONT`, signals passed on) while the injector watches the page's `state`. When it reads
    /// `finished`, the stub is parked in a 100 ms `nanosleep`; an interrupt there is followed by one
    /// remote `munmap` whose `ret` lands in `__restore_rt`. If the injector dies instead, the park runs
    /// out and the stub returns into `__restore_rt` by itself.
    ///
    /// Returns the page's header, whether the page was unmapped, and the stop time. The page is left
    /// mapped only if the park ran out before the interrupt landed (then a sweep removes it).
    pub fn call_direct(
        mut self,
        entry: u64,
        base: u64,
        len: u64,
    ) -> Result<(Option<scratch::Header>, bool, Duration), InjectError> {
        let pid = self.pid;
        self.enter(entry)?;
        self.tracee
            .resume(0)
            .map_err(|e| errno_to(pid, "PTRACE_CONT", e))?;
        let began = Instant::now();
        let read_header = || {
            remote_mem::read(pid, base, scratch::HEADER_LEN)
                .ok()
                .as_deref()
                .and_then(scratch::parse_header)
        };
        let mut nap = Duration::from_micros(10);
        loop {
            match self
                .tracee
                .poll()
                .map_err(|e| wait_to(pid, "the injected call", e))?
            {
                Some(Stop::Signal(sig)) => self
                    .tracee
                    .resume(sig)
                    .map_err(|e| errno_to(pid, "pass signal", e))?,
                Some(Stop::Gone(st)) => return Err(gone(pid, "poll", st)),
                Some(_) => self
                    .tracee
                    .resume(0)
                    .map_err(|e| errno_to(pid, "PTRACE_CONT", e))?,
                None => {}
            }
            if read_header().is_some_and(|h| h.state == scratch::STATE_FINISHED) {
                break;
            }
            if Instant::now() >= self.deadline {
                return Err(InjectError::Timeout(format!(
                    "the injected call did not finish (pid {pid}); it keeps running and restores the thread itself"
                )));
            }
            if began.elapsed() < Duration::from_micros(300) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_micros(200));
            }
        }
        debug!(pid, took = ?began.elapsed(), at = ?self.started.elapsed(), "call finished");
        let header = read_header();
        let park_end = base + scratch::park_end() as u64;
        let mut retry = Duration::from_micros(200);
        loop {
            self.tracee
                .interrupt()
                .map_err(|e| errno_to(pid, "PTRACE_INTERRUPT", e))?;
            let regs = loop {
                match self
                    .tracee
                    .wait(self.deadline)
                    .map_err(|e| wait_to(pid, "interrupting the parked call", e))?
                {
                    Stop::Interrupt | Stop::GroupStop(_) => {
                        break self
                            .tracee
                            .regs()
                            .map_err(|e| errno_to(pid, "GETREGS", e))?
                    }
                    Stop::Signal(sig) => self
                        .tracee
                        .resume(sig)
                        .map_err(|e| errno_to(pid, "pass signal", e))?,
                    Stop::Gone(st) => return Err(gone(pid, "site4", st)),
                    _ => self
                        .tracee
                        .resume(0)
                        .map_err(|e| errno_to(pid, "PTRACE_CONT", e))?,
                }
            };
            self.pause();
            debug!(pid, at = ?self.started.elapsed(), "parked");
            if regs.rip == park_end {
                let rc = self.remote_syscall(SYS_MUNMAP, [base, len, 0, 0, 0, 0])?;
                let stop = self.detach()?;
                return Ok((header, rc == 0, stop));
            }
            let in_page = base <= regs.rip && regs.rip < base + len;
            debug!(
                pid,
                rip = regs.rip,
                rsp = regs.rsp,
                entry_rsp = header.map(|h| h.entry_rsp),
                in_page,
                "not parked yet"
            );
            // Signals were blocked before `finished`, so no handler frame can point into the page.
            if !in_page {
                // The park ended first (ran out, or a signal cut it short): the thread already
                // returned through `__restore_rt`.
                let stop = self.detach()?;
                return Ok((header, false, stop));
            }
            // Between `state = finished` and the park, or inside a signal handler that interrupted
            // the stub and will return into the page: let it get there, then look again.
            self.tracee
                .resume(0)
                .map_err(|e| errno_to(pid, "PTRACE_CONT", e))?;
            // Give it real time to run: under load a thread may wait milliseconds for a CPU.
            std::thread::sleep(retry);
            retry = (retry * 2).min(Duration::from_millis(5));
        }
    }

    /// At the `rt_sigreturn` entry stop: turn that system call into `munmap(page)` and send the thread
    /// back to `__restore_rt`, so the page is gone before the thread's context is restored. Returns the
    /// munmap result and detaches.
    pub fn unmap_and_detach(self, addr: u64, len: u64) -> Result<(bool, Duration), InjectError> {
        let pid = self.pid;
        let mut r = self
            .tracee
            .regs()
            .map_err(|e| errno_to(pid, "GETREGS", e))?;
        r.orig_rax = SYS_MUNMAP;
        r.rdi = addr;
        r.rsi = len;
        r.rip = self.gadgets.restore_rt;
        self.tracee
            .set_regs(r)
            .map_err(|e| errno_to(pid, "SETREGS", e))?;
        self.pause();
        self.tracee
            .resume_syscall(0)
            .map_err(|e| errno_to(pid, "PTRACE_SYSCALL", e))?;
        let released = loop {
            match self
                .tracee
                .wait(self.deadline)
                .map_err(|e| wait_to(pid, "munmap", e))?
            {
                Stop::SyscallExit => {
                    let regs = self
                        .tracee
                        .regs()
                        .map_err(|e| errno_to(pid, "GETREGS", e))?;
                    break regs.rax == 0;
                }
                Stop::Gone(st) => return Err(gone(pid, "site5", st)),
                Stop::Signal(sig) => self.tracee.resume_syscall(sig),
                _ => self.tracee.resume_syscall(0),
            }
            .map_err(|e| errno_to(pid, "PTRACE_SYSCALL", e))?;
        };
        let stop = self.detach()?;
        Ok((released, stop))
    }

    /// Lets the thread go from wherever it is; every path leads through `rt_sigreturn(frame)` (or, at
    /// the interrupt stop before any change, straight back into its interrupted call). Returns the stop
    /// time.
    pub fn detach(mut self) -> Result<Duration, InjectError> {
        let pid = self.pid;
        self.tracee
            .detach()
            .map_err(|e| errno_to(pid, "PTRACE_DETACH", e))?;
        let stop = self.started.elapsed();
        debug!(pid, ?stop, "detached");
        Ok(stop)
    }
}

/// Pages of earlier injections: anonymous `rwxp` mappings that start with the scratch magic, or that
/// lie in the scratch window and were never filled.
pub fn find_leftovers(
    pid: u32,
    maps: &[crate::discover::python_runtime::Mapping],
) -> Vec<Leftover> {
    let in_window = |a: u64| SCRATCH_WINDOW.0 <= a && a < SCRATCH_WINDOW.0 + SCRATCH_WINDOW.1;
    maps.iter()
        .filter(|m| m.perms == "rwxp" && m.path.is_empty() && m.inode == 0)
        .filter_map(|m| {
            let b = remote_mem::read(pid, m.start, scratch::HEADER_LEN).ok()?;
            let len = m.end - m.start;
            match scratch::parse_header(&b) {
                Some(h) if h.size == len => Some(Leftover { addr: m.start, len }),
                None if in_window(m.start) && b.iter().all(|x| *x == 0) => {
                    Some(Leftover { addr: m.start, len })
                }
                _ => None,
            }
        })
        .collect()
}
