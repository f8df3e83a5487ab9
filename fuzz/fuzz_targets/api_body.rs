//! Fuzz target `api_body`: see `herald::fuzzing::api_body` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::api_body(data));
