"""The only writer of SavedModels.

Layout, exactly as TensorFlow Serving expects::

    <export_root>/<name>/<version>/saved_model.pb
                                  variables/
                                  assets.extra/tf_serving_warmup_requests
                                  assets.extra/model_card.json
                                  assets.extra/items.jsonl, users.jsonl, item_embeddings.npy
                                                             (retrieval models: the client's
                                                              item table and user table)

Versions are integers; a new export takes the next one. Rankers export ``serving_default``:
raw features (input names = FeatureSet names) -> ``probability``, and ``one_user``: the same
with the user and context features given once (one row) for all the candidates' rows, which
the signature repeats in-graph (see :func:`export_ranker`), and ``examples``: serialized
``tf.Example``s -> ``outputs``, a regression signature TF Serving's Regress API serves.
Retrieval models export
``serving_default``: query features + ``k`` -> ``item_ids``, ``scores`` (brute force, stock ops
only) and ``query_embedding``: query features -> ``embedding``; the ScaNN flavour
(:func:`export_scann_retrieval`, ``<export_root>/two_tower_scann/<version>``) has the same
signatures, searches a ScaNN index saved inside the SavedModel, and needs ScaNN's ops to load.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil

import numpy as np

from recsys_tf.backend import tf
from recsys_tf.wire.contract import (
    ASSETS_EXTRA,
    DEFAULT_SIGNATURE,
    EXAMPLES_INPUT,
    EXAMPLES_SIGNATURE,
    ITEM_EMBEDDINGS_FILE,
    ITEMS_FILE,
    MODEL_CARD_FILE,
    ONE_USER_SIGNATURE,
    QUERY_SIGNATURE,
    REGRESS_METHOD,
    REGRESSION_OUTPUT,
    USERS_FILE,
    WARMUP_FILE,
)

RANKER_SIGNATURE = RETRIEVAL_SIGNATURE = DEFAULT_SIGNATURE


def versions(export_root, name):
    """Integer versions present under ``<export_root>/<name>``, sorted."""
    base = os.path.join(export_root, name)
    if not os.path.isdir(base):
        return []
    return sorted(int(d) for d in os.listdir(base) if d.isdigit())


def next_version(export_root, name):
    v = versions(export_root, name)
    return (v[-1] + 1) if v else 1


def _target(export_root, name, version):
    version = next_version(export_root, name) if version is None else int(version)
    path = os.path.join(export_root, name, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists already; versions are never overwritten "
                              f"(next free version: {next_version(export_root, name)})")
    return path, version


@contextlib.contextmanager
def _staged(path):
    """Writes a version under a hidden temporary name and renames it into place when complete,
    so a server polling the directory never loads a half-written version."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def write_model_card(path, card):
    extra = os.path.join(path, ASSETS_EXTRA)
    os.makedirs(extra, exist_ok=True)
    card = dict(card)
    card.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat())
    card.setdefault("tensorflow", tf.__version__)
    card.setdefault("python", platform.python_version())
    from recsys_tf import __version__

    card.setdefault("recsys_tf", __version__)
    with open(os.path.join(extra, MODEL_CARD_FILE), "w") as f:
        json.dump(_jsonable(card), f, indent=2)


def read_model_card(path):
    with open(os.path.join(path, ASSETS_EXTRA, MODEL_CARD_FILE)) as f:
        return json.load(f)


def write_warmup(path, model_name, inputs, signature=DEFAULT_SIGNATURE, n=3, batch_sizes=()):
    """``assets.extra/tf_serving_warmup_requests``: PredictionLog records TF Serving replays
    at load time (and the bundled server does too): ``n`` one-row requests, then one request
    of each of ``batch_sizes`` rows (the sample rows repeated). A model's first run at a batch
    size it has not run before is slow (see serving/README.md), so the sizes a batching server
    will run at - its ``allowed_batch_sizes``, or its ``max_batch_size`` - are best paid for
    here; each must be at most the server's ``max_batch_size``, or TF Serving fails the load."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    sizes = [int(b) for b in batch_sizes]
    if any(b < 1 for b in sizes):
        raise ValueError(f"warmup batch sizes must be positive, got {list(batch_sizes)}")
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    extra = os.path.join(path, ASSETS_EXTRA)
    os.makedirs(extra, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as w:
        for rows in [np.array([i]) for i in range(n)] + [np.arange(b) for b in sizes]:
            req = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for k, v in arrays.items():
                part = v if v.ndim == 0 else v[rows % len(v)]
                req.inputs[k].CopyFrom(tf.make_tensor_proto(part))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req))
            w.write(log.SerializeToString())


def _signatures_summary(fns):
    out = {}
    for name, fn in fns.items():
        ins = fn.structured_input_signature[1]
        out[name] = {"inputs": {k: {"dtype": s.dtype.name, "shape": s.shape.as_list()}
                                for k, s in ins.items()},
                     "outputs": {k: {"dtype": s.dtype.name, "shape": s.shape.as_list()}
                                 for k, s in fn.structured_outputs.items()}}
    return out


def export_ranker(model, export_root, name, card=None, warmup_inputs=None, version=None,
                  warmup_batch_sizes=()):
    """Writes a ranker as ``<export_root>/<name>/<version>``; returns that path.

    ``serving_default``: the model's raw features -> ``{"probability": [batch]}``.
    ``one_user`` (when the model has both item features and user or context features): the
    same inputs and output, but the user and context features are one row ``[1, ...]``
    that stands for every candidate row (:func:`one_user_signature`), so a request scoring
    500 candidates for one user carries the user's features once instead of 500 times.
    ``examples``: a ``[batch]`` string tensor ``inputs`` of serialized ``tf.Example``s (the
    features as :mod:`recsys_tf.examples` lays them out) -> ``{"outputs": [batch]}``, the
    same probability as ``serving_default``; its method name is TF Serving's
    ``tensorflow/serving/regress`` (:func:`examples_signature`), so TF Serving's Regress
    (and MultiInference) serve it.
    ``warmup_inputs`` (sample rows by feature name) become warmup records: three one-row
    requests and one of each of ``warmup_batch_sizes`` rows (:func:`write_warmup`).
    """
    path, version = _target(export_root, name, version)

    @tf.function
    def serve(**inputs):
        return {model.output_name: model(inputs, training=False)}

    specs = model.input_signature()
    fns = {RANKER_SIGNATURE: serve.get_concrete_function(**specs)}
    one_user = one_user_signature(model, specs)
    if one_user is not None:
        fns[ONE_USER_SIGNATURE] = one_user
    fns[EXAMPLES_SIGNATURE] = examples_signature(model, specs)
    final = path
    with _staged(final) as path:
        tf.saved_model.save(model, path, signatures=fns)
        set_method_names(path, {EXAMPLES_SIGNATURE: REGRESS_METHOD})
        _ranker_extras(model, path, name, version, fns, card, warmup_inputs,
                       warmup_batch_sizes)
    return final


def examples_signature(model, specs):
    """The ranker ``model`` on serialized ``tf.Example``s, as a concrete function.

    Input ``inputs``: ``[batch]`` strings, each a ``tf.Example`` holding the features of
    ``specs`` (parsed by :func:`recsys_tf.examples.parse_examples`); output ``outputs``: the
    probability ``[batch]``, as ``serving_default`` answers on the same rows. These are the
    input and output keys TF Serving's Regress API requires.
    """
    from recsys_tf.examples import parse_examples

    fs, names = model.feature_set, list(specs)

    @tf.function
    def examples(inputs):
        parsed = parse_examples(fs, names, inputs)
        return {REGRESSION_OUTPUT: model(parsed, training=False)}

    return examples.get_concrete_function(
        **{EXAMPLES_INPUT: tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)})


def set_method_names(path, methods):
    """Set the ``method_name`` of signatures of the SavedModel at ``path`` (``{signature:
    method}``) and rewrite its fingerprint.

    ``tf.saved_model.save`` gives every signature TF Serving's Predict method name; Classify
    and Regress signatures need theirs (TF Serving checks it under
    ``--enable_signature_method_name_check``). The method name is metadata only: the
    SavedModel reloads the same with ``tf.saved_model.load`` and with TF1's
    ``tf.compat.v1.saved_model.loader.load``.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(path, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved.ParseFromString(f.read())
    for meta_graph in saved.meta_graphs:
        for name, method in methods.items():
            if name not in meta_graph.signature_def:
                raise KeyError(f"signature {name!r} not in {path}; signatures are "
                               f"{sorted(meta_graph.signature_def)}")
            meta_graph.signature_def[name].method_name = method
    with open(pb, "wb") as f:
        f.write(saved.SerializeToString())
    if os.path.exists(os.path.join(path, "fingerprint.pb")):
        # the fingerprint holds a checksum of saved_model.pb: write it anew (TF's own writer)
        from tensorflow.python.saved_model import fingerprinting_utils

        fingerprinting_utils.write_fingerprint(path)


def one_user_signature(model, specs):
    """The ranker ``model`` scoring one user's candidates, as a concrete function; or None.

    The inputs are ``specs`` (the raw features) with the batch dimension of every feature
    whose role is not ``"item"`` fixed at 1: that row stands for every row of the item
    features (``n`` = rows of the first item input), and the model's
    ``one_user_probability`` answers what the model answers with the user's row repeated
    ``n`` times, doing the user's part once where it can (lookups; DIEN's interest extractor).
    None when the inputs hold no item feature, or only item features.
    TF Serving's batching refuses requests whose inputs differ in their first dimension, so
    this signature is for servers without ``--enable_batching``; the client falls back to
    ``serving_default`` when it is refused.
    """
    fs = model.feature_set
    items = [n for n in specs if fs[n].role == "item"]
    once = [n for n in specs if n not in items]
    if not items or not once:
        return None
    one = {n: tf.TensorSpec([1] + s.shape.as_list()[1:], s.dtype, name=n) if n in once else s
           for n, s in specs.items()}

    @tf.function
    def one_user(**inputs):
        rows = tf.shape(inputs[items[0]])[0]
        return {model.output_name: model.one_user_probability(inputs, rows, once)}

    return one_user.get_concrete_function(**one)


def _ranker_extras(model, path, name, version, fns, card, warmup_inputs,
                   warmup_batch_sizes=()):
    full = {"name": name, "version": version, "kind": "ranker",
            "model": type(model).__name__, "config": {k: v for k, v in model.get_config().items()
                                                      if k != "feature_set"},
            "features": model.feature_set.to_dict(), "signatures": _signatures_summary(fns)}
    full.update(card or {})
    write_model_card(path, full)
    if warmup_inputs is not None:
        write_warmup(path, name, warmup_inputs, batch_sizes=warmup_batch_sizes)


def _check_k(k, limit, what):
    """``k`` as int32 after asserting ``1 <= k <= limit`` (InvalidArgumentError otherwise)."""
    k = tf.cast(k, tf.int32)
    with tf.control_dependencies([
            tf.debugging.assert_positive(k, message="k must be >= 1"),
            tf.debugging.assert_less_equal(k, tf.cast(limit, tf.int32),
                                           message=f"k exceeds {what}")]):
        return tf.identity(k)


class RetrievalIndex(tf.Module):
    """Query tower + an exact (brute-force) index over the item embeddings.

    ``serving_default(query features..., k)``: ``q = query_tower(x)``, ``scores = q C^T``,
    ``top_k(scores, k)`` -> ``item_ids [batch, k]``, ``scores [batch, k]``; ``k`` must be in
    ``[1, n_items]`` (InvalidArgumentError "k exceeds the number of items in the index"
    otherwise). ``query_embedding(query features...)`` -> ``embedding [batch, dim]``. Stock
    TensorFlow ops only, so stock TF Serving loads it. Unknown ids fall into the towers' OOV
    rows and an empty (all-padding) history embeds as zeros, so every request gets a top-k.

    Args:
      query_tower: the trained query tower (a Keras layer taking the query features dict).
      query_signature: ``{name: tf.TensorSpec}`` of the query features.
      item_ids: ``[n]`` raw item ids, in the order of ``item_embeddings``.
      item_embeddings: ``[n, dim]`` candidate-tower embeddings.

    Example::

        index = RetrievalIndex(model.query_tower, model.query_signature(), ids, emb)
        tf.saved_model.save(index, path, signatures=index.signatures())

    Reference: TensorFlow Recommenders' ``BruteForce`` top-k layer (the same computation).
    """

    kind = "brute_force"

    def __init__(self, query_tower, query_signature, item_ids, item_embeddings):
        super().__init__()
        self.query_tower = query_tower
        self.query_spec = query_signature
        self.item_ids = tf.Variable(item_ids, trainable=False, name="item_ids")
        self.item_embeddings = tf.Variable(np.asarray(item_embeddings, np.float32),
                                           trainable=False, name="item_embeddings")

    def embed(self, inputs):
        return self.query_tower(inputs, training=False)

    def search(self, inputs, k):
        q = self.embed(inputs)
        n = tf.shape(self.item_embeddings, out_type=tf.int32)[0]
        k = _check_k(k, n, "the number of items in the index")
        scores, idx = tf.math.top_k(tf.matmul(q, self.item_embeddings, transpose_b=True), k=k)
        return {"item_ids": tf.gather(self.item_ids, idx), "scores": scores}

    def signatures(self):
        spec = dict(self.query_spec)
        spec_k = dict(spec, k=tf.TensorSpec([], tf.int32, name="k"))
        search = tf.function(lambda **x: self.search({n: x[n] for n in spec}, x["k"]))
        embed = tf.function(lambda **x: {"embedding": self.embed(x)})
        return {RETRIEVAL_SIGNATURE: search.get_concrete_function(**spec_k),
                QUERY_SIGNATURE: embed.get_concrete_function(**spec)}


class ScannRetrievalIndex(RetrievalIndex):
    """Query tower + a ScaNN index (ScaNN's TF ops) inside the SavedModel.

    Same signatures as :class:`RetrievalIndex`. A request's ``k`` must be in
    ``[1, index_k]`` (InvalidArgumentError "k exceeds the index k" otherwise). Per request:

        q = query_tower(x)
        r = max(reorder, ceil(reorder / tuned_k * k))             (pre-reorder candidates)
        ids, scores = ScaNN(q; leaves_to_search, r, k)           (AH scoring, exact reorder)

    and when ScaNN cannot fill ``k`` results (the searched leaves hold fewer items) the
    request is searched again over all leaves, so the answer always has ``k`` items. With
    reordering the returned scores are exact inner products.

    Loading it needs ScaNN's ops registered (``import scann`` before
    ``tf.saved_model.load``; the bundled server does this); it must be saved with
    ``tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])``.

    Args:
      query_tower, query_signature, item_ids: as :class:`RetrievalIndex`.
      searcher: a ScaNN TF-ops searcher built over the item embeddings
        (:func:`recsys_tf.scann_index.build` with ``backend="tf"``).
      settings: the :class:`~recsys_tf.scann_index.ScannSettings` searched with.
      index_k: the largest k a request may ask for (at most the number of items).

    Example::

        res = scann_index.tune_and_build(emb, q_emb, k=10, target_recall=0.95, backend="tf")
        index = ScannRetrievalIndex(model.query_tower, model.query_signature(), ids,
                                    res.searcher, res.settings, index_k=100)

    Reference: Guo et al., ICML 2020 (ScaNN); TensorFlow Recommenders' ``ScaNN`` layer.
    """

    kind = "scann"

    def __init__(self, query_tower, query_signature, item_ids, searcher, settings, index_k):
        tf.Module.__init__(self)
        from recsys_tf.scann_index import require_scann

        require_scann()
        n = int(np.shape(item_ids)[0])
        if not 1 <= int(index_k) <= n:
            raise ValueError(f"index_k={index_k} must be in [1, {n}] (the number of items)")
        self.query_tower = query_tower
        self.query_spec = query_signature
        self.item_ids = tf.Variable(item_ids, trainable=False, name="item_ids")
        self.scann = searcher.serialize_to_module()
        self.settings = settings
        self.index_k = int(index_k)

    def search(self, inputs, k):
        from scann.scann_ops.py import scann_ops

        s = self.settings
        q = self.embed(inputs)
        k = _check_k(k, self.index_k, f"the index k ({self.index_k}); export the ScaNN "
                     "index with a larger index_k")
        if s.dims_per_block and s.reorder:
            scaled = tf.cast(tf.math.ceil(s.reorder / max(s.tuned_k, 1)
                                          * tf.cast(k, tf.float32)), tf.int32)
            pre = tf.maximum(tf.constant(int(s.reorder), tf.int32), scaled)
        else:
            pre = tf.constant(-1, tf.int32)
        searcher = scann_ops.ScannSearcher(self.scann.recreate_handle())

        def run(leaves):
            r = searcher.search_batched_parallel(q, final_num_neighbors=k,
                                                 pre_reorder_num_neighbors=pre,
                                                 leaves_to_search=tf.constant(leaves, tf.int32))
            return r.indices, r.distances

        idx, dist = run(s.leaves())
        if s.num_leaves:  # a partial search may come back short: search all leaves then
            short = tf.logical_or(tf.shape(idx)[1] < k,
                                  tf.reduce_any(tf.math.is_nan(dist[:, :k])))
            idx, dist = tf.cond(short, lambda: run(int(s.num_leaves)), lambda: (idx, dist))
        idx = tf.ensure_shape(idx[:, :k], [None, None])
        dist = tf.ensure_shape(dist[:, :k], [None, None])
        return {"item_ids": tf.gather(self.item_ids, idx), "scores": dist}


def _query_sample(model, ds, n=2000, seed=0):
    """Query-tower embeddings of up to ``n`` held-out interactions (``retrieval_test``; the
    training interactions when there is no test split)."""
    from recsys_tf.training import query_embeddings

    frame = ds.retrieval_test if len(ds.retrieval_test) else ds.retrieval_train
    if len(frame) > n:
        frame = frame.sample(n, random_state=seed)
    return query_embeddings(model, ds.feature_set, frame)


def export_scann_retrieval(model, ds, export_root, name="two_tower_scann", card=None,
                           version=None, item_embeddings=None, target_recall=0.95,
                           recall_k=10, index_k=None, settings=None, queries=None, seed=0):
    """Writes a two-tower model's ScaNN retrieval SavedModel plus the client's tables.

    The index is tuned automatically (:func:`recsys_tf.scann_index.tune_and_build`):
    ``leaves_to_search`` and the reorder size are chosen so that recall@``recall_k`` against
    exact search reaches ``target_recall`` on a sample of held-out queries (query-tower
    embeddings of ``ds.retrieval_test``), and the recall measured on the other half of the
    sample goes into the model card (``scann``), beside the chosen settings. ``assets.extra``
    holds the same item and user tables as :func:`export_retrieval`, so the client can use
    either export.

    Args:
      model: a trained :class:`~recsys_tf.models.two_tower.TwoTower`.
      ds: the Dataset it was trained on (items, users, held-out interactions).
      export_root: e.g. ``saved_models``; writes ``<export_root>/<name>/<version>``.
      target_recall: requested recall@``recall_k`` against exact search.
      index_k: the largest k a request may ask for (default ``min(n_items, 1000)``).
      settings: partitioning/quantisation to build (default by corpus size).
      queries: query embeddings to tune on instead of the held-out sample.

    Returns:
      The export path. Raises ImportError (with install instructions) without ScaNN.

    Example::

        path = export_scann_retrieval(model, ds, "saved_models", target_recall=0.95)
    """
    from recsys_tf import scann_index
    from recsys_tf.training import item_embeddings as embed_items

    scann_index.require_scann()
    path, version = _target(export_root, name, version)
    fs = ds.feature_set
    emb = embed_items(model, fs, ds.items) if item_embeddings is None else item_embeddings
    emb = np.asarray(emb, np.float32)
    ids = fs.arrays(ds.items, [fs.item_id])[fs.item_id]
    index_k = int(min(len(ids), 1000) if index_k is None else index_k)
    q = _query_sample(model, ds, seed=seed) if queries is None else np.asarray(queries, np.float32)
    tuned = scann_index.tune_and_build(emb, q, k=min(recall_k, len(ids)),
                                       target_recall=target_recall, settings=settings,
                                       backend="tf", seed=seed)
    index = ScannRetrievalIndex(model.query_tower, model.query_signature(), ids,
                                tuned.searcher, tuned.settings, index_k)
    fns = index.signatures()
    index_card = {"index": "scann", "index_k": index_k,
                  "scann": {**tuned.summary(), "queries": "query-tower embeddings of held-out "
                            "interactions (retrieval_test), half for tuning, half for the "
                            "reported recall" if queries is None else "given"}}
    final = path
    with _staged(final) as path:
        tf.saved_model.save(index, path, signatures=fns,
                            options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
        _retrieval_extras(model, ds, path, name, version, fns, emb, ids,
                          {**index_card, **(card or {})}, max_k=index_k)
    return final


def export_retrieval(model, ds, export_root, name="two_tower", card=None, version=None,
                     item_embeddings=None):
    """Writes a two-tower model's brute-force retrieval SavedModel plus the client's tables.

    ``assets.extra/items.jsonl`` (item features and ``popularity``, the count of training
    interactions, one JSON object a line, in the order of ``item_embeddings.npy``) and
    ``users.jsonl`` (user features, latest histories, ``seen``).
    """
    from recsys_tf.training import item_embeddings as embed_items

    path, version = _target(export_root, name, version)
    fs = ds.feature_set
    emb = embed_items(model, fs, ds.items) if item_embeddings is None else item_embeddings
    ids = fs.arrays(ds.items, [fs.item_id])[fs.item_id]
    index = RetrievalIndex(model.query_tower, model.query_signature(), ids, emb)
    fns = index.signatures()
    final = path
    with _staged(final) as path:
        tf.saved_model.save(index, path, signatures=fns)
        _retrieval_extras(model, ds, path, name, version, fns, emb, ids,
                          {"index": "brute_force", "index_k": int(len(ids)), **(card or {})})
    return final


def _retrieval_extras(model, ds, path, name, version, fns, emb, ids, card, max_k=None):
    fs = ds.feature_set
    extra = os.path.join(path, ASSETS_EXTRA)
    os.makedirs(extra, exist_ok=True)
    items = ds.items.copy()
    counts = ds.retrieval_train[fs.item_id].value_counts()
    items["popularity"] = items[fs.item_id].map(counts).fillna(0).astype(np.int64)
    items.to_json(os.path.join(extra, ITEMS_FILE), orient="records", lines=True)
    ds.users.to_json(os.path.join(extra, USERS_FILE), orient="records", lines=True)
    np.save(os.path.join(extra, ITEM_EMBEDDINGS_FILE), np.asarray(emb, np.float32))
    full = {"name": name, "version": version, "kind": "retrieval", "index": "brute_force",
            "model": type(model).__name__, "n_items": int(len(ids)),
            "config": {k: v for k, v in model.get_config().items() if k != "feature_set"},
            "features": fs.select(model.query_features + model.candidate_features).to_dict(),
            "category_feature": _category_feature(fs),
            "signatures": _signatures_summary(fns)}
    full.update(card or {})
    write_model_card(path, full)
    sample = fs.arrays(ds.retrieval_test.head(3) if len(ds.retrieval_test) else ds.train.head(3),
                       model.query_features)
    sample["k"] = np.int32(min(10, len(ids), max_k or len(ids)))
    write_warmup(path, name, sample)


def _category_feature(fs):
    """The item feature the client diversifies over (the first item-role string categorical
    that is not the id), or None."""
    for f in fs:
        if f.role == "item" and f.kind == "categorical" and f.name != fs.item_id:
            return f.name
    return None
