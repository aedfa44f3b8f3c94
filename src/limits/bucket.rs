//! One token bucket: a per-minute allowance that refills continuously.
//!
//! A bucket holds at most `capacity` tokens and gains `capacity / 60` tokens every second. Taking
//! tokens lowers the level; a job that used more tokens than it reserved lowers it further, even
//! below zero, and the debt is paid back from future refill. Time is an argument everywhere, so
//! tests drive the clock by hand.

use std::time::{Duration, Instant};

/// Slack for floating-point rounding when comparing levels: far below one token.
const EPSILON: f64 = 1e-6;

/// A token bucket of `capacity` per minute with continuous refill.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: u64,
    /// Tokens available now; negative when the bucket is in debt.
    level: f64,
    /// When `level` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens per minute.
    ///
    /// A capacity of 0 is a bucket that never grants anything: [`TokenBucket::try_take`] then
    /// answers `Err(Duration::MAX)`.
    pub fn new(capacity: u64, now: Instant) -> Self {
        Self {
            capacity,
            level: capacity as f64,
            updated: now,
        }
    }

    /// Tokens per minute.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Takes `n` tokens, or tells how long to wait until they are there.
    ///
    /// The rule for a request larger than the whole bucket (`n > capacity`): it is granted when
    /// the bucket is full, and the bucket goes into debt by the difference. Without that rule it
    /// would wait forever; with it, such requests still average out to the limit over time.
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.check(n, now)?;
        self.level -= n as f64;
        Ok(())
    }

    /// Whether `n` tokens could be taken at `now`, without taking them: `Err` is the wait.
    pub fn check(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.capacity == 0 {
            return if n == 0 { Ok(()) } else { Err(Duration::MAX) };
        }
        // A request larger than the bucket needs a full bucket, not `n` tokens.
        let needed = (n as f64).min(self.capacity as f64);
        if self.level + EPSILON >= needed {
            Ok(())
        } else {
            Err(self.time_to_reach(needed))
        }
    }

    /// Gives `n` tokens back (a reservation that was not used); never above capacity.
    pub fn refund(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.level = (self.level + n as f64).min(self.capacity as f64);
    }

    /// Corrects a reservation of `reserved` tokens once the real count `actual` is known: takes
    /// the difference when `actual` is larger (possibly into debt), gives it back when smaller.
    pub fn settle(&mut self, reserved: u64, actual: u64, now: Instant) {
        if actual >= reserved {
            self.refill(now);
            self.level -= (actual - reserved) as f64;
        } else {
            self.refund(reserved - actual, now);
        }
    }

    /// Whole tokens available at `now` (0 while in debt).
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.level.max(0.0).floor() as u64
    }

    /// Tokens used in the trailing minute, as the bucket sees it: capacity minus level, so it
    /// can exceed the capacity while the bucket is in debt.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.refill(now);
        (self.capacity as f64 - self.level).max(0.0).ceil() as u64
    }

    /// Brings the level up to `now`. A `now` earlier than the last update changes nothing.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        if elapsed.is_zero() {
            return;
        }
        let gained = elapsed.as_secs_f64() * self.per_second();
        self.level = (self.level + gained).min(self.capacity as f64);
        self.updated = now;
    }

    fn per_second(&self) -> f64 {
        self.capacity as f64 / 60.0
    }

    /// How long until the level reaches `target` (which is at most the capacity).
    fn time_to_reach(&self, target: f64) -> Duration {
        let missing = (target - self.level).max(0.0);
        let nanos = (missing / self.per_second() * 1e9).ceil();
        // Bounded by the largest debt a u64 of tokens can make; saturate instead of panicking.
        if nanos >= u64::MAX as f64 {
            Duration::MAX
        } else {
            Duration::from_nanos(nanos as u64)
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
    fn starts_full_and_takes_down_to_zero() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, t0);
        assert_eq!(b.available(t0), 60);
        assert_eq!(b.used(t0), 0);
        assert!(b.try_take(60, t0).is_ok());
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.used(t0), 60);
    }

    #[test]
    fn refills_continuously_at_capacity_per_minute() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, t0); // one token per second
        b.try_take(60, t0).unwrap();
        assert_eq!(b.available(t0 + secs(10)), 10);
        assert_eq!(b.available(t0 + Duration::from_millis(30_500)), 30);
        // Never above capacity, however long it waits.
        assert_eq!(b.available(t0 + secs(3600)), 60);
    }

    #[test]
    fn the_wait_is_exactly_long_enough() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(120, t0); // two tokens per second
        b.try_take(100, t0).unwrap(); // 20 left
        let wait = b.try_take(50, t0).unwrap_err();
        // 30 tokens missing at 2 per second.
        assert_eq!(wait, secs(15));
        // A failed take takes nothing.
        assert_eq!(b.available(t0), 20);
        assert!(
            b.try_take(50, t0 + wait - Duration::from_millis(10))
                .is_err()
        );
        assert!(b.try_take(50, t0 + wait).is_ok());
    }

    #[test]
    fn a_request_larger_than_the_bucket_is_granted_when_full_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(600, t0); // ten per second
        assert!(b.try_take(900, t0).is_ok());
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.used(t0), 900);
        // The debt of 300 plus a full bucket: 900 tokens at ten per second = 90 s.
        let wait = b.try_take(900, t0).unwrap_err();
        assert_eq!(wait, secs(90));
        assert!(b.try_take(900, t0 + secs(90)).is_ok());
    }

    #[test]
    fn a_request_larger_than_the_bucket_waits_until_full() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(600, t0); // ten per second
        b.try_take(300, t0).unwrap();
        assert_eq!(b.try_take(5000, t0).unwrap_err(), secs(30));
    }

    #[test]
    fn settle_takes_more_when_the_call_used_more() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(600, t0); // ten per second
        b.try_take(100, t0).unwrap();
        b.settle(100, 900, t0);
        assert_eq!(b.used(t0), 900);
        assert_eq!(b.available(t0), 0);
        // 300 of debt: back to zero after 30 s, to 100 after 40 s.
        assert_eq!(b.available(t0 + secs(30)), 0);
        assert_eq!(b.available(t0 + secs(40)), 100);
    }

    #[test]
    fn settle_gives_back_when_the_call_used_less() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        b.try_take(800, t0).unwrap();
        b.settle(800, 50, t0);
        assert_eq!(b.available(t0), 950);
        // Giving back never overfills.
        b.refund(10_000, t0);
        assert_eq!(b.available(t0), 1000);
    }

    #[test]
    fn a_clock_that_goes_back_changes_nothing() {
        let t0 = Instant::now();
        let later = t0 + secs(5);
        let mut b = TokenBucket::new(60, later);
        b.try_take(60, later).unwrap();
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(later + secs(1)), 1);
    }

    #[test]
    fn a_zero_capacity_never_grants() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, t0);
        assert_eq!(b.try_take(1, t0 + secs(600)), Err(Duration::MAX));
        assert!(b.try_take(0, t0).is_ok());
        assert_eq!(b.available(t0), 0);
    }
}
