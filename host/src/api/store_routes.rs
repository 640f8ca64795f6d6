//! The store's query API: services, the calls between them, endpoints, trace search and one
//! trace. Times are unix milliseconds; without `from`/`to` a query covers the last hour. Queries
//! run on the blocking pool (SQLite calls block).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::store::{
    AttrFilter, StatusFilter, Store, StoreError, TimeRange, TraceQuery, MAX_TRACE_LIMIT,
};

const DEFAULT_RANGE_MS: i64 = 3_600_000;

pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/edges", get(edges))
        .route("/api/v1/endpoints", get(endpoints))
        .route("/api/v1/series", get(series))
        .route("/api/v1/attribute-keys", get(attribute_keys))
        .route("/api/v1/endpoint-change", get(endpoint_change))
        .route("/api/v1/traces", get(traces))
        .route("/api/v1/traces/{id}", get(trace))
        .with_state(store)
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadTraceId(_) => Self::bad_request(e.to_string()),
            other => {
                tracing::warn!(error = %other, "store query failed");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: other.to_string(),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (
            self.status,
            Json(Body {
                error: self.message,
            }),
        )
            .into_response()
    }
}

type Params = Query<HashMap<String, String>>;

/// Query parameters, checked against the names a route accepts so a typo is an error, not a
/// silently ignored filter.
struct Checked<'a>(&'a HashMap<String, String>);

impl<'a> Checked<'a> {
    fn new(params: &'a HashMap<String, String>, allowed: &[&str]) -> Result<Self, ApiError> {
        if let Some(unknown) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {unknown:?}; this endpoint takes {}",
                allowed.join(", ")
            )));
        }
        Ok(Self(params))
    }

    fn string(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.0.get(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{name}={v:?} is not a valid number"))),
        }
    }

    fn range(&self) -> Result<TimeRange, ApiError> {
        let now = now_ms();
        let to = self.number::<i64>("to")?.unwrap_or(now);
        let from = self.number::<i64>("from")?.unwrap_or(to - DEFAULT_RANGE_MS);
        if from >= to {
            return Err(ApiError::bad_request(format!(
                "from ({from}) must be before to ({to}); both are unix milliseconds"
            )));
        }
        if from < 0 {
            return Err(ApiError::bad_request("from must not be negative"));
        }
        Ok(TimeRange {
            from_ms: from,
            to_ms: to,
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn blocking<T, F>(f: F) -> Result<Json<T>, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map(Json),
        Err(e) => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("query task failed: {e}"),
        }),
    }
}

async fn services(State(store): State<Arc<Store>>, Query(p): Params) -> Response {
    let result = Checked::new(&p, &["from", "to"]).and_then(|c| c.range());
    match result {
        Ok(range) => blocking(move || Ok(store.services(range)?))
            .await
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn edges(State(store): State<Arc<Store>>, Query(p): Params) -> Response {
    let result = Checked::new(&p, &["from", "to"]).and_then(|c| c.range());
    match result {
        Ok(range) => blocking(move || Ok(store.edges(range)?))
            .await
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn endpoints(State(store): State<Arc<Store>>, Query(p): Params) -> Response {
    let result = Checked::new(&p, &["service", "from", "to"])
        .and_then(|c| Ok((c.range()?, c.string("service"))));
    match result {
        Ok((range, service)) => blocking(move || Ok(store.endpoints(range, service.as_deref())?))
            .await
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn series(State(store): State<Arc<Store>>, Query(p): Params) -> Response {
    let result = Checked::new(&p, &["service", "endpoint", "from", "to"])
        .and_then(|c| Ok((c.range()?, c.string("service"), c.string("endpoint"))));
    match result {
        Ok((range, service, endpoint)) => {
            blocking(move || Ok(store.series(range, service.as_deref(), endpoint.as_deref())?))
                .await
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `service` and `endpoint` required; the baseline defaults to the window of the same length
/// just before the range.
async fn endpoint_change(State(store): State<Arc<Store>>, Query(p): Params) -> Response {
    let result = Checked::new(
        &p,
        &[
            "service",
            "endpoint",
            "from",
            "to",
            "baseline_from",
            "baseline_to",
        ],
    )
    .and_then(|c| {
        let range = c.range()?;
        let len = range.to_ms - range.from_ms;
        let b_to = c.number::<i64>("baseline_to")?.unwrap_or(range.from_ms);
        let b_from = c.number::<i64>("baseline_from")?.unwrap_or(b_to - len);
        if b_from >= b_to || b_from < 0 {
            return Err(ApiError::bad_request(
                "baseline_from must be before baseline_to, both unix milliseconds",
            ));
        }
        let (Some(service), Some(endpoint)) = (c.string("service"), c.string("endpoint")) else {
            return Err(ApiError::bad_request("service and endpoint are required"));
        };
        let baseline = TimeRange {
            from_ms: b_from,
            to_ms: b_to,
        };
        Ok((service, endpoint, range, baseline))
    });
    match result {
        Ok((service, endpoint, range, baseline)) => {
            blocking(move || Ok(store.endpoint_change(&service, &endpoint, range, baseline)?))
                .await
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn attribute_keys(State(store): State<Arc<Store>>) -> Response {
    blocking(move || Ok(store.attribute_keys()?))
        .await
        .into_response()
}

/// `attr` may repeat (each is one condition); every other parameter is given once.
fn trace_query(pairs: &[(String, String)]) -> Result<TraceQuery, ApiError> {
    let mut attributes = Vec::new();
    let mut p = HashMap::new();
    for (k, v) in pairs {
        if k == "attr" {
            if !v.is_empty() {
                let f: AttrFilter = v.parse().map_err(|e: crate::store::BadAttrFilter| {
                    ApiError::bad_request(e.to_string())
                })?;
                attributes.push(f);
            }
        } else if p.insert(k.clone(), v.clone()).is_some() {
            return Err(ApiError::bad_request(format!("{k} given more than once")));
        }
    }
    if attributes.len() > 16 {
        return Err(ApiError::bad_request("at most 16 attr conditions"));
    }
    let p = &p;
    let c = Checked::new(
        p,
        &[
            "service",
            "endpoint",
            "status",
            "min_duration_ms",
            "from",
            "to",
            "limit",
            "attr",
        ],
    )?;
    let status = match c.string("status").as_deref() {
        None => None,
        Some("ok") => Some(StatusFilter::Ok),
        Some("error") => Some(StatusFilter::Error),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status={other:?}: expected ok or error"
            )))
        }
    };
    let min_duration = match c.number::<f64>("min_duration_ms")? {
        Some(ms) if !(0.0..=1e12).contains(&ms) => {
            return Err(ApiError::bad_request(
                "min_duration_ms must be between 0 and 1e12",
            ))
        }
        Some(ms) => Some(Duration::from_secs_f64(ms / 1000.0)),
        None => None,
    };
    let limit = match c.number::<usize>("limit")? {
        Some(n) if n == 0 || n > MAX_TRACE_LIMIT => {
            return Err(ApiError::bad_request(format!(
                "limit must be 1..={MAX_TRACE_LIMIT}"
            )))
        }
        n => n.unwrap_or(0),
    };
    let range = c.range()?;
    Ok(TraceQuery {
        service: c.string("service"),
        endpoint: c.string("endpoint"),
        status,
        min_duration,
        from_ms: Some(range.from_ms),
        to_ms: Some(range.to_ms),
        limit,
        attributes,
    })
}

async fn traces(
    State(store): State<Arc<Store>>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    match trace_query(&p) {
        Ok(q) => blocking(move || Ok(store.traces(&q)?))
            .await
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn trace(State(store): State<Arc<Store>>, Path(id): Path<String>) -> Response {
    blocking(move || {
        store.trace(&id)?.ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no trace {id} in the store (unknown, or removed by retention)"),
        })
    })
    .await
    .into_response()
}
