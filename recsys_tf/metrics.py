"""Offline evaluation metrics, in plain numpy.

Ranking (click-through) metrics score a probability per impression:

* :func:`auc` - ROC AUC from rank statistics, ties get half credit.
* :func:`logloss` - mean binary cross entropy.
* :func:`gauc` - per-user AUC weighted by the user's impression count (DIN paper).

Top-k (retrieval) metrics take, per query, a ranked list of item ids and the set of relevant
items:

* :func:`recall_at_k`, :func:`hit_rate_at_k`, :func:`ndcg_at_k`, :func:`mrr`.

Beyond accuracy, over the recommended lists:

* :func:`coverage` - share of the catalogue that is ever recommended.
* :func:`diversity` - intra-list diversity (mean pairwise dissimilarity).

Every function returns a Python ``float``. Bad input raises ``ValueError`` naming the
argument, the value it got and what was expected. Nothing here imports TensorFlow.

Example::

    auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])            # 0.75
    recall_at_k([[3, 1, 2], [5, 6, 7]], [{1, 9}, {7}], k=2)   # (1/2 + 0/1) / 2 = 0.25
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from recsys_tf._arrays import as_1d as _as_1d
from recsys_tf._arrays import finite_1d as _finite_floats
from recsys_tf._arrays import same_length as _same_length

__all__ = [
    "auc",
    "logloss",
    "gauc",
    "recall_at_k",
    "hit_rate_at_k",
    "ndcg_at_k",
    "mrr",
    "coverage",
    "diversity",
]


# --------------------------------------------------------------------------- validation


def _binary_labels(labels):
    y = _finite_floats(labels, "labels")
    bad = (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(
            f"labels must be 0 or 1, got {np.unique(y[bad])[:5].tolist()}"
        )
    return y


def _check_k(k):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------- AUC family


def _average_ranks(x):
    """1-based ranks of ``x`` in ascending order; tied values share their average rank."""
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    change = np.empty(n, dtype=bool)
    change[:1] = True
    change[1:] = xs[1:] != xs[:-1]
    group = np.cumsum(change) - 1
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def _auc_or_nan(y, s):
    """AUC of validated float arrays; nan when only one class is present."""
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(_average_ranks(s)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auc(labels, scores):
    """Area under the ROC curve, from rank statistics (Mann-Whitney U).

    ``AUC = (sum of ranks of positives - P (P + 1) / 2) / (P N)`` where ranks are 1-based
    ascending ranks of ``scores``, tied scores share their average rank (so a tied
    positive/negative pair counts 1/2), ``P`` is the number of positives and ``N`` of
    negatives. Equivalently, the probability that a random positive outscores a random
    negative. ``O(n log n)``.

    Args:
      labels: 1-D array of 0/1 (or bool) labels.
      scores: 1-D array of finite scores, same length; any monotone scale.

    Returns:
      The AUC as a float in [0, 1].

    Raises:
      ValueError: on a length mismatch, non-binary labels, non-finite scores, or when
        ``labels`` holds only one class (AUC is undefined).

    Example:
      >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
      0.75
      >>> auc([0, 1], [0.5, 0.5])
      0.5
    """
    y = _binary_labels(labels)
    s = _finite_floats(scores, "scores")
    _same_length(y, "labels", s, "scores")
    if len(y) == 0:
        raise ValueError("labels is empty; AUC needs at least one positive and one negative")
    value = _auc_or_nan(y, s)
    if np.isnan(value):
        only = int(y[0])
        raise ValueError(
            f"labels holds only class {only} ({len(y)} examples); AUC needs at least one "
            "positive and one negative"
        )
    return value


def logloss(labels, probs, eps=1e-7):
    """Mean binary cross entropy.

    ``logloss = -mean(y log p + (1 - y) log(1 - p))`` with ``p`` clipped to
    ``[eps, 1 - eps]`` so that confident mistakes cost ``-log(eps)`` instead of infinity.

    Args:
      labels: 1-D array of labels in [0, 1] (0/1, or soft labels).
      probs: 1-D array of predicted probabilities in [0, 1], same length.
      eps: clipping margin, in (0, 0.5).

    Returns:
      The mean log loss (natural log) as a float.

    Example:
      >>> round(logloss([1, 0], [0.5, 0.5]), 6)   # log(2)
      0.693147
    """
    if not (0 < eps < 0.5):
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    y = _finite_floats(labels, "labels")
    p = _finite_floats(probs, "probs")
    _same_length(y, "labels", p, "probs")
    if len(y) == 0:
        raise ValueError("labels is empty; logloss needs at least one example")
    if ((y < 0) | (y > 1)).any():
        raise ValueError(f"labels must be in [0, 1], got min {y.min()} and max {y.max()}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(
            f"probs must be probabilities in [0, 1], got min {p.min()} and max {p.max()} "
            "(pass sigmoid(logits), not logits)"
        )
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def gauc(user_ids, labels, scores):
    """Group AUC: per-user AUC averaged with weights = the user's impression count.

    ``GAUC = sum_u n_u AUC_u / sum_u n_u`` over the users ``u`` whose impressions contain
    both a positive and a negative (AUC is undefined otherwise); ``n_u`` is the number of
    impressions of user ``u``. As defined in Zhou et al., "Deep Interest Network for
    Click-Through Rate Prediction", KDD 2018. Vectorised over users, ``O(n log n)``.

    Args:
      user_ids: 1-D array of user ids (ints or strings), one per impression.
      labels: 1-D array of 0/1 labels, same length.
      scores: 1-D array of finite scores, same length.

    Returns:
      The GAUC as a float in [0, 1].

    Raises:
      ValueError: on a length mismatch or bad labels/scores, or when no user has both a
        positive and a negative impression.

    Example:
      >>> gauc(["a", "a", "b", "b", "b", "c"],
      ...      [1, 0, 1, 0, 0, 1],
      ...      [0.9, 0.1, 0.2, 0.5, 0.1, 0.3])   # (2 * 1.0 + 3 * 0.5) / 5; "c" skipped
      0.7
    """
    u = _as_1d(user_ids, "user_ids")
    y = _binary_labels(labels)
    s = _finite_floats(scores, "scores")
    _same_length(u, "user_ids", y, "labels")
    _same_length(y, "labels", s, "scores")
    if len(y) == 0:
        raise ValueError("labels is empty; GAUC needs at least one user with both classes")

    _, inv = np.unique(u, return_inverse=True)
    inv = inv.reshape(-1)
    n_users = int(inv.max()) + 1
    counts = np.bincount(inv, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(inv, weights=y, minlength=n_users)
    n_neg = counts - n_pos

    # Sort by user, then score: tie groups are runs of equal (user, score).
    order = np.lexsort((s, inv))
    inv_s, s_s, y_s = inv[order], s[order], y[order]
    n = len(order)
    change = np.empty(n, dtype=bool)
    change[:1] = True
    change[1:] = (inv_s[1:] != inv_s[:-1]) | (s_s[1:] != s_s[:-1])
    group = np.cumsum(change) - 1
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    user_start = np.concatenate([[0.0], np.cumsum(counts)[:-1]])
    # Average 1-based rank inside the user's own block.
    avg_rank = (starts + ends + 1) / 2.0 - user_start[inv_s[starts]]
    ranks = avg_rank[group]
    rank_sum_pos = np.bincount(inv_s, weights=ranks * y_s, minlength=n_users)

    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        raise ValueError(
            f"no user among {n_users} has both a positive and a negative impression; "
            "GAUC is undefined"
        )
    p, q = n_pos[valid], n_neg[valid]
    user_auc = (rank_sum_pos[valid] - p * (p + 1) / 2.0) / (p * q)
    w = counts[valid]
    return float(np.sum(w * user_auc) / np.sum(w))


# --------------------------------------------------------------------------- top-k metrics


def _is_collection(x):
    return isinstance(x, Iterable) and not isinstance(x, (str, bytes))


def _kind(arr):
    if arr.dtype.kind in "biuf":
        return "number"
    if arr.dtype.kind in "US":
        return "string"
    return "other"


def _hits(ranked_items, relevant, k):
    """Hit matrix ``[n_queries, k]`` (first occurrences only) and relevant-set sizes.

    ``k=None`` uses the full width of ``ranked_items``.
    """
    try:
        ranked = np.asarray(ranked_items)
    except ValueError:
        raise ValueError(
            "ranked_items must be rectangular [n_queries, n_ranked]; got rows of different "
            "lengths"
        ) from None
    if ranked.ndim != 2:
        raise ValueError(
            f"ranked_items must be 2-D [n_queries, n_ranked], got shape {ranked.shape}"
        )
    n, width = ranked.shape
    if k is None:
        k = width
    if width < k:
        raise ValueError(f"ranked_items has {width} columns but k={k}; need at least k")
    top = ranked[:, :k]

    # Flatten relevant into (query index, item) pairs.
    if isinstance(relevant, np.ndarray) and relevant.ndim == 1 and relevant.dtype != object:
        rel_q = np.arange(len(relevant))
        rel_items = relevant
        n_rel_queries = len(relevant)
    elif isinstance(relevant, np.ndarray) and relevant.ndim == 2:
        rel_q = np.repeat(np.arange(relevant.shape[0]), relevant.shape[1])
        rel_items = relevant.reshape(-1)
        n_rel_queries = relevant.shape[0]
    else:
        if not _is_collection(relevant):
            raise ValueError(
                "relevant must be a list of sets/lists (or a 1-D array with one item per "
                f"query), got {type(relevant).__name__}"
            )
        relevant = list(relevant)
        n_rel_queries = len(relevant)
        q_list, item_list = [], []
        for q, r in enumerate(relevant):
            if isinstance(r, np.ndarray):
                items = np.ravel(r).tolist()
            elif _is_collection(r):
                items = list(r)
            else:
                items = [r]
            q_list.extend([q] * len(items))
            item_list.extend(items)
        rel_q = np.asarray(q_list, dtype=np.int64)
        rel_items = np.asarray(item_list) if item_list else np.empty(0, dtype=top.dtype)
    if n_rel_queries != n:
        raise ValueError(
            f"ranked_items has {n} queries (rows) but relevant has {n_rel_queries}; "
            "they must be the same length"
        )
    if len(rel_items) == 0:
        raise ValueError("no query has any relevant item; the metric is undefined")
    if {_kind(top), _kind(rel_items)} == {"number", "string"}:
        raise ValueError(
            f"ranked_items holds {top.dtype} ids but relevant holds {rel_items.dtype} ids; "
            "use the same id type in both"
        )

    # Map every id to an integer code, then to a per-query key q * n_codes + code.
    _, codes = np.unique(np.concatenate([top.reshape(-1), rel_items]), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    n_codes = int(codes.max()) + 1 if len(codes) else 1
    top_keys = np.arange(n, dtype=np.int64)[:, None] * n_codes + codes[: top.size].reshape(n, k)
    rel_keys = np.unique(rel_q.astype(np.int64) * n_codes + codes[top.size:])
    n_rel = np.bincount(rel_keys // n_codes, minlength=n)

    hits = np.isin(top_keys, rel_keys)
    # A repeated id in one ranked list counts once (at its first position).
    first = np.zeros(top_keys.size, dtype=bool)
    first[np.unique(top_keys.reshape(-1), return_index=True)[1]] = True
    hits &= first.reshape(n, k)
    return hits, n_rel


def recall_at_k(ranked_items, relevant, k):
    """Mean recall@k.

    ``recall@k(q) = |top_k(q) ∩ rel(q)| / |rel(q)|``, averaged over the queries with at
    least one relevant item (the others are skipped).

    Args:
      ranked_items: ``[n_queries, >= k]`` item ids (2-D array or list of equal-length
        lists), best first.
      relevant: per query, a set/list of relevant ids; or a 1-D array with a single
        relevant id per query.
      k: cut-off, a positive int.

    Returns:
      Mean recall@k as a float in [0, 1].

    Example:
      >>> recall_at_k([[3, 1, 2], [5, 6, 7]], [{1, 9}, {7}], k=2)
      0.25
    """
    k = _check_k(k)
    hits, n_rel = _hits(ranked_items, relevant, k)
    ok = n_rel > 0
    return float(np.mean(hits[ok].sum(axis=1) / n_rel[ok]))


def hit_rate_at_k(ranked_items, relevant, k):
    """Mean hit rate@k (top-k categorical accuracy).

    ``hit@k(q) = 1`` if any relevant item is in the top ``k``, else 0; averaged over the
    queries with at least one relevant item.

    Args:
      ranked_items: ``[n_queries, >= k]`` item ids, best first.
      relevant: per query a set/list of relevant ids, or a 1-D array of one id per query.
      k: cut-off, a positive int.

    Returns:
      The hit rate as a float in [0, 1].

    Example:
      >>> hit_rate_at_k([[3, 1, 2], [5, 6, 7]], [1, 7], k=2)
      0.5
    """
    k = _check_k(k)
    hits, n_rel = _hits(ranked_items, relevant, k)
    ok = n_rel > 0
    return float(np.mean(hits[ok].any(axis=1)))


def ndcg_at_k(ranked_items, relevant, k):
    """Mean NDCG@k with binary relevance.

    ``DCG@k = sum_{i=1..k} rel_i / log2(i + 1)``, ``IDCG@k = sum_{i=1..min(|rel|, k)}
    1 / log2(i + 1)``, ``NDCG@k = DCG@k / IDCG@k``; averaged over the queries with at least
    one relevant item.

    Args:
      ranked_items: ``[n_queries, >= k]`` item ids, best first.
      relevant: per query a set/list of relevant ids, or a 1-D array of one id per query.
      k: cut-off, a positive int.

    Returns:
      Mean NDCG@k as a float in [0, 1].

    Example:
      >>> round(ndcg_at_k([[4, 1, 2]], [{1, 2}], k=3), 4)   # (1/log2 3 + 1/2) / (1 + 1/log2 3)
      0.6934
    """
    k = _check_k(k)
    hits, n_rel = _hits(ranked_items, relevant, k)
    ok = n_rel > 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits[ok] @ discounts
    ideal = np.cumsum(discounts)[np.minimum(n_rel[ok], k) - 1]
    return float(np.mean(dcg / ideal))


def mrr(ranked_items, relevant, k=None):
    """Mean reciprocal rank.

    ``RR(q) = 1 / (1-based position of the first relevant item)``, or 0 when no relevant
    item is in the (first ``k`` of the) list; averaged over the queries with at least one
    relevant item.

    Args:
      ranked_items: ``[n_queries, n_ranked]`` item ids, best first.
      relevant: per query a set/list of relevant ids, or a 1-D array of one id per query.
      k: optional cut-off (MRR@k); default the whole list.

    Returns:
      The MRR as a float in [0, 1].

    Example:
      >>> mrr([[3, 1, 2], [5, 6, 7], [8, 9, 4]], [{1}, {5, 7}, {0}])   # (1/2 + 1 + 0) / 3
      0.5
    """
    if k is not None:
        k = _check_k(k)
    hits, n_rel = _hits(ranked_items, relevant, k)
    ok = n_rel > 0
    h = hits[ok]
    found = h.any(axis=1)
    first = np.argmax(h, axis=1)
    rr = np.where(found, 1.0 / (first + 1.0), 0.0)
    return float(np.mean(rr))


# --------------------------------------------------------------------------- beyond accuracy


def coverage(recommended_lists, n_items):
    """Catalogue coverage.

    ``coverage = |union of all recommended items| / n_items``.

    Args:
      recommended_lists: iterable of per-user recommendation lists (may differ in length).
      n_items: catalogue size, a positive int.

    Returns:
      Coverage as a float in [0, 1].

    Raises:
      ValueError: if ``n_items`` is not positive or is smaller than the number of distinct
        recommended items.

    Example:
      >>> coverage([[1, 2, 3], [2, 3, 4]], n_items=10)
      0.4
    """
    if isinstance(n_items, (bool, np.bool_)) or not isinstance(n_items, (int, np.integer)) \
            or n_items < 1:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    if isinstance(recommended_lists, np.ndarray):
        distinct = len(np.unique(recommended_lists))
    else:
        seen = set()
        for row in recommended_lists:
            seen.update(np.ravel(row).tolist() if isinstance(row, np.ndarray) else row)
        distinct = len(seen)
    if distinct > n_items:
        raise ValueError(
            f"{distinct} distinct items were recommended but n_items={n_items}; n_items "
            "must be the catalogue size"
        )
    return distinct / int(n_items)


def _lookup(table, items, name):
    if isinstance(table, Mapping):
        try:
            return [table[i] for i in items]
        except KeyError as e:
            raise ValueError(f"item {e.args[0]!r} is missing from {name}") from None
    arr = np.asarray(table)
    idx = np.asarray(items)
    if idx.dtype.kind not in "iu":
        raise ValueError(
            f"{name} is an array, so item ids must be integer row indices; got dtype "
            f"{idx.dtype} (pass a dict to look up other ids)"
        )
    if len(idx) and (idx.min() < 0 or idx.max() >= len(arr)):
        raise ValueError(
            f"item id out of range for {name} with {len(arr)} rows: "
            f"min {idx.min()}, max {idx.max()}"
        )
    return arr[idx]


def diversity(recommended_lists, categories=None, embeddings=None):
    """Intra-list diversity: mean pairwise dissimilarity inside each list, averaged.

    ``ILD(L) = mean_{i < j in L} d(i, j)`` with ``d(i, j) = 1 - cos(e_i, e_j)`` when
    ``embeddings`` are given, or ``d(i, j) = 1[category_i != category_j]`` when
    ``categories`` are given (exactly one of the two). Lists with fewer than two items are
    skipped; the result is the mean of ``ILD`` over the remaining lists. A zero embedding
    vector has cosine similarity 0 with everything.

    Args:
      recommended_lists: iterable of per-user recommendation lists (may differ in length).
      categories: mapping item id -> category, or a 1-D array indexed by integer item id.
      embeddings: mapping item id -> vector, or a 2-D array ``[n_items, d]`` indexed by
        integer item id.

    Returns:
      The mean intra-list diversity as a float (in [0, 1] for categories, [0, 2] for
      embeddings).

    Example:
      >>> diversity([[0, 1, 2]], categories={0: "a", 1: "a", 2: "b"})   # pairs: 0, 1, 1
      0.6666666666666666
      >>> diversity([[0, 1]], embeddings=[[1.0, 0.0], [0.0, 1.0]])
      1.0
    """
    if (categories is None) == (embeddings is None):
        raise ValueError("pass exactly one of categories= or embeddings=")
    values = []
    for row in recommended_lists:
        items = np.ravel(row).tolist() if isinstance(row, np.ndarray) else list(row)
        m = len(items)
        if m < 2:
            continue
        iu = np.triu_indices(m, k=1)
        if embeddings is not None:
            e = np.asarray(_lookup(embeddings, items, "embeddings"), dtype=np.float64)
            if e.ndim != 2:
                raise ValueError(
                    f"embeddings must give one vector per item, got shape {e.shape} for a "
                    f"list of {m} items"
                )
            norms = np.linalg.norm(e, axis=1, keepdims=True)
            e = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
            d = 1.0 - (e @ e.T)[iu]
        else:
            c = np.asarray(_lookup(categories, items, "categories"), dtype=object)
            d = (c[:, None] != c[None, :])[iu].astype(np.float64)
        values.append(d.mean())
    if not values:
        raise ValueError("no recommended list has two or more items; diversity is undefined")
    return float(np.mean(values))
