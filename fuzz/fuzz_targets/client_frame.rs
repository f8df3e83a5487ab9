//! Fuzz target `client_frame`: see `herald::fuzzing::client_frame` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::client_frame(data));
