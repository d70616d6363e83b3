//! N:M masks (methods.md §4): the `n` smallest of every `m` consecutive
//! columns, ties by column, through each key's rank within its group.

use super::isa::Isa;
use super::keys::{row_keys, Src};
use super::rows::{mask_by_rows, Out, Scratch};
use crate::dtype::{Element, MatRef};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

/// `n` smallest of every `m` consecutive columns, ties by column, through each
/// key's rank within its group.
pub(super) fn n_of_m<T: Element>(s: MatRef<T>, n: usize, m: usize, isa: Isa) -> (Vec<bool>, bool) {
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
                (Src::F32(v), 4) => Some(super::avx2::nm_f32::<4>(v, n, out)),
                (Src::F32(v), _) => Some(super::avx2::nm_f32::<8>(v, n, out)),
                (Src::Half(v, _), 4) => Some(super::avx2::nm_half::<4>(v, n, out)),
                (Src::Half(v, _), _) => Some(super::avx2::nm_half::<8>(v, n, out)),
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
pub(super) fn nm_fixed<const M: usize>(keys: &[i32], n: usize, out: &mut Out) {
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
        Isa::Avx2 => unsafe { super::avx2::nm_fixed::<M>(keys, n, out) },
        Isa::Scalar => nm_fixed::<M>(keys, n, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::testutil::{isas, shaped, small_values, stable_reference};
    use crate::mask::{compute, Pattern};
    use proptest::prelude::*;

    proptest! {
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
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

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
}
