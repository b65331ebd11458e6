"""A family of synthetic click logs in the Criteo layout that differ in kind, each with its oracle.

Every member has the columns, types and protocol of :mod:`recsys_tf.data.criteo` (``label``,
``I1``..``I13`` counts with NaN for missing, ``C1``..``C26`` 8-hex-digit strings with ``""`` for
missing, split 80/10/10 in row order, rare categories to OOV) plus ``p_click``, each row's true
click probability, so the oracle AUC is known. Unlike :mod:`~recsys_tf.data.criteo_synthetic`
(one click model, many seeds) the members differ in what the click model is made of:

==================== ==========================================================================
``missing-informative`` a missing count means "no events": the click model reads it as 0 (a
                      low value), and low-activity rows are missing more often
``missing-random``    counts missing at random; the click model reads a missing one at the
                      mean (nothing to learn from the gap)
``shrunk``            effects of rare categories shrunk towards 0 (``sd * n_v / (n_v + k)`` with
                      ``n_v`` the value's expected count): popular values carry the signal
``flat``              every value's effect drawn with the same spread, rare ones included
``drift``             effects and click rate move along the file (time order): the test rows
                      are later than the train rows
``dense-cross``       integer x category crosses: ``t_j * a_f[c_f]`` terms
``heavy-tail``        cardinalities up to 400,000 with a flatter Zipf law (most values rare)
``few-strong``        four strong fields, every other field useless
``rare-clicks``       a 3% click rate
``frequent-clicks``   a 30% click rate
==================== ==========================================================================

Click model of every member (parameters per member in :data:`MEMBERS`)::

    logit = bias + sum_f s_f w_f[c_f]                       first order (shrunk or flat)
          + sum_{(f,g)} W_fg[c_f, c_g]                       pairwise cross tables
          + sum_j beta_j t_j + sum_{(j,f)} t_j a_jf[c_f]      integers, integer x category
    (drift: every weight w becomes (1 - r) w + r w' along the row index r in [0, 1])

with ``t_j`` the standardised ``log1p(max(I_j, 0))`` of the true count (what a missing one
stands for depends on the member); ``bias`` is solved so that the mean click probability is
``ctr``. Generation is vectorised numpy: 200,000 rows in 1-3 s.

Each member is a data set of its own (``recsys-tf data criteo-family-<member>``, loaded with
``data.load("criteo-family-drift", seed=1)``); :func:`load` takes the member by name.

Example::

    ds = load(member="dense-cross", n_rows=100_000, seed=0)
    ds.info["oracle_auc_test"]
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_tf.data import Dataset
from recsys_tf.data import criteo as C
from recsys_tf.data.criteo_synthetic import (_sigmoid, calibrate_bias, criteo_columns, draw_count,
                                             split_and_declare, standardised_log)

__all__ = ["load", "generate", "MEMBERS"]

_MID = (1400, 550, 6000, 2500, 300, 24, 1200, 630, 3, 4000, 550, 4500, 320, 27, 1400, 5500,
        10, 560, 220, 4, 4800, 17, 15, 3500, 90, 2800)
_HEAVY = (1400, 550, 400000, 250000, 300, 24, 120000, 630, 3, 300000, 5500, 150000, 3200,
          27, 14000, 200000, 10, 5600, 2200, 4, 90000, 17, 15, 60000, 90, 28000)
_CAT_MISSING = (0, 0, 0.03, 0.03, 0, 0.12, 0, 0, 0, 0, 0, 0.03, 0, 0, 0, 0.03, 0, 0, 0.44,
                0.44, 0.03, 0, 0.76, 0.03, 0.44, 0.03)
_INT_MISSING = (0.45, 0, 0.21, 0.22, 0.03, 0.22, 0.04, 0, 0.04, 0.45, 0.04, 0.77, 0.22)
_FIRST = {0: 0.3, 1: 0.3, 2: 0.4, 4: 0.3, 5: 0.25, 7: 0.3, 10: 0.3, 12: 0.3, 13: 0.25,
          16: 0.2, 18: 0.25, 21: 0.25, 24: 0.3}
_CROSSES = ((5, 13, 0.4), (4, 7, 0.3), (8, 21, 0.4), (1, 24, 0.3))
_BETA = (0.25, -0.15, 0.25, 0.0, -0.2, 0.0, 0.15, 0.0, 0.1, 0.2, 0.15, 0.3, -0.1)

# member -> parameters (see generate); every member starts from BASE
BASE = dict(cards=_MID, zipf_s=1.2, cat_missing=_CAT_MISSING, int_missing=_INT_MISSING,
            first_order=_FIRST, crosses=_CROSSES, beta=_BETA, missing_means="mean",
            shrink=None, drift=0.0, dense_crosses=(), ctr=0.2)
MEMBERS = {
    "missing-informative": dict(missing_means="zero", beta=tuple(1.6 * b for b in _BETA)),
    "missing-random": dict(missing_means="mean", beta=tuple(1.6 * b for b in _BETA)),
    "shrunk": dict(shrink=40.0, first_order={f: 1.5 * s for f, s in _FIRST.items()}, ctr=0.1),
    "flat": dict(shrink=None, ctr=0.1),
    "drift": dict(drift=1.0, ctr=0.15),
    "dense-cross": dict(dense_crosses=((0, 4, 0.4), (2, 7, 0.4), (4, 13, 0.4), (9, 1, 0.3),
                                       (11, 24, 0.3), (6, 5, 0.4)), ctr=0.25),
    "heavy-tail": dict(cards=_HEAVY, zipf_s=1.05, ctr=0.05),
    "few-strong": dict(first_order={3: 0.6, 7: 0.6, 11: 0.6, 21: 0.6}, crosses=((7, 21, 0.6),),
                       beta=(0.0,) * 12 + (0.3,), ctr=0.3),
    "rare-clicks": dict(ctr=0.03),
    "frequent-clicks": dict(ctr=0.3),
}


def spec(member: str) -> dict:
    """The parameters of ``member`` (BASE updated by ``MEMBERS[member]``)."""
    if member not in MEMBERS:
        raise ValueError(f"criteo-family member={member!r}, expected one of {sorted(MEMBERS)}")
    return {**BASE, **MEMBERS[member]}


def _zipf_probs(card, s):
    p = 1.0 / np.arange(1, card + 1) ** s
    return p / p.sum()


def _draw(rng, cum, n):
    return np.minimum(np.searchsorted(cum, rng.random(n), side="right"), len(cum) - 1)


def generate(member: str, n_rows: int = 200_000, seed: int = 0, ctr: float | None = None
             ) -> pd.DataFrame:
    """The rows of ``member``: ``label``, ``I1``..``I13``, ``C1``..``C26``, ``p_click``.

    A deterministic function of ``(member, n_rows, seed, ctr)``; ``ctr`` defaults to the
    member's."""
    sp = spec(member)
    ctr = sp["ctr"] if ctr is None else float(ctr)
    if int(n_rows) < 10:
        raise ValueError(f"n_rows={n_rows}, expected >= 10")
    if not 0.0 < ctr < 1.0:
        raise ValueError(f"ctr={ctr}, expected 0 < ctr < 1")
    n = int(n_rows)
    tag = sorted(MEMBERS).index(member)
    model_rng = np.random.default_rng([seed, tag, 1])
    row_rng = np.random.default_rng([seed, tag, 2])
    cards = sp["cards"]
    r = np.arange(n) / max(n - 1, 1)                      # position along the file
    drift = float(sp["drift"])

    def weights(size, sd, expected=None):
        """A weight table (or its per-row mix along the file under drift)."""
        w = model_rng.normal(0.0, sd, size)
        w2 = model_rng.normal(0.0, sd, size) if drift else None
        if expected is not None and sp["shrink"]:
            shrink = expected / (expected + sp["shrink"])
            w = w * shrink
            w2 = None if w2 is None else w2 * shrink
        return w, w2

    def pick(table, index):
        w, w2 = table
        if w2 is None:
            return w[index]
        return (1 - drift * r) * w[index] + drift * r * w2[index]

    idx = np.empty((n, len(cards)), dtype=np.int64)
    expected = []
    for f, card in enumerate(cards):
        p = _zipf_probs(card, sp["zipf_s"])
        k = _draw(row_rng, np.cumsum(p), n)
        miss = row_rng.random(n) < sp["cat_missing"][f]
        idx[:, f] = np.where(miss, card, k)               # index card = missing
        expected.append(np.append(p * n * 0.8, sp["cat_missing"][f] * n * 0.8))

    logit = np.zeros(n)
    for f, sd in sorted(sp["first_order"].items()):
        logit += pick(weights(cards[f] + 1, sd, expected[f]), idx[:, f])
    for a, b, sd in sp["crosses"]:
        table = weights((cards[a] + 1) * (cards[b] + 1), sd)
        logit += pick(table, idx[:, a] * (cards[b] + 1) + idx[:, b])

    # integers: counts with a shared activity factor; t = standardised log of the true count
    mu = model_rng.uniform(0.5, 4.0, 13)
    sd = model_rng.uniform(0.6, 1.6, 13)
    activity = row_rng.normal(size=n)
    ints = np.empty((n, 13))
    t = np.empty((n, 13))
    for j in range(13):
        x = draw_count(row_rng, activity, mu[j], sd[j], j)
        rate = sp["int_missing"][j]
        if sp["missing_means"] == "zero":
            # missing = no events: more often where activity is low; the true count is 0
            p_miss = np.clip(2 * rate * _sigmoid(-1.5 * activity), 0, 0.95)
            miss = row_rng.random(n) < p_miss
            x = np.where(miss, 0.0, x)
        else:
            miss = row_rng.random(n) < rate
        t[:, j] = standardised_log(x, mu[j], sd[j])
        if sp["missing_means"] == "mean":
            t[miss, j] = 0.0
        ints[:, j] = np.where(miss, np.nan, x)
    beta = np.asarray(sp["beta"], dtype=np.float64)
    if drift:
        beta2 = model_rng.normal(0.0, np.abs(beta).mean() + 1e-9, 13) * (beta != 0)
        logit += (1 - drift * r) * (t @ beta) + drift * r * (t @ beta2)
    else:
        logit += t @ beta
    for j, f, s in sp["dense_crosses"]:
        logit += t[:, j] * pick(weights(cards[f] + 1, s), idx[:, f])
    if drift:
        logit += 0.6 * drift * (r - 0.5)                  # the click rate moves too

    p = _sigmoid(logit + calibrate_bias(logit, ctr, bound=30.0))
    label = (row_rng.random(n) < p).astype(np.int64)
    out = criteo_columns(label, ints, idx, cards)
    out["p_click"] = p
    return pd.DataFrame(out)


def load(data_dir: str | None = None, member: str = "missing-informative",
         n_rows: int = 200_000, seed: int = 0, ctr: float | None = None,
         min_count: int = C.MIN_COUNT, integers: str = "log", dim: int = 16,
         missing: str = C.MISSING) -> Dataset:
    """One member of the family as a :class:`Dataset` (``data_dir`` is ignored).

    Args:
      member: one of :data:`MEMBERS`.
      n_rows: rows in total, split 80/10/10 in row order.
      seed: the click model and the rows are deterministic functions of the arguments.
      ctr: mean click probability (default: the member's).
      min_count, integers, dim, missing: as :func:`recsys_tf.data.criteo.load` (``min_count``
        defaults to the real loader's 10).
    """
    del data_dir
    C._check_integers(integers, missing)
    frame = generate(member, int(n_rows), seed=int(seed), ctr=None if ctr is None else float(ctr))
    train, valid, test, vocabs, fs = split_and_declare(frame, min_count, integers, dim, missing)
    from recsys_tf.metrics import auc, logloss

    y, p = test[C.LABEL].to_numpy(), test["p_click"].to_numpy()
    info = {
        "source": f"recsys_tf.data.criteo_family member {member!r} (Criteo layout; p_click known)",
        "member": member, "split": "row order: first 80% train, next 10% valid, last 10% test",
        "n_rows": int(len(frame)), "n_train": int(len(train)), "n_valid": int(len(valid)),
        "n_test": int(len(test)), "seed": int(seed), "min_count": int(min_count),
        "integers": integers, "missing_integers": missing,
        "vocabulary_sizes": {c: len(v) for c, v in vocabs.items()},
        "label_rate_train": float(train[C.LABEL].mean()),
        "oracle_auc_test": auc(y, p), "oracle_logloss_test": logloss(y, p),
        "oracle_auc_valid": auc(valid[C.LABEL].to_numpy(), valid["p_click"].to_numpy()),
    }
    empty = frame.iloc[:0]
    return Dataset(name=f"criteo-family-{member}", feature_set=fs, train=train, test=test,
                   items=empty, users=empty, retrieval_train=empty, retrieval_test=empty,
                   valid=valid, info=info)


def _loader(member):
    def load_member(data_dir=None, **options):
        return load(data_dir, member=member, **options)

    load_member.__name__ = "load_" + member.replace("-", "_")
    load_member.__doc__ = f"The criteo-family member {member!r} (see :func:`load`)."
    return load_member


for _m in MEMBERS:
    globals()["load_" + _m.replace("-", "_")] = _loader(_m)
