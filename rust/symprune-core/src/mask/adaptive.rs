//! Wanda's adaptive per-row variant (methods.md §4): per row, the smallest
//! scores whose cumulative sum stays within `α ·` the row total, `α`
//! searched so that the matrix reaches the sparsity.

use super::keys::key;
use crate::dtype::{Element, MatRef};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// `row` as `key << 32 | column`, which sorts in the stable ascending order.
fn packed_row<T: Element>(row: &[T], buf: &mut Vec<u64>) {
    buf.clear();
    buf.extend(
        row.iter()
            .enumerate()
            .map(|(j, v)| (u64::from(key(v.to_f32())) << 32) | j as u64),
    );
}

/// Wanda's adaptive per-row variant with its exact α search, but an exact
/// per-row count (no `<=` threshold that would over-prune ties).
pub(super) fn adaptive<T: Element>(s: MatRef<T>, sparsity: f64, name: &str) -> Result<Vec<bool>> {
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

#[cfg(test)]
mod tests {
    use crate::mask::testutil::stable_reference;
    use crate::mask::{compute, Pattern};
    use crate::MatRef;
    use proptest::prelude::*;

    proptest! {
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
}
