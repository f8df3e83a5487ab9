//! Fuzz target `ingest_wire`: see `herald::fuzzing::ingest_wire` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald::fuzzing::ingest_wire(data));
