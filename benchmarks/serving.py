"""Predict through the bundled server vs the same SavedModel called in-process.

For each ranker (DeepFM, Wide&Deep, xDeepFM, DCN-v2, DIEN, as the zoo builds them by default,
trained for one epoch on the synthetic data set and exported with ``recsys_tf.export``), one
request is sent over and over by 1, 4 and 16 concurrent clients. Two request sizes
(``--rows``): 100 rows, what the client sends to rank one user's candidates, and 10 rows, the
small-request case server-side batching is meant for. The ways:

* ``in_process``: ``tf.saved_model.load(path).signatures["serving_default"]`` called from
  Python threads of the benchmark process, which only loads the SavedModels (training runs
  in a subprocess): numpy in, ``tf.constant``, call, ``.numpy()`` out;
* ``server``: gRPC ``Predict`` to the bundled server (``recsys-tf serve`` in a subprocess on
  127.0.0.1, started by ``common.start_server``), each client thread with its own channel,
  the request built once, the response decoded every time;
* ``server_batching_5ms``, ``server_batching_20ms``: the same against servers started with
  ``--enable_batching``, one per ``--batch-timeout-micros`` (parameters written to the result,
  with the requests merged per batch on average);
* ``in_process_batched`` (at the highest concurrency only): what a perfect batcher could get
  out of the model on this machine - the 16 clients' requests stacked into one call of
  ``16 x rows`` rows, made in-process from ``--num-batch-threads`` threads, with no RPC, no
  parsing and no waiting; its QPS counts requests (16 a call);
* ``server_noop_model``: the ``server`` way against a second server (no batching) whose
  models take the same inputs and return zeros of the same outputs' shapes without computing
  anything - what a request costs the server, its clients and the loopback besides the model.

The machine these numbers come from is shared with other work, so the ways are measured
back to back for each (model, rows, clients) cell, ``--repeats`` times (default 3) with the
order rotated, each run lasting ``--seconds`` (default 1) or ``--max-requests``; latency
percentiles are over all repeats' requests as the client sees them, QPS is the median
repeat's. Two figures are checked against targets:

    server overhead  = p50(server, 1 client) - p50(in_process, 1 client)      target <= 1.5 ms
    batching speed-up = QPS(server_batching_*, 16) / QPS(server, 16)          target >= 1.5x

(the batching speed-up quoted for the timeout that gave the most; all are in the JSON), next
to what bounds it on this machine - a batching server does at least the perfect batcher's work
on the same cores, and its clients' besides:

    batching bound   = QPS(in_process_batched) / QPS(server, 16)
    model ceiling    = QPS(in_process_batched) / QPS(in_process, 16)   (the model alone)
    no-op gain       = QPS(server_noop_model, 16) / QPS(server, 16)    (a model that costs
                       nothing, still one call a request: the share of the server's cost that
                       is not the model's)

and, per gRPC way, the CPU a request costs the server process and the benchmark process (its
client threads), from ``/proc/PID/stat`` over the timed part of each run
(``server_cpu_ms_per_request``, ``benchmark_process_cpu_ms_per_request``; at the highest
concurrency also in the summary): on shared cores their sum bounds the QPS at
``cores / CPU per request``.

Everything stays on loopback. The machine may be shared with other work (the load average is
recorded before and after): compare figures from one run only.

Where the cores are: by default the servers and the benchmark process (its client threads and
the in-process calls) share every core, so the clients' own gRPC work competes with the
server's. ``--pin SERVER:CLIENTS`` (e.g. ``0:1``) keeps them apart, as a deployment does whose
load comes from other machines: every server on the cores listed first, the benchmark process
- client threads, in-process calls and the perfect batcher - on the others. The figures then
say what the server does with its cores, the in-process ways what the model does with as many.

Usage::

    python benchmarks/serving.py                   # 5 rankers x 10/100 rows
    python benchmarks/serving.py --quick           # DeepFM only, one repeat
    python benchmarks/serving.py --models deepfm dcn_v2 --rows 20 --seconds 2
    python benchmarks/serving.py --pin 0:1         # servers on core 0, clients on core 1

Writes ``benchmarks/results/serving.json``, ``serving.png`` (QPS and latency) and
``serving_cpu.png`` (CPU a request) (``serving_pinned*`` with ``--pin``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import recsys_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from common import (  # noqa: E402
    load_average, machine_info, percentiles, pyplot, save_figure, start_server, stop_servers,
    write_results)

RANKERS = ("deepfm", "wide_deep", "xdeepfm", "dcn_v2", "dien")
CONCURRENCY = (1, 4, 16)
TARGET_OVERHEAD_MS = 1.5
TARGET_BATCHING_SPEEDUP = 1.5
# The model alone, batched perfectly: no RPC, no parsing, no waiting (see the docstring)
IDEAL = "in_process_batched"
# The same server and inputs with a model that computes nothing (see the docstring)
NOOP = "server_noop_model"


def _cpus(text):
    """``"0,2-3"`` -> ``{0, 2, 3}``."""
    out = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def parse_pin(text):
    """``"SERVER:CLIENTS"`` (each a list of CPUs such as ``0`` or ``0,2-3``) -> two sets."""
    try:
        server, clients = (_cpus(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--pin takes SERVER_CPUS:CLIENT_CPUS such as 0:1 or 0-1:2-3, got {text!r}") from None
    usable = os.sched_getaffinity(0)
    if not server or not clients or server & clients or not (server | clients) <= usable:
        raise argparse.ArgumentTypeError(
            f"--pin {text}: two disjoint, non-empty sets of this process's CPUs "
            f"{sorted(usable)} expected")
    return server, clients


def pin_this_process(cpus):
    """Every thread of this process (TensorFlow's pools included) onto ``cpus``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def process_cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- models
def build_models(root, names, seed=0):
    """Train each ranker briefly on the synthetic data and export it under ``root``."""
    from recsys_tf.pipeline import train

    ds = _dataset(seed)
    info = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            result, _ = train(name, ds, epochs=1, batch_size=512, export_dir=root, verbose=0)
        except Exception as exc:  # reported in the result; the other models still run
            info[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"  {name}: FAILED to train/export: {info[name]['error']}", flush=True)
            continue
        info[name] = {"export_path": result["export_path"], "auc": round(result["auc"], 4),
                      "train_seconds": round(time.perf_counter() - t0, 1)}
        print(f"  {name}: trained and exported in {info[name]['train_seconds']} s "
              f"(test AUC {info[name]['auc']})", flush=True)
    return ds, info


def _dataset(seed=0):
    from recsys_tf import data

    return data.load("synthetic", None, n_train=20000, n_test=2000, seed=seed)


def request_arrays(ds, fn, rows):
    """``rows`` test rows as the signature's inputs (names and dtypes from the signature)."""
    import numpy as np

    spec = fn.structured_input_signature[1]
    arrays = ds.feature_set.arrays(ds.test.head(rows), list(spec))
    out = {}
    for name, tensor_spec in spec.items():
        value = np.asarray(arrays[name])
        if tensor_spec.dtype.name == "string":
            value = value.astype(object)
        else:
            value = value.astype(tensor_spec.dtype.as_numpy_dtype)
        out[name] = value
    return out


# --------------------------------------------------------------------------- measuring
def run_cell(make_call, concurrency, seconds, max_requests, warmup=10, on_start=None):
    """Latencies (ms) of ``concurrency`` threads calling ``make_call()()`` until time/count
    (``on_start()`` runs after the warm-up calls, before the timed ones)."""
    calls = [make_call() for _ in range(concurrency)]
    for call in calls:
        for _ in range(warmup):
            call()
    if on_start is not None:
        on_start()
    counter = itertools.count()
    latencies, errors = [], []
    lock = threading.Lock()
    start_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(call):
        local = []
        start_gate.wait()
        while time.perf_counter() < deadline[0] and next(counter) < max_requests:
            t0 = time.perf_counter()
            try:
                call()
            except Exception as exc:  # counted; a benchmark cell must not die on one failure
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            local.append((time.perf_counter() - t0) * 1e3)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return latencies, errors, wall


def summarize(latencies, errors, wall, rows):
    import numpy as np

    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    n = len(latencies)
    return {"requests": n, "errors": len(errors), "error_examples": errors[:3],
            "wall_s": round(wall, 3), **percentiles(lat, digits=3),
            "mean_ms": round(float(lat.mean()), 3), "qps": round(n / wall, 1),
            "rows_per_s": round(n * rows / wall, 1)}


def summarize_repeats(cells, rows):
    """Latency percentiles over all repeats' requests; QPS: the median of the repeats'."""
    import numpy as np

    merged = summarize([x for lat, _, _ in cells for x in lat],
                       [e for _, errs, _ in cells for e in errs], sum(w for _, _, w in cells),
                       rows)
    merged["qps_repeats"] = [round(len(lat) / wall, 1) for lat, _, wall in cells]
    merged["qps"] = round(float(np.median(merged["qps_repeats"])), 1)
    merged["rows_per_s"] = round(merged["qps"] * rows, 1)
    return merged


def in_process_caller(fn, arrays):
    import tensorflow as tf

    def make():
        def call():
            out = fn(**{k: tf.constant(v) for k, v in arrays.items()})
            return {k: t.numpy() for k, t in out.items()}
        return call
    return make


def grpc_caller(target, model, arrays):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from recsys_tf.wire import codec

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in arrays.items():
        request.inputs[key].CopyFrom(codec.to_tensor_proto(value))
    channels = []

    def make():
        channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 << 20)])
        channels.append(channel)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call():
            response = stub.Predict(request, timeout=30)
            return {k: codec.to_ndarray(v) for k, v in response.outputs.items()}
        return call
    return make, channels


# --------------------------------------------------------------------------- plot
def plot(results, path, row_sizes, layout=""):
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in results))
    modes = list(dict.fromkeys(r["mode"] for r in results))
    palette = iter(["tab:orange", "tab:red", "tab:green", "tab:purple", "tab:brown"])
    colors = {m: {"in_process": "tab:gray", "server": "tab:blue"}.get(m) or next(palette)
              for m in modes}
    n_rows = 2 * len(row_sizes)
    fig, axes = plt.subplots(n_rows, len(models), figsize=(3.2 * len(models), 2.9 * n_rows),
                             squeeze=False)
    for k, rows in enumerate(row_sizes):
        qps_ax, lat_ax = axes[2 * k], axes[2 * k + 1]
        for j, model in enumerate(models):
            for mode in modes:
                cells = sorted((r for r in results if r["model"] == model and r["mode"] == mode
                                and r["rows"] == rows), key=lambda r: r["concurrency"])
                if not cells:
                    continue
                xs = [c["concurrency"] for c in cells]
                qps_ax[j].plot(xs, [c["qps"] for c in cells], "o-", color=colors[mode],
                               label=mode)
                lat_ax[j].plot(xs, [c["p50_ms"] for c in cells], "o-", color=colors[mode],
                               label=f"{mode} p50")
                lat_ax[j].plot(xs, [c["p99_ms"] for c in cells], "x:", color=colors[mode],
                               label=f"{mode} p99")
            qps_ax[j].set_title(f"{model}, {rows} rows/request", fontsize=9)
            qps_ax[j].set_ylabel("requests/s (log)")
            qps_ax[j].set_yscale("log")  # the perfect batcher is far above the rest
            lat_ax[j].set_ylabel("latency ms")
            lat_ax[j].set_yscale("log")
            for ax in (qps_ax[j], lat_ax[j]):
                ax.set_xscale("log", base=2)
                ax.set_xticks(list(CONCURRENCY))
                ax.set_xticklabels([str(c) for c in CONCURRENCY])
                ax.set_xlabel("concurrent clients", fontsize=8)
                ax.grid(alpha=0.3)
        qps_ax[0].legend(fontsize=7)
        lat_ax[0].legend(fontsize=6)
    fig.suptitle("Predict: in-process vs bundled server (gRPC, loopback), with and without "
                 f"server-side batching{'; ' + layout if layout else ''}", fontsize=10)
    save_figure(fig, path, dpi=100)


def plot_cpu(results, path, layout=""):
    """CPU a request at the highest concurrency, per model and request size: the server
    process and the clients' process stacked, for each gRPC way - the bar that must shrink
    for more QPS on shared cores (one panel per request size, linear scales)."""
    plt = pyplot()
    c_hi = max(r["concurrency"] for r in results)
    cells = [r for r in results if r["concurrency"] == c_hi and "server_cpu_ms_per_request" in r]
    if not cells:
        return
    sizes = sorted({r["rows"] for r in cells})
    modes = list(dict.fromkeys(r["mode"] for r in cells))
    models = list(dict.fromkeys(r["model"] for r in cells))
    width = 0.8 / len(modes)
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(8.0, 1.1 * len(models)) * len(sizes)
                                                     / 1.6, 4.2), squeeze=False)
    for ax, rows in zip(axes[0], sizes):
        for k, mode in enumerate(modes):
            by = {r["model"]: r for r in cells if r["mode"] == mode and r["rows"] == rows}
            xs = [i + (k - (len(modes) - 1) / 2) * width for i in range(len(models))]
            server = [by[m]["server_cpu_ms_per_request"] if m in by else 0.0 for m in models]
            clients = [by[m]["benchmark_process_cpu_ms_per_request"] if m in by else 0.0
                       for m in models]
            bars = ax.bar(xs, server, width, label=f"{mode}: server")
            ax.bar(xs, clients, width, bottom=server, color=bars[0].get_facecolor(),
                   alpha=0.35, label=f"{mode}: clients")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, fontsize=8)
        ax.set_title(f"{rows} rows/request, {c_hi} clients", fontsize=9)
        ax.set_ylabel("CPU ms per request")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].set_ylim(0, axes[0][-1].get_ylim()[1] * 1.5)    # room for the legend
    axes[0][-1].legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle("CPU a request costs: server process (solid) + clients (light)"
                 + (f"; {layout}" if layout else ""), fontsize=10)
    save_figure(fig, path, dpi=100)


# --------------------------------------------------------------------------- stages
def _stage(args, *stage_args):
    """Run one stage of this script in a fresh process; returns its JSON answer."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *stage_args],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    for line in out.stdout.splitlines():
        if not line.startswith(("{", "[")):
            print(line, flush=True)
    if out.returncode != 0:
        raise RuntimeError(f"stage {stage_args[:2]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_train(root, models):
    """Fresh process: train and export the rankers; answer with their paths and AUCs."""
    _, info = build_models(root, models)
    print(json.dumps(info))


def _batching_mode(timeout_micros: int) -> str:
    return f"server_batching_{timeout_micros / 1000:g}ms"


def _show(row):
    extra = (f"  {row['requests_per_batch']:.1f} req/batch"
             if "requests_per_batch" in row else "")
    print(f"  {row['model']:10s} {row['mode']:24s} rows={row['rows']:<4d} "
          f"c={row['concurrency']:<3d} p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
          f"  {row['qps']:8.1f} req/s  errors {row['errors']}{extra}", flush=True)


# --------------------------------------------------------------------------- main
def _measure_cell(args, modes, timeouts, servers, rest_ports, name, rows, c, fn, arrays):
    """One (model, rows, clients) cell: every mode, ``args.repeats`` times, order rotated."""
    cells = {m: [] for m in modes}
    batch_stats = {m: [0, 0] for m in timeouts}
    cpu = {m: [0.0, 0.0] for m in modes}   # CPU seconds of (the server, this process)
    for r in range(args.repeats):
        k = r % len(modes)
        for mode in modes[k:] + modes[:k]:  # rotated: no mode always first
            threads = c
            if mode == "in_process":
                make, channels = in_process_caller(fn, arrays), []
            elif mode == IDEAL:  # c requests' rows in one call, from the batch threads
                make, channels = in_process_caller(fn, _stacked(arrays, c)), []
                threads = args.num_batch_threads
            else:
                make, channels = grpc_caller(servers[mode].target, name, arrays)
            before, cpu_before = [], []
            server = servers.get(mode)

            def snapshot(mode=mode, server=server):  # after the warm-up calls, which run alone
                if mode in timeouts:
                    before.extend(_batch_totals(rest_ports[mode]))
                cpu_before[:] = [process_cpu_seconds(server.pid) if server else 0.0,
                                 time.process_time()]

            cells[mode].append(run_cell(make, threads, args.seconds, args.max_requests,
                                        on_start=snapshot))
            cpu[mode][0] += (process_cpu_seconds(server.pid) if server else 0.0) - \
                cpu_before[0]
            cpu[mode][1] += time.process_time() - cpu_before[1]
            if mode in timeouts:
                after = _batch_totals(rest_ports[mode])
                batch_stats[mode][0] += after[0] - before[0]
                batch_stats[mode][1] += after[1] - before[1]
            for ch in channels:
                ch.close()
    rows_out = []
    for mode in modes:
        row = {"model": name, "mode": mode, "concurrency": c, "rows": rows,
               **summarize_repeats(cells[mode], rows)}
        done = sum(len(lat) for lat, _, _ in cells[mode]) * (c if mode == IDEAL else 1)
        if done:    # CPU a request: the server process's (gRPC ways) and this process's
            if mode in servers:
                row["server_cpu_ms_per_request"] = round(cpu[mode][0] / done * 1e3, 3)
            row["benchmark_process_cpu_ms_per_request"] = round(cpu[mode][1] / done * 1e3, 3)
        if mode == IDEAL:  # a call is c requests: count requests, as the other modes do
            row.update(requests_per_call=c, calls_per_s=row["qps"],
                       qps=round(row["qps"] * c, 1), rows_per_s=round(row["rows_per_s"] * c, 1),
                       threads=args.num_batch_threads)
        if mode in timeouts:
            row["batch_timeout_micros"] = timeouts[mode]
            row["requests_per_batch"] = round(
                batch_stats[mode][1] / max(1, batch_stats[mode][0]), 2)
        rows_out.append(row)
        _show(row)
    return rows_out


def export_noop_models(fns, root):
    """For each signature in ``fns``, a SavedModel under ``root/NAME/1`` with the same
    inputs whose ``serving_default`` returns zeros shaped like its outputs (no computing)."""
    import tensorflow as tf

    for name, fn in fns.items():
        spec = fn.structured_input_signature[1]
        outputs = fn.structured_outputs

        class NoOp(tf.Module):
            @tf.function(input_signature=[spec])
            def serve(self, inputs):
                n = tf.shape(inputs[sorted(inputs)[0]])[0]
                return {k: tf.zeros(tf.concat([[n], tf.constant(v.shape[1:].as_list(),
                                                                 tf.int32)], 0), v.dtype)
                        for k, v in outputs.items()}

        module = NoOp()
        tf.saved_model.save(module, os.path.join(root, name, "1"),
                            signatures={"serving_default": module.serve.get_concrete_function()})


def _stacked(arrays, copies):
    """``copies`` requests' inputs as one: each array repeated along the batch axis."""
    import numpy as np

    return {k: np.concatenate([v] * copies) for k, v in arrays.items()}


def _batch_totals(rest_port):
    """(batches, requests) the batching server has run, from its Prometheus metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics",
                                timeout=10) as resp:
        text = resp.read().decode()
    found = dict(re.findall(r"^:tensorflow:serving:batching_session:tasks_per_batch_(sum|count) "
                            r"(\d+)$", text, re.M))
    return int(found.get("count", 0)), int(found.get("sum", 0))


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--stage-train":
        return stage_train(argv[1], argv[2:]) or 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(RANKERS), choices=RANKERS)
    parser.add_argument("--rows", type=int, nargs="+", default=[10, 100],
                        help="rows per request (default: 10 and 100)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="per cell and repeat (default 1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repeats of every cell (default 3)")
    parser.add_argument("--max-requests", type=int, default=2000,
                        help="per cell and repeat (default 2000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    # One batching server per timeout (what each gathers: benchmarks/README.md); a batch of
    # max_batch_size requests runs as soon as it is full, whatever the timeout.
    parser.add_argument("--batch-timeout-micros", type=int, nargs="+", default=[5000, 20000],
                        help="batching servers' batch_timeout_micros, one server each "
                             "(default 5000 20000)")
    parser.add_argument("--num-batch-threads", type=int, default=1)
    parser.add_argument("--pin", type=parse_pin, default=None, metavar="SERVER:CLIENTS",
                        help="run the servers on the CPUs before the colon and this process "
                             "(clients, in-process calls) on those after it, e.g. 0:1 "
                             "(default: all share every CPU)")
    parser.add_argument("--quick", action="store_true", help="DeepFM only, 1 repeat")
    parser.add_argument("--out", default=None,
                        help="default: benchmarks/results/serving.json "
                             "(serving_pinned.json with --pin)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(HERE, "results",
                                "serving_pinned.json" if args.pin else "serving.json")
    server_cpus, client_cpus = args.pin or (None, None)
    if args.quick:
        args.models, args.repeats = ["deepfm"], 1
    import tensorflow as tf

    started = time.time()
    machine = machine_info()
    results = []
    timeouts = {_batching_mode(t): t for t in args.batch_timeout_micros}
    modes = ("in_process", "server", NOOP, *timeouts)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        root, noop_root = os.path.join(tmp, "models"), os.path.join(tmp, "noop_models")
        os.makedirs(root)
        print(f"training {len(args.models)} rankers (1 epoch, synthetic data), in a subprocess",
              flush=True)
        info = _stage(args, "--stage-train", root, *args.models)
        skipped = {n: i["error"] for n, i in info.items() if "error" in i}
        args.models = [n for n in args.models if n not in skipped]
        if not args.models:
            raise SystemExit(f"no model could be trained and exported: {skipped}")
        # This process only loads the SavedModels: it is the in-process baseline and the
        # gRPC client, one at a time.
        if client_cpus:
            pin_this_process(client_cpus)
        ds = _dataset()
        fns, arrays = {}, {}
        for name in args.models:
            fns[name] = tf.saved_model.load(info[name]["export_path"]).signatures[
                "serving_default"]
            for rows in args.rows:
                arrays[name, rows] = request_arrays(ds, fns[name], rows)
            info[name]["inputs"] = {k: [str(v.dtype), list(v.shape[1:])]
                                    for k, v in arrays[name, args.rows[0]].items()}

        # max_batch_size: what the most clients send at once, so that at full load a batch
        # runs as soon as every client's request is in it; hence one set of batching servers
        # per request size (TF Serving's batching parameters are server-wide)
        batching = {"max_batch_size": {rows: rows * max(args.concurrency) for rows in args.rows},
                    "batch_timeout_micros": args.batch_timeout_micros,
                    "max_enqueued_batches": 1000, "num_batch_threads": args.num_batch_threads}
        export_noop_models(fns, noop_root)
        no_polling = ("--file_system_poll_wait_seconds", "0")
        servers, rest_ports = {}, {}
        try:
            servers["server"] = start_server(root, args=no_polling, cpus=server_cpus)
            servers[NOOP] = start_server(noop_root, args=no_polling, cpus=server_cpus)
            for rows in args.rows:
                print(f"{rows} rows a request: starting {len(timeouts)} batching server(s), "
                      f"max_batch_size {batching['max_batch_size'][rows]}", flush=True)
                for mode, timeout in timeouts.items():
                    params = os.path.join(root, f"{mode}_{rows}.config")
                    with open(params, "w") as f:
                        f.write("".join(f"{k} {{ value: {v} }}\n" for k, v in dict(
                            batching, max_batch_size=batching["max_batch_size"][rows],
                            batch_timeout_micros=timeout).items()))
                    servers[mode] = start_server(root, args=(
                        *no_polling, "--enable_batching", "--batching_parameters_file", params),
                        cpus=server_cpus, rest_api_port=0)
                    rest_ports[mode] = servers[mode].rest_port
                for name in args.models:
                    for c in args.concurrency:
                        cell_modes = modes + (IDEAL,) if c == max(args.concurrency) else modes
                        results.extend(_measure_cell(args, cell_modes, timeouts, servers,
                                                     rest_ports, name, rows, c, fns[name],
                                                     arrays[name, rows]))
                stop_servers(*(servers.pop(mode) for mode in timeouts))
        finally:
            stop_servers(*servers.values())

    summary = {}
    c_lo, c_hi = min(args.concurrency), max(args.concurrency)
    for name in args.models:
        for rows in args.rows:
            def cell(mode, c):
                return next((r for r in results if r["model"] == name and r["mode"] == mode
                             and r["concurrency"] == c and r["rows"] == rows), None)
            inproc, srv = cell("in_process", c_lo), cell("server", c_lo)
            srv_hi = cell("server", c_hi)
            overhead = round(srv["p50_ms"] - inproc["p50_ms"], 3)
            speedups = {timeouts[m]: round(cell(m, c_hi)["qps"] / srv_hi["qps"], 2)
                        if srv_hi["qps"] else 0.0 for m in timeouts}
            best = max(speedups, key=speedups.get)
            ideal, inproc_hi = cell(IDEAL, c_hi), cell("in_process", c_hi)
            noop_hi = cell(NOOP, c_hi)
            summary[f"{name}/{rows}_rows"] = {
                f"server_overhead_p50_ms_at_{c_lo}": overhead,
                "meets_overhead_target": overhead <= TARGET_OVERHEAD_MS,
                f"batching_qps_speedup_at_{c_hi}_by_timeout_micros": speedups,
                f"batching_qps_speedup_at_{c_hi}": speedups[best],
                "best_batch_timeout_micros": best,
                "meets_batching_target": speedups[best] >= TARGET_BATCHING_SPEEDUP,
                f"batching_bound_at_{c_hi}": round(ideal["qps"] / srv_hi["qps"], 2)
                if srv_hi["qps"] else 0.0,
                f"model_batching_ceiling_at_{c_hi}": round(ideal["qps"] / inproc_hi["qps"], 2)
                if inproc_hi["qps"] else 0.0,
                f"noop_model_gain_at_{c_hi}": round(noop_hi["qps"] / srv_hi["qps"], 2)
                if srv_hi["qps"] else 0.0,
                # CPU ms a request at the highest concurrency: (server process, clients)
                f"cpu_ms_per_request_at_{c_hi}": {
                    m: [cell(m, c_hi).get("server_cpu_ms_per_request"),
                        cell(m, c_hi).get("benchmark_process_cpu_ms_per_request")]
                    for m in ["server", NOOP, *timeouts] if cell(m, c_hi) is not None},
                "errors": sum(r["errors"] for r in results
                              if r["model"] == name and r["rows"] == rows)}
    out = {
        "benchmark": "serving",
        "description": "Predict latency/QPS through the bundled gRPC server (127.0.0.1) vs "
                       "the same SavedModel in-process; with and without server-side batching",
        "targets": {"server_overhead_p50_ms": TARGET_OVERHEAD_MS,
                    "batching_qps_speedup": TARGET_BATCHING_SPEEDUP},
        "config": {"models": args.models, "rows_per_request": args.rows,
                   "seconds_per_cell_and_repeat": args.seconds, "repeats": args.repeats,
                   "max_requests_per_cell_and_repeat": args.max_requests,
                   "method": "every (model, rows, clients) cell runs in_process, server, "
                             "server_noop_model and each server_batching_* back to back, "
                             "repeated with the order rotated; p50/p99 over all repeats' "
                             "requests, QPS the median repeat; the batching speed-up is "
                             "quoted for the best timeout; in_process_batched (highest "
                             "concurrency only) is one call on all clients' requests "
                             "stacked, from num_batch_threads threads",
                   "concurrency": args.concurrency, "batching_parameters": batching,
                   "cpus": ({"servers": sorted(server_cpus), "benchmark_process": sorted(
                       client_cpus)} if args.pin else "shared: servers and this process on "
                            "every CPU"),
                   "in_process": "the benchmark process (training ran in a subprocess): "
                                 "tf.saved_model.load + signature call per request, numpy "
                                 "in and out",
                   "server": "recsys-tf serve (subprocess), default threads, no polling",
                   "noop_models": "same inputs and outputs as each ranker's serving_default, "
                                  "zeros out, nothing computed; served by a server of their own",
                   "client": "one gRPC channel per client thread, request built once, response "
                             "decoded per call"},
        "machine": {**machine, "load_average_after": load_average()},
        "models": info, "skipped_models": skipped, "summary": summary, "results": results,
        "seconds": round(time.time() - started, 1),
    }
    layout = (f"servers on CPU {','.join(map(str, sorted(server_cpus)))}, clients on "
              f"{','.join(map(str, sorted(client_cpus)))}" if args.pin else
              f"servers and clients sharing {os.cpu_count()} CPUs")

    def plots(result, png):
        plot(result["results"], png, args.rows, layout)
        plot_cpu(result["results"], os.path.splitext(png)[0] + "_cpu.png", layout)

    write_results(out, args.out, plots)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
