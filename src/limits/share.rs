//! One limiter's local share of a cluster-wide limit: the slices it leased from the
//! [`Ledger`](super::Ledger), the balance the hot path spends, and the decisions of the
//! background task that leases and returns slices. Pure code: time is an argument, and the
//! NATS round trips live in [`crate::cluster::quota`].
//!
//! The hot path ([`LocalShare::try_take`], [`LocalShare::settle`]) touches only this struct:
//! it spends the open slices, oldest first, and flags when the background task should lease
//! the next slice — before the balance runs dry, so a job far from the limit never waits on a
//! round trip.
//!
//! The background task asks [`LocalShare::plan`] what to write (this owner's slices and,
//! maybe, a lease of `min..=max` units), performs the compare-and-set, and reports back with
//! [`LocalShare::committed`], [`LocalShare::refused`] or [`LocalShare::failed`].
//!
//! - **Slice size** follows the local rate: about `rate × τ × 1.25`, at least the request that
//!   waits, at most `limit / 10` (1 for limits under 10). A share that runs dry sizes its next
//!   slice from how fast the last one went (and at least doubles it), so a burst reaches its
//!   rate within a round trip or two.
//! - **Spend period**: a slice is spent only within τ of its lease; what is left then is
//!   returned (the ledger entry shrinks) so other workers can lease it.
//! - **Settle**: a call that used fewer units than it reserved gives them back to its slice
//!   (spendable again while the slice is open, returned to the ledger afterwards); a call that
//!   used more takes the difference from the slice's balance and, past it, raises the slice's
//!   amount in the ledger — overage is recorded even when it exceeds the limit.
//! - **Outage**: while NATS does not answer, no new slice is leased; the open slices stay
//!   spendable until their spend period ends (at most τ), then the share grants nothing. The
//!   local record of the slices survives and is written back when NATS is reachable again.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::capacity::Wait;

/// Most slices kept in one owner's record before the two oldest are merged (into the later
/// timestamp, which only counts them longer: conservative).
const MAX_OWN_SLICES: usize = 256;

/// Most open slices kept (spent ones are kept for refunds during their spend period).
const MAX_OPEN: usize = 8;

/// Least time between two writes that only return units (leases are never held back): a
/// stream of settlements makes one write per quarter second, not one per call.
const RETURN_GAP: Duration = Duration::from_millis(250);

/// How often a refused share looks at the ledger again at most (units returned by other
/// workers free room before the slices age out).
const REFUSED_POLL: Duration = Duration::from_millis(250);

/// The parameters of one limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareParams {
    /// Units allowed per window, cluster-wide.
    pub limit: u64,
    /// The sliding window (60 s for `rpm` and `tpm`).
    pub window: Duration,
    /// τ: how long a slice may be spent after its lease.
    pub spend: Duration,
    /// Allowance for clock differences between workers.
    pub skew: Duration,
    /// Largest slice leased for ordinary demand.
    pub max_slice: u64,
    /// How long before the balance would run dry the next slice is requested.
    pub lead: Duration,
    /// How long unused units may wait locally before they are returned, when the ledger was
    /// less than half full at the last look (returns are written at once otherwise). 0 by
    /// default: a worker killed later then strands no more than its open slices.
    pub return_delay: Duration,
}

impl ShareParams {
    /// The defaults for a limit of `limit` units per `window`: τ = 1 s, skew 0.5 s, slices of
    /// at most a tenth of the limit.
    pub fn new(limit: u64, window: Duration) -> Self {
        Self {
            limit,
            window,
            spend: Duration::from_secs(1),
            skew: Duration::from_millis(500),
            max_slice: (limit / 10).max(1),
            lead: Duration::from_millis(250),
            return_delay: Duration::ZERO,
        }
    }

    /// `H = window + τ + skew`: how long a slice stays counted in the ledger.
    pub fn horizon_ms(&self) -> u64 {
        (self.window + self.spend + self.skew).as_millis() as u64
    }
}

/// Units taken by [`LocalShare::try_take`]: which slices they came from, so a settlement goes
/// back to the right slice. At most two slices are open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "settle or cancel what was taken"]
pub struct Taken {
    /// `(slice leased_at_ms, units)`; an unused part has 0 units.
    parts: [(u64, u64); 2],
}

impl Taken {
    /// Nothing taken (a limit that does not apply).
    pub const NONE: Taken = Taken {
        parts: [(0, 0), (0, 0)],
    };

    /// The units taken.
    pub fn amount(&self) -> u64 {
        self.parts[0].1 + self.parts[1].1
    }
}

/// A slice leased and still spendable.
#[derive(Debug, Clone)]
struct Open {
    at_ms: u64,
    remaining: u64,
    spend_until: Instant,
}

/// What the background task should write now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// This owner's live slices `(leased_at_ms, amount)`, to replace its list in the ledger.
    pub own: Vec<(u64, u64)>,
    /// A new lease to add if it fits: at least `min`, at most `max` units.
    pub lease: Option<(u64, u64)>,
    /// The record version this plan writes.
    pub version: u64,
}

/// One limiter's local share. See the module docs.
#[derive(Debug)]
pub struct LocalShare {
    p: ShareParams,
    horizon_ms: u64,
    open: VecDeque<Open>,
    /// This owner's slices in the ledger horizon, `(leased_at_ms, counted)`, oldest first.
    own: VecDeque<(u64, u64)>,
    version: u64,
    written: u64,
    /// Since when `own` has changes that are not written.
    dirty_since: Option<Instant>,
    /// When the last write was made.
    last_write: Option<Instant>,
    last_at_ms: u64,
    // Demand.
    granted_total: u64,
    rate_mark: Option<(Instant, u64)>,
    /// Units per second, smoothed.
    rate: f64,
    /// Units per second at which the last slice ran dry (sizes the next lease while short).
    burst: f64,
    /// Request size, smoothed.
    typical: f64,
    /// The largest refused request since the last lease.
    unmet: u64,
    /// Overage not attributable to a recorded slice, written as a new slice next time.
    debt: u64,
    last_demand: Option<Instant>,
    last_size: u64,
    /// When the last slice arrived (cleared when the balance runs dry after it).
    last_lease_at: Option<Instant>,
    /// The hot path asked for the background task and it has not looked yet.
    wake: bool,
    // What the background task learnt.
    /// The ledger had no room for the last lease before this time.
    full_until: Option<Instant>,
    /// After a refusal, the next lease attempt waits until this time.
    retry_at: Option<Instant>,
    /// The ledger's fill at the last look, 0..=1.
    fill: f64,
    /// NATS failed: no attempt before this time.
    offline_until: Option<Instant>,
    backoff: Duration,
    rtt: Duration,
    closed: bool,
}

impl LocalShare {
    /// An empty share: nothing leased yet.
    pub fn new(p: ShareParams) -> Self {
        Self {
            horizon_ms: p.horizon_ms(),
            p,
            open: VecDeque::with_capacity(2),
            own: VecDeque::new(),
            version: 0,
            written: 0,
            dirty_since: None,
            last_write: None,
            last_at_ms: 0,
            granted_total: 0,
            rate_mark: None,
            rate: 0.0,
            burst: 0.0,
            typical: 0.0,
            unmet: 0,
            debt: 0,
            last_demand: None,
            last_size: 0,
            last_lease_at: None,
            wake: false,
            full_until: None,
            retry_at: None,
            fill: 0.0,
            offline_until: None,
            backoff: Duration::ZERO,
            rtt: Duration::from_millis(1),
            closed: false,
        }
    }

    /// The parameters.
    pub fn params(&self) -> &ShareParams {
        &self.p
    }

    /// Takes `n` units from the open slices, or says how long to wait.
    ///
    /// A refusal records the demand, so the background task leases a slice large enough;
    /// [`LocalShare::take_wake`] tells whether that task must be woken.
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<Taken, Wait> {
        if n == 0 {
            return Ok(Taken::NONE);
        }
        if self.p.limit == 0 || self.closed {
            return Err(Wait::Never);
        }
        self.expire(now);
        self.last_demand = Some(now);
        self.typical = if self.typical == 0.0 {
            n as f64
        } else {
            0.8 * self.typical + 0.2 * n as f64
        };
        let avail = self.available_now();
        if avail >= n {
            let mut left = n;
            let mut parts = [(0, 0); 2];
            let mut i = 0;
            // At most two slices hold units (see `holding`), so two parts are enough.
            for slice in self.open.iter_mut().filter(|o| o.remaining > 0) {
                let take = left.min(slice.remaining);
                slice.remaining -= take;
                left -= take;
                parts[i] = (slice.at_ms, take);
                i += 1;
                if left == 0 || i == parts.len() {
                    break;
                }
            }
            debug_assert_eq!(left, 0);
            // Spent slices stay open for refunds during their spend period; keep a few.
            while self.open.len() > MAX_OPEN && self.open.front().is_some_and(|o| o.remaining == 0)
            {
                self.open.pop_front();
            }
            self.granted_total += n;
            if avail - n < self.watermark() && self.holding() < 2 {
                self.wake = true;
            }
            return Ok(Taken { parts });
        }
        if self.unmet == 0
            && let Some(at) = self.last_lease_at.take()
        {
            // Ran dry: the last slice lasted this long. Demand is at least its size over
            // that time — a rate the next lease can follow at once instead of doubling its way
            // up one round trip at a time.
            let lasted = now
                .saturating_duration_since(at)
                .max(Duration::from_millis(1));
            self.burst = self.last_size as f64 / lasted.as_secs_f64();
        }
        if n > self.unmet {
            self.unmet = n;
            self.wake = true;
        }
        if self.holding() < 2 && self.offline_until.is_none() && self.full_until.is_none() {
            self.wake = true;
        }
        Err(Wait::For(self.wait_hint(now)))
    }

    /// Settles units taken by [`LocalShare::try_take`] with what was really used: fewer go back
    /// to their slice, more are taken from the balance and, past it, recorded as overage.
    pub fn settle(&mut self, taken: Taken, actual: u64, now: Instant) {
        self.expire(now);
        let reserved = taken.amount();
        if actual < reserved {
            let mut refund = reserved - actual;
            for &(at_ms, units) in taken.parts.iter().rev() {
                let give = refund.min(units);
                if give == 0 {
                    continue;
                }
                refund -= give;
                // Back into its slice while that is open (and holding it keeps at most two
                // slices holding units), else back to the ledger.
                let holding = self.holding();
                match self.open.iter_mut().find(|o| o.at_ms == at_ms) {
                    Some(open) if open.remaining > 0 || holding < 2 => open.remaining += give,
                    _ => {
                        self.change_own(at_ms, |n| n.saturating_sub(give), now);
                    }
                }
            }
            self.granted_total = self.granted_total.saturating_sub(reserved - actual);
        } else if actual > reserved {
            let mut over = actual - reserved;
            // The balance pays first: the counted amounts stay as they are.
            for open in self.open.iter_mut() {
                let pay = over.min(open.remaining);
                open.remaining -= pay;
                over -= pay;
            }
            self.granted_total += actual - reserved;
            if over > 0 {
                let at_ms = match taken.parts {
                    [(at, n), _] if n > 0 && taken.parts[1].1 == 0 => at,
                    [_, (at, _)] => at,
                };
                if !self.change_own(at_ms, |n| n.saturating_add(over), now) {
                    // The slice has aged out of the record (or there was none): the next
                    // write adds a slice stamped then that carries the debt.
                    self.debt = self.debt.saturating_add(over);
                    self.touch(now);
                }
            }
        }
    }

    /// Units spendable now without a round trip.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.available_now()
    }

    /// True once after the hot path asked for the background task.
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// This owner's units counted in the ledger at `now_ms` (as last recorded locally).
    pub fn counted(&self, now_ms: u64) -> u64 {
        self.own
            .iter()
            .filter(|(at, _)| super::ledger::is_live(*at, now_ms, self.horizon_ms))
            .map(|(_, n)| n)
            .sum()
    }

    /// What the background task should write at `now` (`now_ms` on the wall clock), if
    /// anything.
    pub fn plan(&mut self, now: Instant, now_ms: u64) -> Option<SyncPlan> {
        self.expire(now);
        self.prune(now_ms);
        self.update_rate(now);
        if self.debt > 0 {
            let at = self.stamp(now_ms);
            self.last_at_ms = at;
            let debt = std::mem::take(&mut self.debt);
            self.push_own(at, debt, now);
        }
        if self.offline_until.is_some_and(|t| now < t) {
            return None;
        }
        let lease = self.lease_wanted(now);
        let dirty = self.version != self.written;
        let gap_passed = self
            .last_write
            .is_none_or(|t| now.saturating_duration_since(t) >= RETURN_GAP);
        let return_due = dirty
            && (self.closed
                || (gap_passed
                    && (self.fill >= 0.5
                        || self.dirty_since.is_some_and(|t| {
                            now.saturating_duration_since(t) >= self.p.return_delay
                        }))));
        if lease.is_none() && !return_due {
            return None;
        }
        Some(SyncPlan {
            own: self.own.iter().copied().filter(|(_, n)| *n > 0).collect(),
            lease,
            version: self.version,
        })
    }

    /// The stamp a lease written at `now_ms` carries: unique and increasing for this owner.
    pub fn stamp(&self, now_ms: u64) -> u64 {
        now_ms.max(self.last_at_ms + 1)
    }

    /// The write of `plan` succeeded. `lease` is the slice added, `(leased_at_ms, amount)`;
    /// `started` is when the write was sent (the spend period runs from then); `fill` is the
    /// ledger's use after the write, 0..=1.
    pub fn committed(
        &mut self,
        plan: &SyncPlan,
        lease: Option<(u64, u64)>,
        started: Instant,
        fill: f64,
        now: Instant,
    ) {
        self.written = self.written.max(plan.version);
        self.last_write = Some(started);
        if self.written == self.version {
            self.dirty_since = None;
        }
        self.offline_until = None;
        self.backoff = Duration::ZERO;
        self.fill = fill;
        self.rtt = (self.rtt * 3 + now.saturating_duration_since(started)) / 4;
        if let Some((at_ms, amount)) = lease {
            self.full_until = None;
            self.retry_at = None;
            self.last_at_ms = self.last_at_ms.max(at_ms);
            self.last_size = amount;
            self.last_lease_at = Some(now);
            // The record already holds it in the ledger: written, not dirty.
            self.own.push_back((at_ms, amount));
            self.compact_own();
            let spend_until = started + self.p.spend;
            if spend_until > now && !self.closed {
                self.open.push_back(Open {
                    at_ms,
                    remaining: amount,
                    spend_until,
                });
            } else {
                // It arrived too late to be spent: give it all back.
                self.change_own(at_ms, |_| 0, now);
            }
            let avail = self.available_now();
            if self.unmet <= avail {
                self.unmet = 0;
            }
        }
    }

    /// The ledger had no room for the lease at `now`; `room_at` is when it will have (if
    /// nobody leases meanwhile), `fill` its use. The next attempt waits until then, or a
    /// quarter second at most: other workers may return units early.
    pub fn refused(&mut self, now: Instant, room_at: Instant, fill: f64) {
        self.full_until = Some(room_at);
        self.retry_at = Some(
            room_at
                .min(now + REFUSED_POLL)
                .max(now + Duration::from_millis(5)),
        );
        self.fill = fill;
        self.offline_until = None;
        self.backoff = Duration::ZERO;
    }

    /// NATS did not answer: back off (250 ms, doubling to 2 s) before the next attempt.
    pub fn failed(&mut self, now: Instant) {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(250), Duration::from_secs(2));
        self.offline_until = Some(now + self.backoff);
    }

    /// When the background task should look again if nothing wakes it.
    pub fn next_check(&self, now: Instant) -> Instant {
        let mut next = now + Duration::from_secs(1);
        if let Some(t) = self.offline_until {
            next = next.min(t);
        }
        if let Some(t) = self.retry_at {
            next = next.min(t);
        }
        for o in &self.open {
            // At the end of each spend period (to return the rest), and `lead` before the
            // newest one ends (to lease the next one in time).
            next = next.min(o.spend_until);
        }
        if let Some(o) = self.open.back() {
            next = next.min(o.spend_until.checked_sub(self.p.lead).unwrap_or(now));
        }
        if let Some(t) = self.dirty_since {
            let mut due = t + self.p.return_delay;
            if let Some(w) = self.last_write {
                due = due.max(w + RETURN_GAP);
            }
            next = next.min(due);
        }
        next.max(now)
    }

    /// Stops granting: every open slice ends now and its rest is returned on the next write.
    pub fn close(&mut self, now: Instant) {
        self.closed = true;
        for o in std::mem::take(&mut self.open) {
            if o.remaining > 0 {
                self.change_own(o.at_ms, |n| n.saturating_sub(o.remaining), now);
            }
        }
    }

    /// Whether everything this owner knows is written.
    pub fn is_synced(&self) -> bool {
        self.version == self.written
    }

    /// The typical lease round trip.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Open slices that still hold units. At most two: a lease is only asked for when fewer
    /// do, which bounds what a crash can strand.
    fn holding(&self) -> usize {
        self.open.iter().filter(|o| o.remaining > 0).count()
    }

    fn available_now(&self) -> u64 {
        self.open.iter().map(|o| o.remaining).sum()
    }

    /// The balance under which the next slice is requested.
    fn watermark(&self) -> u64 {
        let lead = self.rate * self.p.lead.as_secs_f64();
        lead.max(self.typical).ceil() as u64
    }

    fn wait_hint(&self, now: Instant) -> Duration {
        if let Some(t) = self.offline_until {
            return t
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
        }
        if let Some(t) = self.full_until
            && t > now
        {
            return t - now;
        }
        (self.rtt * 2).clamp(Duration::from_millis(1), Duration::from_millis(100))
    }

    fn lease_wanted(&self, now: Instant) -> Option<(u64, u64)> {
        if self.closed || self.holding() >= 2 || self.p.limit == 0 {
            return None;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let avail = self.available_now();
        let wanted = if self.unmet > 0 {
            true
        } else {
            let recent = self
                .last_demand
                .is_some_and(|t| now.saturating_duration_since(t) < self.p.spend);
            let low = avail < self.watermark().max(1);
            let ending = self
                .open
                .back()
                .is_none_or(|o| o.spend_until <= now + self.p.lead);
            recent && (low || (ending && self.rate * self.p.spend.as_secs_f64() >= 1.0))
        };
        if !wanted {
            return None;
        }
        let base = (self.rate * self.p.spend.as_secs_f64() * 1.25).ceil() as u64;
        let mut size = base.max(self.typical.ceil() as u64).max(1);
        if self.unmet > 0 {
            let burst = (self.burst * self.p.lead.as_secs_f64()).ceil() as u64;
            size = size
                .max(self.last_size.saturating_mul(2))
                .max(burst)
                .max(self.unmet);
        }
        let cap = self.p.max_slice.max(self.unmet);
        size = size.min(cap);
        if self.unmet <= self.p.limit {
            size = size.min(self.p.limit);
        }
        let min = self.unmet.saturating_sub(avail).max(1).min(size);
        Some((min, size))
    }

    fn update_rate(&mut self, now: Instant) {
        match self.rate_mark {
            None => self.rate_mark = Some((now, self.granted_total)),
            Some((t, granted)) => {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                if dt >= 0.1 {
                    let inst = self.granted_total.saturating_sub(granted) as f64 / dt;
                    let alpha = (dt / 2.0).min(1.0);
                    self.rate = (1.0 - alpha) * self.rate + alpha * inst;
                    self.rate_mark = Some((now, self.granted_total));
                }
            }
        }
    }

    /// Ends the slices whose spend period is over and returns their rest.
    fn expire(&mut self, now: Instant) {
        while let Some(o) = self.open.front() {
            if o.spend_until > now {
                break;
            }
            let o = self.open.pop_front().expect("front exists");
            if o.remaining > 0 {
                self.change_own(o.at_ms, |n| n.saturating_sub(o.remaining), now);
            }
            self.wake = true;
        }
    }

    /// Forgets slices that no longer count (pruning alone needs no write: the ledger's sum
    /// is the same).
    fn prune(&mut self, now_ms: u64) {
        let h = self.horizon_ms;
        let open = &self.open;
        self.own.retain(|(at, _)| {
            super::ledger::is_live(*at, now_ms, h) || open.iter().any(|o| o.at_ms == *at)
        });
    }

    /// Changes the counted amount of this owner's slice `at_ms`; false when it is not recorded.
    fn change_own(&mut self, at_ms: u64, f: impl FnOnce(u64) -> u64, now: Instant) -> bool {
        let Some(slot) = self.own.iter_mut().find(|(at, _)| *at == at_ms) else {
            return false;
        };
        let new = f(slot.1);
        if new != slot.1 {
            slot.1 = new;
            self.touch(now);
        }
        true
    }

    fn push_own(&mut self, at_ms: u64, amount: u64, now: Instant) {
        self.own.push_back((at_ms, amount));
        self.compact_own();
        self.touch(now);
    }

    fn touch(&mut self, now: Instant) {
        self.version += 1;
        self.dirty_since.get_or_insert(now);
        self.wake = true;
    }

    fn compact_own(&mut self) {
        while self.own.len() > MAX_OWN_SLICES {
            let (_, first) = self.own.pop_front().expect("len > 0");
            if let Some(next) = self.own.front_mut() {
                next.1 += first;
            }
        }
    }
}

#[cfg(test)]
mod tests;
