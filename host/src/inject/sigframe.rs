//! The `rt_sigreturn` frame that makes every hijack self-restoring.
//!
//! Before any register of the target thread is changed, a kernel signal frame describing the thread's
//! interrupted context is written below its red zone. Every remote operation then returns into libc's
//! `__restore_rt`, and the kernel's `rt_sigreturn` reloads all general registers, the complete
//! extended (x87/SSE/AVX) state and the signal mask from that frame. If the injector is SIGKILLed at any
//! instant, the thread simply finishes what it was doing and returns through the frame: there is no
//! moment at which its survival depends on the injector.
//!
//! Layout (x86-64, `arch/x86/include/asm/sigframe.h`): `pretcode` (8), `struct ucontext` (uc_flags 8,
//! uc_link 8, uc_stack 24, sigcontext 256, sigmask 8), `siginfo` (128), and an `fpstate` in XSAVE
//! format, 64-byte aligned, whose software bytes carry `FP_XSTATE_MAGIC1` and which is followed by
//! `FP_XSTATE_MAGIC2`. `rt_sigreturn` reads the frame at `rsp - 8`.
use libc::user_regs_struct;

const UCONTEXT_OFF: usize = 8;
const STACK_OFF: usize = UCONTEXT_OFF + 16;
const SIGCONTEXT_OFF: usize = UCONTEXT_OFF + 40;
const SIGMASK_OFF: usize = SIGCONTEXT_OFF + 256;
/// pretcode + ucontext + siginfo.
pub const FRAME_LEN: usize = SIGMASK_OFF + 8 + 128;

const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Offset of `struct _fpx_sw_bytes` inside the legacy FXSAVE area.
const SW_BYTES_OFF: usize = 464;
const FXSAVE_LEN: usize = 512;
/// Not 0, `SS_ONSTACK` or `SS_DISABLE`: `restore_altstack` gets `EINVAL` from `do_sigaltstack` before it
/// changes anything, and squashes the error. So the thread keeps whatever alternate signal stack it has
/// (faulthandler installs one), which the injector cannot read without running code in the target.
const SS_FLAGS_KEEP_CURRENT: u32 = 0x10;

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;
const SYS_RESTART_SYSCALL: u64 = 219;

/// The context the thread must resume with. A thread interrupted inside a blocking system call shows
/// `orig_rax = nr` and `rax = -ERESTART*`; the kernel restarts such a call when it returns to user mode
/// without running a handler (`rip -= 2`, `rax = nr`, or `restart_syscall` for `-ERESTART_RESTARTBLOCK`).
/// `rt_sigreturn` clears `orig_rax`, so the frame carries the restart already applied: the thread
/// re-enters exactly the call it was in, with the same arguments.
pub fn resume_context(saved: &user_regs_struct) -> user_regs_struct {
    let mut r = *saved;
    if (saved.orig_rax as i64) >= 0 {
        match saved.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = saved.orig_rax;
                r.rip = saved.rip.wrapping_sub(2);
            }
            ERESTART_RESTARTBLOCK => {
                r.rax = SYS_RESTART_SYSCALL;
                r.rip = saved.rip.wrapping_sub(2);
            }
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
    r
}

/// A frame ready to be written at `addr`; `rsp = addr` makes a `ret` land in `__restore_rt` with the
/// stack exactly where `rt_sigreturn` expects it.
#[derive(Debug, Clone)]
pub struct SigFrame {
    /// Where the frame starts (`pretcode`); ≡ 8 (mod 16), so code entered with `rsp = addr` sees the
    /// stack alignment of a freshly called function.
    pub addr: u64,
    pub bytes: Vec<u8>,
}

impl SigFrame {
    pub fn end(&self) -> u64 {
        self.addr + self.bytes.len() as u64
    }
}

/// Builds the frame so that it ends at or below `limit` (the lowest byte the thread may still own:
/// `rsp - 128` for the red zone, minus any slack the caller wants).
///
/// `xstate` is the `NT_X86_XSTATE` regset as `PTRACE_GETREGSET` returns it (standard XSAVE format, with
/// the kernel's software bytes already filled in); `sigmask` the thread's blocked signals.
pub fn build(
    resume: &user_regs_struct,
    xstate: &[u8],
    sigmask: u64,
    restore_rt: u64,
    limit: u64,
) -> Result<SigFrame, String> {
    if xstate.len() < FXSAVE_LEN {
        return Err(format!(
            "extended state of {} bytes is too short",
            xstate.len()
        ));
    }
    let magic1 = u32_at(xstate, SW_BYTES_OFF);
    let xstate_size = u32_at(xstate, SW_BYTES_OFF + 16) as usize;
    // Without the software bytes the kernel falls back to restoring the legacy FXSAVE part only.
    let fp_len =
        if magic1 == FP_XSTATE_MAGIC1 && xstate_size <= xstate.len() && xstate_size >= FXSAVE_LEN {
            xstate_size
        } else {
            FXSAVE_LEN
        };
    let fp_addr = (limit - (fp_len as u64 + 4)) & !63;
    let addr = ((fp_addr - FRAME_LEN as u64) & !15) - 8;
    let total = (fp_addr - addr) as usize + fp_len + 4;
    let mut b = vec![0u8; total];
    put_u64(&mut b, 0, restore_rt);
    put_u64(
        &mut b,
        UCONTEXT_OFF,
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
    );
    // uc_stack: ss_sp = 0, ss_flags = invalid on purpose, ss_size = 0.
    put_u32(&mut b, STACK_OFF + 8, SS_FLAGS_KEEP_CURRENT);
    let r = resume;
    let gp = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ];
    for (i, v) in gp.iter().enumerate() {
        put_u64(&mut b, SIGCONTEXT_OFF + i * 8, *v);
    }
    // cs, gs, fs, ss as u16s; gs/fs are ignored on x86-64.
    let seg = SIGCONTEXT_OFF + 18 * 8;
    b[seg..seg + 2].copy_from_slice(&(r.cs as u16).to_le_bytes());
    b[seg + 6..seg + 8].copy_from_slice(&(r.ss as u16).to_le_bytes());
    // err, trapno, oldmask, cr2 stay 0; then the fpstate pointer.
    put_u64(&mut b, seg + 8 + 32, fp_addr);
    put_u64(&mut b, SIGMASK_OFF, sigmask);
    let fp_off = (fp_addr - addr) as usize;
    b[fp_off..fp_off + fp_len].copy_from_slice(&xstate[..fp_len]);
    if fp_len == FXSAVE_LEN {
        put_u32(&mut b, fp_off + SW_BYTES_OFF, 0);
    }
    put_u32(&mut b, fp_off + fp_len, FP_XSTATE_MAGIC2);
    Ok(SigFrame { addr, bytes: b })
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> user_regs_struct {
        // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
        let mut r: user_regs_struct = unsafe { std::mem::zeroed() };
        r.rip = 0x7f00_0000_1002;
        r.rsp = 0x7ffd_0000_1000;
        r.cs = 0x33;
        r.ss = 0x2b;
        r.eflags = 0x246;
        r
    }

    #[test]
    fn restart_is_applied_like_the_kernel_does() {
        let mut s = regs();
        s.orig_rax = 232; // epoll_wait
        s.rax = (-514i64) as u64;
        let r = resume_context(&s);
        assert_eq!(
            (r.rax, r.rip, r.orig_rax),
            (232, 0x7f00_0000_1000, u64::MAX)
        );
        s.rax = (-516i64) as u64;
        assert_eq!(resume_context(&s).rax, 219);
        s.rax = (-4i64) as u64; // EINTR is a result, not a restart
        let r = resume_context(&s);
        assert_eq!((r.rax, r.rip), ((-4i64) as u64, s.rip));
        s.orig_rax = u64::MAX; // not in a syscall
        s.rax = (-512i64) as u64;
        assert_eq!(resume_context(&s).rip, s.rip);
    }

    #[test]
    fn frame_layout() {
        let s = regs();
        let mut x = vec![0u8; 832];
        x[SW_BYTES_OFF..SW_BYTES_OFF + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        x[SW_BYTES_OFF + 16..SW_BYTES_OFF + 20].copy_from_slice(&832u32.to_le_bytes());
        let limit = s.rsp - 128 - 256;
        let f = build(&s, &x, 0x4000, 0x7f00_dead_0000, limit).unwrap();
        assert_eq!(f.addr % 16, 8);
        assert!(f.end() <= limit);
        assert_eq!(
            u64::from_le_bytes(f.bytes[0..8].try_into().unwrap()),
            0x7f00_dead_0000
        );
        let rip = u64::from_le_bytes(
            f.bytes[SIGCONTEXT_OFF + 128..SIGCONTEXT_OFF + 136]
                .try_into()
                .unwrap(),
        );
        assert_eq!(rip, s.rip);
        let fp = u64::from_le_bytes(
            f.bytes[SIGCONTEXT_OFF + 184..SIGCONTEXT_OFF + 192]
                .try_into()
                .unwrap(),
        );
        assert_eq!(fp % 64, 0);
        let fp_off = (fp - f.addr) as usize;
        assert_eq!(u32_at(&f.bytes, fp_off + SW_BYTES_OFF), FP_XSTATE_MAGIC1);
        assert_eq!(u32_at(&f.bytes, fp_off + 832), FP_XSTATE_MAGIC2);
        assert_eq!(
            u64::from_le_bytes(f.bytes[SIGMASK_OFF..SIGMASK_OFF + 8].try_into().unwrap()),
            0x4000
        );
    }
}
