//! Who may use the API, checked before any route runs (one layer over the whole router):
//!
//! 1. The `Host` header must name this agent: an IP literal (the listen address's, or any when
//!    listening on an unspecified address), `localhost` on a loopback or unspecified address, or a
//!    name from `api.allowed_hosts`. A DNS-rebinding page has its own name there. → 421.
//! 2. A state-changing request (any method but GET/HEAD) must have a JSON body type (a cross-site
//!    form can send only form-encoded, multipart or `text/plain` without a CORS preflight, and no
//!    route answers preflights or sends CORS headers) → 415, and an `Origin`, when present, must
//!    be this agent's → 403.
//! 3. A credential: `Authorization: Bearer <token>` (the root-only token file) or `Bearer
//!    <session>`, the UI's session that `POST /api/v1/session` makes from the token. State-changing
//!    routes always need one; read-only ones unless `api.open_reads_on_loopback`. → 401.
//!
//! The UI keeps its session in `localStorage`, which belongs to one origin (scheme, host *and
//! port*); a cookie would be sent to every port of the host, i.e. to any local user's server
//! the browser visits. No cookie is ever accepted, so no request a browser makes by itself
//! carries a credential. `/api/v1/health` and the UI's static files (`/`, `/ui/*`, `/login`,
//! `/login.js`: no data) need none; the pages' scripts come from this origin only (CSP).
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::ApiSection;

const LOGIN_PAGE: &str = include_str!("login.html");
const LOGIN_JS: &str = include_str!("login.js");

pub struct ApiAuth {
    token: String,
    /// The UI's session: an HMAC of a fixed label under the token, so it is valid exactly as
    /// long as the token is and does not reveal it.
    session: String,
    open_reads: bool,
    listen: SocketAddr,
    allowed_hosts: Vec<String>,
}

impl ApiAuth {
    pub fn new(token: String, listen: SocketAddr, cfg: &ApiSection) -> ApiAuth {
        let session = Hmac::<Sha256>::new_from_slice(token.as_bytes())
            .map(|mut m| {
                m.update(b"zerostep ui session v1");
                hex::encode(m.finalize().into_bytes())
            })
            // HMAC takes keys of any length; this branch is unreachable, and a random value
            // would only make sessions impossible, never open.
            .unwrap_or_else(|_| hex::encode(getrandom::u64().unwrap_or(1).to_le_bytes()));
        ApiAuth {
            token,
            session,
            open_reads: cfg.open_reads_on_loopback && listen.ip().is_loopback(),
            listen,
            allowed_hosts: cfg
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a `Host` header value names this agent (see the module comment).
    pub fn host_allowed(&self, host: &str) -> bool {
        let Ok(auth) = http::uri::Authority::from_str(host) else {
            return false;
        };
        if auth.as_str().contains('@') {
            return false;
        }
        if let Some(port) = auth.port_u16() {
            if port != self.listen.port() {
                return false;
            }
        }
        let name = auth.host().to_ascii_lowercase();
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        let ip = self.listen.ip();
        if let Ok(given) = IpAddr::from_str(bare) {
            return ip.is_unspecified() || given == ip;
        }
        if name == "localhost" {
            return ip.is_loopback() || ip.is_unspecified();
        }
        self.allowed_hosts.contains(&name)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|h| !h.contains('/') && self.host_allowed(h))
    }

    fn credential_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .any(|t| {
                ct_eq(t.as_bytes(), self.token.as_bytes())
                    | ct_eq(t.as_bytes(), self.session.as_bytes())
            })
    }
}

/// Requests refused, by reason (process-wide: one API per agent), for `/metrics`.
static REFUSED: [std::sync::atomic::AtomicU64; 4] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];
const REASONS: [&str; 4] = ["host", "content_type", "origin", "credential"];

fn count(reason: usize) {
    REFUSED[reason].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// (reason, requests refused for it) since start.
pub fn refused_counts() -> Vec<(&'static str, u64)> {
    REASONS
        .iter()
        .zip(&REFUSED)
        .map(|(r, c)| (*r, c.load(std::sync::atomic::Ordering::Relaxed)))
        .collect()
}

/// Equal without an early exit, so timing tells nothing about how much of a guess was right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refuse(status: StatusCode, why: &str) -> Response {
    let mut r = (status, Json(serde_json::json!({ "error": why }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"zerostep\""),
        );
    }
    r
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The UI's static files: no data in them, and a browser's plain navigation carries no header.
fn is_static_ui(path: &str) -> bool {
    matches!(path, "/" | "/ui" | "/login" | "/login.js" | "/favicon.ico")
        || path.starts_with("/ui/")
}

/// The layer: see the module comment for the order of checks.
pub async fn guard(State(auth): State<Arc<ApiAuth>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match &host {
        Some(h) if auth.host_allowed(h) => {}
        _ => {
            tracing::debug!(host = ?host, "API request for another host refused");
            count(0);
            return with_safety_headers(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "the Host header does not name this agent (see api.allowed_hosts)",
            ));
        }
    }
    let path = req.uri().path();
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD);
    if changes_state {
        if !is_json(headers) {
            count(1);
            return with_safety_headers(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "state-changing requests take a JSON body (Content-Type: application/json)",
            ));
        }
        if let Some(o) = headers.get(header::ORIGIN) {
            if !o.to_str().is_ok_and(|o| auth.origin_allowed(o)) {
                count(2);
                return with_safety_headers(refuse(
                    StatusCode::FORBIDDEN,
                    "cross-origin requests may not change anything",
                ));
            }
        }
    }
    let open = (changes_state && path == "/api/v1/session")
        || (!changes_state && (path == "/api/v1/health" || is_static_ui(path) || auth.open_reads));
    if !open && !auth.credential_ok(headers) {
        count(3);
        return with_safety_headers(refuse(
            StatusCode::UNAUTHORIZED,
            "this needs the agent's API token: `Authorization: Bearer <token>` from \
             STATE_DIR/api-token (root only), or log in to the UI at /login",
        ));
    }
    with_safety_headers(next.run(req).await)
}

/// Nothing here may be framed by another page (clickjacking) or sniffed into another type, and
/// pages run only scripts from this origin (no inline script: trace data is shown as text).
fn with_safety_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "frame-ancestors 'none'; script-src 'self'; object-src 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[derive(serde::Deserialize)]
struct SessionRequest {
    token: String,
}

/// `GET /login` (paste the token, or open `/login#token=…` as `zerostep ui` prints it) and
/// `POST /api/v1/session {"token": …}` → `{"session": …}`, which the UI sends as its bearer.
pub fn routes(auth: Arc<ApiAuth>) -> Router {
    Router::new()
        .route(
            "/login",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    LOGIN_PAGE,
                )
            }),
        )
        .route(
            "/login.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    LOGIN_JS,
                )
            }),
        )
        .route("/api/v1/session", post(session))
        .with_state(auth)
}

async fn session(State(auth): State<Arc<ApiAuth>>, Json(req): Json<SessionRequest>) -> Response {
    if !ct_eq(req.token.trim().as_bytes(), auth.token.as_bytes()) {
        return refuse(StatusCode::UNAUTHORIZED, "wrong token");
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "session": auth.session })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(listen: &str, hosts: &[&str]) -> ApiAuth {
        ApiAuth::new(
            "ab".repeat(32),
            listen.parse().unwrap(),
            &ApiSection {
                open_reads_on_loopback: false,
                allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            },
        )
    }

    #[test]
    fn host_header_must_name_this_agent() {
        let a = auth("127.0.0.1:7787", &["zs.internal"]);
        for ok in [
            "127.0.0.1:7787",
            "127.0.0.1",
            "localhost:7787",
            "LOCALHOST:7787",
            "zs.internal:7787",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:7787",
            "127.0.0.1:80",
            "10.0.0.1:7787",
            "[::1]:7787",
            "127.0.0.1.nip.io:7787",
            "user@127.0.0.1:7787",
            "",
            "127.0.0.1:7787/x",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        let any = auth("0.0.0.0:7787", &[]);
        assert!(any.host_allowed("10.1.2.3:7787") && any.host_allowed("localhost:7787"));
        assert!(!any.host_allowed("rebind.example:7787"));
        let v6 = auth("[::1]:7787", &[]);
        assert!(v6.host_allowed("[::1]:7787") && v6.host_allowed("localhost:7787"));
        let lan = auth("192.168.1.5:7787", &[]);
        assert!(!lan.host_allowed("localhost:7787"));
    }

    #[test]
    fn origins_and_credentials() {
        let a = auth("127.0.0.1:7787", &[]);
        assert!(a.origin_allowed("http://127.0.0.1:7787"));
        assert!(a.origin_allowed("http://localhost:7787"));
        assert!(!a.origin_allowed("http://evil.example:7787"));
        assert!(!a.origin_allowed("null"));
        let mut h = HeaderMap::new();
        assert!(!a.credential_ok(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(!a.credential_ok(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", "ab".repeat(32))).unwrap(),
        );
        assert!(a.credential_ok(&h));
        let mut c = HeaderMap::new();
        c.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", a.session)).unwrap(),
        );
        assert!(a.credential_ok(&c), "the UI's session");
        // No cookie is a credential, whatever it holds; the session differs per token.
        let mut c = HeaderMap::new();
        c.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("zerostep_session={}", a.session)).unwrap(),
        );
        assert!(!a.credential_ok(&c));
        assert_ne!(auth("127.0.0.1:1", &[]).session, {
            ApiAuth::new("cd".repeat(32), a.listen, &ApiSection::default()).session
        });
    }
}
