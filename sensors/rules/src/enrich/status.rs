//! Span status from the HTTP status code, as the HTTP semantic conventions define it: a server
//! span is an error for 5xx only (a 4xx is the client's fault), a client span for 4xx and 5xx.
//! Only an unset status changes: an explicit error or ok from the tracer or the application wins.
//! The status message stays empty (the code says it all), and `error.type` gets the code as a
//! string (`"503"`) when the tracer did not set one.

use super::attributes::{key, Known};
use super::span::{OwnedValue, Patch, SpanKind, Status, StatusCode, Value};

pub(crate) fn apply(known: &Known<'_>, kind: SpanKind, current: StatusCode, patch: &mut Patch) {
    let Some(code) = http_status_code(known) else {
        return;
    };
    if current != StatusCode::Unset || !is_error(kind, code) {
        return;
    }
    patch.status = Some(Status {
        code: StatusCode::Error,
        message: String::new(),
    });
    if !known.has(key::ERROR_TYPE) {
        patch.set(key::ERROR_TYPE, OwnedValue::Str(code.to_string()));
    }
}

/// Whether an HTTP status code makes a span of this kind an error.
pub fn is_error(kind: SpanKind, code: i64) -> bool {
    match kind {
        SpanKind::Server => (500..600).contains(&code),
        SpanKind::Client => (400..600).contains(&code),
        _ => false,
    }
}

/// The response's status code (current semconv name first, then the older one).
pub(crate) fn http_status_code(known: &Known<'_>) -> Option<i64> {
    known
        .get(key::HTTP_RESPONSE_STATUS_CODE)
        .or_else(|| known.get(key::HTTP_STATUS_CODE))
        .and_then(|(_, v)| code_of(v))
}

/// A status code given as an integer, or as a string by tracers that stringify everything.
fn code_of(v: Value<'_>) -> Option<i64> {
    let code = match v {
        Value::Int(i) => i,
        Value::Str(s) => s.trim().parse().ok()?,
        Value::Double(d) if d.fract() == 0.0 && (100.0..=999.0).contains(&d) => d as i64,
        _ => return None,
    };
    (100..=999).contains(&code).then_some(code)
}
