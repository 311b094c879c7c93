//! Login throttling: failed logins are counted per email and per client address over a
//! fixed window; past the limit, logins from that email or address are refused (429 with
//! `Retry-After`) until the window ends. A success clears the email's count.
//!
//! In memory, per instance, bounded: expired windows are dropped as new failures arrive.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

struct Counter<K: Eq + Hash> {
    map: DashMap<K, Window>,
    max: u32,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    fn blocked(&self, k: &K, now: Instant, window: Duration) -> Option<Duration> {
        let w = *self.map.get(k)?;
        let ends = w.started + window;
        (w.failures >= self.max && ends > now).then(|| ends - now)
    }

    fn fail(&self, k: K, now: Instant, window: Duration) {
        if self.map.len() > 100_000 {
            self.map.retain(|_, w| w.started + window > now);
        }
        let mut w = self.map.entry(k).or_insert(Window {
            started: now,
            failures: 0,
        });
        if w.started + window <= now {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }
}

pub struct LoginThrottle {
    emails: Counter<String>,
    addrs: Counter<IpAddr>,
    window: Duration,
}

impl LoginThrottle {
    pub fn new(max_per_email: u32, max_per_addr: u32, window: Duration) -> Self {
        Self {
            emails: Counter {
                map: DashMap::new(),
                max: max_per_email,
            },
            addrs: Counter {
                map: DashMap::new(),
                max: max_per_addr,
            },
            window,
        }
    }

    /// `Err(retry_after)` when this email or address has failed too often lately.
    pub fn check(&self, email: &str, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let email = email.to_lowercase();
        let a = self.emails.blocked(&email, now, self.window);
        let b = self.addrs.blocked(&addr, now, self.window);
        match a.into_iter().chain(b).max() {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    pub fn failed(&self, email: &str, addr: IpAddr) {
        let now = Instant::now();
        self.emails.fail(email.to_lowercase(), now, self.window);
        self.addrs.fail(addr, now, self.window);
    }

    pub fn succeeded(&self, email: &str) {
        self.emails.map.remove(&email.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn blocks_an_email_after_its_failures_and_clears_on_success() {
        let t = LoginThrottle::new(3, 100, Duration::from_secs(60));
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..3 {
            assert!(t.check("A@x.io", ip).is_ok());
            t.failed("a@X.io", ip);
        }
        let wait = t.check("a@x.io", ip).expect_err("blocked");
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        assert!(t.check("b@x.io", ip).is_ok(), "other emails still try");
        t.succeeded("a@x.io");
        assert!(t.check("a@x.io", ip).is_ok());
    }

    #[test]
    fn blocks_an_address_spraying_many_emails() {
        let t = LoginThrottle::new(100, 5, Duration::from_secs(60));
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        for i in 0..5 {
            t.failed(&format!("u{i}@x.io"), ip);
        }
        assert!(t.check("new@x.io", ip).is_err());
        assert!(t.check("new@x.io", IpAddr::V4(Ipv4Addr::LOCALHOST)).is_ok());
    }
}
