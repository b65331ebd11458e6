"""CrossNetwork (DCN-v2): golden values for full rank, low rank and experts; config; SavedModel."""
import math

import numpy as np
import pytest

from recsys_tf.backend import keras, tf
from recsys_tf.layers.cross import CrossMoE, CrossNetwork

X0 = tf.constant([[1.0, 2.0]])


def const(v):
    return keras.initializers.Constant(v)


def test_golden_full_rank_two_layers():
    # W = ones(2x2), b = 0.1, x0 = [1, 2]
    # x1 = x0 * (W x0 + b) + x0 = [1, 2] * 3.1 + [1, 2] = [4.1, 8.2]
    # x2 = x0 * (W x1 + b) + x1 = [1, 2] * 12.4 + [4.1, 8.2] = [16.5, 33.0]
    net = CrossNetwork(2, kernel_initializer="ones", bias_initializer=const(0.1))
    np.testing.assert_allclose(net(X0).numpy(), [[16.5, 33.0]], rtol=1e-6)


def test_golden_low_rank():
    # rank 1, every entry 0.5, b = 0.1: project x0 to 0.5 * (1 + 2) = 1.5, back to 0.5 * 1.5 = 0.75
    # x1 = [1, 2] * (0.75 + 0.1) + [1, 2] = [1.85, 3.7]
    net = CrossNetwork(1, projection_dim=1, kernel_initializer=const(0.5),
                       bias_initializer=const(0.1))
    np.testing.assert_allclose(net(X0).numpy(), [[1.85, 3.7]], rtol=1e-6)


def test_golden_without_bias():
    # x1 = [1, 2] * 3 + [1, 2] = [4, 8]
    net = CrossNetwork(1, use_bias=False, kernel_initializer="ones")
    np.testing.assert_allclose(net(X0).numpy(), [[4.0, 8.0]])
    assert len(net.weights) == 1


def test_golden_mixture_of_experts():
    # Every matrix 0.5 (d=2, r=1, 2 identical experts -> gates 1/2 each), b = 0.1, g = tanh:
    # h = tanh(0.5 * 3); h = tanh(0.5 * h); expert = 0.5 * h
    h = math.tanh(0.5 * math.tanh(0.5 * 3.0))
    mix = 0.5 * h + 0.1
    net = CrossNetwork(1, projection_dim=1, num_experts=2, kernel_initializer=const(0.5),
                       bias_initializer=const(0.1))
    np.testing.assert_allclose(net(X0).numpy(), [[1 * mix + 1, 2 * mix + 2]], rtol=1e-6)


def test_experts_are_mixed_by_the_gate():
    # Two experts with different U; the gate decides the mixture weights.
    layer = CrossMoE(projection_dim=1, num_experts=2, activation="linear", use_bias=False,
                     kernel_initializer="ones")
    layer(X0)
    layer.u.assign([[[1.0], [1.0]], [[3.0], [3.0]]])     # U_0 = 1, U_1 = 3
    layer.gate.assign([[1.0, 0.0], [1.0, 0.0]])          # gate logits [3, 0] for x = [1, 2]
    g = np.exp([3.0, 0.0]) / np.exp([3.0, 0.0]).sum()
    # V^T x = 1 + 2 = 3, C (.) = 3, expert i = U_i * 3 -> [3, 9]
    mix = g[0] * 3.0 + g[1] * 9.0
    np.testing.assert_allclose(layer(X0).numpy(), [[1 * mix + 1, 2 * mix + 2]], rtol=1e-5)


def test_uses_tfrs_cross_layers():
    import tensorflow_recommenders as tfrs

    net = CrossNetwork(3, projection_dim=2)
    assert len(net.cross) == 3 and all(isinstance(c, tfrs.layers.dcn.Cross) for c in net.cross)
    assert all(isinstance(c, CrossMoE) for c in CrossNetwork(2, 2, num_experts=3).cross)


@pytest.mark.parametrize("kwargs", [
    {}, {"projection_dim": 2}, {"projection_dim": 2, "num_experts": 3, "l2": 1e-3},
    {"use_bias": False, "diag_scale": 0.5}])
def test_config_roundtrip_same_output(kwargs, config_roundtrip):
    config_roundtrip(CrossNetwork(2, **kwargs), tf.random.normal([3, 6], seed=1))


def test_l2_penalty():
    net = CrossNetwork(2, l2=0.1, kernel_initializer="ones")
    net(X0)
    # two 2x2 kernels of ones: 0.1 * 4 each
    np.testing.assert_allclose(sum(float(v) for v in net.losses), 0.8, rtol=1e-6)


@pytest.mark.parametrize("kwargs", [{}, {"projection_dim": 2, "num_experts": 2}])
def test_saved_model_roundtrip(kwargs, saved_model_roundtrip):
    net = CrossNetwork(2, **kwargs)
    x = tf.random.normal([3, 6], seed=2)
    np.testing.assert_allclose(saved_model_roundtrip(net, x).numpy(), net(x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="projection_dim"):
        CrossNetwork(2, num_experts=2)
    with pytest.raises(ValueError):
        CrossNetwork(0)
    with pytest.raises(ValueError):
        CrossNetwork(2, projection_dim=2, num_experts=2, diag_scale=1.0)
