"""Server-side batching: TF Serving's BatchingParameters semantics, on the scheduler and over
gRPC."""
import threading
import time

import grpc
import numpy as np
import pytest

from recsys_tf.wire import protos
from recsys_tf.server.batching import BatchingOptions, BatchScheduler
from recsys_tf.wire.errors import ServingError


def _double(calls, delay=0.0, gate=None):
    def run(inputs):
        if gate is not None:
            gate.wait(10)
        if delay:
            time.sleep(delay)
        calls.append({k: v.shape[0] for k, v in inputs.items()})
        return {"y": inputs["x"] * 2, "n": np.full(inputs["x"].shape[0], len(calls))}
    return run


def _submit_all(scheduler, run, arrays, key=("m",)):
    results, errors = [None] * len(arrays), [None] * len(arrays)

    def one(i):
        try:
            results[i] = scheduler.run(key, run, {"x": arrays[i]})
        except Exception as exc:  # collected for the assertions
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, errors


def test_options_from_tf_serving_text_proto(tmp_path):
    text = """
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 7 }
        num_batch_threads { value: 3 }
        allowed_batch_sizes: 16
        allowed_batch_sizes: 64
        pad_variable_length_inputs: true
    """
    opts = BatchingOptions.from_proto(protos.parse_text(text, protos.BatchingParameters))
    assert (opts.max_batch_size, opts.batch_timeout_micros, opts.max_enqueued_batches,
            opts.num_batch_threads) == (64, 2000, 7, 3)
    assert opts.allowed_batch_sizes == (16, 64) and opts.pad_variable_length_inputs
    with pytest.raises(ValueError, match="final entry"):
        BatchingOptions(max_batch_size=64, allowed_batch_sizes=(16, 32)).validate()
    with pytest.raises(ValueError, match="increasing"):
        BatchingOptions(max_batch_size=64, allowed_batch_sizes=(32, 16, 64)).validate()
    with pytest.raises(ValueError):
        protos.parse_text("max_batch_size: {", protos.BatchingParameters)


def test_concurrent_requests_share_a_batch_and_get_their_own_rows():
    calls, gate = [], threading.Event()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=100, num_batch_threads=1,
                                               batch_timeout_micros=200_000))
    try:
        arrays = [np.full(i + 1, float(i), np.float32) for i in range(6)]
        timer = threading.Timer(0.05, gate.set)
        timer.start()
        results, errors = _submit_all(scheduler, _double(calls, gate=gate), arrays)
    finally:
        scheduler.stop()
    assert errors == [None] * 6
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], np.full(i + 1, 2.0 * i))
    assert sum(c["x"] for c in calls) == 21
    assert len(calls) < 6  # at least some requests were merged


def test_batch_never_exceeds_max_batch_size_and_big_tasks_are_refused():
    calls = []
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, num_batch_threads=1,
                                               batch_timeout_micros=20_000))
    try:
        results, errors = _submit_all(scheduler, _double(calls),
                                      [np.ones(3, np.float32) for _ in range(10)])
        assert errors == [None] * 10
        assert max(c["x"] for c in calls) <= 8
        with pytest.raises(ServingError) as info:
            scheduler.run(("m",), _double([]), {"x": np.ones(9, np.float32)})
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "larger than maximum input batch size" in info.value.message
    finally:
        scheduler.stop()


def test_full_queue_is_unavailable():
    calls, gate = [], threading.Event()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, num_batch_threads=1,
                                               max_enqueued_batches=2))
    try:
        results, errors = [], []
        threads = []

        def one():
            try:
                results.append(scheduler.run(("m",), _double(calls, gate=gate),
                                             {"x": np.ones(2, np.float32)}))
            except ServingError as exc:
                errors.append(exc)

        for _ in range(6):  # 1 running + 2 queued batches of 2 rows; the rest are refused
            threads.append(threading.Thread(target=one))
            threads[-1].start()
            time.sleep(0.05)
        gate.set()
        for t in threads:
            t.join(10)
    finally:
        scheduler.stop()
    assert len(results) + len(errors) == 6
    assert errors and all(e.code == grpc.StatusCode.UNAVAILABLE for e in errors)
    assert "queue to which this task was submitted is full" in errors[0].message
    assert len(results) >= 3


def test_large_batch_splitting_and_allowed_sizes():
    calls = []
    options = BatchingOptions(
        max_batch_size=100, enable_large_batch_splitting=True, max_execution_batch_size=8,
        allowed_batch_sizes=(4, 8), num_batch_threads=1)
    scheduler = BatchScheduler(options)
    try:
        out = scheduler.run(("m",), _double(calls), {"x": np.arange(19, dtype=np.float32)})
    finally:
        scheduler.stop()
    np.testing.assert_array_equal(out["y"], np.arange(19) * 2.0)
    assert all(c["x"] in (4, 8) for c in calls)  # padded up to an allowed size


def test_batches_ready_at_once_run_on_all_batch_threads():
    """One request split into two full batches: both batch threads take one, at the same
    time (each batch waits for the other at a barrier)."""
    both = threading.Barrier(2, timeout=10)

    def run(inputs):
        both.wait()
        return {"y": inputs["x"] * 2}

    scheduler = BatchScheduler(BatchingOptions(
        max_batch_size=100, enable_large_batch_splitting=True, max_execution_batch_size=4,
        batch_timeout_micros=10_000_000, num_batch_threads=2))
    try:
        out = scheduler.run(("m",), run, {"x": np.arange(8, dtype=np.float32)})
    finally:
        scheduler.stop()
    np.testing.assert_array_equal(out["y"], np.arange(8) * 2.0)


def test_variable_length_inputs_are_padded():
    seen = []

    def run(inputs):
        seen.append(inputs["x"].shape)
        return {"s": inputs["x"].sum(axis=1)}

    gate = threading.Event()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=10, num_batch_threads=1,
                                               batch_timeout_micros=100_000,
                                               pad_variable_length_inputs=True))
    try:
        def gated(inputs):
            gate.wait(5)
            return run(inputs)

        threading.Timer(0.05, gate.set).start()
        results, errors = _submit_all(scheduler, gated, [np.ones((1, 2)), np.ones((2, 3))])
    finally:
        scheduler.stop()
    assert errors == [None, None]
    assert results[0]["s"].tolist() == [3.0]  # padded with the tensor's first element
    assert results[1]["s"].tolist() == [3.0, 3.0]


def test_one_bad_request_does_not_fail_its_batch():
    def run(inputs):
        if np.isnan(inputs["x"]).any():
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "nan")
        return {"y": inputs["x"] + 1}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=50, num_batch_threads=1,
                                               batch_timeout_micros=50_000))
    try:
        arrays = [np.ones(2, np.float32) for _ in range(5)] + [np.array([np.nan], np.float32)]
        results, errors = _submit_all(scheduler, run, arrays)
    finally:
        scheduler.stop()
    assert [e is None for e in errors] == [True] * 5 + [False]
    assert errors[5].code == grpc.StatusCode.INVALID_ARGUMENT
    assert all(r["y"].tolist() == [2.0, 2.0] for r in results[:5])


def test_inputs_without_a_batch_dimension_run_unbatched():
    calls = []
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, num_batch_threads=1))
    try:
        out = scheduler.run(("m",), lambda x: calls.append(1) or {"k": x["k"]},
                            {"q": np.ones((2, 3)), "k": np.array(5)})
    finally:
        scheduler.stop()
    assert out["k"] == 5 and calls == [1]


def test_batching_through_the_server(tmp_path):
    """16 concurrent gRPC clients against a batching server: all answered, rows kept apart,
    scalar-input signatures still served."""
    import tensorflow as tf

    from recsys_tf.client.grpc_client import ServingClient
    from recsys_tf.server.server import ModelServer

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 3.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.int32, name="k")])
        def topk(self, x, k):
            return {"v": tf.math.top_k(x, k=k).values}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "m" / "1"), signatures={
        "serving_default": m.serve.get_concrete_function(),
        "topk": m.topk.get_concrete_function()})
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 2000 }\n"
                      "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n")
    with ModelServer(model_name="m", model_base_path=str(tmp_path / "m"), port=0,
                     enable_batching=True, batching_parameters=str(params)) as srv:
        errors = []

        def client(i):
            with ServingClient(srv.target, timeout=30) as c:
                for j in range(10):
                    x = np.full(i % 5 + 1, float(i * 100 + j), np.float32)
                    try:
                        out = c.predict("m", {"x": x})
                        assert out["y"].tolist() == (x * 3).tolist()
                    except Exception as exc:  # collected for the assertion
                        errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        with ServingClient(srv.target) as c:
            out = c.predict("m", {"x": np.array([1.0, 5.0, 3.0], np.float32),
                                  "k": np.array(2, np.int32)}, signature="topk")
            assert out["v"].tolist() == [5.0, 3.0]
            with pytest.raises(grpc.RpcError) as info:  # TF Serving's "task too large"
                c.predict("m", {"x": np.ones(65, np.float32)})
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_batching_parameters_need_enable_batching(tmp_path):
    from recsys_tf.server.server import ModelServer

    with pytest.raises(ValueError, match="enable_batching"):
        ModelServer(model_base_path=str(tmp_path), batching_parameters=BatchingOptions())
