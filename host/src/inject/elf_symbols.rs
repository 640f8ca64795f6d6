//! Addresses of named symbols inside a target process, from the ELF file it mapped.
//!
//! The file is the object the kernel itself mapped, opened through `/proc/PID/map_files/START-END`:
//! no path is followed, so neither a chroot (whose maps print host paths), a container's mount
//! namespace (maps print paths inside it), a symlink planted in a container's root, nor a binary
//! deleted and replaced under a running service (a package upgrade) can make us read another file.
//! Both `.dynsym` (stripped binaries such as Debian's python3.11) and `.symtab` are searched. The
//! load bias comes from the mapping of file offset 0, which works for PIE/shared objects and non-PIE
//! executables alike (bias 0 there).
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use object::{Object, ObjectSegment, ObjectSymbol};

use crate::discover::python_runtime::Mapping;

use super::InjectError;

/// A target's ELF files are untrusted input: anything bigger than this is refused, not read.
pub const MAX_ELF_BYTES: u64 = 512 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    /// Absolute address in the target.
    pub addr: u64,
    pub size: u64,
}

/// The path a mapping shows, without the kernel's ` (deleted)` mark for a replaced file.
pub fn mapped_path(m: &Mapping) -> &str {
    m.path.trim_end_matches(" (deleted)")
}

/// The mapping of `path`'s file offset 0 in `maps` (the lowest, if mapped more than once).
pub fn base_mapping<'a>(maps: &'a [Mapping], path: &str) -> Option<&'a Mapping> {
    maps.iter()
        .filter(|m| mapped_path(m) == path && m.offset == 0 && m.inode != 0)
        .min_by_key(|m| m.start)
}

/// Reads the object mapped by `m` in `pid`, as the kernel holds it.
pub fn read_mapped(pid: u32, m: &Mapping) -> Result<Vec<u8>, InjectError> {
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let file = std::fs::File::open(&link).map_err(|e| InjectError::from_io(pid, &link, e))?;
    let meta = file
        .metadata()
        .map_err(|e| InjectError::from_io(pid, &link, e))?;
    // The pid may have exec'd between reading its maps and opening the link.
    if meta.ino() != m.inode {
        return Err(InjectError::Elf(format!(
            "{link}: inode {} is not the mapped {} (the process changed under us)",
            meta.ino(),
            m.inode
        )));
    }
    if meta.len() > MAX_ELF_BYTES {
        return Err(InjectError::Elf(format!(
            "{}: {} bytes, more than the {MAX_ELF_BYTES} an interpreter may have",
            m.path,
            meta.len()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_ELF_BYTES + 1), &mut data)
        .map_err(|e| InjectError::from_io(pid, &link, e))?;
    Ok(data)
}

/// Resolves `names` in the ELF file that `pid` mapped at `path`. Missing names are absent from the map.
pub fn resolve(
    pid: u32,
    maps: &[Mapping],
    path: &str,
    names: &[&str],
) -> Result<HashMap<String, Symbol>, InjectError> {
    let m = base_mapping(maps, path).ok_or_else(|| {
        InjectError::Elf(format!("{path} is not mapped at offset 0 in pid {pid}"))
    })?;
    let data = read_mapped(pid, m)?;
    resolve_in_image(&data, m.start, names).map_err(|e| InjectError::Elf(format!("{path}: {e}")))
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

    /// An ELF file exporting `names` (functions in `.text`), as a byte fixture.
    fn elf_exporting(names: &[&str]) -> Vec<u8> {
        use object::write::{Object as WObject, Symbol as WSymbol, SymbolSection};
        use object::{
            Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolKind, SymbolScope,
        };
        let mut obj = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.section_id(object::write::StandardSection::Text);
        obj.append_section_data(text, &[0xc3; 64], 16);
        for (i, name) in names.iter().enumerate() {
            obj.add_symbol(WSymbol {
                name: name.as_bytes().to_vec(),
                value: 16 + i as u64 * 8,
                size: 8,
                kind: SymbolKind::Text,
                scope: SymbolScope::Dynamic,
                weak: false,
                section: SymbolSection::Section(text),
                flags: SymbolFlags::None,
            });
        }
        obj.write().unwrap()
    }

    /// A free-threaded build says so by what it exports, whatever its file is called.
    #[test]
    fn free_threaded_builds_are_told_by_their_symbols() {
        let mut wanted: Vec<&str> = vec!["PyRun_SimpleString"];
        wanted.extend(crate::inject::FREE_THREADED_SYMBOLS);
        let ft = elf_exporting(&["PyRun_SimpleString", "_Py_DecRefShared"]);
        let found = resolve_in_image(&ft, 0x1000, &wanted).unwrap();
        assert_eq!(
            crate::inject::free_threaded_mark(&found),
            Some("_Py_DecRefShared")
        );
        let gil = elf_exporting(&["PyRun_SimpleString", "Py_AddPendingCall"]);
        let found = resolve_in_image(&gil, 0x1000, &wanted).unwrap();
        assert!(found.contains_key("PyRun_SimpleString"));
        assert_eq!(crate::inject::free_threaded_mark(&found), None);
    }

    /// Truncated or garbage files are refused with an error, never a panic.
    #[test]
    fn malformed_files_are_errors() {
        let good = elf_exporting(&["PyRun_SimpleString"]);
        assert!(resolve_in_image(&good, 0, &["PyRun_SimpleString"]).is_ok());
        // Shorter than the 64-byte ELF header: refused.
        for cut in [0, 4, 16, 63] {
            assert!(resolve_in_image(&good[..cut], 0, &["x"]).is_err(), "{cut}");
        }
        // Cut anywhere past it: an error or a partial answer, never a panic.
        for cut in (64..good.len()).step_by(7) {
            let _ = resolve_in_image(&good[..cut], 0, &["PyRun_SimpleString"]);
        }
        assert!(resolve_in_image(b"\x7fELF\x02\x01\x01", 0, &["x"]).is_err());
        assert!(resolve_in_image(&[0u8; 100], 0, &["x"]).is_err());
    }

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
