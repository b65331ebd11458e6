"""The rankers' defaults: xDeepFM's CIN crosses the id embeddings by default, and the
pipeline trains rankers with ``pipeline.RANKER_DEFAULTS``."""
import numpy as np
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


def test_deepfm_embeddings_start_at_the_declared_stddev():
    from recsys_tf.models.deepfm import DeepFM

    keras.utils.set_random_seed(0)
    for stddev in (None, 0.05):
        options = {} if stddev is None else {"embeddings_stddev": stddev}
        model = DeepFM(FS, dim=16, dnn_units=(8,), **options)
        model({k: v[:4] for k, v in X.items()})
        want = 0.02 if stddev is None else stddev
        assert model.get_config()["embeddings_stddev"] == want
        values = np.concatenate([v.numpy().ravel() for v in model.embedding.fused_tables.values()]
                                + [model.embedding.field_matrix.numpy().ravel()])
        assert values.size > 400
        assert 0.8 * want < values.std() < 1.2 * want
        clone = DeepFM.from_config(model.get_config())
        assert clone.embedding.initializer_stddev == want


def test_embedding_stddev_must_be_positive():
    from recsys_tf.layers.embedding import FeatureEmbedding

    with pytest.raises(ValueError, match=r"initializer_stddev=0\b.*expected a number > 0"):
        FeatureEmbedding(FS, FS.names, dim=4, initializer_stddev=0)


def test_xdeepfm_default_cin_is_two_layers_of_32():
    model = XDeepFM(FS, dim=4, dnn_units=(8,))
    assert model.get_config()["cin_sizes"] == [32, 32]


def test_dcn_v2_numeric_values_or_fields():
    from recsys_tf.models.dcn_v2 import DCNv2

    batch = {k: v[:4] for k, v in X.items()}
    n_numeric = sum(isinstance(FS[n], Numeric) for n in FS.names)
    assert n_numeric >= 1
    values = DCNv2(FS, dim=4, cross_layers=1, dnn_units=(8,))
    fields = DCNv2(FS, dim=4, cross_layers=1, dnn_units=(8,), numeric="field")
    assert values.get_config()["numeric"] == "value" and fields.get_config()["numeric"] == "field"
    width_values = values.embedding.flat(values.encode_inputs(batch)).shape[1]
    width_fields = fields.embedding.flat(fields.encode_inputs(batch)).shape[1]
    assert width_fields == len(FS.names) * 4
    assert width_fields - width_values == n_numeric * 3        # each value becomes 4 entries
    with pytest.raises(ValueError, match="numeric='fields'"):
        DCNv2(FS, dim=4, numeric="fields")
