"""Scaffolding shared by the layer tests: a SavedModel round trip and a config round trip."""
import numpy as np
import pytest

from recsys_tf.backend import tf


@pytest.fixture
def saved_model_roundtrip(tmp_path):
    """``roundtrip(layer, x, signature=None)``: save ``layer`` behind a ``tf.function``,
    reload it and return the reloaded function's output on ``x``.

    ``signature`` is the function's input spec; by default ``x``'s shape with a free batch
    dimension and ``x``'s dtype.
    """
    def roundtrip(layer, x, signature=None):
        if signature is None:
            signature = tf.TensorSpec([None] + list(x.shape[1:]), x.dtype)
        layer(x)   # build the weights outside the traced function
        module = tf.Module()
        module.layer = layer
        module.f = tf.function(lambda v: layer(v), input_signature=[signature])
        tf.saved_model.save(module, str(tmp_path / "layer"))
        loaded = tf.saved_model.load(str(tmp_path / "layer"))   # keep it alive while calling
        return loaded.f(x)

    return roundtrip


@pytest.fixture
def config_roundtrip():
    """``check(layer, x)``: rebuild ``layer`` from its config, copy its weights, and assert
    the clone has the same config and gives the same output on ``x``. Returns the clone."""
    def check(layer, x):
        y = layer(x)
        clone = type(layer).from_config(layer.get_config())
        clone(x)
        clone.set_weights(layer.get_weights())
        np.testing.assert_allclose(clone(x).numpy(), y.numpy(), rtol=1e-6)
        assert clone.get_config() == layer.get_config()
        return clone

    return check
