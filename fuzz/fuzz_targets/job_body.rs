//! Fuzz target `job_body`: the invariants are in `llmbus::fuzzing::job_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llmbus::fuzzing::job_body(data));
