"""The dataset API in one module (kept for ``from icldistill.data.datasets import ...``).

The code lives in the modules of :mod:`icldistill.data`, one job each (see its docstring);
this module re-exports their public names, and :mod:`icldistill.data` exports the same.
"""

from icldistill.artifacts.fetch import IntegrityError, UnsafeArchiveError
from icldistill.data.dataset import (
    Dataset,
    DatasetSplit,
    DatasetSummary,
    TaskFormat,
    clean_text,
    summary_table,
)
from icldistill.data.fetch import MARKER_FILE, cached_dataset_path, fetch_dataset
from icldistill.data.load import list_datasets, load_dataset, load_split
from icldistill.data.parsers import READERS, parse_dataset
from icldistill.data.readers import (
    as_table,
    cell_text,
    close_spellings,
    comparable_text,
    is_missing,
    load_file,
    table_rows,
    warn_close_spellings,
    warn_test_copies,
)
from icldistill.data.rows import ParsedDataset, truncate_words
from icldistill.data.specs import DATASETS, DataFile, DatasetInfo, DatasetSpec, dataset_spec

__all__ = [
    "DATASETS",
    "MARKER_FILE",
    "READERS",
    "DataFile",
    "Dataset",
    "DatasetInfo",
    "DatasetSpec",
    "DatasetSplit",
    "DatasetSummary",
    "IntegrityError",
    "ParsedDataset",
    "TaskFormat",
    "UnsafeArchiveError",
    "as_table",
    "cached_dataset_path",
    "cell_text",
    "clean_text",
    "close_spellings",
    "comparable_text",
    "dataset_spec",
    "fetch_dataset",
    "is_missing",
    "list_datasets",
    "load_dataset",
    "load_file",
    "load_split",
    "parse_dataset",
    "summary_table",
    "table_rows",
    "truncate_words",
    "warn_close_spellings",
    "warn_test_copies",
]
