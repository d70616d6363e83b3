//! Which instruction set the row kernels use (detected at run time), and
//! [`dispatch`], which calls a kernel compiled for it.

/// Which instruction set the row kernels use, detected once per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("popcnt")
        {
            return Isa::Avx2;
        }
        Isa::Scalar
    }
}

/// Expands to a call of `$f` compiled for `$isa` (the same source, inlined
/// into an AVX2-enabled wrapper on x86-64 so that it auto-vectorizes wider).
macro_rules! dispatch {
    ($isa:expr, $f:ident ( $($arg:expr),* )) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only chosen when AVX2 was detected.
            $crate::mask::isa::Isa::Avx2 => unsafe { $crate::mask::avx2::$f($($arg),*) },
            $crate::mask::isa::Isa::Scalar => $f($($arg),*),
        }
    };
}
pub(super) use dispatch;
