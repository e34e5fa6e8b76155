"""A small softmax-attention transformer that learns in context, in one readable file.

The model reads a prompt of ``N`` input–label pairs as ``2 N`` tokens of ``d_x + 2`` features::

    demonstrations:  [x_0, y_0, 0], [x_1, y_1, 0], ..., [x_{N-1}, y_{N-1}, 0]
    queries:         [x_0, 0,   1], [x_1, 0,   1], ..., [x_{N-1}, 0,       1]

(one token per demonstration, as in von Oswald et al., 2023; the last feature flags queries).
Query token ``i`` attends to the demonstrations ``0 .. i-1`` and to itself; demonstration ``j``
attends to demonstrations ``0 .. j`` (causal). The output at query token ``i`` is the prediction
of ``y_i`` made from ``i`` in-context examples, so one prompt gives ``N`` predictions, made with
``0, 1, ..., N-1`` examples. (The interleaved ``x, y, x, y`` layout of Garg et al. (2022) needs
far longer training to leave its loss plateau; this layout learns in a few minutes on a CPU.)

Architecture (GPT-2 style, pre-LayerNorm): a linear read-in plus learned position embeddings
(demonstration ``j`` has position ``j``, query ``i`` position ``max_examples + i``),
``n_layers`` blocks of masked multi-head softmax attention (logits ``s <q, k>`` with
``s = 1/sqrt(d_head)``, no bias, no rotary encoding, so every head has the kernel form of
SPEC §2) and a GELU MLP, a final LayerNorm and a linear read-out to one number.

:meth:`ICLTransformer.trace` returns, for every layer, the queries, keys, values and attention
output of every head, so the SPEC §1–2 decomposition (:func:`icldistill.decompose_head`) can be
applied to any head and position: at query token ``i`` the segment ``"demos"`` is the ``i``
demonstration tokens it sees (``N_t = i``) and the segment ``"query"`` is its own token.
Tracing does not change the predictions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from icldistill.core.validation import InputError

__all__ = ["TASKS", "ICLConfig", "ICLTrace", "ICLTransformer", "LayerAttention"]

TASKS = ("regression", "classification")


@dataclass(frozen=True)
class ICLConfig:
    """Shape of an :class:`ICLTransformer`.

    Attributes
    ----------
    d_x : int
        Input dimension ``d``.
    max_examples : int
        Largest number of in-context pairs ``N`` (the prompt has ``2 N`` tokens).
    n_layers, n_heads, d_model : int
        Depth, heads per layer and residual width (``d_model`` divisible by ``n_heads``).
    mlp_ratio : int
        MLP hidden width over ``d_model``.
    task : {"regression", "classification"}
        What the model was (or will be) trained on; informational, kept in checkpoints.
    """

    d_x: int = 5
    max_examples: int = 40
    n_layers: int = 3
    n_heads: int = 4
    d_model: int = 64
    mlp_ratio: int = 4
    task: str = "regression"

    def __post_init__(self) -> None:
        for name in ("d_x", "max_examples", "n_layers", "n_heads", "d_model", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise InputError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads})")
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; expected one of {TASKS}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LayerAttention:
    """What one attention layer computed on a batch (shapes ``B`` prompts, ``H`` heads, ``T``
    tokens, ``d_head``).

    Attributes
    ----------
    queries, keys, values : Tensor ``[B, H, T, d_head]``
    output : Tensor ``[B, H, T, d_head]``
        Softmax attention output of every head, before the output projection.
    scale : float
        Logit scale ``s``: the logits are ``s <q_t, k_j>`` where ``mask[t, j]``.
    mask : BoolTensor ``[T, T]``
        Which keys every position attends to (:meth:`ICLTransformer.attention_mask`).
    """

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    output: torch.Tensor
    scale: float
    mask: torch.Tensor


@dataclass(frozen=True)
class ICLTrace:
    """Predictions and per-layer attention of one forward pass.

    Attributes
    ----------
    predictions : Tensor ``[B, N]``
        Prediction for ``y_i`` made at query token ``i`` from the pairs ``< i``.
    layers : tuple of LayerAttention, length ``n_layers``
    """

    predictions: torch.Tensor
    layers: tuple[LayerAttention, ...]


class _Block(nn.Module):
    def __init__(self, cfg: ICLConfig) -> None:
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor,
                keep: list[LayerAttention] | None) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(D, dim=-1)
        q, k, v = (z.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for z in (q, k, v))
        scale = 1.0 / math.sqrt(self.d_head)
        # Logits in the working dtype; softmax subtracts the row max (never exp of raw logits).
        logits = (q @ k.transpose(-1, -2)) * scale
        att = torch.softmax(logits.masked_fill(~mask, -math.inf), dim=-1)
        out = att @ v
        if keep is not None:
            keep.append(LayerAttention(queries=q, keys=k, values=v, output=out, scale=scale,
                                       mask=mask))
        h = h + self.proj(out.transpose(1, 2).reshape(B, T, D))
        return h + self.mlp(self.ln2(h))


class ICLTransformer(nn.Module):
    """Causal softmax-attention transformer for in-context regression / classification.

    Parameters
    ----------
    config : ICLConfig

    Examples
    --------
    >>> model = ICLTransformer(ICLConfig(d_x=5))
    >>> xs, ys = torch.randn(8, 20, 5), torch.randn(8, 20)
    >>> model(xs, ys).shape
    torch.Size([8, 20])
    """

    def __init__(self, config: ICLConfig) -> None:
        super().__init__()
        self.config = config
        self.read_in = nn.Linear(config.d_x + 2, config.d_model)
        self.position = nn.Embedding(2 * config.max_examples, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.read_out = nn.Linear(config.d_model, 1)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def tokens(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Input tokens ``[B, 2N, d_x + 2]``: ``[x_j, y_j, 0]`` for the demonstrations, then
        ``[x_i, 0, 1]`` for the queries."""
        B, N, _ = self._check(xs, ys)
        zero, one = xs.new_zeros(B, N, 1), xs.new_ones(B, N, 1)
        demos = torch.cat([xs, ys[..., None].to(xs.dtype), zero], dim=-1)
        queries = torch.cat([xs, zero, one], dim=-1)
        return torch.cat([demos, queries], dim=1)

    def _check(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[int, int, int]:
        if not isinstance(xs, torch.Tensor) or xs.ndim != 3:
            raise InputError(f"xs must be a tensor [B, N, d_x], got "
                             f"{getattr(xs, 'shape', type(xs))}")
        B, N, d = xs.shape
        if d != self.config.d_x:
            raise InputError(f"xs has input dimension {d}, the model expects {self.config.d_x}")
        if not isinstance(ys, torch.Tensor) or tuple(ys.shape) != (B, N):
            raise InputError(f"ys must be a tensor [{B}, {N}], got "
                             f"{tuple(getattr(ys, 'shape', ()))}")
        if N < 1 or N > self.config.max_examples:
            raise InputError(f"prompt has {N} examples; the model takes 1 to "
                             f"{self.config.max_examples}")
        if not (bool(torch.isfinite(xs).all()) and bool(torch.isfinite(ys).all())):
            raise InputError("xs and ys must be finite (found NaN or inf)")
        return B, N, d

    @staticmethod
    def attention_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean mask ``[2n, 2n]`` (True = may attend) of a prompt with ``n`` pairs."""
        m = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=device)
        ones = torch.ones(n, n, dtype=torch.bool, device=device)
        m[:n, :n] = ones.tril()            # demonstration j sees demonstrations <= j
        m[n:, :n] = ones.tril(-1)          # query i sees demonstrations < i ...
        m[n:, n:] = torch.eye(n, dtype=torch.bool, device=device)   # ... and itself
        return m

    @staticmethod
    def query_position(i: int, n: int) -> int:
        """Token index of query ``i`` in a prompt of ``n`` pairs: ``n + i``. The keys it sees
        are the demonstration tokens ``0 .. i-1`` and its own token."""
        return int(n) + int(i)

    def _run(self, xs: torch.Tensor, ys: torch.Tensor,
             keep: list[LayerAttention] | None) -> torch.Tensor:
        tok = self.tokens(xs, ys)
        n = xs.shape[1]
        mask = self.attention_mask(n, tok.device)
        idx = torch.arange(n, device=tok.device)
        pos = torch.cat([idx, self.config.max_examples + idx])   # demo j: j; query i: N_max + i
        h = self.read_in(tok) + self.position(pos)
        for block in self.blocks:
            h = block(h, mask, keep)
        return self.read_out(self.ln_f(h))[:, n:, 0]

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predictions ``[B, N]``: entry ``i`` predicts ``y_i`` from the pairs ``< i``.

        Parameters
        ----------
        xs : Tensor ``[B, N, d_x]``
        ys : Tensor ``[B, N]``
            Labels; ``ys[:, i]`` is never seen by prediction ``i`` (attention mask).
        """
        return self._run(xs, ys, None)

    def trace(self, xs: torch.Tensor, ys: torch.Tensor) -> ICLTrace:
        """Predictions plus every layer's queries, keys, values and attention outputs."""
        keep: list[LayerAttention] = []
        preds = self._run(xs, ys, keep)
        return ICLTrace(predictions=preds, layers=tuple(keep))
