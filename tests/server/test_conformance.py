"""TF Serving conformance, checked only over the wire (gRPC and REST).

By default the suite writes tiny SavedModels, starts the bundled server on an ephemeral
127.0.0.1 port and talks to it. The same suite runs unchanged against real TensorFlow Serving:

    python tests/serving/test_conformance.py write-models /tmp/conformance \\
        --base-path-prefix /models
    docker run --rm -p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501 \\
        -v /tmp/conformance:/models tensorflow/serving \\
        --model_config_file=/models/models.config --rest_api_port=8501 \\
        --file_system_poll_wait_seconds=1 --max_num_load_retries=0
    RECSYS_TF_SERVING_TARGET=127.0.0.1:8500 RECSYS_TF_SERVING_TARGET_REST=127.0.0.1:8501 \\
    RECSYS_TF_SERVING_MODEL_DIR=/tmp/conformance RECSYS_TF_SERVING_POLL_SECONDS=1 \\
        pytest tests/serving/test_conformance.py

With ``RECSYS_TF_SERVING_BATCHING=1`` the bundled server runs with server-side batching on.

``RECSYS_TF_SERVING_MODEL_DIR`` (the folder the server reads, as seen from here) enables the
hot-swap and broken-version tests; ``RECSYS_TF_SERVING_MAX_MESSAGE_BYTES`` the oversize-message
tests. Where TF Serving's answer is not pinned down by its sources (e.g. a garbage request
body), an external server may also answer with the alternative listed in the case.

Every malformed request is followed by a well-formed one: the server must still answer.
"""
import base64
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from predict_requests import predict_request as make_predict_request

# --------------------------------------------------------------------------- models
TARGET = os.environ.get("RECSYS_TF_SERVING_TARGET")
REST_TARGET = (os.environ.get("RECSYS_TF_SERVING_TARGET_REST")
               or os.environ.get("RECSYS_TF_SERVING_REST_TARGET"))
EXTERNAL = bool(TARGET)
POLL = float(os.environ.get("RECSYS_TF_SERVING_POLL_SECONDS", "1.0"))
BUNDLED_MAX_MESSAGE = 8 * 1024 * 1024
MAX_MESSAGE = int(os.environ.get("RECSYS_TF_SERVING_MAX_MESSAGE_BYTES", "0")) or (
    None if EXTERNAL else BUNDLED_MAX_MESSAGE)
USERS = [f"u{i}" for i in range(9)]

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
INTERNAL = grpc.StatusCode.INTERNAL

CONFIG = """model_config_list {{
  config {{ name: "ranker" base_path: "{p}/ranker" model_platform: "tensorflow" }}
  config {{
    name: "policy_all" base_path: "{p}/policy_all" model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "policy_latest2" base_path: "{p}/policy_latest2" model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 2 }} }}
  }}
  config {{
    name: "policy_specific" base_path: "{p}/policy_specific" model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 }} }}
  }}
  config {{ name: "swap" base_path: "{p}/swap" model_platform: "tensorflow" }}
  config {{ name: "broken" base_path: "{p}/broken" model_platform: "tensorflow" }}
}}
"""


def _ranker_module(tf, version):
    """A ranker-shaped model: string and integer ids looked up inside (unknown ids fall into an
    OOV row), a float feature, a [batch, 4] id sequence; every input's shape is enforced by
    TensorFlow itself, so a real TF Serving rejects the same malformed shapes."""

    class Ranker(tf.Module):
        def __init__(self):
            super().__init__()
            keys = tf.constant(USERS)
            self.users = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(USERS), dtype=tf.int64)),
                default_value=len(USERS))
            rng = np.random.default_rng(7)
            self.user_emb = tf.Variable(rng.normal(size=(len(USERS) + 1, 4)).astype("float32"))
            self.item_emb = tf.Variable(rng.normal(size=(16, 4)).astype("float32"))
            self.w = tf.Variable(0.5 * version, dtype=tf.float32)
            self.version = tf.Variable(version, dtype=tf.int64)

        def _user(self, user_id):
            return tf.gather(self.user_emb, self.users.lookup(user_id))

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([None], tf.int64, name="item_id"),
            tf.TensorSpec([None], tf.float32, name="price"),
            tf.TensorSpec([None, 4], tf.int64, name="history")])
        def serve(self, user_id, item_id, price, history):
            user_id = tf.ensure_shape(user_id, [None])
            item_id = tf.ensure_shape(item_id, [None])
            price = tf.ensure_shape(price, [None])
            history = tf.ensure_shape(history, [None, 4])
            u = self._user(user_id)
            i = tf.gather(self.item_emb, tf.math.floormod(item_id, 16))
            h = tf.reduce_mean(tf.gather(self.item_emb, tf.math.floormod(history, 16)), axis=1)
            parts = tf.stack([tf.reduce_sum(u * i, axis=1), self.w * price,
                              tf.reduce_sum(h * i, axis=1)], axis=1)
            logit = tf.reduce_sum(parts, axis=1)
            return {"probability": tf.sigmoid(logit), "logit": logit,
                    "version": tf.fill(tf.shape(logit), self.version)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
        def embed(self, user_id):
            return {"embedding": self._user(tf.ensure_shape(user_id, [None]))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                      tf.TensorSpec([], tf.int32, name="k")])
        def topk(self, user_id, k):
            scores = tf.matmul(self._user(tf.ensure_shape(user_id, [None])), self.item_emb,
                               transpose_b=True)
            top = tf.math.top_k(scores, k=tf.ensure_shape(k, []))
            return {"item_ids": tf.cast(top.indices, tf.int64), "scores": top.values}

    module = Ranker()
    signatures = {"serving_default": module.serve.get_concrete_function(),
                  "embed": module.embed.get_concrete_function(),
                  "topk": module.topk.get_concrete_function()}
    return module, signatures


def _simple_module(tf, version):
    class Simple(tf.Module):
        def __init__(self):
            super().__init__()
            self.offset = tf.Variable(float(version))
            self.version = tf.Variable(version, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            x = tf.ensure_shape(x, [None])
            return {"y": x + self.offset, "version": tf.fill(tf.shape(x), self.version)}

    module = Simple()
    return module, {"serving_default": module.serve.get_concrete_function()}


def _good_arrays(n=3):
    return {"user_id": np.array((USERS + ["stranger"])[:n] * (n // 10 + 1), dtype=object)[:n],
            "item_id": np.arange(n, dtype=np.int64),
            "price": np.linspace(0.5, 2.0, n).astype(np.float32),
            "history": (np.arange(4 * n, dtype=np.int64).reshape(n, 4) % 7)}


def _write_warmup(tf, path, model_name):
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    for key, value in _good_arrays(2).items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value if value.dtype != object
                                                          else value.astype(bytes)))
    entry = prediction_log_pb2.PredictionLog()
    entry.predict_log.request.CopyFrom(request)
    with tf.io.TFRecordWriter(os.path.join(path, "assets.extra",
                                           "tf_serving_warmup_requests")) as writer:
        writer.write(entry.SerializeToString())


def write_models(root, base_path_prefix=None):
    """Write every SavedModel and ``models.config`` the suite needs under ``root``."""
    import recsys_tf  # noqa: F401  (environment set before TensorFlow loads)
    import tensorflow as tf

    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    cache = os.path.join(root, ".cache")
    for version in (1, 2):
        module, sigs = _ranker_module(tf, version)
        path = os.path.join(root, "ranker", str(version))
        tf.saved_model.save(module, path, signatures=sigs)
        _write_warmup(tf, path, "ranker")
    for version in (1, 2, 3):
        module, sigs = _simple_module(tf, version)
        tf.saved_model.save(module, os.path.join(cache, f"simple{version}"), signatures=sigs)
    layout = {"policy_all": (1, 2, 3), "policy_latest2": (1, 2, 3),
              "policy_specific": (1, 2), "swap": (1,), "broken": (1,)}
    for name, versions in layout.items():
        for version in versions:
            shutil.copytree(os.path.join(cache, f"simple{version}"),
                            os.path.join(root, name, str(version)))
    prefix = (base_path_prefix or root).rstrip("/")
    with open(os.path.join(root, "models.config"), "w") as f:
        f.write(CONFIG.format(p=prefix))
    return root


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """(grpc target, rest target or None, model dir or None, bundled server or None)."""
    if EXTERNAL:
        yield TARGET, REST_TARGET, os.environ.get("RECSYS_TF_SERVING_MODEL_DIR"), None
        return
    from recsys_tf.server.server import ModelServer

    root = write_models(tmp_path_factory.mktemp("conformance"))
    batching = {}
    if os.environ.get("RECSYS_TF_SERVING_BATCHING"):  # the same suite through the batch path
        from recsys_tf.server.batching import BatchingOptions

        batching = {"enable_batching": True, "batching_parameters": BatchingOptions(
            max_batch_size=100_000, batch_timeout_micros=1000, max_enqueued_batches=1000)}
    server = ModelServer(model_config_file=os.path.join(root, "models.config"), port=0,
                         rest_api_port=0, poll_seconds=POLL,
                         max_message_bytes=BUNDLED_MAX_MESSAGE, **batching)
    server.start()
    try:
        yield server.target, server.rest_target, root, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def channel(deployment):
    ch = grpc.insecure_channel(deployment[0], options=[
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    grpc.channel_ready_future(ch).result(timeout=30)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stubs(channel):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


@pytest.fixture(scope="module")
def rest(deployment):
    if not deployment[1]:
        pytest.skip("no REST target (set RECSYS_TF_SERVING_TARGET_REST)")
    return f"http://{deployment[1]}"


# --------------------------------------------------------------------------- helpers
def _tensor(value, dtype=None):
    import tensorflow as tf

    if dtype is None and isinstance(value, np.ndarray) and value.dtype == object:
        value = value.astype(bytes)
    return tf.make_tensor_proto(value, dtype=dtype)


def predict_request(model="ranker", inputs=None, signature=None, version=None, label=None,
                    output_filter=()):
    # values made into protos by TensorFlow's own writer: this suite also runs against TF Serving
    return make_predict_request(model, _good_arrays() if inputs is None else inputs,
                                lambda value: _tensor(np.asarray(value)), signature, version,
                                label, output_filter)


def _call(method, request, timeout=30):
    """(code, details, response) of one unary call."""
    try:
        return OK, "", method(request, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", None


def _to_array(proto):
    import tensorflow as tf

    return tf.make_ndarray(proto)


def assert_alive(stubs):
    """A well-formed Predict still succeeds (the server survived whatever came before)."""
    code, details, response = _call(stubs[0].Predict, predict_request())
    assert code == OK, f"server stopped answering well-formed requests: {code} {details}"
    assert _to_array(response.outputs["probability"]).shape == (3,)


def http(rest, method, path, body=None, raw=None, headers=None, timeout=30):
    """(status, parsed JSON or text) of one REST call."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(rest + path, data=data, method=method,
                                 headers=dict({"Content-Type": "application/json"},
                                              **(headers or {})))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _status_map(stubs, model):
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    code, details, response = _call(stubs[1].GetModelStatus, request)
    assert code == OK, details
    names = get_model_status_pb2.ModelVersionStatus.State
    return {s.version: (names.Name(s.state), s.status.error_code, s.status.error_message)
            for s in response.model_version_status}


def _available(stubs, model):
    return sorted(v for v, (state, _, _) in _status_map(stubs, model).items()
                  if state == "AVAILABLE")


# --------------------------------------------------------------------------- the happy path
def test_predict_answers_with_model_spec_and_all_outputs(stubs):
    code, details, response = _call(stubs[0].Predict, predict_request())
    assert code == OK, details
    assert response.model_spec.name == "ranker"
    assert response.model_spec.version.value == 2  # latest of 1, 2
    assert response.model_spec.signature_name == "serving_default"
    assert set(response.outputs) == {"probability", "logit", "version"}
    prob = _to_array(response.outputs["probability"])
    assert prob.dtype == np.float32 and prob.shape == (3,)
    assert np.all((prob > 0) & (prob < 1))
    assert _to_array(response.outputs["version"]).tolist() == [2, 2, 2]


def test_output_filter_returns_only_the_named_outputs(stubs):
    code, details, response = _call(stubs[0].Predict,
                                     predict_request(output_filter=["logit"]))
    assert code == OK, details
    assert list(response.outputs) == ["logit"]


def test_other_signatures(stubs):
    code, details, response = _call(stubs[0].Predict, predict_request(
        signature="embed", inputs={"user_id": np.array(["u1", "zz"], dtype=object)}))
    assert code == OK, details
    assert _to_array(response.outputs["embedding"]).shape == (2, 4)
    code, details, response = _call(stubs[0].Predict, predict_request(
        signature="topk", inputs={"user_id": np.array(["u1"], dtype=object),
                                  "k": np.array(5, np.int32)}))
    assert code == OK, details
    assert _to_array(response.outputs["item_ids"]).shape == (1, 5)


def test_repeated_field_tensors_are_accepted(stubs):
    request = predict_request()
    price = request.inputs["price"]
    price.ClearField("tensor_content")
    del price.float_val[:]
    price.float_val.extend([1.0, 2.0, 3.0])
    code, details, _ = _call(stubs[0].Predict, request)
    assert code == OK, details


def test_packed_string_tensor_content_is_accepted(stubs):
    """TensorFlow's packed string layout in tensor_content (what the client sends for a value
    repeated on every row) answers as the same strings in string_val do."""
    from recsys_tf.wire import codec

    plain = predict_request(inputs=dict(_good_arrays(), user_id=np.array(["u1"] * 3, object)))
    packed = predict_request(inputs=dict(_good_arrays()))
    packed.inputs["user_id"].Clear()
    codec.to_tensor_proto(np.broadcast_to(np.array(["u1"], object), (3,)),
                          out=packed.inputs["user_id"])
    assert packed.inputs["user_id"].tensor_content and not packed.inputs["user_id"].string_val
    answers = []
    for request in (plain, packed):
        code, details, response = _call(stubs[0].Predict, request)
        assert code == OK, details
        answers.append({k: _to_array(v) for k, v in response.outputs.items()})
    for k in answers[0]:
        np.testing.assert_array_equal(answers[0][k], answers[1][k])


# --------------------------------------------------------------------------- status codes
def test_status_codes(stubs):
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        regression_pb2,
    )

    predict, status = stubs[0].Predict, stubs[1].GetModelStatus
    cases = [
        (predict, predict_request(model="no_such_model"), {NOT_FOUND}, "no_such_model"),
        (predict, predict_request(version=99), {NOT_FOUND}, "99"),
        (predict, predict_request(label="nope"), {INVALID}, "nope"),
        (predict, predict_request(signature="nope"), {FAILED}, "nope"),
    ]
    meta = get_model_metadata_pb2.GetModelMetadataRequest()
    meta.model_spec.name = "ranker"
    cases.append((stubs[0].GetModelMetadata, meta, {INVALID}, "metadata_field"))
    meta_bad = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_bad.model_spec.name = "ranker"
    meta_bad.metadata_field.append("nope")
    cases.append((stubs[0].GetModelMetadata, meta_bad, {INVALID}, "nope"))
    meta_missing = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_missing.model_spec.name = "no_such_model"
    meta_missing.metadata_field.append("signature_def")
    cases.append((stubs[0].GetModelMetadata, meta_missing, {NOT_FOUND}, "no_such_model"))
    st = get_model_status_pb2.GetModelStatusRequest()
    st.model_spec.name = "no_such_model"
    cases.append((status, st, {NOT_FOUND}, "no_such_model"))
    st_v = get_model_status_pb2.GetModelStatusRequest()
    st_v.model_spec.name = "ranker"
    st_v.model_spec.version.value = 99
    cases.append((status, st_v, {NOT_FOUND}, "99"))
    # the ranker's signatures take raw features, not serialized tf.Examples: TF Serving's
    # Classify / Regress refuse them (INVALID_ARGUMENT or FAILED_PRECONDITION)
    not_here = {INVALID, FAILED} if not EXTERNAL else {UNIMPLEMENTED, INVALID, FAILED}
    for method, cls in ((stubs[0].Classify, classification_pb2.ClassificationRequest),
                        (stubs[0].Regress, regression_pb2.RegressionRequest)):
        request = cls()
        request.model_spec.name = "ranker"
        request.input.example_list.examples.add()
        cases.append((method, request, not_here, ""))
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name = "ranker"
    task.method_name = "tensorflow/serving/classify"
    multi.input.example_list.examples.add()
    cases.append((stubs[0].MultiInference, multi, not_here, ""))
    for method, request, codes, fragment in cases:
        code, details, _ = _call(method, request)
        assert code in codes, (type(request).__name__, code, details)
        assert fragment in details, details
        assert_alive(stubs)


def test_model_status_shape(stubs, rest):
    assert _status_map(stubs, "ranker") == {2: ("AVAILABLE", 0, "")}
    status, body = http(rest, "GET", "/v1/models/ranker")
    assert status == 200, body
    assert body == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                          "error_message": ""}}]}
    status, body = http(rest, "GET", "/v1/models/ranker/versions/2")
    assert status == 200 and [v["version"] for v in body["model_version_status"]] == ["2"]


# --------------------------------------------------------------------------- metadata
def test_grpc_metadata_shape(stubs):
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "ranker"
    request.metadata_field.append("signature_def")
    code, details, response = _call(stubs[0].GetModelMetadata, request)
    assert code == OK, details
    assert response.model_spec.name == "ranker" and response.model_spec.version.value == 2
    assert list(response.metadata) == ["signature_def"]
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    assert {"serving_default", "embed", "topk"} <= set(sig_map.signature_def)
    default = sig_map.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    dtypes = {k: v.dtype for k, v in default.inputs.items()}
    assert dtypes == {"user_id": types_pb2.DT_STRING, "item_id": types_pb2.DT_INT64,
                      "price": types_pb2.DT_FLOAT, "history": types_pb2.DT_INT64}
    assert [d.size for d in default.inputs["history"].tensor_shape.dim] == [-1, 4]
    assert set(default.outputs) == {"probability", "logit", "version"}
    topk = sig_map.signature_def["topk"]
    k_shape = topk.inputs["k"].tensor_shape
    assert not k_shape.dim and not k_shape.unknown_rank  # a scalar


def test_rest_metadata_shape(rest):
    status, body = http(rest, "GET", "/v1/models/ranker/metadata")
    assert status == 200, body
    assert body["model_spec"] == {"name": "ranker", "signature_name": "", "version": "2"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["user_id"]["dtype"] == "DT_STRING"
    assert [d["size"] for d in default["inputs"]["history"]["tensor_shape"]["dim"]] == ["-1", "4"]
    status, body = http(rest, "GET", "/v1/models/policy_all/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    status, body = http(rest, "GET", "/v1/models/policy_all/labels/canary/metadata")
    assert status == 200 and body["model_spec"]["version"] == "2"


# --------------------------------------------------------------------------- versions
def _served_version(stubs, model, **spec):
    """The version that answered (response.model_spec), checked against the model's output."""
    code, details, response = _call(stubs[0].Predict, predict_request(
        model=model, inputs={"x": np.zeros(2, np.float32)}, **spec))
    if code != OK:
        return code
    version = response.model_spec.version.value
    if model.startswith("policy_"):  # these versions also say who they are
        assert int(_to_array(response.outputs["version"])[0]) == version
    return version


def test_version_policies(stubs):
    # latest (default): only the newest version
    assert _available(stubs, "ranker") == [2]
    code, _, _ = _call(stubs[0].Predict, predict_request(version=1))
    assert code == NOT_FOUND
    # all {}: every version, latest by default
    assert _available(stubs, "policy_all") == [1, 2, 3]
    assert [_served_version(stubs, "policy_all", version=v) for v in (1, 2, 3)] == [1, 2, 3]
    assert _served_version(stubs, "policy_all") == 3
    # latest { num_versions: 2 }
    assert _available(stubs, "policy_latest2") == [2, 3]
    assert _served_version(stubs, "policy_latest2", version=1) == NOT_FOUND
    assert _served_version(stubs, "policy_latest2", version=2) == 2
    # specific { versions: 1 } with 1 and 2 on disk
    assert _available(stubs, "policy_specific") == [1]
    assert _served_version(stubs, "policy_specific") == 1
    assert _served_version(stubs, "policy_specific", version=2) == NOT_FOUND


def test_version_labels(stubs, rest):
    assert _served_version(stubs, "policy_all", label="stable") == 1
    assert _served_version(stubs, "policy_all", label="canary") == 2
    assert _served_version(stubs, "policy_all", label="beta") == INVALID
    for path, want in (("/v1/models/policy_all/labels/stable:predict", 1.0),
                       ("/v1/models/policy_all/labels/canary:predict", 2.0),
                       ("/v1/models/policy_all/versions/3:predict", 3.0),
                       ("/v1/models/policy_all:predict", 3.0)):
        status, body = http(rest, "POST", path, {"inputs": {"x": [0.0]}})
        assert status == 200, body
        assert body["outputs"]["y"] == [want]
    status, body = http(rest, "POST", "/v1/models/policy_all/labels/beta:predict",
                        {"inputs": {"x": [0.0]}})
    assert status == 400 and "beta" in body["error"]


# --------------------------------------------------------------------------- REST happy path
def test_rest_row_and_columnar_formats(rest):
    good = _good_arrays(2)
    instances = [{"user_id": good["user_id"][i], "item_id": int(good["item_id"][i]),
                  "price": float(good["price"][i]), "history": good["history"][i].tolist()}
                 for i in range(2)]
    status, body = http(rest, "POST", "/v1/models/ranker:predict", {"instances": instances})
    assert status == 200, body
    assert len(body["predictions"]) == 2
    assert set(body["predictions"][0]) == {"probability", "logit", "version"}
    assert body["predictions"][0]["version"] == 2
    columns = {"user_id": [{"b64": base64.b64encode(b"u1").decode()}, "u2"],
               "item_id": [1, 2], "price": [1.0, 2.0], "history": [[1, 2, 3, 4], [0, 0, 0, 0]]}
    status, body = http(rest, "POST", "/v1/models/ranker/versions/2:predict",
                        {"signature_name": "serving_default", "inputs": columns})
    assert status == 200, body
    assert set(body["outputs"]) == {"probability", "logit", "version"}
    assert len(body["outputs"]["logit"]) == 2
    # one input, one output: bare values both ways
    status, body = http(rest, "POST", "/v1/models/policy_all/versions/1:predict",
                        {"instances": [1.0, 2.5]})
    assert status == 200 and [p["y"] for p in body["predictions"]] == [2.0, 3.5]
    status, body = http(rest, "POST", "/v1/models/ranker:predict",
                        {"signature_name": "embed", "instances": ["u1", "u2", "u3"]})
    assert status == 200 and np.asarray(body["predictions"]).shape == (3, 4)


# --------------------------------------------------------------------------- malformed: gRPC
def _with(**changes):
    values = _good_arrays()
    for key, value in changes.items():
        if value is None:
            values.pop(key)
        else:
            values[key] = value
    return values


def _raw_proto(key, **fields):
    """A request whose ``key`` tensor is a hand-built TensorProto."""
    from tensorflow.core.framework import tensor_pb2

    request = predict_request()
    proto = tensor_pb2.TensorProto(**{k: v for k, v in fields.items() if k != "shape"})
    for d in fields.get("shape", []):
        proto.tensor_shape.dim.add().size = d
    request.inputs[key].CopyFrom(proto)
    return request


def _oversize_request():
    from tensorflow.core.framework import tensor_pb2, types_pb2

    n = MAX_MESSAGE // 4 + 1024
    request = predict_request()
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\0" * (4 * n))
    proto.tensor_shape.dim.add().size = n
    request.inputs["price"].CopyFrom(proto)
    return request


def _malformed_grpc_cases():
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    DT = types_pb2
    huge_n = 50_000
    huge = _good_arrays(huge_n)
    no_spec = predict_pb2.PredictRequest()
    for key, value in _good_arrays().items():
        no_spec.inputs[key].CopyFrom(_tensor(value))
    spec_without_name = predict_request(model="")
    cases = [
        # (id, request, codes from the bundled server, extra codes an external server may give)
        ("float64_for_float", predict_request(inputs=_with(price=np.ones(3))), {INVALID}, set()),
        ("int32_for_int64", predict_request(inputs=_with(item_id=np.ones(3, np.int32))),
         {INVALID}, set()),
        ("float16_for_float", predict_request(inputs=_with(price=np.ones(3, np.float16))),
         {INVALID}, set()),
        ("bytes_for_float", predict_request(inputs=_with(
            price=np.array([b"1.0", b"2", b"x"], dtype=object))), {INVALID}, set()),
        ("float_for_string", predict_request(inputs=_with(user_id=np.ones(3, np.float32))),
         {INVALID}, set()),
        ("int_for_string", predict_request(inputs=_with(user_id=np.arange(3))), {INVALID}, set()),
        ("bool_for_int", predict_request(inputs=_with(item_id=np.ones(3, bool))), {INVALID},
         set()),
        ("rank2_for_rank1", predict_request(inputs=_with(price=np.ones((3, 1), np.float32))),
         {INVALID}, set()),
        ("scalar_for_vector", predict_request(inputs=_with(price=np.float32(1.0))), {INVALID},
         set()),
        ("rank1_for_rank2", predict_request(inputs=_with(history=np.arange(3))), {INVALID},
         set()),
        ("rank3_for_rank2", predict_request(inputs=_with(
            history=np.zeros((3, 4, 1), np.int64))), {INVALID}, set()),
        ("wrong_inner_dim", predict_request(inputs=_with(history=np.zeros((3, 5), np.int64))),
         {INVALID}, set()),
        ("batch_mismatch", predict_request(inputs=_with(price=np.ones(4, np.float32))),
         {INVALID}, set()),
        ("missing_input", predict_request(inputs=_with(price=None)), {INVALID}, set()),
        ("extra_input", predict_request(inputs=_with(age=np.ones(3, np.float32))), {INVALID},
         set()),
        ("misnamed_input", predict_request(inputs=_with(
            price=None, prize=np.ones(3, np.float32))), {INVALID}, set()),
        ("no_inputs", predict_request(inputs={}), {INVALID}, set()),
        ("tensor_content_wrong_length", _raw_proto(
            "price", dtype=DT.DT_FLOAT, tensor_content=b"\0" * 5, shape=[3]), {INVALID}, set()),
        ("too_many_values", _raw_proto(
            "price", dtype=DT.DT_FLOAT, float_val=[1.0] * 7, shape=[3]), {INVALID}, {OK}),
        ("negative_dimension", _raw_proto(
            "price", dtype=DT.DT_FLOAT, float_val=[1.0], shape=[-1]), {INVALID}, set()),
        ("unknown_rank", _raw_proto("price", dtype=DT.DT_FLOAT, float_val=[1.0]),
         {INVALID}, set()),
        ("dtype_invalid", _raw_proto("price", dtype=DT.DT_INVALID, shape=[3]), {INVALID}, set()),
        ("dtype_resource", _raw_proto("price", dtype=DT.DT_RESOURCE, shape=[3]), {INVALID},
         set()),
        ("string_in_tensor_content", _raw_proto(
            "user_id", dtype=DT.DT_STRING, tensor_content=b"\x07garbage", shape=[3]),
         {INVALID}, {OK}),
        ("claimed_shape_too_large", _raw_proto(
            "price", dtype=DT.DT_FLOAT, float_val=[1.0], shape=[1 << 40]), {INVALID},
         {EXHAUSTED}),
        ("empty_batch", predict_request(inputs={
            "user_id": np.array([], dtype=object).reshape(0), "item_id": np.zeros(0, np.int64),
            "price": np.zeros(0, np.float32), "history": np.zeros((0, 4), np.int64)}),
         {OK}, {INVALID}),
        ("nan_and_inf", predict_request(inputs=_with(
            price=np.array([np.nan, np.inf, -np.inf], np.float32))), {OK}, set()),
        ("unknown_ids", predict_request(inputs=_with(
            user_id=np.array(["never", "seen", ""], dtype=object),
            item_id=np.array([10**12, -5, 2**62], np.int64))), {OK}, set()),
        ("invalid_utf8_ids", predict_request(inputs=_with(
            user_id=np.array([b"\xff\xfe", b"\xc3(", b"\x00"], dtype=object))), {OK}, set()),
        ("very_long_string_id", predict_request(inputs=_with(
            user_id=np.array([b"x" * 1_000_000, b"u1", b"u2"], dtype=object))), {OK}, set()),
        ("huge_batch", predict_request(inputs=huge), {OK}, set()),
        ("unknown_model", predict_request(model="no_such_model"), {NOT_FOUND}, set()),
        ("empty_model_name", spec_without_name, {NOT_FOUND}, {INVALID}),
        ("missing_model_spec", no_spec, {INVALID}, set()),
        ("unknown_version", predict_request(version=12345), {NOT_FOUND}, set()),
        ("negative_version", predict_request(version=-1), {NOT_FOUND}, set()),
        ("unknown_label", predict_request(label="nope"), {INVALID}, set()),
        ("unknown_signature", predict_request(signature="nope"), {FAILED}, set()),
        ("unknown_output_filter", predict_request(output_filter=["nope"]), {INVALID}, set()),
        ("duplicate_output_filter", predict_request(output_filter=["logit", "logit"]),
         {INVALID}, set()),
        ("scalar_k_as_vector", predict_request(signature="topk", inputs={
            "user_id": np.array(["u1"], dtype=object), "k": np.array([3], np.int32)}),
         {INVALID}, set()),
        ("k_negative", predict_request(signature="topk", inputs={
            "user_id": np.array(["u1"], dtype=object), "k": np.array(-1, np.int32)}),
         {INVALID}, set()),
        ("k_larger_than_items", predict_request(signature="topk", inputs={
            "user_id": np.array(["u1"], dtype=object), "k": np.array(17, np.int32)}),
         {INVALID}, set()),
        ("signature_inputs_on_other_signature", predict_request(
            signature="embed", inputs=_good_arrays()), {INVALID}, set()),
    ]
    if MAX_MESSAGE:
        cases.append(("oversize_message", _oversize_request(), {EXHAUSTED}, set()))
    return cases


def _grpc_case_ids():
    # ids without building the (large) requests at import time
    return ["float64_for_float", "int32_for_int64", "float16_for_float", "bytes_for_float",
            "float_for_string", "int_for_string", "bool_for_int", "rank2_for_rank1",
            "scalar_for_vector", "rank1_for_rank2", "rank3_for_rank2", "wrong_inner_dim",
            "batch_mismatch", "missing_input", "extra_input", "misnamed_input", "no_inputs",
            "tensor_content_wrong_length", "too_many_values", "negative_dimension",
            "unknown_rank", "dtype_invalid", "dtype_resource", "string_in_tensor_content",
            "claimed_shape_too_large", "empty_batch", "nan_and_inf", "unknown_ids",
            "invalid_utf8_ids", "very_long_string_id", "huge_batch", "unknown_model",
            "empty_model_name", "missing_model_spec", "unknown_version", "negative_version",
            "unknown_label", "unknown_signature", "unknown_output_filter",
            "duplicate_output_filter", "scalar_k_as_vector", "k_negative",
            "k_larger_than_items", "signature_inputs_on_other_signature", "oversize_message"]


@pytest.fixture(scope="module")
def grpc_cases():
    return {case[0]: case[1:] for case in _malformed_grpc_cases()}


def test_case_list_is_complete(grpc_cases):
    assert set(grpc_cases) <= set(_grpc_case_ids())
    assert len(_grpc_case_ids()) - 1 <= len(grpc_cases)


@pytest.mark.parametrize("case", _grpc_case_ids())
def test_malformed_predict(case, grpc_cases, stubs):
    if case not in grpc_cases:
        pytest.skip("the server's message size limit is unknown "
                    "(set RECSYS_TF_SERVING_MAX_MESSAGE_BYTES)")
    request, codes, external_also = grpc_cases[case]
    allowed = codes | (external_also if EXTERNAL else set())
    code, details, response = _call(stubs[0].Predict, request, timeout=60)
    assert code in allowed, (case, code, details)
    if not EXTERNAL:
        assert code not in (INTERNAL, grpc.StatusCode.UNKNOWN), details
    if code == OK:
        n = request.inputs["price"].tensor_shape.dim[0].size if "price" in request.inputs else 0
        assert _to_array(response.outputs["probability"]).shape == (n,)
    assert_alive(stubs)


def test_garbage_request_bytes(channel, stubs):
    """Bytes that are not a PredictRequest, sent on the Predict method."""
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                              request_serializer=None, response_deserializer=None)
    for payload in (b"\xff\xff\xff\xff\xff", b"\x0a\x05\x0a\x03abc\x12\xff"):
        try:
            raw(payload, timeout=10)
            code, details = OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        allowed = {INVALID} | ({INTERNAL} if EXTERNAL else set())
        assert code in allowed, (code, details)
        assert_alive(stubs)
    empty = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        empty(b"", timeout=10)  # parses as an empty request: no ModelSpec
    assert info.value.code() == INVALID
    unknown = channel.unary_unary("/tensorflow.serving.PredictionService/Explode",
                                  request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        unknown(b"", timeout=10)
    assert info.value.code() == UNIMPLEMENTED
    assert_alive(stubs)


# --------------------------------------------------------------------------- malformed: REST
def _rest_cases():
    good = {"user_id": ["u1"], "item_id": [1], "price": [1.0], "history": [[1, 2, 3, 4]]}
    row = {"user_id": "u1", "item_id": 1, "price": 1.0, "history": [1, 2, 3, 4]}
    predict = "/v1/models/ranker:predict"
    many = [dict(row, item_id=i) for i in range(5000)]
    return [
        # (id, method, path, body bytes, HTTP status(es))
        ("invalid_json", "POST", predict, b"{not json", {400}),
        ("empty_body", "POST", predict, b"", {400}),
        ("not_an_object", "POST", predict, b"[1, 2]", {400}),
        ("no_instances_or_inputs", "POST", predict, b'{"foo": 1}', {400}),
        ("both_instances_and_inputs", "POST", predict,
         json.dumps({"instances": [row], "inputs": good}).encode(), {400}),
        ("empty_instances", "POST", predict, b'{"instances": []}', {400}),
        ("instances_not_a_list", "POST", predict, b'{"instances": {"a": 1}}', {400}),
        ("string_for_float", "POST", predict,
         json.dumps({"instances": [dict(row, price="1.0")]}).encode(), {400}),
        ("float_for_int", "POST", predict,
         json.dumps({"instances": [dict(row, item_id=1.5)]}).encode(), {400}),
        ("bool_for_float", "POST", predict,
         json.dumps({"instances": [dict(row, price=True)]}).encode(), {400}),
        ("number_for_string", "POST", predict,
         json.dumps({"instances": [dict(row, user_id=7)]}).encode(), {400}),
        ("null_value", "POST", predict,
         json.dumps({"instances": [dict(row, price=None)]}).encode(), {400}),
        ("ragged_instances", "POST", predict, json.dumps({"instances": [
            row, dict(row, history=[1, 2, 3])]}).encode(), {400}),
        ("ragged_nested_list", "POST", predict, json.dumps({"inputs": dict(
            good, history=[[1, 2, 3, 4], [1, 2]], user_id=["a", "b"], item_id=[1, 2],
            price=[1.0, 2.0])}).encode(), {400}),
        ("instance_missing_key", "POST", predict, json.dumps({"instances": [
            {k: v for k, v in row.items() if k != "price"}]}).encode(), {400}),
        ("instance_extra_key", "POST", predict,
         json.dumps({"instances": [dict(row, age=3)]}).encode(), {400}),
        ("plain_list_for_many_inputs", "POST", predict, b'{"instances": [1, 2]}', {400}),
        ("columnar_missing_input", "POST", predict, json.dumps({"inputs": {
            k: v for k, v in good.items() if k != "history"}}).encode(), {400}),
        ("wrong_inner_dim", "POST", predict, json.dumps({"inputs": dict(
            good, history=[[1, 2, 3]])}).encode(), {400}),
        ("batch_mismatch", "POST", predict, json.dumps({"inputs": dict(
            good, price=[1.0, 2.0])}).encode(), {400}),
        ("bad_base64", "POST", predict, json.dumps({"instances": [
            dict(row, user_id={"b64": "%%%"})]}).encode(), {400}),
        ("object_leaf", "POST", predict, json.dumps({"instances": [
            dict(row, price={"x": 1})]}).encode(), {400}),
        ("int_overflow", "POST", predict, json.dumps({"instances": [
            dict(row, item_id=2**70)]}).encode(), {400}),
        ("signature_name_not_string", "POST", predict,
         json.dumps({"signature_name": 3, "instances": [row]}).encode(), {400}),
        ("unknown_signature", "POST", predict,
         json.dumps({"signature_name": "nope", "instances": [row]}).encode(), {400}),
        ("unknown_model", "POST", "/v1/models/no_such_model:predict",
         json.dumps({"instances": [row]}).encode(), {404}),
        ("unknown_version", "POST", "/v1/models/ranker/versions/77:predict",
         json.dumps({"instances": [row]}).encode(), {404}),
        ("unknown_label", "POST", "/v1/models/ranker/labels/nope:predict",
         json.dumps({"instances": [row]}).encode(), {400}),
        ("unknown_verb", "POST", "/v1/models/ranker:explode", b"{}", {400}),
        ("non_numeric_version", "GET", "/v1/models/ranker/versions/abc", None, {400}),
        ("get_on_predict", "GET", predict, None, {400}),
        ("unknown_v1_path", "GET", "/v1/nothing/here", None, {400}),
        ("outside_v1", "GET", "/v2/models/ranker", None, {404}),
        ("status_unknown_model", "GET", "/v1/models/no_such_model", None, {404}),
        ("classify", "POST", "/v1/models/ranker:classify",
         json.dumps({"examples": [{"x": 1}]}).encode(), {400} if not EXTERNAL else {400, 501}),
        ("nan_literal", "POST", predict, json.dumps({"instances": [
            dict(row, price=float("nan"))]}, allow_nan=True).encode(), {200}),
        ("many_instances", "POST", predict, json.dumps({"instances": many}).encode(), {200}),
    ]


REST_CASES = _rest_cases()


@pytest.mark.parametrize("case", [c[0] for c in REST_CASES] + ["oversize_body"])
def test_malformed_rest(case, rest, stubs):
    if case == "oversize_body":
        if not MAX_MESSAGE:
            pytest.skip("the server's size limit is unknown "
                        "(set RECSYS_TF_SERVING_MAX_MESSAGE_BYTES)")
        method, path, body = "POST", "/v1/models/ranker:predict", b" " * (MAX_MESSAGE + 1)
        statuses = {413} if not EXTERNAL else {400, 413}
    else:
        _, method, path, body, statuses = next(c for c in REST_CASES if c[0] == case)
    status, answer = http(rest, method, path, raw=body, timeout=60)
    assert status in statuses, (case, status, answer)
    if status >= 400 and status != 404 or (status == 404 and path.startswith("/v1/")):
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
    if status == 200:
        assert len(answer["predictions"]) >= 1
    ok, body = http(rest, "GET", "/v1/models/ranker")
    assert ok == 200, body
    assert_alive(stubs)


# --------------------------------------------------------------------------- reliability
class _Clients:
    """``n`` clients, each with its own connection, sending requests until stopped."""

    def __init__(self, target, model, inputs, n, rest_target=None, n_rest=0):
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ok = [0] * n
        self.failed = [0] * n
        self.errors = []
        self.first_seen = {}  # version -> monotonic time a client first got an answer from it
        self.threads = [threading.Thread(target=self._run, daemon=True, args=(
            i, target, model, inputs, rest_target if i < n_rest else None)) for i in range(n)]
        for t in self.threads:
            t.start()

    def _fail(self, i, text):
        with self.lock:
            self.failed[i] += 1
            self.errors.append(text[:200])

    def _run(self, i, target, model, inputs, rest_target):
        if rest_target:
            body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()
            url = f"http://{rest_target}/v1/models/{model}:predict"
            while not self.stop.is_set():
                req = urllib.request.Request(url, data=body, method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        json.loads(resp.read())
                    self.ok[i] += 1
                except Exception as exc:  # counted and reported by the test
                    self._fail(i, repr(exc))
            return
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            request = predict_request(model=model, inputs=inputs)
            while not self.stop.is_set():
                try:
                    response = stub.Predict(request, timeout=30)
                except grpc.RpcError as exc:
                    self._fail(i, f"{exc.code()}: {exc.details()}")
                    continue
                self.ok[i] += 1
                version = response.model_spec.version.value
                if version not in self.first_seen:
                    with self.lock:
                        self.first_seen.setdefault(version, time.monotonic())

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        return sum(self.ok), sum(self.failed)


def test_16_concurrent_clients_no_failures(deployment):
    target, rest_target = deployment[0], deployment[1]
    clients = _Clients(target, "ranker", _good_arrays(20), 16, rest_target=rest_target,
                       n_rest=4 if rest_target else 0)
    time.sleep(2.5)
    ok, failed = clients.finish()
    assert failed == 0, clients.errors[:5]
    assert ok >= 16 * 5, ok
    assert all(n > 0 for n in clients.ok), clients.ok  # every client was served


def _next_version(base):
    return max([int(d) for d in os.listdir(base) if d.isdigit()] + [0]) + 1


def _drop_version(base, version, source=None, garbage=False):
    """Put a version in place atomically (written under a hidden name, then renamed)."""
    tmp = os.path.join(base, f".incoming-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    if garbage:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
            f.write(b"this is not a SavedModel")
    else:
        shutil.copytree(source, tmp)
    os.rename(tmp, os.path.join(base, str(version)))


def test_new_version_under_load_no_failed_requests(deployment, stubs):
    target, _, model_dir, _ = deployment
    if not model_dir:
        pytest.skip("set RECSYS_TF_SERVING_MODEL_DIR to the folder the server reads")
    base = os.path.join(model_dir, "swap")
    old = _served_version(stubs, "swap")
    new = _next_version(base)
    clients = _Clients(target, "swap", {"x": np.ones(8, np.float32)}, 16)
    try:
        time.sleep(0.5)
        dropped = time.monotonic()
        _drop_version(base, new, os.path.join(base, str(old)))
        while new not in clients.first_seen and time.monotonic() < dropped + 2 * POLL + 10:
            time.sleep(0.01)
        time.sleep(0.5)  # keep the load on while the old version is let go
    finally:
        ok, failed = clients.finish()
    assert failed == 0, clients.errors[:5]
    assert new in clients.first_seen, "the new version never served a request"
    took = clients.first_seen[new] - dropped
    assert took <= 2 * POLL, f"new version served {took:.2f}s after it was dropped (poll {POLL}s)"
    assert _available(stubs, "swap") == [new]
    assert _status_map(stubs, "swap")[old][0] in ("END", "UNLOADING")


def test_broken_version_keeps_old_one_serving(deployment, stubs):
    target, _, model_dir, _ = deployment
    if not model_dir:
        pytest.skip("set RECSYS_TF_SERVING_MODEL_DIR to the folder the server reads")
    base = os.path.join(model_dir, "broken")
    old = _served_version(stubs, "broken")
    bad = _next_version(base)
    clients = _Clients(target, "broken", {"x": np.ones(4, np.float32)}, 4)
    try:
        dropped = time.monotonic()
        _drop_version(base, bad, garbage=True)
        state = None
        while time.monotonic() < dropped + 2 * POLL:
            state = _status_map(stubs, "broken").get(bad)
            if state is not None and state[0] == "END":
                break
            time.sleep(0.05)
        assert state is not None and state[0] == "END", state
        assert state[1] != 0 and state[2], state  # the load error is reported
        assert _available(stubs, "broken") == [old]
        assert _served_version(stubs, "broken") == old
    finally:
        ok, failed = clients.finish()
        shutil.rmtree(os.path.join(base, str(bad)), ignore_errors=True)
    assert failed == 0, clients.errors[:5]
    assert ok > 0


def test_metrics_count_requests(deployment, rest):
    if EXTERNAL and not os.environ.get("RECSYS_TF_SERVING_METRICS_PATH"):
        pytest.skip("set RECSYS_TF_SERVING_METRICS_PATH when TF Serving runs with "
                    "--monitoring_config_file")
    path = os.environ.get("RECSYS_TF_SERVING_METRICS_PATH", "/monitoring/prometheus/metrics")
    status, text = http(rest, "GET", path)
    assert status == 200
    assert ':tensorflow:serving:request_count{model_name="ranker",status="OK"}' in text
    assert ":tensorflow:serving:request_latency_bucket" in text


# --------------------------------------------------------------------------- CLI
if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write the conformance suite's models")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-models")
    w.add_argument("root")
    w.add_argument("--base-path-prefix", default=None,
                   help="base path prefix as the server sees the folder, e.g. /models")
    args = parser.parse_args()
    print(write_models(args.root, args.base_path_prefix))
    sys.exit(0)
