//! `llmbus complete`: one chat completion from the command line. It streams the text to
//! stdout (usage and cost on stderr), or prints the whole reply as JSON with `--no-stream`.
//!
//! A stream is read with ADR-47's stall timer: the first message may take until the deadline
//! (`--timeout`, the upstream's time to first token is in it), every later one must come within
//! `--stall` (default 30 s) — a worker that dies mid-stream sends nothing more, and the
//! command says so and exits 1 instead of waiting for the deadline.

use std::{io::Write, time::Duration};

use async_nats::HeaderMap;

use super::{Res, parse_duration};
use crate::{
    client::{ClientError, LlmClient},
    config::LlmbusSettings,
    nats,
    wire::{headers, openai::ChatCompletionChunk},
};

/// How much longer than the deadline the CLI waits for the worker's own deadline answer.
const DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// `llmbus complete`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct CompleteArgs {
    /// Model group.
    #[arg(long, short)]
    pub model: String,
    /// Print the whole reply as JSON instead of streaming the text.
    #[arg(long)]
    pub no_stream: bool,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature (0 to 2).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Most tokens to generate.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// The job's deadline, sent as Llm-Timeout-Ms: seconds (`30`, `2.5`) or with a unit
    /// (`500ms`, `30s`, `2m`).
    #[arg(long, value_parser = parse_duration, default_value = "120")]
    pub timeout: Duration,
    /// The deadline in milliseconds (the older spelling of --timeout).
    #[arg(long, hide = true, conflicts_with = "timeout")]
    pub timeout_ms: Option<u64>,
    /// Give up on a stream when no message arrives for this long after the first one (same
    /// units as --timeout).
    #[arg(long, value_parser = parse_duration, default_value = "30")]
    pub stall: Duration,
    /// A request header, `Name:value` (repeatable): `-H Llm-Tags:fast -H 'Authorization:Bearer
    /// sk-...'`.
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Subject prefix.
    #[arg(long, default_value = "llm")]
    pub prefix: String,
    /// The prompt.
    #[arg(required = true)]
    pub prompt: Vec<String>,
}

/// `Name:value` → (`Name`, `value`), both trimmed.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not a header: write Name:value"))?;
    let name = name.trim();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'"');
    if !valid {
        return Err(format!("`{name}` is not a valid header name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

impl CompleteArgs {
    /// The job's deadline: `--timeout-ms`, else an `Llm-Timeout-Ms` given with `-H`, else
    /// `--timeout`.
    pub fn deadline(&self) -> Result<Duration, String> {
        if let Some(ms) = self.timeout_ms {
            return Ok(Duration::from_millis(ms.max(1)));
        }
        match self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(headers::TIMEOUT_MS))
        {
            Some((_, v)) => v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                format!(
                    "-H {}:{v}: the value must be milliseconds",
                    headers::TIMEOUT_MS
                )
            }),
            None => Ok(self.timeout),
        }
    }

    /// The NATS headers: the `-H` ones, plus `Llm-Timeout-Ms` unless one was given.
    pub fn nats_headers(&self) -> Result<HeaderMap, String> {
        let deadline = self.deadline()?;
        let mut h = HeaderMap::new();
        for (name, value) in &self.headers {
            h.append(name.as_str(), value.as_str());
        }
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(headers::TIMEOUT_MS))
        {
            h.insert(
                headers::TIMEOUT_MS,
                deadline.as_millis().max(1).to_string().as_str(),
            );
        }
        Ok(h)
    }

    /// The OpenAI chat completion request body.
    pub fn body(&self) -> serde_json::Value {
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(serde_json::json!({"role": "system", "content": s}));
        }
        messages.push(serde_json::json!({"role": "user", "content": self.prompt.join(" ")}));
        let mut body = serde_json::json!({"model": self.model, "messages": messages});
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = m.into();
        }
        if let Some(t) = self.temperature {
            body["temperature"] = t.into();
        }
        if !self.no_stream {
            body["stream"] = true.into();
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        body
    }
}

/// A client of the bus at `url` (or `NATS_URL`, or the default) under `prefix`.
pub async fn connect_client(
    url: Option<String>,
    prefix: &str,
) -> Result<LlmClient, Box<dyn std::error::Error>> {
    let settings = LlmbusSettings::default();
    let nats = nats::connect(&settings, url.as_deref(), "llmbus-cli").await?;
    Ok(LlmClient::new(nats, prefix))
}

/// `llmbus complete`.
pub async fn complete(url: Option<String>, args: CompleteArgs) -> Res {
    let h = args.nats_headers()?;
    let wait = args.deadline()? + DEADLINE_SLACK;
    let body = bytes::Bytes::from(serde_json::to_vec(&args.body())?);
    let client = connect_client(url, &args.prefix).await?;
    if args.no_stream {
        let reply = client.complete(h, body, wait).await?;
        println!("{}", serde_json::to_string_pretty(&reply.json())?);
        return if reply.status == 200 {
            Ok(())
        } else {
            Err(format!("status {}", reply.status).into())
        };
    }
    let mut reader = client.stream(h, body, wait).await?.with_stall(args.stall);
    let mut out = std::io::stdout();
    let mut usage = None;
    let mut wrote = false;
    while let Some(msg) = reader.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                if wrote {
                    writeln!(out)?;
                }
                return Err(match e {
                    ClientError::Stalled { .. } => {
                        format!("{e}; gave up (--stall sets how long to wait)").into()
                    }
                    other => other.into(),
                });
            }
        };
        if msg.body.is_empty() {
            writeln!(out)?;
            if let Some(u) = usage {
                eprintln!(
                    "[usage: {u}; cost ${}]",
                    msg.header(headers::COST_USD).unwrap_or("?")
                );
            }
            if msg.status != 200 {
                return Err(format!("status {}", msg.status).into());
            }
            return Ok(());
        }
        match serde_json::from_slice::<ChatCompletionChunk>(&msg.body) {
            Ok(chunk) => {
                for c in &chunk.choices {
                    if let Some(t) = &c.delta.content {
                        write!(out, "{t}")?;
                        wrote = true;
                    }
                }
                if let Some(u) = chunk.usage {
                    usage = Some(format!(
                        "{} prompt + {} completion tokens",
                        u.prompt_tokens, u.completion_tokens
                    ));
                }
                out.flush()?;
            }
            Err(_) => {
                if wrote {
                    writeln!(out)?;
                    wrote = false;
                }
                eprintln!(
                    "error {}: {}",
                    msg.status,
                    String::from_utf8_lossy(&msg.body)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: CompleteArgs,
    }

    fn parse(args: &[&str]) -> Result<CompleteArgs, clap::Error> {
        let mut all = vec!["complete"];
        all.extend_from_slice(args);
        Cmd::try_parse_from(all).map(|c| c.args)
    }

    #[test]
    fn every_option_reaches_the_body_or_the_headers() {
        let a = parse(&[
            "-m",
            "demo",
            "--system",
            "be brief",
            "--temperature",
            "0.2",
            "--max-tokens",
            "7",
            "--timeout",
            "1500ms",
            "-H",
            "Llm-Tags: fast",
            "-H",
            "Llm-Tags:cheap",
            "Say",
            "hello",
        ])
        .unwrap();
        let body = a.body();
        assert_eq!(body["messages"][0]["content"], "be brief");
        assert_eq!(body["messages"][1]["content"], "Say hello");
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["max_tokens"], 7);
        assert_eq!(body["stream"], true);
        let h = a.nats_headers().unwrap();
        assert_eq!(h.get(headers::TIMEOUT_MS).unwrap().as_str(), "1500");
        let tags: Vec<&str> = h.get_all(headers::TAGS).map(|v| v.as_str()).collect();
        assert_eq!(tags, ["fast", "cheap"]);
    }

    #[test]
    fn the_deadline_comes_from_one_place() {
        let a = parse(&["-m", "x", "hi"]).unwrap();
        assert_eq!(a.deadline().unwrap(), Duration::from_secs(120));
        assert_eq!(a.stall, Duration::from_secs(30));
        let a = parse(&["-m", "x", "--timeout-ms", "250", "hi"]).unwrap();
        assert_eq!(a.deadline().unwrap(), Duration::from_millis(250));
        let a = parse(&["-m", "x", "-H", "Llm-Timeout-Ms:900", "hi"]).unwrap();
        assert_eq!(a.deadline().unwrap(), Duration::from_millis(900));
        let h = a.nats_headers().unwrap();
        assert_eq!(h.get_all(headers::TIMEOUT_MS).count(), 1);
        assert!(parse(&["-m", "x", "--timeout", "5", "--timeout-ms", "5", "hi"]).is_err());
        assert!(parse(&["-m", "x", "-H", "no colon", "hi"]).is_err());
        assert!(parse(&["-m", "x", "-H", ":empty", "hi"]).is_err());
        assert!(parse(&["-m", "x", "--timeout", "soon", "hi"]).is_err());
    }
}
