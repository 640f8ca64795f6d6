//! `zerostep sensors check` and `zerostep sensors list`.
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
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("refused: {}: {err}", file.display());
            Ok(ExitCode::from(EXIT_REFUSED))
        }
    }
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
