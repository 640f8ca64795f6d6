//! What the rest of the agent sees of a sensor's answers: plain, serialisable, already validated.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Master,
    Worker,
    Standalone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instrumentation {
    pub name: String,
    pub settings: Vec<(String, String)>,
}

/// What happens to a matched process's children (contract 0.2; 0.1 sensors get the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildPolicy {
    Inherit,
    Inject,
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectionPolicy {
    /// Inject the process itself.
    pub inject: bool,
    pub forked_children: ChildPolicy,
    pub spawned_children: ChildPolicy,
}

impl Default for InjectionPolicy {
    /// What the agent did before 0.2 said: inject, forked workers inherit (or are injected when
    /// they did not), spawned children are matched and injected themselves.
    fn default() -> Self {
        Self {
            inject: true,
            forked_children: ChildPolicy::Inherit,
            spawned_children: ChildPolicy::Inject,
        }
    }
}

/// A sensor's verdict on one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    pub technology: String,
    pub role: Role,
    pub service_name: String,
    pub service_name_source: String,
    /// 0.1: the instrumentations the embedded tracer turns on; 0.2: the bundles to load (by
    /// name) with their settings.
    pub instrumentations: Vec<Instrumentation>,
    #[serde(default)]
    pub injection: InjectionPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleScope {
    /// Loaded where this sensor matched and the match names it.
    Matched,
    /// Loaded into every traced process.
    EveryProcess,
}

/// An instrumentation bundle (contract 0.2): Python the tracer runs in a matched process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The sensor that carries it (set by the host, not by the sensor).
    #[serde(default)]
    pub sensor: String,
    pub name: String,
    pub version: String,
    pub scope: BundleScope,
    pub triggers: Vec<String>,
    pub modules: Vec<PythonModule>,
    pub entry: String,
    pub tracer_api: String,
    pub settings: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedactionRules {
    pub secret_attributes: Vec<String>,
    pub url_attributes: Vec<String>,
    pub sql_attributes: Vec<String>,
    pub sensitive_words: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTemplate {
    pub pattern: String,
    pub template: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingRule {
    pub service: String,
    pub rate: f64,
}

/// A sensor's declarative rules (contract 0.2), applied by the host natively.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    pub redaction: RedactionRules,
    pub routes: Vec<RouteTemplate>,
    pub sampling: Vec<SamplingRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonModule {
    pub name: String,
    pub source: String,
}

/// What `describe` said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorInfo {
    pub name: String,
    pub version: String,
    pub technologies: Vec<String>,
    pub contract_version: String,
    pub attribute_keys: Vec<String>,
}
