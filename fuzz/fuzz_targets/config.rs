//! Fuzz target `config`: the invariants are in `llmbus::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::config(data));
