"""The ranking zoo against DeepCTR 0.9.4, side by side in one run: quality and training speed.

What is compared
----------------
Ours (:mod:`recsys_tf.models`: ``wide_deep``, ``deepfm``, ``xdeepfm``, ``dcn_v2``) against
DeepCTR's ``WDL``, ``DeepFM``, ``xDeepFM`` and ``DCN`` (``cross_parameterization="matrix"``,
i.e. DCN-M, DCN-v2's full-rank cross) on two data sets:

* ``movielens-100k``: ``rating >= 4`` as the label, the loader's random 80/20 split (seed 42);
  the last 10% of the training rows (a random tenth: train is a permutation) are held out for
  validation. Features: user id, age bucket, gender, occupation, zip prefix, item id, genre,
  release year (numeric), hour, and the user's previous 20 items and their genres (mean-pooled
  sequences sharing the item id / genre tables).
* ``criteo-synthetic``: 200,000 rows in the Criteo format (13 integer + 26 categorical fields,
  Zipf categories, planted first-order, pairwise-cross and low-rank factor effects), split
  80/10/10 in order; every row's true click probability is known, so the oracle AUC is too.

Both implementations get the same rows and the same encoded features: the categorical
vocabularies (values under the data set's count threshold -> OOV), the numeric values
normalised with the same constants (DeepCTR gets them as ``DenseFeat``; ours normalises raw
values inside the model), the sequences as ``VarLenSparseFeat(combiner="mean")``. The same
embedding size (16), DNN (256, 128), batch size (1024), Adam learning rate (1e-3), epoch cap
(10) and early stopping (validation AUC, patience 1, the best epoch's weights restored; one
callback for both); CIN (32, 32) with split-half over the id embeddings; 3 cross layers.

* DeepCTR: its models with their defaults otherwise (L2 1e-5 on embeddings and linear weights,
  embeddings drawn from N(0, 1e-4)), Keras' ``Adam``, ``model.fit`` on the numpy arrays, as in
  its examples.
* Ours: :func:`recsys_tf.training.train_ranker` with its defaults - lookups done once before
  training (encoded inputs), fused embedding tables, lazy (sparse-row) Adam for the embedding
  tables at 3x the learning rate (``embedding_lr_multiplier``, chosen on validation AUC) and
  Keras' Adam for the rest (Wide & Deep: FTRL for the wide part), 16 steps per execution, an
  exponential moving average of the weights (momentum 0.99) scored beside the raw weights at
  every epoch's end, the better on validation AUC kept - and the models' defaults, except ``compute_dtype`` (``--compute-dtype``, default
  ``auto``: the DNN, CIN and cross matmuls in bfloat16 where the CPU has AMX/AVX512-BF16 units,
  float32 elsewhere; weights, embeddings, FM terms and logits stay float32). The remaining
  differences between the models are listed under ``note`` in the JSON.

Measured
--------
* Quality: test AUC and logloss per model, the AUC difference (ours - DeepCTR) against the
  target of +0.003, and on ``criteo-synthetic`` the gap to the oracle AUC for both. With several
  seeds (``--seeds``) the figures are means and the spread is reported.
* Training speed: after the quality runs the trained models are trained on, one epoch each in
  turn (an untimed epoch each first, then ``--rounds`` timed rounds; each in the configuration
  it was trained with, no validation), so load from other work on the machine hits them
  alike. Training examples per second (wall) and per CPU-second (this process's CPU time),
  and the ratio ours / DeepCTR of the medians (target 1.5). A float32 copy of ours is timed
  alongside (``ours_float32_speed``; skip it with ``--no-float32-arm``).
* Predict latency: one batch of 1,024 test rows through a compiled ``model(x)``, median of
  ``--latency-reps`` calls, taken in turn; ours takes raw feature values (lookups inside the
  model, as an export serves), DeepCTR the already-encoded integer arrays.

Usage (the ``bench`` extra installs DeepCTR 0.9.4)::

    pip install -e ".[bench]"
    python benchmarks/ranking.py            # about 20 min on 2 cores
    python benchmarks/ranking.py --quick    # a few minutes: 60k synthetic rows, 4 epochs, 1 round

Defaults on data nobody tuned them on (``--family``)
----------------------------------------------------
``python benchmarks/ranking.py --family [--sets MEMBER ...] [--seeds 0 1] [--family-rows N]``
runs each ranker at *its defaults* (``recsys_tf.pipeline.RANKER_DEFAULTS`` and the models'
constructors, on the loader's default declaration of missing integers) against DeepCTR 0.9.4's
same model at *its* defaults (constructor defaults, 16-d embeddings, Keras' Adam, one epoch at
batch 1024, every train category kept, integers filled with 0, ``log1p`` and standardised) on
members of :mod:`recsys_tf.data.criteo_family` (default: the members held out from choosing
the defaults, ``FAMILY_HELD_OUT``; ``FAMILY_TUNING`` chose them). Per cell: test AUC, logloss,
oracle gap, and training examples/s of the whole ``fit`` (wall and per CPU-second of this
process; ours includes its per-epoch validation passes), ours then DeepCTR's per seed in turn.
``--no-deepctr`` with ``--train-option`` / ``--model-option`` / ``--data-option`` probes
candidate defaults. Writes ``results/ranking_family.json`` (after every data set) and
``ranking_family.png``.

Real data is read from ``--data-dir`` / ``$RECSYS_TF_DATA_DIR`` (default ``../shared/data`` beside
the clone). Writes ``benchmarks/results/ranking.json`` and ``ranking.png``. Nothing here uses
the network (DeepCTR's import-time version check is answered offline).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("RECSYS_TF_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import recsys_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from common import machine_info, write_results  # noqa: E402
from recsys_tf import data, metrics, models, training  # noqa: E402
from recsys_tf.backend import keras, tf  # noqa: E402
from recsys_tf.features import Numeric, Sequence  # noqa: E402
from recsys_tf.cli import _parse_options  # noqa: E402  (KEY=VALUE options, as the CLI's)
from recsys_tf.layers.embedding import normalise  # noqa: E402

MODELS = ("wide_deep", "deepfm", "xdeepfm", "dcn_v2")
DEEPCTR_NAMES = {"wide_deep": "WDL", "deepfm": "DeepFM", "xdeepfm": "xDeepFM",
                 "dcn_v2": "DCN (matrix)"}
DATASETS = ("movielens-100k", "criteo-synthetic")
DIM, HIDDEN, BATCH, LR = 16, (256, 128), 1024, 1e-3
CIN, CROSS_LAYERS = (32, 32), 3
AUC_TARGET, SPEED_TARGET = 0.003, 1.5
MODEL_NOTES = {
    "wide_deep": "ours: wide part = one-hot of every feature, id counts of every history "
                 "(keras.experimental.LinearModel, the sparse input multiplied as one sparse x dense "
                 "matmul, FTRL), deep part = embeddings + numeric "
                 "values, Adam; DeepCTR WDL: linear part = 1-d embeddings + dense kernel, one "
                 "Adam for both",
    "deepfm": "ours: numeric features are FM fields (z * v_f, in FM and DNN); DeepCTR: "
              "numeric values go to the DNN and linear part only",
    "xdeepfm": "ours: CIN without activation (paper), DeepCTR: CIN with relu (its default); "
               "both CINs cross the id embeddings only (ours: cin_features = the categorical "
               "and sequence features), numeric fields reach ours' DNN and linear term as "
               "field embeddings, DeepCTR's as values",
    "dcn_v2": "ours: DCN-v2 stacked (cross network, then DNN), no linear term; DeepCTR DCN "
              "matrix: cross and DNN in parallel plus a linear logit",
}


# -- DeepCTR --------------------------------------------------------------------------------
def import_deepctr():
    """``deepctr.models`` / ``deepctr.feature_column``, with the import-time version check
    (a thread calling PyPI) answered offline."""
    import requests

    class _Offline:
        status_code = 0
        text = ""

    real_get, before = requests.get, set(threading.enumerate())
    requests.get = lambda *a, **k: _Offline()
    try:
        import deepctr
        import deepctr.feature_column
        import deepctr.models
    finally:
        for t in set(threading.enumerate()) - before:
            t.join(5)
        requests.get = real_get
    return deepctr


def deepctr_columns(fs, features):
    from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat

    cols = []
    for n in features:
        f = fs[n]
        if isinstance(f, Numeric):
            cols.append(DenseFeat(n, 1))
            continue
        base = fs.categorical_of(n)
        size = base.num_buckets + 1           # row 0: padding (DeepCTR masks id 0 in sequences)
        if isinstance(f, Sequence):
            cols.append(VarLenSparseFeat(SparseFeat(n, size, DIM, embedding_name=base.table),
                                         f.max_len, combiner="mean"))
        else:
            cols.append(SparseFeat(n, size, DIM, embedding_name=base.table))
    return cols


def deepctr_arrays(fs, frame, features):
    """DeepCTR's inputs: our lookup's row index + 1 (0 = sequence padding), normalised numerics."""
    out = {}
    for n in features:
        f = fs[n]
        if isinstance(f, Numeric):
            out[n] = normalise(f, frame[n].to_numpy(np.float32)).numpy().astype(np.float32)
            continue
        base = fs.categorical_of(n)
        raw = fs.arrays(frame, [n])[n]
        if base.hash_buckets is not None:
            raise ValueError(f"{n}: hashed features are not used in this benchmark")
        index = {v: i + base.num_oov + 1 for i, v in enumerate(base.vocabulary)}
        flat = pd.Series(raw.reshape(-1)).map(index).fillna(1).to_numpy(np.int32)
        if isinstance(f, Sequence):
            pad = raw.reshape(-1) == base.pad
            flat[pad] = 0
        out[n] = flat.reshape(raw.shape)
    return out


def deepctr_model(name, cols):
    from deepctr import models as dm

    if name == "wide_deep":
        return dm.WDL(cols, cols, dnn_hidden_units=HIDDEN, seed=1024)
    if name == "deepfm":
        return dm.DeepFM(cols, cols, dnn_hidden_units=HIDDEN, seed=1024)
    if name == "xdeepfm":
        return dm.xDeepFM(cols, cols, dnn_hidden_units=HIDDEN, cin_layer_size=CIN, seed=1024)
    if name == "dcn_v2":
        return dm.DCN(cols, cols, cross_num=CROSS_LAYERS, cross_parameterization="matrix",
                      dnn_hidden_units=HIDDEN, seed=1024)
    raise ValueError(name)


# -- data ---------------------------------------------------------------------------------
def load_dataset(name, quick, data_dir):
    if name == "movielens-100k":
        ds = data.load(name, data_dir)
        n = len(ds.train)
        n_valid = n // 10
        train = ds.train.iloc[: n - n_valid].reset_index(drop=True)
        valid = ds.train.iloc[n - n_valid:].reset_index(drop=True)
        ds = dataclasses.replace(ds, train=train, valid=valid,
                                 feature_set=ds.feature_set.fit_numeric(train))
        ds.info = dict(ds.info, n_train=len(train), n_valid=len(valid),
                       valid="the last 10% of the random training permutation")
        return ds
    if name == "criteo-synthetic":
        return data.load(name, data_dir, n_rows=60_000 if quick else 200_000)
    raise ValueError(name)


# -- training -------------------------------------------------------------------------------
class Arm:
    """One side of a comparison: a model, how it trains for one epoch, how it predicts."""

    def __init__(self, model, epoch, predict, batch_1024):
        self.model, self.epoch, self.predict, self.batch = model, epoch, predict, batch_1024


def ours_model(name, fs, compute_dtype):
    opts = dict(dim=DIM, dnn_units=HIDDEN, compute_dtype=compute_dtype)
    if name == "xdeepfm":
        opts["cin_sizes"] = CIN
        opts["cin_features"] = [n for n in fs.names if not isinstance(fs[n], Numeric)]
    if name == "dcn_v2":
        opts["cross_layers"] = CROSS_LAYERS
    return models.get(name)(fs, **opts)


def ours_epoch(model, ds, seed):
    """One training epoch in train_ranker's configuration (the model compiled by it, the
    weight averaging it runs; the validation pass is left out, as on DeepCTR's side)."""
    train_data = training.encoded_dataset(model, ds.feature_set, ds.train, BATCH,
                                          ds.feature_set.label, shuffle=True, seed=seed)

    averaging = training.WeightAveraging(training.WEIGHT_AVERAGING)   # one, as in a fit

    def epoch():
        model.fit(train_data, epochs=1, verbose=0, callbacks=[averaging])

    return epoch


def speed_arm_float32(name, ds, seed):
    """An untrained float32 copy of ours, compiled as train_ranker compiles it, warmed up by
    one epoch: the speed figures without bfloat16 (``--compute-dtype`` aside)."""
    keras.utils.set_random_seed(seed)
    model = ours_model(name, ds.feature_set, "float32")
    model.compile(optimizer=training.ranker_optimizer(model, LR, "lazy_adam"),
                  loss="binary_crossentropy", steps_per_execution=16)
    epoch = ours_epoch(model, ds, seed)
    epoch()
    fn = tf.function(lambda x: model(x, training=False))
    batch = {k: tf.constant(v) for k, v in
             ds.feature_set.arrays(ds.test.head(1024), model.features).items()}
    return Arm(model, epoch, fn, batch)


def train_ours(name, ds, seed, epochs, compute_dtype):
    keras.utils.set_random_seed(seed)
    model = ours_model(name, ds.feature_set, compute_dtype)
    fit = training.train_ranker(model, ds, epochs=epochs, batch_size=BATCH, learning_rate=LR,
                                verbose=0, seed=seed)
    scores = training.evaluate_ranker(model, ds)
    epoch = ours_epoch(model, ds, seed)

    fn = tf.function(lambda x: model(x, training=False))
    batch = {k: tf.constant(v) for k, v in
             ds.feature_set.arrays(ds.test.head(1024), model.features).items()}
    return fit, scores, Arm(model, epoch, fn, batch)


def train_deepctr(name, ds, seed, epochs, arrays):
    keras.utils.set_random_seed(seed)
    fs, label = ds.feature_set, ds.feature_set.label
    cols = deepctr_columns(fs, fs.names)
    model = deepctr_model(name, cols)
    model.compile(keras.optimizers.Adam(LR), "binary_crossentropy")
    x_tr, x_va, x_te = arrays
    y_tr = ds.train[label].to_numpy(np.float32)
    valid = tf.data.Dataset.from_tensor_slices(x_va).batch(4096)
    callbacks = [training.ValidationMetrics(valid, ds.valid[label].to_numpy()),
                 keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=1,
                                               restore_best_weights=True)]
    start = time.perf_counter()
    hist = model.fit(x_tr, y_tr, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0,
                     callbacks=callbacks)
    seconds = time.perf_counter() - start
    p = training.predict_batches(model, tf.data.Dataset.from_tensor_slices(x_te).batch(4096))
    y = ds.test[label].to_numpy()
    scores = {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p)}
    epochs_run = len(hist.history["loss"])
    fit = {"train_seconds": seconds, "epochs_run": epochs_run,
           "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()}}

    def epoch():
        model.fit(x_tr, y_tr, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)

    fn = tf.function(lambda x: model(x, training=False))
    batch = {k: tf.constant(v[:1024]) for k, v in x_te.items()}
    return fit, scores, Arm(model, epoch, fn, batch)


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def measure_speed(arms, n_train, rounds, reps):
    """Training epochs and predict calls of every arm, alternating; medians and ratios to
    DeepCTR's (``arms``: name -> Arm, with ``"deepctr"`` among them)."""
    wall = {k: [] for k in arms}
    cpu = {k: [] for k in arms}
    for arm in arms.values():    # untimed: the first epoch after training pays for set-up
        arm.epoch()              # (DeepCTR's fit builds its data adapter and step anew)
    for _ in range(rounds):
        for key, arm in arms.items():
            w, c = timed(arm.epoch)
            wall[key].append(w)
            cpu[key].append(c)
    lat = {k: [] for k in arms}
    for arm in arms.values():
        arm.predict(arm.batch)                      # trace
    for _ in range(reps):
        for key, arm in arms.items():
            t = time.perf_counter()
            arm.predict(arm.batch).numpy()
            lat[key].append((time.perf_counter() - t) * 1000)
    out = {}
    for key in arms:
        out[key] = {
            "train_examples_per_sec": n_train / statistics.median(wall[key]),
            "train_examples_per_cpu_sec": n_train / statistics.median(cpu[key]),
            "epoch_seconds": [round(x, 3) for x in wall[key]],
            "epoch_cpu_seconds": [round(x, 3) for x in cpu[key]],
            "predict_1024_ms": statistics.median(lat[key]),
        }
    base = out["deepctr"]
    for key in arms:
        if key == "deepctr":
            continue
        out[key]["speedup_wall"] = (out[key]["train_examples_per_sec"]
                                    / base["train_examples_per_sec"])
        out[key]["speedup_cpu"] = (out[key]["train_examples_per_cpu_sec"]
                                   / base["train_examples_per_cpu_sec"])
        out[key]["speedup_wall_per_round"] = [round(b / a, 3)
                                              for a, b in zip(wall[key], wall["deepctr"])]
        out[key]["predict_speedup"] = base["predict_1024_ms"] / out[key]["predict_1024_ms"]
    return out


def _mean(xs):
    return float(np.mean(xs)) if xs else float("nan")


def run_dataset(name, args, log):
    t0 = time.perf_counter()
    ds = load_dataset(name, args.quick, args.data_dir)
    fs = ds.feature_set
    oracle = None
    if "p_click" in ds.test:
        oracle = metrics.auc(ds.test[fs.label].to_numpy(), ds.test["p_click"].to_numpy())
    arrays = tuple(deepctr_arrays(fs, f, fs.names) for f in (ds.train, ds.valid, ds.test))
    log(f"{name}: {len(ds.train):,} train / {len(ds.valid):,} valid / {len(ds.test):,} test rows"
        + (f", oracle test AUC {oracle:.4f}" if oracle is not None else "")
        + f" ({time.perf_counter() - t0:.0f} s to load and encode)")
    result = {"n_train": len(ds.train), "n_valid": len(ds.valid), "n_test": len(ds.test),
              "oracle_auc": oracle, "label_rate_train": float(ds.train[fs.label].mean()),
              "models": {}}
    for m in args.models:
        runs = {"ours": [], "deepctr": []}
        arms = {}
        for seed in args.seeds:
            fit, sc, arm = train_ours(m, ds, seed, args.epochs, args.compute_dtype)
            runs["ours"].append((fit, sc))
            arms["ours"] = arm
            fit2, sc2, arm2 = train_deepctr(m, ds, seed, args.epochs, arrays)
            runs["deepctr"].append((fit2, sc2))
            arms["deepctr"] = arm2
            log(f"  {m:9s} seed {seed}: ours AUC {sc['auc']:.4f} ({fit['epochs_run']} ep, "
                f"{fit['train_seconds']:.0f} s) | DeepCTR {DEEPCTR_NAMES[m]} AUC {sc2['auc']:.4f} "
                f"({fit2['epochs_run']} ep, {fit2['train_seconds']:.0f} s)")
        if args.float32_arm and args.compute_dtype != "float32":
            arms["ours_float32"] = speed_arm_float32(m, ds, args.seeds[0])
        speed = measure_speed(arms, len(ds.train), args.rounds, args.latency_reps)
        row = {"deepctr_model": DEEPCTR_NAMES[m], "note": MODEL_NOTES[m]}
        for key in ("ours", "deepctr"):
            aucs = [sc["auc"] for _, sc in runs[key]]
            speed_key = {k: v for k, v in speed[key].items() if not k.startswith(("speedup",
                                                                                  "predict_sp"))}
            lls = [sc["logloss"] for _, sc in runs[key]]
            row[key] = {
                "auc": _mean(aucs), "logloss": _mean(lls),
                "auc_per_seed": aucs, "auc_spread": max(aucs) - min(aucs),
                "epochs_run": [fit["epochs_run"] for fit, _ in runs[key]],
                "train_seconds": [round(fit["train_seconds"], 2) for fit, _ in runs[key]],
                "gap_to_oracle_auc": None if oracle is None else oracle - _mean(aucs),
                "val_auc_per_epoch": [fit["history"].get("val_auc") for fit, _ in runs[key]],
                **({"val_auc_raw_per_epoch": [fit["history"].get("val_auc_raw")
                                              for fit, _ in runs[key]],
                    "val_auc_averaged_per_epoch": [fit["history"].get("val_auc_averaged")
                                                   for fit, _ in runs[key]]}
                   if key == "ours" else {}),
                **speed_key,
            }
        row["auc_delta"] = row["ours"]["auc"] - row["deepctr"]["auc"]
        row["auc_delta_per_seed"] = [a - b for a, b in zip(row["ours"]["auc_per_seed"],
                                                           row["deepctr"]["auc_per_seed"])]
        row["logloss_delta"] = row["ours"]["logloss"] - row["deepctr"]["logloss"]
        row["auc_target_met"] = bool(row["auc_delta"] >= AUC_TARGET)
        for k in ("speedup_wall", "speedup_cpu", "speedup_wall_per_round", "predict_speedup"):
            row[k] = speed["ours"][k]
        row["speed_target_met"] = bool(row["speedup_wall"] >= SPEED_TARGET)
        if "ours_float32" in speed:
            row["ours_float32_speed"] = speed["ours_float32"]
        result["models"][m] = row
        log(f"  {m:9s}: AUC {row['ours']['auc']:.4f} vs {row['deepctr']['auc']:.4f} "
            f"(delta {row['auc_delta']:+.4f}); train "
            f"{row['ours']['train_examples_per_sec']:,.0f} vs "
            f"{row['deepctr']['train_examples_per_sec']:,.0f} ex/s (x{row['speedup_wall']:.2f} "
            f"wall, x{row['speedup_cpu']:.2f} CPU"
            + (f"; float32: x{row['ours_float32_speed']['speedup_wall']:.2f} wall, "
               f"x{row['ours_float32_speed']['speedup_cpu']:.2f} CPU"
               if "ours_float32_speed" in row else "")
            + "); predict-1024 "
            f"{row['ours']['predict_1024_ms']:.1f} vs {row['deepctr']['predict_1024_ms']:.1f} ms")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


# -- report -------------------------------------------------------------------------------
def table(results):
    lines = ["| data | model | AUC ours | AUC DeepCTR | delta | logloss ours | logloss DeepCTR | "
             "oracle gap ours | oracle gap DeepCTR | train ex/s ours | train ex/s DeepCTR | "
             "speedup (wall / CPU) | predict-1024 ms ours | predict-1024 ms DeepCTR |",
             "|" + "---|" * 14]
    for dname, r in results.items():
        for m, row in r["models"].items():
            o, d = row["ours"], row["deepctr"]
            gap = (lambda x: "-" if x is None else f"{x:.4f}")
            lines.append(
                f"| {dname} | {m} vs {row['deepctr_model']} | {o['auc']:.4f} | {d['auc']:.4f} | "
                f"{row['auc_delta']:+.4f} | {o['logloss']:.4f} | {d['logloss']:.4f} | "
                f"{gap(o['gap_to_oracle_auc'])} | {gap(d['gap_to_oracle_auc'])} | "
                f"{o['train_examples_per_sec']:,.0f} | {d['train_examples_per_sec']:,.0f} | "
                f"{row['speedup_wall']:.2f} / {row['speedup_cpu']:.2f} | "
                f"{o['predict_1024_ms']:.1f} | {d['predict_1024_ms']:.1f} |")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    for j, dname in enumerate(names):
        r = results[dname]
        ms = list(r["models"])
        x = np.arange(len(ms))
        ax = axes[0, j]
        ours = [r["models"][m]["ours"]["auc"] for m in ms]
        theirs = [r["models"][m]["deepctr"]["auc"] for m in ms]
        ax.bar(x - 0.2, ours, 0.4, label="recsys_tf")
        ax.bar(x + 0.2, theirs, 0.4, label="DeepCTR 0.9.4")
        if r.get("oracle_auc"):
            ax.axhline(r["oracle_auc"], color="k", ls="--", lw=1, label="oracle")
        lo = min(ours + theirs) - 0.02
        hi = max(ours + theirs + [r.get("oracle_auc") or 0]) + 0.01
        ax.set_ylim(lo, hi)
        ax.set_xticks(x, ms)
        ax.set_ylabel("test AUC")
        ax.set_title(f"{dname}: quality")
        ax.legend(fontsize=8)
        ax = axes[1, j]
        wall = [r["models"][m]["speedup_wall"] for m in ms]
        cpu = [r["models"][m]["speedup_cpu"] for m in ms]
        ax.bar(x - 0.2, wall, 0.4, label="wall clock")
        ax.bar(x + 0.2, cpu, 0.4, label="CPU time")
        ax.axhline(1.0, color="k", lw=1)
        ax.axhline(SPEED_TARGET, color="r", ls="--", lw=1, label=f"target x{SPEED_TARGET}")
        ax.set_xticks(x, ms)
        ax.set_ylabel("training throughput, ours / DeepCTR")
        ax.set_title(f"{dname}: training speed (batch {BATCH})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def environment():
    import deepctr

    from recsys_tf.layers.mlp import cpu_has_fast_bfloat16

    return machine_info(tf_keras=keras.__version__, deepctr=deepctr.__version__,
                        cpu_has_fast_bfloat16=cpu_has_fast_bfloat16())


# -- the criteo family: ours at its defaults vs DeepCTR at its defaults ----------------------
# Which members chose the defaults and which are held out (benchmarks/README.md).
FAMILY_TUNING = ("missing-informative", "flat", "drift", "heavy-tail", "rare-clicks")
FAMILY_HELD_OUT = ("missing-random", "shrunk", "dense-cross", "few-strong", "frequent-clicks")
# DeepCTR 0.9.4 as a new user runs it: its models' constructor defaults, 16-d embeddings,
# Keras' Adam (1e-3), one epoch at batch 1024, every train category kept.
DEEPCTR_DEFAULTS = {"epochs": 1, "batch_size": 1024, "embedding_dim": 16}


def family_deepctr_inputs(ds):
    """DeepCTR's columns and arrays: each C field's every train value its own index (2..;
    1 = unseen, 0 unused), each I field filled with 0, ``log1p(max(x, 0))`` and standardised
    with the train mean and std (DeepCTR's Criteo example fills 0; the log keeps its DNN
    from seeing raw heavy-tailed counts)."""
    from deepctr.feature_column import DenseFeat, SparseFeat

    from recsys_tf.data import criteo as C

    cols, enc = [], {}
    for c in C.INT_COLUMNS:
        z = np.log1p(np.maximum(np.nan_to_num(ds.train[c].to_numpy(np.float64), nan=0.0), 0))
        enc[c] = (float(z.mean()), float(z.std()) or 1.0)
        cols.append(DenseFeat(c, 1))
    for c in C.CAT_COLUMNS:
        enc[c] = pd.Index(pd.unique(ds.train[c].to_numpy()))
        cols.append(SparseFeat(c, len(enc[c]) + 2, DEEPCTR_DEFAULTS["embedding_dim"]))

    def arrays(frame):
        out = {}
        for c in C.INT_COLUMNS:
            z = np.log1p(np.maximum(np.nan_to_num(frame[c].to_numpy(np.float64), nan=0.0), 0))
            out[c] = ((z - enc[c][0]) / enc[c][1]).astype(np.float32)
        for c in C.CAT_COLUMNS:
            out[c] = (enc[c].get_indexer(frame[c].to_numpy()) + 2).astype(np.int32)
        return out

    return cols, tuple(arrays(f) for f in (ds.train, ds.valid, ds.test))


def family_deepctr_model(name, cols, seed):
    from deepctr import models as dm

    make = {"wide_deep": dm.WDL, "deepfm": dm.DeepFM, "xdeepfm": dm.xDeepFM}.get(name)
    if make is not None:
        return make(cols, cols, seed=1024 + seed)
    return dm.DCN(cols, cols, cross_parameterization="matrix", seed=1024 + seed)


def _timed_call(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def family_train_ours(name, ds, seed, model_options, train_options):
    """Ours at its defaults (``pipeline.RANKER_DEFAULTS`` and the model's constructor), as
    ``recsys-tf train MODEL`` trains it; ``model_options`` / ``train_options`` override."""
    from recsys_tf import pipeline

    keras.utils.set_random_seed(seed)
    model = models.get(name)(ds.feature_set, **model_options)
    hp = {**pipeline.RANKER_DEFAULTS, **train_options}
    fit, wall, cpu = _timed_call(lambda: training.train_ranker(model, ds, verbose=0, seed=seed,
                                                               **hp))
    sc = training.evaluate_ranker(model, ds)
    n = len(ds.train) * fit["epochs_run"]
    return {"auc": float(sc["auc"]), "logloss": float(sc["logloss"]),
            "epochs_run": fit["epochs_run"], "train_seconds": round(fit["train_seconds"], 2),
            "train_examples_per_sec": n / fit["train_seconds"],
            "train_examples_per_cpu_sec": n / max(cpu, 1e-9),
            "val_auc_per_epoch": fit["history"].get("val_auc")}


def family_train_deepctr(name, ds, seed, cols, arrays):
    keras.utils.set_random_seed(seed)
    model = family_deepctr_model(name, cols, seed)
    model.compile("adam", "binary_crossentropy")
    x_tr, _, x_te = arrays
    y_tr = ds.train[ds.feature_set.label].to_numpy(np.float32)
    _, wall, cpu = _timed_call(lambda: model.fit(
        x_tr, y_tr, batch_size=DEEPCTR_DEFAULTS["batch_size"],
        epochs=DEEPCTR_DEFAULTS["epochs"], shuffle=True, verbose=0))
    p = training.predict_batches(model, tf.data.Dataset.from_tensor_slices(x_te).batch(4096))
    y = ds.test[ds.feature_set.label].to_numpy()
    n = len(y_tr) * DEEPCTR_DEFAULTS["epochs"]
    return {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p),
            "epochs_run": DEEPCTR_DEFAULTS["epochs"], "train_seconds": round(wall, 2),
            "train_examples_per_sec": n / wall, "train_examples_per_cpu_sec": n / max(cpu, 1e-9)}


def _summary(runs, oracle):
    out = {k: _mean([r[k] for r in runs]) for k in
           ("auc", "logloss", "train_examples_per_sec", "train_examples_per_cpu_sec")}
    out["auc_per_seed"] = [r["auc"] for r in runs]
    out["runs"] = runs
    out["gap_to_oracle_auc"] = None if oracle is None else oracle - out["auc"]
    return out


def run_family_dataset(name, args, log):
    """Every model on one data set: ours at its defaults, then DeepCTR's at its defaults, per
    seed, in turn (so load from other work hits both alike)."""
    t0 = time.perf_counter()
    options = dict(n_rows=args.family_rows, seed=args.data_seed, **args.data_options)
    ds = data.load(name, args.data_dir, **(options if name.startswith("criteo-family") else {}))
    if ds.valid is None:
        ds = load_dataset(name, False, args.data_dir)
    oracle = ds.info.get("oracle_auc_test")
    cols = arrays = None
    if args.deepctr:
        cols, arrays = family_deepctr_inputs(ds)
    log(f"{name}: {len(ds.train):,} train rows, label rate {ds.train['label'].mean():.3f}"
        + (f", oracle test AUC {oracle:.4f}" if oracle else "")
        + f" ({time.perf_counter() - t0:.0f} s to load)")
    result = {"n_train": len(ds.train), "n_test": len(ds.test), "oracle_auc": oracle,
              "label_rate_train": float(ds.train["label"].mean()),
              "held_out": name.replace("criteo-family-", "") in FAMILY_HELD_OUT, "models": {}}
    for m in args.models:
        ours, theirs = [], []
        for seed in args.seeds:
            ours.append(family_train_ours(m, ds, seed, args.model_options.get(m, {}),
                                          args.train_options))
            msg = (f"  {m:9s} seed {seed}: ours {ours[-1]['auc']:.4f} "
                   f"({ours[-1]['epochs_run']} ep, {ours[-1]['train_examples_per_sec']:,.0f} ex/s)")
            if args.deepctr:
                theirs.append(family_train_deepctr(m, ds, seed, cols, arrays))
                msg += (f" | DeepCTR {theirs[-1]['auc']:.4f} "
                        f"({theirs[-1]['train_examples_per_sec']:,.0f} ex/s)")
            log(msg)
        row = {"deepctr_model": DEEPCTR_NAMES[m], "ours": _summary(ours, oracle)}
        if theirs:
            row["deepctr"] = _summary(theirs, oracle)
            row["auc_delta"] = row["ours"]["auc"] - row["deepctr"]["auc"]
            row["auc_delta_per_seed"] = [a["auc"] - b["auc"] for a, b in zip(ours, theirs)]
            row["speedup_wall"] = (row["ours"]["train_examples_per_sec"]
                                   / row["deepctr"]["train_examples_per_sec"])
            row["speedup_cpu"] = (row["ours"]["train_examples_per_cpu_sec"]
                                  / row["deepctr"]["train_examples_per_cpu_sec"])
            row["auc_target_met"] = bool(row["auc_delta"] >= AUC_TARGET)
            row["speed_target_met"] = bool(row["speedup_wall"] >= SPEED_TARGET)
        result["models"][m] = row
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def family_table(results):
    lines = ["| data | held out | model | AUC ours | AUC DeepCTR | delta | logloss ours / DeepCTR "
             "| oracle gap ours / DeepCTR | train ex/s ours | train ex/s DeepCTR | speed (wall / "
             "CPU) |", "|" + "---|" * 11]
    for dname, r in results.items():
        for m, row in r["models"].items():
            o, d = row["ours"], row.get("deepctr")
            gap = (lambda x: "-" if x is None else f"{x:.4f}")
            if d is None:
                lines.append(f"| {dname} | {'yes' if r['held_out'] else 'no'} | {m} | "
                             f"{o['auc']:.4f} | - | - | {o['logloss']:.4f} / - | "
                             f"{gap(o['gap_to_oracle_auc'])} / - | "
                             f"{o['train_examples_per_sec']:,.0f} | - | - |")
                continue
            lines.append(
                f"| {dname} | {'yes' if r['held_out'] else 'no'} | {m} vs {row['deepctr_model']} "
                f"| {o['auc']:.4f} | {d['auc']:.4f} | {row['auc_delta']:+.4f} | "
                f"{o['logloss']:.4f} / {d['logloss']:.4f} | {gap(o['gap_to_oracle_auc'])} / "
                f"{gap(d['gap_to_oracle_auc'])} | {o['train_examples_per_sec']:,.0f} | "
                f"{d['train_examples_per_sec']:,.0f} | {row['speedup_wall']:.2f} / "
                f"{row['speedup_cpu']:.2f} |")
    return "\n".join(lines)


def family_plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if "deepctr" in next(iter(results[n]["models"].values()))]
    if not names:
        return
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(names)), 8))
    ms = list(dict.fromkeys(m for n in names for m in results[n]["models"]))
    x = np.arange(len(names))
    w = 0.8 / len(ms)
    nan = {"auc_delta": float("nan"), "speedup_wall": float("nan")}
    for i, m in enumerate(ms):
        d = [results[n]["models"].get(m, nan)["auc_delta"] for n in names]
        sp = [results[n]["models"].get(m, nan)["speedup_wall"] for n in names]
        axes[0].bar(x + (i - (len(ms) - 1) / 2) * w, d, w, label=m)
        axes[1].bar(x + (i - (len(ms) - 1) / 2) * w, sp, w, label=m)
    axes[0].axhline(AUC_TARGET, color="r", ls="--", lw=1, label=f"target +{AUC_TARGET}")
    axes[0].axhline(0, color="k", lw=1)
    axes[0].set_ylabel("test AUC, ours - DeepCTR (defaults)")
    axes[1].axhline(SPEED_TARGET, color="r", ls="--", lw=1, label=f"target x{SPEED_TARGET}")
    axes[1].axhline(1, color="k", lw=1)
    axes[1].set_ylabel("training ex/s, ours / DeepCTR")
    labels = [n.replace("criteo-family-", "") + ("\n(held out)" if results[n]["held_out"]
                                                 else "\n(tuning)") for n in names]
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend(fontsize=7, ncol=3)
    axes[0].set_title("ours at its defaults vs DeepCTR 0.9.4 at its defaults")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def family_main(argv):
    p = argparse.ArgumentParser(description="ours at its defaults vs DeepCTR at its defaults "
                                            "on the criteo family")
    p.add_argument("--family", action="store_true")
    p.add_argument("--sets", nargs="+", default=list(FAMILY_HELD_OUT),
                   help="criteo-family members (or other data set names); default: held out")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--family-rows", type=int, default=100_000)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--data-option", action="append", help="KEY=VALUE for the loader")
    p.add_argument("--train-option", action="append", help="KEY=VALUE for train_ranker")
    p.add_argument("--model-option", action="append",
                   help="MODEL:KEY=VALUE for one model's constructor")
    p.add_argument("--no-deepctr", dest="deepctr", action="store_false")
    p.add_argument("--out", default=os.path.join(HERE, "results", "ranking_family.json"))
    args = p.parse_args(argv)
    args.data_options = _parse_options(args.data_option, "--data-option")
    args.train_options = _parse_options(args.train_option, "--train-option")
    args.model_options = {}
    for item in args.model_option or ():
        m, _, kv = item.partition(":")
        args.model_options.setdefault(m, {}).update(_parse_options([kv], "--model-option"))
    if args.deepctr:
        import_deepctr()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    t0 = time.perf_counter()
    env = environment() if args.deepctr else {}
    results = {}
    for s in args.sets:
        name = s if s in data.DATASETS else f"criteo-family-{s}"
        results[name] = run_family_dataset(name, args, log)
        out = {"benchmark": "ranking defaults: ours at its defaults vs DeepCTR 0.9.4 at its "
                            "defaults on the criteo family",
               "tuning_sets": list(FAMILY_TUNING), "held_out_sets": list(FAMILY_HELD_OUT),
               "config": {"rows": args.family_rows, "data_seed": args.data_seed,
                          "seeds": args.seeds, "data_options": args.data_options,
                          "train_options": args.train_options,
                          "model_options": args.model_options,
                          "ours": "recsys_tf.pipeline.RANKER_DEFAULTS + the models' defaults",
                          "deepctr": dict(DEEPCTR_DEFAULTS, optimizer="keras Adam 1e-3",
                                          categories="every train value kept",
                                          integers="fill 0, log1p, standardised")},
               "targets": {"auc_delta": AUC_TARGET, "speedup": SPEED_TARGET},
               "environment": env, "results": results,
               "seconds": round(time.perf_counter() - t0, 1)}
        out["table_markdown"] = family_table(results)
        with open(args.out, "w") as f:      # after every data set: a partial run survives
            json.dump(out, f, indent=2, default=float)
    family_plot(results, os.path.splitext(args.out)[0] + ".png")
    log(out["table_markdown"])
    log(f"wrote {args.out} in {out['seconds']:.0f} s")
    return 0


def main(argv=None):
    if "--family" in (sys.argv[1:] if argv is None else argv):
        return family_main(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="60k synthetic rows, 4 epochs at most, one speed round")
    p.add_argument("--data-dir", default=None, help="default $RECSYS_TF_DATA_DIR")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--epochs", type=int, default=None, help="epoch cap (default 10, quick 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 (one seed)")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating timed epochs per implementation (default 5, quick 1)")
    p.add_argument("--latency-reps", type=int, default=30)
    p.add_argument("--compute-dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="our DNN matmul precision (default auto: bfloat16 on AMX/AVX512-BF16)")
    p.add_argument("--no-float32-arm", dest="float32_arm", action="store_false",
                   help="skip timing a float32 copy of ours alongside (when not float32)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "ranking.json"))
    p.add_argument("--plot", default=None, help="default: --out with .png")
    args = p.parse_args(argv)
    args.epochs = args.epochs or (4 if args.quick else 10)
    args.seeds = args.seeds or [0]
    args.rounds = args.rounds or (1 if args.quick else 5)
    plot_path = args.plot or os.path.splitext(args.out)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    import_deepctr()

    def log(msg):
        print(msg, flush=True)

    t0 = time.perf_counter()
    env = environment()
    results = {d: run_dataset(d, args, log) for d in args.datasets}
    out = {
        "benchmark": "ranking zoo vs DeepCTR 0.9.4",
        "quick": bool(args.quick),
        "config": {"embedding_dim": DIM, "hidden_units": list(HIDDEN), "batch_size": BATCH,
                   "learning_rate": LR, "epochs_cap": args.epochs, "early_stopping":
                   "validation AUC, patience 1, best weights restored", "seeds": args.seeds,
                   "cin_layers": list(CIN), "cross_layers": CROSS_LAYERS,
                   "speed_rounds": args.rounds, "latency_reps": args.latency_reps,
                   "ours": {"trainer": "recsys_tf.training.train_ranker defaults (encoded "
                                       "inputs, fused tables, LazyAdam with the tables at "
                                       f"{training.EMBEDDING_LR_MULTIPLIER:g}x the learning "
                                       "rate, 16 steps/execution, weight averaging 0.99 kept "
                                       "where it validates better)",
                            "compute_dtype": args.compute_dtype},
                   "deepctr": "models' defaults, keras Adam, model.fit on numpy arrays"},
        "targets": {"auc_delta": AUC_TARGET, "speedup": SPEED_TARGET},
        "environment": env,
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out["table_markdown"] = table(results)
    write_results(out, args.out, lambda result, path: plot(result["results"], path), plot_path)
    log(out["table_markdown"])
    log(f"wrote {args.out} and {plot_path} in {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
