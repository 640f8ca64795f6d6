//! `zerostep agent`: wires the stages together in the order data flows (see the design) and runs
//! until SIGINT/SIGTERM: discover → orchestrate (match, inject) → intake → pipeline (enrich) →
//! sinks (store, OTLP); the API reads from all of them.
use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::Digest;

use crate::api::{self, AgentParts, ApiState};
use crate::config::AgentConfig;
use crate::discover::{Discovery, DiscoveryConfig};
use crate::export::{OtlpConfig, OtlpExporter};
use crate::intake::{Intake, IntakeAddress, IntakeConfig, PeerRegistry};
use crate::orchestrate::{self, OrchestratorConfig, ProcessDirectory};
use crate::pipeline::{Pipeline, Sink};
use crate::sensors::{watch_dir, QuarantinePolicy, SandboxEngine, SandboxLimits, SensorRegistry};
use crate::store::{Store, StoreConfig};

pub fn run(cfg: AgentConfig) -> Result<()> {
    // Before any thread: nothing the agent writes is readable by another user.
    crate::state_dir::private_umask();
    crate::state_dir::prepare(&cfg.state_dir)
        .with_context(|| format!("preparing the state directory {}", cfg.state_dir.display()))?;
    std::fs::create_dir_all(&cfg.sensors_dir).with_context(|| {
        format!(
            "creating the sensors directory {}",
            cfg.sensors_dir.display()
        )
    })?;
    let token = api::token::load_or_create(&cfg.state_dir)?;
    if let Some(src) = &cfg.source {
        tracing::info!(config = %src.display(), "configuration read");
    }
    if !cfg.scope.descendants_of.is_empty() {
        tracing::info!(pids = ?cfg.scope.descendants_of, "scope: only descendants of these processes");
    }

    let engine = Arc::new(SandboxEngine::new(
        SandboxLimits::default(),
        Some(&cfg.state_dir.join("sensor-cache")),
    )?);
    let registry = Arc::new(SensorRegistry::new(engine, QuarantinePolicy::default()));
    let _watch = watch_dir(registry.clone(), &cfg.sensors_dir)
        .with_context(|| format!("watching {}", cfg.sensors_dir.display()))?;
    for s in registry.status() {
        match &s.serving {
            Some(v) => tracing::info!(sensor = %v.name, version = %v.version, "loaded"),
            None => {
                tracing::warn!(source = %s.source, reason = ?s.last_refused.as_ref().map(|r| &r.reason), "not loaded")
            }
        }
    }
    if registry.status().iter().all(|s| s.serving.is_none()) {
        tracing::warn!(dir = %cfg.sensors_dir.display(), "no sensor serves: nothing will be matched until one is added");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("zerostep")
        .build()?;
    runtime.block_on(serve(cfg, registry, token))?;
    tracing::info!("zerostep agent stopped");
    Ok(())
}

/// The intake's abstract socket name: stable across restarts of this agent (tracers already
/// injected reconnect to it), distinct per state directory (two agents never share one).
pub fn intake_name(cfg: &AgentConfig) -> String {
    let dir = std::fs::canonicalize(&cfg.state_dir).unwrap_or_else(|_| cfg.state_dir.clone());
    let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    format!("zerostep-{}", &hex::encode(digest)[..12])
}

async fn serve(cfg: AgentConfig, registry: Arc<SensorRegistry>, token: String) -> Result<()> {
    let mut intake_cfg = IntakeConfig::new(IntakeAddress::Abstract(intake_name(&cfg)));
    intake_cfg.tracer_config = serde_json::json!({ "sample_rate": cfg.sample_rate });
    // Kept across restarts, so tracers injected before reconnect and are answered (intake/auth.rs).
    intake_cfg.auth_key = Some(
        crate::intake::auth::IntakeKey::load_or_create(&cfg.state_dir)
            .context("the intake key in the state directory")?,
    );
    let intake =
        Arc::new(Intake::start(intake_cfg, PeerRegistry::new()).context("starting the intake")?);
    let directory = ProcessDirectory::default();
    {
        // Each process gets the bundles of the sensor that matched it (and every-process ones).
        let (directory, registry) = (directory.clone(), registry.clone());
        intake.set_bundle_source(Arc::new(move |pid| match directory.lookup(pid, pid) {
            Some(a) => registry.bundles_for(&a.sensor, &a.matched),
            None => Vec::new(),
        }));
    }
    let store = Arc::new(
        Store::open(
            &cfg.state_dir,
            StoreConfig {
                retention_age: cfg.retention,
                retention_bytes: cfg.max_store_bytes,
                // ~1 KB a span in memory. With the intake's 32k spans and the store's 16 MB page
                // cache, a flat-out agent peaked at 160 MB RSS (330 MB with 50k, 65k and 128 MB)
                // and stored as many spans per second.
                queue_spans: 20_000,
                ..StoreConfig::default()
            },
        )
        .context("opening the store")?,
    );
    let mut sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(store.sink())];
    let otlp = match &cfg.otlp {
        Some(c) => {
            let c: OtlpConfig = c.clone();
            let exporter = Arc::new(OtlpExporter::start(c).context("starting the OTLP exporter")?);
            tracing::info!(url = %exporter.url(), "exporting spans as OTLP");
            sinks.push(exporter.clone());
            Some(exporter)
        }
        None => None,
    };
    let pipeline = Arc::new(
        Pipeline::start(
            intake.queue(),
            directory.clone(),
            registry.clone(),
            sinks.clone(),
            tokio::runtime::Handle::current(),
        )
        .context("starting the pipeline")?,
    );
    let (discovery, events_rx) = Discovery::start(DiscoveryConfig {
        rescan_interval: cfg.rescan,
        ..DiscoveryConfig::default()
    })
    .context("starting discovery")?;
    let discovery = Arc::new(discovery);
    let orchestrator = orchestrate::start(
        OrchestratorConfig {
            max_concurrent_injections: cfg.max_concurrent_injections,
            excluded_services: cfg.exclude.services.clone(),
            excluded_uids: cfg.excluded_uids(),
            descendants_of: cfg.scope.descendants_of.clone(),
            ..OrchestratorConfig::default()
        },
        registry.clone(),
        intake.clone(),
        directory,
        events_rx,
    );

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, sensors_dir = %cfg.sensors_dir.display(),
        intake = %intake.address().bootstrap_param(),
        token = %api::token::token_path(&cfg.state_dir).display(),
        open_reads = cfg.api.open_reads_on_loopback, "zerostep agent up");
    let state = ApiState {
        sensors: registry,
        agent: Some(AgentParts {
            orchestrator,
            intake,
            pipeline: pipeline.clone(),
            discovery,
            sinks,
            otlp: otlp.clone(),
        }),
    };
    // The bound address (port 0 in the configuration becomes a real one), for the Host check.
    let bound = listener.local_addr().unwrap_or(cfg.listen);
    let auth = Arc::new(api::auth::ApiAuth::new(token, bound, &cfg.api));
    let app = api::secured(
        api::router(state)
            .merge(api::store_routes::router(store.clone()))
            .merge(api::ui::ui_router()),
        auth,
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the API")?;
    let p = pipeline.clone();
    tokio::task::spawn_blocking(move || {
        p.stop();
        store.close();
        if let Some(e) = otlp {
            let st = e.shutdown(std::time::Duration::from_secs(5));
            tracing::info!(
                delivered = st.sink.delivered,
                dropped = st.sink.dropped,
                "OTLP exporter stopped"
            );
        }
    })
    .await
    .ok();
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
