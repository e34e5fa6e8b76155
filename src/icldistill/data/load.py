"""Loading registry datasets: :func:`load_dataset`, :func:`load_split` (official or stratified
splits) and :func:`list_datasets`; parsed datasets are kept per process."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from icldistill.artifacts.fetch import cache_root
from icldistill.data.dataset import Dataset, DatasetSplit, _check_seed, _n_test, _permutation
from icldistill.data.fetch import MARKER_FILE, _is_complete, fetch_dataset
from icldistill.data.parsers import parse_dataset
from icldistill.data.rows import ParsedDataset
from icldistill.data.specs import DATASETS, DatasetInfo, DatasetSpec, dataset_spec

# ---- loading ---------------------------------------------------------------------------------

__all__ = [
    "list_datasets",
    "load_dataset",
    "load_split",
]


# Parsed registry datasets of this process, keyed by spec, cache folder and marker time: loading
# the same dataset again (load_dataset then load_split, several seeds...) does not re-parse.
_PARSED: dict[tuple[DatasetSpec, str, int], ParsedDataset] = {}
_PARSED_MAX = 6


def _load_registry(spec: DatasetSpec, cache_dir: str | os.PathLike[str] | None,
                   progress: bool) -> ParsedDataset:
    folder = fetch_dataset(spec.key, cache_dir, progress)
    key = (spec, str(folder.resolve()), (folder / MARKER_FILE).stat().st_mtime_ns)
    built = _PARSED.get(key)
    if built is None:
        built = parse_dataset(spec, folder)
        while len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = built
    # a fresh Dataset (own arrays, fields dict and format) around the shared immutable data, so
    # that mutating one result's dicts cannot leak into later loads or the registry spec
    ds = built.dataset
    return ParsedDataset(replace(ds, format=replace(ds.format)), built.splits, built.dropped_empty)


def load_dataset(name: str, *, cache_dir: str | os.PathLike[str] | None = None,
                 progress: bool = True) -> Dataset:
    """Load a whole registry dataset (fetched and cached on first use).

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``amazon``, ``imdb``, ``yelp``, ``rt-sentiment``,
        ``rt-subjectivity``, ``r8``, ``r52``, ``20ng``, ``boolq``; multiple choice:
        ``openbookqa``, ``commonsenseqa``, ``siqa``, ``piqa``).
    cache_dir : path, optional
        Cache root (default :func:`~icldistill.models.registry.cache_root`).
    progress : bool
        Report fetching on stderr.

    Returns
    -------
    Dataset
        Cleaned examples in file order (for an official split: train rows, then test rows).
    """
    return _load_registry(dataset_spec(name), cache_dir, progress).dataset


def load_split(name: str, *, test_size: int | float | None = None, seed: int = 0,
               cache_dir: str | os.PathLike[str] | None = None,
               progress: bool = True) -> DatasetSplit:
    """Load a registry dataset as a train (demonstration pool) / test (evaluated) split.

    Datasets with an official split (``r8``, ``r52``, ``20ng``, ``boolq``) use it; ``test_size``
    then optionally subsamples the official test set (stratified): an int is a count (at most the
    test set's size), a float a fraction of it. Other datasets get a deterministic stratified split
    (:meth:`Dataset.split`) with ``test_size`` test examples (default: the dataset's
    :attr:`DatasetSpec.test_size`, 300 or 500). The same ``seed`` gives the same split, and the
    same order of both parts, everywhere.
    """
    spec = dataset_spec(name)
    seed = _check_seed(seed)
    built = _load_registry(spec, cache_dir, progress)
    ds = built.dataset
    if not spec.official_split:
        return ds.split(spec.test_size if test_size is None else test_size, seed=seed)
    bitgen = np.random.Generator(np.random.PCG64(seed)).bit_generator
    train_idx = np.flatnonzero(built.splits == "train")
    test_idx = np.flatnonzero(built.splits == "test")
    if test_size is not None:
        k = _n_test(test_size, len(test_idx), what=f"the official {spec.key} test set "
                    f"({len(test_idx)} examples)", allow_all=True)
        if k < len(test_idx):
            test = ds.subset(test_idx)
            sub = test.split(k, seed=seed).test
            return DatasetSplit(train=ds.subset(train_idx[_permutation(len(train_idx), bitgen)]),
                                test=sub, official=True, seed=seed)
    test_idx = test_idx[_permutation(len(test_idx), bitgen)]
    train_idx = train_idx[_permutation(len(train_idx), bitgen)]
    return DatasetSplit(train=ds.subset(train_idx), test=ds.subset(test_idx), official=True,
                        seed=seed)


def list_datasets(cache_dir: str | os.PathLike[str] | None = None) -> list[DatasetInfo]:
    """The registry datasets with their size, labels, default split and whether each is cached
    (no network)."""
    out = []
    root = cache_root(cache_dir)
    for spec in DATASETS.values():
        folder = root / "data" / spec.key
        cached = _is_complete(folder, spec)
        split = ("official train / test" if spec.official_split
                 else f"stratified, test {spec.test_size}")
        out.append(DatasetInfo(
            key=spec.key, description=spec.description, size=spec.size,
            n_labels=len(spec.label_names), label_names=spec.label_names, split=split,
            max_words=spec.max_words, source=spec.source, licence=spec.licence, cached=cached,
            path=folder if cached else None))
    return out
