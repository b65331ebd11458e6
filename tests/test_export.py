"""Every export reloads with tf.saved_model.load and matches the Keras model on one batch."""
import json
import os
import re

import numpy as np

from recsys_tf.backend import tf
from recsys_tf.export import read_model_card, versions


def _tensors(arrays):
    return {k: tf.constant(v) for k, v in arrays.items()}


def test_layout_is_what_tf_serving_reads(trained):
    root = trained["root"]
    for name in ("two_tower", "deepfm"):
        assert versions(root, name) == [1]
        path = os.path.join(root, name, "1")
        assert os.path.exists(os.path.join(path, "saved_model.pb"))
        assert os.path.getsize(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")) > 0
        card = read_model_card(path)
        assert card["name"] == name and card["version"] == 1
        assert card["metrics"]["n_train"] > 0
    assert not [d for d in os.listdir(os.path.join(root, "deepfm")) if d.startswith(".tmp")]


def test_deepfm_reload_matches_keras(trained, tiny_synthetic):
    metrics, model = trained["deepfm"]
    fs = tiny_synthetic.feature_set
    batch = tiny_synthetic.test.head(32).copy()
    batch.loc[batch.index[0], "item_id"] = "never-seen-item"   # OOV must not error
    x = _tensors(fs.arrays(batch, model.features))
    loaded = tf.saved_model.load(metrics["export_path"])
    fn = loaded.signatures["serving_default"]
    assert sorted(fn.structured_input_signature[1]) == sorted(model.features)
    got = fn(**x)["probability"].numpy()
    np.testing.assert_allclose(got, model(x, training=False).numpy(), atol=1e-6)
    assert got.shape == (32,) and np.all((got > 0) & (got < 1))



def test_one_user_signature_matches_serving_default_on_repeated_rows(trained, tiny_synthetic):
    """``one_user`` takes the user/context features once ([1, ...]) and the items' rows, and
    answers what ``serving_default`` answers with that row repeated for every item row."""
    metrics, model = trained["deepfm"]
    fs = tiny_synthetic.feature_set
    loaded = tf.saved_model.load(metrics["export_path"])
    default, one = loaded.signatures["serving_default"], loaded.signatures["one_user"]
    specs = one.structured_input_signature[1]
    assert sorted(specs) == sorted(model.features)
    items = {n for n in model.features if fs[n].role == "item"}
    assert items and items != set(model.features)
    for name, spec in specs.items():
        assert spec.shape.as_list()[0] == (None if name in items else 1), name
    rows = tiny_synthetic.test.head(12)
    x = fs.arrays(rows, model.features)
    user = {n: v[:1] for n, v in x.items() if n not in items}     # the first row's user
    repeated = {n: np.repeat(user[n], 12, axis=0) if n in user else v for n, v in x.items()}
    want = default(**_tensors(repeated))["probability"].numpy()
    got = one(**_tensors({**x, **user}))["probability"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.shape == (12,)
    card = read_model_card(metrics["export_path"])
    assert card["signatures"]["one_user"]["inputs"]["user_id"]["shape"] == [1]

def test_two_tower_reload_matches_exact_search(trained, tiny_synthetic):
    metrics, model = trained["two_tower"]
    fs = tiny_synthetic.feature_set
    path = metrics["export_path"]
    loaded = tf.saved_model.load(path)
    rows = tiny_synthetic.retrieval_test.head(8)
    x = _tensors(fs.arrays(rows, model.query_features))
    q = model.query_model(x).numpy()
    np.testing.assert_allclose(loaded.signatures["query_embedding"](**x)["embedding"].numpy(), q,
                               atol=1e-6)
    out = loaded.signatures["serving_default"](**x, k=tf.constant(5))
    items = tiny_synthetic.items[fs.item_id].to_numpy()
    emb = np.load(os.path.join(path, "assets.extra", "item_embeddings.npy"))
    exact = np.argsort(-(q @ emb.T), axis=1, kind="stable")[:, :5]
    assert out["item_ids"].shape == (8, 5)
    got = out["item_ids"].numpy().astype(str)
    np.testing.assert_allclose(out["scores"].numpy(), np.take_along_axis(q @ emb.T, exact, 1),
                               atol=1e-5)
    assert (got[:, 0] == items[exact[:, 0]]).all()
    # the item table beside the model has every item, in the embeddings' order
    with open(os.path.join(path, "assets.extra", "items.jsonl")) as f:
        table = [json.loads(line) for line in f]
    assert [r[fs.item_id] for r in table] == items.tolist()


def test_two_tower_k_beyond_index_is_invalid_argument(trained, tiny_synthetic):
    import pytest

    metrics, model = trained["two_tower"]
    fs = tiny_synthetic.feature_set
    fn = tf.saved_model.load(metrics["export_path"]).signatures["serving_default"]
    x = _tensors(fs.arrays(tiny_synthetic.retrieval_test.head(2), model.query_features))
    with pytest.raises(tf.errors.InvalidArgumentError, match="k exceeds"):
        fn(**x, k=tf.constant(len(tiny_synthetic.items) + 1))


def test_ranker_export_logs_no_invalid_node_names(trained, tmp_path):
    """A ranker trained on encoded inputs is traced with them when saved: their dict keys name
    placeholders, so they must be valid node names (no "`#cat` is not a valid node name")."""
    import logging

    from recsys_tf.export import export_ranker
    from recsys_tf.layers.embedding import CAT_KEY, NUM_KEY, id_key

    valid = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")   # TensorFlow's node name rule
    assert all(valid.match(k) for k in (CAT_KEY, NUM_KEY, id_key("history")))
    _, model = trained["deepfm"]
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = tf.get_logger()
    logger.addHandler(handler)
    try:
        path = export_ranker(model, str(tmp_path), "deepfm")
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert not [m for m in messages if "valid node name" in m], messages[:3]
    fn = tf.saved_model.load(path).signatures["serving_default"]
    assert sorted(fn.structured_input_signature[1]) == sorted(model.features)
