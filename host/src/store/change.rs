//! What changed for an endpoint between two windows: its p95 from the rollups, and per child
//! operation (service + span name under the endpoint's requests) the time spent per request, from
//! a sample of the newest requests in each window. The operation whose time grew most is the
//! likely cause of a latency jump.
use std::collections::HashMap;

use rusqlite::Connection;
use serde::Serialize;

use super::encode;
use super::query::{self, StoredSpan, TimeRange, TraceQuery};
use super::StoreError;

/// Requests read per window (each is one trace decoded).
pub const SAMPLE: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointChange {
    pub p95_ms: f64,
    pub baseline_p95_ms: f64,
    pub requests: usize,
    pub baseline_requests: usize,
    /// Largest growth first.
    pub operations: Vec<OperationChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationChange {
    pub service: String,
    pub name: String,
    /// Self time per request (ms) in the window, and in the baseline.
    pub ms_per_request: f64,
    pub baseline_ms_per_request: f64,
    pub delta_ms: f64,
    pub calls_per_request: f64,
    pub baseline_calls_per_request: f64,
}

/// Per operation (service, span name).
type ByOperation = HashMap<(String, String), Acc>;

#[derive(Default, Clone, Copy)]
struct Acc {
    self_ms: f64,
    calls: f64,
}

/// Self time per operation in the requests of `endpoint` (the entry spans and everything below).
fn sample(
    conn: &Connection,
    service: &str,
    endpoint: &str,
    range: &TimeRange,
) -> Result<(usize, ByOperation), StoreError> {
    let q = TraceQuery {
        service: Some(service.into()),
        endpoint: Some(endpoint.into()),
        from_ms: Some(range.from_ms),
        to_ms: Some(range.to_ms),
        limit: SAMPLE,
        ..Default::default()
    };
    let mut requests = 0;
    let mut out = ByOperation::new();
    for t in query::traces(conn, &q)? {
        let Some(id) = encode::parse_trace_id(&t.trace_id) else {
            continue;
        };
        let Some(detail) = query::trace(conn, id)? else {
            continue;
        };
        let entries = entry_subtrees(&detail.spans, service, endpoint);
        if entries.is_empty() {
            continue;
        }
        requests += entries.len();
        for i in entries.into_iter().flatten() {
            let s = &detail.spans[i];
            let a = out.entry((s.service.clone(), s.name.clone())).or_default();
            a.self_ms += s.self_ms;
            a.calls += 1.0;
        }
    }
    Ok((requests, out))
}

/// For each span of the endpoint in the trace, the indexes of it and its descendants.
fn entry_subtrees(spans: &[StoredSpan], service: &str, endpoint: &str) -> Vec<Vec<usize>> {
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        if let Some(p) = &s.parent_span_id {
            children.entry(p.as_str()).or_default().push(i);
        }
    }
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.service == service && s.endpoint.as_deref() == Some(endpoint))
        // An entry span whose parent is of the same endpoint (a nested dispatch) is counted once.
        .filter(|(_, s)| {
            !s.parent_span_id.as_deref().is_some_and(|p| {
                spans.iter().any(|o| {
                    o.span_id == p
                        && o.service == service
                        && o.endpoint.as_deref() == Some(endpoint)
                })
            })
        })
        .map(|(root, _)| {
            let mut seen = vec![root];
            let mut stack = vec![root];
            while let Some(i) = stack.pop() {
                for &c in children
                    .get(spans[i].span_id.as_str())
                    .into_iter()
                    .flatten()
                {
                    if !seen.contains(&c) && seen.len() <= spans.len() {
                        seen.push(c);
                        stack.push(c);
                    }
                }
            }
            seen
        })
        .collect()
}

pub fn endpoint_change(
    conn: &Connection,
    service: &str,
    endpoint: &str,
    range: &TimeRange,
    baseline: &TimeRange,
) -> Result<EndpointChange, StoreError> {
    let p95 = |r: &TimeRange| -> Result<f64, StoreError> {
        Ok(query::endpoints(conn, r, Some(service))?
            .into_iter()
            .find(|e| e.endpoint == endpoint)
            .map_or(0.0, |e| e.stats.p95_ms))
    };
    let (n, now) = sample(conn, service, endpoint, range)?;
    let (bn, before) = sample(conn, service, endpoint, baseline)?;
    let per = |a: Option<&Acc>, n: usize| {
        let a = a.copied().unwrap_or_default();
        let n = n.max(1) as f64;
        (a.self_ms / n, a.calls / n)
    };
    let mut keys: Vec<&(String, String)> = now.keys().chain(before.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut operations: Vec<OperationChange> = keys
        .into_iter()
        .map(|k| {
            let (ms, calls) = per(now.get(k), n);
            let (bms, bcalls) = if bn == 0 {
                (0.0, 0.0)
            } else {
                per(before.get(k), bn)
            };
            OperationChange {
                service: k.0.clone(),
                name: k.1.clone(),
                ms_per_request: ms,
                baseline_ms_per_request: bms,
                delta_ms: if bn == 0 { 0.0 } else { ms - bms },
                calls_per_request: calls,
                baseline_calls_per_request: bcalls,
            }
        })
        .collect();
    operations.sort_by(|a, b| {
        b.delta_ms
            .total_cmp(&a.delta_ms)
            .then(b.ms_per_request.total_cmp(&a.ms_per_request))
    });
    Ok(EndpointChange {
        p95_ms: p95(range)?,
        baseline_p95_ms: p95(baseline)?,
        requests: n,
        baseline_requests: bn,
        operations,
    })
}
