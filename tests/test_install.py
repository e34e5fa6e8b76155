"""A clean install outside the repository (issue 16 item 6): the wheel, unpacked into a folder
that is the only place icldistill can come from, runs the CLI from a temporary directory —
nothing reads ``benchmarks/``, the checkout or any path outside the package at run time."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    # build isolation as a user's `pip install .` has it (setuptools from PyPI, whatever the
    # environment's own setuptools / wheel are)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                          "-q", "-w", str(dist)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        pytest.fail(f"building the wheel failed: {res.stderr[-2000:]}")
    wheels = sorted(dist.glob("icldistill-*.whl"))
    assert len(wheels) == 1
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        zf.extractall(target)
    # the wheel carries the package and nothing of the checkout
    assert any(n.startswith("icldistill/") for n in names)
    assert not any(n.startswith(("benchmarks/", "tests/", "docs/", "examples/")) for n in names)
    return target


def _run(target: Path, cwd: Path, *args: str, timeout: int = 600):
    """``icldistill ARGS`` with site processing off (no editable-install hook) and only the
    unpacked wheel plus the dependencies' site-packages on ``sys.path``."""
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    code = (f"import sys; sys.path[:0] = {[str(target), *deps]!r}; import icldistill; "
            f"assert icldistill.__file__.startswith({str(target)!r}), icldistill.__file__; "
            f"from icldistill.cli import main; sys.exit(main({list(args)!r}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    env["ICLDISTILL_CACHE"] = str(cwd / "cache")          # trained learners stay in the test
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_runs_from_the_wheel_outside_the_checkout(wheel_site, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    res = _run(wheel_site, cwd, "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith("icldistill ")
    res = _run(wheel_site, cwd, "demo", "--out", "demo-out")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (cwd / "demo-out").is_dir() and any((cwd / "demo-out").iterdir())
    # a laboratory experiment (tiny preset) end to end, with its own cache folder
    res = _run(wheel_site, cwd, "lab", "gd", "--task", "regression", "--preset", "tiny",
               "--out", "lab-out", "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (cwd / "lab-out" / "report.md").is_file()
    # bad input: one line, exit 2, from the installed package too
    res = _run(wheel_site, cwd, "evaluate", "--k", "abc")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
