"""FM, MLP, Linear and FeatureEmbedding: golden values, OOV behaviour, config and SavedModel."""
import numpy as np
import pytest

from recsys_tf.backend import tf
from recsys_tf.features import Categorical, FeatureSet, Numeric, Sequence
from recsys_tf.layers.embedding import FeatureEmbedding
from recsys_tf.layers.fm import FM
from recsys_tf.layers.linear import Linear
from recsys_tf.layers.mlp import MLP

FS = FeatureSet([
    Categorical("color", vocabulary=["red", "green"], dim=2),
    Categorical("item", vocabulary=[10, 20, 30], dtype="int64", dim=2),
    Categorical("shop", hash_buckets=5, dim=2),
    Numeric("price", mean=1.0, std=2.0),
    Sequence("hist", of="item", max_len=3),
])
LINEAR_FEATURES = ["color", "item", "price", "hist"]

# color: known, unknown, known; item 99 and history id 99 are unknown; price NaN -> z = 0.
BATCH = {
    "color": tf.constant(["green", "blue", "red"]),
    "item": tf.constant([20, 99, 10], tf.int64),
    "shop": tf.constant(["s1", "never-seen", "s2"]),
    "price": tf.constant([5.0, float("nan"), 1.0]),
    "hist": tf.constant([[10, 30, 0], [0, 0, 0], [99, 0, 0]], tf.int64),
}


# -- FM --------------------------------------------------------------------------------------
V = tf.constant([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])


def test_fm_golden():
    # <v1,v2> + <v1,v3> + <v2,v3> = 11 + 17 + 39 = 67
    np.testing.assert_allclose(FM()(V).numpy(), [[67.0]])
    # per dimension: 0.5 * ((1+3+5)^2 - (1+9+25), (2+4+6)^2 - (4+16+36)) = [23, 44]
    np.testing.assert_allclose(FM(reduce_sum=False)(V).numpy(), [[23.0, 44.0]])


def test_fm_config_and_saved_model(saved_model_roundtrip):
    fm = FM.from_config(FM(reduce_sum=False).get_config())
    assert fm.reduce_sum is False
    out = saved_model_roundtrip(fm, V)
    np.testing.assert_allclose(out.numpy(), [[23.0, 44.0]])


# -- MLP -------------------------------------------------------------------------------------
def _constant_mlp(**kwargs):
    mlp = MLP((2, 1), **kwargs)
    mlp(tf.zeros([1, 3]))
    for dense in mlp.dense:
        dense.kernel.assign(tf.fill(dense.kernel.shape, 0.5))
        if dense.bias is not None:
            dense.bias.assign(tf.fill(dense.bias.shape, 0.1))
    return mlp


def test_mlp_golden():
    mlp = _constant_mlp()
    x = tf.constant([[1.0, -2.0, 3.0], [-1.0, -2.0, 0.0]])
    # row 1: 0.5 * 2 + 0.1 = 1.1 (x2 units) -> 0.5 * 2.2 + 0.1 = 1.2
    # row 2: 0.5 * -3 + 0.1 = -1.4 -> relu 0 -> 0 + 0.1 = 0.1
    np.testing.assert_allclose(mlp(x).numpy(), [[1.2], [0.1]], rtol=1e-6)


def test_mlp_dropout_only_when_training():
    mlp = _constant_mlp(dropout=0.5)
    x = tf.ones([64, 3])
    np.testing.assert_allclose(mlp(x, training=False).numpy(), mlp(x).numpy())
    assert not np.allclose(mlp(x, training=True).numpy(), mlp(x, training=False).numpy())


def test_mlp_empty_units_is_identity_and_rejects_bad_sizes():
    x = tf.constant([[1.0, 2.0]])
    np.testing.assert_allclose(MLP(())(x).numpy(), x.numpy())
    with pytest.raises(ValueError):
        MLP((4, 0))


def test_mlp_config_and_saved_model(config_roundtrip, saved_model_roundtrip):
    mlp = MLP((4, 2), dropout=0.1, batch_norm=True, l2=1e-3)
    x = tf.random.normal([5, 3], seed=0)
    y = mlp(x)
    config_roundtrip(mlp, x)
    out = saved_model_roundtrip(mlp, x)
    np.testing.assert_allclose(out.numpy(), y.numpy(), rtol=1e-5, atol=1e-6)


# -- Linear ----------------------------------------------------------------------------------
def _golden_linear():
    lin = Linear(FS, LINEAR_FEATURES)
    lin(BATCH)
    w = lin.weights_1d
    w.tables["color"].assign([[0.1], [0.2], [0.3]])        # rows: OOV, red, green
    w.tables["item"].assign([[1.0], [2.0], [3.0], [4.0]])  # rows: OOV, 10, 20, 30 (hist shares)
    w.field_vectors["price"].assign([0.5])
    lin.bias.assign([0.05])
    return lin


def test_linear_golden():
    lin = _golden_linear()
    expected = [
        0.3 + 3.0 + 0.5 * (5 - 1) / 2 + (2.0 + 4.0) / 2 + 0.05,  # green, 20, z=2, mean(10, 30)
        0.1 + 1.0 + 0.0 + 0.0 + 0.05,                            # OOV, OOV, NaN, empty history
        0.2 + 2.0 + 0.0 + 1.0 + 0.05,                            # red, 10, z=0, mean(OOV)
    ]
    np.testing.assert_allclose(lin(BATCH).numpy()[:, 0], expected, rtol=1e-6)


def test_linear_config_and_saved_model(config_roundtrip, saved_model_roundtrip):
    lin = _golden_linear()
    y = lin(BATCH)
    config_roundtrip(lin, BATCH)
    batch = {n: BATCH[n] for n in LINEAR_FEATURES}
    out = saved_model_roundtrip(lin, batch, FS.input_signature(LINEAR_FEATURES))
    np.testing.assert_allclose(out.numpy(), y.numpy(), rtol=1e-6)


# -- FeatureEmbedding: lookups and OOV ------------------------------------------------------
def test_embedding_oov_rows():
    emb = FeatureEmbedding(FS, ["color", "item", "shop", "hist"], dim=2)
    out = emb(BATCH)
    color, item = emb.tables["color"].numpy(), emb.tables["item"].numpy()
    np.testing.assert_allclose(out["color"].numpy(), color[[2, 0, 1]])      # green, OOV, red
    np.testing.assert_allclose(out["item"].numpy(), item[[2, 0, 1]])        # 20, OOV, 10
    # the sequence shares the item table; unknown 99 -> OOV row, padding 0 -> masked
    np.testing.assert_allclose(out["hist"].numpy()[2, 0], item[0])
    np.testing.assert_array_equal(emb.mask(BATCH, "hist").numpy(),
                                  [[True, True, False], [False] * 3, [True, False, False]])
    assert emb.tables.keys() == {"color", "item", "shop"}
    assert out["shop"].shape == (3, 2)
    idx = emb.lookup("shop", tf.constant(["a", "b", "never-seen", "x" * 100])).numpy()
    assert ((idx >= 0) & (idx < 5)).all()


def test_embedding_several_oov_buckets_and_sequence_mean():
    fs = FeatureSet([Categorical("c", vocabulary=["a"], num_oov=3, dim=4),
                     Sequence("s", of="c", max_len=2)])
    emb = FeatureEmbedding(fs, ["c", "s"], sequence="mean")
    idx = emb.lookup("c", tf.constant(["a", "u1", "u2", "u3", "u4"])).numpy()
    assert idx[0] == 3 and ((idx[1:] >= 0) & (idx[1:] < 3)).all()
    out = emb({"c": tf.constant(["a"]), "s": tf.constant([["a", ""]])})
    table = emb.tables["c"].numpy()
    np.testing.assert_allclose(out["s"].numpy()[0], table[3], rtol=1e-6)   # padding ignored
    assert out["c"].shape == (1, 4)


def test_fused_mean_pooling_matches_the_per_position_path():
    """The fused layer pools a sequence through its distinct ids (one sparse product); the
    values, the L2 penalty and the gradient equal those of masked_mean over every position."""
    from recsys_tf.layers.embedding import masked_mean

    fs = FeatureSet([Categorical("item", vocabulary=[10, 20, 30], dtype="int64", dim=3),
                     Sequence("hist", of="item", max_len=4)])
    hist = tf.constant([[10, 30, 10, 0], [0, 0, 0, 0], [99, 20, 20, 30]], tf.int64)
    emb = FeatureEmbedding(fs, ["hist"], dim=3, sequence="mean", fused=True,
                           embeddings_l2=0.1)
    emb({"hist": hist})
    table = emb.fused_tables["3d"]
    table.assign(np.random.default_rng(0).normal(size=table.shape).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        got = emb({"hist": hist})["hist"]
        loss = tf.reduce_sum(got * tf.constant([[1.0, 2.0, 3.0]])) + tf.add_n(emb.losses)
        e = tf.gather(table, emb.ids({"hist": hist}, "hist") + emb._offset["item"])
        want = masked_mean(e, emb.mask({"hist": hist}, "hist"))
        penalty = 0.1 * tf.reduce_sum(tf.square(e)) / 3.0
        ref = tf.reduce_sum(want * tf.constant([[1.0, 2.0, 3.0]])) + penalty
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.numpy()[1], 0.0)                       # empty history
    np.testing.assert_allclose(float(tf.add_n(emb.losses)), float(penalty), rtol=1e-5)
    g_got = tf.convert_to_tensor(tape.gradient(loss, table))
    g_ref = tf.convert_to_tensor(tape.gradient(ref, table))
    np.testing.assert_allclose(g_got.numpy(), g_ref.numpy(), rtol=1e-5, atol=1e-6)


def test_embedding_l2_penalty():
    emb = FeatureEmbedding(FS, ["color"], dim=2, embeddings_l2=0.5)
    emb({"color": tf.constant(["red", "red"])})
    emb.tables["color"].assign([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    emb({"color": tf.constant(["red", "red"])})
    # 0.5 * sum of squares of the 2 looked-up rows / batch 2 = 0.5 * 10 / 2
    np.testing.assert_allclose(float(emb.losses[-1]), 2.5, rtol=1e-6)
