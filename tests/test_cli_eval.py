"""CLI: select, evaluate (resumable) and compare on a tiny saved model and a user JSONL file."""

from __future__ import annotations

import json
import re

import pytest

from icldistill.cli.app import main

from .test_harness import _write_task
from .tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_eval")
    model_dir = root / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer(True).save_pretrained(model_dir)
    data = root / "toy.jsonl"
    _write_task(data)
    return root, model_dir, data


def _task_args(data):
    return ["--file", str(data), "--text-field", "sentence", "--label-field", "y",
            "--test-size", "20"]


def test_select_json(setup, capsys, monkeypatch):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    code = main(["select", *_task_args(data), "--selector", "mmd", "--k", "3", "--model",
                 str(model_dir), "--encoder", "hidden:-1", "--json", "--quiet",
                 "--out", str(root / "sel")])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["shared"] and len(payload["sets"]) == 1
    assert len(payload["sets"][0]["demonstrations"]) == 3
    assert payload["mmd2_task"] >= 0 and payload["mmd2_query"] >= payload["mmd2_task"] - 1e-9
    assert (root / "sel" / "selection.json").exists()



def test_select_mmd_katt_chooses_heads_and_needs_a_model(setup, capsys, monkeypatch):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    assert main(["select", *_task_args(data), "--selector", "mmd-katt", "--k", "2",
                 "--quiet"]) == 2
    assert "--model" in capsys.readouterr().err
    out = root / "katt"
    code = main(["select", *_task_args(data), "--selector", "mmd-katt", "--k", "2", "--model",
                 str(model_dir), "--json", "--quiet", "--n-test", "3", "--out", str(out)])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert not payload["shared"] and len(payload["sets"]) == 3
    heads = list((out / "heads").glob("*.json"))
    assert len(heads) == 1 and json.loads(heads[0].read_text())["spec"].startswith("kv:")

def test_evaluate_then_rerun_resumes_and_compare_writes_a_report(setup, capsys, monkeypatch):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    out = root / "eval"
    argv = ["evaluate", "--model", str(model_dir), *_task_args(data), "--selector",
            "random,knn,mmd-balanced", "--k", "2,4", "--seeds", "2", "--n-test", "8",
            "--encoder", "hidden:-1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (2 + 1 + 1)
    assert main(argv) == 0                                # nothing recomputed
    assert (out / "results.jsonl").read_text().splitlines() == lines
    text = capsys.readouterr().out
    assert "mmd-balanced" in text and "results:" in text
    rep = root / "cmp"
    assert main(["compare", "--models", str(model_dir), *_task_args(data), "--selectors",
                 "random,knn,mmd", "--ks", "2", "--seeds", "2", "--n-test", "8",
                 "--encoder", "hidden:-1", "--out", str(rep), "--quiet"]) == 0
    md = (rep / "report.md").read_text()
    assert "accuracy" in md and "Spearman" in md
    assert md.index("Paired comparisons") < md.index("Spearman")     # the report leads with it
    paired = json.loads((rep / "paired.json").read_text())
    assert {(r["selector"], r["baseline"]) for r in paired} >= {
        ("mmd@hidden:-1", "knn@hidden:-1"), ("mmd@hidden:-1", "random@hidden:-1")}
    assert all({"diff", "ci_low", "ci_high", "p", "p_holm", "n"} <= set(r) for r in paired)
    assert all(r["n"] == 8 and r["task"] == "toy" for r in paired)
    f1 = json.loads((rep / "paired_macro_f1.json").read_text())
    assert {(r["selector"], r["baseline"], r["metric"]) for r in f1} == {
        (r["selector"], r["baseline"], "macro_f1") for r in paired}
    assert "## Paired comparisons in macro-F1" in md and "most frequent label" in md
    # one task: no mean over tasks, so the MMD family cannot clear the bar; said so
    assert "## Does an MMD-family selector beat kNN?" in md
    assert "no MMD-family selector meets the bar" in md
    printed = capsys.readouterr().out
    assert "MMD family vs the bar" in printed
    assert ("records (JSON, beside the report): paired.json, paired_macro_f1.json, "
            "coverage.json, concordance.json") in printed
    assert all((rep / name).exists() for name in ("coverage.json", "concordance.json"))
    assert (rep / "report.html").exists()
    # accuracy, accuracy vs MMD², and the label-coverage scatter (one task: no mean, no forest)
    assert sorted(f.name.split("_")[0] for f in (rep / "figures").glob("*.png")) == [
        "acc", "accuracy", "label"]


def test_cli_bad_inputs_exit_2(setup, capsys, monkeypatch):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    base = ["evaluate", "--model", str(model_dir), *_task_args(data), "--encoder",
            "hidden:-1", "--out", str(root / "bad"), "--quiet"]
    assert main([*base, "--selector", "knn", "--k", "500"]) == 2
    assert "larger than the pool" in capsys.readouterr().err
    assert main([*base, "--selector", "nearest", "--k", "2"]) == 2
    assert "unknown selector" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model_dir), "--out", str(root / "bad")]) == 2
    assert "--file" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model_dir), "--file", str(data), "--text-field",
                 "nope", "--out", str(root / "bad")]) == 2
    assert "nope" in capsys.readouterr().err


def test_evaluate_in_bfloat16_records_the_precision(setup, capsys, monkeypatch):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    out = root / "eval-bf16"
    assert main(["evaluate", "--model", str(model_dir), *_task_args(data), "--selector", "mmd",
                 "--k", "2", "--n-test", "6", "--dtype", "bfloat16", "--out", str(out),
                 "--quiet", "--json"]) == 0
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert rec["spec"]["dtype"] == "bfloat16" and rec["n"] == 6
    assert json.loads(capsys.readouterr().out)[0]["spec"]["dtype"] == "bfloat16"


def test_select_out_writes_the_selection_and_leaves_the_working_directory_alone(
        setup, capsys, monkeypatch, tmp_path):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    base = ["select", *_task_args(data), "--selector", "knn", "--k", "2", "--model",
            str(model_dir), "--encoder", "hidden:-1", "--n-test", "3", "--quiet"]
    assert main(base) == 0                             # no --out: caches in the user cache
    assert "knn, k=2" in capsys.readouterr().out
    assert list(work.iterdir()) == []
    assert (root / "cache" / "select").is_dir()
    out = tmp_path / "sel-text"
    assert main([*base, "--out", str(out)]) == 0       # --out without --json writes the file
    printed = capsys.readouterr().out
    payload = json.loads((out / "selection.json").read_text())
    assert payload["k"] == 2 and payload["selector"] == "knn" and len(payload["sets"]) == 3
    assert f"selection: {out / 'selection.json'}" in printed
    assert list(work.iterdir()) == []


def test_progress_off_a_terminal_is_plain_lines_and_quiet_prints_nothing(setup, capsys,
                                                                        monkeypatch):
    """stderr captured here is not a terminal: progress comes as plain lines (no carriage
    returns, no escape codes, a few KB), transformers' weight-loading bar included; with
    --quiet nothing at all."""
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    argv = ["evaluate", "--models", str(model_dir), *_task_args(data), "--selectors",
            "random,knn", "--ks", "2", "--seeds", "2", "--n-test", "6", "--encoder",
            "hidden:-1", "--json"]
    assert main([*argv, "--out", str(root / "progress-quiet"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "--out", str(root / "progress-lines")]) == 0
    err = capsys.readouterr().err
    assert err and "\r" not in err and "\x1b" not in err
    assert len(err.encode()) < 16_000, err
    lines = err.splitlines()
    assert any(ln.startswith("units 100% (3/3)") for ln in lines), err
    assert any(ln.startswith("scoring 100%") for ln in lines), err
    assert all(ln == ln.strip() and ln for ln in lines)


def test_redirected_stderr_gets_plain_lines_and_quiet_gets_nothing(setup, tmp_path):
    """The command as a user runs it, stderr redirected to a file: no carriage return or
    escape code and a few KB of progress lines (transformers' bars and warnings included);
    with --quiet no progress at all: only warnings about the data, one line each (this toy
    file has duplicated rows)."""
    import os
    import subprocess
    import sys

    root, model_dir, data = setup
    env = {**os.environ, "ICLDISTILL_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("ICLDISTILL_PROGRESS_INTERVAL", None)
    code = "import sys; from icldistill.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["evaluate", "--models", str(model_dir), *_task_args(data), "--selectors", "knn",
            "--ks", "2", "--n-test", "4", "--encoder", "hidden:-1", "--json"]
    for quiet in (True, False):
        log = tmp_path / f"stderr-{quiet}.log"
        with log.open("w") as fh:
            res = subprocess.run([sys.executable, "-c", code, *argv, "--out",
                                  str(tmp_path / f"out-{quiet}"), *(["--quiet"] * quiet)],
                                 stdout=subprocess.PIPE, stderr=fh, env=env, cwd=tmp_path,
                                 timeout=600)
        text = log.read_text()
        assert res.returncode == 0, text
        if quiet:
            assert all(line.startswith("icldistill: warning: ") for line in text.splitlines())
            assert "exact copy in the demonstration pool" in text
        else:
            assert "\r" not in text and "\x1b" not in text and 0 < len(text) < 8_000, text
            assert "units 100% (1/1)" in text


def test_compare_with_a_random_init_control(setup, capsys, monkeypatch):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    rep = root / "cmp-control"
    argv = ["compare", "--models", str(model_dir), *_task_args(data), "--selectors",
            "random,knn,mmd", "--ks", "2", "--seeds", "2", "--n-test", "8", "--encoder",
            "minilm", "--out", str(rep), "--quiet"]
    assert main([*argv, "--control", "1", "--backend", "ray"]) == 2
    assert "--control runs the random-init twins on the local backend" in \
        capsys.readouterr().err
    assert main([*argv, "--control", "0"]) == 2
    capsys.readouterr()
    assert main([*argv, "--control", "1", "--posthoc", "mmd", "random"]) == 0
    out = capsys.readouterr().out
    assert "random-init control:" in out and "significant comparisons differ" in out
    # the post-hoc pair: its own section and records, on the trained grid and on the twin
    for folder in (rep, rep / "control-1"):
        posthoc = json.loads((folder / "paired_posthoc.json").read_text())
        assert {(r["selector"], r["baseline"], r["task"]) for r in posthoc} == {
            ("mmd", "random", "toy")}
        assert "## Post-hoc comparisons" in (folder / "report.md").read_text()
    control = rep / "control-1"
    trained = [json.loads(x) for x in (rep / "results.jsonl").read_text().splitlines()]
    twin = [json.loads(x) for x in (control / "results.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in trained) == sorted(r["key"] for r in twin)  # same units
    assert "random-init control (seed 1)" in (control / "report.md").read_text()
    md = (rep / "report.md").read_text()
    # the twin's bar verdict is marked as a control's, the trained one's is not
    assert "random-init twins, which learned nothing" in (control / "report.md").read_text()
    assert "## Does an MMD-family selector beat kNN?" in md
    assert "which learned nothing" not in md
    assert "## Against a random-init control" in md and "control-1" in md
    # within-item concordance of correctness with the items' MMD², the twin beside it
    assert "## Within an item, do closer demonstrations answer right?" in md
    conc = json.loads((rep / "concordance.json").read_text())
    assert {r["reader"] for r in conc} == {"trained", "control"}
    assert {r["pairs_compared"] for r in conc} == {"all pairs", "same label shown",
                                                   "same label count"}
    assert all(r["task"] == "toy" and r["n_conditions"] == 4 for r in conc)  # knn, mmd, 2 random
    # MiniLM selection: the twin read the same demonstrations as the trained model
    for r in trained:
        if r["spec"]["selector"] == "knn":
            a = json.loads((rep / "selections" / f"{r['key']}.json").read_text())["indices"]
            b = json.loads((control / "selections" / f"{r['key']}.json").read_text())["indices"]
            assert a == b


def test_compare_control_reads_the_trained_prompts_in_model_space(setup, capsys, monkeypatch):
    # with a model-space representation a twin that selected for itself would choose on its
    # random hidden states; it must read the trained model's demonstrations instead
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    rep = root / "cmp-control-hidden"
    argv = ["compare", "--models", str(model_dir), *_task_args(data), "--selectors",
            "knn,mmd", "--ks", "2", "--n-test", "8", "--encoder", "hidden:-1", "--out",
            str(rep), "--quiet", "--control", "1", "--katt-concordance"]
    assert main(argv) == 0
    capsys.readouterr()
    control = rep / "control-1"
    trained = [json.loads(x) for x in (rep / "results.jsonl").read_text().splitlines()]
    assert {r["spec"]["selector"] for r in trained} == {"knn", "mmd"}
    for r in trained:
        a = json.loads((rep / "selections" / f"{r['key']}.json").read_text())
        b = json.loads((control / "selections" / f"{r['key']}.json").read_text())
        assert a["indices"] == b["indices"] and a["shared"] == b["shared"]
    md = (rep / "report.md").read_text()
    assert "the trained model's own selection" in md
    # --katt-concordance: the items' MMD² in the model's K_att space, stored, in the report
    conc = json.loads((rep / "concordance.json").read_text())
    assert {(r["space"], r["reader"]) for r in conc} == {
        (s, who) for s in ("reference", "K_att") for who in ("trained", "control")}
    stored = [json.loads(x) for x in (rep / "item_mmd.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in stored) == sorted(r["key"] for r in trained)
    assert "K_att space: share of discordant pairs" in md


def test_status_prints_where_the_grid_stands_and_computes_nothing(setup, capsys, monkeypatch):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    out = root / "status"

    def grid(selectors):
        return ["--model", str(model_dir), *_task_args(data), "--selector", selectors,
                "--k", "2", "--n-test", "6", "--encoder", "hidden:-1", "--out", str(out),
                "--quiet"]

    assert main(["evaluate", *grid("random,knn"), "--status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--status" in err and "does not exist" in err
    assert main(["evaluate", *grid("knn")]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["evaluate", *grid("random,knn"), "--status"]) == 0
    text = capsys.readouterr().out
    assert "4 units: 1 done, 0 running, 0 partial, 3 to do" in text     # random: 3 seeds
    assert re.search(r"^total\s+1\s+0\s+0\s+3\s+18\s", text, re.M)
    assert sorted(p.name for p in out.rglob("*")) == before        # nothing computed
    # compare takes the same flag (plural grid options)
    assert main(["compare", "--models", str(model_dir), *_task_args(data), "--selectors",
                 "knn", "--ks", "2", "--n-test", "6", "--encoder", "hidden:-1", "--out",
                 str(out), "--quiet", "--status"]) == 0
    assert "1 units: 1 done" in capsys.readouterr().out
    # with --control, the twin's folder too
    cmp = ["compare", "--models", str(model_dir), *_task_args(data), "--selectors", "knn",
           "--ks", "2", "--n-test", "6", "--encoder", "hidden:-1", "--out", str(out),
           "--quiet", "--status", "--control", "1"]
    assert main(cmp) == 0
    text = capsys.readouterr().out
    assert f"control grid in {out / 'control-1'}: not started (1 units to do)" in text
    (out / "control-1").mkdir()
    assert main(cmp) == 0
    text = capsys.readouterr().out
    assert f"grid in {out / 'control-1'}: 1 units: 0 done" in text
    # its unit, not timed there yet, is timed by the trained unit whose prompts it reads
    assert "not estimated" not in text


@pytest.mark.parametrize(("speed", "expected"), [(2.48, "bfloat16"), (1.2, "bfloat16"),
                                                 (1.19, "float32"), (0.12, "float32")])
def test_dtype_auto_takes_the_faster_precision_of_this_cpu(setup, capsys, monkeypatch, speed,
                                                          expected):
    """--dtype auto: bfloat16 where its matrix products are at least 1.2x float32 here, else
    float32; the units carry the choice, stderr says why; refused with --backend ray."""
    from icldistill.models import preferred_dtype, registry

    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    monkeypatch.setattr(registry, "half_precision_speed", lambda dtype=None: speed)
    assert preferred_dtype() == preferred_dtype("cpu") == expected
    out = root / f"auto-{speed}"
    grid = ["evaluate", "--model", str(model_dir), *_task_args(data), "--selector", "knn",
            "--k", "2", "--n-test", "6", "--encoder", "hidden:-1", "--out", str(out),
            "--dtype", "auto"]
    out.mkdir()
    assert main([*grid, "--status"]) == 0
    cap = capsys.readouterr()
    assert (f"--dtype auto: {expected} (bfloat16 matrix products run at {speed:.2f}x float32 "
            "on this CPU)") in cap.err
    label = str(model_dir) + ("" if expected == "float32" else " (bfloat16)")
    assert re.search(rf"^{re.escape(label)}\s+2\s+0\s+0\s+0\s+1\s", cap.out, re.M)
    assert main([*grid, "--quiet", "--status"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*grid, "--backend", "ray", "--status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--dtype auto" in err and "--backend ray" in err


def test_preferred_dtype_refuses_a_device_this_machine_lacks():
    import torch

    from icldistill.core.validation import InputError
    from icldistill.models import preferred_dtype

    if not torch.cuda.is_available():
        with pytest.raises(InputError):
            preferred_dtype("cuda")


def test_reference_encoder_flag_measures_mmd_in_the_model_and_is_kept_by_the_folder(
        setup, capsys, monkeypatch):
    root, model_dir, data = setup
    monkeypatch.setenv("ICLDISTILL_CACHE", str(root / "cache"))
    sel = ["select", *_task_args(data), "--selector", "knn", "--k", "2", "--n-test", "4",
           "--json", "--quiet"]
    assert main([*sel, "--model", str(model_dir)]) == 0
    minilm = json.loads(capsys.readouterr().out)
    assert main([*sel, "--model", str(model_dir), "--reference-encoder", "hidden:-1"]) == 0
    hidden = json.loads(capsys.readouterr().out)
    assert (minilm["reference_encoder"], hidden["reference_encoder"]) == ("minilm", "hidden:-1")
    assert minilm["sets"] == hidden["sets"]                  # the same choice, measured twice
    assert hidden["mmd2_task"] != pytest.approx(minilm["mmd2_task"])
    # bad specs stop at parse time, one line, exit 2
    for bad, said in (("hidden:x", "bad layer"), ("sbert", "unknown encoder")):
        assert main([*sel, "--reference-encoder", bad]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert main([*sel, "--encoder", "kv:1:a"]) == 2
    assert "bad head" in capsys.readouterr().err
    assert main([*sel, "--reference-encoder", "hidden:-1"]) == 2        # no --model
    assert "--model" in capsys.readouterr().err
    assert main([*sel, "--model", str(model_dir), "--reference-encoder", "kv:auto"]) == 2
    assert "give a layer" in capsys.readouterr().err
    # evaluate records it; the same folder refuses another; compare reports under it
    out = root / "ref-eval"
    ev = ["evaluate", "--model", str(model_dir), *_task_args(data), "--selector", "knn",
          "--k", "2", "--n-test", "6", "--out", str(out), "--quiet"]
    assert main([*ev, "--reference-encoder", "hidden:-1"]) == 0
    assert json.loads((out / "reference.json").read_text())["reference_encoder"] == "hidden:-1"
    capsys.readouterr()
    assert main([*ev, "--reference-encoder", "minilm"]) == 2
    assert "measured under reference encoder 'hidden:-1'" in capsys.readouterr().err
    assert main(["compare", "--models", str(model_dir), *_task_args(data), "--selectors",
                 "knn", "--ks", "2", "--n-test", "6", "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text()
    assert "on the `hidden:-1` representations of the inputs in" in md
