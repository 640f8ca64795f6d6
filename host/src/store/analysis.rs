//! Why a trace went wrong, from its spans alone: for a failed trace the span where the error
//! originated, for every trace where its time went (critical path and self time).
//!
//! The spans of a trace arrive from several processes in any order, and some may be missing (a
//! process not traced, a batch not yet delivered, a parent dropped). The analysis therefore only
//! trusts parent links that resolve inside the trace, never assumes one root, and guards against
//! cycles in bad input.
//!
//! "Failing" is wider than the OpenTelemetry error status: a server span answering 404 has no
//! error status (4xx is the caller's fault by the semantic conventions), yet it is where the
//! client's failed call was decided. So a failing client span is followed into the server span
//! it called whatever that span's status, and the walk goes on down to the deepest failing span
//! whose children are fine.
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::query::StoredSpan;
use crate::span::{AttrValue, SpanKind, StatusCode};

/// How many spans the self-time and critical-path lists name at most.
const TOP: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// For a trace with a failing span: where the error originated.
    pub error: Option<ErrorOrigin>,
    /// Where the trace's time went (every trace with spans).
    pub time: Option<TimeBreakdown>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorOrigin {
    pub span_id: String,
    pub service: String,
    pub name: String,
    /// One line for a person: exception, status code, status message.
    pub reason: String,
    pub exception_type: Option<String>,
    pub exception_message: Option<String>,
    pub status_code: Option<i64>,
    /// From the first failing span the walk started at down to the origin.
    pub path: Vec<String>,
    /// Set when the origin is a client call whose server side is not in the trace (a system
    /// that is not traced, or spans not delivered yet): the cause may lie further on.
    pub callee_missing: bool,
    /// Other failing spans the error did not come through (retries, handled errors).
    pub other_failures: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeBreakdown {
    /// The trace's extent (first start to last end), milliseconds.
    pub total_ms: f64,
    /// Spans on the critical path (the chain that decided the trace's end), by their time on it.
    pub critical_path: Vec<SpanShare>,
    /// The spans with the most time of their own (not covered by children).
    pub self_time: Vec<SpanShare>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanShare {
    pub span_id: String,
    pub service: String,
    pub name: String,
    pub ms: f64,
    /// ms / total_ms, 0..=1.
    pub share: f64,
}

/// The trace's spans as a forest with resolved links.
struct Tree<'a> {
    spans: &'a [StoredSpan],
    parent: Vec<Option<usize>>,
    /// Children in start order.
    children: Vec<Vec<usize>>,
}

impl<'a> Tree<'a> {
    fn new(spans: &'a [StoredSpan]) -> Self {
        let index: HashMap<&str, usize> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id.as_str(), i))
            .collect();
        let mut parent: Vec<Option<usize>> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parent_span_id
                    .as_deref()
                    .and_then(|p| index.get(p).copied())
                    .filter(|&p| p != i)
            })
            .collect();
        // Break cycles: a span whose ancestors loop back is made a root.
        for i in 0..spans.len() {
            let mut seen = HashSet::new();
            let mut cur = i;
            while let Some(p) = parent[cur] {
                if !seen.insert(cur) {
                    parent[cur] = None;
                    break;
                }
                cur = p;
            }
        }
        let mut children = vec![Vec::new(); spans.len()];
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(i);
            }
        }
        for c in &mut children {
            c.sort_by(|&a, &b| spans[a].start_ms.total_cmp(&spans[b].start_ms));
        }
        Self {
            spans,
            parent,
            children,
        }
    }

    fn end(&self, i: usize) -> f64 {
        self.spans[i].start_ms + self.spans[i].duration_ms
    }

    fn depth(&self, i: usize) -> usize {
        let mut d = 0;
        let mut cur = i;
        while let Some(p) = self.parent[cur] {
            d += 1;
            cur = p;
            if d > self.spans.len() {
                break;
            }
        }
        d
    }
}

pub fn analyze(spans: &[StoredSpan]) -> Analysis {
    if spans.is_empty() {
        return Analysis {
            error: None,
            time: None,
        };
    }
    let tree = Tree::new(spans);
    Analysis {
        error: error_origin(&tree),
        time: Some(time_breakdown(&tree)),
    }
}

fn attr<'s>(s: &'s StoredSpan, keys: &[&str]) -> Option<&'s AttrValue> {
    keys.iter()
        .find_map(|k| s.attributes.iter().find(|a| a.key == *k).map(|a| &a.value))
}

fn status_code(s: &StoredSpan) -> Option<i64> {
    match attr(s, &["http.response.status_code", "http.status_code"])? {
        AttrValue::Int(n) => Some(*n),
        AttrValue::Str(v) => v.parse().ok(),
        AttrValue::Double(d) => Some(*d as i64),
        _ => None,
    }
}

/// (type, message) of the span's last exception event.
fn exception(s: &StoredSpan) -> (Option<String>, Option<String>) {
    let Some(e) = s.events.iter().rev().find(|e| e.name == "exception") else {
        return (None, None);
    };
    let get = |k: &str| {
        e.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| match &a.value {
                AttrValue::Str(v) if !v.is_empty() => Some(v.clone()),
                _ => None,
            })
    };
    (get("exception.type"), get("exception.message"))
}

/// Failed by its own account: error status, an exception, or an HTTP error answer. A 4xx counts
/// for clients and for servers alike here; whether to descend into it is decided by the walk.
fn failing(s: &StoredSpan) -> bool {
    s.status == StatusCode::Error
        || status_code(s).is_some_and(|c| c >= 500 || (s.kind == SpanKind::Client && c >= 400))
        || s.events.iter().any(|e| e.name == "exception")
}

fn error_origin(tree: &Tree<'_>) -> Option<ErrorOrigin> {
    let spans = tree.spans;
    let failed: Vec<usize> = (0..spans.len()).filter(|&i| failing(&spans[i])).collect();
    // Start at the outermost failure (ties: the earliest): the error as the user saw it.
    let start = *failed.iter().min_by(|&&a, &&b| {
        tree.depth(a)
            .cmp(&tree.depth(b))
            .then(spans[a].start_ms.total_cmp(&spans[b].start_ms))
    })?;
    let mut path = vec![start];
    let mut visited = HashSet::from([start]);
    let mut callee_missing = false;
    let mut cur = start;
    loop {
        let kids = &tree.children[cur];
        let failing_kids: Vec<usize> = kids
            .iter()
            .copied()
            .filter(|&c| failing(&spans[c]) && !visited.contains(&c))
            .collect();
        // The error that propagated: the failing child that ended last (an earlier failure
        // followed by a successful retry did not end the parent).
        let next = failing_kids.iter().copied().max_by(|&a, &b| {
            tree.end(a)
                .total_cmp(&tree.end(b))
                .then(spans[a].start_ms.total_cmp(&spans[b].start_ms))
        });
        let next = match next {
            Some(n) => Some(n),
            // A failing client call: the server span it reached decided the answer, even with a
            // 4xx and no error status of its own.
            None if spans[cur].kind == SpanKind::Client => {
                let server = kids
                    .iter()
                    .copied()
                    .filter(|&c| spans[c].kind == SpanKind::Server && !visited.contains(&c))
                    .max_by(|&a, &b| tree.end(a).total_cmp(&tree.end(b)));
                // An HTTP answer with no server span under it: the server is not traced or its
                // spans are not here. (A database call has no status code and is its own origin.)
                if server.is_none() {
                    callee_missing = kids.is_empty() && status_code(&spans[cur]).is_some();
                }
                server
            }
            None => None,
        };
        match next {
            Some(n) => {
                visited.insert(n);
                path.push(n);
                cur = n;
            }
            None => break,
        }
    }
    let s = &spans[cur];
    let (exception_type, exception_message) = exception(s);
    let code = status_code(s);
    let mut reason = Vec::new();
    match (&exception_type, &exception_message) {
        (Some(t), Some(m)) => reason.push(format!("{t}: {m}")),
        (Some(t), None) => reason.push(t.clone()),
        (None, Some(m)) => reason.push(m.clone()),
        (None, None) => {}
    }
    if let Some(c) = code {
        reason.push(format!("HTTP {c}"));
    }
    if !s.status_message.is_empty() && exception_message.as_deref() != Some(&s.status_message) {
        reason.push(s.status_message.clone());
    }
    if reason.is_empty() {
        reason.push("error status".into());
    }
    if callee_missing {
        reason.push("the called side is not in the trace".into());
    }
    let on_path: HashSet<usize> = path.iter().copied().collect();
    // Ancestors of a failing span on the path are the same error passing through.
    let other_failures = failed
        .iter()
        .filter(|&&i| !on_path.contains(&i) && !on_path.iter().any(|&p| is_ancestor(tree, i, p)))
        .count();
    Some(ErrorOrigin {
        span_id: s.span_id.clone(),
        service: s.service.clone(),
        name: s.name.clone(),
        reason: reason.join(" · "),
        exception_type,
        exception_message,
        status_code: code,
        path: path.iter().map(|&i| spans[i].span_id.clone()).collect(),
        callee_missing,
        other_failures,
    })
}

/// Whether `a` is an ancestor of `b`.
fn is_ancestor(tree: &Tree<'_>, a: usize, b: usize) -> bool {
    let mut cur = b;
    let mut steps = 0;
    while let Some(p) = tree.parent[cur] {
        if p == a {
            return true;
        }
        cur = p;
        steps += 1;
        if steps > tree.spans.len() {
            break;
        }
    }
    false
}

fn time_breakdown(tree: &Tree<'_>) -> TimeBreakdown {
    let spans = tree.spans;
    let start = spans
        .iter()
        .map(|s| s.start_ms)
        .fold(f64::INFINITY, f64::min);
    let end = (0..spans.len())
        .map(|i| tree.end(i))
        .fold(f64::NEG_INFINITY, f64::max);
    let total = (end - start).max(0.0);
    let share = |ms: f64| if total > 0.0 { ms / total } else { 0.0 };
    let entry = |i: usize, ms: f64| SpanShare {
        span_id: spans[i].span_id.clone(),
        service: spans[i].service.clone(),
        name: spans[i].name.clone(),
        ms,
        share: share(ms),
    };

    // The critical path starts at the root that ends last (with parts missing there may be several).
    let mut on_path: Vec<f64> = vec![0.0; spans.len()];
    let root = (0..spans.len())
        .filter(|&i| tree.parent[i].is_none())
        .max_by(|&a, &b| {
            tree.end(a)
                .total_cmp(&tree.end(b))
                .then(spans[b].start_ms.total_cmp(&spans[a].start_ms))
        });
    if let Some(r) = root {
        critical(tree, r, tree.end(r), &mut on_path, 0);
    }
    let mut critical_path: Vec<SpanShare> = (0..spans.len())
        .filter(|&i| on_path[i] > 0.0)
        .map(|i| entry(i, on_path[i]))
        .collect();
    critical_path.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    critical_path.truncate(TOP);

    let mut by_self: Vec<usize> = (0..spans.len()).collect();
    by_self.sort_by(|&a, &b| spans[b].self_ms.total_cmp(&spans[a].self_ms));
    let self_time = by_self
        .into_iter()
        .take(TOP)
        .filter(|&i| spans[i].self_ms > 0.0)
        .map(|i| entry(i, spans[i].self_ms))
        .collect();
    TimeBreakdown {
        total_ms: total,
        critical_path,
        self_time,
    }
}

/// Walks back from `until` (the time this span had to finish by): the child that ended last
/// before it was what the span waited for; before that child started, the one ending last before
/// then, and so on. Time no child covers is the span's own time on the path.
fn critical(tree: &Tree<'_>, i: usize, until: f64, on_path: &mut [f64], depth: usize) {
    let s = &tree.spans[i];
    let start = s.start_ms;
    let mut t = until.min(tree.end(i));
    if depth > tree.spans.len() {
        return;
    }
    loop {
        let next = tree.children[i]
            .iter()
            .copied()
            .filter(|&c| tree.spans[c].start_ms < t && tree.end(c) > start)
            .max_by(|&a, &b| {
                tree.end(a)
                    .min(t)
                    .total_cmp(&tree.end(b).min(t))
                    .then(tree.spans[a].start_ms.total_cmp(&tree.spans[b].start_ms))
            });
        let Some(c) = next else { break };
        let child_end = tree.end(c).min(t);
        on_path[i] += (t - child_end).max(0.0);
        critical(tree, c, child_end, on_path, depth + 1);
        t = tree.spans[c].start_ms.max(start);
    }
    on_path[i] += (t - start).max(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{Attribute, Event};

    struct B(Vec<StoredSpan>);

    impl B {
        #[allow(clippy::too_many_arguments)]
        fn span(
            &mut self,
            id: u64,
            parent: Option<u64>,
            service: &str,
            kind: SpanKind,
            name: &str,
            start: f64,
            dur: f64,
        ) -> &mut StoredSpan {
            self.0.push(StoredSpan {
                span_id: format!("{id:016x}"),
                parent_span_id: parent.map(|p| format!("{p:016x}")),
                service: service.into(),
                pid: 1,
                name: name.into(),
                kind,
                status: StatusCode::Unset,
                status_message: String::new(),
                endpoint: None,
                start_ms: start,
                duration_ms: dur,
                self_ms: 0.0,
                depth: 0,
                attributes: Vec::new(),
                events: Vec::new(),
            });
            self.0.last_mut().unwrap()
        }

        /// Self times the way the store computes them.
        fn done(mut self) -> Vec<StoredSpan> {
            let raw: Vec<(u64, Option<u64>, i64, i64)> = self
                .0
                .iter()
                .map(|s| {
                    let id = u64::from_str_radix(&s.span_id, 16).unwrap();
                    let p = s
                        .parent_span_id
                        .as_deref()
                        .map(|p| u64::from_str_radix(p, 16).unwrap());
                    let st = (s.start_ms * 1e6) as i64;
                    (id, p, st, st + (s.duration_ms * 1e6) as i64)
                })
                .collect();
            for (s, (d, own)) in self.0.iter_mut().zip(super::super::tree::shape(&raw)) {
                s.depth = d;
                s.self_ms = own as f64 / 1e6;
            }
            self.0
        }
    }

    fn http(s: &mut StoredSpan, code: i64) {
        s.attributes
            .push(Attribute::int("http.response.status_code", code));
    }

    fn raise(s: &mut StoredSpan, ty: &str, msg: &str) {
        s.status = StatusCode::Error;
        s.status_message = msg.into();
        s.events.push(Event {
            name: "exception".into(),
            time_unix_nano: 0,
            attributes: vec![
                Attribute::str("exception.type", ty),
                Attribute::str("exception.message", msg),
            ],
        });
    }

    fn id(n: u64) -> String {
        format!("{n:016x}")
    }

    /// frontend GET /checkout → client → backend GET /stock → db query raises; the backend
    /// answers 500, the frontend re-raises. The origin is the db span, reached through the
    /// client and server spans; the spans are given out of order (backend first).
    #[test]
    fn error_two_services_deep_out_of_order() {
        let mut b = B(Vec::new());
        raise(
            b.span(
                5,
                Some(4),
                "backend",
                SpanKind::Client,
                "SELECT stock",
                30.0,
                5.0,
            ),
            "sqlite3.OperationalError",
            "no such table: stock",
        );
        let s = b.span(
            4,
            Some(3),
            "backend",
            SpanKind::Server,
            "GET /stock",
            25.0,
            15.0,
        );
        http(s, 500);
        s.status = StatusCode::Error;
        b.span(
            6,
            Some(4),
            "backend",
            SpanKind::Internal,
            "render",
            26.0,
            2.0,
        );
        let c = b.span(3, Some(1), "frontend", SpanKind::Client, "GET", 20.0, 25.0);
        http(c, 500);
        c.status = StatusCode::Error;
        raise(
            b.span(
                1,
                None,
                "frontend",
                SpanKind::Server,
                "GET /checkout",
                0.0,
                50.0,
            ),
            "requests.HTTPError",
            "500 Server Error",
        );
        b.span(2, Some(1), "frontend", SpanKind::Client, "GET", 5.0, 5.0);
        let a = analyze(&b.done());
        let e = a.error.unwrap();
        assert_eq!(e.span_id, id(5));
        assert_eq!(e.path, vec![id(1), id(3), id(4), id(5)]);
        assert_eq!(
            e.exception_type.as_deref(),
            Some("sqlite3.OperationalError")
        );
        assert!(e.reason.contains("no such table: stock"), "{}", e.reason);
        assert!(!e.callee_missing);
        assert_eq!(e.other_failures, 0);
    }

    /// The demo's case: a client span fails with 404; the server it called answered 404 with no
    /// error status. The origin is the server span, one hop further down.
    #[test]
    fn client_404_leads_into_the_server_that_answered() {
        let mut b = B(Vec::new());
        b.span(1, None, "web", SpanKind::Server, "GET /order", 0.0, 40.0);
        let c = b.span(2, Some(1), "web", SpanKind::Client, "GET", 5.0, 30.0);
        http(c, 404);
        c.status = StatusCode::Error;
        let s = b.span(
            3,
            Some(2),
            "api",
            SpanKind::Server,
            "GET /items/{id}",
            8.0,
            20.0,
        );
        http(s, 404);
        b.span(
            4,
            Some(3),
            "api",
            SpanKind::Client,
            "SELECT items",
            10.0,
            5.0,
        );
        let e = analyze(&b.done()).error.unwrap();
        assert_eq!(e.span_id, id(3));
        assert_eq!(e.service, "api");
        assert_eq!(e.status_code, Some(404));
        assert_eq!(e.path, vec![id(2), id(3)]);
    }

    /// The called service's spans have not arrived: the failing client span is the best answer,
    /// flagged as such. Another failure that was retried is counted, not chosen.
    #[test]
    fn missing_callee_and_a_retried_failure() {
        let mut b = B(Vec::new());
        b.span(1, None, "web", SpanKind::Server, "GET /pay", 0.0, 100.0)
            .status = StatusCode::Error;
        let first = b.span(2, Some(1), "web", SpanKind::Client, "POST", 10.0, 10.0);
        http(first, 503);
        let second = b.span(3, Some(1), "web", SpanKind::Client, "POST", 30.0, 60.0);
        http(second, 502);
        second.status = StatusCode::Error;
        // An orphan whose parent never arrived: part of the trace, not of the error's path.
        b.span(9, Some(77), "worker", SpanKind::Internal, "job", 50.0, 5.0);
        let e = analyze(&b.done()).error.unwrap();
        assert_eq!(e.span_id, id(3));
        assert!(e.callee_missing);
        assert_eq!(e.status_code, Some(502));
        assert_eq!(e.other_failures, 1);
    }

    /// A trace whose root is missing: the failing spans are orphans; the walk starts at the
    /// outermost of them. Cycles in parent links do not hang.
    #[test]
    fn missing_root_and_cycles() {
        let mut b = B(Vec::new());
        b.span(2, Some(1), "api", SpanKind::Server, "GET /x", 0.0, 10.0)
            .status = StatusCode::Error;
        raise(
            b.span(3, Some(2), "api", SpanKind::Internal, "parse", 1.0, 2.0),
            "ValueError",
            "bad json",
        );
        b.span(7, Some(8), "api", SpanKind::Internal, "a", 0.0, 1.0);
        b.span(8, Some(7), "api", SpanKind::Internal, "b", 0.0, 1.0);
        let a = analyze(&b.done());
        let e = a.error.unwrap();
        assert_eq!(e.span_id, id(3));
        assert_eq!(e.reason, "ValueError: bad json");
        assert!(a.time.is_some());
    }

    /// No failure: no error origin; the critical path follows the sequential calls the root
    /// waited for, and self time names the slow span with its share.
    #[test]
    fn slow_trace_critical_path_and_self_time() {
        let mut b = B(Vec::new());
        b.span(1, None, "web", SpanKind::Server, "GET /report", 0.0, 100.0);
        b.span(2, Some(1), "web", SpanKind::Client, "SELECT a", 10.0, 20.0);
        // Runs in parallel with 4 and ends earlier: not on the critical path.
        b.span(3, Some(1), "web", SpanKind::Client, "GET cache", 35.0, 10.0);
        b.span(4, Some(1), "web", SpanKind::Client, "SELECT b", 32.0, 60.0);
        let a = analyze(&b.done());
        assert!(a.error.is_none());
        let t = a.time.unwrap();
        assert_eq!(t.total_ms, 100.0);
        let path: HashMap<&str, f64> = t
            .critical_path
            .iter()
            .map(|s| (s.name.as_str(), s.ms))
            .collect();
        assert_eq!(path.get("SELECT b"), Some(&60.0));
        assert_eq!(path.get("SELECT a"), Some(&20.0));
        assert_eq!(path.get("GET /report"), Some(&20.0));
        assert!(!path.contains_key("GET cache"));
        let on_path: f64 = t.critical_path.iter().map(|s| s.ms).sum();
        assert!((on_path - 100.0).abs() < 1e-9);
        assert_eq!(t.self_time[0].name, "SELECT b");
        assert!((t.self_time[0].share - 0.6).abs() < 1e-9);
    }

    #[test]
    fn empty_trace() {
        let a = analyze(&[]);
        assert!(a.error.is_none() && a.time.is_none());
    }
}
