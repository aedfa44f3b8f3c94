//! Token estimates: what a job reserves against a TPM limit before the upstream says how many
//! tokens it really used. About four characters per token, as OpenAI's guidance has it.

use crate::wire::openai::ChatCompletionRequest;

/// Tokens in `text`, estimated at four characters per token (at least one for non-empty text).
pub fn estimate_text_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

/// Tokens in a request's prompt: every message's text plus a few tokens of framing per message.
pub fn estimate_prompt_tokens(request: &ChatCompletionRequest) -> u64 {
    request
        .messages
        .iter()
        .map(|m| 4 + estimate_text_tokens(&m.text_content()))
        .sum::<u64>()
        + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_characters_make_a_token() {
        assert_eq!(estimate_text_tokens(""), 0);
        assert_eq!(estimate_text_tokens("abc"), 1);
        assert_eq!(estimate_text_tokens("abcdefgh"), 2);
    }
}
