//! One seized thread: stops, registers, extended state, and bounded waits.
//!
//! All ptrace requests for a tracee must come from the thread that seized it, so a `Tracee` is used
//! from one thread only (it is deliberately not `Send`). Waits poll with `WNOHANG` against a deadline:
//! nothing here can block forever.
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use libc::user_regs_struct;
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::unistd::Pid;

const PTRACE_EVENT_STOP: i32 = 128;
const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420e;
const PTRACE_SYSCALL_INFO_ENTRY: u8 = 1;
const PTRACE_SYSCALL_INFO_EXIT: u8 = 2;
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Large enough for every XSAVE layout including AMX tile data.
const XSTATE_BUF: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP` after `PTRACE_INTERRUPT`.
    Interrupt,
    /// `PTRACE_EVENT_STOP` for a group stop (SIGSTOP and friends).
    GroupStop(i32),
    SyscallEntry,
    SyscallExit,
    /// Signal-delivery stop: the signal must be passed on when resuming.
    Signal(i32),
    /// The thread is gone (exited or killed); carries the raw wait status.
    Gone(i32),
}

#[derive(Debug)]
pub enum WaitError {
    Timeout,
    Sys(Errno),
}

impl From<Errno> for WaitError {
    fn from(e: Errno) -> Self {
        WaitError::Sys(e)
    }
}

pub struct Tracee {
    pub tid: Pid,
    attached: bool,
    _not_send: PhantomData<*const ()>,
}

impl Tracee {
    /// `PTRACE_SEIZE` with syscall-stops marked (`TRACESYSGOOD`). Deliberately without `EXITKILL`:
    /// the target must outlive the injector.
    pub fn seize(tid: u32) -> Result<Tracee, Errno> {
        let pid = Pid::from_raw(tid as i32);
        ptrace::seize(pid, ptrace::Options::PTRACE_O_TRACESYSGOOD)?;
        Ok(Tracee {
            tid: pid,
            attached: true,
            _not_send: PhantomData,
        })
    }

    pub fn interrupt(&self) -> Result<(), Errno> {
        ptrace::interrupt(self.tid)
    }

    /// The next stop if one is already reported, without waiting.
    pub fn poll(&self) -> Result<Option<Stop>, WaitError> {
        let mut status = 0;
        // SAFETY: plain waitpid on our tracee with a valid out-pointer.
        let r =
            unsafe { libc::waitpid(self.tid.as_raw(), &mut status, libc::__WALL | libc::WNOHANG) };
        if r < 0 {
            return Err(WaitError::Sys(Errno::last()));
        }
        if r == 0 {
            return Ok(None);
        }
        self.decode(status).map(Some)
    }

    /// Waits for the next stop of this thread until `deadline`.
    pub fn wait(&self, deadline: Instant) -> Result<Stop, WaitError> {
        let started = Instant::now();
        let mut nap = Duration::from_micros(20);
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid on our tracee with a valid out-pointer.
            let r = unsafe {
                libc::waitpid(self.tid.as_raw(), &mut status, libc::__WALL | libc::WNOHANG)
            };
            if r < 0 {
                return Err(WaitError::Sys(Errno::last()));
            }
            if r > 0 {
                return self.decode(status);
            }
            if Instant::now() >= deadline {
                return Err(WaitError::Timeout);
            }
            // Spin politely for the first fraction of a millisecond (most stops arrive within tens of
            // microseconds), then back off so a long-running injected call costs no CPU.
            if started.elapsed() < Duration::from_micros(300) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
            }
        }
    }

    fn decode(&self, status: i32) -> Result<Stop, WaitError> {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            tracing::debug!(tid = self.tid.as_raw(), status, "tracee reported gone");
            return Ok(Stop::Gone(status));
        }
        if !libc::WIFSTOPPED(status) {
            return Err(WaitError::Sys(Errno::EINVAL));
        }
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if event == PTRACE_EVENT_STOP {
            return Ok(match sig {
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                    Stop::GroupStop(sig)
                }
                _ => Stop::Interrupt,
            });
        }
        if sig == libc::SIGTRAP | 0x80 {
            return Ok(match self.syscall_op()? {
                PTRACE_SYSCALL_INFO_EXIT => Stop::SyscallExit,
                _ => Stop::SyscallEntry,
            });
        }
        if event != 0 {
            // No other events are enabled; treat as a plain trap to resume without a signal.
            return Ok(Stop::Signal(0));
        }
        Ok(Stop::Signal(sig))
    }

    fn syscall_op(&self) -> Result<u8, Errno> {
        let mut info = [0u8; 88];
        // SAFETY: PTRACE_GET_SYSCALL_INFO writes at most `info.len()` bytes into our buffer.
        let r = unsafe {
            libc::ptrace(
                PTRACE_GET_SYSCALL_INFO,
                self.tid.as_raw(),
                info.len() as *mut libc::c_void,
                info.as_mut_ptr() as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(Errno::last());
        }
        Ok(if info[0] == PTRACE_SYSCALL_INFO_EXIT {
            info[0]
        } else {
            PTRACE_SYSCALL_INFO_ENTRY
        })
    }

    pub fn regs(&self) -> Result<user_regs_struct, Errno> {
        ptrace::getregs(self.tid)
    }

    pub fn set_regs(&self, regs: user_regs_struct) -> Result<(), Errno> {
        ptrace::setregs(self.tid, regs)
    }

    /// The thread's complete extended state (`NT_X86_XSTATE`), in the kernel's user ABI XSAVE format.
    pub fn xstate(&self) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; XSTATE_BUF];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: the kernel writes at most iov_len bytes into `buf` and updates iov_len.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGSET,
                self.tid.as_raw(),
                NT_X86_XSTATE as *mut libc::c_void,
                &mut iov as *mut libc::iovec as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(Errno::last());
        }
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    /// Resumes to the next syscall-stop (or signal), delivering `sig` if non-zero.
    pub fn resume_syscall(&self, sig: i32) -> Result<(), Errno> {
        self.raw_resume(libc::PTRACE_SYSCALL, sig)
    }

    pub fn resume(&self, sig: i32) -> Result<(), Errno> {
        self.raw_resume(libc::PTRACE_CONT, sig)
    }

    /// Raw request so that every signal, real-time ones included, is passed on: `nix::Signal` cannot
    /// represent those, and swallowing a signal is not an option.
    fn raw_resume(&self, request: libc::c_uint, sig: i32) -> Result<(), Errno> {
        // SAFETY: a resume request takes no pointers; `data` is the signal number.
        let r = unsafe {
            libc::ptrace(
                request,
                self.tid.as_raw(),
                std::ptr::null_mut::<libc::c_void>(),
                sig as libc::c_long,
            )
        };
        if r < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    /// Detaches; the thread continues from its current registers.
    pub fn detach(&mut self) -> Result<(), Errno> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        match ptrace::detach(self.tid, None) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Tracee {
    /// A tracee must never be left attached by an early return. If it is running rather than
    /// stopped, `PTRACE_DETACH` fails with ESRCH; interrupting it first makes the detach land.
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        if ptrace::detach(self.tid, None).is_ok() {
            self.attached = false;
            return;
        }
        if self.interrupt().is_ok() {
            let deadline = Instant::now() + Duration::from_millis(500);
            while let Ok(stop) = self.wait(deadline) {
                match stop {
                    Stop::Gone(_) => break,
                    Stop::Signal(sig) => {
                        let _ = self.resume(sig);
                    }
                    _ => {
                        let _ = ptrace::detach(self.tid, None);
                        break;
                    }
                }
            }
        }
        self.attached = false;
    }
}
