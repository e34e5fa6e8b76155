"""``benchmarks/bench_memory.py --merge`` on a torn or foreign results file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text", ['{"meta": {}, "rows": [', "[]", '{"rows": []}'])
def test_merge_with_a_torn_or_foreign_file_is_a_one_line_error(tmp_path, text):
    """Regression: the results file was rewritten in place (a kill left half of it) and
    --merge read it back with a JSONDecodeError traceback."""
    bad = tmp_path / "memory.json"
    bad.write_text(text)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"),
                           "--merge", str(bad), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: --merge {bad}: not a results file")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.json").exists()
