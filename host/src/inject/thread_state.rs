//! Where the interrupted main thread was, and therefore what it is safe to make it do.
//!
//! Only a thread that was *blocked* in one of a few waiting system calls can be made to call
//! `PyGILState_Ensure` directly: it released the GIL around that wait (CPython does, for every call
//! listed here) and it is not in the middle of interpreter bookkeeping. A futex wait is a blocked wait
//! too — unless its address lies inside `_PyRuntime`, where the GIL (and the runtime's own locks) live:
//! hijacking a thread that waits for the GIL deadlocks the process. Everything else (running Python,
//! running C, any other system call, or a call that already completed) only gets `Py_AddPendingCall`.
use libc::user_regs_struct;

const SYS_POLL: u64 = 7;
const SYS_SELECT: u64 = 23;
const SYS_NANOSLEEP: u64 = 35;
const SYS_ACCEPT: u64 = 43;
const SYS_WAIT4: u64 = 61;
const SYS_FUTEX: u64 = 202;
const SYS_CLOCK_NANOSLEEP: u64 = 230;
const SYS_EPOLL_WAIT: u64 = 232;
const SYS_PSELECT6: u64 = 270;
const SYS_PPOLL: u64 = 271;
const SYS_EPOLL_PWAIT: u64 = 281;
const SYS_ACCEPT4: u64 = 288;
const SYS_EPOLL_PWAIT2: u64 = 441;

const FUTEX_CMD_MASK: u64 = 0x7f; // without FUTEX_PRIVATE_FLAG / FUTEX_CLOCK_REALTIME
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_BITSET: u64 = 9;

/// The verdict for one interrupted thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadState {
    /// Blocked in the named wait: the direct call is safe.
    BlockedWait(&'static str),
    /// Anything else, with the reason (for logs and reports).
    Busy(String),
}

fn blocking_wait_name(nr: u64) -> Option<&'static str> {
    Some(match nr {
        SYS_POLL => "poll",
        SYS_SELECT => "select",
        SYS_NANOSLEEP => "nanosleep",
        SYS_ACCEPT => "accept",
        SYS_WAIT4 => "wait4",
        SYS_CLOCK_NANOSLEEP => "clock_nanosleep",
        SYS_EPOLL_WAIT => "epoll_wait",
        SYS_PSELECT6 => "pselect6",
        SYS_PPOLL => "ppoll",
        SYS_EPOLL_PWAIT => "epoll_pwait",
        SYS_ACCEPT4 => "accept4",
        SYS_EPOLL_PWAIT2 => "epoll_pwait2",
        _ => return None,
    })
}

/// Was the call interrupted while waiting (rather than stopped on its way out with a result)?
fn was_blocked(rax: u64) -> bool {
    // -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK, -EINTR
    matches!(rax as i64, -512 | -513 | -514 | -516 | -4)
}

/// Classifies the registers saved at the interrupt stop; `runtime` is `[_PyRuntime, +size)`.
pub fn classify(regs: &user_regs_struct, runtime: (u64, u64)) -> ThreadState {
    let nr = regs.orig_rax;
    if (nr as i64) < 0 {
        return ThreadState::Busy("running user code".into());
    }
    // A listed wait that already completed is as safe as a blocked one: the thread is on its way
    // back into the C wrapper, which still has to re-take the GIL it released around the call.
    if let Some(name) = blocking_wait_name(nr) {
        return ThreadState::BlockedWait(name);
    }
    if !was_blocked(regs.rax) {
        return ThreadState::Busy(format!(
            "finishing system call {nr} (result {})",
            regs.rax as i64
        ));
    }
    if nr == SYS_FUTEX {
        let op = regs.rsi & FUTEX_CMD_MASK;
        let addr = regs.rdi;
        if op != FUTEX_WAIT && op != FUTEX_WAIT_BITSET {
            return ThreadState::Busy(format!("futex op {op}"));
        }
        if runtime.0 <= addr && addr < runtime.0 + runtime.1 {
            return ThreadState::Busy(format!(
                "waiting for the GIL (futex {addr:#x} inside _PyRuntime)"
            ));
        }
        return ThreadState::BlockedWait("futex");
    }
    ThreadState::Busy(format!("blocked in system call {nr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(nr: i64, rax: i64) -> user_regs_struct {
        // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
        let mut r: user_regs_struct = unsafe { std::mem::zeroed() };
        r.orig_rax = nr as u64;
        r.rax = rax as u64;
        r
    }

    #[test]
    fn verdicts() {
        let rt = (0x1000, 0x100);
        assert_eq!(
            classify(&regs(232, -514), rt),
            ThreadState::BlockedWait("epoll_wait")
        );
        assert_eq!(
            classify(&regs(230, -516), rt),
            ThreadState::BlockedWait("clock_nanosleep")
        );
        assert!(matches!(classify(&regs(-1, 0), rt), ThreadState::Busy(_)));
        assert_eq!(
            classify(&regs(232, 1), rt),
            ThreadState::BlockedWait("epoll_wait"),
            "completed wait"
        );
        assert!(
            matches!(classify(&regs(202, 0), rt), ThreadState::Busy(_)),
            "completed futex"
        );
        assert!(
            matches!(classify(&regs(0, -512), rt), ThreadState::Busy(_)),
            "read is not listed"
        );
        let mut gil = regs(202, -512);
        gil.rdi = 0x1080;
        gil.rsi = 0x80 | 9; // FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG
        assert!(
            matches!(classify(&gil, rt), ThreadState::Busy(_)),
            "GIL futex"
        );
        gil.rdi = 0x9000;
        assert_eq!(classify(&gil, rt), ThreadState::BlockedWait("futex"));
        gil.rsi = 1; // FUTEX_WAKE
        assert!(matches!(classify(&gil, rt), ThreadState::Busy(_)));
    }
}
