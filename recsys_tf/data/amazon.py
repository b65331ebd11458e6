"""Amazon review sequences (Beauty, Sports, Toys, Grocery) in DIEN's click-prediction protocol.

Sources (under ``<data_dir>``; see each folder's SOURCE.md):

* ``amazon-beauty``, ``amazon-sports``, ``amazon-toys``: ``amazon-s3rec/{Beauty,
  Sports_and_Outdoors,Toys_and_Games}.txt`` (one user per line, items oldest first) and
  ``*_item2attributes.json``. Each item's attribute list is ``[brand?] + category path``; the
  item's category is the last attribute, the finest category of its path.
* ``amazon-grocery``: ``amazon-grocery-rechorus/train.csv`` (user, item, time; ordered by
  time) and ``item_meta.csv`` (``i_category``). Categories are stored as ``i_category + 1`` so
  that 0 stays the padding id.

Protocol (as in DIEN's Amazon experiments): each user's behaviours ``b_1..b_n`` in time order.

* test: the last behaviour ``b_n`` is a positive target, plus one negative target drawn
  uniformly from the item pool (never equal to ``b_n``).
* train: every earlier behaviour ``b_k`` with ``2 <= k < n`` is a positive target, each with one
  negative drawn the same way.
* the history of target ``b_k`` (and of its negative) is ``b_1..b_{k-1}``, the latest
  ``max_len`` kept: item ids in ``history``, their categories in ``history_category``.

Features: ``user_id`` (user), ``item_id`` and ``category`` (item), ``history`` and
``history_category`` (user; Sequences of ``item_id`` / ``category``); all int64 ids, 0 = padding.
Label column ``label`` (1 = the behaviour happened).

Args:
  data_dir: the folder holding ``amazon-s3rec/`` and ``amazon-grocery-rechorus/``.
  max_len: history length (default 20).
  seed: seed of the negative sampling and of the user subsample (default 0).
  max_users: keep a random subset of this many users (default: all), for tests and tiny runs;
    the item pool and vocabularies then come from the kept users.

Example::

    ds = load_beauty("/work/shared/data", max_users=300)
    batch = ds.feature_set.arrays(ds.train.head(4))

Reference: Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction",
AAAI 2019 (section 5.1); data of McAuley et al. (SIGIR 2015), 5-core subsets.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from recsys_tf.data import Dataset
from recsys_tf.features import Categorical, FeatureSet, Sequence

S3REC = {"amazon-beauty": "Beauty", "amazon-sports": "Sports_and_Outdoors",
         "amazon-toys": "Toys_and_Games"}
COLUMNS = ["user_id", "item_id", "category", "history", "history_category", "label"]


def _require(path):
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: the Amazon data is read from <data_dir> (argument data_dir or "
            "$RECSYS_TF_DATA_DIR); see its SOURCE.md for where the files come from")
    return path


def _root(data_dir):
    if not data_dir:
        raise FileNotFoundError("no data directory: pass data_dir or set $RECSYS_TF_DATA_DIR "
                                "to the folder holding amazon-s3rec/ and amazon-grocery-rechorus/")
    return data_dir


def read_s3rec(data_dir, name):
    """``({user: [item, ...] oldest first}, {item: category})`` of one S3-Rec dataset."""
    folder = os.path.join(_root(data_dir), "amazon-s3rec")
    seq_path = _require(os.path.join(folder, f"{name}.txt"))
    attr_path = _require(os.path.join(folder, f"{name}_item2attributes.json"))
    sequences = {}
    with open(seq_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1:
                sequences[int(parts[0])] = [int(x) for x in parts[1:]]
    with open(attr_path) as f:
        attributes = json.load(f)
    category = {int(item): int(attrs[-1]) for item, attrs in attributes.items() if attrs}
    return sequences, category


def read_grocery(data_dir):
    """``({user: [item, ...] oldest first}, {item: category + 1})`` of the ReChorus Grocery set."""
    folder = os.path.join(_root(data_dir), "amazon-grocery-rechorus")
    inter = pd.read_csv(_require(os.path.join(folder, "train.csv")), sep="\t")
    meta = pd.read_csv(_require(os.path.join(folder, "item_meta.csv")), sep="\t",
                       usecols=["item_id", "i_category"])
    inter = inter.sort_values("time", kind="stable")
    sequences = {int(u): g.tolist() for u, g in inter.groupby("user_id", sort=True)["item_id"]}
    category = dict(zip(meta["item_id"].astype(int), meta["i_category"].astype(int) + 1))
    return sequences, category


def build(name, sequences, category, max_len=20, seed=0, max_users=None, info=None) -> Dataset:
    """The DIEN-protocol :class:`Dataset` from per-user item sequences and item categories."""
    rng = np.random.default_rng(seed)
    users = sorted(u for u, s in sequences.items() if len(s) >= 2)
    if max_users is not None and max_users < len(users):
        users = sorted(rng.choice(users, size=int(max_users), replace=False).tolist())
    sequences = {u: sequences[u] for u in users}
    missing = {i for s in sequences.values() for i in s} - set(category)
    if missing:
        raise ValueError(f"{name}: {len(missing)} items have no category, e.g. {sorted(missing)[:5]}")
    pool = np.array(sorted({i for s in sequences.values() for i in s}), dtype=np.int64)
    cat_of = {i: category[i] for i in pool.tolist()}

    def rows(targets):
        """Positive rows (user, target, history) -> frame with a sampled negative after each."""
        u = np.array([t[0] for t in targets], dtype=np.int64)
        pos = np.array([t[1] for t in targets], dtype=np.int64)
        neg = _sample_negatives(rng, pool, pos)
        hist = [t[2] for t in targets]
        hist_cat = [[cat_of[i] for i in h] for h in hist]
        n = len(targets)
        item = np.empty(2 * n, dtype=np.int64)
        item[0::2], item[1::2] = pos, neg
        label = np.tile(np.array([1, 0], dtype=np.int64), n)
        return pd.DataFrame({
            "user_id": np.repeat(u, 2), "item_id": item,
            "category": np.array([cat_of[i] for i in item.tolist()], dtype=np.int64),
            "history": [h for h in hist for _ in (0, 1)],
            "history_category": [h for h in hist_cat for _ in (0, 1)],
            "label": label}, columns=COLUMNS)

    train_targets, test_targets = [], []
    for u in users:
        s = sequences[u]
        for k in range(1, len(s) - 1):
            train_targets.append((u, s[k], s[max(0, k - max_len):k]))
        test_targets.append((u, s[-1], s[max(0, len(s) - 1 - max_len):-1]))
    train, test = rows(train_targets), rows(test_targets)

    cats = sorted(set(cat_of.values()))
    fs = FeatureSet([
        Categorical("user_id", vocabulary=tuple(users), dtype="int64", role="user"),
        Categorical("item_id", vocabulary=tuple(pool.tolist()), dtype="int64", role="item"),
        Categorical("category", vocabulary=tuple(cats), dtype="int64", role="item"),
        Sequence("history", of="item_id", max_len=max_len, role="user"),
        Sequence("history_category", of="category", max_len=max_len, role="user"),
    ], label="label", user_id="user_id", item_id="item_id")
    items = pd.DataFrame({"item_id": pool, "category": [cat_of[i] for i in pool.tolist()]})
    seen = [sequences[u][:-1] for u in users]
    users_frame = pd.DataFrame({
        "user_id": np.array(users, dtype=np.int64),
        "history": [s[-max_len:] for s in seen],
        "history_category": [[cat_of[i] for i in s[-max_len:]] for s in seen],
        "seen": seen})
    info = dict(info or {})
    info.update({
        "protocol": "DIEN: per user, the last behaviour is the test target and each earlier one "
                    "from the 2nd on a training target; one uniform negative item per target; "
                    f"history = up to {max_len} previous behaviours",
        "users": len(users), "items": int(len(pool)), "categories": len(cats),
        "interactions": int(sum(len(s) for s in sequences.values())),
        "train_rows": int(len(train)), "test_rows": int(len(test)),
        "max_len": max_len, "seed": seed, "max_users": max_users})
    return Dataset(name=name, feature_set=fs, train=train, test=test, items=items,
                   users=users_frame,
                   retrieval_train=train[train["label"] == 1].reset_index(drop=True),
                   retrieval_test=test[test["label"] == 1].reset_index(drop=True),
                   valid=None, info=info)


def _sample_negatives(rng, pool, positives):
    """One uniform draw from ``pool`` per positive, redrawn where it equals the positive."""
    neg = rng.choice(pool, size=len(positives))
    clash = neg == positives
    while clash.any():
        neg[clash] = rng.choice(pool, size=int(clash.sum()))
        clash = neg == positives
    return neg


def _load_s3rec(key, data_dir, max_len=20, seed=0, max_users=None):
    name = S3REC[key]
    sequences, category = read_s3rec(data_dir, name)
    info = {"source": f"amazon-s3rec/{name}.txt + {name}_item2attributes.json (S3-Rec "
                      "preprocessing of the Amazon 2014 5-core reviews)",
            "category": "last attribute of the item (finest category of its path)"}
    return build(key, sequences, category, max_len=max_len, seed=seed, max_users=max_users,
                 info=info)


def load_beauty(data_dir=None, **options) -> Dataset:
    return _load_s3rec("amazon-beauty", data_dir, **options)


def load_sports(data_dir=None, **options) -> Dataset:
    return _load_s3rec("amazon-sports", data_dir, **options)


def load_toys(data_dir=None, **options) -> Dataset:
    return _load_s3rec("amazon-toys", data_dir, **options)


def load_grocery(data_dir=None, max_len=20, seed=0, max_users=None) -> Dataset:
    sequences, category = read_grocery(data_dir)
    info = {"source": "amazon-grocery-rechorus/train.csv + item_meta.csv (ReChorus "
                      "preprocessing of the Amazon Grocery_and_Gourmet_Food 5-core reviews)",
            "category": "i_category + 1"}
    return build("amazon-grocery", sequences, category, max_len=max_len, seed=seed,
                 max_users=max_users, info=info)
