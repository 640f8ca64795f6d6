//! The sandboxed sensor host: WebAssembly components that know one technology each, loaded from a
//! directory, checked by a canary, swapped atomically, and quarantined when they misbehave.
mod bindings;
pub mod canary;
pub mod cli;
mod convert;
mod convert_v2;
mod engine;
pub mod limits;
mod loaded;
pub mod model;
pub mod registry;
mod stats;
pub mod trust;
pub mod watch;

pub use bindings::{Contract, CONTRACT_VERSION, CONTRACT_VERSIONS};
pub use canary::{contract_compatible, CanaryError};
pub use convert::OutputError;
pub use engine::{LimitExceeded, SandboxEngine};
pub use limits::SandboxLimits;
pub use loaded::{CallError, LoadedSensor};
pub use model::{
    Bundle, BundleScope, ChildPolicy, InjectionPolicy, Instrumentation, Match, PythonModule,
    RedactionRules, Role, RouteTemplate, Rules, SamplingRule, SensorInfo,
};
pub use registry::{
    LoadOutcome, QuarantinePolicy, RegistryError, SensorRef, SensorRegistry, SensorState,
    SensorStatus,
};
pub use stats::{CallStats, CallStatsSnapshot};
pub use watch::{sync_dir, watch_dir, DirWatch};
