"""A synthetic click log with planted structure and a known click probability per row.

The generator is the offline default everywhere: it needs no files, runs in about a second
at the default size, is bitwise-deterministic for a seed, and because it knows each
impression's true click probability (``p_click``) it gives the oracle AUC / logloss that
every ranking model is measured against.

What is planted
---------------
* **Users** ``u<k>`` with an ``age_bucket``, a ``region``, a latent vector ``u`` (``dim``), a
  preferred ``device``, an activity level (lognormal) and a sparse preference over item
  categories.
* **Items** ``i<k>`` with a ``category`` ``c<k>``, a ``price_bucket``, a ``freshness`` (days
  since release), a latent vector ``v`` (partly shared by the items of a category) and a
  Zipf-like popularity.
* **Interest drift**: each user's *current interest category* is a Markov chain over
  categories that takes one step per impression: with probability ``switch_prob`` it jumps to
  a category drawn from the user's preferences, otherwise it stays.
* **Impressions** are in time order (one global clock, strictly increasing ``timestamp``).
  The item shown is drawn from the current interest category (probability ``p_interest``)
  or from global popularity, popularity-weighted in both cases, so retrieval is learnable.
  Context: ``hour`` (``"0"``..``"23"``, UTC hour of the timestamp, daily profile) and
  ``device`` (the user's preferred device 70% of the time).
* **Click logit** = ``bias``
  + ``a * <u, v> / sqrt(dim)``
  + ``W_age_cat[age_bucket, category]`` + ``W_dev_hour[device, hour // 6]``
  + ``W_region_price[region, price_bucket]`` (random cross tables)
  + ``b * [category == current interest]``
  + ``c * (fraction of the user's history in the item's category)``
  + ``d * popularity`` + ``e * freshness`` (small, standardised);
  ``label ~ Bernoulli(sigmoid(logit))`` and ``p_click = sigmoid(logit)``.
* **History**: ``history`` is the user's last ``history_len`` *clicked* items strictly before
  the impression (oldest first, padded with ``""`` at the end to exactly ``history_len``),
  ``history_category`` their categories. Because clicks feed the history and the history
  feeds the next click, labels are generated step by step.

Splits (by time)
----------------
The last ``n_test`` impressions overall (global clock) are ``test``; the first ``n_train`` are
split into ``train`` and ``valid`` (the last ``valid_fraction`` of them, by time; set
``valid_fraction=0`` for no ``valid``). ``users`` describes each user as of the end of
train+valid (just before the test period): the latest history and ``seen`` (distinct items
clicked before the test period, in first-click order). ``retrieval_train/test`` are the
clicked rows of ``train``/``test``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_tf import metrics
from recsys_tf.data import Dataset
from recsys_tf.features import Categorical, FeatureSet, Numeric, Sequence

__all__ = ["load", "generate", "feature_set"]

AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_P = (0.17, 0.30, 0.23, 0.15, 0.10, 0.05)
REGIONS = ("north", "south", "east", "west", "central", "coast", "mountain", "islands")
REGION_P = (0.18, 0.16, 0.15, 0.14, 0.12, 0.11, 0.08, 0.06)
PRICE_BUCKETS = ("budget", "low", "mid", "high", "premium")
PRICE_P = (0.2, 0.3, 0.25, 0.15, 0.1)
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_P = (0.6, 0.3, 0.1)
HOURS = tuple(str(h) for h in range(24))
# Share of impressions per hour of day (UTC): quiet at night, peaks at lunch and evening.
_HOUR_PROFILE = np.array([1, .6, .4, .3, .3, .4, .8, 1.4, 1.8, 1.7, 1.6, 1.8,
                          2.2, 2.0, 1.6, 1.5, 1.6, 1.9, 2.4, 2.8, 2.9, 2.6, 2.0, 1.4])
_T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
_DAYS = 60

# Click model coefficients (see module docstring). Chosen so that at the default size the
# base CTR is ~0.28 and the oracle AUC on test is ~0.82.
COEF = dict(bias=-2.85, a=0.8, cross_age_cat=0.45, cross_dev_hour=0.35, cross_region_price=0.35,
            b=1.1, c=1.2, d=0.25, e=0.15)
SWITCH_PROB = 0.08   # per impression, the interest chain jumps with this probability
P_INTEREST = 0.55    # share of impressions drawn from the current interest category
ZIPF_S = 0.7         # popularity ~ 1 / rank^s


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _zscore(x):
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def _sample_rows(rng, probs):
    """One categorical draw per row of ``probs`` ([n, k], rows sum to 1)."""
    cum = np.cumsum(probs, axis=1)
    r = rng.random(probs.shape[0]) * cum[:, -1]
    return np.minimum((cum < r[:, None]).sum(axis=1), probs.shape[1] - 1)


def generate(n_users: int = 2000, n_items: int = 1000, n_categories: int = 20,
             n_train: int = 60000, n_test: int = 15000, history_len: int = 20, dim: int = 8,
             seed: int = 0) -> dict:
    """The raw simulation: entity tables and the full impression log (train+test, time order).

    Returns a dict with ``users`` (user_id, age_bucket, region), ``items`` (item_id, category,
    price_bucket, freshness), ``log`` (one row per impression with every feature column,
    ``label``, ``p_click``, ``timestamp`` and the hidden ``interest`` category), ``hist_idx``
    (``[n, history_len]`` int item indices of each row's history, -1 padded at the end),
    ``user_u`` / ``item_v`` (the planted latent vectors, rows in id order) and ``coef`` (the
    click model's constants and cross tables).
    """
    for name, v, lo in (("n_users", n_users, 1), ("n_items", n_items, 1),
                        ("n_categories", n_categories, 1), ("n_train", n_train, 1),
                        ("n_test", n_test, 1), ("history_len", history_len, 1), ("dim", dim, 1)):
        if int(v) < lo:
            raise ValueError(f"{name}={v}, expected >= {lo}")
    rng = np.random.default_rng(seed)
    C, H = int(n_categories), int(history_len)
    n = int(n_train) + int(n_test)

    # -- categories ---------------------------------------------------------------------
    cat_pop = 1.0 / np.arange(1, C + 1) ** 0.5
    cat_pop = cat_pop[rng.permutation(C)]
    cat_pop /= cat_pop.sum()
    cat_center = rng.normal(size=(C, dim))

    # -- items --------------------------------------------------------------------------
    if n_items >= C:
        item_cat = np.concatenate([np.arange(C), rng.choice(C, n_items - C, p=cat_pop)])
        item_cat = item_cat[rng.permutation(n_items)]
    else:
        item_cat = rng.choice(C, n_items, p=cat_pop)
    item_price = rng.choice(len(PRICE_BUCKETS), n_items, p=PRICE_P)
    freshness = np.round(rng.gamma(1.2, 150.0, n_items), 1)
    rank = rng.permutation(n_items) + 1
    pop = 1.0 / rank ** ZIPF_S
    item_v = 0.6 * cat_center[item_cat] + 0.8 * rng.normal(size=(n_items, dim))

    # -- users --------------------------------------------------------------------------
    user_age = rng.choice(len(AGE_BUCKETS), n_users, p=AGE_P)
    user_region = rng.choice(len(REGIONS), n_users, p=REGION_P)
    user_device = rng.choice(len(DEVICES), n_users, p=DEVICE_P)
    pref = rng.gamma(0.3, 1.0, (n_users, C)) * cat_pop + 1e-12
    pref /= pref.sum(axis=1, keepdims=True)
    user_u = 0.6 * (pref @ cat_center) / np.sqrt((pref ** 2).sum(1, keepdims=True)).clip(1e-6) \
        + 0.8 * rng.normal(size=(n_users, dim))
    activity = rng.lognormal(0.0, 0.7, n_users)
    activity /= activity.sum()

    # -- cross tables -------------------------------------------------------------------
    w_age_cat = rng.normal(0.0, COEF["cross_age_cat"], (len(AGE_BUCKETS), C))
    w_dev_hour = rng.normal(0.0, COEF["cross_dev_hour"], (len(DEVICES), 4))
    w_region_price = rng.normal(0.0, COEF["cross_region_price"], (len(REGIONS), len(PRICE_BUCKETS)))

    # -- the impression clock -----------------------------------------------------------
    user_of = rng.choice(n_users, n, p=activity)
    hour_p = _HOUR_PROFILE / _HOUR_PROFILE.sum()
    t = (rng.integers(0, _DAYS, n) * 86400 + rng.choice(24, n, p=hour_p) * 3600
         + rng.integers(0, 3600, n))
    t.sort()
    ar = np.arange(n)
    t = np.maximum.accumulate(t - ar) + ar + _T0           # strictly increasing
    hour = (t // 3600) % 24
    device = np.where(rng.random(n) < 0.7, user_device[user_of],
                      rng.choice(len(DEVICES), n, p=DEVICE_P))

    # step index of each impression within its user (time order), and the interest chain
    by_user = np.argsort(user_of, kind="stable")
    counts = np.bincount(user_of, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    step = np.empty(n, dtype=np.int64)
    step[by_user] = np.arange(n) - starts[user_of[by_user]]
    jump = (rng.random(n) < SWITCH_PROB) | (step == 0)
    new_cat = _sample_rows(rng, pref[user_of])
    jump_s = jump[by_user]
    last = np.maximum.accumulate(np.where(jump_s, np.arange(n), 0))
    interest = np.empty(n, dtype=np.int64)
    interest[by_user] = new_cat[by_user][last]

    # -- which item is shown -------------------------------------------------------------
    r_item = rng.random(n)
    from_interest = rng.random(n) < P_INTEREST
    shown = np.searchsorted(np.cumsum(pop), r_item * pop.sum(), side="right")
    for c in range(C):
        members = np.flatnonzero(item_cat == c)
        rows = np.flatnonzero(from_interest & (interest == c))
        if members.size == 0 or rows.size == 0:
            continue
        cum = np.cumsum(pop[members])
        shown[rows] = members[np.searchsorted(cum, r_item[rows] * cum[-1], side="right")]
    shown = np.minimum(shown, n_items - 1)
    cat = item_cat[shown]

    # -- the click model: everything but the history term is known up front ----------------
    static = (COEF["bias"]
              + COEF["a"] * np.einsum("ij,ij->i", user_u[user_of], item_v[shown]) / np.sqrt(dim)
              + w_age_cat[user_age[user_of], cat]
              + w_dev_hour[device, hour // 6]
              + w_region_price[user_region[user_of], item_price[shown]]
              + COEF["b"] * (cat == interest)
              + COEF["d"] * _zscore(np.log(pop))[shown]
              - COEF["e"] * _zscore(np.log1p(freshness))[shown])
    r_click = rng.random(n)

    # Step-major loop: all users' k-th impressions at once (a user has at most one per step).
    buf = np.full((n_users, H), -1, dtype=np.int64)        # right-aligned recent clicks
    hist_right = np.empty((n, H), dtype=np.int64)
    logit = np.empty(n)
    label = np.zeros(n, dtype=np.int64)
    by_step = np.argsort(step, kind="stable")
    step_bounds = np.concatenate([[0], np.cumsum(np.bincount(step))])
    cat_pad = np.append(item_cat, -1)                       # index -1 -> category -1
    for k in range(len(step_bounds) - 1):
        rows = by_step[step_bounds[k]:step_bounds[k + 1]]
        users = user_of[rows]
        h = buf[users]
        hist_right[rows] = h
        valid = h >= 0
        n_valid = valid.sum(axis=1)
        match = ((cat_pad[h] == cat[rows, None]) & valid).sum(axis=1)
        frac = match / np.maximum(n_valid, 1)
        lg = static[rows] + COEF["c"] * frac
        logit[rows] = lg
        clicked = r_click[rows] < _sigmoid(lg)
        label[rows] = clicked
        cu = users[clicked]
        if cu.size:
            buf[cu, :-1] = buf[cu, 1:]
            buf[cu, -1] = shown[rows[clicked]]
    p_click = _sigmoid(logit)

    # left-align the histories (oldest first, padding -1 at the end)
    n_hist = (hist_right >= 0).sum(axis=1)
    idx = (H - n_hist)[:, None] + np.arange(H)
    hist_idx = np.take_along_axis(hist_right, np.minimum(idx, H - 1), axis=1)
    hist_idx[np.arange(H)[None, :] >= n_hist[:, None]] = -1

    user_ids = np.array([f"u{k}" for k in range(n_users)], dtype=object)
    item_ids = np.array([f"i{k}" for k in range(n_items)], dtype=object)
    cat_ids = np.array([f"c{k}" for k in range(C)], dtype=object)
    ages, regions = np.array(AGE_BUCKETS, dtype=object), np.array(REGIONS, dtype=object)
    prices, devices = np.array(PRICE_BUCKETS, dtype=object), np.array(DEVICES, dtype=object)
    hours = np.array(HOURS, dtype=object)
    item_ids_pad = np.append(item_ids, "")
    cat_of_item_pad = np.append(cat_ids[item_cat], "")

    users = pd.DataFrame({"user_id": user_ids, "age_bucket": ages[user_age],
                          "region": regions[user_region]})
    items = pd.DataFrame({"item_id": item_ids, "category": cat_ids[item_cat],
                          "price_bucket": prices[item_price], "freshness": freshness})
    log = pd.DataFrame({
        "user_id": user_ids[user_of],
        "age_bucket": ages[user_age[user_of]],
        "region": regions[user_region[user_of]],
        "item_id": item_ids[shown],
        "category": cat_ids[cat],
        "price_bucket": prices[item_price[shown]],
        "freshness": freshness[shown],
        "hour": hours[hour],
        "device": devices[device],
        "history": item_ids_pad[hist_idx].tolist(),
        "history_category": cat_of_item_pad[hist_idx].tolist(),
        "label": label,
        "p_click": p_click,
        "timestamp": t.astype(np.int64),
        "interest": cat_ids[interest],
    })
    coef = dict(COEF, switch_prob=SWITCH_PROB, p_interest=P_INTEREST, zipf_s=ZIPF_S,
                w_age_cat=w_age_cat, w_dev_hour=w_dev_hour, w_region_price=w_region_price)
    return {"users": users, "items": items, "log": log, "hist_idx": hist_idx,
            "user_u": user_u, "item_v": item_v, "coef": coef}


def feature_set(users: pd.DataFrame, items: pd.DataFrame, history_len: int = 20,
                dim: int = 16) -> FeatureSet:
    """The synthetic FeatureSet (Numeric constants unfitted; see :meth:`FeatureSet.fit_numeric`)."""
    cats = sorted(items["category"].unique(), key=lambda s: int(s[1:]))
    return FeatureSet([
        Categorical("user_id", vocabulary=tuple(users["user_id"]), dim=dim, role="user"),
        Categorical("age_bucket", vocabulary=AGE_BUCKETS, dim=dim, role="user"),
        Categorical("region", vocabulary=REGIONS, dim=dim, role="user"),
        Categorical("item_id", vocabulary=tuple(items["item_id"]), dim=dim, role="item"),
        Categorical("category", vocabulary=tuple(cats), dim=dim, role="item"),
        Categorical("price_bucket", vocabulary=PRICE_BUCKETS, dim=dim, role="item"),
        Numeric("freshness", log=True, role="item"),
        Categorical("hour", vocabulary=HOURS, dim=dim, role="context"),
        Categorical("device", vocabulary=DEVICES, dim=dim, role="context"),
        Sequence("history", of="item_id", max_len=history_len, role="user"),
        Sequence("history_category", of="category", max_len=history_len, role="user"),
    ], label="label", user_id="user_id", item_id="item_id")


def _users_frame(users: pd.DataFrame, pre: pd.DataFrame, pre_hist_len: int,
                 item_cat: dict) -> pd.DataFrame:
    """Per user: latest clicked-history and distinct seen items as of the end of ``pre``."""
    H = pre_hist_len
    clicks = pre.loc[pre["label"].to_numpy() == 1, ["user_id", "item_id"]]
    uid = clicks["user_id"].to_numpy()
    iid = clicks["item_id"].to_numpy()
    order = np.argsort(uid, kind="stable")                 # stable: keeps time order per user
    uid, iid = uid[order], iid[order]
    bounds = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1], True]) if uid.size else np.array([0])
    per_user = {}
    for s, e in zip(bounds[:-1], bounds[1:]):
        per_user[uid[s]] = iid[s:e]
    hist, hist_cat, seen = [], [], []
    for u in users["user_id"]:
        its = per_user.get(u)
        if its is None:
            its = np.array([], dtype=object)
        last = list(its[-H:])
        pad = [""] * (H - len(last))
        hist.append(last + pad)
        hist_cat.append([item_cat[i] for i in last] + pad)
        seen.append(list(dict.fromkeys(its)))
    out = users.copy()
    out["history"] = hist
    out["history_category"] = hist_cat
    out["seen"] = seen
    return out


def load(data_dir: str | None = None, n_users: int = 2000, n_items: int = 1000,
         n_categories: int = 20, n_train: int = 60000, n_test: int = 15000,
         history_len: int = 20, dim: int = 8, seed: int = 0,
         valid_fraction: float = 0.1) -> Dataset:
    """The synthetic dataset (``data_dir`` is ignored; nothing is read or written).

    Args:
      n_users, n_items, n_categories: entity counts.
      n_train: impressions before the test period (train + valid).
      n_test: the last impressions by time, the test split.
      history_len: length of the ``history`` / ``history_category`` sequences.
      dim: size of the planted latent user/item vectors (embedding sizes are 16 regardless).
      seed: everything is a deterministic function of the arguments.
      valid_fraction: the last share of the ``n_train`` impressions (by time) held out as
        ``valid``; 0 gives ``valid=None``.
    """
    del data_dir
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction={valid_fraction}, expected 0 <= valid_fraction < 1")
    sim = generate(n_users=n_users, n_items=n_items, n_categories=n_categories, n_train=n_train,
                   n_test=n_test, history_len=history_len, dim=dim, seed=seed)
    users, items = sim["users"], sim["items"]
    log = sim["log"].drop(columns=["interest"])
    n_valid = int(round(n_train * valid_fraction))
    n_tr = n_train - n_valid
    train = log.iloc[:n_tr].reset_index(drop=True)
    valid = log.iloc[n_tr:n_train].reset_index(drop=True) if n_valid else None
    test = log.iloc[n_train:].reset_index(drop=True)
    fs = feature_set(users, items, history_len=history_len).fit_numeric(train)
    item_cat = dict(zip(items["item_id"], items["category"]))
    users_frame = _users_frame(users, log.iloc[:n_train], history_len, item_cat)
    retrieval_train = train[train["label"] == 1].reset_index(drop=True)
    retrieval_test = test[test["label"] == 1].reset_index(drop=True)

    seen_sets = dict(zip(users_frame["user_id"], map(set, users_frame["seen"])))
    rt_u, rt_i = retrieval_test["user_id"].to_numpy(), retrieval_test["item_id"].to_numpy()
    reclick = float(np.mean([i in seen_sets[u] for u, i in zip(rt_u, rt_i)])) if len(rt_u) else 0.0
    info = {
        "source": "recsys_tf.data.synthetic (planted latent factors, feature crosses, "
                  "Markov interest drift in click sequences)",
        "split": "by time: test = last n_test impressions overall; valid = last "
                 "valid_fraction of the n_train impressions before it; train = the rest",
        "users_as_of": "end of train+valid (just before the test period)",
        "oracle_auc_test": metrics.auc(test["label"], test["p_click"]),
        "oracle_logloss_test": metrics.logloss(test["label"], test["p_click"]),
        "oracle_auc_train": metrics.auc(train["label"], train["p_click"]),
        "ctr_train": float(train["label"].mean()),
        "ctr_test": float(test["label"].mean()),
        "n_users": int(n_users), "n_items": int(n_items), "n_categories": int(n_categories),
        "n_train": int(len(train)), "n_valid": int(n_valid), "n_test": int(len(test)),
        "n_retrieval_train": int(len(retrieval_train)),
        "n_retrieval_test": int(len(retrieval_test)),
        "test_clicks_already_seen": reclick,
        "history_len": int(history_len), "dim": int(dim), "seed": int(seed),
        "click_model": {k: v for k, v in sim["coef"].items() if not isinstance(v, np.ndarray)},
    }
    return Dataset(name="synthetic", feature_set=fs, train=train, test=test, items=items,
                   users=users_frame, retrieval_train=retrieval_train,
                   retrieval_test=retrieval_test, valid=valid, info=info)
