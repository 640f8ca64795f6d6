//! `zerostep sensors check`, `zerostep sensors list` and `zerostep sensors rollback`.
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{canary, SandboxEngine, SandboxLimits, SensorStatus};

/// Exit code for a sensor the canary refuses (1 is for failures of the command itself).
pub const EXIT_REFUSED: u8 = 2;

pub fn check(file: &Path) -> Result<ExitCode> {
    let engine = Arc::new(SandboxEngine::new(SandboxLimits::default(), None)?);
    match canary::load(&engine, file) {
        Ok(sensor) => {
            let i = &sensor.info;
            println!("ok: {} {}", i.name, i.version);
            println!("  contract:      zerostep:sensor@{}", i.contract_version);
            println!("  technologies:  {}", i.technologies.join(", "));
            println!("  sha256:        {}", sensor.sha256);
            for b in &sensor.bundles {
                println!(
                    "  bundle:        {} {} ({:?}, triggers: {}, tracer API {})",
                    b.name,
                    b.version,
                    b.scope,
                    if b.triggers.is_empty() {
                        "none".to_string()
                    } else {
                        b.triggers.join(", ")
                    },
                    b.tracer_api
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("refused: {}: {err}", file.display());
            Ok(ExitCode::from(EXIT_REFUSED))
        }
    }
}

pub fn rollback(agent: &crate::client::ApiClient, name: &str) -> Result<ExitCode> {
    let body = serde_json::json!({ "name": name });
    let r: crate::api::RollbackResponse = match agent.post_json("/api/v1/sensors/rollback", &body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rollback refused: {e:#}");
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
    };
    println!(
        "{}: {} -> {} (processes get it in place)",
        r.name, r.from, r.to
    );
    Ok(ExitCode::SUCCESS)
}

pub fn list(agent: &crate::client::ApiClient, json: bool) -> Result<ExitCode> {
    let body = agent.get("/api/v1/sensors")?;
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let sensors: Vec<SensorStatus> =
        serde_json::from_str(&body).context("decoding the agent's answer")?;
    println!(
        "{:<12} {:<10} {:<12} {:>8} {:>7} {:>6} {:>9} {:>9}  SOURCE",
        "NAME", "VERSION", "STATE", "CALLS", "ERRORS", "TRAPS", "P50(us)", "P99(us)"
    );
    for s in &sensors {
        let version = s
            .serving
            .as_ref()
            .map(|v| v.version.as_str())
            .unwrap_or("-");
        println!(
            "{:<12} {:<10} {:<12} {:>8} {:>7} {:>6} {:>9.1} {:>9.1}  {}",
            s.name,
            version,
            format!("{:?}", s.state).to_lowercase(),
            s.calls.calls,
            s.calls.errors,
            s.calls.traps,
            s.calls.p50_us,
            s.calls.p99_us,
            s.source
        );
        if let Some(q) = &s.quarantined {
            println!(
                "  quarantined {}: {}",
                &q.sha256[..q.sha256.len().min(12)],
                q.reason
            );
        }
        if let Some(v) = &s.serving {
            if v.contract_version != "0.1.0" || !v.bundles.is_empty() {
                for b in &v.bundles {
                    println!("  bundle {} {} ({:?})", b.name, b.version, b.scope);
                }
            }
        }
        if let Some(r) = &s.rolled_back {
            println!("  rolled back from {}", r.reason);
        }
        if let Some(r) = &s.last_refused {
            println!(
                "  refused {}: {}",
                &r.sha256[..r.sha256.len().min(12)],
                r.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
