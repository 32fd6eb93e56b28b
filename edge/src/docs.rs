//! The interactive API reference at `/api/v1/docs/`: Swagger UI (vendored
//! in `static/docs`, embedded in the binary; no CDN) over the edge's own
//! OpenAPI document, with sign-in by bearer token or API key and "try it
//! out" against this edge.

use axum::{Router, response::Redirect, routing::get};

use crate::assets::{self, Asset};

static FILES: [(&str, Asset); 5] = [
    (
        "/api/v1/docs/",
        Asset::new(
            "text/html; charset=utf-8",
            include_bytes!("../static/docs/index.html"),
        ),
    ),
    (
        "/api/v1/docs/swagger-ui-bundle.js",
        Asset::new(
            "text/javascript; charset=utf-8",
            include_bytes!("../static/docs/swagger-ui-bundle.js"),
        ),
    ),
    (
        "/api/v1/docs/swagger-ui.css",
        Asset::new(
            "text/css; charset=utf-8",
            include_bytes!("../static/docs/swagger-ui.css"),
        ),
    ),
    (
        "/api/v1/docs/docs.js",
        Asset::new(
            "text/javascript; charset=utf-8",
            include_bytes!("../static/docs/docs.js"),
        ),
    ),
    (
        "/api/v1/docs/docs.css",
        Asset::new(
            "text/css; charset=utf-8",
            include_bytes!("../static/docs/docs.css"),
        ),
    ),
];

/// Scripts, styles and connections stay on this origin; Swagger UI draws
/// icons from data URLs.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The reference's routes.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    assets::routes(&FILES, POLICY).route(
        "/api/v1/docs",
        get(|| async { Redirect::permanent("/api/v1/docs/") }),
    )
}
