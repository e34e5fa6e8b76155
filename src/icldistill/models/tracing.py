"""Trace real causal language models: every attention head split into prefix / demos / query.

:func:`trace` runs one forward pass of a Hugging Face ``transformers`` model with an attention
function registered through the library's attention interface (``AttentionInterface``). That
function receives the model's *actual* ``q``, ``k``, ``v`` — after RoPE, q/k norms, grouped-query
repetition — together with the scale, the mask (causal, sliding window, padding) and any
soft-capping, and it computes attention with exactly the operations of the eager implementation,
so the model's output does not change. For the chosen query positions it also reduces each head
with the pieces of :func:`icldistill.decomposition.segment_decomposition` (the math core) and
keeps only the per-head statistics, layer by layer; full tensors are kept only when asked for.

Heads whose logits are not a pure scaled dot product (soft-capping, additive position biases
such as ALiBi) are decomposed exactly as well but flagged ``has_kernel_form = False``: they have
no distilled weights ``W_0``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from .._validation import InputError
from ..decomposition import DualWeights, attention_probs, segment_components, segment_mass
from ..prompts import DEMOS, PREFIX, QUERY, Prompt, TokenizedPrompt, group_segment

__all__ = ["TRACE_ATTENTION", "TraceResult", "trace"]

#: Name under which the tracing attention function is registered in ``transformers``.
TRACE_ATTENTION = "icldistill_trace"

_GROUPS = (PREFIX, DEMOS, QUERY)

#: Largest float64 block (heads x positions x keys) reduced at once (64 MB).
_CHUNK_ELEMENTS = 1 << 23


# ============================================================================ per-layer capture
@dataclass
class _LayerRecord:
    log_norm: torch.Tensor            # [H, P]
    eta: torch.Tensor                 # [H, P]
    mass: torch.Tensor | None         # [S_fine, H, P] (released once stacked)
    comp_norm: torch.Tensor           # [3, H, P] grouped prefix / demos / query
    mean_demo_logit: torch.Tensor     # [H, P]
    mean_logit: torch.Tensor          # [H, P]
    num_demo: torch.Tensor            # [P]
    num_keys: torch.Tensor            # [P]
    kernel_form: bool
    max_rel_error: float
    components: torch.Tensor | None = None   # [S_fine, H, P, Dv]
    demo_keys: torch.Tensor | None = None    # [H_kv, N, D]
    demo_values: torch.Tensor | None = None  # [H_kv, N, Dv]
    demo_visible: torch.Tensor | None = None  # [P, N]
    queries: torch.Tensor | None = None      # [H, P, D]
    scale: float = 0.0
    kv_groups: int = 1


@dataclass
class _Request:
    seg_ids: torch.Tensor             # [T] fine segment index per token
    seg_names: tuple[str, ...]        # fine names
    group_of: torch.Tensor            # [S_fine] group index (prefix/demos/query)
    positions: torch.Tensor           # [P]
    keep_components: bool
    keep_w0: bool
    every: bool = False               # positions == 0..T-1: no position gather needed
    layers: dict[int, _LayerRecord] = field(default_factory=dict)
    progress: Any = None


_ACTIVE: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("icldistill_trace",
                                                                         default=None)


def _trace_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (same operations, same result) plus the decomposition of chosen positions.

    Shapes: ``query [B, H, T, D]``, ``key/value [B, H_kv, S, D]``, ``attention_mask`` additive
    ``[B, 1, T, S]``; returns ``([B, T, H, Dv], probs [B, H, T, S])``.
    """
    if kwargs.get("s_aux") is not None:
        raise InputError("attention sinks (s_aux) are not supported by the tracer yet")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    logits = torch.matmul(query, k.transpose(2, 3)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    scores = logits + attention_mask if attention_mask is not None else logits
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, v)
    req = _ACTIVE.get()
    if req is not None:
        _record(req, module, query, logits, attention_mask, key, value, v, out,
                float(scaling), softcap is None, groups)
    return out.transpose(1, 2).contiguous(), probs


AttentionInterface.register(TRACE_ATTENTION, _trace_attention)
AttentionMaskInterface.register(TRACE_ATTENTION, eager_mask)


def _record(
    req: _Request,
    module: torch.nn.Module,
    query: torch.Tensor,
    logits: torch.Tensor,
    attention_mask: torch.Tensor | None,
    key: torch.Tensor,
    value: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    kernel_form: bool,
    groups: int,
) -> None:
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        layer = len(req.layers)
    if logits.shape[0] != 1:
        raise InputError("the tracer handles one prompt at a time (batch size 1)")
    pos = req.positions.to(logits.device)
    H, S = logits.shape[1], logits.shape[-1]
    if S != req.seg_ids.shape[0]:
        raise InputError(f"the model attended over {S} keys but the prompt has "
                         f"{req.seg_ids.shape[0]} tokens (is a key/value cache in use?)")
    # The reductions run in float64 (only the traced positions, a few heads at a time, so the
    # extra memory stays bounded): float32 sums over thousands of keys with large logits lose
    # ~1e-4 of the attention mass.
    cdtype = torch.float64
    P = pos.shape[0]
    extra = None
    if attention_mask is None:
        allowed = torch.ones(P, S, dtype=torch.bool, device=logits.device)
    else:
        m = attention_mask[0, 0].index_select(0, pos)                     # [P, S]
        if m.dtype == torch.bool:
            allowed = m
        else:
            allowed = m > torch.finfo(m.dtype).min / 2
            bias = m.masked_fill(~allowed, 0.0)
            if bool(bias.ne(0).any()):  # additive position bias (ALiBi, ...): no kernel form
                extra = bias.to(cdtype)
                kernel_form = False
    seg_ids = req.seg_ids.to(logits.device)
    group_of = req.group_of.to(logits.device)
    demo_cols = group_of[seg_ids] == 1                                   # [S]
    vis_demo = allowed & demo_cols[None, :]                              # [P, S]
    n_demo = vis_demo.sum(-1)                                            # [P]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, P * S))
    n_fine = len(req.seg_names)
    # without kept components only the three groups' components are formed (the fine
    # segments' masses are one scatter-add): 3 matrix products per chunk instead of S_fine
    comp_ids, n_comp = (seg_ids, n_fine) if req.keep_components else (group_of[seg_ids], 3)
    vis_f = vis_demo.to(cdtype)
    all_f = allowed.to(cdtype)
    parts: list[tuple[torch.Tensor, ...]] = []
    for h0 in range(0, H, chunk):
        lg = logits[0, h0 : h0 + chunk]
        lg = (lg if req.every else lg.index_select(1, pos)).to(cdtype)   # [h, P, S]
        if extra is not None:
            lg = lg + extra
        vv = v[0, h0 : h0 + chunk].to(cdtype)                            # [h, S, Dv]
        # masked means of the logits (before masking them to -inf below)
        md = torch.einsum("hps,ps->hp", lg, vis_f) / n_demo.to(cdtype)
        ml = torch.einsum("hps,ps->hp", lg, all_f) / allowed.sum(-1).to(cdtype)
        probs, ln = attention_probs(lg, allowed.expand(lg.shape[0], P, S))
        c = segment_components(probs, vv, comp_ids, n_comp)              # [h, n_comp, P, Dv]
        ms = segment_mass(probs, seg_ids, n_fine)                        # [h, S_fine, P]
        parts.append((c.movedim(-3, 0), ln, ms.movedim(-2, 0), md, ml))  # segment axis first
    comps = torch.cat([p[0] for p in parts], dim=1) if len(parts) > 1 else parts[0][0]
    log_norm = torch.cat([p[1] for p in parts])                          # [H, P]
    mass = torch.cat([p[2] for p in parts], dim=1)                       # [S_fine, H, P]
    mean_demo = torch.cat([p[3] for p in parts])
    mean_logit = torch.cat([p[4] for p in parts])
    if req.keep_components:                                              # [S_fine, H, P, Dv]
        grouped = torch.zeros(3, *comps.shape[1:], dtype=cdtype, device=comps.device)
        grouped.index_add_(0, group_of, comps)                           # [3, H, P, Dv]
    else:
        grouped = comps                                                  # [3, H, P, Dv]
    eta = torch.exp(torch.log(n_demo.to(cdtype) / 2.0)[None, :] - log_norm)
    actual = (out[0] if req.every else out[0].index_select(1, pos)).to(cdtype)  # [H, P, Dv]
    err = (grouped.sum(0) - actual).norm(dim=-1) / actual.norm(dim=-1).clamp_min(1e-30)
    rec = _LayerRecord(
        log_norm=log_norm.cpu(), eta=eta.cpu(), mass=mass.cpu(),
        comp_norm=grouped.norm(dim=-1).cpu(), mean_demo_logit=mean_demo.cpu(),
        mean_logit=mean_logit.cpu(), num_demo=n_demo.cpu(), num_keys=allowed.sum(-1).cpu(),
        kernel_form=kernel_form,
        max_rel_error=float(err.max()) if err.numel() else 0.0, scale=scale, kv_groups=groups,
    )
    if req.keep_components:
        rec.components = comps.cpu()
    if req.keep_w0:
        demo_pos = demo_cols.nonzero().flatten()
        rec.demo_keys = key[0].index_select(1, demo_pos).detach().to(cdtype).cpu()
        rec.demo_values = value[0].index_select(1, demo_pos).detach().to(cdtype).cpu()
        rec.demo_visible = allowed.index_select(1, demo_pos).cpu()
        rec.queries = query[0].index_select(1, pos).detach().to(cdtype).cpu()
    req.layers[int(layer)] = rec
    if req.progress is not None:
        req.progress.update(1)


# ============================================================================ result
@dataclass(frozen=True)
class TraceResult:
    """Per layer, head and traced query position: the SPEC §1–2 quantities of a real model.

    Shapes use ``L`` layers, ``H`` query heads, ``P`` traced positions.

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
        ``log D'_t``.
    eta : Tensor ``[L, H, P]``
        ``eta*_t = N_t / (2 D'_t)``.
    attention_mass : dict[str, Tensor ``[L, H, P]``]
        Attention probability mass of ``"prefix"``, ``"demos"``, ``"query"``.
    component_norm : dict[str, Tensor ``[L, H, P]``]
        ``||c_S(t)||`` of the three grouped segments.
    demo_share : Tensor ``[L, H, P]``
        ``||c_D|| / (||c_prefix|| + ||c_D|| + ||c_Q||)``: the demonstrations' share of the output.
    mean_demo_logit : Tensor ``[L, H, P]``
        Mean logit over the visible demonstration keys (domain stationarity).
    mean_logit : Tensor ``[L, H, P]``
        Mean logit over all attended keys.
    num_demo_keys : LongTensor ``[L, P]``
        ``N_t`` (sliding windows make it layer-dependent).
    num_keys : LongTensor ``[L, P]``
        ``n_t``, the number of keys position ``t`` attends to (Jensen:
        ``log(D'_t / n_t) >= mean_logit``).
    has_kernel_form : BoolTensor ``[L, H]``
        Whether the head's logits are a pure scaled dot product (``W_0`` exists).
    max_decomposition_error : float
        Largest ``||sum_S c_S - o|| / ||o||`` over layers, heads and positions, against the
        attention output the model actually used.
    logits : Tensor ``[P, V]``
        The model's output logits at the traced positions.
    demo_mass : dict[str, Tensor ``[L, H, P]``] or None
        Attention mass of every single demonstration (``per_demo=True``).
    components : dict[str, Tensor ``[L, H, P, Dv]``] or None
        Full segment components (``keep_components=True``), fine segments.
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

    @property
    def num_layers(self) -> int:
        return int(self.eta.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.eta.shape[1])

    def w0(self, layer: int, head: int, position: int = -1) -> DualWeights:
        """Dual distilled weights ``W_0(t)`` of one head (needs ``trace(..., keep_w0=True)``).

        ``position`` indexes :attr:`positions` (default: the last traced position).
        """
        if self._records is None or self._records[layer].demo_keys is None:
            raise InputError("W_0 was not kept: call trace(..., keep_w0=True)")
        rec = self._records[layer]
        if not rec.kernel_form:
            raise InputError(f"layer {layer} has no kernel form (soft-capped or biased logits), "
                             "so W_0 is not defined")
        kv = head // rec.kv_groups
        vis = rec.demo_visible[position]
        return DualWeights(keys=rec.demo_keys[kv][vis], coefficients=rec.demo_values[kv][vis],
                           log_multiplier=-float(rec.log_norm[head, position]), scale=rec.scale)

    def query(self, layer: int, head: int, position: int = -1) -> torch.Tensor:
        """The head's actual query vector ``q_t`` ``[D]`` (post-RoPE; needs ``keep_w0=True``)."""
        if self._records is None or self._records[layer].queries is None:
            raise InputError("queries were not kept: call trace(..., keep_w0=True)")
        return self._records[layer].queries[head, position]

    def to_frame(self) -> Any:
        """Long-format ``pandas.DataFrame``: one row per (layer, head, position)."""
        import pandas as pd

        L, H, P = self.eta.shape
        lay, hd, pi = torch.meshgrid(torch.arange(L), torch.arange(H), torch.arange(P),
                                     indexing="ij")
        pos = self.positions[pi.flatten()]
        cols: dict[str, Any] = {
            "layer": lay.flatten().numpy(),
            "head": hd.flatten().numpy(),
            "position": pos.numpy(),
            "token": [self.tokens[int(p)] for p in pos],
            "log_normalizer": self.log_normalizer.flatten().numpy(),
            "eta": self.eta.flatten().numpy(),
            "demo_share": self.demo_share.flatten().numpy(),
            "mean_demo_logit": self.mean_demo_logit.flatten().numpy(),
            "mean_logit": self.mean_logit.flatten().numpy(),
            "num_demo_keys": self.num_demo_keys[:, None, :].expand(L, H, P).flatten().numpy(),
            "has_kernel_form": self.has_kernel_form[:, :, None].expand(L, H, P).flatten()
            .numpy(),
        }
        for g in _GROUPS:
            cols[f"mass_{g}"] = self.attention_mass[g].flatten().numpy()
            cols[f"norm_{g}"] = self.component_norm[g].flatten().numpy()
        return pd.DataFrame(cols)


# ============================================================================ entry point
def _context_length(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _resolve_positions(positions: str | Sequence[int], tok: TokenizedPrompt) -> torch.Tensor:
    T = len(tok)
    if isinstance(positions, str):
        if positions == QUERY:
            return tok.positions(QUERY)
        if positions == "last":
            return torch.tensor([T - 1])
        if positions == "all":
            return torch.arange(T)
        raise InputError(f"positions must be 'query', 'last', 'all' or a list of ints, got "
                         f"{positions!r}")
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    if pos.numel() == 0:
        raise InputError("positions is empty")
    pos = torch.where(pos < 0, pos + T, pos)
    if bool((pos < 0).any() or (pos >= T).any()):
        raise InputError(f"positions out of range for a prompt of {T} tokens")
    return pos


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
        Gemma/Gemma3, Qwen2, Mistral, Phi-3, GPT-2, GPT-NeoX, ...). It is left unchanged.
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
        Prompt longer than the model's context, an architecture that does not route attention
        through the attention interface, batch size other than 1.
    """
    tok = prompt.tokenize(tokenizer) if isinstance(prompt, Prompt) else prompt
    if not isinstance(tok, TokenizedPrompt):
        raise InputError("prompt must be a Prompt or a TokenizedPrompt")
    T = len(tok)
    ctx = _context_length(model.config)
    if ctx is not None and T > ctx:
        raise InputError(f"the prompt has {T} tokens but the model's context is {ctx}")
    pos = _resolve_positions(positions, tok)
    fine = tuple(dict.fromkeys(tok.segments))
    index = {n: i for i, n in enumerate(fine)}
    seg_ids = torch.tensor([index[s] for s in tok.segments], dtype=torch.long)
    group_of = torch.tensor([_GROUPS.index(group_segment(n)) for n in fine], dtype=torch.long)
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config,
                                                                          "n_layer", None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_layers, desc="tracing layers", unit="layer", leave=False)
    every = pos.numel() == T and bool((pos == torch.arange(T)).all())
    req = _Request(seg_ids, fine, group_of, pos, keep_components, keep_w0, every, progress=bar)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(TRACE_ATTENTION)
    except (ValueError, AttributeError, NotImplementedError) as exc:
        raise InputError(f"{type(model).__name__} cannot use a custom attention function "
                         f"(transformers' attention interface): {exc}") from exc
    token = _ACTIVE.set(req)
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model(input_ids=tok.input_ids[None].to(device), use_cache=False)
    finally:
        _ACTIVE.reset(token)
        model.set_attn_implementation(previous)
        if bar is not None:
            bar.close()
    if not req.layers:
        raise InputError(f"{type(model).__name__} does not route attention through "
                         "transformers' attention interface; this architecture is not supported")
    if n_layers is not None and len(req.layers) != n_layers:
        raise InputError(f"only {len(req.layers)} of {n_layers} layers of "
                         f"{type(model).__name__} went through the attention interface")
    logits = out.logits[0]
    if not every:                                  # all positions: the model's logits, no copy
        logits = logits.index_select(0, pos.to(logits.device))
    del out
    return _assemble(req, tok, tokenizer, logits.float().cpu(), per_demo)


def _assemble(req: _Request, tok: TokenizedPrompt, tokenizer: Any, logits: torch.Tensor,
              per_demo: bool) -> TraceResult:
    recs = [req.layers[i] for i in sorted(req.layers)]

    def stack(attr: str) -> torch.Tensor:
        return torch.stack([getattr(r, attr) for r in recs])

    mass_fine = stack("mass")                                   # [L, S_fine, H, P]
    L, _, H, P = mass_fine.shape
    grouped_mass = torch.zeros(L, 3, H, P, dtype=mass_fine.dtype)
    grouped_mass.index_add_(1, req.group_of, mass_fine)
    comp_norm = stack("comp_norm")                              # [L, 3, H, P]
    share = comp_norm[:, 1] / comp_norm.sum(1).clamp_min(1e-30)
    demo_mass = None
    if per_demo:
        demo_mass = {n: mass_fine[:, i] for i, n in enumerate(req.seg_names)
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
    return TraceResult(
        input_ids=tok.input_ids,
        tokens=tokens,
        segments=tok.segments,
        positions=req.positions,
        log_normalizer=stack("log_norm"),
        eta=stack("eta"),
        attention_mass={g: grouped_mass[:, i] for i, g in enumerate(_GROUPS)},
        component_norm={g: comp_norm[:, i] for i, g in enumerate(_GROUPS)},
        demo_share=share,
        mean_demo_logit=stack("mean_demo_logit"),
        mean_logit=stack("mean_logit"),
        num_demo_keys=stack("num_demo"),
        num_keys=stack("num_keys"),
        has_kernel_form=torch.tensor([[r.kernel_form] * H for r in recs], dtype=torch.bool),
        max_decomposition_error=max(r.max_rel_error for r in recs),
        logits=logits,
        demo_mass=demo_mass,
        components=components,
        _records=dict(enumerate(recs)) if req.keep_w0 else None,
    )
