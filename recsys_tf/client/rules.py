"""Business rules, the client-side re-ranking stage that applies them, and the result types.

:class:`Rules` / :class:`Boost` describe what a request may return and how scores are nudged;
:func:`rerank_stage` turns candidate scores into the final top k (calibration, blending,
boosts, freshness, exploration, MMR diversity, per-category caps), each item with the reasons
for its place; :class:`Result` / :class:`Recommendation` carry the answer.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from recsys_tf.client import rerank

__all__ = ["Boost", "Rules", "Recommendation", "Result", "rerank_stage"]


# ------------------------------------------------------------------------------ rules / results
@dataclasses.dataclass(frozen=True)
class Boost:
    """A business-rule boost: ``score * factor + add`` for the matching candidates.

    A candidate matches when its id is in ``items`` or its item-table ``column`` value is in
    ``values``. ``factor < 1`` or ``add < 0`` demotes.
    """

    name: str
    factor: float = 1.0
    add: float = 0.0
    items: tuple = ()
    column: str | None = None
    values: tuple = ()

    def mask(self, ids, hydrated):
        m = np.zeros(len(ids), dtype=bool)
        if self.items:
            m |= ~rerank.filter_mask(ids, list(self.items))
        if self.column is not None:
            col = hydrated.get(self.column)
            if col is None:
                raise KeyError(f"boost {self.name!r}: the item table has no column "
                               f"{self.column!r}")
            m |= ~rerank.filter_mask(_hashable(col), list(self.values))
        return m


@dataclasses.dataclass(frozen=True)
class Rules:
    """Business rules applied to every request (``recommend(rules=...)`` overrides them).

    Args:
      exclude: item ids never to return.
      exclude_values: ``{item column: values}`` never to return, e.g. ``{"category": ["c3"]}``.
      category_cap: at most this many items per category in the answer: an int, or
        ``{category: int}`` (unlisted categories uncapped).
      cap_column: the item column the caps count (default: the table's category feature).
      boosts: :class:`Boost` rules, applied in order.
      freshness_column, freshness_half_life, freshness_strength: a recency boost
        ``x (1 + strength * 0.5 ** (age / half_life))`` from an item-table age column.
      calibration: ``(temperature, bias)`` applied to the ranker's probabilities.
    """

    exclude: tuple = ()
    exclude_values: Mapping = dataclasses.field(default_factory=dict)
    category_cap: object = None
    cap_column: str | None = None
    boosts: tuple = ()
    freshness_column: str | None = None
    freshness_half_life: float = 30.0
    freshness_strength: float = 0.0
    calibration: tuple | None = None

    def banned(self, exclude=(), seen=()) -> set:
        """The ids one request must not return: these rules' ``exclude``, the request's
        ``exclude`` and the user's ``seen`` items, as plain values (bytes decoded, numpy
        scalars as Python's)."""
        return {_plain(i) for group in (exclude, self.exclude, seen) for i in group}

    def allowed(self, hydrated, n):
        """Which of ``n`` candidates ``exclude_values`` lets through, from their hydrated
        columns: a bool array, or None when there is nothing to exclude by value."""
        if not self.exclude_values or not n:
            return None
        keep = np.ones(n, dtype=bool)
        for column, values in self.exclude_values.items():
            if column not in hydrated:
                raise KeyError(f"exclude_values: the item table has no column {column!r}")
            keep &= rerank.filter_mask(_hashable(hydrated[column]), list(values))
        return keep


@dataclasses.dataclass
class Recommendation:
    item_id: object
    final_score: float
    retrieval_score: float | None
    ranking_score: float | None
    category: object = None
    reasons: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Result:
    """One answer. ``degraded`` is None or says which fallback was used and why;
    ``timings_ms`` has one entry per stage (``user``, ``retrieval``, ``hydrate``, ``ranking``,
    ``rerank``, ``total``, and the client-side request building inside the two remote stages
    as ``retrieval_build`` / ``ranking_build``); ``models`` the served versions that answered.
    """

    user_id: object
    items: list
    degraded: str | None = None
    timings_ms: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)
    models: dict = dataclasses.field(default_factory=dict)
    failures: dict = dataclasses.field(default_factory=dict)
    retries: int = 0
    deadline_ms: float | None = None

    def to_dict(self):
        return _plain(dataclasses.asdict(self))


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, float) and x != x:
        return None
    return x


def _hashable(values):
    """An array of category-like values that filter_mask / mmr can hash (lists -> tuples)."""
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if arr.dtype == object and list in set(map(type, arr.tolist())):
        arr = np.array([tuple(v) if isinstance(v, list) else v for v in arr], dtype=object)
    return arr


# ------------------------------------------------------------------------------ re-ranking
def rerank_stage(ids, r_scores, p_scores, hydrated, retrieved, k, diversity, blend_weight,
                 rules, explore, seed, *, items, category, diversity_by):
    """Scores -> order -> the top k with their reasons (reasons are built for those only).

    ``items`` is the item store (its ``vectors`` feed MMR), ``category`` the item table's
    category column (or None) and ``diversity_by`` the Recommender's setting.
    """
    if not ids:
        return []
    r_scores = np.asarray(r_scores, dtype=np.float64)
    # relevance: ranker (calibrated, blended) or the candidates' own order
    calibrated = blended = None
    if p_scores is None:
        final = r_scores
    else:
        final = p_scores
        if rules.calibration is not None:
            temperature, bias = rules.calibration
            final = calibrated = rerank.calibrate(final, temperature=temperature, bias=bias)
        if blend_weight:
            final = blended = rerank.blend(r_scores, final, weight=blend_weight)

    # business rules: boosts, then freshness (each kept as a per-item delta)
    deltas = []
    for b in rules.boosts:
        before = final
        final = rerank.boost(final, b.mask(ids, hydrated), factor=b.factor, add=b.add)
        deltas.append((b.name, final - before))
    fresh = None
    if rules.freshness_column and rules.freshness_strength:
        if rules.freshness_column not in hydrated:
            raise KeyError(f"freshness: the item table has no column "
                           f"{rules.freshness_column!r}")
        age = np.array([np.nan if v is None else v for v in hydrated[rules.freshness_column]],
                       dtype=np.float64)
        before = final
        final = rerank.freshness_boost(final, age, rules.freshness_half_life,
                                       rules.freshness_strength)
        fresh = final - before

    # ordering: exploration, MMR diversity, per-category caps
    keys = rerank.perturb(final, explore, seed) if explore else final
    cats = hydrated.get(category) if category else None
    vecs, unit = None, False
    if diversity and diversity_by != "category":
        vecs = items.unit_vectors(ids) if hasattr(items, "unit_vectors") else None
        unit = vecs is not None     # normalised when the store was loaded
        if not unit:
            vecs = items.vectors(ids)
        if vecs is None and diversity_by == "embeddings":
            raise ValueError("diversity_by='embeddings' but the item store has no vectors")
    sim_cats = _hashable(cats) if vecs is None and cats is not None and diversity else None
    if diversity and vecs is None and sim_cats is None:
        raise ValueError("diversity needs item embeddings or a category column")
    cap, cap_cats = rules.category_cap, None
    if cap is not None:
        column = rules.cap_column or category
        if column is None or column not in hydrated:
            raise KeyError(f"category_cap: the item table has no column {column!r}")
        cap_cats = _hashable(hydrated[column])
    order, redundant = rerank.mmr(keys, k, diversity=diversity, embeddings=vecs,
                                  categories=sim_cats, cap=cap, cap_categories=cap_cats,
                                  return_redundancy=True, unit=unit)
    penalty = diversity * redundant if diversity and len(order) else None

    # 1 + the candidates scored higher (ties: those listed before), for the picks at once
    picked = final[order]
    relevance_rank = (1 + np.count_nonzero(final[None, :] > picked[:, None], axis=1)
                      + np.count_nonzero((final[None, :] == picked[:, None])
                                         & (np.arange(len(final))[None, :] < order[:, None]),
                                         axis=1)).tolist()
    out = []
    for pos, i in enumerate(order.tolist()):
        why = {}
        if retrieved:
            why["retrieval_rank"] = int(i) + 1
            why["retrieval_score"] = float(r_scores[i])
        else:
            why["popularity_rank"] = int(i) + 1
        if p_scores is not None:
            why["ranking_score"] = float(p_scores[i])
        if calibrated is not None:
            why["calibrated_score"] = float(calibrated[i])
        if blended is not None:
            why["blended_score"] = float(blended[i])
        for name, delta in deltas:
            if delta[i] != 0:
                why.setdefault("boosts", {})[name] = float(delta[i])
        if fresh is not None and fresh[i] != 0:
            why["freshness_boost"] = float(fresh[i])
        why["relevance_rank"] = relevance_rank[pos]
        if explore:
            why["explored"] = True
            why["sampling_key"] = float(keys[i])
        if diversity:
            why["mmr_position"] = pos + 1
            why["mmr_penalty"] = float(penalty[pos])
        out.append(Recommendation(
            item_id=ids[i], final_score=float(final[i]),
            retrieval_score=float(r_scores[i]) if retrieved else None,
            ranking_score=None if p_scores is None else float(p_scores[i]),
            category=None if cats is None else _plain(cats[i]), reasons=why))
    return out
