//! Fuzz target `job_headers`: the invariants are in `llmbus::fuzzing::job_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::job_headers(data));
