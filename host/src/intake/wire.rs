//! The frame schema shared with the tracer (host/python/zerostep/report.py); see README.md.
//!
//! Inbound frames are decoded into one flat struct rather than a serde-tagged enum: tagged enums
//! buffer through serde's `Content`, which cannot carry the 128-bit trace ids.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::marshal::{self, MarshalError, Value as MValue};
use crate::span::{AttrValue, Attribute, Event, Span, SpanKind, Status, StatusCode};

/// The schema version both sides put in `"v"`.
pub const SCHEMA_VERSION: u32 = 1;
/// Length prefix: 4 bytes, big-endian.
pub const LEN_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame is not valid JSON for schema v{SCHEMA_VERSION}: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("span frame is not valid marshal data: {0}")]
    Marshal(#[from] MarshalError),
    #[error("span frame has the wrong shape: {0}")]
    Shape(&'static str),
    #[error("unsupported schema version {0}")]
    Version(u32),
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("span {index}: {reason}")]
    BadSpan { index: usize, reason: &'static str },
}

/// Every field any inbound frame type carries; `t` says which apply.
#[derive(Debug, Deserialize)]
struct RawFrame {
    v: u32,
    t: String,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    python: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    installed: Option<String>,
    #[serde(default)]
    dropped: u64,
    #[serde(default)]
    spans: Vec<WireSpan>,
    #[serde(default)]
    instrumentations: Option<Value>,
    #[serde(default)]
    sent: u64,
}

/// A span as the tracer packs it: a positional array, the cheapest shape to encode in Python.
/// `[trace_id, span_id, parent_id (0 = root), name, kind, start_ns, end_ns, status, status_message,
///   {attributes}, [[event_name, time_ns, {attributes}], ...]]`
#[derive(Debug, Deserialize)]
struct WireSpan(
    u128,
    u64,
    u64,
    String,
    u8,
    u64,
    u64,
    u8,
    String,
    Map<String, Value>,
    Vec<(String, u64, Map<String, Value>)>,
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    /// The bootstrap asking for the tracer's modules.
    Bootstrap,
    /// A tracer already running (reconnected, or a forked worker).
    Tracer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PeerFrame {
    Hello {
        role: PeerRole,
        python: String,
        version: Option<String>,
        installed: Option<String>,
    },
    Spans {
        dropped_in_process: u64,
        spans: Vec<Span>,
    },
    Status {
        status: Value,
        dropped_in_process: u64,
        sent: u64,
    },
}

/// First byte of a span frame in `marshal` form: `0x01`, then `marshal.dumps((pid, dropped, [span,
/// ...]), 4)` with spans laid out as in JSON. A JSON frame starts with `{`.
pub const MARSHAL_SPANS: u8 = 0x01;

/// Decodes one inbound frame body (without its length prefix).
pub fn decode(body: &[u8]) -> Result<PeerFrame, WireError> {
    if let Some((&MARSHAL_SPANS, rest)) = body.split_first() {
        return decode_marshal_spans(rest);
    }
    let raw: RawFrame = serde_json::from_slice(body)?;
    if raw.v != SCHEMA_VERSION {
        return Err(WireError::Version(raw.v));
    }
    match raw.t.as_str() {
        "hello" => Ok(PeerFrame::Hello {
            role: match raw.role.as_deref() {
                Some("bootstrap") => PeerRole::Bootstrap,
                _ => PeerRole::Tracer,
            },
            python: raw.python.unwrap_or_default(),
            version: raw.version,
            installed: raw.installed,
        }),
        "spans" => {
            let spans = raw
                .spans
                .into_iter()
                .enumerate()
                .map(|(i, w)| to_span(i, w))
                .collect::<Result<_, _>>()?;
            Ok(PeerFrame::Spans {
                dropped_in_process: raw.dropped,
                spans,
            })
        }
        "status" => Ok(PeerFrame::Status {
            status: serde_json::json!({
                "instrumentations": raw.instrumentations.unwrap_or(Value::Null),
                "version": raw.version,
                "python": raw.python,
                "pid": raw.pid,
            }),
            dropped_in_process: raw.dropped,
            sent: raw.sent,
        }),
        other => Err(WireError::UnknownType(other.to_string())),
    }
}

fn decode_marshal_spans(data: &[u8]) -> Result<PeerFrame, WireError> {
    let MValue::List(top) = marshal::loads(data)? else {
        return Err(WireError::Shape("not a tuple"));
    };
    let [_pid, dropped, MValue::List(items)] =
        <[MValue; 3]>::try_from(top).map_err(|_| WireError::Shape("not (pid, dropped, spans)"))?
    else {
        return Err(WireError::Shape("spans is not a list"));
    };
    let dropped_in_process = u64::try_from(dropped.as_u128().unwrap_or(0)).unwrap_or(u64::MAX);
    let spans = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            marshal_span(v)
                .ok_or(WireError::BadSpan {
                    index: i,
                    reason: "wrong field types",
                })
                .and_then(|w| to_span(i, w))
        })
        .collect::<Result<_, _>>()?;
    Ok(PeerFrame::Spans {
        dropped_in_process,
        spans,
    })
}

fn marshal_span(v: MValue) -> Option<WireSpan> {
    let MValue::List(f) = v else { return None };
    let [tid, sid, parent, MValue::Str(name), kind, start, end, status, MValue::Str(msg), attrs, MValue::List(events)] =
        <[MValue; 11]>::try_from(f).ok()?
    else {
        return None;
    };
    let u64_of = |v: &MValue| u64::try_from(v.as_u128()?).ok();
    let u8_of = |v: &MValue| u8::try_from(v.as_u128()?).ok();
    let events = events
        .into_iter()
        .map(|e| {
            let MValue::List(e) = e else { return None };
            let [MValue::Str(n), t, a] = <[MValue; 3]>::try_from(e).ok()? else {
                return None;
            };
            Some((n, u64_of(&t)?, marshal_attrs(a)?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(WireSpan(
        tid.as_u128()?,
        u64_of(&sid)?,
        u64_of(&parent)?,
        name,
        u8_of(&kind)?,
        u64_of(&start)?,
        u64_of(&end)?,
        u8_of(&status)?,
        msg,
        marshal_attrs(attrs)?,
        events,
    ))
}

/// Into the JSON shape, so both encodings share `to_span`'s checks and typing.
fn marshal_attrs(v: MValue) -> Option<Map<String, Value>> {
    let MValue::Dict(pairs) = v else { return None };
    let mut m = Map::new();
    for (k, v) in pairs {
        let MValue::Str(k) = k else { return None };
        let v = match v {
            MValue::Str(s) => Value::String(s),
            MValue::Bool(b) => Value::Bool(b),
            MValue::Int(i) => match i64::try_from(i) {
                Ok(i) => Value::from(i),
                Err(_) => Value::from(i as f64),
            },
            MValue::UInt(u) => Value::from(u as f64),
            MValue::Float(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            MValue::List(items) => Value::Array(
                items
                    .into_iter()
                    .map(|i| match i {
                        MValue::Str(s) => Value::String(s),
                        MValue::Int(n) => Value::String(n.to_string()),
                        MValue::UInt(n) => Value::String(n.to_string()),
                        MValue::Float(f) => Value::String(f.to_string()),
                        MValue::Bool(b) => Value::String(b.to_string()),
                        _ => Value::Null,
                    })
                    .collect(),
            ),
            MValue::None | MValue::Dict(_) | MValue::Bytes(_) => Value::Null,
        };
        m.insert(k, v);
    }
    Some(m)
}

fn to_span(index: usize, w: WireSpan) -> Result<Span, WireError> {
    let WireSpan(trace_id, span_id, parent, name, kind, start, end, status, message, attrs, events) =
        w;
    if trace_id == 0 || span_id == 0 {
        return Err(WireError::BadSpan {
            index,
            reason: "zero trace or span id",
        });
    }
    let kind = match kind {
        0 => SpanKind::Internal,
        1 => SpanKind::Server,
        2 => SpanKind::Client,
        3 => SpanKind::Producer,
        4 => SpanKind::Consumer,
        _ => {
            return Err(WireError::BadSpan {
                index,
                reason: "unknown kind",
            })
        }
    };
    let code = match status {
        0 => StatusCode::Unset,
        1 => StatusCode::Ok,
        2 => StatusCode::Error,
        _ => {
            return Err(WireError::BadSpan {
                index,
                reason: "unknown status",
            })
        }
    };
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id: (parent != 0).then_some(parent),
        name,
        kind,
        start_unix_nano: start,
        end_unix_nano: end.max(start),
        status: Status { code, message },
        attributes: to_attributes(attrs),
        events: events
            .into_iter()
            .map(|(name, time_unix_nano, attrs)| Event {
                name,
                time_unix_nano,
                attributes: to_attributes(attrs),
            })
            .collect(),
    })
}

fn to_attributes(map: Map<String, Value>) -> Vec<Attribute> {
    map.into_iter()
        .filter_map(|(key, v)| {
            Some(Attribute {
                key,
                value: to_value(v)?,
            })
        })
        .collect()
}

/// JSON null and nested objects have no attribute type: dropped. Arrays become string arrays.
fn to_value(v: Value) -> Option<AttrValue> {
    Some(match v {
        Value::String(s) => AttrValue::Str(s),
        Value::Bool(b) => AttrValue::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AttrValue::Int(i),
            None => AttrValue::Double(n.as_f64()?),
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
        Value::Null | Value::Object(_) => return None,
    })
}

/// What the agent sends a peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Uninstall: every patch restored, the modules forgotten, the connection closed.
    Detach,
    /// Merge these settings into the running tracer's config (e.g. `{"sample_rate": 0.1}`).
    Config(Value),
    /// Replace the running tracer by the modules embedded in this agent, keeping the connection.
    Upgrade,
    /// Ask for a fresh status frame.
    Status,
}

/// Encodes an outbound message as a full frame (length prefix included).
pub fn encode(msg: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail; an empty object is the harmless fallback all the same.
    let body = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(LEN_PREFIX + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn load_message(version: &str, modules: &[(&str, &str)], config: &Value) -> Value {
    serde_json::json!({"v": SCHEMA_VERSION, "t": "load", "version": version, "modules": modules, "config": config})
}

pub fn command_message(
    cmd: &Command,
    version: &str,
    modules: &[(&str, &str)],
    config: &Value,
) -> Value {
    match cmd {
        Command::Detach => serde_json::json!({"v": SCHEMA_VERSION, "t": "detach"}),
        Command::Config(c) => serde_json::json!({"v": SCHEMA_VERSION, "t": "config", "config": c}),
        Command::Upgrade => serde_json::json!({
            "v": SCHEMA_VERSION, "t": "upgrade", "version": version, "modules": modules, "config": config
        }),
        Command::Status => serde_json::json!({"v": SCHEMA_VERSION, "t": "status"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_span_batch_with_128_bit_ids() {
        let body = br#"{"v":1,"t":"spans","pid":7,"dropped":3,"spans":[
            [340282366920938463463374607431768211455,18446744073709551615,0,"GET /x",1,10,20,2,"boom",
             {"http.response.status_code":500,"url.path":"/x","f":1.5,"b":true,"l":["a",1],"n":null},
             [["exception",15,{"exception.type":"ValueError"}]]]]}"#;
        let PeerFrame::Spans {
            dropped_in_process,
            spans,
        } = decode(body).expect("valid frame")
        else {
            panic!("not a spans frame")
        };
        assert_eq!(dropped_in_process, 3);
        let s = &spans[0];
        assert_eq!(s.trace_id, u128::MAX);
        assert_eq!(s.parent_span_id, None);
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.status.code, StatusCode::Error);
        assert_eq!(
            s.attr("http.response.status_code"),
            Some(&AttrValue::Int(500))
        );
        assert_eq!(s.attr("f"), Some(&AttrValue::Double(1.5)));
        assert_eq!(
            s.attr("l"),
            Some(&AttrValue::StrArray(vec!["a".into(), "1".into()]))
        );
        assert_eq!(s.attr("n"), None);
        assert_eq!(s.events[0].name, "exception");
    }

    #[test]
    fn decodes_a_marshal_span_batch() {
        // b"\x01" + marshal.dumps((7, 2, [[2**127 + 1, 2**63, 0, "GET", 1, 10, 20, 0, "",
        //   {"url.path": "/x", "http.response.status_code": 200, "f": 0.5, "b": True},
        //   [["exception", 15, {"exception.type": "E"}]]]]), 4) from CPython 3.12
        let body = include_bytes!("marshal_spans.bin");
        let PeerFrame::Spans {
            dropped_in_process,
            spans,
        } = decode(body).expect("valid frame")
        else {
            panic!("not a spans frame")
        };
        assert_eq!(dropped_in_process, 2);
        let s = &spans[0];
        assert_eq!(s.trace_id, (1u128 << 127) + 1);
        assert_eq!(s.span_id, 1u64 << 63);
        assert_eq!(s.parent_span_id, None);
        assert_eq!(s.attr("url.path"), Some(&AttrValue::Str("/x".into())));
        assert_eq!(
            s.attr("http.response.status_code"),
            Some(&AttrValue::Int(200))
        );
        assert_eq!(s.attr("f"), Some(&AttrValue::Double(0.5)));
        assert_eq!(s.attr("b"), Some(&AttrValue::Bool(true)));
        assert_eq!(s.events[0].attributes[0].value, AttrValue::Str("E".into()));
        assert!(matches!(
            decode(b"\x01[\x01\x00\x00\x00N"),
            Err(WireError::Shape(_))
        ));
        assert!(matches!(decode(b"\x01c"), Err(WireError::Marshal(_))));
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(matches!(
            decode(br#"{"v":2,"t":"spans"}"#),
            Err(WireError::Version(2))
        ));
        assert!(matches!(
            decode(br#"{"v":1,"t":"nope"}"#),
            Err(WireError::UnknownType(_))
        ));
        assert!(matches!(decode(b"\xff{"), Err(WireError::Malformed(_))));
        let zero = br#"{"v":1,"t":"spans","spans":[[0,1,0,"x",0,1,2,0,"",{},[]]]}"#;
        assert!(matches!(decode(zero), Err(WireError::BadSpan { .. })));
        let kind = br#"{"v":1,"t":"spans","spans":[[1,1,0,"x",9,1,2,0,"",{},[]]]}"#;
        assert!(matches!(decode(kind), Err(WireError::BadSpan { .. })));
    }

    #[test]
    fn frames_are_length_prefixed() {
        let f = encode(&command_message(&Command::Detach, "1", &[], &Value::Null));
        let n = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        assert_eq!(n, f.len() - LEN_PREFIX);
        let v: Value = serde_json::from_slice(&f[LEN_PREFIX..]).expect("json");
        assert_eq!(v["t"], "detach");
    }
}
