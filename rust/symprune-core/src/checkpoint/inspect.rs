//! Sparsity of a checkpoint straight from its memory maps: per tensor the
//! fraction of exact zeros (`±0` for floats) and, for a given N:M, how many
//! groups of M consecutive inputs break it. Parallel over tensors and rows.
//! A compressed-tensors checkpoint's weights are reported under their dense
//! names, counted from bitmask and values without decompressing them.

use super::compressed::{find_compressed, part_of, sparse_format, Compressed};
use super::reader::{Checkpoint, Shard, TensorInfo};
use super::selection::Selection;
use super::zeros::{count_zeros, is_zero, zero_mask, ZeroCount};
use crate::error::{Error, Result};
use rayon::prelude::*;
use safetensors::Dtype;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One tensor's zeros.
#[derive(Debug, Clone, Serialize)]
pub struct TensorSparsity {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub numel: u64,
    /// Exact zeros; `None` for dtypes narrower than a byte.
    pub zeros: Option<u64>,
    /// Whether the selection (by default: decoder-block linear weights) picks it.
    pub selected: bool,
    /// Groups of M consecutive inputs with fewer than N zeros; `None` when
    /// not checked (no N:M asked, not a 2-D float tensor, inputs not a multiple of M).
    pub nm_violations: Option<u64>,
}

/// The sparsity of a whole checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    /// The N:M pattern checked, as `"N:M"`.
    pub pattern: Option<String>,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorSparsity>,
    /// Zeros over the selected tensors.
    pub selected: ZeroCount,
    /// Zeros over every tensor with whole-byte elements.
    pub total: ZeroCount,
    /// Whether every selected tensor satisfies the N:M pattern (`None`: none asked).
    pub nm_ok: Option<bool>,
}

/// Groups of `m` consecutive elements per row with fewer than `n` zeros.
fn nm_violations<const N: usize>(data: &[u8], cols: usize, n: usize, m: usize, mask: u64) -> u64 {
    data.par_chunks(cols * N)
        .map(|row| {
            row.chunks(m * N)
                .filter(|g| g.chunks_exact(N).filter(|e| is_zero::<N>(e, mask)).count() < n)
                .count() as u64
        })
        .sum()
}

pub(crate) fn inspect_tensor(
    t: &TensorInfo,
    data: &[u8],
    nm: Option<(usize, usize)>,
    selection: &Selection,
) -> TensorSparsity {
    // Groups exist only in a 2-D float tensor with elements; then its row
    // bytes (and M's, at most a row's) are bounded by the validated data.
    let float2d = t.shape.len() == 2
        && t.numel() > 0
        && matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16);
    let nm_violations = match (nm, zero_mask(t.dtype)) {
        (Some((n, m)), Some((size, mask))) if float2d && t.shape[1] % m == 0 => Some(match size {
            2 => nm_violations::<2>(data, t.shape[1], n, m, mask),
            _ => nm_violations::<4>(data, t.shape[1], n, m, mask),
        }),
        _ => None,
    };
    TensorSparsity {
        name: t.name.clone(),
        dtype: t.dtype_name(),
        shape: t.shape.clone(),
        numel: t.numel() as u64,
        zeros: count_zeros(t.dtype, data),
        selected: selection.selects(t),
        nm_violations,
    }
}

/// Zeros and N:M violations of one row of a compressed weight: an element
/// is zero when its bit is clear or its flagged value is (2:4 tops groups
/// up with zeros), so the counts equal those of the decompressed row.
fn compressed_row<const N: usize>(
    bits: &[u8],
    values: &[u8],
    cols: usize,
    nm: Option<(usize, usize)>,
    mask: u64,
) -> (u64, u64) {
    let (mut zeros, mut violations) = (0u64, 0u64);
    let (mut v, mut group_zeros) = (0usize, 0usize);
    for col in 0..cols {
        let zero = if bits[col / 8] >> (col % 8) & 1 == 1 {
            v += N;
            is_zero::<N>(&values[v - N..v], mask)
        } else {
            true
        };
        zeros += zero as u64;
        if let Some((n, m)) = nm {
            group_zeros += zero as usize;
            if col % m == m - 1 {
                violations += (group_zeros < n) as u64;
                group_zeros = 0;
            }
        }
    }
    (zeros, violations)
}

/// A compressed weight as [`inspect_tensor`] reports its dense tensor.
fn inspect_compressed(
    c: &Compressed,
    nm: Option<(usize, usize)>,
    selection: &Selection,
) -> Result<TensorSparsity> {
    let ((shard, info), (bitmask_shard, bitmask)) = (c.values, c.bitmask);
    let (values, bits) = (shard.data(info)?, bitmask_shard.data(bitmask)?);
    let (size, mask) = zero_mask(c.dtype).expect("checked by find_compressed");
    let shape = vec![c.rows, c.cols];
    let numel = (c.rows * c.cols) as u64;
    let float2d = numel > 0 && matches!(c.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16);
    let nm = nm.filter(|&(_, m)| float2d && c.cols % m == 0);
    let mask_row = c.cols.div_ceil(8);
    let (zeros, violations) = (0..c.rows)
        .into_par_iter()
        .map(|r| {
            let row_bits = &bits[r * mask_row..(r + 1) * mask_row];
            let row_values =
                &values[c.offsets[r] as usize * size..c.offsets[r + 1] as usize * size];
            match size {
                2 => compressed_row::<2>(row_bits, row_values, c.cols, nm, mask),
                4 => compressed_row::<4>(row_bits, row_values, c.cols, nm, mask),
                _ => compressed_row::<8>(row_bits, row_values, c.cols, nm, mask),
            }
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    shard.release(shard.offset(info), values.len());
    bitmask_shard.release(bitmask_shard.offset(bitmask), bits.len());
    let name = format!("{}.weight", c.module);
    Ok(TensorSparsity {
        selected: selection.selects_tensor(&name, &shape, c.dtype),
        name,
        dtype: c.dtype.to_string(),
        shape,
        numel,
        zeros: Some(zeros),
        nm_violations: nm.map(|_| violations),
    })
}

/// Where an inspected tensor's elements are.
enum Source<'a, 'b> {
    Dense(&'a Shard, &'a TensorInfo),
    Packed(&'b Compressed<'a>),
}

/// Compares names with their runs of digits as numbers (`layers.2` < `layers.10`).
fn natural_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> impl Iterator<Item = (bool, &str)> {
        let mut rest = s;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digits = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            let (chunk, tail) = rest.split_at(end);
            rest = tail;
            Some((digits, chunk))
        })
    }
    // Numbers: shorter (without leading zeros) is smaller, then digit by digit.
    fn key((digits, chunk): (bool, &str)) -> (bool, usize, &str) {
        let trimmed = chunk.trim_start_matches('0');
        if digits {
            (false, trimmed.len(), trimmed)
        } else {
            (true, 0, chunk)
        }
    }
    chunks(a)
        .map(key)
        .cmp(chunks(b).map(key))
        .then_with(|| a.cmp(b))
}

/// Inspects the checkpoint in `dir`; `nm` = `(N, M)` also checks that pattern.
pub fn inspect(
    dir: &Path,
    nm: Option<(usize, usize)>,
    selection: &Selection,
) -> Result<Inspection> {
    if let Some((n, m)) = nm {
        if n == 0 || n >= m {
            return Err(Error::invalid(
                "pattern",
                format!("{n}:{m} is not N:M with 0 < N < M (e.g. 2:4)"),
            ));
        }
    }
    let checkpoint = Checkpoint::open(dir)?;
    let format = sparse_format(&checkpoint.dir)?;
    let found = match format {
        Some(f) => find_compressed(&checkpoint, f)?,
        None => Default::default(),
    };
    // Dense tensors (in a compressed checkpoint: those not part of a
    // compressed weight), then the compressed weights under their dense names.
    let mut all: Vec<(&str, Source)> = checkpoint
        .tensors()
        .filter(|(_, t)| !format.is_some_and(|f| part_of(&found, f, &t.name).is_some()))
        .map(|(shard, t)| (t.name.as_str(), Source::Dense(shard, t)))
        .collect();
    let names: Vec<(String, &Compressed)> = found
        .values()
        .map(|c| (format!("{}.weight", c.module), c))
        .collect();
    all.extend(names.iter().map(|(n, c)| (n.as_str(), Source::Packed(c))));
    // Layer 2 before layer 10: names in natural order, not as text.
    all.sort_by(|(a, _), (b, _)| natural_order(a, b));
    let tensors: Vec<TensorSparsity> = all
        .par_iter()
        .map(|(_, source)| match source {
            Source::Dense(shard, t) => {
                let out = inspect_tensor(t, shard.data(t)?, nm, selection);
                shard.release(shard.offset(t), t.nbytes());
                Ok(out)
            }
            Source::Packed(c) => inspect_compressed(c, nm, selection),
        })
        .collect::<Result<_>>()?;
    let sum = |pick: &dyn Fn(&TensorSparsity) -> bool| {
        tensors
            .iter()
            .filter(|t| pick(t))
            .fold(ZeroCount::default(), |acc, t| ZeroCount {
                zeros: acc.zeros + t.zeros.unwrap_or(0),
                numel: acc.numel + t.numel,
            })
    };
    let selected = sum(&|t| t.selected);
    let total = sum(&|t| t.zeros.is_some());
    let nm_ok = nm.map(|_| {
        tensors
            .iter()
            .filter(|t| t.selected)
            .all(|t| t.nm_violations == Some(0))
    });
    Ok(Inspection {
        path: dir.to_path_buf(),
        pattern: nm.map(|(n, m)| format!("{n}:{m}")),
        tensors,
        selected,
        total,
        nm_ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_with_numbers_as_numbers() {
        let mut names = vec![
            "model.layers.10.mlp.weight",
            "model.layers.2.mlp.weight",
            "model.layers.1.mlp.weight",
            "lm_head.weight",
            "model.layers.02.a",
        ];
        names.sort_by(|a, b| natural_order(a, b));
        assert_eq!(
            names,
            [
                "lm_head.weight",
                "model.layers.1.mlp.weight",
                "model.layers.02.a",
                "model.layers.2.mlp.weight",
                "model.layers.10.mlp.weight",
            ]
        );
    }

    #[test]
    fn nm_violations_count_groups() {
        // One row of 8 F32: first group has 2 zeros, second only 1.
        let row: Vec<u8> = [0.0f32, 1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 5.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let (_, mask) = zero_mask(Dtype::F32).unwrap();
        assert_eq!(nm_violations::<4>(&row, 8, 2, 4, mask), 1);
    }
}
