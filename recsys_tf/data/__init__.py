"""Datasets: each returns a :class:`Dataset` (DataFrames + the FeatureSet that declares them).

``load(name, data_dir=None, **options)`` is the one entry point; ``DATASETS`` lists the names.
Real data is read from ``data_dir`` (or ``$RECSYS_TF_DATA_DIR``); the synthetic set needs none.
"""
from __future__ import annotations

import dataclasses
import importlib
import os

import pandas as pd

from recsys_tf.features import FeatureSet

# name -> "module:function"; the function takes (data_dir, **options) and returns a Dataset.
DATASETS = {
    "synthetic": "recsys_tf.data.synthetic:load",
    "movielens-100k": "recsys_tf.data.movielens:load",
    "amazon-beauty": "recsys_tf.data.amazon:load_beauty",
    "amazon-sports": "recsys_tf.data.amazon:load_sports",
    "amazon-toys": "recsys_tf.data.amazon:load_toys",
    "amazon-grocery": "recsys_tf.data.amazon:load_grocery",
    "criteo": "recsys_tf.data.criteo:load",
    "criteo-synthetic": "recsys_tf.data.criteo_synthetic:load",
}
# the criteo-family members (recsys_tf.data.criteo_family): criteo-family-<member>
for _member in ("missing-informative", "missing-random", "shrunk", "flat", "drift",
                "dense-cross", "heavy-tail", "few-strong", "rare-clicks", "frequent-clicks"):
    DATASETS[f"criteo-family-{_member}"] = (
        "recsys_tf.data.criteo_family:load_" + _member.replace("-", "_"))


@dataclasses.dataclass
class Dataset:
    """One dataset, split and declared.

    Attributes:
      name: registry name.
      feature_set: declares every feature column of ``train``/``test`` (and the label).
      train, valid, test: interaction rows: one column per feature, plus the label column
        (``feature_set.label``); the synthetic set adds ``p_click`` (true click probability).
        ``valid`` may be None.
      items: one row per item, the item-role feature columns (``feature_set.with_role("item")``),
        keyed by ``feature_set.item_id``.
      users: one row per user: the user-role feature columns as of the end of the training data
        (histories are the latest ``max_len`` items), keyed by ``feature_set.user_id``, plus a
        ``seen`` column: the list of item ids the user interacted with in training.
      retrieval_train, retrieval_test: the (user, item) positive interactions for retrieval,
        same columns as ``train``.
      info: free-form facts for the model card (source, split protocol, sizes, oracle AUC...).
    """

    name: str
    feature_set: FeatureSet
    train: pd.DataFrame
    test: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    retrieval_train: pd.DataFrame
    retrieval_test: pd.DataFrame
    valid: pd.DataFrame | None = None
    info: dict = dataclasses.field(default_factory=dict)


def data_dir(explicit: str | None = None) -> str | None:
    """``explicit``, else ``$RECSYS_TF_DATA_DIR``, else None."""
    return explicit or os.environ.get("RECSYS_TF_DATA_DIR") or None


def load(name: str, data_dir_: str | None = None, **options) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    module, fn = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), fn)(data_dir(data_dir_), **options)
