//! The registry server's certificate (from the network) as the channel
//! binding reads it: never panics, and binding data is a hash of the
//! whole certificate of the size its signature algorithm names.
#![no_main]

#[path = "../../src/store/postgres/binding.rs"]
mod binding;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hash = binding::signature_hash(data);
    let bound = binding::end_point(data);
    let want = hash.map(|h| match h {
        binding::Hash::Sha256 => 32,
        binding::Hash::Sha384 => 48,
        binding::Hash::Sha512 => 64,
    });
    assert_eq!(bound.map(|b| b.len()), want);
});
