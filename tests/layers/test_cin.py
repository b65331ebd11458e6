"""CIN (xDeepFM): golden values, the paper's equation on random weights, config and SavedModel."""
import numpy as np
import pytest

from recsys_tf.backend import keras, tf
from recsys_tf.layers.cin import CIN

X0 = tf.constant([[[1.0, 2.0], [3.0, 4.0]]])   # 1 example, m=2 fields, D=2


def test_golden_split_half():
    # Layer 1 (2 maps, all weights 1): map_h[d] = sum_i sum_j X0[i,d] X0[j,d] = (sum_i X0[i,d])^2
    #   = [(1+3)^2, (2+4)^2] = [16, 36] for both maps; one goes out (pooled 16+36 = 52), one on.
    # Layer 2 (1 map): sum_j X1[d] X0[j,d] = [16*4, 36*6] = [64, 216] -> pooled 280.
    cin = CIN((2, 1), split_half=True, kernel_initializer="ones")
    np.testing.assert_allclose(cin(X0).numpy(), [[52.0, 280.0]])
    assert cin.output_size == 2


def test_golden_no_split():
    # Both layer-1 maps go out (52, 52) and on: layer 2 = 2 * [64, 216] -> 560.
    cin = CIN((2, 1), split_half=False, kernel_initializer="ones")
    np.testing.assert_allclose(cin(X0).numpy(), [[52.0, 52.0, 560.0]])
    assert cin.output_size == 3


def _reference(x0, kernels, split_half):
    """Eq. 6 of the paper with explicit loops: X^k_h = sum_ij W^k_h[i,j] (X^{k-1}_i o X^0_j)."""
    b, m, d = x0.shape
    x, out = x0, []
    for k, w in enumerate(kernels):
        h_prev, h_k = x.shape[1], w.shape[1]
        w = w.reshape(h_prev, m, h_k)
        nxt = np.zeros((b, h_k, d))
        for h in range(h_k):
            for i in range(h_prev):
                for j in range(m):
                    nxt[:, h] += w[i, j, h] * x[:, i] * x0[:, j]
        last = k == len(kernels) - 1
        if split_half and not last:
            x, direct = nxt[:, : h_k // 2], nxt[:, h_k // 2:]
        else:
            x, direct = nxt, nxt
        out.append(direct.sum(axis=2))
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("split_half", [True, False])
def test_matches_equation_with_random_weights(split_half):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 4, 5)).astype(np.float32)
    cin = CIN((4, 2, 3), split_half=split_half)
    out = cin(x0).numpy()
    kernels = [w.numpy() for w in cin.kernels]
    np.testing.assert_allclose(out, _reference(x0.astype(np.float64), kernels, split_half),
                               rtol=1e-4, atol=1e-4)
    assert out.shape == (3, cin.output_size) == tuple(cin.compute_output_shape(x0.shape))
    assert cin.output_size == (2 + 1 + 3 if split_half else 4 + 2 + 3)


def test_bias_and_activation():
    cin = CIN((1,), use_bias=True, activation="relu", kernel_initializer="ones")
    cin(X0)
    cin.biases[0].assign([[-20.0]])
    # map = [16, 36] - 20 -> relu -> [0, 16] -> 16
    np.testing.assert_allclose(cin(X0).numpy(), [[16.0]])


def test_config_roundtrip_same_output(config_roundtrip):
    cin = CIN((4, 2), split_half=True, activation="tanh", use_bias=True, l2=1e-3)
    config_roundtrip(cin, tf.random.normal([2, 3, 4], seed=1))
    assert len(cin.losses) == 2   # the l2 on both kernels


def test_saved_model_roundtrip(saved_model_roundtrip):
    cin = CIN((4, 2))
    x = tf.random.normal([2, 3, 4], seed=2)
    np.testing.assert_allclose(saved_model_roundtrip(cin, x).numpy(), cin(x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_rejects_odd_sizes_with_split_half():
    with pytest.raises(ValueError, match="even"):
        CIN((3, 2), split_half=True)
    CIN((3, 2), split_half=False)
    CIN((4, 3), split_half=True)   # the last layer may be odd
    with pytest.raises(ValueError):
        CIN(())


def test_trains_in_a_model():
    x = np.random.default_rng(0).normal(size=(64, 3, 4)).astype(np.float32)
    y = (x[:, 0, 0] * x[:, 1, 0] > 0).astype(np.float32)
    inp = keras.Input((3, 4))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(CIN((4, 2))(inp)))
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
    hist = model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
