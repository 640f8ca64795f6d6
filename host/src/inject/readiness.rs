//! Is the target's interpreter fully initialised? Calling `PyGILState_Ensure` or
//! `Py_AddPendingCall` before `Py_Initialize` has finished dereferences a null interpreter and
//! kills the process, and the agent sees processes within milliseconds of their `exec`. So the
//! injector reads `_PyRuntime`'s init flags with `process_vm_readv` (no stop) and waits.
//!
//! `_PyRuntimeState` begins with its init flags on every version here (checked against the pyenv
//! 3.8–3.13 builds and Debian's 3.11): `preinitializing, preinitialized, core_initialized,
//! initialized` (3.8–3.10); the same after an `_initialized` int (3.11, 3.12); and in 3.13 after the
//! `_Py_DebugOffsets` block, whose size changes between patch releases, so its flags are found by
//! their shape rather than a fixed offset. In 3.14 and 3.15 the flags follow the debug offsets
//! directly, at the end of the table whose length `debug_offsets::table_len` knows (read off
//! Debian's 3.14.10 and 3.15.2: 760 and 888 bytes).

/// Bytes of `_PyRuntime` read: enough to cover 3.13's debug offsets.
pub const PROBE_LEN: usize = 2048;

/// `None` when the layout is not recognised (the caller falls back to an age check).
pub fn initialized(minor: u32, runtime_head: &[u8]) -> Option<bool> {
    let ints: Vec<i32> = runtime_head
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let flag = |v: i32| match v {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    };
    match minor {
        8..=10 => flag(*ints.get(3)?),
        11 | 12 => flag(*ints.get(4)?),
        13 => {
            // `_initialized` is set by `_PyRuntime_Initialize`, which runs before anything can
            // have mapped libpython long enough for us to see it; then preinitializing (0 once
            // done), preinitialized, core_initialized, initialized. The debug offsets before
            // them start with the cookie "xdebugpy" and hold 64-bit offsets, never this run.
            let start = 4; // skip the cookie and version
            (start..ints.len().saturating_sub(4)).find_map(|i| match &ints[i..i + 5] {
                [1, 0, 1, 1, last] => flag(*last),
                [1, 0, 1, 0, 0] | [1, 1, 0, 0, 0] | [1, 0, 0, 0, 0] => Some(false),
                _ => None,
            })
        }
        14 | 15 => {
            let at = super::debug_offsets::table_len(minor)? / 4;
            match ints.get(at..at + 5)? {
                [1, _, _, _, last] => flag(*last),
                [0, ..] => Some(false),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(ints: &[i32]) -> Vec<u8> {
        ints.iter().flat_map(|i| i.to_le_bytes()).collect()
    }

    #[test]
    fn reads_each_layout() {
        assert_eq!(initialized(8, &bytes(&[0, 1, 1, 1, 0, 0])), Some(true));
        assert_eq!(initialized(10, &bytes(&[0, 1, 1, 0, 0, 0])), Some(false));
        assert_eq!(initialized(12, &bytes(&[1, 0, 1, 1, 1, 0])), Some(true));
        assert_eq!(initialized(11, &bytes(&[1, 0, 1, 1, 0, 0])), Some(false));
        let mut head = vec![0x62657878, 0x79707567, 51183856, 0, 0, 0, 283320, 0];
        head.extend([1, 0, 1, 1, 1, 0, 0]);
        assert_eq!(initialized(13, &bytes(&head)), Some(true));
        assert_eq!(initialized(16, &bytes(&head)), None);
        // 3.14/3.15: the five flags right after the debug offsets, as read from live processes.
        for (minor, at) in [(14u32, 190usize), (15, 222)] {
            let mut head = vec![0; at + 8];
            head[at..at + 5].copy_from_slice(&[1, 0, 1, 1, 1]);
            assert_eq!(initialized(minor, &bytes(&head)), Some(true));
            head[at + 4] = 0;
            assert_eq!(initialized(minor, &bytes(&head)), Some(false));
            head[at] = 0;
            assert_eq!(initialized(minor, &bytes(&head)), Some(false));
            assert_eq!(initialized(minor, &bytes(&head[..at])), None);
        }
        assert_eq!(initialized(9, &bytes(&[7, 7, 7, 7])), None);
    }
}
