"""Where a grid stands: the state of each unit in a results folder and the scoring time left.

:meth:`icldistill.evaluation.harness.Harness.status` reads a folder's ``results.jsonl``,
``partial/`` and ``locks/`` and returns a :class:`GridStatus`, one :class:`UnitStatus` per
unit. The time left is estimated from measured seconds per test item
(:class:`ScoringRates`), as medians: a unit's clock runs on while its process is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from icldistill.artifacts.store import iter_records
from icldistill.core.results import Result
from icldistill.core.validation import InputError
from icldistill.selection import SELECTORS, selector_key

if TYPE_CHECKING:
    from icldistill.evaluation.harness import UnitSpec

__all__ = ["UNIT_STATES", "GridStatus", "UnitStatus"]


#: The states of a unit in :class:`UnitStatus`, in the order reports list them.
UNIT_STATES = ("done", "running", "partial", "todo")


@dataclass(frozen=True)
class UnitStatus(Result):
    """Where one unit of a grid stands
    (:meth:`~icldistill.evaluation.harness.Harness.status`).

    Attributes
    ----------
    spec : UnitSpec
    key : str
    state : str
        ``"done"`` (its result line is recorded), ``"running"`` (another process holds its
        lock now), ``"partial"`` (some test items are scored in ``partial/``, no process is on
        it) or ``"todo"``.
    n : int
        Test items of the unit.
    n_scored : int
        Test items scored so far (``n`` when done).
    seconds_left : float or None
        Estimated scoring seconds left on one process (0 when done); ``None`` when no unit of
        the same model and task has been timed yet. See
        :meth:`~icldistill.evaluation.harness.Harness.status`.
    """

    spec: UnitSpec
    key: str
    state: str
    n: int
    n_scored: int
    seconds_left: float | None


@dataclass(frozen=True)
class GridStatus(Result):
    """Where a grid stands: one :class:`UnitStatus` per unit
    (:meth:`~icldistill.evaluation.harness.Harness.status`).

    Attributes
    ----------
    out_dir : str
        The results folder.
    units : tuple of UnitStatus
        In the order of the units asked about.
    """

    out_dir: str
    units: tuple[UnitStatus, ...]

    def count(self, state: str) -> int:
        """Units in ``state`` (one of ``"done"``, ``"running"``, ``"partial"``, ``"todo"``)."""
        if state not in UNIT_STATES:
            raise InputError(f"unknown unit state {state!r} (choose one of "
                             f"{', '.join(UNIT_STATES)})")
        return sum(u.state == state for u in self.units)

    @property
    def seconds_left(self) -> float:
        """Estimated scoring seconds left on one process, over the units with an estimate."""
        return float(sum(u.seconds_left or 0.0 for u in self.units))

    @property
    def n_unestimated(self) -> int:
        """Unfinished units without an estimate (nothing comparable timed yet)."""
        return sum(u.seconds_left is None for u in self.units)

    def wall_seconds(self, workers: int = 1) -> float:
        """Estimated scoring seconds left on ``workers`` processes, over the units with an
        estimate: the total divided among them, but never less than the longest single unit
        left (one unit runs in one process).

        Parameters
        ----------
        workers : int
            Processes working on the grid at once (a positive integer).

        Returns
        -------
        float
            ``max(seconds_left / workers, longest unit's seconds left)``; units without an
            estimate are not counted (:attr:`n_unestimated` says how many).
        """
        _check_workers(workers)
        longest = max((u.seconds_left or 0.0 for u in self.units), default=0.0)
        return max(self.seconds_left / workers, longest)

    def summary(self, workers: int = 1) -> str:
        """A plain-text table: units by state, test items left and estimated CPU-hours left
        per (model, k), with a total line; with ``workers`` > 1, the wall time on that many
        processes (:meth:`wall_seconds`).

        A row whose unfinished units all lack an estimate shows ``?`` hours (not ``0.0``);
        units without an estimate are counted beside the hours of each row and on the wall
        line, never silently left out.
        """
        _check_workers(workers)
        groups: dict[tuple[str, int], list[UnitStatus]] = {}
        for u in self.units:
            groups.setdefault((u.spec.model_label, u.spec.k), []).append(u)
        head = (f"{'model':24s} {'k':>3s} {'done':>5s} {'running':>7s} {'partial':>7s} "
                f"{'to do':>5s} {'items left':>10s} {'CPU-h left':>10s}")
        lines = [f"grid in {self.out_dir}: {len(self.units)} units: "
                 + ", ".join(f"{self.count(s)} {'to do' if s == 'todo' else s}"
                             for s in UNIT_STATES), head]

        def row(name: str, k: str, us: list[UnitStatus]) -> str:
            left = sum(u.n - u.n_scored for u in us)
            sec = sum(u.seconds_left or 0.0 for u in us)
            unknown = sum(u.seconds_left is None for u in us)
            estimated = any(u.seconds_left is not None and u.state != "done" for u in us)
            hours = f"{'?':>10s}" if unknown and not estimated else f"{sec / 3600:10.1f}"
            est = hours + (f" (+{unknown} units not estimated)" if unknown else "")
            return (f"{name:24s} {k:>3s} "
                    + " ".join(f"{sum(u.state == s for u in us):>{w}d}"
                               for s, w in zip(UNIT_STATES, (5, 7, 7, 5), strict=True))
                    + f" {left:>10d} {est}")

        lines += [row(m, str(k), us) for (m, k), us in groups.items()]
        lines.append(row("total", "", list(self.units)))
        lines.append("CPU-h: scoring time on one process, from the measured seconds per test "
                     "item of timed units of the same task (other k scaled by k+1, another "
                     "model by the two models' speed ratio); selection time is not counted.")
        if workers > 1:
            unknown = self.n_unestimated
            lines.append(f"with {workers} processes: about {self.wall_seconds(workers) / 3600:.1f}"
                         " h of wall time (the total divided among them, at least the longest "
                         "unit left)"
                         + (f", not counting {unknown} unit{'' if unknown == 1 else 's'} "
                            "not estimated" if unknown else ""))
        return "\n".join(lines)


def _check_workers(workers: object) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")


def is_shared(spec: UnitSpec) -> bool:
    """Whether the unit's selector gives every query one shared prompt."""
    return bool(SELECTORS[selector_key(spec.selector)].shared)


class ScoringRates:
    """Measured scoring seconds per test item by (model label, task, k, shared), and the
    estimate of :meth:`~icldistill.evaluation.harness.Harness.status` for a unit from them.

    A group's rate is the median of its units' rates: a unit's clock runs on while its
    process is paused (``SIGSTOP``) or starved, which inflates a mean many times over.
    """

    def __init__(self) -> None:
        self.timed: dict[tuple[str, str, int, bool], list[float]] = {}   # -> unit rates

    def add(self, spec: UnitSpec, shared: bool, seconds: float, items: int) -> None:
        """Record a unit that scored ``items`` test items in ``seconds``."""
        if seconds > 0 and items > 0:
            key = (spec.model_label, spec.task, spec.k, shared)
            self.timed.setdefault(key, []).append(seconds / items)

    def _rate(self, group: tuple[str, str, int, bool]) -> float:
        return float(np.median(self.timed[group]))

    def same_model(self, model: str, u: UnitSpec, shared: bool) -> float | None:
        """The rate of ``model`` on the unit's task and kind: at its ``k``, else at the
        nearest other ``k`` (per-query prompts scaled by ``(k + 1) / (k' + 1)``)."""
        if (model, u.task, u.k, shared) in self.timed:
            return self._rate((model, u.task, u.k, shared))
        other = [k for (m, t, k, s) in self.timed if (m, t, s) == (model, u.task, shared)]
        if not other:
            return None
        k2 = min(other, key=lambda k: (abs(k - u.k), k))
        scale = 1.0 if shared else (u.k + 1) / (k2 + 1)
        return self._rate((model, u.task, k2, shared)) * scale

    def speed_ratio(self, model: str, other: str, shared: bool) -> float | None:
        """Median over the (task, k) timed on both models of the ratio of their rates, from
        prompts of the same kind where there are any."""
        for kinds in ((shared,), (shared, not shared)):
            r = [self._rate((m, t, k, s)) / self._rate((other, t, k, s))
                 for (m, t, k, s) in self.timed
                 if m == model and s in kinds and (other, t, k, s) in self.timed]
            if r:
                return float(np.median(r))
        return None

    def of(self, u: UnitSpec) -> float | None:
        """Seconds per test item for ``u``: its model's, else another model's times the
        speed ratio; ``None`` when nothing comparable is timed."""
        shared = is_shared(u)
        mine = self.same_model(u.model_label, u, shared)
        if mine is not None:
            return mine
        for other in sorted({m for (m, _, _, _) in self.timed} - {u.model_label}):
            theirs = self.same_model(other, u, shared)
            ratio = self.speed_ratio(u.model_label, other, shared)
            if theirs is not None and ratio is not None:
                return theirs * ratio
        return None


def partial_progress(partial: Path) -> tuple[int, float | None]:
    """Test items scored in an unfinished unit's partial file, and the median over its timed
    batches of seconds per item (``(0, None)`` when there is none; ``None`` when no batch is
    timed)."""
    items: set[int] = set()
    rates = []
    if partial.is_file():
        for rec in iter_records(partial):
            batch = [int(i) for i in rec.get("i", ())]
            items.update(batch)
            seconds = float(rec.get("seconds", 0.0))
            if batch and seconds > 0:
                rates.append(seconds / len(batch))
    return len(items), (float(np.median(rates)) if rates else None)
