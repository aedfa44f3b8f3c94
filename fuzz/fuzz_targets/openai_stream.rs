//! Fuzz target `openai_stream`: the invariants are in `llmbus::fuzzing::openai_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::openai_stream(data));
