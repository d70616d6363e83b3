//! Training-free mask refinement: DSnoT (methods.md §5) and R²-DSnoT (§7).
//!
//! Weights never change, only the mask (`true` = pruned). Every accepted swap
//! regrows one pruned weight and prunes one kept weight of the same row (of
//! the same group of `M` under N:M), so each row keeps its exact count and
//! N:M still holds. Rows are independent and run in parallel.
//!
//! # Definitions
//!
//! Row `i`, column `j`; `P` is the initial mask.
//!
//! - `D_ij = W_ij · sum_j`; `err_i = Σ_{j∈P} D_ij`, `sign0_i = sign(err_i)`
//!   with `sign ∈ {−1, 0, +1}`.
//! - Grow score `G_ij = D_ij / v_j` with `v_j = max(var_j^var_power, VAR_EPS)`
//!   (R² with `ri_phase = grow`: times `RI_ij`). [`VAR_EPS`] is the smallest
//!   normal f32, so a channel with `var = 0` (constant over every batch) gets
//!   the strongest finite-or-infinite grow priority its sign allows, as the
//!   reference's `D / 0 = ±inf` does — except that `D = 0` gives `G = 0`
//!   where the reference gives NaN. `G` is never NaN.
//! - Prune score `S_ij`: DSnoT orders by Wanda, `|W_ij| n_j` with
//!   `n_j = sqrt(in_sq_j)`; its N:M pick uses the caller's initial scores
//!   (Wanda by default). R² uses `RI_ij · a_j` (`ri_phase = prune`) or
//!   `|W_ij| · a_j` (otherwise) with `a_j = n_j^α`, in both layouts.
//!   `RI_ij = |W_ij|/c_j + |W_ij|/r_i` is RIA's relative importance
//!   (`c`, `r` the column and row sums of `|W|`, exactly as `score.rs`).
//! - Grow order: the initially pruned weights by `(G, j)` ascending. The
//!   reference also sorts the kept weights in (as `G = 0`); its pointers only
//!   reach them after every pruned weight of one sign is used, where it would
//!   break the row's count. Here they are simply not in the order.
//! - Prune order (unstructured): kept weights with `D < 0` by `(S, j)`
//!   ascending, then kept weights with `D > 0` by `(S, j)` descending (the
//!   stable ascending order read backwards: equal keys, higher column first).
//!   Kept weights with `D = 0` are in neither part (the reference maps them
//!   all onto one duplicated entry).
//!
//! Each order has a head and a tail pointer. A cycle, for every active row:
//!
//! 1. stop unless `|err| > threshold`;
//! 2. grow candidate `g`: the tail of the grow order if `err > 0`, else its
//!    head;
//! 3. prune candidate `p`: unstructured, the tail of the prune order if
//!    `err < 0`, else its head; N:M, in `g`'s group of `M`, the unused kept
//!    weight (initially kept, not pruned by a swap, not passed over) with the
//!    smallest prune score, ties to the lower column (every unused kept weight
//!    of the group is eligible, whatever its `D`);
//! 4. `err' = err + D_p − D_g`; DSnoT accepts iff `!same_sign` or
//!    `sign(err') = sign0`. R² accepts iff that holds and `Φ(err', pen') <
//!    Φ(err, pen)` strictly, with `Φ = |err|/|err⁰| + γ · pen/pen⁰`,
//!    `pen = (Σ_{j pruned} (|W_ij| n_j)^p)^(1/p)`, a term dropped when its
//!    start value is 0. With `decision = exact` (§9), `|err|/|err⁰|` is
//!    replaced by `L/L⁰`, the row's exact loss `δᵀ H δ` (`swaps.rs`) with the
//!    swap's `L' = L + Δ`; the sign check, the threshold and the orders still
//!    use `err`;
//! 5. accepted: prune `p`, regrow `g`, advance the pointers used, `err = err'`.
//!    Rejected: the row stops (DSnoT, R² `on_reject = stop`) or, with R²'s
//!    `skip`, the pointers used advance (N:M: `p` is passed over for good).
//!
//! A row also stops when the candidate it needs does not exist. DSnoT: its
//! order is used up (head met tail; a pointer walks on past its sign region,
//! as the reference's does), or the N:M group has no unused kept weight. R²:
//! the pointer leaves its sign region (prune head: `D < 0`, prune tail:
//! `D > 0`, grow head: `G < 0`, grow tail: `G > 0`; `G = 0` is never a
//! candidate); an N:M group without an unused kept weight counts as a
//! rejection. A stopped row never restarts and its mask is left alone (the
//! reference keeps moving a stopped row's pointers and rewrites the mask at
//! them, which changes nothing unless they reach a kept weight). Every row
//! runs at most `max_cycles` cycles.
//!
//! # Input
//!
//! Refused with an error naming the argument: a NaN/Inf weight or statistic,
//! a statistic of the wrong length, a negative `in_sq` or `var`, `W · sum`
//! overflowing f32, an initial mask of the wrong size, with unequal row
//! counts (unstructured) or not exactly N:M, `threshold < 0`, and parameters
//! out of their domain (`var_power`, `α`, `γ` ≥ 0; `p` > 0; all finite);
//! with `decision = exact`, a missing, non-finite or not `in × in` Gram
//! matrix.
//!
//! # Numerics (what a reference must do to match bit for bit)
//!
//! - f32 (weights converted exactly): `D = W · sum`, `n = sqrt(in_sq)`,
//!   `|W| · n`, `G = D / v` then `· RI`, `RI` and `S` as in `score.rs`
//!   (`a_j = f32(f64(n_j)^α)`, column/row sums in f64 in index order rounded
//!   once); `v_j = max(f32(f64(var_j)^var_power), VAR_EPS)`.
//! - f64: `err⁰` is the sum of `f64(D_ij)` over the pruned `j` in column
//!   order; a swap gives `err' = (err + D_p) − D_g`. The penalty sum is
//!   `Q = Σ t(|W_ij| n_j)` in column order with `t(x) = x` (`p = 1`), `x²`
//!   (`p = 2`), `x^p` otherwise; a swap gives `Q' = (Q + t_p) − t_g`;
//!   `pen = root(max(Q, 0))` with `root = id, sqrt, ^(1/p)` likewise;
//!   `Φ = e + q` with `e = |err| / |err⁰|` and `q = γ · (pen / pen⁰)`;
//!   exact decision: `e = L / L⁰`, with `L`, `Δ` and `g = H δ` computed as in
//!   `swaps.rs` (its Numerics), `L⁰` from the initial mask.
//! - Orders compare f32 values (`−0 = +0`), ties by column.

use crate::dtype::{check_signed_stat, check_stat, Element, MatRef};
use crate::error::{Error, Result};
use crate::mask::{key, Pattern};
use crate::score::{abs_sums, activation_factor, lp_root, lp_term, relative};
use crate::swaps::{Gram, RowLoss};
use rayon::prelude::*;

/// The floor of the grow divisor `var^var_power` (the smallest normal f32).
pub const VAR_EPS: f32 = f32::MIN_POSITIVE;

/// The structure the initial mask has and the refinement keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Unstructured: every row keeps its count. DSnoT and R²-DSnoT need the
    /// same count in every row; the exact-objective swaps (`swaps.rs`) do not.
    PerRow,
    /// `n` pruned in every group of `m` consecutive input columns.
    NM { n: usize, m: usize },
}

/// The calibration statistics refinement needs (methods.md §2), one per input
/// column.
#[derive(Debug, Clone, Copy)]
pub struct RefineStats<'a> {
    /// `sq[j]`: the Wanda norm is its square root.
    pub in_sq: &'a [f32],
    /// `sum[j]`: seqlen × the mean input.
    pub sum: &'a [f32],
    /// `var[j]`: the token-weighted mean of per-batch variances.
    pub var: &'a [f32],
}

/// DSnoT's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Dsnot {
    pub max_cycles: usize,
    /// In the units of `sum`.
    pub threshold: f64,
    pub var_power: f64,
    /// `None`: the reference's choice, off for [`Layout::PerRow`], on for N:M.
    pub same_sign: Option<bool>,
}

impl Default for Dsnot {
    fn default() -> Self {
        Self {
            max_cycles: 50,
            threshold: 0.1,
            var_power: 1.0,
            same_sign: None,
        }
    }
}

/// Where R²-DSnoT uses RIA's relative importance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiPhase {
    /// Prune score `RI · n^α`.
    Prune,
    /// Grow score `G · RI`.
    Grow,
    /// Neither: prune score `|W| · n^α`.
    None,
}

/// What a row does at a rejected candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReject {
    /// The row stops for good.
    Stop,
    /// The candidate is passed over and the row stays active.
    Skip,
}

/// How R²-DSnoT judges a candidate swap: `Φ`'s first term (methods.md §7, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `|err| / |err⁰|`, the mean error (DSnoT's proxy).
    Mean,
    /// `L / L⁰`, the exact loss `δᵀ H δ` (needs the Gram matrix `H`).
    Exact,
}

/// R²-DSnoT's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct R2Dsnot {
    pub max_cycles: usize,
    pub threshold: f64,
    pub var_power: f64,
    pub ri_phase: RiPhase,
    /// Activation exponent of the prune score.
    pub alpha: f64,
    /// Weight of the pruned-mass term of `Φ`.
    pub gamma: f64,
    /// The ℓp norm of the pruned mass.
    pub p: f64,
    pub same_sign: bool,
    pub on_reject: OnReject,
    pub decision: Decision,
}

/// The defaults are the best setting measured on SmolLM2-135M (Wanda 60%, mean
/// perplexity over calibration seeds 0–2; benches/RESULTS.md, issue 5): `α = 1`
/// (plain `|W| · n`, not the square root), `RI` in the prune phase, `γ = 0`,
/// sign check on, stop at the first rejection. None of the measured settings
/// beat the Wanda mask it starts from on that model; this one hurt least.
impl Default for R2Dsnot {
    fn default() -> Self {
        Self {
            max_cycles: 50,
            threshold: 0.1,
            var_power: 1.0,
            ri_phase: RiPhase::Prune,
            alpha: 1.0,
            gamma: 0.0,
            p: 1.0,
            same_sign: true,
            on_reject: OnReject::Stop,
            decision: Decision::Mean,
        }
    }
}

/// What a refinement did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Accepted swaps, per row.
    pub swaps: Vec<u32>,
    /// Rows that stopped (any reason) instead of running out of cycles.
    pub rows_stopped: usize,
    /// Cycles run: the most any row entered (a row counts the cycle it stops
    /// in), i.e. the reference's cycle counter.
    pub cycles: usize,
    /// `decision = exact`: `Σ_i L_i` before and after (`None` otherwise, and
    /// when no cycle ran).
    pub loss: Option<(f64, f64)>,
}

impl Report {
    pub fn total_swaps(&self) -> u64 {
        self.swaps.iter().map(|&s| u64::from(s)).sum()
    }
}

/// DSnoT: refines `prune` (row-major, `w`'s shape) and reports what it did.
/// `initial_scores` (N:M only; Wanda when `None`) picks the weight to prune
/// inside a group; unstructured DSnoT always orders by Wanda, as the
/// reference does.
pub fn dsnot<T: Element>(
    w: MatRef<T>,
    stats: RefineStats,
    prune: &[bool],
    layout: Layout,
    initial_scores: Option<MatRef<f32>>,
    params: &Dsnot,
    tensor: &str,
) -> Result<(Vec<bool>, Report)> {
    let name = if tensor.is_empty() { "weight" } else { tensor };
    check_common(w, stats, prune, layout, params.threshold, name)?;
    let initial = match (layout, initial_scores) {
        (Layout::NM { .. }, Some(s)) => {
            if (s.rows(), s.cols()) != (w.rows(), w.cols()) {
                return Err(Error::ShapeMismatch {
                    arg: format!("{name}: initial_scores"),
                    expected: format!("{}x{} (the weight's shape)", w.rows(), w.cols()),
                    got: format!("{}x{}", s.rows(), s.cols()),
                });
            }
            s.ensure_finite(&format!("{name}: initial_scores"))?;
            PruneScore::Initial(s)
        }
        _ => PruneScore::Wanda,
    };
    let same_sign = params
        .same_sign
        .unwrap_or(matches!(layout, Layout::NM { .. }));
    let engine = Engine {
        w,
        prune,
        layout,
        sum: stats.sum,
        norm: norms(stats.in_sq),
        divisor: divisors(stats.var, params.var_power, name)?,
        sums: None,
        gram: None,
        prune_score: initial,
        grow_ri: false,
        rule: Rule {
            max_cycles: params.max_cycles,
            threshold: params.threshold,
            same_sign,
            regions: false,
            objective: None,
            skip: false,
        },
    };
    engine.run(name)
}

/// R²-DSnoT: refines `prune` (row-major, `w`'s shape) and reports what it did.
/// `gram` (`in × in`, the Gram matrix of the layer's inputs) is read only
/// with `decision = exact`, which needs it.
pub fn r2dsnot<T: Element>(
    w: MatRef<T>,
    stats: RefineStats,
    prune: &[bool],
    layout: Layout,
    gram: Option<MatRef<f32>>,
    params: &R2Dsnot,
    tensor: &str,
) -> Result<(Vec<bool>, Report)> {
    let name = if tensor.is_empty() { "weight" } else { tensor };
    check_common(w, stats, prune, layout, params.threshold, name)?;
    let gram = match (params.decision, gram) {
        (Decision::Mean, _) => None,
        (Decision::Exact, Some(h)) => Some(Gram::new(h, w.cols(), name)?),
        (Decision::Exact, None) => {
            return Err(Error::invalid(
                format!("{name}: gram"),
                "decision = \"exact\" needs the Gram matrix of the layer's inputs (in x in)",
            ))
        }
    };
    if !(params.gamma.is_finite() && params.gamma >= 0.0) {
        return Err(Error::invalid(
            "gamma",
            format!("{} must be finite and >= 0", params.gamma),
        ));
    }
    if !(params.p.is_finite() && params.p > 0.0) {
        return Err(Error::invalid(
            "p",
            format!("{} must be a finite number > 0", params.p),
        ));
    }
    let norm = norms(stats.in_sq);
    let act = activation_factor(Some(norm.clone()), params.alpha, w.cols(), name)?;
    let ri = params.ri_phase != RiPhase::None;
    let engine = Engine {
        w,
        prune,
        layout,
        sum: stats.sum,
        norm,
        divisor: divisors(stats.var, params.var_power, name)?,
        sums: ri.then(|| abs_sums(w)),
        gram,
        prune_score: PruneScore::R2 {
            act,
            ri: params.ri_phase == RiPhase::Prune,
        },
        grow_ri: params.ri_phase == RiPhase::Grow,
        rule: Rule {
            max_cycles: params.max_cycles,
            threshold: params.threshold,
            same_sign: params.same_sign,
            regions: true,
            objective: Some((params.gamma, params.p)),
            skip: params.on_reject == OnReject::Skip,
        },
    };
    engine.run(name)
}

/// Validates what both variants take: the weight, statistics, mask, layout
/// and threshold.
fn check_common<T: Element>(
    w: MatRef<T>,
    stats: RefineStats,
    prune: &[bool],
    layout: Layout,
    threshold: f64,
    name: &str,
) -> Result<()> {
    let (rows, cols) = (w.rows(), w.cols());
    w.ensure_finite(name)?;
    check_stat(stats.in_sq, cols, &format!("{name}: in_sq"))?;
    check_signed_stat(stats.sum, cols, &format!("{name}: sum"))?;
    check_stat(stats.var, cols, &format!("{name}: var"))?;
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(Error::invalid(
            "threshold",
            format!("{threshold} must be finite and >= 0 (units of `sum`)"),
        ));
    }
    if cols > INDEX_MASK as usize {
        return Err(Error::invalid(
            name,
            "more than 2^31 - 1 columns are not supported",
        ));
    }
    if prune.len() != rows * cols {
        return Err(Error::ShapeMismatch {
            arg: format!("{name}: prune_mask"),
            expected: format!("{rows}x{cols} = {} elements", rows * cols),
            got: format!("{} elements", prune.len()),
        });
    }
    if cols == 0 {
        return Ok(());
    }
    match layout {
        Layout::PerRow => {
            let counts: Vec<usize> = prune
                .par_chunks(cols)
                .map(|r| r.iter().filter(|&&p| p).count())
                .collect();
            if let Some(i) = counts.iter().position(|&c| c != counts[0]) {
                return Err(Error::invalid(
                    format!("{name}: prune_mask"),
                    format!(
                        "row {i} prunes {} weights but row 0 prunes {}; refinement keeps every \
                         row's count, so start from a per-row mask (equal counts)",
                        counts[i], counts[0]
                    ),
                ));
            }
        }
        Layout::NM { n, m } => check_nm_mask(prune, cols, n, m, name)?,
    }
    Ok(())
}

/// Fails unless `prune` (rows of `cols`) is exactly `n:m`.
pub(crate) fn check_nm_mask(
    prune: &[bool],
    cols: usize,
    n: usize,
    m: usize,
    name: &str,
) -> Result<()> {
    Pattern::NM { n, m }.check(cols, name)?;
    let bad = prune
        .par_chunks(m)
        .position_first(|g| g.iter().filter(|&&p| p).count() != n);
    if let Some(g) = bad {
        let (i, j) = (g * m / cols, g * m % cols);
        let got = prune[g * m..(g + 1) * m].iter().filter(|&&p| p).count();
        return Err(Error::invalid(
            format!("{name}: prune_mask"),
            format!(
                "row {i}, columns {j}..{} prune {got} weights, not {n}; \
                 the initial mask must be {n}:{m}",
                j + m
            ),
        ));
    }
    Ok(())
}

fn norms(in_sq: &[f32]) -> Vec<f32> {
    in_sq.iter().map(|v| v.sqrt()).collect()
}

/// `v_j = max(f32(var_j^power), VAR_EPS)`.
fn divisors(var: &[f32], power: f64, name: &str) -> Result<Vec<f32>> {
    if !(power.is_finite() && power >= 0.0) {
        return Err(Error::invalid(
            format!("{name}: var_power"),
            format!("{power} must be finite and >= 0"),
        ));
    }
    Ok(var
        .iter()
        .map(|&v| (f64::from(v).powf(power) as f32).max(VAR_EPS))
        .collect())
}

/// Order entries pack `(key, column)` in one `u64` so that a plain integer
/// sort is the stable order: bit 63 is the prune order's part (`D > 0`),
/// bits 31..63 the f32 key, bits 0..31 the column.
const INDEX_MASK: u64 = (1 << 31) - 1;
const SECOND_PART: u64 = 1 << 63;
/// `key(0.0)`: grow keys above it are `G > 0`, below it `G < 0`.
const ZERO_KEY: u64 = 0x8000_0000;

#[inline]
fn ascending(v: f32, j: usize) -> u64 {
    (u64::from(key(v)) << 31) | j as u64
}

/// Sorts descending by `(v, j)`, inside the second part.
#[inline]
fn descending(v: f32, j: usize) -> u64 {
    SECOND_PART | (u64::from(!key(v)) << 31) | (!(j as u64) & INDEX_MASK)
}

#[inline]
fn column(e: u64) -> usize {
    if e & SECOND_PART != 0 {
        (!e & INDEX_MASK) as usize
    } else {
        (e & INDEX_MASK) as usize
    }
}

#[inline]
fn grow_key(e: u64) -> u64 {
    e >> 31
}

/// Sorts the `k` smallest and the `k` largest entries into place at both
/// ends; the middle stays unordered. A row uses at most `k` entries of an
/// order (one per cycle), and entries are unique, so the ends are exactly
/// those of a full sort.
fn sort_ends(v: &mut [u64], k: usize) {
    if v.len() <= 2 * k + 1 {
        v.sort_unstable();
        return;
    }
    let (head, _, rest) = v.select_nth_unstable(k);
    head.sort_unstable();
    let last = rest.len() - k - 1;
    let (_, _, tail) = rest.select_nth_unstable(last);
    tail.sort_unstable();
}

fn sign(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

/// The unused entries `head..tail` of one order.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    head: usize,
    tail: usize,
}

impl Cursor {
    fn new(len: usize) -> Self {
        Self { head: 0, tail: len }
    }

    fn peek(&self, order: &[u64], from_tail: bool) -> Option<u64> {
        (self.head < self.tail).then(|| order[if from_tail { self.tail - 1 } else { self.head }])
    }

    fn advance(&mut self, from_tail: bool) {
        if from_tail {
            self.tail -= 1;
        } else {
            self.head += 1;
        }
    }
}

enum PruneScore<'a> {
    /// `|W| · n` (DSnoT).
    Wanda,
    /// The caller's initial scores (DSnoT N:M).
    Initial(MatRef<'a, f32>),
    /// `RI · a` or `|W| · a` (R²).
    R2 { act: Vec<f32>, ri: bool },
}

/// How candidates are chosen and judged.
struct Rule {
    max_cycles: usize,
    threshold: f64,
    same_sign: bool,
    /// R²: pointers stay inside their sign regions.
    regions: bool,
    /// R²: `(γ, p)` of the objective `Φ`.
    objective: Option<(f64, f64)>,
    skip: bool,
}

struct Engine<'a, T> {
    w: MatRef<'a, T>,
    prune: &'a [bool],
    layout: Layout,
    sum: &'a [f32],
    norm: Vec<f32>,
    divisor: Vec<f32>,
    /// RIA's column and row sums, when `RI` is used.
    sums: Option<(Vec<f32>, Vec<f32>)>,
    /// R² with `decision = exact`: the Gram matrix of `L`.
    gram: Option<Gram<'a>>,
    prune_score: PruneScore<'a>,
    grow_ri: bool,
    rule: Rule,
}

#[derive(Default)]
struct Scratch {
    d: Vec<f32>,
    grow: Vec<u64>,
    prune: Vec<u64>,
    passed: Vec<bool>,
    /// `decision = exact`: the row in f64 and its loss.
    w: Vec<f64>,
    loss: RowLoss,
}

struct RowOutcome {
    swaps: u32,
    cycles: usize,
    stopped: bool,
    /// `decision = exact`: `L` before and after.
    loss: Option<(f64, f64)>,
}

/// `Φ` of one row, relative to its start.
struct Objective {
    gamma: f64,
    p: f64,
    /// `|err⁰|` (mean decision) or `L⁰` (exact decision).
    base0: f64,
    pen0: f64,
}

impl Objective {
    fn pen(&self, q: f64) -> f64 {
        lp_root(q.max(0.0), self.p)
    }

    /// `Φ` at `x` (`|err|` or `L`) and the penalty sum `q`.
    fn phi(&self, x: f64, q: f64) -> f64 {
        let e = if self.base0 != 0.0 {
            x / self.base0
        } else {
            0.0
        };
        let m = if self.pen0 != 0.0 {
            self.gamma * (self.pen(q) / self.pen0)
        } else {
            0.0
        };
        e + m
    }
}

impl<T: Element> Engine<'_, T> {
    fn run(&self, name: &str) -> Result<(Vec<bool>, Report)> {
        let (rows, cols) = (self.w.rows(), self.w.cols());
        let mut mask = self.prune.to_vec();
        if cols == 0 || self.rule.max_cycles == 0 {
            let report = Report {
                swaps: vec![0; rows],
                ..Report::default()
            };
            return Ok((mask, report));
        }
        let outcomes = mask
            .par_chunks_mut(cols)
            .enumerate()
            .map_init(Scratch::default, |s, (i, out)| self.row(i, out, s, name))
            .collect::<Result<Vec<_>>>()?;
        Ok((
            mask,
            Report {
                swaps: outcomes.iter().map(|o| o.swaps).collect(),
                rows_stopped: outcomes.iter().filter(|o| o.stopped).count(),
                cycles: outcomes.iter().map(|o| o.cycles).max().unwrap_or(0),
                loss: self.gram.map(|_| {
                    outcomes
                        .iter()
                        .filter_map(|o| o.loss)
                        .fold((0.0, 0.0), |(b, a), (x, y)| (b + x, a + y))
                }),
            },
        ))
    }

    #[inline]
    fn ri(&self, i: usize, j: usize, x: f32) -> f32 {
        let (c, r) = self.sums.as_ref().expect("RI needs the |W| sums");
        relative(x, c[j], r[i])
    }

    #[inline]
    fn prune_score(&self, i: usize, j: usize, x: f32) -> f32 {
        match &self.prune_score {
            PruneScore::Wanda => x * self.norm[j],
            PruneScore::Initial(s) => s.row(i)[j],
            PruneScore::R2 { act, ri: true } => self.ri(i, j, x) * act[j],
            PruneScore::R2 { act, ri: false } => x * act[j],
        }
    }

    #[inline]
    fn grow_score(&self, i: usize, j: usize, x: f32, d: f32) -> f32 {
        let g = d / self.divisor[j];
        if self.grow_ri {
            g * self.ri(i, j, x)
        } else {
            g
        }
    }

    /// The N:M prune pick in the group of column `g`.
    fn pick(
        &self,
        i: usize,
        g: usize,
        m: usize,
        init: &[bool],
        out: &[bool],
        passed: &[bool],
    ) -> Option<usize> {
        let row = self.w.row(i);
        let start = g - g % m;
        let mut best: Option<(u32, usize)> = None;
        for j in (start..start + m).filter(|&j| !(init[j] || out[j] || passed[j])) {
            let k = key(self.prune_score(i, j, row[j].to_f32().abs()));
            match best {
                Some((b, _)) if b <= k => {}
                _ => best = Some((k, j)),
            }
        }
        best.map(|(_, j)| j)
    }

    fn row(&self, i: usize, out: &mut [bool], s: &mut Scratch, name: &str) -> Result<RowOutcome> {
        let cols = out.len();
        let row = self.w.row(i);
        let init = &self.prune[i * cols..(i + 1) * cols];
        let rule = &self.rule;
        let Scratch {
            d,
            grow: grow_order,
            prune: prune_order,
            passed,
            w: w64,
            loss,
        } = s;

        d.clear();
        d.extend(row.iter().zip(self.sum).map(|(x, &m)| x.to_f32() * m));
        if let Some(j) = d.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                arg: format!("{name}: weight · sum (f32 overflow)"),
                row: i,
                col: j,
                value: d[j],
            });
        }
        // One branch-free pass: the initial mask is random to the branch
        // predictor, so entries are written unconditionally and counted in.
        let per_row = self.layout == Layout::PerRow;
        grow_order.resize(cols, 0);
        prune_order.resize(cols, 0);
        let (mut grown, mut prunable) = (0, 0);
        let mut err = 0.0f64;
        for j in 0..cols {
            let (x, pruned) = (row[j].to_f32().abs(), init[j]);
            // `d` is finite, so `· 0` adds an exact zero.
            err += f64::from(d[j]) * f64::from(u8::from(pruned));
            grow_order[grown] = ascending(self.grow_score(i, j, x, d[j]), j);
            grown += usize::from(pruned);
            if per_row {
                let score = self.prune_score(i, j, x);
                let (asc, desc) = (ascending(score, j), descending(score, j));
                let negative = u64::from(d[j] < 0.0).wrapping_neg();
                prune_order[prunable] = desc ^ ((asc ^ desc) & negative);
                prunable += usize::from(!pruned & (d[j] != 0.0));
            }
        }
        grow_order.truncate(grown);
        prune_order.truncate(prunable);
        let sign0 = sign(err);
        sort_ends(grow_order, rule.max_cycles);
        sort_ends(prune_order, rule.max_cycles);
        if !per_row {
            passed.clear();
            passed.resize(cols, false);
        }

        // The exact decision's loss (methods.md §9), from the initial mask.
        let loss0 = self.gram.map(|h| {
            w64.clear();
            w64.extend(row.iter().map(|x| f64::from(x.to_f32())));
            loss.reset(h, w64, init);
            loss.loss
        });

        // R²'s objective: the penalty sum `q` and the start values.
        let wanda = |j: usize| row[j].to_f32().abs() * self.norm[j];
        let mut q = 0.0f64;
        let objective = rule.objective.map(|(gamma, p)| {
            // Branch-free, as above; a bit mask keeps an infinite term out of 0 · inf.
            q = (0..cols).fold(0.0, |q, j| {
                let keep = u64::from(init[j]).wrapping_neg();
                q + f64::from_bits(lp_term(wanda(j), p).to_bits() & keep)
            });
            let mut o = Objective {
                gamma,
                p,
                base0: loss0.unwrap_or(err.abs()),
                pen0: 0.0,
            };
            o.pen0 = o.pen(q);
            o
        });

        let mut grow = Cursor::new(grow_order.len());
        let mut prune = Cursor::new(prune_order.len());
        let (mut swaps, mut cycles, mut stopped) = (0u32, 0usize, false);
        while cycles < rule.max_cycles {
            cycles += 1;
            if err.abs() <= rule.threshold {
                stopped = true;
                break;
            }
            let grow_tail = err > 0.0;
            let g = grow.peek(grow_order, grow_tail).filter(|&e| {
                let k = grow_key(e);
                !rule.regions
                    || if grow_tail {
                        k > ZERO_KEY
                    } else {
                        k < ZERO_KEY
                    }
            });
            let Some(g) = g.map(column) else {
                stopped = true;
                break;
            };
            let prune_tail = err < 0.0;
            let p = match self.layout {
                Layout::PerRow => {
                    let p = prune
                        .peek(prune_order, prune_tail)
                        .filter(|&e| !rule.regions || (e & SECOND_PART != 0) == prune_tail);
                    let Some(p) = p.map(column) else {
                        stopped = true;
                        break;
                    };
                    Some(p)
                }
                Layout::NM { m, .. } => self.pick(i, g, m, init, out, passed),
            };

            // The swap's outcome `(p, err', q', Δ)`, if the rule accepts it
            // (`Δ`: the change of the exact loss, 0 with the mean decision).
            let accepted = p.and_then(|p| {
                let after = (err + f64::from(d[p])) - f64::from(d[g]);
                let mut ok = !rule.same_sign || sign(after) == sign0;
                let (mut q_after, mut delta) = (q, 0.0);
                if let Some(o) = &objective {
                    q_after = (q + lp_term(wanda(p), o.p)) - lp_term(wanda(g), o.p);
                    let (x, x_after) = match self.gram {
                        Some(h) => {
                            delta = loss.swap_gain(h, w64, p, g);
                            (loss.loss, loss.loss + delta)
                        }
                        None => (err.abs(), after.abs()),
                    };
                    ok = ok && o.phi(x_after, q_after) < o.phi(x, q);
                }
                ok.then_some((p, after, q_after, delta))
            });
            if accepted.is_none() && !rule.skip {
                stopped = true;
                break;
            }
            grow.advance(grow_tail);
            match self.layout {
                Layout::PerRow => prune.advance(prune_tail),
                Layout::NM { .. } => {
                    if let (None, Some(p)) = (accepted, p) {
                        passed[p] = true;
                    }
                }
            }
            if let Some((p, after, q_after, delta)) = accepted {
                if let Some(h) = self.gram {
                    loss.apply(h, w64, p, g, delta);
                }
                out[p] = true;
                out[g] = false;
                err = after;
                q = q_after;
                swaps += 1;
            }
        }
        Ok(RowOutcome {
            swaps,
            cycles,
            stopped,
            loss: loss0.map(|l0| (l0, loss.measure(w64, out))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Axis, SplitMix64};
    use crate::{mask, score, ActStats, Score};
    use half::bf16;
    use proptest::prelude::*;

    /// A random layer: weights, statistics, and the Wanda mask of `layout`.
    struct Layer {
        w: Vec<f32>,
        rows: usize,
        cols: usize,
        in_sq: Vec<f32>,
        sum: Vec<f32>,
        var: Vec<f32>,
    }

    impl Layer {
        fn new(rows: usize, cols: usize, seed: u64) -> Self {
            let mut g = SplitMix64::stream(seed, Axis::Row, 0);
            let mut u = move || (g.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
            let w = (0..rows * cols).map(|_| u() - 0.5).collect();
            let in_sq = (0..cols).map(|_| u() * 4.0).collect();
            let sum = (0..cols).map(|_| (u() - 0.5) * 8.0).collect();
            let var = (0..cols).map(|_| u() * 2.0).collect();
            Self {
                w,
                rows,
                cols,
                in_sq,
                sum,
                var,
            }
        }

        fn w(&self) -> MatRef<'_, f32> {
            MatRef::new(&self.w, self.rows, self.cols, "w").unwrap()
        }

        fn stats(&self) -> RefineStats<'_> {
            RefineStats {
                in_sq: &self.in_sq,
                sum: &self.sum,
                var: &self.var,
            }
        }

        fn mask(&self, pattern: Pattern) -> Vec<bool> {
            let st = ActStats {
                in_sq: Some(&self.in_sq),
                out_sq: None,
            };
            let s = score::compute(self.w(), st, &Score::Wanda, "w").unwrap();
            let sm = MatRef::new(&s, self.rows, self.cols, "s").unwrap();
            mask::compute(sm, pattern, "s").unwrap()
        }

        /// `(err, pen)` of row `i` under `m`, recomputed from scratch (p = 1).
        fn err_pen(&self, m: &[bool], i: usize) -> (f64, f64) {
            let (mut err, mut pen) = (0.0f64, 0.0f64);
            for j in 0..self.cols {
                if m[i * self.cols + j] {
                    let x = self.w[i * self.cols + j];
                    err += f64::from(x * self.sum[j]);
                    pen += f64::from(x.abs() * self.in_sq[j].sqrt());
                }
            }
            (err, pen)
        }
    }

    fn counts(m: &[bool], cols: usize) -> Vec<usize> {
        m.chunks(cols)
            .map(|r| r.iter().filter(|&&p| p).count())
            .collect()
    }

    fn check_nm(m: &[bool], n: usize, mm: usize) -> bool {
        m.chunks(mm).all(|g| g.iter().filter(|&&p| p).count() == n)
    }

    #[test]
    fn sort_ends_matches_a_full_sort() {
        let mut g = SplitMix64::stream(7, Axis::Row, 0);
        for len in [0usize, 1, 5, 9, 10, 11, 100] {
            for k in [0usize, 1, 3, 5] {
                let v: Vec<u64> = (0..len).map(|_| g.next_u64()).collect();
                let mut full = v.clone();
                full.sort_unstable();
                let mut ends = v.clone();
                sort_ends(&mut ends, k);
                let k = k.min(len);
                assert_eq!(ends[..k], full[..k], "len {len}");
                assert_eq!(ends[len - k..], full[len - k..], "len {len}");
            }
        }
    }

    #[test]
    fn packing_orders_like_the_spec() {
        // Ascending part by (value, column); descending part by value then higher column.
        let mut v = [
            descending(1.0, 3),
            ascending(2.0, 5),
            descending(1.0, 4),
            ascending(-0.0, 9),
            ascending(0.0, 2),
            descending(3.0, 0),
        ];
        v.sort_unstable();
        let cols: Vec<usize> = v.iter().map(|&e| column(e)).collect();
        assert_eq!(cols, vec![2, 9, 5, 0, 4, 3]);
        assert!(grow_key(ascending(0.5, 7)) > ZERO_KEY);
        assert!(grow_key(ascending(-0.5, 7)) < ZERO_KEY);
        assert_eq!(grow_key(ascending(-0.0, 7)), ZERO_KEY);
    }

    /// A row with a hand-computed DSnoT run.
    #[test]
    fn dsnot_by_hand() {
        // W = [1, -2, 3, 4, -1, 2], sum = 1, in_sq = 1, var = 1 -> D = W, G = D.
        let w = [1.0f32, -2.0, 3.0, 4.0, -1.0, 2.0];
        let ones = [1.0f32; 6];
        let stats = RefineStats {
            in_sq: &ones,
            sum: &ones,
            var: &ones,
        };
        // Pruned: columns 0, 2, 3 -> err = 8 > 0.
        let prune = [true, false, true, true, false, false];
        let m = MatRef::new(&w, 1, 6, "w").unwrap();
        let p = Dsnot {
            max_cycles: 1,
            ..Dsnot::default()
        };
        let (out, rep) = dsnot(m, stats, &prune, Layout::PerRow, None, &p, "").unwrap();
        // Grow tail: largest G among pruned = column 3 (4). Prune head: the
        // D < 0 kept weight with the smallest Wanda score: column 4 (|-1|).
        assert_eq!(out, vec![true, false, true, false, true, false]);
        assert_eq!(rep.swaps, vec![1]);
        assert_eq!(rep.cycles, 1);
        // Cycle 2: err = 8 - 4 - 1 = 3: regrow column 2 (3), prune column 1
        // (D = -2) -> err = -2; cycle 3: err < 0, grow head: column 0 (1),
        // prune tail: the D > 0 kept weight with the smallest score, column 5
        // (2) -> err = -1; ...
        let p = Dsnot {
            max_cycles: 3,
            ..Dsnot::default()
        };
        let (out, rep) = dsnot(m, stats, &prune, Layout::PerRow, None, &p, "").unwrap();
        assert_eq!(out, vec![false, true, false, false, true, true]);
        assert_eq!(rep.swaps, vec![3]);
        // Same sign on: the second swap would flip err's sign, so the row stops.
        let p = Dsnot {
            max_cycles: 3,
            same_sign: Some(true),
            ..Dsnot::default()
        };
        let (out, rep) = dsnot(m, stats, &prune, Layout::PerRow, None, &p, "").unwrap();
        assert_eq!(out, vec![true, false, true, false, true, false]);
        assert_eq!((rep.swaps[0], rep.rows_stopped, rep.cycles), (1, 1, 2));
    }

    #[test]
    fn bf16_matches_f32_with_the_same_values() {
        let l = Layer::new(9, 40, 3);
        let wb: Vec<bf16> = l.w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let prune = l.mask(Pattern::PerRow { sparsity: 0.6 });
        let mb = MatRef::new(&wb, l.rows, l.cols, "w").unwrap();
        let mf = MatRef::new(&wf, l.rows, l.cols, "w").unwrap();
        let p = R2Dsnot::default();
        assert_eq!(
            r2dsnot(mb, l.stats(), &prune, Layout::PerRow, None, &p, "").unwrap(),
            r2dsnot(mf, l.stats(), &prune, Layout::PerRow, None, &p, "").unwrap()
        );
        let d = Dsnot::default();
        assert_eq!(
            dsnot(mb, l.stats(), &prune, Layout::PerRow, None, &d, "").unwrap(),
            dsnot(mf, l.stats(), &prune, Layout::PerRow, None, &d, "").unwrap()
        );
    }

    #[test]
    fn zero_variance_is_floored() {
        let mut l = Layer::new(6, 32, 4);
        l.var[3] = 0.0;
        l.var[10] = 0.0;
        l.sum[10] = 0.0;
        let prune = l.mask(Pattern::PerRow { sparsity: 0.5 });
        let (out, _) = dsnot(
            l.w(),
            l.stats(),
            &prune,
            Layout::PerRow,
            None,
            &Dsnot::default(),
            "",
        )
        .unwrap();
        let mut floored = l.var.clone();
        floored[3] = VAR_EPS;
        floored[10] = VAR_EPS;
        let st = RefineStats {
            var: &floored,
            ..l.stats()
        };
        let (again, _) = dsnot(
            l.w(),
            st,
            &prune,
            Layout::PerRow,
            None,
            &Dsnot::default(),
            "",
        )
        .unwrap();
        assert_eq!(out, again);
        assert_eq!(counts(&out, l.cols), counts(&prune, l.cols));
    }

    #[test]
    fn bad_input_is_refused() {
        let l = Layer::new(4, 8, 5);
        let prune = l.mask(Pattern::PerRow { sparsity: 0.5 });
        let d = Dsnot::default();
        let run = |st: RefineStats, m: &[bool], layout| {
            dsnot(l.w(), st, m, layout, None, &d, "layer.q")
                .unwrap_err()
                .to_string()
        };
        let mut bad = l.sum.clone();
        bad[2] = f32::NAN;
        let e = run(
            RefineStats {
                sum: &bad,
                ..l.stats()
            },
            &prune,
            Layout::PerRow,
        );
        assert!(e.contains("layer.q: sum") && e.contains("column 2"), "{e}");
        let e = run(
            RefineStats {
                var: &[1.0; 7],
                ..l.stats()
            },
            &prune,
            Layout::PerRow,
        );
        assert!(e.contains("var") && e.contains("expected 8 values"), "{e}");
        let mut neg = l.var.clone();
        neg[0] = -1.0;
        let e = run(
            RefineStats {
                var: &neg,
                ..l.stats()
            },
            &prune,
            Layout::PerRow,
        );
        assert!(e.contains("negative"), "{e}");
        let mut uneven = prune.clone();
        uneven[9] = !uneven[9];
        let e = run(l.stats(), &uneven, Layout::PerRow);
        assert!(e.contains("row 1 prunes"), "{e}");
        let e = run(l.stats(), &prune, Layout::NM { n: 2, m: 4 });
        assert!(e.contains("2:4") || e.contains("not 2"), "{e}");
        let e = run(l.stats(), &prune[..8], Layout::PerRow);
        assert!(e.contains("prune_mask"), "{e}");
        let mut w = l.w.clone();
        w[5] = f32::INFINITY;
        let e = dsnot(
            MatRef::new(&w, 4, 8, "w").unwrap(),
            l.stats(),
            &prune,
            Layout::PerRow,
            None,
            &d,
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("row 0, column 5"), "{e}");
        let r2 =
            |p: R2Dsnot| r2dsnot(l.w(), l.stats(), &prune, Layout::PerRow, None, &p, "").is_err();
        assert!(r2(R2Dsnot {
            gamma: -1.0,
            ..R2Dsnot::default()
        }));
        assert!(r2(R2Dsnot {
            p: 0.0,
            ..R2Dsnot::default()
        }));
        assert!(r2(R2Dsnot {
            alpha: f64::NAN,
            ..R2Dsnot::default()
        }));
        assert!(r2(R2Dsnot {
            threshold: -0.1,
            ..R2Dsnot::default()
        }));
    }

    fn r2_params() -> impl Strategy<Value = R2Dsnot> {
        (
            prop::sample::select(vec![RiPhase::Prune, RiPhase::Grow, RiPhase::None]),
            prop::sample::select(vec![0.0f64, 0.3, 5.0]),
            prop::sample::select(vec![1.0f64, 2.0, 0.5]),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![0.5f64, 1.0]),
        )
            .prop_map(|(ri_phase, gamma, p, same_sign, skip, alpha)| R2Dsnot {
                ri_phase,
                gamma,
                p,
                alpha,
                same_sign,
                on_reject: if skip { OnReject::Skip } else { OnReject::Stop },
                threshold: 0.01,
                ..R2Dsnot::default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn counts_and_nm_hold(rows in 1usize..8, groups in 1usize..12, seed in any::<u64>(),
                              same_sign in any::<bool>(), r2 in r2_params()) {
            let cols = 4 * groups;
            let l = Layer::new(rows, cols, seed);
            for (layout, pattern) in [
                (Layout::PerRow, Pattern::PerRow { sparsity: 0.6 }),
                (Layout::NM { n: 2, m: 4 }, Pattern::NM { n: 2, m: 4 }),
            ] {
                let prune = l.mask(pattern);
                let d = Dsnot { same_sign: Some(same_sign), threshold: 0.01, ..Dsnot::default() };
                let (a, rep) = dsnot(l.w(), l.stats(), &prune, layout, None, &d, "").unwrap();
                let (b, _) = r2dsnot(l.w(), l.stats(), &prune, layout, None, &r2, "").unwrap();
                for out in [&a, &b] {
                    prop_assert_eq!(counts(out, cols), counts(&prune, cols));
                    if layout != Layout::PerRow {
                        prop_assert!(check_nm(out, 2, 4));
                    }
                }
                let changed: usize = a.iter().zip(&prune).filter(|(x, y)| x != y).count();
                prop_assert_eq!(changed as u64, 2 * rep.total_swaps());
            }
        }

        #[test]
        fn r2_never_worsens_its_objective(rows in 1usize..8, cols in 5usize..60, seed in any::<u64>(),
                                         mut r2 in r2_params()) {
            // Invariants of §7: with γ = 0, |err| never ends above its start;
            // Φ (p = 1 here) never increases.
            r2.p = 1.0;
            let l = Layer::new(rows, cols, seed);
            let prune = l.mask(Pattern::PerRow { sparsity: 0.6 });
            let (out, _) = r2dsnot(l.w(), l.stats(), &prune, Layout::PerRow, None, &r2, "").unwrap();
            for i in 0..rows {
                let (e0, p0) = l.err_pen(&prune, i);
                let (e1, p1) = l.err_pen(&out, i);
                let tol = 1e-9 * (1.0 + e0.abs() + p0);
                if r2.gamma == 0.0 {
                    prop_assert!(e1.abs() <= e0.abs() + tol);
                }
                let phi = |e: f64, p: f64| {
                    (if e0 != 0.0 { e.abs() / e0.abs() } else { 0.0 })
                        + (if p0 != 0.0 { r2.gamma * (p / p0) } else { 0.0 })
                };
                prop_assert!(phi(e1, p1) <= phi(e0, p0) + 1e-9);
            }
        }

        #[test]
        fn no_cycles_or_a_huge_threshold_change_nothing(seed in any::<u64>()) {
            let l = Layer::new(5, 24, seed);
            let prune = l.mask(Pattern::PerRow { sparsity: 0.5 });
            let none = Dsnot { max_cycles: 0, ..Dsnot::default() };
            let (out, rep) = dsnot(l.w(), l.stats(), &prune, Layout::PerRow, None, &none, "").unwrap();
            prop_assert_eq!(&out, &prune);
            prop_assert_eq!(rep.cycles, 0);
            let huge = R2Dsnot { threshold: 1e30, ..R2Dsnot::default() };
            let (out, rep) = r2dsnot(l.w(), l.stats(), &prune, Layout::PerRow, None, &huge, "").unwrap();
            prop_assert_eq!(&out, &prune);
            prop_assert_eq!((rep.rows_stopped, rep.cycles), (5, 1));
        }

        #[test]
        fn the_exact_decision_never_worsens_its_objective(
            rows in 1usize..6, groups in 2usize..12, seed in any::<u64>(),
            mut r2 in r2_params(), nm in any::<bool>(),
        ) {
            // §9's R² switch: Φ = L/L⁰ + γ pen/pen⁰ never increases (p = 1),
            // with γ = 0 neither does L; the report's losses are exact.
            r2.p = 1.0;
            r2.decision = Decision::Exact;
            let cols = 4 * groups;
            let l = Layer::new(rows, cols, seed);
            let h = gram(cols, seed);
            let hm = MatRef::new(&h, cols, cols, "h").unwrap();
            let (layout, pattern) = if nm {
                (Layout::NM { n: 2, m: 4 }, Pattern::NM { n: 2, m: 4 })
            } else {
                (Layout::PerRow, Pattern::PerRow { sparsity: 0.6 })
            };
            let prune = l.mask(pattern);
            let (out, rep) = r2dsnot(l.w(), l.stats(), &prune, layout, Some(hm), &r2, "").unwrap();
            prop_assert_eq!(counts(&out, cols), counts(&prune, cols));
            if nm {
                prop_assert!(check_nm(&out, 2, 4));
            }
            let (mut before, mut after) = (0.0, 0.0);
            for i in 0..rows {
                let (l0, l1) = (loss(&l, &h, &prune, i), loss(&l, &h, &out, i));
                let (_, p0) = l.err_pen(&prune, i);
                let (_, p1) = l.err_pen(&out, i);
                let tol = 1e-9 * (1.0 + l0);
                if r2.gamma == 0.0 {
                    prop_assert!(l1 <= l0 + tol, "row {}: {} -> {}", i, l0, l1);
                }
                let phi = |x: f64, p: f64| {
                    (if l0 != 0.0 { x / l0 } else { 0.0 })
                        + (if p0 != 0.0 { r2.gamma * (p / p0) } else { 0.0 })
                };
                prop_assert!(phi(l1, p1) <= phi(l0, p0) + 1e-9);
                before += l0;
                after += l1;
            }
            let (b, a) = rep.loss.unwrap();
            prop_assert!((b - before).abs() <= 1e-9 * (1.0 + before));
            prop_assert!((a - after).abs() <= 1e-9 * (1.0 + before));
            // The mean decision ignores a Gram matrix it is given.
            r2.decision = Decision::Mean;
            prop_assert_eq!(
                r2dsnot(l.w(), l.stats(), &prune, layout, Some(hm), &r2, "").unwrap(),
                r2dsnot(l.w(), l.stats(), &prune, layout, None, &r2, "").unwrap()
            );
        }
    }

    /// A correlated Gram matrix `XᵀX` (exactly symmetric).
    fn gram(cols: usize, seed: u64) -> Vec<f32> {
        let mut g = SplitMix64::stream(seed, Axis::Col, 1);
        let mut u = move || (g.next_u64() >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
        let tokens = cols + 5;
        let x: Vec<f64> = (0..tokens * cols).map(|_| u()).collect();
        let mut h = vec![0f32; cols * cols];
        for a in 0..cols {
            for b in a..cols {
                let s: f64 = (0..tokens)
                    .map(|t| {
                        let xa = x[t * cols + a] + 0.8 * x[t * cols + (a + 1) % cols];
                        let xb = x[t * cols + b] + 0.8 * x[t * cols + (b + 1) % cols];
                        xa * xb
                    })
                    .sum();
                h[a * cols + b] = s as f32;
                h[b * cols + a] = s as f32;
            }
        }
        h
    }

    /// `L_i = δᵀ H δ`, from scratch.
    fn loss(l: &Layer, h: &[f32], m: &[bool], i: usize) -> f64 {
        let n = l.cols;
        let d = |j: usize| {
            if m[i * n + j] {
                f64::from(l.w[i * n + j])
            } else {
                0.0
            }
        };
        (0..n)
            .flat_map(|a| (0..n).map(move |b| (a, b)))
            .map(|(a, b)| d(a) * f64::from(h[a * n + b]) * d(b))
            .sum()
    }

    #[test]
    fn the_exact_decision_needs_a_fitting_gram_matrix() {
        let l = Layer::new(3, 8, 1);
        let prune = l.mask(Pattern::PerRow { sparsity: 0.5 });
        let exact = R2Dsnot {
            decision: Decision::Exact,
            ..R2Dsnot::default()
        };
        let run = |h: Option<MatRef<f32>>| {
            r2dsnot(
                l.w(),
                l.stats(),
                &prune,
                Layout::PerRow,
                h,
                &exact,
                "layer.q",
            )
            .unwrap_err()
            .to_string()
        };
        assert!(run(None).starts_with("layer.q: gram: decision = \"exact\" needs"));
        let h = gram(7, 0);
        let e = run(Some(MatRef::new(&h, 7, 7, "h").unwrap()));
        assert!(e.contains("layer.q: gram: expected 8x8"), "{e}");
        let mut h = gram(8, 0);
        h[9] = f32::INFINITY;
        let e = run(Some(MatRef::new(&h, 8, 8, "h").unwrap()));
        assert!(
            e.contains("layer.q: gram: non-finite value inf at row 1, column 1"),
            "{e}"
        );
    }
}
