//! The dashboard's files at `/` of the API listener: no token needed (the
//! page signs in itself), a strict CSP, ETags that revalidate; never on the
//! boot network's HTTP port. The page in a real browser with real boots:
//! tests/tests/e2e/dashboard.rs.

use crate::api::{agent, ApiServe};
use crate::common::*;

#[test]
fn the_dashboard_is_served_at_the_api_root_only() -> Result {
    let env = Env::new()?;
    let serve = ApiServe::start(&env, &[])?;
    let root = format!("http://{}", serve.api);
    let mut etags = Vec::new();
    for (path, mime) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        // No Authorization header: the files hold no data.
        let r = agent().get(&format!("{root}{path}")).call()?;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.header("Content-Type"), Some(mime), "{path}");
        let csp = r.header("Content-Security-Policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        let etag = r.header("ETag").ok_or("no ETag")?.to_string();
        let body = r.into_string()?;
        assert!(!body.is_empty());
        if path == "/" {
            assert!(body.contains("<script src=\"/app.js\" defer></script>"));
        }
        // Revalidation: the same file is 304 with no body.
        let again = agent()
            .get(&format!("{root}{path}"))
            .set("If-None-Match", &etag)
            .call()?;
        assert_eq!(again.status(), 304, "{path}");
        etags.push(etag);
    }
    etags.sort();
    etags.dedup();
    assert_eq!(etags.len(), 4, "one ETag per file");
    // The API itself still needs its token.
    let r = agent().get(&serve.url("/nodes")).call();
    assert!(matches!(r, Err(ureq::Error::Status(401, _))), "{r:?}");
    // The boot network's HTTP port serves no dashboard.
    let r = agent()
        .get(&format!("http://127.0.0.1:{}/app.js", serve.http))
        .call();
    assert!(
        !matches!(&r, Ok(resp) if resp.status() == 200),
        "the boot port served app.js"
    );
    serve.stop()?;
    Ok(())
}
