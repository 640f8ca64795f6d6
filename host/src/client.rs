//! The commands that talk to a running agent over its HTTP API: `ps`, `traces`, `detach`, `ui`.
//! Each sends the agent's API token (`STATE_DIR/api-token`, found through the agent's
//! configuration) when it can read it, which takes root.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::cli::{AgentAddr, DEFAULT_LISTEN};
use crate::orchestrate::ProcessView;

/// A running agent's API, with its token when this user may read it.
#[derive(Debug)]
pub struct ApiClient {
    pub addr: SocketAddr,
    token: Option<String>,
    token_file: PathBuf,
    /// Why there is no token (shown when the agent asks for one).
    no_token: Option<String>,
}

impl AgentAddr {
    /// The address and token file from the flags, else the agent's configuration, else defaults.
    pub fn client(&self) -> Result<ApiClient> {
        let overrides = crate::config::Overrides {
            config: self.config.clone(),
            ..Default::default()
        };
        let (listen, state_dir) = match crate::config::AgentConfig::load(&overrides) {
            Ok(c) => (c.listen, c.state_dir),
            // A configuration named on the command line must be readable; the default one only
            // helps (a non-root user may not read it, and reads may be open).
            Err(e) if self.config.is_some() => return Err(e.into()),
            Err(e) => {
                tracing::debug!(error = %e, "configuration not read; using defaults");
                (
                    DEFAULT_LISTEN
                        .parse()
                        .unwrap_or_else(|_| ([127, 0, 0, 1], 7787).into()),
                    crate::config::DEFAULT_STATE_DIR.into(),
                )
            }
        };
        let token_file = self
            .token_file
            .clone()
            .unwrap_or_else(|| crate::api::token::token_path(&state_dir));
        let (token, no_token) = match crate::api::token::read(&token_file) {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(ApiClient {
            addr: self.addr.unwrap_or(listen),
            token,
            token_file,
            no_token,
        })
    }
}

impl ApiClient {
    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// The token, once it is clear that whoever listens at the address is the agent's user: on
    /// loopback anyone may listen on the agent's port while it is down.
    fn token_for_listener(&self) -> Result<Option<&str>> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        if self.addr.ip().is_loopback() {
            use std::os::unix::fs::MetadataExt;
            let agent_uid = std::fs::metadata(&self.token_file)
                .map(|m| m.uid())
                .unwrap_or(0);
            let owners = crate::api::listener_owner::listener_uids(self.addr);
            if let Some(other) = owners.iter().find(|u| **u != agent_uid) {
                anyhow::bail!(
                    "the listener on {} belongs to uid {other}, not to the agent's user (uid \
                     {agent_uid}): not sending it the API token (is another program on the \
                     agent's port?)",
                    self.addr
                );
            }
        }
        Ok(Some(token))
    }

    fn auth_header(&self) -> Result<Option<String>> {
        Ok(self.token_for_listener()?.map(|t| format!("Bearer {t}")))
    }

    /// What a failed call means, in words that say what to do.
    fn explain(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::StatusCode(401) => match &self.no_token {
                Some(why) => anyhow::anyhow!(
                    "the agent at {} wants its API token and this user cannot give it ({why}); \
                     run as root, or give --token-file / --config",
                    self.addr
                ),
                None => anyhow::anyhow!(
                    "the agent at {} refused the token in {} (another agent's? give --config \
                     or --token-file)",
                    self.addr,
                    self.token_file.display()
                ),
            },
            other => anyhow::Error::new(other).context(format!(
                "asking the agent at {} (is `zerostep agent` running?)",
                self.addr
            )),
        }
    }

    /// GET from the running agent's API; the error says what to check.
    pub fn get(&self, path_and_query: &str) -> Result<String> {
        let mut req = ureq::get(&self.url(path_and_query));
        if let Some(a) = self.auth_header()? {
            req = req.header("Authorization", &a);
        }
        req.call()
            .map_err(|e| self.explain(e))?
            .body_mut()
            .read_to_string()
            .context("reading the agent's answer")
    }

    /// POST a JSON body (state-changing routes take JSON only).
    pub fn post_json<T: serde::de::DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        let mut req = ureq::post(&self.url(path));
        if let Some(a) = self.auth_header()? {
            req = req.header("Authorization", &a);
        }
        req.send_json(body)
            .map_err(|e| self.explain(e))?
            .body_mut()
            .read_json()
            .context("decoding the agent's answer")
    }
}

/// `zerostep ui`: a link that trades the token for a UI session (the token rides in the fragment,
/// which the browser never sends to a server).
pub fn ui_link(agent: &ApiClient) -> Result<ExitCode> {
    let Some(token) = agent.token_for_listener()? else {
        anyhow::bail!(
            "{} (the link carries the API token: run as root)",
            agent.no_token.as_deref().unwrap_or("no token")
        );
    };
    println!("http://{}/login#token={token}", agent.addr);
    Ok(ExitCode::SUCCESS)
}

pub fn ps(agent: &ApiClient, json: bool) -> Result<ExitCode> {
    let body = agent.get("/api/v1/processes")?;
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
            agent: AgentAddr::default(),
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
    let body = a
        .agent
        .client()?
        .get(&format!("/api/v1/traces?{}", q.join("&")))?;
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

pub fn detach(agent: &ApiClient, pid: Option<u32>, service: Option<String>) -> Result<ExitCode> {
    let body = serde_json::json!({ "pid": pid, "service": service });
    let resp: crate::api::DetachResponse = agent.post_json("/api/v1/detach", &body)?;
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
