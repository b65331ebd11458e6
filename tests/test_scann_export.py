"""The ScaNN flavour of the two-tower export, and the ScaNN index builder/tuner.

A two-tower model is trained for one epoch on a small synthetic catalogue (400 items: large
enough for a partitioned, quantised index) and exported by the ``train`` command, which writes
both ``two_tower`` (brute force) and ``two_tower_scann``. Each export is reloaded and compared
with exact search over the exported item embeddings.
"""
import filecmp
import json
import os

import numpy as np
import pytest

from recsys_tf import scann_index as si
from recsys_tf.backend import tf
from recsys_tf.export import read_model_card, versions

pytestmark = pytest.mark.skipif(not si.available(), reason=si.INSTALL_HINT)

SMALL = dict(n_users=80, n_items=400, n_categories=8, n_train=4000, n_test=800, seed=5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from recsys_tf import data
    from recsys_tf.pipeline import train

    ds = data.load("synthetic", None, **SMALL)
    root = str(tmp_path_factory.mktemp("saved_models"))
    metrics, model = train("two_tower", ds, epochs=1, batch_size=128, export_dir=root,
                           verbose=0, options={"dim": 8, "hidden": [16]}, scann_index_k=100)
    return {"ds": ds, "root": root, "metrics": metrics, "model": model,
            "brute": metrics["export_path"], "scann": metrics["scann_export_path"]}


def _query(ds, model, rows):
    return {k: tf.constant(v) for k, v in ds.feature_set.arrays(rows, model.query_features).items()}


def _load(path):
    return tf.saved_model.load(path).signatures


def test_train_writes_both_exports_with_the_same_tables(exported):
    root, m = exported["root"], exported["metrics"]
    assert versions(root, "two_tower") == [1] and versions(root, "two_tower_scann") == [1]
    for key in ("recall_at_10", "recall_at_100", "top_100_accuracy", "scann_recall_at_10"):
        assert key in m
    a, b = (os.path.join(exported[n], "assets.extra") for n in ("brute", "scann"))
    for name in ("items.jsonl", "users.jsonl", "item_embeddings.npy"):
        assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name
    assert os.path.getsize(os.path.join(b, "tf_serving_warmup_requests")) > 0
    card = read_model_card(exported["scann"])
    assert card["index"] == "scann" and card["index_k"] == 100 and card["n_items"] == 400
    s = card["scann"]
    assert s["settings"]["num_leaves"] > 0 and s["settings"]["dims_per_block"] == 2
    assert 1 <= s["settings"]["leaves_to_search"] <= s["settings"]["num_leaves"]
    assert s["target_recall"] == 0.95 and 0.0 < s["recall_at_10"] <= 1.0
    assert s["n_holdout_queries"] > 0 and s["grid"]
    assert read_model_card(exported["brute"])["index"] == "brute_force"
    # same signatures as the brute-force export: what the client reads from metadata
    assert card["signatures"] == read_model_card(exported["brute"])["signatures"]


def test_brute_force_export_is_exact_search(exported):
    ds, model = exported["ds"], exported["model"]
    sig = _load(exported["brute"])
    x = _query(ds, model, ds.retrieval_test.head(32))
    q = sig["query_embedding"](**x)["embedding"].numpy()
    emb = np.load(os.path.join(exported["brute"], "assets.extra", "item_embeddings.npy"))
    items = ds.items["item_id"].to_numpy()
    out = sig["serving_default"](**x, k=tf.constant(10))
    exact, exact_s = si.exact_top_k(emb, q, 10)
    np.testing.assert_allclose(out["scores"].numpy(), exact_s, atol=1e-5)
    assert (out["item_ids"].numpy().astype(str)[:, 0] == items[exact[:, 0]]).all()


def test_scann_export_reaches_its_recorded_recall(exported):
    ds, model = exported["ds"], exported["model"]
    sig = _load(exported["scann"])
    card = read_model_card(exported["scann"])
    rows = ds.retrieval_test.sample(min(300, len(ds.retrieval_test)), random_state=1)
    x = _query(ds, model, rows)
    q = sig["query_embedding"](**x)["embedding"].numpy()
    np.testing.assert_allclose(q, model.query_model(x).numpy(), atol=1e-6)
    out = sig["serving_default"](**x, k=tf.constant(10))
    got = out["item_ids"].numpy().astype(str)
    assert got.shape == (len(rows), 10)
    emb = np.load(os.path.join(exported["scann"], "assets.extra", "item_embeddings.npy"))
    pos = {v: i for i, v in enumerate(ds.items["item_id"].tolist())}
    got_idx = np.vectorize(pos.__getitem__)(got)
    exact, _ = si.exact_top_k(emb, q, 10)
    recall = si.recall_vs_exact(got_idx, exact, 10)
    # a fresh sample of the same held-out distribution: allow sampling noise
    assert recall >= card["scann"]["recall_at_10"] - 0.05, (recall, card["scann"])
    assert recall >= 0.85
    # reordering makes the returned scores exact inner products, best first
    np.testing.assert_allclose(out["scores"].numpy(),
                               np.take_along_axis(q @ emb.T, got_idx, 1), atol=1e-4)
    assert (np.diff(out["scores"].numpy(), axis=1) <= 1e-6).all()


def test_unknown_users_and_empty_histories_get_a_full_top_k(exported):
    ds, model = exported["ds"], exported["model"]
    rows = ds.retrieval_test.head(3).copy()
    rows["user_id"] = ["nobody", "u12", "u-404"]
    empty = [""] * len(rows["history"].iloc[0])
    rows["history"] = [empty, rows["history"].iloc[1], empty]
    rows["history_category"] = [empty, rows["history_category"].iloc[1], empty]
    x = _query(ds, model, rows)
    known = set(ds.items["item_id"].tolist())
    for path, k in ((exported["brute"], 400), (exported["scann"], 100), (exported["scann"], 1)):
        out = _load(path)["serving_default"](**x, k=tf.constant(k))
        ids, scores = out["item_ids"].numpy().astype(str), out["scores"].numpy()
        assert ids.shape == (3, k) and np.isfinite(scores).all()
        assert all(set(r) <= known and len(set(r)) == k for r in ids)


def test_k_beyond_the_index_is_invalid_argument(exported):
    ds, model = exported["ds"], exported["model"]
    x = _query(ds, model, ds.retrieval_test.head(2))
    fn = _load(exported["scann"])["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="k exceeds the index k"):
        fn(**x, k=tf.constant(101))
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be >= 1"):
        fn(**x, k=tf.constant(0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="k exceeds"):
        _load(exported["brute"])["serving_default"](**x, k=tf.constant(401))


def test_bundled_server_serves_the_scann_export(trained, server, tiny_synthetic):
    """The session's exports (conftest) include two_tower_scann; the server loads it."""
    import grpc

    from recsys_tf.client.grpc_client import ServingClient

    metrics, model = trained["two_tower"]
    path = metrics["scann_export_path"]
    assert path and read_model_card(path)["index"] == "scann"
    x = tiny_synthetic.feature_set.arrays(tiny_synthetic.retrieval_test.head(1),
                                          model.query_features)
    local = _load(path)["serving_default"](**{k: tf.constant(v) for k, v in x.items()},
                                            k=tf.constant(5))
    with ServingClient(server) as client:
        sig = client.signature("two_tower_scann")
        assert set(sig["inputs"]) == set(model.query_features) | {"k"}
        assert set(sig["outputs"]) == {"item_ids", "scores"}
        out = client.predict("two_tower_scann", {**x, "k": np.int32(5)})
        assert out["item_ids"].shape == (1, 5)
        assert [i.decode() if isinstance(i, bytes) else i for i in out["item_ids"][0]] == \
            local["item_ids"].numpy().astype(str)[0].tolist()
        limit = read_model_card(path)["index_k"]
        with pytest.raises(grpc.RpcError) as err:
            client.predict("two_tower_scann", {**x, "k": np.int32(limit + 1)})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "k exceeds" in err.value.details()


# ------------------------------------------------------------------ the index builder/tuner
def _clustered(n, d, seed, n_queries=600):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 50), d))
    db = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.normal(size=(n, d))
    q = centres[rng.integers(0, len(centres), n_queries)] + 0.8 * rng.normal(size=(n_queries, d))
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db.astype(np.float32), q.astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_tuner_reaches_the_requested_recall(backend):
    db, q = _clustered(3000, 16, seed=0)
    res = si.tune_and_build(db, q, k=10, target_recall=0.9, backend=backend)
    assert res.settings.num_leaves == 55 and res.met_target
    assert res.recall_tune >= 0.91 and res.recall >= 0.85
    assert res.settings.leaves_to_search < res.settings.num_leaves   # not a full scan
    idx, scores = si.search(res.searcher, q[:50], 10, res.settings)
    assert idx.shape == (50, 10) and (idx >= 0).all()
    summary = res.summary()
    json.dumps(summary)
    assert summary["recall_at_10"] == res.recall


def test_small_corpus_is_scored_exactly():
    db, q = _clustered(100, 8, seed=1, n_queries=40)
    res = si.tune_and_build(db, q, k=10, backend="numpy")
    assert res.settings.num_leaves == 0 and res.settings.dims_per_block == 0
    assert res.recall == 1.0


def test_short_results_are_padded():
    db, q = _clustered(400, 8, seed=2, n_queries=5)
    s = si.ScannSettings(num_leaves=40, leaves_to_search=1, dims_per_block=2, reorder=20)
    searcher = si.build(db, s, k=10)
    idx, scores = si.search(searcher, q, 200, s)
    assert idx.shape == (5, 200)
    assert ((idx == -1) == np.isneginf(scores)).all()


def test_exact_top_k_and_recall_by_hand():
    db = np.array([[1, 0], [0, 1], [0.6, 0.8], [1, 0]], np.float32)
    idx, s = si.exact_top_k(db, np.array([[1, 0]], np.float32), 3)
    assert idx.tolist() == [[0, 3, 2]]           # tie between 0 and 3: lower index first
    np.testing.assert_allclose(s, [[1, 1, 0.6]])
    assert si.recall_vs_exact([[0, 2, 9]], [[0, 3, 2]]) == pytest.approx(2 / 3)


def test_missing_scann_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scann", None)
    with pytest.raises(ImportError, match="pip install scann==1.4.2"):
        si.require_scann()
