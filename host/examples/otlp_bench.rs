//! OTLP export throughput: encode + (gzip) + HTTP POST to a local receiver that discards, in
//! spans/s, for realistic web-request spans. Run by bench/60-otlp.sh.
//!
//!   otlp_bench [SPANS] [ENDPOINT]   (no ENDPOINT: a discarding receiver on 127.0.0.1)
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::routing::post;
use axum::Router;
use zerostep::export::{Compression, OtlpConfig, OtlpExporter};
use zerostep::pipeline::{EnrichedBatch, Resource, Sink};
use zerostep::span::{AttrValue, Attribute, Event, Span, SpanKind, Status, StatusCode};

fn resource(i: u32) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: format!("shop-{i}"),
        host_name: "web-1".into(),
        pid: 1000 + i,
        executable: "/usr/local/bin/python3.11".into(),
        command_line: "gunicorn shop.wsgi:application -w 4 -b 0.0.0.0:8000".into(),
        runtime_version: "3.11.7".into(),
        technology: "gunicorn".into(),
        role: "worker".into(),
        tracer_version: "0.1.0".into(),
    })
}

/// One traced request: a server span and two client children, as the tracer sends them.
fn request_spans(n: u64) -> Vec<Span> {
    let trace_id = (u128::from(n) << 64) | 0x5eed;
    let t0 = 1_700_000_000_000_000_000 + n * 1_000_000;
    let server = Span {
        trace_id,
        span_id: n * 3 + 1,
        parent_span_id: None,
        name: "GET /users/{id}".into(),
        kind: SpanKind::Server,
        start_unix_nano: t0,
        end_unix_nano: t0 + 900_000,
        status: Status::default(),
        attributes: vec![
            Attribute::str("http.request.method", "GET"),
            Attribute::str("http.route", "/users/{id}"),
            Attribute::str("url.path", format!("/users/{n}")),
            Attribute::str("url.scheme", "http"),
            Attribute::int("http.response.status_code", 200),
            Attribute::str("server.address", "shop.internal"),
            Attribute::int("server.port", 8000),
            Attribute::str("client.address", "10.0.3.17"),
            Attribute::str(
                "user_agent.original",
                "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            ),
            Attribute::str("network.protocol.version", "1.1"),
            Attribute {
                key: "zerostep.cpu_ms".into(),
                value: AttrValue::Double(0.42),
            },
        ],
        events: vec![],
    };
    let client = |k: u64, name: &str, attrs: Vec<Attribute>, error: bool| Span {
        trace_id,
        span_id: n * 3 + 1 + k,
        parent_span_id: Some(n * 3 + 1),
        name: name.into(),
        kind: SpanKind::Client,
        start_unix_nano: t0 + k * 100_000,
        end_unix_nano: t0 + k * 100_000 + 250_000,
        status: Status {
            code: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            message: String::new(),
        },
        attributes: attrs,
        events: if error {
            vec![Event {
                name: "exception".into(),
                time_unix_nano: t0 + k * 100_000 + 200_000,
                attributes: vec![Attribute::str("exception.type", "TimeoutError")],
            }]
        } else {
            vec![]
        },
    };
    vec![
        server,
        client(
            1,
            "SELECT shop",
            vec![
                Attribute::str("db.system.name", "postgresql"),
                Attribute::str("db.query.text", "SELECT id, name FROM users WHERE id = ?"),
                Attribute::str("db.namespace", "shop"),
                Attribute::str("server.address", "db.internal"),
                Attribute::int("server.port", 5432),
            ],
            false,
        ),
        client(
            2,
            "GET",
            vec![
                Attribute::str("http.request.method", "GET"),
                Attribute::str("url.full", "http://billing.internal/api/v1/balance"),
                Attribute::int("http.response.status_code", 200),
                Attribute::str("server.address", "billing.internal"),
            ],
            n.is_multiple_of(50),
        ),
    ]
}

fn discard_receiver(rt: &tokio::runtime::Runtime) -> Result<String> {
    let app = Router::new().route("/v1/traces", post(|_body: axum::body::Bytes| async {}));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let spans: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("SPANS must be a number")?
        .unwrap_or(300_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let endpoint = match args.next() {
        Some(e) => e,
        None => discard_receiver(&rt)?,
    };
    let resources: Vec<_> = (0..4).map(resource).collect();
    // Built before timing: the benchmark measures the exporter, not span construction.
    let batches: Vec<Arc<EnrichedBatch>> = (0..spans / 3)
        .map(|n| {
            Arc::new(EnrichedBatch {
                resource: resources[(n % 4) as usize].clone(),
                spans: request_spans(n),
            })
        })
        .collect();
    let total = batches.len() as u64 * 3;
    println!("OTLP export of {total} spans (3 per batch, 4 processes) to {endpoint}");
    println!(
        "{:<8} {:>14} {:>16} {:>12} {:>10}",
        "body", "submit spans/s", "deliver spans/s", "bytes/span", "requests"
    );
    for compression in [Compression::None, Compression::Gzip] {
        let mut config = OtlpConfig::new(endpoint.clone());
        config.queue_spans = total as usize;
        config.flush_interval = Duration::from_millis(20);
        config.compression = compression;
        let exporter = OtlpExporter::start(config)?;
        let t0 = Instant::now();
        for b in &batches {
            exporter.submit(b.clone());
        }
        let submitted = t0.elapsed();
        while exporter.stats().delivered + exporter.stats().dropped < total {
            if t0.elapsed() > Duration::from_secs(300) {
                bail!("not delivered within 5 min: {:?}", exporter.otlp_stats());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let delivered = t0.elapsed();
        let stats = exporter.shutdown(Duration::from_secs(5));
        if stats.sink.dropped > 0 {
            bail!(
                "dropped {} spans: {:?}",
                stats.sink.dropped,
                stats.last_error
            );
        }
        println!(
            "{:<8} {:>14.0} {:>16.0} {:>12.1} {:>10}",
            format!("{compression:?}").to_lowercase(),
            total as f64 / submitted.as_secs_f64(),
            total as f64 / delivered.as_secs_f64(),
            stats.bytes_sent as f64 / total as f64,
            stats.requests
        );
    }
    Ok(())
}
