"""Shared machinery of the phenomena sections (``adaptation``, ``ordering``, ``interference``,
``icl-vs-finetuning``): real few-shot prompts of registry tasks, a trained language model and
its **random-initialised twins** (the controls), label scoring, the distillation quantities at
the label position, and the rule that turns a measurement into a check.

The control rule
----------------
Every real-model statistic is computed on the trained model and on ``n_controls``
architecture-identical models with random weights (:func:`random_twin`, seeds ``seed + 1 ..``),
on the same prompts. Where every model is measured on the same units (the demonstration sets,
the tasks), the comparison is **paired** (:func:`compare_paired_with_controls`): per control,
trained - control per unit, two-sided exact sign-flip test, and the trained model differs only
if it differs from every control in one direction with ``p <`` :data:`ALPHA`. Elsewhere
(statistics without per-unit values, or units that differ between models) each model's
statistic comes with a 95% bootstrap interval (:func:`statistic`), the **control spread** is
the union of the controls' intervals, and the trained value must lie outside it
(:func:`compare_with_controls`). Either way a claim counts only **on the claim's side**
(above the controls for a claimed "more", below them for a claimed "less": a trained value
beyond the controls on the other side means the untrained network shows the property more
strongly) *and* the claim itself holds on
the trained model (:func:`controlled_check`). A property every network has (an identity, an
inequality) therefore shows as **NO**: the control has it too, so it says nothing about what
training taught.

Multiplicity
------------
A section states several claims (per model); each claim check also carries a p-value of the
claim on the trained model (a paired test over the same items the interval resamples, e.g. the
sign-flip test of :func:`icldistill.core.stats.sign_flip_test`), and :func:`holm_checks`
Holm-corrects them over the section's claim checks (the family): a check holds only if its
Holm-adjusted p-value is below :data:`ALPHA` as well.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from icldistill.artifacts.store import Checkpoints
from icldistill.core.results import Result
from icldistill.core.stats import holm, paired_bootstrap_ci, sign_flip_test
from icldistill.core.validation import InputError
from icldistill.lab.experiments._common import Check

__all__ = [
    "ALPHA",
    "DEFAULT_TASKS",
    "PHENOMENA",
    "ControlComparison",
    "LabelPosition",
    "ModelUnderTest",
    "PairedControl",
    "Parts",
    "Statistic",
    "TaskItems",
    "balanced_indices",
    "check_one_entry_per_layer",
    "compare_paired_with_controls",
    "compare_with_controls",
    "controlled_check",
    "finite_mean",
    "holm_checks",
    "label_position",
    "load_task",
    "model_fingerprint",
    "models_under_test",
    "predict",
    "random_twin",
    "resolve_models",
    "resolve_tasks",
    "sign_flip_floor",
    "sign_flip_p",
    "sign_flip_text",
    "statistic",
    "task_fingerprint",
    "task_items",
    "task_scorer",
    "twin_loader",
]

T = TypeVar("T")

#: Level of every test of the phenomena sections (fixed in advance): a claim check holds only if
#: its Holm-adjusted p-value over the section's claim checks is below it (:func:`holm_checks`).
ALPHA = 0.05

#: Section keys of the phenomena group, in report order.
PHENOMENA = ("adaptation", "ordering", "interference", "icl-vs-finetuning")


# ============================================================================ models
@dataclass(frozen=True)
class ModelUnderTest:
    """A model a phenomenon is measured on.

    Attributes
    ----------
    role : str
        ``"trained"`` or ``"control"``.
    name : str
        Display name (``"smollm2-135m"``, ``"smollm2-135m random-init #1"``).
    loaded : LoadedModel-like
        ``.model`` (eval mode) and ``.tokenizer``.
    seed : int or None
        Initialisation seed of a control (``None`` for the trained model).
    """

    role: str
    name: str
    loaded: Any
    seed: int | None = None

    @property
    def is_control(self) -> bool:
        return self.role == "control"


def random_twin(loaded: Any, seed: int) -> Any:
    """An architecture-identical model with randomly initialised weights.

    The twin is built from the trained model's config with ``transformers``'
    ``AutoModelForCausalLM.from_config`` under ``torch.manual_seed(seed)`` (the architecture's
    own initialisation), in the trained model's dtype and device, in eval mode, with the same
    tokenizer and the same attention implementation. A half-precision model whose logits are
    computed in float32 (:func:`icldistill.models.float32_head`) gets a twin built as its
    architecture is (an output head tied to the input embedding where the config tied them
    before the float32 copy untied it) and then given a float32 head too.

    Parameters
    ----------
    loaded : LoadedModel-like
        ``.model`` and ``.tokenizer`` (and optionally ``.name``, ``.path``).
    seed : int
        Initialisation seed.

    Returns
    -------
    LoadedModel-like
        A copy of ``loaded`` (same class when it is a dataclass) with the new model.
    """
    from transformers import AutoModelForCausalLM

    from icldistill.models.registry import float32_head, float32_head_untied

    model = loaded.model
    cfg = copy.deepcopy(model.config)
    if float32_head_untied(model):   # the architecture ties them; the float32 copy does not
        cfg.tie_word_embeddings = True
    attn = getattr(cfg, "_attn_implementation", None) or "eager"
    param = next(model.parameters())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    float32_logits = (param.dtype in (torch.bfloat16, torch.float16)
                      and getattr(head, "weight", param).dtype == torch.float32)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        twin = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn,
                                                dtype=param.dtype)
    finally:
        torch.random.set_rng_state(state)
    twin = twin.to(param.device).eval()
    if float32_logits:
        float32_head(twin)
    name = f"{getattr(loaded, 'name', 'model')} random-init #{seed}"
    try:
        import dataclasses

        if dataclasses.is_dataclass(loaded):
            return dataclasses.replace(loaded, model=twin, name=name, path=None)
    except TypeError:  # pragma: no cover - frozen dataclasses without those fields
        pass
    out = copy.copy(loaded)
    out.model = twin
    if hasattr(out, "name"):
        out.name = name
    return out


def twin_loader(seed: int, *, progress: bool = False, device: Any = "cpu"
                ) -> Callable[..., Any]:
    """A model loader for :class:`icldistill.evaluation.Harness` (``model_loader=``) that
    returns the random-init twin of each model instead of the model.

    ``loader(name)`` / ``loader(name, dtype=torch.bfloat16)`` loads the model as
    :func:`icldistill.models.load_model` does (on ``device``) and replaces it by
    :func:`random_twin` with seed ``seed``; under a half precision the twin's output head is
    kept in float32 (:func:`icldistill.models.float32_head`), as for the trained model, and
    tied where the architecture ties it (:func:`random_twin`).

    Parameters
    ----------
    seed : int
        Initialisation seed of the twins (>= 1; seed 0 is left to nothing, so a control is
        never mistaken for "the default").
    progress : bool
        Loading progress on stderr.
    device : str or torch.device
        Where the model (and so its twin) is put.

    Returns
    -------
    callable
        ``(name, dtype=torch.float32) -> LoadedModel``, with ``weights`` =
        ``"random-init seed SEED"`` (what the harness records in a results folder's
        ``weights.json``, so that a trained model's folder and its twin's are never mixed).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 1:
        raise InputError(f"control seed must be an integer >= 1, got {seed!r}")

    def load(name: str, dtype: torch.dtype = torch.float32) -> Any:
        from icldistill.models.registry import load_model

        # under a half precision load_model keeps the head in float32, and so does the twin
        return random_twin(load_model(name, dtype=dtype, progress=progress, device=device),
                           seed)

    load.weights = f"random-init seed {seed}"  # type: ignore[attr-defined]
    return load


def models_under_test(model: str | Any, *, n_controls: int = 1, seed: int = 0,
                      dtype: torch.dtype = torch.float32, progress: bool = False
                      ) -> list[ModelUnderTest]:
    """The trained model (a registry key or an already loaded model) and ``n_controls`` random
    twins (seeds ``seed + 1 .. seed + n_controls``)."""
    if isinstance(n_controls, bool) or not isinstance(n_controls, int) or n_controls < 1:
        raise InputError(f"n_controls must be a positive integer, got {n_controls!r}")
    if isinstance(model, str):
        from icldistill.models import load_model

        loaded = load_model(model, dtype=dtype, progress=progress)
    else:
        loaded = model
    name = str(getattr(loaded, "name", model))
    out = [ModelUnderTest("trained", name, loaded)]
    for i in range(1, n_controls + 1):
        twin = random_twin(loaded, seed + i)
        out.append(ModelUnderTest("control", f"{name} random-init #{seed + i}", twin, seed + i))
    return out


def resolve_models(models: Sequence[str | Any], *,
                   under_test: Sequence[Sequence[ModelUnderTest]] | None = None,
                   n_controls: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32,
                   progress: bool = False) -> list[list[ModelUnderTest]]:
    """One group per model: ``[trained, control #seed+1, ...]`` (:func:`models_under_test`).

    ``under_test`` (groups built by the caller, e.g. tiny models in tests, or shared between
    sections by ``reproduce``) is returned as it is instead."""
    if under_test is not None:
        groups = [list(g) for g in under_test]
        for g in groups:
            if not g or g[0].role != "trained" or not any(m.is_control for m in g):
                raise InputError("every model group needs the trained model first and at least "
                                 "one random-init control")
        return groups
    return [models_under_test(m, n_controls=n_controls, seed=seed, dtype=dtype,
                              progress=progress) for m in models]


#: Default tasks of the phenomena sections: binary sentiment (short inputs), subjectivity,
#: and 8-way news topic (longer inputs).
DEFAULT_TASKS = ("amazon", "rt-subjectivity", "r8")


# ============================================================================ data
@dataclass(frozen=True)
class TaskItems:
    """A registry task ready for few-shot prompts.

    Attributes
    ----------
    name : str
    pool_texts, test_texts : tuple of str
    pool_labels, test_labels : ndarray of str
    label_names : tuple of str
    format : TaskFormat
        The dataset's prompt format (instruction, template, label words).
    """

    name: str
    pool_texts: tuple[str, ...]
    pool_labels: np.ndarray
    test_texts: tuple[str, ...]
    test_labels: np.ndarray
    label_names: tuple[str, ...]
    format: Any

    def demos(self, idx: Sequence[int]) -> list[tuple[str, str]]:
        """``(input, label)`` pairs of pool items ``idx``, in that order."""
        return [(self.pool_texts[int(i)], str(self.pool_labels[int(i)])) for i in idx]


def load_task(name: str, *, n_test: int, seed: int = 0, pool_size: int | None = 2000,
              progress: bool = False) -> TaskItems:
    """Registry task ``name``: its pool (label-stratified cap ``pool_size``) and ``n_test``
    test items (see :func:`task_items`)."""
    from icldistill.evaluation.harness import Task

    task = Task.from_registry(name, pool_size=pool_size, seed=seed, progress=progress)
    return task_items(task.split, n_test=n_test, seed=seed, name=name)


def task_items(split: Any, *, n_test: int, seed: int = 0, name: str | None = None) -> TaskItems:
    """A :class:`~icldistill.data.DatasetSplit` as :class:`TaskItems`: the whole pool and
    ``n_test`` test items drawn without replacement, labels as balanced as the test part allows
    (seeded; kept in test order)."""
    pool, test = split.train, split.test
    rng = np.random.default_rng(seed)
    if isinstance(n_test, bool) or int(n_test) != n_test or n_test < 1:
        raise InputError(f"n_test must be a positive integer, got {n_test!r}")
    n = min(int(n_test), len(test.texts))
    idx = np.sort(balanced_indices(np.asarray(test.labels), n, rng))
    return TaskItems(name=name or pool.name, pool_texts=tuple(pool.texts),
                     pool_labels=np.asarray(pool.labels),
                     test_texts=tuple(test.texts[int(i)] for i in idx),
                     test_labels=np.asarray(test.labels)[idx],
                     label_names=tuple(pool.label_names), format=pool.format)


def resolve_tasks(tasks: Sequence[str | TaskItems], *, n_test: int, seed: int = 0,
                  progress: bool = False) -> list[TaskItems]:
    """Registry names are loaded with :func:`load_task`; :class:`TaskItems` pass through."""
    out = []
    for t in tasks:
        out.append(t if isinstance(t, TaskItems) else load_task(str(t), n_test=n_test, seed=seed,
                                                               progress=progress))
    if not out:
        raise InputError("at least one task is needed")
    return out


def balanced_indices(labels: Sequence[Any], k: int, rng: np.random.Generator,
                     exclude: Sequence[int] = ()) -> np.ndarray:
    """``k`` distinct indices with labels as balanced as the data allow.

    Labels take turns in a random order (each label's items shuffled); a label that runs out
    drops out. The result is in selection order (shuffle it for a random prompt order).

    Parameters
    ----------
    labels : sequence, length ``n``
    k : int
        ``0 <= k <= n - len(exclude)``.
    rng : numpy Generator
    exclude : sequence of int
        Indices never chosen.
    """
    labels = np.asarray(labels)
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise InputError(f"k must be a non-negative integer, got {k!r}")
    banned = set(int(i) for i in exclude)
    avail = [i for i in range(len(labels)) if i not in banned]
    if k > len(avail):
        raise InputError(f"asked for {k} items but only {len(avail)} are available")
    names = list(dict.fromkeys(labels[avail].tolist()))
    order = rng.permutation(len(names))
    queues = []
    for j in order:
        members = [i for i in avail if labels[i] == names[j]]
        queues.append(list(rng.permutation(members)))
    out: list[int] = []
    while len(out) < k:
        for q in queues:
            if q and len(out) < k:
                out.append(int(q.pop()))
    return np.asarray(out, dtype=np.int64)


# ============================================================================ scoring
def task_scorer(loaded: Any, task: TaskItems, *, demo_labels: str = "names") -> Any:
    """The :class:`~icldistill.evaluation.scoring.FewShotScorer` of ``task``'s format.

    Its labels are ``task.label_names`` (in that order), verbalised with the task's label
    words, written with its template and instruction; every phenomenon scores with it.

    Parameters
    ----------
    loaded : LoadedModel-like
        ``.model`` and ``.tokenizer``.
    task : TaskItems
    demo_labels : ``"names"`` or ``"shown"``
        How demonstration labels are given (see the scorer): label names, or words written as
        shown (another task's words, wrong labels).
    """
    from icldistill.evaluation.scoring import FewShotScorer

    fmt = task.format
    return FewShotScorer(loaded.model, loaded.tokenizer,
                         {lab: fmt.label_words[lab] for lab in task.label_names},
                         template=fmt.template, instruction=fmt.instruction,
                         demo_labels=demo_labels)  # type: ignore[arg-type]


def predict(loaded: Any, task: TaskItems, queries: Sequence[str],
            demos: Sequence[tuple[str, str]] | None = None, *,
            per_query: Sequence[Sequence[tuple[str, str]]] | None = None,
            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels ``[n]`` and label log-probabilities ``[n, C]`` (columns in
    ``task.label_names`` order) after few-shot prompts in the task's format.

    ``demos`` is one demonstration set for every query (``[]`` or ``None``: zero-shot);
    ``per_query`` gives each query its own set.
    """
    scorer = task_scorer(loaded, task)
    if per_query is not None:
        res = scorer.score(list(queries), per_query=[list(d) for d in per_query],
                           progress=progress)
    else:
        res = scorer.score(list(queries), list(demos or []), progress=progress)
    return np.asarray(res.predictions, dtype=object), np.asarray(res.logprobs)


# ============================================================================ distillation
@dataclass(frozen=True)
class LabelPosition(Result):
    """Distillation quantities at a prompt's last token (where the label is predicted), per
    attention entry ``L`` (mean over the heads with kernel form; NaN where no head has it).

    Attributes
    ----------
    demo_mass : ndarray ``[L]``
        Attention probability mass on the demonstrations.
    demo_share : ndarray ``[L]``
        ``||c_D|| / sum_S ||c_S||``.
    eta : ndarray ``[L]``
        ``eta* = N / (2 D')``.
    log_normalizer : ndarray ``[L]``
        ``log D'`` (so ``1/D'``, the effective learning rate, is ``exp(-log D')``).
    log_w0_norm : ndarray ``[L]``
        ``log ||W_0||_HS`` (exact dual form; ``-inf`` without demonstrations).
    heads : ndarray ``[L, H, 4]``
        Per head: demo mass, demo share, eta*, log ||W_0|| (NaN where no kernel form).
    n_tokens : int
    """

    demo_mass: np.ndarray
    demo_share: np.ndarray
    eta: np.ndarray
    log_normalizer: np.ndarray
    log_w0_norm: np.ndarray
    heads: np.ndarray
    n_tokens: int


def check_one_entry_per_layer(res: Any, model: Any) -> None:
    """Refuse a trace whose entries are not the model's layers one to one.

    The sections read the ``L`` axis of a :class:`~icldistill.models.tracing.TraceResult` as
    layers; for a model that calls attention twice in a layer (DiffLlama) or has layers without
    softmax attention (hybrids) that reading would be silently wrong, so it raises
    :class:`~icldistill.InputError` naming the model instead."""
    idx = getattr(res, "layer_index", None)
    untraced = tuple(getattr(res, "untraced_layers", ()) or ())
    n = int(res.eta.shape[0])
    if untraced or (idx is not None and not np.array_equal(np.asarray(idx), np.arange(n))):
        name = type(model).__name__
        layers = sorted(set(np.asarray(idx).tolist())) if idx is not None else "?"
        extra = f" (layers without softmax attention: {list(untraced)})" if untraced else ""
        raise InputError(f"{name}: its trace has {n} attention calls over layers {layers}"
                         f"{extra}; these sections read one trace entry per layer and support "
                         "only models with one softmax attention call in every layer")


def label_position(loaded: Any, prompt: Any, *, w0: bool = True) -> LabelPosition:
    """Trace ``prompt`` (a :class:`~icldistill.data.prompts.Prompt`) at its last token through every
    head of ``loaded`` and average the distillation quantities over the kernel-form heads."""
    from icldistill.models.tracing import trace

    demos = len(getattr(prompt, "demonstrations", ()) or ())
    with torch.no_grad():
        res = trace(loaded.model, loaded.tokenizer, prompt, positions="last",
                    keep_w0=bool(w0 and demos))
    check_one_entry_per_layer(res, loaded.model)
    L, H = res.has_kernel_form.shape
    form = res.has_kernel_form.numpy().astype(bool)
    mass = res.attention_mass["demos"][..., -1].double().numpy()
    share = res.demo_share[..., -1].double().numpy()
    eta = res.eta[..., -1].double().numpy()
    logd = res.log_normalizer[..., -1].double().numpy()
    lw = np.full((L, H), -math.inf)
    if w0 and demos:
        for layer in range(L):
            for head in range(H):
                if form[layer, head]:
                    lw[layer, head] = res.w0(layer, head, -1).log_hs_norm()
    heads = np.stack([mass, share, eta, lw], axis=-1)
    heads = np.where(form[..., None], heads, np.nan)

    def mean(a: np.ndarray) -> np.ndarray:
        a = np.where(form, a, np.nan)
        with np.errstate(all="ignore"):
            cnt = form.sum(1)
            fin = np.where(np.isfinite(a), a, 0.0)
            out = fin.sum(1) / np.maximum(cnt, 1)
            if np.isneginf(a).any():          # log-norms of -inf (no demonstrations)
                out = np.where(np.isneginf(a).all(1) & (cnt > 0), -np.inf, out)
        return np.where(cnt > 0, out, np.nan)

    return LabelPosition(demo_mass=mean(mass), demo_share=mean(share), eta=mean(eta),
                         log_normalizer=mean(logd), log_w0_norm=mean(lw), heads=heads,
                         n_tokens=len(res.tokens))


# ============================================================================ controls
@dataclass(frozen=True)
class Statistic:
    """A statistic of one model: its value and 95% bootstrap interval over items.

    Attributes
    ----------
    model : str
    role : str
        ``"trained"`` or ``"control"``.
    value, low, high : float
    n : int
        Items it is averaged over.
    """

    model: str
    role: str
    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "role": self.role, "value": self.value,
                "low": self.low, "high": self.high, "n": self.n}


def statistic(values: Any, model: ModelUnderTest | str = "", *, role: str | None = None,
              seed: int = 0, n_boot: int = 2000) -> Statistic:
    """Mean of per-item ``values`` with a 95% bootstrap interval (NaNs dropped; a single item
    or a constant gives a zero-width interval)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    name = model.name if isinstance(model, ModelUnderTest) else str(model)
    r = role or (model.role if isinstance(model, ModelUnderTest) else "trained")
    if a.size == 0:
        return Statistic(name, r, math.nan, math.nan, math.nan, 0)
    if a.size == 1 or np.all(a == a[0]):
        v = float(a.mean())
        return Statistic(name, r, v, v, v, int(a.size))
    ci = paired_bootstrap_ci(a, n_boot=n_boot, seed=seed)
    return Statistic(name, r, float(ci.value), float(ci.low), float(ci.high), int(a.size))


@dataclass(frozen=True)
class PairedControl:
    """The trained model minus one control on the same units.

    Attributes
    ----------
    control : str
        The control's name.
    diff : float
        Mean over the units of trained minus control.
    p : float
        Two-sided exact sign-flip p-value of ``diff = 0`` (:func:`sign_flip_p`).
    floor : float
        The smallest p the design's units allow, whatever their values
        (:func:`sign_flip_floor` over all ``units``: a unit the data left undefined, e.g. a
        twin whose accuracy never rises, could have been measured).
    n : int
        Units with both values finite.
    units : int
        The design's units (finite or not).
    """

    control: str
    diff: float
    p: float
    floor: float
    n: int
    units: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"control": self.control, "diff": self.diff, "p": self.p, "floor": self.floor,
                "n": self.n, "units": self.units}


@dataclass(frozen=True)
class ControlComparison:
    """A statistic on the trained model against its random-initialised controls.

    Attributes
    ----------
    name : str
        What is measured.
    trained : Statistic
    controls : tuple of Statistic
    low, high : float
        The control spread: union of the controls' intervals.
    outside : bool
        Without ``paired``: the trained value lies outside ``[low, high]`` (never for a
        statistic of fewer than two items, on either side: one value has no spread). With
        ``paired``: the trained model differs from **every** control, all in one direction,
        each with a paired p below :data:`ALPHA` (:func:`compare_paired_with_controls`).
    paired : tuple of PairedControl
        The paired comparisons (one per control) when trained and controls were measured on
        the same units; empty for the interval rule.
    """

    name: str
    trained: Statistic
    controls: tuple[Statistic, ...]
    low: float
    high: float
    outside: bool
    paired: tuple[PairedControl, ...] = ()

    def describe(self, fmt: str = ".3g") -> str:
        t = self.trained
        text = (f"{self.name}: trained {t.value:{fmt}} [{t.low:{fmt}}, {t.high:{fmt}}], "
                f"random-init control spread [{self.low:{fmt}}, {self.high:{fmt}}] "
                f"({len(self.controls)} control{'s' if len(self.controls) != 1 else ''})")
        if self.paired:
            text += "; paired on the same units, trained - control " + ", ".join(
                f"{c.diff:+{fmt}} (sign-flip p {c.p:.3g} over {c.n}, no p below "
                f"{c.floor:.3g})" for c in self.paired)
        return text + f" -> {self.verdict}"

    @property
    def verdict(self) -> str:
        """``"outside"``, ``"INSIDE"`` or, for a statistic of a single item, ``"one item: no
        spread to compare"`` (the interval rule); ``"differs (paired)"`` or ``"NOT shown to
        differ (paired)"`` (the paired rule)."""
        if self.paired:
            return "differs (paired)" if self.outside else "NOT shown to differ (paired)"
        if self.trained.n < 2 or any(c.n < 2 for c in self.controls):
            return "one item: no spread to compare"
        return "outside" if self.outside else "INSIDE"

    def wrong_side(self, sign: float) -> bool:
        """The trained value differs from the controls (:attr:`outside`), but on the side
        opposite to a claim of sign ``sign`` (``-1``: a claimed fall, e.g. one shallower than
        every control's; ``+1``: a claimed rise)."""
        if self.paired:
            return bool(self.outside and self.paired[0].diff * sign < 0)
        v = self.trained.value
        if not (self.outside and np.isfinite(v)):
            return False
        return bool(v > self.high) if sign < 0 else bool(v < self.low)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "trained": self.trained.to_dict(),
               "controls": [c.to_dict() for c in self.controls], "low": self.low,
               "high": self.high, "outside": self.outside}
        if self.paired:
            out["paired"] = [c.to_dict() for c in self.paired]
        return out


def compare_with_controls(name: str, trained: Statistic | Any,
                          controls: Sequence[Statistic | Any], *, seed: int = 0
                          ) -> ControlComparison:
    """Compare a trained-model statistic with the control spread (see the module docstring).

    ``trained`` and each control are a :class:`Statistic` or per-item values (then
    :func:`statistic` summarises them). With no finite control value the comparison is not
    outside (nothing to compare with)."""
    t = trained if isinstance(trained, Statistic) else statistic(trained, "trained", seed=seed)
    cs = tuple(c if isinstance(c, Statistic) else statistic(c, "control", role="control",
                                                            seed=seed) for c in controls)
    if not cs:
        raise InputError(f"{name}: at least one control is needed")
    lows = [c.low for c in cs if np.isfinite(c.low)]
    highs = [c.high for c in cs if np.isfinite(c.high)]
    low = min(lows) if lows else math.nan
    high = max(highs) if highs else math.nan
    # a statistic of a single item has no spread to compare with: never "outside"
    enough = t.n >= 2 and all(c.n >= 2 for c in cs)
    outside = bool(enough and np.isfinite(t.value) and lows and highs
                   and (t.value < low or t.value > high))
    return ControlComparison(name, t, cs, float(low), float(high), outside)


def compare_paired_with_controls(name: str, trained: Any, controls: Sequence[Any],
                                 members: Sequence[ModelUnderTest | str], *, seed: int = 0
                                 ) -> ControlComparison:
    """Compare the trained model with its controls **paired on the same units** (the
    demonstration sets or tasks every model was measured on).

    For every control the per-unit difference trained - control gets the two-sided exact
    sign-flip test (:func:`sign_flip_p`); the trained model differs from the controls
    (:attr:`ControlComparison.outside`) when it differs from every one of them in the same
    direction with ``p <`` :data:`ALPHA`. Unlike the interval rule this accounts for the
    pairing and for the uncertainty of both sides, and a control whose values are all equal
    (a zero-width interval) is no easier to beat. With ``n`` units no p is below
    ``2 / 2**n`` (:func:`sign_flip_floor`): 6 units are the fewest that can show a
    difference. The intervals (:func:`statistic`) are kept for display.

    Parameters
    ----------
    name : str
    trained : array-like ``[n]``
        Per-unit values of the trained model.
    controls : sequence of array-like ``[n]``
        The same units' values of each control.
    members : sequence of ModelUnderTest or str
        The trained model, then the controls (names for the statistics).
    seed : int
        Seeds the bootstrap intervals.

    Raises
    ------
    InputError
        No control, a member count that does not match, or values of another shape.
    """
    t = np.asarray(trained, dtype=np.float64).ravel()
    cs = [np.asarray(c, dtype=np.float64).ravel() for c in controls]
    if not cs:
        raise InputError(f"{name}: at least one control is needed")
    if len(members) != len(cs) + 1:
        raise InputError(f"{name}: {len(members)} members for 1 trained model and {len(cs)} "
                         "controls")
    if any(c.shape != t.shape for c in cs):
        raise InputError(f"{name}: paired values need the same units, got shapes "
                         f"{t.shape} and {[c.shape for c in cs]}")
    base = compare_with_controls(
        name, statistic(t, members[0], seed=seed),
        [statistic(c, m, role="control", seed=seed) for c, m in zip(cs, members[1:],
                                                                      strict=True)],
        seed=seed)
    paired = []
    for c, m in zip(cs, members[1:], strict=True):
        d = t - c
        d = d[np.isfinite(d)]
        paired.append(PairedControl(m.name if isinstance(m, ModelUnderTest) else str(m),
                                    float(d.mean()) if d.size else math.nan, sign_flip_p(d),
                                    sign_flip_floor(np.zeros(t.size)), int(d.size),
                                    int(t.size)))
    signs = {np.sign(c.diff) for c in paired}
    differs = bool(all(c.p < ALPHA for c in paired) and len(signs) == 1 and 0 not in signs)
    return dataclasses.replace(base, outside=differs, paired=tuple(paired))


#: Why a directional claim fails although the trained value is outside the controls' spread.
WRONG_SIDE = ("the trained value differs from the random-init control(s) on the side opposite "
              "to the claim: the random-init control shows the property more strongly, so it "
              "is not credited to training")


def controlled_check(claim: str, holds: bool, comparison: ControlComparison,
                     detail: str = "", *, sign: float) -> Check:
    """A :class:`Check` that passes only if ``holds`` (the claim on the trained model) and the
    trained value is outside the control spread **on the claim's side**.

    Under the paired rule the check is marked not testable
    (:attr:`~icldistill.lab.experiments._common.Check.testable` ``False``) when the units
    cannot give a paired p below :data:`ALPHA` against some control (:func:`sign_flip_floor`:
    fewer than 6 units in the design), testable otherwise; under the interval rule it is not
    assessed.

    ``sign`` is the claim's direction on the compared statistic: ``+1`` when the claim is that
    the trained model has more of it than an untrained one (a larger gap, a larger drop, a
    higher similarity), ``-1`` when less (a more negative correlation). A trained value beyond
    the controls on the other side means the random-init network shows the property more
    strongly; that is not credited to training and the check fails, saying so.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1 (the claim's direction), got {sign!r}")
    wrong = comparison.wrong_side(sign)
    ok = bool(holds) and comparison.outside and not wrong
    parts = [detail] if detail else []
    parts.append(comparison.describe())
    floors = [c for c in comparison.paired if not c.floor < ALPHA]
    if floors:
        # the paired rule needs p < ALPHA against every control: units that cannot give it
        # cannot credit training, whatever the data
        parts.append(f"not testable at this size: the design's {floors[0].units} paired "
                     f"units against {floors[0].control} allow no p below "
                     f"{floors[0].floor:.3g} (needs < {ALPHA:g})")
    if wrong:
        parts.append(WRONG_SIDE)
    elif holds and not comparison.outside:
        parts.append("the claim holds on the trained model but is not shown to differ from "
                     "the random-init control(s) on the same units, so it does not show what "
                     "training taught" if comparison.paired else
                     "the claim holds on the trained model but not beyond the random-init "
                     "control's spread, so it does not show what training taught")
    # testable by the control rule: False when the paired units cannot pass it, True when
    # they can (a section's Holm correction may still find the claim's own test cannot),
    # None under the interval rule (no floor known)
    testable = (not floors) if comparison.paired else None
    return Check(claim, ok, "; ".join(parts), testable=testable)


def sign_flip_p(values: Any) -> float:
    """Two-sided paired sign-flip p-value (:func:`icldistill.core.stats.sign_flip_test`) of
    ``mean(values) = 0`` over the finite per-item values (the items :func:`statistic`
    resamples); 1.0 without any finite value."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    return float(sign_flip_test(a)) if a.size else 1.0


def finite_mean(values: Any) -> float:
    """Mean of the finite entries of ``values`` (any shape); NaN without any."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def sign_flip_floor(values: Any) -> float:
    """The smallest two-sided p-value :func:`sign_flip_p` can give on these units **whatever
    their values**: ``2 / 2**n`` over the ``n`` finite units (all non-zero and of one sign),
    1.0 without any. It depends on the design, not on the data: units measured as 0 (no
    difference) count, since they could have differed; they only make the p actually reached
    larger. With 6 units it is 0.031, with 3 it is 0.25: below :data:`ALPHA` divided by the
    size of a Holm family, a claim cannot pass however strong its units."""
    a = np.asarray(values, dtype=np.float64).ravel()
    n = int(np.isfinite(a).sum())
    return min(1.0, 2.0 / 2.0 ** n) if n else 1.0


def sign_flip_text(values: Any, unit: str) -> str:
    """The test description of :func:`sign_flip_p` over ``values`` for a check's detail:
    the number of units and the smallest p they allow (:func:`sign_flip_floor`)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    n = int(np.isfinite(a).sum())
    return (f"paired sign-flip test (two-sided) of mean = 0 over the {n} {unit} (no p below "
            f"{sign_flip_floor(a):.3g} with these units)")


def holm_checks(checks: Sequence[Check], pvalues: Sequence[float], tests: Sequence[str], *,
                floors: Sequence[float] | None = None, alpha: float = ALPHA) -> list[Check]:
    """The claim checks of one section, each also requiring its Holm-adjusted p-value below
    ``alpha``.

    ``pvalues[i]`` is the raw p-value of ``checks[i]``'s claim on the trained model (NaN:
    untestable, counted as 1) and ``tests[i]`` names the test; the Holm correction
    (:func:`icldistill.core.stats.holm`) runs over all of them (the family is the section's
    claims). Each check keeps its other conditions; its detail gains the raw and adjusted
    p-values, and a check whose claim held but whose adjusted p-value is not below ``alpha``
    says so.

    ``floors[i]``, when given, is the smallest raw p-value ``tests[i]`` can give on its units
    whatever the data (:func:`sign_flip_floor`; NaN or None where not known, taken as 0). Holm's
    adjusted p-values only grow with any raw p-value, so the adjusted p-values of the floors
    are the smallest each check could reach: a check whose one is not below ``alpha`` is
    marked not testable (:attr:`~icldistill.lab.experiments._common.Check.testable`
    ``False``), the others testable unless already marked not (by :func:`controlled_check`);
    a check whose own floor is not known keeps what :func:`controlled_check` said, ``True``
    becoming ``None`` (not assessed).
    """
    if not len(checks) == len(pvalues) == len(tests):
        raise ValueError("one p-value and one test name per check are needed")
    if floors is not None and len(floors) != len(checks):
        raise ValueError(f"one floor per check is needed, got {len(floors)} for "
                         f"{len(checks)} checks")
    raw = np.array([float(p) if np.isfinite(p) else 1.0 for p in pvalues], dtype=np.float64)
    adj = holm(raw) if raw.size else raw
    best: np.ndarray | None = None
    if floors is not None:
        known = [x is not None and np.isfinite(x) for x in floors]
        f = np.array([float(x) if k else 0.0 for x, k in zip(floors, known, strict=True)],
                     dtype=np.float64)
        best = holm(f) if f.size else f
    m = len(checks)
    out = []
    for i, (c, p, q, test) in enumerate(zip(checks, raw, adj, tests, strict=True)):
        ok = bool(c.holds and q < alpha)
        text = (f"{test}: p = {p:.3g}, Holm-adjusted over the section's {m} claim check"
                f"{'s' if m != 1 else ''} p = {q:.3g} (needs < {alpha:g})")
        if c.holds and not ok:
            text += ": not significant after the multiplicity correction"
        testable = c.testable
        if best is not None:
            if not known[i]:                   # its own floor unknown: so is its testability
                testable = False if c.testable is False else None
            elif best[i] < alpha:
                testable = c.testable is not False
            else:
                testable = False
                text += (f"; not testable at this size: at the smallest p its units allow "
                         f"({float(f[i]):.3g}, every other check at its own) the Holm-adjusted "
                         f"p is {best[i]:.3g}")
        if ok and testable is False:
            raise RuntimeError(f"check {c.claim!r} passed with a Holm-adjusted p of {q:.3g} "
                               "although its floors say it cannot: a floor is wrong")
        out.append(dataclasses.replace(c, holds=ok, detail=f"{c.detail}; {text}",
                                       testable=testable))
    return out


# ============================================================================ resumable parts
def task_fingerprint(task: TaskItems) -> str:
    """A hash of everything a task's prompts are made of: its name, pool and test items with
    their labels, label names and prompt format."""
    h = hashlib.sha256()
    for part in (task.name, list(task.pool_texts), [str(x) for x in task.pool_labels],
                 list(task.test_texts), [str(x) for x in task.test_labels],
                 list(task.label_names), repr(task.format)):
        h.update(json.dumps(part).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def model_fingerprint(model: ModelUnderTest) -> dict[str, Any]:
    """What identifies a model under test: its name, role and seed, its config and dtype, its
    tokenizer's class and size, and two float64 checksums of its weights (sum and norm, 12
    significant digits), so a different model or different weights never share a key."""
    net = model.loaded.model
    params = list(net.parameters())
    with torch.no_grad():
        total = sum(float(p.detach().sum(dtype=torch.float64)) for p in params)
        sq = sum(float(torch.linalg.vector_norm(p.detach(), dtype=torch.float64)) ** 2
                 for p in params)
    cfg = getattr(net, "config", None)
    cfg_text = cfg.to_json_string() if hasattr(cfg, "to_json_string") else repr(cfg)
    tok = getattr(model.loaded, "tokenizer", None)
    return {"name": model.name, "role": model.role, "seed": model.seed,
            "class": type(net).__name__,
            "dtype": str(params[0].dtype) if params else "",
            "config": hashlib.sha256(cfg_text.encode("utf-8")).hexdigest()[:16],
            "tokenizer": [type(tok).__name__, len(tok) if hasattr(tok, "__len__") else None],
            "sum": float(f"{total:.12g}"), "norm": float(f"{math.sqrt(sq):.12g}")}


@functools.cache
def _source_fingerprint() -> str:
    """A hash of the package's Python source: a checkpoint made by other code is not reused."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode("utf-8"))
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Parts:
    """The finished parts of one phenomena section (one model on one task), stored as they
    finish, so that a killed run resumes the section from its last finished part.

    A phenomena section on the full settings is one to two hours of one core and is stored
    (``reproduce``'s ``sections/<key>.json``) only when all of it is done; its parts are kept
    in ``folder`` meanwhile (:class:`~icldistill.artifacts.store.Checkpoints`). A part's key
    hashes the section's name and ``settings``, the package's source code, the model
    (:func:`model_fingerprint`) and the part's own arguments, so a part is reused only by the
    same computation. The parts draw no global random numbers (every part seeds its own), so a
    resumed section equals an uninterrupted one. A long part is made of steps (:meth:`step`,
    e.g. one demonstration order), also kept until the part is stored, so a killed run loses
    at most the step in flight.

    Parameters
    ----------
    folder : path or None
        Where the parts live; ``None`` stores nothing (every part is computed).
    section : str
        The section's key.
    settings : mapping
        JSON-able settings of the whole section (sizes, seed, :func:`task_fingerprint` of its
        tasks, ...).
    """

    def __init__(self, folder: str | Path | None, section: str,
                 settings: Mapping[str, Any]) -> None:
        self.store = None if folder is None else Checkpoints(folder)
        self.base = json.dumps({"section": section, "settings": settings,
                                "code": _source_fingerprint()}, sort_keys=True, default=str)
        self._models: dict[int, dict[str, Any]] = {}
        self._steps: dict[str, list[str]] = {}

    def _key(self, model: ModelUnderTest, part: Mapping[str, Any],
             step: Mapping[str, Any] | None = None) -> str:
        fp = self._models.get(id(model))
        if fp is None:
            fp = self._models[id(model)] = model_fingerprint(model)
        blob: dict[str, Any] = {"base": self.base, "model": fp, "part": dict(part)}
        if step is not None:
            blob["step"] = dict(step)
        text = json.dumps(blob, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def run(self, compute: Callable[[], T], *, model: ModelUnderTest, **part: Any) -> T:
        """``compute()``, or its stored value when this part of ``model`` finished earlier.
        Once the part is stored, its steps (:meth:`step`) are removed."""
        if self.store is None:
            return compute()
        key = self._key(model, part)
        value = self.store.run(key, compute)
        for step_key in self._steps.pop(key, []):
            self.store.discard(step_key)
        return value

    def step(self, compute: Callable[[], T], *, model: ModelUnderTest,
             part: Mapping[str, Any], **step: Any) -> T:
        """One resumable step inside the part ``part`` of ``model`` (e.g. one demonstration
        order of the ordering section: a part of qwen2.5-0.5b is over an hour of one core), so
        that a killed run loses at most the step in flight. A step's value must not depend on
        anything computed outside it (it may be read back in a later run)."""
        if self.store is None:
            return compute()
        key = self._key(model, part, step)
        self._steps.setdefault(self._key(model, part), []).append(key)
        return self.store.run(key, compute)

    @property
    def reused_seconds(self) -> float:
        """Compute time of the parts read back (0 without a folder)."""
        return 0.0 if self.store is None else self.store.reused_seconds
