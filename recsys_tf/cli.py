"""``recsys-tf``: the command line.

    recsys-tf data DATASET [--data-dir DIR]
    recsys-tf train MODEL --data DATASET [--data-dir DIR] [--epochs N] [--batch-size B]
                    [--export-dir DIR] [--metrics-out FILE.json]
                    [--strategy one_device|multi_worker|parameter_server]
                    [--local-cluster workers=N,ps=M] [--checkpoint-dir DIR] [--logdir DIR]
    recsys-tf cluster-server            (a worker or parameter server, from TF_CONFIG)
    recsys-tf evaluate --model-dir saved_models/NAME/V --data DATASET [--data-dir DIR]
    recsys-tf export [--export-dir DIR] [--config-out FILE]
    recsys-tf serve [--model-config FILE] [--model-base-path DIR] [--port P]
    recsys-tf recommend --user-id U [--k 10] [--target host:port] [--ranker NAME]
                    [--diversity 0.3] [--json] [--debug]
    recsys-tf demo
    recsys-tf bench

Every command has ``--help``. The contract above is stable: later versions add options, they
do not change what these mean.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

MODEL_NAMES = ("two_tower", "wide_deep", "deepfm", "xdeepfm", "dcn_v2", "dien")


class UsageError(Exception):
    """A mistake in what the user asked for: printed as one ``error:`` line, exit status 2."""


def _datasets():
    from recsys_tf.data import DATASETS

    return sorted(DATASETS)


def _add_data_args(p, required=True):
    p.add_argument("--data", required=required, metavar="DATASET",
                   help="dataset name: " + ", ".join(_datasets()))
    p.add_argument("--data-dir", default=None,
                   help="directory holding the real data sets (default: $RECSYS_TF_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="loader option, e.g. n_users=500 or split=time (repeatable)")


def _parse_options(pairs, flag):
    """``["dim=8", "dnn_units=[64,32]", "split=time"]`` -> dict (values parsed as JSON when
    they parse, else kept as strings)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _load_data(args, **options):
    from recsys_tf import data

    options.update(_parse_options(getattr(args, "data_option", None), "--data-option"))
    if args.data not in _datasets():
        raise UsageError(f"--data {args.data!r}: unknown dataset; expected one of "
                         f"{', '.join(_datasets())}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir!r}: no such directory; expected the folder "
                         "holding the real data sets (or leave it out to use "
                         "$RECSYS_TF_DATA_DIR)")
    if args.data == "synthetic":
        options.setdefault("seed", args.seed)
    try:
        return data.load(args.data, args.data_dir, **options)
    except TypeError as e:
        raise UsageError(_option_error(args.data, options, e)) from None


def _option_error(dataset, options, exc):
    """The one ``--data-option`` a loader refused, and the options it takes."""
    import importlib
    import inspect
    import re

    from recsys_tf.data import DATASETS

    bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    module, fn = DATASETS[dataset].split(":")
    params = inspect.signature(getattr(importlib.import_module(module), fn)).parameters
    takes = ", ".join(p for p in params if p != "data_dir")
    if bad is None:
        return f"dataset {dataset!r} does not take these options {sorted(options)}: {exc}"
    return (f"--data-option {bad.group(1)}: dataset {dataset!r} has no such option; expected "
            f"one of {takes}")


def _say(msg):
    print(msg, flush=True)


# -- data ----------------------------------------------------------------------------------
def cmd_data(args):
    t = time.perf_counter()
    ds = _load_data(args)
    summary = {"dataset": ds.name, "seconds": round(time.perf_counter() - t, 2),
               "n_train": len(ds.train), "n_valid": 0 if ds.valid is None else len(ds.valid),
               "n_test": len(ds.test), "n_items": len(ds.items), "n_users": len(ds.users),
               "label_rate_train": float(ds.train[ds.feature_set.label].mean()),
               "features": {f.name: f"{f.kind}/{f.role}" for f in ds.feature_set},
               "info": ds.info}
    print(json.dumps(summary, indent=2, default=str))
    return 0


# -- train ---------------------------------------------------------------------------------
def cmd_train(args):
    if args.model not in MODEL_NAMES:
        raise UsageError(f"unknown model {args.model!r}; expected one of "
                         f"{', '.join(MODEL_NAMES)}")
    from recsys_tf import models

    try:
        models.get(args.model)
    except NotImplementedError as e:
        raise UsageError(str(e)) from None
    multiplier = args.embedding_lr_multiplier
    if multiplier is not None and not multiplier > 0:
        raise UsageError(f"--embedding-lr-multiplier {multiplier:g}: expected a number > 0")
    averaging = args.weight_averaging
    if averaging is not None and not 0 <= averaging < 1:
        raise UsageError(f"--weight-averaging {averaging:g}: expected a momentum in [0, 1) "
                         "(0 turns averaging off)")
    bad = [n for n in args.warmup_batch_sizes if n < 1]
    if bad:
        raise UsageError(f"--warmup-batch-sizes {bad[0]}: expected a number of rows >= 1")
    from recsys_tf import distributed

    try:
        strategy_name, cluster = _strategy_and_cluster(args)
    except distributed.ClusterError as e:
        raise UsageError(str(e)) from None
    distributed.exit_with_parent()     # a multi_worker trainer started by a local cluster
    if cluster is None:
        return _train(args, strategy_name, None)
    # SIGTERM or SIGKILL end this process at once; the cluster's processes then end on their
    # own (they watch this process); Ctrl-C and errors stop them on the way out
    local = distributed.LocalCluster(*cluster, log_dir=args.cluster_log_dir)
    try:
        local.start()
    except distributed.ClusterError as e:
        print(f"error: --local-cluster {args.local_cluster}: {e}", file=sys.stderr, flush=True)
        return 1
    with local:
        _say(f"local cluster: {json.dumps(local.cluster)}")
        if strategy_name == "multi_worker":
            local.start_trainers(_trainer_argv(args))
        return _train(args, strategy_name, local)


def _strategy_and_cluster(args):
    """(strategy name, (workers, ps) of a local cluster or None), checked."""
    from recsys_tf import distributed

    name = args.strategy
    if name is not None and name not in distributed.STRATEGIES:
        raise distributed.ClusterError(
            f"--strategy {name!r}: expected one of {', '.join(distributed.STRATEGIES)}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise distributed.ClusterError(
            f"--steps-per-epoch {args.steps_per_epoch}: expected a number of steps >= 1")
    if args.min_shard_bytes is not None and args.min_shard_bytes < 1:
        raise distributed.ClusterError(
            f"--min-shard-bytes {args.min_shard_bytes}: expected a number of bytes >= 1")
    if args.local_cluster is None:
        if name not in (None, "one_device"):
            distributed.tf_config()                  # a malformed TF_CONFIG is named now
        return name or "one_device", None
    workers, ps = distributed.parse_local_cluster(args.local_cluster)
    name = name or ("parameter_server" if ps else "multi_worker")
    if name == "parameter_server" and not ps:
        raise distributed.ClusterError(
            f"--local-cluster {args.local_cluster!r} with --strategy parameter_server: expected "
            "ps >= 1")
    if name == "multi_worker" and ps:
        raise distributed.ClusterError(
            f"--local-cluster {args.local_cluster!r} with --strategy multi_worker: expected ps=0 "
            "(multi_worker has no parameter servers)")
    if name == "one_device":
        raise distributed.ClusterError(
            f"--local-cluster {args.local_cluster!r} with --strategy one_device: expected "
            "parameter_server or multi_worker")
    return name, (workers, ps)


def _trainer_argv(args):
    """``multi_worker``: the command the other workers of a local cluster run (this command
    without --local-cluster, exporting and writing nothing of their own)."""
    import tempfile

    argv, skip = [], False
    drop = {"--local-cluster", "--export-dir", "--metrics-out", "--checkpoint-dir", "--logdir",
            "--strategy"}
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if a.split("=", 1)[0] in drop:
            continue
        argv.append(a)
    argv = [sys.executable, "-m", "recsys_tf.cli"] + argv + ["--strategy", "multi_worker"]
    if args.checkpoint_dir:    # backing up creates variables: all workers or none (collectives)
        argv += ["--checkpoint-dir", tempfile.mkdtemp(prefix="recsys_tf_worker_")]
    return argv


def _train(args, strategy_name, local):
    from recsys_tf import distributed, pipeline

    if local is not None:
        strategy = local.strategy(strategy_name, **_shard_option(args))
    elif strategy_name != "one_device":
        try:
            strategy = distributed.make_strategy(strategy_name, **_shard_option(args))
        except distributed.ClusterError as e:
            raise UsageError(str(e)) from None
    else:
        strategy = None
    ds = _load_data(args)
    _say(f"training {args.model} on {ds.name}: {len(ds.train):,} training rows"
         + (f" ({strategy_name})" if strategy is not None else ""))
    result, _ = pipeline.train(
        args.model, ds, epochs=args.epochs, batch_size=args.batch_size,
        export_dir=args.export_dir, learning_rate=args.learning_rate,
        options=_parse_options(args.model_option, "--model-option"), scann=not args.no_scann,
        scann_recall=args.scann_recall, scann_index_k=args.scann_index_k,
        embedding_lr_multiplier=args.embedding_lr_multiplier,
        weight_averaging=args.weight_averaging, warmup_batch_sizes=args.warmup_batch_sizes,
        strategy=strategy, checkpoint_dir=args.checkpoint_dir, logdir=args.logdir,
        steps_per_epoch=args.steps_per_epoch)
    if local is not None and strategy_name == "parameter_server":
        result["worker_restarts"] = local.restarts
    text = json.dumps(result, indent=2)
    print(text)
    if args.metrics_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.metrics_out)), exist_ok=True)
        with open(args.metrics_out, "w") as f:
            f.write(text + "\n")
    return 0


def _shard_option(args):
    return {} if args.min_shard_bytes is None else {"min_shard_bytes": args.min_shard_bytes}


# -- evaluate ------------------------------------------------------------------------------
def cmd_evaluate(args):
    """Scores a ranker SavedModel on the test split through its serving signature."""
    from recsys_tf import pipeline
    from recsys_tf.export import read_model_card

    if not os.path.isdir(args.model_dir):
        raise UsageError(f"--model-dir {args.model_dir!r}: no such directory; expected an "
                         "exported ranker version folder, e.g. saved_models/deepfm/1")
    try:
        card = read_model_card(args.model_dir)
    except FileNotFoundError:
        raise UsageError(f"--model-dir {args.model_dir!r} holds no model card "
                         "(assets.extra/model_card.json); expected a version folder written by "
                         "`recsys-tf train ... --export-dir`, e.g. saved_models/deepfm/1") from None
    if card.get("kind") != "ranker":
        raise UsageError(f"--model-dir {args.model_dir!r} holds a {card.get('kind')} model; "
                         "expected a ranker export (evaluate scores rankers)")
    ds = _load_data(args)
    print(json.dumps(pipeline.evaluate_saved_model(args.model_dir, ds), indent=2))
    return 0


# -- export --------------------------------------------------------------------------------
def cmd_export(args):
    from recsys_tf.export import versions

    if not os.path.isdir(args.export_dir):
        raise UsageError(f"--export-dir {args.export_dir!r}: no such directory; expected an "
                         "export root written by `recsys-tf train ... --export-dir`")
    for name in sorted(os.listdir(args.export_dir)):
        v = versions(args.export_dir, name)
        if v:
            _say(f"{name}: versions {v}")
    from recsys_tf.pipeline import model_config_text

    text = model_config_text(args.export_dir, args.base_path_prefix)
    if args.config_out:
        with open(args.config_out, "w") as f:
            f.write(text)
        _say(f"wrote {args.config_out}")
    else:
        print(text, end="")
    return 0


# -- serve ---------------------------------------------------------------------------------
def cmd_serve(args):
    """The bundled TF Serving-compatible server; flags in ``recsys_tf/server/flags.py``."""
    from recsys_tf.server.server import run_server

    return run_server(args, default_model_base_path="saved_models", say=_say)


# -- recommend -----------------------------------------------------------------------------
def _latest_tables(export_dir, retrieval_model):
    from recsys_tf.export import versions

    v = versions(export_dir, retrieval_model)
    if not v:
        raise UsageError(f"no exported {retrieval_model!r} under {export_dir!r}; "
                         "run `recsys-tf train two_tower ... --export-dir` or `recsys-tf demo`")
    return os.path.join(export_dir, retrieval_model, str(v[-1]), "assets.extra")


def _num(x, width):
    return f"{'-':>{width}}" if x is None else f"{x:{width}.4f}"


def _reasons_text(reasons):
    """A compact line of the reasons behind an item's place."""
    parts = []
    if "retrieval_rank" in reasons:
        parts.append(f"retrieved #{reasons['retrieval_rank']}")
    if "popularity_rank" in reasons:
        parts.append(f"popular #{reasons['popularity_rank']}")
    if "calibrated_score" in reasons:
        parts.append(f"calibrated {reasons['calibrated_score']:.3f}")
    if "blended_score" in reasons:
        parts.append(f"blended {reasons['blended_score']:.3f}")
    for name, delta in (reasons.get("boosts") or {}).items():
        parts.append(f"{name} {delta:+.3f}")
    if "freshness_boost" in reasons:
        parts.append(f"fresh {reasons['freshness_boost']:+.3f}")
    if "relevance_rank" in reasons:
        parts.append(f"relevance #{reasons['relevance_rank']}")
    if reasons.get("mmr_penalty"):
        parts.append(f"mmr -{reasons['mmr_penalty']:.3f}")
    if reasons.get("explored"):
        parts.append("explored")
    return ", ".join(parts)


def print_result(result, out=None):
    out = out or sys.stdout
    degraded = f"  [degraded: {result.degraded}]" if result.degraded else ""
    out.write(f"user {result.user_id}{degraded}\n")
    out.write(f"  {'#':>2}  {'item':<10} {'category':<10} {'retrieval':>9} {'ranking':>8} "
              f"{'final':>8}  reasons\n")
    for i, r in enumerate(result.items, 1):
        out.write(f"  {i:>2}  {str(r.item_id):<10} {str(r.category):<10} "
                  f"{_num(r.retrieval_score, 9)} {_num(r.ranking_score, 8)} {r.final_score:8.4f}"
                  f"  {_reasons_text(r.reasons or {})}\n")
    for note in getattr(result, "notes", None) or ():
        out.write(f"  note: {note}\n")
    t = result.timings_ms
    out.write("  timings ms: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) + "\n")


def cmd_recommend(args):
    import logging

    from recsys_tf.client.recommender import ClientOptions, Recommender, Rules

    if args.debug:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(message)s")
    tables = args.tables or _latest_tables(args.export_dir, args.retrieval_model)
    context = json.loads(args.context) if args.context else None
    rules = Rules(exclude=tuple(args.exclude or ()), category_cap=args.category_cap,
                  freshness_column=args.freshness_column if args.freshness_strength else None,
                  freshness_half_life=args.freshness_half_life,
                  freshness_strength=args.freshness_strength)
    with Recommender(args.target, tables, retrieval_model=args.retrieval_model,
                     ranker=args.ranker or None, timeout=args.timeout, rules=rules,
                     options=ClientOptions(ranker_version=args.ranker_version,
                                           ranker_label=args.ranker_label,
                                           ranker_target=args.ranker_target,
                                           max_attempts=args.attempts,
                                           ranker_signature=args.ranker_signature,
                                           debug=args.debug)) as rec:
        result = rec.recommend(args.user_id, k=args.k, context=context,
                               n_candidates=args.candidates, diversity=args.diversity,
                               blend_weight=args.blend_weight, explore=args.explore,
                               seed=args.seed, filter_seen=not args.include_seen)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_result(result)
    return 0


# -- demo ----------------------------------------------------------------------------------
def cmd_demo(args):
    from recsys_tf import data
    from recsys_tf.pipeline import train
    from recsys_tf.client.recommender import Recommender
    from recsys_tf.server.server import ModelServer

    t0 = time.perf_counter()
    _say("[1/5] generating the synthetic data set")
    ds = data.load("synthetic", None, seed=args.seed)
    _say(f"      {len(ds.users):,} users, {len(ds.items):,} items, {len(ds.train):,} training "
         f"impressions; oracle AUC on test {ds.info.get('oracle_auc_test', float('nan')):.3f}")
    _say("[2/5] training the two-tower retriever")
    tt, _ = train("two_tower", ds, epochs=args.epochs_retrieval, export_dir=args.export_dir)
    _say(f"      recall@100 {tt['recall_at_100']:.3f}, top-100 accuracy "
         f"{tt['top_100_accuracy']:.3f}; exported {tt['export_path']}")
    _say("[3/5] training the DeepFM ranker")
    fm, _ = train("deepfm", ds, epochs=args.epochs_ranker, export_dir=args.export_dir)
    _say(f"      test AUC {fm['auc']:.3f} (oracle {fm.get('oracle_auc', float('nan')):.3f}), "
         f"logloss {fm['logloss']:.4f}; exported {fm['export_path']}")
    _say("[4/5] starting the bundled server on 127.0.0.1")
    server = ModelServer(model_base_path=args.export_dir, host="127.0.0.1", port=args.port)
    port = server.start()
    _say(f"      serving {args.export_dir} on 127.0.0.1:{port}")
    try:
        _say("[5/5] recommending through the client (retrieve -> rank -> re-rank)")
        tables = os.path.join(tt["export_path"], "assets.extra")
        users = ds.test[ds.feature_set.user_id].drop_duplicates().head(args.users).tolist()
        with Recommender(f"127.0.0.1:{port}", tables, ranker="deepfm") as rec:
            for u in users:
                context = ds.test[ds.test[ds.feature_set.user_id] == u].iloc[0]
                ctx = {n: context[n] for n in ds.feature_set.with_role("context")}
                result = rec.recommend(u, k=10, context=ctx, diversity=args.diversity)
                print_result(result)
    finally:
        server.stop()
    _say(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


# -- cluster-server ------------------------------------------------------------------------
def cmd_cluster_server(args):
    """A worker or parameter server of a training cluster, as ``TF_CONFIG`` describes it."""
    from recsys_tf import distributed

    try:
        config = distributed.tf_config()
        if not config:
            raise UsageError("TF_CONFIG is not set; expected the cluster and this task, e.g. "
                             '{"cluster": {"chief": [...], "worker": [...], "ps": [...]}, '
                             '"task": {"type": "ps", "index": 0}}')
        task = config.get("task") or {}
        _say(f"cluster-server: {task.get('type')} {task.get('index', 0)} of "
             f"{json.dumps(config['cluster'])}")
        distributed.serve(config)
    except distributed.ClusterError as e:
        raise UsageError(str(e)) from None
    return 0


BENCHMARKS = ("ranking", "retrieval", "dien", "serving", "client", "distributed")


def cmd_bench(args):
    """Runs ``benchmarks/NAME.py`` of a source checkout (they are not part of the package)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", f"{args.name}.py")
    if not os.path.exists(script):
        raise UsageError(f"{script} not found: benchmarks ship with the source checkout, not the "
             "installed package")
    cmd = [sys.executable, script] + (["--quick"] if args.quick else []) + list(args.extra)
    _say("running " + " ".join(cmd))
    return subprocess.call(cmd, cwd=root)


def build_parser():
    p = argparse.ArgumentParser(prog="recsys-tf", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", dest="traceback",
                   help="show the Python traceback of an error instead of one error line")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("data", help="load a data set and print its summary")
    s.add_argument("data", metavar="DATASET")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("train", help="train a model, write its metrics, optionally export it")
    s.add_argument("model", metavar="MODEL", help="one of " + ", ".join(MODEL_NAMES))
    _add_data_args(s)
    s.add_argument("--epochs", type=int, default=None, help="default: 3 retrieval, 2 rankers")
    s.add_argument("--batch-size", type=int, default=None, help="default: 256 retrieval, 1024 rankers")
    s.add_argument("--learning-rate", type=float, default=None,
                   help="default: 0.1 (Adagrad) for two_tower, 1e-3 (Adam) for rankers")
    s.add_argument("--embedding-lr-multiplier", type=float, default=None, metavar="X",
                   help="rankers: the embedding tables learn at X times the learning rate "
                   "(default 3 for Wide&Deep, DeepFM, xDeepFM and DCN-v2; the other models "
                   "ignore it)")
    s.add_argument("--weight-averaging", type=float, default=None, metavar="M",
                   help="rankers: momentum of the moving average of the weights, kept at an "
                   "epoch's end where it scores a higher validation AUC than the raw weights "
                   "(default 0.99 for Wide&Deep, DeepFM, xDeepFM and DCN-v2, 0 = off for the "
                   "others)")
    s.add_argument("--export-dir", default=None, help="export root, e.g. saved_models")
    s.add_argument("--metrics-out", default=None, metavar="FILE.json")
    s.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="model hyper-parameter, e.g. dim=8 or dnn_units=[64,32] (repeatable)")
    s.add_argument("--scann-recall", type=float, default=0.95,
                   help="two_tower: recall@10 vs exact search the ScaNN export is tuned to "
                   "(default 0.95)")
    s.add_argument("--scann-index-k", type=int, default=None,
                   help="two_tower: largest k a request to the ScaNN export may ask for "
                   "(default min(n_items, 1000))")
    s.add_argument("--no-scann", action="store_true",
                   help="two_tower: skip the ScaNN export (two_tower_scann)")
    s.add_argument("--warmup-batch-sizes", type=int, nargs="+", default=[], metavar="N",
                   help="rankers: add a warmup request of N rows per size to the export, so "
                   "a batching TF Serving runs the model at those batch sizes when it loads "
                   "(its allowed_batch_sizes, or its max_batch_size; each at most "
                   "max_batch_size)")
    s.add_argument("--strategy", default=None, metavar="NAME",
                   help="one_device (default: this process alone), parameter_server (this "
                   "process coordinates the workers and parameter servers of TF_CONFIG; tables "
                   "are sharded across the parameter servers) or multi_worker (every worker of "
                   "TF_CONFIG runs this command; each holds a full copy of the model)")
    s.add_argument("--local-cluster", default=None, metavar="workers=N,ps=M",
                   help="start that cluster as processes on 127.0.0.1, train on it, stop them "
                   "(strategy: parameter_server when M > 0, else multi_worker)")
    s.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="back up the training state at every epoch's end; a run started again "
                   "with the same arguments resumes from the last backup")
    s.add_argument("--logdir", default=None, metavar="DIR",
                   help="TensorBoard summaries: loss, validation AUC, examples/s per epoch")
    s.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="training steps an epoch (default: one pass over the training data)")
    s.add_argument("--min-shard-bytes", type=int, default=None, metavar="B",
                   help="parameter_server: variables above B bytes are sharded, at most one "
                   "part per parameter server (default 262144)")
    s.add_argument("--cluster-log-dir", default=None, metavar="DIR",
                   help="--local-cluster: write each process's output to DIR/<type>-<i>.log")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("evaluate", help="score an exported ranker on a data set's test split")
    s.add_argument("--model-dir", required=True, help="saved_models/NAME/VERSION")
    _add_data_args(s)
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("export", help="list exported models and write TF Serving's models.config")
    s.add_argument("--export-dir", default="saved_models")
    s.add_argument("--config-out", default=None, help="write the config here (default: print)")
    s.add_argument("--base-path-prefix", default=None,
                   help="base path as the server sees it, e.g. /models inside a container")
    s.set_defaults(fn=cmd_export)

    from recsys_tf.server.flags import add_server_arguments

    s = sub.add_parser(
        "serve", help="run the bundled TF Serving-compatible server (gRPC, REST, metrics)",
        description="Serve SavedModel version folders with TF Serving's gRPC API "
        "(PredictionService, ModelService), its REST API (--rest_api_port) and Prometheus "
        "metrics. Flags take TF Serving's names where they mean the same; each also answers "
        "to its dashed spelling. Binds 127.0.0.1 unless --host says otherwise.")
    add_server_arguments(s, default_model_base_path="saved_models")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("recommend", help="top-k for a user through a running server")
    s.add_argument("--user-id", required=True)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--target", default="127.0.0.1:8500")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--ranker", default="deepfm",
                   help='served ranker name (default deepfm; "" skips ranking)')
    s.add_argument("--retrieval-model", default="two_tower")
    s.add_argument("--diversity", type=float, default=0.0, help="MMR trade-off in [0, 1]")
    s.add_argument("--candidates", type=int, default=100, help="retrieved candidates (default 100)")
    s.add_argument("--context", default=None,
                   help='JSON of request features, e.g. \'{"hour": "20"}\'')
    s.add_argument("--export-dir", default="saved_models",
                   help="where to find the item/user tables (latest retrieval export)")
    s.add_argument("--tables", default=None, help="explicit tables directory")
    s.add_argument("--timeout", type=float, default=2.0, help="deadline per request (s)")
    s.add_argument("--ranker-version", type=int, default=None, help="pin a ranker version")
    s.add_argument("--ranker-label", default=None, help="pin a ranker version label (canary)")
    s.add_argument("--ranker-target", default=None,
                   help="host:port of the ranker when it is served elsewhere")
    s.add_argument("--ranker-signature", default="auto",
                   help="ranker signature: auto (default: one_user when the ranker has it, the "
                        "user's features sent once; serving_default when a server refuses "
                        "it), one_user or serving_default")
    s.add_argument("--blend-weight", type=float, default=0.0,
                   help="share of the retrieval score in the final score (default 0)")
    s.add_argument("--exclude", action="append", metavar="ITEM",
                   help="item id never to return (repeatable)")
    s.add_argument("--include-seen", action="store_true",
                   help="keep items the user has interacted with")
    s.add_argument("--category-cap", type=int, default=None,
                   help="at most N items per category")
    s.add_argument("--freshness-strength", type=float, default=0.0,
                   help="recency boost: x(1 + S * 0.5 ** (age / half-life)) (default 0: off)")
    s.add_argument("--freshness-half-life", type=float, default=30.0)
    s.add_argument("--freshness-column", default="freshness",
                   help="item-table column holding the item's age (default freshness)")
    s.add_argument("--explore", type=float, default=0.0, metavar="T",
                   help="softmax-sampling temperature for exploration (default 0: off)")
    s.add_argument("--seed", type=int, default=None, help="seed of the exploration")
    s.add_argument("--attempts", type=int, default=3,
                   help="calls per stage at most; retried only on UNAVAILABLE (default 3)")
    s.add_argument("--debug", action="store_true", help="log every request to stderr")
    s.set_defaults(fn=cmd_recommend)

    s = sub.add_parser("demo", help="offline end to end: data, train, export, serve, recommend")
    s.add_argument("--export-dir", default="saved_models")
    s.add_argument("--users", type=int, default=3)
    s.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--epochs-retrieval", type=int, default=3)
    s.add_argument("--epochs-ranker", type=int, default=2)
    s.add_argument("--diversity", type=float, default=0.2)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("cluster-server", help="run a worker or parameter server of a training "
                       "cluster, as TF_CONFIG describes it (blocks until stopped)")
    s.set_defaults(fn=cmd_cluster_server)

    s = sub.add_parser("bench", help="run a benchmark from benchmarks/ (JSON + plot in "
                       "benchmarks/results/)")
    s.add_argument("name", choices=BENCHMARKS)
    s.add_argument("--quick", action="store_true", help="the few-minute version")
    s.add_argument("extra", nargs=argparse.REMAINDER,
                   help="further options passed to the benchmark script")
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv=None):
    import recsys_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as e:
        if args.traceback:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except (ValueError, OSError) as e:  # a bad value or a missing file the command was given
        if args.traceback:
            raise
        message = str(e) or type(e).__name__
        print(f"error: {message} (recsys-tf --debug ... shows the traceback)", file=sys.stderr,
              flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
