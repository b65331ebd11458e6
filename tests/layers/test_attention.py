import numpy as np
import pytest

from recsys_tf.backend import tf
from recsys_tf.layers.attention import TargetAttention


def data(seed=0, b=3, L=5, d=4):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(b, L, d)).astype(np.float32)
    query = rng.normal(size=(b, d)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)[:b]
    return keys, query, mask


def test_mlp_scores_match_the_local_activation_unit():
    keys, query, mask = data()
    att = TargetAttention((6,), normalization="none")
    _, w = att([keys, query], mask=mask)
    dense0 = att.mlp.dense[0]
    W0, b0 = dense0.kernel.numpy(), dense0.bias.numpy()
    w1, b1 = att.out.kernel.numpy(), att.out.bias.numpy()
    t = np.broadcast_to(query[:, None], keys.shape)
    units = np.concatenate([keys, t, keys - t, keys * t], -1)
    s = (1 / (1 + np.exp(-(units @ W0 + b0)))) @ w1 + b1
    np.testing.assert_allclose(w.numpy(), s[..., 0] * mask, atol=1e-5)


def test_softmax_over_real_positions_and_pooling():
    keys, query, mask = data()
    pooled, w = TargetAttention((6,), normalization="softmax")([keys, query], mask=mask)
    w = w.numpy()
    np.testing.assert_allclose(w.sum(1), [1.0, 0.0, 1.0], atol=1e-6)
    assert np.all(w[~mask] == 0)
    np.testing.assert_allclose(pooled.numpy(), np.einsum("bl,bld->bd", w, keys), atol=1e-5)
    # empty row: zero weights, zero vector, no NaN
    np.testing.assert_array_equal(pooled.numpy()[1], np.zeros(4))


def test_padding_content_does_not_matter():
    keys, query, mask = data()
    att = TargetAttention((6,), normalization="softmax")
    p1, w1 = att([keys, query], mask=mask)
    noisy = keys.copy()
    noisy[~mask] = 100.0
    p2, w2 = att([noisy, query], mask=mask)
    np.testing.assert_allclose(p1.numpy(), p2.numpy(), atol=1e-6)
    np.testing.assert_allclose(w1.numpy(), w2.numpy(), atol=1e-6)


def test_sigmoid_bilinear_and_query_projection():
    keys, query, mask = data()
    att = TargetAttention(normalization="sigmoid", score="bilinear")
    _, w = att([keys, query], mask=mask)
    s = np.einsum("bld,de,be->bl", keys, att.bilinear.numpy(), query)
    np.testing.assert_allclose(w.numpy(), 1 / (1 + np.exp(-s)) * mask, atol=1e-5)
    wide_query = np.concatenate([query, query], -1)      # d_q = 8 != d_k = 4
    pooled, w = TargetAttention((6,))([keys, wide_query], mask=mask)
    assert pooled.shape == (3, 4) and w.shape == (3, 5)


def test_graph_mode_config_and_errors():
    keys, query, mask = data()
    att = TargetAttention((6,), normalization="softmax")
    eager = att([keys, query], mask=mask)[1].numpy()
    graph = tf.function(lambda k, q, m: att([k, q], mask=m)[1])(keys, query, mask).numpy()
    np.testing.assert_allclose(eager, graph, atol=1e-6)
    again = TargetAttention.from_config(att.get_config())
    assert again.get_config() == att.get_config()
    with pytest.raises(ValueError, match="normalization"):
        TargetAttention(normalization="max")
    with pytest.raises(ValueError, match="score"):
        TargetAttention(score="cosine")
