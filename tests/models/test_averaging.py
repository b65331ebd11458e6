"""WeightAveraging: the bias-corrected moving average of the weights, its swaps, and the
validation choice between averaged and raw weights in train_ranker."""
import numpy as np
import pytest

from recsys_tf import metrics, training
from recsys_tf.averaging import WeightAveraging
from recsys_tf.backend import keras, tf
from recsys_tf.models.wide_deep import WideDeep


class Recorder(keras.callbacks.Callback):
    """The kernel after every call back into Python (i.e. after every execution)."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(self.model.layers[-1].kernel.numpy().copy())


def fit_linear(momentum, epochs, steps_per_execution, n=8, repeat=1):
    """A linear model trained by SGD on fixed data (``repeat`` copies of it in an epoch),
    with the averaging callback first."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n * 4, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    x, y = np.tile(x, (repeat, 1)), np.tile(y, (repeat, 1))
    model = keras.Sequential([keras.layers.Input((3,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(keras.optimizers.SGD(0.05), "mse", steps_per_execution=steps_per_execution)
    averaging, recorder = WeightAveraging(momentum), Recorder()
    model.fit(x, y, batch_size=4, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[averaging, recorder])
    return model, averaging, np.stack(recorder.kernels)


def debiased_ema(ws, m):
    """A_t = m A_(t-1) + (1 - m) w_t, A_0 = 0; returns A_T / (1 - m^T)."""
    a = np.zeros_like(ws[0], np.float64)
    for w in ws:
        a = m * a + (1 - m) * w
    return a / (1 - m ** len(ws))


def test_golden_average_of_every_step():
    model, _, ws = fit_linear(0.9, epochs=1, steps_per_execution=1)
    assert len(ws) == 8 and not np.allclose(ws[0], ws[-1])
    np.testing.assert_allclose(model.layers[-1].kernel.numpy(), debiased_ema(ws, 0.9),
                               rtol=1e-5, atol=1e-6)
    # a golden value: the first two steps alone average to (0.9 * 0.1 w1 + 0.1 w2) / 0.19
    two = debiased_ema(ws[:2], 0.9)
    np.testing.assert_allclose(two, (0.09 * ws[0] + 0.1 * ws[1]) / 0.19, rtol=1e-6)


def test_sampled_every_execution():
    """With 4 steps per execution the average samples the weights once per execution:
    avg <- avg + (1 - m^k) / (1 - m^t) (w - avg)."""
    model, _, ws = fit_linear(0.8, epochs=1, steps_per_execution=4, n=16)
    assert len(ws) == 4
    avg, t = None, 0
    for w in ws:
        t += 4
        avg = w.astype(np.float64) if avg is None else avg + (1 - 0.8 ** 4) / (1 - 0.8 ** t) * (
            w - avg)
    np.testing.assert_allclose(model.layers[-1].kernel.numpy(), avg, rtol=1e-5, atol=1e-6)


def test_raw_weights_train_on_across_epochs():
    """Averages replace the weights at an epoch's end only: the next epoch trains on from the
    raw weights (the run equals one long epoch's, step for step), and the averages span both
    epochs."""
    two, _, ws_two = fit_linear(0.9, epochs=2, steps_per_execution=1, n=4)
    one, _, ws_one = fit_linear(0.9, epochs=1, steps_per_execution=1, n=4, repeat=2)
    np.testing.assert_allclose(ws_two, ws_one, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(two.layers[-1].kernel.numpy(), debiased_ema(ws_two, 0.9),
                               rtol=1e-5, atol=1e-6)


def test_swaps_are_idempotent():
    model, averaging, ws = fit_linear(0.9, epochs=1, steps_per_execution=1)
    kernel = model.layers[-1].kernel
    averaged = kernel.numpy().copy()
    averaging.swap_in()
    np.testing.assert_array_equal(kernel.numpy(), averaged)
    averaging.swap_out()
    averaging.swap_out()
    np.testing.assert_array_equal(kernel.numpy(), ws[-1])
    averaging.swap_in()
    np.testing.assert_array_equal(kernel.numpy(), averaged)


def test_momentum_zero_changes_nothing():
    model, _, ws = fit_linear(0.0, epochs=1, steps_per_execution=1)
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), ws[-1])


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_bad_momentum_is_named(bad):
    with pytest.raises(ValueError, match=f"momentum={bad!r}"):
        WeightAveraging(bad)


def test_train_ranker_keeps_the_better_weights(tiny_synthetic):
    """Wide & Deep (two optimizers): every epoch logs the raw and the averaged validation AUC
    and keeps the higher; the trained model is the best epoch's choice."""
    keras.utils.set_random_seed(0)
    model = WideDeep(tiny_synthetic.feature_set, dim=4, dnn_units=(8,))
    fit = training.train_ranker(model, tiny_synthetic, epochs=3, batch_size=128, verbose=0,
                                patience=3)
    h = fit["history"]
    assert fit["weight_averaging"] == training.WEIGHT_AVERAGING
    assert len(h["val_auc_raw"]) == len(h["val_auc_averaged"]) == fit["epochs_run"] == 3
    np.testing.assert_allclose(h["val_auc"], np.maximum(h["val_auc_raw"],
                                                        h["val_auc_averaged"]))
    assert h["val_auc_raw"] != h["val_auc_averaged"]
    fs, valid = tiny_synthetic.feature_set, tiny_synthetic.valid   # scored as in training
    p = training.predict_batches(model, training.encoded_dataset(model, fs, valid, 4096))
    assert metrics.auc(valid[fs.label].to_numpy(), p) == pytest.approx(max(h["val_auc"]),
                                                                       abs=1e-9)


def test_train_ranker_without_averaging(tiny_synthetic):
    keras.utils.set_random_seed(0)
    model = WideDeep(tiny_synthetic.feature_set, dim=4, dnn_units=(8,))
    fit = training.train_ranker(model, tiny_synthetic, epochs=1, batch_size=128, verbose=0,
                                weight_averaging=0)
    assert fit["weight_averaging"] == 0.0
    assert "val_auc_raw" not in fit["history"]
    tf.debugging.assert_all_finite(model.dnn_model.trainable_variables[0], "weights")


def test_a_second_fit_restarts_the_average_on_the_same_variables():
    model, averaging, ws = fit_linear(0.9, epochs=1, steps_per_execution=1)
    first = averaging._averages
    recorder = Recorder()
    x = np.ones((8, 3), np.float32)
    model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0, callbacks=[averaging, recorder])
    assert averaging._averages is first                # kept: no new variables, no retrace
    np.testing.assert_allclose(model.layers[-1].kernel.numpy(),
                               debiased_ema(recorder.kernels, 0.9), rtol=1e-5, atol=1e-6)
