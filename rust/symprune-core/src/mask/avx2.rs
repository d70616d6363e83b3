//! The row kernels compiled with AVX2 (callers check for it first), and
//! hand-written ones where compilers do not vectorize: compaction (also
//! fused with the key pass), the tie-aware mask write, a sorting network
//! for samples, and N:M ranks on transposed groups.

use super::rows::Out;
use std::arch::x86_64::*;

macro_rules! with_avx2 {
    ($($m:ident::$name:ident($($a:ident: $t:ty),*) $(-> $r:ty)?;)*) => {$(
        #[target_feature(enable = "avx2,bmi1,popcnt")]
        pub(super) unsafe fn $name($($a: $t),*) $(-> $r)? {
            super::$m::$name($($a),*)
        }
    )*};
}

with_avx2! {
    keys::keys_f32(row: &[f32], keys: &mut [i32]) -> u32;
    keys::keys_half(row: &[u16], keys: &mut [i32]) -> u32;
    keys::max_abs_f32(row: &[f32]) -> u32;
    keys::max_abs_half(row: &[u16]) -> u32;
    select::write_le(keys: &[i32], t: i32, out: &mut Out);
}

#[target_feature(enable = "avx2,bmi1,popcnt")]
pub(super) unsafe fn nm_fixed<const M: usize>(keys: &[i32], n: usize, out: &mut Out) {
    super::nm::nm_fixed::<M>(keys, n, out)
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

/// [`super::select::compact`], 8 keys at a time (see [`compact8`]).
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
    let (lt, mt) = super::select::compact(&src[i..], lo, hi, &mut dst[m..]);
    (lane_sum(below) + lt, m + mt)
}

/// Order keys of 8 `f32`-like bits (as `order_key` in `keys.rs` makes them).
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

/// [`super::keys::keys_f32`] and a first [`compact`] in one pass: returns the
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
    let tail_max = super::keys::keys_f32(&row[i..], &mut keys[i..]);
    let (lt, mt) = super::select::compact(&keys[i..], lo, hi, &mut dst[m..]);
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
    let tail_max = super::keys::keys_half(&row[i..], &mut keys[i..]);
    let (lt, mt) = super::select::compact(&keys[i..], lo, hi, &mut dst[m..]);
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
        let tail_max = super::keys::$keys_of(tail, &mut keys[..tail.len()]);
        super::nm::nm_fixed::<$M>(&keys[..tail.len()], $n, &mut $out[i..]);
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

/// [`super::select::write_lt`] plus [`super::select::first_ties`] in one
/// pass: while ties remain to be pruned, each block of 32 counts its ties
/// and takes them all (or the first ones, once).
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
    super::select::write_lt(&keys[i..], t, &mut out[i..]);
    if left > 0 {
        super::select::first_ties(&keys[i..], t, left, &mut out[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::isa::Isa;

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
            unsafe { sort_small(&mut v) };
            assert_eq!(v, want, "case {case}");
        }
    }
}
