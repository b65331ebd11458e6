"""ScaNN indexes for two-tower retrieval: build, search, and tune to a requested recall.

ScaNN (Guo et al. 2020) answers maximum inner product search in three stages:

    1. partition: k-means tree with ``num_leaves`` leaves; a query scores the leaf centroids
       and searches only the best ``leaves_to_search`` leaves;
    2. score: anisotropic vector quantisation (AH), each block of ``dims_per_block``
       dimensions coded with 16 centres, scored by table look-ups, keeping the best
       ``reorder`` candidates ("pre-reorder neighbours");
    3. reorder: those candidates are re-scored exactly with the float embeddings,
       ``s(q, c) = <q, c>``, and the best ``k`` returned.

Recall against exact search, for queries ``Q`` and ``k``:

    recall@k = 1/|Q| * sum_q |ANN_k(q) ∩ Exact_k(q)| / k

:func:`tune` chooses ``leaves_to_search`` and ``reorder`` for a built index: it measures
recall@k on a tuning sample of queries for every pair of a grid and keeps the cheapest pair
(by a cost model of the work per query, which unlike a timing does not depend on the load of
a shared machine) whose recall reaches the target; the recall of that choice is then
measured again on a separate held-out sample, and that figure is the one to report.

The same code drives ScaNN's numpy searcher (``backend="numpy"``; benchmarks) and its
TensorFlow ops (``backend="tf"``; an index that is saved inside a SavedModel). ScaNN is an
optional dependency: everything here imports it lazily through :func:`require_scann`, which
says how to install it.

Example::

    from recsys_tf import scann_index as si

    result = si.tune_and_build(item_emb, held_out_query_emb, k=10, target_recall=0.95,
                               backend="tf")
    result.settings      # ScannSettings(num_leaves=41, leaves_to_search=6, reorder=40, ...)
    result.recall        # recall@10 vs exact search on the held-out half of the queries
    idx, scores = si.search(result.searcher, query_emb, k=10, settings=result.settings)

Reference: Guo et al., "Accelerating Large-Scale Inference with Anisotropic Vector
Quantization", ICML 2020; https://github.com/google-research/google-research/tree/master/scann
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

INSTALL_HINT = ("ScaNN is not installed or its TensorFlow ops do not load. Install the version "
                "built against this TensorFlow: `pip install scann==1.4.2` (TensorFlow 2.20, "
                "Linux x86-64, Python 3.9-3.12), or `pip install -e .` which pins it.")

SMALL_CORPUS = 256  # below this many items the index scores every item exactly


def require_scann():
    """``(scann_ops, scann_ops_pybind)``; importing them registers ScaNN's TF ops.

    Raises:
      ImportError: with :data:`INSTALL_HINT` when ScaNN is missing or does not load.
    """
    try:
        import scann  # noqa: F401
        from scann.scann_ops.py import scann_ops, scann_ops_pybind
    except Exception as e:  # ImportError, or a NotFoundError from an ABI mismatch
        raise ImportError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from e
    return scann_ops, scann_ops_pybind


def available() -> bool:
    """True when ScaNN imports and its TF ops load."""
    try:
        require_scann()
        return True
    except ImportError:
        return False


@dataclasses.dataclass
class ScannSettings:
    """One ScaNN configuration.

    Attributes:
      num_leaves: leaves of the k-means partitioning tree; 0 = no partitioning.
      leaves_to_search: leaves searched per query (ignored without partitioning).
      dims_per_block: AH quantisation block size; 0 = exact float scoring of every
        searched item (no quantisation, no reorder needed).
      reorder: candidates re-scored exactly after AH scoring ("pre-reorder neighbours")
        for the tuned ``k``; 0 = no reordering. For a larger k the index uses
        ``max(reorder, ceil(reorder / tuned_k * k))``.
      tuned_k: the k the settings were tuned for.
      training_sample_size: rows sampled to train the tree (and the quantiser).
      training_iterations: k-means iterations of the tree.
      anisotropic_threshold: ScaNN's ``anisotropic_quantization_threshold`` (0.2 is its
        recommendation for unit-norm dot-product search).
    """

    num_leaves: int = 0
    leaves_to_search: int = 0
    dims_per_block: int = 2
    reorder: int = 100
    tuned_k: int = 10
    training_sample_size: int = 250_000
    training_iterations: int = 12
    anisotropic_threshold: float = 0.2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScannSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def pre_reorder(self, k: int) -> int:
        """Pre-reorder candidates for a request of ``k`` (-1: ScaNN's default)."""
        if not self.reorder or not self.dims_per_block:
            return -1
        return max(int(self.reorder), int(math.ceil(self.reorder / max(self.tuned_k, 1) * k)))

    def leaves(self) -> int:
        return int(self.leaves_to_search) if self.num_leaves else -1


def default_settings(n_items: int, k: int = 10) -> ScannSettings:
    """A starting point by corpus size: exact scoring below :data:`SMALL_CORPUS` items,
    else ``round(sqrt(n))`` leaves (``2 sqrt(n)`` from 100k items), AH with 2 dims/block and
    reordering; :func:`tune` then picks leaves to search and reorder size."""
    n = int(n_items)
    if n < SMALL_CORPUS:
        return ScannSettings(num_leaves=0, leaves_to_search=0, dims_per_block=0, reorder=0,
                             tuned_k=k)
    leaves = int(round(math.sqrt(n) * (2 if n >= 100_000 else 1)))
    leaves = max(2, min(leaves, n // 16))
    return ScannSettings(num_leaves=leaves, leaves_to_search=max(1, leaves // 10),
                         dims_per_block=2, reorder=max(20 * k, 200), tuned_k=k)


def _configure(builder, n, s: ScannSettings, reorder_cap=None):
    if s.num_leaves:
        builder = builder.tree(num_leaves=int(s.num_leaves),
                               num_leaves_to_search=max(1, int(s.leaves_to_search)),
                               training_sample_size=int(min(n, s.training_sample_size)),
                               training_iterations=int(s.training_iterations))
    if s.dims_per_block:
        builder = builder.score_ah(int(s.dims_per_block),
                                   anisotropic_quantization_threshold=s.anisotropic_threshold)
        reorder = int(reorder_cap or s.reorder)
        if reorder:
            builder = builder.reorder(reorder)
    else:
        builder = builder.score_brute_force()
    return builder


def build(embeddings, settings: ScannSettings, k: int = 10, backend: str = "numpy",
          reorder_cap: int | None = None):
    """Builds a dot-product ScaNN searcher over ``embeddings [n, d]``.

    Args:
      embeddings: float32 item embeddings, one row per item.
      settings: the configuration (``leaves_to_search``/``reorder`` are defaults that
        :func:`search` overrides per query).
      k: the searcher's default number of neighbours.
      backend: ``"numpy"`` (ScaNN's pybind searcher) or ``"tf"`` (ScaNN's TF ops; the
        searcher can be serialised into a SavedModel with ``serialize_to_module()``).
      reorder_cap: reorder size set at build time (default ``settings.reorder``).
    """
    scann_ops, scann_pybind = require_scann()
    db = np.ascontiguousarray(embeddings, dtype=np.float32)
    if db.ndim != 2 or len(db) == 0:
        raise ValueError(f"embeddings must be a non-empty [n, d] array, got shape {db.shape}")
    if settings.num_leaves and settings.num_leaves > len(db):
        raise ValueError(f"num_leaves={settings.num_leaves} exceeds the {len(db)} items")
    if backend == "numpy":
        b = scann_pybind.builder(db, int(k), "dot_product")
    elif backend == "tf":
        b = scann_ops.builder(db, int(k), "dot_product")
    else:
        raise ValueError(f"backend={backend!r}, expected 'numpy' or 'tf'")
    return _configure(b, len(db), settings, reorder_cap).build()


def search(searcher, queries, k, settings: ScannSettings, leaves_to_search=None,
           reorder=None):
    """``(indices [b, k] int, scores [b, k] float)`` as numpy, from either backend.

    Rows ScaNN cannot fill (too few items in the searched leaves) come back as index -1 and
    score -inf.
    """
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    leaves = settings.leaves() if leaves_to_search is None else int(leaves_to_search)
    if reorder is None:
        pre = settings.pre_reorder(k)
    else:
        pre = max(int(reorder), int(k)) if settings.dims_per_block and reorder else -1
    if hasattr(searcher, "searcher_handle"):  # TF ops
        r = searcher.search_batched(q, final_num_neighbors=int(k), pre_reorder_num_neighbors=pre,
                                    leaves_to_search=leaves)
        idx, dist = r.indices.numpy(), r.distances.numpy()
    else:
        idx, dist = searcher.search_batched(q, final_num_neighbors=int(k),
                                            pre_reorder_num_neighbors=pre,
                                            leaves_to_search=leaves)
    idx, dist = np.asarray(idx, np.int64), np.asarray(dist, np.float32)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.nan)
    bad = np.isnan(dist)
    idx[bad], dist[bad] = -1, -np.inf
    return idx, dist


def exact_top_k(embeddings, queries, k, max_elements=16_000_000):
    """Exact top-k by inner product: ``(indices [b, k], scores [b, k])``, best first
    (ties: lower index first). Queries go in chunks of at most ``max_elements`` scores."""
    db = np.asarray(embeddings, np.float32)
    q = np.atleast_2d(np.asarray(queries, np.float32))
    n = len(db)
    k = min(int(k), n)
    chunk = max(1, int(max_elements) // max(n, 1))
    out_i, out_s = [], []
    for s in range(0, len(q), chunk):
        scores = q[s:s + chunk] @ db.T
        part = np.argpartition(scores, n - k, axis=1)[:, n - k:] if k < n else \
            np.broadcast_to(np.arange(n), scores.shape)
        part_s = np.take_along_axis(scores, part, 1)
        order = np.lexsort((part, -part_s), axis=1)
        out_i.append(np.take_along_axis(part, order, 1))
        out_s.append(np.take_along_axis(part_s, order, 1))
        del scores
    return np.concatenate(out_i), np.concatenate(out_s)


def recall_vs_exact(approx, exact, k=None):
    """Mean ``|approx_k ∩ exact_k| / k`` over rows (``k`` defaults to ``exact.shape[1]``)."""
    exact = np.asarray(exact)
    k = exact.shape[1] if k is None else int(k)
    approx = np.asarray(approx)[:, :k]
    hits = [len(set(a.tolist()) & set(e[:k].tolist())) for a, e in zip(approx, exact)]
    return float(np.mean(hits) / k) if hits else float("nan")


def cost_per_query(settings: ScannSettings, n_items: int, dim: int, leaves_to_search=None,
                   reorder=None) -> float:
    """Work per query in multiply-adds (a model used to compare settings, not a timing).

    ``L d`` (centroids) ``+ n (l / L) (d / b)`` (AH look-ups) ``+ r d`` (exact reorder), or
    ``n (l / L) d`` for exact scoring.
    """
    L = settings.num_leaves
    l = settings.leaves_to_search if leaves_to_search is None else leaves_to_search
    r = settings.reorder if reorder is None else reorder
    frac = (l / L) if L else 1.0
    scanned = n_items * frac
    if settings.dims_per_block:
        return float(L * dim + scanned * dim / settings.dims_per_block + (r or 0) * dim)
    return float(L * dim + scanned * dim)


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune_and_build` chose and measured.

    Attributes:
      searcher: the built searcher (numpy or TF backend).
      settings: the chosen settings (``leaves_to_search`` and ``reorder`` tuned).
      k: the k recall was measured at.
      target_recall: the requested recall@k.
      recall: recall@k against exact search on the held-out queries (report this one).
      recall_tune: recall@k on the tuning queries the choice was made on.
      met_target: whether ``recall_tune`` reached the target (else the best found is kept).
      n_tune_queries, n_holdout_queries: sample sizes.
      build_seconds, tune_seconds: wall time of the build and of the grid search.
      grid: every tried pair with its tuning recall and modelled cost.
    """

    searcher: object
    settings: ScannSettings
    k: int
    target_recall: float
    recall: float
    recall_tune: float
    met_target: bool
    n_tune_queries: int
    n_holdout_queries: int
    build_seconds: float
    tune_seconds: float
    grid: list

    def summary(self) -> dict:
        """A JSON-able dict for a model card (no searcher)."""
        return {"settings": self.settings.to_dict(), "k": self.k,
                "target_recall": self.target_recall, f"recall_at_{self.k}": self.recall,
                f"recall_at_{self.k}_tune": self.recall_tune, "met_target": self.met_target,
                "n_tune_queries": self.n_tune_queries,
                "n_holdout_queries": self.n_holdout_queries,
                "build_seconds": round(self.build_seconds, 3),
                "tune_seconds": round(self.tune_seconds, 3),
                "measured_against": "exact inner-product search over the same embeddings",
                "grid": self.grid}


def _ladder(hi, fractions=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)):
    return sorted({max(1, min(hi, int(round(hi * f)))) for f in fractions})


def tune(searcher, embeddings, queries, settings: ScannSettings, k=10, target_recall=0.95,
         leaves_grid=None, reorder_grid=None, exact=None, margin=0.0):
    """Grid search over ``(leaves_to_search, reorder)`` on a built searcher.

    Returns ``(best_settings, recall_on_queries, met_target, grid)``: the cheapest pair (by
    :func:`cost_per_query`) whose recall@k reaches ``min(1, target_recall + margin)``, else
    the pair with the best recall.
    """
    n, d = np.shape(embeddings)
    if exact is None:
        exact, _ = exact_top_k(embeddings, queries, k)
    leaves_grid = ([0] if not settings.num_leaves else
                   list(leaves_grid or _ladder(settings.num_leaves)))
    if settings.dims_per_block and settings.reorder:
        reorder_grid = sorted({r for r in (reorder_grid or
                                           (k, 2 * k, 3 * k, 5 * k, 10 * k, 20 * k, 40 * k))
                               if k <= r <= max(settings.reorder, k)} | {max(settings.reorder, k)})
    else:
        reorder_grid = [0]
    grid = []
    for leaves in leaves_grid:
        for r in reorder_grid:
            idx, _ = search(searcher, queries, k, settings,
                            leaves_to_search=leaves if settings.num_leaves else None, reorder=r)
            rec = recall_vs_exact(idx, exact, k)
            grid.append({"leaves_to_search": int(leaves), "reorder": int(r), "recall": rec,
                         "cost": cost_per_query(settings, n, d, leaves, r)})
    need = min(1.0, target_recall + margin)
    ok = [g for g in grid if g["recall"] >= need]
    best = min(ok, key=lambda g: (g["cost"], -g["recall"])) if ok else \
        max(grid, key=lambda g: (g["recall"], -g["cost"]))
    chosen = dataclasses.replace(settings, leaves_to_search=best["leaves_to_search"],
                                 reorder=best["reorder"], tuned_k=int(k))
    return chosen, best["recall"], bool(ok), grid


def tune_and_build(embeddings, queries, k=10, target_recall=0.95, settings=None,
                   backend="numpy", holdout_fraction=0.5, max_queries=2000, seed=0,
                   leaves_grid=None, reorder_grid=None, margin=0.01):
    """Builds a ScaNN index over ``embeddings`` and tunes it to ``target_recall``@``k``.

    The queries (e.g. query-tower embeddings of held-out interactions) are sampled
    (``max_queries``) and split: the first part chooses the settings, the held-out part
    (``holdout_fraction``) measures the recall that is reported.

    Args:
      embeddings: ``[n, d]`` float32 item embeddings.
      queries: ``[m, d]`` query embeddings, not used for training the towers.
      k: recall@k is tuned and reported at this k.
      target_recall: requested recall@k against exact search (e.g. 0.95).
      settings: the partitioning/quantisation to build (default :func:`default_settings`).
      backend: ``"numpy"`` or ``"tf"`` (see :func:`build`).
      holdout_fraction: share of the sampled queries kept out of tuning.
      max_queries: at most this many queries are used (sampled with ``seed``).
      leaves_grid, reorder_grid: override the grids searched.
      margin: the tuning queries must reach ``target_recall + margin``, so that the held-out
        recall (a fresh sample) lands at or above the target more often than not.

    Returns:
      A :class:`TuneResult`.
    """
    emb = np.ascontiguousarray(embeddings, np.float32)
    n = len(emb)
    k = int(min(k, n))
    q = np.asarray(queries, np.float32)
    if len(q) == 0:
        raise ValueError("tuning needs at least one query embedding")
    rng = np.random.default_rng(seed)
    q = q[rng.permutation(len(q))[:max_queries]]
    n_hold = int(round(len(q) * holdout_fraction)) if len(q) > 1 else 0
    q_hold, q_tune = (q[:n_hold], q[n_hold:]) if n_hold else (q, q)
    settings = settings or default_settings(n, k)
    t = time.perf_counter()
    searcher = build(emb, settings, k=k, backend=backend)
    build_seconds = time.perf_counter() - t
    t = time.perf_counter()
    chosen, rec_tune, met, grid = tune(searcher, emb, q_tune, settings, k, target_recall,
                                       leaves_grid, reorder_grid, margin=margin)
    tune_seconds = time.perf_counter() - t
    exact_hold, _ = exact_top_k(emb, q_hold, k)
    idx, _ = search(searcher, q_hold, k, chosen)
    rec = recall_vs_exact(idx, exact_hold, k)
    return TuneResult(searcher=searcher, settings=chosen, k=k, target_recall=float(target_recall),
                      recall=rec, recall_tune=rec_tune, met_target=met,
                      n_tune_queries=int(len(q_tune)), n_holdout_queries=int(len(q_hold)),
                      build_seconds=build_seconds, tune_seconds=tune_seconds, grid=grid)
