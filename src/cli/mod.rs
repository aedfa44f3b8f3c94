//! The `llmbus` command's subcommands, as library code so that `src/main.rs` stays a parser
//! and a dispatch table:
//!
//! - [`worker`]: `up` and `serve` (run a worker until a signal, then drain it), the metrics
//!   listener's address, and [`banner`], what `up` prints once it serves;
//! - [`check`]: `check FILE [--store]`, a config's problems and its NATS store's replicas;
//! - [`config`]: `config push|show|history|rollback`, the cluster's config in JetStream KV;
//! - [`complete`]: `complete` (one chat completion, streamed with an ADR-47 stall timer);
//! - [`query`]: `models`, `deployments` and `health`;
//! - [`logging`]: how loud each command is (client commands are quiet unless `-v`).

pub mod banner;
pub mod check;
pub mod complete;
pub mod config;
pub mod logging;
pub mod one_model;
pub mod query;
pub mod usage;
pub mod worker;

/// What every subcommand returns; `main` prints the error as one line and exits 1.
pub type Res = Result<(), Box<dyn std::error::Error>>;

/// Parses a duration: a plain number is seconds (`30`, `2.5`); a unit may follow: `ms`, `s`,
/// `m` (`500ms`, `30s`, `2m`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("`{text}` is not a duration: write seconds (30, 2.5) or 500ms, 30s, 2m")
    })?;
    if value.is_nan() || value <= 0.0 {
        return Err(format!("`{text}`: the duration must be more than zero"));
    }
    std::time::Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("`{text}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations_are_seconds_unless_a_unit_says_otherwise() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "soon", "0", "-1", "1h", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
