//! What a key lets through before any rate is counted: its active flag, its expiry, the
//! caller's address against its allow-list, and the model against its allow-list.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::key::Denied;
use crate::clientip::Cidr;
use crate::db::keys::KeyRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub is_active: bool,
    pub expires_at: Option<DateTime<Utc>>,
    /// Address ranges the key may be used from; empty: anywhere.
    pub ranges: Vec<Cidr>,
    /// Models it may call; empty: every model.
    pub allowed_models: Vec<String>,
}

impl Gate {
    /// The record's gate (a range that no longer parses admits nobody rather than anybody).
    pub fn of(r: &KeyRecord) -> Self {
        let nowhere: Cidr = "255.255.255.255/32".parse().expect("a valid range");
        Self {
            is_active: r.is_active,
            expires_at: r.expires_at,
            ranges: r
                .allowed_ips
                .iter()
                .map(|ip| ip.parse().unwrap_or(nowhere))
                .collect(),
            allowed_models: r.allowed_models.clone(),
        }
    }

    /// Whether a call of `model` from `client` may go on (rate limits aside). A key with
    /// an address allow-list refuses a caller whose address is not known.
    pub fn permits(&self, model: &str, client: Option<IpAddr>) -> Result<(), Denied> {
        self.admits(client)?;
        if !self.allowed_models.is_empty() && !self.allowed_models.iter().any(|m| m == model) {
            return Err(Denied::ModelNotAllowed);
        }
        Ok(())
    }

    /// Whether the key may be used at all, from `client`: active, unexpired, an allowed
    /// address.
    pub fn admits(&self, client: Option<IpAddr>) -> Result<(), Denied> {
        if !self.is_active {
            return Err(Denied::Inactive);
        }
        if self.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(Denied::Expired);
        }
        if !self.ranges.is_empty()
            && !client.is_some_and(|ip| self.ranges.iter().any(|r| r.contains(ip)))
        {
            return Err(Denied::IpNotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(ranges: &[&str], expires_in: Option<i64>) -> Gate {
        Gate {
            is_active: true,
            expires_at: expires_in.map(|s| Utc::now() + chrono::Duration::seconds(s)),
            ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            allowed_models: vec![],
        }
    }

    #[test]
    fn expiry_and_addresses_are_checked() {
        let here: IpAddr = "10.1.2.3".parse().unwrap();
        let there: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(gate(&[], None).permits("m", None), Ok(()));
        assert_eq!(gate(&[], Some(60)).permits("m", None), Ok(()));
        assert_eq!(gate(&[], Some(-1)).permits("m", None), Err(Denied::Expired));
        let g = gate(&["10.0.0.0/8", "2001:db8::/32"], None);
        assert_eq!(g.permits("m", Some(here)), Ok(()));
        assert_eq!(g.permits("m", Some(there)), Err(Denied::IpNotAllowed));
        assert_eq!(g.permits("m", None), Err(Denied::IpNotAllowed));
        assert_eq!(g.permits("m", Some("2001:db8::1".parse().unwrap())), Ok(()));
    }
}
