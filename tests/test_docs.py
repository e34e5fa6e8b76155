"""The documentation: the CLI reference is current, no link leaves the repository, the site builds.

- ``docs/cli.md`` equals what ``docs/gen_cli.py`` writes from the parser today;
- no tracked Markdown file, file under ``docs/``, ``mkdocs.yml``, ``pyproject.toml`` or docstring
  of the package links outside the repository: no ``http(s)`` link (except package pages on
  PyPI / npm), no absolute path, no relative link that climbs out of the repository or names a
  file that is not there, no reference to the mathematical notes kept beside the repository;
- every test cited in the docs (``tests/FILE.py::TEST``) exists;
- ``mkdocs build --strict`` succeeds (skipped when the ``docs`` extra is not installed) and the
  built pages link to nothing outside the site.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: The only outside addresses a link may have (package pages); none is used today.
ALLOWED_URL_PREFIXES = ("https://pypi.org/project/", "https://www.npmjs.com/package/")
#: XML namespace names are identifiers, not links (they appear in SVG and MathML markup).
NAMESPACES = ("http://www.w3.org/",)
#: The mathematical notes beside the repository, which the docs must neither link nor name.
OUTSIDE_NOTES = ("../" + "shared", "shared/" + "SPEC")

_URL = re.compile(r"https?://[^\s\"'<>()\[\]`]+")
_MD_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_FENCE = re.compile(r"^(\s*)(```|~~~).*?^\1\2", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
_TEST_REF = re.compile(r"tests/(test_\w+)\.py::(test_\w+)")


def _load_gen_cli():
    return load_script("docs/gen_cli.py")


def _tracked_files() -> list[Path]:
    """Files tracked by git (the repository as it would be committed), or every file under the
    repository's own folders when git is not available."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        out = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode()
        return [ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()]
    return [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]


def _checked_files() -> list[Path]:
    """The files whose links are the documentation's: Markdown anywhere, docs/ (Markdown,
    HTML, Python, YAML, our own JavaScript), mkdocs.yml, pyproject.toml."""
    files = []
    for path in _tracked_files():
        rel = path.relative_to(ROOT)
        in_docs = rel.parts[0] == "docs"
        vendored = in_docs and "katex" in rel.parts          # third-party, checked separately
        if path.suffix == ".md" or rel.as_posix() in ("mkdocs.yml", "pyproject.toml"):
            files.append(path)
        elif in_docs and not vendored and path.suffix in (".html", ".py", ".yml", ".yaml",
                                                          ".js", ".css"):
            files.append(path)
    return files


def _strip_code(markdown: str) -> str:
    """Markdown without fenced code blocks and code spans (they show text, not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", markdown))


def _link_problem(target: str, source: Path, tracked: set[Path]) -> str | None:
    """Why ``target`` (a link in ``source``) points outside the repository, or None."""
    if target.startswith("#"):
        return None
    parts = urlsplit(target)
    if parts.scheme in ("http", "https"):
        if target.startswith(ALLOWED_URL_PREFIXES) or target.startswith(NAMESPACES):
            return None
        return "a link outside the repository"
    if parts.scheme or parts.netloc:
        return f"a {parts.scheme or 'network'} link"
    if not parts.path:
        return None
    if parts.path.startswith("/"):
        return "an absolute path"
    resolved = (source.parent / parts.path).resolve()
    if resolved != ROOT and ROOT not in resolved.parents:
        return "a path that leaves the repository"
    if resolved not in tracked and not resolved.is_dir():
        return "a file that is not in the repository"
    return None


def test_cli_reference_is_up_to_date():
    gen = _load_gen_cli()
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert current == gen.render(), (
        "docs/cli.md is out of date with icldistill.cli.build_parser(): run "
        "`python docs/gen_cli.py` and commit docs/cli.md")


def test_cli_reference_covers_every_command():
    import argparse

    from icldistill.cli.app import build_parser

    text = (DOCS / "cli.md").read_text(encoding="utf-8")

    def walk(parser: argparse.ArgumentParser, path: list[str]):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])

    for path in walk(build_parser(), ["icldistill"]):
        assert f"`{' '.join(path)}`" in text, f"{' '.join(path)} is missing from docs/cli.md"


def test_no_link_leaves_the_repository():
    tracked = {p.resolve() for p in _tracked_files()}
    problems = []
    for path in _checked_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        if path == Path(__file__).resolve():
            continue
        for note in OUTSIDE_NOTES:
            if note in text:
                problems.append(f"{rel}: names the notes outside the repository ({note!r})")
        for url in _URL.findall(text):
            if not url.startswith(ALLOWED_URL_PREFIXES + NAMESPACES):
                problems.append(f"{rel}: link outside the repository: {url}")
        if path.suffix == ".md":
            prose = _strip_code(text)
            targets = _MD_LINK.findall(prose) + _HTML_LINK.findall(prose)
        elif path.suffix == ".html":
            targets = _HTML_LINK.findall(text)
        else:
            targets = []
        for target in targets:
            why = _link_problem(target, path, tracked)
            if why:
                problems.append(f"{rel}: {target!r} is {why}")
    assert not problems, "links that leave the repository:\n" + "\n".join(problems)


def test_docstrings_link_nowhere_outside():
    """Docstrings become the API reference: no outside address, no reference to the notes."""
    problems = []
    for path in sorted((ROOT / "src").rglob("*.py")) + sorted(DOCS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                rel = path.relative_to(ROOT).as_posix()
                for url in _URL.findall(doc):
                    if not url.startswith(ALLOWED_URL_PREFIXES):
                        problems.append(f"{rel}: docstring links {url}")
                problems += [f"{rel}: docstring names {n!r}" for n in OUTSIDE_NOTES if n in doc]
    assert not problems, "\n".join(problems)


def test_vendored_katex_is_complete_and_local():
    """The stylesheet names only fonts that are shipped, and nothing on the network."""
    katex = DOCS / "assets" / "katex"
    css = (katex / "katex.min.css").read_text(encoding="utf-8")
    urls = re.findall(r"url\(([^)]+)\)", css)
    assert urls, "katex.min.css names no font"
    missing = [u for u in urls if not (katex / u.strip("'\"")).is_file()]
    assert not missing, f"fonts named by katex.min.css but not vendored: {missing}"
    for name in ("katex.min.js", "auto-render.min.js", "LICENSE"):
        assert (katex / name).is_file(), name
    assert not _URL.findall(css)


def test_cited_tests_exist():
    """Every ``tests/FILE.py::TEST`` named in the docs is a test function of that file."""
    missing = []
    for page in sorted(DOCS.rglob("*.md")):
        for module, name in set(_TEST_REF.findall(page.read_text(encoding="utf-8"))):
            path = ROOT / "tests" / f"{module}.py"
            source = path.read_text(encoding="utf-8") if path.is_file() else ""
            if not re.search(rf"^\s*def {name}\(", source, re.MULTILINE):
                missing.append(f"{page.relative_to(ROOT)}: tests/{module}.py::{name}")
    assert not missing, "the docs cite tests that do not exist:\n" + "\n".join(missing)


def _docs_toolchain() -> str | None:
    """None when mkdocs, mkdocs-material and mkdocstrings are importable, else the reason."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            return (f"the docs toolchain is not installed ({module} missing): "
                    "python3 -m pip install -c constraints.txt -e '.[docs]'")
    return None


def test_site_builds_strictly_and_links_nowhere_outside(tmp_path):
    reason = _docs_toolchain()
    if reason:
        pytest.skip(reason)
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f",
         str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    outside = set()
    for page in pages:
        for target in _HTML_LINK.findall(page.read_text(encoding="utf-8")):
            if urlsplit(target).scheme in ("http", "https") and not target.startswith(
                    ALLOWED_URL_PREFIXES + NAMESPACES):
                outside.add(f"{page.relative_to(site)}: {target}")
    for sheet in site.rglob("*.css"):
        for target in re.findall(r"url\(\s*['\"]?(https?://[^)'\"]+)", sheet.read_text(
                encoding="utf-8", errors="replace")):
            outside.add(f"{sheet.relative_to(site)}: {target}")
    assert not outside, "the built site links outside itself:\n" + "\n".join(sorted(outside))
    math = (site / "math.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in math and "assets/katex/katex.min.js" in math
