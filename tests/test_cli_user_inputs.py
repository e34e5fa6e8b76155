"""Bad or ambiguous user input to select / evaluate / trace: one-line errors (exit 2) or a
one-line warning, never a traceback or a silently different result."""

from __future__ import annotations

import json

import pytest

from icldistill.cli.app import main
from icldistill.core.validation import InputError
from icldistill.evaluation.harness import UnitSpec
from icldistill.selection import make_selector


def _csv(path, rows, header="text,label"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def good(tmp_path):
    rows = [f"{w} movie number {i},{'pos' if w == 'good' else 'neg'}"
            for i in range(8) for w in ("good", "bad")]
    return _csv(tmp_path / "good.csv", rows)


def _select(path, *extra):
    return ["select", "--file", str(path), "--quiet", "--json", "--k", "2", "--test-size", "4",
            "--selector", "random", *extra]


@pytest.mark.parametrize(("param", "said"), [
    ("seed=5", "--param seed"),
    ("balance=maybe", "must be true or false"),
])
def test_bad_selector_params_are_one_line_errors(good, capsys, param, said):
    """Regression: --param seed=5 was a TypeError traceback (exit 1), and balance=maybe (or
    balance=False) silently meant balance=true."""
    assert main([*_select(good), "--param", param]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_param_given_twice_is_refused_and_true_false_in_any_case_are_booleans(good, capsys):
    assert main([*_select(good), "--param", "balance=true", "--param", "balance=false"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main([*_select(good), "--param", "balance=False"]) == 0
    unbalanced = json.loads(capsys.readouterr().out)
    assert main([*_select(good), "--param", "balance=false"]) == 0
    assert json.loads(capsys.readouterr().out)["sets"] == unbalanced["sets"]


def test_bm25_tokenizer_must_be_a_function(good, capsys):
    """Regression: --param tokenizer=foo was "'str' object is not callable" (a traceback)."""
    assert main([*_select(good), "--selector", "bm25", "--param", "tokenizer=foo"]) == 2
    assert "tokenizer must be a function" in capsys.readouterr().err
    with pytest.raises(InputError, match="tokenizer"):
        make_selector("bm25", tokenizer="foo")


def test_make_selector_and_unit_specs_refuse_text_flags_and_a_seed_param():
    with pytest.raises(InputError, match="balance must be true or false"):
        make_selector("random", balance="False")
    with pytest.raises(InputError, match="seed"):
        UnitSpec("m", "t", "random", 2, params=(("seed", 3),))


def test_a_csv_row_with_an_unquoted_delimiter_is_refused(tmp_path, good, capsys):
    """Regression: 'a joy to watch, truly,pos' gave the label 'truly' (a made-up class) and
    dropped 'pos' without a word."""
    bad = _csv(tmp_path / "comma.csv", [*good.read_text().splitlines()[1:],
                                         "a joy to watch, truly,pos"])
    assert main(_select(bad)) == 2
    err = capsys.readouterr().err
    assert "the row has 3 fields, the header 2" in err and "quote" in err
    short = _csv(tmp_path / "short.csv", [*good.read_text().splitlines()[1:], "no label here"])
    assert main(_select(short)) == 2
    assert "the row has 1 fields, the header 2" in capsys.readouterr().err


def test_labels_that_differ_only_in_spelling_are_warned_about(tmp_path, capsys):
    rows = [f"text {i},{lab}" for i, lab in enumerate(["pos", "Pos", "neg", "1", "1.0"] * 4)]
    path = _csv(tmp_path / "case.csv", rows)
    with pytest.warns(UserWarning, match=r"differ only in case.*'1' and '1.0'; 'Pos' and 'pos'"):
        from icldistill.data.readers import load_file

        load_file(path, text_field="text", label_field="label")


def test_test_items_copied_in_the_pool_are_warned_about(tmp_path):
    rows = [f"same text {i % 4},{'pos' if i % 2 else 'neg'}" for i in range(16)]
    path = _csv(tmp_path / "dups.csv", rows)
    with pytest.warns(UserWarning, match="4 of the 4 test items have an exact copy in the "
                                         "demonstration pool"):
        assert main(_select(path)) == 0


def test_conflicting_task_flags_are_refused(good, capsys):
    assert main([*_select(good), "--dataset", "amazon"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["select", "--dataset", "amazon", "--text-field", "nope", "--quiet"]) == 2
    assert "--text-field name columns of --file" in capsys.readouterr().err


@pytest.mark.parametrize(("line", "said"), [
    ('{"input": "great film", "label": null}', "is null"),
    ('{"input": "great film", "label": NaN}', "is nan"),
    ('{"input": ["great", "film"], "label": "pos"}', "is a list"),
    ('{"input": "  ", "label": "pos"}', "is blank text"),
])
def test_trace_demos_with_bad_cells_are_refused(tmp_path, capsys, line, said):
    """Regression: null became the label 'None', NaN 'nan', a list its Python printout."""
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"input": "good", "label": "pos"}\n' + line + "\n")
    assert main(["trace", "--demos", str(demos), "--query", "a film", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert said in err and f"{demos}:2" in err


def test_trace_blank_query_is_refused(tmp_path, capsys):
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"input": "good", "label": "pos"}\n')
    assert main(["trace", "--demos", str(demos), "--query", " ", "--out",
                 str(tmp_path / "out")]) == 2
    assert "--query is blank" in capsys.readouterr().err


def test_n_test_above_the_test_split_is_said(good):
    with pytest.warns(UserWarning, match=r"--n-test 100 is more than its 4 test items; all 4"):
        assert main([*_select(good), "--n-test", "100"]) == 0
