"""Bias of the distilled weights and the Rademacher generalization bound (SPEC §3–4).

- :func:`w0_bias` measures ``||W_0(P) - W_0(Q)||_HS`` three ways: the exact Gram (dual) form,
  ``c * MMD_{K_att}(P, Q)`` through the package's MMD routine (the SPEC §3 identity says these
  are equal), and explicit random features (approximate; converges as ``m`` grows).
- :func:`rademacher_complexity` gives ``R_hat(F_B)`` in closed form
  ``(B/N) sqrt(sum_i kappa(k_i, k_i))`` and by Monte Carlo
  ``(B/N) mean_sigma sqrt(sigma^T K sigma)``.
- :func:`generalization_bound` combines them:
  ``E[loss] <= empirical + 2 L R_hat + 3 M sqrt(ln(2/delta) / (2N))``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from icldistill.core.decomposition import DualWeights
from icldistill.core.kernels import Kernel, make_kernel, stack_kv
from icldistill.core.mmd import mmd
from icldistill.core.results import Result
from icldistill.core.validation import (
    InputError,
    check_float,
    check_int,
    check_matrix,
    check_positive,
    check_seed,
)

__all__ = [
    "BiasResult",
    "GeneralizationBound",
    "RademacherComplexity",
    "generalization_bound",
    "rademacher_complexity",
    "w0_bias",
]


@dataclass(frozen=True)
class BiasResult(Result):
    """``||W_0(P) - W_0(Q)||_HS`` with ``W_0(P) = c * E_P[v phi(k)^T]``.

    Attributes
    ----------
    hs_norm : float
        Exact value from the Gram (dual) form.
    mmd_att : float
        ``MMD_{K_att}(P, Q)`` (biased estimator, not squared), from :func:`icldistill.core.mmd`.
    c : float
        The scale ``c = N / D'``.
    hs_norm_features : float or None
        The same norm from explicit ``num_features`` random features (approximate).
    num_features : int or None
    """

    hs_norm: float
    mmd_att: float
    c: float
    hs_norm_features: float | None = None
    num_features: int | None = None

    @property
    def c_times_mmd(self) -> float:
        """``c * MMD_{K_att}`` — equal to :attr:`hs_norm` (SPEC §3, exact)."""
        return self.c * self.mmd_att


def _kv(keys: Any, values: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    k = check_matrix(keys, f"{name}_keys", dtype=torch.float64)
    v = check_matrix(values, f"{name}_values", dtype=torch.float64)
    if k.shape[0] != v.shape[0]:
        raise InputError(f"{name}: {k.shape[0]} keys but {v.shape[0]} values")
    return k, v


def w0_bias(
    p_keys: Any,
    p_values: Any,
    q_keys: Any,
    q_values: Any,
    c: float = 1.0,
    scale: float | None = None,
    *,
    num_features: int | None = None,
    seed: int = 0,
) -> BiasResult:
    """Bias ``||W_0(P) - W_0(Q)||_HS`` of the distilled weights between two token samples.

    Parameters
    ----------
    p_keys, p_values : array-like ``[n_P, d]``, ``[n_P, d_v]``
        Keys and values of tokens drawn from the prompt distribution ``P``.
    q_keys, q_values : array-like ``[n_Q, d]``, ``[n_Q, d_v]``
        Keys and values of tokens drawn from the target distribution ``Q*``.
    c : float
        Common scale ``c = N / D' = 2 eta*``, a finite positive number.
    scale : float, optional
        Softmax-kernel scale ``s`` (default ``1/sqrt(d)``), a finite positive number.
    num_features : int, optional
        Also compute the norm through ``num_features`` explicit positive random features (an
        integer ``>= 1``; ``2.9`` is refused, not truncated).
    seed : int
        Seed of the random features, an integer in ``[0, 2**63 - 1]``.

    Raises
    ------
    InputError
        Malformed keys or values, or a parameter out of range; bools and text are refused
        (``c=True`` is not read as 1.0).
    """
    kp, vp = _kv(p_keys, p_values, "p")
    kq, vq = _kv(q_keys, q_values, "q")
    if kp.shape[1] != kq.shape[1] or vp.shape[1] != vq.shape[1]:
        raise InputError("P and Q tokens must have the same key and value dimensions")
    c = check_positive(c, "c")
    s = 1.0 / math.sqrt(kp.shape[1]) if scale is None else check_positive(scale, "scale")
    if num_features is not None:
        num_features = check_int(num_features, "num_features", 1)
    seed = check_seed(seed)
    # W_0(P) - W_0(Q) as one dual expansion with coefficients +v/n_P and -v/n_Q, multiplier c.
    diff = DualWeights(
        keys=torch.cat([kp, kq]),
        coefficients=torch.cat([vp / kp.shape[0], -vq / kq.shape[0]]),
        log_multiplier=math.log(c),
        scale=s,
    )
    mmd_att = mmd(stack_kv(kp, vp), stack_kv(kq, vq), "attention", "biased", squared=False,
                  key_dim=kp.shape[1], scale=s)
    feat = None
    if num_features is not None:
        feat = diff.to_primal(num_features, seed=seed).hs_norm()
    return BiasResult(hs_norm=diff.hs_norm(), mmd_att=mmd_att, c=c, hs_norm_features=feat,
                      num_features=num_features)


@dataclass(frozen=True)
class RademacherComplexity(Result):
    """Empirical Rademacher complexity of ``F_B = {x -> W phi(k(x)) : ||W||_HS <= B}``.

    Attributes
    ----------
    closed_form : float
        ``(B/N) sqrt(sum_i kappa(k_i, k_i))`` (an upper bound on the expectation).
    monte_carlo : float
        ``(B/N) mean_sigma sqrt(sigma^T K sigma)`` over ``samples`` sign vectors (exact when
        ``exhaustive``).
    monte_carlo_stderr : float
        Standard error of the Monte-Carlo mean (0 when exhaustive).
    n : int
        ``N``, the sample size.
    radius : float
        ``B``.
    samples : int
        Number of sign vectors averaged.
    exhaustive : bool
        Whether all ``2^N`` sign vectors were enumerated.
    """

    closed_form: float
    monte_carlo: float
    monte_carlo_stderr: float
    n: int
    radius: float
    samples: int
    exhaustive: bool


def rademacher_complexity(
    keys: Any,
    radius: float,
    kernel: str | Kernel = "softmax",
    *,
    samples: int | str = 1000,
    seed: int = 0,
    **kernel_params: Any,
) -> RademacherComplexity:
    """Empirical Rademacher complexity of the student class on the sample ``keys`` (SPEC §4).

    Parameters
    ----------
    keys : array-like ``[N, d]``
        The sample ``k_1..k_N`` (e.g. demonstration keys).
    radius : float
        ``B``, typically ``||W_0||_HS``.
    kernel : str or Kernel
        Kernel of the feature map (default the softmax kernel ``exp(s <k, k'>)``).
    samples : int or "exhaustive"
        Number of Rademacher sign vectors, or ``"exhaustive"`` to average all ``2^N`` of them
        (``N <= 20``).
    seed : int
        Seed of the sign vectors, an integer in ``[0, 2**63 - 1]`` (checked even when
        ``samples="exhaustive"`` does not use it).
    **kernel_params
        Kernel parameters, e.g. ``scale``; for ``kernel="attention"`` the rows of ``keys`` are
        tokens ``[k | v]`` and ``key_dim`` must leave at least one value column.

    Returns
    -------
    RademacherComplexity

    Raises
    ------
    InputError
        ``keys`` is not a finite non-empty matrix, ``radius`` is not a finite number ``>= 0``,
        ``samples`` is neither a positive integer nor ``"exhaustive"``, ``seed`` is not a
        valid seed (a bool, a fraction, a negative number...), the kernel is unknown,
        its parameters do not fit the rows (e.g. an attention ``key_dim`` without value
        columns), or its Gram matrix overflows.
    """
    k = check_matrix(keys, "keys", dtype=torch.float64)
    radius = _radius(radius)
    n_samples = _samples(samples)
    seed = check_seed(seed)
    kern = make_kernel(kernel, k, **kernel_params)
    kern.check_input_dim(k.shape[1])
    gram = kern(k, k)
    if not bool(torch.isfinite(gram).all()):
        raise InputError(f"kernel {kern.name!r} overflowed on these keys (infinite Gram entries)")
    n = k.shape[0]
    closed = radius / n * math.sqrt(max(float(torch.diagonal(gram).sum()), 0.0))
    if n_samples is None:
        if n > 20:
            raise InputError(f"exhaustive enumeration of 2^{n} sign vectors is too large (N <= 20)")
        sigma = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=n)), dtype=torch.float64)
        exhaustive = True
    else:
        g = torch.Generator().manual_seed(seed)
        sigma = torch.randint(0, 2, (n_samples, n), generator=g).to(torch.float64) * 2 - 1
        exhaustive = False
    sigma = sigma.to(gram.device)
    quad = ((sigma @ gram) * sigma).sum(1).clamp_min(0.0)
    vals = radius / n * torch.sqrt(quad)
    stderr = 0.0 if exhaustive or vals.numel() < 2 else float(vals.std() / math.sqrt(vals.numel()))
    return RademacherComplexity(
        closed_form=closed,
        monte_carlo=float(vals.mean()),
        monte_carlo_stderr=stderr,
        n=n,
        radius=radius,
        samples=int(sigma.shape[0]),
        exhaustive=exhaustive,
    )


def _radius(radius: Any) -> float:
    """``radius`` as a finite float ``>= 0`` (bools and text refused), else
    :class:`InputError`."""
    return check_float(radius, "radius", 0.0)


def _samples(samples: Any) -> int | None:
    """``samples`` as a positive int, or ``None`` for ``"exhaustive"``; else :class:`InputError`
    naming the known values."""
    if isinstance(samples, str):
        if samples == "exhaustive":
            return None
    else:
        try:
            ok = not isinstance(samples, bool) and int(samples) == samples and int(samples) >= 1
        except (TypeError, ValueError, OverflowError):
            ok = False
        if ok:
            return int(samples)
    raise InputError(f"samples must be a positive integer or 'exhaustive', got {samples!r}")


@dataclass(frozen=True)
class GeneralizationBound(Result):
    """``E[loss] <= empirical_loss + complexity_term + confidence_term`` w.p. ``>= 1 - delta``.

    Attributes
    ----------
    bound : float
    empirical_loss : float
    complexity_term : float
        ``2 L R_hat(F_B)``.
    confidence_term : float
        ``3 M sqrt(ln(2/delta) / (2N))``.
    rademacher : float
        The ``R_hat`` used.
    n : int
    delta, lipschitz, loss_bound : float
    """

    bound: float
    empirical_loss: float
    complexity_term: float
    confidence_term: float
    rademacher: float
    n: int
    delta: float
    lipschitz: float
    loss_bound: float


def generalization_bound(
    empirical_loss: float,
    rademacher: float | RademacherComplexity,
    n: int | None = None,
    *,
    lipschitz: float = 1.0,
    loss_bound: float = 1.0,
    delta: float = 0.05,
) -> GeneralizationBound:
    """Rademacher generalization bound for a loss in ``[0, M]``, ``L``-Lipschitz (SPEC §4).

    Parameters
    ----------
    empirical_loss : float
        Mean loss on the ``N`` demonstration tokens.
    rademacher : float or RademacherComplexity
        ``R_hat(F_B)``; with a :class:`RademacherComplexity` its closed form is used and ``n``
        is its sample size: ``n`` may then be left out or given equal to it (another ``n``
        would pair the complexity of one sample with the size of another, so it raises
        :class:`InputError`; it used to replace the sample size silently).
    n : int, optional
        ``N``, number of demonstration tokens: an integer ``>= 1`` (``2.7`` and ``True`` are
        refused, not read as 2 and 1). Required with a float ``rademacher``.
    lipschitz, loss_bound : float
        ``L`` and ``M``.
    delta : float
        Failure probability in ``(0, 1)``.
    """
    if isinstance(rademacher, RademacherComplexity):
        r = rademacher.closed_form
        if n is None:
            n = rademacher.n
        elif check_int(n, "n", 1) != rademacher.n:
            raise InputError(f"n={n!r} contradicts the sample size of the Rademacher complexity "
                             f"(rademacher.n={rademacher.n}); leave n out or give the same one")
    else:      # bools and text are refused (check_float), not read as 1 or parsed
        r = check_float(rademacher, "rademacher complexity", 0.0)
    if n is None:
        raise InputError("n must be a positive integer, got None")
    n = check_int(n, "n", 1)
    delta = check_float(delta, "delta", 0.0, 1.0, low_open=True)
    if delta == 1.0:
        raise InputError(f"delta must lie in (0, 1), got {delta}")
    loss_bound = check_positive(loss_bound, "loss_bound")
    lipschitz = check_positive(lipschitz, "lipschitz")
    empirical_loss = check_float(empirical_loss, "empirical_loss", 0.0, loss_bound)
    complexity = 2.0 * lipschitz * r
    confidence = 3.0 * loss_bound * math.sqrt(math.log(2.0 / delta) / (2.0 * n))
    return GeneralizationBound(
        bound=float(empirical_loss) + complexity + confidence,
        empirical_loss=float(empirical_loss),
        complexity_term=complexity,
        confidence_term=confidence,
        rademacher=r,
        n=n,
        delta=float(delta),
        lipschitz=lipschitz,
        loss_bound=loss_bound,
    )
