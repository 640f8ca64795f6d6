//! Trace search by what the spans contain: attribute conditions (`key=value`, `key~=part`,
//! `key^=prefix`, `key` present) checked against the spans of each trace part, newest first.
//!
//! There is no attribute index (it would cost the writer an insert per attribute of every span,
//! several times what it writes now). Instead the parts of the range are read newest first
//! through the `parts_by_start` index, each part's blob is first searched for the literal bytes
//! of the condition's value (a part without them cannot match and is not decoded), and the scan
//! stops at the limit or after [`MAX_SCANNED_PARTS`] parts, so a search for something rare over a
//! busy day answers in bounded time with the newest matches.
use std::collections::{HashMap, HashSet};

use memchr::memmem;
use rusqlite::{params_from_iter, types::Value, Connection};

use super::chunk::{self, DecodedSpan};
use super::query::{StatusFilter, TraceQuery};
use crate::span::AttrValue;

/// Parts read at most for one attribute search.
pub const MAX_SCANNED_PARTS: usize = 50_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrOp {
    /// The value's text form equals (`500` matches the integer 500).
    Equals(String),
    /// Case-sensitive substring.
    Contains(String),
    Prefix(String),
    Present,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrFilter {
    pub key: String,
    pub op: AttrOp,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("attribute condition {0:?}: expected key=value, key~=substring, key^=prefix or key")]
pub struct BadAttrFilter(pub String);

impl std::str::FromStr for AttrFilter {
    type Err = BadAttrFilter;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadAttrFilter(s.chars().take(200).collect());
        let (key, op) = match s.find('=') {
            None => (s, AttrOp::Present),
            Some(i) => {
                let value = s[i + 1..].to_string();
                match s[..i].chars().last() {
                    Some('~') => (&s[..i - 1], AttrOp::Contains(value)),
                    Some('^') => (&s[..i - 1], AttrOp::Prefix(value)),
                    _ => (&s[..i], AttrOp::Equals(value)),
                }
            }
        };
        let key = key.trim();
        if key.is_empty() || key.len() > 256 {
            return Err(bad());
        }
        Ok(AttrFilter {
            key: key.to_string(),
            op,
        })
    }
}

impl AttrFilter {
    /// Bytes every matching part's blob must contain (string values are stored as UTF-8 as
    /// they are; numbers are not, so they have no needle).
    fn needle(&self) -> Option<&[u8]> {
        let v = match &self.op {
            AttrOp::Equals(v) if v.parse::<f64>().is_ok() || v == "true" || v == "false" => {
                return None
            }
            AttrOp::Equals(v) | AttrOp::Contains(v) | AttrOp::Prefix(v) => v,
            // Keys are stored as dictionary ids, not text.
            AttrOp::Present => return None,
        };
        (!v.is_empty()).then_some(v.as_bytes())
    }

    fn matches(&self, span: &DecodedSpan) -> bool {
        span.attributes
            .iter()
            .filter(|a| a.key == self.key)
            .any(|a| match &self.op {
                AttrOp::Present => true,
                op => values(&a.value).any(|text| match op {
                    AttrOp::Equals(v) => text == *v,
                    AttrOp::Contains(v) => text.contains(v.as_str()),
                    AttrOp::Prefix(v) => text.starts_with(v.as_str()),
                    AttrOp::Present => true,
                }),
            })
    }
}

/// The text forms of a value (each element of an array).
fn values(v: &AttrValue) -> Box<dyn Iterator<Item = String> + '_> {
    match v {
        AttrValue::Str(s) => Box::new(std::iter::once(s.clone())),
        AttrValue::Int(n) => Box::new(std::iter::once(n.to_string())),
        AttrValue::Double(d) => Box::new(std::iter::once(d.to_string())),
        AttrValue::Bool(b) => Box::new(std::iter::once(b.to_string())),
        AttrValue::StrArray(a) => Box::new(a.iter().cloned()),
    }
}

/// Trace ids (16 bytes), newest first, of parts in which every condition holds for some span,
/// and (with `service`/`endpoint`) a span of that service/endpoint exists; status and
/// min_duration apply to the part (the root's part spans the trace).
pub fn matching_traces(
    conn: &Connection,
    q: &TraceQuery,
    (from, to): (i64, i64),
    min_ns: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<Vec<u8>>> {
    let service_id: Option<i64> = match &q.service {
        Some(name) => match lookup(conn, "SELECT id FROM services WHERE name = ?1", name)? {
            Some(id) => Some(id),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let endpoint_ids: Option<HashSet<i64>> = match &q.endpoint {
        Some(name) => {
            let ids: HashSet<i64> = conn
                .prepare_cached(
                    "SELECT id FROM endpoints WHERE name = ?1 AND (?2 IS NULL OR service_id = ?2)",
                )?
                .query_map(rusqlite::params![name, service_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            Some(ids)
        }
        None => None,
    };
    let keys = super::query::attribute_keys(conn)?;
    // A condition on a key the store has never seen cannot match.
    let known: HashSet<&str> = keys.values().map(String::as_str).collect();
    if q.attributes.iter().any(|f| !known.contains(f.key.as_str())) {
        return Ok(Vec::new());
    }
    let finders: Vec<memmem::Finder<'_>> = q
        .attributes
        .iter()
        .filter_map(AttrFilter::needle)
        .map(memmem::Finder::new)
        .collect();

    let mut args: Vec<Value> = vec![from.into(), to.into()];
    let mut sql =
        "SELECT trace_id, spans FROM parts WHERE start_ns >= ?1 AND start_ns < ?2".to_string();
    match q.status {
        Some(StatusFilter::Error) => sql.push_str(" AND error = 1"),
        Some(StatusFilter::Ok) => sql.push_str(" AND error = 0"),
        None => {}
    }
    if let Some(min) = min_ns {
        args.push(min.into());
        sql.push_str(&format!(" AND end_ns - start_ns >= ?{}", args.len()));
    }
    sql.push_str(" ORDER BY start_ns DESC");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut scanned = 0usize;
    while let Some(r) = rows.next()? {
        scanned += 1;
        if scanned > MAX_SCANNED_PARTS || out.len() >= limit {
            break;
        }
        let id: Vec<u8> = r.get(0)?;
        if seen.contains(&id) {
            continue;
        }
        let blob = r.get_ref(1)?.as_blob().unwrap_or_default();
        if !finders.iter().all(|f| f.find(blob).is_some()) {
            continue;
        }
        let Ok(chunk) = chunk::decode(blob, &keys) else {
            continue;
        };
        if part_matches(&chunk.spans, q, service_id, endpoint_ids.as_ref()) {
            seen.insert(id.clone());
            out.push(id);
        }
    }
    Ok(out)
}

fn part_matches(
    spans: &[DecodedSpan],
    q: &TraceQuery,
    service_id: Option<i64>,
    endpoint_ids: Option<&HashSet<i64>>,
) -> bool {
    let owner_ok = (service_id.is_none() && endpoint_ids.is_none())
        || spans.iter().any(|s| {
            service_id.is_none_or(|id| s.service_id == id)
                && endpoint_ids.is_none_or(|e| s.endpoint_id.is_some_and(|id| e.contains(&id)))
        });
    owner_ok
        && q.attributes
            .iter()
            .all(|f| spans.iter().any(|s| f.matches(s)))
}

fn lookup(conn: &Connection, sql: &str, name: &str) -> rusqlite::Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(sql)?
        .query_row([name], |r| r.get(0))
        .optional()
}

/// Attribute keys seen by the store, sorted (for the UI's key picker).
pub fn known_keys(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let keys: HashMap<u32, String> = super::query::attribute_keys(conn)?;
    let mut v: Vec<String> = keys.into_values().collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conditions() {
        let p = |s: &str| s.parse::<AttrFilter>();
        assert_eq!(
            p("http.response.status_code=500").unwrap(),
            AttrFilter {
                key: "http.response.status_code".into(),
                op: AttrOp::Equals("500".into())
            }
        );
        assert_eq!(
            p("db.statement~=SELECT a=b").unwrap().op,
            AttrOp::Contains("SELECT a=b".into())
        );
        assert_eq!(
            p("url.path^=/api").unwrap().op,
            AttrOp::Prefix("/api".into())
        );
        assert_eq!(p("user.id").unwrap().op, AttrOp::Present);
        assert!(p("=5").is_err());
        assert!(p("~=x").is_err());
        assert!(p("").is_err());
    }
}
