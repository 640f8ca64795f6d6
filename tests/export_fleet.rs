//! OTLP export for a fleet: OTLP/gRPC and OTLP/HTTP, in clear text and over TLS (CA file, server
//! name, mutual TLS), against real receivers started here on 127.0.0.1
//! (tests/fixtures/otlp_receiver.py: grpcio and the official opentelemetry-proto schema, venv
//! `otlp-grpc` in tests/venvs.txt), with a CA and certificates made by the test (rcgen). What a
//! receiver got is decoded by the official schema and checked field by field; faults (endpoint
//! down, retryable and final gRPC codes, RetryInfo, partial success, refused certificates) are
//! checked through what the receiver got and the exporter's counters.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};

use support::*;
use zerostep::export::{OtlpConfig, OtlpExporter, OtlpStats, Protocol, RetryPolicy};
use zerostep::pipeline::{EnrichedBatch, Resource, Sink};
use zerostep::span::{AttrValue, Attribute, Event, Span, SpanKind, Status, StatusCode};

/// The name in the receiver's certificate (and no IP address: connecting to 127.0.0.1 needs the
/// server-name override).
const SERVER_NAME: &str = "collector.test";

// ---------------------------------------------------------------- certificates

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    dir: &Path,
    name: &str,
    cn: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) {
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// A test CA with a server and a client certificate, and a second CA nobody trusts with a
/// client certificate of its own.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca1 = ca("zerostep test CA");
    std::fs::write(d.join("ca.pem"), ca1.pem()).unwrap();
    leaf(
        d,
        "server",
        SERVER_NAME,
        vec![SERVER_NAME.into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca1,
    );
    leaf(
        d,
        "client",
        "agent-1",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca1,
    );
    let ca2 = ca("someone else's CA");
    std::fs::write(d.join("other-ca.pem"), ca2.pem()).unwrap();
    leaf(
        d,
        "stranger",
        "stranger",
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca2,
    );
    Pki { dir }
}

// ---------------------------------------------------------------- the receiver

#[derive(Clone, Copy, PartialEq)]
enum Tls {
    Off,
    On,
    /// Client certificates signed by the test CA required.
    Mutual,
}

struct Receiver {
    _proc: Proc,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(protocol: Protocol, tls: Tls, pki: &Pki, script: Value) -> Receiver {
        Receiver::on(free_port(), protocol, tls, pki, script)
    }

    fn on(port: u16, protocol: Protocol, tls: Tls, pki: &Pki, script: Value) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got.jsonl");
        let script_file = dir.path().join("script.json");
        std::fs::write(&script_file, script.to_string()).unwrap();
        let mut cmd = Command::new(venv_bin("otlp-grpc", "python"));
        cmd.arg(repo_root().join("tests/fixtures/otlp_receiver.py"))
            .arg("--protocol")
            .arg(match protocol {
                Protocol::Grpc => "grpc",
                Protocol::HttpProtobuf => "http",
            })
            .arg("--port")
            .arg(port.to_string())
            .arg("--out")
            .arg(&out)
            .arg("--script")
            .arg(&script_file)
            // The refusals the tests provoke are expected; grpcio would log each one.
            .env("GRPC_VERBOSITY", "ERROR")
            .stdout(Stdio::null());
        if tls != Tls::Off {
            cmd.arg("--cert")
                .arg(pki.path("server.pem"))
                .arg("--key")
                .arg(pki.path("server.key"));
        }
        if tls == Tls::Mutual {
            cmd.arg("--client-ca").arg(pki.path("ca.pem"));
        }
        let proc = Proc::spawn("otlp receiver", &mut cmd);
        assert!(
            wait_for_port(port, Duration::from_secs(30)),
            "the receiver did not listen on {port}"
        );
        Receiver {
            _proc: proc,
            port,
            out,
            _dir: dir,
        }
    }

    fn endpoint(&self, tls: bool) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if tls { "https" } else { "http" },
            self.port
        )
    }

    /// Every request received, in order, as the receiver decoded it.
    fn got(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

// ---------------------------------------------------------------- spans and exporters

fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.into(),
        host_name: "web-1".into(),
        pid: 4242,
        executable: "/opt/py/bin/python3.11".into(),
        command_line: "gunicorn app:app".into(),
        runtime_version: "3.11.7".into(),
        technology: "gunicorn".into(),
        role: "worker".into(),
        tracer_version: "0.3.1".into(),
    })
}

const TRACE_ID: u128 = 0x0af7651916cd43dd8448eb211c80319c;

/// A server span with an attribute of every type, an event and an error status.
fn rich_span() -> Span {
    Span {
        trace_id: TRACE_ID,
        span_id: 0xb7ad6b7169203331,
        parent_span_id: Some(0x00f067aa0ba902b7),
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
        ],
        events: vec![Event {
            name: "exception".into(),
            time_unix_nano: 1_700_000_000_200_000_000,
            attributes: vec![Attribute::str("exception.type", "ZeroDivisionError")],
        }],
    }
}

fn expected_rich_span() -> Value {
    json!({
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "parent_span_id": "00f067aa0ba902b7",
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
        ],
        "events": [{
            "time_unix_nano": "1700000000200000000",
            "name": "exception",
            "attributes": [
                { "key": "exception.type", "value": { "string_value": "ZeroDivisionError" } },
            ],
        }],
        "status": { "message": "ZeroDivisionError", "code": "STATUS_CODE_ERROR" },
    })
}

/// The decoded request holds exactly the rich span under the full resource and scope.
fn assert_rich_request(req: &Value) {
    let s = |v: &str| json!({ "string_value": v });
    let expected_resource = json!({ "attributes": [
        { "key": "service.name", "value": s("shop") },
        { "key": "host.name", "value": s("web-1") },
        { "key": "process.executable.path", "value": s("/opt/py/bin/python3.11") },
        { "key": "process.command_line", "value": s("gunicorn app:app") },
        { "key": "process.runtime.name", "value": s("cpython") },
        { "key": "process.runtime.version", "value": s("3.11.7") },
        { "key": "process.runtime.description", "value": s("CPython 3.11.7") },
        { "key": "telemetry.sdk.name", "value": s("zerostep") },
        { "key": "telemetry.sdk.language", "value": s("python") },
        { "key": "telemetry.sdk.version", "value": s("0.3.1") },
        { "key": "zerostep.technology", "value": s("gunicorn") },
        { "key": "zerostep.role", "value": s("worker") },
        { "key": "process.pid", "value": { "int_value": "4242" } },
    ]});
    let expected = json!({ "resource_spans": [{
        "resource": expected_resource,
        "scope_spans": [{
            "scope": { "name": "zerostep", "version": "0.3.1" },
            "spans": [expected_rich_span()],
        }],
    }]});
    assert_eq!(req, &expected);
}

fn plain_span(id: u64) -> Span {
    Span {
        span_id: id,
        parent_span_id: None,
        name: format!("GET /{id}"),
        status: Status::default(),
        attributes: vec![],
        events: vec![],
        ..rich_span()
    }
}

fn batch(res: &Arc<Resource>, ids: std::ops::Range<u64>) -> Arc<EnrichedBatch> {
    Arc::new(EnrichedBatch {
        resource: res.clone(),
        spans: ids.map(plain_span).collect(),
    })
}

/// span ids of every span received, in order.
fn span_ids(got: &[Value]) -> Vec<u64> {
    let mut out = vec![];
    for g in got {
        for rs in g["request"]["resource_spans"].as_array().unwrap() {
            for ss in rs["scope_spans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    out.push(u64::from_str_radix(s["span_id"].as_str().unwrap(), 16).unwrap());
                }
            }
        }
    }
    out
}

fn config(endpoint: &str, protocol: Protocol) -> OtlpConfig {
    let mut c = OtlpConfig::new(endpoint);
    c.protocol = protocol;
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

/// TLS trusting the test CA, checking the receiver's certificate for its real name.
fn tls_config(rx: &Receiver, protocol: Protocol, pki: &Pki) -> OtlpConfig {
    let mut c = config(&rx.endpoint(true), protocol);
    c.tls.ca_file = Some(pki.path("ca.pem"));
    c.tls.server_name = Some(SERVER_NAME.into());
    c
}

fn with_client_cert(mut c: OtlpConfig, pki: &Pki, name: &str) -> OtlpConfig {
    c.tls.client_cert_file = Some(pki.path(&format!("{name}.pem")));
    c.tls.client_key_file = Some(pki.path(&format!("{name}.key")));
    c
}

fn wait_stats(exp: &OtlpExporter, what: &str, f: impl Fn(&OtlpStats) -> bool) -> OtlpStats {
    let ok = wait_until(Duration::from_secs(30), || f(&exp.otlp_stats()));
    let stats = exp.otlp_stats();
    assert!(ok, "timed out waiting for {what}: {stats:?}");
    stats
}

/// Every span accepted is delivered, dropped (for a reason) or still queued.
fn assert_balanced(s: &OtlpStats) {
    assert_eq!(
        s.sink.accepted,
        s.sink.delivered + s.sink.dropped + s.sink.queued,
        "{s:?}"
    );
    assert_eq!(
        s.sink.dropped,
        s.dropped_queue_full + s.dropped_refused + s.rejected + s.dropped_shutdown,
        "{s:?}"
    );
}

fn send_rich(exp: &OtlpExporter) {
    exp.submit(Arc::new(EnrichedBatch {
        resource: resource("shop"),
        spans: vec![rich_span()],
    }));
}

// ---------------------------------------------------------------- protocols and fields

#[test]
fn grpc_in_clear_text_every_field_decodes() {
    let pki = pki();
    let rx = Receiver::start(Protocol::Grpc, Tls::Off, &pki, json!([]));
    let mut c = config(&rx.endpoint(false), Protocol::Grpc);
    c.headers = vec![("X-Api-Key".into(), "secret-1".into())];
    let exp = OtlpExporter::start(c).unwrap();
    assert_eq!(exp.url(), rx.endpoint(false));
    send_rich(&exp);
    let stats = exp.shutdown(Duration::from_secs(10));
    assert_eq!(stats.sink.delivered, 1, "{stats:?}");
    assert_eq!((stats.requests, stats.tls_handshake_failures), (1, 0));
    assert_balanced(&stats);
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["headers"]["x-api-key"], "secret-1");
    let ua = got[0]["headers"]["user-agent"].as_str().unwrap();
    assert!(ua.starts_with("zerostep/"), "{ua}");
    assert_rich_request(&got[0]["request"]);
}

#[test]
fn both_protocols_over_mutual_tls_decode_every_field() {
    let pki = pki();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let rx = Receiver::start(protocol, Tls::Mutual, &pki, json!([]));
        let mut c = with_client_cert(tls_config(&rx, protocol, &pki), &pki, "client");
        c.headers = vec![("x-tenant".into(), "t1".into())];
        let exp = OtlpExporter::start(c).unwrap();
        send_rich(&exp);
        let stats = exp.shutdown(Duration::from_secs(10));
        assert_eq!(stats.sink.delivered, 1, "{protocol:?}: {stats:?}");
        assert_eq!(stats.tls_handshake_failures, 0, "{stats:?}");
        let got = rx.got();
        assert_eq!(got.len(), 1, "{protocol:?}");
        assert_eq!(got[0]["client_cn"], "agent-1", "{protocol:?}");
        assert_eq!(got[0]["headers"]["x-tenant"], "t1");
        if protocol == Protocol::HttpProtobuf {
            assert_eq!(got[0]["path"], "/v1/traces");
            assert_eq!(got[0]["headers"]["content-type"], "application/x-protobuf");
            assert_eq!(got[0]["headers"]["content-encoding"], "gzip");
        }
        assert_rich_request(&got[0]["request"]);
    }
}

// ---------------------------------------------------------------- TLS refusals

/// Sends one span to a receiver that must refuse the TLS session; returns the stats once the
/// refusal was seen.
fn refused(c: OtlpConfig) -> OtlpStats {
    let exp = OtlpExporter::start(c).unwrap();
    exp.submit(batch(&resource("shop"), 0..1));
    // The first attempt may see the refusal as a reset connection; the reason says TLS once a
    // handshake failure was seen.
    let stats = wait_stats(&exp, "a handshake failure reported as such", |s| {
        s.tls_handshake_failures >= 1
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("TLS handshake failed or refused"))
    });
    assert_eq!(stats.sink.delivered, 0, "{stats:?}");
    let stats = exp.shutdown(Duration::from_millis(200));
    assert_eq!(stats.dropped_shutdown, 1, "{stats:?}");
    assert_balanced(&stats);
    stats
}

#[test]
fn mutual_tls_refuses_a_missing_or_foreign_client_certificate() {
    let pki = pki();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let rx = Receiver::start(protocol, Tls::Mutual, &pki, json!([]));
        refused(tls_config(&rx, protocol, &pki));
        refused(with_client_cert(
            tls_config(&rx, protocol, &pki),
            &pki,
            "stranger",
        ));
        assert!(rx.got().is_empty(), "{protocol:?}: {:?}", rx.got());
    }
}

#[test]
fn a_certificate_that_is_untrusted_or_for_another_name_is_refused() {
    let pki = pki();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let rx = Receiver::start(protocol, Tls::On, &pki, json!([]));
        // The certificate names collector.test, not 127.0.0.1.
        let mut c = tls_config(&rx, protocol, &pki);
        c.tls.server_name = None;
        let stats = refused(c);
        let err = stats.last_error.unwrap();
        assert!(err.contains("not valid for name"), "{protocol:?}: {err}");
        let mut c = tls_config(&rx, protocol, &pki);
        c.tls.server_name = Some("other.test".into());
        refused(c);
        let mut c = tls_config(&rx, protocol, &pki);
        c.tls.ca_file = Some(pki.path("other-ca.pem"));
        let err = refused(c).last_error.unwrap();
        assert!(err.contains("UnknownIssuer"), "{protocol:?}: {err}");
        assert!(rx.got().is_empty(), "{protocol:?}");
        // And the right settings work against the same receiver.
        let exp = OtlpExporter::start(tls_config(&rx, protocol, &pki)).unwrap();
        exp.submit(batch(&resource("shop"), 0..3));
        let stats = exp.shutdown(Duration::from_secs(10));
        assert_eq!(stats.sink.delivered, 3, "{stats:?}");
        assert_eq!(span_ids(&rx.got()), [0, 1, 2]);
    }
}

#[test]
fn https_to_a_clear_text_receiver_never_falls_back() {
    let pki = pki();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let rx = Receiver::start(protocol, Tls::Off, &pki, json!([]));
        refused(tls_config(&rx, protocol, &pki));
        assert!(rx.got().is_empty(), "{protocol:?}: {:?}", rx.got());
    }
}

#[test]
fn bad_tls_files_stop_the_start_with_the_reason() {
    let pki = pki();
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let base = || {
        let mut c = config("https://127.0.0.1:1", Protocol::Grpc);
        c.tls.ca_file = Some(pki.path("ca.pem"));
        c
    };
    let err = |c: OtlpConfig| OtlpExporter::start(c).err().unwrap().to_string();

    let mut c = base();
    c.tls.ca_file = Some(pki.path("missing.pem"));
    let e = err(c);
    assert!(e.contains("CA file") && e.contains("missing.pem"), "{e}");

    let mut c = base();
    c.tls.ca_file = Some(garbage.clone());
    let e = err(c);
    assert!(
        e.contains("no PEM certificate") && e.contains("garbage.pem"),
        "{e}"
    );

    let mut c = base();
    c.tls.client_cert_file = Some(pki.path("client.pem"));
    assert!(err(c).contains("needs its key"));

    let mut c = base();
    c.tls.client_key_file = Some(pki.path("client.key"));
    assert!(err(c).contains("needs its certificate"));

    let mut c = with_client_cert(base(), &pki, "client");
    c.tls.client_key_file = Some(garbage);
    let e = err(c);
    assert!(e.contains("client key") && e.contains("garbage.pem"), "{e}");

    // A key that is not the certificate's.
    let mut c = with_client_cert(base(), &pki, "client");
    c.tls.client_key_file = Some(pki.path("server.key"));
    let e = err(c);
    assert!(
        e.contains("client certificate") && e.contains("server.key"),
        "{e}"
    );

    let mut c = base();
    c.tls.server_name = Some("bad name!".into());
    assert!(err(c).contains("server name"));

    // TLS settings on a clear-text endpoint: refused rather than silently unused.
    let mut c = base();
    c.endpoint = "http://127.0.0.1:1".into();
    assert!(err(c).contains("clear-text"));
}

// ---------------------------------------------------------------- gRPC faults

#[test]
fn grpc_unavailable_then_ok_loses_nothing_in_order() {
    let pki = pki();
    let rx = Receiver::start(
        Protocol::Grpc,
        Tls::Off,
        &pki,
        json!([{ "grpc": "UNAVAILABLE", "message": "restarting" }, { "grpc": "UNAVAILABLE" },
               { "grpc": "DEADLINE_EXCEEDED" }]),
    );
    let mut c = config(&rx.endpoint(false), Protocol::Grpc);
    c.max_batch_spans = 100;
    let exp = OtlpExporter::start(c).unwrap();
    let a = resource("shop");
    for i in 0..5u64 {
        exp.submit(batch(&a, i * 60..(i + 1) * 60));
    }
    let stats = wait_stats(&exp, "all delivered", |s| s.sink.delivered == 300);
    assert_eq!(stats.retries, 3, "{stats:?}");
    assert_eq!(stats.sink.errors, 3);
    assert_eq!(stats.sink.dropped, 0);
    assert_eq!(stats.last_error, None);
    assert_balanced(&stats);
    // The refused attempts carried the same spans again.
    let got = rx.got();
    let accepted: Vec<Value> = got
        .into_iter()
        .filter(|g| g["reply"] == json!({}))
        .collect();
    assert_eq!(span_ids(&accepted), (0..300).collect::<Vec<_>>());
}

#[test]
fn grpc_resource_exhausted_waits_for_retry_info_or_drops() {
    let pki = pki();
    let rx = Receiver::start(
        Protocol::Grpc,
        Tls::Off,
        &pki,
        json!([
            { "grpc": "RESOURCE_EXHAUSTED", "message": "slow down", "retry_delay_ms": 1500 },
            {},
            { "grpc": "RESOURCE_EXHAUSTED", "message": "quota gone" },
            { "grpc": "INVALID_ARGUMENT", "message": "bad span" },
            { "rejected": 2, "message": "span too old" },
        ]),
    );
    let exp = OtlpExporter::start(config(&rx.endpoint(false), Protocol::Grpc)).unwrap();
    let a = resource("shop");
    // One batch per step, each after the previous was settled.
    exp.submit(batch(&a, 0..5));
    let stats = wait_stats(&exp, "the throttled batch", |s| s.sink.delivered == 5);
    assert_eq!(stats.retries, 1);
    let got = rx.got();
    // Without RetryInfo the next attempt would come after ~20 ms.
    let gap = got[1]["at"].as_f64().unwrap() - got[0]["at"].as_f64().unwrap();
    assert!(gap >= 1.45, "RetryInfo of 1.5 s not honoured: {gap}");

    exp.submit(batch(&a, 5..10));
    let stats = wait_stats(&exp, "RESOURCE_EXHAUSTED without RetryInfo", |s| {
        s.failed_requests == 1
    });
    assert_eq!(stats.dropped_refused, 5);
    assert!(stats.last_error.unwrap().contains("quota gone"));
    exp.submit(batch(&a, 10..20));
    let stats = wait_stats(&exp, "INVALID_ARGUMENT", |s| s.failed_requests == 2);
    assert_eq!(stats.dropped_refused, 15);
    assert!(stats
        .last_error
        .unwrap()
        .contains("InvalidArgument: bad span"));
    exp.submit(batch(&a, 20..30));
    let stats = wait_stats(&exp, "partial success", |s| s.rejected == 2);
    assert_eq!(stats.sink.delivered, 5 + 8);
    assert!(stats
        .last_error
        .as_deref()
        .unwrap()
        .contains("span too old"));
    assert_eq!(stats.retries, 1, "only the throttled batch was retried");
    assert_balanced(&stats);
    // Throttled, its retry, two refusals, the partial success.
    assert_eq!(rx.got().len(), 5);
}

#[test]
fn grpc_endpoint_down_then_up_gets_everything_and_overflow_drops_the_oldest() {
    let pki = pki();
    let port = free_port();
    let mut c = config(&format!("http://127.0.0.1:{port}"), Protocol::Grpc);
    c.queue_spans = 1000;
    c.max_batch_spans = 100;
    let exp = OtlpExporter::start(c).unwrap();
    let a = resource("shop");
    exp.submit(batch(&a, 0..100));
    // The first batch is in flight, being retried; the queue fills behind it.
    let stats = wait_stats(&exp, "connection failures", |s| s.connect_failures >= 2);
    assert!(
        stats
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("retrying"),
        "{stats:?}"
    );
    for i in 1..31u64 {
        exp.submit(batch(&a, i * 100..(i + 1) * 100));
    }
    let stats = exp.otlp_stats();
    assert_eq!(stats.dropped_queue_full, 2000, "{stats:?}");
    assert_eq!(stats.sink.queued, 1100);
    assert_eq!(stats.tls_handshake_failures, 0);
    assert_balanced(&stats);

    let rx = Receiver::on(port, Protocol::Grpc, Tls::Off, &pki, json!([]));
    let stats = wait_stats(&exp, "recovery", |s| s.sink.delivered == 1100);
    assert_eq!(stats.sink.queued, 0);
    assert_balanced(&stats);
    let expected: Vec<u64> = (0..100).chain(2100..3100).collect();
    assert_eq!(span_ids(&rx.got()), expected);
}

// ---------------------------------------------------------------- the agent and its environment

/// A config file for an agent that traces nothing (scope: descendants of this test process,
/// which has no Python children; no sensors).
fn agent_config(dir: &Path, port: u16) -> PathBuf {
    std::fs::create_dir_all(dir.join("sensors")).unwrap();
    let p = dir.join("zerostep.toml");
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nsensors_dir = \"{}\"\n\
             [scope]\ndescendants_of = [{}]\n",
            dir.join("state").display(),
            dir.join("sensors").display(),
            std::process::id()
        ),
    )
    .unwrap();
    p
}

#[test]
fn the_agent_takes_the_standard_environment_and_refuses_a_bad_ca_file_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = agent_config(dir.path(), port);
    let agent = |cmd: &mut Command| {
        cmd.arg("agent")
            .arg("--config")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    };

    let missing = dir.path().join("missing-ca.pem");
    let mut cmd = Command::new(zerostep_bin());
    agent(&mut cmd);
    let out = cmd
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CA file") && err.contains(&*missing.to_string_lossy()),
        "{err}"
    );

    let mut cmd = Command::new(zerostep_bin());
    agent(&mut cmd);
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    let _agent = Proc::spawn("zerostep agent", &mut cmd);
    // /metrics needs the API token (tests/api_auth.rs), which the agent writes at start.
    let state = dir.path().join("state");
    let metrics = || {
        http_get_auth(port, "/metrics", &api_token(&state))
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    };
    assert!(
        wait_until(Duration::from_secs(30), || metrics().is_some()),
        "agent did not come up: {}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    let body = metrics().unwrap();
    for line in [
        "zerostep_otlp_spans_dropped_total{reason=\"queue_full\"} 0",
        "zerostep_otlp_tls_handshake_failures_total 0",
    ] {
        assert!(body.contains(line), "{line} not in /metrics:\n{body}");
    }
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(
        log.contains("OTLP export started") && log.contains("https://127.0.0.1:1"),
        "{log}"
    );
    assert!(log.contains("grpc"), "{log}");
}
