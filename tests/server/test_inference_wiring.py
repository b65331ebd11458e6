"""Classify / Regress / MultiInference reach the server's inference service over gRPC and
REST, and the public pieces that service is built on (``Registry.resolve``, ``Runner.run``,
``Version.signature_defs``) keep their contract; on TF Serving's own ``half_plus_two`` test
model (skipped when ``../shared/tfserving_suite`` is absent). The service's own behaviour is
tested in ``test_inference.py``.
"""
import json
import os
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    inference_pb2,
    model_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from recsys_tf.wire.errors import ServingError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HALF_PLUS_TWO = os.path.join(os.path.dirname(ROOT), "shared", "tfserving_suite", "servables",
                             "tensorflow", "testdata", "saved_model_half_plus_two_cpu")


@pytest.fixture(scope="module")
def served():
    if not os.path.isdir(HALF_PLUS_TWO):
        pytest.skip(f"TF Serving's test data not found at {HALF_PLUS_TWO}")
    from recsys_tf.server.options import ServerOptions
    from recsys_tf.server.server import ModelServer

    options = ServerOptions(model_name="default", model_base_path=HALF_PLUS_TWO, port=0,
                            rest_api_port=0)
    with ModelServer(options) as srv:
        yield srv


def _post(srv, verb, doc):
    url = f"http://{srv.rest_target}/v1/models/default:{verb}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=json.dumps(doc).encode()),
                                    timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _examples(target, xs):
    for x in xs:
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(x)
        target.examples.add().CopyFrom(example)


def test_grpc_regress_and_multi_inference(served):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    _examples(request.input.example_list, (2.0, 4.0))
    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = multi.tasks.add()
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
        task.method_name = method
    _examples(multi.input.example_list, (6.0,))
    with grpc.insecure_channel(served.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Regress(request, timeout=30)
        assert [r.value for r in response.result.regressions] == [3.0, 4.0]
        assert response.model_spec.version.value == 123
        results = stub.MultiInference(multi, timeout=30).results
    assert results[0].regression_result.regressions[0].value == 5.0
    assert results[1].classification_result.classifications[0].classes[0].score == 5.0


def test_rest_classify_and_regress(served):
    assert _post(served, "classify", {"signature_name": "classify_x_to_y",
                                      "examples": [{"x": 2.0}]}) == \
        (200, {"results": [[["", 3.0]]]})
    assert _post(served, "regress", {"signature_name": "regress_x_to_y",
                                     "examples": [{"x": 2.0}, {"x": 10.0}]}) == \
        (200, {"results": [3.0, 7.0]})
    # an integer JSON value is an int64 feature, which the model's ParseExample refuses
    status, body = _post(served, "regress", {"signature_name": "regress_x_to_y",
                                             "examples": [{"x": 10}]})
    assert status == 400 and "Data types don't match" in body["error"]


def test_runner_run_contract(served):
    version = served.registry.resolve(model_pb2.ModelSpec(name="default"))
    assert "regress_x2_to_y3" in version.signature_defs
    # shapes are the graph's business: [3] for a placeholder declared [None, 1]
    out = served.runner.run(version, "serving_default",
                            {"x": np.array([1.0, 2.0, 5.0], np.float32)})
    assert list(out) == ["y"] and out["y"].tolist() == [2.5, 3.0, 4.5]
    with pytest.raises(ServingError) as info:
        served.runner.run(version, "nope", {"x": np.ones(1, np.float32)})
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.message == 'Serving signature key "nope" not found.'
    with pytest.raises(ServingError) as info:    # what the graph cannot compute
        served.runner.run(version, "serving_default", {"x": np.array(["a"], object)})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
