"""The one report model (icldistill.reporting): escaping by construction, inline Markdown, the
same tables in Markdown and HTML, figure paths kept inside the report folder; and every report
writer (trace, comparison, ablation, demo, laboratory) fed hostile text."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from icldistill.artifacts.document import (
    BulletList,
    CodeBlock,
    Figure,
    Paragraph,
    Quote,
    Report,
    Section,
    Table,
    inline_code,
    plain,
    render_inline,
    to_html,
    to_markdown,
    to_text,
    write_report,
)
from icldistill.core.validation import InputError
from icldistill.evaluation.harness import UnitResult, UnitSpec
from icldistill.evaluation.scoring import MetricResult

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "</table><script>alert(1)</script>"
SVG = '"><svg onload=alert(1)>'
JS_LINK = "[click](javascript:alert%281%29)"
JINJA = "{{ 7*7 }}"
HOSTILE = (IMG, SCRIPT, SVG, JS_LINK, JINJA)
HOSTILE_TEXT = " ".join(HOSTILE)

_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "h5", "h6",
         "p", "ul", "li", "table", "caption", "thead", "tbody", "tr", "th", "td", "code", "pre",
         "strong", "em", "a", "figure", "img", "figcaption", "blockquote"}
_ATTRS = {"lang", "charset", "name", "content", "http-equiv", "id", "class", "href", "src", "alt"}
_VOID = {"meta", "img"}


class _Tags(HTMLParser):
    """Every start tag with its attributes, and whether the tags nest properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.balanced = True
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.balanced = False

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    p.close()
    return p


def assert_safe_html(page: str, figures: set[str] = frozenset()) -> _Tags:
    """No tag or attribute of the page comes from user text."""
    p = _parse(page)
    assert p.balanced and not p.stack, "unbalanced tags"
    for tag, attrs in p.tags:
        assert tag in _TAGS, f"unexpected tag <{tag}>"
        assert set(attrs) <= _ATTRS, f"unexpected attributes {attrs} on <{tag}>"
        if tag == "img":
            assert attrs["src"] in figures, attrs
        if tag == "a":
            assert re.match(r"https?://|[^:]*$", attrs["href"] or ""), attrs
    low = page.lower()
    assert "<script" not in low and "<svg" not in low and "<img src=x" not in low
    assert not any(a.startswith("on") for _, attrs in p.tags for a in attrs)
    assert "javascript:" not in " ".join(str(a.get("href")) for _, a in p.tags)
    return p


def assert_hostile_escaped(page: str) -> None:
    """The hostile strings are shown as text (escaped), the jinja syntax unevaluated."""
    assert html.escape(IMG) in page
    assert html.escape("<script>") in page
    assert html.escape(SVG) in page
    assert JINJA in page                       # shown, not evaluated


def _md_tables(md: str) -> list[int]:
    """Body rows of every pipe table of a Markdown text."""
    counts, run = [], 0
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            run += 1
        elif run:
            counts.append(run - 2)
            run = 0
    return counts


def _html_tables(page: str) -> list[int]:
    return [body.count("<tr>") for body in re.findall(r"<tbody>(.*?)</tbody>", page, re.S)]


def _hostile_report() -> Report:
    return Report(
        f"title {IMG} {JINJA}",
        sections=[Section(f"section {SCRIPT}", (
            Paragraph(f"paragraph {HOSTILE_TEXT} with `code` and **bold**"),
            Table((f"col {SVG}", "value"),
                  [(IMG, "1.0"), (JINJA, "2.0"), (Paragraph(f"`x` {SCRIPT}"), "–")],
                  caption=f"caption {IMG}"),
            Figure("figs/a.png", f"figure caption {SVG} {JINJA}"),
            BulletList([f"item {IMG}", f"item {JS_LINK}"]),
            Quote(f"quote {SCRIPT}"),
            CodeBlock(f"echo '{SCRIPT}' {JINJA}", "bash"),
            Section(f"sub {SVG}", (Table(("a",), [(SCRIPT,)]),)),
        ), anchor=SVG)],
        notes=[f"note {IMG}"], commands=[f"icldistill compare --file '{IMG}.csv'"],
        meta=[("file", f"{IMG}.csv"), f"label {JINJA}"],
        intro=[Figure("intro.png", JINJA)],
    )


# ============================================================================ the model
def test_hostile_text_is_escaped_everywhere_in_the_model():
    report = _hostile_report()
    page = to_html(report)
    assert_safe_html(page, {"figs/a.png", "intro.png"})
    assert_hostile_escaped(page)
    assert "49" not in page
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page
    md = to_markdown(report)
    assert _md_tables(md) == _html_tables(page) == [3, 1]
    assert "![figure caption" in md and "(figs/a.png)" in md
    text = to_text(report)
    assert IMG in text and "`code`" not in text


def test_meta_pairs_are_plain_text():
    report = Report("t", meta=[("a*b*", "[x](http://e.org) `y`")])
    md, page = to_markdown(report), to_html(report)
    assert r"- **a\*b\***: \[x\](http://e.org) \`y\`" in md
    assert "<li><strong>a*b*</strong>: [x](http://e.org) `y`</li>" in page


@pytest.mark.parametrize("path", ["../x.png", "a/../../x.png", "/etc/passwd", "C:\\x.png",
                                  "C:/x.png", "a\\b.png", "//evil.org/x.png",
                                  "http://evil.org/x.png", "javascript:alert(1)", "", ".."])
def test_figure_paths_must_stay_inside_the_folder(path):
    with pytest.raises(InputError, match="relative"):
        Figure(path, "x")


def test_figure_path_is_url_quoted_in_html():
    page = to_html(Report("t", intro=[Figure("figs/a b#1.png", "c")]))
    assert '<img src="figs/a%20b%231.png" alt="c">' in page


def test_inline_markdown_subset():
    assert render_inline("a `x<y>` b") == "a <code>x&lt;y&gt;</code> b"
    assert render_inline("``a`b``") == "<code>a`b</code>"
    assert render_inline("**b** and *e*") == "<strong>b</strong> and <em>e</em>"
    assert render_inline("eta* and Q* stay") == "eta* and Q* stay"
    assert render_inline("[doc](docs/x.md)") == '<a href="docs/x.md">doc</a>'
    assert render_inline("[w](https://e.org/?a=1&b=2)") == \
        '<a href="https://e.org/?a=1&amp;b=2">w</a>'
    for bad in ("[x](javascript:alert%281%29)", "[x](JaVaScRiPt:alert)", "[x](//evil.org)",
                "[x](data:text/html,hi)", "[x](\x01javascript:alert)", "[x](/\\evil.org)"):
        assert "<a" not in render_inline(bad), bad
    assert render_inline(r"\*not em\* \`not code\`") == "*not em* `not code`"
    assert render_inline("x\x000\x00") == "x\ufffd0\ufffd"          # placeholders unforgeable
    page = to_html(Report("t", sections=[Section("s", (Paragraph("run `icldistill demo`"),))]))
    assert "<code>icldistill demo</code>" in page and "`" not in page


@given(st.text(st.sampled_from(list("ab <>\"'&`*[]()\\:/=!|\n{}_~;#\r")) | st.characters(),
               max_size=60))
def test_plain_text_is_shown_literally(s):
    s = s.replace("\x00", "")
    one_line = re.sub("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]", " ", s)
    assert render_inline(plain(s)) == html.escape(one_line)
    if s:
        shown = html.escape(s.replace("\n", " "))
        assert render_inline(inline_code(s)) == f"<code>{shown}</code>"


def test_plain_escapes_what_markdown_viewers_would_read_as_markup():
    """Regression: ``plain`` left ``_`` (emphasis), ``~`` (strikethrough), ``&amp;`` (an
    entity) and line breaks (which end a table row or list item) to Markdown viewers. They
    are escaped (a line break becomes a space); the HTML is the same as before, and ordinary
    names (those of the committed reports) keep their exact Markdown source."""
    assert plain("_x_ a__b ~~s~~") == r"\_x\_ a\_\_b \~\~s\~\~"
    assert plain("&amp; &#60; &#x3c;") == r"\&amp; \&#60; \&#x3c;"
    assert plain("row\nbreak\r\nand\u2028more") == "row break and more"
    for name in ("mmd-katt", "qwen2.5-0.5b (bfloat16) k=8", "rt-sentiment", "r52", "20ng",
                 "mmd-local,label_weight=0.0", "mmd-query@hidden:15,diversity=1.0",
                 "knn@kv:auto", "smollm2-135m random-init #1", "all, the control's tasks",
                 "MMD in the model's K_att space", "a&b", "bm25 (idf=okapi)"):
        assert plain(name) == name
    for text in ("_x_ a__b", "~~s~~", "&amp;", "a_b & c"):
        assert render_inline(plain(text)) == html.escape(text)


_PIECES = [*"ab <>\"'&`*[]()\\:/=!|j", "javascript:", "http://", "onerror=", "**", "`"]


@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))
def test_any_inline_text_renders_to_safe_balanced_html(s):
    p = _parse(render_inline(s))
    assert p.balanced and not p.stack
    for tag, attrs in p.tags:
        assert tag in {"code", "strong", "em", "a"}
        assert set(attrs) <= ({"href"} if tag == "a" else set())
        if tag == "a":
            assert re.match(r"https?://|[^:]*$", attrs["href"])


def test_tables_check_their_cells():
    with pytest.raises(ValueError, match="cells"):
        Table(("a", "b"), [("1",)])
    with pytest.raises(TypeError, match="str"):
        Table(("a",), [(1.5,)])
    with pytest.raises(TypeError, match="block"):
        Section("s", ("not a block",))


def test_markdown_table_cells_escape_pipes():
    md = to_markdown(Report("t", sections=[Section("s", (Table(("a|b",), [("x|y",)]),))]))
    assert r"| a\|b |" in md and r"| x\|y |" in md


def test_write_report_writes_both_files_atomically(tmp_path):
    md, page = write_report(_hostile_report(), tmp_path / "out", stem="summary")
    assert (md.name, page.name) == ("summary.md", "summary.html")
    assert md.read_text() == to_markdown(_hostile_report())
    assert page.read_text() == to_html(_hostile_report())
    assert not list((tmp_path / "out").glob(".*.tmp"))
    with pytest.raises(InputError):
        write_report(_hostile_report(), tmp_path, stem="../x")


# ============================================================================ the writers
def _unit(model, task, selector, wrong, seed=0, k=4, n=20, encoder="minilm"):
    truth = ["x", "y"] * (n // 2)
    pred = [("y" if t == "x" else "x") if i in wrong else t for i, t in enumerate(truth)]
    acc = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))
    spec = UnitSpec(model, task, selector, k, seed, encoder=encoder)
    metric = MetricResult(acc, acc - 0.1, acc + 0.1, 0.95)
    res = UnitResult(spec, spec.key(task), metric, metric, n, 0.1, 0.1, True, 0.01, 1.0, 10, 100,
                     {"x": 0.8, "y": 0.8})
    return res, (pred, truth)


def test_comparison_report_escapes_user_text(tmp_path):
    from icldistill.core.stats import paired_comparisons
    from icldistill.reporting.reports import write_comparison_report

    units = []
    for task in (IMG, JINJA):
        units += [_unit(SVG, task, "knn", set(range(8))), _unit(SVG, task, "mmd", {1}),
                  _unit(SVG, task, SCRIPT, set(range(5))),
                  *(_unit(SVG, task, "random", set(range(6 + s)), s) for s in range(3))]
    results = [u for u, _ in units]
    preds = {u.key: p for u, p in units}
    paired = paired_comparisons(results, preds, baselines=("knn",), n_boot=100, n_perm=200)
    rep = write_comparison_report(results, tmp_path, title=f"compare {IMG}",
                                  commands=[f"icldistill compare --file '{IMG}.csv'"],
                                  notes=[f"note {SCRIPT} `code`", JS_LINK], paired=paired)
    page = rep.html.read_text()
    figures = {f.relative_to(tmp_path).as_posix() for f in rep.figures}
    assert_safe_html(page, figures)
    assert_hostile_escaped(page)
    assert "<code>code</code>" in page and "`" not in page
    md = rep.markdown.read_text()
    assert _md_tables(md) == _html_tables(page)
    assert len(_html_tables(page)) >= 6
    assert "## Paired comparisons" in md and "<h2>Paired comparisons</h2>" in page


def test_ablation_report_escapes_user_text_and_has_an_html_twin(tmp_path):
    from icldistill.core.stats import paired_comparisons
    from icldistill.reporting.reports import write_ablation_report

    objectives = [("kNN", "knn", ()), (f"set {IMG}", "mmd", ()), (JINJA, "mmd-query", ())]
    encoders = ["minilm", SVG]
    units = []
    for task in ("a", SCRIPT):
        for (_, sel, _), wrong in zip(objectives, ({0, 1, 2, 3, 4}, {0}, set(range(9))),
                                      strict=True):
            units += [_unit("m", task, sel, wrong, k=8, n=40, encoder=enc) for enc in encoders]
    results = [u for u, _ in units]
    paired = paired_comparisons(results, {u.key: p for u, p in units}, baselines=("knn",),
                                n_boot=100, n_perm=200)
    md_path = write_ablation_report(results, paired, tmp_path, objectives=objectives,
                                    encoders=encoders, commands=[f"run '{IMG}'"],
                                    notes=[f"note {SCRIPT}"], title=f"ablation {JINJA}")
    assert md_path == tmp_path / "ablation.md"
    page = (tmp_path / "ablation.html").read_text()
    figures = {f.relative_to(tmp_path).as_posix() for f in (tmp_path / "figures").glob("*.png")}
    assert figures                                      # the heat map, a file of the folder
    assert_safe_html(page, figures)
    assert_hostile_escaped(page)
    md = md_path.read_text()
    assert _md_tables(md) == _html_tables(page)
    assert "<code>knn</code>" in page and "`" not in page
    assert json.loads((tmp_path / "ablation.json").read_text())


def test_lab_report_escapes_user_text(tmp_path):
    from icldistill.lab.experiments import Check
    from icldistill.lab.experiments import Section as LabSection
    from icldistill.lab.experiments import Table as LabTable
    from icldistill.lab.experiments.report import write_lab_report

    sec = LabSection(
        name=SVG, title=f"lab {IMG}", description=f"described {HOSTILE_TEXT} `code`",
        checks=[Check(f"claim {SCRIPT}", False, f"detail {IMG}"), Check(JINJA, True, "ok")],
        findings=[f"finding {SVG}"],
        tables=[LabTable(f"table {IMG}", (f"col {SCRIPT}", "v"), ((JINJA, 0.5), (IMG, None)))],
        figures=["fig.png"])
    files = write_lab_report([sec], tmp_path, title=f"lab report {JINJA}",
                             header=[f"Command: {inline_code(f'icldistill lab --file {IMG}')}"],
                             commands=[f"icldistill reproduce --out '{IMG}'"],
                             section_commands={SVG: f"icldistill lab --file '{SCRIPT}'"},
                             notes=[f"note {IMG}"])
    page = files["html"].read_text()
    assert_safe_html(page, {"fig.png"})
    assert_hostile_escaped(page)
    assert "`" not in page and "<code>code</code>" in page
    assert _md_tables(files["markdown"].read_text()) == _html_tables(page) == [2, 2]
    with pytest.raises(InputError):
        write_lab_report([LabSection("x", "x", "x", figures=["../x.png"])], tmp_path,
                         title="t")


def test_trace_report_escapes_user_text(tmp_path):
    from icldistill.data.prompts import Prompt
    from icldistill.models.tracing import trace
    from icldistill.reporting.reports import write_trace_report

    from .tiny_models import tiny_model, tiny_tokenizer

    res = trace(tiny_model("qwen2"), tiny_tokenizer(), Prompt([("good", "positive")], "fun"))
    files = write_trace_report(res, tmp_path, title=f"trace {IMG}",
                               metadata={"query": SCRIPT, f"file {SVG}": f"{IMG}.jsonl",
                                         "label": JINJA})
    page = files["html"].read_text()
    assert_safe_html(page, {"eta_heatmap.png", "positions.png"})
    assert_hostile_escaped(page)
    assert _md_tables(files["markdown"].read_text()) == _html_tables(page) == [3, 5]


def test_demo_report_escapes_its_folder_name(tmp_path):
    from icldistill.lab.demo import run_demo

    out = tmp_path / IMG
    summary = run_demo(out, seed=0, quiet=True, fast=True)
    page = summary.files["html"].read_text()
    assert_safe_html(page, {"demo.png"})
    assert html.escape(IMG) in page
    assert _md_tables(summary.files["markdown"].read_text()) == _html_tables(page)


def test_names_in_computed_sentences_and_captions_are_escaped(tmp_path):
    """Regression: the model tag ``"model k=K"`` reached the control, coverage and forest-plot
    sentences and captions unescaped, and a comparison's note (which names selectors) too: a
    name with backticks or asterisks became a code span or emphasis."""
    from icldistill.core.stats import PairedComparison
    from icldistill.reporting.reports import (
        ControlCheck,
        _control_section,
        _paired_section,
    )

    model, task = "org/m_`x`", "t*bold*"
    pc = PairedComparison(model, 4, task, "mmd", "knn", 0.05, 0.01, 0.09, 0.001, 0.01, 100, 1,
                          note="mmd*x*'s units scored different numbers of items")
    mean = PairedComparison(model, 4, "mean", "mmd", "knn", 0.05, 0.01, 0.09, 0.001, 0.01, 100,
                            2)
    cc = PairedComparison(model, 4, task, "mmd", "knn", 0.0, -0.02, 0.02, 0.9, 1.0, 100, 1)
    report = Report("T", (_control_section([ControlCheck(model, 4, task, "mmd", "knn", pc, cc,
                                                         True)], "ctl"),
                          _paired_section([pc, mean], figures=tmp_path / "figures")))
    page = to_html(report)
    assert "<code>x</code>" not in page and "<em>" not in page
    assert f"{html.escape(model)} k=4: 1 of the 1 comparisons" in page
    assert f"<figcaption>{html.escape(model)} k=4: mean over tasks" in page
    assert html.escape("mmd*x*'s units") in page
