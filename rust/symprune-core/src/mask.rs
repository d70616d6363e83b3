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

use crate::dtype::{Element, MatRef};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::any::TypeId;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

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
    order_key(v.to_bits()) as u32 ^ 0x8000_0000
}

/// The signed form of [`key`] on raw `f32` bits: `-0` becomes `+0`, and the
/// magnitude bits of negatives are flipped, so signed integer order is float
/// order. Integer-only, hence exact whatever the FPU's denormal mode.
#[inline(always)]
fn order_key(bits: u32) -> i32 {
    let b = if bits == 0x8000_0000 { 0 } else { bits } as i32;
    b ^ ((b >> 31) as u32 >> 1) as i32
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
        Pattern::PerRow { sparsity } => per_row(scores, prune_count(scores.cols(), sparsity), isa),
        Pattern::NM { n, m } => n_of_m(scores, n, m, isa),
        Pattern::PerMatrix { sparsity } => {
            check_finite(scores, name, isa)?;
            let k = prune_count(scores.data().len(), sparsity);
            (per_matrix(scores, k), true)
        }
        Pattern::AdaptivePerRow { sparsity } => {
            check_finite(scores, name, isa)?;
            (adaptive(scores, sparsity, name)?, true)
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

/// A `rows × cols` mask made row by row, in parallel: `fill` must write every
/// element of the (uninitialized) row it gets, with per-thread scratch from
/// `init`. Nothing is zeroed first, and on Linux a large mask is asked for
/// transparent huge pages, which cuts the page-fault cost of a fresh 45 MB
/// mask from ~11 ms to ~2.5 ms on a 2-core VM.
fn mask_by_rows<S, I, F>(rows: usize, cols: usize, init: I, fill: F) -> Vec<bool>
where
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut Out) + Sync + Send,
{
    let len = rows * cols;
    let mut mask: Vec<bool> = Vec::with_capacity(len);
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    if len >= 8 << 20 {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_HUGEPAGE: i32 = 14;
        const HUGE: usize = 2 << 20;
        let start = mask.as_ptr() as usize;
        let (a, b) = (
            (start + HUGE - 1) & !(HUGE - 1),
            (start + len) & !(HUGE - 1),
        );
        if b > a {
            // SAFETY: [a, b) lies inside `mask`'s own allocation; the advice
            // only changes how its pages are backed, never their contents.
            // A failure (e.g. THP disabled) is harmless and ignored.
            unsafe { madvise(a as *mut std::ffi::c_void, b - a, MADV_HUGEPAGE) };
        }
    }
    if len > 0 {
        mask.spare_capacity_mut()[..len]
            .par_chunks_mut(cols)
            .enumerate()
            .for_each_init(init, |scratch, (i, row)| fill(scratch, i, row));
    }
    // SAFETY: `fill` wrote all `len` elements (a panic in it unwinds past
    // this point, dropping the mask with length 0).
    unsafe { mask.set_len(len) };
    mask
}

/// Exactly `k` smallest per row, ties by column. Returns the mask and whether
/// every score was finite.
///
/// Per row: one pass turns the scores into order keys (checking finiteness);
/// a sample-guided select ([`kth`]) narrows them to the k-th key `T`, and one
/// vector pass writes `key < T` (or `key <= T` when every tie is pruned), the
/// first ties by column being added when only some of them are.
fn per_row<T: Element>(s: MatRef<T>, k: usize, isa: Isa) -> (Vec<bool>, bool) {
    let (rows, cols) = (s.rows(), s.cols());
    if k == 0 || cols == 0 {
        let finite = s.data().is_empty() || check_finite(s, "", isa).is_ok();
        return (vec![false; s.data().len()], finite);
    }
    let finite = AtomicBool::new(true);
    let mask = mask_by_rows(rows, cols, Scratch::default, |sc, i, out| {
        if !per_row_one(Src::of(s.row(i)), k, sc, out, isa) {
            finite.store(false, Ordering::Relaxed);
        }
    });
    (mask, finite.into_inner())
}

/// `n` smallest of every `m` consecutive columns, ties by column, through each
/// key's rank within its group.
fn n_of_m<T: Element>(s: MatRef<T>, n: usize, m: usize, isa: Isa) -> (Vec<bool>, bool) {
    let finite = AtomicBool::new(true);
    let mask = mask_by_rows(s.rows(), s.cols(), Scratch::default, |sc, i, out| {
        if !nm_row(Src::of(s.row(i)), n, m, sc, out, isa) {
            finite.store(false, Ordering::Relaxed);
        }
    });
    (mask, finite.into_inner())
}

/// One row of [`n_of_m`]; false if some score is not finite.
fn nm_row<T: Element>(
    row: Src<'_, T>,
    n: usize,
    m: usize,
    sc: &mut Scratch,
    out: &mut Out,
    isa: Isa,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && (m == 4 || m == 8) {
        // SAFETY: AVX2 was detected.
        let max = unsafe {
            match (row, m) {
                (Src::F32(v), 4) => Some(avx2::nm_f32::<4>(v, n, out)),
                (Src::F32(v), _) => Some(avx2::nm_f32::<8>(v, n, out)),
                (Src::Half(v, _), 4) => Some(avx2::nm_half::<4>(v, n, out)),
                (Src::Half(v, _), _) => Some(avx2::nm_half::<8>(v, n, out)),
                (Src::Other(_), _) => None,
            }
        };
        if let Some(max) = max {
            return max < row.inf();
        }
    }
    sc.keys.resize(out.len(), 0);
    let finite = row_keys(row, &mut sc.keys, isa);
    match m {
        4 => nm_ranks::<4>(&sc.keys, n, out, isa),
        8 => nm_ranks::<8>(&sc.keys, n, out, isa),
        _ if m <= 16 => {
            for (o, g) in out.chunks_exact_mut(m).zip(sc.keys.chunks_exact(m)) {
                nm_group(g, n, o);
            }
        }
        _ => {
            for (o, g) in out.chunks_exact_mut(m).zip(sc.keys.chunks_exact(m)) {
                sc.packed.clear();
                sc.packed.extend(
                    g.iter()
                        .enumerate()
                        .map(|(j, &k)| (u64::from(k as u32 ^ 0x8000_0000) << 32) | j as u64),
                );
                sc.packed.select_nth_unstable(n - 1);
                o.fill(MaybeUninit::new(false));
                for p in &sc.packed[..n] {
                    o[(p & 0xffff_ffff) as usize].write(true);
                }
            }
        }
    }
    finite
}

/// A mask row as the kernels get it: uninitialized, each element written once.
type Out = [MaybeUninit<bool>];

/// Per-thread buffers of the row kernels.
#[derive(Default)]
struct Scratch {
    keys: Vec<i32>,
    a: Vec<i32>,
    b: Vec<i32>,
    packed: Vec<u64>,
}

/// A row of scores as the kernels read it: `f32` bits, 16-bit float bits
/// (`f16`/`bf16`, which widen to `f32`-like bits by a 16-bit shift, an exact
/// and order-preserving map), or any other element through `to_f32`.
#[derive(Clone, Copy)]
enum Src<'a, T> {
    F32(&'a [f32]),
    /// The bits and the smallest non-finite `|bits| << 16`.
    Half(&'a [u16], u32),
    Other(&'a [T]),
}

impl<'a, T: Element> Src<'a, T> {
    #[inline]
    fn of(row: &'a [T]) -> Self {
        let id = TypeId::of::<T>();
        let (ptr, len) = (row.as_ptr(), row.len());
        if id == TypeId::of::<f32>() {
            // SAFETY: T is f32.
            Src::F32(unsafe { std::slice::from_raw_parts(ptr.cast::<f32>(), len) })
        } else if id == TypeId::of::<half::f16>() {
            // SAFETY: f16 is a `repr(transparent)` u16.
            Src::Half(
                unsafe { std::slice::from_raw_parts(ptr.cast(), len) },
                0x7c00_0000,
            )
        } else if id == TypeId::of::<half::bf16>() {
            // SAFETY: bf16 is a `repr(transparent)` u16.
            Src::Half(
                unsafe { std::slice::from_raw_parts(ptr.cast(), len) },
                0x7f80_0000,
            )
        } else {
            Src::Other(row)
        }
    }
}

impl<T: Element> Src<'_, T> {
    /// The order key of score `i`.
    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn key_at(&self, i: usize) -> i32 {
        match *self {
            Src::F32(r) => order_key(r[i].to_bits()),
            Src::Half(r, _) => order_key(u32::from(r[i]) << 16),
            Src::Other(r) => order_key(r[i].to_f32().to_bits()),
        }
    }

    /// The smallest non-finite `|bits|` of the (widened) scores.
    fn inf(&self) -> u32 {
        match *self {
            Src::Half(_, inf) => inf,
            _ => F32_INF,
        }
    }
}

/// Smallest non-finite `|bits|` of an `f32`.
const F32_INF: u32 = 0x7f80_0000;

/// Which instruction set the row kernels use, detected once per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("popcnt")
        {
            return Isa::Avx2;
        }
        Isa::Scalar
    }
}

/// Expands to a call of `$f` compiled for `$isa` (the same source, inlined
/// into an AVX2-enabled wrapper on x86-64 so that it auto-vectorizes wider).
macro_rules! dispatch {
    ($isa:expr, $f:ident ( $($arg:expr),* )) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only chosen when AVX2 was detected.
            Isa::Avx2 => unsafe { avx2::$f($($arg),*) },
            Isa::Scalar => $f($($arg),*),
        }
    };
}

/// Order keys of `row` into `keys`; false if some score is not finite.
fn row_keys<T: Element>(row: Src<'_, T>, keys: &mut [i32], isa: Isa) -> bool {
    let max = match row {
        Src::F32(r) => dispatch!(isa, keys_f32(r, keys)),
        Src::Half(r, _) => dispatch!(isa, keys_half(r, keys)),
        Src::Other(r) => {
            let mut max = 0;
            for (k, v) in keys.iter_mut().zip(r) {
                let b = v.to_f32().to_bits();
                max = max.max(b & 0x7fff_ffff);
                *k = order_key(b);
            }
            max
        }
    };
    max < row.inf()
}

/// Whether every score of `row` is finite.
fn row_is_finite<T: Element>(row: Src<'_, T>, isa: Isa) -> bool {
    match row {
        Src::F32(r) => dispatch!(isa, max_abs_f32(r)) < F32_INF,
        Src::Half(r, _) => dispatch!(isa, max_abs_half(r)) < row.inf(),
        Src::Other(r) => r.iter().all(|v| v.to_f32().is_finite()),
    }
}

/// Returns the largest `|bits|`.
#[inline(always)]
fn keys_f32(row: &[f32], keys: &mut [i32]) -> u32 {
    let mut max = 0;
    for (k, v) in keys.iter_mut().zip(row) {
        let b = v.to_bits();
        max = max.max(b & 0x7fff_ffff);
        *k = order_key(b);
    }
    max
}

/// Returns the largest `|bits| << 16`.
#[inline(always)]
fn keys_half(row: &[u16], keys: &mut [i32]) -> u32 {
    let mut max = 0;
    for (k, &h) in keys.iter_mut().zip(row) {
        let b = u32::from(h) << 16;
        max = max.max(b & 0x7fff_ffff);
        *k = order_key(b);
    }
    max
}

#[inline(always)]
fn max_abs_f32(row: &[f32]) -> u32 {
    row.iter().fold(0, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

#[inline(always)]
fn max_abs_half(row: &[u16]) -> u32 {
    row.iter()
        .fold(0, |m, &h| m.max(u32::from(h & 0x7fff) << 16))
}

/// One row of [`per_row`] (`0 < k < out.len()`); false if some score is not finite.
fn per_row_one<T: Element>(
    row: Src<'_, T>,
    k: usize,
    sc: &mut Scratch,
    out: &mut Out,
    isa: Isa,
) -> bool {
    let n = out.len();
    sc.keys.resize(n, 0);
    if sc.a.len() < n + 8 {
        sc.a.resize(n + 8, 0);
        sc.b.resize(n + 8, 0);
    }
    let r = k - 1;
    // With AVX2 the first narrowing step rides along the key pass: its
    // bracket comes from a sample of the scores themselves.
    let (finite, first) = match (isa, row) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Src::F32(_) | Src::Half(..)) if n > final_len(isa) => {
            let (lo, hi) = bracket(n, r, |i| row.key_at(i), isa);
            // SAFETY: AVX2 was detected; the buffers were sized above.
            let (max, lt, m) = unsafe {
                match row {
                    Src::F32(v) => avx2::keys_compact_f32(v, &mut sc.keys, lo, hi, &mut sc.a),
                    Src::Half(v, _) => avx2::keys_compact_half(v, &mut sc.keys, lo, hi, &mut sc.a),
                    Src::Other(_) => unreachable!(),
                }
            };
            (max < row.inf(), Some(Step { lo, hi, lt, m }))
        }
        _ => (row_keys(row, &mut sc.keys, isa), None),
    };
    let (t, below, equal) = kth(&sc.keys, r, &mut sc.a, &mut sc.b, first, isa);
    write_row(&sc.keys, t, k - below, equal, out, isa);
    finite
}

/// One narrowing step of [`kth`]: the keys in `[lo, hi]` were copied out
/// (`m` of them), `lt` keys are below `lo`.
#[derive(Clone, Copy)]
struct Step {
    lo: i32,
    hi: i32,
    lt: usize,
    m: usize,
}

/// Candidate sets at most this long are finished off directly.
fn final_len(isa: Isa) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => 128,
        Isa::Scalar => 256,
    }
}

/// The `r`-th smallest (0-based) of `keys`, with how many keys are below it
/// and how many equal it. `a` and `b` are scratch, 8 longer than `keys`; if
/// `first` is given, its step was already taken from `keys` into `a`.
///
/// Each step samples the current candidates, brackets the wanted rank with
/// two sample order statistics a few sigma apart, and keeps only the
/// candidates inside the bracket (one vector pass that also counts those
/// below it). A missed bracket keeps the side that holds the rank instead, so
/// the result is exact whatever the data; every key equal to the answer stays
/// a candidate.
fn kth(
    keys: &[i32],
    r: usize,
    a: &mut [i32],
    b: &mut [i32],
    mut first: Option<Step>,
    isa: Isa,
) -> (i32, usize, usize) {
    debug_assert!(r < keys.len() && a.len() >= keys.len() + 8 && b.len() == a.len());
    let (mut r, mut len, mut below) = (r, keys.len(), 0usize);
    // Where the candidates are: 0 = `keys`, 1 = `a`, 2 = `b`.
    let mut at = 0u8;
    let mut stuck = false;
    while len > final_len(isa) && !stuck {
        let (src, dst): (&[i32], &mut [i32]) = match at {
            0 => (&keys[..len], &mut *a),
            1 => (&a[..len], &mut *b),
            _ => (&b[..len], &mut *a),
        };
        let Step {
            lo,
            hi,
            mut lt,
            mut m,
        } = first.take().unwrap_or_else(|| {
            let (lo, hi) = bracket(len, r, |i| src[i], isa);
            let (lt, m) = dispatch!(isa, compact(src, lo, hi, dst));
            Step { lo, hi, lt, m }
        });
        if r < lt {
            // Below the bracket (then lo > i32::MIN: some key is under it).
            (lt, m) = dispatch!(isa, compact(src, i32::MIN, lo - 1, dst));
        } else if r >= lt + m {
            // Above it (then hi < i32::MAX).
            (lt, m) = dispatch!(isa, compact(src, hi + 1, i32::MAX, dst));
        }
        // No progress: the bracket holds every candidate (few distinct keys).
        stuck = m == len;
        below += lt;
        r -= lt;
        len = m;
        at = if at == 1 { 2 } else { 1 };
    }
    let last: &mut [i32] = match at {
        0 => {
            a[..len].copy_from_slice(&keys[..len]);
            &mut a[..len]
        }
        1 => &mut a[..len],
        _ => &mut b[..len],
    };
    let t = nth_small(last, r, isa);
    let (lt, eq) = last.iter().fold((0, 0), |(lt, eq), &k| {
        (lt + usize::from(k < t), eq + usize::from(k == t))
    });
    (t, below + lt, eq)
}

/// The `r`-th smallest of `v` (reordering it).
fn nth_small(v: &mut [i32], r: usize, isa: Isa) -> i32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if v.len() <= 128 => {
            let mut buf = [i32::MAX; 128];
            buf[..v.len()].copy_from_slice(v);
            // SAFETY: AVX2 was detected.
            unsafe { avx2::sort_small(&mut buf[..if v.len() <= 64 { 64 } else { 128 }]) };
            buf[r]
        }
        _ => *v.select_nth_unstable(r).1,
    }
}

/// Keys `(lo, hi)` that bracket the `r`-th smallest of `len` keys (`key(i)`)
/// with high probability: order statistics of an evenly spaced sample, 2.5
/// sigma of the sample rank (plus one) either side of the expected one.
#[inline]
fn bracket(len: usize, r: usize, key: impl Fn(usize) -> i32, isa: Isa) -> (i32, i32) {
    let s = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if len >= 2048 => 128,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => 64,
        Isa::Scalar => 128.min(len / 2),
    };
    let step = len / s;
    let mut buf = [0i32; 128];
    let sample = &mut buf[..s];
    for (i, x) in sample.iter_mut().enumerate() {
        *x = key(i * step + step / 2);
    }
    let rs = r * s / len;
    let sigma = ((rs * (s - rs)) as f64 / s as f64).sqrt();
    let d = (2.5 * sigma) as usize + 1;
    let (lo_at, hi_at) = (rs.checked_sub(d), Some(rs + d).filter(|&h| h < s));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: AVX2 was detected; s is 64 or 128.
            unsafe { avx2::sort_small(sample) };
            (
                lo_at.map_or(i32::MIN, |i| sample[i]),
                hi_at.map_or(i32::MAX, |i| sample[i]),
            )
        }
        Isa::Scalar => {
            let (lo, rest) = match lo_at {
                Some(i) => {
                    let (_, lo, rest) = sample.select_nth_unstable(i);
                    (*lo, rest)
                }
                None => (i32::MIN, &mut sample[..]),
            };
            // `rest` holds the sample above `lo_at` (or all of it).
            let hi = hi_at.map_or(i32::MAX, |i| {
                *rest.select_nth_unstable(i + rest.len() - s).1
            });
            (lo, hi)
        }
    }
}

/// Copies the keys in `[lo, hi]` to the front of `dst` (which has 8 spare
/// slots); returns how many keys are below `lo` and how many were copied.
#[inline(always)]
fn compact(src: &[i32], lo: i32, hi: i32, dst: &mut [i32]) -> (usize, usize) {
    let (mut lt, mut m) = (0, 0);
    for &k in src {
        dst[m] = k;
        m += usize::from(lo <= k && k <= hi);
        lt += usize::from(k < lo);
    }
    (lt, m)
}

/// Writes a row of the per-row mask: the `quota` first (by column) of the
/// `equal` keys equal to `t`, and every key below it.
fn write_row(keys: &[i32], t: i32, quota: usize, equal: usize, out: &mut Out, isa: Isa) {
    match isa {
        _ if quota == equal => dispatch!(isa, write_le(keys, t, out)),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when AVX2 was detected.
        Isa::Avx2 => unsafe { avx2::write_ties(keys, t, quota, out) },
        Isa::Scalar => {
            write_lt(keys, t, out);
            first_ties(keys, t, quota, out);
        }
    }
}

#[inline(always)]
fn write_le(keys: &[i32], t: i32, out: &mut Out) {
    for (o, &k) in out.iter_mut().zip(keys) {
        o.write(k <= t);
    }
}

#[inline(always)]
fn write_lt(keys: &[i32], t: i32, out: &mut Out) {
    for (o, &k) in out.iter_mut().zip(keys) {
        o.write(k < t);
    }
}

/// Marks the first `quota` keys equal to `t`.
#[inline(always)]
fn first_ties(keys: &[i32], t: i32, quota: usize, out: &mut Out) {
    let mut left = quota;
    for (o, &k) in out.iter_mut().zip(keys) {
        if k == t {
            o.write(true);
            left -= 1;
            if left == 0 {
                return;
            }
        }
    }
}

/// One group of N:M: prune key `j` iff fewer than `n` keys of the group come
/// before it in the stable order.
#[inline(always)]
fn nm_group(g: &[i32], n: usize, out: &mut Out) {
    for (j, (o, &kj)) in out.iter_mut().zip(g).enumerate() {
        let rank: usize = g
            .iter()
            .enumerate()
            .map(|(i, &ki)| usize::from(ki < kj || (ki == kj && i < j)))
            .sum();
        o.write(rank < n);
    }
}

/// N:M with a fixed `M`: every rank computed branch-free, vectorizable.
#[inline(always)]
fn nm_fixed<const M: usize>(keys: &[i32], n: usize, out: &mut Out) {
    for (o, g) in out.chunks_exact_mut(M).zip(keys.chunks_exact(M)) {
        for j in 0..M {
            let mut rank = 0;
            for i in 0..M {
                rank += usize::from(g[i] < g[j] || (g[i] == g[j] && i < j));
            }
            o[j].write(rank < n);
        }
    }
}

fn nm_ranks<const M: usize>(keys: &[i32], n: usize, out: &mut Out, isa: Isa) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when AVX2 was detected.
        Isa::Avx2 => unsafe { avx2::nm_fixed::<M>(keys, n, out) },
        Isa::Scalar => nm_fixed::<M>(keys, n, out),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The row kernels compiled with AVX2 (callers check for it first), and
    //! hand-written ones where compilers do not vectorize: compaction (also
    //! fused with the key pass), the tie-aware mask write, a sorting network
    //! for samples, and N:M ranks on transposed groups.
    use super::Out;
    use std::arch::x86_64::*;

    macro_rules! with_avx2 {
        ($($name:ident($($a:ident: $t:ty),*) $(-> $r:ty)?;)*) => {$(
            #[target_feature(enable = "avx2,bmi1,popcnt")]
            pub(super) unsafe fn $name($($a: $t),*) $(-> $r)? {
                super::$name($($a),*)
            }
        )*};
    }

    with_avx2! {
        keys_f32(row: &[f32], keys: &mut [i32]) -> u32;
        keys_half(row: &[u16], keys: &mut [i32]) -> u32;
        max_abs_f32(row: &[f32]) -> u32;
        max_abs_half(row: &[u16]) -> u32;
        write_le(keys: &[i32], t: i32, out: &mut Out);
    }

    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub(super) unsafe fn nm_fixed<const M: usize>(keys: &[i32], n: usize, out: &mut Out) {
        super::nm_fixed::<M>(keys, n, out)
    }

    /// For each 8-bit lane mask, the indices of its set bits, packed in bytes.
    const LANES: [u64; 256] = {
        let mut t = [0u64; 256];
        let mut m = 0;
        while m < 256 {
            let (mut v, mut c, mut b) = (0u64, 0, 0);
            while b < 8 {
                if (m >> b) & 1 == 1 {
                    v |= (b as u64) << (8 * c);
                    c += 1;
                }
                b += 1;
            }
            t[m] = v;
            m += 1;
        }
        t
    };

    /// [`super::compact`], 8 keys at a time (see [`compact8`]).
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub(super) unsafe fn compact(src: &[i32], lo: i32, hi: i32, dst: &mut [i32]) -> (usize, usize) {
        let n = src.len();
        assert!(dst.len() >= n + 8, "compact needs 8 spare slots");
        let (lov, hiv) = (_mm256_set1_epi32(lo), _mm256_set1_epi32(hi));
        let mut below = _mm256_setzero_si256();
        let (mut m, mut i) = (0usize, 0usize);
        while i + 16 <= n {
            // SAFETY: i + 16 <= n reads inside `src`; m <= i, so the stores
            // end at most at i + 16 <= dst.len().
            let k = [
                _mm256_loadu_si256(src.as_ptr().add(i).cast()),
                _mm256_loadu_si256(src.as_ptr().add(i + 8).cast()),
            ];
            compact16(k, lov, hiv, &mut below, dst.as_mut_ptr(), &mut m);
            i += 16;
        }
        if i + 8 <= n {
            // SAFETY: as above, with 8 spare slots after n.
            let k = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            compact8(k, lov, hiv, &mut below, dst.as_mut_ptr(), &mut m);
            i += 8;
        }
        let (lt, mt) = super::compact(&src[i..], lo, hi, &mut dst[m..]);
        (lane_sum(below) + lt, m + mt)
    }

    /// Order keys of 8 `f32`-like bits (see [`super::order_key`]).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn order_keys(b: __m256i) -> __m256i {
        let b = _mm256_andnot_si256(_mm256_cmpeq_epi32(b, _mm256_set1_epi32(i32::MIN)), b);
        _mm256_xor_si256(b, _mm256_srli_epi32(_mm256_srai_epi32(b, 31), 1))
    }

    /// Keeps the keys of `k` in `[lo, hi]` at `to + *m` and counts those below
    /// `lo` in `below`: compare, then permute the kept ones to the front and
    /// store all 8 lanes (hence the 8 spare slots the callers' buffers have).
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn compact8(
        k: __m256i,
        lo: __m256i,
        hi: __m256i,
        below: &mut __m256i,
        to: *mut i32,
        m: &mut usize,
    ) {
        let lt = _mm256_cmpgt_epi32(lo, k);
        let out = _mm256_or_si256(lt, _mm256_cmpgt_epi32(k, hi));
        *below = _mm256_sub_epi32(*below, lt);
        let keep = (_mm256_movemask_ps(_mm256_castsi256_ps(out)) ^ 0xff) as usize;
        let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(LANES.as_ptr().add(keep).cast()));
        _mm256_storeu_si256(to.add(*m).cast(), _mm256_permutevar8x32_epi32(k, idx));
        *m += keep.count_ones() as usize;
    }

    /// [`compact8`] on 16 keys: the second store's offset comes off the
    /// first one's count, so the serial chain through `m` is one add per 16.
    #[inline]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn compact16(
        k: [__m256i; 2],
        lo: __m256i,
        hi: __m256i,
        below: &mut __m256i,
        to: *mut i32,
        m: &mut usize,
    ) {
        let lt = [_mm256_cmpgt_epi32(lo, k[0]), _mm256_cmpgt_epi32(lo, k[1])];
        let out = [
            _mm256_or_si256(lt[0], _mm256_cmpgt_epi32(k[0], hi)),
            _mm256_or_si256(lt[1], _mm256_cmpgt_epi32(k[1], hi)),
        ];
        *below = _mm256_sub_epi32(_mm256_sub_epi32(*below, lt[0]), lt[1]);
        let keep = [
            (_mm256_movemask_ps(_mm256_castsi256_ps(out[0])) ^ 0xff) as usize,
            (_mm256_movemask_ps(_mm256_castsi256_ps(out[1])) ^ 0xff) as usize,
        ];
        let first = keep[0].count_ones() as usize;
        for (j, at) in [0, first].into_iter().enumerate() {
            let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(LANES.as_ptr().add(keep[j]).cast()));
            _mm256_storeu_si256(
                to.add(*m + at).cast(),
                _mm256_permutevar8x32_epi32(k[j], idx),
            );
        }
        *m += first + keep[1].count_ones() as usize;
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lane_sum(v: __m256i) -> usize {
        let mut lanes = [0i32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v);
        lanes.iter().map(|&c| c as usize).sum()
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lane_max(v: __m256i) -> u32 {
        let mut lanes = [0u32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v);
        lanes.into_iter().fold(0, u32::max)
    }

    /// [`super::keys_f32`] and a first [`compact`] in one pass: returns the
    /// largest `|bits|`, the count below `lo` and the count copied.
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub(super) unsafe fn keys_compact_f32(
        row: &[f32],
        keys: &mut [i32],
        lo: i32,
        hi: i32,
        dst: &mut [i32],
    ) -> (u32, usize, usize) {
        let n = row.len();
        assert!(keys.len() == n && dst.len() >= n + 8);
        let (lov, hiv, abs) = (
            _mm256_set1_epi32(lo),
            _mm256_set1_epi32(hi),
            _mm256_set1_epi32(i32::MAX),
        );
        let (mut below, mut max) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let (mut m, mut i) = (0usize, 0usize);
        // The next row starts where this one ends: fetch it into L2 while this
        // row streams in, so that its own pass finds it there.
        let ahead = row.as_ptr().wrapping_add(n).cast::<i8>();
        while i + 16 <= n {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(4 * i));
            let mut k = [_mm256_setzero_si256(); 2];
            for (j, k) in k.iter_mut().enumerate() {
                // SAFETY: i + 16 <= n bounds the loads and the key stores.
                let b = _mm256_loadu_si256(row.as_ptr().add(i + 8 * j).cast());
                max = _mm256_max_epu32(max, _mm256_and_si256(b, abs));
                *k = order_keys(b);
                _mm256_storeu_si256(keys.as_mut_ptr().add(i + 8 * j).cast(), *k);
            }
            // m <= i keeps the candidate stores within dst (n + 8 long).
            compact16(k, lov, hiv, &mut below, dst.as_mut_ptr(), &mut m);
            i += 16;
        }
        let tail_max = super::keys_f32(&row[i..], &mut keys[i..]);
        let (lt, mt) = super::compact(&keys[i..], lo, hi, &mut dst[m..]);
        (lane_max(max).max(tail_max), lane_sum(below) + lt, m + mt)
    }

    /// [`keys_compact_f32`] for 16-bit floats.
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub(super) unsafe fn keys_compact_half(
        row: &[u16],
        keys: &mut [i32],
        lo: i32,
        hi: i32,
        dst: &mut [i32],
    ) -> (u32, usize, usize) {
        let n = row.len();
        assert!(keys.len() == n && dst.len() >= n + 8);
        let (lov, hiv, abs) = (
            _mm256_set1_epi32(lo),
            _mm256_set1_epi32(hi),
            _mm256_set1_epi32(i32::MAX),
        );
        let (mut below, mut max) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let (mut m, mut i) = (0usize, 0usize);
        let ahead = row.as_ptr().wrapping_add(n).cast::<i8>();
        while i + 16 <= n {
            if i % 32 == 0 {
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(2 * i));
            }
            let mut k = [_mm256_setzero_si256(); 2];
            for (j, k) in k.iter_mut().enumerate() {
                // SAFETY: as in keys_compact_f32 (8 u16 = 16 bytes a load).
                let h = _mm_loadu_si128(row.as_ptr().add(i + 8 * j).cast());
                let b = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
                max = _mm256_max_epu32(max, _mm256_and_si256(b, abs));
                *k = order_keys(b);
                _mm256_storeu_si256(keys.as_mut_ptr().add(i + 8 * j).cast(), *k);
            }
            compact16(k, lov, hiv, &mut below, dst.as_mut_ptr(), &mut m);
            i += 16;
        }
        let tail_max = super::keys_half(&row[i..], &mut keys[i..]);
        let (lt, mt) = super::compact(&keys[i..], lo, hi, &mut dst[m..]);
        (lane_max(max).max(tail_max), lane_sum(below) + lt, m + mt)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn minmax<const R: usize>(r: &mut [__m256i; R], i: usize, j: usize) {
        let (a, b) = (r[i], r[j]);
        r[i] = _mm256_min_epi32(a, b);
        r[j] = _mm256_max_epi32(a, b);
    }

    /// Sorts a bitonic register (as 8 lanes).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn bitonic8(v: __m256i) -> __m256i {
        let p = _mm256_permute2x128_si256(v, v, 0x01);
        let v = _mm256_blend_epi32(_mm256_min_epi32(v, p), _mm256_max_epi32(v, p), 0b1111_0000);
        let p = _mm256_shuffle_epi32(v, 0b01_00_11_10);
        let v = _mm256_blend_epi32(_mm256_min_epi32(v, p), _mm256_max_epi32(v, p), 0b1100_1100);
        let p = _mm256_shuffle_epi32(v, 0b10_11_00_01);
        _mm256_blend_epi32(_mm256_min_epi32(v, p), _mm256_max_epi32(v, p), 0b1010_1010)
    }

    /// Sorts registers `r[s..s + N]`, which together hold a bitonic sequence.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn bitonic<const N: usize, const R: usize>(r: &mut [__m256i; R], s: usize) {
        let mut d = N / 2;
        while d >= 1 {
            for i in 0..N {
                if i & d == 0 {
                    minmax(r, s + i, s + i + d);
                }
            }
            d /= 2;
        }
        for i in 0..N {
            r[s + i] = bitonic8(r[s + i]);
        }
    }

    /// Merges neighbouring sorted runs of `RUN` registers: against the second
    /// run reversed, min/max split each pair into two bitonic halves.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn merge_runs<const RUN: usize, const R: usize>(r: &mut [__m256i; R]) {
        let reverse = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
        let mut s = 0;
        while s < R {
            let mut rev = [_mm256_setzero_si256(); RUN];
            for (i, x) in rev.iter_mut().enumerate() {
                *x = _mm256_permutevar8x32_epi32(r[s + 2 * RUN - 1 - i], reverse);
            }
            for (i, x) in rev.iter().enumerate() {
                let a = r[s + i];
                r[s + i] = _mm256_min_epi32(a, *x);
                r[s + RUN + i] = _mm256_max_epi32(a, *x);
            }
            bitonic::<RUN, R>(r, s);
            bitonic::<RUN, R>(r, s + RUN);
            s += 2 * RUN;
        }
    }

    /// Sorts the lanes of `r[s..s + 8]` column-wise (optimal 19-comparator
    /// network), then transposes them: 8 sorted runs of 8.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn sort_runs8<const R: usize>(r: &mut [__m256i; R], s: usize) {
        #[rustfmt::skip]
        const NET: [(usize, usize); 19] = [
            (0, 2), (1, 3), (4, 6), (5, 7),
            (0, 4), (1, 5), (2, 6), (3, 7),
            (0, 1), (2, 3), (4, 5), (6, 7),
            (2, 4), (3, 5),
            (1, 4), (3, 6),
            (1, 2), (3, 4), (5, 6),
        ];
        for (i, j) in NET {
            minmax(r, s + i, s + j);
        }
        let t = transpose8([
            r[s],
            r[s + 1],
            r[s + 2],
            r[s + 3],
            r[s + 4],
            r[s + 5],
            r[s + 6],
            r[s + 7],
        ]);
        r[s..s + 8].copy_from_slice(&t);
    }

    /// Sorts `8 R` keys held in registers.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn sort_regs<const R: usize>(v: &mut [i32]) {
        assert_eq!(v.len(), 8 * R);
        let mut r = [_mm256_setzero_si256(); R];
        for (i, x) in r.iter_mut().enumerate() {
            // SAFETY: 8 * R == v.len().
            *x = _mm256_loadu_si256(v.as_ptr().add(8 * i).cast());
        }
        let mut s = 0;
        while s < R {
            sort_runs8(&mut r, s);
            s += 8;
        }
        merge_runs::<1, R>(&mut r);
        merge_runs::<2, R>(&mut r);
        merge_runs::<4, R>(&mut r);
        if R > 8 {
            merge_runs::<8, R>(&mut r);
        }
        for (i, x) in r.iter().enumerate() {
            // SAFETY: as above.
            _mm256_storeu_si256(v.as_mut_ptr().add(8 * i).cast(), *x);
        }
    }

    /// Sorts 64 or 128 keys: sorted runs of 8, then bitonic merges.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sort_small(v: &mut [i32]) {
        match v.len() {
            64 => sort_regs::<8>(v),
            128 => sort_regs::<16>(v),
            n => panic!("sort_small sorts 64 or 128 keys, not {n}"),
        }
    }

    /// 32 comparison results (4 × 8 lanes of -1/0) as 32 bytes, in order.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pack_bytes(c: [__m256i; 4]) -> __m256i {
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(c[0], c[1]),
            _mm256_packs_epi32(c[2], c[3]),
        );
        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// Transposes 8 registers as an 8×8 matrix of lanes.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
        let t = [
            _mm256_unpacklo_epi32(r[0], r[1]),
            _mm256_unpackhi_epi32(r[0], r[1]),
            _mm256_unpacklo_epi32(r[2], r[3]),
            _mm256_unpackhi_epi32(r[2], r[3]),
            _mm256_unpacklo_epi32(r[4], r[5]),
            _mm256_unpackhi_epi32(r[4], r[5]),
            _mm256_unpacklo_epi32(r[6], r[7]),
            _mm256_unpackhi_epi32(r[6], r[7]),
        ];
        let u = [
            _mm256_unpacklo_epi64(t[0], t[2]),
            _mm256_unpackhi_epi64(t[0], t[2]),
            _mm256_unpacklo_epi64(t[1], t[3]),
            _mm256_unpackhi_epi64(t[1], t[3]),
            _mm256_unpacklo_epi64(t[4], t[6]),
            _mm256_unpackhi_epi64(t[4], t[6]),
            _mm256_unpacklo_epi64(t[5], t[7]),
            _mm256_unpackhi_epi64(t[5], t[7]),
        ];
        [
            _mm256_permute2x128_si256(u[0], u[4], 0x20),
            _mm256_permute2x128_si256(u[1], u[5], 0x20),
            _mm256_permute2x128_si256(u[2], u[6], 0x20),
            _mm256_permute2x128_si256(u[3], u[7], 0x20),
            _mm256_permute2x128_si256(u[0], u[4], 0x31),
            _mm256_permute2x128_si256(u[1], u[5], 0x31),
            _mm256_permute2x128_si256(u[2], u[6], 0x31),
            _mm256_permute2x128_si256(u[3], u[7], 0x31),
        ]
    }

    /// Transposes the 4×4 blocks of lanes of 4 registers, within each 128-bit half.
    #[inline(always)]
    unsafe fn transpose4(r: [__m256i; 4]) -> [__m256i; 4] {
        let t = [
            _mm256_unpacklo_epi32(r[0], r[1]),
            _mm256_unpackhi_epi32(r[0], r[1]),
            _mm256_unpacklo_epi32(r[2], r[3]),
            _mm256_unpackhi_epi32(r[2], r[3]),
        ];
        [
            _mm256_unpacklo_epi64(t[0], t[2]),
            _mm256_unpackhi_epi64(t[0], t[2]),
            _mm256_unpacklo_epi64(t[1], t[3]),
            _mm256_unpackhi_epi64(t[1], t[3]),
        ]
    }

    /// N:M on `8 M` keys (M = 4 or 8; registers of whole groups): transposed
    /// so that register `j` holds key `j` of 8 groups, the ranks are counted
    /// with lane-wise compares, and the prune masks (`rank < n`) are
    /// transposed back.
    #[inline(always)]
    unsafe fn nm_prune<const M: usize>(k: [__m256i; M], nv: __m256i) -> [__m256i; M] {
        let mut c = k;
        if M == 4 {
            c[..4].copy_from_slice(&transpose4([k[0], k[1], k[2], k[3]]));
        } else {
            c[..8].copy_from_slice(&transpose8([
                k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7],
            ]));
        }
        // Key j is preceded by every key i < j unless k_i > k_j (ties go to
        // the lower index), and by every key i > j with k_i < k_j. (Pairs are
        // compared twice, which keeps the live registers within AVX2's 16.)
        let mut prune = [_mm256_setzero_si256(); M];
        for (j, p) in prune.iter_mut().enumerate() {
            let mut rank = _mm256_set1_epi32(j as i32);
            for (i, ci) in c.iter().enumerate() {
                if i < j {
                    rank = _mm256_add_epi32(rank, _mm256_cmpgt_epi32(*ci, c[j]));
                } else if i > j {
                    rank = _mm256_sub_epi32(rank, _mm256_cmpgt_epi32(c[j], *ci));
                }
            }
            *p = _mm256_cmpgt_epi32(nv, rank);
        }
        let mut c = prune;
        if M == 4 {
            let t = transpose4([c[0], c[1], c[2], c[3]]);
            c[..4].copy_from_slice(&t);
        } else {
            let t = transpose8([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            c[..8].copy_from_slice(&t);
        }
        c
    }

    /// N:M over one row, `8 M` scores at a time straight from `$row` (loaded as
    /// `f32`-like bits by `$load`); returns the largest `|bits|`.
    macro_rules! nm_pass {
        ($M:ident, $row:ident, $n:ident, $out:ident, $keys_of:ident, |$i:ident| $load:expr) => {{
            let len = $row.len();
            assert_eq!($out.len(), len);
            let (nv, abs, one) = (
                _mm256_set1_epi32($n as i32),
                _mm256_set1_epi32(i32::MAX),
                _mm256_set1_epi8(1),
            );
            let mut max = _mm256_setzero_si256();
            let mut i = 0;
            while i + 8 * $M <= len {
                let mut k = [_mm256_setzero_si256(); $M];
                for (j, x) in k.iter_mut().enumerate() {
                    let $i = i + 8 * j;
                    // SAFETY: i + 8 M <= len bounds the load.
                    let b = $load;
                    max = _mm256_max_epu32(max, _mm256_and_si256(b, abs));
                    *x = order_keys(b);
                }
                let prune = nm_prune::<$M>(k, nv);
                for (j, p) in prune.chunks_exact(4).enumerate() {
                    // SAFETY: i + 8 M <= len == out.len(); a bool is a byte, 0 or 1.
                    _mm256_storeu_si256(
                        $out.as_mut_ptr().add(i + 32 * j).cast(),
                        _mm256_and_si256(pack_bytes([p[0], p[1], p[2], p[3]]), one),
                    );
                }
                i += 8 * $M;
            }
            // The tail: fewer than 8 M scores, in whole groups.
            let mut keys = [0i32; 64];
            let tail = &$row[i..];
            let tail_max = super::$keys_of(tail, &mut keys[..tail.len()]);
            super::nm_fixed::<$M>(&keys[..tail.len()], $n, &mut $out[i..]);
            lane_max(max).max(tail_max)
        }};
    }

    /// N:M (M = 4 or 8) of `f32` scores in one pass; returns the largest `|bits|`.
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub(super) unsafe fn nm_f32<const M: usize>(row: &[f32], n: usize, out: &mut Out) -> u32 {
        nm_pass!(M, row, n, out, keys_f32, |i| _mm256_loadu_si256(
            row.as_ptr().add(i).cast()
        ))
    }

    /// [`nm_f32`] for 16-bit floats; returns the largest `|bits| << 16`.
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub(super) unsafe fn nm_half<const M: usize>(row: &[u16], n: usize, out: &mut Out) -> u32 {
        nm_pass!(M, row, n, out, keys_half, |i| _mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(row.as_ptr().add(i).cast())),
            16
        ))
    }

    /// [`super::write_lt`] plus [`super::first_ties`] in one pass: while ties
    /// remain to be pruned, each block of 32 counts its ties and takes them
    /// all (or the first ones, once).
    #[target_feature(enable = "avx2,bmi1,popcnt")]
    pub(super) unsafe fn write_ties(keys: &[i32], t: i32, quota: usize, out: &mut Out) {
        let n = keys.len();
        assert_eq!(out.len(), n);
        let (tv, one) = (_mm256_set1_epi32(t), _mm256_set1_epi8(1));
        let (mut left, mut i) = (quota, 0usize);
        while i + 32 <= n && left > 0 {
            let mut lt = [_mm256_setzero_si256(); 4];
            let mut eq = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                // SAFETY: i + 32 <= n bounds the loads.
                let k = _mm256_loadu_si256(keys.as_ptr().add(i + 8 * j).cast());
                lt[j] = _mm256_cmpgt_epi32(tv, k);
                eq[j] = _mm256_cmpeq_epi32(k, tv);
            }
            let (lt, eq) = (pack_bytes(lt), pack_bytes(eq));
            let ties = _mm256_movemask_epi8(eq) as u32;
            let c = ties.count_ones() as usize;
            let take = if c <= left {
                _mm256_or_si256(lt, eq)
            } else {
                lt
            };
            // SAFETY: i + 32 <= n == out.len(); a bool is a byte, 0 or 1.
            _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), _mm256_and_si256(take, one));
            if c <= left {
                left -= c;
            } else {
                let mut bits = ties;
                for _ in 0..left {
                    out[i + bits.trailing_zeros() as usize].write(true);
                    bits &= bits - 1;
                }
                left = 0;
            }
            i += 32;
        }
        super::write_lt(&keys[i..], t, &mut out[i..]);
        if left > 0 {
            super::first_ties(&keys[i..], t, left, &mut out[i..]);
        }
    }
}

fn packed_row<T: Element>(row: &[T], buf: &mut Vec<u64>) {
    buf.clear();
    buf.extend(
        row.iter()
            .enumerate()
            .map(|(j, v)| (u64::from(key(v.to_f32())) << 32) | j as u64),
    );
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

    /// Every instruction set the row kernels can use on this machine.
    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if Isa::detect() != Isa::Scalar {
            v.push(Isa::detect());
        }
        v
    }

    /// Rows of `cols` scores in one of several shapes: random, few distinct
    /// values, bf16-like ties, or ordered/periodic rows that defeat sampling.
    fn shaped(rows: usize, cols: usize, shape: u8, seed: u64) -> Vec<f32> {
        let mut g = crate::rng::SplitMix64::stream(seed, crate::rng::Axis::Row, 0);
        let mut u = move || (g.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (0..rows * cols)
            .map(|i| {
                let j = (i % cols) as f32;
                match shape {
                    0 => u() * 2.0 - 1.0,
                    1 => [-1.5f32, -0.0, 0.0, 0.25, 0.5, 2.0][(u() * 6.0) as usize % 6],
                    2 => ((u() * 40.0).floor() - 20.0) / 8.0,
                    3 => j,
                    4 => -j,
                    5 => (i % 64) as f32 + u() * 1e-3,
                    6 => {
                        if j < cols as f32 / 2.0 {
                            1.0
                        } else {
                            u()
                        }
                    }
                    _ => f32::from_bits(u().to_bits() & 0x0000_ffff), // subnormals
                }
            })
            .collect()
    }

    fn assert_per_row(data: &[f32], rows: usize, cols: usize, k: usize) {
        let s = MatRef::new(data, rows, cols, "s").unwrap();
        for isa in isas() {
            let (m, finite) = per_row(s, k, isa);
            assert!(finite);
            for i in 0..rows {
                let row = &data[i * cols..(i + 1) * cols];
                assert_eq!(
                    &m[i * cols..(i + 1) * cols],
                    &stable_reference(row, k)[..],
                    "{isa:?} row {i}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        // Rows longer than SMALL go through the sampled narrowing.
        #[test]
        fn long_rows_are_exact_and_stable(
            cols in 1usize..3000, rows in 1usize..4, shape in 0u8..8, seed in any::<u64>(), s in 0.0f64..0.999,
        ) {
            let data = shaped(rows, cols, shape, seed);
            assert_per_row(&data, rows, cols, prune_count(cols, s));
        }

        #[test]
        fn half_rows_match_their_f32_values(cols in 1usize..1500, shape in 0u8..8, seed in any::<u64>(), s in 0.0f64..0.999) {
            let data = shaped(2, cols, shape, seed);
            let k = prune_count(cols, s);
            let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
            let b: Vec<half::bf16> = data.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let bf: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            for isa in isas() {
                let (mh, _) = per_row(MatRef::new(&h, 2, cols, "s").unwrap(), k, isa);
                let (mb, _) = per_row(MatRef::new(&b, 2, cols, "s").unwrap(), k, isa);
                for i in 0..2 {
                    let r = i * cols..(i + 1) * cols;
                    prop_assert_eq!(&mh[r.clone()], &stable_reference(&hf[r.clone()], k)[..]);
                    prop_assert_eq!(&mb[r.clone()], &stable_reference(&bf[r.clone()], k)[..]);
                }
            }
        }

        #[test]
        fn half_n_of_m_matches_f32_values(groups in 1usize..60, eight in any::<bool>(), shape in 0u8..8, seed in any::<u64>()) {
            let (n, m) = if eight { (4, 8) } else { (2, 4) };
            let cols = m * groups;
            let data = shaped(2, cols, shape, seed);
            let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
            let b: Vec<half::bf16> = data.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let bf: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            for isa in isas() {
                let (mh, _) = n_of_m(MatRef::new(&h, 2, cols, "s").unwrap(), n, m, isa);
                let (mb, _) = n_of_m(MatRef::new(&b, 2, cols, "s").unwrap(), n, m, isa);
                for g in 0..2 * groups {
                    let r = g * m..(g + 1) * m;
                    prop_assert_eq!(&mh[r.clone()], &stable_reference(&hf[r.clone()], n)[..]);
                    prop_assert_eq!(&mb[r.clone()], &stable_reference(&bf[r.clone()], n)[..]);
                }
            }
        }

        #[test]
        fn n_of_m_any_shape(groups in 1usize..40, mi in 0usize..6, nf in 0.0f64..1.0, shape in 0u8..8, seed in any::<u64>()) {
            let m = [2usize, 4, 8, 6, 16, 20][mi];
            let n = 1 + ((m - 1) as f64 * nf) as usize % (m - 1);
            let cols = m * groups;
            let data = shaped(2, cols, shape, seed);
            let s = MatRef::new(&data, 2, cols, "s").unwrap();
            for isa in isas() {
                let (mask, finite) = n_of_m(s, n, m, isa);
                prop_assert!(finite);
                for (mg, dg) in mask.chunks(m).zip(data.chunks(m)) {
                    prop_assert_eq!(mg.to_vec(), stable_reference(dg, n));
                }
            }
        }
    }

    #[test]
    fn kth_handles_every_bracket_outcome() {
        // Sorted, reversed and constant rows, every rank.
        for keys in [
            (0..1000).collect::<Vec<i32>>(),
            (0..1000).rev().collect(),
            vec![7; 1000],
            (0..1000).map(|i| i % 2).collect(),
            (0..1000)
                .map(|i| {
                    if i % 128 == 0 {
                        i32::MIN
                    } else {
                        i32::MAX - (i % 3)
                    }
                })
                .collect(),
        ] {
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            for isa in isas() {
                let (mut a, mut b) = (vec![0; keys.len() + 8], vec![0; keys.len() + 8]);
                for r in (0..keys.len()).step_by(7).chain([keys.len() - 1]) {
                    let (t, lt, eq) = kth(&keys, r, &mut a, &mut b, None, isa);
                    assert_eq!(t, sorted[r]);
                    assert_eq!(lt, sorted.partition_point(|&x| x < t));
                    assert_eq!(eq, sorted.iter().filter(|&&x| x == t).count());
                }
            }
        }
    }

    #[test]
    fn keys_order_like_f32() {
        let v = [
            f32::MIN,
            -1.0,
            -1e-40,
            -0.0,
            0.0,
            1e-45,
            1e-40,
            1.0,
            f32::MAX,
        ];
        for w in v.windows(2) {
            assert!(key(w[0]) <= key(w[1]), "{w:?}");
            assert_eq!(key(w[0]) == key(w[1]), w[0] == w[1], "{w:?}");
        }
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
#[cfg(all(test, target_arch = "x86_64"))]
mod sort_tests {
    use super::*;

    /// The AVX2 sorting network against `sort_unstable`, with many ties.
    #[test]
    fn sort_small_sorts() {
        if Isa::detect() == Isa::Scalar {
            return;
        }
        let mut g = crate::rng::SplitMix64::stream(3, crate::rng::Axis::Row, 0);
        for case in 0..2000 {
            let len = if case % 2 == 0 { 64 } else { 128 };
            let range = [2u64, 5, 100, 1 << 32][case % 4];
            let mut v: Vec<i32> = (0..len)
                .map(|_| ((g.next_u64() % range) as i32).wrapping_sub((range / 2) as i32))
                .collect();
            if case % 7 == 0 {
                v[3] = i32::MIN;
                v[5] = i32::MAX;
            }
            let mut want = v.clone();
            want.sort_unstable();
            unsafe { avx2::sort_small(&mut v) };
            assert_eq!(v, want, "case {case}");
        }
    }
}
