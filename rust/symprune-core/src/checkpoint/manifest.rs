//! `sparsity.json`, the record of how a checkpoint was pruned, and the
//! by-name spelling of methods and patterns that it (and the bindings) use.

use super::zeros::ZeroCount;
use crate::error::{Error, Result};
use crate::mask::Pattern;
use crate::score::Score;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Written last into a pruned checkpoint: its presence means "finished".
pub const MANIFEST_FILE: &str = "sparsity.json";

/// The method names [`score_by_name`] knows.
pub const METHODS: [&str; 8] = [
    "magnitude",
    "wanda",
    "ria",
    "lp-ria",
    "stochria",
    "symmetric",
    "symwanda",
    "owanda",
];

/// Every score parameter, each used by some methods (methods.md §3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodParams {
    /// Activation exponent of ria, lp-ria, stochria.
    pub a: f64,
    /// ℓp norm of lp-ria.
    pub p: f64,
    /// Subset fraction of stochria.
    pub beta: f64,
    /// Seed of stochria.
    pub seed: u64,
    /// Whether stochria multiplies by the activation factor.
    pub activation: bool,
    /// Output-side weight of symwanda.
    pub lambda: f64,
}

impl Default for MethodParams {
    fn default() -> Self {
        MethodParams {
            a: 0.5,
            p: 1.0,
            beta: 0.1,
            seed: 0,
            activation: true,
            lambda: 1.0,
        }
    }
}

/// The score called `method` (one of [`METHODS`]) with `params`.
pub fn score_by_name(method: &str, params: &MethodParams) -> Result<Score> {
    let MethodParams {
        a,
        p,
        beta,
        seed,
        activation,
        lambda,
    } = *params;
    Ok(match method {
        "magnitude" => Score::Magnitude,
        "wanda" => Score::Wanda,
        "ria" => Score::Ria { a },
        "lp-ria" => Score::LpRia { p, a },
        "stochria" => Score::StochRia {
            beta,
            seed,
            activation,
            a,
        },
        "symmetric" => Score::Symmetric,
        "symwanda" => Score::SymWanda { lambda },
        "owanda" => Score::OWanda,
        other => {
            return Err(Error::invalid(
                "method",
                format!("{other:?} is not one of {}", METHODS.join(", ")),
            ))
        }
    })
}

/// The pattern called `group` (`per-row`, `per-matrix`, `adaptive`, `n:m`).
pub fn pattern_by_name(group: &str, sparsity: f64, n: usize, m: usize) -> Result<Pattern> {
    Ok(match group {
        "per-row" => Pattern::PerRow { sparsity },
        "per-matrix" => Pattern::PerMatrix { sparsity },
        "adaptive" => Pattern::AdaptivePerRow { sparsity },
        "n:m" => Pattern::NM { n, m },
        other => {
            return Err(Error::invalid(
                "group",
                format!("{other:?} is not one of per-row, per-matrix, adaptive, n:m"),
            ))
        }
    })
}

/// `{"method", "parameters"}` of a score: its name and the parameters it uses.
pub fn describe_score(score: &Score) -> Map<String, Value> {
    let (name, params) = match *score {
        Score::Magnitude => ("magnitude", json!({})),
        Score::Wanda => ("wanda", json!({})),
        Score::Ria { a } => ("ria", json!({ "a": a })),
        Score::LpRia { p, a } => ("lp-ria", json!({ "p": p, "a": a })),
        Score::StochRia {
            beta,
            seed,
            activation,
            a,
        } => (
            "stochria",
            json!({ "beta": beta, "seed": seed, "activation": activation, "a": a }),
        ),
        Score::Symmetric => ("symmetric", json!({})),
        Score::SymWanda { lambda } => ("symwanda", json!({ "lambda": lambda })),
        Score::OWanda => ("owanda", json!({})),
    };
    let mut out = Map::new();
    out.insert("method".into(), name.into());
    out.insert("parameters".into(), params);
    out
}

/// `{"pattern", "sparsity"}` of a pattern (`"2:4"` for N:M, whose sparsity is N/M).
pub fn describe_pattern(pattern: &Pattern) -> Map<String, Value> {
    let (name, sparsity) = match *pattern {
        Pattern::PerRow { sparsity } => ("per-row".to_string(), sparsity),
        Pattern::PerMatrix { sparsity } => ("per-matrix".to_string(), sparsity),
        Pattern::AdaptivePerRow { sparsity } => ("adaptive".to_string(), sparsity),
        Pattern::NM { n, m } => (format!("{n}:{m}"), n as f64 / m.max(1) as f64),
    };
    let mut out = Map::new();
    out.insert("pattern".into(), name.into());
    out.insert("sparsity".into(), sparsity.into());
    out
}

/// The manifest: the caller's run fields (method, parameters, pattern, ...)
/// plus, from what was written, each tensor's achieved sparsity (fraction of
/// exact zeros), the totals, the output's other `files` (what an overwrite
/// may remove), and the symprune version.
pub fn render(
    run: &Map<String, Value>,
    tensors: &BTreeMap<String, ZeroCount>,
    files: &[String],
) -> String {
    let mut out = run.clone();
    let (zeros, numel) = tensors
        .values()
        .fold((0u64, 0u64), |(z, n), c| (z + c.zeros, n + c.numel));
    let per_tensor: Map<String, Value> = tensors
        .iter()
        .map(|(name, c)| {
            let entry = json!({ "sparsity": c.sparsity(), "zeros": c.zeros, "numel": c.numel });
            (name.clone(), entry)
        })
        .collect();
    out.insert(
        "achieved".into(),
        json!({
            "sparsity": ZeroCount { zeros, numel }.sparsity(),
            "zeros": zeros,
            "numel": numel,
            "tensors": tensors.len(),
        }),
    );
    out.insert("tensors".into(), Value::Object(per_tensor));
    out.insert("files".into(), files.into());
    out.insert("symprune_version".into(), env!("CARGO_PKG_VERSION").into());
    let mut text = serde_json::to_string_pretty(&Value::Object(out)).expect("JSON");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let params = MethodParams {
            a: 0.0,
            ..MethodParams::default()
        };
        for name in METHODS {
            let score = score_by_name(name, &params).unwrap();
            assert_eq!(describe_score(&score)["method"], name);
        }
        assert!(score_by_name("sparsegpt", &params).is_err());
        let nm = pattern_by_name("n:m", 0.0, 2, 4).unwrap();
        assert_eq!(describe_pattern(&nm)["pattern"], "2:4");
        assert_eq!(describe_pattern(&nm)["sparsity"], 0.5);
        assert!(pattern_by_name("rows", 0.5, 0, 0).is_err());
    }
}
