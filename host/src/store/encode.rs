//! What the store derives from a span (entry or not, endpoint, database callee), the codes it
//! stores for kinds and statuses, the size limits, and the attribute-name dictionary. The binary
//! layout of stored spans is in `chunk`.
use rustc_hash::FxHashMap;

#[cfg(test)]
use crate::span::Attribute;
use crate::span::{AttrValue, Span, SpanKind, StatusCode};

/// Longest string value kept (bytes); longer ones end in `…[+N bytes]`.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest span, event or endpoint name kept.
pub const MAX_NAME_BYTES: usize = 512;
pub const MAX_ATTRIBUTES: usize = 128;
pub const MAX_EVENTS: usize = 32;
pub const MAX_ARRAY_ITEMS: usize = 64;

/// `s` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[+{} bytes]", &s[..end], s.len() - end).into()
}

pub fn kind_code(kind: SpanKind) -> i64 {
    match kind {
        SpanKind::Internal => 0,
        SpanKind::Server => 1,
        SpanKind::Client => 2,
        SpanKind::Producer => 3,
        SpanKind::Consumer => 4,
    }
}

pub fn kind_from_code(code: i64) -> SpanKind {
    match code {
        1 => SpanKind::Server,
        2 => SpanKind::Client,
        3 => SpanKind::Producer,
        4 => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

pub fn status_code(code: StatusCode) -> i64 {
    match code {
        StatusCode::Unset => 0,
        StatusCode::Ok => 1,
        StatusCode::Error => 2,
    }
}

pub fn status_from_code(code: i64) -> StatusCode {
    match code {
        1 => StatusCode::Ok,
        2 => StatusCode::Error,
        _ => StatusCode::Unset,
    }
}

/// The store's status code for an error span (used literally in SQL so partial indexes apply).
pub const STATUS_ERROR: i64 = 2;

pub fn trace_id_hex(id: u128) -> String {
    format!("{id:032x}")
}

pub fn span_id_hex(id: u64) -> String {
    format!("{id:016x}")
}

pub fn parse_trace_id(hex: &str) -> Option<u128> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

/// Spans that stand for a request a service handled: their endpoint is counted in the rollups.
pub fn is_entry(span: &Span) -> bool {
    matches!(span.kind, SpanKind::Server | SpanKind::Consumer) || span.parent_span_id.is_none()
}

fn str_attr<'a>(span: &'a Span, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| match span.attr(k) {
        Some(AttrValue::Str(s)) if !s.is_empty() => Some(s.as_str()),
        _ => None,
    })
}

/// The endpoint an entry span belongs to: `METHOD route` when the tracer or a sensor set
/// `http.route` (so `GET /u/{id}` and `DELETE /u/{id}` are told apart), else the span name, which
/// enrichment already made `METHOD /template` where it could derive one. Raw `url.path` is never
/// used: every distinct id would become an endpoint.
pub fn endpoint_key(span: &Span, out: &mut String) {
    out.clear();
    match str_attr(span, &["http.route"]) {
        Some(route) => {
            if let Some(method) = str_attr(span, &["http.request.method", "http.method"]) {
                out.push_str(method);
                out.push(' ');
            }
            out.push_str(route);
        }
        None => out.push_str(&span.name),
    }
    if out.len() > MAX_NAME_BYTES {
        let cut = truncate(out, MAX_NAME_BYTES).into_owned();
        *out = cut;
    }
}

/// The callee a client span names when it is not a traced service: the database system.
pub fn db_system(span: &Span) -> Option<&str> {
    str_attr(span, &["db.system", "db.system.name"])
}

/// Distinct attribute names given an id; past this, names are stored literally.
pub const MAX_KEYS: usize = 4096;

/// The writer's side of the attribute-name dictionary (the names were ~40 % of a span's bytes,
/// repeated in every span). Ids handed out during a transaction are listed in `new` so the
/// transaction stores them with the spans that use them.
#[derive(Default)]
pub struct KeyDict {
    ids: FxHashMap<String, u32>,
    next: u32,
    new: Vec<(u32, String)>,
}

impl KeyDict {
    pub fn load(known: impl IntoIterator<Item = (u32, String)>) -> Self {
        let ids: FxHashMap<String, u32> = known.into_iter().map(|(id, k)| (k, id)).collect();
        let next = ids.values().max().map_or(1, |m| m + 1);
        Self {
            ids,
            next,
            new: Vec::new(),
        }
    }

    pub fn id(&mut self, key: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(key) {
            return Some(*id);
        }
        if self.ids.len() >= MAX_KEYS || key.len() > MAX_NAME_BYTES {
            return None;
        }
        let id = self.next;
        self.next += 1;
        self.ids.insert(key.to_string(), id);
        self.new.push((id, key.to_string()));
        Some(id)
    }

    /// Ids handed out since the last call, to be written.
    pub fn take_new(&mut self) -> Vec<(u32, String)> {
        std::mem::take(&mut self.new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_key_prefers_method_and_route() {
        let mut s = Span {
            name: "GET /u/42".into(),
            kind: SpanKind::Server,
            attributes: vec![
                Attribute::str("http.route", "/u/{id}"),
                Attribute::str("http.request.method", "GET"),
            ],
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            start_unix_nano: 0,
            end_unix_nano: 0,
            status: Default::default(),
            events: Vec::new(),
        };
        let mut key = String::new();
        endpoint_key(&s, &mut key);
        assert_eq!(key, "GET /u/{id}");
        s.attributes.clear();
        endpoint_key(&s, &mut key);
        assert_eq!(key, "GET /u/42");
    }

    #[test]
    fn truncate_cuts_on_a_char_boundary() {
        let s = "é".repeat(10);
        let t = truncate(&s, 5);
        assert!(t.starts_with("éé") && t.ends_with("[+16 bytes]"), "{t}");
    }
}
