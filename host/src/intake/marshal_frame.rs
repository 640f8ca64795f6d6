//! Span frames in marshal form (`0x01`, then `marshal.dumps((pid, dropped, [span, ...]), 4)`)
//! straight into spans: one pass over the bytes, no intermediate tree, and owned strings only
//! where a span keeps them. Layout, checks and value typing are those of the JSON form (wire.rs);
//! this is the hot path (one frame carries up to 256 spans, tens of thousands a second).
use super::marshal::{Head, MarshalError, Reader};
use super::wire::{SpanFields, WireError};
use crate::span::{AttrValue, Attribute, Event, Span};

/// Capacity reserved from a length field before the items prove it (they may be refs, 5 bytes).
const MAX_PREALLOC: usize = 1024;
/// Attributes the tracer's client spans carry (server spans about 10, exception events 2).
const SPAN_ATTRS: usize = 8;
const EVENT_ATTRS: usize = 2;

/// Why a span could not be read: broken marshal, or valid marshal of the wrong shape.
enum Bad {
    Marshal(MarshalError),
    Shape,
}

impl From<MarshalError> for Bad {
    fn from(e: MarshalError) -> Self {
        Bad::Marshal(e)
    }
}

/// `(dropped_in_process, spans)` of one frame body (after its `0x01`).
pub(super) fn decode(data: &[u8]) -> Result<(u64, Vec<Span>), WireError> {
    let mut r = Reader::new(data);
    let Head::Seq(n, top) = r.open(0)? else {
        return Err(WireError::Shape("not a tuple"));
    };
    if n != 3 {
        return Err(WireError::Shape("not (pid, dropped, spans)"));
    }
    // The pid in a frame is informative only: the peer's credentials say who sent it.
    r.skip(1)?;
    let dropped = dropped(&mut r)?;
    let Head::Seq(count, list) = r.open(1)? else {
        return Err(WireError::Shape("spans is not a list"));
    };
    let mut spans = Vec::with_capacity(count.min(MAX_PREALLOC));
    for index in 0..count {
        let fields = span(&mut r, 2).map_err(|e| match e {
            Bad::Marshal(e) => WireError::Marshal(e),
            Bad::Shape => WireError::BadSpan {
                index,
                reason: "wrong field types",
            },
        })?;
        spans.push(fields.check(index)?);
    }
    r.close(list);
    r.close(top);
    Ok((dropped, spans))
}

/// A counter: saturates above u64, and anything but a non-negative int reads as 0.
fn dropped(r: &mut Reader<'_>) -> Result<u64, MarshalError> {
    Ok(match r.open(1)? {
        Head::Int(i) => u64::try_from(i.max(0)).unwrap_or(u64::MAX),
        Head::UInt(_) => u64::MAX,
        other => {
            r.discard(other, 1)?;
            0
        }
    })
}

/// `[trace_id, span_id, parent_id, name, kind, start_ns, end_ns, status, status_message,
///   {attributes}, [[event_name, time_ns, {attributes}], ...]]`
fn span(r: &mut Reader<'_>, depth: usize) -> Result<SpanFields, Bad> {
    let Head::Seq(11, open) = r.open(depth)? else {
        return Err(Bad::Shape);
    };
    let d = depth + 1;
    // Fields are evaluated in the order written, which is the order on the wire.
    let fields = SpanFields {
        trace_id: uint(r, d)?,
        span_id: narrow(uint(r, d)?)?,
        parent: narrow(uint(r, d)?)?,
        name: string(r, d)?,
        kind: narrow(uint(r, d)?)?,
        start: narrow(uint(r, d)?)?,
        end: narrow(uint(r, d)?)?,
        status: narrow(uint(r, d)?)?,
        message: string(r, d)?,
        attributes: attributes(r, d, SPAN_ATTRS)?,
        events: events(r, d)?,
    };
    r.close(open);
    Ok(fields)
}

fn uint(r: &mut Reader<'_>, depth: usize) -> Result<u128, Bad> {
    match r.open(depth)? {
        Head::Int(i) => u128::try_from(i).map_err(|_| Bad::Shape),
        Head::UInt(u) => Ok(u),
        _ => Err(Bad::Shape),
    }
}

fn narrow<T: TryFrom<u128>>(v: u128) -> Result<T, Bad> {
    T::try_from(v).map_err(|_| Bad::Shape)
}

fn string(r: &mut Reader<'_>, depth: usize) -> Result<String, Bad> {
    match r.open(depth)? {
        Head::Str(s) => Ok(s.to_owned()),
        _ => Err(Bad::Shape),
    }
}

fn events(r: &mut Reader<'_>, depth: usize) -> Result<Vec<Event>, Bad> {
    let Head::Seq(n, open) = r.open(depth)? else {
        return Err(Bad::Shape);
    };
    let mut events = Vec::with_capacity(n.min(MAX_PREALLOC));
    for _ in 0..n {
        events.push(event(r, depth + 1)?);
    }
    r.close(open);
    Ok(events)
}

fn event(r: &mut Reader<'_>, depth: usize) -> Result<Event, Bad> {
    let Head::Seq(3, open) = r.open(depth)? else {
        return Err(Bad::Shape);
    };
    let d = depth + 1;
    let event = Event {
        name: string(r, d)?,
        time_unix_nano: narrow(uint(r, d)?)?,
        attributes: attributes(r, d, EVENT_ATTRS)?,
    };
    r.close(open);
    Ok(event)
}

/// `capacity`: a dict's length is not on the wire, so the usual count, to grow the list at most once.
fn attributes(r: &mut Reader<'_>, depth: usize, capacity: usize) -> Result<Vec<Attribute>, Bad> {
    let Head::Dict(open) = r.open(depth)? else {
        return Err(Bad::Shape);
    };
    let mut attrs = Attrs {
        list: Vec::with_capacity(capacity),
        seen: 0,
    };
    while r.dict_next()? {
        let Head::Str(key) = r.open(depth + 1)? else {
            return Err(Bad::Shape);
        };
        let value = attr_value(r, depth + 1)?;
        attrs.set(key, value);
    }
    r.close(open);
    Ok(attrs.list)
}

/// Attributes in the dict's order. Keys of a Python dict are unique, so only a hostile frame
/// repeats one; a 64-bit filter keeps the exact search off the common path. As in the JSON form,
/// the last value wins, and a value without an attribute type (None) removes the key.
struct Attrs {
    list: Vec<Attribute>,
    seen: u64,
}

impl Attrs {
    fn set(&mut self, key: &str, value: Option<AttrValue>) {
        let last = key.as_bytes().last().copied().unwrap_or(0);
        let bit = 1u64 << ((key.len().wrapping_mul(7) + usize::from(last)) & 63);
        let found = if self.seen & bit != 0 {
            self.list.iter().position(|a| a.key == key)
        } else {
            None
        };
        self.seen |= bit;
        match (found, value) {
            (Some(i), Some(value)) => self.list[i].value = value,
            (Some(i), None) => {
                self.list.remove(i);
            }
            (None, Some(value)) => self.list.push(Attribute {
                key: key.to_owned(),
                value,
            }),
            (None, None) => {}
        }
    }
}

/// Typed as the JSON form types it: ints beyond i64 become doubles, non-finite floats and
/// None, bytes or dicts have no attribute type, and a list becomes a string array.
fn attr_value(r: &mut Reader<'_>, depth: usize) -> Result<Option<AttrValue>, MarshalError> {
    Ok(match r.open(depth)? {
        Head::Str(s) => Some(AttrValue::Str(s.to_owned())),
        Head::Bool(b) => Some(AttrValue::Bool(b)),
        Head::Int(i) => Some(match i64::try_from(i) {
            Ok(i) => AttrValue::Int(i),
            Err(_) => AttrValue::Double(i as f64),
        }),
        Head::UInt(u) => Some(AttrValue::Double(u as f64)),
        Head::Float(f) => f.is_finite().then_some(AttrValue::Double(f)),
        Head::Seq(n, open) => {
            let mut items = Vec::with_capacity(n.min(MAX_PREALLOC));
            for _ in 0..n {
                items.push(array_item(r, depth + 1)?);
            }
            r.close(open);
            Some(AttrValue::StrArray(items))
        }
        other => {
            r.discard(other, depth)?;
            None
        }
    })
}

/// Scalars as text; anything else as `null`, as the JSON form renders it.
fn array_item(r: &mut Reader<'_>, depth: usize) -> Result<String, MarshalError> {
    Ok(match r.open(depth)? {
        Head::Str(s) => s.to_owned(),
        Head::Int(i) => i.to_string(),
        Head::UInt(u) => u.to_string(),
        Head::Float(f) => f.to_string(),
        Head::Bool(b) => b.to_string(),
        other => {
            r.discard(other, depth)?;
            "null".to_owned()
        }
    })
}
