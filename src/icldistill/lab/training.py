"""Deterministic training of :class:`~icldistill.models.icl_transformer.ICLTransformer` on
in-context regression / classification, with cached, resumable checkpoints.

Training data are fresh prompts from :func:`icldistill.lab.synthetic.icl_batch` at every step
(``x ~ N(0, I_d)``, ``w ~ N(0, I_d)``; ``y = w . x`` or ``y = sign(w . x)``), each step with its
own seed derived from ``(TrainConfig.seed, step)``. The model initialisation is seeded with
:func:`torch.manual_seed` inside :func:`torch.random.fork_rng` (the global RNG is untouched) and
no other randomness is used, so the same configs give bit-identical weights on the same machine
(same torch version and thread count).

Recipe: AdamW (weight decay on the linear weights only), linear learning-rate warm-up then cosine
decay to 10 % of ``lr``, gradient-norm clipping, and a curriculum on the number of in-context
examples (``curriculum_start`` at step 0, growing linearly to ``max_examples`` by half of
training) and optionally on the input dimension (``curriculum_dims_start``, as in Garg et al.,
2022). Without the dimension curriculum, and with small batches, small models tend to sit on the
"predict 0" plateau for thousands of steps; the presets use both curricula and large batches.

Loss: averaged over the prediction at every ``x_i`` position of the prompt (all ``N``
positions, i.e. ``0 .. N-1`` in-context examples).

- regression: ``mean (f - y)^2 / d_x``. Dividing by ``d_x`` makes the trivial predictor
  ``f = 0`` score 1 (``E y^2 = ||w||^2 ≈ d_x``);
- classification (``TrainConfig.classification_loss``): by default the logistic loss
  ``mean log(1 + exp(-y f))`` on the ``±1`` labels, so the output ``f`` is a logit
  (``sigmoid(f) = P(y = +1 | x, context)``; the trivial predictor ``f = 0`` scores
  ``log 2 ≈ 0.693``); or ``"mse"``, the squared error ``mean (f - y)^2``, so that ``f``
  estimates ``E[y | x, context] ∈ [-1, 1]`` (trivial predictor: 1). In both cases ``sign(f)``
  is the predicted class. The logistic loss learned clearly better in our runs (same budget).

:func:`load_or_train` caches the trained model under ``cache_root(cache_dir) / "lab"`` (file
name from a sha256 of both configs) and keeps a resumable training state while it trains, so an
interrupted run (``^C``) continues from where it stopped instead of starting over.
:func:`evaluate_icl` measures the per-position error curve of a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.store import atomic_write
from icldistill.core.results import Result
from icldistill.core.validation import InputError, warn_caller
from icldistill.lab.synthetic import gd_predictions, icl_batch, least_squares_predictions
from icldistill.models.icl_transformer import TASKS, ICLConfig, ICLTransformer

__all__ = [
    "CLASSIFICATION_LOSSES",
    "PRESETS",
    "ICLEvaluation",
    "TrainConfig",
    "TrainedICL",
    "checkpoint_path",
    "dims_at",
    "evaluate_icl",
    "examples_at",
    "learning_rate_at",
    "load_or_train",
    "preset",
    "train_batch",
    "train_icl",
]

#: Version of the checkpoint format; part of the cache key (bump to invalidate old files).
#: 2: one token per demonstration, then the query tokens (was: interleaved x, y tokens).
FORMAT_VERSION = 2
#: Losses of the classification task (see :class:`TrainConfig`).
CLASSIFICATION_LOSSES = ("logistic", "mse")
#: Seconds between two periodic saves of the resumable training state.
STATE_EVERY_SECONDS = 20.0


@dataclass(frozen=True)
class TrainConfig:
    """How an in-context learner is trained.

    Attributes
    ----------
    steps : int
        Optimiser steps (``>= 1``).
    batch_size : int
        Prompts per step.
    lr : float
        Peak learning rate.
    weight_decay : float
        AdamW weight decay (applied to the weights of the linear layers only).
    warmup : int
        Linear learning-rate warm-up steps (then cosine decay to 10 %); clipped to ``steps``.
    curriculum_start : int
        Number of in-context examples at step 0; grows linearly to ``config.max_examples``
        by half of training (clipped to ``config.max_examples``).
    label_noise : float
        Training label noise (standard deviation for regression, flip probability for
        classification).
    grad_clip : float
        Maximum gradient norm (``math.inf``: no clipping).
    seed : int
        Seed of the initialisation and of the training data (``>= 0``).
    history_every : int
        The mean training loss of every ``history_every`` steps is recorded in the history.
    curriculum_dims_start : int or None
        Curriculum on the input dimension (after Garg et al., 2022): at step 0 only
        ``curriculum_dims_start`` coordinates of ``x`` are non-zero (a random set per prompt;
        the task is ``curriculum_dims_start``-dimensional, zero-padded to ``d_x``); the
        effective dimension grows linearly to ``config.d_x`` by half of training. ``None``:
        always ``d_x``.
    classification_loss : {"logistic", "mse"}
        Loss of the classification task: logistic loss ``log(1 + exp(-y f))`` (the output
        ``f`` is a logit) or squared error on the ``±1`` labels (``f`` estimates
        ``E[y | x, context]``). Ignored for regression.
    """

    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 100
    curriculum_start: int = 10
    label_noise: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    history_every: int = 50
    curriculum_dims_start: int | None = 2
    classification_loss: str = "logistic"

    def __post_init__(self) -> None:
        if self.classification_loss not in CLASSIFICATION_LOSSES:
            raise InputError(f"TrainConfig.classification_loss must be one of "
                             f"{CLASSIFICATION_LOSSES}, got {self.classification_loss!r}")
        for name, low in (("steps", 1), ("batch_size", 1), ("warmup", 0),
                          ("curriculum_start", 1), ("seed", 0), ("history_every", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise InputError(f"TrainConfig.{name} must be an integer >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain int (hashing, checkpoints)
        dims = self.curriculum_dims_start
        if dims is not None:
            if not isinstance(dims, (int, np.integer)) or isinstance(dims, bool) or dims < 1:
                raise InputError(f"TrainConfig.curriculum_dims_start must be None or an integer "
                                 f">= 1, got {dims!r}")
            object.__setattr__(self, "curriculum_dims_start", int(dims))
        for name, positive in (("lr", True), ("weight_decay", False), ("label_noise", False),
                               ("grad_clip", True)):
            value = getattr(self, name)
            ok = (isinstance(value, (int, float, np.integer, np.floating))
                  and not isinstance(value, bool))
            ok = ok and not math.isnan(value) and (value > 0 if positive else value >= 0)
            if ok and name != "grad_clip":
                ok = math.isfinite(value)
            if not ok:
                what = "a finite positive" if positive else "a finite non-negative"
                if name == "grad_clip":
                    what = "a positive (or inf)"
                raise InputError(f"TrainConfig.{name} must be {what} number, got {value!r}")
            object.__setattr__(self, name, float(value))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainedICL:
    """A trained in-context learner.

    Attributes
    ----------
    model : ICLTransformer
        In eval mode, float32.
    config : ICLConfig
    train : TrainConfig
    history : list of (step, loss)
        Training loss (squared error normalised by ``d_x`` for regression, see
        :class:`TrainConfig` for classification) every few steps: the mean loss of
        the ``history_every`` steps ending at ``step`` (steps counted from 1).
    seconds : float
        Training wall time (when loaded from the cache: the recorded original time, summed over
        the sessions of an interrupted and resumed training).
    path : Path or None
        Checkpoint file in the cache (``None`` for :func:`train_icl`).
    """

    model: ICLTransformer
    config: ICLConfig
    train: TrainConfig
    history: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    path: Path | None = None

    @property
    def task(self) -> str:
        return self.config.task


# ============================================================================ presets
#: Preset name -> (model fields, train fields) per task. See :func:`preset`.
PRESETS: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {}
# Unit tests: a couple of seconds on one core; the loss visibly leaves the "predict 0" level.
_TINY = (dict(d_x=2, max_examples=8, n_layers=2, n_heads=2, d_model=16, mlp_ratio=2),
         dict(steps=120, batch_size=64, lr=1e-2, warmup=10, curriculum_start=8,
              curriculum_dims_start=1, history_every=10))
# A clear in-context learner in one to a few minutes on one CPU core (see the module notes).
_QUICK = (dict(d_x=5, max_examples=20, n_layers=2, n_heads=4, d_model=32, mlp_ratio=2),
          dict(steps=1600, batch_size=128, lr=3e-3, warmup=100, curriculum_start=5,
               curriculum_dims_start=2))
# Longer prompts, one more layer, more steps.
_FULL = (dict(d_x=5, max_examples=40, n_layers=3, n_heads=4, d_model=32, mlp_ratio=2),
         dict(steps=2000, batch_size=128, lr=3e-3, warmup=100, curriculum_start=10,
              curriculum_dims_start=2))
for _name, _spec in (("tiny", _TINY), ("quick", _QUICK), ("full", _FULL)):
    PRESETS[_name] = {task: _spec for task in TASKS}


def preset(name: str, task: str = "regression") -> tuple[ICLConfig, TrainConfig]:
    """Model and training configs of a named preset.

    Parameters
    ----------
    name : {"tiny", "quick", "full"}
        ``"tiny"``: unit tests (``d_x = 2``, 8 examples, 2 layers of width 16, 120 steps; a
        couple of seconds). ``"quick"``: ``d_x = 5``, 20 examples, 2 layers x 4 heads, width 32,
        1600 steps of 128 prompts; about 2 minutes on one CPU core. ``"full"``: ``d_x = 5``,
        40 examples, 3 layers x 4 heads, width 32, 2000 steps of 128 prompts; about 12 minutes
        on one (shared) CPU core. Both tasks use the same shapes and recipe.
    task : {"regression", "classification"}

    Notes
    -----
    Measured on one CPU thread of a shared 2-core machine, seed 0, :func:`evaluate_icl` with
    2048 prompts (error at ``k`` in-context examples):

    ========================  =======  ==========  ==========  ==========  ==========
    preset / task              time     k = 5       k = 10      k = 19      k = 39
    ========================  =======  ==========  ==========  ==========  ==========
    quick regression (MSE)     114 s    0.276       0.085       0.034
    quick classif. (acc.)      112 s    0.752       0.811       0.886
    full regression (MSE)      695 s    0.173       0.022       0.006*      0.003
    full classif. (acc.)       704 s    0.764       0.833       0.910*      0.939
    ========================  =======  ==========  ==========  ==========  ==========

    (normalised MSE: trivial predictor 1, least squares 0 from ``k = 5``; accuracy: chance
    0.5, the ``sign(x . sum y_j x_j)`` classifier about 0.77-0.79 at ``k = 10``, 0.85 at
    ``k = 19-20``, 0.90 at ``k = 39``; * at ``k = 20``.)

    Returns
    -------
    (ICLConfig, TrainConfig)
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; expected one of {tuple(PRESETS)}")
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {TASKS}")
    model_kw, train_kw = PRESETS[name][task]
    return ICLConfig(task=task, **model_kw), TrainConfig(**train_kw)


# ============================================================================ training
def _check_configs(config: Any, train: Any) -> None:
    if not isinstance(config, ICLConfig):
        raise InputError(f"config must be an ICLConfig, got {type(config).__name__}")
    if not isinstance(train, TrainConfig):
        raise InputError(f"train must be a TrainConfig, got {type(train).__name__}")
    if config.task == "classification" and train.label_noise > 1:
        raise InputError(f"label_noise is a flip probability for classification (<= 1), got "
                         f"{train.label_noise!r}")


def _derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from non-negative integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


_TRAIN_STREAM, _EVAL_STREAM, _DIMS_STREAM = 0x7A11, 0xE7A1, 0xD135


def learning_rate_at(train: TrainConfig, step: int) -> float:
    """Learning rate of a training step: linear warm-up, then cosine decay to 10 % of ``lr``.

    Parameters
    ----------
    train : TrainConfig
        ``lr``, ``warmup`` (clipped to ``steps``) and ``steps`` set the schedule.
    step : int
        0-based step.

    Returns
    -------
    float
        ``lr * (step + 1) / warmup`` during the warm-up; afterwards
        ``lr * (0.1 + 0.45 * (1 + cos(pi * progress)))`` with ``progress`` going from 0 at the
        end of the warm-up to 1 at the last step (clipped to 1).
    """
    warmup = min(train.warmup, train.steps)
    if step < warmup:
        return train.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, train.steps - warmup)
    return train.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def examples_at(config: ICLConfig, train: TrainConfig, step: int) -> int:
    """Curriculum on the prompt length: in-context examples of a training step.

    Parameters
    ----------
    config : ICLConfig
        ``max_examples`` is the final length.
    train : TrainConfig
        ``curriculum_start`` (clipped to ``config.max_examples``) is the length at step 0.
    step : int
        0-based step.

    Returns
    -------
    int
        Grows linearly (integer arithmetic) from ``curriculum_start`` to ``max_examples``,
        reached at step ``steps // 2`` and kept afterwards.
    """
    start = min(train.curriculum_start, config.max_examples)
    half = max(1, train.steps // 2)
    return min(config.max_examples, start + (config.max_examples - start) * step // half)


def dims_at(config: ICLConfig, train: TrainConfig, step: int) -> int:
    """Curriculum on the input dimension: effective dimension of a training step.

    Parameters
    ----------
    config : ICLConfig
        ``d_x`` is the final dimension.
    train : TrainConfig
        ``curriculum_dims_start`` (clipped to ``config.d_x``) is the dimension at step 0;
        ``None`` turns the curriculum off.
    step : int
        0-based step.

    Returns
    -------
    int
        ``config.d_x`` without the curriculum; otherwise grows linearly (integer arithmetic)
        from ``curriculum_dims_start`` to ``d_x``, reached at step ``steps // 2``.
    """
    if train.curriculum_dims_start is None:
        return config.d_x
    start = min(train.curriculum_dims_start, config.d_x)
    half = max(1, train.steps // 2)
    return min(config.d_x, start + (config.d_x - start) * step // half)


def train_batch(config: ICLConfig, train: TrainConfig,
                step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training prompts of a step (the same for the same configs and step).

    Parameters
    ----------
    config : ICLConfig
    train : TrainConfig
        ``batch_size``, ``label_noise``, ``seed`` and the curricula.
    step : int
        0-based step; the prompts are drawn from a seed derived from ``(train.seed, step)``.

    Returns
    -------
    xs : Tensor ``[batch_size, examples_at(step), d_x]`` (float32)
        Inputs; with the dimension curriculum, each prompt has its own random set of
        ``dims`` active coordinates and the others are 0.
    ys : Tensor ``[batch_size, examples_at(step)]`` (float32)
        Labels.
    dims : int
        The effective input dimension, :func:`dims_at`.
    """
    dims = dims_at(config, train, step)
    batch = icl_batch(config.task, train.batch_size, examples_at(config, train, step), dims,
                      _derived_seed(train.seed, _TRAIN_STREAM, step),
                      label_noise=train.label_noise, dtype=torch.float32)
    xs = batch.xs
    if dims < config.d_x:
        # each prompt gets its own random set of ``dims`` active coordinates (the others are 0):
        # with a fixed set, the read-in weights of the inactive coordinates would get no
        # gradient and the model would learn to ignore them
        gen = torch.Generator().manual_seed(_derived_seed(train.seed, _DIMS_STREAM, step))
        active = torch.rand(xs.shape[0], config.d_x, generator=gen).argsort(dim=1)[:, :dims]
        full = xs.new_zeros(*xs.shape[:2], config.d_x)
        xs = full.scatter(2, active[:, None, :].expand(-1, xs.shape[1], -1), xs)
    return xs, batch.ys, dims


def _loss(config: ICLConfig, train: TrainConfig, pred: torch.Tensor, ys: torch.Tensor,
          dims: int) -> torch.Tensor:
    """Training loss averaged over all positions: squared error divided by the (effective)
    dimension for regression (the zero predictor scores 1); logistic loss
    ``log(1 + exp(-y f))`` or squared error on the ``±1`` labels for classification."""
    if config.task == "classification" and train.classification_loss == "logistic":
        return torch.nn.functional.softplus(-pred * ys).mean()
    mse = (pred - ys).pow(2).mean()
    return mse / dims if config.task == "regression" else mse


def _new_model(config: ICLConfig, seed: int) -> ICLTransformer:
    """Seeded float32 model; global RNG state and default dtype are left as they were."""
    old_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, 0x1417))
        try:
            torch.set_default_dtype(torch.float32)
            model = ICLTransformer(config)
        finally:
            torch.set_default_dtype(old_dtype)
    return model.float()


def _optimizer(model: ICLTransformer, train: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            (decay if isinstance(module, torch.nn.Linear) and pname == "weight"
             else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr)


@dataclass
class _State:
    """Everything needed to continue a training run exactly."""

    step: int = 0                      # completed steps
    history: list[tuple[int, float]] = field(default_factory=list)
    window_sum: float = 0.0            # loss sum of the current history window
    window_count: int = 0
    seconds: float = 0.0


def _restore(model: ICLTransformer, opt: torch.optim.AdamW,
             resume: dict[str, Any] | None) -> _State:
    """Load a saved training state into ``model`` and ``opt`` (a fresh state without one)."""
    if resume is None:
        return _State()
    model.load_state_dict(resume["model"])
    opt.load_state_dict(resume["optimizer"])
    return _State(step=int(resume["step"]),
                  history=[(int(s), float(v)) for s, v in resume["history"]],
                  window_sum=float(resume["window_sum"]),
                  window_count=int(resume["window_count"]),
                  seconds=float(resume["seconds"]))


def _snapshot(model: ICLTransformer, opt: torch.optim.AdamW, st: _State) -> dict[str, Any]:
    """The resumable training state (what :func:`_restore` reads back)."""
    return {"step": st.step, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "history": [list(h) for h in st.history], "window_sum": st.window_sum,
            "window_count": st.window_count, "seconds": st.seconds}


def _loss_and_grad(config: ICLConfig, train: TrainConfig, model: ICLTransformer,
                   opt: torch.optim.AdamW, step: int) -> tuple[float, int, int]:
    """Forward and backward pass of the 0-based ``step``: the step's learning rate set, the
    gradients computed and clipped, the parameters not updated yet. Returns the loss, the
    prompt length and the effective dimension."""
    xs, ys, dims = train_batch(config, train, step)
    lr = learning_rate_at(train, step)
    for group in opt.param_groups:
        group["lr"] = lr
    loss = _loss(config, train, model(xs, ys), ys, dims)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged at step {step + 1} (loss {value}); "
                                 f"try a smaller learning rate")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if math.isfinite(train.grad_clip):
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    return value, xs.shape[1], dims


def _record(st: _State, train: TrainConfig, value: float) -> bool:
    """Count a completed step with loss ``value``; True when it closed a history window."""
    st.step += 1
    st.window_sum += value
    st.window_count += 1
    if st.window_count == train.history_every or st.step == train.steps:
        st.history.append((st.step, st.window_sum / st.window_count))
        st.window_sum, st.window_count = 0.0, 0
        return True
    return False


def _train(
    config: ICLConfig,
    train: TrainConfig,
    *,
    progress: bool = False,
    resume: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    state_every: float = STATE_EVERY_SECONDS,
    stop_after: int | None = None,
) -> tuple[ICLTransformer, _State]:
    """The training loop. ``resume`` is a state dict written by ``save_state``; ``save_state``
    is called periodically (every ``state_every`` seconds, at step boundaries) and when the run
    is interrupted by ``KeyboardInterrupt``; ``stop_after`` raises ``KeyboardInterrupt`` once
    that many steps are completed (tests)."""
    model = _new_model(config, train.seed)
    opt = _optimizer(model, train)
    st = _restore(model, opt, resume)
    model.train()

    from icldistill.core.progress import progress_bar

    bar = progress_bar(total=train.steps, initial=st.step, enabled=progress,
                       desc=f"ICL {config.task}", dynamic_ncols=True)
    t_session = time.perf_counter()
    seconds0 = st.seconds
    last_save = t_session
    consistent = True  # False while parameters / optimiser state are half updated
    try:
        while st.step < train.steps:
            if stop_after is not None and st.step >= stop_after:
                raise KeyboardInterrupt(f"stop_after={stop_after}")
            value, n, dims = _loss_and_grad(config, train, model, opt, st.step)
            consistent = False
            opt.step()
            if _record(st, train, value):
                bar.set_postfix(loss=f"{st.history[-1][1]:.4f}", n=n, d=dims)
            consistent = True
            bar.update(1)
            now = time.perf_counter()
            st.seconds = seconds0 + (now - t_session)
            if save_state is not None and now - last_save >= state_every \
                    and st.step < train.steps:
                save_state(_snapshot(model, opt, st))
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        if save_state is not None and consistent and st.step > 0:
            st.seconds = seconds0 + (time.perf_counter() - t_session)
            save_state(_snapshot(model, opt, st))
        raise
    finally:
        bar.close()
    st.seconds = seconds0 + (time.perf_counter() - t_session)
    model.eval()
    return model, st


def train_icl(config: ICLConfig, train: TrainConfig, *, progress: bool = False) -> TrainedICL:
    """Train an :class:`ICLTransformer` on in-context regression or classification.

    Deterministic: the same configs give bit-identical weights on the same machine. Nothing is
    cached (see :func:`load_or_train`).

    Parameters
    ----------
    config : ICLConfig
        Model shape; ``config.task`` selects the task and ``config.d_x`` / ``max_examples`` the
        prompts (``[batch_size, N, d_x]`` inputs, ``N`` following the curriculum).
    train : TrainConfig
    progress : bool
        Show a tqdm bar with the current training loss.

    Returns
    -------
    TrainedICL
        Model in eval mode (float32), the configs, the loss history and the wall time.
    """
    _check_configs(config, train)
    model, st = _train(config, train, progress=progress)
    return TrainedICL(model=model, config=config, train=train, history=st.history,
                      seconds=st.seconds, path=None)


# ============================================================================ checkpoints
def _key(config: ICLConfig, train: TrainConfig) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "model": config.to_dict(), "train": train.to_dict()}


def checkpoint_path(config: ICLConfig, train: TrainConfig,
                    cache_dir: str | Path | None = None) -> Path:
    """Cache file of a trained model: ``<cache_root>/lab/icl-<task>-<sha256[:20]>.pt``.

    The hash covers both configs' dicts and :data:`FORMAT_VERSION`; the resumable training
    state lives next to it with the suffix ``.state.pt``.
    """
    from icldistill.models.registry import cache_root

    _check_configs(config, train)
    blob = json.dumps(_key(config, train), sort_keys=True, default=repr).encode()
    digest = hashlib.sha256(blob).hexdigest()[:20]
    return cache_root(cache_dir) / "lab" / f"icl-{config.task}-{digest}.pt"


def _state_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".pt")] + ".state.pt")


def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _load_matching(path: Path, config: ICLConfig, train: TrainConfig,
                   what: str) -> dict[str, Any] | None:
    """The stored dict at ``path`` if it is readable and was written for these configs."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / truncated / foreign file
        warn_caller(f"ignoring unreadable {what} {path}: {exc}", RuntimeWarning)
        return None
    if not isinstance(blob, dict) or blob.get("key") != _key(config, train):
        warn_caller(f"ignoring {what} {path}: it was written for other configs", RuntimeWarning)
        return None
    return blob


def load_or_train(config: ICLConfig, train: TrainConfig, *, cache_dir: str | Path | None = None,
                  progress: bool = False, retrain: bool = False,
                  _stop_after: int | None = None,
                  _state_every: float = STATE_EVERY_SECONDS) -> TrainedICL:
    """The trained model of these configs from the cache, training (and caching) it if needed.

    The checkpoint is ``checkpoint_path(config, train, cache_dir)`` (under
    ``cache_root(cache_dir) / "lab"``), written atomically (temporary file, then
    ``os.replace``). While training, a resumable state (model, optimiser, step, history) is saved
    next to it every :data:`STATE_EVERY_SECONDS` seconds and when the run is interrupted
    (``KeyboardInterrupt``); the next call resumes from it and ends with the same weights as an
    uninterrupted run. A stored file whose configs do not match is ignored (with a warning).
    Processes sharing the cache train a given learner once: the others wait for its lock
    (``<cache>/lab/locks/<checkpoint>.lock``) and load what it wrote.

    Parameters
    ----------
    config : ICLConfig
    train : TrainConfig
    cache_dir : str or Path, optional
        Cache root (default ``$ICLDISTILL_CACHE`` or ``~/.cache/icldistill``).
    progress : bool
        Show a tqdm bar while training.
    retrain : bool
        Ignore (and overwrite) the cached model and any saved training state.

    Returns
    -------
    TrainedICL
        With ``path`` set to the checkpoint file.
    """
    from icldistill.artifacts.store import unit_lock

    _check_configs(config, train)
    path = checkpoint_path(config, train, cache_dir)
    if not retrain and (cached := _load_cached(path, config, train)) is not None:
        return cached
    # One process trains a given learner; another that needs it waits, then loads it.
    with unit_lock(path.parent, path.stem):
        if not retrain and (cached := _load_cached(path, config, train)) is not None:
            return cached
        return _train_and_save(config, train, path, progress=progress, retrain=retrain,
                               stop_after=_stop_after, state_every=_state_every)


def _load_cached(path: Path, config: ICLConfig, train: TrainConfig) -> TrainedICL | None:
    """The cached trained model at ``path`` when its configs match, else ``None``."""
    blob = _load_matching(path, config, train, "checkpoint")
    if blob is None:
        return None
    model = _new_model(config, train.seed)
    model.load_state_dict(blob["model"])
    model.eval()
    return TrainedICL(model=model, config=config, train=train,
                      history=[(int(s), float(v)) for s, v in blob["history"]],
                      seconds=float(blob["seconds"]), path=path)


def _train_and_save(config: ICLConfig, train: TrainConfig, path: Path, *, progress: bool,
                    retrain: bool, stop_after: int | None, state_every: float) -> TrainedICL:
    """Train (resuming from a saved state unless ``retrain``) and write the checkpoint."""
    state_path = _state_path(path)
    resume = None if retrain else _load_matching(state_path, config, train, "training state")
    key = _key(config, train)

    def save_state(snapshot: dict[str, Any]) -> None:
        _atomic_save({"key": key, **snapshot}, state_path)

    model, st = _train(config, train, progress=progress, resume=resume, save_state=save_state,
                       state_every=state_every, stop_after=stop_after)
    _atomic_save({"key": key, "model": model.state_dict(),
                  "history": [list(h) for h in st.history], "seconds": st.seconds,
                  "torch": str(torch.__version__)}, path)
    with contextlib.suppress(OSError):
        state_path.unlink()
    return TrainedICL(model=model, config=config, train=train, history=st.history,
                      seconds=st.seconds, path=path)


# ============================================================================ evaluation
@dataclass(frozen=True)
class ICLEvaluation(Result):
    """Error curve of an in-context learner: position ``i`` uses ``i`` in-context examples.

    Attributes
    ----------
    task : str
    n_examples : int
        ``N``, the prompt length (positions ``0 .. N-1``).
    prompts : int
        Number of prompts averaged.
    error : Tensor ``[N]`` (float64)
        Regression: mean normalised squared error ``(f - y)^2 / d_x`` (the zero predictor scores
        about 1). Classification: accuracy of ``sign(f)`` (chance is 0.5).
    stderr : Tensor ``[N]`` (float64)
        Standard error of ``error`` over the prompts.
    baseline : Tensor ``[N]`` (float64)
        The same metric for a reference learner on the same prompts: least squares
        (minimum-norm solution) for regression; for classification the mean-of-``y x``
        (linear kernel regression) classifier ``sign(x . sum_j y_j x_j)``.
    baseline_name : str
    """

    task: str
    n_examples: int
    prompts: int
    error: torch.Tensor
    stderr: torch.Tensor
    baseline: torch.Tensor
    baseline_name: str

    @property
    def metric(self) -> str:
        return "normalised MSE" if self.task == "regression" else "accuracy"

    def table(self, positions: list[int] | None = None) -> str:
        """A small text table ``k, error ± stderr, baseline`` (``positions`` default: all)."""
        rows = [f"{'k':>3}  {self.metric:>16}  {self.baseline_name:>14}"]
        for i in positions if positions is not None else range(self.n_examples):
            rows.append(f"{i:>3}  {float(self.error[i]):9.4f} ± {float(self.stderr[i]):.4f}"
                        f"  {float(self.baseline[i]):14.4f}")
        return "\n".join(rows)


def _baseline(task: str, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Reference predictions ``[B, N]`` from the examples before each position (float64):
    least squares (regression) or one-step GD from 0, i.e. ``x . sum_j y_j x_j`` up to a
    positive factor (classification, read through its sign)."""
    B, N = ys.shape
    out = torch.zeros(B, N, dtype=torch.float64)
    for i in range(1, N):
        X, Y, q = xs[:, :i], ys[:, :i], xs[:, i]
        if task == "regression":
            out[:, i] = least_squares_predictions(X, Y, q)
        else:
            out[:, i] = gd_predictions(X, Y, q, [1.0], 1)[0]
    return out


def evaluate_icl(
    model: ICLTransformer | TrainedICL,
    task: str | None = None,
    *,
    n_examples: int | None = None,
    batches: int = 8,
    batch_size: int = 256,
    seed: int = 0,
    mean_shift: float = 0.0,
    cov_scale: float = 1.0,
    label_noise: float = 0.0,
) -> ICLEvaluation:
    """Per-position error of an in-context learner on fresh prompts.

    Parameters
    ----------
    model : ICLTransformer or TrainedICL
    task : {"regression", "classification"}, optional
        Must match ``model.config.task`` (default: the model's task).
    n_examples : int, optional
        Prompt length ``N`` (``1 .. max_examples``; default ``max_examples``).
    batches, batch_size : int
        ``batches * batch_size`` prompts are evaluated, ``batch_size`` at a time.
    seed : int
        Seed of the evaluation prompts (a stream disjoint from the training data).
    mean_shift, cov_scale, label_noise : float
        Optional distribution shift of the prompts (see :func:`icldistill.lab.synthetic.icl_batch`).

    Returns
    -------
    ICLEvaluation
        ``error`` and ``stderr`` of shape ``[N]``: entry ``i`` is the prediction made with
        ``i`` in-context examples.
    """
    model = _eval_model(model)
    task, n = _check_eval_args(model.config, task, n_examples, batches, batch_size, seed)
    per_prompt, per_prompt_base = _eval_errors(
        model, task, n, batches=int(batches), batch_size=int(batch_size), seed=seed,
        shift=dict(mean_shift=mean_shift, cov_scale=cov_scale, label_noise=label_noise))
    P = per_prompt.shape[0]
    stderr = (per_prompt.std(0, unbiased=True) / math.sqrt(P) if P > 1
              else torch.zeros(int(n), dtype=torch.float64))
    return ICLEvaluation(task=task, n_examples=int(n), prompts=P, error=per_prompt.mean(0),
                         stderr=stderr, baseline=per_prompt_base.mean(0),
                         baseline_name="least squares" if task == "regression"
                         else "mean y·x")


def _eval_model(model: Any) -> ICLTransformer:
    """The transformer of ``model`` (a :class:`TrainedICL`'s own), or an :class:`InputError`."""
    if isinstance(model, TrainedICL):
        model = model.model
    if not isinstance(model, ICLTransformer):
        raise InputError(f"model must be an ICLTransformer or TrainedICL, got "
                         f"{type(model).__name__}")
    return model


def _check_eval_args(cfg: ICLConfig, task: str | None, n_examples: int | None, batches: Any,
                     batch_size: Any, seed: Any) -> tuple[str, int]:
    """The task and prompt length of :func:`evaluate_icl`, its arguments checked."""
    task = cfg.task if task is None else task
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {TASKS}")
    if task != cfg.task:
        raise InputError(f"task mismatch: the model was trained on {cfg.task!r}, not {task!r}")
    n = cfg.max_examples if n_examples is None else n_examples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) \
            or not 1 <= n <= cfg.max_examples:
        raise InputError(f"n_examples must be an integer in [1, {cfg.max_examples}], got {n!r}")
    for name, value in (("batches", batches), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return task, n


def _eval_errors(model: ICLTransformer, task: str, n: int, *, batches: int, batch_size: int,
                 seed: int, shift: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt, per-position metric ``[P, N]`` of the model and of the baseline (float64) on
    ``batches`` evaluation batches; the model is left in the train / eval mode it was in."""
    cfg = model.config
    param = next(model.parameters())
    dtype, device = param.dtype, param.device
    errs, base = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(batches):
                batch = icl_batch(task, batch_size, int(n), cfg.d_x,
                                  _derived_seed(seed, _EVAL_STREAM, b), **shift, dtype=dtype)
                pred = model(batch.xs.to(device), batch.ys.to(device)).double().cpu()
                ys, xs = batch.ys.double(), batch.xs.double()
                ref = _baseline(task, xs, ys)
                if task == "regression":
                    errs.append((pred - ys).pow(2) / cfg.d_x)
                    base.append((ref - ys).pow(2) / cfg.d_x)
                else:
                    errs.append((torch.where(pred >= 0, 1.0, -1.0) == ys).double())
                    base.append((torch.where(ref >= 0, 1.0, -1.0) == ys).double())
    finally:
        model.train(was_training)
    return torch.cat(errs), torch.cat(base)                         # [P, N] each
