//! Fuzz target `gemini_stream`: the invariants are in `llmbus::fuzzing::gemini_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::gemini_stream(data));
