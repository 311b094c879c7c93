//! Which address a request comes from: the TCP peer, or, when the peer is one of the
//! operator's trusted proxies (`NEUROPIA_TRUSTED_PROXIES`), the address those proxies
//! report in `X-Forwarded-For`. The header is read from the right (each proxy appends the
//! address it saw) and the first address that is not a trusted proxy is the client; an
//! untrusted peer's header is ignored, so a client cannot pick its own address.

use std::net::IpAddr;
use std::str::FromStr;

/// An address block: `10.0.0.0/8`, `::1/128`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let net = canonical(
            addr.parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an address or address block"))?,
        );
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { net, bits })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// A comma-separated list of addresses and blocks (empty: none).
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address: `peer`, or behind trusted proxies the rightmost address of
    /// `forwarded_for` (the `X-Forwarded-For` values, in order) that is not one of them.
    pub fn client<'a>(&self, peer: IpAddr, forwarded_for: impl Iterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                // A malformed entry: nothing to its left can be believed.
                break;
            };
            client = canonical(ip);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let c: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")), "mapped");
        let one: Cidr = "127.0.0.1".parse().expect("cidr");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains(ip("8.8.8.8")));
        let v6: Cidr = "fd00::/8".parse().expect("cidr");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let proxies = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").expect("list");
        let xff = |v: &'static [&'static str]| v.iter().copied();
        // An untrusted peer's header is ignored.
        assert_eq!(
            proxies.client(ip("203.0.113.9"), xff(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        // Through two trusted proxies; the spoofed entry on the left is not reached.
        assert_eq!(
            proxies.client(ip("127.0.0.1"), xff(&["6.6.6.6, 198.51.100.7", "10.0.0.2"])),
            ip("198.51.100.7")
        );
        // No header: the proxy itself.
        assert_eq!(proxies.client(ip("127.0.0.1"), xff(&[])), ip("127.0.0.1"));
        // A malformed entry stops the walk at the last good one.
        assert_eq!(
            proxies.client(ip("10.0.0.1"), xff(&["1.1.1.1, junk, 10.0.0.3"])),
            ip("10.0.0.3")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), xff(&["1.2.3.4"])),
            ip("127.0.0.1")
        );
    }
}
