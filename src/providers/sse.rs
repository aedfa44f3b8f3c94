//! A small Server-Sent Events decoder: bytes in, events (`event:` name and `data:` text) out.
//!
//! It follows the WHATWG parsing rules that matter for LLM streams: lines end with `\n`,
//! `\r\n` or `\r`; a blank line ends an event; several `data:` lines join with `\n`; one space
//! after the colon is dropped; comments (`:` lines), `id:`, `retry:` and lines it does not
//! understand are ignored. It knows nothing about OpenAI: the adapters decide what a `data:`
//! payload means (a JSON chunk, `[DONE]`, an error object).

use std::collections::VecDeque;

use bytes::Bytes;
use futures::{Stream, StreamExt, stream::BoxStream};

use super::{ErrorClass, ProviderError};

/// The longest line (or event) the decoder buffers before it gives up on the stream.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` name, when the event had one (Anthropic uses them; OpenAI does not).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Incremental decoder: feed it bytes as they arrive with [`SseDecoder::push`], then call
/// [`SseDecoder::finish`] at the end of the stream.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The previous byte was `\r`, so a `\n` right after it ends nothing.
    after_cr: bool,
    /// The event being built.
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; appends every event they complete to `out`. Fails when a single line
    /// or event grows past [`MAX_EVENT_BYTES`].
    pub fn push(
        &mut self,
        bytes: &[u8],
        out: &mut VecDeque<SseEvent>,
    ) -> Result<(), ProviderError> {
        for &byte in bytes {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.end_line(out);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                }
            }
        }
        if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("an SSE event is larger than {MAX_EVENT_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    /// Ends the stream: an unterminated last line counts as a line, and an event with data
    /// but without its closing blank line is still returned (lenient: the caller decides
    /// whether the stream ended properly).
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut out = VecDeque::new();
        if !self.line.is_empty() {
            self.end_line(&mut out);
        }
        self.end_line(&mut out);
        out.pop_front()
    }

    fn end_line(&mut self, out: &mut VecDeque<SseEvent>) {
        if self.line.is_empty() {
            if self.has_data {
                out.push_back(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
                self.has_data = false;
            } else {
                self.event = None;
            }
            return;
        }
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            // Comments (empty field), `id`, `retry` and anything else: ignored.
            _ => {}
        }
    }
}

/// Decodes a byte stream into events. A transport error is passed on and ends the stream; so
/// does an oversized event. When the bytes end, a pending event is flushed and the stream
/// ends: whether that was a proper end is for the caller to say.
pub fn events<S>(bytes: S) -> BoxStream<'static, Result<SseEvent, ProviderError>>
where
    S: Stream<Item = Result<Bytes, ProviderError>> + Send + 'static,
{
    struct State<S> {
        bytes: S,
        decoder: SseDecoder,
        ready: VecDeque<SseEvent>,
        done: bool,
    }
    let state = State {
        bytes: Box::pin(bytes),
        decoder: SseDecoder::new(),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.ready.pop_front() {
                return Some((Ok(event), st));
            }
            if st.done {
                return None;
            }
            match st.bytes.next().await {
                Some(Ok(chunk)) => {
                    if let Err(err) = st.decoder.push(&chunk, &mut st.ready) {
                        st.done = true;
                        st.ready.clear();
                        return Some((Err(err), st));
                    }
                }
                Some(Err(err)) => {
                    st.done = true;
                    return Some((Err(err), st));
                }
                None => {
                    st.done = true;
                    st.ready.extend(st.decoder.finish());
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new();
        let mut out = VecDeque::new();
        for part in input {
            decoder.push(part, &mut out).unwrap();
        }
        out.extend(decoder.finish());
        out.into()
    }

    fn data(text: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: text.into(),
        }
    }

    #[test]
    fn events_end_at_blank_lines() {
        let got = decode(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"]);
        assert_eq!(got, vec![data("{\"a\":1}"), data("[DONE]")]);
    }

    #[test]
    fn split_anywhere_and_crlf() {
        let got = decode(&[b"da", b"ta: he", b"llo\r", b"\n\r\ndata:x\r\r"]);
        assert_eq!(got, vec![data("hello"), data("x")]);
    }

    #[test]
    fn comments_ids_unknown_lines_are_ignored() {
        let got = decode(&[
            b": keep-alive\n\nid: 7\nretry: 10\ngarbage line\nfoo: bar\ndata: a\ndata: b\n\n",
        ]);
        assert_eq!(got, vec![data("a\nb")]);
    }

    #[test]
    fn event_names_are_kept() {
        let got = decode(&[b"event: ping\ndata: {}\n\n"]);
        assert_eq!(
            got,
            vec![SseEvent {
                event: Some("ping".into()),
                data: "{}".into()
            }]
        );
    }

    #[test]
    fn unterminated_last_event_is_flushed() {
        assert_eq!(decode(&[b"data: [DONE]"]), vec![data("[DONE]")]);
        assert_eq!(decode(&[b"data: x\n"]), vec![data("x")]);
        assert!(decode(&[b": only a comment"]).is_empty());
    }

    #[test]
    fn multibyte_text_survives_splits() {
        let text = "data: héllo ✓\n\n".as_bytes();
        let (a, b) = text.split_at(9);
        assert_eq!(decode(&[a, b]), vec![data("héllo ✓")]);
    }
}
