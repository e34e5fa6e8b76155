"""Positive-definite kernels on batches of row vectors (SPEC §3).

Every kernel is a pure function ``k(x, y, **params) -> Gram`` with ``x`` of shape ``[n, d]`` and
``y`` of shape ``[m, d]`` returning the ``[n, m]`` Gram matrix in the inputs' dtype and device
(float32 or float64, CPU or GPU). Conventions (``h`` is the bandwidth):

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
=================  ===========================================  ==========================

For ``attention`` a token is the concatenation ``[k | v]`` of its key (``key_dim`` columns) and
value (the remaining columns); :func:`stack_kv` builds it.

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
from typing import Any

import torch

from ._validation import InputError, check_matrix, check_positive

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
    """
    shift = x.mean(0, keepdim=True)
    xc = x - shift
    yc = xc if same else y - shift
    xx = (xc * xc).sum(-1)
    yy = xx if same else (yc * yc).sum(-1)
    norms = xx[:, None] + yy[None, :]
    d2 = norms.addmm(xc, yc.T, alpha=-2.0).clamp_min_(0.0)
    if exact:
        small = d2 < 1e-4 * norms
        count = int(small.sum())
        if count > 0.1 * small.numel():
            d = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
            d2 = d * d
        elif count:
            i, j = small.nonzero(as_tuple=True)
            d2[i, j] = ((x[i] - y[j]) ** 2).sum(-1)
    if same:
        d2.fill_diagonal_(0.0)
    return d2


def _paired_sq_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x - y) ** 2).sum(-1)


def _softmax_scale(scale: float | None, dim: int) -> float:
    return 1.0 / math.sqrt(dim) if scale is None else float(scale)


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
    """Gaussian (RBF) Gram matrix ``exp(-||x-y||^2 / (2 h^2))``, ``[n, m]``."""
    return _KERNEL_SPECS["gaussian"].gram(x, y, {"bandwidth": bandwidth})


def laplace_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Laplace Gram matrix ``exp(-||x-y|| / h)``, ``[n, m]``."""
    return _KERNEL_SPECS["laplace"].gram(x, y, {"bandwidth": bandwidth})


def inverse_multiquadric_kernel(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float
) -> torch.Tensor:
    """Inverse multiquadric Gram matrix ``(1 + ||x-y||^2 / h^2)^(-1/2)``, ``[n, m]``."""
    return _KERNEL_SPECS["imq"].gram(x, y, {"bandwidth": bandwidth})


def linear_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear Gram matrix ``<x, y>``, ``[n, m]``."""
    return x @ y.T


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, gamma: float = 1.0, coef0: float = 1.0, degree: int = 2
) -> torch.Tensor:
    """Polynomial Gram matrix ``(gamma <x, y> + coef0)^degree``, ``[n, m]``."""
    return (gamma * (x @ y.T) + coef0) ** degree


def softmax_kernel(x: torch.Tensor, y: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Softmax (exponential dot-product) Gram matrix ``exp(scale <x, y>)``, ``[n, m]``.

    ``scale`` defaults to ``1/sqrt(d)``. Large scaled dot products overflow; the estimators
    check for that and say so.
    """
    return torch.exp(_softmax_scale(scale, x.shape[1]) * (x @ y.T))


def attention_kernel(
    x: torch.Tensor, y: torch.Tensor, key_dim: int, scale: float | None = None
) -> torch.Tensor:
    """Attention product kernel ``K_att = <v, v'> exp(scale <k, k'>)`` (SPEC §3), ``[n, m]``.

    Rows of ``x`` and ``y`` are tokens ``[k | v]`` whose first ``key_dim`` columns are the key.
    ``scale`` defaults to ``1/sqrt(key_dim)``.
    """
    return _KERNEL_SPECS["attention"].gram(x, y, {"key_dim": key_dim, "scale": scale})


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


def _dist_spec(f: Callable[[torch.Tensor, float], torch.Tensor], exact: bool = False) -> _Spec:
    def gram(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        return f(sq_distances(x, y, same=x is y, exact=exact), p["bandwidth"])

    def paired(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        return f(_paired_sq_distances(x, y), p["bandwidth"])

    return _Spec(gram, paired, {"bandwidth": None}, uses_bandwidth=True, unit_diagonal=True)


# These maps work in place: their argument is always a freshly computed distance matrix.
def _gauss(d2: torch.Tensor, h: float) -> torch.Tensor:
    return d2.mul_(-0.5 / h**2).exp_()


def _laplace(d2: torch.Tensor, h: float) -> torch.Tensor:
    return d2.sqrt_().mul_(-1.0 / h).exp_()


def _imq(d2: torch.Tensor, h: float) -> torch.Tensor:
    return d2.mul_(1.0 / h**2).add_(1.0).rsqrt_()


def _split(x: torch.Tensor, key_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:, :key_dim], x[:, key_dim:]


def _att_gram(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    kd = p["key_dim"]
    kx, vx = _split(x, kd)
    ky, vy = _split(y, kd)
    s = _softmax_scale(p["scale"], kd)
    return (vx @ vy.T) * torch.exp(s * (kx @ ky.T))


def _att_paired(x: torch.Tensor, y: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    kd = p["key_dim"]
    kx, vx = _split(x, kd)
    ky, vy = _split(y, kd)
    s = _softmax_scale(p["scale"], kd)
    return (vx * vy).sum(-1) * torch.exp(s * (kx * ky).sum(-1))


_KERNEL_SPECS: dict[str, _Spec] = {
    "gaussian": _dist_spec(_gauss),
    "laplace": _dist_spec(_laplace, exact=True),  # the square root needs exact distances
    "imq": _dist_spec(_imq),
    "linear": _Spec(
        lambda x, y, p: linear_kernel(x, y), lambda x, y, p: (x * y).sum(-1), {}
    ),
    "polynomial": _Spec(
        lambda x, y, p: polynomial_kernel(x, y, p["gamma"], p["coef0"], p["degree"]),
        lambda x, y, p: (p["gamma"] * (x * y).sum(-1) + p["coef0"]) ** p["degree"],
        {"gamma": 1.0, "coef0": 1.0, "degree": 2},
    ),
    "softmax": _Spec(
        lambda x, y, p: softmax_kernel(x, y, p["scale"]),
        lambda x, y, p: torch.exp(_softmax_scale(p["scale"], x.shape[1]) * (x * y).sum(-1)),
        {"scale": None},
    ),
    "attention": _Spec(_att_gram, _att_paired, {"key_dim": None, "scale": None}),
}

_ALIASES = {
    "rbf": "gaussian",
    "inverse_multiquadric": "imq",
    "inverse-multiquadric": "imq",
    "poly": "polynomial",
    "exp": "softmax",
    "k_att": "attention",
    "katt": "attention",
}

KERNELS: tuple[str, ...] = tuple(_KERNEL_SPECS)
"""Names of the built-in kernels."""


def _canonical_name(name: str) -> str:
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
        The two samples (``y`` optional).
    max_samples : int
        Above this many pooled rows, a uniform random subsample of ``max_samples`` rows (drawn
        without replacement with ``seed``) is used; the cost is ``O(max_samples^2 d)``.
    seed : int
        Seed of the subsample.

    Returns
    -------
    float
        The median Euclidean distance over all pairs of distinct rows (``i < j``). If that median
        is 0 (many duplicated rows), the median of the strictly positive distances is used.

    Raises
    ------
    InputError
        Fewer than two rows, or all rows identical.
    """
    z = check_matrix(x, "x", min_rows=0)
    if y is not None:
        yt = check_matrix(y, "y", min_rows=0)
        if yt.shape[1] != z.shape[1]:
            raise InputError(f"dimension mismatch: x has dimension {z.shape[1]}, y has "
                             f"{yt.shape[1]}")
        z = torch.cat([z, yt.to(z.dtype)])
    if z.shape[0] < 2:
        raise InputError("median heuristic needs at least 2 rows in the pooled sample")
    if z.shape[0] > max_samples:
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(z.shape[0], generator=g)[:max_samples].to(z.device)
        z = z[idx]
    z = z.to(torch.float64)
    d = torch.sqrt(sq_distances(z, z, same=True, exact=True))
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    dist = d[iu[0], iu[1]]
    med = _median(dist)
    if med <= 0:
        pos = dist[dist > 0]
        if pos.numel() == 0:
            raise InputError("median heuristic: all rows are identical; give a bandwidth")
        med = _median(pos)
    return med


def _median(v: torch.Tensor) -> float:
    """Median with the usual mean-of-the-two-middle-values convention."""
    n = v.numel()
    hi = float(torch.kthvalue(v, n // 2 + 1).values)
    if n % 2:
        return hi
    return (float(torch.kthvalue(v, n // 2).values) + hi) / 2


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
    ``k(x_i, y_i)`` ``[n]`` and :meth:`diag` evaluates ``k(x_i, x_i)`` ``[n]``.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

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
        return self._spec.gram(x, y, self.params)

    def paired(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``k(x_i, y_i)`` for paired rows, ``[n]``."""
        return self._spec.paired(x, y, self.params)

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        """``k(x_i, x_i)``, ``[n]``."""
        if self.unit_diagonal:
            return torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return self._spec.paired(x, x, self.params)

    def check_input_dim(self, dim: int) -> None:
        """Raise :class:`InputError` if rows of dimension ``dim`` do not fit this kernel."""
        if self.name == "attention" and not 0 < self.params["key_dim"] < dim:
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
        Kernel parameters (see the module table). Unknown names raise :class:`InputError`.
    """
    if isinstance(kernel, Kernel):
        if not params:
            return kernel
        return make_kernel(kernel.name, x, y, max_samples=max_samples, seed=seed,
                           **{**kernel.params, **params})
    name = _canonical_name(kernel)
    spec = _KERNEL_SPECS[name]
    unknown = set(params) - set(spec.defaults)
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        raise InputError(f"kernel {name!r} got unknown parameter(s) {sorted(unknown)}; "
                         f"allowed: {allowed}")
    p = {**spec.defaults, **{k: v for k, v in params.items() if v is not None}}
    if spec.uses_bandwidth:
        if p["bandwidth"] is None:
            if x is None:
                raise InputError(f"kernel {name!r} needs a bandwidth or data for the median "
                                 "heuristic")
            p["bandwidth"] = median_bandwidth(x, y, max_samples=max_samples, seed=seed)
        p["bandwidth"] = check_positive(p["bandwidth"], "bandwidth")
    if name == "polynomial":
        p["gamma"] = float(p["gamma"])
        p["coef0"] = float(p["coef0"])
        if int(p["degree"]) != p["degree"] or p["degree"] < 1:
            raise InputError(f"polynomial degree must be a positive integer, got {p['degree']}")
        p["degree"] = int(p["degree"])
    if name in ("softmax", "attention") and p["scale"] is not None:
        p["scale"] = float(p["scale"])
        if not math.isfinite(p["scale"]):
            raise InputError(f"scale must be finite, got {p['scale']}")
    if name == "attention":
        if p["key_dim"] is None:
            raise InputError("attention kernel needs key_dim (tokens are [key | value] rows)")
        p["key_dim"] = int(p["key_dim"])
        if p["key_dim"] < 1:
            raise InputError(f"key_dim must be positive, got {p['key_dim']}")
    return Kernel(name, p)
