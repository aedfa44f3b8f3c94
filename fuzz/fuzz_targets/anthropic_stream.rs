//! Fuzz target `anthropic_stream`: the invariants are in `llmbus::fuzzing::anthropic_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::anthropic_stream(data));
