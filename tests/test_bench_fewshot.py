"""benchmarks/bench_fewshot.py: the random-init control of a grid (its paired comparisons
matched with the trained grid's, the report section, the control folder guards) and per-model
precisions."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from icldistill.core.stats import PairedComparison
from icldistill.reporting.reports import control_checks, write_comparison_report

from .scripts import load_script
from .test_reports import _unit_result
from .tiny_models import tiny_model, tiny_tokenizer


def _bench():
    return load_script("benchmarks/bench_fewshot.py", "bench_fewshot_under_test")


def _pc(task, selector, baseline, diff, half, p_holm=0.01, k=4):
    return PairedComparison("m", k, task, selector, baseline, diff, diff - half, diff + half,
                            p_holm, p_holm, 100, 1)


def test_control_checks_match_per_task_and_the_mean_only_over_the_same_tasks():
    trained = [_pc("a", "knn", "random", 0.20, 0.05), _pc("b", "knn", "random", 0.04, 0.05),
               _pc("c", "knn", "random", 0.30, 0.05), _pc("mean", "knn", "random", 0.18, 0.03),
               _pc("a", "mmd", "knn", -0.10, 0.04)]
    control = [_pc("a", "knn", "random", 0.00, 0.03), _pc("b", "knn", "random", 0.02, 0.03),
               _pc("mean", "knn", "random", 0.01, 0.02), _pc("a", "mmd", "knn", -0.09, 0.03)]
    checks = control_checks(trained, control)
    got = {(c.task, c.selector): c.differs for c in checks}
    # a: +20 [15, 25] vs 0 [-3, 3] disjoint; b: overlapping; c: not in the control; the mean is
    # over tasks a, b, c in the trained grid but a, b in the control: not matched; mmd on a:
    # -10 [-14, -6] vs -9 [-12, -6] overlap
    assert got == {("a", "knn"): True, ("b", "knn"): False, ("a", "mmd"): False}
    same_tasks = control_checks(trained[:2] + trained[3:4], control[:3])
    assert {(c.task, c.differs) for c in same_tasks} >= {("mean", True)}
    # the whole trained interval beyond the control's, on its own side only
    side = control_checks([_pc("a", "x", "y", 0.03, 0.05), _pc("b", "x", "y", -0.02, 0.005),
                           _pc("c", "x", "y", 0.12, 0.01), _pc("d", "x", "y", -0.02, 0.05)],
                          [_pc("a", "x", "y", 0.07, 0.02), _pc("b", "x", "y", 0.03, 0.02),
                           _pc("c", "x", "y", -0.07, 0.02), _pc("d", "x", "y", 0.03, 0.02)])
    # a: +3 below a control at [+5, +9] (the control shows more): not credited; b: [-2.5, -1.5]
    # below [+1, +5]; c: [+11, +13] above [-9, -5]; d: -2 [-7, +3] overlaps [+1, +5], though
    # its point estimate lies outside
    assert [c.differs for c in side] == [False, True, True, False]


def test_comparison_report_sets_the_control_beside_the_trained_grid(tmp_path):
    rs = [_unit_result(t, "random", 0.5, 0.1, s) for t in ("a", "b") for s in range(2)]
    rs += [_unit_result(t, "knn", 0.8, 0.01) for t in ("a", "b")]
    trained = [_pc("a", "knn", "random", 0.30, 0.05), _pc("b", "knn", "random", 0.30, 0.05),
               _pc("mean", "knn", "random", 0.30, 0.04)]
    control = [_pc("a", "knn", "random", 0.01, 0.03, p_holm=0.8),
               _pc("b", "knn", "random", 0.28, 0.04, p_holm=0.01),
               _pc("mean", "knn", "random", 0.15, 0.03, p_holm=0.01)]
    rep = write_comparison_report(rs, tmp_path, paired=trained, control_paired=control,
                                  control_label="the control in X")
    md = rep.markdown.read_text()
    assert "## Against a random-init control" in md and "the control in X" in md
    assert ("m k=4: 3 of the 3 comparisons matched with the control are significant on the "
            "trained model (Holm p < 0.05); 2 of them differ from the control, 1 does not: knn vs "
            "random on b.") in md
    assert "| knn | random | a | +30.0 [+25.0, +35.0] | 0.01 | +1.0 [-2.0, +4.0] | 0.8 | yes |" \
        in md
    assert [c.differs for c in rep.control] == [True, False, True]


def test_comparison_report_posthoc_section_with_its_control(tmp_path):
    rs = [_unit_result(t, sel, 0.6, 0.05) for t in ("a", "b") for sel in ("knn", "vote-k", "mmd")]
    planned = [_pc("a", "mmd", "knn", -0.10, 0.04), _pc("b", "mmd", "knn", -0.12, 0.04),
               _pc("mean", "mmd", "knn", -0.11, 0.03)]
    posthoc = [_pc("a", "vote-k", "mmd", 0.08, 0.03, p_holm=0.001),
               _pc("b", "vote-k", "mmd", 0.01, 0.03, p_holm=0.7),
               _pc("mean", "vote-k", "mmd", 0.045, 0.02, p_holm=0.002)]
    control = [_pc("a", "vote-k", "mmd", 0.07, 0.03, p_holm=0.01)]
    rep = write_comparison_report(rs, tmp_path, paired=planned, posthoc=posthoc,
                                  control_posthoc=control, control_label="the twin in Y")
    md = rep.markdown.read_text()
    # after the pre-planned comparisons, labelled exploratory, with its own Holm family
    assert md.index("## Paired comparisons") < md.index("## Post-hoc comparisons")
    assert "so exploratory: they are not in the pre-planned comparisons' Holm family" in md
    assert "### m k=4 (Holm family of 3 comparisons)" in md
    assert ("| vote-k | mmd | +4.5 | [+2.5, +6.5] | 0.002 | 1 | better | a +8.0 |") in md
    # the control: a +8 [5, 11] vs +7 [4, 10] overlaps, so it is not credited to training
    assert "Against the twin in Y" in md
    assert "| vote-k | mmd | a | +8.0 [+5.0, +11.0] | 0.001 | +7.0 [+4.0, +10.0] | 0.010 | no |" \
        in md
    assert [c.differs for c in rep.posthoc_control] == [False]
    assert json.loads(rep.posthoc_json.read_text()) == [c.to_dict() for c in posthoc]
    # the planned family is untouched
    assert json.loads(rep.paired_json.read_text()) == [c.to_dict() for c in planned]
    with pytest.raises(ValueError, match="needs posthoc"):
        write_comparison_report(rs, tmp_path, paired=planned, control_posthoc=control)


def test_bench_posthoc_pairs_are_checked_before_any_work(tmp_path, capsys):
    mod = _bench()
    argv = ["--models", "smollm2-135m", "--tasks", "amazon", "--selectors", "knn,mmd", "--ks",
            "8", "--out", str(tmp_path / "g")]
    assert mod.main([*argv, "--posthoc", "mmd", "mmd"]) == 2
    assert "'mmd' is paired with itself" in capsys.readouterr().err
    assert mod.main([*argv, "--posthoc", "knn", "mmd", "--posthoc", "mmd", "knn"]) == 2
    assert "'mmd' vs 'knn' is given twice" in capsys.readouterr().err
    assert mod.main([*argv, "--posthoc", "vote-k", "mmd"]) == 2        # not in this grid
    assert "'vote-k', which this grid does not run" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_bench_control_folder_guards(tmp_path):
    mod = _bench()
    out = tmp_path / "grid-control"
    assert mod.check_control_folder(out, 1) is None                    # marks a new folder
    assert json.loads((out / "control.json").read_text()) == {"control": "random-init",
                                                               "seed": 1}
    assert mod.check_control_folder(out, 1) is None
    assert "control folder of seed 1, not 2" in mod.check_control_folder(out, 2)
    assert "pass --control 1" in mod.check_control_folder(out, None)
    assert ">= 1" in mod.check_control_folder(tmp_path / "x", 0)
    trained = tmp_path / "grid"
    trained.mkdir()
    (trained / "results.jsonl").write_text(json.dumps(_unit_result("a", "knn", 0.8, 0.1)
                                                      .to_dict()) + "\n")
    assert "holds trained-model results" in mod.check_control_folder(trained, 1)
    assert mod.check_control_folder(trained, None) is None
    with pytest.raises(ValueError, match="not a control folder"):
        mod.read_control_paired(trained)
    with pytest.raises(ValueError, match=r"no paired\.json yet"):
        mod.read_control_paired(out)
    (out / "paired.json").write_text(json.dumps([_pc("a", "knn", "random", 0.1, 0.1)
                                                 .to_dict()]))
    assert mod.read_control_paired(out)[0].diff == pytest.approx(0.1)
    # bad input: a one-line error and exit code 2, before any model is loaded
    assert mod.main(["--out", str(out), "--report-only"]) == 2


def test_bench_control_of_a_model_space_selector_needs_the_trained_prompts(tmp_path, capsys):
    mod = _bench()
    out = tmp_path / "ctl"
    argv = ["--models", "smollm2-135m", "--tasks", "amazon", "--ks", "8", "--out", str(out)]
    assert mod.main([*argv, "--selectors", "knn,mmd-katt", "--control", "1"]) == 2
    assert "mmd-katt select in the model's own representation" in capsys.readouterr().err
    assert not (out / "control.json").exists()          # refused before marking the folder
    assert mod.main([*argv, "--selectors", "knn", "--selections-from", str(tmp_path)]) == 2
    assert "add --control" in capsys.readouterr().err


def test_bench_refuses_a_grid_that_lists_a_name_twice(tmp_path, capsys):
    mod = _bench()
    argv = ["--models", "smollm2-135m", "--tasks", "amazon", "--out", str(tmp_path / "g")]
    assert mod.main([*argv, "--selectors", "knn,kate", "--ks", "8"]) == 2
    assert "selectors 'knn' and 'kate' are the same" in capsys.readouterr().err
    assert mod.main([*argv, "--selectors", "knn", "--ks", "8,8"]) == 2
    assert "k 8 is listed twice" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()                  # refused before any work


def test_bench_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    """Regression: --ks 0 loaded the model and failed inside the first unit with a
    traceback; --n-test -3 and an unknown model were accepted (--status listed a grid)."""
    import subprocess
    import sys

    mod = _bench()
    argv = ["--tasks", "amazon", "--selectors", "knn", "--out", str(tmp_path / "g")]
    assert mod.main([*argv, "--models", "smollm2-135m", "--ks", "0"]) == 2
    assert "UnitSpec.k must be an integer >= 1, got 0" in capsys.readouterr().err
    assert mod.main([*argv, "--models", "smollm2-136m", "--ks", "4"]) == 2
    assert "unknown model 'smollm2-136m'" in capsys.readouterr().err
    for flag, value in (("--n-test", "-3"), ("--seeds", "0"), ("--pool-size", "0"),
                        ("--threads", "x"), ("--control", "0")):
        with pytest.raises(SystemExit) as exc:
            mod.main([*argv, flag, value])
        assert exc.value.code == 2
        assert f"{flag} must be" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    # an InputError found later (an unknown dataset, once the grid reads its tasks) is one
    # line too, from the script's entry point
    (tmp_path / "g").mkdir()
    run = subprocess.run([sys.executable, "benchmarks/bench_fewshot.py", *argv, "--tasks",
                          "nope", "--status"], capture_output=True, text=True,
                         cwd=mod.HERE.parent)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "unknown dataset 'nope'" in run.stderr


def test_bench_control_loader_builds_the_random_twin(monkeypatch):
    mod = _bench()
    import icldistill.models.registry as registry

    trained = tiny_model("llama")
    calls = []

    def fake_load(name, dtype=torch.float32, progress=True, device="cpu"):
        calls.append((name, dtype))
        model = copy.deepcopy(trained).to(dtype)
        if dtype != torch.float32:                   # as load_model does
            registry.float32_head(model)
        return SimpleNamespace(model=model, tokenizer=tiny_tokenizer(True), name=name,
                               path=None)

    monkeypatch.setattr(registry, "load_model", fake_load)
    twin = mod.control_loader(3, progress=False)("tiny")
    assert calls == [("tiny", torch.float32)]
    assert type(twin.model) is type(trained)
    cfg = {k: v for k, v in twin.model.config.to_dict().items() if k != "dtype"}
    assert cfg == {k: v for k, v in trained.config.to_dict().items() if k != "dtype"}
    a = dict(trained.named_parameters())
    assert any(not torch.equal(p, a[n]) for n, p in twin.model.named_parameters())
    again = mod.control_loader(3, progress=False)("tiny")
    assert all(torch.equal(p, dict(again.model.named_parameters())[n])
               for n, p in twin.model.named_parameters())
    half = mod.control_loader(3, progress=False)("tiny", dtype=torch.bfloat16)
    assert half.model.get_output_embeddings().weight.dtype == torch.float32


def test_bench_dtype_per_model():
    mod = _bench()
    models = ["smollm2-135m", "qwen2.5-0.5b"]
    assert mod.model_dtypes("bfloat16", models) == dict.fromkeys(models, "bfloat16")
    assert mod.model_dtypes("qwen2.5-0.5b=bfloat16", models) == {
        "smollm2-135m": "float32", "qwen2.5-0.5b": "bfloat16"}
    with pytest.raises(ValueError, match="'gpt2', which is not in --models"):
        mod.model_dtypes("gpt2=bfloat16", models)
    with pytest.raises(ValueError, match="expected one of"):
        mod.model_dtypes("qwen2.5-0.5b=fp8", models)
    with pytest.raises(ValueError, match="expected one of"):
        mod.model_dtypes("half", models)
    units = mod.grid_units(models, {"smollm2-135m": "float32", "qwen2.5-0.5b": "bfloat16"},
                           tasks=["a"], selectors=["knn", "random"], ks=[8], seeds=2, n_test=10)
    assert {(u.model, u.dtype) for u in units} == {("smollm2-135m", "float32"),
                                                   ("qwen2.5-0.5b", "bfloat16")}
    assert len(units) == 2 * 3
    assert mod.main(["--dtype", "fp8", "--report-only"]) == 2


def test_bench_dtype_per_block():
    """``model@k=dtype`` sets one k's block (qwen2.5-0.5b's k = 4 block is scored in float32
    beside its k = 8 block in bfloat16)."""
    mod = _bench()
    models = ["smollm2-135m", "qwen2.5-0.5b"]
    spec = "qwen2.5-0.5b=bfloat16,qwen2.5-0.5b@4=float32"
    dtypes = mod.model_dtypes(spec, models, [4, 8])
    units = mod.grid_units(models, dtypes, tasks=["a"], selectors=["knn"], ks=[4, 8],
                           seeds=1, n_test=10)
    assert sorted((u.model, u.k, u.dtype) for u in units) == [
        ("qwen2.5-0.5b", 4, "float32"), ("qwen2.5-0.5b", 8, "bfloat16"),
        ("smollm2-135m", 4, "float32"), ("smollm2-135m", 8, "float32")]
    # the order of the entries does not matter: a block's entry wins over its model's
    assert mod.model_dtypes("qwen2.5-0.5b@4=float32,qwen2.5-0.5b=bfloat16", models,
                            [4, 8]) == dtypes
    with pytest.raises(ValueError, match="'5' is not one of --ks"):
        mod.model_dtypes("qwen2.5-0.5b@5=float32", models, [4, 8])
    with pytest.raises(ValueError, match="'x' is not one of --ks"):
        mod.model_dtypes("qwen2.5-0.5b@x=float32", models, [4, 8])
    with pytest.raises(ValueError, match=r"sets 'qwen2\.5-0\.5b@4' twice"):
        mod.model_dtypes("qwen2.5-0.5b@4=float32,qwen2.5-0.5b@4=bfloat16", models, [4, 8])
    with pytest.raises(ValueError, match="'gpt2', which is not in --models"):
        mod.model_dtypes("gpt2@4=float32", models, [4, 8])
    assert mod.main(["--ks", "4,x", "--report-only"]) == 2


def test_report_sets_the_vote_comparison_beside_the_control(tmp_path):
    import numpy as np

    from icldistill.evaluation.harness import LabelCoverage

    rs = [_unit_result(t, "random", 0.5, 0.1, s) for t in ("a", "b") for s in range(2)]
    rs += [_unit_result(t, "knn", 0.8, 0.01) for t in ("a", "b")]
    trained = [_pc("a", "knn", "random", 0.30, 0.05)]
    control = [_pc("a", "knn", "random", 0.01, 0.03)]
    ones, zeros = np.ones(4, dtype=bool), np.zeros(4, dtype=bool)
    # trained: always right, the vote half right (+50); control: always wrong, the vote right
    cov = {r.key: LabelCoverage(r.key, ones, np.full(4, 0.75), ones, np.full(4, 0.5))
           for r in rs}
    ctl = {r.key: LabelCoverage(r.key, ones, np.full(4, 0.75), zeros, np.ones(4))
           for r in rs if r.spec.selector == "knn"}            # the control ran knn only
    rep = write_comparison_report(rs, tmp_path, paired=trained, control_paired=control,
                                  coverage=cov, control_coverage=ctl)
    md = rep.markdown.read_text()
    assert "### m k=4: the model against the vote of its demonstrations' labels" in md
    assert "| knn | a, b | +50.0 [+50.0, +50.0] | -100.0 [-100.0, -100.0] | yes |" in md
    assert "| random | a, b |" not in md               # not in the control


def test_bench_status_reads_the_folder_and_computes_nothing(tmp_path, capsys, monkeypatch):
    from .test_harness import _write_task

    toy = _write_task(tmp_path / "toy.jsonl")
    mod = _bench()
    monkeypatch.setattr(mod.Task, "from_registry", classmethod(lambda cls, name, **kw: toy))
    out = tmp_path / "g"
    argv = ["--status", "--models", "smollm2-135m", "--tasks", "amazon", "--selectors",
            "random,knn", "--ks", "4,8", "--seeds", "2", "--n-test", "10", "--pool-size", "30",
            "--out", str(out)]
    assert mod.main(argv) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    assert mod.main(argv) == 0
    text = capsys.readouterr().out
    assert "6 units: 0 done, 0 running, 0 partial, 6 to do" in text
    assert "(+6 units not estimated)" in text
    assert sorted(p.name for p in out.iterdir()) == []


def test_bench_no_report_computes_and_leaves_the_folders_report_alone(tmp_path, capsys,
                                                                     monkeypatch):
    """--no-report (a queue worker of a folder whose report covers more models than its own
    command): the units are run and the report is not written. Fixed bug: the qwen2.5-0.5b
    control's end-of-run report replaced the control folder's report, dropping smollm2-135m's."""
    from .test_harness import _write_task

    toy = _write_task(tmp_path / "toy.jsonl")
    mod = _bench()
    monkeypatch.setattr(mod.Task, "from_registry", classmethod(lambda cls, name, **kw: toy))
    ran = []
    monkeypatch.setattr(mod, "run_shared", lambda h, out, units, deadline: ran.append(units))
    out = tmp_path / "g"
    out.mkdir()
    (out / "report.md").write_text("the folder's report")
    argv = ["--models", "smollm2-135m", "--tasks", "amazon", "--selectors", "random",
            "--ks", "4", "--seeds", "1", "--n-test", "10", "--pool-size", "30", "--out", str(out)]
    assert mod.main([*argv, "--no-report"]) == 0
    assert len(ran) == 1 and len(ran[0]) == 1
    assert (out / "report.md").read_text() == "the folder's report"
    # without it the run goes on to its report (here: nothing recorded, so it says so)
    assert mod.main(argv) == 1
    assert "no results yet" in capsys.readouterr().err


@pytest.mark.parametrize("bf16_fast", ["1", "0"])
def test_queue_script_commands_are_the_grid_flags(tmp_path, monkeypatch, capsys, bf16_fast):
    """benchmarks/selection_grid_queue.sh (DRY_RUN): its bench commands parse, name the grid's
    10 tasks and 11 selectors, run qwen2.5-0.5b's k = 8 block in bfloat16 only where bf16 is
    fast and its k = 4 block in float32 everywhere, and each answers --status on an empty
    folder."""
    import os
    import subprocess
    from pathlib import Path

    from .test_harness import _write_task

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DRY_RUN": "1", "BF16_FAST": bf16_fast}
    lines = subprocess.run(["bash", str(root / "benchmarks/selection_grid_queue.sh"), "1"],
                           env=env, capture_output=True, text=True, check=True
                           ).stdout.splitlines()
    # qwen k=8, its control, smollm2 k=4 and its control, qwen k=4 and its control; after the
    # k=8 control and after each k=4 block's control the two full reports (a step's own report
    # covers only its command)
    assert len(lines) == (12 if bf16_fast == "1" else 8)
    reports = [n for n, line in enumerate(lines) if "--report-only" in line.split()]
    assert reports == ([2, 3, 6, 7, 10, 11] if bf16_fast == "1" else [2, 3, 6, 7])
    assert all("--control-dir" in lines[n] for n in reports[1::2])
    controls = [n for n, line in enumerate(lines)
                if "--control" in line.split() and n not in reports]
    assert controls == ([1, 5, 9] if bf16_fast == "1" else [1, 5])
    for n in controls:
        # each control computes without a report of its own, on the trained grid's prompts,
        # at the k of the block before it
        words = lines[n].split()
        assert "--no-report" in words and "--selections-from" in words
        assert words[words.index("--ks") + 1] == lines[n - 1].split()[
            lines[n - 1].split().index("--ks") + 1]
    toy = _write_task(tmp_path / "toy.jsonl")
    mod = _bench()
    monkeypatch.setattr(mod.Task, "from_registry", classmethod(lambda cls, name, **kw: toy))
    for n, line in enumerate(lines):
        words = line.split()
        args = words[words.index(next(w for w in words if w.endswith("bench_fewshot.py"))) + 1:]
        flags = dict(zip(args[::2], args[1::2], strict=False))
        if "--control" not in args:
            assert len(flags["--tasks"].split(",")) == 10
            assert len(flags["--selectors"].split(",")) == 11
        if flags["--models"] == "qwen2.5-0.5b":   # k = 8 in bfloat16, k = 4 in float32
            assert flags.get("--dtype", "float32") == {"8": "bfloat16", "4": "float32"}[
                flags["--ks"]]
        out = tmp_path / f"out{n}"
        out.mkdir()
        args[args.index("--out") + 1] = str(out)
        args = [a for a in args if a != "--report-only-if-done"] + ["--status"]
        assert mod.main(args) == 0, line
        assert "units:" in capsys.readouterr().out


def test_queue_script_report_mode_writes_both_reports_from_the_grid_flags(tmp_path, capsys):
    """`selection_grid_queue.sh report` (DRY_RUN): the control's report, then the grid's beside
    it, each --report-only with the post-hoc pairs; each command parses and, on a folder with
    no units, says so (exit 1) without computing anything."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DRY_RUN": "1"}
    lines = subprocess.run(["bash", str(root / "benchmarks/selection_grid_queue.sh"), "report"],
                           env=env, capture_output=True, text=True, check=True
                           ).stdout.splitlines()
    assert len(lines) == 2
    assert "--control 1" in lines[0] and "--control-dir" in lines[1]
    mod = _bench()
    for n, line in enumerate(lines):
        args = line.split()[2:]
        assert args.count("--posthoc") == 4 and args[-1] == "--report-only"
        assert args[args.index("--dtype") + 1] == "qwen2.5-0.5b=bfloat16,qwen2.5-0.5b@4=float32"
        out = tmp_path / f"r{n}"
        out.mkdir()
        args[args.index("--out") + 1] = str(out)
        assert mod.main(args) == 1, line
        assert "no results yet" in capsys.readouterr().err
        # nothing but the control folder's marker
        assert [p.name for p in out.iterdir()] == (["control.json"] if n == 0 else [])


def test_bench_names_the_unfinished_groups_for_the_bar():
    """The groups of a grid not yet finished, as the report's bar needs them (it gave a verdict
    on the selection grid's smollm2-135m k = 4 block at 118 of 130 units)."""
    mod = _bench()
    grid = set(mod.grid_units(["smollm2-135m", "qwen2.5-0.5b"],
                              {"smollm2-135m": "float32", "qwen2.5-0.5b": "bfloat16"},
                          tasks=["a", "b"], selectors=["random", "knn"], ks=[4, 8], seeds=2,
                          n_test=10))
    assert len(grid) == 2 * 2 * 2 * 3
    done = [SimpleNamespace(spec=u) for u in sorted(grid, key=str)
            if u.k == 8 or u.model == "smollm2-135m"]
    missing, done = done[0].spec, done[1:]      # one more unit not finished
    got = mod.incomplete_groups(grid, done)
    assert got == {f"{missing.model_label} k={missing.k}": (5, 6),
                   "qwen2.5-0.5b (bfloat16) k=4": (0, 6)}
    assert mod.incomplete_groups(grid, [SimpleNamespace(spec=u) for u in grid]) == {}


def test_control_checks_count_a_comparison_and_its_mirror_once():
    """Regression: "random vs knn" and "knn vs random" (a grid compared with both baselines)
    are one hypothesis, but both were checked, so the report's counts held it twice."""
    trained = [_pc("a", "random", "knn", -0.20, 0.05), _pc("a", "knn", "random", 0.20, 0.05),
               _pc("a", "mmd", "knn", -0.10, 0.04), _pc("a", "mmd", "random", 0.10, 0.04)]
    control = [_pc("a", "random", "knn", 0.00, 0.03), _pc("a", "knn", "random", 0.00, 0.03),
               _pc("a", "mmd", "knn", 0.00, 0.03), _pc("a", "mmd", "random", 0.0, 0.03)]
    checks = control_checks(trained, control)
    assert [(c.selector, c.baseline) for c in checks] == [("random", "knn"), ("mmd", "knn"),
                                                          ("mmd", "random")]
    assert all(c.differs for c in checks)


def _fake_queue(tmp_path, body: str):
    """(script, env, fake python, log folder) for running selection_grid_queue.sh for real
    with a fake interpreter: it answers the half-precision probe (``-c ...``) with 0 (a
    float32 CPU) and runs the bash ``body`` for every other call; the pinned tree is an
    empty folder."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nif [[ "$1" == -c ]]; then echo 0; exit 0; fi\n'
                    + body)
    fake.chmod(0o755)
    tree = tmp_path / "tree"
    tree.mkdir()
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHON": str(fake), "GRID_TREE": str(tree), "LOG_DIR": str(logs)}
    env.pop("DRY_RUN", None)
    return str(root / "benchmarks/selection_grid_queue.sh"), env, fake, logs


def test_queue_script_logs_a_failed_step_with_its_exit_status(tmp_path):
    """Regression: a failed step was logged as "exited with 0" (the message's $(date ...)
    reset $? before it was read). Each step of a worker whose commands all fail (exit 3) is
    now logged with 3, and the worker goes on to the next step."""
    import subprocess

    script, env, _, logs = _fake_queue(tmp_path, "exit 3\n")     # every run fails with 3
    subprocess.run(["bash", script, "7"], env=env, capture_output=True, text=True, check=True,
                   timeout=60)
    log = (logs / "queue-7.log").read_text().splitlines()
    steps = [line.split("worker 7: ")[1] for line in log]
    assert steps == ["smollm-k4", "smollm-k4 exited with 3",
                     "smollm-control-k4", "smollm-control-k4 exited with 3",
                     "reports", "reports exited with 3",
                     "qwen-k4-fp32", "qwen-k4-fp32 exited with 3",
                     "qwen-control-k4-fp32", "qwen-control-k4-fp32 exited with 3",
                     "reports", "reports exited with 3", "queue done"]


def test_queue_script_skips_reports_already_written_from_the_same_units(tmp_path):
    """A worker's reports step writes nothing when the last complete write (in its log
    folder) was from the same recorded units and code: a worker restarted on finished blocks
    spent 10 minutes per report step rewriting identical reports. The report mode always
    writes, and a failed write is not remembered."""
    import subprocess

    calls = tmp_path / "calls"
    # a --report-only write is recorded and succeeds; every computing step succeeds without
    # recording anything
    script, env, fake, logs = _fake_queue(
        tmp_path, f'if [[ " $* " == *" --report-only "* ]]; then echo w >> {calls}; fi\n'
                  "exit 0\n")

    def writes() -> int:
        return len(calls.read_text().split()) if calls.exists() else 0

    subprocess.run(["bash", script, "7"], env=env, check=True, timeout=60)
    # two report steps, two reports each: the second step finds nothing changed
    assert writes() == 2
    assert "up to date" in (logs / "reports-7.log").read_text()
    subprocess.run(["bash", script, "8"], env=env, check=True, timeout=60)   # a restart
    assert writes() == 2
    subprocess.run(["bash", script, "report"], env=env, check=True, timeout=60)
    assert writes() == 4                       # the report mode always writes
    # a failed write leaves no signature: the next step writes again
    (logs / "reports.sig").write_text("stale\n")
    fake.write_text(fake.read_text().replace("exit 0\n", "exit 5\n").replace(
        "echo 0; exit 5", "echo 0; exit 0"))
    subprocess.run(["bash", script, "9"], env=env, check=True, timeout=60)
    assert not (logs / "reports.sig").exists()
    assert "reports exited with 5" in (logs / "queue-9.log").read_text()
