//! Fuzz target `sync_http`: see `herald::fuzzing::sync_http` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::sync_http(data));
