//! Throttles for the unauthenticated endpoints that cost a password hash.
//!
//! Sign-ins are counted **before** the password is checked, per (email, client address)
//! and per client address (an IPv6 client counts by its /64), over a fixed window: past either limit the attempt is refused
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

/// Entries a counter holds before it drops the expired ones (at most once a second).
const PRUNE_ABOVE: usize = 100_000;

/// Attempts per key over a fixed window.
struct Counter<K: Eq + Hash> {
    map: DashMap<K, Window>,
    max: u32,
    window: Duration,
    /// When expired entries were last dropped.
    pruned: std::sync::Mutex<Instant>,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    fn new(max: u32, window: Duration) -> Self {
        Self {
            map: DashMap::new(),
            max,
            window,
            pruned: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Drops expired windows once the map is large, at most once a second (a scan of the
    /// whole map must not come with every attempt).
    fn prune(&self, now: Instant) {
        if self.map.len() <= PRUNE_ABOVE {
            return;
        }
        if let Ok(mut last) = self.pruned.try_lock()
            && now.duration_since(*last) >= Duration::from_secs(1)
        {
            *last = now;
            self.map.retain(|_, w| w.started + self.window > now);
        }
    }

    /// Counts one attempt for `k`, or says how long until one may be made.
    fn take(&self, k: K, now: Instant) -> Result<(), Duration> {
        self.prune(now);
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
        let addr = bucket(addr);
        // The address first: a refused address leaves no (email, address) entry behind,
        // so one address holds at most its limit of entries however many emails it tries.
        self.addrs.take(addr, now)?;
        let pair = (email.to_owned(), addr);
        if let Err(wait) = self.pairs.take(pair.clone(), now) {
            self.addrs.give_back(&addr);
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
        self.0.take(bucket(addr), Instant::now())
    }
}

/// The address a client is counted under: an IPv4 address, or an IPv6 address's /64 (the
/// block one subscriber gets, so changing the last 64 bits does not buy more attempts).
fn bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
        v4 => v4,
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
    fn an_address_spraying_many_emails_is_refused_and_leaves_nothing_behind() {
        let t = LoginThrottle::new(100, 5, Duration::from_secs(60));
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        for i in 0..5 {
            drop(t.begin(&format!("u{i}@x.io"), ip).expect("under the limit"));
        }
        for i in 0..1000 {
            assert!(t.begin(&format!("spray{i}@x.io"), ip).is_err());
        }
        assert_eq!(t.pairs.map.len(), 5, "refused attempts hold no memory");
        assert!(t.begin("new@x.io", IpAddr::V4(Ipv4Addr::LOCALHOST)).is_ok());
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let t = RegisterThrottle::new(2, Duration::from_secs(60));
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(t.begin(a).is_ok() && t.begin(b).is_ok());
        assert!(t.begin(a).is_err(), "same /64");
        assert!(t.begin(other).is_ok());
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
