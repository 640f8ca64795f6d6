//! The canary a sensor file must pass before it may serve: read, compile, check imports and the
//! contract version, instantiate, `describe`, and a self-check call of every export.
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::bindings::{self, v0_1, v0_2, Contract, CONTRACT_VERSIONS};
use super::loaded::{CallError, LoadedSensor, Pre};
use super::model::{Match, Role};
use super::stats::CallStats;
use super::SandboxEngine;
use crate::discover::ProcessInfo;
use crate::span::{Attribute, Span, SpanKind};

#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("file is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not a WebAssembly file (bad magic number)")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build the sensor for wasm32-wasip2 (or run `wasm-tools component new`)")]
    CoreModule,
    #[error("does not compile: {0}")]
    Compile(String),
    #[error("imports `{0}`, which the sandbox does not provide (sensors may import only zerostep:sensor/host)")]
    ForbiddenImport(String),
    #[error("not a sensor of a contract this agent knows: {0}")]
    UnknownContract(String),
    #[error("does not implement the sensor world of zerostep:sensor@{contract}: {error}")]
    WrongWorld {
        contract: &'static str,
        error: String,
    },
    #[error(
        "built for contract {found}, its imports are of contract {imports}.x (this agent implements {})",
        CONTRACT_VERSIONS.join(", ")
    )]
    ContractMismatch {
        found: String,
        imports: &'static str,
    },
    #[error("bundles or rules refused: {0}")]
    Bundles(CallError),
    #[error("describe failed: {0}")]
    Describe(CallError),
    #[error("self-check failed in {export}: {error}")]
    SelfCheck {
        export: &'static str,
        error: CallError,
    },
}

/// Whether this host loads sensors that say they were built for `version`: any patch level of a
/// contract line it has bindings for (0.1.x, 0.2.x).
pub fn contract_compatible(version: &str) -> bool {
    [Contract::V0_1, Contract::V0_2]
        .iter()
        .any(|c| c.accepts(version))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Runs the canary on a file. On success the sensor is ready to serve.
pub fn load(engine: &Arc<SandboxEngine>, path: &Path) -> Result<LoadedSensor, CanaryError> {
    let bytes = std::fs::read(path).map_err(|source| CanaryError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_bytes(engine, path, &bytes)
}

pub fn load_bytes(
    engine: &Arc<SandboxEngine>,
    path: &Path,
    bytes: &[u8],
) -> Result<LoadedSensor, CanaryError> {
    let max = engine.limits().max_component_bytes;
    if bytes.len() > max {
        return Err(CanaryError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(CanaryError::NotWasm);
    }
    // Layer/version field: 1 for core modules, 0x0d (with layer 1) for components.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(CanaryError::CoreModule);
    }
    let sha256 = sha256_hex(bytes);
    let component = engine
        .compile(bytes, &sha256)
        .map_err(|e| CanaryError::Compile(format!("{e:#}")))?;
    let imports = engine.imports(&component);
    // Capabilities first (a filesystem import is refused whatever the contract), then the
    // contract its `zerostep:sensor` imports say, then that contract's own import check.
    if let Some(import) = imports
        .iter()
        .find(|i| !i.starts_with("zerostep:sensor/") && engine.forbidden_import_name(i))
    {
        return Err(CanaryError::ForbiddenImport(import.clone()));
    }
    let contract = match bindings::contract_of(imports.iter().map(String::as_str)) {
        Ok(c) => c,
        Err(e) if imports.iter().any(|i| i.starts_with("zerostep:sensor/")) => {
            return Err(CanaryError::UnknownContract(e))
        }
        Err(e) => {
            return Err(CanaryError::WrongWorld {
                contract: "0.1.0 or 0.2.0",
                error: e,
            })
        }
    };
    if let Some(import) = engine.forbidden_import(&component, contract) {
        return Err(CanaryError::ForbiddenImport(import));
    }
    let wrong_world = |e: wasmtime::Error| CanaryError::WrongWorld {
        contract: match contract {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        },
        error: format!("{e:#}"),
    };
    let linker = engine
        .linker_for(&component, contract)
        .map_err(|e| wrong_world(wasmtime::Error::msg(format!("{e:#}"))))?;
    let instance_pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
    let pre = match contract {
        Contract::V0_1 => Pre::V0_1(v0_1::SensorPre::new(instance_pre).map_err(wrong_world)?),
        Contract::V0_2 => Pre::V0_2(v0_2::SensorPre::new(instance_pre).map_err(wrong_world)?),
    };

    // Describe on a provisional identity, then re-label with what the sensor said.
    let provisional = LoadedSensor::new(
        engine.clone(),
        pre.clone(),
        placeholder_info(),
        path.to_path_buf(),
        sha256.clone(),
    );
    let stats = CallStats::default();
    let info = provisional
        .describe(&stats)
        .map_err(CanaryError::Describe)?;
    if !contract.accepts(&info.contract_version) {
        return Err(CanaryError::ContractMismatch {
            found: info.contract_version,
            imports: contract.as_str(),
        });
    }
    let mut sensor = LoadedSensor::new(engine.clone(), pre, info, path.to_path_buf(), sha256);
    let (bundles, rules) = sensor
        .bundles_and_rules(&stats)
        .map_err(CanaryError::Bundles)?;
    let owner = sensor.info.name.clone();
    sensor.bundles = bundles
        .into_iter()
        .map(|mut b| {
            b.sensor = owner.clone();
            b
        })
        .collect();
    sensor.rules = rules;
    self_check(&sensor, &stats)?;
    Ok(sensor)
}

fn placeholder_info() -> super::model::SensorInfo {
    super::model::SensorInfo {
        name: "(canary)".into(),
        version: String::new(),
        technologies: vec![],
        contract_version: String::new(),
        attribute_keys: vec![],
    }
}

/// Every export once, on inputs like those it will see, within the normal limits.
fn self_check(sensor: &LoadedSensor, stats: &CallStats) -> Result<(), CanaryError> {
    let process = ProcessInfo {
        pid: 1,
        ppid: 0,
        uid: 0,
        exe: "/usr/bin/true".into(),
        cmdline: vec!["/usr/bin/true".into()],
        cwd: "/".into(),
        ..Default::default()
    };
    sensor
        .match_process(stats, &process)
        .map_err(|error| CanaryError::SelfCheck {
            export: "match-process",
            error,
        })?;
    let matched = Match {
        technology: sensor
            .info
            .technologies
            .first()
            .cloned()
            .unwrap_or_default(),
        role: Role::Worker,
        service_name: "canary".into(),
        service_name_source: "canary".into(),
        instrumentations: vec![],
        injection: Default::default(),
    };
    sensor
        .instrumentation(stats, &matched)
        .map_err(|error| CanaryError::SelfCheck {
            export: "instrumentation",
            error,
        })?;
    let mut spans = sample_spans();
    sensor
        .enrich(stats, &matched, &mut spans)
        .map_err(|error| CanaryError::SelfCheck {
            export: "enrich",
            error,
        })?;
    Ok(())
}

fn sample_spans() -> Vec<Span> {
    let server = Span {
        trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
        span_id: 0x00f067aa0ba902b7,
        parent_span_id: None,
        name: "GET".into(),
        kind: SpanKind::Server,
        start_unix_nano: 1_700_000_000_000_000_000,
        end_unix_nano: 1_700_000_000_002_000_000,
        status: Default::default(),
        attributes: vec![
            Attribute::str("http.request.method", "GET"),
            Attribute::str("url.path", "/users/42"),
            Attribute::str("url.query", "token=abc"),
            Attribute::int("http.response.status_code", 200),
        ],
        events: vec![],
    };
    let query = Span {
        span_id: 0x00f067aa0ba902b8,
        parent_span_id: Some(0x00f067aa0ba902b7),
        name: "SELECT".into(),
        kind: SpanKind::Client,
        attributes: vec![
            Attribute::str("db.system", "sqlite"),
            Attribute::str("db.query.text", "SELECT * FROM users WHERE id = 42"),
        ],
        ..server.clone()
    };
    vec![server, query]
}
