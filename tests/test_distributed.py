"""Training beyond one process: parameter-server training on a local cluster of processes on
127.0.0.1 (a coordinator, 2 workers, 2 parameter servers), its export served by the bundled
server, a worker killed mid-run, and a killed run resumed from its checkpoint.

Every cluster runs in a child process group of its own that the test kills on the way out, and
every wait has a deadline; the cluster's servers also end when their coordinator is gone.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from recsys_tf import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_users=60, n_items=50, n_categories=6, n_train=3000, n_test=600, seed=3)
DATA_OPTIONS = [a for k, v in TINY.items() for a in ("--data-option", f"{k}={v}")]
DEADLINE = 600

# trains the named models on one local cluster, each table sharded across both parameter
# servers, exports them, and saves the trained models' scores on 16 test rows
TRAIN = """
import json, sys
import numpy as np
from recsys_tf import data, distributed, pipeline, training
out, tiny, names = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(",")
ds = data.load("synthetic", None, **tiny)
rows, metrics = ds.test.head(16), {}
with distributed.LocalCluster(2, 2, log_dir=out + "/logs") as cluster:
    strategy = cluster.strategy(min_shard_bytes=64)
    for name in names:
        options = {"dim": 8, "hidden": [16]} if name == "two_tower" else {
            "dim": 4, "dnn_units": [16]}
        metrics[name], model = pipeline.train(
            name, ds, epochs=2, batch_size=64, steps_per_epoch=3, export_dir=out + "/models",
            verbose=0, strategy=strategy, scann=False, options=options)
        scores = (training.query_embeddings(model, ds.feature_set, rows) if name == "two_tower"
                  else training.predict(model, ds.feature_set, rows))
        np.save(out + "/" + name + ".npy", scores)
json.dump(metrics, open(out + "/metrics.json", "w"))
"""
TABLES = {"deepfm": "embeddings_4d", "two_tower": "embedding_item_id"}


class Child:
    """A child process in a process group of its own, its output in a file; killed with its
    whole group (and so every cluster process it started) when the test ends."""

    def __init__(self, argv, log):
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=distributed.child_environment(),
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{pattern!r} not seen (exit {self.proc.poll()}):\n"
                             + self.text()[-3000:])

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n" + self.text()[-3000:])

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)
        self._out.close()


@pytest.fixture
def children():
    started = []

    def start(argv, log):
        child = Child(argv, log)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()


def _train_argv(model, *extra):
    return [sys.executable, "-m", "recsys_tf.cli", "train", model, "--data", "synthetic",
            *DATA_OPTIONS, "--batch-size", "64", "--model-option", "dim=4",
            "--model-option", "dnn_units=[16]", "--min-shard-bytes", "64", *extra]


def _cluster_pids(root_pid, task_type):
    """Pids of the cluster-server processes of ``task_type`` below ``root_pid``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        config = env.get(b"TF_CONFIG")
        if ppid == root_pid and config and json.loads(config)["task"]["type"] == task_type:
            found.append(int(pid))
    return found


# -- no cluster needed ----------------------------------------------------------------------
def test_local_cluster_spec_parses_and_names_bad_values():
    assert distributed.parse_local_cluster("workers=2,ps=2") == (2, 2)
    assert distributed.parse_local_cluster("workers=3") == (3, 0)
    for bad in ("workers=0,ps=1", "ps=2", "workers=two", "workers=2;ps=2"):
        with pytest.raises(distributed.ClusterError, match=re.escape(repr(bad))):
            distributed.parse_local_cluster(bad)
    with pytest.raises(distributed.ClusterError, match="expected JSON"):
        distributed.tf_config({"TF_CONFIG": "{not json"})
    config = distributed.tf_config({"TF_CONFIG": json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"], "ps": ["d:1"]},
         "task": {"type": "chief", "index": 0}})})
    assert distributed.cluster_counts(config) == (2, 1)
    with pytest.raises(distributed.ClusterError, match="expected a chief"):
        distributed.make_strategy("parameter_server", {"cluster": {"worker": ["b:1"]}})


@pytest.mark.parametrize("argv, named", [
    (["--strategy", "horovod"], "'horovod'"),
    (["--local-cluster", "workers=2,ps=x"], "'workers=2,ps=x'"),
    (["--local-cluster", "workers=2,ps=0", "--strategy", "parameter_server"], "ps >= 1"),
    (["--local-cluster", "workers=2,ps=2", "--strategy", "multi_worker"], "ps=0"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch 0"),
])
def test_cli_refuses_bad_cluster_values_in_one_line(argv, named, capsys):
    from recsys_tf.cli import main

    assert main(["train", "deepfm", "--data", "synthetic", *argv]) == 2
    out = capsys.readouterr().err.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: ") and named in out[0], out


def test_cli_parameter_server_without_cluster_says_what_is_missing(monkeypatch, capsys):
    from recsys_tf.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(["train", "deepfm", "--data", "synthetic", "--strategy",
                 "parameter_server"]) == 2
    out = capsys.readouterr().err.strip().splitlines()
    assert len(out) == 1 and "expected a chief" in out[0], out


def test_cluster_server_needs_a_worker_or_ps_task(monkeypatch, capsys):
    from recsys_tf.cli import main

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "chief", "index": 0}}))
    assert main(["cluster-server"]) == 2
    assert "expected task.type worker or ps" in capsys.readouterr().err


# -- local clusters -------------------------------------------------------------------------
@pytest.mark.parametrize("names", [
    "deepfm", pytest.param("deepfm,two_tower", marks=pytest.mark.slow)])
def test_sharded_training_exports_what_the_bundled_server_serves(names, tmp_path, children):
    """A ranker (and, in the slow run, the two-tower model) trained on a local cluster (2
    workers, 2 parameter servers) with its table in 2 parts; the bundled server answers with
    the trained models' scores."""
    from recsys_tf import data

    names = names.split(",")
    train = children([sys.executable, "-c", TRAIN, str(tmp_path), json.dumps(TINY),
                      ",".join(names)], tmp_path / "train.log")
    assert train.wait(DEADLINE) == 0, train.text()[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in names:
        table, m = TABLES[name], metrics[name]
        assert (m["strategy"], m["n_workers"], m["n_ps"]) == ("parameter_server", 2, 2)
        assert m["steps"] == 6
        parts = {k: v for k, v in m["sharded_variables"].items() if k.endswith(table)}
        assert parts and set(parts.values()) == {2}, m["sharded_variables"]
        assert m["restored_max_abs_diff"] <= 1e-5      # plain copy == the sharded model

    server = children([sys.executable, "-m", "recsys_tf.cli", "serve", "--model_base_path",
                       str(tmp_path / "models"), "--port", "0"], tmp_path / "serve.log")
    port = int(server.wait_for(r"serving gRPC on [\d.]+:(\d+)", 180).group(1))
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from recsys_tf.backend import tf

    ds = data.load("synthetic", None, **TINY)
    rows, fs = ds.test.head(16), ds.feature_set
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def predict(model, signature, names, output):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = model, signature
        for name, values in fs.arrays(rows, names).items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
        deadline = time.monotonic() + 120
        while True:       # the server loads versions in the background
            try:
                reply = stub.Predict(request, timeout=30)
                return tf.make_ndarray(reply.outputs[output])
            except grpc.RpcError as e:
                if time.monotonic() > deadline or e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                time.sleep(0.5)

    try:
        served = predict("deepfm", "serving_default", fs.names, "probability")
        np.testing.assert_allclose(served.reshape(-1), np.load(tmp_path / "deepfm.npy"),
                                   rtol=1e-5, atol=1e-6)
        if "two_tower" in names:
            query_names = list(fs.with_role("user", "context"))
            served = predict("two_tower", "query_embedding", query_names, "embedding")
            np.testing.assert_allclose(served, np.load(tmp_path / "two_tower.npy"), rtol=1e-5,
                                       atol=1e-6)
    finally:
        channel.close()


@pytest.mark.slow
def test_a_killed_worker_does_not_stop_parameter_server_training(tmp_path, children):
    """Worker 1 is killed during training; the local cluster restarts it, the coordinator
    reschedules its steps, and the run ends with every step done."""
    run = children(_train_argv("deepfm", "--local-cluster", "workers=2,ps=2", "--epochs", "4",
                               "--steps-per-epoch", "6", "--metrics-out",
                               str(tmp_path / "m.json")), tmp_path / "train.log")
    run.wait_for(r"Epoch 2/4", DEADLINE)
    deadline = time.monotonic() + 60
    while not _cluster_pids(run.proc.pid, "worker") and time.monotonic() < deadline:
        time.sleep(0.5)
    workers = sorted(_cluster_pids(run.proc.pid, "worker"))
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    assert run.wait(DEADLINE) == 0, run.text()[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["steps"] == 4 * 6 and metrics["epochs_run"] == 4
    assert metrics["worker_restarts"] >= 1
    assert set(_cluster_pids(run.proc.pid, "worker")) == set()   # all stopped


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_step_count(tmp_path, children):
    """The coordinator and its cluster are killed after two epochs were backed up; the same
    command started again resumes after the last backed-up epoch and ends at the same total
    step count."""
    argv = _train_argv("deepfm", "--local-cluster", "workers=2,ps=2", "--epochs", "4",
                       "--steps-per-epoch", "5", "--checkpoint-dir", str(tmp_path / "ckpt"),
                       "--logdir", str(tmp_path / "logs"), "--metrics-out",
                       str(tmp_path / "m.json"))
    first = children(argv, tmp_path / "first.log")
    first.wait_for(r"Epoch 3/4", DEADLINE)
    first.kill()
    assert not (tmp_path / "m.json").exists()
    second = children(argv, tmp_path / "second.log")
    assert second.wait(DEADLINE) == 0, second.text()[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["steps"] == 4 * 5
    assert 1 <= metrics["epochs_run"] <= 2          # epochs 1-2 (at least) were not redone
    events = list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
    assert len(events) == 2                         # one per run
    tags = _summary_tags(events)
    assert {"loss", "val_auc", "examples_per_sec"} <= tags


def _summary_tags(paths):
    from recsys_tf.backend import tf

    tags = set()
    for path in paths:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_one_process_run_resumes_from_its_checkpoint_to_the_same_step_count(tmp_path):
    """A run that backed up after 2 epochs, started again for 3, runs only the third and ends
    at 3 epochs' steps (no validation split: no early stopping)."""
    from recsys_tf import data, pipeline

    ds = data.load("synthetic", None, **dict(TINY, valid_fraction=0.0))
    per_epoch = -(-len(ds.train) // 256) + 3       # more steps than one pass: data repeats
    run = dict(batch_size=256, checkpoint_dir=str(tmp_path / "ckpt"), verbose=0,
               options={"dim": 4, "dnn_units": [16]}, logdir=str(tmp_path / "logs"),
               steps_per_epoch=per_epoch)
    first, _ = pipeline.train("deepfm", ds, epochs=2, **run)
    assert first["steps"] == 2 * per_epoch and first["strategy"] == "one_device"
    assert (first["n_workers"], first["n_ps"]) == (1, 0)
    second, _ = pipeline.train("deepfm", ds, epochs=3, **run)
    assert second["epochs_run"] == 1 and second["steps"] == 3 * per_epoch
    assert {"loss", "examples_per_sec"} <= _summary_tags(
        (tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
