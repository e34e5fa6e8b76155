"""Positive-definite kernels on batches of row vectors (SPEC §3).

Every kernel is a pure function ``k(x, y, **params) -> Gram`` with ``x`` of shape ``[n, d]`` and
``y`` of shape ``[m, d]`` (torch tensors) returning the ``[n, m]`` Gram matrix in the inputs'
common dtype and device (float32 or float64, CPU or GPU). Half-precision inputs (float16,
bfloat16) are upcast to float32 before anything is computed, so no exponential is ever taken in
half precision: their Gram matrix is float32. Batches of row sets ``[b, n, d]``, ``[b, m, d]``
give the ``b`` Gram matrices ``[b, n, m]`` in one batched product. Inputs that are not
floating-point tensors of shape ``[n, d]`` or ``[b, n, d]`` with matching ``d``, and parameters
outside their range (a bandwidth, ``scale`` or ``gamma`` that is not a finite positive number, a
``key_dim`` or ``degree`` that is not a positive integer), raise :class:`InputError`.
Conventions (``h`` is the bandwidth):

=================  ===========================================  ==========================
name               formula                                      parameters (defaults)
=================  ===========================================  ==========================
``gaussian``       ``exp(-||x-y||^2 / (2 h^2))``                ``bandwidth`` (median)
``laplace``        ``exp(-||x-y|| / h)``                        ``bandwidth`` (median)
``imq``            ``(1 + ||x-y||^2 / h^2)^(-1/2)``             ``bandwidth`` (median)
``linear``         ``<x, y>``                                   none
``polynomial``     ``(gamma <x, y> + coef0)^degree``            ``gamma=1, coef0=1, degree=2``
``softmax``        ``exp(scale <x, y>)``                        ``scale=1/sqrt(d)``
``attention``      ``<v, v'> exp(scale <k, k'>)`` (``K_att``)   ``key_dim``, ``scale=1/sqrt(d_k)``
``attention-norm`` ``K_att(x,y) / sqrt(K_att(x,x) K_att(y,y))``  ``key_dim``, ``scale=1/sqrt(d_k)``
                   ``= exp(-scale ||k-k'||^2 / 2) cos(v, v')``
=================  ===========================================  ==========================

For ``attention`` a token is the concatenation ``[k | v]`` of its key (``key_dim`` columns) and
value (the remaining columns); :func:`stack_kv` builds it. ``attention-norm`` is ``K_att``
normalised to a unit diagonal (the cosine between the tokens' feature maps): it compares the
same feature maps, but never overflows — on real models ``scale <k, k'>`` of token-averaged keys
reaches 10^2–10^4, beyond ``exp``'s float32 (88) and float64 (709) range. A zero value vector has
cosine 0 with everything.

"median" means the median heuristic (:func:`median_bandwidth`): the median of the Euclidean
distances between all pairs of distinct rows of the pooled sample ``X ∪ Y``; above
``max_samples`` rows it uses a seeded uniform random subsample of ``max_samples`` rows.

:class:`Kernel` is the small stateful wrapper (a name plus resolved parameters) that the
estimators use; :func:`make_kernel` builds one from a name, resolving the median heuristic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch

from icldistill.core.validation import (
    InputError,
    as_float_tensor,
    check_int,
    check_matrix,
    check_positive,
    check_seed,
    work_dtype,
)

__all__ = [
    "KERNELS",
    "Kernel",
    "attention_kernel",
    "gaussian_kernel",
    "inverse_multiquadric_kernel",
    "laplace_kernel",
    "linear_kernel",
    "make_kernel",
    "median_bandwidth",
    "middle_order_statistics",
    "middle_sq_distances",
    "polynomial_kernel",
    "softmax_kernel",
    "sq_distances",
    "stack_kv",
]


# ----------------------------------------------------------------------------- building blocks
def sq_distances(
    x: torch.Tensor, y: torch.Tensor, *, same: bool = False, exact: bool = False
) -> torch.Tensor:
    """Squared Euclidean distances ``[n, m]`` between the rows of ``x`` and ``y``.

    Both samples are first shifted by one common vector (distances are translation invariant),
    then ``||x||^2 + ||y||^2 - 2 <x, y>`` is formed with one matrix product and clamped at 0.
    Its absolute error is about ``eps * (||x - c||^2 + ||y - c||^2)``: harmless for kernels of
    ``d^2`` but visible under a square root for near-duplicate rows. With ``exact=True`` the
    entries small enough for that error to matter (``d^2 < 1e-4 (||x - c||^2 + ||y - c||^2)``)
    are recomputed from the row differences (identical rows give exactly 0); if more than a
    tenth of the entries qualify, the whole matrix is computed from differences.
    With ``same=True`` (``x`` and ``y`` are the same rows) the diagonal is set to exactly 0.
    Batches ``[b, n, d]``, ``[b, m, d]`` give ``[b, n, m]`` (one shift per batch entry).
    """
    shift = x.mean(-2, keepdim=True)
    xc = x - shift
    yc = xc if same else y - shift
    xx = (xc * xc).sum(-1)
    yy = xx if same else (yc * yc).sum(-1)
    d2 = _centred_sq_distances(x, y, xc, yc, xx, yy, exact)
    if same:
        torch.diagonal(d2, dim1=-2, dim2=-1).zero_()
    return d2


def _centred_sq_distances(
    x: torch.Tensor,
    y: torch.Tensor,
    xc: torch.Tensor,
    yc: torch.Tensor,
    xx: torch.Tensor,
    yy: torch.Tensor,
    exact: bool,
) -> torch.Tensor:
    """:func:`sq_distances` from rows shifted by one common vector (``xc``, ``yc``) and their
    squared norms (``xx``, ``yy``); ``x`` and ``y`` are the unshifted rows (for ``exact``)."""
    # the matrix product accumulates in place into the freshly built norms (no extra copy)
    norms = xx[..., :, None] + yy[..., None, :]
    product = norms.addmm_ if norms.ndim == 2 else norms.baddbmm_
    d2 = product(xc, yc.mT, alpha=-2.0).clamp_min_(0.0)
    if exact:
        small = d2 < 1e-4 * (xx[..., :, None] + yy[..., None, :])
        count = int(small.sum())
        if count > 0.1 * small.numel():
            d = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
            d2 = d * d
        elif count:
            idx = small.nonzero(as_tuple=True)  # (batch..., i, j)
            d2[idx] = ((x[idx[:-1]] - y[idx[:-2] + idx[-1:]]) ** 2).sum(-1)
    return d2


def _paired_sq_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x - y) ** 2).sum(-1)


def _softmax_scale(scale: float | None, dim: int) -> float:
    return 1.0 / math.sqrt(dim) if scale is None else float(scale)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is half precision (float16 / bfloat16), else unchanged."""
    return t.to(work_dtype(t.dtype))


def _gram_inputs(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the rows of a Gram matrix: floating-point tensors ``[n, d]`` or ``[b, n, d]`` with
    one ``d``; returns them in their common dtype, half precision upcast to float32 (``y`` stays
    the same object as ``x`` when it was)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"kernel input {name} must be a torch.Tensor [n, d] or [b, n, d], got "
                             f"{type(t).__name__} (convert it with torch.as_tensor)")
        if t.ndim not in (2, 3):
            raise InputError(f"kernel input {name} must have shape [n, d] or [b, n, d], got "
                             f"{tuple(t.shape)}")
        if not t.is_floating_point():
            raise InputError(f"kernel input {name} must be a floating-point tensor, got {t.dtype}")
    if x.shape[-1] != y.shape[-1]:
        raise InputError(f"kernel inputs: x has rows of dimension {x.shape[-1]}, y has "
                         f"{y.shape[-1]}")
    same = x is y
    dtype = work_dtype(torch.promote_types(x.dtype, y.dtype))
    x = x if x.dtype == dtype else x.to(dtype)
    return x, (x if same else y if y.dtype == dtype else y.to(dtype))


def _check_bandwidth(value: Any, name: str) -> float:
    """A bandwidth: finite, ``> 0``, and (for the kernels that square it) with a non-zero
    square."""
    h = check_positive(value, "bandwidth")
    if name in ("gaussian", "imq") and h * h == 0.0:
        raise InputError(f"bandwidth {h:g} is too small for the {name} kernel (its square "
                         "underflows to 0); give a bandwidth above 1e-150 or rescale the data")
    return h


def _check_scale(value: Any) -> float | None:
    """A softmax / attention ``scale``: ``None`` (the default ``1/sqrt(d)``) or finite ``> 0``."""
    return None if value is None else check_positive(value, "scale")


def _check_key_dim(value: Any, dim: int | None = None) -> int:
    """``key_dim`` as an int ``>= 1`` (and ``< dim``, the token dimension, when given)."""
    kd = check_int(value, "key_dim", 1)
    if dim is not None and kd >= dim:
        raise InputError(f"attention kernel: key_dim={kd} must be between 1 and the token "
                         f"dimension minus 1 ({dim - 1})")
    return kd


def _check_polynomial(gamma: Any, coef0: Any, degree: Any) -> tuple[float, float, int]:
    """Polynomial parameters: ``gamma`` finite ``> 0``, ``coef0`` finite, ``degree`` an int
    ``>= 1``."""
    g = check_positive(gamma, "gamma")
    try:
        c = math.nan if isinstance(coef0, (bool, str, bytes)) else float(coef0)
    except (TypeError, ValueError):
        c = math.nan
    if not math.isfinite(c):
        raise InputError(f"coef0 must be a finite number, got {coef0!r}")
    try:
        ok = not isinstance(degree, bool) and int(degree) == degree and degree >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"polynomial degree must be a positive integer, got {degree!r}")
    return g, c, int(degree)


def stack_kv(keys: Any, values: Any) -> torch.Tensor:
    """Concatenate keys ``[n, d_k]`` and values ``[n, d_v]`` into tokens ``[n, d_k + d_v]``.

    The result is the input format of :func:`attention_kernel` (with ``key_dim=d_k``).
    """
    k = check_matrix(keys, "keys")
    v = check_matrix(values, "values")
    if k.shape[0] != v.shape[0]:
        raise InputError(f"keys have {k.shape[0]} rows but values have {v.shape[0]}")
    dtype = torch.promote_types(k.dtype, v.dtype)
    return torch.cat([k.to(dtype), v.to(dtype)], dim=1)


# ----------------------------------------------------------------------------- pure kernels
def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian (RBF) Gram matrix ``exp(-||x-y||^2 / (2 h^2))``, ``[n, m]``.

    Parameters
    ----------
    x, y : Tensor ``[n, d]``, ``[m, d]`` (or batches ``[b, n, d]``, ``[b, m, d]``)
        Floating-point rows; half precision (float16, bfloat16) is upcast to float32 first.
    bandwidth : float
        ``h``, a finite positive number.

    Returns
    -------
    Tensor ``[n, m]`` (or ``[b, n, m]``)
        In the inputs' common dtype (float32 for half-precision inputs).

    Raises
    ------
    InputError
        If ``x`` or ``y`` is not a floating-point tensor of shape ``[n, d]`` / ``[b, n, d]``,
        their dimensions differ, or a parameter is out of range.
    """
    x, y = _gram_inputs(x, y)
    h = _check_bandwidth(bandwidth, "gaussian")
    return _KERNEL_SPECS["gaussian"].gram(x, y, {"bandwidth": h})


def laplace_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Laplace Gram matrix ``exp(-||x-y|| / h)``, ``[n, m]``.

    Parameters
    ----------
    x, y : Tensor ``[n, d]``, ``[m, d]`` (or batches ``[b, n, d]``, ``[b, m, d]``)
        Floating-point rows; half precision (float16, bfloat16) is upcast to float32 first.
    bandwidth : float
        ``h``, a finite positive number.

    Returns
    -------
    Tensor ``[n, m]`` (or ``[b, n, m]``)
        In the inputs' common dtype (float32 for half-precision inputs).

    Raises
    ------
    InputError
        If ``x`` or ``y`` is not a floating-point tensor of shape ``[n, d]`` / ``[b, n, d]``,
        their dimensions differ, or a parameter is out of range.
    """
    x, y = _gram_inputs(x, y)
    h = _check_bandwidth(bandwidth, "laplace")
    return _KERNEL_SPECS["laplace"].gram(x, y, {"bandwidth": h})


def inverse_multiquadric_kernel(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float
) -> torch.Tensor:
    """Inverse multiquadric Gram matrix ``(1 + ||x-y||^2 / h^2)^(-1/2)``, ``[n, m]``.

    Parameters
    ----------
    x, y : Tensor ``[n, d]``, ``[m, d]`` (or batches ``[b, n, d]``, ``[b, m, d]``)
        Floating-point rows; half precision (float16, bfloat16) is upcast to float32 first.
    bandwidth : float
        ``h``, a finite positive number.

    Returns
    -------
    Tensor ``[n, m]`` (or ``[b, n, m]``)
        In the inputs' common dtype (float32 for half-precision inputs).

    Raises
    ------
    InputError
        If ``x`` or ``y`` is not a floating-point tensor of shape ``[n, d]`` / ``[b, n, d]``,
        their dimensions differ, or a parameter is out of range.
    """
    x, y = _gram_inputs(x, y)
    h = _check_bandwidth(bandwidth, "imq")
    return _KERNEL_SPECS["imq"].gram(x, y, {"bandwidth": h})


def linear_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear Gram matrix ``<x, y>``, ``[n, m]``.

    Parameters
    ----------
    x, y : Tensor ``[n, d]``, ``[m, d]`` (or batches ``[b, n, d]``, ``[b, m, d]``)
        Floating-point rows; half precision (float16, bfloat16) is upcast to float32 first.

    Returns
    -------
    Tensor ``[n, m]`` (or ``[b, n, m]``)
        In the inputs' common dtype (float32 for half-precision inputs).

    Raises
    ------
    InputError
        If ``x`` or ``y`` is not a floating-point tensor of shape ``[n, d]`` / ``[b, n, d]``,
        their dimensions differ, or a parameter is out of range.
    """
    x, y = _gram_inputs(x, y)
    return _linear(x, y)


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, gamma: float = 1.0, coef0: float = 1.0, degree: int = 2
) -> torch.Tensor:
    """Polynomial Gram matrix ``(gamma <x, y> + coef0)^degree``, ``[n, m]``.

    Parameters
    ----------
    x, y : Tensor ``[n, d]``, ``[m, d]`` (or batches ``[b, n, d]``, ``[b, m, d]``)
        Floating-point rows; half precision (float16, bfloat16) is upcast to float32 first.
    gamma : float
        Finite and positive.
    coef0 : float
        Finite.
    degree : int
        A positive integer.

    Returns
    -------
    Tensor ``[n, m]`` (or ``[b, n, m]``)
        In the inputs' common dtype (float32 for half-precision inputs).

    Raises
    ------
    InputError
        If ``x`` or ``y`` is not a floating-point tensor of shape ``[n, d]`` / ``[b, n, d]``,
        their dimensions differ, or a parameter is out of range.
    """
    x, y = _gram_inputs(x, y)
    return _polynomial(x, y, *_check_polynomial(gamma, coef0, degree))


def softmax_kernel(x: torch.Tensor, y: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Softmax (exponential dot-product) Gram matrix ``exp(scale <x, y>)``, ``[n, m]``.

    Half-precision inputs are upcast to float32 before the exponential. Large scaled dot
    products overflow; the estimators check for that and say so.

    Parameters
    ----------
    x, y : Tensor ``[n, d]``, ``[m, d]`` (or batches ``[b, n, d]``, ``[b, m, d]``)
        Floating-point rows; half precision (float16, bfloat16) is upcast to float32 first.
    scale : float, optional
        Finite and positive; default ``1/sqrt(d)``.

    Returns
    -------
    Tensor ``[n, m]`` (or ``[b, n, m]``)
        In the inputs' common dtype (float32 for half-precision inputs).

    Raises
    ------
    InputError
        If ``x`` or ``y`` is not a floating-point tensor of shape ``[n, d]`` / ``[b, n, d]``,
        their dimensions differ, or a parameter is out of range.
    """
    x, y = _gram_inputs(x, y)
    return _softmax(x, y, _check_scale(scale))


def attention_kernel(
    x: torch.Tensor, y: torch.Tensor, key_dim: int, scale: float | None = None
) -> torch.Tensor:
    """Attention product kernel ``K_att = <v, v'> exp(scale <k, k'>)`` (SPEC §3), ``[n, m]``.

    Half-precision inputs are upcast to float32 before the exponential.

    Parameters
    ----------
    x, y : Tensor ``[n, d]``, ``[m, d]`` (or batches ``[b, n, d]``, ``[b, m, d]``)
        Floating-point rows; half precision (float16, bfloat16) is upcast to float32 first.
    key_dim : int
        ``d_k``, ``1 <= d_k < d``: the first ``d_k`` columns of a token ``[k | v]`` are its key.
    scale : float, optional
        Finite and positive; default ``1/sqrt(key_dim)``.

    Returns
    -------
    Tensor ``[n, m]`` (or ``[b, n, m]``)
        In the inputs' common dtype (float32 for half-precision inputs).

    Raises
    ------
    InputError
        If ``x`` or ``y`` is not a floating-point tensor of shape ``[n, d]`` / ``[b, n, d]``,
        their dimensions differ, or a parameter is out of range.
    """
    x, y = _gram_inputs(x, y)
    kd = _check_key_dim(key_dim, x.shape[-1])
    return _KERNEL_SPECS["attention"].gram(x, y, {"key_dim": kd, "scale": _check_scale(scale)})


def _linear(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x @ y.mT


def _polynomial(x: torch.Tensor, y: torch.Tensor, gamma: float, coef0: float,
                degree: int) -> torch.Tensor:
    return (gamma * (x @ y.mT) + coef0) ** degree


def _softmax(x: torch.Tensor, y: torch.Tensor, scale: float | None) -> torch.Tensor:
    return torch.exp(_softmax_scale(scale, x.shape[-1]) * (x @ y.mT))


# ----------------------------------------------------------------------------- kernel specs
@dataclass(frozen=True)
class _Spec:
    """How one kernel is evaluated: as a Gram matrix and on paired rows."""

    gram: Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]
    paired: Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]
    defaults: Mapping[str, Any]
    uses_bandwidth: bool = False
    # True when k(x, x) = 1 for every x (stationary kernels normalised at 0).
    unit_diagonal: bool = False
    # Optional (y, params) -> (x -> k(x, y)) with the per-row work on y done once.
    against: Callable[[torch.Tensor, Mapping[str, Any]], Callable[[torch.Tensor], torch.Tensor]] \
        | None = None


def _dist_spec(f: Callable[[torch.Tensor, float], torch.Tensor], exact: bool = False) -> _Spec:
    def gram(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        return f(sq_distances(x, y, same=x is y, exact=exact), p["bandwidth"])

    def paired(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        return f(_paired_sq_distances(x, y), p["bandwidth"])

    def against(y: torch.Tensor, p: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        shift = y.mean(0, keepdim=True)
        yc = y - shift
        yy = (yc * yc).sum(-1)

        def gram_y(x: torch.Tensor) -> torch.Tensor:
            xc = x - shift
            d2 = _centred_sq_distances(x, y, xc, yc, (xc * xc).sum(-1), yy, exact)
            return f(d2, p["bandwidth"])

        return gram_y

    return _Spec(gram, paired, {"bandwidth": None}, uses_bandwidth=True, unit_diagonal=True,
                 against=against)


# These maps work in place: their argument is always a freshly computed distance matrix.
def _gauss(d2: torch.Tensor, h: float) -> torch.Tensor:
    return d2.mul_(-0.5 / (h * h)).exp_()  # h * h is inf (not an OverflowError) for huge h


def _laplace(d2: torch.Tensor, h: float) -> torch.Tensor:
    return d2.sqrt_().mul_(-1.0 / h).exp_()


def _imq(d2: torch.Tensor, h: float) -> torch.Tensor:
    return d2.mul_(1.0 / (h * h)).add_(1.0).rsqrt_()


def _split(x: torch.Tensor, key_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :key_dim], x[..., key_dim:]


def _att_gram(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    kd = p["key_dim"]
    kx, vx = _split(x, kd)
    ky, vy = _split(y, kd)
    s = _softmax_scale(p["scale"], kd)
    return (vx @ vy.mT) * torch.exp(s * (kx @ ky.mT))


def _att_paired(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    kd = p["key_dim"]
    kx, vx = _split(x, kd)
    ky, vy = _split(y, kd)
    s = _softmax_scale(p["scale"], kd)
    return (vx * vy).sum(-1) * torch.exp(s * (kx * ky).sum(-1))


def _att_norm_gram(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    kd = p["key_dim"]
    kx, vx = _split(x, kd)
    ky, vy = _split(y, kd)
    s = _softmax_scale(p["scale"], kd)
    cos = _unit_rows(vx) @ _unit_rows(vy).mT
    return cos * torch.exp(-0.5 * s * sq_distances(kx, ky))


def _att_norm_paired(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    kd = p["key_dim"]
    kx, vx = _split(x, kd)
    ky, vy = _split(y, kd)
    s = _softmax_scale(p["scale"], kd)
    cos = (_unit_rows(vx) * _unit_rows(vy)).sum(-1)
    return cos * torch.exp(-0.5 * s * ((kx - ky) ** 2).sum(-1))


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    n = v.norm(dim=-1, keepdim=True)
    return v / torch.where(n > 0, n, torch.ones_like(n))


_KERNEL_SPECS: dict[str, _Spec] = {
    "gaussian": _dist_spec(_gauss),
    "laplace": _dist_spec(_laplace, exact=True),  # the square root needs exact distances
    "imq": _dist_spec(_imq),
    "linear": _Spec(
        lambda x, y, p: _linear(x, y), lambda x, y, p: (x * y).sum(-1), {}
    ),
    "polynomial": _Spec(
        lambda x, y, p: _polynomial(x, y, p["gamma"], p["coef0"], p["degree"]),
        lambda x, y, p: (p["gamma"] * (x * y).sum(-1) + p["coef0"]) ** p["degree"],
        {"gamma": 1.0, "coef0": 1.0, "degree": 2},
    ),
    "softmax": _Spec(
        lambda x, y, p: _softmax(x, y, p["scale"]),
        # the default scale is 1/sqrt(d) of the feature dimension, the last axis (x may be a
        # batch [b, n, d], as for the Gram matrix)
        lambda x, y, p: torch.exp(_softmax_scale(p["scale"], x.shape[-1]) * (x * y).sum(-1)),
        {"scale": None},
    ),
    "attention": _Spec(_att_gram, _att_paired, {"key_dim": None, "scale": None}),
    "attention-norm": _Spec(_att_norm_gram, _att_norm_paired, {"key_dim": None, "scale": None}),
}

_ALIASES = {
    "rbf": "gaussian",
    "inverse_multiquadric": "imq",
    "inverse-multiquadric": "imq",
    "poly": "polynomial",
    "exp": "softmax",
    "k_att": "attention",
    "katt": "attention",
    "attention_norm": "attention-norm",
    "attention-normalized": "attention-norm",
}

KERNELS: tuple[str, ...] = tuple(_KERNEL_SPECS)
"""Names of the built-in kernels."""


def kernel_parameters(name: str) -> dict[str, Any]:
    """The parameters kernel ``name`` (any alias) takes, with their defaults.

    Raises
    ------
    InputError
        If ``name`` is not a kernel name.
    """
    return dict(_KERNEL_SPECS[canonical_kernel_name(name)].defaults)


def canonical_kernel_name(name: str) -> str:
    """The built-in kernel ``name`` stands for (aliases such as ``"rbf"`` and ``"katt"``
    resolved, case and spaces ignored).

    Raises
    ------
    InputError
        If ``name`` is not a string or not a known kernel.
    """
    if not isinstance(name, str):
        raise InputError(f"kernel must be a name or a Kernel, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _KERNEL_SPECS:
        raise InputError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)}")
    return key


# ----------------------------------------------------------------------------- median heuristic
def median_bandwidth(
    x: Any, y: Any | None = None, *, max_samples: int = 2000, seed: int = 0
) -> float:
    """Median heuristic bandwidth of the pooled sample ``X ∪ Y``.

    Parameters
    ----------
    x, y : array-like ``[n, d]``, ``[m, d]``
        The two samples (``y`` optional; its rows are cast to ``x``'s dtype).
    max_samples : int
        Above this many pooled rows, a uniform random subsample of ``max_samples`` rows (drawn
        without replacement with ``seed``) is used; the cost is ``O(max_samples^2 d)``. An
        integer ``>= 2``.
    seed : int
        Seed of the subsample (an integer in ``[0, 2**63 - 1]``, see
        :func:`~icldistill.core.validation.check_seed`).

    Returns
    -------
    float
        The median Euclidean distance over all pairs of distinct rows (``i < j``). If that median
        is 0 (many duplicated rows), the median of the strictly positive distances is used.

    Raises
    ------
    InputError
        Fewer than two rows, all rows identical, ``max_samples`` not an integer ``>= 2``, or
        ``seed`` not a valid seed (a bool, a fraction, a negative number...).

    Notes
    -----
    The result is the float64 median of exact distances whatever the input dtype. On CPU the
    squared distances are first formed in float32 (one matrix product over the upper
    triangle), each with a rigorous error bound; the pairs whose bound straddles the middle
    order statistics (typically a few thousand) are then recomputed exactly from their row
    differences in float64 and the order statistics are read off by counting. If that
    bracketing fails (heavy ties, extreme scales, reduced-precision float32 matmul) or on other
    devices, every distance is computed in float64.
    """
    max_samples = check_int(max_samples, "max_samples", 2)
    seed = check_seed(seed)
    z = _pooled_sample(x, y, max_samples, seed)
    mid = _middle_sq_distances_fast(z)
    d2 = None
    if mid is None:
        d2 = _pair_sq_distances(z)
        mid = _middle(d2)
    if mid[1] <= 0:  # more than half of the pairs are duplicates
        d2 = _pair_sq_distances(z) if d2 is None else d2
        pos = d2[d2 > 0]
        if pos.numel() == 0:
            if not bool((z == z[:1]).all()):  # distinct rows whose squared distances underflow
                raise InputError(f"median heuristic: inputs of magnitude ~{_magnitude(z)} "
                                 "underflow (their squared distances are 0 in floating point); "
                                 "rescale the data, e.g. standardise each column")
            raise InputError("median heuristic: all rows are identical; give a bandwidth")
        mid = _middle(pos)
    # the square root is monotone: the middle distances are the roots of the middle d^2
    h = (math.sqrt(mid[0]) + math.sqrt(mid[1])) / 2
    if not math.isfinite(h):
        raise InputError(f"inputs of magnitude ~{_magnitude(z)} overflow the median-heuristic "
                         "bandwidth of the kernel (squared distances exceed the floating-point "
                         "range); rescale the data, e.g. standardise each column")
    return h


def middle_sq_distances(
    z: Any, *, method: Literal["auto", "bracket", "exact"] = "auto"
) -> tuple[float, float] | None:
    """The two middle order statistics of the squared distances of all pairs of rows.

    The core of :func:`median_bandwidth` (the median distance is the mean of their square
    roots), exposed to compare its two paths.

    Parameters
    ----------
    z : array-like ``[n, d]``, ``n >= 2``, finite
    method : ``"auto"``, ``"bracket"`` or ``"exact"``
        ``"bracket"``: the float32 bracketing path of :func:`median_bandwidth` (see its Notes);
        ``None`` where it does not apply (not on CPU, reduced-precision float32 products,
        extreme scales) or a check fails (heavy ties). ``"exact"``: every squared distance in
        float64, then selection. ``"auto"``: bracketing, else exact.

    Returns
    -------
    (low, high) : tuple of float, or None
        The order statistics of ranks ``(P - 1) // 2`` and ``P // 2`` (0-based) of the
        ``P = n (n - 1) / 2`` squared distances, exact in float64 (equal when ``P`` is odd).
    """
    if method not in ("auto", "bracket", "exact"):
        raise InputError(f"method must be 'auto', 'bracket' or 'exact', got {method!r}")
    t = _checked_rows(z, "z")
    if t.shape[0] < 2:
        raise InputError("middle_sq_distances needs at least 2 rows")
    mid = _middle_sq_distances_fast(t) if method != "exact" else None
    if mid is None and method != "bracket":
        mid = _middle(_pair_sq_distances(t))
    return mid


def middle_order_statistics(
    v: Any, *, method: Literal["auto", "select", "kthvalue"] = "auto"
) -> tuple[float, float]:
    """The two middle order statistics of a vector (its median is their mean).

    Parameters
    ----------
    v : array-like or Tensor ``[P]``, ``P >= 1``
    method : ``"auto"``, ``"select"`` or ``"kthvalue"``
        ``"select"``: numpy's introselect (CPU; about 10x faster than ``kthvalue``);
        ``"kthvalue"``: ``torch.kthvalue`` and one masked max (any device); ``"auto"``:
        ``"select"`` for CPU tensors and arrays, ``"kthvalue"`` on other devices.

    Returns
    -------
    (low, high) : tuple of float
        The values of 0-based ranks ``(P - 1) // 2`` and ``P // 2``.
    """
    if method not in ("auto", "select", "kthvalue"):
        raise InputError(f"method must be 'auto', 'select' or 'kthvalue', got {method!r}")
    try:
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"v: expected numbers, got {type(v).__name__} that torch cannot read "
                         f"({type(exc).__name__})") from exc
    t = t.reshape(-1)
    if t.numel() == 0:
        raise InputError("middle_order_statistics needs at least one value")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"middle_order_statistics: v contains {bad} NaN or infinite value(s)")
    if method == "auto":
        return _middle(t)
    if method == "kthvalue":
        return _middle_torch(t)
    return _middle_numpy(t.detach().cpu().numpy())


def _magnitude(z: torch.Tensor) -> str:
    """The order of magnitude of the largest finite entry of ``z``, e.g. ``"1e+200"``."""
    a = z.abs()
    top = float(a.max()) if a.numel() else 0.0
    if top == 0.0 or not math.isfinite(top):
        return f"{top:g}"
    return f"1e{math.floor(math.log10(top)):+d}"


def _pooled_sample(x: Any, y: Any | None, max_samples: int, seed: int) -> torch.Tensor:
    """The validated rows of ``X ∪ Y`` (in ``x``'s dtype), or their seeded subsample.

    The subsample is ``randperm(n + m)[:max_samples]`` of the concatenation, gathered from the
    two samples without concatenating them first.
    """
    z = _checked_rows(x, "x")
    yt = None
    if y is not None:
        yt = _checked_rows(y, "y")
        if yt.shape[1] != z.shape[1]:
            raise InputError(f"dimension mismatch: x has dimension {z.shape[1]}, y has "
                             f"{yt.shape[1]}")
    n = z.shape[0]
    total = n + (0 if yt is None else yt.shape[0])
    if total < 2:
        raise InputError("median heuristic needs at least 2 rows in the pooled sample")
    if total <= max_samples:
        return z if yt is None else torch.cat([z, yt.to(z.dtype)])
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(total, generator=g)[:max_samples]
    if yt is None:
        return z[idx.to(z.device)]
    in_x = idx < n
    out = torch.empty(max_samples, z.shape[1], dtype=z.dtype, device=z.device)
    out[in_x.to(z.device)] = z[idx[in_x].to(z.device)]
    out[(~in_x).to(z.device)] = yt[(idx[~in_x] - n).to(yt.device)].to(z)
    return out


def _checked_rows(x: Any, name: str) -> torch.Tensor:
    """``check_matrix(x, name, min_rows=0)``, answering in ~1/10 of the time for valid rows.

    A finite sum means finite entries (a NaN or an infinity makes the sum NaN or infinite), so
    one reduction replaces the element-wise ``isfinite`` test; any other case (a non-finite
    sum, which may also be an overflow, or a shape to fix or reject) goes to ``check_matrix``.
    """
    t = as_float_tensor(x, name)
    if t.ndim == 2 and t.shape[1] > 0 and bool(torch.isfinite(t.sum())):
        return t
    return check_matrix(t, name, min_rows=0)


def _pair_sq_distances(z: torch.Tensor) -> torch.Tensor:
    """Squared distances of all pairs ``i < j`` of rows of ``z``, float64, small ones exact."""
    z = z.to(torch.float64)
    d2 = sq_distances(z, z, same=True, exact=True)
    return d2[torch.ones_like(d2, dtype=torch.bool).triu_(1)]


def _middle_ranks(count: int) -> tuple[int, int]:
    """0-based ranks of the two middle values of ``count`` values (equal when it is odd)."""
    hi = count // 2
    return (hi if count % 2 else hi - 1), hi


def _middle(v: torch.Tensor) -> tuple[float, float]:
    """The two middle order statistics of ``v`` (the median is their mean)."""
    return _middle_numpy(v.numpy()) if v.device.type == "cpu" else _middle_torch(v)


def _middle_torch(v: torch.Tensor) -> tuple[float, float]:
    """:func:`_middle` on any device: one ``kthvalue`` and one masked max."""
    lo, hi = _middle_ranks(v.numel())
    top = torch.kthvalue(v, hi + 1).values
    below = v[v < top]
    # ranks < hi hold the values below `top`; if there are `hi` of them, rank lo is their max
    low = below.max() if below.numel() == hi and hi > lo else top
    return float(low), float(top)


def _middle_numpy(v: np.ndarray) -> tuple[float, float]:
    """:func:`_middle` of a numpy vector: one introselect (~10x faster than torch.kthvalue),
    then the lower middle value is the largest of those placed before the upper one."""
    lo, hi = _middle_ranks(v.size)
    part = np.partition(v, hi)
    return float(part[:hi].max() if lo < hi else part[hi]), float(part[hi])


def _exact_float32_matmul() -> bool:
    """Whether float32 matrix products on CPU run in full float32 precision."""
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
        mkldnn = getattr(torch.backends.mkldnn, "matmul", None)
        precision = getattr(mkldnn, "fp32_precision", "none")
        return precision in ("none", "ieee")
    except Exception:  # an unreadable flag means "not sure"
        return False


#: Row block of the float32 upper-triangle product in :func:`_upper_sq_distances_f32`.
_MEDIAN_BLOCK = 256


def _upper_sq_distances_f32(
    z32: np.ndarray, sq: np.ndarray
) -> tuple[np.ndarray, list[int], list[tuple[int, int, int]]]:
    """Float32 squared distances of every pair ``i < j``, flattened block by block.

    ``z32`` holds the (centred) rows, ``sq`` their squared norms. The upper triangle is built by
    row blocks of :data:`_MEDIAN_BLOCK` (about half the full product): each block contributes
    its own triangle, then the rectangle to its right, both row-major. Returns the flat values,
    the offset where each block starts, and ``(i0, i1, triangle size)`` per block, which
    :func:`_flat_pair_indices` uses to map flat positions back to pairs.
    """
    n = z32.shape[0]
    pairs = n * (n - 1) // 2
    an = np.empty(pairs, dtype=np.float32)
    zt = torch.from_numpy(z32)
    starts, blocks = [], []
    off = 0
    upper = np.triu(np.ones((_MEDIAN_BLOCK, _MEDIAN_BLOCK), dtype=bool), 1)
    for i0 in range(0, n, _MEDIAN_BLOCK):  # upper triangle by row blocks: ~half the product
        i1 = min(n, i0 + _MEDIAN_BLOCK)
        b = i1 - i0
        blk = np.add.outer(sq[i0:i1], sq[i0:])
        torch.from_numpy(blk).addmm_(zt[i0:i1], zt[i0:].T, alpha=-2.0)
        tri = b * (b - 1) // 2
        an[off : off + tri] = blk[:, :b][upper[:b, :b]]
        an[off + tri : off + tri + b * (n - i1)].reshape(b, n - i1)[:] = blk[:, b:]
        starts.append(off)
        blocks.append((i0, i1, tri))
        off += tri + b * (n - i1)
    return an, starts, blocks


def _flat_pair_indices(
    window: np.ndarray, starts: list[int], blocks: list[tuple[int, int, int]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` of flat positions of :func:`_upper_sq_distances_f32`'s layout."""
    # block by block, a triangle then a rectangle, both row-major
    which = np.searchsorted(np.asarray(starts), window, side="right") - 1
    rows = np.empty(window.size, dtype=np.int64)
    cols = np.empty(window.size, dtype=np.int64)
    triu: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for blk_id in np.unique(which):
        i0, i1, tri = blocks[blk_id]
        sel = np.flatnonzero(which == blk_id)
        local = window[sel] - starts[blk_id]
        t = local < tri
        if i1 - i0 not in triu:
            triu[i1 - i0] = np.triu_indices(i1 - i0, 1)
        r_t, c_t = triu[i1 - i0]
        rows[sel[t]] = i0 + r_t[local[t]]
        cols[sel[t]] = i0 + c_t[local[t]]
        if not t.all():
            rect = local[~t] - tri
            rows[sel[~t]] = i0 + rect // (n - i1)
            cols[sel[~t]] = i1 + rect % (n - i1)
    return rows, cols


def _middle_sq_distances_fast(z: torch.Tensor) -> tuple[float, float] | None:
    """Exact middle order statistics of the pairwise squared distances, via float32 brackets.

    Every pair ``i < j`` gets a float32 value ``a`` with ``|a - d^2| <= e`` for one bound ``e``
    (below), so the exact middle values lie in ``[lo, hi]`` = the approximate ones widened by
    ``e``. Pairs with ``a < lo - e`` are certainly below ``lo``, pairs with ``a > hi + e``
    certainly above ``hi``; the rest (the window, ~``4e`` wide) is recomputed exactly in
    float64, and counting places the exact order statistics. Returns ``None`` when this path
    does not apply or a check fails (the caller then computes every distance in float64).
    """
    if z.device.type != "cpu" or not _exact_float32_matmul():
        return None
    # numpy for the element-wise work (single-threaded: no thread barrier per small op),
    # torch (BLAS) for the matrix products
    zn = z.detach().numpy()
    n, dim = zn.shape
    pairs = n * (n - 1) // 2
    zc = zn - zn.mean(0, keepdims=True)
    amax = float(np.abs(zc).max())
    if not 1e-15 <= amax <= 1e15:  # keep every square a normal float32 (or dominated by e)
        return None
    z32 = np.ascontiguousarray(zc, dtype=np.float32)
    sq = np.einsum("ij,ij->i", z32, z32)
    # |a - d^2| <= (2 gamma_d + 7 u) (|x|^2 + |y|^2): rounding of the shifted rows to float32
    # (4u), of the norms and the dot product (gamma_d = d u / (1 - d u) each, any summation
    # order), and of the two additions; u = 2^-24. Padded to (2d + 16) u, with the largest
    # computed squared norm padded by its own rounding error.
    u = 2.0**-24
    e = (2 * dim + 16) * u * 2.0 * float(sq.max()) * (1 + 2 * (dim + 2) * u) + 1e-36
    an, starts, blocks = _upper_sq_distances_f32(z32, sq)
    k_lo, k_hi = _middle_ranks(pairs)
    a_lo, a_hi = _middle_numpy(an)
    # the exact k-th value is within e of the approximate one: [lo, hi] holds both
    lo, hi = a_lo - e, a_hi + e
    # float32 thresholds rounded outwards, so that the classification stays conservative
    t_lo = np.nextafter(np.float32(lo - e), np.float32(-np.inf))
    t_hi = np.nextafter(np.float32(hi + e), np.float32(np.inf))
    below = int(np.count_nonzero(an < t_lo))
    window = np.flatnonzero((an >= t_lo) & (an <= t_hi))
    if window.size > max(4096, pairs // 64):  # heavy ties: bracketing saves little
        return None
    rows, cols = _flat_pair_indices(window, starts, blocks, n)
    z64 = zn.astype(np.float64)
    diff = z64[rows] - z64[cols]
    exact = np.einsum("ij,ij->i", diff, diff)
    if window.size and np.abs(an[window] - exact).max() > e:  # the bound did not hold
        return None
    inside = np.sort(exact[(exact >= lo) & (exact <= hi)])
    before = below + int(np.count_nonzero(exact < lo))
    if not (before <= k_lo and k_hi < before + inside.size):
        return None
    return float(inside[k_lo - before]), float(inside[k_hi - before])


# ----------------------------------------------------------------------------- Kernel object
@dataclass(frozen=True)
class Kernel:
    """A kernel with all its parameters resolved.

    Attributes
    ----------
    name : str
        Canonical kernel name (one of :data:`KERNELS`).
    params : Mapping[str, Any]
        Resolved parameters (e.g. ``{"bandwidth": 3.2}``); read-only.

    Calling ``kernel(x, y)`` returns the Gram matrix ``[n, m]``; :meth:`paired` evaluates
    ``k(x_i, y_i)`` ``[n]`` and :meth:`diag` evaluates ``k(x_i, x_i)`` ``[n]`` (batches
    ``[b, n, d]`` give ``[b, n, m]`` and ``[b, n]``). Inputs are torch tensors; half-precision
    ones (float16, bfloat16) are upcast to float32 before any exponential, so the results are
    then float32.

    A ``Kernel`` built directly is checked as :func:`make_kernel` checks its parameters (one
    implementation): ``name`` may be an alias (``Kernel("rbf", ...)`` is the ``"gaussian"``
    kernel), parameters left out take their defaults, and an unknown name or parameter, a
    missing ``bandwidth`` (a ``Kernel`` holds resolved parameters: :func:`make_kernel` chooses
    one from data) or ``key_dim``, and a value out of range (a bandwidth that is not a finite
    positive number, ``True``, ...) raise :class:`InputError`. (Before, a directly built
    ``Kernel`` was not checked and gave wrong values, ``KeyError`` or ``ZeroDivisionError``.)
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = canonical_kernel_name(self.name)
        if not isinstance(self.params, Mapping):
            raise InputError(f"Kernel params must be a mapping of parameter names to values, "
                             f"got {type(self.params).__name__}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", MappingProxyType(_checked_params(name, self.params)))

    @property
    def _spec(self) -> _Spec:
        return _KERNEL_SPECS[self.name]

    @property
    def bandwidth(self) -> float | None:
        """The bandwidth, for kernels that have one (else ``None``)."""
        return self.params.get("bandwidth")

    @property
    def unit_diagonal(self) -> bool:
        """Whether ``k(x, x) = 1`` for every ``x``."""
        return self._spec.unit_diagonal

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = _gram_inputs(x, y)
        return self._spec.gram(x, y, self.params)

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``k(x_i, y_i)`` for paired rows, ``[n]`` (half precision upcast to float32)."""
        same = x is y
        x = _upcast(x)
        return self._spec.paired(x, x if same else _upcast(y), self.params)

    def against(self, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``g(x) = k(x, y)`` ``[n, m]``, for many calls with the same rows ``y`` ``[m, d]``.

        For the distance kernels the per-row work on ``y`` (the shift, here ``y``'s mean, and
        the squared norms) is done once here, so each call costs one ``[n, m]`` matrix product
        (e.g. one kernel column per greedy step); entries agree with ``self(x, y)`` up to float
        rounding. Other kernels call ``self``.
        """
        spec, params = self._spec, self.params
        y = _upcast(y)
        if spec.against is not None:
            gram_y = spec.against(y, params)
            return lambda x: gram_y(_upcast(x))
        return lambda x: spec.gram(_upcast(x), y, params)

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        """``k(x_i, x_i)``, ``[n]`` for rows ``[n, d]``, ``[b, n]`` for a batch ``[b, n, d]``
        (the diagonal of each Gram matrix; half precision upcast to float32)."""
        x = _upcast(x)
        if self.unit_diagonal:
            return torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
        return self._spec.paired(x, x, self.params)

    def check_input_dim(self, dim: int) -> None:
        """Raise :class:`InputError` if rows of dimension ``dim`` do not fit this kernel."""
        if self.name.startswith("attention") and not 0 < self.params["key_dim"] < dim:
            raise InputError(f"attention kernel: key_dim={self.params['key_dim']} must be between"
                             f" 1 and the token dimension minus 1 ({dim - 1})")


def make_kernel(
    kernel: str | Kernel = "gaussian",
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    max_samples: int = 2000,
    seed: int = 0,
    **params: Any,
) -> Kernel:
    """Build a :class:`Kernel`, resolving defaults and the median heuristic.

    Parameters
    ----------
    kernel : str or Kernel
        A name from :data:`KERNELS` (aliases such as ``"rbf"`` accepted) or a ready ``Kernel``
        (returned unchanged when no ``params`` are given).
    x, y : Tensor ``[n, d]``, ``[m, d]``, optional
        The data, needed only when a bandwidth must be chosen by the median heuristic.
    max_samples, seed
        Passed to :func:`median_bandwidth`.
    **params
        Kernel parameters (see the module table). Unknown names raise :class:`InputError`, as
        do a ``bandwidth``, ``scale`` or ``gamma`` that is not a finite positive number, a
        ``coef0`` that is not finite and a ``key_dim`` or ``degree`` that is not a positive
        integer (``2.7`` is not truncated).
    """
    if isinstance(kernel, Kernel):
        if not params:
            return kernel      # checked when it was built (Kernel.__post_init__)
        return make_kernel(kernel.name, x, y, max_samples=max_samples, seed=seed,
                           **{**kernel.params, **params})
    name = canonical_kernel_name(kernel)
    p = _known_params(name, params)
    if _KERNEL_SPECS[name].uses_bandwidth and p["bandwidth"] is None:
        if x is None:
            raise InputError(f"kernel {name!r} needs a bandwidth or data for the median "
                             "heuristic")
        p["bandwidth"] = median_bandwidth(x, y, max_samples=max_samples, seed=seed)
    return Kernel(name, p)       # checks every parameter


def _known_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of kernel ``name`` (canonical): ``params`` over the defaults, ``None``
    values standing for the default; unknown parameter names raise :class:`InputError`."""
    spec = _KERNEL_SPECS[name]
    unknown = set(params) - set(spec.defaults)
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        raise InputError(f"kernel {name!r} got unknown parameter(s) {sorted(unknown, key=str)}; "
                         f"allowed: {allowed}")
    return {**spec.defaults, **{k: v for k, v in params.items() if v is not None}}


def _checked_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved parameters of kernel ``name`` (canonical), each checked: the one check of
    :class:`Kernel` and :func:`make_kernel`. A missing ``bandwidth`` or ``key_dim`` raises
    :class:`InputError` (the median heuristic is :func:`make_kernel`'s, before this)."""
    p = _known_params(name, params)
    if _KERNEL_SPECS[name].uses_bandwidth:
        if p["bandwidth"] is None:
            raise InputError(f"kernel {name!r} needs a bandwidth; give bandwidth=... or build "
                             "the kernel with make_kernel(name, x, y) for the median heuristic")
        p["bandwidth"] = _check_bandwidth(p["bandwidth"], name)
    if name == "polynomial":
        p["gamma"], p["coef0"], p["degree"] = _check_polynomial(p["gamma"], p["coef0"],
                                                                p["degree"])
    if name in ("softmax", "attention", "attention-norm"):
        p["scale"] = _check_scale(p["scale"])
    if name in ("attention", "attention-norm"):
        if p["key_dim"] is None:
            raise InputError("attention kernel needs key_dim (tokens are [key | value] rows)")
        p["key_dim"] = _check_key_dim(p["key_dim"])
    return p
