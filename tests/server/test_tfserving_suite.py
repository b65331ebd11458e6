"""The bundled server against TF Serving's own tests and test data.

``../shared/tfserving_suite`` (beside the repository) holds TF Serving's
``tensorflow_model_server_test.py``, adapted only to launch ``recsys-tf serve``, and the test
models it reads (TF Serving's, Apache 2.0). Skipped when that folder is absent.

* default run: TF Serving's quickstart -- ``saved_model_half_plus_two_cpu`` (a TF1 graph whose
  placeholder ``x`` is declared ``[None, 1]``) answers ``{"instances": [1.0, 2.0, 5.0]}`` over
  REST with ``{"predictions": [2.5, 3.0, 4.5]}``, and a gRPC Predict in ``float_val``;
* slow: the whole suite (``run.sh``) against the installed ``recsys-tf``, which must end with
  no failure. ``NOT_APPLICABLE`` lists the tests left out here, with the reason.
"""
import json
import os
import shutil
import subprocess
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(os.path.dirname(ROOT), "shared", "tfserving_suite")
TESTDATA = os.path.join(SUITE, "servables", "tensorflow", "testdata")
HALF_PLUS_TWO = os.path.join(TESTDATA, "saved_model_half_plus_two_cpu")

# Tests of the suite not run here, and why (the suite itself marks TF Lite and TF Text).
NOT_APPLICABLE = {
    "test_profiler_service_with_valid_trace_request":
        "TF Serving registers TensorFlow's C++ ProfilerService on its own gRPC server; from "
        "Python, TensorFlow only offers a profiler server of its own "
        "(tf.profiler.experimental.server.start), which listens on every interface ([::]) "
        "-- against this server's loopback-only default -- and on another port than the one "
        "the test traces",
}


def _suite_tests():
    with open(os.path.join(SUITE, "tensorflow_model_server_test.py"), encoding="utf-8") as f:
        return [line.split("def ", 1)[1].split("(", 1)[0] for line in f
                if line.startswith("  def test")]


@pytest.fixture(scope="module")
def half_plus_two():
    if not os.path.isdir(HALF_PLUS_TWO):
        pytest.skip(f"TF Serving's test data not found at {TESTDATA}")
    from recsys_tf.server.server import ModelServer

    with ModelServer(model_name="half_plus_two", model_base_path=HALF_PLUS_TWO, port=0,
                     rest_api_port=0) as srv:
        yield srv


def test_quickstart_rest_predict(half_plus_two):
    body = json.dumps({"instances": [1.0, 2.0, 5.0]}).encode()
    url = f"http://{half_plus_two.rest_target}/v1/models/half_plus_two:predict"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as resp:
        assert json.loads(resp.read()) == {"predictions": [2.5, 3.0, 4.5]}


def test_quickstart_grpc_predict_answers_in_float_val(half_plus_two):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.extend([1.0, 2.0, 5.0])
    request.inputs["x"].tensor_shape.dim.add().size = 3
    with grpc.insecure_channel(half_plus_two.target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30)
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT and not y.tensor_content
    assert list(y.float_val) == [2.5, 3.0, 4.5]
    assert [d.size for d in y.tensor_shape.dim] == [3]
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 123


def test_tensor_content_when_asked(half_plus_two):
    """``enable_serialization_as_tensor_content``: the same answer, packed."""
    from recsys_tf.server.server import ModelServer
    from recsys_tf.wire import codec

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    codec.to_tensor_proto(np.array([[1.0], [3.0]], np.float32), out=request.inputs["x"])
    with ModelServer(model_name="half_plus_two", model_base_path=HALF_PLUS_TWO, port=0,
                     enable_serialization_as_tensor_content=True) as srv:
        y = srv.predict(request).outputs["y"]
    assert y.tensor_content and not y.float_val
    np.testing.assert_array_equal(codec.to_ndarray(y), [[2.5], [3.5]])


@pytest.mark.slow
def test_tfserving_suite_passes():
    """TF Serving's integration tests, one process each (about 10 min on 2 cores)."""
    run = os.path.join(SUITE, "run.sh")
    if not os.path.isfile(run):
        pytest.skip(f"TF Serving's test suite not found at {SUITE}")
    server = shutil.which("recsys-tf")
    if server is None:
        pytest.skip("recsys-tf is not installed")
    tests = [t for t in _suite_tests() if t not in NOT_APPLICABLE]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(["bash", run, server] + tests, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, timeout=3600, check=False)
    output = done.stdout.decode("utf-8", "replace")
    last = output.strip().splitlines()[-1]
    assert last.startswith("tfserving suite:") and " 0 failed" in last, output[-6000:]
