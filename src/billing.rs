//! Money: exact decimal amounts, prices, charges and the account status machine.
//!
//! ```text
//! platform_cost = input_tokens * input_rate + output_tokens * output_rate
//! charge        = platform_cost * (1 + markup_percent / 100)
//! ```
//!
//! Everything is [`Decimal`]; nothing here ever touches a float except the JSON reader,
//! which turns a JSON number into its shortest decimal text first (so `0.1` is exactly
//! `0.1`). Clients that need more than 15 significant digits send strings.

use std::fmt;
use std::str::FromStr;

pub use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Tokens an answer used, as reported by the upstream or estimated by the gateway.
/// `input_tokens` counts every input token, cached reads and cache writes included;
/// `output_tokens` every output token, reasoning included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Of the input, tokens read from the provider's prompt cache.
    pub cached_input_tokens: u32,
    /// Of the input, tokens written to the provider's prompt cache.
    pub cache_write_tokens: u32,
    /// Of the output, reasoning tokens.
    pub reasoning_tokens: u32,
}

impl Usage {
    /// Plain input and output, nothing cached and no reasoning told apart.
    pub fn new(input_tokens: u32, output_tokens: u32) -> Self {
        Self {
            input_tokens,
            output_tokens,
            ..Self::default()
        }
    }

    pub fn total(&self) -> u64 {
        u64::from(self.input_tokens) + u64::from(self.output_tokens)
    }
}

/// The wholesale price of one (provider, model), per token. The optional rates apply to
/// cached input (reads), cache writes and reasoning output where a provider prices them
/// apart; unset, the plain input or output rate applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub input_rate: Decimal,
    pub output_rate: Decimal,
    pub currency: String,
    pub cached_input_rate: Option<Decimal>,
    pub cache_write_rate: Option<Decimal>,
    pub reasoning_output_rate: Option<Decimal>,
}

impl Rate {
    /// Plain input and output rates only.
    pub fn plain(input_rate: Decimal, output_rate: Decimal, currency: &str) -> Self {
        Self {
            input_rate,
            output_rate,
            currency: currency.to_owned(),
            cached_input_rate: None,
            cache_write_rate: None,
            reasoning_output_rate: None,
        }
    }
}

/// What one customer pays for one (provider, model): the rate plus the markup that applies
/// to the customer (the user's override, else the tenant's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input_rate: Decimal,
    pub output_rate: Decimal,
    pub markup_percent: Decimal,
    pub cached_input_rate: Option<Decimal>,
    pub cache_write_rate: Option<Decimal>,
    pub reasoning_output_rate: Option<Decimal>,
}

/// A computed charge: both the wholesale cost and what the customer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub platform_cost: Decimal,
    pub amount: Decimal,
}

impl Price {
    pub fn new(rate: &Rate, markup_percent: Decimal) -> Self {
        Self {
            input_rate: rate.input_rate,
            output_rate: rate.output_rate,
            markup_percent,
            cached_input_rate: rate.cached_input_rate,
            cache_write_rate: rate.cache_write_rate,
            reasoning_output_rate: rate.reasoning_output_rate,
        }
    }

    /// Nothing: for a charge whose rates are unknown.
    pub fn free() -> Self {
        Self {
            input_rate: Decimal::ZERO,
            output_rate: Decimal::ZERO,
            markup_percent: Decimal::ZERO,
            cached_input_rate: None,
            cache_write_rate: None,
            reasoning_output_rate: None,
        }
    }

    /// The exact charge for `usage`: plain input, cached input, cache writes, plain output
    /// and reasoning, each at its rate (a split the usage does not report, or a rate the
    /// provider does not set, falls back to the plain rate). Inputs are validated at the
    /// API (bounded scale and magnitude), so the products stay well inside `Decimal`'s 28
    /// digits.
    pub fn charge(&self, usage: Usage) -> Charge {
        let tokens = |n: u32| Decimal::from(n);
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
        let plain_input = usage.input_tokens - cached - written;
        let reasoning = usage.reasoning_tokens.min(usage.output_tokens);
        let plain_output = usage.output_tokens - reasoning;
        let platform_cost = tokens(plain_input) * self.input_rate
            + tokens(cached) * self.cached_input_rate.unwrap_or(self.input_rate)
            + tokens(written) * self.cache_write_rate.unwrap_or(self.input_rate)
            + tokens(plain_output) * self.output_rate
            + tokens(reasoning) * self.reasoning_output_rate.unwrap_or(self.output_rate);
        let amount = platform_cost * (Decimal::ONE + self.markup_percent / Decimal::ONE_HUNDRED);
        Charge {
            platform_cost,
            amount,
        }
    }
}

/// Account status of the brief:
/// `pending -(top-up)-> active -(balance <= 0)-> overdue -(top-up to >= threshold)-> active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    Pending,
    Active,
    Overdue,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Overdue => "overdue",
        }
    }

    /// The status after a credit (top-up) brought the balance to `balance`.
    /// An overdue account comes back only when the balance is positive and reaches the
    /// tenant's threshold.
    pub fn after_credit(self, balance: Decimal, threshold: Decimal) -> Self {
        match self {
            Self::Pending => Self::Active,
            Self::Overdue if balance > Decimal::ZERO && balance >= threshold => Self::Active,
            other => other,
        }
    }

    /// The status after a charge brought the balance to `balance`.
    pub fn after_charge(self, balance: Decimal) -> Self {
        match self {
            Self::Active if balance <= Decimal::ZERO => Self::Overdue,
            other => other,
        }
    }
}

impl FromStr for AccountStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "active" => Ok(Self::Active),
            "overdue" => Ok(Self::Overdue),
            other => Err(format!("unknown account status {other:?}")),
        }
    }
}

impl fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bounds for an amount read from a client.
#[derive(Debug, Clone, Copy)]
pub struct AmountRule {
    pub name: &'static str,
    pub allow_zero: bool,
    pub max: Decimal,
    pub max_scale: u32,
}

impl AmountRule {
    /// Top-ups and other money amounts: positive, at most 1e12, at most 8 decimals.
    pub const MONEY: Self = Self {
        name: "amount",
        allow_zero: false,
        max: Decimal::from_parts(0xD4A5_1000, 0xE8, 0, false, 0),
        max_scale: 8,
    };
    /// Spend budgets: like [`Self::MONEY`], zero allowed (a key that may spend nothing).
    pub const BUDGET: Self = Self {
        name: "budget",
        allow_zero: true,
        max: Self::MONEY.max,
        max_scale: 8,
    };
    /// Per-token rates: zero allowed, at most 1000 per token, at most 12 decimals.
    pub const RATE: Self = Self {
        name: "rate",
        allow_zero: true,
        max: Decimal::from_parts(1000, 0, 0, false, 0),
        max_scale: 12,
    };
    /// Markups and thresholds: zero allowed, at most 10000 (%), at most 4 decimals.
    pub const PERCENT: Self = Self {
        name: "markup_percent",
        allow_zero: true,
        max: Decimal::from_parts(10_000, 0, 0, false, 0),
        max_scale: 4,
    };

    pub fn named(self, name: &'static str) -> Self {
        Self { name, ..self }
    }

    pub fn check(&self, value: Decimal) -> Result<Decimal, String> {
        let name = self.name;
        if value.is_sign_negative() && !value.is_zero() {
            return Err(format!("{name} must not be negative"));
        }
        if value.is_zero() && !self.allow_zero {
            return Err(format!("{name} must be positive"));
        }
        if value > self.max {
            return Err(format!("{name} must be at most {}", self.max));
        }
        let value = value.normalize();
        if value.scale() > self.max_scale {
            return Err(format!(
                "{name} has more than {} decimal places",
                self.max_scale
            ));
        }
        Ok(value)
    }
}

/// Serialises money as a string without trailing zeros (`"12.5"`).
pub fn ser_money<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&value.normalize())
}

/// [`ser_money`] for an optional amount (`null` when absent).
pub fn ser_opt_money<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => ser_money(d, s),
        None => s.serialize_none(),
    }
}

/// Reads money from a JSON string (`"12.50"`) or number (`12.5`), exactly.
pub fn de_money<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(MoneyVisitor)
}

/// [`de_money`] for optional fields (`null` or absent is `None`).
pub fn de_opt_money<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<Decimal>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a decimal number, a decimal string or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            de_money(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

/// For PATCH fields: absent is `None`, `null` is `Some(None)`, a value `Some(Some(v))`.
pub fn de_patch_money<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Decimal>>, D::Error> {
    de_opt_money(d).map(Some)
}

struct MoneyVisitor;

impl Visitor<'_> for MoneyVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decimal number or a decimal string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        parse_decimal(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        if !v.is_finite() {
            return Err(E::custom("amount must be finite"));
        }
        // Rust prints the shortest text that reads back as the same f64: 0.1 -> "0.1".
        parse_decimal(&v.to_string()).map_err(E::custom)
    }
}

/// Parses a plain decimal (`-12.340`, `5`, `1e-3` is refused): no NaN, no infinity.
pub fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let t = s.trim();
    let ok = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
        && t.chars().any(|c| c.is_ascii_digit());
    if !ok {
        return Err(format!("{s:?} is not a decimal number"));
    }
    Decimal::from_str_exact(t).map_err(|_| format!("{s:?} is not a decimal number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("decimal")
    }

    #[test]
    fn charge_follows_the_formula_exactly() {
        let mut price = Price {
            input_rate: d("0.0000008"),
            output_rate: d("0.000002"),
            markup_percent: d("15"),
            ..Price::free()
        };
        let c = price.charge(Usage::new(1234, 567));
        // 1234 * 0.0000008 + 567 * 0.000002 = 0.0009872 + 0.001134 = 0.0021212
        assert_eq!(c.platform_cost, d("0.0021212"));
        // * 1.15 = 0.00243938
        assert_eq!(c.amount, d("0.00243938"));

        // A split without rates of its own costs what plain tokens cost.
        let split = Usage {
            cached_input_tokens: 1000,
            cache_write_tokens: 34,
            reasoning_tokens: 67,
            ..Usage::new(1234, 567)
        };
        assert_eq!(price.charge(split), c);
        // 200 plain * 0.0000008 + 1000 cached * 0.0000002 + 34 written * 0.000001
        // + 500 plain * 0.000002 + 67 reasoning * 0.000003
        // = 0.00016 + 0.0002 + 0.000034 + 0.001 + 0.000201 = 0.001595
        price.cached_input_rate = Some(d("0.0000002"));
        price.cache_write_rate = Some(d("0.000001"));
        price.reasoning_output_rate = Some(d("0.000003"));
        let c = price.charge(split);
        assert_eq!(c.platform_cost, d("0.001595"));
        assert_eq!(c.amount, d("0.00183425"));
        // A split larger than its total is bounded by it.
        let odd = Usage {
            cached_input_tokens: 5000,
            cache_write_tokens: 5000,
            reasoning_tokens: 5000,
            ..Usage::new(10, 10)
        };
        assert_eq!(
            price.charge(odd).platform_cost,
            d("10") * d("0.0000002") + d("10") * d("0.000003")
        );
    }

    #[test]
    fn status_machine_follows_the_brief() {
        use AccountStatus::*;
        assert_eq!(Pending.after_credit(d("5"), d("10")), Active);
        assert_eq!(Active.after_charge(d("0")), Overdue);
        assert_eq!(Active.after_charge(d("0.01")), Active);
        assert_eq!(Overdue.after_credit(d("9.99"), d("10")), Overdue);
        assert_eq!(Overdue.after_credit(d("10"), d("10")), Active);
        assert_eq!(Overdue.after_credit(d("0"), d("0")), Overdue);
        assert_eq!(Pending.after_charge(d("-1")), Pending);
    }

    #[derive(Deserialize)]
    struct M {
        #[serde(deserialize_with = "de_money")]
        v: Decimal,
    }

    #[test]
    fn money_reads_strings_and_numbers_exactly() {
        let parse = |j: &str| serde_json::from_str::<M>(j).map(|m| m.v);
        assert_eq!(parse(r#"{"v":"12.50"}"#).ok(), Some(d("12.50")));
        assert_eq!(parse(r#"{"v":0.1}"#).ok(), Some(d("0.1")));
        assert_eq!(parse(r#"{"v":7}"#).ok(), Some(d("7")));
        assert!(parse(r#"{"v":"NaN"}"#).is_err());
        assert!(parse(r#"{"v":"1e5"}"#).is_err());
        assert!(parse(r#"{"v":"abc"}"#).is_err());
        assert!(parse(r#"{"v":true}"#).is_err());
    }

    #[test]
    fn amount_rules_bound_sign_size_and_scale() {
        let m = AmountRule::MONEY;
        assert_eq!(m.check(d("10.50")), Ok(d("10.5")));
        assert!(m.check(d("0")).is_err());
        assert!(m.check(d("-1")).is_err());
        assert!(m.check(d("0.000000001")).is_err());
        assert!(m.check(d("1000000000001")).is_err());
        assert_eq!(m.check(d("1000000000000")), Ok(d("1000000000000")));
        assert_eq!(AmountRule::RATE.check(d("0")), Ok(d("0")));
    }

    #[test]
    fn money_is_written_as_a_string() {
        #[derive(Serialize)]
        struct O {
            #[serde(serialize_with = "ser_money")]
            v: Decimal,
        }
        let s = serde_json::to_string(&O { v: d("12.500") }).expect("json");
        assert_eq!(s, r#"{"v":"12.5"}"#);
    }
}
