//! Fuzzing the parsers of untrusted files, the shard header and the index,
//! with random bytes and with generated and mutated inputs that reach deep
//! into them (dimension and size extremes included). Each must answer with a
//! result, never panic, abort or hang; and whatever they accept must be safe
//! to size, select, inspect and prune.

use super::index::Index;
use super::inspect::{inspect, inspect_tensor};
use super::prune::{prune_checkpoint, Plan};
use super::reader::{parse_dtype, parse_header, Header, SINGLE_FILE};
use super::selection::Selection;
use super::testutil::file;
use proptest::prelude::*;
use proptest::sample::Index as Pick;
use std::path::Path;
use std::time::{Duration, Instant};

/// Far more than any case needs; a case this slow is a hang in the making.
const CASE_LIMIT: Duration = Duration::from_secs(2);

const DTYPES: [&str; 24] = [
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
    "Q4_K",
    "f32",
];

/// Tensor names are `model.layers.<k>.<suffix>`: the first two are pruned by default.
const SUFFIXES: [&str; 4] = [
    "mlp.up_proj.weight",
    "self_attn.q_proj.weight",
    "input_layernorm.weight",
    "mlp.gate.weight",
];

/// A dimension, an offset or a count: mostly small, often extreme.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..9,
        3 => prop::sample::select(vec![
            0,
            1,
            4,
            255,
            4096,
            (1 << 31) - 1,
            1 << 32,
            (1 << 32) + 1,
            1 << 40,
            1 << 61,
            1 << 62,
            (1 << 62) + 1,
            1 << 63,
            u64::MAX / 8,
            u64::MAX / 4 + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
        1 => any::<u64>(),
    ]
}

/// A JSON value where a number belongs: mostly a number, sometimes not one.
fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        100 => number().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "-1", "1.5", "1e400", "18446744073709551616", "\"3\"", "null", "[]", "{}", "true",
        ])
        .prop_map(String::from),
    ]
}

#[derive(Debug, Clone)]
struct Tensor {
    /// The suffix of its name, and whether it takes the first tensor's name.
    name: (usize, bool),
    dtype: usize,
    shape: Vec<String>,
    offsets: (String, String),
}

fn tensor() -> impl Strategy<Value = Tensor> {
    (
        (0..SUFFIXES.len(), prop::bool::weighted(0.05)),
        0..DTYPES.len(),
        prop::collection::vec(json_number(), 0..5),
        (json_number(), json_number()),
    )
        .prop_map(|(name, dtype, shape, offsets)| Tensor {
            name,
            dtype,
            shape,
            offsets,
        })
}

/// A header's JSON and data section: offsets usually laid out contiguously
/// from the shapes (so the checks after the syntax are reached), data
/// usually of the length they need (when small).
fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        prop::collection::vec(tensor(), 0..5),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
        0usize..8,
    )
        .prop_map(|(tensors, contiguous, metadata, extra)| {
            let mut entries = Vec::new();
            if metadata {
                entries.push(r#""__metadata__":{"format":"pt"}"#.to_string());
            }
            let mut end = 0u128;
            for (k, t) in tensors.iter().enumerate() {
                let layer = if t.name.1 { 0 } else { k };
                let name = format!("model.layers.{layer}.{}", SUFFIXES[t.name.0]);
                let (start, stop) = if contiguous {
                    let bits = parse_dtype(DTYPES[t.dtype]).map_or(8, |d| d.bitsize());
                    let numel = t.shape.iter().fold(1u128, |acc, d| {
                        acc.saturating_mul(d.parse::<u128>().unwrap_or(1))
                    });
                    let start = end;
                    end = end.saturating_add(numel.saturating_mul(bits as u128) / 8);
                    (start.to_string(), end.to_string())
                } else {
                    t.offsets.clone()
                };
                entries.push(format!(
                    r#"{name:?}:{{"dtype":"{}","shape":[{}],"data_offsets":[{start},{stop}]}}"#,
                    DTYPES[t.dtype],
                    t.shape.join(",")
                ));
            }
            let data = match extra {
                0 if end <= 4096 => end as usize + 1,
                _ if end <= 4096 => end as usize,
                _ => extra,
            };
            (format!("{{{}}}", entries.join(",")), vec![0u8; data])
        })
}

/// Edits of a byte string: (where, which edit, a byte).
fn edits() -> impl Strategy<Value = Vec<(Pick, u8, u8)>> {
    prop::collection::vec((any::<Pick>(), 0u8..6, any::<u8>()), 1..5)
}

const SYNTAX: &[u8] = b"{}[]\",:0123456789-e. ";

fn mutate(mut bytes: Vec<u8>, edits: &[(Pick, u8, u8)]) -> Vec<u8> {
    for (at, kind, byte) in edits {
        let i = at.index(bytes.len().max(1));
        match kind {
            _ if bytes.is_empty() => bytes.push(*byte),
            0 => bytes[i] = *byte,
            1 => bytes[i] = SYNTAX[*byte as usize % SYNTAX.len()],
            2 => bytes.truncate(i),
            3 => {
                let piece = bytes[i..].iter().take(16).copied().collect::<Vec<_>>();
                bytes.splice(i..i, piece);
            }
            4 => {
                bytes.remove(i);
            }
            _ => {
                // The 8-byte header length, off by a little or by a lot.
                let n = u64::from_le_bytes(
                    bytes
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0; 8]),
                );
                let n = match byte % 4 {
                    0 => n.wrapping_add(1),
                    1 => n.wrapping_sub(1),
                    2 => u64::MAX - *byte as u64,
                    _ => n ^ (1 << (byte % 64)),
                };
                let len = bytes.len().min(8);
                bytes[..len].copy_from_slice(&n.to_le_bytes()[..len]);
            }
        }
    }
    bytes
}

/// Whatever the header reader accepts is safe to size, select and inspect.
fn use_header(bytes: &[u8], header: &Header) {
    let selection = Selection::default();
    for t in &header.tensors {
        let _ = (t.numel(), t.nbytes(), selection.selects(t));
        let data = &bytes[header.data_start + t.start..header.data_start + t.end];
        for nm in [Some((2, 4)), Some((1, usize::MAX)), None] {
            inspect_tensor(t, data, nm, &selection);
        }
    }
}

fn parse_and_use(bytes: &[u8]) {
    let clock = Instant::now();
    if let Ok(header) = parse_header(bytes, Path::new("x.safetensors")) {
        use_header(bytes, &header);
    }
    assert!(
        clock.elapsed() < CASE_LIMIT,
        "a case took {:?}",
        clock.elapsed()
    );
}

/// An index: a weight map from (possibly repeated) tensors to shard names
/// of every kind, some of them symprune's own files or paths.
fn index_text() -> impl Strategy<Value = String> {
    let shard = prop::sample::select(vec![
        "\"model-00001-of-00002.safetensors\"",
        "\"model.safetensors\"",
        "\"sparsity.json\"",
        "\".symprune-journal.json\"",
        "\".symprune-output\"",
        "\".model.safetensors.tmp\"",
        "\"model.safetensors.index.json\"",
        "\"../model.safetensors\"",
        "\"/etc/passwd.safetensors\"",
        "\"a/b.safetensors\"",
        "\"\"",
        "\".safetensors\"",
        "1",
        "null",
        "{}",
    ]);
    let entry = (0..SUFFIXES.len(), shard);
    (
        prop::collection::vec(entry, 0..6),
        prop::sample::select(vec![
            "",
            r#""metadata":{"total_size":1},"#,
            r#""metadata":[],"#,
            r#""metadata":{"total_size":18446744073709551615},"#,
        ]),
        any::<bool>(),
    )
        .prop_map(|(entries, metadata, with_map)| {
            let map: Vec<String> = entries
                .iter()
                .enumerate()
                .map(|(k, (t, s))| format!("\"model.layers.{}.{}\":{s}", k % 3, SUFFIXES[*t]))
                .collect();
            let body = if with_map {
                format!(r#""weight_map":{{{}}}"#, map.join(","))
            } else {
                r#""weight_map":[]"#.into()
            };
            format!("{{{metadata}{body}}}")
        })
}

fn parse_index(text: &str) {
    let clock = Instant::now();
    if let Ok(index) = Index::parse(text, Path::new("model.safetensors.index.json")) {
        let shards = index.shard_files();
        assert!(shards
            .iter()
            .all(|s| s.ends_with(".safetensors") && !s.contains('/')));
        let _ = index.render(u64::MAX);
    }
    assert!(
        clock.elapsed() < CASE_LIMIT,
        "a case took {:?}",
        clock.elapsed()
    );
}

// 130,000 cases in all (75,000 headers, 55,000 indexes); see the timing in
// benches/RESULTS.md.
proptest! {
    #![proptest_config(ProptestConfig { cases: 25_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        parse_and_use(&bytes);
    }

    #[test]
    fn random_index_texts(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        parse_index(&String::from_utf8_lossy(&bytes));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 25_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_headers((json, data) in header()) {
        parse_and_use(&file(&json, &data));
    }

    #[test]
    fn mutated_headers((json, data) in header(), edits in edits()) {
        parse_and_use(&mutate(file(&json, &data), &edits));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 15_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_indexes(text in index_text()) {
        parse_index(&text);
    }

    #[test]
    fn mutated_indexes(text in index_text(), edits in edits()) {
        parse_index(&String::from_utf8_lossy(&mutate(text.into_bytes(), &edits)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whole runs on generated single-file checkpoints: pruning (row-local
    /// and whole-matrix) and inspecting either work or fail with an error.
    #[test]
    fn generated_checkpoints_prune_and_inspect((json, data) in header()) {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        std::fs::create_dir(&input).unwrap();
        std::fs::write(input.join(SINGLE_FILE), file(&json, &data)).unwrap();
        let clock = Instant::now();
        for (k, pattern) in ["2:4", "per-matrix"].into_iter().enumerate() {
            let none = crate::vocab::Params::new();
            let request =
                crate::vocab::Request::new(Some("magnitude"), &none, Some(pattern), None, None, &none)
                    .unwrap();
            let plan = Plan {
                request,
                selection: Selection::default(),
                stats: None,
                overwrite: false,
                part: Default::default(),
            };
            let out = tmp.path().join(format!("out{k}"));
            let _ = prune_checkpoint(&input, &out, &plan, &mut |_| true);
        }
        let _ = inspect(&input, Some((2, 4)), &Selection::default());
        prop_assert!(clock.elapsed() < CASE_LIMIT * 5, "took {:?}", clock.elapsed());
    }
}
