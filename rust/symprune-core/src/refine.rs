//! One entry to every refiner (docs/methods.md §5, §7, §9): the bindings and
//! the shard engine call [`refine`] with whatever the refiner reads.

use crate::dsnot::{self, Layout, RefineStats, Report};
use crate::dtype::{Element, MatRef};
use crate::error::{Error, Result};
use crate::mask::Pattern;
use crate::swaps::{self, SwapsReport};
use crate::vocab::Refiner;

impl Layout {
    /// The structure a refinement keeps for an initial mask of `pattern`:
    /// N:M, or every row's count.
    pub fn of(pattern: Pattern) -> Layout {
        match pattern {
            Pattern::NM { n, m } => Layout::NM { n, m },
            _ => Layout::PerRow,
        }
    }
}

/// What a refinement may read besides the weight and the mask.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefineInputs<'a> {
    /// `in_sq`, `sum`, `var` (DSnoT, R²-DSnoT; [`Refiner::needs_stats`]).
    pub stats: Option<RefineStats<'a>>,
    /// The Gram matrix of the layer's inputs, `in × in` ([`Refiner::needs_gram`]).
    pub gram: Option<MatRef<'a, f32>>,
    /// DSnoT under N:M: the initial method's scores pick inside a group.
    pub initial_scores: Option<MatRef<'a, f32>>,
}

/// The report of either refiner family.
#[derive(Debug, Clone)]
pub enum Refined {
    Dsnot(Report),
    Swaps(SwapsReport),
}

impl Refined {
    /// `Σ_i L_i` (methods.md §9) before and after, where the refiner computed it.
    pub fn loss(&self) -> Option<(f64, f64)> {
        match self {
            Refined::Dsnot(r) => r.loss,
            Refined::Swaps(r) => Some((r.loss_before, r.loss_after)),
        }
    }
}

/// Refines `prune` (row-major, `w`'s shape) with `refiner`; fails, naming
/// `tensor`, when an input the refiner reads is missing.
pub fn refine<T: Element>(
    w: MatRef<T>,
    prune: &[bool],
    refiner: &Refiner,
    layout: Layout,
    inputs: RefineInputs,
    tensor: &str,
) -> Result<(Vec<bool>, Refined)> {
    let name = if tensor.is_empty() { "weight" } else { tensor };
    let missing = |what: &str| {
        Error::invalid(
            format!("{name}: {what}"),
            format!("refine {} needs it", refiner.name()),
        )
    };
    match refiner {
        Refiner::Dsnot(params) => {
            let stats = inputs.stats.ok_or_else(|| missing("in_sq, sum, var"))?;
            dsnot::dsnot(
                w,
                stats,
                prune,
                layout,
                inputs.initial_scores,
                params,
                tensor,
            )
            .map(|(m, r)| (m, Refined::Dsnot(r)))
        }
        Refiner::R2Dsnot(params) => {
            let stats = inputs.stats.ok_or_else(|| missing("in_sq, sum, var"))?;
            dsnot::r2dsnot(w, stats, prune, layout, inputs.gram, params, tensor)
                .map(|(m, r)| (m, Refined::Dsnot(r)))
        }
        Refiner::Swaps(params) => {
            let gram = inputs.gram.ok_or_else(|| missing("gram"))?;
            swaps::swaps(w, prune, gram, layout, params, tensor)
                .map(|(m, r)| (m, Refined::Swaps(r)))
        }
    }
}
