"""DSPy program whose demonstrations are chosen per call by icldistill (offline, stub LM).

Needs ``pip install icldistill[dspy]``; the MiniLM encoder's weights are fetched once and
cached (``icldistill models fetch minilm``). No network: the LM is DSPy's ``DummyLM``, which
answers from a script and records every prompt. Run: ``python examples/dspy_fewshot.py``.
"""

from __future__ import annotations

import dspy
from dspy.utils import DummyLM

from icldistill.adapters.dspy import ICLDistillFewShot

TRAIN = [
    ("a delightful film with a charming cast", "positive"),
    ("tedious, long and badly acted", "negative"),
    ("the best movie of the year, moving and funny", "positive"),
    ("a boring plot and a dull script", "negative"),
    ("charming story, lovely music", "positive"),
    ("i walked out after an hour, awful", "negative"),
    ("great performances and a clever script", "positive"),
    ("the jokes fall flat and the pacing drags", "negative"),
    ("a warm and funny family film", "positive"),
    ("predictable, loud and far too long", "negative"),
]
QUERIES = ["a charming and funny story", "dull and far too long"]


def demos_in_prompt(lm: DummyLM) -> list[str]:
    """The demonstrations' reviews in the last prompt the LM received."""
    users = [m["content"] for m in lm.history[-1]["messages"] if m["role"] == "user"][:-1]
    return [u.split("[[ ## review ## ]]\n", 1)[1].strip() for u in users]


def main() -> None:
    trainset = [dspy.Example(review=r, sentiment=s).with_inputs("review") for r, s in TRAIN]
    lm = DummyLM([{"sentiment": "positive"}, {"sentiment": "negative"}] * 4)
    dspy.configure(lm=lm)

    # The selectors here show the MMD view; on the project's benchmark grid none of them beats
    # kNN, and vote-k is the best single shared set (docs/howto/which-selector.md): pass
    # selector="knn" or "vote-k" for those.
    # per query: every call picks its own 3 demonstrations (greedy MMD to the query)
    tp = ICLDistillFewShot(k=3, selector="mmd-query", encoder="minilm")
    program = tp.compile(dspy.Predict("review -> sentiment"), trainset=trainset)
    for query in QUERIES:
        pred = program(review=query)
        print(f"{query!r} -> {pred.sentiment}; demonstrations: {demos_in_prompt(lm)}")

    # set-level: one label-balanced set, chosen at compile time against the expected queries
    tp = ICLDistillFewShot(k=4, selector="mmd-balanced", encoder="minilm",
                           label_key="sentiment", targets=QUERIES)
    program = tp.compile(dspy.Predict("review -> sentiment"), trainset=trainset)
    print("shared demos:", [d.review for d in program.predictors()[0].demos])
    program(review=QUERIES[0])
    print("last prompt:")
    dspy.inspect_history(n=1)


if __name__ == "__main__":
    main()
