"""Train -> evaluate -> export: the one path the CLI, notebooks, tests and benchmarks call.

:func:`train` fits a model on a :class:`~recsys_tf.data.Dataset`, scores it on the test split
and, given an export directory, writes its SavedModel(s) through :mod:`recsys_tf.export`;
:func:`evaluate_saved_model` scores an exported ranker through its serving signature;
:func:`model_config_text` writes the TF Serving model config for an export directory.

Example::

    from recsys_tf import data, pipeline

    ds = data.load("synthetic")
    metrics, model = pipeline.train("deepfm", ds, epochs=1, export_dir="saved_models")
"""
from __future__ import annotations

import os

# The rankers' training defaults (what `recsys-tf train MODEL` runs with); see
# benchmarks/README.md ("Defaults that generalise") for the data they were chosen on.
RANKER_DEFAULTS = {"epochs": 2, "batch_size": 1024, "learning_rate": 1e-3}


def train(model_name, ds, epochs=None, batch_size=None, export_dir=None, learning_rate=None,
          verbose=None, options=None, export_name=None, scann=True, scann_recall=0.95,
          scann_index_k=None, embedding_lr_multiplier=None, weight_averaging=None,
          warmup_batch_sizes=(), strategy=None, checkpoint_dir=None, logdir=None,
          steps_per_epoch=None):
    """Trains ``model_name`` on ``ds``, evaluates it, optionally exports; returns the metrics.

    ``two_tower`` exports twice: ``<export_dir>/two_tower`` (brute force, stock ops) and, when
    ``scann`` and ScaNN is installed, ``<export_dir>/two_tower_scann`` (a ScaNN index tuned to
    ``scann_recall`` recall@10 against exact search; requests may ask for up to
    ``scann_index_k`` items, default ``min(n_items, 1000)``). ``embedding_lr_multiplier``: the
    rankers' embedding tables learn at this multiple of ``learning_rate`` (default: the
    trainer's, :data:`recsys_tf.training.EMBEDDING_LR_MULTIPLIER`). ``weight_averaging``: the
    rankers' weight-average momentum (0: off; default: the trainer's, see
    :func:`recsys_tf.training.train_ranker`). ``warmup_batch_sizes``: rankers' exports also
    get a warmup request of each of these many rows (:func:`recsys_tf.export.write_warmup`).

    ``strategy``: a ``tf.distribute`` strategy (:func:`recsys_tf.distributed.make_strategy`;
    default: this process alone). Under ``parameter_server`` or ``multi_worker`` the model is
    built and trained under it, then its final checkpoint is restored into a copy built
    without a strategy (plain variables, no optimizer slots), which is evaluated, exported and
    returned: the export is a plain SavedModel. ``checkpoint_dir``: training backs up there at
    every epoch's end and a run started again resumes from it; ``logdir``: TensorBoard
    summaries; ``steps_per_epoch``: training steps an epoch (default: one pass over the data).
    The metrics gain ``strategy``, ``n_workers`` and ``n_ps``.
    """
    from recsys_tf import distributed, export, models, training
    from recsys_tf.backend import tf

    options = dict(options or {})
    cls = models.get(model_name)
    fs = ds.feature_set
    strategy = strategy or tf.distribute.get_strategy()
    name_of_strategy = distributed.strategy_name(strategy)
    spread = name_of_strategy != "one_device"
    if not distributed.is_chief(strategy):     # a multi_worker worker: the chief writes
        export_dir = None
        checkpoint_dir = os.path.join(checkpoint_dir, "worker") if checkpoint_dir else None
    run = {"strategy": strategy, "checkpoint_dir": checkpoint_dir, "logdir": logdir,
           "steps_per_epoch": steps_per_epoch}
    plain = cls(fs, **options) if spread else None     # lookups, then the evaluated export
    with strategy.scope():
        model = cls(fs, **options)
    if model_name == "two_tower":
        hparams = {"epochs": epochs or 3, "batch_size": batch_size or 256,
                   "learning_rate": learning_rate or 0.1}
        fit = training.train_retrieval(model, ds, verbose=verbose, **run, **hparams)
        if spread:
            sharded = distributed.sharded_variables(model)
            model, diff = restore_plain(model, plain, fs, model.query_features
                                        + model.candidate_features, checkpoint_dir,
                                        ds.retrieval_test.head(8))
        scores = training.evaluate_retrieval(model, ds)
        n_train, n_test = len(ds.retrieval_train), len(ds.retrieval_test)
    else:
        hparams = {"epochs": epochs or RANKER_DEFAULTS["epochs"],
                   "batch_size": batch_size or RANKER_DEFAULTS["batch_size"],
                   "learning_rate": learning_rate or RANKER_DEFAULTS["learning_rate"],
                   "embedding_lr_multiplier": (training.EMBEDDING_LR_MULTIPLIER
                                               if embedding_lr_multiplier is None
                                               else embedding_lr_multiplier)}
        fit = training.train_ranker(model, ds, verbose=verbose, encoder=plain,
                                    weight_averaging=weight_averaging, **run, **hparams)
        hparams["weight_averaging"] = fit["weight_averaging"]
        compiled = model.optimizer if isinstance(model.optimizer, (list, tuple)) else [
            model.optimizer]
        if not any(hasattr(o, "sparse_multiplier") for o in compiled):
            del hparams["embedding_lr_multiplier"]   # DIN/DIEN train with Adam: not applied
        if spread:
            sharded = distributed.sharded_variables(model)
            model, diff = restore_plain(model, plain, fs, model.features, checkpoint_dir,
                                        ds.test.head(8))
        scores = training.evaluate_ranker(model, ds)
        n_train, n_test = len(ds.train), len(ds.test)
    result = {"model": model_name, "dataset": ds.name, "n_train": n_train, "n_test": n_test,
              "train_seconds": round(fit["train_seconds"], 3),
              "train_examples_per_sec": round(fit["train_examples_per_sec"], 1),
              "epochs_run": fit["epochs_run"], "steps": fit["steps"],
              "strategy": name_of_strategy, "n_workers": distributed.n_workers(strategy),
              "n_ps": distributed.n_parameter_servers(strategy),
              **{k: float(v) for k, v in scores.items()}}
    if spread:
        result["sharded_variables"] = sharded
        result["restored_max_abs_diff"] = diff
    if "oracle_auc" in scores:
        result["gap_to_oracle_auc"] = float(scores["oracle_auc"] - scores["auc"])
    if export_dir:
        card = {"dataset": ds.name, "metrics": result, "data_info": ds.info,
                "training": hparams}
        name = export_name or model_name
        if model_name == "two_tower":
            path = export.export_retrieval(model, ds, export_dir, name=name, card=card)
            if scann:
                export_scann(model, ds, export_dir, f"{name}_scann", card, result,
                              scann_recall, scann_index_k)
        else:
            sample = fs.arrays(ds.test.head(3), model.features)
            path = export.export_ranker(model, export_dir, name, card=card, warmup_inputs=sample,
                                        warmup_batch_sizes=warmup_batch_sizes)
        result["export_path"] = path
    return result, model


def restore_plain(model, plain, feature_set, features, checkpoint_dir=None, frame=None):
    """``(plain, max_abs_diff)``: ``plain`` (the same model class and options, built without a
    strategy) holding ``model``'s trained weights, through a checkpoint - the way from a model
    whose tables are sharded across parameter servers to a plain SavedModel (an export made
    straight from the sharded model does not restore its tables). Optimizer slots are left
    out. The checkpoint is ``<checkpoint_dir>/final`` (kept), else a temporary one.

    ``max_abs_diff``: the largest difference between the two models' outputs on the rows of
    ``frame`` (None without one); a restore that changed them raises a ``RuntimeError``."""
    import shutil
    import tempfile

    import numpy as np

    from recsys_tf.backend import tf
    from recsys_tf.layers.embedding import padding_inputs

    dummy = padding_inputs(feature_set, features)
    plain(dummy, training=False)    # the weights to restore into, and what only training
    plain(dummy, training=True)     # creates (DIEN's aux_loss metric): the export traces both
    tmp = None if checkpoint_dir else tempfile.mkdtemp(prefix="recsys_tf_final_")
    path = os.path.join(checkpoint_dir or tmp, "final", "model")
    try:
        written = tf.train.Checkpoint(model=model).write(path)
        tf.train.Checkpoint(model=plain).read(written).expect_partial()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if frame is None or not len(frame):
        return plain, None
    x = {k: tf.constant(v) for k, v in feature_set.arrays(frame, features).items()}
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
        tf.nest.flatten(model(x, training=False)), tf.nest.flatten(plain(x, training=False))))
    if not diff <= 1e-5:
        raise RuntimeError(f"the model restored from {path} differs from the trained one by "
                           f"{diff:g} (expected <= 1e-5)")
    return plain, diff


def export_scann(model, ds, export_dir, name, card, result, target_recall, index_k):
    """The ScaNN flavour of a two-tower export; skipped with a note when ScaNN is missing."""
    from recsys_tf import export, scann_index

    if not scann_index.available():
        print(f"note: {name} not exported: {scann_index.INSTALL_HINT}", flush=True)
        result["scann_export_path"] = None
        return
    path = export.export_scann_retrieval(model, ds, export_dir, name=name, card=card,
                                         target_recall=target_recall, index_k=index_k)
    info = export.read_model_card(path)["scann"]
    result["scann_export_path"] = path
    result["scann_recall_at_10"] = float(info[f"recall_at_{info['k']}"])
    result["scann_settings"] = {k: info["settings"][k] for k in
                                ("num_leaves", "leaves_to_search", "dims_per_block", "reorder")}


def evaluate_saved_model(model_dir, ds, batch_size=4096):
    """AUC and logloss of the ranker SavedModel in ``model_dir`` on ``ds.test``, scored
    through its ``serving_default`` signature (raw features in, as a server would)."""
    import numpy as np

    from recsys_tf import metrics
    from recsys_tf.backend import tf
    from recsys_tf.wire.contract import DEFAULT_SIGNATURE

    fn = tf.saved_model.load(model_dir).signatures[DEFAULT_SIGNATURE]
    names = list(fn.structured_input_signature[1])
    x = ds.feature_set.arrays(ds.test, names)
    probs = []
    for s in range(0, len(ds.test), batch_size):
        out = fn(**{n: tf.constant(v[s:s + batch_size]) for n, v in x.items()})
        probs.append(next(iter(out.values())).numpy().reshape(-1))
    p, y = np.concatenate(probs), ds.test[ds.feature_set.label].to_numpy()
    return {"model_dir": model_dir, "dataset": ds.name, "n_test": len(y),
            "auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p)}


def model_config_text(export_dir, base_path_prefix=None):
    """A TF Serving ``ModelServerConfig`` (text proto) for every model under ``export_dir``."""
    from recsys_tf.export import versions

    lines = ["model_config_list {"]
    for name in sorted(os.listdir(export_dir)):
        if not versions(export_dir, name):
            continue
        base = os.path.join(base_path_prefix or os.path.abspath(export_dir), name)
        lines += ["  config {", f'    name: "{name}"', f'    base_path: "{base}"',
                  '    model_platform: "tensorflow"', "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"
