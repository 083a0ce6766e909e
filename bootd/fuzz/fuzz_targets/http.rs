//! HTTP request heads: parsing never panics, and a parsed request has a
//! plain, bounded path and at most a bounded hex token.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/http/request.rs"]
mod request;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(r)) = request::parse(data) {
        assert!(r.path.starts_with('/') && r.path.len() <= request::MAX_TARGET);
        assert!(r
            .path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b)));
        if let Some(t) = &r.token {
            assert!(t.len() <= request::MAX_TOKEN && t.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
});
