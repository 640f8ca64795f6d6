//! `_Py_DebugOffsets`: the table CPython 3.13+ keeps at the start of `_PyRuntime` for out-of-process
//! tools (the cookie `xdebugpy`, `PY_VERSION_HEX`, a free-threaded flag, then groups of `uint64_t`
//! offsets). The injector reads it, with `process_vm_readv` and no stop, for three facts:
//! - the build is free-threaded (refused: the GIL-based recipe would be wrong there);
//! - the operator disabled remote debugging (`-X disable_remote_debug`, `PYTHON_DISABLE_REMOTE_DEBUG`):
//!   the process said no to remote code, so it is excluded (3.14+, where the flag exists);
//! - the table's version agrees with the version the process was detected as.
//!
//! The groups before the remote-debugger block differ per minor version; their lengths here were read
//! off Debian's 3.14.10 and 3.15.2 (`tests/inject.rs` checks them against the live interpreters).
//! An unknown layout is not guessed at: [`Layout::Unknown`] leaves the caller to use the
//! environment and command line instead.

pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// Bytes of `_PyRuntime` read: the header plus every field through 3.15's remote-debugger block.
pub const READ_LEN: usize = 8 + 8 * 120;

/// Index (in `uint64_t`s after the cookie) of `runtime_state.interpreters_head`.
const IDX_INTERPRETERS_HEAD: usize = 4;

/// Index of the remote-debugger block (`eval_breaker`, `remote_debugger_support`,
/// `remote_debugging_enabled`, `debugger_pending_call`, `debugger_script_path`,
/// `debugger_script_path_size`) per minor version.
fn debugger_block_index(minor: u32) -> Option<usize> {
    match minor {
        14 => Some(88),
        15 => Some(104),
        _ => None,
    }
}

/// Bytes of the whole table for `minor`: the remote-debugger block is its last group, and
/// `_PyRuntimeState`'s init flags follow it directly (see `readiness`).
pub fn table_len(minor: u32) -> Option<usize> {
    debugger_block_index(minor).map(|d| 8 + 8 * (d + 6))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: (u32, u32),
    pub free_threaded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Where, relative to `_PyRuntime` and to the main interpreter, the remote-debug switch is.
    RemoteDebug {
        interpreters_head: u64,
        remote_debugging_enabled: u64,
    },
    /// A version whose table this build does not know (3.13 has no switch at all).
    Unknown,
}

fn word(bytes: &[u8], i: usize) -> Option<u64> {
    let b = bytes.get(8 + i * 8..16 + i * 8)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// The cookie, version and free-threaded flag; `None` when `bytes` does not start with the table.
pub fn header(bytes: &[u8]) -> Option<Header> {
    if bytes.get(..8)? != COOKIE {
        return None;
    }
    let v = word(bytes, 0)?;
    Some(Header {
        version: ((v >> 24) as u32 & 0xff, (v >> 16) as u32 & 0xff),
        free_threaded: word(bytes, 1)? != 0,
    })
}

/// Where the remote-debug switch lives, checked against the block's known shape (the pending-call
/// flag at 0, the script path right after it, a path buffer of a sane size).
pub fn layout(bytes: &[u8], minor: u32) -> Layout {
    let Some(d) = debugger_block_index(minor) else {
        return Layout::Unknown;
    };
    let (Some(head), Some(enabled), Some(pending), Some(path), Some(size)) = (
        word(bytes, IDX_INTERPRETERS_HEAD),
        word(bytes, d + 2),
        word(bytes, d + 3),
        word(bytes, d + 4),
        word(bytes, d + 5),
    ) else {
        return Layout::Unknown;
    };
    if pending != 0 || path != 4 || !(256..=65536).contains(&size) || enabled == 0 {
        return Layout::Unknown;
    }
    Layout::RemoteDebug {
        interpreters_head: head,
        remote_debugging_enabled: enabled,
    }
}

/// Does the environment (`/proc/PID/environ`) or the command line (`/proc/PID/cmdline`) turn remote
/// debugging off? CPython honours any non-empty `PYTHON_DISABLE_REMOTE_DEBUG`.
pub fn disabled_by_startup(environ: &[u8], cmdline: &[u8]) -> Option<&'static str> {
    let env_off = environ.split(|b| *b == 0).any(|kv| {
        kv.strip_prefix(b"PYTHON_DISABLE_REMOTE_DEBUG=")
            .is_some_and(|v| !v.is_empty())
    });
    if env_off {
        return Some("PYTHON_DISABLE_REMOTE_DEBUG is set");
    }
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let x_off = args
        .windows(2)
        .any(|w| w[0] == b"-X" && w[1] == b"disable_remote_debug")
        || args.iter().any(|a| *a == b"-Xdisable_remote_debug");
    x_off.then_some("started with -X disable_remote_debug")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as Debian's 3.14.10 has it, with the fields that matter at their real values.
    fn table(version_hex: u64, free_threaded: u64, minor: u32) -> Vec<u8> {
        let mut w = vec![0u64; 120];
        w[0] = version_hex;
        w[1] = free_threaded;
        w[IDX_INTERPRETERS_HEAD] = 0x328;
        if let Some(d) = debugger_block_index(minor) {
            w[d..d + 6].copy_from_slice(&[0x18, 0x130, 0x1f8c, 0, 4, 0x200]);
        }
        let mut b = COOKIE.to_vec();
        for x in w {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b
    }

    #[test]
    fn table_lengths_read_off_debian_builds() {
        assert_eq!(table_len(14), Some(760));
        assert_eq!(table_len(15), Some(888));
        assert_eq!(table_len(13), None);
    }

    #[test]
    fn header_version_and_free_threading() {
        let h = header(&table(0x030e_0af0, 0, 14)).unwrap();
        assert_eq!(h.version, (3, 14));
        assert!(!h.free_threaded);
        assert!(header(&table(0x030f_02f0, 1, 15)).unwrap().free_threaded);
        let mut bad = table(0x030e_0af0, 0, 14);
        bad[0] = b'y';
        assert_eq!(header(&bad), None);
        assert_eq!(header(&bad[..12]), None);
    }

    #[test]
    fn remote_debug_switch_where_the_version_has_it() {
        assert_eq!(
            layout(&table(0x030e_0af0, 0, 14), 14),
            Layout::RemoteDebug {
                interpreters_head: 0x328,
                remote_debugging_enabled: 0x1f8c
            }
        );
        // 3.15's block sits 16 fields later; 3.14's indices on a 3.15 table find no block.
        assert!(matches!(
            layout(&table(0x030f_02f0, 0, 15), 15),
            Layout::RemoteDebug { .. }
        ));
        assert_eq!(layout(&table(0x030f_02f0, 0, 15), 14), Layout::Unknown);
        assert_eq!(layout(&table(0x030d_00f0, 0, 13), 13), Layout::Unknown);
        assert_eq!(
            layout(&table(0x030e_0af0, 0, 14)[..400], 14),
            Layout::Unknown
        );
    }

    #[test]
    fn startup_switches() {
        let env = b"HOME=/root\0PYTHON_DISABLE_REMOTE_DEBUG=1\0";
        assert!(disabled_by_startup(env, b"python3\0app.py\0").is_some());
        assert!(disabled_by_startup(b"PYTHON_DISABLE_REMOTE_DEBUG=\0", b"python3\0").is_none());
        assert!(disabled_by_startup(b"", b"python3\0-X\0disable_remote_debug\0-m\0x\0").is_some());
        assert!(disabled_by_startup(b"", b"python3\0-Xdisable_remote_debug\0").is_some());
        assert!(disabled_by_startup(b"", b"python3\0-X\0dev\0app.py\0").is_none());
    }
}
