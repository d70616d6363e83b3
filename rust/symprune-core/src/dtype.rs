//! Element types and a borrowed row-major matrix view.

use crate::error::{Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// A floating-point storage element that converts exactly to `f32`.
pub trait Element: Copy + Send + Sync + PartialEq + 'static {
    const ZERO: Self;
    fn to_f32(self) -> f32;
    /// The absolute value, exact (the sign bit cleared).
    fn abs(self) -> Self;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
}

impl Element for f16 {
    const ZERO: Self = f16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f16::from_bits(self.to_bits() & 0x7fff)
    }
}

impl Element for bf16 {
    const ZERO: Self = bf16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        bf16::from_bits(self.to_bits() & 0x7fff)
    }
}

/// A borrowed, row-major `(rows, cols)` matrix.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
}

impl<'a, T: Element> MatRef<'a, T> {
    /// Wraps `data` as a `(rows, cols)` matrix; `arg` names it in errors.
    pub fn new(data: &'a [T], rows: usize, cols: usize, arg: &str) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::ShapeMismatch {
                arg: arg.into(),
                expected: format!("{rows}x{cols} = {} elements", rows.saturating_mul(cols)),
                got: format!("{} elements", data.len()),
            });
        }
        Ok(Self { data, rows, cols })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn data(&self) -> &'a [T] {
        self.data
    }

    pub fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Fails with [`Error::NonFinite`] at the first NaN/Inf (in row-major order).
    pub fn ensure_finite(&self, arg: &str) -> Result<()> {
        // Whole blocks first: the all-finite case is then a vectorized scan,
        // and only the first bad block is searched element by element.
        const BLOCK: usize = 1 << 14;
        let finite = |b: &[T]| b.iter().fold(true, |ok, v| ok & v.to_f32().is_finite());
        let bad = self
            .data
            .par_chunks(BLOCK)
            .position_first(|b| !finite(b))
            .and_then(|b| {
                let start = b * BLOCK;
                let offset = self.data[start..]
                    .iter()
                    .position(|v| !v.to_f32().is_finite());
                offset.map(|o| start + o)
            });
        let cols = self.cols.max(1);
        match bad {
            None => Ok(()),
            Some(pos) => Err(Error::NonFinite {
                arg: arg.into(),
                row: pos / cols,
                col: pos % cols,
                value: self.data[pos].to_f32(),
            }),
        }
    }
}

/// Checks a per-channel statistic: right length, finite, non-negative.
pub fn check_stat(values: &[f32], len: usize, arg: &str) -> Result<()> {
    check_signed_stat(values, len, arg)?;
    if let Some(pos) = values.iter().position(|v| *v < 0.0) {
        return Err(Error::invalid(
            arg,
            format!(
                "value {} at index {pos} is negative; it must be a mean of squares",
                values[pos]
            ),
        ));
    }
    Ok(())
}

/// Checks a per-channel statistic that may be negative: right length, finite.
pub fn check_signed_stat(values: &[f32], len: usize, arg: &str) -> Result<()> {
    if values.len() != len {
        return Err(Error::ShapeMismatch {
            arg: arg.into(),
            expected: format!("{len} values"),
            got: format!("{} values", values.len()),
        });
    }
    if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            arg: arg.into(),
            row: 0,
            col: pos,
            value: values[pos],
        });
    }
    Ok(())
}
