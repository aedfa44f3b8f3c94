//! Fuzz target `sse`: the invariants are in `llmbus::fuzzing::sse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::sse(data));
