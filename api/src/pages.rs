//! The pages for people: the storefront (`GET /`) and the operations
//! console (`GET /ops`), with their scripts and styles under `/assets/`.
//!
//! The files live in `api/pages/` and are compiled into the binary, so an
//! API serves its pages with nothing beside it and nothing from elsewhere:
//! no CDN, no font service. The pages are plain HTML, CSS and JavaScript
//! modules; they hold no secrets and call the same HTTP API as any client,
//! with the token the person gives them (in the URL fragment, which never
//! reaches a server, or pasted in).
//!
//! Every answer carries a strict `Content-Security-Policy`: scripts and
//! styles from this origin only (no inline script or style, no `eval`),
//! requests to this origin only, no frames, no forms posting elsewhere. The
//! pages build their DOM with `textContent`, never HTML strings, so a
//! product named `<img src=x onerror=…>` is shown as those characters; the
//! policy is the second line of defence. Files are revalidated on every
//! load (`no-cache` with an `ETag`), so a new release is picked up at once
//! and an unchanged file costs a `304`.
//!
//! These routes are not part of the OpenAPI document, which describes the
//! JSON API; API.md's "Pages (for people)" is their contract.

use std::sync::{Arc, OnceLock};

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The policy every page and asset is served with.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct File {
    /// Path under `/assets/` (or the page's own path).
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! embed {
    ($name:literal, $type:expr) => {
        File {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../pages/", $name)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static STOREFRONT: File = embed!("index.html", HTML);
static CONSOLE: File = embed!("ops.html", HTML);
static ASSETS: &[File] = &[
    embed!("app.css", CSS),
    embed!("favicon.svg", "image/svg+xml"),
    embed!("js/api.js", JS),
    embed!("js/chart.js", JS),
    embed!("js/dom.js", JS),
    embed!("js/ops.js", JS),
    embed!("js/page.js", JS),
    embed!("js/session.js", JS),
    embed!("js/sse.js", JS),
    embed!("js/store.js", JS),
];

/// The pages' routes; merged into the API's router beside the JSON API.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&STOREFRONT, &headers) }),
        )
        .route(
            "/ops",
            get(|headers: HeaderMap| async move { serve(&CONSOLE, &headers) }),
        )
        .route("/assets/{*name}", get(asset))
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|file| file.name == name) {
        Some(file) => serve(file, &headers),
        None => ApiError::NotFound.into_response(),
    }
}

/// The file, or `304` when the client already holds this version.
fn serve(file: &'static File, request: &HeaderMap) -> Response {
    let etag = etag(file);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(file.content_type),
            )],
            file.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A strong validator: the first 128 bits of the content's SHA-256, quoted.
/// Computed once per file.
fn etag(file: &'static File) -> &'static str {
    static TAGS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&STOREFRONT)
            .chain(std::iter::once(&CONSOLE))
            .chain(ASSETS.iter())
            .map(|f| {
                let digest = Sha256::digest(f.body);
                (f.name, format!("\"{}\"", hex::encode(&digest[..16])))
            })
            .collect()
    });
    tags.iter()
        .find(|(name, _)| *name == file.name)
        .map_or("\"\"", |(_, tag)| tag.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_loads_only_embedded_assets() {
        // Nothing is fetched from elsewhere, and every asset a page names
        // is embedded; links stay on this origin.
        for page in [&STOREFRONT, &CONSOLE] {
            let text = std::str::from_utf8(page.body).unwrap();
            for attr in ["src=\"", "href=\""] {
                for piece in text.split(attr).skip(1) {
                    let target = piece.split('"').next().unwrap();
                    assert!(
                        !target.contains("//") && !target.contains(':'),
                        "{}: {attr}{target} leaves this origin",
                        page.name
                    );
                    if let Some(name) = target.strip_prefix("/assets/") {
                        assert!(
                            ASSETS.iter().any(|f| f.name == name),
                            "{}: {name} is not embedded",
                            page.name
                        );
                    } else {
                        assert!(
                            attr == "href=\""
                                && (target.starts_with('/') || target.starts_with('#')),
                            "{}: {attr}{target} is not an embedded asset",
                            page.name
                        );
                    }
                }
            }
            assert!(!text.contains("<script>"), "{}: inline script", page.name);
            assert!(!text.contains("<style"), "{}: inline style", page.name);
            assert!(!text.contains("style=\""), "{}: inline style", page.name);
        }
    }

    #[test]
    fn modules_import_only_embedded_modules() {
        for file in ASSETS.iter().filter(|f| f.name.ends_with(".js")) {
            let text = std::str::from_utf8(file.body).unwrap();
            for piece in text.split(" from \"").skip(1) {
                let target = piece.split('"').next().unwrap();
                let name = target.strip_prefix("./").expect("relative import");
                assert!(
                    ASSETS.iter().any(|f| f.name == format!("js/{name}")),
                    "{} imports {target}, which is not embedded",
                    file.name
                );
            }
            // Nothing user-supplied may be parsed as HTML.
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!text.contains(sink), "{} uses {sink}", file.name);
            }
        }
    }

    #[test]
    fn a_known_etag_is_answered_304() {
        let tag = etag(&STOREFRONT).to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&tag).unwrap());
        let response = serve(&STOREFRONT, &headers);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        let response = serve(&STOREFRONT, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::ETAG], tag.as_str());
        assert_eq!(
            response.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_ne!(etag(&CONSOLE), tag, "each file has its own tag");
    }
}
