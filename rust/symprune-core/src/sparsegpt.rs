//! SparseGPT's column loop on the CPU (docs/methods.md §6): OBS pruning with
//! lazy block updates, given the upper Cholesky factor `U` of the damped
//! inverse Hessian (`H⁻¹ = UᵀU`, computed by the caller).
//!
//! Rows are independent once a block's mask is known: the unstructured mask
//! of a block is chosen across all rows at the block's start (the
//! `floor(s · rows · width)` smallest `w² / U_jj²`, ties by row-major index
//! within the block), N:M per row at every `M`-th column on the already
//! updated weights (ties to the lower column). Each row then runs the
//! column-by-column error update inside the block and the lazy update of the
//! columns to its right, rows in parallel. Float32 throughout, as the torch
//! path; only the summation order differs from it.

use crate::error::{Error, Result};
use crate::mask::Pattern;
use rayon::prelude::*;

/// What SparseGPT prunes: a fraction of every block, or `n` of every `m`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Unstructured { sparsity: f64 },
    NM { n: usize, m: usize },
}

impl Target {
    /// SparseGPT's target for a mask pattern: every unstructured pattern
    /// selects per block (§6), N:M stays N:M.
    pub fn of(pattern: Pattern) -> Target {
        match pattern {
            Pattern::NM { n, m } => Target::NM { n, m },
            Pattern::PerRow { sparsity }
            | Pattern::PerMatrix { sparsity }
            | Pattern::AdaptivePerRow { sparsity } => Target::Unstructured { sparsity },
        }
    }
}

/// Prunes the row-major `rows x cols` weight in place with the upper factor
/// `hinv` (`cols x cols`, row-major) in blocks of `blocksize` columns;
/// returns the mask (true = pruned). `tensor` names the weight in errors.
pub fn prune(
    weight: &mut [f32],
    rows: usize,
    cols: usize,
    hinv: &[f32],
    blocksize: usize,
    target: Target,
    tensor: &str,
) -> Result<Vec<bool>> {
    check(weight, rows, cols, hinv, blocksize, target, tensor)?;
    let mut mask = vec![false; rows * cols];
    for i1 in (0..cols).step_by(blocksize) {
        let i2 = (i1 + blocksize).min(cols);
        let diag: Vec<f32> = (i1..i2).map(|j| hinv[j * cols + j]).collect();
        if let Target::Unstructured { sparsity } = target {
            block_mask(weight, &mut mask, cols, i1, &diag, sparsity);
        }
        weight
            .par_chunks_mut(cols)
            .zip(mask.par_chunks_mut(cols))
            .for_each_init(
                || vec![0f32; blocksize],
                |err, (w, m)| update_row(w, m, hinv, cols, i1, i2, &diag, target, err),
            );
    }
    Ok(mask)
}

fn check(
    weight: &[f32],
    rows: usize,
    cols: usize,
    hinv: &[f32],
    blocksize: usize,
    target: Target,
    tensor: &str,
) -> Result<()> {
    let fail = |msg: String| Err(Error::invalid(tensor, msg));
    if rows.checked_mul(cols) != Some(weight.len()) {
        return fail(format!(
            "the weight holds {} elements, not {rows} x {cols}",
            weight.len()
        ));
    }
    if cols.checked_mul(cols) != Some(hinv.len()) {
        return fail(format!(
            "the inverse Hessian factor holds {} elements, not {cols} x {cols}",
            hinv.len()
        ));
    }
    if blocksize == 0 {
        return fail("blocksize must be at least 1".into());
    }
    if (0..cols).any(|j| hinv[j * cols + j].partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
    {
        return fail(
            "the inverse Hessian factor has a diagonal entry that is not positive; pass the \
             upper Cholesky factor of the damped inverse Hessian"
                .into(),
        );
    }
    match target {
        Target::Unstructured { sparsity } if !(0.0..1.0).contains(&sparsity) => {
            fail(format!("sparsity {sparsity} is not in [0, 1)"))
        }
        Target::NM { n, m } if n == 0 || n >= m || cols % m != 0 => fail(format!(
            "{n}:{m} needs 0 < N < M and the {cols} input columns a multiple of M"
        )),
        _ => Ok(()),
    }
}

/// Marks the `floor(s · rows · width)` smallest `w² / d²` of the block at
/// columns `i1..i1 + d.len()`, ties by row-major index within the block.
fn block_mask(weight: &[f32], mask: &mut [bool], cols: usize, i1: usize, d: &[f32], s: f64) {
    let width = d.len();
    let rows = weight.len() / cols;
    let count = (s * (rows * width) as f64).floor() as usize;
    if count == 0 {
        return;
    }
    let mut keys: Vec<(f32, u32)> = weight
        .par_chunks(cols)
        .enumerate()
        .flat_map_iter(|(r, w)| {
            (0..width).map(move |k| {
                let v = w[i1 + k];
                ((v * v) / (d[k] * d[k]), (r * width + k) as u32)
            })
        })
        .collect();
    let by_score = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if count < keys.len() {
        keys.select_nth_unstable_by(count, by_score);
    }
    for &(_, at) in &keys[..count] {
        let (r, k) = (at as usize / width, at as usize % width);
        mask[r * cols + i1 + k] = true;
    }
}

/// One row's pass over the block `i1..i2` and its lazy update of the
/// columns right of it; `err` is scratch of at least the block's width.
#[allow(clippy::too_many_arguments)]
fn update_row(
    w: &mut [f32],
    m: &mut [bool],
    hinv: &[f32],
    cols: usize,
    i1: usize,
    i2: usize,
    diag: &[f32],
    target: Target,
    err: &mut [f32],
) {
    for i in 0..i2 - i1 {
        let c = i1 + i;
        if let Target::NM { n, m: group } = target {
            if i % group == 0 {
                nm_mask(
                    &w[c..c + group],
                    &diag[i..i + group],
                    n,
                    &mut m[c..c + group],
                );
            }
        }
        let q = if m[c] { 0.0 } else { w[c] };
        let e = (w[c] - q) / diag[i];
        if e != 0.0 {
            let h = &hinv[c * cols + c..c * cols + i2];
            for (x, &hv) in w[c..i2].iter_mut().zip(h) {
                *x -= e * hv;
            }
        }
        w[c] = q;
        err[i] = e;
    }
    let (right, width) = (&mut w[i2..], i2 - i1);
    for (k, &e) in err[..width].iter().enumerate() {
        if e != 0.0 {
            let h = &hinv[(i1 + k) * cols + i2..(i1 + k + 1) * cols];
            for (x, &hv) in right.iter_mut().zip(h) {
                *x -= e * hv;
            }
        }
    }
}

/// Marks the `n` smallest `w² / d²` of one group, ties to the lower column.
fn nm_mask(w: &[f32], d: &[f32], n: usize, m: &mut [bool]) {
    let mut order: Vec<usize> = (0..w.len()).collect();
    let score = |k: usize| (w[k] * w[k]) / (d[k] * d[k]);
    order.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)));
    for &k in &order[..n] {
        m[k] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain SparseGPT on f64, written from the reference's loops.
    fn reference(
        w: &[f64],
        rows: usize,
        cols: usize,
        u: &[f64],
        bs: usize,
        t: Target,
    ) -> (Vec<f64>, Vec<bool>) {
        let mut w = w.to_vec();
        let mut mask = vec![false; rows * cols];
        let mut i1 = 0;
        while i1 < cols {
            let i2 = (i1 + bs).min(cols);
            let width = i2 - i1;
            if let Target::Unstructured { sparsity } = t {
                let mut all: Vec<(f64, usize)> = Vec::new();
                for r in 0..rows {
                    for k in 0..width {
                        let (v, d) = (w[r * cols + i1 + k], u[(i1 + k) * cols + i1 + k]);
                        all.push((v * v / (d * d), r * width + k));
                    }
                }
                all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
                let count = (sparsity * (rows * width) as f64).floor() as usize;
                for &(_, at) in &all[..count] {
                    mask[(at / width) * cols + i1 + at % width] = true;
                }
            }
            let mut err = vec![0.0; rows * width];
            for i in 0..width {
                let c = i1 + i;
                let d = u[c * cols + c];
                for r in 0..rows {
                    if let Target::NM { n, m } = t {
                        if i % m == 0 {
                            let mut g: Vec<usize> = (0..m).collect();
                            let s = |k: usize| {
                                let (v, dk) = (w[r * cols + c + k], u[(c + k) * cols + c + k]);
                                v * v / (dk * dk)
                            };
                            g.sort_by(|&a, &b| s(a).partial_cmp(&s(b)).unwrap().then(a.cmp(&b)));
                            for &k in &g[..n] {
                                mask[r * cols + c + k] = true;
                            }
                        }
                    }
                    let x = w[r * cols + c];
                    let q = if mask[r * cols + c] { 0.0 } else { x };
                    let e = (x - q) / d;
                    for j in c..cols {
                        if j < i2 {
                            w[r * cols + j] -= e * u[c * cols + j];
                        }
                    }
                    w[r * cols + c] = q;
                    err[r * width + i] = e;
                }
            }
            for r in 0..rows {
                for j in i2..cols {
                    let mut acc = 0.0;
                    for k in 0..width {
                        acc += err[r * width + k] * u[(i1 + k) * cols + j];
                    }
                    w[r * cols + j] -= acc;
                }
            }
            i1 = i2;
        }
        (w, mask)
    }

    /// A random weight and the upper factor of a damped, correlated inverse Hessian.
    fn layer(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut g = crate::rng::SplitMix64::stream(seed, crate::rng::Axis::Row, 0);
        let mut uniform = move || (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let w: Vec<f32> = (0..rows * cols).map(|_| uniform() as f32).collect();
        // U upper with a dominant positive diagonal stands for chol(H⁻¹)ᵀ.
        let mut u = vec![0f32; cols * cols];
        for i in 0..cols {
            u[i * cols + i] = 1.0 + uniform().abs() as f32;
            for j in i + 1..cols {
                u[i * cols + j] = (0.3 * uniform()) as f32;
            }
        }
        (w, u)
    }

    fn run(rows: usize, cols: usize, bs: usize, t: Target, seed: u64) {
        let (w, u) = layer(rows, cols, seed);
        let mut ours = w.clone();
        let mask = prune(&mut ours, rows, cols, &u, bs, t, "w").unwrap();
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let u64s: Vec<f64> = u.iter().map(|&v| v as f64).collect();
        let (expected, expected_mask) = reference(&w64, rows, cols, &u64s, bs, t);
        assert_eq!(mask, expected_mask, "{rows}x{cols} {t:?}");
        for (k, (&a, &b)) in ours.iter().zip(&expected).enumerate() {
            assert!(
                (a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{k}: {a} vs {b}"
            );
            assert_eq!(mask[k], a == 0.0, "{k}: pruned exactly where masked");
        }
        let pruned = mask.iter().filter(|&&p| p).count();
        match t {
            Target::NM { n, m } => assert_eq!(pruned, rows * cols / m * n),
            Target::Unstructured { sparsity } => {
                let mut expected = 0;
                for i1 in (0..cols).step_by(bs) {
                    let width = bs.min(cols - i1);
                    expected += (sparsity * (rows * width) as f64).floor() as usize;
                }
                assert_eq!(pruned, expected);
            }
        }
    }

    #[test]
    fn equals_a_plain_reference_on_odd_shapes() {
        for (rows, cols, bs) in [(7, 24, 8), (13, 40, 16), (5, 37, 128), (1, 12, 5)] {
            run(rows, cols, bs, Target::Unstructured { sparsity: 0.5 }, 1);
            run(rows, cols, bs, Target::Unstructured { sparsity: 0.6 }, 2);
        }
        for (rows, cols, bs, n, m) in [(7, 24, 8, 2, 4), (9, 48, 16, 4, 8), (3, 16, 128, 2, 4)] {
            run(rows, cols, bs, Target::NM { n, m }, 3);
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let (mut w, u) = layer(4, 8, 0);
        let t = Target::Unstructured { sparsity: 0.5 };
        assert!(prune(&mut w, 4, 9, &u, 4, t, "w").is_err());
        assert!(prune(&mut w, 4, 8, &u[..60], 4, t, "w").is_err());
        assert!(prune(&mut w, 4, 8, &u, 0, t, "w").is_err());
        assert!(prune(&mut w, 4, 8, &u, 4, Target::NM { n: 2, m: 3 }, "w").is_err());
        let mut bad = u.clone();
        bad[9] = 0.0;
        let e = prune(&mut w, 4, 8, &bad, 4, t, "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not positive"), "{e}");
    }
}
