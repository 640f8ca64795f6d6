//! The frame schema shared with the tracer (host/python/zerostep/report.py); see README.md.
//!
//! Inbound frames are decoded into one flat struct rather than a serde-tagged enum: tagged enums
//! buffer through serde's `Content`, which cannot carry the 128-bit trace ids.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::marshal::MarshalError;
use super::marshal_frame;
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
    /// The tracer's challenge (see `auth.rs`), and the root its secret was made for.
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    root: Option<(u32, u64)>,
    /// The tracer's proof that it holds the bootstrap's secret.
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    dropped: u64,
    #[serde(default)]
    spans: Vec<WireSpan>,
    #[serde(default)]
    instrumentations: Option<Value>,
    /// Contract-0.2 bundles: `{name: {version, state, reason, instrumentations}}`.
    #[serde(default)]
    bundles: Option<Value>,
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
        /// Present from tracers that authenticate the agent: answered with a proof.
        nonce: Option<String>,
        root: Option<(u32, u64)>,
        tag: Option<String>,
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
            nonce: raw.nonce.filter(|n| n.len() <= 128),
            root: raw.root,
            tag: raw.tag.filter(|t| t.len() <= 128),
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
                "bundles": raw.bundles.unwrap_or(Value::Null),
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
    let (dropped_in_process, spans) = marshal_frame::decode(data)?;
    Ok(PeerFrame::Spans {
        dropped_in_process,
        spans,
    })
}

/// A span's fields as both encodings carry them, before the checks they share.
pub(super) struct SpanFields {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: u64,
    pub name: String,
    pub kind: u8,
    pub start: u64,
    pub end: u64,
    pub status: u8,
    pub message: String,
    pub attributes: Vec<Attribute>,
    pub events: Vec<Event>,
}

impl SpanFields {
    /// The span, or why span number `index` of its frame is invalid.
    pub(super) fn check(self, index: usize) -> Result<Span, WireError> {
        let bad = |reason| WireError::BadSpan { index, reason };
        if self.trace_id == 0 || self.span_id == 0 {
            return Err(bad("zero trace or span id"));
        }
        let kind = match self.kind {
            0 => SpanKind::Internal,
            1 => SpanKind::Server,
            2 => SpanKind::Client,
            3 => SpanKind::Producer,
            4 => SpanKind::Consumer,
            _ => return Err(bad("unknown kind")),
        };
        let code = match self.status {
            0 => StatusCode::Unset,
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => return Err(bad("unknown status")),
        };
        Ok(Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: (self.parent != 0).then_some(self.parent),
            name: self.name,
            kind,
            start_unix_nano: self.start,
            end_unix_nano: self.end.max(self.start),
            status: Status {
                code,
                message: self.message,
            },
            attributes: self.attributes,
            events: self.events,
        })
    }
}

fn to_span(index: usize, w: WireSpan) -> Result<Span, WireError> {
    let WireSpan(trace_id, span_id, parent, name, kind, start, end, status, message, attrs, events) =
        w;
    SpanFields {
        trace_id,
        span_id,
        parent,
        name,
        kind,
        start,
        end,
        status,
        message,
        attributes: to_attributes(attrs),
        events: events
            .into_iter()
            .map(|(name, time_unix_nano, attrs)| Event {
                name,
                time_unix_nano,
                attributes: to_attributes(attrs),
            })
            .collect(),
    }
    .check(index)
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
    /// Load these bundles in place of the running ones (changed versions replace, missing ones
    /// are removed): the agent's bundles for that process, as [`bundles_json`] renders them.
    Bundles,
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

/// The agent's answer to a tracer's hello nonce, before any command.
pub fn auth_message(proof: &str) -> Value {
    serde_json::json!({"v": SCHEMA_VERSION, "t": "auth", "proof": proof})
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
        Command::Bundles => serde_json::json!({
            "v": SCHEMA_VERSION, "t": "bundles", "bundles": config.get("bundles").cloned().unwrap_or_else(|| Value::Array(Vec::new()))
        }),
    }
}

/// Bundles as the tracer reads them (`config.bundles`; host/python/zerostep/bundles.py).
pub fn bundles_json(bundles: &[crate::sensors::Bundle]) -> Value {
    Value::Array(
        bundles
            .iter()
            .map(|b| {
                let settings: serde_json::Map<String, Value> = b
                    .settings
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                serde_json::json!({
                    "name": b.name,
                    "version": b.version,
                    "triggers": b.triggers,
                    "modules": b.modules.iter().map(|m| [&m.name, &m.source]).collect::<Vec<_>>(),
                    "entry": b.entry,
                    "tracer_api": b.tracer_api,
                    "settings": settings,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::marshal::tests::W;
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

    fn sorted(mut spans: Vec<Span>) -> Vec<Span> {
        for s in &mut spans {
            s.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            for e in &mut s.events {
                e.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        spans
    }

    fn spans_of(body: &[u8]) -> (u64, Vec<Span>) {
        match decode(body) {
            Ok(PeerFrame::Spans {
                dropped_in_process,
                spans,
            }) => (dropped_in_process, spans),
            other => panic!("not a spans frame: {other:?}"),
        }
    }

    /// From testdata/make_frames.py: the real tracer's spans, in both the forms it sends.
    const TRACER_FRAMES: [(&str, &[u8], &[u8]); 2] = [
        (
            "3.8",
            include_bytes!("testdata/tracer_38.bin"),
            include_bytes!("testdata/tracer_38.json"),
        ),
        (
            "3.13",
            include_bytes!("testdata/tracer_313.bin"),
            include_bytes!("testdata/tracer_313.json"),
        ),
    ];

    #[test]
    fn marshal_frames_from_the_tracer_decode_as_their_json_form() {
        for (py, marshal, json) in TRACER_FRAMES {
            let (dropped, spans) = spans_of(marshal);
            assert_eq!(dropped, 5, "{py}");
            // Same typing either way; only the order of attributes differs (JSON's map sorts).
            assert_eq!(sorted(spans.clone()), sorted(spans_of(json).1), "{py}");
            assert_eq!(spans.len(), 6, "{py}");
            for (i, pair) in spans.chunks(2).enumerate() {
                let (db, server) = (&pair[0], &pair[1]);
                assert_eq!(server.trace_id >> 16, u128::MAX >> 16, "{py}");
                assert_eq!(server.trace_id & 0xffff, i as u128 + 1, "{py}");
                assert_eq!(server.parent_span_id, Some(0x00f0_67aa_0ba9_02b7));
                assert_eq!(db.trace_id, server.trace_id);
                assert_eq!(db.parent_span_id, Some(server.span_id));
                assert_eq!(db.kind, SpanKind::Client);
                assert_eq!(
                    db.attr("db.query.text"),
                    Some(&AttrValue::Str(
                        "SELECT * FROM items WHERE id = ? AND owner = ?".into()
                    ))
                );
                let a = |k| server.attr(k).cloned();
                assert_eq!(a("url.path"), Some(AttrValue::Str(format!("/items/{i}"))));
                assert_eq!(a("server.port"), Some(AttrValue::Int(8000)));
                assert_eq!(a("big"), Some(AttrValue::Double(2f64.powi(70))));
                assert_eq!(a("neg"), Some(AttrValue::Int(-5)));
                assert_eq!(a("ratio"), Some(AttrValue::Double(0.25)));
                assert_eq!(a("flag"), Some(AttrValue::Bool(true)));
                // One list object in every span: a back-reference to a container after the first.
                assert_eq!(
                    a("tags"),
                    Some(AttrValue::StrArray(vec!["a".into(), "b".into()]))
                );
                let mixed = ["1", "1.5", "true", "null", "x"].map(String::from).to_vec();
                assert_eq!(a("mixed"), Some(AttrValue::StrArray(mixed)));
                assert_eq!(a("none"), None);
                // Attributes come in the order the tracer set them.
                assert_eq!(server.attributes[0].key, "http.request.method");
            }
            assert_eq!(spans[3].status.code, StatusCode::Error);
            assert_eq!(spans[3].status.message, "no such item");
            assert_eq!(spans[3].events[0].name, "exception");
            assert_eq!(
                spans[3].events[0].attributes[0].value,
                AttrValue::Str("ValueError".into())
            );
        }
    }

    #[test]
    fn truncated_or_corrupted_frames_are_errors_not_panics() {
        let bodies = [
            TRACER_FRAMES[0].1,
            TRACER_FRAMES[1].1,
            include_bytes!("marshal_spans.bin"),
        ];
        for body in bodies {
            for n in 0..body.len() {
                assert!(decode(&body[..n]).is_err(), "prefix of {n} bytes");
            }
            // xorshift: reproducible corruption of one to four bytes at a time.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as usize
            };
            for _ in 0..3000 {
                let mut b = body.to_vec();
                for _ in 0..1 + next() % 4 {
                    let i = 1 + next() % (b.len() - 1);
                    b[i] = next() as u8;
                }
                let _ = decode(&b);
            }
            for _ in 0..3000 {
                let mut b = vec![MARSHAL_SPANS];
                b.extend((0..next() % 64).map(|_| next() as u8));
                let _ = decode(&b);
            }
        }
    }

    /// A frame of one span `[1, 2, 0, "n", kind, 10, 20, 0, "", {attrs}, []]`.
    fn one_span(kind: i32, attrs: impl Fn(&mut W)) -> Vec<u8> {
        let mut w = W::new();
        w.0.push(MARSHAL_SPANS);
        w.code(b')', false).0.push(3);
        w.int(1, false).int(0, false).seq(1, false).seq(11, false);
        w.int(1, false).int(2, false).int(0, false).str("n", false);
        w.int(kind, false)
            .int(10, false)
            .int(20, false)
            .int(0, false);
        w.str("", false).code(b'{', false);
        attrs(&mut w);
        w.code(b'0', false).seq(0, false);
        w.0
    }

    #[test]
    fn hostile_span_frames_get_clear_errors() {
        let (_, s) = spans_of(&one_span(1, |_| {}));
        assert_eq!((s[0].span_id, s[0].name.as_str()), (2, "n"));
        assert!(matches!(
            decode(&one_span(9, |_| {})),
            Err(WireError::BadSpan {
                reason: "unknown kind",
                ..
            })
        ));
        assert!(matches!(
            decode(&one_span(-1, |_| {})),
            Err(WireError::BadSpan {
                reason: "wrong field types",
                ..
            })
        ));
        // A non-string key.
        assert!(matches!(
            decode(&one_span(1, |w| {
                w.int(1, false).int(1, false);
            })),
            Err(WireError::BadSpan { .. })
        ));
        // A list claiming more items than there are bytes left.
        assert!(matches!(
            decode(&one_span(1, |w| {
                w.str("k", false).seq(u32::MAX, false);
            })),
            Err(WireError::Marshal(MarshalError::Truncated))
        ));
        // A span that holds itself.
        let mut w = W::new();
        w.0.push(MARSHAL_SPANS);
        w.code(b')', false).0.push(3);
        w.int(1, false)
            .int(0, false)
            .seq(1, false)
            .seq(11, true)
            .r(0);
        w.0.extend([b'N'; 10]);
        assert!(matches!(
            decode(&w.0),
            Err(WireError::Marshal(MarshalError::BadRef(0)))
        ));
    }

    #[test]
    fn repeated_keys_keep_the_last_value_as_json_does() {
        let (_, s) = spans_of(&one_span(1, |w| {
            w.str("a", false)
                .int(1, false)
                .str("b", false)
                .int(2, false);
            w.str("a", false)
                .int(3, false)
                .str("b", false)
                .code(b'N', false);
        }));
        assert_eq!(s[0].attributes.len(), 1);
        assert_eq!(s[0].attr("a"), Some(&AttrValue::Int(3)));
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
