//! The web dashboard at `/` of the API listener (never the boot network's
//! HTTP port): three static files compiled into the binary, so it works
//! offline and matches the API of the same build. The page holds no data
//! of its own; it signs in with a bearer token and reads `/api/v1` like
//! any other client, so these routes need no token.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and
//! styles only from this origin, no inline script, no framing), an ETag
//! (the content's SHA-256) and `Cache-Control: no-cache`, so a browser
//! revalidates cheaply and never runs a stale script after an upgrade.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Nothing from elsewhere, nothing inline; `connect-src 'self'` for the
/// API and its event stream.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

struct Asset {
    body: &'static [u8],
    mime: &'static str,
}

const INDEX: Asset = Asset {
    body: include_bytes!("index.html"),
    mime: "text/html; charset=utf-8",
};
const APP: Asset = Asset {
    body: include_bytes!("app.js"),
    mime: "text/javascript; charset=utf-8",
};
const STYLE: Asset = Asset {
    body: include_bytes!("style.css"),
    mime: "text/css; charset=utf-8",
};
const ICON: Asset = Asset {
    body: include_bytes!("icon.svg"),
    mime: "image/svg+xml",
};

/// The dashboard's routes; merged beside `/api/v1` (no token needed).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&INDEX, 0, &h) }))
        .route(
            "/app.js",
            get(|h: HeaderMap| async move { serve(&APP, 1, &h) }),
        )
        .route(
            "/style.css",
            get(|h: HeaderMap| async move { serve(&STYLE, 2, &h) }),
        )
        .route(
            "/icon.svg",
            get(|h: HeaderMap| async move { serve(&ICON, 3, &h) }),
        )
}

/// The asset's ETag: its SHA-256, hashed once per process.
fn etag(asset: &Asset, slot: usize) -> &'static str {
    static TAGS: [OnceLock<String>; 4] = [const { OnceLock::new() }; 4];
    TAGS[slot].get_or_init(|| format!("\"{}\"", &hex::encode(Sha256::digest(asset.body))[..32]))
}

fn serve(asset: &Asset, slot: usize, req: &HeaderMap) -> Response {
    let tag = etag(asset, slot);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime))],
            asset.body,
        )
            .into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The page's URL may carry `#token=`: fragments are never sent, but
    // say so to every browser anyway.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_csp_and_etag_and_revalidate_to_304() {
        let r = serve(&APP, 1, &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ASCII");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"));
        let tag = r.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, tag.clone());
        let again = serve(&APP, 1, &h);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag);
        // Another asset's tag does not match.
        let other = serve(&STYLE, 2, &h);
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn the_page_has_no_inline_script_and_loads_only_its_own_files() {
        let html = std::str::from_utf8(INDEX.body).expect("UTF-8");
        // Every <script> has a src on this origin and no body.
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find("</script>").expect("closed")];
            assert!(tag.contains("src=\"/app.js\""), "{tag}");
            assert!(tag.ends_with('>'), "inline script: {tag}");
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("style=\""), "inline style");
        // No inline event handler (` onclick=`, ` onload=`...).
        let lower = html.to_ascii_lowercase();
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 3..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            let after = &lower[i + 3 + name.len()..];
            assert!(
                name.is_empty() || !after.trim_start().starts_with('='),
                "inline handler on{name}"
            );
        }
    }

    /// app.js is plain JavaScript with JSDoc types: Debian's TypeScript
    /// checks it strictly (no build step, nothing emitted). Skipped where
    /// `tsc` is missing, unless BOOTD_E2E=1 (CI) says everything must run.
    #[test]
    fn app_js_type_checks_strictly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/dashboard");
        let out = std::process::Command::new("tsc")
            .args([
                "--noEmit",
                "--checkJs",
                "--allowJs",
                "--strict",
                "--target",
                "es2022",
            ])
            .args(["--lib", "es2022,dom,dom.iterable", "app.js"])
            .current_dir(&dir)
            .output();
        match out {
            Err(e) if std::env::var("BOOTD_E2E").is_ok_and(|v| v == "1") => {
                panic!("BOOTD_E2E=1 but tsc does not run ({e}): install node-typescript")
            }
            Err(e) => println!("skipped: tsc does not run ({e}; Debian package node-typescript)"),
            Ok(o) => assert!(
                o.status.success(),
                "tsc found type errors in app.js:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }
}
