"""Shared pieces of the laboratory experiments: the section format every experiment returns
(tables, figures, checks, findings) and the SPEC §1–2 decomposition of an
:class:`~icldistill.models.icl_transformer.ICLTransformer` head at a query token.

Every experiment module exposes::

    run(trained, *, out_dir, quick=False, seed=0, progress=False) -> Section

(``trained`` a :class:`icldistill.lab.training.TrainedICL`), writes its figures (PNG) into
``out_dir`` and returns a :class:`Section` the report renders. Checks and findings are computed
from the measured numbers, never written by hand: a claim that does not hold is reported as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from icldistill.core.decomposition import HeadDecomposition, decompose_head
from icldistill.core.results import Result
from icldistill.models.icl_transformer import ICLTrace

__all__ = ["CLAIM", "IDENTITY", "Check", "Section", "Table", "checks_summary",
           "demo_key_values", "icl_head_decomposition", "query_token", "tally", "untestable"]


@dataclass(frozen=True)
class Table(Result):
    """A table of results: ``rows[i][j]`` is the value of ``columns[j]`` (numbers or str).

    A serializable result record, not a rendered table: cells keep their raw values (stored
    as they are in ``sections/<key>.json``). Rendering goes through the one report model:
    :func:`~icldistill.lab.experiments.report.write_lab_report` turns it into a
    :class:`icldistill.artifacts.document.Table`, formatting the cells with
    :func:`~icldistill.lab.experiments.report.format_cell`.
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.title!r}: row {row!r} has {len(row)} cells for "
                                 f"{len(self.columns)} columns")


#: :attr:`Check.kind` of a claim of the framework or of a phenomenon (counted in the report's
#: "N of M checks hold").
CLAIM = "claim"
#: :attr:`Check.kind` of a software identity that holds for any weights (a self-check of the
#: code, e.g. a decomposition reproducing the attention output): reported and counted
#: separately, never among the claims, since a random-init control satisfies it too.
IDENTITY = "identity"
#: Claim prefix of the identity checks stored before :attr:`Check.kind` existed (they are read
#: back as identities).
IDENTITY_PREFIX = "identity (any weights):"


@dataclass(frozen=True)
class Check(Result):
    """One claim checked against the numbers: ``holds`` is computed, ``detail`` says how.

    ``kind`` is :data:`CLAIM` (a claim of the framework or about what training taught; counted
    in the report's totals) or :data:`IDENTITY` (a software identity that holds for any
    weights; reported with its own count).

    ``testable`` says whether the design could have shown the claim at all: ``False`` when
    its units cannot give p-values small enough for the check to pass **whatever the data**
    (e.g. 3 demonstration sets: no two-sided sign-flip p below 0.25), so its "does not hold"
    is no evidence against the claim; ``True`` when the smallest p-values its units allow
    would pass; ``None`` when not assessed (identities, threshold checks, checks stored
    before this was recorded). A check that is not testable cannot hold."""

    claim: str
    holds: bool
    detail: str
    kind: str = CLAIM
    testable: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in (CLAIM, IDENTITY):
            raise ValueError(f"check {self.claim!r}: kind must be {CLAIM!r} or {IDENTITY!r}, "
                             f"got {self.kind!r}")
        if self.testable not in (None, True, False):
            raise ValueError(f"check {self.claim!r}: testable must be None, True or False, "
                             f"got {self.testable!r}")
        if self.testable is False and self.holds:
            raise ValueError(f"check {self.claim!r} holds but is marked not testable: its "
                             "units could not have shown it, so a floor is wrong")

    @property
    def is_identity(self) -> bool:
        return self.kind == IDENTITY


def tally(checks: Sequence[Check]) -> tuple[int, int, int, int]:
    """``(claims holding, claims, identities holding, identities)`` of ``checks``."""
    claims = [c for c in checks if not c.is_identity]
    ids = [c for c in checks if c.is_identity]
    return (sum(bool(c.holds) for c in claims), len(claims), sum(bool(c.holds) for c in ids),
            len(ids))


def untestable(checks: Sequence[Check]) -> int:
    """How many claim checks of ``checks`` are marked not testable at their design's size
    (:attr:`Check.testable` ``False``; none of them holds)."""
    return sum(c.testable is False for c in checks if not c.is_identity)


def checks_summary(checks: Sequence[Check]) -> str:
    """``"a of b checks hold"``, followed by ``" (u of the other c could not have held at
    this design's size, whatever the data)"`` when some claim checks are marked not testable
    (:attr:`Check.testable`; "none of the other c could have held" when all) and by
    ``"; c of d identities (any weights) hold"`` when there are identity checks (they are not
    counted among the checks)."""
    ok, n, ok_id, n_id = tally(checks)
    text = f"{ok} of {n} checks hold"
    u = untestable(checks)
    if u:
        text += (f" (none of the other {n - ok} could have held" if u == n - ok else
                 f" ({u} of the other {n - ok} could not have held")
        text += " at this design's size, whatever the data)"
    if n_id:
        text += f"; {ok_id} of {n_id} identit{'y' if n_id == 1 else 'ies'} (any weights) hold"
    return text


@dataclass(frozen=True)
class Section(Result):
    """What one experiment contributes to the report.

    A serializable result record (stored as ``sections/<key>.json`` so ``reproduce`` resumes),
    not a report block: :func:`icldistill.lab.experiments.report.write_lab_report` converts it
    to :class:`icldistill.artifacts.document.Section` blocks, and the one report model renders
    those.

    Attributes
    ----------
    name : str
        Short identifier (``"alignment"``, ``"bias"``, ...), also the CLI subcommand.
    title : str
    description : str
        What was done, in one paragraph (settings included).
    checks : list of Check
    findings : list of str
        Sentences computed from the numbers.
    tables : list of Table
    figures : list of str
        File names of the PNG figures, relative to the output folder.
    data : dict
        The raw numbers (JSON-able) behind the tables and figures.
    seconds : float
        Wall time of the experiment.
    provenance : dict or None
        What computed the section, recorded when it was computed (``reproduce`` adds it,
        :func:`icldistill.lab.experiments.reproduce.provenance`): ``commit`` (the source
        tree's git commit, ``"+dirty"`` appended when ``src`` has uncommitted changes;
        ``None`` outside a git checkout), ``torch``, ``transformers`` and ``computed`` (ISO
        time). ``None`` for a section stored before provenance was recorded. Recorded, not a
        cache key: a section is read back by its settings' fingerprint.
    """

    name: str
    title: str
    description: str
    checks: list[Check] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    provenance: dict[str, Any] | None = None


def _checked_position(trace: ICLTrace, b: int, layer: int, head: int, i: int) -> Any:
    if not 0 <= layer < len(trace.layers):
        raise IndexError(f"layer {layer} out of range for {len(trace.layers)} layers")
    la = trace.layers[layer]
    B, H, T, _ = la.keys.shape
    if not 0 <= b < B or not 0 <= head < H:
        raise IndexError(f"prompt {b} / head {head} out of range for [{B}, {H}]")
    if not 0 <= i < T // 2:
        raise IndexError(f"example {i} out of range for {T // 2} examples")
    return la


def icl_head_decomposition(trace: ICLTrace, b: int, layer: int, head: int, i: int,
                           dtype: torch.dtype = torch.float64) -> HeadDecomposition:
    """SPEC §1–2 decomposition of one head at query token ``i`` of prompt ``b``.

    The keys it attends to are the ``i`` demonstration tokens ``0 .. i-1`` (segment
    ``"demos"``) and its own token (segment ``"query"``), so ``N_t = i``. The result covers one
    query position (``T = 1``); ``i = 0`` has no demonstrations (``eta* = 0``, no ``W_0``).

    Parameters
    ----------
    trace : ICLTrace
    b, layer, head, i : int
        Prompt, layer, head and example index (0-based).
    dtype : torch.dtype
        Working precision (float64 default).
    """
    la = _checked_position(trace, b, layer, head, i)
    t = query_token(trace, i)
    cols = torch.cat([torch.arange(i), torch.tensor([t])])
    if not bool(la.mask[t].nonzero().flatten().equal(cols.to(la.mask.device))):
        raise ValueError("the trace's attention mask is not the query layout this helper expects")
    q = la.queries[b, head, t: t + 1].detach().to(dtype)
    k = la.keys[b, head, cols].detach().to(dtype)
    v = la.values[b, head, cols].detach().to(dtype)
    segments: Sequence[str] = ["demos"] * i + ["query"]
    return decompose_head(q, k, v, segments, scale=la.scale)


def query_token(trace: ICLTrace, i: int) -> int:
    """Token index of query ``i`` in the traced prompts (``N + i``)."""
    return trace.layers[0].keys.shape[2] // 2 + int(i)


def demo_key_values(trace: ICLTrace, b: int, layer: int, head: int, i: int,
                    dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``[i, d_head]`` and values ``[i, d_head]`` of the demonstration tokens that query
    ``i`` of prompt ``b`` sees at ``(layer, head)``."""
    la = _checked_position(trace, b, layer, head, i)
    return (la.keys[b, head, :i].detach().to(dtype), la.values[b, head, :i].detach().to(dtype))
