//! `sparsity.json`, the record of how a checkpoint was pruned. The run's own
//! fields come from [`crate::vocab::Request::describe`], the same for both engines.

use super::zeros::ZeroCount;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Written last into a pruned checkpoint: its presence means "finished".
pub const MANIFEST_FILE: &str = "sparsity.json";

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
