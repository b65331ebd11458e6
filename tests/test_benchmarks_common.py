"""benchmarks/common.py: the server the benchmarks start answers and stops, the percentiles
are the right ones, results land on disk."""
import importlib.util
import json
import math
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# loaded by path, so that benchmarks/ (serving.py, client.py, ...) is not put on sys.path
_spec = importlib.util.spec_from_file_location("benchmarks_common",
                                               os.path.join(ROOT, "benchmarks", "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


@pytest.fixture(scope="module")
def doubling_root(tmp_path_factory):
    """A root holding one model, ``double``: ``y = 2 x``."""
    import tensorflow as tf

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def serve(self, x):
            return {"y": 2.0 * x}

    root = str(tmp_path_factory.mktemp("models"))
    module = Double()
    tf.saved_model.save(module, os.path.join(root, "double", "1"),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    os.makedirs(os.path.join(root, "not_a_model"))
    return root


def _predict(target, x):
    from recsys_tf.client.grpc_client import ServingClient

    with ServingClient(target, timeout=30) as client:
        return client.predict("double", {"x": np.asarray(x, np.float32)})["y"]


def test_percentiles_golden():
    got = common.percentiles([4.0, 1.0, 3.0, 2.0, 5.0, 100.0])
    # numpy's linear interpolation over the sorted values 1 2 3 4 5 100
    assert got == {"p50_ms": 3.5, "p90_ms": 52.5, "p99_ms": pytest.approx(95.25)}
    assert common.percentiles([1.0, 2.0], qs=(50,), prefix="e2e_", digits=1) == {
        "e2e_p50_ms": 1.5}
    assert all(math.isnan(v) for v in common.percentiles([]).values())


def test_machine_info_and_results(tmp_path):
    info = common.machine_info(note="x")
    assert info["cpu_count"] == os.cpu_count() and info["note"] == "x"
    assert info["python"].count(".") == 2 and info["tensorflow"].startswith("2.")
    assert len(info["load_average_1_5_15min"]) == 3 and info["memory_total_gb"] > 0
    assert info["git_commit"] is None or len(info["git_commit"].split("+")[0]) == 40

    def plot(result, path):
        fig = common.pyplot().figure()
        fig.gca().plot(result["xs"])
        common.save_figure(fig, path)

    path, png = common.write_results({"xs": [1, 2, 3]}, str(tmp_path / "r" / "bench.json"),
                                     plot)
    assert json.load(open(path)) == {"xs": [1, 2, 3]}
    assert png == str(tmp_path / "r" / "bench.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert common.result_path("serving") == os.path.join(ROOT, "benchmarks", "results",
                                                         "serving.json")


def test_in_process_server_answers_then_stops(doubling_root):
    import grpc

    assert common.served_models(doubling_root) == ["double"]
    with common.start_server(doubling_root, in_process=True) as server:
        assert server.pid == os.getpid() and server.alive()
        np.testing.assert_array_equal(_predict(server.target, [1.0, 2.5]), [2.0, 5.0])
        target = server.target
    assert not server.alive()
    with pytest.raises(grpc.RpcError):
        _predict(target, [1.0])


def test_waiting_for_a_model_that_is_not_there_fails_clearly(doubling_root):
    with pytest.raises(RuntimeError, match=r"models \['absent'\] not AVAILABLE .*NOT_FOUND"):
        common.start_server(doubling_root, models=["absent"], in_process=True, timeout=1)
    assert not common._RUNNING      # the half-started server was stopped


@pytest.mark.slow
def test_subprocess_server_answers_then_every_process_stops(doubling_root):
    with common.start_server(doubling_root, rest_api_port=0) as server:
        assert server.pid != os.getpid() and server.rest_port
        np.testing.assert_array_equal(_predict(server.target, [3.0]), [6.0])
        assert server.wait_for_log(r"listening on 127\.0\.0\.1", 2, timeout=5)
        proc = server.proc
    assert proc.poll() is not None
