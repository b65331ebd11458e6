"""The rankers' fast training path: encoded inputs, fused embedding tables, LazyAdam,
bfloat16 compute, the index-gather input pipeline and train_ranker's defaults."""
import numpy as np
import pandas as pd
import pytest

from recsys_tf import training
from recsys_tf.backend import keras, tf
from recsys_tf.layers.embedding import CAT_KEY, NUM_KEY, FeatureEmbedding, id_key, is_encoded
from recsys_tf.models.dcn_v2 import DCNv2
from recsys_tf.models.deepfm import DeepFM
from recsys_tf.models.wide_deep import WideDeep
from recsys_tf.models.xdeepfm import XDeepFM

from test_rankers import FS, OOV_BATCH, X, Y  # noqa: E402  (tests/models is on sys.path)

BATCH = {k: tf.constant(v[:8]) for k, v in X.items()}
MODELS = {
    "deepfm": lambda **kw: DeepFM(FS, dim=4, dnn_units=(8,), **kw),
    "xdeepfm": lambda **kw: XDeepFM(FS, dim=4, cin_sizes=(4, 2), dnn_units=(8,), **kw),
    "xdeepfm_ids_only": lambda **kw: XDeepFM(FS, dim=4, cin_sizes=(4, 2), dnn_units=(8,),
                                             cin_features=["user_id", "item_id", "history"],
                                             **kw),
    "dcn_v2": lambda **kw: DCNv2(FS, dim=None, cross_layers=2, dnn_units=(8,), **kw),
    "dcn_v2_low_rank": lambda **kw: DCNv2(FS, dim=4, cross_layers=2, projection_dim=2,
                                          structure="parallel", dnn_units=(8,), **kw),
    "wide_deep": lambda **kw: WideDeep(FS, crosses=[("user_id", "category")], cross_buckets=16,
                                       dim=4, dnn_units=(8,), **kw),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_encoded_inputs_give_the_raw_inputs_result(name):
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    raw = model(BATCH).numpy()
    enc = model.encode_inputs(BATCH)
    assert is_encoded(enc) and enc[CAT_KEY].dtype == tf.int32
    np.testing.assert_allclose(model(enc).numpy(), raw, rtol=1e-6, atol=1e-7)
    oov = model.encode_inputs(OOV_BATCH)
    np.testing.assert_allclose(model(oov).numpy(), model(OOV_BATCH).numpy(), atol=1e-7)


def test_fused_embedding_equals_separate_tables():
    names = FS.names
    kw = dict(dim=4, numeric="field", sequence="mean", embeddings_l2=1e-3)
    sep = FeatureEmbedding(FS, names, **kw)
    fused = FeatureEmbedding(FS, names, fused=True, **kw)
    sep(BATCH), fused(BATCH)
    # copy the separate tables into the fused ones at their offsets
    for d, var in fused.fused_tables.items():
        rows = var.numpy()
        for t, off in fused._offset.items():
            if f"{fused.table_dim(t)}d" == d:
                tab = sep.tables[t].numpy()
                rows[off:off + len(tab)] = tab
        var.assign(rows)
    fused.field_matrix.assign(np.stack([sep.field_vectors[n].numpy() for n in fused._numeric]))
    a, b = sep(BATCH), fused(BATCH)
    for n in names:
        np.testing.assert_allclose(b[n].numpy(), a[n].numpy(), rtol=1e-6)
    np.testing.assert_allclose(fused.fields(BATCH).numpy(), sep.stack(a).numpy(), rtol=1e-6)
    np.testing.assert_allclose(fused.flat(BATCH).numpy(), sep.flat(BATCH).numpy(), rtol=1e-6)
    np.testing.assert_allclose(fused.fields(fused.encode(BATCH)).numpy(),
                               fused.fields(BATCH).numpy(), rtol=1e-6)
    assert sum(fused.losses).numpy() == pytest.approx(sum(sep.losses).numpy(), rel=1e-5)
    enc = fused.encode(BATCH)
    assert enc[NUM_KEY].shape == (8, 1) and enc[CAT_KEY].shape == (8, 3)
    assert enc[id_key("history")].numpy().min() >= -1


def test_lazy_adam_moves_only_the_rows_it_saw():
    table = tf.Variable(np.ones((6, 2), np.float32))
    dense = tf.Variable(np.ones(3, np.float32))
    ref_table = tf.Variable(np.ones((6, 2), np.float32))
    ref_dense = tf.Variable(np.ones(3, np.float32))
    lazy, adam = training.LazyAdam(0.1), keras.optimizers.Adam(0.1)
    for ids in ([1, 3, 1], [1, 4]):
        for opt, t, d in ((lazy, table, dense), (adam, ref_table, ref_dense)):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(t, ids) * 2.0) + tf.reduce_sum(d * d)
            opt.apply_gradients(zip(tape.gradient(loss, [t, d]), [t, d]))
    np.testing.assert_allclose(dense.numpy(), ref_dense.numpy(), rtol=1e-5)  # dense: Adam
    got = table.numpy()
    np.testing.assert_array_equal(got[[0, 2, 5]], 1.0)                      # never looked up
    np.testing.assert_allclose(got[1], ref_table.numpy()[1], rtol=1e-5)     # seen every step
    assert (got[3] < 1).all() and (got[4] < 1).all()
    # Keras' Adam keeps moving row 3 at step 2 (momentum); the lazy one leaves it alone
    assert ref_table.numpy()[3, 0] < got[3, 0]


def test_lazy_adam_sparse_multiplier_scales_only_the_table_rows():
    """Rows step as LazyAdam at ``lr * multiplier`` would move them, dense weights as at
    ``lr``; the multiplier survives ``get_config``."""
    ids = ([0, 2, 2], [2, 3])
    results = {}
    for key, lr, mult in (("scaled", 0.01, 4.0), ("table_ref", 0.04, 1.0),
                          ("dense_ref", 0.01, 1.0)):
        opt = training.LazyAdam(lr, sparse_multiplier=mult)
        table = tf.Variable(np.arange(10, dtype=np.float32).reshape(5, 2) / 10)
        dense = tf.Variable(np.array([0.5, -1.0, 2.0], np.float32))
        for batch in ids:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(table, batch) ** 2) + tf.reduce_sum(dense ** 3)
            opt.apply_gradients(zip(tape.gradient(loss, [table, dense]), [table, dense]))
        results[key] = (table.numpy(), dense.numpy())
    np.testing.assert_allclose(results["scaled"][0], results["table_ref"][0], rtol=1e-6)
    np.testing.assert_allclose(results["scaled"][1], results["dense_ref"][1], rtol=1e-6)
    assert not np.allclose(results["scaled"][0], results["dense_ref"][0])
    config = training.LazyAdam(0.01, sparse_multiplier=4.0).get_config()
    assert training.LazyAdam.from_config(config).sparse_multiplier == 4.0
    with pytest.raises(ValueError, match="sparse_multiplier=0"):
        training.LazyAdam(0.01, sparse_multiplier=0)
    made = training.ranker_optimizer(None, 1e-3, "lazy_adam", embedding_lr_multiplier=2.5)
    assert made.sparse_multiplier == 2.5
    assert training.ranker_optimizer(None, 1e-3).sparse_multiplier == \
        training.EMBEDDING_LR_MULTIPLIER


def test_fused_adam_makes_keras_adams_updates():
    """Dense gradients, and sparse ones with repeated and with absent rows."""
    rng = np.random.default_rng(0)
    start = rng.normal(size=(12, 3)).astype(np.float32)
    ids = [[1, 1, 4, 7], [2, 2, 2, 9, 4], [0, 11]]
    weights = []
    for opt in (training.FusedAdam(0.05), keras.optimizers.Adam(0.05)):
        table, dense = tf.Variable(start), tf.Variable(start[0])
        for step, batch in enumerate(ids):
            with tf.GradientTape() as tape:
                loss = (tf.reduce_sum(tf.gather(table, batch) ** 2 * (step + 1.0))
                        + tf.reduce_sum(tf.sin(dense)))
            opt.apply_gradients(zip(tape.gradient(loss, [table, dense]), [table, dense]))
        weights.append((table.numpy(), dense.numpy()))
    for got, want in zip(*weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(weights[0][0], start)          # the step did move the weights
    assert type(training.ranker_optimizer(None, 1e-3, "adam")) is training.FusedAdam
    assert type(training.ranker_optimizer(None, 1e-3, "keras_adam")) is keras.optimizers.Adam


@pytest.mark.parametrize("name", ["deepfm", "wide_deep"])
def test_train_ranker_traces_the_training_step_once(name, tiny_synthetic):
    """Weights, metrics and optimizer slots exist before fit, so tf.function does not
    retrace the step after creating them."""
    keras.utils.set_random_seed(0)
    fs = tiny_synthetic.feature_set
    model = (DeepFM(fs, dim=4, dnn_units=(8,)) if name == "deepfm"
             else WideDeep(fs, dim=4, dnn_units=(8,)))
    training.train_ranker(model, tiny_synthetic, epochs=1, batch_size=256, verbose=0)
    assert model.train_function.experimental_get_tracing_count() == 1


def test_length_sorted_batches_cover_every_row_and_group_lengths():
    n, batch = 1000, 50
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 21, n)
    data = training.index_batches(n, batch, shuffle=True, seed=1, lengths=lengths, window=4)
    epochs = [[b.numpy() for b in data] for _ in range(2)]
    for batches in epochs:
        rows = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(rows), np.arange(n))       # every row once
        assert [len(b) for b in batches] == [batch] * (n // batch)
        # sorted within windows of 4 batches: a batch spans a quarter of the lengths or so
        spread = np.mean([np.ptp(lengths[b]) for b in batches])
        assert spread < 8, spread                       # random batches: about 19
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    with pytest.raises(ValueError, match="lengths has 3 values for 1000 rows"):
        training.index_batches(n, batch, shuffle=True, lengths=[1, 2, 3])


def test_sequence_lengths_is_the_extent_of_the_real_steps():
    x = {"history": np.array([[5, 0, 0], [5, 0, 7], [0, 0, 0]])}          # 0 pads
    np.testing.assert_array_equal(training.sequence_lengths(FS, x, "history"), [1, 3, 0])


@pytest.mark.parametrize("name", ["deepfm", "xdeepfm", "dcn_v2", "wide_deep"])
def test_bfloat16_compute_is_close_and_configurable(name):
    keras.utils.set_random_seed(1)
    full = MODELS[name]()
    low = MODELS[name](compute_dtype="bfloat16")
    full(BATCH), low(BATCH)
    low.set_weights(full.get_weights())
    np.testing.assert_allclose(low(BATCH).numpy(), full(BATCH).numpy(), atol=2e-2)
    config = low.get_config()
    assert config["compute_dtype"] == "bfloat16"
    assert type(low).from_config(config).get_config() == config
    assert MODELS[name](compute_dtype="auto").get_config()["compute_dtype"] in ("float32",
                                                                               "bfloat16")


def test_make_dataset_batches_every_row_once_per_epoch():
    frame = pd.DataFrame({n: list(v) if v.ndim > 1 else v for n, v in X.items()})
    frame["label"] = Y
    data = training.make_dataset(FS, frame, FS.names, 64, "label", shuffle=True, seed=3)
    for _ in range(2):
        prices = np.concatenate([x["price"].numpy() for x, _ in data])
        np.testing.assert_array_equal(np.sort(prices), np.sort(X["price"]))
    ordered = training.make_dataset(FS, frame, FS.names, 64)
    np.testing.assert_array_equal(np.concatenate([x["price"].numpy() for x in ordered]),
                                  X["price"])


def test_train_ranker_defaults(tiny_synthetic):
    keras.utils.set_random_seed(0)
    model = DeepFM(tiny_synthetic.feature_set, dim=4, dnn_units=(8,))
    fit = training.train_ranker(model, tiny_synthetic, epochs=2, batch_size=128, verbose=0)
    assert type(model.optimizer).__name__ == "LazyAdam"
    assert int(model._steps_per_execution.numpy()) == 16
    assert {"loss", "val_auc", "val_loss"} <= set(fit["history"])
    scores = training.evaluate_ranker(model, tiny_synthetic)
    assert scores["auc"] > 0.55
    wd = WideDeep(tiny_synthetic.feature_set, dim=4, dnn_units=(8,))
    training.train_ranker(wd, tiny_synthetic, epochs=1, batch_size=256, verbose=0)
    assert [type(o).__name__ for o in wd.optimizer] == ["Ftrl", "LazyAdam"]
    assert wd.optimizer[1].sparse_multiplier == training.EMBEDDING_LR_MULTIPLIER


def test_wide_part_packs_the_per_feature_inputs():
    keras.utils.set_random_seed(4)
    model = MODELS["wide_deep"]()
    model(BATCH)
    rng = np.random.default_rng(0)
    for v in model.linear_model.trainable_variables:        # distinct weights everywhere
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    got = model.linear_model(model.linear_inputs(BATCH)).numpy()[:, 0]
    packed = model.linear_inputs(BATCH)
    assert sorted(packed) == ["numeric", "one_hot"]
    kernel = {name: layer.kernel.numpy()[:, 0]                 # LinearModel: sorted input names
              for name, layer in zip(sorted(packed), model.linear_model.dense_layers)}
    # the same sum, feature by feature, from the per-feature inputs and the kernel's row blocks
    per_feature = model.wide_inputs(BATCH)
    singles, _, offsets, cross_offsets, sequences, sequence_offsets, _ = model._layout
    assert sequences == ("history",)
    total = model.linear_model.bias.numpy()[0] * np.ones(8)
    blocks = (list(zip(singles, offsets)) + [("user_id_x_category", cross_offsets[0])]
              + list(zip(sequences, sequence_offsets)))
    for n, off in blocks:
        x = tf.sparse.to_dense(per_feature[n]).numpy()
        total = total + x @ kernel["one_hot"][off:off + x.shape[1]]
    total = total + per_feature["price"].numpy()[:, 0] * kernel["numeric"][0]
    np.testing.assert_allclose(got, total, rtol=1e-5, atol=1e-5)
    # the public split: logit = wide_logit + the deep part's logit
    np.testing.assert_allclose(model.wide_logit(BATCH).numpy(), total, rtol=1e-5, atol=1e-5)
    deep = model.dnn_model(BATCH).numpy().reshape(-1)
    np.testing.assert_allclose(model.logit(BATCH).numpy().reshape(-1), total + deep,
                               rtol=1e-5, atol=1e-5)


def test_xdeepfm_cin_features():
    keras.utils.set_random_seed(5)
    model = MODELS["xdeepfm_ids_only"]()
    model(BATCH)
    assert model.cin.kernels[0].shape == (3 * 3, 4)          # 3 fields crossed, not 5
    assert XDeepFM.from_config(model.get_config()).cin_features == ["user_id", "item_id",
                                                                     "history"]
    with pytest.raises(ValueError, match="not one of"):
        XDeepFM(FS, cin_features=["nope"])


def _linear_pair(monkeypatch, max_rows):
    """The stock LinearModel and ours, with the same weights, on a sparse + a dense input."""
    from recsys_tf.models import wide_deep

    monkeypatch.setattr(wide_deep, "DENSE_GRADIENT_MAX_ROWS", max_rows)
    rng = np.random.default_rng(0)
    sparse = tf.SparseTensor([[0, 1], [0, 1], [0, 7], [2, 3], [3, 0], [3, 9]],   # row 1 empty
                             np.array([1.0, 1.0, 0.0, 2.0, 1.0, 0.5], np.float32), [4, 10])
    inputs = {"one_hot": sparse, "numeric": tf.constant(rng.normal(size=(4, 2)), tf.float32)}
    stock = keras.experimental.LinearModel(units=1)
    ours = wide_deep.WideLinearModel(units=1)
    for m in (stock, ours):
        m(inputs)
    for a, b in zip(stock.weights, ours.weights):
        b.assign(rng.normal(size=a.shape).astype(np.float32))
        a.assign(b)
    return stock, ours, inputs


@pytest.mark.parametrize("max_rows", [1 << 16, 0])
def test_wide_linear_model_is_the_linear_model(monkeypatch, max_rows):
    """Same outputs, same gradients (dense for a small kernel, Keras' sparse ones above
    ``DENSE_GRADIENT_MAX_ROWS``) and the same FTRL step as keras.experimental.LinearModel."""
    stock, ours, inputs = _linear_pair(monkeypatch, max_rows)
    np.testing.assert_allclose(ours(inputs).numpy(), stock(inputs).numpy(), rtol=1e-6)
    grads = []
    for m in (stock, ours):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(m(inputs)))
        grads.append(tape.gradient(loss, m.trainable_variables))
    one_hot = [layer for layer in ours.dense_layers if layer.name == "one_hot"][0]
    kernel = [v is one_hot.kernel for v in ours.trainable_variables].index(True)
    assert isinstance(grads[1][kernel], tf.IndexedSlices) == (max_rows == 0)
    for g_stock, g_ours in zip(*grads):
        np.testing.assert_allclose(tf.convert_to_tensor(g_ours).numpy(),
                                   tf.convert_to_tensor(g_stock).numpy(), rtol=1e-5, atol=1e-6)
    for m, g in zip((stock, ours), grads):
        keras.optimizers.Ftrl(0.1).apply_gradients(zip(g, m.trainable_variables))
    for a, b in zip(stock.weights, ours.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Missing keys"):
        ours({"one_hot": inputs["one_hot"]})
