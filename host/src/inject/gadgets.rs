//! Two instruction sequences every glibc and musl already carries in executable memory:
//!
//! - `syscall; ret` (`0f 05 c3`, the tail of tiny wrappers such as `getpid`): runs one raw system
//!   call and then returns through the stack, so its caller decides where the thread goes next;
//! - `__restore_rt` (`mov rax, 15; syscall`): the libc signal trampoline, i.e. `rt_sigreturn`.
//!
//! Every remote operation returns into `__restore_rt` with a signal frame prepared on the thread's
//! stack, so the kernel itself restores the interrupted context exactly — whether or not the
//! injector is still alive by then. Found by scanning the target's own mapped code, before any stop.
use crate::discover::python_runtime::Mapping;

use super::{remote_mem, InjectError};

const SYSCALL_RET: &[u8] = &[0x0f, 0x05, 0xc3];
const RESTORE_RT: &[u8] = &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
/// Offset of the `syscall` instruction's end inside `__restore_rt`, where its syscall-stops report rip.
pub const RESTORE_RT_SYSCALL_END: u64 = RESTORE_RT.len() as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gadgets {
    /// Address of `syscall; ret`.
    pub syscall_ret: u64,
    /// Address of `mov rax, 15; syscall`.
    pub restore_rt: u64,
}

fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
}

/// Scans libc's executable mappings first, then every other file-backed executable mapping.
pub fn find(pid: u32, maps: &[Mapping]) -> Result<Gadgets, InjectError> {
    let mut candidates: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.perms.starts_with("r-x") && m.path.starts_with('/'))
        .collect();
    candidates.sort_by_key(|m| !is_libc(&m.path));
    let (mut syscall_ret, mut restore_rt) = (None, None);
    for m in candidates {
        let len = (m.end - m.start) as usize;
        let Ok(code) = remote_mem::read(pid, m.start, len) else {
            continue;
        };
        if syscall_ret.is_none() {
            syscall_ret = find_bytes(&code, SYSCALL_RET).map(|o| m.start + o as u64);
        }
        if restore_rt.is_none() {
            restore_rt = find_bytes(&code, RESTORE_RT).map(|o| m.start + o as u64);
        }
        if let (Some(syscall_ret), Some(restore_rt)) = (syscall_ret, restore_rt) {
            return Ok(Gadgets {
                syscall_ret,
                restore_rt,
            });
        }
    }
    Err(InjectError::Unsupported(
        "no `syscall; ret` or `__restore_rt` sequence in the target's libc".into(),
    ))
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sequences() {
        let code = [
            0x90, 0x0f, 0x05, 0xc3, 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05,
        ];
        assert_eq!(find_bytes(&code, SYSCALL_RET), Some(1));
        assert_eq!(find_bytes(&code, RESTORE_RT), Some(4));
        assert_eq!(find_bytes(&code[..5], RESTORE_RT), None);
    }
}
