//! A tiny, fully specified random generator for stochastic scores.
//!
//! stochRIA must be reproducible per matrix and re-implementable in a few
//! lines of any language (the tests do it in Python), so the generator is
//! spelled out here instead of borrowed from a crate whose stream may change:
//! SplitMix64 streams keyed by FNV-1a of the tensor name, Lemire's multiply
//! for bounded draws, and a partial Fisher-Yates shuffle for subsets.

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finalizer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The key of one matrix: its name and the user's seed.
pub fn tensor_key(seed: u64, name: &str) -> u64 {
    fnv1a64(name.as_bytes()) ^ mix64(seed)
}

/// Which family of subsets a stream draws (rows of W or columns of W).
#[derive(Debug, Clone, Copy)]
pub enum Axis {
    Row = 0,
    Col = 1,
}

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream of subset `index` of `axis` under `key`.
    pub fn stream(key: u64, axis: Axis, index: u64) -> Self {
        SplitMix64(key ^ mix64(((axis as u64) << 56) ^ index))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// A draw in `0..bound` (Lemire's multiply-high; bound > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}

/// `k` distinct indices of `0..n`, in draw order (partial Fisher-Yates).
/// `k == n` returns `0..n` in natural order without drawing, so a full subset
/// sums in exactly the order of the deterministic method.
pub fn subset(n: usize, k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if k >= n {
        return idx;
    }
    for t in 0..k {
        let r = t + rng.below(n - t);
        idx.swap(t, r);
    }
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_distinct_and_reproducible() {
        let key = tensor_key(7, "model.layers.0.mlp.up_proj.weight");
        let a = subset(100, 10, &mut SplitMix64::stream(key, Axis::Row, 3));
        let b = subset(100, 10, &mut SplitMix64::stream(key, Axis::Row, 3));
        assert_eq!(a, b);
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 10);
        assert!(s.iter().all(|&i| i < 100));
        let c = subset(100, 10, &mut SplitMix64::stream(key, Axis::Col, 3));
        assert_ne!(a, c);
    }

    #[test]
    fn splitmix_matches_published_vector() {
        // First output of SplitMix64 seeded with 0 (Vigna's reference code).
        let mut g = SplitMix64(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
    }
}
