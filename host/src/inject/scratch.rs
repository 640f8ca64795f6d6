//! The scratch page mapped into the target for one injection: a header the injector and the stubs
//! share, three tiny hand-assembled stubs, and the Python source.
//!
//! The stubs exist because a call returning into `__restore_rt` loses its return value (`rax` becomes
//! 15), and `PyGILState_Release` needs what `PyGILState_Ensure` returned. Each stub records results in
//! the header, where the injector reads them with `process_vm_readv`; a sweep can recognise a
//! forgotten page by its magic and `state`.
pub const MAGIC: &[u8; 8] = b"ZSTEPSCR";

pub const P_ENSURE: usize = 0x08;
pub const P_RUN: usize = 0x10;
pub const P_RELEASE: usize = 0x18;
pub const P_ADD_PENDING: usize = 0x20;
pub const P_CODE: usize = 0x28;
/// How many times the Python code was entered (a `lock inc` per run).
pub const ENTRIES: usize = 0x30;
/// `PyRun_SimpleString`'s result: 0, or -1 if the code raised.
pub const RUN_RESULT: usize = 0x34;
pub const GSTATE: usize = 0x38;
/// 0 not started, 1 running the code, 2 finished (the page is about to be unused).
pub const STATE: usize = 0x3c;
pub const SCHEDULE_RESULT: usize = 0x40;
pub const SCHEDULE_DONE: usize = 0x44;
pub const SIZE: usize = 0x48;
/// Set by the scheduling stub before it calls `Py_AddPendingCall`.
pub const SCHEDULE_STARTED: usize = 0x50;
/// `struct timespec` for the direct stub's final park: how long a finished call waits for the
/// injector before restoring the thread by itself (only an injector that died lets it run out).
pub const PARK_TIMESPEC: usize = 0x58;
pub const PARK_NANOS: u64 = 100_000_000;
/// `rsp` at the entry of the stub that ran the code. While anything still executes on top of it — the
/// stub, or a signal handler that interrupted it and will return into the page — the thread's `rsp`
/// is below this; once it is above, nothing can return into the page any more.
pub const ENTRY_RSP: usize = 0x68;
/// A full signal set: the direct stub blocks every signal before it reports `finished`, so no
/// handler can start on top of the parked stub (signals stay queued until `rt_sigreturn` reinstates
/// the thread's own mask, a fraction of a millisecond later).
pub const ALL_SIGNALS: usize = 0x70;
/// The pending callback's saved signal mask (see `stub_pending_cb`).
pub const OLD_MASK: usize = 0x78;
/// libc's `syscall; ret`: the pending callback leaves the page through it.
pub const P_SYSCALL_RET: usize = 0x80;
pub const HEADER_LEN: usize = 0x88;

/// `rsp = frame` at entry; Ensure → Run(code) → Release, then `ret` into `__restore_rt`.
pub const STUB_DIRECT: usize = 0x100;
/// `int callback(void *code)` for `Py_AddPendingCall`: runs the code, always returns 0 so an exception
/// can never surface in the request the interpreter happens to be serving.
pub const STUB_PENDING_CB: usize = 0x180;
/// `rsp = frame` at entry; `Py_AddPendingCall(callback, code)`, then `ret` into `__restore_rt`.
pub const STUB_SCHEDULE: usize = 0x200;
pub const CODE: usize = 0x1000;

pub const STATE_FINISHED: u32 = 2;

/// Addresses the stubs call.
#[derive(Debug, Clone, Copy)]
pub struct Api {
    pub ensure: u64,
    pub run: u64,
    pub release: u64,
    pub add_pending: u64,
    /// A `syscall; ret` sequence in libc.
    pub syscall_ret: u64,
}

/// Length of the mapping needed for `code` (NUL-terminated), in whole pages.
pub fn size_for(code: &str) -> usize {
    (CODE + code.len() + 1).div_ceil(4096) * 4096
}

/// The page contents for a mapping at `base`.
pub fn build(base: u64, api: &Api, code: &str) -> Vec<u8> {
    let size = size_for(code);
    let mut b = vec![0u8; size];
    b[..8].copy_from_slice(MAGIC);
    for (off, v) in [
        (P_ENSURE, api.ensure),
        (P_RUN, api.run),
        (P_RELEASE, api.release),
        (P_ADD_PENDING, api.add_pending),
        (P_SYSCALL_RET, api.syscall_ret),
        (P_CODE, base + CODE as u64),
        (SIZE, size as u64),
        (PARK_TIMESPEC + 8, PARK_NANOS),
        (ALL_SIGNALS, u64::MAX),
    ] {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    put(&mut b, STUB_DIRECT, &stub_direct().0);
    put(&mut b, STUB_PENDING_CB, &stub_pending_cb());
    put(&mut b, STUB_SCHEDULE, &stub_schedule());
    put(&mut b, CODE, code.as_bytes());
    b
}

fn put(b: &mut [u8], off: usize, code: &[u8]) {
    b[off..off + code.len()].copy_from_slice(code);
}

/// A minimal x86-64 emitter for the handful of instructions the stubs use; every memory operand is
/// RIP-relative to a header field, so the code is position independent.
struct Asm {
    at: usize,
    out: Vec<u8>,
}

impl Asm {
    fn new(at: usize) -> Self {
        Asm {
            at,
            out: Vec::new(),
        }
    }

    fn here(&self) -> usize {
        self.at + self.out.len()
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// `opcode disp32 [imm]` where disp32 is relative to the end of the instruction.
    fn rip_rel(&mut self, opcode: &[u8], target: usize, imm: &[u8]) -> &mut Self {
        let end = self.here() + opcode.len() + 4 + imm.len();
        let disp = (target as i64 - end as i64) as i32;
        self.out.extend_from_slice(opcode);
        self.out.extend_from_slice(&disp.to_le_bytes());
        self.out.extend_from_slice(imm);
        self
    }

    fn call_ptr(&mut self, slot: usize) -> &mut Self {
        self.rip_rel(&[0xff, 0x15], slot, &[])
    }

    fn store_eax(&mut self, field: usize) -> &mut Self {
        self.rip_rel(&[0x89, 0x05], field, &[])
    }

    fn set_u32(&mut self, field: usize, v: u32) -> &mut Self {
        self.rip_rel(&[0xc7, 0x05], field, &v.to_le_bytes())
    }

    fn lock_inc(&mut self, field: usize) -> &mut Self {
        self.rip_rel(&[0xf0, 0xff, 0x05], field, &[])
    }
}

const PUSH_RBX: &[u8] = &[0x53];
const POP_RBX: &[u8] = &[0x5b];
const RET: &[u8] = &[0xc3];

/// Where the direct stub parks after the call: the address right after its `nanosleep` syscall. The
/// injector, seeing `state == finished`, interrupts the thread there and unmaps the page.
pub fn park_end() -> usize {
    stub_direct().1
}

fn stub_direct() -> (Vec<u8>, usize) {
    let mut a = Asm::new(STUB_DIRECT);
    a.rip_rel(&[0x48, 0x89, 0x25], ENTRY_RSP, &[]) // mov [entry_rsp], rsp
        .bytes(PUSH_RBX) // realigns rsp to 16 for the calls and keeps the gstate
        .lock_inc(ENTRIES)
        .set_u32(STATE, 1)
        .call_ptr(P_ENSURE)
        .bytes(&[0x89, 0xc3]) // mov ebx, eax
        .store_eax(GSTATE)
        .rip_rel(&[0x48, 0x8b, 0x3d], P_CODE, &[]) // mov rdi, [code]
        .call_ptr(P_RUN)
        .store_eax(RUN_RESULT)
        .bytes(&[0x89, 0xdf]) // mov edi, ebx
        .call_ptr(P_RELEASE)
        .bytes(&[0xb8, 14, 0, 0, 0]) // mov eax, SYS_rt_sigprocmask
        .bytes(&[0x31, 0xff]) // xor edi, edi (SIG_BLOCK)
        .rip_rel(&[0x48, 0x8d, 0x35], ALL_SIGNALS, &[]) // lea rsi, [all_signals]
        .bytes(&[0x31, 0xd2]) // xor edx, edx (no old set)
        .bytes(&[0x41, 0xba, 8, 0, 0, 0]) // mov r10d, 8 (sigsetsize)
        .bytes(&[0x0f, 0x05]) // syscall
        .set_u32(STATE, STATE_FINISHED)
        .bytes(&[0xb8, 35, 0, 0, 0]) // mov eax, SYS_nanosleep
        .rip_rel(&[0x48, 0x8d, 0x3d], PARK_TIMESPEC, &[]) // lea rdi, [timespec]
        .bytes(&[0x31, 0xf6]) // xor esi, esi
        .bytes(&[0x0f, 0x05]); // syscall
    let park_end = a.here();
    a.bytes(POP_RBX).bytes(RET);
    (a.out, park_end)
}

fn stub_pending_cb() -> Vec<u8> {
    let mut a = Asm::new(STUB_PENDING_CB);
    a.rip_rel(&[0x48, 0x89, 0x25], ENTRY_RSP, &[]) // mov [entry_rsp], rsp
        .bytes(&[0x48, 0x83, 0xec, 0x08]) // sub rsp, 8
        .lock_inc(ENTRIES)
        .set_u32(STATE, 1)
        .call_ptr(P_RUN) // rdi already holds the code pointer
        .store_eax(RUN_RESULT)
        // Block every signal (saving the mask) before reporting `finished`, and give the mask back
        // from libc's `syscall; ret`: a handler can then only ever return into libc, never into this
        // page, so the page may go as soon as `state` says finished and rip is elsewhere.
        .bytes(&[0xb8, 14, 0, 0, 0]) // mov eax, SYS_rt_sigprocmask
        .bytes(&[0x31, 0xff]) // xor edi, edi (SIG_BLOCK)
        .rip_rel(&[0x48, 0x8d, 0x35], ALL_SIGNALS, &[]) // lea rsi, [all_signals]
        .rip_rel(&[0x48, 0x8d, 0x15], OLD_MASK, &[]) // lea rdx, [old_mask]
        .bytes(&[0x41, 0xba, 8, 0, 0, 0]) // mov r10d, 8
        .bytes(&[0x0f, 0x05]) // syscall
        .set_u32(STATE, STATE_FINISHED)
        .bytes(&[0x48, 0x83, 0xc4, 0x08]) // add rsp, 8
        .bytes(&[0xb8, 14, 0, 0, 0]) // mov eax, SYS_rt_sigprocmask (its 0 is our return value)
        .bytes(&[0xbf, 2, 0, 0, 0]) // mov edi, SIG_SETMASK
        .rip_rel(&[0x48, 0x8d, 0x35], OLD_MASK, &[]) // lea rsi, [old_mask]
        .bytes(&[0x31, 0xd2]) // xor edx, edx
        .bytes(&[0x41, 0xba, 8, 0, 0, 0]) // mov r10d, 8
        .rip_rel(&[0xff, 0x25], P_SYSCALL_RET, &[]); // jmp [syscall_ret]
    a.out
}

fn stub_schedule() -> Vec<u8> {
    let mut a = Asm::new(STUB_SCHEDULE);
    a.bytes(PUSH_RBX)
        .set_u32(SCHEDULE_STARTED, 1)
        .rip_rel(&[0x48, 0x8d, 0x3d], STUB_PENDING_CB, &[]) // lea rdi, [callback]
        .rip_rel(&[0x48, 0x8b, 0x35], P_CODE, &[]) // mov rsi, [code]
        .call_ptr(P_ADD_PENDING)
        .store_eax(SCHEDULE_RESULT)
        .set_u32(SCHEDULE_DONE, 1)
        .bytes(POP_RBX)
        .bytes(RET);
    a.out
}

/// The header fields the injector reads back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub entries: u32,
    pub run_result: i32,
    pub state: u32,
    pub schedule_result: i32,
    pub schedule_done: u32,
    pub schedule_started: u32,
    pub size: u64,
    pub entry_rsp: u64,
}

impl Header {
    /// May a page left behind by an earlier injection be unmapped now, with its thread stopped at
    /// `rip`? Only if nothing can still return into it: the code finished (both stubs block all
    /// signals before saying so, so no handler frame can point into the page) and the thread is
    /// not executing the last instructions; or no stub ever started and no pending callback is
    /// queued.
    pub fn sweepable(&self, rip_in_page: bool) -> bool {
        if rip_in_page {
            return false;
        }
        self.state == STATE_FINISHED
            || (self.state == 0 && self.schedule_started == 0 && self.entries == 0)
    }
}

pub fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER_LEN || &b[..8] != MAGIC {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    Some(Header {
        entries: u32_at(ENTRIES),
        run_result: u32_at(RUN_RESULT) as i32,
        state: u32_at(STATE),
        schedule_result: u32_at(SCHEDULE_RESULT) as i32,
        schedule_done: u32_at(SCHEDULE_DONE),
        schedule_started: u32_at(SCHEDULE_STARTED),
        size: u64_at(SIZE),
        entry_rsp: u64_at(ENTRY_RSP),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_fit_their_slots_and_encode_rip_relative_operands() {
        assert!(STUB_DIRECT + stub_direct().0.len() <= STUB_PENDING_CB);
        assert_eq!(
            &stub_direct().0[park_end() - STUB_DIRECT - 2..][..2],
            &[0x0f, 0x05]
        );
        assert!(STUB_PENDING_CB + stub_pending_cb().len() <= STUB_SCHEDULE);
        assert!(STUB_SCHEDULE + stub_schedule().len() <= CODE);
        let d = stub_direct().0;
        // mov [rip+disp], rsp with disp = ENTRY_RSP - (STUB_DIRECT + 7); then push rbx
        assert_eq!(&d[..3], &[0x48, 0x89, 0x25]);
        let disp = i32::from_le_bytes(d[3..7].try_into().unwrap());
        assert_eq!(STUB_DIRECT as i64 + 7 + disp as i64, ENTRY_RSP as i64);
        assert_eq!(d[7], 0x53);
        assert_eq!(*d.last().unwrap(), 0xc3);
        let cb = stub_pending_cb();
        assert_eq!(
            &cb[cb.len() - 6..cb.len() - 4],
            &[0xff, 0x25],
            "leaves through a jmp"
        );
    }

    #[test]
    fn page_round_trip() {
        let api = Api {
            ensure: 1,
            run: 2,
            release: 3,
            add_pending: 4,
            syscall_ret: 5,
        };
        let page = build(0x7000_0000, &api, "print(1)");
        assert_eq!(page.len(), 8192);
        assert_eq!(&page[CODE..CODE + 9], b"print(1)\0");
        let h = parse_header(&page).unwrap();
        assert_eq!((h.entries, h.state, h.size), (0, 0, 8192));
        assert!(h.sweepable(false) && !h.sweepable(true));
        let queued = Header {
            schedule_started: 1,
            schedule_done: 1,
            ..h
        };
        assert!(
            !queued.sweepable(false),
            "a queued pending call still needs the page"
        );
        let running = Header {
            state: 1,
            entries: 1,
            entry_rsp: 0x7000,
            ..h
        };
        assert!(!running.sweepable(false));
        let done = Header {
            state: STATE_FINISHED,
            ..running
        };
        assert!(done.sweepable(false) && !done.sweepable(true));
        assert_eq!(
            u64::from_le_bytes(page[P_CODE..P_CODE + 8].try_into().unwrap()),
            0x7000_1000
        );
    }
}
