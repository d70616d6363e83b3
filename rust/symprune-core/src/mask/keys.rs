//! Order keys of scores: [`key`] and its signed form, the rows of scores as
//! the kernels read them ([`Src`]), and the key and finiteness passes over a row.

use super::isa::{dispatch, Isa};
use crate::dtype::Element;
use std::any::TypeId;

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

/// A row of scores as the kernels read it: `f32` bits, 16-bit float bits
/// (`f16`/`bf16`, which widen to `f32`-like bits by a 16-bit shift, an exact
/// and order-preserving map), or any other element through `to_f32`.
#[derive(Clone, Copy)]
pub(super) enum Src<'a, T> {
    F32(&'a [f32]),
    /// The bits and the smallest non-finite `|bits| << 16`.
    Half(&'a [u16], u32),
    Other(&'a [T]),
}

impl<'a, T: Element> Src<'a, T> {
    #[inline]
    pub(super) fn of(row: &'a [T]) -> Self {
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
    pub(super) fn key_at(&self, i: usize) -> i32 {
        match *self {
            Src::F32(r) => order_key(r[i].to_bits()),
            Src::Half(r, _) => order_key(u32::from(r[i]) << 16),
            Src::Other(r) => order_key(r[i].to_f32().to_bits()),
        }
    }

    /// The smallest non-finite `|bits|` of the (widened) scores.
    pub(super) fn inf(&self) -> u32 {
        match *self {
            Src::Half(_, inf) => inf,
            _ => F32_INF,
        }
    }
}

/// Smallest non-finite `|bits|` of an `f32`.
const F32_INF: u32 = 0x7f80_0000;

/// Order keys of `row` into `keys`; false if some score is not finite.
pub(super) fn row_keys<T: Element>(row: Src<'_, T>, keys: &mut [i32], isa: Isa) -> bool {
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
pub(super) fn row_is_finite<T: Element>(row: Src<'_, T>, isa: Isa) -> bool {
    match row {
        Src::F32(r) => dispatch!(isa, max_abs_f32(r)) < F32_INF,
        Src::Half(r, _) => dispatch!(isa, max_abs_half(r)) < row.inf(),
        Src::Other(r) => r.iter().all(|v| v.to_f32().is_finite()),
    }
}

/// Returns the largest `|bits|`.
#[inline(always)]
pub(super) fn keys_f32(row: &[f32], keys: &mut [i32]) -> u32 {
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
pub(super) fn keys_half(row: &[u16], keys: &mut [i32]) -> u32 {
    let mut max = 0;
    for (k, &h) in keys.iter_mut().zip(row) {
        let b = u32::from(h) << 16;
        max = max.max(b & 0x7fff_ffff);
        *k = order_key(b);
    }
    max
}

#[inline(always)]
pub(super) fn max_abs_f32(row: &[f32]) -> u32 {
    row.iter().fold(0, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

#[inline(always)]
pub(super) fn max_abs_half(row: &[u16]) -> u32 {
    row.iter()
        .fold(0, |m, &h| m.max(u32::from(h & 0x7fff) << 16))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
