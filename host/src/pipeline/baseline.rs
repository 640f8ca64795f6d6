//! The host's native baseline redaction, so that redaction fails closed: whenever a batch was
//! not enriched by a sensor (the call failed, the sensor was quarantined or removed), these rules
//! run before any sink sees the spans. They are the sensors' own redaction and SQL rules
//! (`zerostep_rules`: URL credentials, credential headers, sensitive query parameters, SQL
//! literals), compiled into the agent, plus the declarative redaction rules sensors of contract
//! 0.2 declare (`rules().redaction`), applied with the same functions.
use std::borrow::Cow;

use zerostep_rules::enrich::{self as rules, redact, sql, OwnedValue, Value};

use crate::sensors::{RedactionRules, RouteTemplate};
use crate::span::{AttrValue, Attribute, Span};

/// Redacts `spans` in place; returns how many spans changed.
pub fn redact_spans(spans: &mut [Span], declared: &[RedactionRules]) -> usize {
    let mut changed = 0;
    for span in spans.iter_mut() {
        let mut touched = builtin(span);
        for r in declared {
            touched |= declared_rules(span, r);
        }
        changed += usize::from(touched);
    }
    changed
}

/// A sensor's declared route templates, for server spans that have no `http.route` yet (the
/// sensor would have set one): the first template whose pattern matches `url.path` gives the
/// route and the span name `METHOD route`. Returns how many spans got a route.
pub fn apply_routes(spans: &mut [Span], templates: &[RouteTemplate]) -> usize {
    if templates.is_empty() {
        return 0;
    }
    let mut n = 0;
    for span in spans.iter_mut() {
        if span.kind != crate::span::SpanKind::Server
            || span.attributes.iter().any(|a| a.key == "http.route")
        {
            continue;
        }
        let path = span
            .attributes
            .iter()
            .find_map(|a| match (&*a.key, &a.value) {
                ("url.path", AttrValue::Str(p)) => Some(p.clone()),
                _ => None,
            });
        let Some(path) = path else { continue };
        let Some(t) = templates.iter().find(|t| route_matches(&t.pattern, &path)) else {
            continue;
        };
        let method = span
            .attributes
            .iter()
            .find_map(|a| match (&*a.key, &a.value) {
                ("http.request.method", AttrValue::Str(m)) => Some(m.clone()),
                _ => None,
            });
        span.set_attr(Attribute::str("http.route", t.template.clone()));
        if let Some(m) = method {
            span.name = format!("{m} {}", t.template);
        }
        n += 1;
    }
    n
}

/// Segments are literal, `*` (any one segment) or `**` (the rest, at least one segment).
fn route_matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.trim_matches('/').split('/');
    let mut s = path.trim_matches('/').split('/');
    loop {
        match (p.next(), s.next()) {
            (Some("**"), Some(_)) => return true,
            (Some("*"), Some(seg)) if !seg.is_empty() => {}
            (Some(lit), Some(seg)) if lit == seg => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn builtin(span: &mut Span) -> bool {
    let attrs = span.attributes.iter().map(|a| {
        let v = match &a.value {
            AttrValue::Str(v) => Value::Str(v),
            AttrValue::Int(v) => Value::Int(*v),
            AttrValue::Double(v) => Value::Double(*v),
            AttrValue::Bool(v) => Value::Bool(*v),
            AttrValue::StrArray(v) => Value::StrArray(v),
        };
        (a.key.as_str(), v)
    });
    let Some(patch) = rules::redact_span(0, attrs) else {
        return false;
    };
    span.attributes
        .retain(|a| !patch.remove_attributes.contains(&a.key.as_str()));
    for (k, v) in patch.set_attributes {
        let value = match v {
            OwnedValue::Str(v) => AttrValue::Str(v),
            OwnedValue::Int(v) => AttrValue::Int(v),
            OwnedValue::Double(v) => AttrValue::Double(v),
            OwnedValue::Bool(v) => AttrValue::Bool(v),
            OwnedValue::StrArray(v) => AttrValue::StrArray(v),
        };
        span.set_attr(Attribute {
            key: k.to_string(),
            value,
        });
    }
    true
}

/// A sensor's declared keys: whole values, URLs and SQL.
fn declared_rules(span: &mut Span, r: &RedactionRules) -> bool {
    let system = span
        .attributes
        .iter()
        .find(|a| a.key == "db.system.name" || a.key == "db.system")
        .and_then(|a| match &a.value {
            AttrValue::Str(s) => Some(s.clone()),
            _ => None,
        });
    let mut touched = false;
    for a in &mut span.attributes {
        let new = if r.secret_attributes.contains(&a.key) {
            match &a.value {
                AttrValue::Str(s) if s == redact::REDACTED => None,
                _ => Some(AttrValue::Str(redact::REDACTED.to_string())),
            }
        } else if r.url_attributes.contains(&a.key) {
            match &a.value {
                AttrValue::Str(s) => owned(s, redact::url(s)),
                _ => None,
            }
        } else if r.sql_attributes.contains(&a.key) {
            match (&a.value, sql::Dialect::for_system(system.as_deref())) {
                (AttrValue::Str(s), Some(d)) => owned(s, sql::normalize(s, d)),
                _ => None,
            }
        } else {
            None
        };
        if let Some(v) = new {
            a.value = v;
            touched = true;
        }
    }
    touched
}

/// The new value, when it differs from `old`.
fn owned(old: &str, c: Cow<'_, str>) -> Option<AttrValue> {
    match c {
        Cow::Owned(s) if s != old => Some(AttrValue::Str(s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::SpanKind;

    fn span(attrs: Vec<Attribute>) -> Span {
        Span {
            trace_id: 1,
            span_id: 2,
            parent_span_id: None,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_nano: 1,
            end_unix_nano: 2,
            status: Default::default(),
            attributes: attrs,
            events: vec![],
        }
    }

    fn text(s: &Span) -> String {
        format!("{:?}", s.attributes)
    }

    #[test]
    fn secrets_of_every_kind_are_removed() {
        let mut spans = vec![
            span(vec![
                Attribute::str(
                    "url.full",
                    "https://bob:hunter2@api.example/x?access_token=tok123",
                ),
                Attribute::str("url.query", "page=2&api_key=k3y"),
                Attribute::str("http.request.header.authorization", "Bearer sekrit"),
            ]),
            span(vec![
                Attribute::str("db.system", "postgresql"),
                Attribute::str("db.query.text", "SELECT * FROM users WHERE pw = 'p4ss'"),
            ]),
        ];
        assert_eq!(redact_spans(&mut spans, &[]), 2);
        let all = spans.iter().map(text).collect::<String>();
        for secret in ["hunter2", "tok123", "k3y", "sekrit", "p4ss"] {
            assert!(!all.contains(secret), "{secret} left in {all}");
        }
        assert!(all.contains("page=2"), "{all}");
    }

    #[test]
    fn declared_route_templates_name_server_spans_without_a_route() {
        let templates = vec![
            RouteTemplate {
                pattern: "/api/*/items/*".into(),
                template: "/api/{tenant}/items/{id}".into(),
            },
            RouteTemplate {
                pattern: "/static/**".into(),
                template: "/static/{path}".into(),
            },
        ];
        let mut spans = vec![
            span(vec![
                Attribute::str("http.request.method", "GET"),
                Attribute::str("url.path", "/api/acme/items/42"),
            ]),
            span(vec![Attribute::str("url.path", "/static/css/a.css")]),
            span(vec![Attribute::str("url.path", "/api/acme/items")]),
            span(vec![
                Attribute::str("url.path", "/api/acme/items/42"),
                Attribute::str("http.route", "/api/<t>/items/<int:id>"),
            ]),
        ];
        assert_eq!(apply_routes(&mut spans, &templates), 2);
        assert_eq!(spans[0].name, "GET /api/{tenant}/items/{id}");
        assert!(text(&spans[1]).contains("/static/{path}"));
        assert!(
            !text(&spans[2]).contains("http.route"),
            "no template matches"
        );
        assert!(
            text(&spans[3]).contains("<int:id>"),
            "a route the app gave is kept"
        );
    }

    #[test]
    fn declared_rules_apply_to_their_keys() {
        let rules = RedactionRules {
            secret_attributes: vec!["app.card".into()],
            url_attributes: vec!["app.callback".into()],
            sql_attributes: vec!["app.sql".into()],
            sensitive_words: vec![],
        };
        let mut spans = vec![span(vec![
            Attribute::str("app.card", "4111 1111"),
            Attribute::str("app.callback", "http://u:pw9@h/"),
            Attribute::str("app.sql", "select 1 where x = 'lit7'"),
            Attribute::str("app.other", "lit7"),
        ])];
        redact_spans(&mut spans, std::slice::from_ref(&rules));
        let t = text(&spans[0]);
        assert!(
            !t.contains("4111") && !t.contains("pw9") && !t.contains("'lit7'"),
            "{t}"
        );
        assert!(t.contains("\"lit7\""), "other keys untouched: {t}");
        assert_eq!(redact_spans(&mut spans, &[rules]), 0, "idempotent");
    }
}
