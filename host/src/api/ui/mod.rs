//! The embedded web UI: one HTML page, a script and a style sheet, compiled into the binary (no
//! build step, nothing fetched from elsewhere). It reads everything from the /api/v1 routes.
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX)
}

pub fn ui_router() -> Router {
    Router::new()
        .route("/", get(|| async { page() }))
        .route("/ui", get(|| async { page() }))
        .route(
            "/ui/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP_JS,
                )
            }),
        )
        .route(
            "/ui/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
        // Any other /ui/ path is the page itself (bookmarks of views).
        .route("/ui/{*rest}", get(|| async { page() }))
}
