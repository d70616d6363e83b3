//! What the mask tests share: the plain stable-sort reference, score
//! generators, and the instruction sets to test.

use super::isa::Isa;
use proptest::prelude::*;

pub(super) fn stable_reference(row: &[f32], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap());
    let mut m = vec![false; row.len()];
    idx[..k].iter().for_each(|&j| m[j] = true);
    m
}

pub(super) fn small_values() -> impl Strategy<Value = Vec<f32>> {
    // Few distinct values, to force ties.
    prop::collection::vec(
        prop::sample::select(vec![-1.5f32, -0.0, 0.0, 0.25, 0.5, 2.0]),
        1..200,
    )
}

/// Every instruction set the row kernels can use on this machine.
pub(super) fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if Isa::detect() != Isa::Scalar {
        v.push(Isa::detect());
    }
    v
}

/// Rows of `cols` scores in one of several shapes: random, few distinct
/// values, bf16-like ties, or ordered/periodic rows that defeat sampling.
pub(super) fn shaped(rows: usize, cols: usize, shape: u8, seed: u64) -> Vec<f32> {
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
