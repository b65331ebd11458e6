import json
import os

import numpy as np
import pytest

from recsys_tf.backend import keras, tf
from recsys_tf.features import FeatureSet, Sequence
from recsys_tf.models.dien import DIEN
from recsys_tf.models.din import DIN

SMALL = dict(dim=4, attention_units=(8,), dnn_units=(16, 8))


@pytest.fixture(scope="module")
def beauty(data_dir):
    from recsys_tf.data import load

    return load("amazon-beauty", data_dir, max_users=300, seed=1)


@pytest.fixture(scope="module")
def batch(beauty):
    fs = beauty.feature_set
    frame = beauty.test.head(16).copy()
    for col in ("history", "history_category"):                 # two users without history
        frame[col] = [[], []] + frame[col].tolist()[2:]
    return {k: tf.constant(v) for k, v in fs.arrays(frame).items()}


def fit_losses(model, ds, epochs=3):
    fs = ds.feature_set
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    h = model.fit(fs.arrays(ds.train, model.features),
                  ds.train[fs.label].to_numpy(np.float32), batch_size=128, epochs=epochs,
                  shuffle=True, verbose=0)
    return h.history


@pytest.fixture(scope="module")
def trained_dien(beauty):
    keras.utils.set_random_seed(0)
    model = DIEN(beauty.feature_set, **SMALL)
    return model, fit_losses(model, beauty)


def test_trains_and_loss_decreases(trained_dien):
    _, history = trained_dien
    assert history["loss"][-1] < history["loss"][0]
    assert history["aux_loss"][-1] < history["aux_loss"][0]
    assert all(np.isfinite(history["loss"]))


def test_din_trains_and_loss_decreases(beauty):
    history = fit_losses(DIN(beauty.feature_set, **SMALL), beauty, epochs=2)
    assert history["loss"][-1] < history["loss"][0]


def test_behaviour_detection_and_shared_tables(beauty):
    model = DIEN(beauty.feature_set, **SMALL)
    assert model.behavior == [["history", "item_id"], ["history_category", "category"]]
    assert model.behavior_dim == 8 and model.gru_units == 8
    model(model.dummy_inputs())
    tables = {v.name for v in model.trainable_variables if "embedding_" in v.name}
    assert len(tables) == 3                                  # user_id, item_id, category


@pytest.mark.parametrize("evolution", ["augru", "agru", "aigru"])
def test_empty_history_gives_finite_output(beauty, batch, evolution):
    model = DIEN(beauty.feature_set, evolution=evolution, gru_units=6, **SMALL)
    p = model(batch, training=False).numpy()
    assert p.shape == (16,) and np.all(np.isfinite(p))
    n_weights = len(model.weights)
    model(batch, training=True)
    assert len(model.weights) == n_weights
    assert all(np.isfinite(loss.numpy()) for loss in model.losses)
    empty = {k: (tf.zeros_like(v) if k.startswith("history") else v) for k, v in batch.items()}
    model(empty, training=True)
    assert all(np.isfinite(loss.numpy()) for loss in model.losses)
    assert np.all(np.isfinite(DIN(beauty.feature_set, **SMALL)(empty).numpy()))


def test_aux_loss_only_in_training(beauty, batch):
    model = DIEN(beauty.feature_set, embeddings_l2=0.0, **SMALL)
    model(batch, training=True)
    assert len(model.losses) == 1 and float(model.losses[0]) > 0
    model(batch, training=False)
    assert model.losses == []
    quiet = DIEN(beauty.feature_set, embeddings_l2=0.0, aux_loss_weight=0.0, **SMALL)
    quiet(batch, training=True)
    assert quiet.losses == []


def test_padding_never_changes_the_output(beauty, batch, trained_dien):
    model, _ = trained_dien
    p = model(batch, training=False).numpy()
    # garbage where the item history is padding: masked out, so the same output
    noisy = dict(batch)
    pad = tf.equal(batch["history"], 0)
    noisy["history_category"] = tf.where(pad, tf.constant(7, tf.int64), batch["history_category"])
    np.testing.assert_allclose(model(noisy, training=False).numpy(), p, atol=1e-6)
    # the same histories padded to a longer max_len, same weights: the same output
    d = beauty.feature_set.to_dict()
    for f in d["features"]:
        if f["kind"] == "sequence":
            f["max_len"] = 31
    longer_fs = FeatureSet.from_dict(d)
    longer = DIEN(longer_fs, **SMALL)
    longer(longer.dummy_inputs())
    longer.set_weights(model.get_weights())
    wide = {k: (tf.pad(v, [[0, 0], [0, 11]]) if k.startswith("history") else v)
            for k, v in batch.items()}
    np.testing.assert_allclose(longer(wide, training=False).numpy(), p, atol=1e-6)


def test_get_config_round_trip(beauty, batch, trained_dien):
    model, _ = trained_dien
    config = model.get_config()
    json.dumps(config)
    again = DIEN.from_config(json.loads(json.dumps(config)))
    assert again.get_config() == config
    again(batch)
    again.set_weights(model.get_weights())
    np.testing.assert_allclose(again(batch).numpy(), model(batch).numpy(), atol=1e-6)
    din = DIN(beauty.feature_set, attention_normalization="softmax", **SMALL)
    assert DIN.from_config(din.get_config()).get_config() == din.get_config()


def test_explicit_behavior_and_errors(beauty):
    fs = beauty.feature_set
    model = DIEN(fs, behavior=[("history", "item_id")], **SMALL)
    assert model.behavior_dim == 4
    with pytest.raises(ValueError, match="share"):
        DIEN(fs, behavior=[("history", "category")], **SMALL)
    with pytest.raises(ValueError, match="no behaviour"):
        DIEN(fs, features=["user_id", "item_id", "category"], **SMALL)
    with pytest.raises(ValueError, match="evolution"):
        DIEN(fs, evolution="lstm", **SMALL)
    assert isinstance(fs["history"], Sequence)


@pytest.mark.parametrize("cls", [DIEN, DIN])
def test_saved_model_round_trip(cls, beauty, batch, trained_dien, tmp_path):
    model = trained_dien[0] if cls is DIEN else cls(beauty.feature_set, **SMALL)
    model(batch)
    path = os.path.join(str(tmp_path), cls.__name__)
    serve = tf.function(lambda **x: {"probability": model(x, training=False)})
    tf.saved_model.save(model, path, signatures={
        "serving_default": serve.get_concrete_function(**model.input_signature())})
    loaded = tf.saved_model.load(path).signatures["serving_default"]
    out = loaded(**batch)["probability"].numpy()
    np.testing.assert_allclose(out, model(batch, training=False).numpy(), atol=1e-5)
    # unknown ids land in the OOV rows, never an error
    unknown = dict(batch, item_id=tf.fill(tf.shape(batch["item_id"]), tf.constant(10**9, tf.int64)))
    assert np.all(np.isfinite(loaded(**unknown)["probability"].numpy()))
