//! Read queries for the API and UI, each on a read-only connection. Aggregates come from the
//! hourly and per-minute rollups (histograms merged here); trace lists come from the entries
//! table or the trace summaries, never from a scan of span chunks.
use std::collections::{HashMap, HashSet};

use rustc_hash::FxHashMap;
use std::time::Duration;

use rusqlite::{params_from_iter, types::Value, Connection, OptionalExtension};
use serde::Serialize;

use super::analysis::{analyze, Analysis};
use super::chunk;
use super::encode::{self, STATUS_ERROR};
use super::histogram::Histogram;
use super::rollup::{cover, TIERS};
use super::search::{self, AttrFilter};
use super::writer::{trace_bytes, trace_key};
use super::StoreError;
use crate::span::{Attribute, Event, SpanKind, StatusCode};

/// `[from_ms, to_ms)`, unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl TimeRange {
    fn minutes(&self) -> (i64, i64) {
        (
            self.from_ms.div_euclid(60_000),
            (self.to_ms - 1).div_euclid(60_000),
        )
    }

    /// Minutes from `since_ns` (or the range's start, whichever is later) to its end.
    fn minutes_since(&self, since_ns: i64) -> f64 {
        let from = self.from_ms.max(since_ns / 1_000_000);
        ((self.to_ms - from) as f64 / 60_000.0).max(1.0 / 60.0)
    }

    fn ns(&self) -> (i64, i64) {
        (
            self.from_ms.saturating_mul(1_000_000),
            self.to_ms.saturating_mul(1_000_000),
        )
    }
}

/// Counts and latency over a time range (requests for services and endpoints, calls for edges).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestStats {
    pub count: u64,
    pub errors: u64,
    pub rate_per_min: f64,
    /// errors / count, 0..=1.
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Default)]
struct Agg {
    count: u64,
    errors: u64,
    histogram: Histogram,
}

impl Agg {
    fn add(&mut self, count: i64, errors: i64, histogram: &[u8]) {
        self.count += count as u64;
        self.errors += errors as u64;
        self.histogram.merge_encoded(histogram);
    }

    /// `since_ns`: when the service was first seen. One that started an hour into a day-long
    /// range has its rate over the time it has been running, not diluted over the whole range.
    fn stats(&self, range: &TimeRange, since_ns: i64) -> RequestStats {
        RequestStats {
            count: self.count,
            errors: self.errors,
            rate_per_min: self.count as f64 / range.minutes_since(since_ns),
            error_rate: if self.count == 0 {
                0.0
            } else {
                self.errors as f64 / self.count as f64
            },
            p50_ms: self.histogram.quantile_ms(0.50),
            p95_ms: self.histogram.quantile_ms(0.95),
            p99_ms: self.histogram.quantile_ms(0.99),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceSummary {
    pub name: String,
    /// `service` (traced) or `database` (a system traced services call).
    pub kind: String,
    pub technology: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub pids: Vec<u32>,
    /// Entry spans handled (for a database: calls received).
    #[serde(flatten)]
    pub stats: RequestStats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeSummary {
    pub caller: String,
    pub callee: String,
    pub callee_kind: String,
    #[serde(flatten)]
    pub stats: RequestStats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSummary {
    pub service: String,
    pub endpoint: String,
    #[serde(flatten)]
    pub stats: RequestStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    Ok,
    Error,
}

/// A trace search. With `service` or `endpoint`, it finds requests that service/endpoint handled
/// (entry spans) and `status`/`min_duration` apply to that request; without, they apply to the
/// whole trace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub endpoint: Option<String>,
    pub status: Option<StatusFilter>,
    pub min_duration: Option<Duration>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// 1..=1000; 0 means the default (50).
    pub limit: usize,
    /// Conditions on span attributes (see `search`); all must hold in one trace part.
    pub attributes: Vec<AttrFilter>,
}

pub const DEFAULT_TRACE_LIMIT: usize = 50;
pub const MAX_TRACE_LIMIT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub root_service: String,
    pub root_name: String,
    pub start_ms: f64,
    pub duration_ms: f64,
    pub span_count: u64,
    pub error: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredSpan {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub pid: u32,
    pub name: String,
    pub kind: SpanKind,
    pub status: StatusCode,
    pub status_message: String,
    pub endpoint: Option<String>,
    pub start_ms: f64,
    pub duration_ms: f64,
    /// Duration not covered by child spans.
    pub self_ms: f64,
    /// 0 for spans whose parent is not in the trace.
    pub depth: u32,
    pub attributes: Vec<Attribute>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CulpritReason {
    /// The deepest span that failed.
    Error,
    /// No span failed: the one with the most time of its own.
    SelfTime,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Culprit {
    pub span_id: String,
    pub reason: CulpritReason,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceDetail {
    pub trace_id: String,
    pub start_ms: f64,
    pub duration_ms: f64,
    pub services: Vec<String>,
    /// Ordered by start time.
    pub spans: Vec<StoredSpan>,
    pub culprit: Option<Culprit>,
    /// Where the error originated and where the time went.
    pub analysis: Analysis,
}

struct ServiceRow {
    name: String,
    kind: String,
    technology: String,
    first_seen_ns: i64,
    last_seen_ns: i64,
    pids: String,
}

fn service_rows(conn: &Connection) -> rusqlite::Result<HashMap<i64, ServiceRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, kind, technology, first_seen_ns, last_seen_ns, pids FROM services",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            ServiceRow {
                name: r.get(1)?,
                kind: r.get(2)?,
                technology: r.get(3)?,
                first_seen_ns: r.get(4)?,
                last_seen_ns: r.get(5)?,
                pids: r.get(6)?,
            },
        ))
    })?;
    rows.collect()
}

fn service_names(conn: &Connection) -> rusqlite::Result<HashMap<i64, String>> {
    Ok(service_rows(conn)?
        .into_iter()
        .map(|(id, s)| (id, s.name))
        .collect())
}

/// Which rollups to sum.
#[derive(Clone, Copy)]
enum Rollup {
    Endpoint,
    Edge,
}

/// Sums a rollup over a range, grouped by `group(a, b)`: whole hours from the hourly table, the
/// partial hours at the ends from the minutes.
fn aggregate<K: std::hash::Hash + Eq>(
    conn: &Connection,
    rollup: Rollup,
    range: &TimeRange,
    mut group: impl FnMut(i64, i64) -> Option<K>,
) -> rusqlite::Result<FxHashMap<K, Agg>> {
    let (prefix, cols) = match rollup {
        Rollup::Edge => ("edge", "caller_id, callee_id"),
        Rollup::Endpoint => ("endpoint", "service_id, endpoint_id"),
    };
    let (from, to) = range.minutes();
    let mut out: FxHashMap<K, Agg> = FxHashMap::default();
    for (tier, first, last) in cover(from, to) {
        let t = &TIERS[tier];
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {cols}, count, errors, histogram FROM {prefix}_{} WHERE {} BETWEEN ?1 AND ?2",
            t.suffix, t.column
        ))?;
        let mut rows = stmt.query([first, last])?;
        while let Some(r) = rows.next()? {
            let Some(key) = group(r.get(0)?, r.get(1)?) else {
                continue;
            };
            let hist = r.get_ref(4)?.as_blob().unwrap_or_default();
            out.entry(key).or_default().add(r.get(2)?, r.get(3)?, hist);
        }
    }
    Ok(out)
}

pub fn services(conn: &Connection, range: &TimeRange) -> Result<Vec<ServiceSummary>, StoreError> {
    let rows = service_rows(conn)?;
    let mut by_service = aggregate(conn, Rollup::Endpoint, range, |s, _| Some(s))?;
    let databases: HashSet<i64> = rows
        .iter()
        .filter(|(_, s)| s.kind != "service")
        .map(|(id, _)| *id)
        .collect();
    let into_db = aggregate(conn, Rollup::Edge, range, |_, callee| {
        databases.contains(&callee).then_some(callee)
    })?;
    by_service.extend(into_db);
    let (from_ns, _) = range.ns();
    let mut out: Vec<ServiceSummary> = rows
        .into_iter()
        .filter(|(id, s)| by_service.contains_key(id) || s.last_seen_ns >= from_ns)
        .map(|(id, s)| ServiceSummary {
            stats: by_service
                .get(&id)
                .map(|a| a.stats(range, s.first_seen_ns))
                .unwrap_or_default(),
            name: s.name,
            kind: s.kind,
            technology: s.technology,
            first_seen_ms: s.first_seen_ns / 1_000_000,
            last_seen_ms: s.last_seen_ns / 1_000_000,
            pids: serde_json::from_str(&s.pids).unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn edges(conn: &Connection, range: &TimeRange) -> Result<Vec<EdgeSummary>, StoreError> {
    let rows = service_rows(conn)?;
    let aggs = aggregate(conn, Rollup::Edge, range, |a, b| Some((a, b)))?;
    let name = |id: i64| rows.get(&id).map(|s| s.name.clone()).unwrap_or_default();
    let first_seen = |id: &i64| rows.get(id).map_or(0, |s| s.first_seen_ns);
    let mut out: Vec<EdgeSummary> = aggs
        .iter()
        .map(|((caller, callee), agg)| EdgeSummary {
            caller: name(*caller),
            callee: name(*callee),
            callee_kind: rows.get(callee).map(|s| s.kind.clone()).unwrap_or_default(),
            stats: agg.stats(range, first_seen(caller)),
        })
        .collect();
    out.sort_by(|a, b| (&a.caller, &a.callee).cmp(&(&b.caller, &b.callee)));
    Ok(out)
}

pub fn endpoints(
    conn: &Connection,
    range: &TimeRange,
    service: Option<&str>,
) -> Result<Vec<EndpointSummary>, StoreError> {
    let services = service_rows(conn)?;
    let wanted = match service {
        Some(name) => match services.iter().find(|(_, s)| s.name == name) {
            Some((id, _)) => Some(*id),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let aggs = aggregate(conn, Rollup::Endpoint, range, |s, e| {
        wanted.is_none_or(|w| w == s).then_some((s, e))
    })?;
    let mut names = conn.prepare_cached("SELECT name FROM endpoints WHERE id = ?1")?;
    let mut out = Vec::with_capacity(aggs.len());
    for ((s, e), agg) in &aggs {
        let endpoint: String = names
            .query_row([e], |r| r.get(0))
            .optional()?
            .unwrap_or_default();
        let row = services.get(s);
        out.push(EndpointSummary {
            service: row.map(|r| r.name.clone()).unwrap_or_default(),
            endpoint,
            stats: agg.stats(range, row.map_or(0, |r| r.first_seen_ns)),
        });
    }
    out.sort_by(|a, b| {
        b.stats
            .count
            .cmp(&a.stats.count)
            .then_with(|| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)))
    });
    Ok(out)
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

/// Requests a service or endpoint handled, newest first: the entries table is keyed by endpoint
/// then time, so each matching endpoint is read newest first in pages and the pages are merged.
/// Pages start small (a service's share of the limit) and grow, so a rare filter (errors) reads
/// about as many rows as one index over the whole service would.
fn matching_entries(
    conn: &Connection,
    q: &TraceQuery,
    (from, to): (i64, i64),
    min_ns: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<Vec<u8>>> {
    let service_id: Option<i64> = match &q.service {
        Some(name) => {
            let id = conn
                .prepare_cached("SELECT id FROM services WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?;
            match id {
                Some(id) => Some(id),
                None => return Ok(Vec::new()),
            }
        }
        None => None,
    };
    let endpoints: Vec<i64> = match &q.endpoint {
        Some(endpoint) => conn
            .prepare_cached(
                "SELECT id FROM endpoints WHERE name = ?1 AND (?2 IS NULL OR service_id = ?2)",
            )?
            .query_map(rusqlite::params![endpoint, service_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
        None => conn
            .prepare_cached("SELECT id FROM endpoints WHERE service_id = ?1")?
            .query_map([service_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
    };
    // Status literals (not parameters) keep one cached statement per filter shape.
    let mut sql = "SELECT start_ns, span_id, trace_id FROM entries
         WHERE endpoint_id = ?1 AND start_ns >= ?2 AND (start_ns, span_id) < (?3, ?4)"
        .to_string();
    match q.status {
        Some(StatusFilter::Error) => sql.push_str(&format!(" AND status = {STATUS_ERROR}")),
        Some(StatusFilter::Ok) => sql.push_str(&format!(" AND status != {STATUS_ERROR}")),
        None => {}
    }
    sql.push_str(" AND duration_ns >= ?5 ORDER BY start_ns DESC, span_id DESC LIMIT ?6");
    let mut stmt = conn.prepare_cached(&sql)?;
    let first_page = (limit / endpoints.len().max(1) + 2).min(limit);
    let mut cursors: Vec<Cursor> = endpoints
        .iter()
        .map(|&endpoint| Cursor {
            endpoint,
            rows: std::collections::VecDeque::new(),
            after: (to, i64::MIN),
            page: first_page,
            done: false,
        })
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(limit);
    while out.len() < limit {
        let mut best: Option<usize> = None;
        for i in 0..cursors.len() {
            if cursors[i].rows.is_empty() && !cursors[i].done {
                let c = &mut cursors[i];
                // `after` is exclusive; the first page starts just below `to`.
                let (start, span) = c.after;
                let rows = stmt.query_map(
                    rusqlite::params![
                        c.endpoint,
                        from,
                        start,
                        span,
                        min_ns.unwrap_or(i64::MIN),
                        c.page as i64
                    ],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                        ))
                    },
                )?;
                for row in rows {
                    c.rows.push_back(row?);
                }
                c.done = c.rows.len() < c.page;
                if let Some(last) = c.rows.back() {
                    c.after = (last.0, last.1);
                }
                c.page = (c.page * 2).min(4096);
            }
            let Some(front) = cursors[i].rows.front() else {
                continue;
            };
            if best.is_none_or(|b| cursors[b].rows.front().is_some_and(|f| f.0 < front.0)) {
                best = Some(i);
            }
        }
        let Some(b) = best else { break };
        if let Some((_, _, id)) = cursors[b].rows.pop_front() {
            if seen.insert(id.clone()) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// One endpoint's rows in a merged entry search.
struct Cursor {
    endpoint: i64,
    rows: std::collections::VecDeque<(i64, i64, Vec<u8>)>,
    /// (start, span id) of the last row read: the next page starts below it.
    after: (i64, i64),
    page: usize,
    done: bool,
}

/// A trace's summary merged from its parts.
struct Merged {
    start: i64,
    end: i64,
    error: bool,
    root_service: i64,
    root_rank: i64,
    root_name: String,
    count: i64,
    services: Vec<i64>,
}

fn merged_summary(conn: &Connection, id: &[u8]) -> rusqlite::Result<Option<Merged>> {
    let Ok(bytes) = <[u8; 16]>::try_from(id) else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT start_ns, end_ns, error, root_service_id, root_rank, root_name, span_count, services
         FROM parts WHERE trace_key = ?1 AND trace_id = ?2",
    )?;
    let mut rows = stmt.query(rusqlite::params![trace_key(u128::from_be_bytes(bytes)), id])?;
    let mut m: Option<Merged> = None;
    while let Some(r) = rows.next()? {
        let (start, end, error, rank): (i64, i64, bool, i64) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(4)?);
        let services = chunk::ids(r.get_ref(7)?.as_bytes().unwrap_or_default());
        let m = m.get_or_insert_with(|| Merged {
            start,
            end,
            error,
            root_service: 0,
            root_rank: -1,
            root_name: String::new(),
            count: 0,
            services: Vec::new(),
        });
        m.start = m.start.min(start);
        m.end = m.end.max(end);
        m.error |= error;
        m.count += r.get::<_, i64>(6)?;
        m.services.extend(services);
        if rank > m.root_rank {
            m.root_rank = rank;
            m.root_service = r.get(3)?;
            m.root_name = r.get(5)?;
        }
    }
    Ok(m)
}

pub fn traces(conn: &Connection, q: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
    let limit = match q.limit {
        0 => DEFAULT_TRACE_LIMIT,
        n => n.min(MAX_TRACE_LIMIT),
    };
    let services = service_names(conn)?;
    let mut out = Vec::with_capacity(limit);
    // Adds one trace; false once the list is full.
    let mut add = |id: Vec<u8>, whole_trace_filters: bool| -> rusqlite::Result<bool> {
        // A trace whose parts retention already removed is skipped.
        let Some(m) = merged_summary(conn, &id)? else {
            return Ok(true);
        };
        if whole_trace_filters && q.status == Some(StatusFilter::Ok) && m.error {
            return Ok(true);
        }
        let mut names: Vec<String> = m
            .services
            .iter()
            .filter_map(|s| services.get(s).cloned())
            .collect();
        names.sort();
        names.dedup();
        let trace_id = <[u8; 16]>::try_from(id.as_slice())
            .map(|b| encode::trace_id_hex(u128::from_be_bytes(b)))
            .unwrap_or_default();
        out.push(TraceSummary {
            trace_id,
            root_service: services.get(&m.root_service).cloned().unwrap_or_default(),
            root_name: m.root_name,
            start_ms: ms(m.start),
            duration_ms: ms(m.end - m.start),
            span_count: m.count as u64,
            error: m.error,
            services: names,
        });
        Ok(out.len() < limit)
    };
    let from = q.from_ms.unwrap_or(0).saturating_mul(1_000_000);
    let to = q
        .to_ms
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000);
    let min_ns = q
        .min_duration
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64);
    if !q.attributes.is_empty() {
        for id in search::matching_traces(conn, q, (from, to), min_ns, limit)? {
            if !add(id, true)? {
                break;
            }
        }
        return Ok(out);
    }
    if q.service.is_some() || q.endpoint.is_some() {
        for id in matching_entries(conn, q, (from, to), min_ns, limit)? {
            if !add(id, false)? {
                break;
            }
        }
        return Ok(out);
    }
    // Parts newest first; a trace's status and duration are those of its parts (the root's part
    // spans the trace), an error anywhere makes the trace an error.
    let mut args: Vec<Value> = vec![from.into(), to.into()];
    let mut sql = "SELECT trace_id FROM parts WHERE start_ns >= ?1 AND start_ns < ?2".to_string();
    match q.status {
        Some(StatusFilter::Error) => sql.push_str(" AND error = 1"),
        Some(StatusFilter::Ok) => sql.push_str(" AND error = 0"),
        None => {}
    }
    if let Some(min) = min_ns {
        args.push(min.into());
        sql.push_str(&format!(" AND end_ns - start_ns >= ?{}", args.len()));
    }
    sql.push_str(" ORDER BY start_ns DESC");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut seen = HashSet::new();
    // Rows come lazily: stop as soon as there are enough distinct traces.
    while let Some(r) = rows.next()? {
        let id: Vec<u8> = r.get(0)?;
        if seen.insert(id.clone()) && !add(id, true)? {
            break;
        }
    }
    Ok(out)
}

/// The attribute-name dictionary (small: at most `encode::MAX_KEYS` rows).
pub fn attribute_keys(conn: &Connection) -> rusqlite::Result<HashMap<u32, String>> {
    let mut stmt = conn.prepare_cached("SELECT id, key FROM attribute_keys")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// All spans of one trace, or `None` when the store has none: the chunks of its parts, each
/// checked to belong to it. A damaged chunk is skipped (logged), the rest still shown.
pub fn trace(conn: &Connection, trace_id: u128) -> Result<Option<TraceDetail>, StoreError> {
    let blobs: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT id, spans FROM parts WHERE trace_key = ?1 AND trace_id = ?2 ORDER BY id",
        )?
        .query_map(
            rusqlite::params![trace_key(trace_id), &trace_bytes(trace_id)[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    if blobs.is_empty() {
        return Ok(None);
    }
    let services = service_names(conn)?;
    let keys = attribute_keys(conn)?;
    let mut endpoint_names: HashMap<i64, Option<String>> = HashMap::new();
    let mut endpoint_name = conn.prepare_cached("SELECT name FROM endpoints WHERE id = ?1")?;
    let mut seen = HashSet::new();
    let mut spans = Vec::new();
    let mut raw = Vec::new();
    for (id, bytes) in blobs {
        let chunk = match chunk::decode(&bytes, &keys) {
            Ok(c) if c.trace_id == trace_id => c,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(part = id, trace = %encode::trace_id_hex(trace_id), error = %e,
                    "damaged span chunk in the store: its spans are not shown");
                continue;
            }
        };
        for s in chunk.spans {
            // A span delivered again in a later transaction is shown once.
            if !seen.insert(s.span_id) {
                continue;
            }
            let start = s.start_ns.min(i64::MAX as u64) as i64;
            let duration = s.duration_ns.min(i64::MAX as u64) as i64;
            raw.push((
                s.span_id,
                s.parent_span_id,
                start,
                start.saturating_add(duration),
            ));
            let endpoint = match s.endpoint_id {
                Some(e) => match endpoint_names.get(&e) {
                    Some(name) => name.clone(),
                    None => {
                        let name: Option<String> =
                            endpoint_name.query_row([e], |r| r.get(0)).optional()?;
                        endpoint_names.insert(e, name.clone());
                        name
                    }
                },
                None => None,
            };
            spans.push(StoredSpan {
                span_id: encode::span_id_hex(s.span_id),
                parent_span_id: s.parent_span_id.map(encode::span_id_hex),
                service: services.get(&s.service_id).cloned().unwrap_or_default(),
                pid: s.pid,
                name: s.name,
                kind: s.kind,
                status: s.status,
                status_message: s.status_message,
                endpoint,
                start_ms: ms(start),
                duration_ms: ms(duration),
                self_ms: 0.0,
                depth: 0,
                attributes: s.attributes,
                events: s.events,
            });
        }
    }
    if spans.is_empty() {
        return Ok(None);
    }
    let shape = super::tree::shape(&raw);
    for (span, (depth, self_ns)) in spans.iter_mut().zip(&shape) {
        span.depth = *depth;
        span.self_ms = *self_ns as f64 / 1e6;
    }
    let analysis = analyze(&spans);
    let culprit = culprit(&analysis);
    let start = raw.iter().map(|r| r.2).min().unwrap_or(0);
    let end = raw.iter().map(|r| r.3).max().unwrap_or(0);
    let mut names: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
    names.sort();
    names.dedup();
    spans.sort_by(|a, b| {
        a.start_ms
            .total_cmp(&b.start_ms)
            .then(a.depth.cmp(&b.depth))
    });
    Ok(Some(TraceDetail {
        trace_id: encode::trace_id_hex(trace_id),
        start_ms: ms(start),
        duration_ms: ms(end - start),
        services: names,
        spans,
        culprit,
        analysis,
    }))
}

/// The error's origin (see `analysis`), else the span with the most time of its own.
fn culprit(analysis: &Analysis) -> Option<Culprit> {
    if let Some(e) = &analysis.error {
        return Some(Culprit {
            span_id: e.span_id.clone(),
            reason: CulpritReason::Error,
        });
    }
    let top = analysis.time.as_ref()?.self_time.first()?;
    Some(Culprit {
        span_id: top.span_id.clone(),
        reason: CulpritReason::SelfTime,
    })
}
