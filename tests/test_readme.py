"""The README's Python API example runs as written (the public API it shows keeps working)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_api_example_runs(float32_default):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)
    idx = scope["idx"]
    assert len(idx) == 8 and len(set(int(i) for i in idx)) == 8
    assert scope["res"].p_value <= 1.0
