//! Which CPython a process runs, read from `/proc/PID/maps` and the executable's name only: no ptrace,
//! no ELF parsing, cheap enough to run on every discovered process.
//!
//! The C API lives either in a mapped `libpythonX.Y[t].so` (pyenv `--enable-shared`, uWSGI with a
//! shared libpython) or in the executable itself (Debian's `/usr/bin/python3.11`, static builds). The
//! executable's name is only a hint for the second case: uWSGI is not called `python`.
use std::io;

use super::{LibPython, PythonRuntime};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `r-xp` and friends.
    pub perms: String,
    pub offset: u64,
    pub inode: u64,
    /// The path as the process sees it (empty for anonymous memory, `[stack]` and such for specials).
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// The maps of a process.
pub fn read_maps(pid: u32) -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_maps(&text))
}

/// Parses `/proc/PID/maps` text; malformed lines are skipped rather than failing the whole read.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.to_string();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        inode,
        path,
    })
}

/// What the injector and the sensors need to know about a process's interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDetails {
    /// (major, minor), e.g. (3, 12).
    pub version: (u32, u32),
    /// A free-threaded (`--disable-gil`, `t` ABI suffix) build.
    pub free_threaded: bool,
    pub libpython: LibPython,
}

impl RuntimeDetails {
    pub fn version_string(&self) -> String {
        format!(
            "{}.{}{}",
            self.version.0,
            self.version.1,
            if self.free_threaded { "t" } else { "" }
        )
    }

    /// The shared type handed to sensors.
    pub fn to_runtime(&self) -> PythonRuntime {
        PythonRuntime {
            version: self.version_string(),
            libpython: self.libpython.clone(),
        }
    }

    /// The file holding the C API, as the process sees it.
    pub fn api_path<'a>(&'a self, exe: &'a str) -> &'a str {
        match &self.libpython {
            LibPython::Shared(p) => p,
            LibPython::LinkedIntoExecutable => exe,
        }
    }
}

/// Detects the interpreter of a live process; `Ok(None)` when nothing says CPython.
pub fn detect(pid: u32) -> io::Result<Option<RuntimeDetails>> {
    let maps = read_maps(pid)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    Ok(detect_from(&exe.to_string_lossy(), &maps))
}

/// Detection from already-read facts (unit-testable).
pub fn detect_from(exe: &str, maps: &[Mapping]) -> Option<RuntimeDetails> {
    for m in maps {
        let name = m.path.rsplit('/').next().unwrap_or("");
        if let Some(rest) = name.strip_prefix("libpython") {
            if let Some((version, free_threaded)) = parse_version_prefix(rest) {
                return Some(RuntimeDetails {
                    version,
                    free_threaded,
                    // A library replaced on disk (package upgrade) shows ` (deleted)`; the
                    // injector opens the mapped object itself, by its address range.
                    libpython: LibPython::Shared(m.path.trim_end_matches(" (deleted)").to_string()),
                });
            }
        }
    }
    let exe_name = exe
        .trim_end_matches(" (deleted)")
        .rsplit('/')
        .next()
        .unwrap_or("");
    let rest = exe_name.strip_prefix("python")?;
    let (version, free_threaded) = parse_version_prefix(rest)?;
    // `python3.11` with no libpython mapped: the API is linked into the executable.
    Some(RuntimeDetails {
        version,
        free_threaded,
        libpython: LibPython::LinkedIntoExecutable,
    })
}

/// `3.12.so.1.0` → ((3, 12), false); `3.13t.so` → ((3, 13), true); `3.11` → ((3, 11), false).
fn parse_version_prefix(s: &str) -> Option<((u32, u32), bool)> {
    let (major, rest) = s.split_once('.')?;
    let major: u32 = major.parse().ok()?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let minor: u32 = digits.parse().ok()?;
    let tail = &rest[digits.len()..];
    let free_threaded = tail.starts_with('t');
    let tail = tail.trim_start_matches(['t', 'd', 'm']);
    // Debian ships `python3.14` and `python3.14-pie` (the `-nopie` package diverts one to the other).
    if !(tail.is_empty() || tail.starts_with(".so") || tail.starts_with('-')) {
        return None;
    }
    Some(((major, minor), free_threaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYENV_MAPS: &str = "\
55d0c5a00000-55d0c5a01000 r--p 00000000 fd:01 1234 /root/.pyenv/versions/3.12.1/bin/python3.12
7f8436000000-7f8436100000 r--p 00000000 fd:01 99 /root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0
7f8436100000-7f8436400000 r-xp 00100000 fd:01 99 /root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn shared_libpython_wins_over_exe_name() {
        let maps = parse_maps(PYENV_MAPS);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[3].path, "[stack]");
        let d = detect_from("/usr/local/bin/uwsgi", &maps).unwrap();
        assert_eq!(d.version, (3, 12));
        assert!(!d.free_threaded);
        assert_eq!(
            d.libpython,
            LibPython::Shared("/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0".into())
        );
    }

    #[test]
    fn debian_python_is_linked_into_the_executable() {
        let d = detect_from("/usr/bin/python3.11", &[]).unwrap();
        assert_eq!(d.version, (3, 11));
        assert_eq!(d.libpython, LibPython::LinkedIntoExecutable);
        assert_eq!(d.to_runtime().version, "3.11");
    }

    #[test]
    fn free_threaded_and_non_python() {
        let maps = parse_maps("7f00-7f10 r--p 00000000 fd:01 9 /opt/lib/libpython3.13t.so.1.0\n");
        assert!(
            detect_from("/opt/bin/python3.13t", &maps)
                .unwrap()
                .free_threaded
        );
        assert!(detect_from("/usr/bin/perl", &[]).is_none());
        let pie = detect_from("/usr/bin/python3.15-pie", &[]).unwrap();
        assert_eq!(pie.version, (3, 15));
        assert!(detect_from("/usr/bin/python-config", &[]).is_none());
    }
}
