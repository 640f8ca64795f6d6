//! `GET /metrics` in the Prometheus text exposition format (0.0.4). Rendered by hand: a few
//! dozen lines of counters do not justify a metrics registry, and every value is read from the
//! stage that owns it at scrape time.
use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

pub async fn render(State(state): State<ApiState>) -> impl IntoResponse {
    let mut o = Out(String::new());
    let sensors = state.sensors.status();
    o.family(
        "zerostep_sensor_calls_total",
        "counter",
        "Calls into each sensor.",
    );
    for s in &sensors {
        o.sample(
            "zerostep_sensor_calls_total",
            &[("sensor", &s.name)],
            s.calls.calls as f64,
        );
    }
    o.family(
        "zerostep_sensor_errors_total",
        "counter",
        "Sensor calls that failed (trap, limit, invalid output).",
    );
    for s in &sensors {
        o.sample(
            "zerostep_sensor_errors_total",
            &[("sensor", &s.name)],
            s.calls.errors as f64,
        );
    }
    o.family("zerostep_sensor_traps_total", "counter", "Sensor traps.");
    for s in &sensors {
        o.sample(
            "zerostep_sensor_traps_total",
            &[("sensor", &s.name)],
            s.calls.traps as f64,
        );
    }
    o.family(
        "zerostep_api_refused_total",
        "counter",
        "API requests refused, by reason (host: DNS rebinding; content_type, origin: cross-site; \
         credential: no or wrong token).",
    );
    for (reason, n) in super::auth::refused_counts() {
        o.sample(
            "zerostep_api_refused_total",
            &[("reason", reason)],
            n as f64,
        );
    }
    if let Some(a) = &state.agent {
        let st = a.orchestrator.stats().await;
        o.family(
            "zerostep_injections_total",
            "counter",
            "Injection attempts by outcome.",
        );
        for (outcome, v) in [
            ("ok", st.injections_ok),
            ("failed", st.injections_failed),
            ("refused", st.injections_refused),
            ("not_ready", st.injections_not_ready),
        ] {
            o.sample(
                "zerostep_injections_total",
                &[("outcome", outcome)],
                v as f64,
            );
        }
        o.one(
            "zerostep_inherited_total",
            "counter",
            "Processes traced because they were forked from a traced master.",
            st.inherited as f64,
        );
        let procs = a.orchestrator.processes().await;
        o.family(
            "zerostep_processes",
            "gauge",
            "Python processes the agent tracks, by state.",
        );
        for state_name in [
            "seen",
            "matched",
            "injecting",
            "awaiting_tracer",
            "traced",
            "failed",
            "excluded",
        ] {
            let n = procs.iter().filter(|p| p.state == state_name).count();
            o.sample("zerostep_processes", &[("state", state_name)], n as f64);
        }
        let d = a.discovery.stats();
        o.one(
            "zerostep_discovery_connector_active",
            "gauge",
            "1 when exec/fork/exit events come from the proc connector, 0 on rescans alone.",
            if d.connector_active { 1.0 } else { 0.0 },
        );
        o.one(
            "zerostep_discovery_rescans_total",
            "counter",
            "Full /proc rescans.",
            d.rescans as f64,
        );
        o.one(
            "zerostep_discovery_maps_reads_total",
            "counter",
            "Processes whose memory maps were read (only new or exec'd ones).",
            d.maps_reads as f64,
        );
        o.one(
            "zerostep_discovery_connector_overruns_total",
            "counter",
            "Proc connector overruns (each repaired by a rescan).",
            d.connector_overruns as f64,
        );
        let i = a.intake.stats();
        o.one(
            "zerostep_intake_peers",
            "gauge",
            "Tracers connected now.",
            a.intake.peers().len() as f64,
        );
        o.one(
            "zerostep_spans_received_total",
            "counter",
            "Spans received from traced processes.",
            i.spans as f64,
        );
        let p = a.pipeline.stats();
        o.one(
            "zerostep_spans_enriched_total",
            "counter",
            "Spans that left the pipeline for the sinks.",
            p.spans_out as f64,
        );
        o.one(
            "zerostep_enrich_failures_total",
            "counter",
            "Enrichment calls that failed (the spans went on with the native baseline redaction).",
            p.enrich_failures as f64,
        );
        o.one(
            "zerostep_pipeline_redacted_natively_total",
            "counter",
            "Spans the native baseline redaction changed (their sensor did not enrich them).",
            p.redacted_natively as f64,
        );
        o.family(
            "zerostep_intake_cutoffs_total",
            "counter",
            "Peers cut off or refused, by reason.",
        );
        for (reason, v) in [
            ("not_injected", i.rejected_peers),
            ("malformed", i.cut_off_malformed),
            ("oversize", i.cut_off_oversize),
            ("flooding", i.cut_off_flooding),
            ("over_budget", i.cut_off_budget),
            ("unauthenticated", i.cut_off_unauthenticated),
            ("too_many_connections", i.rejected_connections),
        ] {
            o.sample(
                "zerostep_intake_cutoffs_total",
                &[("reason", reason)],
                v as f64,
            );
        }
        let sinks: Vec<_> = a.sinks.iter().map(|s| (s.name(), s.stats())).collect();
        let in_process: u64 = a.intake.peers().iter().map(|p| p.dropped_in_process).sum();
        o.family(
            "zerostep_spans_dropped_total",
            "counter",
            "Spans dropped, by where.",
        );
        o.sample(
            "zerostep_spans_dropped_total",
            &[("stage", "in_process")],
            in_process as f64,
        );
        o.sample(
            "zerostep_spans_dropped_total",
            &[("stage", "intake_queue")],
            i.queue_dropped_spans as f64,
        );
        o.sample(
            "zerostep_spans_dropped_total",
            &[("stage", "unattributed")],
            p.unattributed_spans as f64,
        );
        for (name, s) in &sinks {
            o.sample(
                "zerostep_spans_dropped_total",
                &[("stage", name)],
                s.dropped as f64,
            );
        }
        o.family(
            "zerostep_spans_delivered_total",
            "counter",
            "Spans each sink stored or sent.",
        );
        for (name, s) in &sinks {
            o.sample(
                "zerostep_spans_delivered_total",
                &[("sink", name)],
                s.delivered as f64,
            );
        }
        o.family(
            "zerostep_sink_errors_total",
            "counter",
            "Failed writes or requests per sink.",
        );
        for (name, s) in &sinks {
            o.sample(
                "zerostep_sink_errors_total",
                &[("sink", name)],
                s.errors as f64,
            );
        }
        o.family("zerostep_queue_depth", "gauge", "Items waiting, by queue.");
        o.sample(
            "zerostep_queue_depth",
            &[("queue", "intake_batches")],
            p.queue_depth as f64,
        );
        for (name, s) in &sinks {
            o.sample("zerostep_queue_depth", &[("queue", name)], s.queued as f64);
        }
        if let Some(otlp) = &a.otlp {
            otlp_metrics(&mut o, &otlp.otlp_stats());
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o.0)
}

/// The OTLP exporter's own counters: why spans were dropped, and what the connection did.
fn otlp_metrics(o: &mut Out, s: &crate::export::OtlpStats) {
    o.family(
        "zerostep_otlp_spans_dropped_total",
        "counter",
        "Spans the OTLP exporter dropped, by reason.",
    );
    for (reason, v) in [
        ("queue_full", s.dropped_queue_full),
        ("refused", s.dropped_refused),
        ("rejected", s.rejected),
        ("shutdown", s.dropped_shutdown),
    ] {
        o.sample(
            "zerostep_otlp_spans_dropped_total",
            &[("reason", reason)],
            v as f64,
        );
    }
    o.one(
        "zerostep_otlp_requests_total",
        "counter",
        "OTLP export requests, retries included.",
        s.requests as f64,
    );
    o.one(
        "zerostep_otlp_retries_total",
        "counter",
        "OTLP export requests made again after a retryable failure.",
        s.retries as f64,
    );
    o.one(
        "zerostep_otlp_sent_bytes_total",
        "counter",
        "Bytes of OTLP request bodies sent.",
        s.bytes_sent as f64,
    );
    o.one(
        "zerostep_otlp_connect_failures_total",
        "counter",
        "TCP connections to the OTLP endpoint that failed.",
        s.connect_failures as f64,
    );
    o.one(
        "zerostep_otlp_tls_handshake_failures_total",
        "counter",
        "TLS handshakes with the OTLP endpoint that failed (certificate not trusted or not \
         matching, client certificate refused).",
        s.tls_handshake_failures as f64,
    );
}
