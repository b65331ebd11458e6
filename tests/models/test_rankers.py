"""The CTR rankers: build on a tiny FeatureSet, fit, config round trip, SavedModel export + OOV."""
import json

import numpy as np
import pytest

from recsys_tf import models
from recsys_tf.backend import keras, tf
from recsys_tf.export import export_ranker
from recsys_tf.features import Categorical, FeatureSet, Numeric, Sequence
from recsys_tf.models.base import RankingModel
from recsys_tf.models.dcn_v2 import DCNv2
from recsys_tf.models.deepfm import DeepFM
from recsys_tf.models.wide_deep import WideDeep
from recsys_tf.models.xdeepfm import XDeepFM

USERS = [f"u{i}" for i in range(8)]
ITEMS = list(range(1, 13))
FS = FeatureSet([
    Categorical("user_id", vocabulary=USERS, dim=4, role="user"),
    Categorical("item_id", vocabulary=ITEMS, dtype="int64", dim=4, role="item"),
    Categorical("category", hash_buckets=8, dim=4, role="item"),
    Numeric("price", mean=5.0, std=2.0, role="item"),
    Sequence("history", of="item_id", max_len=3),
], label="label", user_id="user_id", item_id="item_id")


def synthetic(n=200, seed=0):
    """Rows whose click probability depends on the item, the price and a user x category cross."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, len(USERS), n)
    item = rng.choice(ITEMS, n)
    cat = item % 3
    price = rng.normal(5.0, 2.0, n)
    hist = rng.choice([0] + ITEMS, (n, 3))
    logit = 1.5 * (item % 2 == 0) - 1.0 * (price - 5.0) / 2.0 + 1.5 * ((user % 3) == cat) - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    x = {"user_id": np.array([USERS[u] for u in user], dtype=object),
         "item_id": item.astype(np.int64),
         "category": np.array([f"c{c}" for c in cat], dtype=object),
         "price": price.astype(np.float32),
         "history": hist.astype(np.int64)}
    return x, y


X, Y = synthetic()
BATCH = {k: tf.constant(v[:6]) for k, v in X.items()}
OOV_BATCH = {  # nothing here was ever seen: unknown ids, an unseen category, NaN price
    "user_id": tf.constant(["nobody", "u1"]),
    "item_id": tf.constant([12345, -7], tf.int64),
    "category": tf.constant(["zzz", ""]),
    "price": tf.constant([float("nan"), 1e6]),
    "history": tf.constant([[12345, 0, 0], [0, 0, 0]], tf.int64),
}

CONFIGS = {
    "deepfm": lambda: DeepFM(FS, dim=4, dnn_units=(8,)),
    "xdeepfm": lambda: XDeepFM(FS, dim=4, cin_sizes=(4, 2), dnn_units=(8,)),
    "dcn_v2_stacked": lambda: DCNv2(FS, dim=4, cross_layers=2, dnn_units=(8,)),
    "dcn_v2_parallel_low_rank": lambda: DCNv2(FS, dim=4, cross_layers=2, projection_dim=2,
                                              structure="parallel", dnn_units=(8,)),
    "dcn_v2_numeric_fields": lambda: DCNv2(FS, dim=4, cross_layers=2, numeric="field",
                                           dnn_units=(8,)),
    "dcn_v2_experts": lambda: DCNv2(FS, dim=None, cross_layers=2, projection_dim=2,
                                    num_experts=2, dnn_units=(8,)),
    "wide_deep": lambda: WideDeep(FS, crosses=[("user_id", "category")], cross_buckets=16,
                                  dim=4, dnn_units=(8,)),
}


def compile_like_the_trainer(model, learning_rate=0.02):
    if hasattr(model, "default_optimizer"):
        optimizer = model.default_optimizer(learning_rate)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def trained(request):
    keras.utils.set_random_seed(0)
    model = CONFIGS[request.param]()
    compile_like_the_trainer(model)
    before = model.evaluate(X, Y, batch_size=200, verbose=0)
    model.fit(X, Y, batch_size=32, epochs=2, verbose=0)
    after = model.evaluate(X, Y, batch_size=200, verbose=0)
    return request.param, model, before, after


def test_fit_learns_the_signal(trained):
    name, model, before, after = trained
    assert after < before - 0.03, f"{name}: loss {before:.4f} -> {after:.4f}"


def test_outputs_probabilities(trained):
    _, model, _, _ = trained
    p = model(BATCH).numpy()
    assert isinstance(model, RankingModel)
    assert p.shape == (6,) and ((p > 0) & (p < 1)).all()
    assert set(model.input_signature()) == set(FS.names)


def test_from_config_roundtrip(trained):
    _, model, _, _ = trained
    config = model.get_config()
    clone = type(model).from_config(json.loads(json.dumps(config)))
    clone(clone.dummy_inputs())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(BATCH).numpy(), model(BATCH).numpy(), rtol=1e-6, atol=1e-7)
    assert clone.get_config() == config


def test_export_reload_matches_and_takes_oov(trained, tmp_path):
    _, model, _, _ = trained
    serve = tf.function(lambda **x: {"probability": model(x, training=False)})
    tf.saved_model.save(model, str(tmp_path), signatures={
        "serving_default": serve.get_concrete_function(**model.input_signature())})
    loaded = tf.saved_model.load(str(tmp_path))
    fn = loaded.signatures["serving_default"]
    assert set(fn.structured_input_signature[1]) == set(FS.names)
    np.testing.assert_allclose(fn(**BATCH)["probability"].numpy(),
                               model(BATCH, training=False).numpy(), atol=1e-5)
    p = fn(**OOV_BATCH)["probability"].numpy()
    assert p.shape == (2,) and np.isfinite(p).all()
    np.testing.assert_allclose(p, model(OOV_BATCH, training=False).numpy(), atol=1e-5)


def test_one_user_signature_answers_as_serving_default_with_the_row_repeated(trained, tmp_path):
    """The export's ``one_user``: the user's features once ([1, ...]) for 6 item rows, looked
    up once and repeated in the graph (a cross of user and item features included)."""
    _, model, _, _ = trained
    path = export_ranker(model, str(tmp_path), "m")
    sigs = tf.saved_model.load(path).signatures
    user = {"user_id": BATCH["user_id"][:1], "history": BATCH["history"][:1]}
    one = sigs["one_user"](**{**BATCH, **user})["probability"].numpy()
    repeated = {k: tf.repeat(v, 6, axis=0) for k, v in user.items()}
    want = sigs["serving_default"](**{**BATCH, **repeated})["probability"].numpy()
    np.testing.assert_allclose(one, want, atol=1e-6)
    np.testing.assert_allclose(one, model({**BATCH, **repeated}, training=False).numpy(),
                               atol=1e-5)
    assert not np.allclose(one, model(BATCH, training=False).numpy(), atol=1e-4)  # one user

def test_registry_finds_the_models():
    assert models.get("xdeepfm") is XDeepFM
    assert models.get("dcn_v2") is DCNv2
    assert models.get("wide_deep") is WideDeep


# -- Wide & Deep specifics -------------------------------------------------------------------
def test_wide_deep_runs_on_the_high_level_api():
    keras.utils.set_random_seed(1)
    model = WideDeep(FS, crosses=[("user_id", "category"), ("item_id", "category", "user_id")],
                     cross_buckets=16, dim=4, dnn_units=(8,))
    assert isinstance(model, keras.experimental.WideDeepModel)
    assert isinstance(model.linear_model, keras.experimental.LinearModel)
    compile_like_the_trainer(model, 0.01)
    assert [type(o).__name__ for o in model.optimizer] == ["Ftrl", "Adam"]
    model.fit(X, Y, batch_size=100, epochs=1, verbose=0)
    # every trainable variable belongs to one sub-model, so each is updated by its optimizer
    wide = {v.ref() for v in model.linear_model.trainable_variables}
    deep = {v.ref() for v in model.dnn_model.trainable_variables}
    assert not wide & deep
    assert {v.ref() for v in model.trainable_variables} == wide | deep
    assert all(np.abs(v.numpy()).sum() > 0 for v in model.linear_model.trainable_variables)
    # wide inputs: one-hot ids (OOV row included), multi-hot history without padding, z, crosses
    w = model.wide_inputs({k: v[:2] for k, v in OOV_BATCH.items()})
    assert sorted(w) == sorted(FS.names + ["user_id_x_category", "item_id_x_category_x_user_id"])
    assert w["user_id"].shape[1] == 1 + len(USERS)
    np.testing.assert_array_equal(tf.sparse.to_dense(w["user_id"]).numpy()[:, 0], [1, 0])
    np.testing.assert_array_equal(tf.sparse.to_dense(w["history"]).numpy().sum(axis=1), [1, 0])
    # a sequence counts its ids: one listed twice counts 2; padding is dropped
    repeats = dict(OOV_BATCH, history=tf.constant([[ITEMS[0], ITEMS[0], 0],
                                                   [ITEMS[1], 0, ITEMS[0]]], tf.int64))
    counts = tf.sparse.to_dense(model.wide_inputs(repeats)["history"]).numpy()
    assert counts[0][counts[0] > 0].tolist() == [2.0]
    assert counts[1][counts[1] > 0].tolist() == [1.0, 1.0]
    sp = model.linear_inputs(repeats)["one_hot"]      # repeated entries add up
    packed = np.zeros(sp.dense_shape.numpy())
    np.add.at(packed, tuple(sp.indices.numpy().T), sp.values.numpy())
    seq_offset = model._layout[5][0]
    np.testing.assert_array_equal(packed[:, seq_offset:seq_offset + counts.shape[1]], counts)
    assert w["user_id_x_category"].shape[1] == 16
    np.testing.assert_allclose(w["price"].numpy()[:, 0], [0.0, (1e6 - 5.0) / 2.0])
    ftrl, adam = model.default_optimizer(0.003)
    assert float(adam.learning_rate) == pytest.approx(0.003)
    assert float(ftrl.learning_rate) == pytest.approx(min(0.2, 1 / np.sqrt(len(FS.names) + 2)))


def test_wide_deep_also_trains_with_one_optimizer():
    keras.utils.set_random_seed(2)
    model = WideDeep(FS, wide_features=["user_id", "item_id"], dim=4, dnn_units=(4,))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(X, Y, batch_size=100, epochs=1, verbose=0)
    assert sorted(model.wide_inputs(BATCH)) == ["item_id", "user_id"]


def test_argument_checks():
    with pytest.raises(ValueError, match="numeric"):
        WideDeep(FS, crosses=[("price", "category")])
    with pytest.raises(ValueError, match="not one of"):
        WideDeep(FS, features=["user_id", "item_id"], wide_features=["category"])
    with pytest.raises(ValueError, match="two or more"):
        WideDeep(FS, crosses=[("user_id",)])
    with pytest.raises(ValueError, match="structure"):
        DCNv2(FS, structure="sideways")
    with pytest.raises(ValueError, match="projection_dim"):
        DCNv2(FS, num_experts=4)
    with pytest.raises(ValueError, match="even"):
        XDeepFM(FS, cin_sizes=(3, 2))
