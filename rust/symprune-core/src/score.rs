//! Pruning scores, one function per method (methods.md §3). Smaller is more
//! prunable.
//!
//! Numerics, fixed so that any implementation can match bit for bit:
//! element-wise products and quotients are `f32`; reductions along a row or a
//! column (sums, ℓp norms, means) accumulate in `f64`, strictly in index
//! order, and are rounded to `f32` once; powers are taken in `f64` and rounded
//! to `f32` once. A zero row/column norm contributes 0 instead of 0/0.

use crate::dtype::{check_stat, Element, MatRef};
use crate::error::{Error, Result};
use crate::rng::{subset, tensor_key, Axis, SplitMix64};
use rayon::prelude::*;

/// A scoring method and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Score {
    /// `|W|`.
    Magnitude,
    /// `|W| · n_j` (Wanda).
    Wanda,
    /// RIA: `(|W|/colsum + |W|/rowsum) · n_j^a`.
    Ria { a: f64 },
    /// RIA with ℓp norms of the column and the row; `p = 1` is RIA.
    LpRia { p: f64, a: f64 },
    /// RIA over random subsets of each row and column (seeded by the tensor name).
    StochRia {
        beta: f64,
        seed: u64,
        activation: bool,
        a: f64,
    },
    /// `|W| · (‖W_:,j‖₂ + ‖W_i,:‖₂)`.
    Symmetric,
    /// `|W| · (n_j/mean(n) + λ·o_i/mean(o))`.
    SymWanda { lambda: f64 },
    /// `|W| · o_i`.
    OWanda,
}

impl Score {
    /// The method name of the score (one of `vocab::Method::NAMES`).
    pub fn name(&self) -> &'static str {
        match self {
            Score::Magnitude => "magnitude",
            Score::Wanda => "wanda",
            Score::Ria { .. } => "ria",
            Score::LpRia { .. } => "lp-ria",
            Score::StochRia { .. } => "stochria",
            Score::Symmetric => "symmetric",
            Score::SymWanda { .. } => "symwanda",
            Score::OWanda => "owanda",
        }
    }

    /// Which statistics the score reads: (inputs, outputs).
    pub fn needs_stats(&self) -> (bool, bool) {
        match *self {
            Score::Magnitude | Score::Symmetric => (false, false),
            Score::Wanda => (true, false),
            Score::Ria { a } | Score::LpRia { a, .. } => (a != 0.0, false),
            Score::StochRia { activation, a, .. } => (activation && a != 0.0, false),
            Score::SymWanda { .. } => (true, true),
            Score::OWanda => (false, true),
        }
    }
}

/// Activation statistics of one linear layer (methods.md §2): the mean over
/// sequences of per-sequence sums of squares of its inputs and outputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActStats<'a> {
    /// `sq[j]`, one per input column.
    pub in_sq: Option<&'a [f32]>,
    /// `out_sq[i]`, one per output row.
    pub out_sq: Option<&'a [f32]>,
}

/// Scores of `w` under `score`. `tensor` names the matrix in errors and seeds
/// stochastic scores; the result is row-major `f32` of the same shape.
pub fn compute<T: Element>(
    w: MatRef<T>,
    stats: ActStats,
    score: &Score,
    tensor: &str,
) -> Result<Vec<f32>> {
    let name = if tensor.is_empty() { "weight" } else { tensor };
    w.ensure_finite(name)?;
    let (rows, cols) = (w.rows(), w.cols());
    let in_norm = |required: bool| -> Result<Option<Vec<f32>>> {
        match stats.in_sq {
            Some(sq) => {
                check_stat(sq, cols, &format!("{name}: in_sq"))?;
                Ok(Some(sq.iter().map(|v| v.sqrt()).collect()))
            }
            None if required => Err(Error::invalid(
                format!("{name}: in_sq"),
                "this method needs input activation statistics; calibrate first or pass `in_sq`",
            )),
            None => Ok(None),
        }
    };
    let out_norm = || -> Result<Vec<f32>> {
        let sq = stats.out_sq.ok_or_else(|| {
            Error::invalid(
                format!("{name}: out_sq"),
                "this method needs output activation statistics; calibrate first or pass `out_sq`",
            )
        })?;
        check_stat(sq, rows, &format!("{name}: out_sq"))?;
        Ok(sq.iter().map(|v| v.sqrt()).collect())
    };

    Ok(match *score {
        Score::Magnitude => fill(w, |_, _, x| x),
        Score::Wanda => {
            let n = in_norm(true)?.unwrap_or_default();
            fill(w, |_, j, x| x * n[j])
        }
        Score::OWanda => {
            let o = out_norm()?;
            fill(w, |i, _, x| x * o[i])
        }
        Score::Ria { a } => {
            let act = activation_factor(in_norm(a != 0.0)?, a, cols, name)?;
            let (c, r) = abs_sums(w);
            relative_importance(w, &c, &r, &act)
        }
        Score::LpRia { p, a } => {
            if !(p.is_finite() && p > 0.0) {
                return Err(Error::invalid(
                    "p",
                    format!("{p} must be a finite number > 0"),
                ));
            }
            let act = activation_factor(in_norm(a != 0.0)?, a, cols, name)?;
            let c = to_f32(
                col_reduce(w, |x| lp_term(x, p))
                    .into_iter()
                    .map(|s| lp_root(s, p))
                    .collect(),
            );
            let r = to_f32(
                row_reduce(w, |x| lp_term(x, p))
                    .into_iter()
                    .map(|s| lp_root(s, p))
                    .collect(),
            );
            relative_importance(w, &c, &r, &act)
        }
        Score::StochRia {
            beta,
            seed,
            activation,
            a,
        } => {
            if !(beta > 0.0 && beta <= 1.0) {
                return Err(Error::invalid("beta", format!("{beta} must be in (0, 1]")));
            }
            let act = if activation {
                activation_factor(in_norm(a != 0.0)?, a, cols, name)?
            } else {
                vec![1.0; cols]
            };
            let key = tensor_key(seed, tensor);
            let (c, r) = stochastic_sums(w, beta, key);
            relative_importance(w, &c, &r, &act)
        }
        Score::Symmetric => {
            let c = to_f32(
                col_reduce(w, |x| f64::from(x) * f64::from(x))
                    .into_iter()
                    .map(f64::sqrt)
                    .collect(),
            );
            let r = to_f32(
                row_reduce(w, |x| f64::from(x) * f64::from(x))
                    .into_iter()
                    .map(f64::sqrt)
                    .collect(),
            );
            fill(w, |i, j, x| x * (c[j] + r[i]))
        }
        Score::SymWanda { lambda } => {
            if !(lambda.is_finite() && lambda >= 0.0) {
                return Err(Error::invalid(
                    "lambda",
                    format!("{lambda} must be finite and >= 0"),
                ));
            }
            let n = in_norm(true)?.unwrap_or_default();
            let o = out_norm()?;
            let a = scaled_by_mean(&n, 1.0);
            let b = scaled_by_mean(&o, lambda);
            fill(w, |i, j, x| x * (a[j] + b[i]))
        }
    })
}

/// Magnitude's scores in the weight's own element type: `|w|` is exact in
/// every float type and orders as its `f32` value does, so a mask over these
/// equals the mask over [`compute`]'s scores, from half the bytes for
/// f16/bf16. Non-finite weights are left to the mask, which reports them.
pub fn magnitudes<T: Element>(w: MatRef<T>) -> Vec<T> {
    w.data().par_iter().map(|v| v.abs()).collect()
}

/// Row-parallel element-wise fill: `f(row, col, |w|)`.
fn fill<T: Element>(w: MatRef<T>, f: impl Fn(usize, usize, f32) -> f32 + Sync) -> Vec<f32> {
    let cols = w.cols();
    let mut out = vec![0.0f32; w.data().len()];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols).enumerate().for_each(|(i, dst)| {
        for (j, (d, v)) in dst.iter_mut().zip(w.row(i)).enumerate() {
            *d = f(i, j, v.to_f32().abs());
        }
    });
    out
}

/// `(|W|/c_j + |W|/r_i) · act_j`, a zero norm contributing 0.
fn relative_importance<T: Element>(w: MatRef<T>, c: &[f32], r: &[f32], act: &[f32]) -> Vec<f32> {
    fill(w, |i, j, x| relative(x, c[j], r[i]) * act[j])
}

/// RIA's relative importance of one weight, `|w|/c + |w|/r` in f32, a zero
/// norm contributing 0.
#[inline]
pub(crate) fn relative(x: f32, c: f32, r: f32) -> f32 {
    let by_col = if c > 0.0 { x / c } else { 0.0 };
    let by_row = if r > 0.0 { x / r } else { 0.0 };
    by_col + by_row
}

/// RIA's column and row sums of `|W|`.
pub(crate) fn abs_sums<T: Element>(w: MatRef<T>) -> (Vec<f32>, Vec<f32>) {
    (
        to_f32(col_reduce(w, f64::from)),
        to_f32(row_reduce(w, f64::from)),
    )
}

/// `n_j^a` rounded to f32 (`a = 0` needs no statistics and gives 1).
pub(crate) fn activation_factor(
    norm: Option<Vec<f32>>,
    a: f64,
    cols: usize,
    name: &str,
) -> Result<Vec<f32>> {
    if !a.is_finite() || a < 0.0 {
        return Err(Error::invalid(
            format!("{name}: a"),
            format!("activation exponent {a} must be finite and >= 0"),
        ));
    }
    Ok(match norm {
        Some(n) if a != 0.0 => n.iter().map(|&v| f64::from(v).powf(a) as f32).collect(),
        _ => vec![1.0; cols],
    })
}

pub(crate) fn lp_term(x: f32, p: f64) -> f64 {
    let x = f64::from(x);
    if p == 1.0 {
        x
    } else if p == 2.0 {
        x * x
    } else {
        x.powf(p)
    }
}

pub(crate) fn lp_root(s: f64, p: f64) -> f64 {
    if p == 1.0 {
        s
    } else if p == 2.0 {
        s.sqrt()
    } else {
        s.powf(1.0 / p)
    }
}

fn to_f32(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

/// `scale · v / mean(v)` rounded to f32; all zeros when the mean is 0.
fn scaled_by_mean(v: &[f32], scale: f64) -> Vec<f32> {
    let mean = v.iter().fold(0.0f64, |s, &x| s + f64::from(x)) / v.len().max(1) as f64;
    v.iter()
        .map(|&x| {
            if mean > 0.0 {
                (scale * f64::from(x) / mean) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// Per-row sums of `term(|w|)`, each in column order.
pub(crate) fn row_reduce<T: Element>(w: MatRef<T>, term: impl Fn(f32) -> f64 + Sync) -> Vec<f64> {
    (0..w.rows())
        .into_par_iter()
        .map(|i| w.row(i).iter().fold(0.0, |s, v| s + term(v.to_f32().abs())))
        .collect()
}

/// Per-column sums of `term(|w|)`, each in row order. Columns are split in
/// blocks across threads so every column is still summed sequentially.
pub(crate) fn col_reduce<T: Element>(w: MatRef<T>, term: impl Fn(f32) -> f64 + Sync) -> Vec<f64> {
    const BLOCK: usize = 256;
    let cols = w.cols();
    let mut out = vec![0.0f64; cols];
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, acc)| {
        let start = b * BLOCK;
        for i in 0..w.rows() {
            let row = &w.row(i)[start..start + acc.len()];
            for (s, v) in acc.iter_mut().zip(row) {
                *s += term(v.to_f32().abs());
            }
        }
    });
    out
}

/// stochRIA's column and row sums of `|W|` over random subsets, in draw order.
fn stochastic_sums<T: Element>(w: MatRef<T>, beta: f64, key: u64) -> (Vec<f32>, Vec<f32>) {
    let (rows, cols) = (w.rows(), w.cols());
    let size = |len: usize| ((beta * len as f64 + 0.5).floor() as usize).clamp(1, len.max(1));
    let (k_row, k_col) = (size(cols), size(rows));
    let r = (0..rows)
        .into_par_iter()
        .map(|i| {
            let row = w.row(i);
            let pick = subset(
                cols,
                k_row,
                &mut SplitMix64::stream(key, Axis::Row, i as u64),
            );
            pick.iter()
                .fold(0.0f64, |s, &j| s + f64::from(row[j].to_f32().abs())) as f32
        })
        .collect();
    let data = w.data();
    let c = (0..cols)
        .into_par_iter()
        .map(|j| {
            let pick = subset(
                rows,
                k_col,
                &mut SplitMix64::stream(key, Axis::Col, j as u64),
            );
            pick.iter().fold(0.0f64, |s, &i| {
                s + f64::from(data[i * cols + j].to_f32().abs())
            }) as f32
        })
        .collect();
    (c, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(data: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
        MatRef::new(data, rows, cols, "w").unwrap()
    }

    #[test]
    fn masks_over_magnitudes_equal_masks_over_the_magnitude_scores() {
        use crate::mask::{self, Pattern};
        use half::{bf16, f16};
        let (rows, cols) = (7, 48);
        let mut g = crate::rng::SplitMix64::stream(5, crate::rng::Axis::Row, 0);
        // Few distinct values of both signs: ties everywhere, as in dequantized weights.
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| ((g.next_u64() % 9) as f32 - 4.0) * 0.125)
            .collect();
        fn check<T: Element>(w: &[T], rows: usize, cols: usize) {
            let m = MatRef::new(w, rows, cols, "w").unwrap();
            let scores = compute(m, ActStats::default(), &Score::Magnitude, "w").unwrap();
            let wide = MatRef::new(&scores, rows, cols, "w").unwrap();
            let own = magnitudes(m);
            let narrow = MatRef::new(&own, rows, cols, "w").unwrap();
            for p in [
                Pattern::PerRow { sparsity: 0.5 },
                Pattern::NM { n: 2, m: 4 },
                Pattern::PerMatrix { sparsity: 0.6 },
            ] {
                let a = mask::compute(wide, p, "w").unwrap();
                assert_eq!(a, mask::compute(narrow, p, "w").unwrap(), "{p:?}");
            }
        }
        check(&w, rows, cols);
        check(
            &w.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(),
            rows,
            cols,
        );
        check(
            &w.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
            rows,
            cols,
        );
    }

    #[test]
    fn wanda_is_abs_times_norm() {
        let w = [1.0, -2.0, 3.0, -4.0];
        let sq = [4.0, 9.0];
        let s = compute(
            mat(&w, 2, 2),
            ActStats {
                in_sq: Some(&sq),
                out_sq: None,
            },
            &Score::Wanda,
            "",
        )
        .unwrap();
        assert_eq!(s, vec![2.0, 6.0, 6.0, 12.0]);
    }

    #[test]
    fn stochria_with_full_subsets_is_ria() {
        let w: Vec<f32> = (0..35).map(|v| ((v * 7919) % 23) as f32 - 11.0).collect();
        let sq: Vec<f32> = (0..7).map(|v| v as f32 + 0.5).collect();
        let st = ActStats {
            in_sq: Some(&sq),
            out_sq: None,
        };
        let ria = compute(mat(&w, 5, 7), st, &Score::Ria { a: 0.5 }, "t").unwrap();
        let stoch = Score::StochRia {
            beta: 1.0,
            seed: 3,
            activation: true,
            a: 0.5,
        };
        assert_eq!(compute(mat(&w, 5, 7), st, &stoch, "t").unwrap(), ria);
        let lp1 = Score::LpRia { p: 1.0, a: 0.5 };
        assert_eq!(compute(mat(&w, 5, 7), st, &lp1, "t").unwrap(), ria);
    }

    #[test]
    fn errors_name_the_problem() {
        let w = [1.0, f32::NAN, 3.0, 4.0];
        let e = compute(
            mat(&w, 2, 2),
            ActStats::default(),
            &Score::Magnitude,
            "layer.q",
        )
        .unwrap_err();
        assert!(e.to_string().contains("layer.q") && e.to_string().contains("row 0, column 1"));
        let w = [1.0, 2.0, 3.0, 4.0];
        let e = compute(mat(&w, 2, 2), ActStats::default(), &Score::Wanda, "x").unwrap_err();
        assert!(e.to_string().contains("in_sq"));
        let sq = [1.0, 2.0, 3.0];
        let e = compute(
            mat(&w, 2, 2),
            ActStats {
                in_sq: Some(&sq),
                out_sq: None,
            },
            &Score::Wanda,
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("expected 2 values"));
    }
}
