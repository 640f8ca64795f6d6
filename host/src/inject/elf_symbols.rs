//! Addresses of named symbols inside a target process, from the ELF file it mapped.
//!
//! The file is read through `/proc/PID/root/…` so a process in another mount namespace (a container)
//! is looked up in its own filesystem. Both `.dynsym` (stripped binaries such as Debian's python3.11)
//! and `.symtab` are searched. The load bias comes from the mapping of file offset 0, which works for
//! PIE/shared objects and non-PIE executables alike (bias 0 there).
use std::collections::HashMap;

use object::{Object, ObjectSegment, ObjectSymbol};

use crate::discover::python_runtime::Mapping;

use super::InjectError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    /// Absolute address in the target.
    pub addr: u64,
    pub size: u64,
}

/// Resolves `names` in the ELF file that `pid` mapped at `path`. Missing names are absent from the map.
pub fn resolve(
    pid: u32,
    maps: &[Mapping],
    path: &str,
    names: &[&str],
) -> Result<HashMap<String, Symbol>, InjectError> {
    let host_path = format!("/proc/{pid}/root{path}");
    let data = std::fs::read(&host_path).map_err(|e| InjectError::from_io(pid, &host_path, e))?;
    let base = maps
        .iter()
        .filter(|m| m.path == path && m.offset == 0)
        .map(|m| m.start)
        .min()
        .ok_or_else(|| {
            InjectError::Elf(format!("{path} is not mapped at offset 0 in pid {pid}"))
        })?;
    resolve_in_image(&data, base, names).map_err(|e| InjectError::Elf(format!("{path}: {e}")))
}

/// Resolution against file bytes loaded at `map_base` (the address where file offset 0 is mapped).
pub fn resolve_in_image(
    data: &[u8],
    map_base: u64,
    names: &[&str],
) -> Result<HashMap<String, Symbol>, object::Error> {
    let file = object::File::parse(data)?;
    // The segment holding file offset 0 is the one mapped at `map_base`; its page-aligned vaddr is
    // what the linker assumed there (0 for shared objects, 0x400000 for a classic non-PIE executable).
    let first_vaddr = file
        .segments()
        .filter(|s| s.file_range().0 == 0)
        .map(|s| s.address() & !0xfff)
        .min()
        .unwrap_or(0);
    let bias = map_base.wrapping_sub(first_vaddr);
    let mut found = HashMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if names.contains(&name) && !found.contains_key(name) {
            found.insert(
                name.to_string(),
                Symbol {
                    addr: bias.wrapping_add(sym.address()),
                    size: sym.size(),
                },
            );
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's python3.11 is stripped and non-PIE: the API comes from `.dynsym`, with bias 0.
    #[test]
    fn stripped_non_pie_executable() {
        let Ok(data) = std::fs::read("/usr/bin/python3.11") else {
            return;
        };
        let found =
            resolve_in_image(&data, 0x400000, &["PyRun_SimpleString", "_PyRuntime"]).unwrap();
        let run = found["PyRun_SimpleString"];
        assert!(run.addr > 0x400000 && run.addr < 0x1000_0000, "{run:?}");
        assert!(found["_PyRuntime"].size > 1000);
    }

    /// A shared libpython: addresses move with the mapping base.
    #[test]
    fn shared_object_is_biased_by_its_mapping() {
        let Some(lib) = std::fs::read_dir("/root/.pyenv/versions/3.12.1/lib")
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().contains("libpython3.12.so"))
            })
        else {
            return;
        };
        let data = std::fs::read(lib).unwrap();
        let a = resolve_in_image(&data, 0, &["Py_AddPendingCall"]).unwrap()["Py_AddPendingCall"];
        let b = resolve_in_image(&data, 0x7f00_0000_0000, &["Py_AddPendingCall"]).unwrap()
            ["Py_AddPendingCall"];
        assert_eq!(b.addr - a.addr, 0x7f00_0000_0000);
    }
}
