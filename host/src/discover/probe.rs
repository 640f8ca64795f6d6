//! Reading one process's facts from `/proc`, each read counted so discovery's cost can be seen.
//! Every read may fail because the process just exited: failures are `None`, never errors.
use procfs::process::Process;

/// `PF_KTHREAD` in `/proc/PID/stat` flags.
const PF_KTHREAD: u32 = 0x0020_0000;

/// The part of `/proc/PID/stat` discovery decides with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub ppid: u32,
    /// Clock ticks since boot at fork: with the pid, one process for its whole life.
    pub start_time: u64,
    /// Where the main stack starts. A new program image (exec) gets a new, randomised stack, a
    /// fork keeps its parent's: this tells an exec'd process from a forked copy without the
    /// connector and without reading maps.
    pub start_stack: u64,
    pub kernel_thread: bool,
    pub zombie: bool,
}

impl Stat {
    /// (start time, stack): one program image of one process.
    pub fn image(&self) -> (u64, u64) {
        (self.start_time, self.start_stack)
    }
}

pub(crate) fn open(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

pub(crate) fn stat(p: &Process) -> Option<Stat> {
    let st = p.stat().ok()?;
    Some(Stat {
        ppid: u32::try_from(st.ppid).unwrap_or(0),
        start_time: st.starttime,
        start_stack: st.startstack,
        kernel_thread: st.flags & PF_KTHREAD != 0,
        zombie: st.state == 'Z' || st.state == 'X',
    })
}

pub(crate) fn cmdline(p: &Process) -> Vec<String> {
    p.cmdline().unwrap_or_default()
}

pub(crate) fn exe(p: &Process) -> String {
    p.exe()
        .map(|e| {
            e.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default()
}

pub(crate) fn cwd(p: &Process) -> String {
    p.cwd()
        .map(|c| c.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The effective uid (owner of `/proc/PID`).
pub(crate) fn uid(p: &Process) -> u32 {
    p.uid().unwrap_or(u32::MAX)
}

pub(crate) fn cmdline_of(pid: u32) -> Vec<String> {
    open(pid).map(|p| cmdline(&p)).unwrap_or_default()
}

/// Seconds since boot in clock ticks, comparable with [`Stat::start_time`].
pub(crate) fn now_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * procfs::ticks_per_second() as f64) as u64)
}

/// Dynamically linked programs are only worth judging once the loader has mapped their libraries:
/// right after exec, a pyenv `python3.12` has only itself and `ld.so` mapped and would look like a
/// static build.
pub(crate) fn libraries_loaded(maps: &[super::python_runtime::Mapping]) -> bool {
    maps.iter().any(|m| {
        let name = m.path.rsplit('/').next().unwrap_or("");
        name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("libpython")
    })
}
