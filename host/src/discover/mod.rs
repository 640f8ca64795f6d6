//! Processes as the agent sees them. Full discovery (proc connector, rescans) comes with the agent
//! issue; this module already owns `ProcessInfo`, the type every later stage takes.
mod process;
pub mod python_runtime;
pub mod scan;

pub use process::{LibPython, ProcessInfo, PythonRuntime};
