//! Counting exact zeros (`±0` for floats), shared by the writer, the
//! manifest and `inspect`.

use rayon::prelude::*;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

/// Exact zeros among a tensor's elements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZeroCount {
    pub zeros: u64,
    pub numel: u64,
}

impl ZeroCount {
    pub fn sparsity(&self) -> f64 {
        if self.numel == 0 {
            0.0
        } else {
            self.zeros as f64 / self.numel as f64
        }
    }
}

/// Bytes per element and the bits that must all be zero for an element to
/// count as zero: floats ignore their sign bit, everything else compares all
/// bits. `None` for dtypes narrower than a byte.
pub(crate) fn zero_mask(dtype: Dtype) -> Option<(usize, u64)> {
    let bits = dtype.bitsize();
    if bits % 8 != 0 {
        return None;
    }
    let all = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let sign_free = matches!(
        dtype,
        Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 | Dtype::F8_E4M3 | Dtype::F8_E5M2
    );
    Some((bits / 8, if sign_free { all >> 1 } else { all }))
}

#[inline(always)]
pub(crate) fn is_zero<const N: usize>(e: &[u8], mask: u64) -> bool {
    let mut v = [0u8; 8];
    v[..N].copy_from_slice(&e[..N]);
    u64::from_le_bytes(v) & mask == 0
}

fn zeros_of<const N: usize>(bytes: &[u8], mask: u64) -> u64 {
    bytes
        .par_chunks(N << 16)
        .map(|c| c.chunks_exact(N).filter(|e| is_zero::<N>(e, mask)).count() as u64)
        .sum()
}

/// Exact zeros among the elements in `bytes` (whole elements of `dtype`);
/// `None` for dtypes narrower than a byte.
pub fn count_zeros(dtype: Dtype, bytes: &[u8]) -> Option<u64> {
    let (size, mask) = zero_mask(dtype)?;
    Some(match size {
        1 => zeros_of::<1>(bytes, mask),
        2 => zeros_of::<2>(bytes, mask),
        4 => zeros_of::<4>(bytes, mask),
        _ => zeros_of::<8>(bytes, mask),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_ignore_the_sign_of_floats_only() {
        let bf = [0x00u8, 0x80, 0x00, 0x00, 0x80, 0x3f]; // -0, +0, 1.0
        assert_eq!(count_zeros(Dtype::BF16, &bf), Some(2));
        let i16s = [0x00u8, 0x80, 0x00, 0x00];
        assert_eq!(count_zeros(Dtype::I16, &i16s), Some(1));
        let f32s = [0u8, 0, 0, 0x80, 1, 0, 0, 0];
        assert_eq!(count_zeros(Dtype::F32, &f32s), Some(1));
        assert_eq!(count_zeros(Dtype::F4, &[0u8; 4]), None);
        assert_eq!(count_zeros(Dtype::F32, &[]), Some(0));
    }
}
