//! Fuzz target `bedrock_stream`: the invariants are in `llmbus::fuzzing::bedrock_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::bedrock_stream(data));
