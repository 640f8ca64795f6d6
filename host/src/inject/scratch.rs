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
pub const HEADER_LEN: usize = 0x68;

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
        (P_CODE, base + CODE as u64),
        (SIZE, size as u64),
        (PARK_TIMESPEC + 8, PARK_NANOS),
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
    a.bytes(PUSH_RBX) // realigns rsp to 16 for the calls and keeps the gstate
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
    a.bytes(&[0x48, 0x83, 0xec, 0x08]) // sub rsp, 8
        .lock_inc(ENTRIES)
        .set_u32(STATE, 1)
        .call_ptr(P_RUN) // rdi already holds the code pointer
        .store_eax(RUN_RESULT)
        .set_u32(STATE, STATE_FINISHED)
        .bytes(&[0x48, 0x83, 0xc4, 0x08]) // add rsp, 8
        .bytes(&[0x31, 0xc0]) // xor eax, eax
        .bytes(RET);
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
}

impl Header {
    /// May a page left behind by an earlier injection be unmapped now? Only while its thread is
    /// stopped outside the page (`rip_in_page` false) and nothing can still return into it: the code
    /// finished, or no stub ever started and no pending callback is queued.
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
    let mut size = [0u8; 8];
    size.copy_from_slice(&b[SIZE..SIZE + 8]);
    Some(Header {
        entries: u32_at(ENTRIES),
        run_result: u32_at(RUN_RESULT) as i32,
        state: u32_at(STATE),
        schedule_result: u32_at(SCHEDULE_RESULT) as i32,
        schedule_done: u32_at(SCHEDULE_DONE),
        schedule_started: u32_at(SCHEDULE_STARTED),
        size: u64::from_le_bytes(size),
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
        // push rbx; lock inc dword [rip+disp] with disp = ENTRIES - (STUB_DIRECT + 1 + 7)
        assert_eq!(&d[..4], &[0x53, 0xf0, 0xff, 0x05]);
        let disp = i32::from_le_bytes(d[4..8].try_into().unwrap());
        assert_eq!(STUB_DIRECT as i64 + 8 + disp as i64, ENTRIES as i64);
        assert_eq!(*d.last().unwrap(), 0xc3);
    }

    #[test]
    fn page_round_trip() {
        let api = Api {
            ensure: 1,
            run: 2,
            release: 3,
            add_pending: 4,
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
            ..h
        };
        assert!(!running.sweepable(false));
        assert!(Header {
            state: STATE_FINISHED,
            ..running
        }
        .sweepable(false));
        assert_eq!(
            u64::from_le_bytes(page[P_CODE..P_CODE + 8].try_into().unwrap()),
            0x7000_1000
        );
    }
}
