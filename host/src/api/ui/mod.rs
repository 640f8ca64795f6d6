//! The embedded web UI: one HTML page, its scripts and style sheets and the vendored chart and
//! graph-layout libraries (`vendor/`, see its README), all compiled into the binary: nothing is
//! fetched from elsewhere, and the page reads everything from the /api/v1 routes.
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("index.html");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under /ui/ besides the page: (path, content type, content).
const ASSETS: &[(&str, &str, &str)] = &[
    ("lib.js", JS, include_str!("lib.js")),
    ("charts.js", JS, include_str!("charts.js")),
    ("map.js", JS, include_str!("map.js")),
    ("trace.js", JS, include_str!("trace.js")),
    ("app.js", JS, include_str!("app.js")),
    ("style.css", CSS, include_str!("style.css")),
    (
        "vendor/uPlot.iife.min.js",
        JS,
        include_str!("vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        CSS,
        include_str!("vendor/uPlot.min.css"),
    ),
    (
        "vendor/dagre.min.js",
        JS,
        include_str!("vendor/dagre.min.js"),
    ),
];

fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Scripts and styles only from the agent itself.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
            ),
        ],
        INDEX,
    )
        .into_response()
}

async fn asset(Path(rest): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == rest) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        // An unknown file with an extension is a 404; any other /ui/ path is the page itself
        // (bookmarks of views).
        None if rest.rsplit('/').next().is_some_and(|f| f.contains('.')) => {
            (StatusCode::NOT_FOUND, "no such file\n").into_response()
        }
        None => page(),
    }
}

pub fn ui_router() -> Router {
    Router::new()
        .route("/", get(|| async { page() }))
        .route("/ui", get(|| async { page() }))
        .route("/ui/{*rest}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page loads is served, and nothing it loads comes from another host.
    #[test]
    fn page_references_only_embedded_assets() {
        for src in INDEX
            .split(['"', '\''])
            .filter(|s| s.starts_with("/ui/") || s.contains("://"))
        {
            let path = src.trim_start_matches("/ui/");
            assert!(
                ASSETS.iter().any(|(p, _, _)| *p == path),
                "index.html loads {src}, which is not embedded"
            );
        }
        for (path, _, body) in ASSETS.iter().filter(|(p, _, _)| !p.starts_with("vendor/")) {
            // The SVG namespace is a name, not a request.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path} names another host"
            );
        }
    }
}
