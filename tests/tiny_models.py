"""Tiny randomly initialised Hugging Face models and an in-memory fast tokenizer for tests."""

from __future__ import annotations

import functools

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

WORDS = ("Input Label positive negative neutral good bad great awful movie film plot the a was "
         "is not very it this that and of to Classify sentiment review : . , ! ? fun boring "
         "loved hated acting story").split()


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """Word-level fast tokenizer (offsets included); optionally prepends ``<s>``."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "\n": 4}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # keep newlines, words and punctuation marks as tokens; drop spaces
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="removed",
                                             invert=True)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
            ("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


VOCAB = 64


def _config(arch: str):
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
    )

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256)
    if arch == "llama":
        return LlamaConfig(**common, num_key_value_heads=2)
    if arch == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=2)
    if arch == "mistral":
        return MistralConfig(**common, num_key_value_heads=2, sliding_window=6)
    if arch == "phi3":
        return Phi3Config(**common, num_key_value_heads=2, pad_token_id=3)
    if arch == "gemma3":
        return Gemma3TextConfig(**{**common, "num_hidden_layers": 3}, num_key_value_heads=1,
                                head_dim=16, sliding_window=6,
                                layer_types=["sliding_attention", "sliding_attention",
                                             "full_attention"])
    if arch == "gemma2":
        return Gemma2Config(**common, num_key_value_heads=2, head_dim=8,
                            attn_logit_softcapping=5.0, sliding_window=6)
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256)
    if arch == "gpt_neox":
        return GPTNeoXConfig(**common, rotary_pct=0.5)
    raise ValueError(arch)


ARCHS = ("llama", "qwen2", "mistral", "phi3", "gemma3", "gemma2", "gpt2", "gpt_neox")


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised tiny causal LM of architecture ``arch`` (eager attention)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch), attn_implementation="eager")
    # random init is small; scale attention weights up so heads are not all uniform
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("q_proj", "k_proj", "c_attn", "query_key_value")) \
                    and p.ndim == 2:
                p.mul_(8.0)
    return model.to(dtype).eval()
