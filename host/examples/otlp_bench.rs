//! OTLP export throughput for realistic web-request spans: encode + gzip + send to a receiver on
//! 127.0.0.1 that discards (axum for OTLP/HTTP, tonic's generated TraceService server for
//! OTLP/gRPC, in clear text or behind rustls with a throwaway CA), in spans/s, and the exporter
//! thread's CPU per 10k spans. Run by bench/60-otlp.sh.
//!
//!   otlp_bench [SPANS]
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use zerostep::export::{Compression, OtlpConfig, OtlpExporter, Protocol};
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

struct Discard;

#[tonic::async_trait]
impl TraceService for Discard {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// TLS in front of a TCP listener for `axum::serve`; handshakes are done one at a time (the
/// exporter keeps one connection).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A discarding receiver for `protocol`; with `tls`, its certificate (for localhost) is signed by
/// the CA written to `ca_file`.
fn receiver(
    rt: &tokio::runtime::Runtime,
    protocol: Protocol,
    tls: Option<&std::path::Path>,
) -> Result<String> {
    let app = match protocol {
        Protocol::HttpProtobuf => {
            Router::new().route("/v1/traces", post(|_body: axum::body::Bytes| async {}))
        }
        Protocol::Grpc => tonic::service::Routes::new(
            TraceServiceServer::new(Discard)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .into_axum_router(),
    };
    let tcp = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = tcp.local_addr()?;
    let Some(ca_file) = tls else {
        rt.spawn(async move { axum::serve(tcp, app).await });
        return Ok(format!("http://{addr}"));
    };
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    std::fs::write(ca_file, cert.pem())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    rt.spawn(async move { axum::serve(listener, app).await });
    Ok(format!("https://localhost:{}", addr.port()))
}

/// User + system CPU of this process's threads named `name`, from /proc.
fn thread_cpu(name: &str) -> Duration {
    let ticks = procfs::ticks_per_second() as f64;
    let mut total = 0.0;
    if let Ok(tasks) = procfs::process::Process::myself().and_then(|p| p.tasks()) {
        for task in tasks.flatten() {
            if let Ok(stat) = task.stat() {
                if stat.comm == name {
                    total += (stat.utime + stat.stime) as f64 / ticks;
                }
            }
        }
    }
    Duration::from_secs_f64(total)
}

fn main() -> Result<()> {
    let spans: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("SPANS must be a number")?
        .unwrap_or(150_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
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
    let dir = tempfile::tempdir()?;
    println!("OTLP export of {total} spans (3 per batch, 4 processes, 512 per request)");
    println!(
        "{:<22} {:>16} {:>18} {:>12} {:>10}",
        "transport", "deliver spans/s", "CPU ms/10k spans", "bytes/span", "requests"
    );
    let cases = [
        (Protocol::HttpProtobuf, false, Compression::None),
        (Protocol::HttpProtobuf, false, Compression::Gzip),
        (Protocol::HttpProtobuf, true, Compression::Gzip),
        (Protocol::Grpc, false, Compression::None),
        (Protocol::Grpc, false, Compression::Gzip),
        (Protocol::Grpc, true, Compression::Gzip),
    ];
    for (i, (protocol, tls, compression)) in cases.into_iter().enumerate() {
        let ca_file = dir.path().join(format!("ca-{i}.pem"));
        let endpoint = receiver(&rt, protocol, tls.then_some(ca_file.as_path()))?;
        let mut config = OtlpConfig::new(endpoint);
        config.protocol = protocol;
        config.queue_spans = total as usize;
        config.flush_interval = Duration::from_millis(20);
        config.compression = compression;
        if tls {
            config.tls.ca_file = Some(ca_file);
        }
        let exporter = OtlpExporter::start(config)?;
        let cpu0 = thread_cpu("otlp-export");
        let t0 = Instant::now();
        for b in &batches {
            exporter.submit(b.clone());
        }
        while exporter.stats().delivered + exporter.stats().dropped < total {
            if t0.elapsed() > Duration::from_secs(300) {
                bail!("not delivered within 5 min: {:?}", exporter.otlp_stats());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let delivered = t0.elapsed();
        let cpu = thread_cpu("otlp-export") - cpu0;
        let stats = exporter.shutdown(Duration::from_secs(5));
        if stats.sink.dropped > 0 {
            bail!(
                "dropped {} spans: {:?}",
                stats.sink.dropped,
                stats.last_error
            );
        }
        let name = format!(
            "{}{} {}",
            protocol.as_str(),
            if tls { "+tls" } else { "" },
            format!("{compression:?}").to_lowercase()
        );
        println!(
            "{:<22} {:>16.0} {:>18.1} {:>12.1} {:>10}",
            name,
            total as f64 / delivered.as_secs_f64(),
            cpu.as_secs_f64() * 1000.0 * 10_000.0 / total as f64,
            stats.bytes_sent as f64 / total as f64,
            stats.requests
        );
    }
    Ok(())
}
