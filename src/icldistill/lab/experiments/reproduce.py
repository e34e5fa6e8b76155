"""``icldistill reproduce``: train the controlled in-context learners, run every experiment and
write one report (``report.md`` + ``report.html``) that checks each claim of the framework.

Resumable: every finished experiment is stored as ``sections/<key>.json`` (atomic write) with a
fingerprint of its settings; a rerun with the same settings reads it back instead of
recomputing, and trained models come from the checkpoint cache. A phenomena section (one to two
hours of one core on the full settings) also keeps each finished part (one model on one task) in
``sections/.parts/<key>/`` until it is stored (and a long part, e.g. one model's orders on one
task, each of its steps), so a killed run loses at most the step in flight.

Each section records, when it is computed, what computed it (:func:`provenance`: the source
tree's git commit, torch and transformers versions, the time); the report shows it under the
section. It is a record, not part of the fingerprint: a section is read back by its settings.

Several processes may share one output folder (start the same command twice to use two cores):
each step is computed under a lock (``sections/locks/<key>.lock``) by one process, and a step
another process holds is taken up at the end, once it is stored. The report always holds every
stored section of the run's settings, also after an ``--only`` run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import importlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icldistill.artifacts.document import inline_code
from icldistill.core.progress import log as fetch_log
from icldistill.core.results import Result
from icldistill.core.validation import InputError
from icldistill.lab.experiments._common import Section, checks_summary
from icldistill.lab.experiments.report import read_section, write_lab_report, write_section

__all__ = ["EXPERIMENTS", "PARTS_DIR", "PHENOMENA_SECTIONS", "ReproduceResult",
           "phenomena_models", "plan", "provenance", "reproduce", "run_experiment",
           "run_phenomenon", "source_commit", "with_provenance"]

#: Experiments on a trained in-context learner: name -> module (each has ``run``).
EXPERIMENTS = {
    "training": "icldistill.lab.experiments.training_report",
    "alignment": "icldistill.lab.experiments.alignment",
    "bias": "icldistill.lab.experiments.bias",
    "generalization": "icldistill.lab.experiments.generalization",
    "gd": "icldistill.lab.experiments.gd",
}

#: Phenomena measured on real language models against random-init twins: section key ->
#: module (each has ``run(models, *, out_dir, quick, seed, progress, under_test=...,
#: resume_dir=...)``).
PHENOMENA_SECTIONS = {
    "adaptation": "icldistill.lab.experiments.adaptation",
    "ordering": "icldistill.lab.experiments.ordering",
    "interference": "icldistill.lab.experiments.interference",
    "icl-vs-finetuning": "icldistill.lab.experiments.finetuning",
}
#: Bumped when what a stored section holds changes, so older stored sections are recomputed
#: (2: real-model sections measured against random-init twins; 3: a one-item statistic is never
#: "outside" the controls).
SECTIONS_FORMAT = 3
#: Bumped when the phenomena sections judge their measurements differently, so stored phenomena
#: sections judged the old way are recomputed while the other sections are read back (2: one
#: unit per demonstration set or task, and the control rule paired on those units, 2026-12-05;
#: 3: checks record whether their units could have shown the claim at all; 4: a sign-flip
#: floor counts units measured as no difference; 5: a paired floor counts the design's units,
#: also those the data left undefined, 2026-12-05).
PHENOMENA_JUDGING = 5
#: Revisions of single phenomena sections' content, in their fingerprints so that only that
#: section is recomputed (interference 1: the MMD² beyond rho, a within-level test; 2: whole
#: sets relabelled across the levels; adaptation 1: the saturation checks' floor counts every
#: task, 2026-12-05; 2: the saturation checks per (task, set) against chance pairing;
#: 3: a task's sets re-paired as a whole; 4: only the units where accuracy rises re-paired;
#: icl-vs-finetuning 1: SimAOU against a random-label fine-tune; 2: its labels shuffled among
#: the demonstrations, sets per task, 2026-12-05).
SECTION_REVISIONS = {"interference": 2, "adaptation": 4, "icl-vs-finetuning": 2}
#: The same for the real-model section (2: its control comparisons paired over the traced
#: prompts, 6 of them in quick mode, 2026-12-05).
REAL_JUDGING = 2
#: Sub-folder (of ``sections/`` in ``reproduce``, of the output folder in ``icldistill lab``)
#: where an unfinished phenomena section keeps its finished parts; removed once it is stored.
PARTS_DIR = ".parts"
#: The second real model of a full run.
SECOND_MODEL = "qwen2.5-0.5b"


def plan(quick: bool) -> list[tuple[str, str]]:
    """The ``(experiment, task)`` pairs of a run (real-model sections have task ``""``)."""
    steps = [(name, "regression") for name in EXPERIMENTS]
    steps += [("training", "classification"), ("gd", "classification")]
    if not quick:
        steps += [("alignment", "classification"), ("bias", "classification"),
                  ("generalization", "classification")]
    return [*steps, ("real", ""), *((name, "") for name in PHENOMENA_SECTIONS)]


def phenomena_models(model: str, quick: bool) -> tuple[str, ...]:
    """Models of the phenomena sections: ``model`` alone in quick mode; ``model`` and
    qwen2.5-0.5b (float32) in a full run."""
    if quick or model == SECOND_MODEL:
        return (model,)
    return (model, SECOND_MODEL)


def run_phenomenon(name: str, models: Sequence[str | Any], *, out_dir: Path, quick: bool,
                   seed: int, progress: bool, under_test: Any = None,
                   resume_dir: Path | None = None) -> Section:
    """Run one phenomena section (:data:`PHENOMENA_SECTIONS`); ``resume_dir`` keeps its
    finished parts (:class:`~icldistill.lab.experiments.phenomena.Parts`)."""
    if name not in PHENOMENA_SECTIONS:
        raise InputError(f"unknown phenomenon {name!r}; expected one of "
                         f"{', '.join(PHENOMENA_SECTIONS)}")
    mod = importlib.import_module(PHENOMENA_SECTIONS[name])
    return mod.run(tuple(models), out_dir=out_dir, quick=quick, seed=seed, progress=progress,
                   under_test=under_test, resume_dir=resume_dir)


@dataclass(frozen=True)
class ReproduceResult(Result):
    """What ``reproduce`` produced.

    Attributes
    ----------
    out_dir : Path
    sections : list of Section
    files : dict[str, Path]
        ``markdown``, ``html``.
    seconds : float
    resumed : list of str
        Keys of the sections read back from an earlier run.
    """

    out_dir: Path
    sections: list[Section]
    files: dict[str, Path]
    seconds: float
    resumed: list[str]


def _git(args: Sequence[str], cwd: Path) -> str | None:
    """``git args`` in ``cwd``: its stdout (stripped), or ``None`` when git is missing, fails
    or takes over 10 s."""
    import subprocess

    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def source_commit(package_dir: str | Path | None = None) -> str | None:
    """The git commit of the source tree this package is imported from, with ``"+dirty"``
    appended when ``git status --porcelain`` of its ``src`` folder (the package's parent
    folder; the package folder itself when that is not named ``src``) is not empty.

    ``None`` outside a git checkout: when git is missing, or when the package's
    ``__init__.py`` is not tracked by the enclosing repository (an installed copy inside some
    other repository's tree is not that repository's commit).
    """
    pkg = Path(package_dir) if package_dir is not None else \
        Path(importlib.import_module("icldistill").__file__ or "").resolve().parent
    if not pkg.is_dir():
        return None
    head = _git(["rev-parse", "HEAD"], pkg)
    if not head or _git(["ls-files", "--error-unmatch", "__init__.py"], pkg) is None:
        return None
    src = pkg.parent if pkg.parent.name == "src" else pkg
    status = _git(["status", "--porcelain", "--", str(src)], pkg)
    if status is None:
        return None
    return head + ("+dirty" if status else "")


def provenance() -> dict[str, Any]:
    """What is computing a section now: ``commit`` (:func:`source_commit`), the ``torch`` and
    ``transformers`` versions (``None`` when not installed) and ``computed`` (local ISO time
    with its UTC offset). Stored in the section (:attr:`Section.provenance`), never in its
    fingerprint."""
    out: dict[str, Any] = {"commit": source_commit()}
    for mod in ("torch", "transformers"):
        try:
            out[mod] = str(importlib.import_module(mod).__version__)
        except Exception:  # pragma: no cover - optional packages
            out[mod] = None
    out["computed"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return out


def with_provenance(section: Section) -> Section:
    """``section`` with :func:`provenance` recorded (kept when it already has one)."""
    if section.provenance is not None:
        return section
    return dataclasses.replace(section, provenance=provenance())


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("icldistill", "torch", "numpy", "transformers", "matplotlib"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except Exception:  # pragma: no cover - optional packages
            out[mod] = "not installed"
    return out


def _results_digest(folder: str | Path | None) -> str | None:
    """sha256 of ``folder/results.jsonl`` (``None`` without one): a section read from a
    results folder is stale once units are added to it."""
    if folder is None:
        return None
    path = Path(folder) / "results.jsonl"
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_experiment(name: str, trained: Any, *, out_dir: Path, quick: bool, seed: int,
                   progress: bool) -> Section:
    """Run one experiment module's ``run`` on a trained in-context learner."""
    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment {name!r}; expected one of {', '.join(EXPERIMENTS)}")
    mod = importlib.import_module(EXPERIMENTS[name])
    return mod.run(trained, out_dir=out_dir, quick=quick, seed=seed, progress=progress)


def _relocate(section: Section, key: str, task: str) -> Section:
    title = section.title if not task or task in section.title else f"{section.title} ({task})"
    return dataclasses.replace(section, name=key, title=title,
                               figures=[f"{key}/{f}" for f in section.figures])


# long: 15 lines of signature and 31 of NumPy docstring; the code is 35
def reproduce(
    out_dir: str | Path = "icldistill-report",
    *,
    quick: bool = False,
    seed: int = 0,
    model: str = "smollm2-135m",
    dataset: str = "amazon",
    fewshot_results: str | Path | None = None,
    only: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    preset_name: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> ReproduceResult:
    """Train (or load) the in-context learners, run every experiment and write the report.

    Parameters
    ----------
    out_dir : path
        Report folder: ``report.md``, ``report.html``, ``report.json``, one sub-folder of
        figures per experiment, ``sections/`` (the resumable state) and ``learners.json`` (how
        the in-context learners were trained, for reports whose sections were read back).
    quick : bool
        The ``quick`` presets and small experiment sizes (under 10 minutes on 2 cores with the
        default model); otherwise the ``full`` presets.
    seed : int
        Seed of training and of every experiment.
    model, dataset : str
        Real language model and dataset of the ``real`` experiment.
    fewshot_results : path, optional
        A selection-harness folder (``results.jsonl``) to read accuracy vs MMD from, instead of
        running a small grid.
    only : sequence of str, optional
        Run only these experiments (names as in :func:`plan`, e.g. ``["alignment", "real"]``).
    cache_dir : path, optional
        Cache of trained checkpoints (default ``$ICLDISTILL_CACHE`` / ``~/.cache/icldistill``).
    preset_name : str, optional
        Training preset of the in-context learners (default ``"quick"`` with ``quick``, else
        ``"full"``; ``"tiny"`` is for tests).
    progress : bool
        Progress bars and status lines.
    log : callable, optional
        Receives one status line per step (default: print to stderr when ``progress``).
    command : str, optional
        The command line to record in the report.
    """
    t0 = time.perf_counter()
    steps = _selected_steps(plan(quick), only)           # an unknown name: before the folder
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if log is None:
        log = functools.partial(fetch_log, progress)
    mode = "quick" if quick else "full"
    run = _Run(out=out, quick=quick, seed=seed, model=model, dataset=dataset,
               fewshot_results=fewshot_results, cache_dir=cache_dir,
               preset_name=preset_name or mode, progress=progress, log=log)
    sections, resumed = _run_steps(run, steps, plan(quick), log)
    cmd = command or ("icldistill reproduce" + (" --quick" if quick else "")
                      + f" --seed {seed} --out {out}")
    whole = _without_only(cmd) if only else cmd
    header = run.header(whole, mode, t0, resumed, sections)
    if whole != cmd:
        header.insert(1, f"Last updated by: {inline_code(cmd)} (the other sections were read "
                         "back from earlier runs of the same settings)")
    files = write_lab_report(sections, out, title="icldistill: the laboratory report",
                             header=header, commands=[whole],
                             section_commands=run.commands, notes=_NOTES)
    return ReproduceResult(out_dir=out, sections=sections, files=files,
                           seconds=time.perf_counter() - t0, resumed=resumed)


def _run_steps(run: _Run, steps: list[tuple[str, str]], every: list[tuple[str, str]],
               log: Callable[[str], None]) -> tuple[list[Section], list[str]]:
    """Compute or read back ``steps``; return the report's sections (in plan order) and the
    keys read back.

    Several processes may share one output folder: a step is computed under its lock
    (``sections/locks/<key>.lock``), a step locked by another process is passed over and
    waited for at the end (then read back), so two runs of the same command split the steps
    between them. Steps of the full plan ``every`` that are not in ``steps`` are included
    when they are stored with the same settings, so an ``--only`` run does not drop the
    sections computed earlier from the report.
    """
    from icldistill.artifacts.store import unit_lock

    out = run.out
    folder = out / "sections"
    n = len(steps)
    fps = {step: run.fingerprint(*step) for step in every}

    def key_of(step: tuple[str, str]) -> str:
        return step[0] if not step[1] else f"{step[0]}-{step[1]}"

    def stored(step: tuple[str, str]) -> Section | None:
        sec = read_section(folder / f"{key_of(step)}.json", fingerprint=fps[step])
        if sec is not None and all((out / f).is_file() for f in sec.figures):
            return sec
        return None

    done: dict[tuple[str, str], Section] = {}
    resumed: list[str] = []
    pending = list(enumerate(steps, 1))
    for blocking in (False, True):
        for i, step in list(pending):
            key = key_of(step)
            if blocking:
                log(f"[{i}/{n}] {key}: waiting for the other process computing it ...")
            with unit_lock(folder, key, blocking=blocking) as held:
                if not held:
                    log(f"[{i}/{n}] {key}: another process is computing it; coming back "
                        "to it at the end")
                    continue
                pending.remove((i, step))
                sec = stored(step)
                if sec is not None:
                    log(f"[{i}/{n}] {key}: finished earlier, read back")
                    done[step] = sec
                    resumed.append(key)
                    continue
                log(f"[{i}/{n}] {key} ...")
                sec = with_provenance(_relocate(run.section(*step, key), key, step[1]))
                write_section(sec, folder / f"{key}.json", fingerprint=fps[step])
                shutil.rmtree(run.parts_dir(key), ignore_errors=True)
                log(f"{key}: {checks_summary(sec.checks)} ({sec.seconds:.1f} s)")
                done[step] = sec
    for step in every:
        if step not in done and (sec := stored(step)) is not None:
            done[step] = sec
            resumed.append(key_of(step))
    return [done[step] for step in every if step in done], resumed


def _without_only(cmd: str) -> str:
    """``cmd`` without its ``--only`` option: the command of the whole report."""
    import shlex

    try:
        words = shlex.split(cmd)
    except ValueError:
        return cmd
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w == "--only":
            skip = True
            continue
        if w.startswith("--only="):
            continue
        out.append(w)
    return shlex.join(out)


#: The notes at the end of the laboratory report.
_NOTES = (
    "Every number in this report is computed by the code; checks are evaluated on the "
    "measured values with the thresholds stated in their detail.",
    "Exactness checks run in float64. Trained models are float32; their traces are cast to "
    "float64 before the decomposition.",
)


def _selected_steps(steps: list[tuple[str, str]], only: Sequence[str] | None
                    ) -> list[tuple[str, str]]:
    """The steps of :func:`plan` named in ``only`` (all of them without ``only``)."""
    if not only:
        return steps
    unknown = sorted(set(only) - {n for n, _ in steps})
    if unknown:
        raise InputError(f"unknown experiment(s) {unknown}; expected some of "
                         f"{sorted({n for n, _ in steps})}")
    return [s for s in steps if s[0] in set(only)]


@dataclass
class _Run:
    """The settings of one :func:`reproduce` run and what it accumulates over the steps:
    trained learners, the real models of the phenomena sections, the command of every section
    and the lines describing the training."""

    out: Path
    quick: bool
    seed: int
    model: str
    dataset: str
    fewshot_results: str | Path | None
    cache_dir: str | Path | None
    preset_name: str
    progress: bool
    log: Callable[[str], None]
    trained: dict[str, Any] = dataclasses.field(default_factory=dict)
    commands: dict[str, str] = dataclasses.field(default_factory=dict)
    line_of: dict[str, str] = dataclasses.field(default_factory=dict)
    groups: list[Any] | None = None

    @property
    def ph_models(self) -> tuple[str, ...]:
        return phenomena_models(self.model, self.quick)

    def fingerprint(self, name: str, task: str) -> str:
        """The fingerprint of a step's settings; records the step's command as a side effect."""
        key = name if not task else f"{name}-{task}"
        quick = " --quick" if self.quick else ""
        if name in PHENOMENA_SECTIONS:
            settings: dict[str, Any] = {"models": list(self.ph_models), "controls": 1,
                                        "judging": PHENOMENA_JUDGING}
            if name in SECTION_REVISIONS:
                settings["revision"] = SECTION_REVISIONS[name]
            self.commands[key] = (f"icldistill lab {name} --models {','.join(self.ph_models)}"
                                  f"{quick} --seed {self.seed} --out {self.out / key}")
        elif name == "real":
            settings = {"model": self.model, "dataset": self.dataset,
                        "fewshot": str(self.fewshot_results), "judging": REAL_JUDGING}
            if self.fewshot_results is not None:    # the units it reads (stale once added to)
                settings["fewshot_units"] = _results_digest(self.fewshot_results)
            self.commands[key] = (f"icldistill lab real --model {self.model} --dataset "
                                  f"{self.dataset}{quick} --seed {self.seed} "
                                  f"--out {self.out / key}")
        else:
            cfg, tcfg = self.configs(task)
            settings = {"model": cfg.to_dict(), "train": tcfg.to_dict()}
            self.commands[key] = (f"icldistill lab {name} --task {task} --preset "
                                  f"{self.preset_name} --seed {self.seed} --out {self.out / key}")
        return _fingerprint({"name": name, "task": task, "quick": self.quick, "seed": self.seed,
                             "preset": self.preset_name, "format": SECTIONS_FORMAT,
                             **settings, "version": _versions()["icldistill"]})

    def configs(self, task: str) -> tuple[Any, Any]:
        """Model and training configuration of the learner of ``task`` (the preset, seeded)."""
        from icldistill.lab.training import preset

        cfg, tcfg = preset(self.preset_name, task)
        return cfg, dataclasses.replace(tcfg, seed=self.seed)

    def parts_dir(self, key: str) -> Path:
        """Where a phenomena section keeps its finished parts until it is stored."""
        return self.out / "sections" / PARTS_DIR / key

    def section(self, name: str, task: str, key: str) -> Section:
        """Compute one step's section."""
        from icldistill.lab.experiments import real

        if name in PHENOMENA_SECTIONS:
            if self.groups is None:
                from icldistill.lab.experiments.phenomena import resolve_models

                self.log(f"loading {', '.join(self.ph_models)} and a random-init twin of "
                         "each ...")
                self.groups = resolve_models(self.ph_models, n_controls=1, seed=self.seed,
                                             progress=self.progress)
            return run_phenomenon(name, self.ph_models, out_dir=self.out / key,
                                  quick=self.quick, seed=self.seed, progress=self.progress,
                                  under_test=self.groups, resume_dir=self.parts_dir(key))
        if name == "real":
            return real.run(self.model, out_dir=self.out / key, quick=self.quick,
                            seed=self.seed, progress=self.progress, dataset=self.dataset,
                            fewshot_results=self.fewshot_results,
                            fewshot_dir=real.fewshot_folder(self.out, self.seed))
        return run_experiment(name, self.learner(task), out_dir=self.out / key,
                              quick=self.quick, seed=self.seed, progress=self.progress)

    def learner(self, task: str) -> Any:
        """The trained in-context learner of ``task`` (trained or loaded on first use)."""
        from icldistill.lab.training import load_or_train

        if task not in self.trained:
            cfg, tcfg = self.configs(task)
            self.log(f"training (or loading) the {self.preset_name} {task} model ...")
            tr = self.trained[task] = load_or_train(cfg, tcfg, cache_dir=self.cache_dir,
                                                    progress=self.progress)
            line = (f"{task} model: {_settings_text(cfg)}; trained {tcfg.steps} steps in "
                    f"{tr.seconds:.0f} s; checkpoint {inline_code(str(tr.path))}")
            self.line_of[task] = line
            self._record_learner(task, line, Path(tr.path))
        return self.trained[task]

    def header(self, cmd: str, mode: str, t0: float, resumed: list[str],
               sections: Sequence[Section]) -> list[str]:
        """The header lines of the report."""
        v = _versions()
        lines = [
            f"Command: {inline_code(cmd)}",
            f"Mode: {mode} (training preset {self.preset_name}); seed {self.seed}; generated "
            f"{_dt.datetime.now().isoformat(timespec='seconds')}",
            "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items())
            + " (of the process that assembled this report; each section's own commit and "
            "versions, recorded when it was computed, are shown under it)",
            f"CPU threads: {os.cpu_count()} available, torch uses {_torch_threads()}",
            f"Total run time: {time.perf_counter() - t0:.0f} s"
            + (f" (sections read back from an earlier run: {', '.join(resumed)})"
               if resumed else ""),
        ]
        if resumed and sections:
            total = sum(float(s.seconds) for s in sections)
            lines.append(f"The sections' own run times add up to {total:.0f} s "
                         f"({total / 3600:.2f} h; training the learners not included)")
        return [*lines, *self._learner_lines(sections)]

    def _learners_file(self) -> Path:
        return self.out / "learners.json"

    def _record_learner(self, task: str, line: str, checkpoint: Path) -> None:
        """Keep ``task``'s learner line in ``<out>/learners.json`` so that a report whose
        sections were read back still says how its learners were trained."""
        from icldistill.artifacts.store import atomic_write, unit_lock

        path = self._learners_file()
        # read, update, write under one lock: two processes on one --out (one per learner)
        # would otherwise each drop the other's line
        with unit_lock(self.out, "learners"):
            try:
                known = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                known = {}
            if not isinstance(known, dict):
                known = {}
            known[task] = {"checkpoint": checkpoint.name, "line": line}
            data = (json.dumps(known, indent=1, sort_keys=True) + "\n").encode("utf-8")
            atomic_write(path, lambda fh: fh.write(data))

    def _learner_lines(self, sections: Sequence[Section]) -> list[str]:
        """One line per learner of the report: this run's, else the recorded one when its
        checkpoint is the one these settings train, else its settings alone."""
        from icldistill.lab.training import checkpoint_path

        if not sections:
            return list(self.line_of.values())
        try:
            known = json.loads(self._learners_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
        tasks = [t for t in ("regression", "classification")
                 if any(s.name.endswith(f"-{t}") for s in sections)]
        lines = []
        for task in tasks:
            if task in self.line_of:
                lines.append(self.line_of[task])
                continue
            entry = known.get(task) if isinstance(known, dict) else None
            cfg, tcfg = self.configs(task)
            name = checkpoint_path(cfg, tcfg, self.cache_dir).name
            if isinstance(entry, dict) and entry.get("checkpoint") == name:
                lines.append(str(entry.get("line", "")))
            else:
                lines.append(f"{task} model: {_settings_text(cfg)}; trained {tcfg.steps} steps "
                             f"in an earlier run (checkpoint {inline_code(name)})")
        return lines


def _settings_text(cfg: Any) -> str:
    """A learner's configuration as ``key=value, ...``."""
    return ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items())


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
