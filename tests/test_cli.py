"""The ``icldistill`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import icldistill as ic
from icldistill.cli.app import main


@pytest.fixture
def samples(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.8
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "y.csv", y, delimiter=",", header="a,b,c", comments="")
    return tmp_path, x, y


def test_mmd_json_output(samples, capsys):
    d, x, y = samples
    assert main(["mmd", str(d / "x.npy"), str(d / "y.csv"), "--permutations", "200", "--seed",
                 "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("mmd2_biased", "mmd2_unbiased", "p_value", "bandwidth", "n_x", "n_y"):
        assert key in out
    assert out["n_x"] == 40 and out["n_y"] == 30
    assert out["bandwidth"] == pytest.approx(ic.median_bandwidth(x, y))
    assert out["mmd2_biased"] == pytest.approx(ic.mmd(x, y, estimator="biased"), rel=1e-9)
    assert out["mmd2_unbiased"] == pytest.approx(ic.mmd(x, y), rel=1e-9)
    assert out["p_value"] == pytest.approx(ic.mmd_test(x, y, permutations=200, seed=3).p_value)


def test_mmd_text_output_and_options(samples, capsys):
    d, _, _ = samples
    assert main(["mmd", str(d / "x.npy"), str(d / "y.csv"), "--kernel", "laplace",
                 "--bandwidth", "2.5", "--permutations", "50"]) == 0
    out = capsys.readouterr().out
    assert "laplace kernel, bandwidth 2.5" in out and "p-value" in out


@pytest.mark.parametrize("args,match", [
    (["--bandwidth", "-1"], "bandwidth must be a finite positive"),
    (["--bandwidth", "0"], "bandwidth must be a finite positive"),
    (["--permutations", "0"], "permutations must be a positive integer"),
])
def test_mmd_errors_exit_2_with_one_line(samples, capsys, args, match):
    d, _, _ = samples
    assert main(["mmd", str(d / "x.npy"), str(d / "y.csv"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_mmd_file_errors(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.ones((4, 2)))
    np.save(tmp_path / "b.npy", np.ones((4, 3)))
    np.save(tmp_path / "e.npy", np.ones((0, 2)))
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0], [1.0, 2.0]]))
    (tmp_path / "bad.csv").write_text("1,2\nfoo,bar\n")
    cases = [("missing.npy", "no such file"), ("b.npy", "dimension mismatch"),
             ("e.npy", "empty"), ("nan.npy", "NaN"), ("bad.csv", "cannot parse")]
    for other, match in cases:
        assert main(["mmd", str(tmp_path / "a.npy"), str(tmp_path / other)]) == 2
        assert match in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "icldistill.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("icldistill ")
