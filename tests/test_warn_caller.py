"""The package's warnings name the user's line, whatever the call path inside the package.

Regression: each warning had a fixed ``stacklevel``, right for one call path only: a file read
through :meth:`Dataset.from_table` was attributed to the package's own ``load_file`` call, and
a few others pointed one frame off (issue-free but misleading when a user filters warnings by
module, or reads where a warning came from).
"""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch

from icldistill import make_selector
from icldistill.core.validation import warn_caller
from icldistill.data import Dataset, load_file

HERE = __file__


def _caught(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return seen


def _single_label_file(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps({"t": f"text {i}", "y": "pos"}) + "\n" for i in range(4)))
    return path


def test_warn_caller_called_here_names_this_line():
    seen = _caught(warn_caller, "odd", RuntimeWarning)
    assert [w.category for w in seen] == [RuntimeWarning]
    assert seen[0].filename == HERE


@pytest.mark.parametrize("how", ["load_file", "from_table path", "from_table rows"])
def test_reader_warnings_name_the_callers_line(tmp_path, how):
    path = _single_label_file(tmp_path)
    if how == "load_file":
        seen = _caught(load_file, path, text_field="t", label_field="y")
    elif how == "from_table path":     # one package frame more than load_file
        seen = _caught(Dataset.from_table, path, text_field="t", label_field="y")
    else:
        rows = [{"t": f"text {i}", "y": "pos"} for i in range(4)]
        seen = _caught(Dataset.from_table, rows, text_field="t", label_field="y")
    assert seen and all("single label" in str(w.message) for w in seen)
    assert {w.filename for w in seen} == {HERE}


def test_selector_warnings_name_the_callers_line():
    sel = make_selector("bm25").fit(["a b", "c", "d e"])
    for call in (sel.score, lambda q: sel.select(q, k=1)):
        seen = _caught(call, ["zzz"])
        assert [("share no term" in str(w.message), w.filename) for w in seen] == [(True, HERE)]


def test_adapter_warnings_name_the_callers_line():
    pytest.importorskip("langchain_core")
    from icldistill.adapters.langchain import ICLDistillExampleSelector
    from icldistill.encoders.representations import Encoder

    class Lengths(Encoder):
        name = "lengths"
        dim = 2

        def _identity(self) -> str:
            return "lengths-2"

        def _encode_batch(self, texts: list[str]) -> torch.Tensor:
            return torch.tensor([[len(t), 1.0] for t in texts], dtype=torch.float64)

    ex = [{"text": "good film", "label": "pos"}] * 2 + [{"text": "awful", "label": "neg"}]
    seen = _caught(ICLDistillExampleSelector, ex, selector="knn", encoder=Lengths(), k=2,
                   label_key="label")
    assert [w.filename for w in seen] == [HERE]
    sel = ICLDistillExampleSelector(ex[2:], selector="knn", encoder=Lengths(), k=2,
                                    label_key="label")
    seen = _caught(sel.add_examples, [{"text": "nice", "label": "Pos"},
                                      {"text": "fine", "label": "pos"}])
    assert [("differ only in" in str(w.message), w.filename) for w in seen] == [(True, HERE)]


def test_a_moved_module_path_warns_at_the_import_statement(monkeypatch):
    for name in [m for m in sys.modules if m == "icldistill.training"]:
        monkeypatch.delitem(sys.modules, name)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        import icldistill.training  # noqa: F401  (the old path, through the import system)
    moved = [w for w in seen if issubclass(w.category, DeprecationWarning)
             and "moved to" in str(w.message)]
    assert [w.filename for w in moved] == [HERE]
