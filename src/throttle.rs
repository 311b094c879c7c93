//! Throttles for the unauthenticated endpoints that cost a password hash.
//!
//! Sign-ins are counted **before** the password is checked, per (email, client address)
//! and per client address, over a fixed window: past either limit the attempt is refused
//! (429 with `Retry-After`) without being evaluated, so a burst of concurrent guesses gets
//! exactly as many evaluations as the limit. A success clears its (email, address) count
//! and gives its attempt back to the address. An email is never locked as a whole: wrong
//! passwords from one address do not keep the owner out from another.
//!
//! Registrations are counted per client address the same way.
//!
//! Emails are counted in their normalised form ([`crate::auth::normalise_email`]), the one
//! logins are looked up by. Client addresses come from [`crate::clientip`] (behind trusted
//! proxies, the address they report). In memory, per instance, bounded: expired windows are
//! dropped as new attempts arrive.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    attempts: u32,
}

/// Attempts per key over a fixed window.
struct Counter<K: Eq + Hash> {
    map: DashMap<K, Window>,
    max: u32,
    window: Duration,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    fn new(max: u32, window: Duration) -> Self {
        Self {
            map: DashMap::new(),
            max,
            window,
        }
    }

    /// Counts one attempt for `k`, or says how long until one may be made.
    fn take(&self, k: K, now: Instant) -> Result<(), Duration> {
        if self.map.len() > 100_000 {
            self.map.retain(|_, w| w.started + self.window > now);
        }
        let mut w = self.map.entry(k).or_insert(Window {
            started: now,
            attempts: 0,
        });
        if w.started + self.window <= now {
            *w = Window {
                started: now,
                attempts: 0,
            };
        }
        if w.attempts >= self.max {
            return Err(w.started + self.window - now);
        }
        w.attempts += 1;
        Ok(())
    }

    /// Gives back one attempt counted for `k`.
    fn give_back(&self, k: &K) {
        if let Some(mut w) = self.map.get_mut(k) {
            w.attempts = w.attempts.saturating_sub(1);
        }
    }

    fn clear(&self, k: &K) {
        self.map.remove(k);
    }
}

/// Sign-in attempts.
pub struct LoginThrottle {
    pairs: Counter<(String, IpAddr)>,
    addrs: Counter<IpAddr>,
}

/// A sign-in being evaluated: counted as a failure unless [`Attempt::succeeded`].
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    email: String,
    addr: IpAddr,
}

impl Attempt<'_> {
    /// The password was right: the (email, address) count starts over and the address
    /// gets its attempt back.
    pub fn succeeded(self) {
        self.throttle.pairs.clear(&(self.email.clone(), self.addr));
        self.throttle.addrs.give_back(&self.addr);
    }

    /// The password could not be checked (the server was busy): the attempt is given back.
    pub fn not_evaluated(self) {
        self.throttle
            .pairs
            .give_back(&(self.email.clone(), self.addr));
        self.throttle.addrs.give_back(&self.addr);
    }
}

impl LoginThrottle {
    pub fn new(max_per_email: u32, max_per_addr: u32, window: Duration) -> Self {
        Self {
            pairs: Counter::new(max_per_email, window),
            addrs: Counter::new(max_per_addr, window),
        }
    }

    /// Counts a sign-in of `email` (normalised) from `addr` before it is evaluated, or
    /// `Err(retry_after)` when this email from this address, or this address, has had
    /// too many lately.
    pub fn begin(&self, email: &str, addr: IpAddr) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let pair = (email.to_owned(), addr);
        self.pairs.take(pair.clone(), now)?;
        if let Err(wait) = self.addrs.take(addr, now) {
            self.pairs.give_back(&pair);
            return Err(wait);
        }
        Ok(Attempt {
            throttle: self,
            email: pair.0,
            addr,
        })
    }
}

/// Registrations per client address.
pub struct RegisterThrottle(Counter<IpAddr>);

impl RegisterThrottle {
    pub fn new(max_per_addr: u32, window: Duration) -> Self {
        Self(Counter::new(max_per_addr, window))
    }

    /// Counts a registration from `addr`, or `Err(retry_after)`.
    pub fn begin(&self, addr: IpAddr) -> Result<(), Duration> {
        self.0.take(addr, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn attempts_are_counted_before_evaluation_per_email_and_address() {
        let t = LoginThrottle::new(3, 100, Duration::from_secs(60));
        let here = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let there = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        // Three attempts in flight at once, the fourth refused before any has failed.
        let held: Vec<_> = (0..3).map(|_| t.begin("a@x.io", here)).collect();
        assert!(held.iter().all(Result::is_ok));
        let wait = t.begin("a@x.io", here).err().expect("refused");
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        drop(held);
        assert!(t.begin("a@x.io", here).is_err(), "failures stay counted");
        // The owner, elsewhere, is not locked out; other emails from here still try.
        let mine = t.begin("a@x.io", there).expect("another address");
        mine.succeeded();
        assert!(t.begin("b@x.io", here).is_ok());
    }

    #[test]
    fn a_success_starts_the_pair_over() {
        let t = LoginThrottle::new(2, 100, Duration::from_secs(60));
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        drop(t.begin("a@x.io", ip));
        t.begin("a@x.io", ip).expect("second").succeeded();
        assert!(t.begin("a@x.io", ip).is_ok());
        assert!(t.begin("a@x.io", ip).is_ok());
        assert!(t.begin("a@x.io", ip).is_err());
    }

    #[test]
    fn an_address_spraying_many_emails_is_refused() {
        let t = LoginThrottle::new(100, 5, Duration::from_secs(60));
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        for i in 0..5 {
            drop(t.begin(&format!("u{i}@x.io"), ip).expect("under the limit"));
        }
        assert!(t.begin("new@x.io", ip).is_err());
        // Refused by the address: the pair's attempt was given back.
        assert_eq!(
            t.pairs
                .map
                .get(&("new@x.io".to_owned(), ip))
                .map(|w| w.attempts),
            Some(0)
        );
        assert!(t.begin("new@x.io", IpAddr::V4(Ipv4Addr::LOCALHOST)).is_ok());
    }

    #[test]
    fn registrations_per_address() {
        let t = RegisterThrottle::new(2, Duration::from_secs(60));
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(t.begin(ip).is_ok() && t.begin(ip).is_ok());
        assert!(t.begin(ip).is_err());
        assert!(t.begin(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))).is_ok());
    }
}
