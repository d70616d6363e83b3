//! Test fixtures of the checkpoint modules: safetensors files and a small
//! sharded checkpoint.

use super::index::INDEX_FILE;
use half::bf16;
use serde_json::Value;
use std::fs;
use std::path::Path;

/// A safetensors file from a JSON header and a data section.
pub(super) fn file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A tensor of [`shard`]: name, dtype, shape and bytes.
type Entry<'a> = (&'a str, &'a str, Vec<usize>, Vec<u8>);

/// Writes a safetensors shard holding `tensors`, in order.
pub(super) fn shard(path: &Path, tensors: &[Entry]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    fs::write(path, file(&Value::Object(header).to_string(), &data)).unwrap();
}

/// `n` reproducible values in `[-0.5, 0.5)`.
pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut g = crate::rng::SplitMix64::stream(seed, crate::rng::Axis::Row, 0);
    (0..n)
        .map(|_| (g.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect()
}

/// `v` as little-endian bf16 bytes.
fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect()
}

/// Two shards (BF16 and F32 linears, an I8 tensor, norms), an index and a config.
pub(super) fn checkpoint(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let f32_bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    shard(
        &dir.join("model-00001-of-00002.safetensors"),
        &[
            (
                "model.embed_tokens.weight",
                "F32",
                vec![10, 8],
                f32_bytes(values(80, 1)),
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                "BF16",
                vec![6, 8],
                bf16_bytes(&values(48, 2)),
            ),
            (
                "model.layers.0.input_layernorm.weight",
                "F32",
                vec![8],
                f32_bytes(values(8, 3)),
            ),
        ],
    );
    shard(
        &dir.join("model-00002-of-00002.safetensors"),
        &[
            (
                "model.layers.0.mlp.up_proj.weight",
                "F32",
                vec![12, 8],
                f32_bytes(values(96, 4)),
            ),
            (
                "model.layers.0.mlp.qweight",
                "I8",
                vec![4, 4],
                (0..16).collect(),
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                "F32",
                vec![8, 12],
                f32_bytes(values(96, 5)),
            ),
        ],
    );
    let mut map = serde_json::Map::new();
    for (t, s) in [
        ("model.embed_tokens.weight", 1),
        ("model.layers.0.self_attn.q_proj.weight", 1),
        ("model.layers.0.input_layernorm.weight", 1),
        ("model.layers.0.mlp.up_proj.weight", 2),
        ("model.layers.0.mlp.qweight", 2),
        ("model.layers.0.mlp.down_proj.weight", 2),
    ] {
        map.insert(
            t.into(),
            format!("model-0000{s}-of-00002.safetensors").into(),
        );
    }
    let index = serde_json::json!({"metadata": {"total_size": 1}, "weight_map": map});
    fs::write(dir.join(INDEX_FILE), index.to_string()).unwrap();
    fs::write(dir.join("config.json"), "{}").unwrap();
}
