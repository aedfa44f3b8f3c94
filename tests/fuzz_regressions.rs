//! The fuzz targets' inputs, replayed by plain `cargo test`: every seed of the corpus
//! (`fuzz/corpus/<target>/`) and every input a fuzzer found a crash with
//! (`tests/fuzz_regressions/<target>/`) goes through the same entry point as the fuzz target
//! (`llmbus::fuzzing::<target>`), which panics when one of the parser's invariants breaks.
//! The named tests below pin each crash found so far, with what it was.

use std::path::Path;

use llmbus::fuzzing;

/// Runs `check` over every file of the target's seed corpus and crash inputs; fails naming
/// every file whose input breaks an invariant.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failed = Vec::new();
    let mut seen = 0;
    for dir in [
        root.join("fuzz/corpus").join(target),
        root.join("tests/fuzz_regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("a corpus file reads");
            seen += 1;
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(seen > 0, "no input for target `{target}`");
    assert!(failed.is_empty(), "inputs that break `{target}`: {failed:#?}");
}

#[test]
fn job_body_corpus() {
    replay("job_body", fuzzing::job_body);
}

#[test]
fn job_headers_corpus() {
    replay("job_headers", fuzzing::job_headers);
}

#[test]
fn sse_corpus() {
    replay("sse", fuzzing::sse);
}

#[test]
fn openai_stream_corpus() {
    replay("openai_stream", fuzzing::openai_stream);
}

#[test]
fn anthropic_stream_corpus() {
    replay("anthropic_stream", fuzzing::anthropic_stream);
}

#[test]
fn gemini_stream_corpus() {
    replay("gemini_stream", fuzzing::gemini_stream);
}

#[test]
fn cohere_stream_corpus() {
    replay("cohere_stream", fuzzing::cohere_stream);
}

#[test]
fn ollama_stream_corpus() {
    replay("ollama_stream", fuzzing::ollama_stream);
}

#[test]
fn bedrock_stream_corpus() {
    replay("bedrock_stream", fuzzing::bedrock_stream);
}

#[test]
fn responses_corpus() {
    replay("responses", fuzzing::responses);
}

#[test]
fn config_corpus() {
    replay("config", fuzzing::config);
}
