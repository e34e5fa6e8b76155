"""Trace reports: files, figures, Parquet and JSON."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from icldistill.models.tracing import trace
from icldistill.prompts import Prompt
from icldistill.reports import atomic_write, write_trace_report

from .tiny_models import tiny_model, tiny_tokenizer

PNG = b"\x89PNG\r\n\x1a\n"


def test_trace_report_files(tmp_path):
    model = tiny_model("qwen2")
    prompt = Prompt([("good movie", "positive"), ("bad plot", "negative")], "fun film")
    res = trace(model, tiny_tokenizer(), prompt)
    files = write_trace_report(res, tmp_path, title="tiny", metadata={"model": "tiny-qwen2"})
    assert set(files) == {"eta_heatmap", "demo_share_heatmap", "positions", "json", "parquet",
                          "markdown"}
    for kind in ("eta_heatmap", "demo_share_heatmap", "positions"):
        assert files[kind].read_bytes()[:8] == PNG
    payload = json.loads(files["json"].read_text())
    assert payload["model"] == "tiny-qwen2"
    assert payload["num_layers"] == 2 and payload["num_heads"] == 4
    assert len(payload["eta_last"]) == 2 and len(payload["eta_last"][0]) == 4
    frame = pd.read_parquet(files["parquet"])
    assert len(frame) == res.eta.numel()
    md = files["markdown"].read_text()
    assert "η*" in md and "![" in md
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def boom(fh):
        fh.write(b"half")
        raise KeyboardInterrupt  # ^C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp"))
