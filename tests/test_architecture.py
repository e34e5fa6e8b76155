"""The layering of ARCHITECTURE.md, checked on the source: a subpackage imports only from
subpackages below it, the math core never imports transformers, and no private name is imported
from another subpackage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "icldistill"

# lowest first; a subpackage may import from its own layer's package and from anything below.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("artifacts",),
    ("data",),
    ("models",),
    ("encoders",),
    ("selection",),
    ("evaluation",),
    ("lab",),
    ("reporting",),
    ("adapters", "cli"),
]
RANK = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}
FACADE = {"__init__", "_compat"}  # the top-level public API and the old-path aliases
HEAVY = ("transformers", "datasets", "matplotlib", "langchain_core", "dspy", "ray", "faiss")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


def _imports(mod: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import in the file, lazy ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names)
    return found


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    if len(parts) < 2 or parts[0] != "icldistill":
        return None
    return parts[1] if parts[1] in RANK else None


def test_every_module_belongs_to_a_layer():
    stray = [m for m, p in _modules() if _layer(m) is None and m.split(".")[-1] not in FACADE]
    assert not stray, f"modules outside the layers of ARCHITECTURE.md: {stray}"


def test_imports_point_down_the_layers():
    bad = []
    for mod, path in _modules():
        own = _layer(mod)
        if own is None:
            continue
        for target, names, line in _imports(mod, path):
            dep = _layer(target)
            if target == "icldistill":  # ``from icldistill import X``: the public facade
                dep = max((RANK[n] for n in names if n in RANK), default=None)
                if dep is not None and dep > RANK[own]:
                    bad.append(f"{path.relative_to(SRC)}:{line} imports icldistill.{names}")
                continue
            if dep is not None and RANK[dep] > RANK[own]:
                bad.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {target} ({dep})")
    assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


def test_the_math_core_imports_no_heavy_library():
    bad = [f"{p.relative_to(SRC)}:{line} imports {t}"
           for m, p in _modules() if _layer(m) == "core"
           for t, _, line in _imports(m, p) if t.split(".")[0] in HEAVY]
    assert not bad, bad


def test_no_private_name_crosses_a_subpackage():
    bad = []
    for mod, path in _modules():
        own = _layer(mod)
        for target, names, line in _imports(mod, path):
            dep = _layer(target)
            if not target.startswith("icldistill") or dep is None or dep == own:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in target.split(".") if p.startswith("_") and p != "__init__"]
            if private:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {target}: {private}")
    assert not bad, "private names used across subpackages:\n" + "\n".join(bad)


def _module_aliases(mod: str, path: Path) -> dict[str, str]:
    """Local names bound to modules of the package (``from icldistill.data import readers as
    r``, ``import icldistill.models.registry as reg``) -> the module's full name."""
    aliases = {}
    for target, names, _ in _imports(mod, path):
        for n in names:
            full = f"{target}.{n}"
            if (SRC.parent / Path(*full.split("."))).with_suffix(".py").exists() or \
                    (SRC.parent / Path(*full.split("."))).is_dir():
                aliases[n] = full
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.asname and a.name in aliases:
                    aliases[a.asname] = aliases.pop(a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name.startswith("icldistill."):
                    aliases[a.asname] = a.name
    return aliases


def test_no_private_attribute_of_another_subpackage_is_used():
    bad = []
    for mod, path in _modules():
        own = _layer(mod)
        aliases = {k: v for k, v in _module_aliases(mod, path).items()
                   if _layer(v) is not None and _layer(v) != own}
        if not aliases:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} uses "
                           f"{aliases[node.value.id]}.{node.attr}")
    assert not bad, "private attributes used across subpackages:\n" + "\n".join(bad)


@pytest.mark.parametrize("old,new", [("icldistill.harness", "icldistill.evaluation.harness"),
                                     ("icldistill.kernels", "icldistill.core.kernels"),
                                     ("icldistill.experiments.reproduce",
                                      "icldistill.lab.experiments.reproduce"),
                                     ("icldistill.reporting.document",
                                      "icldistill.artifacts.document")])
def test_old_import_paths_still_work_and_warn(old, new):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new):
        alias = importlib.import_module(old)
    assert alias is importlib.import_module(new)


def test_the_top_level_mmd_stays_the_function():
    import icldistill

    assert callable(icldistill.mmd) and not hasattr(icldistill.mmd, "__path__")
    assert icldistill.mmd.__module__ == "icldistill.core.mmd"


MAX_FUNCTION_LINES = 80


def test_long_functions_say_why():
    """No function over 80 lines (docstring included) without a comment right above it (or its
    decorators) giving the reason, e.g. ``# long: 40 lines of docstring; the code is 50``."""
    bad = []
    for _, path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if node.end_lineno - node.lineno + 1 <= MAX_FUNCTION_LINES:
                continue
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            above = lines[first - 2].strip() if first >= 2 else ""
            if not above.startswith("#"):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} "
                           f"({node.end_lineno - node.lineno + 1} lines)")
    assert not bad, "long functions without a written reason:\n" + "\n".join(bad)


def test_warnings_go_through_warn_caller():
    """One implementation of attributing a warning to the user's line (a fixed stacklevel is
    right for one call path only)."""
    import re

    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "core" / "validation.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bwarnings\.warn\(|\bstacklevel\s*=", line):
                offenders.append(f"{path.relative_to(SRC)}:{n}")
    assert offenders == []
