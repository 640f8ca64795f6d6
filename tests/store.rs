//! The embedded store through its public API and its HTTP routes (real server on 127.0.0.1).
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zerostep::pipeline::{EnrichedBatch, Resource, Sink};
use zerostep::span::{Attribute, Event, Span, SpanKind, Status, StatusCode};
use zerostep::store::{
    CulpritReason, StatusFilter, Store, StoreConfig, StoreError, TimeRange, TraceQuery,
};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn resource(service: &str, pid: u32) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.into(),
        host_name: "h".into(),
        pid,
        executable: "/usr/bin/python3".into(),
        command_line: "gunicorn app:app".into(),
        runtime_version: "3.11.7".into(),
        technology: "gunicorn".into(),
        role: "worker".into(),
        tracer_version: "0.1.0".into(),
    })
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: u128,
    id: u64,
    parent: Option<u64>,
    kind: SpanKind,
    name: &str,
    start: u64,
    dur_ms: u64,
    error: bool,
) -> Span {
    let mut attributes = Vec::new();
    if kind == SpanKind::Server {
        attributes.push(Attribute::str("http.request.method", "GET"));
        attributes.push(Attribute::str("http.route", name));
        attributes.push(Attribute::int(
            "http.response.status_code",
            if error { 500 } else { 200 },
        ));
    }
    Span {
        trace_id: trace,
        span_id: id,
        parent_span_id: parent,
        name: name.into(),
        kind,
        start_unix_nano: start,
        end_unix_nano: start + dur_ms * 1_000_000,
        status: Status {
            code: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            message: String::new(),
        },
        attributes,
        events: Vec::new(),
    }
}

fn submit(store: &Store, service: &str, spans: Vec<Span>) {
    store.sink().submit(Arc::new(EnrichedBatch {
        resource: resource(service, 100),
        spans,
    }));
}

fn all_time() -> TimeRange {
    let now = (now_ns() / 1_000_000) as i64;
    TimeRange {
        from_ms: now - 3_600_000,
        to_ms: now + 60_000,
    }
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::default()).unwrap()
}

#[test]
fn roundtrip_edges_out_of_order_and_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t0 = now_ns() - 10_000_000_000;
    let trace = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdefu128;
    // frontend: server 1 → client 2 → backend: server 3 → client 4 (db, fails).
    // The backend's batch arrives first, as it does in practice.
    let mut db = span(
        trace,
        4,
        Some(3),
        SpanKind::Client,
        "SELECT users",
        t0 + 3_000_000,
        20,
        true,
    );
    db.attributes
        .push(Attribute::str("db.system", "postgresql"));
    db.events.push(Event {
        name: "exception".into(),
        time_unix_nano: t0 + 4_000_000,
        attributes: vec![Attribute::str(
            "exception.type",
            "psycopg2.OperationalError",
        )],
    });
    submit(
        &store,
        "backend",
        vec![
            span(
                trace,
                3,
                Some(2),
                SpanKind::Server,
                "/users/{id}",
                t0 + 2_000_000,
                30,
                true,
            ),
            db,
        ],
    );
    assert!(store.flush(Duration::from_secs(5)));
    submit(
        &store,
        "frontend",
        vec![
            span(trace, 1, None, SpanKind::Server, "/", t0, 50, true),
            span(
                trace,
                2,
                Some(1),
                SpanKind::Client,
                "GET",
                t0 + 1_000_000,
                40,
                true,
            ),
        ],
    );
    assert!(store.flush(Duration::from_secs(5)));

    let edges = store.edges(all_time()).unwrap();
    let pairs: Vec<(&str, &str, u64)> = edges
        .iter()
        .map(|e| (e.caller.as_str(), e.callee.as_str(), e.stats.count))
        .collect();
    assert_eq!(
        pairs,
        vec![("backend", "postgresql", 1), ("frontend", "backend", 1)]
    );

    let services = store.services(all_time()).unwrap();
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["backend", "frontend", "postgresql"]);
    assert_eq!(services[0].stats.count, 1);
    assert_eq!(services[0].pids, vec![100]);
    assert_eq!(services[2].kind, "database");

    let list = store.traces(&TraceQuery::default()).unwrap();
    assert_eq!(list.len(), 1);
    let t = &list[0];
    assert_eq!(t.trace_id, format!("{trace:032x}"));
    assert_eq!(
        (t.root_service.as_str(), t.root_name.as_str()),
        ("frontend", "/")
    );
    assert_eq!((t.span_count, t.error), (4, true));
    assert_eq!(t.services, vec!["backend", "frontend"]);
    assert!((t.duration_ms - 50.0).abs() < 0.01);

    let detail = store.trace(&t.trace_id).unwrap().unwrap();
    assert_eq!(detail.spans.len(), 4);
    let culprit = detail.culprit.unwrap();
    assert_eq!(culprit.span_id, format!("{:016x}", 4));
    assert_eq!(culprit.reason, CulpritReason::Error);
    let db_span = detail
        .spans
        .iter()
        .find(|s| s.span_id == culprit.span_id)
        .unwrap();
    assert_eq!(db_span.depth, 3);
    assert_eq!(db_span.events[0].attributes[0].key, "exception.type");

    assert!(store.trace(&format!("{:032x}", 7)).unwrap().is_none());
    assert!(matches!(store.trace("xyz"), Err(StoreError::BadTraceId(_))));
}

#[test]
fn percentiles_filters_and_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t0 = now_ns() - 30_000_000_000;
    let mut spans = Vec::new();
    for i in 0..1000u64 {
        let route = if i % 2 == 0 { "/a" } else { "/b" };
        // Every tenth request of /b fails; durations 1..=1000 ms.
        let error = route == "/b" && i % 10 == 1;
        spans.push(span(
            u128::from(i) + 1,
            i + 1,
            None,
            SpanKind::Server,
            route,
            t0 + i * 1000,
            i + 1,
            error,
        ));
    }
    submit(&store, "svc", spans);
    assert!(store.flush(Duration::from_secs(10)));

    let eps = store.endpoints(all_time(), Some("svc")).unwrap();
    assert_eq!(eps.len(), 2);
    let b = eps.iter().find(|e| e.endpoint == "GET /b").unwrap();
    assert_eq!((b.stats.count, b.stats.errors), (500, 100));
    // The rate counts from when the service was first seen (30 s before the range's end, which is
    // a minute from now), not over the whole hour-long range, which would read about 8 a minute.
    assert!(
        (150.0..=500.0).contains(&b.stats.rate_per_min),
        "{}",
        b.stats.rate_per_min
    );
    let svc = &store.services(all_time()).unwrap()[0];
    for (got, want) in [
        (svc.stats.p50_ms, 500.0),
        (svc.stats.p95_ms, 950.0),
        (svc.stats.p99_ms, 990.0),
    ] {
        assert!((got - want).abs() / want < 0.1, "{got} vs {want}");
    }
    assert!(store
        .endpoints(all_time(), Some("nope"))
        .unwrap()
        .is_empty());

    let q = |f: &dyn Fn(&mut TraceQuery)| {
        let mut q = TraceQuery {
            limit: 1000,
            ..Default::default()
        };
        f(&mut q);
        store.traces(&q).unwrap()
    };
    assert_eq!(q(&|_| {}).len(), 1000);
    assert_eq!(q(&|q| q.status = Some(StatusFilter::Error)).len(), 100);
    assert_eq!(q(&|q| q.status = Some(StatusFilter::Ok)).len(), 900);
    assert_eq!(
        q(&|q| q.min_duration = Some(Duration::from_millis(901))).len(),
        100
    );
    assert_eq!(q(&|q| q.service = Some("svc".into())).len(), 1000);
    assert_eq!(q(&|q| q.service = Some("other".into())).len(), 0);
    let errs_b = q(&|q| {
        q.service = Some("svc".into());
        q.endpoint = Some("GET /b".into());
        q.status = Some(StatusFilter::Error);
        q.min_duration = Some(Duration::from_millis(500));
    });
    assert_eq!(errs_b.len(), 50);
    // Newest first, limit respected.
    let few = q(&|q| q.limit = 3);
    assert_eq!(few.len(), 3);
    assert!(few[0].start_ms > few[1].start_ms);
}

#[test]
fn bad_input_duplicates_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns() - 5_000_000_000;
    {
        let store = open(dir.path());
        let mut huge = span(9, 1, None, SpanKind::Server, "/h", t0, 1, false);
        huge.name = "n".repeat(100_000);
        huge.attributes = (0..500)
            .map(|i| Attribute::str(format!("k{i}"), "v".repeat(50_000)))
            .collect();
        let mut backwards = span(9, 2, Some(1), SpanKind::Internal, "b", t0, 0, false);
        backwards.end_unix_nano = t0 - 1_000_000; // ends before it starts
        let dup = span(9, 2, Some(1), SpanKind::Internal, "dup", t0, 5, false);
        submit(&store, "", vec![huge, backwards, dup]);
        assert!(store.flush(Duration::from_secs(5)));
        let stats = store.sink().stats();
        assert_eq!((stats.accepted, stats.delivered, stats.dropped), (3, 3, 0));
    }
    let store = open(dir.path());
    let detail = store.trace(&format!("{:032x}", 9)).unwrap().unwrap();
    assert_eq!(detail.spans.len(), 2, "duplicate span id stored once");
    let b = detail
        .spans
        .iter()
        .find(|s| s.span_id == format!("{:016x}", 2))
        .unwrap();
    assert_eq!((b.name.as_str(), b.duration_ms), ("b", 0.0));
    let h = detail.spans.iter().find(|s| s.depth == 0).unwrap();
    assert!(h.name.len() < 1000);
    assert_eq!(h.attributes.len(), zerostep::store::MAX_ATTRIBUTES);
    assert_eq!(h.service, "unknown_service");
    assert_eq!(
        store.traces(&TraceQuery::default()).unwrap()[0].span_count,
        2
    );
    // Counts go on from where they were after a restart.
    submit(
        &store,
        "",
        vec![span(10, 1, None, SpanKind::Server, "/h", t0, 1, false)],
    );
    assert!(store.flush(Duration::from_secs(5)));
    let eps = store.endpoints(all_time(), None).unwrap();
    assert_eq!(eps.iter().map(|e| e.stats.count).sum::<u64>(), 2);
    // The same request delivered again in a later transaction is counted and shown once.
    submit(
        &store,
        "",
        vec![span(10, 1, None, SpanKind::Server, "/h", t0, 1, false)],
    );
    assert!(store.flush(Duration::from_secs(5)));
    let eps = store.endpoints(all_time(), None).unwrap();
    assert_eq!(eps.iter().map(|e| e.stats.count).sum::<u64>(), 2);
    let again = store.trace(&format!("{:032x}", 10)).unwrap().unwrap();
    assert_eq!(again.spans.len(), 1);
}

/// Whole hours come from the hourly rollups and the partial hours at both ends from the
/// minutes: the answer must be the one the spans themselves give for those minutes.
#[test]
fn hourly_rollups_answer_like_the_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let minute = 60_000_000_000u64;
    let hour = 60 * minute;
    let h0 = (now_ns() / hour - 6) * hour;
    // A span every 7 s from half an hour before h0 to 3.5 hours after, with a database call.
    let mut spans = Vec::new();
    let mut sent = Vec::new();
    for i in 0..(4 * 3600 / 7) {
        let start = h0 - 30 * minute + i * 7_000_000_000;
        let route = if i % 3 == 0 { "/a" } else { "/b" };
        let dur_ms = 1 + (i * 37) % 400;
        let error = i % 11 == 0;
        let trace = u128::from(i) + 1;
        spans.push(span(
            trace,
            1,
            None,
            SpanKind::Server,
            route,
            start,
            dur_ms,
            error,
        ));
        let mut db = span(
            trace,
            2,
            Some(1),
            SpanKind::Client,
            "SELECT",
            start,
            1 + dur_ms / 2,
            false,
        );
        db.attributes
            .push(Attribute::str("db.system", "postgresql"));
        spans.push(db);
        sent.push((start, format!("GET {route}"), dur_ms * 1_000_000, error));
    }
    submit(&store, "svc", spans);
    assert!(store.flush(Duration::from_secs(30)));

    let ms = |ns: u64| (ns / 1_000_000) as i64;
    // 17.5 minutes into the first hour to 41 minutes into the third: two whole hours between.
    let range = TimeRange {
        from_ms: ms(h0 + 17 * minute + 30_000_000_000),
        to_ms: ms(h0 + 2 * hour + 41 * minute),
    };
    let (m0, m1) = (range.from_ms / 60_000, (range.to_ms - 1) / 60_000);
    let got = store.endpoints(range, Some("svc")).unwrap();
    assert_eq!(got.len(), 2);
    for ep in &got {
        let mut hist = zerostep::store::Histogram::default();
        let (mut count, mut errors) = (0, 0);
        for (start, name, dur, error) in &sent {
            let m = (*start / minute) as i64;
            if *name == ep.endpoint && (m0..=m1).contains(&m) {
                hist.record(*dur);
                count += 1;
                errors += u64::from(*error);
            }
        }
        assert_eq!(
            (ep.stats.count, ep.stats.errors),
            (count, errors),
            "{}",
            ep.endpoint
        );
        assert_eq!(ep.stats.p50_ms, hist.quantile_ms(0.50));
        assert_eq!(ep.stats.p95_ms, hist.quantile_ms(0.95));
        assert_eq!(ep.stats.p99_ms, hist.quantile_ms(0.99));
    }
    let in_range = sent
        .iter()
        .filter(|s| (m0..=m1).contains(&((s.0 / minute) as i64)))
        .count() as u64;
    let svc = &store.services(range).unwrap()[1];
    assert_eq!((svc.name.as_str(), svc.stats.count), ("svc", in_range));
    let edges = store.edges(range).unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0].stats.count, in_range);
    // And an aligned range is hours only: the whole day before the data is empty.
    let before = TimeRange {
        from_ms: ms(h0 - 24 * hour),
        to_ms: ms(h0 - hour),
    };
    assert!(store.endpoints(before, None).unwrap().is_empty());
}

/// A store of an older layout is moved aside, whole, and the agent starts with an empty one.
#[test]
fn older_schema_is_moved_aside_not_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("zerostep.db");
    let old = |marker: &str| {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; CREATE TABLE spans (x); INSERT INTO spans VALUES ('{marker}');
             PRAGMA user_version = 1;"
        ))
        .unwrap();
    };
    old("first");
    let store = open(dir.path());
    let moved = dir.path().join("zerostep.v1.db");
    let conn = rusqlite::Connection::open(&moved).unwrap();
    let (version, marker): (i64, String) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), x FROM spans",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, marker.as_str()), (1, "first"));
    drop(conn);
    // The new store works, and survives a restart of the same version.
    let t0 = now_ns() - 1_000_000_000;
    submit(
        &store,
        "web",
        vec![span(5, 1, None, SpanKind::Server, "/", t0, 3, false)],
    );
    assert!(store.flush(Duration::from_secs(5)));
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.traces(&TraceQuery::default()).unwrap().len(), 1);
    drop(store);
    // Another old file later does not overwrite the first one moved aside.
    std::fs::remove_file(&db).unwrap();
    old("second");
    drop(open(dir.path()));
    assert!(dir.path().join("zerostep.v1.1.db").exists());
    assert!(moved.exists());
}

#[test]
fn newer_schema_and_foreign_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let conn = rusqlite::Connection::open(dir.path().join("zerostep.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(dir.path(), StoreConfig::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer zerostep"));

    let other = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(other.path().join("zerostep.db")).unwrap();
    conn.execute_batch("CREATE TABLE x (a)").unwrap();
    drop(conn);
    assert!(matches!(
        Store::open(other.path(), StoreConfig::default()),
        Err(StoreError::NotOurs)
    ));
}

fn many_spans(store: &Store, traces: u64, t0: u64) {
    for chunk in 0..traces / 1000 {
        let spans = (0..1000)
            .flat_map(|i| {
                let n = chunk * 1000 + i;
                let mut s = span(
                    u128::from(n) + 1,
                    1,
                    None,
                    SpanKind::Server,
                    "/x",
                    t0 + n,
                    3,
                    false,
                );
                s.attributes
                    .push(Attribute::str("payload", "x".repeat(400)));
                let c = span(
                    u128::from(n) + 1,
                    2,
                    Some(1),
                    SpanKind::Client,
                    "call",
                    t0 + n,
                    1,
                    false,
                );
                [s, c]
            })
            .collect();
        submit(store, "svc", spans);
    }
    assert!(store.flush(Duration::from_secs(60)));
}

#[test]
fn retention_by_size_bounds_the_file_and_by_age_deletes_old_spans() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t0 = now_ns() - 60_000_000_000;
    many_spans(&store, 20_000, t0);
    let (used, _) = store.size().unwrap();
    assert!(used > 8 << 20, "{used}");

    let limit = 4 << 20;
    let config = StoreConfig {
        retention_bytes: limit,
        ..Default::default()
    };
    let report = store.run_retention(&config).unwrap();
    assert!(report.deleted_spans > 0);
    assert!(report.used_bytes <= limit, "{report:?}");
    let left = store
        .traces(&TraceQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert!(!left.is_empty());
    // The newest traces are the ones kept.
    assert_eq!(left[0].trace_id, format!("{:032x}", 20_000));

    // Writing as much again keeps the file bounded: freed pages are reused or given back.
    many_spans(&store, 20_000, t0 + 1_000_000);
    let report = store.run_retention(&config).unwrap();
    let file = std::fs::metadata(store.path()).unwrap().len();
    assert!(report.used_bytes <= limit, "{report:?}");
    assert!(
        file <= 2 * limit,
        "file {file} vs limit {limit}: {report:?}"
    );

    // By age: everything was written "now", so a zero age removes it all.
    std::thread::sleep(Duration::from_millis(1100));
    submit(
        &store,
        "svc",
        vec![span(
            1 << 100,
            1,
            None,
            SpanKind::Server,
            "/late",
            now_ns(),
            1,
            false,
        )],
    );
    assert!(store.flush(Duration::from_secs(5)));
    let config = StoreConfig {
        retention_age: Duration::from_millis(500),
        ..Default::default()
    };
    let report = store.run_retention(&config).unwrap();
    assert!(report.deleted_spans > 0);
    let left = store
        .traces(&TraceQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn queue_drops_oldest_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            queue_spans: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let sink = store.sink();
    let t0 = now_ns();
    for i in 0..2000u64 {
        sink.submit(Arc::new(EnrichedBatch {
            resource: resource("q", 1),
            spans: vec![span(
                u128::from(i) + 1,
                1,
                None,
                SpanKind::Server,
                "/q",
                t0,
                1,
                false,
            )],
        }));
    }
    assert!(store.flush(Duration::from_secs(10)));
    let s = sink.stats();
    assert_eq!(s.accepted, 2000);
    assert_eq!(s.delivered + s.dropped, 2000, "{s:?}");
    assert_eq!(s.queued, 0);
}

mod http {
    use super::*;

    fn get(base: &str, path: &str) -> (u16, serde_json::Value) {
        let resp = ureq::get(&format!("{base}{path}"))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    #[test]
    fn routes_answer_and_reject_bad_params() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        let t0 = now_ns() - 5_000_000_000;
        submit(
            &store,
            "web",
            vec![span(42, 1, None, SpanKind::Server, "/p", t0, 12, true)],
        );
        assert!(store.flush(Duration::from_secs(5)));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = zerostep::api::store_routes::router(store.clone())
            .merge(zerostep::api::ui::ui_router());
        rt.spawn(async move { axum::serve(listener, app).await });

        let (s, v) = get(&base, "/api/v1/services");
        assert_eq!(s, 200, "{v}");
        assert_eq!(v[0]["name"], "web");
        assert_eq!(v[0]["errors"], 1);
        let (s, v) = get(&base, "/api/v1/endpoints?service=web");
        assert_eq!((s, v[0]["endpoint"].as_str()), (200, Some("GET /p")));
        let (s, v) = get(&base, "/api/v1/edges");
        assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(0)));
        let (s, v) = get(
            &base,
            "/api/v1/traces?service=web&status=error&min_duration_ms=10&limit=5",
        );
        assert_eq!(s, 200, "{v}");
        let id = v[0]["trace_id"].as_str().unwrap().to_string();
        let (s, v) = get(&base, &format!("/api/v1/traces/{id}"));
        assert_eq!(
            (s, &v["culprit"]["reason"]),
            (200, &serde_json::json!("error"))
        );

        for bad in [
            "/api/v1/traces?status=broken",
            "/api/v1/traces?limit=0",
            "/api/v1/traces?min_duration_ms=abc",
            "/api/v1/traces?from=10&to=5",
            "/api/v1/traces?sevice=web",
            "/api/v1/services?from=x",
            "/api/v1/traces/not-hex",
        ] {
            let (s, v) = get(&base, bad);
            assert_eq!(s, 400, "{bad}: {v}");
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{bad}: {v}"
            );
        }
        let (s, _) = get(&base, &format!("/api/v1/traces/{:032x}", 1));
        assert_eq!(s, 404);

        let (s, page) = get(&base, "/");
        assert_eq!(s, 200);
        assert!(page.as_str().unwrap().contains("/ui/app.js"));
        let (s, js) = get(&base, "/ui/app.js");
        assert_eq!(s, 200);
        assert!(js.as_str().unwrap().contains("/api/v1/traces"));
        assert_eq!(get(&base, "/ui/style.css").0, 200);
        assert_eq!(get(&base, "/ui/traces").0, 200);
        rt.shutdown_background();
    }
}

/// Charts' time series from the rollups, and trace search by attributes.
mod series_and_search {
    use super::*;
    use zerostep::store::{AttrFilter, AttrOp};

    fn db_call(trace: u128, id: u64, parent: u64, start: u64, query: &str) -> Span {
        let mut s = span(
            trace,
            id,
            Some(parent),
            SpanKind::Client,
            "SELECT",
            start,
            2,
            false,
        );
        s.attributes = vec![
            Attribute::str("db.system", "postgresql"),
            Attribute::str("db.query.text", query),
        ];
        s
    }

    /// Minute-aligned start `m` minutes before now's minute, plus `off` ms.
    fn at(m: u64, off: u64) -> u64 {
        let minute = now_ns() / 60_000_000_000 * 60_000_000_000;
        minute - m * 60_000_000_000 + off * 1_000_000
    }

    fn fill(store: &Store) {
        let mut n = 0u128;
        // 5 minutes ago: 4 requests to /a (1 failing), 2 to /b; 2 minutes ago: 3 to /a.
        for (m, route, error, query) in [
            (5, "/a", false, "SELECT * FROM users WHERE id = $1"),
            (5, "/a", false, "SELECT * FROM users WHERE id = $1"),
            (5, "/a", false, "SELECT * FROM users WHERE id = $1"),
            (5, "/a", true, "UPDATE accounts SET x = 1"),
            (5, "/b", false, "SELECT 1"),
            (5, "/b", false, "SELECT 1"),
            (2, "/a", false, "SELECT * FROM orders"),
            (2, "/a", false, "SELECT * FROM orders"),
            (2, "/a", false, "SELECT * FROM orders"),
        ] {
            n += 1;
            let t = at(m, n as u64 * 10);
            let mut root = span(1000 + n, 1, None, SpanKind::Server, route, t, 20, error);
            root.attributes
                .push(Attribute::str("url.path", format!("/api{route}/{n}")));
            submit(
                store,
                "web",
                vec![root, db_call(1000 + n, 2, 1, t + 1_000_000, query)],
            );
        }
        assert!(store.flush(Duration::from_secs(5)));
    }

    fn range() -> TimeRange {
        let now = (now_ns() / 1_000_000) as i64;
        TimeRange {
            from_ms: now - 15 * 60_000,
            to_ms: now + 1,
        }
    }

    #[test]
    fn series_buckets_per_minute_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        fill(&store);
        let s = store.series(range(), Some("web"), None).unwrap();
        assert_eq!(s.step_ms, 60_000);
        let total: u64 = s.points.iter().map(|p| p.count).sum();
        assert_eq!(total, 9);
        let minute_ms = |m: u64| (at(m, 0) / 1_000_000) as i64;
        let p5 = s.points.iter().find(|p| p.t_ms == minute_ms(5)).unwrap();
        assert_eq!((p5.count, p5.errors), (6, 1));
        assert!((p5.rate_per_min - 6.0).abs() < 1e-9);
        assert!(
            p5.p95_ms.is_some_and(|v| (15.0..25.0).contains(&v)),
            "{p5:?}"
        );
        let p2 = s.points.iter().find(|p| p.t_ms == minute_ms(2)).unwrap();
        assert_eq!((p2.count, p2.errors), (3, 0));
        // An empty minute is a gap, not a zero latency.
        let empty = s.points.iter().find(|p| p.t_ms == minute_ms(3)).unwrap();
        assert_eq!((empty.count, empty.p50_ms), (0, None));
        // Points are contiguous buckets covering the range.
        assert!(s.points.windows(2).all(|w| w[1].t_ms - w[0].t_ms == 60_000));
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 9);

        let b = store.series(range(), Some("web"), Some("GET /b")).unwrap();
        assert_eq!(b.points.iter().map(|p| p.count).sum::<u64>(), 2);
        let all = store.series(range(), None, None).unwrap();
        assert_eq!(all.points.iter().map(|p| p.count).sum::<u64>(), 9);
        // The database, as a service of its own: the calls into it.
        let services = store.services(range()).unwrap();
        let db_row = services
            .iter()
            .find(|s| s.kind != "service")
            .unwrap_or_else(|| panic!("no database in {services:?}"));
        let db = store.series(range(), Some(&db_row.name), None).unwrap();
        let db_total = db.points.iter().map(|p| p.count).sum::<u64>();
        assert_eq!(db_total, db_row.stats.count);
        assert_eq!(db_total, 9);
        assert!(store
            .series(range(), Some("nope"), None)
            .unwrap()
            .points
            .is_empty());
        // A day is read from the 10-minute tier.
        let now = (now_ns() / 1_000_000) as i64;
        let day = TimeRange {
            from_ms: now - 86_400_000,
            to_ms: now + 1,
        };
        let d = store.series(day, Some("web"), None).unwrap();
        assert_eq!(d.step_ms, 600_000);
        assert_eq!(d.points.iter().map(|p| p.count).sum::<u64>(), 9);
    }

    #[test]
    fn traces_found_by_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        fill(&store);
        let find = |conds: &[&str], f: &dyn Fn(&mut TraceQuery)| {
            let mut q = TraceQuery {
                attributes: conds
                    .iter()
                    .map(|c| c.parse::<AttrFilter>().unwrap())
                    .collect(),
                from_ms: Some(range().from_ms),
                to_ms: Some(range().to_ms),
                limit: 100,
                ..Default::default()
            };
            f(&mut q);
            let mut ids: Vec<String> = store
                .traces(&q)
                .unwrap()
                .into_iter()
                .map(|t| t.trace_id)
                .collect();
            ids.sort();
            ids
        };
        let id = |n: u128| format!("{:032x}", 1000 + n);
        assert_eq!(
            find(&["http.response.status_code=500"], &|_| {}),
            vec![id(4)]
        );
        assert_eq!(
            find(&["db.query.text~=FROM orders"], &|_| {}),
            vec![id(7), id(8), id(9)]
        );
        assert_eq!(find(&["url.path^=/api/b/"], &|_| {}), vec![id(5), id(6)]);
        assert_eq!(find(&["db.system"], &|_| {}).len(), 9);
        // Conditions together; with other filters.
        assert_eq!(
            find(&["url.path^=/api/a", "db.query.text~=users"], &|_| {}),
            vec![id(1), id(2), id(3)]
        );
        assert_eq!(
            find(&["url.path^=/api/a"], &|q| q.status =
                Some(StatusFilter::Error)),
            vec![id(4)]
        );
        assert!(find(&["db.query.text~=UPDATE"], &|q| q.status =
            Some(StatusFilter::Ok))
        .is_empty());
        assert_eq!(
            find(&["db.system=postgresql"], &|q| q.endpoint =
                Some("GET /b".into())),
            vec![id(5), id(6)]
        );
        assert!(find(&["db.system=mysql"], &|_| {}).is_empty());
        assert!(find(&["no.such.key"], &|_| {}).is_empty());
        assert!(find(&["db.query.text~=orders"], &|q| q.service =
            Some("other".into()))
        .is_empty());
        assert_eq!(
            "a~=b".parse::<AttrFilter>().unwrap().op,
            AttrOp::Contains("b".into())
        );
    }

    #[test]
    fn http_routes_for_series_and_attribute_search() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        fill(&store);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = zerostep::api::store_routes::router(store.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        let get = |path: &str| {
            let resp = ureq::get(&format!("{base}{path}"))
                .config()
                .http_status_as_error(false)
                .build()
                .call()
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.into_body().read_to_string().unwrap();
            (
                status,
                serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
            )
        };
        let (s, v) = get("/api/v1/series?service=web&endpoint=GET%20%2Fa");
        assert_eq!(s, 200, "{v}");
        let count: u64 = v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["count"].as_u64().unwrap())
            .sum();
        assert_eq!(count, 7);
        assert_eq!(v["step_ms"], 60_000);
        let (s, v) = get(
            "/api/v1/traces?attr=url.path%5E%3D%2Fapi%2Fa&attr=db.query.text~%3DUPDATE&limit=10",
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v[0]["error"], true);
        let (s, v) = get("/api/v1/attribute-keys");
        assert_eq!(s, 200);
        assert!(
            v.as_array().unwrap().iter().any(|k| k == "db.query.text"),
            "{v}"
        );
        let (s, v) = get("/api/v1/endpoint-change?service=web&endpoint=GET%20%2Fa");
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["requests"], 7, "{v}");
        assert!(
            v["operations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["name"] == "SELECT"),
            "{v}"
        );
        for bad in [
            "/api/v1/endpoint-change?service=web",
            "/api/v1/endpoint-change?service=web&endpoint=x&baseline_from=5&baseline_to=1",
            "/api/v1/traces?attr=%3Dx",
            "/api/v1/traces?limit=5&limit=6",
            "/api/v1/series?from=9&to=3",
            "/api/v1/series?servce=web",
        ] {
            let (s, v) = get(bad);
            assert_eq!(s, 400, "{bad}: {v}");
        }
        rt.shutdown_background();
    }
}

/// For an endpoint whose latency jumped, the child operation whose time grew most.
#[test]
fn endpoint_change_names_the_operation_that_grew() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let now = now_ns();
    // An hour ago: GET /r takes 10 ms, its db call 2 ms and a cache call 1 ms. In the last
    // 10 minutes: the db call takes 40 ms; the cache call is unchanged.
    for (n, (ago_s, db_ms)) in (0..20)
        .map(|i| (3_000 + i * 10, 2))
        .chain((0..20).map(|i| (300 + i * 10, 40)))
        .enumerate()
    {
        let trace = 50_000 + n as u128;
        let t = now - ago_s * 1_000_000_000;
        let root = span(trace, 1, None, SpanKind::Server, "/r", t, 8 + db_ms, false);
        let mut db = span(
            trace,
            2,
            Some(1),
            SpanKind::Client,
            "SELECT",
            t + 1_000_000,
            db_ms,
            false,
        );
        db.attributes = vec![Attribute::str("db.system", "postgresql")];
        let cache = span(
            trace,
            3,
            Some(1),
            SpanKind::Client,
            "GET cache",
            t + (2 + db_ms) * 1_000_000,
            1,
            false,
        );
        submit(&store, "web", vec![root, db, cache]);
    }
    assert!(store.flush(Duration::from_secs(5)));
    let now_ms = (now / 1_000_000) as i64;
    let range = TimeRange {
        from_ms: now_ms - 600_000,
        to_ms: now_ms + 1,
    };
    let baseline = TimeRange {
        from_ms: now_ms - 3_600_000,
        to_ms: now_ms - 600_000,
    };
    let c = store
        .endpoint_change("web", "GET /r", range, baseline)
        .unwrap();
    assert_eq!((c.requests, c.baseline_requests), (20, 20));
    assert!(c.p95_ms > 3.0 * c.baseline_p95_ms, "{c:?}");
    let top = &c.operations[0];
    assert_eq!(top.name, "SELECT", "{c:?}");
    assert!((top.delta_ms - 38.0).abs() < 0.5, "{top:?}");
    assert!((top.calls_per_request - 1.0).abs() < 1e-9);
    let cache = c.operations.iter().find(|o| o.name == "GET cache").unwrap();
    assert!(cache.delta_ms.abs() < 0.5, "{cache:?}");
}
