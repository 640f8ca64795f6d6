//! How one span is laid out in the store: the indexed columns are plain values, everything else
//! (attributes, events, status message, pid) is one compact JSON document — attributes as an object
//! `{"3": "/u/{id}", "7": 200}` whose keys are ids in a dictionary of attribute names (the names
//! were ~40 % of a span's bytes, repeated in every row), rather than the tagged form the API uses.
//! Oversized input is truncated here, visibly, so one span can never make a row huge.
use std::cell::RefCell;
use std::collections::HashMap;

use rustc_hash::FxHashMap;

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::span::{AttrValue, Attribute, Event, Span, SpanKind, StatusCode};

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
/// Prefix of a literal (not dictionary) attribute name in the document.
const LITERAL: char = '=';

/// The writer's side of the attribute-name dictionary. Ids handed out during a transaction are
/// listed in `new` so the transaction stores them with the spans that use them.
#[derive(Default)]
pub struct KeyDict {
    ids: RefCell<FxHashMap<String, u32>>,
    next: RefCell<u32>,
    new: RefCell<Vec<(u32, String)>>,
}

impl KeyDict {
    pub fn load(known: impl IntoIterator<Item = (u32, String)>) -> Self {
        let ids: FxHashMap<String, u32> = known.into_iter().map(|(id, k)| (k, id)).collect();
        let next = ids.values().max().map_or(1, |m| m + 1);
        Self {
            ids: RefCell::new(ids),
            next: RefCell::new(next),
            new: RefCell::new(Vec::new()),
        }
    }

    fn id(&self, key: &str) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(key) {
            return Some(*id);
        }
        if self.ids.borrow().len() >= MAX_KEYS || key.len() > MAX_NAME_BYTES {
            return None;
        }
        let id = {
            let mut next = self.next.borrow_mut();
            *next += 1;
            *next - 1
        };
        self.ids.borrow_mut().insert(key.to_string(), id);
        self.new.borrow_mut().push((id, key.to_string()));
        Some(id)
    }

    /// Ids handed out since the last call, to be written.
    pub fn take_new(&self) -> Vec<(u32, String)> {
        std::mem::take(&mut *self.new.borrow_mut())
    }
}

struct AttrMap<'a>(&'a [Attribute], &'a KeyDict);

impl Serialize for AttrMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kept = &self.0[..self.0.len().min(MAX_ATTRIBUTES)];
        let mut map = s.serialize_map(Some(kept.len()))?;
        for a in kept {
            match self.1.id(&a.key) {
                Some(id) => map.serialize_entry(&id, &ValueRef(&a.value))?,
                None => {
                    let literal = format!("{LITERAL}{}", truncate(&a.key, MAX_NAME_BYTES));
                    map.serialize_entry(&literal, &ValueRef(&a.value))?
                }
            }
        }
        map.end()
    }
}

struct ValueRef<'a>(&'a AttrValue);

impl Serialize for ValueRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            AttrValue::Str(v) => s.serialize_str(&truncate(v, MAX_VALUE_BYTES)),
            AttrValue::Int(v) => s.serialize_i64(*v),
            AttrValue::Double(v) if v.is_finite() => s.serialize_f64(*v),
            AttrValue::Double(v) => s.serialize_str(&v.to_string()),
            AttrValue::Bool(v) => s.serialize_bool(*v),
            AttrValue::StrArray(items) => {
                let kept = &items[..items.len().min(MAX_ARRAY_ITEMS)];
                let mut seq = s.serialize_seq(Some(kept.len()))?;
                for item in kept {
                    seq.serialize_element(&truncate(item, MAX_VALUE_BYTES))?;
                }
                seq.end()
            }
        }
    }
}

struct EventsRef<'a>(&'a [Event], &'a KeyDict);

impl Serialize for EventsRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kept = &self.0[..self.0.len().min(MAX_EVENTS)];
        let mut seq = s.serialize_seq(Some(kept.len()))?;
        for e in kept {
            seq.serialize_element(&EventRef(e, self.1))?;
        }
        seq.end()
    }
}

struct EventRef<'a>(&'a Event, &'a KeyDict);

impl Serialize for EventRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("n", &truncate(&self.0.name, MAX_NAME_BYTES))?;
        map.serialize_entry("t", &self.0.time_unix_nano)?;
        map.serialize_entry("a", &AttrMap(&self.0.attributes, self.1))?;
        map.end()
    }
}

/// Writes the span's detail document into `out` (cleared first; reused across spans).
pub fn encode_detail(span: &Span, pid: u32, keys: &KeyDict, out: &mut Vec<u8>) {
    out.clear();
    let mut ser = serde_json::Serializer::new(&mut *out);
    let result = (|| {
        let mut map = ser.serialize_map(None)?;
        map.serialize_entry("p", &pid)?;
        if !span.attributes.is_empty() {
            map.serialize_entry("a", &AttrMap(&span.attributes, keys))?;
        }
        if !span.events.is_empty() {
            map.serialize_entry("e", &EventsRef(&span.events, keys))?;
        }
        if !span.status.message.is_empty() {
            map.serialize_entry("m", &truncate(&span.status.message, MAX_VALUE_BYTES))?;
        }
        SerializeMap::end(map)
    })();
    // Serialising owned strings and numbers into a Vec cannot fail; keep the row valid anyway.
    if result.is_err() {
        out.clear();
        out.extend_from_slice(b"{}");
    }
}

#[derive(Deserialize, Default)]
struct DetailDoc {
    #[serde(default)]
    p: u32,
    #[serde(default)]
    a: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    e: Vec<EventDoc>,
    #[serde(default)]
    m: String,
}

#[derive(Deserialize)]
struct EventDoc {
    n: String,
    t: u64,
    #[serde(default)]
    a: serde_json::Map<String, serde_json::Value>,
}

/// What the detail document holds, back in the span's own types.
#[derive(Debug, Default)]
pub struct Detail {
    pub pid: u32,
    pub attributes: Vec<Attribute>,
    pub events: Vec<Event>,
    pub status_message: String,
}

fn attrs_from(
    map: serde_json::Map<String, serde_json::Value>,
    keys: &HashMap<u32, String>,
) -> Vec<Attribute> {
    use serde_json::Value;
    map.into_iter()
        .map(|(key, v)| {
            let key = match key.strip_prefix(LITERAL) {
                Some(literal) => literal.to_string(),
                None => key
                    .parse::<u32>()
                    .ok()
                    .and_then(|id| keys.get(&id).cloned())
                    .unwrap_or(key),
            };
            let value = match v {
                Value::String(s) => AttrValue::Str(s),
                Value::Bool(b) => AttrValue::Bool(b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) if !n.is_f64() => AttrValue::Int(i),
                    _ => AttrValue::Double(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::Array(items) => AttrValue::StrArray(
                    items
                        .into_iter()
                        .map(|i| match i {
                            Value::String(s) => s,
                            other => other.to_string(),
                        })
                        .collect(),
                ),
                other => AttrValue::Str(other.to_string()),
            };
            Attribute { key, value }
        })
        .collect()
}

/// A document that does not parse (a damaged row) yields an empty detail, not an error: the span's
/// indexed columns are still worth showing.
pub fn decode_detail(blob: &[u8], keys: &HashMap<u32, String>) -> Detail {
    let doc: DetailDoc = serde_json::from_slice(blob).unwrap_or_default();
    Detail {
        pid: doc.p,
        attributes: attrs_from(doc.a, keys),
        events: doc
            .e
            .into_iter()
            .map(|e| Event {
                name: e.n,
                time_unix_nano: e.t,
                attributes: attrs_from(e.a, keys),
            })
            .collect(),
        status_message: doc.m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Status;

    fn span() -> Span {
        Span {
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            name: "GET /u/{id}".into(),
            kind: SpanKind::Server,
            start_unix_nano: 1,
            end_unix_nano: 2,
            status: Status {
                code: StatusCode::Error,
                message: "boom".into(),
            },
            attributes: vec![
                Attribute::str("http.route", "/u/{id}"),
                Attribute::str("http.request.method", "GET"),
                Attribute::int("http.response.status_code", 500),
                Attribute {
                    key: "f".into(),
                    value: AttrValue::Double(1.0),
                },
                Attribute {
                    key: "b".into(),
                    value: AttrValue::Bool(true),
                },
                Attribute {
                    key: "h".into(),
                    value: AttrValue::StrArray(vec!["x".into(), "y".into()]),
                },
            ],
            events: vec![Event {
                name: "exception".into(),
                time_unix_nano: 5,
                attributes: vec![Attribute::str("exception.type", "ValueError")],
            }],
        }
    }

    #[test]
    fn detail_roundtrips_every_value_type() {
        let s = span();
        let mut buf = Vec::new();
        let dict = KeyDict::default();
        encode_detail(&s, 42, &dict, &mut buf);
        let d = decode_detail(&buf, &dict.take_new().into_iter().collect());
        assert_eq!(d.pid, 42);
        assert_eq!(d.status_message, "boom");
        assert_eq!(d.events, s.events);
        let mut want = s.attributes.clone();
        want.sort_by(|a, b| a.key.cmp(&b.key));
        let mut got = d.attributes;
        got.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(got, want);
        let mut key = String::new();
        endpoint_key(&s, &mut key);
        assert_eq!(key, "GET /u/{id}");
    }

    #[test]
    fn huge_values_are_truncated_on_a_char_boundary() {
        let mut s = span();
        s.attributes = (0..1000)
            .map(|i| Attribute::str(format!("k{i}"), "é".repeat(100_000)))
            .collect();
        let mut buf = Vec::new();
        // A full dictionary: names are stored literally and still come back.
        let dict = KeyDict::load((0..MAX_KEYS as u32).map(|i| (i, format!("x{i}"))));
        encode_detail(&s, 1, &dict, &mut buf);
        assert!(
            buf.len() < MAX_ATTRIBUTES * (MAX_VALUE_BYTES + 64),
            "{}",
            buf.len()
        );
        let d = decode_detail(&buf, &HashMap::new());
        assert_eq!(d.attributes.len(), MAX_ATTRIBUTES);
        assert!(d.attributes.iter().any(|a| a.key == "k0"));
        let AttrValue::Str(v) = &d.attributes[0].value else {
            panic!()
        };
        assert!(v.ends_with("bytes]"), "{}", &v[v.len() - 20..]);
        assert!(decode_detail(b"not json", &HashMap::new())
            .attributes
            .is_empty());
    }
}
