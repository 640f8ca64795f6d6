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

/// A sensor's verdict on one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    pub technology: String,
    pub role: Role,
    pub service_name: String,
    pub service_name_source: String,
    pub instrumentations: Vec<Instrumentation>,
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
