"""Small, seeded generators of synthetic attention data (torch + numpy only).

These are the building blocks of the demo (:mod:`icldistill.lab.demo`) and of later experiments:

- :func:`random_head` — one attention head with random projections ``W_Q``, ``W_K``, ``W_V``
  (:class:`AttentionHead`), which maps token embeddings to ``q, k, v``;
- :func:`gaussian_tokens` — token embeddings ``N(mean_shift * u, cov_scale * I)``;
- :func:`gaussian_mixture` — a labelled sample from a mixture of isotropic Gaussians;
- :func:`build_prompt` / :func:`synthetic_prompt` — a prompt of token embeddings
  (:class:`SyntheticPrompt`) made of a prefix, the demonstrations and the query, with its
  segment names and causal mask (not the text prompt :class:`icldistill.data.Prompt`);
- :func:`causal_mask` — the ``[T, T]`` lower-triangular boolean mask.

Every generator takes an integer ``seed`` (``>= 0``; a bool, a fraction or a negative value is
an :class:`~icldistill.core.validation.InputError`, :func:`~icldistill.core.validation.check_seed`)
and draws from its own ``torch.Generator`` (or ``numpy.random.Generator``), so results do not
depend on, and do not change, global RNG state.
Everything is float64 unless stated otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from icldistill.core.validation import (
    InputError,
    check_float,
    check_int,
    check_matrix,
    check_positive,
    check_seed,
)

__all__ = [
    "PINV_RTOL",
    "AttentionHead",
    "ICLBatch",
    "SyntheticPrompt",
    "build_prompt",
    "causal_mask",
    "context_spectrum",
    "default_direction",
    "gaussian_mixture",
    "gaussian_tokens",
    "gd_predictions",
    "icl_batch",
    "least_squares_predictions",
    "random_head",
    "synthetic_prompt",
]

_F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` (checked by :func:`check_seed`)."""
    return torch.Generator().manual_seed(check_seed(seed))


def _positive_int(value: Any, name: str, *, allow_zero: bool = False) -> int:
    """``value`` as an int ``>= 1`` (``>= 0`` with ``allow_zero``), by :func:`check_int`."""
    return check_int(value, name, 0 if allow_zero else 1)


def _number(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite float ``>= 0`` (``> 0`` with ``positive``), by
    :func:`check_float` / :func:`check_positive`; a bool is not read as 0 or 1, nor text as a
    number."""
    if isinstance(value, bool | str | bytes):
        raise InputError(f"{name} must be a number, got {value!r}")
    return check_positive(value, name) if positive else check_float(value, name, 0.0)


# ============================================================================ attention head
@dataclass(frozen=True)
class AttentionHead:
    """One plain dot-product attention head ``l_tj = scale * <q_t, k_j>``.

    Token embeddings ``x`` (rows, ``[n, d_model]``) are projected as ``q = x W_Q``,
    ``k = x W_K``, ``v = x W_V``.

    Attributes
    ----------
    W_Q : Tensor ``[d_model, d_head]``
        Query projection (float64).
    W_K : Tensor ``[d_model, d_head]``
        Key projection (float64).
    W_V : Tensor ``[d_model, d_value]``
        Value projection (float64).
    scale : float
        Dot-product scale ``s`` of the logits (``1 / sqrt(d_head)`` by default).
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    scale: float

    @property
    def d_model(self) -> int:
        """Embedding dimension."""
        return int(self.W_Q.shape[0])

    @property
    def d_head(self) -> int:
        """Query/key dimension."""
        return int(self.W_Q.shape[1])

    @property
    def d_value(self) -> int:
        """Value dimension."""
        return int(self.W_V.shape[1])

    def _tokens(self, x: Any) -> torch.Tensor:
        t = check_matrix(x, "tokens", dtype=_F64)
        if t.shape[1] != self.d_model:
            raise InputError(f"tokens have dimension {t.shape[1]}, the head expects "
                             f"d_model={self.d_model}")
        return t

    def project(self, x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project tokens to queries, keys and values.

        Parameters
        ----------
        x : array-like ``[n, d_model]``
            Token embeddings.

        Returns
        -------
        q, k : Tensor ``[n, d_head]``
        v : Tensor ``[n, d_value]``
        """
        t = self._tokens(x)
        return t @ self.W_Q, t @ self.W_K, t @ self.W_V

    def keys(self, x: Any) -> torch.Tensor:
        """Keys ``x W_K`` ``[n, d_head]``."""
        return self._tokens(x) @ self.W_K

    def values(self, x: Any) -> torch.Tensor:
        """Values ``x W_V`` ``[n, d_value]``."""
        return self._tokens(x) @ self.W_V

    def queries(self, x: Any) -> torch.Tensor:
        """Queries ``x W_Q`` ``[n, d_head]``."""
        return self._tokens(x) @ self.W_Q

    def logits(self, x_query: Any, x_key: Any | None = None) -> torch.Tensor:
        """Pre-softmax logits ``scale * <q_t, k_j>`` ``[T, n]`` (no mask applied).

        ``x_key`` defaults to ``x_query`` (self-attention over one sequence).
        """
        q = self.queries(x_query)
        k = self.keys(x_query if x_key is None else x_key)
        return self.scale * (q @ k.T)

    def attention(self, x: Any, mask: Any | None = None) -> torch.Tensor:
        """Reference softmax attention output ``softmax(logits) @ v`` ``[n, d_value]``.

        A plain ``torch.softmax`` implementation, independent of
        :mod:`icldistill.core.decomposition`
        (useful as a ground truth). ``mask`` is boolean ``[n, n]``, True where attending is
        allowed.
        """
        q, k, v = self.project(x)
        lg = self.scale * (q @ k.T)
        if mask is not None:
            lg = lg.masked_fill(~torch.as_tensor(mask, dtype=torch.bool), -math.inf)
        return torch.softmax(lg, dim=-1) @ v


def random_head(
    d_model: int,
    d_head: int,
    d_value: int | None = None,
    seed: int = 0,
    *,
    qk_gain: float = 1.0,
    v_gain: float = 1.0,
    scale: float | None = None,
) -> AttentionHead:
    """A random attention head with Gaussian projections.

    Entries of ``W_Q`` and ``W_K`` are ``N(0, qk_gain^2 / d_model)`` and those of ``W_V`` are
    ``N(0, v_gain^2 / d_model)``, so for tokens with ``E||x||^2 = d_model`` every coordinate of
    ``q``, ``k`` has variance ``qk_gain^2``: ``||k||^2 ≈ qk_gain^2 d_head``, the logits have a
    standard deviation of about ``qk_gain^2`` and ``scale * ||k||^2 ≈ qk_gain^2 sqrt(d_head)``.

    Parameters
    ----------
    d_model : int
        Embedding dimension.
    d_head : int
        Query/key dimension.
    d_value : int, optional
        Value dimension (default ``d_head``).
    seed : int
        Seed of the projections.
    qk_gain, v_gain : float
        Standard-deviation multipliers of the query/key and value projections.
    scale : float, optional
        Logit scale ``s`` (default ``1 / sqrt(d_head)``).

    Returns
    -------
    AttentionHead
    """
    d_model = _positive_int(d_model, "d_model")
    d_head = _positive_int(d_head, "d_head")
    d_value = d_head if d_value is None else _positive_int(d_value, "d_value")
    qk_gain = _number(qk_gain, "qk_gain", positive=True)
    v_gain = _number(v_gain, "v_gain", positive=True)
    gen = _generator(seed)
    std_qk = qk_gain / math.sqrt(d_model)
    std_v = v_gain / math.sqrt(d_model)
    w_q = torch.randn(d_model, d_head, generator=gen, dtype=_F64) * std_qk
    w_k = torch.randn(d_model, d_head, generator=gen, dtype=_F64) * std_qk
    w_v = torch.randn(d_model, d_value, generator=gen, dtype=_F64) * std_v
    s = 1.0 / math.sqrt(d_head) if scale is None else _number(scale, "scale", positive=True)
    return AttentionHead(W_Q=w_q, W_K=w_k, W_V=w_v, scale=s)


# ============================================================================ tokens
def default_direction(d: int) -> torch.Tensor:
    """The unit vector ``(1, ..., 1) / sqrt(d)`` ``[d]`` used as the default shift direction."""
    d = _positive_int(d, "d")
    return torch.full((d,), 1.0 / math.sqrt(d), dtype=_F64)


def gaussian_tokens(
    n: int,
    d: int,
    mean_shift: float | Sequence[float] | torch.Tensor = 0.0,
    cov_scale: float = 1.0,
    seed: int = 0,
    *,
    direction: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """``n`` i.i.d. token embeddings ``x ~ N(mu, cov_scale * I_d)`` (float64 ``[n, d]``).

    Parameters
    ----------
    n, d : int
        Number of tokens and their dimension.
    mean_shift : float or array-like ``[d]``
        A scalar ``delta`` gives the mean ``mu = delta * u`` with ``u`` the unit ``direction``
        (so ``||mu|| = |delta|``); a vector is used as ``mu`` itself.
    cov_scale : float
        Variance of every coordinate (the covariance is ``cov_scale * I``).
    seed : int
        Seed of the sample.
    direction : array-like ``[d]``, optional
        Shift direction for a scalar ``mean_shift`` (normalised to unit length); default
        :func:`default_direction`.
    """
    n = _positive_int(n, "n", allow_zero=True)
    d = _positive_int(d, "d")
    cov_scale = _number(cov_scale, "cov_scale")
    gen = _generator(seed)
    shift = torch.as_tensor(mean_shift, dtype=_F64)
    if shift.ndim == 0:
        u = default_direction(d) if direction is None else torch.as_tensor(direction, dtype=_F64)
        if u.shape != (d,):
            raise InputError(f"direction must have shape [{d}], got {tuple(u.shape)}")
        norm = float(u.norm())
        if norm == 0.0 or not math.isfinite(norm):
            raise InputError("direction must be a finite non-zero vector")
        mu = shift * u / norm
    elif shift.shape == (d,):
        mu = shift
    else:
        raise InputError(f"mean_shift must be a scalar or have shape [{d}], got "
                         f"{tuple(shift.shape)}")
    if not bool(torch.isfinite(mu).all()):
        raise InputError("mean_shift must be finite")
    z = torch.randn(n, d, generator=gen, dtype=_F64)
    return z * math.sqrt(cov_scale) + mu


def gaussian_mixture(
    n: int,
    centers: Any,
    std: float = 1.0,
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, np.ndarray]:
    """A labelled sample of a mixture of isotropic Gaussians.

    Parameters
    ----------
    n : int
        Number of points.
    centers : array-like ``[K, d]``
        Component means.
    std : float
        Standard deviation of every coordinate within a component.
    weights : sequence of float, optional
        Mixture weights (normalised; default uniform). Component counts are drawn from the
        multinomial distribution.
    seed : int
        Seed of the sample.

    Returns
    -------
    x : Tensor ``[n, d]``
        The points, grouped by component (component 0 first).
    labels : numpy.ndarray ``[n]`` (int64)
        The component of every point.
    """
    n = _positive_int(n, "n", allow_zero=True)
    seed = check_seed(seed)
    c = check_matrix(centers, "centers", dtype=_F64)
    k, d = c.shape
    if weights is None:
        w = np.full(k, 1.0 / k)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise InputError(f"weights must be {k} finite non-negative numbers, not all 0")
        w = w / w.sum()
    std = _number(std, "std")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, w)
    labels = np.repeat(np.arange(k, dtype=np.int64), counts)
    z = torch.randn(n, d, generator=_generator(seed), dtype=_F64)
    x = c[torch.from_numpy(labels)] + std * z
    return x, labels


# ============================================================================ prompts
def causal_mask(n: int) -> torch.Tensor:
    """Boolean causal mask ``[n, n]``: position ``t`` attends to keys ``j <= t``."""
    n = _positive_int(n, "n")
    return torch.ones(n, n, dtype=torch.bool).tril()


@dataclass(frozen=True)
class SyntheticPrompt:
    """A prompt of token embeddings split into segments (the synthetic data of the demo; the
    text prompt of a language model is :class:`icldistill.data.Prompt`).

    Attributes
    ----------
    tokens : Tensor ``[T, d_model]``
        Token embeddings in order prefix, demonstrations, query.
    segments : tuple of str, length ``T``
        Segment name of every token (``"prefix"``, ``"demos"``, ``"query"``).
    mask : BoolTensor ``[T, T]``
        Causal mask, True where position ``t`` may attend to key ``j``.
    """

    tokens: torch.Tensor
    segments: tuple[str, ...]
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def positions(self, segment: str) -> torch.Tensor:
        """Indices ``[n_S]`` (LongTensor) of the tokens of ``segment`` (empty if absent)."""
        return torch.tensor([i for i, s in enumerate(self.segments) if s == segment],
                            dtype=torch.long)

    def segment_tokens(self, segment: str) -> torch.Tensor:
        """Token embeddings ``[n_S, d_model]`` of ``segment``."""
        return self.tokens[self.positions(segment)]

    @property
    def segment_names(self) -> tuple[str, ...]:
        """Segment names in order of first appearance."""
        return tuple(dict.fromkeys(self.segments))


def __getattr__(name: str) -> Any:
    """``Prompt``, the old name of :class:`SyntheticPrompt` (with a ``DeprecationWarning``;
    removed in 0.3, like the old module paths)."""
    if name == "Prompt":
        from icldistill.core.validation import warn_caller

        warn_caller("icldistill.lab.synthetic.Prompt is now SyntheticPrompt (the text prompt "
                    "is icldistill.data.Prompt); the old name goes in 0.3", DeprecationWarning)
        return SyntheticPrompt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_prompt(
    demos: Any,
    query: Any,
    prefix: Any | None = None,
    *,
    names: tuple[str, str, str] = ("prefix", "demos", "query"),
) -> SyntheticPrompt:
    """Concatenate prefix, demonstration and query tokens into a :class:`SyntheticPrompt`.

    Parameters
    ----------
    demos : array-like ``[N, d]``
        Demonstration tokens.
    query : array-like ``[n_Q, d]``
        Query tokens.
    prefix : array-like ``[n_P, d]``, optional
        Prefix tokens (BOS, instruction); omitted when ``None``.
    names : (str, str, str)
        Segment names of prefix, demonstrations and query.

    Returns
    -------
    SyntheticPrompt
        Tokens, one segment name per token and the causal mask.
    """
    parts = []
    if prefix is not None:
        parts.append((check_matrix(prefix, "prefix", dtype=_F64), names[0]))
    parts.append((check_matrix(demos, "demos", dtype=_F64), names[1]))
    parts.append((check_matrix(query, "query", dtype=_F64), names[2]))
    d = parts[0][0].shape[1]
    for t, nm in parts:
        if t.shape[1] != d:
            raise InputError(f"{nm} tokens have dimension {t.shape[1]}, expected {d}")
    tokens = torch.cat([t for t, _ in parts])
    segments = tuple(nm for t, nm in parts for _ in range(t.shape[0]))
    return SyntheticPrompt(tokens=tokens, segments=segments,
                           mask=causal_mask(tokens.shape[0]))


def synthetic_prompt(
    d_model: int,
    n_demos: int,
    n_query: int,
    n_prefix: int = 1,
    *,
    demo_shift: float = 0.0,
    query_shift: float = 0.0,
    prefix_norm: float | None = None,
    seed: int = 0,
) -> SyntheticPrompt:
    """A prompt of Gaussian tokens: prefix, ``n_demos`` demonstrations from ``P``, the query.

    Demonstrations are ``N(demo_shift * u, I)`` and query tokens ``N(query_shift * u, I)``
    (``u`` = :func:`default_direction`); prefix tokens are standard Gaussian, rescaled to norm
    ``prefix_norm`` when it is given (a large-norm BOS token). Each segment has its own
    sub-seed derived from ``seed``.

    Parameters
    ----------
    d_model, n_demos, n_query : int
        Token dimension, demonstrations and query tokens.
    n_prefix : int
        Prefix tokens (0 for none).
    demo_shift, query_shift : float
        Mean shifts of the demonstrations and of the query along :func:`default_direction`.
    prefix_norm : float, optional
        Norm of every prefix token (finite and > 0; a negative norm would flip the tokens).
    seed : int
        Seed of the prompt (an integer >= 0).

    Returns
    -------
    SyntheticPrompt

    Raises
    ------
    InputError
        A bad size, ``prefix_norm`` or ``seed``, named in the message (checked before any
        draw).
    """
    gen = np.random.default_rng(check_seed(seed))
    n_prefix = _positive_int(n_prefix, "n_prefix", allow_zero=True)
    if prefix_norm is not None:
        prefix_norm = _number(prefix_norm, "prefix_norm", positive=True)
    s_pre, s_demo, s_query = (int(v) for v in gen.integers(0, 2**31 - 1, size=3))
    demos = gaussian_tokens(n_demos, d_model, demo_shift, seed=s_demo)
    query = gaussian_tokens(n_query, d_model, query_shift, seed=s_query)
    prefix = None
    if n_prefix > 0:
        prefix = gaussian_tokens(n_prefix, d_model, seed=s_pre)
        if prefix_norm is not None:
            prefix = prefix / prefix.norm(dim=1, keepdim=True) * prefix_norm
    return build_prompt(demos, query, prefix)


# ============================================================================ in-context tasks
@dataclass(frozen=True)
class ICLBatch:
    """A batch of in-context learning prompts ``(x_i, y_i)_{i<N}`` with their task vectors.

    Attributes
    ----------
    xs : Tensor ``[B, N, d]``
    ys : Tensor ``[B, N]``
        Labels: ``w . x`` (regression) or ``sign(w . x)`` in ``{-1, +1}`` (classification),
        after the label noise.
    ws : Tensor ``[B, d]``
        Task vector of every prompt.
    clean : Tensor ``[B, N]``
        Labels without noise.
    task : str
    """

    xs: torch.Tensor
    ys: torch.Tensor
    ws: torch.Tensor
    clean: torch.Tensor
    task: str


def icl_batch(
    task: str,
    batch: int,
    n_examples: int,
    d: int,
    seed: int,
    *,
    ws: Any | None = None,
    mean_shift: float = 0.0,
    cov_scale: float = 1.0,
    label_noise: float = 0.0,
    direction: Any | None = None,
    dtype: torch.dtype = torch.float32,
) -> ICLBatch:
    """Sample in-context linear regression or classification prompts.

    ``x ~ N(mean_shift * u, cov_scale * I_d)`` (``u`` the unit ``direction``), ``w ~ N(0, I_d)``
    unless ``ws`` is given; regression labels ``y = w . x + label_noise * eps`` with
    ``eps ~ N(0, 1)``; classification labels ``y = sign(w . x)``, each flipped with probability
    ``label_noise``.

    Parameters
    ----------
    task : {"regression", "classification"}
    batch, n_examples, d : int
        ``B``, ``N`` and the input dimension.
    seed : int
        Seed of the sample (its own generator; global RNG untouched).
    ws : array-like ``[B, d]`` or ``[d]``, optional
        Fixed task vectors (a ``[d]`` vector is shared by all prompts).
    mean_shift, cov_scale, label_noise : float
        Distribution shift of the inputs and of the labels (all 0 / 1 / 0 = the training
        distribution).
    direction : array-like ``[d]``, optional
        Mean-shift direction (default ``(1, ..., 1) / sqrt(d)``).
    dtype : torch.dtype
        Output dtype (float32 default, for training).
    """
    if task not in ("regression", "classification"):
        raise InputError(f"unknown task {task!r}; expected 'regression' or 'classification'")
    batch = _positive_int(batch, "batch")
    n_examples = _positive_int(n_examples, "n_examples")
    d = _positive_int(d, "d")
    label_noise = _number(label_noise, "label_noise")
    if task == "classification" and label_noise > 1:
        raise InputError(f"label_noise is a flip probability for classification, got "
                         f"{label_noise!r}")
    gen = _generator(seed)
    if ws is None:
        w = torch.randn(batch, d, generator=gen, dtype=_F64)
    else:
        w = torch.as_tensor(ws, dtype=_F64)
        if w.shape == (d,):
            w = w.expand(batch, d)
        if w.shape != (batch, d):
            raise InputError(f"ws must have shape [{batch}, {d}] or [{d}], got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise InputError("ws must be finite")
    x = gaussian_tokens(batch * n_examples, d, mean_shift, cov_scale,
                        seed=int(torch.randint(0, 2**62, (1,), generator=gen)),
                        direction=direction).view(batch, n_examples, d)
    clean = torch.einsum("bnd,bd->bn", x, w)
    if task == "regression":
        y = clean + label_noise * torch.randn(batch, n_examples, generator=gen, dtype=_F64)
    else:
        clean = torch.where(clean >= 0, 1.0, -1.0).to(_F64)
        flip = torch.rand(batch, n_examples, generator=gen, dtype=_F64) < label_noise
        y = torch.where(flip, -clean, clean)
    return ICLBatch(xs=x.to(dtype), ys=y.to(dtype), ws=w.to(dtype).clone(),
                    clean=clean.to(dtype), task=task)


# ============================================================================ reference learners
#: Relative eigenvalue cut-off of the least-squares pseudo-inverse.
PINV_RTOL = 1e-10


def context_spectrum(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
    """Eigen-decomposition of ``H = X^T X / n`` and ``V^T (X^T y / n)`` for contexts
    ``xs [P, n, d]``, ``ys [P, n]``: ``(lambda [P, d], V [P, d, d], b [P, d])``."""
    n = xs.shape[1]
    h = xs.transpose(1, 2) @ xs / n
    lam, vec = torch.linalg.eigh(h)
    b = (xs.transpose(1, 2) @ ys[..., None])[..., 0] / n
    return lam.clamp_min(0.0), vec, (vec.transpose(1, 2) @ b[..., None])[..., 0]


def _gd_factor(lam: torch.Tensor, eta: torch.Tensor, steps: int) -> torch.Tensor:
    """``(1 - (1 - eta lambda)^K) / lambda`` (``eta K`` at ``lambda = 0``), broadcast."""
    r = eta * lam
    inside = r < 1.0
    # stable for small eta*lambda: 1 - (1 - r)^K = -expm1(K log1p(-r))
    num_small = -torch.expm1(steps * torch.log1p(-torch.where(inside, r, torch.zeros_like(r))))
    num_large = 1.0 - (1.0 - r) ** steps
    num = torch.where(inside, num_small, num_large)
    tiny = lam <= 1e-300
    return torch.where(tiny, eta * steps * torch.ones_like(lam), num / torch.where(tiny, 1.0, lam))


def gd_predictions(xs: torch.Tensor, ys: torch.Tensor, queries: torch.Tensor, etas: Any,
                   steps: int) -> torch.Tensor:
    """Predictions at ``queries [P, d]`` of ``steps`` GD steps from ``w = 0`` on
    ``(1/2n) ||y - X w||^2`` with each step size in ``etas`` ``[E]`` -> ``[E, P]``.

    Parameters
    ----------
    xs : Tensor ``[P, n, d]``
    ys : Tensor ``[P, n]``
    queries : Tensor ``[P, d]``
    etas : array-like ``[E]``
        Step sizes, each finite and > 0.
    steps : int
        Number of GD steps (an integer >= 1).

    Raises
    ------
    InputError
        ``steps`` is not an integer >= 1 (``1.5`` is not read as 1), or ``etas`` is not a
        non-empty 1-D sequence of finite positive numbers (the error names the bad entry,
        e.g. ``etas[2]``).
    """
    steps = check_int(steps, "steps", 1)
    eta = torch.as_tensor(_step_sizes(etas), dtype=xs.dtype)[:, None, None]
    lam, vec, b = context_spectrum(xs, ys)
    coef = _gd_factor(lam[None], eta, steps) * b[None]                 # [E, P, d]
    qv = (vec.transpose(1, 2) @ queries[..., None])[..., 0]                 # [P, d]
    return (coef * qv[None]).sum(-1)


def _step_sizes(etas: Any) -> np.ndarray:
    """``etas`` as a non-empty 1-D float64 array of finite positive step sizes; the first bad
    entry is named in the :class:`InputError`."""
    try:
        ok = not isinstance(etas, (str, bytes)) and np.ndim(etas) == 1
    except ValueError:                                  # a ragged nesting
        ok = False
    values = list(etas) if ok else []
    if not values:
        raise InputError(f"etas must be a non-empty 1-D sequence of step sizes, got {etas!r}")
    return np.array([_number(v, f"etas[{i}]", positive=True) for i, v in enumerate(values)],
                    dtype=np.float64)


def least_squares_predictions(xs: torch.Tensor, ys: torch.Tensor,
                              queries: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares predictions ``<X^+ y, x_q>`` ``[P]`` (pseudo-inverse with the
    relative cut-off :data:`PINV_RTOL`)."""
    lam, vec, b = context_spectrum(xs, ys)
    keep = lam > PINV_RTOL * lam.max(-1, keepdim=True).values.clamp_min(1e-300)
    coef = torch.where(keep, b / torch.where(keep, lam, 1.0), torch.zeros_like(b))
    qv = (vec.transpose(1, 2) @ queries[..., None])[..., 0]
    return (coef * qv).sum(-1)
