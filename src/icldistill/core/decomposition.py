"""One attention head split by where its keys come from (SPEC §1–2).

For query positions ``t`` with pre-softmax logits ``l_tj`` over keys ``j`` (masked keys excluded)

- ``log D'_t = logsumexp_j l_tj`` (the attention normaliser, always in log space);
- segment components ``c_S(t) = sum_{j in S} exp(l_tj - log D'_t) v_j`` with
  ``o_t = sum_S c_S(t)`` exactly;
- the effective learning rate ``eta*_t = N_t / (2 D'_t)`` with ``N_t`` the number of
  demonstration keys visible to ``t``;
- the distilled weights ``W_0(t) = (1/D'_t) sum_{i in D} v_i phi(k_i)^T`` in dual form
  (:class:`DualWeights`, exact) and primal random-feature form (:class:`PrimalWeights`).

Everything here is torch-only; the model tracing layer feeds it real ``q, k, v``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from icldistill.core.results import Result
from icldistill.core.validation import (
    InputError,
    as_float_tensor,
    check_finite,
    check_int,
    check_matrix,
    check_positive,
    check_seed,
    work_dtype,
)

__all__ = [
    "DistillationStep",
    "DualWeights",
    "HeadDecomposition",
    "PositiveRandomFeatures",
    "PrimalWeights",
    "RandomFeatureError",
    "attention_probs",
    "attention_probs_",
    "decompose_head",
    "distillation_loss",
    "distillation_step",
    "log_kernel_form",
    "random_feature_error",
    "segment_components",
    "segment_decomposition",
    "segment_mass",
]


# ============================================================================ segment algebra
def segment_decomposition(
    logits: torch.Tensor,
    values: torch.Tensor,
    segment_ids: torch.Tensor,
    num_segments: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched segment split of softmax attention (the numerical core of :func:`decompose_head`).

    Parameters
    ----------
    logits : Tensor ``[..., T, n]``
        Actual pre-softmax logits.
    values : Tensor ``[..., n, d_v]``
        Value vectors (batch dims broadcast against ``logits``).
    segment_ids : LongTensor ``[n]``
        Segment index of every key, in ``[0, num_segments)``.
    num_segments : int
        Number of segments ``S``.
    mask : BoolTensor ``[..., T, n]``, optional
        True where the query may attend to the key (exactly the shape of ``logits``).

    Returns
    -------
    components : Tensor ``[..., S, T, d_v]``
    log_normalizer : Tensor ``[..., T]``
    mass : Tensor ``[..., S, T]``
        Attention probability mass of each segment.

    Notes
    -----
    Half-precision (float16/bfloat16) logits and values are upcast to float32 before any
    exponential, so the results are at least float32.

    Raises
    ------
    InputError
        For a malformed mask, ``segment_ids`` of the wrong length, type or range, or values
        whose key dimension differs from the logits'.
    """
    probs, log_norm = attention_probs(logits, mask)
    return (segment_components(probs, values, segment_ids, num_segments), log_norm,
            segment_mass(probs, segment_ids, num_segments))


def _check_logits(logits: Any, name: str = "logits") -> torch.Tensor:
    """``logits`` as a floating tensor ``[..., n]`` with ``n >= 1`` (half precision upcast to
    float32; tensors of another floating dtype are returned as they are)."""
    lg = as_float_tensor(logits, name)
    if lg.ndim < 1:
        raise InputError(f"{name} must have shape [..., T, n], got a 0-d tensor")
    if lg.shape[-1] == 0:
        raise InputError(f"{name} has no keys (shape {tuple(lg.shape)}): the softmax over 0 "
                         "keys is undefined")
    return lg


def _check_probs_mask(mask: Any, shape: torch.Size) -> torch.Tensor:
    """The boolean ``mask``, which must have exactly ``shape`` (no broadcasting)."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"mask must be a boolean tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise InputError(f"mask must be boolean, got {mask.dtype}")
    if mask.shape != shape:
        raise InputError(f"mask must have the shape of the logits {tuple(shape)}, "
                         f"got {tuple(mask.shape)}")
    return mask


def attention_probs(logits: torch.Tensor, mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``[..., T, n]`` and ``log D'`` ``[..., T]`` from logits, in log
    space (masked keys get probability 0).

    ``mask`` (optional) is a boolean tensor of exactly the logits' shape, True where the query
    may attend to the key. Half-precision logits are upcast to float32 before the exponential
    (the results are then float32); other floating dtypes are kept. Raises
    :class:`InputError` when a query attends to no key, a logit is not finite, there are no
    keys (``n = 0``) or the mask is not a boolean tensor of the logits' shape."""
    lg = _check_logits(logits)
    if mask is None:   # a fresh buffer: the caller's tensor (or numpy array) is never written
        fresh = isinstance(logits, torch.Tensor) and lg is not logits
        work = lg if fresh else lg.clone()
    else:
        work = lg.masked_fill(~_check_probs_mask(mask, lg.shape), -math.inf)
    return attention_probs_(work)


def attention_probs_(logits: torch.Tensor, mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_probs` computed in place: ``logits`` is overwritten by the
    probabilities, which are returned (the same tensor) with ``log D'``. Same arithmetic, same
    result to the bit; one ``[..., T, n]`` buffer instead of three (the tracer's reductions of
    every position use it). The buffer must be a float32 or float64 tensor: a half-precision
    one cannot hold the upcast exponentials, so it is refused (use :func:`attention_probs`)."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise InputError("attention_probs_: logits must be a floating-point tensor (it is "
                         "overwritten in place); use attention_probs for other inputs")
    if logits.dtype != work_dtype(logits.dtype):
        raise InputError(f"attention_probs_: logits are {logits.dtype}; exponentials are not "
                         "computed in half precision and an in-place buffer cannot be upcast "
                         "(use attention_probs)")
    _check_logits(logits)
    if mask is not None:
        logits.masked_fill_(~_check_probs_mask(mask, logits.shape), -math.inf)
    top = logits.amax(dim=-1, keepdim=True)           # NaN propagates into the max
    if not bool(torch.isfinite(top).all()):
        if bool((top == -math.inf).any()):
            raise InputError("a query position attends to no key (its mask row is all False)")
        raise InputError("attention logits are not finite")
    probs = logits.sub_(top).exp_()                   # one exponential, shifted by the max
    total = probs.sum(dim=-1, keepdim=True)           # in [1, n]: no overflow, no underflow
    probs /= total
    return probs, (top + torch.log(total)).squeeze(-1)


def _segment_columns(segment_ids: torch.Tensor, num_segments: int
                     ) -> list[slice | torch.Tensor]:
    """The key columns of every segment: a slice when they are contiguous (a view, no copy),
    else an index tensor."""
    cols: list[slice | torch.Tensor] = []
    for s in range(num_segments):
        idx = (segment_ids == s).nonzero().flatten()
        n = idx.numel()
        if n and int(idx[-1]) - int(idx[0]) + 1 == n:
            cols.append(slice(int(idx[0]), int(idx[0]) + n))
        else:
            cols.append(idx)
    return cols


def _check_segment_ids(segment_ids: Any, n: int, num_segments: Any) -> tuple[torch.Tensor, int]:
    """``segment_ids`` as a LongTensor ``[n]`` with every id in ``[0, num_segments)``.

    Ids out of range or a vector of the wrong length would silently drop keys (the components
    would no longer sum to the output), so they are errors.
    """
    S = check_int(num_segments, "num_segments", low=1)
    if not isinstance(segment_ids, torch.Tensor):
        segment_ids = torch.as_tensor(np.asarray(segment_ids))
    if segment_ids.dtype == torch.bool or segment_ids.is_floating_point() \
            or segment_ids.is_complex():
        raise InputError(f"segment_ids must be integers, got {segment_ids.dtype}")
    if segment_ids.ndim != 1 or segment_ids.shape[0] != n:
        raise InputError(f"segment_ids must have shape [{n}] (one id per key), "
                         f"got {tuple(segment_ids.shape)}")
    ids = segment_ids.to(torch.long)
    if n and bool(((ids < 0) | (ids >= S)).any()):
        bad = ids[(ids < 0) | (ids >= S)]
        raise InputError(f"segment_ids must lie in [0, {S}) (num_segments={S}), "
                         f"got {int(bad[0])}")
    return ids, S


def segment_components(probs: torch.Tensor, values: torch.Tensor, segment_ids: torch.Tensor,
                       num_segments: int) -> torch.Tensor:
    """``c_S(t) = sum_{j in S} p_tj v_j`` ``[..., S, T, d_v]`` for probabilities
    ``[..., T, n]`` and values ``[..., n, d_v]`` (one matrix product per segment; contiguous
    segments are sliced, not copied).

    ``segment_ids`` (``[n]``, integers in ``[0, num_segments)``) is checked: ids out of range or
    a wrong length raise :class:`InputError` instead of dropping keys. The product is taken in
    the common dtype of ``probs`` and ``values`` (half precision upcast to float32)."""
    n = probs.shape[-1]
    if values.ndim < 2 or values.shape[-2] != n:
        raise InputError(f"values must have shape [..., {n}, d_v] (one row per key), "
                         f"got {tuple(values.shape)}")
    segment_ids, num_segments = _check_segment_ids(segment_ids, n, num_segments)
    dtype = work_dtype(torch.promote_types(probs.dtype, values.dtype))
    probs, values = probs.to(dtype), values.to(dtype)
    segment_ids = segment_ids.to(probs.device)
    comps = []
    for cols in _segment_columns(segment_ids, num_segments):
        if isinstance(cols, slice):
            comps.append(probs[..., cols] @ values[..., cols, :])
        else:
            comps.append(probs.index_select(-1, cols) @ values.index_select(-2, cols))
    return torch.stack(comps, dim=-3)


def segment_mass(probs: torch.Tensor, segment_ids: torch.Tensor, num_segments: int
                 ) -> torch.Tensor:
    """Attention mass of every segment ``[..., S, T]`` (one scatter-add over the keys).

    ``segment_ids`` is checked as in :func:`segment_components`."""
    segment_ids, num_segments = _check_segment_ids(segment_ids, probs.shape[-1], num_segments)
    out = probs.new_zeros((*probs.shape[:-1], num_segments))
    out.index_add_(-1, segment_ids.to(probs.device), probs)
    return out.movedim(-1, -2)


def _segment_ids(segments: Sequence[str], n: int) -> tuple[list[str], torch.Tensor]:
    if isinstance(segments, str):
        raise InputError("segments must be a sequence with one name per key, not a single string")
    segments = list(segments)
    if len(segments) != n:
        raise InputError(f"segments has {len(segments)} names but there are {n} keys")
    names: list[str] = []
    index: dict[str, int] = {}
    ids = []
    for s in segments:
        if not isinstance(s, str):
            raise InputError(f"segment names must be strings, got {s!r}")
        if s not in index:
            index[s] = len(names)
            names.append(s)
        ids.append(index[s])
    return names, torch.tensor(ids, dtype=torch.long)


# ============================================================================ dual weights
def log_kernel_form(c1: torch.Tensor, k1: torch.Tensor, c2: torch.Tensor, k2: torch.Tensor,
                    scale: float) -> tuple[float, float]:
    """Sign and log of ``sum_ij <c1_i, c2_j> exp(scale <k1_i, k2_j>)``, in float64.

    This is the Hilbert–Schmidt inner product ``<A, B>_HS`` of the dual-form maps
    ``A = sum_i c1_i phi(k1_i)^T`` and ``B = sum_j c2_j phi(k2_j)^T`` (``phi`` the feature map
    of ``exp(scale <k, q>)``); with ``c1 = c2``, ``k1 = k2`` it is ``||A||_HS^2``. The
    exponents are shifted by their maximum, so the result is finite where the value itself
    overflows (real attention keys easily have ``scale ||k||^2 > 709``).

    Parameters
    ----------
    c1 : Tensor ``[N1, d_v]``
    k1 : Tensor ``[N1, d]``
    c2 : Tensor ``[N2, d_v]``
    k2 : Tensor ``[N2, d]``
    scale : float

    Returns
    -------
    sign : float
        ``+1``, ``-1`` or ``0`` (an empty sum or an exact zero; then ``log_abs = -inf``).
    log_abs : float
        ``log |sum|``.
    """
    if k1.shape[-1] != k2.shape[-1]:
        raise InputError(f"log_kernel_form: k1 has dimension {k1.shape[-1]}, k2 {k2.shape[-1]}")
    if c1.shape[0] != k1.shape[0] or c2.shape[0] != k2.shape[0] or c1.shape[1] != c2.shape[1]:
        raise InputError(f"log_kernel_form: coefficients {tuple(c1.shape)}, {tuple(c2.shape)} do "
                         f"not match keys {tuple(k1.shape)}, {tuple(k2.shape)}")
    if k1.shape[0] == 0 or k2.shape[0] == 0:
        return 0.0, -math.inf
    a = scale * (k1.to(torch.float64) @ k2.to(torch.float64).T)
    shift = float(a.max())
    if not math.isfinite(shift) or not bool(torch.isfinite(a).all()):
        raise InputError("log_kernel_form: the exponents scale*<k1_i, k2_j> are not finite "
                         "(NaN/inf keys, or a product beyond float64)")
    s = float(((c1.to(torch.float64) @ c2.to(torch.float64).T) * torch.exp(a - shift)).sum())
    if s == 0.0:
        return 0.0, -math.inf
    return math.copysign(1.0, s), math.log(abs(s)) + shift


def _dual_log_norm(coef: torch.Tensor, keys: torch.Tensor, scale: float, log_mult: float) -> float:
    """``log || exp(log_mult) sum_i c_i phi(k_i)^T ||_HS`` (:func:`log_kernel_form`).

    Returns ``-inf`` for the zero map. Coefficients of identical keys are summed first, so that
    terms which cancel exactly (the same token in two expansions being compared) never enter
    the quadratic form.
    """
    k, inverse = torch.unique(keys.to(torch.float64), dim=0, return_inverse=True)
    c = torch.zeros(k.shape[0], coef.shape[1], dtype=torch.float64, device=k.device)
    c.index_add_(0, inverse, coef.to(torch.float64))
    sign, log_sq = log_kernel_form(c, k, c, k, scale)
    if sign <= 0.0:
        return -math.inf
    return 0.5 * log_sq + log_mult


def _exp_matmul(log_w: torch.Tensor, coef: torch.Tensor, what: str) -> torch.Tensor:
    """``exp(log_w) @ coef`` ``[T, d_v]`` for ``log_w`` ``[T, N]`` without overflow on the way.

    Every row is shifted by its largest exponent, so the matrix product only sees weights in
    ``(0, 1]``; the shift is put back in log space. Raises :class:`InputError` naming ``what``
    when an exponent is not finite or when the result itself overflows the dtype (never
    returns inf or NaN).
    """
    if not bool(torch.isfinite(log_w).all()):
        raise InputError(f"{what}: the exponents are not finite (they overflow {log_w.dtype})")
    shift = log_w.amax(dim=-1, keepdim=True)                       # [T, 1]
    r = torch.exp(log_w - shift) @ coef                             # |r| <= N max|c|
    factor = torch.exp(shift)
    ok = torch.isfinite(factor) & (factor > 0)
    out = r * factor
    if not bool(ok.all()):
        mag = torch.log(r.abs()) + shift                            # -inf where r == 0
        out = torch.where(ok, out, torch.sign(r) * torch.exp(mag))
    if not bool(torch.isfinite(out).all()):
        big = float((torch.log(r.abs()) + shift).max())
        raise InputError(f"{what}: the result overflows {out.dtype} (log of its largest entry "
                         f"is {big:.6g})")
    return out


def _exp(x: float) -> float:
    """``exp(x)``, ``inf`` instead of an ``OverflowError``."""
    return math.exp(x) if x < 709.78 else math.inf


@dataclass(frozen=True)
class DualWeights(Result):
    """A linear map ``W = exp(log_multiplier) * sum_i c_i phi(k_i)^T`` kept in dual form.

    ``phi`` is the feature map of the softmax kernel ``kappa(k, q) = exp(scale <k, q>)``, so
    ``W phi(q) = sum_i c_i exp(scale <k_i, q> + log_multiplier)`` is exact without features.
    The distilled weights ``W_0(t)`` have ``c_i = v_i`` (demo values) and
    ``log_multiplier = -log D'_t``.

    Attributes
    ----------
    keys : Tensor ``[N, d]``
    coefficients : Tensor ``[N, d_v]``
    log_multiplier : float
    scale : float
    """

    keys: torch.Tensor
    coefficients: torch.Tensor
    log_multiplier: float
    scale: float

    @property
    def num_keys(self) -> int:
        """``N``, the number of keys in the expansion."""
        return int(self.keys.shape[0])

    def log_kernel(self, queries: torch.Tensor) -> torch.Tensor:
        """``scale <k_i, q> + log_multiplier`` ``[T, N]``."""
        return self.scale * (queries.to(self.keys.dtype) @ self.keys.T) + self.log_multiplier

    def apply(self, queries: Any) -> torch.Tensor:
        """``W phi(q)`` for each row ``q`` of ``queries`` ``[T, d]`` -> ``[T, d_v]``.

        Computed in the keys' dtype (half precision upcast to float32 before the exponential,
        so the result is then float32), in log space: each row's largest exponent
        ``scale <k_i, q> + log_multiplier`` is factored out, so the result is exact wherever it
        is representable, however large the exponents.

        Raises
        ------
        InputError
            When an entry of ``W phi(q)`` overflows the working dtype (the value is not
            representable; inf/NaN are never returned).
        """
        dtype = work_dtype(self.keys.dtype)
        q = check_matrix(queries, "queries", dtype=dtype, device=self.keys.device)
        if q.shape[1] != self.keys.shape[1]:
            raise InputError(f"queries have dimension {q.shape[1]}, keys {self.keys.shape[1]}")
        if self.num_keys == 0:
            return q.new_zeros(q.shape[0], self.coefficients.shape[1])
        log_w = self.scale * (q @ self.keys.to(dtype).T) + self.log_multiplier
        return _exp_matmul(log_w, self.coefficients.to(dtype), "DualWeights.apply: W phi(q)")

    def log_hs_norm(self) -> float:
        """``log ||W||_HS`` (finite even where the norm overflows float64; ``-inf`` for 0)."""
        if self.num_keys == 0:
            return -math.inf
        return _dual_log_norm(self.coefficients, self.keys, self.scale, self.log_multiplier)

    def hs_norm(self) -> float:
        """Hilbert–Schmidt (Frobenius) norm ``sqrt(sum_ij <c_i, c_j> kappa(k_i, k_j)) e^L``.

        ``inf`` when it overflows float64 (large ``scale ||k||^2``); see :meth:`log_hs_norm`.
        """
        return _exp(self.log_hs_norm())

    def distance(self, other: DualWeights) -> float:
        """``||self - other||_HS`` (both expansions may use different keys; ``inf`` on overflow)."""
        return _exp(self.log_distance(other))

    def log_distance(self, other: DualWeights) -> float:
        """``log ||self - other||_HS`` (``-inf`` when they are equal)."""
        if self.scale != other.scale:
            raise InputError("cannot compare weights of kernels with different scales")
        if self.keys.shape[1] != other.keys.shape[1] \
                or self.coefficients.shape[1] != other.coefficients.shape[1]:
            raise InputError(f"cannot compare weights with keys/coefficients of dimensions "
                             f"{self.keys.shape[1]}/{self.coefficients.shape[1]} and "
                             f"{other.keys.shape[1]}/{other.coefficients.shape[1]}")
        lm = max(self.log_multiplier, other.log_multiplier)
        a = self.coefficients.to(torch.float64) * math.exp(self.log_multiplier - lm)
        b = other.coefficients.to(torch.float64) * math.exp(other.log_multiplier - lm)
        coef = torch.cat([a, -b])  # duplicate keys are merged inside _dual_log_norm
        keys = torch.cat([self.keys.to(torch.float64), other.keys.to(torch.float64)])
        if keys.shape[0] == 0:
            return -math.inf
        return _dual_log_norm(coef, keys, self.scale, lm)

    def to_primal(
        self, num_features: int = 256, seed: int = 0, *, orthogonal: bool = True
    ) -> PrimalWeights:
        """Explicit ``[d_v, m]`` matrix with ``m`` positive random features (approximate).

        Half-precision keys are upcast to float32 (features are exponentials)."""
        dtype = work_dtype(self.keys.dtype)
        feats = PositiveRandomFeatures.create(self.keys.shape[1], num_features, self.scale,
                                              seed=seed, orthogonal=orthogonal,
                                              dtype=dtype, device=self.keys.device)
        log_phi = feats.log_features(self.keys)  # [N, m]
        shift = float(log_phi.max()) if self.num_keys else 0.0
        matrix = self.coefficients.to(log_phi.dtype).T @ torch.exp(log_phi - shift)
        return PrimalWeights(matrix=matrix, log_scale=shift + self.log_multiplier,
                             features=feats)


# ============================================================================ random features
@dataclass(frozen=True)
class PositiveRandomFeatures(Result):
    """Positive (orthogonal) random features of the softmax kernel.

    ``phi(x) = exp(w^T x' - ||x'||^2 / 2) / sqrt(m)`` with ``x' = sqrt(scale) x`` satisfies
    ``E[phi(x)^T phi(y)] = exp(scale <x, y>)``. Rows of ``projection`` come in blocks of ``d``
    orthogonal directions with chi-distributed norms (Choromanski et al., FAVOR+).

    Attributes
    ----------
    projection : Tensor ``[m, d]``
    scale : float
    """

    projection: torch.Tensor
    scale: float

    @property
    def num_features(self) -> int:
        return int(self.projection.shape[0])

    @classmethod
    def create(
        cls,
        dim: int,
        num_features: int,
        scale: float,
        *,
        seed: int = 0,
        orthogonal: bool = True,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> PositiveRandomFeatures:
        """Draw ``num_features`` features for inputs of dimension ``dim`` (seeded).

        ``dim`` and ``num_features`` must be integers ``>= 1`` (``2.9`` is refused, not
        truncated to 2), ``scale`` a finite positive number and ``seed`` an integer in
        ``[0, 2**63 - 1]``; anything else (bools included) raises :class:`InputError`.
        """
        dim = check_int(dim, "dim", low=1)
        scale = check_positive(scale, "scale")
        m = check_int(num_features, "num_features", low=1)
        g = torch.Generator().manual_seed(check_seed(seed))
        if not orthogonal:
            w = torch.randn(m, dim, generator=g, dtype=torch.float64)
        else:
            nblocks = -(-m // dim)
            gauss = torch.randn(nblocks, dim, dim, generator=g, dtype=torch.float64)
            q, r = torch.linalg.qr(gauss)  # one batched QR
            # sign fix: LAPACK's Q is not Haar-distributed unless diag(R) is made positive
            q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
            norms = torch.randn(nblocks, dim, dim, generator=g, dtype=torch.float64).norm(dim=-1)
            w = (q.transpose(-1, -2) * norms[..., None]).reshape(nblocks * dim, dim)[:m]
        return cls(projection=w.to(dtype=dtype, device=device), scale=float(scale))

    def log_features(self, x: torch.Tensor) -> torch.Tensor:
        """``log phi(x)`` ``[n, m]`` (kept in log space: features overflow for large norms)."""
        xs = x.to(self.projection.dtype) * math.sqrt(self.scale)
        return xs @ self.projection.T - 0.5 * (xs * xs).sum(-1, keepdim=True) \
            - 0.5 * math.log(self.num_features)


@dataclass(frozen=True)
class PrimalWeights(Result):
    """Explicit random-feature approximation ``W ≈ exp(log_scale) * matrix`` ``[d_v, m]``."""

    matrix: torch.Tensor
    log_scale: float
    features: PositiveRandomFeatures

    def apply(self, queries: Any) -> torch.Tensor:
        """``W phi(q)`` ``[T, d_v]`` for queries ``[T, d]`` (in log space, as
        :meth:`DualWeights.apply`; :class:`InputError` when the result overflows)."""
        dtype = work_dtype(self.matrix.dtype)
        q = check_matrix(queries, "queries", dtype=dtype, device=self.matrix.device)
        if q.shape[1] != self.features.projection.shape[1]:
            raise InputError(f"queries have dimension {q.shape[1]}, features "
                             f"{self.features.projection.shape[1]}")
        log_phi = self.features.log_features(q).to(dtype) + self.log_scale
        return _exp_matmul(log_phi, self.matrix.to(dtype).T, "PrimalWeights.apply: W phi(q)")

    def hs_norm(self) -> float:
        """Frobenius norm of the explicit matrix (``inf`` on float64 overflow)."""
        norm = float(torch.linalg.matrix_norm(self.matrix.to(torch.float64)))
        return _exp(math.log(norm) + self.log_scale) if norm > 0 else 0.0


@dataclass(frozen=True)
class RandomFeatureError(Result):
    """Relative error of the primal form against the dual form, per feature count.

    Attributes
    ----------
    num_features : numpy.ndarray ``[F]``
    mean : numpy.ndarray ``[F]``
        Mean over seeds of ``||W_primal phi(Q) - W_dual phi(Q)||_F / ||W_dual phi(Q)||_F``.
    std : numpy.ndarray ``[F]``
        Standard deviation over seeds.
    median, q25, q75 : numpy.ndarray ``[F]``
        Median and quartiles over seeds (the error is heavy-tailed for large key norms, so the
        median is the robust summary).
    seeds : int
    errors : numpy.ndarray ``[F, seeds]``
        Every measured relative error.
    """

    num_features: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    seeds: int
    errors: np.ndarray


def random_feature_error(
    weights: DualWeights,
    queries: Any,
    num_features: Iterable[int] = (16, 64, 256, 1024, 4096),
    *,
    seeds: int = 5,
    orthogonal: bool = True,
) -> RandomFeatureError:
    """Relative error of :meth:`DualWeights.to_primal` on ``queries`` ``[T, d]`` as ``m`` grows.

    The error converges to 0 as ``m`` grows, but slowly when ``scale * ||k||^2`` is large
    (the features' variance grows like ``exp(scale * (||k||^2 + ||q||^2))``): report it, do not
    hide it. Raises :class:`InputError` when ``W phi(q)`` (exact or approximate) overflows
    float64, instead of reporting a NaN error.
    """
    seeds = check_int(seeds, "seeds", low=1)
    exact = weights.apply(queries).to(torch.float64)
    denom = float(torch.linalg.matrix_norm(exact))
    if denom == 0.0:
        raise InputError("the dual weights map every query to 0; relative error undefined")
    ms = np.array([check_int(m, "num_features", low=1) for m in num_features], dtype=np.int64)
    if ms.size == 0:
        raise InputError("num_features is empty: give at least one feature count")
    errs = np.empty((len(ms), seeds))
    for a, m in enumerate(ms):
        for s in range(seeds):
            approx = weights.to_primal(int(m), seed=s, orthogonal=orthogonal).apply(queries)
            errs[a, s] = float(torch.linalg.matrix_norm(approx.to(torch.float64) - exact)) / denom
    q25, med, q75 = np.quantile(errs, [0.25, 0.5, 0.75], axis=1)
    return RandomFeatureError(ms, errs.mean(1), errs.std(1), med, q25, q75, seeds, errs)


# ============================================================================ distillation
def distillation_loss(weights: DualWeights, keys: Any, values: Any) -> float:
    """``L(W) = (1/N) sum_i ||v_i - W phi(k_i)||^2`` over the teacher's ``(k_i, v_i)``.

    Raises :class:`InputError` when ``W phi(k_i)`` or the loss overflows the working dtype
    (never returns inf or NaN)."""
    dtype = work_dtype(weights.keys.dtype)
    k = check_matrix(keys, "keys", dtype=dtype)
    v = check_matrix(values, "values", dtype=dtype)
    if k.shape[0] != v.shape[0]:
        raise InputError(f"keys have {k.shape[0]} rows but values {v.shape[0]}")
    if v.shape[1] != weights.coefficients.shape[1]:
        raise InputError(f"values have dimension {v.shape[1]}, the weights' outputs "
                         f"{weights.coefficients.shape[1]}")
    loss = float(((v - weights.apply(k)) ** 2).sum(-1).mean())
    if not math.isfinite(loss):
        raise InputError(f"distillation_loss: the loss overflows {dtype}")
    return loss


@dataclass(frozen=True)
class DistillationStep(Result):
    """Result of gradient descent on the distillation loss, compared with ``W_0``.

    Attributes
    ----------
    weights : DualWeights
        ``W_1`` (after ``steps`` gradient steps from ``W = 0``).
    eta : float
        Step size used.
    eta_star : float
        ``N / (2 D')``, the step size for which one step gives exactly ``W_0``. Rounded to
        float64: ``0.0`` or ``inf`` when it lies outside float64's range (large logits); its
        logarithm ``log(N/2) + w0.log_multiplier`` is always finite, and the step itself is
        taken in log space (``weights.log_multiplier = log(2 eta / N)``).
    distance : float
        ``||W_1 - W_0||_HS``.
    relative_distance : float
        ``distance / ||W_0||_HS``.
    loss_initial, loss_final, loss_w0 : float
        Distillation loss at ``W = 0``, at ``W_1`` and at ``W_0``.
    """

    weights: DualWeights
    eta: float
    eta_star: float
    distance: float
    relative_distance: float
    loss_initial: float
    loss_final: float
    loss_w0: float


def distillation_step(
    w0: DualWeights, eta: float | None = None, *, steps: int = 1
) -> DistillationStep:
    """Run gradient descent on ``L(W)`` from ``W = 0`` and measure its distance to ``W_0``.

    The teacher's outputs are the values ``v_i`` and the student is ``x -> W phi(k_i)``; the
    sample is the demonstration tokens of ``w0`` (its keys and coefficients, which for ``W_0``
    are the values). The functional gradient is
    ``grad L(W) = -(2/N) sum_i (v_i - W phi(k_i)) phi(k_i)^T``, so each step updates the dual
    coefficients by ``(2 eta / N) * residual_i``. One step from 0 with ``eta = eta*`` reproduces
    ``W_0`` exactly (implicit alignment, SPEC §2).

    Parameters
    ----------
    w0 : DualWeights
        The distilled weights ``W_0(t)`` (e.g. from :meth:`HeadDecomposition.w0`).
    eta : float, optional
        Step size; defaults to ``eta* = N / (2 D')``.
    steps : int
        Number of gradient steps (1 = the theory's one-step distillation); a positive integer.

    Notes
    -----
    Everything is computed in float64 and in log space: the step's multiplier
    ``log(2 eta / N)`` never goes through ``eta`` itself, so heads whose ``eta*`` under- or
    overflows float64 (``|log D'|`` in the thousands) are handled.

    Raises
    ------
    InputError
        For ``steps`` that is not a positive integer, a non-positive ``eta``, a ``W_0``
        without keys or with a non-finite ``log_multiplier``, and when one of the reported
        losses (or a step's residual) overflows float64 -- then it is not representable.
    """
    steps = check_int(steps, "steps", low=1)
    n = w0.num_keys
    if n == 0:
        raise InputError("W_0 has no demonstration keys; nothing to distil")
    if not math.isfinite(float(w0.log_multiplier)):
        raise InputError(f"w0.log_multiplier must be finite, got {w0.log_multiplier!r}")
    log_eta_star = math.log(n / 2.0) + w0.log_multiplier  # log(N / (2 D'))
    eta_star = _exp(log_eta_star)                           # 0.0 / inf outside float64
    if eta is None:
        eta = eta_star
        log_m = float(w0.log_multiplier)                    # log(2 eta* / N) = -log D' exactly
    else:
        eta = check_positive(eta, "eta")
        log_m = math.log(eta) + math.log(2.0 / n)
    values = w0.coefficients.to(torch.float64)
    keys = w0.keys.to(torch.float64)
    # dual coefficients alpha (as alpha = exp(log_m) * c); first step from 0 is exact in logs
    coef = values.clone()
    current = DualWeights(keys, coef, log_m, w0.scale)
    for _ in range(int(steps) - 1):
        residual = values - current.apply(keys)
        coef = current.coefficients * math.exp(current.log_multiplier - log_m) + residual
        current = DualWeights(keys, coef, log_m, w0.scale)
    target = DualWeights(keys, values, w0.log_multiplier, w0.scale)
    log_dist = current.log_distance(target)
    log_norm0 = target.log_hs_norm()
    zero = DualWeights(keys[:0], values[:0], 0.0, w0.scale)
    losses = {}
    for name, w in (("loss_initial", zero), ("loss_final", current), ("loss_w0", target)):
        try:
            losses[name] = distillation_loss(w, keys, values)
        except InputError as exc:
            raise InputError(f"distillation_step: {name} is not representable in float64 "
                             f"({exc})") from exc
    return DistillationStep(
        weights=current,
        eta=float(eta),
        eta_star=eta_star,
        distance=_exp(log_dist),
        relative_distance=_exp(log_dist - log_norm0) if log_norm0 > -math.inf else math.inf,
        **losses,
    )


# ============================================================================ head decomposition
@dataclass(frozen=True)
class HeadDecomposition(Result):
    """Segment decomposition of one attention head (SPEC §1–2).

    Attributes
    ----------
    components : dict[str, Tensor ``[T, d_v]``]
        ``c_S(t)`` for every segment name, in order of first appearance.
    log_normalizer : Tensor ``[T]``
        ``log D'_t``.
    eta : Tensor ``[T]``
        Effective learning rate ``eta*_t = N_t / (2 D'_t)`` of the demonstration segment(s)
        (0 where no demonstration key is visible). ``inf`` where it overflows the dtype (every
        logit below about -700 in float64); ``log(N_t / 2) - log_normalizer`` is its exact
        log.
    output : Tensor ``[T, d_v]``
        Softmax attention output ``o_t`` (the sum of the components).
    attention_mass : dict[str, Tensor ``[T]``]
        Attention probability mass of each segment.
    num_demo_keys : LongTensor ``[T]``
        ``N_t``.
    mean_demo_logit : Tensor ``[T]``
        Mean logit over the visible demonstration keys (NaN where there are none).
    mean_logit : Tensor ``[T]``
        Mean logit over all attended keys (Jensen: ``log(D'_t / n_t) >= mean_logit``).
    num_keys : LongTensor ``[T]``
        ``n_t``, the number of attended keys.
    has_kernel_form : bool
        Whether the logits are a pure scaled dot product, so that ``W_0`` exists.
    scale : float or None
        The dot-product scale ``s`` (``None`` without a kernel form).
    """

    components: dict[str, torch.Tensor]
    log_normalizer: torch.Tensor
    eta: torch.Tensor
    output: torch.Tensor
    attention_mass: dict[str, torch.Tensor]
    num_demo_keys: torch.Tensor
    mean_demo_logit: torch.Tensor
    mean_logit: torch.Tensor
    num_keys: torch.Tensor
    has_kernel_form: bool
    scale: float | None
    demo_segments: tuple[str, ...]
    _keys: torch.Tensor | None = field(repr=False, default=None)
    _queries: torch.Tensor | None = field(repr=False, default=None)
    _values: torch.Tensor | None = field(repr=False, default=None)
    _mask: torch.Tensor | None = field(repr=False, default=None)
    _segment_names: tuple[str, ...] = field(repr=False, default=())
    _segment_ids: torch.Tensor | None = field(repr=False, default=None)

    def _position(self, t: Any) -> int:
        """``t`` as a query position in ``[-T, T)`` (an integer, not a bool)."""
        T = self.log_normalizer.shape[0]
        try:
            if isinstance(t, (bool, np.bool_)):
                raise TypeError
            ti = operator.index(t)
        except TypeError:
            raise InputError(f"t must be an integer query position, got {t!r}") from None
        if not -T <= ti < T:
            raise InputError(f"t: query position {ti} out of range for {T} positions")
        return ti

    def _weights(self, t: int, segments: Sequence[str]) -> DualWeights:
        if not self.has_kernel_form or self._keys is None:
            raise InputError("this head has no kernel form (its logits are not a pure scaled dot "
                             "product), so W_0 is not defined; the segment components still are")
        t = self._position(t)
        _check_known_segments(segments, self._segment_names, "segment")
        wanted = [i for i, name in enumerate(self._segment_names) if name in set(segments)]
        in_seg = torch.isin(self._segment_ids,
                            torch.tensor(wanted, dtype=torch.long, device=self._mask.device))
        sel = in_seg & self._mask[t]
        return DualWeights(
            keys=self._keys[sel],
            coefficients=self._values[sel],
            log_multiplier=-float(self.log_normalizer[t]),
            scale=float(self.scale),
        )

    def w0(self, t: int) -> DualWeights:
        """Distilled weights ``W_0(t) = (1/D'_t) sum_{i in D} v_i phi(k_i)^T`` (dual form)."""
        return self._weights(t, self.demo_segments)

    def correction(self, t: int, segment: str = "query") -> DualWeights:
        """Correction ``dW(t) = (1/D'_t) sum_{j in Q} v_j phi(k_j)^T`` (dual form).

        ``segment`` must be one of the head's segment names, or a standard name absent from a
        standard layout (an empty segment: ``dW = 0``); anything else is an
        :class:`InputError` that lists the known names."""
        if not isinstance(segment, str):
            raise InputError(f"segment must be a segment name (str), got {segment!r}")
        return self._weights(t, (segment,))

    def query(self, t: int) -> torch.Tensor:
        """The query vector ``q_t`` ``[d]`` (only for heads with a kernel form)."""
        if self._queries is None:
            raise InputError("queries were not given (logits-only decomposition)")
        if self._queries.shape[0] != self.log_normalizer.shape[0]:
            raise InputError(f"the {self._queries.shape[0]} queries given do not match the "
                             f"{self.log_normalizer.shape[0]} query positions of the logits")
        return self._queries[self._position(t)]


#: The SPEC's segment names. When every key's segment is one of them (the standard layout), a
#: standard name that no key carries is an empty segment (a zero-shot prompt has no "demos").
_STANDARD_SEGMENTS = ("prefix", "demos", "query")


def _check_known_segments(wanted: Sequence[str], names: Sequence[str], what: str) -> None:
    """Raise :class:`InputError` naming the first of ``wanted`` that is not a known segment.

    Known are the names in ``names`` and, when ``names`` follow the standard layout (all in
    ``_STANDARD_SEGMENTS``), the other standard names (empty segments). Anything else --
    a typo such as ``"querry"``, or ``"demos"`` when the keys are labelled ``"demo"`` -- is
    an error that lists the known names.
    """
    standard = all(x in _STANDARD_SEGMENTS for x in names)
    for nm in wanted:
        if not isinstance(nm, str):
            raise InputError(f"{what} names must be strings, got {nm!r}")
        if nm not in names and not (standard and nm in _STANDARD_SEGMENTS):
            raise InputError(f"{what}: unknown segment name {nm!r}; the segments are "
                             f"{', '.join(repr(x) for x in names) or '(none)'}")


def _head_logits(
    q: Any, k: Any, vt: torch.Tensor, scale: float | None, logits: Any | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor, float | None]:
    """Checked logits ``[T, n]`` of one head and its inputs in one common dtype.

    Without ``logits``, ``q`` and ``k`` are required and the logits are ``s * q k^T`` (the head
    has a kernel form); with them, ``q``/``k`` are optional and only checked. Returns
    ``(logits, q, k, v, scale)``; ``scale`` is ``None`` for given logits.
    """
    n = vt.shape[0]
    qt = kt = None
    if logits is None:
        if q is None or k is None:
            raise InputError("give q and k, or the actual logits")
        qt = check_matrix(q, "q")
        kt = check_matrix(k, "k")
        if kt.shape[0] != n:
            raise InputError(f"k has {kt.shape[0]} rows but v has {n}")
        if qt.shape[1] != kt.shape[1]:
            raise InputError(f"q has dimension {qt.shape[1]} but k has {kt.shape[1]}")
        dtype = torch.promote_types(torch.promote_types(qt.dtype, kt.dtype), vt.dtype)
        qt, kt, vt = qt.to(dtype), kt.to(dtype), vt.to(dtype)
        s = 1.0 / math.sqrt(qt.shape[1]) if scale is None else check_positive(scale, "scale")
        return s * (qt @ kt.T), qt, kt, vt, s
    if scale is not None:   # it scales q k^T; given logits are already scaled
        raise InputError("give scale or logits, not both: the given logits are the head's "
                         "scaled pre-softmax values, and scale would be ignored")
    lg = as_float_tensor(logits, "logits")
    if lg.ndim != 2 or lg.shape[1] != n:
        raise InputError(f"logits must have shape [T, {n}], got {tuple(lg.shape)}")
    check_finite(lg, "logits")
    dtype = torch.promote_types(lg.dtype, vt.dtype)
    lg, vt = lg.to(dtype), vt.to(dtype)
    if q is not None:
        qt = check_matrix(q, "q", dtype=dtype)
    if k is not None:
        kt = check_matrix(k, "k", dtype=dtype)
    return lg, qt, kt, vt, None


def _head_mask(mask: Any | None, T: int, n: int, device: torch.device) -> torch.Tensor:
    """The checked boolean visibility mask ``[T, n]`` on ``device`` (all True when ``None``)."""
    if mask is None:
        return torch.ones(T, n, dtype=torch.bool, device=device)
    mt = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if mt.dtype != torch.bool:
        raise InputError(f"mask must be boolean, got {mt.dtype}")
    if tuple(mt.shape) != (T, n):
        raise InputError(f"mask must have shape [{T}, {n}], got {tuple(mt.shape)}")
    return mt.to(device)


# long: 32 lines of NumPy docstring and 11 of signature; the code is 46 (its checks)
def decompose_head(
    q: Any,
    k: Any,
    v: Any,
    segments: Sequence[str],
    scale: float | None = None,
    mask: Any | None = None,
    *,
    logits: Any | None = None,
    demo_segments: str | Sequence[str] = "demos",
) -> HeadDecomposition:
    """Split one softmax attention head into segment components, ``log D'``, ``eta*`` and ``W_0``.

    Parameters
    ----------
    q : array-like ``[T, d]`` or None
        Query vectors (post-RoPE). May be ``None`` when ``logits`` is given.
    k : array-like ``[n, d]`` or None
        Key vectors (post-RoPE). May be ``None`` when ``logits`` is given.
    v : array-like ``[n, d_v]``
        Value vectors.
    segments : sequence of str, length ``n``
        Segment name of every key, e.g. ``"prefix"``, ``"demos"``, ``"query"``.
    scale : float, optional
        Dot-product scale ``s``; default ``1/sqrt(d)``. A finite positive number: ``True`` or
        text such as ``"0.5"`` raises :class:`InputError` (they used to pass as 1.0 and 0.5).
    mask : bool array ``[T, n]``, optional
        True where position ``t`` may attend to key ``j`` (default: all).
    logits : array-like ``[T, n]``, optional
        The head's actual pre-softmax logits, for heads that are not a pure dot product
        (soft-capping, ALiBi...). The decomposition is then still exact, but the head has no
        kernel form and :meth:`HeadDecomposition.w0` raises. Not together with ``scale``.
    demo_segments : str or sequence of str
        Segment name(s) that make up the demonstrations (used for ``eta*`` and ``W_0``). Each
        must be one of the names in ``segments``, or -- when every name in ``segments`` is a
        standard one (``"prefix"``, ``"demos"``, ``"query"``) -- another standard name, which
        is then an empty segment (a zero-shot prompt: ``eta* = 0``). Any other name (a typo,
        or ``"demos"`` while the keys are labelled ``"demo"``) raises :class:`InputError`
        listing the known ones. An empty sequence means "no demonstrations".

    Returns
    -------
    HeadDecomposition
    """
    vt = check_matrix(v, "v")
    n = vt.shape[0]
    names, seg_ids = _segment_ids(segments, n)
    if isinstance(demo_segments, str):
        demo: tuple[str, ...] = (demo_segments,)
    else:
        try:
            demo = tuple(demo_segments)
        except TypeError:
            raise InputError(f"demo_segments must be a segment name or a sequence of them, got "
                             f"{demo_segments!r}") from None
    _check_known_segments(demo, names, "demo_segments")
    lg, qt, kt, vt, s = _head_logits(q, k, vt, scale, logits)
    kernel_form = logits is None
    mt = _head_mask(mask, lg.shape[0], n, lg.device)
    seg_ids = seg_ids.to(lg.device)
    comps, log_norm, mass = segment_decomposition(lg, vt, seg_ids, len(names), mt)
    demo_ids = [i for i, nm in enumerate(names) if nm in demo]
    demo_cols = torch.isin(seg_ids, torch.tensor(demo_ids, dtype=torch.long, device=lg.device))
    vis_demo = mt & demo_cols[None, :]
    n_demo = vis_demo.sum(-1)
    n_keys = mt.sum(-1)
    eta = torch.exp(torch.log(n_demo.to(lg.dtype) / 2.0) - log_norm)
    masked_lg = lg.masked_fill(~mt, 0.0)
    mean_logit = masked_lg.sum(-1) / n_keys
    mean_demo = (lg.masked_fill(~vis_demo, 0.0).sum(-1) / n_demo.to(lg.dtype))
    return HeadDecomposition(
        components={nm: comps[i] for i, nm in enumerate(names)},
        log_normalizer=log_norm,
        eta=eta,
        output=comps.sum(0),
        attention_mass={nm: mass[i] for i, nm in enumerate(names)},
        num_demo_keys=n_demo,
        mean_demo_logit=mean_demo,
        mean_logit=mean_logit,
        num_keys=n_keys,
        has_kernel_form=kernel_form,
        scale=s,
        demo_segments=demo,
        _keys=kt,
        _queries=qt,
        _values=vt,
        _mask=mt,
        _segment_names=tuple(names),
        _segment_ids=seg_ids,
    )
