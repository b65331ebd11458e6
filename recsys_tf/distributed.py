"""Training beyond one process: ``tf.distribute`` strategies, a cluster from ``TF_CONFIG``, and a
local cluster of processes on 127.0.0.1.

Strategies (``STRATEGIES``):

* ``one_device``: today's single process (the default strategy; nothing changes).
* ``parameter_server``: ``tf.distribute.ParameterServerStrategy``. This process is the
  coordinator (``TF_CONFIG``'s ``chief``); workers and parameter servers run
  ``recsys-tf cluster-server``. Every variable larger than ``min_shard_bytes`` is cut by
  ``MinSizePartitioner`` into at most one ``ShardedVariable`` part per parameter server, so an
  embedding table (and Wide & Deep's wide weights) is spread over the parameter servers and
  workers hold no copy of it. Training is asynchronous: each worker runs whole steps against
  the parameter servers' variables.
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``: synchronous data
  parallelism; every worker runs the same training command and keeps a full copy of every
  table (tables must fit one machine).

``TF_CONFIG`` is TensorFlow's documented format::

    {"cluster": {"chief": ["host:port"], "worker": ["host:port", ...], "ps": ["host:port", ...]},
     "task": {"type": "chief", "index": 0}}

:class:`LocalCluster` starts workers and parameter servers as processes on 127.0.0.1 (free
ports) and stops every one of them on exit, also on error or Ctrl-C.

Example::

    with LocalCluster(workers=2, ps=2) as cluster:
        strategy = cluster.strategy()
        metrics, model = pipeline.train("deepfm", ds, strategy=strategy)
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

STRATEGIES = ("one_device", "multi_worker", "parameter_server")

# a variable is cut into parts of at least this size, at most one part per parameter server
MIN_SHARD_BYTES = 256 << 10


class ClusterError(ValueError):
    """A cluster description that cannot be used (the message names the value and what was
    expected)."""


def parse_local_cluster(text):
    """``"workers=2,ps=2"`` -> ``(2, 2)``; ``ps`` may be 0 (``multi_worker``)."""
    if not isinstance(text, str) or not re.fullmatch(r"\s*workers=\d+\s*(,\s*ps=\d+\s*)?", text):
        raise ClusterError(f"--local-cluster {text!r}: expected workers=N,ps=M (N >= 1, M >= 0)")
    parts = dict(p.strip().split("=") for p in text.split(","))
    workers, ps = int(parts["workers"]), int(parts.get("ps", 0))
    if workers < 1:
        raise ClusterError(f"--local-cluster {text!r}: expected workers >= 1")
    return workers, ps


def tf_config(env=None):
    """The parsed ``TF_CONFIG`` (``{}`` when unset); a :class:`ClusterError` names what is wrong."""
    raw = (os.environ if env is None else env).get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ClusterError(f"TF_CONFIG {raw[:80]!r}: expected JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ClusterError(f"TF_CONFIG {raw[:80]!r}: expected an object with a \"cluster\" map")
    task = config.get("task") or {}
    if task and (task.get("type") not in ("chief", "worker", "ps", "evaluator")
                 or not isinstance(task.get("index", 0), int)):
        raise ClusterError(f"TF_CONFIG task {task!r}: expected {{\"type\": chief|worker|ps, "
                           "\"index\": N}")
    return config


def cluster_counts(config):
    """``(n_workers, n_ps)`` of a ``TF_CONFIG`` dict."""
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])), len(cluster.get("ps", []))


def free_ports(n):
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def make_strategy(name="one_device", config=None, min_shard_bytes=MIN_SHARD_BYTES):
    """The ``tf.distribute`` strategy ``name`` for the cluster of ``config`` (a ``TF_CONFIG``
    dict; default: the environment's).

    ``one_device``: the default strategy. ``parameter_server``: needs a ``chief`` (this process),
    workers and parameter servers in the config; variables of more than ``min_shard_bytes``
    are sharded, one part per parameter server at most. ``multi_worker``: needs workers; this
    process is ``task``.
    """
    if name not in STRATEGIES:
        raise ClusterError(f"--strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
    from recsys_tf.backend import tf

    if name == "one_device":
        return tf.distribute.get_strategy()
    config = tf_config() if config is None else config
    n_workers, n_ps = cluster_counts(config)
    if name == "parameter_server":
        if not n_workers or not n_ps or not config["cluster"].get("chief"):
            raise ClusterError(
                f"--strategy parameter_server: TF_CONFIG has {n_workers} worker(s), {n_ps} "
                f"ps and {len(config.get('cluster', {}).get('chief', []))} chief; expected a "
                "chief, at least one worker and one ps (or use --local-cluster workers=N,ps=M)")
        os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
        resolver = _resolver(config, "chief", 0)
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=int(min_shard_bytes), max_shards=n_ps)
        return tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner)
    if not n_workers:
        raise ClusterError("--strategy multi_worker: TF_CONFIG lists no worker; expected "
                           "cluster.worker with this process's address (or --local-cluster "
                           "workers=N)")
    task = config.get("task") or {}
    resolver = _resolver(config, task.get("type", "worker"), task.get("index", 0))
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


def _resolver(config, task_type, task_id):
    from recsys_tf.backend import tf

    spec = tf.train.ClusterSpec({k: list(v) for k, v in config["cluster"].items() if v})
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=task_type, task_id=int(task_id), rpc_layer="grpc")


def strategy_name(strategy):
    """The ``STRATEGIES`` name of a strategy object."""
    from recsys_tf.backend import tf

    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return "parameter_server"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    return "one_device"


def is_parameter_server(strategy):
    return strategy is not None and strategy_name(strategy) == "parameter_server"


def n_parameter_servers(strategy):
    """Parameter servers of a ``parameter_server`` strategy (0 for others)."""
    return int(getattr(strategy.extended, "_num_ps", 0)) if is_parameter_server(strategy) else 0


def is_chief(strategy):
    """Whether this process writes the results: always, except a ``multi_worker`` worker
    other than the chief (worker 0 when the cluster has no chief)."""
    if strategy_name(strategy) != "multi_worker":
        return True
    resolver = strategy.cluster_resolver
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().jobs)


def n_workers(strategy):
    """Workers training under ``strategy`` (1 for one process)."""
    if is_parameter_server(strategy):
        return int(strategy.extended._num_workers)
    if strategy_name(strategy) == "multi_worker":
        return int(strategy.extended._num_workers)
    return 1


def sharded_variables(model):
    """``{name: number of parts}`` of every ``ShardedVariable`` the layers of ``model`` hold
    (tables cut across parameter servers)."""
    from recsys_tf.backend import tf

    sharded_type = tf.__internal__.distribute.ShardedVariable
    found = {}

    def visit(value):
        if isinstance(value, sharded_type):
            found[value.variables[0].name.split("/part_")[0]] = len(value.variables)
        elif isinstance(value, dict) or type(value).__name__ == "_DictWrapper":
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "ListWrapper":
            for v in value:
                visit(v)

    for layer in [model] + list(model.submodules):
        for value in vars(layer).values():
            visit(value)
    return found


def serve(config=None, wait=True):
    """Runs this process as the worker or parameter server ``TF_CONFIG``'s ``task`` names
    (``recsys-tf cluster-server``); blocks until killed when ``wait``."""
    config = tf_config() if config is None else config
    task = config.get("task") or {}
    if task.get("type") not in ("worker", "ps"):
        raise ClusterError(f"TF_CONFIG task {task!r}: cluster-server runs a worker or a ps; "
                           "expected task.type worker or ps")
    index = int(task.get("index", 0))
    members = config["cluster"].get(task["type"], [])
    if not 0 <= index < len(members):
        raise ClusterError(f"TF_CONFIG task index {index}: expected 0..{len(members) - 1} "
                           f"({len(members)} {task['type']} in the cluster)")
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    exit_with_parent()
    from recsys_tf.backend import tf

    resolver = _resolver(config, task["type"], index)
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=task["type"],
                                  task_index=index, protocol="grpc", start=True)
    if wait:
        server.join()
    return server


PARENT_ENV = "RECSYS_TF_CLUSTER_PARENT"


def child_environment():
    """This process's environment for a child Python process that must import this copy of
    ``recsys_tf`` (its root first on ``PYTHONPATH``), with TensorFlow's C++ notices quiet."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def exit_with_parent():
    """A server started by :class:`LocalCluster` (``$RECSYS_TF_CLUSTER_PARENT`` = the pid of
    the process that started it) exits when that process is gone, even killed outright."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    import threading

    def watch():
        while os.getppid() == int(parent):
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class LocalCluster:
    """A cluster of ``workers`` workers and ``ps`` parameter servers as child processes on
    127.0.0.1 (each ``recsys-tf cluster-server`` with its own ``TF_CONFIG``), plus the address
    of a ``chief``: this process, the coordinator. A context manager: every process it started
    is stopped on exit, also on an error or Ctrl-C.

    Args:
      workers: number of workers (default 2).
      ps: number of parameter servers (default 2; 0 for ``multi_worker``, where the workers
        are started by :meth:`start_trainers` instead).
      log_dir: where each process's output goes (``<type>-<index>.log``); default: discarded.
      restart_workers: a supervisor thread restarts a worker process that ended (killed or
        crashed) on its own address, as a cluster manager would; the parameter-server
        coordinator reschedules the failed worker's steps and takes the worker back (default
        True; ``parameter_server`` only).
    """

    def __init__(self, workers=2, ps=2, log_dir=None, restart_workers=True):
        if int(workers) < 1 or int(ps) < 0:
            raise ClusterError(f"LocalCluster workers={workers}, ps={ps}: expected workers >= 1, "
                               "ps >= 0")
        self.n_workers, self.n_ps = int(workers), int(ps)
        self.log_dir = log_dir
        address = [f"127.0.0.1:{p}" for p in free_ports(1 + self.n_workers + self.n_ps)]
        if self.n_ps:       # parameter_server: this process is the chief (the coordinator)
            self.cluster = {"chief": address[:1], "worker": address[1:1 + self.n_workers],
                            "ps": address[1 + self.n_workers:]}
        else:               # multi_worker: this process is worker 0, there is no chief
            self.cluster = {"worker": address[1:1 + self.n_workers]}
        self.processes = {}    # (type, index) -> Popen
        self.restart_workers = bool(restart_workers)
        self.restarts = 0
        self._stopping = None

    def config(self, task_type="chief", index=0):
        """The ``TF_CONFIG`` dict of one member (``chief`` 0: this process, with ps)."""
        return {"cluster": self.cluster, "task": {"type": task_type, "index": int(index)}}

    def _env(self, task_type, index):
        env = child_environment()
        env["TF_CONFIG"] = json.dumps(self.config(task_type, index))
        env.setdefault("GRPC_FAIL_FAST", "use_caller")
        env[PARENT_ENV] = str(os.getpid())
        return env

    def _spawn(self, task_type, index, argv):
        out = subprocess.DEVNULL
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, f"{task_type}-{index}.log"), "ab")
        try:
            proc = subprocess.Popen(argv, env=self._env(task_type, index), stdout=out,
                                    stderr=subprocess.STDOUT)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.processes[(task_type, int(index))] = proc
        return proc

    def start_server(self, task_type, index):
        """Starts (or restarts) one worker or parameter server process."""
        old = self.processes.get((task_type, int(index)))
        if old is not None and old.poll() is None:
            raise ClusterError(f"{task_type} {index} is still running (pid {old.pid})")
        return self._spawn(task_type, index,
                           [sys.executable, "-m", "recsys_tf.cli", "cluster-server"])

    def start(self):
        """Starts every parameter server and worker (``ps > 0``) and waits until they listen;
        returns self. A failure stops what was started."""
        try:
            if self.n_ps:
                for i in range(self.n_ps):
                    self.start_server("ps", i)
                for i in range(self.n_workers):
                    self.start_server("worker", i)
                self.wait_ready()
                if self.restart_workers:
                    self._supervise()
        except BaseException:
            self.stop()
            raise
        return self

    def _supervise(self):
        import threading

        self._stopping = threading.Event()

        def loop():
            while not self._stopping.wait(0.5):
                for i in range(self.n_workers):
                    proc = self.processes.get(("worker", i))
                    if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                        self.start_server("worker", i)
                        self.restarts += 1

        threading.Thread(target=loop, name="local-cluster-supervisor", daemon=True).start()

    def wait_ready(self, timeout=300.0):
        """Waits until every started server listens on its port (or raises)."""
        deadline = time.monotonic() + timeout
        for (task_type, index), proc in list(self.processes.items()):
            host, port = self.cluster[task_type][index].rsplit(":", 1)
            while True:
                if proc.poll() is not None:
                    raise ClusterError(f"{task_type} {index} exited with status {proc.returncode} "
                                       f"before listening on {host}:{port}")
                try:
                    with socket.create_connection((host, int(port)), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise ClusterError(f"{task_type} {index} not listening on {host}:{port} "
                                           f"after {timeout:.0f} s") from None
                    time.sleep(0.2)

    def start_trainers(self, argv):
        """``multi_worker``: starts worker 1.. as ``argv`` (the same training command) with
        their ``TF_CONFIG``; worker 0 is this process (see :meth:`worker_config`)."""
        for i in range(1, self.n_workers):
            self._spawn("worker", i, list(argv))

    def worker_config(self):
        """``multi_worker``: the ``TF_CONFIG`` of worker 0 (this process)."""
        return self.config("worker", 0)

    def strategy(self, name="parameter_server", **kwargs):
        """The strategy of this process in the cluster."""
        if name == "parameter_server":
            return make_strategy(name, self.config("chief", 0), **kwargs)
        return make_strategy(name, self.worker_config(), **kwargs)

    def kill(self, task_type, index, sig=signal.SIGKILL):
        """Sends ``sig`` to one member and waits for it to end (SIGKILL after 10 s)."""
        proc = self.processes.get((task_type, int(index)))
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self):
        """Stops every process this cluster started."""
        if self._stopping is not None:
            self._stopping.set()
        for key in list(self.processes):
            self.kill(*key, sig=signal.SIGTERM)
        self.processes.clear()

    def __enter__(self):
        return self if self.processes else self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
