"""Classic demonstration retrievers behind the :class:`~icldistill.selection.base.Selector`
interface: ``random``, ``knn`` (KATE), ``bm25``, ``mmr``, ``dpp`` and ``vote-k``.

Per-query retrievers (``knn``, ``bm25``, ``mmr``, ``dpp``) choose for every target on its own;
set-level ones (``random``, ``vote-k``) choose one set shared by all targets. None needs a
language model: they work on embeddings and texts.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction

import numpy as np
import torch

from icldistill.core.validation import InputError, check_float, check_int, warn_caller
from icldistill.selection._common import (
    Candidates,
    row_chunks,
    topk_low_index,
    topk_rows,
    unit_rows,
)
from icldistill.selection.base import SelectionRun, Selector
from icldistill.selection.greedy import label_quotas
from icldistill.selection.index import CandidateIndex, indexed_shortlist, make_index
from icldistill.selection.pool import Pool, PoolData, check_pool

__all__ = ["BM25Selector", "DPPSelector", "KNNSelector", "MMRSelector", "RandomSelector",
           "VoteKSelector", "tokenize"]


class RandomSelector(Selector):
    """Uniformly random demonstrations, one set shared by all targets.

    Draws ``k`` distinct pool items with ``numpy.random.default_rng(seed)``; with
    ``balance=True`` it draws :func:`label_quotas` items per label (pool labels needed) and
    shuffles them. Same seed, same set. Default order ``"selection"`` (the random draw order).

    Reference: the random baseline of Brown et al. (2020), few-shot prompting.

    Cost: ``O(k)`` (``O(n)`` with ``balance``).
    """

    name = "random"
    needs = frozenset()
    target_needs = frozenset()
    shared = True
    default_order = "selection"
    _param_names = ("balance",)

    def __init__(self, *, balance: bool = False, order: str | None = None, seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.balance = bool(balance)

    def _pool_needs(self) -> frozenset[str]:
        return frozenset({"labels"}) if self.balance else self.needs

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        data = self._fitted()
        rng = np.random.default_rng(self.seed)
        if self.balance:
            assert data.labels is not None
            quotas = label_quotas(data.labels, k)
            parts = [rng.choice(np.flatnonzero(data.labels == lab), q, replace=False)
                     for lab, q in quotas.items() if q]
            idx = rng.permutation(np.concatenate(parts))
        else:
            idx = rng.choice(data.n, k, replace=False)
        return SelectionRun(idx[None].astype(np.int64), None)


class KNNSelector(Selector):
    """Nearest neighbours by cosine similarity, per query (KATE).

    For every target, the ``k`` pool items with the highest cosine similarity of their
    embeddings. Default order ``"similarity"``: the most similar item last, next to the query
    (KATE's "reversed" order). Equal similarities go to the lowest index, on every device
    (:func:`~icldistill.selection._common.topk_low_index`), up to float rounding.

    Reference: Liu et al. (2022), "What Makes Good In-Context Examples for GPT-3?" (KATE).

    Cost: ``O(T n d)`` for the similarities (one matrix product per chunk of targets) plus
    ``O(T n)`` for the top-k; memory ``O(chunk n)``.
    """

    name = "knn"
    needs = frozenset({"embeddings"})
    _param_names = ("index",)

    def __init__(self, *, index: str | CandidateIndex | None = None, order: str | None = None,
                 seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.index = index
        make_index(index, "cosine")              # check it now, not at fit

    def _fit(self, data: PoolData) -> None:
        assert data.emb is not None
        self._ann = make_index(self.index, "cosine")
        if self._ann is not None:               # no normalised copy of a large pool
            self._pool_emb = data.emb
            self._ann.fit(data.emb)
        else:
            self._unit_pool = unit_rows(data.emb)

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        if self._ann is not None:
            return self._select_indexed(targets, k)
        pool = self._unit_pool
        tgt = unit_rows(targets.emb.to(pool.dtype))
        idx = torch.empty(targets.n, k, dtype=torch.long, device=pool.device)
        rel = torch.empty(targets.n, k, dtype=pool.dtype, device=pool.device)
        for sl in row_chunks(targets.n, pool.shape[0]):
            rel[sl], idx[sl] = topk_low_index(tgt[sl] @ pool.T, k)
        return SelectionRun(idx.cpu().numpy(), rel.cpu().numpy().astype(np.float64))

    def _select_indexed(self, targets: PoolData, k: int) -> SelectionRun:
        """Candidates from the index (``max(4k, 32)`` per query), re-scored exactly."""
        n_short = min(self._ann.n, max(4 * k, 32))
        sims, idx = indexed_shortlist(self._ann, self._pool_emb, targets.emb, n_short)
        return SelectionRun(idx[:, :k].cpu().numpy(),
                            sims[:, :k].cpu().numpy().astype(np.float64))


_TOKEN = re.compile(r"\w+")


@functools.cache
def _unicode_token() -> re.Pattern[str]:
    """``\\w`` plus every combining mark (categories ``Mn``, ``Mc``, ``Me``), as one pattern.

    Python's ``\\w`` omits the marks, which splits Indic words at their vowel signs and
    viramas (``"हिन्दी"`` into ``"ह", "न", "द"``). Built once, on the first non-ASCII text,
    from :mod:`unicodedata` (the same Unicode version as :mod:`re`).
    """
    ranges: list[str] = []
    start = prev = -2
    for cp in range(0x300, sys.maxunicode + 1):
        if unicodedata.category(chr(cp))[0] != "M":
            continue
        if cp != prev + 1:
            if start >= 0:
                ranges.append(f"{chr(start)}-{chr(prev)}")
            start = cp
        prev = cp
    ranges.append(f"{chr(start)}-{chr(prev)}")
    return re.compile("[\\w" + "".join(ranges) + "]+")


def tokenize(text: str) -> list[str]:
    """Default BM25 tokenizer: runs of word characters of the normalised, case-folded text.

    ASCII text is lower-cased and split into runs of ``\\w`` (letters, digits and ``_``).
    Other text is first normalised to NFKC and case-folded (``NFKC(casefold(NFKC(text)))``:
    precomposed and decomposed ``"café"`` give the same token, as do ``"Straße"`` and
    ``"STRASSE"``), and combining marks (Unicode categories ``M*``: Indic vowel signs and
    viramas, accents left uncomposed) count as word characters, so they stay inside their
    word.

    Parameters
    ----------
    text : str

    Returns
    -------
    list of str
        The tokens, in text order.
    """
    if text.isascii():
        return _TOKEN.findall(text.lower())
    norm = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _unicode_token().findall(norm)


class BM25Selector(Selector):
    """Okapi BM25 lexical retrieval over the texts, per query.

    ``score(q, D) = sum_{t in q} idf(t) * tf(t, D) (k1 + 1) / (tf(t, D) + k1 (1 - b + b |D| /
    avgdl))`` (a query term counted as often as it occurs). ``idf="lucene"`` (default) is
    ``log(1 + (N - df + 0.5) / (df + 0.5))`` (never negative); ``idf="okapi"`` is rank_bm25's
    ``BM25Okapi``: ``log((N - df + 0.5) / (df + 0.5))`` with negative values replaced by
    ``epsilon * mean idf``. Tokens come from ``tokenizer`` (default :func:`tokenize`).
    Top-k per query by score, ties to the lowest index. Default order ``"similarity"``.

    Reference: Robertson & Zaragoza (2009), "The Probabilistic Relevance Framework: BM25 and
    Beyond"; used for demonstration retrieval by Rubin et al. (2022) and OpenICL.

    Cost: fit ``O(total tokens)`` (postings lists and a sparse ``[n, V]`` weight matrix);
    select ``O(min(sum_q sum_{t in q} df(t), T nnz))`` for the scores (term-at-a-time over the
    postings, or a sparse-times-dense product when query terms are frequent) plus ``O(T n)``
    for the top-k; memory ``O(chunk (n + V))``.
    """

    name = "bm25"
    needs = frozenset({"texts"})
    target_needs = frozenset({"texts"})
    _param_names = ("k1", "b", "idf", "epsilon", "tokenizer")

    def __init__(self, *, k1: float = 1.5, b: float = 0.75, idf: str = "lucene",
                 epsilon: float = 0.25, tokenizer: Callable[[str], list[str]] | None = None,
                 order: str | None = None, seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.k1 = check_float(k1, "k1", 0.0)
        self.b = check_float(b, "b", 0.0, 1.0)
        if idf not in ("lucene", "okapi"):
            raise InputError(f"idf must be 'lucene' or 'okapi', got {idf!r}")
        self.idf = idf
        self.epsilon = check_float(epsilon, "epsilon", 0.0)
        if tokenizer is not None and not callable(tokenizer):
            raise InputError(f"tokenizer must be a function text -> list of tokens (or None "
                             f"for the default), got {type(tokenizer).__name__} {tokenizer!r}")
        self.tokenizer = tokenizer

    def _tokens(self, text: str) -> list[str]:
        return (self.tokenizer or tokenize)(text)

    def _fit(self, data: PoolData) -> None:
        assert data.texts is not None
        vocab: dict[str, int] = {}
        terms: list[int] = []
        docs: list[int] = []
        tfs: list[int] = []
        doc_len = np.zeros(data.n)
        for d, text in enumerate(data.texts):
            toks = self._tokens(text)
            doc_len[d] = len(toks)
            for tok, count in Counter(toks).items():
                terms.append(vocab.setdefault(tok, len(vocab)))
                docs.append(d)
                tfs.append(count)
        term_arr = np.asarray(terms, dtype=np.int64)
        order = np.argsort(term_arr, kind="stable")
        df = np.bincount(term_arr, minlength=len(vocab)).astype(np.float64)
        n = float(data.n)
        if self.idf == "lucene":
            idf = np.log1p((n - df + 0.5) / (df + 0.5))
        else:
            idf = np.log(n - df + 0.5) - np.log(df + 0.5)
            if idf.size:
                idf[idf < 0] = self.epsilon * idf.mean()
        avgdl = doc_len.mean() if doc_len.sum() > 0 else 1.0
        doc_arr = np.asarray(docs, dtype=np.int64)[order]
        tf = np.asarray(tfs, dtype=np.float64)[order]
        norm = self.k1 * (1.0 - self.b + self.b * doc_len[doc_arr] / avgdl)
        self._vocab = vocab
        self._ptr = np.concatenate([[0], np.cumsum(df.astype(np.int64))])
        self._post_doc = doc_arr
        self._post_w = idf[term_arr[order]] * tf * (self.k1 + 1.0) / (tf + norm)
        # the same weights as a sparse CSR matrix W [n, V], for queries with frequent terms
        with warnings.catch_warnings():   # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self._matrix = torch.sparse_coo_tensor(
                torch.from_numpy(np.vstack([doc_arr, term_arr[order]])),
                torch.from_numpy(self._post_w), (data.n, max(1, len(vocab))),
                check_invariants=True).coalesce().to_sparse_csr()

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """BM25 scores of every pool text for every query text.

        Parameters
        ----------
        texts : sequence of str
            ``T`` query texts.

        Returns
        -------
        numpy.ndarray
            ``[T, n]`` float64 scores. A query that shares no term with the pool scores 0
            everywhere, with a :class:`UserWarning` naming it.
        """
        data = self._fitted()
        tdata = check_pool(Pool(texts=texts), frozenset({"texts"}), "queries", self.name)
        assert tdata.texts is not None
        parts = [self._scores(tdata.texts[sl])
                 for sl in row_chunks(tdata.n, data.n + len(self._vocab))]
        self._warn_unmatched(np.concatenate([m for _, m in parts]) if parts
                             else np.ones(0, dtype=bool))
        if not parts:
            return np.zeros((0, data.n))
        return np.concatenate([sc for sc, _ in parts])

    @staticmethod
    def _warn_unmatched(matched: np.ndarray) -> None:
        """A :class:`UserWarning` naming the queries (``matched`` ``[T]`` False) that share no
        term with the pool: their scores are all 0, so their top-k is the first pool items."""
        missing = np.flatnonzero(~matched)
        if missing.size:
            shown = ", ".join(map(str, missing[:10].tolist())) + (
                ", ..." if missing.size > 10 else "")
            warn_caller(f"bm25: {missing.size} of {matched.size} queries share no term with "
                        f"the pool (query indices {shown}); their scores are all 0 and their "
                        "demonstrations are the lowest-index pool items")

    def _scores(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Dense float64 scores ``[len(texts), n]`` (term-at-a-time over the postings of the
        query terms when they are short, else one sparse-times-dense product ``W @ Q^T``) and
        whether each query shares at least one term with the pool ``[len(texts)]`` bool."""
        n = self._fitted().n
        qid: list[int] = []
        term: list[int] = []
        qtf: list[int] = []
        for i, text in enumerate(texts):
            for tok, count in Counter(self._tokens(text)).items():
                t = self._vocab.get(tok)
                if t is not None:
                    qid.append(i)
                    term.append(t)
                    qtf.append(count)
        term_arr = np.asarray(term, dtype=np.int64)
        qid_arr = np.asarray(qid, dtype=np.int64)
        qtf_arr = np.asarray(qtf, dtype=np.float64)
        matched = np.zeros(len(texts), dtype=bool)
        matched[qid_arr] = True
        starts = self._ptr[term_arr]
        lens = self._ptr[term_arr + 1] - starts
        # a posting costs ~30x a multiply-add of the sparse product (measured)
        if 32 * int(lens.sum()) > self._post_w.size * len(texts):
            q = np.zeros((len(self._vocab), len(texts)))
            np.add.at(q, (term_arr, qid_arr), qtf_arr)
            return torch.sparse.mm(self._matrix, torch.from_numpy(q)).T.numpy(), matched
        pair = np.repeat(np.arange(len(term_arr)), lens)
        offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        pos = starts[pair] + offs
        flat = qid_arr[pair] * n + self._post_doc[pos]
        weights = self._post_w[pos] * qtf_arr[pair]
        scores = np.bincount(flat, weights=weights, minlength=len(texts) * n)
        # float64 even with no posting at all (bincount of empty weights is int64)
        return scores.astype(np.float64, copy=False).reshape(-1, n), matched

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        assert targets.texts is not None
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        matched = np.empty(targets.n, dtype=bool)
        for sl in row_chunks(targets.n, self._fitted().n + len(self._vocab)):
            scores, matched[sl] = self._scores(targets.texts[sl])
            idx[sl], rel[sl] = topk_rows(scores, k)
        self._warn_unmatched(matched)
        return SelectionRun(idx, rel)


class _ShortlistSelector(Selector):
    """Per-query selectors that work on a top-``candidates`` shortlist by cosine similarity."""

    needs = frozenset({"embeddings"})

    def __init__(self, *, candidates: int | None = 50, index: str | CandidateIndex | None = None,
                 order: str | None = None, seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.candidates = None if candidates is None else check_int(candidates, "candidates")
        self.index = index
        make_index(index, "cosine")              # check it now, not at fit
        if index is not None and candidates is None:
            raise InputError("an index gives a shortlist: set candidates (e.g. 50), not None")

    def _fit(self, data: PoolData) -> None:
        assert data.emb is not None
        self._unit_pool = unit_rows(data.emb)
        self._ann = make_index(self.index, "cosine")
        if self._ann is not None:
            self._ann.fit(self._unit_pool)

    def _shortlists(self, targets: PoolData,
                    k: int) -> Iterator[tuple[slice, torch.Tensor, Candidates]]:
        """Per chunk of targets: cosine similarities ``[R, N]`` and the candidate sets."""
        pool = self._unit_pool
        n, dim = pool.shape
        n_short = n if self.candidates is None else max(k, min(self.candidates, n))
        full = n_short >= n
        tgt = unit_rows(targets.emb.to(pool.dtype))
        if self._ann is not None and not full:
            for sl in row_chunks(targets.n, n_short * (dim + n_short)):
                sims, idx = indexed_shortlist(self._ann, pool, tgt[sl], n_short)
                yield sl, sims, Candidates(pool, idx)
            return
        for sl in row_chunks(targets.n, n if full else n + n_short * (dim + n_short)):
            sims = tgt[sl] @ pool.T
            if full:
                yield sl, sims, Candidates(pool, None)
            else:
                vals, idx = topk_low_index(sims, n_short)
                yield sl, vals, Candidates(pool, idx)


class MMRSelector(_ShortlistSelector):
    """Maximal marginal relevance, per query.

    Greedily picks ``argmax_c lambda sim(c, q) - (1 - lambda) max_{s in S} sim(c, s)``
    (cosine similarities; the first pick is the most similar item) among the ``candidates``
    most similar pool items (``None``: the whole pool). ``lambda_=0.7`` by default. Default
    order ``"similarity"`` (most similar to the query last).

    Reference: Carbonell & Goldstein (1998), "The Use of MMR, Diversity-Based Reranking for
    Reordering Documents and Producing Summaries"; for demonstrations e.g. Ye et al. (2023).

    Cost: ``O(T n d)`` for the shortlist plus ``O(T k N d)`` for the greedy steps (``N`` the
    shortlist size); with ``candidates=None`` ``O(T k n d)``.
    """

    name = "mmr"
    _param_names = ("lambda_", "candidates", "index")

    def __init__(self, *, lambda_: float = 0.7, candidates: int | None = 50,
                 index: str | CandidateIndex | None = None, order: str | None = None,
                 seed: int = 0) -> None:
        super().__init__(candidates=candidates, index=index, order=order, seed=seed)
        self.lambda_ = check_float(lambda_, "lambda_", 0.0, 1.0)

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        lam = self.lambda_
        for sl, sims, cand in self._shortlists(targets, k):
            rows = torch.arange(sims.shape[0], device=sims.device)
            available = torch.ones_like(sims, dtype=torch.bool)
            max_sim = torch.zeros_like(sims)
            chosen = torch.empty(sims.shape[0], k, dtype=torch.long, device=sims.device)
            for j in range(k):
                score = sims if j == 0 else lam * sims - (1.0 - lam) * max_sim
                best = torch.argmax(score.masked_fill(~available, -math.inf), dim=1)
                chosen[:, j] = best
                available[rows, best] = False
                if j + 1 < k:
                    col = cand.column(best)
                    max_sim = col if j == 0 else torch.maximum(max_sim, col)
            idx[sl] = cand.to_global(chosen).cpu().numpy()
            rel[sl] = sims.gather(1, chosen).cpu().numpy()
        return SelectionRun(idx, rel)


class DPPSelector(_ShortlistSelector):
    """Two-stage determinantal point process, per query (OpenICL's ``DPPRetriever``).

    Stage 1: the ``candidates`` pool items most similar to the query (cosine). Stage 2: greedy
    MAP inference (Chen et al. 2018, fast greedy with incremental Cholesky factors) of a
    ``k``-item set under the kernel ``L = diag(q) S diag(q)``, exactly OpenICL's formulation:
    on unit-normalised embeddings, ``S_ij = (1 + cos(c_i, c_j)) / 2``, relevance
    ``rel_i = (1 + cos(c_i, query)) / 2``, shifted so its maximum is 0, and quality
    ``q_i = exp(rel_i / (2 scale))`` (``scale`` is OpenICL's ``scale_factor``, 0.1). Selected
    items are masked (OpenICL's loop is not); if the factorisation runs out (all remaining
    gains <= 1e-12) the rest are filled by relevance. Default order ``"similarity"`` (most
    relevant last; OpenICL returns most relevant first, i.e. our ``"reverse"`` of that).
    ``candidates=50`` (OpenICL's default ``candidate_num=1`` only works for ``k=1``).

    References: Ye et al. (2023), "Compositional Exemplars for In-context Learning" (CEIL);
    Chen et al. (2018), "Fast Greedy MAP Inference for Determinantal Point Process to Improve
    Recommendation Diversity"; Wu et al. (2023), OpenICL.

    Cost: ``O(T n d)`` for the shortlist, ``O(T k N d)`` for the kernel columns and
    ``O(T k^2 N)`` for the factor updates.
    """

    name = "dpp"
    _param_names = ("candidates", "scale", "index")

    def __init__(self, *, candidates: int | None = 50, scale: float = 0.1,
                 index: str | CandidateIndex | None = None, order: str | None = None,
                 seed: int = 0) -> None:
        super().__init__(candidates=candidates, index=index, order=order, seed=seed)
        self.scale = check_float(scale, "scale", 0.0, low_open=True)

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        f64 = torch.float64
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel_out = np.empty((targets.n, k))
        for sl, sims, cand in self._shortlists(targets, k):
            n_rows, n_cand = sims.shape
            dev = sims.device
            rows = torch.arange(n_rows, device=dev)
            rel = (sims.to(f64) + 1.0) / 2.0
            rel = torch.exp((rel - rel.max(1, keepdim=True).values) / (2.0 * self.scale))
            sq_norm = cand.pool.pow(2).sum(-1)
            sq_norm = sq_norm[cand.idx] if cand.idx is not None else sq_norm.expand(n_rows, -1)
            di2 = rel**2 * (1.0 + sq_norm.to(f64)) / 2.0          # diag(L)
            cis = torch.zeros(n_rows, k, n_cand, dtype=f64, device=dev)
            available = torch.ones(n_rows, n_cand, dtype=torch.bool, device=dev)
            chosen = torch.empty(n_rows, k, dtype=torch.long, device=dev)
            for j in range(k):
                best = torch.argmax(di2.masked_fill(~available, -math.inf), dim=1)
                d_best = di2[rows, best]
                stuck = d_best <= 1e-12
                if bool(stuck.any()):
                    by_rel = torch.argmax(rel.masked_fill(~available, -math.inf), dim=1)
                    best = torch.where(stuck, by_rel, best)
                chosen[:, j] = best
                available[rows, best] = False
                if j + 1 == k:
                    break
                s_col = (1.0 + cand.column(best).to(f64)) / 2.0
                elements = rel[rows, best][:, None] * s_col * rel       # L[best, :]
                c_best = cis[rows, :j, best]                             # [R, j]
                eis = (elements - torch.einsum("rj,rjn->rn", c_best, cis[:, :j])) \
                    / d_best.clamp_min(1e-300).sqrt()[:, None]
                eis = eis.masked_fill(stuck[:, None], 0.0)
                cis[:, j] = eis
                di2 = di2 - eis**2
            idx[sl] = cand.to_global(chosen).cpu().numpy()
            rel_out[sl] = sims.gather(1, chosen).cpu().numpy()
        return SelectionRun(idx, rel_out)


class VoteKSelector(Selector):
    """Vote-k selective annotation, graph stage (fast vote-k); one set shared by all targets.

    Every pool item votes for its ``neighbors`` nearest other items (cosine similarity), a
    directed kNN graph. Greedily pick the unselected ``u`` maximising
    ``score(u) = sum_{v votes for u, v not selected} rho^(-|{l selected : v votes for l}|)``:
    items with many voters (representative) whose voters are not already covered (diverse).
    ``neighbors=150`` and ``rho=10`` are the paper's values (capped at ``n - 1``). Ties go to
    the lowest index, decided on the exact scores: the running floating-point scores only
    shortlist the near-best items (within a relative ``1e-9``), whose scores are then
    recomputed in exact rational arithmetic, so items whose scores are mathematically equal
    tie even when incremental float updates made them differ. The paper's second stage
    (re-selecting by the language model's confidence on the remaining budget) is not used:
    this selector needs no model. The graph depends on the pool only and is built in
    :meth:`fit`. Default order ``"similarity"``
    (by cosine to the mean target direction, most similar last).

    Reference: Su et al. (2022/ICLR 2023), "Selective Annotation Makes Language Models Better
    Few-Shot Learners" (Algorithm 1; the official ``fast_votek``).

    Cost: fit ``O(n^2 d)`` for the graph (chunked matrix products and top-k, memory
    ``O(chunk n)``); select ``O(k (n + indeg(u) neighbors))``.
    """

    name = "vote-k"
    needs = frozenset({"embeddings"})
    target_needs = frozenset()
    shared = True
    _param_names = ("neighbors", "rho")

    def __init__(self, *, neighbors: int = 150, rho: float = 10.0, order: str | None = None,
                 seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.neighbors = check_int(neighbors, "neighbors")
        self.rho = check_float(rho, "rho", 1.0, low_open=True)

    def _fit(self, data: PoolData) -> None:
        assert data.emb is not None
        pool = unit_rows(data.emb)
        n = data.n
        kv = min(self.neighbors, n - 1)
        nbr = np.empty((n, kv), dtype=np.int64)
        if kv > 0:
            for sl in row_chunks(n, n):
                sims = pool[sl] @ pool.T
                rows = torch.arange(sl.stop - sl.start, device=sims.device)
                sims[rows, rows + sl.start] = -math.inf              # no self-votes
                nbr[sl] = topk_low_index(sims, kv)[1].cpu().numpy()
        flat = nbr.ravel()
        order = np.argsort(flat, kind="stable")
        self._nbr = nbr
        self._voters = order // max(kv, 1)                            # grouped by candidate
        self._voter_ptr = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=n))])

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        n = self._fitted().n
        nbr, kv = self._nbr, self._nbr.shape[1]
        weight = np.ones(n)                                           # rho^-(covered votes)
        covered = np.zeros(n, dtype=np.int64)                         # exact coverage counts
        score = np.bincount(nbr.ravel(), minlength=n).astype(np.float64)
        selected = np.zeros(n, dtype=bool)
        chosen = []
        for _ in range(k):
            u = self._best(score, selected, covered)
            chosen.append(u)
            selected[u] = True
            score[nbr[u]] -= weight[u]                                # u stops voting
            weight[u] = 0.0
            voters = self._voters[self._voter_ptr[u]:self._voter_ptr[u + 1]]
            delta = weight[voters] * (1.0 / self.rho - 1.0)
            weight[voters] /= self.rho
            covered[voters] += 1
            np.add.at(score, nbr[voters].ravel(), np.repeat(delta, kv))
        return SelectionRun(np.asarray(chosen, dtype=np.int64)[None], None)

    def _best(self, score: np.ndarray, selected: np.ndarray, covered: np.ndarray) -> int:
        """The unselected item of largest exact score, the lowest index among equals.

        ``score`` ``[n]`` are the running float scores (off by accumulated rounding, far below
        the relative ``1e-9`` shortlist margin); the items within the margin of the best are
        rescored exactly: ``sum_v rho^-covered[v]`` over their unselected voters ``v``, as a
        :class:`fractions.Fraction` (``rho`` is a float, hence an exact rational).
        """
        masked = np.where(selected, -np.inf, score)
        top = float(masked.max())
        near = np.flatnonzero(masked >= top - 1e-9 * max(1.0, abs(top)))
        if near.size == 1:
            return int(near[0])
        rho = Fraction(self.rho)
        powers: dict[int, Fraction] = {}
        best, best_score = -1, Fraction(-1)
        for u in near.tolist():                                        # ascending index
            voters = self._voters[self._voter_ptr[u]:self._voter_ptr[u + 1]]
            levels, counts = np.unique(covered[voters[~selected[voters]]], return_counts=True)
            exact = Fraction(0)
            for c, m in zip(levels.tolist(), counts.tolist(), strict=True):
                if c not in powers:
                    powers[c] = 1 / rho**c
                exact += m * powers[c]
            if exact > best_score:                                     # strict: lowest wins
                best, best_score = u, exact
        return best
