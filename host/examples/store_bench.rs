//! Store benchmark (bench/50-store.sh): insert throughput through the sink on the one writer
//! thread, database size per million spans, query latency over a synthetic day, and retention's
//! delete rate. Prints numbers; asserts nothing.
//!
//! The day: 20 services × 10 endpoints. A trace is 5 spans: a server span in service A with a DB
//! client span and an HTTP client span calling service B, whose server span has its own DB span.
//! Span start times are spread evenly over the 24 h before now; 1 % of traces fail.
//! Usage: store_bench [SPANS (default 6000000)] [DIR (default a temp dir)]
#![allow(clippy::too_many_arguments)] // span builders take every field they vary
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zerostep::pipeline::{EnrichedBatch, Resource, Sink};
use zerostep::span::{Attribute, Event, Span, SpanKind, Status, StatusCode};
use zerostep::store::{StatusFilter, Store, StoreConfig, TimeRange, TraceQuery};

const SERVICES: u64 = 20;
const ENDPOINTS: u64 = 10;
const SPANS_PER_TRACE: u64 = 5;
const TRACES_PER_BATCH: u64 = 40;

fn resource(svc: u64) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: format!("service-{svc:02}"),
        host_name: "bench-host".into(),
        pid: 1000 + svc as u32,
        executable: "/usr/bin/python3.11".into(),
        command_line: format!("gunicorn -w 4 app{svc}:app"),
        runtime_version: "3.11.7".into(),
        technology: "gunicorn".into(),
        role: "worker".into(),
        tracer_version: "0.1.0".into(),
    })
}

struct Gen {
    start_ns: u64,
    step_ns: u64,
    rng: u64,
}

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast and deterministic, enough for synthetic ids and durations.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn server(
        &mut self,
        trace: u128,
        id: u64,
        parent: Option<u64>,
        svc: u64,
        ep: u64,
        start: u64,
        dur: u64,
        error: bool,
    ) -> Span {
        let route = format!("/api/v1/resource{ep}/{{id}}");
        Span {
            trace_id: trace,
            span_id: id,
            parent_span_id: parent,
            name: format!("GET {route}"),
            kind: SpanKind::Server,
            start_unix_nano: start,
            end_unix_nano: start + dur,
            status: status(error),
            attributes: vec![
                Attribute::str("http.request.method", "GET"),
                Attribute::str("http.route", route),
                Attribute::str(
                    "url.path",
                    format!("/api/v1/resource{ep}/{}", self.next() % 100_000),
                ),
                Attribute::str("url.scheme", "http"),
                Attribute::str("server.address", format!("service-{svc:02}.internal")),
                Attribute::int("server.port", 8000),
                Attribute::str("client.address", "10.0.3.17"),
                Attribute::str("user_agent.original", "python-requests/2.31.0"),
                Attribute::int("http.response.status_code", if error { 500 } else { 200 }),
                Attribute::str("network.protocol.version", "1.1"),
            ],
            events: if error {
                vec![Event {
                    name: "exception".into(),
                    time_unix_nano: start + dur / 2,
                    attributes: vec![
                        Attribute::str("exception.type", "builtins.ValueError"),
                        Attribute::str(
                            "exception.message",
                            "invalid literal for int() with base 10",
                        ),
                    ],
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn db(&mut self, trace: u128, id: u64, parent: u64, start: u64, dur: u64) -> Span {
        let table = self.next() % 30;
        Span {
            trace_id: trace,
            span_id: id,
            parent_span_id: Some(parent),
            name: format!("SELECT table{table}"),
            kind: SpanKind::Client,
            start_unix_nano: start,
            end_unix_nano: start + dur,
            status: status(false),
            attributes: vec![
                Attribute::str("db.system", "postgresql"),
                Attribute::str("db.namespace", "app"),
                Attribute::str("db.operation.name", "SELECT"),
                Attribute::str("db.collection.name", format!("table{table}")),
                Attribute::str(
                    "db.query.text",
                    format!("SELECT id, name, created_at, owner_id FROM table{table} WHERE id = ? AND deleted_at IS NULL LIMIT ?"),
                ),
                Attribute::str("server.address", "db.internal"),
                Attribute::int("server.port", 5432),
                Attribute::str("network.peer.address", "10.0.9.2"),
                Attribute::int("db.response.returned_rows", 1),
                Attribute::str("db.client.library", "psycopg2"),
            ],
            events: Vec::new(),
        }
    }

    fn http_client(
        &mut self,
        trace: u128,
        id: u64,
        parent: u64,
        callee: u64,
        ep: u64,
        start: u64,
        dur: u64,
        error: bool,
    ) -> Span {
        Span {
            trace_id: trace,
            span_id: id,
            parent_span_id: Some(parent),
            name: "GET".into(),
            kind: SpanKind::Client,
            start_unix_nano: start,
            end_unix_nano: start + dur,
            status: status(error),
            attributes: vec![
                Attribute::str("http.request.method", "GET"),
                Attribute::str(
                    "url.full",
                    format!(
                        "http://service-{callee:02}.internal:8000/api/v1/resource{ep}/{}",
                        self.next() % 100_000
                    ),
                ),
                Attribute::str("server.address", format!("service-{callee:02}.internal")),
                Attribute::int("server.port", 8000),
                Attribute::int("http.response.status_code", if error { 500 } else { 200 }),
                Attribute::str("network.protocol.version", "1.1"),
                Attribute::str("network.peer.address", "10.0.3.40"),
                Attribute::str("http.request.header.accept", "application/json"),
                Attribute::str("http.request.header.user-agent", "python-requests/2.31.0"),
                Attribute::str("http.request.header.traceparent", "00-…-01"),
            ],
            events: Vec::new(),
        }
    }

    /// One trace's spans, as (caller side, callee side).
    fn trace(&mut self, n: u64) -> (u64, Vec<Span>, u64, Vec<Span>) {
        let trace = (u128::from(self.next()) << 64) | u128::from(n + 1);
        let start = self.start_ns + n * self.step_ns;
        let a = n % SERVICES;
        let b = (a + 1 + self.next() % (SERVICES - 1)) % SERVICES;
        let (ep_a, ep_b) = (self.next() % ENDPOINTS, self.next() % ENDPOINTS);
        let error = self.next().is_multiple_of(100);
        let ms = 1_000_000;
        // Log-uniform-ish latencies: 2–200 ms.
        let total = 2 * ms + (self.next() % 1000).pow(2) * 200;
        let ids: Vec<u64> = (0..SPANS_PER_TRACE).map(|_| self.next()).collect();
        let callee_dur = total / 2;
        let caller = vec![
            self.server(trace, ids[0], None, a, ep_a, start, total, error),
            self.db(trace, ids[1], ids[0], start + ms / 2, ms),
            self.http_client(
                trace,
                ids[2],
                ids[0],
                b,
                ep_b,
                start + 2 * ms,
                callee_dur + ms / 2,
                error,
            ),
        ];
        let callee = vec![
            self.server(
                trace,
                ids[3],
                Some(ids[2]),
                b,
                ep_b,
                start + 2 * ms + ms / 4,
                callee_dur,
                error,
            ),
            self.db(trace, ids[4], ids[3], start + 3 * ms, ms),
        ];
        (a, caller, b, callee)
    }
}

fn status(error: bool) -> Status {
    Status {
        code: if error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        message: if error {
            "ValueError".into()
        } else {
            String::new()
        },
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Feeds `traces` traces through the sink from a producer thread; returns (spans, seconds until
/// all were committed).
fn ingest(store: &Store, mut gen: Gen, traces: u64) -> (u64, f64) {
    let sink = store.sink();
    let t = Instant::now();
    // The producer runs ahead on its own thread and keeps the queue fed but not overflowing.
    let producer = std::thread::spawn(move || {
        let mut n = 0;
        let mut produced = 0u64;
        while n < traces {
            let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES as usize];
            let end = (n + TRACES_PER_BATCH).min(traces);
            let mut callers = Vec::new();
            while n < end {
                let (a, caller, b, callee) = gen.trace(n);
                by_service[b as usize].extend(callee);
                callers.push((a, caller));
                n += 1;
            }
            for (a, c) in callers {
                by_service[a as usize].extend(c);
            }
            // Callee batches first: the order real processes deliver them in.
            for (svc, spans) in by_service.into_iter().enumerate() {
                if !spans.is_empty() {
                    produced += spans.len() as u64;
                    sink.submit(Arc::new(EnrichedBatch {
                        resource: resource(svc as u64),
                        spans,
                    }));
                }
            }
            while sink.stats().queued > 150_000 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        produced
    });
    let produced = producer.join().unwrap_or(0);
    store.flush(Duration::from_secs(3600));
    let secs = t.elapsed().as_secs_f64();
    let cpu = writer_cpu_secs();
    println!(
        "  writer thread CPU: {cpu:.1} s = {:.0} spans per CPU-second ({:.2} µs per span)",
        produced as f64 / cpu,
        cpu * 1e6 / produced.max(1) as f64
    );
    (produced, secs)
}

/// CPU seconds used so far by the store's writer thread (this machine is shared: wall time
/// alone would mostly measure the neighbours).
fn writer_cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let tick = 100.0; // USER_HZ
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            if comm.trim() != "zerostep-store" {
                return None;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let after = stat.rsplit(") ").next()?;
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / tick)
        })
        .sum()
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (
        times[times.len() / 2],
        times[times.len() - 1],
        last.unwrap_or_else(|| unreachable!()),
    )
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spans: u64 = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(6_000_000);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let traces = spans / SPANS_PER_TRACE;
    let day_ns = 86_400_000_000_000u64;
    let now = now_ns();
    let gen = Gen {
        start_ns: now - day_ns,
        step_ns: day_ns / traces.max(1),
        rng: 0x9E37_79B9_7F4A_7C15,
    };

    // Retention off for the build: the day must stay whole.
    let config = StoreConfig {
        retention_age: Duration::from_secs(30 * 86_400),
        retention_bytes: u64::MAX / 2,
        maintenance_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    println!("store bench: day of {spans} spans ({traces} traces of {SPANS_PER_TRACE}, ~10 attributes each), {SERVICES} services × {ENDPOINTS} endpoints; db in {}", dir.display());
    println!(
        "  the day = {:.0} spans/s sustained for 24 h ({:.1} requests/s per service)",
        spans as f64 / 86_400.0,
        traces as f64 / 86_400.0 / SERVICES as f64
    );
    // Live ingest: spans as a busy host sends them, start times dense around now (so the rollups
    // of the current minutes stay in memory), into a fresh store.
    let live_spans: u64 = std::env::var("BENCH_STORE_LIVE_SPANS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    {
        let live_dir = tempfile::tempdir()?;
        let store = Store::open(live_dir.path(), config.clone())?;
        let live_traces = live_spans / SPANS_PER_TRACE;
        // 100,000 spans/s of span time.
        let gen = Gen {
            start_ns: now - 10_000_000_000,
            step_ns: 50_000,
            rng: 1,
        };
        println!("\nlive ingest through the sink (one writer thread, fresh store):");
        let (produced, secs) = ingest(&store, gen, live_traces);
        let stats = store.sink().stats();
        println!(
            "  {produced} spans in {secs:.1} s = {:.0} spans/s (dropped {}, errors {})",
            stats.delivered as f64 / secs,
            stats.dropped,
            stats.errors
        );
        let (used, _) = store.size()?;
        println!(
            "  {:.0} bytes per span stored",
            used as f64 / produced as f64
        );
    }

    let store = Store::open(&dir, config.clone())?;
    println!("\nbuilding the day (span times spread over 24 h, so every transaction touches many minutes):");
    let (produced, secs) = ingest(&store, gen, traces);
    let stats = store.sink().stats();
    println!(
        "  {} spans in {secs:.1} s = {:.0} spans/s (dropped {}, errors {})",
        produced,
        stats.delivered as f64 / secs,
        stats.dropped,
        stats.errors
    );
    let (used, file) = store.size()?;
    let wal = std::fs::metadata(dir.join("zerostep.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "  db: {:.1} MB used, {:.1} MB file (+ {:.1} MB WAL) = {:.1} MB per million spans",
        used as f64 / 1e6,
        file as f64 / 1e6,
        wal as f64 / 1e6,
        used as f64 / 1e6 / (spans as f64 / 1e6)
    );

    println!("\nqueries (median / max of 20 runs, ms):");
    let now_ms = (now / 1_000_000) as i64;
    let day = TimeRange {
        from_ms: now_ms - 86_400_000,
        to_ms: now_ms,
    };
    let hour = TimeRange {
        from_ms: now_ms - 3_600_000,
        to_ms: now_ms,
    };
    let report = |name: &str, (median, max, n): (f64, f64, usize)| {
        println!("  {name:<58} {median:>8.2} {max:>8.2}   ({n} rows)")
    };
    for (label, range) in [("day", day), ("last hour", hour)] {
        report(&format!("services ({label})"), {
            let (a, b, r) = time(20, || store.services(range));
            (a, b, r?.len())
        });
        report(&format!("edges ({label})"), {
            let (a, b, r) = time(20, || store.edges(range));
            (a, b, r?.len())
        });
        report(&format!("endpoints, all services ({label})"), {
            let (a, b, r) = time(20, || store.endpoints(range, None));
            (a, b, r?.len())
        });
        report(&format!("endpoints of one service ({label})"), {
            let (a, b, r) = time(20, || store.endpoints(range, Some("service-03")));
            (a, b, r?.len())
        });
        report(&format!("series, one endpoint ({label})"), {
            let (a, b, r) = time(20, || {
                store.series(
                    range,
                    Some("service-03"),
                    Some("GET /api/v1/resource3/{id}"),
                )
            });
            (a, b, r?.points.len())
        });
        report(&format!("series, all services ({label})"), {
            let (a, b, r) = time(20, || store.series(range, None, None));
            (a, b, r?.points.len())
        });
    }
    let base = TraceQuery {
        from_ms: Some(day.from_ms),
        to_ms: Some(day.to_ms),
        limit: 50,
        ..Default::default()
    };
    let queries: Vec<(&str, TraceQuery)> = vec![
        ("traces: newest 50 (day)", base.clone()),
        (
            "traces: errors (day)",
            TraceQuery {
                status: Some(StatusFilter::Error),
                ..base.clone()
            },
        ),
        (
            "traces: ≥ 150 ms (day)",
            TraceQuery {
                min_duration: Some(Duration::from_millis(150)),
                ..base.clone()
            },
        ),
        (
            "traces: service (day)",
            TraceQuery {
                service: Some("service-07".into()),
                ..base.clone()
            },
        ),
        (
            "traces: service + errors (day)",
            TraceQuery {
                service: Some("service-07".into()),
                status: Some(StatusFilter::Error),
                ..base.clone()
            },
        ),
        (
            "traces: service + endpoint + ≥ 150 ms (day)",
            TraceQuery {
                service: Some("service-07".into()),
                endpoint: Some("GET /api/v1/resource3/{id}".into()),
                min_duration: Some(Duration::from_millis(150)),
                ..base.clone()
            },
        ),
        (
            "traces: endpoint + errors, first hour of the day",
            TraceQuery {
                service: Some("service-07".into()),
                endpoint: Some("GET /api/v1/resource3/{id}".into()),
                status: Some(StatusFilter::Error),
                to_ms: Some(day.from_ms + 3_600_000),
                ..base.clone()
            },
        ),
    ];
    let attr = |conds: &[&str]| -> Vec<zerostep::store::AttrFilter> {
        conds.iter().filter_map(|c| c.parse().ok()).collect()
    };
    let queries: Vec<(&str, TraceQuery)> = queries
        .into_iter()
        .chain([
            (
                "traces: attr status_code=500 (day)",
                TraceQuery {
                    attributes: attr(&["http.response.status_code=500"]),
                    ..base.clone()
                },
            ),
            (
                "traces: attr url.path prefix (day)",
                TraceQuery {
                    attributes: attr(&["url.path^=/api/v1/resource3/12"]),
                    ..base.clone()
                },
            ),
            (
                "traces: attr rare value, scan budget (day)",
                TraceQuery {
                    attributes: attr(&["url.path=/nowhere"]),
                    ..base.clone()
                },
            ),
        ])
        .collect();
    let mut some_trace = None;
    for (name, q) in &queries {
        let (a, b, r) = time(20, || store.traces(q));
        let r = r?;
        some_trace = some_trace.or_else(|| r.first().map(|t| t.trace_id.clone()));
        report(name, (a, b, r.len()));
    }
    if let Some(id) = some_trace {
        report("trace by id (waterfall)", {
            let (a, b, r) = time(20, || store.trace(&id));
            (a, b, r?.map_or(0, |t| t.spans.len()))
        });
    }

    // Retention: cut the data to half its size and time the deletes.
    let half = StoreConfig {
        retention_bytes: used / 2,
        ..config
    };
    let t = Instant::now();
    let mut deleted = 0;
    let mut passes = 0;
    loop {
        let r = store.run_retention(&half)?;
        deleted += r.deleted_spans;
        passes += 1;
        if r.used_bytes <= half.retention_bytes || r.deleted_spans == 0 || passes > 100 {
            let secs = t.elapsed().as_secs_f64();
            println!("\nretention by size to {:.0} MB: deleted {deleted} spans in {secs:.1} s ({:.0} spans/s, {passes} passes); now {:.1} MB used, {:.1} MB file", half.retention_bytes as f64 / 1e6, deleted as f64 / secs, r.used_bytes as f64 / 1e6, r.file_bytes as f64 / 1e6);
            break;
        }
    }
    store.close();
    Ok(())
}
