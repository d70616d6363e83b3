"""Typed wrappers over the Rust kernels: scores, masks, mask application.

Weights and scores are 2-D, PyTorch orientation ``(out, in)``, as numpy arrays
(``float32``, ``float16``, or ``ml_dtypes.bfloat16``) or CPU torch tensors
(``float32``, ``float16``, ``bfloat16``). Nothing is copied on the way in when
the input is C-contiguous: half-precision data crosses as a ``uint16`` view of
its bits (numpy has no native bfloat16), and all arithmetic happens in float32
inside Rust with the GIL released. A non-contiguous input is copied once
(read-only arguments) or refused (:func:`apply_mask`, which writes in place).

Statistics (``in_sq``, ``out_sq``) are 1-D means of squared activations as
gathered by calibration (methods.md §2); they are converted to float32.

NaN or Inf in a weight, score or statistic raises :class:`InvalidInputError`
naming the row and column: such values cannot be ranked, and silently
treating them as prunable would hide a broken checkpoint.

Masks are boolean arrays of the weight's shape; ``True`` marks a weight to
prune. Ties are broken by the lower column index (row-major index for
``per-matrix``), so every run and every implementation agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from symprune import _core
from symprune.errors import InvalidInputError
from symprune.spec import METHODS, VOCABULARY

Matrix = Any  # numpy.ndarray or torch.Tensor, 2-D
Vector = Any  # numpy.ndarray, torch.Tensor or sequence of floats, 1-D

SCORES = tuple(m for m in METHODS if VOCABULARY["methods"][m]["is_score"])
"""The score methods (every method but SparseGPT), as the core names them."""


def _is_torch(x: object) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def as_matrix(x: Matrix, arg: str, *, writable: bool = False) -> tuple[np.ndarray, str]:
    """A C-contiguous numpy view of ``x`` and its dtype name (F32, F16, BF16)."""
    if _is_torch(x):
        import torch

        if x.device.type != "cpu":
            raise InvalidInputError(f"{arg}: tensor is on {x.device}; move it to the CPU first")
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise InvalidInputError(
                f"{arg}: dtype {x.dtype} is not float32/float16/bfloat16; cast it first"
            )
        name = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[x.dtype]
        t = x.detach()
        arr = t.numpy() if name == "F32" else t.view(torch.int16).numpy().view(np.uint16)
    elif isinstance(x, np.ndarray):
        arr = x
        if arr.dtype == np.float32:
            name = "F32"
        elif arr.dtype == np.float16:
            name, arr = "F16", arr.view(np.uint16)
        elif arr.dtype.name == "bfloat16":
            name, arr = "BF16", arr.view(np.uint16)
        else:
            raise InvalidInputError(
                f"{arg}: dtype {arr.dtype} is not float32/float16/bfloat16; cast it first"
            )
    else:
        raise InvalidInputError(f"{arg}: expected a numpy array or torch tensor, got {type(x)}")
    if arr.ndim != 2:
        raise InvalidInputError(f"{arg}: expected a 2-D (out, in) matrix, got shape {arr.shape}")
    if not arr.flags.c_contiguous:
        if writable:
            raise InvalidInputError(
                f"{arg}: array is not C-contiguous, so it cannot be changed in place; "
                "pass a contiguous array (e.g. np.ascontiguousarray / tensor.contiguous())"
            )
        arr = np.ascontiguousarray(arr)
    if writable and not arr.flags.writeable:
        raise InvalidInputError(f"{arg}: array is read-only; pass a writable copy")
    return arr, name


def as_vector(x: Vector | None, arg: str) -> npt.NDArray[np.float32] | None:
    """A float32 1-D copy-if-needed of a statistic (or None)."""
    if x is None:
        return None
    if _is_torch(x):
        x = x.detach().float().cpu().numpy()
    v = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if v.ndim != 1:
        raise InvalidInputError(f"{arg}: expected a 1-D statistic, got shape {v.shape}")
    return v


def _given(**params: Any) -> dict[str, Any]:
    """The parameters actually given (``None`` = the core's default)."""
    return {k: v for k, v in params.items() if v is not None}


def score(
    weight: Matrix,
    method: str,
    *,
    in_sq: Vector | None = None,
    out_sq: Vector | None = None,
    tensor: str = "",
    **params: Any,
) -> npt.NDArray[np.float32]:
    """Scores of ``weight`` under ``method`` (one of :data:`SCORES`); smaller is more prunable.

    ``params`` are the method's parameters by name (see ``symprune.spec.VOCABULARY``;
    e.g. ``a`` for RIA, ``p`` for lp-ria, ``beta`` / ``seed`` / ``activation`` for
    stochria, ``lambda`` for symwanda); an unknown one is an error. ``tensor`` names the
    matrix in errors and seeds stochria's subsets.
    """
    arr, dtype = as_matrix(weight, "weight")
    return _core.score(
        arr,
        dtype,
        method,
        _given(**params),
        as_vector(in_sq, "in_sq"),
        as_vector(out_sq, "out_sq"),
        tensor,
    )


def magnitude(weight: Matrix) -> npt.NDArray[np.float32]:
    """``|W|``."""
    return score(weight, "magnitude")


def wanda(weight: Matrix, in_sq: Vector) -> npt.NDArray[np.float32]:
    """``|W_ij| · sqrt(in_sq_j)`` (Wanda)."""
    return score(weight, "wanda", in_sq=in_sq)


def ria(weight: Matrix, in_sq: Vector | None, a: float | None = None) -> npt.NDArray[np.float32]:
    """RIA: ``(|W|/colsum + |W|/rowsum) · norm_j^a`` (``a = 0`` needs no statistics)."""
    return score(weight, "ria", in_sq=in_sq, a=a)


def lp_ria(
    weight: Matrix, in_sq: Vector | None, p: float | None = None, a: float | None = None
) -> npt.NDArray[np.float32]:
    """RIA with ℓp norms of the column and the row; ``p = 1`` is :func:`ria`."""
    return score(weight, "lp-ria", in_sq=in_sq, p=p, a=a)


def stochria(
    weight: Matrix,
    in_sq: Vector | None,
    beta: float | None = None,
    seed: int | None = None,
    tensor: str = "",
    a: float | None = None,
) -> npt.NDArray[np.float32]:
    """stochRIA: RIA over random row/column subsets; ``in_sq=None`` drops the activation factor."""
    return score(
        weight,
        "stochria",
        in_sq=in_sq,
        beta=beta,
        seed=seed,
        tensor=tensor,
        a=a,
        activation=in_sq is not None,
    )


def symmetric(weight: Matrix) -> npt.NDArray[np.float32]:
    """``|W_ij| · (‖W_:,j‖₂ + ‖W_i,:‖₂)`` (data-free symmetric)."""
    return score(weight, "symmetric")


def symwanda(
    weight: Matrix, in_sq: Vector, out_sq: Vector, lam: float | None = None
) -> npt.NDArray[np.float32]:
    """``|W_ij| · (n_j/mean(n) + λ·o_i/mean(o))`` with ``n = sqrt(in_sq)``, ``o = sqrt(out_sq)``."""
    params: dict[str, Any] = {"lambda": lam}
    return score(weight, "symwanda", in_sq=in_sq, out_sq=out_sq, **params)


def owanda(weight: Matrix, out_sq: Vector) -> npt.NDArray[np.float32]:
    """``|W_ij| · sqrt(out_sq_i)``: output side only."""
    return score(weight, "owanda", out_sq=out_sq)


def mask(
    scores: Matrix,
    sparsity: float | None = None,
    *,
    pattern: str | None = None,
    tensor: str = "",
) -> npt.NDArray[np.bool_]:
    """The prune mask of ``scores`` (``True`` = prune).

    ``pattern``: ``per-row`` (the default; exactly ``floor(in·s)`` per row),
    ``per-matrix`` (exactly ``floor(out·in·s)``), ``adaptive`` (Wanda's variant),
    all at ``sparsity`` in [0, 1) (default 0.5); or ``N:M``, which prunes N of every
    M consecutive input columns in every row (``sparsity`` is then unused).
    """
    arr, dtype = as_matrix(scores, "scores")
    sparsity = None if sparsity is None else float(sparsity)
    return _core.mask_of(arr, dtype, pattern, sparsity, tensor)


def apply_mask(weight: Matrix, prune: Any) -> int:
    """Zeroes, in place, the weights ``prune`` (a bool array or tensor) marks; returns how
    many it marked."""
    arr, dtype = as_matrix(weight, "weight", writable=True)
    m = np.asarray(prune.numpy() if _is_torch(prune) else prune)
    if m.dtype != np.bool_ or m.shape != arr.shape:
        raise InvalidInputError(
            f"mask: expected a bool array of shape {arr.shape}, got {m.dtype} {m.shape}"
        )
    return _core.apply_mask(arr, dtype, np.ascontiguousarray(m))


# -- mask refinement (methods.md §5, §7, §9) --

RefineReport = _core.RefineReport
"""What a refinement did: ``swaps`` (total), ``swaps_per_row`` (uint32 array),
``rows_changed`` (rows with at least one swap), ``rows_stopped`` (rows that stopped
before ``max_cycles`` / ``max_swaps``), ``cycles`` (cycles run; swaps: the most rounds a
row ran), ``loss_before`` / ``loss_after`` (the summed exact loss ``Σ_i δ_iᵀ H δ_i`` of
methods.md §9 where the refiner computes it — swaps and R²-DSnoT's exact decision —
else ``None``)."""


def _as_gram(gram: Matrix | None) -> npt.NDArray[np.float32] | None:
    """A float32 C-contiguous copy-if-needed of a Gram matrix (or None)."""
    if gram is None:
        return None
    if _is_torch(gram):
        gram = gram.detach().float().cpu().numpy()
    h = np.ascontiguousarray(np.asarray(gram, dtype=np.float32))
    if h.ndim != 2:
        raise InvalidInputError(f"gram: expected a 2-D (in, in) matrix, got shape {h.shape}")
    return h


def refine(
    refiner: str,
    weight: Matrix,
    prune_mask: Any,
    in_sq: Vector | None = None,
    act_sum: Vector | None = None,
    act_var: Vector | None = None,
    *,
    pattern: str | None = None,
    initial_scores: Matrix | None = None,
    gram: Matrix | None = None,
    tensor: str = "",
    **params: Any,
) -> tuple[npt.NDArray[np.bool_], RefineReport]:
    """Refines ``prune_mask`` (``True`` = pruned) with ``refiner`` (``dsnot``, ``r2dsnot``,
    ``swaps``).

    Weights are never changed and every row keeps its exact count; the initial mask
    must be exactly N:M (``pattern="2:4"``, kept afterwards) or, for DSnoT and
    R²-DSnoT, prune the same number in every row. ``in_sq``, ``act_sum``, ``act_var``
    are the layer's calibration statistics (methods.md §2; DSnoT and R²-DSnoT need
    them, swaps ignores them). ``gram`` is the ``(in, in)`` Gram matrix of the layer's
    inputs (``Σ x xᵀ`` up to a positive factor, e.g. SparseGPT's Hessian), for the
    refiners that read it: swaps, and R²-DSnoT with ``decision="exact"``
    (``symprune.spec.VOCABULARY["refiners"][name]["needs_gram"]``); giving it to
    another is an error. ``params`` are the refiner's switches by name (see
    :func:`dsnot`, :func:`r2dsnot`, :func:`swaps`); an unknown one is an error. Returns
    the refined mask and a :data:`RefineReport`.
    """
    arr, dtype = as_matrix(weight, "weight")
    m = np.asarray(prune_mask.numpy() if _is_torch(prune_mask) else prune_mask)
    if m.dtype != np.bool_ or m.shape != arr.shape:
        raise InvalidInputError(
            f"prune_mask: expected a bool array of shape {arr.shape}, got {m.dtype} {m.shape}"
        )
    init = None
    if initial_scores is not None:
        init = np.ascontiguousarray(np.asarray(initial_scores, dtype=np.float32))
    return _core.refine(
        refiner,
        arr,
        dtype,
        np.ascontiguousarray(m),
        as_vector(in_sq, "in_sq"),
        as_vector(act_sum, "act_sum"),
        as_vector(act_var, "act_var"),
        params=_given(**params),
        pattern=pattern,
        initial_scores=init,
        gram=_as_gram(gram),
        tensor=tensor,
    )


def dsnot(
    weight: Matrix,
    prune_mask: Any,
    in_sq: Vector,
    act_sum: Vector,
    act_var: Vector,
    *,
    pattern: str | None = None,
    initial_scores: Matrix | None = None,
    tensor: str = "",
    **params: Any,
) -> tuple[npt.NDArray[np.bool_], RefineReport]:
    """DSnoT (methods.md §5); see :func:`refine`.

    Switches: ``max_cycles``, ``threshold`` (in the units of ``act_sum``, seqlen × mean),
    ``var_power``, ``same_sign`` (unset: the reference's choice, off unstructured, on
    for N:M). ``initial_scores`` (N:M only; Wanda by default) picks the weight to prune
    inside a group; unstructured DSnoT orders its prune candidates by the Wanda score,
    as the reference does. A zero variance is floored at the smallest normal float32
    (see ``symprune-core``'s ``dsnot`` module for every definition).
    """
    return refine(
        "dsnot",
        weight,
        prune_mask,
        in_sq,
        act_sum,
        act_var,
        pattern=pattern,
        initial_scores=initial_scores,
        tensor=tensor,
        **params,
    )


def r2dsnot(
    weight: Matrix,
    prune_mask: Any,
    in_sq: Vector,
    act_sum: Vector,
    act_var: Vector,
    *,
    pattern: str | None = None,
    gram: Matrix | None = None,
    tensor: str = "",
    **params: Any,
) -> tuple[npt.NDArray[np.bool_], RefineReport]:
    """R²-DSnoT (methods.md §7): DSnoT with relative importance, √-activation, a regularized
    decision; see :func:`refine`.

    ``ri_phase`` puts RIA's relative importance in the prune score (``RI · n^alpha``) or
    the grow score (``G · RI``) or nowhere (``|W| · n^alpha``). A candidate swap is
    applied only if the row's error keeps its initial sign (``same_sign``) and it
    strictly lowers ``Φ = |err|/|err⁰| + gamma · pen/pen⁰`` with ``pen`` the ℓ``p`` norm
    of the pruned Wanda scores; with ``decision="exact"`` (methods.md §9) the first term
    is ``L/L⁰``, the row's exact loss ``δᵀ H δ``, which needs ``gram`` (the layer's
    ``(in, in)`` Gram matrix). At a rejected candidate the row stops
    (``on_reject="stop"``) or passes it over (``"skip"``). The defaults live in the
    core (``symprune.spec.VOCABULARY["refiners"]["r2dsnot"]``) and are the best setting
    measured (benches/RESULTS.md).
    """
    return refine(
        "r2dsnot",
        weight,
        prune_mask,
        in_sq,
        act_sum,
        act_var,
        pattern=pattern,
        gram=gram,
        tensor=tensor,
        **params,
    )


def swaps(
    weight: Matrix,
    prune_mask: Any,
    gram: Matrix,
    *,
    pattern: str | None = None,
    tensor: str = "",
    **params: Any,
) -> tuple[npt.NDArray[np.bool_], RefineReport]:
    """Exact-objective swaps (methods.md §9); see :func:`refine`.

    Per row, repeatedly applies the best swap (prune a kept weight, regrow a pruned one)
    of the row's true loss ``L = δᵀ H δ`` (``δ`` the pruned weights, ``H = gram``, the
    ``(in, in)`` Gram matrix of the layer's inputs), searched among the ``candidates``
    kept entries whose pruning costs least and the ``candidates`` pruned entries whose
    regrowth gains most (per group of M under N:M, where swaps stay inside a group;
    ``candidates >= in`` is the full search), while it lowers ``L`` by more than
    ``tol · L``, at most ``max_swaps`` times. ``L`` never increases and every row keeps
    its count (rows need not agree). The defaults live in the core
    (``symprune.spec.VOCABULARY["refiners"]["swaps"]``).
    """
    return refine("swaps", weight, prune_mask, pattern=pattern, gram=gram, tensor=tensor, **params)
