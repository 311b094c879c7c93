//! `balance_update` notices: with several instances, each ledger commit tells the others
//! the users' new balances (written in the batch's transaction, see `ledger::prepare_batch`).

use uuid::Uuid;

use super::ledger::BalanceAfter;

/// Longest `balance_update` payload (PostgreSQL's limit is 8,000 bytes).
const NOTICE_BYTES: usize = 7_000;

/// `balance_update` payloads: `<instance>|<user>,<version>,<balance>,<status>;...`, split
/// to stay under PostgreSQL's payload limit.
pub fn payloads(instance: Uuid, balances: &[BalanceAfter]) -> Vec<String> {
    let head = format!("{instance}|");
    let mut out = Vec::new();
    let mut cur = head.clone();
    for b in balances {
        let item = format!(
            "{},{},{},{}",
            b.user_id,
            b.version,
            b.balance,
            b.status.as_str()
        );
        if cur.len() > head.len() && cur.len() + item.len() + 1 > NOTICE_BYTES {
            out.push(std::mem::replace(&mut cur, head.clone()));
        }
        if cur.len() > head.len() {
            cur.push(';');
        }
        cur.push_str(&item);
    }
    if cur.len() > head.len() {
        out.push(cur);
    }
    out
}

/// Reads a `balance_update` payload: the instance that wrote it and the balances.
pub fn parse(payload: &str) -> Result<(Uuid, Vec<BalanceAfter>), String> {
    let (instance, items) = payload.split_once('|').ok_or("no instance")?;
    let instance = Uuid::parse_str(instance).map_err(|e| e.to_string())?;
    let mut balances = Vec::new();
    for item in items.split(';').filter(|i| !i.is_empty()) {
        let mut f = item.split(',');
        let mut next = || f.next().ok_or_else(|| format!("short item {item:?}"));
        let user_id = Uuid::parse_str(next()?).map_err(|e| e.to_string())?;
        let version = next()?.parse().map_err(|e| format!("version: {e}"))?;
        let balance = next()?.parse().map_err(|e| format!("balance: {e}"))?;
        let status = next()?.parse()?;
        balances.push(BalanceAfter {
            user_id,
            balance,
            status,
            version,
            up_to_seq: 0,
        });
    }
    Ok((instance, balances))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{AccountStatus, Decimal};

    #[test]
    fn balance_notices_split_under_the_payload_limit_and_read_back() {
        let instance = Uuid::new_v4();
        let balances: Vec<BalanceAfter> = (0..300)
            .map(|i| BalanceAfter {
                user_id: Uuid::new_v4(),
                balance: Decimal::new(-12_345_678_901 + i, 8),
                status: if i % 2 == 0 {
                    AccountStatus::Active
                } else {
                    AccountStatus::Overdue
                },
                version: i,
                up_to_seq: 7,
            })
            .collect();
        let notices = payloads(instance, &balances);
        assert!(notices.len() > 1, "300 users need several notices");
        let mut read = Vec::new();
        for p in &notices {
            assert!(p.len() <= NOTICE_BYTES);
            let (from, items) = parse(p).expect("readable");
            assert_eq!(from, instance);
            read.extend(items);
        }
        assert_eq!(read.len(), balances.len());
        for (a, b) in read.iter().zip(&balances) {
            assert_eq!(
                (a.user_id, a.balance, a.status, a.version),
                (b.user_id, b.balance, b.status, b.version)
            );
        }
        assert!(payloads(instance, &[]).is_empty());
        assert!(parse("nonsense").is_err());
        assert!(parse(&format!("{instance}|{},1,x,active", Uuid::nil())).is_err());
    }
}
