"""DIN.attention_weights / DIEN.attention_weights: the public view of the target attention."""
import numpy as np
import pytest

from recsys_tf.backend import keras, tf
from recsys_tf.features import Categorical, FeatureSet, Sequence
from recsys_tf.models.dien import DIEN
from recsys_tf.models.din import DIN

FS = FeatureSet([
    Categorical("user_id", vocabulary=["u1", "u2", "u3"], dim=4, role="user"),
    Categorical("item_id", vocabulary=["i1", "i2", "i3", "i4", "i5"], dim=4, role="item"),
    Categorical("category", vocabulary=["c1", "c2"], dim=4, role="item"),
    Sequence("history", of="item_id", max_len=4),
    Sequence("history_category", of="category", max_len=4),
], user_id="user_id", item_id="item_id")
SMALL = dict(dim=4, attention_units=(8,), dnn_units=(8,))

# 3 real behaviours, 1 real, none (empty history), 4 (full, one of them an unknown id)
HISTORY = [["i1", "i2", "i3", ""], ["i4", "", "", ""], ["", "", "", ""], ["i1", "i9", "i3", "i5"]]
HISTORY_CATEGORY = [["c1", "c2", "c1", ""], ["c2", "", "", ""], ["", "", "", ""],
                    ["c1", "c2", "c2", "c1"]]
REAL = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)


def inputs():
    """Numpy arrays, as FeatureSet.arrays returns them."""
    return {"user_id": np.array(["u1", "u2", "u3", "u1"], dtype=object),
            "item_id": np.array(["i2", "i5", "i1", "i4"], dtype=object),
            "category": np.array(["c2", "c1", "c1", "c2"], dtype=object),
            "history": np.array(HISTORY, dtype=object),
            "history_category": np.array(HISTORY_CATEGORY, dtype=object)}


def tensors():
    return {k: tf.constant(v) for k, v in inputs().items()}


def build(cls, **kwargs):
    keras.utils.set_random_seed(0)
    model = cls(FS, **SMALL, **kwargs)
    model(tensors())
    return model


def check_padding(w):
    assert w.shape == (4, 4) and w.dtype == np.float32
    assert np.all(np.isfinite(w))
    assert np.all(w[~REAL] == 0.0)            # padding, and the empty history, get exactly 0


@pytest.mark.parametrize("fused_rnn", [True, False])
def test_dien_weights_are_a_softmax_over_the_real_steps(fused_rnn):
    model = build(DIEN, fused_rnn=fused_rnn)
    w = model.attention_weights(inputs()).numpy()
    check_padding(w)
    assert np.all(w[REAL] > 0)
    np.testing.assert_allclose(w.sum(axis=1), [1.0, 1.0, 0.0, 1.0], atol=1e-6)
    assert w[1, 0] == pytest.approx(1.0, abs=1e-6)       # the only behaviour takes it all


def test_dien_weights_are_the_ones_that_gate_the_augru():
    model = build(DIEN)
    x = tensors()
    a = model.attention_weights(x)
    # the same weights, through the reference Keras layers (not the fused path)
    behaviors, mask, target, others = model.embed(x)
    h = model.extractor(behaviors, mask=mask)
    _, reference = model.attention([h, target], mask=mask)
    np.testing.assert_allclose(a.numpy(), reference.numpy(), atol=1e-6)
    # fed to the AUGRU, they give the model's prediction
    final = model.evolver(tf.concat([h, a[..., None]], axis=-1), mask=mask)
    logit = model.head(final, behaviors, mask, target, others, training=False)
    np.testing.assert_allclose(tf.sigmoid(logit[:, 0]).numpy(),
                               model(x, training=False).numpy(), atol=1e-6)
    # other weights give another prediction, so the check above has teeth
    uniform = tf.cast(mask, tf.float32) / tf.maximum(
        tf.reduce_sum(tf.cast(mask, tf.float32), axis=1, keepdims=True), 1.0)
    other = model.evolver(tf.concat([h, uniform[..., None]], axis=-1), mask=mask)
    assert not np.allclose(model.head(other, behaviors, mask, target, others).numpy(),
                           logit.numpy(), atol=1e-6)


def test_weights_ignore_what_stands_at_padding():
    model = build(DIEN)
    w = model.attention_weights(inputs()).numpy()
    noisy = inputs()
    noisy["history_category"] = np.where(REAL, noisy["history_category"], "c2")
    np.testing.assert_allclose(model.attention_weights(noisy).numpy(), w, atol=1e-6)


def test_din_weights_pool_the_history_the_model_reads():
    model = build(DIN)                               # normalization "none": raw scores
    x = tensors()
    a = model.attention_weights(x)
    check_padding(a.numpy())
    behaviors, mask, target, others = model.embed(x)
    interest = tf.reduce_sum(a[..., None] * behaviors, axis=1)
    logit = model.head(interest, behaviors, mask, target, others, training=False)
    np.testing.assert_allclose(tf.sigmoid(logit[:, 0]).numpy(),
                               model(x, training=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("normalization", ["softmax", "sigmoid"])
def test_din_normalizations(normalization):
    w = build(DIN, attention_normalization=normalization).attention_weights(inputs()).numpy()
    check_padding(w)
    assert np.all((w[REAL] > 0) & (w[REAL] < 1 + 1e-6))
    if normalization == "softmax":
        np.testing.assert_allclose(w.sum(axis=1), [1.0, 1.0, 0.0, 1.0], atol=1e-6)
