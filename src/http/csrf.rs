//! Refusing state-changing requests that another site's page sent.
//!
//! Browsers attach HTTP Basic credentials (which the upload page and the
//! review page use) to cross-site form posts, so without this check a page
//! elsewhere could reject reports or unload models in a reviewer's name.
//!
//! The rule is the one Go's `net/http.CrossOriginProtection` applies, and it
//! needs no token: for a request whose method is not GET, HEAD or OPTIONS,
//! - `Sec-Fetch-Site` (sent by every current browser) must be `same-origin`
//!   or `none` (typed by the user);
//! - without it, an `Origin` header, if any, must name the host the request
//!   was sent to (`Host`, or `X-Forwarded-Host` with `--trust-proxy`);
//! - a request with neither header is not from a browser (curl, SDKs) and
//!   passes.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::body::refuse;
use super::error::ApiError;

/// Why a request would be refused, or `None` if it may go on.
pub fn cross_site(method: &Method, headers: &HeaderMap, trust_proxy: bool) -> Option<&'static str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => None,
            _ => Some("the browser says this request came from another site (Sec-Fetch-Site)"),
        };
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().ok().filter(|o| *o != "null");
    let forwarded = trust_proxy.then(|| headers.get("x-forwarded-host")).flatten();
    let host = forwarded.or_else(|| headers.get(header::HOST)).and_then(|h| h.to_str().ok());
    let origin_host = origin.and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h.trim()) => None,
        _ => Some("its Origin is not this server"),
    }
}

/// The middleware: 403 for a cross-site state-changing request.
pub async fn refuse_cross_site(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match cross_site(req.method(), req.headers(), state.limits.trust_proxy) {
        Some(why) => refuse(ApiError::CrossSite(why)),
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn browsers_from_another_site_are_refused() {
        let post = Method::POST;
        let evil = headers(&[("host", "lens:8000"), ("origin", "https://evil.example")]);
        assert!(cross_site(&post, &evil, false).is_some());
        let fetch = headers(&[("host", "lens:8000"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_site(&post, &fetch, false).is_some());
        let sibling = headers(&[("host", "lens:8000"), ("sec-fetch-site", "same-site")]);
        assert!(cross_site(&post, &sibling, false).is_some());
        let null = headers(&[("host", "lens:8000"), ("origin", "null")]);
        assert!(cross_site(&post, &null, false).is_some(), "a sandboxed page sends Origin: null");
    }

    #[test]
    fn same_origin_typed_and_non_browser_requests_pass() {
        let post = Method::POST;
        let same = headers(&[("host", "lens:8000"), ("origin", "http://lens:8000")]);
        assert_eq!(cross_site(&post, &same, false), None);
        let fetch = headers(&[("host", "lens:8000"), ("sec-fetch-site", "same-origin"), ("origin", "http://x")]);
        assert_eq!(cross_site(&post, &fetch, false), None, "Sec-Fetch-Site decides when present");
        assert_eq!(cross_site(&post, &headers(&[("sec-fetch-site", "none")]), false), None);
        assert_eq!(cross_site(&post, &headers(&[("host", "lens:8000")]), false), None, "curl sends neither");
        let evil = headers(&[("host", "lens:8000"), ("origin", "https://evil.example")]);
        assert_eq!(cross_site(&Method::GET, &evil, false), None, "reads are not refused");
    }

    #[test]
    fn behind_a_trusted_proxy_the_forwarded_host_counts() {
        let post = Method::POST;
        let h = headers(&[
            ("host", "10.0.0.5:8000"),
            ("x-forwarded-host", "lens.example"),
            ("origin", "https://lens.example"),
        ]);
        assert_eq!(cross_site(&post, &h, true), None);
        assert!(cross_site(&post, &h, false).is_some());
    }
}
