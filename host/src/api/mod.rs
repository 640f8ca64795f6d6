//! The agent's HTTP API and web UI on 127.0.0.1:7787: read-only views of every stage, plus
//! `POST /api/v1/detach`. Handlers only read shared state or ask the orchestrator; no sensor code
//! and no injection runs on an API thread. Who may call what: `auth` (a layer over every route).
pub mod auth;
pub mod listener_owner;
mod metrics;
pub mod store_routes;
pub mod token;
pub mod ui;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::discover::Discovery;
use crate::intake::Intake;
use crate::orchestrate::{DetachTarget, Orchestrator, ProcessView};
use crate::pipeline::{Pipeline, Sink};
use crate::sensors::{SensorRegistry, SensorStatus};

/// What the API reads. Everything but the sensors is absent in `sensors`-only setups (tests).
#[derive(Clone)]
pub struct ApiState {
    pub sensors: Arc<SensorRegistry>,
    pub agent: Option<AgentParts>,
}

#[derive(Clone)]
pub struct AgentParts {
    pub orchestrator: Orchestrator,
    pub intake: Arc<Intake>,
    pub pipeline: Arc<Pipeline>,
    pub discovery: Arc<Discovery>,
    pub sinks: Vec<Arc<dyn Sink>>,
    /// The OTLP exporter too, for its own counters (drops by reason, TLS handshakes).
    pub otlp: Option<Arc<crate::export::OtlpExporter>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/sensors", get(sensors))
        .route("/api/v1/sensors/rollback", post(rollback))
        .route("/api/v1/health", get(|| async { "ok\n" }))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/detach", post(detach))
        .route("/metrics", get(metrics::render))
        .with_state(state)
}

/// Request bodies are small JSON objects; anything bigger is refused before it is buffered.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Every route of `app` behind the checks of `auth`, plus the UI's login routes.
pub fn secured(app: Router, access: Arc<auth::ApiAuth>) -> Router {
    app.merge(auth::routes(access.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(axum::middleware::from_fn_with_state(access, auth::guard))
}

async fn sensors(State(state): State<ApiState>) -> Json<Vec<SensorStatus>> {
    // Status reads take short locks only; no sensor code runs here.
    Json(state.sensors.status())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RollbackResponse {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// The sensor's previous version serves again; the orchestrator sends its bundles to every
/// process it matched (it sees the registry change).
async fn rollback(
    State(state): State<ApiState>,
    Json(req): Json<RollbackRequest>,
) -> axum::response::Response {
    use crate::sensors::RegistryError;
    match state.sensors.rollback(&req.name) {
        Ok((from, to)) => Json(RollbackResponse {
            name: req.name,
            from,
            to,
        })
        .into_response(),
        Err(e @ RegistryError::NoSuchSensor(_)) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

async fn processes(State(state): State<ApiState>) -> Json<Vec<ProcessView>> {
    match &state.agent {
        Some(a) => Json(a.orchestrator.processes().await),
        None => Json(Vec::new()),
    }
}

/// Exactly one of the two.
#[derive(Debug, Deserialize)]
pub struct DetachRequest {
    pub pid: Option<u32>,
    pub service: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DetachResponse {
    pub detached: Vec<u32>,
}

async fn detach(
    State(state): State<ApiState>,
    Json(req): Json<DetachRequest>,
) -> axum::response::Response {
    let target = match (req.pid, req.service) {
        (Some(pid), None) => DetachTarget::Pid(pid),
        (None, Some(s)) if !s.is_empty() => DetachTarget::Service(s),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "give exactly one of \"pid\" or \"service\"\n",
            )
                .into_response()
        }
    };
    let Some(a) = &state.agent else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no orchestrator\n").into_response();
    };
    Json(DetachResponse {
        detached: a.orchestrator.detach(target).await,
    })
    .into_response()
}
