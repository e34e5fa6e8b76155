"""Few-shot prompts in LangChain with demonstrations chosen by icldistill (offline).

Needs ``pip install icldistill[langchain]``; the MiniLM encoder's weights are fetched once and
cached (``icldistill models fetch minilm``). Run: ``python examples/langchain_selector.py``.
"""

from __future__ import annotations

from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate

from icldistill.adapters.langchain import ICLDistillExampleSelector

EXAMPLES = [
    {"review": "a delightful film with a charming cast", "sentiment": "positive"},
    {"review": "tedious, long and badly acted", "sentiment": "negative"},
    {"review": "the best movie of the year, moving and funny", "sentiment": "positive"},
    {"review": "a boring plot and a dull script", "sentiment": "negative"},
    {"review": "charming story, lovely music", "sentiment": "positive"},
    {"review": "i walked out after an hour, awful", "sentiment": "negative"},
    {"review": "great performances and a clever script", "sentiment": "positive"},
    {"review": "the jokes fall flat and the pacing drags", "sentiment": "negative"},
    {"review": "a warm and funny family film", "sentiment": "positive"},
    {"review": "predictable, loud and far too long", "sentiment": "negative"},
]


def prompt_with(selector: ICLDistillExampleSelector) -> FewShotPromptTemplate:
    return FewShotPromptTemplate(
        example_selector=selector,
        example_prompt=PromptTemplate.from_template("Review: {review}\nSentiment: {sentiment}"),
        prefix="Classify the sentiment of each review.",
        suffix="Review: {review}\nSentiment:",
        input_variables=["review"],
    )


def main() -> None:
    # The selectors here show the MMD view; on the project's benchmark grid none of them beats
    # kNN, and vote-k is the best single shared set (docs/howto/which-selector.md): pass
    # selector="knn" or "vote-k" for those.
    # per query: greedy MMD to the query (kNN with a redundancy penalty), MiniLM embeddings
    per_query = ICLDistillExampleSelector.from_examples(
        EXAMPLES, selector="mmd-query", encoder="minilm", k=3, input_keys=["review"],
        label_key="sentiment")
    prompt = prompt_with(per_query)
    for query in ("a charming and funny story", "dull and far too long"):
        print(prompt.format(review=query), end="\n\n" + "-" * 60 + "\n\n")

    # adding an example: encoded once, the selector is refitted at the next prompt
    per_query.add_example({"review": "funny, charming and warm", "sentiment": "positive"})
    print(prompt.format(review="a charming and funny story"), end="\n\n" + "=" * 60 + "\n\n")

    # one shared set: label-balanced greedy MMD to the queries the prompt is meant for
    shared = ICLDistillExampleSelector.from_examples(
        EXAMPLES, selector="mmd-balanced", k=4, input_keys=["review"], label_key="sentiment",
        targets=["a funny film", "a long and boring script", "lovely music"])
    print(prompt_with(shared).format(review="a charming and funny story"))


if __name__ == "__main__":
    main()
