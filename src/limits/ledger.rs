//! The cluster's ledger of one limit: every slice of the limit a worker leased in the last
//! window, as it is stored in one JetStream KV entry. Pure code; the NATS side is
//! [`crate::cluster::quota`].
//!
//! # The rule that makes a limit window-exact
//!
//! A limit of `L` units per window `W` (60 s) is shared by leasing *slices*. A slice is
//! `(leased_at, amount)`, stamped by the worker that leases it just before it writes the entry.
//! Two durations govern a slice:
//!
//! - it may be **spent** only during `[leased_at, leased_at + τ)` (τ, the spend period, is short:
//!   1 s by default);
//! - it stays **live** (counted) until `leased_at + H` with the horizon `H = W + τ + skew`.
//!
//! A worker may add a slice of `n` only through a compare-and-set on the entry's revision that
//! succeeds, and only if `(sum of live slices) + n ≤ L` at its own `now`.
//!
//! **Claim.** No interval of length `W` sees more than `L` units spent.
//!
//! **Proof.** Take a window `(t − W, t]`. A unit spent in it comes from a slice `s` with
//! `leased_at(s) ∈ (t − W − τ, t]`, because it was spent within τ of the lease. Let `s*` be the
//! last of these slices to be committed. The compare-and-set of `s*` succeeded against the
//! state left by every earlier commit, so every other slice of the set was in the entry it
//! checked, unless it had been pruned as not live — which cannot be, because its `leased_at`
//! is more than `t − W − τ ≥ leased_at(s*) − W − τ` and so it was live at `leased_at(s*)`
//! (and stamps are taken after the state was read, so no writer pruned with a later clock).
//! Hence the check of `s*` counted all of them, and their sum plus `s*` is at most `L`. A slice
//! only ever shrinks to what was really spent from it (unused units returned after its spend
//! period, or a call cancelled), so the units spent in the window are at most that sum. ∎
//!
//! The `skew` in the horizon absorbs the difference between the workers' clocks (they are
//! assumed NTP-synchronised, well within the margin). What the rule costs: a unit stays counted
//! `τ + skew` longer than it would in an ideal sliding window, so a saturated limit delivers
//! `W / H` of `L` per window — 97.5 % with the defaults (`τ` = 1 s, `skew` = 0.5 s).
//!
//! # The entry
//!
//! One JSON document per limit: `{"v":1,"o":{"<owner>":[[leased_at_ms, amount], …]}}`. Each
//! owner (one limiter instance on one worker) rewrites **its own list** from its local record
//! on every write and never touches another owner's slices except to prune the ones that are no
//! longer live. That makes the owner the only authority on what it spent: returns, cancels and
//! token overage are written as new amounts of its own slices, and an entry that was lost (a
//! NATS server restarted without its store) is rebuilt from the owners' local records on their
//! next write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of the entry's layout.
pub const LEDGER_VERSION: u32 = 1;

/// The slices of one limit, by owner: what the KV entry holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Layout version ([`LEDGER_VERSION`]).
    #[serde(rename = "v", default)]
    pub version: u32,
    /// Owner → its slices as `(leased_at_ms, amount)`, oldest first.
    #[serde(rename = "o", default)]
    pub owners: BTreeMap<String, Vec<(u64, u64)>>,
}

/// Why an entry could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the quota ledger entry is not valid JSON: {0}")]
pub struct LedgerDecodeError(#[from] serde_json::Error);

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self {
            version: LEDGER_VERSION,
            owners: BTreeMap::new(),
        }
    }

    /// Reads an entry's value; an empty value is an empty ledger.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerDecodeError> {
        if bytes.is_empty() {
            return Ok(Self::new());
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The entry's value.
    pub fn encode(&self) -> Vec<u8> {
        // A map of strings to integer pairs always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Units counted at `now_ms`: the sum of the slices still live (`leased_at + horizon > now`).
    pub fn live_sum(&self, now_ms: u64, horizon_ms: u64) -> u64 {
        self.live(now_ms, horizon_ms)
            .fold(0u64, |sum, (_, amount)| sum.saturating_add(amount))
    }

    /// Units counted at `now_ms` for one owner.
    pub fn owner_sum(&self, owner: &str, now_ms: u64, horizon_ms: u64) -> u64 {
        self.owners.get(owner).map_or(0, |slices| {
            slices
                .iter()
                .filter(|(at, _)| is_live(*at, now_ms, horizon_ms))
                .fold(0u64, |sum, (_, amount)| sum.saturating_add(*amount))
        })
    }

    /// Drops every slice that is no longer live and every owner left without one.
    pub fn prune(&mut self, now_ms: u64, horizon_ms: u64) {
        self.owners.retain(|_, slices| {
            slices.retain(|(at, amount)| *amount > 0 && is_live(*at, now_ms, horizon_ms));
            !slices.is_empty()
        });
    }

    /// Replaces `owner`'s slices with `slices` (its own record); no slices removes the owner.
    pub fn replace_own(&mut self, owner: &str, slices: Vec<(u64, u64)>) {
        let slices: Vec<(u64, u64)> = slices.into_iter().filter(|(_, n)| *n > 0).collect();
        if slices.is_empty() {
            self.owners.remove(owner);
        } else {
            self.owners.insert(owner.to_string(), slices);
        }
    }

    /// How much of a lease of `min..=max` units fits under `limit` at `now_ms`, or `None`.
    ///
    /// The grant is as much of `max` as there is room for, but at least `min`. A request larger
    /// than the whole limit (`min > limit`) fits only when nothing is counted: it is granted in
    /// full and the ledger stays over the limit until it ages out, so such requests still
    /// average out to the limit.
    pub fn grant(
        &self,
        min: u64,
        max: u64,
        limit: u64,
        now_ms: u64,
        horizon_ms: u64,
    ) -> Option<u64> {
        let min = min.max(1);
        let max = max.max(min);
        let used = self.live_sum(now_ms, horizon_ms);
        if limit == 0 {
            return None;
        }
        if min > limit {
            return (used == 0).then_some(min);
        }
        let room = limit.saturating_sub(used);
        (room >= min).then(|| max.min(room))
    }

    /// The earliest time (epoch ms, at least `now_ms`) at which a lease of `need` units could
    /// fit if nobody leased anything meanwhile; `None` when it never could (a zero limit).
    pub fn room_at(&self, need: u64, limit: u64, now_ms: u64, horizon_ms: u64) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        let need = need.max(1);
        // What may stay counted when the lease is checked.
        let allowed = limit.saturating_sub(need);
        let mut used = self.live_sum(now_ms, horizon_ms);
        if used <= allowed {
            return Some(now_ms);
        }
        let mut expiries: Vec<(u64, u64)> = self
            .live(now_ms, horizon_ms)
            .map(|(at, amount)| (at.saturating_add(horizon_ms), amount))
            .collect();
        expiries.sort_unstable();
        for (expires, amount) in expiries {
            used = used.saturating_sub(amount);
            if used <= allowed {
                return Some(expires.max(now_ms));
            }
        }
        Some(now_ms)
    }

    fn live(&self, now_ms: u64, horizon_ms: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.owners
            .values()
            .flatten()
            .filter(move |(at, _)| is_live(*at, now_ms, horizon_ms))
            .copied()
    }
}

/// Whether a slice leased at `at_ms` still counts at `now_ms`.
pub fn is_live(at_ms: u64, now_ms: u64, horizon_ms: u64) -> bool {
    at_ms.saturating_add(horizon_ms) > now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 61_500;

    fn ledger(slices: &[(&str, u64, u64)]) -> Ledger {
        let mut l = Ledger::new();
        for (owner, at, n) in slices {
            l.owners
                .entry(owner.to_string())
                .or_default()
                .push((*at, *n));
        }
        l
    }

    #[test]
    fn live_slices_count_until_the_horizon() {
        let l = ledger(&[("a", 1_000, 10), ("b", 2_000, 5)]);
        assert_eq!(l.live_sum(1_000, H), 15);
        assert_eq!(l.live_sum(1_000 + H - 1, H), 15);
        assert_eq!(l.live_sum(1_000 + H, H), 5);
        assert_eq!(l.live_sum(2_000 + H, H), 0);
        assert_eq!(l.owner_sum("a", 1_000, H), 10);
        assert_eq!(l.owner_sum("z", 1_000, H), 0);
    }

    #[test]
    fn a_slice_stamped_in_the_future_counts() {
        // Another worker's clock runs ahead: its slice counts, never the other way round.
        let l = ledger(&[("a", 10_000, 7)]);
        assert_eq!(l.live_sum(5_000, H), 7);
    }

    #[test]
    fn grant_takes_what_fits_but_at_least_min() {
        let l = ledger(&[("a", 0, 90)]);
        assert_eq!(l.grant(1, 20, 100, 0, H), Some(10));
        assert_eq!(l.grant(10, 20, 100, 0, H), Some(10));
        assert_eq!(l.grant(11, 20, 100, 0, H), None);
        // Once the slice ages out the whole limit is there again.
        assert_eq!(l.grant(1, 200, 100, H, H), Some(100));
        assert_eq!(l.grant(1, 1, 0, 0, H), None);
    }

    #[test]
    fn a_request_larger_than_the_limit_needs_an_empty_ledger() {
        let l = ledger(&[("a", 0, 1)]);
        assert_eq!(l.grant(500, 500, 100, 0, H), None);
        assert_eq!(l.grant(500, 500, 100, H, H), Some(500));
        assert_eq!(l.room_at(500, 100, 0, H), Some(H));
    }

    #[test]
    fn room_at_is_when_enough_slices_age_out() {
        let l = ledger(&[("a", 0, 40), ("b", 1_000, 40), ("a", 2_000, 20)]);
        assert_eq!(l.room_at(1, 100, 10, H), Some(H));
        assert_eq!(l.room_at(40, 100, 10, H), Some(H));
        assert_eq!(l.room_at(41, 100, 10, H), Some(H + 1_000));
        let l = ledger(&[("a", 0, 50)]);
        assert_eq!(l.room_at(50, 100, 10, H), Some(10));
        assert_eq!(l.room_at(1, 0, 10, H), None);
    }

    #[test]
    fn prune_and_replace_own() {
        let mut l = ledger(&[("a", 0, 5), ("a", 50_000, 5), ("b", 0, 3), ("c", 10, 0)]);
        l.prune(H, H);
        assert_eq!(l.owners.len(), 1);
        assert_eq!(l.owners["a"], vec![(50_000, 5)]);
        l.replace_own("b", vec![(60_000, 2), (61_000, 0)]);
        assert_eq!(l.owners["b"], vec![(60_000, 2)]);
        l.replace_own("a", vec![]);
        assert!(!l.owners.contains_key("a"));
    }

    #[test]
    fn encodes_compactly_and_decodes_back() {
        let l = ledger(&[("w1:0", 1_700_000_000_000, 12)]);
        let bytes = l.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"o":{"w1:0":[[1700000000000,12]]}}"#
        );
        assert_eq!(Ledger::decode(&bytes).unwrap(), l);
        assert_eq!(Ledger::decode(b"").unwrap(), Ledger::new());
        assert!(Ledger::decode(b"{not json").is_err());
    }
}
