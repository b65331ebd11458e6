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


def test_export_one_user_signature_repeats_the_users_row(beauty, batch, trained_dien, tmp_path):
    """DIEN takes raw inputs only: ``one_user`` repeats the user's raw row in the graph."""
    from recsys_tf.export import export_ranker

    model = trained_dien[0]
    fs = beauty.feature_set
    sigs = tf.saved_model.load(export_ranker(model, str(tmp_path), "dien")).signatures
    once = {n: batch[n][2:3] for n in model.features if fs[n].role != "item"}   # has a history
    assert once and set(once) != set(model.features)
    got = sigs["one_user"](**{**{n: batch[n] for n in model.features}, **once})
    repeated = {n: tf.repeat(v, 16, axis=0) for n, v in once.items()}
    want = model({**batch, **repeated}, training=False).numpy()
    np.testing.assert_allclose(got["probability"].numpy(), want, atol=1e-5)


def shortened(batch, length):
    """``batch`` with every history cut to its first ``length`` behaviours."""
    out = dict(batch)
    for name in ("history", "history_category"):
        ids = batch[name].numpy().copy()
        ids[:, length:] = 0
        out[name] = tf.constant(ids)
    return out


@pytest.mark.parametrize("evolution,length", [("augru", 20), ("agru", 20), ("aigru", 20),
                                              ("augru", 3), ("aigru", 6)])
def test_fused_recurrences_match_the_keras_layers(beauty, batch, evolution, length):
    """The fused GRU / AUGRU paths give the Keras layers' outputs and gradients; with short
    histories (``length`` < 20) the fused path cuts the batch after its longest one and skips
    the padded steps, which must change nothing."""
    batch = shortened(batch, length)
    fused = DIEN(beauty.feature_set, evolution=evolution, gru_units=6, aux_loss_weight=0.0,
                 **SMALL)
    reference = DIEN(beauty.feature_set, evolution=evolution, gru_units=6, aux_loss_weight=0.0,
                     fused_rnn=False, **SMALL)
    fused(batch)
    reference(batch)
    rng = np.random.default_rng(0)
    weights = [w + rng.normal(0.0, 0.3, w.shape).astype(w.dtype) for w in fused.get_weights()]
    fused.set_weights(weights)
    reference.set_weights(weights)
    grads = []
    for model in (fused, reference):
        with tf.GradientTape() as tape:
            p = model(batch, training=True)
            loss = tf.reduce_sum(p * tf.range(1.0, 17.0))
        grads.append(tape.gradient(loss, model.trainable_variables))
        np.testing.assert_allclose(p.numpy(), reference(batch, training=False).numpy(), atol=1e-5)
    for variable, a, b in zip(fused.trainable_variables, *grads):
        if a is None and b is None:             # the unused aux projection (no aux loss)
            continue
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(),
                                   atol=2e-5, err_msg=variable.name)


@pytest.mark.parametrize("gated,sequences", [(True, True), (True, False), (False, False)])
def test_recurrence_skips_the_padded_steps_exactly(gated, sequences):
    """With ``extent`` (and with a shorter, dynamic length plus ``steps``) the states and the
    gradients equal the full recurrence's; the weight's gradient may differ only where the
    weight is padding (there it is 0)."""
    from recsys_tf.layers.augru import extent_of, recurrence

    rng = np.random.default_rng(3)
    b, L, H = 5, 9, 4
    k = 3 if gated else 2
    projected = tf.constant(rng.normal(size=(b, L, k * H)), tf.float32)
    real = np.arange(L)[None, :] < np.array([0, 2, 5, 1, 3])[:, None]     # extent 5 of 9
    weight = tf.constant(real * rng.uniform(0.2, 1.0, (b, L)), tf.float32)
    kernel = tf.constant(rng.normal(size=(H, k * H)), tf.float32)
    bias = tf.constant(rng.normal(size=H), tf.float32)
    extent = extent_of(real)
    assert int(extent) == 5

    def run(p, w, **kw):
        with tf.GradientTape() as tape:
            tape.watch([p, w, kernel, bias])
            out = recurrence(p, w, kernel, bias, gated=gated, return_sequences=sequences, **kw)
            if sequences:
                out = out[:, :6]                         # what the cut run below returns
            loss = tf.reduce_sum(out * out) + tf.reduce_sum(tf.sin(out))
        return out, tape.gradient(loss, [p, w, kernel, bias])

    full, full_grads = run(projected, weight)
    for cut in (False, True):
        if cut:   # a dynamic length of 6 steps unrolled over a bound of 9
            fn = tf.function(lambda p, w: run(p, w, extent=extent, block=2, steps=L),
                             input_signature=[tf.TensorSpec([None, None, k * H]),
                                              tf.TensorSpec([None, None])])
            got, grads = fn(projected[:, :6], weight[:, :6])
            grads = [tf.pad(grads[0], [[0, 0], [0, L - 6], [0, 0]]),
                     tf.pad(grads[1], [[0, 0], [0, L - 6]])] + grads[2:]
        else:
            got, grads = run(projected, weight, extent=extent, block=2)
        np.testing.assert_allclose(got.numpy(), full.numpy(), atol=1e-6)
        for i, (g, w) in enumerate(zip(grads, full_grads)):
            g, w = tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(w).numpy()
            if i == 1:                                   # d weight: compared where real
                g, w = g * real, w * real
            np.testing.assert_allclose(g, w, atol=1e-5, err_msg=str(i))


def test_fused_sequences_match_keras_rnn_with_masks():
    from recsys_tf.layers.augru import AUGRUCell, keras_gru_sequence

    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(4, 6, 3)), tf.float32)
    a = tf.constant(rng.uniform(size=(4, 6)), tf.float32)
    mask = tf.constant(np.array([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1], [0] * 6, [1] * 6], bool))
    gru = keras.layers.GRU(5, return_sequences=True)
    gru.build(x.shape)
    gru.cell.bias.assign(rng.normal(size=(2, 15)))
    np.testing.assert_allclose(keras_gru_sequence(gru, x, mask).numpy(),
                               gru(x, mask=mask).numpy(), atol=1e-6)
    for mode in ("augru", "agru", "aigru"):
        cell = AUGRUCell(5, mode=mode)
        rnn = keras.layers.RNN(cell, return_sequences=True)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, a])
            expected = rnn(tf.concat([x, a[..., None]], -1), mask=mask)
            states = cell.sequence(x, a, mask)
            last = cell.sequence(x, a, mask, return_sequences=False)
            losses = [tf.reduce_sum(expected[:, -1] ** 2), tf.reduce_sum(last ** 2)]
        np.testing.assert_allclose(states.numpy(), expected.numpy(), atol=1e-6)
        np.testing.assert_allclose(last.numpy(), expected.numpy()[:, -1], atol=1e-6)
        np.testing.assert_array_equal(last.numpy()[2], np.zeros(5))       # empty history
        for ref, got in zip(tape.gradient(losses[0], [x, a] + cell.weights),
                            tape.gradient(losses[1], [x, a] + cell.weights)):
            np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(),
                                       tf.convert_to_tensor(ref).numpy(), atol=1e-5)


def test_attention_mlp_matches_the_concatenated_units():
    from recsys_tf.layers.attention import TargetAttention

    rng = np.random.default_rng(2)
    keys = tf.constant(rng.normal(size=(3, 5, 4)), tf.float32)
    query = tf.constant(rng.normal(size=(3, 6)), tf.float32)     # projected to the key size
    att = TargetAttention((8, 4), normalization="none")
    _, weights = att([keys, query], mask=None)
    t = tf.broadcast_to(att.query_projection(query)[:, None, :], keys.shape)
    units = tf.concat([keys, t, keys - t, keys * t], axis=-1)
    expected = tf.squeeze(att.out(att.mlp(units)), -1)
    np.testing.assert_allclose(weights.numpy(), expected.numpy(), atol=1e-5)


def test_aux_loss_positive_term_by_hand(beauty, batch):
    """Every behaviour the same item: each drawn negative is the real next item and is dropped,
    leaving mean_t -log sigmoid(<h_t, e_b[t+1]>) over steps t with a real t + 1."""
    model = DIEN(beauty.feature_set, embeddings_l2=0.0, **SMALL)
    same = dict(batch)
    lengths = np.array([0, 1, 2, 5, 20] + [3] * 11)
    real = np.arange(20)[None, :] < lengths[:, None]
    same["history"] = tf.constant(np.where(real, batch["item_id"].numpy()[0], 0))
    same["history_category"] = tf.constant(np.where(real, batch["category"].numpy()[0], 0))
    model(same, training=True)
    behaviors, mask, _, _ = model.embed(same)
    h = model.extractor(behaviors, mask=mask).numpy()
    e = behaviors.numpy()
    terms = [np.log1p(np.exp(-h[b, t] @ e[b, t + 1])) for b in range(16)
             for t in range(19) if real[b, t] and real[b, t + 1]]
    np.testing.assert_allclose(float(model.losses[0]), np.mean(terms), rtol=1e-5)


@pytest.mark.parametrize("dataset", ["amazon-beauty", "synthetic"])
def test_cli_train_writes_metrics_and_an_export_that_reloads(dataset, data_dir, tmp_path):
    from recsys_tf import metrics
    from recsys_tf.cli import main

    if dataset == "amazon-beauty":
        options = ["--data-dir", data_dir, "--data-option", "max_users=300"]
    else:
        options = ["--data-option", "n_users=60", "--data-option", "n_items=50",
                   "--data-option", "n_train=2000", "--data-option", "n_test=400"]
    out = tmp_path / "m.json"
    assert main(["train", "dien", "--data", dataset, *options, "--epochs", "1",
                 "--model-option", "dim=4", "--model-option", "dnn_units=[8]",
                 "--model-option", "attention_units=[8]", "--metrics-out", str(out),
                 "--export-dir", str(tmp_path / "sm")]) == 0
    m = json.loads(out.read_text())
    for key in ("model", "dataset", "n_train", "n_test", "train_seconds",
                "train_examples_per_sec", "auc", "logloss", "gauc"):
        assert key in m, key
    assert m["model"] == "dien" and m["dataset"] == dataset
    # the export takes raw features and scores the test split exactly as the trained model did
    from recsys_tf.data import load

    opts = {"max_users": 300} if dataset == "amazon-beauty" else dict(
        n_users=60, n_items=50, n_train=2000, n_test=400, seed=0)
    ds = load(dataset, data_dir if dataset == "amazon-beauty" else None, **opts)
    fn = tf.saved_model.load(m["export_path"]).signatures["serving_default"]
    x = ds.feature_set.arrays(ds.test, list(fn.structured_input_signature[1]))
    p = fn(**{k: tf.constant(v) for k, v in x.items()})["probability"].numpy()
    y = ds.test[ds.feature_set.label].to_numpy()
    assert metrics.auc(y, p) == pytest.approx(m["auc"], abs=1e-6)
    assert metrics.logloss(y, p) == pytest.approx(m["logloss"], abs=1e-5)
