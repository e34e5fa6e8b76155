"""Few-shot classification by label log-likelihood, and its metrics.

:class:`FewShotScorer` scores every label of a task after a few-shot prompt: the score of label
``l`` for query ``x`` is ``sum_j log p(w_l[j] | prompt(x), w_l[:j])``, the summed log-probability
of the label's verbaliser tokens ``w_l`` (``label_prefix + word`` tokenized as it follows a
query: the tokens of ``query + label`` past the query's, as in lm-evaluation-harness), so
multi-token labels are scored exactly.

Cost model. A prompt is ``prefix + context + label``:

- the *prefix* is shared by many queries — the instruction and, when one demonstration set
  serves the whole test set, all the demonstrations. It is encoded **once**; its key/value cache
  is copied for every batch (``reuse_prefix=True``);
- the *context* is what differs per query (the query; or the demonstrations and the query when
  every query has its own demonstrations). Contexts are batched with right padding after the
  prefix cache, with explicit position ids; only the logits at each context's last token are
  computed (``logits_to_keep``);
- the labels are appended to the context's cache, so the context is encoded once however many
  labels there are. Single-token label sets need no extra pass. Multi-token labels are scored in
  *one* extra row per query (``label_tree=True``, default): the label tokens form a trie (labels
  sharing leading tokens share nodes), written after the context's cache with explicit position
  ids (every label starts at the position after the query) and a 4-D attention mask that lets a
  node see the prompt and its own ancestors only - so each label token sees exactly what it sees
  when the label is written alone after the prompt, and the cache is never copied per label.
  Sliding-window models (a window counts cache slots, and their caches keep only the window) use
  one row per (query, label) with the label written inline after the context instead.

Memory. Scoring needs no attention weights, so it runs through PyTorch's fused attention
(``attn="auto"``: transformers' ``sdpa`` implementation where the model supports it, restored to
the model's own implementation afterwards; ``eager`` otherwise, e.g. Gemma 2's soft-capping), whose
memory is linear in the prompt length instead of quadratic. Batches are formed over the
length-sorted prompts by a token budget (``max_batch_tokens``): a batch holds at most that many
tokens of key/value cache (rows x (cached prefix + padded context + label tokens)), and its
estimated memory (:class:`MemoryModel`: cache, activations, masks, eager attention weights,
logits) at most that of so many tokens; ``batch_size`` bounds the rows. The default budget is
:data:`BATCH_MEMORY` (1 GiB) over the model's bytes per token. A prompt over the budget runs alone;
one that even alone would need more memory than is available (``max_prompt_tokens``) is refused
before anything runs, with an :class:`~icldistill.core.validation.InputError` naming it.

Exactness: a query is scored with the prefix cache only if the prefix tokens are exactly the
leading tokens of the whole tokenized prompt; otherwise (a tokenizer that merges across the
boundary) that query is encoded from scratch. Scores with and without reuse agree to float
rounding (tested).

Contextual calibration (Zhao et al., 2021): with ``calibrate=True`` the content-free queries
(``"N/A"``, ``""``, ``"[MASK]"``) are scored with the same demonstrations; label probabilities are
divided by their mean content-free probabilities before the argmax.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from icldistill.core.metrics import accuracy, bootstrap_values, label_pair, macro_f1
from icldistill.core.results import Result
from icldistill.core.validation import InputError
from icldistill.data.prompts import QUERY, Demonstration, Prompt, Template

__all__ = [
    "BATCH_MEMORY",
    "CONTENT_FREE",
    "ClassificationMetrics",
    "FewShotScorer",
    "LabelTrie",
    "MemoryModel",
    "MetricResult",
    "ScoreResult",
    "accuracy",
    "available_memory",
    "bootstrap_ci",
    "bootstrap_values",
    "cache_argument",
    "classification_metrics",
    "context_limit",
    "has_sliding_window",
    "leading_special_tokens",
    "macro_f1",
    "output_cache",
    "prompt_token_ids",
]

CONTENT_FREE: tuple[str, ...] = ("N/A", "", "[MASK]")

#: Memory one scoring batch may take by default (bytes): the default ``max_batch_tokens`` is this
#: over :attr:`MemoryModel.token_bytes` (16k tokens for qwen2.5-0.5b in bfloat16, 12k for
#: smollm2-135m in float32). Measured peaks above the loaded model with k = 8 prompts of ~1,800
#: tokens: 1.06 GB and 1.23 GB (``benchmarks/results/memory_2cpu.md``).
BATCH_MEMORY = 1 << 30


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreResult(Result):
    """Label scores for a batch of queries.

    Attributes
    ----------
    logprobs : numpy.ndarray ``[n, L]`` float64
        Summed log-probability of each label's tokens after each prompt.
    labels : tuple of str, length ``L``
        Label names, in column order.
    calibration : numpy.ndarray ``[n, L]`` or None
        Mean content-free label probabilities (normalised over the labels) used for each query
        when calibration was requested.
    n_tokens : int
        Tokens run through the model (prefix passes counted once).
    n_prompt_tokens : int
        Total length of all prompts (what encoding every prompt from scratch would process,
        labels excluded).
    seconds : float
        Wall time of the scoring.
    """

    logprobs: np.ndarray
    labels: tuple[str, ...]
    calibration: np.ndarray | None = None
    n_tokens: int = 0
    n_prompt_tokens: int = 0
    seconds: float = 0.0

    def probabilities(self) -> np.ndarray:
        """``[n, L]`` label probabilities normalised over the label set (calibrated if the
        calibration was computed)."""
        lp = self.logprobs - self.logprobs.max(axis=1, keepdims=True)
        p = np.exp(lp)
        p /= p.sum(axis=1, keepdims=True)
        if self.calibration is not None:
            p = p / self.calibration
            p /= p.sum(axis=1, keepdims=True)
        return p

    @property
    def predictions(self) -> np.ndarray:
        """``[n]`` predicted label names (argmax; ties go to the first label)."""
        if self.calibration is not None:
            idx = self.probabilities().argmax(axis=1)
        else:
            idx = self.logprobs.argmax(axis=1)
        return np.asarray(self.labels, dtype=object)[idx]


@dataclass
class _Item:
    prefix: int                  # index into the prefix table
    context: list[int]           # token ids after the prefix
    group: int                   # calibration group (-1 for ordinary queries)


def context_limit(model: Any, tokenizer: Any, max_length: int | None = None) -> int:
    """The longest prompt (in tokens) the scorer accepts: ``max_length`` if given, else the
    smaller of the model's ``max_position_embeddings`` (or ``n_positions``,
    ``max_sequence_length``) and the tokenizer's ``model_max_length``."""
    if max_length is not None:
        return int(max_length)
    limits = []
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            limits.append(v)
            break
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < 10**7:
        limits.append(v)
    return min(limits) if limits else 10**9


@dataclass(frozen=True)
class MemoryModel:
    """What a scoring forward pass holds in memory, from the model's configuration.

    A pass over ``rows`` rows of ``new`` tokens attending to ``keys`` keys (cache included) holds

    - the key/value cache of every layer, ``rows * keys * kv_bytes``, and one layer's keys and
      values repeated over the query heads (grouped-query attention),
      ``rows * keys * 2 * heads * head_dim * dsize``;
    - one layer's activations, ``rows * new * act_bytes`` (``act_bytes`` =
      ``dsize * (6 * hidden + 4 * intermediate)``: residual, norm, q/k/v, attention output; the
      MLP's gate, up, activation and product);
    - the attention mask, ``rows * new * keys * (1 + dsize)`` (a boolean mask and the float mask
      the fused kernel makes of it), and with eager attention the weights,
      ``rows * heads * new * keys * (2 * dsize + 4)`` (scores, scores + mask, float32 softmax);
    - the kept logits, ``12 * vocab`` bytes each (float32 logits and log-softmax, with slack).

    ``token_bytes`` (cache + repeated keys/values + activations per token) converts a memory into
    a token budget. Measured against the peak resident memory of real batches
    (``benchmarks/results/memory_2cpu.md``) the estimate is within about -25% (sdpa, float32)
    to +45% (eager).
    """

    kv_bytes: int
    act_bytes: int
    heads: int
    head_dim: int
    dsize: int
    vocab: int
    eager: bool

    @classmethod
    def of(cls, model: Any, eager: bool) -> MemoryModel:
        cfg = getattr(model, "config", None)
        cfg = getattr(cfg, "get_text_config", lambda: cfg)()

        def get(*names: str, default: int = 0) -> int:
            for n in names:
                v = getattr(cfg, n, None)
                if isinstance(v, int) and v > 0:
                    return v
            return default

        hidden = get("hidden_size", "n_embd", "d_model", default=1024)
        layers = get("num_hidden_layers", "n_layer", "num_layers", default=24)
        heads = get("num_attention_heads", "n_head", "num_heads", default=16)
        kv_heads = get("num_key_value_heads", "num_kv_heads", default=heads)
        head_dim = get("head_dim", default=max(1, hidden // heads))
        inter = get("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
        vocab = get("vocab_size", default=50_000)
        try:
            dsize = next(model.parameters()).element_size()
        except (AttributeError, StopIteration, TypeError):
            dsize = 4
        return cls(kv_bytes=2 * layers * kv_heads * head_dim * dsize,
                   act_bytes=dsize * (6 * hidden + 4 * inter), heads=heads, head_dim=head_dim,
                   dsize=dsize, vocab=vocab, eager=eager)

    @property
    def token_bytes(self) -> int:
        """Bytes per token of a batch (cache, repeated keys/values, activations)."""
        return self.kv_bytes + 2 * self.heads * self.head_dim * self.dsize + self.act_bytes

    def forward_bytes(self, rows: int, new: int, keys: int, logits: int) -> int:
        """Estimated peak bytes of one forward pass (see the class docstring)."""
        n = rows * keys * (self.kv_bytes + 2 * self.heads * self.head_dim * self.dsize)
        n += rows * new * self.act_bytes
        n += rows * new * keys * (1 + self.dsize)
        if self.eager:
            n += rows * self.heads * new * keys * (2 * self.dsize + 4)
        return n + logits * self.vocab * 12

    def default_batch_tokens(self) -> int:
        """The default token budget: :data:`BATCH_MEMORY` over :attr:`token_bytes`."""
        return int(min(1 << 16, max(512, BATCH_MEMORY // max(1, self.token_bytes))))


def available_memory() -> int | None:
    """Bytes of memory available to this process now: ``MemAvailable`` of ``/proc/meminfo``
    (else psutil's estimate), or the cgroup's limit less its usage where that is lower; None
    where unknown. ``max_prompt_tokens="auto"`` refuses prompts against it."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            avail = int(psutil.virtual_memory().available)
        except Exception:   # psutil missing or unsupported: no estimate
            avail = None
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit != "max":
            left = max(0, int(limit) - used)
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def _attn_configs(model: Any) -> list[tuple[Any, Any]]:
    """Every configuration object of a model (its own, nested sub-configurations, those of
    sub-models) with its stored attention implementation, to restore them exactly."""
    seen: dict[int, tuple[Any, Any]] = {}
    stack = [getattr(model, "config", None)]
    modules = getattr(model, "modules", None)
    if callable(modules):
        stack += [getattr(m, "config", None) for m in modules()]
    while stack:
        cfg = stack.pop()
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation_internal"):
            continue
        seen[id(cfg)] = (cfg, cfg._attn_implementation_internal)
        for key in getattr(cfg, "sub_configs", {}) or {}:
            stack.append(getattr(cfg, key, None))
    return list(seen.values())


def _current_attention(model: Any) -> str | None:
    v = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return v if isinstance(v, str) else None


@contextlib.contextmanager
def _attention(model: Any, implementation: str | None) -> Iterator[None]:
    """Run ``model`` with ``implementation`` (transformers' attention interface) inside the
    block; every configuration's previous setting is put back afterwards, also on error."""
    if implementation is None or _current_attention(model) == implementation:
        yield
        return
    saved = _attn_configs(model)
    try:
        model.set_attn_implementation(implementation)
        yield
    finally:
        for cfg, value in saved:
            cfg._attn_implementation_internal = value


def _resolve_attention(model: Any, attn: str | None) -> str | None:
    """The attention implementation the scorer runs ``model`` with (None: as it is)."""
    current = _current_attention(model)
    if attn is None:
        return current
    if attn not in ("auto", "sdpa", "eager"):
        raise InputError(f"attn must be 'auto', 'sdpa', 'eager' or None, got {attn!r}")
    want = "sdpa" if attn == "auto" else attn
    if current == want:
        return want
    if not callable(getattr(model, "set_attn_implementation", None)):
        if attn == "auto":
            return current
        raise InputError(f"{type(model).__name__} cannot switch its attention implementation")
    import logging

    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.ERROR)          # "does not support setting ..." warnings: checked below
    try:
        with _attention(model, want):
            ok = _current_attention(model) == want
        reason = "transformers kept its implementation"
    except (ValueError, ImportError, NotImplementedError, AttributeError, KeyError,
            TypeError) as exc:
        ok, reason = False, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    finally:
        log.setLevel(level)
    if ok:
        return want
    if attn == "auto":
        return current
    raise InputError(f"{type(model).__name__} cannot use {want!r} attention ({reason}); "
                     f"use attn='auto'")


class LabelTrie:
    """The input tokens of multi-token labels as a trie (``label_mode == "trie"``).

    A label ``t`` feeds ``t[:-1]`` after the prompt, and the node of ``t[:d + 1]`` (token
    ``t[d]``, depth ``d``) predicts ``t[d + 1]``. Labels sharing leading tokens share nodes (a
    node depends only on the prompt and its path), so all labels are scored in one row of ``M``
    nodes written after the prompt.

    Parameters
    ----------
    label_ids : list of ``C`` lists of int
        Each label's tokens.

    Attributes
    ----------
    tokens : list of ``M`` int
        The token of each node, in first-seen order.
    depth : list of ``M`` int
        Each node's depth (its position after the prompt, from 0).
    targets : list of ``C`` lists of ``(node, next token)``
        What each label adds to its first token's log-probability: ``log p(next | node)``.
    ancestors : bool Tensor ``[M, M]``
        ``ancestors[i, j]``: node ``i`` may see node ``j`` (``j`` on its path, itself included).
    """

    def __init__(self, label_ids: list[list[int]]) -> None:
        index: dict[tuple[int, ...], int] = {}
        self.tokens: list[int] = []
        self.depth: list[int] = []
        path: list[list[int]] = []
        self.targets: list[list[tuple[int, int]]] = []   # per label: (node, next token)
        for t in label_ids:
            tg = []
            for d in range(len(t) - 1):
                key = tuple(t[: d + 1])
                if key not in index:
                    index[key] = len(self.tokens)
                    self.tokens.append(t[d])
                    self.depth.append(d)
                    path.append((path[index[key[:-1]]] if d else []) + [index[key]])
                tg.append((index[key], t[d + 1]))
            self.targets.append(tg)
        m = len(self.tokens)
        self.ancestors = torch.zeros((m, m), dtype=torch.bool)   # [node, node it may see]
        for i, a in enumerate(path):
            self.ancestors[i, a] = True


def leading_special_tokens(tokenizer: Any) -> list[int]:
    """Special tokens the tokenizer puts before a text (e.g. BOS), as :class:`FewShotScorer`
    prepends them to every prompt.

    Found by tokenizing ``"a"`` with and without special tokens: the tokens before the
    unadorned encoding. ``[]`` for tokenizers that add none.
    """
    with_ = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for i in range(len(with_) - len(without) + 1):
        if with_[i : i + len(without)] == without:
            return with_[:i]
    return []


def prompt_token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of whole prompt texts exactly as :class:`FewShotScorer` feeds them.

    Parameters
    ----------
    tokenizer : Hugging Face tokenizer
    texts : sequence of str, length ``n``
        Whole rendered prompts (e.g. ``scorer.prompt(demos, query).render().text``).

    Returns
    -------
    list of ``n`` lists of int
        :func:`leading_special_tokens`, then the text tokenized at once without special
        tokens (the scorer's prefix and context tokens of that prompt, concatenated).
    """
    texts = list(texts)
    if not texts:
        return []
    spec = leading_special_tokens(tokenizer)
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [spec + list(e) for e in enc]


class FewShotScorer:
    """Score the labels of a classification task after few-shot prompts.

    Parameters
    ----------
    model : transformers causal LM (eval mode)
    tokenizer : matching Hugging Face tokenizer
    label_words : mapping label name -> verbaliser word(s)
        The label ``l`` is scored as the tokens of ``label_prefix + label_words[l]`` following the
        query. Demonstrations show the verbaliser too.
    template : Template, optional
        How demonstrations and the query are written (default
        :class:`~icldistill.data.prompts.Template`).
    instruction : str, optional
        Text before the demonstrations.
    batch_size : int
        At most this many queries per forward pass.
    max_length : int, optional
        Context limit; defaults to the model's ``max_position_embeddings`` (and the tokenizer's
        ``model_max_length``). Longer prompts raise :class:`InputError`.
    label_prefix : str
        Put between the query and the label word (default one space).
    max_batch_tokens : int, ``"auto"`` or None
        Token budget of a forward pass: rows x (cached prefix + padded context + label tokens)
        stays within it, and so does the batch's estimated memory counted in tokens
        (:class:`MemoryModel`). ``"auto"`` (default): :data:`BATCH_MEMORY` over the model's
        bytes per token. A prompt longer than the budget runs alone. None: fixed batches of
        ``batch_size`` (the behaviour before budgets).
    max_prompt_tokens : int, ``"auto"`` or None
        Prompts (labels included) longer than this raise :class:`InputError` naming the query
        before anything runs. ``"auto"`` (default): refuse a prompt only when scoring it alone
        would need more memory than is available (:class:`MemoryModel`); None: never.
    attn : ``"auto"``, ``"sdpa"``, ``"eager"`` or None
        Attention implementation while scoring (the model's own is restored afterwards).
        ``"auto"`` (default): ``"sdpa"`` (fused, memory linear in the length) where the model
        supports it, else the model's own; None: leave the model as it is.
    label_tree : bool
        Score multi-token labels in one trie-masked row per query (default). False appends them
        to a copy of the context's cache per label (the reference; slower, ``L`` times the
        memory).
    demo_labels : ``"names"`` or ``"shown"``
        ``"names"`` (default): demonstration labels are label names, written with their
        verbaliser. ``"shown"``: they are written exactly as given (e.g. another task's label
        words, for interference experiments); only the scored labels use ``label_words``.

    Attributes
    ----------
    tokens_run : int
        Tokens run through the model by this scorer so far, over all its calls (a prefix pass
        counts each time its prefix is encoded). It is up to date when ``score``'s
        ``on_batch`` is called, so the difference between two calls is one batch's tokens.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        label_words: Mapping[str, str],
        *,
        template: Template | None = None,
        instruction: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        label_prefix: str = " ",
        max_batch_tokens: int | Literal["auto"] | None = "auto",
        max_prompt_tokens: int | Literal["auto"] | None = "auto",
        attn: Literal["auto", "sdpa", "eager"] | None = "auto",
        label_tree: bool = True,
        demo_labels: Literal["names", "shown"] = "names",
    ) -> None:
        if demo_labels not in ("names", "shown"):
            raise InputError(f"demo_labels must be 'names' or 'shown', got {demo_labels!r}")
        self.demo_labels = demo_labels
        if not label_words:
            raise InputError("label_words is empty: a task needs at least one label")
        words = {str(k): str(v) for k, v in label_words.items()}
        if any(not w.strip() for w in words.values()):
            raise InputError(f"every label needs a non-empty verbaliser, got {words}")
        if len(set(words.values())) != len(words):
            raise InputError(f"two labels share a verbaliser: {words}")
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.label_words = words
        self.labels = tuple(words)
        self.template = template or Template()
        self.instruction = instruction
        self.batch_size = int(batch_size)
        self.max_length = context_limit(model, tokenizer, max_length)
        self.label_prefix = label_prefix
        self._specials = self._leading_specials()
        self._label_ids = []
        probe = self.template.query.format(input="a")      # the text a label follows
        probe_ids = self._encode(probe)
        for lab in self.labels:
            ids = self._label_tokens(label_prefix + words[lab], probe, probe_ids)
            if not ids:
                raise InputError(f"label {lab!r} tokenizes to no tokens")
            self._label_ids.append(ids)
        self._sliding = has_sliding_window(model)
        self._cache_kw = cache_argument(model)
        self.label_tree = bool(label_tree)
        self._trie = LabelTrie(self._label_ids)
        self.attn_implementation = _resolve_attention(model, attn)
        self.memory = MemoryModel.of(model, eager=self.attn_implementation != "sdpa")
        self.max_batch_tokens = _budget("max_batch_tokens", max_batch_tokens,
                                        self.memory.default_batch_tokens())
        self.max_prompt_tokens = _budget("max_prompt_tokens", max_prompt_tokens, "auto")
        self.tokens_run = 0

    @property
    def label_mode(self) -> str:
        """How labels are scored: ``"single"`` (one-token labels, no extra pass), ``"trie"``
        (one trie-masked row per query), ``"inline"`` (sliding-window models: one row per query
        and label, label written after the context) or ``"copy"`` (the context's cache copied
        per label)."""
        if all(len(t) == 1 for t in self._label_ids):
            return "single"
        if self._sliding:
            return "inline"
        if self.label_tree and self.attn_implementation in ("sdpa", "eager"):
            return "trie"
        return "copy"

    # ---- tokenization ------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _label_tokens(self, label: str, probe: str, probe_ids: list[int]) -> list[int]:
        """The tokens of ``label`` as they follow a query (``probe``, tokenized as
        ``probe_ids``): those of ``probe + label`` past the probe's (lm-evaluation-harness's
        continuation tokens), else the label's own.

        The two agree for byte-level BPE tokenizers (SmolLM2, Qwen2.5, GPT-2). A SentencePiece
        tokenizer that marks the start of every text it encodes (Llama 2, Phi-3) encodes
        ``" positive"`` alone as ``['▁', '▁positive']`` but ``['▁positive']`` after the query:
        scoring the lone encoding, which the model never sees after a prompt, got the labels'
        scores wrong by several nats.
        """
        full = self._encode(probe + label)
        n = len(probe_ids)
        if len(full) > n and full[:n] == probe_ids:
            return full[n:]
        return self._encode(label)

    def _leading_specials(self) -> list[int]:
        """Special tokens the tokenizer puts before a text (e.g. BOS)."""
        return leading_special_tokens(self.tokenizer)

    def verbalize(self, label: Any) -> str:
        """The verbaliser of a label name (raises :class:`InputError` for an unknown label)."""
        try:
            return self.label_words[str(label)]
        except KeyError:
            raise InputError(f"unknown label {label!r}; this task's labels are "
                             f"{list(self.labels)}") from None

    def _demos(self, demos: Sequence[Any]) -> list[Demonstration]:
        out = []
        for d in demos:
            if isinstance(d, Demonstration):
                x, y = d.input, d.label
            else:
                x, y = d
            out.append(Demonstration(str(x), str(y) if self.demo_labels == "shown"
                                     else self.verbalize(y)))
        return out

    def prompt(self, demonstrations: Sequence[Any], query: str) -> Prompt:
        """The :class:`Prompt` for one query (demonstration labels are label *names*)."""
        return Prompt(self._demos(demonstrations), query, self.instruction, self.template)

    # ---- public scoring ----------------------------------------------------------------

    # long: 36 lines of NumPy docstring; the code is 57
    def score(
        self,
        queries: Sequence[str],
        demonstrations: Sequence[Any] | None = None,
        *,
        per_query: Sequence[Sequence[Any]] | None = None,
        reuse_prefix: bool = True,
        calibrate: bool = False,
        progress: bool = False,
        on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
        on_context: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> ScoreResult:
        """Label log-probabilities ``[n, L]`` for every query.

        Parameters
        ----------
        queries : sequence of str, length ``n``
        demonstrations : sequence of ``(input, label)`` pairs, optional
            One demonstration set shared by all queries (its prefix is encoded once).
        per_query : sequence of ``n`` demonstration sets, optional
            A separate demonstration set for every query (exclusive with ``demonstrations``).
        reuse_prefix : bool
            Encode shared prefixes once (default). ``False`` encodes every prompt from scratch
            (the reference the speed benchmark compares with).
        calibrate : bool
            Contextual calibration with content-free queries (see the module docstring).
        progress : bool
            Show a progress bar over batches.
        on_batch : callable, optional
            Called with ``(query_indices [b], logprobs [b, L])`` after every batch (to persist
            partial results).
        on_context : callable, optional
            Called right after each batch's *context pass* (the forward pass over the prompts'
            contexts, before any label-token pass) with ``(query_indices [R], last [R])``: row
            ``r`` of that pass belongs to query ``query_indices[r]`` (``-1``: a content-free
            calibration query) and its last prompt token (where the label is predicted) is at
            column ``last[r]`` of the pass's input (the tokens after the cached prefix).
            Forward hooks that keep a module's latest output (e.g. an attention layer's) can
            read ``output[r, last[r]]`` here: the activation at each query's prediction
            position, from the very pass that scores it. In ``label_mode == "inline"`` a query
            has one row per label (``R = b * L``), each with the same context. The prefix pass
            (run before a batch when its prefix is not cached yet) is not reported.

        Returns
        -------
        ScoreResult
            Label log-probabilities ``[n, L]`` (and the calibration, token counts, time).
        """
        t0 = time.perf_counter()
        queries = list(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise InputError(f"query {i} must be a string, got {type(q).__name__}")
        if demonstrations is not None and per_query is not None:
            raise InputError("give either one shared demonstration set or per-query sets")
        n = len(queries)
        if per_query is not None:
            if len(per_query) != n:
                raise InputError(f"per_query has {len(per_query)} demonstration sets for "
                                 f"{n} queries")
            sets = [self._demos(s) for s in per_query]
        else:
            shared = self._demos(demonstrations or [])
            sets = [shared] * n
        texts: list[tuple[str, str]] = []    # (prefix text, rest) per item
        groups: list[int] = []
        for q, s in zip(queries, sets, strict=True):
            texts.append(self._split(s, q, shared=per_query is None))
            groups.append(-1)
        cf_sets: list[list[Demonstration]] = []
        if calibrate:
            # content-free queries: once per distinct demonstration set
            keys: dict[tuple, int] = {}
            for s in sets:
                key = tuple(s)
                if key not in keys:
                    keys[key] = len(cf_sets)
                    cf_sets.append(s)
            set_of = [keys[tuple(s)] for s in sets]
            for g, s in enumerate(cf_sets):
                for cf in CONTENT_FREE:
                    texts.append(self._split(s, cf, shared=per_query is None))
                    groups.append(g)
        items, prefixes = self._tokenize(texts, groups, reuse_prefix)
        logprobs = np.zeros((len(items), len(self.labels)), dtype=np.float64)
        stats = {"tokens": 0}
        self._run(items, prefixes, logprobs, stats, progress, on_batch, n, on_context)
        calibration = None
        if calibrate:
            calibration = _content_free_probs(logprobs, items, n, len(cf_sets), set_of)
        n_prompt = sum(len(prefixes[it.prefix]) + len(it.context) for it in items[:n])
        return ScoreResult(logprobs[:n], self.labels, calibration, stats["tokens"], n_prompt,
                           time.perf_counter() - t0)

    # ---- internals ---------------------------------------------------------------------

    def _split(self, demos: list[Demonstration], query: str, shared: bool) -> tuple[str, str]:
        """(prefix text, rest): the prefix ends where the query starts (shared demonstrations)
        or where the first demonstration starts (per-query demonstrations)."""
        rendered = Prompt(demos, query, self.instruction, self.template).render()
        spans = {name: (a, b) for name, a, b in rendered.spans}
        cut = spans[QUERY][0]
        if not shared:
            cut = spans["prefix"][1] if "prefix" in spans else 0
        return rendered.text[:cut], rendered.text[cut:]

    def _tokenize(self, texts: list[tuple[str, str]], groups: list[int], reuse: bool
                  ) -> tuple[list[_Item], list[list[int]]]:
        """Tokenize every whole prompt once; its prefix is the leading run of tokens that end
        inside the prefix text (so prefix tokens are, by construction, exactly the leading
        tokens of the prompt); prompts with identical prefix tokens share one cache."""
        full = [a + b for a, b in texts]
        if not full:
            return [], [list(self._specials)]
        try:
            enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
        except (NotImplementedError, KeyError, TypeError):
            enc = self.tokenizer(full, add_special_tokens=False)
            offsets = None
        prefix_index: dict[tuple[int, ...], int] = {(*self._specials,): 0}
        prefixes: list[list[int]] = [list(self._specials)]
        items = []
        max_label = max(len(ids) for ids in self._label_ids)
        n_spec = len(self._specials)
        avail = available_memory() if self.max_prompt_tokens == "auto" else None
        for i, (pre, _) in enumerate(texts):
            ids = list(self._specials) + list(enc["input_ids"][i])
            total = len(ids) + max_label
            if total > self.max_length:
                what = f"query {i}" if groups[i] < 0 else "a content-free query"
                raise InputError(
                    f"the prompt of {what} is {total} tokens (labels included), longer than the "
                    f"model's context of {self.max_length}; use fewer or shorter demonstrations")
            cut = n_spec if reuse else 0
            if reuse and pre and offsets is not None:
                ends = [e for _, e in offsets[i]]
                while cut - n_spec < len(ends) and ends[cut - n_spec] <= len(pre):
                    cut += 1
                cut = min(cut, len(ids) - 1)     # keep at least one context token
            key = tuple(ids[:cut])
            if key not in prefix_index:
                prefix_index[key] = len(prefixes)
                prefixes.append(list(key))
            items.append(_Item(prefix_index[key], ids[cut:], groups[i]))
            self._check_prompt(i, groups[i], total, cut, len(ids) - cut, avail)
        return items, prefixes

    def _check_prompt(self, i: int, group: int, total: int, p_len: int, width: int,
                      avail: int | None) -> None:
        """Refuse a prompt that cannot fit ``max_prompt_tokens`` (or, ``"auto"``, the memory
        available), before anything runs."""
        limit = self.max_prompt_tokens
        if limit is None:
            return
        what = f"query {i}" if group < 0 else "a content-free query"
        fix = "use fewer or shorter demonstrations (a smaller k, or inputs cut to fewer words)"
        if limit != "auto":
            if total > limit:
                raise InputError(f"the prompt of {what} is {total} tokens (labels included), more "
                                 f"than max_prompt_tokens={limit}; {fix}, or raise "
                                 "max_prompt_tokens")
            return
        if avail is None:
            return
        need = max(self.memory.forward_bytes(1, p_len, p_len, 1) if p_len else 0,
                   self.batch_bytes(1, width, p_len))
        if need > avail:
            raise InputError(
                f"the prompt of {what} is {total} tokens (labels included); scoring it, even "
                f"alone, needs about {need / 2**30:.1f} GiB ({self.attn_implementation} "
                f"attention), more than the {avail / 2**30:.1f} GiB of memory available; {fix}, "
                "or free memory (max_prompt_tokens=None skips this check)")

    # ---- batches and their memory ----------------------------------------------------------

    def row_tokens(self, width: int, p_len: int) -> int:
        """Key/value-cache tokens one query's row(s) hold, label rows included, for a context
        padded to ``width`` tokens after a cached prefix of ``p_len`` (what
        ``max_batch_tokens`` counts per row)."""
        ctx = p_len + width
        mode = self.label_mode
        n_lab = len(self._label_ids)
        m = max(len(t) for t in self._label_ids) - 1
        if mode == "trie":
            return ctx + len(self._trie.tokens)
        if mode == "copy":
            return ctx + n_lab * (ctx + m)
        if mode == "inline":
            return n_lab * (ctx + m)
        return ctx

    def batch_bytes(self, rows: int, width: int, p_len: int) -> int:
        """Estimated peak memory (bytes) of scoring ``rows`` contexts of padded ``width`` after
        a prefix of ``p_len`` cached tokens, label passes included (:class:`MemoryModel`)."""
        mem = self.memory
        ctx = p_len + width
        mode = self.label_mode
        n_lab = len(self._label_ids)
        m = max(len(t) for t in self._label_ids) - 1
        if mode == "inline":
            r = rows * n_lab
            return mem.forward_bytes(r, width + m, ctx + m, r * rows * (m + 1))
        first = mem.forward_bytes(rows, width, ctx, rows * rows)
        if mode == "trie":
            n = len(self._trie.tokens)
            return max(first, mem.forward_bytes(rows, n, ctx + n, rows * n))
        if mode == "copy":   # the label pass's log-softmax is also copied to float64
            r = rows * n_lab
            return max(first, rows * ctx * mem.kv_bytes
                       + mem.forward_bytes(r, m, ctx + m, 2 * r * m))
        return first

    def fits(self, rows: int, width: int, p_len: int) -> bool:
        """Whether a batch of ``rows`` contexts (padded ``width``, ``p_len`` cached prefix
        tokens) is within ``max_batch_tokens``: its cache tokens (:meth:`row_tokens` per row)
        and its estimated memory (:meth:`batch_bytes`) counted in tokens. Always true without
        a budget."""
        budget = self.max_batch_tokens
        if budget is None:
            return True
        return (rows * self.row_tokens(width, p_len) <= budget
                and self.batch_bytes(rows, width, p_len) <= budget * self.memory.token_bytes)

    def _batches(self, items: list[_Item], prefixes: list[list[int]]
                 ) -> list[tuple[int, list[int]]]:
        """Batches per prefix over the length-sorted contexts (longest first): greedily as many
        rows as ``batch_size`` and the token budget allow (at least one)."""
        by_prefix: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            by_prefix.setdefault(it.prefix, []).append(i)
        batches: list[tuple[int, list[int]]] = []
        for p_idx, idx in by_prefix.items():
            idx = sorted(idx, key=lambda i: (-len(items[i].context), i))
            p_len = len(prefixes[p_idx])
            s = 0
            while s < len(idx):
                width = len(items[idx[s]].context)     # the longest of the batch
                rows = 1
                while (s + rows < len(idx) and rows < self.batch_size
                       and self.fits(rows + 1, width, p_len)):
                    rows += 1
                batches.append((p_idx, idx[s : s + rows]))
                s += rows
        return batches

    @torch.no_grad()
    def _run(self, items: list[_Item], prefixes: list[list[int]], out: np.ndarray,
             stats: dict[str, int], progress: bool,
             on_batch: Callable[[np.ndarray, np.ndarray], None] | None, n_queries: int,
             on_context: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
        from icldistill.core.progress import progress_bar

        model = self.model
        device = next(model.parameters()).device
        batches = self._batches(items, prefixes)
        caches: dict[int, Any] = {}
        bar = progress_bar(total=len(items), desc="scoring", unit="prompt", enabled=progress)
        try:
            with _attention(model, self.attn_implementation):
                self._run_batches(batches, items, prefixes, caches, out, stats, bar, on_batch,
                                  n_queries, device, on_context)
        finally:
            bar.close()

    def _run_batches(self, batches: list[tuple[int, list[int]]], items: list[_Item],
                     prefixes: list[list[int]], caches: dict[int, Any], out: np.ndarray,
                     stats: dict[str, int], bar: Any,
                     on_batch: Callable[[np.ndarray, np.ndarray], None] | None, n_queries: int,
                     device: torch.device,
                     on_context: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
        model = self.model
        for p_idx, idx in batches:
            if p_idx not in caches and prefixes[p_idx]:
                ids = torch.tensor([prefixes[p_idx]], device=device)
                # the cache is all that is needed: no logits over the prefix
                caches[p_idx] = output_cache(model(input_ids=ids, use_cache=True,
                                                logits_to_keep=1))
                stats["tokens"] += ids.shape[1]
                self.tokens_run += ids.shape[1]
            seen = None
            if on_context is not None:
                q = np.asarray([i if i < n_queries else -1 for i in idx], dtype=np.int64)

                def seen(rows: np.ndarray, last: np.ndarray, q: np.ndarray = q) -> None:
                    on_context(q[rows], last)
            scores = self._batch([items[i] for i in idx], caches.get(p_idx),
                                 len(prefixes[p_idx]), device, seen)
            n_context = sum(len(items[i].context) for i in idx)
            stats["tokens"] += n_context
            self.tokens_run += n_context
            out[idx] = scores
            if on_batch is not None:
                q = [i for i in idx if i < n_queries]
                if q:
                    on_batch(np.asarray(q, dtype=np.int64), out[q])
            bar.update(len(idx))
            if len(caches) > 4:  # per-query prefixes are not reused later
                caches.pop(next(iter(caches)))

    def _batch(self, batch: list[_Item], prefix_cache: Any, p_len: int,
               device: torch.device,
               seen: Callable[[np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
        """Label scores ``[b, L]`` of one batch; ``seen(rows, last)`` after the context pass
        (``rows`` index ``batch``; see ``score``'s ``on_context``)."""
        mode = self.label_mode
        if mode == "inline":
            return self._batch_inline(batch, prefix_cache, p_len, device, seen)
        model = self.model
        b = len(batch)
        n_lab = len(self._label_ids)
        lens = [len(it.context) for it in batch]
        width = max(lens)
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        ids = torch.full((b, width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((b, width), dtype=torch.long, device=device)
        for r, it in enumerate(batch):
            ids[r, : lens[r]] = torch.tensor(it.context, device=device)
            mask[r, : lens[r]] = 1
        # Right padding. Trailing pads are left *unmasked* in this pass: no real token comes
        # after them, and a masked pad row can be fully masked (sliding windows) — its NaN
        # output would leak into every row through 0-weight x NaN in the next layer. They are
        # masked when the label tokens are appended after them.
        pos = p_len + torch.arange(width, device=device)[None].expand(b, -1)
        attn = torch.ones((b, p_len + width), dtype=torch.long, device=device)
        past_mask = torch.cat([torch.ones((b, p_len), dtype=torch.long, device=device), mask], 1)
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(b)
        multi = any(len(t) > 1 for t in self._label_ids)
        if cache is None and multi:
            from transformers import DynamicCache

            cache = DynamicCache(config=model.config)
        last = [n - 1 for n in lens]
        keep = sorted(set(last))
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": attn, "position_ids": pos,
                                  "use_cache": multi or cache is not None,
                                  "logits_to_keep": torch.tensor(keep, device=device)}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        res = model(**kwargs)
        if seen is not None:
            seen(np.arange(b), np.asarray(last, dtype=np.int64))
        col = torch.tensor([keep.index(j) for j in last], device=device)
        logits = res.logits[torch.arange(b, device=device), col]          # [b, V]
        last_lp = torch.log_softmax(logits.float(), dim=-1).double()
        scores = torch.stack([last_lp[:, t[0]] for t in self._label_ids], dim=1)  # [b, L]
        if mode == "trie":
            self._labels_trie(scores, output_cache(res), lens, past_mask, p_len, device)
        elif multi:
            m = max(len(t) for t in self._label_ids) - 1
            cache = output_cache(res)
            cache.batch_repeat_interleave(n_lab)
            lab = torch.full((n_lab, m), pad, dtype=torch.long, device=device)
            for j, t in enumerate(self._label_ids):
                if len(t) > 1:
                    lab[j, : len(t) - 1] = torch.tensor(t[:-1], device=device)
            ids2 = lab.repeat(b, 1)                                   # [b*L, m], item-major
            mask2 = torch.cat([past_mask.repeat_interleave(n_lab, 0),
                               torch.ones((b * n_lab, m), dtype=torch.long, device=device)], 1)
            start = torch.tensor(lens, device=device).repeat_interleave(n_lab) + p_len
            pos2 = start[:, None] + torch.arange(m, device=device)[None]
            res2 = model(input_ids=ids2, attention_mask=mask2, position_ids=pos2,
                         use_cache=True, logits_to_keep=m, **{self._cache_kw: cache})
            lp2 = torch.log_softmax(res2.logits.float(), dim=-1).double()  # [b*L, m, V]
            lp2 = lp2.view(b, n_lab, m, -1)
            for j, t in enumerate(self._label_ids):
                if len(t) > 1:
                    nxt = torch.tensor(t[1:], device=device)
                    scores[:, j] += lp2[:, j, torch.arange(len(t) - 1, device=device), nxt].sum(-1)
        return scores.cpu().numpy()

    def _labels_trie(self, scores: torch.Tensor, cache: Any, lens: list[int],
                     past_mask: torch.Tensor, p_len: int, device: torch.device) -> None:
        """Add the log-probabilities of the labels' later tokens to ``scores`` ``[b, L]``: the
        trie's nodes are written after each row's cache in one pass, node ``i`` at position
        ``p_len + len(context) + depth(i)``, seeing the row's real tokens (not its padding) and
        its own ancestors only - what it sees when its label follows the prompt alone."""
        trie = self._trie
        b, n = len(lens), len(trie.tokens)
        ids = torch.tensor(trie.tokens, device=device)[None].expand(b, n)
        depth = torch.tensor(trie.depth, device=device)
        pos = (torch.tensor(lens, device=device) + p_len)[:, None] + depth[None]
        seen = torch.cat([past_mask.bool()[:, None, None, :].expand(b, 1, n, past_mask.shape[1]),
                          trie.ancestors.to(device)[None, None].expand(b, 1, n, n)], dim=-1)
        if self.attn_implementation == "sdpa":
            mask = seen
        else:   # eager: an additive mask in the activations' dtype, like transformers' own
            dtype = self.model.get_input_embeddings().weight.dtype
            mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(
                ~seen, torch.finfo(dtype).min)
        res = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         logits_to_keep=n, **{self._cache_kw: cache})
        lp = torch.log_softmax(res.logits.float(), dim=-1)                    # [b, n, V]
        for j, tg in enumerate(trie.targets):
            if tg:
                node = torch.tensor([x for x, _ in tg], device=device)
                nxt = torch.tensor([t for _, t in tg], device=device)
                scores[:, j] += lp[:, node, nxt].double().sum(-1)


    def _batch_inline(self, batch: list[_Item], prefix_cache: Any, p_len: int,
                      device: torch.device,
                      seen: Callable[[np.ndarray, np.ndarray], None] | None = None
                      ) -> np.ndarray:
        """Multi-token labels on sliding-window models: one row per (query, label) with the
        label written after the context, so no padding hole ever separates a label from its
        context (a sliding window counts cache slots, not positions). Costs ``L`` rows per
        query instead of one."""
        b = len(batch)
        n_lab = len(self._label_ids)
        rows = [it.context + t[:-1] for it in batch for t in self._label_ids]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
        for r, seq in enumerate(rows):
            ids[r, : len(seq)] = torch.tensor(seq, device=device)
        pos = p_len + torch.arange(width, device=device)[None].expand(len(rows), -1)
        need = [(r, len(batch[r // n_lab].context) - 1 + j, tok)
                for r in range(len(rows))
                for j, tok in enumerate(self._label_ids[r % n_lab])]
        keep = sorted({c for _, c, _ in need})
        kwargs: dict[str, Any] = {"input_ids": ids, "position_ids": pos,
                                  "attention_mask": torch.ones((len(rows), p_len + width),
                                                               dtype=torch.long, device=device),
                                  "logits_to_keep": torch.tensor(keep, device=device)}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(rows))
            kwargs[self._cache_kw] = cache
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        logits = self.model(**kwargs).logits                     # [R, len(keep), V]
        if seen is not None:
            seen(np.repeat(np.arange(b), n_lab),
                 np.repeat([len(it.context) - 1 for it in batch], n_lab).astype(np.int64))
        lp = torch.log_softmax(logits.float(), dim=-1).double()
        col = {c: i for i, c in enumerate(keep)}
        scores = torch.zeros(len(rows), dtype=torch.float64)
        for r, c, tok in need:
            scores[r] += lp[r, col[c], tok].cpu()
        return scores.view(b, n_lab).numpy()


def _content_free_probs(logprobs: np.ndarray, items: list[_Item], n: int, n_sets: int,
                        set_of: list[int]) -> np.ndarray:
    """Mean content-free label probabilities ``[n, L]`` of each query's demonstration set.

    ``logprobs`` ``[n + extra, L]``: the queries' rows, then the content-free queries' rows
    (``items[i].group`` is their demonstration set); ``set_of[i]``: query ``i``'s set.
    """
    cf_p = np.zeros((n_sets, logprobs.shape[1]))
    for g in range(n_sets):
        rows = [i for i in range(n, len(items)) if items[i].group == g]
        lp = logprobs[rows]
        p = np.exp(lp - lp.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        cf_p[g] = p.mean(axis=0)
    return cf_p[np.asarray(set_of, dtype=np.int64)] if n else cf_p[:0]


def _budget(name: str, value: Any, auto: Any) -> Any:
    """A positive token count, ``"auto"`` (-> ``auto``) or None."""
    if value is None:
        return None
    if isinstance(value, str) and value == "auto":
        return auto
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise InputError(f"{name} must be a positive number of tokens, 'auto' or None, "
                         f"got {value!r}")
    return int(value)


def cache_argument(model: Any) -> str:
    """The forward argument that takes a key/value cache: ``cache`` (transformers >= 5.24,
    where ``past_key_values`` is deprecated) or ``past_key_values`` (earlier releases)."""
    import inspect

    fwd = getattr(model, "forward", model)
    try:
        params = inspect.signature(fwd).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output: Any) -> Any:
    """The key/value cache of a model output (``cache`` or, before 5.24, ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def has_sliding_window(model: Any) -> bool:
    """Whether any attention layer of the model uses a sliding window."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    if getattr(cfg, "sliding_window", None) is None:
        return False
    types = getattr(cfg, "layer_types", None)
    return types is None or any("sliding" in str(t) for t in types)


# --------------------------------------------------------------------------------------------
# Metrics (accuracy, macro_f1, bootstrap_values: icldistill.core.metrics)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricResult(Result):
    """A metric with its percentile-bootstrap confidence interval ``[low, high]``."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    metric: Callable[[np.ndarray, np.ndarray], float] = accuracy,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> MetricResult:
    """Percentile bootstrap over test items (resampled with replacement, seeded).

    The resamples are ``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))``.
    :func:`accuracy` and :func:`macro_f1` (also through :func:`classification_metrics`) are
    evaluated on all resamples at once (:func:`bootstrap_values`); any other ``metric`` is
    called once per resample. Same seed, same interval, either way.
    """
    t, p = label_pair(y_true, y_pred)
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    value = float(metric(t, p))
    idx = _resamples(t.size, n_boot, seed)
    if metric is accuracy:
        stats = bootstrap_values(t, p, idx, "accuracy")
    elif metric is macro_f1:
        stats = bootstrap_values(t, p, idx, "macro_f1")
    else:
        stats = np.array([metric(t[r], p[r]) for r in idx])
    return _interval(value, stats, level)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap resamples ``[n_boot, n]`` of item indices (with replacement, seeded)."""
    return np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))


def _interval(value: float, stats: np.ndarray, level: float) -> MetricResult:
    a = (1 - level) / 2
    low, high = np.quantile(stats, [a, 1 - a]) if stats.size > 0 else (value, value)
    return MetricResult(value, float(low), float(high), level)



@dataclass(frozen=True)
class ClassificationMetrics(Result):
    """Accuracy and macro-F1 with bootstrap intervals, and the number of test items."""

    accuracy: MetricResult
    macro_f1: MetricResult
    n: int
    per_label_accuracy: dict[str, float] = field(default_factory=dict)


def classification_metrics(y_true: Any, y_pred: Any, *, labels: Sequence[Any] | None = None,
                           n_boot: int = 1000, seed: int = 0) -> ClassificationMetrics:
    """Accuracy and macro-F1 (bootstrap CIs from the same resamples' seed) of predictions."""
    t, p = label_pair(y_true, y_pred)
    if isinstance(labels, (str, bytes)):            # list("pos") would be three labels
        raise InputError(f"labels must be a sequence of labels, not the string {labels!r}")
    labs = list(labels) if labels is not None else sorted(set(t.tolist()), key=str)
    idx = _resamples(t.size, n_boot, seed)              # the same resamples for both metrics
    acc = _interval(accuracy(t, p), bootstrap_values(t, p, idx, "accuracy"), 0.95)
    f1 = _interval(macro_f1(t, p, labs), bootstrap_values(t, p, idx, "macro_f1", labs), 0.95)
    per = {str(lab): float(np.mean(p[t == lab] == lab)) for lab in labs if np.any(t == lab)}
    return ClassificationMetrics(acc, f1, int(t.size), per)
