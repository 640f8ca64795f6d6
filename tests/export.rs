//! OTLP export against a real HTTP receiver on 127.0.0.1: what is sent is decoded with the official
//! OpenTelemetry protobuf schema (Python `opentelemetry-proto`, venv `otlp-decode` in
//! tests/venvs.txt) and checked field by field; outages, overflow, refusals, Retry-After and
//! shutdown are checked through what the receiver got and the exporter's counters.
mod support;

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode as HttpStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use serde_json::{json, Value};

use support::*;
use zerostep::export::{Compression, OtlpConfig, OtlpExporter, OtlpStats, RetryPolicy};
use zerostep::pipeline::{EnrichedBatch, Resource, Sink};
use zerostep::span::{AttrValue, Attribute, Event, Span, SpanKind, Status, StatusCode};

// ---------------------------------------------------------------- the receiver

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: vec![],
        }
    }
    fn ok() -> Reply {
        Reply::status(200)
    }
}

#[derive(Clone)]
struct Got {
    at: Instant,
    headers: HeaderMap,
    /// Uncompressed request body.
    body: Vec<u8>,
    replied: u16,
}

struct RecvState {
    script: VecDeque<Reply>,
    default: Reply,
    got: Vec<Got>,
}

/// An OTLP/HTTP receiver that records every request and answers from a script.
struct Receiver {
    port: u16,
    state: Arc<Mutex<RecvState>>,
    _rt: tokio::runtime::Runtime,
}

async fn receive(
    State(state): State<Arc<Mutex<RecvState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match headers.get("content-encoding").map(|v| v.as_bytes()) {
        Some(b"gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .expect("gzip body");
            out
        }
        _ => body.to_vec(),
    };
    let mut st = state.lock().unwrap();
    let reply = st.script.pop_front().unwrap_or_else(|| st.default.clone());
    st.got.push(Got {
        at: Instant::now(),
        headers,
        body,
        replied: reply.status,
    });
    let mut h = HeaderMap::new();
    for (k, v) in &reply.headers {
        h.insert(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    (HttpStatus::from_u16(reply.status).unwrap(), h, reply.body).into_response()
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::on(0)
    }

    fn on(port: u16) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(RecvState {
            script: VecDeque::new(),
            default: Reply::ok(),
            got: vec![],
        }));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(state.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            port,
            state,
            _rt: rt,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }
    fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }
    fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }
    /// The bodies the receiver accepted (2xx), decoded with the official schema.
    fn accepted(&self) -> Vec<Value> {
        let bodies: Vec<Vec<u8>> = self
            .got()
            .into_iter()
            .filter(|g| (200..300).contains(&g.replied))
            .map(|g| g.body)
            .collect();
        decode(&bodies)
    }
}

/// Runs tests/fixtures/otlp_decode.py over the bodies: one JSON object per body.
fn decode(bodies: &[Vec<u8>]) -> Vec<Value> {
    if bodies.is_empty() {
        return vec![];
    }
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p = dir.path().join(format!("{i}.pb"));
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect();
    let out = std::process::Command::new(venv_bin("otlp-decode", "python"))
        .arg(repo_root().join("tests/fixtures/otlp_decode.py"))
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "decoding with opentelemetry-proto failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(v) => v,
        other => panic!("decoder printed {other}"),
    }
}

/// (service.name, span_id as u64) of every span in the decoded requests, in order.
fn span_ids(requests: &[Value]) -> Vec<(String, u64)> {
    let mut out = vec![];
    for req in requests {
        for rs in req["resource_spans"].as_array().unwrap() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["string_value"].as_str().unwrap().to_string())
                .unwrap();
            for ss in rs["scope_spans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    let id = u64::from_str_radix(s["span_id"].as_str().unwrap(), 16).unwrap();
                    out.push((service.clone(), id));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------- spans and exporters

fn resource(service: &str, pid: u32) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.into(),
        host_name: "web-1".into(),
        pid,
        executable: "/opt/py/bin/python3.11".into(),
        command_line: "gunicorn app:app -w 2".into(),
        runtime_version: "3.11.7".into(),
        technology: "gunicorn".into(),
        role: "worker".into(),
        tracer_version: "0.3.1".into(),
    })
}

fn plain_span(id: u64) -> Span {
    Span {
        trace_id: 0xabc,
        span_id: id,
        parent_span_id: None,
        name: format!("GET /{id}"),
        kind: SpanKind::Server,
        start_unix_nano: 1_700_000_000_000_000_000 + id,
        end_unix_nano: 1_700_000_000_000_000_100 + id,
        status: Status::default(),
        attributes: vec![Attribute::int("n", id as i64)],
        events: vec![],
    }
}

fn batch(res: &Arc<Resource>, ids: std::ops::Range<u64>) -> Arc<EnrichedBatch> {
    Arc::new(EnrichedBatch {
        resource: res.clone(),
        spans: ids.map(plain_span).collect(),
    })
}

fn fast_config(endpoint: &str) -> OtlpConfig {
    let mut c = OtlpConfig::new(endpoint);
    c.flush_interval = Duration::from_millis(50);
    c.timeout = Duration::from_secs(5);
    c.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        multiplier: 2.0,
        jitter: 0.2,
        max_retry_after: Duration::from_secs(10),
    };
    c
}

fn wait_stats(exp: &OtlpExporter, what: &str, f: impl Fn(&OtlpStats) -> bool) -> OtlpStats {
    let ok = wait_until(Duration::from_secs(30), || f(&exp.otlp_stats()));
    let stats = exp.otlp_stats();
    assert!(ok, "timed out waiting for {what}: {stats:?}");
    stats
}

/// Every span accepted is delivered, dropped or still queued: none is lost or counted twice.
fn assert_balanced(s: &OtlpStats) {
    assert_eq!(
        s.sink.accepted,
        s.sink.delivered + s.sink.dropped + s.sink.queued,
        "{s:?}"
    );
}

// ---------------------------------------------------------------- tests

fn kv(attrs: &Value, key: &str) -> Value {
    attrs
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
        .unwrap_or_else(|| panic!("no attribute {key} in {attrs}"))
}

#[test]
fn every_field_decodes_with_the_official_schema() {
    let rx = Receiver::start();
    let mut cfg = fast_config(&format!("{}/v1/traces", rx.endpoint()));
    cfg.flush_interval = Duration::from_secs(60);
    cfg.headers = vec![("x-api-key".into(), "secret-1".into())];
    let exp = OtlpExporter::start(cfg).unwrap();
    assert_eq!(exp.url(), format!("{}/v1/traces", rx.endpoint()));

    let a = resource("shop", 4242);
    let b = Arc::new(Resource {
        executable: String::new(),
        command_line: String::new(),
        ..(*resource("billing", 7)).clone()
    });
    let trace_id: u128 = 0x0af7651916cd43dd8448eb211c80319c;
    let root = Span {
        trace_id,
        span_id: 0xb7ad6b7169203331,
        parent_span_id: None,
        name: "GET /users/{id}".into(),
        kind: SpanKind::Server,
        start_unix_nano: 1_700_000_000_123_456_789,
        end_unix_nano: 1_700_000_000_223_456_789,
        status: Status {
            code: StatusCode::Error,
            message: "ZeroDivisionError".into(),
        },
        attributes: vec![
            Attribute::str("http.route", "/users/{id}"),
            Attribute::int("http.response.status_code", 500),
            Attribute {
                key: "zerostep.cpu_ms".into(),
                value: AttrValue::Double(1.25),
            },
            Attribute {
                key: "zerostep.sampled".into(),
                value: AttrValue::Bool(true),
            },
            Attribute {
                key: "http.request.header.accept".into(),
                value: AttrValue::StrArray(vec!["text/html".into(), "*/*".into()]),
            },
            Attribute::int("big", i64::MIN),
        ],
        events: vec![Event {
            name: "exception".into(),
            time_unix_nano: 1_700_000_000_200_000_000,
            attributes: vec![
                Attribute::str("exception.type", "ZeroDivisionError"),
                Attribute::int("exception.depth", 3),
            ],
        }],
    };
    let child = Span {
        trace_id,
        span_id: 0x00f067aa0ba902b7,
        parent_span_id: Some(0xb7ad6b7169203331),
        name: "SELECT users".into(),
        kind: SpanKind::Client,
        start_unix_nano: 1_700_000_000_130_000_000,
        end_unix_nano: 1_700_000_000_140_000_000,
        status: Status {
            code: StatusCode::Ok,
            message: String::new(),
        },
        attributes: vec![],
        events: vec![],
    };
    let kinds = [SpanKind::Internal, SpanKind::Producer, SpanKind::Consumer];
    let others: Vec<Span> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| Span {
            kind: *k,
            ..plain_span(100 + i as u64)
        })
        .collect();
    exp.submit(Arc::new(EnrichedBatch {
        resource: a.clone(),
        spans: vec![root],
    }));
    exp.submit(Arc::new(EnrichedBatch {
        resource: b.clone(),
        spans: vec![child],
    }));
    // Same process again, a different Arc: grouped with the first by value.
    exp.submit(Arc::new(EnrichedBatch {
        resource: Arc::new((*a).clone()),
        spans: others,
    }));
    // The flush interval is a minute: only shutdown sends this.
    let stats = exp.shutdown(Duration::from_secs(10));
    assert_eq!(stats.sink.delivered, 5, "{stats:?}");
    assert_eq!(stats.requests, 1);
    assert_balanced(&stats);

    let got = rx.got();
    assert_eq!(got.len(), 1);
    let h = &got[0].headers;
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["x-api-key"], "secret-1");
    assert!(h["user-agent"].to_str().unwrap().starts_with("zerostep/"));

    let reqs = rx.accepted();
    let rs = reqs[0]["resource_spans"].as_array().unwrap();
    assert_eq!(rs.len(), 2, "one ResourceSpans per process: {}", reqs[0]);

    // Resource A: every attribute with its type.
    let attrs = &rs[0]["resource"]["attributes"];
    let s = |v: &str| json!({ "string_value": v });
    assert_eq!(kv(attrs, "service.name"), s("shop"));
    assert_eq!(kv(attrs, "host.name"), s("web-1"));
    assert_eq!(kv(attrs, "process.pid"), json!({ "int_value": "4242" }));
    assert_eq!(
        kv(attrs, "process.executable.path"),
        s("/opt/py/bin/python3.11")
    );
    assert_eq!(
        kv(attrs, "process.command_line"),
        s("gunicorn app:app -w 2")
    );
    assert_eq!(kv(attrs, "process.runtime.name"), s("cpython"));
    assert_eq!(kv(attrs, "process.runtime.version"), s("3.11.7"));
    assert_eq!(
        kv(attrs, "process.runtime.description"),
        s("CPython 3.11.7")
    );
    assert_eq!(kv(attrs, "telemetry.sdk.name"), s("zerostep"));
    assert_eq!(kv(attrs, "telemetry.sdk.language"), s("python"));
    assert_eq!(kv(attrs, "telemetry.sdk.version"), s("0.3.1"));
    assert_eq!(kv(attrs, "zerostep.technology"), s("gunicorn"));
    assert_eq!(kv(attrs, "zerostep.role"), s("worker"));
    assert_eq!(attrs.as_array().unwrap().len(), 13, "{attrs}");
    // Resource B: unknown values are left out, not sent empty.
    let battrs = rs[1]["resource"]["attributes"].as_array().unwrap();
    assert_eq!(
        kv(&rs[1]["resource"]["attributes"], "service.name"),
        s("billing")
    );
    assert!(!battrs
        .iter()
        .any(|a| a["key"] == "process.executable.path" || a["key"] == "process.command_line"));
    assert_eq!(battrs.len(), 11);

    // Scope.
    for r in rs {
        let ss = r["scope_spans"].as_array().unwrap();
        assert_eq!(ss.len(), 1);
        assert_eq!(
            ss[0]["scope"],
            json!({ "name": "zerostep", "version": "0.3.1" })
        );
    }

    // The root span, every field.
    let spans_a = rs[0]["scope_spans"][0]["spans"].as_array().unwrap();
    assert_eq!(spans_a.len(), 4);
    let root = &spans_a[0];
    let expected_root = json!({
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "flags": 1,
        "name": "GET /users/{id}",
        "kind": "SPAN_KIND_SERVER",
        "start_time_unix_nano": "1700000000123456789",
        "end_time_unix_nano": "1700000000223456789",
        "attributes": [
            { "key": "http.route", "value": { "string_value": "/users/{id}" } },
            { "key": "http.response.status_code", "value": { "int_value": "500" } },
            { "key": "zerostep.cpu_ms", "value": { "double_value": 1.25 } },
            { "key": "zerostep.sampled", "value": { "bool_value": true } },
            { "key": "http.request.header.accept", "value": { "array_value": { "values": [
                { "string_value": "text/html" }, { "string_value": "*/*" } ] } } },
            { "key": "big", "value": { "int_value": "-9223372036854775808" } },
        ],
        "events": [{
            "time_unix_nano": "1700000000200000000",
            "name": "exception",
            "attributes": [
                { "key": "exception.type", "value": { "string_value": "ZeroDivisionError" } },
                { "key": "exception.depth", "value": { "int_value": "3" } },
            ],
        }],
        "status": { "message": "ZeroDivisionError", "code": "STATUS_CODE_ERROR" },
    });
    assert_eq!(root, &expected_root, "root span");
    // No parent: the field is absent (empty bytes), as the spec wants for a root.
    assert!(root.get("parent_span_id").is_none());

    let kinds: Vec<&str> = spans_a[1..]
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "SPAN_KIND_INTERNAL",
            "SPAN_KIND_PRODUCER",
            "SPAN_KIND_CONSUMER"
        ]
    );
    // Unset status: code 0 is the default and MessageToDict leaves it out.
    assert_eq!(spans_a[1]["status"], json!({}));

    let child = &rs[1]["scope_spans"][0]["spans"][0];
    let expected_child = json!({
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "00f067aa0ba902b7",
        "parent_span_id": "b7ad6b7169203331",
        "flags": 1,
        "name": "SELECT users",
        "kind": "SPAN_KIND_CLIENT",
        "start_time_unix_nano": "1700000000130000000",
        "end_time_unix_nano": "1700000000140000000",
        "status": { "code": "STATUS_CODE_OK" },
    });
    assert_eq!(child, &expected_child, "child span");
}

#[test]
fn uncompressed_bodies_decode_too() {
    let rx = Receiver::start();
    let mut cfg = fast_config(&rx.endpoint());
    cfg.compression = Compression::None;
    let exp = OtlpExporter::start(cfg).unwrap();
    exp.submit(batch(&resource("plain", 1), 0..3));
    wait_stats(&exp, "delivery", |s| s.sink.delivered == 3);
    let got = rx.got();
    assert!(got[0].headers.get("content-encoding").is_none());
    let ids = span_ids(&rx.accepted());
    assert_eq!(ids.iter().map(|(_, id)| *id).collect::<Vec<_>>(), [0, 1, 2]);
}

/// Spans per resource arrive exactly once and in the order they were submitted.
fn assert_once_in_order(ids: &[(String, u64)], expected: &[(&str, Vec<u64>)]) {
    for (service, want) in expected {
        let got: Vec<u64> = ids
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(&got, want, "spans of {service}");
    }
    let total: usize = expected.iter().map(|(_, w)| w.len()).sum();
    assert_eq!(ids.len(), total);
}

#[test]
fn a_503_outage_loses_nothing_within_the_bound() {
    let rx = Receiver::start();
    rx.script(std::iter::repeat_n(Reply::status(503), 6));
    let mut cfg = fast_config(&rx.endpoint());
    cfg.max_batch_spans = 128;
    let exp = OtlpExporter::start(cfg).unwrap();
    let (a, b) = (resource("a", 1), resource("b", 2));
    for i in 0..20u64 {
        let r = if i % 2 == 0 { &a } else { &b };
        exp.submit(batch(r, i * 50..(i + 1) * 50));
    }
    let stats = wait_stats(&exp, "all delivered", |s| s.sink.delivered == 1000);
    assert_eq!(stats.sink.dropped, 0);
    assert_eq!(stats.retries, 6, "{stats:?}");
    assert_eq!(stats.sink.errors, 6);
    assert_eq!(stats.last_error, None);
    assert_balanced(&stats);
    let even: Vec<u64> = (0..20u64)
        .filter(|i| i % 2 == 0)
        .flat_map(|i| i * 50..(i + 1) * 50)
        .collect();
    let odd: Vec<u64> = (0..20u64)
        .filter(|i| i % 2 == 1)
        .flat_map(|i| i * 50..(i + 1) * 50)
        .collect();
    assert_once_in_order(&span_ids(&rx.accepted()), &[("a", even), ("b", odd)]);
}

#[test]
fn a_receiver_that_is_down_then_up_gets_everything() {
    let port = free_port();
    let exp = OtlpExporter::start(fast_config(&format!("http://127.0.0.1:{port}"))).unwrap();
    let a = resource("a", 1);
    exp.submit(batch(&a, 0..100));
    let stats = wait_stats(&exp, "connection failures", |s| s.sink.errors >= 3);
    assert!(
        stats
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("retrying"),
        "{stats:?}"
    );
    exp.submit(batch(&a, 100..300));
    let rx = Receiver::on(port);
    let stats = wait_stats(&exp, "all delivered", |s| s.sink.delivered == 300);
    assert_eq!(stats.sink.dropped, 0);
    assert_balanced(&stats);
    assert_once_in_order(&span_ids(&rx.accepted()), &[("a", (0..300).collect())]);
}

#[test]
fn overflow_drops_the_oldest_waiting_spans_and_counts_them() {
    let rx = Receiver::start();
    rx.set_default(Reply::status(503));
    let mut cfg = fast_config(&rx.endpoint());
    cfg.queue_spans = 1000;
    cfg.max_batch_spans = 100;
    let exp = OtlpExporter::start(cfg).unwrap();
    let a = resource("a", 1);
    exp.submit(batch(&a, 0..100));
    // The first batch is now in flight, being retried; the queue fills behind it.
    wait_stats(&exp, "first attempt", |s| s.requests >= 1);
    for i in 1..31u64 {
        exp.submit(batch(&a, i * 100..(i + 1) * 100));
    }
    let stats = exp.otlp_stats();
    assert_eq!(stats.sink.accepted, 3100);
    assert_eq!(stats.sink.dropped, 2000, "{stats:?}");
    assert_eq!(stats.sink.queued, 1100);
    assert_balanced(&stats);

    rx.set_default(Reply::ok());
    let stats = wait_stats(&exp, "recovery", |s| s.sink.delivered == 1100);
    assert_eq!(stats.sink.queued, 0);
    assert_balanced(&stats);
    let expected: Vec<u64> = (0..100).chain(2100..3100).collect();
    assert_once_in_order(&span_ids(&rx.accepted()), &[("a", expected)]);
}

/// A `google.rpc.Status` (what an OTLP receiver puts in an error response), encoded here by hand
/// so the test does not share the exporter's decoder: field 1 `code` (varint), field 2 `message`.
fn rpc_status(code: u8, message: &str) -> Vec<u8> {
    let mut out = vec![0x08, code, 0x12, message.len() as u8];
    out.extend_from_slice(message.as_bytes());
    out
}

#[test]
fn a_400_drops_that_request_only() {
    let rx = Receiver::start();
    rx.script([Reply {
        status: 400,
        headers: vec![("content-type", "application/x-protobuf".into())],
        body: rpc_status(3, "invalid span id"),
    }]);
    let exp = OtlpExporter::start(fast_config(&rx.endpoint())).unwrap();
    let a = resource("a", 1);
    exp.submit(batch(&a, 0..10));
    let stats = wait_stats(&exp, "the refusal", |s| s.failed_requests == 1);
    assert_eq!(stats.sink.dropped, 10);
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.sink.errors, 1);
    let err = stats.last_error.unwrap();
    assert!(err.contains("HTTP 400: invalid span id"), "{err}");

    exp.submit(batch(&a, 10..20));
    let stats = wait_stats(&exp, "the next batch", |s| s.sink.delivered == 10);
    assert_eq!(stats.requests, 2, "a 400 is not retried: {stats:?}");
    assert_balanced(&stats);
    assert_once_in_order(&span_ids(&rx.accepted()), &[("a", (10..20).collect())]);
}

#[test]
fn partial_success_counts_rejected_spans() {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    let rx = Receiver::start();
    rx.script([Reply {
        status: 200,
        headers: vec![("content-type", "application/x-protobuf".into())],
        body: ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "span too old".into(),
            }),
        }
        .encode_to_vec(),
    }]);
    let exp = OtlpExporter::start(fast_config(&rx.endpoint())).unwrap();
    exp.submit(batch(&resource("a", 1), 0..10));
    let stats = wait_stats(&exp, "delivery", |s| {
        s.sink.delivered + s.sink.dropped == 10
    });
    assert_eq!(stats.sink.delivered, 7);
    assert_eq!(stats.rejected, 3);
    assert_eq!(stats.sink.dropped, 3);
    assert!(stats
        .last_error
        .as_deref()
        .unwrap()
        .contains("span too old"));
    assert_balanced(&stats);
}

#[test]
fn retry_after_is_honoured() {
    let rx = Receiver::start();
    rx.script([
        Reply {
            status: 429,
            headers: vec![("retry-after", "2".into())],
            body: vec![],
        },
        Reply {
            status: 503,
            headers: vec![(
                "retry-after",
                httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(4)),
            )],
            body: vec![],
        },
    ]);
    // Without Retry-After the next attempt would come after ~20 ms.
    let exp = OtlpExporter::start(fast_config(&rx.endpoint())).unwrap();
    exp.submit(batch(&resource("a", 1), 0..5));
    let stats = wait_stats(&exp, "delivery", |s| s.sink.delivered == 5);
    assert_eq!(stats.retries, 2);
    let got = rx.got();
    assert_eq!(got.len(), 3);
    let first_gap = got[1].at - got[0].at;
    assert!(first_gap >= Duration::from_millis(1950), "{first_gap:?}");
    // The date was ~4 s after the script was written, which is ~2 s before the second answer;
    // whole-second dates round down, so allow for a second less.
    let second_gap = got[2].at - got[1].at;
    assert!(second_gap >= Duration::from_millis(900), "{second_gap:?}");
}

#[test]
fn shutdown_flushes_then_refuses() {
    let rx = Receiver::start();
    let mut cfg = fast_config(&rx.endpoint());
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.max_batch_spans = 25;
    let exp = OtlpExporter::start(cfg).unwrap();
    let a = resource("a", 1);
    for i in 0..4u64 {
        exp.submit(batch(&a, i * 10..(i + 1) * 10));
    }
    let stats = exp.shutdown(Duration::from_secs(10));
    assert_eq!(stats.sink.delivered, 40, "{stats:?}");
    assert_eq!(stats.requests, 2);
    exp.submit(batch(&a, 40..45));
    let stats = exp.otlp_stats();
    assert_eq!(stats.sink.dropped, 5);
    assert_balanced(&stats);
    assert_once_in_order(&span_ids(&rx.accepted()), &[("a", (0..40).collect())]);
}

#[test]
fn shutdown_with_the_receiver_down_gives_up_at_the_deadline() {
    let port = free_port();
    let exp = OtlpExporter::start(fast_config(&format!("http://127.0.0.1:{port}"))).unwrap();
    exp.submit(batch(&resource("a", 1), 0..700));
    wait_stats(&exp, "a failure", |s| s.sink.errors >= 1);
    let stats = exp.shutdown(Duration::from_millis(300));
    assert_eq!(stats.sink.delivered, 0);
    assert_eq!(stats.sink.dropped, 700, "{stats:?}");
    assert_eq!(stats.sink.queued, 0);
    assert_balanced(&stats);
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let err = |c: OtlpConfig| OtlpExporter::start(c).err().unwrap().to_string();
    assert!(err(OtlpConfig::new("collector:4318")).contains("http://"));
    let mut c = OtlpConfig::new("http://collector:4318");
    c.tls.ca_file = Some("/etc/ca.pem".into());
    assert!(err(c).contains("clear-text"));
    let mut c = OtlpConfig::new("http://collector:4318");
    c.queue_spans = 0;
    assert!(err(c).contains("queue_spans"));
}
