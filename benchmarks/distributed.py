"""Training beyond one process, measured on one machine: throughput of each strategy against
one process on the same data, and the memory of the coordinator and of each parameter server
as the embedding table grows.

1. **Throughput** (``recsys-tf train deepfm`` as a child process per strategy, the same
   synthetic data, batch size and steps): examples/s of the last epoch (TensorBoard's
   ``examples_per_sec``, so the first epoch's tracing is left out) for ``one_device``,
   ``parameter_server`` (``--local-cluster workers=2,ps=2``) and ``multi_worker``
   (``--local-cluster workers=2,ps=0``).
2. **Memory** (``--memory-run ROWS`` in a child process per size): a model of one
   ``[ROWS, 16]`` embedding table, a dense layer and :class:`recsys_tf.training.LazyAdam`, built
   under a ``parameter_server`` strategy on a local cluster (2 workers, 2 parameter servers,
   the table in 2 parts) and trained for a few steps on random ids; the peak resident memory
   (``VmHWM``) of the coordinator, of each parameter server and of each worker.

Writes ``benchmarks/results/distributed.json`` and ``distributed.png``.

    python benchmarks/distributed.py                 # 1M and 20M rows; about 10 min on 2 cores
    python benchmarks/distributed.py --quick         # 1M rows only, fewer steps
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from recsys_tf import distributed  # noqa: E402  (the checkout's package)
DATA = ["--data", "synthetic", "--data-option", "n_users=2000", "--data-option",
        "n_items=1000", "--data-option", "n_train=60000", "--data-option", "n_test=2000",
        "--data-option", "valid_fraction=0"]
STRATEGIES = {"one_device": [], "parameter_server": ["--local-cluster", "workers=2,ps=2"],
              "multi_worker": ["--local-cluster", "workers=2,ps=0"]}


def _peak_kb(pid):
    """VmHWM (peak resident set) of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _last_epoch_rate(logdir):
    from recsys_tf.backend import tf

    rates = {}
    for path in glob.glob(os.path.join(logdir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == "examples_per_sec":
                    rates[event.step] = float(tf.make_ndarray(v.tensor))
    return rates


def throughput(strategy, epochs, steps, batch, timeout=900):
    """One ``recsys-tf train deepfm`` run; examples/s per epoch and its metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "recsys_tf.cli", "train", "deepfm", *DATA,
                "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--batch-size",
                str(batch), "--weight-averaging", "0", "--logdir", os.path.join(tmp, "logs"),
                "--metrics-out", os.path.join(tmp, "m.json"), *STRATEGIES[strategy]]
        start = time.perf_counter()
        run = subprocess.run(argv, cwd=ROOT, env=distributed.child_environment(),
                             capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        if run.returncode:
            return {"strategy": strategy, "error": run.stdout[-2000:] + run.stderr[-2000:]}
        metrics = json.load(open(os.path.join(tmp, "m.json")))
        rates = _last_epoch_rate(os.path.join(tmp, "logs"))
    steady = [rates[k] for k in sorted(rates)[1:]]      # the first epoch traces the step
    return {"strategy": strategy, "n_workers": metrics["n_workers"], "n_ps": metrics["n_ps"],
            "steps": metrics["steps"], "batch_size": batch,
            "examples_per_sec_by_epoch": [rates[k] for k in sorted(rates)],
            "examples_per_sec": sum(steady) / len(steady) if steady else None,
            "wall_seconds": round(wall, 1), "auc": metrics["auc"]}


def memory_run(rows, steps, dim=16, batch=1024):
    """In this process: the coordinator of a local cluster training a ``[rows, dim]`` table;
    prints one JSON line of peak memories (KiB)."""
    from recsys_tf import training
    from recsys_tf.backend import keras, tf

    base = _peak_kb(os.getpid())
    with distributed.LocalCluster(2, 2) as cluster:
        strategy = cluster.strategy()
        with strategy.scope():
            ids = keras.Input([1], dtype=tf.int64)
            table = keras.layers.Embedding(rows, dim, name="table")
            out = keras.layers.Dense(1, activation="sigmoid")(
                keras.layers.Flatten()(table(ids)))
            model = keras.Model(ids, out)
            model.compile(training.LazyAdam(1e-3), "binary_crossentropy",
                          steps_per_execution=8)
        parts = len(getattr(table.embeddings, "variables", [table.embeddings]))

        def dataset_fn(context=None):
            x = tf.data.Dataset.random(seed=1).map(lambda v: tf.math.floormod(v, rows))
            y = tf.data.Dataset.random(seed=2).map(lambda v: tf.cast(v % 2, tf.float32))
            return tf.data.Dataset.zip((x.map(lambda v: tf.reshape(v, [1])), y)).batch(batch)

        built = _peak_kb(os.getpid())
        start = time.perf_counter()
        model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1,
                  steps_per_epoch=steps, verbose=0)
        seconds = time.perf_counter() - start
        peaks = {f"{t}-{i}": _peak_kb(p.pid) for (t, i), p in cluster.processes.items()}
        result = {"rows": rows, "dim": dim, "table_mb": rows * dim * 4 / 2**20,
                  "table_parts": parts, "steps": steps,
                  "examples_per_sec": steps * batch / seconds,
                  "coordinator_kb_before_cluster": base, "coordinator_kb_after_build": built,
                  "coordinator_kb": _peak_kb(os.getpid()), "peaks_kb": peaks}
    print("RESULT " + json.dumps(result), flush=True)


def memory(rows, steps, timeout=900):
    run = subprocess.run([sys.executable, __file__, "--memory-run", str(rows), "--steps",
                          str(steps)], cwd=ROOT, env=distributed.child_environment(),
                         capture_output=True, text=True, timeout=timeout)
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"rows": rows, "error": (run.stdout[-1500:] + run.stderr[-1500:])}


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    runs = [r for r in result["throughput"] if r.get("examples_per_sec")]
    a.bar([r["strategy"] for r in runs], [r["examples_per_sec"] for r in runs],
          color=["#4c72b0", "#dd8452", "#55a868"][:len(runs)])
    a.set_ylabel("training examples/s (steady epochs)")
    a.set_title("DeepFM, one 2-core machine")
    mem = [m for m in result["memory"] if "peaks_kb" in m]
    labels = ["coordinator"] + sorted({k for m in mem for k in m["peaks_kb"]})
    width = 0.8 / max(len(mem), 1)
    for j, m in enumerate(mem):
        values = [m["coordinator_kb"] / 1024] + [m["peaks_kb"].get(k, 0) / 1024
                                                  for k in labels[1:]]
        b.bar([i + j * width for i in range(len(labels))], values, width,
              label=f"{m['rows']:,} rows ({m['table_mb']:.0f} MB table)")
    b.set_xticks([i + width * (len(mem) - 1) / 2 for i in range(len(labels))])
    b.set_xticklabels(labels, rotation=30)
    b.set_ylabel("peak resident memory (MiB)")
    b.set_title("parameter_server, table in 2 parts")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--memory-run", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "distributed.json"))
    args = p.parse_args(argv)
    if args.memory_run:
        memory_run(args.memory_run, args.steps or 40)
        return 0
    rows = args.rows or ([1_000_000] if args.quick else [1_000_000, 20_000_000])
    epochs, steps = (3, 20) if args.quick else (4, 40)
    result = {"host": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
              "throughput": [], "memory": []}
    if not args.skip_throughput:
        for name in STRATEGIES:
            result["throughput"].append(throughput(name, epochs, steps, 512))
            print(json.dumps(result["throughput"][-1]), flush=True)
    for n in rows:
        result["memory"].append(memory(n, args.steps or (20 if args.quick else 40)))
        print(json.dumps(result["memory"][-1]), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    plot(result, args.out[:-5] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
