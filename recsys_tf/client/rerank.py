"""Re-ranking primitives: the last stage of retrieve -> rank -> re-rank.

Pure functions on numpy arrays that describe one list of candidates (all arrays indexed by
candidate position ``0..n-1``). Each returns a new array and leaves its inputs untouched,
so a caller that wants to explain a result can diff before and after (for example
``boost(s, mask, factor=1.2) - s`` is the boost each item received).

* :func:`filter_mask` - keep-mask that drops seen or blocked items.
* :func:`blend` - mix retrieval and ranking scores.
* :func:`calibrate` - temperature / bias scaling of probabilities on the logit scale.
* :func:`boost`, :func:`freshness_boost` - business-rule and recency boosts.
* :func:`category_cap` - at most ``cap`` items per category in an ordering (one cap for
  all categories, or one per category).
* :func:`mmr` - Maximal Marginal Relevance diversification, optionally under category caps.
* :func:`redundancy` - how similar each picked item is to the ones picked before it (the
  penalty MMR weighed), for explanations.
* :func:`perturb`, :func:`explore` - seeded softmax sampling without replacement (Gumbel top-k).

Example::

    keep = filter_mask(item_ids, seen)
    ids, ret, rnk, cats = item_ids[keep], ret[keep], rnk[keep], cats[keep]
    scores = blend(ret, rnk, weight=0.2)
    order = mmr(scores, k=50, diversity=0.3, categories=cats)
    order = category_cap(order, cats, cap=3)[:10]
    top_ids, top_scores = ids[order], scores[order]

Nothing here imports TensorFlow or any model code: the only package import is the
numpy-only validation helpers in :mod:`recsys_tf._arrays`, shared with :mod:`recsys_tf.metrics`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from recsys_tf._arrays import finite_1d, numeric_1d
from recsys_tf._arrays import same_length as _same_length

__all__ = [
    "filter_mask",
    "blend",
    "calibrate",
    "boost",
    "freshness_boost",
    "category_cap",
    "mmr",
    "unit_rows",
    "redundancy",
    "perturb",
    "explore",
]


# --------------------------------------------------------------------------- helpers


def _scores(x, name="scores"):
    return finite_1d(x, name)


def _minmax(x):
    """Min-max normalise to [0, 1]; a constant (or empty) vector maps to zeros."""
    if len(x) == 0:
        return x.copy()
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _check_k(k):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    return int(k)


def _plain_id(x):
    """Hashable plain Python id; bytes are decoded as UTF-8 so b"a" matches "a"."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bytes):
        return x.decode("utf-8")
    return x


def _codes(values):
    """Integer codes for arbitrary hashable values (equal values -> equal codes)."""
    table = {}
    return np.fromiter(
        (table.setdefault(_plain_id(v), len(table)) for v in values),
        dtype=np.int64,
        count=len(values),
    )


def _codes_and_values(values):
    """Like :func:`_codes`, plus the distinct values in code order."""
    table = {}
    codes = np.fromiter(
        (table.setdefault(_plain_id(v), len(table)) for v in values),
        dtype=np.int64,
        count=len(values),
    )
    return codes, list(table)


def _check_cap(value, what):
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < 0
    ):
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def _cap_limits(cap, distinct, default=None):
    """Per-category limits (float, ``inf`` = uncapped) for the categories in ``distinct``.

    ``cap`` is one int for every category, or a mapping ``{category: int}`` where a category
    that is not listed gets ``default`` (None = uncapped).
    """
    if isinstance(cap, Mapping):
        caps = {_plain_id(c): _check_cap(v, f"cap for category {c!r}") for c, v in cap.items()}
        fallback = np.inf if default is None else _check_cap(default, "default")
        return np.array([caps.get(c, fallback) for c in distinct], dtype=np.float64)
    return np.full(len(distinct), _check_cap(cap, "cap"), dtype=np.float64)


def _stable_desc(scores):
    """Indices sorting scores descending; ties keep ascending index order."""
    return np.argsort(-scores, kind="stable")


# --------------------------------------------------------------------------- filtering


def filter_mask(item_ids, exclude):
    """Keep-mask for a candidate list: ``False`` where the item is in ``exclude``.

    Use it to drop items the user has already seen or that are blocked. Ids are compared
    by value; ``bytes`` ids (as decoded from string tensors) are compared as UTF-8 text, so
    ``b"i1"`` matches ``"i1"``. An integer id never matches its string spelling.

    Args:
      item_ids: 1-D array or list of candidate ids (strings, bytes or ints).
      exclude: any iterable of ids to drop (set, list, array, generator); may be empty.

    Returns:
      Boolean array, same length as ``item_ids``; ``True`` = keep.

    Example:
      >>> filter_mask(["a", "b", "c"], {"b"}).tolist()
      [True, False, True]
      >>> filter_mask(np.array([b"a", b"b"]), ["a"]).tolist()
      [False, True]
    """
    ids = np.asarray(item_ids)
    if ids.ndim != 1:
        raise ValueError(f"item_ids must be 1-D, got an array of shape {ids.shape}")
    if isinstance(exclude, (str, bytes)):
        raise ValueError(
            f"exclude must be an iterable of ids, got the single string {exclude!r} "
            "(wrap it in a list)"
        )
    if isinstance(exclude, np.ndarray):
        exclude = exclude.ravel()
    drop = {_plain_id(x) for x in exclude}
    return np.fromiter(
        (_plain_id(x) not in drop for x in ids), dtype=bool, count=len(ids)
    )


# --------------------------------------------------------------------------- scoring


def blend(retrieval_scores, ranking_scores, weight=0.0):
    """Blend retrieval and ranking scores into one final score.

    ``final = (1 - weight) * minmax(ranking) + weight * minmax(retrieval)`` where
    ``minmax(x) = (x - min x) / (max x - min x)`` over this candidate list (a constant
    vector maps to 0). The two stages score on different scales (dot products vs
    probabilities), hence the normalisation.

    ``weight=0`` returns ``ranking_scores`` unchanged (as float64), so calibrated
    probabilities pass through; it orders the candidates exactly as the normalised formula
    does (min-max is increasing). For ``weight > 0`` results are in [0, 1].

    Args:
      retrieval_scores: 1-D finite scores from the retrieval stage.
      ranking_scores: 1-D finite scores from the ranking model, same length.
      weight: share of the retrieval score, in [0, 1].

    Returns:
      1-D float64 array of final scores.

    Example:
      >>> blend([10.0, 0.0, 5.0], [0.2, 0.6, 0.4], weight=0.5).tolist()
      [0.5, 0.5, 0.5]
      >>> blend([10.0, 0.0, 5.0], [0.2, 0.6, 0.4]).tolist()
      [0.2, 0.6, 0.4]
    """
    if not (0.0 <= weight <= 1.0):
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    r = _scores(retrieval_scores, "retrieval_scores")
    s = _scores(ranking_scores, "ranking_scores")
    _same_length(r, "retrieval_scores", s, "ranking_scores")
    if weight == 0:
        return s.copy()
    return (1.0 - weight) * _minmax(s) + weight * _minmax(r)


def calibrate(p, temperature=1.0, bias=0.0, eps=1e-7):
    """Platt-style recalibration of probabilities on the logit scale.

    ``p' = sigmoid(logit(p) / temperature + bias)``, with ``p`` clipped to
    ``[eps, 1 - eps]`` before the logit. ``temperature > 1`` softens (pulls towards 0.5),
    ``< 1`` sharpens; ``bias`` shifts every logit (e.g. ``log`` of a negative-sampling
    rate correction). Order-preserving. Defaults return ``p`` up to the clipping.

    Args:
      p: 1-D array of probabilities in [0, 1].
      temperature: positive scale divisor.
      bias: added to the scaled logit.
      eps: clipping margin, in (0, 0.5).

    Returns:
      1-D float64 array of recalibrated probabilities.

    Example:
      >>> calibrate([0.5, 0.8], temperature=2.0).round(4).tolist()   # logit 0.8 = log 4
      [0.5, 0.6667]
    """
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if not np.isfinite(bias):
        raise ValueError(f"bias must be finite, got {bias!r}")
    if not (0 < eps < 0.5):
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    q = _scores(p, "p")
    if ((q < 0) | (q > 1)).any():
        raise ValueError(
            f"p must be probabilities in [0, 1], got min {q.min()} and max {q.max()}"
        )
    q = np.clip(q, eps, 1.0 - eps)
    z = (np.log(q) - np.log1p(-q)) / temperature + bias
    return 1.0 / (1.0 + np.exp(-z))


def boost(scores, mask, factor=1.0, add=0.0):
    """Boost (or demote) the items matching a rule.

    ``new_i = scores_i * factor + add`` where ``mask_i`` is true, ``scores_i`` elsewhere.
    A multiplicative ``factor`` is meant for non-negative scores (probabilities); on
    logits use ``add``. ``factor < 1`` or ``add < 0`` demotes.

    Args:
      scores: 1-D finite scores.
      mask: 1-D boolean array, same length: the items the rule applies to.
      factor: multiplier for matching items (finite, >= 0).
      add: offset for matching items (finite).

    Returns:
      1-D float64 array of new scores (the input is not modified).

    Example:
      >>> boost([0.5, 0.2, 0.4], [True, False, True], factor=2.0).tolist()
      [1.0, 0.2, 0.8]
      >>> boost([0.5, 0.2], [False, True], add=0.1).tolist()
      [0.5, 0.30000000000000004]
    """
    s = _scores(scores)
    m = np.asarray(mask)
    if m.ndim != 1 or m.dtype != bool:
        raise ValueError(
            f"mask must be a 1-D boolean array, got dtype {m.dtype} and shape {m.shape} "
            "(build it with a comparison, e.g. categories == 'news')"
        )
    _same_length(s, "scores", m, "mask")
    if not (np.isfinite(factor) and factor >= 0):
        raise ValueError(f"factor must be a finite number >= 0, got {factor!r}")
    if not np.isfinite(add):
        raise ValueError(f"add must be finite, got {add!r}")
    return np.where(m, s * factor + add, s)


def freshness_boost(scores, age, half_life, strength):
    """Multiplicative recency boost that halves every ``half_life``.

    ``new_i = scores_i * (1 + strength * 0.5 ** (age_i / half_life))``: a brand-new item
    gets ``x (1 + strength)``, one ``half_life`` old ``x (1 + strength / 2)``, old items
    tend to ``x 1``. Negative ages (clock skew) count as 0; a NaN age (unknown) gets no
    boost. Meant for non-negative scores (probabilities).

    Args:
      scores: 1-D finite scores.
      age: 1-D item ages, same length, in the same unit as ``half_life``.
      half_life: positive, finite.
      strength: maximum relative boost, finite and >= 0.

    Returns:
      1-D float64 array of new scores.

    Example:
      >>> freshness_boost([1.0, 1.0, 1.0], age=[0.0, 24.0, np.nan],
      ...                 half_life=24.0, strength=1.0).tolist()
      [2.0, 1.5, 1.0]
    """
    s = _scores(scores)
    a = numeric_1d(age, "age")
    _same_length(s, "scores", a, "age")
    if not (np.isfinite(half_life) and half_life > 0):
        raise ValueError(f"half_life must be a positive finite number, got {half_life!r}")
    if not (np.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    decay = np.exp2(-np.maximum(a, 0.0) / half_life)  # inf age -> 0
    decay = np.where(np.isnan(a), 0.0, decay)
    return s * (1.0 + strength * decay)


# --------------------------------------------------------------------------- ordering


def category_cap(order, categories, cap, default=None):
    """Keep at most ``cap`` items per category, preserving the order (stable).

    Walks ``order`` front to back and drops an item once the cap of its category is reached.

    Args:
      order: 1-D indices into the candidate arrays, best first (e.g. from :func:`mmr` or
        ``np.argsort(-scores)``).
      categories: per-candidate categories, indexed by candidate index (not by position
        in ``order``); any hashable values.
      cap: non-negative int (the same cap for every category), or a mapping
        ``{category: cap}`` for per-category caps.
      default: with a mapping, the cap of categories it does not list (None = uncapped).

    Returns:
      1-D int64 array: the kept subsequence of ``order``.

    Example:
      >>> category_cap([3, 0, 2, 1], ["a", "b", "a", "a"], cap=1).tolist()
      [3, 1]
      >>> category_cap([3, 0, 2, 1], ["a", "b", "a", "a"], cap={"a": 2, "b": 0}).tolist()
      [3, 0]
    """
    if not isinstance(cap, Mapping):
        _check_cap(cap, "cap")
    idx = np.asarray(order)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(
            f"order must be a 1-D array of integer indices, got dtype {idx.dtype} and "
            f"shape {idx.shape}"
        )
    idx = idx.astype(np.int64)
    cats = np.asarray(categories, dtype=object)
    if cats.ndim != 1:
        raise ValueError(f"categories must be 1-D, got an array of shape {cats.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= len(cats)):
        raise ValueError(
            f"order holds indices from {idx.min()} to {idx.max()} but categories has "
            f"{len(cats)} elements"
        )
    codes, distinct = _codes_and_values(cats)
    limits = _cap_limits(cap, distinct, default)
    seen = np.zeros(len(distinct), dtype=np.int64)
    keep = np.zeros(len(idx), dtype=bool)
    for pos, i in enumerate(idx):
        c = codes[i]
        if seen[c] < limits[c]:
            seen[c] += 1
            keep[pos] = True
    return idx[keep]


def unit_rows(embeddings, name="embeddings"):
    """``embeddings`` as float64 rows scaled to unit length (zero rows stay zero): the
    vectors whose dot products :func:`mmr` takes as cosine similarities. ValueError unless a
    finite ``[n, d]`` array."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d], got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError(f"{name} must be finite")
    norms = np.sqrt(np.einsum("ij,ij->i", e, e))[:, None]
    return np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)


def mmr(scores, k, diversity=0.0, embeddings=None, categories=None, cap=None,
        cap_categories=None, cap_default=None, return_redundancy=False, unit=False):
    """Maximal Marginal Relevance: pick ``k`` relevant but mutually dissimilar items.

    Greedy: at each step pick, among the items not yet chosen,

        argmax_i  (1 - diversity) * rel_i - diversity * max_{j chosen} sim(i, j)

    where ``rel`` is ``scores`` min-max normalised to [0, 1] over the candidates and
    ``sim`` is the cosine similarity of ``embeddings`` if given, else
    ``1[category_i == category_j]`` from ``categories``. The max over an empty set is 0,
    so the first pick is the top-scored item. Ties in the objective go to the higher
    score, then the lower index. A zero embedding has similarity 0 with everything.

    ``diversity=0`` returns exactly the stable descending sort of ``scores`` (ties by
    index), and needs neither embeddings nor categories. ``O(n k)`` (plus ``O(n k d)`` for
    embeddings): each step updates the running max-similarity with one vector.

    With ``cap``, an item whose category (``cap_categories``, default ``categories``) has
    reached its cap is never picked: the greedy runs over the items still allowed, so the
    result is the MMR list under the caps, not a truncated one. Fewer than ``k`` items come
    back when the caps leave fewer. With ``diversity=0`` this equals
    ``category_cap(stable descending sort, cap_categories, cap)[:k]``.

    Args:
      scores: 1-D finite relevance scores for ``n`` candidates.
      k: number of items to pick; ``k > n`` returns all ``n``.
      diversity: trade-off in [0, 1]; 0 = pure relevance, 1 = pure novelty.
      embeddings: optional ``[n, d]`` item vectors.
      categories: optional ``n`` category values (any hashable), used when no embeddings.
      cap: optional per-category cap: an int, or ``{category: int}`` (see
        :func:`category_cap`).
      cap_categories: the ``n`` categories the cap counts (default ``categories``).
      cap_default: with a mapping ``cap``, the cap of unlisted categories (None = uncapped).
      return_redundancy: also return each pick's :func:`redundancy` (its largest similarity
        to the items picked before it), taken from the greedy's own running maximum; None
        when ``diversity`` is 0.
      unit: ``embeddings`` are :func:`unit_rows` already (e.g. normalised once when an item
        table is loaded) and are used as they are: no copy, check or normalisation per call.

    Returns:
      1-D int64 array of at most ``k`` candidate indices, in pick order (and, with
      ``return_redundancy``, the float64 redundancies of those picks).

    Example:
      >>> mmr([0.9, 0.8, 0.3], k=2, diversity=0.5, categories=["a", "a", "b"]).tolist()
      [0, 2]
      >>> mmr([0.9, 0.8, 0.3], k=2).tolist()
      [0, 1]
      >>> mmr([0.9, 0.8, 0.7, 0.1], k=3, categories=["a", "a", "a", "b"], cap=2).tolist()
      [0, 1, 3]
    """
    s = _scores(scores)
    k = _check_k(k)
    if not (0.0 <= diversity <= 1.0):
        raise ValueError(f"diversity must be in [0, 1], got {diversity!r}")
    n = len(s)
    k = min(k, n)

    sim_vectors = sim_codes = None
    if embeddings is not None:
        shape = np.shape(embeddings)
        if len(shape) != 2 or shape[0] != n:
            raise ValueError(
                f"embeddings must have shape [n, d] with n={n} (one row per score), got "
                f"shape {shape}"
            )
        sim_vectors = np.asarray(embeddings) if unit else unit_rows(embeddings)
    elif categories is not None:
        cats = np.asarray(categories, dtype=object)
        if cats.ndim != 1:
            raise ValueError(f"categories must be 1-D, got an array of shape {cats.shape}")
        _same_length(s, "scores", cats, "categories")
        sim_codes = _codes(cats)

    cap_codes = limits = None
    if cap is not None:
        cc = categories if cap_categories is None else cap_categories
        if cc is None:
            raise ValueError("cap= needs categories= or cap_categories= to count per category")
        cc = np.asarray(cc, dtype=object)
        if cc.ndim != 1:
            raise ValueError(f"cap_categories must be 1-D, got an array of shape {cc.shape}")
        _same_length(s, "scores", cc, "cap_categories")
        cap_codes, distinct = _codes_and_values(cc)
        limits = _cap_limits(cap, distinct, cap_default)

    if diversity == 0 or k == 0:
        order = _stable_desc(s)
        if cap_codes is not None:
            order = category_cap(order, cap_categories if cap_categories is not None
                                 else categories, cap, cap_default)
        order = order[:k].astype(np.int64)
        if return_redundancy:
            return order, (None if diversity == 0 else np.zeros(0))
        return order
    if sim_vectors is None and sim_codes is None:
        raise ValueError(
            f"diversity={diversity} needs embeddings= or categories= to measure similarity"
        )

    # Work in the order of descending score (ties: lower index first), so that the first
    # maximum of the objective is the tie-break the docstring promises: higher score, then
    # lower index. ``base`` is the relevance term, -inf once an item is chosen or capped out.
    perm = _stable_desc(s)
    base = (1.0 - diversity) * _minmax(s)[perm]
    vectors = None if sim_vectors is None else sim_vectors[perm]
    codes = None if sim_codes is None else sim_codes[perm]
    caps = None if cap_codes is None else cap_codes[perm]
    counts = None if caps is None else np.zeros(len(limits), dtype=np.int64)
    if caps is not None:
        base[limits[caps] <= 0] = -np.inf
    max_sim = obj = None
    picks, redundant = [], []
    for step in range(k):
        if step:
            obj = np.subtract(base, diversity * max_sim, out=obj)
        else:                                      # the max over an empty set is 0
            obj = base.copy()
        pick = int(obj.argmax())
        if obj[pick] == -np.inf:                   # nothing left that the caps allow
            break
        picks.append(pick)
        redundant.append(0.0 if max_sim is None else float(max_sim[pick]))
        base[pick] = -np.inf
        if counts is not None:
            c = caps[pick]
            counts[c] += 1
            if counts[c] >= limits[c]:
                base[caps == c] = -np.inf
        if vectors is not None:
            sim = vectors @ vectors[pick]
        else:
            sim = (codes == codes[pick]).astype(np.float64)
        max_sim = sim if max_sim is None else np.maximum(max_sim, sim, out=max_sim)
    order = perm[np.asarray(picks, dtype=np.int64)].astype(np.int64)
    if return_redundancy:
        return order, np.asarray(redundant, dtype=np.float64)
    return order


def redundancy(order, embeddings=None, categories=None):
    """Each picked item's largest similarity to the items picked before it.

    The quantity MMR penalises: for the item at position ``p`` of ``order``,
    ``max_{q < p} sim(order[p], order[q])`` (0 for the first), with ``sim`` the cosine
    similarity of ``embeddings`` or, without them, ``1[category equal]``. Multiplied by the
    ``diversity`` it is the penalty the item paid when it was picked.

    Args:
      order: 1-D candidate indices, in pick order.
      embeddings: ``[n, d]`` item vectors (indexed by candidate index), or
      categories: ``n`` category values.

    Returns:
      1-D float64 array, one value per position of ``order``.

    Example:
      >>> redundancy([0, 2, 1], categories=["a", "a", "b"]).tolist()
      [0.0, 0.0, 1.0]
      >>> redundancy([0, 1], embeddings=[[1.0, 0.0], [1.0, 1.0]]).round(4).tolist()
      [0.0, 0.7071]
    """
    idx = np.asarray(order)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"order must be 1-D integer indices, got shape {idx.shape}")
    idx = idx.astype(np.int64)
    if embeddings is not None:
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim != 2:
            raise ValueError(f"embeddings must have shape [n, d], got shape {e.shape}")
        if idx.size and idx.max() >= len(e):
            raise ValueError(f"order holds index {idx.max()} but embeddings has {len(e)} rows")
        v = unit_rows(e[idx])
        sim = v @ v.T
    elif categories is not None:
        cats = np.asarray(categories, dtype=object)
        if idx.size and idx.max() >= len(cats):
            raise ValueError(f"order holds index {idx.max()} but categories has {len(cats)}")
        codes = _codes(cats)[idx]
        sim = (codes[:, None] == codes[None, :]).astype(np.float64)
    else:
        raise ValueError("redundancy needs embeddings= or categories=")
    out = np.zeros(len(idx))
    for p in range(1, len(idx)):
        out[p] = sim[p, :p].max()
    return out


def perturb(scores, temperature=1.0, seed=None):
    """Gumbel sampling keys: ``scores / T + Gumbel(0, 1)`` noise (one draw per item).

    Sorting the keys descending draws the items by softmax sampling without replacement
    (see :func:`explore`, which is the top ``k`` of these keys); feeding them to :func:`mmr`
    as relevance gives diversified exploration. ``temperature=0`` returns the scores
    unchanged (as float64). The same ``seed`` gives the same keys.

    Example:
      >>> perturb([3.0, 1.0], temperature=0).tolist()
      [3.0, 1.0]
    """
    s = _scores(scores)
    if not (temperature >= 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if temperature == 0:
        return s.copy()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return s / temperature + rng.gumbel(size=len(s))


def explore(scores, k, temperature=1.0, seed=None):
    """Seeded softmax sampling of ``k`` items without replacement (Gumbel top-k).

    Treats ``scores`` as logits: draws item ``i`` first with probability
    ``exp(scores_i / T) / sum_j exp(scores_j / T)``, then the next among the rest with the
    renormalised probabilities, and so on. Implemented as the top ``k`` of
    ``scores / T + Gumbel(0, 1)`` noise, which is equivalent. ``temperature=0`` is greedy
    (the stable descending sort). The same ``seed`` gives the same result.

    Args:
      scores: 1-D finite scores (logits; pass ``log(p)`` to sample proportionally to p).
      k: number of items; ``k > n`` returns a permutation of all ``n``.
      temperature: >= 0; higher explores more.
      seed: int, ``None`` (fresh randomness) or a ``numpy.random.Generator``.

    Returns:
      1-D int64 array of ``min(k, n)`` distinct candidate indices, in draw order.

    Example:
      >>> explore([3.0, 1.0, 2.0], k=2, temperature=0).tolist()
      [0, 2]
    """
    s = _scores(scores)
    k = min(_check_k(k), len(s))
    keys = perturb(s, temperature, seed)
    return _stable_desc(keys)[:k].astype(np.int64)
