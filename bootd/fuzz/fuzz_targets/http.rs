//! The request target check that stands behind hyper's HTTP/1 parser
//! (bootd/src/http/target.rs; it replaced the hand-written head parser):
//! any target hyper could hand over, never a panic, and a target that
//! passes has a plain, bounded path and at most a bounded hex token.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/http/target.rs"]
mod target;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    if let Ok(t) = target::check(flag & 1 == 1, path, query) {
        assert!(flag & 1 == 0);
        assert!(t.path.starts_with('/') && t.path.len() <= target::MAX_TARGET);
        assert!(t
            .path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b)));
        if let Some(tok) = &t.token {
            assert!(tok.len() <= target::MAX_TOKEN && tok.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
});
