//! Spans and their process's resource → an OTLP `ExportTraceServiceRequest` (the generated
//! opentelemetry-proto types), then protobuf bytes, gzipped when asked.
use std::io::Write;
use std::sync::Arc;

use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status as OtlpStatus,
};
use prost::Message;

use super::config::Compression;
use super::queue::Part;
use crate::pipeline::Resource;
use crate::span::{AttrValue, Attribute, Event, Span, SpanKind, StatusCode};

/// The instrumentation scope every span is reported under.
pub const SCOPE_NAME: &str = "zerostep";
/// W3C trace flags: the tracer only sends sampled spans.
const FLAGS_SAMPLED: u32 = 0x01;

/// One request body for `parts`: a `ResourceSpans` per distinct resource, in first-seen order,
/// each span in the order it was queued.
pub(crate) fn request(parts: &[Part]) -> ExportTraceServiceRequest {
    let mut groups: Vec<(&Arc<Resource>, Vec<OtlpSpan>)> = Vec::new();
    for part in parts {
        let resource = &part.batch.resource;
        let idx = match groups
            .iter()
            .position(|(r, _)| Arc::ptr_eq(r, resource) || r == &resource)
        {
            Some(i) => i,
            None => {
                groups.push((resource, Vec::new()));
                groups.len() - 1
            }
        };
        groups[idx]
            .1
            .extend(part.batch.spans[part.range.clone()].iter().map(span));
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(r, spans)| ResourceSpans {
                resource: Some(resource(r)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE_NAME.to_string(),
                        version: r.tracer_version.clone(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// The protobuf bytes of `req`, compressed as configured.
pub(crate) fn body(req: &ExportTraceServiceRequest, compression: Compression) -> Vec<u8> {
    let raw = req.encode_to_vec();
    match compression {
        Compression::None => raw,
        Compression::Gzip => {
            let mut gz = GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::fast(),
            );
            // Writing into a Vec cannot fail.
            match gz.write_all(&raw).and_then(|()| gz.finish()) {
                Ok(out) => out,
                Err(_) => raw,
            }
        }
    }
}

pub(crate) fn resource(r: &Resource) -> OtlpResource {
    let service = if r.service_name.is_empty() {
        "unknown_service:python"
    } else {
        r.service_name.as_str()
    };
    let description = if r.runtime_version.is_empty() {
        String::new()
    } else {
        format!("CPython {}", r.runtime_version)
    };
    let mut attrs = Vec::with_capacity(13);
    // An attribute we do not know is left out rather than sent empty.
    let mut put = |key: &str, value: &str| {
        if !value.is_empty() {
            attrs.push(kv_str(key, value));
        }
    };
    put("service.name", service);
    put("host.name", &r.host_name);
    put("process.executable.path", &r.executable);
    put("process.command_line", &r.command_line);
    put("process.runtime.name", "cpython");
    put("process.runtime.version", &r.runtime_version);
    put("process.runtime.description", &description);
    put("telemetry.sdk.name", SCOPE_NAME);
    put("telemetry.sdk.language", "python");
    put("telemetry.sdk.version", &r.tracer_version);
    put("zerostep.technology", &r.technology);
    put("zerostep.role", &r.role);
    attrs.push(kv(
        "process.pid",
        any_value::Value::IntValue(i64::from(r.pid)),
    ));
    OtlpResource {
        attributes: attrs,
        ..Default::default()
    }
}

fn span(s: &Span) -> OtlpSpan {
    OtlpSpan {
        trace_id: s.trace_id.to_be_bytes().to_vec(),
        span_id: s.span_id.to_be_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: s
            .parent_span_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: FLAGS_SAMPLED,
        name: s.name.clone(),
        kind: kind(s.kind) as i32,
        start_time_unix_nano: s.start_unix_nano,
        end_time_unix_nano: s.end_unix_nano,
        attributes: attributes(&s.attributes),
        dropped_attributes_count: 0,
        events: s.events.iter().map(event).collect(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(OtlpStatus {
            message: s.status.message.clone(),
            code: match s.status.code {
                StatusCode::Unset => status::StatusCode::Unset,
                StatusCode::Ok => status::StatusCode::Ok,
                StatusCode::Error => status::StatusCode::Error,
            } as i32,
        }),
    }
}

fn kind(k: SpanKind) -> span::SpanKind {
    match k {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    }
}

fn event(e: &Event) -> span::Event {
    span::Event {
        time_unix_nano: e.time_unix_nano,
        name: e.name.clone(),
        attributes: attributes(&e.attributes),
        dropped_attributes_count: 0,
    }
}

fn attributes(attrs: &[Attribute]) -> Vec<KeyValue> {
    attrs.iter().map(|a| kv(&a.key, value(&a.value))).collect()
}

fn value(v: &AttrValue) -> any_value::Value {
    use any_value::Value;
    match v {
        AttrValue::Str(s) => Value::StringValue(s.clone()),
        AttrValue::Int(i) => Value::IntValue(*i),
        AttrValue::Double(d) => Value::DoubleValue(*d),
        AttrValue::Bool(b) => Value::BoolValue(*b),
        AttrValue::StrArray(items) => Value::ArrayValue(ArrayValue {
            values: items
                .iter()
                .map(|s| AnyValue {
                    value: Some(Value::StringValue(s.clone())),
                })
                .collect(),
        }),
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}
