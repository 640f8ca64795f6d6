//! The commands that talk to a running agent over its HTTP API: `ps`, `traces`, `detach`.
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::cli::{AgentAddr, DEFAULT_LISTEN};
use crate::orchestrate::ProcessView;

/// GET from the running agent's API; the error says what to check.
pub fn get(agent: SocketAddr, path_and_query: &str) -> Result<String> {
    ureq::get(&format!("http://{agent}{path_and_query}"))
        .call()
        .with_context(|| format!("asking the agent at {agent} (is `zerostep agent` running?)"))?
        .body_mut()
        .read_to_string()
        .context("reading the agent's answer")
}

pub fn ps(agent: SocketAddr, json: bool) -> Result<ExitCode> {
    let body = get(agent, "/api/v1/processes")?;
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let procs: Vec<ProcessView> =
        serde_json::from_str(&body).context("decoding the agent's answer")?;
    println!(
        "{:>7} {:>7} {:<16} {:<9} {:<10} {:<7} {:<16} {:<5}  DETAIL",
        "PID", "PPID", "SERVICE", "TECH", "ROLE", "PYTHON", "STATE", "CONN"
    );
    for p in &procs {
        let detail = p.reason.clone().unwrap_or_else(|| p.cmdline.clone());
        println!(
            "{:>7} {:>7} {:<16} {:<9} {:<10} {:<7} {:<16} {:<5}  {}",
            p.pid,
            p.ppid,
            p.service.as_deref().unwrap_or("-"),
            p.technology.as_deref().unwrap_or("-"),
            p.role
                .map(|r| format!("{r:?}").to_lowercase())
                .unwrap_or_else(|| "-".into()),
            p.python.as_deref().unwrap_or("-"),
            p.state,
            if p.connected { "yes" } else { "no" },
            detail
        );
        // A bundle this process refused, and why (the app serves on without it).
        if let Some(serde_json::Value::Object(bundles)) = &p.bundles {
            for (name, b) in bundles {
                if b["state"] == "refused" {
                    println!(
                        "{:>7} bundle {name} {} refused: {}",
                        "",
                        b["version"].as_str().unwrap_or("?"),
                        b["reason"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args, Clone)]
pub struct TracesArgs {
    #[command(flatten)]
    pub agent: AgentAddr,
    /// Only traces that touch this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only traces with an error.
    #[arg(long)]
    pub errors: bool,
    /// Only traces at least this long (milliseconds).
    #[arg(long)]
    pub min_duration_ms: Option<u64>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Print the agent's JSON as it is.
    #[arg(long)]
    pub json: bool,
}

impl Default for TracesArgs {
    fn default() -> Self {
        TracesArgs {
            agent: AgentAddr {
                addr: DEFAULT_LISTEN
                    .parse()
                    .unwrap_or_else(|_| ([127, 0, 0, 1], 7787).into()),
            },
            service: None,
            errors: false,
            min_duration_ms: None,
            limit: 20,
            json: false,
        }
    }
}

pub fn traces(a: &TracesArgs) -> Result<ExitCode> {
    let mut q = vec![format!("limit={}", a.limit)];
    if let Some(s) = &a.service {
        q.push(format!("service={}", encode(s)));
    }
    if a.errors {
        q.push("status=error".into());
    }
    if let Some(ms) = a.min_duration_ms {
        q.push(format!("min_duration_ms={ms}"));
    }
    let body = get(a.agent.addr, &format!("/api/v1/traces?{}", q.join("&")))?;
    if a.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: Value = serde_json::from_str(&body).context("decoding the agent's answer")?;
    let rows = v
        .as_array()
        .or_else(|| v.get("traces").and_then(Value::as_array))
        .cloned()
        .unwrap_or_default();
    println!(
        "{:<32} {:>10} {:>5} {:<5}  {:<16} ROOT",
        "TRACE", "DURATION", "SPANS", "ERROR", "SERVICE"
    );
    for t in rows {
        let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let n = |k: &str| t.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        println!(
            "{:<32} {:>8.1}ms {:>5} {:<5}  {:<16} {}",
            s("trace_id"),
            n("duration_ms"),
            n("span_count") as u64,
            if t.get("error").and_then(Value::as_bool).unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            s("root_service"),
            s("root_name"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn detach(agent: SocketAddr, pid: Option<u32>, service: Option<String>) -> Result<ExitCode> {
    let body = serde_json::json!({ "pid": pid, "service": service });
    let resp: crate::api::DetachResponse = ureq::post(&format!("http://{agent}/api/v1/detach"))
        .send_json(&body)
        .with_context(|| format!("asking the agent at {agent} (is `zerostep agent` running?)"))?
        .body_mut()
        .read_json()
        .context("decoding the agent's answer")?;
    if resp.detached.is_empty() {
        println!("no connected tracer matched; new processes of it stay untraced");
    } else {
        println!(
            "detached: {}",
            resp.detached
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a query value (service names are usually plain, but need not be).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
