"""``icldistill trace`` on a tiny model saved as a local folder."""

from __future__ import annotations

import json

import pytest

from icldistill.cli import main
from icldistill.cli.readers import load_demonstrations

from .tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer(add_bos=True).save_pretrained(d)
    return d


@pytest.fixture
def demos_file(tmp_path):
    p = tmp_path / "demos.jsonl"
    p.write_text('{"input": "good movie", "label": "positive"}\n\n'
                 '{"input": "bad plot", "label": "negative"}\n')
    return p


def test_trace_cli_writes_the_report(model_dir, demos_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["trace", "--model", str(model_dir), "--demos", str(demos_file), "--query",
                 "fun film", "--out", str(out), "--per-demo"]) == 0
    printed = capsys.readouterr().out
    assert "decomposition error" in printed and "mean eta*" in printed
    for name in ("trace.json", "trace.parquet", "eta_heatmap.png", "demo_share_heatmap.png",
                 "positions.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    payload = json.loads((out / "trace.json").read_text())
    assert payload["demonstrations"] == 2 and payload["num_layers"] == 2
    assert payload["max_decomposition_error"] < 1e-4


def test_trace_cli_positions_and_errors(model_dir, demos_file, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["trace", "--model", str(model_dir), "--demos", str(demos_file), "--query", "fun",
            "--out", str(out)]
    assert main([*base, "--positions=-1,-2"]) == 0  # negative positions need the = form
    capsys.readouterr()
    assert main([*base, "--positions", "middle"]) == 2
    assert "--positions" in capsys.readouterr().err
    assert main(["trace", "--model", "no-such-model", "--demos", str(demos_file), "--query",
                 "x", "--out", str(out)]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "smollm2-135m" in errors[0]  # one line naming the choices


def test_load_demonstrations_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": "b"}\n')
    with pytest.raises(ValueError, match="missing field"):
        load_demonstrations(p)
    assert load_demonstrations(p, text_field="text") == [("a", "b")]
    p.write_text("not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_demonstrations(p)
    with pytest.raises(ValueError, match="no such file"):
        load_demonstrations(tmp_path / "missing.jsonl")


def test_trace_cli_quiet_prints_nothing_on_stderr(model_dir, demos_file, tmp_path, capsys):
    assert main(["trace", "--model", str(model_dir), "--demos", str(demos_file), "--query",
                 "fun film", "--out", str(tmp_path / "q"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "decomposition error" in captured.out


def test_trace_cli_dtype(model_dir, demos_file, tmp_path, capsys):
    """--dtype: a bfloat16 trace (weights in half precision, normalisers in log space) says its
    precision in the report and stays close to the float32 one; auto resolves to a precision
    and says which; an unknown precision is refused by argparse (exit 2)."""
    runs = {}
    for dtype in ("float32", "bfloat16", "auto"):
        out = tmp_path / dtype
        assert main(["trace", "--model", str(model_dir), "--demos", str(demos_file), "--query",
                     "fun film", "--out", str(out), "--dtype", dtype]) == 0
        err = capsys.readouterr().err
        runs[dtype] = json.loads((out / "trace.json").read_text())
        if dtype == "auto":
            assert "--dtype auto: " in err
    half = runs["bfloat16"]
    assert half["dtype"] == "bfloat16" and "(bfloat16)" in half["title"]
    assert runs["float32"]["dtype"] == "float32" and "(" not in runs["float32"]["title"]
    assert runs["auto"]["dtype"] in ("float32", "bfloat16")
    assert half["max_decomposition_error"] < 0.05
    import numpy as np
    np.testing.assert_allclose(np.asarray(half["eta_last"], float),
                               np.asarray(runs["float32"]["eta_last"], float), rtol=0.05)
    assert main(["trace", "--model", str(model_dir), "--demos", str(demos_file), "--query",
                 "x", "--out", str(tmp_path / "x"), "--dtype", "int8"]) == 2
    assert "--dtype" in capsys.readouterr().err
