"""Classify / Regress / MultiInference against TF Serving's own test SavedModels.

Golden values are those of TF Serving's tensorflow_model_server_test.py (half_plus_two:
y = 0.5 x + 2, so x = 2.0 scores 3.0; regress_x_to_y2: y = 0.5 x + 3; half_plus_three's
regress signature: 0.5 x + 3). The models run in a tf.compat.v1 Session fed and fetched by
the SignatureDef's tensor names, as TF Serving runs them.
"""
import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from recsys_tf.server.inference import (
    InferenceService,
    classification_request_from_json,
    classify_response_to_json,
    regress_response_to_json,
    regression_request_from_json,
    serialized_examples,
)
from recsys_tf.wire.errors import ServingError
from session_runner import OneVersionRegistry, SessionRunner, load_version, session_version

TESTDATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "shared", "tfserving_suite", "servables", "tensorflow",
    "testdata")
HALF_PLUS_TWO = os.path.join(TESTDATA, "saved_model_half_plus_two_cpu", "00000123")
HALF_PLUS_TWO_TF2 = os.path.join(TESTDATA, "saved_model_half_plus_two_tf2_cpu", "00000123")
HALF_PLUS_THREE = os.path.join(TESTDATA, "saved_model_half_plus_three", "00000123")

pytestmark = pytest.mark.skipif(not os.path.isdir(HALF_PLUS_TWO),
                                reason=f"TF Serving's test data not found at {TESTDATA}")


@pytest.fixture(scope="module")
def half_plus_two():
    version = load_version(HALF_PLUS_TWO, "default", 123)
    yield version
    version.session.close()


@pytest.fixture()
def service(half_plus_two):
    return InferenceService(OneVersionRegistry(half_plus_two), SessionRunner())


def _add_x(examples, *xs):
    for x in xs:
        examples.add().features.feature["x"].float_list.value.append(x)


def _request(cls, signature, xs):
    request = cls()
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature
    _add_x(request.input.example_list.examples, *xs)
    return request


def _classify(signature="classify_x_to_y", xs=(2.0,)):
    return _request(classification_pb2.ClassificationRequest, signature, xs)


def _regress(signature="regress_x_to_y", xs=(2.0,)):
    return _request(regression_pb2.RegressionRequest, signature, xs)


def _error(fn, request):
    with pytest.raises(ServingError) as info:
        fn(request)
    return info.value


# ----------------------------------------------------------------------------- Classify
def test_classify_golden_as_tf_serving_test(service):
    """testClassify: one example x=2.0 -> one class, score 3.0; model_spec echoed."""
    response = service.classify(_classify())
    assert len(response.result.classifications) == 1
    assert len(response.result.classifications[0].classes) == 1
    assert response.result.classifications[0].classes[0].score == 3.0
    assert response.result.classifications[0].classes[0].label == ""
    assert response.model_spec.name == "default"
    assert response.model_spec.signature_name == "classify_x_to_y"
    assert response.model_spec.version.value == 123


def test_classify_two_examples(service):
    response = service.classify(_classify(xs=(1.0, 2.0)))
    scores = [[c.score for c in cl.classes] for cl in response.result.classifications]
    assert scores == [[2.5], [3.0]]


def test_examples_with_context_are_merged(service):
    """The context's features go into every example; an example's own feature wins."""
    request = _classify()
    del request.input.example_list.examples[:]
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.append(1.0)
    with_context.examples.add()                    # no x: the context's x=1.0 -> 2.5
    _add_x(with_context.examples, 4.0)             # its own x wins -> 4.0
    response = service.classify(request)
    assert [cl.classes[0].score for cl in response.result.classifications] == [2.5, 4.0]
    serialized = serialized_examples(request.input)
    assert serialized.shape == (2,)
    parsed = example_pb2.Example.FromString(serialized[1])
    assert list(parsed.features.feature["x"].float_list.value) == [4.0]


def test_classify_errors(service):
    assert _error(service.classify, classification_pb2.ClassificationRequest()).message == (
        "Missing ModelSpec")
    err = _error(service.classify, _classify("nope"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.message == "No signature was found with the name: nope"
    # a regression signature: its output is not "classes"/"scores"
    err = _error(service.classify, _classify("regress_x_to_y"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.message.startswith('Expected classification signature outputs to contain at '
                                  'least one of "classes" or "scores". Signature was: ')
    # serving_default ("" names it): its input is "x", not "inputs"
    err = _error(service.classify, _classify(""))
    assert err.message.startswith("No classification inputs found in SignatureDef: ")
    empty = _classify(xs=())
    err = _error(service.classify, empty)
    assert (err.code, err.message) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    unknown = _classify()
    unknown.model_spec.name = "other"
    err = _error(service.classify, unknown)
    assert err.code == grpc.StatusCode.NOT_FOUND


def test_method_name_check(half_plus_two):
    """With TF Serving's --enable_signature_method_name_check the method name decides."""
    service = InferenceService(OneVersionRegistry(half_plus_two), SessionRunner(),
                               method_name_check=True)
    assert service.classify(_classify()).result.classifications[0].classes[0].score == 3.0
    err = _error(service.classify, _classify("regress_x_to_y"))
    assert err.message == ("Expected classification signature method_name to be "
                           "tensorflow/serving/classify. Was: tensorflow/serving/regress")
    err = _error(service.regress, _regress("classify_x_to_y"))
    assert err.message == ("Expected regression signature method_name to be "
                           "tensorflow/serving/regress. Was: tensorflow/serving/classify")


def test_tf2_signatures_with_predict_method_name():
    """TF Serving's TF2 half_plus_two exports its classify/regress signatures with method
    "tensorflow/serving/predict": served by default, refused under the method-name check."""
    version = load_version(HALF_PLUS_TWO_TF2, "default", 123)
    try:
        service = InferenceService(OneVersionRegistry(version), SessionRunner())
        assert service.classify(_classify()).result.classifications[0].classes[0].score == 3.0
        assert service.regress(_regress()).result.regressions[0].value == 3.0
        strict = InferenceService(OneVersionRegistry(version), SessionRunner(),
                                  method_name_check=True)
        assert _error(strict.classify, _classify()).message.endswith(
            "Was: tensorflow/serving/predict")
    finally:
        version.session.close()


# ----------------------------------------------------------------------------- Regress
def test_regress_golden_as_tf_serving_test(service):
    """testRegress: x=2.0 -> 3.0; model_spec echoed."""
    response = service.regress(_regress())
    assert [r.value for r in response.result.regressions] == [3.0]
    assert (response.model_spec.name, response.model_spec.signature_name,
            response.model_spec.version.value) == ("default", "regress_x_to_y", 123)
    response = service.regress(_regress("regress_x_to_y2", xs=(1.0, 2.0)))
    assert [r.value for r in response.result.regressions] == [3.5, 4.0]


def test_regress_half_plus_three():
    version = load_version(HALF_PLUS_THREE, "default", 123)
    try:
        service = InferenceService(OneVersionRegistry(version), SessionRunner())
        response = service.regress(_regress("tensorflow/serving/regress", xs=(1.0, 2.0)))
        assert [r.value for r in response.result.regressions] == [3.5, 4.0]
        err = _error(service.regress, _regress(""))   # serving_default: input "x"
        assert err.message.startswith("No regression inputs found in SignatureDef: ")
    finally:
        version.session.close()


def test_regress_errors(service):
    assert _error(service.regress, regression_pb2.RegressionRequest()).message == (
        "Missing ModelSpec")
    err = _error(service.regress, _regress("classify_x_to_y"))
    assert err.message.startswith("No regression outputs found in SignatureDef: ")
    assert _error(service.regress, _regress(xs=())).message == "Input is empty."
    # regress_x2_to_y3's input is a float tensor: the examples cannot be fed to it
    err = _error(service.regress, _regress("regress_x2_to_y3"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------ output shape checks
def _graph_version(build):
    """A version over a tiny graph: examples placeholder -> outputs built by ``build``."""
    graph = tf.Graph()
    with graph.as_default():
        examples = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        outputs = build(examples)
        infos = {key: tf.compat.v1.saved_model.utils.build_tensor_info(t)
                 for key, t in outputs.items()}
        sig = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            {"inputs": tf.compat.v1.saved_model.utils.build_tensor_info(examples)}, infos,
            "tensorflow/serving/classify")
    return session_version(tf.compat.v1.Session(graph=graph), {"sig": sig})


def _rows(examples):
    return tf.cast(tf.shape(examples)[0], tf.float32)


@pytest.mark.parametrize("build,message", [
    (lambda e: {"scores": tf.fill([tf.shape(e)[0]], 1.0)},
     "Expected Tensor shape: [batch_size num_classes] but got [2]"),
    (lambda e: {"scores": tf.constant([[1.0]])},
     "Expected scores output batch size of 2. Got: 1"),
    (lambda e: {"scores": tf.fill([tf.shape(e)[0], 2], 1.0),
                "classes": tf.fill([tf.shape(e)[0], 3], "a")},
     "Tensors class and score should match in dim_size(1). Got 3 vs. 2"),
    (lambda e: {"scores": tf.fill([tf.shape(e)[0], 1], tf.constant(1.0, tf.float64))},
     "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
    (lambda e: {"classes": tf.fill([tf.shape(e)[0], 1], 7)},
     "Expected classes Tensor of DT_STRING. Got: DT_INT32"),
])
def test_classification_output_checks(build, message):
    version = _graph_version(build)
    request = _classify("sig", xs=(1.0, 2.0))
    with pytest.raises(ServingError) as info:
        InferenceService(OneVersionRegistry(version), SessionRunner()).classify(request)
    assert (info.value.code, info.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_classes_and_scores_together():
    version = _graph_version(lambda e: {
        "classes": tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(e)[0], 1]),
        "scores": tf.tile(tf.constant([[0.25, 0.75]]), [tf.shape(e)[0], 1])})
    response = InferenceService(OneVersionRegistry(version), SessionRunner()).classify(
        _classify("sig", xs=(1.0, 2.0)))
    assert [[(c.label, c.score) for c in cl.classes]
            for cl in response.result.classifications] == [[("neg", 0.25), ("pos", 0.75)]] * 2
    assert classify_response_to_json(response) == {
        "results": [[["neg", 0.25], ["pos", 0.75]]] * 2}


@pytest.mark.parametrize("build,message", [
    (lambda e: {"outputs": tf.fill([tf.shape(e)[0], 2], 1.0)},
     "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [2,2]"),
    (lambda e: {"outputs": tf.constant([1.0])},
     "Input batch size did not match output batch size: 2 vs. 1"),
    (lambda e: {"outputs": tf.fill([tf.shape(e)[0]], 1)},
     "Expected output Tensor of DT_FLOAT.  Got: DT_INT32"),
])
def test_regression_output_checks(build, message):
    version = _graph_version(build)
    with pytest.raises(ServingError) as info:
        InferenceService(OneVersionRegistry(version), SessionRunner()).regress(
            _regress("sig", xs=(1.0, 2.0)))
    assert info.value.message == message


def test_regression_output_of_rank_one():
    version = _graph_version(lambda e: {"outputs": tf.range(_rows(e))})
    response = InferenceService(OneVersionRegistry(version), SessionRunner()).regress(
        _regress("sig", xs=(1.0, 2.0, 3.0)))
    assert [r.value for r in response.result.regressions] == [0.0, 1.0, 2.0]


# ----------------------------------------------------------------------------- MultiInference
def _multi(*tasks):
    request = inference_pb2.MultiInferenceRequest()
    for name, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = name
        task.model_spec.signature_name = signature
        task.method_name = method
    _add_x(request.input.example_list.examples, 2.0)
    return request


REGRESS = ("default", "regress_x_to_y", "tensorflow/serving/regress")
CLASSIFY = ("default", "classify_x_to_y", "tensorflow/serving/classify")


def test_multi_inference_golden_as_tf_serving_test(service):
    """testMultiInference: regress_x_to_y and classify_x_to_y on x=2.0 both give 3.0."""
    response = service.multi_inference(_multi(REGRESS, CLASSIFY))
    assert len(response.results) == 2
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for result, signature in zip(response.results, ["regress_x_to_y", "classify_x_to_y"]):
        assert (result.model_spec.name, result.model_spec.signature_name,
                result.model_spec.version.value) == ("default", signature, 123)


def test_multi_inference_errors(service):
    err = _error(service.multi_inference, _multi(REGRESS, ("", "classify_x_to_y", CLASSIFY[2])))
    assert err.message == "Found ModelSpec with an empty model name."
    err = _error(service.multi_inference, _multi(REGRESS, ("other",) + CLASSIFY[1:]))
    assert err.message == ("All ModelSpecs in a MultiInferenceRequest must access the same "
                           "model name.")
    err = _error(service.multi_inference, _multi(REGRESS, REGRESS))
    assert err.message == "Duplicate evaluation of signature: regress_x_to_y"
    err = _error(service.multi_inference, _multi(("default", "nope", REGRESS[2])))
    assert err.message == "Requested signature not found in model graph: nope"
    err = _error(service.multi_inference,
                 _multi(("default", "regress_x_to_y", "tensorflow/serving/predict")))
    assert (err.code, err.message) == (grpc.StatusCode.UNIMPLEMENTED,
                                       "Unsupported signature method_name: "
                                       "tensorflow/serving/predict")
    err = _error(service.multi_inference, _multi(("other",) + REGRESS[1:]))
    assert err.code == grpc.StatusCode.NOT_FOUND
    empty = _multi(REGRESS)
    del empty.input.example_list.examples[:]
    assert _error(service.multi_inference, empty).message == "Input is empty."


# ----------------------------------------------------------------------------- REST
def test_rest_classify_and_regress_golden(service):
    """testClassifyREST / testRegressREST: {"examples": [{"x": 2.0}]} -> 3.0."""
    body = b'{"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}'
    request = classification_request_from_json(body, "default", None, None)
    assert classify_response_to_json(service.classify(request)) == {"results": [[["", 3.0]]]}
    body = '{"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 1.0}]}'
    request = regression_request_from_json(body, "default", 123, None)
    assert request.model_spec.version.value == 123
    assert regress_response_to_json(service.regress(request)) == {"results": [3.0, 2.5]}


def test_rest_context_and_feature_kinds():
    doc = {"context": {"x": 1.0, "q": "pizza", "b": {"b64": "AAE="}, "n": [1, 2, True]},
           "examples": [{"x": [2.0, 3.5]}, {}]}
    request = regression_request_from_json(doc, "m", None, "stable")
    assert request.model_spec.version_label == "stable"
    with_context = request.input.example_list_with_context
    feature = with_context.context.features.feature
    assert list(feature["x"].float_list.value) == [1.0]
    assert list(feature["q"].bytes_list.value) == [b"pizza"]
    assert list(feature["b"].bytes_list.value) == [b"\x00\x01"]
    assert list(feature["n"].int64_list.value) == [1, 2, 1]
    assert list(with_context.examples[0].features.feature["x"].float_list.value) == [2.0, 3.5]
    assert len(with_context.examples) == 2


@pytest.mark.parametrize("body,message", [
    ("", "JSON Parse error: The document is empty"),
    ("[1]", "JSON Value: [1] Is not object"),
    ('{"signature_name": 1, "examples": []}',
     'JSON Value: {\n    "signature_name": 1,\n    "examples": []\n} not formatted correctly. '
     "'signature_name' key must be a string value."),
    ('{"x": 1}', 'JSON Value: {\n    "x": 1\n} When method is classify, key \'examples\' is '
                 "expected and was not found"),
    ('{"examples": {}}', "JSON Value: {\n    \"examples\": {}\n} Expecting 'examples' value "
                         "to be an list/array"),
    ('{"examples": []}', "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty "
                         "array"),
    ('{"examples": [1]}', "Example must be JSON object but got JSON Number"),
    ('{"context": [], "examples": [{}]}', "Example must be JSON object but got JSON Array"),
    ('{"examples": [{"x": [1.0, "a"]}]}',
     "Unexpected element type in feature: x expecting type: float"),
    ('{"examples": [{"x": [2.0, 3]}]}',      # 3 is an integer: an int64 element
     "Unexpected element type in feature: x expecting type: float"),
    ('{"examples": [{"x": null}]}', "Feature: x has element with unexpected JSON type: Null"),
    ('{"examples": [{"x": [[1.0]]}]}', "Feature: x has element with unexpected JSON type: Array"),
    ('{"examples": [{"x": 9223372036854775808}]}',
     "Feature: x has uint64_t element. Only int64_t is supported."),
    ('{"examples": [{"x": {"b64": "!!"}}]}', "Unable to base64 decode"),
])
def test_rest_request_errors(body, message):
    with pytest.raises(ServingError) as info:
        classification_request_from_json(body, "m", None, None)
    assert (info.value.code, info.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_rest_error_echo_is_cut_like_tf_serving():
    """The request is echoed as rapidjson's pretty JSON, cut after the write passing 256 B."""
    doc = '{"examples": {"k": [' + ", ".join(["1.5"] * 200) + "]}}"
    with pytest.raises(ServingError) as info:
        classification_request_from_json(doc, "m", None, None)
    echo = info.value.message[len("JSON Value: "):-len(" Expecting 'examples' value to be an "
                                                       "list/array")]
    assert echo.startswith('{\n    "examples": {\n        "k": [1.5, 1.5')
    assert 256 <= len(echo) < 256 + len(", 1.5") and echo.endswith("1.5")


def test_rest_version_and_label_together():
    with pytest.raises(ServingError) as info:
        classification_request_from_json('{"examples": [{}]}', "m", 3, "stable")
    assert info.value.message == ("Both model version (3) and model version label (stable) "
                                  "cannot be supplied.")


def test_rest_response_formats():
    response = regression_pb2.RegressionResponse()
    for value in (0.1, 3.0, float("nan")):
        response.result.regressions.add().value = value
    results = regress_response_to_json(response)["results"]
    assert results[:2] == [0.1, 3.0] and np.isnan(results[2])   # float32 0.1 prints as 0.1
    with pytest.raises(ServingError, match="Cannot convert empty RegressionResults to JSON"):
        regress_response_to_json(regression_pb2.RegressionResponse())
    with pytest.raises(ServingError, match="Cannot convert empty ClassificationResults to JSON"):
        classify_response_to_json(classification_pb2.ClassificationResponse())
