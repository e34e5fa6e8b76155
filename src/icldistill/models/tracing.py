"""Trace real causal language models: every attention head split into prefix / demos / query.

:func:`trace` runs one forward pass of a Hugging Face ``transformers`` model with an attention
function registered through the library's attention interface (``AttentionInterface``). That
function receives the model's *actual* ``q``, ``k``, ``v`` — after RoPE, q/k norms, grouped-query
repetition — together with the scale, the mask (causal, sliding window, padding, per-head masks)
and any soft-capping, position bias or attention sink. It hands them to the model's **own** eager
attention function (the one the model uses with ``attn_implementation="eager"``), so the model's
output does not change, and for the chosen query positions it reduces every head with the pieces
of :func:`icldistill.core.decomposition.segment_decomposition` (the math core), keeping only the
per-head statistics, call by call; full tensors are kept only when asked for.

Exact or refused, never silently wrong:

- **self-check**: the segment components of every head at every traced position are summed and
  compared with the output of the model's own attention function; a relative difference above
  :data:`CHECK_TOLERANCE` raises :class:`~icldistill.InputError` (the tracer did not reproduce the
  architecture's attention);
- a keyword the attention function receives that the tracer does not understand (with a value
  other than ``None``) raises an error naming it;
- sparse (indexed) attention (``indices=`` from DeepSeek-V3.2-style indexers) is decomposed
  exactly over the selected keys only (the same mask the model's eager path builds);
- per-head masks ``[B, H, T, S]`` are used per head;
- an attention sink (``s_aux=`` / ``sinks=``: one extra logit per head with a zero value) is a key
  of its own: it enters ``D'`` (so it lowers ``eta*``) and is reported as the segment ``"sink"``;
- a layer that calls attention more than once (DiffLlama: two calls with one layer index) gives
  one entry per call (:attr:`TraceResult.layer_index`, :attr:`TraceResult.call_index`);
- hybrid models (linear attention, convolutions or state-space layers next to softmax attention):
  the softmax layers are traced, the others listed in :attr:`TraceResult.untraced_layers` — only
  when the config declares them non-attention layers; otherwise the model is refused.

Heads whose logits are not a pure scaled dot product (soft-capping, additive position biases
such as ALiBi, float masks with non-zero entries) are decomposed exactly as well but flagged
``has_kernel_form = False`` (per head): they have no distilled weights ``W_0``.
"""

from __future__ import annotations

import contextvars
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from icldistill.core.decomposition import (
    DualWeights,
    attention_probs_,
    segment_components,
    segment_mass,
)
from icldistill.core.results import Result
from icldistill.core.validation import InputError
from icldistill.data.prompts import DEMOS, PREFIX, QUERY, Prompt, TokenizedPrompt, group_segment

__all__ = ["CHECK_TOLERANCE", "SINK", "TRACE_ATTENTION", "TraceResult", "trace"]

#: Name under which the tracing attention function is registered in ``transformers``.
TRACE_ATTENTION = "icldistill_trace"

#: Name of the attention-sink segment (a key with a zero value, one per head).
SINK = "sink"

_GROUPS = (PREFIX, DEMOS, QUERY)

#: Largest float64 block (heads x positions x keys) reduced at once (32 MB).
_CHUNK_ELEMENTS = 1 << 22

#: Traced rows reduced at once: each block reads only the keys its rows see, so a causal
#: mask halves the work of ``positions="all"``.
_ROW_BLOCK = 128

#: Largest relative difference (per head and traced position) between the sum of the segment
#: components and the output of the model's own attention function, by the dtype of the model's
#: ``q``: ``||sum_S c_S - o|| / sum_j p_j ||v_j||``. Half precision rounds the model's
#: probabilities and output to 8 or 11 bits, hence the looser bound.
CHECK_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 2e-2,
                   torch.bfloat16: 2e-2}

#: Keywords of the attention call the decomposition uses.
_USED = frozenset({"scaling", "dropout", "softcap", "s_aux", "sinks", "position_bias", "indices",
                   "block_indices"})
#: Keywords that carry nothing the mask and the tensors do not already hold (causality and
#: sliding windows are in the mask; positions are already applied to q and k; the rest are
#: model-level output flags passed down with the forward's keywords) — the self-check confirms
#: it on every call.
_REDUNDANT = frozenset({"is_causal", "sliding_window", "position_ids", "cache_position",
                        "output_attentions", "output_hidden_states", "output_router_logits",
                        "use_cache", "return_dict", "logits_to_keep", "layer_idx",
                        "deterministic"})


# ============================================================================ per-call capture
@dataclass
class _LayerRecord:
    layer: int
    call: int
    log_norm: torch.Tensor            # [H, P]
    eta: torch.Tensor                 # [H, P]
    mass: torch.Tensor | None         # [S_fine or 3, H, P] (released once stacked)
    comp_norm: torch.Tensor           # [3, H, P] grouped prefix / demos / query
    mean_demo_logit: torch.Tensor     # [H, P]
    mean_logit: torch.Tensor          # [H, P]
    num_demo: torch.Tensor            # [H, P]
    num_keys: torch.Tensor            # [H, P]
    kernel_form: torch.Tensor         # [H] bool
    max_rel_error: float
    sink_mass: torch.Tensor | None = None     # [H, P]
    components: torch.Tensor | None = None   # [S_fine, H, P, Dv]
    demo_keys: torch.Tensor | None = None    # [H_k, N, D]
    demo_values: torch.Tensor | None = None  # [H_v, N, Dv]
    demo_visible: torch.Tensor | None = None  # [H_m, P, N] (H_m = 1 or H)
    queries: torch.Tensor | None = None      # [H, P, D]
    scale: float = 0.0
    kv_groups: int = 1
    value_groups: int = 1


@dataclass
class _Workspace:
    """Buffers that every attention call of one trace reuses: the logits of a chunk of heads
    (model dtype and reduction dtype) and the float masks of the masked means, which are the
    same for every call with the same visibility. Allocated at the first call and kept until
    the trace ends, so the reductions do not allocate (and fault in) fresh attention-sized
    blocks layer after layer, which glibc keeps mapped and fragments."""

    buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = field(
        default_factory=dict)
    allowed: torch.Tensor | None = None        # [H_m, P, S] bool the masks were built for
    mean_masks: torch.Tensor | None = None     # [H_m, P, S, 2] bool
    window: tuple[torch.Tensor, torch.Tensor] | None = None   # _key_window(allowed)

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        """An uninitialised ``shape`` view of the buffer ``name`` (grown when too small)."""
        n = math.prod(shape)
        key = (name, dtype, device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            self.buffers.pop(key, None)              # release the old block before the new one
            buf = self.buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)

    def release(self) -> None:
        """Drop every buffer (the end of the attention calls)."""
        self.buffers.clear()
        self.allowed = self.mean_masks = self.window = None

    def visibility(self, allowed: torch.Tensor, demo_cols: torch.Tensor
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``[H_m, P, S, 2]`` masks (visible demonstration keys, visible keys) and the rows'
        key windows (:func:`_key_window`); rebuilt only when
        ``allowed`` differs from the previous call's."""
        if (self.allowed is None or self.allowed.shape != allowed.shape
                or self.allowed.device != allowed.device or not torch.equal(self.allowed,
                                                                            allowed)):
            self.mean_masks = None                   # release before building the new one
            vis_demo = allowed & demo_cols[None, None, :]
            self.mean_masks = torch.stack([vis_demo, allowed], -1)
            self.window = _key_window(allowed)
            self.allowed = allowed
        assert self.mean_masks is not None and self.window is not None
        return self.mean_masks, self.window


@dataclass
class _Store:
    """CPU blocks that hold the per-call statistics of one trace, ``rows`` calls per block,
    allocated at the first call: the statistics live there instead of in small tensors
    allocated between each layer's transient attention-sized blocks, which would pin the
    freed blocks in glibc's heap and grow the resident memory layer after layer."""

    rows: int = 8
    blocks: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def put(self, name: str, index: int, x: torch.Tensor) -> torch.Tensor:
        """Copy ``x`` into row ``index`` of the blocks ``name`` (same dtype and shape for
        every call) and return that row (a view)."""
        blocks = self.blocks.setdefault(name, [])
        b, r = divmod(index, self.rows)
        while len(blocks) <= b:
            blocks.append(torch.empty((self.rows, *x.shape), dtype=x.dtype))
        row = blocks[b][r]
        if row.shape != x.shape or row.dtype != x.dtype:
            raise InputError(f"attention call {index} gave {name} of shape {tuple(x.shape)} "
                             f"({x.dtype}), unlike the calls before it "
                             f"({tuple(row.shape)}, {row.dtype}); not supported by the tracer")
        return row.copy_(x)


@dataclass
class _Request:
    seg_ids: torch.Tensor             # [T] fine segment index per token
    seg_names: tuple[str, ...]        # fine names
    group_of: torch.Tensor            # [S_fine] group index (prefix/demos/query)
    positions: torch.Tensor           # [P]
    keep_components: bool
    keep_w0: bool
    every: bool = False               # positions == 0..T-1: no position gather needed
    records: list[_LayerRecord] = field(default_factory=list)
    calls: dict[int, int] = field(default_factory=dict)          # layer -> calls so far
    module_layers: dict[int, int] = field(default_factory=dict)  # id(module) -> layer
    auxiliary: dict[str, int] = field(default_factory=dict)      # class name -> calls
    sparse: int = 0                   # calls whose mask came from selected-key indices
    progress: Any = None
    per_demo: bool = False            # keep every fine segment's mass (else the 3 groups')
    work: _Workspace = field(default_factory=_Workspace)
    store: _Store = field(default_factory=_Store)


_ACTIVE: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("icldistill_trace",
                                                                         default=None)


# ======================================================================= the model's own attention
def _standard_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, attention_mask: torch.Tensor | None,
                        scaling: float | None = None, dropout: float = 0.0,
                        softcap: float | None = None, **kwargs: Any
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain eager attention (used only outside :func:`trace`, for a module whose own eager
    function cannot be found)."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    v = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    logits = torch.matmul(query, k.transpose(2, 3)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        logits = logits + attention_mask[:, :, :, : k.shape[-2]]
    probs = torch.nn.functional.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, v).transpose(1, 2).contiguous(), probs


_EAGER_NAMES: dict[type, tuple[dict[str, Any], str] | None] = {}
_DEFAULT_RE = re.compile(r"get_interface\(\s*[^,()]+(?:\([^()]*\))?[^,()]*,\s*([A-Za-z_]\w*)\s*\)")
_ASSIGN_RE = re.compile(r"attention_interface\s*(?::\s*[\w\[\], .]+)?=\s*([A-Za-z_]\w*)\s*$",
                        re.MULTILINE)


def _eager_function(module: torch.nn.Module) -> Callable[..., Any] | None:
    """The eager attention function ``module`` falls back to when its config says ``"eager"``:
    the default of its ``ALL_ATTENTION_FUNCTIONS.get_interface(..., default)`` call, else the
    ``eager_attention_forward`` of its modeling file. The name is found once per class and
    looked up in the modeling file's namespace at every call."""
    cls = type(module)
    if cls not in _EAGER_NAMES:
        _EAGER_NAMES[cls] = _find_eager(cls)
    where = _EAGER_NAMES[cls]
    if where is None:
        return None
    fn = where[0].get(where[1])
    return fn if callable(fn) else None


def _find_eager(cls: type) -> tuple[dict[str, Any], str] | None:
    forward = getattr(cls, "forward", None)
    try:
        forward = inspect.unwrap(forward) if forward is not None else None
    except ValueError:  # pragma: no cover - a cycle of __wrapped__
        pass
    spaces = [getattr(forward, "__globals__", None),
              getattr(sys.modules.get(cls.__module__), "__dict__", None)]
    spaces = [ns for ns in spaces if isinstance(ns, dict)]
    try:
        src = inspect.getsource(forward) if forward is not None else ""
    except (OSError, TypeError):
        src = ""
    names = _DEFAULT_RE.findall(src) + _ASSIGN_RE.findall(src) + ["eager_attention_forward"]
    for name in names:
        if name == "ALL_ATTENTION_FUNCTIONS":
            continue
        for ns in spaces:
            if callable(ns.get(name)):
                return ns, name
    return None


def _named_arguments(fn: Callable[..., Any], module: torch.nn.Module, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> dict[str, Any]:
    """Everything passed after ``attention_mask``, by the eager function's parameter names."""
    try:
        sig = inspect.signature(fn)
        bound = sig.bind_partial(module, None, None, None, None, *args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{type(module).__name__} calls its attention function with arguments "
                         f"the tracer cannot match to it ({exc}); not supported") from exc
    named: dict[str, Any] = {}
    for i, (name, val) in enumerate(bound.arguments.items()):
        if i < 5:                     # module, query, key, value, attention_mask
            continue
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(val)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if val:
                raise InputError(f"{type(module).__name__} passes {len(val)} unnamed extra "
                                 "arguments to its attention function; not supported")
        else:
            named[name] = val
    return named


def _sparse_mask(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 attention_mask: torch.Tensor | None, named: dict[str, Any]
                 ) -> torch.Tensor | None:
    """The mask the model's eager path builds from selected-key ``indices`` (DeepSeek-V3.2
    style indexers: ``[B, T, top_k]``) or ``block_indices`` (block-sparse indexers)."""
    B, T, S = query.shape[0], query.shape[2], key.shape[2]
    idx = named.get("indices")
    if idx is not None:
        if (not isinstance(idx, torch.Tensor) or idx.dtype.is_floating_point or idx.ndim != 3
                or idx.shape[:2] != (B, T)):
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise InputError(f"{type(module).__name__} passes sparse-attention indices= of shape "
                             f"{shape}; the tracer decomposes only [batch, queries, top_k] "
                             "selected-key indices")
        if idx.numel() and bool((idx < 0).any() or (idx >= S).any()):
            raise InputError(f"{type(module).__name__} passes sparse-attention indices= outside "
                             f"0..{S - 1}; not supported by the tracer")
        masked = (torch.ones(B, T, S, dtype=torch.bool, device=query.device)
                  .scatter(-1, idx.long(), False).unsqueeze(1))             # True = not selected
        if attention_mask is None:
            return torch.zeros(B, 1, T, S, dtype=query.dtype, device=query.device).masked_fill(
                masked, torch.finfo(query.dtype).min)
        if attention_mask.dtype == torch.bool:
            return attention_mask & ~masked
        return attention_mask.masked_fill(masked, torch.finfo(query.dtype).min)
    blocks = named.get("block_indices")
    build = getattr(getattr(module, "indexer", None), "build_block_mask", None)
    if not callable(build):
        raise InputError(f"{type(module).__name__} passes block_indices= (block-sparse attention) "
                         "without an indexer that builds its mask; not supported by the tracer")
    pos = named.get("position_ids")
    if pos is None:
        pos = torch.arange(S - T, S, device=query.device)
    pos = (pos if pos.ndim > 1 else pos.unsqueeze(0)).expand(B, -1)
    try:
        return build(blocks, attention_mask, S, query.dtype, query.device, pos)
    except Exception as exc:  # the model's own helper changed shape: refuse, do not guess
        raise InputError(f"{type(module).__name__}: the block-sparse mask (block_indices=) could "
                         f"not be rebuilt ({exc}); not supported by the tracer") from exc


def _trace_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own eager attention (same function, same result) plus the decomposition of
    the chosen positions, checked against that result.

    Shapes: ``query [B, H, T, D]``, ``key/value [B, H_kv, S, D]``, ``attention_mask`` additive
    or boolean ``[B, 1 or H, T, S]``; returns what the eager function returns
    (``[B, T, H, Dv]``, probabilities).
    """
    eager = _eager_function(module)
    req = _ACTIVE.get()
    if req is None:                      # registered globally: behave like eager elsewhere
        return (eager or _standard_attention)(module, query, key, value, attention_mask, *args,
                                              **kwargs)
    name = type(module).__name__
    if eager is None:
        raise InputError(f"{name} has no eager attention function the tracer can check its "
                         "decomposition against; this architecture is not supported")
    named = _named_arguments(eager, module, args, kwargs)
    unknown = sorted(k for k, v in named.items()
                     if v is not None and k not in _USED and k not in _REDUNDANT)
    if unknown:
        raise InputError(f"{name} passes {', '.join(k + '=' for k in unknown)} to its attention "
                         "function, which the tracer does not understand; it refuses to trace "
                         "this architecture rather than decompose a different attention")
    dropout = named.get("dropout") or 0.0
    if module.training and float(dropout) > 0:
        raise InputError(f"{name} is in training mode with attention dropout {dropout}: call "
                         "model.eval() before tracing")
    if named.get("indices") is not None or named.get("block_indices") is not None:
        attention_mask = _sparse_mask(module, query, key, attention_mask, named)
        req.sparse += 1
        kwargs = {**kwargs, **{k: None for k in ("indices", "block_indices") if k in kwargs}}
    out, probs = eager(module, query, key, value, attention_mask, *args, **kwargs)
    if _auxiliary(req, module, query, key, attention_mask):
        req.auxiliary[name] = req.auxiliary.get(name, 0) + 1
    else:
        _record(req, module, query, key, value, attention_mask, out, named)
    return out, probs


def _auxiliary(req: _Request, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
               attention_mask: torch.Tensor | None) -> bool:
    """An attention that is not over the prompt's tokens: a module without a layer index,
    without a mask, whose keys are not the prompt's tokens (Inkling2's attention residuals over
    the outputs of earlier layers). It runs unchanged (the model's own function) and is listed
    in :attr:`TraceResult.auxiliary_attention`, not decomposed."""
    layer = getattr(module, "layer_idx", None)
    return (not isinstance(layer, int) and attention_mask is None and key.ndim == 4
            and key.shape[2] != req.seg_ids.shape[0])


AttentionInterface.register(TRACE_ATTENTION, _trace_attention)
AttentionMaskInterface.register(TRACE_ATTENTION, eager_mask)


def _layer_of(req: _Request, module: torch.nn.Module) -> tuple[int, int]:
    """(layer, call): the module's ``layer_idx`` (else the layer number in its module path, else
    its order of first call) and how many calls that layer has had before."""
    layer = getattr(module, "layer_idx", None)
    if not isinstance(layer, int) or isinstance(layer, bool):
        layer = req.module_layers.get(id(module))
        if layer is None:                # no index anywhere: number the modules as they come
            layer = req.module_layers[id(module)] = len(req.calls)
    call = req.calls.get(layer, 0)
    req.calls[layer] = call + 1
    return int(layer), call


def _per_head(x: torch.Tensor, H: int, what: str, name: str) -> torch.Tensor:
    """``[1 or H, ...]`` -> ``[H, ...]`` (a view)."""
    if x.shape[0] == H:
        return x
    if x.shape[0] == 1:
        return x.expand(H, *x.shape[1:])
    raise InputError(f"{name}: {what} has {x.shape[0]} heads but the attention has {H}; "
                     "not supported by the tracer")


#: Dtype of the per-head reductions. They run in float64 (only the traced positions, a few heads
#: at a time, so the extra memory stays bounded): float32 sums over thousands of keys with large
#: logits lose ~1e-4 of the attention mass.
_REDUCE_DTYPE = torch.float64


def _check_call_shapes(req: _Request, name: str, query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """Refuse an attention call the tracer cannot decompose; return the query heads per key head
    and per value head (grouped-query attention)."""
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise InputError(f"{name}: attention tensors are not [batch, heads, tokens, dim]; "
                         "not supported by the tracer")
    B, H, T, _ = query.shape
    if B != 1:
        raise InputError("the tracer handles one prompt at a time (batch size 1)")
    S, n_tok = key.shape[2], req.seg_ids.shape[0]
    if S != n_tok or T != n_tok:
        raise InputError(f"{name} attended with {T} queries over {S} keys but the prompt has "
                         f"{n_tok} tokens (is a key/value cache in use, or does the architecture "
                         "attend over a compressed sequence?); not supported by the tracer")
    Hk, Hv, Dv = key.shape[1], value.shape[1], value.shape[-1]
    if H % Hk or H % Hv:
        raise InputError(f"{name}: {H} query heads cannot share {Hk} key / {Hv} value heads")
    if tuple(out.shape) != (1, T, H, Dv):
        raise InputError(f"{name}'s attention returned a tensor of shape {tuple(out.shape)}, not "
                         f"[1, {T}, {H}, {Dv}]; not supported by the tracer")
    return H // Hk, H // Hv


_Rows = Callable[[torch.Tensor], torch.Tensor]


def _mask_visibility(
    attention_mask: torch.Tensor | None, rows: _Rows, H: int, P: int, S: int, name: str,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(allowed [H_m, P, S] bool, extra, biased)`` of the call's attention mask at the traced
    rows (``H_m`` = 1 or ``H``). A float mask may carry an additive bias besides its ``-inf``
    entries (ALiBi, ...): ``extra`` is that bias in the reduction dtype and ``biased`` ``[H]``
    marks the heads it touches (they have no kernel form); both are ``None`` without one."""
    if attention_mask is None:
        return torch.ones(1, P, S, dtype=torch.bool, device=device), None, None
    m = attention_mask
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    m = rows(m[0, :, :, :S])                                            # [H_m, P, S]
    if m.shape[0] not in (1, H):
        raise InputError(f"{name}: the attention mask has {m.shape[0]} heads but the "
                         f"attention has {H}; not supported by the tracer")
    if m.dtype == torch.bool:
        return m, None, None
    allowed = m > torch.finfo(m.dtype).min / 2
    bias = m.masked_fill(~allowed, 0.0)
    nz = bias.ne(0).flatten(1).any(-1)                                  # [H_m]
    if bool(nz.any()):
        return allowed, bias.to(_REDUCE_DTYPE), _per_head(nz, H, "the mask", name)
    return allowed, None, None


def _position_bias(pbias: Any, rows: _Rows, H: int, S: int, name: str
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(bias [H_p, P, S], biased [H])`` of a ``position_bias=`` keyword (T5-style relative
    positions) at the traced rows; ``biased`` marks the heads with a non-zero bias."""
    if pbias is None:
        return None, None
    if not isinstance(pbias, torch.Tensor) or pbias.ndim != 4:
        raise InputError(f"{name}: position_bias= is not a [batch, heads, queries, keys] "
                         "tensor; not supported by the tracer")
    pbias = rows(pbias[0, :, :, :S])                                    # [H_p, P, S]
    return pbias, _per_head(pbias.ne(0).flatten(1).any(-1), H, "position_bias", name)


def _sink_logits(named: dict[str, Any], rows: _Rows, H: int, T: int, P: int, name: str
                 ) -> torch.Tensor | None:
    """Attention-sink logits ``[H, P]`` in the reduction dtype (``s_aux=`` or ``sinks=``: one
    extra key per head with a zero value), or ``None``."""
    sink = named.get("s_aux")
    if sink is None:
        sink = named.get("sinks")
    if sink is None:
        return None
    if not isinstance(sink, torch.Tensor):
        raise InputError(f"{name}: attention sinks are not a tensor; not supported")
    if sink.ndim == 1 and sink.shape[0] == H:
        sink = sink[:, None].expand(H, P)
    elif sink.ndim == 4 and sink.shape[-1] == 1 and sink.shape[0] == 1:
        sink = rows(_per_head(sink[0], H, "the sinks", name).expand(H, T, 1))[..., 0]
    else:
        raise InputError(f"{name}: attention sinks of shape {tuple(sink.shape)} (expected "
                         f"[{H}] or [1, {H}, {T}, 1]); not supported by the tracer")
    return sink.to(_REDUCE_DTYPE)                                       # [H, P]


@dataclass(frozen=True)
class _CallInputs:
    """One attention call prepared for :func:`_reduce_block` (references only, no copies)."""

    query: torch.Tensor              # [1, H, T, D] as the model passed it
    q_rows: torch.Tensor             # [H, P, D] the queries at the traced rows
    v_ext: torch.Tensor              # [H, S, Dv + 2] every query head's values, their norms
                                     # and ones (reduction dtype)
    fine_mass: bool                  # masses of the fine segments, components of the groups
    keep_components: bool            # components of the fine segments, kept
    group_of: torch.Tensor           # [S_fine] group of each fine segment
    out_rows: torch.Tensor           # [H, P, Dv] the model's attention output at the rows
    key: torch.Tensor                # [1, H_k, S, D]
    scale: float
    softcap: Any                     # None or the soft-capping constant
    pbias: torch.Tensor | None       # [H_p, P, S] position bias, model dtype
    extra: torch.Tensor | None       # [H_m, P, S] additive float-mask bias, reduction dtype
    sink: torch.Tensor | None        # [H, P] sink logits, reduction dtype
    allowed: torch.Tensor            # [H_m, P, S] bool
    blocked: torch.Tensor            # [H_m, P, S] bool, ~allowed
    mean_masks: torch.Tensor         # [H_m, P, S, 2] bool: visible demonstration keys, keys
    window: tuple[torch.Tensor, torch.Tensor]   # (lo, hi) [P]: each row's visible keys
    n_demo: torch.Tensor             # [H_m, P]
    n_keys: torch.Tensor             # [H_m, P]
    seg_ids: torch.Tensor            # [S] fine segment per key
    n_fine: int
    comp_ids: torch.Tensor           # [S] component index per key (fine or group)
    n_comp: int
    gk: int                          # query heads per key head
    gv: int                          # query heads per value head
    P: int                           # traced positions
    S: int                           # keys
    work: _Workspace                 # the trace's reusable buffers


def _masked_sums(lg: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``sum_s lg[h, p, s] masks[., p, s, j]`` ``[h, P, 2]`` for the two 0/1 masks ``masks``
    ``[1 or h, P, S, 2]``: one batched matrix product over the rows (each logit read once)
    instead of two element-wise products of the whole ``[h, P, S]`` block."""
    if masks.shape[0] == 1:                                           # one mask for all heads
        return torch.bmm(lg.transpose(0, 1), masks[0]).transpose(0, 1)
    return torch.matmul(lg.unsqueeze(-2), masks).squeeze(-2)


def _key_window(allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo [P], hi [P])`` on the CPU: every traced row's visible keys (any head) lie in
    ``lo:hi`` (``0:0`` for a row that sees none). Causal masks make the window of row ``t``
    end at ``t + 1``, so row blocks skip the keys none of their rows sees (their probabilities
    are exactly zero)."""
    vis = allowed.any(0).to(torch.uint8)                                 # [P, S]
    S = vis.shape[-1]
    seen = vis.amax(-1).bool()
    lo = torch.where(seen, vis.argmax(-1), 0)          # argmax: the first maximal entry
    hi = torch.where(seen, S - vis.flip(-1).argmax(-1), 0)
    return lo.cpu(), hi.cpu()


@dataclass
class _Reduced:
    """The per-head reductions of one attention call, filled block by block."""

    comps: torch.Tensor | None       # [S_fine, H, P, Dv] (kept components only)
    comp_norm: torch.Tensor          # [3, H, P] the groups' component norms
    log_norm: torch.Tensor           # [H, P]
    mass: torch.Tensor               # [S_fine or 3, H, P]
    mean_demo: torch.Tensor          # [H, P]
    mean_logit: torch.Tensor         # [H, P]
    rel_error: torch.Tensor          # [H, P] ||sum_S c_S - o|| / ||o||
    check: torch.Tensor              # [H, P] ||sum_S c_S - o|| / sum_j p_j ||v_j||
    sink_mass: torch.Tensor | None   # [H, P]


def _reduce_block(c: _CallInputs, r: _Reduced, h0: int, h1: int, p0: int, p1: int,
                  lo: int, hi: int) -> None:
    """Decompose query heads ``h0:h1`` at traced rows ``p0:p1``, whose visible keys lie in
    ``lo:hi``, into the slices of ``r``: components and their norms, ``log D'``, masses, mean
    demo logit, mean logit, the self-check's errors and the sink mass."""
    cdtype = _REDUCE_DTYPE
    dev = c.query.device
    h, B, w = h1 - h0, p1 - p0, hi - lo
    heads = torch.arange(h0, h1, device=dev)
    mh = slice(h0, h1) if c.allowed.shape[0] > 1 else slice(0, 1)
    q = c.q_rows[h0:h1, p0:p1]                                         # [h, B, D]
    k = c.key[0, :, lo:hi].index_select(0, heads // c.gk)              # [h, w, D]
    # the logits with the eager function's operations, in the model's dtype, in the
    # trace's reusable buffers (same operations as ``q @ k.T * scale``, in place)
    own = c.work.take("logits", (h, B, w), q.dtype, dev)
    torch.matmul(q, k.transpose(1, 2), out=own)
    own.mul_(c.scale)
    if c.softcap is not None:
        own.div_(c.softcap).tanh_().mul_(c.softcap)
    if c.pbias is not None:
        hp = slice(h0, h1) if c.pbias.shape[0] > 1 else slice(0, 1)
        own.add_(c.pbias[hp, p0:p1, lo:hi])
    if q.dtype == cdtype:
        lg = own
    else:
        lg = c.work.take("logits64", (h, B, w), cdtype, dev).copy_(own)  # [h, B, w]
    if c.extra is not None:
        lg.add_(c.extra[mh, p0:p1, lo:hi])
    # masked means of the logits (before masking them to -inf below); keys outside the
    # window are masked for these rows and add nothing
    m = c.mean_masks[mh, p0:p1, lo:hi]
    m = c.work.take("masks", tuple(m.shape), cdtype, dev).copy_(m)     # [1 or h, B, w, 2]
    sums = _masked_sums(lg, m)                                         # [h, B, 2]
    r.mean_demo[h0:h1, p0:p1] = sums[..., 0] / c.n_demo[mh, p0:p1].to(cdtype)
    r.mean_logit[h0:h1, p0:p1] = sums[..., 1] / c.n_keys[mh, p0:p1].to(cdtype)
    # the buffer's logits become the probabilities in place (the mask was negated once per
    # call, not per block)
    lg.masked_fill_(c.blocked[mh, p0:p1, lo:hi].expand(h, B, w), -math.inf)
    if c.sink is not None:               # one more key: logit s_h, value 0
        probs, ln = attention_probs_(torch.cat([lg, c.sink[h0:h1, p0:p1, None]], -1))
        r.sink_mass[h0:h1, p0:p1] = probs[..., w]
        probs = probs[..., :w]
    else:
        probs, ln = attention_probs_(lg)
    del lg
    r.log_norm[h0:h1, p0:p1] = ln
    # one product per segment gives its component, its share of sum_j p_j ||v_j|| and its
    # mass (the values carry their norms and a column of ones)
    dv = c.v_ext.shape[-1] - 2
    comp = segment_components(probs, c.v_ext[h0:h1, lo:hi], c.comp_ids[lo:hi],
                              c.n_comp)                                # [h, n_comp, B, Dv+2]
    if c.fine_mass:                      # every demonstration's mass, components grouped
        ms = segment_mass(probs, c.seg_ids[lo:hi], c.n_fine)        # [h, S_fine, B]
        r.mass[:, h0:h1, p0:p1] = ms.movedim(1, 0)
    else:                                # the components' segments' masses
        r.mass[:, h0:h1, p0:p1] = comp[..., dv + 1].movedim(1, 0)
    values = comp[..., :dv]
    if r.comps is not None:              # fine components, kept; grouped for the check
        r.comps[:, h0:h1, p0:p1] = values.movedim(1, 0)
        values = values.new_zeros(h, 3, B, dv).index_add_(1, c.group_of, values)
    r.comp_norm[:, h0:h1, p0:p1] = values.norm(dim=-1).movedim(1, 0)
    # the self-check: the components sum to the model's own output at these rows
    actual = c.out_rows[h0:h1, p0:p1].to(cdtype)                       # [h, B, Dv]
    diff = (values.sum(1) - actual).norm(dim=-1)                       # [h, B]
    r.rel_error[h0:h1, p0:p1] = diff / actual.norm(dim=-1).clamp_min(1e-30)
    r.check[h0:h1, p0:p1] = diff / comp[..., dv].sum(1).clamp_min(1e-30)


def _reduce_heads(c: _CallInputs, H: int) -> _Reduced:
    """:func:`_reduce_block` over all ``H`` query heads and traced rows: blocks of
    :data:`_ROW_BLOCK` rows, each over the keys its rows see, with as many heads at once as
    fit :data:`_CHUNK_ELEMENTS` logits."""
    cdtype = _REDUCE_DTYPE
    P, S, dev = c.P, c.S, c.query.device
    dv = c.v_ext.shape[-1] - 2

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=cdtype, device=dev)

    r = _Reduced(
        comps=empty(c.n_comp, H, P, dv) if c.keep_components else None,
        comp_norm=empty(3, H, P), log_norm=empty(H, P),
        mass=empty(c.n_fine if c.fine_mass else c.n_comp, H, P),
        mean_demo=empty(H, P), mean_logit=empty(H, P), rel_error=empty(H, P),
        check=empty(H, P), sink_mass=empty(H, P) if c.sink is not None else None)
    lo, hi = c.window
    rb = min(P, _ROW_BLOCK)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, rb * S))
    for p0 in range(0, P, rb):
        p1 = min(P, p0 + rb)
        a, b = int(lo[p0:p1].min()), int(hi[p0:p1].max())
        if b <= a:                       # a row that sees no key: the full row raises below
            a, b = 0, S
        for h0 in range(0, H, chunk):
            _reduce_block(c, r, h0, min(H, h0 + chunk), p0, p1, a, b)
    return r


def _check_reproduces(name: str, layer: int, red: _Reduced, dtype: torch.dtype,
                      named: dict[str, Any]) -> float:
    """Refuse the call unless the components summed to the model's own output within
    :data:`CHECK_TOLERANCE` of ``sum_j p_j ||v_j||`` at every head and row (``red.check``);
    return the largest relative error against the output's norm."""
    P = red.check.shape[1]
    tol = CHECK_TOLERANCE.get(dtype, 2e-2)
    worst = float(red.check.max()) if red.check.numel() else 0.0
    if worst > tol or worst != worst:
        head = int(red.check.nan_to_num(math.inf).flatten().argmax()) // P
        raise InputError(
            f"{name} (layer {layer}): the traced decomposition differs from the model's own "
            f"attention output by {worst:.2g} (relative, head {head}; tolerance "
            f"{tol:g}); the tracer does not reproduce this architecture's attention "
            f"(keywords: {', '.join(sorted(k for k, v in named.items() if v is not None))}), "
            "so it refuses to trace it")
    return float(red.rel_error.max()) if red.rel_error.numel() else 0.0


def _keep_w0(rec: _LayerRecord, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             rows: _Rows, allowed: torch.Tensor, demo_cols: torch.Tensor) -> None:
    """Store on ``rec`` what ``W_0`` needs: the demonstrations' keys and values, their
    visibility at the traced rows and the queries there (reduction dtype, on the CPU)."""
    cdtype = _REDUCE_DTYPE
    demo_pos = demo_cols.nonzero().flatten()
    rec.demo_keys = key[0].index_select(1, demo_pos).detach().to(cdtype).cpu()
    rec.demo_values = value[0].index_select(1, demo_pos).detach().to(cdtype).cpu()
    rec.demo_visible = allowed.index_select(2, demo_pos).cpu()
    rec.queries = rows(query[0]).detach().to(cdtype).cpu()


def _values_ext(value: torch.Tensor, H: int, gv: int) -> torch.Tensor:
    """``[H, S, Dv + 2]``: every query head's values (``value [1, H_v, S, Dv]``), their norms
    and a column of ones, in the reduction dtype: one product of the probabilities with it gives
    a segment's component, its share of ``sum_j p_j ||v_j||`` and its mass."""
    v = value[0].index_select(0, torch.arange(H, device=value.device) // gv).to(_REDUCE_DTYPE)
    return torch.cat([v, v.norm(dim=-1, keepdim=True), torch.ones_like(v[..., :1])], -1)


def _store_record(req: _Request, layer: int, call: int, red: _Reduced, mass: torch.Tensor,
                  eta: torch.Tensor, num_demo: torch.Tensor, num_keys: torch.Tensor,
                  kernel_form: torch.Tensor, max_err: float) -> _LayerRecord:
    """The call's :class:`_LayerRecord`, its statistics copied into the trace's blocks
    (:class:`_Store`); per-demonstration masses (``per_demo``) are kept as they are."""
    i = len(req.records)

    def put(what: str, x: torch.Tensor) -> torch.Tensor:
        return req.store.put(what, i, x)

    return _LayerRecord(
        layer=layer, call=call,
        log_norm=put("log_norm", red.log_norm), eta=put("eta", eta),
        mass=mass.cpu() if req.per_demo else put("mass", mass),
        comp_norm=put("comp_norm", red.comp_norm),
        mean_demo_logit=put("mean_demo_logit", red.mean_demo),
        mean_logit=put("mean_logit", red.mean_logit), num_demo=put("num_demo", num_demo),
        num_keys=put("num_keys", num_keys), kernel_form=put("kernel_form", kernel_form),
        max_rel_error=max_err,
        sink_mass=put("sink_mass", red.sink_mass) if red.sink_mass is not None else None,
    )


def _record(
    req: _Request,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    out: torch.Tensor,
    named: dict[str, Any],
) -> None:
    """Decompose one attention call of every head at the traced positions, check that the
    pieces reproduce the model's own output ``out``, and append a :class:`_LayerRecord`."""
    name = type(module).__name__
    layer, call = _layer_of(req, module)
    gk, gv = _check_call_shapes(req, name, query, key, value, out)
    H, T, S = query.shape[1], query.shape[2], key.shape[2]
    scaling = named.get("scaling")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    softcap = named.get("softcap")
    dev = query.device
    # on the call's device: the mask's and position bias's per-head flags come from there
    kernel_form = torch.full((H,), softcap is None, dtype=torch.bool, device=dev)
    pos = req.positions.to(dev)
    P = pos.shape[0]

    def rows(x: torch.Tensor) -> torch.Tensor:          # [..., T, S] -> [..., P, S]
        return x if req.every else x.index_select(-2, pos)

    cdtype = _REDUCE_DTYPE
    allowed, extra, mask_biased = _mask_visibility(attention_mask, rows, H, P, S, name, dev)
    if mask_biased is not None:          # additive bias in the mask (ALiBi, ...): no kernel form
        kernel_form &= ~mask_biased
    pbias, pos_biased = _position_bias(named.get("position_bias"), rows, H, S, name)
    if pos_biased is not None:
        kernel_form &= ~pos_biased
    sink = _sink_logits(named, rows, H, T, P, name)
    seg_ids = req.seg_ids.to(dev)
    group_of = req.group_of.to(dev)
    demo_cols = group_of[seg_ids] == 1                                   # [S]
    vis_demo = allowed & demo_cols[None, None, :]                        # [H_m, P, S]
    n_demo = vis_demo.sum(-1)                                            # [H_m, P]
    n_keys = allowed.sum(-1)
    n_fine = len(req.seg_names)
    # without kept components only the three groups' components are formed (their masses
    # come with them): 3 matrix products per block instead of S_fine
    comp_ids, n_comp = (seg_ids, n_fine) if req.keep_components else (group_of[seg_ids], 3)
    fine_mass = req.per_demo and not req.keep_components
    mean_masks, window = req.work.visibility(allowed, demo_cols)
    inputs = _CallInputs(
        query=query, q_rows=rows(query[0]), v_ext=_values_ext(value, H, gv),
        fine_mass=fine_mass,
        keep_components=req.keep_components, group_of=group_of,
        out_rows=rows(out[0].transpose(0, 1)),
        key=key, scale=scale, softcap=softcap,
        pbias=pbias, extra=extra, sink=sink, allowed=allowed, blocked=~allowed,
        mean_masks=mean_masks, window=window, n_demo=n_demo,
        n_keys=n_keys, seg_ids=seg_ids,
        n_fine=n_fine, comp_ids=comp_ids, n_comp=n_comp, gk=gk, gv=gv, P=P, S=S,
        work=req.work)
    red = _reduce_heads(inputs, H)
    del inputs
    mass = red.mass
    if req.keep_components and not req.per_demo:  # only the groups' masses are reported
        mass = torch.zeros(3, *mass.shape[1:], dtype=mass.dtype,
                           device=mass.device).index_add_(0, group_of, mass)   # [3, H, P]
    n_demo_h = _per_head(n_demo, H, "the mask", name)
    eta = torch.exp(torch.log(n_demo_h.to(cdtype) / 2.0) - red.log_norm)
    max_err = _check_reproduces(name, layer, red, query.dtype, named)
    rec = _store_record(req, layer, call, red, mass, eta, n_demo_h,
                        _per_head(n_keys, H, "the mask", name), kernel_form, max_err)
    rec.scale, rec.kv_groups, rec.value_groups = scale, gk, gv
    if red.comps is not None:
        rec.components = red.comps.cpu()
    if req.keep_w0:
        _keep_w0(rec, query, key, value, rows, allowed, demo_cols)
    req.records.append(rec)
    if req.progress is not None:
        req.progress.update(1)


# ============================================================================ result
@dataclass(frozen=True)
class TraceResult(Result):
    """Per attention call (layer), head and traced query position: the SPEC §1–2 quantities of a
    real model.

    Shapes use ``L`` entries, ``H`` query heads, ``P`` traced positions. An entry is one call of
    the attention function: for most models entry ``i`` is layer ``i``; a layer that calls
    attention twice (DiffLlama) has two consecutive entries, and the layers of a hybrid model
    that are not softmax attention have none (:attr:`layer_index` maps entries to layers,
    :attr:`untraced_layers` lists the others).

    Attributes
    ----------
    input_ids : LongTensor ``[T]``
    tokens : tuple of str, length ``T``
        Decoded tokens.
    segments : tuple of str, length ``T``
        Fine segment of every token (``"prefix"``, ``"demo:i"``, ``"query"``).
    positions : LongTensor ``[P]``
        Traced query positions.
    log_normalizer : Tensor ``[L, H, P]``
        ``log D'_t`` (attention sinks included).
    eta : Tensor ``[L, H, P]``
        ``eta*_t = N_t / (2 D'_t)``.
    attention_mass : dict[str, Tensor ``[L, H, P]``]
        Attention probability mass of ``"prefix"``, ``"demos"``, ``"query"`` and, for models
        with attention sinks, ``"sink"`` (the masses sum to 1).
    component_norm : dict[str, Tensor ``[L, H, P]``]
        ``||c_S(t)||`` of the grouped segments (the sink's is 0: its value is zero).
    demo_share : Tensor ``[L, H, P]``
        ``||c_D|| / (||c_prefix|| + ||c_D|| + ||c_Q||)``: the demonstrations' share of the output.
    mean_demo_logit : Tensor ``[L, H, P]``
        Mean logit over the visible demonstration keys (domain stationarity).
    mean_logit : Tensor ``[L, H, P]``
        Mean logit over all attended keys (sinks excluded).
    num_demo_keys : LongTensor ``[L, P]``
        ``N_t`` (sliding windows make it layer-dependent); with per-head masks the largest over
        the heads (:attr:`num_demo_keys_by_head` has each).
    num_keys : LongTensor ``[L, P]``
        ``n_t``, the number of keys position ``t`` attends to (Jensen:
        ``log(D'_t / n_t) >= mean_logit``); with per-head masks the largest over the heads.
    has_kernel_form : BoolTensor ``[L, H]``
        Whether the head's logits are a pure scaled dot product (``W_0`` exists): False for
        soft-capped logits and for heads with an additive bias (ALiBi-style float mask,
        ``position_bias``).
    max_decomposition_error : float
        Largest ``||sum_S c_S - o|| / ||o||`` over entries, heads and positions, against the
        attention output of the model's own attention function.
    logits : Tensor ``[P, V]``
        The model's output logits at the traced positions.
    demo_mass : dict[str, Tensor ``[L, H, P]``] or None
        Attention mass of every single demonstration (``per_demo=True``).
    components : dict[str, Tensor ``[L, H, P, Dv]``] or None
        Full segment components (``keep_components=True``), fine segments.
    layer_index : LongTensor ``[L]``
        The model layer of every entry.
    call_index : LongTensor ``[L]``
        0 for a layer's first attention call, 1 for its second (DiffLlama), ...
    untraced_layers : tuple of int
        Layers without softmax attention (hybrid models: linear attention, convolution,
        state-space layers); empty for pure transformers.
    auxiliary_attention : dict[str, int]
        Attention calls that are not over the prompt's tokens (no layer index, no mask, keys
        that are not the tokens: Inkling2's attention residuals over earlier layers' outputs),
        by module class: run unchanged, not decomposed.
    sparse_attention_calls : int
        Attention calls of a sparse-attention model whose keys an indexer selected
        (``indices=`` or ``block_indices=``): their decomposition is over the selected keys
        only (the others get exactly zero weight, as in the model). 0 for dense attention.
    num_demo_keys_by_head, num_keys_by_head : LongTensor ``[L, H, P]``
        ``N_t`` and ``n_t`` per head (they differ between heads only with per-head masks).
    """

    input_ids: torch.Tensor
    tokens: tuple[str, ...]
    segments: tuple[str, ...]
    positions: torch.Tensor
    log_normalizer: torch.Tensor
    eta: torch.Tensor
    attention_mass: dict[str, torch.Tensor]
    component_norm: dict[str, torch.Tensor]
    demo_share: torch.Tensor
    mean_demo_logit: torch.Tensor
    mean_logit: torch.Tensor
    num_demo_keys: torch.Tensor
    num_keys: torch.Tensor
    has_kernel_form: torch.Tensor
    max_decomposition_error: float
    logits: torch.Tensor
    demo_mass: dict[str, torch.Tensor] | None = None
    components: dict[str, torch.Tensor] | None = None
    _records: dict[int, _LayerRecord] | None = field(default=None, repr=False)
    layer_index: torch.Tensor | None = None
    call_index: torch.Tensor | None = None
    untraced_layers: tuple[int, ...] = ()
    num_demo_keys_by_head: torch.Tensor | None = None
    num_keys_by_head: torch.Tensor | None = None
    auxiliary_attention: dict[str, int] = field(default_factory=dict)
    sparse_attention_calls: int = 0

    @property
    def num_layers(self) -> int:
        """Number of entries ``L`` (attention calls; the model's layer count for most models)."""
        return int(self.eta.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.eta.shape[1])

    def _record(self, layer: int, what: str) -> _LayerRecord:
        if self._records is None or self._records[layer].demo_keys is None:
            raise InputError(f"{what} not kept: call trace(..., keep_w0=True)")
        return self._records[layer]

    def w0(self, layer: int, head: int, position: int = -1) -> DualWeights:
        """Dual distilled weights ``W_0(t)`` of one head (needs ``trace(..., keep_w0=True)``).

        ``layer`` indexes the entries (see :attr:`layer_index`); ``position`` indexes
        :attr:`positions` (default: the last traced position).
        """
        rec = self._record(layer, "W_0 was")
        if not bool(rec.kernel_form[head]):
            raise InputError(f"layer {layer} head {head} has no kernel form (soft-capped or "
                             "biased logits), so W_0 is not defined")
        vis = rec.demo_visible[head if rec.demo_visible.shape[0] > 1 else 0, position]
        return DualWeights(keys=rec.demo_keys[head // rec.kv_groups][vis],
                           coefficients=rec.demo_values[head // rec.value_groups][vis],
                           log_multiplier=-float(rec.log_norm[head, position]), scale=rec.scale)

    def query(self, layer: int, head: int, position: int = -1) -> torch.Tensor:
        """The head's actual query vector ``q_t`` ``[D]`` (post-RoPE; needs ``keep_w0=True``)."""
        return self._record(layer, "queries were").queries[head, position]

    def to_frame(self) -> Any:
        """Long-format ``pandas.DataFrame``: one row per (entry, head, position); ``layer`` is the
        model layer (:attr:`layer_index`), ``call`` the call within it."""
        import pandas as pd

        L, H, P = self.eta.shape
        lay, hd, pi = torch.meshgrid(torch.arange(L), torch.arange(H), torch.arange(P),
                                     indexing="ij")
        pos = self.positions[pi.flatten()]
        layer_index = self.layer_index if self.layer_index is not None else torch.arange(L)
        call_index = self.call_index if self.call_index is not None else torch.zeros(L, dtype=int)
        n_demo = (self.num_demo_keys_by_head if self.num_demo_keys_by_head is not None
                  else self.num_demo_keys[:, None, :].expand(L, H, P))
        cols: dict[str, Any] = {
            "layer": layer_index[lay.flatten()].numpy(),
            "call": call_index[lay.flatten()].numpy(),
            "head": hd.flatten().numpy(),
            "position": pos.numpy(),
            "token": [self.tokens[int(p)] for p in pos],
            "log_normalizer": self.log_normalizer.flatten().numpy(),
            "eta": self.eta.flatten().numpy(),
            "demo_share": self.demo_share.flatten().numpy(),
            "mean_demo_logit": self.mean_demo_logit.flatten().numpy(),
            "mean_logit": self.mean_logit.flatten().numpy(),
            "num_demo_keys": n_demo.flatten().numpy(),
            "has_kernel_form": self.has_kernel_form[:, :, None].expand(L, H, P).flatten()
            .numpy(),
        }
        for g in self.attention_mass:
            cols[f"mass_{g}"] = self.attention_mass[g].flatten().numpy()
            cols[f"norm_{g}"] = self.component_norm[g].flatten().numpy()
        return pd.DataFrame(cols)


# ============================================================================ entry point
def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    try:
        return get() if callable(get) else config
    except Exception:  # pragma: no cover - exotic composite configs
        return config


def _context_length(config: Any) -> int | None:
    for cfg in (_text_config(config), config):
        for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def _num_layers(config: Any) -> int | None:
    for cfg in (_text_config(config), config):
        for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


#: Words in a config's layer-type names that mark a layer without softmax attention.
_NON_SOFTMAX = ("linear", "conv", "mamba", "recurrent", "ssm", "delta", "mlp", "moe", "rwkv",
                "lightning", "retention")


def _declared_softmax_layers(config: Any, n: int) -> list[bool] | None:
    """Per layer, whether the config declares it a softmax-attention layer (``layer_types``,
    ``layers_block_type``, ``block_types``, ``hybrid_override_pattern``, ``attn_layer_indices``,
    ``attn_layer_period/offset``); None when it declares nothing."""
    cfg = _text_config(config)
    for attr in ("layer_types", "layers_block_type", "block_types"):
        types = getattr(cfg, attr, None)
        if isinstance(types, (list, tuple)) and types and all(isinstance(t, str) for t in types):
            return [not any(w in types[i % len(types)].lower() for w in _NON_SOFTMAX)
                    for i in range(n)]
    pattern = getattr(cfg, "hybrid_override_pattern", None)
    if isinstance(pattern, str) and len(pattern) >= n:
        return [c == "*" for c in pattern[:n]]
    idx = getattr(cfg, "attn_layer_indices", None)
    if isinstance(idx, (list, tuple)):
        return [i in set(idx) for i in range(n)]
    period, offset = getattr(cfg, "attn_layer_period", None), getattr(cfg, "attn_layer_offset",
                                                                      None)
    if isinstance(period, int) and isinstance(offset, int) and period > 0:
        return [i % period == offset for i in range(n)]
    return None


def _check_traceable(model: Any) -> None:
    """Refuse a model whose traced forward pass is not the forward pass it runs untraced."""
    if getattr(getattr(model, "config", None), "reorder_and_upcast_attn", False):
        # GPT-2 takes its float32-upcast attention path only under the "eager" implementation
        # name: under the tracer's it would run (and be decomposed as) the plain one
        raise InputError(f"{type(model).__name__} has reorder_and_upcast_attn=True, an "
                         "attention path the tracer does not run; trace it with "
                         "config.reorder_and_upcast_attn = False")
    if getattr(model, "training", False):
        active = [f"{n} (p={m.p})" for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training]
        if active:
            more = f" and {len(active) - 1} more" if len(active) > 1 else ""
            raise InputError(f"the model is in training mode with dropout active in "
                             f"{active[0]}{more}: every trace would differ; call model.eval() "
                             "before tracing")


def _resolve_positions(positions: str | Sequence[int], tok: TokenizedPrompt) -> torch.Tensor:
    T = len(tok)
    if isinstance(positions, str):
        if positions == QUERY:
            pos = tok.positions(QUERY)
            if pos.numel() == 0:
                raise InputError("positions='query' but the prompt has no query tokens")
            return pos
        if positions == "last":
            return torch.tensor([T - 1])
        if positions == "all":
            return torch.arange(T)
        raise InputError(f"positions must be 'query', 'last', 'all' or a list of ints, got "
                         f"{positions!r}")
    if isinstance(positions, torch.Tensor | np.ndarray) and positions.ndim != 1:
        raise InputError(f"positions must be 1-D, got shape {tuple(positions.shape)}")
    items = positions.tolist() if isinstance(positions, torch.Tensor | np.ndarray) \
        else list(positions)
    for p in items:   # 1.7 or True would be truncated to a position nobody asked for
        if isinstance(p, bool) or not isinstance(p, int | np.integer):
            raise InputError(f"positions must be token indices (ints), got {p!r}")
    pos = torch.as_tensor(items, dtype=torch.long)
    if pos.numel() == 0:
        raise InputError("positions is empty")
    pos = torch.where(pos < 0, pos + T, pos)
    if bool((pos < 0).any() or (pos >= T).any()):
        raise InputError(f"positions out of range for a prompt of {T} tokens")
    return pos


def _module_layers(model: Any) -> dict[int, int]:
    """``id(module) -> layer`` for modules without ``layer_idx``: the first number in the
    module's path (``model.layers.3.self_attn`` -> 3)."""
    out: dict[int, int] = {}
    for path, m in model.named_modules():
        if getattr(m, "layer_idx", None) is None:
            nums = [int(p) for p in path.split(".") if p.isdigit()]
            if nums:
                out[id(m)] = nums[0]
    return out


def _traced_forward(model: Any, req: _Request, input_ids: torch.Tensor) -> Any:
    """One forward pass of ``model`` on ``input_ids`` with the tracing attention function, which
    appends a :class:`_LayerRecord` to ``req`` per attention call; the model's own attention
    implementation is restored and ``req``'s progress bar closed afterwards."""
    name = type(model).__name__
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(TRACE_ATTENTION)
    except (ValueError, AttributeError, NotImplementedError, KeyError) as exc:
        raise InputError(f"{name} cannot use a custom attention function "
                         f"(transformers' attention interface): {exc}") from exc
    token = _ACTIVE.set(req)
    # the reductions' buffers are released before the output head builds the vocabulary logits
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hook = (head.register_forward_pre_hook(lambda *_: req.work.release())
            if isinstance(head, torch.nn.Module) else None)
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            return model(input_ids=input_ids[None].to(device), use_cache=False)
    finally:
        if hook is not None:
            hook.remove()
        req.work.release()
        _ACTIVE.reset(token)
        model.set_attn_implementation(previous)
        if req.progress is not None:
            req.progress.close()


def _untraced_layers(model: Any, req: _Request, n_layers: int | None,
                     keep_components: bool) -> tuple[int, ...]:
    """The layers that made no record (the config must declare them non-attention layers);
    refuses a model whose attention did not (all) go through the tracer, or whose layers
    differ in head count (or in value size, with ``keep_components``)."""
    name = type(model).__name__
    if not req.records:
        raise InputError(f"{name} does not route attention through transformers' attention "
                         "interface (or has no softmax attention over the tokens); this "
                         "architecture is not supported")
    traced = {r.layer for r in req.records}
    untraced: tuple[int, ...] = ()
    if n_layers is not None:
        untraced = tuple(i for i in range(n_layers) if i not in traced)
    if untraced:
        softmax = _declared_softmax_layers(model.config, n_layers)
        if softmax is None:
            raise InputError(f"only {len(traced)} of {n_layers} layers of {name} went through "
                             "the attention interface and its config does not declare the "
                             "others non-attention layers; this architecture is not supported")
        missed = [i for i in untraced if softmax[i]]
        if missed:
            raise InputError(f"layers {missed} of {name} are attention layers but did not go "
                             "through the attention interface; this architecture is not "
                             "supported")
    heads = {int(r.eta.shape[0]) for r in req.records}
    if len(heads) > 1:
        raise InputError(f"the layers of {name} have different numbers of attention heads "
                         f"({sorted(heads)}); the tracer needs one head count for all layers")
    if keep_components and len({int(r.components.shape[-1]) for r in req.records}) > 1:
        raise InputError(f"the layers of {name} have different value sizes; trace it without "
                         "keep_components")
    return untraced


def trace(
    model: Any,
    tokenizer: Any,
    prompt: Prompt | TokenizedPrompt,
    *,
    positions: str | Sequence[int] = QUERY,
    per_demo: bool = False,
    keep_components: bool = False,
    keep_w0: bool = False,
    progress: bool = False,
) -> TraceResult:
    """Decompose every attention head of ``model`` on ``prompt`` (SPEC §1–2).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM whose attention goes through ``transformers``' attention interface (Llama,
        Gemma/Gemma2/Gemma3, Qwen2/Qwen3, Mistral, Phi-3, GPT-2, GPT-NeoX, GPT-OSS, DeepSeek,
        ...; ``benchmarks/results/tracer_coverage.md`` lists every architecture of the installed
        ``transformers``). It is left unchanged.
    tokenizer
        Its fast tokenizer.
    prompt : Prompt or TokenizedPrompt
    positions : "query", "last", "all" or sequence of int
        Query positions to decompose (default: every token of the query).
    per_demo : bool
        Also report the attention mass of every single demonstration.
    keep_components : bool
        Keep the full component vectors ``[L, H, P, Dv]`` per fine segment.
    keep_w0 : bool
        Keep the demonstration keys/values so that :meth:`TraceResult.w0` works.
    progress : bool
        Show a progress bar over layers.

    Returns
    -------
    TraceResult

    Raises
    ------
    InputError
        Prompt longer than the model's context, batch size other than 1, an architecture that
        does not route attention through the attention interface, passes it a keyword the tracer
        does not understand, or whose attention the decomposition does not reproduce within
        :data:`CHECK_TOLERANCE`.
    """
    tok = prompt.tokenize(tokenizer) if isinstance(prompt, Prompt) else prompt
    if not isinstance(tok, TokenizedPrompt):
        raise InputError("prompt must be a Prompt or a TokenizedPrompt")
    _check_traceable(model)
    T = len(tok)
    ctx = _context_length(model.config)
    if ctx is not None and T > ctx:
        raise InputError(f"the prompt has {T} tokens but the model's context is {ctx}")
    pos = _resolve_positions(positions, tok)
    fine = tuple(dict.fromkeys(tok.segments))
    index = {n: i for i, n in enumerate(fine)}
    seg_ids = torch.tensor([index[s] for s in tok.segments], dtype=torch.long)
    group_of = torch.tensor([_GROUPS.index(group_segment(n)) for n in fine], dtype=torch.long)
    n_layers = _num_layers(model.config)
    bar = None
    if progress:
        from icldistill.core.progress import progress_bar

        bar = progress_bar(total=n_layers, desc="tracing layers", unit="layer")
    every = pos.numel() == T and bool((pos == torch.arange(T)).all())
    req = _Request(seg_ids, fine, group_of, pos, keep_components, keep_w0, every, progress=bar,
                   module_layers=_module_layers(model), per_demo=per_demo,
                   store=_Store(rows=n_layers or 8))
    out = _traced_forward(model, req, tok.input_ids)
    untraced = _untraced_layers(model, req, n_layers, keep_components)
    logits = out.logits[0]
    if not every:                                  # all positions: the model's logits, no copy
        logits = logits.index_select(0, pos.to(logits.device))
    del out
    return _assemble(req, tok, tokenizer, logits.float().cpu(), per_demo, untraced)


def _assemble(req: _Request, tok: TokenizedPrompt, tokenizer: Any, logits: torch.Tensor,
              per_demo: bool, untraced: tuple[int, ...] = ()) -> TraceResult:
    recs = sorted(req.records, key=lambda r: (r.layer, r.call))

    def stack(attr: str) -> torch.Tensor:
        return torch.stack([getattr(r, attr) for r in recs])

    mass = stack("mass")                          # [L, S_fine, H, P], or [L, 3, H, P]
    L, _, H, P = mass.shape
    if per_demo:
        grouped_mass = torch.zeros(L, 3, H, P, dtype=mass.dtype)
        grouped_mass.index_add_(1, req.group_of, mass)
    else:                                         # grouped call by call (:func:`_record`)
        grouped_mass = mass
    comp_norm = stack("comp_norm")                              # [L, 3, H, P]
    share = comp_norm[:, 1] / comp_norm.sum(1).clamp_min(1e-30)
    attention_mass = {g: grouped_mass[:, i] for i, g in enumerate(_GROUPS)}
    component_norm = {g: comp_norm[:, i] for i, g in enumerate(_GROUPS)}
    if any(r.sink_mass is not None for r in recs):
        zeros = torch.zeros(H, P, dtype=mass.dtype)
        attention_mass[SINK] = torch.stack([r.sink_mass if r.sink_mass is not None else zeros
                                            for r in recs])
        component_norm[SINK] = torch.zeros(L, H, P, dtype=comp_norm.dtype)
    demo_mass = None
    if per_demo:
        demo_mass = {n: mass[:, i] for i, n in enumerate(req.seg_names)
                     if n.startswith("demo:")}
    components = None
    if req.keep_components:
        comps = stack("components")                             # [L, S_fine, H, P, Dv]
        components = {n: comps[:, i] for i, n in enumerate(req.seg_names)}
    for r in recs:          # stacked above: the per-layer copies are not needed any more
        r.mass = r.components = None
    try:
        tokens = tuple(tokenizer.convert_ids_to_tokens(tok.input_ids.tolist()))
    except Exception:  # pragma: no cover - exotic tokenizers
        tokens = tuple(str(i) for i in tok.input_ids.tolist())
    n_demo = stack("num_demo")                                  # [L, H, P]
    n_keys = stack("num_keys")
    return TraceResult(
        input_ids=tok.input_ids,
        tokens=tokens,
        segments=tok.segments,
        positions=req.positions,
        log_normalizer=stack("log_norm"),
        eta=stack("eta"),
        attention_mass=attention_mass,
        component_norm=component_norm,
        demo_share=share,
        mean_demo_logit=stack("mean_demo_logit"),
        mean_logit=stack("mean_logit"),
        num_demo_keys=n_demo.amax(1),
        num_keys=n_keys.amax(1),
        has_kernel_form=stack("kernel_form"),
        max_decomposition_error=max(r.max_rel_error for r in recs),
        logits=logits,
        demo_mass=demo_mass,
        components=components,
        _records=dict(enumerate(recs)) if req.keep_w0 else None,
        layer_index=torch.tensor([r.layer for r in recs], dtype=torch.long),
        call_index=torch.tensor([r.call for r in recs], dtype=torch.long),
        untraced_layers=untraced,
        num_demo_keys_by_head=n_demo,
        num_keys_by_head=n_keys,
        auxiliary_attention=dict(req.auxiliary),
        sparse_attention_calls=req.sparse,
    )
