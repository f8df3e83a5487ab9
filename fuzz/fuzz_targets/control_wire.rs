//! Fuzz target `control_wire`: see `herald::fuzzing::control_wire` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::control_wire(data));
