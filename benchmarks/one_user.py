"""One user's candidates through a ranker's ``one_user`` signature vs ``serving_default``.

For each ranker of the zoo (trained for one epoch on the synthetic data set and exported by
``recsys_tf.export``, as ``serving.py`` does), ``--candidates`` candidates (default 500, what
the client ranks) for one user are scored twice over:

* ``serving_default``: the user's and context features repeated on every candidate row;
* ``one_user``: the same features as one row, repeated by the signature (models that take
  encoded inputs look the row up once and repeat its table rows; DIEN runs its interest
  extractor once).

Both are called in-process on the SavedModel (numpy in, ``tf.constant``, call, ``.numpy()``
out), alternating call by call for ``--rounds`` rounds of ``--calls`` calls, on one user
with a history of median length in the test rows; the answers are checked equal first. Also
recorded: the size of the Predict request a client sends for each (TensorProtos from the
project's codec, as the client builds them). Latency is the p50 / p99 over all calls.

    python benchmarks/one_user.py                     # 5 rankers
    python benchmarks/one_user.py --models deepfm dien --candidates 100

Writes ``benchmarks/results/one_user.json`` and ``benchmarks/results/one_user.png``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

from common import (  # noqa: E402
    load_average, machine_info, percentiles, pyplot, save_figure, write_results)
from serving import build_models  # noqa: E402

MODELS = ("deepfm", "wide_deep", "xdeepfm", "dcn_v2", "dien")


def request_bytes(model, arrays, signature):
    """Serialized size of the Predict request carrying ``arrays``."""
    from tensorflow_serving.apis import predict_pb2

    from recsys_tf.wire import codec

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    for name, value in arrays.items():
        codec.to_tensor_proto(value, out=request.inputs[name])
    return request.ByteSize()


def inputs_for(ds, fn_default, fn_one, candidates):
    """(serving_default inputs, one_user inputs, the user's history length)."""
    import pandas as pd

    fs = ds.feature_set
    once = [n for n, s in fn_one.structured_input_signature[1].items() if s.shape[0] == 1]
    test = ds.test
    history = next((n for n in once if n in fs.names and fs[n].kind == "sequence"), None)
    if history is not None:     # a user whose history is of median length
        lengths = test[history].map(len).to_numpy()
        user_row = test.iloc[int(np.argsort(lengths, kind="stable")[len(lengths) // 2])]
        length = int(len(user_row[history]))
    else:
        user_row, length = test.iloc[0], None
    frame = test.head(candidates).copy()
    for name in once:
        frame[name] = pd.Series([user_row[name]] * len(frame), index=frame.index)
    names = list(fn_default.structured_input_signature[1])
    specs = fn_default.structured_input_signature[1]
    arrays = ds.feature_set.arrays(frame, names)
    full = {n: (np.asarray(v).astype(object) if specs[n].dtype.name == "string"
                else np.asarray(v).astype(specs[n].dtype.as_numpy_dtype))
            for n, v in arrays.items()}
    one = {n: (v[:1] if n in once else v) for n, v in full.items()}
    return full, one, length


def measure(fn, arrays, calls):
    import tensorflow as tf

    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(**{k: tf.constant(v) for k, v in arrays.items()})["probability"].numpy()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def plot(rows, path):
    plt = pyplot()
    models = [r["model"] for r in rows]
    x = np.arange(len(models))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, (way, color) in enumerate((("serving_default", "tab:gray"), ("one_user", "tab:blue"))):
        p50 = [r[way]["p50_ms"] for r in rows]
        p99 = [r[way]["p99_ms"] for r in rows]
        ax.bar(x + (i - 0.5) * 0.38, p99, 0.38, color=color, alpha=0.35)
        ax.bar(x + (i - 0.5) * 0.38, p50, 0.38, color=color, label=f"{way} p50 (p99 light)")
        bx.bar(x + (i - 0.5) * 0.38, [r[way]["request_kb"] for r in rows], 0.38, color=color,
               label=way)
    ax.set_xticks(x, models)
    ax.set_ylabel("ms per call, in-process")
    ax.set_title(f"{rows[0]['candidates']} candidates for one user", fontsize=10)
    ax.legend(fontsize=8)
    bx.set_xticks(x, models)
    bx.set_ylabel("Predict request, KB")
    bx.set_title("request size", fontsize=10)
    bx.legend(fontsize=8)
    for a in (ax, bx):
        a.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=20, help="calls per way and round")
    p.add_argument("--out", default=os.path.join(HERE, "results", "one_user.json"))
    args = p.parse_args(argv)
    if args.candidates < 1:
        p.error(f"--candidates {args.candidates}: expected at least 1")

    import tensorflow as tf

    machine = machine_info()
    root = tempfile.mkdtemp(prefix="recsys_tf_one_user_")
    print(f"training {', '.join(args.models)} (one epoch each) into {root}", flush=True)
    ds, info = build_models(root, args.models)
    rows = []
    for name in args.models:
        if "export_path" not in info[name]:
            continue
        sigs = tf.saved_model.load(info[name]["export_path"]).signatures
        default, one = sigs["serving_default"], sigs["one_user"]
        full, once, length = inputs_for(ds, default, one, args.candidates)
        want = default(**{k: tf.constant(v) for k, v in full.items()})["probability"].numpy()
        got = one(**{k: tf.constant(v) for k, v in once.items()})["probability"].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
        times = {"serving_default": [], "one_user": []}
        measure(default, full, 3), measure(one, once, 3)      # warm-up
        for r in range(args.rounds):
            ways = [("serving_default", default, full), ("one_user", one, once)]
            for _ in range(args.calls):
                for way, fn, arrays in ways if r % 2 == 0 else ways[::-1]:
                    times[way] += measure(fn, arrays, 1)
        row = {"model": name, "candidates": args.candidates, "history_length": length,
               "max_abs_difference": float(np.max(np.abs(got - want)))}
        for way, arrays in (("serving_default", full), ("one_user", once)):
            row[way] = {**percentiles(times[way], digits=3), "calls": len(times[way]),
                        "request_kb": round(request_bytes(name, arrays, way) / 1024, 1)}
        row["p50_ratio"] = round(row["one_user"]["p50_ms"] / row["serving_default"]["p50_ms"], 3)
        rows.append(row)
        print(f"{name:10s} serving_default p50 {row['serving_default']['p50_ms']:7.2f} ms "
              f"({row['serving_default']['request_kb']:6.1f} KB)  one_user p50 "
              f"{row['one_user']['p50_ms']:7.2f} ms ({row['one_user']['request_kb']:5.1f} KB)"
              f"  ratio {row['p50_ratio']:.2f}", flush=True)
    report = {"benchmark": "one_user", "candidates": args.candidates, "rounds": args.rounds,
              "calls_per_round": args.calls, "training": info,
              "machine": {**machine, "load_average_after": load_average()},
              "results": rows}
    out, png = write_results(report, args.out,
                             (lambda result, path: plot(result["results"], path)) if rows else None)
    print(f"wrote {out}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
