"""A ranker export's ``examples`` signature (serialized tf.Examples -> ``outputs``) scores as
``serving_default`` does, reloads with TF2's and TF1's loaders, and TF Serving's Regress
(InferenceService in a v1 Session, as TF Serving runs it) serves it."""
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import inference_pb2, regression_pb2

from recsys_tf.examples import feature_spec, parse_examples, to_examples
from recsys_tf.features import Categorical, FeatureSet, Numeric, Sequence, pad_sequences
from recsys_tf.server.inference import InferenceService
from recsys_tf.wire.contract import EXAMPLES_SIGNATURE, REGRESS_METHOD
from session_runner import OneVersionRegistry, SessionRunner, load_version

ROWS = 24


@pytest.fixture(scope="module")
def deepfm(trained):
    metrics, model = trained["deepfm"]
    return metrics["export_path"], model


@pytest.fixture(scope="module")
def rows(tiny_synthetic):
    return tiny_synthetic.test.head(ROWS).reset_index(drop=True)


def _serving_default(path, fs, names, frame):
    fn = tf.saved_model.load(path).signatures["serving_default"]
    return fn(**{n: tf.constant(a) for n, a in fs.arrays(frame, names).items()})[
        "probability"].numpy()


def test_examples_signature_matches_serving_default(deepfm, rows):
    path, model = deepfm
    fs, names = model.feature_set, model.features
    assert {fs[n].kind for n in names} == {"categorical", "numeric", "sequence"}
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures[EXAMPLES_SIGNATURE]
    assert list(fn.structured_input_signature[1]) == ["inputs"]
    got = fn(inputs=tf.constant(to_examples(fs, rows, names)))["outputs"].numpy()
    want = _serving_default(path, fs, names, rows)
    assert got.shape == (ROWS,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.ptp(want) > 0   # the rows score differently: the comparison means something


def test_method_name_is_regress_and_fingerprint_rewritten(deepfm):
    path, _ = deepfm
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    sigs = saved.meta_graphs[0].signature_def
    assert sigs[EXAMPLES_SIGNATURE].method_name == REGRESS_METHOD
    assert sigs["serving_default"].method_name == "tensorflow/serving/predict"
    assert list(sigs[EXAMPLES_SIGNATURE].inputs) == ["inputs"]
    assert list(sigs[EXAMPLES_SIGNATURE].outputs) == ["outputs"]
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
    from tensorflow.core.protobuf import fingerprint_pb2

    fresh = fingerprint_pb2.FingerprintDef.FromString(fingerprinting.CreateFingerprintDef(path))
    on_disk = tf.saved_model.experimental.read_fingerprint(path)
    assert on_disk.saved_model_checksum == fresh.saved_model_checksum


def test_missing_and_unpadded_features_read_as_serving_default_would(deepfm, rows):
    """A missing numeric is NaN (normalised to 0), a missing categorical is its padding value
    (an OOV id), and a sequence may come unpadded, over-long or padded beyond max_len."""
    path, model = deepfm
    fs, names = model.feature_set, model.features
    seq = [n for n in names if fs[n].kind == "sequence"][0]
    num = [n for n in names if fs[n].kind == "numeric"][0]
    cat = [n for n in names if fs[n].kind == "categorical"][0]
    max_len = fs[seq].max_len
    frame = rows.head(4).copy()
    pad = ""
    frame.at[0, seq] = list(frame.at[0, seq])[:3]                       # short, unpadded
    frame.at[1, seq] = [f"i{k % 50}" for k in range(max_len + 7)]         # longer than max_len
    frame.at[2, seq] = list(frame.at[2, seq])[:2] + [pad] * (max_len + 5)  # over-padded
    frame.at[3, seq] = []                                                 # empty history
    serialized = []
    for i in range(4):
        example = example_pb2.Example()
        for n in names:
            f = fs[n]
            feature = example.features.feature[n]
            if n == num and i % 2 == 0:
                continue                                          # missing numeric
            if n == cat and i == 1:
                continue                                          # missing categorical
            value = frame.at[i, n]
            if f.kind == "numeric":
                feature.float_list.value.append(float(value))
            elif f.kind == "categorical":
                feature.bytes_list.value.append(str(value).encode())
            else:
                feature.bytes_list.value.extend(str(v).encode() for v in value)
        serialized.append(example.SerializeToString())
    want_frame = frame.copy()
    want_frame[num] = [np.nan if i % 2 == 0 else frame.at[i, num] for i in range(4)]
    want_frame.at[1, cat] = ""
    want = _serving_default(path, fs, names, want_frame)
    got = tf.saved_model.load(path).signatures[EXAMPLES_SIGNATURE](
        inputs=tf.constant(serialized))["outputs"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    laid_out = fs.arrays(want_frame, [seq])[seq]
    np.testing.assert_array_equal(laid_out, pad_sequences(list(frame[seq]), max_len))


def test_regress_through_tf1_session_as_tf_serving(deepfm, rows):
    """The export loads with TF1's loader (as TF Serving's SavedModelBundle) and answers
    Regress and MultiInference with serving_default's probabilities."""
    path, model = deepfm
    fs, names = model.feature_set, model.features
    version = load_version(path, "deepfm", int(os.path.basename(path)))
    try:
        service = InferenceService(OneVersionRegistry(version), SessionRunner(),
                                   method_name_check=True)
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "deepfm"
        request.model_spec.signature_name = EXAMPLES_SIGNATURE
        # the user's features once, as context; each candidate's own features per example
        user = [n for n in names if fs[n].role == "user"]
        first = rows.head(6).copy()
        for n in user:
            first[n] = [first.at[0, n]] * len(first)
        context = to_examples(fs, first.head(1), user)[0]
        own = [n for n in names if n not in user]
        with_context = request.input.example_list_with_context
        with_context.context.ParseFromString(context)
        for serialized in to_examples(fs, first, own):
            with_context.examples.add().ParseFromString(serialized)
        response = service.regress(request)
        got = np.array([r.value for r in response.result.regressions], np.float32)
        np.testing.assert_allclose(got, _serving_default(path, fs, names, first), rtol=1e-5)
        assert (response.model_spec.signature_name, response.model_spec.version.value) == (
            EXAMPLES_SIGNATURE, version.version)
        multi = inference_pb2.MultiInferenceRequest()
        task = multi.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = "deepfm", EXAMPLES_SIGNATURE
        task.method_name = REGRESS_METHOD
        multi.input.CopyFrom(request.input)
        result = service.multi_inference(multi).results[0].regression_result
        assert [r.value for r in result.regressions] == [r.value for r in
                                                         response.result.regressions]
    finally:
        version.session.close()


def test_feature_spec_and_examples_of_int_ids():
    fs = FeatureSet([Categorical("item", vocabulary=[3, 5, 7], dtype="int64"),
                     Sequence("hist", of="item", max_len=3), Numeric("price")], label=None)
    spec = feature_spec(fs)
    assert spec["item"].dtype == tf.int64 and spec["item"].default_value == 0
    assert isinstance(spec["hist"], tf.io.VarLenFeature) and spec["hist"].dtype == tf.int64
    assert spec["price"].dtype == tf.float32 and np.isnan(spec["price"].default_value)
    arrays = {"item": np.array([5, 9]), "hist": np.array([[3, 5, 0], [7, 0, 0]]),
              "price": np.array([1.5, np.nan], np.float32)}
    serialized = to_examples(fs, arrays)
    second = example_pb2.Example.FromString(serialized[1]).features.feature
    assert list(second["item"].int64_list.value) == [9]
    assert list(second["hist"].int64_list.value) == [7, 0, 0]
    assert "price" not in second                           # NaN: left to the parser default
    parsed = parse_examples(fs, fs.names, tf.constant(serialized))
    np.testing.assert_array_equal(parsed["hist"].numpy(), arrays["hist"])
    np.testing.assert_array_equal(parsed["item"].numpy(), [5, 9])
    np.testing.assert_array_equal(np.isnan(parsed["price"].numpy()), [False, True])


@pytest.mark.slow   # DIEN's export traces its GRU + AUGRU three times: ~30 s alone, 85 s loaded
def test_dien_examples_signature(tiny_synthetic, tmp_path):
    """A sequence model (DIEN: interest extractor GRU + AUGRU over the history) too, fitted
    for one step on 64 rows (the comparison does not need it trained)."""
    from recsys_tf.backend import keras
    from recsys_tf.export import export_ranker
    from recsys_tf.models.dien import DIEN

    keras.utils.set_random_seed(0)
    fs = tiny_synthetic.feature_set
    model = DIEN(fs, dim=4, attention_units=(8,), dnn_units=(8,))
    frame = tiny_synthetic.test.head(12).reset_index(drop=True)
    frame.at[0, "history"], frame.at[0, "history_category"] = [], []     # no history
    names = model.features
    assert any(fs[n].kind == "sequence" for n in names)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    model.fit(fs.arrays(tiny_synthetic.train.head(64), names),
              tiny_synthetic.train[fs.label].head(64).to_numpy(np.float32), batch_size=64,
              epochs=1, verbose=0)
    path = export_ranker(model, str(tmp_path), "dien")
    got = tf.saved_model.load(path).signatures[EXAMPLES_SIGNATURE](
        inputs=tf.constant(to_examples(fs, frame, names)))["outputs"].numpy()
    np.testing.assert_allclose(got, _serving_default(path, fs, names, frame), rtol=1e-5)
