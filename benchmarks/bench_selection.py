"""Benchmark: icldistill's demonstration selectors against OpenICL's retrievers.

Run (OpenICL lives only in the benchmark venv, never in icldistill's dependencies)::

    bash benchmarks/setup_env.sh && benchmarks/.env/bin/python benchmarks/bench_selection.py

Options: ``--pool 10000 --targets 1000 --k 8 --dim 384 --clusters 50``, ``--threads N`` (torch
and faiss), ``--repeats N`` (best of N), ``--no-openicl``, ``--json PATH``, ``--markdown PATH``.
Without OpenICL installed (the package env) only icldistill's rows are timed.

Data (seeded): ``--clusters`` random centres in ``R^dim``; every pool item and target is a centre
plus isotropic noise (norm ratio 1 : 0.8 per coordinate), L2-normalised, float32 — the shape of
sentence embeddings. Labels: cluster id mod 4. Texts: 8 words drawn from the cluster's 40 topic
words plus 4 Zipf(1.5)-distributed common words, so BM25 has frequent and rare terms.

Timing: wall time of fit + select (building the index / graph and choosing ``k`` demonstrations
for every target) after one untimed warm-up on a small problem; best of ``--repeats``; a peer
run longer than ``--budget`` seconds is not repeated. OpenICL's retrievers get the SAME float32
embeddings, injected at its own seam: ``TopkRetriever.forward`` (which would run a
SentenceTransformer from the Hub) is replaced by one returning the precomputed target
embeddings, and the faiss index is built exactly as ``create_index`` builds it (``IndexIDMap(
IndexFlatIP(d))`` + ``add_with_ids``) from the pool embeddings; then OpenICL's own
``knn_search`` / ``dpp_search`` / ``vote_k_search`` / ``retrieve`` run unchanged. BM25Retriever
runs its own ``__init__`` (rank_bm25's BM25Okapi) with ``nltk.word_tokenize`` replaced by
icldistill's tokenizer (the punkt data would need a download), so both tokenise identically;
icldistill's ``bm25`` then uses ``idf="okapi"`` (rank_bm25's idf convention) so the scores are the
same. Nothing is downloaded.

"agree" is the mean over targets of ``|A ∩ B| / k`` between icldistill's and OpenICL's sets
(order ignored). Expected ~1 where the formulation is the same (knn vs TopkRetriever, bm25 vs
BM25Retriever, dpp vs DPPRetriever); vote-k differs by design (OpenICL implements an
overlap-threshold variant with 3 neighbours, icldistill the paper's discounted greedy with 150);
random draws differ by design (OpenICL draws per query).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import numpy as np
import torch

from icldistill import make_kernel
from icldistill.core.kernels import median_bandwidth
from icldistill.core.mmd import kernel_row_means, mmd, self_kernel_mean
from icldistill.selection import Pool, make_selector, tokenize


@dataclass
class Row:
    selector: str
    params: str
    seconds: float
    openicl: str
    openicl_seconds: float | None
    agree: float | None
    note: str
    mmd2_to_targets: float | None = None


# ----------------------------------------------------------------------------- data
def make_data(n: int, t: int, dim: int, clusters: int, seed: int) -> tuple[Pool, Pool]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    topic = [[f"topic{c}w{j}" for j in range(40)] for c in range(clusters)]

    def sample(m: int) -> Pool:
        cid = rng.integers(0, clusters, m)
        x = centres[cid] + np.float32(0.8) * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        texts = []
        for c in cid:
            words = [topic[c][j] for j in rng.integers(0, 40, 8)]
            words += [f"common{w}" for w in rng.zipf(1.5, 4) % 3000]
            texts.append(" ".join(rng.permutation(words)))
        return Pool(x, (cid % 4).astype(np.int64), texts)

    return sample(n), sample(t)


# ----------------------------------------------------------------------------- icldistill
def run_icldistill(name: str, params: dict[str, Any], pool: Pool, targets: Pool,
                   k: int) -> np.ndarray:
    return make_selector(name, **params).fit(pool).select(targets, k).indices


# ----------------------------------------------------------------------------- OpenICL
def _reader(pool: Pool, targets: Pool) -> Any:
    from datasets import Dataset, DatasetDict
    from openicl import DatasetReader

    ds = DatasetDict({
        "train": Dataset.from_dict({"text": list(pool.texts), "label": pool.labels.tolist()}),
        "test": Dataset.from_dict({"text": list(targets.texts),
                                   "label": targets.labels.tolist()}),
    })
    return DatasetReader(ds, input_columns=["text"], output_column="label")


def _embedding_retriever(cls: type, reader: Any, pool: Pool, targets: Pool, k: int,
                         **attrs: Any) -> Any:
    """An OpenICL TopkRetriever subclass wired to precomputed embeddings (no encoder)."""
    import faiss
    from openicl.icl_retriever import BaseRetriever

    r = cls.__new__(cls)
    BaseRetriever.__init__(r, reader, ice_num=k)
    r.is_main_process = False          # silences tqdm only
    r.device, r.batch_size = "cpu", 1
    r.dataloader = np.asarray(targets.embeddings, dtype=np.float32)

    def forward(dataloader: Any, process_bar: bool = False, information: str = "") -> list:
        return [{"embed": e, "metadata": {"id": i}} for i, e in enumerate(dataloader)]

    r.forward = forward
    for key, value in attrs.items():
        setattr(r, key, value)
    # TopkRetriever.create_index after the encoding step
    emb = np.asarray(pool.embeddings, dtype=np.float32)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(emb.shape[1]))
    r.embed_list = np.stack(list(emb))
    index.add_with_ids(r.embed_list, np.arange(len(emb)))
    r.index = index
    return r


def openicl_runner(kind: str) -> Callable[[Any, Pool, Pool, int], list[list[int]]]:
    def run(reader: Any, pool: Pool, targets: Pool, k: int) -> list[list[int]]:
        from openicl import (
            BM25Retriever,
            DPPRetriever,
            RandomRetriever,
            TopkRetriever,
            VotekRetriever,
        )

        if kind == "topk":
            return _embedding_retriever(TopkRetriever, reader, pool, targets, k).retrieve()
        if kind == "dpp":
            return _embedding_retriever(DPPRetriever, reader, pool, targets, k,
                                        candidate_num=50, seed=1, scale_factor=0.1).retrieve()
        if kind == "votek":
            return _embedding_retriever(VotekRetriever, reader, pool, targets, k,
                                        votek_k=3).retrieve()
        if kind == "bm25":
            r = BM25Retriever(reader, ice_num=k)
            r.is_main_process = False
            return r.retrieve()
        if kind == "random":
            r = RandomRetriever(reader, ice_num=k, seed=43)
            r.is_main_process = False
            return r.retrieve()
        raise ValueError(kind)

    return run


def patch_openicl() -> None:
    """Replace nltk's word_tokenize in OpenICL's BM25 module; fix DPPRetriever's crash; quiet
    OpenICL's logger.

    OpenICL 0.1.8 (and its GitHub head) ``dpp_search`` indexes the Python list returned by
    ``fast_map_dpp`` with a numpy array, a TypeError for ``ice_num > 1``; the wrapper returns the
    same items as an array, the algorithm is unchanged.
    """
    import openicl.icl_retriever.icl_bm25_retriever as bm25_module
    import openicl.icl_retriever.icl_dpp_retriever as dpp_module

    bm25_module.word_tokenize = tokenize
    fast_map_dpp = dpp_module.fast_map_dpp
    if not getattr(fast_map_dpp, "patched", False):
        def fixed(kernel_matrix: np.ndarray, max_length: int) -> np.ndarray:
            return np.asarray(fast_map_dpp(kernel_matrix, max_length))

        fixed.patched = True  # type: ignore[attr-defined]
        dpp_module.fast_map_dpp = fixed
    logging.getLogger("openicl").setLevel(logging.WARNING)
    for name in logging.root.manager.loggerDict:
        if name.startswith("openicl"):
            logging.getLogger(name).setLevel(logging.WARNING)


# ----------------------------------------------------------------------------- plan
# (selector, params, label, OpenICL retriever kind or None, note)
PLAN: list[tuple[str, dict[str, Any], str, str | None, str]] = [
    ("random", {}, "", "random", "icldistill: one seeded set; OpenICL: a draw per query"),
    ("knn", {}, "", "topk", "OpenICL: faiss IndexFlatIP, one search per query"),
    ("bm25", {"idf": "okapi"}, "idf=okapi", "bm25", "OpenICL: rank_bm25 BM25Okapi, "
     "per query get_scores"),
    ("mmr", {}, "lambda=0.7, N=50", None, "no MMR retriever in OpenICL 0.1.8"),
    ("dpp", {}, "N=50, scale=0.1", "dpp", "same formulation (candidate_num=50, "
     "scale_factor=0.1); OpenICL's crash for ice_num > 1 patched (fast_map_dpp's list -> array)"),
    ("vote-k", {}, "150 neighbours, rho=10", "votek", "OpenICL: fast variant, 3 "
     "neighbours, overlap threshold; different algorithm"),
    ("mmd", {}, "gaussian, median bandwidth", None, "set-level; no MMD selector in OpenICL"),
    ("mmd", {"bandwidth": "given"}, "gaussian, bandwidth given", None,
     "as above without the median heuristic (O(2000^2 d): float32 products over the upper "
     "triangle, exact float64 near the median)"),
    ("mmd", {"landmarks": 128}, "gaussian, median bandwidth, 128 landmarks", None,
     "set-level; row means through 128 random targets (Nyström, certified error), exact "
     "reported MMD^2"),
    ("mmd-balanced", {}, "gaussian, median bandwidth", None, "set-level, label quotas"),
    ("mmd-query", {}, "N=50", None, "per query, shortlist of 50"),
    ("mmd-query", {"candidates": None}, "exact, whole pool", None,
     "per query, exact greedy O(T k n d)"),
]
MDL_NOTE = ("not run: scores candidates with a causal LM (gpt2-xl from the Hugging Face Hub); "
            "no counterpart in icldistill")


def timed(fn: Callable[[], Any], repeats: int, budget: float) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        if elapsed > budget:
            break
    return best, out


def overlap(a: np.ndarray, b: Any, k: int) -> float:
    return float(np.mean([len(set(map(int, x)) & set(map(int, y))) / k
                          for x, y in zip(a, b, strict=True)]))


def bench(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    pool, targets = make_data(args.pool, args.targets, args.dim, args.clusters, args.seed)
    small_pool, small_targets = make_data(300, 20, args.dim, args.clusters, args.seed + 1)
    info: dict[str, Any] = {}
    # warm-up (imports, first-call costs of torch / vmap / faiss)
    for name, params, *_ in PLAN:
        p = {k: v for k, v in params.items() if k != "bandwidth"}
        run_icldistill(name, p, small_pool, small_targets, args.k)
    have_openicl = False
    if not args.no_openicl:
        try:
            import faiss

            patch_openicl()
            if args.threads:
                faiss.omp_set_num_threads(args.threads)
            small_reader = _reader(small_pool, small_targets)
            for kind in ("topk", "dpp", "votek", "bm25", "random"):
                openicl_runner(kind)(small_reader, small_pool, small_targets, args.k)
            have_openicl = True
        except Exception as exc:  # not installed (package env) or broken
            print(f"OpenICL not run: {exc!r}")
            info["openicl_error"] = repr(exc)
    reader = _reader(pool, targets) if have_openicl else None
    # the bandwidth the "mmd" selector resolves (median heuristic on pool ∪ targets)
    h = make_kernel("gaussian", torch.as_tensor(pool.embeddings),
                    torch.as_tensor(targets.embeddings)).bandwidth
    info["median_bandwidth"] = h
    rows: list[Row] = []
    openicl_cache: dict[str, tuple[float, Any]] = {}
    results: dict[str, np.ndarray] = {}
    for name, params, label, kind, note in PLAN:
        p = {k: (h if v == "given" else v) for k, v in params.items()}
        sec, idx = timed(lambda name=name, p=p: run_icldistill(name, p, pool, targets, args.k),
                         args.repeats, args.budget)
        key = name + ("" if not params else " (" + label + ")")
        results[key] = idx
        o_sec = agree = None
        o_name = "—"
        if kind is not None:
            o_name = {"topk": "TopkRetriever", "dpp": "DPPRetriever", "votek": "VotekRetriever",
                      "bm25": "BM25Retriever", "random": "RandomRetriever"}[kind]
            if have_openicl:
                if kind not in openicl_cache:
                    openicl_cache[kind] = timed(
                        lambda kind=kind: openicl_runner(kind)(reader, pool, targets, args.k),
                        args.repeats, args.budget)
                o_sec, o_idx = openicl_cache[kind]
                agree = None if kind == "random" else overlap(idx, o_idx, args.k)
            else:
                why = "skipped (--no-openicl)" if args.no_openicl else "not importable here"
                note = f"OpenICL {why}; {note}"
        set_mmd = None
        if name in ("random", "vote-k", "mmd", "mmd-balanced"):
            set_mmd = mmd(pool.embeddings[idx[0]], targets.embeddings, estimator="biased",
                          bandwidth=h)
        rows.append(Row(key, label, sec, o_name, o_sec, agree, note, set_mmd))
        o_txt = "" if o_sec is None else f", OpenICL {o_name} {o_sec:.3f} s"
        a_txt = "" if agree is None else f", agree {agree:.3f}"
        print(f"  {key}: {sec:.3f} s{o_txt}{a_txt}", flush=True)
    rows.append(Row("—", "", float("nan"), "MDLRetriever", None, None, MDL_NOTE))
    info["breakdown"] = breakdown(pool, targets, h, args)
    exact = results.get("mmd-query (exact, whole pool)")
    short = results.get("mmd-query")
    if exact is not None and short is not None:
        info["mmd_query_shortlist_vs_exact_overlap"] = overlap(short, exact, args.k)
    return rows, info


def breakdown(pool: Pool, targets: Pool, h: float, args: argparse.Namespace
              ) -> dict[str, float]:
    """Where the time of knn and set-level mmd goes (seconds, best of ``--repeats``).

    Both need every pool x target similarity (one ``[T, n]`` matrix product); knn adds a top-k
    per target, mmd adds the kernel map and row sums, the median heuristic and the constant
    ``mean K_TT`` of its MMD^2 trajectory, then ``k`` cheap greedy steps.
    """
    c = torch.as_tensor(pool.embeddings)
    t = torch.as_tensor(targets.embeddings)
    kern = make_kernel("gaussian", bandwidth=h)
    parts = {
        "pool x target product": lambda: t @ c.T,
        "knn: product + top-k": lambda: torch.topk(t @ c.T, args.k, dim=1),
        "mmd: kernel row means (product + exp + sums)":
            lambda: kernel_row_means(c, t, kern, presum=16),
        "mmd: median heuristic (2000-row subsample)": lambda: median_bandwidth(c, t),
        "mmd: trajectory constant mean K_TT": lambda: self_kernel_mean(t, kern),
    }
    out = {name: timed(fn, args.repeats, args.budget)[0] for name, fn in parts.items()}
    for name, sec in out.items():
        print(f"  {name}: {sec:.3f} s", flush=True)
    return out


def table(rows: list[Row]) -> str:
    lines = [
        "| selector | parameters | icldistill (s) | OpenICL retriever | OpenICL (s) "
        "| OpenICL / icldistill | agree | MMD_b^2(set, targets) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sec = "—" if np.isnan(r.seconds) else f"{r.seconds:.3f}"
        o_sec = "—" if r.openicl_seconds is None else f"{r.openicl_seconds:.3f}"
        ratio = "—" if r.openicl_seconds is None or np.isnan(r.seconds) else \
            f"{r.openicl_seconds / r.seconds:.1f}x"
        agree = "—" if r.agree is None else f"{r.agree:.3f}"
        m = "—" if r.mmd2_to_targets is None else f"{r.mmd2_to_targets:.5f}"
        lines.append(f"| {r.selector} | {r.params} | {sec} | {r.openicl} | {o_sec} | {ratio} "
                     f"| {agree} | {m} | {r.note} |")
    return "\n".join(lines)


def summary(rows: list[Row], info: dict[str, Any]) -> list[str]:
    by = {r.selector: r for r in rows}
    knn = by["knn"].seconds
    out = [f"mmd (set-level) time / knn time = {by['mmd'].seconds / knn:.2f}x "
           f"({by['mmd'].seconds:.3f} s vs {knn:.3f} s)"]
    given = by.get("mmd (gaussian, bandwidth given)")
    if given is not None:
        out.append(f"mmd with the bandwidth given / knn time = {given.seconds / knn:.2f}x "
                   f"(the median heuristic costs {by['mmd'].seconds - given.seconds:.3f} s)")
    lm = by.get("mmd (gaussian, median bandwidth, 128 landmarks)")
    if lm is not None:
        out.append(f"mmd with 128 landmarks / knn time = {lm.seconds / knn:.2f}x "
                   f"({lm.seconds:.3f} s); MMD_b^2 of its set {lm.mmd2_to_targets:.5f} vs "
                   f"{by['mmd'].mmd2_to_targets:.5f} for exact greedy")
    balanced = by.get("mmd-balanced")
    if balanced is not None:
        out.append(f"mmd-balanced time / knn time = {balanced.seconds / knn:.2f}x")
    if by["knn"].openicl_seconds is not None:
        out.append(f"mmd (set-level) time / OpenICL TopkRetriever time = "
                   f"{by['mmd'].seconds / by['knn'].openicl_seconds:.2f}x")
    out.append(f"mmd-query time / knn time = {by['mmd-query'].seconds / knn:.2f}x")
    if "mmd_query_shortlist_vs_exact_overlap" in info:
        out.append("mmd-query shortlist (N=50) vs exact greedy: mean overlap "
                   f"{info['mmd_query_shortlist_vs_exact_overlap']:.3f}")
    parts = info.get("breakdown")
    if parts:
        prod = parts["pool x target product"]
        out.append("cost breakdown (s, ratio to the pool x target product both need): "
                   + "; ".join(f"{name} {sec:.3f} ({sec / prod:.2f}x)"
                               for name, sec in parts.items()))
    return out


def versions() -> dict[str, str]:
    out = {}
    for dist in ("icldistill", "torch", "numpy", "openicl", "faiss-cpu", "rank-bm25",
                 "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--targets", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and faiss threads (0: library defaults)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds; a longer run is not repeated")
    parser.add_argument("--no-openicl", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--markdown", metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vers = versions()
    header = [
        "versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}" + (f" (faiss {args.threads})" if args.threads else ""),
        f"pool n={args.pool}, targets T={args.targets}, k={args.k}, d={args.dim}, "
        f"{args.clusters} clusters, float32 unit-norm embeddings, seed={args.seed}, "
        f"best of {args.repeats}",
    ]
    print("\n".join(header), flush=True)
    load_before = os.getloadavg()
    rows, info = bench(args)
    load_after = os.getloadavg()
    tab = table(rows)
    summ = summary(rows, info)
    load = (f"load average (1, 5, 15 min) before: {tuple(round(v, 2) for v in load_before)}, "
            f"after: {tuple(round(v, 2) for v in load_after)}")
    print()
    print(tab)
    print()
    print("\n".join(summ))
    print(load)
    from icldistill.artifacts.store import write_json, write_text

    if args.markdown:
        write_text(args.markdown, "\n".join([*header, "", tab, "", *summ, load, ""]))
    if args.json:
        # write_json: NaN seconds (MDLRetriever, not run) as null, never a bare NaN
        payload = {"versions": vers, "threads": torch.get_num_threads(), "args": vars(args),
                   "load_average_before_after": [load_before, load_after], "info": info,
                   "rows": [asdict(r) for r in rows]}
        write_json(args.json, payload)


if __name__ == "__main__":
    main()
