"""DIEN against its baselines, and against DeepCTR's DIEN for training speed, in one run.

What is measured:

* **Quality** on ``amazon-beauty`` (DIEN protocol: each user's last behaviour is the test
  target, earlier ones the training targets, one uniform negative per target, history of 20)
  and on ``synthetic`` (drifting interests, known click probability): test AUC, GAUC and
  logloss of

  - ``dien``: :class:`recsys_tf.models.dien.DIEN` (GRU interest extractor, auxiliary loss,
    AUGRU interest evolution), its defaults;
  - ``dien_no_aux``: the same with ``aux_loss_weight=0``;
  - ``din``: :class:`recsys_tf.models.din.DIN` (target attention over the history, no GRU);
  - ``deepfm``: :class:`recsys_tf.models.deepfm.DeepFM`, the history mean-pooled.

  Every model sees the same split and the same features, 16-d embeddings, Adam at 3e-3
  (the trainer's ``"adam"``: Keras' Adam's updates, one fused kernel per variable; for every
  model, also where the trainer's default would be LazyAdam), batch 256 and
  the same epoch budget (``--epochs``, default 3) through
  :func:`recsys_tf.training.train_ranker`, which stops early on the validation split
  (patience 1) and keeps the best epoch's weights, with its other defaults (DIEN's batches
  hold rows of similar history length, as in the DIEN authors' iterator, and each is cut
  after its longest history). ``synthetic`` has its own validation
  split (the last 10% of training time); for ``amazon-beauty`` each user's last training
  target (and its negative) is held out as validation, so the test split is untouched and
  every model picks its epoch the same way: the models peak at different epochs (DIN after
  two, DIEN with the auxiliary loss later), so a fixed epoch count would pick the winner.
  The learning rate is the one at which both families reach their best validation AUC in
  the sweep (``--sweep``, ``results/dien.sweep.json``): at 1e-3 DIEN needs more than three
  epochs. One run per seed (``--seeds``); the table shows the mean and, with several seeds,
  half the spread (max - min) as ``±``.
* **Sequence headroom** on ``synthetic``: how much of the oracle's AUC the click model's
  sequence terms carry. The oracle's logit with the hidden current-interest term removed,
  with that term replaced by its best guess from the last clicked category (the estimate
  fitted on the training impressions), and with both history terms removed: the gaps bound
  what modelling the order of the history (DIEN's GRU, over DIN's attention and DeepFM's
  pooling) can add on this set.
* **Training speed** against DeepCTR 0.9.4's ``DIEN`` (``gru_type="AUGRU"``,
  ``use_negsampling=True``) on the same ``amazon-beauty`` rows: ``--deepctr-python`` names the
  interpreter of a virtual environment holding DeepCTR (it needs TensorFlow <= 2.12, so not
  this one); this script writes the train/test arrays to a temporary ``.npz`` and runs
  ``benchmarks/deepctr_dien_runner.py`` with it. Same embedding size (16), history (20),
  attention MLP (80, 40, sigmoid), final MLP (200, 80), batch 256, one epoch, Adam 3e-3. Ours
  is one epoch of a fresh ``dien`` through ``train_ranker``. Both clocks cover the ``fit``
  call, graph building included. The two run back to back, alternately, ``--pairs`` times
  (default 3); the ratio is taken from the medians. Examples per CPU-second (the process's
  CPU time over the same call) are reported too: the machine is shared with other work, which moves wall
  time far more than CPU time.

Setting up DeepCTR's environment (once)::

    python3.11 -m venv /tmp/deepctr212
    /tmp/deepctr212/bin/pip install tensorflow==2.12.1 "numpy<1.24" deepctr==0.9.4

Usage::

    python benchmarks/dien.py --deepctr-python /tmp/deepctr212/bin/python
    python benchmarks/dien.py --quick --deepctr-python /tmp/deepctr212/bin/python

``--sweep`` runs the validation sweep instead: DIN and DIEN variants on
``amazon-beauty`` (attention normalisation, auxiliary loss, GRU size, learning rate), three
epochs each, validation and test AUC / GAUC after every epoch, one seed; it writes
``benchmarks/results/dien.sweep.json``.

``--quick`` uses 2,000 Amazon users, a smaller synthetic set, one seed and one pair. Real
data is read from ``--data-dir`` / ``$RECSYS_TF_DATA_DIR`` (default ``../shared/data`` beside
the clone). Writes ``benchmarks/results/dien.json`` and ``dien.png``; compare only figures
from one run.

Reference: Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction",
AAAI 2019.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import recsys_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from common import (  # noqa: E402
    load_average, machine_info, pyplot, save_figure, write_results)

VARIANTS = ("dien", "dien_no_aux", "din", "deepfm")
LABELS = {"dien": "DIEN (AUGRU + aux loss)", "dien_no_aux": "DIEN without aux loss",
          "din": "DIN-style (attention, no GRU)", "deepfm": "DeepFM (mean-pooled history)"}
DIM = 16
BATCH = 256
LEARNING_RATE = 3e-3
DEEPCTR_ARCH = {"att_units": "80,40", "att_activation": "sigmoid", "dnn_units": "200,80"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small data, one seed, one pair")
    p.add_argument("--data-dir", default=None,
                   help="real data (default $RECSYS_TF_DATA_DIR or ../shared/data)")
    p.add_argument("--datasets", nargs="+", default=["amazon-beauty", "synthetic"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--epochs", type=int, default=3,
                   help="epoch budget of every model (early stopping on validation)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 (quick: 0)")
    p.add_argument("--deepctr-python", default=None,
                   help="python of a venv with deepctr 0.9.4 + tensorflow 2.12 (see above)")
    p.add_argument("--pairs", type=int, default=None,
                   help="ours/DeepCTR throughput pairs (default 3, quick 1)")
    p.add_argument("--sweep", action="store_true",
                   help="run the validation sweep (dien.sweep.json) instead of the benchmark")
    p.add_argument("--out", default=None, help="default benchmarks/results/dien.json "
                                                "(--sweep: dien.sweep.json)")
    p.add_argument("--plot", default=None, help="default: --out with .png")
    p.add_argument("--replot", default=None, metavar="JSON",
                   help="only redraw the plot (and print the table) of an earlier result")
    return p.parse_args(argv)


def data_dir(args):
    if args.data_dir:
        return args.data_dir
    return os.environ.get("RECSYS_TF_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared",
                                                              "data"))


def load(name, args):
    from recsys_tf import data

    if name == "synthetic":
        options = (dict(n_users=600, n_items=400, n_train=20000, n_test=5000)
                   if args.quick else {})
    else:
        options = {"max_users": 2000} if args.quick else {}
    t = time.perf_counter()
    ds = data.load(name, data_dir(args), **options)
    if ds.valid is None:
        ds = hold_out_last_targets(ds)
    return ds, options, time.perf_counter() - t


def hold_out_last_targets(ds):
    """``ds`` with each user's last training target (its rows: the positive and its negative)
    moved from ``train`` to ``valid``."""
    import dataclasses

    user = ds.feature_set.user_id
    last = ds.train.groupby(user, sort=False).tail(2).index
    valid = ds.train.loc[last].reset_index(drop=True)
    train = ds.train.drop(index=last).reset_index(drop=True)
    info = dict(ds.info, valid="each user's last training target and its negative, held out "
                               "from train by benchmarks/dien.py for early stopping")
    return dataclasses.replace(ds, train=train, valid=valid, info=info)


def build(variant, fs):
    from recsys_tf.models.deepfm import DeepFM
    from recsys_tf.models.dien import DIEN
    from recsys_tf.models.din import DIN

    if variant == "dien":
        return DIEN(fs, dim=DIM)
    if variant == "dien_no_aux":
        return DIEN(fs, dim=DIM, aux_loss_weight=0.0)
    if variant == "din":
        return DIN(fs, dim=DIM)
    if variant == "deepfm":
        return DeepFM(fs, dim=DIM)
    raise ValueError(variant)


def train_one(variant, ds, epochs, seed):
    """Trains a fresh ``variant`` on ``ds``; returns its metrics and timings."""
    from recsys_tf import training
    from recsys_tf.backend import keras

    keras.utils.set_random_seed(seed)
    model = build(variant, ds.feature_set)
    load_before = load_average()[0]
    cpu = time.process_time()
    fit = training.train_ranker(model, ds, epochs=epochs, batch_size=BATCH,
                                learning_rate=LEARNING_RATE, verbose=0, seed=seed,
                                optimizer="adam")
    cpu = time.process_time() - cpu
    scores = training.evaluate_ranker(model, ds)
    rows = len(ds.train) * fit["epochs_run"]
    return {"variant": variant, "seed": seed, "epochs_run": fit["epochs_run"],
            **{k: float(v) for k, v in scores.items()},
            "train_seconds": round(fit["train_seconds"], 2),
            "train_cpu_seconds": round(cpu, 2),
            "train_examples_per_sec": round(fit["train_examples_per_sec"], 1),
            "train_examples_per_cpu_sec": round(rows / max(cpu, 1e-9), 1),
            "loadavg_1min_before": load_before,
            "config": {k: v for k, v in model.get_config().items() if k != "feature_set"}}


def summarise(runs):
    """Mean and spread (max - min) over seeds of each metric, per variant."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == variant]
        entry = {"seeds": [r["seed"] for r in rs]}
        for key in ("auc", "gauc", "logloss", "oracle_auc", "train_examples_per_sec",
                    "train_examples_per_cpu_sec", "epochs_run"):
            values = [r[key] for r in rs if key in r]
            if values:
                entry[key] = float(np.mean(values))
                entry[key + "_spread"] = float(np.max(values) - np.min(values))
        out[variant] = entry
    return out


def sequence_headroom(options, n_test):
    """Test AUCs of the synthetic click model's own logit with its sequence terms taken out
    (see the module docstring); ``options``: the ``synthetic.load`` arguments used, ``n_test``:
    the size of its test split (the last impressions of the log)."""
    from recsys_tf import metrics
    from recsys_tf.data import synthetic

    sim = synthetic.generate(**options)
    log, coef = sim["log"], sim["coef"]
    last_category = np.array([next((c for c in reversed(h) if c), "")
                              for h in log["history_category"]], dtype=object)
    current = (log["category"] == log["interest"]).to_numpy()
    after_last = last_category == log["category"].to_numpy()
    fraction = np.array([sum(c == cat for c in h) / max(1, sum(1 for c in h if c))
                         for h, cat in zip(log["history_category"], log["category"])])
    train = np.arange(len(log)) < len(log) - n_test
    guess = np.where(after_last, current[train & after_last].mean(),
                     current[train & ~after_last].mean())
    p = log["p_click"].to_numpy()
    logit = np.log(p) - np.log1p(-p)
    test, y = ~train, log["label"].to_numpy()

    def auc(z):
        return round(float(metrics.auc(y[test], z[test])), 4)

    return {"oracle": auc(logit),
            "interest_term_guessed_from_last_click": auc(logit + coef["b"] * (guess - current)),
            "without_interest_term": auc(logit - coef["b"] * current),
            "without_both_history_terms": auc(logit - coef["b"] * current - coef["c"] * fraction),
            "p_interest_given_last_click_same_category":
                round(float(current[train & after_last].mean()), 3),
            "p_interest_otherwise": round(float(current[train & ~after_last].mean()), 3)}


# -- DeepCTR ---------------------------------------------------------------------------------
def export_arrays(ds, path):
    """Train/test rows of ``ds`` as the ``.npz`` the DeepCTR runner reads: ids mapped to
    ``1..n`` in vocabulary order, 0 = padding (and ids outside the vocabulary)."""
    fs = ds.feature_set

    def indexer(feature):
        vocab = np.asarray(fs[feature].vocabulary)
        order = np.argsort(vocab, kind="stable")
        sorted_vocab = vocab[order]

        def index(values):
            values = np.asarray(values)
            pos = np.minimum(np.searchsorted(sorted_vocab, values), len(vocab) - 1)
            return np.where(sorted_vocab[pos] == values, order[pos] + 1, 0).astype(np.int64)
        return index

    item, cat, user = indexer("item_id"), indexer("category"), indexer("user_id")
    out = {}
    for split, frame in (("train", ds.train), ("test", ds.test)):
        x = fs.arrays(frame)
        out[f"{split}_user"] = user(x["user_id"])
        out[f"{split}_item"] = item(x["item_id"])
        out[f"{split}_cat"] = cat(x["category"])
        out[f"{split}_hist_item"] = item(x["history"])
        out[f"{split}_hist_cat"] = cat(x["history_category"])
        out[f"{split}_label"] = frame[fs.label].to_numpy(np.int64)
    item_cat = np.zeros(len(fs["item_id"].vocabulary) + 1, np.int64)
    item_cat[item(ds.items["item_id"].to_numpy())] = cat(ds.items["category"].to_numpy())
    out["item_cat"] = item_cat
    for name, feature in (("n_users", "user_id"), ("n_items", "item_id"), ("n_cats", "category")):
        out[name] = np.int64(len(fs[feature].vocabulary) + 1)
    np.savez(path, **out)


def run_deepctr(python, npz, workdir, epochs=1, seed=0):
    out, pred = os.path.join(workdir, "deepctr.json"), os.path.join(workdir, "deepctr_pred.npy")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cmd = [python, os.path.join(HERE, "deepctr_dien_runner.py"), "--data", npz, "--out", out,
           "--predictions", pred, "--epochs", str(epochs), "--batch-size", str(BATCH),
           "--dim", str(DIM), "--learning-rate", str(LEARNING_RATE), "--seed", str(seed),
           "--att-units", DEEPCTR_ARCH["att_units"],
           "--att-activation", DEEPCTR_ARCH["att_activation"],
           "--dnn-units", DEEPCTR_ARCH["dnn_units"]]
    load_before = load_average()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"DeepCTR runner failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(out) as f:
        result = json.load(f)
    result["loadavg_1min_before"] = load_before
    result["train_examples_per_cpu_sec"] = (result["n_train"] * result["epochs"]
                                            / max(result["train_cpu_seconds"], 1e-9))
    return result, np.load(pred)


def throughput(ds, args, pairs, workdir):
    """Ours (one epoch of a fresh DIEN) and DeepCTR's DIEN alternately on the same rows."""
    import dataclasses

    from recsys_tf import metrics

    ds = dataclasses.replace(ds, valid=None)        # no validation pass inside the clock
    npz = os.path.join(workdir, "rows.npz")
    export_arrays(ds, npz)
    ours, theirs = [], []
    y, users = ds.test[ds.feature_set.label].to_numpy(), ds.test[ds.feature_set.user_id].to_numpy()
    for i in range(pairs):
        print(f"  throughput pair {i + 1}/{pairs}: recsys_tf DIEN", flush=True)
        ours.append(train_one("dien", ds, 1, seed=i))
        print(f"  throughput pair {i + 1}/{pairs}: DeepCTR DIEN", flush=True)
        result, p = run_deepctr(args.deepctr_python, npz, workdir, epochs=1, seed=i)
        result["auc"], result["gauc"] = metrics.auc(y, p), metrics.gauc(users, y, p)
        result["logloss"] = metrics.logloss(y, p)
        theirs.append(result)

    def med(rs, key):
        return float(statistics.median(r[key] for r in rs))

    summary = {
        "recsys_tf_examples_per_sec": med(ours, "train_examples_per_sec"),
        "deepctr_examples_per_sec": med(theirs, "train_examples_per_sec"),
        "recsys_tf_examples_per_cpu_sec": med(ours, "train_examples_per_cpu_sec"),
        "deepctr_examples_per_cpu_sec": med(theirs, "train_examples_per_cpu_sec"),
        "recsys_tf_auc_1_epoch": med(ours, "auc"), "deepctr_auc_1_epoch": med(theirs, "auc"),
        "recsys_tf_gauc_1_epoch": med(ours, "gauc"), "deepctr_gauc_1_epoch": med(theirs, "gauc")}
    summary["speedup_wall"] = (summary["recsys_tf_examples_per_sec"]
                               / summary["deepctr_examples_per_sec"])
    summary["speedup_cpu"] = (summary["recsys_tf_examples_per_cpu_sec"]
                              / summary["deepctr_examples_per_cpu_sec"])
    summary["target"] = ">= 2x DeepCTR's training examples/s"
    return {"dataset": ds.name, "n_train": len(ds.train), "pairs": pairs,
            "order": "alternating: recsys_tf, DeepCTR, recsys_tf, DeepCTR, ...",
            "settings": {"embedding_dim": DIM, "max_len": ds.feature_set["history"].max_len,
                         "batch_size": BATCH, "epochs": 1, "optimizer": f"Adam({LEARNING_RATE})",
                         "deepctr_model": "deepctr.models.DIEN(gru_type='AUGRU', "
                                          "use_negsampling=True)",
                         "deepctr_arch": DEEPCTR_ARCH,
                         "deepctr_negatives": "one uniform item per history step, drawn "
                                              "before the clock starts (DeepCTR takes them "
                                              "as inputs)",
                         "recsys_tf_negatives": "drawn in the graph at every step (in-batch)",
                         "recsys_tf_batches": "rows of similar history length (sorted in "
                                              "windows of 20 batches, batches shuffled), "
                                              "each batch cut after its longest history: "
                                              "train_ranker's default for DIEN",
                         "deepctr_batches": "shuffled rows, every history padded to 20"},
            "recsys_tf": ours, "deepctr": theirs, "summary": summary}


# -- sweep ----------------------------------------------------------------------------------
SWEEP = {
    "din": ("din", {}, 1e-3), "din_softmax": ("din", {"attention_normalization": "softmax"}, 1e-3),
    "din_lr3e-3": ("din", {}, 3e-3),
    "dien": ("dien", {}, 1e-3), "dien_no_aux": ("dien", {"aux_loss_weight": 0.0}, 1e-3),
    "dien_attention_none": ("dien", {"attention_normalization": "none"}, 1e-3),
    "dien_attention_sigmoid": ("dien", {"attention_normalization": "sigmoid"}, 1e-3),
    "dien_gru64": ("dien", {"gru_units": 64}, 1e-3),
    "dien_lr3e-3": ("dien", {}, 3e-3),
}


def sweep(args, epochs=3, seed=0):
    """Per-epoch validation and test scores of DIN / DIEN settings on amazon-beauty."""
    from recsys_tf import metrics, training
    from recsys_tf.backend import keras
    from recsys_tf.models.dien import DIEN
    from recsys_tf.models.din import DIN

    ds, options, _ = load("amazon-beauty", args)
    fs = ds.feature_set
    out = {"benchmark": "dien.sweep", "dataset": ds.name, "options": options, "seed": seed,
           "epochs": epochs, "n_train": len(ds.train), "n_valid": len(ds.valid),
           "n_test": len(ds.test), "valid": ds.info["valid"], "settings": {}, "runs": {}}
    for name, (family, options, lr) in SWEEP.items():
        keras.utils.set_random_seed(seed)
        model = (DIEN if family == "dien" else DIN)(fs, dim=DIM, **options)
        model.compile(keras.optimizers.Adam(lr), "binary_crossentropy")
        data = training.make_dataset(fs, ds.train, model.features, BATCH, fs.label, shuffle=True,
                                     seed=seed)
        rows, start = [], time.perf_counter()
        for _ in range(epochs):
            model.fit(data, epochs=1, verbose=0)
            row = {}
            for split, frame in (("valid", ds.valid), ("test", ds.test)):
                p = training.predict(model, fs, frame)
                y = frame[fs.label].to_numpy()
                row[f"{split}_auc"] = round(metrics.auc(y, p), 4)
                row[f"{split}_gauc"] = round(metrics.gauc(frame[fs.user_id].to_numpy(), y, p), 4)
            rows.append(row)
        out["settings"][name] = {"model": family, "options": options, "learning_rate": lr}
        out["runs"][name] = rows
        best = max(range(epochs), key=lambda e: rows[e]["valid_auc"])
        print(f"  {name:24s} valid AUC by epoch {[r['valid_auc'] for r in rows]}  best epoch "
              f"{best + 1}: test AUC {rows[best]['test_auc']}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return out


# -- report ----------------------------------------------------------------------------------
def table(results):
    lines = ["| data set | model | AUC | GAUC | logloss | train ex/s | epochs |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, res in results["datasets"].items():
        for variant, s in res["summary"].items():
            def cell(key, fmt="{:.4f}"):
                if key not in s:
                    return "-"
                text = fmt.format(s[key])
                if len(s["seeds"]) > 1:
                    text += " ± " + fmt.format(s[key + "_spread"] / 2)
                return text
            lines.append(f"| {name} | {variant} | {cell('auc')} | {cell('gauc')} | "
                         f"{cell('logloss')} | {s['train_examples_per_sec']:,.0f} | "
                         f"{s['epochs_run']:g} |")
        if "oracle_auc" in next(iter(res["summary"].values()), {}):
            oracle = next(iter(res["summary"].values()))["oracle_auc"]
            lines.append(f"| {name} | oracle (true p_click) | {oracle:.4f} | - | - | - | - |")
        for key, label in (("interest_term_guessed_from_last_click",
                            "oracle, hidden interest guessed from the last click"),
                           ("without_interest_term", "oracle without the interest term"),
                           ("without_both_history_terms", "oracle without both history terms")):
            if key in res.get("sequence_headroom", {}):
                lines.append(f"| {name} | {label} | {res['sequence_headroom'][key]:.4f} | "
                             "- | - | - | - |")
    tp = results.get("throughput")
    if tp:
        s = tp["summary"]
        lines += ["", "| training, amazon-beauty, 1 epoch | examples/s (wall) | examples per "
                  "CPU-second | test AUC | GAUC |", "| --- | --- | --- | --- | --- |"]
        for label, key in (("recsys_tf DIEN", "recsys_tf"),
                           ("DeepCTR 0.9.4 DIEN (AUGRU, neg. sampling)", "deepctr")):
            lines.append(f"| {label} | {s[key + '_examples_per_sec']:,.0f} | "
                         f"{s[key + '_examples_per_cpu_sec']:,.0f} | "
                         f"{s[key + '_auc_1_epoch']:.4f} | {s[key + '_gauc_1_epoch']:.4f} |")
        lines.append(f"| ratio | {s['speedup_wall']:.2f}x | {s['speedup_cpu']:.2f}x | | |")
    return "\n".join(lines)


def plot(results, path):
    plt = pyplot()
    names = list(results["datasets"])
    has_tp = bool(results.get("throughput"))
    fig, axes = plt.subplots(1, len(names) + has_tp, figsize=(5.2 * (len(names) + has_tp), 4.2))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        summary = results["datasets"][name]["summary"]
        variants = list(summary)
        x = np.arange(len(variants))
        for offset, key, colour in ((-0.2, "auc", "tab:blue"), (0.2, "gauc", "tab:orange")):
            values = [summary[v][key] for v in variants]
            spread = [summary[v][key + "_spread"] / 2 for v in variants]
            ax.bar(x + offset, values, 0.4, yerr=spread, capsize=3, label=key.upper(),
                   color=colour)
            for xi, v in zip(x + offset, values):
                ax.text(xi, v + 0.002, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
        low = min(min(summary[v]["auc"], summary[v]["gauc"]) for v in variants)
        high = max(max(summary[v]["auc"], summary[v]["gauc"]) for v in variants)
        if "oracle_auc" in summary[variants[0]]:
            ax.axhline(summary[variants[0]]["oracle_auc"], color="grey", ls="--", lw=1,
                       label="oracle AUC")
            high = max(high, summary[variants[0]]["oracle_auc"])
        headroom = results["datasets"][name].get("sequence_headroom", {})
        if "without_interest_term" in headroom:
            ax.axhline(headroom["without_interest_term"], color="grey", ls=":", lw=1,
                       label="oracle without the interest term")
        ax.set_ylim(low - 0.03, high + 0.04)
        ax.set_xticks(x)
        ax.set_xticklabels(variants, rotation=15)
        ax.set_title(f"{name}: test AUC / GAUC")
        ax.legend(fontsize=8, loc="upper left", ncol=3)
    if has_tp:
        ax = axes[-1]
        s = results["throughput"]["summary"]
        labels = ["recsys_tf\nDIEN", "DeepCTR\nDIEN"]
        wall = [s["recsys_tf_examples_per_sec"], s["deepctr_examples_per_sec"]]
        cpu = [s["recsys_tf_examples_per_cpu_sec"], s["deepctr_examples_per_cpu_sec"]]
        x = np.arange(2)
        ax.bar(x - 0.2, wall, 0.4, label="examples/s (wall)", color="tab:green")
        ax.bar(x + 0.2, cpu, 0.4, label="examples per CPU-second", color="tab:purple")
        for xi, v in list(zip(x - 0.2, wall)) + list(zip(x + 0.2, cpu)):
            ax.text(xi, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_title(f"training, amazon-beauty, 1 epoch\nwall {s['speedup_wall']:.2f}x, "
                     f"CPU {s['speedup_cpu']:.2f}x")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            results = json.load(f)
        plot(results, args.plot or os.path.splitext(args.replot)[0] + ".png")
        print(table(results))
        return 0
    if args.sweep:
        out = args.out or os.path.join(HERE, "results", "dien.sweep.json")
        out, _ = write_results(sweep(args, epochs=args.epochs), out)
        print(f"wrote {out}")
        return 0
    args.out = args.out or os.path.join(HERE, "results", "dien.json")
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    pairs = args.pairs or (1 if args.quick else 3)
    started = time.perf_counter()
    results = {
        "benchmark": "dien", "quick": args.quick, "epochs": args.epochs, "seeds": seeds,
        "settings": {"embedding_dim": DIM, "batch_size": BATCH,
                     "optimizer": f"Adam({LEARNING_RATE}) (train_ranker's 'adam': Keras' "
                                  "Adam's updates, fused; every model)",
                     "trainer": "train_ranker (its other defaults: DeepFM takes encoded "
                                "inputs, DIN/DIEN raw inputs; 16 steps per execution; "
                                "DIEN's batches sorted by history length in windows of 20 "
                                "batches, each cut after its longest history)",
                     "variants": {v: LABELS[v] for v in args.variants}},
        "machine": machine_info(
            shared="the machine is shared with other work: wall-clock figures move with "
                   "its load (1-minute load averages are recorded next to each run); "
                   "examples per CPU-second move less; compare only figures from one run"),
        "datasets": {}}
    for name in args.datasets:
        ds, options, seconds = load(name, args)
        print(f"{name}: {len(ds.train):,} training rows, {len(ds.test):,} test rows "
              f"(loaded in {seconds:.1f} s)", flush=True)
        runs = []
        for seed in seeds:
            for variant in args.variants:
                r = train_one(variant, ds, args.epochs, seed)
                print(f"  {variant:12s} seed {seed}: AUC {r['auc']:.4f}  GAUC {r['gauc']:.4f}  "
                      f"logloss {r['logloss']:.4f}  {r['train_examples_per_sec']:,.0f} ex/s "
                      f"({r['train_seconds']:.0f} s)", flush=True)
                runs.append(r)
        results["datasets"][name] = {
            "options": options, "n_train": len(ds.train), "n_test": len(ds.test),
            "n_valid": 0 if ds.valid is None else len(ds.valid),
            "info": {k: v for k, v in ds.info.items() if not isinstance(v, dict)},
            "runs": runs, "summary": summarise(runs)}
        if name == "synthetic":
            results["datasets"][name]["sequence_headroom"] = sequence_headroom(options, len(ds.test))
        if name == "amazon-beauty" and args.deepctr_python:
            with tempfile.TemporaryDirectory() as workdir:
                results["throughput"] = throughput(ds, args, pairs, workdir)
    if args.deepctr_python and "throughput" not in results:
        print("note: the DeepCTR comparison runs on amazon-beauty, which was not selected")
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["table_markdown"] = table(results)
    args.out, plot_path = write_results(results, args.out, plot, args.plot)
    print(results["table_markdown"])
    print(f"wrote {args.out} and {plot_path} ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
