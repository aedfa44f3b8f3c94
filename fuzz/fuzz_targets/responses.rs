//! Fuzz target `responses`: the invariants are in `llmbus::fuzzing::responses`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::responses(data));
