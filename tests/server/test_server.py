"""The bundled TF Serving-compatible server and the low-level gRPC client, over real gRPC."""
import logging
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from predict_requests import predict_request
from recsys_tf.wire import codec
from recsys_tf.client.grpc_client import ServingClient
from recsys_tf.server.server import ModelServer


# --------------------------------------------------------------------------- models
class _Toy(tf.Module):
    """score = x * weight + len(user_id); a second and third signature for routing tests."""

    def __init__(self, weight: float, version: int):
        super().__init__()
        self.weight = tf.Variable(weight, dtype=tf.float32)
        self.version = version

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, user_id, x):
        score = x * self.weight + tf.cast(tf.strings.length(user_id), tf.float32)
        return {"score": score, "user": tf.identity(user_id),
                "version": tf.fill(tf.shape(x), tf.constant(self.version, tf.int64))}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.int64, name="ids")])
    def pairs(self, ids):
        return {"total": tf.reduce_sum(ids, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="idx")])
    def lookup(self, idx):
        return {"value": tf.gather(tf.constant([10.0, 20.0, 30.0]), idx)}


class _Other(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x + 100.0}


def _save_toy(path, weight, version):
    toy = _Toy(weight, version)
    tf.saved_model.save(toy, str(path), signatures={
        "serving_default": toy.serve.get_concrete_function(),
        "pairs": toy.pairs.get_concrete_function(),
        "lookup": toy.lookup.get_concrete_function(),
    })


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    _save_toy(root / "toy" / "1", 1.0, 1)
    _save_toy(root / "toy" / "2", 2.0, 2)
    other = _Other()
    tf.saved_model.save(other, str(root / "other" / "1"),
                        signatures={"serving_default": other.serve.get_concrete_function()})
    (root / "toy" / "tmp-export").mkdir()  # not a version: must be ignored
    return root


CONFIG = """
model_config_list {
  config {
    name: "toy"
    base_path: "toy"
    model_platform: "tensorflow"
    model_version_policy { all {} }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: "other"
    base_path: "other"
    model_platform: "tensorflow"
  }
}
"""


@pytest.fixture(scope="session")
def server(model_root):
    config = model_root / "models.config"
    config.write_text(CONFIG)
    srv = ModelServer(model_config_file=str(config), port=0, max_workers=4)
    port = srv.start()
    assert port > 0
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def channel(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="session")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="session")
def client(server):
    with ServingClient(server.target, timeout=10) as c:
        yield c


# --------------------------------------------------------------------------- helpers
GOOD = {"user_id": np.array(["ab", "c"]), "x": np.array([1.0, 2.0], np.float32)}


def _request(model="toy", inputs=None, signature="", version=None, label=None,
             output_filter=()):
    return predict_request(model, GOOD if inputs is None else inputs, codec.to_tensor_proto,
                           signature, version, label, output_filter)


def _expect_error(call, request, code, *fragments, stub=None):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details(), info.value.details()
    if stub is not None:  # the server keeps answering after an error
        response = stub.Predict(_request(), timeout=10)
        np.testing.assert_allclose(codec.to_ndarray(response.outputs["score"]), [4.0, 5.0])
    return info.value


# --------------------------------------------------------------------------- Predict
def test_predict_serves_latest_version(stub):
    response = stub.Predict(_request(), timeout=10)
    assert response.model_spec.name == "toy"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    assert set(response.outputs) == {"score", "user", "version"}
    score = codec.to_ndarray(response.outputs["score"])
    assert score.dtype == np.float32
    np.testing.assert_array_equal(score, np.array([4.0, 5.0], np.float32))  # x*2 + len
    assert codec.to_ndarray(response.outputs["user"]).tolist() == [b"ab", b"c"]
    assert codec.to_ndarray(response.outputs["version"]).tolist() == [2, 2]
    # what TF itself decodes from the wire
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["score"]), [4.0, 5.0])


def test_predict_accepts_repeated_field_inputs(stub):
    req = _request()
    x = req.inputs["x"]
    x.ClearField("tensor_content")
    x.float_val.extend([1.0, 2.0])
    response = stub.Predict(req, timeout=10)
    np.testing.assert_array_equal(codec.to_ndarray(response.outputs["score"]), [4.0, 5.0])


def test_output_filter(stub, client):
    response = stub.Predict(_request(output_filter=["score"]), timeout=10)
    assert list(response.outputs) == ["score"]
    out = client.predict("toy", GOOD, output_filter=["user", "version"], decode_strings=True)
    assert set(out) == {"user", "version"}
    assert out["user"].tolist() == ["ab", "c"]
    _expect_error(stub.Predict, _request(output_filter=["nope"]),
                  grpc.StatusCode.INVALID_ARGUMENT, "nope", stub=stub)


def test_explicit_version_and_labels(stub, client):
    response = stub.Predict(_request(version=1), timeout=10)
    assert response.model_spec.version.value == 1
    np.testing.assert_array_equal(codec.to_ndarray(response.outputs["score"]), [3.0, 3.0])
    assert client.predict("toy", GOOD, label="stable")["version"].tolist() == [1, 1]
    assert client.predict("toy", GOOD, label="canary")["version"].tolist() == [2, 2]
    assert client.predict("toy", GOOD, version=2)["version"].tolist() == [2, 2]
    _expect_error(stub.Predict, _request(label="beta"), grpc.StatusCode.INVALID_ARGUMENT,
                  "Unrecognized servable version label: beta", stub=stub)


def test_other_signatures(client):
    out = client.predict("toy", {"ids": np.array([[1, 2], [3, 4]], np.int64)}, signature="pairs")
    assert out["total"].tolist() == [3, 7]
    out = client.predict("toy", {"idx": np.array([2, 0], np.int32)}, signature="lookup")
    assert out["value"].tolist() == [30.0, 10.0]


def test_unknown_model_and_version_not_found(stub):
    _expect_error(stub.Predict, _request(model="nope"), grpc.StatusCode.NOT_FOUND,
                  "Servable not found for request: Latest(nope)", stub=stub)
    _expect_error(stub.Predict, _request(version=7), grpc.StatusCode.NOT_FOUND,
                  "Servable not found for request: Specific(toy, 7)", stub=stub)
    # TF Serving: an empty name is just a name no model has; no ModelSpec at all is invalid
    _expect_error(stub.Predict, _request(model=""), grpc.StatusCode.NOT_FOUND, stub=stub)
    no_spec = predict_pb2.PredictRequest()
    no_spec.inputs["x"].CopyFrom(codec.to_tensor_proto(GOOD["x"]))
    _expect_error(stub.Predict, no_spec, grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec",
                  stub=stub)


def test_unknown_input(stub):
    inputs = dict(GOOD, age=np.array([3], np.int64))
    _expect_error(stub.Predict, _request(inputs=inputs), grpc.StatusCode.INVALID_ARGUMENT,
                  "age", "user_id", "x", stub=stub)


def test_missing_input(stub):
    _expect_error(stub.Predict, _request(inputs={"x": GOOD["x"]}),
                  grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {user_id}", stub=stub)


def test_wrong_dtype(stub):
    inputs = dict(GOOD, x=np.array([1.0, 2.0], np.float64))
    _expect_error(stub.Predict, _request(inputs=inputs), grpc.StatusCode.INVALID_ARGUMENT,
                  "'x'", "float", "double", stub=stub)
    inputs = dict(GOOD, user_id=np.array([1, 2], np.int64))
    _expect_error(stub.Predict, _request(inputs=inputs), grpc.StatusCode.INVALID_ARGUMENT,
                  "'user_id'", "string", "int64", stub=stub)


def test_shapes_are_checked_by_the_graph_not_by_the_declared_signature(stub):
    """As TF Serving: a shape the signature's declared shape forbids is run when the graph
    can compute it (x [2,1] broadcasts against user_id [2]; ids [2,3] sums along axis 1),
    and refused with INVALID_ARGUMENT only when the graph cannot."""
    inputs = dict(GOOD, x=np.array([[1.0], [2.0]], np.float32))
    out = codec.to_ndarray(stub.Predict(_request(inputs=inputs), timeout=10).outputs["score"])
    # toy version 2: x * 2 + len(user_id), broadcast to [2, 2]
    np.testing.assert_allclose(out, [[4.0, 3.0], [6.0, 5.0]])
    response = stub.Predict(_request(inputs={"ids": np.arange(6).reshape(2, 3)},
                                     signature="pairs"), timeout=10)
    assert codec.to_ndarray(response.outputs["total"]).tolist() == [3, 12]
    _expect_error(stub.Predict, _request(inputs=dict(GOOD, x=np.ones(3, np.float32))),
                  grpc.StatusCode.INVALID_ARGUMENT, stub=stub)


def test_unknown_signature(stub):
    _expect_error(stub.Predict, _request(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
                  'Serving signature key "nope" not found.', stub=stub)


def test_execution_errors_are_invalid_argument(stub):
    _expect_error(stub.Predict, _request(inputs={"idx": np.array([5], np.int32)},
                                         signature="lookup"),
                  grpc.StatusCode.INVALID_ARGUMENT, "indices", stub=stub)
    mismatched = dict(GOOD, x=np.array([1.0, 2.0, 3.0], np.float32))
    _expect_error(stub.Predict, _request(inputs=mismatched), grpc.StatusCode.INVALID_ARGUMENT,
                  stub=stub)


def test_malformed_tensor_is_invalid_argument(stub):
    req = _request()
    req.inputs["x"].tensor_content = b"\x00" * 3
    _expect_error(stub.Predict, req, grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x",
                  stub=stub)


def test_classify_on_a_signature_without_examples_is_refused(stub):
    """The toy's signatures take raw features, not serialized tf.Examples: TF Serving's
    Classify refuses them (the inference service itself: test_inference.py)."""
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "toy"
    req.input.example_list.examples.add()
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(req, timeout=10)
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                 grpc.StatusCode.FAILED_PRECONDITION), info.value.details()


def test_concurrent_predicts(client):
    errors, results = [], []

    def work(i):
        try:
            x = np.full(3, float(i), np.float32)
            out = client.predict("toy", {"user_id": np.array(["a", "bb", "ccc"]), "x": x})
            results.append((i, out["score"].tolist()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [(i, [2 * i + 1.0, 2 * i + 2.0, 2 * i + 3.0]) for i in range(16)]


# --------------------------------------------------------------------------- metadata
def _metadata_request(model="toy", fields=("signature_def",), version=None):
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    req.metadata_field.extend(fields)
    return req


def test_metadata_matches_saved_model(stub, model_root):
    response = stub.GetModelMetadata(_metadata_request(), timeout=10)
    assert response.model_spec.name == "toy"
    assert response.model_spec.version.value == 2
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    default = sig_map.signature_def["serving_default"]
    assert set(default.inputs) == {"user_id", "x"}
    assert default.inputs["user_id"].dtype == types_pb2.DT_STRING
    assert default.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1]
    assert set(default.outputs) == {"score", "user", "version"}
    assert default.outputs["version"].dtype == types_pb2.DT_INT64
    assert {"pairs", "lookup"} <= set(sig_map.signature_def)

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((model_root / "toy" / "2" / "saved_model.pb").read_bytes())
    assert dict(sig_map.signature_def) == dict(saved.meta_graphs[0].signature_def)

    old = stub.GetModelMetadata(_metadata_request(version=1), timeout=10)
    assert old.model_spec.version.value == 1


def test_metadata_errors(stub):
    _expect_error(stub.GetModelMetadata, _metadata_request(fields=()),
                  grpc.StatusCode.INVALID_ARGUMENT, "metadata_field", stub=stub)
    _expect_error(stub.GetModelMetadata, _metadata_request(fields=("signature_def", "other")),
                  grpc.StatusCode.INVALID_ARGUMENT, "other", stub=stub)
    _expect_error(stub.GetModelMetadata, _metadata_request(model="nope"),
                  grpc.StatusCode.NOT_FOUND, "Latest(nope)", stub=stub)


# --------------------------------------------------------------------------- status
def _status_request(model="toy", version=None):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    return req


def test_model_status(model_stub, stub, client):
    response = model_stub.GetModelStatus(_status_request(), timeout=10)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert {s.version: s.state for s in response.model_version_status} == {
        1: available, 2: available}
    assert all(s.status.error_code == 0 for s in response.model_version_status)
    one = model_stub.GetModelStatus(_status_request(version=1), timeout=10)
    assert [s.version for s in one.model_version_status] == [1]
    assert client.status("other") == {1: "AVAILABLE"}
    assert client.status("toy", version=2) == {2: "AVAILABLE"}
    _expect_error(model_stub.GetModelStatus, _status_request(model="nope"),
                  grpc.StatusCode.NOT_FOUND, "nope", stub=stub)
    _expect_error(model_stub.GetModelStatus, _status_request(version=9),
                  grpc.StatusCode.NOT_FOUND, "9", stub=stub)


# --------------------------------------------------------------------------- client
def test_client_signature(client):
    sig = client.signature("toy")
    assert sig["inputs"] == {"user_id": {"dtype": "string", "shape": [-1]},
                             "x": {"dtype": np.dtype(np.float32), "shape": [-1]}}
    assert sig["outputs"]["version"] == {"dtype": np.dtype(np.int64), "shape": [-1]}
    assert sig["version"] == 2
    assert client.signature("toy") is sig  # cached
    assert client.signature("toy", "pairs")["inputs"]["ids"]["shape"] == [-1, 2]
    assert client.signature("toy", version=1)["version"] == 1
    with pytest.raises(ValueError, match="nope"):
        client.signature("toy", "nope")


def test_client_validate(client):
    client.validate("toy", GOOD)
    client.validate("toy", {"ids": np.zeros((4, 2), np.int64)}, "pairs")
    with pytest.raises(ValueError, match="'age'"):
        client.validate("toy", dict(GOOD, age=np.array([1])))
    with pytest.raises(ValueError, match="user_id"):
        client.validate("toy", {"x": GOOD["x"]})
    with pytest.raises(ValueError, match="'x'.*float64"):
        client.validate("toy", dict(GOOD, x=np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match="'user_id'"):
        client.validate("toy", dict(GOOD, user_id=np.array([1, 2])))
    with pytest.raises(ValueError, match="'x'.*rank"):
        client.validate("toy", dict(GOOD, x=np.zeros((2, 1), np.float32)))
    with pytest.raises(ValueError, match="'ids'.*axis 1"):
        client.validate("toy", {"ids": np.zeros((4, 3), np.int64)}, "pairs")


def test_client_raises_rpc_errors(client):
    with pytest.raises(grpc.RpcError) as info:
        client.predict("nope", GOOD)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        client.predict("toy", GOOD, signature="nope")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        client.status("nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ValueError):
        client.predict("toy", GOOD, version=1, label="stable")


def test_client_against_dead_server_is_unavailable(server):
    with ServingClient("127.0.0.1:1", timeout=2) as dead:
        with pytest.raises(grpc.RpcError) as info:
            dead.predict("toy", GOOD)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.DEADLINE_EXCEEDED)


# --------------------------------------------------------------------------- model sources
def test_config_serves_both_models(server, client):
    assert server.models() == {"toy": [1, 2], "other": [1]}
    out = client.predict("other", {"x": np.array([1.0, -1.0], np.float32)})
    np.testing.assert_array_equal(out["y"], [101.0, 99.0])


def test_single_model_serves_latest_only(model_root):
    with ModelServer(model_name="toy", model_base_path=str(model_root / "toy"), port=0) as srv:
        assert srv.models() == {"toy": [2]}
        with ServingClient(srv.target) as c:
            assert c.predict("toy", GOOD)["version"].tolist() == [2, 2]
            with pytest.raises(grpc.RpcError) as info:
                c.predict("toy", GOOD, version=1)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "Specific(toy, 1)" in info.value.details()


def test_root_serves_every_model(model_root):
    srv = ModelServer(model_base_path=str(model_root), port=0)
    assert srv.models() == {}  # nothing is loaded before start()
    srv.start()
    try:
        assert srv.models() == {"other": [1], "toy": [2]}
        with ServingClient(srv.target) as c:
            assert c.predict("other", {"x": np.zeros(1, np.float32)})["y"].tolist() == [100.0]
    finally:
        srv.stop()


def test_bad_configs(tmp_path):
    with pytest.raises(ValueError):
        ModelServer()
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { name: 'a' base_path: '/x' } "
                   "config { name: 'a' base_path: '/y' } }")
    with pytest.raises(ValueError, match="twice"):
        ModelServer(model_config_file=str(bad))
    bad.write_text("not a config")
    with pytest.raises(ValueError, match="Error parsing text-format "
                       "tensorflow.serving.ModelServerConfig"):
        ModelServer(model_config_file=str(bad))


def test_busy_port_is_an_error(server, model_root):
    other = ModelServer(model_name="other", model_base_path=str(model_root / "other"),
                        port=server.bound_port)
    with pytest.raises(OSError, match="cannot listen"):
        other.start()


def _write_warmup(version_dir):
    extra = version_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    entry = prediction_log_pb2.PredictionLog()
    entry.predict_log.request.CopyFrom(_request())
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        writer.write(entry.SerializeToString())


def test_signatures_without_warmup_records_run_once_at_load(tmp_path):
    """Every signature is traced when a version loads, and those the warmup records do not
    name (a ranker's one_user, which the client calls) run once on made-up rows (zeros,
    empty strings), so no first request pays for a function's first run; one that fails on
    them (here: a scalar input that must be >= 1) still loads and serves."""
    runs = []

    def record(name):
        def fn(x):
            runs.append(name)
            return x
        return fn

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.py_function(record("default"), [x], tf.float32) * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([1, 2], tf.string, name="user"),
                                      tf.TensorSpec([None], tf.float32, name="x")])
        def one_row(self, user, x):
            y = tf.py_function(record("one_row"), [x], tf.float32)
            return {"y": y + tf.cast(tf.strings.length(user[0, 0]), tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="k")])
        def needs_k(self, k):
            with tf.control_dependencies([tf.debugging.assert_positive(k)]):
                return {"y": tf.py_function(record("needs_k"), [k], tf.int32)}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "m" / "1"), signatures={
        "serving_default": m.serve.get_concrete_function(),
        "one_row": m.one_row.get_concrete_function(),
        "needs_k": m.needs_k.get_concrete_function()})
    entry = prediction_log_pb2.PredictionLog()
    request = entry.predict_log.request
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(2, np.float32)))
    (tmp_path / "m" / "1" / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(tmp_path / "m" / "1" / "assets.extra" /
                                  "tf_serving_warmup_requests")) as writer:
        writer.write(entry.SerializeToString())
    with ModelServer(model_name="m", model_base_path=str(tmp_path / "m"), port=0) as srv:
        version = srv.registry.resolve(model_pb2.ModelSpec(name="m"))
        assert sorted(version.signature_defs) == ["__saved_model_init_op", "needs_k", "one_row",
                                                  "serving_default"]
        assert sorted(runs) == ["default", "one_row"]   # the record; one made-up run
        with ServingClient(srv.target) as c:
            out = c.predict("m", {"user": np.array([[b"abc", b""]], dtype=object),
                                  "x": np.array([1.0, 2.0], np.float32)}, signature="one_row")
            assert out["y"].tolist() == [4.0, 5.0]
            assert c.predict("m", {"k": np.array(3, np.int32)}, signature="needs_k")["y"] == 3


def _available(client, model):
    return sorted(v for v, state in client.status(model).items() if state == "AVAILABLE")


def test_hot_swap_reload_poll_and_config_reload(model_root, tmp_path, caplog):
    base = tmp_path / "toy"
    shutil.copytree(model_root / "toy" / "2", base / "2")
    srv = ModelServer(model_name="toy", model_base_path=str(base), port=0, poll_seconds=0.2)
    srv.start()
    try:
        with ServingClient(srv.target) as c:
            assert c.status("toy") == {2: "AVAILABLE"}
            # a new version appears: reload() swaps it in and lets the old one go
            shutil.copytree(model_root / "toy" / "1", base / "3")
            _write_warmup(base / "3")
            with caplog.at_level(logging.INFO, logger="recsys_tf.server.server"):
                assert srv.reload() == {"toy": [3]}
            assert any("version 3" in r.message and "1 warmup" in r.message
                       for r in caplog.records)
            assert any("unloaded model toy version 2" in r.message for r in caplog.records)
            assert c.predict("toy", GOOD)["version"].tolist() == [1, 1]  # v1's weights
            # as TF Serving's state monitor does, a version that was let go stays as END
            assert c.status("toy") == {3: "AVAILABLE", 2: "END"}
            # polling picks up the next one by itself
            shutil.copytree(model_root / "toy" / "2", base / "4")
            deadline = time.time() + 10
            while srv.models()["toy"] != [4] and time.time() < deadline:
                time.sleep(0.05)
            assert srv.models() == {"toy": [4]}
            # a broken version is reported and the served one stays
            (base / "5").mkdir()
            (base / "5" / "saved_model.pb").write_bytes(b"garbage")
            srv.reload()
            assert _available(c, "toy") == [4]
            assert c.status("toy")[5] == "END"
            assert c.predict("toy", GOOD)["version"].tolist() == [2, 2]
            with grpc.insecure_channel(srv.target) as channel:
                status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                    _status_request(version=5), timeout=10).model_version_status[0]
            assert status.status.error_code != 0 and status.status.error_message
            srv.reload()  # unchanged: not retried before the retry interval
            assert c.status("toy")[5] == "END"
            shutil.rmtree(base / "5")  # fixed in place: loaded on the next scan
            shutil.copytree(model_root / "toy" / "1", base / "5")
            assert srv.reload() == {"toy": [5]}
            assert _available(c, "toy") == [5]
            # ModelService.HandleReloadConfigRequest swaps the model list ...
            shutil.copytree(model_root / "other", tmp_path / "other")
            request = model_management_pb2.ReloadConfigRequest()
            entry = request.config.model_config_list.config.add()
            entry.name, entry.base_path = "other", str(tmp_path / "other")
            with grpc.insecure_channel(srv.target) as channel:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    request, timeout=30)
            assert srv.models() == {"other": [1]}
            with pytest.raises(grpc.RpcError) as info:
                c.predict("toy", GOOD)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            # ... but cannot point the server outside its model root
            entry.base_path = str(model_root / "other")
            with grpc.insecure_channel(srv.target) as channel:
                with pytest.raises(grpc.RpcError) as info:
                    model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                        request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "outside the model root" in info.value.details()
            assert srv.models() == {"other": [1]}
    finally:
        srv.stop()


def test_scann_saved_model_served_from_a_fresh_process(tmp_path):
    """A ScaNN SavedModel needs ScaNN's ops registered: the server does it before loading."""
    import re
    import subprocess
    import sys

    tfrs = pytest.importorskip("tensorflow_recommenders")
    ids = tf.constant([f"item{i}".encode() for i in range(100)])
    emb = tf.random.stateless_normal((100, 8), seed=(1, 2))

    class Retrieval(tf.Module):
        def __init__(self):
            super().__init__()
            self.index = tfrs.layers.factorized_top_k.ScaNN(
                k=3, num_leaves=4, num_leaves_to_search=2, num_reordering_candidates=20)
            self.index.index(emb, ids)

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="query")])
        def serve(self, query):
            scores, found = self.index(query)
            return {"scores": scores, "ids": found}

    module = Retrieval()
    expected = module.serve(emb[:2])
    tf.saved_model.save(module, str(tmp_path / "retrieval" / "1"),
                        signatures={"serving_default": module.serve.get_concrete_function()},
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))

    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys_tf.server.server", "--model_base_path", str(tmp_path),
         "--host", "127.0.0.1", "--port", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port, lines = None, []
        deadline = time.time() + 60
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port, "".join(lines[-20:])
        with ServingClient(f"127.0.0.1:{port}", timeout=10) as c:
            out = c.predict("retrieval", {"query": emb[:2].numpy()})
        assert out["ids"].tolist() == expected["ids"].numpy().tolist()
        np.testing.assert_allclose(out["scores"], expected["scores"].numpy(), rtol=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- safety, TLS, REST
def _self_signed(tmp_path):
    """A throwaway certificate for 127.0.0.1/localhost and its key, as PEM files."""
    crypto = pytest.importorskip("cryptography")  # noqa: F841
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    return tmp_path / "cert.pem", tmp_path / "key.pem", cert_pem, key_pem


def test_tls_grpc_and_rest(model_root, tmp_path):
    import json
    import ssl
    import urllib.request

    cert, key, cert_pem, key_pem = _self_signed(tmp_path)
    ssl_config = tmp_path / "ssl.config"  # TF Serving's SSLConfig text proto
    ssl_config.write_text(f"server_key: {json.dumps(key_pem.decode())}\n"
                          f"server_cert: {json.dumps(cert_pem.decode())}\n")
    for kwargs in ({"ssl_config_file": str(ssl_config)},
                   {"ssl_cert_file": str(cert), "ssl_key_file": str(key)}):
        with ModelServer(model_name="other", model_base_path=str(model_root / "other"), port=0,
                         rest_api_port=0, **kwargs) as srv:
            creds = grpc.ssl_channel_credentials(root_certificates=cert_pem)
            with grpc.secure_channel(srv.target, creds) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                response = stub.Predict(_request("other", {"x": np.array([1.0], np.float32)}),
                                        timeout=10)
                assert codec.to_ndarray(response.outputs["y"]).tolist() == [101.0]
            with grpc.insecure_channel(srv.target) as plain:  # plaintext is refused
                with pytest.raises(grpc.RpcError):
                    prediction_service_pb2_grpc.PredictionServiceStub(plain).Predict(
                        _request("other", {"x": np.array([1.0], np.float32)}), timeout=5)
            context = ssl.create_default_context(cadata=cert_pem.decode())
            with urllib.request.urlopen(f"https://{srv.rest_target}/v1/models/other",
                                        context=context, timeout=10) as resp:
                assert json.loads(resp.read())["model_version_status"][0]["state"] == \
                    "AVAILABLE"


def test_names_and_paths_cannot_escape_the_model_root(model_root, tmp_path):
    import os

    outside = tmp_path / "outside"
    shutil.copytree(model_root / "other" / "1", outside / "1")
    served = tmp_path / "models"
    shutil.copytree(model_root / "other", served / "good")
    (served / "linked").mkdir()
    os.symlink(outside / "1", served / "linked" / "1")  # a version that points outside
    (served / ".hidden").mkdir()
    shutil.copytree(model_root / "other" / "1", served / ".hidden" / "1")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "good" base_path: "{served}/good" }}'
                      f' config {{ name: "linked" base_path: "{served}/linked" }} }}')
    srv = ModelServer(model_config_file=str(config), port=0)
    try:
        assert srv.reload() == {"good": [1], "linked": []}
        root = ModelServer(model_base_path=str(served), port=0)
        assert root.reload() == {"good": [1], "linked": []}  # no ".hidden" model either
        for name in ("../x", "a/b", "..", "", "a b"):
            bad = tmp_path / "bad.config"
            bad.write_text(f'model_config_list {{ config {{ name: "{name}" '
                           f'base_path: "{served}/good" }} }}')
            with pytest.raises(ValueError):
                ModelServer(model_config_file=str(bad))
        with pytest.raises(ValueError, match="outside the model root"):
            srv.reload_config(f'model_config_list {{ config {{ name: "x" base_path: "/etc" }} }}')
        with pytest.raises(ValueError, match="outside the model root"):
            srv.reload_config(f'model_config_list {{ config {{ name: "x" '
                              f'base_path: "{served}/../outside" }} }}')
    finally:
        srv.stop()


def test_rest_api_metrics_and_request_size_cap(model_root):
    import json
    import urllib.error
    import urllib.request

    with ModelServer(model_base_path=str(model_root), port=0, rest_api_port=0,
                     max_message_bytes=64 * 1024) as srv:
        base = f"http://{srv.rest_target}"

        def post(path, body):
            req = urllib.request.Request(base + path, data=body, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, body = post("/v1/models/toy:predict", json.dumps(
            {"instances": [{"user_id": "ab", "x": 1.0}, {"user_id": "c", "x": 2.0}]}).encode())
        assert status == 200 and [p["score"] for p in body["predictions"]] == [4.0, 5.0]
        assert body["predictions"][0]["user"] == "ab"
        status, body = post("/v1/models/toy:predict", json.dumps(
            {"signature_name": "pairs", "inputs": {"ids": [[1, 2], [3, 4]]}}).encode())
        assert status == 200 and body == {"outputs": [3, 7]}
        status, body = post("/v1/models/toy:predict", b"x" * (64 * 1024 + 1))
        assert status == 413 and "exceeds" in body["error"]
        status, body = post("/v1/models/toy:predict", b"{")
        assert status == 400 and body["error"].startswith("JSON Parse error")
        with grpc.insecure_channel(srv.target) as channel:  # gRPC messages are capped too
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            big = {"user_id": np.array(["a"] * 20000), "x": np.ones(20000, np.float32)}
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(_request(inputs=big), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            stub.Predict(_request(), timeout=10)
        with urllib.request.urlopen(base + "/monitoring/prometheus/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert ':tensorflow:serving:request_count{model_name="toy",status="OK"}' in text
        assert 'request_latency_bucket{model_name="toy",API="predict",entrypoint="REST"' in text
        assert 'request_latency_bucket{model_name="toy",API="predict",entrypoint="GRPC"' in text
        assert ":tensorflow:cc:saved_model:load_attempt_count" in text


def test_config_file_poll_adds_and_removes_models(model_root, tmp_path):
    shutil.copytree(model_root / "toy", tmp_path / "toy")
    shutil.copytree(model_root / "other", tmp_path / "other")
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "toy" base_path: "toy" } }')
    srv = ModelServer(model_config_file=str(config), port=0,
                      model_config_file_poll_wait_seconds=0.2)
    srv.start()
    try:
        assert srv.models() == {"toy": [2]}
        config.write_text('model_config_list { config { name: "other" base_path: "other" } '
                          'config { name: "toy" base_path: "toy" '
                          'model_version_policy { all {} } } }')
        deadline = time.time() + 15
        while srv.models() != {"other": [1], "toy": [1, 2]} and time.time() < deadline:
            time.sleep(0.05)
        assert srv.models() == {"other": [1], "toy": [1, 2]}
        config.write_text("this is not a config")  # a broken edit is ignored, not applied
        time.sleep(0.6)
        assert srv.models() == {"other": [1], "toy": [1, 2]}
    finally:
        srv.stop()


def test_failing_warmup_fails_the_load(model_root, tmp_path):
    base = tmp_path / "toy"
    shutil.copytree(model_root / "toy" / "1", base / "1")
    shutil.copytree(model_root / "toy" / "2", base / "2")
    extra = base / "2" / "assets.extra"
    extra.mkdir(exist_ok=True)
    entry = prediction_log_pb2.PredictionLog()
    entry.predict_log.request.CopyFrom(_request(inputs={"x": np.ones(2, np.float32)}))
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        writer.write(entry.SerializeToString())  # misses an input: version 2 must not serve
    srv = ModelServer(model_name="toy", model_base_path=str(base), port=0, version_policy="all")
    try:
        assert srv.reload() == {"toy": [1]}
        response = srv.get_model_status(_status_request())
        states = {s.version: (s.state, s.status.error_message) for s in
                  response.model_version_status}
        assert states[2][0] == get_model_status_pb2.ModelVersionStatus.END
        assert "warmup" in states[2][1]
    finally:
        srv.stop()


def test_serve_help_documents_tf_serving_flags():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "recsys_tf.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=120).stdout
    for flag in ("--port", "--rest_api_port", "--model_config_file", "--model_base_path",
                 "--model_name", "--file_system_poll_wait_seconds", "--enable_batching",
                 "--batching_parameters_file", "--tensorflow_session_parallelism",
                 "--tensorflow_intra_op_parallelism", "--tensorflow_inter_op_parallelism",
                 "--grpc_max_threads", "--rest_api_num_threads", "--ssl_config_file",
                 "--monitoring_config_file", "--model_config_file_poll_wait_seconds",
                 "--enable_model_warmup", "--max_message_bytes", "--host", "--model_root",
                 "--rest-api-port", "--model-config"):
        assert flag in out, flag


def test_deployment_bundle_parses_as_tf_serving_reads_it():
    """serving/*.config are the text protos TF Serving reads; every exported model is listed."""
    import os

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from recsys_tf.wire import protos
    from recsys_tf.server.batching import BatchingOptions

    folder = os.path.join(os.path.dirname(__file__), "..", "..", "serving")
    names = {}
    for config in ("models", "rankers", "retrieval", "scann"):
        parsed = text_format.Parse(open(os.path.join(folder, f"{config}.config")).read(),
                                   model_server_config_pb2.ModelServerConfig())
        names[config] = {c.name for c in parsed.model_config_list.config}
        for c in parsed.model_config_list.config:
            assert c.base_path == f"/models/{c.name}" and c.model_platform == "tensorflow"
    everything = {"two_tower", "two_tower_scann", "deepfm", "wide_deep", "xdeepfm", "dcn_v2",
                  "dien"}
    assert names["models"] == everything
    assert names["rankers"] | names["retrieval"] | names["scann"] == everything
    assert names["retrieval"] == {"two_tower"} and names["scann"] == {"two_tower_scann"}
    text = open(os.path.join(folder, "batching.config")).read()
    batching = BatchingOptions.from_proto(text_format.Parse(text, protos.BatchingParameters()))
    assert batching.max_batch_size >= 100 and batching.num_batch_threads >= 1
    monitoring = text_format.Parse(open(os.path.join(folder, "monitoring.config")).read(),
                                   protos.MonitoringConfig())
    assert monitoring.prometheus_config.enable
    compose = open(os.path.join(folder, "docker-compose.yml")).read()
    for needle in ("tensorflow/serving", "--enable_batching=true", "127.0.0.1:8500:8500",
                   "../saved_models:/models:ro", "context: ./scann"):
        assert needle in compose, needle
