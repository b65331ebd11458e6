"""The rankers' defaults: xDeepFM's CIN crosses the id embeddings by default, and the
pipeline trains rankers with ``pipeline.RANKER_DEFAULTS``."""
import pytest

from recsys_tf import pipeline
from recsys_tf.backend import keras
from recsys_tf.features import Numeric
from recsys_tf.models.xdeepfm import XDeepFM

from test_rankers import FS, X  # noqa: E402  (tests/models is on sys.path)


def test_xdeepfm_crosses_the_categorical_fields_by_default():
    keras.utils.set_random_seed(0)
    ids = [n for n in FS.names if not isinstance(FS[n], Numeric)]
    assert 0 < len(ids) < len(FS.names)
    model = XDeepFM(FS, dim=4, cin_sizes=(4, 2), dnn_units=(8,))
    model({k: v[:4] for k, v in X.items()})
    assert model.cin_features == ids
    assert model.cin.kernels[0].shape == (len(ids) ** 2, 4)
    assert model.get_config()["cin_features"] == "categorical"
    assert XDeepFM.from_config(model.get_config()).cin_features == ids
    every = XDeepFM(FS, dim=4, cin_sizes=(4, 2), dnn_units=(8,), cin_features=None)
    every({k: v[:4] for k, v in X.items()})
    assert every.cin_features is None
    assert every.cin.kernels[0].shape == (len(FS.names) ** 2, 4)
    with pytest.raises(ValueError, match="cin_features='numeric'"):
        XDeepFM(FS, cin_features="numeric")


def test_pipeline_trains_rankers_with_the_declared_defaults(tiny_synthetic):
    result, model = pipeline.train("deepfm", tiny_synthetic, verbose=0, epochs=1,
                                   options={"dim": 4, "dnn_units": [8]})
    n_batches = -(-len(tiny_synthetic.train) // pipeline.RANKER_DEFAULTS["batch_size"])
    assert int(model.optimizer.iterations.numpy()) == n_batches
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(
        pipeline.RANKER_DEFAULTS["learning_rate"])
