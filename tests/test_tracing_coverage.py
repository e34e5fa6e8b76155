"""Tracer coverage: every causal-LM architecture of the installed ``transformers``, built tiny
from its own config, is traced exactly or refused with a clear :class:`InputError`.

Exact means: the logits equal those of an untraced forward pass with the model's eager attention,
and the segment components of every head sum to the attention output the model used. The
architectures that cannot be built tiny (an external dependency, a draft model without a
text-only forward) are skipped with their reason. When the whole set has run, the outcomes are
written to ``benchmarks/results/tracer_coverage.md`` (the README's supported set).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from icldistill import InputError
from icldistill.data.prompts import Prompt
from icldistill.models.tracing import SINK, trace

from .tiny_models import tiny_tokenizer

ARCHS = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "tracer_coverage.md"

DEMOS = [("good movie", "positive"), ("bad plot", "negative"), ("great acting", "positive"),
         ("boring story", "negative")]
PROMPT = Prompt(DEMOS, "loved the film", instruction="Classify sentiment")

#: Architectures that cannot be built tiny for a text-only forward pass, with the reason.
NOT_BUILDABLE = {
    "gemma3n": "its vision tower needs the external `timm` package (not installed)",
    "gemma4_assistant": "a draft model: its default config does not validate and its forward "
                        "needs the target model's shared key/value states",
    "gemma4_unified_assistant": "a draft model: its forward needs the target model's shared "
                                "key/value states (no text-only forward)",
}

_NO_INTERFACE = "does not route attention through transformers' attention interface"
#: Architectures the tracer refuses, with a fragment of the error it must give.
REFUSED = {
    **dict.fromkeys((
        "big_bird", "bloom", "cpmant", "git", "gpt_neo", "gpt_neox_japanese",
        "megatron-bert", "mpt", "mvp", "openai-gpt", "prophetnet", "recurrent_gemma", "reformer",
        "rembert", "roformer", "trocr", "xglm", "xlm", "xlnet",
    ), _NO_INTERFACE),
    # no softmax attention at all
    **dict.fromkeys(("falcon_mamba", "mamba", "mamba2", "rwkv", "xlstm"), _NO_INTERFACE),
    # attention over a patch sequence that is not the prompt's tokens
    "blt": "queries over",
    # recurrent-depth model: its attention layers are called per cycle under other indices
    "hrm_text": "went through the attention interface",
    # shared attention block reported under another layer index than its hybrid layer
    "zamba2": "are attention layers but did not go through",
}

# --------------------------------------------------------------------------- tiny configs
HIDDEN, HEADS, KV, HEAD_DIM, INTER, LAYERS, VOCAB = 64, 4, 2, 16, 64, 2, 128

_SET: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "embedding_dim",
                     "word_embed_proj_dim", "embedding_size", "input_embedding_size",
                     "output_embedding_size", "attention_hidden_size", "lru_width",
                     "hidden_dim", "n_embed", "hidden_size_global", "adapter_in_dim",
                     "adapter_input_size", "adapter_out_dim"), HIDDEN),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers",
                     "encoder_layers", "num_blocks"), LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "decoder_attention_heads",
                     "encoder_attention_heads", "n_heads", "swa_num_attention_heads"), HEADS),
    **dict.fromkeys(("head_dim", "attention_head_dim", "kv_channels", "d_head", "dim_head",
                     "attention_head_size", "swa_head_dim", "qk_head_dim"), HEAD_DIM),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "decoder_ffn_dim", "encoder_ffn_dim",
                     "dff", "d_inner", "ffn_hidden_size", "dim_ff", "feed_forward_size",
                     "intermediate_size_mlp", "dense_intermediate_size",
                     "expert_ffn_hidden_size", "d_ff"), INTER),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size",
                     "shared_intermediate_size", "moe_shared_expert_intermediate_size",
                     "shared_experts_intermediate_size"), 32),
    **dict.fromkeys(("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts"),
                    4),
    **dict.fromkeys(("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k"), 2),
    "n_group": 1, "topk_group": 1, "num_expert_group": 1, "zero_expert_num": 2,
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len",
                     "context_length", "max_target_positions", "seq_length"), 256),
    # multi-head latent attention, sparse indexers (top-8 keys: shorter than the prompt)
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
    "v_head_dim": 16, "o_lora_rank": 16, "index_topk": 8, "index_head_dim": 16,
    "index_n_heads": 2,
    # windows shorter than the prompt
    **dict.fromkeys(("sliding_window", "sliding_window_size", "window_size",
                     "attention_window_size", "local_attention", "local_attention_window_len",
                     "attention_chunk_size"), 8),
    # linear attention / state space
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16, "linear_head_dim": 16, "linear_num_heads": 4,
    **dict.fromkeys(("mamba_d_state", "ssm_state_size", "state_size"), 16),
    **dict.fromkeys(("mamba_n_heads", "mamba_num_heads"), 8),
    **dict.fromkeys(("mamba_d_head", "mamba_head_dim", "mamba_headdim"), 16),
    **dict.fromkeys(("mamba_chunk_size", "chunk_size"), 16),
    **dict.fromkeys(("time_step_rank", "mamba_dt_rank"), 8),
    "mamba_d_ssm": 128, "encoder_hash_byte_group_vocab": 512,
    "query_pre_attn_scalar": 16, "rotary_dim": 8, "hidden_size_per_layer_input": 16,
    "vocab_size_per_layer_input": VOCAB, "laurel_rank": 8, "max_window_layers": LAYERS,
    "first_k_dense_replace": 1, "moe_layer_end_index": 1,
}

_NON_SOFTMAX = ("linear", "conv", "mamba", "recurrent", "ssm", "delta", "mlp", "moe", "rwkv",
                "lightning", "retention")

#: What the generic shrinking cannot guess (configs whose defaults leave a field unset, or
#: whose sizes are tied to each other).
OVERRIDES: dict[str, dict[str, Any]] = {
    "bamba": {"attn_layer_indices": [1]},
    "cohere_compass_text": {"rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    "dbrx": {"attn_config": {"kv_n_heads": 1, "rope_theta": 10000.0, "clip_qkv": 8.0}},
    "deepseek_v2": {"n_routed_experts": 4, "num_experts_per_tok": 2},
    "doge": {"keep_window_size": 8},          # per-head dynamic masks on an 8-key budget
    "dory": {"layer_types": ["sliding_attention", "full_attention"]},
    "dots1": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1},
    "dots3_note_text": {"num_key_value_heads": HEADS},
    "gemma3n_text": {"num_kv_shared_layers": 0},
    "granitemoehybrid": {"layer_types": ["linear_attention", "attention"]},
    "hrm_text": {"num_layers_per_stack": None, "H_cycles": 1, "L_cycles": 1,
                 "L_bp_cycles": [1]},
    "inkling_text": {"swa_num_key_value_heads": KV},
    "inkling2_text": {"swa_num_key_value_heads": KV},
    "inkling2_loop_text": {"swa_num_key_value_heads": KV},
    # a sliding layer then an indexed (top-k sparse) layer; the indexer scores with the query
    # heads of key head 0 and pools 16 keys in blocks of 4
    "kolibri1_1": {"layer_types": ["sliding_attention", "indexed_attention"],
                   "index_layers": [1], "kv_source_layers": [0, 1],
                   "index_num_heads": HEADS // KV, "index_pool_size": 16,
                   "index_compression": 4, "index_num_local_tokens": 4,
                   "index_num_sink_tokens": 2, "mlp_only_layers": [0],
                   "mlp_only_intermediate_size": INTER},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "mamba2": {"num_heads": 8, "head_dim": 16},
    "minimax_m3_vl_text": {"layer_types": ["full_attention", "minimax_m3_sparse"],
                           "index_n_heads": KV, "index_head_dim": 16, "index_block_size": 4,
                           "index_topk_blocks": 2, "index_local_blocks": 1},
    "qwen4_exp_text": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16,
                       "indexer_budget": 8, "indexer_compress_ratio": 2},
    "reformer": {"is_decoder": True, "axial_pos_embds_dim": [32, 32],
                 "axial_pos_shape": [16, 16], "max_position_embeddings": 256},
    "zamba": {"attention_hidden_size": 2 * HIDDEN, "attention_head_dim": 2 * HIDDEN // HEADS,
              "num_hidden_layers": 4,
              "layers_block_type": ["linear_attention", "hybrid", "linear_attention", "hybrid"]},
    "zamba2": {"attention_hidden_size": 2 * HIDDEN, "attention_head_dim": 2 * HIDDEN // HEADS,
               "num_query_groups": HEADS, "kv_channels": HIDDEN // HEADS},
}
OVERRIDES["dots3_note"] = {"text_config": OVERRIDES["dots3_note_text"]}
OVERRIDES["qwen4_exp"] = {"text_config": OVERRIDES["qwen4_exp_text"]}


def _two(types: list[Any]) -> list[Any]:
    """Two layers of a per-layer list: a non-attention layer then an attention layer when the
    list has both (a hybrid keeps both kinds), else the first two."""
    if all(isinstance(t, str) for t in types):
        other = [t for t in types if any(w in t.lower() for w in _NON_SOFTMAX)]
        soft = [t for t in types if t not in other]
        if other and soft:
            return [other[0], soft[0]]
    return list(types[:LAYERS])


def _changes(d: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments that make the config ``d`` (a default config's ``to_dict()``) tiny."""
    n_layers = next((d[k] for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers",
                                    "decoder_layers") if isinstance(d.get(k), int)), None)
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and (k.endswith(("config", "_cfg")) or "model_type" in v):
            sub = _changes(v)
            if sub:
                out[k] = sub
        elif k in _SET and isinstance(v, int) and not isinstance(v, bool):
            if v > _SET[k] or k == "sliding_window":
                out[k] = _SET[k]
        elif isinstance(v, list) and n_layers and len(v) == n_layers and n_layers > LAYERS:
            out[k] = _two(v)
    mla = "kv_lora_rank" in d          # multi-head latent attention: one kv head per head
    if "head_dim" in d:
        out["head_dim"] = out.get("qk_rope_head_dim", HEAD_DIM) if mla else HEAD_DIM
    if "num_key_value_heads" in d:
        kv = d["num_key_value_heads"]
        out["num_key_value_heads"] = HEADS if mla else 1 if kv == 1 else KV
    if isinstance(d.get("vocab_size"), int):
        out["vocab_size"] = VOCAB
    # special token ids inside the small vocabulary, above the test tokenizer's words
    free = iter(range(VOCAB - 1, 60, -1))
    for k, v in d.items():
        if k in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            if isinstance(v, int) and v >= VOCAB:
                out[k] = {"pad_token_id": 3, "bos_token_id": 1}.get(k, 2)
            elif isinstance(v, list) and any(x >= VOCAB for x in v):
                out[k] = [x if x < VOCAB else 2 for x in v]
        elif k.endswith(("_token_id", "_token_index", "_id")):
            if isinstance(v, int) and not isinstance(v, bool) and v >= 60:
                out[k] = next(free)
    if d.get("attn_layer_indices"):
        out["attn_layer_indices"] = [1]
    if "attn_layer_period" in d:
        out["attn_layer_period"], out["attn_layer_offset"] = 2, 1
    if "expert_layer_period" in d:
        out["expert_layer_period"], out["expert_layer_offset"] = 2, 1
    return out


def tiny_config(model_type: str) -> Any:
    """The default config of ``model_type`` with small sizes (hidden 64, 2 layers, 4 heads)."""
    cls = transformers.CONFIG_MAPPING[model_type]
    changes = _changes(cls().to_dict())
    for k, v in OVERRIDES.get(model_type, {}).items():
        both = isinstance(v, dict) and isinstance(changes.get(k), dict)
        changes[k] = {**changes[k], **v} if both else v
    cfg = cls(**changes)
    if model_type in ("musicgen", "musicgen_melody"):   # the causal LM is the audio decoder
        cfg = cfg.decoder
        cfg.num_codebooks = 1
    return cfg


def tiny_causal_lm(model_type: str) -> Any:
    """A random tiny model of ``model_type`` (eager attention, eval mode); sharper attention
    (q/k projections scaled up) and random attention sinks, so that every head and sink
    matters."""
    cfg = tiny_config(model_type)
    torch.manual_seed(0)
    try:
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
        model = cls._from_config(cfg, attn_implementation="eager")
    if model_type == "xmod":
        model.set_default_language(model.config.languages[0])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and any(s in name for s in ("q_proj", "k_proj", "c_attn",
                                                       "query_key_value", "qkv", "wq", "wk")):
                p.mul_(8.0)
            if "sink" in name:
                p.normal_(0.0, 1.0)
    return model.eval()


# --------------------------------------------------------------------------- the test
OUTCOMES: dict[str, tuple[str, str, str]] = {}     # arch -> (class, outcome, details)


# one torch thread: a decomposition error's power-of-ten bound depends on how float32 sums
# are split over threads, so the table is the same whether the file runs alone or in the suite
pytestmark = pytest.mark.usefixtures("float32_default", "one_thread")


@pytest.fixture(autouse=True)
def _small_row_blocks(monkeypatch):
    """Every architecture is traced with blocks of 5 rows, each reduced over only the keys its
    rows see, so that the self-check covers the blocked path on every kind of mask."""
    monkeypatch.setattr("icldistill.models.tracing._ROW_BLOCK", 5)


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    if set(OUTCOMES) == set(ARCHS):
        old = read_coverage(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
        text = coverage_markdown(merge_outcomes(old, OUTCOMES))
        if not RESULTS.exists() or RESULTS.read_text(encoding="utf-8") != text:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(text, encoding="utf-8")


def _bound(x: float) -> str:
    """A power-of-ten upper bound. Near a power of ten the bound differs between CPUs (their
    float32 kernels round differently), so the committed table keeps the looser of its bound
    and this machine's (:func:`merge_outcomes`)."""
    return "0" if x == 0 else f"< 1e{math.floor(math.log10(x)) + 1}"


_BOUND = re.compile(r"(within|error) (0|< 1e(-?\d+))")
_ROW = re.compile(r"^\| `([^`]+)` \| (.*?) \| (.*?) \| (.*) \|$")


def _exponent(m: re.Match) -> float:
    return -math.inf if m.group(2) == "0" else int(m.group(3))


def _looser(old: str, new: str) -> str:
    """``new`` details with each error bound the looser of ``old``'s and ``new``'s, when the two
    differ in their bounds only (else ``new``)."""
    old, new = (d.replace("logits identical", "logits within 0") for d in (old, new))
    if _BOUND.sub(r"\1 B", old) != _BOUND.sub(r"\1 B", new):
        return new.replace("logits within 0", "logits identical")
    olds = _BOUND.finditer(old)

    def pick(m: re.Match) -> str:
        o = next(olds)
        return o.group(0) if _exponent(o) > _exponent(m) else m.group(0)

    return _BOUND.sub(pick, new).replace("logits within 0", "logits identical")


def read_coverage(text: str) -> dict[str, tuple[str, str, str]]:
    """The rows of a :func:`coverage_markdown` table: arch -> (class, outcome, details)."""
    rows = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and m.group(2) != "class":
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4).replace("\\|", "|"))
    return rows


def merge_outcomes(old: dict[str, tuple[str, str, str]], new: dict[str, tuple[str, str, str]]
                   ) -> dict[str, tuple[str, str, str]]:
    """``new``, where a row has the same class and outcome as in ``old`` (the committed table)
    with each error bound the looser of the two, so that the table holds on every machine
    that wrote it and a rerun elsewhere does not rewrite it over float32 rounding."""
    merged = dict(new)
    for arch, (cls_name, outcome, details) in new.items():
        if arch in old and old[arch][:2] == (cls_name, outcome):
            merged[arch] = (cls_name, outcome, _looser(old[arch][2], details))
    return merged


def test_the_table_keeps_the_looser_bound_of_two_machines():
    """Regression: the full suite on an AVX2 CPU rewrote three committed rows (< 1e-6 became
    < 1e-5) and left the tree dirty; the bounds of two machines now merge to the looser."""
    old = {"a": ("A", "exact", "logits identical; max decomposition error < 1e-5"),
           "b": ("B", "exact", "logits identical; max decomposition error < 1e-6"),
           "c": ("C", "exact", "logits within < 1e-6; max decomposition error 0"),
           "d": ("D", "refused", "no | way"),
           "e": ("E", "exact", "logits identical; max decomposition error < 1e-6")}
    new = {"a": ("A", "exact", "logits identical; max decomposition error < 1e-6"),
           "b": ("B", "exact", "logits identical; max decomposition error < 1e-5"),
           "c": ("C", "exact", "logits identical; max decomposition error < 1e-7"),
           "d": ("D", "exact", "logits identical; max decomposition error < 1e-6"),
           "e": ("E", "exact", "logits identical; max decomposition error < 1e-6; sink")}
    got = merge_outcomes(old, new)
    assert got["a"][2] == got["b"][2] == "logits identical; max decomposition error < 1e-5"
    assert got["c"][2] == "logits within < 1e-6; max decomposition error < 1e-7"
    assert got["d"] == new["d"] and got["e"] == new["e"]       # another outcome / other text
    assert read_coverage(coverage_markdown(old)) == old          # the table reads back


def _notes(res: Any) -> str:
    notes = []
    calls = int(res.call_index.max()) + 1
    if calls > 1:
        notes.append(f"{calls} attention calls per layer (one entry each)")
    if res.untraced_layers:
        notes.append(f"layers {list(res.untraced_layers)} not softmax attention (not traced)")
    if SINK in res.attention_mass:
        notes.append("attention sink (segment `sink`)")
    if res.auxiliary_attention:
        notes.append("auxiliary attention not over tokens: "
                     + ", ".join(sorted(res.auxiliary_attention)))
    if not bool(res.has_kernel_form.all()):
        notes.append("no kernel form: soft-capped or biased logits")
    if res.sparse_attention_calls:
        notes.append("sparse attention (selected keys only)")
    return "; ".join(notes)


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_is_traced_exactly_or_refused(arch):
    cls_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[arch]
    if arch in NOT_BUILDABLE:
        OUTCOMES[arch] = (cls_name, "not buildable", NOT_BUILDABLE[arch])
        pytest.skip(f"{arch} cannot be built tiny: {NOT_BUILDABLE[arch]}")
    model = tiny_causal_lm(arch)
    tok = tiny_tokenizer()
    ids = PROMPT.tokenize(tok).input_ids
    with torch.no_grad():
        ref = model(input_ids=ids[None], use_cache=False).logits[0].float()
    assert bool(torch.isfinite(ref).all())
    try:
        res = trace(model, tok, PROMPT, positions="all")
    except InputError as exc:
        msg = str(exc)
        assert "\n" not in msg.strip()
        OUTCOMES[arch] = (cls_name, "refused", msg)
        assert arch in REFUSED, f"{arch} was refused: {msg}"
        assert REFUSED[arch] in msg
        assert model.config._attn_implementation == "eager"      # restored
        return
    assert model.config._attn_implementation == "eager"
    # a stale entry (falcon, once refused, routes through the interface in transformers 5)
    assert arch not in REFUSED, f"{arch} is traced now: remove it from REFUSED"
    diff = float((res.logits - ref).abs().max())
    assert diff <= 1e-5, f"{arch}: traced logits differ from eager by {diff}"
    assert res.max_decomposition_error <= 1e-4
    total = sum(res.attention_mass.values())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    n = res.num_demo_keys_by_head.double()
    assert torch.allclose(res.eta.double(), n / (2 * torch.exp(res.log_normalizer.double())),
                          rtol=1e-5)
    identical = "logits identical" if diff == 0 else f"logits within {_bound(diff)}"
    details = f"{identical}; max decomposition error {_bound(res.max_decomposition_error)}"
    notes = _notes(res)
    OUTCOMES[arch] = (cls_name, "exact", details + (f"; {notes}" if notes else ""))


def coverage_markdown(outcomes: dict[str, tuple[str, str, str]]) -> str:
    counts = {k: sum(o[1] == k for o in outcomes.values())
              for k in ("exact", "refused", "not buildable")}
    lines = [
        "# Tracer coverage",
        "",
        f"Every causal-LM architecture of `transformers` {transformers.__version__} "
        f"(`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, {len(outcomes)} model types), built tiny from "
        "its own config (hidden 64, 2 layers, 4 heads, random weights) and traced on a "
        "4-demonstration prompt at every position by `icldistill.models.tracing.trace`.",
        "",
        "- **exact**: logits equal to an untraced forward pass with the model's eager "
        "attention, segment components summing to the attention output the model used;",
        "- **refused**: a one-line `InputError` naming the problem (never a silent wrong "
        "answer);",
        "- **not buildable**: cannot be built tiny for a text-only forward pass (reason given).",
        "",
        f"**{counts['exact']} exact, {counts['refused']} refused, {counts['not buildable']} "
        "not buildable.**",
        "",
        "Generated by `python3 -m pytest -q tests/test_tracing_coverage.py` (written when the "
        "whole set runs, also within the full suite; on one torch thread, so the error bounds "
        "do not depend on the thread count; each bound is the looser of the committed table's "
        "and the run's, so that it holds on every CPU that wrote it).",
        "",
        "| architecture | class | outcome | details |",
        "|---|---|---|---|",
    ]
    for arch in sorted(outcomes):
        cls_name, outcome, details = outcomes[arch]
        details = details.replace("|", "\\|")
        lines.append(f"| `{arch}` | {cls_name} | {outcome} | {details} |")
    return "\n".join(lines) + "\n"
