//! The sandbox's bounds: what one sensor call may consume and return.
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Linear memory (and tables) one instance may grow to.
    pub memory_bytes: usize,
    /// CPU time of the calling thread one call may use.
    pub cpu_per_call: Duration,
    /// Wall-clock time one call may take (CPU plus being descheduled).
    pub wall_per_call: Duration,
    /// Granularity of the two checks above: the epoch tick.
    pub tick: Duration,
    /// Size of a sensor file.
    pub max_component_bytes: usize,
    /// Any one string a sensor returns.
    pub max_string_bytes: usize,
    /// Attributes one patch may set.
    pub max_attributes_per_patch: usize,
    /// Instrumentations (and settings per instrumentation) a match may name.
    pub max_instrumentations: usize,
    /// Python modules `instrumentation` may return, and their total source size.
    pub max_modules: usize,
    pub max_modules_bytes: usize,
    /// Bundles one sensor may carry (each within `max_modules`; all within `max_modules_bytes`).
    pub max_bundles: usize,
    /// Entries of each list of a sensor's rules.
    pub max_rules: usize,
    /// A service name: short enough for a UI column and a metric label.
    pub max_service_name_bytes: usize,
    /// Spans passed to one `enrich` call; longer batches are split.
    pub max_batch: usize,
    /// Text bytes passed to one `enrich` call (well under `memory_bytes`); batches are split.
    pub max_batch_text_bytes: usize,
    /// Log lines per second per instance (burst of the same size).
    pub log_lines_per_sec: u32,
    /// Idle instances kept per sensor version for reuse.
    pub pool_size: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 32 << 20,
            cpu_per_call: Duration::from_millis(200),
            wall_per_call: Duration::from_millis(500),
            tick: Duration::from_millis(5),
            max_component_bytes: 16 << 20,
            max_string_bytes: 64 << 10,
            max_attributes_per_patch: 64,
            max_instrumentations: 32,
            max_modules: 16,
            max_modules_bytes: 1 << 20,
            max_bundles: 16,
            max_rules: 256,
            max_service_name_bytes: 200,
            max_batch: 1024,
            max_batch_text_bytes: 4 << 20,
            log_lines_per_sec: 20,
            pool_size: 8,
        }
    }
}
