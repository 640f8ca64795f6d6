//! `make bench`: spans per second through `enrich` in the sandbox (the real gunicorn sensor
//! component) against the same rules compiled natively, side by side in one run, for batches of
//! 1, 64 and 512 spans with 10 attributes each.
//!
//! Usage: enrich_bench SENSOR.wasm [SECONDS_PER_CASE]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use zerostep::sensors::{canary, CallStats, Match, Role, SandboxEngine, SandboxLimits};
use zerostep::span::{AttrValue, Attribute, Span, SpanKind, Status, StatusCode};
use zerostep_rules::enrich::{self as rules, OwnedValue, Value};

fn sample_span(i: u64) -> Span {
    let server = i.is_multiple_of(2);
    let mut attributes = vec![
        Attribute::str("http.request.method", "GET"),
        Attribute::str(
            "url.path",
            format!(
                "/users/{}/orders/9f1c0e2a7b3d4e5f{:04x}",
                1000 + i,
                i % 65536
            ),
        ),
        Attribute::str("url.query", "page=2&access_token=s3cr3t&sort=asc"),
        Attribute::int(
            "http.response.status_code",
            if i.is_multiple_of(7) { 503 } else { 200 },
        ),
        Attribute::str("server.address", "127.0.0.1"),
        Attribute::int("server.port", 8000),
        Attribute::str("user_agent.original", "curl/8.5.0"),
        Attribute::str("network.protocol.version", "1.1"),
        Attribute::str("client.address", "127.0.0.1"),
    ];
    if server {
        attributes.push(Attribute::str("url.scheme", "http"));
    } else {
        attributes.push(Attribute::str(
            "db.query.text",
            format!("SELECT * FROM orders WHERE user_id = {i} AND state = 'open'"),
        ));
    }
    Span {
        trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736 + u128::from(i),
        span_id: i + 1,
        parent_span_id: (!server).then_some(i),
        name: "GET".into(),
        kind: if server {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        start_unix_nano: 1,
        end_unix_nano: 2,
        status: Status::default(),
        attributes,
        events: vec![],
    }
}

/// The same rules, called natively on the host's spans, patches applied the same way.
fn enrich_native(spans: &mut [Span]) {
    let mut patches = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let attrs = s.attributes.iter().map(|a| {
            let v = match &a.value {
                AttrValue::Str(v) => Value::Str(v),
                AttrValue::Int(v) => Value::Int(*v),
                AttrValue::Double(v) => Value::Double(*v),
                AttrValue::Bool(v) => Value::Bool(*v),
                AttrValue::StrArray(v) => Value::StrArray(v),
            };
            (a.key.as_str(), v)
        });
        let kind = match s.kind {
            SpanKind::Server => rules::SpanKind::Server,
            SpanKind::Client => rules::SpanKind::Client,
            SpanKind::Internal => rules::SpanKind::Internal,
            SpanKind::Producer => rules::SpanKind::Producer,
            SpanKind::Consumer => rules::SpanKind::Consumer,
        };
        let status = match s.status.code {
            StatusCode::Unset => rules::StatusCode::Unset,
            StatusCode::Ok => rules::StatusCode::Ok,
            StatusCode::Error => rules::StatusCode::Error,
        };
        if let Some(p) = rules::enrich_span(i as u32, &s.name, kind, status, attrs) {
            patches.push(p);
        }
    }
    for p in patches {
        let span = &mut spans[p.index as usize];
        if let Some(n) = p.name {
            span.name = n;
        }
        if let Some(st) = p.status {
            span.status.code = match st.code {
                rules::StatusCode::Unset => StatusCode::Unset,
                rules::StatusCode::Ok => StatusCode::Ok,
                rules::StatusCode::Error => StatusCode::Error,
            };
            span.status.message = st.message;
        }
        span.attributes
            .retain(|a| !p.remove_attributes.contains(&a.key.as_str()));
        for (k, v) in p.set_attributes {
            let value = match v {
                OwnedValue::Str(v) => AttrValue::Str(v),
                OwnedValue::Int(v) => AttrValue::Int(v),
                OwnedValue::Double(v) => AttrValue::Double(v),
                OwnedValue::Bool(v) => AttrValue::Bool(v),
                OwnedValue::StrArray(v) => AttrValue::StrArray(v),
            };
            span.set_attr(Attribute {
                key: k.to_string(),
                value,
            });
        }
    }
}

/// Runs `f` on fresh copies of `batch` for about `budget`; returns spans per second.
fn measure(batch: &[Span], budget: Duration, mut f: impl FnMut(&mut [Span])) -> f64 {
    let mut copies: Vec<Vec<Span>> = (0..64).map(|_| batch.to_vec()).collect();
    // Warm-up.
    for c in copies.iter_mut().take(4) {
        f(c);
    }
    let mut spans = 0u64;
    let mut busy = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < budget {
        copies = (0..64).map(|_| batch.to_vec()).collect();
        // Only the enrichment is timed, not the copying.
        let t = Instant::now();
        for c in copies.iter_mut() {
            f(c);
            spans += c.len() as u64;
        }
        busy += t.elapsed();
    }
    spans as f64 / busy.as_secs_f64()
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let sensor = PathBuf::from(
        args.next()
            .context("usage: enrich_bench SENSOR.wasm [SECONDS_PER_CASE]")?,
    );
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);
    let engine = Arc::new(SandboxEngine::new(SandboxLimits::default(), None)?);
    let loaded = canary::load(&engine, &sensor).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stats = CallStats::default();
    let matched = Match {
        technology: "gunicorn".into(),
        role: Role::Worker,
        service_name: "bench".into(),
        service_name_source: "bench".into(),
        instrumentations: vec![],
        injection: Default::default(),
    };
    // Both paths must produce the same spans.
    let mut a: Vec<Span> = (0..64).map(sample_span).collect();
    let mut b = a.clone();
    enrich_native(&mut a);
    loaded
        .enrich(&stats, &matched, &mut b)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if std::env::var_os("ENRICH_BENCH_NO_CHECK").is_none() {
        anyhow::ensure!(a == b, "sandboxed and native enrichment disagree");
    }

    println!(
        "enrich: {} {} (contract {}), 10 attributes per span, {secs}s per case",
        loaded.info.name, loaded.info.version, loaded.info.contract_version
    );
    println!(
        "{:>6} {:>16} {:>16} {:>8} {:>14} {:>14}",
        "batch", "native spans/s", "sandbox spans/s", "ratio", "native us/span", "sandbox us/span"
    );
    let sizes: Vec<usize> = std::env::var("ENRICH_BENCH_BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 64, 512]);
    for n in sizes {
        let batch: Vec<Span> = (0..n as u64).map(sample_span).collect();
        // Interleave the two so that machine noise hits both alike.
        let (mut native, mut sandbox) = (0.0, 0.0);
        for _ in 0..3 {
            native += measure(&batch, budget / 3, enrich_native);
            sandbox += measure(&batch, budget / 3, |s| {
                let _ = loaded.enrich(&stats, &matched, s);
            });
        }
        let (native, sandbox) = (native / 3.0, sandbox / 3.0);
        println!(
            "{n:>6} {native:>16.0} {sandbox:>16.0} {:>7.2}x {:>14.3} {:>14.3}",
            native / sandbox,
            1e6 / native,
            1e6 / sandbox
        );
    }
    let s = stats.snapshot();
    println!(
        "sandbox calls: {} errors: {} traps: {}",
        s.calls, s.errors, s.traps
    );
    Ok(())
}
