"""LangChain example selector backed by an icldistill demonstration selector.

:class:`ICLDistillExampleSelector` implements ``langchain_core``'s ``BaseExampleSelector``, so
any icldistill selector (``mmd-query``, ``knn``, ``mmd``, ``bm25``, ...) can feed a
``FewShotPromptTemplate`` or ``FewShotChatMessagePromptTemplate``::

    from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate
    from icldistill.adapters.langchain import ICLDistillExampleSelector

    examples = [{"review": "a delightful film", "sentiment": "positive"}, ...]
    selector = ICLDistillExampleSelector.from_examples(
        examples, selector="mmd-query", k=4, input_keys=["review"], label_key="sentiment")
    prompt = FewShotPromptTemplate(
        example_selector=selector,
        example_prompt=PromptTemplate.from_template("Review: {review}\\nSentiment: {sentiment}"),
        prefix="Classify the sentiment.", suffix="Review: {review}\\nSentiment:",
        input_variables=["review"])
    prompt.format(review="a charming story")

Texts follow LangChain's ``SemanticSimilarityExampleSelector``: the text of an example (and of
the prompt's input variables) is the values of ``input_keys`` sorted by key and joined by a
space; without ``input_keys``, every key except ``label_key``. Values that are not strings are
written out as a file's cells are (``1`` and ``1.0`` -> ``"1"``, ``True`` -> ``"true"``); a
missing value (``None``, NaN) or a list or dict is an error.

Needs ``langchain-core`` (``pip install icldistill[langchain]``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from langchain_core.example_selectors import BaseExampleSelector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("icldistill.adapters.langchain needs langchain-core; install it with "
                      "`pip install icldistill[langchain]`") from exc

from icldistill.adapters._core import DemoIndex, check_k, field_text
from icldistill.core.validation import InputError
from icldistill.encoders.representations import EmbeddingCache, Encoder
from icldistill.selection import DEFAULT_SELECTOR, Selector

__all__ = ["ICLDistillExampleSelector"]


def _check_keys(keys: Any, name: str) -> list[str] | None:
    if keys is None:
        return None
    if isinstance(keys, str):
        raise InputError(f"{name} must be a list of keys, not a single string (use [{keys!r}])")
    keys = list(keys)
    if not keys or not all(isinstance(key, str) for key in keys):
        raise InputError(f"{name} must be a non-empty list of strings, got {keys!r}")
    return keys


class ICLDistillExampleSelector(BaseExampleSelector):
    """Select few-shot examples for a LangChain prompt with an icldistill selector.

    Every example is encoded once (the first time a selection needs it); :meth:`add_example`
    appends to the pool and the selector is refitted lazily, at the next selection.

    Per-query selectors (``knn``, ``mmd-query``, ``mmd-local``, ``bm25``, ``mmr``, ``dpp``)
    choose for each call's input variables. Set-level selectors (``mmd``, ``mmd-balanced``,
    ``mmd-joint``, ``vote-k``, ``random``) choose one set for every prompt: the set that best
    matches ``targets`` (texts or input-variable dicts of the queries the prompt will see) or,
    without ``targets``, the pool itself (its most representative examples); it is computed
    once and reused until an example is added.

    Parameters
    ----------
    examples : sequence of dict, optional
        The initial examples (dicts of prompt variables, e.g. ``{"review": ..., "sentiment":
        ...}``). More can be added with :meth:`add_example`.
    selector : str or Selector
        An icldistill selector name (:data:`icldistill.selection.SELECTORS`; default
        :data:`~icldistill.selection.DEFAULT_SELECTOR`, ``"knn"``, the selector the paired
        benchmarks support) or a :class:`~icldistill.selection.Selector` instance, which
        is copied: this object fits and owns its copy, so one instance can configure several
        example selectors.
    encoder : str or Encoder
        Encoder spec (``"minilm"``, the default) or an
        :class:`~icldistill.encoders.representations.Encoder`
        instance; unused by selectors that need no embeddings (``bm25``, ``random``).
    k : int
        Number of examples per prompt.
    input_keys : list of str, optional
        Example keys whose values form the text to embed (and the input variables read at
        selection time). Default: every key except ``label_key``.
    label_key : str, optional
        Example key holding the label, for label-aware selectors (``mmd-balanced``,
        ``mmd-joint``, ``mmd-local``, ``random`` with ``balance=True``); required by them.
    example_keys : list of str, optional
        Keys kept in the returned examples (default: all).
    targets : sequence of str or dict, optional
        For set-level selectors: the queries the prompt is meant for (texts, or dicts of input
        variables); ignored by per-query selectors.
    selector_params : dict, optional
        Parameters of the selector (e.g. ``{"diversity": 0.5}``); :meth:`from_examples` takes
        them as keyword arguments.
    cache_dir : path or EmbeddingCache, optional
        Also cache the examples' encodings on disk
        (:func:`~icldistill.encoders.representations.encode_cached`); default: memory only.

    Raises
    ------
    icldistill.InputError
        Unknown selector name or parameter, bad encoder, a label-aware selector without
        ``label_key``, an example without one of the keys, a missing value (``None``, NaN) or
        one that is not text (a list, a dict...), a bad ``k``; at selection time, ``k``
        larger than the pool or missing input variables.

    Warns
    -----
    UserWarning
        An example whose text repeats an earlier one (both stay in the pool, as duplicated rows
        of a file do, and a selector may pick both); labels that differ only in spelling
        (``"pos"`` and ``"Pos"``, ``1`` and ``"1.0"``), which are classes of their own.

    Notes
    -----
    The examples are returned in the selector's prompt order: with the default
    ``order="similarity"`` the most relevant example comes **last**, next to the query
    (LangChain's ``SemanticSimilarityExampleSelector`` returns the most similar first); pass
    ``order="selection"`` in the selector parameters for the pick order.

    Adding and selecting are safe from several threads (LangChain's ``aadd_example`` and
    ``aselect_examples`` run in an executor): one lock keeps the examples and the selector's
    pool in step.
    """

    def __init__(self, examples: Sequence[Mapping[str, Any]] | None = None, *,
                 selector: str | Selector = DEFAULT_SELECTOR, encoder: str | Encoder = "minilm",
                 k: int = 4, input_keys: Sequence[str] | None = None,
                 label_key: str | None = None, example_keys: Sequence[str] | None = None,
                 targets: Sequence[str | Mapping[str, Any]] | None = None,
                 selector_params: Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike[str] | EmbeddingCache | None = None) -> None:
        self.k = check_k(k)
        self.input_keys = _check_keys(input_keys, "input_keys")
        self.example_keys = _check_keys(example_keys, "example_keys")
        if label_key is not None and not isinstance(label_key, str):
            raise InputError(f"label_key must be a string, got {type(label_key).__name__}")
        if self.input_keys and label_key in self.input_keys:
            raise InputError(f"label_key {label_key!r} is also one of input_keys; the label "
                             "must not be part of the text the selector compares")
        self.label_key = label_key
        if selector_params is not None and not isinstance(selector_params, Mapping):
            raise InputError("selector_params must be a dict of selector parameters")
        self._index = DemoIndex(selector, dict(selector_params or {}), encoder,
                                labelled=label_key is not None, cache_dir=cache_dir)
        self._examples: list[dict[str, Any]] = []
        if targets is not None:
            if isinstance(targets, (str, Mapping)):
                raise InputError("targets must be a list of texts or of input-variable dicts")
            self._index.set_targets([t if isinstance(t, str) else self._text(t, "target")
                                     for t in targets])
        if examples is not None:
            self.add_examples(examples)

    @classmethod
    def from_examples(cls, examples: Sequence[Mapping[str, Any]],
                      selector: str | Selector = DEFAULT_SELECTOR,
                      encoder: str | Encoder = "minilm",
                      k: int = 4, input_keys: Sequence[str] | None = None,
                      label_key: str | None = None, *,
                      example_keys: Sequence[str] | None = None,
                      targets: Sequence[str | Mapping[str, Any]] | None = None,
                      cache_dir: str | os.PathLike[str] | EmbeddingCache | None = None,
                      **params: Any) -> ICLDistillExampleSelector:
        """Build a selector over ``examples`` (LangChain's ``from_examples`` convention).

        Parameters
        ----------
        examples : sequence of dict
            The examples (dicts of prompt variables).
        selector : str or Selector
            icldistill selector name (default ``"knn"``,
            :data:`~icldistill.selection.DEFAULT_SELECTOR`) or an unfitted instance.
        encoder : str or Encoder
            Encoder spec (default ``"minilm"``) or instance.
        k : int
            Examples per prompt.
        input_keys : list of str, optional
            Keys forming the compared text (default: all but ``label_key``).
        label_key : str, optional
            Key of the label, for label-aware selectors.
        example_keys, targets, cache_dir
            As in the constructor.
        **params
            Selector parameters (e.g. ``diversity=0.5``, ``order="selection"``).

        Returns
        -------
        ICLDistillExampleSelector
        """
        return cls(examples, selector=selector, encoder=encoder, k=k, input_keys=input_keys,
                   label_key=label_key, example_keys=example_keys, targets=targets,
                   selector_params=params, cache_dir=cache_dir)

    # ------------------------------------------------------------------ properties
    @property
    def selector(self) -> Selector:
        """The icldistill selector (fitted at the first selection)."""
        return self._index.selector

    @property
    def encoder(self) -> Encoder:
        """The encoder of the examples and queries."""
        return self._index.encoder

    @property
    def examples(self) -> list[dict[str, Any]]:
        """Copies of the examples in the pool, in the order they were added."""
        with self._index.lock:
            return [dict(e) for e in self._examples]

    def __len__(self) -> int:
        return len(self._examples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(selector={self.selector!r}, encoder="
                f"{self.encoder.name!r}, k={self.k}, n_examples={len(self)})")

    # ------------------------------------------------------------------ texts
    def _text(self, values: Mapping[str, Any], what: str) -> str:
        """The compared text of an example or of the input variables."""
        if not isinstance(values, Mapping):
            raise InputError(f"{what} must be a dict of prompt variables, got "
                             f"{type(values).__name__}")
        if self.input_keys is not None:
            missing = [key for key in self.input_keys if key not in values]
            if missing:
                raise InputError(f"{what} has no key(s) {missing} (input_keys="
                                 f"{self.input_keys}); it has {sorted(values)}")
            keys = self.input_keys
        else:
            keys = [key for key in values if key != self.label_key]
            if not keys:
                raise InputError(f"{what} has no input variable besides the label "
                                 f"{self.label_key!r}")
        return " ".join(field_text(values[key], what, key) for key in sorted(keys))

    def _check_example(self, example: Mapping[str, Any], what: str) -> tuple[str, Any]:
        text = self._text(example, what)
        label = None
        if self.label_key is not None:
            if self.label_key not in example:
                raise InputError(f"{what} has no label key {self.label_key!r}; it has "
                                 f"{sorted(example)}")
            label = field_text(example[self.label_key], what, self.label_key, label=True)
        if self.example_keys is not None:
            missing = [key for key in self.example_keys if key not in example]
            if missing:
                raise InputError(f"{what} has no key(s) {missing} (example_keys="
                                 f"{self.example_keys})")
        return text, label

    # ------------------------------------------------------------------ BaseExampleSelector
    def add_example(self, example: dict[str, Any]) -> int:
        """Add one example to the pool; returns its index.

        It is encoded and the selector refitted at the next selection (not now).
        """
        return self.add_examples([example])[0]

    def add_examples(self, examples: Sequence[Mapping[str, Any]]) -> list[int]:
        """Add several examples at once (one encoding batch); returns their indices.

        All or nothing: an example that fails a check adds none of them.
        """
        if isinstance(examples, Mapping) or isinstance(examples, str):
            raise InputError("examples must be a list of dicts")
        examples = list(examples)
        # one lock over the checks, the pool and the example records: concurrent adds (and
        # selections) see both in the same order
        with self._index.lock:
            start = len(self._examples)
            names = [f"example {start + i}" for i in range(len(examples))]
            checked = [self._check_example(e, name)
                       for e, name in zip(examples, names, strict=True)]
            self._index.add([t for t, _ in checked],
                            [lab for _, lab in checked] if self.label_key is not None else None,
                            names=names)
            self._examples.extend(dict(e) for e in examples)
            return list(range(start, len(self._examples)))

    def select_indices(self, input_variables: Mapping[str, Any]) -> list[int]:
        """Pool indices of the examples :meth:`select_examples` returns, in prompt order."""
        text = self._text(input_variables, "input_variables")
        return [int(i) for i in self._index.select([text], self.k)[0]]

    def select_examples(self, input_variables: dict[str, Any]) -> list[dict[str, Any]]:
        """The ``k`` examples for these input variables, in prompt order.

        Parameters
        ----------
        input_variables : dict
            The prompt's input variables (``FewShotPromptTemplate`` passes its format
            arguments).

        Returns
        -------
        list of dict
            Copies of the chosen examples (restricted to ``example_keys`` if set); with the
            default order the most relevant one is last.
        """
        with self._index.lock:          # the indices and the records they point to together
            chosen = [self._examples[i] for i in self.select_indices(input_variables)]
        if self.example_keys is not None:
            return [{key: e[key] for key in self.example_keys} for e in chosen]
        return [dict(e) for e in chosen]
