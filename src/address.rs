//! Where upstream calls may go. A `custom_host` on loopback, a link-local or a private
//! network (or a name that resolves only there) would let whoever edits a routing plan
//! reach the gateway's own network, so such hosts are refused unless the operator allows
//! them (`NEUROPIA_ALLOW_PRIVATE_UPSTREAMS=1`, which the tests and the demo set).
//!
//! Checked three times: when a plan is saved (literal addresses and `localhost`), before
//! each call (the same, for plans stored by other means), and when a name is resolved
//! ([`PublicOnly`], which drops private addresses from every answer).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// True for addresses no public upstream has: loopback, private, link-local, unique-local,
/// carrier-grade NAT, unspecified, multicast and broadcast (IPv4-mapped IPv6 included).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => private_v4(v4),
            None => private_v6(v6),
        },
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        // 100.64.0.0/10, shared address space (carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// Why `base_url` may not be called, or `None` when it may: an address or a `localhost`
/// name on a private network.
pub fn refusal(base_url: &str) -> Option<String> {
    let Ok(url) = reqwest::Url::parse(base_url) else {
        return Some("custom_host must be an http(s) URL".into());
    };
    let host = url.host_str().unwrap_or("");
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let private = match literal.parse::<IpAddr>() {
        Ok(ip) => is_private(ip),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name.is_empty() || name == "localhost" || name.ends_with(".localhost")
        }
    };
    private.then(|| {
        "custom_host is on a loopback, link-local or private network; an operator allows \
         that with NEUROPIA_ALLOW_PRIVATE_UPSTREAMS=1"
            .to_owned()
    })
}

/// A resolver that answers only public addresses: a name that resolves to private ones
/// alone is not called.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found.filter(|a| !is_private(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves only to private addresses").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_networks_are_told_apart() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            let ip: IpAddr = private.parse().expect("address");
            assert!(is_private(ip), "{private}");
        }
        for public in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111"] {
            let ip: IpAddr = public.parse().expect("address");
            assert!(!is_private(ip), "{public}");
        }
    }

    #[tokio::test]
    async fn names_resolving_only_to_private_addresses_are_not_called() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = reqwest::dns::Name::from_str("localhost").expect("name");
        assert!(PublicOnly.resolve(name).await.is_err());
    }

    #[test]
    fn hosts_are_refused_by_address_or_localhost_name() {
        for refused in [
            "http://127.0.0.1:9001/v1",
            "http://[::1]/v1",
            "http://localhost:8080/v1",
            "https://api.localhost/v1",
            "http://169.254.169.254/latest",
            "http://10.0.0.5/v1",
            "not a url",
        ] {
            assert!(refusal(refused).is_some(), "{refused}");
        }
        for allowed in [
            "https://api.openai.com/v1",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "http://8.8.8.8/v1",
        ] {
            assert!(refusal(allowed).is_none(), "{allowed}");
        }
    }
}
