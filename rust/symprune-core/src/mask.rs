//! Masks from scores (methods.md §4): `true` marks a weight to prune.
//!
//! Counts are exact and ties are broken by the lower index first (a stable
//! ascending sort): within a row by column, over a whole matrix in row-major
//! order. Scores are ranked through an order-preserving `u32` key of their
//! `f32` value, packed with the column index so every comparison is one
//! integer compare and no two keys are equal.

use crate::dtype::{Element, MatRef};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Which weights are compared with each other, and how many go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// Exactly `floor(cols · s)` per row.
    PerRow { sparsity: f64 },
    /// Exactly `floor(rows · cols · s)` over the whole matrix.
    PerMatrix { sparsity: f64 },
    /// `n` of every `m` consecutive input columns, in every row.
    NM { n: usize, m: usize },
    /// Wanda's variant: per row, the smallest scores whose cumulative sum stays
    /// within `α ·` the row total, `α` searched so the matrix reaches `s`.
    AdaptivePerRow { sparsity: f64 },
}

impl Pattern {
    pub(crate) fn check(&self, cols: usize, tensor: &str) -> Result<()> {
        match *self {
            Pattern::PerRow { sparsity }
            | Pattern::PerMatrix { sparsity }
            | Pattern::AdaptivePerRow { sparsity } => check_sparsity(sparsity),
            Pattern::NM { n, m } => {
                if n == 0 || n >= m {
                    return Err(Error::invalid(
                        "pattern",
                        format!("{n}:{m} is not N:M with 0 < N < M (e.g. 2:4)"),
                    ));
                }
                if cols % m != 0 {
                    return Err(Error::invalid(
                        tensor,
                        format!("{cols} input columns are not a multiple of M = {m}; use another pattern or exclude this tensor"),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Fails unless `0 <= sparsity < 1`.
pub fn check_sparsity(sparsity: f64) -> Result<()> {
    if sparsity.is_finite() && (0.0..1.0).contains(&sparsity) {
        Ok(())
    } else {
        Err(Error::invalid(
            "sparsity",
            format!("{sparsity} must be in [0, 1), e.g. 0.5 for 50%"),
        ))
    }
}

/// How many of `total` weights a sparsity prunes: `floor(total · s)`.
pub fn prune_count(total: usize, sparsity: f64) -> usize {
    (total as f64 * sparsity).floor() as usize
}

/// An order-preserving key: `a < b` (as f32, `-0 == +0`) iff `key(a) < key(b)`.
#[inline(always)]
pub(crate) fn key(v: f32) -> u32 {
    let bits = (v + 0.0).to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// The mask of `scores` (any float dtype) under `pattern`.
pub fn compute<T: Element>(scores: MatRef<T>, pattern: Pattern, tensor: &str) -> Result<Vec<bool>> {
    let name = if tensor.is_empty() { "scores" } else { tensor };
    scores.ensure_finite(name)?;
    pattern.check(scores.cols(), name)?;
    if scores.cols() > u32::MAX as usize {
        return Err(Error::invalid(
            name,
            "more than 2^32 columns are not supported",
        ));
    }
    Ok(match pattern {
        Pattern::PerRow { sparsity } => per_row(scores, prune_count(scores.cols(), sparsity)),
        Pattern::PerMatrix { sparsity } => {
            per_matrix(scores, prune_count(scores.data().len(), sparsity))
        }
        Pattern::NM { n, m } => n_of_m(scores, n, m),
        Pattern::AdaptivePerRow { sparsity } => adaptive(scores, sparsity, name)?,
    })
}

fn packed_row<T: Element>(row: &[T], buf: &mut Vec<u64>) {
    buf.clear();
    buf.extend(
        row.iter()
            .enumerate()
            .map(|(j, v)| (u64::from(key(v.to_f32())) << 32) | j as u64),
    );
}

fn per_row<T: Element>(s: MatRef<T>, k: usize) -> Vec<bool> {
    let cols = s.cols();
    let mut mask = vec![false; s.data().len()];
    if k == 0 || cols == 0 {
        return mask;
    }
    mask.par_chunks_mut(cols)
        .enumerate()
        .for_each_init(Vec::new, |buf, (i, out)| {
            let row = s.row(i);
            packed_row(row, buf);
            let (_, kth, _) = buf.select_nth_unstable(k - 1);
            let limit = *kth;
            for (j, (m, v)) in out.iter_mut().zip(row).enumerate() {
                *m = ((u64::from(key(v.to_f32())) << 32) | j as u64) <= limit;
            }
        });
    mask
}

fn n_of_m<T: Element>(s: MatRef<T>, n: usize, m: usize) -> Vec<bool> {
    let cols = s.cols();
    let mut mask = vec![false; s.data().len()];
    if cols == 0 {
        return mask;
    }
    mask.par_chunks_mut(cols)
        .enumerate()
        .for_each_init(Vec::new, |buf, (i, out)| {
            for (out_g, row_g) in out.chunks_mut(m).zip(s.row(i).chunks(m)) {
                packed_row(row_g, buf);
                buf.select_nth_unstable(n - 1);
                for p in &buf[..n] {
                    out_g[(p & 0xffff_ffff) as usize] = true;
                }
            }
        });
    mask
}

/// Rows per parallel task for whole-matrix passes.
fn row_block(rows: usize) -> usize {
    (rows / (rayon::current_num_threads() * 4)).max(1)
}

/// Exact `k` smallest of the whole matrix, ties in row-major order: a two-pass
/// radix select finds the k-th key, then equal keys are handed out by row.
fn per_matrix<T: Element>(s: MatRef<T>, k: usize) -> Vec<bool> {
    let (rows, cols) = (s.rows(), s.cols());
    let mut mask = vec![false; s.data().len()];
    if k == 0 || cols == 0 {
        return mask;
    }
    let block = row_block(rows);
    let histogram = |select: &(dyn Fn(u32) -> Option<usize> + Sync)| -> Vec<usize> {
        (0..rows)
            .into_par_iter()
            .step_by(block)
            .map(|r0| {
                let mut h = vec![0usize; 1 << 16];
                for i in r0..(r0 + block).min(rows) {
                    for v in s.row(i) {
                        if let Some(b) = select(key(v.to_f32())) {
                            h[b] += 1;
                        }
                    }
                }
                h
            })
            .reduce(
                || vec![0usize; 1 << 16],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            )
    };
    // Returns (bin holding the rank-th smallest, count below that bin).
    let locate = |h: &[usize], rank: usize| -> (u32, usize) {
        let mut below = 0;
        for (b, &c) in h.iter().enumerate() {
            if below + c >= rank {
                return (b as u32, below);
            }
            below += c;
        }
        unreachable!("rank {rank} exceeds the histogram total {below}")
    };
    let (high, below_high) = locate(&histogram(&|k| Some((k >> 16) as usize)), k);
    let low_hist = histogram(&|k| (k >> 16 == high).then_some((k & 0xffff) as usize));
    let (low, below_low) = locate(&low_hist, k - below_high);
    let threshold = (high << 16) | low;
    let mut ties_left = k - below_high - below_low;

    let equal: Vec<usize> = (0..rows)
        .into_par_iter()
        .map(|i| {
            s.row(i)
                .iter()
                .filter(|v| key(v.to_f32()) == threshold)
                .count()
        })
        .collect();
    let quota: Vec<usize> = equal
        .iter()
        .map(|&e| {
            let take = e.min(ties_left);
            ties_left -= take;
            take
        })
        .collect();
    mask.par_chunks_mut(cols).enumerate().for_each(|(i, out)| {
        let mut take = quota[i];
        for (m, v) in out.iter_mut().zip(s.row(i)) {
            let kv = key(v.to_f32());
            *m = kv < threshold || (kv == threshold && take > 0);
            if kv == threshold && take > 0 {
                take -= 1;
            }
        }
    });
    mask
}

/// Wanda's adaptive per-row variant with its exact α search, but an exact
/// per-row count (no `<=` threshold that would over-prune ties).
fn adaptive<T: Element>(s: MatRef<T>, sparsity: f64, name: &str) -> Result<Vec<bool>> {
    let (rows, cols) = (s.rows(), s.cols());
    if let Some(pos) = s.data().iter().position(|v| v.to_f32() < 0.0) {
        return Err(Error::invalid(
            name,
            format!(
                "the adaptive pattern needs non-negative scores; row {}, column {} is negative",
                pos / cols.max(1),
                pos % cols.max(1)
            ),
        ));
    }
    // Per row: the stable ascending order, the running sums along it, the total.
    let sorted: Vec<(Vec<u32>, Vec<f64>, f64)> = (0..rows)
        .into_par_iter()
        .map(|i| {
            let row = s.row(i);
            let mut buf = Vec::with_capacity(cols);
            packed_row(row, &mut buf);
            buf.sort_unstable();
            let order: Vec<u32> = buf.iter().map(|p| (p & 0xffff_ffff) as u32).collect();
            let mut acc = 0.0f64;
            let cum = order
                .iter()
                .map(|&j| {
                    acc += f64::from(row[j as usize].to_f32());
                    acc
                })
                .collect();
            let total = row.iter().fold(0.0f64, |t, v| t + f64::from(v.to_f32()));
            (order, cum, total)
        })
        .collect();
    let counts = |alpha: f64| -> Vec<usize> {
        sorted
            .par_iter()
            .map(|(_, cum, total)| cum.partition_point(|&c| c <= alpha * total))
            .collect()
    };
    let numel = (rows * cols).max(1) as f64;
    let achieved = |c: &[usize]| c.iter().sum::<usize>() as f64 / numel;
    let (mut alpha, mut lo, mut hi) = (0.4f64, 0.0f64, 0.8f64);
    let mut c = counts(alpha);
    while (achieved(&c) - sparsity).abs() > 0.001 && hi - lo >= 0.001 {
        if achieved(&c) > sparsity {
            hi = alpha;
            alpha = (alpha + lo) / 2.0;
        } else {
            lo = alpha;
            alpha = (alpha + hi) / 2.0;
        }
        c = counts(alpha);
    }
    let mut mask = vec![false; rows * cols];
    if cols > 0 {
        mask.par_chunks_mut(cols).enumerate().for_each(|(i, out)| {
            for &j in &sorted[i].0[..c[i]] {
                out[j as usize] = true;
            }
        });
    }
    Ok(mask)
}

/// Zeroes the weights the mask marks; returns how many were marked.
pub fn apply<T: Element>(weights: &mut [T], mask: &[bool]) -> Result<usize> {
    if weights.len() != mask.len() {
        return Err(Error::ShapeMismatch {
            arg: "mask".into(),
            expected: format!("{} elements (the weight's)", weights.len()),
            got: format!("{} elements", mask.len()),
        });
    }
    const CHUNK: usize = 1 << 16;
    Ok(weights
        .par_chunks_mut(CHUNK)
        .zip(mask.par_chunks(CHUNK))
        .map(|(w, m)| {
            let mut n = 0;
            for (x, &p) in w.iter_mut().zip(m) {
                if p {
                    *x = T::ZERO;
                    n += 1;
                }
            }
            n
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stable_reference(row: &[f32], k: usize) -> Vec<bool> {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap());
        let mut m = vec![false; row.len()];
        idx[..k].iter().for_each(|&j| m[j] = true);
        m
    }

    fn small_values() -> impl Strategy<Value = Vec<f32>> {
        // Few distinct values, to force ties.
        prop::collection::vec(
            prop::sample::select(vec![-1.5f32, -0.0, 0.0, 0.25, 0.5, 2.0]),
            1..200,
        )
    }

    proptest! {
        #[test]
        fn per_row_is_exact_and_stable(v in small_values(), cols in 1usize..17, s in 0.0f64..0.999) {
            let rows = v.len() / cols;
            prop_assume!(rows > 0);
            let data = &v[..rows * cols];
            let m = compute(MatRef::new(data, rows, cols, "s").unwrap(), Pattern::PerRow { sparsity: s }, "").unwrap();
            let k = prune_count(cols, s);
            for i in 0..rows {
                let got = &m[i * cols..(i + 1) * cols];
                prop_assert_eq!(got.iter().filter(|x| **x).count(), k);
                prop_assert_eq!(got.to_vec(), stable_reference(&data[i * cols..(i + 1) * cols], k));
            }
        }

        #[test]
        fn per_matrix_is_exact_and_stable(v in small_values(), cols in 1usize..17, s in 0.0f64..0.999) {
            let rows = v.len() / cols;
            prop_assume!(rows > 0);
            let data = &v[..rows * cols];
            let m = compute(MatRef::new(data, rows, cols, "s").unwrap(), Pattern::PerMatrix { sparsity: s }, "").unwrap();
            prop_assert_eq!(m, stable_reference(data, prune_count(rows * cols, s)));
        }

        #[test]
        fn n_of_m_holds(v in small_values(), groups in 1usize..5) {
            let cols = 4 * groups;
            let rows = v.len() / cols;
            prop_assume!(rows > 0);
            let data = &v[..rows * cols];
            let m = compute(MatRef::new(data, rows, cols, "s").unwrap(), Pattern::NM { n: 2, m: 4 }, "").unwrap();
            for (mg, dg) in m.chunks(4).zip(data.chunks(4)) {
                prop_assert_eq!(mg.to_vec(), stable_reference(dg, 2));
            }
        }

        #[test]
        fn adaptive_reaches_target(v in prop::collection::vec(0.0f32..10.0, 400..800), s in 0.2f64..0.8) {
            let cols = 20;
            let rows = v.len() / cols;
            let data = &v[..rows * cols];
            let m = compute(MatRef::new(data, rows, cols, "s").unwrap(), Pattern::AdaptivePerRow { sparsity: s }, "").unwrap();
            // Within each row the pruned set is a prefix of the stable order.
            for i in 0..rows {
                let got = &m[i * cols..(i + 1) * cols];
                let k = got.iter().filter(|x| **x).count();
                prop_assert_eq!(got.to_vec(), stable_reference(&data[i * cols..(i + 1) * cols], k));
            }
        }
    }

    #[test]
    fn apply_zeroes_each_dtype() {
        let mask = [true, false, true, false];
        let mut a = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(apply(&mut a, &mask).unwrap(), 2);
        assert_eq!(a, [0.0, 2.0, 0.0, 4.0]);
        let mut b = [half::f16::ONE; 4];
        apply(&mut b, &mask).unwrap();
        assert_eq!(b.map(half::f16::to_f32), [0.0, 1.0, 0.0, 1.0]);
        let mut c = [half::bf16::NEG_ONE; 4];
        apply(&mut c, &mask).unwrap();
        assert_eq!(c.map(half::bf16::to_f32), [0.0, -1.0, 0.0, -1.0]);
        assert!(apply(&mut c, &mask[..3]).is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        let d = [0.0f32; 6];
        let s = MatRef::new(&d, 1, 6, "s").unwrap();
        assert!(compute(s, Pattern::NM { n: 4, m: 4 }, "t").is_err());
        let e = compute(s, Pattern::NM { n: 2, m: 4 }, "layer.w")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer.w") && e.contains("multiple of M = 4"),
            "{e}"
        );
        assert!(compute(s, Pattern::PerRow { sparsity: 1.0 }, "t").is_err());
        assert!(compute(s, Pattern::PerRow { sparsity: f64::NAN }, "t").is_err());
    }
}
