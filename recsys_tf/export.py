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
raw features (input names = FeatureSet names) -> ``probability``. Retrieval models export
``serving_default``: query features + ``k`` -> ``item_ids``, ``scores`` (brute force, stock ops
only) and ``query_embedding``: query features -> ``embedding``.
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

RANKER_SIGNATURE = "serving_default"
RETRIEVAL_SIGNATURE = "serving_default"
QUERY_SIGNATURE = "query_embedding"


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
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    card = dict(card)
    card.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat())
    card.setdefault("tensorflow", tf.__version__)
    card.setdefault("python", platform.python_version())
    from recsys_tf import __version__

    card.setdefault("recsys_tf", __version__)
    with open(os.path.join(extra, "model_card.json"), "w") as f:
        json.dump(_jsonable(card), f, indent=2)


def read_model_card(path):
    with open(os.path.join(path, "assets.extra", "model_card.json")) as f:
        return json.load(f)


def write_warmup(path, model_name, inputs, signature="serving_default", n=3):
    """``assets.extra/tf_serving_warmup_requests``: ``n`` PredictionLog records TF Serving
    replays at load time (and the bundled server does too)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(extra, "tf_serving_warmup_requests")) as w:
        for i in range(n):
            req = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for k, v in inputs.items():
                v = np.asarray(v)
                row = v if v.ndim == 0 else v[i % len(v): i % len(v) + 1]
                req.inputs[k].CopyFrom(tf.make_tensor_proto(row))
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


def export_ranker(model, export_root, name, card=None, warmup_inputs=None, version=None):
    """Writes a ranker as ``<export_root>/<name>/<version>``; returns that path.

    ``serving_default``: the model's raw features -> ``{"probability": [batch]}``.
    """
    path, version = _target(export_root, name, version)

    @tf.function
    def serve(**inputs):
        return {model.output_name: model(inputs, training=False)}

    fns = {RANKER_SIGNATURE: serve.get_concrete_function(**model.input_signature())}
    final = path
    with _staged(final) as path:
        tf.saved_model.save(model, path, signatures=fns)
        _ranker_extras(model, path, name, version, fns, card, warmup_inputs)
    return final


def _ranker_extras(model, path, name, version, fns, card, warmup_inputs):
    full = {"name": name, "version": version, "kind": "ranker",
            "model": type(model).__name__, "config": {k: v for k, v in model.get_config().items()
                                                      if k != "feature_set"},
            "features": model.feature_set.to_dict(), "signatures": _signatures_summary(fns)}
    full.update(card or {})
    write_model_card(path, full)
    if warmup_inputs is not None:
        write_warmup(path, name, warmup_inputs)


class RetrievalIndex(tf.Module):
    """Query tower + an exact (brute-force) index over the item embeddings.

    ``serving_default(query features..., k)``: ``scores = q C^T``, ``top_k(scores, k)`` ->
    ``item_ids [batch, k]``, ``scores [batch, k]``; ``k`` must be in ``[1, n_items]``
    (InvalidArgumentError otherwise). Stock TensorFlow ops only, so stock TF Serving loads it.
    """

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
        k = tf.cast(k, tf.int32)
        with tf.control_dependencies([
                tf.debugging.assert_positive(k, message="k must be >= 1"),
                tf.debugging.assert_less_equal(k, n, message="k exceeds the number of items "
                                               "in the index")]):
            scores, idx = tf.math.top_k(tf.matmul(q, self.item_embeddings, transpose_b=True), k=k)
        return {"item_ids": tf.gather(self.item_ids, idx), "scores": scores}

    def signatures(self):
        spec = dict(self.query_spec)
        spec_k = dict(spec, k=tf.TensorSpec([], tf.int32, name="k"))
        search = tf.function(lambda **x: self.search({n: x[n] for n in spec}, x["k"]))
        embed = tf.function(lambda **x: {"embedding": self.embed(x)})
        return {RETRIEVAL_SIGNATURE: search.get_concrete_function(**spec_k),
                QUERY_SIGNATURE: embed.get_concrete_function(**spec)}


def export_retrieval(model, ds, export_root, name="two_tower", card=None, version=None,
                     item_embeddings=None):
    """Writes a two-tower model's brute-force retrieval SavedModel plus the client's tables.

    ``assets.extra/items.jsonl`` (item features and ``popularity``, the count of training
    interactions, one JSON object a line, in the order of ``item_embeddings.npy``) and ``users.jsonl`` (user features, latest histories, ``seen``).
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
        _retrieval_extras(model, ds, path, name, version, fns, emb, ids, card)
    return final


def _retrieval_extras(model, ds, path, name, version, fns, emb, ids, card):
    fs = ds.feature_set
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    items = ds.items.copy()
    counts = ds.retrieval_train[fs.item_id].value_counts()
    items["popularity"] = items[fs.item_id].map(counts).fillna(0).astype(np.int64)
    items.to_json(os.path.join(extra, "items.jsonl"), orient="records", lines=True)
    ds.users.to_json(os.path.join(extra, "users.jsonl"), orient="records", lines=True)
    np.save(os.path.join(extra, "item_embeddings.npy"), np.asarray(emb, np.float32))
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
    sample["k"] = np.int32(min(10, len(ids)))
    write_warmup(path, name, sample)


def _category_feature(fs):
    """The item feature the client diversifies over (the first item-role string categorical
    that is not the id), or None."""
    for f in fs:
        if f.role == "item" and f.kind == "categorical" and f.name != fs.item_id:
            return f.name
    return None
