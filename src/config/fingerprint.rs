//! [`fingerprint`]: a short, stable name for a config's text, so that two workers (or a worker
//! and the cluster's stored config) can tell whether they run the same file.

/// The first 16 hex digits of the SHA-256 of `text`, exactly as given (bytes, not meaning: a
/// changed comment or indentation is another fingerprint). Stable across llmbus versions and
/// machines; `os.environ/NAME` references are hashed as written, so workers with different
/// secrets but the same file share a fingerprint and no secret can be guessed from it.
pub fn fingerprint(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn fingerprints_are_short_stable_and_tell_texts_apart() {
        // SHA-256("") = e3b0c44298fc1c14...
        assert_eq!(fingerprint(""), "e3b0c44298fc1c14");
        let a = fingerprint("model_list: []\n");
        assert_eq!(a.len(), 16);
        assert_eq!(a, fingerprint("model_list: []\n"));
        assert_ne!(a, fingerprint("model_list: [] \n"));
    }
}
