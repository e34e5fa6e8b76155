"""DSPy teleprompter that picks each call's demonstrations with an icldistill selector.

:class:`ICLDistillFewShot` is modelled on DSPy's ``KNNFewShot``: ``compile(student,
trainset=...)`` returns a copy of the student whose every call first chooses ``k``
demonstrations from the trainset for its inputs and then runs the student with them::

    import dspy
    from icldistill.adapters.dspy import ICLDistillFewShot

    trainset = [dspy.Example(review="a delightful film", sentiment="positive")
                .with_inputs("review"), ...]
    tp = ICLDistillFewShot(k=4, selector="mmd-query", encoder="minilm")
    program = tp.compile(dspy.Predict("review -> sentiment"), trainset=trainset)
    program(review="a charming story")

Per-query selectors (``knn``, ``mmd-query``, ``mmd-local``, ``bm25``, ``mmr``, ``dpp``) choose
for every call. Set-level selectors (``mmd``, ``mmd-balanced``, ``mmd-joint``, ``vote-k``,
``random``) choose **one** set per compiled program, at compile time, against ``targets`` (or
the ``valset``'s inputs, or the trainset's own inputs); the result is an ordinary program with
fixed demos (as ``LabeledFewShot`` makes), which DSPy can save and load.

Texts: one input field gives its value; several give ``"key: value | key: value"`` (the
format of DSPy's ``KNN``), in ``input_keys`` order. Values that are not strings are written out
as a file's cells are (``1`` and ``1.0`` -> ``"1"``); a missing value (``None``, NaN) or a list
or dict is an error.

Needs DSPy (``pip install icldistill[dspy]``).
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping, Sequence
from typing import Any

try:
    import dspy
    from dspy.teleprompt import BootstrapFewShot, LabeledFewShot
    from dspy.teleprompt.teleprompt import Teleprompter
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("icldistill.adapters.dspy needs DSPy; install it with "
                      "`pip install icldistill[dspy]`") from exc

from icldistill.adapters._core import (
    DemoIndex,
    check_k,
    field_text,
    resolve_encoder,
    resolve_selector,
)
from icldistill.core.validation import InputError
from icldistill.encoders.representations import EmbeddingCache, Encoder
from icldistill.selection import DEFAULT_SELECTOR, Selector

__all__ = ["ICLDistillFewShot"]


def _as_examples(items: Any, name: str) -> list[dspy.Example]:
    if isinstance(items, (str, Mapping, dspy.Example)):
        raise InputError(f"{name} must be a list of dspy.Example")
    try:
        items = list(items)
    except TypeError:
        raise InputError(f"{name} must be a list of dspy.Example, got "
                         f"{type(items).__name__}") from None
    out = []
    for i, e in enumerate(items):
        if isinstance(e, dspy.Example):
            out.append(e)
        elif isinstance(e, Mapping):
            out.append(dspy.Example(**e))
        else:
            raise InputError(f"{name}[{i}] must be a dspy.Example or a dict, got "
                             f"{type(e).__name__}")
    return out


def _inferred_input_keys(trainset: list[dspy.Example]) -> list[str]:
    keys: set[str] | None = None
    for i, e in enumerate(trainset):
        own = getattr(e, "_input_keys", None)
        if not own:
            raise InputError(f"trainset[{i}] has no input fields: build the examples with "
                             "dspy.Example(...).with_inputs('question'), or pass input_keys=")
        if keys is None:
            keys = set(own)
        elif set(own) != keys:
            raise InputError(f"trainset[{i}] has input fields {sorted(own)}, trainset[0] has "
                             f"{sorted(keys)}; pass input_keys=")
    assert keys is not None
    return sorted(keys)


class ICLDistillFewShot(Teleprompter):
    """Few-shot demonstrations chosen per query by an icldistill selector (a la ``KNNFewShot``).

    Parameters
    ----------
    k : int
        Demonstrations per call.
    trainset : list of dspy.Example, optional
        The pool of demonstrations (``KNNFewShot`` takes it here; :meth:`compile` takes it too,
        and its ``trainset`` wins).
    selector : str or Selector
        icldistill selector name (default :data:`~icldistill.selection.DEFAULT_SELECTOR`,
        ``"knn"``, the selector the paired benchmarks support) or an unfitted
        :class:`~icldistill.selection.Selector` (used for every :meth:`compile`).
    encoder : str or Encoder
        Encoder spec (default ``"minilm"``) or an
        :class:`~icldistill.encoders.representations.Encoder`
        instance; unused by ``bm25`` and ``random``.
    input_keys : list of str, optional
        Example fields forming the compared text, read from the trainset examples and from each
        call's keyword arguments. Default: the trainset's input fields
        (``Example.with_inputs``), sorted.
    label_key : str, optional
        Example field holding the label, for label-aware selectors (``mmd-balanced``,
        ``mmd-joint``, ``mmd-local``); required by them.
    targets : list of dspy.Example, dict or str, optional
        For set-level selectors: the queries the program is meant for (their ``input_keys``
        are read). Default: the ``valset`` given to :meth:`compile`, else the trainset.
    bootstrap : dict, optional
        ``None`` (default): the chosen examples become the predictors' demos as they are
        (``LabeledFewShot``, selection order kept). A dict: run ``BootstrapFewShot(**bootstrap)``
        on the chosen examples, as ``KNNFewShot`` does (this calls the teacher LM).
    cache_dir : path or EmbeddingCache, optional
        Also cache the trainset's encodings on disk; default memory only.
    **params
        Selector parameters (e.g. ``diversity=0.5``, ``order="selection"``).

    Raises
    ------
    icldistill.InputError
        Unknown selector or parameter, bad encoder or ``k``, a label-aware selector without
        ``label_key``, ``targets`` that is not a list; at compile time an empty or inconsistent
        trainset, ``k`` larger than the trainset, examples without the input or label fields,
        a missing value (``None``, NaN) or one that is not text, two examples with the same
        text and different labels; at call time a call without one of the input fields.

    Warns
    -----
    UserWarning
        At compile time: trainset examples whose text repeats an earlier one (both stay in the
        pool, as duplicated rows of a file do, and a selector may pick both); labels that
        differ only in spelling (``"pos"`` and ``"Pos"``).

    Notes
    -----
    The compiled program of a per-query selector replaces the student copy's ``forward`` (and
    ``aforward``), like ``KNNFewShot``; each call runs a fresh copy of the student, so calls
    from several threads do not share demos. Saving such a program saves no demos (they are
    chosen per call).
    """

    def __init__(self, k: int = 4, trainset: Sequence[Any] | None = None, *,
                 selector: str | Selector = DEFAULT_SELECTOR, encoder: str | Encoder = "minilm",
                 input_keys: Sequence[str] | None = None, label_key: str | None = None,
                 targets: Sequence[Any] | None = None,
                 bootstrap: Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike[str] | EmbeddingCache | None = None,
                 **params: Any) -> None:
        super().__init__()
        self.k = check_k(k)
        self.trainset = None if trainset is None else _as_examples(trainset, "trainset")
        if isinstance(selector, Selector) and params:
            raise InputError("selector parameters given with a Selector instance")
        # validate the selector name, its parameters and the encoder now, not at compile time
        self.selector = selector if isinstance(selector, Selector) else \
            resolve_selector(selector, params).name
        self.params = dict(params)
        self.encoder = resolve_encoder(encoder)
        if input_keys is not None:
            if isinstance(input_keys, str):
                raise InputError(f"input_keys must be a list, not a string (use "
                                 f"[{input_keys!r}])")
            input_keys = list(input_keys)
            if not input_keys or not all(isinstance(x, str) for x in input_keys):
                raise InputError(f"input_keys must be a non-empty list of strings, got "
                                 f"{input_keys!r}")
        self.input_keys = input_keys
        if label_key is not None and not isinstance(label_key, str):
            raise InputError(f"label_key must be a string, got {type(label_key).__name__}")
        self.label_key = label_key
        self.targets = None if targets is None else self._check_targets(targets)
        if bootstrap is not None and not isinstance(bootstrap, Mapping):
            raise InputError("bootstrap must be a dict of BootstrapFewShot arguments or None")
        self.bootstrap = None if bootstrap is None else dict(bootstrap)
        self.cache_dir = cache_dir
        DemoIndex(self._selector(), {}, self.encoder, labelled=label_key is not None)

    def _selector(self) -> Selector:
        """A fresh selector for one pool (a copy of the given instance)."""
        return resolve_selector(self.selector, self.params)

    @staticmethod
    def _check_targets(targets: Any, name: str = "targets") -> list[Any]:
        """``targets`` as a list of texts, dicts or examples (not one of them on its own)."""
        if isinstance(targets, (str, Mapping, dspy.Example)):
            raise InputError(f"{name} must be a list of the queries (texts, dicts or "
                             f"dspy.Example), not a single {type(targets).__name__}; wrap it "
                             "in a list")
        try:
            targets = list(targets)
        except TypeError:
            raise InputError(f"{name} must be a list of texts, dicts or dspy.Example, got "
                             f"{type(targets).__name__}") from None
        for i, t in enumerate(targets):
            if not isinstance(t, (str, Mapping, dspy.Example)):
                raise InputError(f"{name}[{i}] must be a text, a dict or a dspy.Example, got "
                                 f"{type(t).__name__}")
        return targets

    # ------------------------------------------------------------------ texts
    @staticmethod
    def _join(values: Mapping[str, Any], keys: list[str], what: str) -> str:
        missing = [key for key in keys if key not in values]
        if missing:
            raise InputError(f"{what} has no field(s) {missing} (input_keys={keys})")
        texts = [field_text(values[key], what, key, noun="field") for key in keys]
        if len(keys) == 1:
            return texts[0]
        return " | ".join(f"{key}: {text}" for key, text in zip(keys, texts, strict=True))

    def _target_text(self, t: Any, keys: list[str], i: int) -> str:
        if isinstance(t, str):
            return t
        if isinstance(t, (dspy.Example, Mapping)):
            return self._join(t, keys, f"targets[{i}]")
        raise InputError(f"targets[{i}] must be a text, a dict or a dspy.Example, got "
                         f"{type(t).__name__}")

    # ------------------------------------------------------------------ building the index
    def build_index(self, trainset: Sequence[Any] | None = None,
                    valset: Sequence[Any] | None = None) -> tuple[DemoIndex, list[str],
                                                                   list[dspy.Example]]:
        """The fitted-on-demand pool of ``trainset`` (default: the constructor's).

        Returns the :class:`~icldistill.adapters._core.DemoIndex`, the input keys used and the
        examples (rows of the index).
        """
        if trainset is None:
            trainset = self.trainset
        else:
            trainset = _as_examples(trainset, "trainset")
        if not trainset:
            raise InputError("ICLDistillFewShot needs a non-empty trainset (compile(student, "
                             "trainset=...))")
        keys = self.input_keys or _inferred_input_keys(trainset)
        if self.label_key is not None and self.label_key in keys:
            raise InputError(f"label_key {self.label_key!r} is one of the input fields {keys}")
        texts = [self._join(e, keys, f"trainset[{i}]") for i, e in enumerate(trainset)]
        labels = None
        if self.label_key is not None:
            bad = [i for i, e in enumerate(trainset) if self.label_key not in e]
            if bad:
                raise InputError(f"trainset[{bad[0]}] has no label field {self.label_key!r}")
            labels = [field_text(e[self.label_key], f"trainset[{i}]", self.label_key,
                                 noun="field", label=True) for i, e in enumerate(trainset)]
        index = DemoIndex(self._selector(), {}, self.encoder,
                          labelled=self.label_key is not None, cache_dir=self.cache_dir,
                          what="label_key=")
        index.add(texts, labels, names=[f"trainset[{i}]" for i in range(len(trainset))])
        targets = self.targets if self.targets is not None else valset
        if targets is not None and index.shared:
            targets = self._check_targets(targets, "targets" if self.targets is not None
                                          else "valset")
            index.set_targets([self._target_text(t, keys, i) for i, t in enumerate(targets)])
        return index, keys, trainset

    def _program(self, student: Any, teacher: Any, demos: list[dspy.Example]) -> Any:
        if self.bootstrap is None:
            return LabeledFewShot(k=len(demos)).compile(student, trainset=demos, sample=False)
        return BootstrapFewShot(**self.bootstrap).compile(student, teacher=teacher,
                                                          trainset=demos)

    # ------------------------------------------------------------------ Teleprompter
    def compile(self, student: Any, *, trainset: Sequence[Any] | None = None,
                teacher: Any = None, valset: Sequence[Any] | None = None) -> Any:
        """Return a program that runs ``student`` with selector-chosen demonstrations.

        Parameters
        ----------
        student : dspy.Module
            The program (its predictors get the demonstrations).
        trainset : list of dspy.Example, optional
            The demonstration pool (default: the constructor's ``trainset``).
        teacher : dspy.Module, optional
            Teacher for ``bootstrap`` (as in ``KNNFewShot``).
        valset : list of dspy.Example, optional
            For set-level selectors without ``targets``: the queries to match (inputs only).

        Returns
        -------
        dspy.Module
            Per-query selectors: a copy of ``student`` whose ``forward`` picks ``k`` demos for
            each call's inputs. Set-level selectors: a copy of ``student`` with one fixed set of
            ``k`` demos on every predictor.
        """
        index, keys, pool = self.build_index(trainset, valset)
        k = index._check_k(self.k)
        if index.shared:
            return self._program(student, teacher, [pool[i] for i in index.shared_set(k)])

        def demos_for(kwargs: Mapping[str, Any]) -> list[dspy.Example]:
            text = self._join(kwargs, keys, "the call's inputs")
            return [pool[i] for i in index.select([text], k)[0]]

        def forward_pass(_: Any, *args: Any, **kwargs: Any) -> Any:
            if args:
                raise InputError("call the compiled program with keyword arguments (its "
                                 f"input fields {keys})")
            return self._program(student, teacher, demos_for(kwargs))(**kwargs)

        async def aforward_pass(_: Any, *args: Any, **kwargs: Any) -> Any:
            if args:
                raise InputError("call the compiled program with keyword arguments (its "
                                 f"input fields {keys})")
            return await self._program(student, teacher, demos_for(kwargs)).acall(**kwargs)

        student_copy = student.reset_copy()
        student_copy.forward = types.MethodType(forward_pass, student_copy)
        student_copy.aforward = types.MethodType(aforward_pass, student_copy)
        return student_copy
