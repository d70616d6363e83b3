//! The exact per-row select (methods.md §4): the `k` smallest of each row,
//! ties by column, through a sample-bracketed narrowing to the k-th key
//! ([`kth`]) and one pass that writes the row.

use super::check_finite;
use super::isa::{dispatch, Isa};
use super::keys::{row_keys, Src};
use super::rows::{mask_by_rows, Out, Scratch};
use crate::dtype::{Element, MatRef};
use std::sync::atomic::{AtomicBool, Ordering};

/// Exactly `k` smallest per row, ties by column. Returns the mask and whether
/// every score was finite.
///
/// Per row: one pass turns the scores into order keys (checking finiteness);
/// a sample-guided select ([`kth`]) narrows them to the k-th key `T`, and one
/// vector pass writes `key < T` (or `key <= T` when every tie is pruned), the
/// first ties by column being added when only some of them are.
pub(super) fn per_row<T: Element>(s: MatRef<T>, k: usize, isa: Isa) -> (Vec<bool>, bool) {
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
                    Src::F32(v) => {
                        super::avx2::keys_compact_f32(v, &mut sc.keys, lo, hi, &mut sc.a)
                    }
                    Src::Half(v, _) => {
                        super::avx2::keys_compact_half(v, &mut sc.keys, lo, hi, &mut sc.a)
                    }
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
            unsafe { super::avx2::sort_small(&mut buf[..if v.len() <= 64 { 64 } else { 128 }]) };
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
            unsafe { super::avx2::sort_small(sample) };
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
pub(super) fn compact(src: &[i32], lo: i32, hi: i32, dst: &mut [i32]) -> (usize, usize) {
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
        Isa::Avx2 => unsafe { super::avx2::write_ties(keys, t, quota, out) },
        Isa::Scalar => {
            write_lt(keys, t, out);
            first_ties(keys, t, quota, out);
        }
    }
}

#[inline(always)]
pub(super) fn write_le(keys: &[i32], t: i32, out: &mut Out) {
    for (o, &k) in out.iter_mut().zip(keys) {
        o.write(k <= t);
    }
}

#[inline(always)]
pub(super) fn write_lt(keys: &[i32], t: i32, out: &mut Out) {
    for (o, &k) in out.iter_mut().zip(keys) {
        o.write(k < t);
    }
}

/// Marks the first `quota` keys equal to `t`.
#[inline(always)]
pub(super) fn first_ties(keys: &[i32], t: i32, quota: usize, out: &mut Out) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::testutil::{isas, shaped, small_values, stable_reference};
    use crate::mask::{compute, prune_count, Pattern};
    use proptest::prelude::*;

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
}
