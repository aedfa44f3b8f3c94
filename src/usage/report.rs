//! `llmbus spend`: spend and tokens by model group, deployment, key, user, team, tag and day,
//! read from the `LLM_SPEND` aggregates (never by rereading the stream), with how far the
//! aggregates lag behind `LLM_USAGE`.

use std::fmt::Write as _;

use async_nats::jetstream;
use serde::Serialize;

use super::{
    UsageError,
    spend::{self, Breakdown, Cursor, DayDoc, Tally},
};
use crate::wire::{
    Subjects,
    usage::{civil_from_days, day_of, days_from_civil, usd},
};

/// Where a report starts: a UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Unix milliseconds of that instant (for `usage tail --since`).
    pub ms: u64,
}

/// Parses `--since`: a date (`2025-01-31`), `today`, or a duration back from now (`90m`,
/// `24h`, `7d`, `2w`). Spend is kept per UTC day, so a duration starts at the day it reaches
/// back into.
pub fn parse_since(text: &str, now_ms: u64) -> Result<Since, UsageError> {
    let t = text.trim();
    let bad = || UsageError::Since {
        text: text.to_owned(),
    };
    if t == "today" {
        let ms = now_ms - now_ms % 86_400_000;
        return Ok(Since {
            day: day_of(ms),
            ms,
        });
    }
    if let [y, m, d] = t.split('-').collect::<Vec<_>>()[..]
        && y.len() == 4
        && let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<u32>(), d.parse::<u32>())
    {
        let days = days_from_civil(y, m, d).ok_or_else(bad)?;
        let ms = u64::try_from(days).map_err(|_| bad())? * 86_400_000;
        let (y, m, d) = civil_from_days(days);
        return Ok(Since {
            day: format!("{y:04}-{m:02}-{d:02}"),
            ms,
        });
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    let ms = now_ms.saturating_sub(n.saturating_mul(unit_ms));
    Ok(Since {
        day: day_of(ms),
        ms,
    })
}

/// What `llmbus spend` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpendReport {
    /// The first day counted (`None`: every day kept).
    pub since: Option<String>,
    /// Totals over the days, by dimension.
    #[serde(flatten)]
    pub spend: Breakdown,
    /// Each day's totals.
    pub by_day: Vec<DayTotal>,
    /// Events counted: every one up to this `LLM_USAGE` sequence.
    pub aggregated_through: u64,
    /// The last sequence of `LLM_USAGE` (`None` when the stream is not there).
    pub stream_last_sequence: Option<u64>,
}

/// One day's overall totals.
#[derive(Debug, Clone, Serialize)]
pub struct DayTotal {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Its totals.
    #[serde(flatten)]
    pub tally: Tally,
}

impl SpendReport {
    /// Events in the stream not yet in the aggregates.
    pub fn pending(&self) -> u64 {
        self.stream_last_sequence
            .map_or(0, |last| last.saturating_sub(self.aggregated_through))
    }

    /// The report from the day documents.
    pub fn from_days(
        since: Option<String>,
        days: &[DayDoc],
        cursor: u64,
        last: Option<u64>,
    ) -> Self {
        let mut spend = Breakdown::default();
        let mut by_day = Vec::with_capacity(days.len());
        for d in days {
            spend.merge(&d.spend);
            by_day.push(DayTotal {
                day: d.day.clone(),
                tally: d.spend.total.clone(),
            });
        }
        Self {
            since,
            spend,
            by_day,
            aggregated_through: cursor,
            stream_last_sequence: last,
        }
    }

    /// The report as text tables.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let from = self
            .since
            .as_deref()
            .map_or("over all days kept".to_string(), |d| format!("since {d}"));
        let t = &self.spend.total;
        let _ = writeln!(
            out,
            "Spend {from}: ${}, {} requests ({} failed), {} prompt + {} completion tokens",
            usd(t.cost_usd),
            t.requests,
            t.failures,
            t.prompt_tokens,
            t.completion_tokens
        );
        match self.stream_last_sequence {
            Some(_) if self.pending() > 0 => {
                let _ = writeln!(
                    out,
                    "({} newer usage events are not aggregated yet: is a worker running?)",
                    self.pending()
                );
            }
            Some(_) => {}
            None => {
                let _ = writeln!(out, "(the usage stream is not there: no new usage is kept)");
            }
        }
        let sections: [(&str, Vec<(&str, &Tally)>); 7] = [
            ("model group", named(&self.spend.by_model_group)),
            ("deployment", named(&self.spend.by_deployment)),
            ("key", named(&self.spend.by_key)),
            ("user", named(&self.spend.by_user)),
            ("team", named(&self.spend.by_team)),
            ("tag", named(&self.spend.by_tag)),
            (
                "day",
                self.by_day
                    .iter()
                    .map(|d| (d.day.as_str(), &d.tally))
                    .collect(),
            ),
        ];
        for (title, rows) in sections {
            if rows.is_empty() {
                continue;
            }
            table(&mut out, title, &rows);
        }
        out
    }
}

fn named(map: &std::collections::BTreeMap<String, Tally>) -> Vec<(&str, &Tally)> {
    map.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

fn table(out: &mut String, title: &str, rows: &[(&str, &Tally)]) {
    let width = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .chain([title.len()])
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "\n{title:<width$}  {:>9}  {:>7}  {:>12}  {:>12}  {:>14}",
        "requests", "failed", "prompt tok", "compl. tok", "cost USD"
    );
    for (name, t) in rows {
        let _ = writeln!(
            out,
            "{name:<width$}  {:>9}  {:>7}  {:>12}  {:>12}  {:>14}",
            t.requests,
            t.failures,
            t.prompt_tokens,
            t.completion_tokens,
            usd(t.cost_usd)
        );
    }
}

/// Reads the report from the `LLM_SPEND` aggregates (of the installation under `subjects`'
/// prefix) on `client`'s JetStream.
pub async fn spend(
    client: async_nats::Client,
    subjects: &Subjects,
    since: Option<Since>,
) -> Result<SpendReport, UsageError> {
    let js = jetstream::new(client);
    let bucket = subjects.spend_bucket();
    let Some(kv) = spend::open(&js, &bucket).await? else {
        return Err(UsageError::NoSpend { bucket });
    };
    let first = since.as_ref().map(|s| s.day.clone());
    let days = spend::days_since(&kv, first.as_deref()).await?;
    let (cursor, _) = spend::read::<Cursor>(&kv, spend::CURSOR_KEY).await?;
    let last = match js.get_stream(subjects.usage_stream()).await {
        Ok(mut s) => s.info().await.ok().map(|i| i.state.last_sequence),
        Err(_) => None,
    };
    Ok(SpendReport::from_days(
        first,
        &days,
        cursor.applied_through,
        last,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON_2025_03_10: u64 = 1_741_608_000_000;

    #[test]
    fn since_takes_dates_durations_and_today() {
        assert_eq!(day_of(NOON_2025_03_10), "2025-03-10");
        let s = |t| parse_since(t, NOON_2025_03_10);
        assert_eq!(s("2025-01-31").unwrap().day, "2025-01-31");
        assert_eq!(s("today").unwrap().day, "2025-03-10");
        assert_eq!(s("7d").unwrap().day, "2025-03-03");
        assert_eq!(s("13h").unwrap().day, "2025-03-09");
        assert_eq!(s("30m").unwrap().ms, NOON_2025_03_10 - 1_800_000);
        assert_eq!(s("2w").unwrap().day, "2025-02-24");
        for bad in [
            "",
            "7",
            "7y",
            "d",
            "2025-02-30",
            "2025-1",
            "yesterday",
            "-3d",
        ] {
            let e = s(bad).unwrap_err().to_string();
            assert!(e.contains("--since"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_report_sums_days_and_shows_the_lag() {
        let mut d1 = DayDoc {
            day: "2025-03-09".into(),
            ..Default::default()
        };
        let e = |g: &str, cost| super::super::UsageEvent {
            model_group: g.into(),
            status: 200,
            cost_usd: cost,
            prompt_tokens: 3,
            team: Some("ml".into()),
            ..Default::default()
        };
        d1.apply(&[(1, e("a", 1.5))], 1);
        let mut d2 = DayDoc {
            day: "2025-03-10".into(),
            ..Default::default()
        };
        d2.apply(&[(2, e("a", 0.5)), (3, e("b", 2.0))], 3);
        let r = SpendReport::from_days(Some("2025-03-09".into()), &[d1, d2], 3, Some(5));
        assert_eq!(r.spend.total.cost_usd, 4.0);
        assert_eq!(r.spend.by_model_group["a"].cost_usd, 2.0);
        assert_eq!(r.by_day.len(), 2);
        assert_eq!(r.pending(), 2);
        let text = r.text();
        assert!(
            text.starts_with("Spend since 2025-03-09: $4.00, 3 requests"),
            "{text}"
        );
        assert!(
            text.contains("2 newer usage events are not aggregated yet"),
            "{text}"
        );
        assert!(text.contains("\nteam "), "{text}");
        assert!(
            !text.contains("\nkey "),
            "no key section without keys: {text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["total"]["cost_usd"], 4.0);
        assert_eq!(json["by_day"][1]["day"], "2025-03-10");
        assert_eq!(json["by_day"][1]["requests"], 2);
    }
}
