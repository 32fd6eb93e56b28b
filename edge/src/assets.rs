//! Static files embedded in the binary (the dashboard, the API reference):
//! served with their content type, a security policy, and an entity tag so
//! that a browser revalidates them cheaply (304) instead of downloading
//! them again.

use std::sync::OnceLock;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::get,
};

use crate::etag;

/// One embedded file.
pub struct Asset {
    content_type: &'static str,
    body: &'static [u8],
    tag: OnceLock<HeaderValue>,
}

impl Asset {
    pub const fn new(content_type: &'static str, body: &'static [u8]) -> Self {
        Self {
            content_type,
            body,
            tag: OnceLock::new(),
        }
    }

    /// The file, or 304 when the browser holds its current version;
    /// `policy` is its Content-Security-Policy.
    pub fn serve(&'static self, policy: &'static str, request: &HeaderMap) -> Response {
        let tag = self.tag.get_or_init(|| etag::tag(None, self.body));
        let unchanged = request
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| etag::none_match(v, tag));
        let mut res = if unchanged {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            res
        } else {
            Response::new(Body::from(self.body))
        };
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        headers.insert(header::ETAG, tag.clone());
        // Files change with the binary: revalidate each load (a 304 when
        // nothing changed).
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(policy),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        res
    }
}

/// A route per file (`(path, file)`), each served under `policy`.
pub fn routes<S: Clone + Send + Sync + 'static>(
    files: &'static [(&'static str, Asset)],
    policy: &'static str,
) -> Router<S> {
    files.iter().fold(Router::new(), |router, (path, asset)| {
        router.route(
            path,
            get(move |h: HeaderMap| async move { asset.serve(policy, &h) }),
        )
    })
}
