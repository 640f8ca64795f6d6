use super::redact::{self, REDACTED};
use super::route::template;
use super::sql::{normalize, Dialect, CUT_MARKER, MAX_SQL_BYTES};
use super::*;

fn sql(s: &str) -> String {
    normalize(s, Dialect::Standard).into_owned()
}

fn mysql(s: &str) -> String {
    normalize(s, Dialect::MySql).into_owned()
}

fn route(p: &str) -> Option<String> {
    template(p).map(|c| c.into_owned())
}

/// Applies a patch to owned attributes, as the host does.
fn apply(
    attrs: &mut Vec<(String, OwnedValue)>,
    name: &mut String,
    status: &mut StatusCode,
    p: &Patch,
) {
    if let Some(n) = &p.name {
        *name = n.clone();
    }
    if let Some(s) = &p.status {
        *status = s.code;
    }
    for (k, v) in &p.set_attributes {
        attrs.retain(|(key, _)| key != k);
        attrs.push((k.to_string(), v.clone()));
    }
    attrs.retain(|(key, _)| !p.remove_attributes.contains(&key.as_str()));
}

fn view(v: &OwnedValue) -> Value<'_> {
    match v {
        OwnedValue::Str(s) => Value::Str(s),
        OwnedValue::Int(i) => Value::Int(*i),
        OwnedValue::Double(d) => Value::Double(*d),
        OwnedValue::Bool(b) => Value::Bool(*b),
        OwnedValue::StrArray(a) => Value::StrArray(a),
    }
}

/// Enriches once, applies, enriches again: the second pass must change nothing.
fn enrich_twice(
    name: &str,
    kind: SpanKind,
    status: StatusCode,
    attrs: Vec<(&str, OwnedValue)>,
) -> (String, StatusCode, Vec<(String, OwnedValue)>) {
    let mut attrs: Vec<(String, OwnedValue)> =
        attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let (mut name, mut status) = (name.to_string(), status);
    if let Some(p) = enrich_span(
        7,
        &name,
        kind,
        status,
        attrs.iter().map(|(k, v)| (k.as_str(), view(v))),
    ) {
        assert_eq!(p.index, 7);
        apply(&mut attrs, &mut name, &mut status, &p);
    }
    let again = enrich_span(
        0,
        &name,
        kind,
        status,
        attrs.iter().map(|(k, v)| (k.as_str(), view(v))),
    );
    assert_eq!(again, None, "second pass changed {name} {attrs:?}");
    (name, status, attrs)
}

fn s(v: &str) -> OwnedValue {
    OwnedValue::Str(v.to_string())
}

fn attr<'a>(attrs: &'a [(String, OwnedValue)], k: &str) -> Option<&'a OwnedValue> {
    attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v)
}

/// Each case is (input, expected output) for one normalising function.
fn check(f: impl Fn(&str) -> String, cases: &[(&str, &str)]) {
    for (input, want) in cases {
        assert_eq!(f(input), *want, "input: {input}");
    }
}

#[test]
fn sql_literals() {
    check(
        sql,
        &[
            (
                "SELECT * FROM t1 WHERE id = 42",
                "SELECT * FROM t1 WHERE id = ?",
            ),
            (
                "select a from t where name = 'O''Brien' and x=-1.5e3",
                "select a from t where name = ? and x=?",
            ),
            (
                "SELECT a-1, b - 2, c1+.5 FROM t2",
                "SELECT a-?, b - ?, c1+? FROM t2",
            ),
            ("SELECT 0x1F, X'ff', E'a\\'b', N'x'", "SELECT ?, ?, ?, ?"),
            ("SELECT $$a 'b' c$$, $fn$x$fn$, $1", "SELECT ?, ?, $1"),
            (
                "SELECT \"Table 1\".\"col2\" FROM \"Table 1\"",
                "SELECT \"Table 1\".\"col2\" FROM \"Table 1\"",
            ),
            (
                "SELECT x::text, :name, %s, %(user)s FROM t",
                "SELECT x::text, :name, %s, %(user)s FROM t",
            ),
            (
                "SELECT * FROM t WHERE a IS NULL AND b = TRUE",
                "SELECT * FROM t WHERE a IS NULL AND b = TRUE",
            ),
            (
                "SELECT col_2, t3.c4 FROM t3 LIMIT 10 OFFSET 20",
                "SELECT col_2, t3.c4 FROM t3 LIMIT ? OFFSET ?",
            ),
            ("SELECT 'C:\\' , 2", "SELECT ? , ?"),
        ],
    );
}

#[test]
fn sql_dialects() {
    check(
        mysql,
        &[(
            "SELECT * FROM `t1` WHERE a = \"x\" AND b = 'it\\'s' # note",
            "SELECT * FROM `t1` WHERE a = ? AND b = ?",
        )],
    );
    assert_eq!(Dialect::for_system(Some("redis")), None);
    assert_eq!(Dialect::for_system(Some("MariaDB")), Some(Dialect::MySql));
    assert_eq!(Dialect::for_system(None), Some(Dialect::Standard));
}

#[test]
fn sql_lists_comments_and_odd_input() {
    check(
        sql,
        &[
            (
                "SELECT * FROM t WHERE id IN (1, 2, 3) AND k in('a','b')",
                "SELECT * FROM t WHERE id IN (?) AND k in(?)",
            ),
            (
                "SELECT * FROM t WHERE id IN (%s, %s, %s)",
                "SELECT * FROM t WHERE id IN (%s)",
            ),
            (
                "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE n = 1)",
                "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE n = ?)",
            ),
            (
                "INSERT INTO t (a, b) VALUES (1, 'x'), (2, NULL),(3,'z') RETURNING id",
                "INSERT INTO t (a, b) VALUES (?, ?) RETURNING id",
            ),
            (
                "SELECT 1 -- user 'bob'\nFROM t /* traceparent='00-abc' */ WHERE a = 2",
                "SELECT ? FROM t WHERE a = ?",
            ),
            (
                "SELECT /*+ INDEX(t i1) */ a FROM t",
                "SELECT /*+ INDEX(t i1) */ a FROM t",
            ),
            ("  SELECT\n\ta\n  FROM t  ", "SELECT a FROM t"),
            ("", ""),
            ("SELECT 'unterminated", "SELECT ?"),
            ("SELECT /* unterminated", "SELECT"),
            (
                "SELECT naïve, 'héllo', 名前 FROM t WHERE x = 'ü'",
                "SELECT naïve, ?, 名前 FROM t WHERE x = ?",
            ),
        ],
    );
}

#[test]
fn sql_bounds() {
    assert!(matches!(
        normalize("SELECT a FROM t", Dialect::Standard),
        std::borrow::Cow::Borrowed(_)
    ));
    let long = format!("INSERT INTO t VALUES ('{}')", "é".repeat(MAX_SQL_BYTES));
    assert_eq!(sql(&long), "INSERT INTO t VALUES (?)");
    let wide = format!(
        "SELECT {} FROM t /*+ HINT */",
        "column_é, ".repeat(MAX_SQL_BYTES / 8)
    );
    let n = sql(&wide);
    assert!(
        n.len() <= MAX_SQL_BYTES && n.ends_with(CUT_MARKER),
        "{}",
        n.len()
    );
    assert_eq!(sql(&n), n, "idempotent after a cut");
    let huge = format!("SELECT '{}", "x".repeat(4 * 1024 * 1024));
    assert_eq!(sql(&huge), format!("SELECT ?{CUT_MARKER}"));
    assert_eq!(sql(&sql(&huge)), sql(&huge));
    let many = format!(
        "SELECT * FROM t WHERE id IN ({})",
        vec!["1"; 20_000].join(",")
    );
    assert!(sql(&many).len() < MAX_SQL_BYTES);
}

#[test]
fn sql_is_idempotent() {
    for q in [
        "SELECT * FROM t1 WHERE id = 42 AND n IN (1,2) -- c",
        "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
        "select $1, ?, 'x', \"y\" from z where w = -3",
        "UPDATE t SET a = 'b' WHERE c = 0x10",
    ] {
        let once = sql(q);
        assert_eq!(sql(&once), once, "{q}");
        let once = mysql(q);
        assert_eq!(mysql(&once), once, "{q}");
    }
}

#[test]
fn routes() {
    let t = |p: &str| route(p).unwrap_or_else(|| "<none>".to_string());
    check(
        t,
        &[
            ("/users/42/orders/9f1c0e2a", "/users/{id}/orders/{id}"),
            ("/o/123e4567-E89B-12d3-a456-426614174000/x", "/o/{id}/x"),
            ("/blob/deadbeefdeadbeef0", "/blob/{id}"),
            ("/c/cus_NffrFeUfNV2Hib4x", "/c/{id}"),
            ("/files/42.json", "/files/{id}.json"),
            (
                "/api/v1/cafe/deadbeef/facade",
                "/api/v1/cafe/deadbeef/facade",
            ),
            (
                "/blog/my-long-post-title-2024",
                "/blog/my-long-post-title-2024",
            ),
            ("/users/42/", "/users/{id}/"),
            ("/städte/münchen/7", "/städte/münchen/{id}"),
            ("/", "/"),
            ("/users/{id}", "/users/{id}"),
            ("", "<none>"),
            (&"/a".repeat(10_000), "<none>"),
        ],
    );
}

#[test]
fn server_span_gets_route_and_name() {
    let (name, status, attrs) = enrich_twice(
        "GET",
        SpanKind::Server,
        StatusCode::Unset,
        vec![
            ("http.request.method", s("GET")),
            ("url.path", s("/users/42")),
            ("http.response.status_code", OwnedValue::Int(200)),
        ],
    );
    assert_eq!(name, "GET /users/{id}");
    assert_eq!(status, StatusCode::Unset);
    assert_eq!(attr(&attrs, "http.route"), Some(&s("/users/{id}")));
    // A route from the framework wins; only a method-only name is completed.
    let (name, _, attrs) = enrich_twice(
        "GET",
        SpanKind::Server,
        StatusCode::Unset,
        vec![
            ("http.request.method", s("GET")),
            ("http.route", s("/u/<int:id>")),
            ("url.path", s("/u/1")),
        ],
    );
    assert_eq!(
        (name.as_str(), attr(&attrs, "http.route")),
        ("GET /u/<int:id>", Some(&s("/u/<int:id>")))
    );
    let (name, _, _) = enrich_twice(
        "custom",
        SpanKind::Server,
        StatusCode::Unset,
        vec![("http.method", s("GET")), ("http.route", s("/u"))],
    );
    assert_eq!(name, "custom");
    // Old semconv, unknown method, no route for 404s, none for client spans.
    let (name, _, _) = enrich_twice(
        "x",
        SpanKind::Server,
        StatusCode::Unset,
        vec![
            ("http.method", s("FOO")),
            ("http.target", s("/a/1?token=x")),
        ],
    );
    assert_eq!(name, "HTTP /a/{id}");
    let (name, _, attrs) = enrich_twice(
        "GET",
        SpanKind::Server,
        StatusCode::Unset,
        vec![
            ("http.request.method", s("GET")),
            ("url.path", s("/wp-admin/1")),
            ("http.response.status_code", OwnedValue::Int(404)),
        ],
    );
    assert_eq!((name.as_str(), attr(&attrs, "http.route")), ("GET", None));
    let (name, _, attrs) = enrich_twice(
        "GET",
        SpanKind::Client,
        StatusCode::Unset,
        vec![("http.request.method", s("GET")), ("url.path", s("/a/1"))],
    );
    assert_eq!((name.as_str(), attr(&attrs, "http.route")), ("GET", None));
}

#[test]
fn status_from_http() {
    let code = |kind, code: i64, status| {
        let (_, st, attrs) = enrich_twice(
            "s",
            kind,
            status,
            vec![("http.response.status_code", OwnedValue::Int(code))],
        );
        (st, attr(&attrs, "error.type").cloned())
    };
    assert_eq!(
        code(SpanKind::Server, 503, StatusCode::Unset),
        (StatusCode::Error, Some(s("503")))
    );
    assert_eq!(
        code(SpanKind::Server, 404, StatusCode::Unset),
        (StatusCode::Unset, None)
    );
    assert_eq!(
        code(SpanKind::Client, 404, StatusCode::Unset),
        (StatusCode::Error, Some(s("404")))
    );
    assert_eq!(
        code(SpanKind::Client, 302, StatusCode::Unset),
        (StatusCode::Unset, None)
    );
    assert_eq!(
        code(SpanKind::Server, 500, StatusCode::Ok),
        (StatusCode::Ok, None)
    );
    assert_eq!(
        code(SpanKind::Internal, 500, StatusCode::Unset),
        (StatusCode::Unset, None)
    );
    // An explicit error keeps its own error.type; a string code counts.
    let (_, st, attrs) = enrich_twice(
        "s",
        SpanKind::Server,
        StatusCode::Unset,
        vec![
            ("http.status_code", s("502")),
            ("error.type", s("TimeoutError")),
        ],
    );
    assert_eq!(
        (st, attr(&attrs, "error.type")),
        (StatusCode::Error, Some(&s("TimeoutError")))
    );
    let (_, st, _) = enrich_twice(
        "s",
        SpanKind::Server,
        StatusCode::Unset,
        vec![("http.response.status_code", s("banana"))],
    );
    assert_eq!(st, StatusCode::Unset);
}

#[test]
fn redaction() {
    check(|u| redact::url(u).into_owned(), &[
        ("https://bob:pw@example.com/x?a=1&access_token=abc#f", "https://REDACTED:REDACTED@example.com/x?a=1&access_token=REDACTED#f"),
        ("https://tok@github.com/", "https://REDACTED@github.com/"),
        ("https://h/cb#access_token=x&state=1", "https://h/cb#access_token=REDACTED&state=1"),
        ("https://h/p?author=me&monkey=1&keyboard=2&sort_key=3", "https://h/p?author=me&monkey=1&keyboard=2&sort_key=REDACTED"),
        (
            "https://h/p?X-Amz-Signature=1&apiKey=2&api%5Fkey=3&Session=4;pwd=5",
            "https://h/p?X-Amz-Signature=REDACTED&apiKey=REDACTED&api%5Fkey=REDACTED&Session=REDACTED;pwd=REDACTED",
        ),
        ("https://h/a@b?q=1", "https://h/a@b?q=1"),
        ("/relative?token=1", "/relative?token=REDACTED"),
    ]);
    check(
        |q| redact::query(q).into_owned(),
        &[("password=&token", "password=REDACTED&token"), ("", "")],
    );
    check(
        |c| redact::connection_string(c).into_owned(),
        &[
            (
                "postgresql://app:s3cr@t@db:5432/shop?sslpassword=x",
                "postgresql://app:REDACTED@db:5432/shop?sslpassword=REDACTED",
            ),
            (
                "redis://:hunter2@cache:6379/0",
                "redis://:REDACTED@cache:6379/0",
            ),
            (
                "host=db user=app password='a b' dbname=shop",
                "host=db user=app password=REDACTED dbname=shop",
            ),
            (
                "Server=db;Uid=app;Pwd=x;Database=shop",
                "Server=db;Uid=app;Pwd=REDACTED;Database=shop",
            ),
            ("mysql://app@db/shop", "mysql://app@db/shop"),
        ],
    );
    for name in [
        "client_secret",
        "authToken",
        "SESSIONID",
        "csrftoken",
        "X-Api-Key",
    ] {
        assert!(redact::is_sensitive(name), "{name}");
    }
    for name in ["author", "monkey", "päss", "keyboard", "tokenizer"] {
        assert!(!redact::is_sensitive(name), "{name}");
    }
}

#[test]
fn redaction_in_spans() {
    let headers = OwnedValue::StrArray(vec!["Bearer x".into()]);
    let (_, _, attrs) = enrich_twice(
        "GET",
        SpanKind::Client,
        StatusCode::Unset,
        vec![
            ("url.full", s("https://u:p@api/x?key=1")),
            ("url.query", s("key=1")),
            ("db.connection_string", s("postgresql://u:p@db/x")),
            ("http.request.header.authorization", headers),
            ("http.response.header.set-cookie", s("sid=1")),
            ("url.path", s("/x")),
        ],
    );
    assert_eq!(
        attr(&attrs, "url.full"),
        Some(&s("https://REDACTED:REDACTED@api/x?key=REDACTED"))
    );
    assert_eq!(attr(&attrs, "url.query"), Some(&s("key=REDACTED")));
    assert_eq!(
        attr(&attrs, "db.connection_string"),
        Some(&s("postgresql://u:REDACTED@db/x"))
    );
    assert_eq!(
        attr(&attrs, "http.request.header.authorization"),
        Some(&OwnedValue::StrArray(vec![REDACTED.into()]))
    );
    assert_eq!(
        attr(&attrs, "http.response.header.set-cookie"),
        Some(&s(REDACTED))
    );
    let huge = format!("https://h/?{}", "a".repeat(redact::MAX_VALUE_BYTES));
    let (_, _, attrs) = enrich_twice(
        "GET",
        SpanKind::Client,
        StatusCode::Unset,
        vec![("url.full", s(&huge))],
    );
    assert_eq!(attr(&attrs, "url.full"), Some(&s(redact::TOO_LONG)));
}

#[test]
fn sql_in_spans() {
    let (_, _, attrs) = enrich_twice(
        "q",
        SpanKind::Client,
        StatusCode::Unset,
        vec![
            ("db.system", s("postgresql")),
            ("db.query.text", s("SELECT 1")),
            ("db.statement", s("SELECT 'a'")),
        ],
    );
    assert_eq!(
        (attr(&attrs, "db.query.text"), attr(&attrs, "db.statement")),
        (Some(&s("SELECT ?")), Some(&s("SELECT ?")))
    );
    let (_, _, attrs) = enrich_twice(
        "q",
        SpanKind::Client,
        StatusCode::Unset,
        vec![
            ("db.system.name", s("redis")),
            ("db.query.text", s("GET user:42")),
        ],
    );
    assert_eq!(attr(&attrs, "db.query.text"), Some(&s("GET user:42")));
}

#[test]
fn nothing_to_do() {
    assert_eq!(
        enrich_span(
            0,
            "",
            SpanKind::Internal,
            StatusCode::Unset,
            std::iter::empty()
        ),
        None
    );
    let attrs = [
        ("other", Value::Str("x")),
        ("url.path", Value::Int(3)),
        ("db.statement", Value::Bool(true)),
    ];
    assert_eq!(
        enrich_span(
            0,
            "n",
            SpanKind::Server,
            StatusCode::Unset,
            attrs.iter().copied()
        ),
        None
    );
    assert_eq!(
        enrich_span(
            0,
            "n",
            SpanKind::Server,
            StatusCode::Unset,
            [("url.path", Value::Str(""))]
        ),
        None
    );
}

#[test]
fn batches_keep_indices() {
    let a = [("url.full", Value::Str("https://u:p@h/"))];
    let b: [(&str, Value<'_>); 0] = [];
    let spans = [
        SpanView {
            name: "a",
            kind: SpanKind::Client,
            status: StatusCode::Unset,
            attributes: &b,
        },
        SpanView {
            name: "b",
            kind: SpanKind::Client,
            status: StatusCode::Unset,
            attributes: &a,
        },
    ];
    let patches = enrich_batch(&spans);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].index, 1);
}

#[test]
fn attribute_keys_are_unique() {
    let mut keys = ATTRIBUTE_KEYS.to_vec();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), ATTRIBUTE_KEYS.len());
}

/// Random strings over the characters the rules care about: no panic, and every rule is
/// idempotent.
#[test]
fn random_inputs_never_panic_and_settle() {
    const ALPHABET: &[&str] = &[
        "'", "\"", "`", "$", "$$", "%", "%s", "%(", ")s", ":", "::", "?", "-", "--", "/", "/*",
        "*/", "/*+", "+", ".", "0", "7", "42", "0x", "e", "E", "x", "N", "_", "(", ")", ",", ";",
        "=", "@", "#", "&", "é", "名", " ", "\n", "\\", "IN", "VALUES", "NULL", "token", "://",
        "u:p@", "?a=", "9f1c0e2a", "{id}",
    ];
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for _ in 0..20_000 {
        let input: String = (0..next(24))
            .map(|_| ALPHABET[next(ALPHABET.len())])
            .collect();
        for dialect in [Dialect::Standard, Dialect::MySql] {
            let once = normalize(&input, dialect).into_owned();
            assert_eq!(normalize(&once, dialect), once, "sql {input:?}");
        }
        let path = format!("/{input}");
        let once = route(&path).unwrap_or_default();
        assert_eq!(route(&once).unwrap_or_default(), once, "route {input:?}");
        for rule in [
            redact::url,
            redact::query,
            redact::target,
            redact::connection_string,
        ] {
            let once = rule(&input).into_owned();
            assert_eq!(rule(&once), once, "redaction {input:?}");
        }
    }
}
