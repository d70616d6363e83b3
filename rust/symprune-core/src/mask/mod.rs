//! Masks from scores (methods.md §4): `true` marks a weight to prune.
//!
//! Counts are exact and ties are broken by the lower index first (a stable
//! ascending sort): within a row by column, over a whole matrix in row-major
//! order. Scores are ranked through an order-preserving integer key of their
//! `f32` value (`-0 == +0`); f16/bf16 scores are keyed from their bits widened
//! to 32, which orders them exactly as their `f32` values.
//!
//! Per-row and N:M masks make one pass over the scores, checking finiteness
//! on the way, and write each mask byte once:
//!
//! - per row, the keys pass also keeps the keys inside a bracket around the
//!   k-th taken from a sorted sample of the row; a few more sample-bracketed
//!   compactions of the (in-cache) candidates leave at most 128, sorted by a
//!   network; the mask is then `key < T` plus the first ties by column, or
//!   `key <= T` (`kth`, `per_row_one`);
//! - N:M ranks each key within its group by lane-wise compares on groups
//!   transposed into registers.
//!
//! Both are written once and compiled twice, for the baseline target and (on
//! x86-64, chosen at run time) for AVX2 with hand-written compaction, sorting
//! network and N:M kernels; the results are identical.
//!
//! The module's files, one idea each:
//!
//! - this file: [`Pattern`], the entry points [`compute`] and [`apply`], and
//!   the sparsity checks;
//! - `keys.rs`: order keys of scores and the rows the kernels read;
//! - `isa.rs`: the instruction set chosen at run time, and dispatch on it;
//! - `rows.rs`: masks made row by row in parallel;
//! - `select.rs`: the exact per-row select;
//! - `nm.rs`: N:M masks;
//! - `matrix.rs`: the exact per-matrix select;
//! - `adaptive.rs`: Wanda's adaptive per-row variant;
//! - `avx2.rs`: the hand-written AVX2 kernels (x86-64).

mod adaptive;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod isa;
mod keys;
mod matrix;
mod nm;
mod rows;
mod select;
#[cfg(test)]
mod testutil;

pub(crate) use keys::key;

use crate::dtype::{Element, MatRef};
use crate::error::{Error, Result};
use isa::Isa;
use keys::{row_is_finite, Src};
use rayon::prelude::*;
use std::any::TypeId;

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

/// The mask of `scores` (any float dtype) under `pattern`.
pub fn compute<T: Element>(scores: MatRef<T>, pattern: Pattern, tensor: &str) -> Result<Vec<bool>> {
    let name = if tensor.is_empty() { "scores" } else { tensor };
    let isa = Isa::detect();
    let valid = pattern.check(scores.cols(), name).and_then(|()| {
        if scores.cols() > u32::MAX as usize {
            Err(Error::invalid(
                name,
                "more than 2^32 columns are not supported",
            ))
        } else {
            Ok(())
        }
    });
    if let Err(e) = valid {
        // A non-finite score is reported first, whatever else is wrong.
        check_finite(scores, name, isa)?;
        return Err(e);
    }
    // Per-row and N:M check finiteness inside their single pass over the
    // scores; the first bad value (row-major) is then found by `ensure_finite`.
    let (mask, finite) = match pattern {
        Pattern::PerRow { sparsity } => {
            select::per_row(scores, prune_count(scores.cols(), sparsity), isa)
        }
        Pattern::NM { n, m } => nm::n_of_m(scores, n, m, isa),
        Pattern::PerMatrix { sparsity } => {
            check_finite(scores, name, isa)?;
            let k = prune_count(scores.data().len(), sparsity);
            (matrix::per_matrix(scores, k), true)
        }
        Pattern::AdaptivePerRow { sparsity } => {
            check_finite(scores, name, isa)?;
            (adaptive::adaptive(scores, sparsity, name)?, true)
        }
    };
    if !finite {
        scores.ensure_finite(name)?;
    }
    Ok(mask)
}

/// Fails like [`MatRef::ensure_finite`], after a fast parallel scan.
fn check_finite<T: Element>(s: MatRef<T>, name: &str, isa: Isa) -> Result<()> {
    let ok = s
        .data()
        .par_chunks(1 << 16)
        .all(|c| row_is_finite(Src::of(c), isa));
    if ok {
        Ok(())
    } else {
        s.ensure_finite(name)
    }
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
        .map(|(w, m)| zero_masked(w, m))
        .sum())
}

/// Zeroes `w` where `m` is set; returns how many. Branch-free on the bits of
/// f32/f16/bf16 (whose zero is all bits clear): a random mask would
/// mispredict a branch about half the time.
fn zero_masked<T: Element>(w: &mut [T], m: &[bool]) -> usize {
    macro_rules! clear {
        ($bits:ty) => {{
            // SAFETY: T is f32, f16 or bf16 (by the TypeId checks below):
            // plain `$bits`-sized floats (the half types repr(transparent)).
            let w =
                unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<$bits>(), w.len()) };
            let mut n = 0;
            for (x, &p) in w.iter_mut().zip(m) {
                *x &= <$bits>::from(p).wrapping_sub(1);
                n += usize::from(p);
            }
            n
        }};
    }
    let id = TypeId::of::<T>();
    if id == TypeId::of::<f32>() {
        clear!(u32)
    } else if id == TypeId::of::<half::f16>() || id == TypeId::of::<half::bf16>() {
        clear!(u16)
    } else {
        let mut n = 0;
        for (x, &p) in w.iter_mut().zip(m) {
            if p {
                *x = T::ZERO;
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn non_finite_scores_are_refused_with_their_place() {
        let mut d = vec![0.5f32; 3 * 600];
        d[600 + 17] = f32::NAN;
        d[2 * 600 + 3] = f32::INFINITY;
        let s = MatRef::new(&d, 3, 600, "s").unwrap();
        for p in [
            Pattern::PerRow { sparsity: 0.5 },
            Pattern::PerRow { sparsity: 0.0 },
            Pattern::NM { n: 2, m: 4 },
            Pattern::PerMatrix { sparsity: 0.5 },
            Pattern::AdaptivePerRow { sparsity: 0.5 },
            Pattern::NM { n: 2, m: 7 }, // invalid too: the non-finite value wins
        ] {
            match compute(s, p, "w") {
                Err(Error::NonFinite {
                    row: 1, col: 17, ..
                }) => {}
                other => panic!("{p:?}: {other:?}"),
            }
        }
        let h = [
            half::f16::ONE,
            half::f16::INFINITY,
            half::f16::ONE,
            half::f16::ONE,
        ];
        let e = compute(
            MatRef::new(&h, 1, 4, "s").unwrap(),
            Pattern::NM { n: 2, m: 4 },
            "w",
        );
        assert!(
            matches!(e, Err(Error::NonFinite { row: 0, col: 1, .. })),
            "{e:?}"
        );
        let b = [
            half::bf16::ONE,
            half::bf16::ONE,
            half::bf16::NAN,
            half::bf16::ONE,
        ];
        let e = compute(
            MatRef::new(&b, 2, 2, "s").unwrap(),
            Pattern::PerRow { sparsity: 0.5 },
            "w",
        );
        assert!(
            matches!(e, Err(Error::NonFinite { row: 1, col: 0, .. })),
            "{e:?}"
        );
        // The largest finite values pass.
        let h = [
            half::f16::MAX,
            half::f16::MIN,
            half::f16::ONE,
            half::f16::ZERO,
        ];
        assert!(compute(
            MatRef::new(&h, 1, 4, "s").unwrap(),
            Pattern::PerRow { sparsity: 0.5 },
            "w"
        )
        .is_ok());
        let b = [
            half::bf16::MAX,
            half::bf16::MIN,
            half::bf16::ONE,
            half::bf16::ZERO,
        ];
        assert!(compute(
            MatRef::new(&b, 1, 4, "s").unwrap(),
            Pattern::PerRow { sparsity: 0.5 },
            "w"
        )
        .is_ok());
    }
}
