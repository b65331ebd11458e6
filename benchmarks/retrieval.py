"""Retrieval over a 1M-item corpus: exact brute force vs ScaNN, side by side in one run.

What is measured, on one corpus and one set of queries, in one process:

* exact search: numpy (``q @ C^T`` + ``argpartition``), TensorFlow (``matmul`` + ``top_k``
  in a ``tf.function``) and TFRS's ``BruteForce`` layer;
* ScaNN (numpy API) at several settings of one index (k-means tree, AH quantisation,
  exact reorder), plus the setting chosen automatically by
  :func:`recsys_tf.scann_index.tune` for a requested recall@10;
* for each: recall@10 against exact search, single-query latency p50/p99, batched
  throughput (queries/s), index build time and resident memory added by the index;
* optionally (default on, ``--no-served`` to skip) the same retrieval through the exported
  SavedModels (``two_tower`` brute force, ``two_tower_scann``) served by the bundled gRPC
  server in a subprocess: single-request latency p50/p99 including the query tower and gRPC.

The corpus: a two-tower model (64-d) is trained on the synthetic data set; its 1,000 item
embeddings are used to fit a generator of the same statistics (per item category: mean and
shrunk covariance of the embeddings, category shares as in the catalogue), which draws
``--n-items`` L2-normalised vectors. The queries are the trained query tower's embeddings of
the synthetic test interactions (real queries, not generated ones).

    recall@10 = mean_q |ANN_10(q) ∩ Exact_10(q)| / 10
    speed-up = p50 single-query latency of brute force / p50 of ScaNN (same run)

Usage::

    python benchmarks/retrieval.py            # 1M items
    python benchmarks/retrieval.py --quick    # 100k items, no served part

``index_memory_mb`` is the index's own size (the float matrix for brute force; ScaNN's
serialised assets: tree, AH codes, codebooks, the float copy kept for reordering);
``rss_delta_mb`` is what the process's resident memory grew by while building (allocator
reuse makes it a lower bound). Writes ``benchmarks/results/retrieval.json`` and ``retrieval.png`` (recall vs queries/s and
recall vs single-query latency). The machine may be shared: compare only figures from one run.

Reference: Guo et al., "Accelerating Large-Scale Inference with Anisotropic Vector
Quantization", ICML 2020 (ScaNN).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from common import (
    HERE, load_average, machine_info, percentiles, pyplot, save_figure, start_server,
    write_results)


def _limit_threads(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus[:n])
    except (AttributeError, OSError):
        pass


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _percentiles(times_s):
    ms = [t * 1e3 for t in times_s]
    return {**percentiles(ms), "mean_ms": sum(ms) / len(ms), "n": len(ms)}


def _time_single(fn, queries, n, warmup=3, budget_s=4.0, min_n=100):
    """Per-query latencies of ``n`` queries, stopping early (after at least ``min_n``) once
    ``budget_s`` is spent, so that slow settings keep the run bounded."""
    for i in range(warmup):
        fn(queries[i % len(queries)])
    out = []
    start = time.perf_counter()
    for i in range(n):
        q = queries[i % len(queries)]
        t = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t)
        if i + 1 >= min_n and time.perf_counter() - start > budget_s:
            break
    return _percentiles(out)


def _time_batched(fn, queries, repeats=2, budget_s=3.0):
    fn(queries[: min(len(queries), 16)])
    best = float("inf")
    for i in range(repeats):
        t = time.perf_counter()
        fn(queries)
        best = min(best, time.perf_counter() - t)
        if best > budget_s:
            break
    return {"qps": float(len(queries) / best), "batch": int(len(queries)), "seconds": best}


# ---------------------------------------------------------------------------- the corpus
def make_corpus(n_items, dim, seed, epochs):
    """Train a 64-d two-tower on the synthetic set, fit the generator, draw the corpus."""
    import numpy as np

    from recsys_tf import data, training
    from recsys_tf.models.two_tower import TwoTower

    t = time.perf_counter()
    ds = data.load("synthetic", None, seed=seed)
    model = TwoTower(ds.feature_set, dim=dim, hidden=[128])
    training.train_retrieval(model, ds, epochs=epochs, verbose=0)
    metrics = training.evaluate_retrieval(model, ds)
    item_emb = training.item_embeddings(model, ds.feature_set, ds.items)
    queries = training.query_embeddings(model, ds.feature_set, ds.retrieval_test)
    train_s = time.perf_counter() - t

    rng = np.random.default_rng(seed)
    cats = ds.items["category"].to_numpy()
    names, counts = np.unique(cats, return_counts=True)
    glob_cov = np.cov(item_emb.T)
    parts = []
    share = counts / counts.sum()
    sizes = rng.multinomial(n_items, share)
    for c, size in zip(names, sizes):
        x = item_emb[cats == c]
        mu = x.mean(0)
        cov = np.cov(x.T) if len(x) > 1 else glob_cov
        lam = min(1.0, dim / max(len(x), 1))          # shrink toward the global covariance
        cov = (1 - lam) * cov + lam * glob_cov + 1e-6 * np.eye(dim)
        chol = np.linalg.cholesky(cov)
        parts.append(mu + rng.standard_normal((size, dim)) @ chol.T)
    corpus = np.concatenate(parts).astype(np.float32)
    corpus = corpus[rng.permutation(len(corpus))]
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    info = {"source": "generator fitted to a trained tower's item embeddings: a 64-d "
                      "TwoTower trained on the synthetic data set (1,000 items, 20 "
                      "categories); per category the mean and covariance of its items' "
                      "embeddings (shrunk toward the global covariance), category shares "
                      "as in the catalogue; vectors L2-normalised",
            "queries": "query-tower embeddings of the synthetic test interactions",
            "n_items": int(n_items), "dim": int(dim), "n_queries_available": int(len(queries)),
            "tower_train_seconds": round(train_s, 1),
            "tower_metrics_on_synthetic": {k: round(float(v), 4) for k, v in metrics.items()},
            "corpus_stats": {"mean_abs_cos_to_centroid": float(np.abs(corpus @ (
                corpus.mean(0) / np.linalg.norm(corpus.mean(0)))).mean())}}
    return corpus, queries.astype(np.float32), model, ds, info


# ---------------------------------------------------------------------------- exact search
def bench_exact(corpus, q_single, q_batch, k, n_single):
    import numpy as np
    import tensorflow_recommenders as tfrs

    from recsys_tf.backend import tf

    rows = []

    n = len(corpus)

    def np_search(q):
        q = np.atleast_2d(q)
        s = q @ corpus.T
        part = np.argpartition(s, n - k, axis=1)[:, n - k:]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        return np.take_along_axis(part, order, 1)

    def np_batched(q):
        return [np_search(q[i:i + 16]) for i in range(0, len(q), 16)]

    rss = _rss_mb()
    rows.append({"method": "numpy brute force (matmul + argpartition)", "family": "exact",
                 "recall_at_10": 1.0, "single": _time_single(np_search, q_single, n_single),
                 "batched": _time_batched(np_batched, q_batch), "build_seconds": 0.0,
                 "index_memory_mb": corpus.nbytes / 2**20, "rss_delta_mb": 0.0})

    t = time.perf_counter()
    table = tf.constant(corpus)

    @tf.function(input_signature=[tf.TensorSpec([None, corpus.shape[1]], tf.float32)])
    def tf_search(q):
        return tf.math.top_k(tf.matmul(q, table, transpose_b=True), k=k)

    tf_search(q_single[:1])
    build = time.perf_counter() - t
    rows.append({"method": "TensorFlow brute force (matmul + top_k)", "family": "exact",
                 "recall_at_10": 1.0,
                 "single": _time_single(lambda q: tf_search(q[None]), q_single, n_single),
                 "batched": _time_batched(
                     lambda q: [tf_search(q[i:i + 64]) for i in range(0, len(q), 64)], q_batch),
                 "build_seconds": build, "index_memory_mb": corpus.nbytes / 2**20,
                 "rss_delta_mb": _rss_mb() - rss})

    rss = _rss_mb()
    t = time.perf_counter()
    bf = tfrs.layers.factorized_top_k.BruteForce(k=k)
    bf.index(tf.constant(corpus))
    bf(tf.constant(q_single[:1]))
    build = time.perf_counter() - t
    rows.append({"method": "TFRS BruteForce layer", "family": "exact", "recall_at_10": 1.0,
                 "single": _time_single(lambda q: bf(tf.constant(q[None])), q_single, n_single),
                 "batched": _time_batched(
                     lambda q: [bf(tf.constant(q[i:i + 64])) for i in range(0, len(q), 64)],
                     q_batch),
                 "build_seconds": build, "index_memory_mb": corpus.nbytes / 2**20,
                 "rss_delta_mb": _rss_mb() - rss})
    del bf, table
    return rows


# ---------------------------------------------------------------------------- ScaNN
def bench_scann(corpus, q_tune, q_eval, exact_eval, k, target, n_single, num_leaves, quick):
    import numpy as np

    from recsys_tf import scann_index as si

    settings = si.ScannSettings(num_leaves=num_leaves, leaves_to_search=max(1, num_leaves // 20),
                                dims_per_block=2, reorder=400, tuned_k=k)
    rss = _rss_mb()
    t = time.perf_counter()
    searcher = si.build(corpus, settings, k=k, backend="numpy")
    build = time.perf_counter() - t
    rss_delta = _rss_mb() - rss
    with tempfile.TemporaryDirectory() as tmp:   # the index's size: its serialised assets
        searcher.serialize(tmp)
        mem = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 2**20

    print(f"  built in {build:.1f} s", flush=True)
    t = time.perf_counter()
    leaves_grid = sorted({max(1, int(round(num_leaves * f)))
                          for f in (0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                                    0.15, 0.2)})
    chosen, rec_tune, met, grid = si.tune(searcher, corpus, q_tune, settings, k=k,
                                          target_recall=target, margin=0.01,
                                          leaves_grid=leaves_grid,
                                          reorder_grid=(20, 50, 100, 200, 400))
    tune_s = time.perf_counter() - t
    print(f"  tuned in {tune_s:.1f} s: leaves {chosen.leaves_to_search}, reorder "
          f"{chosen.reorder}", flush=True)

    sweep_leaves = [l for l in leaves_grid if l <= max(leaves_grid) // 2 or quick]
    points = {(l, r) for l in sweep_leaves for r in ((100,) if quick else (50, 200))}
    points.add((chosen.leaves_to_search, chosen.reorder))
    rows = []
    for leaves, reorder in sorted(set(points)):
        s = si.ScannSettings(**{**settings.to_dict(), "leaves_to_search": leaves,
                                "reorder": reorder})
        pre = s.pre_reorder(k)
        idx, _ = si.search(searcher, q_eval, k, s)
        rec = si.recall_vs_exact(idx, exact_eval, k)

        def single(q, leaves=leaves, pre=pre):
            return searcher.search(q, final_num_neighbors=k, pre_reorder_num_neighbors=pre,
                                   leaves_to_search=leaves)

        def batched(q, leaves=leaves, pre=pre):
            return searcher.search_batched_parallel(q, final_num_neighbors=k,
                                                    pre_reorder_num_neighbors=pre,
                                                    leaves_to_search=leaves)

        rows.append({"method": f"ScaNN leaves {leaves}/{num_leaves}, AH 2 dims/block, "
                               f"reorder {reorder}",
                     "family": "scann", "tuned_choice": (leaves, reorder) ==
                     (chosen.leaves_to_search, chosen.reorder),
                     "settings": s.to_dict(), "recall_at_10": rec,
                     "single": _time_single(single, q_eval, n_single, budget_s=2.0),
                     "batched": _time_batched(batched, q_eval, budget_s=2.0),
                     "build_seconds": build, "index_memory_mb": mem,
                     "rss_delta_mb": rss_delta})
    tuning = {"target_recall_at_10": target, "margin": 0.01, "chosen": chosen.to_dict(),
              "recall_at_10_tuning_queries": rec_tune, "met_target": met,
              "n_tuning_queries": int(len(q_tune)), "tune_seconds": round(tune_s, 2),
              "grid_points": len(grid)}
    return rows, tuning, chosen, searcher


# ---------------------------------------------------------------------------- served
def bench_served(corpus, model, ds, chosen, k, n_single, workdir):
    """Export both flavours over the corpus, serve them with the bundled server (a
    subprocess), time single Predict requests of real query features."""
    import numpy as np

    from recsys_tf import export, scann_index as si
    from recsys_tf.backend import tf
    from recsys_tf.client.grpc_client import ServingClient

    ids = np.arange(len(corpus), dtype=np.int64)
    spec = model.query_signature()
    root = os.path.join(workdir, "saved_models")
    out = {}
    t = time.perf_counter()
    bf = export.RetrievalIndex(model.query_tower, spec, ids, corpus)
    tf.saved_model.save(bf, os.path.join(root, "two_tower", "1"), signatures=bf.signatures())
    out["brute_force_export_seconds"] = round(time.perf_counter() - t, 1)
    del bf
    t = time.perf_counter()
    searcher = si.build(corpus, chosen, k=k, backend="tf")
    sc = export.ScannRetrievalIndex(model.query_tower, spec, ids, searcher, chosen, index_k=100)
    tf.saved_model.save(sc, os.path.join(root, "two_tower_scann", "1"), signatures=sc.signatures(),
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
    out["scann_export_seconds"] = round(time.perf_counter() - t, 1)
    del sc, searcher

    with start_server(root, timeout=240) as server:
        client = ServingClient(server.target, timeout=30)
        names = list(spec)
        rows = ds.retrieval_test.head(200)
        x = ds.feature_set.arrays(rows, names)
        for name in ("two_tower", "two_tower_scann"):     # first calls, untimed
            client.predict(name, {**{n: v[:1] for n, v in x.items()}, "k": np.int32(k)})
        q_rows = [{n: v[i:i + 1] for n, v in x.items()} for i in range(len(rows))]
        got = {}
        for name in ("two_tower", "two_tower_scann"):
            lat = []
            for i in range(n_single):
                req = {**q_rows[i % len(q_rows)], "k": np.int32(k)}
                t = time.perf_counter()
                r = client.predict(name, req)
                lat.append(time.perf_counter() - t)
                if i < len(q_rows):
                    got.setdefault(name, []).append(r["item_ids"][0])
            out[name] = _percentiles(lat)
        a, b = np.array(got["two_tower_scann"]), np.array(got["two_tower"])
        out["scann_recall_at_10_vs_served_brute_force"] = float(np.mean(
            [len(set(u) & set(v)) / k for u, v in zip(a, b)]))
        out["speedup_p50"] = out["two_tower"]["p50_ms"] / out["two_tower_scann"]["p50_ms"]
        out["note"] = ("bundled gRPC server in a subprocess on the same 2 cores; latency "
                       "includes the query tower, TensorProto encoding and gRPC")
    return out


# ---------------------------------------------------------------------------- plot
def plot(result, path):
    plt = pyplot()
    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    sc = [r for r in rows if r["family"] == "scann"]
    ex = [r for r in rows if r["family"] == "exact"]
    for ax, key, label in ((axes[0], lambda r: r["batched"]["qps"], "batched queries / s"),
                           (axes[1], lambda r: 1e3 / r["single"]["p50_ms"],
                            "single queries / s (1 / p50 latency)")):
        for reorder in sorted({r["settings"]["reorder"] for r in sc}):
            pts = sorted([(r["recall_at_10"], key(r)) for r in sc
                          if r["settings"]["reorder"] == reorder])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"ScaNN reorder {reorder}")
        for r in sc:
            if r.get("tuned_choice"):
                ax.plot(r["recall_at_10"], key(r), "k*", markersize=14, label="ScaNN auto-tuned")
        for r in ex:
            ax.plot(1.0, key(r), "s", label=r["method"])
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact search")
        ax.set_ylabel(label)
        ax.axvline(0.95, color="grey", lw=0.8, ls="--")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{result['corpus']['n_items']:,} items x {result['corpus']['dim']}-d, "
                 f"{result['machine']['cores_used']} cores ({result['machine']['note']})",
                 fontsize=9)
    save_figure(fig, path)


# ---------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-items", type=int, default=None, help="default 1,000,000 (100,000 quick)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--num-leaves", type=int, default=None, help="default 2 sqrt(n)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="100k items, fewer timings, no served part")
    p.add_argument("--no-served", action="store_true", help="skip the served SavedModels")
    p.add_argument("--out", default=os.path.join(HERE, "results", "retrieval.json"))
    p.add_argument("--plot", default=None, help="default: --out with .png")
    args = p.parse_args(argv)

    _limit_threads(args.cores)
    import recsys_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
    import numpy as np

    from recsys_tf import scann_index as si
    from recsys_tf.backend import tf

    tf.config.threading.set_intra_op_parallelism_threads(args.cores)
    tf.config.threading.set_inter_op_parallelism_threads(args.cores)
    si.require_scann()
    machine = machine_info(
        cores_used=args.cores,
        note="shared machine: other jobs may run concurrently; every figure here comes from "
             "this one run, so ratios are side by side, but absolute times are noisy")
    n = args.n_items or (100_000 if args.quick else 1_000_000)
    n_single_bf = 50 if args.quick else 200
    n_single_ann = 500 if args.quick else 1000
    t0 = time.perf_counter()
    print(f"corpus: training the tower and drawing {n:,} x {args.dim} ...", flush=True)
    corpus, queries, model, ds, corpus_info = make_corpus(n, args.dim, args.seed,
                                                          epochs=2 if args.quick else 3)
    rng = np.random.default_rng(args.seed)
    queries = queries[rng.permutation(len(queries))]
    q_tune, q_eval = queries[:1000], queries[1000:2000]
    print(f"  {time.perf_counter() - t0:.0f} s; exact ground truth ...", flush=True)
    t = time.perf_counter()
    exact_eval, _ = si.exact_top_k(corpus, q_eval, args.k)
    exact_s = time.perf_counter() - t
    print(f"  {exact_s:.1f} s", flush=True)

    print("exact search: numpy, TensorFlow, TFRS BruteForce ...", flush=True)
    rows = bench_exact(corpus, q_eval, q_eval[:512], args.k, n_single_bf)
    print(f"  {time.perf_counter() - t0:.0f} s so far", flush=True)
    num_leaves = args.num_leaves or int(round(2 * np.sqrt(n)))
    print(f"ScaNN: build ({num_leaves} leaves), tune, sweep ...", flush=True)
    sc_rows, tuning, chosen, _ = bench_scann(corpus, q_tune, q_eval, exact_eval, args.k,
                                             args.target_recall, n_single_ann, num_leaves,
                                             args.quick)
    rows += sc_rows
    print(f"  {time.perf_counter() - t0:.0f} s so far", flush=True)

    bf_p50 = {r["method"]: r["single"]["p50_ms"] for r in rows if r["family"] == "exact"}
    bf_qps = {r["method"]: r["batched"]["qps"] for r in rows if r["family"] == "exact"}
    fastest_bf = min(bf_p50.values())
    for r in rows:
        r["speedup_single_vs_fastest_brute_force"] = fastest_bf / r["single"]["p50_ms"]
        r["speedup_single_vs_numpy_brute_force"] = \
            bf_p50["numpy brute force (matmul + argpartition)"] / r["single"]["p50_ms"]
        r["speedup_batched_vs_fastest_brute_force"] = r["batched"]["qps"] / max(bf_qps.values())
    tuned = next(r for r in rows if r.get("tuned_choice"))
    ok = [r for r in sc_rows if r["recall_at_10"] >= args.target_recall]
    best = max(ok, key=lambda r: r["speedup_single_vs_fastest_brute_force"]) if ok else None
    summary = {
        "target": f"recall@10 >= {args.target_recall} at >= 100x the single-query speed of "
                  "brute force",
        "tuned_recall_at_10": tuned["recall_at_10"],
        "tuned_speedup_single_vs_fastest_brute_force":
            tuned["speedup_single_vs_fastest_brute_force"],
        "tuned_meets_target": bool(tuned["recall_at_10"] >= args.target_recall and
                                   tuned["speedup_single_vs_fastest_brute_force"] >= 100),
        "best_setting_at_target_recall": None if best is None else {
            "method": best["method"], "recall_at_10": best["recall_at_10"],
            "speedup_single_vs_fastest_brute_force":
                best["speedup_single_vs_fastest_brute_force"]},
    }
    result = {
        "benchmark": "retrieval", "k": args.k, "quick": bool(args.quick),
        "corpus": corpus_info | {"n_items": n},
        "queries": {"tuning": int(len(q_tune)), "evaluation": int(len(q_eval)),
                    "single_query_timings_brute_force": n_single_bf,
                    "single_query_timings_scann": n_single_ann,
                    "batched_brute_force_batch": 512, "batched_scann_batch": int(len(q_eval))},
        "exact_ground_truth_seconds": round(exact_s, 2),
        "machine": machine,
        "scann_tuning": tuning, "rows": rows, "summary": summary,
    }
    if not (args.quick or args.no_served):
        print("served: exporting both SavedModels over the corpus and serving them ...",
              flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result["served"] = bench_served(corpus, model, ds, chosen, args.k, 300, tmp)
            except Exception as e:  # the core figures above stand on their own
                result["served"] = {"error": f"{type(e).__name__}: {e}"}
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"]["load_average_after"] = load_average()
    write_results(result, args.out, plot, args.plot)

    print(f"\n{'method':<58} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>10} "
          f"{'x bf p50':>8} {'build s':>8} {'mem MB':>7}")
    for r in rows:
        print(f"{r['method'][:58]:<58} {r['recall_at_10']:9.3f} {r['single']['p50_ms']:8.3f} "
              f"{r['single']['p99_ms']:8.3f} {r['batched']['qps']:10.0f} "
              f"{r['speedup_single_vs_fastest_brute_force']:8.1f} {r['build_seconds']:8.1f} "
              f"{r['index_memory_mb']:7.0f}" + ("  <- tuned" if r.get("tuned_choice") else ""))
    if "served" in result:
        print("served:", json.dumps(result["served"], indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out} in {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
