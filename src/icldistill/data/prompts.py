"""Few-shot prompts with exact segment spans.

A :class:`Prompt` is an optional instruction (the *prefix*), a list of demonstrations
``(input, label)`` and a query, rendered through a :class:`Template`. Rendering records the
character span of every segment; tokenizing the *whole* text at once (as the model sees it) and
reading the tokenizer's offset mapping assigns every token to a segment — no guessing from
separately tokenized pieces.

Segment names: ``"prefix"`` (special tokens such as BOS and the instruction), ``"demo:0"``,
``"demo:1"``, ... (one per demonstration) and ``"query"``. :func:`group_segment` maps the
per-demonstration names to ``"demos"``.

A token is assigned to the segment that contains its first character. Tokens with an empty
character span (special tokens) belong to the prefix when they come first and to the segment
of the preceding token otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from icldistill.core.validation import InputError

__all__ = [
    "DEMOS",
    "PREFIX",
    "QUERY",
    "Demonstration",
    "Prompt",
    "RenderedPrompt",
    "Template",
    "TokenizedPrompt",
    "group_segment",
]

PREFIX = "prefix"
QUERY = "query"
DEMOS = "demos"


def demo_segment(i: int) -> str:
    """Segment name of demonstration ``i``."""
    return f"demo:{i}"


def _segment_name(name: object) -> bool:
    """Whether ``name`` is a fine segment name: ``"prefix"``, ``"query"`` or ``"demo:<i>"``."""
    if not isinstance(name, str):
        return False
    head, sep, num = name.partition(":")
    return name in (PREFIX, QUERY) or (head == "demo" and sep == ":" and num.isdigit())


def group_segment(name: str) -> str:
    """``"demo:i"`` -> ``"demos"``; other names unchanged."""
    return DEMOS if name.startswith("demo:") else name


@dataclass(frozen=True)
class Template:
    """How a prompt is written out.

    Attributes
    ----------
    demo : str
        Format of one demonstration, with ``{input}`` and ``{label}`` fields.
    query : str
        Format of the query, with an ``{input}`` field. The model predicts what follows it.
    instruction_suffix : str
        Appended to the instruction when there is one.
    """

    demo: str = "Input: {input}\nLabel: {label}\n\n"
    query: str = "Input: {input}\nLabel:"
    instruction_suffix: str = "\n\n"

    def __post_init__(self) -> None:
        for name, fmt, fields_ in (("demo", self.demo, ("input", "label")),
                                   ("query", self.query, ("input",))):
            for f in fields_:
                if "{" + f + "}" not in fmt:
                    raise InputError(f"template {name!r} must contain {{{f}}}: {fmt!r}")


@dataclass(frozen=True)
class Demonstration:
    """One input–label pair."""

    input: str
    label: str


@dataclass(frozen=True)
class RenderedPrompt:
    """Prompt text with the character span ``[start, end)`` of every segment."""

    text: str
    spans: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class TokenizedPrompt:
    """A tokenized prompt with one segment name per token.

    Attributes
    ----------
    input_ids : LongTensor ``[T]``
    segments : tuple of str, length ``T``
        Fine segment name of every token (``"prefix"``, ``"demo:i"``, ``"query"``).
    text : str
    """

    input_ids: torch.Tensor
    segments: tuple[str, ...]
    text: str

    def __post_init__(self) -> None:
        ids = self.input_ids
        if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.dtype != torch.long:
            raise InputError("TokenizedPrompt.input_ids must be a 1-D LongTensor [T], got "
                             + (f"{ids.dtype} of shape {tuple(ids.shape)}"
                                if isinstance(ids, torch.Tensor) else type(ids).__name__))
        if len(self.segments) != ids.shape[0]:
            raise InputError(f"TokenizedPrompt has {ids.shape[0]} tokens but "
                             f"{len(self.segments)} segment names (one per token)")
        bad = sorted({s for s in self.segments if not _segment_name(s)}, key=str)
        if bad:
            raise InputError(f"TokenizedPrompt: unknown segment name(s) {bad[:5]}; a token "
                             f"belongs to {PREFIX!r}, {QUERY!r} or a demonstration 'demo:<i>'")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def grouped_segments(self) -> tuple[str, ...]:
        """Segment of every token with the demonstrations grouped into ``"demos"``."""
        return tuple(group_segment(s) for s in self.segments)

    def positions(self, segment: str) -> torch.Tensor:
        """Token positions ``[k]`` of a segment (fine name, or ``"demos"`` for all demos)."""
        names = self.grouped_segments if segment == DEMOS else self.segments
        pos = [i for i, s in enumerate(names) if s == segment]
        return torch.tensor(pos, dtype=torch.long)

    @property
    def num_demonstrations(self) -> int:
        return len({s for s in self.segments if s.startswith("demo:")})


@dataclass(frozen=True)
class Prompt:
    """A few-shot prompt: instruction (optional), demonstrations, query.

    Parameters
    ----------
    demonstrations : sequence of ``(input, label)`` pairs or :class:`Demonstration`
    query : str
        The test input.
    instruction : str, optional
        Text before the demonstrations (part of the prefix segment).
    template : Template
    """

    demonstrations: tuple[Demonstration, ...]
    query: str
    instruction: str | None = None
    template: Template = field(default_factory=Template)

    def __init__(
        self,
        demonstrations: Iterable[Demonstration | Sequence[Any]],
        query: str,
        instruction: str | None = None,
        template: Template | None = None,
    ) -> None:
        demos = []
        for i, d in enumerate(demonstrations):
            if isinstance(d, Demonstration):
                demos.append(d)
            elif isinstance(d, dict):
                demos.append(Demonstration(str(d["input"]), str(d["label"])))
            else:
                try:
                    x, y = d
                except (TypeError, ValueError) as exc:
                    raise InputError(f"demonstration {i} must be an (input, label) pair") from exc
                demos.append(Demonstration(str(x), str(y)))
        if not isinstance(query, str):
            raise InputError(f"query must be a string, got {type(query).__name__}")
        object.__setattr__(self, "demonstrations", tuple(demos))
        object.__setattr__(self, "query", query)
        object.__setattr__(self, "instruction", instruction)
        object.__setattr__(self, "template", template or Template())

    def render(self) -> RenderedPrompt:
        """The prompt text and the character span of every segment."""
        parts: list[tuple[str, str]] = []
        if self.instruction:
            parts.append((PREFIX, self.instruction + self.template.instruction_suffix))
        for i, d in enumerate(self.demonstrations):
            parts.append((demo_segment(i), self.template.demo.format(input=d.input,
                                                                       label=d.label)))
        parts.append((QUERY, self.template.query.format(input=self.query)))
        text, spans, pos = "", [], 0
        for name, piece in parts:
            spans.append((name, pos, pos + len(piece)))
            text += piece
            pos += len(piece)
        return RenderedPrompt(text, tuple(spans))

    def tokenize(self, tokenizer: Any, *, add_special_tokens: bool = True) -> TokenizedPrompt:
        """Tokenize the whole prompt and assign every token to its segment by character offsets.

        Parameters
        ----------
        tokenizer
            A Hugging Face *fast* tokenizer (it must return an offset mapping).
        add_special_tokens : bool
            Let the tokenizer add BOS etc. (they join the prefix segment).
        """
        rendered = self.render()
        try:
            enc = tokenizer(rendered.text, return_offsets_mapping=True,
                            add_special_tokens=add_special_tokens)
        except NotImplementedError as exc:
            raise InputError("a fast tokenizer (with offset mapping) is required to locate "
                             "segments") from exc
        ids = list(enc["input_ids"])
        offsets = enc.get("offset_mapping")
        if offsets is None:
            raise InputError("the tokenizer returned no offset mapping; use a fast tokenizer")
        if not ids:
            raise InputError("the prompt tokenizes to no tokens")
        segs: list[str] = []
        for start, end in offsets:
            if end <= start:  # special token or empty span
                segs.append(segs[-1] if segs else PREFIX)
                continue
            segs.append(_segment_at(rendered.spans, start))
        if QUERY not in segs:
            raise InputError("no token of the query survived tokenization")
        return TokenizedPrompt(torch.tensor(ids, dtype=torch.long), tuple(segs), rendered.text)


def _segment_at(spans: Sequence[tuple[str, int, int]], char: int) -> str:
    for name, a, b in spans:
        if a <= char < b:
            return name
    return spans[-1][0]
