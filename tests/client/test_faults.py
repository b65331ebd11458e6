"""The client when things go wrong: retries, deadlines, stopped models and servers, new versions.

Client-side faults are injected by a ``ServingClient`` stand-in in front of the shared session
server; server-side ones use a ModelServer of this module's own (on copies of the session's
exports plus a tiny DCN-v2), a slow gRPC proxy in front of it, and a server stopped mid-run.
"""
import json
import logging
import os
import shutil
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from recsys_tf.cli import main
from recsys_tf.client import ClientOptions, Recommender, ServingClient
from recsys_tf.server.server import ModelServer

SLACK_S = 0.5  # scheduling slack on a shared 2-core machine when checking a deadline held
# deadlines of the tests below: long enough for the real calls on a loaded 2-core machine, far
# below the delays that must be cut off
DEADLINE_S = 1.5
DELAY_S = 5.0
# the deadline of the calls a test does not time: warm-ups (a first GetModelMetadata, a
# model's first Predict) and the tests of retries, which check counts, not the clock. One
# slow moment of a loaded 2-core machine must not turn them into degraded answers.
ROOMY_S = 30.0


class InjectedError(grpc.RpcError):
    def __init__(self, code):
        super().__init__()
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return f"injected {self._code.name}"


class Flaky:
    """A ServingClient stand-in: the first ``times`` Predicts of a model fail with ``code``
    (``times=None``: all of them), then calls go to the real server. Records every call."""

    def __init__(self, target, faults):
        self.real = ServingClient(target)
        self.faults = {m: [code, times] for m, (code, times) in faults.items()}
        self.calls = []  # (model, time.monotonic(), timeout)

    def signature(self, *args, **kwargs):
        return self.real.signature(*args, **kwargs)

    def predict(self, model, inputs, timeout=None, **kwargs):
        self.calls.append((model, time.monotonic(), timeout))
        fault = self.faults.get(model)
        if fault and (fault[1] is None or fault[1] > 0):
            if fault[1] is not None:
                fault[1] -= 1
            raise InjectedError(fault[0])
        return self.real.predict(model, inputs, timeout=timeout, **kwargs)


# ---------------------------------------------------------------------------- retries (injected)
def test_unavailable_is_retried_then_answers(server, tables, user):
    u, ctx = user
    flaky = Flaky(server, {"deepfm": (grpc.StatusCode.UNAVAILABLE, 2),
                           "two_tower": (grpc.StatusCode.UNAVAILABLE, 1)})
    rec = Recommender(server, tables, client=flaky, timeout=ROOMY_S,
                      options=ClientOptions(backoff=(0.001, 0.01), max_attempts=3))
    res = rec.recommend(u, k=5, context=ctx)
    assert res.degraded is None and res.retries == 3
    assert [m for m, _, _ in flaky.calls] == ["two_tower"] * 2 + ["deepfm"] * 3
    gaps = [b[1] - a[1] for a, b in zip(flaky.calls[2:], flaky.calls[3:])]
    assert all(g >= 0.0005 for g in gaps)  # backed off (first delay drawn from [0.5, 1] ms)


def test_attempts_are_capped(server, tables, user):
    u, ctx = user
    flaky = Flaky(server, {"deepfm": (grpc.StatusCode.UNAVAILABLE, None)})
    rec = Recommender(server, tables, client=flaky, timeout=ROOMY_S,
                      options=ClientOptions(backoff=(0.001, 0.002), max_attempts=4))
    res = rec.recommend(u, k=5, context=ctx)
    assert res.degraded == "ranker failed (UNAVAILABLE): retrieval order"
    assert [m for m, _, _ in flaky.calls].count("deepfm") == 4 and res.retries == 3


def test_only_unavailable_is_retried_unless_configured(server, tables, user):
    u, ctx = user
    for code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT):
        flaky = Flaky(server, {"deepfm": (code, 1)})
        res = Recommender(server, tables, client=flaky, timeout=ROOMY_S,
                          options=ClientOptions(ranker_signature="serving_default")
                          ).recommend(u, k=5, context=ctx)
        assert res.degraded == f"ranker failed ({code.name}): retrieval order"
        assert res.retries == 0
    flaky = Flaky(server, {"deepfm": (grpc.StatusCode.RESOURCE_EXHAUSTED, 1)})
    rec = Recommender(server, tables, client=flaky, timeout=ROOMY_S,
                      options=ClientOptions(retry_resource_exhausted=True))
    res = rec.recommend(u, k=5, context=ctx)
    assert res.degraded is None and res.retries == 1



class BatchingTFServing:
    """A ServingClient stand-in that refuses ``one_user`` requests as TF Serving does with
    batching on (INVALID_ARGUMENT: inputs differ in their first dimension) when ``refuse``;
    records (model, signature, {input: shape}) of every Predict."""

    def __init__(self, target, refuse=True):
        self.real, self.refuse, self.calls = ServingClient(target), refuse, []

    def signature(self, *args, **kwargs):
        return self.real.signature(*args, **kwargs)

    def predict(self, model, inputs, signature="serving_default", **kwargs):
        self.calls.append((model, signature, {k: np.shape(v) for k, v in inputs.items()}))
        if self.refuse and signature == "one_user":
            raise InjectedError(grpc.StatusCode.INVALID_ARGUMENT)
        return self.real.predict(model, inputs, signature=signature, **kwargs)


def test_one_user_signature_sends_the_user_once_and_falls_back_when_refused(
        server, tables, user, caplog):
    u, ctx = user
    plain = BatchingTFServing(server, refuse=False)
    with Recommender(server, tables, client=plain, timeout=ROOMY_S) as rec:
        want = rec.recommend(u, k=5, context=ctx, n_candidates=12)
    assert want.degraded is None and want.models["ranker"]["signature"] == "one_user"
    (_, _, shapes), = [c for c in plain.calls if c[0] == "deepfm"]
    assert shapes["item_id"] == (12,) and shapes["category"] == (12,)   # item features: a row each
    assert shapes["user_id"] == (1,) and shapes["hour"] == (1,) and shapes["history"] == (1, 20)

    refusing = BatchingTFServing(server)
    with caplog.at_level(logging.WARNING, logger="recsys_tf.client"):
        with Recommender(server, tables, client=refusing, timeout=ROOMY_S) as rec:
            first = rec.recommend(u, k=5, context=ctx, n_candidates=12)
            again = rec.recommend(u, k=5, context=ctx, n_candidates=12)
    for res in (first, again):   # answered by serving_default, the user's row repeated
        assert res.degraded is None and res.models["ranker"]["signature"] == "serving_default"
        np.testing.assert_allclose([r.ranking_score for r in res.items],
                                   [r.ranking_score for r in want.items], atol=1e-6)
    ranker_calls = [(sig, shapes["user_id"]) for m, sig, shapes in refusing.calls
                    if m == "deepfm"]
    assert ranker_calls == [("one_user", (1,)), ("serving_default", (12,)),
                            ("serving_default", (12,))]     # one_user is not tried again
    assert caplog.text.count("signature one_user rejected") == 1

    named = BatchingTFServing(server)
    with Recommender(server, tables, client=named, timeout=ROOMY_S,
                     options=ClientOptions(ranker_signature="serving_default")) as rec:
        assert rec.recommend(u, k=5, context=ctx, n_candidates=12).degraded is None
    assert [sig for m, sig, _ in named.calls if m == "deepfm"] == ["serving_default"]


def test_bundled_batching_server_runs_one_user_requests_unbatched(trained, tables, user,
                                                                   server):
    """Where TF Serving's batching refuses one_user requests, the bundled server runs them
    unbatched (a documented difference): the same answer as without batching."""
    from recsys_tf.server.batching import BatchingOptions

    u, ctx = user
    with Recommender(server, tables, timeout=ROOMY_S) as rec:
        want = rec.recommend(u, k=5, context=ctx, n_candidates=12)
    srv = ModelServer(model_base_path=trained["root"], host="127.0.0.1", port=0,
                      enable_batching=True, batching_parameters=BatchingOptions(
                          max_batch_size=64, batch_timeout_micros=1000))
    srv.start()
    try:
        with Recommender(srv.target, tables, timeout=ROOMY_S) as rec:
            got = rec.recommend(u, k=5, context=ctx, n_candidates=12)
    finally:
        srv.stop()
    assert got.degraded is None and got.models["ranker"]["signature"] == "one_user"
    assert [r.item_id for r in got.items] == [r.item_id for r in want.items]
    np.testing.assert_allclose([r.ranking_score for r in got.items],
                               [r.ranking_score for r in want.items], atol=1e-6)

def test_retries_never_run_past_the_stage_deadline(server, tables, user):
    u, ctx = user
    flaky = Flaky(server, {})
    timeout, shares = 1.0, (0.5, 0.8)
    rec = Recommender(server, tables, client=flaky, timeout=timeout, options=ClientOptions(
        max_attempts=1000, backoff=(0.02, 0.08), stage_shares=shares))
    # the signatures read and both models called once under a roomy deadline: the timed call
    # spends its retrieval share on one Predict, and the ranker's share on the retries
    assert rec.recommend(u, k=5, context=ctx, timeout=ROOMY_S).degraded is None
    flaky.faults["deepfm"] = [grpc.StatusCode.UNAVAILABLE, None]
    flaky.calls.clear()
    start = time.monotonic()
    res = rec.recommend(u, k=5, context=ctx)
    elapsed = time.monotonic() - start
    assert res.degraded == "ranker failed (UNAVAILABLE): retrieval order"
    ranker_calls = [(t, to) for m, t, to in flaky.calls if m == "deepfm"]
    assert 3 <= len(ranker_calls) < 1000 and res.retries == len(ranker_calls) - 1
    stage_end = start + shares[1] * timeout
    for t, to in ranker_calls:  # no call starts after, nor is allowed to run past, the deadline
        assert t < stage_end and t + to <= stage_end + 1e-3
    assert elapsed <= timeout + SLACK_S
    assert [r.retrieval_score for r in res.items] == sorted(
        (r.retrieval_score for r in res.items), reverse=True)


# ---------------------------------------------------------------------------- own server
@pytest.fixture(scope="module")
def fault_root(trained, tiny_synthetic, tmp_path_factory):
    """Copies of the session's exports plus a tiny DCN-v2 and a toy ranker ("canary")."""
    from recsys_tf.pipeline import train

    root = tmp_path_factory.mktemp("fault_models")
    for name in ("two_tower", "deepfm"):
        shutil.copytree(os.path.join(trained["root"], name), root / name)
    train("dcn_v2", tiny_synthetic, epochs=1, batch_size=256, export_dir=str(root), verbose=0,
          options={"dim": 4, "dnn_units": [8], "cross_layers": 1})
    _toy_ranker(root / "canary" / "1", ["user_id", "item_id"], 0.25)
    return root


def _toy_ranker(path, inputs, value):
    """A SavedModel ranker taking string ``inputs`` and answering ``value`` for every row."""
    from recsys_tf.backend import tf

    module = tf.Module()
    fn = tf.function(lambda **x: {"probability": tf.fill(tf.shape(x[inputs[0]]), value)})
    sig = fn.get_concrete_function(**{n: tf.TensorSpec([None], tf.string, name=n)
                                      for n in inputs})
    tmp = str(path) + ".tmp"
    tf.saved_model.save(module, tmp, signatures={"serving_default": sig})
    os.rename(tmp, path)


@pytest.fixture(scope="module")
def fault_server(fault_root):
    srv = ModelServer(model_base_path=str(fault_root), host="127.0.0.1", port=0)
    srv.start()
    yield srv
    srv.stop()


class _SlowProxy(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Forwards to a server, holding Predict for the models in ``delays`` first (until
    ``released`` is set: the fixture lets held calls finish while the upstream still runs,
    rather than have them fail after it stopped - and log a traceback while the test session
    may be importing, which CPython 3.11's ast module does not survive from two threads)."""

    def __init__(self, upstream, delays, released):
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(upstream))
        self.delays = delays
        self.released = released

    def Predict(self, request, context):
        self.released.wait(self.delays.get(request.model_spec.name, 0))
        return self.stub.Predict(request, timeout=10)

    def GetModelMetadata(self, request, context):
        return self.stub.GetModelMetadata(request, timeout=10)


@pytest.fixture
def slow_proxy(fault_server):
    delays, released = {}, threading.Event()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _SlowProxy(fault_server.target, delays, released), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", delays
    released.set()
    srv.stop(grace=5).wait(10)


def test_slow_ranker_times_out_to_retrieval_order(slow_proxy, tables, user):
    target, delays = slow_proxy
    u, ctx = user
    # retrieval (not timed here) has 70% of the deadline; the ranker must be cut off at 95%
    with Recommender(target, tables, ranker="dcn_v2", timeout=DEADLINE_S,
                     options=ClientOptions(stage_shares=(0.7, 0.95))) as rec:
        # reads both signatures, calls both models once: under a roomy deadline
        warm = rec.recommend(u, k=5, context=ctx, timeout=ROOMY_S)
        delays["dcn_v2"] = DELAY_S
        start = time.monotonic()
        res = rec.recommend(u, k=5, context=ctx)
        elapsed = time.monotonic() - start
    assert warm.degraded is None
    assert res.degraded == "ranker failed (DEADLINE_EXCEEDED): retrieval order"
    assert elapsed <= DEADLINE_S + SLACK_S
    assert res.timings_ms["total"] <= (DEADLINE_S + SLACK_S) * 1e3
    assert len(res.items) == 5 and all(r.ranking_score is None for r in res.items)


def test_slow_retrieval_falls_back_to_ranked_popular_items(slow_proxy, tables, user):
    target, delays = slow_proxy
    u, ctx = user
    # retrieval must be cut off at 40% of the deadline; the ranker (not timed here) may use
    # the rest of it
    with Recommender(target, tables, ranker="dcn_v2", timeout=DEADLINE_S,
                     options=ClientOptions(stage_shares=(0.4, 1.0))) as rec:
        warm = rec.recommend(u, k=5, context=ctx, timeout=ROOMY_S)
        assert warm.degraded is None
        delays["two_tower"] = DELAY_S
        start = time.monotonic()
        res = rec.recommend(u, k=5, context=ctx, n_candidates=20)
        elapsed = time.monotonic() - start
        popular = rec.items.popular(20, exclude=rec.users.get(u).get("seen") or ())
    assert res.degraded == "retrieval failed (DEADLINE_EXCEEDED): most popular items"
    # retrieval had its share (40%) of the deadline; the ranker still ranked the popular items
    assert res.timings_ms["retrieval"] <= (0.4 * DEADLINE_S + SLACK_S) * 1e3
    assert elapsed <= DEADLINE_S + SLACK_S
    assert {r.item_id for r in res.items} <= set(popular)
    assert all(r.ranking_score is not None for r in res.items)
    assert all("popularity_rank" in r.reasons for r in res.items)


def _loop(rec, u, ctx, results, errors, stop):
    while not stop.is_set():
        try:
            start = time.monotonic()
            res = rec.recommend(u, k=5, context=ctx, n_candidates=20)
            results.append((time.monotonic() - start, res))
        except Exception as e:  # the test fails on any
            errors.append(e)
            return


def _wait(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_ranker_model_stopped_mid_run(fault_server, fault_root, tables, user, tmp_path):
    u, ctx = user
    timeout = 10.0
    results, errors, stop = [], [], threading.Event()
    # NOT_FOUND comes back at once; the long deadline only keeps retrieval answering while the
    # server (in this process, on 2 loaded cores) loads the model back, which took over 1 s
    with Recommender(fault_server.target, tables, ranker="dcn_v2", timeout=timeout) as rec:
        assert rec.recommend(u, k=5, context=ctx, timeout=ROOMY_S).degraded is None  # warm
        thread = threading.Thread(target=_loop, args=(rec, u, ctx, results, errors, stop))
        thread.start()
        try:
            _wait(lambda: len(results) >= 3 or errors)
            shutil.move(str(fault_root / "dcn_v2"), str(tmp_path / "dcn_v2"))
            fault_server.reload()  # the ranker's folder is gone: unloaded
            mark = len(results)
            _wait(lambda: sum(1 for _, r in results[mark:] if r.degraded) >= 3 or errors)
            shutil.move(str(tmp_path / "dcn_v2"), str(fault_root / "dcn_v2"))
            fault_server.reload()
            mark = len(results)
            _wait(lambda: sum(1 for _, r in results[mark:] if not r.degraded) >= 3 or errors)
        finally:
            stop.set()
            thread.join()
    assert not errors, errors
    degraded = [r for _, r in results if r.degraded]
    assert degraded and results[0][1].degraded is None and results[-1][1].degraded is None
    for r in degraded:
        assert r.degraded == "ranker failed (NOT_FOUND): retrieval order"
        assert all(x.ranking_score is None for x in r.items)
        scores = [x.retrieval_score for x in r.items]
        assert scores == sorted(scores, reverse=True)
    assert all(len(r.items) == 5 for _, r in results)
    assert max(t for t, _ in results) <= timeout + SLACK_S


def test_new_ranker_version_with_another_signature(fault_server, fault_root, tables, user):
    """The cached signature is refreshed when the served version changes under the client."""
    u, ctx = user
    # a roomy deadline: version 2's first Predict (and the metadata re-read) is not timed here
    with Recommender(fault_server.target, tables, ranker="canary", timeout=ROOMY_S) as rec:
        before = rec.recommend(u, k=4, context=ctx)
        _toy_ranker(fault_root / "canary" / "2", ["item_id", "category"], 0.75)
        fault_server.reload()
        after = rec.recommend(u, k=4, context=ctx)
    assert before.degraded is None and before.models["ranker"]["version"] == 1
    assert [r.ranking_score for r in before.items] == [0.25] * 4
    # the request built from version 1 (user_id, item_id) was refused; the client re-read
    # the metadata, rebuilt the request for version 2 (item_id, category) and sent it again
    assert after.degraded is None and after.models["ranker"]["version"] == 2
    assert [r.ranking_score for r in after.items] == [0.75] * 4


def test_cli_recommend_json_with_dcn_v2(fault_server, tables, tiny_synthetic, capsys):
    u = tiny_synthetic.test.user_id.iloc[0]
    rc = main(["recommend", "--user-id", u, "--k", "10", "--ranker", "dcn_v2",
               "--diversity", "0.3", "--json", "--target", fault_server.target,
               "--tables", tables, "--timeout", "10"])  # 10 s: a loaded machine's first call
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["degraded"] is None and len(out["items"]) == 10
    assert out["models"]["ranker"] == {"name": "dcn_v2", "version": 1, "signature": "one_user"}
    for pos, item in enumerate(out["items"], 1):
        why = item["reasons"]
        assert why["mmr_position"] == pos and "mmr_penalty" in why
        assert why["ranking_score"] == item["ranking_score"] and "retrieval_rank" in why
    assert {"retrieval", "ranking", "rerank", "total"} <= set(out["timings_ms"])
    rc = main(["recommend", "--user-id", u, "--k", "3", "--ranker", "dcn_v2", "--target",
               fault_server.target, "--tables", tables, "--category-cap", "1",
               "--timeout", "10"])
    text = capsys.readouterr().out
    assert rc == 0 and "reasons" in text and "retrieved #" in text
    rc = main(["recommend", "--user-id", u, "--k", "3", "--ranker", "dcn_v2", "--target",
               fault_server.target, "--tables", tables, "--json", "--timeout", "10",
               "--ranker-signature", "serving_default"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["degraded"] is None
    assert out["models"]["ranker"]["signature"] == "serving_default"


def test_server_stopped_mid_run(fault_server, tables, user, caplog):
    """Last in this module: it stops the module's server. Once the server is gone every answer
    is the most popular unseen items, flagged, within the deadline, and nothing raises."""
    u, ctx = user
    results, errors, stop = [], [], threading.Event()
    with Recommender(fault_server.target, tables, ranker="dcn_v2", timeout=DEADLINE_S) as rec:
        popular = rec.items.popular(20, exclude=rec.users.get(u).get("seen") or ())
        # the signatures read and both models called once under a roomy deadline: the loop's
        # calls are the timed ones
        assert rec.recommend(u, k=5, context=ctx, n_candidates=20,
                             timeout=ROOMY_S).degraded is None
        thread = threading.Thread(target=_loop, args=(rec, u, ctx, results, errors, stop))
        thread.start()
        try:
            _wait(lambda: len(results) >= 3 or errors)
            fault_server.stop()
            mark = len(results)
            _wait(lambda: len(results) >= mark + 5 or errors)
        finally:
            stop.set()
            thread.join()
    assert not errors, errors
    assert results[0][1].degraded is None
    last = results[-1][1]
    assert last.degraded.startswith("retrieval failed (UNAVAILABLE): most popular items")
    assert "ranker failed (UNAVAILABLE): popularity order" in last.degraded
    assert [r.item_id for r in last.items] == popular[:5]
    assert np.all([r.ranking_score is None for r in last.items])
    assert all(len(r.items) == 5 for _, r in results)
    assert max(t for t, _ in results) <= DEADLINE_S + SLACK_S
    # the outage is logged when it starts, not on every degraded answer
    warnings = [r for r in caplog.records if r.name == "recsys_tf.client"
                and "retrieval failing (UNAVAILABLE" in r.getMessage()]
    assert len(warnings) == 1
