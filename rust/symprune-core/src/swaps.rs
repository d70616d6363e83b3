//! Exact-objective swaps (docs/methods.md §9): mask refinement on the true
//! layer-wise reconstruction loss.
//!
//! Weights never change, only the mask (`true` = pruned, row-major, the
//! weight's shape, as in `dsnot.rs`). Row `i` has the loss
//! `L_i = δ_iᵀ H δ_i` with `δ_i = W_i ⊙ pruned_i` and `H` the Gram matrix of
//! the layer's inputs (`in × in`, read as symmetric: its row `p` stands for
//! its column `p`; any positive factor, such as SparseGPT's `2/N`, ranks the
//! swaps the same way). Rows are independent and run in parallel.
//!
//! # Definitions
//!
//! Per row, with `g = H δ`, a kept `p` and a pruned `q`:
//!
//! - `a_p = 2 w_p g_p + w_p² H_pp`: the change of `L` if `p` is pruned;
//! - `b_q = −2 w_q g_q + w_q² H_qq`: the change if `q` is regrown;
//! - `Δ_pq = a_p + b_q − 2 w_p w_q H_pq`: the exact change of the swap
//!   (prune `p`, regrow `q`); once applied, `g += w_p H_p: − w_q H_q:`.
//!
//! # Algorithm
//!
//! Per row, for at most `max_swaps` rounds: in each group (the whole row,
//! unstructured; each group of `M` consecutive columns, N:M), take the `c`
//! kept entries with the smallest `a` and the `c` pruned ones with the
//! smallest `b` (ties: lower column), with `c` = `candidates`; evaluate `Δ`
//! on every pair of a group's block (`c ≥` the group's size: the full 1-swap
//! search); take the smallest `Δ` over all groups (ties: lower `p`, then
//! lower `q`). Apply it if `Δ < −tol · L`, else the row stops. So `L` never
//! increases, every row keeps its count (unstructured: whatever count it
//! has; rows need not agree) and N:M still holds (swaps stay inside a
//! group). Taking the candidates per group keeps an N:M block meaningful: a
//! row-wide pick of `c` would rarely put two candidates into one group; with
//! `c ≥ max(N, M − N)` (2:4 and 4:8 at the default) every in-group pair is
//! evaluated.
//!
//! # Numerics (what a reference must do to match)
//!
//! Everything in f64 from the f32 values of `W` and `H` (exact conversions):
//! `g = Σ_{j pruned} w_j H_j:` in column order (zero weights skipped, which
//! is exact), `L = Σ_{j pruned} w_j g_j` in column order; `a`, `b`, `Δ`
//! evaluated as written above, left to right (`2 w_p g_p` is
//! `(2 · w_p) · g_p`); a swap updates `g_k += w_p H_pk − w_q H_qk` and
//! `L += Δ`. The loss reported at the end is recomputed from the final `g`.
//! `Δ` ties compare as f64 (`−0 = +0`).
//!
//! # Input
//!
//! Refused with an error naming the tensor: a NaN/Inf weight or Gram entry,
//! a Gram matrix that is not `in × in`, a mask of the wrong length or (N:M)
//! not exactly N:M, `candidates = 0`, and a `tol` that is negative or not
//! finite.

use crate::dsnot::{check_nm_mask, Layout};
use crate::dtype::{Element, MatRef};
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::cmp::Ordering;

/// The parameters of `swaps` (docs/methods.md §9).
#[derive(Debug, Clone, PartialEq)]
pub struct Swaps {
    /// Kept and pruned candidates per row (per group under N:M).
    pub candidates: usize,
    /// Swaps per row at most.
    pub max_swaps: usize,
    /// A swap is applied only if it lowers the row's loss by more than
    /// `tol · L` (relative, so any scale of `H` behaves the same).
    pub tol: f64,
}

/// The prototype's setting (docs/methods.md §9) with twice its swaps; the
/// measured choice is to follow (benches/RESULTS.md).
impl Default for Swaps {
    fn default() -> Self {
        Self {
            candidates: 16,
            max_swaps: 32,
            tol: 1e-6,
        }
    }
}

/// What `swaps` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SwapsReport {
    /// Swaps applied in all rows.
    pub swaps: u64,
    /// Swaps applied, per row.
    pub swaps_per_row: Vec<u32>,
    /// Rows with at least one swap (a swap strictly lowers `L`, so the
    /// row's mask differs from its start).
    pub rows_changed: usize,
    /// Rows that stopped (no good enough swap) before `max_swaps`.
    pub rows_stopped: usize,
    /// The most rounds any row ran (a row counts the round it stops in).
    pub cycles: usize,
    /// `Σ_i L_i` of the initial mask.
    pub loss_before: f64,
    /// `Σ_i L_i` of the refined mask.
    pub loss_after: f64,
}

/// A Gram matrix `H` (`n × n`, read as symmetric) and the kernels that read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gram<'a> {
    h: MatRef<'a, f32>,
    /// The kernels run compiled for AVX2 (detected once; the same results).
    avx2: bool,
}

/// Calls the kernel `$f` compiled for AVX2 where `$gram` found it.
macro_rules! kernel {
    ($gram:expr, $f:ident ( $($arg:expr),* )) => {{
        #[cfg(target_arch = "x86_64")]
        if $gram.avx2 {
            // SAFETY: `avx2` is only set when AVX2 was detected.
            return unsafe { avx2::$f($($arg),*) };
        }
        kernels::$f($($arg),*)
    }};
}

impl<'a> Gram<'a> {
    /// `gram` checked for a weight of `cols` input columns: `cols × cols`, finite.
    pub(crate) fn new(gram: MatRef<'a, f32>, cols: usize, name: &str) -> Result<Self> {
        let arg = format!("{name}: gram");
        if (gram.rows(), gram.cols()) != (cols, cols) {
            return Err(Error::ShapeMismatch {
                arg,
                expected: format!("{cols}x{cols} (in x in, the weight's input columns)"),
                got: format!("{}x{}", gram.rows(), gram.cols()),
            });
        }
        gram.ensure_finite(&arg)?;
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        Ok(Self { h: gram, avx2 })
    }

    #[inline]
    fn row(&self, j: usize) -> &'a [f32] {
        self.h.row(j)
    }

    #[inline]
    fn at(&self, p: usize, q: usize) -> f64 {
        f64::from(self.h.row(p)[q])
    }

    /// `g_r += H δ_r` for every row `r` of `deltas` and `g` (each `n` long).
    fn product(&self, deltas: &[f64], g: &mut [f64]) {
        kernel!(self, product(self.h, deltas, g))
    }

    /// `g += w_p H_p: − w_q H_q:`.
    fn update(&self, g: &mut [f64], wp: f64, p: usize, wq: f64, q: usize) {
        kernel!(self, update(g, wp, self.row(p), wq, self.row(q)))
    }

    /// `min_q Δ_pq` over a row whose `b` is `bb` (`+∞` where kept), `t = 2 w_p`.
    fn scan(&self, a: f64, t: f64, bb: &[f64], w: &[f64], p: usize) -> f64 {
        kernel!(self, scan(a, t, bb, w, self.row(p)))
    }
}

/// The kernels, written to auto-vectorize; [`avx2`] compiles the same source
/// for AVX2 (no FMA, so every result is the same).
mod kernels {
    use crate::dtype::MatRef;

    /// Columns of `g` updated per pass over `H` (a tile of `g` stays in L1).
    const BLOCK: usize = 256;

    /// `g_rk += Σ_j δ_rj H_jk` with `j` in column order, zero `δ` skipped
    /// (exact): each row of `H` is read once for all the rows of `deltas`.
    #[inline(always)]
    pub(super) fn product(h: MatRef<f32>, deltas: &[f64], g: &mut [f64]) {
        let n = h.cols();
        if n == 0 {
            return;
        }
        for k0 in (0..n).step_by(BLOCK) {
            let k1 = (k0 + BLOCK).min(n);
            for j in 0..n {
                let hj = &h.row(j)[k0..k1];
                for (dr, gr) in deltas.chunks_exact(n).zip(g.chunks_exact_mut(n)) {
                    let d = dr[j];
                    if d != 0.0 {
                        for (gk, &hk) in gr[k0..k1].iter_mut().zip(hj) {
                            *gk += d * f64::from(hk);
                        }
                    }
                }
            }
        }
    }

    #[inline(always)]
    pub(super) fn update(g: &mut [f64], wp: f64, hp: &[f32], wq: f64, hq: &[f32]) {
        for ((gk, &x), &y) in g.iter_mut().zip(hp).zip(hq) {
            *gk += wp * f64::from(x) - wq * f64::from(y);
        }
    }

    /// `min_k (a + bb_k) − t w_k hp_k`: `Δ` as [`super::RowLoss::pair`]
    /// evaluates it, with `t = 2 w_p`, minimized over lanes.
    #[inline(always)]
    pub(super) fn scan(a: f64, t: f64, bb: &[f64], w: &[f64], hp: &[f32]) -> f64 {
        const LANES: usize = 8;
        let min = |m: f64, d: f64| if d < m { d } else { m };
        let mut acc = [f64::INFINITY; LANES];
        let chunks = bb
            .chunks_exact(LANES)
            .zip(w.chunks_exact(LANES))
            .zip(hp.chunks_exact(LANES));
        for ((b, w), h) in chunks {
            for l in 0..LANES {
                acc[l] = min(acc[l], (a + b[l]) - t * w[l] * f64::from(h[l]));
            }
        }
        let tail = bb.len() - bb.len() % LANES;
        let mut m = acc.into_iter().fold(f64::INFINITY, min);
        for k in tail..bb.len() {
            m = min(m, (a + bb[k]) - t * w[k] * f64::from(hp[k]));
        }
        m
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! [`super::kernels`] compiled for AVX2 (callers check for it first).
    use crate::dtype::MatRef;

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn product(h: MatRef<f32>, deltas: &[f64], g: &mut [f64]) {
        super::kernels::product(h, deltas, g)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn update(g: &mut [f64], wp: f64, hp: &[f32], wq: f64, hq: &[f32]) {
        super::kernels::update(g, wp, hp, wq, hq)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scan(a: f64, t: f64, bb: &[f64], w: &[f64], hp: &[f32]) -> f64 {
        super::kernels::scan(a, t, bb, w, hp)
    }
}

/// `δ = w ⊙ pruned` into `out`.
fn deltas(w: &[f64], pruned: &[bool], out: &mut Vec<f64>) {
    out.clear();
    out.extend(w.iter().zip(pruned).map(|(&x, &p)| if p { x } else { 0.0 }));
}

/// `g = H δ` and `L = δᵀ H δ` of one row (docs/methods.md §9), in f64.
#[derive(Debug, Default)]
pub(crate) struct RowLoss {
    g: Vec<f64>,
    delta: Vec<f64>,
    /// `L`, updated by `+= Δ` at each swap.
    pub(crate) loss: f64,
}

impl RowLoss {
    /// Starts from the row `w` with the pruned set `pruned`.
    pub(crate) fn reset(&mut self, h: Gram, w: &[f64], pruned: &[bool]) {
        deltas(w, pruned, &mut self.delta);
        self.g.clear();
        self.g.resize(w.len(), 0.0);
        h.product(&self.delta, &mut self.g);
        self.loss = self.measure(w, pruned);
    }

    /// Starts from `g = H δ` computed elsewhere (a tile of rows).
    fn start(&mut self, g: &[f64], w: &[f64], pruned: &[bool]) {
        self.g.clear();
        self.g.extend_from_slice(g);
        self.loss = self.measure(w, pruned);
    }

    /// `Σ_{j pruned} w_j g_j`, in column order.
    pub(crate) fn measure(&self, w: &[f64], pruned: &[bool]) -> f64 {
        (0..w.len())
            .filter(|&j| pruned[j])
            .fold(0.0, |s, j| s + w[j] * self.g[j])
    }

    /// `a_p`: the change of `L` if the kept `p` is pruned.
    #[inline]
    pub(crate) fn prune_gain(&self, h: Gram, w: &[f64], p: usize) -> f64 {
        2.0 * w[p] * self.g[p] + w[p] * w[p] * h.at(p, p)
    }

    /// `b_q`: the change of `L` if the pruned `q` is regrown.
    #[inline]
    pub(crate) fn grow_gain(&self, h: Gram, w: &[f64], q: usize) -> f64 {
        -2.0 * w[q] * self.g[q] + w[q] * w[q] * h.at(q, q)
    }

    /// `Δ_pq` from `a_p` and `b_q` (the one expression; `scan` repeats it).
    #[inline]
    fn pair(a: f64, b: f64, wp: f64, wq: f64, hpq: f64) -> f64 {
        a + b - 2.0 * wp * wq * hpq
    }

    /// `Δ_pq`: the exact change of `L` if the kept `p` is pruned and the
    /// pruned `q` regrown.
    pub(crate) fn swap_gain(&self, h: Gram, w: &[f64], p: usize, q: usize) -> f64 {
        let (a, b) = (self.prune_gain(h, w, p), self.grow_gain(h, w, q));
        Self::pair(a, b, w[p], w[q], h.at(p, q))
    }

    /// Applies the swap (prune `p`, regrow `q`) whose `Δ` is `delta`.
    pub(crate) fn apply(&mut self, h: Gram, w: &[f64], p: usize, q: usize, delta: f64) {
        h.update(&mut self.g, w[p], p, w[q], q);
        self.loss += delta;
    }
}

/// Keeps the `c` smallest `(value, column)` entries (in no particular order).
fn keep_smallest(v: &mut Vec<(f64, usize)>, c: usize) {
    // Every value is finite (checked input, f64 arithmetic), so `partial_cmp`
    // is total here; `−0` and `+0` compare equal, ties go by column.
    let by = |x: &(f64, usize), y: &(f64, usize)| {
        x.0.partial_cmp(&y.0)
            .unwrap_or(Ordering::Equal)
            .then(x.1.cmp(&y.1))
    };
    if v.len() > c {
        v.select_nth_unstable_by(c - 1, by);
        v.truncate(c);
    }
}

/// The best swap so far: `(Δ, p, q)`.
#[derive(Debug, Clone, Copy)]
struct Best {
    delta: f64,
    p: usize,
    q: usize,
}

/// Whether `(Δ, p, q)` comes before `best`: smaller `Δ`, then lower `p`, then
/// lower `q`.
#[inline]
fn improves(best: Option<Best>, delta: f64, p: usize, q: usize) -> bool {
    match best {
        None => true,
        Some(b) => delta < b.delta || (delta == b.delta && (p, q) < (b.p, b.q)),
    }
}

/// Rows per parallel task: `g = H δ` is computed for a tile at once, so each
/// row of `H` is read once per tile.
const TILE: usize = 8;

/// Per-thread buffers: a tile's rows in f64, their `δ` and `g`, and a row's.
#[derive(Default)]
struct Scratch {
    w: Vec<f64>,
    delta: Vec<f64>,
    g: Vec<f64>,
    row: RowScratch,
}

#[derive(Default)]
struct RowScratch {
    loss: RowLoss,
    kept: Vec<(f64, usize)>,
    pruned: Vec<(f64, usize)>,
    /// `b` where pruned, `+∞` where kept (the full search over `q`).
    grow: Vec<f64>,
}

struct RowOutcome {
    swaps: u32,
    stopped: bool,
    before: f64,
    after: f64,
}

/// Refines `prune` (row-major, `w`'s shape, `true` = pruned) on the exact
/// loss with the Gram matrix `gram` of the layer's inputs (`in × in`).
/// `layout` is the structure kept: [`Layout::PerRow`] (each row keeps its
/// own count) or N:M (checked, kept). `tensor` names the weight in errors.
pub fn swaps<T: Element>(
    w: MatRef<T>,
    prune: &[bool],
    gram: MatRef<f32>,
    layout: Layout,
    params: &Swaps,
    tensor: &str,
) -> Result<(Vec<bool>, SwapsReport)> {
    let name = if tensor.is_empty() { "weight" } else { tensor };
    let (rows, cols) = (w.rows(), w.cols());
    if params.candidates == 0 {
        return Err(Error::invalid(
            format!("{name}: candidates"),
            "must be at least 1",
        ));
    }
    if !(params.tol.is_finite() && params.tol >= 0.0) {
        return Err(Error::invalid(
            format!("{name}: tol"),
            format!("{} must be finite and >= 0", params.tol),
        ));
    }
    w.ensure_finite(name)?;
    if prune.len() != rows * cols {
        return Err(Error::ShapeMismatch {
            arg: format!("{name}: prune_mask"),
            expected: format!("{rows}x{cols} = {} elements", rows * cols),
            got: format!("{} elements", prune.len()),
        });
    }
    let h = Gram::new(gram, cols, name)?;
    if let Layout::NM { n, m } = layout {
        check_nm_mask(prune, cols, n, m, name)?;
    }
    let mut mask = prune.to_vec();
    if cols == 0 {
        let report = SwapsReport {
            swaps_per_row: vec![0; rows],
            ..SwapsReport::default()
        };
        return Ok((mask, report));
    }
    let search = Search {
        h,
        group: match layout {
            Layout::PerRow => cols,
            Layout::NM { m, .. } => m,
        },
        params,
    };
    let outcomes: Vec<RowOutcome> = mask
        .par_chunks_mut(cols * TILE)
        .enumerate()
        .map_init(Scratch::default, |s, (t, tile)| {
            let first = t * TILE;
            s.w.clear();
            s.w.extend(
                w.data()[first * cols..first * cols + tile.len()]
                    .iter()
                    .map(|x| f64::from(x.to_f32())),
            );
            deltas(&s.w, tile, &mut s.delta);
            s.g.clear();
            s.g.resize(tile.len(), 0.0);
            h.product(&s.delta, &mut s.g);
            tile.chunks_mut(cols)
                .enumerate()
                .map(|(r, out)| {
                    let span = r * cols..(r + 1) * cols;
                    s.row
                        .loss
                        .start(&s.g[span.clone()], &s.w[span.clone()], out);
                    search.row(&s.w[span], out, &mut s.row)
                })
                .collect::<Vec<_>>()
        })
        .flatten()
        .collect();
    let swaps_per_row: Vec<u32> = outcomes.iter().map(|o| o.swaps).collect();
    let report = SwapsReport {
        swaps: swaps_per_row.iter().map(|&s| u64::from(s)).sum(),
        rows_changed: swaps_per_row.iter().filter(|&&s| s > 0).count(),
        rows_stopped: outcomes.iter().filter(|o| o.stopped).count(),
        cycles: outcomes
            .iter()
            .map(|o| o.swaps as usize + usize::from(o.stopped))
            .max()
            .unwrap_or(0),
        loss_before: outcomes.iter().map(|o| o.before).sum(),
        loss_after: outcomes.iter().map(|o| o.after).sum(),
        swaps_per_row,
    };
    Ok((mask, report))
}

/// What every row's search shares.
struct Search<'a> {
    h: Gram<'a>,
    /// Columns per group: the row, or `M`.
    group: usize,
    params: &'a Swaps,
}

impl Search<'_> {
    /// One row: `w` its weights, `out` its mask (refined in place), `s.loss`
    /// already started from the initial mask.
    fn row(&self, w: &[f64], out: &mut [bool], s: &mut RowScratch) -> RowOutcome {
        let before = s.loss.loss;
        let (mut swaps, mut stopped) = (0u32, false);
        while (swaps as usize) < self.params.max_swaps {
            let best = (0..out.len())
                .step_by(self.group)
                .fold(None, |best, start| self.best_in(w, out, start, best, s));
            match best {
                Some(b) if b.delta < -self.params.tol * s.loss.loss => {
                    s.loss.apply(self.h, w, b.p, b.q, b.delta);
                    out[b.p] = true;
                    out[b.q] = false;
                    swaps += 1;
                }
                _ => {
                    stopped = true;
                    break;
                }
            }
        }
        RowOutcome {
            swaps,
            stopped,
            before,
            after: s.loss.measure(w, out),
        }
    }

    /// The best swap of the group at `start`, or `best` if none comes before it.
    fn best_in(
        &self,
        w: &[f64],
        out: &[bool],
        start: usize,
        mut best: Option<Best>,
        s: &mut RowScratch,
    ) -> Option<Best> {
        let (h, c) = (self.h, self.params.candidates);
        let RowScratch {
            loss,
            kept,
            pruned,
            grow,
        } = s;
        kept.clear();
        pruned.clear();
        for (j, &pruned_j) in out.iter().enumerate().skip(start).take(self.group) {
            if pruned_j {
                pruned.push((loss.grow_gain(h, w, j), j));
            } else {
                kept.push((loss.prune_gain(h, w, j), j));
            }
        }
        if kept.is_empty() || pruned.is_empty() {
            return best;
        }
        keep_smallest(kept, c);
        if pruned.len() <= c && self.group == out.len() {
            // Every pruned entry is a candidate: scan whole rows of `H`
            // (vectorized) instead of gathering `H_pq`, with `b = +∞` where
            // kept so that only pruned `q` can win.
            grow.clear();
            grow.resize(out.len(), f64::INFINITY);
            for &(b, q) in pruned.iter() {
                grow[q] = b;
            }
            for &(a, p) in kept.iter() {
                let t = 2.0 * w[p];
                let m = h.scan(a, t, grow, w, p);
                // `p` is new here, so `p` alone settles a tie in `Δ`: `q`
                // (the first column attaining `m`) is needed only then.
                if improves(best, m, p, 0) {
                    let hp = h.row(p);
                    let q = (0..out.len())
                        .find(|&q| RowLoss::pair(a, grow[q], w[p], w[q], f64::from(hp[q])) == m)
                        .expect("the minimum is attained");
                    best = Some(Best { delta: m, p, q });
                }
            }
            return best;
        }
        keep_smallest(pruned, c);
        for &(a, p) in kept.iter() {
            let hp = h.row(p);
            for &(b, q) in pruned.iter() {
                let delta = RowLoss::pair(a, b, w[p], w[q], f64::from(hp[q]));
                if improves(best, delta, p, q) {
                    best = Some(Best { delta, p, q });
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Axis, SplitMix64};
    use crate::{mask, Pattern};
    use half::bf16;
    use proptest::prelude::*;

    /// A random layer with a correlated Gram matrix `H = XᵀX` (exactly symmetric).
    struct Layer {
        w: Vec<f32>,
        h: Vec<f32>,
        rows: usize,
        cols: usize,
    }

    impl Layer {
        fn new(rows: usize, cols: usize, seed: u64) -> Self {
            let mut g = SplitMix64::stream(seed, Axis::Row, 0);
            let mut u = move || (g.next_u64() >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
            let w = (0..rows * cols).map(|_| u() as f32).collect();
            // Tokens x = z A with a shared factor: neighbouring channels co-vary.
            let tokens = 2 * cols + 3;
            let z: Vec<f64> = (0..tokens * cols).map(|_| u()).collect();
            let shared: Vec<f64> = (0..tokens).map(|_| u()).collect();
            let x: Vec<f64> = (0..tokens * cols)
                .map(|k| {
                    let (t, j) = (k / cols, k % cols);
                    z[k] + 0.7 * z[t * cols + (j + 1) % cols] + shared[t] * (1.0 + j as f64 / 8.0)
                })
                .collect();
            let mut h = vec![0f32; cols * cols];
            for a in 0..cols {
                for b in a..cols {
                    let s: f64 = (0..tokens).map(|t| x[t * cols + a] * x[t * cols + b]).sum();
                    h[a * cols + b] = s as f32;
                    h[b * cols + a] = s as f32;
                }
            }
            Self { w, h, rows, cols }
        }

        fn w(&self) -> MatRef<'_, f32> {
            MatRef::new(&self.w, self.rows, self.cols, "w").unwrap()
        }

        fn h(&self) -> MatRef<'_, f32> {
            MatRef::new(&self.h, self.cols, self.cols, "h").unwrap()
        }

        /// The magnitude mask of `pattern`.
        fn mask(&self, pattern: Pattern) -> Vec<bool> {
            let a: Vec<f32> = self.w.iter().map(|x| x.abs()).collect();
            let m = MatRef::new(&a, self.rows, self.cols, "s").unwrap();
            mask::compute(m, pattern, "s").unwrap()
        }

        /// `L_i = δᵀ H δ` recomputed from scratch.
        fn loss(&self, m: &[bool], i: usize) -> f64 {
            let n = self.cols;
            let d: Vec<f64> = (0..n)
                .map(|j| {
                    if m[i * n + j] {
                        f64::from(self.w[i * n + j])
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut l = 0.0;
            for a in 0..n {
                for b in 0..n {
                    l += d[a] * f64::from(self.h[a * n + b]) * d[b];
                }
            }
            l
        }

        fn run(&self, m: &[bool], layout: Layout, p: &Swaps) -> (Vec<bool>, SwapsReport) {
            swaps(self.w(), m, self.h(), layout, p, "layer.w").unwrap()
        }
    }

    fn counts(m: &[bool], cols: usize) -> Vec<usize> {
        m.chunks(cols)
            .map(|r| r.iter().filter(|&&p| p).count())
            .collect()
    }

    fn full() -> Swaps {
        Swaps {
            candidates: usize::MAX,
            ..Swaps::default()
        }
    }

    #[test]
    fn one_full_round_is_the_best_single_swap() {
        // c >= in: the first swap is the best of every (kept, pruned) pair,
        // found here by brute force with L recomputed from scratch.
        for seed in 0..6 {
            let l = Layer::new(5, 13, seed);
            let start = l.mask(Pattern::PerRow { sparsity: 0.5 });
            let one = Swaps {
                max_swaps: 1,
                tol: 0.0,
                ..full()
            };
            let (out, _) = l.run(&start, Layout::PerRow, &one);
            for i in 0..l.rows {
                let base = l.loss(&start, i);
                let mut best = (0.0f64, None);
                let row = &start[i * l.cols..(i + 1) * l.cols];
                for p in (0..l.cols).filter(|&p| !row[p]) {
                    for q in (0..l.cols).filter(|&q| row[q]) {
                        let mut m = start.clone();
                        m[i * l.cols + p] = true;
                        m[i * l.cols + q] = false;
                        let d = l.loss(&m, i) - base;
                        if d < best.0 - 1e-9 * base {
                            best = (d, Some((p, q)));
                        }
                    }
                }
                let got = &out[i * l.cols..(i + 1) * l.cols];
                match best.1 {
                    None => assert_eq!(got, row, "seed {seed} row {i}"),
                    Some((p, q)) => {
                        let changed: Vec<usize> =
                            (0..l.cols).filter(|&j| got[j] != row[j]).collect();
                        let mut want = vec![p, q];
                        want.sort();
                        assert_eq!(changed, want, "seed {seed} row {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_report_adds_up_and_the_loss_is_exact() {
        let l = Layer::new(7, 24, 3);
        let start = l.mask(Pattern::PerRow { sparsity: 0.6 });
        let (out, rep) = l.run(&start, Layout::PerRow, &Swaps::default());
        let before: f64 = (0..l.rows).map(|i| l.loss(&start, i)).sum();
        let after: f64 = (0..l.rows).map(|i| l.loss(&out, i)).sum();
        assert!((rep.loss_before - before).abs() <= 1e-9 * before);
        assert!((rep.loss_after - after).abs() <= 1e-9 * before);
        assert!(rep.loss_after < rep.loss_before);
        assert_eq!(
            rep.swaps,
            rep.swaps_per_row.iter().map(|&s| s as u64).sum::<u64>()
        );
        let changed = (0..l.rows)
            .filter(|&i| out[i * l.cols..(i + 1) * l.cols] != start[i * l.cols..(i + 1) * l.cols])
            .count();
        assert_eq!(rep.rows_changed, changed);
        assert!(rep.cycles <= Swaps::default().max_swaps);
    }

    #[test]
    fn bf16_matches_f32_with_the_same_values() {
        let l = Layer::new(6, 40, 9);
        let wb: Vec<bf16> = l.w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let start = l.mask(Pattern::NM { n: 2, m: 4 });
        let layout = Layout::NM { n: 2, m: 4 };
        let p = Swaps::default();
        let mb = MatRef::new(&wb, l.rows, l.cols, "w").unwrap();
        let mf = MatRef::new(&wf, l.rows, l.cols, "w").unwrap();
        assert_eq!(
            swaps(mb, &start, l.h(), layout, &p, "").unwrap(),
            swaps(mf, &start, l.h(), layout, &p, "").unwrap()
        );
    }

    #[test]
    fn nothing_to_do_changes_nothing() {
        let l = Layer::new(4, 12, 1);
        let start = l.mask(Pattern::PerRow { sparsity: 0.5 });
        let none = Swaps {
            max_swaps: 0,
            ..Swaps::default()
        };
        let (out, rep) = l.run(&start, Layout::PerRow, &none);
        assert_eq!(out, start);
        assert_eq!((rep.swaps, rep.rows_stopped, rep.cycles), (0, 0, 0));
        assert_eq!(rep.loss_before, rep.loss_after);
        // No pruned weight (or nothing kept): no pair, every row stops at once.
        for fill in [false, true] {
            let m = vec![fill; l.rows * l.cols];
            let (out, rep) = l.run(&m, Layout::PerRow, &Swaps::default());
            assert_eq!(out, m);
            assert_eq!((rep.swaps, rep.rows_stopped, rep.cycles), (0, 4, 1));
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let l = Layer::new(3, 8, 2);
        let start = l.mask(Pattern::PerRow { sparsity: 0.5 });
        let p = Swaps::default();
        let err = |w: MatRef<f32>, m: &[bool], h: MatRef<f32>, layout, p: &Swaps| {
            swaps(w, m, h, layout, p, "layer.w")
                .unwrap_err()
                .to_string()
        };
        let e = err(
            l.w(),
            &start,
            l.h(),
            Layout::PerRow,
            &Swaps {
                candidates: 0,
                ..p.clone()
            },
        );
        assert_eq!(e, "layer.w: candidates: must be at least 1");
        let e = err(
            l.w(),
            &start,
            l.h(),
            Layout::PerRow,
            &Swaps {
                tol: -1.0,
                ..p.clone()
            },
        );
        assert!(e.starts_with("layer.w: tol: -1"), "{e}");
        let small = MatRef::new(&l.h[..49], 7, 7, "h").unwrap();
        let e = err(l.w(), &start, small, Layout::PerRow, &p);
        assert_eq!(
            e,
            "layer.w: gram: expected 8x8 (in x in, the weight's input columns), got 7x7"
        );
        let mut h = l.h.clone();
        h[8 + 3] = f32::NAN;
        let nan = MatRef::new(&h, 8, 8, "h").unwrap();
        let e = err(l.w(), &start, nan, Layout::PerRow, &p);
        assert!(
            e.starts_with("layer.w: gram: non-finite value NaN at row 1, column 3"),
            "{e}"
        );
        let mut w = l.w.clone();
        w[10] = f32::INFINITY;
        let inf = MatRef::new(&w, 3, 8, "w").unwrap();
        let e = err(inf, &start, l.h(), Layout::PerRow, &p);
        assert!(
            e.starts_with("layer.w: non-finite value inf at row 1, column 2"),
            "{e}"
        );
        let e = err(l.w(), &start[1..], l.h(), Layout::PerRow, &p);
        assert!(
            e.starts_with("layer.w: prune_mask: expected 3x8 = 24"),
            "{e}"
        );
        let left: Vec<bool> = (0..24).map(|k| k % 8 < 4).collect();
        let e = err(l.w(), &left, l.h(), Layout::NM { n: 2, m: 4 }, &p);
        assert!(
            e.contains("row 0, columns 0..4 prune 4 weights, not 2"),
            "{e}"
        );
        assert!(e.contains("the initial mask must be 2:4"), "{e}");
        // Unstructured: rows need not agree on their counts.
        assert!(swaps(
            l.w(),
            &left[..23]
                .iter()
                .chain([&false])
                .copied()
                .collect::<Vec<_>>(),
            l.h(),
            Layout::PerRow,
            &p,
            ""
        )
        .is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn counts_nm_and_the_loss_hold(rows in 1usize..6, groups in 1usize..10,
                                       seed in any::<u64>(), c in 1usize..20,
                                       max_swaps in 0usize..12, wide in any::<bool>()) {
            let m = if wide { 8 } else { 4 };
            let n = m / 2;
            let cols = m * groups;
            let l = Layer::new(rows, cols, seed);
            let p = Swaps { candidates: c, max_swaps, tol: 0.0 };
            for (layout, pattern) in [
                (Layout::PerRow, Pattern::PerRow { sparsity: 0.6 }),
                (Layout::PerRow, Pattern::PerMatrix { sparsity: 0.6 }),
                (Layout::NM { n, m }, Pattern::NM { n, m }),
            ] {
                let start = l.mask(pattern);
                let (out, rep) = l.run(&start, layout, &p);
                prop_assert_eq!(counts(&out, cols), counts(&start, cols));
                if let Layout::NM { .. } = layout {
                    prop_assert!(out.chunks(m).all(|g| g.iter().filter(|&&x| x).count() == n));
                }
                for i in 0..rows {
                    let (l0, l1) = (l.loss(&start, i), l.loss(&out, i));
                    prop_assert!(l1 <= l0 + 1e-9 * (1.0 + l0), "row {} {} -> {}", i, l0, l1);
                    prop_assert!(rep.swaps_per_row[i] as usize <= max_swaps);
                }
                let changed = out.iter().zip(&start).filter(|(a, b)| a != b).count() as u64;
                prop_assert!(changed <= 2 * rep.swaps);
            }
        }

        #[test]
        fn more_candidates_never_end_a_first_swap_worse(seed in any::<u64>()) {
            // The first round with c >= in sees every pair, so its swap lowers L
            // at least as much as with c = 2.
            let l = Layer::new(4, 20, seed);
            let start = l.mask(Pattern::PerRow { sparsity: 0.5 });
            let one = |c| Swaps { candidates: c, max_swaps: 1, tol: 0.0 };
            let (a, _) = l.run(&start, Layout::PerRow, &one(2));
            let (b, _) = l.run(&start, Layout::PerRow, &one(usize::MAX));
            for i in 0..4 {
                prop_assert!(l.loss(&b, i) <= l.loss(&a, i) + 1e-9 * (1.0 + l.loss(&start, i)));
            }
        }
    }
}
