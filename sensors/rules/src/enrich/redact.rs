//! Redaction of credentials in URLs, query strings, connection strings and headers.
//!
//! - `url.full` / `http.url`: user and password become `REDACTED:REDACTED` (as the OpenTelemetry
//!   semantic conventions ask), and sensitive query and fragment parameters get the value
//!   `REDACTED`.
//! - `url.query`, and the query part of `http.target`: sensitive parameters.
//! - `db.connection_string`: a URL keeps its user and loses its password
//!   (`postgresql://app:REDACTED@db/shop`) and sensitive parameters; a key=value string
//!   (`host=db password=x`, `Server=db;Pwd=x`) loses sensitive values.
//! - Credential headers (`authorization`, `cookie`, `set-cookie`, …): the whole value.
//!
//! A parameter is sensitive when one of the words of its name (split at `_`, `-`, `.`, spaces and
//! lower→upper case changes, compared case-insensitively, after percent-decoding) is one of
//! [`SENSITIVE_WORDS`]: so `access_token`, `apiKey`, `X-Amz-Signature` and `client_secret` are
//! redacted, while `monkey`, `author` and `keyboard` are not. Words of five letters or more also
//! count at the end of a longer word (`sslpassword`, `csrftoken`). Values longer than
//! [`MAX_VALUE_BYTES`] are replaced whole: redaction must not be skipped, and must stay bounded.

use std::borrow::Cow;

use super::attributes::{key, Known, SECRET_HEADERS};
use super::span::{OwnedValue, Patch, Value};

/// The replacement text.
pub const REDACTED: &str = "REDACTED";
/// Longer values are replaced by [`TOO_LONG`] rather than scanned.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// What a value longer than [`MAX_VALUE_BYTES`] becomes.
pub const TOO_LONG: &str = "REDACTED (value too long to check)";

/// Words that make a parameter name sensitive.
pub const SENSITIVE_WORDS: &[&str] = &[
    "accesstoken",
    "apikey",
    "auth",
    "authorization",
    "authtoken",
    "credential",
    "credentials",
    "jwt",
    "key",
    "pass",
    "passwd",
    "password",
    "pwd",
    "secret",
    "session",
    "sessionid",
    "sig",
    "signature",
    "token",
];

/// A redaction of one attribute's value.
type Rule = fn(&str) -> Cow<'_, str>;

/// Sensitive words this long also count at the end of a word (`sslpassword`, `csrftoken`);
/// shorter ones would catch `monkey`.
const MIN_SUFFIX_WORD: usize = 5;

pub(crate) fn apply(known: &Known<'_>, patch: &mut Patch) {
    let rules: [(&str, Rule); 5] = [
        (key::URL_FULL, url),
        (key::HTTP_URL, url),
        (key::URL_QUERY, query),
        (key::HTTP_TARGET, target),
        (key::DB_CONNECTION_STRING, connection_string),
    ];
    for (k, rule) in rules {
        if let Some((k, v)) = known.get(k).and_then(|(k, v)| v.as_str().map(|s| (k, s))) {
            match bounded(v, rule) {
                Cow::Owned(new) if new != v => patch.set(k, OwnedValue::Str(new)),
                _ => {}
            }
        }
    }
    for header in SECRET_HEADERS {
        match known.get(header) {
            Some((k, Value::StrArray(values))) if values.iter().any(|v| v != REDACTED) => {
                patch.set(k, OwnedValue::StrArray(vec![REDACTED.to_string()]));
            }
            Some((k, Value::Str(v))) if v != REDACTED => {
                patch.set(k, OwnedValue::Str(REDACTED.to_string()))
            }
            _ => {}
        }
    }
}

fn bounded(value: &str, rule: Rule) -> Cow<'_, str> {
    if value.len() > MAX_VALUE_BYTES {
        Cow::Owned(TOO_LONG.to_string())
    } else {
        rule(value)
    }
}

/// `https://u:p@host/x?token=1#s` → `https://REDACTED:REDACTED@host/x?token=REDACTED#s`.
pub fn url(s: &str) -> Cow<'_, str> {
    redact_url(s, Userinfo::All)
}

/// A DB URL (`postgresql://app:pw@db/shop?sslpassword=x`) or a key=value connection string.
pub fn connection_string(s: &str) -> Cow<'_, str> {
    if s.contains("://") {
        redact_url(s, Userinfo::Password)
    } else {
        key_values(s)
    }
}

/// `a=1&token=x` → `a=1&token=REDACTED` (also `;`-separated).
pub fn query(s: &str) -> Cow<'_, str> {
    // Built only from the first sensitive parameter on: most query strings have none.
    let mut out: Option<String> = None;
    let mut offset = 0;
    for piece in s.split_inclusive(['&', ';']) {
        let param = piece
            .strip_suffix('&')
            .or_else(|| piece.strip_suffix(';'))
            .unwrap_or(piece);
        let sensitive = param
            .split_once('=')
            .filter(|(k, v)| *v != REDACTED && is_sensitive(k));
        if let Some((k, _)) = sensitive {
            let o = out.get_or_insert_with(|| String::from(&s[..offset]));
            o.push_str(k);
            o.push('=');
            o.push_str(REDACTED);
            o.push_str(&piece[param.len()..]);
        } else if let Some(o) = out.as_mut() {
            o.push_str(piece);
        }
        offset += piece.len();
    }
    out.map_or(Cow::Borrowed(s), Cow::Owned)
}

/// `http.target` (`/path?query`): the query part.
pub fn target(s: &str) -> Cow<'_, str> {
    match s.split_once('?') {
        Some((path, q)) => match query(q) {
            Cow::Borrowed(_) => Cow::Borrowed(s),
            Cow::Owned(new) => Cow::Owned(format!("{path}?{new}")),
        },
        None => Cow::Borrowed(s),
    }
}

enum Userinfo {
    /// Both user and password (url.full, per semconv).
    All,
    /// Only the password (DB URLs: the user is useful and rarely secret).
    Password,
}

fn redact_url(s: &str, userinfo: Userinfo) -> Cow<'_, str> {
    let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
        return target(s);
    };
    let rest = &s[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let tail = &rest[authority_end..];
    let new_authority = match authority.rsplit_once('@') {
        Some((info, host)) => {
            let new_info = match (&userinfo, info.split_once(':')) {
                (Userinfo::All, Some(_)) => format!("{REDACTED}:{REDACTED}"),
                (Userinfo::All, None) => REDACTED.to_string(),
                (Userinfo::Password, Some((user, _))) => format!("{user}:{REDACTED}"),
                (Userinfo::Password, None) => info.to_string(),
            };
            (new_info != info).then(|| format!("{new_info}@{host}"))
        }
        None => None,
    };
    let new_tail = url_tail(tail);
    if new_authority.is_none() && matches!(new_tail, Cow::Borrowed(_)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..scheme_end]);
    out.push_str(new_authority.as_deref().unwrap_or(authority));
    out.push_str(&new_tail);
    Cow::Owned(out)
}

/// Path, `?query` and `#fragment` (an OAuth implicit flow puts `access_token` in the fragment).
fn url_tail(tail: &str) -> Cow<'_, str> {
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (tail, None),
    };
    let head = target(before_fragment);
    let new_fragment = fragment.filter(|f| f.contains('=')).map(query);
    if matches!(head, Cow::Borrowed(_)) && !matches!(new_fragment, Some(Cow::Owned(_))) {
        return Cow::Borrowed(tail);
    }
    let mut out = head.into_owned();
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(new_fragment.as_deref().unwrap_or(f));
    }
    Cow::Owned(out)
}

/// `host=db user=app password='x y'` or `Server=db;Uid=app;Pwd=x;`.
fn key_values(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let Some(eq) = s[i..].find('=').map(|e| i + e) else {
            break;
        };
        let key_start = s[..eq]
            .rfind(|c: char| c.is_whitespace() || c == ';')
            .map_or(0, |k| k + 1);
        let value_start = eq + 1;
        let value_end = value_end(s, value_start);
        let value = &s[value_start..value_end];
        let unquoted = value.trim_matches(['\'', '"']);
        if is_sensitive(s[key_start..eq].trim()) && unquoted != REDACTED && !value.is_empty() {
            out.push_str(&s[copied..value_start]);
            out.push_str(REDACTED);
            copied = value_end;
        }
        i = value_end.max(eq + 1);
    }
    if copied == 0 {
        return Cow::Borrowed(s);
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

/// Where a key=value value ends: at the next `;` or whitespace outside quotes.
fn value_end(s: &str, start: usize) -> usize {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in s[start..].char_indices() {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, c) if c == ';' || c.is_whitespace() => return start + i,
            _ => {}
        }
        escaped = false;
    }
    s.len()
}

/// Whether a parameter name holds a credential (see the module docs).
pub fn is_sensitive(name: &str) -> bool {
    let decoded = percent_decode(name);
    let s: &str = &decoded;
    let mut start = 0;
    let mut prev_lower = false;
    for (i, c) in s.char_indices() {
        if !c.is_alphanumeric() {
            if is_sensitive_word(&s[start..i]) {
                return true;
            }
            start = i + c.len_utf8();
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            if is_sensitive_word(&s[start..i]) {
                return true;
            }
            start = i;
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
    }
    is_sensitive_word(&s[start..])
}

fn is_sensitive_word(word: &str) -> bool {
    let w = word.as_bytes();
    SENSITIVE_WORDS.iter().any(|s| {
        let s = s.as_bytes();
        w.eq_ignore_ascii_case(s)
            || (s.len() >= MIN_SUFFIX_WORD
                && w.len() > s.len()
                && w[w.len() - s.len()..].eq_ignore_ascii_case(s))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}
