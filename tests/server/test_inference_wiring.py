"""Classify / Regress reach the inference object the server is given, over gRPC and REST.

The object here answers Regress the way TF Serving's regressor does for a signature that
takes serialized ``tf.Example``s -- serialize the request's examples, ``Runner.run`` the
signature, one value a row -- so the test checks the public pieces such a service is built
on (``Registry.resolve``, ``Runner.run``, ``Version.signature_defs``) and the REST
translation of TF Serving's JSON, on TF Serving's own ``half_plus_two`` test model (skipped
when ``../shared/tfserving_suite`` is absent).
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
    classification_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from recsys_tf.wire.errors import ServingError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HALF_PLUS_TWO = os.path.join(os.path.dirname(ROOT), "shared", "tfserving_suite", "servables",
                             "tensorflow", "testdata", "saved_model_half_plus_two_cpu")


class _ExampleRegressor:
    """Regress on a signature whose one input is a batch of serialized tf.Examples."""

    def __init__(self, registry, runner):
        self.registry = registry
        self.runner = runner

    def regress(self, request):
        version = self.registry.resolve(request.model_spec)
        name = request.model_spec.signature_name or "serving_default"
        sig = self.runner.signature(version, name)
        examples = request.input.example_list.examples
        serialized = np.array([e.SerializeToString() for e in examples], dtype=object)
        (key,) = sig.inputs
        (out,) = sig.outputs
        values = self.runner.run(version, name, {key: serialized}, [out])[out]
        response = regression_pb2.RegressionResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.model_spec.version.value = version.version
        for v in values.reshape(-1):
            response.result.regressions.add().value = float(v)
        return response

    def classify(self, request):
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "classify: not in this test")

    def multi_inference(self, request):
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "multi_inference: not in this test")


@pytest.fixture(scope="module")
def served():
    if not os.path.isdir(HALF_PLUS_TWO):
        pytest.skip(f"TF Serving's test data not found at {HALF_PLUS_TWO}")
    from recsys_tf.server.options import ServerOptions
    from recsys_tf.server.server import ModelServer

    options = ServerOptions(model_name="default", model_base_path=HALF_PLUS_TWO, port=0,
                            rest_api_port=0)
    srv = ModelServer(options)
    srv.prediction.inference = _ExampleRegressor(srv.registry, srv.runner)
    with srv:
        yield srv


def _post(srv, verb, doc):
    url = f"http://{srv.rest_target}/v1/models/default:{verb}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=json.dumps(doc).encode()),
                                    timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_grpc_regress_goes_to_the_inference_object(served):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    for x in (2.0, 4.0):
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(x)
        request.input.example_list.examples.add().CopyFrom(example)
    with grpc.insecure_channel(served.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Regress(request, timeout=30)
        assert [r.value for r in response.result.regressions] == [3.0, 4.0]
        assert response.model_spec.version.value == 123
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(classification_pb2.ClassificationRequest(), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rest_regress_translates_tf_serving_json(served):
    assert _post(served, "regress", {"signature_name": "regress_x_to_y",
                                     "examples": [{"x": 2.0}, {"x": 10.0}]}) == \
        (200, {"results": [3.0, 7.0]})
    # an integer JSON value is an int64 feature, which the model's ParseExample refuses
    status, body = _post(served, "regress", {"signature_name": "regress_x_to_y",
                                             "examples": [{"x": 10}]})
    assert status == 400 and "Data types don't match" in body["error"]
    status, body = _post(served, "regress", {"signature_name": "nope", "examples": []})
    assert status == 400 and "nope" in body["error"]
    status, body = _post(served, "classify", {"examples": [{"x": 1.0}]})
    assert status == 501


def test_runner_run_contract(served):
    from tensorflow_serving.apis import model_pb2

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
