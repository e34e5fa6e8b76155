"""``icldistill reproduce --only``: the names as every other comma-separated option reads them,
and an unknown one refused (exit 2, one line) before the report folder is made."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from icldistill.cli.app import main
from icldistill.lab.experiments import reproduce as rp


@pytest.mark.parametrize(("text", "names"), [
    ("training, gd", ["training", "gd"]),
    (" training ,gd ,", ["training", "gd"]),
    ("real", ["real"]),
])
def test_reproduce_only_strips_the_names(tmp_path, monkeypatch, capsys, text, names):
    """``--only "training, gd"`` was refused as the unknown experiment ``' gd'``."""
    seen = {}

    def fake(out_dir, **kw):
        seen.update(kw)
        return SimpleNamespace(sections=[], seconds=0.0,
                               files={"markdown": "r.md", "html": "r.html"})

    monkeypatch.setattr(rp, "reproduce", fake)
    assert main(["reproduce", "--only", text, "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert seen["only"] == names


def test_reproduce_without_only_runs_everything(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(rp, "reproduce", lambda out_dir, **kw: seen.update(kw) or
                        SimpleNamespace(sections=[], seconds=0.0,
                                        files={"markdown": "r.md", "html": "r.html"}))
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert seen["only"] is None


def test_reproduce_unknown_only_is_refused_before_the_folder(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["reproduce", "--only", "training, biass", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown experiment(s) ['biass']" in err[0]
    assert not out.exists()
