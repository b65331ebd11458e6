import numpy as np
import pytest

from recsys_tf.backend import keras, tf
from recsys_tf.layers.augru import AUGRUCell


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference(x, a, W, U, b, mode, h0):
    """DIEN eqs. 1-3 and 5-8, step by step in numpy. Columns of W/U/b: [u | r | h] ([r | h] for agru)."""
    h = h0.copy()
    n = h.shape[-1]
    for t in range(x.shape[0]):
        i, at = x[t], a[t]
        if mode == "aigru":
            i = at * i
        xw, hu = i @ W + b, h @ U
        if mode == "agru":
            r = sigmoid(xw[:n] + hu[:n])
            cand = np.tanh(xw[n:] + r * hu[n:])
            u = at
        else:
            u = sigmoid(xw[:n] + hu[:n])
            r = sigmoid(xw[n:2 * n] + hu[n:2 * n])
            cand = np.tanh(xw[2 * n:] + r * hu[2 * n:])
            if mode == "augru":
                u = at * u
        h = (1 - u) * h + u * cand
    return h


def run_cell(cell, x, a, mask=None):
    rnn = keras.layers.RNN(cell)
    inputs = tf.constant(np.concatenate([x, a[..., None]], -1), tf.float32)
    return rnn(inputs, mask=None if mask is None else tf.constant(mask)).numpy()


def constant_cell(mode, units=2, d=2):
    gates = 2 if mode == "agru" else 3
    cell = AUGRUCell(units, mode=mode)
    cell.build((None, d + 1))
    W = (np.arange(d * gates * units).reshape(d, gates * units) % 5 - 2) / 10.0
    U = (np.arange(units * gates * units).reshape(units, gates * units) % 3 - 1) / 5.0
    b = np.linspace(-0.1, 0.1, gates * units)
    cell.set_weights([W, U, b])
    return cell, W, U, b


def test_one_step_by_hand():
    # W = 0.1, U = 0.2, b = 0, h_0 = 0, i_1 = [1, 2], a_1 = 0.5:
    # u = r = sigmoid(0.3) = 0.574443, h~ = tanh(0.3) = 0.291313,
    # augru: h_1 = 0.5 * 0.574443 * 0.291313 = 0.083672
    cell = AUGRUCell(2, kernel_initializer=keras.initializers.Constant(0.1),
                     recurrent_initializer=keras.initializers.Constant(0.2))
    out = run_cell(cell, np.array([[[1.0, 2.0]]]), np.array([[0.5]]))
    np.testing.assert_allclose(out, [[0.083672, 0.083672]], atol=1e-6)


@pytest.mark.parametrize("mode", ["augru", "agru", "aigru"])
def test_golden_against_numpy(mode):
    cell, W, U, b = constant_cell(mode)
    x = np.array([[[1.0, -1.0], [0.5, 2.0], [-1.5, 0.3]]])
    a = np.array([[0.9, 0.1, 0.6]])
    expected = reference(x[0], a[0], W, U, b, mode, np.zeros(2))
    np.testing.assert_allclose(run_cell(cell, x, a)[0], expected, atol=1e-6)


def test_zero_attention_keeps_state_in_augru_and_agru():
    for mode in ("augru", "agru"):
        cell, W, U, b = constant_cell(mode)
        x = np.array([[[1.0, -1.0], [0.5, 2.0], [-1.5, 0.3]]])
        ignored_last = run_cell(cell, x, np.array([[0.7, 0.4, 0.0]]))
        two_steps = run_cell(cell, x[:, :2], np.array([[0.7, 0.4]]))
        np.testing.assert_allclose(ignored_last, two_steps, atol=1e-6)


def test_masked_steps_do_not_change_state():
    cell, W, U, b = constant_cell("augru")
    x = np.array([[[1.0, -1.0], [0.5, 2.0], [9.0, 9.0], [-7.0, 3.0]],
                  [[1.0, -1.0], [0.5, 2.0], [0.0, 0.0], [0.0, 0.0]]])
    a = np.array([[0.9, 0.1, 0.8, 0.5], [0.9, 0.1, 0.0, 0.0]])
    mask = np.array([[True, True, False, False]] * 2)
    out = run_cell(cell, x, a, mask)
    expected = reference(x[0, :2], a[0, :2], W, U, b, "augru", np.zeros(2))
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    np.testing.assert_allclose(out[1], expected, atol=1e-6)
    empty = run_cell(cell, x, a, np.zeros((2, 4), bool))
    np.testing.assert_array_equal(empty, np.zeros((2, 2)))


def test_gradients_reach_the_attention_score():
    cell, *_ = constant_cell("augru")
    rnn = keras.layers.RNN(cell)
    x = tf.constant([[[1.0, -1.0, 0.5], [0.5, 2.0, 0.5]]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(rnn(x))
    g = tape.gradient(y, x).numpy()
    assert np.all(np.abs(g[0, :, -1]) > 0)


def test_config_and_bad_mode():
    cell = AUGRUCell(4, mode="agru")
    again = AUGRUCell.from_config(cell.get_config())
    assert (again.units, again.mode) == (4, "agru")
    with pytest.raises(ValueError, match="mode"):
        AUGRUCell(4, mode="lstm")
