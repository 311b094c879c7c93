//! Tokens per minute over a sliding 60-second window of one-second buckets.
//!
//! Admission adds the request's *estimate* at once, so a burst cannot overshoot the limit
//! while its answers are still on the way; [`TokenWindow::correct`] later replaces the
//! estimate with the tokens actually used.

use std::time::{Duration, Instant};

const BUCKETS: usize = 60;

#[derive(Debug, Clone)]
pub struct TokenWindow {
    limit: u64,
    origin: Instant,
    /// (second since origin, tokens) per slot; a slot is stale once its second is 60 old.
    slots: [(u64, i64); BUCKETS],
}

impl TokenWindow {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            origin: Instant::now(),
            slots: [(0, 0); BUCKETS],
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Changes the limit, keeping what the window has counted.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn live(&self, now_s: u64) -> impl Iterator<Item = &(u64, i64)> {
        self.slots
            .iter()
            .filter(move |(s, _)| *s + (BUCKETS as u64) > now_s)
    }

    /// Tokens counted in the last 60 seconds.
    pub fn used(&self, now: Instant) -> u64 {
        let sum: i64 = self.live(self.second(now)).map(|(_, t)| *t).sum();
        u64::try_from(sum).unwrap_or(0)
    }

    fn add(&mut self, now: Instant, tokens: i64) {
        let s = self.second(now);
        let slot = &mut self.slots[(s % BUCKETS as u64) as usize];
        if slot.0 != s {
            *slot = (s, 0);
        }
        slot.1 += tokens;
    }

    /// Whether `tokens` fit now; otherwise how long until they would. A request larger
    /// than the whole limit can never fit: `Err(None)`.
    pub fn check(&self, now: Instant, tokens: u64) -> Result<(), Option<Duration>> {
        if tokens > self.limit {
            return Err(None);
        }
        let used = self.used(now);
        if used + tokens <= self.limit {
            return Ok(());
        }
        // Oldest seconds expire first: find when enough has expired.
        let now_s = self.second(now);
        let mut live: Vec<(u64, i64)> = self.live(now_s).copied().collect();
        live.sort_unstable_by_key(|(s, _)| *s);
        let mut remaining = used;
        for (s, t) in live {
            remaining = remaining.saturating_sub(u64::try_from(t).unwrap_or(0));
            if remaining + tokens <= self.limit {
                let expires_at = self.origin + Duration::from_secs(s + BUCKETS as u64);
                return Err(Some(expires_at.saturating_duration_since(now)));
            }
        }
        Err(Some(Duration::from_secs(BUCKETS as u64)))
    }

    /// Counts `tokens` now (after a successful [`TokenWindow::check`]).
    pub fn take(&mut self, now: Instant, tokens: u64) {
        self.add(now, i64::try_from(tokens).unwrap_or(i64::MAX));
    }

    /// [`TokenWindow::check`] then [`TokenWindow::take`].
    pub fn try_take(&mut self, now: Instant, tokens: u64) -> Result<(), Option<Duration>> {
        self.check(now, tokens)?;
        self.take(now, tokens);
        Ok(())
    }

    /// Replaces an admitted estimate with the actual count.
    pub fn correct(&mut self, now: Instant, estimated: u64, actual: u64) {
        let diff = i128::from(actual) - i128::from(estimated);
        self.add(now, i64::try_from(diff).unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_waits_for_the_oldest_second() {
        let mut w = TokenWindow::new(100);
        let t0 = w.origin;
        assert!(w.try_take(t0, 60).is_ok());
        assert!(w.try_take(t0 + Duration::from_secs(10), 40).is_ok());
        let wait = w
            .try_take(t0 + Duration::from_secs(20), 30)
            .expect_err("full")
            .expect("fits later");
        // The 60 tokens of second 0 expire at second 60: 40 s after second 20.
        assert_eq!(wait, Duration::from_secs(40));
        assert!(w.try_take(t0 + Duration::from_secs(60), 30).is_ok());
        assert_eq!(w.used(t0 + Duration::from_secs(60)), 70);
    }

    #[test]
    fn corrections_replace_estimates() {
        let mut w = TokenWindow::new(100);
        let t0 = w.origin;
        assert!(w.try_take(t0, 90).is_ok());
        w.correct(t0, 90, 20);
        assert_eq!(w.used(t0), 20);
        assert!(w.try_take(t0, 80).is_ok());
        assert!(w.try_take(t0, 1).is_err());
    }

    #[test]
    fn a_request_larger_than_the_limit_never_fits() {
        let mut w = TokenWindow::new(10);
        assert_eq!(w.try_take(Instant::now(), 11), Err(None));
    }
}
