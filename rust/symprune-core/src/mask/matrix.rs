//! The exact per-matrix select (methods.md §4): the `k` smallest of the whole
//! matrix, ties in row-major order.

use super::keys::key;
use crate::dtype::{Element, MatRef};
use rayon::prelude::*;

/// Rows per parallel task for whole-matrix passes.
fn row_block(rows: usize) -> usize {
    (rows / (rayon::current_num_threads() * 4)).max(1)
}

/// Exact `k` smallest of the whole matrix, ties in row-major order: a two-pass
/// radix select finds the k-th key, then equal keys are handed out by row.
pub(super) fn per_matrix<T: Element>(s: MatRef<T>, k: usize) -> Vec<bool> {
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

#[cfg(test)]
mod tests {
    use crate::mask::testutil::{small_values, stable_reference};
    use crate::mask::{compute, prune_count, Pattern};
    use crate::MatRef;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn per_matrix_is_exact_and_stable(v in small_values(), cols in 1usize..17, s in 0.0f64..0.999) {
            let rows = v.len() / cols;
            prop_assume!(rows > 0);
            let data = &v[..rows * cols];
            let m = compute(MatRef::new(data, rows, cols, "s").unwrap(), Pattern::PerMatrix { sparsity: s }, "").unwrap();
            prop_assert_eq!(m, stable_reference(data, prune_count(rows * cols, s)));
        }
    }
}
