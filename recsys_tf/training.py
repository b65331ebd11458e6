"""Training and evaluation: DataFrames -> tf.data -> fit, with progress and metrics.

``train_ranker`` / ``train_retrieval`` fit a model on a :class:`~recsys_tf.data.Dataset`;
``evaluate_ranker`` / ``evaluate_retrieval`` compute the metrics the command line writes.
All training runs under a ``tf.distribute`` strategy (the default one unless given).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from recsys_tf import metrics as M
from recsys_tf.backend import keras, tf


def make_dataset(feature_set, frame, features, batch_size=256, label=None, shuffle=False,
                 seed=0):
    """A batched ``tf.data.Dataset`` of ``(features dict[, label])`` from a DataFrame."""
    x = feature_set.arrays(frame, features)
    tensors = {k: tf.constant(v) for k, v in x.items()}
    if label is not None:
        y = tf.constant(frame[label].to_numpy(dtype=np.float32))
        data = tf.data.Dataset.from_tensor_slices((tensors, y))
    else:
        data = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        data = data.shuffle(min(len(frame), 100_000), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _verbose(verbose):
    if verbose is None:
        return 1 if sys.stdout.isatty() else 2
    return verbose


def train_ranker(model, ds, epochs=2, batch_size=256, learning_rate=1e-3, verbose=None,
                 patience=1, strategy=None, seed=0):
    """Fits a ranker on ``ds.train`` (early stopping on ``ds.valid`` when there is one).

    Returns a dict with ``train_seconds``, ``train_examples_per_sec``, ``epochs_run`` and the
    per-epoch ``history``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    fs, label = ds.feature_set, ds.feature_set.label
    with strategy.scope():
        if hasattr(model, "default_optimizer"):
            optimizer = model.default_optimizer(learning_rate)
        else:
            optimizer = keras.optimizers.Adam(learning_rate)
        model.compile(optimizer=optimizer, loss="binary_crossentropy",
                      metrics=[keras.metrics.AUC(name="auc")])
    train = make_dataset(fs, ds.train, model.features, batch_size, label, shuffle=True, seed=seed)
    callbacks, valid = [], None
    if ds.valid is not None and len(ds.valid):
        valid = make_dataset(fs, ds.valid, model.features, 4096, label)
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                       patience=patience,
                                                       restore_best_weights=True))
    start = time.perf_counter()
    hist = model.fit(train, validation_data=valid, epochs=epochs, callbacks=callbacks,
                     verbose=_verbose(verbose))
    seconds = time.perf_counter() - start
    epochs_run = len(hist.history.get("loss", []))
    return {"train_seconds": seconds, "epochs_run": epochs_run,
            "train_examples_per_sec": len(ds.train) * epochs_run / max(seconds, 1e-9),
            "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()}}


def predict(model, feature_set, frame, batch_size=4096):
    """Click probabilities for every row of ``frame`` (numpy ``[n]``)."""
    data = make_dataset(feature_set, frame, model.features, batch_size)
    return np.concatenate([model(b, training=False).numpy() for b in data]) if len(frame) else \
        np.zeros(0, np.float32)


def evaluate_ranker(model, ds, frame=None):
    """AUC, logloss and GAUC on ``frame`` (default ``ds.test``); ``oracle_auc`` when known."""
    frame = ds.test if frame is None else frame
    fs = ds.feature_set
    p = predict(model, fs, frame)
    y = frame[fs.label].to_numpy()
    out = {"auc": M.auc(y, p), "logloss": M.logloss(y, p)}
    if fs.user_id is not None:
        out["gauc"] = M.gauc(frame[fs.user_id].to_numpy(), y, p)
    if "p_click" in frame:
        out["oracle_auc"] = M.auc(y, frame["p_click"].to_numpy())
        out["oracle_logloss"] = M.logloss(y, frame["p_click"].to_numpy())
    return out


def train_retrieval(model, ds, epochs=3, batch_size=256, learning_rate=0.1, verbose=None,
                    strategy=None, seed=0):
    """Fits a two-tower model on ``ds.retrieval_train`` (Adagrad, as in TFRS's tutorials)."""
    strategy = strategy or tf.distribute.get_strategy()
    fs = ds.feature_set
    model.set_item_frequencies(ds.retrieval_train[fs.item_id].to_numpy())
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adagrad(learning_rate))
    features = model.query_features + model.candidate_features
    train = make_dataset(fs, ds.retrieval_train, features, batch_size, shuffle=True, seed=seed)
    start = time.perf_counter()
    hist = model.fit(train, epochs=epochs, verbose=_verbose(verbose))
    seconds = time.perf_counter() - start
    return {"train_seconds": seconds, "epochs_run": epochs,
            "train_examples_per_sec": len(ds.retrieval_train) * epochs / max(seconds, 1e-9),
            "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()}}


def item_embeddings(model, feature_set, items, batch_size=8192):
    """Candidate-tower embeddings ``[n_items, dim]`` for the rows of the ``items`` frame."""
    data = make_dataset(feature_set, items, model.candidate_features, batch_size)
    return np.concatenate([model.candidate_model(b).numpy() for b in data])


def query_embeddings(model, feature_set, frame, batch_size=8192):
    data = make_dataset(feature_set, frame, model.query_features, batch_size)
    return np.concatenate([model.query_model(b).numpy() for b in data])


def evaluate_retrieval(model, ds, ks=(10, 100), frame=None, chunk=2048):
    """Retrieval quality over the full item corpus, one query per held-out interaction.

    ``top_{k}_accuracy``: the held-out item is among the top k of all items (TFRS's
    FactorizedTopK protocol, nothing filtered). ``recall_at_{k}`` / ``ndcg_at_{k}`` / ``mrr``:
    the same ranking with the user's training items removed first (what a served list shows).
    """
    frame = ds.retrieval_test if frame is None else frame
    fs = ds.feature_set
    item_ids = ds.items[fs.item_id].to_numpy()
    index = {v: i for i, v in enumerate(item_ids.tolist())}
    cand = item_embeddings(model, fs, ds.items)
    queries = query_embeddings(model, fs, frame)
    target = np.array([index.get(v, -1) for v in frame[fs.item_id].tolist()])
    seen_by_user = {}
    if fs.user_id is not None:
        for u, items in ds.retrieval_train.groupby(fs.user_id)[fs.item_id]:
            seen_by_user[u] = np.array([index[v] for v in items.tolist() if v in index])
    users = frame[fs.user_id].tolist() if fs.user_id is not None else [None] * len(frame)
    kmax = max(ks)
    top_raw, top_filtered = [], []
    for s in range(0, len(frame), chunk):
        scores = queries[s:s + chunk] @ cand.T
        top_raw.append(_topk(scores, kmax))
        for r, u in enumerate(users[s:s + chunk]):
            seen = seen_by_user.get(u)
            if seen is not None and len(seen):
                keep = seen[seen != target[s + r]]
                scores[r, keep] = -np.inf
        top_filtered.append(_topk(scores, kmax))
    top_raw, top_filtered = np.concatenate(top_raw), np.concatenate(top_filtered)
    relevant = target[:, None]
    out = {}
    width = top_raw.shape[1]  # a catalogue smaller than k: every item is in the top k
    for k in ks:
        out[f"top_{k}_accuracy"] = M.hit_rate_at_k(top_raw, relevant, min(k, width))
        out[f"recall_at_{k}"] = M.recall_at_k(top_filtered, relevant, min(k, width))
    out["ndcg_at_10"] = M.ndcg_at_k(top_filtered, relevant, min(10, width))
    out["mrr"] = M.mrr(top_filtered, relevant)
    return out


def _topk(scores, k):
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)
