//! Prices: what a call's tokens cost, from a price list per provider and model.
//!
//! The list is TOML, one table per provider and model, in US dollars per million tokens:
//!
//! ```toml
//! [openai."gpt-4o-mini"]
//! input = 0.15
//! output = 0.60
//! cached_input = 0.075   # optional; default: the input price
//! ```
//!
//! The proxy ships `configs/prices.toml` built in; `proxy.usage.prices` (`FLEETFORGE_PRICES`)
//! names another file. A model matches its exact entry, else the longest entry it extends with a
//! snapshot suffix (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`; the next character must be `-`, `@`
//! or `:`). A model with no entry costs `None`, with one WARN per provider and model.
//!
//! Cost = uncached input × input + cached input × cached_input + output × output, rounded to the
//! micro-dollar. Reasoning tokens are part of output and priced as output.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use fleetforge_trust::receipt::Usage;

/// The built-in list (`configs/prices.toml`).
pub const BUILT_IN: &str = include_str!("../../configs/prices.toml");

/// A price list that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    /// The file cannot be read.
    #[error("cannot read the price list {path}: {source}; check proxy.usage.prices / FLEETFORGE_PRICES")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a price list.
    #[error("the price list {origin} is not valid: {reason}")]
    Invalid {
        /// The file, or "built in".
        origin: String,
        /// What is wrong, naming the provider and model.
        reason: String,
    },
}

/// One model's prices, US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Input tokens.
    pub input: f64,
    /// Output tokens (reasoning included).
    pub output: f64,
    /// Input tokens read from the prompt cache (default: `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// The most output tokens the model accepts as its limit: a budget's cap obligation never
    /// sets a larger one (the provider would refuse the request).
    #[serde(default)]
    pub max_output: Option<u64>,
}

/// Prices by provider and model.
#[derive(Debug, Default)]
pub struct Prices {
    by_provider: HashMap<String, HashMap<String, Price>>,
    warned: Mutex<HashSet<String>>,
}

impl Prices {
    /// The built-in list, or the file at `path`.
    pub fn load(path: Option<&Path>) -> Result<Self, PricesError> {
        match path {
            None => Self::parse(BUILT_IN, "built in"),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| PricesError::Read { path: path.to_owned(), source })?;
                Self::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Parses a list; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PricesError> {
        let invalid = |reason: String| PricesError::Invalid { origin: origin.to_owned(), reason };
        let by_provider: HashMap<String, HashMap<String, Price>> =
            toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (provider, models) in &by_provider {
            for (model, p) in models {
                let prices = [p.input, p.output, p.cached_input.unwrap_or(p.input)];
                if prices.iter().any(|v| !v.is_finite() || *v < 0.0) {
                    return Err(invalid(format!(
                        "{provider}.\"{model}\": prices must be zero or more US dollars per million tokens"
                    )));
                }
            }
        }
        Ok(Self { by_provider, warned: Mutex::default() })
    }

    /// The price of `model` at `provider` (see the module docs for matching).
    pub fn price(&self, provider: &str, model: &str) -> Option<Price> {
        let models = self.by_provider.get(provider)?;
        if let Some(p) = models.get(model) {
            return Some(*p);
        }
        models
            .iter()
            .filter(|(name, _)| model.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with(['-', '@', ':'])))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }

    /// What a call's `usage` cost, in micro-dollars; `None` when it names no provider or model,
    /// or (with one WARN per provider and model) when the list has no price for it.
    pub fn cost_micro_usd(&self, usage: &Usage) -> Option<u64> {
        let (provider, model) = (usage.provider.as_deref()?, usage.model.as_deref()?);
        let Some(p) = self.price(provider, model) else {
            let key = format!("{provider}/{model}");
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned.len() < 10_000 && warned.insert(key) {
                tracing::warn!(
                    provider,
                    model,
                    "no price for this model: its calls' cost is not recorded; add it to the price list (proxy.usage.prices)"
                );
            }
            return None;
        };
        let input = usage.input_tokens.unwrap_or(0);
        let cached = usage.cached_input_tokens.unwrap_or(0).min(input);
        let output = usage.output_tokens.unwrap_or(0);
        // Dollars per million tokens is micro-dollars per token.
        let micro = (input - cached) as f64 * p.input
            + cached as f64 * p.cached_input.unwrap_or(p.input)
            + output as f64 * p.output;
        Some(micro.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Prices, PricesError};
    use fleetforge_trust::receipt::Usage;

    #[test]
    fn the_built_in_list_prices_the_main_models() {
        let prices = Prices::load(None).unwrap();
        for (provider, model) in [
            ("openai", "gpt-4o"),
            ("openai", "gpt-4o-mini"),
            ("openai", "text-embedding-3-small"),
            ("anthropic", "claude-sonnet-4-5"),
            ("anthropic", "claude-3-5-haiku-latest"),
            ("gemini", "gemini-2.5-flash"),
            ("gemini", "gemini-2.5-pro"),
        ] {
            assert!(prices.price(provider, model).is_some(), "{provider} {model}");
        }
    }

    #[test]
    fn snapshots_match_their_model_and_cost_is_exact() {
        let prices = Prices::parse(
            "[openai.\"gpt-4o\"]\ninput = 2.5\noutput = 10.0\ncached_input = 1.25\n\
             [openai.\"gpt-4o-mini\"]\ninput = 0.15\noutput = 0.6\n",
            "test",
        )
        .unwrap();
        assert_eq!(prices.price("openai", "gpt-4o-mini-2024-07-18").unwrap().input, 0.15, "the longest entry");
        assert_eq!(prices.price("openai", "gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert!(prices.price("openai", "gpt-4oo").is_none(), "not a snapshot of gpt-4o");
        assert!(prices.price("anthropic", "gpt-4o").is_none());
        let usage = |model: &str| Usage {
            cached_input_tokens: Some(1_024),
            cost_micro_usd: None,
            input_tokens: Some(1_200),
            model: Some(model.into()),
            output_tokens: Some(35),
            provider: Some("openai".into()),
            reasoning_tokens: None,
        };
        // 176 × 2.5 + 1024 × 1.25 + 35 × 10 = 440 + 1280 + 350
        assert_eq!(prices.cost_micro_usd(&usage("gpt-4o")), Some(2_070));
        assert_eq!(prices.cost_micro_usd(&usage("unknown-model")), None);
    }

    #[test]
    fn bad_lists_are_refused_naming_the_entry() {
        let err = Prices::parse("[openai.\"m\"]\ninput = -1.0\noutput = 1.0\n", "p.toml").unwrap_err();
        assert!(matches!(&err, PricesError::Invalid { .. }) && err.to_string().contains("openai.\"m\""), "{err}");
        let err = Prices::parse("[openai.\"m\"]\ninput = \"cheap\"\noutput = 1.0\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("p.toml"), "{err}");
    }
}
