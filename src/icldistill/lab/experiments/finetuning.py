"""ICL versus fine-tuning: the comparison of Dai et al. (2023), "Why Can GPT Learn In-Context?
Language Models Secretly Perform Gradient Descent as Meta-Optimizers" (ACL 2023 Findings), on our
models and on their random-initialised controls.

Per task, one label-balanced set of ``k`` demonstrations (seeded, shuffled into a random order)
and ``n_test`` test queries. Three ways of predicting a query's label, all scored with the task's
prompt format (:func:`icldistill.lab.experiments.phenomena.predict`):

* **ZSL** (zero-shot): the task instruction and the query, no demonstrations, original model.
* **ICL**: the same prompt with the ``k`` demonstrations before the query, original model.
* **FT** (fine-tuning): a float32 deep copy of the model trained on the same demonstrations,
  then the zero-shot prompt. Following Dai et al., only the attention **key and value
  projections** (every layer's ``k_proj`` and ``v_proj``, weights and biases where there are
  any) are trained; everything else is frozen. Plain SGD (no momentum, no weight decay), **one
  step per demonstration, batch size 1, in the prompt's order** (one epoch). The loss of a
  demonstration ``(x, y)`` is the cross-entropy, averaged over the tokens of ``" " + word(y)``,
  of its label word after the zero-shot prompt of ``x`` (same instruction and template, no
  demonstrations). The model stays in eval mode (no dropout), so training is deterministic.
  The learning rate is picked per task from :data:`LR_GRID` by the fine-tuned model's accuracy
  on the **demonstrations themselves** (training accuracy; never on test items): the rates are
  tried from the smallest up and the first with the highest training accuracy is kept (the
  gentlest update that fits the demonstrations as well as any; the search stops at a rate that
  fits them all). The random-initialised controls are fine-tuned with the learning rate chosen
  for their trained model (same steps, same demonstrations).

Quantities (Dai et al.'s definitions)
-------------------------------------
**Rec2FTP** (:func:`rec2ftp`): of the test items fine-tuning gets right and zero-shot gets wrong
(*FT corrections*), the fraction ICL gets right as well:
``|{FT ok, ZSL wrong} ∩ {ICL ok, ZSL wrong}| / |{FT ok, ZSL wrong}|`` (NaN when no item is
corrected; the count is always reported).

**SimAOU** (:func:`simaou`): the attention output ``AO_l`` of layer ``l`` is the output of the
layer's self-attention module (its ``o_proj`` output, heads merged, before the residual add and
before any post-attention norm), captured with a forward hook on ``layers[l].self_attn``
(:class:`AttentionCapture`) at the **last token of the prompt** (the token after which the label
is predicted; it is the same token, the query's last, in the zero-shot and the ICL prompt).
``Update_ICL = AO(ICL prompt) - AO(ZSL prompt)`` under the original model and
``Update_FT = AO_FT(ZSL prompt) - AO(ZSL prompt)`` (the reference ``AO(ZSL prompt)`` of the
fine-tuning update is taken on the float32 copy before training, identical to the original for a
float32 model). ``SimAOU_l`` is the mean over test items of ``cos(Update_ICL, Update_FT)``. The
**random-vector baseline** replaces ``Update_FT`` by a standard Gaussian vector (seeded, one per
item and layer); its cosines are ~0 with spread ~``1/sqrt(d)``. Random vectors are isotropic and
attention-output updates are not, so any two updates in the same model beat them: the claim's
null is the **random-label fine-tune**, the same fine-tuning (inputs, order, steps, learning
rate) with the demonstrations' labels shuffled among them (one seeded permutation: the label
counts, hence the label prior, stay the real set's), whose update keeps everything the
demonstrations' inputs, format and label balance give and loses their input-label mapping
(``random_label_cos``).

Checks (the control rule of :mod:`~icldistill.lab.experiments.phenomena`): every quantity is
measured
on the trained model and on its random-init twins on the same prompts.

1. *ICL and fine-tuning update attention outputs in similar directions*: SimAOU averaged over
   layers and over each task's items, one value per task (its items share the task's one
   demonstration set and one fine-tuning run, so the task is the unit: with 3 tasks no
   sign-flip p is below 0.25); the claim is that the trained model's mean lies above the
   random-label fine-tune's SimAOU (paired per task) and above the random-vector baseline's
   95% interval, and the check passes only if the trained
   model also differs from every control, paired per task (two-sided exact sign-flip test;
   3 tasks allow no p below 0.25), **above** it (a trained value below the controls' says the
   untrained network aligns the two updates more).
2. *ICL covers fine-tuning's corrections*: among the zero-shot errors pooled over tasks,
   ICL's rate of right answers on the items fine-tuning corrects (the pooled Rec2FTP) is
   compared with its rate on the zero-shot errors fine-tuning does **not** correct (the
   Rec2FTP expected if ICL's and fine-tuning's corrections were unrelated) by a one-sided
   Fisher exact test stratified by task (:func:`rec2ftp_test` per task, combined by
   :func:`~icldistill.lab.experiments._stats.fisher_exact_greater_stratified`: the tasks'
   rates differ, and one pooled table would mix them); the claim is that the first rate is
   higher, with ``p <`` :data:`~icldistill.lab.experiments.phenomena.ALPHA`. A Rec2FTP above
   50% alone says nothing when ICL is right as often on the errors fine-tuning leaves. The Rec2FTP
   (per-item indicator "ICL right" over the FT corrections) must also lie above the
   controls' spread; with fewer than :data:`MIN_CORRECTED` corrections the check is NO for
   want of items.

Each check's claim also gets a p-value (1: the paired sign-flip test of SimAOU minus the
random-label fine-tune's over tasks; 2: the Fisher test), Holm-corrected over the section's claim
checks (:func:`~icldistill.lab.experiments.phenomena.holm_checks`).

Per layer, the trained SimAOU is compared with the control spread (table and finding).

The attention outputs of a prompt are read from the label scorer's own forward pass
(:func:`predict_and_capture`), so ZSL, ICL and FT each cost one scoring pass.

Sizes: quick ``k`` = :data:`QUICK_K`, :data:`QUICK_N_TEST` test items per task; full
:data:`FULL_K` and :data:`FULL_N_TEST`. On smollm2-135m (one CPU thread) a quick run of the
three default tasks with one control measured 108 CPU-seconds (112 s wall), about half of it
fine-tuning and the learning-rate search, before the random-label fine-tune was added (it
adds about a fifth: the committed quick section took 80.5 s before, 99.1 s after); a full
run is estimated at ~10 CPU-minutes per smollm2-135m group (``n_test`` x 8, ``k`` x 2).

Dai et al.'s numbers (:data:`DAI_2023`) are shown beside ours. Their models are GPT 1.3B and
2.7B on six classification datasets with 32 demonstrations; ours are much smaller models with
``k`` = :data:`QUICK_K` / :data:`FULL_K` demonstrations, so the comparison is of order of
magnitude, not a replication.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.figures import new_figure, save_figure
from icldistill.artifacts.store import to_jsonable
from icldistill.core.results import Result
from icldistill.core.validation import InputError
from icldistill.data.prompts import Prompt
from icldistill.evaluation.scoring import (
    cache_argument,
    has_sliding_window,
    output_cache,
    prompt_token_ids,
)
from icldistill.lab.experiments import phenomena as ph
from icldistill.lab.experiments._common import Check, Section, Table
from icldistill.lab.experiments._stats import (
    fisher_exact_greater,
    fisher_exact_greater_stratified,
)

__all__ = [
    "DAI_2023",
    "FULL_K",
    "FULL_N_TEST",
    "LR_GRID",
    "MIN_CORRECTED",
    "QUICK_K",
    "QUICK_LR_GRID",
    "QUICK_N_TEST",
    "AttentionCapture",
    "Comparison",
    "FineTuneWorkspace",
    "FineTuned",
    "Rec2FTP",
    "Rec2FTPTest",
    "attention_modules",
    "attention_outputs",
    "finetune_kv",
    "icl_vs_finetuning",
    "kv_parameter_names",
    "predict_and_capture",
    "prompt_texts",
    "rec2ftp",
    "rec2ftp_test",
    "run",
    "simaou",
    "update_cosines",
]

#: Dai et al. (2023), averages over six classification datasets, 32 demonstrations, fine-tuning
#: of W_K and W_V only, one SGD step per demonstration in the demonstrations' order.
#: Provenance: the paper's tables as summarised in secondary sources available offline (the
#: paper PDF itself could not be consulted); Rec2FTP in %, SimAOU a cosine (random updates
#: ~0.00).
DAI_2023: dict[str, dict[str, float]] = {
    "GPT 1.3B": {"rec2ftp": 85.56, "simaou": 0.186, "simaou_random": 0.00},
    "GPT 2.7B": {"rec2ftp": 89.39, "simaou": 0.225, "simaou_random": 0.00},
}

#: Demonstrations per task (quick / full run).
QUICK_K, FULL_K = 8, 16
#: Test items per task (quick / full run).
QUICK_N_TEST, FULL_N_TEST = 12, 100
#: Learning rates of plain SGD tried per task (the smallest with the highest training accuracy on
#: the demonstrations is kept); the quick run leaves out 1e-4 (never chosen on smollm2-135m's
#: three default tasks, and a third of the quick run's time).
LR_GRID = (1e-4, 1e-3, 1e-2)
QUICK_LR_GRID = (1e-3, 1e-2)
#: Fewest FT corrections (pooled over tasks) a Rec2FTP check needs.
MIN_CORRECTED = 5


# ============================================================================ definitions
@dataclass(frozen=True)
class Rec2FTP(Result):
    """Recall of fine-tuning's corrections by ICL.

    Attributes
    ----------
    value : float
        ``recalled / corrected`` (NaN when ``corrected == 0``).
    recalled : int
        Items fine-tuning and ICL get right and zero-shot gets wrong.
    corrected : int
        Items fine-tuning gets right and zero-shot gets wrong.
    indicator : ndarray ``[corrected]`` (float64)
        1.0 where ICL is right too, per FT-corrected item (in item order).
    """

    value: float
    recalled: int
    corrected: int
    indicator: np.ndarray


def _outcomes(zsl_correct: Any, ft_correct: Any, icl_correct: Any
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three per-item correctness arrays ``[n]`` (zero-shot, fine-tuned, in-context),
    checked: boolean and of one length."""
    z = _bool_array(zsl_correct, "zsl_correct")
    f = _bool_array(ft_correct, "ft_correct")
    c = _bool_array(icl_correct, "icl_correct")
    if not z.shape == f.shape == c.shape:
        raise InputError(f"zsl_correct, ft_correct and icl_correct must have one length, got "
                         f"{z.shape[0]}, {f.shape[0]}, {c.shape[0]}")
    return z, f, c


def _bool_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise InputError(f"{name} must be a 1-d boolean array, got shape {a.shape}")
    if a.size and a.dtype != np.bool_:
        if not np.issubdtype(a.dtype, np.integer) or not np.isin(a, (0, 1)).all():
            raise InputError(f"{name} must be boolean (or 0/1), got dtype {a.dtype}")
    return a.astype(bool)


def rec2ftp(zsl_correct: Any, ft_correct: Any, icl_correct: Any) -> Rec2FTP:
    """Rec2FTP of Dai et al. (2023).

    ``|{FT right, ZSL wrong} ∩ {ICL right, ZSL wrong}| / |{FT right, ZSL wrong}|``.

    Parameters
    ----------
    zsl_correct, ft_correct, icl_correct : array-like of bool, shape ``[n]``
        Per test item: whether the zero-shot, fine-tuned and in-context prediction is right.

    Returns
    -------
    Rec2FTP
    """
    z, f, c = _outcomes(zsl_correct, ft_correct, icl_correct)
    corrected = f & ~z
    ind = c[corrected].astype(np.float64)
    n = int(corrected.sum())
    got = int(ind.sum())
    return Rec2FTP(got / n if n else math.nan, got, n, ind)


@dataclass(frozen=True)
class Rec2FTPTest(Result):
    """Is ICL right more often on fine-tuning's corrections than on the zero-shot errors
    fine-tuning leaves?

    Over the items zero-shot gets wrong: ``both`` (FT and ICL right), ``ft_only`` (FT right,
    ICL wrong), ``icl_only`` (FT wrong, ICL right) and ``neither``.

    Attributes
    ----------
    both, ft_only, icl_only, neither : int
    p : float
        One-sided Fisher exact p-value (:func:`~icldistill.lab.experiments._stats.
        fisher_exact_greater`) that ICL's rate on FT's corrections exceeds its rate on the
        zero-shot errors FT does not correct; over several tasks, the exact test stratified
        by task (:func:`~icldistill.lab.experiments._stats.fisher_exact_greater_stratified`),
        the counts being their sums.
    strata : int
        Tasks (or fine-tuning runs) the test is stratified by (1: one table).
    """

    both: int
    ft_only: int
    icl_only: int
    neither: int
    p: float
    strata: int = 1

    @property
    def corrected(self) -> int:
        """Zero-shot errors fine-tuning corrects."""
        return self.both + self.ft_only

    @property
    def uncorrected(self) -> int:
        """Zero-shot errors fine-tuning leaves."""
        return self.icl_only + self.neither

    @property
    def rate_corrected(self) -> float:
        """ICL's rate of right answers on FT's corrections (Rec2FTP)."""
        return self.both / self.corrected if self.corrected else math.nan

    @property
    def rate_uncorrected(self) -> float:
        """ICL's rate of right answers on the zero-shot errors FT leaves."""
        return self.icl_only / self.uncorrected if self.uncorrected else math.nan

    def describe(self) -> str:
        """The test, both rates with their counts, and the p-value."""
        return (f"ICL right on {_pct(self.rate_corrected)} ({self.both}/{self.corrected}) of "
                f"the zero-shot errors fine-tuning corrects (Rec2FTP) vs "
                f"{_pct(self.rate_uncorrected)} ({self.icl_only}/{self.uncorrected}) of those "
                f"it does not; one-sided Fisher exact test (ICL right more often on FT's "
                f"corrections"
                + (f"; stratified by task, {self.strata} tables, conditional on each task's "
                   "margins" if self.strata > 1 else "")
                + f") p = {self.p:.3g}")


def rec2ftp_test(zsl_correct: Any, ft_correct: Any, icl_correct: Any) -> Rec2FTPTest:
    """ICL's rate on fine-tuning's corrections against its rate on the zero-shot errors
    fine-tuning does not correct, with a one-sided Fisher exact test (:class:`Rec2FTPTest`).

    Rec2FTP alone (:func:`rec2ftp`) is not evidence that ICL and fine-tuning correct the same
    items: if ICL gets 55% of every zero-shot error right, it gets ~55% of fine-tuning's
    corrections right too. The association is shown only when the first rate exceeds the
    second.

    Parameters
    ----------
    zsl_correct, ft_correct, icl_correct : array-like of bool, shape ``[n]``

    Returns
    -------
    Rec2FTPTest
    """
    z, f, c = _outcomes(zsl_correct, ft_correct, icl_correct)
    w = ~z
    a, b = int(np.sum(w & f & c)), int(np.sum(w & f & ~c))
    d, e = int(np.sum(w & ~f & c)), int(np.sum(w & ~f & ~c))
    return Rec2FTPTest(a, b, d, e, fisher_exact_greater(a, b, d, e))


def _updates(x: Any, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.ndim != 3:
        raise InputError(f"{name} must have shape [items, layers, d], got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    return t.detach().to(torch.float64)


def update_cosines(icl_updates: Any, ft_updates: Any) -> np.ndarray:
    """Per item and layer ``cos(Update_ICL, Update_FT)``.

    Parameters
    ----------
    icl_updates, ft_updates : array-like ``[n, L, d]``
        Attention-output updates per test item and layer.

    Returns
    -------
    ndarray ``[n, L]`` (float64)
        Cosine similarities; NaN where either update is the zero vector.
    """
    a = _updates(icl_updates, "icl_updates")
    b = _updates(ft_updates, "ft_updates")
    if a.shape != b.shape:
        raise InputError(f"icl_updates and ft_updates must have one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    # scale each vector by its largest entry first (no under/overflow in the squares)
    sa = a.abs().amax(-1, keepdim=True)
    sb = b.abs().amax(-1, keepdim=True)
    a = a / torch.where(sa > 0, sa, 1.0)
    b = b / torch.where(sb > 0, sb, 1.0)
    na = a.norm(dim=-1)
    nb = b.norm(dim=-1)
    dot = (a * b).sum(-1)
    with torch.no_grad():
        cos = torch.where((na > 0) & (nb > 0), dot / (na * nb).clamp_min(1e-300),
                          torch.full_like(dot, math.nan))
    return cos.clamp(-1.0, 1.0).numpy()


def simaou(icl_updates: Any, ft_updates: Any) -> np.ndarray:
    """SimAOU of Dai et al. (2023): per layer, the mean over items of
    ``cos(Update_ICL, Update_FT)`` (:func:`update_cosines`; zero updates skipped).

    Parameters
    ----------
    icl_updates, ft_updates : array-like ``[n, L, d]``

    Returns
    -------
    ndarray ``[L]`` (float64; NaN at a layer without a defined cosine)
    """
    cos = update_cosines(icl_updates, ft_updates)
    ok = np.isfinite(cos)
    cnt = ok.sum(0)
    tot = np.where(ok, cos, 0.0).sum(0)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), math.nan)


# ============================================================================ model access
def _arch(model: Any) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "model_type", None) or type(model).__name__)


def _decoder(model: Any) -> Any:
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers"):
        get = getattr(model, "get_decoder", None)
        base = get() if callable(get) else None
    if base is None or not hasattr(base, "layers"):
        raise InputError(f"architecture {_arch(model)!r} is not supported: the ICL-vs-"
                         "fine-tuning comparison needs a decoder with `layers[i].self_attn` "
                         "(Llama, Qwen2, SmolLM, Gemma, Mistral)")
    return base


def attention_modules(model: Any) -> list[Any]:
    """The self-attention module of every decoder layer, ``[L]``.

    Only architectures whose attention has separate key and value projections (``k_proj``,
    ``v_proj``: Llama, Qwen2, SmolLM, Gemma, Mistral) are supported; fused projections (GPT-2's
    ``c_attn``, GPT-NeoX's ``query_key_value``, Phi-3's ``qkv_proj``) raise
    :class:`InputError` naming the architecture.
    """
    base = _decoder(model)
    mods = [getattr(layer, "self_attn", None) for layer in base.layers]
    for m in mods:
        if m is None or not all(isinstance(getattr(m, n, None), torch.nn.Linear)
                                for n in ("k_proj", "v_proj")):
            raise InputError(f"architecture {_arch(model)!r} is not supported: fine-tuning "
                             "W_K and W_V needs attention modules with separate k_proj and "
                             "v_proj (Llama, Qwen2, SmolLM, Gemma, Mistral)")
    return mods


def kv_parameter_names(model: Any) -> list[str]:
    """Names (as in ``model.named_parameters()``) of every layer's ``k_proj`` and ``v_proj``
    parameters: the ones :func:`finetune_kv` trains."""
    mods = attention_modules(model)
    ids = {}
    for m in mods:
        for proj in (m.k_proj, m.v_proj):
            for p in proj.parameters():
                ids[id(p)] = True
    return [n for n, p in model.named_parameters() if id(p) in ids]


class AttentionCapture:
    """Forward hooks on every layer's self-attention module that keep its output.

    ``with AttentionCapture(model) as cap: model(ids)`` leaves ``cap.outputs``, a list of ``L``
    tensors ``[B, T, d_model]``: the self-attention module's output (the ``o_proj`` output,
    before the residual add) of the last forward pass. Hooks only read; the model's outputs are
    unchanged. Set ``cap.active = False`` to skip a pass. The hooks are removed on exit.
    """

    def __init__(self, model: Any) -> None:
        self.modules = attention_modules(model)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.modules)
        self.active = True
        self._handles: list[Any] = []

    def _hook(self, i: int) -> Any:
        def hook(_mod: Any, _args: Any, out: Any) -> None:
            if self.active:
                t = out[0] if isinstance(out, tuple | list) else out
                self.outputs[i] = t.detach()
        return hook

    def __enter__(self) -> AttentionCapture:
        self._handles = [m.register_forward_hook(self._hook(i))
                         for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def prompt_texts(task: ph.TaskItems, demos: Sequence[tuple[str, str]], queries: Sequence[str]
                 ) -> list[str]:
    """The whole prompt text of each query after ``demos`` in ``task``'s format, as
    :func:`~icldistill.lab.experiments.phenomena.predict` writes it.

    Parameters
    ----------
    task : TaskItems
    demos : sequence of ``(input, label name)``
        One demonstration set for every query (empty: zero-shot).
    queries : sequence of str, length ``n``

    Returns
    -------
    list of ``n`` str
    """
    fmt = task.format
    shown = [(x, fmt.label_words[y]) for x, y in demos]
    return [Prompt(shown, q, fmt.instruction, fmt.template).render().text for q in queries]


def attention_outputs(loaded: Any, texts: Sequence[str], *, batch_size: int = 8) -> np.ndarray:
    """Attention outputs at the last token of each prompt, every layer.

    The prompts' longest common token prefix is run once and its key/value cache reused (not
    for sliding-window models); the rest is run in right-padded batches (causal attention: the
    padding after a prompt's last token does not change its outputs). Only the decoder runs
    (no output head).

    Parameters
    ----------
    loaded : LoadedModel-like
        ``.model`` (a supported architecture, see :func:`attention_modules`) and ``.tokenizer``.
    texts : sequence of str, length ``n``
        Whole prompt texts (special tokens are added as the scorer adds them).
    batch_size : int

    Returns
    -------
    ndarray ``[n, L, d_model]`` (float64)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    model = loaded.model
    mods = attention_modules(model)
    base = _decoder(model)
    d = int(model.config.get_text_config().hidden_size)
    ids = prompt_token_ids(loaded.tokenizer, texts)
    out = np.zeros((len(ids), len(mods), d), dtype=np.float64)
    if not ids:
        return out
    if min(len(i) for i in ids) == 0:
        raise InputError("a prompt tokenizes to no tokens")
    p = 0
    if not has_sliding_window(model):
        shortest = min(len(i) for i in ids)
        while p < shortest - 1 and all(i[p] == ids[0][p] for i in ids):
            p += 1
    pad = loaded.tokenizer.pad_token_id
    pad = int(pad if pad is not None else (loaded.tokenizer.eos_token_id or 0))
    device = next(model.parameters()).device
    cache_kw = cache_argument(base)
    with torch.no_grad(), AttentionCapture(model) as cap:
        cache = None
        if p > 0:
            cap.active = False
            res = base(input_ids=torch.tensor([ids[0][:p]], device=device), use_cache=True)
            cache = output_cache(res)
            cap.active = True
        for s in range(0, len(ids), batch_size):
            rows = [i[p:] for i in ids[s: s + batch_size]]
            b, width = len(rows), max(len(r) for r in rows)
            x = torch.full((b, width), pad, dtype=torch.long, device=device)
            for j, r in enumerate(rows):
                x[j, : len(r)] = torch.tensor(r, dtype=torch.long)
            pos = (p + torch.arange(width, device=device))[None].expand(b, -1)
            kw: dict[str, Any] = {}
            if cache is not None:
                c = copy.deepcopy(cache)
                c.batch_repeat_interleave(b)
                kw[cache_kw] = c
            base(input_ids=x, position_ids=pos, use_cache=cache is not None, **kw)
            last = torch.tensor([len(r) - 1 for r in rows], device=device)
            for layer, t in enumerate(cap.outputs):
                assert t is not None
                out[s: s + b, layer] = t[torch.arange(b, device=device), last].double().cpu()\
                    .numpy()
    return out


def predict_and_capture(loaded: Any, task: ph.TaskItems, queries: Sequence[str],
                        demos: Sequence[tuple[str, str]] | None = None, *,
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~icldistill.lab.experiments.phenomena.predict` and :func:`attention_outputs` of the
    same prompts in one pass.

    The scorer's forward pass over each prompt is the one the attention outputs are read from
    (at the prompt's last token), so the label scores are exactly ``predict``'s. Sliding-window
    models (scored one label per row) take two passes instead.

    Parameters
    ----------
    loaded : LoadedModel-like
    task : TaskItems
    queries : sequence of str, length ``n``
    demos : sequence of ``(input, label name)``, optional
        One demonstration set for every query (None or empty: zero-shot).
    progress : bool

    Returns
    -------
    predictions : ndarray ``[n]`` (label names)
    logprobs : ndarray ``[n, C]``
        Label log-probabilities (columns in ``task.label_names`` order).
    ao : ndarray ``[n, L, d_model]`` (float64)
        Attention outputs at the prompts' last token.
    """
    queries = list(queries)
    n_layers = len(attention_modules(loaded.model))
    scorer = ph.task_scorer(loaded, task)
    if scorer.label_mode == "inline":
        pred, lp = ph.predict(loaded, task, queries, demos, progress=progress)
        return pred, lp, attention_outputs(loaded, prompt_texts(task, list(demos or []),
                                                                queries))
    d = int(loaded.model.config.get_text_config().hidden_size)
    ao = np.zeros((len(queries), n_layers, d), dtype=np.float64)
    with AttentionCapture(loaded.model) as cap:

        def keep(rows: np.ndarray, last: np.ndarray) -> None:
            # the latest output of each attention module is the context pass's
            for r, (q, col) in enumerate(zip(rows, last, strict=True)):
                if q >= 0:
                    ao[q] = np.stack([t[r, col].double().cpu().numpy()    # type: ignore[index]
                                      for t in cap.outputs])

        res = scorer.score(queries, list(demos or []), progress=progress, on_context=keep)
    return (np.asarray(res.predictions, dtype=object), np.asarray(res.logprobs), ao)


# ============================================================================ fine-tuning
@dataclass(frozen=True)
class FineTuned:
    """A model fine-tuned on demonstrations (:func:`finetune_kv`).

    Attributes
    ----------
    loaded : LoadedModel-like
        The fine-tuned float32 copy (``.model`` in eval mode, ``.tokenizer``); the original is
        untouched.
    lr : float
    losses : ndarray ``[k]``
        Each step's loss (before its update), in demonstration order.
    """

    loaded: Any
    lr: float
    losses: np.ndarray


def _float32_copy(loaded: Any) -> Any:
    attention_modules(loaded.model)        # unsupported architectures fail before copying
    model = copy.deepcopy(loaded.model).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = copy.copy(loaded)
    try:
        out.model = model
    except (AttributeError, TypeError):     # frozen dataclass
        import dataclasses

        out = dataclasses.replace(loaded, model=model)
    return out


class FineTuneWorkspace:
    """A float32 copy of a model to fine-tune repeatedly (one deep copy for many runs).

    ``reset()`` puts the ``k_proj`` / ``v_proj`` parameters back to the original's (the only
    ones training changes); ``train(task, demos, lr)`` runs :func:`finetune_kv`'s training on
    the copy in place. ``loaded`` is the copy (``.model``, ``.tokenizer``).

    Parameters
    ----------
    loaded : LoadedModel-like
        The model to copy (never changed).
    """

    def __init__(self, loaded: Any) -> None:
        self.loaded = _float32_copy(loaded)
        names = set(kv_parameter_names(self.loaded.model))
        self._kv = {n: p for n, p in self.loaded.model.named_parameters() if n in names}
        self._start = {n: p.detach().clone() for n, p in self._kv.items()}

    def reset(self) -> None:
        """Undo every training step."""
        self.load(self._start)

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable (k/v) parameters."""
        return {n: p.detach().clone() for n, p in self._kv.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Put trainable parameters saved by :meth:`state` back."""
        with torch.no_grad():
            for n, p in self._kv.items():
                p.copy_(state[n])

    def train(self, task: ph.TaskItems, demos: Sequence[tuple[str, str]], lr: float
              ) -> np.ndarray:
        """Train (from the current state) on ``demos``; returns the per-step losses ``[k]``."""
        return _train_kv(self.loaded, task, _check_demos(task, demos), _check_lr(lr))


def _train_kv(loaded: Any, task: ph.TaskItems, demos: Sequence[tuple[str, str]], lr: float
              ) -> np.ndarray:
    """One plain SGD step per demonstration on ``loaded.model``'s k/v projections (in place)."""
    model, tok = loaded.model, loaded.tokenizer
    names = set(kv_parameter_names(model))
    params = [p for n, p in model.named_parameters() if n in names]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=float(lr))
    fmt = task.format
    prompts = prompt_token_ids(tok, prompt_texts(task, [], [x for x, _ in demos]))
    device = next(model.parameters()).device
    losses = []
    try:
        with torch.enable_grad():
            for ids, (_, y) in zip(prompts, demos, strict=True):
                lab = list(tok(" " + fmt.label_words[y], add_special_tokens=False)["input_ids"])
                if not lab:
                    raise InputError(f"label {y!r} tokenizes to no tokens")
                x = torch.tensor([ids + lab], dtype=torch.long, device=device)
                res = model(input_ids=x, use_cache=False, logits_to_keep=len(lab) + 1)
                logits = res.logits[0, :-1].float()                    # [m, V]
                loss = torch.nn.functional.cross_entropy(
                    logits, torch.tensor(lab, dtype=torch.long, device=device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        model.eval()
    return np.asarray(losses, dtype=np.float64)


def _check_lr(lr: Any, name: str = "lr") -> float:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) \
            or lr <= 0:
        raise InputError(f"{name} must be a positive finite number, got {lr!r}")
    return float(lr)


def _check_demos(task: ph.TaskItems, demos: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    demos = [(str(x), str(y)) for x, y in demos]
    if not demos:
        raise InputError("demos must hold at least one (input, label) pair")
    for _, y in demos:
        if y not in task.format.label_words:
            raise InputError(f"demos: unknown label {y!r}; the task's labels are "
                             f"{list(task.label_names)}")
    return demos


def finetune_kv(loaded: Any, task: ph.TaskItems, demos: Sequence[tuple[str, str]], *,
                lr: float) -> FineTuned:
    """Fine-tune a float32 copy of ``loaded.model`` on ``demos`` (Dai et al.'s baseline).

    Only every layer's ``k_proj`` / ``v_proj`` parameters (:func:`kv_parameter_names`) change:
    plain SGD, one step per demonstration in order (batch size 1); loss = mean cross-entropy of
    the label word's tokens (``" " + word``) after the demonstration's zero-shot prompt (the
    task's instruction and template). Eval mode throughout (deterministic).

    Parameters
    ----------
    loaded : LoadedModel-like
    task : TaskItems
    demos : sequence of ``(input, label name)``, length ``k``
    lr : float
        SGD learning rate.

    Returns
    -------
    FineTuned
    """
    lr = _check_lr(lr)
    demos = _check_demos(task, demos)
    ws = FineTuneWorkspace(loaded)
    return FineTuned(ws.loaded, lr, ws.train(task, demos, lr))


# ============================================================================ comparison
@dataclass(frozen=True)
class Comparison(Result):
    """ICL against fine-tuning for one model on one task.

    Shapes: ``n`` test items, ``L`` layers.

    Attributes
    ----------
    task : str
    lr : float
        Fine-tuning learning rate used.
    lr_search : tuple of (lr, training accuracy, training NLL)
        The grid tried (empty when ``lr`` was given).
    train_accuracy, train_nll : float
        Accuracy on the demonstrations (zero-shot prompts) after fine-tuning, and the mean
        negative log-likelihood of their labels.
    train_losses : ndarray ``[k]``
        Per-step losses of the fine-tuning that was kept.
    labels, zsl, icl, ft : ndarray ``[n]`` of str
        True labels and the three predictions.
    rec : Rec2FTP
    cos : ndarray ``[n, L]``
        ``cos(Update_ICL, Update_FT)`` per item and layer.
    random_cos : ndarray ``[n, L]``
        ``cos(Update_ICL, Gaussian vector)`` (the random-vector baseline).
    icl_norm, ft_norm : ndarray ``[n, L]``
        Norms of the two updates.
    random_labels : tuple of str, length ``k``
        The labels of the random-label fine-tune: the demonstrations' own labels shuffled
        among them (seeded; the label counts stay the real set's).
    ft_random_labels : ndarray ``[n]`` of str
        Predictions after that fine-tune (same inputs, steps and learning rate).
    random_label_cos : ndarray ``[n, L]``
        ``cos(Update_ICL, Update_FT')`` with ``Update_FT'`` the random-label fine-tune's update:
        the alignment that fine-tuning on the demonstrations' inputs and format gives without
        their input-label mapping (the null of the SimAOU claim).
    demo_set : int
        Which of the task's demonstration sets (each with its own fine-tuning run) this is.
    """

    task: str
    lr: float
    lr_search: tuple[tuple[float, float, float], ...]
    train_accuracy: float
    train_nll: float
    train_losses: np.ndarray
    labels: np.ndarray
    zsl: np.ndarray
    icl: np.ndarray
    ft: np.ndarray
    rec: Rec2FTP
    cos: np.ndarray
    random_cos: np.ndarray
    icl_norm: np.ndarray
    ft_norm: np.ndarray
    random_labels: tuple[str, ...]
    ft_random_labels: np.ndarray
    random_label_cos: np.ndarray
    demo_set: int = 0

    @property
    def unit(self) -> str:
        """The (task, demonstration set) unit's name: the task, with ``set s`` after the
        first set."""
        return self.task if self.demo_set == 0 else f"{self.task} set {self.demo_set + 1}"

    def accuracy(self, which: str) -> float:
        """Accuracy of ``"zsl"``, ``"icl"``, ``"ft"`` or ``"ft_random_labels"``."""
        return float(np.mean(getattr(self, which) == self.labels)) if self.labels.size else \
            math.nan

    @property
    def simaou(self) -> np.ndarray:
        """``[L]`` mean cosine per layer (NaNs skipped)."""
        return _nanmean0(self.cos)

    @property
    def random_simaou(self) -> np.ndarray:
        """``[L]`` the random-vector baseline per layer."""
        return _nanmean0(self.random_cos)

    @property
    def random_label_simaou(self) -> np.ndarray:
        """``[L]`` SimAOU against the random-label fine-tune, per layer."""
        return _nanmean0(self.random_label_cos)

    @property
    def zsl_wrong_icl_right(self) -> float:
        """Fraction of zero-shot errors ICL gets right (the chance level of Rec2FTP if ICL's
        corrections were independent of fine-tuning's)."""
        wrong = self.zsl != self.labels
        return float(np.mean(self.icl[wrong] == self.labels[wrong])) if wrong.any() else \
            math.nan


def _nanmean0(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    cnt = ok.sum(0)
    return np.where(cnt > 0, np.where(ok, a, 0.0).sum(0) / np.maximum(cnt, 1), math.nan)


def _row_mean(a: np.ndarray) -> np.ndarray:
    """``[n, L] -> [n]``: per-row mean over the finite entries (NaN for a row without any)."""
    a = np.asarray(a, dtype=np.float64)
    return _nanmean0(a.T) if a.shape[1] else np.full(a.shape[0], math.nan)


def _item_values(c: Comparison, what: str) -> np.ndarray:
    """``[n]`` per item of one task's comparison: ``"sim"`` (SimAOU, mean over layers),
    ``"random"`` (the random-vector cosine), ``"sim-random"``, ``"random-label"`` (SimAOU
    against the random-label fine-tune), ``"sim-random-label"``, ``"rec"`` (the Rec2FTP
    indicator) or ``"zsl_wrong_icl_right"``."""
    if what == "sim":
        return _row_mean(c.cos)
    if what == "random":
        return _row_mean(c.random_cos)
    if what == "sim-random":
        return _row_mean(c.cos) - _row_mean(c.random_cos)
    if what == "random-label":
        return _row_mean(c.random_label_cos)
    if what == "sim-random-label":
        return _row_mean(c.cos) - _row_mean(c.random_label_cos)
    if what == "rec":
        return c.rec.indicator
    if what == "zsl_wrong_icl_right":
        return (c.icl == c.labels)[c.zsl != c.labels].astype(np.float64)
    raise KeyError(what)


def _train_score(loaded: Any, task: ph.TaskItems, demos: list[tuple[str, str]]
                 ) -> tuple[float, float]:
    pred, lp = ph.predict(loaded, task, [x for x, _ in demos], [])
    y = np.asarray([lab for _, lab in demos], dtype=object)
    col = {lab: j for j, lab in enumerate(task.label_names)}
    nll = -float(np.mean([lp[i, col[lab]] for i, lab in enumerate(y)]))
    return float(np.mean(pred == y)), nll if math.isfinite(nll) else math.inf


def _random_label_fine_tune(ws: FineTuneWorkspace, task: ph.TaskItems,
                            demos: list[tuple[str, str]], rate: float, seed: int,
                            progress: bool) -> tuple[list[tuple[str, str]], Any, np.ndarray]:
    """The SimAOU claim's null: the same fine-tuning (inputs, order, steps, ``rate``) with the
    demonstrations' labels shuffled among them (one seeded permutation: the label counts,
    hence the label prior the set teaches, stay those of the real set; only which input
    carries which label is random); returns those demonstrations, the fine-tuned model's
    zero-shot predictions on the test items and its attention outputs ``[n, L, d]``. ``ws`` is
    reset before and after."""
    order = np.random.default_rng([seed, 1]).permutation(len(demos))
    rl_demos = [(x, demos[int(j)][1]) for (x, _), j in zip(demos, order, strict=True)]
    ws.reset()
    ws.train(task, rl_demos, rate)
    pred, _, ao = predict_and_capture(ws.loaded, task, list(task.test_texts), [],
                                      progress=progress)
    ws.reset()
    return rl_demos, pred, ao


def icl_vs_finetuning(loaded: Any, task: ph.TaskItems, demos: Sequence[tuple[str, str]], *,
                      lr: float | None = None, lr_grid: Sequence[float] = LR_GRID,
                      seed: int = 0, progress: bool = False,
                      workspace: FineTuneWorkspace | None = None) -> Comparison:
    """ZSL, ICL and fine-tuning on ``task``'s test items; Rec2FTP and SimAOU.

    Parameters
    ----------
    loaded : LoadedModel-like
        A supported architecture (:func:`attention_modules`); never changed.
    task : TaskItems
    demos : sequence of ``(input, label name)``
        The demonstrations (ICL prompt, in this order) and the fine-tuning data (same order).
    lr : float, optional
        Fine-tuning learning rate; None picks it from ``lr_grid``: the rates are tried from
        the smallest up and the first with the highest training accuracy on ``demos`` is kept
        (the gentlest update that fits the demonstrations as well as any; the search stops at
        a rate that fits them all).
    lr_grid : sequence of float
    seed : int
        Seed of the random-vector baseline and of the random-label fine-tune's labels.
    progress : bool
    workspace : FineTuneWorkspace, optional
        A float32 copy of ``loaded`` to reuse (it is reset first); None makes one.

    Returns
    -------
    Comparison
    """
    demos = _check_demos(task, demos)
    attention_modules(loaded.model)
    if lr is not None:
        grid = [_check_lr(lr)]
    else:
        grid = sorted({_check_lr(x, "lr_grid entries") for x in lr_grid})
        if not grid:
            raise InputError("lr_grid must hold at least one learning rate")
    queries = list(task.test_texts)
    labels = np.asarray(task.test_labels, dtype=object)
    zsl, _, ao_zsl = predict_and_capture(loaded, task, queries, [], progress=progress)
    icl, _, ao_icl = predict_and_capture(loaded, task, queries, demos, progress=progress)
    ws = workspace if workspace is not None else FineTuneWorkspace(loaded)
    ws.reset()
    if next(loaded.model.parameters()).dtype == torch.float32:
        ref = ao_zsl
    else:                      # the fine-tuning update is taken within float32
        ref = attention_outputs(ws.loaded, prompt_texts(task, [], queries))
    search: list[tuple[float, float, float]] = []
    best: tuple[Any, ...] | None = None         # (training accuracy, lr, nll, losses, state)
    for rate in grid:
        ws.reset()
        losses = ws.train(task, demos, rate)
        acc, nll = _train_score(ws.loaded, task, demos)
        search.append((rate, acc, nll))
        if best is None or acc > best[0]:
            best = (acc, rate, nll, losses, ws.state() if len(grid) > 1 else None)
        if acc >= 1.0:
            break
    assert best is not None
    train_acc, rate, train_nll, losses, state = best
    if state is not None:
        ws.load(state)
    ft_pred, _, ao_ft = predict_and_capture(ws.loaded, task, queries, [], progress=progress)
    rl_demos, rl_pred, ao_rl = _random_label_fine_tune(ws, task, demos, rate, seed, progress)
    u_icl = ao_icl - ao_zsl
    u_ft = ao_ft - ref
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(u_icl.shape)
    return Comparison(
        task=task.name, lr=float(rate), lr_search=tuple(search) if lr is None else (),
        train_accuracy=train_acc, train_nll=train_nll, train_losses=losses,
        labels=labels, zsl=np.asarray(zsl, dtype=object), icl=np.asarray(icl, dtype=object),
        ft=np.asarray(ft_pred, dtype=object),
        rec=rec2ftp(zsl == labels, ft_pred == labels, icl == labels),
        cos=update_cosines(u_icl, u_ft), random_cos=update_cosines(u_icl, noise),
        icl_norm=np.linalg.norm(u_icl, axis=-1), ft_norm=np.linalg.norm(u_ft, axis=-1),
        random_labels=tuple(lab for _, lab in rl_demos),
        ft_random_labels=np.asarray(rl_pred, dtype=object),
        random_label_cos=update_cosines(u_icl, ao_rl - ref))


# ============================================================================ section
def _sub_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _fmt(v: float, f: str = ".3f") -> str:
    return "n/a" if not np.isfinite(v) else f"{v:{f}}"


def _pct(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{100 * v:.1f}%"


@dataclass(frozen=True)
class _Group:
    """The comparisons of one model group: ``comps[m][t]`` for model ``m``, task ``t``."""

    models: list[ph.ModelUnderTest]
    comps: list[list[Comparison]]

    def pooled(self, m: int, what: str) -> np.ndarray:
        return np.concatenate([_item_values(c, what) for c in self.comps[m]])

    def first_sets(self, m: int) -> list[Comparison]:
        """Model ``m``'s comparisons of each task's first demonstration set: Rec2FTP's data.
        The sets of a task are read on the same test items, so their tables are not
        independent strata (an item hard for ICL and FT is so in every set); counting each
        item once keeps the stratified Fisher test exact."""
        return [c for c in self.comps[m] if c.demo_set == 0]

    def pooled_first(self, m: int, what: str) -> np.ndarray:
        """:meth:`pooled` over :meth:`first_sets` (each test item once)."""
        return np.concatenate([_item_values(c, what) for c in self.first_sets(m)])

    def per_unit(self, m: int, what: str) -> np.ndarray:
        """``[U]`` per (task, demonstration set) of model ``m``: the mean over its items of
        ``what`` (:func:`_item_values`). The set, with its one fine-tuning run, is the unit of
        SimAOU's claim: the items of a set share its demonstrations and its fine-tuned
        model (with one set per task, the unit is the task)."""
        return np.asarray([ph.finite_mean(_item_values(c, what)) for c in self.comps[m]],
                          dtype=np.float64)

    @property
    def units(self) -> str:
        """What a unit is, for the texts."""
        return ("(task, set) units (each one fine-tuning run)"
                if any(c.demo_set for c in self.comps[0]) else
                "tasks (each one fine-tuning run)")

    def task_rows(self, m: int, task: str) -> list[Comparison]:
        """Model ``m``'s comparisons of ``task`` (one per demonstration set)."""
        return [c for c in self.comps[m] if c.task == task]

    def layer_cos(self, m: int) -> np.ndarray:
        """``[N, L]`` per test item (each once) and layer: its SimAOU averaged over the task's
        demonstration sets (the sets share the test items; with one set, its cosines). A
        task's sets are consecutive, the first with ``demo_set`` 0 (so a task listed twice is
        two tasks)."""
        runs: list[list[np.ndarray]] = []
        for c in self.comps[m]:
            if c.demo_set == 0 or not runs:
                runs.append([])
            runs[-1].append(c.cos)
        return np.concatenate([_nanmean0(np.stack(r)) for r in runs])

    def rec_counts(self, m: int) -> tuple[int, int]:
        """Rec2FTP's counts (ICL also right, FT corrections) over :meth:`first_sets`."""
        return (sum(c.rec.recalled for c in self.first_sets(m)),
                sum(c.rec.corrected for c in self.first_sets(m)))

    def rec_test(self, m: int) -> Rec2FTPTest:
        """:func:`rec2ftp_test` of model ``m`` per task (its first demonstration set,
        :meth:`first_sets`), combined: the counts summed and the p-value of the exact test
        stratified by task (tasks differ in both rates, so one pooled table would mix them)."""
        per = [rec2ftp_test(c.zsl == c.labels, c.ft == c.labels, c.icl == c.labels)
               for c in self.first_sets(m)]
        tables = [(t.both, t.ft_only, t.icl_only, t.neither) for t in per]
        return Rec2FTPTest(*(int(sum(col)) for col in zip(*tables, strict=True)),
                           fisher_exact_greater_stratified(tables), strata=len(tables))


# long: two controlled checks (SimAOU, Rec2FTP), each with its test, its controls' values and
# the detail text that states them; split, the pieces would pass the same dozen values around
def _checks(g: _Group, seed: int
            ) -> tuple[list[Check], list[float], list[str], list[float], dict[str, Any],
                       list[str]]:
    """The two controlled checks of one group (with their raw p-values, tests and the
    smallest p each test allows (NaN: not known), for the section's Holm correction and
    testability), their comparisons, per-layer comparisons and findings."""
    trained, controls = g.models[0], g.models[1:]
    name = trained.name
    stat = ph.statistic
    # the unit is the (task, set): its one demonstration set and one fine-tuning run, not the
    # item
    per = "per-task" if g.units.startswith("tasks") else "per-(task, set)"
    sim = ph.compare_paired_with_controls(
        f"{name}: SimAOU ({per} mean over items and layers)", g.per_unit(0, "sim"),
        [g.per_unit(i, "sim") for i in range(1, len(g.models))], g.models, seed=seed)
    rand = stat(g.pooled(0, "random"), f"{name} random-vector baseline", seed=seed)
    # the claim's null: random vectors are isotropic, attention-output updates are not, so
    # any two updates beat them; a fine-tune on the same inputs with random labels keeps
    # everything but the input-label mapping the demonstrations teach
    rl = g.per_unit(0, "random-label")
    rl_mean = ph.finite_mean(rl)
    above_vec = bool(np.isfinite(sim.trained.value) and np.isfinite(rand.high)
                     and sim.trained.value > rand.high)
    # the same paired differences the p-value tests (a unit undefined in one is left out)
    above_rl = bool(ph.finite_mean(g.per_unit(0, "sim-random-label")) > 0)
    checks = [ph.controlled_check(
        f"{name}: ICL and fine-tuning update attention outputs in similar directions (SimAOU "
        "above that of a fine-tune on the same demonstrations with random labels, above the "
        "random-vector baseline and above the random-init controls)", above_vec and above_rl,
        sim,
        f"trained SimAOU {_fmt(sim.trained.value)} vs {_fmt(rl_mean)} against the "
        f"random-label fine-tune ({per}: " + ", ".join(
            f"{c.unit} {_fmt(a)} / {_fmt(b)}" for c, a, b in
            zip(g.comps[0], g.per_unit(0, "sim"), rl, strict=True))
        + f"; {'above' if above_rl else 'NOT above'}) and random-vector baseline "
        f"{_fmt(rand.value)} [{_fmt(rand.low)}, {_fmt(rand.high)}] over "
        f"{g.pooled(0, 'random').size} items "
        f"({'above' if above_vec else 'NOT above'}); Dai et al. (2023): "
        + ", ".join(f"{k} {v['simaou']:.3f}" for k, v in DAI_2023.items()) + " vs ~0 random",
        sign=1)]
    pvalues = [ph.sign_flip_p(g.per_unit(0, "sim-random-label"))]
    tests = ["SimAOU minus the random-label fine-tune's SimAOU: "
             + ph.sign_flip_text(g.per_unit(0, "sim-random-label"), g.units)]
    # the design's floor: every unit counts, also one the data left undefined
    floors = [ph.sign_flip_floor(np.zeros(np.size(g.per_unit(0, "sim-random-label"))))]
    rec = ph.compare_with_controls(
        f"{name}: Rec2FTP (ICL right, per FT-corrected item)",
        stat(g.pooled_first(0, "rec"), trained, seed=seed),
        [stat(g.pooled_first(i, "rec"), m, seed=seed) for i, m in enumerate(controls, 1)],
        seed=seed)
    got, n = g.rec_counts(0)
    chance = stat(g.pooled_first(0, "zsl_wrong_icl_right"),
                  f"{name} ICL right among ZSL errors",
                  seed=seed)
    test = g.rec_test(0)
    claim = (f"{name}: ICL covers fine-tuning's corrections: ICL is right more often on the "
             "zero-shot errors fine-tuning corrects than on those it does not (one-sided "
             f"Fisher exact test, p < {ph.ALPHA:g}), with Rec2FTP above the random-init "
             "controls'")
    dai = "Dai et al. (2023) Rec2FTP: " + ", ".join(f"{k} {v['rec2ftp']:.2f}%"
                                                   for k, v in DAI_2023.items())
    ctrl = "; controls: " + "; ".join(
        f"{m.name}: {_pct(t.rate_corrected)} vs {_pct(t.rate_uncorrected)}, p = {t.p:.3g}"
        for m, t in zip(controls, (g.rec_test(i) for i in range(1, len(g.models))),
                        strict=True))
    if n < MIN_CORRECTED:
        checks.append(ph.controlled_check(
            claim, False, rec, f"only {n} FT-corrected item(s) over all tasks (fewer than "
            f"{MIN_CORRECTED}): too few to measure Rec2FTP; {test.describe()}{ctrl}; {dai}",
            sign=1))
    else:
        checks.append(ph.controlled_check(
            claim, bool(test.p < ph.ALPHA), rec,
            f"{test.describe()} (needs < {ph.ALPHA:g}){ctrl}; {dai}", sign=1))
    pvalues.append(test.p)
    tests.append("the one-sided Fisher exact test above")
    floors.append(math.nan)  # the stratified Fisher test's smallest p: not computed
    lc = [g.layer_cos(i) for i in range(len(g.models))]
    L = lc[0].shape[1]
    per_layer = [ph.compare_with_controls(
        f"{name}: SimAOU layer {layer}", stat(lc[0][:, layer], trained, seed=seed),
        [stat(c[:, layer], m, seed=seed) for c, m in zip(lc[1:], controls, strict=True)],
        seed=seed) for layer in range(L)]
    above = [c for c in per_layer if c.outside and c.trained.value > c.high]
    below = [c for c in per_layer if c.outside and c.trained.value < c.low]
    vals = np.asarray([c.trained.value for c in per_layer])
    top = int(np.nanargmax(vals)) if np.isfinite(vals).any() else -1
    findings = [
        f"{name}: SimAOU averaged over {L} layers and {sim.trained.n} "
        f"{g.units.split(' (')[0]} is "
        f"{_fmt(sim.trained.value)} [{_fmt(sim.trained.low)}, {_fmt(sim.trained.high)}] "
        f"against {_fmt(rl_mean)} for the fine-tune on random labels, "
        f"{_fmt(rand.value)} for random vectors and "
        + ", ".join(f"{_fmt(c.value)} [{_fmt(c.low)}, {_fmt(c.high)}] for {c.model}"
                    for c in sim.controls)
        + f"; Dai et al. report {DAI_2023['GPT 1.3B']['simaou']:.3f} (GPT 1.3B) and "
        f"{DAI_2023['GPT 2.7B']['simaou']:.3f} (GPT 2.7B).",
        f"{name}: per layer, the trained SimAOU lies above the random-init control's spread at "
        f"{len(above)} of {L} layers and below it at {len(below)}"
        + (f"; it is largest at layer {top} ({vals[top]:.3f})." if top >= 0 else "."),
    ]
    rec_ctrl = [g.rec_counts(i) for i in range(1, len(g.models))]
    findings.append(
        f"{name}: Rec2FTP pooled over tasks is {_pct(got / n if n else math.nan)} ({got} of "
        f"{n} FT corrections); ICL gets {_pct(chance.value)} of all {chance.n} zero-shot errors "
        "right (the overlap expected if the two corrected independently); controls: "
        + ", ".join(f"{_pct(a / b if b else math.nan)} ({a}/{b}) for {m.name}"
                    for (a, b), m in zip(rec_ctrl, controls, strict=True))
        + f"; Dai et al. report {DAI_2023['GPT 1.3B']['rec2ftp']:.2f}% and "
        f"{DAI_2023['GPT 2.7B']['rec2ftp']:.2f}%.")
    comps = {"simaou": sim.to_dict(), "random_baseline": rand.to_dict(),
             "rec2ftp": rec.to_dict(), "icl_right_among_zsl_errors": chance.to_dict(),
             "rec2ftp_test": {**test.to_dict(), "rate_corrected": test.rate_corrected,
                              "rate_uncorrected": test.rate_uncorrected},
             "per_layer": [c.to_dict() for c in per_layer]}
    return checks, pvalues, tests, floors, comps, findings


def _figures(groups: list[_Group], tasks: list[ph.TaskItems], out: Path) -> list[str]:
    names = []
    cols = len(tasks) + 1
    fig, axes = new_figure(len(groups), cols, size=(4.0, 3.2))
    for r, g in enumerate(groups):
        for t in range(cols):
            ax = axes[r, t]
            for i, m in enumerate(g.models):
                rows = g.comps[i] if t == len(tasks) else g.task_rows(i, tasks[t].name)
                cos = np.concatenate([c.cos for c in rows])
                y = _nanmean0(cos)
                x = np.arange(y.size)
                if i == 0:
                    ax.plot(x, y, "-", color="C0", lw=1.8, label=f"{m.name} (trained)")
                    rc = np.concatenate([c.random_cos for c in rows])
                    ax.plot(x, _nanmean0(rc), ":", color="k", lw=1.2,
                            label="random-vector baseline")
                    rl = np.concatenate([c.random_label_cos for c in rows])
                    ax.plot(x, _nanmean0(rl), "-.", color="C1", lw=1.2,
                            label="fine-tune on random labels")
                else:
                    ax.plot(x, y, "--", color="0.55", lw=1.2, label=f"{m.name} (control)")
            ax.axhline(0.0, color="0.8", lw=0.6)
            ax.set_title(("all tasks" if t == len(tasks) else tasks[t].name)
                         + f" - {g.models[0].name}", fontsize=8)
            ax.set_xlabel("layer")
            if t == 0:
                ax.set_ylabel("SimAOU (mean cos)")
                ax.legend(fontsize=6)
    fig.suptitle("SimAOU per layer: cos(ICL update, fine-tuning update) of the attention "
                 "output at the last token", fontsize=9)
    save_figure(fig, out / "finetuning_simaou_layers.png")
    names.append("finetuning_simaou_layers.png")

    fig, axes = new_figure(1, len(groups), size=(max(4.5, 1.4 * cols + 2), 3.6))
    for r, g in enumerate(groups):
        ax = axes[0, r]
        labels = [t.name for t in tasks] + ["pooled"]
        nm = len(g.models)
        width = 0.8 / nm
        for i, m in enumerate(g.models):
            first = g.first_sets(i)                       # Rec2FTP's data, as tested
            counts = [(sum(c.rec.recalled for c in first if c.task == t.name),
                       sum(c.rec.corrected for c in first if c.task == t.name)) for t in tasks]
            counts.append(g.rec_counts(i))
            vals = [100.0 * a / b if b else 0.0 for a, b in counts]
            x = np.arange(len(labels)) + (i - (nm - 1) / 2) * width
            kw = ({"color": "C0"} if i == 0 else
                  {"color": "0.8", "edgecolor": "0.4", "hatch": "//"})
            ax.bar(x, vals, width, label=m.name + (" (trained)" if i == 0 else " (control)"),
                   **kw)
            for xi, v, (a, b) in zip(x, vals, counts, strict=True):
                ax.text(xi, v + 1, f"{a}/{b}" if b else "n/a", ha="center", fontsize=6)
        for (k, v), ls in zip(DAI_2023.items(), ("--", "-."), strict=True):
            ax.axhline(v["rec2ftp"], color="C3", ls=ls, lw=1.0,
                       label=f"Dai et al. {k} ({v['rec2ftp']:.1f}%)")
        ax.set_xticks(np.arange(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylim(0, 140)
        ax.set_yticks(np.arange(0, 101, 20))
        ax.set_ylabel("Rec2FTP (%)")
        ax.set_title(f"{g.models[0].name}: FT corrections also made by ICL", fontsize=9)
        ax.legend(fontsize=6, loc="upper center", ncol=2)
    save_figure(fig, out / "finetuning_rec2ftp.png")
    names.append("finetuning_rec2ftp.png")
    return names


def _comp_data(c: Comparison, m: ph.ModelUnderTest) -> dict[str, Any]:
    return {
        "model": m.name, "role": m.role, "task": c.task, "set": c.demo_set, "lr": c.lr,
        "train_accuracy": c.train_accuracy, "train_nll": c.train_nll,
        "lr_search": [{"lr": a, "train_accuracy": b, "train_nll": n} for a, b, n in c.lr_search],
        "train_losses": c.train_losses, "labels": c.labels.tolist(), "zsl": c.zsl.tolist(),
        "icl": c.icl.tolist(), "ft": c.ft.tolist(),
        "accuracy": {w: c.accuracy(w) for w in ("zsl", "icl", "ft")},
        "rec2ftp": {"value": c.rec.value, "recalled": c.rec.recalled,
                    "corrected": c.rec.corrected},
        "simaou": c.simaou, "random_simaou": c.random_simaou, "cos": c.cos,
        "random_cos": c.random_cos, "icl_update_norm": c.icl_norm, "ft_update_norm": c.ft_norm,
        "random_labels": list(c.random_labels), "ft_random_labels": c.ft_random_labels.tolist(),
        "random_label_simaou": c.random_label_simaou, "random_label_cos": c.random_label_cos,
    }


# long: 40 lines of docstring (every argument of the section); the code is 38
def run(models: Sequence[str | Any] = ("smollm2-135m",), *, out_dir: str | Path,
        quick: bool = False, seed: int = 0, progress: bool = False,
        tasks: Sequence[str | ph.TaskItems] | None = None,
        under_test: Sequence[Sequence[ph.ModelUnderTest]] | None = None, n_controls: int = 1,
        dtype: torch.dtype = torch.float32, k: int | None = None, n_test: int | None = None,
        lr_grid: Sequence[float] | None = None, n_sets: int = 1,
        resume_dir: str | Path | None = None) -> Section:
    """The ICL-versus-fine-tuning comparison (Dai et al., 2023) as a report section.

    Parameters
    ----------
    models : sequence of registry keys or loaded models
        One group per model: the model and ``n_controls`` random-init twins.
    out_dir : path
        Figures go here.
    quick : bool
        ``k`` = :data:`QUICK_K` demonstrations and :data:`QUICK_N_TEST` test items per task;
        otherwise :data:`FULL_K` and :data:`FULL_N_TEST`.
    seed : int
        Seeds the test items, the demonstrations and their order, the controls and the
        random-vector baseline.
    progress : bool
    tasks : sequence of str or TaskItems, optional
        Default :data:`~icldistill.lab.experiments.phenomena.DEFAULT_TASKS`.
    under_test : model groups, optional
        Already built groups (trained first, then controls) instead of ``models``.
    n_controls : int
    dtype : torch.dtype
        Precision of the loaded models (fine-tuning always runs on a float32 copy).
    k, n_test : int, optional
        Override the demonstrations / test items per task.
    lr_grid : sequence of float, optional
        Learning rates tried (per task and set, on the trained model); default
        :data:`QUICK_LR_GRID` (quick) or :data:`LR_GRID`.
    n_sets : int
        Demonstration sets per task, each with its own fine-tuning run (default 1). The
        (task, set) is the unit of the SimAOU claim's test (its items share one set and one
        fine-tuned model): with 3 tasks, one set allows no sign-flip p below 0.25, two sets
        0.031, three 0.0078. Rec2FTP reads each task's first set (the sets share the test
        items, so their tables would not be independent strata).
    resume_dir : path, optional
        Keep each finished (model, task, set) comparison here, so that a killed run resumes from
        its last finished part (:class:`~icldistill.lab.experiments.phenomena.Parts`).

    Returns
    -------
    Section
    """
    t0 = time.perf_counter()
    k, n_test, grid = _settings(quick, k, n_test, lr_grid)
    if isinstance(n_sets, bool) or not isinstance(n_sets, int) or n_sets < 1:
        raise InputError(f"n_sets must be a positive integer, got {n_sets!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups_m = ph.resolve_models(models, under_test=under_test, n_controls=n_controls,
                                 seed=seed, dtype=dtype, progress=progress)
    for grp in groups_m:
        for m in grp:
            attention_modules(m.loaded.model)
    task_list = ph.resolve_tasks(list(tasks) if tasks is not None else list(ph.DEFAULT_TASKS),
                                 n_test=n_test, seed=seed, progress=progress)
    demo_sets = _demo_sets(task_list, k, seed, n_sets)
    parts = ph.Parts(resume_dir, "icl-vs-finetuning", {
        "k": k, "n_test": n_test, "lr_grid": list(grid), "seed": seed,
        "tasks": [ph.task_fingerprint(t) for t in task_list]})
    groups = _compare(groups_m, task_list, demo_sets, grid, seed, progress, parts)
    t0 -= parts.reused_seconds
    checks, findings, comparisons = _checks_and_findings(groups, seed)
    tables = _tables(groups, comparisons, task_list, k)
    figures = _figures(groups, task_list, out)
    data = {
        "k": k, "n_test": n_test, "lr_grid": list(grid), "seed": seed, "dai_2023": DAI_2023,
        "tasks": [t.name for t in task_list],
        "n_sets": n_sets,
        # per task, per demonstration set (each with its own fine-tuning run)
        "demos": [[[{"input": x, "label": y} for x, y in d] for d in sets]
                  for sets in demo_sets],
        "groups": [{"models": [m.name for m in g.models], "comparisons": d,
                    "results": [[_comp_data(c, m) for c in cs]
                                for m, cs in zip(g.models, g.comps, strict=True)]}
                   for g, d in zip(groups, comparisons, strict=True)],
    }
    return Section(name="icl-vs-finetuning", title="ICL versus fine-tuning (Dai et al., 2023)",
                   description=_description(groups, task_list, k, n_test, grid, seed),
                   checks=checks, findings=findings, tables=tables,
                   figures=figures, data=to_jsonable(data), seconds=time.perf_counter() - t0)


def _settings(quick: bool, k: Any, n_test: Any, lr_grid: Sequence[float] | None
              ) -> tuple[int, int, tuple[float, ...]]:
    """``k``, ``n_test`` and the sorted learning-rate grid of a run, defaults filled in and
    checked."""
    if k is None:
        k = QUICK_K if quick else FULL_K
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if n_test is None:
        n_test = QUICK_N_TEST if quick else FULL_N_TEST
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1:
        raise InputError(f"n_test must be a positive integer, got {n_test!r}")
    if lr_grid is None:
        lr_grid = QUICK_LR_GRID if quick else LR_GRID
    grid = tuple(sorted({_check_lr(x, "lr_grid entries") for x in lr_grid}))
    if not grid:
        raise InputError("lr_grid must hold at least one learning rate")
    return k, n_test, grid


def _demo_sets(task_list: list[ph.TaskItems], k: int, seed: int,
               n_sets: int = 1) -> list[list[list[tuple[str, str]]]]:
    """Per task ``n_sets`` label-balanced sets of ``k`` demonstrations, each in a seeded random
    order and drawn independently (the first set is the one a one-set run draws)."""
    demo_sets = []
    for ti, task in enumerate(task_list):
        sets = []
        for s in range(n_sets):
            rng = np.random.default_rng([seed, ti] if s == 0 else [seed, ti, s])
            idx = ph.balanced_indices(task.pool_labels, k, rng)
            sets.append(task.demos(idx[rng.permutation(idx.size)]))
        demo_sets.append(sets)
    return demo_sets


def _compare(groups_m: list[list[ph.ModelUnderTest]], task_list: list[ph.TaskItems],
             demo_sets: list[list[list[tuple[str, str]]]], grid: tuple[float, ...], seed: int,
             progress: bool, parts: ph.Parts | None = None) -> list[_Group]:
    """ICL against fine-tuning for every model, task and demonstration set (``demo_sets``
    per task, per set); the controls are fine-tuned with the learning rate chosen for their
    trained model on the same set. ``parts`` keeps each finished comparison."""
    parts = parts or ph.Parts(None, "icl-vs-finetuning", {})
    groups: list[_Group] = []
    for gi, grp in enumerate(groups_m):
        comps: list[list[Comparison]] = [[] for _ in grp]
        for mi, m in enumerate(grp):
            ws: list[FineTuneWorkspace] = []            # one float32 copy per model, on demand

            def compare(m: Any, task: ph.TaskItems, demos: list[tuple[str, str]],
                        rate: float | None, sub: int, ws: list[FineTuneWorkspace] = ws
                        ) -> Comparison:
                if not ws:
                    ws.append(FineTuneWorkspace(m.loaded))
                return icl_vs_finetuning(m.loaded, task, demos, lr=rate, lr_grid=grid,
                                         seed=sub, progress=progress, workspace=ws[0])

            units = [(ti, si, task, demos) for ti, (task, sets) in
                     enumerate(zip(task_list, demo_sets, strict=True))
                     for si, demos in enumerate(sets)]
            for ui, (ti, si, task, demos) in enumerate(units):
                rate = None if mi == 0 else comps[0][ui].lr
                sub = _sub_seed(seed, gi, ti, mi) if si == 0 else _sub_seed(seed, gi, ti, mi, si)
                c = parts.run(functools.partial(compare, m, task, demos, rate, sub),
                              model=m, task=ti, demo_set=si, demos=demos, lr=rate,
                              sub_seed=sub)
                comps[mi].append(dataclasses.replace(c, demo_set=si))
            ws.clear()
        groups.append(_Group(grp, comps))
    return groups


def _checks_and_findings(groups: list[_Group], seed: int
                         ) -> tuple[list[Check], list[str], list[dict[str, Any]]]:
    """The controlled checks and findings of every group, and each group's comparisons."""
    checks: list[Check] = []
    pvalues: list[float] = []
    tests: list[str] = []
    floors: list[float] = []
    findings: list[str] = []
    comparisons = []
    for g in groups:
        c, p, t, fl, d, f = _checks(g, seed)
        checks += c
        pvalues += p
        tests += t
        floors += fl
        findings += f
        comparisons.append(d)
    checks = ph.holm_checks(checks, pvalues, tests, floors=floors)
    for g in groups:
        tr = g.comps[0]
        findings.append(
            f"{g.models[0].name}: mean accuracy over {len(tr)} {g.units.split(' (')[0]}: "
            "zero-shot "
            f"{np.mean([c.accuracy('zsl') for c in tr]):.3f}, ICL "
            f"{np.mean([c.accuracy('icl') for c in tr]):.3f}, fine-tuned "
            f"{np.mean([c.accuracy('ft') for c in tr]):.3f}; learning rates chosen by "
            "training accuracy: " + ", ".join(f"{c.unit} {c.lr:g}" for c in tr) + ".")
    return checks, findings, comparisons


def _tables(groups: list[_Group], comparisons: list[dict[str, Any]],
            task_list: list[ph.TaskItems], k: int) -> list[Table]:
    tables = [_results_table(groups, k),
              _reference_table(groups, comparisons, task_list, k),
              _layer_table(groups, comparisons)]
    search_rows = tuple((g.models[0].name, c.unit, r, a, nll, r == c.lr)
                        for g in groups for c in g.comps[0] for r, a, nll in c.lr_search)
    if search_rows:
        tables.append(Table("Learning-rate choice (training accuracy on the demonstrations)",
                            ("model", "task", "lr", "train accuracy", "train NLL", "chosen"),
                            search_rows))
    return tables


def _results_table(groups: list[_Group], k: int) -> Table:
    rows = []
    for g in groups:
        for m, cs in zip(g.models, g.comps, strict=True):
            for c in cs:
                rows.append((m.name, m.role, c.unit, len(c.labels), c.lr, c.train_accuracy,
                             c.accuracy("zsl"), c.accuracy("icl"), c.accuracy("ft"),
                             c.rec.corrected, c.rec.recalled, c.rec.value,
                             float(np.nanmean(c.simaou)) if np.isfinite(c.simaou).any()
                             else math.nan,
                             float(np.nanmean(c.random_simaou))
                             if np.isfinite(c.random_simaou).any() else math.nan,
                             c.accuracy("ft_random_labels"),
                             float(np.nanmean(c.random_label_simaou))
                             if np.isfinite(c.random_label_simaou).any() else math.nan))
    return Table(f"ZSL, ICL ({k} demonstrations) and fine-tuning per model and task",
                 ("model", "role", "task", "n", "FT lr", "FT train acc", "ZSL acc",
                  "ICL acc", "FT acc", "FT corrections", "also ICL's", "Rec2FTP",
                  "SimAOU (layer mean)", "random-vector SimAOU", "FT random-label acc",
                  "random-label FT SimAOU"), tuple(rows))


def _reference_table(groups: list[_Group], comparisons: list[dict[str, Any]],
                     task_list: list[ph.TaskItems], k: int) -> Table:
    ref = [(f"Dai et al. (2023) {name}", "trained", "6 datasets, 32 demos", v["rec2ftp"],
            v["simaou"], v["simaou_random"]) for name, v in DAI_2023.items()]
    for g, d in zip(groups, comparisons, strict=True):
        sims = [d["simaou"]["trained"], *d["simaou"]["controls"]]
        for i, (m, s) in enumerate(zip(g.models, sims, strict=True)):
            a, b = g.rec_counts(i)
            rnd = _nanmean0(g.pooled(i, "random")[:, None])[0]
            ref.append((f"ours: {m.name}", m.role,
                        f"{len(task_list)} tasks, {k} demos, {b} FT corrections",
                        100.0 * a / b if b else math.nan, s["value"], float(rnd)))
    return Table("Ours beside Dai et al. (2023) (Rec2FTP in %, pooled over tasks)",
                 ("model", "role", "setting", "Rec2FTP %", "SimAOU",
                  "SimAOU random vectors"), tuple(ref))


def _layer_table(groups: list[_Group], comparisons: list[dict[str, Any]]) -> Table:
    layer_rows = []
    for g, d in zip(groups, comparisons, strict=True):
        rnd = _nanmean0(np.concatenate([c.random_cos for c in g.comps[0]]))
        for layer, c in enumerate(d["per_layer"]):
            t = c["trained"]
            layer_rows.append((g.models[0].name, layer, t["value"], t["low"], t["high"],
                               c["low"], c["high"], float(rnd[layer]), bool(c["outside"])))
    return Table("SimAOU per layer (trained with 95% interval, control spread, "
                 "random-vector baseline)",
                 ("model", "layer", "SimAOU", "low", "high", "control low",
                  "control high", "random vectors", "outside"), tuple(layer_rows))


def _description(groups: list[_Group], task_list: list[ph.TaskItems], k: int, n_test: int,
                 grid: tuple[float, ...], seed: int) -> str:
    L = groups[0].comps[0][0].cos.shape[1] if groups and groups[0].comps[0] else 0
    S = 1 + max((c.demo_set for c in groups[0].comps[0]), default=0) if groups else 1
    unit = "task" if S == 1 else "(task, set)"
    sets = ("one label-balanced set" if S == 1 else
            f"{S} independently drawn label-balanced sets (each with its own fine-tuning run)")
    return (
        f"ICL against fine-tuning after Dai et al. (2023) on {', '.join(t.name for t in task_list)}"
        f" ({len(task_list)} tasks), models {', '.join(g.models[0].name for g in groups)}, each "
        f"with {len(groups[0].models) - 1} random-init control(s). Per task {sets} "
        f"of k={k} demonstrations in a random order and {n_test} test items (seed {seed}). "
        "ZSL: instruction + query; ICL: the same with the demonstrations; FT: a float32 copy "
        "whose k_proj/v_proj (W_K, W_V) alone are trained with plain SGD, one step per "
        "demonstration in order (batch 1), loss = cross-entropy of the label word after the "
        f"demonstration's zero-shot prompt, then zero-shot prompts; learning rate per {unit} "
        f"from {list(grid)}: the smallest with the highest training accuracy on the "
        "demonstrations, the controls fine-tuned with their model's rate. Rec2FTP = share of "
        "FT's corrections "
        "(FT right, ZSL wrong) that ICL also makes. SimAOU = mean over test items of the cosine "
        "between Update_ICL = AO(ICL prompt) - AO(ZSL prompt) and Update_FT = AO_FT(ZSL prompt) "
        "- AO(ZSL prompt), AO = each layer's self-attention output (o_proj, before the "
        f"residual add) at the prompt's last token ({L} layers); random-vector baseline: the "
        "cosine with a seeded Gaussian vector; random-label fine-tune: the same fine-tuning "
        "(inputs, steps, learning rate) with the demonstrations' labels shuffled among them "
        "(seeded; the label counts stay the set's), the SimAOU claim's null (random vectors "
        "are isotropic and attention-output updates are not, so any two updates beat them; "
        "this fine-tune keeps all but the input-label mapping). Checks follow the control "
        "rule: SimAOU paired "
        f"with each control per {unit} (two-sided exact sign-flip test, every control, one "
        "direction), Rec2FTP (over each model's own corrections, so not paired) outside the "
        "controls' 95% bootstrap intervals. The Rec2FTP claim is tested, not read off a point "
        "estimate: ICL's rate of right answers on FT's corrections against its rate on the "
        "zero-shot errors FT leaves, one-sided Fisher exact test stratified by task "
        "(conditional on each task's margins"
        + ("" if S == 1 else "; each task's first set: the sets share the test items, so "
           "their tables are not independent strata")
        + "). Each claim's p-value (SimAOU: paired "
        "sign-flip test of SimAOU minus the random-label fine-tune's over the "
        f"{unit + 's' if S == 1 else unit + ' units'}, the unit that is drawn: each has one "
        "demonstration set and one fine-tuning run; Rec2FTP: "
        f"the Fisher test) is Holm-corrected over this section's {2 * len(groups)} claim "
        f"checks (the family is the section's claims); a check needs Holm p < {ph.ALPHA:g}.")
