//! Fuzz target `channel_name`: see `herald::fuzzing::channel_name` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::channel_name(data));
