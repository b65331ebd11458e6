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
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from recsys_tf.serving import codec
from recsys_tf.serving.grpc_client import ServingClient
from recsys_tf.serving.server import ModelServer


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
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if signature:
        req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for name, value in (GOOD if inputs is None else inputs).items():
        req.inputs[name].CopyFrom(value if hasattr(value, "dtype") and not isinstance(
            value, np.ndarray) else codec.to_tensor_proto(value))
    req.output_filter.extend(output_filter)
    return req


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
    _expect_error(stub.Predict, _request(model=""), grpc.StatusCode.INVALID_ARGUMENT,
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


def test_bad_shape(stub):
    inputs = dict(GOOD, x=np.array([[1.0], [2.0]], np.float32))
    _expect_error(stub.Predict, _request(inputs=inputs), grpc.StatusCode.INVALID_ARGUMENT,
                  "'x'", "[2,1]", stub=stub)
    _expect_error(stub.Predict, _request(inputs={"ids": np.zeros((2, 3), np.int64)},
                                         signature="pairs"),
                  grpc.StatusCode.INVALID_ARGUMENT, "'ids'", "[-1,2]", stub=stub)


def test_unknown_signature(stub):
    _expect_error(stub.Predict, _request(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
                  'Serving signature name: "nope" not found in signature def', stub=stub)


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
    _expect_error(stub.Predict, req, grpc.StatusCode.INVALID_ARGUMENT, "'x'", stub=stub)


def test_classify_is_unimplemented(stub):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "toy"
    _expect_error(stub.Classify, req, grpc.StatusCode.UNIMPLEMENTED, "Classify", stub=stub)


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
    with pytest.raises(ValueError, match="parse"):
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
            with caplog.at_level(logging.INFO, logger="recsys_tf.serving.server"):
                assert srv.reload() == {"toy": [3]}
            assert any("version 3" in r.message and "1 warmup" in r.message
                       for r in caplog.records)
            assert c.predict("toy", GOOD)["version"].tolist() == [1, 1]  # v1's weights
            assert c.status("toy") == {3: "AVAILABLE"}
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
            assert c.status("toy")[4] == "AVAILABLE"
            assert c.status("toy")[5] == "END"
            assert c.predict("toy", GOOD)["version"].tolist() == [2, 2]
            srv.reload()  # unchanged: not retried
            assert c.status("toy")[5] == "END"
            shutil.rmtree(base / "5")  # fixed in place: loaded on the next scan
            shutil.copytree(model_root / "toy" / "1", base / "5")
            assert srv.reload() == {"toy": [5]}
            assert c.status("toy") == {5: "AVAILABLE"}
            # ModelService.HandleReloadConfigRequest swaps the model list
            request = model_management_pb2.ReloadConfigRequest()
            entry = request.config.model_config_list.config.add()
            entry.name, entry.base_path = "other", str(model_root / "other")
            with grpc.insecure_channel(srv.target) as channel:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    request, timeout=30)
            assert srv.models() == {"other": [1]}
            with pytest.raises(grpc.RpcError) as info:
                c.predict("toy", GOOD)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
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
        [sys.executable, "-m", "recsys_tf.serving.server", "--model_base_path", str(tmp_path),
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
