//! Fuzz target `jwt`: see `herald::fuzzing::jwt` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::jwt(data));
