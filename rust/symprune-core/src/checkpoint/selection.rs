//! Which tensors get pruned.
//!
//! Only 2-D floating-point (F32, F16, BF16) tensors are ever candidates. By
//! default those are the linear weights inside the decoder blocks
//! (`model.layers.N.….weight`, `transformer.h.N.…`, `model.decoder.layers.N.…`,
//! …), never embeddings, `lm_head`, norms, biases or MoE routers (`….gate.weight`, `…_gate.weight`). `targets`
//! and `ignore` are regexes in the llm-compressor style (a `re:` prefix is
//! accepted and dropped); one matches when it is found anywhere in the tensor
//! name or in its module name (the name without `.weight`), so anchor with `^`
//! and `$` for exact names. Given targets replace the default rule; ignore
//! always wins.

use super::reader::TensorInfo;
use crate::error::{Error, Result};
use regex::Regex;
use safetensors::Dtype;
use std::sync::LazyLock;

/// A decoder block's numbered layer somewhere in the name.
static IN_BLOCK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|\.)(layers|h|blocks|block)\.\d+\.").expect("valid regex"));
/// 2-D weights inside blocks that are not linear layers to prune.
static NOT_LINEAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(embed|norm|ln_|lm_head|wte|wpe|router|[._]gate\.weight$)").expect("valid regex")
});

/// Tensor selection rules.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    targets: Vec<Regex>,
    ignore: Vec<Regex>,
}

impl Selection {
    /// Compiles the rules; an invalid regex is reported by its text.
    pub fn new(targets: &[String], ignore: &[String]) -> Result<Selection> {
        let compile = |arg: &str, pats: &[String]| -> Result<Vec<Regex>> {
            pats.iter()
                .map(|p| {
                    let body = p.strip_prefix("re:").unwrap_or(p);
                    Regex::new(body).map_err(|e| {
                        Error::invalid(arg, format!("{p:?} is not a valid regex: {e}"))
                    })
                })
                .collect()
        };
        Ok(Selection {
            targets: compile("targets", targets)?,
            ignore: compile("ignore", ignore)?,
        })
    }

    /// The rules as given (without `re:`): `{"targets": [...], "ignore": [...]}`.
    pub fn describe(&self) -> serde_json::Value {
        let text = |v: &[Regex]| v.iter().map(|r| r.as_str().to_string()).collect::<Vec<_>>();
        serde_json::json!({ "targets": text(&self.targets), "ignore": text(&self.ignore) })
    }

    /// Whether `t` is pruned. A tensor without elements never is: it is
    /// copied as it is, whatever its (possibly huge) other dimension.
    pub fn selects(&self, t: &TensorInfo) -> bool {
        self.selects_tensor(&t.name, &t.shape, t.dtype)
    }

    /// Whether the tensor `name` of `shape` and `dtype` is pruned (never an
    /// empty one: there is nothing to score).
    pub fn selects_tensor(&self, name: &str, shape: &[usize], dtype: Dtype) -> bool {
        let prunable = shape.len() == 2
            && !shape.contains(&0)
            && matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16);
        if !prunable {
            return false;
        }
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let hit = |r: &Regex| r.is_match(name) || r.is_match(module);
        if self.ignore.iter().any(hit) {
            return false;
        }
        if self.targets.is_empty() {
            name.ends_with(".weight") && IN_BLOCK.is_match(name) && !NOT_LINEAR.is_match(name)
        } else {
            self.targets.iter().any(hit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, shape: &[usize], dtype: Dtype) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            start: 0,
            end: 0,
        }
    }

    #[test]
    fn default_rule_picks_block_linears() {
        let s = Selection::default();
        let yes = [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.11.mlp.down_proj.weight",
            "transformer.h.3.attn.c_attn.weight",
            "model.decoder.layers.2.fc1.weight",
            "model.language_model.layers.0.mlp.up_proj.weight",
        ];
        for n in yes {
            assert!(s.selects(&info(n, &[8, 8], Dtype::BF16)), "{n}");
        }
        let no = [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.mlp.gate.weight",
            "model.layers.0.mlp.shared_expert_gate.weight",
            "model.layers.0.self_attn.q_proj.bias",
        ];
        for n in no {
            assert!(!s.selects(&info(n, &[8, 8], Dtype::F32)), "{n}");
        }
        let q = "model.layers.0.self_attn.q_proj.weight";
        assert!(!s.selects(&info(q, &[8], Dtype::F32)));
        assert!(!s.selects(&info(q, &[0, 8], Dtype::F32)));
        assert!(!s.selects(&info(q, &[8, 8], Dtype::I8)));
    }

    #[test]
    fn targets_and_ignore_override() {
        let s = Selection::new(&["re:.*q_proj$".into()], &[r"layers\.1\.".into()]).unwrap();
        assert!(s.selects(&info(
            "model.layers.0.self_attn.q_proj.weight",
            &[4, 4],
            Dtype::F16
        )));
        assert!(!s.selects(&info(
            "model.layers.1.self_attn.q_proj.weight",
            &[4, 4],
            Dtype::F16
        )));
        assert!(!s.selects(&info(
            "model.layers.0.self_attn.k_proj.weight",
            &[4, 4],
            Dtype::F16
        )));
        let lm = Selection::new(&["lm_head".into()], &[]).unwrap();
        assert!(lm.selects(&info("lm_head.weight", &[4, 4], Dtype::F32)));
        let e = Selection::new(&["re:(".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("targets: \"re:(\" is not a valid regex"),
            "{e}"
        );
    }
}
