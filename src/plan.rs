//! Routing plans in Portkey's config format.
//!
//! ```json
//! { "strategy": { "mode": "fallback" },
//!   "targets": [ { "provider": "dashscope", "override_params": { "model": "qwen-turbo" },
//!                  "custom_host": "http://127.0.0.1:9001/compatible-mode/v1" } ] }
//! ```
//!
//! A plan is parsed and checked once (when it is stored or loaded), never per request.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Single,
    Fallback,
    Loadbalance,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Strategy {
    #[serde(default)]
    pub mode: Mode,
}

/// One upstream a plan may call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub provider: String,
    /// Platform key for this target; the provider's environment key is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secret")]
    pub api_key: Option<Secret>,
    /// Base URL up to and including the version segment (`http://host/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_host: Option<String>,
    /// Parameters merged over the client's request (`model` picks the upstream model).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub override_params: Map<String, Value>,
    /// Relative weight for `loadbalance`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: f64,
    /// Per-target timeout in milliseconds (overrides the plan's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<u64>,
    /// Per-target retries (overrides the plan's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Send the provider's platform key (from the environment) to this target's
    /// `custom_host`. Without it a platform key goes only to the provider's own base URL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_platform_key: bool,
}

/// Portkey's retry setting: retry an attempt that failed with one of `on_status_codes`
/// (or could not reach the upstream) up to `attempts` more times, with exponential
/// backoff and jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub attempts: u32,
    #[serde(default = "default_retry_codes")]
    pub on_status_codes: Vec<u16>,
}

fn default_retry_codes() -> Vec<u16> {
    vec![429, 500, 502, 503, 504]
}

fn one() -> f64 {
    1.0
}

fn is_one(w: &f64) -> bool {
    (*w - 1.0).abs() < f64::EPSILON
}

mod opt_secret {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::secret::Secret;

    pub fn serialize<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secret) => s.serialize_str(secret.expose()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Secret::new))
    }
}

/// A Portkey-format routing plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default)]
    pub strategy: Strategy,
    pub targets: Vec<Target>,
    /// Retries for every target without its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Timeout in milliseconds for every target without its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// Providers the direct router knows how to call without a `custom_host`.
pub const KNOWN_PROVIDERS: &[&str] = &["mock", "openai", "dashscope", "anthropic"];

impl Plan {
    /// The one-target plan for `model` on `provider`.
    pub fn single(provider: &str, model: &str) -> Self {
        let mut override_params = Map::new();
        override_params.insert("model".into(), Value::String(model.into()));
        Self {
            strategy: Strategy { mode: Mode::Single },
            targets: vec![Target {
                provider: provider.into(),
                api_key: None,
                custom_host: None,
                override_params,
                weight: 1.0,
                request_timeout: None,
                retry: None,
                use_platform_key: false,
            }],
            retry: None,
            request_timeout: None,
            metadata: Map::new(),
        }
    }

    /// Parses and checks a plan from JSON.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let plan: Plan =
            serde_json::from_value(value.clone()).map_err(|e| format!("invalid plan: {e}"))?;
        plan.check()?;
        Ok(plan)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("a plan needs at least one target".into());
        }
        if self.targets.len() > 16 {
            return Err("a plan has at most 16 targets".into());
        }
        if self.strategy.mode == Mode::Single && self.targets.len() != 1 {
            return Err("mode single takes exactly one target".into());
        }
        for t in &self.targets {
            if t.provider.is_empty() || t.provider.len() > 64 {
                return Err("target provider must be 1..64 characters".into());
            }
            if !KNOWN_PROVIDERS.contains(&t.provider.as_str()) && t.custom_host.is_none() {
                return Err(format!(
                    "provider {:?} is not built in: give the target a custom_host",
                    t.provider
                ));
            }
            if let Some(host) = &t.custom_host
                && !(host.starts_with("http://") || host.starts_with("https://"))
            {
                return Err("custom_host must be an http(s) URL".into());
            }
            if !(t.weight.is_finite() && t.weight >= 0.0) {
                return Err("target weight must be a finite number >= 0".into());
            }
            if let Some(m) = t.override_params.get("model")
                && !m.is_string()
            {
                return Err("override_params.model must be a string".into());
            }
            if t.request_timeout == Some(0) {
                return Err("request_timeout must be positive".into());
            }
        }
        for retry in self
            .targets
            .iter()
            .filter_map(|t| t.retry.as_ref())
            .chain(self.retry.as_ref())
        {
            if retry.attempts > 5 {
                return Err("retry.attempts is at most 5".into());
            }
            if retry
                .on_status_codes
                .iter()
                .any(|c| !(400..600).contains(c))
            {
                return Err("retry.on_status_codes must be HTTP error statuses".into());
            }
        }
        if self.request_timeout == Some(0) {
            return Err("request_timeout must be positive".into());
        }
        if self.strategy.mode == Mode::Loadbalance && self.targets.iter().all(|t| t.weight == 0.0) {
            return Err("loadbalance needs a target with a positive weight".into());
        }
        Ok(())
    }

    /// Refuses custom hosts on private networks (unless `allow_private`): checked when a
    /// plan is saved.
    pub fn check_hosts(&self, allow_private: bool) -> Result<(), String> {
        if allow_private {
            return Ok(());
        }
        self.targets
            .iter()
            .filter_map(|t| t.custom_host.as_deref())
            .find_map(crate::address::refusal)
            .map_or(Ok(()), Err)
    }

    /// The plan as JSON with every platform key replaced by `"***"`.
    pub fn redacted(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(targets) = v.get_mut("targets").and_then(Value::as_array_mut) {
            for t in targets {
                if let Some(obj) = t.as_object_mut()
                    && obj.contains_key("api_key")
                {
                    obj.insert("api_key".into(), Value::String("***".into()));
                }
            }
        }
        v
    }
}

impl Target {
    /// The retries that apply to this target in `plan`.
    pub fn retry<'a>(&'a self, plan: &'a Plan) -> Option<&'a Retry> {
        self.retry.as_ref().or(plan.retry.as_ref())
    }

    /// The timeout that applies to this target in `plan`, in milliseconds.
    pub fn timeout_ms(&self, plan: &Plan) -> Option<u64> {
        self.request_timeout.or(plan.request_timeout)
    }

    /// The upstream model this target calls for a request that asked for `requested`.
    pub fn model<'a>(&'a self, requested: &'a str) -> &'a str {
        self.override_params
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(requested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_briefs_example() {
        let plan = Plan::from_json(&json!({
            "strategy": { "mode": "fallback" },
            "targets": [
                { "provider": "dashscope", "virtual_key": "vk_client_123", "api_key": "sk-plat",
                  "override_params": { "model": "qwen-turbo" } }
            ],
            "metadata": { "user_id": "user_123" }
        }))
        .expect("plan");
        assert_eq!(plan.strategy.mode, Mode::Fallback);
        assert_eq!(plan.targets[0].model("whatever"), "qwen-turbo");
        let shown = plan.redacted().to_string();
        assert!(shown.contains("\"api_key\":\"***\""), "{shown}");
        assert!(!shown.contains("sk-plat"));
    }

    #[test]
    fn refuses_bad_plans() {
        assert!(Plan::from_json(&json!({"targets": []})).is_err());
        assert!(Plan::from_json(&json!({"targets": [{"provider": "nowhere"}]})).is_err());
        assert!(
            Plan::from_json(&json!({"targets": [{"provider": "x", "custom_host": "ftp://x"}]}))
                .is_err()
        );
        assert!(
            Plan::from_json(&json!({"strategy": {"mode": "single"},
                "targets": [{"provider": "mock"}, {"provider": "mock"}]}))
            .is_err()
        );
        assert!(
            Plan::from_json(&json!({"strategy": {"mode": "teleport"},
            "targets": [{"provider": "mock"}]}))
            .is_err()
        );
        assert!(
            Plan::from_json(&json!({"targets": [{"provider": "x", "custom_host": "http://h/v1"}]}))
                .is_ok()
        );
        assert!(
            Plan::from_json(&json!({"retry": {"attempts": 9},
            "targets": [{"provider": "mock"}]}))
            .is_err()
        );
        let plan = Plan::from_json(&json!({"strategy": {"mode": "fallback"}, "retry": {"attempts": 2}, "request_timeout": 900,
            "targets": [{"provider": "mock"}, {"provider": "openai", "request_timeout": 50,
                "retry": {"attempts": 1, "on_status_codes": [503]}}]}))
        .expect("plan");
        assert_eq!(
            plan.targets[0]
                .retry(&plan)
                .map(|r| r.on_status_codes.len()),
            Some(5)
        );
        assert_eq!(plan.targets[1].retry(&plan).map(|r| r.attempts), Some(1));
        assert_eq!(
            (
                plan.targets[0].timeout_ms(&plan),
                plan.targets[1].timeout_ms(&plan)
            ),
            (Some(900), Some(50))
        );
    }
}
