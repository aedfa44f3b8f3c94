//! Token estimates: what a job reserves against a TPM limit before the upstream says how many
//! tokens it really used. About four characters per token, as OpenAI's guidance has it.
//!
//! A call's reservation is its [`Demand`]: the prompt estimate plus the most it may generate,
//! `max_completion_tokens` (else `max_tokens`) times `n`. When the request sets no bound, the
//! deployment's observed average output size stands in for it
//! ([`DEFAULT_OUTPUT_TOKENS`] until a call has been seen).

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

/// The output a call is expected to generate per choice when its request sets no bound and
/// its deployment has answered nothing yet.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 256;

/// What one call may use, as known before it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// The prompt estimate ([`estimate_prompt_tokens`]).
    pub prompt: u64,
    /// The most tokens each choice may generate; `None` when the request sets no bound.
    pub max_output: Option<u64>,
    /// How many choices (`n`, at least 1).
    pub choices: u64,
}

impl Demand {
    /// A call whose whole cost is its input (embeddings).
    pub fn input_only(prompt: u64) -> Self {
        Self {
            prompt,
            max_output: Some(0),
            choices: 1,
        }
    }

    /// A chat completion's demand: its prompt, `max_completion_tokens` (else `max_tokens`), `n`.
    pub fn of_chat(request: &ChatCompletionRequest) -> Self {
        Self {
            prompt: estimate_prompt_tokens(request),
            max_output: request
                .max_completion_tokens
                .or(request.max_tokens)
                .map(u64::from),
            choices: u64::from(request.n.unwrap_or(1).max(1)),
        }
    }

    /// The tokens to reserve, with `observed_output` (the deployment's average output per
    /// choice, 0 when unknown) standing in for an unset bound.
    pub fn tokens(&self, observed_output: u64) -> u64 {
        let per_choice = self.max_output.unwrap_or(if observed_output == 0 {
            DEFAULT_OUTPUT_TOKENS
        } else {
            observed_output
        });
        self.prompt
            .saturating_add(per_choice.saturating_mul(self.choices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_demand_reserves_prompt_plus_the_output_bound_times_n() {
        let d = Demand {
            prompt: 50,
            max_output: Some(1000),
            choices: 2,
        };
        assert_eq!(d.tokens(7), 2050);
        let open = Demand {
            max_output: None,
            ..d
        };
        assert_eq!(open.tokens(0), 50 + 2 * DEFAULT_OUTPUT_TOKENS);
        assert_eq!(open.tokens(300), 650);
        assert_eq!(Demand::input_only(40).tokens(300), 40);
    }

    #[test]
    fn four_characters_make_a_token() {
        assert_eq!(estimate_text_tokens(""), 0);
        assert_eq!(estimate_text_tokens("abc"), 1);
        assert_eq!(estimate_text_tokens("abcdefgh"), 2);
    }
}
