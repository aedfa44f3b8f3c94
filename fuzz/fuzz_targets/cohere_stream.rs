//! Fuzz target `cohere_stream`: the invariants are in `llmbus::fuzzing::cohere_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::cohere_stream(data));
