"""Half-precision loading streams float32 safetensors tensor by tensor (issue 14 item 5: the
4 GB peak of qwen2.5-0.5b in bfloat16 came from ``from_pretrained`` mapping the float32 file
beside the bfloat16 copy): bit-identical to ``from_pretrained``, falls back on anything else."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from icldistill.models import load_model
from icldistill.models import registry as R

from .tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def folder(request, tmp_path):
    model = tiny_model(request.param)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer(True).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_streamed_half_load_equals_from_pretrained(folder, dtype):
    streamed = R.load_half_streamed(folder, dtype, "eager")
    assert streamed is not None
    ref = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=dtype,
                                               attn_implementation="eager",
                                               use_kernels=False).eval()
    a, b = streamed.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(streamed(input_ids=ids).logits, ref(input_ids=ids).logits)
    # the public loader takes this path and keeps the float32 head
    lm = load_model(folder, dtype=dtype, progress=False)
    assert lm.model.get_output_embeddings().weight.dtype == torch.float32
    with torch.no_grad():
        out = lm.model(input_ids=ids).logits
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_streaming_falls_back_when_the_file_is_not_plain_float32(folder, tmp_path):
    assert R.load_half_streamed(folder, torch.float32, "eager") is None  # float32: nothing to do
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header["renamed." + name] = header.pop(name)                   # a name the model lacks
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    assert R.load_half_streamed(folder, torch.bfloat16, "eager") is None


def test_truncated_file_is_named(folder):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 64])
    with pytest.raises(R.InputError, match="truncated"):
        R.load_half_streamed(folder, torch.bfloat16, "eager")


def test_half_precision_on_a_cpu_without_bf16_instructions_warns(folder, monkeypatch):
    # an AVX2-only CPU converts bf16 operands on the fly: 0.12x float32's speed was measured
    monkeypatch.setattr(R, "half_precision_speed", lambda dtype: 0.12)
    with pytest.warns(RuntimeWarning, match=r"bfloat16 .* 0\.12x .* float32 is faster here"):
        load_model(folder, dtype=torch.bfloat16, progress=False)


def test_no_warning_where_half_precision_is_fast_or_not_asked_for(folder, monkeypatch, recwarn):
    monkeypatch.setattr(R, "half_precision_speed", lambda dtype: 3.0)
    load_model(folder, dtype=torch.bfloat16, progress=False)

    def never(dtype):
        raise AssertionError("float32 needs no measurement")

    monkeypatch.setattr(R, "half_precision_speed", never)
    load_model(folder, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_half_precision_speed_is_a_measured_ratio():
    speed = R.half_precision_speed(torch.bfloat16)
    assert 0 < speed < 100 and speed == R.half_precision_speed(torch.bfloat16)   # cached


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loaded_models_are_not_kernelized_with_hub_kernels(folder, dtype, monkeypatch):
    """transformers 5 "kernelizes" a model loaded with ``from_pretrained`` by default: layers
    replaced by kernels downloaded from the Hugging Face Hub for the model's device. Fixed bug:
    on a CUDA machine ``icldistill trace --device cuda`` failed ("Kernels are not available")
    and, with the `kernels` package installed, would have downloaded hub kernels and changed the
    numerics. Every model ``load_model`` returns runs as its own code reads."""
    import transformers.integrations.hub_kernels as hub

    calls = []
    monkeypatch.setattr(hub, "kernelize", lambda *a, **kw: calls.append(a))
    lm = load_model(folder, dtype=dtype, progress=False)
    assert lm.model.use_kernels is False and calls == []


def test_a_precision_given_by_name_is_the_same_as_its_torch_dtype(folder, monkeypatch):
    """Regression: ``dtype="bfloat16"`` (what preferred_dtype returns) went to transformers
    unchecked: a bfloat16 model without its float32 head, without the slow-CPU warning and
    without the streamed load."""
    monkeypatch.setattr(R, "half_precision_speed", lambda dtype=None: 2.0)
    by_name = load_model(folder, dtype="bfloat16", progress=False).model
    by_dtype = load_model(folder, dtype=torch.bfloat16, progress=False).model
    assert by_name.get_output_embeddings().weight.dtype == torch.float32
    a, b = by_name.state_dict(), by_dtype.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for bad in ("bf16", "half", 3, torch.int8):
        with pytest.raises(R.InputError, match="unknown model dtype"):
            load_model(folder, dtype=bad, progress=False)
