//! Route templates for server spans whose tracer found no `http.route`.
//!
//! A path segment becomes `{id}` when it is (checked in this order):
//! - a decimal number: `42`;
//! - a UUID: `123e4567-e89b-12d3-a456-426614174000` (any case);
//! - hexadecimal of 16 characters or more (`deadbeefdeadbeef`), or of 8 or more that mixes digits
//!   and the letters a–f (`9f1c0e2a`, a short commit hash) — so words like `deadbeef`, `facade`
//!   or `cafe` stay;
//! - an opaque token: 16 characters or more of `[A-Za-z0-9_-]` with a digit, an upper-case and a
//!   lower-case letter (base64url ids, `cus_NffrFeUfNV2Hib4x`) — slugs are lower-case and stay.
//!
//! A short alphabetic extension is kept: `/files/42.json` → `/files/{id}.json`. Paths longer than
//! [`MAX_PATH_BYTES`] get no template (bounded work). A 404 response without a route gets none
//! either: scanners probing random paths would each become an endpoint. The span name becomes
//! `METHOD /route` (`HTTP /route` for methods outside the known set), as the HTTP semantic
//! conventions ask, when the route was derived here or when the name was only the method.

use std::borrow::Cow;

use super::attributes::{key, Known};
use super::span::{OwnedValue, Patch, SpanKind};

/// Longer paths get no template.
pub const MAX_PATH_BYTES: usize = 4096;
/// What an id segment becomes.
pub const ID: &str = "{id}";

/// Sets a derived `http.route` and the span name.
pub(crate) fn apply(known: &Known<'_>, name: &str, kind: SpanKind, patch: &mut Patch) {
    if kind != SpanKind::Server {
        return;
    }
    let method = known
        .first_str(&[key::HTTP_REQUEST_METHOD, key::HTTP_METHOD])
        .map(|(_, m)| span_method(m));
    let (route, derived) = match known.str(key::HTTP_ROUTE).filter(|r| !r.is_empty()) {
        Some(route) => (Cow::Borrowed(route), false),
        None => {
            if super::status::http_status_code(known) == Some(404) {
                return;
            }
            let path = match (known.str(key::URL_PATH), known.str(key::HTTP_TARGET)) {
                (Some(p), _) => p,
                (None, Some(t)) => t.split(['?', '#']).next().unwrap_or(t),
                (None, None) => return,
            };
            let Some(route) = template(path) else { return };
            (route, true)
        }
    };
    if let Some(method) = method {
        let only_method = name.is_empty() || name == method || name == "HTTP";
        if derived || only_method {
            let wanted = format!("{method} {route}");
            if wanted != name {
                patch.name = Some(wanted);
            }
        }
    }
    if derived {
        patch.set(key::HTTP_ROUTE, OwnedValue::Str(route.into_owned()));
    }
}

/// `GET` … as is; anything else is `HTTP` (semconv: unknown methods must not create span names).
fn span_method(method: &str) -> &str {
    const KNOWN: &[&str] = &[
        "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("HTTP")
}

/// `/users/42/orders/9f1c0e2a` → `/users/{id}/orders/{id}`; borrowed when nothing changes,
/// `None` for an empty or too long path.
pub fn template(path: &str) -> Option<Cow<'_, str>> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return None;
    }
    if !path.split('/').any(|seg| is_id(split_extension(seg).0)) {
        return Some(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let (stem, ext) = split_extension(seg);
        if is_id(stem) {
            out.push_str(ID);
            out.push_str(ext);
        } else {
            out.push_str(seg);
        }
    }
    Some(Cow::Owned(out))
}

/// `42.json` → (`42`, `.json`): extensions of 1–5 ASCII letters.
fn split_extension(seg: &str) -> (&str, &str) {
    match seg.rfind('.') {
        Some(dot)
            if dot > 0
                && (2..=6).contains(&(seg.len() - dot))
                && seg[dot + 1..].bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            seg.split_at(dot)
        }
        _ => (seg, ""),
    }
}

/// Whether a segment is an identifier (see the module docs).
pub fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    let has_digit = b.iter().any(u8::is_ascii_digit);
    if b.iter().all(u8::is_ascii_hexdigit) {
        let has_letter = b.iter().any(u8::is_ascii_alphabetic);
        return b.len() >= 16 || (b.len() >= 8 && has_digit && has_letter);
    }
    b.len() >= 16
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        && has_digit
        && b.iter().any(u8::is_ascii_uppercase)
        && b.iter().any(u8::is_ascii_lowercase)
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
