//! `zerostep agent`: wires the stages together and runs until SIGINT/SIGTERM.
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::api::{self, ApiState};
use crate::cli::AgentArgs;
use crate::sensors::{watch_dir, QuarantinePolicy, SandboxEngine, SandboxLimits, SensorRegistry};

pub fn run(args: AgentArgs) -> Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;
    std::fs::create_dir_all(&args.sensors_dir).with_context(|| {
        format!(
            "creating the sensors directory {}",
            args.sensors_dir.display()
        )
    })?;

    let engine = Arc::new(SandboxEngine::new(
        SandboxLimits::default(),
        Some(&args.state_dir.join("sensor-cache")),
    )?);
    let registry = Arc::new(SensorRegistry::new(engine, QuarantinePolicy::default()));
    let _watch = watch_dir(registry.clone(), &args.sensors_dir)
        .with_context(|| format!("watching {}", args.sensors_dir.display()))?;
    for s in registry.status() {
        match &s.serving {
            Some(v) => tracing::info!(sensor = %v.name, version = %v.version, "loaded"),
            None => {
                tracing::warn!(source = %s.source, reason = ?s.last_refused.as_ref().map(|r| &r.reason), "not loaded")
            }
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("zerostep")
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(listen = %args.listen, sensors_dir = %args.sensors_dir.display(), "zerostep agent up");
        axum::serve(listener, api::router(ApiState { sensors: registry }))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving the API")
    })?;
    tracing::info!("zerostep agent stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
