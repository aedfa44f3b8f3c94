//! One sliding 60-second window: a per-minute allowance that holds in *every* 60 s window, not
//! only on average.
//!
//! A token bucket refilling at `limit / 60` per second lets a full bucket and a minute of refill
//! pass within one minute: up to twice the limit in some 60 s window. This window instead counts
//! the units taken in the trailing 60 s and admits `n` more only when they fit under the limit.
//! Units are kept in one-second slots, so memory is bounded (at most 62 slots), and a slot counts
//! until 60 s after its *end*: the count at any instant covers every unit taken in the 60 s
//! before it, so no 60 s window ever holds more than the limit at admission (later settlements
//! of a call that used more than it reserved can still add to it).
//!
//! A request larger than the whole limit is admitted when the window is empty (else it would
//! wait forever); it then fills that window alone. Time is an argument everywhere.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The window's length.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The granularity of the count: one second (slot numbers are whole seconds).
const SLOT: Duration = Duration::from_secs(1);

/// Units taken in the trailing 60 s, in one-second slots.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    limit: u64,
    /// Slot numbers count seconds from here.
    origin: Instant,
    /// (slot number, units), oldest first; only slots that still count.
    slots: VecDeque<(u64, u64)>,
}

impl SlidingWindow {
    /// An empty window allowing `limit` units per 60 s. A limit of 0 never grants anything:
    /// [`SlidingWindow::check`] then answers `Err(Duration::MAX)`.
    pub fn new(limit: u64, now: Instant) -> Self {
        Self {
            limit,
            origin: now,
            slots: VecDeque::new(),
        }
    }

    /// Units allowed per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether `n` units could be taken at `now`, without taking them: `Err` is the wait.
    pub fn check(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.expire(now);
        if self.limit == 0 {
            return if n == 0 { Ok(()) } else { Err(Duration::MAX) };
        }
        let used = self.sum();
        // A request larger than the limit needs an empty window, not `n` units.
        let needed = n.min(self.limit);
        if used + needed <= self.limit || n == 0 {
            return Ok(());
        }
        // Wait until enough slots have left the window.
        let mut left = used;
        for &(slot, units) in &self.slots {
            left -= units;
            if left + needed <= self.limit {
                return Err(self.expiry(slot).saturating_duration_since(now));
            }
        }
        Err(WINDOW + SLOT)
    }

    /// Takes `n` units at `now`, or tells how long until they fit.
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.check(n, now)?;
        self.add(n, now);
        Ok(())
    }

    /// Gives back `n` units taken at `taken_at` (a reservation not used). Nothing happens when
    /// they have left the window already.
    pub fn refund(&mut self, n: u64, taken_at: Instant, now: Instant) {
        self.expire(now);
        let slot = self.slot_of(taken_at);
        if let Some(entry) = self.slots.iter_mut().rev().find(|(s, _)| *s == slot) {
            entry.1 = entry.1.saturating_sub(n);
        }
    }

    /// Corrects a reservation of `reserved` units taken at `taken_at` once the real count
    /// `actual` is known. Less: the difference goes back (while it still counts). More: the
    /// difference is counted where the reservation was, or now when that slot has left.
    pub fn settle(&mut self, reserved: u64, actual: u64, taken_at: Instant, now: Instant) {
        if actual <= reserved {
            return self.refund(reserved - actual, taken_at, now);
        }
        self.expire(now);
        let extra = actual - reserved;
        let slot = self.slot_of(taken_at);
        match self.slots.iter_mut().rev().find(|(s, _)| *s == slot) {
            Some(entry) => entry.1 += extra,
            None => self.add(extra, now),
        }
    }

    /// Units counted in the trailing window at `now`.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.sum()
    }

    fn sum(&self) -> u64 {
        self.slots.iter().map(|(_, u)| u).sum()
    }

    fn add(&mut self, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        let slot = self.slot_of(now);
        match self.slots.back_mut() {
            Some(last) if last.0 == slot => last.1 += n,
            // A `now` older than the newest slot (clocks read out of order): count it there.
            Some(last) if last.0 > slot => last.1 += n,
            _ => self.slots.push_back((slot, n)),
        }
    }

    fn slot_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_secs()
    }

    /// When the units of `slot` stop counting: 60 s after the slot's end.
    fn expiry(&self, slot: u64) -> Instant {
        self.origin + Duration::from_secs(slot.saturating_add(1)) + WINDOW
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(slot, _)) = self.slots.front() {
            if self.expiry(slot) > now {
                break;
            }
            self.slots.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn takes_up_to_the_limit_then_waits_for_the_oldest_units_to_leave() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(60, t0);
        w.try_take(40, t0).unwrap();
        w.try_take(20, t0 + secs(10)).unwrap();
        assert_eq!(w.used(t0 + secs(10)), 60);
        // Nothing comes back before 60 s after the first slot's end.
        assert_eq!(w.try_take(1, t0 + secs(30)), Err(secs(31)));
        assert!(w.try_take(40, t0 + secs(61)).is_ok());
        // The 20 taken at 10 s still count until 71 s.
        assert_eq!(w.try_take(1, t0 + secs(61)), Err(secs(10)));
        assert_eq!(w.used(t0 + secs(71)), 40);
    }

    #[test]
    fn no_sixty_second_window_holds_more_than_the_limit() {
        // Greedy takers every 100 ms for five minutes: any 60 s window sums to at most the limit
        // (a token bucket would let 2x pass in the first minute).
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(1000, t0);
        let mut taken = Vec::new();
        for i in 0..3000u64 {
            let now = t0 + Duration::from_millis(100 * i);
            if w.try_take(37, now).is_ok() {
                taken.push((now, 37u64));
            }
        }
        for (start, _) in &taken {
            let in_window: u64 = taken
                .iter()
                .filter(|(t, _)| *t >= *start && *t < *start + WINDOW)
                .map(|(_, n)| n)
                .sum();
            assert!(
                in_window <= 1000,
                "{in_window} in the window from {start:?}"
            );
        }
        assert!(taken.len() > 100, "it keeps serving: {}", taken.len());
    }

    #[test]
    fn settle_corrects_the_reservation_both_ways() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(1000, t0);
        w.try_take(800, t0).unwrap();
        w.settle(800, 50, t0, t0 + secs(5));
        assert_eq!(w.used(t0 + secs(5)), 50);
        w.try_take(100, t0 + secs(5)).unwrap();
        w.settle(100, 900, t0 + secs(5), t0 + secs(6));
        assert_eq!(w.used(t0 + secs(6)), 950);
        // Settled after its slot left: the extra counts from now.
        w.try_take(10, t0 + secs(6)).unwrap();
        w.settle(10, 30, t0 + secs(6), t0 + secs(100));
        assert_eq!(w.used(t0 + secs(100)), 20);
        // A refund after the slot left changes nothing.
        w.refund(500, t0, t0 + secs(100));
        assert_eq!(w.used(t0 + secs(100)), 20);
    }

    #[test]
    fn a_request_larger_than_the_limit_needs_an_empty_window() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(600, t0);
        w.try_take(100, t0).unwrap();
        assert_eq!(w.try_take(5000, t0), Err(secs(61)));
        assert!(w.try_take(5000, t0 + secs(61)).is_ok());
        assert_eq!(w.used(t0 + secs(61)), 5000);
    }

    #[test]
    fn a_zero_limit_never_grants_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(0, t0);
        assert_eq!(w.try_take(1, t0 + secs(600)), Err(Duration::MAX));
        assert!(w.try_take(0, t0).is_ok());
        let mut w = SlidingWindow::new(u64::MAX, t0);
        for i in 0..10_000 {
            w.try_take(1, t0 + Duration::from_millis(250 * i)).unwrap();
        }
        assert!(w.slots.len() <= 62, "{}", w.slots.len());
    }
}
