//! The binary form of a chunk: the spans of one trace written in one transaction, stored as one
//! row. Binary rather than JSON because formatting and escaping JSON was a large share of the
//! writer's CPU; every string is copied once, length-prefixed, and numbers are varints.
//!
//! Layout (all integers little-endian or LEB128 varints):
//! ```text
//! chunk  := version:u8 trace_id:[u8;16] (big-endian) base_ns:u64 count:u32 span*
//! span   := span_id:u64 flags:u8 [parent:u64] service:varint pid:varint [endpoint:varint]
//!           start:zigzag(start - base_ns) duration:varint name:str [message:str]
//!           attrs events
//! flags  := kind (bits 0-2) | status (bits 3-4) | has parent (5) | has endpoint (6) | has message (7)
//! attrs  := count:varint (key value)*      key := varint id<<1 | (len<<1 | 1) bytes
//! value  := 0 str | 1 zigzag int | 2 f64 bits:u64 | 3 false | 4 true | 5 count:varint str*
//! events := count:varint (name:str time:zigzag(time - span start) attrs)*
//! str    := len:varint bytes (UTF-8)
//! ```
//! Oversized input is cut here (see the limits in `encode`), so one span cannot make a row huge.
use std::collections::HashMap;

use super::encode::{
    self, KeyDict, MAX_ARRAY_ITEMS, MAX_ATTRIBUTES, MAX_EVENTS, MAX_NAME_BYTES, MAX_VALUE_BYTES,
};
use crate::span::{AttrValue, Attribute, Event, Span, SpanKind, StatusCode};

pub const VERSION: u8 = 1;
const HEADER_BYTES: usize = 1 + 16 + 8 + 4;
const COUNT_AT: usize = 1 + 16 + 8;

const FLAG_PARENT: u8 = 1 << 5;
const FLAG_ENDPOINT: u8 = 1 << 6;
const FLAG_MESSAGE: u8 = 1 << 7;

const TAG_STR: u8 = 0;
const TAG_INT: u8 = 1;
const TAG_DOUBLE: u8 = 2;
const TAG_FALSE: u8 = 3;
const TAG_TRUE: u8 = 4;
const TAG_ARRAY: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("chunk is shorter than its header ({0} bytes)")]
    Short(usize),
    #[error("unknown chunk format version {0}")]
    Version(u8),
    #[error("chunk ends inside a value at byte {0}")]
    Truncated(usize),
    #[error("varint longer than 64 bits at byte {0}")]
    Varint(usize),
    #[error("unknown value tag {tag} at byte {at}")]
    Tag { tag: u8, at: usize },
    #[error("string at byte {0} is not UTF-8")]
    Utf8(usize),
    #[error("{0} bytes follow the last span")]
    Trailing(usize),
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Writes `s` cut to `max` bytes (marked when cut, as `encode::truncate` does).
fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    if s.len() <= max {
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    } else {
        let cut = encode::truncate(s, max);
        put_varint(out, cut.len() as u64);
        out.extend_from_slice(cut.as_bytes());
    }
}

fn put_attrs(out: &mut Vec<u8>, attrs: &[Attribute], keys: &mut KeyDict) {
    let kept = &attrs[..attrs.len().min(MAX_ATTRIBUTES)];
    put_varint(out, kept.len() as u64);
    for a in kept {
        match keys.id(&a.key) {
            Some(id) => put_varint(out, u64::from(id) << 1),
            None => {
                let key = encode::truncate(&a.key, MAX_NAME_BYTES);
                put_varint(out, ((key.len() as u64) << 1) | 1);
                out.extend_from_slice(key.as_bytes());
            }
        }
        match &a.value {
            AttrValue::Str(s) => {
                out.push(TAG_STR);
                put_str(out, s, MAX_VALUE_BYTES);
            }
            AttrValue::Int(i) => {
                out.push(TAG_INT);
                put_varint(out, zigzag(*i));
            }
            AttrValue::Double(d) => {
                out.push(TAG_DOUBLE);
                out.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            AttrValue::Bool(b) => out.push(if *b { TAG_TRUE } else { TAG_FALSE }),
            AttrValue::StrArray(items) => {
                out.push(TAG_ARRAY);
                let kept = &items[..items.len().min(MAX_ARRAY_ITEMS)];
                put_varint(out, kept.len() as u64);
                for item in kept {
                    put_str(out, item, MAX_VALUE_BYTES);
                }
            }
        }
    }
}

/// One trace's spans being collected for a chunk row. The buffer is reused across transactions.
#[derive(Default)]
pub struct ChunkBuf {
    bytes: Vec<u8>,
    base_ns: u64,
    count: u32,
}

/// Where a span came from, stored with it.
#[derive(Clone, Copy)]
pub struct Origin {
    pub service_id: i64,
    pub pid: u32,
    pub endpoint_id: Option<i64>,
}

impl ChunkBuf {
    pub fn reset(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn push(&mut self, span: &Span, origin: Origin, keys: &mut KeyDict) {
        let out = &mut self.bytes;
        if self.count == 0 {
            out.clear();
            self.base_ns = span.start_unix_nano;
            out.push(VERSION);
            out.extend_from_slice(&span.trace_id.to_be_bytes());
            out.extend_from_slice(&self.base_ns.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        out.extend_from_slice(&span.span_id.to_le_bytes());
        let mut flags =
            encode::kind_code(span.kind) as u8 | (encode::status_code(span.status.code) as u8) << 3;
        if span.parent_span_id.is_some() {
            flags |= FLAG_PARENT;
        }
        if origin.endpoint_id.is_some() {
            flags |= FLAG_ENDPOINT;
        }
        if !span.status.message.is_empty() {
            flags |= FLAG_MESSAGE;
        }
        out.push(flags);
        if let Some(p) = span.parent_span_id {
            out.extend_from_slice(&p.to_le_bytes());
        }
        put_varint(out, origin.service_id as u64);
        put_varint(out, u64::from(origin.pid));
        if let Some(e) = origin.endpoint_id {
            put_varint(out, e as u64);
        }
        put_varint(
            out,
            zigzag(span.start_unix_nano.wrapping_sub(self.base_ns) as i64),
        );
        put_varint(out, span.end_unix_nano.saturating_sub(span.start_unix_nano));
        put_str(out, &span.name, MAX_NAME_BYTES);
        if !span.status.message.is_empty() {
            put_str(out, &span.status.message, MAX_VALUE_BYTES);
        }
        put_attrs(out, &span.attributes, keys);
        let events = &span.events[..span.events.len().min(MAX_EVENTS)];
        put_varint(out, events.len() as u64);
        for e in events {
            put_str(out, &e.name, MAX_NAME_BYTES);
            put_varint(
                out,
                zigzag(e.time_unix_nano.wrapping_sub(span.start_unix_nano) as i64),
            );
            put_attrs(out, &e.attributes, keys);
        }
        self.count += 1;
        self.bytes[COUNT_AT..HEADER_BYTES].copy_from_slice(&self.count.to_le_bytes());
    }

    /// The finished chunk (valid as soon as one span was pushed).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// One span as a chunk gives it back.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSpan {
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub service_id: i64,
    pub pid: u32,
    pub endpoint_id: Option<i64>,
    pub kind: SpanKind,
    pub status: StatusCode,
    pub status_message: String,
    pub name: String,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub attributes: Vec<Attribute>,
    pub events: Vec<Event>,
}

#[derive(Debug)]
pub struct Chunk {
    pub trace_id: u128,
    pub spans: Vec<DecodedSpan>,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.at;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Varint(start))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = self.varint()?;
        // Never trust a length beyond what is left (no huge allocation from a bad row).
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len() - self.at)
            .ok_or(DecodeError::Truncated(at))
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.len()?;
        let at = self.at;
        let b = self.bytes(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Utf8(at))
    }

    fn attrs(&mut self, keys: &HashMap<u32, String>) -> Result<Vec<Attribute>, DecodeError> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.varint()?;
            let key = if k & 1 == 0 {
                let id = (k >> 1) as u32;
                keys.get(&id).cloned().unwrap_or_else(|| id.to_string())
            } else {
                let n = usize::try_from(k >> 1).unwrap_or(usize::MAX);
                let at = self.at;
                std::str::from_utf8(self.bytes(n)?)
                    .map_err(|_| DecodeError::Utf8(at))?
                    .to_owned()
            };
            let at = self.at;
            let value = match self.u8()? {
                TAG_STR => AttrValue::Str(self.str()?),
                TAG_INT => AttrValue::Int(unzigzag(self.varint()?)),
                TAG_DOUBLE => AttrValue::Double(f64::from_bits(self.u64()?)),
                TAG_FALSE => AttrValue::Bool(false),
                TAG_TRUE => AttrValue::Bool(true),
                TAG_ARRAY => {
                    let n = self.len()?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.str()?);
                    }
                    AttrValue::StrArray(items)
                }
                tag => return Err(DecodeError::Tag { tag, at }),
            };
            out.push(Attribute { key, value });
        }
        Ok(out)
    }
}

/// Only the header: which trace a chunk belongs to (without decoding its spans).
fn trace_id_of(blob: &[u8]) -> Result<u128, DecodeError> {
    if blob.len() < HEADER_BYTES {
        return Err(DecodeError::Short(blob.len()));
    }
    if blob[0] != VERSION {
        return Err(DecodeError::Version(blob[0]));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&blob[1..17]);
    Ok(u128::from_be_bytes(id))
}

/// Decodes a chunk; `keys` is the attribute-name dictionary. A damaged row is an error, never a
/// panic or an unbounded allocation.
pub fn decode(blob: &[u8], keys: &HashMap<u32, String>) -> Result<Chunk, DecodeError> {
    let trace_id = trace_id_of(blob)?;
    let mut r = Reader { buf: blob, at: 17 };
    let base = r.u64()?;
    let mut c = [0u8; 4];
    c.copy_from_slice(r.bytes(4)?);
    let count = u32::from_le_bytes(c) as usize;
    // Each span takes at least 14 bytes: a count beyond that is damage, not a reason to allocate.
    let mut spans = Vec::with_capacity(count.min(blob.len() / 14));
    for _ in 0..count {
        let span_id = r.u64()?;
        let flags = r.u8()?;
        let parent_span_id = if flags & FLAG_PARENT != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        let service_id = r.varint()? as i64;
        let pid = r.varint()? as u32;
        let endpoint_id = if flags & FLAG_ENDPOINT != 0 {
            Some(r.varint()? as i64)
        } else {
            None
        };
        let start_ns = base.wrapping_add(unzigzag(r.varint()?) as u64);
        let duration_ns = r.varint()?;
        let name = r.str()?;
        let status_message = if flags & FLAG_MESSAGE != 0 {
            r.str()?
        } else {
            String::new()
        };
        let attributes = r.attrs(keys)?;
        let n = r.len()?;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str()?;
            let time_unix_nano = start_ns.wrapping_add(unzigzag(r.varint()?) as u64);
            let attributes = r.attrs(keys)?;
            events.push(Event {
                name,
                time_unix_nano,
                attributes,
            });
        }
        spans.push(DecodedSpan {
            span_id,
            parent_span_id,
            service_id,
            pid,
            endpoint_id,
            kind: encode::kind_from_code(i64::from(flags & 7)),
            status: encode::status_from_code(i64::from((flags >> 3) & 3)),
            status_message,
            name,
            start_ns,
            duration_ns,
            attributes,
            events,
        });
    }
    if r.at != blob.len() {
        return Err(DecodeError::Trailing(blob.len() - r.at));
    }
    Ok(Chunk { trace_id, spans })
}

/// A list of non-negative ids as concatenated varints (trace rows list their chunks and services
/// this way, so an upsert can append with `||`).
pub fn put_id(out: &mut Vec<u8>, id: i64) {
    put_varint(out, id as u64);
}

/// The ids of such a list; a damaged tail is ignored.
pub fn ids(blob: &[u8]) -> Vec<i64> {
    let mut r = Reader { buf: blob, at: 0 };
    let mut out = Vec::new();
    while r.at < blob.len() {
        match r.varint() {
            Ok(v) => out.push(v as i64),
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Status;

    fn span() -> Span {
        Span {
            trace_id: 0xfeed_0000_0000_0000_0000_0000_0000_beef,
            span_id: u64::MAX,
            parent_span_id: Some(7),
            name: "GET /u/{id}".into(),
            kind: SpanKind::Server,
            start_unix_nano: 1_700_000_000_000_000_000,
            end_unix_nano: 1_700_000_000_005_000_000,
            status: Status {
                code: StatusCode::Error,
                message: "boom".into(),
            },
            attributes: vec![
                Attribute::str("http.route", "/u/{id}"),
                Attribute::int("http.response.status_code", -500),
                Attribute {
                    key: "f".into(),
                    value: AttrValue::Double(f64::NEG_INFINITY),
                },
                Attribute {
                    key: "b".into(),
                    value: AttrValue::Bool(true),
                },
                Attribute {
                    key: "b2".into(),
                    value: AttrValue::Bool(false),
                },
                Attribute {
                    key: "h".into(),
                    value: AttrValue::StrArray(vec!["x".into(), "ÿ".into()]),
                },
            ],
            events: vec![Event {
                name: "exception".into(),
                time_unix_nano: 1_699_999_999_000_000_000, // before the span: negative delta
                attributes: vec![Attribute::str("exception.type", "ValueError")],
            }],
        }
    }

    fn encode_two() -> (Vec<u8>, HashMap<u32, String>) {
        let mut keys = KeyDict::load((0..3).map(|i| (i, format!("k{i}"))));
        let mut buf = ChunkBuf::default();
        let origin = Origin {
            service_id: 3,
            pid: 4242,
            endpoint_id: Some(9),
        };
        buf.push(&span(), origin, &mut keys);
        let mut second = span();
        second.parent_span_id = None;
        second.start_unix_nano -= 10; // before the chunk's base
        second.end_unix_nano = 0; // ends before it starts: duration 0
        second.status = Status::default();
        second.kind = SpanKind::Client;
        second.events.clear();
        buf.push(
            &second,
            Origin {
                endpoint_id: None,
                ..origin
            },
            &mut keys,
        );
        let dict = keys
            .take_new()
            .into_iter()
            .chain((0..3).map(|i| (i, format!("k{i}"))));
        (buf.bytes().to_vec(), dict.collect())
    }

    #[test]
    fn roundtrips_every_field_and_value_type() {
        let (bytes, dict) = encode_two();
        let chunk = decode(&bytes, &dict).unwrap();
        assert_eq!(chunk.trace_id, span().trace_id);
        assert_eq!(trace_id_of(&bytes).unwrap(), span().trace_id);
        let [a, b] = &chunk.spans[..] else {
            panic!("{:?}", chunk.spans)
        };
        let s = span();
        assert_eq!(
            (
                a.span_id,
                a.parent_span_id,
                a.service_id,
                a.pid,
                a.endpoint_id
            ),
            (s.span_id, s.parent_span_id, 3, 4242, Some(9))
        );
        assert_eq!(
            (a.kind, a.status, a.status_message.as_str()),
            (s.kind, s.status.code, "boom")
        );
        assert_eq!(
            (a.name.as_str(), a.start_ns, a.duration_ns),
            (s.name.as_str(), s.start_unix_nano, 5_000_000)
        );
        assert_eq!(a.attributes.len(), s.attributes.len());
        for (got, want) in a.attributes.iter().zip(&s.attributes) {
            assert_eq!(got.key, want.key);
            match (&got.value, &want.value) {
                (AttrValue::Double(x), AttrValue::Double(y)) => {
                    assert_eq!(x.to_bits(), y.to_bits())
                }
                (x, y) => assert_eq!(x, y),
            }
        }
        assert_eq!(a.events, s.events);
        assert_eq!(
            (b.parent_span_id, b.endpoint_id, b.kind),
            (None, None, SpanKind::Client)
        );
        assert_eq!(
            (b.start_ns, b.duration_ns, b.status),
            (s.start_unix_nano - 10, 0, StatusCode::Unset)
        );
    }

    #[test]
    fn oversized_input_is_cut_and_literal_keys_come_back() {
        let mut s = span();
        s.name = "n".repeat(100_000);
        s.attributes = (0..1000)
            .map(|i| Attribute::str(format!("k{i}"), "é".repeat(100_000)))
            .collect();
        // A full dictionary: names are stored literally.
        let mut keys = KeyDict::load((0..encode::MAX_KEYS as u32).map(|i| (i, format!("x{i}"))));
        let mut buf = ChunkBuf::default();
        buf.push(
            &s,
            Origin {
                service_id: 1,
                pid: 1,
                endpoint_id: None,
            },
            &mut keys,
        );
        assert!(buf.bytes().len() < MAX_ATTRIBUTES * (MAX_VALUE_BYTES + 64));
        let chunk = decode(buf.bytes(), &HashMap::new()).unwrap();
        let d = &chunk.spans[0];
        assert!(d.name.len() < MAX_NAME_BYTES + 32);
        assert_eq!(d.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(d.attributes[0].key, "k0");
        let AttrValue::Str(v) = &d.attributes[0].value else {
            panic!()
        };
        assert!(v.ends_with("bytes]"), "{}", &v[v.len() - 20..]);
    }

    #[test]
    fn malformed_chunks_are_errors_not_panics() {
        let (bytes, dict) = encode_two();
        assert_eq!(decode(&[], &dict).unwrap_err(), DecodeError::Short(0));
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(decode(&other, &dict).unwrap_err(), DecodeError::Version(9));
        // Every truncation, and trailing garbage, is reported.
        for n in HEADER_BYTES..bytes.len() {
            assert!(decode(&bytes[..n], &dict).is_err(), "cut at {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long, &dict).unwrap_err(), DecodeError::Trailing(1));
        // A huge count or length must not allocate or read out of bounds.
        let mut huge = bytes.clone();
        huge[COUNT_AT..HEADER_BYTES].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge, &dict).is_err());
        // Flipping any byte gives Ok or Err, never a panic.
        for i in 0..bytes.len() {
            for x in [0x00, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = x;
                let _ = decode(&b, &dict);
            }
        }
        let err = decode(&bytes[..bytes.len() - 1], &dict).unwrap_err();
        assert!(err.to_string().contains("byte"), "{err}");
    }

    #[test]
    fn id_lists_concatenate() {
        let mut a = Vec::new();
        put_id(&mut a, 5);
        put_id(&mut a, 300_000);
        let mut b = Vec::new();
        put_id(&mut b, 1);
        a.extend_from_slice(&b);
        assert_eq!(ids(&a), vec![5, 300_000, 1]);
        assert_eq!(ids(&[0x80]), Vec::<i64>::new());
    }
}
