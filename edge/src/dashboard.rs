//! The business dashboard at `/admin/`: a static page (HTML, CSS, script,
//! embedded in the binary) that signs a staff member in through the REST
//! API and draws the analytics reports. It holds no data of its own and
//! needs no build step; everything it shows comes from `/api/v1/*` with the
//! signed-in user's token, so the API's access rules apply.

use axum::{Router, response::Redirect, routing::get};

use crate::assets::{self, Asset};

static FILES: [(&str, Asset); 3] = [
    (
        "/admin/",
        Asset::new(
            "text/html; charset=utf-8",
            include_bytes!("../static/admin/index.html"),
        ),
    ),
    (
        "/admin/app.js",
        Asset::new(
            "text/javascript; charset=utf-8",
            include_bytes!("../static/admin/app.js"),
        ),
    ),
    (
        "/admin/app.css",
        Asset::new(
            "text/css; charset=utf-8",
            include_bytes!("../static/admin/app.css"),
        ),
    ),
];

/// Only the page's own files run, and it talks only to its own origin.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The dashboard's routes.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    assets::routes(&FILES, POLICY).route("/admin", get(|| async { Redirect::permanent("/admin/") }))
}
