//! Python 3.14+: the PEP 768 remote-execution protocol (what `sys.remote_exec` does), no ptrace stop.
//!
//! `_PyRuntime` — the start of libpython's `.PyRuntime` section — begins with `_Py_DebugOffsets`: the
//! cookie `xdebugpy`, `PY_VERSION_HEX`, a free-threaded flag, then tables of `uint64_t` offsets. From
//! them: the interpreter list head, the interpreter's `threads_main`, and in the main thread state
//! the `_PyRemoteDebuggerSupport` block (`debugger_pending_call`, `debugger_script_path`). The injector
//! writes a script path and the pending flag, then sets bit 5 (`_PY_EVAL_PLEASE_STOP_BIT`) in that
//! thread's `eval_breaker`; the interpreter runs the script at its next eval-breaker check.
//!
//! Not exercised against a real interpreter: no 3.14 can be installed on the build machines. The field
//! order below is the 3.14 `Include/internal/pycore_debug_offsets.h`; the unit tests run the whole
//! protocol against byte layouts built from it. PEP 768 executes a *file*, so unlike the ptrace modes
//! this one writes the wrapper to the target's `/tmp` (through `/proc/PID/root`, owned by the target's
//! user, mode 0600) and removes it once the wrapper has reported or the timeout passed.
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::time::{Duration, Instant};

use crate::discover::python_runtime::{Mapping, RuntimeDetails};

use super::wrapper::{self, Handshake};
use super::{remote_mem, InjectError, InjectMode, InjectOptions, InjectReport};

pub const COOKIE: &[u8; 8] = b"xdebugpy";
/// `_PY_EVAL_PLEASE_STOP_BIT`.
pub const EVAL_PLEASE_STOP: u64 = 1 << 5;

/// The `uint64_t` fields of 3.14's `_Py_DebugOffsets` before `debugger_support`, group by group
/// (runtime_state 3, interpreter_state 16, thread_state 9, interpreter_frame 8, code_object 11,
/// pyobject 2, type_object 4, tuple_object 3, list_object 3, set_object 4, dict_object 3, float_object 2,
/// long_object 3, bytes_object 3, unicode_object 4, gc 2, gen_object 4, llist_node 2).
const GROUP_SIZES_BEFORE_DEBUGGER_SUPPORT: [usize; 18] =
    [3, 16, 9, 8, 11, 2, 4, 3, 3, 4, 3, 2, 3, 3, 4, 2, 4, 2];
/// Index (in `uint64_t`s after the cookie) of a field: version 0, free_threaded 1, then the groups.
const IDX_INTERPRETERS_HEAD: usize = 2 + 2;
const IDX_THREADS_MAIN: usize = 2 + 3 + 4;
const fn debugger_support_index() -> usize {
    let mut i = 0;
    let mut n = 2;
    while i < GROUP_SIZES_BEFORE_DEBUGGER_SUPPORT.len() {
        n += GROUP_SIZES_BEFORE_DEBUGGER_SUPPORT[i];
        i += 1;
    }
    n
}
const IDX_DEBUGGER_SUPPORT: usize = debugger_support_index();
/// Bytes to read: cookie + every field through `debugger_support` (6 fields).
pub const DEBUG_OFFSETS_LEN: usize = 8 + (IDX_DEBUGGER_SUPPORT + 6) * 8;

/// The offsets the protocol needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugOffsets {
    pub version_hex: u64,
    pub interpreters_head: u64,
    pub threads_main: u64,
    pub eval_breaker: u64,
    pub remote_debugger_support: u64,
    pub remote_debugging_enabled: u64,
    pub debugger_pending_call: u64,
    pub debugger_script_path: u64,
    pub debugger_script_path_size: u64,
}

/// Parses the table at the start of `_PyRuntime`, checking cookie, version (major.minor must match
/// what the process was detected as) and the free-threaded flag.
pub fn parse(bytes: &[u8], expect: (u32, u32)) -> Result<DebugOffsets, String> {
    if bytes.len() < DEBUG_OFFSETS_LEN {
        return Err(format!(
            "_Py_DebugOffsets truncated ({} bytes)",
            bytes.len()
        ));
    }
    if &bytes[..8] != COOKIE {
        return Err("no xdebugpy cookie at _PyRuntime".into());
    }
    let f = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[8 + i * 8..16 + i * 8]);
        u64::from_le_bytes(a)
    };
    let version_hex = f(0);
    let got = (
        (version_hex >> 24) as u32,
        ((version_hex >> 16) & 0xff) as u32,
    );
    if got != expect {
        return Err(format!(
            "debug offsets are for {}.{}, the process looked like {}.{}",
            got.0, got.1, expect.0, expect.1
        ));
    }
    if got.1 < 14 {
        return Err(format!("{}.{} has no remote-exec support", got.0, got.1));
    }
    if f(1) != 0 {
        return Err("free-threaded build".into());
    }
    let d = IDX_DEBUGGER_SUPPORT;
    Ok(DebugOffsets {
        version_hex,
        interpreters_head: f(IDX_INTERPRETERS_HEAD),
        threads_main: f(IDX_THREADS_MAIN),
        eval_breaker: f(d),
        remote_debugger_support: f(d + 1),
        remote_debugging_enabled: f(d + 2),
        debugger_pending_call: f(d + 3),
        debugger_script_path: f(d + 4),
        debugger_script_path_size: f(d + 5),
    })
}

/// Memory writes that ask the interpreter to run `script_path`, in the order to perform them (the
/// eval-breaker bit last, so the interpreter never sees the flag before the path).
pub fn plan<R>(
    read: R,
    runtime: u64,
    off: &DebugOffsets,
    script_path: &str,
) -> Result<Vec<(u64, Vec<u8>)>, String>
where
    R: Fn(u64, usize) -> Result<Vec<u8>, String>,
{
    let u64_at = |addr: u64| -> Result<u64, String> {
        let b = read(addr, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b.get(..8).ok_or("short read")?);
        Ok(u64::from_le_bytes(a))
    };
    let interp = u64_at(runtime + off.interpreters_head)?;
    if interp == 0 {
        return Err("no interpreter (not initialised or finalising)".into());
    }
    let enabled = read(interp + off.remote_debugging_enabled, 4)?;
    if enabled
        .get(..4)
        .map(|b| b.iter().all(|x| *x == 0))
        .unwrap_or(true)
    {
        return Err("remote debugging is disabled in the target (-X disable_remote_debug or PYTHON_DISABLE_REMOTE_DEBUG)".into());
    }
    let tstate = u64_at(interp + off.threads_main)?;
    if tstate == 0 {
        return Err("no main thread state".into());
    }
    if script_path.len() as u64 + 1 > off.debugger_script_path_size {
        return Err(format!(
            "script path longer than {} bytes",
            off.debugger_script_path_size
        ));
    }
    let support = tstate + off.remote_debugger_support;
    let mut path = script_path.as_bytes().to_vec();
    path.push(0);
    let breaker = u64_at(tstate + off.eval_breaker)? | EVAL_PLEASE_STOP;
    Ok(vec![
        (support + off.debugger_script_path, path),
        (
            support + off.debugger_pending_call,
            1u32.to_le_bytes().to_vec(),
        ),
        (tstate + off.eval_breaker, breaker.to_le_bytes().to_vec()),
    ])
}

/// The `.PyRuntime` section's address in the target (falls back to the `_PyRuntime` symbol).
fn runtime_address(pid: u32, maps: &[Mapping], api_path: &str) -> Result<u64, InjectError> {
    let syms = super::elf_symbols::resolve(pid, maps, api_path, &["_PyRuntime"])?;
    syms.get("_PyRuntime")
        .map(|s| s.addr)
        .ok_or_else(|| InjectError::Pep768(format!("no _PyRuntime in {api_path}")))
}

pub fn inject(
    pid: u32,
    runtime: &RuntimeDetails,
    maps: &[Mapping],
    api_path: &str,
    code: &str,
    opts: &InjectOptions,
) -> Result<InjectReport, InjectError> {
    let begun = Instant::now();
    let rt = runtime_address(pid, maps, api_path)?;
    let table = remote_mem::read(pid, rt, DEBUG_OFFSETS_LEN)
        .map_err(|e| InjectError::Pep768(format!("reading _PyRuntime: {e}")))?;
    let off = parse(&table, runtime.version).map_err(InjectError::Pep768)?;
    let mut handshake = Handshake::for_target(pid).map_err(InjectError::Handshake)?;
    let text = wrapper::render(code, &handshake.nonce, &handshake.name);
    let script = format!("/tmp/zerostep-inject-{}.py", handshake.nonce);
    let host_path = format!("/proc/{pid}/root{script}");
    write_script(pid, &host_path, &text)?;
    let read = |addr: u64, len: usize| remote_mem::read(pid, addr, len).map_err(|e| e.to_string());
    let result = plan(read, rt, &off, &script)
        .map_err(InjectError::Pep768)
        .and_then(|writes| {
            for (addr, bytes) in writes {
                remote_mem::write(pid, addr, &bytes)
                    .map_err(|e| InjectError::Pep768(format!("write at {addr:#x}: {e}")))?;
            }
            Ok(())
        });
    let outcome = match result {
        Ok(()) => handshake.wait(begun + opts.timeout),
        Err(e) => {
            let _ = std::fs::remove_file(&host_path);
            return Err(e);
        }
    };
    let _ = std::fs::remove_file(&host_path);
    let mut report = InjectReport {
        pid,
        python: runtime.version_string(),
        mode: InjectMode::Pep768,
        thread_state: "remote exec requested".into(),
        stop_time: Duration::ZERO,
        cleanup_stop_time: None,
        confirmed: false,
        already_present: false,
        raised: None,
        runs: None,
        scratch_released: true,
        swept: 0,
        total_time: Duration::ZERO,
    };
    super::record_outcome(&mut report, outcome);
    report.total_time = begun.elapsed();
    Ok(report)
}

/// Creates the script readable by the target's user only.
fn write_script(pid: u32, host_path: &str, text: &str) -> Result<(), InjectError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}"))
        .map_err(|_| InjectError::ProcessExited { pid })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(host_path)
        .map_err(|e| InjectError::Pep768(format!("creating {host_path}: {e}")))?;
    f.write_all(text.as_bytes())
        .map_err(|e| InjectError::Pep768(format!("writing {host_path}: {e}")))?;
    std::os::unix::fs::chown(host_path, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| InjectError::Pep768(format!("chown {host_path}: {e}")))?;
    let _ = std::fs::set_permissions(host_path, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A 3.14.0 debug-offsets table with recognisable values, laid out field by field.
    fn table(version_hex: u64, free_threaded: u64) -> Vec<u8> {
        let mut fields = vec![version_hex, free_threaded];
        for (g, n) in GROUP_SIZES_BEFORE_DEBUGGER_SUPPORT.iter().enumerate() {
            for i in 0..*n {
                fields.push(0x1000 * (g as u64 + 1) + i as u64 * 8);
            }
        }
        // runtime_state.interpreters_head, interpreter_state.threads_main as CPython 3.14 might have them
        fields[IDX_INTERPRETERS_HEAD] = 0x28;
        fields[IDX_THREADS_MAIN] = 0x60;
        // debugger_support: eval_breaker, remote_debugger_support, remote_debugging_enabled,
        // debugger_pending_call, debugger_script_path, debugger_script_path_size
        fields.extend([0x18, 0x400, 0x2000, 0x0, 0x4, 512]);
        let mut b = COOKIE.to_vec();
        for f in fields {
            b.extend_from_slice(&f.to_le_bytes());
        }
        b
    }

    #[test]
    fn layout_size_matches_the_3_14_struct() {
        // 94 uint64_t after the 8-byte cookie.
        assert_eq!(IDX_DEBUGGER_SUPPORT, 88);
        assert_eq!(DEBUG_OFFSETS_LEN, 8 + 94 * 8);
    }

    #[test]
    fn parses_and_checks_cookie_version_and_free_threading() {
        let t = table(0x030e_00f0, 0);
        let off = parse(&t, (3, 14)).unwrap();
        assert_eq!(off.interpreters_head, 0x28);
        assert_eq!(off.threads_main, 0x60);
        assert_eq!(off.eval_breaker, 0x18);
        assert_eq!(off.remote_debugger_support, 0x400);
        assert_eq!(off.debugger_script_path_size, 512);
        assert!(parse(&t, (3, 15)).unwrap_err().contains("3.14"));
        assert!(parse(&table(0x030e_00f0, 1), (3, 14))
            .unwrap_err()
            .contains("free-threaded"));
        assert!(parse(&table(0x030d_00f0, 0), (3, 13))
            .unwrap_err()
            .contains("no remote-exec"));
        let mut bad = t.clone();
        bad[0] = b'y';
        assert!(parse(&bad, (3, 14)).is_err());
        assert!(parse(&t[..100], (3, 14)).is_err());
    }

    /// Target memory as a sparse map of u64 words.
    fn memory(words: &[(u64, u64)]) -> impl Fn(u64, usize) -> Result<Vec<u8>, String> {
        let m: BTreeMap<u64, u64> = words.iter().copied().collect();
        move |addr, len| {
            let v = m.get(&addr).copied().ok_or(format!("unmapped {addr:#x}"))?;
            Ok(v.to_le_bytes()[..len.min(8)].to_vec())
        }
    }

    #[test]
    fn plans_the_three_writes_with_the_eval_breaker_last() {
        let off = parse(&table(0x030e_00f0, 0), (3, 14)).unwrap();
        let (rt, interp, tstate) = (0x7000_0000u64, 0x7100_0000u64, 0x7200_0000u64);
        let mem = memory(&[
            (rt + 0x28, interp),
            (interp + 0x2000, 1),
            (interp + 0x60, tstate),
            (tstate + 0x18, 0b11),
        ]);
        let w = plan(&mem, rt, &off, "/tmp/x.py").unwrap();
        assert_eq!(w[0], (tstate + 0x400 + 0x4, b"/tmp/x.py\0".to_vec()));
        assert_eq!(w[1], (tstate + 0x400, 1u32.to_le_bytes().to_vec()));
        assert_eq!(
            w[2],
            (tstate + 0x18, (0b11u64 | 1 << 5).to_le_bytes().to_vec())
        );

        let disabled = memory(&[
            (rt + 0x28, interp),
            (interp + 0x2000, 0),
            (interp + 0x60, tstate),
        ]);
        assert!(plan(&disabled, rt, &off, "/tmp/x.py")
            .unwrap_err()
            .contains("disabled"));
        let long = "/".repeat(600);
        assert!(plan(&mem, rt, &off, &long).unwrap_err().contains("longer"));
        let no_interp = memory(&[(rt + 0x28, 0)]);
        assert!(plan(&no_interp, rt, &off, "/tmp/x.py").is_err());
    }
}
