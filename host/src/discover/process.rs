use serde::{Deserialize, Serialize};

use super::Namespaces;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LibPython {
    /// Path of the mapped `libpythonX.Y.so`, as the process sees it.
    Shared(String),
    /// The C API is in the executable itself.
    #[serde(alias = "linked-into-executable")]
    LinkedIntoExecutable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonRuntime {
    pub version: String,
    pub libpython: LibPython,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): with the pid, names
    /// one process for its whole life, so a reused pid is never mistaken for it.
    #[serde(default)]
    pub start_time: u64,
    pub ppid: u32,
    pub uid: u32,
    pub exe: String,
    pub cmdline: Vec<String>,
    pub cwd: String,
    pub python: Option<PythonRuntime>,
    pub parent_cmdline: Vec<String>,
    #[serde(default)]
    pub extra: Vec<(String, String)>,
    /// Its pid/mount/network namespaces and whether they differ from the agent's (a container).
    #[serde(default)]
    pub namespaces: Namespaces,
}
