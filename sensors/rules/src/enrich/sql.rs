//! SQL literal normalisation for `db.query.text` / `db.statement`: every literal becomes `?`, so
//! that one statement shape is one entry, and no values (personal data, secrets) leave the host.
//!
//! - strings (`'…'` with `''` escapes; `E'…'`, `N'…'`, `X'…'`, `B'…'`; Postgres `$$…$$` and
//!   `$tag$…$tag$`; MySQL also `"…"` and backslash escapes), numbers (`42`, `-1.5e3`, `.5`),
//!   hexadecimal (`0x1F`) → `?`;
//! - identifiers stay, digits included (`t1`, `col_2`, `"Table 1"`, `` `t` ``), and so do
//!   placeholders (`?`, `%s`, `%(name)s`, `:name`, `$1`), `NULL`, `TRUE` and `FALSE`;
//! - `IN (1, 2, 3)` → `IN (?)`; `VALUES (1, 'a'), (2, 'b')` → `VALUES (?, ?)`;
//! - comments are dropped (they often carry trace ids, e.g. sqlcommenter, or literals) except
//!   optimizer hints (`/*+ … */`), which change the plan; runs of whitespace become one space.
//!
//! At most [`MAX_INPUT_BYTES`] of a statement are read, and a normalised statement longer than
//! [`MAX_SQL_BYTES`] is cut and ends in [`CUT_MARKER`] (a 20 000-value `IN` list still collapses). Non-SQL systems (`redis`, `mongodb`, …) are left alone.

use std::borrow::Cow;

use super::attributes::{key, Known};
use super::span::{OwnedValue, Patch, Value};

/// Longer normalised statements are cut (at a character boundary) to this many bytes, marker
/// included.
pub const MAX_SQL_BYTES: usize = 32 * 1024;
/// Only this much of a statement is read at all (bounded work); what lies beyond is cut.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Ends a cut statement.
pub const CUT_MARKER: &str = " …";

/// How string literals are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `"…"` is an identifier; backslashes escape only in `E'…'`.
    Standard,
    /// MySQL / MariaDB: `"…"` is a string, backslashes escape, `#` starts a comment.
    MySql,
}

impl Dialect {
    /// From `db.system` / `db.system.name`; `None` for systems whose queries are not SQL.
    pub fn for_system(system: Option<&str>) -> Option<Dialect> {
        const NOT_SQL: &[&str] = &[
            "redis",
            "mongodb",
            "memcached",
            "elasticsearch",
            "opensearch",
            "couchdb",
            "couchbase",
            "dynamodb",
            "aws.dynamodb",
            "cosmosdb",
            "azure.cosmosdb",
            "neo4j",
            "hbase",
            "geode",
        ];
        match system.map(str::to_ascii_lowercase).as_deref() {
            Some(s) if NOT_SQL.contains(&s) => None,
            Some("mysql" | "mariadb" | "tidb") => Some(Dialect::MySql),
            _ => Some(Dialect::Standard),
        }
    }
}

pub(crate) fn apply(known: &Known<'_>, patch: &mut Patch) {
    let system = known
        .first_str(&[key::DB_SYSTEM_NAME, key::DB_SYSTEM])
        .map(|(_, s)| s);
    let Some(dialect) = Dialect::for_system(system) else {
        return;
    };
    for k in [key::DB_QUERY_TEXT, key::DB_STATEMENT] {
        if let Some((k, Value::Str(q))) = known.get(k) {
            if let Cow::Owned(n) = normalize(q, dialect) {
                if n != q {
                    patch.set(k, OwnedValue::Str(n));
                }
            }
        }
    }
}

/// Normalises one statement (see the module docs); borrowed when there is nothing to change.
pub fn normalize(sql: &str, dialect: Dialect) -> Cow<'_, str> {
    let input = &sql[..floor_char_boundary(sql, MAX_INPUT_BYTES)];
    let toks = lex(input, dialect);
    let mut out = String::with_capacity(input.len().min(MAX_SQL_BYTES));
    emit(&toks, 0, toks.len(), &mut out);
    let trimmed_len = out.trim_end().len();
    out.truncate(trimmed_len);
    if out.len() > MAX_SQL_BYTES || input.len() < sql.len() {
        let mut cut = floor_char_boundary(&out, MAX_SQL_BYTES - CUT_MARKER.len());
        // A cut inside an optimizer hint would turn it into a dropped comment on the next pass.
        if let Some(open) = out[..cut]
            .rfind("/*")
            .filter(|open| !out[*open..cut].contains("*/"))
        {
            cut = open;
        }
        out.truncate(cut);
        let trimmed_len = out.trim_end().len();
        out.truncate(trimmed_len);
        out.push_str(CUT_MARKER);
    }
    if out == sql {
        Cow::Borrowed(sql)
    } else {
        Cow::Owned(out)
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Word,
    Literal,
    Placeholder,
    Punct,
    Hint,
}

#[derive(Debug, Clone, Copy)]
struct Tok<'a> {
    kind: Kind,
    text: &'a str,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Words after which `-1` is a negative number rather than a subtraction.
fn takes_operand(word: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "and",
        "between",
        "by",
        "case",
        "else",
        "having",
        "in",
        "is",
        "like",
        "limit",
        "not",
        "offset",
        "on",
        "or",
        "return",
        "returning",
        "select",
        "set",
        "then",
        "values",
        "when",
        "where",
    ];
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

fn lex(sql: &str, dialect: Dialect) -> Vec<Tok<'_>> {
    let b = sql.as_bytes();
    let mysql = dialect == Dialect::MySql;
    let mut toks: Vec<Tok<'_>> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let (kind, end) = match c {
            c if c.is_ascii_whitespace() => {
                (Kind::Space, skip_while(b, i, |c| c.is_ascii_whitespace()))
            }
            b'-' if next == Some(b'-') => (Kind::Space, line_end(b, i)),
            b'#' if mysql => (Kind::Space, line_end(b, i)),
            b'/' if next == Some(b'*') => {
                let end = sql[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
                (
                    if b.get(i + 2) == Some(&b'+') {
                        Kind::Hint
                    } else {
                        Kind::Space
                    },
                    end,
                )
            }
            b'\'' => (Kind::Literal, quoted_end(b, i, b'\'', mysql)),
            b'"' => (
                if mysql { Kind::Literal } else { Kind::Word },
                quoted_end(b, i, b'"', mysql),
            ),
            b'`' => (Kind::Word, quoted_end(b, i, b'`', false)),
            b'$' => dollar(sql, i),
            b'?' => (Kind::Placeholder, i + 1),
            b'%' => match next {
                Some(b's' | b'd' | b'b') => (Kind::Placeholder, i + 2),
                Some(b'(') => sql[i..]
                    .find(")s")
                    .map_or((Kind::Punct, i + 1), |e| (Kind::Placeholder, i + e + 2)),
                _ => (Kind::Punct, i + 1),
            },
            b':' if next == Some(b':') => (Kind::Punct, i + 2),
            b':' if next.is_some_and(is_ident_start) => {
                (Kind::Placeholder, skip_while(b, i + 1, is_ident))
            }
            c if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit())) => {
                number(b, i)
            }
            b'-' | b'+' if starts_number(b, i + 1) && unary_allowed(&toks) => number(b, i + 1),
            c if is_ident_start(c) => {
                let end = skip_while(b, i, is_ident);
                let prefix_literal =
                    end == i + 1 && b.get(end) == Some(&b'\'') && b"NnEeXxBb".contains(&c);
                if prefix_literal {
                    (
                        Kind::Literal,
                        quoted_end(b, end, b'\'', mysql || c == b'E' || c == b'e'),
                    )
                } else {
                    (Kind::Word, end)
                }
            }
            _ => (Kind::Punct, i + 1),
        };
        let end = end.clamp(i + 1, b.len());
        toks.push(Tok {
            kind,
            text: &sql[i..end],
        });
        i = end;
    }
    toks
}

fn skip_while(b: &[u8], mut i: usize, f: impl Fn(u8) -> bool) -> usize {
    while i < b.len() && f(b[i]) {
        i += 1;
    }
    i
}

fn line_end(b: &[u8], i: usize) -> usize {
    skip_while(b, i, |c| c != b'\n')
}

/// End (exclusive) of a quoted run starting at `start`; doubled quotes continue it. An
/// unterminated quote runs to the end.
fn quoted_end(b: &[u8], start: usize, q: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// `$1` (placeholder), `$$…$$` / `$tag$…$tag$` (Postgres string), or a lone `$`.
fn dollar(sql: &str, i: usize) -> (Kind, usize) {
    let b = sql.as_bytes();
    if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return (
            Kind::Placeholder,
            skip_while(b, i + 1, |c| c.is_ascii_digit()),
        );
    }
    let tag_end = skip_while(b, i + 1, |c| c.is_ascii_alphanumeric() || c == b'_');
    if b.get(tag_end) != Some(&b'$') {
        return (Kind::Punct, i + 1);
    }
    let tag = &sql[i..=tag_end];
    let body = tag_end + 1;
    (
        Kind::Literal,
        sql[body..]
            .find(tag)
            .map_or(b.len(), |e| body + e + tag.len()),
    )
}

fn starts_number(b: &[u8], i: usize) -> bool {
    match b.get(i) {
        Some(c) if c.is_ascii_digit() => true,
        Some(b'.') => b.get(i + 1).is_some_and(u8::is_ascii_digit),
        _ => false,
    }
}

/// After an operator, `(`, `,`, a keyword, or at the start: `-1` is one literal.
fn unary_allowed(toks: &[Tok<'_>]) -> bool {
    match toks.iter().rev().find(|t| t.kind != Kind::Space) {
        None => true,
        Some(t) => match t.kind {
            Kind::Punct => t.text != ")" && t.text != "]",
            Kind::Word => takes_operand(t.text),
            _ => false,
        },
    }
}

/// A number from `i` (after any sign); followed by identifier characters it is an identifier
/// (MySQL allows `1abc`).
fn number(b: &[u8], i: usize) -> (Kind, usize) {
    let mut j = i;
    if b.get(j) == Some(&b'0')
        && matches!(b.get(j + 1), Some(b'x' | b'X'))
        && b.get(j + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        j = skip_while(b, j + 2, |c| c.is_ascii_hexdigit());
    } else {
        j = skip_while(b, j, |c| c.is_ascii_digit());
        if b.get(j) == Some(&b'.') {
            j = skip_while(b, j + 1, |c| c.is_ascii_digit());
        }
        if matches!(b.get(j), Some(b'e' | b'E')) {
            let exp = if matches!(b.get(j + 1), Some(b'+' | b'-')) {
                j + 2
            } else {
                j + 1
            };
            if b.get(exp).is_some_and(u8::is_ascii_digit) {
                j = skip_while(b, exp, |c| c.is_ascii_digit());
            }
        }
    }
    if b.get(j).is_some_and(|c| is_ident(*c)) {
        return (Kind::Word, skip_while(b, j, is_ident));
    }
    (Kind::Literal, j)
}

fn skip_space(toks: &[Tok<'_>], mut i: usize) -> usize {
    while toks.get(i).is_some_and(|t| t.kind == Kind::Space) {
        i += 1;
    }
    i
}

fn is_value(t: &Tok<'_>) -> bool {
    match t.kind {
        Kind::Literal | Kind::Placeholder => true,
        Kind::Word => ["NULL", "DEFAULT", "TRUE", "FALSE"]
            .iter()
            .any(|w| w.eq_ignore_ascii_case(t.text)),
        _ => false,
    }
}

/// `( value, value, … )` from `i` (after spaces): the index after `)` and the first value.
fn value_list(toks: &[Tok<'_>], i: usize) -> Option<(usize, usize)> {
    let mut i = skip_space(toks, i);
    if toks.get(i)?.text != "(" {
        return None;
    }
    let mut first = None;
    loop {
        i = skip_space(toks, i + 1);
        if !is_value(toks.get(i)?) {
            return None;
        }
        first.get_or_insert(i);
        i = skip_space(toks, i + 1);
        match toks.get(i)?.text {
            "," => continue,
            ")" => return Some((i + 1, first?)),
            _ => return None,
        }
    }
}

/// After the first tuple of `VALUES`, further tuples: the index after the last one.
fn more_tuples(toks: &[Tok<'_>], mut end: usize) -> Option<usize> {
    let mut found = None;
    loop {
        let comma = skip_space(toks, end);
        if toks.get(comma).map(|t| t.text) != Some(",") {
            return found;
        }
        let (next_end, _) = value_list(toks, comma + 1)?;
        end = next_end;
        found = Some(end);
    }
}

fn emit_one(t: &Tok<'_>, out: &mut String) {
    match t.kind {
        Kind::Space => {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        }
        Kind::Literal => out.push('?'),
        _ => out.push_str(t.text),
    }
}

fn emit(toks: &[Tok<'_>], start: usize, end: usize, out: &mut String) {
    let mut i = start;
    while i < end {
        let t = &toks[i];
        emit_one(t, out);
        if t.kind == Kind::Word {
            if t.text.eq_ignore_ascii_case("IN") {
                if let Some((list_end, first)) = value_list(toks, i + 1) {
                    emit(toks, i + 1, skip_space(toks, i + 1) + 1, out);
                    emit_one(&toks[first], out);
                    out.push(')');
                    i = list_end;
                    continue;
                }
            } else if t.text.eq_ignore_ascii_case("VALUES") {
                if let Some((first_end, _)) = value_list(toks, i + 1) {
                    emit(toks, i + 1, first_end, out);
                    i = more_tuples(toks, first_end).unwrap_or(first_end);
                    continue;
                }
            }
        }
        i += 1;
    }
}
