//! Fuzz target `ollama_stream`: the invariants are in `llmbus::fuzzing::ollama_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::ollama_stream(data));
