"""A synthetic click log in the Criteo format, with a planted click model and a known oracle.

Same columns, types and protocol as :mod:`recsys_tf.data.criteo` - ``label``, 13 integer fields
``I1``..``I13`` (counts, NaN when missing; ``I2`` may be negative), 26 categorical fields
``C1``..``C26`` (8-hex-digit strings, ``""`` when missing), split in row order 80/10/10, rare
categories (fewer than ``min_count`` train rows) to OOV - plus ``p_click``, each row's true click
probability, so the oracle AUC / logloss is known. 200,000 rows by default (about 2 s).
:func:`write` saves the rows as a Kaggle-format ``train.txt`` (to exercise the file and
streaming paths at any size).

What is planted
---------------
* **Categories**: field ``C_f`` has ``CARDINALITIES[f]`` values drawn Zipf-like
  (``P(rank k) ~ 1 / k^ZIPF_S``, ``ZIPF_S = 1.2``), so a few values are frequent and most are
  rare, as in Criteo; some fields are often missing (``MISSING_RATES``; missing is a value of its
  own with its own effects).
* **Integers**: ``I_j = floor(exp(mu_j + s_j z_j))`` (``I2`` shifted down by 3, as Criteo's
  ``I2`` has small negative values) where the ``z_j`` share a latent "activity" factor; some are
  missing (``INT_MISSING_RATES``).
* **Click logit**::

      logit = bias
            + sum_f w_f[c_f]                                 first order, 14 of the 26 fields
            + sum_{(f,g) in CROSSES} W_fg[c_f, c_g]          pairwise cross tables, 6 pairs
            + sum_{f<g in FACTOR_FIELDS} <u_f[c_f], u_g[c_g]> low-rank (rank 4) factor term
            + sum_j beta_j t_j + gamma (t_1 t_5) - delta t_6^2  integers, t_j = standardised
                                                              log1p(max(I_j, 0)); 0 if missing

  with every table and weight drawn from the seed; ``bias`` is solved so that the mean click
  probability is ``ctr`` (0.25 by default). ``label ~ Bernoulli(sigmoid(logit))`` and
  ``p_click = sigmoid(logit)``. At the defaults the oracle test AUC is about 0.80 (the best
  models on the real Criteo reach about 0.81).

Values a model never saw enough of in train are unlearnable by design (they go to OOV), as on
the real data, so the oracle is a ceiling no model reaches.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_tf.data import Dataset
from recsys_tf.data import criteo as C

__all__ = ["load", "generate", "write", "CARDINALITIES"]

# Field cardinalities, shaped like Criteo's (a few huge, several mid-size, some tiny).
CARDINALITIES = (1400, 550, 60000, 25000, 300, 24, 12000, 630, 3, 40000, 5500, 45000, 3200,
                 27, 14000, 55000, 10, 5600, 2200, 4, 48000, 17, 15, 35000, 90, 28000)
MISSING_RATES = (0, 0, 0.03, 0.03, 0, 0.12, 0, 0, 0, 0, 0, 0.03, 0, 0, 0, 0.03, 0, 0, 0.44,
                 0.44, 0.03, 0, 0.76, 0.03, 0.44, 0.03)
INT_MISSING_RATES = (0.45, 0, 0.21, 0.22, 0.03, 0.22, 0.04, 0, 0.04, 0.45, 0.04, 0.77, 0.22)
ZIPF_S = 1.2
# first-order effects: field index (0-based) -> stddev of its value weights
FIRST_ORDER = {0: 0.23, 1: 0.2, 2: 0.33, 4: 0.26, 5: 0.2, 7: 0.23, 8: 0.2, 10: 0.26, 12: 0.23,
               13: 0.2, 16: 0.165, 18: 0.2, 21: 0.2, 24: 0.23}
# pairwise cross tables: (field a, field b, stddev)
CROSSES = ((5, 13, 0.4), (4, 7, 0.3), (0, 16, 0.3), (8, 21, 0.4), (1, 24, 0.3), (19, 22, 0.4))
# low-rank factor term between these (mid-size) fields
FACTOR_FIELDS = (1, 4, 7, 24, 13, 5)
FACTOR_RANK = 4
FACTOR_STD = 0.34
INT_BETA = (0.15, -0.12, 0.18, 0.0, -0.18, 0.0, 0.12, 0.0, 0.09, 0.0, 0.15, 0.0, -0.09)
INT_GAMMA = 0.12    # t_1 * t_5
INT_DELTA = 0.09   # - t_6^2


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _hex_values(field: int, card: int) -> np.ndarray:
    """``card`` distinct 8-hex-digit strings for a field (a fixed hash of field and rank)."""
    k = np.arange(card, dtype=np.uint64) + np.uint64(field) * np.uint64(1 << 32)
    with np.errstate(over="ignore"):
        z = k + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    codes = (z & np.uint64(0xFFFFFFFF)).astype(np.int64)
    out = np.array([f"{c:08x}" for c in codes.tolist()], dtype=object)
    if len(set(out.tolist())) != card:  # 32-bit collision: disambiguate deterministically
        seen = {}
        for i, v in enumerate(out):
            while v in seen:
                v = f"{(int(v, 16) + 1) & 0xFFFFFFFF:08x}"
            seen[v] = i
            out[i] = v
    return out


def draw_count(row_rng, activity, mu, sd, j):
    """Integer field ``j``'s counts: ``floor(exp(mu + sd (0.6 activity + 0.8 N(0, 1))))``, shifted
    down by 3 for ``I2`` (``j == 1``, small negative values as in Criteo)."""
    z = 0.6 * activity + 0.8 * row_rng.normal(size=len(activity))
    x = np.floor(np.exp(mu + sd * z))
    return x - 3.0 if j == 1 else x


def standardised_log(x, mu, sd):
    """``(log1p(max(x, 0)) - (mu + 0.5)) / sd``: a count's log, roughly standardised."""
    return (np.log1p(np.maximum(x, 0.0)) - (mu + 0.5)) / sd


def calibrate_bias(logit: np.ndarray, ctr: float, bound: float = 20.0) -> float:
    """The bias ``b`` in ``[-bound, bound]`` with ``mean(sigmoid(logit + b)) = ctr`` (bisection)."""
    lo, hi = -bound, bound
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).mean() < ctr:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def criteo_columns(label, ints, idx, cardinalities) -> dict:
    """The Criteo columns: ``label``, ``I1``..``I13`` from ``ints [n, 13]`` (NaN = missing),
    ``C1``..``C26`` from the value indices ``idx [n, 26]`` (index ``-1`` or the field's
    cardinality = missing, ``""``)."""
    out = {C.LABEL: label}
    for j, c in enumerate(C.INT_COLUMNS):
        out[c] = ints[:, j]
    for f, c in enumerate(C.CAT_COLUMNS):
        vals = np.append(_hex_values(f, cardinalities[f]), "")
        out[c] = vals[idx[:, f]]
    return out


def _zipf_draw(rng, card, n, s=None):
    s = ZIPF_S if s is None else s
    p = 1.0 / np.arange(1, card + 1) ** s
    cum = np.cumsum(p)
    return np.minimum(np.searchsorted(cum, rng.random(n) * cum[-1], side="right"), card - 1)


def generate(n_rows: int = 200_000, seed: int = 0, ctr: float = 0.25) -> pd.DataFrame:
    """The rows: ``label``, ``I1``..``I13``, ``C1``..``C26``, ``p_click`` (and hidden ``logit``).

    Everything is a deterministic function of ``(n_rows, seed, ctr)``; a larger ``n_rows``
    draws the same click model (tables) and more rows."""
    if int(n_rows) < 10:
        raise ValueError(f"n_rows={n_rows}, expected >= 10")
    if not 0.0 < ctr < 1.0:
        raise ValueError(f"ctr={ctr}, expected 0 < ctr < 1")
    n = int(n_rows)
    model_rng = np.random.default_rng([seed, 1])      # the click model: independent of n
    row_rng = np.random.default_rng([seed, 2])        # the rows

    # -- categorical fields: index -1 = missing -------------------------------------------
    idx = np.empty((n, len(CARDINALITIES)), dtype=np.int64)
    for f, card in enumerate(CARDINALITIES):
        k = _zipf_draw(row_rng, card, n)
        miss = row_rng.random(n) < MISSING_RATES[f]
        idx[:, f] = np.where(miss, -1, k)

    logit = np.zeros(n)
    for f in range(len(CARDINALITIES)):           # tables are drawn for every field, in order
        w = model_rng.normal(0.0, FIRST_ORDER.get(f, 0.0) or 1.0, CARDINALITIES[f] + 1)
        if f in FIRST_ORDER:
            logit += w[idx[:, f]]                   # index -1 -> the missing value's weight
    for a, b, sd in CROSSES:
        table = model_rng.normal(0.0, sd, (CARDINALITIES[a] + 1, CARDINALITIES[b] + 1))
        logit += table[idx[:, a], idx[:, b]]
    factors = [model_rng.normal(0.0, FACTOR_STD, (CARDINALITIES[f] + 1, FACTOR_RANK))
               for f in FACTOR_FIELDS]
    for i in range(len(FACTOR_FIELDS)):
        for j in range(i + 1, len(FACTOR_FIELDS)):
            ui = factors[i][idx[:, FACTOR_FIELDS[i]]]
            uj = factors[j][idx[:, FACTOR_FIELDS[j]]]
            logit += np.einsum("nr,nr->n", ui, uj)

    # -- integer fields ---------------------------------------------------------------------
    mu = model_rng.uniform(0.5, 4.0, 13)
    sd = model_rng.uniform(0.6, 1.6, 13)
    activity = row_rng.normal(size=n)
    ints = np.empty((n, 13))
    t = np.zeros((n, 13))
    for j in range(13):
        x = draw_count(row_rng, activity, mu[j], sd[j], j)
        ints[:, j] = x
        t[:, j] = standardised_log(x, mu[j], sd[j])
        miss = row_rng.random(n) < INT_MISSING_RATES[j]
        ints[miss, j] = np.nan
        t[miss, j] = 0.0
    logit += t @ np.asarray(INT_BETA) + INT_GAMMA * t[:, 0] * t[:, 4] - INT_DELTA * t[:, 5] ** 2

    # -- calibrate the bias to the target CTR, then draw labels -------------------------------
    logit = logit + calibrate_bias(logit, ctr)
    p = _sigmoid(logit)
    label = (row_rng.random(n) < p).astype(np.int64)
    out = criteo_columns(label, ints, idx, CARDINALITIES)
    out["p_click"] = p
    out["logit"] = logit
    return pd.DataFrame(out)


def write(path: str, n_rows: int = 200_000, seed: int = 0, ctr: float = 0.25,
          chunk_rows: int = 500_000) -> str:
    """Writes ``n_rows`` synthetic rows to ``path`` in the Kaggle ``train.txt`` format
    (tab separated, no header, integers without decimals, empty = missing). Large files are
    generated in chunks (each chunk a different seed, same click model only when ``n_rows``
    fits in one chunk). Returns ``path``."""
    done = 0
    with open(path, "w", newline="\n") as f:
        part = 0
        while done < n_rows:
            m = min(int(chunk_rows), int(n_rows) - done)
            frame = generate(max(m, 10), seed=seed if part == 0 else seed * 1000 + part, ctr=ctr)
            frame = frame.iloc[:m]
            cols = [frame[C.LABEL].astype(str).to_numpy()]
            for c in C.INT_COLUMNS:
                x = frame[c].to_numpy()
                s = np.full(len(x), "", dtype=object)
                ok = np.isfinite(x)
                s[ok] = x[ok].astype(np.int64).astype(str)
                cols.append(s)
            cols += [frame[c].to_numpy() for c in C.CAT_COLUMNS]
            lines = ["\t".join(row) for row in zip(*cols)]
            f.write("\n".join(lines) + "\n")
            done += m
            part += 1
    return path


def split_and_declare(frame, min_count, integers="log", dim=16, missing="mean"):
    """The Criteo protocol on generated rows: BARS buckets if ``integers="bucket"``, the 80/10/10
    split in row order, vocabularies from train (``min_count``), the integers' log statistics
    (with ``missing``) and the FeatureSet. Returns ``(train, valid, test, vocabs, fs)``."""
    if integers == "bucket":
        for c in C.INT_COLUMNS:
            frame[c] = C.bucketise(frame[c].to_numpy())
    n_tr, n_va, _ = C.split_sizes(len(frame))
    train = frame.iloc[:n_tr].reset_index(drop=True)
    valid = frame.iloc[n_tr:n_tr + n_va].reset_index(drop=True)
    test = frame.iloc[n_tr + n_va:].reset_index(drop=True)
    cat_cols = C.CAT_COLUMNS + (C.INT_COLUMNS if integers == "bucket" else ())
    vocabs = C.vocabularies(train, cat_cols, int(min_count))
    stats = {}
    if integers == "log":
        stats = C._stats_from_sums({c: C._log_stats(train[c].to_numpy(np.float64), missing)
                                    for c in C.INT_COLUMNS})
    fs = C.feature_set(vocabs, stats, integers=integers, dim=int(dim), missing=missing)
    return train, valid, test, vocabs, fs


def load(data_dir: str | None = None, n_rows: int = 200_000, seed: int = 0, ctr: float = 0.25,
         min_count: int = 20, integers: str = "log", dim: int = 16,
         missing: str = "mean") -> Dataset:
    """The synthetic Criteo-format set (``data_dir`` is ignored; nothing is read or written).

    Args:
      n_rows: rows in total, split 80/10/10 in order (train / valid / test).
      seed: every table and row is a deterministic function of the arguments.
      ctr: mean click probability the bias is calibrated to.
      min_count: a category enters the vocabulary with at least this many train rows (default
        20: at 160k train rows, rarer values only add noise - a DeepFM's test AUC rises from
        min_count 4 to 20; the real-data loader defaults to BARS' 10).
      integers: ``"log"`` (Numeric, log1p inside the model) or ``"bucket"`` (BARS buckets).
      dim: embedding size declared for every categorical feature.
      missing: an I field's missing value, as in :func:`recsys_tf.data.criteo.load` (default
        ``"mean"``: this set's click model reads a missing integer at its mean, and its
        benchmark figures were taken so).
    """
    del data_dir
    C._check_integers(integers, missing)
    frame = generate(n_rows, seed=seed, ctr=ctr).drop(columns=["logit"])
    train, valid, test, vocabs, fs = split_and_declare(frame, min_count, integers, dim, missing)
    n_tr, n_va, n_te = len(train), len(valid), len(test)
    from recsys_tf.metrics import auc, logloss

    info = {
        "source": "recsys_tf.data.criteo_synthetic (Criteo format; planted first-order, "
                  "pairwise-cross and low-rank factor effects over Zipf categories, integer "
                  "effects; p_click known)",
        "split": "row order: first 80% train, next 10% valid, last 10% test",
        "n_rows": int(len(frame)), "n_train": int(n_tr), "n_valid": int(n_va),
        "n_test": int(n_te), "seed": int(seed), "ctr": float(ctr), "min_count": int(min_count),
        "integers": integers,
        "vocabulary_sizes": {c: len(v) for c, v in vocabs.items()},
        "label_rate_train": float(train[C.LABEL].mean()),
        "oracle_auc_test": auc(test[C.LABEL].to_numpy(), test["p_click"].to_numpy()),
        "oracle_logloss_test": logloss(test[C.LABEL].to_numpy(), test["p_click"].to_numpy()),
        "oracle_auc_valid": auc(valid[C.LABEL].to_numpy(), valid["p_click"].to_numpy()),
    }
    empty = frame.iloc[:0]
    return Dataset(name="criteo-synthetic", feature_set=fs, train=train, test=test,
                   items=empty, users=empty, retrieval_train=empty, retrieval_test=empty,
                   valid=valid, info=info)
