//! The agent's HTTP API (and, later, its web UI). Read-only views of the other stages.
pub mod store_routes;
pub mod ui;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::sensors::{SensorRegistry, SensorStatus};

#[derive(Clone)]
pub struct ApiState {
    pub sensors: Arc<SensorRegistry>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/sensors", get(sensors))
        .route("/api/v1/health", get(|| async { "ok\n" }))
        .with_state(state)
}

async fn sensors(State(state): State<ApiState>) -> Json<Vec<SensorStatus>> {
    // Status reads take short locks only; no sensor code runs here.
    Json(state.sensors.status())
}
