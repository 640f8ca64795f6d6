//! The store's one writer thread: takes what the queue holds, writes it in one transaction (span
//! chunks, trace summaries, entries, rollups, services), commits, and between transactions runs
//! retention. A failed transaction (full disk, I/O error) is counted, logged at most every few
//! seconds, and its spans are dropped; the thread goes on with the next batch.
//!
//! Per span the writer only appends to in-memory buffers (the trace's chunk, rollups); rows are
//! appended per trace (one part) and per entry span, so the database work per span is a fraction
//! of one row.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::chunk::{self, ChunkBuf, Origin};
use super::edges::{Call, ClientSide, EdgeResolver, ServerSide};
use super::encode::{self, MAX_NAME_BYTES};
use super::queue::Queue;
use super::rollup::Rollups;
use super::{retention, StoreConfig};
use crate::pipeline::{EnrichedBatch, Resource};
use crate::span::{Span, SpanKind, StatusCode};

/// Most spans written in one transaction (bounds how long readers see a stale snapshot).
const MAX_SPANS_PER_TX: usize = 50_000;
/// A service with more endpoints than this counts the rest under one name (bounds the rollups
/// when a route template fails and every URL looks distinct).
pub const MAX_ENDPOINTS_PER_SERVICE: usize = 2_000;
pub const OVERFLOW_ENDPOINT: &str = "(other endpoints)";
/// Process ids remembered per service.
const MAX_PIDS: usize = 32;
const NS_PER_MINUTE: u64 = 60_000_000_000;
const INSERT_PART: &str = "INSERT INTO parts
    (trace_key, trace_id, start_ns, end_ns, error, root_service_id, root_rank, root_name,
     span_count, services, spans)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const INSERT_ENTRY: &str = "INSERT OR IGNORE INTO entries
    (endpoint_id, start_ns, span_id, status, duration_ns, trace_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// How a trace id is stored (`parts.trace_id`, `entries.trace_id`): 16 bytes, big-endian.
pub(crate) fn trace_bytes(id: u128) -> [u8; 16] {
    id.to_be_bytes()
}

/// The 64 bits of a trace id that `parts_by_trace` indexes (both halves, since some tracers put a
/// timestamp in the first).
pub(crate) fn trace_key(id: u128) -> i64 {
    ((id >> 64) as u64 ^ id as u64) as i64
}

struct ServiceEntry {
    id: i64,
    technology: String,
    pids: Vec<u32>,
    last_seen_ns: u64,
    dirty: bool,
}

/// One trace's share of a transaction. Recycled (buffers and all) across transactions.
#[derive(Default)]
struct TraceAcc {
    start: u64,
    end: u64,
    count: i64,
    error: bool,
    /// 2: a span without parent; 1: an entry span; 0: anything else. The best one names the trace.
    root_rank: i64,
    root_service: i64,
    root_name: String,
    services: Vec<i64>,
    chunk: ChunkBuf,
}

impl TraceAcc {
    fn add(&mut self, span: &Span, service: i64, error: bool) {
        let rank = root_rank(span);
        if self.count == 0 {
            self.start = span.start_unix_nano;
            self.end = span.end_unix_nano.max(span.start_unix_nano);
            self.error = false;
            self.root_rank = -1;
            self.services.clear();
            self.chunk.reset();
        }
        self.start = self.start.min(span.start_unix_nano);
        self.end = self.end.max(span.end_unix_nano.max(span.start_unix_nano));
        self.count += 1;
        self.error |= error;
        if !self.services.contains(&service) {
            self.services.push(service);
        }
        if rank > self.root_rank {
            self.root_rank = rank;
            self.root_service = service;
            self.root_name.clear();
            self.root_name
                .push_str(&encode::truncate(&span.name, MAX_NAME_BYTES));
        }
    }
}

fn root_rank(span: &Span) -> i64 {
    if span.parent_span_id.is_none() {
        2
    } else if encode::is_entry(span) {
        1
    } else {
        0
    }
}

#[derive(Default)]
struct Caches {
    services: HashMap<String, ServiceEntry>,
    endpoints: HashMap<i64, HashMap<String, i64>>,
    traces: HashMap<u128, TraceAcc>,
    /// Accumulators of past transactions, ready for reuse.
    spare: Vec<TraceAcc>,
    /// Spans of this transaction, so one delivered twice is stored once.
    seen: HashSet<(u128, u64)>,
    /// Loaded from the database on first use after a start or a failed transaction.
    keys: Option<encode::KeyDict>,
}

pub(crate) struct Writer {
    conn: Connection,
    queue: Arc<Queue>,
    config: StoreConfig,
    caches: Caches,
    endpoint_rollups: Rollups,
    edge_rollups: Rollups,
    edges: EdgeResolver,
    calls: Vec<Call>,
    /// When the newest commit mark was started, and the part rowid it is keyed by.
    last_mark: Option<(Instant, i64)>,
    last_error_log: Option<Instant>,
}

impl Writer {
    pub fn new(conn: Connection, queue: Arc<Queue>, config: StoreConfig) -> Self {
        Self {
            conn,
            queue,
            config,
            caches: Caches::default(),
            endpoint_rollups: Rollups::new("endpoint", "service_id", "endpoint_id"),
            edge_rollups: Rollups::new("edge", "caller_id", "callee_id"),
            edges: EdgeResolver::default(),
            calls: Vec::new(),
            last_mark: None,
            last_error_log: None,
        }
    }

    pub fn run(mut self) {
        let mut last_maintenance = Instant::now();
        while let Some(batches) = self
            .queue
            .take(self.config.commit_interval, MAX_SPANS_PER_TX)
        {
            if !batches.is_empty() {
                self.write(&batches);
                self.queue.finish(batches.len());
            }
            if last_maintenance.elapsed() >= self.config.maintenance_interval {
                last_maintenance = Instant::now();
                self.maintain();
            }
        }
        // Leave a small WAL behind for the next start.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }

    fn maintain(&mut self) {
        match retention::run(&self.conn, &self.config, now_ns()) {
            Ok(report) if report.deleted_spans > 0 => tracing::debug!(?report, "store retention"),
            Ok(_) => {}
            Err(e) => self.log_error("retention", &e),
        }
    }

    fn log_error(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.queue.counters.errors.fetch_add(1, Ordering::Relaxed);
        let quiet = self
            .last_error_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
        if !quiet {
            self.last_error_log = Some(Instant::now());
            tracing::warn!(error = %e, "store {what} failed (further failures for 10 s not logged)");
        }
    }

    fn write(&mut self, batches: &[Arc<EnrichedBatch>]) {
        let spans: usize = batches.iter().map(|b| b.spans.len()).sum();
        let now = now_ns();
        let result = self.conn.transaction().and_then(|tx| {
            write_all(
                &tx,
                batches,
                now,
                &mut self.caches,
                &mut self.endpoint_rollups,
                &mut self.edge_rollups,
                &mut self.edges,
                &mut self.calls,
                &mut self.last_mark,
            )?;
            tx.commit()
        });
        match result {
            Ok(()) => {
                self.queue
                    .counters
                    .delivered
                    .fetch_add(spans as u64, Ordering::Relaxed);
                let now_minute = (now / NS_PER_MINUTE) as i64;
                self.endpoint_rollups.committed(now_minute);
                self.edge_rollups.committed(now_minute);
                for s in self.caches.services.values_mut() {
                    s.dirty = false;
                }
            }
            Err(e) => {
                self.queue
                    .counters
                    .dropped
                    .fetch_add(spans as u64, Ordering::Relaxed);
                self.log_error("write", &e);
                // Memory may now disagree with the rolled-back database.
                self.caches = Caches::default();
                self.endpoint_rollups.forget();
                self.edge_rollups.forget();
            }
        }
        let caches = &mut self.caches;
        caches.spare.extend(caches.traces.drain().map(|(_, mut t)| {
            t.count = 0;
            t
        }));
        caches.seen.clear();
        self.edges.tick(Instant::now());
    }
}

#[allow(clippy::too_many_arguments)]
fn write_all(
    tx: &Transaction<'_>,
    batches: &[Arc<EnrichedBatch>],
    now: u64,
    caches: &mut Caches,
    endpoint_rollups: &mut Rollups,
    edge_rollups: &mut Rollups,
    edges: &mut EdgeResolver,
    calls: &mut Vec<Call>,
    last_mark: &mut Option<(Instant, i64)>,
) -> rusqlite::Result<()> {
    let key_buf = &mut String::new();
    if caches.keys.is_none() {
        caches.keys = Some(encode::KeyDict::load(super::query::attribute_keys(tx)?));
    }
    let mut insert_entry = tx.prepare_cached(INSERT_ENTRY)?;
    for batch in batches {
        let service = service_id(tx, caches, &batch.resource, now)?;
        for span in &batch.spans {
            if !caches.seen.insert((span.trace_id, span.span_id)) {
                continue;
            }
            let duration = span.end_unix_nano.saturating_sub(span.start_unix_nano);
            let error = span.status.code == StatusCode::Error;
            let endpoint = if encode::is_entry(span) {
                encode::endpoint_key(span, key_buf);
                let endpoint = endpoint_id(tx, caches, service, key_buf)?;
                let n = insert_entry.execute(params![
                    endpoint,
                    span.start_unix_nano.min(i64::MAX as u64) as i64,
                    span.span_id as i64,
                    encode::status_code(span.status.code),
                    duration.min(i64::MAX as u64) as i64,
                    &trace_bytes(span.trace_id)[..],
                ])?;
                if n == 0 {
                    // The same request again (a retried frame in a later transaction): counted.
                    continue;
                }
                Some(endpoint)
            } else {
                None
            };
            let acc = match caches.traces.entry(span.trace_id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(caches.spare.pop().unwrap_or_default())
                }
            };
            acc.add(span, service, error);
            if let Some(keys) = &mut caches.keys {
                let origin = Origin {
                    service_id: service,
                    pid: batch.resource.pid,
                    endpoint_id: endpoint,
                };
                acc.chunk.push(span, origin, keys);
            }
            let minute = (span.start_unix_nano / NS_PER_MINUTE) as i64;
            if let Some(endpoint) = endpoint {
                endpoint_rollups.record(tx, (minute, service, endpoint), duration, error)?;
            }
            match span.kind {
                SpanKind::Client | SpanKind::Producer => {
                    edges.client(
                        span.trace_id,
                        span.span_id,
                        ClientSide {
                            service_id: service,
                        },
                        calls,
                    );
                    if let Some(system) = encode::db_system(span) {
                        let db = virtual_service_id(tx, caches, system, now)?;
                        edge_rollups.record(tx, (minute, service, db), duration, error)?;
                    }
                }
                SpanKind::Server | SpanKind::Consumer => {
                    if let Some(parent) = span.parent_span_id {
                        let side = ServerSide {
                            service_id: service,
                            minute,
                            error,
                            duration_ns: duration,
                        };
                        calls.extend(edges.server(span.trace_id, parent, side));
                    }
                }
                SpanKind::Internal => {}
            }
            for call in calls.drain(..) {
                let c = call.callee;
                edge_rollups.record(
                    tx,
                    (c.minute, call.caller, c.service_id),
                    c.duration_ns,
                    c.error,
                )?;
            }
        }
    }
    drop(insert_entry);
    if let Some(keys) = &mut caches.keys {
        let mut stmt = tx.prepare_cached("INSERT INTO attribute_keys (id, key) VALUES (?1, ?2)")?;
        for (id, key) in keys.take_new() {
            stmt.execute(params![id, key])?;
        }
    }
    let last_part_rowid = write_traces(tx, caches)?;
    endpoint_rollups.write(tx)?;
    edge_rollups.write(tx)?;
    write_services(tx, caches)?;
    // Age retention finds old parts through these marks. Every commit is covered (or spans
    // written just before an idle spell would outlive their age), but a mark younger than a
    // second is moved forward rather than joined by another, so there is about one a second.
    if let Some(rowid) = last_part_rowid {
        // The mark may be gone (retention, a rolled-back transaction): then a new one is made.
        let moved = match *last_mark {
            Some((started, key)) if started.elapsed() < Duration::from_secs(1) => tx.execute(
                "UPDATE commits SET last_part_rowid = ?1, at_ns = ?2 WHERE last_part_rowid = ?3",
                params![rowid, now as i64, key],
            )? == 1,
            _ => false,
        };
        if moved {
            *last_mark = last_mark.map(|(started, _)| (started, rowid));
        } else {
            tx.execute(
                "INSERT OR REPLACE INTO commits (last_part_rowid, at_ns) VALUES (?1, ?2)",
                params![rowid, now as i64],
            )?;
            *last_mark = Some((Instant::now(), rowid));
        }
    }
    Ok(())
}

/// One part row per trace. Returns the last rowid written.
fn write_traces(tx: &Transaction<'_>, caches: &Caches) -> rusqlite::Result<Option<i64>> {
    let mut insert = tx.prepare_cached(INSERT_PART)?;
    let mut services = Vec::with_capacity(16);
    let mut last = None;
    for (id, t) in caches.traces.iter().filter(|(_, t)| !t.chunk.is_empty()) {
        services.clear();
        for s in &t.services {
            chunk::put_id(&mut services, *s);
        }
        insert.execute(params![
            trace_key(*id),
            &trace_bytes(*id)[..],
            t.start.min(i64::MAX as u64) as i64,
            t.end.min(i64::MAX as u64) as i64,
            t.error,
            t.root_service,
            t.root_rank,
            t.root_name,
            t.count,
            &services[..],
            t.chunk.bytes(),
        ])?;
        last = Some(tx.last_insert_rowid());
    }
    Ok(last)
}

fn write_services(tx: &Transaction<'_>, caches: &Caches) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "UPDATE services SET last_seen_ns = max(last_seen_ns, ?2), technology = ?3, pids = ?4
         WHERE id = ?1",
    )?;
    for s in caches.services.values().filter(|s| s.dirty) {
        let pids = serde_json::to_string(&s.pids).unwrap_or_else(|_| "[]".into());
        stmt.execute(params![s.id, s.last_seen_ns as i64, s.technology, pids])?;
    }
    Ok(())
}

fn lookup_or_create_service(
    tx: &Transaction<'_>,
    name: &str,
    kind: &str,
    now: u64,
) -> rusqlite::Result<(i64, String, Vec<u32>)> {
    let found = tx
        .prepare_cached("SELECT id, technology, pids FROM services WHERE name = ?1")?
        .query_row([name], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    if let Some((id, technology, pids)) = found {
        return Ok((
            id,
            technology,
            serde_json::from_str(&pids).unwrap_or_default(),
        ));
    }
    tx.prepare_cached(
        "INSERT INTO services (name, kind, first_seen_ns, last_seen_ns) VALUES (?1, ?2, ?3, ?3)",
    )?
    .execute(params![name, kind, now as i64])?;
    Ok((tx.last_insert_rowid(), String::new(), Vec::new()))
}

fn service_id(
    tx: &Transaction<'_>,
    caches: &mut Caches,
    resource: &Resource,
    now: u64,
) -> rusqlite::Result<i64> {
    let name = if resource.service_name.is_empty() {
        "unknown_service"
    } else {
        resource.service_name.as_str()
    };
    if !caches.services.contains_key(name) {
        let (id, technology, pids) = lookup_or_create_service(tx, name, "service", now)?;
        caches.services.insert(
            name.to_string(),
            ServiceEntry {
                id,
                technology,
                pids,
                last_seen_ns: now,
                dirty: true,
            },
        );
    }
    let Some(entry) = caches.services.get_mut(name) else {
        unreachable!("inserted above")
    };
    if !entry.pids.contains(&resource.pid) {
        if entry.pids.len() >= MAX_PIDS {
            entry.pids.remove(0);
        }
        entry.pids.push(resource.pid);
        entry.dirty = true;
    }
    if entry.technology != resource.technology {
        entry.technology.clone_from(&resource.technology);
        entry.dirty = true;
    }
    if now.saturating_sub(entry.last_seen_ns) >= 1_000_000_000 {
        entry.last_seen_ns = now;
        entry.dirty = true;
    }
    Ok(entry.id)
}

/// A node for something services call that is not traced itself (a database system).
fn virtual_service_id(
    tx: &Transaction<'_>,
    caches: &mut Caches,
    system: &str,
    now: u64,
) -> rusqlite::Result<i64> {
    if let Some(s) = caches.services.get(system) {
        return Ok(s.id);
    }
    let name = encode::truncate(system, MAX_NAME_BYTES).into_owned();
    let (id, technology, pids) = lookup_or_create_service(tx, &name, "database", now)?;
    caches.services.insert(
        name,
        ServiceEntry {
            id,
            technology,
            pids,
            last_seen_ns: now,
            dirty: false,
        },
    );
    Ok(id)
}

fn endpoint_id(
    tx: &Transaction<'_>,
    caches: &mut Caches,
    service: i64,
    key: &str,
) -> rusqlite::Result<i64> {
    let known = match caches.endpoints.entry(service) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            // All of them, so the per-service cap holds across restarts.
            let mut stmt =
                tx.prepare_cached("SELECT name, id FROM endpoints WHERE service_id = ?1")?;
            let rows = stmt.query_map([service], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            v.insert(rows.collect::<Result<_, _>>()?)
        }
    };
    if let Some(id) = known.get(key) {
        return Ok(*id);
    }
    let key = if known.len() >= MAX_ENDPOINTS_PER_SERVICE {
        OVERFLOW_ENDPOINT
    } else {
        key
    };
    if let Some(id) = known.get(key) {
        return Ok(*id);
    }
    tx.prepare_cached("INSERT INTO endpoints (service_id, name) VALUES (?1, ?2)")?
        .execute(params![service, key])?;
    let id = tx.last_insert_rowid();
    known.insert(key.to_string(), id);
    Ok(id)
}
