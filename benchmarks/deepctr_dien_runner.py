"""DeepCTR's DIEN on arrays exported by ``benchmarks/dien.py``: training examples/s and scores.

This script runs in a virtual environment of its own, not recsys_tf's: DeepCTR 0.9.4's DIEN
only runs on TensorFlow <= 2.12 (its RNN code needs ``array_ops.stack``), while recsys_tf pins
TensorFlow 2.20. It imports neither recsys_tf nor anything outside that environment::

    python3.11 -m venv /tmp/deepctr212
    /tmp/deepctr212/bin/pip install tensorflow==2.12.1 "numpy<1.24" deepctr==0.9.4
    env -u TF_USE_LEGACY_KERAS /tmp/deepctr212/bin/python benchmarks/deepctr_dien_runner.py \
        --data rows.npz --out deepctr.json --predictions deepctr_pred.npy

Input (``--data``, written by ``benchmarks/dien.py``): the train and test rows of one data set,
ids already mapped to ``1..n`` (0 = padding): ``{train,test}_{user,item,cat,label}`` ``[n]``,
``{train,test}_{hist_item,hist_cat}`` ``[n, max_len]`` (left-aligned, padded with 0),
``item_cat`` ``[n_items]`` (category of each item index) and the table sizes ``n_users``,
``n_items``, ``n_cats`` (padding row included).

Model: ``deepctr.models.DIEN`` with ``gru_type="AUGRU"`` and ``use_negsampling=True``; the
embedding size, attention and DNN sizes come from the command line so that they match the
model it is compared with. DeepCTR takes the auxiliary loss's negative behaviours as inputs
(``neg_hist_item_id``, ``neg_hist_cate_id``): for each real history step one item drawn
uniformly from the item pool (redrawn where it equals the real item), drawn here before the
clock starts. The model runs in graph mode (``tf.compat.v1.disable_eager_execution()``), as
DeepCTR's own DIEN example does: with eager execution on, building it fails. Training: Adam
(Keras' legacy class, which graph mode needs), binary cross-entropy, shuffled batches,
``--epochs`` epochs.

Output (``--out``): JSON with ``train_seconds`` (the ``fit`` call, graph building included,
as for recsys_tf's trainer), ``train_cpu_seconds`` (CPU time of this process over the same
call: steadier than wall time on a shared machine), ``train_examples_per_sec``, ``test_auc``
and the settings; the test probabilities go to ``--predictions`` (``.npy``) so that the
caller scores them (GAUC etc.) with its own metrics.
"""
import argparse
import json
import os
import platform
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help=".npz written by benchmarks/dien.py")
    p.add_argument("--out", required=True, help="JSON result")
    p.add_argument("--predictions", default=None, help=".npy of test probabilities")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=16, help="embedding size of every table")
    p.add_argument("--att-units", default="80,40")
    p.add_argument("--att-activation", default="sigmoid",
                   help="DeepCTR's default is 'dice'; 'sigmoid' matches recsys_tf's DIEN")
    p.add_argument("--dnn-units", default="200,80")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def sample_negative_history(rng, hist_item, item_cat, n_items):
    """``(neg_item, neg_cat)``: a uniform item index in ``1..n_items-1`` for each real step,
    never equal to the real item at that step; 0 where the history is padding."""
    real = hist_item > 0
    neg = rng.integers(1, n_items, size=hist_item.shape)
    clash = real & (neg == hist_item)
    while clash.any():
        neg[clash] = rng.integers(1, n_items, size=int(clash.sum()))
        clash = real & (neg == hist_item)
    neg = np.where(real, neg, 0)
    return neg, np.where(real, item_cat[neg], 0)


def auc(labels, scores):
    """ROC AUC by average ranks (ties count half)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    # DeepCTR's DIEN builds TF1 RNN cells that only work in graph mode (its own example
    # disables eager execution too; with eager on, building the model fails).
    tf.compat.v1.disable_eager_execution()
    import deepctr
    from deepctr.feature_column import SparseFeat, VarLenSparseFeat, get_feature_names
    from deepctr.models import DIEN

    tf.random.set_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    d = np.load(args.data)
    n_users, n_items, n_cats = int(d["n_users"]), int(d["n_items"]), int(d["n_cats"])
    max_len = int(d["train_hist_item"].shape[1])
    item_cat = d["item_cat"]

    def inputs(split, negatives):
        hist_item = d[f"{split}_hist_item"].astype(np.int32)
        x = {"user": d[f"{split}_user"].astype(np.int32),
             "item_id": d[f"{split}_item"].astype(np.int32),
             "cate_id": d[f"{split}_cat"].astype(np.int32),
             "hist_item_id": hist_item,
             "hist_cate_id": d[f"{split}_hist_cat"].astype(np.int32),
             "seq_length": (hist_item > 0).sum(axis=1).astype(np.int32)}
        if negatives:
            neg_item, neg_cat = sample_negative_history(rng, hist_item, item_cat, n_items)
        else:  # the auxiliary loss is not part of the prediction: any value will do
            neg_item, neg_cat = np.zeros_like(hist_item), np.zeros_like(hist_item)
        x["neg_hist_item_id"] = neg_item.astype(np.int32)
        x["neg_hist_cate_id"] = neg_cat.astype(np.int32)
        return x

    dim = args.dim
    columns = [SparseFeat("user", n_users, embedding_dim=dim),
               SparseFeat("item_id", n_items, embedding_dim=dim),
               SparseFeat("cate_id", n_cats, embedding_dim=dim)]
    for prefix in ("hist_", "neg_hist_"):
        columns += [
            VarLenSparseFeat(SparseFeat(prefix + "item_id", n_items, embedding_dim=dim,
                                        embedding_name="item_id"),
                             maxlen=max_len, length_name="seq_length"),
            VarLenSparseFeat(SparseFeat(prefix + "cate_id", n_cats, embedding_dim=dim,
                                        embedding_name="cate_id"),
                             maxlen=max_len, length_name="seq_length")]
    names = get_feature_names(columns)
    units = lambda s: tuple(int(u) for u in s.split(",") if u)  # noqa: E731

    x_train, x_test = inputs("train", True), inputs("test", False)
    x_train = {n: x_train[n] for n in names}
    x_test = {n: x_test[n] for n in names}
    y_train, y_test = d["train_label"].astype(np.float32), d["test_label"]

    model = DIEN(columns, ["item_id", "cate_id"], gru_type="AUGRU", use_negsampling=True,
                 dnn_hidden_units=units(args.dnn_units), att_hidden_units=units(args.att_units),
                 att_activation=args.att_activation, seed=args.seed)
    # graph-mode Keras needs the legacy optimizer classes (same Adam update)
    model.compile(tf.keras.optimizers.legacy.Adam(args.learning_rate), "binary_crossentropy")
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
              verbose=0)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    p = model.predict(x_test, batch_size=4096, verbose=0).reshape(-1)
    if args.predictions:
        np.save(args.predictions, p)
    result = {
        "library": f"deepctr {deepctr.__version__}", "tensorflow": tf.__version__,
        "python": platform.python_version(), "model": "deepctr.models.DIEN",
        "gru_type": "AUGRU", "use_negsampling": True,
        "eager": False, "embedding_dim": dim, "max_len": max_len,
        "att_hidden_units": list(units(args.att_units)), "att_activation": args.att_activation,
        "dnn_hidden_units": list(units(args.dnn_units)), "batch_size": args.batch_size,
        "epochs": args.epochs, "optimizer": f"Adam({args.learning_rate})",
        "n_train": int(len(y_train)), "n_test": int(len(y_test)),
        "train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
        "train_examples_per_sec": len(y_train) * args.epochs / seconds,
        "test_auc": auc(y_test, p), "cpu_count": os.cpu_count()}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
